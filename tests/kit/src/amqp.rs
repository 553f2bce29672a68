//! RabbitMQ for the end-to-end tests: a virtual host per test (so tests run
//! in parallel and leave the broker as they found it), an AMQP client that
//! plays the other side (another gateway, a queue-speaking agency, the
//! operator reading the dead-letter queue), and a PKI with a second
//! province for federation.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command as StdCommand;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
    ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

use crate::{notice, require_services};

pub const BROKER: &str = "127.0.0.1:5672";
pub const EXCHANGE: &str = "lienthong.documents";
pub const DEAD_LETTERS: &str = "lienthong.dead";
pub const CONTENT_TYPE_ENVELOPE: &str = "application/x-protobuf";
pub const CONTENT_TYPE_STREAM: &str = "application/vnd.lienthong.send-stream.v1+protobuf";

/// Agencies of a second province (H36) served by a second gateway.
pub const X: &str = "000.00.01.H36";
pub const Y: &str = "000.00.12.H36";

/// A virtual host of one test (or bench run), deleted when dropped unless
/// kept. Deleting it deletes its queues and exchanges.
pub struct Vhost {
    pub name: String,
    /// `amqp://guest:guest@<broker>/<name>`.
    pub url: String,
    keep: bool,
}

/// Runs `rabbitmqctl ARGS...`; `Err` says why it could not or what it said.
pub fn rabbitmqctl(args: &[&str]) -> Result<(), String> {
    run_ctl(&mut StdCommand::new("rabbitmqctl"), args)
}

/// Runs a `rabbitmqctl` command with `args`; `Err` says why it could not
/// or what it said.
pub(crate) fn run_ctl(cmd: &mut StdCommand, args: &[&str]) -> Result<(), String> {
    let out = cmd
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("rabbitmqctl: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "rabbitmqctl {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Vhost {
    /// Makes `<prefix>-<random>` on the broker at `broker` (`HOST:PORT`),
    /// where user guest may do anything, with `rabbitmqctl` (run on the
    /// broker's machine).
    pub fn create(broker: &str, prefix: &str) -> Result<Vhost, String> {
        use std::net::ToSocketAddrs;
        let addr = broker
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| format!("{broker} is not a broker address (HOST:PORT)"))?;
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .map_err(|e| format!("RabbitMQ is not reachable on {broker}: {e}"))?;
        let name = format!(
            "{prefix}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        rabbitmqctl(&["add_vhost", &name])?;
        // From here on, a failure deletes it again (Drop).
        let v = Vhost {
            url: format!("amqp://guest:guest@{broker}/{name}"),
            name,
            keep: false,
        };
        rabbitmqctl(&["set_permissions", "-p", &v.name, "guest", ".*", ".*", ".*"])?;
        Ok(v)
    }

    /// `None` (with a SKIPPED line) when RabbitMQ is not running here,
    /// unless services are required.
    pub fn create_or_skip(test: &str) -> Option<Vhost> {
        match Vhost::create(BROKER, &format!("lt-{test}")) {
            Ok(v) => Some(v),
            Err(why) => {
                if require_services() {
                    panic!("LIENTHONG_REQUIRE_SERVICES=1 but {why}");
                }
                notice(&format!("SKIPPED {test}: {why}"));
                None
            }
        }
    }

    /// Leaves the virtual host on the broker when this value is dropped.
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if let Err(e) = rabbitmqctl(&["delete_vhost", &self.name]) {
            notice(&format!("could not delete vhost {}: {e}", self.name));
        }
    }
}

/// A consumer of `queue` on `ch` (manual acknowledgements), its tag
/// `<prefix>-<random>`.
pub async fn consumer(ch: &Channel, queue: &str, prefix: &str) -> lapin::Result<lapin::Consumer> {
    let tag = format!("{prefix}-{}", uuid::Uuid::new_v4().simple());
    ch.basic_consume(
        queue.into(),
        tag.into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    )
    .await
}

/// The `[amqp]` and `[[routes]]` sections of a gateway serving `province`
/// (e.g. `H35`) on `vhost`, everything else to the national exchange.
pub fn config(vhost: &Vhost, province: &str, extra: &str) -> String {
    config_with_url(&vhost.url, province, extra)
}

/// [`config`] with the broker account of `url`.
pub fn config_with_url(url: &str, province: &str, extra: &str) -> String {
    let p = province.to_lowercase();
    format!(
        r##"
[amqp]
url = "{url}"
queue = "lienthong.inbound.{p}"
dead_letter_queue = "lienthong.dead.{p}"
{extra}

[[routes]]
pattern = "#.{province}"
to = "local"

[[routes]]
pattern = "#"
to = "exchange:{EXCHANGE}"
"##
    )
}

/// Publishes `body` with Debian's `amqp-publish` (amqp-tools), a client
/// that is not ours, persistent, without a message_id property.
pub async fn amqp_publish(
    url: &str,
    exchange: &str,
    routing_key: &str,
    content_type: &str,
    body: &[u8],
) {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("amqp-publish")
        .args([
            &format!("--url={url}"),
            "--exchange",
            exchange,
            "--routing-key",
            routing_key,
            "--content-type",
            content_type,
            "--persistent",
        ])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("run amqp-publish (Debian package amqp-tools; .ci/run installs it)");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(body).await.expect("write body");
    drop(stdin);
    let status = child.wait().await.expect("amqp-publish");
    assert!(status.success(), "amqp-publish failed: {status}");
}

/// A broker account made by the broker operator's commands of
/// docs/amqp.md ("Permissions on a shared broker"), as written there for
/// Lai Châu (H35) and adapted to `province` and the test's virtual host.
/// Deleted when dropped.
pub struct BrokerUser {
    pub name: String,
    /// `amqp://name:password@127.0.0.1:5672/<vhost>`.
    pub url: String,
    /// The commands that made it, for failure messages.
    pub commands: Vec<Vec<String>>,
}

/// Where the broker operator's commands are documented.
const AMQP_DOC: &str = include_str!("../../../docs/amqp.md");

impl BrokerUser {
    pub fn province_gateway(vhost: &Vhost, province: &str) -> BrokerUser {
        let (_, rest) = AMQP_DOC
            .split_once("<!-- gateway-permissions:begin -->")
            .expect("docs/amqp.md marks the gateway's permissions");
        let (block, _) = rest
            .split_once("<!-- gateway-permissions:end -->")
            .expect("docs/amqp.md ends the gateway's permissions");
        let name = format!("lienthong-{}-{}", province.to_lowercase(), vhost.name);
        let password = uuid::Uuid::new_v4().simple().to_string();
        let text = block
            .replace("lienthong-h35", &name)
            .replace("h35", &province.to_lowercase())
            .replace("H35", province)
            .replace("'a long password'", &format!("'{password}'"))
            .replace("-p / ", &format!("-p {} ", vhost.name));
        let mut commands = Vec::new();
        for line in text.replace("\\\n", " ").lines() {
            let words = shell_words(line.trim());
            if words.first().map(String::as_str) == Some("rabbitmqctl") {
                commands.push(words);
            }
        }
        assert!(
            commands.len() >= 3,
            "docs/amqp.md's gateway permissions hold no rabbitmqctl commands: {block}"
        );
        let user = BrokerUser {
            url: format!("amqp://{name}:{password}@{BROKER}/{}", vhost.name),
            name,
            commands,
        };
        for c in &user.commands {
            let args: Vec<&str> = c[1..].iter().map(String::as_str).collect();
            if let Err(e) = rabbitmqctl(&args) {
                panic!("the documented command failed: {e}");
            }
        }
        user
    }
}

impl Drop for BrokerUser {
    fn drop(&mut self) {
        if let Err(e) = rabbitmqctl(&["delete_user", &self.name]) {
            notice(&format!("could not delete broker user {}: {e}", self.name));
        }
    }
}

/// Splits a shell command line of plain words and single-quoted strings
/// (all the documentation uses).
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur: Option<String> = None;
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                cur.get_or_insert_with(String::new);
            }
            c if c.is_whitespace() && !quoted => {
                if let Some(w) = cur.take() {
                    words.push(w);
                }
            }
            c => cur.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(cur);
    words
}

/// An AMQP client of the test.
pub struct Client {
    pub conn: Connection,
    pub ch: Channel,
}

impl Client {
    pub async fn connect(vhost: &Vhost) -> Client {
        Client::connect_url(&vhost.url).await
    }

    pub async fn connect_url(url: &str) -> Client {
        let conn = Connection::connect(url, ConnectionProperties::default())
            .await
            .expect("connect to RabbitMQ");
        let ch = conn.create_channel().await.expect("channel");
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm_select");
        Client { conn, ch }
    }

    /// Publishes and waits for the broker's confirm.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        content_type: Option<&str>,
        message_id: Option<&str>,
    ) {
        let mut props = BasicProperties::default().with_delivery_mode(2);
        if let Some(ct) = content_type {
            props = props.with_content_type(ct.into());
        }
        if let Some(id) = message_id {
            props = props.with_message_id(id.into());
        }
        let confirm = self
            .ch
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack(), "the broker refused the test's message");
    }

    /// Takes up to `n` messages from `queue`, waiting up to `limit` for them.
    pub async fn take(
        &self,
        queue: &str,
        n: usize,
        limit: Duration,
    ) -> Vec<lapin::message::Delivery> {
        let ch = self.conn.create_channel().await.expect("channel");
        let mut consumer = consumer(&ch, queue, "test").await.expect("consume");
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + limit;
        while out.len() < n {
            match tokio::time::timeout_at(deadline, consumer.next()).await {
                Ok(Some(Ok(d))) => {
                    d.acker.ack(BasicAckOptions::default()).await.expect("ack");
                    out.push(d);
                }
                _ => break,
            }
        }
        let _ = ch.close(200, "done".into()).await;
        out
    }

    /// Takes `n` messages from `queue` (waiting up to `limit` for them), then
    /// whatever else comes within `quiet` on the same consumer: (the `n`,
    /// those after them). One consumer for both matters: a message of a
    /// quorum queue acknowledged just before its channel closed has been
    /// seen handed out again (redelivered) to the next consumer, so a second
    /// `take` could count a message twice that was published once.
    pub async fn take_then_more(
        &self,
        queue: &str,
        n: usize,
        limit: Duration,
        quiet: Duration,
    ) -> (Vec<lapin::message::Delivery>, Vec<lapin::message::Delivery>) {
        let ch = self.conn.create_channel().await.expect("channel");
        let mut consumer = consumer(&ch, queue, "test").await.expect("consume");
        let mut out = Vec::new();
        let mut more = Vec::new();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let until = if out.len() < n {
                deadline
            } else {
                tokio::time::Instant::now() + quiet
            };
            match tokio::time::timeout_at(until, consumer.next()).await {
                Ok(Some(Ok(d))) => {
                    d.acker.ack(BasicAckOptions::default()).await.expect("ack");
                    if out.len() < n {
                        out.push(d);
                    } else {
                        more.push(d);
                    }
                }
                _ => break,
            }
        }
        let _ = ch.close(200, "done".into()).await;
        (out, more)
    }

    /// Gets one message and gives it back (`nack` with requeue): a consumer
    /// that fails on it, as a crashing gateway would.
    pub async fn get_and_return(&self, queue: &str) -> bool {
        match self
            .ch
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
            .expect("basic.get")
        {
            Some(m) => {
                m.delivery
                    .acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await
                    .expect("nack");
                true
            }
            None => false,
        }
    }
}

/// A header of a message as text.
pub fn header(d: &lapin::message::Delivery, name: &str) -> Option<String> {
    let h = d.properties.headers().as_ref()?;
    match h.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        other => Some(format!("{other:?}")),
    }
}

/// Runs `lienthong dev-pki` into `dir`, then adds the agencies of a second
/// province (X, Y: H36) issued by the same CA, and sets the directory
/// `channel` of `amqp_agencies` to `amqp`. Both gateways of a federation
/// test use it (each imports the national directory; routes decide who is
/// local).
pub fn federated_pki(dir: &Path, amqp_agencies: &[&str]) {
    let out = StdCommand::new(crate::bin_path())
        .arg("dev-pki")
        .arg(dir)
        .env("NO_COLOR", "1")
        .output()
        .expect("run lienthong dev-pki");
    assert!(out.status.success(), "{}", crate::describe_output(&out));
    let ca = crate::pki::Ca::load(&dir.join("ca.pem"), &dir.join("ca.key.pem"));
    let template = crate::pki::load_cert_der(&dir.join(format!("{}.pem", crate::A)));
    let now = time::OffsetDateTime::now_utc();
    for id in [X, Y] {
        let key = rcgen::KeyPair::generate().expect("key");
        let (_, pem) = ca.reissue_pem(
            &template,
            &key,
            now - time::Duration::days(1),
            now + time::Duration::days(365),
        );
        fs::write(dir.join(format!("{id}.pem")), pem).expect("write cert");
        fs::write(dir.join(format!("{id}.key.pem")), key.serialize_pem()).expect("write key");
    }
    let csv_path = dir.join("directory.csv");
    let text = fs::read_to_string(&csv_path).expect("read directory.csv");
    let mut lines = text.lines();
    let header = lines.next().expect("header").to_owned();
    let cols: Vec<&str> = header.split(',').collect();
    let col = |name: &str| cols.iter().position(|c| *c == name);
    let (id_col, sign_col) = (col("organ_id").expect("organ_id"), col("signing_cert"));
    let mut out = format!("{header},channel\n");
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let id = line.split(',').nth(id_col).unwrap_or_default();
        let channel = if amqp_agencies.contains(&id) {
            "amqp"
        } else {
            "grpc"
        };
        out.push_str(&format!("{line},{channel}\n"));
    }
    for (id, name) in [
        (X, "Văn phòng UBND tỉnh thứ hai"),
        (Y, "Sở Khoa học tỉnh thứ hai"),
    ] {
        let mut row = vec![String::new(); cols.len()];
        row[id_col] = id.to_owned();
        if let Some(n) = col("name") {
            row[n] = name.to_owned();
        }
        if let Some(s) = sign_col {
            row[s] = format!("{id}.pem");
        }
        out.push_str(&format!("{},grpc\n", row.join(",")));
    }
    fs::write(&csv_path, out).expect("write directory.csv");
}

/// A temp dir with [`federated_pki`] in it.
pub fn federated_pki_dir(amqp_agencies: &[&str]) -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::Builder::new()
        .prefix("lienthong-e2e-federation-")
        .tempdir()
        .expect("temp dir");
    let dir = t.path().join("pki");
    federated_pki(&dir, amqp_agencies);
    (t, dir)
}

/// `GET path` on the gateway's HTTP listener: (status code, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect HTTP");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write request");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read response");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A RabbitMQ node of its own that speaks only AMQP over TLS and requires
/// a client certificate (RabbitMQ's `verify_peer` + `fail_if_no_peer_cert`),
/// with the server certificate and CA of a dev-pki directory. Stopped when
/// dropped.
pub struct TlsBroker {
    pub node: String,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl TlsBroker {
    /// `None` (with a SKIPPED line) without `rabbitmq-server`, unless
    /// services are required.
    pub async fn start_or_skip(test: &str, pki: &Path) -> Option<TlsBroker> {
        if StdCommand::new("rabbitmq-server")
            .arg("--help")
            .output()
            .is_err()
            && which("rabbitmq-server").is_none()
        {
            if require_services() {
                panic!("LIENTHONG_REQUIRE_SERVICES=1 but rabbitmq-server is not installed");
            }
            notice(&format!("SKIPPED {test}: rabbitmq-server is not installed"));
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("lienthong-e2e-tlsbroker-")
            .tempdir()
            .expect("temp dir");
        let d = dir.path();
        // The broker runs as its own user: it must read the certificates.
        for f in ["ca.pem", "server.pem", "server.key.pem"] {
            fs::copy(pki.join(f), d.join(f)).expect("copy certificate");
        }
        let port = crate::free_port();
        let dist = crate::free_port();
        let node = format!(
            "lt-tls-{}@localhost",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        fs::write(
            d.join("rabbitmq.conf"),
            format!(
                "listeners.tcp = none\nlisteners.ssl.default = 127.0.0.1:{port}\n\
                 ssl_options.cacertfile = {ca}\nssl_options.certfile = {cert}\n\
                 ssl_options.keyfile = {key}\nssl_options.verify = verify_peer\n\
                 ssl_options.fail_if_no_peer_cert = true\nloopback_users = none\n",
                ca = d.join("ca.pem").display(),
                cert = d.join("server.pem").display(),
                key = d.join("server.key.pem").display(),
            ),
        )
        .expect("write rabbitmq.conf");
        fs::write(d.join("enabled_plugins"), "[].\n").expect("write enabled_plugins");
        for sub in ["mnesia", "log"] {
            fs::create_dir_all(d.join(sub)).expect("mkdir");
        }
        let _ = StdCommand::new("chmod")
            .arg("-R")
            .arg("a+rwX")
            .arg(d)
            .status();
        let status = StdCommand::new("rabbitmq-server")
            .arg("-detached")
            .env("RABBITMQ_NODENAME", &node)
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_DIST_PORT", dist.to_string())
            .status()
            .expect("run rabbitmq-server");
        assert!(status.success(), "rabbitmq-server -detached failed");
        let broker = TlsBroker {
            node,
            port,
            _dir: dir,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the TLS broker {} did not listen on {port} within 60 s",
                broker.node
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Some(broker)
    }
}

impl Drop for TlsBroker {
    fn drop(&mut self) {
        let _ = StdCommand::new("rabbitmqctl")
            .args(["-n", &self.node, "stop"])
            .output();
    }
}

fn which(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(cmd))
            .find(|p| p.is_file())
    })
}

//! A RabbitMQ cluster of one test's own: several nodes on this machine, each
//! with its own node name, ports, data and logs in a temporary folder, and
//! an Erlang cookie of its own — so that a test can stop and start a node
//! without touching the machine's broker.
//!
//! The nodes are Debian's `rabbitmq-server` run directly (not through the
//! service scripts, which would run the machine's node). They listen on
//! loopback only. Dropping the cluster kills every node and removes the
//! folder.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{notice, pick_port, require_services};

const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
const CTL: &str = "/usr/lib/rabbitmq/bin/rabbitmqctl";

/// Erlang's command-line tools take their own distribution ports from
/// 35672 to 35682 (the default node's port plus 10000): a node given one of
/// those fails at start when a tool holds it.
const CLI_PORTS: std::ops::RangeInclusive<u16> = 35672..=35692;
/// The default node's own ports.
const DEFAULT_PORTS: [u16; 2] = [5672, 25672];

struct Node {
    name: String,
    amqp_port: u16,
    dist_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

pub struct RabbitCluster {
    nodes: Vec<Node>,
    home: tempfile::TempDir,
}

fn port() -> Result<u16, String> {
    for _ in 0..50 {
        let p = pick_port().map_err(|e| format!("no free port: {e}"))?;
        if !CLI_PORTS.contains(&p) && !DEFAULT_PORTS.contains(&p) {
            return Ok(p);
        }
    }
    Err("no free port outside RabbitMQ's own ranges".to_owned())
}

impl RabbitCluster {
    /// Starts `n` nodes and joins them into one cluster (a few tens of
    /// seconds). `None`, with a SKIPPED line, when RabbitMQ is not installed
    /// here, unless services are required. Blocking: call it from
    /// `spawn_blocking` in async tests.
    pub fn start_or_skip(test: &str, n: usize) -> Option<RabbitCluster> {
        if !Path::new(SERVER).is_file() {
            let why = format!("{SERVER} is not installed");
            if require_services() {
                panic!("LIENTHONG_REQUIRE_SERVICES=1 but {why}");
            }
            notice(&format!("SKIPPED {test}: {why}"));
            return None;
        }
        match RabbitCluster::start(test, n) {
            Ok(c) => Some(c),
            Err(e) => panic!("a RabbitMQ cluster of {n} nodes for {test} could not be made: {e}"),
        }
    }

    fn start(test: &str, n: usize) -> Result<RabbitCluster, String> {
        let home = tempfile::Builder::new()
            .prefix(&format!("lienthong-rabbit-{test}-"))
            .tempdir()
            .map_err(|e| e.to_string())?;
        let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let cookie = home.path().join(".erlang.cookie");
        fs::write(&cookie, uuid::Uuid::new_v4().simple().to_string()).map_err(|e| e.to_string())?;
        set_mode(&cookie, 0o400);
        let mut cluster = RabbitCluster {
            nodes: Vec::new(),
            home,
        };
        for i in 1..=n {
            let dir = cluster.home.path().join(format!("n{i}"));
            fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            let node = Node {
                name: format!("lt{tag}n{i}@localhost"),
                amqp_port: port()?,
                dist_port: port()?,
                dir,
                child: None,
            };
            fs::write(
                node.dir.join("rabbitmq.conf"),
                format!(
                    "listeners.tcp.1 = 127.0.0.1:{}\nloopback_users = none\n",
                    node.amqp_port
                ),
            )
            .map_err(|e| e.to_string())?;
            fs::write(node.dir.join("enabled_plugins"), "[].\n").map_err(|e| e.to_string())?;
            fs::write(node.dir.join("env.conf"), "").map_err(|e| e.to_string())?;
            cluster.nodes.push(node);
        }
        for i in 0..n {
            cluster.spawn(i)?;
        }
        for i in 0..n {
            cluster.await_startup(i)?;
        }
        let first = cluster.nodes[0].name.clone();
        for i in 1..n {
            let node = cluster.nodes[i].name.clone();
            cluster.ctl(&["-n", &node, "stop_app"])?;
            cluster.ctl(&["-n", &node, "join_cluster", &first])?;
            cluster.ctl(&["-n", &node, "start_app"])?;
        }
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize) -> Result<(), String> {
        let home = self.home.path().to_path_buf();
        let node = &mut self.nodes[i];
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.dir.join("server.out"))
            .map_err(|e| e.to_string())?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(SERVER);
        cmd.current_dir(&node.dir)
            .env("HOME", &home)
            // Not the machine's rabbitmq-env.conf, which names its node.
            .env("RABBITMQ_CONF_ENV_FILE", node.dir.join("env.conf"))
            .env("RABBITMQ_NODENAME", &node.name)
            .env("RABBITMQ_NODE_PORT", node.amqp_port.to_string())
            .env("RABBITMQ_DIST_PORT", node.dist_port.to_string())
            .env("RABBITMQ_CONFIG_FILE", node.dir.join("rabbitmq.conf"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                node.dir.join("enabled_plugins"),
            )
            .env("RABBITMQ_MNESIA_BASE", node.dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", node.dir.join("log"))
            .env("RABBITMQ_PID_FILE", node.dir.join("pid"))
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // A group of its own: the script's Erlang VM is killed with it.
        use std::os::unix::process::CommandExt as _;
        cmd.process_group(0);
        node.child = Some(cmd.spawn().map_err(|e| format!("{SERVER}: {e}"))?);
        Ok(())
    }

    fn await_startup(&mut self, i: usize) -> Result<(), String> {
        let name = self.nodes[i].name.clone();
        // `await_startup` waits for a node that is booting, but fails at
        // once while the VM has not even registered its name yet.
        let deadline = std::time::Instant::now() + Duration::from_secs(180);
        let mut last;
        loop {
            match self.ctl(&["-n", &name, "await_startup", "--timeout", "180"]) {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            if let Some(child) = self.nodes[i].child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!(
                    "node {name} exited ({status}) while starting\n{}",
                    self.log_tail(i, 30)
                ));
            }
            if std::time::Instant::now() > deadline {
                return Err(format!("{last}\n{}", self.log_tail(i, 30)));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn ctl(&self, args: &[&str]) -> Result<(), String> {
        crate::amqp::run_ctl(
            Command::new(CTL)
                .env("HOME", self.home.path())
                .env("ERL_EPMD_ADDRESS", "127.0.0.1"),
            args,
        )
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2f` of node `i` (from 0).
    pub fn url(&self, i: usize) -> String {
        format!(
            "amqp://guest:guest@127.0.0.1:{}/%2f",
            self.nodes[i].amqp_port
        )
    }

    /// Every node's URL, separated by commas (as `amqp.url` takes them).
    pub fn urls(&self) -> String {
        (0..self.nodes.len())
            .map(|i| self.url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Stops node `i` as an operator does (`rabbitmqctl stop`): its
    /// connections close, the queues' other replicas go on. Blocking.
    pub fn stop_node(&mut self, i: usize) -> Result<(), String> {
        let name = self.nodes[i].name.clone();
        self.ctl(&["-n", &name, "stop"])?;
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.wait();
        }
        Ok(())
    }

    /// Starts node `i` again (it rejoins the cluster) and waits until it
    /// runs. Blocking.
    pub fn start_node(&mut self, i: usize) -> Result<(), String> {
        self.spawn(i)?;
        self.await_startup(i)
    }

    /// The last lines of node `i`'s log.
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        let node = &self.nodes[i];
        let log = node.dir.join("log").join(format!("{}.log", node.name));
        let mut text = String::new();
        for p in [log, node.dir.join("server.out")] {
            let all = fs::read_to_string(&p).unwrap_or_default();
            let v: Vec<&str> = all.lines().collect();
            text.push_str(&format!("--- {}\n", p.display()));
            text.push_str(&v[v.len().saturating_sub(lines)..].join("\n"));
            text.push('\n');
        }
        text
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    let _ = fs::set_permissions(path, fs::Permissions::from_mode(mode));
}

impl Drop for RabbitCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                // The whole group: the script and the Erlang VM it started.
                let _ = Command::new("kill")
                    .args(["-KILL", "--", &format!("-{}", child.id())])
                    .status();
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        // epmd forgets a node when its VM's connection closes; give it a
        // moment so the names are free for the next test.
        std::thread::sleep(Duration::from_millis(200));
    }
}

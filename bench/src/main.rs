//! `lienthong-bench` (run as `lienthong bench`): a load generator. It
//! makes a throwaway gateway of its own (dev PKI, directory, `lienthong
//! serve` as a child process on free ports), drives it as many agency
//! systems at once, checks every delivered document against what was sent,
//! and prints throughput, latency percentiles, the gateway's RSS and CPU,
//! errors by reason, and the database's own fsync'd insert rate beside them.
//!
//! A binary of its own so that the gateway's carries none of its clients
//! (RabbitMQ, the baselines' raw SQL); `lienthong bench` runs it with
//! `--gateway-bin` naming itself.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use futures::StreamExt as _;
use lienthong_pki::devpki;
use lienthong_pki::signing::{self, SigningKey};
use lienthong_proto::v1::{
    self as pb, Envelope, SendRequest, exchange_client::ExchangeClient, send_request::Item,
};
use lienthong_testkit as kit;
use lienthong_testkit::cpu_secs;
use ring::digest;
use tokio::sync::Notify;
use tonic::transport::{Channel, Endpoint};

mod amqp;

/// Waits until `done` (everything accepted delivered and acknowledged), or
/// until nothing moves for 30 s; `progress` is notified at each delivery or
/// acknowledgement.
pub(crate) async fn drain(progress: &Notify, done: impl Fn() -> bool) {
    loop {
        let notified = progress.notified();
        if done() {
            return;
        }
        if tokio::time::timeout(Duration::from_secs(30), notified)
            .await
            .is_err()
        {
            return;
        }
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "lienthong-bench",
    version,
    about = "Load generator: starts a throwaway gateway, drives it as many agencies at once, \
             and prints throughput, latency and errors"
)]
struct Cli {
    /// The `lienthong` binary whose gateway is measured (default: the one
    /// beside this executable).
    #[arg(long, global = true)]
    gateway_bin: Option<PathBuf>,
    /// Accepted as `lienthong` accepts it: the bench makes its own
    /// configuration and reads none.
    #[arg(long, global = true, hide = true)]
    config: Option<PathBuf>,
    /// Log format of the bench's own warnings.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Signing keys of the throwaway PKI (`lienthong dev-pki --key-type`).
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum KeyTypeArg {
    EcP256,
    EcP384,
    Rsa2048,
}

/// The `lienthong` binary every mode starts, set once at start-up.
static GATEWAY_BIN: OnceLock<PathBuf> = OnceLock::new();

fn main() -> ExitCode {
    // Both rustls providers may be compiled in through dependencies; pick
    // ring before anything builds a TLS configuration.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let gateway = match cli.gateway_bin.map_or_else(beside_this_executable, Ok) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("lienthong-bench: {e:#}");
            return ExitCode::from(1);
        }
    };
    let _ = GATEWAY_BIN.set(gateway);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lienthong-bench: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lienthong bench: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// The bench's own warnings (lapin's, tonic's) on stderr; `RUST_LOG` as
/// for `lienthong`.
fn init_logging(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    let logs = logs.with_writer(std::io::stderr);
    if let LogFormat::Json = format {
        logs.json().init();
    } else {
        logs.init();
    }
}

/// `lienthong` in this executable's folder, where cargo builds both.
fn beside_this_executable() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let gateway = exe.with_file_name(format!("lienthong{}", std::env::consts::EXE_SUFFIX));
    if !gateway.is_file() {
        bail!(
            "there is no lienthong binary beside {}: build it (`cargo build --release -p \
             lienthong`) or name one with --gateway-bin",
            exe.display()
        );
    }
    Ok(gateway)
}

fn gateway_bin() -> Result<&'static Path> {
    GATEWAY_BIN
        .get()
        .map(PathBuf::as_path)
        .context("no lienthong binary was named")
}

/// A client of the gateway at `url`, with larger HTTP/2 windows than the
/// 64 KiB default, as `lienthong send`/`receive` have, so that a large
/// attachment streams at the disk's pace.
async fn connect(url: &str) -> Result<ExchangeClient<Channel>> {
    let ep = Endpoint::from_shared(url.to_owned())?
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(2 << 20);
    let ch = ep
        .connect()
        .await
        .with_context(|| format!("cannot reach the gateway at {url}"))?;
    let limit = 16 << 20;
    let client = ExchangeClient::new(ch).max_decoding_message_size(limit);
    Ok(client.max_encoding_message_size(limit))
}

/// `msg` as agency `organ_id`'s call (`auth.mode = "dev-header"`).
fn with_identity<T>(msg: T, organ_id: &str) -> Result<tonic::Request<T>> {
    let mut req = tonic::Request::new(msg);
    let v = tonic::metadata::MetadataValue::try_from(organ_id)
        .context("the agency code is not a valid header value")?;
    req.metadata_mut().insert("x-organ-id", v);
    Ok(req)
}

const CHUNK: usize = 256 * 1024;

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Agency → agency through gRPC in one gateway.
    Grpc(GrpcArgs),
    /// One document with one large attachment (1 GiB unless
    /// --attachment-bytes) through gRPC: MB/s in, MB/s out, the gateway's
    /// peak RSS, beside the disk's own write+fsync rate.
    Big(BigArgs),
    /// Documents from the national exchange over AMQP through the gateway
    /// and out to agencies' queues (or an exchange), beside raw RabbitMQ.
    Amqp(amqp::AmqpArgs),
    /// gRPC and AMQP traffic at once on one gateway (half the documents and
    /// half the concurrency each), reported per path.
    Mixed(amqp::AmqpArgs),
}

#[derive(Args, Debug, Clone)]
pub struct BigArgs {
    /// Size of the one attachment (bytes).
    #[arg(long, default_value_t = 1 << 30)]
    pub attachment_bytes: usize,
    /// Signing keys of the throwaway PKI.
    #[arg(long, value_enum, default_value_t = KeyTypeArg::EcP256)]
    pub key_type: KeyTypeArg,
    /// `sqlite`, or a PostgreSQL URL (see `bench grpc`).
    #[arg(long, default_value = "sqlite")]
    pub database: String,
    /// Keep the temporary directory (and PostgreSQL database).
    #[arg(long)]
    pub keep: bool,
    /// Also measure the disk's sequential write + fsync rate.
    #[arg(long, default_value_t = true, action = ArgAction::Set)]
    pub baseline: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct GrpcArgs {
    /// Documents to send (default 2000 unless --duration).
    #[arg(long, conflicts_with = "duration")]
    pub docs: Option<u64>,
    /// Send for this many seconds instead of a number of documents.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Concurrent senders; with --rate, the most sends outstanding at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Offer this many documents per second whatever the answers (an open
    /// loop, for latency at a chosen load and for overload); without it
    /// each sender sends its next document when the last is answered.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Size of each document's signed content (bytes).
    #[arg(long, default_value_t = 4096)]
    pub payload_bytes: usize,
    /// Size of one attachment per document (0: none).
    #[arg(long, default_value_t = 0)]
    pub attachment_bytes: usize,
    /// Recipients per document (1..=3).
    #[arg(long, default_value_t = 1)]
    pub recipients: usize,
    /// Signing keys of the throwaway PKI.
    #[arg(long, value_enum, default_value_t = KeyTypeArg::EcP256)]
    pub key_type: KeyTypeArg,
    /// `sqlite`, or a PostgreSQL URL whose server the bench makes (and
    /// drops) a database of its own on.
    #[arg(long, default_value = "sqlite")]
    pub database: String,
    /// Keep the temporary directory (and PostgreSQL database).
    #[arg(long)]
    pub keep: bool,
    /// Also measure the database's fsync'd single-row insert rate.
    #[arg(long, default_value_t = true, action = ArgAction::Set)]
    pub baseline: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Gateway replicas: `lienthong serve` processes on one PostgreSQL
    /// database, sender *i* on replica *i mod N*, the receiver of agency
    /// *j* on replica *(j + 1) mod N*, so that deliveries cross replicas.
    #[arg(long, default_value_t = 1)]
    pub replicas: usize,
    /// The mode named in the report (`big` runs through this one).
    #[arg(skip)]
    pub mode: &'static str,
}

async fn run(cmd: BenchCommand) -> Result<ExitCode> {
    match cmd {
        BenchCommand::Grpc(args) => grpc(args).await,
        BenchCommand::Amqp(args) => amqp::run(args).await,
        BenchCommand::Mixed(args) => amqp::run_mixed(args).await,
        BenchCommand::Big(big) => {
            let args = GrpcArgs {
                docs: Some(1),
                duration: None,
                concurrency: 1,
                rate: None,
                payload_bytes: 4096,
                attachment_bytes: big.attachment_bytes.max(1),
                recipients: 1,
                key_type: big.key_type,
                database: big.database,
                keep: big.keep,
                baseline: big.baseline,
                json: big.json,
                replicas: 1,
                mode: "big",
            };
            grpc(args).await
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// ----- the throwaway gateway -----------------------------------------------

/// One `lienthong serve` process of the throwaway gateway.
struct Replica {
    /// `gateway.replica`; none when the gateway runs alone (the transfer
    /// log's chain `main`, as a gateway without replicas writes).
    name: Option<String>,
    child: Option<std::process::Child>,
    url: String,
    stderr: PathBuf,
}

impl Replica {
    fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("main")
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
}

struct Gateway {
    /// The first started alone; the others once it was serving.
    replicas: Vec<Replica>,
    dir: PathBuf,
    pki: PathBuf,
    db_url: String,
    pg: Option<kit::PgDatabase>,
    keep: bool,
}

impl Gateway {
    /// The first replica's process (the only one outside `bench grpc`).
    fn pid(&self) -> Option<u32> {
        self.replicas.first().and_then(Replica::pid)
    }

    async fn stop(&mut self) {
        // All at once: each may take its grace period to drain.
        let stops = self
            .replicas
            .iter_mut()
            .filter_map(|r| r.child.take())
            .map(|child| {
                tokio::task::spawn_blocking(move || kit::terminate(child, Duration::from_secs(10)))
            });
        let _ = futures::future::join_all(stops).await;
        if self.keep {
            eprintln!("bench: kept {}", self.dir.display());
            if let Some(pg) = &mut self.pg {
                pg.keep();
                eprintln!("bench: kept the PostgreSQL database {}", pg.name);
            }
            return;
        }
        // Dropping it drops the database.
        let pg = self.pg.take();
        let _ = tokio::task::spawn_blocking(move || drop(pg)).await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run_checked(mut cmd: std::process::Command, what: &str) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn key_type_name(k: KeyTypeArg) -> &'static str {
    match k {
        KeyTypeArg::EcP256 => "ec-p256",
        KeyTypeArg::EcP384 => "ec-p384",
        KeyTypeArg::Rsa2048 => "rsa2048",
    }
}

/// What a mode adds to the throwaway gateway: text appended to its
/// configuration (`[amqp]`, `[[routes]]`), and a rewrite of the dev PKI's
/// `directory.csv` before it is imported.
#[derive(Default)]
struct Extra {
    config: String,
    directory: Option<DirectoryEdit>,
}

type DirectoryEdit = Box<dyn Fn(&str) -> Result<String> + Send + Sync>;

async fn start_gateway(args: &GrpcArgs) -> Result<Gateway> {
    start_gateway_with(args, &Extra::default()).await
}

async fn start_gateway_with(args: &GrpcArgs, extra: &Extra) -> Result<Gateway> {
    let exe = gateway_bin()?;
    let dir = std::env::temp_dir().join(format!("lienthong-bench-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = std::fs::canonicalize(&dir)?;
    let pki = dir.join("pki");
    let mut gw = Gateway {
        replicas: Vec::new(),
        dir: dir.clone(),
        pki: pki.clone(),
        db_url: String::new(),
        pg: None,
        keep: args.keep,
    };
    match setup(&mut gw, exe, args, extra).await {
        Ok(()) => Ok(gw),
        Err(e) => {
            gw.stop().await;
            Err(e)
        }
    }
}

async fn setup(gw: &mut Gateway, exe: &Path, args: &GrpcArgs, extra: &Extra) -> Result<()> {
    let dir = gw.dir.clone();
    gw.db_url = if args.database == "sqlite" {
        format!("sqlite://{}", dir.join("gateway.db").display())
    } else if args.database.starts_with("postgres://") || args.database.starts_with("postgresql://")
    {
        let pg = kit::PgDatabase::create(&args.database, "lienthong_bench")
            .await
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("cannot create a database on {}", args.database))?;
        let url = pg.url.clone();
        gw.pg = Some(pg);
        url
    } else {
        bail!("--database is `sqlite` or a postgres:// URL");
    };

    let mut cmd = kit::lienthong_command(exe, &dir);
    cmd.arg("dev-pki")
        .arg(&gw.pki)
        .arg("--key-type")
        .arg(key_type_name(args.key_type));
    run_checked(cmd, "lienthong dev-pki")?;

    let p = |f: &str| kit::toml_str(&gw.pki.join(f).display().to_string());
    // Every replica's configuration is this one with listen addresses of
    // its own (`listen_on`).
    let text = format!(
        r#"# written by `lienthong bench grpc`
[gateway]
id = "lienthong-bench"
organ_id = "000.00.00.H35"

[database]
url = {db}

[storage]
path = {storage}

[trust]
anchors = [{ca}]

[receipts]
key = {rkey}
cert = {rcert}

[auth]
mode = "dev-header"

[limits]
# The bench is many agencies' software at once, all from one address: no
# per-agency or per-peer rate limit.
calls_per_second = 0.0
max_streams_per_agency = 0
peer_calls_per_second = 0.0
redelivery_after_secs = 600
max_attachment_bytes = {matt}
"#,
        db = kit::toml_str(&gw.db_url),
        storage = kit::toml_str(&dir.join("blobs").display().to_string()),
        ca = p("ca.pem"),
        rkey = p("gateway.key.pem"),
        rcert = p("gateway.pem"),
        matt = (args.attachment_bytes as u64).max(1 << 20) * 2,
    );
    let text = format!("{text}{}", extra.config);
    let config = dir.join("lienthong.toml");
    let (first, first_url) = listen_on(&text)?;
    std::fs::write(&config, first)?;
    if let Some(edit) = &extra.directory {
        let csv = gw.pki.join("directory.csv");
        let text = std::fs::read_to_string(&csv)?;
        std::fs::write(&csv, edit(&text)?)?;
    }

    let mut cmd = kit::lienthong_command(exe, &dir);
    cmd.arg("--config")
        .arg(&config)
        .arg("directory")
        .arg("import")
        .arg(gw.pki.join("directory.csv"));
    run_checked(cmd, "lienthong directory import")?;

    // One at a time, each once the one before is serving (the import has
    // migrated the database): replicas join a running gateway, as in
    // operation, and one that cannot start is named alone.
    let count = args.replicas.max(1);
    for k in 0..count {
        let (config, url, logs) = if k == 0 {
            (config.clone(), first_url.clone(), "gateway".to_owned())
        } else {
            let config = dir.join(format!("lienthong-{}.toml", k + 1));
            let (own, url) = listen_on(&text)?;
            std::fs::write(&config, own)?;
            (config, url, format!("gateway-{}", k + 1))
        };
        let name = (count > 1).then(|| format!("replica-{}", k + 1));
        let replica = spawn_replica(exe, &dir, &config, url, &logs, name)?;
        gw.replicas.push(replica);
        if let Some(r) = gw.replicas.last_mut() {
            wait_serving(r).await?;
        }
    }
    Ok(())
}

/// The configuration `text` with gRPC and HTTP listeners on free loopback
/// ports, and the gRPC URL.
fn listen_on(text: &str) -> Result<(String, String)> {
    let grpc = kit::pick_port().context("cannot bind 127.0.0.1:0")?;
    let http = kit::pick_port().context("cannot bind 127.0.0.1:0")?;
    let text = format!(
        "{text}\n[grpc]\nlisten = \"127.0.0.1:{grpc}\"\n\n[http]\nlisten = \"127.0.0.1:{http}\"\n"
    );
    Ok((text, format!("http://127.0.0.1:{grpc}")))
}

/// `lienthong serve` on `config` (listening at `url`), its output in
/// `<logs>.stdout.log` and `<logs>.stderr.log`, named `name` in the
/// transfer log.
fn spawn_replica(
    exe: &Path,
    dir: &Path,
    config: &Path,
    url: String,
    logs: &str,
    name: Option<String>,
) -> Result<Replica> {
    let stderr = dir.join(format!("{logs}.stderr.log"));
    let out = std::fs::File::create(dir.join(format!("{logs}.stdout.log")))?;
    let err = std::fs::File::create(&stderr)?;
    let mut cmd = kit::lienthong_command(exe, dir);
    cmd.env("RUST_LOG", "warn");
    if let Some(name) = &name {
        cmd.env("LIENTHONG_GATEWAY__REPLICA", name);
    }
    cmd.arg("--config")
        .arg(config)
        .arg("serve")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    let child = cmd.spawn().context("cannot start lienthong serve")?;
    Ok(Replica {
        name,
        child: Some(child),
        url,
        stderr,
    })
}

async fn wait_serving(r: &mut Replica) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(child) = r.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            r.child = None;
            let err = std::fs::read_to_string(&r.stderr).unwrap_or_default();
            bail!(
                "lienthong serve ({}) exited ({status}) before it was ready:\n{err}",
                r.name()
            );
        }
        let ep = Endpoint::from_shared(r.url.clone())?
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(2));
        if kit::health_serving(ep).await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the gateway's replica {} at {} did not become SERVING in 60 s",
                r.name(),
                r.url
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ----- process figures -------------------------------------------------------

/// Peak resident set (kB), from VmHWM.
fn peak_rss_kb(pid: u32) -> Option<u64> {
    kit::proc_status_kib(pid, "VmHWM:")
}

// ----- the database baseline -----------------------------------------------

struct Baseline {
    inserts: u64,
    secs: f64,
}

/// The disk's sequential write + fsync rate (MB/s, 10^6 bytes) for `size`
/// bytes in the gateway's own directory, where its attachments are kept.
fn disk_baseline(dir: &Path, size: usize) -> Result<f64> {
    use std::io::Write as _;
    let path = dir.join("disk-baseline.bin");
    let buf = vec![0x5a_u8; CHUNK];
    let start = Instant::now();
    let mut f = std::fs::File::create(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    let mut left = size;
    while left > 0 {
        let n = left.min(CHUNK);
        f.write_all(&buf[..n])?;
        left -= n;
    }
    f.sync_all()?;
    let secs = start.elapsed().as_secs_f64();
    drop(f);
    let _ = std::fs::remove_file(&path);
    Ok(size as f64 / 1e6 / secs.max(1e-9))
}

async fn db_baseline(gw: &Gateway, args: &GrpcArgs, n: u64) -> Result<Baseline> {
    let sqlite = gw.db_url.starts_with("sqlite:");
    let (url, conns) = if sqlite {
        (
            format!("sqlite://{}?mode=rwc", gw.dir.join("baseline.db").display()),
            1,
        )
    } else {
        (gw.db_url.clone(), args.concurrency.max(1) as u32)
    };
    let db = kit::Db::connect_with(&url, conns, Duration::from_secs(30))
        .await
        .map_err(anyhow::Error::msg)?;
    let exec = |sql: &'static str| async { db.execute(sql).await.map_err(anyhow::Error::msg) };
    if sqlite {
        // As the gateway's store: WAL, synchronous=FULL (fsync per commit).
        exec("PRAGMA journal_mode=WAL").await?;
        exec("PRAGMA synchronous=FULL").await?;
        exec(
            "CREATE TABLE IF NOT EXISTS bench_baseline (id INTEGER PRIMARY KEY, body BLOB NOT NULL)",
        )
        .await?;
    } else {
        exec(
            "CREATE TABLE IF NOT EXISTS bench_baseline (id BIGSERIAL PRIMARY KEY, body BYTEA NOT NULL)",
        )
        .await?;
    }
    let sql = if sqlite {
        "INSERT INTO bench_baseline (body) VALUES (?)"
    } else {
        "INSERT INTO bench_baseline (body) VALUES ($1)"
    };
    let payload = vec![b'x'; args.payload_bytes];
    let next = AtomicU64::new(0);
    let workers = args.concurrency.max(1);
    let start = Instant::now();
    let results = futures::future::join_all((0..workers).map(|_| async {
        while next.fetch_add(1, Ordering::Relaxed) < n {
            db.execute_with_bytes(sql, &payload).await?;
        }
        Ok::<(), String>(())
    }))
    .await;
    let secs = start.elapsed().as_secs_f64();
    for r in results {
        r.map_err(anyhow::Error::msg)?;
    }
    let _ = db.execute("DROP TABLE bench_baseline").await;
    db.close().await;
    if sqlite {
        for f in ["baseline.db", "baseline.db-wal", "baseline.db-shm"] {
            let _ = std::fs::remove_file(gw.dir.join(f));
        }
    }
    Ok(Baseline { inserts: n, secs })
}

// ----- the load ----------------------------------------------------------------

struct Agency {
    id: String,
    key: SigningKey,
    chain: Vec<Vec<u8>>,
}

struct Sent {
    sha: Vec<u8>,
    to: Vec<String>,
    accepted_at: Option<SystemTime>,
    /// The replica it was sent to.
    via: usize,
}

#[derive(Default)]
struct Tally {
    sent: HashMap<String, Sent>,
    /// When each (message, recipient) was delivered, and whether by another
    /// replica than the one that accepted the message.
    delivered: HashMap<(String, String), (SystemTime, bool)>,
    errors: BTreeMap<String, u64>,
    /// Sends the gateway turned away as overloaded (UNAVAILABLE or
    /// RESOURCE_EXHAUSTED): nothing was kept, the sender may try again.
    /// Reported, not errors: shedding is how a gateway survives overload.
    refused: BTreeMap<String, u64>,
    /// Open loop: sends that started more than 100 ms after their turn
    /// because --concurrency sends were all outstanding.
    behind_schedule: u64,
    last_send_start: Option<Instant>,
    fetch_latency: Vec<Duration>,
    accept_latency: Vec<Duration>,
    accepted: u64,
    expected_deliveries: u64,
    delivered_ok: u64,
    acked: u64,
    last_accept: Option<Instant>,
    last_deliver: Option<Instant>,
    last_ack: Option<Instant>,
    /// Per replica: documents it accepted, deliveries it handed out.
    accepted_by: Vec<u64>,
    delivered_by: Vec<u64>,
    /// Deliveries handed out by another replica than the one that accepted
    /// the document.
    delivered_across: u64,
}

impl Tally {
    fn error(&mut self, reason: impl Into<String>) {
        *self.errors.entry(reason.into()).or_insert(0) += 1;
    }
}

/// `Code/REASON` of a refusal, `Code/-` when it carries no reason code.
fn reason_of(st: &tonic::Status) -> String {
    let reason = kit::reason_of(st).unwrap_or_else(|| "-".to_owned());
    format!("{:?}/{reason}", st.code())
}

fn sha256(b: &[u8]) -> Vec<u8> {
    kit::sha256(b).to_vec()
}

fn ts(t: SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn from_ts(t: &prost_types::Timestamp) -> SystemTime {
    SystemTime::UNIX_EPOCH
        + Duration::new(
            t.seconds.max(0) as u64,
            t.nanos.clamp(0, 999_999_999) as u32,
        )
}

/// The attachment every document carries: a byte pattern made chunk by
/// chunk as it is sent (a 1 GiB attachment is never held in memory), and
/// its digest.
struct Attachment {
    size: usize,
    sha: Vec<u8>,
    /// The pattern `i % 251`, long enough that any chunk is one slice of it.
    pattern: Vec<u8>,
}

impl Attachment {
    fn new(size: usize) -> Attachment {
        let pattern: Vec<u8> = (0..CHUNK + 251).map(|i| (i % 251) as u8).collect();
        let mut a = Attachment {
            size,
            sha: Vec::new(),
            pattern,
        };
        let mut ctx = digest::Context::new(&digest::SHA256);
        let mut off = 0;
        while off < size {
            let c = a.chunk_at(off);
            ctx.update(c);
            off += c.len();
        }
        a.sha = ctx.finish().as_ref().to_vec();
        a
    }

    /// The bytes at `off..off + CHUNK` (or to the end).
    fn chunk_at(&self, off: usize) -> &[u8] {
        let n = CHUNK.min(self.size - off);
        &self.pattern[off % 251..off % 251 + n]
    }

    fn chunk_count(&self) -> usize {
        self.size.div_ceil(CHUNK)
    }
}

struct Load {
    agencies: Vec<Agency>,
    args: GrpcArgs,
    content: String,
    attachment: Option<Arc<Attachment>>,
    next: AtomicU64,
    tally: Mutex<Tally>,
    progress: Notify,
}

impl Load {
    fn recipients(&self, i: u64) -> (usize, Vec<String>) {
        let n = self.agencies.len();
        let from = (i as usize) % n;
        let to = (1..=self.args.recipients)
            .map(|k| self.agencies[(from + k) % n].id.clone())
            .collect();
        (from, to)
    }

    fn envelope(&self, i: u64) -> Result<(String, String, pb::SignedEnvelope, Vec<String>)> {
        let (from, to) = self.recipients(i);
        let agency = &self.agencies[from];
        let message_id = uuid::Uuid::new_v4().to_string();
        let attachments = match &self.attachment {
            Some(a) => vec![pb::AttachmentRef {
                name: "bench.bin".to_owned(),
                content_type: "application/octet-stream".to_owned(),
                size: a.size as u64,
                sha256: a.sha.clone().into(),
                description: String::new(),
                ..Default::default()
            }],
            None => Vec::new(),
        };
        let envelope = Envelope {
            message_id: message_id.clone(),
            from: agency.id.clone(),
            to: to.clone(),
            created_at: Some(ts(SystemTime::now())),
            body: Some(pb::envelope::Body::Document(pb::Document {
                document_id: message_id.clone(),
                code_number: i.to_string(),
                code_notation: "BENCH".to_owned(),
                promulgation_date: "2026-01-01".to_owned(),
                subject: format!("bench document {i}"),
                content: self.content.clone(),
                attachments,
                ..Default::default()
            })),
            ..Default::default()
        };
        let signed = signing::sign_envelope(&envelope, &agency.key, &agency.chain)
            .map_err(|e| anyhow::anyhow!("{}", e.message()))?;
        Ok((message_id, agency.id.clone(), signed, to))
    }

    fn more(&self, deadline: Option<Instant>, total: u64) -> Option<u64> {
        if let Some(d) = deadline {
            if Instant::now() >= d {
                return None;
            }
            return Some(self.next.fetch_add(1, Ordering::Relaxed));
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        (i < total).then_some(i)
    }
}

/// Closed loop: the next document when the last one is answered.
async fn sender(
    load: Arc<Load>,
    (via, mut client): (usize, ExchangeClient<Channel>),
    deadline: Option<Instant>,
    total: u64,
) -> Result<()> {
    while let Some(i) = load.more(deadline, total) {
        send_one(&load, &mut client, via, i).await?;
    }
    Ok(())
}

/// Open loop: document *k* is offered at `start + k / rate` whatever the
/// answers, with at most `max_outstanding` sends in flight (beyond that the
/// offer falls behind schedule, and that is counted).
async fn offer(
    load: Arc<Load>,
    clients: Vec<(usize, ExchangeClient<Channel>)>,
    rate: f64,
    start: Instant,
    deadline: Option<Instant>,
    total: u64,
    max_outstanding: usize,
) -> Result<()> {
    let slots = Arc::new(tokio::sync::Semaphore::new(max_outstanding.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let mut k = 0u64;
    while let Some(i) = load.more(deadline, total) {
        let due = start + Duration::from_secs_f64(k as f64 / rate);
        k += 1;
        tokio::time::sleep_until(due.into()).await;
        let slot = slots.clone().acquire_owned().await?;
        if Instant::now() > due + Duration::from_millis(100) {
            lock(&load.tally).behind_schedule += 1;
        }
        let (via, mut client) = clients[(i as usize) % clients.len()].clone();
        let load = load.clone();
        tasks.spawn(async move {
            let r = send_one(&load, &mut client, via, i).await;
            drop(slot);
            r
        });
        while let Some(done) = tasks.try_join_next() {
            done??;
        }
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

async fn send_one(
    load: &Load,
    client: &mut ExchangeClient<Channel>,
    via: usize,
    i: u64,
) -> Result<()> {
    let (message_id, from, signed, to) = load.envelope(i)?;
    lock(&load.tally).sent.insert(
        message_id.clone(),
        Sent {
            sha: sha256(&signed.payload),
            to: to.clone(),
            accepted_at: None,
            via,
        },
    );
    let first = SendRequest {
        item: Some(Item::Envelope(signed)),
    };
    let attachment = load.attachment.clone();
    let chunks = (0..attachment.as_ref().map_or(0, |a| a.chunk_count())).map(move |k| {
        let data = attachment
            .as_ref()
            .map(|a| a.chunk_at(k * CHUNK).to_vec())
            .unwrap_or_default()
            .into();
        SendRequest {
            item: Some(Item::Chunk(pb::AttachmentChunk { index: 0, data })),
        }
    });
    let items = tokio_stream::iter(std::iter::once(first).chain(chunks));
    let req = with_identity(items, &from)?;
    let started = Instant::now();
    lock(&load.tally).last_send_start = Some(started);
    let result = client.send(req).await;
    let now = Instant::now();
    let mut t = lock(&load.tally);
    match result {
        Ok(r) => {
            let r = r.into_inner();
            t.accepted += 1;
            if let Some(n) = t.accepted_by.get_mut(via) {
                *n += 1;
            }
            t.expected_deliveries += to.len() as u64;
            t.accept_latency.push(now - started);
            t.last_accept = Some(now);
            let at = r.accepted_at.as_ref().map(from_ts);
            if let Some(s) = t.sent.get_mut(&message_id) {
                s.accepted_at = at;
            }
            if r.duplicate {
                t.error("duplicate_receipt");
            }
        }
        Err(st) => {
            t.sent.remove(&message_id);
            let reason = format!("send:{}", reason_of(&st));
            // An overload refusal says so with a reason code; a transport
            // failure without one (a gateway that stopped answering) is an
            // error.
            let overload = matches!(
                st.code(),
                tonic::Code::Unavailable | tonic::Code::ResourceExhausted
            ) && !reason.ends_with("/-");
            if overload {
                *t.refused.entry(reason).or_insert(0) += 1;
            } else {
                t.error(reason);
            }
        }
    }
    drop(t);
    load.progress.notify_waiters();
    Ok(())
}

/// Agency `me`'s `Receive` stream on replica `at`.
async fn receiver(
    load: Arc<Load>,
    (at, mut client): (usize, ExchangeClient<Channel>),
    me: String,
) -> Result<()> {
    let req = with_identity(
        pb::ReceiveRequest {
            follow: true,
            max: 0,
            format: pb::DeliveryFormat::Envelope as i32,
        },
        &me,
    )?;
    let mut stream = match client.receive(req).await {
        Ok(r) => r.into_inner(),
        Err(st) => {
            lock(&load.tally).error(format!("receive:{}", reason_of(&st)));
            return Ok(());
        }
    };
    let (ack_tx, ack_rx) = tokio::sync::mpsc::channel::<(String, String, String)>(1024);
    let acker = {
        let load = load.clone();
        let client = client.clone();
        let me = me.clone();
        tokio::spawn(async move {
            tokio_stream::wrappers::ReceiverStream::new(ack_rx)
                .for_each_concurrent(16, |(delivery_id, message_id, from)| {
                    let load = load.clone();
                    let mut client = client.clone();
                    let me = me.clone();
                    async move {
                        if let Some(a) = &load.attachment {
                            let started = Instant::now();
                            let r = fetch_and_check(
                                &mut client,
                                &me,
                                &message_id,
                                &from,
                                a.size,
                                &a.sha,
                            )
                            .await;
                            let mut t = lock(&load.tally);
                            match r {
                                Ok(()) => t.fetch_latency.push(started.elapsed()),
                                Err(reason) => t.error(reason),
                            }
                        }
                        let r = match with_identity(pb::AckRequest { delivery_id }, &me) {
                            Ok(req) => client.ack(req).await.map_err(|st| reason_of(&st)),
                            Err(e) => Err(e.to_string()),
                        };
                        let mut t = lock(&load.tally);
                        match r {
                            Ok(_) => {
                                t.acked += 1;
                                t.last_ack = Some(Instant::now());
                            }
                            Err(reason) => t.error(format!("ack:{reason}")),
                        }
                        drop(t);
                        load.progress.notify_waiters();
                    }
                })
                .await
        })
    };
    while let Some(item) = stream.next().await {
        let d = match item {
            Ok(d) => d,
            Err(st) => {
                lock(&load.tally).error(format!("receive_stream:{}", reason_of(&st)));
                break;
            }
        };
        let now = SystemTime::now();
        if d.notice.is_some() {
            // A gateway notice (maintenance): no message, nothing to ack.
            continue;
        }
        let Some(signed) = d.envelope.as_ref() else {
            lock(&load.tally).error("delivery_without_envelope");
            continue;
        };
        let sha = sha256(&signed.payload);
        let (message_id, from) = match <Envelope as prost::Message>::decode(signed.payload.clone())
        {
            Ok(e) => (e.message_id, e.from),
            Err(_) => (String::new(), String::new()),
        };
        {
            let mut t = lock(&load.tally);
            let verdict = match t.sent.get(&message_id) {
                None => Err("unknown_delivery"),
                Some(s) if s.sha != sha => Err("corrupted"),
                Some(s) if !s.to.contains(&me) => Err("misrouted"),
                Some(s) => Ok(s.via),
            };
            match verdict {
                Err(v) => t.error(v),
                Ok(via) => {
                    let key = (message_id.clone(), me.clone());
                    let fresh = match t.delivered.entry(key) {
                        std::collections::hash_map::Entry::Vacant(v) => {
                            v.insert((now, via != at));
                            true
                        }
                        std::collections::hash_map::Entry::Occupied(_) => false,
                    };
                    if fresh {
                        t.delivered_ok += 1;
                        t.last_deliver = Some(Instant::now());
                        if let Some(n) = t.delivered_by.get_mut(at) {
                            *n += 1;
                        }
                        if via != at {
                            t.delivered_across += 1;
                        }
                    } else {
                        t.error("duplicated");
                    }
                }
            }
        }
        load.progress.notify_waiters();
        if ack_tx
            .send((d.delivery_id, message_id, from))
            .await
            .is_err()
        {
            break;
        }
    }
    drop(ack_tx);
    let _ = acker.await;
    Ok(())
}

/// Fetches a delivery's attachment and checks its size and SHA-256 against
/// what was sent; the error is a reason for the tally.
async fn fetch_and_check(
    client: &mut ExchangeClient<Channel>,
    me: &str,
    message_id: &str,
    from: &str,
    size: usize,
    sha: &[u8],
) -> std::result::Result<(), String> {
    let req = with_identity(
        pb::FetchAttachmentRequest {
            message_id: message_id.to_owned(),
            from: from.to_owned(),
            index: 0,
        },
        me,
    )
    .map_err(|e| e.to_string())?;
    let mut stream = client
        .fetch_attachment(req)
        .await
        .map_err(|st| format!("fetch:{}", reason_of(&st)))?
        .into_inner();
    let mut ctx = digest::Context::new(&digest::SHA256);
    let mut got = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|st| format!("fetch:{}", reason_of(&st)))?;
        ctx.update(&chunk.data);
        got += chunk.data.len();
    }
    if got != size || ctx.finish().as_ref() != sha {
        return Err("attachment_corrupted".to_owned());
    }
    Ok(())
}

struct Percentiles {
    p50: f64,
    p95: f64,
    p99: f64,
    max: f64,
}

fn percentiles(mut v: Vec<Duration>) -> Option<Percentiles> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let at = |q: f64| {
        let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
        v[i].as_secs_f64() * 1000.0
    };
    Some(Percentiles {
        p50: at(0.50),
        p95: at(0.95),
        p99: at(0.99),
        max: at(1.0),
    })
}

fn pjson(p: &Option<Percentiles>) -> serde_json::Value {
    match p {
        Some(p) => serde_json::json!({"p50": p.p50, "p95": p.p95, "p99": p.p99, "max": p.max}),
        None => serde_json::Value::Null,
    }
}

async fn grpc(args: GrpcArgs) -> Result<ExitCode> {
    if !(1..=3).contains(&args.recipients) {
        bail!("--recipients is 1, 2 or 3 (the throwaway PKI has four agencies)");
    }
    if args.concurrency == 0 {
        bail!("--concurrency is at least 1");
    }
    if args.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        bail!("--rate is a number of documents per second above 0");
    }
    if args.replicas == 0 {
        bail!("--replicas is at least 1");
    }
    if args.replicas > 1 && args.database == "sqlite" {
        bail!(
            "--replicas {} needs --database postgres://…: replicas share one PostgreSQL \
             database, and SQLite is one process's database",
            args.replicas
        );
    }
    let mut gw = start_gateway(&args).await?;
    let r = drive(&args, &gw).await;
    gw.stop().await;
    let report = r?;
    if args.json {
        println!("{report}");
    } else {
        print_table(&report);
    }
    let errors = report["error_count"].as_u64().unwrap_or(1);
    Ok(if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn drive(args: &GrpcArgs, gw: &Gateway) -> Result<serde_json::Value> {
    let total = args.docs.unwrap_or(2000);
    let deadline_len = args.duration.map(Duration::from_secs_f64);
    // The database's insert rate says little of a run that moves large
    // attachments; the disk's write rate does.
    let disk_mb_per_sec = if args.baseline && args.attachment_bytes > 0 {
        let (dir, size) = (gw.dir.clone(), args.attachment_bytes);
        Some(tokio::task::spawn_blocking(move || disk_baseline(&dir, size)).await??)
    } else {
        None
    };
    let baseline = if args.baseline && args.attachment_bytes < (64 << 20) {
        let n = if deadline_len.is_some() {
            2000
        } else {
            total.min(2000)
        };
        Some(db_baseline(gw, args, n).await?)
    } else {
        None
    };

    let mut agencies = Vec::new();
    for (id, _) in devpki::default_agencies() {
        let id = id.to_string();
        let pem = std::fs::read_to_string(gw.pki.join(format!("{id}.key.pem")))?;
        let key = SigningKey::from_pkcs8_pem(&pem, None)
            .map_err(|e| anyhow::anyhow!("{}", e.message()))?;
        let chain = signing::load_certificates_pem(&gw.pki.join(format!("{id}.pem")))
            .map_err(|e| anyhow::anyhow!("{}", e.message()))?;
        agencies.push(Agency { id, key, chain });
    }
    let attachment =
        (args.attachment_bytes > 0).then(|| Arc::new(Attachment::new(args.attachment_bytes)));
    let replicas = gw.replicas.len();
    let load = Arc::new(Load {
        agencies,
        args: args.clone(),
        content: "x".repeat(args.payload_bytes),
        attachment,
        next: AtomicU64::new(0),
        tally: Mutex::new(Tally {
            accepted_by: vec![0; replicas],
            delivered_by: vec![0; replicas],
            ..Tally::default()
        }),
        progress: Notify::new(),
    });
    let mut pids = Vec::with_capacity(replicas);
    for r in &gw.replicas {
        let pid = r
            .pid()
            .with_context(|| format!("the gateway's replica {} is not running", r.name()))?;
        pids.push(pid);
    }
    let cpu_before: Vec<Option<f64>> = pids.iter().map(|&p| cpu_secs(p)).collect();
    // A client of replica `k mod N`, and that replica's index.
    let client_of = move |k: usize| async move {
        let at = k % replicas;
        let r = gw.replicas.get(at).context("no replica")?;
        Ok::<_, anyhow::Error>((at, connect(&r.url).await?))
    };

    let mut receivers = Vec::new();
    for (j, a) in load.agencies.iter().enumerate() {
        // One further than the senders' spread, so that with two replicas
        // half the deliveries cross from one to the other.
        let client = client_of(j + 1).await?;
        receivers.push(tokio::spawn(receiver(load.clone(), client, a.id.clone())));
    }
    // Let the receive streams open before the first document.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let start = Instant::now();
    let deadline = deadline_len.map(|d| start + d);
    let mut senders = Vec::new();
    match args.rate {
        None => {
            for i in 0..args.concurrency {
                let client = client_of(i).await?;
                senders.push(tokio::spawn(sender(load.clone(), client, deadline, total)));
            }
        }
        Some(rate) => {
            // HTTP/2 multiplexes: a few connections carry every outstanding
            // send.
            let mut clients = Vec::new();
            for i in 0..args.concurrency.clamp(1, 16).max(replicas) {
                clients.push(client_of(i).await?);
            }
            senders.push(tokio::spawn(offer(
                load.clone(),
                clients,
                rate,
                start,
                deadline,
                total,
                args.concurrency,
            )));
        }
    }
    for s in senders {
        s.await??;
    }
    drain(&load.progress, || {
        let t = lock(&load.tally);
        t.delivered_ok >= t.expected_deliveries && t.acked >= t.expected_deliveries
    })
    .await;
    for r in &receivers {
        r.abort();
    }
    let cpu_after: Vec<Option<f64>> = pids.iter().map(|&p| cpu_secs(p)).collect();
    let rss: Vec<Option<u64>> = pids.iter().map(|&p| peak_rss_kb(p)).collect();

    let mut t = lock(&load.tally);
    let missing = t.expected_deliveries.saturating_sub(t.delivered_ok);
    if missing > 0 {
        *t.errors.entry("missing".to_owned()).or_insert(0) += missing;
    }
    let unacked = t.delivered_ok.saturating_sub(t.acked);
    if unacked > 0 {
        *t.errors.entry("not_acknowledged".to_owned()).or_insert(0) += unacked;
    }
    let mut a2d = Vec::with_capacity(t.delivered.len());
    let mut a2d_across = Vec::new();
    for ((mid, _), (at, across)) in &t.delivered {
        if let Some(acc) = t.sent.get(mid).and_then(|s| s.accepted_at) {
            let d = at.duration_since(acc).unwrap_or_default();
            a2d.push(d);
            if *across {
                a2d_across.push(d);
            }
        }
    }
    let rate = |n: u64, last: Option<Instant>| match last {
        Some(l) if l > start => n as f64 / (l - start).as_secs_f64(),
        _ => 0.0,
    };
    let accepted_per_sec = rate(t.accepted, t.last_accept);
    let error_count: u64 = t.errors.values().sum();
    let cpu_each: Vec<Option<f64>> = cpu_before
        .iter()
        .zip(&cpu_after)
        .map(|(a, b)| Some((*b)? - (*a)?))
        .collect();
    // The gateway's CPU and memory are those of all its processes.
    let cpu: Option<f64> = cpu_each.iter().copied().sum();
    let rss_sum: Option<u64> = rss.iter().copied().sum();
    let accepted = t.accepted;
    let per_1000 = move |c: Option<f64>| {
        c.filter(|_| accepted > 0)
            .map(|c| c * 1000.0 / accepted as f64)
    };
    let replicas_json: Vec<serde_json::Value> = gw
        .replicas
        .iter()
        .enumerate()
        .map(|(k, r)| {
            serde_json::json!({
                "name": r.name(),
                "url": r.url,
                "pid": pids.get(k),
                "accepted": t.accepted_by.get(k),
                "delivered": t.delivered_by.get(k),
                "peak_rss_kb": rss.get(k).copied().flatten(),
                "cpu_secs": cpu_each.get(k).copied().flatten(),
                // Per document of the whole run: the replicas' figures add
                // up to the gateway's.
                "cpu_secs_per_1000_docs": per_1000(cpu_each.get(k).copied().flatten()),
            })
        })
        .collect();
    let size = args.attachment_bytes as f64 / 1e6;
    let attachment_json = if args.attachment_bytes > 0 {
        let fetch = percentiles(std::mem::take(&mut t.fetch_latency));
        serde_json::json!({
            // Attachment bytes accepted per second of the run, and carried
            // all the way (accepted, fetched by the recipient, checked,
            // acknowledged).
            "in_mb_per_sec": rate(t.accepted, t.last_accept) * size,
            "end_to_end_mb_per_sec": rate(t.acked, t.last_ack) * size,
            "fetch_ms": pjson(&fetch),
            "fetch_mb_per_sec_p50": fetch.as_ref().map(|p| size / (p.p50 / 1000.0).max(1e-9)),
        })
    } else {
        serde_json::Value::Null
    };
    let mut baseline_json = serde_json::json!({});
    if let Some(b) = &baseline {
        let per_sec = b.inserts as f64 / b.secs.max(1e-9);
        baseline_json["db_inserts"] = b.inserts.into();
        baseline_json["db_inserts_per_sec"] = per_sec.into();
        baseline_json["gateway_accepted_ratio"] = (accepted_per_sec / per_sec).into();
    }
    if let Some(mb) = disk_mb_per_sec {
        baseline_json["disk_write_mb_per_sec"] = mb.into();
        baseline_json["gateway_end_to_end_ratio"] =
            (rate(t.acked, t.last_ack) * size / mb.max(1e-9)).into();
    }
    let offered_per_sec = match t.last_send_start {
        Some(l) if l > start => {
            let n = t.accepted + t.refused.values().sum::<u64>();
            n.saturating_sub(1) as f64 / (l - start).as_secs_f64()
        }
        _ => 0.0,
    };
    let refused_count: u64 = t.refused.values().sum();
    Ok(serde_json::json!({
        "mode": if args.mode.is_empty() { "grpc" } else { args.mode },
        "database": if gw.pg.is_some() { "postgres" } else { "sqlite" },
        "replicas": replicas,
        "key_type": key_type_name(args.key_type),
        "concurrency": args.concurrency,
        "payload_bytes": args.payload_bytes,
        "attachment_bytes": args.attachment_bytes,
        "recipients": args.recipients,
        "rate": args.rate,
        "offered_per_sec": offered_per_sec,
        "behind_schedule": t.behind_schedule,
        "refused": t.refused,
        "refused_count": refused_count,
        "attachment": attachment_json,
        "sent": t.accepted + refused_count + t.errors.iter().filter(|(k, _)| k.starts_with("send:")).map(|(_, v)| *v).sum::<u64>(),
        "accepted": t.accepted,
        "expected_deliveries": t.expected_deliveries,
        "delivered": t.delivered_ok,
        "delivered_across_replicas": t.delivered_across,
        "acknowledged": t.acked,
        "window_secs": t.last_ack.or(t.last_accept).map(|l| (l - start).as_secs_f64()).unwrap_or(0.0),
        "accepted_per_sec": accepted_per_sec,
        "delivered_per_sec": rate(t.delivered_ok, t.last_deliver),
        "acknowledged_per_sec": rate(t.acked, t.last_ack),
        "accept_latency_ms": pjson(&percentiles(std::mem::take(&mut t.accept_latency))),
        "accept_to_deliver_ms": pjson(&percentiles(a2d)),
        // Those handed out by another replica than the one that accepted
        // the document: woken by its NOTIFY.
        "accept_to_deliver_across_ms": pjson(&percentiles(a2d_across)),
        "errors": t.errors,
        "error_count": error_count,
        "gateway": {
            "pid": pids.first(),
            // The sum of the replicas' peaks.
            "peak_rss_kb": rss_sum,
            "cpu_secs": cpu,
            "cpu_secs_per_1000_docs": per_1000(cpu),
            "replicas": replicas_json,
        },
        "baseline": if baseline_json.as_object().is_some_and(|o| o.is_empty()) { serde_json::Value::Null } else { baseline_json },
    }))
}

/// The gateway's own resources, as every mode's table ends.
fn print_gateway(g: &serde_json::Value) {
    let fixed = |v: &serde_json::Value, places: usize| match v.as_f64() {
        Some(x) => format!("{x:.places$}"),
        None => "-".to_owned(),
    };
    println!(
        "{:<34} {:>12}",
        "gateway peak RSS (MB)",
        fixed(&(g["peak_rss_kb"].as_f64().map(|k| k / 1024.0).into()), 1)
    );
    println!("{:<34} {:>12}", "gateway CPU (s)", fixed(&g["cpu_secs"], 1));
    println!(
        "{:<34} {:>12}",
        "gateway CPU s / 1,000 documents",
        fixed(&g["cpu_secs_per_1000_docs"], 2)
    );
}

/// Each replica's share, when there are several: its CPU per document is
/// per document of the whole run, so the replicas' figures add up to the
/// gateway's (as do their peaks to the gateway's peak RSS).
fn print_replicas(replicas: &serde_json::Value) {
    let Some(list) = replicas.as_array().filter(|l| l.len() > 1) else {
        return;
    };
    let fixed = |v: Option<f64>, places: usize| match v {
        Some(x) => format!("{x:.places$}"),
        None => "-".to_owned(),
    };
    let count =
        |v: &serde_json::Value| v.as_u64().map_or_else(|| "-".to_owned(), |n| n.to_string());
    println!();
    println!(
        "{:<12} {:>9} {:>10} {:>8} {:>15} {:>15}",
        "replica", "accepted", "delivered", "CPU (s)", "CPU s / 1,000", "peak RSS (MB)"
    );
    for r in list {
        println!(
            "{:<12} {:>9} {:>10} {:>8} {:>15} {:>15}",
            r["name"].as_str().unwrap_or("?"),
            count(&r["accepted"]),
            count(&r["delivered"]),
            fixed(r["cpu_secs"].as_f64(), 1),
            fixed(r["cpu_secs_per_1000_docs"].as_f64(), 2),
            fixed(r["peak_rss_kb"].as_f64().map(|k| k / 1024.0), 1),
        );
    }
}

fn print_table(r: &serde_json::Value) {
    let f = |v: &serde_json::Value| match v.as_f64() {
        Some(x) => format!("{x:.1}"),
        None => "-".to_owned(),
    };
    println!(
        "lienthong bench {}: {} database, {} replica(s), {} keys, concurrency {}, {} B content, {} B attachment, {} recipient(s)",
        r["mode"].as_str().unwrap_or("?"),
        r["database"].as_str().unwrap_or("?"),
        r["replicas"],
        r["key_type"].as_str().unwrap_or("?"),
        r["concurrency"],
        r["payload_bytes"],
        r["attachment_bytes"],
        r["recipients"],
    );
    println!();
    if let Some(rate) = r["rate"].as_f64() {
        println!("{:<34} {:>12.1}", "offered / s (asked)", rate);
        println!(
            "{:<34} {:>12}",
            "offered / s (reached)",
            f(&r["offered_per_sec"])
        );
        println!(
            "{:<34} {:>12}",
            "sends behind schedule", r["behind_schedule"]
        );
    }
    println!("{:<34} {:>12}", "documents accepted", r["accepted"]);
    println!("{:<34} {:>12}", "refused as overloaded", r["refused_count"]);
    if let Some(refused) = r["refused"].as_object() {
        for (k, v) in refused {
            println!("  {k:<32} {v:>12}");
        }
    }
    println!(
        "{:<34} {:>12}",
        "deliveries expected", r["expected_deliveries"]
    );
    println!("{:<34} {:>12}", "deliveries delivered", r["delivered"]);
    if r["replicas"].as_u64().is_some_and(|n| n > 1) {
        println!(
            "{:<34} {:>12}",
            "  … by another replica", r["delivered_across_replicas"]
        );
    }
    println!(
        "{:<34} {:>12}",
        "deliveries acknowledged", r["acknowledged"]
    );
    println!("{:<34} {:>12}", "window (s)", f(&r["window_secs"]));
    println!("{:<34} {:>12}", "accepted / s", f(&r["accepted_per_sec"]));
    println!("{:<34} {:>12}", "delivered / s", f(&r["delivered_per_sec"]));
    println!(
        "{:<34} {:>12}",
        "acknowledged / s",
        f(&r["acknowledged_per_sec"])
    );
    println!();
    println!(
        "{:<24} {:>9} {:>9} {:>9} {:>9}",
        "latency (ms)", "p50", "p95", "p99", "max"
    );
    for (name, key) in [
        ("accept", "accept_latency_ms"),
        ("accept → deliver", "accept_to_deliver_ms"),
        ("  … across replicas", "accept_to_deliver_across_ms"),
    ] {
        let p = &r[key];
        if p.is_null() && key == "accept_to_deliver_across_ms" {
            continue;
        }
        println!(
            "{:<24} {:>9} {:>9} {:>9} {:>9}",
            name,
            f(&p["p50"]),
            f(&p["p95"]),
            f(&p["p99"]),
            f(&p["max"])
        );
    }
    let a = &r["attachment"];
    if !a.is_null() {
        println!(
            "{:<24} {:>9} {:>9} {:>9} {:>9}",
            "attachment fetch",
            f(&a["fetch_ms"]["p50"]),
            f(&a["fetch_ms"]["p95"]),
            f(&a["fetch_ms"]["p99"]),
            f(&a["fetch_ms"]["max"])
        );
        println!();
        println!(
            "{:<34} {:>12}",
            "attachments in, MB/s",
            f(&a["in_mb_per_sec"])
        );
        println!(
            "{:<34} {:>12}",
            "attachments end to end, MB/s",
            f(&a["end_to_end_mb_per_sec"])
        );
        println!(
            "{:<34} {:>12}",
            "one fetch (p50), MB/s",
            f(&a["fetch_mb_per_sec_p50"])
        );
    }
    println!();
    print_gateway(&r["gateway"]);
    let b = &r["baseline"];
    if !b["disk_write_mb_per_sec"].is_null() {
        println!(
            "{:<34} {:>12}",
            "baseline: disk write+fsync MB/s",
            f(&b["disk_write_mb_per_sec"])
        );
        println!(
            "{:<34} {:>12}",
            "end to end ÷ baseline",
            match b["gateway_end_to_end_ratio"].as_f64() {
                Some(x) => format!("{x:.2}"),
                None => "-".to_owned(),
            }
        );
    }
    if !b["db_inserts_per_sec"].is_null() {
        println!(
            "{:<34} {:>12}",
            "baseline: db fsync'd inserts / s",
            f(&b["db_inserts_per_sec"])
        );
        println!(
            "{:<34} {:>12}",
            "accepted / s ÷ baseline",
            match b["gateway_accepted_ratio"].as_f64() {
                Some(x) => format!("{x:.2}"),
                None => "-".to_owned(),
            }
        );
    }
    print_replicas(&r["gateway"]["replicas"]);
    println!();
    println!("{:<34} {:>12}", "errors", r["error_count"]);
    if let Some(errs) = r["errors"].as_object() {
        for (k, v) in errs {
            println!("  {k:<32} {v:>12}");
        }
    }
}

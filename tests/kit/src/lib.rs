//! End-to-end harness: runs the real `lienthong` binary and talks to it as
//! agency software would (gRPC with `x-organ-id`), and as an operator would
//! (the command line).
//!
//! * [`TestGateway`] — a gateway in its own temp dir: `dev-pki` (or a PKI
//!   made elsewhere, e.g. by [`openssl_pki`]), a config file, `directory
//!   import`, then `serve` on free loopback ports, on SQLite or on a fresh
//!   PostgreSQL database of its own.
//! * [`Agency`] — a gRPC client with an agency's identity, key and certificate.
//! * [`Signer`], [`pae`], [`sign_envelope`] — an independent implementation
//!   of the signing contract (DSSE PAE, JOSE algorithms) on `ring`.
//! * [`pki`] — certificates the gateway must refuse (untrusted, expired),
//!   issued with `rcgen`.
//! * [`PgCluster`] — a PostgreSQL cluster of one test, to stop and start.
//!
//! Environment:
//! * `LIENTHONG_BIN` — the binary (default: `target/<profile>/lienthong`).
//! * `LIENTHONG_TEST_PG_URL` — PostgreSQL admin URL
//!   (default `postgres://postgres@127.0.0.1:5432/test`).
//! * `LIENTHONG_REQUIRE_SERVICES=1` — a missing service fails the test
//!   instead of skipping it.
//! * `LIENTHONG_E2E_KEEP=1` — keep each gateway's temp dir (logs, database).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command as StdCommand, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use futures::{Stream, StreamExt};
use prost::Message;
use prost::bytes::Bytes;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};
use tonic_types::StatusExt;

pub use lienthong_proto::v1;
use v1::directory_client::DirectoryClient;
use v1::exchange_client::ExchangeClient;
use v1::{
    AckRequest, Agency as AgencyRecord, AttachmentChunk, AttachmentRef, Delivery, Document,
    Envelope, FetchAttachmentRequest, ListRequest, LookupRequest, ReceiveRequest, SendReceipt,
    SendRequest, Signature, SignedEnvelope, Signer as DocSigner, StatusNotice, TraceEvent,
    TraceRequest, envelope, send_request,
};

/// The four agencies `lienthong dev-pki` creates.
pub const PROVINCE: &str = "000.00.00.H35";
/// Agency A (sender in most tests).
pub const A: &str = "000.00.01.H35";
/// Agency B.
pub const B: &str = "000.00.12.H35";
/// Agency C.
pub const C: &str = "000.00.31.H35";

/// Chunk size used when streaming attachments.
pub const CHUNK: usize = 64 * 1024;

// ---------------------------------------------------------------------------
// Environment, binary, services
// ---------------------------------------------------------------------------

/// The `lienthong` binary under test: `LIENTHONG_BIN`, else the one cargo
/// built for this package's tests (`CARGO_BIN_EXE_lienthong`, which
/// `cargo test` also sets when it runs them).
pub fn bin_path() -> PathBuf {
    for var in ["LIENTHONG_BIN", "CARGO_BIN_EXE_lienthong"] {
        if let Some(p) = std::env::var_os(var) {
            let p = PathBuf::from(p);
            assert!(p.is_file(), "{var}={} does not name a file", p.display());
            return p;
        }
    }
    panic!(
        "no lienthong binary to test: run the tests with `cargo test -p lienthong`, or set \
         LIENTHONG_BIN to the binary"
    )
}

/// Whether missing services must fail tests (`LIENTHONG_REQUIRE_SERVICES=1`).
pub fn require_services() -> bool {
    matches!(
        std::env::var("LIENTHONG_REQUIRE_SERVICES").as_deref(),
        Ok("1") | Ok("true") | Ok("yes")
    )
}

/// Print a line that is visible even when the test harness captures output.
pub fn notice(line: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{line}");
}

/// Whether this is a CI run (`CI=true`), where what a test needs must be there.
pub fn in_ci() -> bool {
    matches!(std::env::var("CI").as_deref(), Ok("true") | Ok("1"))
}

/// `samples/<sub>` of the reference data kept outside the repository
/// (real edXML packages, a real directory, real trust anchors).
///
/// `$LIENTHONG_SAMPLES` names them; a test then fails if they are not
/// there (CI's `.ci/run` sets it whenever it finds them). Unset, they are
/// looked for as `shared/samples` beside the checkout or any folder above
/// it; where there are none the test says SKIPPED on stderr, shown even
/// when it passes. The repository's own fixtures cover the behaviour; these
/// check it against what real producers send.
pub fn reference_samples(test: &str, sub: &str) -> Option<PathBuf> {
    if let Some(root) = std::env::var_os("LIENTHONG_SAMPLES") {
        let dir = PathBuf::from(root).join(sub);
        assert!(
            dir.is_dir(),
            "{test}: LIENTHONG_SAMPLES names no {}",
            dir.display()
        );
        return Some(dir);
    }
    let found = checkout_root()
        .ancestors()
        .map(|d| d.join("shared/samples").join(sub))
        .find(|d| d.is_dir());
    if found.is_none() {
        notice(&format!(
            "SKIPPED: {test}: no shared/samples/{sub} beside the checkout or above it (set LIENTHONG_SAMPLES)"
        ));
    }
    found
}

/// The checkout's root: the nearest folder above this crate with the
/// workspace's `Cargo.lock`.
fn checkout_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.ancestors()
        .find(|d| d.join("Cargo.lock").is_file())
        .unwrap_or(here)
        .to_path_buf()
}

/// A PKI made by OpenSSL's command line (`tests/openssl-pki.sh`: root CA →
/// intermediate CA → leaves) in `lienthong dev-pki`'s file layout, for
/// [`GatewayOptions::pki`]. `None` (with a SKIPPED line) when there is no
/// `openssl`, unless services are required.
pub fn openssl_pki(test: &str) -> Option<tempfile::TempDir> {
    if let Err(e) = StdCommand::new("openssl").arg("version").output() {
        if require_services() {
            panic!(
                "{test}: openssl not found ({e}), and LIENTHONG_REQUIRE_SERVICES=1 says it must \
                 be there; install it (Debian: apt-get install openssl)"
            );
        }
        notice(&format!(
            "SKIPPED: {test}: openssl not found ({e}); install it, or set \
             LIENTHONG_REQUIRE_SERVICES=1 to make this a failure"
        ));
        return None;
    }
    let dir = tempfile::Builder::new()
        .prefix(&format!("lienthong-e2e-{test}-openssl-"))
        .tempdir()
        .expect("temp dir");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../openssl-pki.sh");
    let out = StdCommand::new("bash")
        .arg(&script)
        .arg(dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run bash {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "`{} {}` failed:\n{}",
        script.display(),
        dir.path().display(),
        describe_output(&out)
    );
    Some(dir)
}

/// `None` with a SKIPPED line naming what is missing, or a panic under
/// `LIENTHONG_REQUIRE_SERVICES=1`.
pub fn missing<T>(test: &str, what: &str) -> Option<T> {
    if require_services() {
        panic!("{test}: {what}, and LIENTHONG_REQUIRE_SERVICES=1 says it must be there");
    }
    notice(&format!(
        "SKIPPED: {test}: {what}; set LIENTHONG_REQUIRE_SERVICES=1 to make this a failure"
    ));
    None
}

/// The interpreter of a virtualenv holding `tests/python/requirements.txt`
/// (grpcio for the interoperability tests, openpyxl for the XLSX export),
/// made once per version of that file under `cache` (a test's
/// `CARGO_TARGET_TMPDIR`), so repeated runs take no time. `None` (with a
/// SKIPPED line, see [`missing`]) without python3, venv or PyPI.
pub fn python_venv(test: &str, cache: &Path) -> Option<PathBuf> {
    let requirements = checkout_root().join("tests/python/requirements.txt");
    let pinned = fs::read(&requirements)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", requirements.display()));
    let key = &hex::encode(sha256(&pinned))[..16];
    let venv = cache.join(format!("python-venv-{key}"));
    let python = venv.join("bin/python");
    if venv.join(".complete").is_file() {
        return Some(python);
    }
    fs::create_dir_all(cache).unwrap_or_else(|e| panic!("create {}: {e}", cache.display()));
    // Made aside and renamed into place: a run stopped halfway leaves
    // nothing that looks complete.
    let partial = cache.join(format!("python-venv-{key}.partial-{}", std::process::id()));
    let _ = fs::remove_dir_all(&partial);
    let made = StdCommand::new("python3")
        .args(["-m", "venv"])
        .arg(&partial)
        .stdin(Stdio::null())
        .output();
    match made {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            return missing(
                test,
                &format!(
                    "`python3 -m venv` fails (Debian: apt-get install python3-venv):\n{}",
                    describe_output(&o)
                ),
            );
        }
        Err(e) => return missing(test, &format!("python3 not found ({e})")),
    }
    let python = partial.join("bin/python");
    notice(&format!(
        "{test}: installing {} into {} (once per version of that file)",
        requirements.display(),
        venv.display()
    ));
    let pip = StdCommand::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "-q",
            "-r",
        ])
        .arg(&requirements)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {} -m pip: {e}", python.display()));
    if !pip.status.success() {
        let _ = fs::remove_dir_all(&partial);
        return missing(
            test,
            &format!(
                "pip could not install {} from PyPI:\n{}",
                requirements.display(),
                describe_output(&pip)
            ),
        );
    }
    fs::write(partial.join(".complete"), &pinned).expect("write .complete");
    // Another run may have finished first: then its copy is as good.
    if fs::rename(&partial, &venv).is_err() {
        let _ = fs::remove_dir_all(&partial);
    }
    Some(venv.join("bin/python"))
}

/// A loopback port nobody listened on a moment ago.
pub fn pick_port() -> std::io::Result<u16> {
    TcpListener::bind("127.0.0.1:0")?
        .local_addr()
        .map(|a| a.port())
}

pub fn free_port() -> u16 {
    pick_port().expect("bind 127.0.0.1:0")
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    all[start..].join("\n")
}

/// A `lienthong` command with a clean environment: no inherited
/// `LIENTHONG_*` variable may override the test's configuration.
pub fn lienthong_command(bin: &Path, cwd: &Path) -> StdCommand {
    let mut cmd = StdCommand::new(bin);
    cmd.current_dir(cwd);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("LIENTHONG_") {
            cmd.env_remove(&k);
        }
    }
    cmd.env("NO_COLOR", "1");
    cmd
}

/// Output of a command, for messages.
pub fn describe_output(out: &Output) -> String {
    format!(
        "exit status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// ---------------------------------------------------------------------------
// The gateway
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// How to start a [`TestGateway`].
#[derive(Clone, Debug)]
pub struct GatewayOptions {
    pub backend: Backend,
    pub max_envelope_bytes: u64,
    pub max_attachment_bytes: u64,
    /// `dev-pki --key-type`; `None` for the binary's default.
    pub key_type: Option<String>,
    /// Extra PEM files for `trust.anchors`.
    pub extra_anchors: Vec<PathBuf>,
    /// Import the dev-pki `directory.csv` before `serve`.
    pub import_directory: bool,
    /// `auth.mode = "mtls"`: the gateway's TLS certificate and the agencies'
    /// client certificates come from dev-pki; each agency's software
    /// connects with its `<organ_id>.client.pem`.
    pub mtls: bool,
    /// A directory in `lienthong dev-pki`'s file layout, made elsewhere
    /// (e.g. by [`openssl_pki`]): copied into the gateway's temp dir instead
    /// of running `dev-pki`.
    pub pki: Option<PathBuf>,
    /// More `key = value` lines for the `[limits]` section.
    pub extra_limits: String,
    /// More `key = value` lines for the `[trust]` section (`crls`,
    /// `stale_crl`, ...).
    pub extra_trust: String,
    /// More sections appended to the configuration (`[amqp]`, `[[routes]]`).
    pub extra_config: String,
    /// More `key = value` lines for the `[storage]` section.
    pub extra_storage: String,
    /// Environment variables of `serve` (e.g. `TMPDIR`).
    pub env: Vec<(String, String)>,
    /// More `key = value` lines for the `[http]` section.
    pub extra_http: String,
    /// `http.listen`'s address (default 127.0.0.1); the port is picked.
    pub http_ip: Option<std::net::IpAddr>,
    /// With [`Backend::Postgres`]: the admin URL of the server to make the
    /// gateway's database on (e.g. a [`PgCluster`] of the test's own),
    /// instead of `LIENTHONG_TEST_PG_URL`'s.
    pub pg_server: Option<String>,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        GatewayOptions {
            backend: Backend::Sqlite,
            max_envelope_bytes: 1_048_576,
            max_attachment_bytes: 104_857_600,
            key_type: None,
            extra_anchors: Vec::new(),
            import_directory: true,
            mtls: false,
            pki: None,
            extra_limits: String::new(),
            extra_trust: String::new(),
            extra_config: String::new(),
            extra_storage: String::new(),
            env: Vec::new(),
            extra_http: String::new(),
            http_ip: None,
            pg_server: None,
        }
    }
}

/// A running `lienthong serve` of one test, in a temp dir of its own.
pub struct TestGateway {
    child: Option<Child>,
    pub name: String,
    pub grpc_addr: SocketAddr,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub pki_dir: PathBuf,
    pub storage_path: PathBuf,
    pub db_url: String,
    pub backend: Backend,
    /// Whether the gateway runs with mutual TLS.
    pub mtls: bool,
    /// `http.listen`, when the binary has an HTTP listener.
    pub http_addr: Option<SocketAddr>,
    http_section: bool,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    starts: u32,
    bin: PathBuf,
    env: Vec<(String, String)>,
    // Dropped after the process is killed (Drop below), in this order.
    _pg: Option<PgDatabase>,
    tempdir: Option<tempfile::TempDir>,
}

impl TestGateway {
    /// Starts a gateway; `None` when the backend's service is absent and the
    /// test should be skipped (a SKIPPED line has been printed).
    pub async fn start(name: &str, backend: Backend) -> Option<TestGateway> {
        Self::start_with(
            name,
            GatewayOptions {
                backend,
                ..Default::default()
            },
        )
        .await
    }

    pub async fn start_with(name: &str, opts: GatewayOptions) -> Option<TestGateway> {
        let bin = bin_path();
        let pg = match opts.backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(match &opts.pg_server {
                Some(server) => PgDatabase::create(server, "lienthong_e2e")
                    .await
                    .unwrap_or_else(|e| panic!("{e}")),
                None => PgDatabase::create_or_skip(name).await?,
            }),
        };
        let tempdir = tempfile::Builder::new()
            .prefix(&format!("lienthong-e2e-{name}-"))
            .tempdir()
            .expect("temp dir");
        let dir = tempdir.path().to_path_buf();
        let pki_dir = dir.join("pki");
        let storage_path = dir.join("blobs");
        let config_path = dir.join("lienthong.toml");
        let db_url = match &pg {
            Some(pg) => pg.url.clone(),
            None => format!("sqlite://{}", dir.join("lienthong.db").display()),
        };

        // dev-pki runs before the real config (its anchors do not exist yet).
        // It runs with a config holding only `[http]`, which also tells
        // whether this binary has an HTTP listener to keep off port 8080.
        let probe = dir.join("probe.toml");
        fs::write(&probe, "[http]\nlisten = \"127.0.0.1:0\"\n").expect("write probe config");
        let dev_pki = |with_probe: bool| {
            let mut cmd = lienthong_command(&bin, &dir);
            if with_probe {
                cmd.arg("--config").arg(&probe);
            }
            match &opts.pki {
                // A PKI made elsewhere: only the probe, with a command that
                // reads the config and then fails on a file that is not there.
                Some(_) => cmd.arg("verify-receipt").arg(dir.join("no-receipt.pb")),
                None => cmd.arg("dev-pki").arg(&pki_dir),
            };
            if let (None, Some(kt)) = (&opts.pki, &opts.key_type) {
                cmd.arg("--key-type").arg(kt);
            }
            cmd.output().expect("run lienthong")
        };
        let mut http_section = true;
        let mut out = dev_pki(true);
        let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
        if !out.status.success() && err.contains("unknown field") && err.contains("http") {
            http_section = false;
            out = dev_pki(false);
        }
        let _ = fs::remove_file(&probe);
        let made_by = match &opts.pki {
            Some(src) => {
                copy_dir(src, &pki_dir);
                format!("the PKI copied from {}", src.display())
            }
            None => {
                assert!(
                    out.status.success(),
                    "`lienthong dev-pki {}` failed:\n{}",
                    pki_dir.display(),
                    describe_output(&out)
                );
                "`lienthong dev-pki`".to_string()
            }
        };
        for f in ["ca.pem", "ca.key.pem", "directory.csv"] {
            assert!(
                pki_dir.join(f).is_file(),
                "{made_by} has no {f} in {}",
                pki_dir.display()
            );
        }

        let mut gw = TestGateway {
            child: None,
            name: name.to_string(),
            grpc_addr: "127.0.0.1:1".parse().unwrap(),
            stdout_path: dir.join("gateway.stdout.log"),
            stderr_path: dir.join("gateway.stderr.log"),
            dir,
            config_path,
            pki_dir,
            storage_path,
            db_url,
            backend: opts.backend,
            mtls: opts.mtls,
            http_addr: None,
            http_section,
            starts: 0,
            bin,
            env: opts.env.clone(),
            _pg: pg,
            tempdir: Some(tempdir),
        };

        if opts.import_directory {
            // Written with placeholder ports; rewritten before `serve`.
            gw.write_config(&opts);
            let csv = gw.pki_dir.join("directory.csv");
            let out = gw
                .run_cli(&["directory".as_ref(), "import".as_ref(), csv.as_os_str()])
                .await;
            assert!(
                out.status.success(),
                "`lienthong directory import {}` failed:\n{}",
                csv.display(),
                describe_output(&out)
            );
        }

        // A port picked by binding :0 can be taken by someone else before the
        // gateway binds it: try a few times.
        let mut last_err = String::new();
        for _ in 0..3 {
            gw.grpc_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            if gw.http_section {
                let ip = opts.http_ip.unwrap_or([127, 0, 0, 1].into());
                gw.http_addr = Some(SocketAddr::new(ip, free_port()));
            }
            gw.write_config(&opts);
            match gw.spawn_and_wait().await {
                Ok(()) => return Some(gw),
                Err(e) if e.contains("in use") => last_err = e,
                Err(e) => panic!("{e}"),
            }
        }
        panic!("the gateway could not bind its ports: {last_err}");
    }

    fn write_config(&self, opts: &GatewayOptions) {
        let mut anchors = vec![self.pki_dir.join("ca.pem")];
        anchors.extend(opts.extra_anchors.iter().cloned());
        let anchors = anchors
            .iter()
            .map(|p| toml_str(&p.display().to_string()))
            .collect::<Vec<_>>()
            .join(", ");
        let http = match (self.http_section, self.http_addr) {
            (true, Some(a)) => format!("\n[http]\nlisten = \"{a}\"\n{}\n", opts.extra_http),
            // Before ports are picked (directory import): any free port.
            (true, None) => format!("\n[http]\nlisten = \"127.0.0.1:0\"\n{}\n", opts.extra_http),
            (false, _) => String::new(),
        };
        let text = format!(
            r#"# written by the lienthong end-to-end tests ({name})
[gateway]
id = "lienthong-test"

[grpc]
listen = "{grpc}"

[database]
url = {db}

[storage]
path = {storage}
{extra_storage}

[trust]
anchors = [{anchors}]
{extra_trust}

{auth}
[limits]
max_envelope_bytes = {menv}
max_attachment_bytes = {matt}
{extra_limits}
{http}
{extra_config}"#,
            name = self.name,
            grpc = self.grpc_addr,
            db = toml_str(&self.db_url),
            storage = toml_str(&self.storage_path.display().to_string()),
            extra_limits = opts.extra_limits,
            extra_trust = opts.extra_trust,
            extra_config = opts.extra_config,
            extra_storage = opts.extra_storage,
            menv = opts.max_envelope_bytes,
            matt = opts.max_attachment_bytes,
            auth = if opts.mtls {
                format!(
                    "[auth]\nmode = \"mtls\"\n\n[tls]\ncert = {}\nkey = {}\nclient_anchors = [{}]\n",
                    toml_str(&self.pki_dir.join("server.pem").display().to_string()),
                    toml_str(&self.pki_dir.join("server.key.pem").display().to_string()),
                    toml_str(&self.pki_dir.join("ca.pem").display().to_string()),
                )
            } else {
                "[auth]\nmode = \"dev-header\"\n".to_string()
            },
        );
        fs::write(&self.config_path, text).expect("write config");
    }

    /// Another replica of this gateway: `lienthong serve` with the same
    /// configuration (database, attachment store, trust, PKI), its own
    /// listen addresses and `LIENTHONG_GATEWAY__REPLICA=replica`. Drop it
    /// before `self`, which owns the database.
    pub async fn start_replica(&self, replica: &str) -> TestGateway {
        self.spawn_replica(replica, false).await
    }

    /// [`TestGateway::start_replica`] with a `storage.path` of its own (in
    /// its temp dir): replicas with `storage.backend = "database"` share
    /// nothing but the database.
    pub async fn start_replica_with_own_storage(&self, replica: &str) -> TestGateway {
        self.spawn_replica(replica, true).await
    }

    async fn spawn_replica(&self, replica: &str, own_storage: bool) -> TestGateway {
        let tempdir = tempfile::Builder::new()
            .prefix(&format!("lienthong-e2e-{}-{replica}-", self.name))
            .tempdir()
            .expect("temp dir");
        let dir = tempdir.path().to_path_buf();
        let mut config =
            fs::read_to_string(&self.config_path).expect("read the first replica's config");
        let storage_path = if own_storage {
            let own = dir.join("blobs");
            config = config.replace(
                &format!(
                    "path = {}",
                    toml_str(&self.storage_path.display().to_string())
                ),
                &format!("path = {}", toml_str(&own.display().to_string())),
            );
            own
        } else {
            self.storage_path.clone()
        };
        let mut env = self.env.clone();
        env.push(("LIENTHONG_GATEWAY__REPLICA".to_owned(), replica.to_owned()));
        let mut gw = TestGateway {
            child: None,
            name: format!("{}-{replica}", self.name),
            grpc_addr: self.grpc_addr,
            stdout_path: dir.join("gateway.stdout.log"),
            stderr_path: dir.join("gateway.stderr.log"),
            config_path: dir.join("lienthong.toml"),
            dir,
            pki_dir: self.pki_dir.clone(),
            storage_path,
            db_url: self.db_url.clone(),
            backend: self.backend,
            mtls: self.mtls,
            http_addr: self.http_addr,
            http_section: self.http_section,
            starts: 0,
            bin: self.bin.clone(),
            env,
            _pg: None,
            tempdir: Some(tempdir),
        };
        let mut last_err = String::new();
        for _ in 0..3 {
            let mut text = config.replace(
                &format!("listen = \"{}\"", self.grpc_addr),
                &format!("listen = \"127.0.0.1:{}\"", free_port()),
            );
            if let Some(http) = self.http_addr {
                text = text.replace(
                    &format!("listen = \"{http}\""),
                    &format!("listen = \"{}:{}\"", http.ip(), free_port()),
                );
            }
            fs::write(&gw.config_path, &text).expect("write the replica's config");
            let listen = |section: &str| -> Option<SocketAddr> {
                let at = text.find(&format!("[{section}]"))?;
                let line = text[at..].lines().find(|l| l.starts_with("listen = "))?;
                line.trim_start_matches("listen = ")
                    .trim_matches('"')
                    .parse()
                    .ok()
            };
            gw.grpc_addr = listen("grpc").expect("the replica's grpc.listen");
            gw.http_addr = self.http_addr.and(listen("http"));
            match gw.spawn_and_wait().await {
                Ok(()) => return gw,
                Err(e) if e.contains("in use") => last_err = e,
                Err(e) => panic!("{e}"),
            }
        }
        panic!("the replica could not bind its ports: {last_err}");
    }

    async fn spawn_and_wait(&mut self) -> Result<(), String> {
        self.starts += 1;
        let open = |p: &Path| {
            let mut f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .expect("open log file");
            let _ = writeln!(f, "===== lienthong serve, start #{} =====", self.starts);
            f
        };
        let stdout = open(&self.stdout_path);
        let stderr = open(&self.stderr_path);
        let mut cmd = lienthong_command(&self.bin, &self.dir);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd.arg("--config")
            .arg(&self.config_path)
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        let child = cmd.spawn().expect("spawn lienthong serve");
        self.child = Some(child);
        self.wait_serving(Duration::from_secs(30)).await
    }

    /// Waits until `grpc.health.v1.Health/Check("")` says SERVING.
    async fn wait_serving(&mut self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        let mut last;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                let err = tail(&self.stderr_path, 40);
                return Err(format!(
                    "`lienthong serve` exited ({status}) before it was ready.\n\
                     --- stderr (tail) ---\n{err}\n--- stdout (tail) ---\n{}",
                    tail(&self.stdout_path, 20)
                ));
            }
            let mut ep = Endpoint::from_shared(format!("{}://{}", self.scheme(), self.grpc_addr))
                .unwrap()
                .connect_timeout(Duration::from_millis(500))
                .timeout(Duration::from_secs(2));
            if self.mtls {
                ep = ep.tls_config(self.client_tls(A)).unwrap();
            }
            match health_serving(ep).await {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            if Instant::now() >= deadline {
                let _ = self.kill_9();
                return Err(format!(
                    "`lienthong serve` did not report SERVING on {} (grpc.health.v1.Health, \
                     service \"\") within {:?}; last: {last}\n--- stderr (tail) ---\n{}\n\
                     --- stdout (tail) ---\n{}",
                    self.grpc_addr,
                    limit,
                    tail(&self.stderr_path, 40),
                    tail(&self.stdout_path, 20)
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The process id of the running gateway.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL (on Unix `Child::kill` sends SIGKILL) and reap.
    pub fn kill_9(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = child.kill();
        child.wait().ok()
    }

    /// SIGTERM, as systemd stops it, and waits (at most 30 s, then SIGKILL)
    /// for the process to finish its shutdown.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        terminate(self.child.take()?, Duration::from_secs(30))
    }

    /// Kills the gateway if it runs, then starts it again with the same
    /// configuration and ports, and waits until it is SERVING.
    pub async fn restart(&mut self) {
        self.kill_9();
        if let Err(e) = self.spawn_and_wait().await {
            panic!("restart: {e}");
        }
    }

    /// Peak resident set size (VmHWM) of the gateway process, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let pid = self.pid().expect("gateway is not running");
        proc_status_kib(pid, "VmHWM:").expect("VmHWM in /proc/<pid>/status")
    }

    /// Current resident set size (VmRSS), in KiB.
    pub fn rss_kib(&self) -> u64 {
        let pid = self.pid().expect("gateway is not running");
        proc_status_kib(pid, "VmRSS:").expect("VmRSS in /proc/<pid>/status")
    }

    /// Runs `lienthong --config <this config> ARGS...`.
    pub async fn run_cli<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Output {
        let mut cmd = lienthong_command(&self.bin, &self.dir);
        cmd.arg("--config").arg(&self.config_path);
        for a in args {
            cmd.arg(a.as_ref());
        }
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.stdin(Stdio::null()).kill_on_drop(true);
        match tokio::time::timeout(Duration::from_secs(60), cmd.output()).await {
            Ok(r) => r.expect("run lienthong"),
            Err(_) => panic!(
                "`lienthong {}` did not finish within 60 s",
                args.iter()
                    .map(|a| a.as_ref().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        }
    }

    /// Runs `lienthong --config <this config> ARGS...` with `input` on its
    /// standard input.
    pub async fn run_cli_stdin<S: AsRef<std::ffi::OsStr>>(
        &self,
        args: &[S],
        input: &str,
    ) -> Output {
        use tokio::io::AsyncWriteExt;
        let mut cmd = lienthong_command(&self.bin, &self.dir);
        cmd.arg("--config").arg(&self.config_path);
        for a in args {
            cmd.arg(a.as_ref());
        }
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("run lienthong");
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(input.as_bytes())
                .await
                .expect("write stdin");
        }
        match tokio::time::timeout(Duration::from_secs(60), child.wait_with_output()).await {
            Ok(r) => r.expect("run lienthong"),
            Err(_) => panic!("lienthong did not finish within 60 s"),
        }
    }

    /// `lienthong operator add NAME --role ROLE --password-stdin`.
    pub async fn add_operator(&self, name: &str, role: &str, password: &str) {
        let out = self
            .run_cli_stdin(
                &["operator", "add", name, "--role", role, "--password-stdin"],
                &format!("{password}\n"),
            )
            .await;
        assert!(
            out.status.success(),
            "`lienthong operator add {name} --role {role}` failed:\n{}",
            describe_output(&out)
        );
    }

    /// A new client certificate from the dev CA (the subject of `A`'s, a
    /// fresh key), written to `<dir>/<stem>.pem` and `<stem>.key.pem`:
    /// (certificate path, certificate PEM, key).
    pub fn new_client_cert(&self, stem: &str) -> (PathBuf, String, rcgen::KeyPair) {
        let template = pki::load_cert_der(&self.pki_dir.join(format!("{A}.client.pem")));
        self.issue_client_cert(stem, &template)
    }

    /// A new client certificate from the dev CA for an operator called
    /// `name` ([`pki::operator_template`]: no agency's subject), written as
    /// [`TestGateway::new_client_cert`] writes its own.
    pub fn new_operator_cert(&self, stem: &str, name: &str) -> (PathBuf, String, rcgen::KeyPair) {
        self.issue_client_cert(stem, &pki::operator_template(name))
    }

    fn issue_client_cert(&self, stem: &str, template: &[u8]) -> (PathBuf, String, rcgen::KeyPair) {
        let dev_ca = pki::Ca::load(
            &self.pki_dir.join("ca.pem"),
            &self.pki_dir.join("ca.key.pem"),
        );
        let key = rcgen::KeyPair::generate().expect("a key");
        let now = time::OffsetDateTime::now_utc();
        let (_, pem) = dev_ca.reissue_pem(
            template,
            &key,
            now - time::Duration::days(1),
            now + time::Duration::days(30),
        );
        let path = self.dir.join(format!("{stem}.pem"));
        fs::write(&path, &pem).expect("write the certificate");
        fs::write(
            self.dir.join(format!("{stem}.key.pem")),
            key.serialize_pem(),
        )
        .expect("write the key");
        (path, pem, key)
    }

    /// A gRPC client (A's software otherwise) whose new client certificate,
    /// an operator's own ([`TestGateway::new_operator_cert`]), is bound
    /// (`directory bind-operator`) to a new operator account of `role`
    /// (`viewer` or `admin`) without a password.
    pub async fn operator_grpc(&self, name: &str, role: &str) -> Agency {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let out = self
            .run_cli(&["operator", "add", name, "--role", role, "--no-password"])
            .await;
        assert!(out.status.success(), "{}", describe_output(&out));
        let stem = format!("operator-{}", uuid::Uuid::new_v4().simple());
        let (path, pem, key) = self.new_operator_cert(&stem, name);
        let out = self
            .run_cli(&[
                "directory".as_ref(),
                "bind-operator".as_ref(),
                name.as_ref(),
                path.as_os_str(),
            ])
            .await;
        assert!(out.status.success(), "{}", describe_output(&out));
        let ca = fs::read(self.pki_dir.join("ca.pem")).expect("read ca.pem");
        let tls = ClientTlsConfig::new()
            .domain_name("localhost")
            .ca_certificate(Certificate::from_pem(ca))
            .identity(Identity::from_pem(pem, key.serialize_pem()));
        let a = self.agency(A);
        Agency::with_tls(self.grpc_addr, A, a.signer.clone(), a.chain.clone(), tls)
    }

    /// A new operator of `role` (`viewer` or `admin`), logged in to the
    /// dashboard through its login form.
    pub async fn operator_session(&self, name: &str, role: &str) -> HttpSession {
        let password = format!("mật khẩu của {name} đủ dài");
        self.add_operator(name, role, &password).await;
        let addr = self.http_addr.expect("the gateway serves HTTP");
        HttpSession::login(addr, name, &password)
            .await
            .unwrap_or_else(|e| panic!("{name} could not log in: {e}"))
    }

    /// `lienthong trace MESSAGE_ID [--from FROM] --json`, one JSON object per line.
    pub async fn trace_json(&self, message_id: &str, from: Option<&str>) -> Vec<serde_json::Value> {
        let mut args = vec!["trace", message_id];
        if let Some(f) = from {
            args.extend(["--from", f]);
        }
        args.push("--json");
        let out = self.run_cli(&args).await;
        assert!(
            out.status.success(),
            "`lienthong {}` failed:\n{}",
            args.join(" "),
            describe_output(&out)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| {
                    panic!(
                        "`lienthong {}` printed a line that is not JSON ({e}): {l}",
                        args.join(" ")
                    )
                })
            })
            .collect()
    }

    fn scheme(&self) -> &'static str {
        if self.mtls { "https" } else { "http" }
    }

    /// TLS settings of `organ_id`'s software: the dev CA for the server and
    /// the agency's client certificate.
    pub fn client_tls(&self, organ_id: &str) -> tonic::transport::ClientTlsConfig {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let read = |name: String| {
            fs::read(self.pki_dir.join(&name)).unwrap_or_else(|e| panic!("read {name}: {e}"))
        };
        ClientTlsConfig::new()
            .domain_name("localhost")
            .ca_certificate(Certificate::from_pem(read("ca.pem".into())))
            .identity(Identity::from_pem(
                read(format!("{organ_id}.client.pem")),
                read(format!("{organ_id}.client.key.pem")),
            ))
    }

    /// A client for `organ_id`, with the key and certificate `dev-pki` wrote
    /// (and, under mutual TLS, its client certificate). It signs with every
    /// certificate of `<organ_id>.pem`: the leaf, then its intermediates.
    pub fn agency(&self, organ_id: &str) -> Agency {
        let key = self.pki_dir.join(format!("{organ_id}.key.pem"));
        let cert = self.pki_dir.join(format!("{organ_id}.pem"));
        let signer = Signer::from_pkcs8_pem_file(&key);
        let chain = pki::load_certs_der(&cert);
        if self.mtls {
            Agency::with_tls(
                self.grpc_addr,
                organ_id,
                Arc::new(signer),
                chain,
                self.client_tls(organ_id),
            )
        } else {
            Agency::new(self.grpc_addr, organ_id, Arc::new(signer), chain)
        }
    }

    /// A client for an agency that has no key of its own in dev-pki: it can
    /// receive and acknowledge (its calls carry its code), not sign.
    pub fn agency_without_key(&self, organ_id: &str) -> Agency {
        let mut a = self.agency(A);
        a.organ_id = organ_id.to_string();
        a.caller = Some(organ_id.to_string());
        a
    }

    /// The gateway's database, for raw SQL.
    pub async fn db(&self) -> Db {
        Db::connect(&self.db_url)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The rows of `sql` on the gateway's database.
    pub async fn sql_rows(&self, sql: &str) -> Vec<SqlRow> {
        let db = self.db().await;
        let rows = db.rows(sql).await.unwrap_or_else(|e| panic!("{e}"));
        db.close().await;
        rows
    }

    /// Runs `sql` on the gateway's database: the rows it changed.
    pub async fn sql_exec(&self, sql: &str) -> u64 {
        let db = self.db().await;
        let n = db.execute(sql).await.unwrap_or_else(|e| panic!("{e}"));
        db.close().await;
        n
    }

    /// Files under `storage.path` (excluding its `tmp/`), and the files under `tmp/`.
    pub fn storage_files(&self) -> (Vec<PathBuf>, Vec<PathBuf>) {
        let mut blobs = Vec::new();
        let mut tmp = Vec::new();
        walk(&self.storage_path, &mut |p| {
            let rel = p.strip_prefix(&self.storage_path).unwrap_or(p);
            if rel.components().next().map(|c| c.as_os_str() == "tmp") == Some(true) {
                tmp.push(p.to_path_buf());
            } else {
                blobs.push(p.to_path_buf());
            }
        });
        blobs.sort();
        tmp.sort();
        (blobs, tmp)
    }

    /// The tails of the gateway's logs.
    pub fn log_tails(&self, lines: usize) -> String {
        format!(
            "--- gateway stderr ({}) ---\n{}\n--- gateway stdout ({}) ---\n{}",
            self.stderr_path.display(),
            tail(&self.stderr_path, lines),
            self.stdout_path.display(),
            tail(&self.stdout_path, lines)
        )
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.kill_9();
        let keep = matches!(std::env::var("LIENTHONG_E2E_KEEP").as_deref(), Ok("1"));
        if std::thread::panicking() {
            eprintln!(
                "\n===== gateway {} ({:?}, {}) =====\n{}",
                self.name,
                self.backend,
                self.dir.display(),
                self.log_tails(60)
            );
        }
        if keep && let Some(t) = self.tempdir.take() {
            let p = t.keep();
            eprintln!("kept {}", p.display());
        }
    }
}

/// `s` as a TOML basic string (JSON's escapes are TOML's).
pub fn toml_str(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// Copies the files under `src` to `dst` (created), keeping the layout.
fn copy_dir(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).unwrap_or_else(|e| panic!("create {}: {e}", dst.display()));
    let entries = fs::read_dir(src).unwrap_or_else(|e| panic!("read {}: {e}", src.display()));
    for e in entries {
        let e = e.unwrap_or_else(|e| panic!("read {}: {e}", src.display()));
        let (from, to) = (e.path(), dst.join(e.file_name()));
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            copy_dir(&from, &to);
        } else {
            fs::copy(&from, &to)
                .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
        }
    }
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path)) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => walk(&p, f),
            Ok(_) => f(&p),
            Err(_) => {}
        }
    }
}

/// A `kB` field of `/proc/<pid>/status` (`VmHWM:`, `VmRSS:`).
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// utime + stime of a process in seconds (clock ticks of 1/100 s, as on
/// Linux).
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command name: state is field 3, utime 14, stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// Whether `grpc.health.v1.Health/Check("")` through `ep` says SERVING;
/// `Err` says what answered instead.
pub async fn health_serving(ep: Endpoint) -> Result<(), String> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let ch = ep.connect().await.map_err(|e| format!("connect: {e}"))?;
    match HealthClient::new(ch)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
    {
        Ok(r) if r.get_ref().status == ServingStatus::Serving as i32 => Ok(()),
        Ok(r) => Err(format!("health status {}", r.get_ref().status)),
        Err(s) => Err(format!("health check: {s:?}")),
    }
}

/// SIGTERM, as systemd stops a service, then waits at most `grace` for the
/// process to finish its shutdown before SIGKILL.
pub fn terminate(mut child: Child, grace: Duration) -> Option<std::process::ExitStatus> {
    let _ = StdCommand::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    child.wait().ok()
}

// ---------------------------------------------------------------------------
// Signing: an independent implementation of DESIGN.md §4
// ---------------------------------------------------------------------------

/// DSSE pre-authentication encoding.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

enum KeyKind {
    Ecdsa(ring::signature::EcdsaKeyPair, &'static str),
    Rsa(ring::signature::RsaKeyPair),
}

/// A signing key: ECDSA P-256/P-384 (ES256/ES384, fixed `r||s`) or RSA (RS256).
pub struct Signer {
    key: KeyKind,
    rng: ring::rand::SystemRandom,
}

impl Signer {
    pub fn from_pkcs8_der(der: &[u8]) -> Signer {
        use ring::signature::*;
        let rng = ring::rand::SystemRandom::new();
        let key = if let Ok(k) =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
        {
            KeyKind::Ecdsa(k, "ES256")
        } else if let Ok(k) = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, der, &rng)
        {
            KeyKind::Ecdsa(k, "ES384")
        } else {
            match RsaKeyPair::from_pkcs8(der) {
                Ok(k) => KeyKind::Rsa(k),
                Err(e) => panic!("not a PKCS#8 P-256, P-384 or RSA key: {e}"),
            }
        };
        Signer { key, rng }
    }

    pub fn from_pkcs8_pem_file(path: &Path) -> Signer {
        use rustls_pki_types::PrivatePkcs8KeyDer;
        use rustls_pki_types::pem::PemObject;
        let der = PrivatePkcs8KeyDer::from_pem_file(path)
            .unwrap_or_else(|e| panic!("read PKCS#8 key {}: {e:?}", path.display()));
        Signer::from_pkcs8_der(der.secret_pkcs8_der())
    }

    /// The JOSE algorithm name.
    pub fn algorithm(&self) -> &'static str {
        match &self.key {
            KeyKind::Ecdsa(_, alg) => alg,
            KeyKind::Rsa(_) => "RS256",
        }
    }

    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        match &self.key {
            KeyKind::Ecdsa(k, _) => k
                .sign(&self.rng, msg)
                .expect("ecdsa sign")
                .as_ref()
                .to_vec(),
            KeyKind::Rsa(k) => {
                let mut sig = vec![0u8; k.public().modulus_len()];
                k.sign(&ring::signature::RSA_PKCS1_SHA256, &self.rng, msg, &mut sig)
                    .expect("rsa sign");
                sig
            }
        }
    }
}

/// Signs `payload` (bytes as they are) as a `SignedEnvelope`.
pub fn sign_payload(payload: Bytes, signer: &Signer, chain: &[Vec<u8>]) -> SignedEnvelope {
    let payload_type = v1::ENVELOPE_PAYLOAD_TYPE.to_string();
    let value = signer.sign(&pae(&payload_type, &payload));
    SignedEnvelope {
        payload,
        payload_type,
        signatures: vec![Signature {
            algorithm: signer.algorithm().to_string(),
            value: Bytes::from(value),
            certificates: chain.iter().map(|c| Bytes::from(c.clone())).collect(),
        }],
    }
}

/// Serializes and signs an `Envelope`.
pub fn sign_envelope(env: &Envelope, signer: &Signer, chain: &[Vec<u8>]) -> SignedEnvelope {
    sign_payload(Bytes::from(env.encode_to_vec()), signer, chain)
}

/// Verifies every signature of `signed` with the leaf certificate it
/// carries, as a recipient would (the chain is the gateway's business).
pub fn verify_signed(signed: &SignedEnvelope) -> Result<(), String> {
    use ring::signature::*;
    if signed.signatures.is_empty() {
        return Err("no signatures".into());
    }
    let msg = pae(&signed.payload_type, &signed.payload);
    for (i, sig) in signed.signatures.iter().enumerate() {
        let leaf = sig
            .certificates
            .first()
            .ok_or_else(|| format!("signature #{i}: no certificate"))?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf)
            .map_err(|e| format!("signature #{i}: certificate: {e}"))?;
        let key = cert.public_key().subject_public_key.data.as_ref();
        let alg: &dyn VerificationAlgorithm = match sig.algorithm.as_str() {
            "ES256" => &ECDSA_P256_SHA256_FIXED,
            "ES384" => &ECDSA_P384_SHA384_FIXED,
            "RS256" => &RSA_PKCS1_2048_8192_SHA256,
            "PS256" => &RSA_PSS_2048_8192_SHA256,
            other => return Err(format!("signature #{i}: unknown algorithm {other}")),
        };
        UnparsedPublicKey::new(alg, key)
            .verify(&msg, &sig.value)
            .map_err(|_| format!("signature #{i} ({}) does not verify", sig.algorithm))?;
    }
    Ok(())
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    d.as_ref().try_into().unwrap()
}

// ---------------------------------------------------------------------------
// Attachments
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub enum Content {
    Bytes(Bytes),
    /// Deterministic pseudo-random bytes, generated while streaming.
    Generated {
        seed: u64,
        size: u64,
    },
    File(PathBuf),
}

/// An attachment to send: metadata plus where its bytes come from.
#[derive(Clone, Debug)]
pub struct AttachmentSpec {
    pub name: String,
    pub content_type: String,
    pub content: Content,
}

impl AttachmentSpec {
    pub fn text(name: &str, text: &str) -> Self {
        AttachmentSpec {
            name: name.into(),
            content_type: "text/plain; charset=utf-8".into(),
            content: Content::Bytes(Bytes::from(text.as_bytes().to_vec())),
        }
    }
    pub fn bytes(name: &str, content_type: &str, data: Vec<u8>) -> Self {
        AttachmentSpec {
            name: name.into(),
            content_type: content_type.into(),
            content: Content::Bytes(Bytes::from(data)),
        }
    }
    pub fn generated(name: &str, size: u64, seed: u64) -> Self {
        AttachmentSpec {
            name: name.into(),
            content_type: "application/octet-stream".into(),
            content: Content::Generated { seed, size },
        }
    }
    pub fn file(path: &Path, content_type: &str) -> Self {
        AttachmentSpec {
            name: path.file_name().unwrap().to_string_lossy().into_owned(),
            content_type: content_type.into(),
            content: Content::File(path.to_path_buf()),
        }
    }

    /// The bytes, in chunks of at most [`CHUNK`], produced on demand.
    pub fn chunks(&self) -> Box<dyn Iterator<Item = Bytes> + Send> {
        match &self.content {
            Content::Bytes(b) => {
                let b = b.clone();
                let n = b.len().div_ceil(CHUNK);
                Box::new((0..n).map(move |i| b.slice(i * CHUNK..((i + 1) * CHUNK).min(b.len()))))
            }
            Content::Generated { seed, size } => Box::new(Generated::new(*seed, *size)),
            Content::File(p) => {
                let mut f = File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
                Box::new(std::iter::from_fn(move || {
                    let mut buf = vec![0u8; CHUNK];
                    let mut filled = 0;
                    while filled < CHUNK {
                        match f.read(&mut buf[filled..]) {
                            Ok(0) => break,
                            Ok(n) => filled += n,
                            Err(e) => panic!("read attachment: {e}"),
                        }
                    }
                    if filled == 0 {
                        return None;
                    }
                    buf.truncate(filled);
                    Some(Bytes::from(buf))
                }))
            }
        }
    }

    /// Size and SHA-256, computed by reading the bytes once.
    pub fn digest(&self) -> (u64, [u8; 32]) {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut size = 0u64;
        for c in self.chunks() {
            size += c.len() as u64;
            ctx.update(&c);
        }
        (size, ctx.finish().as_ref().try_into().unwrap())
    }
}

/// xorshift64* stream seeded by splitmix64: fast, deterministic, incompressible enough.
struct Generated {
    state: u64,
    remaining: u64,
}

impl Generated {
    fn new(seed: u64, size: u64) -> Self {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Generated {
            state: z | 1,
            remaining: size,
        }
    }
}

impl Iterator for Generated {
    type Item = Bytes;
    fn next(&mut self) -> Option<Bytes> {
        if self.remaining == 0 {
            return None;
        }
        let n = (self.remaining as usize).min(CHUNK);
        let mut buf = vec![0u8; n.div_ceil(8) * 8];
        for w in buf.chunks_exact_mut(8) {
            let mut x = self.state;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.state = x;
            w.copy_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        buf.truncate(n);
        self.remaining -= n as u64;
        Some(Bytes::from(buf))
    }
}

// ---------------------------------------------------------------------------
// Agencies (gRPC clients)
// ---------------------------------------------------------------------------

static DOC_COUNTER: AtomicU64 = AtomicU64::new(1);

/// A document prepared by [`Agency::draft_document`].
#[derive(Clone, Debug)]
pub struct Draft {
    pub envelope: Envelope,
    pub attachments: Vec<AttachmentSpec>,
}

impl Draft {
    pub fn document_mut(&mut self) -> &mut Document {
        match self.envelope.body.as_mut() {
            Some(envelope::Body::Document(d)) => d,
            _ => panic!("not a document"),
        }
    }
    pub fn document(&self) -> &Document {
        match self.envelope.body.as_ref() {
            Some(envelope::Body::Document(d)) => d,
            _ => panic!("not a document"),
        }
    }
}

/// What was sent and what the gateway answered.
#[derive(Clone, Debug)]
pub struct Sent {
    pub receipt: SendReceipt,
    pub signed: SignedEnvelope,
    pub envelope: Envelope,
    pub attachments: Vec<AttachmentSpec>,
}

impl Sent {
    pub fn message_id(&self) -> &str {
        &self.envelope.message_id
    }
    pub fn document(&self) -> &Document {
        match self.envelope.body.as_ref() {
            Some(envelope::Body::Document(d)) => d,
            _ => panic!("not a document"),
        }
    }
}

/// Agency software: a gRPC channel and an identity.
#[derive(Clone)]
pub struct Agency {
    pub organ_id: String,
    /// `x-organ-id` sent with each call (`None`: no header).
    pub caller: Option<String>,
    pub signer: Arc<Signer>,
    /// DER certificates, leaf first.
    pub chain: Vec<Vec<u8>>,
    channel: Channel,
}

impl Agency {
    pub fn new(
        addr: SocketAddr,
        organ_id: &str,
        signer: Arc<Signer>,
        chain: Vec<Vec<u8>>,
    ) -> Agency {
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(300))
            .connect_lazy();
        Agency {
            organ_id: organ_id.to_string(),
            caller: Some(organ_id.to_string()),
            signer,
            chain,
            channel,
        }
    }

    /// A client over mutual TLS: its identity is its client certificate; it
    /// sends no `x-organ-id`.
    pub fn with_tls(
        addr: SocketAddr,
        organ_id: &str,
        signer: Arc<Signer>,
        chain: Vec<Vec<u8>>,
        tls: tonic::transport::ClientTlsConfig,
    ) -> Agency {
        let channel = Endpoint::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(300))
            .connect_lazy();
        Agency {
            organ_id: organ_id.to_string(),
            caller: None,
            signer,
            chain,
            channel,
        }
    }

    /// The same client over another channel (e.g. one bound to another
    /// local address).
    pub fn with_channel(&self, channel: Channel) -> Agency {
        let mut a = self.clone();
        a.channel = channel;
        a
    }

    /// The same client, sending another `x-organ-id` (or none).
    pub fn with_caller(&self, caller: Option<&str>) -> Agency {
        let mut a = self.clone();
        a.caller = caller.map(str::to_string);
        a
    }

    /// The same client, signing with another key and chain.
    pub fn with_key(&self, signer: Arc<Signer>, chain: Vec<Vec<u8>>) -> Agency {
        let mut a = self.clone();
        a.signer = signer;
        a.chain = chain;
        a
    }

    pub fn request<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        if let Some(c) = &self.caller {
            r.metadata_mut()
                .insert("x-organ-id", c.parse().expect("ascii organ id"));
        }
        r
    }

    pub fn exchange(&self) -> ExchangeClient<Channel> {
        ExchangeClient::new(self.channel.clone())
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024)
    }

    /// The underlying channel, for services the harness does not wrap.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    pub fn directory(&self) -> DirectoryClient<Channel> {
        DirectoryClient::new(self.channel.clone())
    }

    /// An `Envelope` with a `Document` from this agency, attachments
    /// described by size and SHA-256 (read once here; streamed later).
    pub fn draft_document(
        &self,
        to: &[&str],
        subject: &str,
        attachments: &[AttachmentSpec],
    ) -> Draft {
        let n = DOC_COUNTER.fetch_add(1, Ordering::Relaxed);
        let refs = attachments
            .iter()
            .map(|a| {
                let (size, sha) = a.digest();
                AttachmentRef {
                    name: a.name.clone(),
                    content_type: a.content_type.clone(),
                    size,
                    sha256: Bytes::from(sha.to_vec()),
                    description: format!("Tệp đính kèm {}", a.name),
                    ..Default::default()
                }
            })
            .collect();
        let doc = Document {
            document_id: format!("{},2026/11/24,{}/UBND-VP", self.organ_id, n),
            code_number: n.to_string(),
            code_notation: "UBND-VP".into(),
            promulgation_place: "Lai Châu".into(),
            promulgation_date: "2026-11-24".into(),
            r#type: 1,
            type_detail: 0,
            type_name: "Công văn".into(),
            subject: subject.into(),
            content: "Văn bản thử nghiệm của bộ kiểm thử đầu-cuối.".into(),
            signer: Some(DocSigner {
                competence: "TL. Chủ tịch".into(),
                position: "Chánh Văn phòng".into(),
                full_name: "Nguyễn Văn A".into(),
            }),
            priority: 0,
            to_places: to.iter().map(|s| s.to_string()).collect(),
            attachments: refs,
            ..Default::default()
        };
        Draft {
            envelope: Envelope {
                message_id: uuid::Uuid::new_v4().to_string(),
                from: self.organ_id.clone(),
                to: to.iter().map(|s| s.to_string()).collect(),
                created_at: Some(prost_types::Timestamp::from(SystemTime::now())),
                body: Some(envelope::Body::Document(doc)),
                ..Default::default()
            },
            attachments: attachments.to_vec(),
        }
    }

    pub fn sign(&self, env: &Envelope) -> SignedEnvelope {
        sign_envelope(env, &self.signer, &self.chain)
    }

    /// Sends a document with its attachments.
    pub fn send_document(
        &self,
        to: &[&str],
        subject: &str,
        attachments: &[AttachmentSpec],
    ) -> impl Future<Output = Result<Sent, Status>> + Send + 'static + use<> {
        let draft = self.draft_document(to, subject, attachments);
        self.send_draft(&draft)
    }

    /// Signs and sends a draft.
    pub fn send_draft(
        &self,
        draft: &Draft,
    ) -> impl Future<Output = Result<Sent, Status>> + Send + 'static + use<> {
        let signed = self.sign(&draft.envelope);
        let fut = self.send_with_attachments(signed.clone(), &draft.attachments);
        let envelope = draft.envelope.clone();
        let attachments = draft.attachments.clone();
        async move {
            let receipt = fut.await?;
            Ok(Sent {
                receipt,
                signed,
                envelope,
                attachments,
            })
        }
    }

    /// Streams a signed envelope, then each attachment's bytes in order
    /// (generated or read while streaming: memory stays small).
    pub fn send_with_attachments(
        &self,
        signed: SignedEnvelope,
        attachments: &[AttachmentSpec],
    ) -> impl Future<Output = Result<SendReceipt, Status>> + Send + 'static + use<> {
        let mut parts: Vec<Box<dyn Iterator<Item = SendRequest> + Send>> = Vec::new();
        for (i, a) in attachments.iter().enumerate() {
            parts.push(chunk_requests(i as u32, a.chunks()));
        }
        let chunks = parts.into_iter().flatten();
        let first = SendRequest {
            item: Some(send_request::Item::Envelope(signed)),
        };
        let stream = IterStream(Box::new(std::iter::once(first).chain(chunks)));
        self.send_stream(stream)
    }

    /// Low level: a signed envelope and the given chunks.
    pub async fn send_signed(
        &self,
        signed: SignedEnvelope,
        chunks: Vec<AttachmentChunk>,
    ) -> Result<SendReceipt, Status> {
        let mut items = vec![SendRequest {
            item: Some(send_request::Item::Envelope(signed)),
        }];
        items.extend(chunks.into_iter().map(|c| SendRequest {
            item: Some(send_request::Item::Chunk(c)),
        }));
        self.send_stream(futures::stream::iter(items)).await
    }

    /// Lowest level: any stream of `SendRequest`s.
    pub fn send_stream<S>(
        &self,
        stream: S,
    ) -> impl Future<Output = Result<SendReceipt, Status>> + Send + 'static + use<S>
    where
        S: Stream<Item = SendRequest> + Send + 'static,
    {
        let req = self.request(stream);
        let mut client = self.exchange();
        async move { client.send(req).await.map(|r| r.into_inner()) }
    }

    /// Sends a status notice about `document_id` back to its sender.
    pub async fn send_status(
        &self,
        to_document_sender: &str,
        document_id: &str,
        code: &str,
    ) -> Result<Sent, Status> {
        let env = Envelope {
            message_id: uuid::Uuid::new_v4().to_string(),
            from: self.organ_id.clone(),
            to: vec![to_document_sender.to_string()],
            created_at: Some(prost_types::Timestamp::from(SystemTime::now())),
            body: Some(envelope::Body::Status(StatusNotice {
                document_id: document_id.to_string(),
                document_from: to_document_sender.to_string(),
                code: code.to_string(),
                description: "Đã tiếp nhận văn bản".into(),
                staff: Some(v1::Staff {
                    name: "Trần Thị B".into(),
                    department: "Văn thư".into(),
                    email: "vanthu@example.invalid".into(),
                    mobile: String::new(),
                }),
                at: Some(prost_types::Timestamp::from(SystemTime::now())),
                ..Default::default()
            })),
            ..Default::default()
        };
        let signed = self.sign(&env);
        let receipt = self.send_signed(signed.clone(), Vec::new()).await?;
        Ok(Sent {
            receipt,
            signed,
            envelope: env,
            attachments: Vec::new(),
        })
    }

    /// `Receive(follow=true)`: the agency's software following its inbox.
    pub async fn follow(&self) -> Result<tonic::Streaming<Delivery>, Status> {
        Ok(self
            .exchange()
            .receive(self.request(ReceiveRequest {
                follow: true,
                ..Default::default()
            }))
            .await?
            .into_inner())
    }

    /// `Receive(follow=false, max)`, collected until the stream ends (30 s at most).
    pub async fn receive_all(&self, max: u32) -> Result<Vec<Delivery>, Status> {
        let fut = async {
            let mut stream = self
                .exchange()
                .receive(self.request(ReceiveRequest {
                    follow: false,
                    max,
                    ..Default::default()
                }))
                .await?
                .into_inner();
            let mut out = Vec::new();
            while let Some(d) = stream.next().await {
                out.push(d?);
            }
            Ok(out)
        };
        match tokio::time::timeout(Duration::from_secs(30), fut).await {
            Ok(r) => r,
            Err(_) => panic!(
                "Receive(follow=false) as {} did not end within 30 s",
                self.caller.as_deref().unwrap_or("<no caller>")
            ),
        }
    }

    pub async fn ack(&self, delivery_id: &str) -> Result<(), Status> {
        self.exchange()
            .ack(self.request(AckRequest {
                delivery_id: delivery_id.to_string(),
            }))
            .await
            .map(|_| ())
    }

    /// Streams an attachment and returns its size and SHA-256.
    pub async fn fetch_attachment_sha256(
        &self,
        message_id: &str,
        from: &str,
        index: u32,
    ) -> Result<(u64, [u8; 32]), Status> {
        let mut stream = self
            .exchange()
            .fetch_attachment(self.request(FetchAttachmentRequest {
                message_id: message_id.to_string(),
                from: from.to_string(),
                index,
            }))
            .await?
            .into_inner();
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            size += chunk.data.len() as u64;
            ctx.update(&chunk.data);
        }
        Ok((size, ctx.finish().as_ref().try_into().unwrap()))
    }

    pub async fn trace(&self, message_id: &str, from: &str) -> Result<Vec<TraceEvent>, Status> {
        self.exchange()
            .trace(self.request(TraceRequest {
                message_id: message_id.to_string(),
                from: from.to_string(),
            }))
            .await
            .map(|r| r.into_inner().events)
    }

    pub async fn lookup(&self, organ_id: &str) -> Result<AgencyRecord, Status> {
        self.directory()
            .lookup(self.request(LookupRequest {
                organ_id: organ_id.to_string(),
            }))
            .await
            .map(|r| r.into_inner())
    }

    /// `Directory.List(under)`, following page tokens.
    pub async fn list_all(&self, under: &str) -> Result<Vec<AgencyRecord>, Status> {
        let mut out = Vec::new();
        let mut token = String::new();
        for _ in 0..1000 {
            let r = self
                .directory()
                .list(self.request(ListRequest {
                    under: under.to_string(),
                    page_size: 100,
                    page_token: token.clone(),
                }))
                .await?
                .into_inner();
            out.extend(r.agencies);
            if r.next_page_token.is_empty() {
                return Ok(out);
            }
            token = r.next_page_token;
        }
        panic!("Directory.List did not stop paging after 1000 pages");
    }
}

/// A stream over an iterator, as a named type: tonic's client-streaming
/// future is not provably `Send` when the request stream is a trait object
/// (rustc "higher-ranked lifetime error"), so wrap the boxed iterator.
pub struct IterStream(pub Box<dyn Iterator<Item = SendRequest> + Send>);

impl Stream for IterStream {
    type Item = SendRequest;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<SendRequest>> {
        std::task::Poll::Ready(self.0.next())
    }
}

fn chunk_requests(
    index: u32,
    chunks: Box<dyn Iterator<Item = Bytes> + Send>,
) -> Box<dyn Iterator<Item = SendRequest> + Send> {
    Box::new(chunks.map(move |data| SendRequest {
        item: Some(send_request::Item::Chunk(AttachmentChunk { index, data })),
    }))
}

/// `google.rpc.ErrorInfo.reason` of a status, when it carries one with domain "lienthong".
pub fn reason_of(status: &Status) -> Option<String> {
    let details = status.get_error_details();
    let info = details.error_info()?;
    Some(info.reason.clone())
}

/// `ErrorInfo.domain` of a status.
pub fn domain_of(status: &Status) -> Option<String> {
    let details = status.get_error_details();
    details.error_info().map(|i| i.domain.clone())
}

/// The `Envelope` inside a delivery.
pub fn decode_envelope(signed: &SignedEnvelope) -> Envelope {
    Envelope::decode(signed.payload.clone()).expect("delivery payload is an Envelope")
}

/// Counts of each value.
pub fn counts<'a>(items: impl IntoIterator<Item = &'a str>) -> HashMap<&'a str, usize> {
    let mut m = HashMap::new();
    for i in items {
        *m.entry(i).or_insert(0) += 1;
    }
    m
}

/// One line per event, for assertion messages.
pub fn format_events(events: &[TraceEvent]) -> String {
    events
        .iter()
        .map(|e| {
            format!(
                "#{} {} msg={} from={} to={} reason={} detail={}",
                e.seq, e.kind, e.message_id, e.from, e.to, e.reason, e.detail
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Receives (and acknowledges) as `agency` until the message with this id
/// came (30 s at most).
pub async fn receive_message(agency: &Agency, message_id: &str) -> Delivery {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        for d in agency.receive_all(0).await.expect("receive") {
            agency.ack(&d.delivery_id).await.expect("ack");
            if d.envelope
                .as_ref()
                .map(|e| decode_envelope(e).message_id)
                .as_deref()
                == Some(message_id)
            {
                return d;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never received {message_id}",
            agency.organ_id
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs `fut`, failing the test with `what` if it takes longer than `limit`.
pub async fn within<T>(
    limit: Duration,
    what: &str,
    fut: impl std::future::Future<Output = T>,
) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(t) => t,
        Err(_) => panic!("{what} did not finish within {limit:?}"),
    }
}

// ---------------------------------------------------------------------------
// Certificates the gateway must refuse
// ---------------------------------------------------------------------------

pub mod amqp;
mod db;
pub use db::*;
mod pg_cluster;
pub use pg_cluster::*;
pub mod edxml;
pub mod rabbit_cluster;
// The PDF signing toolkit of `lienthong pdf verify`'s tests.
pub mod pdf;

pub mod pki {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
        ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
    };
    use x509_parser::asn1_rs::Tag;

    pub use rcgen::date_time_ymd;

    /// The first certificate of a PEM file.
    pub fn load_cert_der(path: &Path) -> Vec<u8> {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject;
        CertificateDer::from_pem_file(path)
            .unwrap_or_else(|e| panic!("read certificate {}: {e:?}", path.display()))
            .to_vec()
    }

    /// Every certificate of a PEM file, in order (a leaf, then its
    /// intermediates).
    pub fn load_certs_der(path: &Path) -> Vec<Vec<u8>> {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject;
        let certs: Vec<Vec<u8>> = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.map(|c| c.map(|c| c.to_vec())).collect())
            .unwrap_or_else(|e| panic!("read certificates {}: {e:?}", path.display()));
        assert!(!certs.is_empty(), "{} holds no certificate", path.display());
        certs
    }

    /// A certificate authority whose key we hold.
    pub struct Ca {
        pub cert_der: Vec<u8>,
        pub cert_pem: String,
        issuer: Issuer<'static, KeyPair>,
    }

    impl Ca {
        /// A fresh self-signed CA (one the gateway does not trust).
        pub fn generate(cn: &str) -> Ca {
            let key = KeyPair::generate().expect("generate CA key");
            let mut params = CertificateParams::default();
            params.distinguished_name = DistinguishedName::new();
            params.distinguished_name.push(DnType::CommonName, cn);
            params
                .distinguished_name
                .push(DnType::OrganizationName, "lienthong e2e (untrusted)");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            params.not_before = date_time_ymd(2020, 1, 1);
            params.not_after = date_time_ymd(2045, 1, 1);
            let cert = params.self_signed(&key).expect("self-sign CA");
            Ca {
                cert_der: cert.der().to_vec(),
                cert_pem: cert.pem(),
                issuer: Issuer::new(params, key),
            }
        }

        /// The CA `lienthong dev-pki` wrote (`ca.pem`, `ca.key.pem`).
        pub fn load(cert_pem: &Path, key_pem: &Path) -> Ca {
            let cert_der = load_cert_der(cert_pem);
            let key_text = fs::read_to_string(key_pem).expect("read CA key");
            let key = KeyPair::from_pem(&key_text).expect("parse CA key (PKCS#8)");
            let (_, x509) =
                x509_parser::parse_x509_certificate(&cert_der).expect("parse CA certificate");
            let mut params = CertificateParams::default();
            params.distinguished_name = dn_from_x509(x509.subject());
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let issuer = Issuer::new(params, key);
            Ca {
                cert_pem: fs::read_to_string(cert_pem).expect("read CA cert"),
                cert_der,
                issuer,
            }
        }

        /// A certificate for `subject_key` shaped like `template` (same
        /// subject, key usages and extended key usages) but issued by this
        /// CA with the given validity.
        pub fn reissue(
            &self,
            template_der: &[u8],
            subject_key: &KeyPair,
            not_before: time::OffsetDateTime,
            not_after: time::OffsetDateTime,
        ) -> Vec<u8> {
            self.reissue_pem(template_der, subject_key, not_before, not_after)
                .0
        }

        /// As [`Ca::reissue`], with the PEM form too.
        pub fn reissue_pem(
            &self,
            template_der: &[u8],
            subject_key: &KeyPair,
            not_before: time::OffsetDateTime,
            not_after: time::OffsetDateTime,
        ) -> (Vec<u8>, String) {
            let (_, t) = x509_parser::parse_x509_certificate(template_der).expect("parse template");
            let mut params = CertificateParams::default();
            params.distinguished_name = dn_from_x509(t.subject());
            params.not_before = not_before;
            params.not_after = not_after;
            params.serial_number = Some(SerialNumber::from_slice(
                &uuid::Uuid::new_v4().as_bytes()[..15],
            ));
            params.is_ca = IsCa::ExplicitNoCa;
            if let Ok(Some(ku)) = t.key_usage() {
                let ku = ku.value;
                let mut v = Vec::new();
                if ku.digital_signature() {
                    v.push(KeyUsagePurpose::DigitalSignature);
                }
                if ku.non_repudiation() {
                    v.push(KeyUsagePurpose::ContentCommitment);
                }
                if ku.key_encipherment() {
                    v.push(KeyUsagePurpose::KeyEncipherment);
                }
                if ku.data_encipherment() {
                    v.push(KeyUsagePurpose::DataEncipherment);
                }
                if ku.key_agreement() {
                    v.push(KeyUsagePurpose::KeyAgreement);
                }
                params.key_usages = v;
            } else {
                params.key_usages = vec![
                    KeyUsagePurpose::DigitalSignature,
                    KeyUsagePurpose::ContentCommitment,
                ];
            }
            if let Ok(Some(eku)) = t.extended_key_usage() {
                let eku = eku.value;
                let mut v = Vec::new();
                if eku.any {
                    v.push(ExtendedKeyUsagePurpose::Any);
                }
                if eku.server_auth {
                    v.push(ExtendedKeyUsagePurpose::ServerAuth);
                }
                if eku.client_auth {
                    v.push(ExtendedKeyUsagePurpose::ClientAuth);
                }
                if eku.code_signing {
                    v.push(ExtendedKeyUsagePurpose::CodeSigning);
                }
                if eku.email_protection {
                    v.push(ExtendedKeyUsagePurpose::EmailProtection);
                }
                if eku.time_stamping {
                    v.push(ExtendedKeyUsagePurpose::TimeStamping);
                }
                if eku.ocsp_signing {
                    v.push(ExtendedKeyUsagePurpose::OcspSigning);
                }
                for o in &eku.other {
                    if let Some(it) = o.iter() {
                        v.push(ExtendedKeyUsagePurpose::Other(it.collect()));
                    }
                }
                params.extended_key_usages = v;
            }
            params.use_authority_key_identifier_extension = true;
            let cert = params
                .signed_by(subject_key, &self.issuer)
                .expect("issue certificate");
            let der = cert.der().to_vec();
            // The issued certificate's issuer must be byte-for-byte the CA's
            // subject, or chain building fails for a reason of ours.
            let (_, issued) = x509_parser::parse_x509_certificate(&der).unwrap();
            let (_, ca) = x509_parser::parse_x509_certificate(&self.cert_der).unwrap();
            assert_eq!(
                issued.issuer().as_raw(),
                ca.subject().as_raw(),
                "harness bug: re-encoded CA name differs from the CA certificate's subject"
            );
            (der, cert.pem())
        }
    }

    /// rcgen's `KeyPair` from a PKCS#8 PEM file (for the subject key of a reissued cert).
    pub fn key_pair_from_pem_file(path: &Path) -> KeyPair {
        let text = fs::read_to_string(path).expect("read key");
        KeyPair::from_pem(&text).expect("parse key")
    }

    /// A fresh P-256 key, as rcgen key pair and as harness signer.
    pub fn fresh_key() -> (KeyPair, Signer) {
        let kp = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("generate key");
        let signer = Signer::from_pkcs8_der(&kp.serialize_der());
        (kp, signer)
    }

    /// A certificate template (subject CN/O) for an agency that dev-pki did not create.
    pub fn template_for(organ_id: &str, name: &str) -> Vec<u8> {
        template(&[
            (DnType::CountryName, "VN"),
            (DnType::OrganizationName, name),
            (DnType::OrganizationalUnitName, organ_id),
            (DnType::CommonName, name),
        ])
    }

    /// A certificate template for a person who runs the gateway: their name
    /// under the IT centre, no agency code anywhere in the subject.
    pub fn operator_template(name: &str) -> Vec<u8> {
        template(&[
            (DnType::CountryName, "VN"),
            (DnType::OrganizationName, "Trung tâm Công nghệ thông tin"),
            (DnType::OrganizationalUnitName, "Vận hành cổng liên thông"),
            (DnType::CommonName, name),
        ])
    }

    fn template(subject: &[(DnType, &str)]) -> Vec<u8> {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        for (ty, value) in subject {
            params.distinguished_name.push(ty.clone(), *value);
        }
        // Shaped like the government CA's organisation certificates.
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::ContentCommitment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::EmailProtection,
        ];
        params.self_signed(&key).expect("template").der().to_vec()
    }

    fn dn_from_x509(name: &x509_parser::x509::X509Name<'_>) -> DistinguishedName {
        let mut dn = DistinguishedName::new();
        for rdn in name.iter() {
            for attr in rdn.iter() {
                let oid: Vec<u64> = attr
                    .attr_type()
                    .iter()
                    .expect("attribute OID fits u64")
                    .collect();
                let ty = DnType::from_oid(&oid);
                let data = attr.attr_value().data;
                let text = String::from_utf8_lossy(data).into_owned();
                let value = match attr.attr_value().tag() {
                    Tag::PrintableString => {
                        DnValue::PrintableString(text.try_into().expect("printable string"))
                    }
                    Tag::Ia5String => DnValue::Ia5String(text.try_into().expect("ia5 string")),
                    Tag::Utf8String => DnValue::Utf8String(text),
                    t => panic!("harness: unsupported DN string type {t:?}"),
                };
                dn.push(ty, value);
            }
        }
        dn
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_is_dsse() {
        assert_eq!(pae("t", b"ab"), b"DSSEv1 1 t 2 ab".to_vec());
        assert_eq!(pae("", b""), b"DSSEv1 0  0 ".to_vec());
    }

    #[test]
    fn generated_bytes_are_deterministic_and_prefix_stable() {
        let a = AttachmentSpec::generated("a", 200_000, 7);
        let b = AttachmentSpec::generated("b", 200_000 + 1000, 7);
        let x: Vec<u8> = a.chunks().flat_map(|c| c.to_vec()).collect();
        let y: Vec<u8> = b.chunks().flat_map(|c| c.to_vec()).collect();
        assert_eq!(x.len(), 200_000);
        assert_eq!(&y[..200_000], &x[..]);
        assert_eq!(a.digest(), (200_000, sha256(&x)));
        let other: Vec<u8> = AttachmentSpec::generated("c", 200_000, 8)
            .chunks()
            .flat_map(|c| c.to_vec())
            .collect();
        assert_ne!(x, other);
        assert!(a.chunks().all(|c| c.len() <= CHUNK));
    }

    #[test]
    fn pg_urls() {
        assert_eq!(
            pg_url_with_db("postgres://postgres@127.0.0.1:5432/test", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            pg_url_with_db("postgres://u:p@h/test?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
        assert_eq!(pg_url_with_db("postgres://h:1", "x"), "postgres://h:1/x");
    }

    #[test]
    fn signatures_round_trip_and_reissued_certs_chain_by_name() {
        let ca = pki::Ca::generate("test CA");
        let (kp, signer) = pki::fresh_key();
        let cert = ca.reissue(
            &pki::template_for("000.00.77.H35", "Thử"),
            &kp,
            pki::date_time_ymd(2020, 1, 1),
            pki::date_time_ymd(2021, 1, 1),
        );
        let env = Envelope {
            message_id: "m".into(),
            from: "000.00.77.H35".into(),
            ..Default::default()
        };
        let mut signed = sign_envelope(&env, &signer, &[cert]);
        assert_eq!(signed.signatures[0].algorithm, "ES256");
        verify_signed(&signed).unwrap();
        let mut v = signed.signatures[0].value.to_vec();
        v[10] ^= 1;
        signed.signatures[0].value = Bytes::from(v);
        assert!(verify_signed(&signed).is_err());
    }

    #[tokio::test]
    async fn postgres_database_is_created_and_dropped() {
        let Some(db) = PgDatabase::create_or_skip("harness_pg").await else {
            return;
        };
        let url = db.url.clone();
        pg_exec(&url, "CREATE TABLE t (x int)").await.unwrap();
        drop(db);
        assert!(
            pg_exec(&url, "SELECT 1").await.is_err(),
            "database still there after drop"
        );
    }
}

/// An HTTP/1.1 answer: status, headers (names in lower case), body.
#[derive(Debug, Clone)]
pub struct HttpAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpAnswer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request on a connection of its own (`Connection: close`).
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpAnswer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect HTTP");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.expect("write request");
    s.write_all(body).await.expect("write body");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read response");
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(buf.len());
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let mut raw = buf.get(split + 4..).unwrap_or_default().to_vec();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
    {
        let mut out = Vec::new();
        let mut rest = &raw[..];
        while let Some(nl) = rest.windows(2).position(|w| w == b"\r\n") {
            let size =
                usize::from_str_radix(String::from_utf8_lossy(&rest[..nl]).trim(), 16).unwrap_or(0);
            if size == 0 {
                break;
            }
            let start = nl + 2;
            out.extend_from_slice(&rest[start..(start + size).min(rest.len())]);
            rest = rest.get(start + size + 2..).unwrap_or_default();
        }
        raw = out;
    }
    HttpAnswer {
        status,
        headers,
        body: raw,
    }
}

/// An operator logged in to the dashboard: the session cookie and the CSRF
/// token that state-changing requests carry.
#[derive(Debug, Clone)]
pub struct HttpSession {
    pub addr: SocketAddr,
    pub cookie: String,
    pub csrf: String,
}

fn set_cookie_pair(a: &HttpAnswer, name: &str) -> Option<String> {
    a.headers
        .iter()
        .filter(|(k, _)| k == "set-cookie")
        .filter_map(|(_, v)| v.split(';').next())
        .find(|kv| kv.starts_with(&format!("{name}=")))
        .map(str::to_owned)
}

fn percent_encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl HttpSession {
    /// Logs in through the login form as a browser does: `GET /login` (a
    /// cookie and the form's hidden token), then `POST /login`.
    pub async fn login(
        addr: SocketAddr,
        name: &str,
        password: &str,
    ) -> Result<HttpSession, String> {
        let page = http_request(addr, "GET", "/login", &[], b"").await;
        if page.status != 200 {
            return Err(format!("GET /login: {} {}", page.status, page.text()));
        }
        let login_cookie = set_cookie_pair(&page, "lienthong_login").ok_or("no login cookie")?;
        let html = page.text();
        let csrf = html
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .ok_or("no token in the login form")?
            .to_owned();
        let form = format!(
            "name={}&password={}&csrf={}",
            percent_encode(name),
            percent_encode(password),
            percent_encode(&csrf)
        );
        let posted = http_request(
            addr,
            "POST",
            "/login",
            &[
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("Cookie", &login_cookie),
            ],
            form.as_bytes(),
        )
        .await;
        if posted.status != 303 {
            return Err(format!("POST /login: {} {}", posted.status, posted.text()));
        }
        let cookie = set_cookie_pair(&posted, "lienthong_session").ok_or("no session cookie")?;
        let mut s = HttpSession {
            addr,
            cookie,
            csrf: String::new(),
        };
        let me = s.get("/api/session").await;
        s.csrf = me.json()["csrf_token"].as_str().unwrap_or("").to_owned();
        Ok(s)
    }

    pub async fn get(&self, path: &str) -> HttpAnswer {
        http_request(self.addr, "GET", path, &[("Cookie", &self.cookie)], b"").await
    }

    /// A JSON POST with the session's CSRF token.
    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> HttpAnswer {
        http_request(
            self.addr,
            "POST",
            path,
            &[
                ("Cookie", &self.cookie),
                ("Content-Type", "application/json"),
                ("X-CSRF-Token", &self.csrf),
            ],
            body.to_string().as_bytes(),
        )
        .await
    }
}

/// Makes a call as a client that heeds the gateway does: told RATE_LIMITED
/// (`RESOURCE_EXHAUSTED`), it waits the second the sentence asks for and
/// tries again, a few times. For tests that read or acknowledge a whole
/// inbox at once, faster than one agency may call.
pub async fn heeding_limits<T, F, Fut>(mut call: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    let mut tries = 0;
    loop {
        match call().await {
            Err(s) if s.code() == tonic::Code::ResourceExhausted && tries < 5 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            r => return r,
        }
    }
}

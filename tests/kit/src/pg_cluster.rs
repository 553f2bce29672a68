//! A PostgreSQL cluster of one test, made with Debian's `pg_createcluster`,
//! for outages the test causes itself: stopping the machine's own server
//! would break every other test running beside it.
//!
//! The cluster listens on 127.0.0.1 only, trusts every connection from
//! there, and is stopped and removed (`pg_dropcluster`) when the value is
//! dropped, also when the test panics. A cluster left behind by a test
//! process that was killed is removed by the next one that makes a cluster.

use std::path::Path;
use std::process::{Command as StdCommand, Output, Stdio};

use crate::{describe_output, notice, require_services};

/// Names of the clusters made here: the prefix, the process id of the
/// test that made it, a random part.
const PREFIX: &str = "lienthong_e2e_";

/// How [`PgCluster::stop`] stops the server (`pg_ctl -m`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    /// Connections are ended and the server shuts down cleanly.
    Fast,
    /// The server's processes quit at once, as if the machine lost power;
    /// it recovers from its WAL at the next start.
    Immediate,
}

impl StopMode {
    fn arg(self) -> &'static str {
        match self {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// A running PostgreSQL cluster of one test.
pub struct PgCluster {
    pub version: String,
    pub name: String,
    pub port: u16,
}

/// What the blocking commands need of a cluster, without removing it when
/// dropped.
#[derive(Clone)]
struct Handle {
    version: String,
    name: String,
    port: u16,
}

impl PgCluster {
    /// Makes and starts a cluster; `None` (with a SKIPPED line) when this
    /// machine cannot make one (no `pg_createcluster`, no PostgreSQL server
    /// package, not root), unless services are required.
    pub async fn create_or_skip(test: &str) -> Option<PgCluster> {
        let test = test.to_owned();
        tokio::task::spawn_blocking(move || create_or_skip(&test))
            .await
            .expect("making the PostgreSQL cluster panicked")
    }

    /// A URL of the superuser on this cluster's `postgres` database, for
    /// [`crate::GatewayOptions::pg_server`] and [`crate::PgDatabase::create`].
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn handle(&self) -> Handle {
        Handle {
            version: self.version.clone(),
            name: self.name.clone(),
            port: self.port,
        }
    }

    /// Starts the stopped cluster on its port, and returns once it accepts
    /// connections.
    pub async fn start(&self) {
        let h = self.handle();
        tokio::task::spawn_blocking(move || h.start())
            .await
            .expect("starting the PostgreSQL cluster panicked")
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Stops the cluster and returns once its server has exited.
    pub async fn stop(&self, mode: StopMode) {
        let h = self.handle();
        let out = tokio::task::spawn_blocking(move || h.ctl("stop", Some(mode)))
            .await
            .expect("stopping the PostgreSQL cluster panicked");
        assert!(
            out.status.success(),
            "pg_ctlcluster {} {} stop -m {} failed:\n{}",
            self.version,
            self.name,
            mode.arg(),
            describe_output(&out)
        );
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        drop_cluster(&self.version, &self.name);
    }
}

fn create_or_skip(test: &str) -> Option<PgCluster> {
    let version = match usable() {
        Ok(v) => v,
        Err(why) => {
            if require_services() {
                panic!(
                    "{test}: {why}, and LIENTHONG_REQUIRE_SERVICES=1 says a PostgreSQL \
                     cluster of the test's own must be possible"
                );
            }
            notice(&format!(
                "SKIPPED: {test}: {why}; set LIENTHONG_REQUIRE_SERVICES=1 to make this a failure"
            ));
            return None;
        }
    };
    remove_orphans();
    // Two tests may pick one port at once, and the port checked free may be
    // taken before the server binds it: the start fails, try anew.
    let mut last = String::new();
    for _ in 0..5 {
        let cluster = PgCluster {
            name: format!(
                "{PREFIX}{}_{}",
                std::process::id(),
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
            port: pick_cluster_port(),
            version: version.clone(),
        };
        let h = cluster.handle();
        h.create();
        match h.start() {
            Ok(()) => return Some(cluster),
            Err(e) if e.contains("in use") => last = e,
            Err(e) => panic!("{e}"),
        }
    }
    panic!("no free port for a PostgreSQL cluster in 5 tries: {last}");
}

impl Handle {
    fn create(&self) {
        let out = run(StdCommand::new("pg_createcluster")
            .arg(&self.version)
            .arg(&self.name)
            .arg("--port")
            .arg(self.port.to_string())
            // Started and stopped by the test alone, never at boot.
            .args(["--start-conf", "manual"])
            .args(["--", "--auth=trust"]));
        assert!(
            out.status.success(),
            "pg_createcluster {} {} failed:\n{}",
            self.version,
            self.name,
            describe_output(&out)
        );
        // Appended, so they win over what the template set; written here
        // rather than with `pg_createcluster -o`, which quotes some values
        // twice and others not at all.
        let conf = Path::new("/etc/postgresql")
            .join(&self.version)
            .join(&self.name)
            .join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf)
            .unwrap_or_else(|e| panic!("read {}: {e}", conf.display()));
        text.push_str(
            "\n# a test's own cluster\nlisten_addresses = '127.0.0.1'\nshared_buffers = '16MB'\n",
        );
        std::fs::write(&conf, text).unwrap_or_else(|e| panic!("write {}: {e}", conf.display()));
    }

    fn ctl(&self, action: &str, mode: Option<StopMode>) -> Output {
        let mut cmd = StdCommand::new("pg_ctlcluster");
        // Runs the server's own pg_ctl even where systemd would take over.
        cmd.arg("--skip-systemctl-redirect")
            .args([&self.version, &self.name, action]);
        if let Some(m) = mode {
            cmd.args(["-m", m.arg()]);
        }
        run(&mut cmd)
    }

    fn start(&self) -> Result<(), String> {
        // pg_ctl waits until the server accepts connections.
        let out = self.ctl("start", None);
        if out.status.success() {
            return Ok(());
        }
        Err(format!(
            "pg_ctlcluster {} {} start (port {}) failed:\n{}",
            self.version,
            self.name,
            self.port,
            describe_output(&out)
        ))
    }
}

/// Stops (at once: nothing in it is kept) and removes a cluster, its data,
/// configuration and log.
fn drop_cluster(version: &str, name: &str) {
    let _ = run(StdCommand::new("pg_ctlcluster").args([
        "--skip-systemctl-redirect",
        version,
        name,
        "stop",
        "-m",
        "immediate",
    ]));
    let out = run(StdCommand::new("pg_dropcluster").args(["--stop", version, name]));
    if !out.status.success() {
        eprintln!(
            "warning: could not remove the PostgreSQL cluster {version}/{name}:\n{}",
            describe_output(&out)
        );
    }
}

fn run(cmd: &mut StdCommand) -> Output {
    let shown = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {shown}: {e}"))
}

/// The newest PostgreSQL version with a server this machine can make
/// clusters of, or why there is none.
fn usable() -> Result<String, String> {
    if let Err(e) = StdCommand::new("pg_createcluster")
        .arg("--help")
        .stdin(Stdio::null())
        .output()
    {
        return Err(format!(
            "pg_createcluster not found ({e}): Debian's postgresql-common makes the test's own \
             PostgreSQL cluster (apt-get install postgresql)"
        ));
    }
    if !euid_is_root() {
        return Err(
            "pg_createcluster and pg_ctlcluster must run as root to make a cluster owned by \
             postgres, and the tests do not"
                .to_owned(),
        );
    }
    let mut versions: Vec<(u32, String)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| format!("no PostgreSQL server installed (/usr/lib/postgresql: {e})"))?
        .flatten()
        .filter(|e| e.path().join("bin/postgres").is_file())
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().into_owned();
            Some((v.parse().ok()?, v))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, v)| v)
        .ok_or_else(|| "no PostgreSQL server installed under /usr/lib/postgresql".to_owned())
}

fn euid_is_root() -> bool {
    // "Uid:" real, effective, saved, filesystem.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// `pg_lsclusters -h`: (version, name, port) of every cluster.
fn clusters() -> Vec<(String, String, u16)> {
    let out = run(StdCommand::new("pg_lsclusters").arg("-h"));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (v, n, p) = (f.next()?, f.next()?, f.next()?);
            Some((v.to_owned(), n.to_owned(), p.parse().ok()?))
        })
        .collect()
}

/// Removes the clusters of test processes that are gone (killed before
/// they could drop theirs).
fn remove_orphans() {
    for (v, name, _) in clusters() {
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('_').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            notice(&format!(
                "removing the PostgreSQL cluster {v}/{name}, left by a test process that is gone"
            ));
            drop_cluster(&v, &name);
        }
    }
}

/// A port below the kernel's range for ports bound to `:0`: the cluster
/// gives its port up while it is stopped, and a port in that range could
/// then go to any other test's listener or outgoing connection, leaving
/// the cluster unable to start again. Not one of another cluster's, and
/// free right now.
fn pick_cluster_port() -> u16 {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let high = ephemeral_low.max(12_000);
    let low = high - 10_000;
    let taken: Vec<u16> = clusters().into_iter().map(|(_, _, p)| p).collect();
    for _ in 0..1000 {
        let r = uuid::Uuid::new_v4().as_u128() as u16;
        let port = low + r % (high - low);
        if !taken.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {low} and {high} for a PostgreSQL cluster");
}

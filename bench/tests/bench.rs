//! The load generator's modes, small, as smoke tests, with the real
//! binaries: `lienthong-bench` and the `lienthong` it measures. Each mode
//! runs end to end, checks what it carried, and leaves nothing behind.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use lienthong_testkit::amqp::Vhost;
use lienthong_testkit::*;

/// The `lienthong` binary cargo built beside this package's
/// `lienthong-bench` (`cargo test --workspace` builds both), or
/// `LIENTHONG_BIN`.
fn gateway_bin() -> PathBuf {
    let p = match std::env::var_os("LIENTHONG_BIN") {
        Some(p) => PathBuf::from(p),
        None => sibling("lienthong"),
    };
    assert!(
        p.is_file(),
        "no lienthong binary at {}: `cargo build -p lienthong`, or set LIENTHONG_BIN",
        p.display()
    );
    p
}

fn sibling(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_lienthong-bench"))
        .with_file_name(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

/// A command with no inherited `LIENTHONG_*` variable: none may reach the
/// gateway's configuration.
fn clean(program: impl AsRef<std::ffi::OsStr>) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(program);
    cmd.env("NO_COLOR", "1");
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("LIENTHONG_") {
            cmd.env_remove(&k);
        }
    }
    cmd
}

/// `lienthong bench grpc` runs `lienthong-bench` beside it on its own
/// gateway: 20 documents, each delivered and acknowledged once, unaltered,
/// and the database baseline beside them.
#[tokio::test(flavor = "multi_thread")]
async fn lienthong_bench_runs_the_load_generator_beside_it() {
    let out = clean(sibling("lienthong"))
        .args([
            "bench",
            "grpc",
            "--docs",
            "20",
            "--concurrency",
            "2",
            "--json",
        ])
        .output()
        .await
        .expect("run lienthong bench grpc");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let r: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("bench printed no JSON ({e}): {}", describe_output(&out)));
    assert!(out.status.success(), "{}", describe_output(&out));
    assert_eq!(r["mode"], "grpc", "{r:#}");
    assert_eq!(r["error_count"], 0, "{r:#}");
    assert_eq!(r["accepted"], 20, "{r:#}");
    assert_eq!(r["delivered"], 20, "{r:#}");
    assert_eq!(r["acknowledged"], 20, "{r:#}");
    assert!(
        r["baseline"]["db_inserts_per_sec"].as_f64().unwrap() > 0.0,
        "{r:#}"
    );
    assert!(r["gateway"]["peak_rss_kb"].as_u64().unwrap() > 0, "{r:#}");
}

/// `bench amqp` plays the national exchange: 50 signed documents published
/// to `lienthong.documents`, through the gateway's inbound queue and
/// pipeline, out to the agencies' queues, each checked (known, right
/// recipient, once, payload unchanged); then raw RabbitMQ beside it. The
/// bench makes and deletes its own virtual host.
#[tokio::test(flavor = "multi_thread")]
async fn bench_amqp_carries_every_document_through_the_gateway_once() {
    // The bench makes its own virtual host; this one only shows that
    // RabbitMQ and rabbitmqctl are here (or says SKIPPED).
    let Some(probe) = Vhost::create_or_skip("bench") else {
        return;
    };
    drop(probe);
    let out = clean(env!("CARGO_BIN_EXE_lienthong-bench"))
        .arg("--gateway-bin")
        .arg(gateway_bin())
        .args(["amqp", "--docs", "50", "--concurrency", "4", "--json"])
        .output()
        .await
        .expect("run lienthong-bench amqp");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let r: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("bench printed no JSON ({e}): {}", describe_output(&out)));
    assert!(out.status.success(), "{}", describe_output(&out));
    assert_eq!(r["mode"], "amqp", "{r:#}");
    assert_eq!(r["error_count"], 0, "{r:#}");
    assert_eq!(r["published"], 50, "{r:#}");
    assert_eq!(r["delivered"], 50, "{r:#}");
    assert_eq!(r["acknowledged"], 50, "{r:#}");
    let raw = &r["rabbitmq_baseline"];
    assert_eq!(raw["error_count"], 0, "{r:#}");
    assert_eq!(raw["delivered"], 50, "{r:#}");
    assert!(
        raw["gateway_delivered_ratio"].as_f64().unwrap() > 0.0,
        "{r:#}"
    );

    // Nothing left on the broker.
    let vhost = r["vhost"].as_str().expect("the report names its vhost");
    let list = std::process::Command::new("rabbitmqctl")
        .arg("list_vhosts")
        .output()
        .expect("rabbitmqctl list_vhosts");
    assert!(
        !String::from_utf8_lossy(&list.stdout)
            .lines()
            .any(|l| l.trim() == vhost),
        "the bench left its virtual host {vhost} behind"
    );
}

/// `lienthong-bench amqp ARGS --json`: its report, and its output.
async fn bench_amqp(args: &[&str]) -> (serde_json::Value, std::process::Output) {
    let out = clean(env!("CARGO_BIN_EXE_lienthong-bench"))
        .arg("--gateway-bin")
        .arg(gateway_bin())
        .arg("amqp")
        .args(args)
        .arg("--json")
        .output()
        .await
        .expect("run lienthong-bench amqp");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let r: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("bench printed no JSON ({e}): {}", describe_output(&out)));
    (r, out)
}

/// The bench's own counts, checked against what its gateway wrote: a small
/// run keeps its gateway's folder, whose database this test reads itself
/// (each document accepted from the exchange, and its copies confirmed by
/// the broker, in the transfer log).
#[tokio::test(flavor = "multi_thread")]
async fn bench_amqp_counts_match_what_its_gateway_logged() {
    let Some(probe) = Vhost::create_or_skip("bench_counts") else {
        return;
    };
    drop(probe);
    let (r, out) = bench_amqp(&[
        "--docs",
        "20",
        "--concurrency",
        "2",
        "--baseline",
        "false",
        "--rabbitmq-baseline",
        "false",
        "--keep",
    ])
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let dir = stderr
        .lines()
        .find_map(|l| l.strip_prefix("bench: kept /"))
        .map(|p| PathBuf::from(format!("/{p}")))
        .unwrap_or_else(|| panic!("the bench names no folder it kept: {stderr}"));
    let vhost = r["vhost"].as_str().unwrap_or_default().to_owned();
    // Removed whatever happens below.
    struct Kept(PathBuf, String);
    impl Drop for Kept {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
            let _ = std::process::Command::new("rabbitmqctl")
                .args(["delete_vhost", &self.1])
                .output();
        }
    }
    let _kept = Kept(dir.clone(), vhost);
    assert!(out.status.success(), "{}", describe_output(&out));
    assert_eq!(r["error_count"], 0, "{r:#}");
    assert_eq!(r["published"], 20, "{r:#}");

    let url = format!("sqlite://{}?mode=rw", dir.join("gateway.db").display());
    let db = Db::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("open {url}: {e}"));
    let mut counts = Vec::new();
    for sql in [
        "SELECT count(*) AS n FROM messages",
        "SELECT count(*) AS n FROM events WHERE kind = 'accepted'",
        "SELECT count(*) AS n FROM events WHERE kind = 'rejected'",
        "SELECT count(*) AS n FROM outbox",
        "SELECT count(*) AS n FROM events WHERE kind = 'delivered' AND detail LIKE '%broker confirmed%'",
    ] {
        let rows = db.rows(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        counts.push(rows[0].get::<i64>("n"));
    }
    db.close().await;
    let [messages, accepted, rejected, copies, confirmed] = counts[..] else {
        unreachable!()
    };
    assert_eq!(
        (messages, accepted, rejected),
        (20, 20, 0),
        "the bench says it published 20 documents, none dead-lettered: {r:#}"
    );
    assert_eq!(
        Some(copies),
        r["expected_deliveries"].as_i64(),
        "a copy to publish for each delivery the bench expected: {r:#}"
    );
    // The log may lag the broker (a confirm the gateway had no time to
    // record before the bench stopped it is published again), never lead it.
    assert!(
        confirmed <= r["delivered"].as_i64().unwrap_or_default(),
        "{confirmed} confirmed copies logged: {r:#}"
    );
}

/// `bench grpc --replicas 2`: two `lienthong serve` processes on one
/// PostgreSQL database, each with senders and receivers of its own, so that
/// documents accepted by one reach the `Receive` streams open on the
/// other. Every document delivered and acknowledged once, and both
/// replicas did work.
#[tokio::test(flavor = "multi_thread")]
async fn bench_grpc_spreads_its_load_over_two_replicas() {
    // The bench makes its own database; this one only shows that
    // PostgreSQL is here (or says SKIPPED).
    let Some(probe) = PgDatabase::create_or_skip("bench_grpc_replicas").await else {
        return;
    };
    drop(probe);
    let out = clean(env!("CARGO_BIN_EXE_lienthong-bench"))
        .arg("--gateway-bin")
        .arg(gateway_bin())
        .args(["grpc", "--replicas", "2", "--database"])
        .arg(pg_admin_url())
        .args(["--docs", "200", "--json"])
        .output()
        .await
        .expect("run lienthong-bench grpc --replicas 2");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let r: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("bench printed no JSON ({e}): {}", describe_output(&out)));
    assert!(out.status.success(), "{}", describe_output(&out));
    assert_eq!(r["replicas"], 2, "{r:#}");
    assert_eq!(r["database"], "postgres", "{r:#}");
    assert_eq!(r["error_count"], 0, "{r:#}");
    assert_eq!(r["accepted"], 200, "{r:#}");
    assert_eq!(r["delivered"], 200, "{r:#}");
    assert_eq!(r["acknowledged"], 200, "{r:#}");
    assert!(
        r["delivered_across_replicas"].as_u64().unwrap() > 0,
        "no delivery crossed from one replica to the other: {r:#}"
    );
    assert!(
        r["accept_to_deliver_across_ms"]["p50"].as_f64().is_some(),
        "{r:#}"
    );
    let replicas = r["gateway"]["replicas"].as_array().unwrap();
    assert_eq!(replicas.len(), 2, "{r:#}");
    let mut cpu_sum = 0.0;
    for replica in replicas {
        let cpu = replica["cpu_secs"].as_f64().unwrap();
        assert!(cpu > 0.0, "a replica did no work: {r:#}");
        assert!(replica["accepted"].as_u64().unwrap() > 0, "{r:#}");
        assert!(replica["delivered"].as_u64().unwrap() > 0, "{r:#}");
        assert!(replica["peak_rss_kb"].as_u64().unwrap() > 0, "{r:#}");
        cpu_sum += cpu;
    }
    let total = r["gateway"]["cpu_secs"].as_f64().unwrap();
    assert!((total - cpu_sum).abs() < 1e-6, "{r:#}");
}

/// Several replicas of one SQLite file are refused before anything starts.
#[tokio::test(flavor = "multi_thread")]
async fn bench_grpc_refuses_replicas_on_sqlite() {
    let out = clean(env!("CARGO_BIN_EXE_lienthong-bench"))
        .arg("--gateway-bin")
        .arg(gateway_bin())
        .args(["grpc", "--replicas", "2", "--docs", "1"])
        .output()
        .await
        .expect("run lienthong-bench grpc --replicas 2");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{}", describe_output(&out));
    assert!(
        stderr.contains("--replicas 2 needs --database postgres://"),
        "{}",
        describe_output(&out)
    );
}

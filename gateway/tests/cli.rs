//! The command line as an operator meets it: help, configuration errors,
//! the directory import's row-by-row report, and the transfer log's chain
//! of each replica.

use std::process::Command;

fn lienthong() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lienthong"));
    c.env_remove("LIENTHONG_CONFIG");
    c
}

#[test]
fn help_lists_the_commands() {
    let out = lienthong().arg("--help").output().expect("run lienthong");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["serve", "directory", "dev-pki", "send", "receive", "trace"] {
        assert!(text.contains(cmd), "--help does not mention {cmd}:\n{text}");
    }
}

#[test]
fn a_typo_in_the_configuration_is_refused_with_its_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("l.toml");
    std::fs::write(&cfg, "[databse]\nurl = \"sqlite://x.db\"\n").expect("write");
    let out = lienthong()
        .args(["--config"])
        .arg(&cfg)
        .args(["directory", "list"])
        .output()
        .expect("run lienthong");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("databse"), "stderr: {err}");
}

#[test]
fn directory_import_reports_bad_rows_and_imports_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("l.db");
    let csv = dir.path().join("dir.csv");
    std::fs::write(
        &csv,
        "organ_id,name\n000.00.00.H35,Ủy ban nhân dân tỉnh Lai Châu\n000.1137.H35,Sai mã\n000.00.01.H35,Văn phòng UBND tỉnh\n000.00.00.H35,UBND tỉnh (lặp lại)\n",
    )
    .expect("write");
    let run = |extra: &[&str]| {
        lienthong()
            .env(
                "LIENTHONG_DATABASE__URL",
                format!("sqlite://{}", db.display()),
            )
            .args(["directory", "import"])
            .arg(&csv)
            .args(extra)
            .output()
            .expect("run lienthong")
    };
    let out = run(&[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(":3:") && err.contains("000.1137.H35"),
        "stderr: {err}"
    );
    assert!(err.contains("nothing was imported"), "stderr: {err}");
    assert!(
        err.contains(":5:") && err.contains("line 2"),
        "the repeated organ_id is not reported against its first line: {err}"
    );

    let list = lienthong()
        .env(
            "LIENTHONG_DATABASE__URL",
            format!("sqlite://{}", db.display()),
        )
        .args(["directory", "list"])
        .output()
        .expect("run lienthong");
    assert!(String::from_utf8_lossy(&list.stdout).trim().is_empty());

    let out = run(&["--skip-invalid"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = lienthong()
        .env(
            "LIENTHONG_DATABASE__URL",
            format!("sqlite://{}", db.display()),
        )
        .args(["directory", "list"])
        .output()
        .expect("run lienthong");
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        text.contains("000.00.00.H35") && text.contains("000.00.01.H35"),
        "{text}"
    );
    assert!(!text.contains("1137"), "{text}");
    // A repeated organ_id drops the repeat, not the agency.
    assert!(
        text.contains("Ủy ban nhân dân tỉnh Lai Châu") && !text.contains("lặp lại"),
        "{text}"
    );
}

#[test]
fn dev_header_mode_refuses_a_non_loopback_address() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = lienthong()
        .current_dir(dir.path())
        .env("LIENTHONG_GRPC__LISTEN", "0.0.0.0:0")
        .env(
            "LIENTHONG_DATABASE__URL",
            format!("sqlite://{}/l.db", dir.path().display()),
        )
        .arg("serve")
        .output()
        .expect("run lienthong");
    assert!(!out.status.success(), "serve must not start");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("dev-header") && err.contains("--insecure-allow-remote"),
        "stderr: {err}"
    );
}

/// The load generator starts its own gateway, carries 200 signed
/// documents end to end, and accounts for every one of them.
#[test]
fn bench_grpc_carries_every_document() {
    let out = lienthong()
        .args([
            "bench",
            "grpc",
            "--docs",
            "200",
            "--concurrency",
            "4",
            "--json",
        ])
        .output()
        .expect("run lienthong bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let r: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(r["accepted"], 200, "{r}");
    assert_eq!(r["delivered"], 200, "{r}");
    assert_eq!(r["acknowledged"], 200, "{r}");
    assert_eq!(r["error_count"], 0, "{r}");
    for key in ["accept_latency_ms", "accept_to_deliver_ms"] {
        assert!(r[key]["p99"].is_number(), "no {key}.p99 in {r}");
    }
    assert!(r["gateway"]["peak_rss_kb"].is_number(), "{r}");
}

/// Each replica's commands extend a chain of the transfer log of their own,
/// named by `gateway.replica` (here from the environment, as replicas set
/// it); `log verify` lists every chain with its head. A name that cannot be
/// a chain's is refused, naming the key, before anything is written.
#[test]
fn log_verify_lists_the_chain_of_each_replica() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite://{}", dir.path().join("l.db").display());
    let csv = dir.path().join("dir.csv");
    std::fs::write(
        &csv,
        "organ_id,name\n000.00.00.H35,Ủy ban nhân dân tỉnh Lai Châu\n",
    )
    .expect("write");
    let run = |replica: Option<&str>, args: &[&str]| {
        let mut c = lienthong();
        c.env("LIENTHONG_DATABASE__URL", &db)
            .env_remove("LIENTHONG_GATEWAY__REPLICA");
        if let Some(r) = replica {
            c.env("LIENTHONG_GATEWAY__REPLICA", r);
        }
        c.args(args).output().expect("run lienthong")
    };
    let import = |replica| {
        let out = run(
            replica,
            &["directory", "import", &csv.display().to_string()],
        );
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = import(None);
    assert!(ok, "{err}");
    // The same file again, by a replica: only the import's own line.
    let (ok, err) = import(Some("lienthong-2"));
    assert!(ok, "{err}");
    let (ok, err) = import(Some("bản sao 2"));
    assert!(!ok && err.contains("gateway.replica"), "{err}");

    let out = run(None, &["log", "verify"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.starts_with("the transfer log is intact: ") && text.contains(" in 2 chain(s)"),
        "{text}"
    );
    assert!(
        text.contains("\n  chain lienthong-2: intact, 1 event(s), head at event 1 ("),
        "{text}"
    );
    assert!(text.contains("\n  chain main: intact, "), "{text}");
}

/// Replicas are upgraded with `database.migrate = "manual"`: a release
/// whose schema is behind refuses to start until `lienthong migrate` ran
/// once, and no release runs on a schema a newer one migrated.
#[test]
fn migrate_applies_what_is_pending_once_and_a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite://{}", dir.path().join("l.db").display());
    let run = |args: &[&str]| {
        let out = lienthong()
            .env("LIENTHONG_DATABASE__URL", &db)
            .env("LIENTHONG_DATABASE__MIGRATE", "manual")
            .env_remove("LIENTHONG_GATEWAY__REPLICA")
            .args(args)
            .output()
            .expect("run lienthong");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, _) = run(&["migrate", "--check"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("migration(s) pending") && out.contains("m20261124_000001_core"),
        "{out}"
    );
    // Behind, and manual: a command that opens the database refuses.
    let (code, _, err) = run(&["directory", "list"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("run `lienthong migrate`"), "{err}");
    let (code, out, err) = run(&["migrate"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("applied "), "{out}");
    let (code, out, _) = run(&["migrate", "--check"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("up to date"), "{out}");
    let (code, _, err) = run(&["directory", "list"]);
    assert_eq!(code, Some(0), "{err}");

    // A newer release migrated it since.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let conn = lienthong_testkit::Db::connect(&db).await.expect("open the database");
        conn.execute(
            "INSERT INTO seaql_migrations (version, applied_at) VALUES ('m20991231_000099_future', 0)",
        )
        .await
        .expect("a newer release's migration");
        conn.close().await;
    });
    for args in [&["migrate"][..], &["directory", "list"]] {
        let (code, _, err) = run(args);
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(
            err.contains("migrated by a newer release") && err.contains("m20991231_000099_future"),
            "{args:?}: {err}"
        );
    }
}

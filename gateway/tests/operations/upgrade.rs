//! An upgrade from the previous release's schema, on SQLite and
//! PostgreSQL: a gateway fills its database with traffic (signed documents
//! with attachments, status notices, acknowledged and waiting deliveries, an
//! operator account, a maintenance window), the newest migration's own
//! `down` takes the database back to the schema before it, and then:
//!
//! - `lienthong verify` refuses the old schema with a sentence naming
//!   `lienthong migrate`;
//! - `lienthong migrate` checks before and after (both hold), and every row
//!   of every table is what it was in the columns both schemas share: the
//!   migration changed the schema, nothing else (only the migration's own
//!   row and the check's line in the transfer log are new, and the log's
//!   head moved by that line);
//! - `lienthong verify --full` and `lienthong log verify` hold afterwards;
//! - `serve` with `database.migrate = "auto"` on the old schema runs the same
//!   checks around its migration (its line in the log, both report files),
//!   and refuses to start, migrating nothing, when the old database fails
//!   the check before.

use std::collections::BTreeMap;
use std::time::Duration;

use lienthong_schema::{Migrator, MigratorTrait as _};
use lienthong_testkit::*;

/// Columns of the transfer log's head that move with every line written.
const MOVING: &[(&str, &str)] = &[("log_head", "seq"), ("log_head", "hash")];

/// Every table's columns (as named in the schema at the time) and rows,
/// each row rendered as text, sorted.
type Snapshot = BTreeMap<String, (Vec<String>, Vec<String>)>;

async fn tables(gw: &TestGateway) -> Vec<String> {
    let sql = match gw.backend {
        Backend::Sqlite => {
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
             ORDER BY name"
        }
        Backend::Postgres => {
            "SELECT table_name AS name FROM information_schema.tables WHERE table_schema = \
             current_schema() AND table_type = 'BASE TABLE' ORDER BY table_name"
        }
    };
    gw.sql_rows(sql)
        .await
        .iter()
        .map(|r| r.get::<String>("name"))
        .collect()
}

async fn columns(gw: &TestGateway, table: &str) -> Vec<String> {
    let sql = match gw.backend {
        Backend::Sqlite => format!("SELECT name FROM pragma_table_info('{table}') ORDER BY name"),
        Backend::Postgres => format!(
            "SELECT column_name AS name FROM information_schema.columns WHERE table_schema = \
             current_schema() AND table_name = '{table}' ORDER BY column_name"
        ),
    };
    gw.sql_rows(&sql)
        .await
        .iter()
        .map(|r| r.get::<String>("name"))
        .filter(|c| !MOVING.contains(&(table, c.as_str())))
        .collect()
}

/// The rows of `table` in `cols`, rendered and sorted. On PostgreSQL every
/// column is read as text, so no type is left unread.
async fn rows(gw: &TestGateway, table: &str, cols: &[String]) -> Vec<String> {
    let select: Vec<String> = cols
        .iter()
        .map(|c| match gw.backend {
            Backend::Sqlite => format!("\"{c}\""),
            Backend::Postgres => format!("\"{c}\"::text AS \"{c}\""),
        })
        .collect();
    let mut rendered: Vec<String> = gw
        .sql_rows(&format!("SELECT {} FROM \"{table}\"", select.join(", ")))
        .await
        .iter()
        .map(|r| {
            cols.iter()
                .map(|c| format!("{c}={:?}", r.value(c).unwrap_or(&SqlValue::Null)))
                .collect::<Vec<_>>()
                .join(" | ")
        })
        .collect();
    rendered.sort();
    rendered
}

async fn snapshot(gw: &TestGateway) -> Snapshot {
    let mut s = Snapshot::new();
    for t in tables(gw).await {
        let cols = columns(gw, &t).await;
        let r = rows(gw, &t, &cols).await;
        s.insert(t, (cols, r));
    }
    s
}

/// What `before` held, read again now in the same columns: every row
/// still there, unchanged, and no row added except in `may_grow`.
/// Returns the rows added per table.
async fn assert_rows_unchanged(
    gw: &TestGateway,
    before: &Snapshot,
    may_grow: &[&str],
) -> BTreeMap<String, Vec<String>> {
    let now = tables(gw).await;
    let mut added = BTreeMap::new();
    for (table, (cols, old)) in before {
        assert!(
            now.contains(table),
            "the migration dropped the table {table}"
        );
        let mut new = rows(gw, table, cols).await;
        for row in old {
            match new.iter().position(|r| r == row) {
                Some(i) => {
                    new.remove(i);
                }
                None => panic!(
                    "a row of {table} changed or went missing in the migration: {row}\n\
                     the table now holds:\n{}",
                    rows(gw, table, cols).await.join("\n")
                ),
            }
        }
        assert!(
            new.is_empty() || may_grow.contains(&table.as_str()),
            "the migration added rows to {table}: {new:#?}"
        );
        added.insert(table.clone(), new);
    }
    added
}

/// The newest migration's `down`: the schema of the release before.
async fn back_to_previous_schema(gw: &TestGateway) -> String {
    let newest = Migrator::migrations()
        .last()
        .map(|m| m.name().to_owned())
        .unwrap();
    let db = sea_orm_migration::sea_orm::Database::connect(&gw.db_url)
        .await
        .unwrap();
    Migrator::down(&db, Some(1))
        .await
        .unwrap_or_else(|e| panic!("the down of {newest} failed: {e}"));
    db.close().await.unwrap();
    let out = gw.run_cli(&["migrate", "--check"]).await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{}", describe_output(&out));
    assert!(
        text.contains("1 migration(s) pending") && text.contains(&newest),
        "{text}"
    );
    newest
}

fn reports(gw: &TestGateway, suffix: &str) -> Vec<serde_json::Value> {
    let dir = gw.dir.join("data/reports");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut paths: Vec<_> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with("verify-") && n.ends_with(suffix)
        })
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
        .collect()
}

async fn integrity_lines(gw: &TestGateway) -> Vec<(String, String)> {
    gw.sql_rows(
        "SELECT detail, actor FROM events WHERE kind = 'integrity_checked' ORDER BY chain, \
         chain_seq",
    )
    .await
    .iter()
    .map(|r| {
        (
            r.get::<String>("detail"),
            r.get::<Option<String>>("actor").unwrap_or_default(),
        )
    })
    .collect()
}

/// Documents, statuses, attachments, acknowledgements, an operator and a
/// maintenance window: something in most tables.
async fn traffic(gw: &TestGateway) {
    let (a, b) = (gw.agency(A), gw.agency(B));
    let mut documents = Vec::new();
    for (subject, to, files) in [
        (
            "Công văn về kế hoạch năm",
            vec![B, C],
            vec![
                AttachmentSpec::text("cv.txt", "Kế hoạch năm của Sở."),
                AttachmentSpec::generated("phu-luc.bin", 300_000, 7),
            ],
        ),
        (
            "Tờ trình",
            vec![B],
            vec![AttachmentSpec::text("to-trinh.txt", "Tờ trình số 2.")],
        ),
        ("Giấy mời họp", vec![B, C], vec![]),
    ] {
        let sent = a.send_document(&to, subject, &files).await.unwrap();
        documents.push(sent.document().document_id.clone());
    }
    // B takes its copies and acknowledges them; C's wait.
    let got = b.receive_all(10).await.unwrap();
    assert_eq!(got.len(), 3, "B's inbox: {got:?}");
    for d in &got {
        b.ack(&d.delivery_id).await.unwrap();
    }
    // B's notices: arrived and accepted for the first, refused for the
    // second.
    b.send_status(A, &documents[0], "01").await.unwrap();
    b.send_status(A, &documents[0], "03").await.unwrap();
    b.send_status(A, &documents[1], "02").await.unwrap();
    gw.add_operator("kiem-tra", "viewer", "mật khẩu kiểm tra đủ dài")
        .await;
    let at = |h: i64| {
        (time::OffsetDateTime::now_utc() + time::Duration::hours(h))
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let out = gw
        .run_cli(&[
            "admin",
            "maintenance",
            "--from",
            &at(24),
            "--to",
            &at(26),
            "--message",
            "Nâng cấp hệ thống",
        ])
        .await;
    assert!(out.status.success(), "{}", describe_output(&out));
}

async fn upgrade(gw: &mut TestGateway) {
    traffic(gw).await;
    gw.stop();
    let newest = back_to_previous_schema(gw).await;
    let before = snapshot(gw).await;
    for t in [
        "messages",
        "attachments",
        "deliveries",
        "events",
        "maintenance_windows",
    ] {
        assert!(
            !before.get(t).unwrap().1.is_empty(),
            "the traffic left no row in {t}"
        );
    }

    // `verify` checks this release's schema only, and says what to run.
    let out = gw.run_cli(&["verify"]).await;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{}", describe_output(&out));
    assert!(
        err.contains("is behind this release (1 migration(s) pending")
            && err.contains("run `lienthong migrate`"),
        "{err}"
    );

    // `migrate`: checked before and after, both hold.
    let out = gw.run_cli(&["migrate"]).await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{}", describe_output(&out));
    let (pre, post) = text
        .split_once("after migrating:")
        .unwrap_or_else(|| panic!("no check after migrating: {text}"));
    assert!(
        pre.contains("before migrating:\n  the database holds (fast check")
            && pre.contains("applied 1 migration(s)")
            && pre.contains(&newest),
        "{text}"
    );
    assert!(
        post.starts_with("\n  the database holds (fast check"),
        "{text}"
    );
    assert_eq!(reports(gw, "-before-migrate.json").len(), 1);
    let after_reports = reports(gw, "-after-migrate.json");
    assert_eq!(after_reports.len(), 1);
    assert_eq!(after_reports[0]["holds"], true, "{}", after_reports[0]);

    // Nothing changed but the schema.
    let added = assert_rows_unchanged(gw, &before, &["events", "seaql_migrations"]).await;
    assert_eq!(added["seaql_migrations"].len(), 1, "{added:?}");
    assert!(added["seaql_migrations"][0].contains(&newest), "{added:?}");
    assert_eq!(added["events"].len(), 1, "{added:?}");
    assert!(
        added["events"][0].contains("kind=Text(\"integrity_checked\")"),
        "{added:?}"
    );
    let lines = integrity_lines(gw).await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0]
            .0
            .starts_with("after migrating: fast check, everything holds"),
        "{lines:?}"
    );

    let out = gw.run_cli(&["verify", "--full"]).await;
    assert!(out.status.success(), "{}", describe_output(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("the database holds (full check"),
        "{}",
        describe_output(&out)
    );
    let out = gw.run_cli(&["log", "verify"]).await;
    assert!(out.status.success(), "{}", describe_output(&out));

    // `serve` with database.migrate = "auto" on the old schema: the same
    // checks around its migration, then it serves.
    back_to_previous_schema(gw).await;
    gw.restart().await;
    let lines = integrity_lines(gw).await;
    assert!(
        lines
            .iter()
            .any(|(detail, actor)| actor.starts_with("serve:")
                && detail.starts_with("after migrating: fast check, everything holds")),
        "{lines:?}"
    );
    assert_eq!(reports(gw, "-before-migrate.json").len(), 2);
    assert_eq!(reports(gw, "-after-migrate.json").len(), 2);
    let out = gw.run_cli(&["migrate", "--check"]).await;
    assert!(out.status.success(), "{}", describe_output(&out));
    // Started again with nothing pending: nothing checked.
    gw.restart().await;
    assert_eq!(reports(gw, "-after-migrate.json").len(), 2);
    gw.stop();

    // An old database that fails its check: `serve` neither migrates it
    // nor starts, and says what to do.
    back_to_previous_schema(gw).await;
    gw.sql_exec("DELETE FROM attachments WHERE name = 'to-trinh.txt'")
        .await;
    let out = gw.run_cli(&["serve"]).await;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{}", describe_output(&out));
    assert!(
        err.contains("refusing to start: 1 migration(s) are pending")
            && err.contains("fails its integrity check before migrating (1 problem(s)")
            && err.contains("`lienthong migrate --force`"),
        "{err}"
    );
    assert!(
        err.contains("PROBLEM (attachments): message ") && err.contains("1 missing"),
        "the problem is in the gateway's log: {err}"
    );
    assert_eq!(reports(gw, "-before-migrate.json").len(), 3);
    assert_eq!(reports(gw, "-after-migrate.json").len(), 2, "not migrated");
    let out = gw.run_cli(&["migrate", "--check"]).await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "still pending: {}",
        describe_output(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_on_sqlite_changes_the_schema_and_nothing_else() {
    let Some(mut gw) = TestGateway::start("upgrade", Backend::Sqlite).await else {
        return;
    };
    within(
        Duration::from_secs(300),
        "the upgrade on SQLite",
        upgrade(&mut gw),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_on_postgresql_changes_the_schema_and_nothing_else() {
    let Some(mut gw) = TestGateway::start("upgrade_pg", Backend::Postgres).await else {
        return;
    };
    within(
        Duration::from_secs(300),
        "the upgrade on PostgreSQL",
        upgrade(&mut gw),
    )
    .await;
}

//! Benchmark of the reports: a year of a province's traffic —
//! about 5 million transfer-log events for 500 agencies — is generated
//! inside PostgreSQL with `generate_series`, then reports and the dashboard
//! queries are timed.
//!
//! ```sh
//! cargo run --release -p lienthong-store --example report_bench
//! cargo run --release -p lienthong-store --example report_bench -- --events 1000000
//! cargo run --release -p lienthong-store --example report_bench -- --reuse   # keep the loaded data
//! ```
//!
//! `LIENTHONG_TEST_PG_URL` names the server (default
//! postgres://postgres@127.0.0.1:5432/test); the benchmark makes its own
//! database `lienthong_report_bench` and leaves it for `--reuse`.

use std::time::{Duration, Instant};

use lienthong_core::pipeline::{Gateway, Settings};
use lienthong_core::rows::AgencyRow;
use lienthong_core::store::{Store, WriterId, now_micros};
use lienthong_reports::{self as reports, Period, ReportSettings, Scope};
use sea_orm::{ConnectionTrait, Database};

const DB: &str = "lienthong_report_bench";

fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("report_bench: {what}: {e}");
    std::process::exit(1)
}

async fn timed<T, F: std::future::Future<Output = T>>(label: &str, f: F) -> T {
    let t = Instant::now();
    let out = f.await;
    println!("{label:<60} {:>9.3} s", t.elapsed().as_secs_f64());
    out
}

fn directory() -> Vec<AgencyRow> {
    let mut out = Vec::with_capacity(500);
    let mut push = |id: String, name: String| {
        out.push(AgencyRow {
            organ_id: id,
            name,
            parent: None,
            email: String::new(),
            telephone: String::new(),
            address: String::new(),
            website: String::new(),
            channel: "grpc".to_owned(),
            active: true,
            extra: "{}".to_owned(),
            updated_at: now_micros(),
            source: None,
        })
    };
    for d in 1..=50 {
        push(
            format!("000.00.{d:02}.H35"),
            format!("Cơ quan cấp 2 số {d}"),
        );
    }
    for c in 1..=9 {
        for d in 1..=50 {
            push(
                format!("000.{c:02}.{d:02}.H35"),
                format!("Đơn vị {c} thuộc cơ quan {d}"),
            );
        }
    }
    out
}

/// Loads `docs` documents spread over 2026-01-01 .. 2026-11-24 (Vietnam
/// time), one recipient each; 90 % answered 03, half of those 06 too; 3 %
/// never acknowledged; 2 % of submissions refused. About 11.5 events per
/// document.
async fn load(store: &Store, docs: i64) {
    let t0 = reports::Period::parse("2026-01-01..2026-11-24")
        .map(|p| p.bounds())
        .unwrap_or_else(|e| fail("period", e.message()));
    let span = t0.1 - t0.0;
    let steps = [
        ("agency numbers", "CREATE TABLE IF NOT EXISTS bench_ag AS SELECT (ROW_NUMBER() OVER (ORDER BY organ_id) - 1)::int AS k, organ_id FROM agencies".to_owned()),
        ("documents", format!(
            "INSERT INTO messages (id, sender, message_id, kind, document_id, ref_from, status_code, envelope_sha256, signed_envelope, verification, accepted_at, attachment_count, due_date, code, subject) \
             SELECT g, a.organ_id, 'd' || g, 'document', 'doc-' || g, NULL, NULL, '', ''::bytea, ''::bytea, {start} + (g * ({span} / {docs})), 0, \
             CASE WHEN g % 3 = 0 THEN to_char(to_timestamp(({start} + (g * ({span} / {docs}))) / 1000000.0) + interval '10 days', 'YYYY-MM-DD') ELSE '' END, \
             g || '/CV-UBND', 'Công văn số ' || g \
             FROM generate_series(1::bigint, {docs}) g JOIN bench_ag a ON a.k = (g * 7919) % 500",
            start = t0.0
        )),
        ("document deliveries", 
            "INSERT INTO deliveries (id, delivery_id, message_pk, recipient, route, state, attempts, created_at, last_delivered_at, acked_at) \
             SELECT m.id, 'dd' || m.id, m.id, r.organ_id, 'local', CASE WHEN m.id % 33 = 0 THEN 'pending' ELSE 'acked' END, 1, m.accepted_at, \
             m.accepted_at + ((m.id * 37) % 600 + 1) * 1000000, \
             CASE WHEN m.id % 33 = 0 THEN NULL ELSE m.accepted_at + ((m.id * 37) % 600 + 5) * 1000000 END \
             FROM messages m JOIN bench_ag r ON r.k = ((m.id * 7919) % 500 + 1 + (m.id % 499)) % 500 \
             WHERE m.kind = 'document'"
            .to_owned()),
        ("status 03", format!(
            "INSERT INTO messages (id, sender, message_id, kind, document_id, ref_from, status_code, envelope_sha256, signed_envelope, verification, accepted_at, attachment_count) \
             SELECT {docs} + d.id, d.recipient, 's3-' || d.id, 'status', m.document_id, m.sender, '03', '', ''::bytea, ''::bytea, d.last_delivered_at + ((d.id * 53) % 14400 + 60) * 1000000, 0 \
             FROM deliveries d JOIN messages m ON m.id = d.message_pk WHERE m.kind = 'document' AND d.state = 'acked' AND d.id % 10 <> 0"
        )),
        ("status 06", format!(
            "INSERT INTO messages (id, sender, message_id, kind, document_id, ref_from, status_code, envelope_sha256, signed_envelope, verification, accepted_at, attachment_count) \
             SELECT {docs} * 2 + s.id, s.sender, 's6-' || s.id, 'status', s.document_id, s.ref_from, '06', '', ''::bytea, ''::bytea, s.accepted_at + 86400000000 * ((s.id % 9) + 1), 0 \
             FROM messages s WHERE s.kind = 'status' AND s.status_code = '03' AND s.id % 2 = 0"
        )),
        ("status deliveries", format!(
            "INSERT INTO deliveries (id, delivery_id, message_pk, recipient, route, state, attempts, created_at, last_delivered_at, acked_at) \
             SELECT {docs} * 4 + s.id, 'sd' || s.id, s.id, s.ref_from, 'local', 'acked', 1, s.accepted_at, s.accepted_at + 2000000, s.accepted_at + 3000000 \
             FROM messages s WHERE s.kind = 'status'"
        )),
        ("events: accepted", "INSERT INTO events (at, kind, sender, message_id, recipient, reason, detail, actor, transport) \
             SELECT accepted_at, 'accepted', sender, message_id, NULL, NULL, 'accepted for 1 recipient(s)', sender, 'grpc' FROM messages".to_owned()),
        ("events: status_received", "INSERT INTO events (at, kind, sender, message_id, recipient, reason, detail, actor, transport) \
             SELECT accepted_at, 'status_received', sender, message_id, NULL, status_code, 'status', sender, 'grpc' FROM messages WHERE kind = 'status'".to_owned()),
        ("events: routed", "INSERT INTO events (at, kind, sender, message_id, recipient, reason, detail, actor, transport) \
             SELECT d.created_at, 'routed', m.sender, m.message_id, d.recipient, NULL, 'route local', m.sender, 'grpc' FROM deliveries d JOIN messages m ON m.id = d.message_pk".to_owned()),
        ("events: delivered", "INSERT INTO events (at, kind, sender, message_id, recipient, reason, detail, actor, transport) \
             SELECT d.last_delivered_at, 'delivered', m.sender, m.message_id, d.recipient, NULL, 'attempt 1 via local', d.recipient, 'grpc' FROM deliveries d JOIN messages m ON m.id = d.message_pk WHERE d.last_delivered_at IS NOT NULL".to_owned()),
        ("events: acknowledged", "INSERT INTO events (at, kind, sender, message_id, recipient, reason, detail, actor, transport) \
             SELECT d.acked_at, 'acknowledged', m.sender, m.message_id, d.recipient, NULL, 'acknowledged', d.recipient, 'grpc' FROM deliveries d JOIN messages m ON m.id = d.message_pk WHERE d.acked_at IS NOT NULL".to_owned()),
        ("events: rejected", format!(
            "INSERT INTO events (at, kind, sender, message_id, recipient, reason, detail, actor, transport) \
             SELECT {start} + (g * ({span} / ({docs} / 50))), 'rejected', a.organ_id, 'r' || g, NULL, \
             (ARRAY['UNKNOWN_RECIPIENT','CERTIFICATE_NOT_BOUND','MALFORMED','CERTIFICATE_EXPIRED','DIGEST_MISMATCH'])[g % 5 + 1], 'refused', a.organ_id, 'grpc' \
             FROM generate_series(1::bigint, {docs} / 50) g JOIN bench_ag a ON a.k = (g * 104729) % 500",
            start = t0.0
        )),
        ("analyze", "ANALYZE".to_owned()),
    ];
    for (label, sql) in steps {
        timed(&format!("load: {label}"), async {
            if let Err(e) = store.execute_sql(&sql).await {
                fail(label, e.chain());
            }
        })
        .await;
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let reuse = args.iter().any(|a| a == "--reuse");
    let events: i64 = args
        .iter()
        .position(|a| a == "--events")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000_000);
    let admin = std::env::var("LIENTHONG_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let base = admin
        .rsplit_once('/')
        .map(|(b, _)| b.to_owned())
        .unwrap_or(admin.clone());
    let url = format!("{base}/{DB}");
    let admin_db = Database::connect(&admin)
        .await
        .unwrap_or_else(|e| fail(&format!("cannot connect to {admin}"), e));
    if !reuse {
        for sql in [
            format!("DROP DATABASE IF EXISTS {DB} WITH (FORCE)"),
            format!("CREATE DATABASE {DB}"),
        ] {
            admin_db
                .execute_unprepared(&sql)
                .await
                .unwrap_or_else(|e| fail(&sql, e));
        }
    }
    let store = Store::connect(&url, WriterId::main())
        .await
        .unwrap_or_else(|e| fail("connect", e.chain()));
    if !reuse {
        store
            .change_directory(lienthong_core::store::DirectoryChange {
                agencies: directory(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| fail("directory", e.chain()));
        let docs = (events as f64 / 11.5) as i64;
        println!("loading about {events} events ({docs} documents) into {DB}");
        timed("load: total", load(&store, docs.max(100))).await;
    }
    let counts_db = Database::connect(&url)
        .await
        .unwrap_or_else(|e| fail(&format!("cannot connect to {url}"), e));
    for (label, sql) in [
        ("events", "SELECT COUNT(*) AS n FROM events"),
        ("messages", "SELECT COUNT(*) AS n FROM messages"),
        ("deliveries", "SELECT COUNT(*) AS n FROM deliveries"),
    ] {
        let n = counts_db
            .query_one_raw(sea_orm::Statement::from_string(
                sea_orm::DbBackend::Postgres,
                sql.to_owned(),
            ))
            .await
            .ok()
            .flatten()
            .and_then(|r| r.try_get::<i64>("", "n").ok())
            .unwrap_or(-1);
        println!("{label:<12} {n:>12}");
    }

    let settings = ReportSettings::default();
    let as_of = now_micros();
    let cases: [(&str, &str); 6] = [
        ("2026", "#.H35"),
        ("2026", "000.00.07.H35"),
        ("2026-Q4", "#.H35"),
        ("2026-11", "#.H35"),
        ("2026-11", "=000.03.07.H35"),
        ("2026-11-24", "#.H35"),
    ];
    for (period, scope) in cases {
        let p = Period::parse(period).unwrap_or_else(|e| fail(period, e.message()));
        let s = Scope::parse(scope).unwrap_or_else(|e| fail(scope, e.message()));
        let mut best = Duration::MAX;
        let mut rows = 0;
        let mut sent = 0;
        for _ in 0..3 {
            let t = Instant::now();
            let r = reports::summary_in(&store, p, &s, &settings, as_of)
                .await
                .unwrap_or_else(|e| fail("report", e.chain()));
            best = best.min(t.elapsed());
            rows = r.agencies.len();
            sent = r.total.sent;
        }
        println!(
            "report {period:<10} {scope:<16} {rows:>4} agencies {sent:>8} sent   best of 3: {:>7.3} s",
            best.as_secs_f64()
        );
    }

    let dir = std::env::temp_dir().join("lienthong-report-bench-blobs");
    let gw = Gateway::open(Settings {
        database_url: url.clone(),
        storage_path: dir,
        ..Settings::default()
    })
    .await
    .unwrap_or_else(|e| fail("gateway", e.chain()));
    timed("dashboard: overview", async {
        reports::overview(&gw, &settings)
            .await
            .unwrap_or_else(|e| fail("overview", e.chain()))
    })
    .await;
    timed("metrics: render (inbox depths)", gw.metrics_text()).await;
    timed("dashboard: search by số/ký hiệu", async {
        reports::search(&gw, "4242/CV-UBND")
            .await
            .unwrap_or_else(|e| fail("search", e.chain()))
    })
    .await;
    timed("report: CSV + XLSX of the year", async {
        let p = Period::parse("2026").unwrap_or_else(|e| fail("period", e.message()));
        let r = reports::summary_in(&store, p, &Scope::All, &settings, as_of)
            .await
            .unwrap_or_else(|e| fail("report", e.chain()));
        let _ = reports::to_csv(&r, reports::Lang::Vi);
        let _ = reports::to_xlsx(&r, reports::Lang::Vi);
    })
    .await;
}

//! The report queries on SQLite, over traffic sent through the real
//! pipeline: each figure a clerk would read, checked against what was sent.

use lienthong_core as lt;
#[path = "../../core/tests/support/world.rs"]
mod world;

use std::collections::HashMap;

use lienthong_proto::v1::{Envelope, envelope::Body};
use prost::Message as _;
use time::Duration;

use super::*;
use lt::error::Result;
use world::{Doc, World};

const A: usize = 0; // 000.00.01.H35 Văn phòng UBND tỉnh
const B: usize = 1; // 000.00.12.H35 Sở KH&CN
const C: usize = 2; // 000.21.31.H35 a commune under D
// 3: 000.00.31.H35 a district; 4: 000.00.01.H53 another province.

fn agencies() -> Vec<(String, String)> {
    [
        ("000.00.01.H35", "Văn phòng UBND tỉnh Lai Châu"),
        ("000.00.12.H35", "Sở Khoa học và Công nghệ"),
        ("000.21.31.H35", "UBND xã Bản Lang"),
        ("000.00.31.H35", "UBND huyện Phong Thổ"),
        ("000.00.01.H53", "Văn phòng UBND tỉnh Tây Ninh"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_owned(), b.to_owned()))
    .collect()
}

fn day(offset_days: i64) -> String {
    let d = local_date(now_micros()) + Duration::days(offset_days);
    lienthong_types::calendar::iso_date(d)
}

/// Yesterday to tomorrow: today's traffic, whatever the hour.
fn around_today() -> Period {
    let today = local_date(now_micros());
    Period::Range(today - Duration::days(1), today + Duration::days(1))
}

struct Small {
    world: World,
    _dir: tempfile::TempDir,
}

/// A → B doc1 (due tomorrow), A → B,C doc2 (15/QĐ-UBND, due in 30 days),
/// A → B doc3 (due yesterday). B acknowledges everything and answers 03
/// to doc1 and doc2 and 06 to doc2; C takes doc2 without acknowledging;
/// A acknowledges the statuses. A is refused once (unknown recipient), B
/// once (someone else's key).
async fn small() -> Result<Small> {
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}/r.db", dir.path().display());
    let world = World::open(&url, &dir.path().join("blobs"), &agencies()).await?;
    let doc = |n: &str, due: String| Doc {
        code_number: n.to_owned(),
        code_notation: "QĐ-UBND".to_owned(),
        subject: format!("Quyết định số {n} về chuyển đổi số"),
        due_date: due,
    };
    let (_, d1) = world.send_document(A, &[B], &doc("14", day(1))).await?;
    let (_, d2) = world.send_document(A, &[B, C], &doc("15", day(30))).await?;
    world.send_document(A, &[B], &doc("16", day(-1))).await?;
    assert_eq!(world.drain(B, true).await?.len(), 3);
    assert_eq!(world.drain(C, false).await?.len(), 1);
    world.send_status(B, A, &d1, "03").await?;
    world.send_status(B, A, &d2, "03").await?;
    world.send_status(B, A, &d2, "06").await?;
    assert_eq!(world.drain(A, true).await?.len(), 3);
    assert_eq!(world.refused(A, 0).await, Reason::UnknownRecipient);
    assert_eq!(world.refused(B, 1).await, Reason::CertificateNotBound);
    Ok(Small { world, _dir: dir })
}

fn row<'a>(r: &'a Report, id: &str) -> &'a AgencyRow {
    match r.agencies.iter().find(|a| a.organ_id == id) {
        Some(a) => a,
        None => panic!("no row for {id} in {:?}", r.agencies),
    }
}

#[tokio::test]
async fn a_report_counts_what_each_agency_sent_received_and_answered() -> Result<()> {
    let s = small().await?;
    let store = &s.world.store;
    let settings = ReportSettings::default();
    // Ten days on, eight working hours have passed for every delivery.
    let as_of = now_micros() + 10 * 86_400_000_000;
    let r = summary_in(store, around_today(), &Scope::All, &settings, as_of).await?;
    assert_eq!(r.agencies.len(), 5);

    let a = row(&r, "000.00.01.H35");
    assert_eq!((a.sent, a.received, a.refused), (3, 0, 1));
    assert_eq!(a.refused_by_reason.get("UNKNOWN_RECIPIENT"), Some(&1));
    assert_eq!(a.statuses_received.get("03"), Some(&2));
    assert_eq!(a.statuses_received.get("06"), Some(&1));
    assert_eq!(a.signatures_verified_share, Some(1.0));

    let b = row(&r, "000.00.12.H35");
    assert_eq!(
        (b.sent, b.received, b.delivered, b.acknowledged),
        (0, 3, 3, 3)
    );
    // doc3 never got a 03; doc1 (due on day +1) and doc3 (due yesterday)
    // have no 06 ten days on.
    assert_eq!((b.without_03, b.overdue), (1, 2));
    assert_eq!(b.refused_by_reason.get("CERTIFICATE_NOT_BOUND"), Some(&1));
    assert_eq!(b.signatures_verified_share, Some(0.0));
    assert_eq!(b.accept_to_delivery.count, 3);
    assert_eq!(b.delivery_to_03.count, 2);
    assert!(
        b.accept_to_delivery
            .median_seconds
            .is_some_and(|s| s >= 0.0)
    );
    assert!(b.delivery_to_03.p95_seconds.is_some());

    let c = row(&r, "000.21.31.H35");
    assert_eq!(
        (
            c.received,
            c.delivered,
            c.acknowledged,
            c.without_03,
            c.overdue
        ),
        (1, 1, 0, 1, 0)
    );
    assert_eq!(
        c.delivery_to_03,
        Latency {
            count: 0,
            median_seconds: None,
            p95_seconds: None
        }
    );

    assert_eq!(r.total.sent, 3);
    assert_eq!(r.total.received, 4);
    assert_eq!(r.total.refused, 2);
    assert_eq!(r.total.accept_to_delivery.count, 4);
    assert_eq!(r.total.delivery_to_03.count, 2);

    // Judged now, nothing has waited eight working hours and only doc3 is
    // past its DueDate.
    let now = summary_in(store, around_today(), &Scope::All, &settings, now_micros()).await?;
    assert_eq!(now.total.without_03, 0);
    assert_eq!(now.total.overdue, 1);
    Ok(())
}

#[tokio::test]
async fn scopes_pick_parts_of_the_directory() -> Result<()> {
    let s = small().await?;
    let store = &s.world.store;
    let st = ReportSettings::default();
    let ids =
        |r: &Report| -> Vec<String> { r.agencies.iter().map(|a| a.organ_id.clone()).collect() };

    let district = summary_in(
        store,
        around_today(),
        &Scope::parse("000.00.31.H35")?,
        &st,
        now_micros(),
    )
    .await?;
    assert_eq!(ids(&district), ["000.00.31.H35", "000.21.31.H35"]);
    assert_eq!(district.total.received, 1);
    assert_eq!(district.total.accept_to_delivery.count, 1);

    let province = summary_in(
        store,
        around_today(),
        &Scope::parse("#.H35")?,
        &st,
        now_micros(),
    )
    .await?;
    assert_eq!(province.agencies.len(), 4);
    assert_eq!(province.total.sent, 3);
    let other = summary_in(
        store,
        around_today(),
        &Scope::parse("#.H53")?,
        &st,
        now_micros(),
    )
    .await?;
    assert_eq!(ids(&other), ["000.00.01.H53"]);
    assert_eq!(other.total, AgencyRow::default());

    let one = summary_in(
        store,
        around_today(),
        &Scope::agency("000.00.12.H35")?,
        &st,
        now_micros(),
    )
    .await?;
    assert_eq!(ids(&one), ["000.00.12.H35"]);
    assert_eq!(one.total.received, 3);

    for bad in ["000.00.77.H35", "=000.00.77.H35", "#.H99"] {
        match summary_in(
            store,
            around_today(),
            &Scope::parse(bad)?,
            &st,
            now_micros(),
        )
        .await
        {
            Err(e) => {
                assert_eq!(e.reason(), Reason::NotFound, "{bad}");
                assert!(e.message().contains("directory"), "{}", e.message());
            }
            Ok(r) => panic!("{bad} gave a report of {} rows", r.agencies.len()),
        }
    }
    assert_eq!(
        Scope::parse("000.1137.H53").err().map(|e| e.reason()),
        Some(Reason::BadIdentifier)
    );
    Ok(())
}

#[tokio::test]
async fn an_empty_period_gives_zeros_and_files_in_both_languages() -> Result<()> {
    let s = small().await?;
    let store = &s.world.store;
    let r = summary_in(
        store,
        Period::parse("2020-01")?,
        &Scope::All,
        &ReportSettings::default(),
        now_micros(),
    )
    .await?;
    assert_eq!(r.agencies.len(), 5);
    assert!(
        r.agencies
            .iter()
            .all(|a| a.sent == 0 && a.received == 0 && a.refused == 0)
    );
    assert_eq!(r.total.accept_to_delivery.median_seconds, None);
    assert_eq!(
        (r.from.as_str(), r.to.as_str()),
        ("2020-01-01", "2020-01-31")
    );

    let r = summary_in(
        store,
        around_today(),
        &Scope::All,
        &ReportSettings::default(),
        now_micros(),
    )
    .await?;
    let csv = to_csv(&r, Lang::Vi)?;
    let text = String::from_utf8(csv).map_err(|e| Error::malformed(e.to_string()))?;
    assert!(text.starts_with('\u{feff}'), "no byte-order mark");
    let header = text.lines().next().unwrap_or_default();
    for h in [
        "Mã định danh",
        "Tên cơ quan",
        "Văn bản đã gửi",
        "Văn bản nhận được",
        "Từ chối: UNKNOWN_RECIPIENT",
        "Trạng thái nhận được 03 (Đã tiếp nhận)",
        "Chưa tiếp nhận (03) sau 8 giờ làm việc",
        "Tỷ lệ văn bản có chữ ký số hợp lệ (%)",
    ] {
        assert!(header.contains(h), "{h:?} missing from {header}");
    }
    assert!(
        text.contains("000.00.12.H35,Sở Khoa học và Công nghệ,0,3,3,3,1,"),
        "{text}"
    );
    assert!(
        text.lines()
            .last()
            .unwrap_or_default()
            .contains("Tổng cộng,3,4,"),
        "{text}"
    );
    let en =
        String::from_utf8(to_csv(&r, Lang::En)?).map_err(|e| Error::malformed(e.to_string()))?;
    assert!(
        en.contains("Agency code,Agency,Documents sent,Documents received"),
        "{en}"
    );
    let x = to_xlsx(&r, Lang::Vi)?;
    assert!(x.starts_with(b"PK"), "not a zip container");
    assert!(x.len() > 4000);
    let j: serde_json::Value =
        serde_json::from_slice(&to_json(&r)?).map_err(|e| Error::malformed(e.to_string()))?;
    assert_eq!(j["total"]["sent"], 3);
    assert!(report_file_name(&r, Format::Xlsx).ends_with(".xlsx"));
    Ok(())
}

#[tokio::test]
async fn the_dashboard_finds_documents_refusals_and_overdue_ones() -> Result<()> {
    let s = small().await?;
    let gw = &s.world.gw;
    let o = overview(gw, &ReportSettings::default()).await?;
    assert_eq!(o.today_traffic.documents, 3);
    assert_eq!(o.today_traffic.statuses, 3);
    assert_eq!(o.today_traffic.deliveries, 7);
    assert_eq!(o.today_traffic.acknowledged, 6);
    assert_eq!(o.today_traffic.refused, 2);
    assert!(o.month_traffic.documents >= 3);
    assert_eq!(o.inboxes.len(), 1);
    assert_eq!(o.inboxes[0].organ_id, "000.21.31.H35");
    assert_eq!(o.inboxes[0].name, "UBND xã Bản Lang");
    assert_eq!(o.inboxes[0].depth, 1);
    assert_eq!(o.refusals.len(), 2);
    assert_eq!(o.refusals[0].reason, "CERTIFICATE_NOT_BOUND");
    assert_eq!(
        o.refusals[0].reason_text,
        "Chứng thư số chưa được gắn với cơ quan gửi trong danh bạ"
    );
    assert_eq!(o.refusals[1].sender_name, "Văn phòng UBND tỉnh Lai Châu");
    assert_eq!(o.overdue_total, 1);
    assert_eq!(o.overdue[0].code, "16/QĐ-UBND");
    assert_eq!(o.overdue[0].days_overdue, 1);
    assert_eq!(o.overdue[0].recipient_name, "Sở Khoa học và Công nghệ");
    assert!(o.health.database);

    let hits = search(gw, "15/QĐ-UBND").await?;
    assert_eq!(hits.len(), 1);
    let kinds: Vec<&str> = hits[0].trace.iter().map(|t| t.kind.as_str()).collect();
    for k in [
        "accepted",
        "routed",
        "delivered",
        "acknowledged",
        "status_received",
    ] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    assert_eq!(hits[0].subject, "Quyết định số 15 về chuyển đổi số");
    let by_id = search(gw, &hits[0].message_id).await?;
    assert_eq!(by_id[0].message_id, hits[0].message_id);
    // A part of the number finds the newest first.
    assert_eq!(search(gw, "QĐ-UBND").await?.len(), 3);

    let refused = &o.refusals[1].message_id;
    let hit = search(gw, refused).await?;
    assert_eq!(hit[0].kind, "refused");
    assert_eq!(hit[0].trace[0].reason, "UNKNOWN_RECIPIENT");
    assert_eq!(
        hit[0].trace[0].reason_text,
        "Cơ quan nhận không có trong danh bạ của trục liên thông"
    );

    for q in ["không-có-gì-cả", "  "] {
        let e = search(gw, q).await.err();
        assert!(
            matches!(
                e.as_ref().map(|e| e.reason()),
                Some(Reason::NotFound | Reason::Malformed)
            ),
            "{q:?}: {e:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn metrics_show_inbox_depths_and_database_health() -> Result<()> {
    let s = small().await?;
    let text = s.world.gw.metrics_text().await;
    // The gateway's own registry: exactly the two refusals of `small`,
    // whatever other gateways of this process counted.
    for line in [
        "lienthong_inbox_depth{agency=\"000.21.31.H35\"} 1",
        "lienthong_database_up 1",
        "lienthong_build_info{version=\"",
        "# TYPE lienthong_accept_seconds histogram",
        "lienthong_messages_refused_total{reason=\"UNKNOWN_RECIPIENT\"} 1\n",
        "lienthong_messages_refused_total{reason=\"CERTIFICATE_NOT_BOUND\"} 1\n",
        "lienthong_inbox_oldest_unacknowledged_seconds{agency=\"000.21.31.H35\"}",
    ] {
        assert!(text.contains(line), "{line:?} missing from\n{text}");
    }
    assert!(
        !text.contains("000.00.12.H35"),
        "B's inbox is empty:\n{text}"
    );
    Ok(())
}

#[tokio::test]
async fn the_monthly_report_is_written_once() -> Result<()> {
    let s = small().await?;
    let out = tempfile::tempdir()?;
    let cfg = MonthlyReports {
        dir: out.path().join("reports"),
        scope: Scope::All,
        settings: ReportSettings::default(),
        lang: Lang::Vi,
        send: None,
    };
    let files = write_monthly_report(&s.world.store, &cfg, Period::parse("2026-10")?).await?;
    let names: Vec<String> = files
        .iter()
        .filter_map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    assert_eq!(
        names,
        [
            "bao-cao-lienthong-2026-10.csv",
            "bao-cao-lienthong-2026-10.xlsx"
        ]
    );
    // The task writes last month's report at start, then waits.
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run_monthly_reports(
        s.world.gw.clone(),
        cfg.clone(),
        async {
            let _ = rx.await;
        },
    ));
    let last = Period::previous_month(now_micros()).to_string();
    let want = cfg.dir.join(format!("bao-cao-lienthong-{last}.xlsx"));
    for _ in 0..100 {
        if want.exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(want.exists(), "{} was not written", want.display());
    let _ = tx.send(());
    let _ = task.await;
    Ok(())
}

/// Everything attachment `index` of `from`'s message holds, as `who` fetches it.
async fn fetch(
    gw: &Gateway,
    who: &str,
    from: &str,
    message_id: &str,
    index: u32,
) -> Result<Vec<u8>> {
    let caller = lt::pipeline::Caller::new(who, lt::pipeline::Transport::Grpc);
    let mut r = gw
        .fetch_attachment(&caller, from, message_id, index)
        .await?;
    let mut out = Vec::new();
    while let Some(c) = r.next_chunk(64 * 1024).await? {
        out.extend_from_slice(&c);
    }
    Ok(out)
}

/// The CSV report's figures by agency code and Vietnamese column header.
fn csv_figures(bytes: &[u8]) -> HashMap<(String, String), String> {
    let text = std::str::from_utf8(bytes).unwrap_or_default();
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut r = csv::Reader::from_reader(text.as_bytes());
    let headers: Vec<String> = r
        .headers()
        .map(|h| h.iter().map(str::to_owned).collect())
        .unwrap_or_default();
    let mut out = HashMap::new();
    for rec in r.records().flatten() {
        let code = rec.get(0).unwrap_or_default().to_owned();
        for (h, v) in headers.iter().zip(rec.iter()) {
            out.insert((code.clone(), h.clone()), v.to_owned());
        }
    }
    out
}

#[tokio::test]
async fn the_monthly_report_is_sent_once_to_send_to() -> Result<()> {
    let s = small().await?;
    let w = &s.world;
    let out = tempfile::tempdir()?;
    // The gateway's agency is A (Văn phòng UBND tỉnh), signing with its key;
    // the report goes to B and to the district (named twice: sent once).
    let (key, chain) = w.signing(A)?;
    let to = [w.id(B).to_owned(), w.id(3).to_owned(), w.id(B).to_owned()];
    let sending = ReportSending::new(w.id(A), &to, key, chain)?;
    sending.check(&w.gw, w.anchors()).await?;
    let cfg = MonthlyReports {
        dir: out.path().join("reports"),
        scope: Scope::All,
        settings: ReportSettings::default(),
        lang: Lang::Vi,
        send: Some(sending),
    };
    let period = Period::month_of(now_micros());

    let (written, sent) = run_monthly_job(&w.gw, &cfg, period).await?;
    assert_eq!(written.len(), 2);
    let receipt = match sent {
        Some(Sending::Sent(r)) => r,
        other => panic!("the report was not sent: {other:?}"),
    };
    assert_eq!(receipt.from, w.id(A));
    let on_disk: Vec<Vec<u8>> = written
        .iter()
        .map(std::fs::read)
        .collect::<std::io::Result<_>>()?;

    // Run again, and again after a restart that lost reports.dir: the
    // files are written again, the document is not sent again.
    let (written, sent) = run_monthly_job(&w.gw, &cfg, period).await?;
    assert!(written.is_empty());
    let already = Some(Sending::AlreadySent {
        message_id: receipt.message_id.clone(),
    });
    assert_eq!(sent, already);
    std::fs::remove_dir_all(&cfg.dir)?;
    let restarted = cfg.clone();
    let (written, sent) = run_monthly_job(&w.gw, &restarted, period).await?;
    assert_eq!(written.len(), 2);
    assert_eq!(sent, already);

    // Each recipient's inbox has the one document with both files.
    for who in [B, 3] {
        let got = w.drain(who, true).await?;
        assert_eq!(got.len(), 1, "{}'s inbox", w.id(who));
        let env = got[0]
            .envelope
            .as_ref()
            .and_then(|e| Envelope::decode(e.payload.clone()).ok())
            .unwrap_or_default();
        assert_eq!(
            (env.from.as_str(), env.message_id.as_str()),
            (w.id(A), receipt.message_id.as_str())
        );
        let Some(Body::Document(doc)) = env.body else {
            panic!("not a document: {env:?}");
        };
        assert!(doc.subject.contains("Báo cáo"), "{}", doc.subject);
        let names: Vec<&str> = doc.attachments.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(
            names,
            [
                format!("bao-cao-lienthong-{period}.csv"),
                format!("bao-cao-lienthong-{period}.xlsx")
            ]
        );
        for (i, want) in on_disk.iter().enumerate() {
            let bytes = fetch(&w.gw, w.id(who), w.id(A), &receipt.message_id, i as u32).await?;
            assert!(
                &bytes == want,
                "attachment {i} differs from the file written"
            );
        }
        assert!(on_disk[1].starts_with(b"PK"), "the XLSX is a zip");
        // The figures are those of the traffic sent (see `small`).
        let csv = fetch(&w.gw, w.id(who), w.id(A), &receipt.message_id, 0).await?;
        let f = csv_figures(&csv);
        let cell = |id: usize, col: &str| f.get(&(w.id(id).to_owned(), col.to_owned())).cloned();
        assert_eq!(cell(A, "Văn bản đã gửi").as_deref(), Some("3"), "{f:?}");
        assert_eq!(cell(A, "Gửi bị từ chối").as_deref(), Some("1"));
        assert_eq!(cell(B, "Văn bản nhận được").as_deref(), Some("3"));
        assert_eq!(cell(B, "Đã chuyển đến cơ quan").as_deref(), Some("3"));
        assert_eq!(cell(B, "Cơ quan đã xác nhận nhận").as_deref(), Some("3"));
        assert_eq!(cell(C, "Văn bản nhận được").as_deref(), Some("1"));
        assert_eq!(cell(C, "Cơ quan đã xác nhận nhận").as_deref(), Some("0"));
    }
    assert!(w.drain(C, false).await?.len() == 1, "C's own document only");
    Ok(())
}

#[tokio::test]
async fn sending_the_monthly_report_needs_a_bound_certificate() -> Result<()> {
    let s = small().await?;
    let w = &s.world;
    // B's key, while the gateway's agency is A.
    let (key, chain) = w.signing(B)?;
    let sending = ReportSending::new(w.id(A), &[w.id(C).to_owned()], key, chain)?;
    let err = match sending.check(&w.gw, w.anchors()).await {
        Ok(()) => panic!("B's certificate is not A's"),
        Err(e) => e,
    };
    assert_eq!(err.reason(), Reason::CertificateNotBound);
    assert!(
        err.message()
            .contains("bound to 000.00.12.H35, not to gateway.organ_id 000.00.01.H35"),
        "{}",
        err.message()
    );
    // A recipient that is not in the directory.
    let (key, chain) = w.signing(A)?;
    let sending = ReportSending::new(w.id(A), &["000.00.77.H35".to_owned()], key, chain)?;
    let err = match sending.check(&w.gw, w.anchors()).await {
        Ok(()) => panic!("000.00.77.H35 is not in the directory"),
        Err(e) => e,
    };
    assert_eq!(err.reason(), Reason::NotFound, "{}", err.message());
    // Malformed codes and an empty list are refused before anything else.
    let (key, chain) = w.signing(A)?;
    assert!(ReportSending::new(w.id(A), &["không-phải-mã".to_owned()], key, chain).is_err());
    let (key, chain) = w.signing(A)?;
    assert!(ReportSending::new(w.id(A), &[], key, chain).is_err());
    Ok(())
}

/// A directory change is a line of the transfer log (who, what, when),
/// chained like any other, and no figure of a report moves for it.
#[tokio::test]
async fn directory_changes_are_logged_and_leave_the_figures_alone() -> Result<()> {
    use lt::directory::{self, CertRef, ChangedBy};
    use lt::store::EventKind;
    let s = small().await?;
    let store = &s.world.store;
    let st = ReportSettings::default();
    let as_of = now_micros();
    let before = summary_in(store, around_today(), &Scope::All, &st, as_of).await?;

    let by = ChangedBy::cli("clerk");
    let b = s.world.id(B).to_owned();
    assert!(directory::set_active(store, &b, false, &by).await?);
    assert!(!directory::set_active(store, &b, false, &by).await?);
    assert!(directory::set_active(store, &b, true, &by).await?);
    let (_, chain) = s.world.signing(B)?;
    let cert = CertRef::Certificate(chain[0].clone());
    let unbound = directory::unbind_signing_cert(store, &b, &cert, &by).await?;
    let again = directory::unbind_signing_cert(store, &b, &cert, &by).await;
    assert_eq!(again.err().map(|e| e.reason()), Some(Reason::NotFound));

    let after = summary_in(store, around_today(), &Scope::All, &st, as_of).await?;
    assert_eq!(before.agencies, after.agencies);
    assert_eq!(before.total, after.total);

    let lines = store
        .events_of_kind(EventKind::DirectoryChanged, Some(&b), 10)
        .await?;
    let details: Vec<&str> = lines.iter().map(|e| e.detail.as_str()).collect();
    assert_eq!(lines.len(), 3, "{details:?}");
    assert!(details[0].contains(&unbound.spki_sha256), "{details:?}");
    assert!(details[1].contains("activated again"), "{details:?}");
    assert!(details[2].contains("deactivated"), "{details:?}");
    for e in &lines {
        assert_eq!(e.actor.as_deref(), Some("cli:clerk"));
        assert_eq!((e.transport.as_str(), e.message_id.as_str()), ("cli", ""));
    }
    let v = store.verify_log().await?;
    assert_eq!(v.first_broken(), None, "{v:?}");
    Ok(())
}

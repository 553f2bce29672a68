//! Maintenance notices: an operator announces a window with
//! `lienthong admin maintenance`; an agency with a following `Receive`
//! stream gets the notice within seconds, a new `Receive` call gets it
//! first, before its deliveries (which still arrive, count towards `max`
//! alone and are acknowledged as ever); the dashboard and
//! `/api/maintenance` show it; `--cancel` tells the following stream and
//! takes it out of new calls; bad input is refused with a sentence. A
//! window announced with `--no-interruption` (a rolling upgrade) says so
//! on the stream, in `--list`, `/api/maintenance` and the banner.

use std::time::Duration;

use futures::StreamExt;
use lienthong_testkit::v1::{Delivery, ReceiveRequest};
use lienthong_testkit::*;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tonic::Streaming;

const MESSAGE: &str = "Nâng cấp máy chủ cơ sở dữ liệu — trục tạm ngừng nhận văn bản";
const ROLLING: &str = "Nâng cấp phần mềm trục liên thông, lần lượt từng bản sao";

fn rfc3339_in(d: time::Duration) -> String {
    (OffsetDateTime::now_utc() + d).format(&Rfc3339).unwrap()
}

fn stdout_json(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", describe_output(out));
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Waits (at most `secs`) for the next item of a following stream.
async fn next_within(stream: &mut Streaming<Delivery>, secs: u64, what: &str) -> Delivery {
    match tokio::time::timeout(Duration::from_secs(secs), stream.next()).await {
        Ok(Some(Ok(d))) => d,
        Ok(other) => panic!("{what}: the stream ended or broke: {other:?}"),
        Err(_) => panic!("{what}: nothing within {secs} s"),
    }
}

/// `Receive(follow=false, max)`, everything until the stream ends.
async fn receive_once(agency: &Agency, max: u32) -> Vec<Delivery> {
    let mut stream = agency
        .exchange()
        .receive(agency.request(ReceiveRequest {
            follow: false,
            max,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(d) = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("Receive(follow=false) ends")
    {
        out.push(d.unwrap());
    }
    out
}

fn assert_notice(d: &Delivery, id: &str, cancelled: bool) {
    let n = d
        .notice
        .as_ref()
        .unwrap_or_else(|| panic!("expected a notice, got {d:?}"));
    assert!(d.delivery_id.is_empty() && d.envelope.is_none(), "{d:?}");
    assert_eq!(
        (
            n.kind.as_str(),
            n.id.as_str(),
            n.message.as_str(),
            n.cancelled,
            n.no_interruption_expected
        ),
        ("maintenance", id, MESSAGE, cancelled, false)
    );
    let (s, e) = (n.starts_at.as_ref().unwrap(), n.ends_at.as_ref().unwrap());
    assert_eq!(e.seconds - s.seconds, 2 * 3600, "{n:?}");
    assert!(n.announced_at.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_sqlite() {
    let Some(gw) = TestGateway::start("maintenance_sqlite", Backend::Sqlite).await else {
        return;
    };
    within(
        Duration::from_secs(120),
        "the maintenance notices",
        scenario(&gw),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_postgres() {
    let Some(gw) = TestGateway::start("maintenance_postgres", Backend::Postgres).await else {
        return;
    };
    within(
        Duration::from_secs(120),
        "the maintenance notices",
        scenario(&gw),
    )
    .await;
}

async fn scenario(gw: &TestGateway) {
    let a = gw.agency(A);
    let b = gw.agency(B);
    let c = gw.agency(C);

    // C's software follows its inbox from before the announcement.
    let mut follow = c
        .exchange()
        .receive(c.request(ReceiveRequest {
            follow: true,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();

    // Bad input: a sentence, a failure, nothing announced.
    let bad = gw
        .run_cli(&[
            "admin",
            "maintenance",
            "--from",
            &rfc3339_in(time::Duration::hours(3)),
            "--to",
            &rfc3339_in(time::Duration::hours(1)),
            "--message",
            MESSAGE,
        ])
        .await;
    assert!(!bad.status.success(), "{}", describe_output(&bad));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("must end after it starts"), "{err}");
    let empty = gw
        .run_cli(&[
            "admin",
            "maintenance",
            "--from",
            &rfc3339_in(time::Duration::hours(1)),
            "--to",
            &rfc3339_in(time::Duration::hours(3)),
            "--message",
            "  ",
        ])
        .await;
    assert!(!empty.status.success(), "{}", describe_output(&empty));
    let err = String::from_utf8_lossy(&empty.stderr);
    assert!(err.contains("needs a --message"), "{err}");
    let garbled = gw
        .run_cli(&[
            "admin",
            "maintenance",
            "--from",
            "tomorrow evening",
            "--to",
            &rfc3339_in(time::Duration::hours(3)),
            "--message",
            MESSAGE,
        ])
        .await;
    assert!(!garbled.status.success());
    assert!(String::from_utf8_lossy(&garbled.stderr).contains("is not a time"));

    // The announcement.
    let from = OffsetDateTime::now_utc() + time::Duration::hours(1);
    let to = from + time::Duration::hours(2);
    let announced = stdout_json(
        &gw.run_cli(&[
            "admin",
            "maintenance",
            "--from",
            &from.format(&Rfc3339).unwrap(),
            "--to",
            &to.format(&Rfc3339).unwrap(),
            "--message",
            MESSAGE,
        ])
        .await,
    );
    let id = announced["id"].as_i64().expect("an id").to_string();
    assert_eq!(announced["message"], MESSAGE);
    assert_eq!(announced["state"], "upcoming");
    assert!(
        announced["starts_at"].as_str().unwrap().ends_with("+07:00"),
        "{announced}"
    );
    let listed = gw.run_cli(&["admin", "maintenance", "--list"]).await;
    assert!(listed.status.success());
    assert!(String::from_utf8_lossy(&listed.stdout).contains(MESSAGE));

    // The following stream hears of it within seconds.
    let heard = next_within(&mut follow, 15, "the notice on C's following stream").await;
    assert_notice(&heard, &id, false);

    // A new call gets the notice first, then its deliveries; `max`
    // counts deliveries only, and they are acknowledged as ever.
    let sent1 = a
        .send_document(&[B], "Công văn thứ nhất", &[])
        .await
        .unwrap();
    let sent2 = a
        .send_document(&[B], "Công văn thứ hai", &[])
        .await
        .unwrap();
    let got = receive_once(&b, 2).await;
    assert_eq!(got.len(), 3, "{got:?}");
    assert_notice(&got[0], &id, false);
    let ids: Vec<String> = got[1..]
        .iter()
        .map(|d| decode_envelope(d.envelope.as_ref().unwrap()).message_id)
        .collect();
    assert_eq!(ids, [sent1.message_id(), sent2.message_id()]);
    for d in &got[1..] {
        assert!(!d.delivery_id.is_empty());
        b.ack(&d.delivery_id).await.unwrap();
    }
    let again = receive_once(&b, 0).await;
    assert_eq!(again.len(), 1, "only the notice is left: {again:?}");
    assert_notice(&again[0], &id, false);
    // `lienthong receive --ack` shows the notice and does not acknowledge it.
    let cli = gw.run_cli(&["receive", "--as", B, "--ack"]).await;
    assert!(cli.status.success(), "{}", describe_output(&cli));
    let line: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&cli.stdout).trim()).unwrap();
    assert_eq!(
        (&line["notice"], &line["id"], &line["message"]),
        (&"maintenance".into(), &id.clone().into(), &MESSAGE.into())
    );

    // The dashboard shows it, in the page and in its JSON.
    let operator = gw.operator_session("Trung tâm CNTT", "viewer").await;
    let got = operator.get("/").await;
    let (status, page) = (got.status, got.text());
    assert_eq!(status, 200);
    assert!(page.contains(MESSAGE), "{page}");
    assert!(page.contains("giờ Việt Nam"), "{page}");
    assert!(page.contains("Scheduled maintenance"), "{page}");
    let got = operator.get("/api/maintenance").await;
    let (status, body) = (got.status, got.text());
    assert_eq!(status, 200, "{body}");
    let windows: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(windows[0]["message"], MESSAGE, "{body}");
    assert_eq!(windows[0]["id"].to_string(), id);
    assert_eq!(windows[0]["interruption"], true, "{body}");
    let text_vi = windows[0]["text_vi"].as_str().unwrap();
    assert!(text_vi.contains("(giờ Việt Nam)"), "{text_vi}");
    assert!(
        text_vi.ends_with("trục liên thông có thể gián đoạn."),
        "{text_vi}"
    );

    // Cancelled: the following stream is told, new calls and the
    // dashboard no longer show it.
    let cancelled = stdout_json(&gw.run_cli(&["admin", "maintenance", "--cancel", &id]).await);
    assert_eq!(cancelled["cancelled"], true);
    // C has no deliveries: the next item on its stream is the cancellation.
    let heard = next_within(&mut follow, 15, "the cancellation on C's stream").await;
    assert_notice(&heard, &id, true);
    assert!(receive_once(&b, 0).await.is_empty());
    let page = operator.get("/").await.text();
    assert!(!page.contains(MESSAGE), "{page}");
    let body = operator.get("/api/maintenance").await.text();
    assert_eq!(body.trim(), "[]");
    let unknown = gw
        .run_cli(&["admin", "maintenance", "--cancel", "999"])
        .await;
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no maintenance window 999"));

    // A rolling upgrade: announced with --no-interruption, the following
    // stream hears that agencies need not hold back sends.
    let rolling = stdout_json(
        &gw.run_cli(&[
            "admin",
            "maintenance",
            "--from",
            &from.format(&Rfc3339).unwrap(),
            "--to",
            &to.format(&Rfc3339).unwrap(),
            "--message",
            ROLLING,
            "--no-interruption",
        ])
        .await,
    );
    assert_eq!(rolling["interruption"], false, "{rolling}");
    let rolling_id = rolling["id"].as_i64().expect("an id").to_string();
    let heard = next_within(&mut follow, 15, "the rolling upgrade on C's stream").await;
    let n = heard.notice.as_ref().expect("a notice");
    assert_eq!(
        (n.id.as_str(), n.message.as_str(), n.cancelled),
        (rolling_id.as_str(), ROLLING, false)
    );
    assert!(n.no_interruption_expected, "{n:?}");
    let got = receive_once(&b, 0).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].notice.as_ref().unwrap().no_interruption_expected);
    let listed = gw.run_cli(&["admin", "maintenance", "--list"]).await;
    let listed: serde_json::Value = stdout_json(&listed);
    assert_eq!(
        (&listed["message"], &listed["interruption"]),
        (&ROLLING.into(), &false.into())
    );
    let body = operator.get("/api/maintenance").await.text();
    let windows: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(windows[0]["interruption"], false, "{body}");
    assert!(
        windows[0]["text_vi"]
            .as_str()
            .unwrap()
            .starts_with("Lịch bảo trì, nâng cấp hệ thống: từ "),
        "{body}"
    );
    assert!(
        windows[0]["text_vi"]
            .as_str()
            .unwrap()
            .ends_with("(giờ Việt Nam); không dự kiến gián đoạn."),
        "{body}"
    );
    assert!(
        windows[0]["text_en"]
            .as_str()
            .unwrap()
            .ends_with("; no interruption expected."),
        "{body}"
    );
    let page = operator.get("/").await.text();
    assert!(page.contains("không dự kiến gián đoạn"), "{page}");
    assert!(!page.contains("có thể gián đoạn"), "{page}");
    // From the dashboard: an admin's "interruption": false.
    let admin = gw.operator_session("Quản trị", "admin").await;
    let posted = admin
        .post_json(
            "/api/maintenance",
            &serde_json::json!({
                "from": "2099-11-30T22:00",
                "to": "2099-11-30T23:00",
                "message": ROLLING,
                "interruption": false,
            }),
        )
        .await;
    assert_eq!(posted.status, 200, "{}", posted.text());
    let posted: serde_json::Value = serde_json::from_str(&posted.text()).unwrap();
    assert_eq!(posted["interruption"], false, "{posted}");
    assert!(
        posted["text_vi"]
            .as_str()
            .unwrap()
            .contains("không dự kiến gián đoạn"),
        "{posted}"
    );
}

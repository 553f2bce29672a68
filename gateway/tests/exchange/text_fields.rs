//! NUL and other control characters in a signed document's text fields, on
//! SQLite and PostgreSQL: each is refused `MALFORMED` naming the field, with
//! a `rejected` line in the transfer log and nothing stored; the next
//! document goes through, and the reports (which index every document's
//! subject) still work. A lookup holding a NUL is a refusal, not
//! `UNAVAILABLE`. edXML packages are held to the same rule, character
//! references included.

use std::time::Duration;

use lienthong_testkit::v1::{DocumentStatusRequest, EdxmlChunk};
use lienthong_testkit::*;
use tonic::Code;

/// A change to a drafted document, the field its refusal must name.
type Case = (&'static str, &'static str, fn(&mut v1::Document));

const CASES: [Case; 6] = [
    ("a NUL in document_id", "document.document_id", |d| {
        d.document_id.insert(3, '\0')
    }),
    ("a NUL in the subject", "document.subject", |d| {
        d.subject.push('\0')
    }),
    ("an ESC in code_notation", "document.code_notation", |d| {
        d.code_notation.push_str("\u{1b}[2J")
    }),
    (
        "a C1 control in the signer's name",
        "document.signer.full_name",
        |d| {
            if let Some(s) = d.signer.as_mut() {
                s.full_name.push('\u{85}')
            }
        },
    ),
    (
        "a right-to-left override in the subject",
        "document.subject",
        |d| d.subject.insert(0, '\u{202e}'),
    ),
    ("a line feed in the subject", "document.subject", |d| {
        d.subject.push_str("\ndòng hai")
    }),
];

/// Today in Vietnam (UTC+7), `yyyy-MM-dd`: the day the traffic is counted in.
fn vietnam_today() -> String {
    let t = time::OffsetDateTime::now_utc().to_offset(time::UtcOffset::from_hms(7, 0, 0).unwrap());
    format!("{:04}-{:02}-{:02}", t.year(), t.month() as u8, t.day())
}

async fn control_characters_are_refused(gw: &TestGateway) {
    let (a, b) = (gw.agency(A), gw.agency(B));
    for (case, field, change) in CASES {
        let mut draft = a.draft_document(&[B], "Văn bản có ký tự điều khiển", &[]);
        change(draft.document_mut());
        let err = a
            .send_draft(&draft)
            .await
            .expect_err(&format!("{case}: accepted"));
        assert_eq!(
            (err.code(), reason_of(&err).as_deref()),
            (Code::InvalidArgument, Some("MALFORMED")),
            "{case}: {err:?}"
        );
        assert!(
            err.message().contains(&format!("`{field}`")),
            "{case}: the refusal does not name {field}: {}",
            err.message()
        );
        let events = gw.trace_json(&draft.envelope.message_id, None).await;
        let kinds: Vec<&str> = events.iter().filter_map(|e| e["kind"].as_str()).collect();
        assert_eq!(kinds, ["rejected"], "{case}: {events:#?}");
        assert_eq!(events[0]["reason"], "MALFORMED", "{case}: {events:#?}");
    }
    // Nothing of them was kept, and the next document goes through.
    let good = a
        .send_document(&[B], "Văn bản hợp lệ sau các văn bản lỗi", &[])
        .await
        .expect("the next document is accepted");
    let got = b.receive_all(0).await.expect("receive");
    let ids: Vec<String> = got
        .iter()
        .map(|d| decode_envelope(d.envelope.as_ref().unwrap()).message_id)
        .collect();
    assert_eq!(ids, [good.message_id()], "B's inbox");

    // The reports index every document's subject: they still work, and
    // count the refusals.
    let out = gw
        .run_cli(&[
            "report",
            "--period",
            &vietnam_today(),
            "--agency",
            A,
            "--format",
            "json",
        ])
        .await;
    assert!(out.status.success(), "{}", describe_output(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let row = &report["agencies"][0];
    assert_eq!(row["organ_id"], A, "{report:#}");
    assert_eq!(row["sent"], 1, "{report:#}");
    assert_eq!(
        row["refused_by_reason"]["MALFORMED"],
        CASES.len(),
        "{report:#}"
    );

    // A lookup holding a NUL: the database cannot even compare it on
    // PostgreSQL — a refusal with a sentence, never "try again later".
    let st = a
        .exchange()
        .document_status(a.request(DocumentStatusRequest {
            document_id: "15/QĐ\0-UBND".to_owned(),
            from: A.to_owned(),
        }))
        .await
        .expect_err("no such document");
    let want = match gw.backend {
        Backend::Postgres => "MALFORMED",
        Backend::Sqlite => "NOT_FOUND",
    };
    assert_eq!(reason_of(&st).as_deref(), Some(want), "{st:?}");
    assert!(st.message().contains(' '), "{st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_are_refused_naming_the_field_on_sqlite() {
    let Some(gw) = TestGateway::start("text-sqlite", Backend::Sqlite).await else {
        return;
    };
    within(
        Duration::from_secs(120),
        "control characters on SQLite",
        control_characters_are_refused(&gw),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_are_refused_naming_the_field_on_postgres() {
    let Some(gw) = TestGateway::start("text-postgres", Backend::Postgres).await else {
        return;
    };
    within(
        Duration::from_secs(120),
        "control characters on PostgreSQL",
        control_characters_are_refused(&gw),
    )
    .await;
}

/// The edXML test package, from A to B only.
fn package(subject: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../adapters/edxml/tests/fixtures/edoc_new.edxml");
    let text = std::fs::read_to_string(&path).expect("read the edXML fixture");
    // The fixture's second recipient is not in the test directory.
    let text = text.replace("000.00.13.H35", C);
    let original = "<Subject>V/v triển khai kế hoạch chuyển đổi số năm 2026</Subject>";
    assert!(text.contains(original), "the fixture changed");
    text.replace(original, &format!("<Subject>{subject}</Subject>"))
        .into_bytes()
}

async fn send_edxml(agency: &Agency, bytes: Vec<u8>) -> Result<v1::SendReceipt, tonic::Status> {
    let chunks: Vec<EdxmlChunk> = bytes
        .chunks(16 * 1024)
        .map(|c| EdxmlChunk {
            data: c.to_vec().into(),
            message_id: String::new(),
        })
        .collect();
    agency
        .exchange()
        .send_edxml(agency.request(futures::stream::iter(chunks)))
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edxml_packages_are_held_to_the_same_characters() {
    let Some(gw) = TestGateway::start("text-edxml", Backend::Sqlite).await else {
        return;
    };
    let a = gw.agency(A);
    for (case, subject, words) in [
        // Characters XML allows but no edXML value may hold.
        (
            "a C1 control, written as a reference",
            "V/v&#x85; thử",
            "U+0085",
        ),
        ("a raw C1 control", "V/v\u{9b} thử", "U+009B"),
        (
            "a right-to-left override, written as a reference",
            "V/v &#x202E;fdp.exe",
            "RIGHT-TO-LEFT OVERRIDE",
        ),
        ("a raw noncharacter", "V/v \u{fdd0}", "U+FDD0"),
        // Characters XML itself refuses, as references and raw.
        ("a NUL written as a reference", "V/v&#0; thử", "&#0;"),
        ("a raw BEL", "V/v\u{7} thử", "U+0007"),
    ] {
        let err = send_edxml(&a, package(subject))
            .await
            .expect_err(&format!("{case}: accepted"));
        assert_eq!(
            reason_of(&err).as_deref(),
            Some("MALFORMED"),
            "{case}: {err:?}"
        );
        let m = err.message();
        assert!(m.contains(words), "{case}: {m}");
        assert!(
            m.contains("Subject"),
            "{case}: the element is not named: {m}"
        );
    }
    // A line feed is no control character of XML's, but the subject is one
    // line: the core refuses it, naming the field it became.
    let err = send_edxml(&a, package("V/v triển khai&#10;kế hoạch"))
        .await
        .expect_err("a line feed in the subject");
    assert_eq!(reason_of(&err).as_deref(), Some("MALFORMED"), "{err:?}");
    assert!(err.message().contains("`document.subject`"), "{err:?}");
    // The package itself is fine.
    send_edxml(
        &a,
        package("V/v triển khai kế hoạch chuyển đổi số năm 2026"),
    )
    .await
    .expect("the unchanged package is accepted");
}

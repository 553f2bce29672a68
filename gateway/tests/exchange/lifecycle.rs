//! The document lifecycle, end to end: three agencies — A and B
//! on the H35 gateway, X behind the H36 gateway over AMQP (C on H35 joins
//! for the recall) — walk documents through every path, and
//! `Exchange.DocumentStatus` is checked for each recipient at each step.

use std::time::{Duration, SystemTime};

use lienthong_testkit::amqp::{self, CONTENT_TYPE_ENVELOPE, Client, EXCHANGE, Vhost, X};
use lienthong_testkit::v1::{
    Business, BusinessType, DocumentStatusRequest, DocumentStatusResponse, Envelope, StatusNotice,
    envelope,
};
use lienthong_testkit::*;
use prost::Message as _;
use tonic::Code;

async fn gateway(
    name: &str,
    province: &str,
    vhost: &Vhost,
    pki: &std::path::Path,
) -> Option<TestGateway> {
    TestGateway::start_with(
        name,
        GatewayOptions {
            pki: Some(pki.to_path_buf()),
            extra_config: amqp::config(vhost, province, ""),
            ..Default::default()
        },
    )
    .await
}

async fn document_status(
    agency: &Agency,
    from: &str,
    document_id: &str,
) -> Result<DocumentStatusResponse, tonic::Status> {
    agency
        .exchange()
        .document_status(agency.request(DocumentStatusRequest {
            document_id: document_id.to_owned(),
            from: from.to_owned(),
        }))
        .await
        .map(|r| r.into_inner())
}

fn state_of(s: &DocumentStatusResponse, who: &str) -> String {
    s.recipients
        .iter()
        .find(|r| r.organ_id == who)
        .map(|r| r.state.clone())
        .unwrap_or_else(|| format!("<{who} is not a recipient: {s:#?}>"))
}

/// Polls DocumentStatus until `who` is in `want` (other gateways answer
/// over AMQP, a moment later).
async fn wait_state(
    agency: &Agency,
    from: &str,
    document_id: &str,
    who: &str,
    want: &str,
) -> DocumentStatusResponse {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = document_status(agency, from, document_id)
            .await
            .expect("DocumentStatus");
        if state_of(&s, who) == want {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{who} is {} for document {document_id}, not {want}: {s:#?}",
            state_of(&s, who)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A signed status notice from `agency` to `to` about `doc_from`'s document.
fn status_envelope(
    agency: &Agency,
    to: &[&str],
    doc_from: &str,
    document_id: &str,
    code: &str,
) -> Envelope {
    Envelope {
        message_id: uuid::Uuid::new_v4().to_string(),
        from: agency.organ_id.clone(),
        to: to.iter().map(|s| s.to_string()).collect(),
        created_at: Some(prost_types::Timestamp::from(SystemTime::now())),
        body: Some(envelope::Body::Status(StatusNotice {
            document_id: document_id.to_owned(),
            document_from: doc_from.to_owned(),
            code: code.to_owned(),
            description: format!("Trạng thái {code}"),
            at: Some(prost_types::Timestamp::from(SystemTime::now())),
            ..Default::default()
        })),
        ..Default::default()
    }
}

async fn status(
    agency: &Agency,
    to: &[&str],
    doc_from: &str,
    document_id: &str,
    code: &str,
) -> Result<(), tonic::Status> {
    let env = status_envelope(agency, to, doc_from, document_id, code);
    agency
        .send_signed(agency.sign(&env), Vec::new())
        .await
        .map(|_| ())
}

fn with_business(draft: &mut Draft, kind: BusinessType, target: &str) {
    let doc = draft.document_mut();
    doc.document_id = format!("{}-{}", doc.document_id, kind.as_str_name());
    doc.business = Some(Business {
        r#type: kind as i32,
        reason: "Thu hồi để chỉnh sửa".into(),
        replaces: target.to_owned(),
        ..Default::default()
    });
}

fn assert_refused(
    r: Result<impl std::fmt::Debug, tonic::Status>,
    code: Code,
    reason: &str,
    words: &str,
) {
    let err = r.expect_err("refused");
    assert_eq!(err.code(), code, "{err:?}");
    assert_eq!(reason_of(&err).as_deref(), Some(reason), "{err:?}");
    assert!(
        err.message().contains(words),
        "the sentence says {words:?}: {}",
        err.message()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn documents_walk_their_lifecycle_across_two_gateways() {
    let Some(vhost) = Vhost::create_or_skip("lifecycle") else {
        return;
    };
    let (_t, pki) = amqp::federated_pki_dir(&[]);
    let Some(g35) = gateway("lifecycle-h35", "H35", &vhost, &pki).await else {
        return;
    };
    let Some(g36) = gateway("lifecycle-h36", "H36", &vhost, &pki).await else {
        return;
    };
    within(Duration::from_secs(240), "the lifecycle walk", async {
        let (a, b, c) = (g35.agency(A), g35.agency(B), g35.agency(C));
        let x = g36.agency(X);

        // --- A document to B (local) and X (other gateway) -----------------
        let mut draft = a.draft_document(&[B, X], "Công văn theo dõi trạng thái", &[]);
        draft.document_mut().due_date = "2026-12-31".into();
        let sent = a.send_draft(&draft).await.expect("send");
        let d = sent.document().document_id.clone();
        let s = document_status(&a, A, &d).await.unwrap();
        assert_eq!(s.state, "active");
        assert_eq!(s.due_date, "2026-12-31");
        assert_eq!(state_of(&s, B), "sent", "B has not fetched it yet");
        // X's copy counts as delivered once the broker confirmed it.
        wait_state(&a, A, &d, X, "delivered").await;
        // Only the sender and the recipients may ask.
        assert_refused(
            document_status(&c, A, &d).await,
            Code::NotFound,
            "NOT_FOUND",
            "no document",
        );

        // B receives, then walks 01 → 03 → 04 → 06; a repeat and a late 05
        // change nothing.
        receive_message(&b, sent.message_id()).await;
        assert_eq!(
            state_of(&document_status(&b, A, &d).await.unwrap(), B),
            "delivered"
        );
        for (code, want) in [
            ("01", "arrived"),
            ("03", "accepted"),
            ("03", "accepted"),
            ("04", "assigned"),
            ("06", "completed"),
            ("05", "completed"),
        ] {
            status(&b, &[A], A, &d, code)
                .await
                .unwrap_or_else(|e| panic!("{code}: {e:?}"));
            assert_eq!(
                state_of(&document_status(&a, A, &d).await.unwrap(), B),
                want,
                "after {code}"
            );
        }
        let s = document_status(&a, A, &d).await.unwrap();
        let trail = &s.recipients.iter().find(|r| r.organ_id == B).unwrap().steps;
        assert!(
            trail
                .iter()
                .any(|t| t.event == "03" && t.note.contains("repeat")),
            "{trail:#?}"
        );
        assert!(
            trail
                .iter()
                .any(|t| t.event == "05" && t.note.contains("not reopened")),
            "{trail:#?}"
        );
        assert_eq!(
            s.recipients
                .iter()
                .find(|r| r.organ_id == B)
                .unwrap()
                .last_code,
            "06"
        );

        // X, on the other gateway, answers 01 and 03 over the exchange.
        receive_message(&x, sent.message_id()).await;
        status(&x, &[A], A, &d, "01").await.unwrap();
        status(&x, &[A], A, &d, "03").await.unwrap();
        wait_state(&a, A, &d, X, "accepted").await;
        // H36 keeps the lifecycle of its own recipient too.
        wait_state(&x, A, &d, X, "accepted").await;

        // The operator's view, from the database.
        let out = g35
            .run_cli(&["document-status", d.as_str(), "--from", A, "--json"])
            .await;
        assert!(out.status.success(), "{}", describe_output(&out));
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let states: Vec<(String, String)> = j["recipients"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["organ_id"].as_str().unwrap().to_owned(),
                    r["state"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert!(
            states.contains(&(B.to_owned(), "completed".to_owned())),
            "{j:#}"
        );
        assert!(
            states.contains(&(X.to_owned(), "accepted".to_owned())),
            "{j:#}"
        );

        // --- Bad notices ------------------------------------------------------
        assert_refused(
            status(&c, &[A], A, &d, "06").await,
            Code::PermissionDenied,
            "PERMISSION_DENIED",
            "not a recipient",
        );
        assert_refused(
            status(&b, &[A], A, &d, "07").await,
            Code::InvalidArgument,
            "MALFORMED",
            "not one of",
        );
        assert_refused(
            status(&b, &[A], A, &d, "15").await,
            Code::InvalidArgument,
            "MALFORMED",
            "asked none",
        );
        assert_refused(
            status(&b, &[A], A, &d, "13").await,
            Code::PermissionDenied,
            "PERMISSION_DENIED",
            "only the sender",
        );
        // 04 before any delivery: C gets a document it has not fetched.
        let for_c = a.send_document(&[C], "Chưa nhận", &[]).await.unwrap();
        let dc = for_c.document().document_id.clone();
        assert_refused(
            status(&c, &[A], A, &dc, "04").await,
            Code::InvalidArgument,
            "MALFORMED",
            "not been delivered",
        );
        receive_message(&c, for_c.message_id()).await;

        // --- Update: linked, delivered to the recipients it names ------------
        let mut upd = a.draft_document(&[B, X], "Cập nhật công văn", &[]);
        with_business(&mut upd, BusinessType::Update, &d);
        let upd_sent = a.send_draft(&upd).await.expect("update accepted");
        let u = upd_sent.document().document_id.clone();
        let s = document_status(&a, A, &d).await.unwrap();
        assert!(
            s.links
                .iter()
                .any(|l| l.relation == "updated_by" && l.document_id == u),
            "{:#?}",
            s.links
        );
        let su = document_status(&a, A, &u).await.unwrap();
        assert!(
            su.links
                .iter()
                .any(|l| l.relation == "updates" && l.document_id == d),
            "{:#?}",
            su.links
        );
        receive_message(&b, upd_sent.message_id()).await;
        receive_message(&x, upd_sent.message_id()).await;
        // An update of a document nobody sent.
        let mut bad = a.draft_document(&[B], "Cập nhật văn bản không có", &[]);
        with_business(
            &mut bad,
            BusinessType::Update,
            "000.00.01.H35,2026/01/01,999/KHONG-CO",
        );
        assert_refused(
            a.send_draft(&bad).await,
            Code::NotFound,
            "NOT_FOUND",
            "has not carried",
        );

        // --- Recall: B and X hold a copy, C has not fetched it yet ------------
        let d2_sent = a
            .send_document(&[B, C, X], "Văn bản sẽ thu hồi", &[])
            .await
            .unwrap();
        let d2 = d2_sent.document().document_id.clone();
        receive_message(&b, d2_sent.message_id()).await;
        receive_message(&x, d2_sent.message_id()).await;
        // Someone else cannot recall it.
        let mut foreign = b.draft_document(&[A], "Thu hồi văn bản của người khác", &[]);
        with_business(&mut foreign, BusinessType::Recall, &d2);
        assert_refused(
            b.send_draft(&foreign).await,
            Code::PermissionDenied,
            "PERMISSION_DENIED",
            "only its sender",
        );

        let mut recall = a.draft_document(&[B, C, X], "Thu hồi văn bản", &[]);
        with_business(&mut recall, BusinessType::Recall, &d2);
        let recall_sent = a.send_draft(&recall).await.expect("recall accepted");
        let routes: Vec<&str> = recall_sent
            .receipt
            .recipients
            .iter()
            .map(|r| r.organ_id.as_str())
            .collect();
        assert!(
            routes.contains(&B) && routes.contains(&X) && !routes.contains(&C),
            "the recall goes to the copies still held: {routes:?}"
        );
        let s = document_status(&a, A, &d2).await.unwrap();
        assert_eq!(s.state, "recalled");
        assert_eq!(state_of(&s, C), "withdrawn", "taken out of C's inbox");
        assert_eq!(state_of(&s, B), "recall_requested");
        assert!(
            s.links.iter().any(|l| l.relation == "recalled_by"),
            "{:#?}",
            s.links
        );
        // C never gets the recalled document: C's inbox is read up to a
        // document sent after the recall, which comes after anything the
        // recalled one could have left there.
        let after = a.send_document(&[C], "Sau khi thu hồi", &[]).await.unwrap();
        let mut reached_after = false;
        let until = tokio::time::Instant::now() + Duration::from_secs(30);
        while !reached_after {
            assert!(
                tokio::time::Instant::now() < until,
                "C never got the document sent after the recall"
            );
            for dl in c.receive_all(0).await.unwrap() {
                let id = decode_envelope(dl.envelope.as_ref().unwrap()).message_id;
                assert_ne!(id, d2_sent.message_id(), "a withdrawn copy was delivered");
                reached_after |= id == after.message_id();
                c.ack(&dl.delivery_id).await.unwrap();
            }
            if !reached_after {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let t = g35.trace_json(recall_sent.message_id(), Some(A)).await;
        assert!(
            t.iter().any(|e| e["kind"] == "withdrawn" && e["to"] == C),
            "{t:#?}"
        );
        // B gets the recall and agrees; X (over AMQP) refuses.
        receive_message(&b, recall_sent.message_id()).await;
        status(&b, &[A], A, &d2, "15").await.unwrap();
        assert_eq!(
            state_of(&document_status(&a, A, &d2).await.unwrap(), B),
            "recall_agreed"
        );
        receive_message(&x, recall_sent.message_id()).await;
        wait_state(&x, A, &d2, X, "recall_requested").await;
        status(&x, &[A], A, &d2, "16").await.unwrap();
        wait_state(&a, A, &d2, X, "recall_refused").await;
        // The sender's copy is frozen: no second recall, no update, no
        // recall of the recall, no processing notice from B.
        let mut again = a.draft_document(&[B], "Thu hồi lần hai", &[]);
        with_business(&mut again, BusinessType::Recall, &d2);
        assert_refused(
            a.send_draft(&again).await,
            Code::InvalidArgument,
            "MALFORMED",
            "was recalled",
        );
        let mut upd2 = a.draft_document(&[B], "Cập nhật văn bản đã thu hồi", &[]);
        with_business(&mut upd2, BusinessType::Update, &d2);
        assert_refused(
            a.send_draft(&upd2).await,
            Code::InvalidArgument,
            "MALFORMED",
            "frozen",
        );
        let mut rr = a.draft_document(&[B], "Thu hồi văn bản thu hồi", &[]);
        with_business(
            &mut rr,
            BusinessType::Recall,
            &recall.document().document_id,
        );
        assert_refused(
            a.send_draft(&rr).await,
            Code::InvalidArgument,
            "MALFORMED",
            "itself a recall",
        );
        assert_refused(
            status(&b, &[A], A, &d2, "05").await,
            Code::InvalidArgument,
            "MALFORMED",
            "recalled",
        );

        // --- A notice overtakes its document over AMQP -------------------------
        // X (H36) asks A to take nothing back yet: first its 13 about a
        // document A has not received, then the document itself.
        let mut early = x.draft_document(&[A], "Văn bản đến sau thông báo", &[]);
        early.document_mut().document_id = format!("{X},2026/11/25,77/UBND-VP");
        let de = early.document().document_id.clone();
        let notice = status_envelope(&x, &[A], X, &de, "13");
        let client = Client::connect(&vhost).await;
        client
            .publish(
                EXCHANGE,
                A,
                &x.sign(&notice).encode_to_vec(),
                Some(CONTENT_TYPE_ENVELOPE),
                Some(&notice.message_id),
            )
            .await;
        // It is kept (delivered to A, not dead-lettered) ...
        receive_message(&a, &notice.message_id).await;
        // ... and applied once the document arrives.
        client
            .publish(
                EXCHANGE,
                A,
                &x.sign(&early.envelope).encode_to_vec(),
                Some(CONTENT_TYPE_ENVELOPE),
                Some(&early.envelope.message_id),
            )
            .await;
        receive_message(&a, &early.envelope.message_id).await;
        let s = wait_state(&a, X, &de, A, "recall_requested").await;
        let steps = &s.recipients[0].steps;
        assert!(
            steps
                .iter()
                .any(|t| t.event == "13" && t.message_id == notice.message_id),
            "{steps:#?}"
        );

        // --- A secret document is refused, and nothing of it is kept ---------
        let mut secret = a.draft_document(
            &[B],
            "Văn bản mật",
            &[AttachmentSpec::text("mat.txt", "nội dung mật")],
        );
        secret.document_mut().confidentiality = "Mật".into();
        assert_refused(
            a.send_draft(&secret).await,
            Code::InvalidArgument,
            "SECRET_DOCUMENT",
            "state secrets",
        );
        let t = g35.trace_json(&secret.envelope.message_id, Some(A)).await;
        assert!(
            !t.is_empty() && t.iter().all(|e| e["kind"] == "rejected"),
            "{t:#?}"
        );
        assert!(
            t.iter()
                .all(|e| !e["detail"].as_str().unwrap_or("").contains("Văn bản mật")),
            "the refusal line does not repeat the secret document's subject: {t:#?}"
        );
        assert!(
            document_status(&a, A, &secret.document().document_id)
                .await
                .is_err()
        );

        // --- Sent late: reported, not refused ----------------------------------
        let mut late = a.draft_document(&[B], "Gửi muộn", &[]);
        late.document_mut().promulgation_date = "2026-11-02".into();
        let late_sent = a
            .send_draft(&late)
            .await
            .expect("a late document is still accepted");
        let got = receive_message(&b, late_sent.message_id()).await;
        let v = got.verification.unwrap();
        assert!(
            v.warnings
                .iter()
                .any(|w| w.contains("working days after its promulgation")),
            "{v:#?}"
        );
        // Control: promulgated today (in Vietnam, where the gateway counts
        // working days), it is in time and gets no such warning.
        let today = (time::OffsetDateTime::now_utc() + time::Duration::hours(7)).date();
        let mut on_time = a.draft_document(&[B], "Gửi đúng hạn", &[]);
        on_time.document_mut().promulgation_date = format!(
            "{:04}-{:02}-{:02}",
            today.year(),
            today.month() as u8,
            today.day()
        );
        let on_time_sent = a.send_draft(&on_time).await.expect("sent in time");
        let got = receive_message(&b, on_time_sent.message_id()).await;
        let v = got.verification.unwrap();
        assert!(
            !v.warnings.iter().any(|w| w.contains("promulgation")),
            "promulgated {today}, sent today: {v:#?}"
        );
    })
    .await;
}

/// Deadlines: a hỏa tốc document not accepted within its working hours and
/// a document past its DueDate give `overdue` lines, once per recipient,
/// shown by DocumentStatus; a recipient that answered in time is not
/// flagged, and completing clears the flag.
///
/// B answers while the gateway allows a thousand hours; only then is the
/// gateway restarted with a deadline of 3.6 s. B's answer is thus in time
/// however slow the machine, and C's silence is late however fast.
#[tokio::test(flavor = "multi_thread")]
async fn missed_deadlines_are_logged_once_and_shown() {
    let dir = tempfile::tempdir().unwrap();
    let holidays = dir.path().join("holidays.txt");
    std::fs::write(
        &holidays,
        "# Quốc khánh\n2026-09-02 Quốc khánh\n2026-09-01\n",
    )
    .unwrap();
    let roomy = "accept_within_hours = { \"3\" = 1000 }";
    let opts = GatewayOptions {
        extra_config: format!(
            "[lifecycle]\n{roomy}\ncheck_every_secs = 1\n\n\
             [reports.working_hours]\nstart = \"00:00\"\nend = \"23:59\"\n\
             days = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\", \"sat\", \"sun\"]\n\
             holidays_file = {:?}\n",
            holidays.display().to_string()
        ),
        ..Default::default()
    };
    let Some(mut gw) = TestGateway::start_with("lifecycle_deadlines", opts).await else {
        return;
    };
    within(Duration::from_secs(120), "the deadline scenario", async {
        let (a, b) = (gw.agency(A), gw.agency(B));
        let mut express = a.draft_document(&[B, C], "Hỏa tốc", &[]);
        express.document_mut().priority = 3;
        let sent = a.send_draft(&express).await.unwrap();
        let d = sent.document().document_id.clone();
        receive_message(&b, sent.message_id()).await;
        status(&b, &[A], A, &d, "03").await.unwrap();

        // Now the deadline is short: C, which never answered, is late.
        let config = std::fs::read_to_string(&gw.config_path).unwrap();
        assert!(config.contains(roomy), "{config}");
        std::fs::write(
            &gw.config_path,
            config.replace(roomy, "accept_within_hours = { \"3\" = 0.001 }"),
        )
        .unwrap();
        gw.restart().await;
        let (a, b) = (gw.agency(A), gw.agency(B));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
        let s = loop {
            let s = document_status(&a, A, &d).await.unwrap();
            if s.recipients.iter().any(|r| r.organ_id == C && r.overdue) {
                break s;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "C never became overdue: {s:#?}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        };
        let b_status = s.recipients.iter().find(|r| r.organ_id == B).unwrap();
        assert!(!b_status.overdue, "B accepted in time: {b_status:#?}");
        let c_status = s.recipients.iter().find(|r| r.organ_id == C).unwrap();
        assert!(
            c_status
                .steps
                .iter()
                .any(|t| t.event == "overdue" && t.note.contains("hỏa tốc")),
            "{c_status:#?}"
        );

        // A due date that has passed: overdue until completed.
        let mut due = a.draft_document(&[B], "Hạn xử lý đã qua", &[]);
        due.document_mut().due_date = "2026-01-05".into();
        let due_sent = a.send_draft(&due).await.unwrap();
        let dd = due_sent.document().document_id.clone();
        receive_message(&b, due_sent.message_id()).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
        loop {
            let s = document_status(&b, A, &dd).await.unwrap();
            if s.recipients[0].overdue {
                assert!(
                    s.recipients[0]
                        .steps
                        .iter()
                        .any(|t| t.event == "overdue" && t.note.contains("due date"))
                );
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never overdue: {s:#?}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        // Logged once, however often the check runs: the check that flagged
        // the due date, sent after C was flagged, looked at C again.
        let t = gw.trace_json(sent.message_id(), Some(A)).await;
        let lines: Vec<_> = t.iter().filter(|e| e["kind"] == "overdue").collect();
        assert_eq!(lines.len(), 1, "{t:#?}");
        assert_eq!(lines[0]["to"], C);

        status(&b, &[A], A, &dd, "01").await.unwrap();
        status(&b, &[A], A, &dd, "03").await.unwrap();
        status(&b, &[A], A, &dd, "06").await.unwrap();
        let s = document_status(&a, A, &dd).await.unwrap();
        assert_eq!(s.recipients[0].state, "completed");
        assert!(!s.recipients[0].overdue, "completing clears the flag");
    })
    .await;
}

//! Who may speak for a document: an agency representing another sends new
//! documents in its name, and the report says who really sent them; a
//! recall, update, replacement or status notice in another agency's name
//! needs that agency's signature; the lenient edXML policy relaxes the
//! format of a package, never who may recall or answer a document; and a
//! recipient whose copy was withdrawn by a recall reads nothing of it.

use std::time::Duration;

use lienthong_testkit::edxml::{self, Business};
use lienthong_testkit::v1::{self, BusinessType, FetchEdxmlRequest};
use lienthong_testkit::*;
use tonic::Code;

fn assert_refused<T: std::fmt::Debug>(
    r: Result<T, tonic::Status>,
    code: Code,
    reason: &str,
    words: &[&str],
) -> tonic::Status {
    let err = r.expect_err("refused");
    assert_eq!(err.code(), code, "{err:?}");
    assert_eq!(reason_of(&err).as_deref(), Some(reason), "{err:?}");
    for w in words {
        assert!(
            err.message().contains(w),
            "the sentence says {w:?}: {}",
            err.message()
        );
    }
    err
}

fn summary(d: &v1::Delivery) -> String {
    d.verification
        .as_ref()
        .map(|v| v.summary.clone())
        .unwrap_or_default()
}

/// A draft of `agency` that recalls (or updates…) `target`.
fn referring(agency: &Agency, to: &[&str], kind: BusinessType, target: &str) -> Draft {
    let mut draft = agency.draft_document(to, "Văn bản liên quan", &[]);
    let doc = draft.document_mut();
    doc.document_id = format!("{}-{}", doc.document_id, kind.as_str_name());
    doc.business = Some(v1::Business {
        r#type: kind as i32,
        reason: "Thu hồi để chỉnh sửa".into(),
        replaces: target.to_owned(),
        ..Default::default()
    });
    draft
}

/// A DocumentId of `from`, unique within the test run.
fn document_id(from: &str, n: &str) -> String {
    format!(
        "{from},2026/11/24,{n}-{}/UBND-VP",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_sends_new_documents_for_its_principal_and_needs_its_signature_for_the_rest() {
    let Some(gw) = TestGateway::start("authority_agent", Backend::Sqlite).await else {
        return;
    };
    within(Duration::from_secs(180), "an agent's edXML", async {
        // Văn phòng UBND tỉnh (A) represents UBND tỉnh (PROVINCE).
        let out = gw.run_cli(&["directory", "represent", A, PROVINCE]).await;
        assert!(out.status.success(), "{}", describe_output(&out));
        let agent = gw.agency(A);
        let b = gw.agency(B);

        // A new document in the principal's name, unsigned (edXML): carried,
        // and the report names who really sent it.
        let original = document_id(PROVINCE, "15");
        let package = edxml::document(
            PROVINCE,
            &[B],
            &original,
            "Quyết định của UBND tỉnh",
            Business::New,
            &[("quyet-dinh.txt", "Quyết định số 15".as_bytes())],
        );
        let receipt = edxml::send(&agent, "agent-new-1", package)
            .await
            .expect("an agent's new document in its principal's name");
        assert_eq!(receipt.from, PROVINCE);
        let d = receive_message(&b, "agent-new-1").await;
        let said = summary(&d);
        assert!(
            said.contains(&format!("sent by {A} for {PROVINCE}")),
            "the recipient is told who sent it: {said}"
        );
        assert!(
            !said.contains(&format!("authenticated identity of {PROVINCE}")),
            "the principal authenticated nothing: {said}"
        );
        let log = gw.trace_json("agent-new-1", Some(PROVINCE)).await;
        let accepted = log
            .iter()
            .find(|e| e["kind"] == "accepted")
            .expect("an accepted line");
        assert!(
            accepted["detail"]
                .as_str()
                .unwrap_or_default()
                .contains(&format!("sent by {A} for {PROVINCE}")),
            "the transfer log names the agent: {log:#?}"
        );

        // A recall, update or replacement in the principal's name, unsigned:
        // refused, with what to do.
        for (n, business) in [
            ("recall", Business::Recall(&original)),
            ("update", Business::Update(&original)),
            ("replace", Business::Replace(&original)),
        ] {
            let package = edxml::document(
                PROVINCE,
                &[B],
                &document_id(PROVINCE, n),
                "Thu hồi / cập nhật / thay thế",
                business,
                &[],
            );
            assert_refused(
                edxml::send(&agent, &format!("agent-{n}"), package).await,
                Code::PermissionDenied,
                "PERMISSION_DENIED",
                &[PROVINCE, "signature", "bind-cert"],
            );
        }
        // So is a status notice in the principal's name about a document
        // B sent it.
        let to_province = b
            .send_document(&[PROVINCE], "Báo cáo gửi UBND tỉnh", &[])
            .await
            .unwrap();
        let package = edxml::status(PROVINCE, B, &to_province.document().document_id, "03");
        assert_refused(
            edxml::send(&agent, "agent-status-03", package).await,
            Code::PermissionDenied,
            "PERMISSION_DENIED",
            &[PROVINCE, "signature"],
        );
        // Nothing of them reached B.
        tokio::time::sleep(Duration::from_millis(300)).await;
        for d in b.receive_all(0).await.unwrap() {
            let id = decode_envelope(d.envelope.as_ref().unwrap()).message_id;
            assert!(!id.starts_with("agent-"), "{id} was delivered");
            b.ack(&d.delivery_id).await.unwrap();
        }

        // The same recall signed with the principal's key, sent by the
        // agent: accepted, and the report says both.
        let province_by_agent = gw.agency(PROVINCE).with_caller(Some(A));
        let recall = referring(&province_by_agent, &[B], BusinessType::Recall, &original);
        let sent = province_by_agent
            .send_draft(&recall)
            .await
            .expect("a recall signed by the principal");
        let d = receive_message(&b, sent.message_id()).await;
        let said = summary(&d);
        assert!(
            said.contains(&format!("bound to {PROVINCE}"))
                && said.contains(&format!("sent by {A} for {PROVINCE}")),
            "{said}"
        );
        // And a signed status notice in its name.
        let signed_status = v1::Envelope {
            message_id: uuid::Uuid::new_v4().to_string(),
            from: PROVINCE.into(),
            to: vec![B.into()],
            created_at: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
            body: Some(v1::envelope::Body::Status(v1::StatusNotice {
                document_id: to_province.document().document_id.clone(),
                document_from: B.into(),
                code: "03".into(),
                description: "Đã tiếp nhận".into(),
                at: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
                ..Default::default()
            })),
            ..Default::default()
        };
        province_by_agent
            .send_signed(province_by_agent.sign(&signed_status), Vec::new())
            .await
            .expect("a status notice signed by the principal");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lenient_edxml_never_lets_an_agency_recall_or_answer_another_agencys_document() {
    // The default edXML policy is lenient.
    let Some(gw) = TestGateway::start("authority_lenient", Backend::Sqlite).await else {
        return;
    };
    within(Duration::from_secs(180), "lenient authority", async {
        let a = gw.agency(A);
        let b = gw.agency(B);
        let c = gw.agency(C);
        let sent = a
            .send_document(&[B], "Văn bản của Văn phòng UBND tỉnh", &[])
            .await
            .unwrap();
        let target = sent.document().document_id.clone();
        receive_message(&b, sent.message_id()).await;

        // C recalls A's document, and answers it, in well-formed packages.
        let package = edxml::document(
            C,
            &[B],
            &document_id(C, "9"),
            "Thu hồi văn bản của cơ quan khác",
            Business::Recall(&target),
            &[],
        );
        assert_refused(
            edxml::send(&c, "c-recalls-a", package).await,
            Code::PermissionDenied,
            "PERMISSION_DENIED",
            &["only its sender"],
        );
        let package = edxml::document(
            C,
            &[B],
            &document_id(C, "10"),
            "Thay thế văn bản của cơ quan khác",
            Business::Replace(&target),
            &[],
        );
        assert_refused(
            edxml::send(&c, "c-replaces-a", package).await,
            Code::PermissionDenied,
            "PERMISSION_DENIED",
            &["only its sender"],
        );
        let package = edxml::status(C, A, &target, "03");
        assert_refused(
            edxml::send(&c, "c-answers-a", package).await,
            Code::PermissionDenied,
            "PERMISSION_DENIED",
            &["not a recipient"],
        );
        let log = gw.trace_json("c-recalls-a", Some(C)).await;
        assert!(
            log.iter()
                .any(|e| e["kind"] == "rejected" && e["reason"] == "PERMISSION_DENIED"),
            "{log:#?}"
        );
        // B's copy is untouched.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            b.receive_all(0).await.unwrap().is_empty(),
            "nothing was carried to B"
        );

        // The document's own sender recalls it the same way: carried.
        let package = edxml::document(
            A,
            &[B],
            &document_id(A, "11"),
            "Thu hồi văn bản",
            Business::Recall(&target),
            &[],
        );
        edxml::send(&a, "a-recalls-a", package)
            .await
            .expect("the sender's own recall");
        receive_message(&b, "a-recalls-a").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawn_recipient_can_no_longer_read_the_recalled_document() {
    let Some(gw) = TestGateway::start("authority_withdrawn", Backend::Sqlite).await else {
        return;
    };
    within(Duration::from_secs(180), "a withdrawn copy", async {
        let a = gw.agency(A);
        let b = gw.agency(B);
        let c = gw.agency(C);
        let sent = a
            .send_document(
                &[B, C],
                "Văn bản sẽ thu hồi",
                &[AttachmentSpec::text("noi-dung.txt", "nội dung sẽ thu hồi")],
            )
            .await
            .unwrap();
        let id = sent.message_id().to_string();
        // B holds a copy; C has not fetched its own yet.
        receive_message(&b, &id).await;
        let recall = referring(
            &a,
            &[B, C],
            BusinessType::Recall,
            &sent.document().document_id,
        );
        a.send_draft(&recall).await.expect("recall");

        let err = assert_refused(
            c.fetch_attachment_sha256(&id, A, 0).await,
            Code::NotFound,
            "NOT_FOUND",
            &["recalled", "withdrawn"],
        );
        assert!(!err.message().contains("nội dung"), "{}", err.message());
        let edxml = c
            .exchange()
            .fetch_edxml(c.request(FetchEdxmlRequest {
                message_id: id.clone(),
                from: A.into(),
            }))
            .await;
        assert_refused(edxml, Code::NotFound, "NOT_FOUND", &["recalled"]);
        // What happened stays visible to C.
        let events = c.trace(&id, A).await.expect("C sees the trail");
        assert!(
            events.iter().any(|e| e.kind == "accepted"),
            "{}",
            format_events(&events)
        );

        // The sender keeps its frozen copy; B received it before the recall.
        let want = sent.attachments[0].digest();
        assert_eq!(a.fetch_attachment_sha256(&id, A, 0).await.unwrap(), want);
        assert_eq!(b.fetch_attachment_sha256(&id, A, 0).await.unwrap(), want);
    })
    .await;
}

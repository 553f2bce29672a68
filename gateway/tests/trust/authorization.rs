//! Who may do what: an agency sends only as itself or as an agency it
//! represents, and sees only its own messages; an operator sees every trace
//! but has no inbox and sends nothing.

use std::time::Duration;

use lienthong_testkit::*;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sending_as_another_agency_needs_a_representation() {
    let Some(gw) = TestGateway::start("authz_represents", Backend::Sqlite).await else {
        return;
    };
    within(Duration::from_secs(120), "representation", async {
        // Văn phòng UBND tỉnh (A) sends in the name of UBND tỉnh, signing
        // with the province's key.
        let province_by_a = gw.agency(PROVINCE).with_caller(Some(A));
        let err = province_by_a
            .send_document(&[B], "Quyết định của UBND tỉnh", &[])
            .await
            .expect_err("not yet allowed");
        assert_eq!(
            reason_of(&err).as_deref(),
            Some("SENDER_MISMATCH"),
            "{err:?}"
        );
        assert!(err.message().contains("represent"), "{}", err.message());

        let out = gw.run_cli(&["directory", "represent", A, PROVINCE]).await;
        assert!(out.status.success(), "{}", describe_output(&out));
        let sent = province_by_a
            .send_document(&[B], "Quyết định của UBND tỉnh", &[])
            .await
            .expect("A represents the province now");
        assert_eq!(sent.receipt.from, PROVINCE);

        // Nobody else does.
        let province_by_c = gw.agency(PROVINCE).with_caller(Some(C));
        let err = province_by_c
            .send_document(&[B], "giả danh", &[])
            .await
            .expect_err("C does not represent the province");
        assert_eq!(reason_of(&err).as_deref(), Some("SENDER_MISMATCH"));

        // Revoked, it ends.
        let out = gw
            .run_cli(&["directory", "represent", A, PROVINCE, "--revoke"])
            .await;
        assert!(out.status.success(), "{}", describe_output(&out));
        let err = province_by_a
            .send_document(&[B], "sau khi thu hồi", &[])
            .await
            .expect_err("revoked");
        assert_eq!(reason_of(&err).as_deref(), Some("SENDER_MISMATCH"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agency_sees_only_its_own_messages() {
    let Some(gw) = TestGateway::start("authz_own", Backend::Sqlite).await else {
        return;
    };
    within(Duration::from_secs(120), "own messages", async {
        let a = gw.agency(A);
        let b = gw.agency(B);
        let c = gw.agency(C);
        let sent = c
            .send_document(
                &[B],
                "Giữa C và B",
                &[AttachmentSpec::text("bi-mat.txt", "nội dung")],
            )
            .await
            .unwrap();
        let id = sent.message_id().to_string();

        let err = a
            .trace(&id, C)
            .await
            .expect_err("A is neither sender nor recipient");
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        assert_eq!(reason_of(&err).as_deref(), Some("PERMISSION_DENIED"));
        let err = a
            .fetch_attachment_sha256(&id, C, 0)
            .await
            .expect_err("A may not fetch it");
        assert_eq!(
            reason_of(&err).as_deref(),
            Some("PERMISSION_DENIED"),
            "{err:?}"
        );

        let got = b.receive_all(0).await.unwrap();
        assert_eq!(got.len(), 1);
        let err = a
            .ack(&got[0].delivery_id)
            .await
            .expect_err("not A's delivery");
        assert_eq!(reason_of(&err).as_deref(), Some("NOT_FOUND"), "{err:?}");
        assert!(
            a.receive_all(0).await.unwrap().is_empty(),
            "A's inbox is its own"
        );

        // The sender and the recipient may.
        assert!(b.trace(&id, C).await.is_ok());
        assert!(c.fetch_attachment_sha256(&id, C, 0).await.is_ok());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_traces_everything_and_sends_nothing() {
    let opts = GatewayOptions {
        mtls: true,
        ..Default::default()
    };
    let Some(gw) = TestGateway::start_with("authz_operator", opts).await else {
        return;
    };
    within(Duration::from_secs(120), "the operator", async {
        let b = gw.agency(B);
        let c = gw.agency(C);
        let sent = c
            .send_document(
                &[B],
                "Giữa C và B",
                &[AttachmentSpec::text("to-trinh.txt", "nội dung")],
            )
            .await
            .unwrap();
        let id = sent.message_id().to_string();
        assert_eq!(b.receive_all(0).await.unwrap().len(), 1);

        // An operator's client certificate, issued by the trusted CA.
        let operator = gw.operator_grpc("Trung tâm CNTT", "admin").await;

        let events = operator
            .trace(&id, C)
            .await
            .expect("an operator traces any message");
        assert!(
            events.iter().any(|e| e.kind == "delivered" && e.to == B),
            "{}",
            format_events(&events)
        );
        // The trail, not the content: the document is for its sender and
        // recipients.
        let err = operator
            .fetch_attachment_sha256(&id, C, 0)
            .await
            .expect_err("an operator does not read a document's attachments");
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        assert!(err.message().contains("trail"), "{err:?}");
        assert!(b.fetch_attachment_sha256(&id, C, 0).await.is_ok());

        // No inbox, whatever the operator's account is called.
        let err = operator
            .receive_all(0)
            .await
            .expect_err("an operator has no inbox");
        assert_eq!(
            reason_of(&err).as_deref(),
            Some("PERMISSION_DENIED"),
            "{err:?}"
        );
        let named_b = gw.operator_grpc(B, "admin").await;
        let err = named_b
            .receive_all(0)
            .await
            .expect_err("an operator account named like an agency reads no inbox");
        assert!(err.message().contains("no inbox"), "{err:?}");
        assert_eq!(
            b.receive_all(0).await.unwrap().len(),
            1,
            "B's unacknowledged delivery still waits for B"
        );
        let err = operator
            .send_document(&[B], "vận hành gửi thay", &[])
            .await
            .expect_err("an operator does not send documents");
        assert_eq!(
            reason_of(&err).as_deref(),
            Some("SENDER_MISMATCH"),
            "{err:?}"
        );
    })
    .await;
}

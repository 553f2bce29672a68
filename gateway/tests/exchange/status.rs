//! Status notices answer documents: a signed status for a document the
//! gateway never carried is refused with NOT_FOUND and a sentence, logged,
//! and leaves nothing in the sender's inbox.

use std::time::Duration;

use lienthong_testkit::*;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_for_an_unknown_document_is_refused() {
    let Some(gw) = TestGateway::start("status_unknown_document", Backend::Sqlite).await else {
        return;
    };
    within(Duration::from_secs(120), "the status checks", async {
        let a = gw.agency(A);
        let b = gw.agency(B);
        let err = b
            .send_status(A, "000.00.01.H35,2026/01/01,99/KHONG-CO", "03")
            .await
            .expect_err("a status for a document never carried must be refused");
        assert_eq!(err.code(), Code::NotFound, "{err:?}");
        assert_eq!(reason_of(&err).as_deref(), Some("NOT_FOUND"));
        assert!(
            err.message().contains("has not carried"),
            "{}",
            err.message()
        );
        assert!(a.receive_all(0).await.unwrap().is_empty());

        // The same status for a document that was carried goes through.
        let sent = a.send_document(&[B], "Văn bản có thật", &[]).await.unwrap();
        let doc_id = sent.document().document_id.clone();
        b.send_status(A, &doc_id, "03")
            .await
            .expect("a status for a known document");
        let got = a.receive_all(0).await.unwrap();
        assert_eq!(got.len(), 1);
    })
    .await;
}

//! Signatures through the pipeline: a signer's chain is verified once and
//! kept for its next documents, while the directory's binding of its key to
//! the sender is still judged for every one of them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use lienthong_core as lt;
#[path = "support/world.rs"]
mod world;

use lt::error::Reason;
use lt::store::DirectoryChange;
use world::{Doc, World};

const A: usize = 0;
const B: usize = 1;

#[tokio::test]
async fn a_signers_chain_is_verified_once_and_its_binding_at_every_document() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/s.db", dir.path().display());
    let agencies = [
        ("000.00.01.H35", "Văn phòng UBND tỉnh Lai Châu"),
        ("000.00.12.H35", "Sở Khoa học và Công nghệ"),
    ]
    .map(|(a, b)| (a.to_owned(), b.to_owned()));
    let w = World::open(&url, &dir.path().join("blobs"), &agencies)
        .await
        .unwrap();
    let doc = |n: &str| Doc {
        code_number: n.to_owned(),
        code_notation: "QĐ-UBND".to_owned(),
        subject: format!("Quyết định số {n}"),
        due_date: String::new(),
    };
    for n in ["1", "2", "3"] {
        w.send_document(A, &[B], &doc(n)).await.unwrap();
    }
    let stats = w.anchors().chain_cache_stats();
    assert_eq!((stats.verified, stats.reused), (1, 2), "{stats:?}");

    // B's key signing as A: B's chain is trusted (and now kept), its key is
    // not A's.
    w.send_document(B, &[A], &doc("4")).await.unwrap();
    assert_eq!(w.refused(A, 1).await, Reason::CertificateNotBound);

    // A's key unbound: A's chain is still kept, A's documents are refused.
    let (_, chain) = w.signing(A).unwrap();
    let key = hex::encode(lt::signing::spki_sha256(&chain[0]).unwrap());
    w.store
        .change_directory(DirectoryChange {
            unbind_signing: vec![(key, w.id(A).to_owned())],
            ..Default::default()
        })
        .await
        .unwrap();
    let refused = w.send_document(A, &[B], &doc("5")).await.unwrap_err();
    assert_eq!(refused.reason(), Reason::CertificateNotBound, "{refused:?}");
    let stats = w.anchors().chain_cache_stats();
    assert_eq!((stats.verified, stats.entries), (2, 2), "{stats:?}");
}

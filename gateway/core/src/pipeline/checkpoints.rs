//! The transfer log's checkpoints on the gateway's side: written with the
//! receipt key, checked with the receipt certificates (the store's
//! `checkpoint` module says what they record and why).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use lienthong_pki::receipts::{DetachedSignature, ReceiptSigner, ReceiptSigners};

use super::Gateway;
use crate::error::Result;
use crate::store::{
    CHECKPOINT_PAYLOAD_TYPE, Checkpoint, CheckpointSignature, CheckpointSigner, CheckpointVerifier,
    LogVerification,
};

/// The gateway's receipt key, signing checkpoints.
#[derive(Debug, Clone)]
pub struct ReceiptKey(pub Arc<ReceiptSigner>);

impl CheckpointSigner for ReceiptKey {
    fn sign(&self, signed_bytes: &[u8]) -> Result<CheckpointSignature> {
        let d = self
            .0
            .sign_detached(CHECKPOINT_PAYLOAD_TYPE, signed_bytes)?;
        Ok(CheckpointSignature {
            algorithm: d.algorithm,
            key_sha256: d.key_sha256,
            value: d.value,
        })
    }
}

/// The gateway's receipt certificates (`receipts.cert`,
/// `receipts.trusted_signers`), checking checkpoints.
#[derive(Debug, Clone, Default)]
pub struct ReceiptCerts(pub ReceiptSigners);

impl CheckpointVerifier for ReceiptCerts {
    fn verify(&self, signed_bytes: &[u8], sig: &CheckpointSignature) -> Result<()> {
        let d = DetachedSignature {
            algorithm: sig.algorithm.clone(),
            key_sha256: sig.key_sha256,
            value: sig.value.clone(),
        };
        self.0
            .verify_detached(CHECKPOINT_PAYLOAD_TYPE, signed_bytes, &d)
            .map(|_| ())
    }
}

impl ReceiptCerts {
    /// `None` when there is no certificate: signed checkpoints are then
    /// counted as unchecked rather than each reported as not the gateway's.
    pub fn as_verifier(&self) -> Option<&dyn CheckpointVerifier> {
        (!self.0.is_empty()).then_some(self as &dyn CheckpointVerifier)
    }
}

impl Gateway {
    /// Appends a checkpoint to this replica's chain, signed with the
    /// receipt key when there is one.
    pub async fn write_checkpoint(&self) -> Result<Checkpoint> {
        let key = self.inner.receipt_signer.clone().map(ReceiptKey);
        self.store()
            .write_checkpoint(key.as_ref().map(|k| k as &dyn CheckpointSigner))
            .await
    }

    /// `log verify` with the checkpoints' signatures checked against the
    /// gateway's receipt certificates.
    pub async fn verify_log(&self) -> Result<LogVerification> {
        self.store()
            .verify_log_with(self.inner.receipt_certs.as_verifier())
            .await
    }
}

/// Writes a checkpoint every `every` until `stop`, the first one `every`
/// from now (`serve` writes one at start and one at a clean stop itself).
/// A failed checkpoint is logged and the next one tried on time: it only
/// leaves a longer stretch of the log unwitnessed.
pub async fn watch_checkpoints(gw: Gateway, every: Duration, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep(every) => {}
        }
        if let Err(e) = gw.write_checkpoint().await {
            tracing::warn!(error = %e.chain(), "could not write a checkpoint of the transfer log; the next one is tried on time");
        }
    }
}

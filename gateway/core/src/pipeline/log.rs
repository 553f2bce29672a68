//! What the pipeline writes to the transfer log: refusals (with their
//! reason codes), integrity failures and the other events of a submission.

use lienthong_proto::v1::SendReceipt;

use crate::error::{Error, Reason};
use crate::store::{EventKind, NewEvent};
use crate::text;

use super::{Caller, Gateway, Inner, Role, Transport};

/// Where a refusal is logged: who sent what, as far as it could be read.
#[derive(Debug, Clone)]
pub(super) struct Subject {
    pub(super) sender: String,
    pub(super) message_id: String,
    pub(super) actor: Option<String>,
    pub(super) transport: Transport,
}

impl Inner {
    pub(super) async fn log_integrity(&self, subject: &Subject, index: u32, err: &Error) {
        if err.reason() != Reason::DigestMismatch {
            return;
        }
        self.log_event(
            subject,
            EventKind::IntegrityFailed,
            Some(err.reason().as_str()),
            &format!("attachment {index}: {}", err.message()),
        )
        .await;
    }

    /// Signs a receipt with the gateway's key, when it has one. The message
    /// is durable by now: a signing failure is logged, never turned into a
    /// refusal of an accepted message.
    pub(super) fn seal_receipt(&self, mut receipt: SendReceipt) -> SendReceipt {
        if let Some(signer) = &self.receipt_signer
            && let Err(e) = signer.sign(&mut receipt)
        {
            tracing::error!(message_id = %receipt.message_id, error = %e.chain(), "could not sign a receipt");
        }
        receipt
    }

    pub(super) async fn log_refusal(&self, subject: &Subject, err: &Error) {
        self.metrics.message_refused(err.reason());
        tracing::warn!(
            message_id = %subject.message_id,
            from = %subject.sender,
            reason = %err.reason(),
            transport = subject.transport.as_str(),
            error = %err.chain(),
            "refused"
        );
        let e = Self::new_event(
            subject,
            EventKind::Rejected,
            Some(err.reason().as_str()),
            err.message(),
        );
        if err.reason() == Reason::Unavailable {
            // An outage, most often of the database that keeps the log:
            // the sender is told to try again at once, not after the log's
            // own wait for a connection; the line is written when the
            // database takes it, or said in the process log.
            let store = self.store.clone();
            tokio::spawn(async move {
                if let Err(err) = store.log(e).await {
                    tracing::error!(error = %err.chain(), kind = EventKind::Rejected.as_str(), "could not write to the transfer log");
                }
            });
            return;
        }
        self.write_event(e).await;
    }

    pub(super) async fn log_event(
        &self,
        subject: &Subject,
        kind: EventKind,
        reason: Option<&str>,
        detail: &str,
    ) {
        self.write_event(Self::new_event(subject, kind, reason, detail))
            .await;
    }

    async fn write_event(&self, e: NewEvent) {
        let kind = e.kind;
        if let Err(err) = self.store.log(e).await {
            // The refusal itself still reaches the sender; the operator sees this.
            tracing::error!(error = %err.chain(), kind = kind.as_str(), "could not write to the transfer log");
        }
    }

    fn new_event(
        subject: &Subject,
        kind: EventKind,
        reason: Option<&str>,
        detail: &str,
    ) -> NewEvent {
        // What a caller sent may be quoted here; the log keeps it printable
        // (and storable: PostgreSQL refuses a NUL in text).
        NewEvent {
            kind,
            sender: text::printable(&subject.sender).into_owned(),
            message_id: text::printable(&subject.message_id).into_owned(),
            recipient: None,
            reason: reason.map(str::to_owned),
            detail: text::printable(detail).into_owned(),
            actor: subject.actor.clone(),
            transport: subject.transport.as_str().to_owned(),
        }
    }
}

impl Gateway {
    /// Logs a refusal that happened before a submission could begin (a
    /// transport that could not even decode the request) and returns it.
    pub async fn refuse(&self, caller: Option<&Caller>, message_id: &str, err: Error) -> Error {
        let subject = Subject {
            // A publisher on the exchange is no agency: the sender stays
            // unknown until an envelope names it.
            sender: caller
                .filter(|c| c.role != Role::Exchange)
                .map(|c| c.organ_id.clone())
                .unwrap_or_default(),
            message_id: message_id.to_owned(),
            actor: caller.map(|c| c.organ_id.clone()),
            transport: caller.map(|c| c.transport).unwrap_or(Transport::Grpc),
        };
        self.inner.log_refusal(&subject, &err).await;
        err
    }
}

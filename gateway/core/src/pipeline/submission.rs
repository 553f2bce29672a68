//! A submission from its first byte to its receipt: the envelope is
//! checked ([`super::checks`]), its attachments stream into sealed blobs and
//! are verified (digests, PDF signatures), and one transaction makes the
//! message, its attachments and its deliveries durable before the receipt
//! is signed.

use std::collections::HashSet;
use std::sync::Arc;

use lienthong_proto::v1::{
    self as pb, AttachmentRef, Envelope, SendReceipt, SignedEnvelope, TraceHop, Verification,
};
use prost::Message as _;

use crate::blobs::{BlobWriter, SealedBlob};
use crate::error::{Error, Reason, Result};
use crate::organ_id::IdPolicy;
use crate::rows::{DeliveryRow, MessageRow};
use crate::store::{AcceptError, EventKind, NewAttachment, NewMessage, now_micros};
use lienthong_types::{Route, timestamp};

use super::{Caller, Gateway, Inner, PdfPolicy, Role, Subject};

/// How a message taken from an AMQP queue reached this gateway.
#[derive(Debug, Clone, Default)]
pub struct Arrival {
    /// The exchange it was published to (`""`: the default exchange).
    pub exchange: String,
    /// The hops it made before this gateway, oldest first.
    pub upstream: Vec<TraceHop>,
}

/// The hops a message made before it reached this gateway, as stored in
/// `messages.upstream` and carried in the AMQP header `x-lienthong-hops`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Hops {
    #[prost(message, repeated, tag = "1")]
    pub hops: Vec<TraceHop>,
}

/// What vouches for an envelope's origin.
#[derive(Debug)]
pub(super) enum Proof {
    /// Its signatures, chained to the trust anchors and bound to `from`.
    Signatures,
    /// The transport's authentication of the caller (edXML submissions).
    CallerIdentity {
        policy: IdPolicy,
        notes: Vec<String>,
    },
}

/// A submission between its envelope and its last attachment byte.
#[derive(Debug)]
pub struct Submission {
    pub(super) gw: Arc<Inner>,
    pub(super) state: State,
}

#[derive(Debug)]
pub(super) enum State {
    /// A repeat of an accepted message: attachment bytes are read and dropped.
    Duplicate(Box<SendReceipt>),
    Open(Box<Open>),
    /// Finished or refused.
    Closed,
}

#[derive(Debug)]
pub(super) struct Open {
    pub(super) subject: Subject,
    pub(super) caller: Caller,
    pub(super) message: NewMessage,
    pub(super) verification: Verification,
    pub(super) envelope_sha: [u8; 32],
    pub(super) refs: Vec<AttachmentRef>,
    pub(super) current: usize,
    pub(super) writer: Option<BlobWriter>,
    pub(super) sealed: Vec<SealedBlob>,
    pub(super) started: std::time::Instant,
    /// Documents (not status notices) get their PDF attachments' signatures
    /// checked.
    pub(super) pdf_check: Option<PdfCheck>,
}

#[derive(Debug)]
pub(super) struct PdfCheck {
    /// The envelope's Signer.FullName, for the Decree 30 comparison.
    pub(super) signer_name: Option<String>,
    /// When the envelope arrived: signatures without a trusted timestamp
    /// are judged at this time, not at the one they claim.
    pub(super) received_at: rustls_pki_types::UnixTime,
}

impl Submission {
    pub(super) fn duplicate(gw: Arc<Inner>, receipt: SendReceipt) -> Submission {
        Submission {
            gw,
            state: State::Duplicate(Box::new(receipt)),
        }
    }

    /// Whether this answers a repeat of an accepted message.
    pub fn is_duplicate(&self) -> bool {
        matches!(self.state, State::Duplicate(_))
    }

    /// The message_id being submitted (empty for a duplicate).
    pub fn message_id(&self) -> &str {
        match &self.state {
            State::Open(o) => &o.message.message_id,
            State::Duplicate(r) => &r.message_id,
            State::Closed => "",
        }
    }

    /// Takes the next bytes of attachment `index`. Attachments come in
    /// order; each must be complete before the next begins.
    pub async fn write_chunk(&mut self, index: u32, data: &[u8]) -> Result<()> {
        let open = match &mut self.state {
            State::Open(o) => o,
            State::Duplicate(_) => return Ok(()),
            State::Closed => {
                return Err(Error::malformed("the submission is already closed"));
            }
        };
        match open.write_chunk(&self.gw, index as usize, data).await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.fail(e).await),
        }
    }

    /// Ends the stream: checks every attachment, makes the message durable
    /// and routes it. Only then is there a receipt.
    pub async fn finish(mut self) -> Result<SendReceipt> {
        let state = std::mem::replace(&mut self.state, State::Closed);
        match state {
            State::Duplicate(r) => Ok(self.gw.seal_receipt(*r)),
            State::Closed => Err(Error::malformed("the submission is already closed")),
            State::Open(open) => {
                let subject = open.subject.clone();
                match open.finish(&self.gw).await {
                    Ok(receipt) => Ok(self.gw.seal_receipt(receipt)),
                    Err(e) => {
                        self.gw.log_refusal(&subject, &e).await;
                        Err(e)
                    }
                }
            }
        }
    }

    /// Gives up (the transport broke or the client went away): nothing is
    /// kept, the refusal is logged.
    pub async fn abort(mut self, err: Error) -> Error {
        self.fail(err).await
    }

    pub(super) async fn fail(&mut self, err: Error) -> Error {
        if let State::Open(open) = std::mem::replace(&mut self.state, State::Closed) {
            // Dropping `open` removes its temporary files.
            self.gw.log_refusal(&open.subject, &err).await;
        }
        err
    }
}

impl Drop for Submission {
    fn drop(&mut self) {
        if let State::Open(open) = std::mem::replace(&mut self.state, State::Closed) {
            // The transport dropped us mid-stream (the client went away).
            // Temporary files go with `open`; the log line needs a task.
            let gw = self.gw.clone();
            let subject = open.subject.clone();
            drop(open);
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let err = Error::malformed(
                        "the stream was abandoned before it ended; nothing was accepted, send the message again",
                    );
                    gw.log_refusal(&subject, &err).await;
                });
            }
        }
    }
}

impl Open {
    pub(super) async fn write_chunk(
        &mut self,
        gw: &Inner,
        index: usize,
        data: &[u8],
    ) -> Result<()> {
        if index >= self.refs.len() {
            return Err(Error::malformed(format!(
                "a chunk names attachment {index}, but the envelope lists {} attachment(s)",
                self.refs.len()
            )));
        }
        if index < self.current {
            return Err(Error::malformed(format!(
                "attachment chunks must come in order: a chunk of attachment {index} came after attachment {}",
                self.current
            )));
        }
        while self.current < index {
            self.close_current(gw, false).await?;
        }
        if self.writer.is_none() {
            self.writer = Some(gw.blobs.create().await?);
        }
        let declared = self.refs[index].size;
        let Some(w) = self.writer.as_mut() else {
            return Err(Error::malformed("internal: no attachment writer"));
        };
        if w.written() + data.len() as u64 > declared {
            return Err(Error::new(
                Reason::DigestMismatch,
                format!(
                    "attachment {index} ({}) has more bytes than the {declared} its signed envelope declares",
                    self.refs[index].name
                ),
            ));
        }
        w.write(data).await
    }

    /// Seals the current attachment and checks it against the envelope.
    pub(super) async fn close_current(&mut self, gw: &Inner, at_end: bool) -> Result<()> {
        let i = self.current;
        let r = &self.refs[i];
        let writer = match self.writer.take() {
            Some(w) => w,
            None => gw.blobs.create().await?,
        };
        if writer.written() != r.size {
            let got = writer.written();
            return Err(if at_end {
                Error::malformed(format!(
                    "the stream ended after {got} of the {} bytes of attachment {i} ({}); send every attachment whole",
                    r.size, r.name
                ))
            } else {
                Error::new(
                    Reason::DigestMismatch,
                    format!(
                        "attachment {i} ({}) has {got} bytes but its signed envelope declares {}",
                        r.name, r.size
                    ),
                )
            });
        }
        let sealed = writer.seal().await?;
        if sealed.sha256.as_slice() != r.sha256.as_ref() {
            return Err(Error::new(
                Reason::DigestMismatch,
                format!(
                    "attachment {i} ({}) has SHA-256 {} but its signed envelope declares {}; the bytes were changed or the wrong file was sent",
                    r.name,
                    hex::encode(sealed.sha256),
                    hex::encode(&r.sha256)
                ),
            ));
        }
        self.sealed.push(sealed);
        self.current += 1;
        Ok(())
    }

    pub(super) async fn finish(mut self: Box<Self>, gw: &Arc<Inner>) -> Result<SendReceipt> {
        while self.current < self.refs.len() {
            self.close_current(gw, true).await?;
        }
        // The signatures inside PDF attachments, read back from the sealed
        // temporary files (a PDF's byte ranges are known only once its end
        // has arrived), before anything is committed: under `require` an
        // unsigned document is refused here and nothing of it is kept.
        if let Some(check) = &self.pdf_check {
            let pdf = check_pdfs(gw, &self.refs, &self.sealed, check).await?;
            if gw.pdf_policy == PdfPolicy::Require {
                require_signed_pdf(&self.refs, &pdf)?;
            }
            for p in &pdf {
                self.verification.summary.push_str(&format!(
                    "; PDF {} ({}): {}",
                    p.attachment_index, p.attachment_name, p.summary
                ));
            }
            self.verification.pdf = pdf;
        }
        // Blobs go into place first: a crash before the commit leaves an
        // unreferenced blob, never a message whose bytes are missing.
        let mut created = Vec::new();
        let sealed = std::mem::take(&mut self.sealed);
        for s in sealed {
            let hex = hex::encode(s.sha256);
            if gw.blobs.commit(s).await? {
                created.push(hex);
            }
        }
        self.verification.attachments_verified = true;
        if !self.refs.is_empty() {
            self.verification.summary.push_str(&format!(
                "; {} attachment(s) match their signed size and SHA-256",
                self.refs.len()
            ));
        }
        let mut msg = self.message.clone();
        msg.accepted_at = now_micros();
        msg.verification = self.verification.encode_to_vec();
        msg.attachments = self
            .refs
            .iter()
            .map(|r| NewAttachment {
                name: r.name.clone(),
                content_type: r.content_type.clone(),
                size: r.size,
                sha256_hex: hex::encode(&r.sha256),
            })
            .collect();
        let recipients: Vec<String> = msg.recipients.iter().map(|(r, _)| r.clone()).collect();
        let sender = msg.sender.clone();
        let message_id = msg.message_id.clone();
        match gw.store.accept(msg).await {
            Ok((m, deliveries)) => {
                for d in deliveries.iter().filter(|d| d.route.is_local()) {
                    gw.inboxes.landed(d, &m);
                }
                if deliveries.iter().any(|d| !d.route.is_local()) {
                    gw.outbox_wake.send_modify(|v| *v = v.wrapping_add(1));
                }
                let routes: HashSet<&Route> = deliveries.iter().map(|d| &d.route).collect();
                for route in routes {
                    gw.metrics.message_accepted(route);
                }
                gw.metrics
                    .accept_seconds(self.started.elapsed().as_secs_f64());
                tracing::info!(
                    message_id = %m.message_id,
                    from = %m.sender,
                    to = %recipients.join(","),
                    transport = self.caller.transport.as_str(),
                    "accepted"
                );
                Ok(make_receipt(&m, deliveries, false, &gw.gateway_id))
            }
            Err(AcceptError::AlreadyExists) => {
                // A concurrent submission of the same message_id won the race.
                let existing = gw.store.message(&sender, &message_id).await?;
                match existing {
                    Some(e) if e.envelope_sha256 == hex::encode(self.envelope_sha) => {
                        let deliveries = gw.store.deliveries_of(e.id).await?;
                        gw.log_event(
                            &self.subject,
                            EventKind::Duplicate,
                            None,
                            "a repeat of an accepted message; answered with the first receipt",
                        )
                        .await;
                        Ok(make_receipt(&e, deliveries, true, &gw.gateway_id))
                    }
                    _ => {
                        remove_unreferenced(gw, &created).await;
                        Err(Error::new(
                            Reason::DuplicateConflict,
                            format!(
                                "message_id {message_id} was already accepted from {sender} with different content; use a new message_id for a new message"
                            ),
                        ))
                    }
                }
            }
            Err(e @ AcceptError::Db(_)) => {
                remove_unreferenced(gw, &created).await;
                Err(e.into())
            }
        }
    }
}

/// Whether an attachment is a PDF, by what its sender declared (type,
/// manifest type or file name); the verifier then checks the bytes.
pub(super) fn is_pdf(r: &AttachmentRef) -> bool {
    let pdf_type = |t: &str| t.trim().eq_ignore_ascii_case("application/pdf");
    pdf_type(&r.content_type)
        || r.manifest
            .as_ref()
            .is_some_and(|m| pdf_type(&m.content_type))
        || r.name.to_ascii_lowercase().ends_with(".pdf")
}

/// Checks every PDF attachment's signatures, each on a blocking thread (it
/// reads the file with positioned reads and hashes it) once one of the
/// `limits.pdf_checks_in_flight` turns is free.
pub(super) async fn check_pdfs(
    gw: &Arc<Inner>,
    refs: &[AttachmentRef],
    sealed: &[SealedBlob],
    check: &PdfCheck,
) -> Result<Vec<pb::PdfVerification>> {
    let mut out = Vec::new();
    for (i, (r, blob)) in refs.iter().zip(sealed).enumerate() {
        if !is_pdf(r) {
            continue;
        }
        let busy = || {
            Error::new(
                Reason::Unavailable,
                format!(
                    "the gateway is busy checking the signatures of other documents' PDFs and \
                     could not check attachment {i} ({}) within {} s; nothing was kept, send the \
                     document again in a moment",
                    r.name,
                    gw.limits.pdf_check_wait.as_secs()
                ),
            )
        };
        let permit = tokio::time::timeout(
            gw.limits.pdf_check_wait,
            gw.pdf_checks.clone().acquire_owned(),
        )
        .await
        .map_err(|_| busy())?
        .map_err(|_| busy())?;
        let source = crate::blobs::BlobPdf(gw.blobs.source_of(blob)?);
        let anchors = gw.anchors.clone();
        let blobs = gw.blobs.clone();
        let limits = gw.limits.pdf;
        let moment = lienthong_pades::Moment::Received(check.received_at);
        let result = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let opts = lienthong_pades::Options {
                moment,
                limits,
                scratch: &crate::blobs::BlobScratch(&blobs),
            };
            lienthong_pades::verify_attachment(&source, &anchors, &opts)
        })
        .await
        .map_err(|_| {
            Error::new(
                Reason::Unavailable,
                "the PDF signature check stopped unexpectedly; send the document again",
            )
        })?;
        let v = match result {
            Ok(report) => {
                let warnings =
                    lienthong_pades::decree30_warnings(&report, check.signer_name.as_deref());
                gw.metrics.pdf_verified(report.verdict);
                gw.metrics.pdf_bytes_hashed(report.bytes_hashed);
                if let Some(why) = &report.limit_reached {
                    gw.metrics.pdf_check_limited();
                    tracing::warn!(attachment = i, name = %r.name, limit = %why, "a PDF was not fully checked");
                }
                pdf_verification(i, r, &report, warnings)
            }
            Err(lienthong_pades::AttachmentError::Storage(e)) => {
                tracing::error!(attachment = i, name = %r.name, error = %e, "a zipped PDF could not be unpacked to the store's temporary area");
                return Err(Error::new(
                    Reason::Unavailable,
                    format!(
                        "the gateway could not unpack attachment {i} ({}) to check its \
                         signatures (its storage failed); nothing was kept, send the document \
                         again later",
                        r.name
                    ),
                ));
            }
            Err(lienthong_pades::AttachmentError::Unreadable(e)) => {
                // Declared a PDF but not one: the clerk is told, and
                // `require` refuses it as unsigned-or-invalid below.
                gw.metrics.pdf_verified(lienthong_pades::Verdict::Invalid);
                pb::PdfVerification {
                    attachment_index: i as u32,
                    attachment_name: r.name.clone(),
                    verdict: lienthong_pades::Verdict::Invalid.as_str().to_owned(),
                    revisions: 0,
                    signatures: Vec::new(),
                    reasons: vec![format!(
                        "it is declared a PDF but cannot be read as one: {e}"
                    )],
                    warnings: Vec::new(),
                    summary: "không đọc được tệp PDF (not a readable PDF)".to_owned(),
                    zip_entry: String::new(),
                    limit_reached: String::new(),
                }
            }
        };
        out.push(v);
    }
    Ok(out)
}

pub(super) fn pdf_verification(
    index: usize,
    r: &AttachmentRef,
    report: &lienthong_pades::PdfReport,
    warnings: Vec<String>,
) -> pb::PdfVerification {
    pb::PdfVerification {
        attachment_index: index as u32,
        attachment_name: r.name.clone(),
        verdict: report.verdict.as_str().to_owned(),
        revisions: report.revisions as u32,
        signatures: report
            .signatures
            .iter()
            .map(|s| pb::PdfSignature {
                field: s.field.clone(),
                signer_subject: s.signer_subject.clone(),
                signer_organization: s.signer_organization.clone().unwrap_or_default(),
                signing_time: s.signing_time_unix.map(|t| prost_types::Timestamp {
                    seconds: t,
                    nanos: 0,
                }),
                claimed_signing_time: s.claimed_signing_time_unix.map(|t| prost_types::Timestamp {
                    seconds: t,
                    nanos: 0,
                }),
                judged_at: Some(prost_types::Timestamp {
                    seconds: s.judged_at_unix,
                    nanos: 0,
                }),
                timestamped: s.timestamped,
                algorithm: s.algorithm.clone(),
                digest_ok: s.digest_ok,
                signature_ok: s.signature_ok,
                chain_ok: s.chain_ok,
                trusted_anchor: s.trusted_anchor.clone().unwrap_or_default(),
                revocation: match s.revoked {
                    Some(true) => "revoked",
                    Some(false) => "not_revoked",
                    None => "unknown",
                }
                .to_owned(),
                expired_at_signing: s.expired_at_signing,
                covers_revision: s.covers_revision as u32,
                changes_after: s.changes_after.as_str().to_owned(),
            })
            .collect(),
        reasons: report.reasons.clone(),
        warnings,
        summary: report.summary(),
        zip_entry: report.zip_entry.clone().unwrap_or_default(),
        limit_reached: report.limit_reached.clone().unwrap_or_default(),
    }
}

/// `signatures.pdf = "require"`: the main PDF (the first PDF attachment)
/// must be validly signed.
pub(super) fn require_signed_pdf(
    refs: &[AttachmentRef],
    pdf: &[pb::PdfVerification],
) -> Result<()> {
    let Some(main) = pdf.first() else {
        return Err(Error::new(
            Reason::DocumentUnsigned,
            format!(
                "the document has no PDF attachment ({} attachment(s), none application/pdf), and \
                 this gateway requires the document's digitally signed PDF (signatures.pdf = \
                 \"require\"); attach the signed PDF and send again",
                refs.len()
            ),
        ));
    };
    let what = format!(
        "attachment {} ({})",
        main.attachment_index, main.attachment_name
    );
    // Not fully checked, and nothing checked failed: the limit is the why.
    if main.verdict == "indeterminate" && !main.limit_reached.is_empty() {
        return Err(Error::new(
            Reason::DocumentSignatureInvalid,
            format!(
                "the document's PDF, {what}, could not be fully checked: {}; this gateway \
                 requires a validly signed PDF (signatures.pdf = \"require\") and so cannot \
                 accept it: send the signed PDF itself, unzipped and as signed",
                main.limit_reached
            ),
        ));
    }
    match main.verdict.as_str() {
        "valid" => Ok(()),
        "unsigned" => Err(Error::new(
            Reason::DocumentUnsigned,
            format!(
                "the document's PDF, {what}, carries no digital signature, and this gateway \
                 requires one (signatures.pdf = \"require\"); have it signed by the signer and \
                 the organisation and send it again"
            ),
        )),
        _ => {
            let failed = main
                .signatures
                .iter()
                .find(|s| {
                    !(s.digest_ok && s.signature_ok && s.chain_ok)
                        || s.revocation == "revoked"
                        || s.expired_at_signing
                        || s.changes_after == "content"
                })
                .map(|s| format!("signature {} of {}", s.field, s.signer_subject))
                .unwrap_or_else(|| "its signature".to_owned());
            Err(Error::new(
                Reason::DocumentSignatureInvalid,
                format!(
                    "the document's PDF, {what}: {failed} is not valid ({}); this gateway requires \
                     a valid signature (signatures.pdf = \"require\"); sign the unaltered PDF \
                     again with a certificate of a trusted CA and send it again",
                    main.reasons
                        .first()
                        .map(String::as_str)
                        .unwrap_or(main.verdict.as_str())
                ),
            ))
        }
    }
}

pub(super) async fn remove_unreferenced(gw: &Inner, created: &[String]) {
    for hex in created {
        match gw.store.blob_referenced(hex).await {
            Ok(false) => {
                if let Err(e) = gw.blobs.remove(hex).await {
                    tracing::warn!(sha256 = %hex, error = %e.chain(), "could not remove an unreferenced blob");
                }
            }
            Ok(true) => {}
            // Unsure: keep the bytes; an unreferenced blob is harmless.
            Err(_) => {}
        }
    }
}

/// The receipt of an accepted message, as stored.
pub(super) fn make_receipt(
    m: &MessageRow,
    deliveries: Vec<DeliveryRow>,
    duplicate: bool,
    gateway: &str,
) -> SendReceipt {
    SendReceipt {
        message_id: m.message_id.clone(),
        from: m.sender.clone(),
        accepted_at: Some(timestamp(m.accepted_at)),
        envelope_sha256: hex::decode(&m.envelope_sha256).unwrap_or_default().into(),
        duplicate,
        recipients: deliveries
            .into_iter()
            .map(|d| pb::RecipientRoute {
                organ_id: d.recipient,
                route: d.route.to_string(),
            })
            .collect(),
        gateway: gateway.to_owned(),
        ..Default::default()
    }
}

impl Gateway {
    /// Starts a submission from an encoded `SignedEnvelope` (AMQP bodies,
    /// files).
    pub async fn begin_send_bytes(&self, caller: &Caller, bytes: &[u8]) -> Result<Submission> {
        match SignedEnvelope::decode(bytes) {
            Ok(signed) => self.begin_send(caller, signed, bytes.len()).await,
            Err(e) => Err(self
                .refuse(
                    Some(caller),
                    "",
                    Error::malformed(
                        "the body is not a lienthong.v1.SignedEnvelope protobuf; send the encoded SignedEnvelope bytes",
                    )
                    .with_source(e),
                )
                .await),
        }
    }

    /// Starts a submission: everything that can be checked before the
    /// attachments stream in is checked here. The returned [`Submission`]
    /// takes the attachment bytes and, at `finish`, makes the message
    /// durable and gives the receipt.
    pub async fn begin_send(
        &self,
        caller: &Caller,
        signed: SignedEnvelope,
        encoded_len: usize,
    ) -> Result<Submission> {
        self.begin(caller, signed, encoded_len, &Proof::Signatures, None)
            .await
    }

    /// Starts a submission taken from an AMQP queue: the same checks as
    /// [`Gateway::begin_send`], with the caller an [`Caller::exchange`]
    /// publisher, and the loop rule of [`crate::routing`] applied with
    /// `arrival.exchange`.
    pub async fn begin_send_arrived(
        &self,
        caller: &Caller,
        signed: SignedEnvelope,
        encoded_len: usize,
        arrival: Arrival,
    ) -> Result<Submission> {
        self.begin(
            caller,
            signed,
            encoded_len,
            &Proof::Signatures,
            Some(arrival),
        )
        .await
    }

    /// Starts a submission of an envelope that carries no signature this
    /// gateway can verify (an edXML package): it is accepted on the caller's
    /// authenticated identity alone — `from` must be the caller, or an
    /// agency it represents, and then only for a new document — and the
    /// delivery's verification report says so, with `notes` (what the
    /// package's own signature element showed). Identifiers are checked with
    /// `policy`: real producers send test-system ids such as `vxp.saas.03`.
    pub async fn begin_send_unsigned(
        &self,
        caller: &Caller,
        envelope: &Envelope,
        policy: IdPolicy,
        notes: Vec<String>,
    ) -> Result<Submission> {
        let payload = envelope.encode_to_vec();
        let len = payload.len();
        let signed = SignedEnvelope {
            payload: payload.into(),
            payload_type: pb::ENVELOPE_PAYLOAD_TYPE.to_owned(),
            signatures: Vec::new(),
        };
        self.begin(
            caller,
            signed,
            len,
            &Proof::CallerIdentity { policy, notes },
            None,
        )
        .await
    }

    pub(super) async fn begin(
        &self,
        caller: &Caller,
        signed: SignedEnvelope,
        encoded_len: usize,
        proof: &Proof,
        arrival: Option<Arrival>,
    ) -> Result<Submission> {
        // lienthong_accept_seconds covers the whole submission, signature
        // checks included.
        let started = std::time::Instant::now();
        if caller.role == Role::Exchange {
            // A message from a queue is a call of its own; callers that are
            // identified confirmed the directory when they were.
            self.inner.store.confirm_directory().await?;
        }
        let mut subject = Subject {
            sender: if caller.role == Role::Exchange {
                String::new()
            } else {
                caller.organ_id.clone()
            },
            message_id: String::new(),
            actor: Some(caller.organ_id.clone()),
            transport: caller.transport,
        };
        match self
            .check(caller, signed, encoded_len, proof, arrival, &mut subject)
            .await
        {
            Ok(mut sub) => {
                if let State::Open(open) = &mut sub.state {
                    open.started = started;
                }
                Ok(sub)
            }
            Err(err) => {
                self.inner.log_refusal(&subject, &err).await;
                Err(err)
            }
        }
    }

    pub(super) async fn receipt_for(&self, m: &MessageRow, duplicate: bool) -> Result<SendReceipt> {
        let deliveries = self.inner.store.deliveries_of(m.id).await?;
        Ok(make_receipt(
            m,
            deliveries,
            duplicate,
            &self.inner.gateway_id,
        ))
    }

    // ----- the outbox, for the AMQP relay ----------------------------------
}

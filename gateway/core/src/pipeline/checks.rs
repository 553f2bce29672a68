//! The checks an envelope passes before any attachment byte is read: size
//! and form, identifiers, the sender's authority, duplicates, signatures,
//! the document or status itself. Each refusal names what to fix.

use std::collections::HashSet;

use lienthong_proto::v1::{
    self as pb, AttachmentRef, BusinessType, Envelope, SendReceipt, SignatureCheck, SignedEnvelope,
    Verification, envelope::Body,
};
use prost::Message as _;

use rustls_pki_types::UnixTime;

use crate::error::{Error, OrErr, Reason, Result};
use crate::organ_id::{IdPolicy, OrganId};
use crate::store::{EventKind, NewMessage, now_micros};
use crate::text::{self, truncate};
use lienthong_pki::signing;
use lienthong_types::{MessageKind, Route, sha256, timestamp};

use super::lifecycle_checks::LifecycleEffect;
use super::submission::{Open, PdfCheck, State};
use super::{
    Arrival, Caller, Gateway, Hops, Limits, Proof, Role, STATUS_CODES, Subject, Submission,
};

/// Longest message_id accepted; ids are keys, not documents.
pub(super) const MAX_MESSAGE_ID: usize = 200;

/// The security classification (độ mật) a document carries, if it carries
/// one that makes it a state secret: the envelope's `confidentiality`, or
/// an edXML element producers use for it (kept in `extensions`).
pub(super) fn secret_classification(
    doc: &pb::Document,
    extensions: &[pb::XmlExtension],
) -> Option<String> {
    let secret = |v: &str| {
        let v = v.trim().to_lowercase();
        !(v.is_empty()
            || [
                "0",
                "thường",
                "thuong",
                "normal",
                "none",
                "không",
                "khong",
                "public",
            ]
            .contains(&v.as_str()))
    };
    if secret(&doc.confidentiality) {
        return Some(doc.confidentiality.trim().to_owned());
    }
    const NAMES: [&str; 6] = [
        "securitylevel",
        "confidentiality",
        "secretlevel",
        "domat",
        "secret",
        "classification",
    ];
    for e in extensions {
        let last = e.path.rsplit('/').next().unwrap_or_default();
        let local = last.rsplit(':').next().unwrap_or(last).to_lowercase();
        if !NAMES.contains(&local.as_str()) {
            continue;
        }
        // The element's text, without its tags.
        let text: String = {
            let mut out = String::new();
            let mut in_tag = false;
            for c in e.xml.chars() {
                match c {
                    '<' => in_tag = true,
                    '>' => in_tag = false,
                    c if !in_tag => out.push(c),
                    _ => {}
                }
            }
            out
        };
        if secret(&text) {
            return Some(text.trim().to_owned());
        }
    }
    None
}

/// An agent's unsigned message in its principal's name may only be a new
/// document: a recall, update, replacement or status notice changes or
/// answers what the principal did before, and only the principal's own
/// signature (or its own software) may say that.
pub(super) fn agent_may_send_unsigned(agent: &str, principal: &OrganId, body: &Body) -> Result<()> {
    let what = match body {
        Body::Status(st) => format!("status notice {}", truncate(&st.code, 8)),
        Body::Document(doc) => {
            let bt = doc.business.as_ref().map(|b| b.r#type).unwrap_or(0);
            match BusinessType::try_from(bt) {
                Ok(BusinessType::New) => return Ok(()),
                Ok(BusinessType::Recall) => "recall".to_owned(),
                Ok(BusinessType::Update) => "update".to_owned(),
                Ok(BusinessType::Replace) => "replacement".to_owned(),
                Err(_) => format!("document of business type {bt}"),
            }
        }
    };
    Err(Error::new(
        Reason::PermissionDenied,
        format!(
            "{agent} represents {principal}, but a {what} in {principal}'s name needs {principal}'s own signature; \
             send it as a signed envelope (Exchange.Send) signed with a key bound to {principal} \
             (`lienthong directory bind-cert {principal} CERT.pem`), or from {principal}'s own software; \
             nothing was kept"
        ),
    ))
}

/// The ids a refusal is logged under, as received but printable.
pub(super) fn note_ids(subject: &mut Subject, env: &Envelope) {
    subject.message_id = text::printable(truncate(&env.message_id, MAX_MESSAGE_ID)).into_owned();
    if !env.from.is_empty() {
        subject.sender = text::printable(truncate(&env.from, 64)).into_owned();
    }
}

/// The attachments' signed sizes together.
pub(super) fn refs_size(envelope: &Envelope) -> u64 {
    match &envelope.body {
        Some(Body::Document(d)) => d.attachments.iter().map(|a| a.size).sum(),
        _ => 0,
    }
}

pub(super) fn validate_message_id(id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::malformed(
            "the envelope has no message_id; give every message a unique id (a UUID is a good choice)",
        ));
    }
    if id.len() > MAX_MESSAGE_ID || id.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(Error::malformed(format!(
            "message_id must be at most {MAX_MESSAGE_ID} bytes without spaces or control characters"
        )));
    }
    Ok(())
}

pub(super) fn validate_recipients(
    to: &[String],
    max: usize,
    policy: IdPolicy,
) -> Result<Vec<OrganId>> {
    if to.is_empty() {
        return Err(Error::malformed("the envelope has no recipient in `to`"));
    }
    if to.len() > max {
        return Err(Error::new(
            Reason::SizeLimit,
            format!(
                "the envelope names {} recipients; at most {max} are allowed",
                to.len()
            ),
        ));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(to.len());
    for t in to {
        let id = OrganId::parse_with(t, policy).map_err(|e| {
            Error::new(
                Reason::BadIdentifier,
                format!("a recipient in `to`: {}", e.message()),
            )
        })?;
        if !seen.insert(id.clone()) {
            return Err(Error::malformed(format!(
                "recipient {id} is named twice in `to`"
            )));
        }
        out.push(id);
    }
    Ok(out)
}

pub(super) fn validate_document(doc: &pb::Document, limits: &Limits) -> Result<()> {
    if doc.attachments.len() > limits.max_attachments {
        return Err(Error::new(
            Reason::SizeLimit,
            format!(
                "the document lists {} attachments; at most {} are allowed",
                doc.attachments.len(),
                limits.max_attachments
            ),
        ));
    }
    for (i, a) in doc.attachments.iter().enumerate() {
        if a.size > limits.max_attachment_bytes {
            return Err(Error::new(
                Reason::SizeLimit,
                format!(
                    "attachment {i} ({}) is {} bytes, more than this gateway's limit of {} bytes",
                    truncate(&a.name, 100),
                    a.size,
                    limits.max_attachment_bytes
                ),
            ));
        }
        if a.sha256.len() != 32 {
            return Err(Error::malformed(format!(
                "attachment {i} ({}) must carry its 32-byte SHA-256; it has {} bytes",
                truncate(&a.name, 100),
                a.sha256.len()
            )));
        }
        if a.name.trim().is_empty() {
            return Err(Error::malformed(format!("attachment {i} has no file name")));
        }
    }
    Ok(())
}

pub(super) fn validate_status(st: &pb::StatusNotice, policy: IdPolicy) -> Result<OrganId> {
    if !STATUS_CODES.contains(&st.code.as_str()) {
        return Err(Error::malformed(format!(
            "status code {:?} is not one of {}",
            truncate(&st.code, 10),
            STATUS_CODES.join(", ")
        )));
    }
    if st.document_id.is_empty() {
        return Err(Error::malformed(
            "the status notice does not name the document it answers (document_id)",
        ));
    }
    OrganId::parse_with(&st.document_from, policy).map_err(|e| {
        Error::new(
            Reason::BadIdentifier,
            format!("the status notice's document_from: {}", e.message()),
        )
    })
}

/// Who sent an envelope: `from`, and the agent when the caller sent it in
/// the name of an agency it represents.
struct Sender {
    from: OrganId,
    agent: Option<String>,
}

/// What the body is, as the message's row records it.
struct Content {
    kind: MessageKind,
    document_id: String,
    ref_from: Option<String>,
    status_code: Option<String>,
    refs: Vec<AttachmentRef>,
    /// A status notice about a document this gateway has not carried.
    answers_unknown_document: bool,
}

/// The envelope inside the signed bytes, within the size limit, of the
/// right payload type, its text fields and message_id well formed.
fn read_envelope(
    signed: &SignedEnvelope,
    encoded_len: usize,
    limits: &Limits,
    subject: &mut Subject,
) -> Result<Envelope> {
    if encoded_len > limits.max_envelope_bytes {
        // The bytes are in memory already (the transport bounds them):
        // read the ids so that the refusal can be traced by message_id.
        if let Ok(env) = Envelope::decode(signed.payload.clone()) {
            note_ids(subject, &env);
        }
        return Err(Error::new(
            Reason::SizeLimit,
            format!(
                "the signed envelope is {encoded_len} bytes, more than this gateway's limit of {} bytes; send large content as attachments",
                limits.max_envelope_bytes
            ),
        ));
    }
    if signed.payload_type != pb::ENVELOPE_PAYLOAD_TYPE {
        return Err(Error::malformed(format!(
            "payload_type is {:?}; it must be {:?}",
            truncate(&signed.payload_type, 100),
            pb::ENVELOPE_PAYLOAD_TYPE
        )));
    }
    let envelope = Envelope::decode(signed.payload.clone()).or_err(
        Reason::Malformed,
        "the payload is not a lienthong.v1.Envelope protobuf; sign and send the encoded Envelope bytes",
    )?;
    note_ids(subject, &envelope);
    // Before anything of it is compared, stored or logged: PostgreSQL
    // cannot hold a NUL, and control characters break what reads the
    // columns later (indexes, reports, the dashboard).
    text::check_envelope(&envelope)?;
    validate_message_id(&envelope.message_id)?;
    Ok(envelope)
}

/// What the envelope does to a document's lifecycle, given what the
/// lifecycle said of it. Under the lenient edXML policy, what real
/// producers send is carried even when the lifecycle cannot take it (all
/// nine codes of a test run in a row, a notice about a document that reached
/// its recipient another way): the notice travels, the report says why it
/// did not count, and the lifecycle shows it as not applied. Lenient
/// relaxes format, never authority: who may recall, update, replace or
/// answer a document (`PERMISSION_DENIED`) holds under every policy.
fn lifecycle_effect(
    judged: Result<LifecycleEffect>,
    body: &Body,
    policy: IdPolicy,
) -> Result<LifecycleEffect> {
    match judged {
        Ok(e) => Ok(e),
        Err(e)
            if policy == IdPolicy::Lenient
                && matches!(e.reason(), Reason::Malformed | Reason::NotFound) =>
        {
            let note = format!(
                "carried under the lenient policy, not applied to the document's lifecycle: {}",
                e.message()
            );
            let mut eff = LifecycleEffect::of_document(body);
            eff.note = Some(note.clone());
            if matches!(body, Body::Status(_)) {
                eff.status_note = Some(note);
            }
            Ok(eff)
        }
        Err(e) => Err(e),
    }
}

impl Gateway {
    /// Runs the checks in order, each a named step below, and opens the
    /// submission for its attachments. A repeat of accepted bytes ends here
    /// with the first receipt. `subject` is filled as the envelope is read,
    /// so that a refusal is logged with what was known of it.
    pub(super) async fn check(
        &self,
        caller: &Caller,
        signed: SignedEnvelope,
        encoded_len: usize,
        proof: &Proof,
        arrival: Option<Arrival>,
        subject: &mut Subject,
    ) -> Result<Submission> {
        let policy = match proof {
            Proof::Signatures => IdPolicy::Strict,
            Proof::CallerIdentity { policy, .. } => *policy,
        };
        let limits = &self.inner.limits;
        let envelope = read_envelope(&signed, encoded_len, limits, subject)?;
        let Sender { from, agent } = self.sender(caller, proof, &envelope, policy).await?;
        subject.sender = from.as_str().to_owned();
        let recipients = validate_recipients(&envelope.to, limits.max_recipients, policy)?;

        // A repeat of accepted bytes is answered with the first receipt.
        // With attachments it is looked for now, before they stream in
        // again. Without, the commit finds it (one read less for every new
        // message), and a refusal looks for it before it is given: a repeat
        // is answered whatever changed since the first was accepted.
        let signed_bytes = signed.encode_to_vec();
        let envelope_sha = sha256(&signed_bytes);
        let has_attachments =
            matches!(&envelope.body, Some(Body::Document(d)) if !d.attachments.is_empty());
        if has_attachments
            && let Some(receipt) = self
                .repeat(&from, &envelope.message_id, &envelope_sha, subject)
                .await?
        {
            return Ok(Submission::duplicate(self.inner.clone(), receipt));
        }
        let checked: Result<Submission> = async {
        self.active_sender(&from).await?;
        let (routes, elsewhere) = self
            .route(
                &from,
                &recipients,
                arrival.as_ref(),
                &refs_size(&envelope),
                encoded_len,
            )
            .await?;
        if matches!(proof, Proof::CallerIdentity { .. })
            && routes.iter().any(|(_, r)| matches!(r, Route::Exchange(_)))
        {
            // Another gateway verifies the sender by its signature alone.
            return Err(Error::new(
                Reason::BadSignature,
                "an edXML package carries no signature another gateway can verify, and some recipients are served by other gateways; send it to them as a signed envelope (Exchange.Send), or send the edXML only to this gateway's agencies",
            ));
        }
        let mut verification = self
            .proof_of_origin(proof, &signed, &envelope, &from, agent.as_deref())
            .await?;
        let body = envelope.body.as_ref().ok_or_else(|| {
            Error::malformed("the envelope has neither a document nor a status notice")
        })?;
        let content = self
            .check_body(caller, body, &envelope.extensions, policy)
            .await?;
        if content.answers_unknown_document {
            verification
                .summary
                .push_str("; it answers a document this gateway has not carried");
        }
        if let (Proof::CallerIdentity { .. }, Some(agent)) = (proof, &agent) {
            agent_may_send_unsigned(agent, &from, body)?;
        }
        let judged = self
            .check_lifecycle(caller, &from, &envelope.to, body, policy)
            .await;
        let effect = lifecycle_effect(judged, body, policy)?;
        let routes = effect.routes.clone().unwrap_or(routes);
        if let Some(n) = &effect.note {
            verification.summary.push_str("; ");
            verification.summary.push_str(n);
        }
        if let (Body::Document(_), Some(n)) = (body, &effect.status_note) {
            verification.warnings.push(n.clone());
            verification.summary.push_str("; warning: ");
            verification.summary.push_str(n);
        }
        let pdf_check = match body {
            Body::Document(doc) => Some(PdfCheck {
                signer_name: doc.signer.as_ref().map(|s| s.full_name.clone()),
                received_at: rustls_pki_types::UnixTime::now(),
            }),
            Body::Status(_) => None,
        };

        Ok(Submission {
            gw: self.inner.clone(),
            state: State::Open(Box::new(Open {
                subject: subject.clone(),
                caller: caller.clone(),
                message: NewMessage {
                    sender: from.as_str().to_owned(),
                    message_id: envelope.message_id.clone(),
                    kind: content.kind,
                    document_id: content.document_id,
                    ref_from: content.ref_from,
                    status_code: content.status_code,
                    envelope_sha256_hex: hex::encode(envelope_sha),
                    signed_envelope: signed_bytes,
                    verification: Vec::new(),
                    accepted_at: 0,
                    attachments: Vec::new(),
                    recipients: routes,
                    elsewhere,
                    upstream: arrival
                        .as_ref()
                        .filter(|a| !a.upstream.is_empty())
                        .map(|a| {
                            Hops {
                                hops: a.upstream.clone(),
                            }
                            .encode_to_vec()
                        }),
                    actor: caller.organ_id.clone(),
                    agent,
                    transport: caller.transport.as_str().to_owned(),
                    business_type: effect.business_type,
                    replaces: effect.replaces,
                    withdraw: effect.withdraw,
                    status_note: effect.status_note,
                    priority: effect.priority,
                    due_at: effect.due_at,
                    index: crate::facts::of(&envelope),
                },
                verification,
                envelope_sha,
                refs: content.refs,
                current: 0,
                writer: None,
                sealed: Vec::new(),
                started: std::time::Instant::now(),
                pdf_check,
            })),
        })
        }
        .await;
        match checked {
            Err(refused) if !has_attachments && !refused.reason().is_gateway_fault() => {
                match self
                    .repeat(&from, &envelope.message_id, &envelope_sha, subject)
                    .await?
                {
                    Some(receipt) => Ok(Submission::duplicate(self.inner.clone(), receipt)),
                    None => Err(refused),
                }
            }
            other => other,
        }
    }

    /// Who the envelope is from, and whether the caller may send as them:
    /// itself, or an agency it represents (then the caller is the agent).
    /// Over AMQP only a signature bound to `from` proves the origin.
    async fn sender(
        &self,
        caller: &Caller,
        proof: &Proof,
        envelope: &Envelope,
        policy: IdPolicy,
    ) -> Result<Sender> {
        let from = OrganId::parse_with(&envelope.from, policy).map_err(|e| {
            Error::new(
                Reason::BadIdentifier,
                format!("the envelope's `from`: {}", e.message()),
            )
        })?;
        if caller.role == Role::Exchange {
            if !matches!(proof, Proof::Signatures) {
                return Err(Error::new(
                    Reason::BadSignature,
                    "a message taken from the exchange must be a signed envelope; this gateway cannot verify the origin of anything else",
                ));
            }
        } else if from.as_str() != caller.organ_id
            && !(caller.role == Role::Agency
                && self
                    .inner
                    .store
                    .represents(&caller.organ_id, from.as_str())
                    .await?)
        {
            return Err(Error::new(
                Reason::SenderMismatch,
                format!(
                    "the envelope is from {from} but you are authenticated as {}; an agency sends only as itself or as an agency it represents (`lienthong directory represent`)",
                    caller.organ_id
                ),
            ));
        }
        // An agency sending in the name of one it represents: named in the
        // report and the log line, so nobody takes the agent's word for the
        // principal's.
        let agent = (caller.role == Role::Agency && from.as_str() != caller.organ_id)
            .then(|| caller.organ_id.clone());
        Ok(Sender { from, agent })
    }

    /// The first receipt when these exact bytes were accepted before; a
    /// refusal when the message_id was taken by other content.
    async fn repeat(
        &self,
        from: &OrganId,
        message_id: &str,
        envelope_sha: &[u8; 32],
        subject: &Subject,
    ) -> Result<Option<SendReceipt>> {
        let Some(existing) = self.inner.store.message(from.as_str(), message_id).await? else {
            return Ok(None);
        };
        if existing.envelope_sha256 != hex::encode(envelope_sha) {
            return Err(Error::new(
                Reason::DuplicateConflict,
                format!(
                    "message_id {message_id} was already accepted from {from} with different content; use a new message_id for a new message"
                ),
            ));
        }
        let receipt = self.receipt_for(&existing, true).await?;
        self.inner
            .log_event(
                subject,
                EventKind::Duplicate,
                None,
                "a repeat of an accepted message; answered with the first receipt",
            )
            .await;
        Ok(Some(receipt))
    }

    async fn active_sender(&self, from: &OrganId) -> Result<()> {
        let sender = self.inner.store.agency(from.as_str()).await?;
        if !sender.as_ref().is_some_and(|a| a.active) {
            return Err(Error::new(
                Reason::UnknownSender,
                format!(
                    "{from} is not an active agency in this gateway's directory; ask the gateway's operators to add it"
                ),
            ));
        }
        Ok(())
    }

    /// What vouches for the origin: the verified signatures, or (edXML)
    /// the caller's authenticated identity, said in the verification's
    /// summary with the agent when there is one.
    async fn proof_of_origin(
        &self,
        proof: &Proof,
        signed: &SignedEnvelope,
        envelope: &Envelope,
        from: &OrganId,
        agent: Option<&str>,
    ) -> Result<Verification> {
        Ok(match proof {
            Proof::Signatures => {
                let mut v = self
                    .verify_signatures(signed, from, signing::signed_at_of(envelope))
                    .await?;
                if let Some(a) = agent {
                    v.summary.push_str(&format!("; sent by {a} for {from}"));
                }
                v
            }
            Proof::CallerIdentity { notes, .. } => {
                let mut summary = match agent {
                    Some(a) => format!(
                        "sent by {a} for {from}; not signed in a form this gateway verifies (edXML): accepted on the authenticated identity of {a}, which represents {from} in this gateway's directory"
                    ),
                    None => format!(
                        "not signed in a form this gateway verifies (edXML); accepted on the authenticated identity of {from}"
                    ),
                };
                for n in notes {
                    summary.push_str("; ");
                    summary.push_str(n);
                }
                Verification {
                    signatures: Vec::new(),
                    attachments_verified: false,
                    checked_at: Some(timestamp(now_micros())),
                    summary,
                    warnings: Vec::new(),
                    pdf: Vec::new(),
                }
            }
        })
    }

    /// The document (not a state secret, its fields within bounds) or the
    /// status notice (a valid code, about a document this gateway carried
    /// unless the policy or the transport allows otherwise).
    async fn check_body(
        &self,
        caller: &Caller,
        body: &Body,
        extensions: &[pb::XmlExtension],
        policy: IdPolicy,
    ) -> Result<Content> {
        match body {
            Body::Document(doc) => {
                if let Some(mark) = secret_classification(doc, extensions) {
                    // Refused here, before any attachment byte is read: of a
                    // secret document nothing but this refusal is kept.
                    return Err(Error::new(
                        Reason::SecretDocument,
                        format!(
                            "the document is classified {mark:?} (độ mật): documents containing state \
                             secrets must not be sent over this system (Law on Protection of State \
                             Secrets No. 29/2018/QH14; Decree 30/2020/NĐ-CP does not apply to them); \
                             nothing of it was kept: send it by the channel your agency uses for \
                             classified documents"
                        ),
                    ));
                }
                validate_document(doc, &self.inner.limits)?;
                Ok(Content {
                    kind: MessageKind::Document,
                    document_id: doc.document_id.clone(),
                    ref_from: None,
                    status_code: None,
                    refs: doc.attachments.clone(),
                    answers_unknown_document: false,
                })
            }
            Body::Status(st) => {
                let doc_from = validate_status(st, policy)?;
                // A status answers a document. Under the strict policy it
                // must be one this gateway carried; real producers (lenient)
                // also answer documents that reached them another way, so
                // there it is carried and the report says so.
                let known = self
                    .inner
                    .store
                    .document(doc_from.as_str(), &st.document_id)
                    .await?
                    .is_some();
                // From another gateway, a notice may overtake its document:
                // it is kept, and the lifecycle applies it when the document
                // arrives (see `lifecycle`).
                if !known && policy == IdPolicy::Strict && caller.role != Role::Exchange {
                    return Err(Error::new(
                        Reason::NotFound,
                        format!(
                            "the status answers document {} of {doc_from}, which this gateway has not carried; check ResponseFor (document_from, document_id)",
                            truncate(&st.document_id, 200)
                        ),
                    ));
                }
                Ok(Content {
                    kind: MessageKind::Status,
                    document_id: st.document_id.clone(),
                    ref_from: Some(doc_from.as_str().to_owned()),
                    status_code: Some(st.code.clone()),
                    refs: Vec::new(),
                    answers_unknown_document: !known,
                })
            }
        }
    }

    /// Every signature must verify and chain to an anchor; at least one must
    /// be made with a key the directory binds to the sender.
    pub(super) async fn verify_signatures(
        &self,
        signed: &SignedEnvelope,
        from: &OrganId,
        signed_at: Option<UnixTime>,
    ) -> Result<Verification> {
        if signed.signatures.is_empty() {
            return Err(Error::new(
                Reason::BadSignature,
                "the envelope is not signed; sign the payload with the agency's signing key",
            ));
        }
        let pae = signing::pae(&signed.payload_type, &signed.payload);
        let now = UnixTime::now();
        let mut checks = Vec::with_capacity(signed.signatures.len());
        let mut bound_to_sender = false;
        let mut unbound_subject = None;
        for sig in &signed.signatures {
            let v = signing::verify_signature_with(
                sig,
                &pae,
                &self.inner.anchors,
                &signing::VerifyOptions::at(now).signed_at(signed_at),
            )?;
            let spki = hex::encode(v.spki_sha256);
            let bound = self.inner.store.signing_cert(&spki).await?;
            let bound_to = bound.map(|b| b.organ_id).unwrap_or_default();
            if bound_to == from.as_str() {
                bound_to_sender = true;
            } else {
                unbound_subject.get_or_insert_with(|| v.subject.clone());
            }
            checks.push(SignatureCheck {
                algorithm: v.algorithm.as_str().to_owned(),
                signer_subject: v.subject.clone(),
                chain: v.chain.clone(),
                trust_anchor: v.trust_anchor.clone(),
                spki_sha256: spki,
                bound_to,
                valid: true,
                not_after: Some(prost_types::Timestamp {
                    seconds: v.not_after.unix_timestamp(),
                    nanos: 0,
                }),
                revocation: v.revocation.as_ref().map(|r| pb::RevocationCheck {
                    source: r.source.clone(),
                    issuer: r.issuer.clone(),
                    this_update: Some(prost_types::Timestamp {
                        seconds: r.this_update.unix_timestamp(),
                        nanos: 0,
                    }),
                    next_update: Some(prost_types::Timestamp {
                        seconds: r.next_update.unix_timestamp(),
                        nanos: 0,
                    }),
                    crl_number: r.crl_number.clone().unwrap_or_default(),
                    stale: r.stale,
                }),
                warnings: v.warnings.clone(),
                serial: v.serial.clone(),
            });
        }
        if !bound_to_sender {
            return Err(Error::new(
                Reason::CertificateNotBound,
                format!(
                    "the signing certificate {} is not bound to {from} in the directory; bind it with `lienthong directory bind-cert {from} CERT.pem` or sign with {from}'s own key",
                    unbound_subject.unwrap_or_default()
                ),
            ));
        }
        let signer = checks
            .iter()
            .find(|c| c.bound_to == from.as_str())
            .map(|c| c.signer_subject.clone())
            .unwrap_or_default();
        let warnings: Vec<String> = checks.iter().flat_map(|c| c.warnings.clone()).collect();
        let mut summary = format!(
            "signed by {signer}, a certificate bound to {from} and trusted by this gateway"
        );
        for w in &warnings {
            summary.push_str("; warning: ");
            summary.push_str(w);
        }
        Ok(Verification {
            signatures: checks,
            attachments_verified: false,
            checked_at: Some(timestamp(now_micros())),
            summary,
            warnings,
            pdf: Vec::new(),
        })
    }

    // ----- the document lifecycle ------------------------------
}

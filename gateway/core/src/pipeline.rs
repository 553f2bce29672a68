//! The one pipeline every envelope passes, whatever transport brought it:
//! decode → validate identifiers → authorise the sender → dedupe → verify
//! signatures → stream and verify attachments → persist in one transaction
//! → route to inboxes.
//!
//! Architecture invariant: adapters hand this module what they received
//! and turn its answer into their wire form; they never validate, route or
//! touch the database themselves.
//!
//! Architecture invariant: a receipt (`SendReceipt`) exists only after the
//! message, its attachments and its deliveries are durable.
//!
//! Architecture invariant: every refusal is written to the transfer log
//! with its reason code, and leaves no message, blob or delivery behind.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lienthong_proto::v1::{
    self as pb, Agency, AttachmentRef, Delivery, Envelope, SendReceipt, SignatureCheck,
    SignedEnvelope, TraceEvent, TraceHop, Verification, envelope::Body,
};
use lienthong_schema::entity::{agency, event, message};
use prost::Message as _;
use ring::digest;
use rustls_pki_types::UnixTime;
use tokio::sync::watch;

use crate::blobs::{BlobReader, BlobStore, BlobWriter, SealedBlob};
use crate::error::{Error, Reason, Result};
use crate::organ_id::{IdPolicy, OrganId};
use crate::receipts::ReceiptSigner;
use crate::signing::{self, TrustAnchors};
use crate::store::{
    AcceptError, EventKind, NewAttachment, NewEvent, NewMessage, PendingDelivery, Store, now_micros,
};

/// Status codes a `StatusNotice` may carry (DESIGN.md §2).
pub const STATUS_CODES: [&str; 9] = ["01", "02", "03", "04", "05", "06", "13", "15", "16"];

/// Longest message_id accepted; ids are keys, not documents.
const MAX_MESSAGE_ID: usize = 200;

/// Configurable bounds on what one submission may carry.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The encoded `SignedEnvelope` (envelope, signatures, certificates).
    pub max_envelope_bytes: usize,
    pub max_attachment_bytes: u64,
    pub max_attachments: usize,
    pub max_recipients: usize,
    /// An unacknowledged delivery on a live stream comes again after this.
    pub redelivery_after: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_envelope_bytes: 1024 * 1024,
            max_attachment_bytes: 2 * 1024 * 1024 * 1024,
            max_attachments: 100,
            max_recipients: 1000,
            redelivery_after: Duration::from_secs(60),
        }
    }
}

/// What the core needs to run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This gateway's name in traces and receipts.
    pub gateway_id: String,
    pub database_url: String,
    pub storage_path: PathBuf,
    pub anchors: TrustAnchors,
    pub limits: Limits,
    /// The gateway's key for signing receipts; receipts are unsigned without it.
    pub receipt_signer: Option<Arc<ReceiptSigner>>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            gateway_id: "lienthong".to_owned(),
            database_url: "sqlite://./data/lienthong.db".to_owned(),
            storage_path: PathBuf::from("./data/blobs"),
            anchors: TrustAnchors::empty(),
            limits: Limits::default(),
            receipt_signer: None,
        }
    }
}

/// The transport a request came through, for the transfer log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Grpc,
    Amqp,
    Cli,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Grpc => "grpc",
            Transport::Amqp => "amqp",
            Transport::Cli => "cli",
        }
    }
}

/// Who a caller is to the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// An agency's software: its own messages, its own inbox.
    Agency,
    /// The gateway's operators: every trace, reports, the directory.
    Operator,
}

/// An authenticated caller: the agency (or operator) the transport vouches
/// for.
#[derive(Debug, Clone)]
pub struct Caller {
    pub organ_id: String,
    pub transport: Transport,
    pub role: Role,
}

impl Caller {
    pub fn new(organ_id: impl Into<String>, transport: Transport) -> Self {
        Caller {
            organ_id: organ_id.into(),
            transport,
            role: Role::Agency,
        }
    }

    pub fn is_operator(&self) -> bool {
        self.role == Role::Operator
    }
}

/// Wakes the live `Receive` streams of a recipient when a delivery lands.
#[derive(Debug, Default)]
struct Inboxes {
    // Held only for map access, never across an await.
    senders: Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl Inboxes {
    fn subscribe(&self, recipient: &str) -> watch::Receiver<u64> {
        let mut map = self.senders.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(recipient.to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    fn notify(&self, recipient: &str) {
        let map = self.senders.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = map.get(recipient) {
            tx.send_modify(|v| *v = v.wrapping_add(1));
        }
    }
}

#[derive(Debug)]
struct Inner {
    store: Store,
    blobs: BlobStore,
    anchors: TrustAnchors,
    gateway_id: String,
    limits: Limits,
    inboxes: Inboxes,
    receipt_signer: Option<Arc<ReceiptSigner>>,
}

/// The gateway core. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

/// What vouches for an envelope's origin.
#[derive(Debug)]
enum Proof {
    /// Its signatures, chained to the trust anchors and bound to `from`.
    Signatures,
    /// The transport's authentication of the caller (edXML submissions).
    CallerIdentity {
        policy: IdPolicy,
        notes: Vec<String>,
    },
}

/// Where a refusal is logged: who sent what, as far as it could be read.
#[derive(Debug, Clone)]
struct Subject {
    sender: String,
    message_id: String,
    actor: Option<String>,
    transport: Transport,
}

impl Gateway {
    /// Connects the database (migrating it) and opens the attachment store.
    pub async fn open(settings: Settings) -> Result<Gateway> {
        let store = Store::connect(&settings.database_url).await?;
        let blobs = BlobStore::open(&settings.storage_path).await?;
        Ok(Gateway::from_parts(store, blobs, settings))
    }

    pub fn from_parts(store: Store, blobs: BlobStore, settings: Settings) -> Gateway {
        Gateway {
            inner: Arc::new(Inner {
                store,
                blobs,
                anchors: settings.anchors,
                gateway_id: settings.gateway_id,
                limits: settings.limits,
                inboxes: Inboxes::default(),
                receipt_signer: settings.receipt_signer,
            }),
        }
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn gateway_id(&self) -> &str {
        &self.inner.gateway_id
    }

    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// Logs a refusal that happened before a submission could begin (a
    /// transport that could not even decode the request) and returns it.
    pub async fn refuse(&self, caller: Option<&Caller>, message_id: &str, err: Error) -> Error {
        let subject = Subject {
            sender: caller.map(|c| c.organ_id.clone()).unwrap_or_default(),
            message_id: message_id.to_owned(),
            actor: caller.map(|c| c.organ_id.clone()),
            transport: caller.map(|c| c.transport).unwrap_or(Transport::Grpc),
        };
        self.inner.log_refusal(&subject, &err).await;
        err
    }

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
        self.begin(caller, signed, encoded_len, &Proof::Signatures)
            .await
    }

    /// Starts a submission of an envelope that carries no signature this
    /// gateway can verify (an edXML package): it is accepted on the caller's
    /// authenticated identity alone — `from` must be the caller — and the
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
        )
        .await
    }

    async fn begin(
        &self,
        caller: &Caller,
        signed: SignedEnvelope,
        encoded_len: usize,
        proof: &Proof,
    ) -> Result<Submission> {
        // lienthong_accept_seconds covers the whole submission, signature
        // checks included.
        let started = std::time::Instant::now();
        let mut subject = Subject {
            sender: caller.organ_id.clone(),
            message_id: String::new(),
            actor: Some(caller.organ_id.clone()),
            transport: caller.transport,
        };
        match self
            .check(caller, signed, encoded_len, proof, &mut subject)
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

    async fn check(
        &self,
        caller: &Caller,
        signed: SignedEnvelope,
        encoded_len: usize,
        proof: &Proof,
        subject: &mut Subject,
    ) -> Result<Submission> {
        let inner = &self.inner;
        let policy = match proof {
            Proof::Signatures => IdPolicy::Strict,
            Proof::CallerIdentity { policy, .. } => *policy,
        };
        let limits = &inner.limits;
        if encoded_len > limits.max_envelope_bytes {
            // The bytes are in memory already (the transport bounds them):
            // read the ids so that the refusal can be traced by message_id.
            if let Ok(env) = Envelope::decode(signed.payload.clone()) {
                subject.message_id = truncate(&env.message_id, MAX_MESSAGE_ID).to_owned();
                if !env.from.is_empty() {
                    subject.sender = truncate(&env.from, 64).to_owned();
                }
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
        let envelope = Envelope::decode(signed.payload.clone()).map_err(|e| {
            Error::malformed(
                "the payload is not a lienthong.v1.Envelope protobuf; sign and send the encoded Envelope bytes",
            )
            .with_source(e)
        })?;
        subject.message_id = truncate(&envelope.message_id, MAX_MESSAGE_ID).to_owned();
        if !envelope.from.is_empty() {
            subject.sender = truncate(&envelope.from, 64).to_owned();
        }
        validate_message_id(&envelope.message_id)?;
        let from = OrganId::parse_with(&envelope.from, policy).map_err(|e| {
            Error::new(
                Reason::BadIdentifier,
                format!("the envelope's `from`: {}", e.message()),
            )
        })?;
        if from.as_str() != caller.organ_id
            && !(caller.role == Role::Agency
                && inner
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
        subject.sender = from.as_str().to_owned();
        let recipients = validate_recipients(&envelope.to, limits.max_recipients, policy)?;

        // Dedupe before the expensive checks: a repeat of accepted bytes is
        // answered with the first receipt.
        let signed_bytes = signed.encode_to_vec();
        let envelope_sha = sha256(&signed_bytes);
        if let Some(existing) = inner
            .store
            .message(from.as_str(), &envelope.message_id)
            .await?
        {
            if existing.envelope_sha256 == hex::encode(envelope_sha) {
                let receipt = self.receipt_for(&existing, true).await?;
                inner
                    .log_event(
                        subject,
                        EventKind::Duplicate,
                        None,
                        "a repeat of an accepted message; answered with the first receipt",
                    )
                    .await;
                return Ok(Submission::duplicate(self.inner.clone(), receipt));
            }
            return Err(Error::new(
                Reason::DuplicateConflict,
                format!(
                    "message_id {} was already accepted from {from} with different content; use a new message_id for a new message",
                    envelope.message_id
                ),
            ));
        }

        let sender = inner.store.agency(from.as_str()).await?;
        if !sender.as_ref().is_some_and(|a| a.active) {
            return Err(Error::new(
                Reason::UnknownSender,
                format!(
                    "{from} is not an active agency in this gateway's directory; ask the gateway's operators to add it"
                ),
            ));
        }
        let mut unknown = Vec::new();
        let mut routes = Vec::with_capacity(recipients.len());
        for r in &recipients {
            match inner.store.agency(r.as_str()).await? {
                Some(a) if a.active => routes.push((r.as_str().to_owned(), "local".to_owned())),
                _ => unknown.push(r.as_str().to_owned()),
            }
        }
        if !unknown.is_empty() {
            return Err(Error::new(
                Reason::UnknownRecipient,
                format!(
                    "no active agency {} in this gateway's directory; check the codes or ask the operators",
                    unknown.join(", ")
                ),
            ));
        }

        let mut verification = match proof {
            Proof::Signatures => {
                self.verify_signatures(&signed, &from, signing::signed_at_of(&envelope))
                    .await?
            }
            Proof::CallerIdentity { notes, .. } => {
                let mut summary = format!(
                    "not signed in a form this gateway verifies (edXML); accepted on the authenticated identity of {from}"
                );
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
                }
            }
        };

        let mut unknown_document = false;
        let body = envelope.body.as_ref().ok_or_else(|| {
            Error::malformed("the envelope has neither a document nor a status notice")
        })?;
        let (kind, document_id, ref_from, status_code, refs) = match body {
            Body::Document(doc) => {
                validate_document(doc, limits)?;
                (
                    "document",
                    doc.document_id.clone(),
                    None,
                    None,
                    doc.attachments.clone(),
                )
            }
            Body::Status(st) => {
                let doc_from = validate_status(st, policy)?;
                // A status answers a document. Under the strict policy it
                // must be one this gateway carried; real producers (lenient)
                // also answer documents that reached them another way, so
                // there it is carried and the report says so.
                let known = inner
                    .store
                    .document(doc_from.as_str(), &st.document_id)
                    .await?
                    .is_some();
                if !known {
                    if policy == IdPolicy::Strict {
                        return Err(Error::new(
                            Reason::NotFound,
                            format!(
                                "the status answers document {} of {doc_from}, which this gateway has not carried; check ResponseFor (document_from, document_id)",
                                truncate(&st.document_id, 200)
                            ),
                        ));
                    }
                    unknown_document = true;
                }
                (
                    "status",
                    st.document_id.clone(),
                    Some(doc_from.as_str().to_owned()),
                    Some(st.code.clone()),
                    Vec::new(),
                )
            }
        };

        if unknown_document {
            verification
                .summary
                .push_str("; it answers a document this gateway has not carried");
        }

        Ok(Submission {
            gw: inner.clone(),
            state: State::Open(Box::new(Open {
                subject: subject.clone(),
                caller: caller.clone(),
                message: NewMessage {
                    sender: from.as_str().to_owned(),
                    message_id: envelope.message_id.clone(),
                    kind,
                    document_id,
                    ref_from,
                    status_code,
                    envelope_sha256_hex: hex::encode(envelope_sha),
                    signed_envelope: signed_bytes,
                    verification: Vec::new(),
                    accepted_at: 0,
                    attachments: Vec::new(),
                    recipients: routes,
                    actor: caller.organ_id.clone(),
                    transport: caller.transport.as_str().to_owned(),
                },
                verification,
                envelope_sha,
                refs,
                current: 0,
                writer: None,
                sealed: Vec::new(),
                started: std::time::Instant::now(),
            })),
        })
    }

    /// Every signature must verify and chain to an anchor; at least one must
    /// be made with a key the directory binds to the sender.
    async fn verify_signatures(
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
        })
    }

    async fn receipt_for(&self, m: &message::Model, duplicate: bool) -> Result<SendReceipt> {
        let deliveries = self.inner.store.deliveries_of(m.id).await?;
        Ok(make_receipt(
            m,
            deliveries,
            duplicate,
            &self.inner.gateway_id,
        ))
    }

    /// The caller's inbox, oldest first.
    pub fn inbox(&self, caller: &Caller, follow: bool) -> Inbox {
        Inbox {
            gw: self.inner.clone(),
            caller: caller.clone(),
            follow,
            first_pass: true,
            cursor: 0,
            buffered: VecDeque::new(),
            wake: self.inner.inboxes.subscribe(&caller.organ_id),
        }
    }

    /// Acknowledges a delivery of the caller's inbox.
    pub async fn ack(&self, caller: &Caller, delivery_id: &str) -> Result<()> {
        match self
            .inner
            .store
            .ack(&caller.organ_id, delivery_id, caller.transport.as_str())
            .await?
        {
            Some(outcome) => {
                if outcome == crate::store::AckOutcome::Acknowledged {
                    crate::metrics::delivery_acknowledged();
                }
                Ok(())
            }
            None => Err(Error::new(
                Reason::NotFound,
                format!(
                    "there is no delivery {} in your inbox",
                    truncate(delivery_id, 80)
                ),
            )),
        }
    }

    /// The signed envelope of a message the caller sent or received, exactly
    /// as it was accepted.
    pub async fn envelope_of(
        &self,
        caller: &Caller,
        from: &str,
        message_id: &str,
    ) -> Result<SignedEnvelope> {
        let m = self.authorised_message(caller, from, message_id).await?;
        SignedEnvelope::decode(m.signed_envelope.as_slice()).map_err(|e| {
            Error::new(Reason::Unavailable, "a stored envelope could not be read").with_source(e)
        })
    }

    /// Opens an attachment of a message the caller sent or received.
    pub async fn fetch_attachment(
        &self,
        caller: &Caller,
        from: &str,
        message_id: &str,
        index: u32,
    ) -> Result<AttachmentReader> {
        let m = self.authorised_message(caller, from, message_id).await?;
        let atts = self.inner.store.attachments(m.id).await?;
        let Some(a) = atts.get(index as usize) else {
            return Err(Error::new(
                Reason::NotFound,
                format!(
                    "message {message_id} has {} attachment(s); there is no index {index}",
                    atts.len()
                ),
            ));
        };
        let subject = Subject {
            sender: m.sender.clone(),
            message_id: m.message_id.clone(),
            actor: Some(caller.organ_id.clone()),
            transport: caller.transport,
        };
        let opened = self
            .inner
            .blobs
            .open_blob(&a.sha256, a.size.max(0) as u64)
            .await;
        let reader = match opened {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(message_id, from, index, error = %e.chain(), "cannot read a stored attachment");
                self.inner.log_integrity(&subject, index, &e).await;
                return Err(e);
            }
        };
        Ok(AttachmentReader {
            gw: self.inner.clone(),
            subject,
            index,
            reader,
        })
    }

    async fn authorised_message(
        &self,
        caller: &Caller,
        from: &str,
        message_id: &str,
    ) -> Result<message::Model> {
        let not_found = || {
            Error::new(
                Reason::NotFound,
                format!(
                    "no message {} from {} is known here",
                    truncate(message_id, MAX_MESSAGE_ID),
                    truncate(from, 64)
                ),
            )
        };
        let Some(m) = self.inner.store.message(from, message_id).await? else {
            return Err(not_found());
        };
        if m.sender == caller.organ_id || caller.is_operator() {
            return Ok(m);
        }
        let deliveries = self.inner.store.deliveries_of(m.id).await?;
        if deliveries.iter().any(|d| d.recipient == caller.organ_id) {
            return Ok(m);
        }
        Err(Error::new(
            Reason::PermissionDenied,
            format!(
                "message {message_id} was neither sent by nor addressed to {}; an agency sees only its own messages",
                caller.organ_id
            ),
        ))
    }

    /// The transfer log of a message and of the statuses that answer it.
    /// `None` is the operator's view (command line), which sees everything.
    pub async fn trace(
        &self,
        caller: Option<&Caller>,
        from: &str,
        message_id: &str,
    ) -> Result<Vec<TraceEvent>> {
        let keys: Vec<(String, String)> = match caller {
            Some(c) => {
                self.authorised_message(c, from, message_id).await?;
                self.inner
                    .store
                    .traced_messages(from, message_id)
                    .await?
                    .into_iter()
                    .map(|m| (m.sender, m.message_id))
                    .collect()
            }
            None => {
                let mut keys: Vec<(String, String)> = self
                    .inner
                    .store
                    .traced_messages(from, message_id)
                    .await?
                    .into_iter()
                    .map(|m| (m.sender, m.message_id))
                    .collect();
                if keys.is_empty() {
                    // A refused message has events but no message row.
                    keys.push((from.to_owned(), message_id.to_owned()));
                }
                keys
            }
        };
        let events = self.inner.store.events_of(&keys).await?;
        if events.is_empty() {
            return Err(Error::new(
                Reason::NotFound,
                format!("no events for message {message_id} from {from}"),
            ));
        }
        Ok(events.into_iter().map(trace_event).collect())
    }

    /// Operator view by message_id alone, whoever sent it.
    pub async fn trace_any(&self, message_id: &str) -> Result<Vec<TraceEvent>> {
        let events = self.inner.store.events_by_message_id(message_id).await?;
        let mut keys: Vec<(String, String)> = Vec::new();
        for e in &events {
            let k = (e.sender.clone(), e.message_id.clone());
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        let mut all = Vec::new();
        for (s, m) in keys {
            for key in self.inner.store.traced_messages(&s, &m).await? {
                all.push((key.sender, key.message_id));
            }
        }
        let mut events = if all.is_empty() {
            events
        } else {
            all.push((String::new(), message_id.to_owned()));
            let mut evs = self.inner.store.events_of(&all).await?;
            // Refusals of repeats whose sender could be read are kept too.
            let seen: HashSet<i64> = evs.iter().map(|e| e.id).collect();
            evs.extend(events.into_iter().filter(|e| !seen.contains(&e.id)));
            evs
        };
        events.sort_by_key(|e| e.id);
        if events.is_empty() {
            return Err(Error::new(
                Reason::NotFound,
                format!("no events for message {message_id}"),
            ));
        }
        Ok(events.into_iter().map(trace_event).collect())
    }

    /// One agency of the directory.
    pub async fn lookup(&self, organ_id: &str) -> Result<Agency> {
        let id = OrganId::parse_with(organ_id, IdPolicy::Lenient)?;
        match self.inner.store.agency(id.as_str()).await? {
            Some(a) => Ok(agency_pb(a)),
            None => Err(Error::new(
                Reason::NotFound,
                format!("{id} is not in this gateway's directory"),
            )),
        }
    }

    /// The directory, or the part of it under `under`, in pages ordered by
    /// organ_id; the page token is the last organ_id of the previous page.
    pub async fn list(
        &self,
        under: &str,
        page_size: u32,
        page_token: &str,
    ) -> Result<(Vec<Agency>, String)> {
        let under = if under.is_empty() {
            None
        } else {
            Some(OrganId::parse_with(under, IdPolicy::Lenient)?)
        };
        let size = match page_size {
            0 => 100,
            n => n.min(1000) as usize,
        };
        let all = self.inner.store.agencies().await?;
        let mut page: Vec<Agency> = all
            .into_iter()
            .filter(|a| page_token.is_empty() || a.organ_id.as_str() > page_token)
            .filter(|a| match &under {
                None => true,
                Some(u) => OrganId::parse_with(&a.organ_id, IdPolicy::Lenient)
                    .map(|id| id.is_under(u))
                    .unwrap_or(false),
            })
            .take(size + 1)
            .map(agency_pb)
            .collect();
        let next = if page.len() > size {
            page.truncate(size);
            page.last().map(|a| a.organ_id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok((page, next))
    }

    /// The caller a verified client certificate speaks for: the directory's
    /// binding of its key is the only source of identity under mutual TLS.
    pub async fn identify_client(
        &self,
        spki_sha256: &[u8; 32],
        transport: Transport,
    ) -> Result<Caller> {
        let hex = hex::encode(spki_sha256);
        let Some(binding) = self.inner.store.client_cert(&hex).await? else {
            return Err(self
                .refuse(
                    None,
                    "",
                    Error::new(
                        Reason::PermissionDenied,
                        format!(
                            "this client certificate (key sha256 {hex}) is not bound to any agency; ask the operators to run `lienthong directory bind-client-cert ORGAN_ID CERT.pem`"
                        ),
                    ),
                )
                .await);
        };
        let role = if binding.role == "operator" {
            Role::Operator
        } else {
            Role::Agency
        };
        Ok(Caller {
            organ_id: binding.organ_id,
            transport,
            role,
        })
    }

    /// Readiness: the database answers.
    pub async fn ready(&self) -> Result<()> {
        self.inner.store.ping().await
    }
}

/// A stored attachment being read for a caller. A failed digest check is
/// written to the transfer log (`integrity_failed`) before it is returned.
#[derive(Debug)]
pub struct AttachmentReader {
    gw: Arc<Inner>,
    subject: Subject,
    index: u32,
    reader: BlobReader,
}

impl AttachmentReader {
    /// The next chunk of at most `max` bytes; `None` at the end, after the
    /// digest has been checked.
    pub async fn next_chunk(&mut self, max: usize) -> Result<Option<Vec<u8>>> {
        match self.reader.next_chunk(max).await {
            Ok(c) => Ok(c),
            Err(e) => {
                self.gw.log_integrity(&self.subject, self.index, &e).await;
                Err(e)
            }
        }
    }
}

impl Inner {
    async fn log_integrity(&self, subject: &Subject, index: u32, err: &Error) {
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
    fn seal_receipt(&self, mut receipt: SendReceipt) -> SendReceipt {
        if let Some(signer) = &self.receipt_signer
            && let Err(e) = signer.sign(&mut receipt)
        {
            tracing::error!(message_id = %receipt.message_id, error = %e.chain(), "could not sign a receipt");
        }
        receipt
    }

    async fn log_refusal(&self, subject: &Subject, err: &Error) {
        crate::metrics::message_refused(err.reason());
        tracing::warn!(
            message_id = %subject.message_id,
            from = %subject.sender,
            reason = %err.reason(),
            transport = subject.transport.as_str(),
            error = %err.chain(),
            "refused"
        );
        self.log_event(
            subject,
            EventKind::Rejected,
            Some(err.reason().as_str()),
            err.message(),
        )
        .await;
    }

    async fn log_event(
        &self,
        subject: &Subject,
        kind: EventKind,
        reason: Option<&str>,
        detail: &str,
    ) {
        let e = NewEvent {
            kind,
            sender: subject.sender.clone(),
            message_id: subject.message_id.clone(),
            recipient: None,
            reason: reason.map(str::to_owned),
            detail: detail.to_owned(),
            actor: subject.actor.clone(),
            transport: subject.transport.as_str().to_owned(),
        };
        if let Err(err) = self.store.log(e).await {
            // The refusal itself still reaches the sender; the operator sees this.
            tracing::error!(error = %err.chain(), kind = kind.as_str(), "could not write to the transfer log");
        }
    }
}

/// A submission between its envelope and its last attachment byte.
#[derive(Debug)]
pub struct Submission {
    gw: Arc<Inner>,
    state: State,
}

#[derive(Debug)]
enum State {
    /// A repeat of an accepted message: attachment bytes are read and dropped.
    Duplicate(Box<SendReceipt>),
    Open(Box<Open>),
    /// Finished or refused.
    Closed,
}

#[derive(Debug)]
struct Open {
    subject: Subject,
    caller: Caller,
    message: NewMessage,
    verification: Verification,
    envelope_sha: [u8; 32],
    refs: Vec<AttachmentRef>,
    current: usize,
    writer: Option<BlobWriter>,
    sealed: Vec<SealedBlob>,
    started: std::time::Instant,
}

impl Submission {
    fn duplicate(gw: Arc<Inner>, receipt: SendReceipt) -> Submission {
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

    async fn fail(&mut self, err: Error) -> Error {
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
    async fn write_chunk(&mut self, gw: &Inner, index: usize, data: &[u8]) -> Result<()> {
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
    async fn close_current(&mut self, gw: &Inner, at_end: bool) -> Result<()> {
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

    async fn finish(mut self: Box<Self>, gw: &Arc<Inner>) -> Result<SendReceipt> {
        while self.current < self.refs.len() {
            self.close_current(gw, true).await?;
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
                for r in &recipients {
                    gw.inboxes.notify(r);
                }
                let routes: HashSet<&str> = deliveries.iter().map(|d| d.route.as_str()).collect();
                for route in routes {
                    crate::metrics::message_accepted(route);
                }
                crate::metrics::accept_seconds(self.started.elapsed().as_secs_f64());
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
            Err(AcceptError::Db(e)) => {
                remove_unreferenced(gw, &created).await;
                Err(Error::from(e))
            }
        }
    }
}

async fn remove_unreferenced(gw: &Inner, created: &[String]) {
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

/// Pulls a recipient's deliveries, oldest first. The first pass hands out
/// every unacknowledged delivery; a following stream then gets new ones as
/// they land and, after `redelivery_after`, the ones still unacknowledged.
#[derive(Debug)]
pub struct Inbox {
    gw: Arc<Inner>,
    caller: Caller,
    follow: bool,
    first_pass: bool,
    cursor: i64,
    buffered: VecDeque<PendingDelivery>,
    wake: watch::Receiver<u64>,
}

impl Inbox {
    /// The next delivery; `None` when the inbox is drained and the stream
    /// does not follow.
    pub async fn next(&mut self) -> Result<Option<Delivery>> {
        loop {
            if let Some(p) = self.buffered.pop_front() {
                let attempt = self
                    .gw
                    .store
                    .mark_delivered(
                        &p.delivery,
                        &p.message.sender,
                        &p.message.message_id,
                        self.caller.transport.as_str(),
                    )
                    .await?;
                crate::metrics::delivery_handed_out();
                return Ok(Some(self.delivery(p, attempt)?));
            }
            // Mark the current notification seen before looking, so a
            // delivery that lands during the query wakes us again.
            self.wake.borrow_and_update();
            let batch = if self.first_pass {
                self.gw
                    .store
                    .pending(&self.caller.organ_id, self.cursor, None, 64)
                    .await?
            } else {
                let lease = self.gw.limits.redelivery_after.as_micros() as i64;
                self.gw
                    .store
                    .pending(&self.caller.organ_id, 0, Some(now_micros() - lease), 64)
                    .await?
            };
            if let Some(last) = batch.last() {
                self.cursor = self.cursor.max(last.delivery.id);
                self.buffered.extend(batch);
                continue;
            }
            if self.first_pass {
                self.first_pass = false;
                if self.follow {
                    continue;
                }
            }
            if !self.follow {
                return Ok(None);
            }
            let tick = (self.gw.limits.redelivery_after / 4).max(Duration::from_millis(250));
            tokio::select! {
                changed = self.wake.changed() => {
                    if changed.is_err() {
                        return Ok(None);
                    }
                }
                _ = tokio::time::sleep(tick) => {}
            }
        }
    }

    fn delivery(&self, p: PendingDelivery, attempt: i32) -> Result<Delivery> {
        let envelope =
            SignedEnvelope::decode(p.message.signed_envelope.as_slice()).map_err(|e| {
                Error::new(Reason::Unavailable, "a stored envelope could not be read")
                    .with_source(e)
            })?;
        let verification = Verification::decode(p.message.verification.as_slice()).ok();
        Ok(Delivery {
            delivery_id: p.delivery.delivery_id,
            envelope: Some(envelope),
            trace: vec![TraceHop {
                gateway: self.gw.gateway_id.clone(),
                event: "accepted".to_owned(),
                at: Some(timestamp(p.message.accepted_at)),
            }],
            accepted_at: Some(timestamp(p.message.accepted_at)),
            verification,
            attempt: attempt.max(1) as u32,
            edxml: Default::default(),
        })
    }
}

fn validate_message_id(id: &str) -> Result<()> {
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

fn validate_recipients(to: &[String], max: usize, policy: IdPolicy) -> Result<Vec<OrganId>> {
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

fn validate_document(doc: &pb::Document, limits: &Limits) -> Result<()> {
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

fn validate_status(st: &pb::StatusNotice, policy: IdPolicy) -> Result<OrganId> {
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

/// The receipt of an accepted message, as stored.
fn make_receipt(
    m: &message::Model,
    deliveries: Vec<lienthong_schema::entity::delivery::Model>,
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
                route: d.route,
            })
            .collect(),
        gateway: gateway.to_owned(),
        ..Default::default()
    }
}

fn trace_event(e: event::Model) -> TraceEvent {
    TraceEvent {
        seq: e.id.max(0) as u64,
        at: Some(timestamp(e.at)),
        kind: e.kind,
        message_id: e.message_id,
        from: e.sender,
        to: e.recipient.unwrap_or_default(),
        reason: e.reason.unwrap_or_default(),
        detail: e.detail,
    }
}

fn agency_pb(a: agency::Model) -> Agency {
    Agency {
        organ_id: a.organ_id,
        name: a.name,
        parent: a.parent.unwrap_or_default(),
        email: a.email,
        telephone: a.telephone,
        address: a.address,
        website: a.website,
        channel: a.channel,
        active: a.active,
    }
}

/// Unix microseconds → protobuf timestamp.
pub fn timestamp(micros: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1000) as i32,
    }
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, data).as_ref());
    out
}

/// At most `max` bytes of `s`, cut on a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

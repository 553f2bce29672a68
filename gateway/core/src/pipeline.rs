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
use prost::Message as _;

use rustls_pki_types::UnixTime;
use tokio::sync::watch;

use crate::blobs::{BlobReader, BlobStore, BlobWriter, SealedBlob};
use crate::error::{Error, Reason, Result};
use crate::lifecycle;
use crate::organ_id::{IdPolicy, OrganId};
use crate::routing::{self, RouteTable, Target};
use crate::rows::{AgencyRow, DeliveryRow, EventRow, MessageRow};
use crate::store::{
    AcceptError, EventKind, NewAttachment, NewEvent, NewMessage, PendingDelivery, Store, now_micros,
};
use crate::text::{self, truncate};
use lienthong_pki::receipts::ReceiptSigner;
use lienthong_pki::signing::{self, TrustAnchors};
use lienthong_types::{sha256, timestamp};

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
    /// Submissions being taken at once (envelope read, checked, attachments
    /// streaming, waiting for the commit); one more is turned away with
    /// `UNAVAILABLE` instead of queueing. This bounds the memory and the
    /// work in flight whatever the offered load: an overloaded gateway
    /// answers "try again" quickly rather than slowly for everyone.
    pub max_submissions_in_flight: usize,
    /// The work one PDF attachment's signature check may cost.
    pub pdf: lienthong_pades::Limits,
    /// PDF signature checks run at once (each a blocking thread hashing
    /// and reading); a submission whose PDF finds them all busy waits.
    pub pdf_checks_in_flight: usize,
    /// How long a submission waits for a PDF check's turn before it is
    /// answered `UNAVAILABLE` ("send it again in a moment").
    pub pdf_check_wait: Duration,
}

/// PDF checks at once by default: one per core, since each is CPU-bound.
pub fn default_pdf_checks_in_flight() -> usize {
    std::thread::available_parallelism()
        .map(std::num::NonZeroUsize::get)
        .unwrap_or(2)
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_envelope_bytes: 1024 * 1024,
            max_attachment_bytes: 2 * 1024 * 1024 * 1024,
            max_attachments: 100,
            max_recipients: 1000,
            redelivery_after: Duration::from_secs(60),
            max_submissions_in_flight: 256,
            pdf: lienthong_pades::Limits::default(),
            pdf_checks_in_flight: default_pdf_checks_in_flight(),
            pdf_check_wait: Duration::from_secs(120),
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
    /// Where each recipient's copy goes.
    pub routes: RouteTable,
    /// The national exchange, when `amqp.url` is configured; without it,
    /// recipients routed to an exchange are refused.
    pub exchange: Option<ExchangeSettings>,
    /// What to do with the signatures inside PDF attachments.
    pub pdf_policy: PdfPolicy,
    /// Working days and hours (`reports.working_hours`): the same-day
    /// sending rule and the deadlines count in them.
    pub calendar: lienthong_types::calendar::WorkingCalendar,
}

/// `signatures.pdf`: every PDF attachment's signatures are checked and the
/// result goes to the recipients; `Require` also refuses a document whose
/// main PDF (its first PDF attachment) is not validly signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PdfPolicy {
    #[default]
    Report,
    Require,
}

/// What the core must know of the AMQP side.
#[derive(Debug, Clone)]
pub struct ExchangeSettings {
    /// The largest AMQP message the broker takes: a message for the exchange
    /// travels whole (envelope and attachments), so larger ones are refused
    /// at the door rather than stuck in the outbox.
    pub max_message_bytes: u64,
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
            routes: RouteTable::default(),
            exchange: None,
            pdf_policy: PdfPolicy::default(),
            calendar: lienthong_types::calendar::WorkingCalendar::default(),
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
    /// The gateway's admins: every trace, reports, the directory. A client
    /// certificate bound by `directory bind-operator` to an `admin`
    /// account.
    Operator,
    /// Operators who only look: every trace and reports, not the directory
    /// (a certificate bound to a `viewer` account).
    Viewer,
    /// A publisher on the AMQP exchange (another gateway, or a queue-speaking
    /// agency): the transport vouches for nobody, so only an envelope whose
    /// signature is bound to its `from` is accepted.
    Exchange,
}

/// An authenticated caller: the agency (or operator) the transport vouches
/// for.
#[derive(Debug, Clone)]
pub struct Caller {
    pub organ_id: String,
    pub transport: Transport,
    pub role: Role,
    /// The SHA-256 (hex) of the client certificate's key the caller was
    /// identified by under mutual TLS: a call that lasts (a following
    /// `Receive`) ends once that binding is taken back.
    pub client_key: Option<String>,
}

impl Caller {
    pub fn new(organ_id: impl Into<String>, transport: Transport) -> Self {
        Caller {
            organ_id: organ_id.into(),
            transport,
            role: Role::Agency,
            client_key: None,
        }
    }

    /// One of the gateway's operators.
    pub fn operator(name: impl Into<String>, transport: Transport) -> Self {
        Caller {
            role: Role::Operator,
            ..Caller::new(name, transport)
        }
    }

    /// An operator of either role: may read every trace and the reports.
    pub fn is_operator(&self) -> bool {
        matches!(self.role, Role::Operator | Role::Viewer)
    }

    /// An operator who may change the directory.
    pub fn is_admin(&self) -> bool {
        self.role == Role::Operator
    }

    /// A message taken from an AMQP queue; `publisher` names where it came
    /// from for the transfer log (e.g. `exchange lienthong.documents`).
    pub fn exchange(publisher: impl Into<String>) -> Self {
        Caller {
            role: Role::Exchange,
            ..Caller::new(publisher, Transport::Amqp)
        }
    }
}

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
    routes: RouteTable,
    exchange: Option<ExchangeSettings>,
    pdf_policy: PdfPolicy,
    calendar: lienthong_types::calendar::WorkingCalendar,
    /// Wakes the AMQP relay when the outbox gains rows.
    outbox_wake: watch::Sender<u64>,
    broker: std::sync::OnceLock<Probe>,
    /// The maintenance windows for following `Receive` streams.
    notices: crate::maintenance::Notices,
    /// One permit per submission being taken (see
    /// [`Limits::max_submissions_in_flight`]).
    admission: Arc<tokio::sync::Semaphore>,
    /// One permit per PDF signature check running ([`Limits::pdf_checks_in_flight`]).
    pdf_checks: Arc<tokio::sync::Semaphore>,
    /// Calls refused before their caller was identified, summed per peer
    /// until the next line of the transfer log ([`crate::peers`]).
    unauthenticated: crate::peers::UnauthenticatedCalls,
}

struct Probe(BrokerProbe);

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BrokerProbe")
    }
}

/// Reports whether the AMQP broker is connected (see `Gateway::attach_broker`).
pub type BrokerProbe = Arc<dyn Fn() -> std::result::Result<(), String> + Send + Sync>;

/// A submission's place among those the gateway takes at once; released
/// when dropped (after the submission is answered).
#[derive(Debug)]
pub struct Admission {
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for Admission {
    fn drop(&mut self) {
        crate::metrics::submissions_in_flight(-1);
    }
}

/// The gateway core. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

/// What a caller asks to read of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Its envelope or attachments.
    Content,
    /// Its transfer log.
    Trail,
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
        let in_flight = settings.limits.max_submissions_in_flight.max(1);
        let pdf_checks = settings.limits.pdf_checks_in_flight.max(1);
        Gateway {
            inner: Arc::new(Inner {
                store,
                blobs,
                anchors: settings.anchors,
                gateway_id: settings.gateway_id,
                limits: settings.limits,
                inboxes: Inboxes::default(),
                receipt_signer: settings.receipt_signer,
                routes: settings.routes,
                exchange: settings.exchange,
                pdf_policy: settings.pdf_policy,
                calendar: settings.calendar,
                outbox_wake: watch::channel(0).0,
                broker: std::sync::OnceLock::new(),
                notices: Default::default(),
                admission: Arc::new(tokio::sync::Semaphore::new(in_flight)),
                pdf_checks: Arc::new(tokio::sync::Semaphore::new(pdf_checks)),
                unauthenticated: Default::default(),
            }),
        }
    }

    pub(crate) fn unauthenticated_calls(&self) -> &crate::peers::UnauthenticatedCalls {
        &self.inner.unauthenticated
    }

    pub(crate) fn store(&self) -> &Store {
        &self.inner.store
    }

    /// A temporary file in the attachment store's `tmp/`, for a transport
    /// that must decode a message before it can submit it (edXML): sealed
    /// when the store encrypts, removed when dropped or at the next start.
    /// Blocking I/O. See [`BlobStore::temp_file`].
    pub fn temp_file(&self) -> Result<crate::blobs::TempWriter> {
        self.inner.blobs.temp_file()
    }

    /// Reads back a finished temporary file (blocking I/O).
    pub fn temp_reader(&self, file: &SealedBlob) -> Result<crate::blobs::BlobCursor> {
        Ok(self.inner.blobs.source_of(file)?.into_reader())
    }

    /// A place for one more submission, or `UNAVAILABLE` at once when the
    /// gateway is already taking [`Limits::max_submissions_in_flight`]
    /// messages. Transports that can wait (a queue consumer, bounded by its
    /// prefetch) need not ask; a transport whose callers can send without
    /// bound (gRPC) asks before reading the first message, so an overload
    /// costs one refusal, not a transaction: shed calls are counted
    /// (`lienthong_submissions_shed_total`), not written to the transfer log,
    /// whose writes are what the overload is short of.
    pub fn admit(&self) -> Result<Admission> {
        match self.inner.admission.clone().try_acquire_owned() {
            Ok(permit) => {
                crate::metrics::submissions_in_flight(1);
                Ok(Admission { _permit: permit })
            }
            Err(_) => {
                crate::metrics::submission_shed();
                Err(Error::new(
                    Reason::Unavailable,
                    format!(
                        "the gateway is taking its limit of {} messages at once; nothing was kept, send the message again in a moment",
                        self.inner.limits.max_submissions_in_flight.max(1)
                    ),
                ))
            }
        }
    }

    pub fn gateway_id(&self) -> &str {
        &self.inner.gateway_id
    }

    pub(crate) fn notices(&self) -> &crate::maintenance::Notices {
        &self.inner.notices
    }

    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

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

    async fn begin(
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

    async fn check(
        &self,
        caller: &Caller,
        signed: SignedEnvelope,
        encoded_len: usize,
        proof: &Proof,
        arrival: Option<Arrival>,
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
        let envelope = Envelope::decode(signed.payload.clone()).map_err(|e| {
            Error::malformed(
                "the payload is not a lienthong.v1.Envelope protobuf; sign and send the encoded Envelope bytes",
            )
            .with_source(e)
        })?;
        note_ids(subject, &envelope);
        // Before anything of it is compared, stored or logged: PostgreSQL
        // cannot hold a NUL, and control characters break what reads the
        // columns later (indexes, reports, the dashboard).
        text::check_envelope(&envelope)?;
        validate_message_id(&envelope.message_id)?;
        let from = OrganId::parse_with(&envelope.from, policy).map_err(|e| {
            Error::new(
                Reason::BadIdentifier,
                format!("the envelope's `from`: {}", e.message()),
            )
        })?;
        if caller.role == Role::Exchange {
            // Over AMQP only a signature bound to `from` proves the origin.
            if !matches!(proof, Proof::Signatures) {
                return Err(Error::new(
                    Reason::BadSignature,
                    "a message taken from the exchange must be a signed envelope; this gateway cannot verify the origin of anything else",
                ));
            }
        } else if from.as_str() != caller.organ_id
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
        // An agency sending in the name of one it represents: named in the
        // report and the log line, so nobody takes the agent's word for the
        // principal's.
        let agent = (caller.role == Role::Agency && from.as_str() != caller.organ_id)
            .then(|| caller.organ_id.clone());
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
        let (mut routes, elsewhere) = self
            .route(
                &from,
                &recipients,
                arrival.as_ref(),
                &refs_size(&envelope),
                encoded_len,
            )
            .await?;
        if matches!(proof, Proof::CallerIdentity { .. })
            && routes.iter().any(|(_, r)| r.starts_with("exchange:"))
        {
            // Another gateway verifies the sender by its signature alone.
            return Err(Error::new(
                Reason::BadSignature,
                "an edXML package carries no signature another gateway can verify, and some recipients are served by other gateways; send it to them as a signed envelope (Exchange.Send), or send the edXML only to this gateway's agencies",
            ));
        }

        let mut verification = match proof {
            Proof::Signatures => {
                let mut v = self
                    .verify_signatures(&signed, &from, signing::signed_at_of(&envelope))
                    .await?;
                if let Some(a) = &agent {
                    v.summary.push_str(&format!("; sent by {a} for {from}"));
                }
                v
            }
            Proof::CallerIdentity { notes, .. } => {
                let mut summary = match &agent {
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
        };

        let mut unknown_document = false;
        let body = envelope.body.as_ref().ok_or_else(|| {
            Error::malformed("the envelope has neither a document nor a status notice")
        })?;
        let (kind, document_id, ref_from, status_code, refs) = match body {
            Body::Document(doc) => {
                if let Some(mark) = secret_classification(doc, &envelope.extensions) {
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
                    // From another gateway, a notice may overtake its
                    // document: it is kept, and the lifecycle applies it
                    // when the document arrives (see `lifecycle`).
                    if policy == IdPolicy::Strict && caller.role != Role::Exchange {
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
        if let (Proof::CallerIdentity { .. }, Some(agent)) = (proof, &agent) {
            agent_may_send_unsigned(agent, &from, body)?;
        }
        let effect = match self
            .check_lifecycle(caller, &from, &envelope.to, body, policy)
            .await
        {
            Ok(e) => e,
            // Under the lenient edXML policy, what real producers send is
            // carried even when the lifecycle cannot take it (all nine codes
            // of a test run in a row, a notice about a document that reached
            // its recipient another way): the notice travels, the report
            // says why it did not count, and the lifecycle shows it as not
            // applied. Lenient relaxes format, never authority: who may
            // recall, update, replace or answer a document
            // (`PERMISSION_DENIED`) holds under every policy.
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
                eff
            }
            Err(e) => return Err(e),
        };
        if let Some(r) = effect.routes.clone() {
            routes = r;
        }
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
                refs,
                current: 0,
                writer: None,
                sealed: Vec::new(),
                started: std::time::Instant::now(),
                pdf_check,
            })),
        })
    }

    /// Picks each recipient's route (see [`crate::routing`]). Returns the
    /// (recipient, route) pairs that get a delivery here, and the recipients
    /// left to the gateway that serves them (the loop rule).
    async fn route(
        &self,
        from: &OrganId,
        recipients: &[OrganId],
        arrival: Option<&Arrival>,
        attachments_size: &u64,
        encoded_len: usize,
    ) -> Result<(Vec<(String, String)>, Vec<String>)> {
        let inner = &self.inner;
        let from_here = inner.routes.is_local(from.as_str());
        let mut unknown = Vec::new();
        let mut no_exchange = Vec::new();
        let mut no_route = Vec::new();
        let mut routes = Vec::with_capacity(recipients.len());
        let mut elsewhere = Vec::new();
        for r in recipients {
            let id = r.as_str().to_owned();
            match inner.routes.resolve(r.as_str()).map(|r| &r.target) {
                None => no_route.push(id),
                Some(Target::Local) => match inner.store.agency(r.as_str()).await? {
                    Some(a) if a.active => {
                        let route = if a.channel == "amqp" && inner.exchange.is_some() {
                            format!("queue:{}", routing::agency_queue(r.as_str()))
                        } else {
                            "local".to_owned()
                        };
                        routes.push((id, route));
                    }
                    _ => unknown.push(id),
                },
                Some(Target::Exchange(name)) => {
                    // Straight into our queue (the default exchange) says
                    // nothing of where else it went: treat it like the
                    // exchange itself.
                    let came_from_there =
                        arrival.is_some_and(|a| a.exchange.is_empty() || &a.exchange == name);
                    if came_from_there && !from_here {
                        // Its sender's gateway published it for them already.
                        elsewhere.push(id);
                    } else if inner.exchange.is_none() {
                        no_exchange.push(id);
                    } else {
                        routes.push((id, format!("exchange:{name}")));
                    }
                }
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
        if !no_exchange.is_empty() {
            return Err(Error::new(
                Reason::UnknownRecipient,
                format!(
                    "{} is served by another gateway, but the national exchange is not configured here (no amqp.url); ask the operators, or send to agencies of this gateway",
                    no_exchange.join(", ")
                ),
            ));
        }
        if !no_route.is_empty() {
            return Err(Error::new(
                Reason::NotRoutable,
                format!(
                    "no route of this gateway covers {}; check the codes, or ask the operators to add a route",
                    no_route.join(", ")
                ),
            ));
        }
        if routes.is_empty() {
            return Err(Error::new(
                Reason::NotRoutable,
                format!(
                    "none of the recipients ({}) is served by this gateway; the message reached the wrong gateway",
                    elsewhere.join(", ")
                ),
            ));
        }
        if let Some(x) = &inner.exchange
            && routes.iter().any(|(_, route)| route != "local")
        {
            // The send stream's framing adds a few bytes per 256 KiB.
            let total = encoded_len as u64 + attachments_size + attachments_size / 16_384 + 1024;
            if total > x.max_message_bytes {
                return Err(Error::new(
                    Reason::SizeLimit,
                    format!(
                        "the message is {total} bytes with its attachments; a message for another gateway or an agency's queue travels whole over AMQP, and the limit is {} bytes (amqp.max_message_bytes)",
                        x.max_message_bytes
                    ),
                ));
            }
        }
        Ok((routes, elsewhere))
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
            pdf: Vec::new(),
        })
    }

    // ----- the document lifecycle ------------------------------

    /// Checks a document's business (recall, update, replace) or a status
    /// notice against the lifecycle of the document it refers to, and says
    /// what accepting it will do.
    async fn check_lifecycle(
        &self,
        caller: &Caller,
        from: &OrganId,
        to: &[String],
        body: &Body,
        policy: IdPolicy,
    ) -> Result<LifecycleEffect> {
        let inner = &self.inner;
        let from_exchange = caller.role == Role::Exchange;
        let mut effect = LifecycleEffect::default();
        match body {
            Body::Document(doc) => {
                let bt = doc.business.as_ref().map(|b| b.r#type).unwrap_or(0);
                effect.business_type = bt;
                effect.priority = i32::try_from(doc.priority).unwrap_or(0);
                effect.due_at = lienthong_types::calendar::parse_date(&doc.due_date)
                    .and_then(|d| d.next_day())
                    .map(lienthong_types::calendar::day_start_micros);
                // Decree 30: a document is sent the day it is signed, or the
                // next working day at the latest. Reported, not refused.
                if let Some(promulgated) =
                    lienthong_types::calendar::parse_date(&doc.promulgation_date)
                {
                    let today = lienthong_types::calendar::local_date(now_micros());
                    let late = inner.calendar.working_days_between(promulgated, today);
                    if late > 1 && !from_exchange {
                        effect.status_note = Some(format!(
                            "sent {late} working days after its promulgation date {}: Decree 30/2020/NĐ-CP \
                             (art. 16) asks for the same or the next working day",
                            doc.promulgation_date
                        ));
                    }
                }
                if bt == lifecycle::BUSINESS_NEW {
                    return Ok(effect);
                }
                let what = match bt {
                    lifecycle::BUSINESS_RECALL => "recall",
                    lifecycle::BUSINESS_UPDATE => "update",
                    lifecycle::BUSINESS_REPLACE => "replacement",
                    other => {
                        return Err(Error::malformed(format!(
                            "business.type {other} is not one of 0 (new), 1 (recall), 2 (update), 3 (replace)"
                        )));
                    }
                };
                // edXML names what a replacement replaces in its
                // ReplacementInfoList.
                let target = doc
                    .business
                    .as_ref()
                    .map(|b| {
                        let r = b.replaces.trim();
                        if r.is_empty() {
                            b.replacements
                                .first()
                                .map(|x| x.document_id.trim())
                                .unwrap_or_default()
                        } else {
                            r
                        }
                    })
                    .unwrap_or_default();
                if target.is_empty() {
                    if policy == IdPolicy::Lenient {
                        effect.note = Some(format!("a {what} that names no document it refers to"));
                        return Ok(effect);
                    }
                    return Err(Error::malformed(format!(
                        "a {what} must name the document it refers to in business.replaces (its document_id)"
                    )));
                }
                if target == doc.document_id {
                    return Err(Error::malformed(format!(
                        "a {what} needs a document_id of its own; business.replaces names the document it refers to"
                    )));
                }
                effect.replaces = Some(target.to_owned());
                let Some(original) = inner.store.document(from.as_str(), target).await? else {
                    let others = inner.store.document_senders(target).await?;
                    if let Some(owner) = others.iter().find(|o| o.as_str() != from.as_str()) {
                        return Err(Error::new(
                            Reason::PermissionDenied,
                            format!(
                                "document {target} was sent by {owner}; only its sender may send a {what} of it, and {from} is not its sender"
                            ),
                        ));
                    }
                    if from_exchange {
                        // Overtook its document on the way: kept, and the
                        // lifecycle applies it when the document arrives.
                        effect.note = Some(format!(
                            "a {what} of document {target}, which has not arrived here yet"
                        ));
                        return Ok(effect);
                    }
                    if policy == IdPolicy::Lenient {
                        // edXML producers refer to documents that reached
                        // their recipients some other way: carried, and
                        // the report says so (as for status notices).
                        effect.note = Some(format!(
                            "a {what} of document {target}, which this gateway has not carried"
                        ));
                        return Ok(effect);
                    }
                    return Err(Error::new(
                        Reason::NotFound,
                        format!(
                            "the {what} refers to document {target} of {from}, which this gateway has not carried; check business.replaces"
                        ),
                    ));
                };
                if original.business_type == lifecycle::BUSINESS_RECALL {
                    return Err(Error::malformed(format!(
                        "document {target} is itself a recall; a recall cannot be recalled, updated or replaced (send a new document instead)"
                    )));
                }
                let life = self.lifecycle_of(original).await?;
                if let Some(at) = life.recalled_at {
                    return Err(Error::malformed(format!(
                        "document {target} of {from} was recalled on {}: the sender's copy is frozen, so no further {what} of it is accepted",
                        lienthong_types::calendar::format_local(at)
                    )));
                }
                if bt != lifecycle::BUSINESS_RECALL {
                    effect.note = Some(format!(
                        "a{} {what} of document {target}",
                        if what == "update" { "n" } else { "" }
                    ));
                    return Ok(effect);
                }
                // A recall goes to every recipient still holding a copy; the
                // copies not yet handed out are withdrawn instead.
                let deliveries = inner.store.deliveries_of(life.document.id).await?;
                if !from_exchange {
                    // The origin knows every recipient: the recall may name
                    // only them (it goes to all of them anyway).
                    if let Some(stranger) = to
                        .iter()
                        .find(|t| !deliveries.iter().any(|d| &d.recipient == *t))
                    {
                        return Err(Error::malformed(format!(
                            "the recall is addressed to {stranger}, which was not a recipient of document {target}; a recall goes to the document's recipients"
                        )));
                    }
                }
                let mut routes = Vec::new();
                for d in deliveries {
                    match d.state.as_str() {
                        "withdrawn" => {}
                        "pending" if d.last_delivered_at.is_none() => {
                            effect.withdraw.push((d.id, d.recipient, d.route))
                        }
                        _ => routes.push((d.recipient, d.route)),
                    }
                }
                effect.note = Some(format!(
                    "a recall of document {target}: sent to {} recipient(s) holding a copy, withdrawn from {} inbox(es) not yet delivered",
                    routes.len(),
                    effect.withdraw.len()
                ));
                effect.routes = Some(routes);
                Ok(effect)
            }
            Body::Status(st) => {
                let Some(original) = inner
                    .store
                    .document(&st.document_from, &st.document_id)
                    .await?
                else {
                    return Ok(effect);
                };
                let code = st.code.as_str();
                let deliveries = inner.store.deliveries_of(original.id).await?;
                let is_recipient = deliveries.iter().any(|d| d.recipient == from.as_str());
                let is_sender = original.sender == from.as_str();
                if (code == "13" && !is_sender) || (code != "13" && !is_recipient) {
                    // From another gateway, the document's recipients are
                    // those of the other gateway too: only the origin knows
                    // them all.
                    if !(from_exchange && code != "13" && !is_sender) {
                        return Err(lifecycle::not_a_party(from.as_str(), code, &original));
                    }
                    effect.note = Some(format!(
                        "status {code} from {from}, a recipient served by another gateway"
                    ));
                    return Ok(effect);
                }
                let life = self.lifecycle_of(original).await?;
                let name = format!(
                    "document {} of {}",
                    life.document.document_id, life.document.sender
                );
                let now = now_micros();
                let recalled = life.recalled_at.is_some();
                let concerned: Vec<String> = if code == "13" {
                    // The recipients it is addressed to; from another
                    // gateway, those this gateway serves.
                    if let Some(stranger) = to
                        .iter()
                        .find(|t| !from_exchange && !life.recipients.contains_key(t.as_str()))
                    {
                        return Err(Error::malformed(format!(
                            "status 13 is addressed to {stranger}, which was not a recipient of {name}; ask only its recipients to give it back"
                        )));
                    }
                    to.iter()
                        .filter(|t| life.recipients.contains_key(t.as_str()))
                        .cloned()
                        .collect()
                } else {
                    vec![from.as_str().to_owned()]
                };
                let mut notes = Vec::new();
                for who in concerned {
                    let Some(r) = life.recipients.get(&who) else {
                        continue;
                    };
                    match lifecycle::apply(
                        &r.as_seen_by_notice(),
                        code,
                        now,
                        recalled,
                        &who,
                        &name,
                    )? {
                        lifecycle::Outcome::Changed(s) => {
                            notes.push(format!("{who}: {} → {}", r.state.label(), s.label()))
                        }
                        lifecycle::Outcome::Repeat => {
                            notes.push(format!("{who}: {} (a repeat)", r.state.label()))
                        }
                        lifecycle::Outcome::Stale => notes.push(format!(
                            "{who}: stays {} (status {code} comes after a later step)",
                            r.state.label()
                        )),
                    }
                }
                effect.status_note = Some(notes.join("; "));
                Ok(effect)
            }
        }
    }

    /// The lifecycle of one document, folded from the records.
    async fn lifecycle_of(&self, document: MessageRow) -> Result<lifecycle::DocumentLifecycle> {
        let store = &self.inner.store;
        let deliveries = store.deliveries_of(document.id).await?;
        let mut statuses = Vec::new();
        for m in store
            .statuses_answering(&document.sender, &document.document_id)
            .await?
        {
            let to = if m.status_code.as_deref() == Some("13") {
                store
                    .deliveries_of(m.id)
                    .await?
                    .into_iter()
                    .map(|d| d.recipient)
                    .collect()
            } else {
                Vec::new()
            };
            statuses.push((m, to));
        }
        let mut referring = Vec::new();
        for m in store
            .documents_referring(&document.sender, &document.document_id)
            .await?
        {
            let to = store
                .deliveries_of(m.id)
                .await?
                .into_iter()
                .map(|d| d.recipient)
                .collect();
            referring.push((m, to));
        }
        let overdue = store
            .overdue_events(&document.sender, &document.message_id)
            .await?;
        Ok(lifecycle::DocumentLifecycle::fold(lifecycle::Records {
            document,
            deliveries,
            statuses,
            referring,
            overdue,
        }))
    }

    /// Writes an `overdue` line for each recipient that missed a deadline
    /// since the last look: not accepted (03) within its priority's working
    /// hours, or not completed (06) by the DueDate. Each deadline is logged
    /// once per recipient. Returns how many lines it wrote.
    pub async fn check_deadlines(&self, rules: &lifecycle::Deadlines, now: i64) -> Result<usize> {
        let store = &self.inner.store;
        let calendar = &self.inner.calendar;
        let since = now - rules.watch_days.max(1) * 86_400_000_000;
        let priorities: Vec<i32> = rules.accept_within_hours.keys().copied().collect();
        let mut written = 0;
        for doc in store
            .deadline_candidates(since, now, &priorities, 5000)
            .await?
        {
            let accept_by = rules
                .accept_within_hours
                .get(&doc.priority)
                .map(|h| (calendar.cutoff(now, *h), *h));
            let late_accept = accept_by.is_some_and(|(cut, _)| doc.accepted_at <= cut);
            let past_due = doc.due_at.is_some_and(|d| d <= now);
            if !late_accept && !past_due {
                continue;
            }
            let (sender, message_id, document_id) = (
                doc.sender.clone(),
                doc.message_id.clone(),
                doc.document_id.clone(),
            );
            let due_at = doc.due_at;
            let priority = doc.priority;
            let logged: HashSet<(String, String)> = store
                .overdue_events(&sender, &message_id)
                .await?
                .into_iter()
                .filter_map(|e| Some((e.recipient?, e.reason.unwrap_or_default())))
                .collect();
            let life = self.lifecycle_of(doc).await?;
            for (who, r) in &life.recipients {
                if !r.state.is_open() || life.recalled_at.is_some() {
                    continue;
                }
                let mut lines = Vec::new();
                if let Some((_, hours)) = accept_by.filter(|_| late_accept)
                    && r.state.processing < lifecycle::Processing::Accepted
                {
                    lines.push((
                        lifecycle::OVERDUE_ACCEPT,
                        format!(
                            "document {document_id} ({}) not accepted (03) by {who} within {hours} working hour(s)",
                            lifecycle::priority_name(priority)
                        ),
                    ));
                }
                if past_due {
                    lines.push((
                        lifecycle::OVERDUE_DUE,
                        format!(
                            "document {document_id} not completed (06) by {who} by its due date ({})",
                            due_at.map(|d| lienthong_types::calendar::format_local(d - 1)).unwrap_or_default()
                        ),
                    ));
                }
                for (reason, detail) in lines {
                    if logged.contains(&(who.clone(), reason.to_owned())) {
                        continue;
                    }
                    store
                        .log(NewEvent {
                            kind: EventKind::Overdue,
                            sender: sender.clone(),
                            message_id: message_id.clone(),
                            recipient: Some(who.clone()),
                            reason: Some(reason.to_owned()),
                            detail,
                            actor: None,
                            transport: "gateway".to_owned(),
                        })
                        .await?;
                    crate::metrics::document_overdue(reason);
                    written += 1;
                }
            }
        }
        Ok(written)
    }

    /// `Exchange.DocumentStatus`: where document `document_id` of
    /// `doc_from` stands with each recipient. For its sender, its
    /// recipients and operators.
    pub async fn document_status(
        &self,
        caller: &Caller,
        doc_from: &str,
        document_id: &str,
    ) -> Result<pb::DocumentStatusResponse> {
        let store = &self.inner.store;
        let not_found = || {
            Error::new(
                Reason::NotFound,
                format!(
                    "this gateway has carried no document {} from {}; check document_id and from",
                    truncate(document_id, 200),
                    truncate(doc_from, 64)
                ),
            )
        };
        let Some(document) = store.document(doc_from, document_id).await? else {
            return Err(not_found());
        };
        let deliveries = store.deliveries_of(document.id).await?;
        let allowed = caller.is_operator()
            || caller.organ_id == document.sender
            || deliveries.iter().any(|d| d.recipient == caller.organ_id)
            || store.represents(&caller.organ_id, &document.sender).await?;
        if !allowed {
            // Not even whether it exists, to anyone else.
            return Err(not_found());
        }
        let mut links = Vec::new();
        if let Some(target) = &document.replaces {
            let relation = match document.business_type {
                lifecycle::BUSINESS_RECALL => "recalls",
                lifecycle::BUSINESS_UPDATE => "updates",
                _ => "replaces",
            };
            let target_msg = store.document(&document.sender, target).await?;
            links.push(pb::DocumentLink {
                relation: relation.to_owned(),
                document_id: target.clone(),
                message_id: target_msg
                    .as_ref()
                    .map(|m| m.message_id.clone())
                    .unwrap_or_default(),
                at: target_msg.map(|m| timestamp(m.accepted_at)),
            });
        }
        for m in store
            .documents_referring(&document.sender, &document.document_id)
            .await?
        {
            let relation = match m.business_type {
                lifecycle::BUSINESS_RECALL => "recalled_by",
                lifecycle::BUSINESS_UPDATE => "updated_by",
                _ => "replaced_by",
            };
            links.push(pb::DocumentLink {
                relation: relation.to_owned(),
                document_id: m.document_id.clone(),
                message_id: m.message_id.clone(),
                at: Some(timestamp(m.accepted_at)),
            });
        }
        let due_date = Envelope::decode(
            SignedEnvelope::decode(document.signed_envelope.as_slice())
                .map(|s| s.payload)
                .unwrap_or_default(),
        )
        .ok()
        .and_then(|e| match e.body {
            Some(Body::Document(d)) => Some(d.due_date),
            _ => None,
        })
        .unwrap_or_default();
        let life = self.lifecycle_of(document).await?;
        Ok(life.to_pb(links, due_date))
    }

    async fn receipt_for(&self, m: &MessageRow, duplicate: bool) -> Result<SendReceipt> {
        let deliveries = self.inner.store.deliveries_of(m.id).await?;
        Ok(make_receipt(
            m,
            deliveries,
            duplicate,
            &self.inner.gateway_id,
        ))
    }

    // ----- the outbox, for the AMQP relay ----------------------------------

    /// The agencies whose directory channel is `amqp` (they read their own
    /// queue), for the AMQP adapter to declare those queues up front.
    pub async fn queue_agencies(&self) -> Result<Vec<String>> {
        Ok(self
            .inner
            .store
            .agencies()
            .await?
            .into_iter()
            .filter(|a| a.active && a.channel == "amqp" && self.inner.routes.is_local(&a.organ_id))
            .map(|a| a.organ_id)
            .collect())
    }

    /// Changes whenever a commit adds rows to the outbox.
    pub fn outbox_watch(&self) -> watch::Receiver<u64> {
        self.inner.outbox_wake.subscribe()
    }

    /// Outbox rows still to publish with `id > after_id`, oldest first.
    pub async fn outbox_pending(&self, after_id: i64, limit: u64) -> Result<Vec<OutboxRow>> {
        self.inner.store.outbox_pending(after_id, limit).await
    }

    /// The next row of each routing key, oldest first (see
    /// `Store::outbox_heads`).
    pub async fn outbox_heads(&self, limit: u64) -> Result<Vec<OutboxRow>> {
        self.inner.store.outbox_heads(limit).await
    }

    pub async fn outbox_depth(&self) -> Result<u64> {
        self.inner.store.outbox_depth().await
    }

    /// What an outbox row publishes: the signed envelope as accepted, its
    /// attachments (read back and checked against their digests as they
    /// stream), and the hops so far, this gateway's included.
    /// A copy for the queue of an agency deactivated since it was accepted
    /// is held (`PERMISSION_DENIED`): it stays pending, and goes once the
    /// agency is activated again.
    pub async fn outbound(&self, row: OutboxRow) -> Result<Outbound> {
        let inner = &self.inner;
        if row.exchange.is_empty()
            && let Some(organ_id) = routing::queue_agency(&row.routing_key)
            && inner
                .store
                .agency(organ_id)
                .await?
                .is_some_and(|a| !a.active)
        {
            return Err(Error::new(
                Reason::PermissionDenied,
                format!(
                    "{organ_id} is deactivated: its copy stays in the outbox until the operators activate it again"
                ),
            ));
        }
        let Some(m) = inner.store.message_by_pk(row.message_pk).await? else {
            return Err(Error::new(
                Reason::NotFound,
                format!("outbox row {} names a missing message", row.id),
            ));
        };
        let subject = Subject {
            sender: m.sender.clone(),
            message_id: m.message_id.clone(),
            actor: Some(inner.gateway_id.clone()),
            transport: Transport::Amqp,
        };
        let mut attachments = Vec::new();
        for (i, a) in inner.store.attachments(m.id).await?.into_iter().enumerate() {
            let reader = match inner.blobs.open_blob(&a.sha256, a.size.max(0) as u64).await {
                Ok(r) => r,
                Err(e) => {
                    inner.log_integrity(&subject, i as u32, &e).await;
                    return Err(e);
                }
            };
            attachments.push(AttachmentReader {
                gw: inner.clone(),
                subject: subject.clone(),
                index: i as u32,
                reader,
            });
        }
        Ok(Outbound {
            hops: hops_of(&m, &inner.gateway_id),
            sender: m.sender,
            message_id: m.message_id,
            signed_envelope: m.signed_envelope,
            attachments,
            row,
        })
    }

    /// The broker confirmed the row: its delivery is handed over.
    pub async fn outbox_sent(&self, row: &OutboxRow) -> Result<()> {
        self.inner.store.outbox_sent(row).await
    }

    /// Publishing the row failed; it stays pending and is tried again.
    pub async fn outbox_failed(&self, row: &OutboxRow, error: &str) -> Result<()> {
        self.inner.store.outbox_failed(row.id, error).await
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
            remaining: None,
            wake: self.inner.inboxes.subscribe(&caller.organ_id),
            // The caller's standing was checked when it was identified.
            standing_at: tokio::time::Instant::now(),
        }
    }

    /// Acknowledges a delivery of the caller's inbox.
    pub async fn ack(&self, caller: &Caller, delivery_id: &str) -> Result<()> {
        if caller.role != Role::Agency {
            return Err(no_inbox());
        }
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
        let m = self
            .authorised_message(caller, from, message_id, Access::Content)
            .await?;
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
        let m = self
            .authorised_message(caller, from, message_id, Access::Content)
            .await?;
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
        access: Access,
    ) -> Result<MessageRow> {
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
        if caller.is_operator() {
            // The IT office follows a document's trail; its content is for
            // the agencies that sent and received it.
            if access == Access::Trail {
                return Ok(m);
            }
            return Err(Error::new(
                Reason::PermissionDenied,
                "an operator sees a document's trail (Trace, DocumentStatus), not its content: the envelope and attachments are for its sender and recipients",
            ));
        }
        if m.sender == caller.organ_id {
            return Ok(m);
        }
        let deliveries = self.inner.store.deliveries_of(m.id).await?;
        if let Some(d) = deliveries.iter().find(|d| d.recipient == caller.organ_id) {
            if access == Access::Content && d.state == "withdrawn" {
                // Recalled before it reached the recipient: its copy no
                // longer exists (the sender keeps its frozen copy). The
                // trail stays visible, so it can see why.
                return Err(Error::new(
                    Reason::NotFound,
                    format!(
                        "message {} of {} was recalled by its sender before it was delivered to {}: \
                         your copy was withdrawn and its content is no longer available to you; \
                         `Trace` and `DocumentStatus` show the recall",
                        truncate(message_id, MAX_MESSAGE_ID),
                        m.sender,
                        caller.organ_id
                    ),
                ));
            }
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
                self.authorised_message(c, from, message_id, Access::Trail)
                    .await?;
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
    /// binding of its key is the only source of identity under mutual TLS,
    /// and an agency's software is identified only while the agency is
    /// active.
    pub async fn identify_client(
        &self,
        spki_sha256: &[u8; 32],
        transport: Transport,
    ) -> Result<Caller> {
        let hex = hex::encode(spki_sha256);
        // Not logged here: a caller that cannot be identified is answered
        // and summed per peer by the transport ([`Gateway::refuse_unauthenticated`]),
        // never written to the transfer log call by call.
        let Some(binding) = self.inner.store.client_cert(&hex).await? else {
            return Err(Error::new(
                Reason::PermissionDenied,
                format!(
                    "this client certificate (key sha256 {hex}) is not bound to any agency; ask the operators to run `lienthong directory bind-client-cert ORGAN_ID CERT.pem`"
                ),
            ));
        };
        let role = if binding.role == "operator" {
            // The account the certificate is bound to gives the role; a
            // removed or disabled account's certificate opens nothing.
            match crate::operators::active_role(&self.inner.store, &binding.organ_id).await? {
                Some(crate::operators::OperatorRole::Admin) => Role::Operator,
                Some(crate::operators::OperatorRole::Viewer) => Role::Viewer,
                None => {
                    return Err(Error::new(
                        Reason::PermissionDenied,
                        format!(
                            "this client certificate (key sha256 {hex}) is bound to operator {:?}, which is not an active operator account; ask an admin (`lienthong operator list`)",
                            truncate(&binding.organ_id, 100)
                        ),
                    ));
                }
            }
        } else {
            Role::Agency
        };
        let caller = Caller {
            organ_id: binding.organ_id,
            transport,
            role,
            client_key: Some(hex),
        };
        self.standing(&caller).await?;
        Ok(caller)
    }

    /// The caller a `dev-header` request names: believed, except that an
    /// agency the directory lists as inactive is refused as under mutual
    /// TLS. (A name the directory does not know passes: the mode is for
    /// trying the gateway out.)
    pub async fn identify_named(&self, organ_id: &str, transport: Transport) -> Result<Caller> {
        let caller = Caller::new(organ_id, transport);
        self.standing(&caller).await?;
        Ok(caller)
    }

    /// Whether an identified caller still stands: its client certificate's
    /// binding is still there and unchanged, and an agency is not
    /// deactivated. Checked when a call is identified, and again by a call
    /// that lasts (a following `Receive` stream, at least every
    /// [`STANDING_CHECK`]), so that taking trust back reaches calls already
    /// under way. A refusal is `PERMISSION_DENIED`, not logged here: at
    /// identification the transport sums it per peer
    /// ([`Gateway::refuse_unauthenticated`]); a call under way that it ends
    /// logs it once.
    pub async fn standing(&self, caller: &Caller) -> Result<()> {
        let store = &self.inner.store;
        if let Some(key) = &caller.client_key {
            let role = match caller.role {
                Role::Operator | Role::Viewer => "operator",
                _ => "agency",
            };
            let still = store
                .client_cert(key)
                .await?
                .is_some_and(|b| b.organ_id == caller.organ_id && b.role == role);
            if !still {
                let err = Error::new(
                    Reason::PermissionDenied,
                    format!(
                        "this client certificate (key sha256 {key}) is no longer bound to {}: the operators took it back; ask them which certificate to use",
                        caller.organ_id
                    ),
                );
                return Err(err);
            }
        }
        if caller.role == Role::Agency
            && let Some(a) = store.agency(&caller.organ_id).await?
            && !a.active
        {
            let err = Error::new(
                Reason::PermissionDenied,
                format!(
                    "{} is deactivated in this gateway's directory: its software can neither send nor receive until the operators activate it again (`lienthong directory activate {}`)",
                    caller.organ_id, caller.organ_id
                ),
            );
            return Err(err);
        }
        Ok(())
    }

    /// Readiness: the database answers.
    pub async fn ready(&self) -> Result<()> {
        self.inner.store.ping().await
    }

    /// Whether the gateway can serve anything at all right now: the
    /// database answers and the attachment store takes bytes. A failure
    /// while this holds is the failure of one request, not an outage.
    pub async fn healthy(&self) -> Result<()> {
        self.inner.store.ping().await?;
        self.inner.blobs.check_writable().await
    }

    /// Lets health checks see the AMQP connection: `probe` answers `Err`
    /// with the reason while the broker is unreachable.
    pub fn attach_broker(&self, probe: BrokerProbe) {
        let _ = self.inner.broker.set(Probe(probe));
    }

    /// The broker's state: `None` without AMQP.
    pub fn broker_status(&self) -> Option<std::result::Result<(), String>> {
        self.inner.broker.get().map(|p| (p.0)())
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
    /// The attachment's position in the document.
    pub fn index(&self) -> u32 {
        self.index
    }

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
        // What a caller sent may be quoted here; the log keeps it printable
        // (and storable: PostgreSQL refuses a NUL in text).
        let e = NewEvent {
            kind,
            sender: text::printable(&subject.sender).into_owned(),
            message_id: text::printable(&subject.message_id).into_owned(),
            recipient: None,
            reason: reason.map(str::to_owned),
            detail: text::printable(detail).into_owned(),
            actor: subject.actor.clone(),
            transport: subject.transport.as_str().to_owned(),
        };
        if let Err(err) = self.store.log(e).await {
            // The refusal itself still reaches the sender; the operator sees this.
            tracing::error!(error = %err.chain(), kind = kind.as_str(), "could not write to the transfer log");
        }
    }
}

/// A row of the outbox (what the AMQP relay publishes).
pub use lienthong_store::rows::OutboxRow;

/// An outbox row with what it publishes.
#[derive(Debug)]
pub struct Outbound {
    pub row: OutboxRow,
    pub sender: String,
    pub message_id: String,
    /// The `SignedEnvelope` bytes as accepted.
    pub signed_envelope: Vec<u8>,
    /// The attachments in order.
    pub attachments: Vec<AttachmentReader>,
    /// Where the message has been, this gateway last.
    pub hops: Vec<TraceHop>,
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
    /// Documents (not status notices) get their PDF attachments' signatures
    /// checked.
    pdf_check: Option<PdfCheck>,
}

#[derive(Debug)]
struct PdfCheck {
    /// The envelope's Signer.FullName, for the Decree 30 comparison.
    signer_name: Option<String>,
    /// When the envelope arrived: signatures without a trusted timestamp
    /// are judged at this time, not at the one they claim.
    received_at: rustls_pki_types::UnixTime,
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
                for r in &recipients {
                    gw.inboxes.notify(r);
                }
                if deliveries.iter().any(|d| d.route != "local") {
                    gw.outbox_wake.send_modify(|v| *v = v.wrapping_add(1));
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
            Err(e @ AcceptError::Db(_)) => {
                remove_unreferenced(gw, &created).await;
                Err(e.into())
            }
        }
    }
}

/// The security classification (độ mật) a document carries, if it carries
/// one that makes it a state secret: the envelope's `confidentiality`, or
/// an edXML element producers use for it (kept in `extensions`).
fn secret_classification(doc: &pb::Document, extensions: &[pb::XmlExtension]) -> Option<String> {
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

/// What accepting a message will do to the lifecycle of the document it
/// refers to.
#[derive(Debug, Default)]
struct LifecycleEffect {
    business_type: i32,
    replaces: Option<String>,
    /// A recall: where it goes (every recipient still holding a copy),
    /// instead of the envelope's `to`.
    routes: Option<Vec<(String, String)>>,
    withdraw: Vec<(i64, String, String)>,
    /// For the verification summary.
    note: Option<String>,
    /// For the log line: a status's effect on each recipient's state
    /// (before → after); a document sent late.
    status_note: Option<String>,
    priority: i32,
    due_at: Option<i64>,
}

impl LifecycleEffect {
    /// What a document records whatever its lifecycle: its business type,
    /// priority and due time.
    fn of_document(body: &Body) -> LifecycleEffect {
        match body {
            Body::Document(doc) => LifecycleEffect {
                business_type: doc.business.as_ref().map(|b| b.r#type).unwrap_or(0),
                priority: i32::try_from(doc.priority).unwrap_or(0),
                due_at: lienthong_types::calendar::parse_date(&doc.due_date)
                    .and_then(|d| d.next_day())
                    .map(lienthong_types::calendar::day_start_micros),
                ..LifecycleEffect::default()
            },
            Body::Status(_) => LifecycleEffect::default(),
        }
    }
}

/// An agent's unsigned message in its principal's name may only be a new
/// document: a recall, update, replacement or status notice changes or
/// answers what the principal did before, and only the principal's own
/// signature (or its own software) may say that.
fn agent_may_send_unsigned(agent: &str, principal: &OrganId, body: &Body) -> Result<()> {
    let what = match body {
        Body::Status(st) => format!("status notice {}", truncate(&st.code, 8)),
        Body::Document(doc) => match doc.business.as_ref().map(|b| b.r#type).unwrap_or(0) {
            lifecycle::BUSINESS_NEW => return Ok(()),
            lifecycle::BUSINESS_RECALL => "recall".to_owned(),
            lifecycle::BUSINESS_UPDATE => "update".to_owned(),
            lifecycle::BUSINESS_REPLACE => "replacement".to_owned(),
            other => format!("document of business type {other}"),
        },
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

/// Whether an attachment is a PDF, by what its sender declared (type,
/// manifest type or file name); the verifier then checks the bytes.
fn is_pdf(r: &AttachmentRef) -> bool {
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
async fn check_pdfs(
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
                crate::metrics::pdf_verified(report.verdict);
                crate::metrics::pdf_bytes_hashed(report.bytes_hashed);
                if let Some(why) = &report.limit_reached {
                    crate::metrics::pdf_check_limited();
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
                crate::metrics::pdf_verified(lienthong_pades::Verdict::Invalid);
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

fn pdf_verification(
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
fn require_signed_pdf(refs: &[AttachmentRef], pdf: &[pb::PdfVerification]) -> Result<()> {
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

/// An operator's certificate (whatever its account is named) reads no
/// agency's inbox.
fn no_inbox() -> Error {
    Error::new(
        Reason::PermissionDenied,
        "an operator has no inbox: Receive and Ack are for agencies' software",
    )
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
    /// Read and marked delivered (with their attempt numbers), not yet
    /// handed out.
    buffered: VecDeque<(PendingDelivery, i32)>,
    /// Deliveries the caller still wants (`Receive.max`); `None`: no bound.
    /// Nothing beyond it is read, so nothing beyond it is marked handed out.
    remaining: Option<u32>,
    wake: watch::Receiver<u64>,
    /// When the caller's standing was last checked (see
    /// [`Gateway::standing`]).
    standing_at: tokio::time::Instant,
}

/// How often a call that lasts (a following `Receive`) checks again that
/// its caller still stands: a certificate unbound or an agency deactivated
/// ends a stream under way within this (and one query's time).
pub const STANDING_CHECK: Duration = Duration::from_secs(5);

impl Inbox {
    /// At most `max` deliveries (0: no bound).
    pub fn with_max(mut self, max: u32) -> Inbox {
        self.remaining = (max > 0).then_some(max);
        self
    }

    /// The next delivery; `None` when the inbox is drained and the stream
    /// does not follow, or `max` deliveries were handed out.
    pub async fn next(&mut self) -> Result<Option<Delivery>> {
        if self.caller.role != Role::Agency {
            return Err(no_inbox());
        }
        loop {
            if let Some((p, attempt)) = self.buffered.pop_front() {
                crate::metrics::delivery_handed_out();
                return Ok(Some(self.delivery(p, attempt)?));
            }
            let limit = match self.remaining {
                Some(0) => return Ok(None),
                Some(n) => u64::from(n).min(64),
                None => 64,
            };
            if self.standing_at.elapsed() >= STANDING_CHECK {
                self.check_standing().await?;
            }
            // Mark the current notification seen before looking, so a
            // delivery that lands during the query wakes us again.
            self.wake.borrow_and_update();
            let batch = if self.first_pass {
                self.gw
                    .store
                    .pending(&self.caller.organ_id, self.cursor, None, limit)
                    .await?
            } else {
                let lease = self.gw.limits.redelivery_after.as_micros() as i64;
                self.gw
                    .store
                    .pending(&self.caller.organ_id, 0, Some(now_micros() - lease), limit)
                    .await?
            };
            if let Some(last) = batch.last() {
                self.cursor = self.cursor.max(last.delivery.id);
                // The whole batch is marked handed out at once, through
                // the group committer: a recipient with a backlog costs a
                // share of one fsync per batch, not one per document. What is marked and not yet sent when the
                // stream ends comes again after `redelivery_after`, as any
                // unacknowledged delivery does.
                let attempts = self
                    .gw
                    .store
                    .mark_delivered_batch(&batch, self.caller.transport.as_str())
                    .await?;
                if let Some(n) = self.remaining.as_mut() {
                    *n = n.saturating_sub(batch.len() as u32);
                }
                self.buffered.extend(batch.into_iter().zip(attempts));
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
            let looked = tokio::time::Instant::now();
            loop {
                tokio::select! {
                    changed = self.wake.changed() => {
                        if changed.is_err() {
                            return Ok(None);
                        }
                        break;
                    }
                    _ = tokio::time::sleep_until(looked + tick) => break,
                    _ = tokio::time::sleep_until(self.standing_at + STANDING_CHECK) => {
                        self.check_standing().await?;
                    }
                }
            }
        }
    }

    async fn check_standing(&mut self) -> Result<()> {
        let gw = Gateway {
            inner: self.gw.clone(),
        };
        if let Err(e) = gw.standing(&self.caller).await {
            return Err(if e.reason() == Reason::PermissionDenied {
                gw.refuse(Some(&self.caller), "", e).await
            } else {
                e
            });
        }
        self.standing_at = tokio::time::Instant::now();
        Ok(())
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
            trace: hops_of(&p.message, &self.gw.gateway_id),
            accepted_at: Some(timestamp(p.message.accepted_at)),
            verification,
            attempt: attempt.max(1) as u32,
            edxml: Default::default(),
            notice: None,
        })
    }
}

/// A message's journey: the hops before this gateway, then its own.
pub(crate) fn hops_of(m: &MessageRow, gateway: &str) -> Vec<TraceHop> {
    let mut hops = m
        .upstream
        .as_deref()
        .and_then(|b| Hops::decode(b).ok())
        .map(|h| h.hops)
        .unwrap_or_default();
    hops.push(TraceHop {
        gateway: gateway.to_owned(),
        event: "accepted".to_owned(),
        at: Some(timestamp(m.accepted_at)),
    });
    hops
}

/// The ids a refusal is logged under, as received but printable.
fn note_ids(subject: &mut Subject, env: &Envelope) {
    subject.message_id = text::printable(truncate(&env.message_id, MAX_MESSAGE_ID)).into_owned();
    if !env.from.is_empty() {
        subject.sender = text::printable(truncate(&env.from, 64)).into_owned();
    }
}

/// The attachments' signed sizes together.
fn refs_size(envelope: &Envelope) -> u64 {
    match &envelope.body {
        Some(Body::Document(d)) => d.attachments.iter().map(|a| a.size).sum(),
        _ => 0,
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
                route: d.route,
            })
            .collect(),
        gateway: gateway.to_owned(),
        ..Default::default()
    }
}

fn trace_event(e: EventRow) -> TraceEvent {
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

fn agency_pb(a: AgencyRow) -> Agency {
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

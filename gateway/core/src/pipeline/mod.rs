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

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::blobs::{BlobStore, SealedBlob};
use crate::error::{Error, Reason, Result};
use crate::routing::RouteTable;
use crate::store::{Store, WriterId};
use lienthong_pki::receipts::ReceiptSigner;
use lienthong_pki::signing::TrustAnchors;

mod admin;
mod checkpoints;
mod checks;
mod identify;
mod inbox;
mod leader;
mod lifecycle_checks;
mod log;
mod maintenance;
mod operators;
mod outbox;
mod peers;
mod queries;
mod route;
mod submission;

pub use crate::caller::{Caller, Role, Transport};
pub use checkpoints::{ReceiptCerts, ReceiptKey, watch_checkpoints};
use identify::Access;
use inbox::Inboxes;
pub use inbox::{AttachmentReader, Inbox, STANDING_CHECK, watch_landed};
pub use leader::while_leading;
use log::Subject;
pub use maintenance::watch_maintenance;
pub use outbox::{Outbound, OutboxEntry};
pub use peers::watch_unauthenticated;
use submission::Proof;
pub use submission::{Arrival, Hops, Submission};

/// Status codes a `StatusNotice` may carry (DESIGN.md §2).
pub const STATUS_CODES: [&str; 9] = ["01", "02", "03", "04", "05", "06", "13", "15", "16"];

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
    /// The chain of the transfer log this gateway extends (one per replica;
    /// `main` by default).
    pub writer: WriterId,
    pub storage_path: PathBuf,
    pub anchors: TrustAnchors,
    pub limits: Limits,
    /// The gateway's key for signing receipts; receipts are unsigned without it.
    /// It signs the transfer log's checkpoints too.
    pub receipt_signer: Option<Arc<ReceiptSigner>>,
    /// The receipt certificates (`receipts.cert`, `receipts.trusted_signers`)
    /// the checkpoints' signatures are checked with (`VerifyLog`).
    pub receipt_certs: ReceiptCerts,
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
    /// Where the gateway registers its metrics; the adapters register theirs
    /// into the same registry ([`Gateway::metrics_registry`]).
    pub metrics: lienthong_metrics::Registry,
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
            writer: WriterId::main(),
            storage_path: PathBuf::from("./data/blobs"),
            anchors: TrustAnchors::empty(),
            limits: Limits::default(),
            receipt_signer: None,
            receipt_certs: ReceiptCerts::default(),
            routes: RouteTable::default(),
            exchange: None,
            pdf_policy: PdfPolicy::default(),
            calendar: lienthong_types::calendar::WorkingCalendar::default(),
            metrics: lienthong_metrics::Registry::new(),
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
    receipt_certs: ReceiptCerts,
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
    metrics: crate::metrics::Metrics,
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
    gateway: Gateway,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.gateway.metrics().submissions_in_flight(-1);
    }
}

/// The gateway core. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

impl Gateway {
    /// Connects the database (migrating it) and opens the attachment store.
    pub async fn open(settings: Settings) -> Result<Gateway> {
        let store = Store::connect(&settings.database_url, settings.writer.clone()).await?;
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
                receipt_certs: settings.receipt_certs,
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
                metrics: crate::metrics::Metrics::register(&settings.metrics),
            }),
        }
    }

    pub(crate) fn unauthenticated_calls(&self) -> &crate::peers::UnauthenticatedCalls {
        &self.inner.unauthenticated
    }

    pub(crate) fn metrics(&self) -> &crate::metrics::Metrics {
        &self.inner.metrics
    }

    /// The registry of the gateway's metrics, for the adapters to register
    /// theirs beside the pipeline's.
    pub fn metrics_registry(&self) -> &lienthong_metrics::Registry {
        self.inner.metrics.registry()
    }

    pub(crate) fn store(&self) -> &Store {
        &self.inner.store
    }

    pub(crate) fn receipt_signer(&self) -> Option<Arc<ReceiptSigner>> {
        self.inner.receipt_signer.clone()
    }

    /// Waits until this replica holds the lease of `job`, one that runs on
    /// one replica at a time (see [`while_leading`]; the AMQP adapter holds
    /// its own, to stop in its own way).
    pub async fn lease(&self, job: &str) -> Result<crate::store::Lease> {
        self.inner.store.lease(job).await
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
                self.metrics().submissions_in_flight(1);
                Ok(Admission {
                    _permit: permit,
                    gateway: self.clone(),
                })
            }
            Err(_) => {
                self.metrics().submission_shed();
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

//! `lienthong.toml`: the file given by `--config` or `LIENTHONG_CONFIG`,
//! then `LIENTHONG_SECTION__KEY` environment overrides, over the embedded
//! defaults (SQLite under ./data, gRPC on 127.0.0.1:50051).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::ValueEnum;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use lienthong_core::pipeline::Limits;
use lienthong_core::store::WriterId;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub gateway: GatewaySection,
    pub grpc: GrpcSection,
    pub database: DatabaseSection,
    pub storage: StorageSection,
    pub trust: TrustSection,
    pub auth: AuthSection,
    pub limits: LimitsSection,
    pub receipts: ReceiptsSection,
    pub tls: TlsSection,
    pub edxml: EdxmlSection,
    /// The HTTP listener (dashboard, metrics, health, report downloads).
    pub http: HttpSection,
    /// Reports and the monthly report.
    pub reports: ReportsSection,
    /// The national exchange (RabbitMQ); off without `amqp.url`.
    pub amqp: lienthong_amqp::AmqpConfig,
    /// Where each recipient's copy goes, most specific pattern
    /// first. Empty: every code is local.
    pub routes: Vec<lienthong_core::routing::RouteSpec>,
    /// The digital signatures inside PDF attachments (PAdES).
    pub signatures: SignaturesSection,
    /// Deadlines of the document lifecycle.
    pub lifecycle: LifecycleSection,
    /// The transfer log's checkpoints.
    pub log: LogSection,
    /// Scheduled backups under `serve`.
    pub backup: BackupSection,
    /// Archive packages: when documents leave the hot database.
    pub archive: ArchiveSection,
    /// The gateways this one takes directory updates from, and for which
    /// codes (the national directory exchange, over AMQP).
    pub peers: Vec<PeerSection>,
}

/// `[[peers]]`: a gateway trusted for the directory of some codes.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct PeerSection {
    /// Its `gateway.id`, as its updates name their publisher.
    pub name: String,
    /// The codes it is authoritative for: AMQP topic patterns over codes,
    /// as in `[[routes]]` (e.g. `["#.H53"]`).
    pub codes: Vec<String>,
    /// Its receipt certificate (PEM): its key signs its updates.
    pub cert: Option<PathBuf>,
    /// Instead of `cert`: the authority its certificate chains to (PEM) ...
    pub anchor: Option<PathBuf>,
    /// ... and the exact subject its certificate carries.
    pub subject: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArchiveSection {
    /// Where `lienthong archive create` writes its packages.
    pub dir: PathBuf,
    /// Days a document stays in the hot database after it was accepted,
    /// even when its lifecycle has ended (its trail and content are then
    /// still at hand).
    pub keep_days: u32,
    /// `keep_days` for documents of a given type: the edXML
    /// DocumentType's `Type` number (as the national catalogue numbers
    /// them) → days, e.g. `{ "1" = 365 }` keeps resolutions (nghị quyết) a
    /// year.
    pub keep_days_by_type: std::collections::BTreeMap<String, u32>,
    /// Days after which a document is archived even though its lifecycle
    /// has not ended (a recipient never reported 06). A document with a
    /// copy still waiting in an inbox is never archived.
    pub after_days: u32,
    /// The most documents one package takes; the rest wait for the next run.
    pub max_documents: u32,
}

impl Default for ArchiveSection {
    fn default() -> Self {
        ArchiveSection {
            dir: PathBuf::from("./data/archive"),
            keep_days: 90,
            keep_days_by_type: std::collections::BTreeMap::new(),
            after_days: 365,
            max_documents: 10_000,
        }
    }
}

impl ArchiveSection {
    /// How long a document of type `doc_type` stays hot, in days.
    pub fn keep_days_for(&self, doc_type: u32) -> u32 {
        self.keep_days_by_type
            .get(&doc_type.to_string())
            .copied()
            .unwrap_or(self.keep_days)
    }

    /// The keys of `keep_days_by_type`, checked.
    pub fn check(&self) -> Result<()> {
        for k in self.keep_days_by_type.keys() {
            if k.parse::<u32>().is_err() {
                anyhow::bail!(
                    "archive.keep_days_by_type has the key {k:?}: use the DocumentType's Type \
                     number (e.g. \"1\"), as edXML and the national catalogue number them"
                );
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackupSection {
    /// Where scheduled backups go: one folder per backup, named by its
    /// date and time.
    pub dir: PathBuf,
    /// The daily time of the backup, `HH:MM` in Vietnam time (UTC+7);
    /// unset: no scheduled backup.
    pub schedule: Option<String>,
    /// Days a finished backup is kept; the newest is never removed.
    pub keep: u32,
}

impl Default for BackupSection {
    fn default() -> Self {
        BackupSection {
            dir: PathBuf::from("./data/backups"),
            schedule: None,
            keep: 30,
        }
    }
}

impl BackupSection {
    /// `schedule` as (hour, minute), checked; `None` when unset.
    pub fn daily_at(&self) -> Result<Option<(u8, u8)>> {
        let Some(text) = self.schedule.as_deref().map(str::trim) else {
            return Ok(None);
        };
        let parsed = text.split_once(':').and_then(|(h, m)| {
            let (h, m) = (h.parse::<u8>().ok()?, m.parse::<u8>().ok()?);
            (h < 24 && m < 60 && text.len() == 5).then_some((h, m))
        });
        match parsed {
            Some(at) => Ok(Some(at)),
            None => anyhow::bail!(
                "backup.schedule = {text:?} is not a time of day: write it as \"HH:MM\" \
                 (Vietnam time, e.g. \"01:30\"), or leave it unset for no scheduled backup"
            ),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSection {
    /// How often this replica writes a signed checkpoint of every chain's
    /// head into its chain of the transfer log (besides one at start and
    /// one at a clean stop); 0 writes none.
    pub checkpoint_every_secs: u64,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            checkpoint_every_secs: 300,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LifecycleSection {
    /// Working hours (`reports.working_hours`) within which a recipient must
    /// accept (03) a document, by priority: "1" khẩn, "2" thượng khẩn,
    /// "3" hỏa tốc, "4" hỏa tốc hẹn giờ ("0", normal, may be set too).
    pub accept_within_hours: std::collections::BTreeMap<String, f64>,
    /// How often the deadlines are looked at.
    pub check_every_secs: u64,
    /// Documents older than this many days are no longer watched.
    pub watch_days: i64,
}

impl Default for LifecycleSection {
    fn default() -> Self {
        let d = lienthong_core::lifecycle::Deadlines::default();
        LifecycleSection {
            accept_within_hours: d
                .accept_within_hours
                .iter()
                .map(|(p, h)| (p.to_string(), *h))
                .collect(),
            check_every_secs: 60,
            watch_days: d.watch_days,
        }
    }
}

impl LifecycleSection {
    pub fn deadlines(&self) -> Result<lienthong_core::lifecycle::Deadlines> {
        let mut accept_within_hours = std::collections::BTreeMap::new();
        for (p, h) in &self.accept_within_hours {
            let priority: i32 = match p.trim().parse() {
                Ok(v) if (0..=4).contains(&v) => v,
                _ => anyhow::bail!(
                    "lifecycle.accept_within_hours: {p:?} is not a priority (0 normal, 1 khẩn, 2 thượng khẩn, 3 hỏa tốc, 4 hỏa tốc hẹn giờ)"
                ),
            };
            if !(h.is_finite() && *h > 0.0) {
                anyhow::bail!(
                    "lifecycle.accept_within_hours.{p} = {h} is not a number of hours (more than 0)"
                );
            }
            accept_within_hours.insert(priority, *h);
        }
        if self.watch_days < 1 {
            anyhow::bail!(
                "lifecycle.watch_days = {} must be 1 or more",
                self.watch_days
            );
        }
        Ok(lienthong_core::lifecycle::Deadlines {
            accept_within_hours,
            watch_days: self.watch_days,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct SignaturesSection {
    /// `report` (check every PDF attachment and tell the recipients) or
    /// `require` (also refuse a document whose main PDF is not validly
    /// signed: DOCUMENT_UNSIGNED, DOCUMENT_SIGNATURE_INVALID).
    pub pdf: PdfSetting,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum PdfSetting {
    #[default]
    Report,
    Require,
}

impl PdfSetting {
    pub fn policy(self) -> lienthong_core::pipeline::PdfPolicy {
        match self {
            PdfSetting::Report => lienthong_core::pipeline::PdfPolicy::Report,
            PdfSetting::Require => lienthong_core::pipeline::PdfPolicy::Require,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EdxmlSection {
    /// `lenient` (what real producers send: test-system ids, missing
    /// names, day-first dates) or `strict` (QCVN 102 and Decree 30 to the
    /// letter).
    pub policy: PolicySetting,
}

impl Default for EdxmlSection {
    fn default() -> Self {
        EdxmlSection {
            policy: PolicySetting::Lenient,
        }
    }
}

/// The configured policy for edXML packages.
#[derive(Debug, Clone, Copy, ValueEnum, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PolicySetting {
    Strict,
    Lenient,
}

impl PolicySetting {
    pub fn policy(self) -> lienthong_edxml::Policy {
        match self {
            PolicySetting::Strict => lienthong_edxml::Policy::Strict,
            PolicySetting::Lenient => lienthong_edxml::Policy::Lenient,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSection {
    /// The gateway's TLS certificate chain (PEM, leaf first).
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub key: Option<PathBuf>,
    /// PEM files of the authorities that issue the agencies' client
    /// (system) certificates.
    pub client_anchors: Vec<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ReceiptsSection {
    /// The gateway's receipt-signing key (PKCS#8 PEM). Without it receipts
    /// are unsigned.
    pub key: Option<PathBuf>,
    /// Its certificate chain (PEM, leaf first).
    pub cert: Option<PathBuf>,
    /// Receipt certificates of peer gateways (PEM files, leaf first) whose
    /// receipts `verify-receipt` believes, beside this gateway's own
    /// `cert`; also this gateway's earlier receipt certificates after a
    /// change of key. A receipt signed by any other certificate — an
    /// agency's, though it chains to trust.anchors — is refused.
    pub trusted_signers: Vec<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewaySection {
    /// This gateway's name in traces and receipts.
    pub id: String,
    /// The agency code this gateway writes in the TraceHeader of the edXML
    /// it renders (e.g. the province's office, 000.00.01.H35). Default: `id`.
    pub organ_id: Option<String>,
    /// This replica's name, when several gateways share one database: the
    /// chain of the transfer log it (and every command run with its
    /// configuration) extends. Unset: the chain `main`.
    pub replica: Option<String>,
}

impl Default for GatewaySection {
    fn default() -> Self {
        GatewaySection {
            id: "lienthong".to_owned(),
            organ_id: None,
            replica: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcSection {
    pub listen: SocketAddr,
}

impl Default for GrpcSection {
    fn default() -> Self {
        GrpcSection {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSection {
    /// `sqlite://PATH` or `postgres://USER[:PASSWORD]@HOST:PORT/DB`.
    pub url: String,
    /// `auto`: every start applies the pending migrations (one process).
    /// `manual`: `lienthong migrate` applies them, once, and a gateway whose
    /// schema is behind refuses to start (replicas).
    pub migrate: MigrateSetting,
}

impl Default for DatabaseSection {
    fn default() -> Self {
        DatabaseSection {
            url: "sqlite://./data/lienthong.db".to_owned(),
            migrate: MigrateSetting::Auto,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum MigrateSetting {
    Auto,
    Manual,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageSection {
    /// Where attachments are kept, content-addressed; with the database
    /// backend only this process's temporary files.
    pub path: PathBuf,
    /// Where stored attachments live: files under `path`, or rows of the
    /// PostgreSQL database (replicas then share nothing else).
    pub backend: StorageBackend,
    /// A file of `KEYID:BASE64` lines (the first is the current
    /// key): attachments are then encrypted at rest with AES-256-GCM.
    pub encryption_key_file: Option<PathBuf>,
    /// The same keys as text, meant for the environment
    /// (`LIENTHONG_STORAGE__ENCRYPTION_KEY`); never printed.
    pub encryption_key: Option<Secret>,
}

impl Default for StorageSection {
    fn default() -> Self {
        StorageSection {
            path: PathBuf::from("./data/blobs"),
            backend: StorageBackend::Filesystem,
            encryption_key_file: None,
            encryption_key: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum StorageBackend {
    Filesystem,
    Database,
}

/// A secret from the configuration: `Debug` never shows it.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrustSection {
    /// PEM files of the certification authorities whose signing
    /// certificates this gateway trusts.
    pub anchors: Vec<PathBuf>,
    /// Revocation lists (DER or PEM) of those authorities, read
    /// again when the files change.
    pub crls: Vec<PathBuf>,
    /// A revocation list past its nextUpdate: `warn` (accept, with
    /// a warning in the delivery's verification report) or `refuse`.
    pub stale_crl: StaleCrlSetting,
    /// Refuse a certificate whose issuer has no revocation list in
    /// `crls` (else it is accepted, "revocation not checked").
    pub require_revocation: bool,
    /// Refuse chains with a certificate signed with SHA-1.
    pub refuse_sha1: bool,
}

impl Default for TrustSection {
    fn default() -> Self {
        let p = lienthong_pki::signing::CertPolicy::default();
        TrustSection {
            anchors: Vec::new(),
            crls: Vec::new(),
            stale_crl: match p.stale_crl {
                lienthong_pki::signing::StaleCrlPolicy::Refuse => StaleCrlSetting::Refuse,
                lienthong_pki::signing::StaleCrlPolicy::Warn => StaleCrlSetting::Warn,
            },
            require_revocation: p.require_revocation,
            refuse_sha1: p.refuse_sha1,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum StaleCrlSetting {
    Refuse,
    Warn,
}

impl TrustSection {
    pub fn policy(&self) -> lienthong_pki::signing::CertPolicy {
        use lienthong_pki::signing::{CertPolicy, StaleCrlPolicy};
        CertPolicy {
            refuse_sha1: self.refuse_sha1,
            stale_crl: match self.stale_crl {
                StaleCrlSetting::Refuse => StaleCrlPolicy::Refuse,
                StaleCrlSetting::Warn => StaleCrlPolicy::Warn,
            },
            require_revocation: self.require_revocation,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum AuthModeSetting {
    /// The caller names itself in the `x-organ-id` header. For trying it out.
    DevHeader,
    /// Mutual TLS: the caller is the agency its client certificate is bound
    /// to (`lienthong directory bind-client-cert`).
    Mtls,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSection {
    pub mode: AuthModeSetting,
}

impl Default for AuthSection {
    fn default() -> Self {
        AuthSection {
            mode: AuthModeSetting::DevHeader,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsSection {
    pub max_envelope_bytes: usize,
    pub max_attachment_bytes: u64,
    pub max_attachments: usize,
    pub max_recipients: usize,
    pub redelivery_after_secs: u64,
    /// Sustained calls per second one agency may make (0: no limit).
    pub calls_per_second: f64,
    /// Calls above that rate an agency may make at once.
    pub burst: f64,
    /// Streams one agency may have open at once (0: no limit).
    pub max_streams_per_agency: usize,
    /// An upload stream silent this long is given up (MALFORMED, logged).
    pub idle_stream_secs: u64,
    /// After `upload_grace_secs`, an upload (Send, SendEdxml) must bring at
    /// least this many bytes per second on average, or it is given up
    /// (RATE_LIMITED, logged); 0: no minimum.
    pub upload_min_bytes_per_second: u64,
    pub upload_grace_secs: u64,
    /// The longest one upload may take (RATE_LIMITED, logged); 0: none.
    pub upload_deadline_secs: u64,
    /// Calls per second one peer (IPv4 address, IPv6 /64) may make,
    /// checked before the caller is identified (RATE_LIMITED, counted and
    /// summed, not logged call by call); 0: no limit.
    pub peer_calls_per_second: f64,
    /// Calls above that rate one peer may make at once.
    pub peer_burst: f64,
    /// TLS handshakes in progress at once from one peer; more are closed
    /// at once. 0: no limit.
    pub peer_handshakes: usize,
    /// TLS handshakes in progress at once from every peer together.
    pub max_handshakes: usize,
    /// Connections open at once from one peer; more are closed at once.
    /// 0: no limit.
    pub peer_connections: usize,
    /// A TLS handshake not finished within this many seconds is dropped.
    pub handshake_timeout_secs: u64,
    /// Submissions taken at once by the whole gateway; one more gets
    /// UNAVAILABLE ("send again in a moment") instead of queueing.
    pub max_submissions_in_flight: usize,
    /// Signatures checked in one PDF; a PDF with more is reported as not
    /// fully checked (indeterminate).
    pub pdf_max_signatures: usize,
    /// Bytes hashed for one PDF's signatures, as a multiple of its size.
    pub pdf_max_hash_multiple: u64,
    /// The largest PDF unpacked from a ZIP attachment to be checked.
    pub pdf_max_unzipped_bytes: u64,
    /// How many times larger than its ZIP archive a PDF may unpack to.
    pub pdf_max_zip_ratio: u64,
    /// PDF signature checks run at once (default: the number of CPU cores).
    pub pdf_checks_in_flight: usize,
    /// How long a submission waits for a PDF check's turn before it gets
    /// UNAVAILABLE.
    pub pdf_check_wait_secs: u64,
}

impl Default for LimitsSection {
    fn default() -> Self {
        let l = Limits::default();
        let up = lienthong_grpc::limits::UploadLimits::default();
        let peer = lienthong_grpc::limits::PeerLimits::default();
        let conn = lienthong_tls::ConnectionLimits::default();
        LimitsSection {
            max_envelope_bytes: l.max_envelope_bytes,
            max_attachment_bytes: l.max_attachment_bytes,
            max_attachments: l.max_attachments,
            max_recipients: l.max_recipients,
            redelivery_after_secs: l.redelivery_after.as_secs(),
            calls_per_second: 200.0,
            burst: 400.0,
            max_streams_per_agency: 32,
            idle_stream_secs: 60,
            upload_min_bytes_per_second: up.min_bytes_per_second,
            upload_grace_secs: up.grace.as_secs(),
            upload_deadline_secs: up.deadline.map_or(0, |d| d.as_secs()),
            peer_calls_per_second: peer.calls_per_second,
            peer_burst: peer.burst,
            peer_handshakes: conn.handshakes_per_peer,
            max_handshakes: conn.handshakes,
            peer_connections: conn.connections_per_peer,
            handshake_timeout_secs: conn.handshake_timeout.as_secs(),
            max_submissions_in_flight: l.max_submissions_in_flight,
            pdf_max_signatures: l.pdf.max_signatures,
            pdf_max_hash_multiple: l.pdf.max_hash_multiple,
            pdf_max_unzipped_bytes: l.pdf.max_unzipped_bytes,
            pdf_max_zip_ratio: l.pdf.max_zip_ratio,
            pdf_checks_in_flight: l.pdf_checks_in_flight,
            pdf_check_wait_secs: l.pdf_check_wait.as_secs(),
        }
    }
}

impl LimitsSection {
    pub fn agency_limits(&self) -> lienthong_grpc::limits::AgencyLimits {
        lienthong_grpc::limits::AgencyLimits {
            calls_per_second: self.calls_per_second.max(0.0),
            burst: self.burst.max(1.0),
            max_streams: self.max_streams_per_agency,
        }
    }

    pub fn upload_limits(&self) -> lienthong_grpc::limits::UploadLimits {
        lienthong_grpc::limits::UploadLimits {
            idle: Duration::from_secs(self.idle_stream_secs.max(1)),
            min_bytes_per_second: self.upload_min_bytes_per_second,
            grace: Duration::from_secs(self.upload_grace_secs),
            deadline: (self.upload_deadline_secs > 0)
                .then(|| Duration::from_secs(self.upload_deadline_secs)),
        }
    }

    pub fn peer_limits(&self) -> lienthong_grpc::limits::PeerLimits {
        lienthong_grpc::limits::PeerLimits {
            calls_per_second: self.peer_calls_per_second.max(0.0),
            burst: self.peer_burst.max(1.0),
        }
    }

    pub fn connection_limits(&self) -> lienthong_tls::ConnectionLimits {
        lienthong_tls::ConnectionLimits {
            handshakes_per_peer: self.peer_handshakes,
            handshakes: self.max_handshakes.max(1),
            connections_per_peer: self.peer_connections,
            handshake_timeout: Duration::from_secs(self.handshake_timeout_secs.max(1)),
        }
    }

    pub fn to_limits(&self) -> Limits {
        Limits {
            max_envelope_bytes: self.max_envelope_bytes,
            max_attachment_bytes: self.max_attachment_bytes,
            max_attachments: self.max_attachments,
            max_recipients: self.max_recipients,
            redelivery_after: Duration::from_secs(self.redelivery_after_secs.max(1)),
            max_submissions_in_flight: self.max_submissions_in_flight.max(1),
            pdf: self.pdf_limits(),
            pdf_checks_in_flight: self.pdf_checks_in_flight.max(1),
            pdf_check_wait: Duration::from_secs(self.pdf_check_wait_secs.max(1)),
        }
    }

    /// The bounds on one PDF's check (`lienthong pdf verify` uses them too).
    pub fn pdf_limits(&self) -> lienthong_pades::Limits {
        lienthong_pades::Limits {
            max_signatures: self.pdf_max_signatures.max(1),
            max_hash_multiple: self.pdf_max_hash_multiple.max(1),
            max_unzipped_bytes: self.pdf_max_unzipped_bytes,
            max_zip_ratio: self.pdf_max_zip_ratio.max(1),
        }
    }
}

impl Config {
    /// The route table, checked against `amqp.url`.
    /// The `[[peers]]`, read and checked.
    pub fn directory_peers(&self) -> Result<Vec<lienthong_core::national_directory::Peer>> {
        use lienthong_core::national_directory::{Peer, PeerTrust};
        let mut out: Vec<Peer> = Vec::new();
        for (i, p) in self.peers.iter().enumerate() {
            let at = format!("[[peers]] number {} ({:?})", i + 1, p.name);
            let well_formed = !p.name.is_empty()
                && p.name.len() <= 64
                && p.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !well_formed {
                anyhow::bail!(
                    "{at}: name must be the peer's gateway.id: 1 to 64 ASCII letters, digits, '.', '_' or '-'"
                );
            }
            if p.name == self.gateway.id {
                anyhow::bail!(
                    "{at}: a gateway is not its own peer (gateway.id is {:?})",
                    self.gateway.id
                );
            }
            if out.iter().any(|o| o.name == p.name) {
                anyhow::bail!("{at}: the peer {} is listed twice", p.name);
            }
            if p.codes.is_empty() {
                anyhow::bail!(
                    "{at}: codes is empty: list the codes it is authoritative for, e.g. codes = [\"#.H53\"]"
                );
            }
            let mut codes = Vec::new();
            for c in &p.codes {
                let pattern = lienthong_core::organ_id::TopicPattern::parse(c)
                    .map_err(|e| anyhow::anyhow!("{at}: codes {c:?}: {}", e.message()))?;
                if c == "#" {
                    anyhow::bail!(
                        "{at}: codes \"#\" would let {} keep every agency, this gateway's own included; give its province's pattern (e.g. \"#.H53\")",
                        p.name
                    );
                }
                codes.push(pattern);
            }
            let trust = match (&p.cert, &p.anchor, &p.subject) {
                (Some(cert), None, None) => {
                    let der = lienthong_core::signing::load_certificate_pem(cert).map_err(|e| {
                        anyhow::anyhow!("{at}: cert {}: {}", cert.display(), e.message())
                    })?;
                    let spki_sha256 = lienthong_core::signing::spki_sha256(&der).map_err(|e| {
                        anyhow::anyhow!("{at}: cert {}: {}", cert.display(), e.message())
                    })?;
                    PeerTrust::Certificate { der, spki_sha256 }
                }
                (None, Some(anchor), Some(subject)) => {
                    let anchors = lienthong_core::signing::TrustAnchors::from_pem_files(
                        std::slice::from_ref(anchor),
                    )
                    .map_err(|e| {
                        anyhow::anyhow!("{at}: anchor {}: {}", anchor.display(), e.message())
                    })?;
                    PeerTrust::Anchor {
                        anchors,
                        subject: subject.clone(),
                    }
                }
                _ => anyhow::bail!(
                    "{at}: give the peer's certificate (cert = \"PATH.pem\"), or the authority its certificate chains to and its exact subject (anchor = \"PATH.pem\", subject = \"C=VN, O=..., CN=...\"), not both"
                ),
            };
            out.push(Peer {
                name: p.name.clone(),
                codes,
                trust,
            });
        }
        if !out.is_empty() && self.amqp.url.is_none() {
            anyhow::bail!(
                "[[peers]] are listed but amqp.url is not set: directory updates travel over the national exchange's broker"
            );
        }
        Ok(out)
    }

    pub fn route_table(&self) -> Result<lienthong_core::routing::RouteTable> {
        let table = lienthong_core::routing::RouteTable::new(&self.routes)
            .map_err(|e| anyhow::anyhow!("{}", e.message()))
            .context("reading [[routes]]")?;
        if self.amqp.url.is_none() && !table.exchanges().is_empty() {
            tracing::warn!(
                "[[routes]] name exchanges but amqp.url is not set: recipients routed there are refused (UNKNOWN_RECIPIENT)"
            );
        }
        if self.amqp.url.is_some() && self.routes.is_empty() {
            anyhow::bail!(
                "amqp.url is set but there are no [[routes]]: without them every code is local and the inbound queue would take every province's documents; add the local patterns and the exchange route, e.g. [[routes]] pattern = \"#.H35\" to = \"local\" and [[routes]] pattern = \"#\" to = \"exchange:lienthong.documents\" (docs/amqp.md)"
            );
        }
        if let Err(e) = lienthong_amqp::check(&self.amqp) {
            anyhow::bail!("{e}");
        }
        if self.amqp.url.is_some() && table.local_patterns().next().is_none() {
            anyhow::bail!(
                "amqp.url is set but no route says to = \"local\": the inbound queue would be bound to nothing; add e.g. [[routes]] pattern = \"#.H35\" to = \"local\""
            );
        }
        Ok(table)
    }

    /// Defaults, then the file (if any), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Config> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(f) = file {
            if !f.exists() {
                anyhow::bail!("the configuration file {} does not exist", f.display());
            }
            fig = fig.merge(Toml::file_exact(f));
        }
        // Only SECTION__KEY variables: LIENTHONG_CONFIG and the like are not keys.
        fig = fig.merge(
            Env::prefixed("LIENTHONG_")
                .filter(|k| k.as_str().contains("__"))
                .split("__"),
        );
        let cfg: Config = fig.extract().map_err(|e| {
            anyhow::anyhow!(
                "the configuration is not valid: {e}{}",
                file.map(|f| format!(" (file {})", f.display()))
                    .unwrap_or_default()
            )
        })?;
        cfg.archive.check()?;
        Ok(cfg)
    }

    /// Who this process appends to the transfer log as: `gateway.replica`,
    /// or the chain `main` without one.
    pub fn writer(&self) -> Result<WriterId> {
        match self.gateway.replica.as_deref() {
            None => Ok(WriterId::main()),
            Some(name) => {
                WriterId::new(name).map_err(|e| anyhow::anyhow!("gateway.replica: {}", e.message()))
            }
        }
    }

    /// The database, as `database.migrate` says to open it: pending
    /// migrations applied (`auto`) or refused (`manual`); a schema newer
    /// than this release is refused either way.
    pub async fn open_store(&self) -> Result<lienthong_core::store::Store> {
        let migrations = match self.database.migrate {
            MigrateSetting::Auto => lienthong_core::store::Migrations::Apply,
            MigrateSetting::Manual => lienthong_core::store::Migrations::Require,
        };
        lienthong_core::store::Store::open(&self.database.url, self.writer()?, migrations)
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.chain()))
    }

    /// What every replica of one database must share, as digests: the
    /// trust anchors and revocation lists by content (their paths may
    /// differ from host to host), the routes and what refuses a signature.
    pub fn replica_config(&self) -> Result<lienthong_core::replicas::ReplicaConfig> {
        let files = |paths: &[PathBuf], what: &str| -> Result<Vec<String>> {
            let mut digests = paths
                .iter()
                .map(|p| {
                    std::fs::read(p)
                        .map(|b| hex::encode(lienthong_core::sha256(&b)))
                        .with_context(|| format!("{what}: cannot read {}", p.display()))
                })
                .collect::<Result<Vec<String>>>()?;
            digests.sort();
            Ok(digests)
        };
        // The revocation lists by where they are read from, not by their
        // contents: a list is replaced with a newer one every few days, each
        // replica reloads it by itself, and a replica restarted after the
        // replacement must not be refused for reading the newer one.
        let mut crls: Vec<String> = self
            .trust
            .crls
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        crls.sort();
        let trust = format!(
            "anchors {:?}\ncrls {:?}\nrequire_revocation {}\nrefuse_sha1 {}\n",
            files(&self.trust.anchors, "trust.anchors")?,
            crls,
            self.trust.require_revocation,
            self.trust.refuse_sha1,
        );
        let routes: String = self
            .routes
            .iter()
            .map(|r| format!("{} -> {}\n", r.pattern, r.to))
            .collect();
        Ok(lienthong_core::replicas::ReplicaConfig {
            trust_sha256: hex::encode(lienthong_core::sha256(trust.as_bytes())),
            routes_sha256: hex::encode(lienthong_core::sha256(routes.as_bytes())),
        })
    }

    /// The gRPC address a local client should dial.
    pub fn grpc_client_url(&self) -> String {
        let mut addr = self.grpc.listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let scheme = if self.auth.mode == AuthModeSetting::Mtls {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{addr}")
    }

    /// The receipt certificates a receipt may be signed with:
    /// `receipts.cert` and `receipts.trusted_signers`.
    pub fn receipt_signers(&self) -> Result<lienthong_pki::receipts::ReceiptSigners> {
        let files: Vec<PathBuf> = self
            .receipts
            .cert
            .iter()
            .chain(&self.receipts.trusted_signers)
            .cloned()
            .collect();
        lienthong_pki::receipts::ReceiptSigners::from_pem_files(&files)
            .map_err(|e| anyhow::anyhow!("{}", e.message()))
            .context("loading receipts.cert / receipts.trusted_signers")
    }

    /// The trust anchors with the certificate policy and the revocation
    /// lists of `[trust]`.
    pub fn anchors(&self) -> Result<lienthong_pki::signing::TrustAnchors> {
        lienthong_pki::signing::TrustAnchors::from_pem_files(&self.trust.anchors)
            .map_err(|e| anyhow::anyhow!("{}", e.message()))
            .context("loading trust.anchors")?
            .with_policy(self.trust.policy())
            .with_crl_files(&self.trust.crls)
            .map_err(|e| anyhow::anyhow!("{}", e.message()))
            .context("loading trust.crls")
    }
}

// ----- the HTTP listener and reports ------------------------------

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSection {
    /// Serve the HTTP listener at all.
    pub enabled: bool,
    /// Dashboard, /metrics, /health/*, report downloads. The dashboard,
    /// /api/* and /reports/* need an operator's login (`lienthong operator
    /// add`).
    pub listen: SocketAddr,
    /// Serve HTTPS (h2 and http/1.1) with the same rustls set-up and reload
    /// as gRPC: `tls_cert`/`tls_key`, by default `tls.cert`/`tls.key`.
    pub tls: bool,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Authorities of operators' client certificates (optional in the
    /// handshake; a bound one logs in). Default: `tls.client_anchors`.
    pub client_anchors: Option<Vec<PathBuf>>,
    /// Host names the listener answers for (the Host header); others get
    /// 421. Empty: on loopback only localhost, 127.0.0.1 and [::1]; beyond
    /// loopback localhost and IP addresses — list the gateway's DNS names.
    pub allowed_hosts: Vec<String>,
    /// A file holding the bearer token /metrics requires (`Authorization:
    /// Bearer …`). Without it /metrics is open on a loopback listener and
    /// closed on any other.
    pub metrics_token_file: Option<PathBuf>,
    /// Mark cookies `Secure` (with the `__Host-` prefix). Default: `tls`;
    /// set it behind a proxy that terminates HTTPS.
    pub secure_cookies: Option<bool>,
    /// A session unused this many minutes ends.
    pub session_idle_minutes: u64,
    /// A session ends this many hours after the login, used or not.
    pub session_hours: u64,
    /// Failed logins allowed per account, and per peer, in 15 minutes;
    /// then 429 until the 15 minutes are over.
    pub login_failures_per_account: u32,
    pub login_failures_per_peer: u32,
    /// Report and search queries answered at once (others wait 2 s, then 503).
    pub max_concurrent_queries: usize,
    /// The longest period a report download may cover, in days (397: 13 months).
    pub max_report_days: i64,
    /// Serve the public directory (`/directory`, `/api/public/directory`):
    /// agencies' codes, names, parents and contact details, open to anyone
    /// who reaches the listener, without a login.
    pub public_directory: bool,
    /// Requests a second one address (an IPv6 /64) may make to the public
    /// directory, sustained; beyond the burst, 429 with `Retry-After`.
    /// 0 turns the limit off.
    pub public_directory_rate: f64,
    /// Requests one address may make at once above that rate.
    pub public_directory_burst: u32,
}

impl Default for HttpSection {
    fn default() -> Self {
        let limits = lienthong_core::operators::LoginLimits::default();
        let public = lienthong_http::PublicDirectoryOptions::default();
        HttpSection {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls: false,
            tls_cert: None,
            tls_key: None,
            client_anchors: None,
            allowed_hosts: Vec::new(),
            metrics_token_file: None,
            secure_cookies: None,
            session_idle_minutes: 30,
            session_hours: 12,
            login_failures_per_account: limits.per_account,
            login_failures_per_peer: limits.per_peer,
            max_concurrent_queries: 4,
            max_report_days: lienthong_http::MAX_REPORT_DAYS,
            public_directory: public.enabled,
            public_directory_rate: public.rate,
            public_directory_burst: public.burst,
        }
    }
}

impl Config {
    /// The HTTP listener's TLS files, when `http.tls` is on.
    pub fn http_tls_files(&self) -> Result<Option<lienthong_tls::TlsFiles>> {
        let h = &self.http;
        if !h.tls {
            return Ok(None);
        }
        let (Some(cert), Some(key)) = (
            h.tls_cert.as_ref().or(self.tls.cert.as_ref()),
            h.tls_key.as_ref().or(self.tls.key.as_ref()),
        ) else {
            anyhow::bail!(
                "http.tls = true needs a certificate and key: set http.tls_cert and http.tls_key, or tls.cert and tls.key"
            );
        };
        Ok(Some(lienthong_tls::TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_anchors: h
                .client_anchors
                .clone()
                .unwrap_or_else(|| self.tls.client_anchors.clone()),
            client_auth: lienthong_tls::ClientAuth::Optional,
            alpn: lienthong_tls::Alpn::Web,
        }))
    }

    /// The HTTP listener's options, checked (the TLS set-up is added by
    /// `serve` once loaded).
    pub fn http_options(&self, listen: SocketAddr) -> Result<lienthong_http::HttpOptions> {
        let h = &self.http;
        if h.session_idle_minutes == 0 || h.session_hours == 0 {
            anyhow::bail!("http.session_idle_minutes and http.session_hours must be 1 or more");
        }
        if h.max_report_days < 1 {
            anyhow::bail!("http.max_report_days must be 1 or more");
        }
        if !h.public_directory_rate.is_finite() || h.public_directory_rate < 0.0 {
            anyhow::bail!(
                "http.public_directory_rate must be a number of requests a second, 0 or more (0 turns the limit off), not {}",
                h.public_directory_rate
            );
        }
        if h.public_directory_rate > 0.0 && h.public_directory_burst < 1 {
            anyhow::bail!(
                "http.public_directory_burst must be 1 or more (the requests one address may make at once)"
            );
        }
        let metrics = match (&h.metrics_token_file, listen.ip().is_loopback()) {
            (Some(f), _) => lienthong_http::MetricsAccess::Token(f.clone()),
            (None, true) => lienthong_http::MetricsAccess::Open,
            (None, false) => lienthong_http::MetricsAccess::Closed,
        };
        Ok(lienthong_http::HttpOptions {
            reports: self.report_settings()?,
            hosts: lienthong_http::AllowedHosts::for_listener(listen, &h.allowed_hosts),
            metrics,
            secure_cookies: h.secure_cookies.unwrap_or(h.tls),
            sessions: lienthong_core::operators::SessionPolicy {
                idle: Duration::from_secs(h.session_idle_minutes.saturating_mul(60)),
                absolute: Duration::from_secs(h.session_hours.saturating_mul(3600)),
            },
            login_limits: lienthong_core::operators::LoginLimits {
                per_account: h.login_failures_per_account.max(1),
                per_peer: h.login_failures_per_peer.max(1),
                ..Default::default()
            },
            queries: std::sync::Arc::new(tokio::sync::Semaphore::new(
                h.max_concurrent_queries.max(1),
            )),
            max_report_days: h.max_report_days,
            public_directory: lienthong_http::PublicDirectoryOptions {
                enabled: h.public_directory,
                rate: h.public_directory_rate,
                burst: h.public_directory_burst,
            },
            backup_schedule: self.backup.daily_at()?,
            tls: None,
            directory_exchange: None,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReportsSection {
    /// Where the monthly report (CSV and XLSX) is written.
    pub dir: PathBuf,
    /// Write last month's report on the first day of each month.
    pub monthly: bool,
    /// The part of the directory the monthly report covers: empty for
    /// every agency, a code (that agency and those under it), or a pattern
    /// such as `#.H35`.
    pub under: String,
    /// Column headers of the monthly report: `vi` or `en`.
    pub lang: String,
    /// A document is counted "without a 03" after this many working hours.
    pub accept_within_hours: f64,
    pub working_hours: lienthong_reports::WorkingHours,
    /// Agencies to send the monthly report to, as a signed document from
    /// `gateway.organ_id` with the CSV and XLSX attached.
    pub send_to: Vec<String>,
    /// The key that signs that document (PKCS#8 PEM). Default:
    /// `receipts.key`.
    pub signing_key: Option<PathBuf>,
    /// Its certificate chain (PEM, leaf first), bound to `gateway.organ_id`
    /// as a signing certificate in the directory. Default: `receipts.cert`.
    pub signing_cert: Option<PathBuf>,
}

impl Default for ReportsSection {
    fn default() -> Self {
        ReportsSection {
            dir: PathBuf::from("./data/reports"),
            monthly: true,
            under: String::new(),
            lang: "vi".to_owned(),
            accept_within_hours: 8.0,
            working_hours: Default::default(),
            send_to: Vec::new(),
            signing_key: None,
            signing_cert: None,
        }
    }
}

impl Config {
    /// How reports judge lateness, checked.
    pub fn report_settings(&self) -> Result<lienthong_reports::ReportSettings> {
        let r = &self.reports;
        if !(r.accept_within_hours.is_finite() && r.accept_within_hours >= 0.0) {
            anyhow::bail!(
                "reports.accept_within_hours = {} is not a number of hours (0 or more)",
                r.accept_within_hours
            );
        }
        let holidays = match &r.working_hours.holidays_file {
            Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
                anyhow::anyhow!(
                    "reports.working_hours.holidays_file {}: cannot be read ({e})",
                    path.display()
                )
            })?),
            None => None,
        };
        let calendar = r
            .working_hours
            .calendar(holidays.as_deref())
            .map_err(|e| anyhow::anyhow!("{}", e.message()))?;
        Ok(lienthong_reports::ReportSettings {
            calendar,
            accept_within_hours: r.accept_within_hours,
        })
    }

    /// The monthly report task's settings.
    pub fn monthly_reports(&self) -> Result<lienthong_reports::MonthlyReports> {
        let scope = lienthong_reports::Scope::parse(&self.reports.under)
            .map_err(|e| anyhow::anyhow!("reports.under: {}", e.message()))?;
        let lang = lienthong_reports::Lang::parse(&self.reports.lang)
            .map_err(|e| anyhow::anyhow!("reports.lang: {}", e.message()))?;
        Ok(lienthong_reports::MonthlyReports {
            dir: self.reports.dir.clone(),
            scope,
            settings: self.report_settings()?,
            lang,
            send: None,
        })
    }

    /// `reports.send_to` with the gateway's agency and signing key, or
    /// `None` when it is empty. The binding of the certificate in the
    /// directory is checked by `ReportSending::check` once the database is
    /// open.
    pub fn report_sending(&self) -> Result<Option<lienthong_reports::ReportSending>> {
        let r = &self.reports;
        if r.send_to.is_empty() {
            return Ok(None);
        }
        let Some(from) = self.gateway.organ_id.as_deref() else {
            anyhow::bail!(
                "reports.send_to is set but gateway.organ_id is not: the monthly report is sent \
                 as a document from the gateway's own agency; set gateway.organ_id to its code"
            );
        };
        let (key, cert, which) = match (&r.signing_key, &r.signing_cert) {
            (Some(k), Some(c)) => (k, c, "reports.signing_key / reports.signing_cert"),
            (None, None) => match (&self.receipts.key, &self.receipts.cert) {
                (Some(k), Some(c)) => (k, c, "receipts.key / receipts.cert"),
                _ => anyhow::bail!(
                    "reports.send_to is set but there is no key to sign the monthly report with: \
                     set reports.signing_key and reports.signing_cert (or receipts.key and \
                     receipts.cert) to a key and certificate bound to {from} in the directory"
                ),
            },
            _ => anyhow::bail!(
                "reports.signing_key and reports.signing_cert go together: set both or neither"
            ),
        };
        let sending = lienthong_reports::ReportSending::load(from, &r.send_to, key, cert)
            .map_err(|e| anyhow::anyhow!("{}", e.message()))
            .with_context(|| format!("reports.send_to: loading {which}"))?;
        Ok(Some(sending))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults() -> Result<()> {
        let c = Config::load(None)?;
        assert_eq!(c.grpc.listen.to_string(), "127.0.0.1:50051");
        assert!(c.database.url.starts_with("sqlite://./data/"));
        assert_eq!(c.auth.mode, AuthModeSetting::DevHeader);
        Ok(())
    }

    #[test]
    fn backup_schedules_are_times_of_day() -> Result<()> {
        let mut b = BackupSection::default();
        assert_eq!(b.daily_at()?, None);
        assert_eq!(b.keep, 30);
        b.schedule = Some("01:30".to_owned());
        assert_eq!(b.daily_at()?, Some((1, 30)));
        for bad in ["1:30", "24:00", "01:60", "daily", "01:30:00"] {
            b.schedule = Some(bad.to_owned());
            let e = b.daily_at().expect_err(bad).to_string();
            assert!(e.contains("HH:MM"), "{e}");
        }
        Ok(())
    }

    /// The sample configuration's `[limits]` are the defaults it says.
    #[test]
    fn the_sample_limits_are_the_defaults() -> Result<()> {
        let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/lienthong.toml");
        let text = std::fs::read_to_string(&sample)?;
        let start = text.find("[limits]").context("no [limits] in the sample")?;
        let end = text[start + 1..]
            .find("\n[")
            .map_or(text.len(), |i| start + 1 + i);
        let dir = tempfile::tempdir()?;
        let f = dir.path().join("l.toml");
        std::fs::write(&f, &text[start..end])?;
        let c = Config::load(Some(&f))?;
        let d = LimitsSection::default();
        assert_eq!(format!("{:?}", c.limits), format!("{d:?}"));
        assert_eq!(d.upload_limits().min_bytes_per_second, 4096);
        assert_eq!(d.peer_limits().calls_per_second, 2000.0);
        assert_eq!(d.connection_limits().handshakes_per_peer, 16);
        Ok(())
    }

    /// The deploy samples start as production does: callers identified by
    /// their client certificates, operators over HTTPS; the mode that
    /// believes a header cannot be reached from them.
    #[test]
    fn the_deploy_samples_identify_callers_by_certificate() -> Result<()> {
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
        let c = Config::load(Some(&deploy.join("lienthong.toml")))?;
        assert_eq!(c.auth.mode, AuthModeSetting::Mtls);
        assert!(c.tls.cert.is_some() && c.tls.key.is_some());
        assert!(!c.tls.client_anchors.is_empty());
        assert!(c.http.tls, "the sample's HTTP listener speaks HTTPS");
        assert!(c.http.metrics_token_file.is_some());
        let compose = std::fs::read_to_string(deploy.join("compose.yaml"))?;
        assert!(compose.contains("--config pki/lienthong-mtls.toml"));
        assert!(compose.contains("LIENTHONG_HTTP__TLS: \"true\""));
        for sample in [
            "compose.yaml",
            "lienthong.service",
            "Dockerfile",
            "compose-routes.toml",
        ] {
            let text = std::fs::read_to_string(deploy.join(sample))?;
            for unsafe_word in [
                "insecure-allow-remote",
                "LIENTHONG_AUTH__MODE",
                "mode = \"dev-header\"",
            ] {
                assert!(!text.contains(unsafe_word), "{sample} holds {unsafe_word}");
            }
        }
        Ok(())
    }

    /// The public directory's settings reach the listener, and nonsense is
    /// refused with the key's name.
    #[test]
    fn public_directory_settings() -> Result<()> {
        let c = Config::load(None)?;
        let listen = c.http.listen;
        let o = c.http_options(listen)?.public_directory;
        assert!(o.enabled);
        assert_eq!((o.rate, o.burst), (10.0, 30));
        let dir = tempfile::tempdir()?;
        let f = dir.path().join("h.toml");
        std::fs::write(
            &f,
            "[http]\npublic_directory = false\npublic_directory_rate = 2.5\npublic_directory_burst = 5\n",
        )?;
        let c = Config::load(Some(&f))?;
        let o = c.http_options(listen)?.public_directory;
        assert!(!o.enabled);
        assert_eq!((o.rate, o.burst), (2.5, 5));
        for (bad, key) in [
            ("public_directory_rate = -1.0", "http.public_directory_rate"),
            ("public_directory_burst = 0", "http.public_directory_burst"),
        ] {
            std::fs::write(&f, format!("[http]\n{bad}\n"))?;
            let e = Config::load(Some(&f))?
                .http_options(listen)
                .map(|_| ())
                .expect_err(bad)
                .to_string();
            assert!(e.contains(key), "{e}");
        }
        Ok(())
    }

    #[test]
    fn file_and_unknown_keys() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let f = dir.path().join("l.toml");
        std::fs::write(
            &f,
            "[grpc]\nlisten = \"127.0.0.1:6000\"\n[limits]\nmax_attachments = 3\n",
        )?;
        let c = Config::load(Some(&f))?;
        assert_eq!(c.grpc.listen.port(), 6000);
        assert_eq!(c.limits.max_attachments, 3);
        // The PDF check's bounds default to the core's; zero is not a bound.
        let pdf = c.limits.pdf_limits();
        assert_eq!(pdf, lienthong_pades::Limits::default());
        std::fs::write(
            &f,
            "[limits]
pdf_max_signatures = 0
pdf_max_zip_ratio = 7
pdf_checks_in_flight = 0
",
        )?;
        let l = Config::load(Some(&f))?.limits.to_limits();
        assert_eq!((l.pdf.max_signatures, l.pdf.max_zip_ratio), (1, 7));
        assert_eq!(l.pdf_checks_in_flight, 1);
        std::fs::write(&f, "[grpc]\nlisen = \"127.0.0.1:6000\"\n")?;
        let err = Config::load(Some(&f))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("lisen"), "{err}");
        Ok(())
    }

    #[test]
    fn attachments_are_files_unless_the_database_is_named() -> Result<()> {
        assert_eq!(
            Config::load(None)?.storage.backend,
            StorageBackend::Filesystem
        );
        let dir = tempfile::tempdir()?;
        let f = dir.path().join("l.toml");
        std::fs::write(&f, "[storage]\nbackend = \"database\"\n")?;
        assert_eq!(
            Config::load(Some(&f))?.storage.backend,
            StorageBackend::Database
        );
        std::fs::write(&f, "[storage]\nbackend = \"s3\"\n")?;
        assert!(Config::load(Some(&f)).is_err());
        Ok(())
    }

    /// Without `gateway.replica` every process writes the chain `main`;
    /// with it, the replica's own; a name that cannot be a chain's is
    /// refused, naming the key.
    #[test]
    fn the_replica_names_the_chain_of_the_transfer_log() -> Result<()> {
        assert_eq!(Config::load(None)?.writer()?, WriterId::main());
        let dir = tempfile::tempdir()?;
        let f = dir.path().join("l.toml");
        std::fs::write(&f, "[gateway]\nreplica = \"lienthong-1\"\n")?;
        assert_eq!(Config::load(Some(&f))?.writer()?.as_str(), "lienthong-1");
        std::fs::write(&f, "[gateway]\nreplica = \"bản sao 1\"\n")?;
        let err = Config::load(Some(&f))?
            .writer()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("gateway.replica") && err.contains("bản sao 1"),
            "{err}"
        );
        Ok(())
    }

    #[test]
    fn trust_policy_and_storage_keys() -> Result<()> {
        use lienthong_pki::signing::{CertPolicy, StaleCrlPolicy};
        let c = Config::load(None)?;
        assert_eq!(c.trust.policy(), CertPolicy::default());
        assert!(c.trust.refuse_sha1);
        assert!(c.storage.encryption_key_file.is_none());

        let dir = tempfile::tempdir()?;
        let f = dir.path().join("l.toml");
        std::fs::write(
            &f,
            "[storage]\nencryption_key_file = \"/etc/lienthong/storage.keys\"\n\
             encryption_key = \"k1:c2VjcmV0\"\n\
             [trust]\ncrls = [\"/etc/lienthong/trust/g2.crl\"]\nstale_crl = \"refuse\"\n\
             require_revocation = true\nrefuse_sha1 = false\n",
        )?;
        let c = Config::load(Some(&f))?;
        assert_eq!(c.trust.crls.len(), 1);
        assert_eq!(
            c.trust.policy(),
            CertPolicy {
                refuse_sha1: false,
                stale_crl: StaleCrlPolicy::Refuse,
                require_revocation: true,
            }
        );
        assert!(c.storage.encryption_key_file.is_some());
        assert!(!format!("{c:?}").contains("c2VjcmV0"), "a key in Debug");

        std::fs::write(&f, "[trust]\nstale_crl = \"ignore\"\n")?;
        let err = Config::load(Some(&f))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("ignore"), "{err}");
        Ok(())
    }

    #[test]
    fn reports_send_to_needs_an_agency_and_a_key() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let f = dir.path().join("l.toml");
        let err_of = |text: &str| -> Result<String> {
            std::fs::write(&f, text)?;
            let c = Config::load(Some(&f))?;
            Ok(match c.report_sending() {
                Ok(s) => format!("ok: {}", s.is_some()),
                Err(e) => format!("{e:#}"),
            })
        };
        assert_eq!(err_of("")?, "ok: false");
        let e = err_of("[reports]\nsend_to = [\"000.00.12.H35\"]\n")?;
        assert!(e.contains("gateway.organ_id"), "{e}");
        let e = err_of(
            "[gateway]\norgan_id = \"000.00.01.H35\"\n[reports]\nsend_to = [\"000.00.12.H35\"]\n",
        )?;
        assert!(
            e.contains("reports.signing_key") && e.contains("receipts.key"),
            "{e}"
        );
        let e = err_of(
            "[gateway]\norgan_id = \"000.00.01.H35\"\n[reports]\nsend_to = [\"000.00.12.H35\"]\n\
             signing_key = \"/nonexistent/k.pem\"\n",
        )?;
        assert!(e.contains("go together"), "{e}");
        // The receipts key is the default; a missing file is named.
        let e = err_of(
            "[gateway]\norgan_id = \"000.00.01.H35\"\n[receipts]\nkey = \"/nonexistent/k.pem\"\n\
             cert = \"/nonexistent/c.pem\"\n[reports]\nsend_to = [\"000.00.12.H35\"]\n",
        )?;
        assert!(e.contains("receipts.key / receipts.cert"), "{e}");
        Ok(())
    }

    #[test]
    fn archive_keep_days_by_type_are_read_and_checked() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let f = dir.path().join("l.toml");
        std::fs::write(
            &f,
            "[archive]\nkeep_days = 30\nkeep_days_by_type = { \"1\" = 365 }\n",
        )?;
        let c = Config::load(Some(&f))?;
        assert_eq!(
            (c.archive.keep_days_for(1), c.archive.keep_days_for(2)),
            (365, 30)
        );
        std::fs::write(
            &f,
            "[archive]\nkeep_days_by_type = { \"nghị quyết\" = 365 }\n",
        )?;
        let e = Config::load(Some(&f))
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(e.contains("Type number"), "{e}");
        Ok(())
    }

    #[test]
    fn receipt_signers_are_the_own_certificate_and_the_peers() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let f = dir.path().join("l.toml");
        std::fs::write(&f, "")?;
        assert!(Config::load(Some(&f))?.receipt_signers()?.is_empty());
        std::fs::write(
            &f,
            "[receipts]\ntrusted_signers = [\"/nonexistent/peer.pem\"]\n",
        )?;
        let e = Config::load(Some(&f))?
            .receipt_signers()
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(
            e.contains("receipts.trusted_signers") && e.contains("/nonexistent/peer.pem"),
            "{e}"
        );
        Ok(())
    }
}

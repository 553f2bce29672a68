//! The national directory: agencies and their signing keys exchanged
//! between gateways as numbered, signed updates.
//!
//! **Authority by route.** A gateway is authoritative for the codes its
//! `local` routes serve. It announces every change of those agencies —
//! added, renamed, moved, contact or channel changed, deactivated or
//! activated, a signing key bound or unbound — as a [`pb::DirectoryUpdate`]
//! numbered by its own sequence and signed with its receipt key. Updates
//! are not written by each command that changes the directory: the
//! publisher compares the directory with what it last announced (kept in
//! the database) whenever the directory's version moves, so every way of
//! changing the directory — import, command line, gRPC, another replica —
//! is announced the same way, and a crash between a change and its
//! announcement only delays it.
//!
//! **Peers.** An update is applied only when it is signed by the peer
//! configured for that publisher (`[[peers]]`: its certificate, or an
//! anchor and the subject its certificate must carry), touches only the
//! codes that peer is configured for, and follows the last update applied
//! from it. A gap (updates missed) asks the peer for a snapshot — its whole
//! announced directory at a sequence — which replaces what this gateway
//! holds from it. Agencies applied from a peer carry its name as their
//! source: this gateway's operator cannot edit them, only block them.
//!
//! Every applied change is a `directory_changed` line of the transfer log;
//! every refusal a `directory_refused` line with its reason; the directory
//! is unchanged by a refused update. The transport (the AMQP adapter)
//! carries bytes: it knows nothing of what they mean.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lienthong_pki::signing::{self, TrustAnchors, describe_certificate};
use lienthong_proto::prost::Message as _;
use lienthong_proto::v1 as pb;
use pb::directory_change::Kind;
use rustls_pki_types::UnixTime;

use crate::error::{Error, Reason, Result};
use crate::organ_id::{OrganId, TopicPattern};
use crate::pipeline::Gateway;
use crate::receipts::ReceiptSigner;
use crate::store::{DirectoryChange, EventKind, NewEvent, now_micros};
use lienthong_store::directory_exchange::{Block, Publication};
use lienthong_store::peer_changes::PeerAdvance;
use lienthong_store::rows::{AgencyRow, SigningCertRow};

/// The topic exchange of the directory exchange.
pub const DIRECTORY_EXCHANGE: &str = "lienthong.directory";

/// Agencies one update carries at most: a first announcement of a large
/// province is several updates, each well under the broker's message limit.
const MAX_AGENCIES_PER_UPDATE: usize = 500;

/// A peer is asked for a snapshot at most this often.
const SNAPSHOT_ASK_EVERY: Duration = Duration::from_secs(10);

/// A snapshot is sent to one requester at most this often.
const SNAPSHOT_SEND_EVERY: Duration = Duration::from_secs(2);

/// The longest text field of an entry (names of agencies run to ~250).
const MAX_FIELD: usize = 1000;

/// Routing keys on [`DIRECTORY_EXCHANGE`].
pub fn update_key(publisher: &str) -> String {
    format!("update.{publisher}")
}
pub fn snapshot_request_key(publisher: &str) -> String {
    format!("snapshot-request.{publisher}")
}
pub fn snapshot_key(requester: &str) -> String {
    format!("snapshot.{requester}")
}

/// How a peer's signature is recognised.
#[derive(Debug, Clone)]
pub enum PeerTrust {
    /// The peer's certificate: its key signs.
    Certificate { der: Vec<u8>, spki_sha256: [u8; 32] },
    /// Any certificate chaining to these anchors with exactly this subject.
    Anchor {
        anchors: TrustAnchors,
        subject: String,
    },
}

/// A gateway this one trusts for some codes.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Its `gateway.id`, as its updates name their publisher.
    pub name: String,
    /// The codes it is authoritative for.
    pub codes: Vec<TopicPattern>,
    pub trust: PeerTrust,
}

impl Peer {
    pub fn serves(&self, code: &str) -> bool {
        self.codes.iter().any(|p| p.matches(code))
    }

    fn codes_text(&self) -> String {
        self.codes
            .iter()
            .map(|p| p.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Checks `sig` over the pre-authentication encoding `pae`.
    fn check(&self, sig: &pb::Signature, pae: &[u8]) -> Result<()> {
        match &self.trust {
            PeerTrust::Certificate { der, spki_sha256 } => {
                // The message may carry a chain; the pinned certificate is
                // what counts, and a different leaf says so plainly.
                if let Some(leaf) = sig.certificates.first()
                    && let Ok(k) = signing::spki_sha256(leaf)
                    && &k != spki_sha256
                {
                    return Err(Error::new(
                        Reason::BadSignature,
                        format!(
                            "it is signed with the key {} and {}'s configured certificate has \
                             the key {}",
                            hex::encode(k),
                            self.name,
                            hex::encode(spki_sha256)
                        ),
                    ));
                }
                signing::verify_with_certificate(&sig.algorithm, der, pae, &sig.value).map_err(
                    |e| {
                        Error::new(
                            Reason::BadSignature,
                            format!(
                                "its signature is not {}'s (the configured certificate's key): {}",
                                self.name,
                                e.message()
                            ),
                        )
                    },
                )
            }
            PeerTrust::Anchor { anchors, subject } => {
                let now = UnixTime::now();
                let signer = signing::verify_signature(sig, pae, anchors, now)?;
                if &signer.subject != subject {
                    return Err(Error::new(
                        Reason::BadSignature,
                        format!(
                            "it is signed by {}, and {}'s certificate must be {subject}",
                            signer.subject, self.name
                        ),
                    ));
                }
                Ok(())
            }
        }
    }
}

/// What became of a message taken from the directory exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// Applied (or already held): nothing more to do.
    Applied { peer: String, sequence: u64 },
    /// Not applied, and logged with its reason: nothing more to do.
    Refused,
    /// Updates are missing: ask `peer` for a snapshot (the bytes of the
    /// request are given, already rate-limited).
    AskSnapshot { peer: String, request: Vec<u8> },
}

/// How applying an update went.
enum Applying {
    Done,
    /// Applied, and what is held here differs from the digest it announced.
    Diverged,
    Refused(Refusal),
    /// Refused because what is held here differs from the peer's.
    RefusedDiverged(Refusal),
}

/// A peer's state, for the dashboard and `directory peers`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PeerStatus {
    pub name: String,
    pub codes: String,
    pub agencies: usize,
    pub applied_sequence: u64,
    pub seen_sequence: u64,
    pub lag: u64,
    /// Microseconds since the epoch; 0 for never.
    pub applied_at: i64,
    pub seen_at: i64,
}

/// The directory exchange of one gateway: its publisher and its peers.
#[derive(Debug)]
pub struct DirectoryExchange {
    gw: Gateway,
    me: String,
    authority: Vec<TopicPattern>,
    peers: Vec<Peer>,
    signer: Option<Arc<ReceiptSigner>>,
    // Plain maps behind locks never held across an await.
    asked: Mutex<HashMap<String, Instant>>,
    sent: Mutex<HashMap<String, Instant>>,
}

fn refused_line(peer: Option<&str>, sender: &str, reason: &str, detail: String) -> NewEvent {
    NewEvent {
        kind: EventKind::DirectoryRefused,
        sender: sender.to_owned(),
        message_id: String::new(),
        recipient: None,
        reason: Some(reason.to_owned()),
        detail,
        actor: peer.map(|p| format!("peer {p}")),
        transport: "amqp".to_owned(),
    }
}

fn changed_line(peer: &str, sender: &str, detail: String) -> NewEvent {
    NewEvent {
        kind: EventKind::DirectoryChanged,
        sender: sender.to_owned(),
        message_id: String::new(),
        recipient: None,
        reason: None,
        detail,
        actor: Some(format!("peer {peer}")),
        transport: "amqp".to_owned(),
    }
}

/// A refusal's reason code and sentence.
struct Refusal {
    code: &'static str,
    sender: String,
    why: String,
}

fn refuse(code: &'static str, why: impl Into<String>) -> Refusal {
    Refusal {
        code,
        sender: String::new(),
        why: why.into(),
    }
}

/// The entry of an agency as announced (certificates ordered by key).
fn entry_of(a: &AgencyRow, certs: &[&SigningCertRow]) -> pb::DirectoryEntry {
    let mut certs: Vec<&&SigningCertRow> = certs.iter().collect();
    certs.sort_by(|x, y| x.spki_sha256.cmp(&y.spki_sha256));
    pb::DirectoryEntry {
        organ_id: a.organ_id.clone(),
        name: a.name.clone(),
        parent: a.parent.clone().unwrap_or_default(),
        email: a.email.clone(),
        telephone: a.telephone.clone(),
        address: a.address.clone(),
        website: a.website.clone(),
        channel: a.channel.clone(),
        active: a.active,
        signing_certificates: certs.iter().map(|c| c.cert_der.clone().into()).collect(),
    }
}

/// Agencies as the exchange carries them, each with the signing keys bound
/// to it (one read of every binding for all of them).
async fn entries_of(
    store: &crate::store::Store,
    agencies: &[AgencyRow],
) -> Result<Vec<(String, pb::DirectoryEntry)>> {
    let certs = store.all_signing_certs().await?;
    let mut by_agency: HashMap<&str, Vec<&SigningCertRow>> = HashMap::new();
    for c in &certs {
        by_agency.entry(c.organ_id.as_str()).or_default().push(c);
    }
    Ok(agencies
        .iter()
        .map(|a| {
            let certs = by_agency
                .get(a.organ_id.as_str())
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            (a.organ_id.clone(), entry_of(a, certs))
        })
        .collect())
}

/// The digest of a directory as announced: over every (code, encoded
/// entry) in code order.
pub fn state_sha256<'a>(entries: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for (id, bytes) in entries {
        ctx.update(&(id.len() as u64).to_be_bytes());
        ctx.update(id.as_bytes());
        ctx.update(&(bytes.len() as u64).to_be_bytes());
        ctx.update(bytes);
    }
    hex::encode(ctx.finish())
}

fn without_certs(e: &pb::DirectoryEntry) -> pb::DirectoryEntry {
    pb::DirectoryEntry {
        signing_certificates: Vec::new(),
        ..e.clone()
    }
}

/// The changes that turn `old` into `new` (one agency), in the order a
/// peer applies them.
fn diff_entry(
    old: Option<&pb::DirectoryEntry>,
    new: &pb::DirectoryEntry,
) -> Vec<pb::DirectoryChange> {
    let mut out = Vec::new();
    let ch = |k: Kind| pb::DirectoryChange { kind: Some(k) };
    let keys = |e: &pb::DirectoryEntry| -> BTreeMap<String, Vec<u8>> {
        e.signing_certificates
            .iter()
            .filter_map(|c| {
                signing::spki_sha256(c)
                    .ok()
                    .map(|k| (hex::encode(k), c.to_vec()))
            })
            .collect()
    };
    let before = old.map(keys).unwrap_or_default();
    let after = keys(new);
    match old {
        None => out.push(ch(Kind::AgencyAdded(without_certs(new)))),
        Some(o) => {
            let (mut a, mut b) = (without_certs(o), without_certs(new));
            a.active = false;
            b.active = false;
            if a != b {
                out.push(ch(Kind::AgencyChanged(without_certs(new))));
            } else if o.active != new.active {
                out.push(ch(if new.active {
                    Kind::AgencyActivated(new.organ_id.clone())
                } else {
                    Kind::AgencyDeactivated(new.organ_id.clone())
                }));
            }
        }
    }
    for (k, _) in before.iter().filter(|(k, _)| !after.contains_key(*k)) {
        out.push(ch(Kind::CertificateUnbound(pb::CertificateBinding {
            organ_id: new.organ_id.clone(),
            certificate: Default::default(),
            spki_sha256: k.clone(),
        })));
    }
    for (k, der) in after.iter().filter(|(k, _)| !before.contains_key(*k)) {
        out.push(ch(Kind::CertificateBound(pb::CertificateBinding {
            organ_id: new.organ_id.clone(),
            certificate: der.clone().into(),
            spki_sha256: k.clone(),
        })));
    }
    out
}

/// An entry's fields, checked: the code is well formed and the peer's, the
/// text bounded, the channel known.
fn check_entry(peer: &Peer, e: &pb::DirectoryEntry) -> std::result::Result<(), Refusal> {
    check_code(peer, &e.organ_id)?;
    let bad = |what: &str, why: String| Refusal {
        code: "MALFORMED",
        sender: e.organ_id.clone(),
        why: format!("the entry of {}: {what} {why}", e.organ_id),
    };
    if e.name.trim().is_empty() {
        return Err(bad("name", "is empty".to_owned()));
    }
    for (what, v) in [
        ("name", &e.name),
        ("email", &e.email),
        ("telephone", &e.telephone),
        ("address", &e.address),
        ("website", &e.website),
    ] {
        if v.len() > MAX_FIELD || v.chars().any(|c| c.is_control() && c != '\n') {
            return Err(bad(
                what,
                format!("is longer than {MAX_FIELD} bytes or has control characters"),
            ));
        }
    }
    if !e.parent.is_empty() && OrganId::parse(&e.parent).is_err() {
        return Err(bad(
            "parent",
            format!("{:?} is not an agency code", e.parent),
        ));
    }
    if !matches!(e.channel.as_str(), "grpc" | "amqp" | "") {
        return Err(bad(
            "channel",
            format!("{:?} is neither grpc nor amqp", e.channel),
        ));
    }
    Ok(())
}

fn check_code(peer: &Peer, code: &str) -> std::result::Result<(), Refusal> {
    if OrganId::parse(code).is_err() {
        return Err(Refusal {
            code: "MALFORMED",
            sender: String::new(),
            why: format!("{code:?} is not an agency code"),
        });
    }
    if !peer.serves(code) {
        return Err(Refusal {
            code: "OUTSIDE_AUTHORITY",
            sender: code.to_owned(),
            why: format!(
                "{code} is not one of the codes {} is trusted for here ({})",
                peer.name,
                peer.codes_text()
            ),
        });
    }
    Ok(())
}

/// A certificate of an entry or binding: DER that parses, whose key is
/// the one named.
fn check_cert(
    organ_id: &str,
    der: &[u8],
    spki: Option<&str>,
) -> std::result::Result<SigningCertRow, Refusal> {
    let info = describe_certificate(der).map_err(|e| Refusal {
        code: "MALFORMED",
        sender: organ_id.to_owned(),
        why: format!(
            "a certificate of {organ_id} cannot be read: {}",
            e.message()
        ),
    })?;
    let key = hex::encode(info.spki_sha256);
    if let Some(s) = spki
        && !s.eq_ignore_ascii_case(&key)
    {
        return Err(Refusal {
            code: "MALFORMED",
            sender: organ_id.to_owned(),
            why: format!(
                "a binding of {organ_id} names the key {s}, and its certificate's is {key}"
            ),
        });
    }
    Ok(SigningCertRow {
        spki_sha256: key,
        organ_id: organ_id.to_owned(),
        subject: info.subject,
        issuer: info.issuer,
        not_after: info.not_after.unix_timestamp(),
        cert_der: der.to_vec(),
        bound_at: now_micros(),
    })
}

fn row_of(e: &pb::DirectoryEntry, peer: &str, blocked: bool, now: i64) -> AgencyRow {
    AgencyRow {
        organ_id: e.organ_id.clone(),
        name: e.name.trim().to_owned(),
        parent: (!e.parent.is_empty()).then(|| e.parent.clone()),
        email: e.email.clone(),
        telephone: e.telephone.clone(),
        address: e.address.clone(),
        website: e.website.clone(),
        channel: if e.channel.is_empty() {
            "grpc".to_owned()
        } else {
            e.channel.clone()
        },
        active: e.active && !blocked,
        extra: "{}".to_owned(),
        updated_at: now,
        source: Some(peer.to_owned()),
    }
}

/// What a peer's blocks here hold back.
struct Blocked<'a> {
    agencies: HashSet<&'a str>,
    keys: HashSet<&'a str>,
}

impl<'a> Blocked<'a> {
    fn of(blocks: &'a [Block]) -> Blocked<'a> {
        Blocked {
            agencies: blocks
                .iter()
                .filter(|b| b.spki_sha256.is_none())
                .map(|b| b.organ_id.as_str())
                .collect(),
            keys: blocks
                .iter()
                .filter_map(|b| b.spki_sha256.as_deref())
                .collect(),
        }
    }
}

/// The directory change an update makes, every change checked (kind,
/// codes in the peer's authority, fields, certificates), with its lines;
/// and how many changes it has. Pure: what the database alone can check
/// comes after, in the change's transaction.
fn update_change(
    peer: &Peer,
    update: &pb::DirectoryUpdate,
    blocked: &Blocked<'_>,
    now: i64,
) -> std::result::Result<(DirectoryChange, usize), Refusal> {
    let name = &peer.name;
    let seq = update.sequence;
    let mut change = DirectoryChange::default();
    let mut touched = 0usize;
    for (i, c) in update.changes.iter().enumerate() {
        let Some(kind) = &c.kind else {
            return Err(refuse(
                "UNKNOWN_UPDATE_KIND",
                format!(
                    "{name}'s update {seq}: change {} is of a kind this gateway does not \
                     know (a newer publisher?); the update is refused whole",
                    i + 1
                ),
            ));
        };
        let checked = match kind {
            Kind::AgencyAdded(e) | Kind::AgencyChanged(e) => check_entry(peer, e).map(|()| {
                change.agencies.push(row_of(
                    e,
                    name,
                    blocked.agencies.contains(e.organ_id.as_str()),
                    now,
                ));
            }),
            Kind::AgencyDeactivated(id) => check_code(peer, id).map(|()| {
                change.set_active.push((id.clone(), false));
            }),
            Kind::AgencyActivated(id) => check_code(peer, id).map(|()| {
                if !blocked.agencies.contains(id.as_str()) {
                    change.set_active.push((id.clone(), true));
                }
            }),
            Kind::CertificateBound(b) => check_code(peer, &b.organ_id)
                .and_then(|()| check_cert(&b.organ_id, &b.certificate, Some(&b.spki_sha256)))
                .map(|row| {
                    if !blocked.keys.contains(row.spki_sha256.as_str()) {
                        change.bind_signing.push(row);
                    }
                }),
            Kind::CertificateUnbound(b) => check_code(peer, &b.organ_id).map(|()| {
                let key = b.spki_sha256.to_ascii_lowercase();
                if !blocked.keys.contains(key.as_str()) {
                    change.unbind_signing.push((key, b.organ_id.clone()));
                }
            }),
        };
        if let Err(r) = checked {
            return Err(Refusal {
                why: format!("{name}'s update {seq} is refused whole: {}", r.why),
                ..r
            });
        }
        let (sender, detail) = describe(name, seq, kind);
        change.log.push(changed_line(name, &sender, detail));
        touched += 1;
    }
    Ok((change, touched))
}

/// A sentence for one change, as the log says it.
fn describe(peer: &str, sequence: u64, c: &Kind) -> (String, String) {
    match c {
        Kind::AgencyAdded(e) => (
            e.organ_id.clone(),
            format!(
                "{peer}'s update {sequence}: added {} ({})",
                e.organ_id, e.name
            ),
        ),
        Kind::AgencyChanged(e) => (
            e.organ_id.clone(),
            format!(
                "{peer}'s update {sequence}: {} changed (name {:?}, parent {:?}, channel {})",
                e.organ_id, e.name, e.parent, e.channel
            ),
        ),
        Kind::AgencyDeactivated(id) => (
            id.clone(),
            format!("{peer}'s update {sequence}: {id} deactivated"),
        ),
        Kind::AgencyActivated(id) => (
            id.clone(),
            format!("{peer}'s update {sequence}: {id} activated"),
        ),
        Kind::CertificateBound(b) => (
            b.organ_id.clone(),
            format!(
                "{peer}'s update {sequence}: signing key {} bound to {}",
                b.spki_sha256, b.organ_id
            ),
        ),
        Kind::CertificateUnbound(b) => (
            b.organ_id.clone(),
            format!(
                "{peer}'s update {sequence}: signing key {} unbound from {}",
                b.spki_sha256, b.organ_id
            ),
        ),
    }
}

impl DirectoryExchange {
    /// `me`: this gateway's `gateway.id`; `authority`: the patterns of its
    /// `local` routes.
    pub fn new(gw: Gateway, me: String, authority: Vec<TopicPattern>, peers: Vec<Peer>) -> Self {
        let signer = gw.receipt_signer();
        DirectoryExchange {
            gw,
            me,
            authority,
            peers,
            signer,
            asked: Default::default(),
            sent: Default::default(),
        }
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    pub fn peers(&self) -> &[Peer] {
        &self.peers
    }

    /// Whether this gateway announces its own agencies (it has a key).
    pub fn publishes(&self) -> bool {
        self.signer.is_some()
    }

    fn peer(&self, name: &str) -> Option<&Peer> {
        self.peers.iter().find(|p| p.name == name)
    }

    fn sign(&self, payload_type: &str, payload: Vec<u8>) -> Result<Vec<u8>> {
        let Some(signer) = &self.signer else {
            return Err(Error::new(
                Reason::Internal,
                "this gateway has no receipt key (receipts.key) to sign its directory with",
            ));
        };
        let signature = signer.sign_pb(payload_type, &payload)?;
        Ok(pb::SignedDirectoryMessage {
            payload_type: payload_type.to_owned(),
            payload: payload.into(),
            signature: Some(signature),
        }
        .encode_to_vec())
    }

    /// This gateway's own agencies, as it would announce them now.
    async fn announceable(&self) -> Result<BTreeMap<String, pb::DirectoryEntry>> {
        let store = self.gw.store();
        let own: Vec<AgencyRow> = store
            .agencies()
            .await?
            .into_iter()
            .filter(|a| a.source.is_none() && self.authority.iter().any(|p| p.matches(&a.organ_id)))
            .collect();
        Ok(entries_of(store, &own).await?.into_iter().collect())
    }

    /// Compares the directory with what was last announced and records
    /// the differences as new signed updates, waiting to be published.
    /// Returns how many updates it recorded (0 when nothing changed, or
    /// another replica recorded them first).
    pub async fn prepare_updates(&self) -> Result<usize> {
        if self.signer.is_none() {
            return Ok(0);
        }
        let store = self.gw.store();
        let state = store.publisher_state().await?;
        let version = store.directory_version().await?;
        if version == state.seen_version {
            return Ok(0);
        }
        let now = self.announceable().await?;
        let mut announced: BTreeMap<String, Vec<u8>> =
            store.published_entries().await?.into_iter().collect();
        let mut pending: Vec<(String, Option<Vec<u8>>, Vec<pb::DirectoryChange>)> = Vec::new();
        for (id, entry) in &now {
            let old = announced
                .get(id)
                .and_then(|b| pb::DirectoryEntry::decode(&b[..]).ok());
            let bytes = entry.encode_to_vec();
            if announced.get(id) == Some(&bytes) {
                continue;
            }
            let changes = diff_entry(old.as_ref(), entry);
            pending.push((id.clone(), Some(bytes), changes));
        }
        // An agency no longer announceable (removed, or no longer served
        // here) stays announced, inactive and without keys: a peer that
        // folded the updates and one that took a snapshot agree.
        for (id, bytes) in &announced {
            if now.contains_key(id) {
                continue;
            }
            let Ok(old) = pb::DirectoryEntry::decode(&bytes[..]) else {
                continue;
            };
            let gone = pb::DirectoryEntry {
                active: false,
                signing_certificates: Vec::new(),
                ..old.clone()
            };
            let gone_bytes = gone.encode_to_vec();
            if &gone_bytes == bytes {
                continue;
            }
            let changes = diff_entry(Some(&old), &gone);
            pending.push((id.clone(), Some(gone_bytes), changes));
        }
        if pending.is_empty() {
            store
                .note_directory_compared(state.sequence, version)
                .await?;
            return Ok(0);
        }
        let mut sequence = state.sequence;
        let mut written = 0;
        let chunks = pending.len().div_ceil(MAX_AGENCIES_PER_UPDATE);
        for (n, chunk) in pending.chunks(MAX_AGENCIES_PER_UPDATE).enumerate() {
            for (id, bytes, _) in chunk {
                if let Some(b) = bytes {
                    announced.insert(id.clone(), b.clone());
                }
            }
            let digest = state_sha256(announced.iter().map(|(k, v)| (k.as_str(), &v[..])));
            let update = pb::DirectoryUpdate {
                publisher: self.me.clone(),
                sequence: sequence + 1,
                issued_at: Some(crate::timestamp(now_micros())),
                changes: chunk
                    .iter()
                    .flat_map(|(_, _, c)| c.iter().cloned())
                    .collect(),
                state_sha256: digest.clone(),
            };
            let message = self.sign(pb::DIRECTORY_UPDATE_PAYLOAD_TYPE, update.encode_to_vec())?;
            let last = n + 1 == chunks;
            let recorded = store
                .publish_directory_update(
                    Publication {
                        after: sequence,
                        sequence: sequence + 1,
                        state_sha256: digest,
                        // Only the last chunk marks the version compared.
                        version: if last { version } else { state.seen_version },
                        entries: chunk
                            .iter()
                            .map(|(id, b, _)| (id.clone(), b.clone()))
                            .collect(),
                        message,
                    },
                    now_micros(),
                )
                .await?;
            if !recorded {
                return Ok(written);
            }
            sequence += 1;
            written += 1;
        }
        tracing::info!(
            updates = written,
            sequence,
            "directory: recorded updates for the peers"
        );
        Ok(written)
    }

    /// Recorded updates the broker has not confirmed yet, oldest first:
    /// (sequence, signed message).
    pub async fn unpublished(&self, limit: u64) -> Result<Vec<(u64, Vec<u8>)>> {
        self.gw.store().unpublished_directory_updates(limit).await
    }

    /// The broker confirmed update `sequence`.
    pub async fn published(&self, sequence: u64) -> Result<()> {
        self.gw
            .store()
            .mark_directory_update_published(sequence, now_micros())
            .await
    }

    /// The signed snapshot of what this gateway has announced.
    pub async fn snapshot(&self) -> Result<Vec<u8>> {
        let (state, entries) = self.gw.store().published_snapshot().await?;
        let digest = state_sha256(entries.iter().map(|(k, v)| (k.as_str(), &v[..])));
        let mut out = Vec::with_capacity(entries.len());
        for (_, bytes) in &entries {
            out.push(pb::DirectoryEntry::decode(&bytes[..]).map_err(|e| {
                Error::new(
                    Reason::Internal,
                    format!("an announced entry cannot be read: {e}"),
                )
            })?);
        }
        let snap = pb::DirectorySnapshot {
            publisher: self.me.clone(),
            sequence: state.sequence,
            issued_at: Some(crate::timestamp(now_micros())),
            entries: out,
            state_sha256: digest,
        };
        self.sign(pb::DIRECTORY_SNAPSHOT_PAYLOAD_TYPE, snap.encode_to_vec())
    }

    /// A peer's request for a snapshot: the routing key to answer on and
    /// the signed snapshot, or `None` (unknown requester, asked too often,
    /// nothing to announce).
    pub async fn answer_snapshot_request(&self, body: &[u8]) -> Result<Option<(String, Vec<u8>)>> {
        if self.signer.is_none() {
            return Ok(None);
        }
        let Ok(req) = pb::DirectorySnapshotRequest::decode(body) else {
            tracing::warn!(
                "directory: a snapshot request that is not a DirectorySnapshotRequest; ignored"
            );
            return Ok(None);
        };
        let name = req.requester;
        // Answered for this gateway's peers only: anyone who may publish on
        // the exchange could otherwise have it sign snapshots without end.
        if self.peer(&name).is_none() {
            tracing::warn!(requester = %lienthong_types::text::truncate(&name, 64), "directory: a snapshot request from a gateway that is not a peer; ignored");
            return Ok(None);
        }
        {
            let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
            if sent
                .get(&name)
                .is_some_and(|t| t.elapsed() < SNAPSHOT_SEND_EVERY)
            {
                return Ok(None);
            }
            if sent.len() > 1024 {
                sent.clear();
            }
            sent.insert(name.clone(), Instant::now());
        }
        Ok(Some((snapshot_key(&name), self.snapshot().await?)))
    }

    /// A request for `peer`'s snapshot, unless one was asked for lately.
    pub fn snapshot_request(&self, peer: &str, have: u64) -> Option<Vec<u8>> {
        let mut asked = self.asked.lock().unwrap_or_else(|p| p.into_inner());
        if asked
            .get(peer)
            .is_some_and(|t| t.elapsed() < SNAPSHOT_ASK_EVERY)
        {
            return None;
        }
        asked.insert(peer.to_owned(), Instant::now());
        Some(
            pb::DirectorySnapshotRequest {
                requester: self.me.clone(),
                have_sequence: have,
            }
            .encode_to_vec(),
        )
    }

    /// Peers nothing was applied from yet, or whose updates were seen and
    /// not applied: asked for a snapshot when the exchange connects and
    /// every little while after.
    pub async fn peers_to_ask(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let mut out = Vec::new();
        for p in &self.peers {
            let progress = self.gw.store().peer_progress(&p.name).await?;
            let have = progress.as_ref().map_or(0, |g| g.sequence);
            let behind = progress.as_ref().is_some_and(|g| g.lag() > 0);
            if (have == 0 || behind)
                && let Some(req) = self.snapshot_request(&p.name, have)
            {
                out.push((p.name.clone(), req));
            }
        }
        Ok(out)
    }

    /// Takes one message of the directory exchange (an update or a
    /// snapshot). `Err` only for a passing fault (the database): the
    /// message is to be taken again.
    pub async fn receive(&self, body: &[u8]) -> Result<Received> {
        let signed = match pb::SignedDirectoryMessage::decode(body) {
            Ok(s) => s,
            Err(e) => {
                return self
                    .refused(None, refuse("MALFORMED", format!("a message of the directory exchange is not a SignedDirectoryMessage ({e}); ignored")))
                    .await;
            }
        };
        match signed.payload_type.as_str() {
            pb::DIRECTORY_UPDATE_PAYLOAD_TYPE => self.receive_update(&signed).await,
            pb::DIRECTORY_SNAPSHOT_PAYLOAD_TYPE => self.receive_snapshot(&signed).await,
            other => {
                self.refused(None, refuse("UNKNOWN_UPDATE_KIND", format!("a directory message of the payload type {other:?}, which this gateway does not know; ignored"))).await
            }
        }
    }

    async fn refused(&self, peer: Option<&str>, r: Refusal) -> Result<Received> {
        tracing::warn!(
            peer = peer.unwrap_or("?"),
            reason = r.code,
            "directory: {}",
            r.why
        );
        self.gw
            .store()
            .log(refused_line(peer, &r.sender, r.code, r.why))
            .await?;
        Ok(Received::Refused)
    }

    /// The peer named by a message and its signature checked.
    fn signed_by<'a>(
        &'a self,
        publisher: &str,
        signed: &pb::SignedDirectoryMessage,
        what: &str,
    ) -> std::result::Result<&'a Peer, Refusal> {
        let Some(peer) = self.peer(publisher) else {
            return Err(refuse(
                "UNTRUSTED_PUBLISHER",
                format!(
                    "a directory {what} from {publisher:?}, which is not one of this gateway's \
                     peers ([[peers]]); ignored"
                ),
            ));
        };
        let Some(sig) = &signed.signature else {
            return Err(refuse(
                "BAD_SIGNATURE",
                format!("a directory {what} said to be {publisher}'s is not signed; ignored"),
            ));
        };
        let pae = signing::pae(&signed.payload_type, &signed.payload);
        peer.check(sig, &pae).map_err(|e| {
            refuse(
                "BAD_SIGNATURE",
                format!(
                    "a directory {what} said to be {publisher}'s is refused: {}",
                    e.message()
                ),
            )
        })?;
        Ok(peer)
    }

    /// A signed message's payload and the peer whose signature it carries.
    fn open<T: prost::Message + Default>(
        &self,
        signed: &pb::SignedDirectoryMessage,
        what: &str,
        publisher: impl Fn(&T) -> &str,
    ) -> std::result::Result<(T, &Peer), Refusal> {
        let payload = T::decode(&signed.payload[..]).map_err(|e| {
            refuse(
                "MALFORMED",
                format!("a directory {what}'s payload cannot be read ({e}); ignored"),
            )
        })?;
        let peer = self.signed_by(publisher(&payload), signed, what)?;
        Ok((payload, peer))
    }

    async fn receive_update(&self, signed: &pb::SignedDirectoryMessage) -> Result<Received> {
        let (update, peer) =
            match self.open::<pb::DirectoryUpdate>(signed, "update", |u| &u.publisher) {
                Ok(x) => x,
                Err(r) => return self.refused(None, r).await,
            };
        let name = peer.name.clone();
        let store = self.gw.store();
        store
            .note_peer_seen(&name, update.sequence, now_micros())
            .await?;
        let applied = store.peer_progress(&name).await?.map_or(0, |g| g.sequence);
        let seq = update.sequence;
        if seq <= applied {
            return self
                .refused(
                    Some(&name),
                    refuse(
                        "STALE_UPDATE",
                        format!(
                            "{name}'s update {seq} is not newer than the last applied ({applied}): \
                             a replay, or a copy delivered again; ignored"
                        ),
                    ),
                )
                .await;
        }
        if seq > applied + 1 {
            return Ok(match self.snapshot_request(&name, applied) {
                Some(request) => {
                    store
                        .log(refused_line(
                            Some(&name),
                            "",
                            "SNAPSHOT_ASKED",
                            format!(
                                "{name}'s update {seq} follows updates not received here (the \
                                 last applied is {applied}): asked {name} for a snapshot"
                            ),
                        ))
                        .await?;
                    Received::AskSnapshot {
                        peer: name,
                        request,
                    }
                }
                None => {
                    // A snapshot was asked for moments ago: it covers this
                    // update, which is set aside, said in the log.
                    store
                        .log(refused_line(
                            Some(&name),
                            "",
                            "AWAITING_SNAPSHOT",
                            format!(
                                "{name}'s update {seq} follows updates not received here (the \
                                 last applied is {applied}); the snapshot already asked for \
                                 will include it"
                            ),
                        ))
                        .await?;
                    Received::Refused
                }
            });
        }
        let ask = match self.apply_update(peer, applied, &update).await? {
            Applying::Done => {
                return Ok(Received::Applied {
                    peer: name,
                    sequence: seq,
                });
            }
            Applying::Diverged => true,
            Applying::Refused(r) => {
                self.refused(Some(&name), r).await?;
                false
            }
            Applying::RefusedDiverged(r) => {
                self.refused(Some(&name), r).await?;
                true
            }
        };
        // What is held here no longer follows the peer's updates: only a
        // snapshot mends it, asked for now rather than at the next update.
        let have = store.peer_progress(&name).await?.map_or(0, |g| g.sequence);
        Ok(
            match ask.then(|| self.snapshot_request(&name, have)).flatten() {
                Some(request) => {
                    store
                    .log(refused_line(
                        Some(&name),
                        "",
                        "SNAPSHOT_ASKED",
                        format!(
                            "{name}'s agencies as held here do not follow its updates (the last \
                             applied is {have}): asked {name} for a snapshot"
                        ),
                    ))
                    .await?;
                    Received::AskSnapshot {
                        peer: name,
                        request,
                    }
                }
                None => Received::Refused,
            },
        )
    }

    /// `Err`: a passing fault.
    async fn apply_update(
        &self,
        peer: &Peer,
        applied: u64,
        update: &pb::DirectoryUpdate,
    ) -> Result<Applying> {
        let name = &peer.name;
        let seq = update.sequence;
        let store = self.gw.store();
        let blocks = store.directory_blocks().await?;
        let (mut change, touched) =
            match update_change(peer, update, &Blocked::of(&blocks), now_micros()) {
                Ok(c) => c,
                Err(r) => return Ok(Applying::Refused(r)),
            };
        let adopt = self.adoptable(name, &mut change).await?;
        change.peer = Some(PeerAdvance {
            peer: name.clone(),
            after: applied,
            sequence: seq,
            state_sha256: update.state_sha256.clone(),
            replace: false,
            adopt,
        });
        if touched == 0 {
            change.log.push(changed_line(
                name,
                "",
                format!("{name}'s update {seq}: no change"),
            ));
        }
        match store.change_directory(change).await {
            Ok(()) => {}
            Err(e) if e.reason() == Reason::DuplicateConflict => {
                // Another replica applied it meanwhile.
                return Ok(Applying::Done);
            }
            Err(e) if e.reason() == Reason::PermissionDenied => {
                return Ok(Applying::Refused(refuse(
                    "OUTSIDE_AUTHORITY",
                    format!("{name}'s update {seq} is refused whole: {}", e.message()),
                )));
            }
            Err(e) if e.reason() == Reason::NotFound => {
                // It changes something not held here: this gateway's copy
                // and the peer's differ.
                return Ok(Applying::RefusedDiverged(refuse(
                    "CONTRADICTS_DIRECTORY",
                    format!("{name}'s update {seq} is refused whole: {}", e.message()),
                )));
            }
            Err(e) => return Err(e),
        }
        let same = self
            .check_fold(
                peer,
                seq,
                &update.state_sha256,
                !blocks.iter().any(|b| peer.serves(&b.organ_id)),
            )
            .await?;
        Ok(if same {
            Applying::Done
        } else {
            Applying::Diverged
        })
    }

    /// The agencies a change of `peer`'s touches that were entered here by
    /// hand — as other provinces' agencies were before the directory
    /// exchange — and that this gateway does not serve: the change takes
    /// them over (a line says so), after which only the peer changes them.
    async fn adoptable(&self, peer: &str, change: &mut DirectoryChange) -> Result<Vec<String>> {
        let mut codes: Vec<&str> = change
            .agencies
            .iter()
            .map(|a| a.organ_id.as_str())
            .chain(change.bind_signing.iter().map(|c| c.organ_id.as_str()))
            .chain(change.set_active.iter().map(|(id, _)| id.as_str()))
            .collect();
        codes.sort_unstable();
        codes.dedup();
        let mut adopt = Vec::new();
        for id in codes {
            if self.authority.iter().any(|p| p.matches(id)) {
                continue;
            }
            if let Some(a) = self.gw.store().agency(id).await?
                && a.source.is_none()
            {
                adopt.push(id.to_owned());
            }
        }
        for id in &adopt {
            change.log.push(changed_line(
                peer,
                id,
                format!(
                    "{id}, entered here by hand, is taken over by {peer}, trusted for its code: \
                     from now on only {peer}'s signed updates change it"
                ),
            ));
        }
        Ok(adopt)
    }

    /// After an update: the peer's agencies as held here match the digest
    /// the update announced; if not, a snapshot is asked for (blocks make
    /// the two differ on purpose, so no check then).
    async fn check_fold(
        &self,
        peer: &Peer,
        seq: u64,
        announced: &str,
        check: bool,
    ) -> Result<bool> {
        if !check || announced.is_empty() {
            return Ok(true);
        }
        let held = self.held_digest(&peer.name).await?;
        if held != announced {
            tracing::warn!(peer = %peer.name, sequence = seq, "directory: the peer's agencies as held here differ from its announced digest");
            self.gw
                .store()
                .log(refused_line(
                    Some(&peer.name),
                    "",
                    "DIGEST_MISMATCH",
                    format!(
                        "after {}'s update {seq} its agencies as held here do not match the \
                         digest it announced ({announced}); a snapshot will be asked for",
                        peer.name
                    ),
                ))
                .await?;
            // Asked for at once, whenever the last request went.
            let mut asked = self.asked.lock().unwrap_or_else(|p| p.into_inner());
            asked.remove(&peer.name);
            return Ok(false);
        }
        Ok(true)
    }

    /// The digest of `peer`'s agencies as this gateway holds them.
    async fn held_digest(&self, peer: &str) -> Result<String> {
        let store = self.gw.store();
        let held = entries_of(store, &store.agencies_of_peer(peer).await?).await?;
        let encoded: Vec<(String, Vec<u8>)> = held
            .into_iter()
            .map(|(id, e)| (id, e.encode_to_vec()))
            .collect();
        Ok(state_sha256(
            encoded.iter().map(|(k, v)| (k.as_str(), &v[..])),
        ))
    }

    async fn receive_snapshot(&self, signed: &pb::SignedDirectoryMessage) -> Result<Received> {
        let (snap, peer) =
            match self.open::<pb::DirectorySnapshot>(signed, "snapshot", |s| &s.publisher) {
                Ok(x) => x,
                Err(r) => return self.refused(None, r).await,
            };
        let name = peer.name.clone();
        let store = self.gw.store();
        let progress = store.peer_progress(&name).await?;
        let (applied, held_digest) = progress
            .as_ref()
            .map_or((0, String::new()), |g| (g.sequence, g.state_sha256.clone()));
        let seq = snap.sequence;
        if seq < applied {
            return self.refused(Some(&name), refuse("STALE_SNAPSHOT", format!("{name}'s snapshot at update {seq} is older than the last update applied here ({applied}); ignored"))).await;
        }
        // Its own digest, over its own entries.
        let mut entries: Vec<(String, Vec<u8>)> = Vec::with_capacity(snap.entries.len());
        for e in &snap.entries {
            let mut e = e.clone();
            e.signing_certificates
                .sort_by_key(|c| signing::spki_sha256(c).map(hex::encode).unwrap_or_default());
            entries.push((e.organ_id.clone(), e.encode_to_vec()));
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let computed = state_sha256(entries.iter().map(|(k, v)| (k.as_str(), &v[..])));
        if computed != snap.state_sha256 {
            return self.refused(Some(&name), refuse("MALFORMED", format!("{name}'s snapshot at update {seq} does not match its own digest ({} announced, {computed} computed); ignored", snap.state_sha256))).await;
        }
        if seq == applied && applied > 0 {
            if !held_digest.is_empty() && held_digest != computed {
                return self.refused(Some(&name), refuse("SNAPSHOT_CONTRADICTS", format!("{name}'s snapshot at update {seq} contradicts its signed update {seq}, applied here (digest {held_digest}, the snapshot's {computed}); the directory is unchanged"))).await;
            }
            // The same state as the update announced: applied again only
            // when this gateway's copy has drifted from it.
            if self.held_digest(&name).await? == computed {
                return Ok(Received::Applied {
                    peer: name,
                    sequence: seq,
                });
            }
        }
        match self.apply_snapshot(peer, applied, &snap).await? {
            Ok(()) => Ok(Received::Applied {
                peer: name,
                sequence: seq,
            }),
            Err(r) => self.refused(Some(&name), r).await,
        }
    }

    async fn apply_snapshot(
        &self,
        peer: &Peer,
        applied: u64,
        snap: &pb::DirectorySnapshot,
    ) -> Result<std::result::Result<(), Refusal>> {
        let name = &peer.name;
        let seq = snap.sequence;
        let store = self.gw.store();
        let blocks = store.directory_blocks().await?;
        let blocked_agency: HashSet<&str> = blocks
            .iter()
            .filter(|b| b.spki_sha256.is_none())
            .map(|b| b.organ_id.as_str())
            .collect();
        let blocked_key: HashSet<&str> = blocks
            .iter()
            .filter_map(|b| b.spki_sha256.as_deref())
            .collect();
        let now = now_micros();
        // What is held now, to log what the snapshot changes.
        let held: HashMap<String, pb::DirectoryEntry> =
            entries_of(store, &store.agencies_of_peer(name).await?)
                .await?
                .into_iter()
                .collect();
        let mut change = DirectoryChange::default();
        let mut listed = HashSet::new();
        for e in &snap.entries {
            if let Err(r) = check_entry(peer, e) {
                return Ok(Err(Refusal {
                    why: format!(
                        "{name}'s snapshot at update {seq} is refused whole: {}",
                        r.why
                    ),
                    ..r
                }));
            }
            if !listed.insert(e.organ_id.as_str()) {
                return Ok(Err(refuse(
                    "MALFORMED",
                    format!(
                        "{name}'s snapshot at update {seq} lists {} twice",
                        e.organ_id
                    ),
                )));
            }
            change.agencies.push(row_of(
                e,
                name,
                blocked_agency.contains(e.organ_id.as_str()),
                now,
            ));
            for der in &e.signing_certificates {
                match check_cert(&e.organ_id, der, None) {
                    Ok(row) if !blocked_key.contains(row.spki_sha256.as_str()) => {
                        change.bind_signing.push(row)
                    }
                    Ok(_) => {}
                    Err(r) => {
                        return Ok(Err(Refusal {
                            why: format!(
                                "{name}'s snapshot at update {seq} is refused whole: {}",
                                r.why
                            ),
                            ..r
                        }));
                    }
                }
            }
            for c in diff_entry(held.get(e.organ_id.as_str()), e) {
                if let Some(kind) = &c.kind {
                    let (sender, detail) = describe(name, seq, kind);
                    change.log.push(changed_line(
                        name,
                        &sender,
                        detail.replacen("update", "snapshot at update", 1),
                    ));
                }
            }
        }
        for id in held.keys().filter(|id| !listed.contains(id.as_str())) {
            change.log.push(changed_line(
                name,
                id,
                format!("{name}'s snapshot at update {seq}: {id} is no longer listed; deactivated"),
            ));
        }
        change.log.push(changed_line(name, "", format!("{name}'s snapshot at update {seq} applied: {} agencies (the last update applied before was {applied})", snap.entries.len())));
        let adopt = self.adoptable(name, &mut change).await?;
        change.peer = Some(PeerAdvance {
            peer: name.clone(),
            after: applied,
            sequence: seq,
            state_sha256: snap.state_sha256.clone(),
            replace: true,
            adopt,
        });
        match store.change_directory(change).await {
            Ok(()) => Ok(Ok(())),
            Err(e) if e.reason() == Reason::DuplicateConflict => Ok(Ok(())),
            Err(e) if e.reason() == Reason::PermissionDenied => Ok(Err(refuse(
                "OUTSIDE_AUTHORITY",
                format!(
                    "{name}'s snapshot at update {seq} is refused whole: {}",
                    e.message()
                ),
            ))),
            Err(e) => Err(e),
        }
    }

    /// Each peer's state.
    pub async fn peer_status(&self) -> Result<Vec<PeerStatus>> {
        let store = self.gw.store();
        let progress = store.peers_progress().await?;
        let agencies = store.agencies().await?;
        Ok(self
            .peers
            .iter()
            .map(|p| {
                let g = progress.iter().find(|g| g.peer == p.name);
                PeerStatus {
                    name: p.name.clone(),
                    codes: p.codes_text(),
                    agencies: agencies
                        .iter()
                        .filter(|a| a.source.as_deref() == Some(p.name.as_str()))
                        .count(),
                    applied_sequence: g.map_or(0, |g| g.sequence),
                    seen_sequence: g.map_or(0, |g| g.seen_sequence),
                    lag: g.map_or(0, |g| g.lag()),
                    applied_at: g.map_or(0, |g| g.applied_at),
                    seen_at: g.map_or(0, |g| g.seen_at),
                }
            })
            .collect())
    }
}

/// Blocks a foreign agency (`spki` `None`) or one of its keys here: the
/// agency is deactivated, or the key unbound, and the peer's updates
/// cannot undo it until the block is lifted.
pub async fn block(
    store: &crate::store::Store,
    organ_id: &str,
    spki: Option<&str>,
    reason: &str,
    by: &crate::directory::ChangedBy,
) -> Result<()> {
    let Some(agency) = store.agency(organ_id).await? else {
        return Err(Error::new(
            Reason::NotFound,
            format!("{organ_id} is not in the directory"),
        ));
    };
    let Some(source) = agency.source.clone() else {
        return Err(Error::new(
            Reason::PermissionDenied,
            format!(
                "{organ_id} is one of this gateway's own agencies: deactivate it (`lienthong directory deactivate`) or unbind its key instead of blocking it"
            ),
        ));
    };
    let now = now_micros();
    let mut change = DirectoryChange::default();
    let detail = match spki {
        None => {
            change.set_active.push((organ_id.to_owned(), false));
            format!("{organ_id} (kept by {source}) blocked here: {reason}")
        }
        Some(k) => {
            let k = k.to_ascii_lowercase();
            if store
                .signing_cert(&k)
                .await?
                .is_some_and(|c| c.organ_id == organ_id)
            {
                change.unbind_signing.push((k.clone(), organ_id.to_owned()));
            }
            format!("the signing key {k} of {organ_id} (kept by {source}) blocked here: {reason}")
        }
    };
    change.block.push(Block {
        organ_id: organ_id.to_owned(),
        spki_sha256: spki.map(str::to_ascii_lowercase),
        reason: reason.to_owned(),
        actor: by.actor.clone(),
        blocked_at: now,
    });
    change.log.push(by.line(organ_id, detail));
    store.change_directory(change).await
}

/// Lifts a block: the peer's next update asks it for a snapshot, which
/// brings the agency or key back as the peer keeps it.
pub async fn unblock(
    store: &crate::store::Store,
    organ_id: &str,
    spki: Option<&str>,
    by: &crate::directory::ChangedBy,
) -> Result<()> {
    let mut change = DirectoryChange::default();
    change
        .unblock
        .push((organ_id.to_owned(), spki.map(str::to_ascii_lowercase)));
    change.log.push(by.line(
        organ_id,
        match spki {
            None => format!("the block of {organ_id} lifted; its peer's next snapshot restores it"),
            Some(k) => format!("the block of the signing key {k} of {organ_id} lifted; its peer's next snapshot restores it"),
        },
    ));
    store.change_directory(change).await
}

/// Decodes and checks a message of the directory exchange as a gateway
/// trusting its publisher for `codes` would — everything but the signature
/// and the sequence, which need keys and a database. `Ok`: how many
/// changes or entries it carries; `Err`: the reason code and sentence a
/// gateway would log. What the fuzzer drives: never a panic.
pub fn check_message(
    codes: &[TopicPattern],
    body: &[u8],
) -> std::result::Result<usize, (&'static str, String)> {
    let signed =
        pb::SignedDirectoryMessage::decode(body).map_err(|e| ("MALFORMED", e.to_string()))?;
    let peer = |publisher: &str| Peer {
        name: publisher.to_owned(),
        codes: codes.to_vec(),
        trust: PeerTrust::Certificate {
            der: Vec::new(),
            spki_sha256: [0; 32],
        },
    };
    let err = |r: Refusal| (r.code, r.why);
    match signed.payload_type.as_str() {
        pb::DIRECTORY_UPDATE_PAYLOAD_TYPE => {
            let u = pb::DirectoryUpdate::decode(&signed.payload[..])
                .map_err(|e| ("MALFORMED", e.to_string()))?;
            let none = Blocked {
                agencies: HashSet::new(),
                keys: HashSet::new(),
            };
            update_change(&peer(&u.publisher), &u, &none, 0)
                .map(|(_, n)| n)
                .map_err(err)
        }
        pb::DIRECTORY_SNAPSHOT_PAYLOAD_TYPE => {
            let s = pb::DirectorySnapshot::decode(&signed.payload[..])
                .map_err(|e| ("MALFORMED", e.to_string()))?;
            let p = peer(&s.publisher);
            for e in &s.entries {
                check_entry(&p, e).map_err(err)?;
                for der in &e.signing_certificates {
                    check_cert(&e.organ_id, der, None).map_err(err)?;
                }
            }
            Ok(s.entries.len())
        }
        other => Err(("UNKNOWN_UPDATE_KIND", format!("payload type {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devpki::{DevCa, KeyType};

    fn cert(ca: &DevCa, id: &str) -> Vec<u8> {
        let now = time::OffsetDateTime::now_utc();
        ca.issue_signing(
            id,
            "Cơ quan thử",
            KeyType::EcP256,
            (
                now - time::Duration::days(1),
                now + time::Duration::days(30),
            ),
        )
        .unwrap()
        .cert_der
    }

    fn entry(id: &str, name: &str, certs: Vec<Vec<u8>>) -> pb::DirectoryEntry {
        pb::DirectoryEntry {
            organ_id: id.into(),
            name: name.into(),
            channel: "grpc".into(),
            active: true,
            signing_certificates: certs.into_iter().map(Into::into).collect(),
            ..Default::default()
        }
    }

    fn kinds(changes: &[pb::DirectoryChange]) -> Vec<&'static str> {
        changes
            .iter()
            .map(|c| match c.kind.as_ref().unwrap() {
                Kind::AgencyAdded(_) => "added",
                Kind::AgencyChanged(_) => "changed",
                Kind::AgencyDeactivated(_) => "deactivated",
                Kind::AgencyActivated(_) => "activated",
                Kind::CertificateBound(_) => "bound",
                Kind::CertificateUnbound(_) => "unbound",
            })
            .collect()
    }

    fn peer_h53() -> Peer {
        Peer {
            name: "H53".into(),
            codes: vec![TopicPattern::parse("#.H53").unwrap()],
            trust: PeerTrust::Certificate {
                der: Vec::new(),
                spki_sha256: [0; 32],
            },
        }
    }

    #[test]
    fn the_changes_between_two_entries_are_what_a_peer_applies() {
        let ca = DevCa::generate("CA thử", KeyType::EcP256).unwrap();
        let (k1, k2) = (cert(&ca, "000.00.01.H53"), cert(&ca, "000.00.01.H53"));
        let first = entry("000.00.01.H53", "Văn phòng", vec![k1.clone()]);
        assert_eq!(kinds(&diff_entry(None, &first)), ["added", "bound"]);
        let renamed = entry("000.00.01.H53", "Văn phòng UBND", vec![k1.clone()]);
        assert_eq!(kinds(&diff_entry(Some(&first), &renamed)), ["changed"]);
        let off = pb::DirectoryEntry {
            active: false,
            ..first.clone()
        };
        assert_eq!(kinds(&diff_entry(Some(&first), &off)), ["deactivated"]);
        assert_eq!(kinds(&diff_entry(Some(&off), &first)), ["activated"]);
        let rekeyed = entry("000.00.01.H53", "Văn phòng", vec![k2]);
        assert_eq!(
            kinds(&diff_entry(Some(&first), &rekeyed)),
            ["unbound", "bound"]
        );
        assert!(diff_entry(Some(&first), &first).is_empty());
    }

    #[test]
    fn the_digest_covers_every_field_and_the_order_of_codes() {
        let a = entry("000.00.01.H53", "A", vec![]).encode_to_vec();
        let b = entry("000.00.02.H53", "B", vec![]).encode_to_vec();
        let b2 = entry("000.00.02.H53", "B.", vec![]).encode_to_vec();
        let one = state_sha256([("000.00.01.H53", &a[..]), ("000.00.02.H53", &b[..])]);
        let other = state_sha256([("000.00.01.H53", &a[..]), ("000.00.02.H53", &b2[..])]);
        assert_ne!(one, other);
        assert_eq!(
            one,
            state_sha256([("000.00.01.H53", &a[..]), ("000.00.02.H53", &b[..])])
        );
    }

    #[test]
    fn an_update_is_refused_whole_for_one_bad_change() {
        let ca = DevCa::generate("CA thử", KeyType::EcP256).unwrap();
        let peer = peer_h53();
        let none = Blocked {
            agencies: HashSet::new(),
            keys: HashSet::new(),
        };
        let ok = Kind::AgencyAdded(entry("000.00.01.H53", "Văn phòng", vec![]));
        let update = |kinds: Vec<Option<Kind>>| pb::DirectoryUpdate {
            publisher: "H53".into(),
            sequence: 7,
            changes: kinds
                .into_iter()
                .map(|kind| pb::DirectoryChange { kind })
                .collect(),
            ..Default::default()
        };
        let refusal = |u: &pb::DirectoryUpdate| update_change(&peer, u, &none, 0).err().unwrap();
        let (change, n) = update_change(&peer, &update(vec![Some(ok.clone())]), &none, 0)
            .map_err(|r| r.why)
            .unwrap();
        assert_eq!((n, change.agencies.len()), (1, 1));
        assert_eq!(change.agencies[0].source.as_deref(), Some("H53"));

        let outside = Kind::AgencyDeactivated("000.00.01.H35".into());
        let r = refusal(&update(vec![Some(ok.clone()), Some(outside)]));
        assert_eq!(r.code, "OUTSIDE_AUTHORITY");
        assert!(
            r.why.contains("000.00.01.H35") && r.why.contains("#.H53"),
            "{}",
            r.why
        );
        assert_eq!(
            refusal(&update(vec![Some(ok.clone()), None])).code,
            "UNKNOWN_UPDATE_KIND"
        );
        let bad_parent = Kind::AgencyChanged(pb::DirectoryEntry {
            parent: "không phải mã".into(),
            ..entry("000.00.01.H53", "Văn phòng", vec![])
        });
        assert_eq!(refusal(&update(vec![Some(bad_parent)])).code, "MALFORMED");
        let wrong_key = Kind::CertificateBound(pb::CertificateBinding {
            organ_id: "000.00.01.H53".into(),
            certificate: cert(&ca, "000.00.01.H53").into(),
            spki_sha256: "00".repeat(32),
        });
        assert_eq!(refusal(&update(vec![Some(wrong_key)])).code, "MALFORMED");
        // A blocked key is not bound, a blocked agency not activated.
        let der = cert(&ca, "000.00.01.H53");
        let key = hex::encode(signing::spki_sha256(&der).unwrap());
        let blocked = Blocked {
            agencies: ["000.00.01.H53"].into_iter().collect(),
            keys: [key.as_str()].into_iter().collect(),
        };
        let bind = Kind::CertificateBound(pb::CertificateBinding {
            organ_id: "000.00.01.H53".into(),
            certificate: der.clone().into(),
            spki_sha256: key.clone(),
        });
        let on = Kind::AgencyActivated("000.00.01.H53".into());
        let (change, _) = update_change(
            &peer,
            &update(vec![Some(ok), Some(bind), Some(on)]),
            &blocked,
            0,
        )
        .map_err(|r| r.why)
        .unwrap();
        assert!(change.bind_signing.is_empty() && change.set_active.is_empty());
        assert!(
            !change.agencies[0].active,
            "a blocked agency stays inactive"
        );
    }

    #[test]
    fn a_peer_is_recognised_by_its_certificate_or_its_anchor_and_subject() {
        let ca = DevCa::generate("CA thử", KeyType::EcP256).unwrap();
        let now = time::OffsetDateTime::now_utc();
        let validity = (
            now - time::Duration::days(1),
            now + time::Duration::days(30),
        );
        let h53 = ca
            .issue_signing("000.00.00.H53", "Trục H53", KeyType::EcP256, validity)
            .unwrap();
        let h35 = ca
            .issue_signing("000.00.00.H35", "Trục H35", KeyType::EcP256, validity)
            .unwrap();
        let key = lienthong_pki::signing::SigningKey::from_pkcs8_pem(&h53.key_pem, None).unwrap();
        let signer = ReceiptSigner::new(key, h53.chain_der.clone());
        let ty = pb::DIRECTORY_UPDATE_PAYLOAD_TYPE;
        let sig = signer.sign_pb(ty, b"update").unwrap();
        let pae = signing::pae(ty, b"update");
        let pinned = |der: &[u8]| Peer {
            trust: PeerTrust::Certificate {
                der: der.to_vec(),
                spki_sha256: signing::spki_sha256(der).unwrap(),
            },
            ..peer_h53()
        };
        assert!(pinned(&h53.cert_der).check(&sig, &pae).is_ok());
        let wrong = pinned(&h35.cert_der).check(&sig, &pae).unwrap_err();
        assert_eq!(wrong.reason(), Reason::BadSignature);
        assert!(
            signed_elsewhere(&pinned(&h53.cert_der), &sig, &signing::pae(ty, b"other")),
            "a signature over other bytes"
        );
        let subject = describe_certificate(&h53.cert_der).unwrap().subject;
        let anchored = |subject: &str| Peer {
            trust: PeerTrust::Anchor {
                anchors: TrustAnchors::from_der_certs([ca.cert_der()]).unwrap(),
                subject: subject.to_owned(),
            },
            ..peer_h53()
        };
        assert!(anchored(&subject).check(&sig, &pae).is_ok());
        let other = describe_certificate(&h35.cert_der).unwrap().subject;
        let e = anchored(&other).check(&sig, &pae).unwrap_err();
        assert!(e.message().contains(&subject), "{}", e.message());
    }

    fn signed_elsewhere(p: &Peer, sig: &pb::Signature, pae: &[u8]) -> bool {
        p.check(sig, pae).is_err()
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let codes = vec![TopicPattern::parse("#.H53").unwrap()];
        for body in [&b""[..], b"\xff\xff\xff", b"\x0a\x05hello\x12\x01"] {
            let _ = check_message(&codes, body);
        }
        assert_eq!(
            check_message(&codes, b"\xff\x01").unwrap_err().0,
            "MALFORMED"
        );
        let other = pb::SignedDirectoryMessage {
            payload_type: "text/plain".into(),
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(
            check_message(&codes, &other).unwrap_err().0,
            "UNKNOWN_UPDATE_KIND"
        );
    }
}

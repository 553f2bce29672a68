//! `lienthong archive`: documents whose lifecycle has ended leave the hot
//! database for signed, hash-linked archive packages.
//!
//! A package is one ZIP file (`archive-000001-20261208.zip`):
//!
//! ```text
//! manifest.json                      what is inside, each file's size and SHA-256,
//!                                    and the previous package's manifest SHA-256
//! manifest.sig                       the receipt key's signature over manifest.json
//! documents/<row>/document.json      a document's lifecycle: each recipient's state
//!                                    and steps, and the folders of its messages
//! messages/<row>/record.json         a message's record: its row, its deliveries,
//!                                    its lines of the transfer log
//! messages/<row>/envelope.binpb      the signed envelope exactly as accepted
//! messages/<row>/verification.binpb  the verification report the gateway made
//! messages/<row>/attachments/<n>     each attachment's bytes
//! ```
//!
//! The layout is the gateway's own, made on X-Road's message-log archive:
//! each package names its predecessor's manifest digest, so a package
//! removed from or put into the sequence breaks the chain where it stands,
//! and the signature ties the chain to this gateway's key. E-ARK's SIP
//! (a METS manifest, PREMIS metadata) describes records handed to a
//! national archive; what the gateway keeps is the evidence of transfers,
//! whose records the agencies' own systems hand over — so the manifest
//! says only what a checker needs, in JSON.
//!
//! `create` writes and re-reads a package and registers it; `purge` then
//! turns its messages' rows into tombstones (`lienthong_store::archive`)
//! and removes attachments no other message names. The transfer log is
//! never purged: it is the chain every package's log lines are copies of.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use lienthong_core::archive::{PackageRow, PurgedMessage};
use lienthong_core::blobs::BlobStore;
use lienthong_core::lifecycle;
use lienthong_core::rows::MessageRow;
use lienthong_core::store::{Migrations, Store};
use lienthong_proto::v1 as pb;
use prost::Message as _;
use ring::digest;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::cli::cli_user_name;
use crate::config::Config;
use crate::manifest_sig::{self, FileEntry};

/// The DSSE payload type a package's manifest is signed under.
pub const PAYLOAD_TYPE: &str = "application/vnd.lienthong.archive-manifest.v1+json";
const FORMAT: &str = "lienthong-archive";
const VERSION: u32 = 1;
const MANIFEST: &str = "manifest.json";
const SIGNATURE: &str = "manifest.sig";
/// A blob used by a submission within this time stays (see
/// `BlobStore::remove_unused`): longer than any request takes.
const BLOB_QUIET_MICROS: i64 = 10 * 60 * 1_000_000;
const DAY_MICROS: i64 = 86_400_000_000;

#[derive(Subcommand, Debug)]
pub enum ArchiveCommand {
    /// Write the next package: documents whose lifecycle has ended (or
    /// older than archive.after_days), kept at least archive.keep_days.
    Create(CreateArgs),
    /// Check packages offline: signature, every file's SHA-256, and the
    /// chain between them.
    Verify(VerifyArgs),
    /// Give a message back from a package: its signed envelope, its
    /// verification report, its record and its attachments.
    Extract(ExtractArgs),
    /// Take the messages of registered packages out of the hot database,
    /// leaving a tombstone per message.
    Purge(PurgeArgs),
    /// The packages this database wrote.
    List,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Where to write the package (default: archive.dir).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Write the manifest without a signature when the gateway has no
    /// receipt key.
    #[arg(long)]
    pub unsigned: bool,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Package files, any order; the chain is checked between them.
    #[arg(required = true)]
    pub packages: Vec<PathBuf>,
    /// Accept packages whose manifest is not signed.
    #[arg(long)]
    pub unsigned: bool,
}

#[derive(Args, Debug)]
pub struct ExtractArgs {
    pub package: PathBuf,
    /// The message to give back.
    #[arg(long = "message-id")]
    pub message_id: String,
    /// Its sender's code, when two senders used the same id.
    #[arg(long)]
    pub from: Option<String>,
    /// The folder to write into (created).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub unsigned: bool,
}

#[derive(Args, Debug)]
pub struct PurgeArgs {
    #[arg(required = true)]
    pub packages: Vec<PathBuf>,
    #[arg(long)]
    pub unsigned: bool,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    format: String,
    v: u32,
    /// The gateway's code (gateway.id).
    gateway: String,
    seq: i64,
    name: String,
    /// RFC 3339, UTC.
    created_at: String,
    /// The acceptance times of its first and last message.
    period_from: String,
    period_to: String,
    previous: Option<PreviousPackage>,
    documents: Vec<DocumentEntry>,
    messages: Vec<MessageEntry>,
    files: Vec<FileEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PreviousPackage {
    name: String,
    manifest_sha256: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DocumentEntry {
    entry: String,
    sender: String,
    document_id: String,
    message_id: String,
    /// DocumentType.Type.
    doc_type: u32,
    /// `ended`, or `older than N days`.
    why: String,
    /// The folders of the document's messages (itself and the statuses
    /// answering it).
    messages: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageEntry {
    entry: String,
    /// Its row in the database that wrote the package.
    pk: i64,
    sender: String,
    message_id: String,
    kind: String,
    document_id: String,
    envelope_sha256: String,
    accepted_at: String,
}

fn rfc3339(micros: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn chain(e: lienthong_core::error::Error) -> anyhow::Error {
    anyhow::anyhow!("{}", e.chain())
}

pub async fn run(cfg: Config, cmd: ArchiveCommand) -> Result<ExitCode> {
    match cmd {
        ArchiveCommand::Create(a) => create(cfg, a).await,
        ArchiveCommand::Verify(a) => verify(&cfg, a),
        ArchiveCommand::Extract(a) => extract(&cfg, a),
        ArchiveCommand::Purge(a) => purge(cfg, a).await,
        ArchiveCommand::List => list(cfg).await,
    }
}

async fn open_store(cfg: &Config) -> Result<(Store, BlobStore)> {
    let store = Store::open(&cfg.database.url, cfg.writer()?, Migrations::Require)
        .await
        .map_err(chain)?;
    let keys = crate::storage::encryption_keys(cfg)?;
    let blobs = crate::storage::open_with(cfg, keys, Some(&store)).await?;
    Ok((store, blobs))
}

/// A document chosen for the package, with its statuses: rows, not their
/// content (read again one at a time as the package is written), so that
/// a package of ten thousand documents is chosen in little memory.
struct Unit {
    document: DocumentKey,
    statuses: Vec<i64>,
    doc_type: u32,
    why: String,
    states: BTreeMap<String, String>,
    steps: serde_json::Value,
}

struct DocumentKey {
    id: i64,
    sender: String,
    document_id: String,
    message_id: String,
    replaces: Option<String>,
}

fn doc_type_of(m: &MessageRow) -> u32 {
    pb::SignedEnvelope::decode(m.signed_envelope.as_slice())
        .ok()
        .and_then(|se| pb::Envelope::decode(&se.payload[..]).ok())
        .and_then(|e| match e.body {
            Some(pb::envelope::Body::Document(d)) => Some(d.r#type),
            _ => None,
        })
        .unwrap_or(0)
}

/// The documents that may leave now, and how many more wait for the next
/// package.
async fn choose(cfg: &Config, store: &Store, now: i64) -> Result<(Vec<Unit>, u64)> {
    let a = &cfg.archive;
    let min_keep = a
        .keep_days_by_type
        .values()
        .copied()
        .chain([a.keep_days])
        .min()
        .unwrap_or(a.keep_days);
    let before = now - i64::from(min_keep) * DAY_MICROS;
    let older = now - i64::from(a.after_days) * DAY_MICROS;
    let mut units: Vec<Unit> = Vec::new();
    let mut more = 0u64;
    let mut after = 0i64;
    loop {
        let page = store
            .unarchived_documents(before, after, 500)
            .await
            .map_err(chain)?;
        let Some(last) = page.last() else { break };
        after = last.id;
        for doc in page {
            let doc_type = doc_type_of(&doc);
            if doc.accepted_at > now - i64::from(a.keep_days_for(doc_type)) * DAY_MICROS {
                continue;
            }
            let life = lifecycle::of_document(store, doc.clone())
                .await
                .map_err(chain)?;
            let ended = life.recipients.values().all(|r| !r.state.is_open());
            let why = if ended {
                "ended".to_owned()
            } else if doc.accepted_at < older {
                format!("older than {} days", a.after_days)
            } else {
                continue;
            };
            if store.has_pending_delivery(doc.id).await.map_err(chain)? {
                continue;
            }
            let mut statuses: Vec<i64> = Vec::new();
            let mut waiting = false;
            for s in store
                .statuses_answering(&doc.sender, &doc.document_id)
                .await
                .map_err(chain)?
            {
                if s.archived.is_some() {
                    continue;
                }
                if store.has_pending_delivery(s.id).await.map_err(chain)? {
                    waiting = true;
                    break;
                }
                statuses.push(s.id);
            }
            if waiting {
                continue;
            }
            if units.len() >= a.max_documents as usize {
                more += 1;
                continue;
            }
            let states = life
                .recipients
                .iter()
                .map(|(who, r)| (who.clone(), r.state.label().to_owned()))
                .collect();
            let steps = json!(life
                .recipients
                .iter()
                .map(|(who, r)| (who.clone(), r.steps.iter().map(|s| json!({
                    "event": s.event,
                    "state": s.state,
                    "at": s.at.as_ref().map(|t| rfc3339(t.seconds * 1_000_000 + i64::from(t.nanos) / 1000)),
                    "message_id": s.message_id,
                    "note": s.note,
                })).collect::<Vec<_>>()))
                .collect::<BTreeMap<_, _>>());
            units.push(Unit {
                document: DocumentKey {
                    id: doc.id,
                    sender: doc.sender.clone(),
                    document_id: doc.document_id.clone(),
                    message_id: doc.message_id.clone(),
                    replaces: doc.replaces.clone(),
                },
                statuses,
                doc_type,
                why,
                states,
                steps,
            });
        }
    }
    // A recall, update or replacement leaves with the document it refers
    // to, never before or after it: the lifecycle of the one still in the
    // hot database is folded from both.
    loop {
        let chosen: BTreeSet<(String, String)> = units
            .iter()
            .map(|u| (u.document.sender.clone(), u.document.document_id.clone()))
            .collect();
        let mut keep = Vec::with_capacity(units.len());
        let mut dropped = false;
        for u in units {
            let d = &u.document;
            let target_stays = match &d.replaces {
                Some(t) => {
                    !chosen.contains(&(d.sender.clone(), t.clone()))
                        && store
                            .document(&d.sender, t)
                            .await
                            .map_err(chain)?
                            .is_some_and(|t| t.archived.is_none())
                }
                None => false,
            };
            let referring_stays = store
                .documents_referring(&d.sender, &d.document_id)
                .await
                .map_err(chain)?
                .iter()
                .any(|r| {
                    r.archived.is_none()
                        && !chosen.contains(&(r.sender.clone(), r.document_id.clone()))
                });
            if target_stays || referring_stays {
                dropped = true;
                more += 1;
            } else {
                keep.push(u);
            }
        }
        units = keep;
        if !dropped {
            break;
        }
    }
    Ok((units, more))
}

/// Writes ZIP entries, hashing each as it goes.
struct PackageWriter {
    zip: zip::ZipWriter<std::fs::File>,
    files: Vec<FileEntry>,
}

struct Hashing<'a, W: std::io::Write> {
    inner: &'a mut W,
    ctx: digest::Context,
    n: u64,
}

impl<W: std::io::Write> std::io::Write for Hashing<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.ctx.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl PackageWriter {
    fn options(compress: bool) -> zip::write::SimpleFileOptions {
        zip::write::SimpleFileOptions::default()
            .compression_method(if compress {
                zip::CompressionMethod::Deflated
            } else {
                zip::CompressionMethod::Stored
            })
            .large_file(true)
            .unix_permissions(0o644)
    }

    fn put(&mut self, path: &str, bytes: &[u8], compress: bool) -> Result<()> {
        self.zip.start_file(path, Self::options(compress))?;
        self.zip.write_all(bytes)?;
        self.files.push(FileEntry {
            path: path.to_owned(),
            size: bytes.len() as u64,
            sha256: hex::encode(digest::digest(&digest::SHA256, bytes)),
        });
        Ok(())
    }

    /// A stored attachment, a chunk at a time (checked against its digest
    /// by the reader as it goes).
    async fn put_blob(
        &mut self,
        path: &str,
        blobs: &BlobStore,
        sha: &str,
        size: u64,
    ) -> Result<()> {
        self.zip.start_file(path, Self::options(false))?;
        let mut reader = blobs.open_blob(sha, size).await.map_err(chain)?;
        let mut w = Hashing {
            inner: &mut self.zip,
            ctx: digest::Context::new(&digest::SHA256),
            n: 0,
        };
        while let Some(chunk) = reader.next_chunk(1 << 20).await.map_err(chain)? {
            w.write_all(&chunk)?;
        }
        let (n, d) = (w.n, w.ctx.finish());
        self.files.push(FileEntry {
            path: path.to_owned(),
            size: n,
            sha256: hex::encode(d),
        });
        Ok(())
    }
}

fn message_record(
    m: &MessageRow,
    deliveries: &[lienthong_core::rows::DeliveryRow],
    events: &[lienthong_core::rows::EventRow],
    attachments: &[lienthong_core::rows::AttachmentRow],
) -> serde_json::Value {
    json!({
        "sender": m.sender,
        "message_id": m.message_id,
        "kind": m.kind.as_str(),
        "document_id": m.document_id,
        "ref_from": m.ref_from,
        "status_code": m.status_code,
        "envelope_sha256": m.envelope_sha256,
        "accepted_at": rfc3339(m.accepted_at),
        "business_type": m.business_type,
        "replaces": m.replaces,
        "priority": m.priority,
        "due_date": m.due_date,
        "code": m.code,
        "subject": m.subject,
        "attachments": attachments.iter().map(|a| json!({
            "index": a.idx,
            "name": a.name,
            "content_type": a.content_type,
            "size": a.size,
            "sha256": a.sha256,
            "path": format!("attachments/{}", a.idx),
        })).collect::<Vec<_>>(),
        "deliveries": deliveries.iter().map(|d| json!({
            "delivery_id": d.delivery_id,
            "recipient": d.recipient,
            "route": d.route.to_string(),
            "state": d.state,
            "attempts": d.attempts,
            "created_at": rfc3339(d.created_at),
            "last_delivered_at": d.last_delivered_at.map(rfc3339),
            "acked_at": d.acked_at.map(rfc3339),
        })).collect::<Vec<_>>(),
        "log": events.iter().map(|e| json!({
            "row": e.id,
            "at": rfc3339(e.at),
            "kind": e.kind,
            "sender": e.sender,
            "message_id": e.message_id,
            "recipient": e.recipient,
            "reason": e.reason,
            "detail": e.detail,
            "actor": e.actor,
            "transport": e.transport,
        })).collect::<Vec<_>>(),
    })
}

async fn create(cfg: Config, args: CreateArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let signer = manifest_sig::signer(&cfg, args.unsigned, "the archive package's manifest")?;
    let dir = args.dir.clone().unwrap_or_else(|| cfg.archive.dir.clone());
    let (store, blobs) = open_store(&cfg).await?;
    // One archive run at a time across replicas: two would write the same
    // sequence number.
    let Some(_lease) = store.try_lease("archive").await.map_err(chain)? else {
        bail!("another process is writing an archive package now; run this again when it is done");
    };
    let now = lienthong_core::now_micros();
    let (units, more) = choose(&cfg, &store, now).await?;
    if units.is_empty() {
        println!(
            "nothing to archive: no document accepted more than {} day(s) ago has ended (or is \
             older than {} days) with every copy handed over{}",
            cfg.archive.keep_days,
            cfg.archive.after_days,
            if more > 0 {
                format!("; {more} wait for the documents they refer to")
            } else {
                String::new()
            }
        );
        return Ok(ExitCode::SUCCESS);
    }
    let packages = store.archive_packages().await.map_err(chain)?;
    let previous = packages.last().map(|p| PreviousPackage {
        name: p.name.clone(),
        manifest_sha256: p.manifest_sha256.clone(),
    });
    let seq = packages.last().map_or(1, |p| p.seq + 1);
    let day = time::OffsetDateTime::now_utc();
    let name = format!(
        "archive-{seq:06}-{:04}{:02}{:02}.zip",
        day.year(),
        u8::from(day.month()),
        day.day()
    );
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(&name);
    if path.exists() {
        bail!(
            "{} already exists, but this database has not registered it: it is not this \
             database's package {seq}; move it away first",
            path.display()
        );
    }
    let partial = dir.join(format!("{name}.partial"));
    let file = std::fs::File::create(&partial)
        .with_context(|| format!("creating {}", partial.display()))?;
    let mut w = PackageWriter {
        zip: zip::ZipWriter::new(file),
        files: Vec::new(),
    };
    let mut documents = Vec::with_capacity(units.len());
    let mut messages = Vec::new();
    let (mut from, mut to) = (i64::MAX, i64::MIN);
    for u in &units {
        let doc_entry = format!("documents/{}/", u.document.id);
        let mut entries = Vec::new();
        for pk in std::iter::once(u.document.id).chain(u.statuses.iter().copied()) {
            let Some(m) = store.message_by_pk(pk).await.map_err(chain)? else {
                bail!("message row {pk} went away while the package was written; run it again");
            };
            let m = &m;
            let entry = format!("messages/{}/", m.id);
            let deliveries = store.deliveries_of(m.id).await.map_err(chain)?;
            let events = store
                .events_of(&[(m.sender.clone(), m.message_id.clone())])
                .await
                .map_err(chain)?;
            let atts = store.attachments(m.id).await.map_err(chain)?;
            w.put(
                &format!("{entry}record.json"),
                &serde_json::to_vec_pretty(&message_record(m, &deliveries, &events, &atts))?,
                true,
            )?;
            w.put(&format!("{entry}envelope.binpb"), &m.signed_envelope, false)?;
            w.put(&format!("{entry}verification.binpb"), &m.verification, true)?;
            for a in &atts {
                w.put_blob(
                    &format!("{entry}attachments/{}", a.idx),
                    &blobs,
                    &a.sha256,
                    u64::try_from(a.size).unwrap_or(0),
                )
                .await
                .with_context(|| {
                    format!(
                        "reading attachment {} of message {} from {}",
                        a.idx, m.message_id, m.sender
                    )
                })?;
            }
            from = from.min(m.accepted_at);
            to = to.max(m.accepted_at);
            messages.push(MessageEntry {
                entry: entry.clone(),
                pk: m.id,
                sender: m.sender.clone(),
                message_id: m.message_id.clone(),
                kind: m.kind.as_str().to_owned(),
                document_id: m.document_id.clone(),
                envelope_sha256: m.envelope_sha256.clone(),
                accepted_at: rfc3339(m.accepted_at),
            });
            entries.push(entry);
        }
        w.put(
            &format!("{doc_entry}document.json"),
            &serde_json::to_vec_pretty(&json!({
                "sender": u.document.sender,
                "document_id": u.document.document_id,
                "message_id": u.document.message_id,
                "type": u.doc_type,
                "archived_because": u.why,
                "recipients": u.states,
                "steps": u.steps,
                "messages": entries,
            }))?,
            true,
        )?;
        documents.push(DocumentEntry {
            entry: doc_entry,
            sender: u.document.sender.clone(),
            document_id: u.document.document_id.clone(),
            message_id: u.document.message_id.clone(),
            doc_type: u.doc_type,
            why: u.why.clone(),
            messages: entries,
        });
    }
    let manifest = Manifest {
        format: FORMAT.to_owned(),
        v: VERSION,
        gateway: cfg.gateway.id.clone(),
        seq,
        name: name.clone(),
        created_at: rfc3339(now),
        period_from: rfc3339(from),
        period_to: rfc3339(to),
        previous: previous.clone(),
        documents,
        messages,
        files: std::mem::take(&mut w.files),
    };
    let manifest_bytes = serde_json::to_vec_pretty(&manifest)?;
    let sig = manifest_sig::sign(signer.as_ref(), PAYLOAD_TYPE, &manifest_bytes)?;
    w.zip.start_file(MANIFEST, PackageWriter::options(true))?;
    w.zip.write_all(&manifest_bytes)?;
    w.zip.start_file(SIGNATURE, PackageWriter::options(true))?;
    w.zip.write_all(&sig)?;
    let file = w.zip.finish()?;
    file.sync_all()?;
    drop(file);
    // The package is read back from the file: what was kept to write it
    // (a few KiB per document) goes first.
    drop((units, manifest, manifest_bytes, sig));
    std::fs::rename(&partial, &path).with_context(|| format!("writing {}", path.display()))?;
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    // Read back before it counts: a package is registered only once it
    // holds what its manifest says.
    let checked = open_package(&cfg, &path, args.unsigned)?;
    let bytes = std::fs::metadata(&path)?.len();
    let marks: Vec<(i64, String)> = checked
        .manifest
        .messages
        .iter()
        .map(|m| (m.pk, m.entry.clone()))
        .collect();
    store
        .register_archive_package(
            &PackageRow {
                seq,
                name: name.clone(),
                created_at: now,
                period_from: from,
                period_to: to,
                documents: checked.manifest.documents.len() as i64,
                messages: checked.manifest.messages.len() as i64,
                bytes: i64::try_from(bytes).unwrap_or(i64::MAX),
                manifest_sha256: checked.manifest_sha256.clone(),
                previous_sha256: previous.map(|p| p.manifest_sha256),
                purged_at: None,
            },
            &marks,
        )
        .await
        .map_err(chain)?;
    println!(
        "wrote package {seq} {}: {} document(s), {} message(s), {} file(s), {bytes} bytes, in \
         {:.1} s",
        path.display(),
        checked.manifest.documents.len(),
        checked.manifest.messages.len(),
        checked.manifest.files.len(),
        started.elapsed().as_secs_f64()
    );
    println!("  manifest SHA-256 {}", checked.manifest_sha256);
    if more > 0 {
        println!("  {more} more document(s) wait for a later package");
    }
    println!(
        "  its messages are still in the database: copy the package to the archive's storage, \
         then `lienthong archive purge {}`",
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// A package read and checked: its signature, every file against the
/// manifest, no file the manifest does not list.
struct Checked {
    manifest: Manifest,
    manifest_sha256: String,
    signed: bool,
}

fn open_package(cfg: &Config, path: &Path, unsigned_ok: bool) -> Result<Checked> {
    let shown = path.display();
    let file = std::fs::File::open(path).with_context(|| format!("opening {shown}"))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| {
        anyhow::anyhow!("{shown} is not an archive package: it is not a ZIP file ({e})")
    })?;
    let mut read_small = |name: &str| -> Result<Vec<u8>> {
        let mut f = zip
            .by_name(name)
            .map_err(|_| anyhow::anyhow!("{shown} is not an archive package: it has no {name}"))?;
        let mut out = Vec::new();
        (&mut f)
            .take(64 << 20)
            .read_to_end(&mut out)
            .with_context(|| format!("{shown}: reading {name}"))?;
        Ok(out)
    };
    let manifest_bytes = read_small(MANIFEST)?;
    let sig = read_small(SIGNATURE)?;
    let manifest: Manifest = serde_json::from_slice(&manifest_bytes)
        .with_context(|| format!("{shown}: {MANIFEST} cannot be read"))?;
    if manifest.format != FORMAT || manifest.v != VERSION {
        bail!(
            "{shown} is not an archive package this release reads ({} version {})",
            manifest.format,
            manifest.v
        );
    }
    let what = format!("the manifest of {shown}");
    let signed =
        manifest_sig::verify(cfg, PAYLOAD_TYPE, &what, &manifest_bytes, &sig, unsigned_ok)?;
    let listed: HashMap<&str, &FileEntry> = manifest
        .files
        .iter()
        .map(|f| (f.path.as_str(), f))
        .collect();
    for i in 0..zip.len() {
        let mut f = zip
            .by_index(i)
            .with_context(|| format!("{shown}: reading entry {i}"))?;
        let name = f
            .name()
            .map(|n| n.into_owned())
            .with_context(|| format!("{shown}: entry {i} has a name that cannot be read"))?;
        if name == MANIFEST || name == SIGNATURE || f.is_dir() {
            continue;
        }
        let Some(want) = listed.get(name.as_str()) else {
            bail!("{shown}: {name} is in the package but not in its manifest: it was added");
        };
        let mut ctx = digest::Context::new(&digest::SHA256);
        let mut buf = vec![0u8; 1 << 16];
        let mut n = 0u64;
        loop {
            let got = match f.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => k,
                // The ZIP's own CRC fails on a changed byte: name the file.
                Err(e) => bail!("{shown}: {name} does not read back ({e}): it was changed"),
            };
            ctx.update(&buf[..got]);
            n += got as u64;
        }
        let got = hex::encode(ctx.finish());
        if n != want.size || got != want.sha256 {
            bail!(
                "{shown}: {name} does not match its manifest ({n} bytes, SHA-256 {got}; the \
                 manifest says {} bytes, {})",
                want.size,
                want.sha256
            );
        }
    }
    let present: BTreeSet<String> = zip
        .file_names()
        .filter_map(|n| n.ok().map(|n| n.into_owned()))
        .collect();
    if let Some(missing) = manifest.files.iter().find(|f| !present.contains(&f.path)) {
        bail!(
            "{shown}: {} is in the manifest but not in the package",
            missing.path
        );
    }
    Ok(Checked {
        manifest_sha256: hex::encode(digest::digest(&digest::SHA256, &manifest_bytes)),
        manifest,
        signed,
    })
}

fn verify(cfg: &Config, args: VerifyArgs) -> Result<ExitCode> {
    let mut ok = true;
    let mut checked = Vec::new();
    for p in &args.packages {
        match open_package(cfg, p, args.unsigned) {
            Ok(c) => {
                println!(
                    "{}: package {} of gateway {}, {} document(s), {} message(s), {} file(s) \
                     hold{}",
                    p.display(),
                    c.manifest.seq,
                    c.manifest.gateway,
                    c.manifest.documents.len(),
                    c.manifest.messages.len(),
                    c.manifest.files.len(),
                    if c.signed {
                        ", signature valid"
                    } else {
                        " (NOT signed)"
                    }
                );
                checked.push((p.clone(), c));
            }
            Err(e) => {
                ok = false;
                println!("{}: does NOT hold: {e:#}", p.display());
            }
        }
    }
    checked.sort_by_key(|(_, c)| c.manifest.seq);
    for pair in checked.windows(2) {
        let ((pa, a), (pb, b)) = (&pair[0], &pair[1]);
        let link = b.manifest.previous.as_ref();
        if b.manifest.seq == a.manifest.seq {
            ok = false;
            println!(
                "{} and {} both say they are package {}",
                pa.display(),
                pb.display(),
                a.manifest.seq
            );
        } else if b.manifest.seq != a.manifest.seq + 1 {
            ok = false;
            println!(
                "the chain is broken: package {} ({}) follows package {} ({}); package(s) {} to {} \
                 are missing",
                b.manifest.seq,
                pb.display(),
                a.manifest.seq,
                pa.display(),
                a.manifest.seq + 1,
                b.manifest.seq - 1
            );
        } else if link.map(|l| l.manifest_sha256.as_str()) != Some(a.manifest_sha256.as_str()) {
            ok = false;
            println!(
                "the chain is broken: package {} ({}) names a previous manifest {} but package {} \
                 ({}) has {}: one of them is not the package the other was chained to",
                b.manifest.seq,
                pb.display(),
                link.map_or("(none)", |l| l.manifest_sha256.as_str()),
                a.manifest.seq,
                pa.display(),
                a.manifest_sha256
            );
        }
    }
    if let Some((p, first)) = checked.first()
        && first.manifest.seq > 1
        && ok
    {
        println!(
            "the chain is checked from package {} ({}) on; give the packages before it to check \
             the chain from the start",
            first.manifest.seq,
            p.display()
        );
    }
    println!(
        "{}",
        if ok {
            "every package given holds"
        } else {
            "NOT every package holds"
        }
    );
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn safe_name(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let trimmed = cleaned.trim_start_matches('.');
    if trimmed.is_empty() {
        "_".to_owned()
    } else {
        trimmed.chars().take(120).collect()
    }
}

fn extract(cfg: &Config, args: ExtractArgs) -> Result<ExitCode> {
    let c = open_package(cfg, &args.package, args.unsigned)?;
    let found: Vec<&MessageEntry> = c
        .manifest
        .messages
        .iter()
        .filter(|m| m.message_id == args.message_id)
        .filter(|m| args.from.as_ref().is_none_or(|f| &m.sender == f))
        .collect();
    let m = match found.as_slice() {
        [m] => *m,
        [] => {
            eprintln!(
                "{} holds no message {}{}",
                args.package.display(),
                args.message_id,
                args.from
                    .as_ref()
                    .map(|f| format!(" from {f}"))
                    .unwrap_or_default()
            );
            return Ok(ExitCode::from(1));
        }
        _ => {
            eprintln!(
                "{} holds message {} from several senders: name one with --from",
                args.package.display(),
                args.message_id
            );
            return Ok(ExitCode::from(1));
        }
    };
    if args.out.exists()
        && std::fs::read_dir(&args.out)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        bail!(
            "{} exists and is not empty: give a new folder",
            args.out.display()
        );
    }
    std::fs::create_dir_all(args.out.join("attachments"))
        .with_context(|| format!("creating {}", args.out.display()))?;
    let file = std::fs::File::open(&args.package)?;
    let mut zip = zip::ZipArchive::new(file)?;
    let record: serde_json::Value = {
        let mut f = zip.by_name(&format!("{}record.json", m.entry))?;
        let mut b = Vec::new();
        f.read_to_end(&mut b)?;
        std::fs::write(args.out.join("record.json"), &b)?;
        serde_json::from_slice(&b)?
    };
    for (inside, outside) in [
        ("envelope.binpb", PathBuf::from("envelope.binpb")),
        ("verification.binpb", PathBuf::from("verification.binpb")),
    ] {
        let mut f = zip.by_name(&format!("{}{inside}", m.entry))?;
        let mut out = std::fs::File::create(args.out.join(&outside))?;
        std::io::copy(&mut f, &mut out)?;
        out.sync_all()?;
    }
    let mut names = Vec::new();
    if let Some(atts) = record["attachments"].as_array() {
        for a in atts {
            let idx = a["index"].as_i64().unwrap_or(-1);
            let name = format!(
                "{idx}-{}",
                safe_name(a["name"].as_str().unwrap_or("attachment"))
            );
            let mut f = zip.by_name(&format!("{}attachments/{idx}", m.entry))?;
            let mut out = std::fs::File::create(args.out.join("attachments").join(&name))?;
            std::io::copy(&mut f, &mut out)?;
            out.sync_all()?;
            names.push(name);
        }
    }
    let envelope = std::fs::read(args.out.join("envelope.binpb"))?;
    let sha = hex::encode(digest::digest(&digest::SHA256, &envelope));
    println!(
        "gave back message {} from {} ({}, accepted {}) into {}",
        m.message_id,
        m.sender,
        m.kind,
        m.accepted_at,
        args.out.display()
    );
    println!(
        "  envelope.binpb SHA-256 {sha} ({})",
        if sha == m.envelope_sha256 {
            "the digest it was accepted with"
        } else {
            "NOT the digest it was accepted with"
        }
    );
    for n in names {
        println!("  attachments/{n}");
    }
    Ok(if sha == m.envelope_sha256 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn purge(cfg: Config, args: PurgeArgs) -> Result<ExitCode> {
    let (store, blobs) = open_store(&cfg).await?;
    let actor = cli_user_name();
    for path in &args.packages {
        let c = open_package(&cfg, path, args.unsigned)
            .with_context(|| format!("{} was not purged", path.display()))?;
        let Some(row) = store
            .archive_package(&c.manifest.name)
            .await
            .map_err(chain)?
        else {
            bail!(
                "{} (package {} of gateway {}) was not written by this database: its documents are \
                 not archived here, so nothing was purged",
                path.display(),
                c.manifest.seq,
                c.manifest.gateway
            );
        };
        if row.manifest_sha256 != c.manifest_sha256 || row.seq != c.manifest.seq {
            bail!(
                "{} is not the package {} this database registered (its manifest SHA-256 is {}, \
                 the register says {}); nothing was purged",
                path.display(),
                row.name,
                c.manifest_sha256,
                row.manifest_sha256
            );
        }
        let messages: Vec<PurgedMessage> = c
            .manifest
            .messages
            .iter()
            .map(|m| PurgedMessage {
                pk: m.pk,
                sender: m.sender.clone(),
                message_id: m.message_id.clone(),
                envelope_sha256: m.envelope_sha256.clone(),
                entry: m.entry.clone(),
            })
            .collect();
        let done = store
            .purge_archived(&row, &messages, &actor)
            .await
            .map_err(chain)
            .with_context(|| format!("{} was not purged", path.display()))?;
        // The package's attachments (their bytes' SHA-256 is the blob's
        // name) that no message in the database names any more: those of
        // this purge, and those an earlier purge of it had to keep.
        let digests: BTreeSet<&str> = c
            .manifest
            .files
            .iter()
            .filter(|f| f.path.contains("/attachments/"))
            .map(|f| f.sha256.as_str())
            .collect();
        let mut removed = 0u64;
        let mut kept = 0u64;
        for sha in digests {
            if store.blob_referenced(sha).await.map_err(chain)? {
                continue;
            }
            if blobs
                .remove_unused(sha, BLOB_QUIET_MICROS)
                .await
                .map_err(chain)?
            {
                removed += 1;
            } else if blobs.blob_present(sha).await.map_err(chain)? {
                kept += 1;
            }
        }
        println!(
            "purged package {} ({}): {} message(s) are tombstones now, {} attachment row(s) and \
             {removed} stored attachment(s) removed{}",
            row.seq,
            path.display(),
            done.messages,
            done.attachment_rows,
            if kept > 0 {
                format!(
                    "; {kept} attachment(s) kept: a submission used the same bytes in the last \
                     ten minutes (purge this package again later to remove them if no message \
                     names them then)"
                )
            } else {
                String::new()
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(cfg: Config) -> Result<ExitCode> {
    let (store, _) = open_store(&cfg).await?;
    let packages = store.archive_packages().await.map_err(chain)?;
    if packages.is_empty() {
        println!("no archive package was written from this database");
    }
    for p in packages {
        println!(
            "{:>6}  {}  {} document(s), {} message(s), {} bytes, {} to {}, {}",
            p.seq,
            p.name,
            p.documents,
            p.messages,
            p.bytes,
            rfc3339(p.period_from),
            rfc3339(p.period_to),
            match p.purged_at {
                Some(t) => format!("purged {}", rfc3339(t)),
                None => "not purged".to_owned(),
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

//! `lienthong backup DIR` and `lienthong restore DIR`: an online,
//! consistent copy of the database and the attachments, with a signed
//! manifest of every file, and its checked way back.
//!
//! A backup directory holds:
//!
//! ```text
//! database.sqlite | database.pgdump   VACUUM INTO / pg_dump --format=custom
//!   (+ `.sealed`)                     … sealed with the storage key when encrypted
//! blobs/<aa>/<sha256>                 each attachment as stored (sealed if encrypted)
//! keycheck/<key id>                   the storage keys' check files (not the keys)
//! manifest.json                       every file above: size, SHA-256; the chains' heads
//! manifest.sig                        the receipt key's signature over manifest.json
//! ```
//!
//! `manifest.json` is written last, by rename: a directory without it is a
//! backup that did not finish. The signature is DSSE's pre-authentication
//! encoding of the manifest's exact bytes under [`MANIFEST_PAYLOAD_TYPE`],
//! made like the transfer log's checkpoints (the key's SHA-256 instead of
//! its chain) and checked against the pinned receipt certificates.
//!
//! `backup --file PATH` writes the same files into one ZIP file (the
//! manifest last); `restore` takes either. Under `serve`, [`run_schedule`]
//! takes the daily backup on the replica leading the job `backup`.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use lienthong_core::backup::{self as db_backup, ChainHead};
use serde::{Deserialize, Serialize};

use crate::config::{Config, StorageBackend};

/// The DSSE payload type a manifest is signed under: no receipt or
/// checkpoint signature can pass for a manifest's.
pub const MANIFEST_PAYLOAD_TYPE: &str = "application/vnd.lienthong.backup-manifest.v1+json";

/// The version of the manifest's format this release writes and reads.
const MANIFEST_VERSION: u32 = 1;

const MANIFEST: &str = "manifest.json";
const SIGNATURE: &str = "manifest.sig";
const SQLITE_FILE: &str = "database.sqlite";
const PG_FILE: &str = "database.pgdump";
/// The largest `manifest.json` (and `manifest.sig`) read from a ZIP file.
const MAX_MANIFEST_BYTES: u64 = 256 << 20;
/// The suffix of a database file sealed with the storage key.
const SEALED: &str = ".sealed";
/// The reason of a failed backup's line in the transfer log.
pub const BACKUP_FAILED: &str = "BACKUP_FAILED";

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// Where to write the backup: a directory that does not exist or is
    /// empty.
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    pub dir: Option<PathBuf>,
    /// Write the backup as one ZIP file instead of a directory (the same
    /// files; it must not exist). `restore` takes it as it takes a
    /// directory.
    #[arg(long, value_name = "PATH.zip")]
    pub file: Option<PathBuf>,
    /// A previous backup of this gateway: attachments it holds unchanged
    /// are hard-linked from it (copied when it is on another file system)
    /// instead of copied again.
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// Write the manifest without a signature when the gateway has no
    /// receipt key (receipts.key); `restore` then needs --unsigned too.
    #[arg(long)]
    pub unsigned: bool,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// A directory written by `lienthong backup`, or a ZIP file written by
    /// `lienthong backup --file`.
    pub dir: PathBuf,
    /// Accept a backup whose manifest is not signed (made with
    /// `backup --unsigned`): its files are then checked against a manifest
    /// anyone could have rewritten.
    #[arg(long)]
    pub unsigned: bool,
}

/// `manifest.json`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    v: u32,
    gateway: String,
    /// RFC 3339, UTC: when the database's copy was taken.
    created_at: String,
    /// `sqlite` or `postgres`.
    database: String,
    /// `filesystem` or `database` (storage.backend).
    storage: String,
    /// Whether the attachment store had storage keys: its blobs are then
    /// sealed in the backup too, and the keys are not in it.
    encrypted: bool,
    /// The id of the storage key the database file is sealed with (then
    /// named `….sealed`); absent when it is not sealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    database_key: Option<String>,
    /// Every chain of the transfer log as the copied database holds it.
    heads: Vec<ChainHead>,
    files: Vec<FileEntry>,
}

use crate::manifest_sig::FileEntry;

fn database_kind(url: &str) -> &'static str {
    if url.starts_with("sqlite:") {
        "sqlite"
    } else {
        "postgres"
    }
}

fn storage_kind(cfg: &Config) -> &'static str {
    match cfg.storage.backend {
        StorageBackend::Filesystem => "filesystem",
        StorageBackend::Database => "database",
    }
}

fn err(e: lienthong_core::error::Error) -> anyhow::Error {
    anyhow::anyhow!("{}", e.chain())
}

/// Size and SHA-256 (hex) of a file, read in chunks.
fn digest_file(path: &Path) -> std::io::Result<(u64, String)> {
    let mut f = std::fs::File::open(path)?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hex::encode(ctx.finish().as_ref())))
}

/// Copies `src` to `dest` through a temporary name beside it, fsynced, and
/// returns the copy's size and SHA-256.
fn copy_file(src: &Path, dest: &Path) -> std::io::Result<(u64, String)> {
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = dest.with_extension("part");
    let mut input = std::fs::File::open(src)?;
    let mut out = std::fs::File::create(&tmp)?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        size += n as u64;
    }
    out.sync_all()?;
    drop(out);
    std::fs::rename(&tmp, dest)?;
    Ok((size, hex::encode(ctx.finish().as_ref())))
}

fn blob_rel(sha256: &str) -> String {
    format!("blobs/{}/{sha256}", sha256.get(..2).unwrap_or("xx"))
}

/// A path of the manifest, refused unless it stays inside the backup.
fn inside(dir: &Path, rel: &str) -> Result<PathBuf> {
    let ok = !rel.is_empty()
        && !rel.starts_with('/')
        && rel
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..");
    if !ok {
        bail!("the manifest names {rel:?}, which is not a file inside the backup");
    }
    Ok(dir.join(rel))
}

fn is_empty_dir(dir: &Path) -> Result<bool> {
    Ok(std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .next()
        .is_none())
}

/// What a finished backup wrote.
#[derive(Debug, Clone)]
pub struct Written {
    pub files: usize,
    pub bytes: u64,
    pub blobs: usize,
    pub copied: u64,
    pub copied_bytes: u64,
    pub linked: u64,
    pub heads: Vec<ChainHead>,
    pub encrypted: bool,
    pub signed: bool,
    /// The key the database file is sealed with.
    pub database_key: Option<String>,
    description: String,
}

/// Removes a path when dropped, unless disarmed: what a backup or restore
/// that failed half-way leaves behind.
struct Cleanup(Option<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
    }
}

pub async fn backup(cfg: Config, args: BackupArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let (dir, zip_file, _cleanup) = match (&args.dir, &args.file) {
        (Some(d), None) => (d.clone(), None, Cleanup(None)),
        (None, Some(f)) => {
            if f.exists() {
                bail!(
                    "{} exists: give a new file for each backup (the previous one stays as it is)",
                    f.display()
                );
            }
            // The files are gathered beside the ZIP file, then packed.
            let mut parts = f.clone().into_os_string();
            parts.push(".parts");
            let parts = PathBuf::from(parts);
            if parts.exists() {
                bail!(
                    "{} exists, left by an earlier `backup --file` that did not finish: remove it",
                    parts.display()
                );
            }
            (parts.clone(), Some(f.clone()), Cleanup(Some(parts)))
        }
        _ => bail!("give either a directory or --file PATH.zip, not both"),
    };
    let outcome = write_backup(&cfg, &dir, args.base.as_deref(), args.unsigned, true).await;
    let outcome = match (outcome, &zip_file) {
        (Ok(w), Some(f)) => zip_backup(&dir, f).map(|()| w),
        (other, _) => other,
    };
    let place = zip_file.as_ref().unwrap_or(&dir);
    // The transfer log says a backup was made (or failed), whoever made it.
    log_cli_outcome(&cfg, place, &outcome).await;
    let w = outcome?;
    println!(
        "backed up {} ({}) into {}: {} file(s), {} bytes, in {:.1} s",
        w.description,
        lienthong_core::store::redact(&cfg.database.url),
        place.display(),
        w.files,
        w.bytes,
        started.elapsed().as_secs_f64()
    );
    println!(
        "attachments: {} in the backup, {} copied ({} bytes), {} unchanged from the base",
        w.blobs, w.copied, w.copied_bytes, w.linked
    );
    for h in &w.heads {
        println!("  chain {}: head at event {} ({})", h.chain, h.seq, h.hash);
    }
    if let Some(id) = &w.database_key {
        println!("the database file is sealed with the storage key {id}");
    }
    if w.encrypted {
        println!(
            "the attachments are sealed with the storage keys, which are NOT in the backup: keep \
             storage.encryption_key_file safe apart from it"
        );
    }
    if !w.signed {
        println!("the manifest is NOT signed (--unsigned)");
    }
    Ok(ExitCode::SUCCESS)
}

/// The transfer log's line for a backup made with the command line; a
/// database that takes no writes only costs a warning.
async fn log_cli_outcome(cfg: &Config, place: &Path, outcome: &Result<Written>) {
    let store = match lienthong_core::store::Store::open(
        &cfg.database.url,
        match cfg.writer() {
            Ok(w) => w,
            Err(_) => return,
        },
        lienthong_core::store::Migrations::Require,
    )
    .await
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "lienthong: the backup's line was not written in the transfer log: {}",
                e.chain()
            );
            return;
        }
    };
    let actor = format!("cli:{}", crate::cli::cli_user_name());
    if let Err(e) = log_outcome(&store, place, outcome, &actor, "cli").await {
        eprintln!("lienthong: {e:#}");
    }
}

/// Writes the backup's line in the transfer log: `detail` is a JSON object
/// (see `EventKind::Backup`), `reason` [`BACKUP_FAILED`] when it failed.
pub async fn log_outcome(
    store: &lienthong_core::store::Store,
    place: &Path,
    outcome: &Result<Written>,
    actor: &str,
    transport: &str,
) -> Result<()> {
    let dir = std::path::absolute(place)
        .unwrap_or_else(|_| place.to_path_buf())
        .display()
        .to_string();
    let (reason, detail) = match outcome {
        Ok(w) => (
            None,
            serde_json::json!({"dir": dir, "bytes": w.bytes, "files": w.files, "blobs": w.blobs}),
        ),
        Err(e) => (
            Some(BACKUP_FAILED.to_owned()),
            serde_json::json!({"dir": dir, "error": format!("{e:#}")}),
        ),
    };
    store
        .log(lienthong_core::store::NewEvent {
            kind: lienthong_core::store::EventKind::Backup,
            sender: String::new(),
            message_id: String::new(),
            recipient: None,
            reason,
            detail: detail.to_string(),
            actor: Some(actor.to_owned()),
            transport: transport.to_owned(),
        })
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.chain()))
        .context("writing the backup's line in the transfer log")
}

/// Writes a backup into `dir` (which must not exist, or be empty), the
/// attachments unchanged since `base` hard-linked from it. On failure the
/// directory is removed again (it never held a manifest).
pub async fn write_backup(
    cfg: &Config,
    dir: &Path,
    base: Option<&Path>,
    unsigned: bool,
    show_progress: bool,
) -> Result<Written> {
    if dir.exists() && !is_empty_dir(dir)? {
        bail!(
            "{} exists and is not empty: give a new directory for each backup (the previous one \
             can be --base)",
            dir.display()
        );
    }
    let signer = crate::manifest_sig::signer(cfg, unsigned, "the backup's manifest")?;
    let base = match base {
        Some(b) => Some(read_base(b)?),
        None => None,
    };
    let keys = crate::storage::encryption_keys(cfg)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cleanup = Cleanup(Some(dir.to_path_buf()));

    let url = cfg.database.url.clone();
    let created_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let (db_file, facts) = if url.starts_with("sqlite:") {
        match &keys {
            None => {
                let dest = dir.join(SQLITE_FILE);
                db_backup::sqlite_vacuum_into(&url, &dest)
                    .await
                    .map_err(err)?;
                // The heads and the blob list come from the copy itself:
                // exactly what a restore will hold.
                let facts = db_backup::read_facts(&db_backup::sqlite_read_only_url(&dest))
                    .await
                    .map_err(err)
                    .context("reading the copied database")?;
                (SQLITE_FILE.to_owned(), facts)
            }
            Some(keys) => {
                // The plain copy stays beside the live database (as
                // exposed as it), and only its sealed form reaches the
                // backup.
                let live = db_backup::sqlite_path(&url)
                    .context("database.url names no SQLite file to back up")?;
                let mut plain = live.clone().into_os_string();
                plain.push(format!(".backup-{}.tmp", std::process::id()));
                let plain = PathBuf::from(plain);
                let _ = std::fs::remove_file(&plain);
                let _plain_guard = Cleanup(Some(plain.clone()));
                db_backup::sqlite_vacuum_into(&url, &plain)
                    .await
                    .map_err(err)?;
                let facts = db_backup::read_facts(&db_backup::sqlite_read_only_url(&plain))
                    .await
                    .map_err(err)
                    .context("reading the copied database")?;
                let name = format!("{SQLITE_FILE}{SEALED}");
                seal_into(keys, &mut std::fs::File::open(&plain)?, &dir.join(&name))?;
                (name, facts)
            }
        }
    } else {
        check_pg_dump_version()?;
        let name = match &keys {
            None => PG_FILE.to_owned(),
            Some(_) => format!("{PG_FILE}{SEALED}"),
        };
        let dest = dir.join(&name);
        let dump_url = url.clone();
        let dump_keys = keys.clone();
        let ((), facts) = db_backup::with_pg_snapshot(&url, |snapshot| async move {
            let mut cmd = pg_tool("pg_dump", &dump_url);
            cmd.arg("--format=custom")
                .arg(format!("--snapshot={snapshot}"));
            let done = match &dump_keys {
                None => run_pg_tool(cmd.arg("--file").arg(&dest), "pg_dump"),
                // The dump is sealed as it streams out: no plain copy on disk.
                Some(keys) => pg_dump_sealed(&mut cmd, keys, &dest),
            };
            done.map_err(|e| {
                lienthong_core::error::Error::new(
                    lienthong_core::error::Reason::Unavailable,
                    format!("{e:#}"),
                )
            })
        })
        .await
        .map_err(err)?;
        (name, facts)
    };
    let database_key = keys.as_ref().map(|k| k.current_id().to_owned());

    let mut files = Vec::new();
    let (size, sha256) =
        digest_file(&dir.join(&db_file)).with_context(|| format!("reading {db_file}"))?;
    files.push(FileEntry {
        path: db_file.clone(),
        size,
        sha256,
    });
    let mut copied = 0u64;
    let mut linked = 0u64;
    let mut copied_bytes = 0u64;
    if cfg.storage.backend == StorageBackend::Filesystem {
        let root = &cfg.storage.path;
        let bar = if show_progress {
            crate::cli::progress_bar(facts.blobs.len() as u64, "backing up attachments")
        } else {
            indicatif::ProgressBar::hidden()
        };
        for sha in &facts.blobs {
            bar.inc(1);
            let rel = blob_rel(sha);
            let src = root.join(&rel);
            let dest = dir.join(&rel);
            let (size, digest) = digest_file(&src).with_context(|| {
                format!(
                    "the attachment {sha}, named by the database, cannot be read at {}",
                    src.display()
                )
            })?;
            let from_base = base.as_ref().and_then(|(bdir, entries)| {
                entries
                    .get(&rel)
                    .filter(|e| e.size == size && e.sha256 == digest)
                    .map(|_| bdir.join(&rel))
            });
            let reused = match from_base {
                Some(b) => link_or_copy(&b, &dest, size, &digest)?,
                None => false,
            };
            if reused {
                linked += 1;
            } else {
                let (s, d) = copy_file(&src, &dest)
                    .with_context(|| format!("copying {} into the backup", src.display()))?;
                if s != size || d != digest {
                    bail!(
                        "the attachment file {} changed while it was copied; blobs are never \
                         rewritten but by `storage rotate-key`: run the backup again when that is \
                         done",
                        src.display()
                    );
                }
                copied += 1;
                copied_bytes += size;
            }
            files.push(FileEntry {
                path: rel,
                size,
                sha256: digest,
            });
        }
        bar.finish_and_clear();
        let keychecks = root.join("keycheck");
        if keychecks.is_dir() {
            let mut names: Vec<_> = std::fs::read_dir(&keychecks)?
                .filter_map(|e| e.ok())
                .filter(|e| e.path().is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            for name in names {
                let rel = format!("keycheck/{name}");
                let (size, sha256) = copy_file(&keychecks.join(&name), &dir.join(&rel))?;
                files.push(FileEntry {
                    path: rel,
                    size,
                    sha256,
                });
            }
        }
    }

    let encrypted = keys.is_some();
    let manifest = Manifest {
        v: MANIFEST_VERSION,
        gateway: cfg.gateway.id.clone(),
        created_at,
        database: database_kind(&cfg.database.url).to_owned(),
        storage: storage_kind(cfg).to_owned(),
        encrypted,
        database_key: database_key.clone(),
        heads: facts.heads.clone(),
        files,
    };
    let bytes = serde_json::to_vec_pretty(&manifest)?;
    let sig = crate::manifest_sig::sign(signer.as_ref(), MANIFEST_PAYLOAD_TYPE, &bytes)?;
    write_atomically(&dir.join(SIGNATURE), &sig)?;
    // Last: a directory with a manifest is a finished backup.
    write_atomically(&dir.join(MANIFEST), &bytes)?;
    cleanup.0 = None;

    Ok(Written {
        files: manifest.files.len(),
        bytes: manifest.files.iter().map(|f| f.size).sum(),
        blobs: facts.blobs.len(),
        copied,
        copied_bytes,
        linked,
        heads: facts.heads,
        encrypted,
        signed: signer.is_some(),
        database_key,
        description: db_backup_name(&manifest),
    })
}

/// Seals what `input` gives into `dest` with the current storage key,
/// through a temporary name, fsynced.
fn seal_into(
    keys: &lienthong_core::blobs::EncryptionKeys,
    input: &mut impl std::io::Read,
    dest: &Path,
) -> Result<()> {
    let tmp = dest.with_extension("part");
    let file = std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    let mut out = std::io::BufWriter::with_capacity(256 * 1024, file);
    keys.seal_stream(input, &mut out)
        .map_err(err)
        .with_context(|| format!("sealing {}", dest.display()))?;
    let file = out
        .into_inner()
        .map_err(|e| anyhow::anyhow!("writing {}: {}", tmp.display(), e.error()))?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, dest).with_context(|| format!("writing {}", dest.display()))?;
    Ok(())
}

/// What a child writes on stderr, read on a thread of its own so that it
/// never blocks on a full pipe while its other end is streamed.
fn collect_stderr(child: &mut std::process::Child) -> std::thread::JoinHandle<String> {
    let stderr = child.stderr.take();
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut e) = stderr {
            let _ = e.read_to_string(&mut text);
        }
        text
    })
}

/// Runs `pg_dump` (set up but for its output) with its output sealed into
/// `dest` as it streams.
fn pg_dump_sealed(
    cmd: &mut std::process::Command,
    keys: &lienthong_core::blobs::EncryptionKeys,
    dest: &Path,
) -> Result<()> {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("cannot run pg_dump: is the PostgreSQL client installed?")?;
    let errors = collect_stderr(&mut child);
    let sealed = match child.stdout.take() {
        Some(mut out) => seal_into(keys, &mut out, dest),
        None => Err(anyhow::anyhow!("pg_dump gave no output")),
    };
    let status = child.wait().context("waiting for pg_dump")?;
    let stderr = errors.join().unwrap_or_default();
    if !status.success() {
        let _ = std::fs::remove_file(dest);
        let hint = if stderr.contains("version mismatch") {
            ": the PostgreSQL client tools must be of at least the server's major version"
        } else {
            ""
        };
        bail!("pg_dump failed ({status}): {}{hint}", stderr.trim());
    }
    sealed
}

/// Packs the finished backup in `dir` into the ZIP file `dest` (through a
/// temporary name), its manifest last: attachments and sealed files
/// stored as they are, the rest deflated; one file's buffer in memory.
fn zip_backup(dir: &Path, dest: &Path) -> Result<()> {
    use zip::write::SimpleFileOptions;
    let bytes = std::fs::read(dir.join(MANIFEST))?;
    let manifest: Manifest = serde_json::from_slice(&bytes)?;
    let mut names: Vec<String> = manifest.files.iter().map(|f| f.path.clone()).collect();
    names.push(SIGNATURE.to_owned());
    names.push(MANIFEST.to_owned());
    let mut tmp = dest.to_path_buf().into_os_string();
    tmp.push(".part");
    let tmp = PathBuf::from(tmp);
    let mut guard = Cleanup(Some(tmp.clone()));
    let file = std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    let mut zip = zip::ZipWriter::new(std::io::BufWriter::with_capacity(256 * 1024, file));
    for name in &names {
        let path = inside(dir, name)?;
        let size = std::fs::metadata(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .len();
        let compress = name == MANIFEST || name == SIGNATURE || name == SQLITE_FILE;
        let options = SimpleFileOptions::default()
            .compression_method(if compress {
                zip::CompressionMethod::Deflated
            } else {
                zip::CompressionMethod::Stored
            })
            .large_file(size >= u64::from(u32::MAX))
            .unix_permissions(0o600);
        zip.start_file(name.as_str(), options)
            .with_context(|| format!("writing {} into {}", name, tmp.display()))?;
        let mut input =
            std::fs::File::open(&path).with_context(|| format!("reading {}", path.display()))?;
        std::io::copy(&mut input, &mut zip)
            .with_context(|| format!("writing {} into {}", name, tmp.display()))?;
    }
    let out = zip
        .finish()
        .with_context(|| format!("writing {}", tmp.display()))?;
    let file = out
        .into_inner()
        .map_err(|e| anyhow::anyhow!("writing {}: {}", tmp.display(), e.error()))?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, dest).with_context(|| format!("writing {}", dest.display()))?;
    guard.0 = None;
    Ok(())
}

fn db_backup_name(m: &Manifest) -> String {
    format!("the {} database of gateway {}", m.database, m.gateway)
}

/// A previous backup's directory and its files by path, its manifest read
/// as written (its signature is checked by its own restore, not here: a
/// blob taken from it must still match its digest, which is checked).
fn read_base(dir: &Path) -> Result<(PathBuf, BTreeMap<String, FileEntry>)> {
    let text = std::fs::read(dir.join(MANIFEST)).with_context(|| {
        format!(
            "--base {}: no {MANIFEST}, so not a finished backup",
            dir.display()
        )
    })?;
    let m: Manifest = serde_json::from_slice(&text)
        .with_context(|| format!("--base {}: {MANIFEST} cannot be read", dir.display()))?;
    Ok((
        dir.to_path_buf(),
        m.files.into_iter().map(|f| (f.path.clone(), f)).collect(),
    ))
}

/// Takes a blob from the base backup: a hard link when both are on one
/// file system, else a copy; `false` when the base's file is not what its
/// manifest says (then the blob is copied from the store).
fn link_or_copy(base_file: &Path, dest: &Path, size: u64, sha256: &str) -> Result<bool> {
    match digest_file(base_file) {
        Ok((s, d)) if s == size && d == sha256 => {}
        _ => return Ok(false),
    }
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if std::fs::hard_link(base_file, dest).is_ok() {
        return Ok(true);
    }
    let (s, d) = copy_file(base_file, dest)?;
    Ok(s == size && d == sha256)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// `program` (pg_dump, pg_restore) for the database of `url`: the URL
/// without its password on the command line, which every local user can
/// read in the process list, and the password in the tool's environment
/// (`PGPASSWORD`), which only the same user can.
fn pg_tool(program: &str, url: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new(program);
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let password = parsed.password().unwrap_or_default();
            let password = url::form_urlencoded::parse(format!("p={password}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default();
            cmd.env("PGPASSWORD", password);
            let _ = parsed.set_password(None);
            cmd.arg("--dbname").arg(parsed.as_str());
        }
        _ => {
            cmd.arg("--dbname").arg(url);
        }
    }
    cmd
}

/// Runs pg_dump or pg_restore, passing on its error output when it fails.
fn run_pg_tool(cmd: &mut std::process::Command, what: &str) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {what}: is the PostgreSQL client installed?"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let hint = if stderr.contains("version mismatch") {
            ": the PostgreSQL client tools must be of at least the server's major version"
        } else {
            ""
        };
        bail!("{what} failed ({}): {}{hint}", out.status, stderr.trim());
    }
    Ok(())
}

/// Whether pg_dump runs at all, said in our words; a pg_dump older than
/// the server refuses it itself ("server version mismatch"), which
/// [`run_pg_tool`] explains.
fn check_pg_dump_version() -> Result<()> {
    let out = std::process::Command::new("pg_dump")
        .arg("--version")
        .output()
        .context("cannot run pg_dump: a PostgreSQL backup needs the PostgreSQL client tools (pg_dump, pg_restore) of at least the server's version")?;
    if !out.status.success() {
        bail!(
            "`pg_dump --version` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

pub async fn restore(cfg: Config, args: RestoreArgs) -> Result<ExitCode> {
    if args.dir.is_file() {
        let mut folder = args.dir.clone().into_os_string();
        folder.push(".restoring");
        let folder = PathBuf::from(folder);
        if folder.exists() {
            bail!(
                "{} exists, left by an earlier restore that did not finish: remove it",
                folder.display()
            );
        }
        let _cleanup = Cleanup(Some(folder.clone()));
        unzip_backup(&args.dir, &folder)?;
        return restore_dir(cfg, &folder, args.unsigned).await;
    }
    restore_dir(cfg, &args.dir, args.unsigned).await
}

/// Unpacks a ZIP file written by `backup --file` into `dest`, refusing
/// what is not one; every file is checked against the manifest afterwards,
/// as a directory's are.
fn unzip_backup(file: &Path, dest: &Path) -> Result<()> {
    let name = file.display();
    let input = std::fs::File::open(file).with_context(|| format!("reading {name}"))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(input)).map_err(|e| {
        anyhow::anyhow!(
            "{name} is not a backup: it is neither a directory nor a ZIP file written by \
             `lienthong backup --file` ({e})"
        )
    })?;
    if zip.index_for_name(MANIFEST).is_none() {
        bail!(
            "{name} is a ZIP file but not a backup: it holds no {MANIFEST} (a backup written by \
             `lienthong backup --file` always does)"
        );
    }
    // What the manifest lists bounds what is unpacked: no other entry, and
    // none larger than listed (the manifest's own size is bounded too).
    let mut listed: BTreeMap<String, u64> = BTreeMap::new();
    {
        let mut text = Vec::new();
        zip.by_name(MANIFEST)
            .map_err(|e| anyhow::anyhow!("{name}: {MANIFEST} cannot be read ({e})"))?
            .take(MAX_MANIFEST_BYTES)
            .read_to_end(&mut text)
            .map_err(|e| anyhow::anyhow!("{MANIFEST} in {name} is damaged ({e})"))?;
        let m: Manifest = serde_json::from_slice(&text)
            .with_context(|| format!("{MANIFEST} in {name} cannot be read"))?;
        for f in m.files {
            listed.insert(f.path, f.size);
        }
        listed.insert(MANIFEST.to_owned(), text.len() as u64);
        listed.insert(SIGNATURE.to_owned(), MAX_MANIFEST_BYTES);
    }
    std::fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
    for i in 0..zip.len() {
        let mut entry = zip
            .by_index(i)
            .map_err(|e| anyhow::anyhow!("{name}: entry {i} cannot be read ({e})"))?;
        if entry.is_dir() {
            continue;
        }
        let rel = entry
            .name()
            .map_err(|e| anyhow::anyhow!("{name}: entry {i} has no readable name ({e})"))?
            .into_owned();
        let Some(&size) = listed.get(&rel) else {
            bail!("{rel} is in {name} but not in its manifest: it was added after the backup");
        };
        let path = inside(dest, &rel)
            .with_context(|| format!("{name} is not a backup written by `lienthong backup`"))?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut out = std::fs::File::create(&path)
            .with_context(|| format!("unpacking {rel} into {}", path.display()))?;
        std::io::copy(&mut (&mut entry).take(size.saturating_add(1)), &mut out).map_err(|e| {
            anyhow::anyhow!(
                "{rel} in {name} is damaged ({e}): the file was changed or cut short after it \
                 was written; nothing was restored"
            )
        })?;
    }
    Ok(())
}

async fn restore_dir(cfg: Config, dir: &Path, unsigned: bool) -> Result<ExitCode> {
    let started = Instant::now();
    let bytes = std::fs::read(dir.join(MANIFEST)).with_context(|| {
        format!(
            "{} has no readable {MANIFEST}: not a backup, or one that did not finish",
            dir.display()
        )
    })?;
    check_signature(&cfg, dir, &bytes, unsigned)?;
    let manifest: Manifest =
        serde_json::from_slice(&bytes).with_context(|| format!("{MANIFEST} cannot be read"))?;
    if manifest.v != MANIFEST_VERSION {
        bail!(
            "{MANIFEST} is of version {}, which this release does not know",
            manifest.v
        );
    }
    let want_db = database_kind(&cfg.database.url);
    if manifest.database != want_db {
        bail!(
            "this is a backup of a {} database, and database.url names a {want_db} one",
            manifest.database
        );
    }
    if manifest.storage != storage_kind(&cfg) {
        bail!(
            "this backup's attachments were kept with storage.backend = {:?}, and the \
             configuration says {:?}",
            manifest.storage,
            storage_kind(&cfg)
        );
    }
    // Every file, before anything is touched.
    for f in &manifest.files {
        let path = inside(dir, &f.path)?;
        let (size, sha256) =
            digest_file(&path).with_context(|| format!("{} is missing from the backup", f.path))?;
        if size != f.size || sha256 != f.sha256 {
            bail!(
                "{} does not match the manifest: it has {size} bytes with SHA-256 {sha256}, the \
                 manifest says {} bytes with SHA-256 {}",
                f.path,
                f.size,
                f.sha256
            );
        }
    }
    let sealed_sqlite = format!("{SQLITE_FILE}{SEALED}");
    let sealed_pg = format!("{PG_FILE}{SEALED}");
    let db_entry = manifest
        .files
        .iter()
        .find(|f| [SQLITE_FILE, PG_FILE, &sealed_sqlite, &sealed_pg].contains(&f.path.as_str()))
        .context("the manifest names no database file")?;
    // A sealed database opens only with the key it names.
    let keys = match &manifest.database_key {
        None => None,
        Some(id) => match crate::storage::encryption_keys(&cfg)? {
            Some(keys) if keys.ids().contains(&id.as_str()) => Some(keys),
            Some(keys) => bail!(
                "this backup's database is sealed with the storage key {id}, which {} does not \
                 hold: add that key (after the current one); nothing was changed",
                keys.source()
            ),
            None => bail!(
                "this backup's database is sealed with the storage key {id}, and no storage key \
                 is configured: set storage.encryption_key_file to the key file holding {id}; \
                 nothing was changed"
            ),
        },
    };

    // The target: an empty database and an attachment store without blobs.
    let url = cfg.database.url.clone();
    let occupied = db_backup::occupancy(&url).await.map_err(err)?;
    if !occupied.is_empty() {
        bail!(
            "the database {} is not empty ({} message(s), {} event(s), {} stored attachment(s)): \
             a backup is restored only into an empty database; nothing was changed",
            lienthong_core::store::redact(&url),
            occupied.messages,
            occupied.events,
            occupied.stored_blobs
        );
    }
    let blobs_dir = cfg.storage.path.join("blobs");
    if cfg.storage.backend == StorageBackend::Filesystem
        && blobs_dir.is_dir()
        && has_files(&blobs_dir)?
    {
        bail!(
            "the attachment store {} already holds attachments: a backup is restored only into \
             an empty one; nothing was changed",
            blobs_dir.display()
        );
    }

    if db_entry.path.starts_with(SQLITE_FILE) {
        let target = db_backup::sqlite_path(&url)
            .context("database.url names no SQLite file to restore into")?;
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let restoring = target.with_extension("restoring");
        match &keys {
            None => {
                copy_file(&dir.join(SQLITE_FILE), &restoring)?;
            }
            Some(keys) => {
                let file = std::fs::File::create(&restoring)
                    .with_context(|| format!("writing {}", restoring.display()))?;
                let mut out = std::io::BufWriter::with_capacity(256 * 1024, file);
                keys.open_file(&dir.join(&db_entry.path), &mut out)
                    .map_err(err)?;
                let file = out.into_inner().map_err(|e| {
                    anyhow::anyhow!("writing {}: {}", restoring.display(), e.error())
                })?;
                file.sync_all()?;
            }
        }
        // An empty database left by an earlier start: its journal files
        // belong to it, not to the restored one.
        for suffix in ["-wal", "-shm"] {
            let mut side = target.clone().into_os_string();
            side.push(suffix);
            let _ = std::fs::remove_file(PathBuf::from(side));
        }
        std::fs::rename(target.with_extension("restoring"), &target)
            .with_context(|| format!("putting the database in place at {}", target.display()))?;
    } else {
        let mut cmd = pg_tool("pg_restore", &url);
        cmd.arg("--no-owner").arg("--exit-on-error");
        if occupied.has_schema {
            // A migrated, empty database: its tables make way for the backup's.
            cmd.arg("--clean").arg("--if-exists");
        }
        match &keys {
            None => {
                cmd.arg(dir.join(PG_FILE));
                run_pg_tool(&mut cmd, "pg_restore")?;
            }
            Some(keys) => pg_restore_sealed(&mut cmd, keys, &dir.join(&db_entry.path))?,
        }
    }

    let mut restored = 0u64;
    for f in &manifest.files {
        if f.path.starts_with("blobs/") || f.path.starts_with("keycheck/") {
            let dest = inside(&cfg.storage.path, &f.path)?;
            let (size, sha256) = copy_file(&dir.join(&f.path), &dest)
                .with_context(|| format!("copying {} into {}", f.path, dest.display()))?;
            if size != f.size || sha256 != f.sha256 {
                bail!("{} changed while it was restored", f.path);
            }
            restored += u64::from(f.path.starts_with("blobs/"));
        }
    }

    // The restored log must be the one the manifest recorded.
    let now = db_backup::read_facts(&url).await.map_err(err)?;
    if now.heads != manifest.heads {
        bail!(
            "the restored database's chain heads are not those of the manifest: the database file \
             does not belong to this manifest"
        );
    }
    println!(
        "restored the backup of gateway {} taken at {} into {}: {restored} attachment(s), in \
         {:.1} s",
        manifest.gateway,
        manifest.created_at,
        lienthong_core::store::redact(&url),
        started.elapsed().as_secs_f64()
    );
    if manifest.encrypted {
        println!(
            "its attachments are sealed: the gateway needs the storage keys they were sealed \
             with (storage.encryption_key_file), which a backup never holds"
        );
    }
    crate::admin::log(cfg, crate::admin::LogCommand::Verify).await
}

/// Runs `pg_restore` (set up but for its input) on the opened form of the
/// sealed dump `src`, streamed into it.
fn pg_restore_sealed(
    cmd: &mut std::process::Command,
    keys: &lienthong_core::blobs::EncryptionKeys,
    src: &Path,
) -> Result<()> {
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("cannot run pg_restore: is the PostgreSQL client installed?")?;
    let errors = collect_stderr(&mut child);
    let opened = match child.stdin.take() {
        Some(mut input) => keys.open_file(src, &mut input).map_err(err),
        None => Err(anyhow::anyhow!("pg_restore takes no input")),
    };
    let status = child.wait().context("waiting for pg_restore")?;
    let stderr = errors.join().unwrap_or_default();
    opened?;
    if !status.success() {
        bail!("pg_restore failed ({status}): {}", stderr.trim());
    }
    Ok(())
}

fn has_files(dir: &Path) -> Result<bool> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_file() || (kind.is_dir() && has_files(&entry.path())?) {
            return Ok(true);
        }
    }
    Ok(false)
}

fn check_signature(cfg: &Config, dir: &Path, manifest: &[u8], unsigned_ok: bool) -> Result<()> {
    let sig = std::fs::read(dir.join(SIGNATURE))
        .with_context(|| format!("{SIGNATURE} is missing from the backup"))?;
    crate::manifest_sig::verify(
        cfg,
        MANIFEST_PAYLOAD_TYPE,
        MANIFEST,
        manifest,
        &sig,
        unsigned_ok,
    )?;
    Ok(())
}

const DAY_MICROS: i64 = 86_400_000_000;

/// The `actor` of the scheduled backup's lines in the transfer log.
const SCHEDULE_ACTOR: &str = "schedule";

/// The latest instant at or before `now` that the daily schedule `at`
/// (hour, minute; Vietnam time) names.
fn last_due(now: i64, (hour, minute): (u8, u8)) -> i64 {
    let today = lienthong_reports::day_start_micros(lienthong_reports::local_date(now))
        + i64::from(hour) * 3_600_000_000
        + i64::from(minute) * 60_000_000;
    if today > now {
        today - DAY_MICROS
    } else {
        today
    }
}

/// The daily backup under `serve`, run by the replica leading the job
/// `backup`: when no scheduled backup was tried since the last time the
/// schedule named (by any replica, as the transfer log says; a backup made
/// by hand does not count), one is taken now —
/// so a schedule missed while no replica led is caught up at once — into
/// `backup.dir/<date>T<time>/`, the newest finished backup there as its
/// base; then the backups older than `backup.keep` days are removed (never
/// the newest). Never returns.
pub async fn run_schedule(cfg: Config, store: lienthong_core::store::Store, at: (u8, u8)) {
    loop {
        let now = lienthong_core::now_micros();
        let due = last_due(now, at);
        let last_try = match store.last_backup_try(SCHEDULE_ACTOR).await {
            Ok(at) => at,
            Err(e) => {
                tracing::warn!(error = %e.chain(), "cannot read the last backup from the transfer log; trying again in a minute");
                tokio::time::sleep(std::time::Duration::from_secs(60)).await;
                continue;
            }
        };
        if last_try.is_none_or(|t| t < due) {
            scheduled_backup(&cfg, &store).await;
            continue;
        }
        // A minute at a time: the clock may be set, another replica may run one.
        let wait = (due + DAY_MICROS - now).clamp(1_000_000, 60_000_000);
        tokio::time::sleep(std::time::Duration::from_micros(wait.unsigned_abs())).await;
    }
}

async fn scheduled_backup(cfg: &Config, store: &lienthong_core::store::Store) {
    // Absolute: the dashboard shows where it went, whatever the working
    // directory.
    let root = std::path::absolute(&cfg.backup.dir).unwrap_or_else(|_| cfg.backup.dir.clone());
    let now = lienthong_reports::format_local(lienthong_core::now_micros());
    let dir = root.join(now.replace(' ', "T").replace(':', ""));
    let base = newest_finished(&root).map(|(p, _)| p);
    let unsigned = cfg.receipts.key.is_none();
    let (job_cfg, job_dir) = (cfg.clone(), dir.clone());
    let handle = tokio::runtime::Handle::current();
    // Files are copied with blocking I/O: on a thread of the blocking pool.
    let outcome = tokio::task::spawn_blocking(move || {
        handle.block_on(write_backup(
            &job_cfg,
            &job_dir,
            base.as_deref(),
            unsigned,
            false,
        ))
    })
    .await
    .unwrap_or_else(|e| Err(anyhow::anyhow!("the backup stopped unexpectedly: {e}")));
    match &outcome {
        Ok(w) => {
            tracing::info!(dir = %dir.display(), bytes = w.bytes, files = w.files, copied = w.copied, linked = w.linked, "the scheduled backup is written")
        }
        Err(e) => {
            tracing::error!(dir = %dir.display(), error = %format!("{e:#}"), "the scheduled backup failed; it is tried again at the next scheduled time")
        }
    }
    if let Err(e) = log_outcome(store, &dir, &outcome, SCHEDULE_ACTOR, "schedule").await {
        tracing::warn!(error = %format!("{e:#}"), "the backup's line was not written in the transfer log");
    }
    if outcome.is_ok() {
        prune_backups(&root, cfg.backup.keep, lienthong_core::now_micros());
    }
}

/// The finished backups (directories with a readable manifest) under
/// `root`, with when each was taken (Unix microseconds).
fn finished_backups(root: &Path) -> Vec<(PathBuf, i64)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(root) else {
        return out;
    };
    for e in entries.flatten() {
        let path = e.path();
        let Ok(bytes) = std::fs::read(path.join(MANIFEST)) else {
            continue;
        };
        let Ok(m) = serde_json::from_slice::<Manifest>(&bytes) else {
            continue;
        };
        let Ok(t) = time::OffsetDateTime::parse(
            &m.created_at,
            &time::format_description::well_known::Rfc3339,
        ) else {
            continue;
        };
        out.push((path, (t.unix_timestamp_nanos() / 1000) as i64));
    }
    out.sort_by_key(|(_, t)| *t);
    out
}

fn newest_finished(root: &Path) -> Option<(PathBuf, i64)> {
    finished_backups(root).pop()
}

/// Removes the finished backups under `root` taken more than `keep` days
/// before `now`, never the newest.
fn prune_backups(root: &Path, keep: u32, now: i64) {
    let mut all = finished_backups(root);
    all.pop();
    let limit = now - i64::from(keep) * DAY_MICROS;
    for (path, at) in all {
        if at >= limit {
            continue;
        }
        match std::fs::remove_dir_all(&path) {
            Ok(()) => {
                tracing::info!(dir = %path.display(), keep_days = keep, "removed a backup older than backup.keep")
            }
            Err(e) => {
                tracing::warn!(dir = %path.display(), error = %e, "cannot remove an old backup")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_is_due_at_its_last_time_of_day() {
        // 2026-12-07 10:00 in Vietnam (03:00 UTC).
        let now = 1_796_612_400 * 1_000_000;
        assert_eq!(lienthong_reports::format_local(now), "2026-12-07 10:00:00");
        assert_eq!(
            lienthong_reports::format_local(last_due(now, (1, 30))),
            "2026-12-07 01:30:00"
        );
        assert_eq!(
            lienthong_reports::format_local(last_due(now, (23, 0))),
            "2026-12-06 23:00:00"
        );
    }
}

//! `lienthong backup DIR` and `lienthong restore DIR`: an online,
//! consistent copy of the database and the attachments, with a signed
//! manifest of every file, and its checked way back.
//!
//! A backup directory holds:
//!
//! ```text
//! database.sqlite | database.pgdump   VACUUM INTO / pg_dump --format=custom
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

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use lienthong_core::backup::{self as db_backup, ChainHead, DatabaseFacts};
use lienthong_core::receipts::{DetachedSignature, ReceiptSigner};
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

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// Where to write the backup: a directory that does not exist or is
    /// empty.
    pub dir: PathBuf,
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
    /// A directory written by `lienthong backup`.
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
    /// Every chain of the transfer log as the copied database holds it.
    heads: Vec<ChainHead>,
    files: Vec<FileEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    /// Relative to the backup's directory, with `/`.
    path: String,
    size: u64,
    sha256: String,
}

/// `manifest.sig`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignatureFile {
    payload_type: String,
    /// JOSE name, `null` when unsigned.
    alg: Option<String>,
    /// Hex SHA-256 of the signer's SubjectPublicKeyInfo.
    key: Option<String>,
    /// Hex.
    value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    unsigned: Option<String>,
}

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

pub async fn backup(cfg: Config, args: BackupArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let dir = &args.dir;
    if dir.exists() && !is_empty_dir(dir)? {
        bail!(
            "{} exists and is not empty: give a new directory for each backup (the previous one \
             can be --base)",
            dir.display()
        );
    }
    let signer = match (&cfg.receipts.key, &cfg.receipts.cert) {
        (Some(key), Some(cert)) => Some(
            ReceiptSigner::load(key, cert)
                .map_err(err)
                .context("loading receipts.key / receipts.cert")?,
        ),
        _ if args.unsigned => None,
        _ => bail!(
            "the gateway has no receipt key (receipts.key, receipts.cert) to sign the backup's \
             manifest with: configure one, or pass --unsigned (restore will then need --unsigned \
             too, and cannot tell a rewritten backup from this one)"
        ),
    };
    let base = match &args.base {
        Some(b) => Some(read_base(b)?),
        None => None,
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;

    let url = cfg.database.url.clone();
    let created_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let (db_file, facts) = if url.starts_with("sqlite:") {
        let dest = dir.join(SQLITE_FILE);
        db_backup::sqlite_vacuum_into(&url, &dest)
            .await
            .map_err(err)?;
        // The heads and the blob list come from the copy itself: exactly
        // what a restore will hold.
        let facts = db_backup::read_facts(&db_backup::sqlite_read_only_url(&dest))
            .await
            .map_err(err)
            .context("reading the copied database")?;
        (SQLITE_FILE, facts)
    } else {
        check_pg_dump_version()?;
        let dest = dir.join(PG_FILE);
        let dump_url = url.clone();
        let ((), facts) = db_backup::with_pg_snapshot(&url, |snapshot| async move {
            run_pg_tool(
                pg_tool("pg_dump", &dump_url)
                    .arg("--format=custom")
                    .arg(format!("--snapshot={snapshot}"))
                    .arg("--file")
                    .arg(&dest),
                "pg_dump",
            )
            .map_err(|e| {
                lienthong_core::error::Error::new(
                    lienthong_core::error::Reason::Unavailable,
                    format!("{e:#}"),
                )
            })
        })
        .await
        .map_err(err)?;
        (PG_FILE, facts)
    };

    let mut files = Vec::new();
    let (size, sha256) =
        digest_file(&dir.join(db_file)).with_context(|| format!("reading {db_file}"))?;
    files.push(FileEntry {
        path: db_file.to_owned(),
        size,
        sha256,
    });
    let mut copied = 0u64;
    let mut linked = 0u64;
    let mut copied_bytes = 0u64;
    if cfg.storage.backend == StorageBackend::Filesystem {
        let root = &cfg.storage.path;
        for sha in &facts.blobs {
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

    let encrypted =
        cfg.storage.encryption_key_file.is_some() || cfg.storage.encryption_key.is_some();
    let manifest = Manifest {
        v: MANIFEST_VERSION,
        gateway: cfg.gateway.id.clone(),
        created_at,
        database: database_kind(&cfg.database.url).to_owned(),
        storage: storage_kind(&cfg).to_owned(),
        encrypted,
        heads: facts.heads.clone(),
        files,
    };
    let bytes = serde_json::to_vec_pretty(&manifest)?;
    let sig = match &signer {
        Some(s) => {
            let d = s
                .sign_detached(MANIFEST_PAYLOAD_TYPE, &bytes)
                .map_err(err)?;
            SignatureFile {
                payload_type: MANIFEST_PAYLOAD_TYPE.to_owned(),
                alg: Some(d.algorithm),
                key: Some(hex::encode(d.key_sha256)),
                value: Some(hex::encode(d.value)),
                unsigned: None,
            }
        }
        None => SignatureFile {
            payload_type: MANIFEST_PAYLOAD_TYPE.to_owned(),
            alg: None,
            key: None,
            value: None,
            unsigned: Some("made with --unsigned: the gateway had no receipt key".to_owned()),
        },
    };
    write_atomically(&dir.join(SIGNATURE), &serde_json::to_vec_pretty(&sig)?)?;
    // Last: a directory with a manifest is a finished backup.
    write_atomically(&dir.join(MANIFEST), &bytes)?;

    let total: u64 = manifest.files.iter().map(|f| f.size).sum();
    println!(
        "backed up {} ({}) into {}: {} file(s), {} bytes, in {:.1} s",
        db_backup_name(&manifest),
        lienthong_core::store::redact(&cfg.database.url),
        dir.display(),
        manifest.files.len(),
        total,
        started.elapsed().as_secs_f64()
    );
    println!(
        "attachments: {} in the backup, {copied} copied ({copied_bytes} bytes), {linked} unchanged \
         from the base",
        facts.blobs.len()
    );
    print_heads(&facts);
    if encrypted {
        println!(
            "the attachments are sealed with the storage keys, which are NOT in the backup: keep \
             storage.encryption_key_file safe apart from it"
        );
    }
    if signer.is_none() {
        println!("the manifest is NOT signed (--unsigned)");
    }
    Ok(ExitCode::SUCCESS)
}

fn db_backup_name(m: &Manifest) -> String {
    format!("the {} database of gateway {}", m.database, m.gateway)
}

fn print_heads(facts: &DatabaseFacts) {
    for h in &facts.heads {
        println!("  chain {}: head at event {} ({})", h.chain, h.seq, h.hash);
    }
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
    let started = Instant::now();
    let dir = &args.dir;
    let bytes = std::fs::read(dir.join(MANIFEST)).with_context(|| {
        format!(
            "{} has no readable {MANIFEST}: not a backup, or one that did not finish",
            dir.display()
        )
    })?;
    check_signature(&cfg, dir, &bytes, args.unsigned)?;
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
    let db_entry = manifest
        .files
        .iter()
        .find(|f| f.path == SQLITE_FILE || f.path == PG_FILE)
        .context("the manifest names no database file")?;

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

    if db_entry.path == SQLITE_FILE {
        let target = db_backup::sqlite_path(&url)
            .context("database.url names no SQLite file to restore into")?;
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        copy_file(&dir.join(SQLITE_FILE), &target.with_extension("restoring"))?;
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
        cmd.arg(dir.join(PG_FILE));
        run_pg_tool(&mut cmd, "pg_restore")?;
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
    let text = std::fs::read(dir.join(SIGNATURE))
        .with_context(|| format!("{SIGNATURE} is missing from the backup"))?;
    let sig: SignatureFile =
        serde_json::from_slice(&text).with_context(|| format!("{SIGNATURE} cannot be read"))?;
    let (Some(alg), Some(key), Some(value)) = (sig.alg, sig.key, sig.value) else {
        if unsigned_ok {
            return Ok(());
        }
        bail!(
            "{MANIFEST} is not signed ({}): pass --unsigned to restore it anyway",
            sig.unsigned.unwrap_or_default()
        );
    };
    if sig.payload_type != MANIFEST_PAYLOAD_TYPE {
        bail!("{SIGNATURE} is not a backup manifest's signature");
    }
    let key_sha256 = hex::decode(&key)
        .ok()
        .and_then(|k| <[u8; 32]>::try_from(k).ok())
        .with_context(|| format!("{SIGNATURE}: its key is not a SHA-256 in hex"))?;
    let value =
        hex::decode(&value).with_context(|| format!("{SIGNATURE}: its value is not hex"))?;
    let signers = cfg.receipt_signers()?;
    if signers.is_empty() {
        bail!(
            "{MANIFEST} is signed, and there is no receipt certificate to check it with: set \
             receipts.cert (or receipts.trusted_signers)"
        );
    }
    signers
        .verify_detached(
            MANIFEST_PAYLOAD_TYPE,
            manifest,
            &DetachedSignature {
                algorithm: alg,
                key_sha256,
                value,
            },
        )
        .map_err(|e| {
            anyhow::anyhow!(
                "{MANIFEST} does not match its signature in {SIGNATURE}: {}",
                e.message()
            )
        })?;
    Ok(())
}

//! `lienthong storage …`: the attachment store's keys, and the
//! one place the binary opens the store with them.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use lienthong_core::blobs::{BlobStore, EncryptionKeys};
use lienthong_core::store::Store;

use crate::config::{Config, StorageBackend};

#[derive(Subcommand, Debug)]
pub enum StorageCommand {
    /// Re-encrypt every stored attachment under the current key (the first
    /// of storage.encryption_key_file), plaintext ones included. Safe to
    /// interrupt and to run again, also while the gateway runs. Afterwards
    /// the keys no attachment uses any more may leave the key file.
    RotateKey,
    /// Print a new random key as a key-file line (`ID:BASE64`). Put it first
    /// in storage.encryption_key_file to make it the current key.
    NewKey {
        /// The key's id, stored beside every blob it seals (letters, digits,
        /// '.', '_', '-'). Default: k and today's date, e.g. k20261124.
        #[arg(long)]
        id: Option<String>,
    },
}

pub async fn run(cfg: Config, cmd: StorageCommand) -> Result<ExitCode> {
    match cmd {
        StorageCommand::NewKey { id } => {
            let id = id.unwrap_or_else(|| {
                let d = time::OffsetDateTime::now_utc().date();
                format!("k{:04}{:02}{:02}", d.year(), u8::from(d.month()), d.day())
            });
            let line = EncryptionKeys::generate_line(&id)
                .map_err(|e| anyhow::anyhow!("{}", e.message()))?;
            println!("{line}");
            Ok(ExitCode::SUCCESS)
        }
        StorageCommand::RotateKey => {
            let Some(keys) = encryption_keys(&cfg)? else {
                anyhow::bail!(
                    "no storage encryption key is configured: set storage.encryption_key_file (the \
                     new key on the first line, the old ones after it)"
                );
            };
            let db = match cfg.storage.backend {
                StorageBackend::Filesystem => None,
                StorageBackend::Database => {
                    Some(cfg.open_store().await.context("opening the database")?)
                }
            };
            let store = open_with(&cfg, Some(keys), db.as_ref()).await?;
            let r = store
                .rotate_key()
                .await
                .map_err(|e| anyhow::anyhow!("{}", e.chain()))?;
            println!(
                "every attachment is checked: {} re-encrypted from an older key, {} encrypted for \
                 the first time, {} already under key {}",
                r.reencrypted, r.encrypted, r.already_current, r.current_key
            );
            if r.leftovers_removed > 0 {
                println!(
                    "{} temporary file(s) of an interrupted rotation removed",
                    r.leftovers_removed
                );
            }
            for sha in &r.damaged {
                println!(
                    "DAMAGED {sha}: its bytes no longer match their SHA-256; left as it is \
                     (restore it from a backup)"
                );
            }
            for (sha, why) in &r.failed {
                println!("FAILED {sha}: {why}");
            }
            if !r.retired_keys.is_empty() {
                println!(
                    "no attachment uses key(s) {} any more: they may leave the key file (keep an \
                     archived copy for backups taken before today)",
                    r.retired_keys.join(", ")
                );
            }
            if r.damaged.is_empty() && r.failed.is_empty() {
                Ok(ExitCode::SUCCESS)
            } else {
                println!(
                    "{} attachment(s) could not be rotated; the old keys are still needed",
                    r.damaged.len() + r.failed.len()
                );
                Ok(ExitCode::from(1))
            }
        }
    }
}

/// The storage keys of the configuration: `storage.encryption_key_file`,
/// or `LIENTHONG_STORAGE__ENCRYPTION_KEY`; `None` when neither is set.
pub fn encryption_keys(cfg: &Config) -> Result<Option<EncryptionKeys>> {
    let msg = |e: lienthong_core::error::Error| anyhow::anyhow!("{}", e.message());
    match (
        &cfg.storage.encryption_key_file,
        &cfg.storage.encryption_key,
    ) {
        (Some(_), Some(_)) => anyhow::bail!(
            "both storage.encryption_key_file and storage.encryption_key \
             (LIENTHONG_STORAGE__ENCRYPTION_KEY) are set: give the storage keys one way"
        ),
        (Some(file), None) => Ok(Some(EncryptionKeys::from_file(file).map_err(msg)?)),
        (None, Some(text)) => Ok(Some(
            EncryptionKeys::parse(
                &text.0,
                "storage.encryption_key (LIENTHONG_STORAGE__ENCRYPTION_KEY)",
            )
            .map_err(msg)?,
        )),
        (None, None) => Ok(None),
    }
}

/// The attachment store as `serve` uses it: with the configured keys, and
/// refusing to open with wrong ones (the error says which key and why);
/// in `db` with `storage.backend = "database"`.
pub async fn open_blob_store(cfg: &Config, db: &Store) -> Result<BlobStore> {
    let keys = encryption_keys(cfg)?;
    let mut store = open_with(cfg, keys, Some(db)).await?;
    // This replica's leftovers go now; other replicas' uploads in progress
    // on a shared store stay.
    store
        .claim_temp_files(db.writer().as_str())
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.chain()))
        .with_context(|| format!("cleaning {}", cfg.storage.path.join("tmp").display()))?;
    if store.in_database() {
        tracing::info!(
            tmp = %cfg.storage.path.join("tmp").display(),
            "attachments are kept in the database; uploads pass through this replica's temporary folder"
        );
    }
    match store.encryption_key_id() {
        Some(id) => tracing::info!(key_id = id, "attachments are encrypted at rest"),
        None => tracing::warn!(
            "attachments are stored unencrypted: set storage.encryption_key_file to encrypt them at rest"
        ),
    }
    Ok(store)
}

pub(crate) async fn open_with(
    cfg: &Config,
    keys: Option<EncryptionKeys>,
    db: Option<&Store>,
) -> Result<BlobStore> {
    let opened = match (cfg.storage.backend, db) {
        (StorageBackend::Database, Some(db)) => {
            BlobStore::open_in_database(&cfg.storage.path, keys, db).await
        }
        (StorageBackend::Database, None) => anyhow::bail!(
            "storage.backend = \"database\": the attachment store opens with the database"
        ),
        (StorageBackend::Filesystem, _) => BlobStore::open_with(&cfg.storage.path, keys).await,
    };
    opened
        .map_err(|e| anyhow::anyhow!("{}", e.chain()))
        .with_context(|| match cfg.storage.backend {
            StorageBackend::Filesystem => format!(
                "opening the attachment store {}",
                cfg.storage.path.display()
            ),
            StorageBackend::Database => format!(
                "opening the attachment store in the database (temporary files in {})",
                cfg.storage.path.display()
            ),
        })
}

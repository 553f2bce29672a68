//! Content-addressed attachment storage under `storage.path`.
//!
//! Bytes are written to `tmp/` while they stream in, hashed on the way, and
//! fsynced; only an attachment whose size and SHA-256 match the signed
//! envelope is moved to `blobs/<aa>/<sha256>` (rename, then fsync of the
//! directory) — before the database transaction that makes the message
//! visible commits. A crash in between leaves at worst an unreferenced blob,
//! never a referenced blob that is missing.
//!
//! Architecture invariant: memory per stream is one chunk, whatever the size
//! of the attachment.

use std::path::{Path, PathBuf};

use ring::digest;
use tokio::fs;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};

use crate::error::{Error, Reason, Result};

/// The root of the attachment store.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
}

impl BlobStore {
    /// Opens (creating if needed) the store and removes temporary files left
    /// by a crash: they belonged to submissions that were never acknowledged.
    pub async fn open(root: impl Into<PathBuf>) -> Result<BlobStore> {
        let root = root.into();
        fs::create_dir_all(root.join("blobs")).await?;
        let tmp = root.join("tmp");
        if fs::try_exists(&tmp).await? {
            let mut dir = fs::read_dir(&tmp).await?;
            while let Some(entry) = dir.next_entry().await? {
                // A leftover that cannot be removed is harmless; say so and go on.
                if let Err(e) = fs::remove_file(entry.path()).await {
                    tracing::warn!(path = %entry.path().display(), error = %e, "could not remove a leftover temporary file");
                }
            }
        }
        fs::create_dir_all(&tmp).await?;
        Ok(BlobStore { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob with this SHA-256 (lowercase hex) lives.
    pub fn path_of(&self, sha256_hex: &str) -> PathBuf {
        let prefix = sha256_hex.get(..2).unwrap_or("xx");
        self.root.join("blobs").join(prefix).join(sha256_hex)
    }

    /// Starts a new temporary blob.
    pub async fn create(&self) -> Result<BlobWriter> {
        let path = self
            .root
            .join("tmp")
            .join(format!("{}.part", uuid::Uuid::new_v4().simple()));
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await?;
        Ok(BlobWriter {
            file: BufWriter::with_capacity(256 * 1024, file),
            guard: TempFile(Some(path)),
            hasher: digest::Context::new(&digest::SHA256),
            written: 0,
        })
    }

    /// Moves a verified temporary blob into place. Returns whether the blob
    /// was new (false when identical bytes were already stored).
    pub async fn commit(&self, blob: SealedBlob) -> Result<bool> {
        let hex = hex::encode(blob.sha256);
        let dest = self.path_of(&hex);
        let Some(parent) = dest.parent() else {
            return Err(Error::new(
                Reason::Unavailable,
                "the attachment store path is not usable",
            ));
        };
        fs::create_dir_all(parent).await?;
        if fs::try_exists(&dest).await? {
            // Content-addressed: the same bytes are already durable.
            return Ok(false);
        }
        let mut guard = blob.guard;
        let Some(src) = guard.0.take() else {
            return Err(Error::new(
                Reason::Unavailable,
                "a temporary attachment was lost before it could be stored",
            ));
        };
        if let Err(e) = fs::rename(&src, &dest).await {
            guard.0 = Some(src);
            return Err(e.into());
        }
        sync_dir(parent).await?;
        Ok(true)
    }

    /// Removes a stored blob (used only to undo a commit whose database
    /// transaction failed, when no other message references the bytes).
    pub async fn remove(&self, sha256_hex: &str) -> Result<()> {
        match fs::remove_file(self.path_of(sha256_hex)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Opens a stored blob for reading, checking its size on the way in.
    pub async fn open_blob(&self, sha256_hex: &str, expected_size: u64) -> Result<BlobReader> {
        let path = self.path_of(sha256_hex);
        let file = match fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::error!(
                    sha256 = sha256_hex,
                    "a stored attachment is missing from disk"
                );
                return Err(Error::new(
                    Reason::DigestMismatch,
                    "the stored attachment is missing from the gateway's disk; the operators have been alerted",
                ));
            }
            Err(e) => return Err(e.into()),
        };
        Ok(BlobReader {
            file,
            expected: sha256_hex.to_owned(),
            expected_size,
            hasher: Some(digest::Context::new(&digest::SHA256)),
            read: 0,
        })
    }
}

async fn sync_dir(dir: &Path) -> Result<()> {
    let d = fs::File::open(dir).await?;
    d.sync_all().await?;
    Ok(())
}

/// Removes the temporary file unless it was moved into place.
#[derive(Debug)]
struct TempFile(Option<PathBuf>);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            // Best effort and synchronous: Drop cannot await, and a leftover
            // is removed at the next start anyway.
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A temporary blob being written.
pub struct BlobWriter {
    file: BufWriter<fs::File>,
    guard: TempFile,
    hasher: digest::Context,
    written: u64,
}

impl std::fmt::Debug for BlobWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobWriter")
            .field("path", &self.guard.0)
            .field("written", &self.written)
            .finish()
    }
}

impl BlobWriter {
    pub async fn write(&mut self, data: &[u8]) -> Result<()> {
        self.hasher.update(data);
        self.file.write_all(data).await?;
        self.written += data.len() as u64;
        Ok(())
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// Flushes and fsyncs the bytes; the digest is final from here on.
    pub async fn seal(mut self) -> Result<SealedBlob> {
        self.file.flush().await?;
        self.file.get_mut().sync_all().await?;
        let d = self.hasher.finish();
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(d.as_ref());
        Ok(SealedBlob {
            guard: self.guard,
            sha256,
            size: self.written,
        })
    }
}

/// A durable temporary blob with its digest, not yet in place.
#[derive(Debug)]
pub struct SealedBlob {
    guard: TempFile,
    pub sha256: [u8; 32],
    pub size: u64,
}

/// Reads a stored blob chunk by chunk and checks, at the end, that the bytes
/// still have the digest they were stored under (a blob edited on disk is
/// caught on fetch).
pub struct BlobReader {
    file: fs::File,
    expected: String,
    expected_size: u64,
    hasher: Option<digest::Context>,
    read: u64,
}

impl std::fmt::Debug for BlobReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobReader")
            .field("expected", &self.expected)
            .field("read", &self.read)
            .finish()
    }
}

impl BlobReader {
    /// The next chunk of at most `max` bytes; `None` at the end, after the
    /// digest has been checked.
    pub async fn next_chunk(&mut self, max: usize) -> Result<Option<Vec<u8>>> {
        let Some(hasher) = self.hasher.as_mut() else {
            return Ok(None);
        };
        let mut buf = vec![0u8; max];
        let n = self.file.read(&mut buf).await?;
        if n == 0 {
            let Some(h) = self.hasher.take() else {
                return Ok(None);
            };
            let got = hex::encode(h.finish());
            if got != self.expected || self.read != self.expected_size {
                tracing::error!(
                    expected = %self.expected,
                    got = %got,
                    size = self.read,
                    "a stored attachment no longer matches its digest"
                );
                return Err(Error::new(
                    Reason::DigestMismatch,
                    "the stored attachment no longer matches the digest it was accepted with; do not use the bytes received, the operators have been alerted",
                ));
            }
            return Ok(None);
        }
        buf.truncate(n);
        hasher.update(&buf);
        self.read += n as u64;
        Ok(Some(buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(data: &[u8]) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(digest::digest(&digest::SHA256, data).as_ref());
        out
    }

    #[tokio::test]
    async fn write_commit_read_round_trip() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let store = BlobStore::open(dir.path()).await?;
        let mut w = store.create().await?;
        w.write(b"hello ").await?;
        w.write(b"world").await?;
        let sealed = w.seal().await?;
        assert_eq!(sealed.sha256, sha(b"hello world"));
        assert_eq!(sealed.size, 11);
        let hex = hex::encode(sealed.sha256);
        assert!(store.commit(sealed).await?);
        let mut r = store.open_blob(&hex, 11).await?;
        let mut all = Vec::new();
        while let Some(c) = r.next_chunk(4).await? {
            all.extend(c);
        }
        assert_eq!(all, b"hello world");
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path().join("tmp"))?.count(), 0);
        Ok(())
    }

    #[tokio::test]
    async fn dropped_writer_leaves_nothing() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let store = BlobStore::open(dir.path()).await?;
        let mut w = store.create().await?;
        w.write(b"partial").await?;
        drop(w);
        assert_eq!(std::fs::read_dir(dir.path().join("tmp"))?.count(), 0);
        let sealed = {
            let mut w = store.create().await?;
            w.write(b"x").await?;
            w.seal().await?
        };
        drop(sealed);
        assert_eq!(std::fs::read_dir(dir.path().join("tmp"))?.count(), 0);
        Ok(())
    }

    #[tokio::test]
    async fn edited_blob_is_detected_on_read() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let store = BlobStore::open(dir.path()).await?;
        let mut w = store.create().await?;
        w.write(b"original bytes").await?;
        let sealed = w.seal().await?;
        let hex = hex::encode(sealed.sha256);
        store.commit(sealed).await?;
        std::fs::write(store.path_of(&hex), b"0riginal bytes")?;
        let mut r = store.open_blob(&hex, 14).await?;
        let err = loop {
            match r.next_chunk(1024).await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("tampering was not detected"),
                Err(e) => break e,
            }
        };
        assert_eq!(err.reason(), Reason::DigestMismatch);
        Ok(())
    }

    #[tokio::test]
    async fn open_cleans_leftovers_and_identical_bytes_are_stored_once() -> Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir_all(dir.path().join("tmp"))?;
        std::fs::write(dir.path().join("tmp/old.part"), b"crash leftover")?;
        let store = BlobStore::open(dir.path()).await?;
        assert_eq!(std::fs::read_dir(dir.path().join("tmp"))?.count(), 0);
        for expect_new in [true, false] {
            let mut w = store.create().await?;
            w.write(b"same").await?;
            assert_eq!(store.commit(w.seal().await?).await?, expect_new);
        }
        assert_eq!(std::fs::read_dir(dir.path().join("tmp"))?.count(), 0);
        Ok(())
    }
}

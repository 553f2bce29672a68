//! Content-addressed attachment storage under `storage.path`, or in the
//! PostgreSQL database.
//!
//! Bytes are written to `tmp/` while they stream in, hashed on the way, and
//! fsynced; only an attachment whose size and SHA-256 match the signed
//! envelope is moved to `blobs/<aa>/<sha256>` (rename, then fsync of the
//! directory) — before the database transaction that makes the message
//! visible commits. A crash in between leaves at worst an unreferenced blob,
//! never a referenced blob that is missing.
//!
//! # In the database
//!
//! With [`BlobStore::open_in_database`] (`storage.backend = "database"`)
//! replicas on one PostgreSQL database share their attachments through it
//! and need no shared filesystem. Uploads still stream to the replica's own
//! `tmp/` and are sealed there as above; the commit copies that file,
//! [`DB_CHUNK_BYTES`] at a time, into the rows of `stored_blob_chunks` and
//! its row in `stored_blobs`, in one transaction committed before the
//! message's (the same order as the rename). The rows hold exactly the
//! bytes the file would have held, header and key id included, so
//! encryption at rest, the digest check on every read and key rotation
//! are the same; the key checks are rows of `storage_keychecks`. Readers
//! fetch one chunk at a time. Random access is only ever needed on
//! temporary files (the PDF check), which stay on the local disk.
//!
//! # Encryption at rest
//!
//! With keys ([`BlobStore::open_with`]) every new blob is sealed with
//! AES-256-GCM in the STREAM construction: the plaintext is cut into
//! [`SEGMENT_BYTES`] segments, each sealed under the nonce
//! `random per-blob prefix ‖ segment counter`, with the blob's header, the
//! counter and a last-segment flag as associated data — so a segment edited,
//! moved, dropped from the end or copied from another blob does not open.
//! The blob file starts with a small header (magic, version, segment size,
//! key id, nonce prefix): the key id stored beside the bytes is what makes
//! key rotation possible ([`BlobStore::rotate_key`]). The database never
//! holds a key.
//!
//! The content address stays the SHA-256 of the plaintext, so identical
//! attachments are still stored once and the digests the senders signed are
//! what is checked on every read. Blobs written before encryption was turned
//! on stay readable: a plaintext blob is exactly as long as the attachment,
//! an encrypted one is always longer.
//!
//! A `keycheck/<key id>` file, sealed with that key, lets the store refuse
//! to start with a wrong key instead of failing on the first fetch.
//!
//! Architecture invariant: memory per stream is one chunk (one segment when
//! encrypted, plus one database chunk with the database backend), whatever
//! the size of the attachment.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement, TransactionTrait, Value};
use tokio::fs;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWrite, AsyncWriteExt, BufWriter};

use crate::error::{Error, OrDb, OrErr, Reason, Result};

/// Plaintext bytes per sealed segment: what a reader holds at once.
pub const SEGMENT_BYTES: usize = 1 << SEGMENT_LOG2;
const SEGMENT_LOG2: u8 = 16;
/// Segment sizes a header may name (4 KiB to 1 MiB): more would let a
/// crafted header make a reader allocate without bound.
const SEGMENT_LOG2_RANGE: std::ops::RangeInclusive<u8> = 12..=20;
const TAG_BYTES: usize = 16;
/// Starts every encrypted blob. The first byte is not ASCII, so no text
/// attachment begins this way by accident.
const MAGIC: [u8; 8] = *b"\x89LTBLOB\n";
const FORMAT_VERSION: u8 = 1;
const NONCE_PREFIX_BYTES: usize = 8;
const MAX_KEY_ID: usize = 64;
/// Longest possible header: magic, version, segment size, id length, id,
/// nonce prefix.
const MAX_HEADER: usize = 8 + 3 + MAX_KEY_ID + NONCE_PREFIX_BYTES;
const KEYCHECK_DIR: &str = "keycheck";
const KEYCHECK_PLAINTEXT: &[u8] = b"lienthong storage key check v1";
/// A file of `tmp/` left untouched this long is a leftover of a crash. An
/// upload writes to its file every few seconds (one that pauses longer than
/// `limits.idle_stream_secs`, a minute by default, is given up), and a file
/// kept for a check is read within the request.
const LEFTOVER_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);
/// Suffix of the temporary file `rotate-key` writes beside a blob.
const REKEY_SUFFIX: &str = ".rekey";
/// Bytes of the stored form per row of `stored_blob_chunks`: what a reader
/// or a commit holds of it at once. Large enough that a chunk's round trip
/// is small beside its transfer, small enough for many streams at a time.
pub const DB_CHUNK_BYTES: usize = 256 * 1024;

// ---------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------

#[derive(Clone)]
struct StorageKey {
    id: String,
    key: LessSafeKey,
}

/// The storage encryption keys: the first is the current one (new blobs),
/// the others only open what they sealed before a rotation.
#[derive(Clone)]
pub struct EncryptionKeys {
    keys: Arc<Vec<StorageKey>>,
    source: String,
}

impl std::fmt::Debug for EncryptionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Ids and where they came from; never key material.
        f.debug_struct("EncryptionKeys")
            .field("ids", &self.ids())
            .field("source", &self.source)
            .finish()
    }
}

impl EncryptionKeys {
    /// Reads `KEYID:BASE64` entries (32-byte keys) separated by new lines,
    /// commas or spaces; `#` starts a comment. `source` names where the text
    /// came from in errors, which never repeat a key.
    pub fn parse(text: &str, source: &str) -> Result<EncryptionKeys> {
        let refuse = |msg: String| Error::malformed(format!("{source}: {msg}"));
        let mut keys: Vec<StorageKey> = Vec::new();
        let entries = text
            .lines()
            .map(|l| l.split('#').next().unwrap_or_default())
            .flat_map(|l| l.split(|c: char| c == ',' || c == ';' || c.is_whitespace()))
            .filter(|t| !t.is_empty());
        for (n, entry) in entries.enumerate() {
            let Some((id, b64)) = entry.split_once(':') else {
                return Err(refuse(format!(
                    "entry {} is not KEYID:BASE64; write one key per line as `k2026:` followed by \
                     32 random bytes in base64 (`lienthong storage new-key` prints one)",
                    n + 1
                )));
            };
            if !valid_key_id(id) {
                return Err(refuse(format!(
                    "the key id of entry {} is not 1 to {MAX_KEY_ID} letters, digits, '.', '_' or \
                     '-'",
                    n + 1
                )));
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(b64))
                .map_err(|_| refuse(format!("the key {id} is not base64")))?;
            if bytes.len() != 32 {
                return Err(refuse(format!(
                    "the key {id} is {} bytes; AES-256 needs exactly 32 \
                     (`lienthong storage new-key` prints one)",
                    bytes.len()
                )));
            }
            if keys.iter().any(|k| k.id == id) {
                return Err(refuse(format!(
                    "the key id {id} appears twice; give every key its own id"
                )));
            }
            let key = UnboundKey::new(&AES_256_GCM, &bytes)
                .map_err(|_| refuse(format!("the key {id} cannot be used")))?;
            keys.push(StorageKey {
                id: id.to_owned(),
                key: LessSafeKey::new(key),
            });
        }
        if keys.is_empty() {
            return Err(refuse(
                "holds no key; write `KEYID:BASE64` lines, the current key first \
                 (`lienthong storage new-key` prints one)"
                    .to_owned(),
            ));
        }
        Ok(EncryptionKeys {
            keys: Arc::new(keys),
            source: source.to_owned(),
        })
    }

    /// Reads a key file (see [`EncryptionKeys::parse`]). Warns when other
    /// users may read it.
    pub fn from_file(path: &Path) -> Result<EncryptionKeys> {
        let text = std::fs::read_to_string(path).or_err_with(Reason::Malformed, |e| {
            format!(
                "storage.encryption_key_file: cannot read {}: {e}",
                path.display()
            )
        })?;
        #[cfg(unix)]
        if let Ok(m) = std::fs::metadata(path) {
            use std::os::unix::fs::PermissionsExt;
            if m.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    file = %path.display(),
                    "the storage key file can be read by other users; make it readable by the gateway's user only (chmod 600)"
                );
            }
        }
        EncryptionKeys::parse(
            &text,
            &format!("storage.encryption_key_file {}", path.display()),
        )
    }

    /// A new random key as a key-file line, `ID:BASE64`.
    pub fn generate_line(id: &str) -> Result<String> {
        if !valid_key_id(id) {
            return Err(Error::malformed(format!(
                "the key id must be 1 to {MAX_KEY_ID} letters, digits, '.', '_' or '-'"
            )));
        }
        let mut key = [0u8; 32];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| rng_error())?;
        Ok(format!(
            "{id}:{}",
            base64::engine::general_purpose::STANDARD.encode(key)
        ))
    }

    /// The id new blobs are sealed under.
    pub fn current_id(&self) -> &str {
        self.keys.first().map(|k| k.id.as_str()).unwrap_or_default()
    }

    pub fn ids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.id.as_str()).collect()
    }

    /// Where the keys came from (a file, or the environment).
    pub fn source(&self) -> &str {
        &self.source
    }

    fn current(&self) -> Option<&StorageKey> {
        self.keys.first()
    }

    fn get(&self, id: &str) -> Option<&StorageKey> {
        self.keys.iter().find(|k| k.id == id)
    }
}

fn valid_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_KEY_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn rng_error() -> Error {
    Error::new(
        Reason::Unavailable,
        "the operating system's random number generator failed; try again",
    )
}

fn crypto_error() -> Error {
    Error::new(
        Reason::Unavailable,
        "encrypting an attachment failed in the cryptographic library; try again",
    )
}

// ---------------------------------------------------------------------------
// The encrypted blob format
// ---------------------------------------------------------------------------

/// The header of an encrypted blob; its bytes are authenticated with every
/// segment.
#[derive(Debug, Clone)]
struct Header {
    bytes: Vec<u8>,
    key_id: String,
    prefix: [u8; NONCE_PREFIX_BYTES],
    segment: usize,
}

impl Header {
    fn new(key_id: &str) -> Result<Header> {
        let mut prefix = [0u8; NONCE_PREFIX_BYTES];
        SystemRandom::new()
            .fill(&mut prefix)
            .map_err(|_| rng_error())?;
        let id_len = u8::try_from(key_id.len()).map_err(|_| crypto_error())?;
        let mut bytes = Vec::with_capacity(MAX_HEADER);
        bytes.extend_from_slice(&MAGIC);
        bytes.push(FORMAT_VERSION);
        bytes.push(SEGMENT_LOG2);
        bytes.push(id_len);
        bytes.extend_from_slice(key_id.as_bytes());
        bytes.extend_from_slice(&prefix);
        Ok(Header {
            bytes,
            key_id: key_id.to_owned(),
            prefix,
            segment: SEGMENT_BYTES,
        })
    }

    /// The header at the start of `buf`, if `buf` starts with one.
    fn parse(buf: &[u8]) -> Option<Header> {
        let rest = buf.strip_prefix(&MAGIC)?;
        let (&[version, seg_log2, id_len], rest) = rest.split_first_chunk::<3>()?;
        if version != FORMAT_VERSION || !SEGMENT_LOG2_RANGE.contains(&seg_log2) {
            return None;
        }
        let id_len = usize::from(id_len);
        let id = std::str::from_utf8(rest.get(..id_len)?).ok()?;
        if !valid_key_id(id) {
            return None;
        }
        let prefix: [u8; NONCE_PREFIX_BYTES] = rest
            .get(id_len..id_len + NONCE_PREFIX_BYTES)?
            .try_into()
            .ok()?;
        let len = MAGIC.len() + 3 + id_len + NONCE_PREFIX_BYTES;
        Some(Header {
            bytes: buf.get(..len)?.to_vec(),
            key_id: id.to_owned(),
            prefix,
            segment: 1usize << seg_log2,
        })
    }

    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn nonce(&self, counter: u32) -> Nonce {
        let mut n = [0u8; NONCE_LEN];
        n[..NONCE_PREFIX_BYTES].copy_from_slice(&self.prefix);
        n[NONCE_PREFIX_BYTES..].copy_from_slice(&counter.to_be_bytes());
        Nonce::assume_unique_for_key(n)
    }

    fn aad(&self, counter: u32, last: bool) -> Vec<u8> {
        let mut aad = Vec::with_capacity(self.bytes.len() + 5);
        aad.extend_from_slice(&self.bytes);
        aad.extend_from_slice(&counter.to_be_bytes());
        aad.push(u8::from(last));
        aad
    }

    /// (segments, ciphertext length of the last one, plaintext length) of a
    /// file of `file_len` bytes; `None` when no blob has that length.
    fn layout(&self, file_len: u64) -> Option<(u64, usize, u64)> {
        let ct = file_len.checked_sub(self.len())?;
        let full = (self.segment + TAG_BYTES) as u64;
        if ct < TAG_BYTES as u64 {
            return None;
        }
        let segments = ct.div_ceil(full);
        let last = ct - (segments - 1) * full;
        if last < TAG_BYTES as u64 || segments > u64::from(u32::MAX) + 1 {
            return None;
        }
        Some((segments, last as usize, ct - segments * TAG_BYTES as u64))
    }
}

/// The length of the encrypted file of a `plaintext`-byte blob under a
/// header of `header_len` bytes, with the current segment size.
fn encrypted_len(header_len: u64, plaintext: u64) -> u64 {
    let segments = plaintext.div_ceil(SEGMENT_BYTES as u64).max(1);
    header_len + plaintext + segments * TAG_BYTES as u64
}

/// Seals a stream of plaintext segment by segment. The sealing itself is
/// synchronous; `feed`/`finish` write to async files, `feed_blocking`/
/// `finish_blocking` to blocking ones.
struct Sealer {
    key: LessSafeKey,
    header: Header,
    counter: u32,
    buf: Vec<u8>,
    /// `buf` holds a sealed segment already written out.
    sealed: bool,
}

impl Sealer {
    fn new(key: &StorageKey) -> Result<Sealer> {
        let header = Header::new(&key.id)?;
        Ok(Sealer {
            key: key.key.clone(),
            buf: Vec::with_capacity(header.segment + TAG_BYTES),
            header,
            counter: 0,
            sealed: false,
        })
    }

    async fn start<W: AsyncWrite + Unpin>(&self, out: &mut W) -> Result<()> {
        out.write_all(&self.header.bytes).await?;
        Ok(())
    }

    /// Buffers `data`, sealing every full segment that is known not to be
    /// the last (more bytes follow it).
    async fn feed<W: AsyncWrite + Unpin>(&mut self, mut data: &[u8], out: &mut W) -> Result<()> {
        while let Some(segment) = self.next_sealed(&mut data)? {
            out.write_all(segment).await?;
        }
        Ok(())
    }

    /// Seals what is buffered as the last segment (empty for an empty blob).
    async fn finish<W: AsyncWrite + Unpin>(&mut self, out: &mut W) -> Result<()> {
        out.write_all(self.seal_last()?).await?;
        Ok(())
    }

    fn feed_blocking<W: std::io::Write>(&mut self, mut data: &[u8], out: &mut W) -> Result<()> {
        while let Some(segment) = self.next_sealed(&mut data)? {
            out.write_all(segment)?;
        }
        Ok(())
    }

    fn finish_blocking<W: std::io::Write>(&mut self, out: &mut W) -> Result<()> {
        out.write_all(self.seal_last()?)?;
        Ok(())
    }

    /// Takes bytes from the front of `data` into the segment buffer; when a
    /// full segment is buffered and more bytes follow it, seals it and
    /// returns it to be written out. `None`: all of `data` is buffered.
    fn next_sealed(&mut self, data: &mut &[u8]) -> Result<Option<&[u8]>> {
        self.take_sealed();
        while !data.is_empty() {
            if self.buf.len() == self.header.segment {
                self.seal_segment(false)?;
                return Ok(Some(&self.buf));
            }
            let take = (self.header.segment - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            *data = &data[take..];
        }
        Ok(None)
    }

    fn seal_last(&mut self) -> Result<&[u8]> {
        self.take_sealed();
        self.seal_segment(true)?;
        Ok(&self.buf)
    }

    fn take_sealed(&mut self) {
        if self.sealed {
            self.buf.clear();
            self.sealed = false;
        }
    }

    fn seal_segment(&mut self, last: bool) -> Result<()> {
        let aad = self.header.aad(self.counter, last);
        self.key
            .seal_in_place_append_tag(
                self.header.nonce(self.counter),
                Aad::from(aad.as_slice()),
                &mut self.buf,
            )
            .map_err(|_| crypto_error())?;
        self.sealed = true;
        self.counter = self.counter.checked_add(1).ok_or_else(|| {
            Error::new(
                Reason::SizeLimit,
                "the attachment is too large for the encrypted store",
            )
        })?;
        Ok(())
    }
}

/// Why a segment could not be opened.
#[derive(Debug)]
enum OpenFailure {
    /// The bytes do not authenticate: edited, reordered, truncated.
    Tampered {
        segment: u64,
    },
    Io(Error),
}

/// What a stored blob's bytes are read from: its file, or its chunk rows.
trait StoredRead {
    /// Up to `buf.len()` bytes; 0 at the end.
    async fn read_some(&mut self, buf: &mut [u8]) -> Result<usize>;

    /// Fills `buf`; `false` when the bytes end first.
    async fn fill(&mut self, buf: &mut [u8]) -> Result<bool> {
        let mut at = 0;
        while at < buf.len() {
            let n = self.read_some(&mut buf[at..]).await?;
            if n == 0 {
                return Ok(false);
            }
            at += n;
        }
        Ok(true)
    }
}

impl StoredRead for fs::File {
    async fn read_some(&mut self, buf: &mut [u8]) -> Result<usize> {
        Ok(AsyncReadExt::read(self, buf).await?)
    }
}

/// Opens an encrypted blob segment by segment.
struct Opener {
    key: LessSafeKey,
    header: Header,
    counter: u32,
    segments: u64,
    last_len: usize,
    buf: Vec<u8>,
    pos: usize,
}

impl Opener {
    fn new(key: &StorageKey, header: Header, segments: u64, last_len: usize) -> Opener {
        Opener {
            key: key.key.clone(),
            buf: Vec::with_capacity(header.segment + TAG_BYTES),
            header,
            counter: 0,
            segments,
            last_len,
            pos: 0,
        }
    }

    /// Reads and opens the next segment into `buf`; `false` after the last.
    async fn next_segment<R: StoredRead>(
        &mut self,
        file: &mut R,
    ) -> std::result::Result<bool, OpenFailure> {
        let index = u64::from(self.counter);
        if index >= self.segments {
            return Ok(false);
        }
        let last = index + 1 == self.segments;
        let len = if last {
            self.last_len
        } else {
            self.header.segment + TAG_BYTES
        };
        self.buf.resize(len, 0);
        match file.fill(&mut self.buf).await {
            Ok(true) => {}
            // The file shrank under us: as good as truncated.
            Ok(false) => return Err(OpenFailure::Tampered { segment: index }),
            Err(e) => return Err(OpenFailure::Io(e)),
        }
        let aad = self.header.aad(self.counter, last);
        let plain = self
            .key
            .open_in_place(
                self.header.nonce(self.counter),
                Aad::from(aad.as_slice()),
                &mut self.buf,
            )
            .map_err(|_| OpenFailure::Tampered { segment: index })?
            .len();
        self.buf.truncate(plain);
        self.pos = 0;
        self.counter = self.counter.wrapping_add(1);
        Ok(true)
    }
}

/// Reads the header of an open file, if it has one, and leaves the file
/// positioned after it.
async fn read_header(file: &mut fs::File, file_len: u64) -> Result<Option<Header>> {
    let mut buf = vec![0u8; MAX_HEADER.min(usize::try_from(file_len).unwrap_or(MAX_HEADER))];
    file.seek(SeekFrom::Start(0)).await?;
    file.read_exact(&mut buf).await?;
    let header = Header::parse(&buf);
    let at = header.as_ref().map(Header::len).unwrap_or(0);
    file.seek(SeekFrom::Start(at)).await?;
    Ok(header)
}

// ---------------------------------------------------------------------------
// The store
// ---------------------------------------------------------------------------

/// The attachment store: its local root (`tmp/`, and `blobs/` when the
/// blobs are files), its keys, and where stored blobs live.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
    keys: Option<EncryptionKeys>,
    place: Place,
    /// Starts the names of this process's temporary files: its replica's
    /// name once [claimed](BlobStore::claim_temp_files), so that a restart
    /// removes what it left, and only that, from a `tmp/` other processes
    /// may share.
    temp_prefix: String,
}

/// Where stored blobs live. Temporary files are always under the root.
#[derive(Debug, Clone)]
enum Place {
    /// `blobs/<aa>/<sha256>` and `keycheck/<key id>` under the root.
    Filesystem,
    /// Rows of `stored_blobs`, `stored_blob_chunks` and `storage_keychecks`
    /// (PostgreSQL only).
    Database(DatabaseConnection),
}

impl BlobStore {
    /// Opens (creating if needed) the store and removes temporary files left
    /// by a crash: they belonged to submissions that were never acknowledged.
    /// Without keys: new blobs are written in plaintext and encrypted ones
    /// cannot be read; the gateway itself opens the store with
    /// [`BlobStore::open_with`].
    pub async fn open(root: impl Into<PathBuf>) -> Result<BlobStore> {
        BlobStore::open_dirs(root.into(), None, true).await
    }

    /// A handle on the store that touches nothing on disk: for tools that
    /// run beside a serving gateway (`lienthong trace`) and must not remove
    /// the temporary files of uploads in progress.
    pub fn unopened(root: impl Into<PathBuf>) -> BlobStore {
        BlobStore::unopened_with(root, None)
    }

    /// [`BlobStore::unopened`] with the storage keys: for tools beside a
    /// serving gateway that write [temporary files](BlobStore::temp_file),
    /// which must be sealed like the gateway's.
    pub fn unopened_with(root: impl Into<PathBuf>, keys: Option<EncryptionKeys>) -> BlobStore {
        BlobStore {
            root: root.into(),
            keys,
            place: Place::Filesystem,
            temp_prefix: String::new(),
        }
    }

    /// Opens the store with the storage encryption keys from the
    /// configuration (`None`: no encryption), and refuses to open it with the
    /// wrong ones: a key whose check file does not open, a key id the store
    /// has used that the keys lack, or no keys for a store that holds
    /// encrypted blobs — each named in the error.
    pub async fn open_with(
        root: impl Into<PathBuf>,
        keys: Option<EncryptionKeys>,
    ) -> Result<BlobStore> {
        let store = BlobStore::open_dirs(root.into(), keys, true).await?;
        store.check_keys().await?;
        Ok(store)
    }

    /// [`BlobStore::open_with`], keeping the stored blobs and the key
    /// checks in `store`'s database instead of under `root`, which holds
    /// only this process's temporary files (every replica has its own).
    /// PostgreSQL only: SQLite has one process, which needs no sharing, and
    /// would hold the attachments in its one file.
    pub async fn open_in_database(
        root: impl Into<PathBuf>,
        keys: Option<EncryptionKeys>,
        store: &crate::Store,
    ) -> Result<BlobStore> {
        let db = store.connection();
        if db.get_database_backend() != DbBackend::Postgres {
            return Err(Error::malformed(
                "storage.backend = \"database\" keeps attachments in PostgreSQL, and \
                 database.url is SQLite: use storage.backend = \"filesystem\" with SQLite (one \
                 process needs no shared store), or move to PostgreSQL",
            ));
        }
        let mut blobs = BlobStore::open_dirs(root.into(), keys, false).await?;
        blobs.place = Place::Database(db.clone());
        blobs.check_keys().await?;
        Ok(blobs)
    }

    /// Whether stored blobs live in the database.
    pub fn in_database(&self) -> bool {
        matches!(self.place, Place::Database(_))
    }

    /// The store as errors and logs name it.
    fn describe(&self) -> String {
        match self.place {
            Place::Filesystem => format!("the attachment store {}", self.root.display()),
            Place::Database(_) => "the attachment store in the database".to_owned(),
        }
    }

    async fn open_dirs(
        root: PathBuf,
        keys: Option<EncryptionKeys>,
        files: bool,
    ) -> Result<BlobStore> {
        if files {
            fs::create_dir_all(root.join("blobs")).await?;
        }
        let tmp = root.join("tmp");
        if fs::try_exists(&tmp).await? {
            let mut dir = fs::read_dir(&tmp).await?;
            while let Some(entry) = dir.next_entry().await? {
                // Only leftovers: `tmp/` may be shared with other processes
                // (replicas on one shared store, `storage rotate-key` beside
                // a running gateway), whose uploads in progress are written
                // to every few seconds.
                let untouched = match entry.metadata().await.and_then(|m| m.modified()) {
                    Ok(at) => at.elapsed().unwrap_or_default(),
                    Err(_) => continue,
                };
                if untouched < LEFTOVER_AFTER {
                    continue;
                }
                // A leftover that cannot be removed is harmless; say so and go on.
                if let Err(e) = fs::remove_file(entry.path()).await {
                    tracing::warn!(path = %entry.path().display(), error = %e, "could not remove a leftover temporary file");
                }
            }
        }
        fs::create_dir_all(&tmp).await?;
        Ok(BlobStore {
            root,
            keys,
            place: Place::Filesystem,
            temp_prefix: String::new(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The id of the key new blobs are sealed under; `None`: plaintext.
    pub fn encryption_key_id(&self) -> Option<&str> {
        self.keys.as_ref().map(EncryptionKeys::current_id)
    }

    /// Where the blob with this SHA-256 (lowercase hex) lives.
    pub fn path_of(&self, sha256_hex: &str) -> PathBuf {
        let prefix = sha256_hex.get(..2).unwrap_or("xx");
        self.root.join("blobs").join(prefix).join(sha256_hex)
    }

    fn keycheck_path(&self, id: &str) -> PathBuf {
        self.root.join(KEYCHECK_DIR).join(id)
    }

    /// The key ids that have a check file (or row): every id the store has
    /// sealed blobs under since its last completed rotation.
    async fn keycheck_ids(&self) -> Result<Vec<String>> {
        if let Place::Database(db) = &self.place {
            let rows = db
                .query_all_raw(pg(
                    "SELECT key_id FROM storage_keychecks ORDER BY key_id",
                    [],
                ))
                .await
                .or_db()?;
            return rows
                .iter()
                .map(|r| r.try_get::<String>("", "key_id").or_db())
                .collect();
        }
        let dir = self.root.join(KEYCHECK_DIR);
        let mut ids = Vec::new();
        if !fs::try_exists(&dir).await? {
            return Ok(ids);
        }
        let mut rd = fs::read_dir(&dir).await?;
        while let Some(e) = rd.next_entry().await? {
            if let Some(name) = e.file_name().to_str()
                && valid_key_id(name)
            {
                ids.push(name.to_owned());
            }
        }
        ids.sort();
        Ok(ids)
    }

    async fn check_keys(&self) -> Result<()> {
        let existing = self.keycheck_ids().await?;
        let Some(keys) = &self.keys else {
            if existing.is_empty() {
                return Ok(());
            }
            return Err(Error::malformed(format!(
                "{} holds attachments encrypted with key {}, but no storage encryption key is \
                 configured; set storage.encryption_key_file (or \
                 LIENTHONG_STORAGE__ENCRYPTION_KEY) to the keys used before",
                self.describe(),
                existing.join(", ")
            )));
        };
        for id in &existing {
            if keys.get(id).is_none() {
                return Err(Error::malformed(format!(
                    "{} holds attachments encrypted with key {id}, which {} does not hold; put \
                     key {id} back in it (an old key may be removed only after `lienthong \
                     storage rotate-key` has re-encrypted everything under the current key)",
                    self.describe(),
                    keys.source()
                )));
            }
        }
        for k in keys.keys.iter() {
            if let Some(sealed) = self.keycheck(&k.id).await?
                && !keycheck_opens(k, sealed)
            {
                let check = match self.place {
                    Place::Filesystem => {
                        format!("its check file {}", self.keycheck_path(&k.id).display())
                    }
                    Place::Database(_) => "its row in storage_keychecks".to_owned(),
                };
                return Err(Error::malformed(format!(
                    "the key {} in {} is not the key {} was encrypted with under that id ({check} \
                     does not open): a wrong or mistyped key; give the key file used before",
                    k.id,
                    keys.source(),
                    self.describe(),
                )));
            }
        }
        self.ensure_keycheck().await
    }

    /// The sealed key check of key `id`, if the store has one.
    async fn keycheck(&self, id: &str) -> Result<Option<Vec<u8>>> {
        match &self.place {
            Place::Filesystem => match fs::read(self.keycheck_path(id)).await {
                Ok(sealed) => Ok(Some(sealed)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e.into()),
            },
            Place::Database(db) => db
                .query_one_raw(pg(
                    "SELECT sealed FROM storage_keychecks WHERE key_id = $1",
                    [id.into()],
                ))
                .await
                .or_db()?
                .map(|r| r.try_get::<Vec<u8>>("", "sealed"))
                .transpose()
                .or_db(),
        }
    }

    /// Makes sure the current key has its check file. Called at open and
    /// after every new encrypted blob, so a rotation that retired the key
    /// while this process still wrote with it does not go unnoticed at the
    /// next start.
    async fn ensure_keycheck(&self) -> Result<()> {
        let Some(k) = self.keys.as_ref().and_then(EncryptionKeys::current) else {
            return Ok(());
        };
        if let Place::Database(db) = &self.place {
            db.execute_raw(keycheck_insert(k)?).await.or_db()?;
            return Ok(());
        }
        let path = self.keycheck_path(&k.id);
        if fs::try_exists(&path).await? {
            return Ok(());
        }
        fs::create_dir_all(self.root.join(KEYCHECK_DIR)).await?;
        write_atomically(&path, &keycheck_seal(k)?).await
    }

    /// A new file name under `tmp/`, whose leftovers every start removes.
    fn temp_path(&self) -> PathBuf {
        self.root.join("tmp").join(format!(
            "{}{}.part",
            self.temp_prefix,
            uuid::Uuid::new_v4().simple()
        ))
    }

    /// Names this process's temporary files after `owner` (its replica's
    /// name, unique among live processes) and removes every temporary file
    /// an earlier process of that name left, however recent: a crash's
    /// leftovers go at the restart. Files of other owners are left to
    /// their own restarts, or to the hour after which any start removes
    /// them.
    pub async fn claim_temp_files(&mut self, owner: &str) -> Result<()> {
        let safe: String = owner
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.temp_prefix = format!("{safe}~");
        let tmp = self.root.join("tmp");
        fs::create_dir_all(&tmp).await?;
        let mut dir = fs::read_dir(&tmp).await?;
        while let Some(entry) = dir.next_entry().await? {
            if !entry
                .file_name()
                .to_string_lossy()
                .starts_with(&self.temp_prefix)
            {
                continue;
            }
            if let Err(e) = fs::remove_file(entry.path()).await {
                tracing::warn!(path = %entry.path().display(), error = %e, "could not remove a leftover temporary file");
            }
        }
        Ok(())
    }

    /// The sealer for a new file: `None` when the store keeps plaintext.
    fn new_sealer(&self) -> Result<Option<Sealer>> {
        self.keys
            .as_ref()
            .and_then(EncryptionKeys::current)
            .map(Sealer::new)
            .transpose()
    }

    /// Starts a new temporary blob.
    pub async fn create(&self) -> Result<BlobWriter> {
        let path = self.temp_path();
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await?;
        let guard = TempFile(Some(path));
        let mut file = BufWriter::with_capacity(256 * 1024, file);
        let sealer = self.new_sealer()?;
        if let Some(s) = &sealer {
            s.start(&mut file).await?;
        }
        Ok(Writing::new(file, guard, sealer))
    }

    /// Moves a verified temporary blob into place. Returns whether the blob
    /// was new (false when identical bytes were already stored).
    pub async fn commit(&self, blob: SealedBlob) -> Result<bool> {
        if let Place::Database(db) = &self.place {
            return self.commit_rows(db, blob).await;
        }
        let hex = hex::encode(blob.sha256);
        let dest = self.path_of(&hex);
        let Some(parent) = dest.parent() else {
            return Err(Error::new(
                Reason::Unavailable,
                "the attachment store path is not usable",
            ));
        };
        fs::create_dir_all(parent).await?;
        if touch(&dest).await? {
            // Content-addressed: the same bytes are already durable. The
            // touch tells the archive's purge they were just used.
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
        if blob.encrypted {
            self.ensure_keycheck().await?;
        }
        Ok(true)
    }

    /// Copies a verified temporary blob into its rows, one chunk in memory
    /// at a time, in one transaction: its `stored_blobs` row is never seen
    /// without all its chunks. The row goes in first, so that two replicas
    /// committing the same bytes at once queue on it and the second finds
    /// them stored.
    async fn commit_rows(&self, db: &DatabaseConnection, blob: SealedBlob) -> Result<bool> {
        let hex = hex::encode(blob.sha256);
        // Most repeats are found without a transaction; finding one marks
        // it used, for the archive's purge (see `remove_unused`).
        if self.touch_row(db, &hex).await? {
            return Ok(false);
        }
        let Some(src) = blob.guard.0.as_ref() else {
            return Err(Error::new(
                Reason::Unavailable,
                "a temporary attachment was lost before it could be stored",
            ));
        };
        let mut file = fs::File::open(src).await?;
        let stored_size = file.metadata().await?.len();
        let mut head = vec![0u8; MAX_HEADER];
        let got = fill_up(&mut file, &mut head).await?;
        file.seek(SeekFrom::Start(0)).await?;
        let key_id = if blob.encrypted {
            let Some(h) = Header::parse(&head[..got]) else {
                return Err(Error::new(
                    Reason::Unavailable,
                    "a temporary attachment has no readable header",
                ));
            };
            Some(h.key_id)
        } else {
            None
        };
        let key = key_id.as_deref().map(|id| self.key_for(id)).transpose()?;
        let chunks = stored_size.div_ceil(DB_CHUNK_BYTES as u64);
        let txn = db.begin().await.or_db()?;
        let inserted = txn
            .execute_raw(pg(
                "INSERT INTO stored_blobs (sha256, size, stored_size, key_id, chunks, stored_at, \
                 last_seen_at) VALUES ($1, $2, $3, $4, $5, $6, $6) ON CONFLICT (sha256) DO NOTHING",
                [
                    hex.as_str().into(),
                    size_value(blob.size)?,
                    size_value(stored_size)?,
                    key_id.clone().into(),
                    size_value(chunks)?,
                    crate::store::now_micros().into(),
                ],
            ))
            .await
            .or_db()?
            .rows_affected();
        if inserted == 0 {
            // Committed by another process since the look above.
            txn.rollback().await.or_db()?;
            if self.touch_row(db, &hex).await? {
                return Ok(false);
            }
            return Err(Error::new(
                Reason::Unavailable,
                "an attachment's stored copy was removed while this one was being stored; \
                 nothing was accepted, send it again",
            ));
        }
        write_chunks(&txn, &hex, &mut file, stored_size).await?;
        // With the blob, so that no blob is ever under a key without its
        // check, even one a rotation retired while this process wrote.
        if let Some(k) = key {
            txn.execute_raw(keycheck_insert(k)?).await.or_db()?;
        }
        txn.commit().await.or_db()?;
        Ok(true)
    }

    /// Marks a stored blob's row used now; false when there is none.
    async fn touch_row(&self, db: &DatabaseConnection, hex: &str) -> Result<bool> {
        let n = db
            .execute_raw(pg(
                "UPDATE stored_blobs SET last_seen_at = $2 WHERE sha256 = $1",
                [hex.into(), crate::store::now_micros().into()],
            ))
            .await
            .or_db()?
            .rows_affected();
        Ok(n > 0)
    }

    /// The row of a stored blob: (stored size, chunks, stored at).
    async fn stored_row(&self, db: &DatabaseConnection, hex: &str) -> Result<Option<StoredRow>> {
        let Some(row) = db
            .query_one_raw(pg(
                "SELECT stored_size, chunks, key_id, stored_at FROM stored_blobs \
                 WHERE sha256 = $1",
                [hex.into()],
            ))
            .await
            .or_db()?
        else {
            return Ok(None);
        };
        Ok(Some(StoredRow {
            stored_size: u64::try_from(row.try_get::<i64>("", "stored_size").or_db()?).unwrap_or(0),
            chunks: row.try_get::<i64>("", "chunks").or_db()?,
            key_id: row.try_get::<Option<String>>("", "key_id").or_db()?,
            stored_at: row.try_get::<i64>("", "stored_at").or_db()?,
        }))
    }

    /// Whether the store can take bytes now: a small file written, fsynced
    /// and removed in its temporary folder (a full disk, a read-only or
    /// vanished mount fail here), and with the database backend a database
    /// that takes writes (not a standby).
    pub async fn check_writable(&self) -> Result<()> {
        let path = self
            .root
            .join("tmp")
            .join(format!("probe-{}.part", uuid::Uuid::new_v4().simple()));
        let guard = TempFile(Some(path.clone()));
        let mut f = fs::File::create(&path).await?;
        f.write_all(&[0u8; 4096]).await?;
        f.sync_all().await?;
        drop(f);
        drop(guard);
        if let Place::Database(db) = &self.place {
            let read_only = db
                .query_one_raw(pg(
                    "SELECT current_setting('transaction_read_only') AS ro",
                    [],
                ))
                .await
                .or_db()?
                .map(|r| r.try_get::<String>("", "ro"))
                .transpose()
                .or_db()?;
            if read_only.as_deref() != Some("off") {
                return Err(Error::new(
                    Reason::Unavailable,
                    "the database that keeps the attachments takes no writes now (a standby, or \
                     read-only); nothing was accepted, send it again later",
                ));
            }
        }
        Ok(())
    }

    /// Removes a stored blob (used only to undo a commit whose database
    /// transaction failed, when no other message references the bytes).
    pub async fn remove(&self, sha256_hex: &str) -> Result<()> {
        if let Place::Database(db) = &self.place {
            // Never bytes a committed message names: another replica may
            // have committed one with them since the caller looked.
            let txn = db.begin().await.or_db()?;
            for sql in [
                "DELETE FROM stored_blobs WHERE sha256 = $1 \
                 AND NOT EXISTS (SELECT 1 FROM attachments WHERE sha256 = $1)",
                "DELETE FROM stored_blob_chunks WHERE sha256 = $1 \
                 AND NOT EXISTS (SELECT 1 FROM stored_blobs WHERE sha256 = $1)",
            ] {
                txn.execute_raw(pg(sql, [sha256_hex.into()]))
                    .await
                    .or_db()?;
            }
            return txn.commit().await.or_db();
        }
        match fs::remove_file(self.path_of(sha256_hex)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes a blob that no message names any more (the archive's
    /// purge), unless a submission used it within `quiet_micros`: one that
    /// found it stored a moment ago may be about to commit a reference to
    /// it, and its bytes must stay. Returns whether it was removed.
    ///
    /// A file is first moved aside, so that a submission looking after that
    /// stores its own copy; its modification time (set by every submission
    /// that reused it, see `commit`) then tells whether one looked just
    /// before, and the file goes back if so.
    pub async fn remove_unused(&self, sha256_hex: &str, quiet_micros: i64) -> Result<bool> {
        let since = crate::store::now_micros() - quiet_micros;
        if let Place::Database(db) = &self.place {
            let txn = db.begin().await.or_db()?;
            let gone = txn
                .execute_raw(pg(
                    "DELETE FROM stored_blobs WHERE sha256 = $1 \
                     AND COALESCE(last_seen_at, stored_at) < $2 \
                     AND NOT EXISTS (SELECT 1 FROM attachments WHERE sha256 = $1)",
                    [sha256_hex.into(), since.into()],
                ))
                .await
                .or_db()?
                .rows_affected();
            if gone > 0 {
                txn.execute_raw(pg(
                    "DELETE FROM stored_blob_chunks WHERE sha256 = $1",
                    [sha256_hex.into()],
                ))
                .await
                .or_db()?;
            }
            txn.commit().await.or_db()?;
            return Ok(gone > 0);
        }
        let path = self.path_of(sha256_hex);
        let aside = path.with_extension("purging");
        match fs::rename(&path, &aside).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        let used_at = fs::metadata(&aside)
            .await?
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
            .unwrap_or(i64::MAX);
        if used_at >= since {
            // Used a moment ago: back in place, unless a submission has
            // stored the same bytes again meanwhile.
            if fs::try_exists(&path).await? {
                fs::remove_file(&aside).await?;
            } else {
                fs::rename(&aside, &path).await?;
            }
            return Ok(false);
        }
        fs::remove_file(&aside).await?;
        if let Some(parent) = path.parent() {
            sync_dir(parent).await?;
        }
        Ok(true)
    }

    /// Whether the blob with this SHA-256 is stored (a file's metadata, or
    /// its row), without reading it.
    pub async fn blob_present(&self, sha256_hex: &str) -> Result<bool> {
        match &self.place {
            Place::Filesystem => match fs::metadata(self.path_of(sha256_hex)).await {
                Ok(m) => Ok(m.is_file()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(e.into()),
            },
            Place::Database(db) => Ok(self.stored_row(db, sha256_hex).await?.is_some()),
        }
    }

    /// Where stored blobs live, for a sentence: "the attachment store
    /// PATH", or "the attachment store in the database".
    pub fn place_name(&self) -> String {
        self.describe()
    }

    /// Opens a stored blob for reading, checking its size on the way in.
    pub async fn open_blob(&self, sha256_hex: &str, expected_size: u64) -> Result<BlobReader> {
        let (src, file_len) = match &self.place {
            Place::Filesystem => match fs::File::open(self.path_of(sha256_hex)).await {
                Ok(f) => {
                    let len = f.metadata().await?.len();
                    (Stored::File(f), len)
                }
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
            },
            Place::Database(db) => {
                let Some(row) = self.stored_row(db, sha256_hex).await? else {
                    tracing::error!(
                        sha256 = sha256_hex,
                        "a stored attachment is missing from the database"
                    );
                    return Err(Error::new(
                        Reason::DigestMismatch,
                        "the stored attachment is missing from the gateway's database; the operators have been alerted",
                    ));
                };
                let rows = ChunkRows {
                    db: db.clone(),
                    sha: sha256_hex.to_owned(),
                    chunks: row.chunks,
                    stored_at: row.stored_at,
                    next: 0,
                    buf: Vec::new(),
                    pos: 0,
                };
                (Stored::Rows(Box::new(rows)), row.stored_size)
            }
        };
        let place = match self.place {
            Place::Filesystem => "on disk",
            Place::Database(_) => "in the database",
        };
        let mut reader = BlobReader {
            src,
            expected: sha256_hex.to_owned(),
            expected_size,
            hasher: Some(digest::Context::new(&digest::SHA256)),
            read: 0,
            opener: None,
        };
        // A plaintext blob (written before encryption was turned on) is
        // exactly as long as the attachment; an encrypted one never is.
        if file_len == expected_size {
            return Ok(reader);
        }
        let Some(header) = reader.src.read_header(file_len).await? else {
            tracing::error!(
                sha256 = sha256_hex,
                stored = file_len,
                expected = expected_size,
                "a stored attachment changed size {place}"
            );
            return Err(altered(format!(
                "the stored attachment has {file_len} bytes {place}, not the {expected_size} it \
                 was accepted with"
            )));
        };
        let key = self.key_for(&header.key_id)?;
        match header.layout(file_len) {
            Some((segments, last_len, plain)) if plain == expected_size => {
                reader.opener = Some(Opener::new(key, header, segments, last_len));
                Ok(reader)
            }
            _ => {
                tracing::error!(
                    sha256 = sha256_hex,
                    stored = file_len,
                    expected = encrypted_len(header.len(), expected_size),
                    "a stored encrypted attachment was truncated or extended {place}"
                );
                Err(altered(format!(
                    "the stored attachment was truncated or extended {place} ({file_len} bytes \
                     where {} were written)",
                    encrypted_len(header.len(), expected_size)
                )))
            }
        }
    }

    fn key_for(&self, id: &str) -> Result<&StorageKey> {
        let Some(keys) = &self.keys else {
            tracing::error!(
                key_id = id,
                "a stored attachment is encrypted, but no storage key is configured"
            );
            return Err(Error::new(
                Reason::Unavailable,
                format!(
                    "the stored attachment is encrypted (key {id}) and this gateway process has no \
                     storage key; nothing is wrong with the request: the operators must set \
                     storage.encryption_key_file"
                ),
            ));
        };
        keys.get(id).ok_or_else(|| {
            tracing::error!(
                key_id = id,
                "a stored attachment is encrypted with a key the key file does not hold"
            );
            Error::new(
                Reason::Unavailable,
                format!(
                    "the stored attachment is encrypted with key {id}, which {} does not hold; \
                     nothing is wrong with the request: the operators must put that key back",
                    keys.source()
                ),
            )
        })
    }

    /// Re-encrypts every blob that is not yet under the current key
    /// (plaintext ones included), one at a time: a new file beside the blob,
    /// fsynced, renamed over it, then the directory fsynced. A blob whose
    /// bytes no longer match its name is left as it is and reported. Safe to
    /// interrupt and to run again (blobs already under the current key are
    /// skipped); safe while the gateway runs (a reader keeps the file it
    /// opened). Once nothing is left under an old key, that key's check
    /// file is removed, so the key may leave the key file.
    pub async fn rotate_key(&self) -> Result<RotationReport> {
        let Some(keys) = &self.keys else {
            return Err(Error::malformed(
                "no storage encryption key is configured; set storage.encryption_key_file (the \
                 new key first) before rotating",
            ));
        };
        let Some(current) = keys.current() else {
            return Err(Error::malformed("the storage key file holds no key"));
        };
        self.ensure_keycheck().await?;
        let mut report = RotationReport {
            current_key: current.id.clone(),
            ..RotationReport::default()
        };
        if let Place::Database(db) = &self.place {
            self.rotate_rows(db, current, &mut report).await?;
            return Ok(report);
        }
        let blobs = self.root.join("blobs");
        let mut prefixes = Vec::new();
        let mut rd = fs::read_dir(&blobs).await?;
        while let Some(e) = rd.next_entry().await? {
            if e.file_type().await?.is_dir() {
                prefixes.push(e.path());
            }
        }
        prefixes.sort();
        for dir in prefixes {
            // Names first: files are renamed in this directory as we go.
            let mut names = Vec::new();
            let mut rd = fs::read_dir(&dir).await?;
            while let Some(e) = rd.next_entry().await? {
                if let Some(n) = e.file_name().to_str() {
                    names.push(n.to_owned());
                }
            }
            names.sort();
            // Left by an interrupted rotation (the blob beside each is
            // untouched): removed before this run writes its own.
            for name in names.iter().filter(|n| n.ends_with(REKEY_SUFFIX)) {
                match fs::remove_file(dir.join(name)).await {
                    Ok(()) => report.leftovers_removed += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
            for name in names {
                if name.len() != 64 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
                    continue;
                }
                let path = dir.join(&name);
                match self.rotate_one(&path, &name, current).await {
                    Ok(Rotated::Gone) => {}
                    Ok(Rotated::AlreadyCurrent) => report.already_current += 1,
                    Ok(Rotated::Reencrypted) => report.reencrypted += 1,
                    Ok(Rotated::Encrypted) => report.encrypted += 1,
                    Ok(Rotated::Damaged) => {
                        tracing::error!(sha256 = %name, "a stored attachment no longer matches its digest; left as it is");
                        report.damaged.push(name);
                    }
                    Ok(Rotated::UnknownKey(id)) => report.failed.push((
                        name,
                        format!("encrypted with key {id}, which the key file does not hold"),
                    )),
                    Err(e) => report.failed.push((name, e.chain())),
                }
            }
        }
        if report.damaged.is_empty() && report.failed.is_empty() {
            for id in self.keycheck_ids().await? {
                if id != current.id {
                    fs::remove_file(self.keycheck_path(&id)).await?;
                    report.retired_keys.push(id);
                }
            }
            if !report.retired_keys.is_empty() {
                sync_dir(&self.root.join(KEYCHECK_DIR)).await?;
            }
        }
        Ok(report)
    }

    async fn rotate_one(&self, path: &Path, sha: &str, current: &StorageKey) -> Result<Rotated> {
        let mut file = match fs::File::open(path).await {
            Ok(f) => f,
            // Removed since the directory was listed (an undone commit).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Rotated::Gone),
            Err(e) => return Err(e.into()),
        };
        let len = file.metadata().await?.len();
        let header = read_header(&mut file, len).await?;
        let tmp = PathBuf::from(format!("{}{REKEY_SUFFIX}", path.display()));
        let mut unknown_key = None;
        if let Some(h) = header {
            match (self.key_for(&h.key_id), h.layout(len)) {
                (Ok(key), Some((segments, last_len, _))) => {
                    if h.key_id != current.id {
                        let opener = Opener::new(key, h, segments, last_len);
                        if let Some(digest) = reseal(&mut file, Some(opener), current, &tmp).await?
                            && hex::encode(digest.0) == sha
                        {
                            replace(digest.1, &tmp, path).await?;
                            return Ok(Rotated::Reencrypted);
                        }
                    } else if last_segment_opens(&mut file, &h, key, segments, last_len).await? {
                        // Skipped without reading it all, once its last
                        // segment authenticates: that rules out a plaintext
                        // attachment that merely starts like an encrypted
                        // blob.
                        return Ok(Rotated::AlreadyCurrent);
                    }
                }
                (Err(_), _) => unknown_key = Some(h.key_id),
                _ => {}
            }
            // Not a sound encrypted blob: perhaps a plaintext attachment that
            // happens to start like one. Its digest decides.
            file.seek(SeekFrom::Start(0)).await?;
        }
        match reseal(&mut file, None, current, &tmp).await? {
            Some((digest, guard)) if hex::encode(digest) == sha => {
                replace(guard, &tmp, path).await?;
                Ok(Rotated::Encrypted)
            }
            _ => Ok(match unknown_key {
                Some(id) => Rotated::UnknownKey(id),
                None => Rotated::Damaged,
            }),
        }
    }
}

impl BlobStore {
    /// [`BlobStore::rotate_key`] in the database: blob by blob in the order
    /// of their digests, each read (and checked) through a reader into a
    /// new temporary file sealed under the current key, whose chunks then
    /// replace the old ones in one transaction.
    async fn rotate_rows(
        &self,
        db: &DatabaseConnection,
        current: &StorageKey,
        report: &mut RotationReport,
    ) -> Result<()> {
        let mut after = String::new();
        loop {
            let rows = db
                .query_all_raw(pg(
                    "SELECT sha256, size, key_id FROM stored_blobs WHERE sha256 > $1 \
                     ORDER BY sha256 LIMIT 100",
                    [after.as_str().into()],
                ))
                .await
                .or_db()?;
            if rows.is_empty() {
                break;
            }
            for row in rows {
                let sha: String = row.try_get("", "sha256").or_db()?;
                let size: i64 = row.try_get("", "size").or_db()?;
                let key_id: Option<String> = row.try_get("", "key_id").or_db()?;
                after.clone_from(&sha);
                if key_id.as_deref() == Some(current.id.as_str()) {
                    report.already_current += 1;
                    continue;
                }
                if let Some(id) = &key_id
                    && self.keys.as_ref().and_then(|k| k.get(id)).is_none()
                {
                    report.failed.push((
                        sha,
                        format!("encrypted with key {id}, which the key file does not hold"),
                    ));
                    continue;
                }
                let size = u64::try_from(size).unwrap_or(0);
                match self.rotate_row(db, &sha, size, current).await {
                    Ok(Rotated::Gone) => {}
                    Ok(Rotated::AlreadyCurrent) => report.already_current += 1,
                    Ok(Rotated::Reencrypted) => report.reencrypted += 1,
                    Ok(Rotated::Encrypted) => report.encrypted += 1,
                    Ok(Rotated::Damaged) => {
                        tracing::error!(sha256 = %sha, "a stored attachment no longer matches its digest; left as it is");
                        report.damaged.push(sha);
                    }
                    Ok(Rotated::UnknownKey(id)) => report.failed.push((
                        sha,
                        format!("encrypted with key {id}, which the key file does not hold"),
                    )),
                    Err(e) => report.failed.push((sha, e.chain())),
                }
            }
        }
        if report.damaged.is_empty() && report.failed.is_empty() {
            let retired = db
                .query_all_raw(pg(
                    "DELETE FROM storage_keychecks WHERE key_id <> $1 RETURNING key_id",
                    [current.id.as_str().into()],
                ))
                .await
                .or_db()?;
            for r in retired {
                report.retired_keys.push(r.try_get("", "key_id").or_db()?);
            }
            report.retired_keys.sort();
        }
        Ok(())
    }

    async fn rotate_row(
        &self,
        db: &DatabaseConnection,
        sha: &str,
        size: u64,
        current: &StorageKey,
    ) -> Result<Rotated> {
        let Some(before) = self.stored_row(db, sha).await? else {
            return Ok(Rotated::Gone);
        };
        let was_plaintext = before.key_id.is_none();
        // Sealed like any new blob: under the current key, hashed on the way.
        let mut w = self.create().await?;
        let mut reader = match self.open_blob(sha, size).await {
            Ok(r) => r,
            Err(e) if e.reason() == Reason::DigestMismatch => return Ok(Rotated::Damaged),
            Err(e) => return Err(e),
        };
        loop {
            match reader.next_chunk(SEGMENT_BYTES).await {
                Ok(Some(c)) => w.write(&c).await?,
                Ok(None) => break,
                Err(e) if e.reason() == Reason::DigestMismatch => return Ok(Rotated::Damaged),
                Err(e) => return Err(e),
            }
        }
        let sealed = w.seal().await?;
        if hex::encode(sealed.sha256) != sha {
            return Ok(Rotated::Damaged);
        }
        let Some(src) = sealed.guard.0.as_ref() else {
            return Err(Error::new(
                Reason::Unavailable,
                "a temporary attachment was lost before it could be stored",
            ));
        };
        let mut file = fs::File::open(src).await?;
        let stored_size = file.metadata().await?.len();
        let txn = db.begin().await.or_db()?;
        let locked = txn
            .query_one_raw(pg(
                "SELECT stored_at FROM stored_blobs WHERE sha256 = $1 FOR UPDATE",
                [sha.into()],
            ))
            .await
            .or_db()?;
        let Some(locked) = locked else {
            return Ok(Rotated::Gone);
        };
        if locked.try_get::<i64>("", "stored_at").or_db()? != before.stored_at {
            // Rewritten since it was read (another rotation): theirs stands.
            return Ok(Rotated::AlreadyCurrent);
        }
        txn.execute_raw(pg(
            "DELETE FROM stored_blob_chunks WHERE sha256 = $1",
            [sha.into()],
        ))
        .await
        .or_db()?;
        let chunks = write_chunks(&txn, sha, &mut file, stored_size).await?;
        // Readers that opened the old rows see the change by this.
        let stored_at = crate::store::now_micros().max(before.stored_at + 1);
        txn.execute_raw(pg(
            "UPDATE stored_blobs SET stored_size = $2, key_id = $3, chunks = $4, stored_at = $5 \
             WHERE sha256 = $1",
            [
                sha.into(),
                size_value(stored_size)?,
                current.id.as_str().into(),
                size_value(chunks)?,
                stored_at.into(),
            ],
        ))
        .await
        .or_db()?;
        txn.execute_raw(keycheck_insert(current)?).await.or_db()?;
        txn.commit().await.or_db()?;
        Ok(if was_plaintext {
            Rotated::Encrypted
        } else {
            Rotated::Reencrypted
        })
    }
}

/// Copies `file` (`stored_size` bytes, read from its current position)
/// into the chunk rows of `sha`, one chunk in memory at a time; returns how
/// many chunks it wrote.
async fn write_chunks(
    txn: &sea_orm::DatabaseTransaction,
    sha: &str,
    file: &mut fs::File,
    stored_size: u64,
) -> Result<u64> {
    let mut chunk = vec![0u8; DB_CHUNK_BYTES];
    let mut n = 0u64;
    let mut total = 0u64;
    loop {
        let len = fill_up(file, &mut chunk).await?;
        if len == 0 {
            break;
        }
        txn.execute_raw(pg(
            // Chunks without a row (a row removed by hand) are replaced:
            // the row this transaction holds owns the digest.
            "INSERT INTO stored_blob_chunks (sha256, n, bytes) VALUES ($1, $2, $3) \
             ON CONFLICT (sha256, n) DO UPDATE SET bytes = EXCLUDED.bytes",
            [
                sha.into(),
                chunk_number(n)?,
                Value::from(chunk[..len].to_vec()),
            ],
        ))
        .await
        .or_db()?;
        n += 1;
        total += len as u64;
    }
    if total != stored_size || n != stored_size.div_ceil(DB_CHUNK_BYTES as u64) {
        return Err(Error::new(
            Reason::Unavailable,
            "a temporary attachment changed while it was being stored",
        ));
    }
    Ok(n)
}

/// Reads `src` (decrypting with `opener`, or as plaintext) into a new
/// encrypted file at `tmp`, fsynced. `None` when a segment does not open;
/// else the plaintext digest and the temporary file's guard.
async fn reseal<R: StoredRead>(
    src: &mut R,
    mut opener: Option<Opener>,
    key: &StorageKey,
    tmp: &Path,
) -> Result<Option<([u8; 32], TempFile)>> {
    let out = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(tmp)
        .await?;
    let guard = TempFile(Some(tmp.to_path_buf()));
    let mut out = BufWriter::with_capacity(256 * 1024, out);
    let mut sealer = Sealer::new(key)?;
    sealer.start(&mut out).await?;
    let mut hasher = digest::Context::new(&digest::SHA256);
    match opener.as_mut() {
        Some(op) => loop {
            match op.next_segment(src).await {
                Ok(true) => {
                    hasher.update(&op.buf);
                    sealer.feed(&op.buf, &mut out).await?;
                }
                Ok(false) => break,
                Err(OpenFailure::Tampered { .. }) => return Ok(None),
                Err(OpenFailure::Io(e)) => return Err(e),
            }
        },
        None => {
            let mut buf = vec![0u8; SEGMENT_BYTES];
            loop {
                let n = src.read_some(&mut buf).await?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                sealer.feed(&buf[..n], &mut out).await?;
            }
        }
    }
    sealer.finish(&mut out).await?;
    out.flush().await?;
    out.get_mut().sync_all().await?;
    let mut sha = [0u8; 32];
    sha.copy_from_slice(hasher.finish().as_ref());
    Ok(Some((sha, guard)))
}

/// Whether the last segment of an encrypted blob opens (read on its own).
async fn last_segment_opens(
    file: &mut fs::File,
    header: &Header,
    key: &StorageKey,
    segments: u64,
    last_len: usize,
) -> Result<bool> {
    let full = (header.segment + TAG_BYTES) as u64;
    let index = segments - 1;
    file.seek(SeekFrom::Start(header.len() + index * full))
        .await?;
    let Ok(counter) = u32::try_from(index) else {
        return Ok(false);
    };
    let mut buf = vec![0u8; last_len];
    file.read_exact(&mut buf).await?;
    let aad = header.aad(counter, true);
    Ok(key
        .key
        .open_in_place(header.nonce(counter), Aad::from(aad.as_slice()), &mut buf)
        .is_ok())
}

/// Renames the fsynced `tmp` over `dest` and fsyncs the directory.
async fn replace(mut guard: TempFile, tmp: &Path, dest: &Path) -> Result<()> {
    fs::rename(tmp, dest).await?;
    guard.0 = None;
    if let Some(parent) = dest.parent() {
        sync_dir(parent).await?;
    }
    Ok(())
}

enum Rotated {
    Gone,
    AlreadyCurrent,
    Reencrypted,
    Encrypted,
    Damaged,
    UnknownKey(String),
}

/// What `rotate-key` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RotationReport {
    /// The key everything is now sealed under.
    pub current_key: String,
    pub already_current: u64,
    /// Re-encrypted from an older key.
    pub reencrypted: u64,
    /// Encrypted for the first time (written before encryption was on).
    pub encrypted: u64,
    /// Temporary files of an interrupted rotation, removed.
    pub leftovers_removed: u64,
    /// Blobs whose bytes no longer match their digest: left untouched.
    pub damaged: Vec<String>,
    /// Blobs that could not be rotated, with why.
    pub failed: Vec<(String, String)>,
    /// Keys no blob uses any more: their check files were removed and they
    /// may leave the key file.
    pub retired_keys: Vec<String>,
}

fn keycheck_seal(k: &StorageKey) -> Result<Vec<u8>> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| rng_error())?;
    let mut sealed = KEYCHECK_PLAINTEXT.to_vec();
    k.key
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(keycheck_aad(&k.id).as_slice()),
            &mut sealed,
        )
        .map_err(|_| crypto_error())?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&sealed);
    Ok(out)
}

fn keycheck_opens(k: &StorageKey, mut file: Vec<u8>) -> bool {
    if file.len() < NONCE_LEN {
        return false;
    }
    let mut sealed = file.split_off(NONCE_LEN);
    let Ok(nonce) = Nonce::try_assume_unique_for_key(&file) else {
        return false;
    };
    k.key
        .open_in_place(
            nonce,
            Aad::from(keycheck_aad(&k.id).as_slice()),
            &mut sealed,
        )
        .is_ok_and(|p| p == KEYCHECK_PLAINTEXT)
}

fn keycheck_aad(id: &str) -> Vec<u8> {
    format!("lienthong keycheck:{id}").into_bytes()
}

async fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = PathBuf::from(format!(
        "{}.{}.tmp",
        path.display(),
        uuid::Uuid::new_v4().simple()
    ));
    let guard = TempFile(Some(tmp.clone()));
    let mut f = fs::File::create(&tmp).await?;
    f.write_all(bytes).await?;
    f.sync_all().await?;
    drop(f);
    replace(guard, &tmp, path).await
}

/// Sets a stored file's modification time to now: whether it exists.
async fn touch(path: &Path) -> Result<bool> {
    let path = path.to_owned();
    let touched = tokio::task::spawn_blocking(move || match std::fs::File::open(&path) {
        Ok(f) => f.set_modified(std::time::SystemTime::now()).map(|()| true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    })
    .await
    .map_err(|e| {
        Error::new(
            Reason::Unavailable,
            format!("an attachment could not be looked up: {e}"),
        )
    })?;
    Ok(touched?)
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

/// A temporary blob being written, to an async file ([`BlobWriter`]) or a
/// blocking one ([`TempWriter`]).
pub struct Writing<F> {
    file: F,
    guard: TempFile,
    hasher: digest::Context,
    written: u64,
    sealer: Option<Sealer>,
}

/// A temporary blob being written, from async code.
pub type BlobWriter = Writing<BufWriter<fs::File>>;

/// A temporary file being written with blocking I/O (see
/// [`BlobStore::temp_file`]).
pub type TempWriter = Writing<std::io::BufWriter<std::fs::File>>;

impl<F> std::fmt::Debug for Writing<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writing")
            .field("path", &self.guard.0)
            .field("written", &self.written)
            .field("encrypted", &self.sealer.is_some())
            .finish()
    }
}

impl<F> Writing<F> {
    fn new(file: F, guard: TempFile, sealer: Option<Sealer>) -> Writing<F> {
        Writing {
            file,
            guard,
            hasher: digest::Context::new(&digest::SHA256),
            written: 0,
            sealer,
        }
    }

    /// Plaintext bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The written file with its digest, once the bytes are out.
    fn into_sealed(self) -> SealedBlob {
        let d = self.hasher.finish();
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(d.as_ref());
        SealedBlob {
            guard: self.guard,
            sha256,
            size: self.written,
            encrypted: self.sealer.is_some(),
        }
    }
}

impl BlobWriter {
    pub async fn write(&mut self, data: &[u8]) -> Result<()> {
        self.hasher.update(data);
        match &mut self.sealer {
            Some(s) => s.feed(data, &mut self.file).await?,
            None => self.file.write_all(data).await?,
        }
        self.written += data.len() as u64;
        Ok(())
    }

    /// Flushes and fsyncs the bytes; the digest is final from here on.
    pub async fn seal(mut self) -> Result<SealedBlob> {
        if let Some(s) = &mut self.sealer {
            s.finish(&mut self.file).await?;
        }
        self.file.flush().await?;
        self.file.get_mut().sync_all().await?;
        Ok(self.into_sealed())
    }
}

impl BlobStore {
    /// Starts a temporary file in the store's `tmp/`, written with blocking
    /// I/O (for codecs that run on a blocking thread: a decoded edXML
    /// attachment, a file unpacked from a ZIP). It is sealed exactly like a
    /// blob when the store encrypts, so no plaintext reaches the disk; it is
    /// removed when dropped, and by the next start after a crash. Read it
    /// back with [`BlobStore::source_of`] once [`TempWriter::finish`]ed.
    pub fn temp_file(&self) -> Result<TempWriter> {
        let path = self.temp_path();
        if let Some(dir) = path.parent() {
            // An unopened store (a tool beside the gateway) may not have it yet.
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        let guard = TempFile(Some(path));
        let mut file = std::io::BufWriter::with_capacity(256 * 1024, file);
        let sealer = self.new_sealer()?;
        if let Some(s) = &sealer {
            std::io::Write::write_all(&mut file, &s.header.bytes)?;
        }
        Ok(Writing::new(file, guard, sealer))
    }
}

impl TempWriter {
    /// Seals the last segment and flushes. Not fsynced: a temporary file
    /// is never what makes anything durable.
    pub fn finish(mut self) -> Result<SealedBlob> {
        if let Some(s) = &mut self.sealer {
            s.finish_blocking(&mut self.file)?;
        }
        std::io::Write::flush(&mut self.file)?;
        Ok(self.into_sealed())
    }
}

impl std::io::Write for TempWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        match &mut self.sealer {
            Some(s) => s
                .feed_blocking(data, &mut self.file)
                .map_err(std::io::Error::other)?,
            None => self.file.write_all(data)?,
        }
        self.hasher.update(data);
        self.written += data.len() as u64;
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        // Sealed segments are written whole; a partial one stays buffered
        // until it is full or `finish`ed.
        self.file.flush()
    }
}

/// A temporary blob with its digest, not yet in place: durable when it
/// came from [`BlobWriter::seal`], merely written when from
/// [`TempWriter::finish`].
#[derive(Debug)]
pub struct SealedBlob {
    guard: TempFile,
    /// SHA-256 of the plaintext: the content address.
    pub sha256: [u8; 32],
    /// Plaintext size.
    pub size: u64,
    encrypted: bool,
}

/// Random access to the plaintext of a sealed blob that is not yet in
/// place, for checks that must seek (the PDF signature verifier): blocking
/// positioned reads, one segment decrypted at a time. Use it from a
/// blocking task.
pub struct BlobSource {
    file: std::fs::File,
    size: u64,
    opener: Option<SegmentOpener>,
    /// The last segment opened: (index, plaintext).
    cache: std::sync::Mutex<Option<(u64, Vec<u8>)>>,
}

struct SegmentOpener {
    key: LessSafeKey,
    header: Header,
    segments: u64,
    last_len: usize,
}

impl std::fmt::Debug for BlobSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobSource")
            .field("size", &self.size)
            .field("encrypted", &self.opener.is_some())
            .finish()
    }
}

impl BlobStore {
    /// Opens a sealed temporary blob for random-access reading.
    pub fn source_of(&self, blob: &SealedBlob) -> Result<BlobSource> {
        let Some(path) = blob.guard.0.as_ref() else {
            return Err(Error::new(
                Reason::Unavailable,
                "a temporary attachment was lost before it could be checked",
            ));
        };
        let file = std::fs::File::open(path)?;
        let file_len = file.metadata()?.len();
        let opener = if blob.encrypted {
            use std::os::unix::fs::FileExt;
            let mut buf =
                vec![0u8; MAX_HEADER.min(usize::try_from(file_len).unwrap_or(MAX_HEADER))];
            file.read_exact_at(&mut buf, 0)?;
            let header = Header::parse(&buf).ok_or_else(|| {
                Error::new(
                    Reason::Unavailable,
                    "a temporary attachment has no readable header",
                )
            })?;
            let key = self.key_for(&header.key_id)?.key.clone();
            let Some((segments, last_len, plain)) = header.layout(file_len) else {
                return Err(Error::new(
                    Reason::Unavailable,
                    "a temporary attachment does not have the length it was written with",
                ));
            };
            if plain != blob.size {
                return Err(Error::new(
                    Reason::Unavailable,
                    "a temporary attachment does not have the length it was written with",
                ));
            }
            Some(SegmentOpener {
                key,
                header,
                segments,
                last_len,
            })
        } else {
            None
        };
        Ok(BlobSource {
            file,
            size: blob.size,
            opener,
            cache: std::sync::Mutex::new(None),
        })
    }
}

impl EncryptionKeys {
    /// Seals everything `input` gives into `out` in the blob format (the
    /// header, then AES-256-GCM segments), under the current key, one
    /// segment in memory at a time: what a backup writes its database copy
    /// with. Returns the key's id.
    pub fn seal_stream(
        &self,
        input: &mut impl std::io::Read,
        out: &mut impl std::io::Write,
    ) -> Result<String> {
        let key = self.current().ok_or_else(crypto_error)?;
        let mut sealer = Sealer::new(key)?;
        out.write_all(&sealer.header.bytes)?;
        let mut buf = vec![0u8; SEGMENT_BYTES];
        loop {
            let n = match input.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            sealer.feed_blocking(&buf[..n], out)?;
        }
        sealer.finish_blocking(out)?;
        Ok(key.id.clone())
    }

    /// The key id a file sealed by [`EncryptionKeys::seal_stream`] (or an
    /// encrypted blob) names in its header; `None` when it has no header.
    pub fn sealed_key_id(path: &Path) -> Result<Option<String>> {
        use std::io::Read as _;
        let mut buf = Vec::with_capacity(MAX_HEADER);
        std::fs::File::open(path)?
            .take(MAX_HEADER as u64)
            .read_to_end(&mut buf)?;
        Ok(Header::parse(&buf).map(|h| h.key_id))
    }

    /// Opens the file `path`, sealed by [`EncryptionKeys::seal_stream`],
    /// into `out`, one segment at a time; returns the plaintext's size.
    /// Refuses a file these keys cannot open, saying whether its key is
    /// missing or its bytes were changed.
    pub fn open_file(&self, path: &Path, out: &mut impl std::io::Write) -> Result<u64> {
        use std::os::unix::fs::FileExt;
        let name = path.display();
        let file = std::fs::File::open(path)?;
        let file_len = file.metadata()?.len();
        let mut buf = vec![0u8; MAX_HEADER.min(usize::try_from(file_len).unwrap_or(MAX_HEADER))];
        file.read_exact_at(&mut buf, 0)?;
        let refuse = |what: String| Error::malformed(format!("{name}: {what}"));
        let header = Header::parse(&buf)
            .ok_or_else(|| refuse("it is not a sealed file (no header)".to_owned()))?;
        let key = self.get(&header.key_id).ok_or_else(|| {
            refuse(format!(
                "it is sealed with the storage key {}, which {} does not hold; add that key \
                 (after the current one)",
                header.key_id, self.source
            ))
        })?;
        let (segments, last_len, plain) = header
            .layout(file_len)
            .ok_or_else(|| refuse("it was cut short or lengthened".to_owned()))?;
        let source = BlobSource {
            file,
            size: plain,
            opener: Some(SegmentOpener {
                key: key.key.clone(),
                header,
                segments,
                last_len,
            }),
            cache: std::sync::Mutex::new(None),
        };
        let mut reader = source.into_reader();
        let copied = std::io::copy(&mut reader, out).map_err(|e| {
            refuse(format!(
                "it does not open with its key, so its bytes were changed ({e})"
            ))
        })?;
        Ok(copied)
    }
}

impl BlobSource {
    fn segment(&self, op: &SegmentOpener, index: u64) -> std::io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let last = index + 1 == op.segments;
        let full = op.header.segment + TAG_BYTES;
        let len = if last { op.last_len } else { full };
        let mut buf = vec![0u8; len];
        self.file
            .read_exact_at(&mut buf, op.header.len() + index * full as u64)?;
        let counter =
            u32::try_from(index).map_err(|_| std::io::Error::other("segment out of range"))?;
        let aad = op.header.aad(counter, last);
        let n = op
            .key
            .open_in_place(
                op.header.nonce(counter),
                Aad::from(aad.as_slice()),
                &mut buf,
            )
            .map_err(|_| {
                std::io::Error::other("a segment of the attachment does not authenticate")
            })?
            .len();
        buf.truncate(n);
        Ok(buf)
    }
}

impl BlobSource {
    /// The plaintext as `Read + Seek` (what a ZIP reader needs), one
    /// segment decrypted at a time.
    pub fn into_reader(self) -> BlobCursor {
        BlobCursor {
            source: self,
            pos: 0,
        }
    }
}

/// A [`BlobSource`] read sequentially, from [`BlobSource::into_reader`].
#[derive(Debug)]
pub struct BlobCursor {
    source: BlobSource,
    pos: u64,
}

impl std::io::Read for BlobCursor {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.source.read_at(self.pos, buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl std::io::Seek for BlobCursor {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let size = self.source.size;
        let target = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        let Some(p) = target else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a seek before the start of the attachment",
            ));
        };
        self.pos = p;
        Ok(p)
    }
}

impl BlobSource {
    /// The plaintext's size.
    pub fn len(&self) -> u64 {
        self.size
    }

    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// Reads the plaintext at `offset`; fewer bytes than asked only at the
    /// end.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        if offset >= self.size {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.size - offset).unwrap_or(usize::MAX));
        let Some(op) = &self.opener else {
            self.file.read_exact_at(&mut buf[..want], offset)?;
            return Ok(want);
        };
        let seg = op.header.segment as u64;
        let mut done = 0usize;
        while done < want {
            let pos = offset + done as u64;
            let index = pos / seg;
            let within = (pos % seg) as usize;
            let mut cache = self
                .cache
                .lock()
                .map_err(|_| std::io::Error::other("the segment cache is poisoned"))?;
            if cache.as_ref().is_none_or(|(i, _)| *i != index) {
                *cache = Some((index, self.segment(op, index)?));
            }
            let Some((_, plain)) = cache.as_ref() else {
                break;
            };
            if within >= plain.len() {
                break;
            }
            let take = (plain.len() - within).min(want - done);
            buf[done..done + take].copy_from_slice(&plain[within..within + take]);
            done += take;
        }
        Ok(done)
    }
}

/// The bytes of a stored blob as a reader reads them.
enum Stored {
    File(fs::File),
    Rows(Box<ChunkRows>),
}

impl StoredRead for Stored {
    async fn read_some(&mut self, buf: &mut [u8]) -> Result<usize> {
        match self {
            Stored::File(f) => f.read_some(buf).await,
            Stored::Rows(r) => r.read_some(buf).await,
        }
    }
}

impl Stored {
    fn place(&self) -> &'static str {
        match self {
            Stored::File(_) => "on disk",
            Stored::Rows(_) => "in the database",
        }
    }

    /// Reads the header at the start, if there is one, and leaves the
    /// reader after it.
    async fn read_header(&mut self, len: u64) -> Result<Option<Header>> {
        match self {
            Stored::File(f) => read_header(f, len).await,
            Stored::Rows(r) => {
                // The header is far shorter than a chunk: all in the first.
                let mut none = [0u8; 0];
                r.read_some(&mut none).await?;
                let header = Header::parse(&r.buf);
                if let Some(h) = &header {
                    r.pos = usize::try_from(h.len()).unwrap_or(r.buf.len());
                }
                Ok(header)
            }
        }
    }

    /// Whether the rows were rewritten (or removed) since the reader
    /// opened them. Never for a file.
    async fn rewritten(&self) -> bool {
        let Stored::Rows(r) = self else {
            return false;
        };
        match r
            .db
            .query_one_raw(pg(
                "SELECT stored_at FROM stored_blobs WHERE sha256 = $1",
                [r.sha.as_str().into()],
            ))
            .await
        {
            Ok(Some(row)) => row
                .try_get::<i64>("", "stored_at")
                .is_ok_and(|at| at != r.stored_at),
            Ok(None) => true,
            // Unknown: the damage is reported as found.
            Err(_) => false,
        }
    }
}

/// A blob's rows of `stored_blob_chunks`, fetched one at a time.
struct ChunkRows {
    db: DatabaseConnection,
    sha: String,
    /// How many chunks its row says it has.
    chunks: i64,
    /// Its row's `stored_at` when it was opened: a rotation changes it.
    stored_at: i64,
    next: i64,
    buf: Vec<u8>,
    pos: usize,
}

impl StoredRead for ChunkRows {
    /// With an empty `buf`, fetches the next chunk if the current one is
    /// read out (which is how the header is read).
    async fn read_some(&mut self, buf: &mut [u8]) -> Result<usize> {
        while self.pos == self.buf.len() {
            if self.next >= self.chunks {
                return Ok(0);
            }
            let row = self
                .db
                .query_one_raw(pg(
                    "SELECT bytes FROM stored_blob_chunks WHERE sha256 = $1 AND n = $2",
                    [self.sha.as_str().into(), chunk_number(self.next as u64)?],
                ))
                .await
                .or_db()?;
            let Some(row) = row else {
                tracing::error!(sha256 = %self.sha, chunk = self.next, "a chunk of a stored attachment is missing from the database");
                return Err(altered(format!(
                    "part {} of {} of the stored attachment is missing from the database",
                    self.next + 1,
                    self.chunks
                )));
            };
            self.buf = row.try_get::<Vec<u8>>("", "bytes").or_db()?;
            self.pos = 0;
            self.next += 1;
            if buf.is_empty() {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.buf.len() - self.pos);
        buf[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A row of `stored_blobs`.
#[derive(Debug)]
struct StoredRow {
    stored_size: u64,
    chunks: i64,
    key_id: Option<String>,
    stored_at: i64,
}

/// A statement for the database backend, which is PostgreSQL only.
fn pg<I: IntoIterator<Item = Value>>(sql: &str, values: I) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

fn size_value(n: u64) -> Result<Value> {
    i64::try_from(n).map(Value::from).map_err(|_| {
        Error::new(
            Reason::SizeLimit,
            "the attachment is too large for the database",
        )
    })
}

fn chunk_number(n: u64) -> Result<Value> {
    i32::try_from(n).map(Value::from).map_err(|_| {
        Error::new(
            Reason::SizeLimit,
            "the attachment is too large for the database",
        )
    })
}

/// Reads until `buf` is full or the file ends; how many bytes were read.
async fn fill_up(file: &mut fs::File, buf: &mut [u8]) -> Result<usize> {
    let mut at = 0;
    while at < buf.len() {
        let n = file.read(&mut buf[at..]).await?;
        if n == 0 {
            break;
        }
        at += n;
    }
    Ok(at)
}

fn keycheck_insert(k: &StorageKey) -> Result<Statement> {
    // A replica that wrote it first wins; both sealed the same key.
    Ok(pg(
        "INSERT INTO storage_keychecks (key_id, sealed) VALUES ($1, $2) \
         ON CONFLICT (key_id) DO NOTHING",
        [k.id.as_str().into(), keycheck_seal(k)?.into()],
    ))
}

/// Reads a stored blob chunk by chunk (decrypting it when it is encrypted)
/// and checks, at the end, that the bytes still have the digest they were
/// stored under (a blob edited on disk is caught on fetch; an encrypted one
/// already at the segment that was edited).
pub struct BlobReader {
    src: Stored,
    expected: String,
    expected_size: u64,
    hasher: Option<digest::Context>,
    read: u64,
    opener: Option<Opener>,
}

impl std::fmt::Debug for BlobReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobReader")
            .field("expected", &self.expected)
            .field("read", &self.read)
            .field("encrypted", &self.opener.is_some())
            .finish()
    }
}

fn altered(what: String) -> Error {
    Error::new(
        Reason::DigestMismatch,
        format!("{what}; do not use the bytes received, the operators have been alerted"),
    )
}

impl BlobReader {
    /// The next chunk of at most `max` bytes; `None` at the end, after the
    /// digest has been checked.
    pub async fn next_chunk(&mut self, max: usize) -> Result<Option<Vec<u8>>> {
        match self.next_checked(max).await {
            // A file being rotated is replaced by a rename and this reader
            // keeps the one it opened; rows are replaced in place, so a
            // rotation committed while they were read shows as damage.
            Err(e) if e.reason() == Reason::DigestMismatch && self.src.rewritten().await => {
                tracing::warn!(sha256 = %self.expected, "a stored attachment was re-encrypted while it was read");
                Err(Error::new(
                    Reason::Unavailable,
                    "the stored attachment was re-encrypted (lienthong storage rotate-key) while \
                     it was read; do not use the bytes received and fetch it again",
                ))
            }
            r => r,
        }
    }

    async fn next_checked(&mut self, max: usize) -> Result<Option<Vec<u8>>> {
        let max = max.max(1);
        let Some(hasher) = self.hasher.as_mut() else {
            return Ok(None);
        };
        let Some(op) = self.opener.as_mut() else {
            let mut buf = vec![0u8; max];
            let n = self.src.read_some(&mut buf).await?;
            if n == 0 {
                return self.finish().map(|()| None);
            }
            buf.truncate(n);
            hasher.update(&buf);
            self.read += n as u64;
            return Ok(Some(buf));
        };
        while op.pos == op.buf.len() {
            match op.next_segment(&mut self.src).await {
                Ok(true) => {
                    hasher.update(&op.buf);
                    self.read += op.buf.len() as u64;
                }
                Ok(false) => return self.finish().map(|()| None),
                Err(OpenFailure::Tampered { segment }) => {
                    self.hasher = None;
                    tracing::error!(
                        expected = %self.expected,
                        segment,
                        key_id = %op.header.key_id,
                        "a stored encrypted attachment does not authenticate: it was altered on disk"
                    );
                    return Err(altered(format!(
                        "the stored attachment was altered {}: its part {} does not \
                         authenticate under storage key {}",
                        self.src.place(),
                        segment + 1,
                        op.header.key_id
                    )));
                }
                Err(OpenFailure::Io(e)) => return Err(e),
            }
        }
        let n = max.min(op.buf.len() - op.pos);
        let chunk = op.buf[op.pos..op.pos + n].to_vec();
        op.pos += n;
        Ok(Some(chunk))
    }

    fn finish(&mut self) -> Result<()> {
        let Some(h) = self.hasher.take() else {
            return Ok(());
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
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    mod in_database;

    fn sha(data: &[u8]) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(digest::digest(&digest::SHA256, data).as_ref());
        out
    }

    fn key_line(id: &str, byte: u8) -> String {
        format!(
            "{id}:{}",
            base64::engine::general_purpose::STANDARD.encode([byte; 32])
        )
    }

    /// A sealed stream (a backup's database file) opens back to its bytes
    /// with its key, not with another, and not with a byte changed.
    #[test]
    fn sealed_streams_open_with_their_key_only() {
        let k = keys(&key_line("k1", 1));
        let plain: Vec<u8> = (0..(2 * SEGMENT_BYTES + 77))
            .map(|i| (i % 251) as u8)
            .collect();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("database.sqlite.sealed");
        let mut sealed = Vec::new();
        let id = k
            .seal_stream(&mut plain.as_slice(), &mut sealed)
            .expect("seal");
        assert_eq!(id, "k1");
        assert!(!sealed.windows(64).any(|w| w == &plain[1000..1064]));
        std::fs::write(&path, &sealed).expect("write");
        assert_eq!(
            EncryptionKeys::sealed_key_id(&path).expect("read"),
            Some("k1".to_owned())
        );
        let mut out = Vec::new();
        assert_eq!(
            k.open_file(&path, &mut out).expect("open"),
            plain.len() as u64
        );
        assert_eq!(out, plain);

        let other = keys(&key_line("k2", 2));
        let e = other
            .open_file(&path, &mut Vec::new())
            .expect_err("another key");
        assert!(e.message().contains("storage key k1"), "{}", e.message());

        let mut bad = sealed.clone();
        bad[SEGMENT_BYTES + 100] ^= 1;
        std::fs::write(&path, &bad).expect("write");
        let e = k
            .open_file(&path, &mut Vec::new())
            .expect_err("a changed byte");
        assert!(
            e.message().contains("bytes were changed"),
            "{}",
            e.message()
        );
    }

    fn keys(text: &str) -> EncryptionKeys {
        match EncryptionKeys::parse(text, "test keys") {
            Ok(k) => k,
            Err(e) => panic!("{}", e.chain()),
        }
    }

    async fn put(store: &BlobStore, data: &[u8], chunk: usize) -> Result<String> {
        let mut w = store.create().await?;
        for c in data.chunks(chunk.max(1)) {
            w.write(c).await?;
        }
        if data.is_empty() {
            w.write(&[]).await?;
        }
        let sealed = w.seal().await?;
        assert_eq!(sealed.sha256, sha(data));
        assert_eq!(sealed.size, data.len() as u64);
        let hex = hex::encode(sealed.sha256);
        store.commit(sealed).await?;
        Ok(hex)
    }

    async fn get(store: &BlobStore, hex: &str, size: u64, chunk: usize) -> Result<Vec<u8>> {
        let mut r = store.open_blob(hex, size).await?;
        let mut all = Vec::new();
        while let Some(c) = r.next_chunk(chunk).await? {
            assert!(!c.is_empty() && c.len() <= chunk.max(1));
            all.extend(c);
        }
        Ok(all)
    }

    /// A store under `dir`, encrypted with key `k1` or not.
    async fn store_in(dir: &Path, encrypted: bool) -> Result<BlobStore> {
        if encrypted {
            BlobStore::open_with(dir, Some(keys(&key_line("k1", 1)))).await
        } else {
            BlobStore::open(dir).await
        }
    }

    fn refusal<T: std::fmt::Debug>(r: Result<T>) -> Error {
        match r {
            Ok(v) => panic!("expected a refusal, got {v:?}"),
            Err(e) => e,
        }
    }

    async fn read_err(store: &BlobStore, hex: &str, size: u64) -> Error {
        let mut r = match store.open_blob(hex, size).await {
            Ok(r) => r,
            Err(e) => return e,
        };
        loop {
            match r.next_chunk(4096).await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the damage was not detected"),
                Err(e) => return e,
            }
        }
    }

    /// The PDF verifier reads a sealed blob at any offset, across segment
    /// boundaries, encrypted or not, and sees exactly the plaintext.
    #[tokio::test]
    async fn sealed_blobs_read_at_any_offset() -> Result<()> {
        let data: Vec<u8> = (0..(3 * SEGMENT_BYTES + 1234))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        for encrypted in [false, true] {
            let dir = tempfile::tempdir()?;
            let store = store_in(dir.path(), encrypted).await?;
            let mut w = store.create().await?;
            for c in data.chunks(10_000) {
                w.write(c).await?;
            }
            let sealed = w.seal().await?;
            let src = store.source_of(&sealed)?;
            assert_eq!(src.len(), data.len() as u64);
            for (off, len) in [
                (0usize, 10usize),
                (SEGMENT_BYTES - 5, 10),
                (SEGMENT_BYTES * 2 - 1, SEGMENT_BYTES + 2),
                (data.len() - 3, 10),
                (data.len(), 4),
                (17, data.len()),
            ] {
                let mut buf = vec![0u8; len];
                let n = src.read_at(off as u64, &mut buf)?;
                let want = &data[off.min(data.len())..(off + len).min(data.len())];
                assert_eq!(&buf[..n], want, "encrypted={encrypted} at {off}+{len}");
            }
        }
        Ok(())
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

        // A plaintext blob that changed size is refused before any byte.
        std::fs::write(store.path_of(&hex), b"original bytes, and more")?;
        let e = refusal(store.open_blob(&hex, 14).await);
        assert_eq!(e.reason(), Reason::DigestMismatch);
        assert!(e.message().contains("24 bytes on disk"), "{}", e.message());
        Ok(())
    }

    #[tokio::test]
    async fn open_cleans_leftovers_and_identical_bytes_are_stored_once() -> Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir_all(dir.path().join("tmp"))?;
        std::fs::write(dir.path().join("tmp/old.part"), b"crash leftover")?;
        std::fs::File::options()
            .write(true)
            .open(dir.path().join("tmp/old.part"))?
            .set_modified(std::time::SystemTime::now() - 2 * LEFTOVER_AFTER)?;
        // Another process's upload in progress on a shared store.
        std::fs::write(dir.path().join("tmp/busy.part"), b"upload in progress")?;
        let store = BlobStore::open(dir.path()).await?;
        let left: Vec<_> = std::fs::read_dir(dir.path().join("tmp"))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<std::io::Result<_>>()?;
        assert_eq!(left, ["busy.part"]);
        std::fs::remove_file(dir.path().join("tmp/busy.part"))?;
        for expect_new in [true, false] {
            let mut w = store.create().await?;
            w.write(b"same").await?;
            assert_eq!(store.commit(w.seal().await?).await?, expect_new);
        }
        assert_eq!(std::fs::read_dir(dir.path().join("tmp"))?.count(), 0);
        Ok(())
    }

    #[tokio::test]
    async fn encrypted_blobs_round_trip_and_never_hold_the_plaintext() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let store = BlobStore::open_with(dir.path(), Some(keys(&key_line("k1", 1)))).await?;
        assert_eq!(store.encryption_key_id(), Some("k1"));
        let marker = b"CONG VAN MAT 15/QD-UBND ";
        // Around the segment boundaries: the last segment is empty only for
        // an empty blob, and full when the size is a multiple.
        for size in [
            0,
            1,
            SEGMENT_BYTES - 1,
            SEGMENT_BYTES,
            SEGMENT_BYTES + 1,
            3 * SEGMENT_BYTES,
        ] {
            let data: Vec<u8> = marker.iter().copied().cycle().take(size).collect();
            for (wchunk, rchunk) in [(7, 1000), (SEGMENT_BYTES + 3, 64 * 1024), (1 << 20, 1)] {
                if rchunk == 1 && size > SEGMENT_BYTES {
                    continue;
                }
                let hex = put(&store, &data, wchunk).await?;
                assert_eq!(
                    get(&store, &hex, size as u64, rchunk).await?,
                    data,
                    "size {size}"
                );
                let on_disk = std::fs::read(store.path_of(&hex))?;
                assert!(on_disk.starts_with(&MAGIC));
                assert_eq!(
                    on_disk.len() as u64,
                    encrypted_len(MAGIC.len() as u64 + 3 + 2 + 8, size as u64)
                );
                if size >= marker.len() {
                    assert!(
                        !on_disk.windows(marker.len()).any(|w| w == marker),
                        "plaintext on disk"
                    );
                }
            }
        }
        assert!(store.keycheck_path("k1").exists());
        // Identical bytes still dedupe: the address is the plaintext's.
        let mut w = store.create().await?;
        w.write(b"same").await?;
        assert!(store.commit(w.seal().await?).await?);
        let mut w = store.create().await?;
        w.write(b"same").await?;
        assert!(!store.commit(w.seal().await?).await?);
        Ok(())
    }

    /// A blocking temporary file is sealed like a blob, reads back as
    /// `Read + Seek`, and is gone once dropped.
    #[tokio::test]
    async fn temp_files_are_sealed_read_back_and_removed() -> Result<()> {
        use std::io::{Read, Seek, Write};
        let marker = b"PHU LUC KEM THEO CONG VAN ";
        for encrypted in [false, true] {
            let dir = tempfile::tempdir()?;
            let store = store_in(dir.path(), encrypted).await?;
            for size in [0, 5, SEGMENT_BYTES, 2 * SEGMENT_BYTES + 77] {
                let data: Vec<u8> = marker.iter().copied().cycle().take(size).collect();
                let mut w = store.temp_file()?;
                for c in data.chunks(9_999) {
                    w.write_all(c)?;
                }
                assert_eq!(w.written(), size as u64);
                let sealed = w.finish()?;
                assert_eq!(sealed.sha256, sha(&data));
                let files: Vec<_> = std::fs::read_dir(dir.path().join("tmp"))?
                    .map(|e| e.map(|e| e.path()))
                    .collect::<std::io::Result<_>>()?;
                assert_eq!(files.len(), 1);
                let on_disk = std::fs::read(&files[0])?;
                let plaintext_on_disk = on_disk.windows(marker.len()).any(|w| w == marker);
                assert_eq!(
                    plaintext_on_disk,
                    !encrypted && size >= marker.len(),
                    "encrypted={encrypted} size={size}"
                );
                let mut r = store.source_of(&sealed)?.into_reader();
                let mut back = Vec::new();
                r.read_to_end(&mut back)?;
                assert_eq!(back, data, "encrypted={encrypted} size={size}");
                if size > 10 {
                    r.seek(std::io::SeekFrom::End(-3))?;
                    let mut tail = Vec::new();
                    r.read_to_end(&mut tail)?;
                    assert_eq!(tail, data[size - 3..]);
                }
                assert!(
                    r.seek(std::io::SeekFrom::Current(-(size as i64) - 10))
                        .is_err()
                );
                drop(r);
                drop(sealed);
                assert_eq!(std::fs::read_dir(dir.path().join("tmp"))?.count(), 0);
            }
            // A crash leaves it behind: the next process of the same
            // name removes it at start; one of another name (a replica
            // sharing the store, whose upload it could be) does not.
            let mut owned = BlobStore::open(dir.path()).await?;
            owned.claim_temp_files("gw-a").await?;
            std::mem::forget(owned.temp_file()?);
            assert_eq!(std::fs::read_dir(dir.path().join("tmp"))?.count(), 1);
            BlobStore::open(dir.path())
                .await?
                .claim_temp_files("gw-b")
                .await?;
            assert_eq!(std::fs::read_dir(dir.path().join("tmp"))?.count(), 1);
            BlobStore::open(dir.path())
                .await?
                .claim_temp_files("gw-a")
                .await?;
            assert_eq!(std::fs::read_dir(dir.path().join("tmp"))?.count(), 0);
        }
        Ok(())
    }

    #[tokio::test]
    async fn a_wrong_or_missing_key_refuses_to_open_and_names_the_key() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let store = BlobStore::open_with(dir.path(), Some(keys(&key_line("k1", 1)))).await?;
        let hex = put(&store, b"secret", 3).await?;
        drop(store);

        let e = refusal(BlobStore::open_with(dir.path(), Some(keys(&key_line("k1", 2)))).await);
        assert!(
            e.message()
                .contains("the key k1 in test keys is not the key")
                && e.message().contains("keycheck"),
            "{}",
            e.message()
        );

        let e = refusal(BlobStore::open_with(dir.path(), Some(keys(&key_line("k2", 2)))).await);
        assert!(
            e.message()
                .contains("encrypted with key k1, which test keys does not hold"),
            "{}",
            e.message()
        );

        let e = refusal(BlobStore::open_with(dir.path(), None).await);
        assert!(
            e.message().contains("encrypted with key k1")
                && e.message().contains("storage.encryption_key_file"),
            "{}",
            e.message()
        );

        // A tool that opens the store without keys cannot read the blob, and
        // says it is a configuration matter, not damage.
        let plain = BlobStore::open(dir.path()).await?;
        let e = refusal(plain.open_blob(&hex, 6).await);
        assert_eq!(e.reason(), Reason::Unavailable);
        assert!(e.message().contains("key k1"), "{}", e.message());

        // The right key still opens everything.
        let store = BlobStore::open_with(dir.path(), Some(keys(&key_line("k1", 1)))).await?;
        assert_eq!(get(&store, &hex, 6, 100).await?, b"secret");
        Ok(())
    }

    #[tokio::test]
    async fn an_edited_encrypted_blob_is_a_digest_mismatch() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let store = BlobStore::open_with(dir.path(), Some(keys(&key_line("k1", 1)))).await?;
        let data = vec![7u8; 2 * SEGMENT_BYTES + 10];
        let hex = put(&store, &data, 4096).await?;
        let path = store.path_of(&hex);
        let original = std::fs::read(&path)?;
        let header = 8 + 3 + 2 + 8;
        for (what, pos) in [
            ("a ciphertext byte", header + SEGMENT_BYTES + 100),
            ("a tag byte", header + SEGMENT_BYTES + 5),
            ("the nonce prefix", header - 1),
        ] {
            let mut bytes = original.clone();
            bytes[pos] ^= 0x01;
            std::fs::write(&path, &bytes)?;
            let e = read_err(&store, &hex, data.len() as u64).await;
            assert_eq!(e.reason(), Reason::DigestMismatch, "{what}");
            assert!(
                e.message().contains("altered on disk") && e.message().contains("key k1"),
                "{what}: {}",
                e.message()
            );
        }

        // Two segments swapped.
        let seg = SEGMENT_BYTES + TAG_BYTES;
        let mut swapped = original.clone();
        let (a, b) = (header, header + seg);
        let first = original[a..a + seg].to_vec();
        swapped[a..a + seg].copy_from_slice(&original[b..b + seg]);
        swapped[b..b + seg].copy_from_slice(&first);
        std::fs::write(&path, &swapped)?;
        let e = read_err(&store, &hex, data.len() as u64).await;
        assert_eq!(e.reason(), Reason::DigestMismatch);
        assert!(e.message().contains("part 1"), "{}", e.message());

        // The same plaintext sealed into another blob file is not
        // interchangeable (another nonce prefix), even under the same key.
        std::fs::write(&path, &original)?;
        assert_eq!(get(&store, &hex, data.len() as u64, 65536).await?, data);
        Ok(())
    }

    #[tokio::test]
    async fn a_truncated_encrypted_blob_is_caught() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let store = BlobStore::open_with(dir.path(), Some(keys(&key_line("k1", 1)))).await?;
        let data = vec![9u8; 2 * SEGMENT_BYTES + 10];
        let hex = put(&store, &data, 65536).await?;
        let path = store.path_of(&hex);
        let original = std::fs::read(&path)?;

        std::fs::write(&path, &original[..original.len() - 100])?;
        let e = read_err(&store, &hex, data.len() as u64).await;
        assert_eq!(e.reason(), Reason::DigestMismatch);
        assert!(e.message().contains("truncated"), "{}", e.message());

        // Cut exactly after two whole segments and asked for the length that
        // matches: only the last-segment flag shows the end is missing.
        let header = 8 + 3 + 2 + 8;
        let two = header + 2 * (SEGMENT_BYTES + TAG_BYTES);
        std::fs::write(&path, &original[..two])?;
        let e = read_err(&store, &hex, 2 * SEGMENT_BYTES as u64).await;
        assert_eq!(e.reason(), Reason::DigestMismatch);
        assert!(e.message().contains("part 2"), "{}", e.message());
        Ok(())
    }

    #[tokio::test]
    async fn plaintext_blobs_stay_readable_and_rotation_encrypts_them() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let old = BlobStore::open(dir.path()).await?;
        let before = put(&old, b"written before encryption", 5).await?;
        // A plaintext attachment that happens to start like an encrypted blob.
        let mut lookalike = MAGIC.to_vec();
        lookalike.extend_from_slice(&[1, 16, 2, b'k', b'1']);
        lookalike.extend_from_slice(&[0u8; 40]);
        let tricky = put(&old, &lookalike, 1000).await?;
        drop(old);

        let store = BlobStore::open_with(dir.path(), Some(keys(&key_line("k1", 1)))).await?;
        assert_eq!(
            get(&store, &before, 25, 10).await?,
            b"written before encryption"
        );
        assert_eq!(
            get(&store, &tricky, lookalike.len() as u64, 10).await?,
            lookalike
        );
        let after = put(&store, b"written after", 5).await?;

        let report = store.rotate_key().await?;
        assert_eq!(report.encrypted, 2, "{report:?}");
        assert_eq!(report.already_current, 1, "{report:?}");
        assert!(report.damaged.is_empty() && report.failed.is_empty());
        for (hex, data) in [
            (&before, b"written before encryption".to_vec()),
            (&tricky, lookalike.clone()),
            (&after, b"written after".to_vec()),
        ] {
            assert!(std::fs::read(store.path_of(hex))?.starts_with(&MAGIC));
            assert_eq!(get(&store, hex, data.len() as u64, 7).await?, data);
        }
        Ok(())
    }

    #[tokio::test]
    async fn rotate_then_read_is_idempotent_and_retires_the_old_key() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let k1 = key_line("k1", 1);
        let k2 = key_line("k2", 2);
        let store = BlobStore::open_with(dir.path(), Some(keys(&k1))).await?;
        let a = put(&store, &vec![1u8; SEGMENT_BYTES * 2], 9000).await?;
        let b = put(&store, b"second", 2).await?;
        drop(store);

        // The new key first, the old one still there to open the old blobs.
        let both = keys(&format!("# rotated 2026-11\n{k2}\n{k1}\n"));
        let store = BlobStore::open_with(dir.path(), Some(both.clone())).await?;
        assert_eq!(store.encryption_key_id(), Some("k2"));
        // An interrupted earlier run left a temporary file.
        std::fs::write(
            format!("{}{REKEY_SUFFIX}", store.path_of(&b).display()),
            b"x",
        )?;

        let report = store.rotate_key().await?;
        assert_eq!(report.current_key, "k2");
        assert_eq!(report.reencrypted, 2, "{report:?}");
        assert_eq!(report.leftovers_removed, 1, "{report:?}");
        assert_eq!(report.retired_keys, ["k1"], "{report:?}");
        for hex in [&a, &b] {
            let h = Header::parse(&std::fs::read(store.path_of(hex))?);
            assert_eq!(h.map(|h| h.key_id).as_deref(), Some("k2"));
        }
        assert_eq!(
            get(&store, &a, 2 * SEGMENT_BYTES as u64, 4096).await?,
            vec![1u8; SEGMENT_BYTES * 2]
        );

        let again = store.rotate_key().await?;
        assert_eq!(again.already_current, 2, "{again:?}");
        assert_eq!(again.reencrypted + again.encrypted, 0);
        drop(store);

        // The old key may now leave the key file.
        let store = BlobStore::open_with(dir.path(), Some(keys(&k2))).await?;
        assert_eq!(get(&store, &b, 6, 100).await?, b"second");
        Ok(())
    }

    #[tokio::test]
    async fn rotation_leaves_a_damaged_blob_alone_and_keeps_the_old_key() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let k1 = key_line("k1", 1);
        let store = BlobStore::open_with(dir.path(), Some(keys(&k1))).await?;
        let good = put(&store, b"good bytes", 4).await?;
        let bad = put(&store, b"bytes to be damaged", 4).await?;
        let path = store.path_of(&bad);
        let mut bytes = std::fs::read(&path)?;
        let last = bytes.len() - 1;
        bytes[last] ^= 0x80;
        std::fs::write(&path, &bytes)?;
        drop(store);

        let store = BlobStore::open_with(
            dir.path(),
            Some(keys(&format!("{},{k1}", key_line("k2", 2)))),
        )
        .await?;
        let report = store.rotate_key().await?;
        assert_eq!(report.damaged, std::slice::from_ref(&bad), "{report:?}");
        assert_eq!(report.reencrypted, 1);
        assert!(report.retired_keys.is_empty(), "k1 still seals a blob");
        // Untouched: still under k1, still refused on read.
        assert_eq!(std::fs::read(&path)?, bytes);
        assert_eq!(
            read_err(&store, &bad, 19).await.reason(),
            Reason::DigestMismatch
        );
        assert_eq!(get(&store, &good, 10, 3).await?, b"good bytes");
        Ok(())
    }

    #[tokio::test]
    async fn fifty_megabytes_round_trip_one_segment_at_a_time() -> Result<()> {
        const SIZE: usize = 50 * 1024 * 1024;
        let dir = tempfile::tempdir()?;
        let store = BlobStore::open_with(dir.path(), Some(keys(&key_line("big", 3)))).await?;
        // Pseudo-random, generated chunk by chunk: the test never holds the
        // attachment either.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut chunk = vec![0u8; 1 << 20];
        let mut w = store.create().await?;
        let mut want = digest::Context::new(&digest::SHA256);
        for _ in 0..SIZE / chunk.len() {
            for word in chunk.chunks_mut(8) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                word.copy_from_slice(&state.to_le_bytes());
            }
            want.update(&chunk);
            w.write(&chunk).await?;
        }
        drop(chunk);
        let sealed = w.seal().await?;
        let want = want.finish();
        assert_eq!(sealed.sha256.as_slice(), want.as_ref());
        let hex = hex::encode(sealed.sha256);
        store.commit(sealed).await?;
        assert_eq!(
            std::fs::metadata(store.path_of(&hex))?.len(),
            encrypted_len(8 + 3 + 3 + 8, SIZE as u64)
        );

        let mut r = store.open_blob(&hex, SIZE as u64).await?;
        let mut got = digest::Context::new(&digest::SHA256);
        let mut total = 0usize;
        while let Some(c) = r.next_chunk(256 * 1024).await? {
            // One segment at most is decrypted at a time.
            assert!(c.len() <= SEGMENT_BYTES);
            total += c.len();
            got.update(&c);
        }
        assert_eq!(total, SIZE);
        assert_eq!(got.finish().as_ref(), want.as_ref());
        Ok(())
    }

    #[test]
    fn key_files_are_read_strictly_and_errors_never_show_a_key() {
        let k = keys(&format!(
            "# storage keys\n\n{}  # current\n{}\n",
            key_line("k2026-11", 1),
            key_line("k2025.01_a", 2)
        ));
        assert_eq!(k.current_id(), "k2026-11");
        assert_eq!(k.ids(), ["k2026-11", "k2025.01_a"]);
        assert!(!format!("{k:?}").contains(&key_line("x", 1)[2..]));
        // The environment form: one line, comma separated, unpadded base64.
        let env = format!(
            "{},{}",
            key_line("a", 1).trim_end_matches('='),
            key_line("b", 2)
        );
        assert_eq!(keys(&env).ids(), ["a", "b"]);

        let short = format!(
            "k1:{}",
            base64::engine::general_purpose::STANDARD.encode([5u8; 16])
        );
        for (text, says) in [
            ("", "holds no key"),
            ("# nothing\n", "holds no key"),
            ("justonetoken", "not KEYID:BASE64"),
            ("k 1:AAAA", "not KEYID:BASE64"),
            ("k/1:AAAA", "key id"),
            ("k1:not*base64", "not base64"),
            (short.as_str(), "16 bytes"),
        ] {
            let e = refusal(EncryptionKeys::parse(text, "the key file"));
            assert!(
                e.message().starts_with("the key file: ") && e.message().contains(says),
                "{text}: {}",
                e.message()
            );
            assert!(
                !e.message().contains("BQUF"),
                "a key leaked: {}",
                e.message()
            );
        }
        let dup = format!("{}\n{}", key_line("k1", 1), key_line("k1", 2));
        assert!(
            refusal(EncryptionKeys::parse(&dup, "f"))
                .message()
                .contains("twice")
        );

        let line = match EncryptionKeys::generate_line("k9") {
            Ok(l) => l,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(keys(&line).ids(), ["k9"]);
        assert!(EncryptionKeys::generate_line("bad id").is_err());
    }
}

//! Where decoded attachment bytes go, where the encoder reads them from, and
//! what is inside a single-file ZIP.

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};

use lienthong_proto::v1::AttachmentRef;
use lienthong_types::error::{Error, Result};
use ring::digest;

/// What the package says about an attachment when its bytes begin. Elements
/// that come after ContentTransferEncoded in the package are not known yet:
/// the final values are in the decoded envelope.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttachmentMeta {
    pub content_id: String,
    pub name: String,
    pub description: String,
    pub content_type: String,
}

/// Receives each attachment's decoded bytes as they stream out of the base64
/// text: `begin`, any number of `write`, `end`, one attachment after the other.
pub trait AttachmentSink {
    fn begin(&mut self, index: usize, meta: &AttachmentMeta) -> Result<()>;
    fn write(&mut self, bytes: &[u8]) -> Result<()>;
    /// The size and SHA-256 of what was written since `begin`.
    fn end(&mut self) -> Result<(u64, [u8; 32])>;
    /// Reads back a finished attachment, to look inside a ZIP. Sinks that
    /// cannot (they passed the bytes on) keep the default.
    fn read_back(&mut self, index: usize) -> Result<Option<Box<dyn ReadSeek + '_>>> {
        let _ = index;
        Ok(None)
    }
}

/// `Read + Seek`, for [`AttachmentSink::read_back`].
pub trait ReadSeek: Read + Seek {}
impl<T: Read + Seek> ReadSeek for T {}

/// Size and digest of a stream, kept by every sink.
struct Counter {
    ctx: digest::Context,
    size: u64,
}

impl Counter {
    fn new() -> Self {
        Counter {
            ctx: digest::Context::new(&digest::SHA256),
            size: 0,
        }
    }

    fn update(&mut self, b: &[u8]) {
        self.ctx.update(b);
        self.size += b.len() as u64;
    }

    fn finish(self) -> (u64, [u8; 32]) {
        (self.size, to_array(self.ctx.finish().as_ref()))
    }
}

pub(crate) fn to_array(d: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    if d.len() == 32 {
        out.copy_from_slice(d);
    }
    out
}

/// The refusal of a sink given bytes before `begin`: the codec drives
/// sinks in order, so this is its bug, not the package's.
pub fn not_begun() -> Error {
    Error::malformed("attachment bytes arrived before the attachment began (a codec bug)")
}

/// Keeps every attachment in memory: for tests and small packages.
#[derive(Default)]
pub struct MemorySink {
    /// One entry per attachment, in order.
    pub attachments: Vec<Vec<u8>>,
    counter: Option<Counter>,
}

impl MemorySink {
    pub fn new() -> Self {
        Self::default()
    }
}

impl AttachmentSink for MemorySink {
    fn begin(&mut self, _index: usize, _meta: &AttachmentMeta) -> Result<()> {
        self.attachments.push(Vec::new());
        self.counter = Some(Counter::new());
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let (Some(c), Some(last)) = (self.counter.as_mut(), self.attachments.last_mut()) else {
            return Err(not_begun());
        };
        c.update(bytes);
        last.extend_from_slice(bytes);
        Ok(())
    }

    fn end(&mut self) -> Result<(u64, [u8; 32])> {
        self.counter
            .take()
            .map(Counter::finish)
            .ok_or_else(not_begun)
    }

    fn read_back(&mut self, index: usize) -> Result<Option<Box<dyn ReadSeek + '_>>> {
        Ok(self
            .attachments
            .get(index)
            .map(|a| Box::new(io::Cursor::new(a.as_slice())) as Box<dyn ReadSeek>))
    }
}

/// Counts and hashes, and keeps nothing: for `inspect`.
#[derive(Default)]
pub struct DigestSink {
    counter: Option<Counter>,
}

impl DigestSink {
    pub fn new() -> Self {
        Self::default()
    }
}

impl AttachmentSink for DigestSink {
    fn begin(&mut self, _index: usize, _meta: &AttachmentMeta) -> Result<()> {
        self.counter = Some(Counter::new());
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.counter.as_mut().ok_or_else(not_begun)?.update(bytes);
        Ok(())
    }

    fn end(&mut self) -> Result<(u64, [u8; 32])> {
        self.counter
            .take()
            .map(Counter::finish)
            .ok_or_else(not_begun)
    }
}

/// Writes attachment `i` to `DIR/attachment-{i}` (a directory the caller
/// owns, typically a temporary one), for feeding a submission afterwards.
/// [`DirSource`] reads the same layout.
pub struct DirSink {
    dir: PathBuf,
    files: Vec<PathBuf>,
    current: Option<(BufWriter<File>, Counter)>,
}

impl DirSink {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DirSink {
            dir: dir.into(),
            files: Vec::new(),
            current: None,
        }
    }

    /// The file holding attachment `index`, once it began.
    pub fn path(&self, index: usize) -> Option<&Path> {
        self.files.get(index).map(PathBuf::as_path)
    }

    /// Every attachment file, in order.
    pub fn paths(&self) -> &[PathBuf] {
        &self.files
    }
}

pub(crate) fn attachment_file(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("attachment-{index}"))
}

impl AttachmentSink for DirSink {
    fn begin(&mut self, index: usize, _meta: &AttachmentMeta) -> Result<()> {
        let path = attachment_file(&self.dir, index);
        let f =
            File::create(&path).map_err(|e| Error::unavailable("the attachment directory", e))?;
        self.files.push(path);
        self.current = Some((BufWriter::with_capacity(64 * 1024, f), Counter::new()));
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let (w, c) = self.current.as_mut().ok_or_else(not_begun)?;
        w.write_all(bytes)
            .map_err(|e| Error::unavailable("the attachment directory", e))?;
        c.update(bytes);
        Ok(())
    }

    fn end(&mut self) -> Result<(u64, [u8; 32])> {
        let (w, c) = self.current.take().ok_or_else(not_begun)?;
        let f = w
            .into_inner()
            .map_err(|e| Error::unavailable("the attachment directory", e.into_error()))?;
        drop(f);
        Ok(c.finish())
    }

    fn read_back(&mut self, index: usize) -> Result<Option<Box<dyn ReadSeek + '_>>> {
        let Some(p) = self.files.get(index) else {
            return Ok(None);
        };
        let f = File::open(p).map_err(|e| Error::unavailable("the attachment directory", e))?;
        Ok(Some(Box::new(io::BufReader::new(f))))
    }
}

/// Gives the encoder each attachment's bytes, in `Document.attachments` order.
pub trait AttachmentSource {
    fn open(&mut self, index: usize, attachment: &AttachmentRef) -> Result<Box<dyn Read + '_>>;
}

/// Attachments held in memory.
#[derive(Debug, Clone, Default)]
pub struct MemorySource(pub Vec<Vec<u8>>);

impl AttachmentSource for MemorySource {
    fn open(&mut self, index: usize, attachment: &AttachmentRef) -> Result<Box<dyn Read + '_>> {
        match self.0.get(index) {
            Some(b) => Ok(Box::new(b.as_slice())),
            None => Err(missing(index, attachment)),
        }
    }
}

/// Attachments in the files a [`DirSink`] wrote.
#[derive(Debug, Clone)]
pub struct DirSource(pub PathBuf);

impl AttachmentSource for DirSource {
    fn open(&mut self, index: usize, attachment: &AttachmentRef) -> Result<Box<dyn Read + '_>> {
        let f = File::open(attachment_file(&self.0, index)).map_err(|e| {
            Error::unavailable(&format!("attachment {index} ({})", attachment.name), e)
        })?;
        Ok(Box::new(io::BufReader::with_capacity(64 * 1024, f)))
    }
}

/// A closure as a source, e.g. over a blob store:
/// `FnSource::new(|_index, a| Ok(Box::new(File::open(blobs.path_of(&hex::encode(&a.sha256)))?) as Box<dyn Read>))`.
pub struct FnSource<F>(pub F);

impl<F> FnSource<F>
where
    F: FnMut(usize, &AttachmentRef) -> Result<Box<dyn Read>>,
{
    pub fn new(f: F) -> Self {
        FnSource(f)
    }
}

impl<F> AttachmentSource for FnSource<F>
where
    F: FnMut(usize, &AttachmentRef) -> Result<Box<dyn Read>>,
{
    fn open(&mut self, index: usize, attachment: &AttachmentRef) -> Result<Box<dyn Read + '_>> {
        (self.0)(index, attachment)
    }
}

/// For statuses and documents without attachments.
pub struct NoAttachments;

impl AttachmentSource for NoAttachments {
    fn open(&mut self, index: usize, attachment: &AttachmentRef) -> Result<Box<dyn Read + '_>> {
        Err(missing(index, attachment))
    }
}

fn missing(index: usize, a: &AttachmentRef) -> Error {
    Error::new(
        lienthong_types::error::Reason::NotFound,
        format!(
            "the bytes of attachment {index} ({}) are not available",
            a.name
        ),
    )
}

/// The one file inside a ZIP attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZipEntry {
    pub name: String,
    pub size: u64,
    pub sha256: [u8; 32],
}

/// Whether these first bytes are a ZIP's local file header.
pub(crate) fn looks_like_zip(head: &[u8]) -> bool {
    head.starts_with(b"PK\x03\x04")
}

/// If `zip` is a ZIP archive holding exactly one file, that file's name,
/// size and SHA-256 (and its bytes written to `out`); `None` for anything
/// else (not a ZIP, several files, encrypted, an unsupported method, or an
/// inner file larger than `max_inner` bytes, which guards against ZIP bombs).
pub fn unzip_single<R: Read + Seek, W: Write>(
    zip: R,
    mut out: W,
    max_inner: u64,
) -> Result<Option<ZipEntry>> {
    let Ok(mut archive) = zip::ZipArchive::new(zip) else {
        return Ok(None);
    };
    let mut files = (0..archive.len()).filter(|&i| {
        archive
            .name_for_index(i)
            .and_then(|n| n.ok())
            .is_some_and(|n| !n.ends_with('/'))
    });
    let (Some(i), None) = (files.next(), files.next()) else {
        return Ok(None);
    };
    let Ok(mut file) = archive.by_index(i) else {
        return Ok(None);
    };
    let name = match file.name() {
        Ok(n) => n.into_owned(),
        Err(_) => String::from_utf8_lossy(file.name_raw()).into_owned(),
    };
    let mut counter = Counter::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // A corrupt entry is the producer's business; the ZIP is still
            // carried as it came.
            Err(_) => return Ok(None),
        };
        let chunk = buf.get(..n).unwrap_or_default();
        counter.update(chunk);
        if counter.size > max_inner {
            return Ok(None);
        }
        out.write_all(chunk)
            .map_err(|e| Error::unavailable("the unzipped file's destination", e))?;
    }
    let (size, sha256) = counter.finish();
    Ok(Some(ZipEntry { name, size, sha256 }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zip_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(io::Cursor::new(Vec::new()));
        for (name, data) in files {
            let opts = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated);
            assert!(w.start_file(*name, opts).is_ok());
            assert!(w.write_all(data).is_ok());
        }
        match w.finish() {
            Ok(c) => c.into_inner(),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn a_single_file_zip_reports_its_inner_file() {
        let inner = "Quyết định số 15/QĐ-UBND".repeat(100);
        let z = zip_of(&[("quyet-dinh.txt", inner.as_bytes())]);
        assert!(looks_like_zip(&z));
        let mut out = Vec::new();
        let e = unzip_single(io::Cursor::new(&z), &mut out, u64::MAX)
            .ok()
            .flatten();
        let Some(e) = e else { panic!("no entry") };
        assert_eq!(e.name, "quyet-dinh.txt");
        assert_eq!(e.size, inner.len() as u64);
        assert_eq!(out, inner.as_bytes());
        assert_eq!(
            e.sha256.as_slice(),
            digest::digest(&digest::SHA256, inner.as_bytes()).as_ref()
        );
        // A bomb guard: the inner file is larger than allowed.
        assert_eq!(
            unzip_single(io::Cursor::new(&z), io::sink(), 10)
                .ok()
                .flatten(),
            None
        );
    }

    #[test]
    fn two_files_or_no_zip_report_nothing() {
        let z = zip_of(&[("a.txt", b"a"), ("b.txt", b"b")]);
        assert_eq!(
            unzip_single(io::Cursor::new(&z), io::sink(), u64::MAX)
                .ok()
                .flatten(),
            None
        );
        assert_eq!(
            unzip_single(
                io::Cursor::new(b"PK\x03\x04 not really"),
                io::sink(),
                u64::MAX
            )
            .ok()
            .flatten(),
            None
        );
        assert!(!looks_like_zip(b"%PDF-1.7"));
    }

    #[test]
    fn dir_sink_and_dir_source_agree_on_files() {
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        };
        let mut sink = DirSink::new(dir.path());
        assert!(sink.begin(0, &AttachmentMeta::default()).is_ok());
        assert!(sink.write(b"xin ").is_ok());
        assert!(sink.write("chào".as_bytes()).is_ok());
        let (size, sha) = match sink.end() {
            Ok(v) => v,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(size, "xin chào".len() as u64);
        assert_eq!(
            sha.as_slice(),
            digest::digest(&digest::SHA256, "xin chào".as_bytes()).as_ref()
        );
        let mut src = DirSource(dir.path().to_owned());
        let mut s = String::new();
        let r = src
            .open(0, &AttachmentRef::default())
            .map(|mut r| r.read_to_string(&mut s));
        assert!(matches!(r, Ok(Ok(_))));
        assert_eq!(s, "xin chào");
        assert!(src.open(1, &AttachmentRef::default()).is_err());
        assert!(DigestSink::new().write(b"x").is_err());
    }
}

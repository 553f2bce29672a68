//! The legal signatures inside PDF documents (PAdES), judged once at the
//! gateway for every clerk who will open the document.
//!
//! [`verify`] finds every signature field of the newest revision, checks
//! that each signature's /ByteRange covers a whole revision of the file
//! except exactly its /Contents hole, hashes all the ranges in one
//! streaming pass, checks the CMS signature and its embedded RFC 3161
//! timestamp, builds the signer's chain to `trust.anchors`, looks the signer
//! up in the configured CRLs, and says what the later incremental updates
//! changed: nothing, signatures, annotations and form fields, or content.
//!
//! Time of signing proved, not claimed: the chain, the certificate's
//! validity and its revocation are judged at a verified timestamp's time,
//! and without one at the moment of the check (for the gateway: when it
//! received the document). The time the signer wrote into the signature is
//! reported as its claim; a revoked key can claim any date.
//!
//! No transport knowledge lives here: the pipeline calls it on a stored
//! attachment, `lienthong pdf verify` on a file.
//!
//! Architecture invariant: memory does not grow with the file, and the work
//! is bounded by it. The parser reads pages on demand ([`pdf::Pages`]); the
//! hashing reads the file once, in bounded chunks, feeding every
//! signature's digest at the same time, within a multiple of the file's
//! size ([`Limits`]); a PDF inside a ZIP archive is unpacked to a
//! [`Scratch`] file, never into memory.

pub mod cms;
pub mod pdf;

use std::collections::HashSet;

use lienthong_pki::signing::TrustAnchors;
use rustls_pki_types::{CertificateDer, UnixTime};
use serde::Serialize;
use x509_parser::prelude::{FromDer, X509Certificate};

use pdf::{Dict, Entry, Obj, Pdf, PdfError, Source};

pub use pdf::{FileSource, PdfError as Error};
pub use rustls_pki_types::UnixTime as Time;

/// What the gateway concluded about a document's signatures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Every signature holds, chains to a trust anchor, and nothing but
    /// signatures, annotations or form fields changed after it.
    Valid,
    /// Some signature is broken, revoked or expired when made (as proved by
    /// a timestamp, or as the signer itself claims), or the content changed
    /// after it.
    Invalid,
    /// No signature.
    Unsigned,
    /// Intact, but not provably trusted: an unknown CA, a certificate
    /// revoked or expired before the check with nothing proving the
    /// signature older, or a PDF the limits kept from being fully checked.
    Indeterminate,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Valid => "valid",
            Verdict::Invalid => "invalid",
            Verdict::Unsigned => "unsigned",
            Verdict::Indeterminate => "indeterminate",
        }
    }
}

/// What the revisions after a signature changed, from harmless to not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Changes {
    None,
    /// Later signatures (fields, widgets, their appearances, DSS,
    /// metadata).
    Signatures,
    /// Annotations added or changed, form fields filled.
    Annotations,
    /// Anything else: the document was altered after signing.
    Content,
}

impl Changes {
    pub fn as_str(self) -> &'static str {
        match self {
            Changes::None => "none",
            Changes::Signatures => "signatures",
            Changes::Annotations => "annotations",
            Changes::Content => "content",
        }
    }
}

/// The moment a signature is judged at when no trusted timestamp proves
/// when it was made.
#[derive(Debug, Clone, Copy)]
pub enum Moment {
    /// When the gateway received the document (the pipeline).
    Received(UnixTime),
    /// When `lienthong pdf verify` runs.
    Now(UnixTime),
    /// A time the operator asked for (`lienthong pdf verify --at`).
    Given(UnixTime),
}

impl Moment {
    fn secs(self) -> i64 {
        let (Moment::Received(t) | Moment::Now(t) | Moment::Given(t)) = self;
        i64::try_from(t.as_secs()).unwrap_or(i64::MAX)
    }

    /// "when the gateway received the document (2026-12-06T10:00:00Z)".
    fn describe(self) -> String {
        let at = rfc3339(self.secs()).unwrap_or_default();
        match self {
            Moment::Received(_) => format!("when the gateway received the document ({at})"),
            Moment::Now(_) => format!("at the time of this check ({at})"),
            Moment::Given(_) => format!("at the time asked for ({at})"),
        }
    }
}

/// Bounds on the work one PDF attachment may cost. Over a bound the check
/// stops and says so: the verdict is `indeterminate`, `limit_reached` says
/// which bound and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Signatures checked in one PDF; a PDF with more is checked up to this
    /// many (a Decree 30 document carries the signer's and the
    /// organisation's, and a few approvals).
    pub max_signatures: usize,
    /// Bytes fed to the digests, as a multiple of the file's size (at least
    /// [`MIN_HASH_BUDGET`]). The signatures of a signed document share the
    /// bytes before their /Contents, so they cost about one reading of the
    /// file; only byte ranges made to overlap cost more.
    pub max_hash_multiple: u64,
    /// The largest PDF unpacked from a ZIP archive.
    pub max_unzipped_bytes: u64,
    /// How many times larger than the archive the PDF inside it may be
    /// (beyond [`MIN_UNZIPPED_ALLOWANCE`]): a ZIP bomb expands a thousand
    /// times, a PDF (whose streams are already compressed) a few.
    pub max_zip_ratio: u64,
}

/// The hashing budget of a small file, whatever its size.
pub const MIN_HASH_BUDGET: u64 = 1 << 20;
/// What any ZIP archive may unpack to, whatever its compression ratio.
pub const MIN_UNZIPPED_ALLOWANCE: u64 = 1 << 20;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_signatures: 20,
            max_hash_multiple: 4,
            max_unzipped_bytes: 1 << 30,
            max_zip_ratio: 100,
        }
    }
}

impl Limits {
    fn hash_budget(&self, file_len: u64) -> u64 {
        file_len
            .saturating_mul(self.max_hash_multiple)
            .max(MIN_HASH_BUDGET)
    }

    fn unzipped_allowance(&self, archive_len: u64) -> u64 {
        archive_len
            .saturating_mul(self.max_zip_ratio)
            .max(MIN_UNZIPPED_ALLOWANCE)
            .min(self.max_unzipped_bytes)
    }
}

/// Where a PDF unpacked from a ZIP archive is written, to be read back at
/// any offset: the attachment store's temporary area in the gateway
/// (sealed like a blob when the store is encrypted), [`MemoryScratch`] in
/// tests and fuzzing.
pub trait Scratch {
    fn create(&self) -> std::io::Result<Box<dyn ScratchFile + '_>>;
}

/// A scratch file being written.
pub trait ScratchFile: std::io::Write {
    /// Ends the writing: the bytes written, for reading.
    fn into_source(self: Box<Self>) -> std::io::Result<Box<dyn Source>>;
}

/// Scratch files in memory, for tests and fuzzing: the gateway and
/// `lienthong pdf verify` use the attachment store's temporary area.
#[derive(Debug, Default, Clone, Copy)]
pub struct MemoryScratch;

impl Scratch for MemoryScratch {
    fn create(&self) -> std::io::Result<Box<dyn ScratchFile + '_>> {
        Ok(Box::new(Vec::<u8>::new()))
    }
}

impl ScratchFile for Vec<u8> {
    fn into_source(self: Box<Self>) -> std::io::Result<Box<dyn Source>> {
        Ok(self)
    }
}

/// How a PDF is checked.
#[derive(Clone, Copy)]
pub struct Options<'a> {
    /// The moment the signatures are judged at unless a trusted timestamp
    /// proves an earlier one.
    pub moment: Moment,
    pub limits: Limits,
    /// Where a PDF inside a ZIP archive is unpacked.
    pub scratch: &'a dyn Scratch,
}

impl std::fmt::Debug for Options<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("moment", &self.moment)
            .field("limits", &self.limits)
            .finish()
    }
}

impl Options<'static> {
    /// Judged now, default limits, ZIP entries unpacked in memory: for
    /// tests and fuzzing.
    pub fn in_memory(moment: Moment) -> Options<'static> {
        Options {
            moment,
            limits: Limits::default(),
            scratch: &MemoryScratch,
        }
    }
}

/// One signature as `lienthong pdf verify` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct SignatureReport {
    pub field: String,
    pub signer_subject: String,
    pub signer_organization: Option<String>,
    /// RFC 3339: when the signature was made, as a verified timestamp
    /// proves it (its own, or a document timestamp's); `None` without one.
    pub signing_time: Option<String>,
    /// RFC 3339: the time the signer wrote into the signature (the signed
    /// signingTime, else /M). A claim: it proves nothing.
    pub claimed_signing_time: Option<String>,
    /// RFC 3339: the time the certificate's validity, chain and revocation
    /// were judged at: `signing_time` when there is one, else the moment of
    /// the check.
    pub judged_at: String,
    pub timestamped: bool,
    pub algorithm: String,
    pub digest_ok: bool,
    pub signature_ok: bool,
    pub chain_ok: bool,
    pub trusted_anchor: Option<String>,
    /// Whether the certificate was revoked at `judged_at`; `None` when no
    /// revocation list of the signer's CA is configured.
    pub revoked: Option<bool>,
    /// The certificate was not valid when the signature was made, by its
    /// timestamp or by the signer's own claim.
    pub expired_at_signing: bool,
    /// 1-based; 0 when the byte ranges end at no revision.
    pub covers_revision: usize,
    pub changes_after: Changes,
    /// The signer's common name (for the Decree 30 checks).
    #[serde(skip)]
    pub signer_common_name: Option<String>,
    #[serde(skip)]
    pub signing_time_unix: Option<i64>,
    #[serde(skip)]
    pub claimed_signing_time_unix: Option<i64>,
    #[serde(skip)]
    pub judged_at_unix: i64,
}

impl SignatureReport {
    /// Whether the certificate looks like an organisation's (its CN is the
    /// organisation's name) rather than a person's.
    pub fn is_organisation(&self) -> bool {
        match (&self.signer_common_name, &self.signer_organization) {
            (Some(cn), Some(o)) => normalise(cn) == normalise(o),
            _ => false,
        }
    }
}

/// The whole result.
#[derive(Debug, Clone, Serialize)]
pub struct PdfReport {
    /// When the file was a ZIP archive holding the PDF: the PDF's name in it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zip_entry: Option<String>,
    pub signatures: Vec<SignatureReport>,
    pub revisions: usize,
    pub verdict: Verdict,
    pub reasons: Vec<String>,
    /// Bytes fed to the signatures' digests.
    pub bytes_hashed: u64,
    /// Why the PDF was not fully checked (a bound of [`Limits`]); `None`
    /// when it was.
    pub limit_reached: Option<String>,
}

impl PdfReport {
    /// A PDF the limits kept from being checked at all.
    fn not_checked(zip_entry: Option<String>, why: String) -> PdfReport {
        PdfReport {
            zip_entry,
            signatures: Vec::new(),
            revisions: 0,
            verdict: Verdict::Indeterminate,
            reasons: vec![why.clone()],
            bytes_hashed: 0,
            limit_reached: Some(why),
        }
    }

    /// One sentence for a clerk, e.g. "đã ký số hợp lệ bởi Nguyễn Văn An,
    /// Sở Nội vụ (2 signatures, valid)".
    pub fn summary(&self) -> String {
        let who: Vec<String> = self
            .signatures
            .iter()
            .map(|s| {
                s.signer_common_name
                    .clone()
                    .unwrap_or_else(|| s.signer_subject.clone())
            })
            .collect();
        match self.verdict {
            Verdict::Unsigned => "chưa ký số (no digital signature)".to_owned(),
            Verdict::Valid => format!("đã ký số hợp lệ bởi {} (signatures valid)", who.join(", ")),
            Verdict::Invalid => format!(
                "chữ ký số không hợp lệ (signature invalid): {}",
                self.reasons.first().cloned().unwrap_or_default()
            ),
            Verdict::Indeterminate if self.limit_reached.is_some() => format!(
                "chưa kiểm tra hết chữ ký số (signatures not fully checked): {}",
                self.reasons.first().cloned().unwrap_or_default()
            ),
            Verdict::Indeterminate => format!(
                "chưa xác định được chữ ký số (signature not provably trusted): {}",
                self.reasons.first().cloned().unwrap_or_default()
            ),
        }
    }
}

/// The signatures of a PDF, judged against `anchors` (and their CRLs) at
/// their trusted timestamps' times, else at `opts.moment`. `Err` only when
/// the file cannot be read as a PDF at all.
pub fn verify(
    src: &dyn Source,
    anchors: &TrustAnchors,
    opts: &Options<'_>,
) -> Result<PdfReport, PdfError> {
    let mut doc = Pdf::open(src)?;
    let last = doc.last();
    let revision_ends: Vec<u64> = doc.revisions.iter().map(|r| r.end).collect();
    let max_signatures = opts.limits.max_signatures.max(1);
    let (found, more) = find_signatures(&mut doc, last, max_signatures)?;
    let referenced: HashSet<u32> = found.iter().map(|f| f.sig_num).collect();
    let mut limit_reached = more.then(|| {
        format!(
            "the PDF has more than {max_signatures} signatures, more than the gateway checks in \
             one document (limits.pdf_max_signatures); only the first {max_signatures} were \
             checked"
        )
    });

    // Decode every signature first: their digest algorithms decide the
    // hashing, which then reads the file once for all of them.
    let mut work: Vec<Work> = Vec::new();
    for f in found {
        work.push(prepare(&mut doc, f, &revision_ends));
    }
    let budget = opts.limits.hash_budget(src.len());
    let hashing = hash_ranges(src, &mut work, budget)?;
    if hashing.cut {
        limit_reached.get_or_insert_with(|| {
            format!(
                "checking the signatures' byte ranges would take more than {budget} bytes of \
                 hashing, {} times the file's size (limits.pdf_max_hash_multiple): its \
                 signatures overlap far more than a signed document's do, and not all of them \
                 were checked",
                opts.limits.max_hash_multiple
            )
        });
    }

    let mut signatures = Vec::new();
    // Failures first, then doubts, then notes: the first reason is the one
    // a clerk and a refusal's sentence show.
    let mut invalid = Vec::new();
    let mut indeterminate: Vec<String> = limit_reached.iter().cloned().collect();
    let mut notes = Vec::new();
    let mut changes = ChangesCache::default();
    for w in work {
        let (report, problems) = judge(
            &mut doc,
            w,
            anchors,
            opts.moment,
            &revision_ends,
            &mut changes,
        );
        for p in problems {
            match p {
                Problem::Invalid(s) => invalid.push(s),
                Problem::Indeterminate(s) => indeterminate.push(s),
                Problem::Note(s) => notes.push(s),
            }
        }
        signatures.push(report);
    }
    // A signature dictionary no field points to: a signature was unhooked
    // from the form (an incremental update can do that), so what it would
    // have said is not in the report. Past the signature limit, the
    // signatures not looked at would all look unhooked.
    if !more {
        for num in orphan_signatures(&mut doc, &referenced)? {
            indeterminate.push(format!(
                "object {num} is a signature dictionary that no signature field refers to: a \
                 signature was removed from the form after it was made, and was not checked"
            ));
        }
    }
    // Bytes after the last revision's %%EOF belong to no revision, so no
    // signature covers them; readers ignore them, but nobody vouches for
    // them either.
    if !signatures.is_empty() {
        let end = revision_ends.last().copied().unwrap_or(0);
        let len = src.len();
        if len > end {
            let mut tail = vec![0u8; (len - end).min(4096) as usize];
            let n = src.read_at(end, &mut tail).unwrap_or(0);
            let junk = len - end > 4096 || tail[..n].iter().any(|b| !b" \t\r\n\0\x0c".contains(b));
            if junk {
                indeterminate.push(format!(
                    "{} byte(s) follow the end of the file's last revision and are covered by no \
                     signature",
                    len - end
                ));
            }
        }
    }
    let verdict = if signatures.is_empty() && limit_reached.is_none() {
        Verdict::Unsigned
    } else if !invalid.is_empty() {
        Verdict::Invalid
    } else if !indeterminate.is_empty() {
        Verdict::Indeterminate
    } else {
        Verdict::Valid
    };
    let mut reasons = invalid;
    reasons.append(&mut indeterminate);
    reasons.append(&mut notes);
    Ok(PdfReport {
        zip_entry: None,
        signatures,
        revisions: revision_ends.len(),
        verdict,
        reasons,
        bytes_hashed: hashing.bytes,
        limit_reached,
    })
}

/// Why an attachment's signatures could not be checked.
#[derive(Debug)]
pub enum AttachmentError {
    /// The bytes are not a PDF, or a ZIP archive of one, that can be read.
    Unreadable(PdfError),
    /// The scratch space failed while a zipped PDF was unpacked: a fault of
    /// the gateway's storage, not of the file.
    Storage(String),
}

impl std::fmt::Display for AttachmentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttachmentError::Unreadable(e) => e.fmt(f),
            AttachmentError::Storage(s) => f.write_str(s),
        }
    }
}

impl std::error::Error for AttachmentError {}

impl From<PdfError> for AttachmentError {
    fn from(e: PdfError) -> Self {
        AttachmentError::Unreadable(e)
    }
}

/// Most entries (directories included) the central directory of a ZIP
/// archive holding one PDF may list; and the most bytes it may take. The
/// ZIP reader loads the whole directory into memory, so an archive listing
/// millions of entries is turned away before it is opened.
const MAX_ZIP_ENTRIES: u64 = 16;
const MAX_ZIP_DIRECTORY: u64 = 1 << 20;

/// Like [`verify`], for an attachment as agencies send them: a PDF, or (as
/// many edXML producers do) a ZIP archive holding one PDF, unpacked to
/// `opts.scratch` within `opts.limits` (the report then names it in
/// `zip_entry`; one that would unpack past the limits is reported as not
/// checked).
pub fn verify_attachment(
    src: &dyn Source,
    anchors: &TrustAnchors,
    opts: &Options<'_>,
) -> Result<PdfReport, AttachmentError> {
    let mut head = [0u8; 4];
    let n = src
        .read_at(0, &mut head)
        .map_err(|e| PdfError(format!("the file could not be read: {e}")))?;
    if n < 4 || head != *b"PK\x03\x04" {
        return Ok(verify(src, anchors, opts)?);
    }
    match unzip(src, opts)? {
        Unzipped::Pdf { name, source } => verify(&*source, anchors, opts)
            .map(|r| PdfReport {
                zip_entry: Some(name.clone()),
                ..r
            })
            .map_err(|e| PdfError(format!("{name} inside the ZIP archive: {e}")).into()),
        Unzipped::NotChecked { name, why } => Ok(PdfReport::not_checked(Some(name), why)),
    }
}

enum Unzipped {
    Pdf {
        name: String,
        source: Box<dyn Source>,
    },
    /// Larger than the limits allow: not unpacked past them.
    NotChecked { name: String, why: String },
}

/// Streams the one file of a ZIP archive to a scratch file, counting the
/// bytes as they come out of the decompressor (the sizes an archive
/// declares are not trusted).
fn unzip(src: &dyn Source, opts: &Options<'_>) -> Result<Unzipped, AttachmentError> {
    check_zip_directory(src)?;
    let mut archive = zip::ZipArchive::new(SourceReader { src, pos: 0 })
        .map_err(|e| PdfError(format!("it is a ZIP archive that cannot be read ({e})")))?;
    let files: Vec<usize> = (0..archive.len())
        .filter(|&i| {
            archive
                .name_for_index(i)
                .and_then(|n| n.ok())
                .is_some_and(|n| !n.ends_with('/'))
        })
        .collect();
    let [only] = files.as_slice() else {
        return Err(PdfError(format!(
            "it is a ZIP archive of {} files, not one PDF",
            files.len()
        ))
        .into());
    };
    let mut entry = archive.by_index(*only).map_err(|e| {
        PdfError(format!(
            "the file inside the ZIP archive cannot be read ({e})"
        ))
    })?;
    let name = match entry.name() {
        Ok(n) => n.into_owned(),
        Err(_) => String::from_utf8_lossy(entry.name_raw()).into_owned(),
    };
    let allowance = opts.limits.unzipped_allowance(src.len());
    let too_large = |size: String| {
        format!(
            "the PDF inside the ZIP archive ({name}) unpacks to {size}, more than the gateway \
             unpacks from a {}-byte archive ({allowance} bytes: limits.pdf_max_unzipped_bytes, \
             or {} times the archive, limits.pdf_max_zip_ratio); its signatures were not \
             checked: send the PDF unzipped",
            src.len(),
            opts.limits.max_zip_ratio
        )
    };
    if entry.size() > allowance {
        return Ok(Unzipped::NotChecked {
            why: too_large(format!("{} bytes, as the archive declares", entry.size())),
            name,
        });
    }
    let storage = |e: std::io::Error| {
        AttachmentError::Storage(format!(
            "the PDF inside the ZIP archive could not be unpacked to the gateway's temporary \
             storage ({e})"
        ))
    };
    let mut out = opts.scratch.create().map_err(storage)?;
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0u64;
    loop {
        let n = std::io::Read::read(&mut entry, &mut buf).map_err(|e| {
            PdfError(format!(
                "the file inside the ZIP archive ({name}) cannot be unpacked ({e})"
            ))
        })?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > allowance {
            return Ok(Unzipped::NotChecked {
                why: too_large(format!("more than {allowance} bytes")),
                name,
            });
        }
        std::io::Write::write_all(&mut out, &buf[..n]).map_err(storage)?;
    }
    let source = out.into_source().map_err(storage)?;
    Ok(Unzipped::Pdf { name, source })
}

/// Looks at every end-of-central-directory record where a ZIP reader may
/// find one (the last 64 KiB and a bit: a ZIP comment is at most 64 KiB)
/// and refuses an archive whose directory is larger than one PDF's.
fn check_zip_directory(src: &dyn Source) -> Result<(), PdfError> {
    const EOCD: &[u8; 4] = b"PK\x05\x06";
    const EOCD_LEN: usize = 22;
    let len = src.len();
    let window = len.min((EOCD_LEN + 0xffff) as u64);
    let start = len - window;
    let mut tail = vec![0u8; window as usize];
    let n = src
        .read_at(start, &mut tail)
        .map_err(|e| PdfError(format!("the file could not be read: {e}")))?;
    tail.truncate(n);
    let le16 = |b: &[u8], at: usize| b.get(at..at + 2).map(|x| u16::from_le_bytes([x[0], x[1]]));
    let le32 = |b: &[u8], at: usize| {
        b.get(at..at + 4)
            .map(|x| u32::from_le_bytes([x[0], x[1], x[2], x[3]]))
    };
    let le64 = |b: &[u8], at: usize| {
        b.get(at..at + 8)
            .and_then(|x| <[u8; 8]>::try_from(x).ok())
            .map(u64::from_le_bytes)
    };
    for i in (0..tail.len().saturating_sub(EOCD_LEN - 1)).rev() {
        if &tail[i..i + 4] != EOCD {
            continue;
        }
        let (Some(count), Some(size)) = (le16(&tail, i + 10), le32(&tail, i + 12)) else {
            continue;
        };
        let (mut count, mut size) = (u64::from(count), u64::from(size));
        if count == 0xffff || size == 0xffff_ffff {
            // ZIP64: the real numbers are in the record the locator just
            // before this one points to; unreadable, the saturated ones stand.
            let at = start + i as u64;
            let mut locator = [0u8; 20];
            if at >= 20
                && src.read_at(at - 20, &mut locator).ok() == Some(20)
                && &locator[..4] == b"PK\x06\x07"
                && let Some(offset) = le64(&locator, 8)
            {
                let mut record = [0u8; 56];
                if src.read_at(offset, &mut record).ok() == Some(56)
                    && &record[..4] == b"PK\x06\x06"
                {
                    count = le64(&record, 32).unwrap_or(count);
                    size = le64(&record, 40).unwrap_or(size);
                }
            }
        }
        if count > MAX_ZIP_ENTRIES || size > MAX_ZIP_DIRECTORY {
            return Err(PdfError(format!(
                "it is a ZIP archive whose directory lists {count} entries in {size} bytes, not \
                 one PDF"
            )));
        }
    }
    Ok(())
}

/// `Read + Seek` over a [`Source`], for the ZIP reader.
struct SourceReader<'s> {
    src: &'s dyn Source,
    pos: u64,
}

impl std::io::Read for SourceReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.src.read_at(self.pos, buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl std::io::Seek for SourceReader<'_> {
    fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
        let len = self.src.len() as i128;
        let new = match to {
            std::io::SeekFrom::Start(p) => i128::from(p),
            std::io::SeekFrom::End(d) => len + i128::from(d),
            std::io::SeekFrom::Current(d) => i128::from(self.pos) + i128::from(d),
        };
        self.pos = u64::try_from(new).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before the start")
        })?;
        Ok(self.pos)
    }
}

/// The Decree 30 observations on a verified document: reported to the
/// clerk, never refused. `envelope_signer` is the envelope's
/// Signer.FullName when it has one.
pub fn decree30_warnings(report: &PdfReport, envelope_signer: Option<&str>) -> Vec<String> {
    let mut out = Vec::new();
    if report.signatures.is_empty() {
        return out;
    }
    let people: Vec<&SignatureReport> = report
        .signatures
        .iter()
        .filter(|s| !s.is_organisation())
        .collect();
    if !report
        .signatures
        .iter()
        .any(SignatureReport::is_organisation)
    {
        let who = people
            .first()
            .and_then(|s| s.signer_common_name.clone())
            .unwrap_or_default();
        out.push(format!(
            "the document is signed by {who} but carries no signature of the organisation: \
             Decree 30/2020/NĐ-CP (art. 8) expects the issuing organisation's digital signature \
             beside its leader's on an issued document"
        ));
    }
    if let Some(name) = envelope_signer.map(str::trim).filter(|n| !n.is_empty()) {
        let matches = people.iter().any(|s| {
            s.signer_common_name
                .as_deref()
                .is_some_and(|cn| normalise(cn) == normalise(name))
        });
        if !people.is_empty() && !matches {
            let signers: Vec<String> = people
                .iter()
                .filter_map(|s| s.signer_common_name.clone())
                .collect();
            out.push(format!(
                "the PDF is signed by {} but the envelope names {name} as its signer",
                signers.join(", ")
            ));
        }
    }
    out
}

fn normalise(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

// ---------------------------------------------------------------------------
// Finding the signatures
// ---------------------------------------------------------------------------

struct FoundField {
    name: String,
    sig_num: u32,
}

/// The signature fields with a value, at most `max` of them; and whether
/// there are more.
fn find_signatures(
    doc: &mut Pdf<'_>,
    rev: usize,
    max: usize,
) -> Result<(Vec<FoundField>, bool), PdfError> {
    let trailer = doc.revisions[rev].trailer.clone();
    let Some(root) = trailer.get(b"Root").cloned() else {
        return Err(PdfError(
            "the file's trailer names no document catalog (/Root)".into(),
        ));
    };
    let catalog = doc.resolve(rev, &root)?;
    let Some(catalog) = catalog.as_dict() else {
        return Err(PdfError("the document catalog is not a dictionary".into()));
    };
    let Some(acroform) = catalog.get(b"AcroForm").cloned() else {
        return Ok((Vec::new(), false));
    };
    let acroform = doc.resolve(rev, &acroform)?;
    let Some(fields) = acroform.as_dict().and_then(|d| d.get(b"Fields")).cloned() else {
        return Ok((Vec::new(), false));
    };
    let fields = doc.resolve(rev, &fields)?;
    let Obj::Array(fields) = fields else {
        return Ok((Vec::new(), false));
    };
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut stack: Vec<(Obj, String, Option<Vec<u8>>, usize)> = fields
        .into_iter()
        .rev()
        .map(|f| (f, String::new(), None, 0))
        .collect();
    while let Some((f, parent, inherited_ft, depth)) = stack.pop() {
        if depth > 32 || out.len() > max {
            break;
        }
        if let Obj::Ref(n, _) = f
            && !seen.insert(n)
        {
            continue;
        }
        let obj = doc.resolve(rev, &f)?;
        let Some(d) = obj.as_dict() else {
            continue;
        };
        let own = match d.get(b"T") {
            Some(Obj::Str(t)) => Some(text(t)),
            _ => None,
        };
        let name = match (&own, parent.is_empty()) {
            (Some(t), true) => t.clone(),
            (Some(t), false) => format!("{parent}.{t}"),
            (None, _) => parent.clone(),
        };
        let ft = d.name(b"FT").map(<[u8]>::to_vec).or(inherited_ft);
        if ft.as_deref() == Some(b"Sig")
            && let Some(Obj::Ref(n, _)) = d.get(b"V")
        {
            out.push(FoundField {
                name: name.clone(),
                sig_num: *n,
            });
        }
        if let Some(kids) = d.get(b"Kids").cloned()
            && let Obj::Array(kids) = doc.resolve(rev, &kids)?
        {
            for k in kids.into_iter().rev() {
                stack.push((k, name.clone(), ft.clone(), depth + 1));
            }
        }
    }
    let more = out.len() > max;
    out.truncate(max);
    Ok((out, more))
}

/// Signature dictionaries (objects with a /ByteRange and /Contents) in the
/// newest table that no field refers to. Only revisions of at most
/// [`ORPHAN_SCAN_LIMIT`] objects are looked through, which covers every
/// incremental update and all but the largest originals.
fn orphan_signatures(doc: &mut Pdf<'_>, referenced: &HashSet<u32>) -> Result<Vec<u32>, PdfError> {
    let last = doc.last();
    let mut candidates: Vec<u32> = Vec::new();
    for r in &doc.revisions {
        if r.entries.len() <= ORPHAN_SCAN_LIMIT {
            candidates.extend(
                r.entries
                    .iter()
                    .filter(|(_, e)| matches!(e, Entry::At(..)))
                    .map(|(n, _)| *n),
            );
        }
    }
    candidates.sort_unstable();
    candidates.dedup();
    let mut out = Vec::new();
    for num in candidates {
        if referenced.contains(&num) || !matches!(doc.entry(last, num), Some(Entry::At(..))) {
            continue;
        }
        // An object that does not parse is not a signature we can name.
        let Ok(obj) = doc.object(last, num) else {
            continue;
        };
        if let Obj::Dict(d) = obj
            && d.get(b"ByteRange").is_some()
            && d.get(b"Contents").is_some()
        {
            out.push(num);
        }
    }
    Ok(out)
}

const ORPHAN_SCAN_LIMIT: usize = 10_000;

/// A PDF text string: UTF-16BE with its BOM, else PDFDocEncoding (read as
/// Latin-1, which it equals for the characters field names use).
fn text(b: &[u8]) -> String {
    if let Some(rest) = b.strip_prefix(&[0xfe, 0xff]) {
        let units: Vec<u16> = rest
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect();
        return String::from_utf16_lossy(&units);
    }
    if let Some(rest) = b.strip_prefix(&[0xef, 0xbb, 0xbf]) {
        return String::from_utf8_lossy(rest).into_owned();
    }
    b.iter().map(|&c| char::from(c)).collect()
}

// ---------------------------------------------------------------------------
// One signature
// ---------------------------------------------------------------------------

enum Kind {
    /// A CMS signature over the byte ranges (adbe.pkcs7.detached,
    /// ETSI.CAdES.detached).
    Detached,
    /// A document timestamp (ETSI.RFC3161): a token over the byte ranges.
    DocTimestamp,
}

struct Work {
    field: String,
    kind: Kind,
    ranges: Option<[(u64, u64); 2]>,
    covers_revision: usize,
    claimed_m: Option<i64>,
    cms: Result<cms::Signed, String>,
    /// Problems with the dictionary or ranges found before hashing.
    structure: Vec<String>,
    /// What the byte ranges are hashed with, when the signature is readable.
    digest_alg: Option<cms::Digest>,
    /// Forked from its algorithm's shared context where its hole begins.
    hasher: Option<ring::digest::Context>,
    /// How far into its second range the hasher has been fed.
    hashed_to: u64,
    digest: Option<Vec<u8>>,
    /// Why the signature was not checked: the hashing budget ran out.
    unchecked: Option<String>,
}

fn prepare(doc: &mut Pdf<'_>, f: FoundField, revision_ends: &[u64]) -> Work {
    let mut w = Work {
        field: f.name.clone(),
        kind: Kind::Detached,
        ranges: None,
        covers_revision: 0,
        claimed_m: None,
        cms: Err("the signature could not be read".into()),
        structure: Vec::new(),
        digest_alg: None,
        hasher: None,
        hashed_to: 0,
        digest: None,
        unchecked: None,
    };
    let last = doc.last();
    let (dict, contents_span) = match doc.entry(last, f.sig_num) {
        Some(Entry::At(off, _)) => match doc.object_at(last, off, f.sig_num) {
            Ok((_, Obj::Dict(d))) => {
                let span = d.span_of(b"Contents");
                (d, span)
            }
            Ok(_) => {
                w.structure.push(format!(
                    "signature field {} points to an object that is not a signature dictionary",
                    f.name
                ));
                return w;
            }
            Err(e) => {
                w.structure.push(format!(
                    "the signature dictionary of field {} cannot be read: {e}",
                    f.name
                ));
                return w;
            }
        },
        _ => {
            w.structure.push(format!(
                "the signature dictionary of field {} is not stored directly in the file (it must \
                 be, for its byte ranges to be checked)",
                f.name
            ));
            return w;
        }
    };
    if dict.name(b"SubFilter") == Some(b"ETSI.RFC3161") || dict.is_type(b"DocTimeStamp") {
        w.kind = Kind::DocTimestamp;
    } else if let Some(sf) = dict.name(b"SubFilter")
        && sf != b"adbe.pkcs7.detached"
        && sf != b"ETSI.CAdES.detached"
    {
        w.cms = Err(format!(
            "the signature uses the {} format, which is obsolete or not a PAdES format; \
                 sign again as ETSI.CAdES.detached",
            String::from_utf8_lossy(sf)
        ));
    }
    if let Some(Obj::Str(m)) = dict.get(b"M") {
        w.claimed_m = pdf_date(m);
    }
    let contents = match dict.get(b"Contents") {
        Some(Obj::Str(c)) => c.clone(),
        _ => {
            w.structure
                .push(format!("signature {} has no /Contents string", f.name));
            return w;
        }
    };
    let br: Option<Vec<i64>> = match dict.get(b"ByteRange") {
        Some(Obj::Array(a)) => a.iter().map(Obj::as_int).collect(),
        _ => None,
    };
    match (br.as_deref(), contents_span) {
        (Some(&[s0, l0, s1, l1]), Some(span)) if s0 == 0 && l0 >= 0 && s1 >= l0 && l1 >= 0 => {
            let (a, b, c) = (l0 as u64, s1 as u64, l1 as u64);
            w.ranges = Some([(0, a), (b, b.saturating_add(c))]);
            if a != span.start || b != span.end {
                w.structure.push(format!(
                    "the byte ranges of signature {} leave out bytes {a}..{b}, which is not exactly \
                     its /Contents ({}..{}): bytes outside the signature are unsigned",
                    f.name, span.start, span.end
                ));
            }
            let end = b.saturating_add(c);
            match revision_ends.iter().position(|e| *e == end) {
                Some(i) => w.covers_revision = i + 1,
                None => w.structure.push(format!(
                    "the byte ranges of signature {} end at byte {end}, which is not the end of a \
                     revision of the file: part of the file is unsigned",
                    f.name
                )),
            }
        }
        _ => {
            w.structure.push(format!(
                "signature {} has a malformed /ByteRange (it must be [0 a b c] around its /Contents)",
                f.name
            ));
            return w;
        }
    }
    if w.cms.as_ref().err().is_some_and(|e| e.contains("format")) {
        return w;
    }
    w.cms = cms::decode(&contents);
    let digest = match (&w.kind, &w.cms) {
        (Kind::Detached, Ok(s)) => Some(s.digest),
        (Kind::DocTimestamp, Ok(s)) => s
            .content
            .as_deref()
            .and_then(|c| cms::decode_tst_info(c).ok())
            .map(|t| t.imprint_digest),
        _ => None,
    };
    w.digest_alg = digest;
    w
}

/// What the hashing cost.
struct Hashing {
    /// Bytes fed to the digests.
    bytes: u64,
    /// The budget ran out before every signature was hashed.
    cut: bool,
}

/// One digest algorithm's shared context: every signature's first range
/// starts at byte 0, so the bytes before a signature's /Contents are the
/// same for all of them and are hashed once.
struct Lane {
    alg: cms::Digest,
    ctx: ring::digest::Context,
    /// Bytes hashed so far (the file from 0 to here).
    pos: u64,
    /// Signatures not forked yet, the one whose hole begins first last.
    waiting: Vec<usize>,
}

/// Hashes every signature's two ranges in one pass over the file, feeding
/// the digests at most `budget` bytes. A signature's context is forked from
/// its algorithm's shared one where its hole begins; only the bytes after
/// its hole are its own. The signatures of a signed document (each in its
/// own incremental update) so cost about one reading of the file; ranges
/// made to overlap again and again run out of budget instead of time.
fn hash_ranges(src: &dyn Source, work: &mut [Work], budget: u64) -> Result<Hashing, PdfError> {
    let mut lanes: Vec<Lane> = Vec::new();
    for (i, w) in work.iter_mut().enumerate() {
        let (Some(alg), Some(r)) = (w.digest_alg, w.ranges) else {
            continue;
        };
        w.hashed_to = r[1].0;
        match lanes.iter_mut().find(|l| l.alg == alg) {
            Some(l) => l.waiting.push(i),
            None => lanes.push(Lane {
                alg,
                ctx: ring::digest::Context::new(alg.ring()),
                pos: 0,
                waiting: vec![i],
            }),
        }
    }
    let hole = |w: &Work| w.ranges.map(|r| r[0].1).unwrap_or(0);
    for l in &mut lanes {
        l.waiting
            .sort_by_key(|&i| std::cmp::Reverse(hole(&work[i])));
    }
    let end = work
        .iter()
        .filter(|w| w.digest_alg.is_some())
        .filter_map(|w| w.ranges.map(|r| r[1].1))
        .max()
        .unwrap_or(0)
        .min(src.len());
    let mut spent = 0u64;
    let mut cut = false;
    let mut take = |n: u64| -> bool {
        if spent.saturating_add(n) > budget {
            cut = true;
            false
        } else {
            spent += n;
            true
        }
    };
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    'read: while pos < end {
        let want = ((end - pos) as usize).min(buf.len());
        let n = src
            .read_at(pos, &mut buf[..want])
            .map_err(|e| PdfError(format!("the file could not be read: {e}")))?;
        if n == 0 {
            break;
        }
        let chunk_end = pos + n as u64;
        let slice = |from: u64, to: u64| &buf[(from - pos) as usize..(to - pos) as usize];
        for lane in &mut lanes {
            while let Some(&i) = lane.waiting.last() {
                let fork = hole(&work[i]);
                if fork > chunk_end {
                    break;
                }
                if fork > lane.pos {
                    if !take(fork - lane.pos) {
                        break 'read;
                    }
                    lane.ctx.update(slice(lane.pos, fork));
                    lane.pos = fork;
                }
                work[i].hasher = Some(lane.ctx.clone());
                lane.waiting.pop();
            }
            if !lane.waiting.is_empty() && chunk_end > lane.pos {
                if !take(chunk_end - lane.pos) {
                    break 'read;
                }
                lane.ctx.update(slice(lane.pos, chunk_end));
                lane.pos = chunk_end;
            }
        }
        for w in work.iter_mut() {
            let (Some(h), Some(r)) = (w.hasher.as_mut(), w.ranges) else {
                continue;
            };
            let from = w.hashed_to.max(pos);
            let to = r[1].1.min(chunk_end);
            if from < to {
                if !take(to - from) {
                    break 'read;
                }
                h.update(slice(from, to));
                w.hashed_to = to;
            }
        }
        pos = chunk_end;
    }
    let file_len = src.len();
    for w in work.iter_mut() {
        let (Some(_), Some(r)) = (w.digest_alg, w.ranges) else {
            continue;
        };
        let done = w.hasher.is_some() && w.hashed_to >= r[1].1;
        match w.hasher.take() {
            Some(h) if done => w.digest = Some(h.finish().as_ref().to_vec()),
            _ if r[1].1 > file_len => w.structure.push(format!(
                "the byte ranges of signature {} reach past the end of the file: it was truncated",
                w.field
            )),
            _ if cut => {
                w.unchecked = Some(format!(
                    "signature {} was not checked: the gateway's hashing budget for this PDF \
                     ran out before its byte ranges were read",
                    w.field
                ))
            }
            _ => w.structure.push(format!(
                "the byte ranges of signature {} could not be read to their end",
                w.field
            )),
        }
    }
    Ok(Hashing { bytes: spent, cut })
}

enum Problem {
    Invalid(String),
    Indeterminate(String),
    Note(String),
}

fn judge(
    doc: &mut Pdf<'_>,
    w: Work,
    anchors: &TrustAnchors,
    moment: Moment,
    revision_ends: &[u64],
    changes: &mut ChangesCache,
) -> (SignatureReport, Vec<Problem>) {
    let mut problems: Vec<Problem> = w.structure.iter().cloned().map(Problem::Invalid).collect();
    if let Some(why) = &w.unchecked {
        problems.push(Problem::Indeterminate(why.clone()));
    }
    let mut r = SignatureReport {
        field: w.field.clone(),
        signer_subject: String::new(),
        signer_organization: None,
        signing_time: None,
        claimed_signing_time: None,
        judged_at: rfc3339(moment.secs()).unwrap_or_default(),
        timestamped: false,
        algorithm: "unknown".into(),
        digest_ok: false,
        signature_ok: false,
        chain_ok: false,
        trusted_anchor: None,
        revoked: None,
        expired_at_signing: false,
        covers_revision: w.covers_revision,
        changes_after: Changes::None,
        signer_common_name: None,
        signing_time_unix: None,
        claimed_signing_time_unix: None,
        judged_at_unix: moment.secs(),
    };
    if w.covers_revision > 0 {
        match changes.after(doc, w.covers_revision - 1) {
            Ok(c) => r.changes_after = c,
            Err(e) => {
                r.changes_after = Changes::Content;
                problems.push(Problem::Invalid(format!(
                    "what changed after signature {} cannot be told: {e}",
                    w.field
                )));
            }
        }
        if r.changes_after == Changes::Content {
            problems.push(Problem::Invalid(format!(
                "the document's content was changed after signature {} was made (revision {} of {})",
                w.field,
                w.covers_revision,
                revision_ends.len()
            )));
        }
    }
    let signed = match w.cms {
        Ok(s) => s,
        Err(e) => {
            problems.push(Problem::Invalid(format!("signature {}: {e}", w.field)));
            return (r, problems);
        }
    };
    r.algorithm = signed.algorithm_name();
    describe_signer(&signed.signer_cert, &mut r);

    // The time the signature was made, when something trusted proves it.
    let mut proved = None;
    // The digest over the byte ranges.
    match (&w.kind, &w.digest) {
        (Kind::Detached, Some(d)) => {
            r.digest_ok = *d == signed.message_digest;
            if !r.digest_ok {
                problems.push(Problem::Invalid(format!(
                    "signature {}: the signed bytes of the file were changed after signing (their \
                     digest differs from the one the signer signed)",
                    w.field
                )));
            }
        }
        (Kind::DocTimestamp, Some(d)) => {
            match signed.content.as_deref().map(cms::decode_tst_info) {
                Some(Ok(tst)) => {
                    r.digest_ok = tst.imprint == *d;
                    r.timestamped = r.digest_ok;
                    // A document timestamp is the authority's own
                    // statement of its time; its chain is judged there.
                    proved = Some(tst.gen_time);
                }
                _ => problems.push(Problem::Invalid(format!(
                    "document timestamp {} holds no readable TSTInfo",
                    w.field
                ))),
            }
            if !r.digest_ok {
                problems.push(Problem::Invalid(format!(
                    "document timestamp {}: the file's bytes differ from what was timestamped",
                    w.field
                )));
            }
        }
        (_, None) => {}
    }
    if matches!(w.kind, Kind::DocTimestamp) {
        // The token's own signed attributes cover the TSTInfo.
        let content_ok = signed.content.as_deref().is_some_and(|c| {
            ring::digest::digest(signed.digest.ring(), c).as_ref() == signed.message_digest
        });
        if !content_ok {
            r.digest_ok = false;
            problems.push(Problem::Invalid(format!(
                "document timestamp {}: its TSTInfo was changed after the authority signed it",
                w.field
            )));
        }
    }
    match signed.verify_signature() {
        Ok(()) => r.signature_ok = true,
        Err(e) => problems.push(Problem::Invalid(format!("signature {}: {e}", w.field))),
    }

    // The time the chain is judged at: a verified timestamp's, else the
    // moment of the check. What the signer wrote is only its claim: a
    // revoked key can write any date.
    let mut claimed = None;
    if matches!(w.kind, Kind::Detached) {
        if let Some(token) = &signed.timestamp_token {
            match check_timestamp(token, &signed.signature, anchors) {
                Ok(t) => {
                    r.timestamped = true;
                    proved = Some(t);
                }
                Err(e) => problems.push(Problem::Indeterminate(format!(
                    "the timestamp of signature {} cannot be relied on: {e}",
                    w.field
                ))),
            }
        }
        claimed = signed.signing_time.or(w.claimed_m);
        if proved.is_none() {
            problems.push(Problem::Note(format!(
                "signature {} carries no trusted timestamp, so nothing proves when it was made{}: \
                 its certificate and revocation were judged {}",
                w.field,
                claimed
                    .and_then(rfc3339)
                    .map(|c| format!(" (the signer claims {c})"))
                    .unwrap_or_default(),
                moment.describe()
            )));
        }
    }
    let when = When {
        at: proved.unwrap_or_else(|| moment.secs()),
        proved: proved.is_some(),
        claimed,
        moment,
    };
    r.signing_time_unix = proved;
    r.signing_time = proved.and_then(rfc3339);
    r.claimed_signing_time_unix = claimed;
    r.claimed_signing_time = claimed.and_then(rfc3339);
    r.judged_at_unix = when.at;
    r.judged_at = rfc3339(when.at).unwrap_or_default();

    let mut chain_at = when.at;
    if let Ok((_, leaf)) = X509Certificate::from_der(&signed.signer_cert) {
        let v = leaf.validity();
        let (from, to) = (v.not_before.timestamp(), v.not_after.timestamp());
        let outside = |t: i64| t < from || t > to;
        let span = format!(
            "valid {} to {}",
            rfc3339(from).unwrap_or_default(),
            rfc3339(to).unwrap_or_default()
        );
        if when.proved && outside(when.at) {
            r.expired_at_signing = true;
            problems.push(Problem::Invalid(format!(
                "signature {}: the signer's certificate was not valid at the signing time {} its \
                 timestamp proves ({span})",
                w.field,
                rfc3339(when.at).unwrap_or_default(),
            )));
        } else if let Some(c) = claimed.filter(|c| !when.proved && outside(*c)) {
            r.expired_at_signing = true;
            problems.push(Problem::Invalid(format!(
                "signature {}: the signer's certificate was not valid at the signing time the \
                 signer itself claims, {} ({span})",
                w.field,
                rfc3339(c).unwrap_or_default(),
            )));
        } else if outside(when.at) {
            problems.push(Problem::Indeterminate(format!(
                "signature {}: the signer's certificate ({span}) was not valid {}{}, and no \
                 trusted timestamp proves the signature was made while it was: have the document \
                 signed again with a valid certificate (and an RFC 3161 timestamp)",
                w.field,
                moment.describe(),
                claimed
                    .and_then(rfc3339)
                    .map(|c| format!("; the signer claims to have signed on {c}"))
                    .unwrap_or_default(),
            )));
        }
        // Whether the chain holds is judged within the certificate's own
        // validity, so an expiry is reported as such, not also as "untrusted".
        if outside(chain_at) {
            chain_at = claimed
                .filter(|c| !outside(*c))
                .unwrap_or(chain_at.clamp(from, to));
        }
    }
    let chain = check_chain(
        &signed.signer_cert,
        &signed.other_certs,
        anchors,
        unix_time(chain_at),
        when,
    );
    r.chain_ok = chain.ok;
    r.trusted_anchor = chain.anchor;
    r.revoked = chain.revoked;
    for p in chain.problems {
        problems.push(match p {
            ChainProblem::Untrusted(s) | ChainProblem::Unproved(s) => {
                Problem::Indeterminate(format!("signature {}: {s}", w.field))
            }
            ChainProblem::Revoked(s) => Problem::Invalid(format!("signature {}: {s}", w.field)),
            ChainProblem::Note(s) => Problem::Note(format!("signature {}: {s}", w.field)),
        });
    }
    (r, problems)
}

/// The time a signature is judged at, and what it rests on.
#[derive(Debug, Clone, Copy)]
struct When {
    /// Validity, chain and revocation are judged at this time.
    at: i64,
    /// `at` is a verified timestamp's time; else it is the moment of the check.
    proved: bool,
    /// The time the signer wrote into the signature.
    claimed: Option<i64>,
    moment: Moment,
}

fn describe_signer(cert_der: &[u8], r: &mut SignatureReport) {
    if let Ok((_, c)) = X509Certificate::from_der(cert_der) {
        r.signer_subject = c.subject().to_string();
        r.signer_organization = c
            .subject()
            .iter_organization()
            .next()
            .and_then(|a| a.as_str().ok())
            .map(str::to_owned);
        r.signer_common_name = c
            .subject()
            .iter_common_name()
            .next()
            .and_then(|a| a.as_str().ok())
            .map(str::to_owned);
    }
}

/// Verifies an RFC 3161 signature timestamp over `signature_value`;
/// returns its time.
fn check_timestamp(
    token: &[u8],
    signature_value: &[u8],
    anchors: &TrustAnchors,
) -> Result<i64, String> {
    let ts = cms::decode(token)?;
    if ts.content_type != cms::ID_CT_TST_INFO {
        return Err("the token does not hold a TSTInfo".into());
    }
    let Some(content) = ts.content.as_deref() else {
        return Err("the token holds no TSTInfo".into());
    };
    if ring::digest::digest(ts.digest.ring(), content).as_ref() != ts.message_digest {
        return Err("its TSTInfo was changed after the authority signed it".into());
    }
    ts.verify_signature()?;
    let tst = cms::decode_tst_info(content)?;
    if ring::digest::digest(tst.imprint_digest.ring(), signature_value).as_ref() != tst.imprint {
        return Err("it was made for another signature value".into());
    }
    // The authority vouches for its own time: its certificate is judged there.
    let chain = check_chain(
        &ts.signer_cert,
        &ts.other_certs,
        anchors,
        unix_time(tst.gen_time),
        When {
            at: tst.gen_time,
            proved: true,
            claimed: None,
            moment: Moment::Given(unix_time(tst.gen_time)),
        },
    );
    let failed = |p: &ChainProblem| !matches!(p, ChainProblem::Note(_));
    if !chain.ok || chain.problems.iter().any(failed) {
        let why = chain
            .problems
            .into_iter()
            .filter(failed)
            .map(|p| match p {
                ChainProblem::Untrusted(s)
                | ChainProblem::Revoked(s)
                | ChainProblem::Unproved(s)
                | ChainProblem::Note(s) => s,
            })
            .next()
            .unwrap_or_default();
        return Err(format!("its authority is not trusted: {why}"));
    }
    Ok(tst.gen_time)
}

enum ChainProblem {
    Untrusted(String),
    /// Revoked before the signature was made, by its timestamp or by the
    /// signer's own claim.
    Revoked(String),
    /// Revoked before the moment of the check, with nothing proving the
    /// signature older than the revocation.
    Unproved(String),
    Note(String),
}

struct ChainCheck {
    ok: bool,
    anchor: Option<String>,
    revoked: Option<bool>,
    problems: Vec<ChainProblem>,
}

/// Builds the chain of `leaf` to the anchors at `chain_at`, then looks the
/// leaf up in its CA's revocation list as of `when`.
fn check_chain(
    leaf: &[u8],
    others: &[Vec<u8>],
    anchors: &TrustAnchors,
    chain_at: UnixTime,
    when: When,
) -> ChainCheck {
    let mut out = ChainCheck {
        ok: false,
        anchor: None,
        revoked: None,
        problems: Vec::new(),
    };
    let Ok((_, parsed)) = X509Certificate::from_der(leaf) else {
        out.problems.push(ChainProblem::Untrusted(
            "the signer's certificate cannot be parsed".into(),
        ));
        return out;
    };
    if anchors.is_empty() {
        out.problems.push(ChainProblem::Untrusted(
            "no trust anchors are configured (trust.anchors or --anchors), so no signer can be trusted".into(),
        ));
        return out;
    }
    let leaf_der = CertificateDer::from(leaf);
    let Ok(ee) = webpki::EndEntityCert::try_from(&leaf_der) else {
        out.problems.push(ChainProblem::Untrusted(
            "the signer's certificate cannot be used for verification".into(),
        ));
        return out;
    };
    let intermediates: Vec<CertificateDer<'_>> = others
        .iter()
        .map(|c| CertificateDer::from(c.as_slice()))
        .collect();
    let algs = lienthong_pki::algorithms::chain_algorithms(!anchors.policy().refuse_sha1);
    let snapshot = anchors.crls();
    let lists = snapshot
        .as_deref()
        .map(|s| s.webpki_lists())
        .unwrap_or_default();
    let revocation = webpki::RevocationOptionsBuilder::new(&lists).ok().map(|b| {
        b.with_depth(webpki::RevocationCheckDepth::Chain)
            .with_status_policy(webpki::UnknownStatusPolicy::Allow)
            .with_expiration_policy(webpki::ExpirationPolicy::Ignore)
            .build()
    });
    let verify = |rev| {
        ee.verify_for_usage(
            &algs,
            anchors.webpki_anchors(),
            &intermediates,
            chain_at,
            lienthong_pki::signing::AnyExtendedKeyUsage,
            rev,
            None,
        )
    };
    let mut listed = false;
    let path = match verify(revocation) {
        Ok(p) => Ok(p),
        Err(webpki::Error::CertRevoked) => {
            listed = true;
            verify(None)
        }
        Err(e) => Err(e),
    };
    match path {
        Ok(p) => {
            out.ok = true;
            out.anchor = Some(anchors.subject_of(p.anchor()));
        }
        Err(e) => {
            out.problems.push(ChainProblem::Untrusted(format!(
                "the signer's certificate ({}) does not chain to a trusted CA: {}",
                parsed.subject(),
                describe_webpki(&e)
            )));
            return out;
        }
    }
    // Revocation of the leaf, at the signing time.
    let Some(snapshot) = snapshot.filter(|s| !s.is_empty()) else {
        return out;
    };
    let Some(crl) = snapshot.for_issuer(parsed.issuer().as_raw()) else {
        if listed {
            out.revoked = Some(true);
            out.problems.push(ChainProblem::Revoked(
                "a CA certificate of the signer's chain is revoked".into(),
            ));
        }
        return out;
    };
    let revoked_on = |e: &lienthong_pki::crl::RevokedEntry| {
        format!(
            "the signer's certificate was revoked on {} ({}), per {}",
            rfc3339(e.revocation_date).unwrap_or_default(),
            e.reason.unwrap_or("unspecified"),
            crl.source().display()
        )
    };
    match crl.find_revoked(parsed.raw_serial()) {
        Some(entry) if entry.revocation_date <= when.at => {
            out.revoked = Some(true);
            let what = revoked_on(&entry);
            out.problems.push(if when.proved {
                ChainProblem::Revoked(format!(
                    "{what}, before the signing time its timestamp proves ({})",
                    rfc3339(when.at).unwrap_or_default()
                ))
            } else if let Some(c) = when.claimed.filter(|c| *c >= entry.revocation_date) {
                ChainProblem::Revoked(format!(
                    "{what}, before the signing time the signer itself claims ({})",
                    rfc3339(c).unwrap_or_default()
                ))
            } else {
                ChainProblem::Unproved(format!(
                    "{what}, before {}; the signature claims to have been made {}, but no \
                     trusted timestamp proves it older than the revocation, and a revoked key \
                     can claim any date: have the document signed again with a valid \
                     certificate (and an RFC 3161 timestamp)",
                    when.moment.describe(),
                    when.claimed
                        .and_then(rfc3339)
                        .map(|c| format!("on {c}, before the revocation"))
                        .unwrap_or_else(|| "at no stated time".to_owned())
                ))
            });
        }
        Some(entry) => {
            out.revoked = Some(false);
            out.problems.push(ChainProblem::Note(format!(
                "the signer's certificate was revoked on {}, after {}",
                rfc3339(entry.revocation_date).unwrap_or_default(),
                if when.proved {
                    format!(
                        "the signing time its timestamp proves ({})",
                        rfc3339(when.at).unwrap_or_default()
                    )
                } else {
                    when.moment.describe()
                }
            )));
        }
        None if listed => {
            out.revoked = Some(true);
            out.problems.push(ChainProblem::Revoked(
                "a CA certificate of the signer's chain is revoked".into(),
            ));
        }
        None => out.revoked = Some(false),
    }
    out
}

fn describe_webpki(e: &webpki::Error) -> String {
    match e {
        webpki::Error::UnknownIssuer => "its issuer is not among the trust anchors".into(),
        webpki::Error::CertExpired { .. } => {
            "a certificate of its chain had expired at the signing time".into()
        }
        webpki::Error::CertNotValidYet { .. } => {
            "a certificate of its chain was not yet valid at the signing time".into()
        }
        webpki::Error::InvalidSignatureForPublicKey => {
            "a certificate of its chain is not signed by its issuer".into()
        }
        other => format!("{other:?}"),
    }
}

fn unix_time(secs: i64) -> UnixTime {
    UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        u64::try_from(secs).unwrap_or(0),
    ))
}

fn rfc3339(secs: i64) -> Option<String> {
    let t = time::OffsetDateTime::from_unix_timestamp(secs).ok()?;
    t.format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// A PDF date `D:YYYYMMDDHHmmSSOHH'mm'` as Unix seconds.
fn pdf_date(b: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(b).ok()?;
    let s = s.strip_prefix("D:").unwrap_or(s);
    let num = |r: std::ops::Range<usize>, default: i64| -> Option<i64> {
        match s.get(r) {
            Some(v) if !v.is_empty() => v.parse().ok(),
            _ => Some(default),
        }
    };
    let y = num(0..4, 0)?;
    let mo = num(4..6, 1)?;
    let d = num(6..8, 1)?;
    let h = num(8..10, 0)?;
    let mi = num(10..12, 0)?;
    let sec = num(12..14, 0)?;
    let date = time::Date::from_calendar_date(
        i32::try_from(y).ok()?,
        time::Month::try_from(u8::try_from(mo).ok()?).ok()?,
        u8::try_from(d).ok()?,
    )
    .ok()?;
    let t = time::Time::from_hms(
        u8::try_from(h).ok()?,
        u8::try_from(mi).ok()?,
        u8::try_from(sec).ok()?,
    )
    .ok()?;
    let mut unix = time::PrimitiveDateTime::new(date, t)
        .assume_utc()
        .unix_timestamp();
    let tz = s.get(14..).unwrap_or("");
    let mut chars = tz.chars();
    if let Some(sign @ ('+' | '-')) = chars.next() {
        let rest: String = chars.filter(|c| c.is_ascii_digit()).collect();
        let oh: i64 = rest.get(0..2).and_then(|v| v.parse().ok()).unwrap_or(0);
        let om: i64 = rest.get(2..4).and_then(|v| v.parse().ok()).unwrap_or(0);
        let off = oh * 3600 + om * 60;
        unix += if sign == '+' { -off } else { off };
    }
    Some(unix)
}

// ---------------------------------------------------------------------------
// What changed after a revision
// ---------------------------------------------------------------------------

/// What each revision changed, worked out once per document however many
/// signatures ask.
#[derive(Default)]
struct ChangesCache(std::collections::HashMap<usize, Changes>);

impl ChangesCache {
    /// The worst change made by the revisions after `rev` (0-based).
    fn after(&mut self, doc: &mut Pdf<'_>, rev: usize) -> Result<Changes, PdfError> {
        let mut worst = Changes::None;
        for later in rev + 1..doc.revisions.len() {
            let c = match self.0.get(&later) {
                Some(c) => *c,
                None => {
                    let c = changes_in(doc, later)?;
                    self.0.insert(later, c);
                    c
                }
            };
            worst = worst.max(c);
            if worst == Changes::Content {
                break;
            }
        }
        Ok(worst)
    }
}

/// What revision `rev` changed relative to `rev - 1`.
fn changes_in(doc: &mut Pdf<'_>, rev: usize) -> Result<Changes, PdfError> {
    let prev = rev - 1;
    let written: Vec<(u32, Entry)> = doc.revisions[rev]
        .entries
        .iter()
        .map(|(k, v)| (*k, *v))
        .collect();
    let structural = doc.revisions[rev].structural.clone();
    let info_refs: HashSet<u32> = [prev, rev]
        .iter()
        .filter_map(|r| doc.revisions[*r].trailer.get(b"Info").and_then(Obj::as_ref))
        .map(|(n, _)| n)
        .collect();
    let mut worst = Changes::None;
    for (num, entry) in written {
        if structural.contains(&num) {
            continue;
        }
        let old_entry = doc.entry(prev, num);
        let existed = matches!(old_entry, Some(Entry::At(..) | Entry::InStream(..)));
        let level = if matches!(entry, Entry::Free) {
            if existed {
                let old = doc.object(prev, num)?;
                if is_annotation(&old) {
                    Changes::Annotations
                } else {
                    Changes::Content
                }
            } else {
                Changes::None
            }
        } else if !existed {
            let new = doc.object(rev, num)?;
            if is_object_stream(&new) {
                Changes::None
            } else if is_annotation(&new) && !is_sig_related(doc, rev, &new)? {
                Changes::Annotations
            } else {
                Changes::Signatures
            }
        } else {
            let old = doc.object(prev, num)?;
            let new = doc.object(rev, num)?;
            if old == new || is_object_stream(&new) {
                Changes::None
            } else if info_refs.contains(&num) {
                Changes::Signatures
            } else {
                modified(doc, rev, prev, &old, &new)?
            }
        };
        worst = worst.max(level);
    }
    Ok(worst)
}

fn is_object_stream(o: &Obj) -> bool {
    matches!(o, Obj::Stream(d, _) if d.is_type(b"ObjStm") || d.is_type(b"XRef"))
}

fn is_annotation(o: &Obj) -> bool {
    o.as_dict().is_some_and(|d| {
        d.is_type(b"Annot") || (d.get(b"Subtype").is_some() && d.get(b"Rect").is_some())
    })
}

fn is_widget(d: &Dict) -> bool {
    d.name(b"Subtype") == Some(b"Widget")
}

/// A signature dictionary, a signature field or its widget.
fn is_sig_related(doc: &mut Pdf<'_>, rev: usize, o: &Obj) -> Result<bool, PdfError> {
    let Some(d) = o.as_dict() else {
        return Ok(false);
    };
    if d.is_type(b"Sig") || d.is_type(b"DocTimeStamp") || d.name(b"FT") == Some(b"Sig") {
        return Ok(true);
    }
    if is_widget(d)
        && let Some(p) = d.get(b"Parent").cloned()
    {
        let parent = doc.resolve(rev, &p)?;
        return Ok(parent
            .as_dict()
            .is_some_and(|p| p.name(b"FT") == Some(b"Sig")));
    }
    Ok(false)
}

/// Keys whose values differ between two dictionaries.
fn changed_keys<'a>(old: &'a Dict, new: &'a Dict) -> Vec<&'a [u8]> {
    let mut out: Vec<&[u8]> = Vec::new();
    for (k, v) in &new.entries {
        if old.get(k) != Some(v) {
            out.push(k);
        }
    }
    for (k, _) in &old.entries {
        if new.get(k).is_none() {
            out.push(k);
        }
    }
    out
}

/// Catalog entries a signing tool may add or change.
const CATALOG_SIGNING_KEYS: &[&[u8]] = &[
    b"AcroForm",
    b"DSS",
    b"Perms",
    b"Metadata",
    b"Version",
    b"Extensions",
];
const ACROFORM_SIGNING_KEYS: &[&[u8]] = &[b"Fields", b"SigFlags", b"DR", b"DA", b"NeedAppearances"];
const FIELD_FILL_KEYS: &[&[u8]] = &[
    b"V", b"AP", b"AS", b"F", b"MK", b"Ff", b"Lock", b"SV", b"DV",
];

fn modified(
    doc: &mut Pdf<'_>,
    rev: usize,
    prev: usize,
    old: &Obj,
    new: &Obj,
) -> Result<Changes, PdfError> {
    let within = |keys: &[&[u8]], allowed: &[&[u8]]| keys.iter().all(|k| allowed.contains(k));
    match (old, new) {
        (Obj::Dict(o), Obj::Dict(n)) => {
            let keys = changed_keys(o, n);
            if o.is_type(b"Sig") || o.is_type(b"DocTimeStamp") {
                return Ok(Changes::Content);
            }
            if o.is_type(b"Catalog") {
                return Ok(if within(&keys, CATALOG_SIGNING_KEYS) {
                    Changes::Signatures
                } else {
                    Changes::Content
                });
            }
            if o.is_type(b"DSS") {
                return Ok(Changes::Signatures);
            }
            if o.is_type(b"Page") {
                if !within(&keys, &[b"Annots"]) {
                    return Ok(Changes::Content);
                }
                let old_a = annots_of(doc, prev, o)?;
                let new_a = annots_of(doc, rev, n)?;
                return added_refs(doc, rev, &old_a, &new_a);
            }
            if o.get(b"Fields").is_some() && within(&keys, ACROFORM_SIGNING_KEYS) {
                let old_f = array_of(doc, prev, o.get(b"Fields"))?;
                let new_f = array_of(doc, rev, n.get(b"Fields"))?;
                return added_refs(doc, rev, &old_f, &new_f);
            }
            let is_field = o.get(b"FT").is_some() || o.get(b"T").is_some() || is_widget(o);
            if is_field {
                let sig = is_sig_related(doc, prev, old)?;
                if within(&keys, FIELD_FILL_KEYS) {
                    // Signing an empty signature field is a signature; a
                    // signed field signed over again is not harmless.
                    if sig {
                        return Ok(if o.get(b"V").is_some() && keys.contains(&&b"V"[..]) {
                            Changes::Content
                        } else {
                            Changes::Signatures
                        });
                    }
                    return Ok(Changes::Annotations);
                }
                if within(&keys, &[b"Kids"]) {
                    return Ok(if sig {
                        Changes::Signatures
                    } else {
                        Changes::Annotations
                    });
                }
                return Ok(Changes::Content);
            }
            if is_annotation(old) {
                return Ok(Changes::Annotations);
            }
            Ok(Changes::Content)
        }
        (Obj::Stream(o, _), Obj::Stream(n, _)) => {
            if o.is_type(b"Metadata") && n.is_type(b"Metadata") {
                return Ok(Changes::Signatures);
            }
            Ok(Changes::Content)
        }
        (Obj::Array(o), Obj::Array(n)) => {
            // An indirect /Annots or /Fields array that grew.
            if o.iter().all(|x| n.contains(x)) && n.iter().all(|x| matches!(x, Obj::Ref(..))) {
                return added_refs(doc, rev, o, n);
            }
            Ok(Changes::Content)
        }
        _ => Ok(Changes::Content),
    }
}

fn annots_of(doc: &mut Pdf<'_>, rev: usize, page: &Dict) -> Result<Vec<Obj>, PdfError> {
    array_of(doc, rev, page.get(b"Annots"))
}

fn array_of(doc: &mut Pdf<'_>, rev: usize, o: Option<&Obj>) -> Result<Vec<Obj>, PdfError> {
    match o {
        None => Ok(Vec::new()),
        Some(a) => match doc.resolve(rev, a)? {
            Obj::Array(v) => Ok(v),
            _ => Ok(Vec::new()),
        },
    }
}

/// Signatures when every element added is signature-related; annotations
/// when some other annotation came; content when something was removed.
fn added_refs(
    doc: &mut Pdf<'_>,
    rev: usize,
    old: &[Obj],
    new: &[Obj],
) -> Result<Changes, PdfError> {
    if !old.iter().all(|x| new.contains(x)) {
        // Something removed: an annotation deleted at least.
        return Ok(Changes::Annotations);
    }
    let mut worst = Changes::None;
    for x in new.iter().filter(|x| !old.contains(x)) {
        let o = doc.resolve(rev, x)?;
        let form_or_annotation = o.as_dict().is_some_and(|d| {
            d.get(b"FT").is_some() || d.get(b"T").is_some() || d.get(b"Subtype").is_some()
        });
        worst = worst.max(if is_sig_related(doc, rev, &o)? {
            Changes::Signatures
        } else if form_or_annotation {
            Changes::Annotations
        } else {
            // Something that is neither a field nor an annotation listed
            // as one: the structure was tampered with.
            Changes::Content
        });
    }
    Ok(worst.max(Changes::Signatures))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pdf_dates() {
        assert_eq!(pdf_date(b"D:20260302010000Z"), Some(1_772_413_200));
        assert_eq!(pdf_date(b"D:20260302080000+07'00'"), Some(1_772_413_200));
        assert_eq!(pdf_date(b"D:2026"), Some(1_767_225_600));
        assert_eq!(pdf_date(b"garbage"), None);
    }

    /// A PDF signed by pyHanko (tests/fixtures), with its trust anchor.
    fn pyhanko(name: &str) -> Vec<u8> {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/pdf/pyhanko/"
        );
        std::fs::read(format!("{dir}{name}")).expect("fixture")
    }

    fn now() -> Options<'static> {
        Options::in_memory(Moment::Now(Time::now()))
    }

    fn pyhanko_anchors() -> TrustAnchors {
        let pem = String::from_utf8(pyhanko("root.pem")).expect("PEM text");
        TrustAnchors::from_pem(&pem).expect("anchor")
    }

    #[test]
    fn a_zipped_pdf_is_unpacked_and_named() {
        use std::io::Write;
        let pdf = pyhanko("rsa-signed.pdf");
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        zip.start_file("quyet-dinh.pdf", zip::write::SimpleFileOptions::default())
            .expect("zip");
        zip.write_all(&pdf).expect("zip");
        let bytes = zip.finish().expect("zip").into_inner();
        let report = verify_attachment(&bytes, &pyhanko_anchors(), &now()).expect("a report");
        assert_eq!(report.zip_entry.as_deref(), Some("quyet-dinh.pdf"));
        assert_eq!(report.verdict, Verdict::Valid, "{report:#?}");
        // Unzipped, the same file has no entry name.
        let report = verify_attachment(&pdf, &pyhanko_anchors(), &now()).expect("a report");
        assert_eq!(report.zip_entry, None);
    }

    #[test]
    fn the_organisation_and_signer_name_checks() {
        let anchors = pyhanko_anchors();
        let person = verify(&pyhanko("rsa-signed.pdf"), &anchors, &now()).expect("report");
        let w = decree30_warnings(&person, Some("Nguyễn  văn AN"));
        assert_eq!(w.len(), 1, "only the missing organisation signature: {w:?}");
        assert!(w[0].contains("Decree 30"), "{w:?}");
        let both = verify(&pyhanko("two-signatures.pdf"), &anchors, &now()).expect("report");
        assert!(decree30_warnings(&both, Some("Nguyễn Văn An")).is_empty());
        let w = decree30_warnings(&both, Some("Trần Thị Bình"));
        assert!(w.len() == 1 && w[0].contains("Trần Thị Bình"), "{w:?}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]
        /// Damaged signed PDFs (bytes overwritten, cut short) get a report
        /// or a sentence, never a panic; a change inside the signed bytes
        /// is never reported valid.
        #[test]
        fn damaged_pdfs_never_panic(at in 0usize..18_000, byte in proptest::prelude::any::<u8>(), cut in proptest::prelude::any::<bool>()) {
            let mut pdf = pyhanko("two-signatures.pdf");
            let at = at % pdf.len();
            let original = pdf[at];
            if cut {
                pdf.truncate(at);
            } else {
                pdf[at] = byte;
            }
            let original_pdf = pyhanko("two-signatures.pdf");
            // The /Contents holes: the only bytes no signature covers.
            let mut holes = Vec::new();
            let mut from = 0;
            while let Some(i) = original_pdf[from..].windows(11).position(|w| w == b"/Contents <") {
                let lt = from + i + 10;
                let gt = lt + original_pdf[lt..].iter().position(|b| *b == b'>').unwrap_or(0);
                holes.push(lt..=gt);
                from = gt;
            }
            // Cut at the end of an earlier revision, the file is that
            // revision: legitimately valid.
            let ends: Vec<usize> = Pdf::open(&original_pdf)
                .map(|p| p.revisions.iter().map(|r| r.end as usize).collect())
                .unwrap_or_default();
            if let Ok(report) = verify(&pdf, &pyhanko_anchors(), &now()) {
                let in_hole = holes.iter().any(|h| h.contains(&at));
                let earlier_revision = cut && ends.contains(&at);
                if (cut || original != byte) && !in_hole && !earlier_revision {
                    proptest::prop_assert_ne!(report.verdict, Verdict::Valid, "byte {} changed or cut", at);
                }
            }
        }
    }

    #[test]
    fn text_strings() {
        assert_eq!(text(b"Signature1"), "Signature1");
        assert_eq!(text(&[0xfe, 0xff, 0x00, 0x4b, 0x00, 0xfd]), "Ký");
    }
}

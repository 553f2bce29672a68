//! Just enough of a PDF reader to judge the signatures inside a file:
//! cross-reference tables and streams (with /Prev chains, hybrid files and
//! object streams), the revisions the incremental updates make, indirect
//! objects read by offset, and the byte spans of a signature dictionary's
//! values.
//!
//! Architecture invariant: nothing here reads the whole file. Objects are
//! parsed through a small cache of fixed-size pages read at offsets, so a
//! 200 MB document costs the same memory as a 20 KB one; only object and
//! cross-reference streams are decoded into memory, each under
//! [`MAX_DECODED_STREAM`].
//!
//! Every parse is bounded (nesting depth, string and array sizes, object
//! counts): the input comes from whoever sent the document.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;

/// Where the bytes come from: a file, a decrypted blob, a buffer.
#[allow(clippy::len_without_is_empty)]
pub trait Source {
    fn len(&self) -> u64;
    /// Reads at `offset`; fewer bytes than asked only at the end.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize>;
}

impl Source for [u8] {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        let Ok(start) = usize::try_from(offset) else {
            return Ok(0);
        };
        if start >= <[u8]>::len(self) {
            return Ok(0);
        }
        let n = buf.len().min(<[u8]>::len(self) - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
}

impl Source for Vec<u8> {
    fn len(&self) -> u64 {
        self.as_slice().len() as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        Source::read_at(self.as_slice(), offset, buf)
    }
}

/// A file, read with positioned reads (no shared cursor).
pub struct FileSource {
    file: std::fs::File,
    len: u64,
}

impl FileSource {
    pub fn open(path: &std::path::Path) -> std::io::Result<FileSource> {
        let file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        Ok(FileSource { file, len })
    }
}

impl Source for FileSource {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }
}

/// Why a file cannot be read as a PDF. The sentence says where and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PdfError(pub String);

impl std::fmt::Display for PdfError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PdfError {}

pub type PResult<T> = std::result::Result<T, PdfError>;

fn err<T>(msg: impl Into<String>) -> PResult<T> {
    Err(PdfError(msg.into()))
}

const PAGE: usize = 16 * 1024;
const CACHED_PAGES: usize = 16;
const MAX_DEPTH: usize = 64;
/// Longest string, name or array a parse accepts: signature /Contents are
/// tens of kilobytes; nothing we read needs more.
const MAX_TOKEN: usize = 4 << 20;
/// Largest decoded object or cross-reference stream.
pub const MAX_DECODED_STREAM: usize = 64 << 20;
/// Most /Prev links followed.
const MAX_SECTIONS: usize = 4096;

// ---------------------------------------------------------------------------
// Objects
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
pub enum Obj {
    Null,
    Bool(bool),
    Int(i64),
    Real(f64),
    Str(Vec<u8>),
    Name(Vec<u8>),
    Array(Vec<Obj>),
    Dict(Dict),
    /// A stream: its dictionary and where its (encoded) data lies.
    Stream(Dict, Span),
    Ref(u32, u16),
}

/// A byte range of the file, `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub start: u64,
    pub end: u64,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Dict {
    pub entries: Vec<(Vec<u8>, Obj)>,
    /// Where each entry's value lies in the file (only for objects parsed
    /// straight from the file, not from object streams).
    pub spans: Vec<Span>,
}

impl Dict {
    pub fn get(&self, key: &[u8]) -> Option<&Obj> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn span_of(&self, key: &[u8]) -> Option<Span> {
        let i = self.entries.iter().position(|(k, _)| k == key)?;
        self.spans.get(i).copied()
    }

    pub fn name(&self, key: &[u8]) -> Option<&[u8]> {
        match self.get(key) {
            Some(Obj::Name(n)) => Some(n),
            _ => None,
        }
    }

    pub fn is_type(&self, t: &[u8]) -> bool {
        self.name(b"Type") == Some(t)
    }
}

impl Obj {
    pub fn as_dict(&self) -> Option<&Dict> {
        match self {
            Obj::Dict(d) | Obj::Stream(d, _) => Some(d),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Obj::Int(i) => Some(*i),
            _ => None,
        }
    }

    pub fn as_ref(&self) -> Option<(u32, u16)> {
        match self {
            Obj::Ref(n, g) => Some((*n, *g)),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------
// Paged reading
// ---------------------------------------------------------------------------

/// The file, read through a few cached pages.
pub struct Pages<'s> {
    src: &'s dyn Source,
    len: u64,
    cache: Vec<(u64, Vec<u8>)>,
    tick: usize,
}

impl<'s> Pages<'s> {
    pub fn new(src: &'s dyn Source) -> Pages<'s> {
        Pages {
            len: src.len(),
            src,
            cache: Vec::new(),
            tick: 0,
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn page(&mut self, no: u64) -> PResult<&[u8]> {
        if let Some(i) = self.cache.iter().position(|(n, _)| *n == no) {
            // Move to the back: the front is evicted first.
            if i + 1 != self.cache.len() {
                let p = self.cache.remove(i);
                self.cache.push(p);
            }
            return Ok(&self.cache[self.cache.len() - 1].1);
        }
        let mut buf = vec![0u8; PAGE];
        let n = self
            .src
            .read_at(no * PAGE as u64, &mut buf)
            .map_err(|e| PdfError(format!("the file could not be read: {e}")))?;
        buf.truncate(n);
        if self.cache.len() >= CACHED_PAGES {
            self.cache.remove(0);
        }
        self.tick = self.tick.wrapping_add(1);
        self.cache.push((no, buf));
        Ok(&self.cache[self.cache.len() - 1].1)
    }

    /// The byte at `pos`, `None` past the end.
    pub fn byte(&mut self, pos: u64) -> PResult<Option<u8>> {
        if pos >= self.len {
            return Ok(None);
        }
        let no = pos / PAGE as u64;
        let off = (pos % PAGE as u64) as usize;
        Ok(self.page(no)?.get(off).copied())
    }

    /// `len` bytes from `pos` (short at the end of the file).
    pub fn bytes(&mut self, pos: u64, len: usize) -> PResult<Vec<u8>> {
        let end = pos.saturating_add(len as u64).min(self.len);
        let mut out = Vec::with_capacity(end.saturating_sub(pos) as usize);
        let mut p = pos;
        while p < end {
            let no = p / PAGE as u64;
            let off = (p % PAGE as u64) as usize;
            let page = self.page(no)?;
            if off >= page.len() {
                break;
            }
            let take = (page.len() - off).min((end - p) as usize);
            out.extend_from_slice(&page[off..off + take]);
            p += take as u64;
        }
        Ok(out)
    }

    /// The first position at or after `from` (and before `limit`) where
    /// `needle` starts.
    pub fn find(&mut self, from: u64, limit: u64, needle: &[u8]) -> PResult<Option<u64>> {
        let limit = limit.min(self.len);
        let mut pos = from;
        let step = PAGE as u64;
        while pos < limit {
            let window = self.bytes(pos, PAGE + needle.len())?;
            if let Some(i) = memfind(&window, needle) {
                let at = pos + i as u64;
                return Ok((at < limit).then_some(at));
            }
            if window.len() < needle.len() {
                break;
            }
            pos += step;
        }
        Ok(None)
    }
}

fn memfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

fn rmemfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).rposition(|w| w == needle)
}

// ---------------------------------------------------------------------------
// Lexing and parsing
// ---------------------------------------------------------------------------

fn is_white(b: u8) -> bool {
    matches!(b, 0 | b'\t' | b'\n' | 0x0c | b'\r' | b' ')
}

fn is_delim(b: u8) -> bool {
    matches!(
        b,
        b'(' | b')' | b'<' | b'>' | b'[' | b']' | b'{' | b'}' | b'/' | b'%'
    )
}

/// Something that gives bytes by position: the file's pages, or a decoded
/// object stream in memory.
trait Bytes {
    fn at(&mut self, pos: u64) -> PResult<Option<u8>>;
}

impl Bytes for Pages<'_> {
    fn at(&mut self, pos: u64) -> PResult<Option<u8>> {
        self.byte(pos)
    }
}

struct Mem<'a>(&'a [u8]);

impl Bytes for Mem<'_> {
    fn at(&mut self, pos: u64) -> PResult<Option<u8>> {
        Ok(usize::try_from(pos)
            .ok()
            .and_then(|p| self.0.get(p).copied()))
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Int(i64),
    Real(f64),
    Str(Vec<u8>),
    Name(Vec<u8>),
    DictOpen,
    DictClose,
    ArrOpen,
    ArrClose,
    Word(Vec<u8>),
}

struct Lexer<'b, B: Bytes> {
    b: &'b mut B,
    pos: u64,
}

impl<B: Bytes> Lexer<'_, B> {
    fn skip_ws(&mut self) -> PResult<()> {
        loop {
            match self.b.at(self.pos)? {
                Some(c) if is_white(c) => self.pos += 1,
                Some(b'%') => {
                    while let Some(c) = self.b.at(self.pos)? {
                        if c == b'\n' || c == b'\r' {
                            break;
                        }
                        self.pos += 1;
                    }
                }
                _ => return Ok(()),
            }
        }
    }

    /// The next token and where it started; `None` at the end.
    fn next(&mut self) -> PResult<Option<(u64, Tok)>> {
        self.skip_ws()?;
        let start = self.pos;
        let Some(c) = self.b.at(self.pos)? else {
            return Ok(None);
        };
        self.pos += 1;
        let tok = match c {
            b'[' => Tok::ArrOpen,
            b']' => Tok::ArrClose,
            b'<' => {
                if self.b.at(self.pos)? == Some(b'<') {
                    self.pos += 1;
                    Tok::DictOpen
                } else {
                    Tok::Str(self.hex_string()?)
                }
            }
            b'>' => {
                if self.b.at(self.pos)? == Some(b'>') {
                    self.pos += 1;
                    Tok::DictClose
                } else {
                    return err(format!("a stray '>' at offset {start}"));
                }
            }
            b'(' => Tok::Str(self.literal_string()?),
            b'/' => Tok::Name(self.name()?),
            b')' | b'{' | b'}' => {
                return err(format!("an unexpected '{}' at offset {start}", c as char));
            }
            _ => {
                let mut word = vec![c];
                while let Some(c) = self.b.at(self.pos)? {
                    if is_white(c) || is_delim(c) {
                        break;
                    }
                    if word.len() > 256 {
                        return err(format!("a token at offset {start} is too long"));
                    }
                    word.push(c);
                    self.pos += 1;
                }
                number(&word).unwrap_or(Tok::Word(word))
            }
        };
        Ok(Some((start, tok)))
    }

    fn hex_string(&mut self) -> PResult<Vec<u8>> {
        let start = self.pos;
        let mut out = Vec::new();
        let mut half: Option<u8> = None;
        loop {
            let Some(c) = self.b.at(self.pos)? else {
                return err(format!("a hex string at offset {start} does not end"));
            };
            self.pos += 1;
            let v = match c {
                b'>' => break,
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                b'A'..=b'F' => c - b'A' + 10,
                c if is_white(c) => continue,
                _ => {
                    return err(format!(
                        "a hex string at offset {start} holds '{}'",
                        c as char
                    ));
                }
            };
            match half.take() {
                Some(h) => out.push(h << 4 | v),
                None => half = Some(v),
            }
            if out.len() > MAX_TOKEN {
                return err(format!("a hex string at offset {start} is too long"));
            }
        }
        if let Some(h) = half {
            out.push(h << 4);
        }
        Ok(out)
    }

    fn literal_string(&mut self) -> PResult<Vec<u8>> {
        let start = self.pos;
        let mut out = Vec::new();
        let mut depth = 1usize;
        loop {
            let Some(c) = self.b.at(self.pos)? else {
                return err(format!("a string at offset {start} does not end"));
            };
            self.pos += 1;
            match c {
                b'(' => {
                    depth += 1;
                    out.push(c);
                }
                b')' => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                    out.push(c);
                }
                b'\\' => {
                    let Some(e) = self.b.at(self.pos)? else {
                        continue;
                    };
                    self.pos += 1;
                    match e {
                        b'n' => out.push(b'\n'),
                        b'r' => out.push(b'\r'),
                        b't' => out.push(b'\t'),
                        b'b' => out.push(8),
                        b'f' => out.push(12),
                        b'\r' => {
                            if self.b.at(self.pos)? == Some(b'\n') {
                                self.pos += 1;
                            }
                        }
                        b'\n' => {}
                        b'0'..=b'7' => {
                            let mut v = u32::from(e - b'0');
                            for _ in 0..2 {
                                match self.b.at(self.pos)? {
                                    Some(d @ b'0'..=b'7') => {
                                        v = v * 8 + u32::from(d - b'0');
                                        self.pos += 1;
                                    }
                                    _ => break,
                                }
                            }
                            out.push((v & 0xff) as u8);
                        }
                        other => out.push(other),
                    }
                }
                _ => out.push(c),
            }
            if out.len() > MAX_TOKEN {
                return err(format!("a string at offset {start} is too long"));
            }
        }
        Ok(out)
    }

    fn name(&mut self) -> PResult<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(c) = self.b.at(self.pos)? {
            if is_white(c) || is_delim(c) {
                break;
            }
            self.pos += 1;
            if c == b'#' {
                let h = self.b.at(self.pos)?;
                let l = self.b.at(self.pos + 1)?;
                if let (Some(h), Some(l)) = (h.and_then(hexval), l.and_then(hexval)) {
                    out.push(h << 4 | l);
                    self.pos += 2;
                    continue;
                }
            }
            out.push(c);
            if out.len() > 1024 {
                return err("a name is too long");
            }
        }
        Ok(out)
    }
}

fn hexval(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn number(word: &[u8]) -> Option<Tok> {
    let s = std::str::from_utf8(word).ok()?;
    let first = *word.first()?;
    if !(first.is_ascii_digit() || matches!(first, b'+' | b'-' | b'.')) {
        return None;
    }
    if let Ok(i) = s.parse::<i64>() {
        return Some(Tok::Int(i));
    }
    s.parse::<f64>().ok().map(Tok::Real)
}

/// Parses objects from a lexer, with one token of look-behind for `n g R`.
struct Parser<'b, B: Bytes> {
    lex: Lexer<'b, B>,
    peeked: Vec<(u64, Tok)>,
    /// Record value spans of the top-level dictionary.
    record_spans: bool,
}

impl<'b, B: Bytes> Parser<'b, B> {
    fn new(b: &'b mut B, pos: u64) -> Self {
        Parser {
            lex: Lexer { b, pos },
            peeked: Vec::new(),
            record_spans: true,
        }
    }

    fn next_tok(&mut self) -> PResult<Option<(u64, Tok)>> {
        if let Some(t) = self.peeked.pop() {
            return Ok(Some(t));
        }
        self.lex.next()
    }

    fn push_back(&mut self, t: (u64, Tok)) {
        self.peeked.push(t);
    }

    /// Where the next token would start (after what was pushed back).
    fn position(&self) -> u64 {
        self.peeked.last().map(|(p, _)| *p).unwrap_or(self.lex.pos)
    }

    fn object(&mut self, depth: usize) -> PResult<Obj> {
        if depth > MAX_DEPTH {
            return err("objects are nested too deeply");
        }
        let Some((at, tok)) = self.next_tok()? else {
            return err("the file ends inside an object");
        };
        Ok(match tok {
            Tok::Int(i) => {
                // `n g R` is a reference.
                if let Ok(n) = u32::try_from(i)
                    && let Some(t2) = self.next_tok()?
                {
                    if let Tok::Int(g) = t2.1
                        && let Some(t3) = self.next_tok()?
                    {
                        if t3.1 == Tok::Word(b"R".to_vec())
                            && let Ok(g) = u16::try_from(g)
                        {
                            return Ok(Obj::Ref(n, g));
                        }
                        self.push_back(t3);
                    }
                    self.push_back(t2);
                }
                Obj::Int(i)
            }
            Tok::Real(r) => Obj::Real(r),
            Tok::Str(s) => Obj::Str(s),
            Tok::Name(n) => Obj::Name(n),
            Tok::ArrOpen => {
                let mut items = Vec::new();
                loop {
                    let Some(t) = self.next_tok()? else {
                        return err(format!("an array at offset {at} does not end"));
                    };
                    if t.1 == Tok::ArrClose {
                        break;
                    }
                    self.push_back(t);
                    items.push(self.object(depth + 1)?);
                    if items.len() > MAX_TOKEN / 8 {
                        return err(format!("an array at offset {at} is too long"));
                    }
                }
                Obj::Array(items)
            }
            Tok::DictOpen => {
                let record = std::mem::replace(&mut self.record_spans, false) && depth == 0;
                let mut d = Dict::default();
                loop {
                    let Some(t) = self.next_tok()? else {
                        return err(format!("a dictionary at offset {at} does not end"));
                    };
                    let key = match t.1 {
                        Tok::DictClose => break,
                        Tok::Name(n) => n,
                        _ => {
                            return err(format!(
                                "a dictionary key at offset {} is not a name",
                                t.0
                            ));
                        }
                    };
                    // Value start: skip whitespace first.
                    self.lex.skip_ws()?;
                    let start = self.position();
                    let v = self.object(depth + 1)?;
                    let end = self.lex.pos;
                    if record {
                        d.spans.push(Span { start, end });
                    }
                    d.entries.push((key, v));
                    if d.entries.len() > 100_000 {
                        return err(format!("a dictionary at offset {at} is too large"));
                    }
                }
                Obj::Dict(d)
            }
            Tok::Word(w) => match w.as_slice() {
                b"true" => Obj::Bool(true),
                b"false" => Obj::Bool(false),
                b"null" => Obj::Null,
                other => {
                    return err(format!(
                        "unexpected '{}' at offset {at}",
                        String::from_utf8_lossy(other)
                    ));
                }
            },
            Tok::DictClose | Tok::ArrClose => {
                return err(format!("an unexpected closing bracket at offset {at}"));
            }
        })
    }
}

// ---------------------------------------------------------------------------
// Stream decoding
// ---------------------------------------------------------------------------

/// Decodes a stream's data (FlateDecode with PNG/TIFF predictors, or none),
/// up to [`MAX_DECODED_STREAM`] bytes.
fn decode_stream(dict: &Dict, raw: &[u8]) -> PResult<Vec<u8>> {
    let filters: Vec<&[u8]> = match dict.get(b"Filter") {
        None | Some(Obj::Null) => vec![],
        Some(Obj::Name(n)) => vec![n.as_slice()],
        Some(Obj::Array(a)) => a
            .iter()
            .filter_map(|o| match o {
                Obj::Name(n) => Some(n.as_slice()),
                _ => None,
            })
            .collect(),
        Some(_) => return err("a stream's /Filter is neither a name nor an array"),
    };
    let parms = match dict.get(b"DecodeParms") {
        Some(Obj::Dict(d)) => Some(d.clone()),
        Some(Obj::Array(a)) => a.first().and_then(|o| o.as_dict().cloned()),
        _ => None,
    };
    let mut data = raw.to_vec();
    for f in filters {
        match f {
            b"FlateDecode" | b"Fl" => {
                let mut out = Vec::new();
                let mut z = flate2::read::ZlibDecoder::new(data.as_slice())
                    .take(MAX_DECODED_STREAM as u64 + 1);
                if let Err(e) = z.read_to_end(&mut out) {
                    // Some writers leave a bad checksum or trailing bytes:
                    // keep what inflated, as readers do.
                    if out.is_empty() {
                        return err(format!("a compressed stream does not inflate ({e})"));
                    }
                }
                if out.len() > MAX_DECODED_STREAM {
                    return err("a compressed stream inflates to more than 64 MiB");
                }
                data = out;
            }
            other => {
                return err(format!(
                    "a structural stream uses the /{} filter, which is not supported here",
                    String::from_utf8_lossy(other)
                ));
            }
        }
    }
    if let Some(p) = parms {
        let predictor = p.get(b"Predictor").and_then(Obj::as_int).unwrap_or(1);
        if predictor >= 10 {
            let columns = p.get(b"Columns").and_then(Obj::as_int).unwrap_or(1);
            let colors = p.get(b"Colors").and_then(Obj::as_int).unwrap_or(1);
            let bpc = p
                .get(b"BitsPerComponent")
                .and_then(Obj::as_int)
                .unwrap_or(8);
            let bpp = ((colors * bpc + 7) / 8).max(1) as usize;
            let row = usize::try_from((columns * colors * bpc + 7) / 8)
                .ok()
                .filter(|r| *r > 0 && *r < 1 << 20)
                .ok_or_else(|| PdfError("a stream's /Columns is out of range".into()))?;
            data = png_unpredict(&data, row, bpp)?;
        } else if predictor == 2 {
            return err("a structural stream uses the TIFF predictor, which is not supported here");
        }
    }
    Ok(data)
}

fn png_unpredict(data: &[u8], row: usize, bpp: usize) -> PResult<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len());
    let mut prev = vec![0u8; row];
    for chunk in data.chunks(row + 1) {
        let Some((&ft, line)) = chunk.split_first() else {
            break;
        };
        let mut cur = line.to_vec();
        cur.resize(row, 0);
        for i in 0..row {
            let a = if i >= bpp { cur[i - bpp] } else { 0 };
            let b = prev[i];
            let c = if i >= bpp { prev[i - bpp] } else { 0 };
            let v = match ft {
                0 => 0,
                1 => a,
                2 => b,
                3 => ((u16::from(a) + u16::from(b)) / 2) as u8,
                4 => {
                    let p = i16::from(a) + i16::from(b) - i16::from(c);
                    let (pa, pb, pc) = (
                        (p - i16::from(a)).abs(),
                        (p - i16::from(b)).abs(),
                        (p - i16::from(c)).abs(),
                    );
                    if pa <= pb && pa <= pc {
                        a
                    } else if pb <= pc {
                        b
                    } else {
                        c
                    }
                }
                _ => return err("a cross-reference stream has a bad PNG predictor row"),
            };
            cur[i] = cur[i].wrapping_add(v);
        }
        out.extend_from_slice(&cur);
        prev = cur;
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Cross-reference and revisions
// ---------------------------------------------------------------------------

/// One cross-reference entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    Free,
    /// At a file offset, with its generation.
    At(u64, u16),
    /// Inside an object stream, at an index.
    InStream(u32, u32),
}

/// One cross-reference section (a table with its trailer, or a stream).
#[derive(Debug, Clone)]
pub struct Section {
    pub offset: u64,
    pub entries: BTreeMap<u32, Entry>,
    pub trailer: Dict,
    /// The object number of the cross-reference stream, when it is one.
    pub xref_stream: Option<u32>,
    /// Just after the `%%EOF` that closes this section's update.
    pub end: u64,
}

/// One revision: the file as it stood after one save (the original, then
/// each incremental update).
#[derive(Debug, Clone)]
pub struct Revision {
    /// Its bytes are `[0, end)` of the file.
    pub end: u64,
    /// The objects this revision wrote (changed or added).
    pub entries: BTreeMap<u32, Entry>,
    pub trailer: Dict,
    /// Objects that are cross-reference or object streams (structure, not
    /// content).
    pub structural: HashSet<u32>,
}

/// A decoded object stream: its number, the revision it was read in, its
/// data and its index of (object number, offset).
type ObjStm = (u32, usize, Vec<u8>, Vec<(u32, usize)>);

/// A PDF opened for signature checking.
pub struct Pdf<'s> {
    pub pages: Pages<'s>,
    /// Oldest first.
    pub revisions: Vec<Revision>,
    /// The merged table of each revision, cached as it is asked for.
    tables: HashMap<usize, HashMap<u32, Entry>>,
    objstm_cache: Option<ObjStm>,
}

impl<'s> Pdf<'s> {
    pub fn open(src: &'s dyn Source) -> PResult<Pdf<'s>> {
        let mut pages = Pages::new(src);
        let len = pages.len();
        let head = pages.bytes(0, 1024)?;
        if memfind(&head, b"%PDF-").is_none() {
            return err("it is not a PDF: the file does not start with the %PDF- header");
        }
        let tail_from = len.saturating_sub(2048);
        let tail = pages.bytes(tail_from, 2048)?;
        let Some(sx) = rmemfind(&tail, b"startxref") else {
            return err(
                "the file has no startxref at its end: it is truncated or not a complete PDF",
            );
        };
        let mut lex_pos = tail_from + sx as u64 + 9;
        let first = {
            let mut lex = Lexer {
                b: &mut pages,
                pos: lex_pos,
            };
            match lex.next()? {
                Some((_, Tok::Int(i))) if i >= 0 => {
                    lex_pos = lex.pos;
                    i as u64
                }
                _ => {
                    return err(
                        "the startxref at the end of the file is not followed by an offset",
                    );
                }
            }
        };
        let _ = lex_pos;
        // Follow the chain, newest first.
        let mut sections: Vec<Section> = Vec::new();
        let mut seen = HashSet::new();
        let mut next = Some(first);
        while let Some(off) = next {
            if !seen.insert(off) {
                return err(format!(
                    "the cross-reference chain loops back to offset {off}"
                ));
            }
            if sections.len() >= MAX_SECTIONS {
                return err("the file has too many cross-reference sections");
            }
            let mut s = read_section(&mut pages, off)?;
            // A hybrid file's table names a stream with more entries.
            if let Some(x) = s.trailer.get(b"XRefStm").and_then(Obj::as_int)
                && x >= 0
                && (x as u64) < len
            {
                let xs = read_section(&mut pages, x as u64)?;
                for (k, v) in xs.entries {
                    s.entries.entry(k).or_insert(v);
                }
                if let Some(n) = xs.xref_stream {
                    s.entries.remove(&n);
                }
            }
            next = match s.trailer.get(b"Prev") {
                Some(Obj::Int(p)) if *p >= 0 => Some(*p as u64),
                Some(Obj::Real(p)) if *p >= 0.0 => Some(*p as u64),
                _ => None,
            };
            s.end = pages
                .find(off, len, b"%%EOF")?
                .map(|p| eof_end(&mut pages, p + 5))
                .transpose()?
                .unwrap_or(len);
            sections.push(s);
        }
        sections.reverse(); // oldest first
        let revisions = group_revisions(sections);
        Ok(Pdf {
            pages,
            revisions,
            tables: HashMap::new(),
            objstm_cache: None,
        })
    }

    pub fn last(&self) -> usize {
        self.revisions.len().saturating_sub(1)
    }

    /// The cross-reference table in force in revision `rev` (0-based).
    pub fn table(&mut self, rev: usize) -> &HashMap<u32, Entry> {
        if !self.tables.contains_key(&rev) {
            let mut t = HashMap::new();
            for r in self.revisions.iter().take(rev + 1) {
                for (k, v) in &r.entries {
                    t.insert(*k, *v);
                }
            }
            self.tables.insert(rev, t);
        }
        &self.tables[&rev]
    }

    pub fn entry(&mut self, rev: usize, num: u32) -> Option<Entry> {
        self.table(rev).get(&num).copied()
    }

    /// Object `num` as revision `rev` has it; `Null` when it does not exist.
    pub fn object(&mut self, rev: usize, num: u32) -> PResult<Obj> {
        match self.entry(rev, num) {
            None | Some(Entry::Free) => Ok(Obj::Null),
            Some(Entry::At(off, _)) => Ok(self.object_at(rev, off, num)?.1),
            Some(Entry::InStream(stm, idx)) => self.object_in_stream(rev, stm, idx, num),
        }
    }

    /// Follows a reference (one level).
    pub fn resolve(&mut self, rev: usize, o: &Obj) -> PResult<Obj> {
        match o {
            Obj::Ref(n, _) => self.object(rev, *n),
            other => Ok(other.clone()),
        }
    }

    /// Parses `n g obj … endobj` at `off`, checking it is object `num`.
    /// Returns the offset of the object body too.
    pub fn object_at(&mut self, rev: usize, off: u64, num: u32) -> PResult<(u64, Obj)> {
        let (found, body_at, obj) = parse_indirect(&mut self.pages, off).map_err(|e| {
            PdfError(format!(
                "the cross-reference table says object {num} is at offset {off}, but it is not \
                 there ({e}): the table is malformed or the file was altered after it was written"
            ))
        })?;
        if found != num {
            return err(format!(
                "the cross-reference table says object {num} is at offset {off}, but object \
                 {found} is there: the table is malformed or the file was altered after it was \
                 written"
            ));
        }
        let obj = match obj {
            Obj::Stream(d, span) => {
                // Resolve an indirect /Length.
                let span = match d.get(b"Length") {
                    Some(Obj::Ref(ln, _)) => {
                        let ln = *ln;
                        if ln == num {
                            return err(format!("object {num}'s /Length refers to itself"));
                        }
                        let l = self.object(rev, ln)?.as_int().unwrap_or(-1);
                        stream_span(&mut self.pages, span.start, l)?
                    }
                    _ => span,
                };
                Obj::Stream(d, span)
            }
            o => o,
        };
        Ok((body_at, obj))
    }

    fn object_in_stream(&mut self, rev: usize, stm: u32, idx: u32, num: u32) -> PResult<Obj> {
        let cached = matches!(&self.objstm_cache, Some((s, r, _, _)) if *s == stm && *r == rev);
        if !cached {
            let Obj::Stream(d, span) = self.object(rev, stm)? else {
                return err(format!(
                    "object stream {stm} (holding object {num}) is not a stream"
                ));
            };
            let raw = self.stream_raw(span)?;
            let data = decode_stream(&d, &raw)?;
            let n = d.get(b"N").and_then(Obj::as_int).unwrap_or(0);
            let first = d.get(b"First").and_then(Obj::as_int).unwrap_or(0);
            if n < 0 || first < 0 || n > 1_000_000 {
                return err(format!("object stream {stm} has a bad /N or /First"));
            }
            let mut mem = Mem(&data);
            let mut lex = Lexer {
                b: &mut mem,
                pos: 0,
            };
            let mut index = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let (Some((_, Tok::Int(o))), Some((_, Tok::Int(at)))) = (lex.next()?, lex.next()?)
                else {
                    return err(format!("object stream {stm} has a malformed index"));
                };
                let (Ok(o), Ok(at)) = (u32::try_from(o), usize::try_from(at)) else {
                    return err(format!("object stream {stm} has a malformed index"));
                };
                index.push((o, first as usize + at));
            }
            self.objstm_cache = Some((stm, rev, data, index));
        }
        let Some((_, _, data, index)) = &self.objstm_cache else {
            return Ok(Obj::Null);
        };
        let Some(&(o, at)) = index.get(idx as usize) else {
            return err(format!(
                "object {num} is listed at index {idx} of object stream {stm}, which has fewer objects"
            ));
        };
        if o != num {
            return err(format!(
                "object stream {stm} holds object {o} where the table expects {num}"
            ));
        }
        let mut mem = Mem(data);
        let mut p = Parser::new(&mut mem, at as u64);
        p.record_spans = false;
        p.object(0)
    }

    /// A stream's raw (encoded) bytes, bounded.
    pub fn stream_raw(&mut self, span: Span) -> PResult<Vec<u8>> {
        let len = span.end.saturating_sub(span.start);
        if len > MAX_DECODED_STREAM as u64 {
            return err("a structural stream is larger than 64 MiB");
        }
        self.pages.bytes(span.start, len as usize)
    }
}

/// After `%%EOF`: one optional end of line belongs to the revision.
fn eof_end(pages: &mut Pages<'_>, mut p: u64) -> PResult<u64> {
    if pages.byte(p)? == Some(b'\r') {
        p += 1;
    }
    if pages.byte(p)? == Some(b'\n') {
        p += 1;
    }
    Ok(p)
}

/// A linearized file's first-page section is newer in the chain than the
/// main one but lies before it in the file: both make one revision. Any
/// section whose end lies before an older section's start is merged
/// forward like that.
fn group_revisions(sections: Vec<Section>) -> Vec<Revision> {
    let mut revs: Vec<Revision> = Vec::new();
    let mut max_offset_so_far = 0u64;
    for s in sections {
        let structural: HashSet<u32> = s.xref_stream.into_iter().collect();
        let merge = revs
            .last()
            .is_some_and(|last| s.end <= last.end || s.offset < max_offset_so_far);
        max_offset_so_far = max_offset_so_far.max(s.offset);
        if merge && let Some(last) = revs.last_mut() {
            for (k, v) in s.entries {
                last.entries.insert(k, v);
            }
            last.structural.extend(structural);
            last.end = last.end.max(s.end);
            for (k, v) in s.trailer.entries {
                if !last.trailer.entries.iter().any(|(lk, _)| *lk == k) {
                    last.trailer.entries.push((k, v));
                }
            }
            continue;
        }
        revs.push(Revision {
            end: s.end,
            entries: s.entries,
            trailer: Dict {
                entries: s.trailer.entries,
                spans: Vec::new(),
            },
            structural,
        });
    }
    revs
}

fn stream_span(pages: &mut Pages<'_>, data_start: u64, len: i64) -> PResult<Span> {
    if len >= 0 {
        let end = data_start.saturating_add(len as u64);
        if end <= pages.len() {
            return Ok(Span {
                start: data_start,
                end,
            });
        }
    }
    // A wrong /Length: find endstream.
    match pages.find(data_start, pages.len(), b"endstream")? {
        Some(mut e) => {
            if e > data_start && pages.byte(e - 1)? == Some(b'\n') {
                e -= 1;
                if e > data_start && pages.byte(e - 1)? == Some(b'\r') {
                    e -= 1;
                }
            } else if e > data_start && pages.byte(e - 1)? == Some(b'\r') {
                e -= 1;
            }
            Ok(Span {
                start: data_start,
                end: e,
            })
        }
        None => err(format!("a stream at offset {data_start} has no endstream")),
    }
}

/// `n g obj <object> [stream…endstream] endobj` at `off`: the object
/// number, where the body starts, and the object (a stream's span uses a
/// direct /Length, or is found by `endstream`).
fn parse_indirect(pages: &mut Pages<'_>, off: u64) -> PResult<(u32, u64, Obj)> {
    let mut p = Parser::new(pages, off);
    let (Some((_, Tok::Int(n))), Some((_, Tok::Int(_g))), Some((_, Tok::Word(w)))) =
        (p.next_tok()?, p.next_tok()?, p.next_tok()?)
    else {
        return err(format!("no object starts at offset {off}"));
    };
    if w != b"obj" {
        return err(format!("no object starts at offset {off}"));
    }
    let Ok(n) = u32::try_from(n) else {
        return err(format!("a bad object number at offset {off}"));
    };
    p.lex.skip_ws()?;
    let body_at = p.position();
    let obj = p.object(0)?;
    let after = p.next_tok()?;
    match (obj, after) {
        (Obj::Dict(d), Some((kw_at, Tok::Word(w)))) if w == b"stream" => {
            // The data starts after the EOL following `stream`.
            let mut s = kw_at + 6;
            match pages.byte(s)? {
                Some(b'\r') => {
                    s += 1;
                    if pages.byte(s)? == Some(b'\n') {
                        s += 1;
                    }
                }
                Some(b'\n') => s += 1,
                _ => {}
            }
            let len = d.get(b"Length").and_then(Obj::as_int).unwrap_or(-1);
            let span = if matches!(d.get(b"Length"), Some(Obj::Ref(..))) {
                // Resolved by the caller.
                Span { start: s, end: s }
            } else {
                stream_span(pages, s, len)?
            };
            Ok((n, body_at, Obj::Stream(d, span)))
        }
        (obj, _) => Ok((n, body_at, obj)),
    }
}

fn read_section(pages: &mut Pages<'_>, off: u64) -> PResult<Section> {
    if off >= pages.len() {
        return err(format!(
            "the cross-reference offset {off} points past the end of the file ({} bytes): the file is truncated or its cross-reference is malformed",
            pages.len()
        ));
    }
    let head = pages.bytes(off, 4)?;
    if head == b"xref" {
        read_table(pages, off)
    } else {
        read_xref_stream(pages, off).map_err(|e| {
            PdfError(format!(
                "the cross-reference offset {off} points at neither a cross-reference table nor \
                 a cross-reference stream ({e}): the file's offsets do not match its bytes, so it \
                 was damaged or altered after it was written (e.g. copied as text)"
            ))
        })
    }
}

fn read_table(pages: &mut Pages<'_>, off: u64) -> PResult<Section> {
    let bad = |what: &str| {
        PdfError(format!(
            "the cross-reference table at offset {off} is malformed: {what}"
        ))
    };
    let mut lex = Lexer {
        b: pages,
        pos: off + 4,
    };
    let mut entries = BTreeMap::new();
    loop {
        let Some((at, tok)) = lex.next()? else {
            return Err(bad("it has no trailer"));
        };
        match tok {
            Tok::Word(w) if w == b"trailer" => break,
            Tok::Int(start) => {
                let Some((_, Tok::Int(count))) = lex.next()? else {
                    return Err(bad(&format!(
                        "a subsection header at offset {at} has no count"
                    )));
                };
                if start < 0 || !(0..=10_000_000).contains(&count) {
                    return Err(bad(&format!(
                        "a subsection header at offset {at} is out of range"
                    )));
                }
                for i in 0..count {
                    let (Some((_, Tok::Int(o))), Some((_, Tok::Int(g))), Some((_, Tok::Word(k)))) =
                        (lex.next()?, lex.next()?, lex.next()?)
                    else {
                        return Err(bad(&format!(
                            "entry {} of the subsection at offset {at} is not 'offset generation n|f'",
                            i + 1
                        )));
                    };
                    let num = u32::try_from(start + i)
                        .map_err(|_| bad("an object number is out of range"))?;
                    let e = match k.as_slice() {
                        b"n" => Entry::At(
                            u64::try_from(o).map_err(|_| bad("a negative offset"))?,
                            u16::try_from(g).unwrap_or(0),
                        ),
                        b"f" => Entry::Free,
                        _ => {
                            return Err(bad(&format!(
                                "entry {} of the subsection at offset {at} is neither 'n' nor 'f'",
                                i + 1
                            )));
                        }
                    };
                    // Object 0 is the head of the free list, never an object.
                    if num != 0 {
                        entries.insert(num, e);
                    }
                }
            }
            _ => return Err(bad(&format!("unexpected data at offset {at}"))),
        }
    }
    let pos = lex.pos;
    let mut p = Parser::new(pages, pos);
    p.record_spans = false;
    let trailer = match p.object(0)? {
        Obj::Dict(d) => d,
        _ => return Err(bad("its trailer is not a dictionary")),
    };
    Ok(Section {
        offset: off,
        entries,
        trailer,
        xref_stream: None,
        end: 0,
    })
}

fn read_xref_stream(pages: &mut Pages<'_>, off: u64) -> PResult<Section> {
    let (num, _, obj) = parse_indirect(pages, off)?;
    let Obj::Stream(d, span) = obj else {
        return err("neither a cross-reference table nor a cross-reference stream is there");
    };
    if !d.is_type(b"XRef") {
        return err("the object there is not a cross-reference stream");
    }
    if matches!(d.get(b"Length"), Some(Obj::Ref(..))) {
        return err("a cross-reference stream's /Length must be direct");
    }
    let len = span.end - span.start;
    if len > MAX_DECODED_STREAM as u64 {
        return err("the cross-reference stream is too large");
    }
    let raw = pages.bytes(span.start, len as usize)?;
    let data = decode_stream(&d, &raw)?;
    let w: Vec<usize> = match d.get(b"W") {
        Some(Obj::Array(a)) if a.len() == 3 => a
            .iter()
            .map(|o| {
                o.as_int()
                    .and_then(|i| usize::try_from(i).ok())
                    .filter(|i| *i <= 8)
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| PdfError("its /W is malformed".into()))?,
        _ => return err("its /W is missing or malformed"),
    };
    let size = d.get(b"Size").and_then(Obj::as_int).unwrap_or(0);
    let index: Vec<i64> = match d.get(b"Index") {
        Some(Obj::Array(a)) => a.iter().map(|o| o.as_int().unwrap_or(-1)).collect(),
        _ => vec![0, size],
    };
    if !index.len().is_multiple_of(2) || index.iter().any(|i| *i < 0) {
        return err("its /Index is malformed");
    }
    let row = w[0] + w[1] + w[2];
    if row == 0 {
        return err("its /W describes empty entries");
    }
    let mut entries = BTreeMap::new();
    let mut rows = data.chunks_exact(row);
    for pair in index.chunks(2) {
        let (start, count) = (pair[0], pair[1]);
        for i in 0..count {
            let Some(r) = rows.next() else {
                return err("it holds fewer entries than its /Index names");
            };
            let field = |from: usize, n: usize| {
                r[from..from + n]
                    .iter()
                    .fold(0u64, |a, b| a << 8 | u64::from(*b))
            };
            let t = if w[0] == 0 { 1 } else { field(0, w[0]) };
            let f2 = field(w[0], w[1]);
            let f3 = field(w[0] + w[1], w[2]);
            let Ok(n) = u32::try_from(start + i) else {
                return err("an object number is out of range");
            };
            let e = match t {
                0 => Entry::Free,
                1 => Entry::At(f2, u16::try_from(f3).unwrap_or(0)),
                2 => Entry::InStream(
                    u32::try_from(f2)
                        .map_err(|_| PdfError("an object stream number is out of range".into()))?,
                    u32::try_from(f3)
                        .map_err(|_| PdfError("an object stream index is out of range".into()))?,
                ),
                _ => continue, // reserved types are ignored, as the spec says
            };
            if n != 0 {
                entries.insert(n, e);
            }
        }
    }
    Ok(Section {
        offset: off,
        entries,
        trailer: d,
        xref_stream: Some(num),
        end: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nested_objects_and_references() {
        let data = b"<< /A 1 0 R /B [1 2.5 (x\\)y) <414> /N#20m] /C << /D true >> >>".to_vec();
        let mut mem = Mem(&data);
        let mut p = Parser::new(&mut mem, 0);
        let Obj::Dict(d) = p.object(0).unwrap() else {
            panic!("not a dict")
        };
        assert_eq!(d.get(b"A"), Some(&Obj::Ref(1, 0)));
        assert_eq!(
            d.get(b"B"),
            Some(&Obj::Array(vec![
                Obj::Int(1),
                Obj::Real(2.5),
                Obj::Str(b"x)y".to_vec()),
                Obj::Str(vec![0x41, 0x40]),
                Obj::Name(b"N m".to_vec())
            ]))
        );
        assert_eq!(d.spans.len(), 3);
        let s = d.span_of(b"B").unwrap();
        assert_eq!(
            &data[s.start as usize..s.end as usize],
            b"[1 2.5 (x\\)y) <414> /N#20m]"
        );
    }

    #[test]
    fn refuses_deep_nesting_without_overflowing() {
        let data = vec![b'['; 100_000];
        let mut mem = Mem(&data);
        let mut p = Parser::new(&mut mem, 0);
        assert!(p.object(0).is_err());
    }

    #[test]
    fn png_predictor_up() {
        // Two rows of 2 bytes with the Up filter.
        let data = [2, 1, 2, 2, 1, 1];
        assert_eq!(png_unpredict(&data, 2, 1).unwrap(), vec![1, 2, 2, 3]);
    }
}

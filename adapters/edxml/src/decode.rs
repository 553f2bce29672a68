//! edXML package → [`Package`], in one streaming pass.
//!
//! The header (`edXMLEnvelope`) is small and its elements come in any order,
//! so it is read into a bounded tree and mapped afterwards. Attachment
//! content is never a tree: its base64 text is taken straight from the
//! underlying reader, decoded in blocks and handed to the sink.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, BufRead, Read};

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use lienthong_proto::prost::bytes::Bytes;
use lienthong_proto::v1::{
    AttachmentRef, Business, BusinessDocumentInfo, BusinessReceiver, Document, Envelope,
    ManifestReference, Organization, Replacement, ResponseFor, Signer, Staff, StatusNotice,
    TraceHeader, XmlExtension, envelope::Body,
};
use lienthong_types::error::{Error, Reason, Result};
use lienthong_types::text::{self, TextKind};
use quick_xml::events::Event;
use ring::digest;

use crate::sink::{AttachmentMeta, AttachmentSink, looks_like_zip, to_array, unzip_single};
use crate::values::{
    any_date, any_timestamp, iso_date, slash_date, standard_date, standard_timestamp, to_proto,
};
use crate::xml::{Attr, Element, NAMESPACE, Node, Ns, quoted, resolve_reference};
use crate::{AttachmentInfo, Certificate, Package, SignatureInfo};

/// One thing wrong with a package: where (an XPath-like location) and a
/// sentence saying what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub location: String,
    pub message: String,
}

impl Problem {
    pub fn new(location: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            location: location.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

/// Bounds on what a package may make the decoder hold or do.
#[derive(Debug, Clone)]
pub struct Limits {
    /// One text node, tag or comment outside attachment content.
    pub max_text_bytes: usize,
    /// Element nesting.
    pub max_depth: usize,
    /// Everything kept outside attachment content (header, unknown elements).
    pub max_header_bytes: usize,
    pub max_attachments: usize,
    /// Decoded bytes of one attachment.
    pub max_attachment_bytes: u64,
    /// The file inside a single-file ZIP is hashed only up to this size (a
    /// ZIP bomb stays a ZIP bomb, but does not keep the decoder busy).
    pub max_zip_entry_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_text_bytes: 1024 * 1024,
            max_depth: 64,
            max_header_bytes: 16 * 1024 * 1024,
            max_attachments: 1000,
            max_attachment_bytes: 4 * 1024 * 1024 * 1024,
            max_zip_entry_bytes: 4 * 1024 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone)]
pub struct DecodeOptions {
    /// The envelope's message_id: an AMQP message_id property, an id the
    /// gRPC caller gave. Without one it is derived from the package bytes.
    pub message_id: Option<String>,
    pub limits: Limits,
    /// Look inside ZIP attachments (needs a sink that can read back).
    pub unzip: bool,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            message_id: None,
            limits: Limits::default(),
            unzip: true,
        }
    }
}

/// Decodes one edXML package, streaming attachment bytes into `sink`.
///
/// Refuses with `MALFORMED` what is not a package at all: not XML, not
/// UTF-8, another namespace, truncated, a DOCTYPE (entity declarations) or a
/// reference to an undeclared entity, base64 with errors, a manifest
/// Reference without its attachment or an attachment the manifest does not
/// name, a status carrying attachments. `SIZE_LIMIT` for what exceeds
/// [`Limits`]. Whether the fields are acceptable is [`crate::validate`]'s
/// question, not this one's.
pub fn decode<R: Read>(
    input: R,
    sink: &mut dyn AttachmentSink,
    options: &DecodeOptions,
) -> Result<Package> {
    let mut p = Parser::new(input, options.limits.clone());
    let mut raw = Raw::default();
    let root = p.prolog()?;
    p.root(root, &mut raw, sink)?;
    p.epilog()?;
    let (sha256, size) = p.finish();
    let mut notices = std::mem::take(&mut p.notices);
    let mut pkg = build(raw, options, sha256, size, &mut notices)?;
    pkg.notices = notices;
    if options.unzip {
        for (i, info) in pkg.attachments.iter_mut().enumerate() {
            if !info.is_zip {
                continue;
            }
            if let Some(r) = sink.read_back(i)? {
                info.zip_entry = unzip_single(r, io::sink(), options.limits.max_zip_entry_bytes)?;
            }
        }
    }
    Ok(pkg)
}

// ---------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------

/// The package bytes: buffered, hashed as they are consumed, and bounded
/// per XML event so that no tag or text outside attachments can grow
/// quick-xml's buffer without limit.
struct Input<R> {
    inner: R,
    buf: Box<[u8]>,
    pos: usize,
    cap: usize,
    ctx: digest::Context,
    total: u64,
    since_mark: usize,
    limit: usize,
    tripped: bool,
}

impl<R: Read> Input<R> {
    fn mark(&mut self) {
        self.since_mark = 0;
    }
}

impl<R: Read> Read for Input<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = {
            let b = self.fill_buf()?;
            let n = b.len().min(out.len());
            out[..n].copy_from_slice(&b[..n]);
            n
        };
        self.consume(n);
        Ok(n)
    }
}

impl<R: Read> BufRead for Input<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.since_mark > self.limit {
            self.tripped = true;
            return Err(io::Error::other("an XML event is longer than the limit"));
        }
        if self.pos >= self.cap {
            loop {
                match self.inner.read(&mut self.buf) {
                    Ok(n) => {
                        self.pos = 0;
                        self.cap = n;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(&self.buf[self.pos..self.cap])
    }

    fn consume(&mut self, amt: usize) {
        let amt = amt.min(self.cap - self.pos);
        self.ctx.update(&self.buf[self.pos..self.pos + amt]);
        self.pos += amt;
        self.total += amt as u64;
        self.since_mark += amt;
    }
}

/// An XML event, owned, with names resolved.
enum Ev {
    Start(Tag),
    Empty(Tag),
    End,
    Text(String),
    CData(String),
    Ref(String),
    Comment(String),
    Pi(String),
    Decl,
    Eof,
}

struct Tag {
    ns: Ns,
    local: String,
    qname: String,
    attrs: Vec<Attr>,
}

impl Tag {
    fn is(&self, local: &str) -> bool {
        self.ns == Ns::Edxml && self.local == local
    }
}

struct Parser<R: Read> {
    reader: quick_xml::Reader<Input<R>>,
    buf: Vec<u8>,
    /// Namespace declarations of the open elements: (prefix, "" for the
    /// default namespace; uri).
    scopes: Vec<Vec<(String, String)>>,
    depth: usize,
    limits: Limits,
    budget: usize,
    notices: Vec<Problem>,
    events: u64,
    undeclared_edxml_noted: bool,
    /// The open elements' names as written, for refusals.
    path: Vec<String>,
}

const WHITESPACE: [char; 4] = [' ', '\t', '\r', '\n'];

fn is_blank(s: &str) -> bool {
    s.trim_matches(WHITESPACE).is_empty()
}

impl<R: Read> Parser<R> {
    fn new(input: R, limits: Limits) -> Self {
        let input = Input {
            inner: input,
            buf: vec![0u8; 64 * 1024].into_boxed_slice(),
            pos: 0,
            cap: 0,
            ctx: digest::Context::new(&digest::SHA256),
            total: 0,
            since_mark: 0,
            limit: limits.max_text_bytes + 64 * 1024,
            tripped: false,
        };
        let mut reader = quick_xml::Reader::from_reader(input);
        let cfg = reader.config_mut();
        cfg.check_end_names = true;
        cfg.check_comments = true;
        cfg.expand_empty_elements = false;
        cfg.trim_text(false);
        Parser {
            reader,
            buf: Vec::new(),
            scopes: Vec::new(),
            depth: 0,
            budget: limits.max_header_bytes,
            limits,
            notices: Vec::new(),
            events: 0,
            undeclared_edxml_noted: false,
            path: Vec::new(),
        }
    }

    fn finish(&mut self) -> ([u8; 32], u64) {
        let input = self.reader.get_mut();
        // Whatever follows the root element was read and checked too.
        let ctx = std::mem::replace(&mut input.ctx, digest::Context::new(&digest::SHA256));
        (to_array(ctx.finish().as_ref()), input.total)
    }

    fn xml_error(&mut self, e: quick_xml::Error) -> Error {
        if self.reader.get_ref().tripped {
            return Error::new(
                Reason::SizeLimit,
                format!(
                    "the package has a text, tag or comment outside attachment content longer than {} bytes",
                    self.limits.max_text_bytes
                ),
            );
        }
        let at = self.reader.error_position();
        match e {
            // The transport's own refusal (see the gRPC adapter's `chunk_channel`).
            quick_xml::Error::Io(io) => {
                match io.get_ref().and_then(|e| e.downcast_ref::<Error>()) {
                    Some(refusal) => Error::new(refusal.reason(), refusal.message()),
                    None => Error::unavailable("reading the package", io.to_string()),
                }
            }
            quick_xml::Error::Encoding(_) => Error::malformed(format!(
                "the package is not UTF-8 text (invalid bytes near byte {at}); edXML packages are UTF-8 XML"
            )),
            quick_xml::Error::Syntax(s) if self.events == 0 => {
                Error::malformed(format!("the package is not XML: {s} at byte {at}"))
            }
            other => Error::malformed(format!(
                "the package is not well-formed XML: {other} (near byte {at})"
            )),
        }
    }

    fn charge(&mut self, n: usize) -> Result<()> {
        if n > self.budget {
            return Err(Error::new(
                Reason::SizeLimit,
                format!(
                    "the package's header and other content outside attachments exceed {} bytes",
                    self.limits.max_header_bytes
                ),
            ));
        }
        self.budget -= n;
        Ok(())
    }

    fn next(&mut self) -> Result<Ev> {
        self.buf.clear();
        self.reader.get_mut().mark();
        let ev = match self.reader.read_event_into(&mut self.buf) {
            Ok(ev) => ev.into_owned(),
            Err(e) => return Err(self.xml_error(e)),
        };
        self.events += 1;
        Ok(match ev {
            Event::Start(s) => {
                self.depth += 1;
                if self.depth > self.limits.max_depth {
                    return Err(Error::malformed(format!(
                        "the package nests elements deeper than {} levels",
                        self.limits.max_depth
                    )));
                }
                let tag = self.open(&s, true)?;
                self.path.push(tag.qname.clone());
                Ev::Start(tag)
            }
            Event::Empty(s) => Ev::Empty(self.open(&s, false)?),
            Event::End(_) => {
                self.scopes.pop();
                self.path.pop();
                self.depth = self.depth.saturating_sub(1);
                Ev::End
            }
            Event::Text(t) => Ev::Text(self.legal(t.into_inner().into_owned())?),
            Event::CData(c) => Ev::CData(self.legal(c.into_inner().into_owned())?),
            Event::GeneralRef(r) => {
                let name = r.into_inner().into_owned();
                match resolve_reference(&name) {
                    Some(c) if !text::allowed(c, TextKind::Free) => {
                        return Err(Error::malformed(format!(
                            "the package writes {} as the reference &{name}; in {}; edXML values may not hold it, not even as a character reference: remove it",
                            text::describe_char(c),
                            self.element_path()
                        )));
                    }
                    Some(_) => {}
                    None => {
                        return Err(Error::malformed(format!(
                            "the package refers to &{}; in {}, which is not a predefined XML entity nor a character XML allows (NUL and most control characters are not, even as references); entity declarations are not accepted in edXML",
                            name.chars().take(40).collect::<String>(),
                            self.element_path()
                        )));
                    }
                }
                Ev::Ref(name)
            }
            Event::Comment(c) => Ev::Comment(self.legal(c.into_inner().into_owned())?),
            Event::PI(p) => Ev::Pi(self.legal(p.into_inner().into_owned())?),
            Event::Decl(d) => {
                if let Some(Ok(enc)) = d.encoding() {
                    let enc = enc.to_ascii_lowercase();
                    if enc != "utf-8" && enc != "utf8" {
                        return Err(Error::malformed(format!(
                            "the package declares encoding {enc:?}; edXML packages must be UTF-8"
                        )));
                    }
                }
                Ev::Decl
            }
            Event::DocType(_) => {
                return Err(Error::malformed(
                    "the package has a DOCTYPE declaration; edXML packages must not declare a document type or entities (refused: entity expansion and external entities are attack vectors)",
                ));
            }
            Event::Eof => Ev::Eof,
        })
    }

    /// Resolves a start tag's names and pushes its namespace scope (popped
    /// at once for an empty element).
    fn open(&mut self, s: &quick_xml::events::BytesStart<'_>, keep: bool) -> Result<Tag> {
        let qname = name(self.legal(s.name().as_ref().to_owned())?)?;
        let mut decls = Vec::new();
        let mut raw_attrs = Vec::new();
        for a in s.attributes() {
            let a = a.map_err(|e| {
                Error::malformed(format!(
                    "the element <{qname}> has a malformed attribute: {e}"
                ))
            })?;
            let key = name(self.legal(a.key.as_ref().to_owned())?)?;
            let value = self.legal(a.value.into_owned())?;
            if value.contains('<') {
                return Err(Error::malformed(format!(
                    "the attribute {key} of <{qname}> holds a '<', which XML does not allow there"
                )));
            }
            if key == "xmlns" {
                decls.push((String::new(), value));
            } else if let Some(p) = key.strip_prefix("xmlns:") {
                decls.push((p.to_owned(), value));
            } else {
                raw_attrs.push((key, value));
            }
        }
        self.charge(
            qname.len()
                + raw_attrs
                    .iter()
                    .map(|(k, v)| k.len() + v.len())
                    .sum::<usize>(),
        )?;
        self.scopes.push(decls);
        let (prefix, local) = match qname.split_once(':') {
            Some((p, l)) => (Some(p.to_owned()), l.to_owned()),
            None => (None, qname.clone()),
        };
        let ns = match &prefix {
            None => match self.lookup("") {
                Some(u) if u == NAMESPACE => Ns::Edxml,
                Some(u) if !u.is_empty() => Ns::Other(u.to_owned()),
                _ => Ns::Empty,
            },
            Some(p) => match self.lookup(p) {
                Some(u) if u == NAMESPACE => Ns::Edxml,
                Some(u) => Ns::Other(u.to_owned()),
                None if p == "edXML" => {
                    if !self.undeclared_edxml_noted {
                        self.undeclared_edxml_noted = true;
                        self.notices.push(Problem::new(
                            format!("//{qname}"),
                            "the prefix edXML is used without being declared; it was read as the edXML namespace",
                        ));
                    }
                    Ns::Edxml
                }
                None => Ns::Undeclared(p.clone()),
            },
        };
        let attrs = raw_attrs
            .into_iter()
            .map(|(qname, raw)| {
                let prefix_ns = qname
                    .split_once(':')
                    .and_then(|(p, _)| self.lookup(p))
                    .map(str::to_owned);
                Attr {
                    qname,
                    raw,
                    prefix_ns,
                }
            })
            .collect();
        if !keep {
            self.scopes.pop();
        }
        Ok(Tag {
            ns,
            local,
            qname,
            attrs,
        })
    }

    /// Refuses what XML cannot carry and what no edXML value may hold (NUL
    /// and other control characters but tab and line breaks, noncharacters,
    /// bidirectional overrides: see `lienthong_types::text`), naming the
    /// element it was found in. quick-xml does not check characters itself,
    /// and a NUL would not survive being written again.
    fn legal(&self, s: String) -> Result<String> {
        let bad = s
            .chars()
            .enumerate()
            .find(|(_, c)| !crate::xml::is_xml_char(*c) || !text::allowed(*c, TextKind::Free));
        match bad {
            Some((i, c)) => Err(Error::malformed(format!(
                "the package holds {} in {} (character {} of that piece of text); {}: remove it",
                text::describe_char(c),
                self.element_path(),
                i + 1,
                if crate::xml::is_xml_char(c) {
                    "edXML values may not hold it"
                } else {
                    "XML does not allow it"
                }
            ))),
            None => Ok(s),
        }
    }

    /// Where the reader is, for refusals: `<edXMLEnvelope/edXMLHeader/…>`.
    fn element_path(&self) -> String {
        if self.path.is_empty() {
            return "the prolog".to_owned();
        }
        let tail: Vec<&str> = self
            .path
            .iter()
            .rev()
            .take(4)
            .map(String::as_str)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let more = if self.path.len() > 4 { "…/" } else { "" };
        format!("<{more}{}>", tail.join("/"))
    }

    fn lookup(&self, prefix: &str) -> Option<&str> {
        if prefix == "xml" {
            return Some("http://www.w3.org/XML/1998/namespace");
        }
        self.scopes
            .iter()
            .rev()
            .flat_map(|s| s.iter().rev())
            .find(|(p, _)| p == prefix)
            .map(|(_, u)| u.as_str())
    }

    fn truncated(&self, inside: &str) -> Error {
        Error::malformed(format!(
            "the package ends inside <{inside}>: it is truncated (an incomplete upload or copy?)"
        ))
    }

    /// Everything before the root element; returns the root's start tag.
    fn prolog(&mut self) -> Result<(Tag, bool)> {
        let mut junk = false;
        loop {
            match self.next()? {
                Ev::Start(t) => return Ok((t, false)),
                Ev::Empty(t) => return Ok((t, true)),
                Ev::Text(t) if is_blank(&t) || t == "\u{feff}" => {}
                Ev::Text(t) => {
                    if !junk {
                        junk = true;
                        let head: String = t.trim().chars().take(20).collect();
                        self.notices.push(Problem::new(
                            "/",
                            format!("text {head:?} stands before the XML declaration or root element; it was ignored"),
                        ));
                    }
                }
                Ev::Decl | Ev::Comment(_) | Ev::Pi(_) | Ev::Ref(_) | Ev::CData(_) => {}
                Ev::End => {
                    return Err(Error::malformed(
                        "the package is not XML: it begins with a closing tag",
                    ));
                }
                Ev::Eof => {
                    return Err(Error::malformed(if self.reader.get_ref().total == 0 {
                        "the package is empty".to_owned()
                    } else {
                        "the package is not XML: it has no root element".to_owned()
                    }));
                }
            }
        }
    }

    fn epilog(&mut self) -> Result<()> {
        loop {
            match self.next()? {
                Ev::Eof => return Ok(()),
                Ev::Text(t) if is_blank(&t) => {}
                Ev::Comment(_) | Ev::Pi(_) => {}
                _ => {
                    return Err(Error::malformed(
                        "the package has content after the end of its edXML element",
                    ));
                }
            }
        }
    }

    fn root(
        &mut self,
        (tag, empty): (Tag, bool),
        raw: &mut Raw,
        sink: &mut dyn AttachmentSink,
    ) -> Result<()> {
        if !tag.is("edXML") {
            let ns = match &tag.ns {
                Ns::Edxml => NAMESPACE.to_owned(),
                Ns::Other(u) => u.clone(),
                Ns::Empty => "no namespace".to_owned(),
                Ns::Undeclared(p) => format!("the undeclared prefix {p}"),
            };
            return Err(Error::malformed(format!(
                "not an edXML package: the root element is <{}> in {ns}; an edXML package is <edXML xmlns=\"{NAMESPACE}\">",
                tag.qname
            )));
        }
        attr_extensions(&tag.attrs, "/edXML", &mut raw.exts);
        if empty {
            return Err(Error::malformed(
                "the edXML element is empty: the package has no header",
            ));
        }
        let mut stray = Vec::new();
        loop {
            match self.next()? {
                Ev::Start(t) if t.is("AttachmentEncoded") => {
                    self.attachments(t, false, raw, sink)?
                }
                Ev::Empty(t) if t.is("AttachmentEncoded") => {
                    self.attachments(t, true, raw, sink)?
                }
                Ev::Start(t) if t.is("edXMLEnvelope") && raw.envelope.is_none() => {
                    raw.envelope = Some(self.element(t, false)?);
                }
                Ev::Empty(t) if t.is("edXMLEnvelope") && raw.envelope.is_none() => {
                    raw.envelope = Some(self.element(t, true)?);
                }
                Ev::Start(t) => {
                    let e = self.element(t, false)?;
                    raw.exts
                        .push(ext(format!("/edXML/{}", e.step()), e.to_xml()));
                }
                Ev::Empty(t) => {
                    let e = self.element(t, true)?;
                    raw.exts
                        .push(ext(format!("/edXML/{}", e.step()), e.to_xml()));
                }
                Ev::End => {
                    stray_text(&stray, "/edXML", &mut raw.exts);
                    return Ok(());
                }
                Ev::Eof => return Err(self.truncated("edXML")),
                other => self.stray(other, &mut stray)?,
            }
        }
    }

    /// Character data among a container's elements: collected, then kept
    /// as one `text()` (see [`stray_text`]).
    fn stray(&mut self, ev: Ev, pieces: &mut Vec<String>) -> Result<()> {
        let piece = match ev {
            Ev::Text(t) => t,
            Ev::CData(t) => format!("<![CDATA[{t}]]>"),
            Ev::Ref(r) => format!("&{r};"),
            Ev::Decl => {
                return Err(Error::malformed(
                    "the package has an XML declaration inside an element",
                ));
            }
            _ => return Ok(()),
        };
        self.charge(piece.len())?;
        pieces.push(piece);
        Ok(())
    }

    /// Reads an element into a tree (its start tag already read).
    fn element(&mut self, tag: Tag, empty: bool) -> Result<Element> {
        let mut el = Element {
            ns: tag.ns,
            local: tag.local,
            qname: tag.qname,
            attrs: tag.attrs,
            children: Vec::new(),
        };
        if empty {
            return Ok(el);
        }
        let mut text = 0usize;
        loop {
            let node = match self.next()? {
                Ev::Start(t) => Node::Element(self.element(t, false)?),
                Ev::Empty(t) => Node::Element(self.element(t, true)?),
                Ev::End => return Ok(el),
                Ev::Eof => return Err(self.truncated(&el.qname)),
                Ev::Decl => {
                    return Err(Error::malformed(
                        "the package has an XML declaration inside an element",
                    ));
                }
                Ev::Text(t) => {
                    text += t.len();
                    Node::Text(t)
                }
                Ev::CData(t) => {
                    text += t.len();
                    Node::CData(t)
                }
                Ev::Ref(r) => {
                    text += r.len();
                    Node::Ref(r)
                }
                Ev::Comment(c) => Node::Comment(c),
                Ev::Pi(p) => Node::Pi(p),
            };
            if text > self.limits.max_text_bytes {
                return Err(Error::new(
                    Reason::SizeLimit,
                    format!(
                        "the element <{}> holds more than {} bytes of text; only attachment content may be that large",
                        el.qname, self.limits.max_text_bytes
                    ),
                ));
            }
            if let Node::Text(t) | Node::CData(t) | Node::Comment(t) | Node::Pi(t) | Node::Ref(t) =
                &node
            {
                self.charge(t.len())?;
            }
            el.children.push(node);
        }
    }

    fn attachments(
        &mut self,
        tag: Tag,
        empty: bool,
        raw: &mut Raw,
        sink: &mut dyn AttachmentSink,
    ) -> Result<()> {
        const PATH: &str = "/edXML/AttachmentEncoded";
        attr_extensions(&tag.attrs, PATH, &mut raw.exts);
        raw.attachment_block = true;
        if empty {
            return Ok(());
        }
        let mut stray = Vec::new();
        loop {
            match self.next()? {
                Ev::Start(t) if t.is("Attachment") => self.attachment(t, false, raw, sink)?,
                Ev::Empty(t) if t.is("Attachment") => self.attachment(t, true, raw, sink)?,
                Ev::Start(t) => {
                    let e = self.element(t, false)?;
                    raw.exts
                        .push(ext(format!("{PATH}/{}", e.step()), e.to_xml()));
                }
                Ev::Empty(t) => {
                    let e = self.element(t, true)?;
                    raw.exts
                        .push(ext(format!("{PATH}/{}", e.step()), e.to_xml()));
                }
                Ev::End => {
                    stray_text(&stray, PATH, &mut raw.exts);
                    return Ok(());
                }
                Ev::Eof => return Err(self.truncated("AttachmentEncoded")),
                other => self.stray(other, &mut stray)?,
            }
        }
    }

    fn attachment(
        &mut self,
        tag: Tag,
        empty: bool,
        raw: &mut Raw,
        sink: &mut dyn AttachmentSink,
    ) -> Result<()> {
        let index = raw.attachments.len();
        let path = format!("/edXML/AttachmentEncoded/Attachment[{}]", index + 1);
        if index >= self.limits.max_attachments {
            return Err(Error::new(
                Reason::SizeLimit,
                format!(
                    "the package carries more than {} attachments",
                    self.limits.max_attachments
                ),
            ));
        }
        attr_extensions(&tag.attrs, &path, &mut raw.exts);
        let mut meta = AttachmentMeta::default();
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut stray = Vec::new();
        let mut content: Option<(u64, [u8; 32], Vec<u8>)> = None;
        if !empty {
            loop {
                let (t, empty_child) = match self.next()? {
                    Ev::Start(t) => (t, false),
                    Ev::Empty(t) => (t, true),
                    Ev::End => break,
                    Ev::Eof => return Err(self.truncated("Attachment")),
                    other => {
                        self.stray(other, &mut stray)?;
                        continue;
                    }
                };
                if t.is("ContentTransferEncoded") {
                    if content.is_some() {
                        return Err(Error::malformed(format!(
                            "attachment {} ({}) has two ContentTransferEncoded elements",
                            index + 1,
                            meta.name
                        )));
                    }
                    attr_extensions(
                        &t.attrs,
                        &format!("{path}/ContentTransferEncoded"),
                        &mut raw.exts,
                    );
                    sink.begin(index, &meta)?;
                    let (written, head) = if empty_child {
                        (0, Vec::new())
                    } else {
                        self.content(sink, index, &meta.name)?
                    };
                    let (size, sha) = sink.end()?;
                    if size != written {
                        return Err(Error::unavailable(
                            "the attachment sink",
                            format!("it stored {size} bytes of the {written} decoded"),
                        ));
                    }
                    content = Some((size, sha, head));
                    continue;
                }
                let el = self.element(t, empty_child)?;
                let field = match el.local.as_str() {
                    "ContentId" => Some(&mut meta.content_id),
                    "AttachmentName" => Some(&mut meta.name),
                    "Description" => Some(&mut meta.description),
                    "ContentType" => Some(&mut meta.content_type),
                    _ => None,
                };
                match field {
                    Some(f) if el.ns == Ns::Edxml => {
                        let n = seen.entry(el.local.clone()).or_insert(0);
                        *n += 1;
                        let leaf = format!("{path}/{}", el.local);
                        if *n == 1 {
                            *f = leaf_string(&el, &leaf, &mut raw.exts);
                        } else {
                            raw.exts.push(ext(format!("{leaf}[{n}]"), el.to_xml()));
                        }
                    }
                    _ => raw
                        .exts
                        .push(ext(format!("{path}/{}", el.step()), el.to_xml())),
                }
            }
        }
        stray_text(&stray, &path, &mut raw.exts);
        let Some((size, sha256, head)) = content else {
            return Err(Error::malformed(format!(
                "attachment {} ({}) has no ContentTransferEncoded: the package does not carry its bytes",
                index + 1,
                if meta.name.is_empty() {
                    "no name"
                } else {
                    meta.name.as_str()
                }
            )));
        };
        raw.attachments.push(Carried {
            meta,
            size,
            sha256,
            is_zip: looks_like_zip(&head),
        });
        Ok(())
    }

    /// Streams the base64 content of ContentTransferEncoded into the sink.
    /// Returns the decoded length and its first bytes.
    fn content(
        &mut self,
        sink: &mut dyn AttachmentSink,
        index: usize,
        name: &str,
    ) -> Result<(u64, Vec<u8>)> {
        let mut b64 = Base64Stream::new(index, name, self.limits.max_attachment_bytes);
        loop {
            // Character data straight from the reader, up to markup or a
            // reference: this is what keeps memory flat for any size.
            loop {
                let mut stream = self.reader.stream();
                stream.get_mut().mark();
                let buf = match stream.fill_buf() {
                    Ok(b) => b,
                    Err(e) => {
                        drop(stream);
                        return Err(self.xml_error(quick_xml::Error::Io(e.into())));
                    }
                };
                if buf.is_empty() {
                    drop(stream);
                    return Err(self.truncated("ContentTransferEncoded"));
                }
                match memchr::memchr2(b'<', b'&', buf) {
                    Some(i) => {
                        b64.feed(&buf[..i], sink)?;
                        stream.consume(i);
                        break;
                    }
                    None => {
                        let n = buf.len();
                        b64.feed(buf, sink)?;
                        stream.consume(n);
                    }
                }
            }
            match self.next()? {
                Ev::End => break,
                Ev::Text(t) | Ev::CData(t) => b64.feed(t.as_bytes(), sink)?,
                Ev::Ref(r) => {
                    if let Some(c) = resolve_reference(&r) {
                        let mut tmp = [0u8; 4];
                        b64.feed(c.encode_utf8(&mut tmp).as_bytes(), sink)?;
                    }
                }
                Ev::Comment(_) | Ev::Pi(_) => {}
                Ev::Start(_) | Ev::Empty(_) | Ev::Decl => {
                    return Err(Error::malformed(format!(
                        "the ContentTransferEncoded of attachment {} ({name}) holds markup; it must hold base64 text only",
                        index + 1
                    )));
                }
                Ev::Eof => return Err(self.truncated("ContentTransferEncoded")),
            }
        }
        b64.finish(sink)?;
        Ok((b64.written, b64.head))
    }
}

/// Text among a container's elements is no value of the standard: it is
/// kept, as one `text()` per container, its pieces trimmed and joined by
/// line breaks, so that the layout the encoder adds around it does not
/// change it again.
fn stray_text(pieces: &[String], path: &str, exts: &mut Vec<XmlExtension>) {
    let kept: Vec<&str> = pieces
        .iter()
        .map(|p| p.trim_matches(WHITESPACE))
        .filter(|p| !p.is_empty())
        .collect();
    if !kept.is_empty() {
        exts.push(ext(format!("{path}/text()"), kept.join("\n")));
    }
}

/// quick-xml reads names loosely; a name with markup characters in it could
/// not be written back.
fn name(s: String) -> Result<String> {
    let ok = s.chars().enumerate().all(|(i, c)| {
        c.is_alphabetic()
            || c == '_'
            || c == ':'
            || !c.is_ascii()
            || (i > 0 && (c.is_ascii_digit() || c == '-' || c == '.'))
    });
    if ok && !s.is_empty() {
        Ok(s)
    } else {
        Err(Error::malformed(format!(
            "the package has an element or attribute named {:?}, which is not an XML name",
            s.chars().take(40).collect::<String>()
        )))
    }
}

fn ext(path: String, xml: String) -> XmlExtension {
    XmlExtension { path, xml }
}

/// Attributes of a standard element, kept as `@name` extensions, each
/// preceded by the declaration of its prefix where it has one.
fn attr_extensions(attrs: &[Attr], path: &str, exts: &mut Vec<XmlExtension>) {
    let mut declared: Vec<String> = Vec::new();
    for a in attrs {
        if let Some((decl, ns)) = a.declaration()
            && !declared.contains(&decl)
        {
            exts.push(ext(
                format!("{path}/@{decl}"),
                format!("{decl}={}", quoted(&ns)),
            ));
            declared.push(decl);
        }
        exts.push(ext(format!("{path}/@{}", a.qname), a.to_xml()));
    }
}

/// A standard element whose value is text.
fn leaf_string(el: &Element, path: &str, exts: &mut Vec<XmlExtension>) -> String {
    if el.has_elements() {
        exts.push(ext(path.to_owned(), el.to_xml()));
    } else {
        attr_extensions(&el.attrs, path, exts);
    }
    el.text()
}

// ---------------------------------------------------------------------------
// base64
// ---------------------------------------------------------------------------

const BLOCK: usize = 64 * 1024;

fn engine() -> GeneralPurpose {
    GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    )
}

/// Decodes base64 that arrives in pieces of any size, split anywhere,
/// with line breaks and spaces anywhere.
struct Base64Stream {
    engine: GeneralPurpose,
    pending: Vec<u8>,
    out: Vec<u8>,
    written: u64,
    /// base64 characters already decoded, for error positions.
    chars: u64,
    padded: bool,
    head: Vec<u8>,
    max: u64,
    index: usize,
    name: String,
}

impl Base64Stream {
    fn new(index: usize, name: &str, max: u64) -> Self {
        Base64Stream {
            engine: engine(),
            pending: Vec::with_capacity(BLOCK + 4),
            out: Vec::new(),
            written: 0,
            chars: 0,
            padded: false,
            head: Vec::new(),
            max,
            index,
            name: name.to_owned(),
        }
    }

    fn feed(&mut self, data: &[u8], sink: &mut dyn AttachmentSink) -> Result<()> {
        if memchr::memchr(b'\t', data).is_some() {
            self.pending.extend(
                data.iter()
                    .copied()
                    .filter(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n')),
            );
        } else {
            let mut rest = data;
            while let Some(i) = memchr::memchr3(b'\n', b'\r', b' ', rest) {
                self.pending.extend_from_slice(&rest[..i]);
                rest = &rest[i + 1..];
            }
            self.pending.extend_from_slice(rest);
        }
        if self.pending.len() >= BLOCK {
            let n = self.pending.len() / 4 * 4;
            self.decode(n, sink)?;
        }
        Ok(())
    }

    fn finish(&mut self, sink: &mut dyn AttachmentSink) -> Result<()> {
        let n = self.pending.len();
        self.decode(n, sink)
    }

    fn decode(&mut self, n: usize, sink: &mut dyn AttachmentSink) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        if self.padded {
            return Err(self.error(format!(
                "the base64 text goes on after its closing '=' padding (character {})",
                self.chars + 1
            )));
        }
        let block = &self.pending[..n];
        self.out.resize(n / 4 * 3 + 3, 0);
        let len = match self.engine.decode_slice(block, &mut self.out) {
            Ok(len) => len,
            Err(e) => {
                let what = match e {
                    base64::DecodeSliceError::DecodeError(base64::DecodeError::InvalidByte(at, b))
                    | base64::DecodeSliceError::DecodeError(base64::DecodeError::InvalidLastSymbol(at, b)) => {
                        format!(
                            "the base64 text has {} at character {}",
                            describe_byte(b),
                            self.chars + at as u64 + 1
                        )
                    }
                    base64::DecodeSliceError::DecodeError(base64::DecodeError::InvalidLength(_)) => {
                        "the base64 text ends in the middle of a group (its length is not a multiple of 4, less padding)"
                            .to_owned()
                    }
                    other => format!("the base64 text is not valid: {other}"),
                };
                return Err(self.error(what));
            }
        };
        if block.contains(&b'=') {
            self.padded = true;
        }
        if self.written + len as u64 > self.max {
            return Err(Error::new(
                Reason::SizeLimit,
                format!(
                    "attachment {} ({}) is larger than {} bytes",
                    self.index + 1,
                    self.name,
                    self.max
                ),
            ));
        }
        let bytes = &self.out[..len];
        if self.head.len() < 4 {
            let take = (4 - self.head.len()).min(bytes.len());
            self.head.extend_from_slice(&bytes[..take]);
        }
        sink.write(bytes)?;
        self.written += len as u64;
        self.chars += n as u64;
        self.pending.drain(..n);
        Ok(())
    }

    fn error(&self, what: String) -> Error {
        Error::malformed(format!(
            "attachment {} ({}): {what}",
            self.index + 1,
            if self.name.is_empty() {
                "no name"
            } else {
                self.name.as_str()
            }
        ))
    }
}

fn describe_byte(b: u8) -> String {
    if b.is_ascii_graphic() {
        format!("the character {:?}", b as char)
    } else {
        format!("the byte 0x{b:02x}")
    }
}

// ---------------------------------------------------------------------------
// Mapping the tree to an envelope
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Raw {
    envelope: Option<Element>,
    exts: Vec<XmlExtension>,
    attachments: Vec<Carried>,
    attachment_block: bool,
}

struct Carried {
    meta: AttachmentMeta,
    size: u64,
    sha256: [u8; 32],
    is_zip: bool,
}

/// The standard children of a container, split from what is kept verbatim.
#[derive(Default)]
struct Kids<'a> {
    one: HashMap<&'static str, &'a Element>,
    many: HashMap<&'static str, Vec<&'a Element>>,
}

impl<'a> Kids<'a> {
    fn one(&self, name: &str) -> Option<&'a Element> {
        self.one.get(name).copied()
    }

    fn many(&self, name: &str) -> Vec<&'a Element> {
        self.many.get(name).cloned().unwrap_or_default()
    }
}

struct Mapper {
    exts: Vec<XmlExtension>,
}

const ORG_DETAILS: [&str; 7] = [
    "OrganizationInCharge",
    "OrganName",
    "OrganAdd",
    "Email",
    "Telephone",
    "Fax",
    "Website",
];

impl Mapper {
    fn children<'a>(
        &mut self,
        el: &'a Element,
        path: &str,
        ones: &[&'static str],
        manys: &[&'static str],
    ) -> Kids<'a> {
        attr_extensions(&el.attrs, path, &mut self.exts);
        self.split(el, path, ones, manys)
    }

    fn split<'a>(
        &mut self,
        el: &'a Element,
        path: &str,
        ones: &[&'static str],
        manys: &[&'static str],
    ) -> Kids<'a> {
        let mut stray = Vec::new();
        let mut kids = Kids::default();
        let mut counts: HashMap<&'static str, usize> = HashMap::new();
        for n in &el.children {
            match n {
                Node::Element(c) => {
                    let standard = (c.ns == Ns::Edxml)
                        .then(|| {
                            ones.iter()
                                .find(|s| **s == c.local)
                                .map(|s| (*s, true))
                                .or_else(|| {
                                    manys.iter().find(|s| **s == c.local).map(|s| (*s, false))
                                })
                        })
                        .flatten();
                    match standard {
                        Some((name, true)) => {
                            let k = counts.entry(name).or_insert(0);
                            *k += 1;
                            if *k == 1 {
                                kids.one.insert(name, c);
                            } else {
                                self.exts
                                    .push(ext(format!("{path}/{name}[{k}]"), c.to_xml()));
                            }
                        }
                        Some((name, false)) => kids.many.entry(name).or_default().push(c),
                        None => self
                            .exts
                            .push(ext(format!("{path}/{}", c.step()), c.to_xml())),
                    }
                }
                Node::Text(t) => stray.push(t.clone()),
                Node::CData(t) => stray.push(format!("<![CDATA[{t}]]>")),
                Node::Ref(r) => stray.push(format!("&{r};")),
                _ => {}
            }
        }
        stray_text(&stray, path, &mut self.exts);
        kids
    }

    fn string(&mut self, el: Option<&Element>, path: &str) -> String {
        match el {
            Some(el) => leaf_string(el, path, &mut self.exts),
            None => String::new(),
        }
    }

    /// A standard element with a typed value. Where the text is not the
    /// value's standard form, the element is also kept verbatim, so that it
    /// is written back as it came.
    fn typed<T>(
        &mut self,
        el: Option<&Element>,
        path: &str,
        parse: impl Fn(&str) -> Option<T>,
        exact: impl Fn(&str, &T) -> bool,
    ) -> Option<T> {
        let el = el?;
        let text = el.text();
        let v = parse(&text);
        let is_exact = !el.has_elements() && v.as_ref().is_some_and(|v| exact(&text, v));
        if is_exact {
            attr_extensions(&el.attrs, path, &mut self.exts);
        } else {
            self.exts.push(ext(path.to_owned(), el.to_xml()));
        }
        v
    }

    fn number(&mut self, el: Option<&Element>, path: &str) -> u32 {
        self.typed(
            el,
            path,
            |t| t.trim().parse::<u32>().ok(),
            |t, v| v.to_string() == t,
        )
        .unwrap_or(0)
    }

    /// ISO form of a date (or "" when unreadable); an empty element is the
    /// empty date, written back empty.
    fn date(&mut self, el: Option<&Element>, path: &str) -> String {
        if el.is_some_and(|e| e.text().is_empty() && !e.has_elements()) {
            if let Some(e) = el {
                attr_extensions(&e.attrs, path, &mut self.exts);
            }
            return String::new();
        }
        self.typed(el, path, any_date, |t, d| {
            standard_date(t) == Some(*d) && slash_date(*d) == t
        })
        .map(iso_date)
        .unwrap_or_default()
    }

    fn organization(&mut self, el: &Element, path: &str) -> (String, Option<Organization>) {
        let mut names = vec!["OrganId"];
        names.extend(ORG_DETAILS);
        let k = self.children(el, path, &names, &[]);
        let id = self.string(k.one("OrganId"), &format!("{path}/OrganId"));
        if !ORG_DETAILS.iter().any(|n| k.one(n).is_some()) {
            return (id, None);
        }
        let mut s = |n: &str| self.string(k.one(n), &format!("{path}/{n}"));
        let org = Organization {
            organization_in_charge: s("OrganizationInCharge"),
            organ_name: s("OrganName"),
            organ_add: s("OrganAdd"),
            email: s("Email"),
            telephone: s("Telephone"),
            fax: s("Fax"),
            website: s("Website"),
        };
        (id, Some(org))
    }

    fn recipients(&mut self, tos: &[&Element], path: &str) -> (Vec<String>, Vec<Organization>) {
        let mut ids = Vec::new();
        let mut orgs = Vec::new();
        for (i, t) in tos.iter().enumerate() {
            let (id, org) = self.organization(t, &format!("{path}/To[{}]", i + 1));
            ids.push(id);
            orgs.push(org);
        }
        let orgs = if orgs.iter().any(Option::is_some) {
            orgs.into_iter().map(Option::unwrap_or_default).collect()
        } else {
            Vec::new()
        };
        (ids, orgs)
    }

    fn staff(&mut self, el: Option<&Element>, path: &str) -> Option<Staff> {
        let el = el?;
        let k = self.children(el, path, &["Department", "Staff", "Email", "Mobile"], &[]);
        let mut s = |n: &str| self.string(k.one(n), &format!("{path}/{n}"));
        Some(Staff {
            department: s("Department"),
            name: s("Staff"),
            email: s("Email"),
            mobile: s("Mobile"),
        })
    }

    fn strings(&mut self, el: Option<&Element>, path: &str, item: &'static str) -> Vec<String> {
        let Some(el) = el else { return Vec::new() };
        let k = self.children(el, path, &[], &[item]);
        k.many(item)
            .iter()
            .enumerate()
            .map(|(i, e)| leaf_string(e, &format!("{path}/{item}[{}]", i + 1), &mut self.exts))
            .collect()
    }

    fn document(
        &mut self,
        mh: &Element,
        path: &str,
    ) -> (
        String,
        Option<Organization>,
        Vec<String>,
        Vec<Organization>,
        Document,
    ) {
        let k = self.children(
            mh,
            path,
            &[
                "From",
                "DocumentId",
                "Code",
                "PromulgationInfo",
                "DocumentType",
                "Subject",
                "Content",
                "SignerInfo",
                "DueDate",
                "OtherInfo",
                "SteeringType",
                "ToPlaces",
            ],
            &["To", "ResponseFor"],
        );
        let (from, sender) = match k.one("From") {
            Some(f) => self.organization(f, &format!("{path}/From")),
            None => (String::new(), None),
        };
        let (to, recipients) = self.recipients(&k.many("To"), path);
        let mut doc = Document {
            document_id: self.string(k.one("DocumentId"), &format!("{path}/DocumentId")),
            subject: self.string(k.one("Subject"), &format!("{path}/Subject")),
            content: self.string(k.one("Content"), &format!("{path}/Content")),
            ..Default::default()
        };
        if let Some(c) = k.one("Code") {
            let p = format!("{path}/Code");
            let ck = self.children(c, &p, &["CodeNumber", "CodeNotation"], &[]);
            doc.code_number = self.string(ck.one("CodeNumber"), &format!("{p}/CodeNumber"));
            doc.code_notation = self.string(ck.one("CodeNotation"), &format!("{p}/CodeNotation"));
        }
        if let Some(c) = k.one("PromulgationInfo") {
            let p = format!("{path}/PromulgationInfo");
            let ck = self.children(c, &p, &["Place", "PromulgationDate"], &[]);
            doc.promulgation_place = self.string(ck.one("Place"), &format!("{p}/Place"));
            doc.promulgation_date =
                self.date(ck.one("PromulgationDate"), &format!("{p}/PromulgationDate"));
        }
        if let Some(c) = k.one("DocumentType") {
            let p = format!("{path}/DocumentType");
            let ck = self.children(c, &p, &["Type", "TypeDetail", "TypeName"], &[]);
            doc.r#type = self.number(ck.one("Type"), &format!("{p}/Type"));
            doc.type_detail = self.number(ck.one("TypeDetail"), &format!("{p}/TypeDetail"));
            doc.type_name = self.string(ck.one("TypeName"), &format!("{p}/TypeName"));
        }
        if let Some(c) = k.one("SignerInfo") {
            let p = format!("{path}/SignerInfo");
            let ck = self.children(c, &p, &["Competence", "Position", "FullName"], &[]);
            let mut s = |n: &str| self.string(ck.one(n), &format!("{p}/{n}"));
            doc.signer = Some(Signer {
                competence: s("Competence"),
                position: s("Position"),
                full_name: s("FullName"),
            });
        }
        doc.due_date = self.date(k.one("DueDate"), &format!("{path}/DueDate"));
        if let Some(c) = k.one("OtherInfo") {
            let p = format!("{path}/OtherInfo");
            let ck = self.children(
                c,
                &p,
                &[
                    "Priority",
                    "SphereOfPromulgation",
                    "TyperNotation",
                    "PromulgationAmount",
                    "PageAmount",
                    "Direction",
                    "Appendixes",
                ],
                &[],
            );
            doc.priority = self.number(ck.one("Priority"), &format!("{p}/Priority"));
            doc.sphere_of_promulgation = self.string(
                ck.one("SphereOfPromulgation"),
                &format!("{p}/SphereOfPromulgation"),
            );
            doc.typer_notation =
                self.string(ck.one("TyperNotation"), &format!("{p}/TyperNotation"));
            doc.promulgation_amount = self.number(
                ck.one("PromulgationAmount"),
                &format!("{p}/PromulgationAmount"),
            );
            doc.page_amount = self.number(ck.one("PageAmount"), &format!("{p}/PageAmount"));
            doc.direction = self
                .typed(
                    ck.one("Direction"),
                    &format!("{p}/Direction"),
                    |t| match t.trim().to_ascii_lowercase().as_str() {
                        "true" | "1" => Some(true),
                        "false" | "0" => Some(false),
                        _ => None,
                    },
                    |t, v| t == if *v { "true" } else { "false" },
                )
                .unwrap_or(false);
            doc.appendixes =
                self.strings(ck.one("Appendixes"), &format!("{p}/Appendixes"), "Appendix");
        }
        for (i, r) in k.many("ResponseFor").iter().enumerate() {
            let rf = self.response_for(r, &format!("{path}/ResponseFor[{}]", i + 1));
            doc.response_for.push(rf);
        }
        doc.steering_type = self.number(k.one("SteeringType"), &format!("{path}/SteeringType"));
        doc.to_places = self.strings(k.one("ToPlaces"), &format!("{path}/ToPlaces"), "Place");
        (from, sender, to, recipients, doc)
    }

    fn response_for(&mut self, el: &Element, p: &str) -> ResponseFor {
        let ck = self.children(
            el,
            p,
            &["OrganId", "Code", "PromulgationDate", "DocumentId"],
            &[],
        );
        ResponseFor {
            organ_id: self.string(ck.one("OrganId"), &format!("{p}/OrganId")),
            code: self.string(ck.one("Code"), &format!("{p}/Code")),
            promulgation_date: self
                .date(ck.one("PromulgationDate"), &format!("{p}/PromulgationDate")),
            document_id: self.string(ck.one("DocumentId"), &format!("{p}/DocumentId")),
        }
    }

    fn status(
        &mut self,
        mh: &Element,
        path: &str,
    ) -> (
        String,
        Option<Organization>,
        Vec<String>,
        Vec<Organization>,
        StatusNotice,
    ) {
        let k = self.children(
            mh,
            path,
            &[
                "From",
                "ResponseFor",
                "StaffInfo",
                "StatusCode",
                "Description",
                "Timestamp",
            ],
            &["To"],
        );
        let (from, sender) = match k.one("From") {
            Some(f) => self.organization(f, &format!("{path}/From")),
            None => (String::new(), None),
        };
        let (mut to, recipients) = self.recipients(&k.many("To"), path);
        let mut st = StatusNotice {
            code: self.string(k.one("StatusCode"), &format!("{path}/StatusCode")),
            description: self.string(k.one("Description"), &format!("{path}/Description")),
            staff: self.staff(k.one("StaffInfo"), &format!("{path}/StaffInfo")),
            ..Default::default()
        };
        if let Some(r) = k.one("ResponseFor") {
            let rf = self.response_for(r, &format!("{path}/ResponseFor"));
            st.document_from = rf.organ_id;
            st.document_code = rf.code;
            st.document_promulgation_date = rf.promulgation_date;
            st.document_id = rf.document_id;
        }
        let ts = format!("{path}/Timestamp");
        st.at = match k.one("Timestamp") {
            Some(e) if e.text().is_empty() && !e.has_elements() => {
                attr_extensions(&e.attrs, &ts, &mut self.exts);
                None
            }
            el => self
                .typed(el, &ts, any_timestamp, |t, v| {
                    standard_timestamp(t) == Some(*v) && crate::format_timestamp(*v) == t
                })
                .map(to_proto),
        };
        if to.is_empty() && !st.document_from.is_empty() {
            to.push(st.document_from.clone());
        }
        (from, sender, to, recipients, st)
    }

    fn trace(
        &mut self,
        el: &Element,
        path: &str,
        status: bool,
    ) -> (Vec<TraceHeader>, Option<Business>) {
        let ones: &[&'static str] = if status { &[] } else { &["Bussiness"] };
        let k = self.children(el, path, ones, &["TraceHeader"]);
        let mut trace = Vec::new();
        for (i, t) in k.many("TraceHeader").iter().enumerate() {
            let p = format!("{path}/TraceHeader[{}]", i + 1);
            let tk = self.children(t, &p, &["OrganId", "Timestamp"], &[]);
            trace.push(TraceHeader {
                organ_id: self.string(tk.one("OrganId"), &format!("{p}/OrganId")),
                timestamp: self.string(tk.one("Timestamp"), &format!("{p}/Timestamp")),
            });
        }
        let business = k
            .one("Bussiness")
            .map(|b| self.business(b, &format!("{path}/Bussiness")));
        (trace, business)
    }

    fn business(&mut self, el: &Element, p: &str) -> Business {
        let k = self.children(
            el,
            p,
            &[
                "DocumentId",
                "BussinessDocType",
                "BussinessDocReason",
                "Paper",
                "BussinessDocumentInfo",
                "ReplacementInfoList",
                "StaffInfo",
            ],
            &[],
        );
        let mut b = Business {
            r#type: self
                .typed(
                    k.one("BussinessDocType"),
                    &format!("{p}/BussinessDocType"),
                    |t| t.trim().parse::<i32>().ok(),
                    |t, v| v.to_string() == t,
                )
                .unwrap_or(0),
            reason: self.string(
                k.one("BussinessDocReason"),
                &format!("{p}/BussinessDocReason"),
            ),
            replaces: self.string(k.one("DocumentId"), &format!("{p}/DocumentId")),
            paper: self.string(k.one("Paper"), &format!("{p}/Paper")),
            staff: self.staff(k.one("StaffInfo"), &format!("{p}/StaffInfo")),
            ..Default::default()
        };
        if let Some(di) = k.one("BussinessDocumentInfo") {
            let dp = format!("{p}/BussinessDocumentInfo");
            let dk = self.children(
                di,
                &dp,
                &["DocumentInfo", "DocumentReceiver", "ReceiverList"],
                &[],
            );
            let mut info = BusinessDocumentInfo {
                document_info: self.string(dk.one("DocumentInfo"), &format!("{dp}/DocumentInfo")),
                document_receiver: self.string(
                    dk.one("DocumentReceiver"),
                    &format!("{dp}/DocumentReceiver"),
                ),
                receivers: Vec::new(),
            };
            if let Some(rl) = dk.one("ReceiverList") {
                let rp = format!("{dp}/ReceiverList");
                let rk = self.children(rl, &rp, &[], &["Receiver"]);
                for (i, r) in rk.many("Receiver").iter().enumerate() {
                    let ip = format!("{rp}/Receiver[{}]", i + 1);
                    let ik = self.children(r, &ip, &["OrganId", "ReceiverType"], &[]);
                    info.receivers.push(BusinessReceiver {
                        organ_id: self.string(ik.one("OrganId"), &format!("{ip}/OrganId")),
                        receiver_type: self
                            .string(ik.one("ReceiverType"), &format!("{ip}/ReceiverType")),
                    });
                }
            }
            b.document_info = Some(info);
        }
        if let Some(rl) = k.one("ReplacementInfoList") {
            let rp = format!("{p}/ReplacementInfoList");
            let rk = self.children(rl, &rp, &[], &["ReplacementInfo"]);
            for (i, r) in rk.many("ReplacementInfo").iter().enumerate() {
                let ip = format!("{rp}/ReplacementInfo[{}]", i + 1);
                let ik = self.children(r, &ip, &["DocumentId", "OrganIdList"], &[]);
                b.replacements.push(Replacement {
                    document_id: self.string(ik.one("DocumentId"), &format!("{ip}/DocumentId")),
                    organ_ids: self.strings(
                        ik.one("OrganIdList"),
                        &format!("{ip}/OrganIdList"),
                        "OrganId",
                    ),
                });
            }
        }
        b
    }
}

fn child<'a>(el: &'a Element, local: &str) -> Option<&'a Element> {
    el.elements().find(|e| e.is(local))
}

fn build(
    raw: Raw,
    options: &DecodeOptions,
    sha256: [u8; 32],
    size: u64,
    notices: &mut Vec<Problem>,
) -> Result<Package> {
    let Raw {
        envelope,
        exts,
        attachments,
        attachment_block,
    } = raw;
    let Some(env_el) = envelope else {
        return Err(Error::malformed(
            "the package has no edXMLEnvelope element: there is no header to read",
        ));
    };
    let header = child(&env_el, "edXMLHeader")
        .ok_or_else(|| Error::malformed("the package has no edXMLEnvelope/edXMLHeader element"))?;
    let mh = child(header, "MessageHeader")
        .ok_or_else(|| Error::malformed("the package has no edXMLHeader/MessageHeader element"))?;
    let status = child(mh, "StatusCode").is_some();
    if status && !attachments.is_empty() {
        return Err(Error::malformed(format!(
            "the package is a status notice (it has a StatusCode) but carries {} attachment(s); a status carries none",
            attachments.len()
        )));
    }

    let mut m = Mapper { exts };
    const ENV: &str = "/edXML/edXMLEnvelope";
    const HEADER: &str = "/edXML/edXMLEnvelope/edXMLHeader";
    const MH: &str = "/edXML/edXMLEnvelope/edXMLHeader/MessageHeader";
    let ones: &[&'static str] = if status {
        &["edXMLHeader"]
    } else {
        &["edXMLHeader", "edXMLBody"]
    };
    let ek = m.children(&env_el, ENV, ones, &[]);
    let hk = m.children(header, HEADER, &["MessageHeader", "TraceHeaderList"], &[]);
    let (trace, business) = match hk.one("TraceHeaderList") {
        Some(t) => m.trace(t, &format!("{HEADER}/TraceHeaderList"), status),
        None => (Vec::new(), None),
    };
    let signature = header
        .elements()
        .find(|e| e.local == "Signature")
        .map(signature_info);
    if status && attachment_block {
        // An empty AttachmentEncoded in a status is not written back.
        notices.push(Problem::new(
            "/edXML/AttachmentEncoded",
            "a status package has an AttachmentEncoded element; it was dropped",
        ));
    }

    let mut envelope = Envelope {
        message_id: options
            .message_id
            .clone()
            .unwrap_or_else(|| format!("edxml-{}", hex::encode(sha256))),
        trace_headers: trace,
        ..Default::default()
    };
    let mut infos = Vec::new();
    if status {
        let (from, sender, to, recipients, st) = m.status(mh, MH);
        envelope.created_at = st.at;
        envelope.from = from;
        envelope.sender = sender;
        envelope.to = to;
        envelope.recipients = recipients;
        envelope.body = Some(Body::Status(st));
    } else {
        let (from, sender, to, recipients, mut doc) = m.document(mh, MH);
        doc.business = business;
        let refs = match ek.one("edXMLBody") {
            Some(body) => manifest(&mut m, body)?,
            None => Vec::new(),
        };
        let (atts, info) = attachment_refs(&mut m, attachments, refs)?;
        doc.attachments = atts;
        infos = info;
        envelope.from = from;
        envelope.sender = sender;
        envelope.to = to;
        envelope.recipients = recipients;
        envelope.body = Some(Body::Document(doc));
    }
    if let Some(first) = envelope.trace_headers.first() {
        envelope.created_at = any_timestamp(&first.timestamp).map(to_proto);
    } else if !status {
        envelope.created_at = None;
    }
    let mut exts = m.exts;
    sort_extensions(&mut exts);
    envelope.extensions = exts;
    Ok(Package {
        envelope,
        attachments: infos,
        signature,
        notices: Vec::new(),
        sha256,
        size,
    })
}

/// The order extensions are kept in, so that a package decodes to the same
/// envelope however its elements were ordered.
pub(crate) fn sort_extensions(exts: &mut [XmlExtension]) {
    exts.sort_by(|a, b| a.path.cmp(&b.path));
}

/// The manifest's references, each with its element (mapped later, once
/// it is known which attachment it describes).
fn manifest<'a>(
    m: &mut Mapper,
    body: &'a Element,
) -> Result<Vec<(&'a Element, ManifestReference)>> {
    const BODY: &str = "/edXML/edXMLEnvelope/edXMLBody";
    let bk = m.children(body, BODY, &["edXMLManifest"], &[]);
    let Some(man) = bk.one("edXMLManifest") else {
        return Ok(Vec::new());
    };
    let path = format!("{BODY}/edXMLManifest");
    // version="1.0" is what the encoder writes anyway.
    let attrs: Vec<Attr> = man
        .attrs
        .iter()
        .filter(|a| !(a.qname == "version" && a.raw == "1.0"))
        .cloned()
        .collect();
    attr_extensions(&attrs, &path, &mut m.exts);
    let refs = m.split(man, &path, &[], &["Reference"]).many("Reference");
    Ok(refs
        .into_iter()
        .map(|r| {
            let t = |n: &str| child(r, n).map(Element::text).unwrap_or_default();
            (
                r,
                ManifestReference {
                    content_id: t("ContentId"),
                    content_type: t("ContentType"),
                    description: t("Description"),
                    name: t("AttachmentName"),
                },
            )
        })
        .collect())
}

fn attachment_refs(
    m: &mut Mapper,
    carried: Vec<Carried>,
    refs: Vec<(&Element, ManifestReference)>,
) -> Result<(Vec<AttachmentRef>, Vec<AttachmentInfo>)> {
    // Each reference to the attachment with its ContentId, else its name.
    let mut matched: Vec<Option<usize>> = vec![None; carried.len()];
    let mut unmatched = Vec::new();
    for (ri, (_, r)) in refs.iter().enumerate() {
        let by_id = (!r.content_id.is_empty())
            .then(|| {
                carried
                    .iter()
                    .enumerate()
                    .position(|(ci, c)| matched[ci].is_none() && c.meta.content_id == r.content_id)
            })
            .flatten();
        let by_name = by_id.or_else(|| {
            (!r.name.is_empty())
                .then(|| {
                    carried.iter().enumerate().position(|(ci, c)| {
                        matched[ci].is_none()
                            && c.meta.content_id.is_empty()
                            && c.meta.name == r.name
                    })
                })
                .flatten()
        });
        match by_name {
            Some(ci) => matched[ci] = Some(ri),
            None => unmatched.push(ri),
        }
    }
    if let Some(&ri) = unmatched.first() {
        let r = &refs[ri].1;
        return Err(Error::malformed(format!(
            "the manifest names the attachment {} but the package does not carry it (no Attachment with that ContentId in AttachmentEncoded)",
            describe_ref(&r.content_id, &r.name)
        )));
    }
    if let Some(ci) = matched.iter().position(Option::is_none) {
        let c = &carried[ci].meta;
        return Err(Error::malformed(format!(
            "attachment {} ({}) is not in the manifest (edXMLBody/edXMLManifest has no Reference to it)",
            ci + 1,
            describe_ref(&c.content_id, &c.name)
        )));
    }
    let mut atts = Vec::new();
    let mut infos = Vec::new();
    for (ci, c) in carried.into_iter().enumerate() {
        let Some((el, r)) = matched[ci].and_then(|ri| refs.get(ri)) else {
            continue;
        };
        let path = format!(
            "/edXML/edXMLEnvelope/edXMLBody/edXMLManifest/Reference[{}]",
            ci + 1
        );
        let k = m.children(
            el,
            &path,
            &["ContentId", "ContentType", "Description", "AttachmentName"],
            &[],
        );
        for n in ["ContentId", "ContentType", "Description", "AttachmentName"] {
            m.string(k.one(n), &format!("{path}/{n}"));
        }
        let own = ManifestReference {
            content_id: c.meta.content_id.clone(),
            content_type: c.meta.content_type.clone(),
            description: c.meta.description.clone(),
            name: c.meta.name.clone(),
        };
        atts.push(AttachmentRef {
            name: c.meta.name,
            content_type: c.meta.content_type,
            size: c.size,
            sha256: Bytes::copy_from_slice(&c.sha256),
            description: c.meta.description,
            content_id: c.meta.content_id,
            manifest: (*r != own).then(|| r.clone()),
        });
        infos.push(AttachmentInfo {
            is_zip: c.is_zip,
            zip_entry: None,
        });
    }
    Ok((atts, infos))
}

fn describe_ref(content_id: &str, name: &str) -> String {
    match (content_id.is_empty(), name.is_empty()) {
        (false, false) => format!("{content_id} ({name})"),
        (false, true) => content_id.to_owned(),
        (true, false) => name.to_owned(),
        (true, true) => "without ContentId or name".to_owned(),
    }
}

fn signature_info(sig: &Element) -> SignatureInfo {
    let mut info = SignatureInfo::default();
    let mut stack = vec![sig];
    while let Some(e) = stack.pop() {
        if e.local == "X509Certificate" {
            let text: String = e.text().chars().filter(|c| !c.is_whitespace()).collect();
            match engine().decode(text.as_bytes()) {
                Ok(der) => match x509_parser::parse_x509_certificate(&der) {
                    Ok((_, cert)) => info.certificates.push(Certificate {
                        subject: cert.subject().to_string(),
                        issuer: cert.issuer().to_string(),
                        serial: cert.raw_serial_as_string(),
                        not_before: cert.validity().not_before.to_datetime(),
                        not_after: cert.validity().not_after.to_datetime(),
                        der,
                    }),
                    Err(e) => info.unreadable.push(format!(
                        "the X509Certificate in the Signature is not a readable certificate ({e})"
                    )),
                },
                Err(_) => info.unreadable.push(format!(
                    "the X509Certificate in the Signature is not base64 ({} characters)",
                    text.len()
                )),
            }
        }
        stack.extend(e.elements().collect::<Vec<_>>().into_iter().rev());
    }
    info
}

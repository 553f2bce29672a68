//! [`Envelope`] → edXML package, attachments streamed from a source.

use std::collections::HashMap;
use std::io::{BufWriter, Read, Write};

use base64::Engine as _;
use lienthong_proto::v1::{
    AttachmentRef, Business, Document, Envelope, Organization, ResponseFor, Staff, StatusNotice,
    TraceHeader, XmlExtension, envelope::Body,
};
use lienthong_types::error::{Error, Reason, Result};
use ring::digest;
use time::OffsetDateTime;

use crate::sink::AttachmentSource;
use crate::values::{edxml_date, format_timestamp, from_proto};
use crate::xml::{NAMESPACE, escape_text, is_xml_char};

#[derive(Debug, Clone, Default)]
pub struct EncodeOptions {
    /// One more TraceHeader after the envelope's own: the gateway's hop when
    /// it delivers (see [`trace_header`]).
    pub trace: Option<TraceHeader>,
}

/// A TraceHeader for `organ_id` at `at`, written the edXML way.
pub fn trace_header(organ_id: &str, at: OffsetDateTime) -> TraceHeader {
    TraceHeader {
        organ_id: organ_id.to_owned(),
        timestamp: format_timestamp(at),
    }
}

/// Writes `envelope` as an edXML package, in the default namespace and the
/// element order of the national SDK, attachment bytes read from `source`
/// and base64-encoded a block at a time.
///
/// Every standard element of the containers it writes is written, empty
/// when the envelope has no value; `extensions` go back where their path
/// says. For an envelope [`crate::decode`] produced, decoding the output
/// gives the same envelope (the `message_id` aside, which edXML does not
/// carry: pass it in [`crate::DecodeOptions::message_id`]). Other envelopes
/// come back normalized: `created_at` becomes a first TraceHeader of the
/// sender when there is no trace (and is read back from it to the second),
/// `recipients` are padded to one per `to`, a status's `to` defaults to the
/// agency that sent the document, a manifest entry that says what the
/// attachment says is dropped.
///
/// Refuses (`MALFORMED`) a value holding a character XML cannot carry and an
/// extension that is not well-formed; `DIGEST_MISMATCH` when an
/// attachment's bytes do not match its size and SHA-256.
pub fn encode<W: Write>(
    envelope: &Envelope,
    source: &mut dyn AttachmentSource,
    out: W,
    options: &EncodeOptions,
) -> Result<()> {
    for e in &envelope.extensions {
        check_fragment(e)?;
    }
    let mut w = Writer {
        out: BufWriter::with_capacity(64 * 1024, out),
        exts: Exts::new(&envelope.extensions),
        depth: 0,
        bare: false,
    };
    w.raw("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n")?;
    w.open("edXML", "/edXML", &[("xmlns", NAMESPACE)])?;
    w.open("edXMLEnvelope", "/edXML/edXMLEnvelope", &[])?;
    w.open("edXMLHeader", "/edXML/edXMLEnvelope/edXMLHeader", &[])?;
    const MH: &str = "/edXML/edXMLEnvelope/edXMLHeader/MessageHeader";
    w.open("MessageHeader", MH, &[])?;
    let status = match &envelope.body {
        Some(Body::Status(st)) => {
            w.status(envelope, st, MH)?;
            Some(st)
        }
        Some(Body::Document(doc)) => {
            w.document(envelope, doc, MH)?;
            None
        }
        None => {
            w.document(envelope, &Document::default(), MH)?;
            None
        }
    };
    w.close("MessageHeader", MH)?;

    let mut trace: Vec<TraceHeader> = envelope.trace_headers.clone();
    // edXML has no creation time but the first hop's: an envelope's
    // created_at becomes the sender's TraceHeader (a status's own Timestamp
    // says it already when it is the same moment).
    if trace.is_empty()
        && let Some(created) = envelope.created_at.as_ref().and_then(from_proto)
        && status.is_none_or(|st| st.at.as_ref().and_then(from_proto) != Some(created))
    {
        trace.push(trace_header(&envelope.from, created));
    }
    trace.extend(options.trace.clone());
    const THL: &str = "/edXML/edXMLEnvelope/edXMLHeader/TraceHeaderList";
    let business = match &envelope.body {
        Some(Body::Document(d)) => d.business.as_ref(),
        _ => None,
    };
    if status.is_none() || !trace.is_empty() || w.exts.has_under(THL) {
        w.open("TraceHeaderList", THL, &[])?;
        for (i, t) in trace.iter().enumerate() {
            let p = format!("{THL}/TraceHeader[{}]", i + 1);
            w.open("TraceHeader", &p, &[])?;
            w.leaf("OrganId", &format!("{p}/OrganId"), &t.organ_id)?;
            w.leaf("Timestamp", &format!("{p}/Timestamp"), &t.timestamp)?;
            w.close("TraceHeader", &p)?;
        }
        if status.is_none() && (business.is_some() || w.exts.has_under(&format!("{THL}/Bussiness")))
        {
            w.business(
                business.cloned().unwrap_or_default(),
                &format!("{THL}/Bussiness"),
            )?;
        }
        w.close("TraceHeaderList", THL)?;
    }
    w.close("edXMLHeader", "/edXML/edXMLEnvelope/edXMLHeader")?;

    if let Some(Body::Document(doc)) = &envelope.body {
        w.manifest(&doc.attachments)?;
    } else if status.is_none() {
        w.manifest(&[])?;
    }
    w.close("edXMLEnvelope", "/edXML/edXMLEnvelope")?;
    if status.is_none() {
        let atts = match &envelope.body {
            Some(Body::Document(doc)) => doc.attachments.as_slice(),
            _ => &[],
        };
        w.attachments(atts, source)?;
    }
    w.close("edXML", "/edXML")?;
    w.out
        .flush()
        .map_err(|e| Error::unavailable("the edXML output", e))?;
    Ok(())
}

/// [`encode`] into memory.
pub fn encode_to_vec(
    envelope: &Envelope,
    source: &mut dyn AttachmentSource,
    options: &EncodeOptions,
) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    encode(envelope, source, &mut out, options)?;
    Ok(out)
}

/// Splits a path at its last step; braces (`{uri}Name`) may hold slashes.
pub(crate) fn split_last(path: &str) -> (&str, &str) {
    let mut depth = 0usize;
    let mut cut = None;
    for (i, c) in path.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            '/' if depth == 0 => cut = Some(i),
            _ => {}
        }
    }
    match cut {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => ("", path),
    }
}

/// An extension must be what its path says it is, so that the package
/// written with it stays well-formed.
fn check_fragment(e: &XmlExtension) -> Result<()> {
    let (_, last) = split_last(&e.path);
    let bad = |why: &str| {
        Error::malformed(format!(
            "the extension at {} is not usable: {why}",
            e.path.chars().take(200).collect::<String>()
        ))
    };
    if last.starts_with('@') {
        let ok = e.xml.split_once('=').is_some_and(|(name, value)| {
            let q = value.chars().next();
            !name.is_empty()
                && name.chars().all(|c| {
                    c.is_alphanumeric() || matches!(c, '_' | ':' | '-' | '.') || !c.is_ascii()
                })
                && matches!(q, Some('"') | Some('\''))
                && value.len() >= 2
                && value.ends_with(q.unwrap_or('"'))
                && value[1..value.len() - 1]
                    .chars()
                    .all(|c| Some(c) != q && c != '<' && is_xml_char(c))
        });
        return if ok {
            Ok(())
        } else {
            Err(bad("an attribute must be written name=\"value\""))
        };
    }
    // Element or text: it must parse on its own, with balanced elements and
    // no DOCTYPE.
    let wrapped = format!("<x xmlns=\"{NAMESPACE}\">{}</x>", e.xml);
    let mut r = quick_xml::Reader::from_str(&wrapped);
    r.config_mut().check_end_names = true;
    let mut depth = 0i64;
    loop {
        match r.read_event() {
            Ok(quick_xml::events::Event::Start(_)) => depth += 1,
            Ok(quick_xml::events::Event::End(_)) => depth -= 1,
            Ok(quick_xml::events::Event::DocType(_)) | Ok(quick_xml::events::Event::Decl(_)) => {
                return Err(bad("it holds a declaration"));
            }
            Ok(quick_xml::events::Event::GeneralRef(g)) => {
                if crate::xml::resolve_reference(&g).is_none() {
                    return Err(bad("it refers to an undeclared entity"));
                }
            }
            Ok(quick_xml::events::Event::Eof) => break,
            Ok(_) => {}
            Err(err) => return Err(bad(&format!("it is not well-formed XML ({err})"))),
        }
    }
    if depth != 0 {
        return Err(bad("its elements are not balanced"));
    }
    Ok(())
}

/// The envelope's extensions by where they go; each is written once.
struct Exts<'a> {
    list: &'a [XmlExtension],
    by_parent: HashMap<&'a str, Vec<usize>>,
    used: Vec<bool>,
}

impl<'a> Exts<'a> {
    fn new(list: &'a [XmlExtension]) -> Self {
        let mut by_parent: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, e) in list.iter().enumerate() {
            by_parent.entry(split_last(&e.path).0).or_default().push(i);
        }
        Exts {
            list,
            by_parent,
            used: vec![false; list.len()],
        }
    }

    fn take(&mut self, parent: &str, pick: impl Fn(&str) -> bool) -> Vec<&'a XmlExtension> {
        let Some(idx) = self.by_parent.get(parent) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for &i in idx {
            let Some(e) = self.list.get(i) else { continue };
            if !self.used[i] && pick(split_last(&e.path).1) {
                self.used[i] = true;
                out.push(e);
            }
        }
        out
    }

    fn attrs(&mut self, path: &str) -> Vec<&'a XmlExtension> {
        self.take(path, |last| last.starts_with('@'))
    }

    fn override_of(&mut self, path: &str) -> Option<&'a XmlExtension> {
        let (parent, name) = split_last(path);
        self.take(parent, |last| last == name).into_iter().next()
    }

    fn rest(&mut self, path: &str) -> Vec<&'a XmlExtension> {
        self.take(path, |last| !last.starts_with('@'))
    }

    fn has_under(&self, path: &str) -> bool {
        self.list.iter().any(|e| {
            e.path
                .strip_prefix(path)
                .is_some_and(|rest| rest.starts_with('/'))
        })
    }
}

struct Writer<'a, W: Write> {
    out: BufWriter<W>,
    exts: Exts<'a>,
    depth: usize,
    /// The last start tag written has no child yet: an element without
    /// children is closed on its own line, holding no whitespace.
    bare: bool,
}

const INDENT: &str = "                                                                ";

fn checked<'v>(path: &str, value: &'v str) -> Result<&'v str> {
    match value.chars().find(|c| !is_xml_char(*c)) {
        Some(c) => Err(Error::malformed(format!(
            "{path} holds the character U+{:04X}, which XML cannot carry",
            c as u32
        ))),
        None => Ok(value),
    }
}

impl<W: Write> Writer<'_, W> {
    fn raw(&mut self, s: &str) -> Result<()> {
        self.out
            .write_all(s.as_bytes())
            .map_err(|e| Error::unavailable("the edXML output", e))
    }

    fn indent(&mut self) -> Result<()> {
        if self.bare {
            self.bare = false;
            self.raw("\n")?;
        }
        let n = (self.depth * 2).min(INDENT.len());
        self.raw(&INDENT[..n])
    }

    fn start_tag(&mut self, name: &str, path: &str, own: &[(&str, &str)]) -> Result<String> {
        let mut tag = format!("<{name}");
        let extra = self.exts.attrs(path);
        for (k, v) in own {
            // An extension of the same attribute wins: it is what came in.
            if extra
                .iter()
                .any(|e| split_last(&e.path).1.strip_prefix('@') == Some(*k))
            {
                continue;
            }
            tag.push_str(&format!(" {k}=\"{}\"", crate::xml::escape_attr(v)));
        }
        for e in extra {
            tag.push(' ');
            tag.push_str(&e.xml);
        }
        Ok(tag)
    }

    fn open(&mut self, name: &str, path: &str, own: &[(&str, &str)]) -> Result<()> {
        let tag = self.start_tag(name, path, own)?;
        self.indent()?;
        self.raw(&tag)?;
        self.raw(">")?;
        self.bare = true;
        self.depth += 1;
        Ok(())
    }

    /// Writes what extensions add to the element, then closes it.
    fn close(&mut self, name: &str, path: &str) -> Result<()> {
        for e in self.exts.rest(path) {
            if split_last(&e.path).1 == "text()" {
                self.bare = false;
                self.raw(&e.xml)?;
            } else {
                self.indent()?;
                self.raw(&e.xml)?;
                self.raw("\n")?;
            }
        }
        self.depth -= 1;
        if self.bare {
            self.bare = false;
        } else {
            self.indent()?;
        }
        self.raw(&format!("</{name}>\n"))
    }

    fn leaf(&mut self, name: &str, path: &str, value: &str) -> Result<()> {
        if let Some(e) = self.exts.override_of(path) {
            self.indent()?;
            self.raw(&e.xml)?;
            return self.raw("\n");
        }
        let tag = self.start_tag(name, path, &[])?;
        let value = escape_text(checked(path, value)?);
        self.indent()?;
        self.raw(&format!("{tag}>{value}</{name}>\n"))
    }

    fn organization(
        &mut self,
        name: &str,
        path: &str,
        organ_id: &str,
        org: Option<&Organization>,
    ) -> Result<()> {
        self.open(name, path, &[])?;
        self.leaf("OrganId", &format!("{path}/OrganId"), organ_id)?;
        if let Some(o) = org {
            for (n, v) in [
                ("OrganizationInCharge", &o.organization_in_charge),
                ("OrganName", &o.organ_name),
                ("OrganAdd", &o.organ_add),
                ("Email", &o.email),
                ("Telephone", &o.telephone),
                ("Fax", &o.fax),
                ("Website", &o.website),
            ] {
                self.leaf(n, &format!("{path}/{n}"), v)?;
            }
        }
        self.close(name, path)
    }

    fn recipients(&mut self, env: &Envelope, path: &str) -> Result<()> {
        for (i, id) in env.to.iter().enumerate() {
            let org = if env.recipients.is_empty() {
                None
            } else {
                Some(env.recipients.get(i).cloned().unwrap_or_default())
            };
            self.organization("To", &format!("{path}/To[{}]", i + 1), id, org.as_ref())?;
        }
        Ok(())
    }

    fn document(&mut self, env: &Envelope, doc: &Document, p: &str) -> Result<()> {
        self.organization("From", &format!("{p}/From"), &env.from, env.sender.as_ref())?;
        self.recipients(env, p)?;
        self.leaf("DocumentId", &format!("{p}/DocumentId"), &doc.document_id)?;
        let c = format!("{p}/Code");
        self.open("Code", &c, &[])?;
        self.leaf("CodeNumber", &format!("{c}/CodeNumber"), &doc.code_number)?;
        self.leaf(
            "CodeNotation",
            &format!("{c}/CodeNotation"),
            &doc.code_notation,
        )?;
        self.close("Code", &c)?;
        let c = format!("{p}/PromulgationInfo");
        self.open("PromulgationInfo", &c, &[])?;
        self.leaf("Place", &format!("{c}/Place"), &doc.promulgation_place)?;
        self.leaf(
            "PromulgationDate",
            &format!("{c}/PromulgationDate"),
            &edxml_date(&doc.promulgation_date),
        )?;
        self.close("PromulgationInfo", &c)?;
        let c = format!("{p}/DocumentType");
        self.open("DocumentType", &c, &[])?;
        self.leaf("Type", &format!("{c}/Type"), &doc.r#type.to_string())?;
        self.leaf(
            "TypeDetail",
            &format!("{c}/TypeDetail"),
            &doc.type_detail.to_string(),
        )?;
        self.leaf("TypeName", &format!("{c}/TypeName"), &doc.type_name)?;
        self.close("DocumentType", &c)?;
        self.leaf("Subject", &format!("{p}/Subject"), &doc.subject)?;
        self.leaf("Content", &format!("{p}/Content"), &doc.content)?;
        let c = format!("{p}/SignerInfo");
        if doc.signer.is_some() || self.exts.has_under(&c) {
            let s = doc.signer.clone().unwrap_or_default();
            self.open("SignerInfo", &c, &[])?;
            self.leaf("Competence", &format!("{c}/Competence"), &s.competence)?;
            self.leaf("Position", &format!("{c}/Position"), &s.position)?;
            self.leaf("FullName", &format!("{c}/FullName"), &s.full_name)?;
            self.close("SignerInfo", &c)?;
        }
        self.leaf(
            "DueDate",
            &format!("{p}/DueDate"),
            &edxml_date(&doc.due_date),
        )?;
        let c = format!("{p}/OtherInfo");
        self.open("OtherInfo", &c, &[])?;
        self.leaf(
            "Priority",
            &format!("{c}/Priority"),
            &doc.priority.to_string(),
        )?;
        self.leaf(
            "SphereOfPromulgation",
            &format!("{c}/SphereOfPromulgation"),
            &doc.sphere_of_promulgation,
        )?;
        self.leaf(
            "TyperNotation",
            &format!("{c}/TyperNotation"),
            &doc.typer_notation,
        )?;
        self.leaf(
            "PromulgationAmount",
            &format!("{c}/PromulgationAmount"),
            &doc.promulgation_amount.to_string(),
        )?;
        self.leaf(
            "PageAmount",
            &format!("{c}/PageAmount"),
            &doc.page_amount.to_string(),
        )?;
        self.leaf(
            "Direction",
            &format!("{c}/Direction"),
            if doc.direction { "true" } else { "false" },
        )?;
        self.list(
            "Appendixes",
            &format!("{c}/Appendixes"),
            "Appendix",
            &doc.appendixes,
        )?;
        self.close("OtherInfo", &c)?;
        for (i, r) in doc.response_for.iter().enumerate() {
            self.response_for(r, &format!("{p}/ResponseFor[{}]", i + 1))?;
        }
        self.leaf(
            "SteeringType",
            &format!("{p}/SteeringType"),
            &doc.steering_type.to_string(),
        )?;
        self.list(
            "ToPlaces",
            &format!("{p}/ToPlaces"),
            "Place",
            &doc.to_places,
        )
    }

    fn list(&mut self, name: &str, path: &str, item: &str, values: &[String]) -> Result<()> {
        self.open(name, path, &[])?;
        for (i, v) in values.iter().enumerate() {
            self.leaf(item, &format!("{path}/{item}[{}]", i + 1), v)?;
        }
        self.close(name, path)
    }

    fn response_for(&mut self, r: &ResponseFor, p: &str) -> Result<()> {
        self.open("ResponseFor", p, &[])?;
        self.leaf("OrganId", &format!("{p}/OrganId"), &r.organ_id)?;
        self.leaf("Code", &format!("{p}/Code"), &r.code)?;
        self.leaf(
            "PromulgationDate",
            &format!("{p}/PromulgationDate"),
            &edxml_date(&r.promulgation_date),
        )?;
        self.leaf("DocumentId", &format!("{p}/DocumentId"), &r.document_id)?;
        self.close("ResponseFor", p)
    }

    fn staff(&mut self, staff: Option<&Staff>, p: &str) -> Result<()> {
        if staff.is_none() && !self.exts.has_under(p) {
            return Ok(());
        }
        let s = staff.cloned().unwrap_or_default();
        self.open("StaffInfo", p, &[])?;
        self.leaf("Department", &format!("{p}/Department"), &s.department)?;
        self.leaf("Staff", &format!("{p}/Staff"), &s.name)?;
        self.leaf("Email", &format!("{p}/Email"), &s.email)?;
        self.leaf("Mobile", &format!("{p}/Mobile"), &s.mobile)?;
        self.close("StaffInfo", p)
    }

    fn status(&mut self, env: &Envelope, st: &StatusNotice, p: &str) -> Result<()> {
        self.organization("From", &format!("{p}/From"), &env.from, env.sender.as_ref())?;
        let implied: Vec<String> = if st.document_from.is_empty() {
            Vec::new()
        } else {
            vec![st.document_from.clone()]
        };
        if !env.recipients.is_empty() || env.to != implied {
            self.recipients(env, p)?;
        }
        self.response_for(
            &ResponseFor {
                organ_id: st.document_from.clone(),
                code: st.document_code.clone(),
                promulgation_date: st.document_promulgation_date.clone(),
                document_id: st.document_id.clone(),
            },
            &format!("{p}/ResponseFor"),
        )?;
        self.staff(st.staff.as_ref(), &format!("{p}/StaffInfo"))?;
        self.leaf("StatusCode", &format!("{p}/StatusCode"), &st.code)?;
        self.leaf("Description", &format!("{p}/Description"), &st.description)?;
        let at = st
            .at
            .as_ref()
            .and_then(from_proto)
            .map(format_timestamp)
            .unwrap_or_default();
        self.leaf("Timestamp", &format!("{p}/Timestamp"), &at)
    }

    fn business(&mut self, b: Business, p: &str) -> Result<()> {
        self.open("Bussiness", p, &[])?;
        self.leaf("DocumentId", &format!("{p}/DocumentId"), &b.replaces)?;
        self.leaf(
            "BussinessDocType",
            &format!("{p}/BussinessDocType"),
            &b.r#type.to_string(),
        )?;
        self.leaf(
            "BussinessDocReason",
            &format!("{p}/BussinessDocReason"),
            &b.reason,
        )?;
        self.leaf("Paper", &format!("{p}/Paper"), &b.paper)?;
        let c = format!("{p}/BussinessDocumentInfo");
        if b.document_info.is_some() || self.exts.has_under(&c) {
            let info = b.document_info.clone().unwrap_or_default();
            self.open("BussinessDocumentInfo", &c, &[])?;
            self.leaf(
                "DocumentInfo",
                &format!("{c}/DocumentInfo"),
                &info.document_info,
            )?;
            self.leaf(
                "DocumentReceiver",
                &format!("{c}/DocumentReceiver"),
                &info.document_receiver,
            )?;
            let rl = format!("{c}/ReceiverList");
            self.open("ReceiverList", &rl, &[])?;
            for (i, r) in info.receivers.iter().enumerate() {
                let rp = format!("{rl}/Receiver[{}]", i + 1);
                self.open("Receiver", &rp, &[])?;
                self.leaf("OrganId", &format!("{rp}/OrganId"), &r.organ_id)?;
                self.leaf(
                    "ReceiverType",
                    &format!("{rp}/ReceiverType"),
                    &r.receiver_type,
                )?;
                self.close("Receiver", &rp)?;
            }
            self.close("ReceiverList", &rl)?;
            self.close("BussinessDocumentInfo", &c)?;
        }
        let rl = format!("{p}/ReplacementInfoList");
        self.open("ReplacementInfoList", &rl, &[])?;
        for (i, r) in b.replacements.iter().enumerate() {
            let rp = format!("{rl}/ReplacementInfo[{}]", i + 1);
            self.open("ReplacementInfo", &rp, &[])?;
            self.leaf("DocumentId", &format!("{rp}/DocumentId"), &r.document_id)?;
            self.list(
                "OrganIdList",
                &format!("{rp}/OrganIdList"),
                "OrganId",
                &r.organ_ids,
            )?;
            self.close("ReplacementInfo", &rp)?;
        }
        self.close("ReplacementInfoList", &rl)?;
        self.staff(b.staff.as_ref(), &format!("{p}/StaffInfo"))?;
        self.close("Bussiness", p)
    }

    fn manifest(&mut self, atts: &[AttachmentRef]) -> Result<()> {
        const BODY: &str = "/edXML/edXMLEnvelope/edXMLBody";
        const MAN: &str = "/edXML/edXMLEnvelope/edXMLBody/edXMLManifest";
        self.open("edXMLBody", BODY, &[])?;
        self.open("edXMLManifest", MAN, &[("version", "1.0")])?;
        for (i, a) in atts.iter().enumerate() {
            let p = format!("{MAN}/Reference[{}]", i + 1);
            let (cid, ctype, desc, name) = match &a.manifest {
                Some(m) => (&m.content_id, &m.content_type, &m.description, &m.name),
                None => (&a.content_id, &a.content_type, &a.description, &a.name),
            };
            self.open("Reference", &p, &[])?;
            self.leaf("ContentId", &format!("{p}/ContentId"), cid)?;
            self.leaf("ContentType", &format!("{p}/ContentType"), ctype)?;
            self.leaf("Description", &format!("{p}/Description"), desc)?;
            self.leaf("AttachmentName", &format!("{p}/AttachmentName"), name)?;
            self.close("Reference", &p)?;
        }
        self.close("edXMLManifest", MAN)?;
        self.close("edXMLBody", BODY)
    }

    fn attachments(
        &mut self,
        atts: &[AttachmentRef],
        source: &mut dyn AttachmentSource,
    ) -> Result<()> {
        const AE: &str = "/edXML/AttachmentEncoded";
        self.open("AttachmentEncoded", AE, &[])?;
        for (i, a) in atts.iter().enumerate() {
            let p = format!("{AE}/Attachment[{}]", i + 1);
            self.open("Attachment", &p, &[])?;
            self.leaf("ContentId", &format!("{p}/ContentId"), &a.content_id)?;
            self.leaf("AttachmentName", &format!("{p}/AttachmentName"), &a.name)?;
            self.leaf("Description", &format!("{p}/Description"), &a.description)?;
            self.leaf("ContentType", &format!("{p}/ContentType"), &a.content_type)?;
            let cp = format!("{p}/ContentTransferEncoded");
            let tag = self.start_tag("ContentTransferEncoded", &cp, &[])?;
            self.indent()?;
            self.raw(&tag)?;
            self.raw(">")?;
            let mut reader = source.open(i, a)?;
            self.base64(&mut reader, i, a)?;
            drop(reader);
            self.raw("</ContentTransferEncoded>\n")?;
            self.close("Attachment", &p)?;
        }
        self.close("AttachmentEncoded", AE)
    }

    fn base64(&mut self, reader: &mut dyn Read, index: usize, a: &AttachmentRef) -> Result<()> {
        // A multiple of 3, so that only the last block is padded.
        const CHUNK: usize = 48 * 1024;
        let mut buf = vec![0u8; CHUNK];
        let mut text = vec![0u8; CHUNK / 3 * 4 + 4];
        let mut ctx = digest::Context::new(&digest::SHA256);
        let mut size = 0u64;
        loop {
            let mut filled = 0;
            while filled < CHUNK {
                match reader.read(&mut buf[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        return Err(Error::unavailable(
                            &format!("attachment {index} ({})", a.name),
                            e,
                        ));
                    }
                }
            }
            if filled == 0 {
                break;
            }
            let chunk = &buf[..filled];
            ctx.update(chunk);
            size += filled as u64;
            let n = base64::engine::general_purpose::STANDARD
                .encode_slice(chunk, &mut text)
                .map_err(|e| Error::malformed(format!("base64 encoding failed: {e}")))?;
            self.out
                .write_all(&text[..n])
                .map_err(|e| Error::unavailable("the edXML output", e))?;
            if filled < CHUNK {
                break;
            }
        }
        let sha = ctx.finish();
        let size_ok = size == a.size;
        let sha_ok = a.sha256.is_empty() || a.sha256.as_ref() == sha.as_ref();
        if !size_ok || !sha_ok {
            return Err(Error::new(
                Reason::DigestMismatch,
                format!(
                    "attachment {index} ({}) has {size} bytes with SHA-256 {}, but the envelope records {} bytes with SHA-256 {}",
                    a.name,
                    hex::encode(sha.as_ref()),
                    a.size,
                    hex::encode(&a.sha256)
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_last_respects_namespace_braces() {
        assert_eq!(split_last("/a/b/c"), ("/a/b", "c"));
        assert_eq!(
            split_last("/edXML/x/{http://www.w3.org/2000/09/xmldsig#}Signature"),
            ("/edXML/x", "{http://www.w3.org/2000/09/xmldsig#}Signature")
        );
        assert_eq!(
            split_last("/a/Reference[1]/@xlink:href"),
            ("/a/Reference[1]", "@xlink:href")
        );
    }

    #[test]
    fn broken_extensions_are_refused() {
        for (path, xml) in [
            ("/edXML/Foo", "<Foo>"),
            ("/edXML/Foo", "<Foo>&lol;</Foo>"),
            ("/edXML/Foo", "<!DOCTYPE x><Foo/>"),
            ("/edXML/@a", "a=\"1\"><b"),
        ] {
            let e = XmlExtension {
                path: path.into(),
                xml: xml.into(),
            };
            assert!(check_fragment(&e).is_err(), "{xml}");
        }
        let ok = XmlExtension {
            path: "/edXML/Foo".into(),
            xml: "<Foo a=\"1\">x &amp; y<Bar/></Foo>".into(),
        };
        assert!(check_fragment(&ok).is_ok());
    }
}

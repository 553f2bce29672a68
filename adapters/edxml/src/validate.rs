//! What a package lacks under a policy, and a description for people.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use lienthong_proto::v1::{Envelope, Organization, XmlExtension, envelope::Body};
use lienthong_types::error::{Error, Result};
use lienthong_types::organ_id::{IdPolicy, OrganId};
use serde_json::{Value, json};

use crate::decode::{DecodeOptions, Problem, decode};
use crate::sink::DigestSink;
use crate::values::{
    any_date, any_timestamp, edxml_date, format_timestamp, from_proto, standard_date,
    standard_timestamp,
};
use crate::{Kind, Package, kind_of};

/// How much of QCVN 102:2016 and Decree 30/2020 a package must meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Policy {
    /// Every OrganId a `DDD.DD.DD.LNN` code, dates and timestamps in their
    /// standard form, Decree 30 lengths, the required fields present.
    #[default]
    Strict,
    /// What real producers send: test-system ids (`vxp.saas.03`), missing
    /// agency names, dates written `dd/MM/yyyy`, overlong codes. Still
    /// refused: no sender or recipient, ids that are neither codes nor test
    /// ids, dates that are not dates, unknown business types and status
    /// codes, a status that does not say what it answers.
    Lenient,
}

impl Policy {
    fn ids(self) -> IdPolicy {
        match self {
            Policy::Strict => IdPolicy::Strict,
            Policy::Lenient => IdPolicy::Lenient,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Policy::Strict => "strict",
            Policy::Lenient => "lenient",
        }
    }
}

/// The problems that refuse `package` under `policy` (none: accepted).
pub fn validate(package: &Package, policy: Policy) -> Vec<Problem> {
    let mut out = Vec::new();
    if policy == Policy::Strict {
        out.extend(package.notices.iter().cloned());
    }
    out.extend(validate_envelope(&package.envelope, policy));
    out
}

/// `Ok` when `package` is acceptable under `policy`; otherwise the
/// `MALFORMED` error listing its problems.
pub fn check(package: &Package, policy: Policy) -> Result<()> {
    let problems = validate(package, policy);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(refusal(&problems, policy))
    }
}

/// The `MALFORMED` refusal for these problems.
pub fn refusal(problems: &[Problem], policy: Policy) -> Error {
    const SHOWN: usize = 20;
    let mut msg = format!(
        "the edXML package is refused under the {} policy ({} problem{}): ",
        policy.name(),
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    let list: Vec<String> = problems
        .iter()
        .take(SHOWN)
        .map(Problem::to_string)
        .collect();
    msg.push_str(&list.join("; "));
    if problems.len() > SHOWN {
        msg.push_str(&format!("; and {} more", problems.len() - SHOWN));
    }
    Error::malformed(msg)
}

const MH: &str = "/edXML/edXMLEnvelope/edXMLHeader/MessageHeader";
const STATUS_CODES: [&str; 9] = ["01", "02", "03", "04", "05", "06", "13", "15", "16"];

/// The text of an element kept verbatim because it was not in its standard
/// form.
fn raw_of(exts: &[XmlExtension], path: &str) -> Option<String> {
    let e = exts.iter().find(|e| e.path == path)?;
    let mut r = quick_xml::Reader::from_str(&e.xml);
    let mut depth = 0;
    let mut text = String::new();
    loop {
        match r.read_event() {
            Ok(quick_xml::events::Event::Start(_)) => depth += 1,
            Ok(quick_xml::events::Event::End(_)) => depth -= 1,
            Ok(quick_xml::events::Event::Text(t)) if depth == 1 => {
                text.push_str(&t.xml10_content())
            }
            Ok(quick_xml::events::Event::CData(t)) if depth == 1 => {
                text.push_str(&t.xml10_content())
            }
            Ok(quick_xml::events::Event::GeneralRef(g)) if depth == 1 => {
                if let Some(c) = crate::xml::resolve_reference(&g) {
                    text.push(c);
                }
            }
            Ok(quick_xml::events::Event::Eof) | Err(_) => break,
            Ok(_) => {}
        }
    }
    Some(text)
}

struct Checker<'a> {
    policy: Policy,
    exts: &'a [XmlExtension],
    out: Vec<Problem>,
}

impl Checker<'_> {
    fn strict(&self) -> bool {
        self.policy == Policy::Strict
    }

    fn push(&mut self, location: impl Into<String>, message: impl Into<String>) {
        self.out.push(Problem::new(location, message));
    }

    fn organ_id(&mut self, path: &str, id: &str, what: &str) {
        if id.trim().is_empty() {
            self.push(path, format!("{what} has no OrganId"));
        } else if let Err(e) = OrganId::parse_with(id, self.policy.ids()) {
            self.push(path, e.message().to_owned());
        }
    }

    fn max_len(&mut self, path: &str, name: &str, value: &str, max: usize) {
        let n = value.chars().count();
        if self.strict() && n > max {
            self.push(
                path,
                format!("{name} is {n} characters long; Decree 30/2020 allows at most {max}"),
            );
        }
    }

    fn required(&mut self, path: &str, name: &str, value: &str) {
        if self.strict() && value.trim().is_empty() {
            self.push(path, format!("{name} is required and is missing or empty"));
        }
    }

    /// A date as the package wrote it.
    fn date(&mut self, path: &str, name: &str, iso: &str, required: bool) {
        let text = raw_of(self.exts, path).unwrap_or_else(|| edxml_date(iso));
        if text.trim().is_empty() {
            if required {
                self.required(path, name, "");
            }
            return;
        }
        if self.strict() {
            if standard_date(&text).is_none() {
                self.push(
                    path,
                    format!("{name} {text:?} is not a valid date written yyyy/MM/dd"),
                );
            }
        } else if any_date(&text).is_none() {
            self.push(
                path,
                format!("{name} {text:?} is not a date (write it yyyy/MM/dd)"),
            );
        }
    }

    fn timestamp(&mut self, path: &str, name: &str, text: &str, required: bool) {
        if text.trim().is_empty() {
            if required {
                self.required(path, name, "");
            }
            return;
        }
        if self.strict() {
            if standard_timestamp(text).is_none() {
                self.push(
                    path,
                    format!("{name} {text:?} is not a valid timestamp written yyyy/MM/dd HH:mm:ss"),
                );
            }
        } else if any_timestamp(text).is_none() {
            self.push(
                path,
                format!("{name} {text:?} is not a timestamp (write it yyyy/MM/dd HH:mm:ss)"),
            );
        }
    }

    /// A number field: `digits` the most digits Decree 30 allows.
    fn number(&mut self, path: &str, name: &str, value: u32, digits: Option<usize>) {
        if !self.strict() {
            return;
        }
        let text = raw_of(self.exts, path).unwrap_or_else(|| value.to_string());
        if text.is_empty() {
            return;
        }
        if !text.bytes().all(|b| b.is_ascii_digit()) {
            self.push(path, format!("{name} {text:?} is not a number"));
        } else if let Some(d) = digits
            && text.len() > d
        {
            self.push(
                path,
                format!(
                    "{name} {text} has {} digits; Decree 30/2020 allows at most {d}",
                    text.len()
                ),
            );
        }
    }

    fn organization(&mut self, path: &str, org: Option<&Organization>) {
        let name = org.map(|o| o.organ_name.as_str()).unwrap_or("");
        self.required(&format!("{path}/OrganName"), "OrganName", name);
        self.max_len(&format!("{path}/OrganName"), "OrganName", name, 200);
    }

    fn parties(&mut self, env: &Envelope, require_to: bool) {
        let from = format!("{MH}/From");
        self.organ_id(&format!("{from}/OrganId"), &env.from, "From");
        self.organization(&from, env.sender.as_ref());
        if require_to && env.to.is_empty() {
            self.push(format!("{MH}/To"), "the document names no recipient (To)");
        }
        for (i, id) in env.to.iter().enumerate() {
            let p = format!("{MH}/To[{}]", i + 1);
            self.organ_id(&format!("{p}/OrganId"), id, &format!("To[{}]", i + 1));
            if require_to {
                self.organization(&p, env.recipients.get(i));
            }
        }
    }

    fn trace(&mut self, env: &Envelope) {
        if !self.strict() {
            return;
        }
        for (i, t) in env.trace_headers.iter().enumerate() {
            let p = format!(
                "/edXML/edXMLEnvelope/edXMLHeader/TraceHeaderList/TraceHeader[{}]",
                i + 1
            );
            self.organ_id(
                &format!("{p}/OrganId"),
                &t.organ_id,
                &format!("TraceHeader[{}]", i + 1),
            );
            self.timestamp(&format!("{p}/Timestamp"), "Timestamp", &t.timestamp, true);
        }
    }
}

/// The problems of an envelope under `policy`, located as in its edXML form.
/// Works on envelopes that never were edXML too.
pub fn validate_envelope(env: &Envelope, policy: Policy) -> Vec<Problem> {
    let mut c = Checker {
        policy,
        exts: &env.extensions,
        out: Vec::new(),
    };
    match &env.body {
        None => c.push(MH, "the package carries neither a document nor a status"),
        Some(Body::Document(doc)) => {
            c.parties(env, true);
            c.required(&format!("{MH}/DocumentId"), "DocumentId", &doc.document_id);
            let code = format!("{MH}/Code");
            c.required(
                &format!("{code}/CodeNumber"),
                "CodeNumber",
                &doc.code_number,
            );
            c.max_len(
                &format!("{code}/CodeNumber"),
                "CodeNumber",
                &doc.code_number,
                11,
            );
            c.required(
                &format!("{code}/CodeNotation"),
                "CodeNotation",
                &doc.code_notation,
            );
            c.max_len(
                &format!("{code}/CodeNotation"),
                "CodeNotation",
                &doc.code_notation,
                30,
            );
            c.required(&format!("{MH}/Subject"), "Subject", &doc.subject);
            c.max_len(&format!("{MH}/Subject"), "Subject", &doc.subject, 500);
            c.date(
                &format!("{MH}/PromulgationInfo/PromulgationDate"),
                "PromulgationDate",
                &doc.promulgation_date,
                true,
            );
            c.date(&format!("{MH}/DueDate"), "DueDate", &doc.due_date, false);
            let dt = format!("{MH}/DocumentType");
            c.number(&format!("{dt}/Type"), "Type", doc.r#type, None);
            c.number(
                &format!("{dt}/TypeDetail"),
                "TypeDetail",
                doc.type_detail,
                None,
            );
            if let Some(s) = &doc.signer {
                let p = format!("{MH}/SignerInfo");
                c.max_len(&format!("{p}/Position"), "Position", &s.position, 100);
                c.max_len(&format!("{p}/FullName"), "FullName", &s.full_name, 50);
            }
            let oi = format!("{MH}/OtherInfo");
            c.number(&format!("{oi}/Priority"), "Priority", doc.priority, Some(1));
            c.number(
                &format!("{oi}/PageAmount"),
                "PageAmount",
                doc.page_amount,
                Some(3),
            );
            c.number(
                &format!("{oi}/PromulgationAmount"),
                "PromulgationAmount",
                doc.promulgation_amount,
                None,
            );
            c.number(
                &format!("{MH}/SteeringType"),
                "SteeringType",
                doc.steering_type,
                None,
            );
            let places: String = doc.to_places.join("\n");
            c.max_len(&format!("{MH}/ToPlaces"), "ToPlaces", &places, 1000);
            for (i, r) in doc.response_for.iter().enumerate() {
                let p = format!("{MH}/ResponseFor[{}]", i + 1);
                if !r.organ_id.is_empty() {
                    c.organ_id(
                        &format!("{p}/OrganId"),
                        &r.organ_id,
                        &format!("ResponseFor[{}]", i + 1),
                    );
                }
                c.date(
                    &format!("{p}/PromulgationDate"),
                    "PromulgationDate",
                    &r.promulgation_date,
                    false,
                );
            }
            if let Some(b) = &doc.business {
                let p =
                    "/edXML/edXMLEnvelope/edXMLHeader/TraceHeaderList/Bussiness/BussinessDocType";
                let text = raw_of(&env.extensions, p).unwrap_or_else(|| b.r#type.to_string());
                if !matches!(text.as_str(), "0" | "1" | "2" | "3") {
                    c.push(
                        p,
                        format!("BussinessDocType {text:?} is not 0 (new), 1 (recall), 2 (update) or 3 (replace)"),
                    );
                }
            }
            for (i, a) in doc.attachments.iter().enumerate() {
                let p = format!("/edXML/AttachmentEncoded/Attachment[{}]", i + 1);
                if a.name.trim().is_empty() {
                    c.push(
                        format!("{p}/AttachmentName"),
                        "the attachment has no file name",
                    );
                }
                c.max_len(
                    &format!("{p}/Description"),
                    "Description",
                    &a.description,
                    500,
                );
                c.required(&format!("{p}/ContentType"), "ContentType", &a.content_type);
            }
        }
        Some(Body::Status(st)) => {
            c.parties(env, false);
            let p = format!("{MH}/StatusCode");
            if !STATUS_CODES.contains(&st.code.as_str()) {
                c.push(
                    p,
                    format!(
                        "StatusCode {:?} is not one of {}",
                        st.code,
                        STATUS_CODES.join(", ")
                    ),
                );
            }
            let rf = format!("{MH}/ResponseFor");
            c.organ_id(&format!("{rf}/OrganId"), &st.document_from, "ResponseFor");
            if st.document_id.trim().is_empty() {
                c.push(
                    format!("{rf}/DocumentId"),
                    "the status does not say which document it answers (ResponseFor/DocumentId)",
                );
            }
            c.date(
                &format!("{rf}/PromulgationDate"),
                "PromulgationDate",
                &st.document_promulgation_date,
                false,
            );
            c.max_len(
                &format!("{MH}/Description"),
                "Description",
                &st.description,
                500,
            );
            let tp = format!("{MH}/Timestamp");
            let text = raw_of(&env.extensions, &tp).unwrap_or_else(|| {
                st.at
                    .as_ref()
                    .and_then(from_proto)
                    .map(format_timestamp)
                    .unwrap_or_default()
            });
            c.timestamp(&tp, "Timestamp", &text, true);
        }
    }
    c.trace(env);
    c.out
}

fn text_or_null(s: &str) -> Value {
    if s.is_empty() {
        Value::Null
    } else {
        Value::String(s.to_owned())
    }
}

/// One JSON object describing the package for people and scripts (the
/// `lienthong edxml inspect` output). `problems` are those of the strict
/// policy; dates are as the package writes them.
pub fn inspect_json(package: &Package) -> Value {
    let env = &package.envelope;
    let attachments: Vec<Value> = match &env.body {
        Some(Body::Document(d)) => d
            .attachments
            .iter()
            .map(|a| {
                json!({
                    "name": a.name,
                    "content_type": a.content_type,
                    "size": a.size,
                    "sha256": hex::encode(&a.sha256),
                })
            })
            .collect(),
        _ => Vec::new(),
    };
    let trace: Vec<Value> = env
        .trace_headers
        .iter()
        .map(|t| json!({"organ_id": t.organ_id, "timestamp": t.timestamp}))
        .collect();
    let problems: Vec<String> = validate(package, Policy::Strict)
        .iter()
        .map(Problem::to_string)
        .collect();
    let (
        document_id,
        code_number,
        code_notation,
        promulgation_date,
        subject,
        business_type,
        status_code,
    ) = match &env.body {
        Some(Body::Document(d)) => {
            let date = raw_of(
                &env.extensions,
                &format!("{MH}/PromulgationInfo/PromulgationDate"),
            )
            .unwrap_or_else(|| edxml_date(&d.promulgation_date));
            let bt_path =
                "/edXML/edXMLEnvelope/edXMLHeader/TraceHeaderList/Bussiness/BussinessDocType";
            let business = d
                .business
                .as_ref()
                .filter(|b| {
                    (0..=3).contains(&b.r#type) && raw_of(&env.extensions, bt_path).is_none()
                })
                .map_or(Value::Null, |b| json!(b.r#type));
            (
                text_or_null(&d.document_id),
                text_or_null(&d.code_number),
                text_or_null(&d.code_notation),
                text_or_null(&date),
                text_or_null(&d.subject),
                business,
                Value::Null,
            )
        }
        Some(Body::Status(s)) => (
            text_or_null(&s.document_id),
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
            json!(s.code),
        ),
        None => (
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
        ),
    };
    json!({
        "kind": match kind_of(env) { Kind::Document => "edoc", Kind::Status => "status" },
        "from": env.from,
        "to": env.to,
        "document_id": document_id,
        "code_number": code_number,
        "code_notation": code_notation,
        "promulgation_date": promulgation_date,
        "subject": subject,
        "business_type": business_type,
        "status_code": status_code,
        "attachments": attachments,
        "trace": trace,
        "problems": problems,
    })
}

/// Decodes the package at `path` (attachments only hashed, nothing written)
/// and describes it. An `Err` means it could not be read as a package.
pub fn inspect_file(path: &Path) -> Result<Value> {
    let f = File::open(path).map_err(|e| {
        Error::new(
            lienthong_types::error::Reason::NotFound,
            format!("cannot open {}: {e}", path.display()),
        )
    })?;
    let options = DecodeOptions {
        unzip: false,
        ..DecodeOptions::default()
    };
    let package = decode(BufReader::new(f), &mut DigestSink::new(), &options)?;
    Ok(inspect_json(&package))
}

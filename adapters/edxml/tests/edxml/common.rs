//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;

use lienthong_edxml::{
    DecodeOptions, EncodeOptions, MemorySink, MemorySource, NAMESPACE, Package, decode,
    encode_to_vec,
};
use quick_xml::events::Event;
use quick_xml::name::ResolveResult;

pub fn ok<T, E: std::fmt::Display>(r: Result<T, E>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: {e}"),
    }
}

pub fn decode_bytes(bytes: &[u8]) -> (Package, Vec<Vec<u8>>) {
    let mut sink = MemorySink::new();
    let p = ok(
        decode(bytes, &mut sink, &DecodeOptions::default()),
        "decode",
    );
    (p, sink.attachments)
}

pub fn decode_with_id(bytes: &[u8], id: &str) -> (Package, Vec<Vec<u8>>) {
    let mut sink = MemorySink::new();
    let opts = DecodeOptions {
        message_id: Some(id.to_owned()),
        ..DecodeOptions::default()
    };
    let p = ok(decode(bytes, &mut sink, &opts), "decode");
    (p, sink.attachments)
}

pub fn encode_package(p: &Package, attachments: &[Vec<u8>]) -> Vec<u8> {
    ok(
        encode_to_vec(
            &p.envelope,
            &mut MemorySource(attachments.to_vec()),
            &EncodeOptions::default(),
        ),
        "encode",
    )
}

/// Every element of a package (as path → list of values) and every
/// attribute, read by quick-xml's own namespace resolution — independent of
/// the codec. Leaves carry their text; containers `None`. Attachment
/// content is left out (its bytes are compared instead).
pub fn leaves(xml: &[u8]) -> BTreeMap<String, Vec<Option<String>>> {
    let text = String::from_utf8_lossy(xml);
    let start = text.find('<').unwrap_or(0);
    let mut r = quick_xml::reader::NsReader::from_str(&text[start..]);
    let mut out: BTreeMap<String, Vec<Option<String>>> = BTreeMap::new();
    // (path, text so far, has child elements)
    let mut stack: Vec<(String, String, bool)> = Vec::new();
    loop {
        let ev = r.read_resolved_event();
        let (ns, ev) = match ev {
            Ok(v) => v,
            Err(e) => panic!("the package is not XML: {e}"),
        };
        let step = |ns: &ResolveResult, local: &str| match ns {
            ResolveResult::Bound(n) if n.0 == NAMESPACE => local.to_owned(),
            ResolveResult::Bound(n) => format!("{{{}}}{local}", n.0),
            ResolveResult::Unbound => format!("{{}}{local}"),
            ResolveResult::Unknown(p) => format!("{p}:{local}"),
        };
        match ev {
            Event::Start(s) | Event::Empty(s) if false => drop(s),
            Event::Start(s) => {
                let local = s.local_name().into_inner().to_owned();
                let path = format!(
                    "{}/{}",
                    stack.last().map(|s| s.0.as_str()).unwrap_or(""),
                    step(&ns, &local)
                );
                if let Some(top) = stack.last_mut() {
                    top.2 = true;
                }
                attrs(&s, &path, &mut out);
                stack.push((path, String::new(), false));
            }
            Event::Empty(s) => {
                let local = s.local_name().into_inner().to_owned();
                let path = format!(
                    "{}/{}",
                    stack.last().map(|s| s.0.as_str()).unwrap_or(""),
                    step(&ns, &local)
                );
                if let Some(top) = stack.last_mut() {
                    top.2 = true;
                }
                attrs(&s, &path, &mut out);
                out.entry(path).or_default().push(Some(String::new()));
            }
            Event::End(_) => {
                if let Some((path, text, kids)) = stack.pop() {
                    if path.ends_with("/ContentTransferEncoded") {
                        continue;
                    }
                    out.entry(path)
                        .or_default()
                        .push(if kids { None } else { Some(text) });
                }
            }
            Event::Text(t) => {
                if let Some(top) = stack.last_mut() {
                    top.1.push_str(&t.xml10_content());
                }
            }
            Event::CData(t) => {
                if let Some(top) = stack.last_mut() {
                    top.1.push_str(&t.xml10_content());
                }
            }
            Event::GeneralRef(g) => {
                if let Some(top) = stack.last_mut() {
                    let c = match &*g {
                        "lt" => Some('<'),
                        "gt" => Some('>'),
                        "amp" => Some('&'),
                        "apos" => Some('\''),
                        "quot" => Some('"'),
                        _ => g.resolve_char_ref().ok().flatten(),
                    };
                    top.1.extend(c);
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    // Whitespace between child elements is not a value.
    out
}

fn attrs(
    s: &quick_xml::events::BytesStart<'_>,
    path: &str,
    out: &mut BTreeMap<String, Vec<Option<String>>>,
) {
    for a in s.attributes().flatten() {
        let k = a.key.as_ref().to_owned();
        if k == "xmlns" || k.starts_with("xmlns:") {
            continue;
        }
        out.entry(format!("{path}/@{k}"))
            .or_default()
            .push(Some(a.value.into_owned()));
    }
}

/// Paths are compared without the element order: every value of the
/// original must be in the copy (the copy may have more, e.g. empty
/// standard elements the original left out).
pub fn assert_keeps_everything(original: &[u8], copy: &[u8], what: &str) {
    let a = leaves(original);
    let b = leaves(copy);
    for (path, values) in &a {
        let Some(theirs) = b.get(path) else {
            panic!("{what}: {path} is missing from the re-encoded package");
        };
        let mut theirs = theirs.clone();
        for v in values {
            // An empty element is kept when the copy has the element at
            // all (it may now hold its standard children, empty).
            let found = if v.as_deref() == Some("") {
                theirs
                    .iter()
                    .position(|t| t == v)
                    .or_else(|| theirs.iter().position(Option::is_none))
            } else {
                theirs.iter().position(|t| t == v)
            };
            match found {
                Some(i) => {
                    theirs.remove(i);
                }
                None => panic!(
                    "{what}: {path} = {v:?} is missing from the re-encoded package (it has {theirs:?})"
                ),
            }
        }
    }
}

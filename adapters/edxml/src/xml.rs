//! The small XML tree the codec keeps for a package's header, and how a
//! piece of it is written back verbatim.
//!
//! Only the header (edXMLEnvelope) and unknown elements become trees, within
//! the byte budget of [`crate::Limits`]; attachments never do.

use std::fmt::Write as _;

/// The edXML namespace (QCVN 102:2016).
pub const NAMESPACE: &str = "http://www.mic.gov.vn/TBT/QCVN_102_2016";

/// The namespace an element's name resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ns {
    Edxml,
    Other(String),
    /// No namespace (`xmlns=""`, or never declared).
    Empty,
    /// A prefix nobody declared; the name is kept as written.
    Undeclared(String),
}

impl Ns {
    /// The default namespace an element of this namespace is written under.
    fn as_default(&self) -> Option<&str> {
        match self {
            Ns::Edxml => Some(NAMESPACE),
            Ns::Other(u) => Some(u),
            Ns::Empty => Some(""),
            Ns::Undeclared(_) => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Attr {
    /// As written, prefix included.
    pub qname: String,
    /// As written: still escaped.
    pub raw: String,
    /// The namespace the prefix was bound to, for a declared prefix.
    pub prefix_ns: Option<String>,
}

impl Attr {
    pub fn prefix(&self) -> Option<&str> {
        self.qname.split_once(':').map(|(p, _)| p)
    }

    /// The attribute as it appears in a start tag.
    pub fn to_xml(&self) -> String {
        format!("{}={}", self.qname, quoted(&self.raw))
    }

    /// The namespace declaration that makes the prefix resolve where the
    /// attribute is written again.
    pub fn declaration(&self) -> Option<(String, String)> {
        let p = self.prefix()?;
        if p == "xml" {
            return None;
        }
        let ns = self.prefix_ns.as_ref()?;
        Some((format!("xmlns:{p}"), ns.clone()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Node {
    Element(Element),
    /// Character data as written (it never holds `&` or `<`).
    Text(String),
    /// An entity or character reference, by name (`amp`, `#13`).
    Ref(String),
    CData(String),
    Comment(String),
    Pi(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Element {
    pub ns: Ns,
    pub local: String,
    /// As written, prefix included.
    pub qname: String,
    pub attrs: Vec<Attr>,
    pub children: Vec<Node>,
}

impl Element {
    pub fn is(&self, local: &str) -> bool {
        self.ns == Ns::Edxml && self.local == local
    }

    /// The step naming this element in a path: the local name for the edXML
    /// namespace, `{uri}local` for another one.
    pub fn step(&self) -> String {
        match &self.ns {
            Ns::Edxml => self.local.clone(),
            Ns::Other(u) => format!("{{{u}}}{}", self.local),
            Ns::Empty => format!("{{}}{}", self.local),
            Ns::Undeclared(_) => self.qname.clone(),
        }
    }

    pub fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            _ => None,
        })
    }

    pub fn has_elements(&self) -> bool {
        self.elements().next().is_some()
    }

    /// The character data directly inside, references resolved and line
    /// ends normalized as an XML processor does.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for n in &self.children {
            match n {
                Node::Text(t) | Node::CData(t) => push_normalized(&mut out, t),
                Node::Ref(r) => {
                    if let Some(c) = resolve_reference(r) {
                        out.push(c);
                    }
                }
                _ => {}
            }
        }
        out
    }

    /// The element written as a self-contained fragment whose surrounding
    /// default namespace is edXML's.
    pub fn to_xml(&self) -> String {
        let mut out = String::new();
        self.write(&mut out, Some(NAMESPACE), &mut Vec::new());
        out
    }

    fn write(
        &self,
        out: &mut String,
        parent_default: Option<&str>,
        declared: &mut Vec<(String, String)>,
    ) {
        let name = match &self.ns {
            Ns::Undeclared(_) => self.qname.as_str(),
            _ => self.local.as_str(),
        };
        out.push('<');
        out.push_str(name);
        let own_default = self.ns.as_default().or(parent_default);
        if own_default != parent_default {
            let _ = write!(out, " xmlns={}", quoted(own_default.unwrap_or("")));
        }
        let mark = declared.len();
        for a in &self.attrs {
            if let Some((decl, ns)) = a.declaration()
                && !declared.iter().any(|(d, n)| *d == decl && *n == ns)
            {
                let _ = write!(out, " {decl}={}", quoted(&ns));
                declared.push((decl, ns));
            }
        }
        for a in &self.attrs {
            out.push(' ');
            out.push_str(&a.to_xml());
        }
        if self.children.is_empty() {
            out.push_str("/>");
        } else {
            out.push('>');
            for n in &self.children {
                match n {
                    Node::Element(e) => e.write(out, own_default, declared),
                    Node::Text(t) => out.push_str(t),
                    Node::Ref(r) => {
                        let _ = write!(out, "&{r};");
                    }
                    Node::CData(t) => {
                        let _ = write!(out, "<![CDATA[{t}]]>");
                    }
                    Node::Comment(t) => {
                        let _ = write!(out, "<!--{t}-->");
                    }
                    Node::Pi(t) => {
                        let _ = write!(out, "<?{t}?>");
                    }
                }
            }
            let _ = write!(out, "</{name}>");
        }
        declared.truncate(mark);
    }
}

/// Resolves a predefined entity or a character reference; `None` for
/// anything else (which the reader refuses before it gets here).
pub(crate) fn resolve_reference(name: &str) -> Option<char> {
    match name {
        "lt" => Some('<'),
        "gt" => Some('>'),
        "amp" => Some('&'),
        "apos" => Some('\''),
        "quot" => Some('"'),
        _ => {
            let num = name.strip_prefix('#')?;
            let n = match num.strip_prefix('x') {
                Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                None => num.parse::<u32>().ok()?,
            };
            char::from_u32(n).filter(|c| is_xml_char(*c))
        }
    }
}

/// Whether XML 1.0 can carry the character at all.
pub(crate) fn is_xml_char(c: char) -> bool {
    matches!(c, '\u{9}' | '\u{A}' | '\u{D}' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..='\u{10FFFF}')
}

/// Appends `t` with CR LF and lone CR turned into LF (XML 1.0 §2.11).
fn push_normalized(out: &mut String, t: &str) {
    let mut chars = t.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\r' {
            if chars.peek() == Some(&'\n') {
                chars.next();
            }
            out.push('\n');
        } else {
            out.push(c);
        }
    }
}

/// Escapes a value for element content. CR is written as a reference so
/// that it survives line-end normalization.
pub(crate) fn escape_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' => out.push_str("&#13;"),
            _ => out.push(c),
        }
    }
    out
}

/// An attribute value as written (still escaped, as namespace names are
/// kept too), in the quotes it can stand in.
pub(crate) fn quoted(raw: &str) -> String {
    if raw.contains('"') {
        format!("'{raw}'")
    } else {
        format!("\"{raw}\"")
    }
}

pub(crate) fn escape_attr(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '"' => out.push_str("&quot;"),
            '\r' => out.push_str("&#13;"),
            '\n' => out.push_str("&#10;"),
            '\t' => out.push_str("&#9;"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn el(ns: Ns, local: &str, children: Vec<Node>) -> Element {
        Element {
            ns,
            local: local.to_owned(),
            qname: local.to_owned(),
            attrs: Vec::new(),
            children,
        }
    }

    #[test]
    fn fragments_declare_only_namespaces_that_change() {
        let inner = el(Ns::Edxml, "X509Certificate", vec![Node::Text("MII".into())]);
        let sig = el(
            Ns::Other("http://www.w3.org/2000/09/xmldsig#".into()),
            "Signature",
            vec![Node::Element(el(
                Ns::Other("http://www.w3.org/2000/09/xmldsig#".into()),
                "KeyInfo",
                vec![Node::Element(inner)],
            ))],
        );
        assert_eq!(
            sig.to_xml(),
            "<Signature xmlns=\"http://www.w3.org/2000/09/xmldsig#\"><KeyInfo>\
             <X509Certificate xmlns=\"http://www.mic.gov.vn/TBT/QCVN_102_2016\">MII</X509Certificate></KeyInfo></Signature>"
        );
        let plain = el(
            Ns::Edxml,
            "Paper",
            vec![Node::Text("0".into()), Node::Ref("amp".into())],
        );
        assert_eq!(plain.to_xml(), "<Paper>0&amp;</Paper>");
        assert_eq!(plain.text(), "0&");
        assert_eq!(plain.step(), "Paper");
        assert_eq!(el(Ns::Empty, "a", vec![]).to_xml(), "<a xmlns=\"\"/>");
        assert_eq!(el(Ns::Empty, "a", vec![]).step(), "{}a");
    }

    #[test]
    fn references_resolve_only_to_xml_characters() {
        assert_eq!(resolve_reference("#x41"), Some('A'));
        assert_eq!(resolve_reference("#13"), Some('\r'));
        assert_eq!(resolve_reference("#0"), None);
        assert_eq!(resolve_reference("#x1"), None);
        assert_eq!(resolve_reference("lol"), None);
        assert_eq!(escape_text("a<b&c\r"), "a&lt;b&amp;c&#13;");
    }
}

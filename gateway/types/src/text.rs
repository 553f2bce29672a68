//! Which characters the text fields of an envelope may hold.
//!
//! Every string of a decoded `Envelope` is checked once, by the pipeline,
//! whatever transport brought it, before anything of it is stored, logged
//! or compared. A field is either one line (identifiers, codes, names,
//! dates, the subject) or free text (content, descriptions, reasons, the
//! verbatim XML of extensions).
//!
//! Refused everywhere:
//! - C0 controls (U+0000–U+001F) and DEL, and C1 controls (U+0080–U+009F):
//!   PostgreSQL cannot store NUL in text at all, and the others break the
//!   indexes, CSV/XLSX reports, log lines and terminals that show them.
//!   Free text keeps tab, line feed and carriage return.
//! - Unicode noncharacters (U+FDD0–U+FDEF and the last two code points of
//!   every plane, U+FFFE/U+FFFF among them): they are not text, and
//!   U+FFFE reads as a byte-swapped byte order mark to whoever converts it.
//! - Bidirectional embeddings, overrides and isolates (U+202A–U+202E,
//!   U+2066–U+2069): they make text display in another order than it is
//!   stored ("Trojan Source"): an attachment stored as
//!   `hop-dong<U+202E>fdp.exe` shows as `hop-dongexe.pdf`, a subject or a
//!   số/ký hiệu can read as something else on the dashboard. Vietnamese
//!   administrative text has no use for them. The implicit marks (LRM,
//!   RLM, ALM) do not reorder anything and are allowed.
//!
//! Refused in one-line fields: tab, line breaks and the Unicode line and
//! paragraph separators (U+2028, U+2029), which split a subject or a name
//! across lines of a report or a log.

use std::borrow::Cow;
use std::fmt::Write as _;

use lienthong_proto::v1::{self as pb, Envelope, envelope::Body};

use crate::error::{Error, Result};

/// Quotes user input for a message: escaped, and cut (on a character
/// boundary) so a huge value cannot flood a log line.
pub fn quote(s: &str) -> String {
    const MAX_CHARS: usize = 40;
    let mut chars = s.chars();
    let head: String = chars.by_ref().take(MAX_CHARS).collect();
    if chars.next().is_some() {
        format!("{head:?}… ({} bytes)", s.len())
    } else {
        format!("{head:?}")
    }
}

/// At most `max` bytes of `s`, cut on a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// What a field may hold besides ordinary characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextKind {
    /// Identifiers, codes, names, dates, the subject: no tab, no line break.
    Line,
    /// Content, descriptions, reasons, verbatim XML: tab, LF and CR allowed.
    Free,
}

/// Why a character is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    Control,
    LineBreak,
    Noncharacter,
    Bidi,
}

fn judge(c: char, kind: TextKind) -> Option<Why> {
    match c {
        '\t' | '\n' | '\r' => (kind == TextKind::Line).then_some(Why::LineBreak),
        '\u{2028}' | '\u{2029}' => (kind == TextKind::Line).then_some(Why::LineBreak),
        c if c.is_control() => Some(Why::Control),
        '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' => Some(Why::Bidi),
        '\u{FDD0}'..='\u{FDEF}' => Some(Why::Noncharacter),
        c if (c as u32) & 0xFFFE == 0xFFFE => Some(Why::Noncharacter),
        _ => None,
    }
}

/// Whether `c` may appear in a field of `kind`.
pub fn allowed(c: char, kind: TextKind) -> bool {
    judge(c, kind).is_none()
}

/// A character as a refusal names it: `U+0000 NUL`, `U+0085`.
pub fn describe_char(c: char) -> Cow<'static, str> {
    let name = match c {
        '\0' => "NUL",
        '\t' => "TAB",
        '\n' => "LINE FEED",
        '\r' => "CARRIAGE RETURN",
        '\u{1B}' => "ESCAPE",
        '\u{7F}' => "DELETE",
        '\u{2028}' => "LINE SEPARATOR",
        '\u{2029}' => "PARAGRAPH SEPARATOR",
        '\u{202A}' => "LEFT-TO-RIGHT EMBEDDING",
        '\u{202B}' => "RIGHT-TO-LEFT EMBEDDING",
        '\u{202C}' => "POP DIRECTIONAL FORMATTING",
        '\u{202D}' => "LEFT-TO-RIGHT OVERRIDE",
        '\u{202E}' => "RIGHT-TO-LEFT OVERRIDE",
        '\u{2066}' => "LEFT-TO-RIGHT ISOLATE",
        '\u{2067}' => "RIGHT-TO-LEFT ISOLATE",
        '\u{2068}' => "FIRST STRONG ISOLATE",
        '\u{2069}' => "POP DIRECTIONAL ISOLATE",
        _ => return Cow::Owned(format!("U+{:04X}", c as u32)),
    };
    Cow::Owned(format!("U+{:04X} {name}", c as u32))
}

/// Checks one field; `field` names it in the refusal (`document.subject`).
pub fn check_field(field: &str, value: &str, kind: TextKind) -> Result<()> {
    let Some((at, c, why)) = value
        .chars()
        .enumerate()
        .find_map(|(i, c)| judge(c, kind).map(|w| (i + 1, c, w)))
    else {
        return Ok(());
    };
    let what = describe_char(c);
    let fix = match why {
        Why::Control if kind == TextKind::Free => format!(
            "`{field}` holds the control character {what} (character {at}); of the control characters only tab and line breaks may appear in it: remove it"
        ),
        Why::Control => format!(
            "`{field}` holds the control character {what} (character {at}); it is one line of text without control characters: remove it"
        ),
        Why::LineBreak => format!(
            "`{field}` holds {what} (character {at}); it is one line of text, without tabs or line breaks: replace it with a space"
        ),
        Why::Noncharacter => format!(
            "`{field}` holds {what} (character {at}), a Unicode noncharacter, which is not text: remove it"
        ),
        Why::Bidi => format!(
            "`{field}` holds {what} (character {at}), a bidirectional control that makes the text display in another order than it is stored: remove it"
        ),
    };
    Err(Error::malformed(format!(
        "{fix}, and send the message again"
    )))
}

/// `s` with every character a one-line field refuses written as `\u{..}`,
/// for log lines and refusal details that quote what was received.
pub fn printable(s: &str) -> Cow<'_, str> {
    if s.chars().all(|c| allowed(c, TextKind::Line)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if allowed(c, TextKind::Line) {
            out.push(c);
        } else {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
    Cow::Owned(out)
}

/// What [`visit_fields`] calls for each field: its path
/// (`document.attachments[0].name`), its value and its kind.
pub type Visit<'v> = dyn FnMut(&str, &str, TextKind) -> Result<()> + 'v;

/// Walks the fields of an envelope, naming each by its path.
struct Walk<'v, 'f> {
    path: String,
    visit: &'v mut Visit<'f>,
}

impl<'v, 'f> Walk<'v, 'f> {
    fn at<'a>(&'a mut self, name: &str) -> Scope<'a, 'v, 'f> {
        let len = self.path.len();
        if !self.path.is_empty() {
            self.path.push('.');
        }
        self.path.push_str(name);
        Scope { walk: self, len }
    }

    fn item<'a>(&'a mut self, name: &str, i: usize) -> Scope<'a, 'v, 'f> {
        let len = self.path.len();
        if !self.path.is_empty() {
            self.path.push('.');
        }
        let _ = write!(self.path, "{name}[{i}]");
        Scope { walk: self, len }
    }
}

/// A path segment, taken off again when dropped.
struct Scope<'a, 'v, 'f> {
    walk: &'a mut Walk<'v, 'f>,
    len: usize,
}

impl<'v, 'f> Scope<'_, 'v, 'f> {
    fn line(&mut self, name: &str, v: &str) -> Result<()> {
        self.field(name, v, TextKind::Line)
    }

    fn free(&mut self, name: &str, v: &str) -> Result<()> {
        self.field(name, v, TextKind::Free)
    }

    fn field(&mut self, name: &str, v: &str, kind: TextKind) -> Result<()> {
        let s = self.walk.at(name);
        let w = &mut *s.walk;
        (w.visit)(&w.path, v, kind)
    }

    fn lines(&mut self, name: &str, vs: &[String]) -> Result<()> {
        for (i, v) in vs.iter().enumerate() {
            let s = self.walk.item(name, i);
            let w = &mut *s.walk;
            (w.visit)(&w.path, v, TextKind::Line)?;
        }
        Ok(())
    }

    fn walk(&mut self) -> &mut Walk<'v, 'f> {
        self.walk
    }
}

impl Drop for Scope<'_, '_, '_> {
    fn drop(&mut self) {
        self.walk.path.truncate(self.len);
    }
}

/// Checks every text field of `env`; the refusal names the first field
/// that holds a character it may not.
pub fn check_envelope(env: &Envelope) -> Result<()> {
    visit_fields(env, &mut |path, value, kind| {
        if value.chars().all(|c| allowed(c, kind)) {
            Ok(())
        } else {
            check_field(path, value, kind)
        }
    })
}

/// Calls `visit` with every text field of `env`, in order, until it fails.
pub fn visit_fields(env: &Envelope, visit: &mut Visit<'_>) -> Result<()> {
    let mut w = Walk {
        path: String::new(),
        visit,
    };
    {
        let mut top = Scope {
            len: 0,
            walk: &mut w,
        };
        top.line("message_id", &env.message_id)?;
        top.line("from", &env.from)?;
        top.lines("to", &env.to)?;
    }
    if let Some(o) = &env.sender {
        organization(&mut w.at("sender"), o)?;
    }
    for (i, o) in env.recipients.iter().enumerate() {
        organization(&mut w.item("recipients", i), o)?;
    }
    for (i, t) in env.trace_headers.iter().enumerate() {
        let mut s = w.item("trace_headers", i);
        s.line("organ_id", &t.organ_id)?;
        s.line("timestamp", &t.timestamp)?;
    }
    for (i, x) in env.extensions.iter().enumerate() {
        let mut s = w.item("extensions", i);
        s.line("path", &x.path)?;
        s.free("xml", &x.xml)?;
    }
    match &env.body {
        Some(Body::Document(d)) => document(&mut w.at("document"), d)?,
        Some(Body::Status(st)) => status(&mut w.at("status"), st)?,
        None => {}
    }
    Ok(())
}

fn organization(s: &mut Scope<'_, '_, '_>, o: &pb::Organization) -> Result<()> {
    s.line("organization_in_charge", &o.organization_in_charge)?;
    s.line("organ_name", &o.organ_name)?;
    s.line("organ_add", &o.organ_add)?;
    s.line("email", &o.email)?;
    s.line("telephone", &o.telephone)?;
    s.line("fax", &o.fax)?;
    s.line("website", &o.website)
}

fn staff(s: &mut Scope<'_, '_, '_>, st: &pb::Staff) -> Result<()> {
    s.line("name", &st.name)?;
    s.line("department", &st.department)?;
    s.line("email", &st.email)?;
    s.line("mobile", &st.mobile)
}

fn document(s: &mut Scope<'_, '_, '_>, d: &pb::Document) -> Result<()> {
    s.line("document_id", &d.document_id)?;
    s.line("code_number", &d.code_number)?;
    s.line("code_notation", &d.code_notation)?;
    s.line("promulgation_place", &d.promulgation_place)?;
    s.line("promulgation_date", &d.promulgation_date)?;
    s.line("type_name", &d.type_name)?;
    s.line("subject", &d.subject)?;
    s.free("content", &d.content)?;
    if let Some(sg) = &d.signer {
        let mut s = s.walk().at("signer");
        s.line("competence", &sg.competence)?;
        s.line("position", &sg.position)?;
        s.line("full_name", &sg.full_name)?;
    }
    s.line("due_date", &d.due_date)?;
    s.line("sphere_of_promulgation", &d.sphere_of_promulgation)?;
    s.line("typer_notation", &d.typer_notation)?;
    s.lines("to_places", &d.to_places)?;
    s.lines("appendixes", &d.appendixes)?;
    s.line("confidentiality", &d.confidentiality)?;
    for (i, r) in d.response_for.iter().enumerate() {
        let mut s = s.walk().item("response_for", i);
        s.line("organ_id", &r.organ_id)?;
        s.line("code", &r.code)?;
        s.line("promulgation_date", &r.promulgation_date)?;
        s.line("document_id", &r.document_id)?;
    }
    if let Some(b) = &d.business {
        let mut s = s.walk().at("business");
        s.free("reason", &b.reason)?;
        s.line("replaces", &b.replaces)?;
        s.free("paper", &b.paper)?;
        if let Some(info) = &b.document_info {
            let mut s = s.walk().at("document_info");
            s.free("document_info", &info.document_info)?;
            s.free("document_receiver", &info.document_receiver)?;
            for (i, r) in info.receivers.iter().enumerate() {
                let mut s = s.walk().item("receivers", i);
                s.line("organ_id", &r.organ_id)?;
                s.line("receiver_type", &r.receiver_type)?;
            }
        }
        for (i, r) in b.replacements.iter().enumerate() {
            let mut s = s.walk().item("replacements", i);
            s.line("document_id", &r.document_id)?;
            s.lines("organ_ids", &r.organ_ids)?;
        }
        if let Some(st) = &b.staff {
            staff(&mut s.walk().at("staff"), st)?;
        }
    }
    for (i, a) in d.attachments.iter().enumerate() {
        let mut s = s.walk().item("attachments", i);
        s.line("name", &a.name)?;
        s.line("content_type", &a.content_type)?;
        s.free("description", &a.description)?;
        s.line("content_id", &a.content_id)?;
        if let Some(m) = &a.manifest {
            let mut s = s.walk().at("manifest");
            s.line("content_id", &m.content_id)?;
            s.line("content_type", &m.content_type)?;
            s.free("description", &m.description)?;
            s.line("name", &m.name)?;
        }
    }
    Ok(())
}

fn status(s: &mut Scope<'_, '_, '_>, st: &pb::StatusNotice) -> Result<()> {
    s.line("document_id", &st.document_id)?;
    s.line("document_from", &st.document_from)?;
    s.line("code", &st.code)?;
    s.free("description", &st.description)?;
    if let Some(sf) = &st.staff {
        staff(&mut s.walk().at("staff"), sf)?;
    }
    s.line("document_code", &st.document_code)?;
    s.line("document_promulgation_date", &st.document_promulgation_date)
}

/// `s` as searches compare it: lower case, without Vietnamese diacritics
/// (`Ủy ban` and `Uỷ ban` → `uy ban`, `đ` → `d`), whether the marks are
/// precomposed or combining (NFD), and with runs of white space as one
/// space, trimmed. So "uy ban" finds "Ủy ban nhân dân".
pub fn fold(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut space = false;
    for c in s.chars() {
        if c.is_whitespace() {
            space = !out.is_empty();
            continue;
        }
        // Combining diacritical marks (a decomposed `ủ` is `u` + U+0309).
        if ('\u{0300}'..='\u{036F}').contains(&c) {
            continue;
        }
        if space {
            out.push(' ');
            space = false;
        }
        for l in c.to_lowercase() {
            out.push(base_letter(l));
        }
    }
    out
}

/// A lower-case Vietnamese letter without its marks.
fn base_letter(c: char) -> char {
    const GROUPS: [(&str, char); 7] = [
        ("àáảãạăằắẳẵặâầấẩẫậ", 'a'),
        ("èéẻẽẹêềếểễệ", 'e'),
        ("ìíỉĩị", 'i'),
        ("òóỏõọôồốổỗộơờớởỡợ", 'o'),
        ("ùúủũụưừứửữự", 'u'),
        ("ỳýỷỹỵ", 'y'),
        // `ð` (U+00F0) is typed for `đ` by keyboards that lack it.
        ("đð", 'd'),
    ];
    if c.is_ascii() {
        return c;
    }
    GROUPS
        .iter()
        .find(|(marked, _)| marked.contains(c))
        .map_or(c, |&(_, base)| base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fold_drops_case_marks_and_extra_spaces() {
        assert_eq!(
            fold("Ủy ban nhân dân tỉnh Lai Châu"),
            "uy ban nhan dan tinh lai chau"
        );
        assert_eq!(fold("  UỶ   BAN "), "uy ban");
        assert_eq!(fold("Sở Khoa học và Công nghệ"), "so khoa hoc va cong nghe");
        assert_eq!(fold("ĐẮK LẮK, Ðồng Tháp"), "dak lak, dong thap");
        // Decomposed: U+0055 U+031B U+0309 (Ử as base + horn + hook).
        assert_eq!(fold("U\u{31B}\u{309}y ban"), "uy ban");
        assert_eq!(fold("000.00.12.H35"), "000.00.12.h35");
        assert_eq!(fold("<script>"), "<script>");
        assert_eq!(fold(""), "");
    }
    use crate::error::Reason;

    fn doc(f: impl FnOnce(&mut pb::Document)) -> Envelope {
        let mut d = pb::Document {
            document_id: "15/QĐ-UBND".to_owned(),
            subject: "Quyết định về chuyển đổi số".to_owned(),
            content: "Dòng một\r\n\tDòng hai".to_owned(),
            ..Default::default()
        };
        f(&mut d);
        Envelope {
            message_id: "m-1".to_owned(),
            from: "000.00.01.H35".to_owned(),
            to: vec!["000.00.12.H35".to_owned()],
            body: Some(Body::Document(d)),
            ..Default::default()
        }
    }

    fn refusal(env: &Envelope) -> String {
        let e = check_envelope(env).expect_err("refused");
        assert_eq!(e.reason(), Reason::Malformed);
        e.message().to_owned()
    }

    #[test]
    fn ordinary_vietnamese_text_and_free_text_line_breaks_pass() {
        check_envelope(&doc(|_| {})).expect("accepted");
        check_envelope(&doc(|d| {
            d.subject = "Về việc \u{200E}tăng cường\u{00AD} an toàn".to_owned();
            d.attachments.push(pb::AttachmentRef {
                name: "Tờ trình số 12.pdf".to_owned(),
                description: "Phụ lục\nkèm theo".to_owned(),
                ..Default::default()
            });
        }))
        .expect("marks, soft hyphens and line breaks in descriptions pass");
    }

    #[test]
    fn a_nul_is_refused_with_the_field_named() {
        let m = refusal(&doc(|d| d.document_id = "15/QĐ\0-UBND".to_owned()));
        assert!(m.contains("`document.document_id`"), "{m}");
        assert!(m.contains("U+0000 NUL"), "{m}");
        assert!(m.contains("character 6"), "{m}");
        let m = refusal(&doc(|d| d.subject.push('\0')));
        assert!(m.contains("`document.subject`"), "{m}");
        let mut env = doc(|_| {});
        env.to.push("000.00.31.H35\0".to_owned());
        assert!(refusal(&env).contains("`to[1]`"));
    }

    #[test]
    fn line_fields_refuse_line_breaks_free_text_keeps_them() {
        let m = refusal(&doc(|d| d.subject = "Dòng một\nDòng hai".to_owned()));
        assert!(m.contains("LINE FEED"), "{m}");
        assert!(m.contains("replace it with a space"), "{m}");
        let m = refusal(&doc(|d| d.subject = "a\u{2028}b".to_owned()));
        assert!(m.contains("LINE SEPARATOR"), "{m}");
        let m = refusal(&doc(|d| d.content = "chuông\u{7}".to_owned()));
        assert!(m.contains("`document.content`"), "{m}");
        assert!(m.contains("only tab and line breaks"), "{m}");
    }

    #[test]
    fn c1_controls_noncharacters_and_bidi_overrides_are_refused() {
        for (c, what) in [
            ('\u{85}', "U+0085"),
            ('\u{9B}', "U+009B"),
            ('\u{FFFE}', "noncharacter"),
            ('\u{FDD0}', "noncharacter"),
            ('\u{10FFFF}', "noncharacter"),
            ('\u{202E}', "RIGHT-TO-LEFT OVERRIDE"),
            ('\u{2067}', "RIGHT-TO-LEFT ISOLATE"),
        ] {
            let m = refusal(&doc(|d| {
                d.attachments.push(pb::AttachmentRef {
                    name: format!("hop-dong{c}fdp.exe"),
                    ..Default::default()
                })
            }));
            assert!(m.contains("`document.attachments[0].name`"), "{m}");
            assert!(m.contains(what), "{c:?}: {m}");
        }
    }

    #[test]
    fn nested_fields_are_named_by_their_path() {
        let m = refusal(&doc(|d| {
            d.business = Some(pb::Business {
                replacements: vec![
                    pb::Replacement::default(),
                    pb::Replacement {
                        organ_ids: vec!["x".to_owned(), "y\u{1}".to_owned()],
                        ..Default::default()
                    },
                ],
                ..Default::default()
            })
        }));
        assert!(
            m.contains("`document.business.replacements[1].organ_ids[1]`"),
            "{m}"
        );
        let env = Envelope {
            message_id: "m".to_owned(),
            body: Some(Body::Status(pb::StatusNotice {
                staff: Some(pb::Staff {
                    name: "Nguyễn\u{0}".to_owned(),
                    ..Default::default()
                }),
                ..Default::default()
            })),
            ..Default::default()
        };
        assert!(refusal(&env).contains("`status.staff.name`"));
    }

    #[test]
    fn every_field_is_visited_with_its_path_and_kind() {
        let env = doc(|d| {
            d.attachments.push(pb::AttachmentRef {
                name: "a.pdf".to_owned(),
                manifest: Some(pb::ManifestReference::default()),
                ..Default::default()
            })
        });
        let mut seen = Vec::new();
        visit_fields(&env, &mut |path, _, kind| {
            seen.push((path.to_owned(), kind));
            Ok(())
        })
        .unwrap();
        let has = |p: &str, k: TextKind| seen.iter().any(|(q, l)| q == p && *l == k);
        assert!(has("message_id", TextKind::Line), "{seen:?}");
        assert!(has("to[0]", TextKind::Line), "{seen:?}");
        assert!(has("document.subject", TextKind::Line), "{seen:?}");
        assert!(has("document.content", TextKind::Free), "{seen:?}");
        assert!(
            has(
                "document.attachments[0].manifest.description",
                TextKind::Free
            ),
            "{seen:?}"
        );
    }

    proptest::proptest! {
        #[test]
        fn what_is_accepted_holds_nothing_refused_and_refusals_quote_nothing(
            subject in proptest::prelude::any::<String>(),
            content in proptest::prelude::any::<String>(),
        ) {
            let env = doc(|d| {
                d.subject = subject.clone();
                d.content = content.clone();
            });
            match check_envelope(&env) {
                Ok(()) => {
                    proptest::prop_assert!(subject.chars().all(|c| allowed(c, TextKind::Line)));
                    proptest::prop_assert!(content.chars().all(|c| allowed(c, TextKind::Free)));
                }
                Err(e) => {
                    proptest::prop_assert!(e.message().chars().all(|c| allowed(c, TextKind::Line)), "{}", e.message());
                    let printable_subject = printable(&subject);
                    proptest::prop_assert!(printable_subject.chars().all(|c| allowed(c, TextKind::Line)));
                }
            }
        }
    }

    #[test]
    fn printable_escapes_what_a_line_refuses() {
        assert_eq!(printable("m-1"), "m-1");
        assert_eq!(printable("a\0b\u{202E}"), "a\\u{0}b\\u{202e}");
    }
}

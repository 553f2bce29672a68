//! Agency identifiers (mã định danh, QCVN 102:2016) and AMQP topic patterns
//! over them.
//!
//! A standard code is written `DDD.DD.DD.LNN`: level 4 . level 3 . level 2 .
//! level 1, unused levels as zeros. Its parent is the same code with the
//! highest non-zero level zeroed, so the hierarchy is computed from the code
//! alone and never needs the directory.

use std::cmp::Reverse;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Reason, Result};
use crate::text::quote;

/// How strictly to read an agency code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum IdPolicy {
    /// Only QCVN 102:2016 codes (`000.00.01.H35`).
    #[default]
    Strict,
    /// Also the ids test systems use (`vxp.saas.03`): dotted tokens of
    /// `[A-Za-z0-9_-]`, at most 64 characters. Such ids stand alone: no
    /// level, no parent.
    Lenient,
}

/// The expected form, quoted in every refusal so the reader can fix the value.
const EXPECTED_FORM: &str = "DDD.DD.DD.LNN (three digits, two digits, two digits, then a capital \
     letter and two digits, e.g. 000.00.01.H35)";

const LENIENT_MAX_LEN: usize = 64;

/// An agency code, either a QCVN 102:2016 code or (under
/// [`IdPolicy::Lenient`]) a test-system id.
///
/// Serialized as its string. Deserializing accepts what the lenient policy
/// accepts: a value that was stored was already checked under the policy in
/// force when it came in, and tightening the policy later must not make old
/// records unreadable.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OrganId(String);

impl OrganId {
    /// Reads a QCVN 102:2016 code (surrounding whitespace is ignored).
    pub fn parse(s: &str) -> Result<OrganId> {
        OrganId::parse_with(s, IdPolicy::Strict)
    }

    /// Reads a code under the given policy.
    pub fn parse_with(s: &str, policy: IdPolicy) -> Result<OrganId> {
        let t = s.trim();
        if is_standard(t) {
            return Ok(OrganId(t.to_owned()));
        }
        match policy {
            IdPolicy::Strict => Err(strict_refusal(s, t)),
            IdPolicy::Lenient => {
                if looks_like_broken_standard(t) {
                    // A lenient policy exists for test-system ids, not to let a
                    // mistyped real code (`000.1137.H53`) through unnoticed.
                    return Err(strict_refusal(s, t));
                }
                if is_lenient_token_list(t) {
                    Ok(OrganId(t.to_owned()))
                } else {
                    Err(Error::new(
                        Reason::BadIdentifier,
                        format!(
                            "the agency code {} is neither a QCVN 102:2016 code nor a test-system id; \
                             write it as {EXPECTED_FORM}, or as dotted letters, digits, '_' and '-' \
                             (at most {LENIENT_MAX_LEN} characters, e.g. vxp.saas.03)",
                            quote(s)
                        ),
                    ))
                }
            }
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is a QCVN 102:2016 code (as opposed to a lenient test id).
    pub fn is_standard(&self) -> bool {
        is_standard(&self.0)
    }

    /// 1 for a province or ministry (`000.00.00.H35`), 2, 3, 4 for the levels
    /// below; 0 for a test-system id.
    pub fn level(&self) -> u8 {
        match self.groups() {
            None => 0,
            Some([l4, l3, l2, _]) => {
                if l4 != "000" {
                    4
                } else if l3 != "00" {
                    3
                } else if l2 != "00" {
                    2
                } else {
                    1
                }
            }
        }
    }

    /// The code with its highest non-zero level zeroed; `None` at level 1 and
    /// for test-system ids.
    pub fn parent(&self) -> Option<OrganId> {
        let [_, l3, l2, l1] = self.groups()?;
        let s = match self.level() {
            4 => format!("000.{l3}.{l2}.{l1}"),
            3 => format!("000.00.{l2}.{l1}"),
            2 => format!("000.00.00.{l1}"),
            _ => return None,
        };
        Some(OrganId(s))
    }

    /// Whether `ancestor` is this code or one of its ancestors.
    pub fn is_under(&self, ancestor: &OrganId) -> bool {
        let mut cur = Some(self.clone());
        while let Some(c) = cur {
            if &c == ancestor {
                return true;
            }
            cur = c.parent();
        }
        false
    }

    /// The level-1 group (`H35`), or `""` for a test-system id.
    pub fn level1(&self) -> &str {
        match self.groups() {
            Some([_, _, _, l1]) => l1,
            None => "",
        }
    }

    fn groups(&self) -> Option<[&str; 4]> {
        if !is_standard(&self.0) {
            return None;
        }
        let s = self.0.as_str();
        Some([&s[0..3], &s[4..6], &s[7..9], &s[10..13]])
    }
}

fn strict_refusal(raw: &str, trimmed: &str) -> Error {
    let mut msg = format!(
        "the agency code {} is not a QCVN 102:2016 code; write it as {EXPECTED_FORM}",
        quote(raw)
    );
    let upper = trimmed.to_ascii_uppercase();
    if upper != trimmed && is_standard(&upper) {
        msg.push_str(&format!(" — did you mean {upper}?"));
    }
    Error::new(Reason::BadIdentifier, msg)
}

fn is_standard(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 13
        && b[0..3].iter().all(u8::is_ascii_digit)
        && b[3] == b'.'
        && b[4..6].iter().all(u8::is_ascii_digit)
        && b[6] == b'.'
        && b[7..9].iter().all(u8::is_ascii_digit)
        && b[9] == b'.'
        && b[10].is_ascii_uppercase()
        && b[11..13].iter().all(u8::is_ascii_digit)
}

fn is_lenient_token_list(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= LENIENT_MAX_LEN
        && s.split('.').all(|tok| {
            !tok.is_empty()
                && tok
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
        })
}

/// Digits-only groups ending in a letter and two digits: a QCVN code with a
/// typo rather than a test-system id.
fn looks_like_broken_standard(s: &str) -> bool {
    let mut toks: Vec<&str> = s.split('.').collect();
    let Some(last) = toks.pop() else {
        return false;
    };
    let lb = last.as_bytes();
    !toks.is_empty()
        && lb.len() == 3
        && lb[0].is_ascii_alphabetic()
        && lb[1..].iter().all(u8::is_ascii_digit)
        && toks
            .iter()
            .all(|t| !t.is_empty() && t.bytes().all(|c| c.is_ascii_digit()))
}

impl fmt::Display for OrganId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for OrganId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OrganId({})", self.0)
    }
}

impl FromStr for OrganId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        OrganId::parse(s)
    }
}

impl TryFrom<String> for OrganId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        OrganId::parse_with(&s, IdPolicy::Lenient)
    }
}

impl From<OrganId> for String {
    fn from(id: OrganId) -> String {
        id.0
    }
}

impl AsRef<str> for OrganId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

// ---------------------------------------------------------------------------
// Topic patterns
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Word {
    Literal(String),
    /// `*`: exactly one group.
    One,
    /// `#`: zero or more groups.
    Any,
}

/// An AMQP topic-exchange pattern over dotted agency codes: `#.H35`,
/// `*.*.31.H53`, `#`. Matching follows RabbitMQ's topic exchange, so a route
/// that says `#.H35` here selects exactly what a queue bound with `#.H35`
/// receives.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TopicPattern {
    text: String,
    words: Vec<Word>,
}

/// Ordering key of a pattern: ascending order puts the most specific pattern
/// first (more literal groups, then fewer `#`, then fewer `*`), with the text
/// as a last tie-break so the order is total and stable.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Specificity {
    literals: Reverse<usize>,
    any: usize,
    one: usize,
    text: String,
}

/// AMQP short strings (routing keys, binding keys) hold at most 255 bytes.
const PATTERN_MAX_LEN: usize = 255;

impl TopicPattern {
    /// `#`: every code.
    pub fn any() -> TopicPattern {
        TopicPattern {
            text: "#".to_owned(),
            words: vec![Word::Any],
        }
    }

    pub fn parse(s: &str) -> Result<TopicPattern> {
        let t = s.trim();
        let bad = |why: &str| {
            Error::malformed(format!(
                "the routing pattern {} {why}; write dotted groups where each group is a literal \
                 (letters, digits, '_' or '-'), '*' for exactly one group or '#' for any number, \
                 e.g. #.H35 or *.*.31.H53",
                quote(s)
            ))
        };
        if t.is_empty() {
            return Err(bad("is empty"));
        }
        if t.len() > PATTERN_MAX_LEN {
            return Err(bad("is longer than 255 bytes"));
        }
        let mut words = Vec::new();
        for w in t.split('.') {
            let word = match w {
                "#" => Word::Any,
                "*" => Word::One,
                "" => {
                    return Err(bad(
                        "has an empty group (two dots together, or a leading or trailing dot)",
                    ));
                }
                lit if lit
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-') =>
                {
                    Word::Literal(lit.to_owned())
                }
                _ => {
                    return Err(bad(&format!(
                        "has the group {} that is neither a literal nor a lone wildcard",
                        quote(w)
                    )));
                }
            };
            // `#.#` matches exactly what `#` matches; folding keeps matching linear.
            if word == Word::Any && words.last() == Some(&Word::Any) {
                continue;
            }
            words.push(word);
        }
        Ok(TopicPattern {
            text: t.to_owned(),
            words,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether a routing key (a dotted agency code) matches, with RabbitMQ's
    /// topic semantics.
    pub fn matches(&self, id: &str) -> bool {
        let key: Vec<&str> = id.split('.').collect();
        // reach[j]: the words seen so far can consume exactly key[..j].
        let mut reach = vec![false; key.len() + 1];
        reach[0] = true;
        for word in &self.words {
            let mut next = vec![false; key.len() + 1];
            match word {
                Word::Any => {
                    let mut on = false;
                    for j in 0..=key.len() {
                        on |= reach[j];
                        next[j] = on;
                    }
                }
                Word::One => {
                    next[1..].copy_from_slice(&reach[..key.len()]);
                }
                Word::Literal(lit) => {
                    for j in 0..key.len() {
                        next[j + 1] = reach[j] && key[j] == lit;
                    }
                }
            }
            reach = next;
        }
        reach[key.len()]
    }

    /// See [`Specificity`]: `routes.sort_by_key(|r| r.pattern.specificity())`
    /// puts the most specific route first.
    pub fn specificity(&self) -> Specificity {
        let mut literals = 0;
        let mut any = 0;
        let mut one = 0;
        for w in &self.words {
            match w {
                Word::Literal(_) => literals += 1,
                Word::One => one += 1,
                Word::Any => any += 1,
            }
        }
        Specificity {
            literals: Reverse(literals),
            any,
            one,
            text: self.text.clone(),
        }
    }
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TopicPattern({})", self.text)
    }
}

impl FromStr for TopicPattern {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        TopicPattern::parse(s)
    }
}

impl TryFrom<String> for TopicPattern {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        TopicPattern::parse(&s)
    }
}

impl From<TopicPattern> for String {
    fn from(p: TopicPattern) -> String {
        p.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(s: &str) -> OrganId {
        match OrganId::parse(s) {
            Ok(i) => i,
            Err(e) => panic!("{s}: {e}"),
        }
    }

    fn pat(s: &str) -> TopicPattern {
        match TopicPattern::parse(s) {
            Ok(p) => p,
            Err(e) => panic!("{s}: {e}"),
        }
    }

    #[test]
    fn parses_the_examples_and_trims() {
        for s in [
            "000.00.00.H35",
            "000.00.01.H35",
            "000.21.31.H53",
            "001.01.07.H53",
        ] {
            assert_eq!(id(s).as_str(), s);
        }
        assert_eq!(id("  000.00.01.H35\t\n").as_str(), "000.00.01.H35");
        assert_eq!(id("000.00.01.H35").to_string(), "000.00.01.H35");
    }

    #[test]
    fn refuses_malformed_codes_with_a_sentence_that_quotes_them() {
        for s in [
            "000.1137.H53",
            "",
            "000.00.01.h35",
            "000.00.01.H3",
            "000.00.01.H355",
            "00.00.01.H35",
            "000.00.01.35H",
            "000,00,01,H35",
            "000.00.01.Ḧ35",
            "000.00.01.H35.",
            "vxp.saas.03",
        ] {
            let e = match OrganId::parse(s) {
                Ok(i) => panic!("{s:?} was accepted as {i}"),
                Err(e) => e,
            };
            assert_eq!(e.reason(), Reason::BadIdentifier, "{s:?}");
            assert!(e.message().contains(&format!("{:?}", s)), "{}", e.message());
            assert!(e.message().contains("DDD.DD.DD.LNN"), "{}", e.message());
        }
        let e = OrganId::parse("000.00.01.h35")
            .err()
            .map(|e| e.message().to_owned());
        assert!(
            e.as_deref()
                .is_some_and(|m| m.contains("did you mean 000.00.01.H35")),
            "{e:?}"
        );
    }

    #[test]
    fn huge_input_is_quoted_truncated_on_a_char_boundary() {
        let s = "ắ".repeat(10_000);
        let Err(e) = OrganId::parse(&s) else {
            panic!("accepted")
        };
        assert!(e.message().len() < 600, "{}", e.message().len());
        assert!(e.message().contains("30000 bytes"), "{}", e.message());
    }

    #[test]
    fn levels_and_parents_follow_the_highest_non_zero_group() {
        assert_eq!(id("000.00.00.H35").level(), 1);
        assert_eq!(id("000.00.01.H35").level(), 2);
        assert_eq!(id("000.21.31.H53").level(), 3);
        assert_eq!(id("001.01.07.H53").level(), 4);

        let c = id("000.21.31.H53");
        let p = c.parent();
        assert_eq!(p, Some(id("000.00.31.H53")));
        let gp = p.as_ref().and_then(OrganId::parent);
        assert_eq!(gp, Some(id("000.00.00.H53")));
        assert_eq!(gp.as_ref().and_then(OrganId::parent), None);

        assert_eq!(id("001.01.07.H53").parent(), Some(id("000.01.07.H53")));
        assert_eq!(id("000.00.01.H35").level1(), "H35");
    }

    #[test]
    fn is_under_follows_the_parent_rule() {
        assert!(id("000.21.31.H53").is_under(&id("000.00.31.H53")));
        assert!(id("000.21.31.H53").is_under(&id("000.00.00.H53")));
        assert!(id("000.21.31.H53").is_under(&id("000.21.31.H53")));
        assert!(!id("000.21.31.H53").is_under(&id("000.00.21.H53")));
        assert!(!id("000.21.31.H53").is_under(&id("000.00.00.H35")));
        assert!(id("001.01.07.H53").is_under(&id("000.01.07.H53")));
        assert!(id("001.01.07.H53").is_under(&id("000.00.07.H53")));
        assert!(!id("000.00.00.H53").is_under(&id("000.00.31.H53")));
    }

    #[test]
    fn lenient_accepts_test_ids_but_not_broken_codes() {
        let t = match OrganId::parse_with("vxp.saas.03", IdPolicy::Lenient) {
            Ok(t) => t,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(t.level(), 0);
        assert_eq!(t.parent(), None);
        assert_eq!(t.level1(), "");
        assert!(!t.is_standard());
        assert!(t.is_under(&t));
        assert!(!t.is_under(&id("000.00.00.H35")));
        assert!(!id("000.00.00.H35").is_under(&t));

        assert!(
            OrganId::parse_with("000.00.01.H35", IdPolicy::Lenient).is_ok_and(|i| i.level() == 2)
        );
        for bad in [
            "000.1137.H53",
            "000.00.001.H35",
            "",
            "a..b",
            ".a",
            "a.",
            "a b",
            "vxp/saas",
            "ắ.b",
        ] {
            let r = OrganId::parse_with(bad, IdPolicy::Lenient);
            assert!(
                r.as_ref()
                    .is_err_and(|e| e.reason() == Reason::BadIdentifier),
                "{bad:?}: {r:?}"
            );
        }
        assert!(OrganId::parse_with(&"a".repeat(64), IdPolicy::Lenient).is_ok());
        assert!(OrganId::parse_with(&"a".repeat(65), IdPolicy::Lenient).is_err());
    }

    #[test]
    fn serde_is_a_plain_string() {
        let i = id("000.00.01.H35");
        let j = serde_json::to_string(&i).ok();
        assert_eq!(j.as_deref(), Some("\"000.00.01.H35\""));
        let back: Option<OrganId> = serde_json::from_str("\"000.00.01.H35\"").ok();
        assert_eq!(back, Some(i));
        assert!(serde_json::from_str::<OrganId>("\"000.1137.H53\"").is_err());
        let p: Option<TopicPattern> = serde_json::from_str("\"#.H35\"").ok();
        assert_eq!(p.map(|p| p.to_string()).as_deref(), Some("#.H35"));
    }

    #[test]
    fn topic_patterns_match_like_rabbitmq() {
        let cases: &[(&str, &str, bool)] = &[
            ("#.H35", "000.00.01.H35", true),
            ("#.H35", "000.00.01.H53", false),
            ("#.H35", "H35", true),
            ("*.*.31.H53", "000.21.31.H53", true),
            ("*.*.31.H53", "000.21.32.H53", false),
            ("*.*.31.H53", "21.31.H53", false),
            ("#", "000.00.01.H35", true),
            ("#", "vxp.saas.03", true),
            ("*", "000.00.01.H35", false),
            ("*", "x", true),
            ("000.#", "000", true),
            ("000.#.H35", "000.H35", true),
            ("000.#.H35", "000.00.00.H35", true),
            ("#.00.#", "000.00.01.H35", true),
            ("#.07.#", "000.00.01.H35", false),
            ("*.#", "a", true),
            ("*.#.*", "a", false),
            ("#.#", "a.b", true),
            ("000.00.01.H35", "000.00.01.H35", true),
            ("000.00.01.H35", "000.00.01.H3", false),
        ];
        for (p, k, want) in cases {
            assert_eq!(pat(p).matches(k), *want, "{p} vs {k}");
        }
    }

    #[test]
    fn bad_patterns_are_malformed() {
        for p in ["", "a..b", ".a", "a.", "H#5", "a*.b", "a b", "ắ"] {
            let r = TopicPattern::parse(p);
            assert!(
                r.as_ref().is_err_and(|e| e.reason() == Reason::Malformed),
                "{p:?}: {r:?}"
            );
        }
        assert!(TopicPattern::parse(&"a.".repeat(200)).is_err());
    }

    #[test]
    fn specificity_orders_literal_patterns_first_and_hash_last() {
        let mut pats: Vec<TopicPattern> = [
            "#",
            "*.*.31.H53",
            "#.H35",
            "000.00.01.H35",
            "*.*.*.*",
            "#.31.H53",
        ]
        .into_iter()
        .map(pat)
        .collect();
        pats.sort_by_key(TopicPattern::specificity);
        let order: Vec<&str> = pats.iter().map(TopicPattern::as_str).collect();
        assert_eq!(
            order,
            [
                "000.00.01.H35",
                "*.*.31.H53",
                "#.31.H53",
                "#.H35",
                "*.*.*.*",
                "#"
            ]
        );
    }

    fn code_strategy() -> impl Strategy<Value = String> {
        // Contiguous levels: a non-zero group implies non-zero groups below
        // it, as in real codes.
        (
            1u8..=4,
            1u16..=999,
            1u8..=99,
            1u8..=99,
            b'A'..=b'Z',
            0u8..=99,
        )
            .prop_map(|(level, l4, l3, l2, letter, n)| {
                let l4 = if level >= 4 { l4 } else { 0 };
                let l3 = if level >= 3 { l3 } else { 0 };
                let l2 = if level >= 2 { l2 } else { 0 };
                format!("{l4:03}.{l3:02}.{l2:02}.{}{n:02}", letter as char)
            })
    }

    fn any_code_strategy() -> impl Strategy<Value = String> {
        "[0-9]{3}\\.[0-9]{2}\\.[0-9]{2}\\.[A-Z][0-9]{2}"
    }

    proptest! {
        #[test]
        fn parse_then_display_is_identity(s in any_code_strategy()) {
            let i = OrganId::parse(&s);
            prop_assert!(i.is_ok(), "{s}");
            prop_assert_eq!(i.map(|i| i.to_string()).ok(), Some(s));
        }

        #[test]
        fn parent_is_one_level_up_and_contains_the_child(s in code_strategy()) {
            let i = id(&s);
            match i.parent() {
                Some(p) => {
                    prop_assert_eq!(p.level() + 1, i.level());
                    prop_assert!(i.is_under(&p));
                    prop_assert!(!p.is_under(&i));
                    prop_assert_eq!(p.level1(), i.level1());
                }
                None => prop_assert_eq!(i.level(), 1),
            }
        }

        #[test]
        fn every_ancestor_chain_ends_at_level_1(s in any_code_strategy()) {
            let mut cur = id(&s);
            let mut steps = 0;
            while let Some(p) = cur.parent() {
                prop_assert!(p.level() < cur.level());
                cur = p;
                steps += 1;
                prop_assert!(steps <= 3);
            }
            prop_assert_eq!(cur.level(), 1);
            prop_assert!(id(&s).is_under(&cur));
        }

        #[test]
        fn random_strings_never_panic(s in "\\PC{0,80}", t in any::<Vec<u8>>()) {
            let _ = OrganId::parse(&s);
            let _ = OrganId::parse_with(&s, IdPolicy::Lenient);
            let _ = TopicPattern::parse(&s);
            let lossy = String::from_utf8_lossy(&t);
            let _ = OrganId::parse_with(&lossy, IdPolicy::Lenient);
            if let Ok(p) = TopicPattern::parse(&lossy) {
                let _ = p.matches(&s);
            }
        }

        #[test]
        fn a_pattern_of_the_codes_own_groups_matches_it(
            s in any_code_strategy(),
            mask in proptest::collection::vec(0u8..3, 4),
        ) {
            // Each group kept literal, replaced by `*`, or by `#`.
            let groups: Vec<&str> = s.split('.').collect();
            let p: Vec<String> = groups
                .iter()
                .zip(&mask)
                .map(|(g, m)| match m { 0 => (*g).to_owned(), 1 => "*".to_owned(), _ => "#".to_owned() })
                .collect();
            let p = pat(&p.join("."));
            prop_assert!(p.matches(&s), "{:?} vs {}", p, s);
        }

        #[test]
        fn hash_level1_matches_the_whole_province(s in any_code_strategy(), other in b'A'..=b'Z') {
            let i = id(&s);
            let own = pat(&format!("#.{}", i.level1()));
            prop_assert!(own.matches(i.as_str()));
            let other_l1 = format!("{}{}", other as char, &i.level1()[1..]);
            if other_l1 != i.level1() {
                let foreign = pat(&format!("#.{other_l1}"));
                prop_assert!(!foreign.matches(i.as_str()));
            }
        }
    }
}

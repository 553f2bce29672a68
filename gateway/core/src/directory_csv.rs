//! Reading an agency directory file (CSV) for `lienthong directory import`.
//!
//! The file is what a province's IT office keeps in a spreadsheet, so it is
//! read forgivingly where that is safe (header case, common aliases, spaces,
//! a UTF-8 BOM, short rows) and strictly where a mistake would misroute
//! documents (codes, parents, duplicates). Every bad row is reported with its
//! line in the file and a sentence saying what to fix; the good rows are
//! returned alongside, so the importer decides whether to go on.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, OrErr, Reason, Result};
use crate::organ_id::{IdPolicy, OrganId};
use crate::text::quote;

/// How deliveries reach an agency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    /// The agency pulls its inbox with `Exchange.Receive`.
    #[default]
    Grpc,
    /// Deliveries go to the queue `lienthong.agency.<organ_id>`.
    Amqp,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Grpc => "grpc",
            Channel::Amqp => "amqp",
        }
    }

    /// Case-insensitive; `None` for anything but `grpc` and `amqp`.
    pub fn parse(s: &str) -> Option<Channel> {
        match s.trim().to_ascii_lowercase().as_str() {
            "grpc" => Some(Channel::Grpc),
            "amqp" => Some(Channel::Amqp),
            _ => None,
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One valid row of the directory file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgencyRow {
    /// The physical line of the file where the row starts (header = 1).
    pub line: u64,
    pub organ_id: OrganId,
    pub name: String,
    /// As given, or else the code's own parent (`None` at level 1 and for
    /// test-system ids).
    pub parent: Option<OrganId>,
    /// Empty when the file gives none (likewise telephone, address, website).
    pub email: String,
    pub telephone: String,
    pub address: String,
    pub website: String,
    pub channel: Channel,
    pub active: bool,
    /// Document-signing certificates (PEM files), resolved against the
    /// CSV's directory; not read here. The column may name several,
    /// separated by `;` (a key rollover, or the gateway's own certificate
    /// beside the agency's).
    pub signing_cert: Vec<PathBuf>,
    /// A PEM file (relative to the CSV) holding the client (system)
    /// certificate the agency's software presents under mutual TLS.
    pub client_cert: Option<PathBuf>,
    /// Agencies this one may send in the name of (the `represents` column,
    /// codes separated by `;`), e.g. Văn phòng UBND tỉnh for UBND tỉnh.
    pub represents: Vec<OrganId>,
    /// Columns the gateway does not know, by their header as written
    /// (non-empty values only).
    pub extra: BTreeMap<String, String>,
}

/// A row that was not accepted, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowProblem {
    pub line: u64,
    /// The code as written in the file (may be empty or malformed).
    pub organ_id: String,
    /// What is wrong and what to change.
    pub reason: String,
}

impl fmt::Display for RowProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.organ_id.is_empty() {
            write!(f, "line {}: {}", self.line, self.reason)
        } else {
            write!(f, "line {} ({}): {}", self.line, self.organ_id, self.reason)
        }
    }
}

/// Decree 30/2020 Appendix VI: OrganName holds at most 200 characters.
pub const NAME_MAX_CHARS: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Col {
    OrganId,
    Name,
    Parent,
    Email,
    Telephone,
    Address,
    Website,
    Channel,
    Active,
    SigningCert,
    ClientCert,
    Represents,
}

impl Col {
    fn canonical(self) -> &'static str {
        match self {
            Col::OrganId => "organ_id",
            Col::Name => "name",
            Col::Parent => "parent",
            Col::Email => "email",
            Col::Telephone => "telephone",
            Col::Address => "address",
            Col::Website => "website",
            Col::Channel => "channel",
            Col::Active => "active",
            Col::SigningCert => "signing_cert",
            Col::ClientCert => "client_cert",
            Col::Represents => "represents",
        }
    }

    /// Header spellings met in exports from document-management systems and
    /// hand-made spreadsheets (Vietnamese with and without diacritics).
    fn from_header(h: &str) -> Option<Col> {
        let key: String = h
            .trim()
            .to_lowercase()
            .chars()
            .map(|c| if c == ' ' || c == '-' { '_' } else { c })
            .collect();
        Some(match key.as_str() {
            "organ_id" | "organid" | "ma_dinh_danh" | "madinhdanh" | "mã_định_danh" => {
                Col::OrganId
            }
            "name" | "organ_name" | "organname" | "ten" | "tên" | "ten_co_quan" | "tên_cơ_quan" => {
                Col::Name
            }
            "parent" | "parent_id" | "parent_organ_id" => Col::Parent,
            "email" | "e_mail" => Col::Email,
            "telephone" | "phone" | "tel" | "dien_thoai" | "điện_thoại" => Col::Telephone,
            "address" | "dia_chi" | "địa_chỉ" | "organ_add" | "organadd" => Col::Address,
            "website" | "web" => Col::Website,
            "channel" => Col::Channel,
            "active" => Col::Active,
            "signing_cert" | "signing_certificate" | "cert" | "certificate" => Col::SigningCert,
            "client_cert" | "client_certificate" | "tls_cert" => Col::ClientCert,
            "represents" | "dai_dien" | "đại_diện" => Col::Represents,
            _ => return None,
        })
    }
}

struct Header {
    known: HashMap<Col, usize>,
    /// (index, header as written) of the columns kept in `extra`.
    extra: Vec<(usize, String)>,
    len: usize,
}

fn read_header(raw: &csv::ByteRecord) -> Result<Header> {
    let mut known = HashMap::new();
    let mut extra = Vec::new();
    for (i, field) in raw.iter().enumerate() {
        let text = std::str::from_utf8(field).map_err(|_| {
            Error::malformed(
                "the directory file is not UTF-8; save it as \"CSV UTF-8\" (in Excel: Save As → \
                 CSV UTF-8) and import it again",
            )
        })?;
        let name = if i == 0 {
            text.trim_start_matches('\u{feff}').trim()
        } else {
            text.trim()
        };
        match Col::from_header(name) {
            Some(col) => {
                if let Some(prev) = known.insert(col, i) {
                    return Err(Error::malformed(format!(
                        "the header names the {} column twice (columns {} and {}); keep one",
                        col.canonical(),
                        prev + 1,
                        i + 1
                    )));
                }
            }
            None => {
                let key = if name.is_empty() {
                    format!("column_{}", i + 1)
                } else {
                    name.to_owned()
                };
                extra.push((i, key));
            }
        }
    }
    for required in [Col::OrganId, Col::Name] {
        if !known.contains_key(&required) {
            let found: Vec<String> = raw
                .iter()
                .map(|f| String::from_utf8_lossy(f).trim().to_owned())
                .collect();
            return Err(Error::malformed(format!(
                "the directory file has no {} column; its first row must be a header naming at \
                 least organ_id and name (found: {})",
                required.canonical(),
                quote(&found.join(","))
            )));
        }
    }
    Ok(Header {
        known,
        extra,
        len: raw.len(),
    })
}

/// A row read and checked on its own, before the checks that need the
/// whole file.
struct Pending {
    line: u64,
    raw_id: String,
    row: Option<AgencyRow>,
    explicit_parent: bool,
    problems: Vec<String>,
}

/// Reads a directory CSV (header row first). Returns the valid rows and one
/// problem per invalid row, both in file order; only an unreadable file or
/// header is an error.
pub fn read_directory_csv(
    reader: impl Read,
    base_dir: &Path,
    policy: IdPolicy,
) -> Result<(Vec<AgencyRow>, Vec<RowProblem>)> {
    let data = read_limited(reader)?;
    let lines = LineIndex::new(&data);
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(data.as_slice());
    let header = read_header(rdr.byte_headers().map_err(csv_error)?)?;

    let mut pending: Vec<Pending> = Vec::new();
    let mut first_line: HashMap<OrganId, u64> = HashMap::new();
    let mut record = csv::ByteRecord::new();
    loop {
        match rdr.read_byte_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                // A broken quote swallows the rest of the file: nothing after
                // it can be trusted, so the whole file is refused.
                return Err(csv_error(e));
            }
        }
        let line = record.position().map_or(0, |p| {
            lines.line_at(usize::try_from(p.byte()).unwrap_or(usize::MAX))
        });
        if record.iter().all(|f| f.iter().all(u8::is_ascii_whitespace)) {
            continue;
        }
        let p = check_row(&record, line, &header, base_dir, policy, &mut first_line);
        pending.push(p);
    }

    let in_file: HashSet<&OrganId> = first_line.keys().collect();
    let mut extra_problems: Vec<Option<String>> = vec![None; pending.len()];
    for (i, p) in pending.iter().enumerate() {
        let Some(row) = &p.row else { continue };
        if !p.explicit_parent {
            continue;
        }
        let Some(parent) = &row.parent else { continue };
        if parent == &row.organ_id {
            extra_problems[i] = Some(format!(
                "is given as its own parent; leave parent empty or give the agency above it (for \
                 this code: {})",
                row.organ_id
                    .parent()
                    .map_or_else(|| "none".to_owned(), |p| p.to_string())
            ));
        } else if !in_file.contains(parent) && row.organ_id.parent().as_ref() != Some(parent) {
            extra_problems[i] = Some(format!(
                "names the parent {parent}, which is not in this file and is not this code's own \
                 parent ({}); add a row for {parent}, or leave parent empty",
                row.organ_id
                    .parent()
                    .map_or_else(|| "none".to_owned(), |p| p.to_string())
            ));
        }
    }
    for (i, p) in pending.iter_mut().enumerate() {
        if let Some(msg) = extra_problems[i].take() {
            p.problems.push(msg);
        }
    }
    mark_parent_cycles(&mut pending);

    let mut rows = Vec::new();
    let mut problems = Vec::new();
    for p in pending {
        match p.row {
            Some(row) if p.problems.is_empty() => rows.push(row),
            _ => problems.push(RowProblem {
                line: p.line,
                organ_id: p.raw_id,
                reason: p.problems.join("; "),
            }),
        }
    }
    Ok((rows, problems))
}

/// Directory files are a few hundred kilobytes; the cap only guards against
/// being handed the wrong file.
const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

fn read_limited(reader: impl Read) -> Result<Vec<u8>> {
    let mut data = Vec::new();
    reader
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut data)
        .or_err_with(Reason::Unavailable, |e| {
            format!("cannot read the directory file: {e}; check the path and try again")
        })?;
    if data.len() as u64 > MAX_FILE_BYTES {
        return Err(Error::malformed(format!(
            "the directory file is larger than {} MiB; is it the right file?",
            MAX_FILE_BYTES / (1024 * 1024)
        )));
    }
    Ok(data)
}

/// Physical line numbers from byte offsets. csv's own line counter is one
/// short after a CRLF (it counts the `\n` only once the next record starts)
/// and ignores lone CRs, and spreadsheets on Windows write CRLF.
struct LineIndex<'a> {
    data: &'a [u8],
    newlines: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    fn new(data: &'a [u8]) -> Self {
        // A line ends at "\r\n", a lone "\n" or a lone "\r" (old Mac
        // exports), as csv itself reads them.
        let newlines = data
            .iter()
            .enumerate()
            .filter_map(|(i, &b)| {
                let ends = b == b'\n' || (b == b'\r' && data.get(i + 1) != Some(&b'\n'));
                ends.then_some(i)
            })
            .collect();
        LineIndex { data, newlines }
    }

    /// The line of the first character at or after `offset` that is not a
    /// line terminator (where the record really starts).
    fn line_at(&self, offset: usize) -> u64 {
        let mut o = offset.min(self.data.len());
        while o < self.data.len() && matches!(self.data[o], b'\r' | b'\n') {
            o += 1;
        }
        1 + self.newlines.partition_point(|&p| p < o) as u64
    }
}

fn csv_error(e: csv::Error) -> Error {
    let at = e
        .position()
        .map(|p| format!(" near line {}", p.line()))
        .unwrap_or_default();
    Error::malformed(format!(
        "the directory file cannot be read as CSV{at} ({e}); check for an unclosed quote, and \
         save it as CSV UTF-8"
    ))
    .with_source(e)
}

fn check_row(
    record: &csv::ByteRecord,
    line: u64,
    header: &Header,
    base_dir: &Path,
    policy: IdPolicy,
    first_line: &mut HashMap<OrganId, u64>,
) -> Pending {
    let mut problems = Vec::new();
    let mut non_utf8 = Vec::new();
    let field = |i: usize, non_utf8: &mut Vec<usize>| -> String {
        match record.get(i).map(std::str::from_utf8) {
            Some(Ok(s)) => s.trim().to_owned(),
            Some(Err(_)) => {
                non_utf8.push(i + 1);
                String::new()
            }
            None => String::new(),
        }
    };
    let get = |c: Col, non_utf8: &mut Vec<usize>| -> String {
        header
            .known
            .get(&c)
            .map(|&i| field(i, non_utf8))
            .unwrap_or_default()
    };
    let raw_id = get(Col::OrganId, &mut non_utf8);
    let name = get(Col::Name, &mut non_utf8);
    let raw_parent = get(Col::Parent, &mut non_utf8);
    let raw_channel = get(Col::Channel, &mut non_utf8);
    let raw_active = get(Col::Active, &mut non_utf8);
    let opt = |s: String| if s.is_empty() { None } else { Some(s) };
    let email = get(Col::Email, &mut non_utf8);
    let telephone = get(Col::Telephone, &mut non_utf8);
    let address = get(Col::Address, &mut non_utf8);
    let website = get(Col::Website, &mut non_utf8);
    let cert = get(Col::SigningCert, &mut non_utf8);
    let client = get(Col::ClientCert, &mut non_utf8);
    let raw_represents = get(Col::Represents, &mut non_utf8);
    let mut extra = BTreeMap::new();
    for (i, key) in &header.extra {
        let v = field(*i, &mut non_utf8);
        if !v.is_empty() {
            extra.insert(key.clone(), v);
        }
    }

    if !non_utf8.is_empty() {
        problems.push(format!(
            "column(s) {non_utf8:?} are not UTF-8 text; save the file as CSV UTF-8"
        ));
    }
    if record.len() > header.len {
        problems.push(format!(
            "has {} fields but the header has {}; put double quotes around values that contain a \
             comma",
            record.len(),
            header.len
        ));
    }

    let organ_id = if raw_id.is_empty() {
        problems.push("has no organ_id; fill in the agency's code (e.g. 000.00.01.H35)".to_owned());
        None
    } else {
        match OrganId::parse_with(&raw_id, policy) {
            Ok(id) => Some(id),
            Err(e) => {
                problems.push(e.message().to_owned());
                None
            }
        }
    };
    if let Some(id) = &organ_id {
        if let Some(first) = first_line.get(id) {
            problems.push(format!(
                "repeats the organ_id {id} of line {first}; keep one row per agency (this row is \
                 ignored)"
            ));
        } else {
            first_line.insert(id.clone(), line);
        }
    }

    let name_len = name.chars().count();
    if name.is_empty() {
        problems.push("has no name; fill in the agency's full name".to_owned());
    } else if name_len > NAME_MAX_CHARS {
        problems.push(format!(
            "has a name of {name_len} characters; Decree 30/2020 allows at most {NAME_MAX_CHARS}, \
             shorten it"
        ));
    }

    let explicit_parent = !raw_parent.is_empty();
    let parent = if explicit_parent {
        match OrganId::parse_with(&raw_parent, policy) {
            Ok(p) => Some(p),
            Err(e) => {
                problems.push(format!("parent: {}", e.message()));
                None
            }
        }
    } else {
        organ_id.as_ref().and_then(OrganId::parent)
    };

    let channel = if raw_channel.is_empty() {
        Channel::Grpc
    } else {
        Channel::parse(&raw_channel).unwrap_or_else(|| {
            problems.push(format!(
                "has the channel {}; write grpc or amqp (or leave it empty for grpc)",
                quote(&raw_channel)
            ));
            Channel::Grpc
        })
    };
    let active = match raw_active.to_ascii_lowercase().as_str() {
        "" | "true" | "1" => true,
        "false" | "0" => false,
        _ => {
            problems.push(format!(
                "has active = {}; write true, false, 1 or 0 (or leave it empty for true)",
                quote(&raw_active)
            ));
            true
        }
    };
    let relative = |c: String| {
        let p = Path::new(&c);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base_dir.join(p)
        }
    };
    let signing_cert: Vec<PathBuf> = opt(cert)
        .map(|c| {
            c.split(';')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(|p| relative(p.to_owned()))
                .collect()
        })
        .unwrap_or_default();
    let mut represents = Vec::new();
    for part in raw_represents
        .split([';', ' ', '|'])
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        match OrganId::parse_with(part, policy) {
            Ok(id) => represents.push(id),
            Err(e) => problems.push(format!("represents: {}", e.message())),
        }
    }
    let client_cert = opt(client).map(relative);

    let row = organ_id.map(|organ_id| AgencyRow {
        line,
        organ_id,
        name,
        parent,
        email,
        telephone,
        address,
        website,
        channel,
        active,
        signing_cert,
        client_cert,
        represents,
        extra,
    });
    Pending {
        line,
        raw_id,
        row,
        explicit_parent,
        problems,
    }
}

/// Explicit parents can loop (A's parent B, B's parent A); implied ones
/// cannot, since each step lowers the level.
fn mark_parent_cycles(pending: &mut [Pending]) {
    let parent_of: HashMap<OrganId, OrganId> = pending
        .iter()
        .filter_map(|p| p.row.as_ref())
        .filter_map(|r| r.parent.clone().map(|parent| (r.organ_id.clone(), parent)))
        .collect();
    for p in pending.iter_mut() {
        let Some(row) = &p.row else { continue };
        if !p.problems.is_empty() {
            continue;
        }
        let start = &row.organ_id;
        let mut path = vec![start.clone()];
        let mut cur = parent_of.get(start);
        while let Some(c) = cur {
            if c == start {
                path.push(c.clone());
                let shown: Vec<String> = path.iter().map(ToString::to_string).collect();
                p.problems.push(format!(
                    "its parents loop back to it ({}); correct the parent column of one of these rows",
                    shown.join(" → ")
                ));
                break;
            }
            if path.contains(c) || path.len() > parent_of.len() {
                break;
            }
            path.push(c.clone());
            cur = parent_of.get(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str, policy: IdPolicy) -> (Vec<AgencyRow>, Vec<RowProblem>) {
        match read_directory_csv(text.as_bytes(), Path::new("/etc/lienthong"), policy) {
            Ok(r) => r,
            Err(e) => panic!("{}", e.chain()),
        }
    }

    fn id(s: &str) -> OrganId {
        match OrganId::parse_with(s, IdPolicy::Lenient) {
            Ok(i) => i,
            Err(e) => panic!("{e}"),
        }
    }

    fn problem_at(problems: &[RowProblem], line: u64) -> &RowProblem {
        match problems.iter().find(|p| p.line == line) {
            Some(p) => p,
            None => panic!("no problem on line {line}: {problems:#?}"),
        }
    }

    #[test]
    fn reads_good_rows_with_defaults_and_extras() {
        let text = "\u{feff}Organ_ID, Name ,Email,telephone,address,website,channel,active,signing_cert,Ghi chú,\n\
000.00.00.H35,Ủy ban nhân dân tỉnh Lai Châu,ubnd@laichau.gov.vn,0213 3876 111,\"Tầng 1, Khu hành chính\",https://laichau.gov.vn,,,certs/ubnd.pem,tỉnh,\n\
000.00.01.H35,Văn phòng UBND tỉnh,,,,,AMQP,0,/abs/vp.pem,,\n\
000.21.31.H35,Xã A,,,,,grpc,TRUE,,,\n";
        let (rows, problems) = read(text, IdPolicy::Strict);
        assert!(problems.is_empty(), "{problems:#?}");
        assert_eq!(rows.len(), 3);

        let r = &rows[0];
        assert_eq!(r.line, 2);
        assert_eq!(r.organ_id, id("000.00.00.H35"));
        assert_eq!(r.name, "Ủy ban nhân dân tỉnh Lai Châu");
        assert_eq!(r.parent, None);
        assert_eq!(r.email, "ubnd@laichau.gov.vn");
        assert_eq!(r.telephone, "0213 3876 111");
        assert_eq!(r.address, "Tầng 1, Khu hành chính");
        assert_eq!(r.website, "https://laichau.gov.vn");
        assert_eq!(r.channel, Channel::Grpc);
        assert!(r.active);
        assert_eq!(
            r.signing_cert,
            [PathBuf::from("/etc/lienthong/certs/ubnd.pem")]
        );
        assert_eq!(r.extra.get("Ghi chú").map(String::as_str), Some("tỉnh"));
        assert_eq!(
            r.extra.len(),
            1,
            "empty extra values are dropped: {:?}",
            r.extra
        );

        let r = &rows[1];
        assert_eq!(r.parent, Some(id("000.00.00.H35")));
        assert_eq!(r.channel, Channel::Amqp);
        assert!(!r.active);
        assert_eq!(r.signing_cert, [PathBuf::from("/abs/vp.pem")]);
        assert_eq!(r.email, "");

        assert_eq!(
            rows[2].parent,
            Some(id("000.00.31.H35")),
            "implied even when absent from the file"
        );
    }

    #[test]
    fn reports_every_bad_row_with_its_line_and_a_sentence() {
        let long = "x".repeat(NAME_MAX_CHARS + 1);
        let ok_long = "ắ".repeat(NAME_MAX_CHARS);
        let text = format!(
            "organ_id,name,parent,channel,active\n\
000.00.00.H35,UBND tỉnh,,,\n\
000.1137.H35,Phòng Y tế,,,\n\
000.00.01.H35,,,,\n\
000.00.02.H35,{long},,,\n\
000.00.03.H35,{ok_long},,,\n\
000.00.04.H35,Sở A,000.00.00.H53,,\n\
000.00.05.H35,Sở B,000.00.04.H35,,\n\
000.00.06.H35,Sở C,000.00.00.H35,,\n\
000.00.07.H35,Sở D,bad parent,,\n\
000.00.08.H35,Sở E,,kafka,\n\
000.00.09.H35,Sở F,,,maybe\n\
000.00.00.H35,UBND tỉnh (again),,,\n\
000.00.10.H35,Sở G, có dấu phẩy,x,,\n\
,Không mã,,,\n\
,,,,\n\
000.00.11.H35,\"Sở H\nhai dòng\",,,\n\
000.00.12.H35,Sở I,000.00.12.H35,,\n"
        );
        let (rows, problems) = read(&text, IdPolicy::Strict);
        let good: Vec<(u64, &str)> = rows.iter().map(|r| (r.line, r.organ_id.as_str())).collect();
        assert_eq!(
            good,
            [
                (2, "000.00.00.H35"),
                (6, "000.00.03.H35"),
                (8, "000.00.05.H35"),
                (9, "000.00.06.H35"),
                (17, "000.00.11.H35"),
            ]
        );
        assert_eq!(
            rows[2].parent,
            Some(id("000.00.04.H35")),
            "a parent elsewhere in the file"
        );
        assert_eq!(rows[4].name, "Sở H\nhai dòng");

        let lines: Vec<u64> = problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, [3, 4, 5, 7, 10, 11, 12, 13, 14, 15, 19]);

        let p = problem_at(&problems, 3);
        assert_eq!(p.organ_id, "000.1137.H35");
        assert!(p.reason.contains("DDD.DD.DD.LNN"), "{}", p.reason);
        assert!(problem_at(&problems, 4).reason.contains("no name"));
        assert!(problem_at(&problems, 5).reason.contains("201 characters"));
        let p = problem_at(&problems, 7);
        assert!(
            p.reason.contains("000.00.00.H53") && p.reason.contains("not in this file"),
            "{}",
            p.reason
        );
        assert!(problem_at(&problems, 10).reason.starts_with("parent:"));
        assert!(problem_at(&problems, 11).reason.contains("\"kafka\""));
        assert!(problem_at(&problems, 12).reason.contains("\"maybe\""));
        let p = problem_at(&problems, 13);
        assert!(
            p.reason.contains("line 2"),
            "the second one is the problem: {}",
            p.reason
        );
        assert!(
            problem_at(&problems, 14)
                .reason
                .contains("6 fields but the header has 5")
        );
        let p = problem_at(&problems, 15);
        assert_eq!(p.organ_id, "");
        assert!(p.reason.contains("no organ_id"));
        assert!(problem_at(&problems, 19).reason.contains("its own parent"));
        assert!(
            problem_at(&problems, 13)
                .to_string()
                .starts_with("line 13 (000.00.00.H35): ")
        );
    }

    #[test]
    fn line_numbers_are_physical_lines_with_lf_and_crlf() {
        let lf = "organ_id,name\n\n000.00.01.H35,\"Văn phòng\nUBND\"\nbad,X\n   \n000.00.02.H35,Y";
        for text in [
            lf.to_owned(),
            lf.replace('\n', "\r\n"),
            lf.replace('\n', "\r"),
        ] {
            let (rows, problems) = read(&text, IdPolicy::Strict);
            let lines: Vec<u64> = rows.iter().map(|r| r.line).collect();
            assert_eq!(lines, [3, 7], "{text:?}");
            assert_eq!(problems.len(), 1, "{text:?}");
            assert_eq!(problems[0].line, 5, "{text:?}");
        }
    }

    #[test]
    fn explicit_parents_that_loop_are_refused() {
        let text = "organ_id,name,parent\n\
vxp.a,A,vxp.b\n\
vxp.b,B,vxp.a\n\
vxp.c,C,vxp.a\n";
        let (rows, problems) = read(text, IdPolicy::Lenient);
        assert_eq!(problems.iter().map(|p| p.line).collect::<Vec<_>>(), [2, 3]);
        assert!(
            problems[0].reason.contains("vxp.a → vxp.b → vxp.a"),
            "{}",
            problems[0].reason
        );
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].organ_id, id("vxp.c"));
    }

    #[test]
    fn the_policy_decides_about_test_system_ids() {
        let text = "ma_dinh_danh,ten\nvxp.saas.03,Hệ thống thử nghiệm\n000.00.01.H35,VP\n";
        let (rows, problems) = read(text, IdPolicy::Lenient);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(rows[0].parent, None);
        let (rows, problems) = read(text, IdPolicy::Strict);
        assert_eq!(rows.len(), 1);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].line, 2);
    }

    #[test]
    fn unusable_files_are_errors() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "no organ_id column"),
            (b"code;name\n000.00.01.H35;VP\n", "no organ_id column"),
            (b"organ_id,email\n", "no name column"),
            (b"organ_id,name,ten\n", "twice"),
            (b"organ_id,n\xe9m\n", "UTF-8"),
        ];
        for (bytes, want) in cases {
            let r = read_directory_csv(*bytes, Path::new("."), IdPolicy::Strict);
            match r {
                Ok(v) => panic!("{bytes:?} was read: {v:?}"),
                Err(e) => {
                    assert_eq!(e.reason(), Reason::Malformed);
                    assert!(e.message().contains(want), "{want}: {}", e.message());
                }
            }
        }
    }

    #[test]
    fn a_non_utf8_row_is_a_row_problem_not_a_file_error() {
        let bytes = b"organ_id,name\n000.00.01.H35,V\xe3n ph\xf2ng\n000.00.02.H35,OK\n";
        let (rows, problems) =
            match read_directory_csv(&bytes[..], Path::new("."), IdPolicy::Strict) {
                Ok(r) => r,
                Err(e) => panic!("{e}"),
            };
        assert_eq!(rows.len(), 1);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].line, 2);
        assert!(
            problems[0].reason.contains("UTF-8"),
            "{}",
            problems[0].reason
        );
    }

    #[test]
    fn channel_names_round_trip() {
        for c in [Channel::Grpc, Channel::Amqp] {
            assert_eq!(Channel::parse(c.as_str()), Some(c));
            assert_eq!(Channel::parse(&c.as_str().to_uppercase()), Some(c));
        }
        assert_eq!(Channel::parse("http"), None);
        assert_eq!(Channel::default(), Channel::Grpc);
    }

    #[test]
    fn tay_ninh_sample() {
        let Some(dir) = lienthong_testkit::reference_samples("tay_ninh_sample", "directory") else {
            return;
        };
        let path = dir.join("tay-ninh-H53.csv");
        let base = path.parent().unwrap_or(Path::new("."));
        // The lenient policy exists for test ids, not for mistyped real codes:
        // both policies must single out the same row.
        for policy in [IdPolicy::Strict, IdPolicy::Lenient] {
            let read = std::fs::File::open(&path)
                .map_err(Error::from)
                .and_then(|f| read_directory_csv(f, base, policy));
            let (rows, problems) = match read {
                Ok(r) => r,
                Err(e) => panic!("{}", e.chain()),
            };
            let bad_codes: Vec<&RowProblem> = problems
                .iter()
                .filter(|p| p.reason.contains("DDD.DD.DD.LNN"))
                .collect();
            assert_eq!(bad_codes.len(), 1, "{policy:?}: {bad_codes:#?}");
            assert_eq!(bad_codes[0].line, 183);
            assert_eq!(bad_codes[0].organ_id, "000.1137.H53");

            // The file also lists seven ministry agencies twice (added again
            // at its end); each second row is reported, and nothing else.
            let dups: Vec<u64> = problems
                .iter()
                .filter(|p| p.reason.contains("keep one row per agency"))
                .map(|p| p.line)
                .collect();
            assert_eq!(dups, [449, 450, 451, 453, 454, 455, 456], "{policy:?}");
            assert_eq!(problems.len(), 8, "{policy:?}: {problems:#?}");
            assert_eq!(rows.len() + problems.len(), 455);

            let vp = rows.iter().find(|r| r.organ_id.as_str() == "000.00.01.H53");
            assert!(vp.is_some_and(|r| r.line == 3
                && r.parent.as_ref().map(OrganId::as_str) == Some("000.00.00.H53")
                && r.email == "000.00.01.H53@bmail.vn"));
            // A quoted name with a comma stays one field.
            assert!(
                rows.iter()
                    .any(|r| r.name == "Sở Văn hóa, Thể thao và Du lịch")
            );
        }
    }
}

//! `lienthong directory export`: the directory's public columns, for the
//! Ministry's national list of agency identifiers and for another gateway
//! (`directory import` reads the CSV and the JSON back), with a detached
//! signature beside the file (`FILE.sig`, [`manifest_sig`]); and what
//! `directory import` does with such a file before importing it: checks
//! `FILE.sig` when it is there, and reads a JSON export as the same rows.
//!
//! Only public columns leave: code, name, e-mail, address, telephone (the
//! national list's columns, in its order), then parent, website, active.
//! Never the channel, certificates, representations, extra columns or
//! times. Rows are ordered by code, so that two exports of the same
//! directory are the same bytes (the JSON's `generated_at` and the XLSX's
//! creation time aside).

use std::borrow::Cow;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use lienthong_core::rows;
use lienthong_core::store::Store;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::manifest_sig;

/// The payload type of `FILE.sig` beside an export (DSSE's pre-authentication
/// encoding of the file's exact bytes).
pub const PAYLOAD_TYPE: &str = "application/vnd.lienthong.directory-export.v1";

/// The columns, as the header row names them (CSV, XLSX) and as the JSON's
/// keys: the importer's canonical names (`directory_csv.rs`), the national
/// list's five first and in its order.
pub const COLUMNS: [&str; 8] = [
    "organ_id",
    "name",
    "email",
    "address",
    "telephone",
    "parent",
    "website",
    "active",
];

/// A UTF-8 byte order mark: Excel reads a CSV without one in the machine's
/// legacy code page, which garbles Vietnamese. The importer skips it.
const BOM: &[u8] = b"\xEF\xBB\xBF";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// UTF-8 with a byte order mark, CRLF: what `directory import` reads.
    Csv,
    /// One sheet, for people (Excel, LibreOffice).
    Xlsx,
    /// `{generated_at, gateway, count, agencies: [...]}`.
    Json,
}

impl ExportFormat {
    fn as_str(self) -> &'static str {
        match self {
            ExportFormat::Csv => "csv",
            ExportFormat::Xlsx => "xlsx",
            ExportFormat::Json => "json",
        }
    }
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[arg(long, value_enum, default_value_t = ExportFormat::Csv)]
    pub format: ExportFormat,
    /// The file to write (and FILE.sig beside it). Without it the CSV or
    /// JSON goes to standard output, unsigned; XLSX needs it.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write FILE.sig unsigned when the gateway has no receipt key
    /// (receipts.key, receipts.cert).
    #[arg(long)]
    pub unsigned: bool,
}

/// One agency as exported: the public columns, in [`COLUMNS`]' order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicAgency {
    pub organ_id: String,
    pub name: String,
    pub email: String,
    pub address: String,
    pub telephone: String,
    /// `null` in JSON (empty in CSV) at level 1 and for test-system ids.
    pub parent: Option<String>,
    pub website: String,
    pub active: bool,
}

impl PublicAgency {
    fn from_row(a: &rows::AgencyRow) -> PublicAgency {
        PublicAgency {
            organ_id: a.organ_id.clone(),
            name: a.name.clone(),
            email: a.email.clone(),
            address: a.address.clone(),
            telephone: a.telephone.clone(),
            parent: a.parent.clone().filter(|p| !p.is_empty()),
            website: a.website.clone(),
            active: a.active,
        }
    }

    /// The row's cells, in [`COLUMNS`]' order.
    fn cells(&self) -> [Cow<'_, str>; 8] {
        [
            Cow::Borrowed(self.organ_id.as_str()),
            Cow::Borrowed(self.name.as_str()),
            Cow::Borrowed(self.email.as_str()),
            Cow::Borrowed(self.address.as_str()),
            Cow::Borrowed(self.telephone.as_str()),
            Cow::Borrowed(self.parent.as_deref().unwrap_or("")),
            Cow::Borrowed(self.website.as_str()),
            Cow::Borrowed(if self.active { "true" } else { "false" }),
        ]
    }
}

/// The JSON export.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonExport {
    /// RFC 3339, UTC, to the second.
    pub generated_at: String,
    /// The subject of the gateway's receipt certificate, when it has one.
    pub gateway: Option<String>,
    pub count: usize,
    pub agencies: Vec<PublicAgency>,
}

/// The directory's own agencies, public columns only, ordered by code.
/// Agencies kept from a peer gateway's directory updates (`source`) are its
/// to publish, not this gateway's: they are left out.
pub fn public_agencies(rows: &[rows::AgencyRow]) -> Vec<PublicAgency> {
    let mut out: Vec<PublicAgency> = rows
        .iter()
        .filter(|a| a.source.is_none())
        .map(PublicAgency::from_row)
        .collect();
    out.sort_by(|a, b| a.organ_id.cmp(&b.organ_id));
    out
}

/// The CSV: a BOM, the header, one row per agency, CRLF line ends.
pub fn to_csv(agencies: &[PublicAgency]) -> Result<Vec<u8>> {
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(BOM.to_vec());
    w.write_record(COLUMNS)?;
    for a in agencies {
        w.write_record(a.cells().iter().map(|c| c.as_bytes()))?;
    }
    w.into_inner()
        .map_err(|e| anyhow::anyhow!("cannot write the CSV: {}", e.error()))
}

/// The JSON, pretty-printed, with a final newline.
pub fn to_json(
    agencies: Vec<PublicAgency>,
    generated_at: String,
    gateway: Option<String>,
) -> Result<Vec<u8>> {
    let doc = JsonExport {
        generated_at,
        gateway,
        count: agencies.len(),
        agencies,
    };
    let mut out = serde_json::to_vec_pretty(&doc)?;
    out.push(b'\n');
    Ok(out)
}

/// The XLSX: one sheet named `directory`, the header bold and frozen, each
/// column as wide as its longest cell (within bounds), every cell text but
/// `active` (so that codes and telephone numbers keep their zeros).
pub fn to_xlsx(
    agencies: &[PublicAgency],
    generated_at_unix: i64,
    gateway: Option<&str>,
) -> Result<Vec<u8>> {
    use rust_xlsxwriter::{DocProperties, ExcelDateTime, Format, Workbook};

    let x = |e: rust_xlsxwriter::XlsxError| anyhow::anyhow!("cannot write the XLSX: {e}");
    let mut wb = Workbook::new();
    // The creation time is the export's, not the clock's at saving: the
    // same directory exported at the same second is the same file.
    let created = ExcelDateTime::from_timestamp(generated_at_unix).map_err(x)?;
    let mut props = DocProperties::new()
        .set_title("Danh bạ mã định danh cơ quan, đơn vị")
        .set_comment("lienthong directory export")
        .set_creation_datetime(&created);
    if let Some(g) = gateway {
        props = props.set_custom_property("gateway", g);
    }
    wb.set_properties(&props);
    let bold = Format::new().set_bold();
    let ws = wb.add_worksheet();
    ws.set_name("directory").map_err(x)?;
    let mut widths: [usize; 8] = [0; 8];
    for (c, h) in COLUMNS.iter().enumerate() {
        ws.write_string_with_format(0, col(c), *h, &bold)
            .map_err(x)?;
        widths[c] = h.chars().count();
    }
    for (r, a) in agencies.iter().enumerate() {
        let row = u32::try_from(r + 1).context("too many agencies for one sheet")?;
        for (c, cell) in a.cells().iter().enumerate() {
            if COLUMNS[c] == "active" {
                ws.write_boolean(row, col(c), a.active).map_err(x)?;
            } else {
                ws.write_string(row, col(c), cell.as_ref()).map_err(x)?;
            }
            widths[c] = widths[c].max(cell.chars().count());
        }
    }
    for (c, w) in widths.iter().enumerate() {
        // A little room for the filter button; long names wrap no lower.
        let w = (*w).clamp(8, 60) + 2;
        ws.set_column_width(col(c), w as f64).map_err(x)?;
    }
    ws.set_freeze_panes(1, 0).map_err(x)?;
    let last = u32::try_from(agencies.len()).context("too many agencies for one sheet")?;
    ws.autofilter(0, 0, last, col(COLUMNS.len() - 1))
        .map_err(x)?;
    wb.save_to_buffer().map_err(x)
}

fn col(c: usize) -> u16 {
    // COLUMNS has 8 entries.
    u16::try_from(c).unwrap_or(u16::MAX)
}

/// `FILE.sig` beside `file`.
pub fn sig_path(file: &Path) -> PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push(".sig");
    PathBuf::from(s)
}

/// The subject of `receipts.cert`, when configured.
fn gateway_subject(cfg: &Config) -> Result<Option<String>> {
    let Some(cert) = &cfg.receipts.cert else {
        return Ok(None);
    };
    let der = lienthong_core::signing::load_certificate_pem(cert)
        .map_err(|e| anyhow::anyhow!("{}", e.message()))
        .context("loading receipts.cert")?;
    let info = lienthong_core::signing::describe_certificate(&der)
        .map_err(|e| anyhow::anyhow!("{}", e.message()))
        .context("reading receipts.cert")?;
    Ok(Some(info.subject))
}

/// `lienthong directory export`.
pub async fn export(cfg: &Config, store: &Store, args: ExportArgs) -> Result<ExitCode> {
    if args.format == ExportFormat::Xlsx && args.out.is_none() {
        bail!(
            "--format xlsx needs --out FILE: a spreadsheet is not written to standard output \
             (csv and json are)"
        );
    }
    // The key first: a missing one stops the export before anything is
    // written.
    let signer = match &args.out {
        Some(_) => manifest_sig::signer(cfg, args.unsigned, "the directory export")?,
        None => None,
    };
    let rows = store
        .agencies()
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.chain()))?;
    let agencies = public_agencies(&rows);
    let count = agencies.len();
    let now = time::OffsetDateTime::now_utc();
    let now = now.replace_nanosecond(0).unwrap_or(now);
    let generated_at = now
        .format(&time::format_description::well_known::Rfc3339)
        .context("formatting the time of the export")?;
    let gateway = gateway_subject(cfg)?;
    let bytes = match args.format {
        ExportFormat::Csv => to_csv(&agencies)?,
        ExportFormat::Json => to_json(agencies, generated_at, gateway)?,
        ExportFormat::Xlsx => to_xlsx(&agencies, now.unix_timestamp(), gateway.as_deref())?,
    };
    let Some(out) = &args.out else {
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(&bytes)?;
        stdout.flush()?;
        eprintln!(
            "{count} agencies exported to standard output, not signed: write the export with \
             --out FILE to have FILE.sig beside it"
        );
        return Ok(ExitCode::SUCCESS);
    };
    let sig = manifest_sig::sign(signer.as_ref(), PAYLOAD_TYPE, &bytes)?;
    let sig_file = sig_path(out);
    write_new(out, &bytes)?;
    write_new(&sig_file, &sig)?;
    println!(
        "wrote {count} agencies to {} ({}), and {} ({})",
        out.display(),
        args.format.as_str(),
        sig_file.display(),
        if signer.is_some() {
            "signed with the receipt key; the receiving gateway checks it against its \
             receipts.cert or receipts.trusted_signers"
        } else {
            "UNSIGNED: --unsigned, and the gateway has no receipt key"
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// Writes beside and renames, so that a reader never sees half a file.
fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".partial");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// A directory file read for `directory import`, checked against `FILE.sig`
/// when there is one.
pub struct ImportFile {
    /// The rows as CSV: the file itself, or a JSON export's rows written as
    /// the CSV export writes them.
    pub csv: Vec<u8>,
    /// The file as it is on disk.
    pub sha256: [u8; 32],
    /// What the signature check found, for the operator.
    pub signature: Option<String>,
}

/// Reads `file` once (what is checked is what is imported), checks
/// `FILE.sig` when it is there, and reads a `.json` export as its rows.
/// A signature that does not match, an `.xlsx`, or a JSON file that is not
/// an export is an error: nothing is imported.
pub fn read_for_import(cfg: &Config, file: &Path) -> Result<ImportFile> {
    let ext = file
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    if matches!(ext.as_str(), "xlsx" | "xls" | "ods") {
        bail!(
            "{} is a spreadsheet: `directory import` reads CSV (save the sheet as \"CSV UTF-8\") \
             or the JSON of `directory export --format json`; nothing was imported",
            file.display()
        );
    }
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let sha256 = lienthong_core::sha256(&bytes);
    let sig_file = sig_path(file);
    let signature = match std::fs::read(&sig_file) {
        Ok(sig) => {
            let what = format!("the directory file {}", file.display());
            let signed = manifest_sig::verify(cfg, PAYLOAD_TYPE, &what, &bytes, &sig, true)
                .map_err(|e| anyhow::anyhow!("{e:#}; nothing was imported"))?;
            Some(if signed {
                format!(
                    "{} matches: the file is as a gateway of receipts.cert / \
                     receipts.trusted_signers exported it",
                    sig_file.display()
                )
            } else {
                format!(
                    "{} says the export was made unsigned (--unsigned): nothing to check",
                    sig_file.display()
                )
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(anyhow::Error::from(e).context(format!(
                "cannot read {}; nothing was imported",
                sig_file.display()
            )));
        }
    };
    let csv = if ext == "json" {
        let doc: JsonExport = serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{} is not the JSON of `lienthong directory export --format json`; nothing was \
                 imported",
                file.display()
            )
        })?;
        if doc.count != doc.agencies.len() {
            bail!(
                "{} says count {} but lists {} agencies: is it cut short? Nothing was imported",
                file.display(),
                doc.count,
                doc.agencies.len()
            );
        }
        to_csv(&doc.agencies)?
    } else {
        bytes
    };
    Ok(ImportFile {
        csv,
        sha256,
        signature,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use lienthong_core::directory::{ChangedBy, import_csv_data};
    use lienthong_core::directory_csv::{Channel, read_directory_csv};
    use lienthong_core::organ_id::IdPolicy;
    use lienthong_core::store::{Migrations, WriterId};

    /// A directory as an operator's import leaves it in the store: with a
    /// channel, extra columns and a represents column, none of which leave.
    const IMPORTED: &str = "organ_id,name,parent,email,telephone,address,website,channel,active,represents,Ghi chú\n\
000.00.00.H35,Ủy ban nhân dân tỉnh Lai Châu,,ubnd@laichau.gov.vn,0213 3876 111,Lai Châu,,,,,\n\
000.00.01.H35,Văn phòng UBND tỉnh,,vp@laichau.gov.vn,+84 213 3876 112,\"Tầng 1, \"\"Khu\"\" hành chính\nphường Tân Phong\",https://laichau.gov.vn,amqp,,000.00.00.H35,nội bộ\n\
000.21.31.H35,Xã A,,,,,,,false,,\n\
000.00.02.H35,Sở Nội vụ,000.00.00.H35,,,,,grpc,1,,\n\
vxp.saas.03,Hệ thống thử nghiệm,,,,,,,,,\n";

    async fn stored(csv: &str) -> (tempfile::TempDir, Vec<rows::AgencyRow>) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = Store::open(&url, WriterId::main(), Migrations::Apply)
            .await
            .unwrap();
        let path = dir.path().join("danh-ba.csv");
        let out = import_csv_data(
            &store,
            csv.as_bytes(),
            &path,
            &lienthong_core::sha256(csv.as_bytes()),
            false,
            IdPolicy::Lenient,
            &ChangedBy::cli("test"),
        )
        .await
        .unwrap();
        assert!(out.applied, "{:?}", out.problems);
        let rows = store.agencies().await.unwrap();
        (dir, rows)
    }

    fn agency(organ_id: &str, name: &str, parent: Option<&str>, active: bool) -> PublicAgency {
        PublicAgency {
            organ_id: organ_id.into(),
            name: name.into(),
            email: format!("{organ_id}@bmail.vn"),
            address: "Tây Ninh".into(),
            telephone: "0975280222".into(),
            parent: parent.map(Into::into),
            website: String::new(),
            active,
        }
    }

    #[test]
    fn the_columns_are_the_json_keys_in_order() {
        let a = agency(
            "000.00.01.H53",
            "Văn phòng UBND tỉnh",
            Some("000.00.00.H53"),
            true,
        );
        let text = serde_json::to_string(&a).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v.as_object().unwrap().len(), COLUMNS.len());
        let positions: Vec<usize> = COLUMNS
            .iter()
            .map(|c| {
                text.find(&format!("\"{c}\":"))
                    .unwrap_or_else(|| panic!("no {c} in {text}"))
            })
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{text}");
        assert_eq!(a.cells().len(), COLUMNS.len());
        assert_eq!(
            a.cells()[COLUMNS.iter().position(|c| *c == "parent").unwrap()],
            "000.00.00.H53"
        );
    }

    #[test]
    fn the_csv_has_a_bom_crlf_and_the_importers_header() {
        let csv = to_csv(&[agency("000.00.00.H53", "UBND Tỉnh Tây Ninh", None, true)]).unwrap();
        assert!(csv.starts_with(BOM));
        let text = std::str::from_utf8(&csv[BOM.len()..]).unwrap();
        assert_eq!(
            text,
            "organ_id,name,email,address,telephone,parent,website,active\r\n\
             000.00.00.H53,UBND Tỉnh Tây Ninh,000.00.00.H53@bmail.vn,Tây Ninh,0975280222,,,true\r\n"
        );
        // The national list's header (shared/samples) is where ours begins.
        assert!(text.starts_with("organ_id,name,email,address,telephone,"));
    }

    /// What the store holds becomes the public columns, and only those;
    /// every column goes back through the importer into the field it came
    /// from: the CSV round-trips through `directory import`.
    #[tokio::test]
    async fn the_store_to_csv_to_importer_round_trip() {
        let (_dir, rows) = stored(IMPORTED).await;
        let agencies = public_agencies(&rows);
        let order: Vec<&str> = agencies.iter().map(|a| a.organ_id.as_str()).collect();
        assert_eq!(
            order,
            [
                "000.00.00.H35",
                "000.00.01.H35",
                "000.00.02.H35",
                "000.21.31.H35",
                "vxp.saas.03"
            ]
        );
        let vp = &agencies[1];
        assert_eq!(vp.name, "Văn phòng UBND tỉnh");
        assert_eq!(vp.email, "vp@laichau.gov.vn");
        assert_eq!(vp.telephone, "+84 213 3876 112");
        assert_eq!(vp.address, "Tầng 1, \"Khu\" hành chính\nphường Tân Phong");
        assert_eq!(vp.website, "https://laichau.gov.vn");
        assert_eq!(
            vp.parent.as_deref(),
            Some("000.00.00.H35"),
            "the implied parent"
        );
        assert_eq!(agencies[0].parent, None);
        assert_eq!(agencies[4].parent, None);
        assert!(!agencies[3].active && agencies[2].active);

        let csv = to_csv(&agencies).unwrap();
        let json = to_json(agencies.clone(), "t".into(), None).unwrap();
        for text in [&csv, &json] {
            let text = String::from_utf8_lossy(text);
            for internal in ["amqp", "grpc", "Ghi chú", "nội bộ", "represents", "channel"] {
                assert!(!text.contains(internal), "{internal} in {text}");
            }
        }

        let (read, problems) =
            read_directory_csv(csv.as_slice(), Path::new("."), IdPolicy::Lenient).unwrap();
        assert!(problems.is_empty(), "{problems:#?}");
        assert_eq!(read.len(), agencies.len());
        for (r, a) in read.iter().zip(&agencies) {
            assert_eq!(r.organ_id.as_str(), a.organ_id);
            assert_eq!(r.name, a.name);
            assert_eq!(r.email, a.email);
            assert_eq!(r.address, a.address);
            assert_eq!(r.telephone, a.telephone);
            assert_eq!(r.parent.as_ref().map(|p| p.as_str()), a.parent.as_deref());
            assert_eq!(r.website, a.website);
            assert_eq!(r.active, a.active);
            assert_eq!(
                r.channel,
                Channel::Grpc,
                "not exported: the importer's default"
            );
            assert!(r.extra.is_empty() && r.represents.is_empty());
        }

        // And a second store made from the export exports the same bytes.
        let again = String::from_utf8(csv.clone()).unwrap();
        let (_dir2, rows2) = stored(&again).await;
        assert_eq!(to_csv(&public_agencies(&rows2)).unwrap(), csv);
    }

    #[test]
    fn the_same_directory_is_the_same_bytes() {
        let mut agencies = vec![
            agency("000.00.02.H53", "Sở Nội vụ", Some("000.00.00.H53"), true),
            agency(
                "000.00.01.H53",
                "Văn phòng UBND tỉnh",
                Some("000.00.00.H53"),
                false,
            ),
        ];
        agencies.sort_by(|a, b| a.organ_id.cmp(&b.organ_id));
        let j1 = to_json(agencies.clone(), "x".into(), Some("CN=gw".into())).unwrap();
        let j2 = to_json(agencies.clone(), "x".into(), Some("CN=gw".into())).unwrap();
        assert_eq!(j1, j2);
        let x1 = to_xlsx(&agencies, 1_750_000_000, Some("CN=gw")).unwrap();
        let x2 = to_xlsx(&agencies, 1_750_000_000, Some("CN=gw")).unwrap();
        assert_eq!(x1, x2);
        assert!(x1.starts_with(b"PK"));
    }

    #[test]
    fn a_json_export_reads_back_as_the_same_csv() {
        let agencies = vec![
            agency("000.00.00.H53", "UBND Tỉnh Tây Ninh", None, true),
            agency(
                "000.00.01.H53",
                "Văn phòng UBND tỉnh",
                Some("000.00.00.H53"),
                true,
            ),
        ];
        let json = to_json(agencies.clone(), "2026-01-01T00:00:00Z".into(), None).unwrap();
        let doc: JsonExport = serde_json::from_slice(&json).unwrap();
        assert_eq!(doc.count, 2);
        assert_eq!(doc.gateway, None);
        assert_eq!(to_csv(&doc.agencies).unwrap(), to_csv(&agencies).unwrap());
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["agencies"][0]["parent"], serde_json::Value::Null);
        assert_eq!(v["agencies"][1]["parent"], "000.00.00.H53");
        assert_eq!(v["agencies"][1]["active"], true);
    }

    #[test]
    fn sig_path_is_beside_the_file() {
        assert_eq!(
            sig_path(Path::new("/tmp/danh-ba.csv")),
            PathBuf::from("/tmp/danh-ba.csv.sig")
        );
    }
}

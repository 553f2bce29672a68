//! Report files: CSV (UTF-8 with a byte-order mark, so that Excel shows
//! Vietnamese letters), JSON and XLSX. Column headers are Vietnamese by
//! default, English on request.

use rust_xlsxwriter::{Format as XFormat, Workbook, XlsxError};

use super::{AgencyRow, Lang, Report, STATUS_CODES, reason_vi, status_words};
use lienthong_types::error::{Error, Reason, Result};

/// A report file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Json,
    Xlsx,
}

impl Format {
    pub fn parse(s: &str) -> Result<Format> {
        match s.trim().to_ascii_lowercase().as_str() {
            "csv" => Ok(Format::Csv),
            "json" => Ok(Format::Json),
            "xlsx" => Ok(Format::Xlsx),
            other => Err(Error::malformed(format!(
                "the format {:?} is not known; use csv, json or xlsx",
                lienthong_types::text::truncate(other, 20)
            ))),
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Json => "json",
            Format::Xlsx => "xlsx",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Csv => "text/csv; charset=utf-8",
            Format::Json => "application/json",
            Format::Xlsx => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        }
    }
}

/// `bao-cao-lienthong-2026-11.xlsx`: the period in the name, no spaces or
/// diacritics (safe in every mail client and file system).
pub fn report_file_name(report: &Report, format: Format) -> String {
    period_file_name(&report.period, format)
}

pub(crate) fn period_file_name(period: &str, format: Format) -> String {
    let period: String = period
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("bao-cao-lienthong-{period}.{}", format.extension())
}

/// One cell of a report table.
enum Cell {
    Text(String),
    Int(u64),
    /// A number shown with one decimal; `None` is an empty cell.
    Dec(Option<f64>),
}

struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<Cell>>,
}

fn minutes(s: Option<f64>) -> Option<f64> {
    s.map(|s| (s / 60.0 * 10.0).round() / 10.0)
}

fn percent(s: Option<f64>) -> Option<f64> {
    s.map(|s| (s * 1000.0).round() / 10.0)
}

fn table(report: &Report, lang: Lang) -> Table {
    let vi = lang == Lang::Vi;
    let mut reasons: Vec<String> = report
        .agencies
        .iter()
        .flat_map(|a| a.refused_by_reason.keys().cloned())
        .chain(report.unattributed_refusals.keys().cloned())
        .collect();
    reasons.sort();
    reasons.dedup();
    let hours = report.accept_within_working_hours;
    let hours = if hours.fract() == 0.0 {
        format!("{hours:.0}")
    } else {
        format!("{hours}")
    };
    let mut headers: Vec<String> = if vi {
        vec![
            "Mã định danh".into(),
            "Tên cơ quan".into(),
            "Văn bản đã gửi".into(),
            "Văn bản nhận được".into(),
            "Đã chuyển đến cơ quan".into(),
            "Cơ quan đã xác nhận nhận".into(),
            "Gửi bị từ chối".into(),
        ]
    } else {
        vec![
            "Agency code".into(),
            "Agency".into(),
            "Documents sent".into(),
            "Documents received".into(),
            "Delivered".into(),
            "Acknowledged".into(),
            "Refused".into(),
        ]
    };
    for r in &reasons {
        headers.push(if vi {
            format!("Từ chối: {r}")
        } else {
            format!("Refused: {r}")
        });
    }
    for c in STATUS_CODES {
        headers.push(if vi {
            format!("Trạng thái nhận được {c} ({})", status_words(c, lang))
        } else {
            format!("Statuses received {c} ({})", status_words(c, lang))
        });
    }
    if vi {
        headers.extend([
            format!("Chưa tiếp nhận (03) sau {hours} giờ làm việc"),
            "Quá hạn xử lý, chưa hoàn thành (06)".into(),
            "Thời gian từ tiếp nhận đến chuyển cho cơ quan – trung vị (phút)".into(),
            "Thời gian từ tiếp nhận đến chuyển cho cơ quan – P95 (phút)".into(),
            "Thời gian từ khi chuyển đến khi cơ quan tiếp nhận (03) – trung vị (phút)".into(),
            "Thời gian từ khi chuyển đến khi cơ quan tiếp nhận (03) – P95 (phút)".into(),
            "Tỷ lệ văn bản có chữ ký số hợp lệ (%)".into(),
        ]);
    } else {
        headers.extend([
            format!("Without 03 after {hours} working hours"),
            "Past due date without 06".into(),
            "Acceptance to delivery – median (min)".into(),
            "Acceptance to delivery – p95 (min)".into(),
            "Delivery to 03 – median (min)".into(),
            "Delivery to 03 – p95 (min)".into(),
            "Verified signatures (%)".into(),
        ]);
    }
    let line = |a: &AgencyRow, code: &str, name: &str| -> Vec<Cell> {
        let mut cells = vec![
            Cell::Text(code.to_owned()),
            Cell::Text(name.to_owned()),
            Cell::Int(a.sent),
            Cell::Int(a.received),
            Cell::Int(a.delivered),
            Cell::Int(a.acknowledged),
            Cell::Int(a.refused),
        ];
        for r in &reasons {
            cells.push(Cell::Int(a.refused_by_reason.get(r).copied().unwrap_or(0)));
        }
        for c in STATUS_CODES {
            cells.push(Cell::Int(a.statuses_received.get(c).copied().unwrap_or(0)));
        }
        cells.extend([
            Cell::Int(a.without_03),
            Cell::Int(a.overdue),
            Cell::Dec(minutes(a.accept_to_delivery.median_seconds)),
            Cell::Dec(minutes(a.accept_to_delivery.p95_seconds)),
            Cell::Dec(minutes(a.delivery_to_03.median_seconds)),
            Cell::Dec(minutes(a.delivery_to_03.p95_seconds)),
            Cell::Dec(percent(a.signatures_verified_share)),
        ]);
        cells
    };
    let mut rows: Vec<Vec<Cell>> = report
        .agencies
        .iter()
        .map(|a| line(a, &a.organ_id, &a.name))
        .collect();
    if !report.unattributed_refusals.is_empty() {
        let mut u = AgencyRow::default();
        for (k, v) in &report.unattributed_refusals {
            u.refused += v;
            u.refused_by_reason.insert(k.clone(), *v);
        }
        let name = if vi {
            "Cơ quan gửi không có trong danh bạ"
        } else {
            "Sender not in the directory"
        };
        rows.push(line(&u, "", name));
        let mut total = report.total.clone();
        total.refused += u.refused;
        for (k, v) in u.refused_by_reason {
            *total.refused_by_reason.entry(k).or_default() += v;
        }
        rows.push(line(&total, "", if vi { "Tổng cộng" } else { "Total" }));
    } else {
        rows.push(line(
            &report.total,
            "",
            if vi { "Tổng cộng" } else { "Total" },
        ));
    }
    Table { headers, rows }
}

/// The report as CSV: a header line, one line per agency, a total line.
pub fn to_csv(report: &Report, lang: Lang) -> Result<Vec<u8>> {
    let t = table(report, lang);
    let mut out = Vec::with_capacity(256 + 128 * t.rows.len());
    // The byte-order mark makes Excel read the file as UTF-8.
    out.extend_from_slice("\u{feff}".as_bytes());
    {
        let mut w = csv::Writer::from_writer(&mut out);
        let fail = |e: csv::Error| {
            Error::new(Reason::Unavailable, "cannot write the CSV report").with_source(e)
        };
        w.write_record(&t.headers).map_err(fail)?;
        for row in &t.rows {
            let rec: Vec<String> = row
                .iter()
                .map(|c| match c {
                    Cell::Text(s) => s.clone(),
                    Cell::Int(n) => n.to_string(),
                    Cell::Dec(Some(x)) => format!("{x:.1}"),
                    Cell::Dec(None) => String::new(),
                })
                .collect();
            w.write_record(&rec).map_err(fail)?;
        }
        w.flush().map_err(|e| {
            Error::new(Reason::Unavailable, "cannot write the CSV report").with_source(e)
        })?;
    }
    Ok(out)
}

/// The report as JSON (field names in English, durations in seconds).
pub fn to_json(report: &Report) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(report)
        .map_err(|e| Error::new(Reason::Unavailable, "cannot write the JSON report").with_source(e))
}

/// The report as an Excel workbook: the table (titled, header frozen) and
/// a sheet explaining the reason and status codes.
pub fn to_xlsx(report: &Report, lang: Lang) -> Result<Vec<u8>> {
    xlsx(report, lang)
        .map_err(|e| Error::new(Reason::Unavailable, "cannot write the XLSX report").with_source(e))
}

fn xlsx(report: &Report, lang: Lang) -> Result<Vec<u8>, XlsxError> {
    let vi = lang == Lang::Vi;
    let t = table(report, lang);
    let mut wb = Workbook::new();
    let title = XFormat::new().set_bold().set_font_size(14);
    let head = XFormat::new()
        .set_bold()
        .set_text_wrap()
        .set_background_color(0xDDEBF7);
    let dec = XFormat::new().set_num_format("0.0");
    let bold = XFormat::new().set_bold();
    let ws = wb.add_worksheet();
    ws.set_name(if vi { "Báo cáo" } else { "Report" })?;
    let scope = if report.scope == "#" {
        if vi {
            "toàn bộ danh bạ".to_owned()
        } else {
            "whole directory".to_owned()
        }
    } else {
        report.scope.clone()
    };
    let heading = if vi {
        format!(
            "Báo cáo trao đổi văn bản điện tử qua trục liên thông — kỳ {} ({} đến {}) — phạm vi {}",
            report.period, report.from, report.to, scope
        )
    } else {
        format!(
            "Electronic document exchange report — period {} ({} to {}) — scope {}",
            report.period, report.from, report.to, scope
        )
    };
    ws.write_string_with_format(0, 0, heading, &title)?;
    ws.write_string(
        1,
        0,
        if vi {
            format!("Lập lúc {}", report.generated_at)
        } else {
            format!("Generated at {}", report.generated_at)
        },
    )?;
    let top = 3u32;
    for (c, h) in t.headers.iter().enumerate() {
        ws.write_string_with_format(top, c as u16, h, &head)?;
    }
    ws.set_row_height(top, 60)?;
    let last = t.rows.len().saturating_sub(1);
    for (i, row) in t.rows.iter().enumerate() {
        let r = top + 1 + i as u32;
        for (c, cell) in row.iter().enumerate() {
            let c = c as u16;
            match cell {
                Cell::Text(s) if i == last => {
                    ws.write_string_with_format(r, c, s, &bold)?;
                }
                Cell::Text(s) => {
                    ws.write_string(r, c, s)?;
                }
                Cell::Int(n) => {
                    ws.write_number(r, c, *n as f64)?;
                }
                Cell::Dec(Some(x)) => {
                    ws.write_number_with_format(r, c, *x, &dec)?;
                }
                Cell::Dec(None) => {}
            }
        }
    }
    ws.set_column_width(0, 16)?;
    ws.set_column_width(1, 44)?;
    for c in 2..t.headers.len() {
        ws.set_column_width(c as u16, 14)?;
    }
    ws.set_freeze_panes(top + 1, 2)?;

    let ws = wb.add_worksheet();
    ws.set_name(if vi { "Giải thích" } else { "Codes" })?;
    ws.set_column_width(0, 30)?;
    ws.set_column_width(1, 70)?;
    ws.write_string_with_format(0, 0, if vi { "Mã" } else { "Code" }, &head)?;
    ws.write_string_with_format(0, 1, if vi { "Ý nghĩa" } else { "Meaning" }, &head)?;
    let mut r = 1u32;
    for reason in Reason::ALL {
        ws.write_string(r, 0, reason.as_str())?;
        ws.write_string(r, 1, reason_vi(reason.as_str()))?;
        r += 1;
    }
    for c in STATUS_CODES {
        ws.write_string(
            r,
            0,
            if vi {
                format!("Trạng thái {c}")
            } else {
                format!("Status {c}")
            },
        )?;
        ws.write_string(r, 1, status_words(c, lang))?;
        r += 1;
    }
    wb.save_to_buffer()
}

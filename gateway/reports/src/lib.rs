//! Reports from the transfer log: who sent and received what, and how it
//! went, for a period and a part of the directory.
//!
//! Everything is counted by SQL aggregation over `messages`, `deliveries`
//! and `events` (the transfer log); no event is loaded into memory. The
//! queries are the same text on SQLite and PostgreSQL.
//!
//! What each figure means (per agency of the scope, over the documents
//! *accepted in the period*, as the tables stand when the report is made):
//!
//! - `sent`: documents the agency sent that the gateway accepted.
//! - `received`: deliveries of documents created for the agency.
//! - `delivered`: of those, handed to the agency's software at least once.
//! - `acknowledged`: of those, acknowledged by the agency's software.
//! - `refused`: submissions from the agency refused in the period (the
//!   `rejected` events, by reason code).
//! - `statuses_received`: status notices addressed to the agency in the
//!   period (answers to its documents), by status code.
//! - `without_03`: documents received that have no 03 (nor a later 04, 05
//!   or 06) from the agency after `accept_within_hours` working hours.
//! - `overdue`: documents received whose DueDate has passed (Vietnam date)
//!   without a 06 from the agency.
//! - `accept_to_delivery`: acceptance → first hand-out to the agency.
//! - `delivery_to_03`: first hand-out → the agency's first 03 (or later
//!   status) for it. Percentiles are nearest-rank.
//! - `signatures_verified_share`: documents accepted / (documents accepted +
//!   submissions refused for a signature or certificate reason).

mod dashboard;
mod render;
mod schedule;

use std::collections::BTreeMap;

use serde::Serialize;

use lienthong_core::pipeline::{Caller, Gateway};
use lienthong_core::records::Records;
use lienthong_core::store::Store;
use lienthong_store::reports::{Duration, Filter, Percentiles, ReportWindow};
use lienthong_types::error::{Error, Reason, Result};
use lienthong_types::now_micros;
use lienthong_types::organ_id::{IdPolicy, OrganId, TopicPattern};
use lienthong_types::text::truncate;

pub use dashboard::{
    BACKUP_LATE_HOURS, BackupStatus, Health, InboxDepth, OverdueDocument, Overview, Refusal,
    SearchHit, TraceLine, Traffic, backup_status, inbox_depths, overview, recent_refusals, search,
};
pub use lienthong_types::calendar::{
    Period, VIETNAM, WorkingCalendar, WorkingHours, day_start_micros, format_local, format_rfc3339,
    local_date, parse_date,
};
pub use render::{Format, report_file_name, to_csv, to_json, to_xlsx};
pub use schedule::{
    MonthlyReports, ReportSending, Sending, run_monthly_job, run_monthly_reports,
    send_monthly_report, write_monthly_report,
};

/// Refusals that mean a signature or certificate did not verify.
pub const SIGNATURE_REASONS: [Reason; 7] = [
    Reason::BadSignature,
    Reason::UntrustedCertificate,
    Reason::CertificateExpired,
    Reason::CertificateRevoked,
    Reason::CertificateNotBound,
    Reason::DocumentUnsigned,
    Reason::DocumentSignatureInvalid,
];

/// The status codes of DESIGN.md §2, in the order reports show them.
pub const STATUS_CODES: [&str; 9] = lienthong_core::pipeline::STATUS_CODES;

/// The language of column headers and words in report files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Lang {
    #[default]
    Vi,
    En,
}

impl Lang {
    pub fn parse(s: &str) -> Result<Lang> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "vi" | "vn" => Ok(Lang::Vi),
            "en" => Ok(Lang::En),
            other => Err(Error::malformed(format!(
                "the language {:?} is not known; use vi (Vietnamese) or en (English)",
                truncate(other, 20)
            ))),
        }
    }
}

/// A part of the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every agency in the directory.
    All,
    /// One agency.
    Agency(OrganId),
    /// An agency and every agency under it (the parent rule of the code).
    Under(OrganId),
    /// An AMQP-style pattern over codes: `#.H35` is a whole province,
    /// `*.*.31.H53` one district's children.
    Pattern(TopicPattern),
}

impl Scope {
    /// `""`/`*`/`#`: everything; a pattern with `#` or `*`; `=CODE`: one
    /// agency; `CODE`: the agency and everything under it.
    pub fn parse(s: &str) -> Result<Scope> {
        let t = s.trim();
        if t.is_empty() || t == "*" || t == "#" {
            return Ok(Scope::All);
        }
        if let Some(one) = t.strip_prefix('=') {
            return Ok(Scope::Agency(OrganId::parse_with(one, IdPolicy::Lenient)?));
        }
        if t.contains(['#', '*']) {
            return TopicPattern::parse(t).map(Scope::Pattern).map_err(|e| {
                Error::malformed(format!(
                    "the scope {:?} is not a pattern like #.H35 or *.*.31.H53: {}",
                    truncate(t, 40),
                    e.message()
                ))
            });
        }
        Ok(Scope::Under(OrganId::parse_with(t, IdPolicy::Lenient)?))
    }

    /// One agency only.
    pub fn agency(code: &str) -> Result<Scope> {
        Ok(Scope::Agency(OrganId::parse_with(code, IdPolicy::Lenient)?))
    }

    fn contains(&self, code: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Agency(id) => id.as_str() == code,
            Scope::Under(id) => OrganId::parse_with(code, IdPolicy::Lenient)
                .map(|c| c.is_under(id))
                .unwrap_or(false),
            Scope::Pattern(p) => p.matches(code),
        }
    }

    /// The agencies of the directory in this scope, ordered by code.
    /// `NotFound` when the named agency is not in the directory or the
    /// pattern matches none.
    pub async fn resolve<'a>(
        &self,
        records: impl Into<Records<'a>>,
    ) -> Result<Vec<(String, String)>> {
        let all = records.into().agencies().await?;
        if let Scope::Agency(id) | Scope::Under(id) = self
            && !all.iter().any(|a| a.organ_id == id.as_str())
        {
            return Err(Error::new(
                Reason::NotFound,
                format!(
                    "{id} is not in this gateway's directory; check the code (lienthong directory list)"
                ),
            ));
        }
        let rows: Vec<(String, String)> = all
            .into_iter()
            .filter(|a| self.contains(&a.organ_id))
            .map(|a| (a.organ_id, a.name))
            .collect();
        if rows.is_empty()
            && let Scope::Pattern(p) = self
        {
            return Err(Error::new(
                Reason::NotFound,
                format!("no agency in this gateway's directory matches {p}"),
            ));
        }
        Ok(rows)
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::All => f.write_str("#"),
            Scope::Agency(id) => write!(f, "={id}"),
            Scope::Under(id) => write!(f, "{id}"),
            Scope::Pattern(p) => write!(f, "{p}"),
        }
    }
}

/// How reports judge lateness.
#[derive(Debug, Clone)]
pub struct ReportSettings {
    pub calendar: WorkingCalendar,
    /// A document is "without a 03" after this many working hours.
    pub accept_within_hours: f64,
}

impl Default for ReportSettings {
    fn default() -> Self {
        ReportSettings {
            calendar: WorkingCalendar::default(),
            accept_within_hours: 8.0,
        }
    }
}

/// Median and 95th percentile of a duration, in seconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Latency {
    /// How many durations were measured.
    pub count: u64,
    pub median_seconds: Option<f64>,
    pub p95_seconds: Option<f64>,
}

/// One agency's line of a report.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AgencyRow {
    pub organ_id: String,
    pub name: String,
    pub sent: u64,
    pub received: u64,
    pub delivered: u64,
    pub acknowledged: u64,
    pub refused: u64,
    pub refused_by_reason: BTreeMap<String, u64>,
    pub statuses_received: BTreeMap<String, u64>,
    pub without_03: u64,
    pub overdue: u64,
    pub accept_to_delivery: Latency,
    pub delivery_to_03: Latency,
    /// Submissions refused for a signature or certificate reason.
    pub signature_refused: u64,
    /// sent / (sent + signature_refused); `None` when both are zero.
    pub signatures_verified_share: Option<f64>,
}

impl AgencyRow {
    fn new(organ_id: &str, name: &str) -> AgencyRow {
        AgencyRow {
            organ_id: organ_id.to_owned(),
            name: name.to_owned(),
            ..Default::default()
        }
    }

    fn add(&mut self, o: &AgencyRow) {
        self.sent += o.sent;
        self.received += o.received;
        self.delivered += o.delivered;
        self.acknowledged += o.acknowledged;
        self.refused += o.refused;
        for (k, v) in &o.refused_by_reason {
            *self.refused_by_reason.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &o.statuses_received {
            *self.statuses_received.entry(k.clone()).or_default() += v;
        }
        self.without_03 += o.without_03;
        self.overdue += o.overdue;
        self.signature_refused += o.signature_refused;
    }

    fn finish(&mut self) {
        let n = self.sent + self.signature_refused;
        self.signatures_verified_share = (n > 0).then(|| self.sent as f64 / n as f64);
    }
}

/// A report over a period and a scope.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// As given: `2026-11`, `2026-Q4`, …
    pub period: String,
    /// First and last day (Vietnam dates).
    pub from: String,
    pub to: String,
    pub scope: String,
    /// When the report was made (RFC 3339, Vietnam time).
    pub generated_at: String,
    /// The instant "still without a 03" and "past DueDate" are judged at.
    pub as_of: String,
    pub accept_within_working_hours: f64,
    pub agencies: Vec<AgencyRow>,
    /// Refusals whose sender is not an agency of the directory (unknown or
    /// unreadable senders); only in a report over the whole directory.
    pub unattributed_refusals: BTreeMap<String, u64>,
    /// The sum of the rows; the latencies are over every row's durations.
    pub total: AgencyRow,
}

/// What an operator asks for over the gateway's API (gRPC
/// `Reports.Summary`): a period as [`Period::parse`] reads it, and at most
/// one of one agency, an agency and what is under it (or a pattern), and a
/// province's level-1 code (`H35`). Nothing: the whole directory.
#[derive(Debug, Clone, Default)]
pub struct SummaryRequest {
    pub period: String,
    pub agency: String,
    pub under: String,
    pub province: String,
}

impl SummaryRequest {
    /// The scope it names; `MALFORMED` with a sentence when it names more
    /// than one or a malformed one.
    pub fn scope(&self) -> Result<Scope> {
        let (agency, under, province) =
            (self.agency.trim(), self.under.trim(), self.province.trim());
        let given = [agency, under, province]
            .iter()
            .filter(|s| !s.is_empty())
            .count();
        if given > 1 {
            return Err(Error::malformed(
                "give at most one of agency, under and province (none: the whole directory)",
            ));
        }
        if !agency.is_empty() {
            return Scope::agency(agency);
        }
        if !province.is_empty() {
            let b = province.as_bytes();
            let ok =
                b.len() == 3 && b[0].is_ascii_uppercase() && b[1..].iter().all(u8::is_ascii_digit);
            if !ok {
                return Err(Error::malformed(format!(
                    "the province {:?} is not a level-1 code like H35 (one capital letter and two digits)",
                    truncate(province, 20)
                )));
            }
            return Scope::parse(&format!("#.{province}"));
        }
        Scope::parse(under)
    }
}

/// The report an operator asks for (gRPC `Reports.Summary`): only the
/// gateway's operators may read it (`PERMISSION_DENIED`, logged, for anyone
/// else); then the period and scope are read (`MALFORMED` with a sentence
/// saying the accepted forms; `NOT_FOUND` for an agency that is not in the
/// directory). A period without traffic gives a report of zeros.
pub async fn summary_for(
    gw: &Gateway,
    caller: &Caller,
    request: &SummaryRequest,
    settings: &ReportSettings,
) -> Result<Report> {
    gw.require_operator(caller, "reading reports").await?;
    let period = Period::parse(&request.period)?;
    let scope = request.scope()?;
    summary(gw, period, &scope, settings).await
}

/// The report of a period and scope, judged now.
pub async fn summary(
    gw: &Gateway,
    period: Period,
    scope: &Scope,
    settings: &ReportSettings,
) -> Result<Report> {
    summary_in(gw.records(), period, scope, settings, now_micros()).await
}

/// The report, judged at `as_of` (Unix microseconds): the instant from
/// which "N working hours" and "past DueDate" are counted. Reads a
/// [`Store`] or a gateway's [`Records`].
pub async fn summary_in<'a>(
    records: impl Into<Records<'a>>,
    period: Period,
    scope: &Scope,
    settings: &ReportSettings,
    as_of: i64,
) -> Result<Report> {
    let records = records.into();
    let agencies = scope.resolve(records).await?;
    let (t0, t1) = period.bounds();
    let (d0, d1) = period.days();
    let filter = match scope {
        Scope::All => Filter::All,
        _ => Filter::of(Some(agencies.iter().map(|a| a.0.clone()).collect())),
    };
    let mut rows: BTreeMap<String, AgencyRow> = agencies
        .iter()
        .map(|(id, name)| (id.clone(), AgencyRow::new(id, name)))
        .collect();
    let cutoff = settings
        .calendar
        .cutoff(as_of, settings.accept_within_hours);
    let today = lienthong_types::calendar::iso_date(local_date(as_of));
    let window = ReportWindow {
        t0,
        t1,
        cutoff,
        as_of,
        today,
    };
    let found = records.report_rows(&window, &filter).await?;

    for (agency, n) in found.sent {
        if let Some(row) = rows.get_mut(&agency) {
            row.sent = n;
        }
    }
    for (agency, code, n) in found.statuses {
        if let Some(row) = rows.get_mut(&agency) {
            *row.statuses_received.entry(code).or_default() += n;
        }
    }
    let mut unattributed = BTreeMap::new();
    for (agency, reason, n) in found.refusals {
        let signature = Reason::parse(&reason).is_some_and(|x| SIGNATURE_REASONS.contains(&x));
        match rows.get_mut(&agency) {
            Some(row) => {
                row.refused += n;
                *row.refused_by_reason.entry(reason).or_default() += n;
                if signature {
                    row.signature_refused += n;
                }
            }
            None if *scope == Scope::All => *unattributed.entry(reason).or_default() += n,
            None => {}
        }
    }
    let counts = found.deliveries;
    let mut latencies = found.latencies;
    let mut latency = |d: Duration, agency: &str| {
        latencies
            .remove(&(d, agency.to_owned()))
            .map(|p: Percentiles| Latency {
                count: p.count,
                median_seconds: Some(p.p50 as f64 / 1e6),
                p95_seconds: Some(p.p95 as f64 / 1e6),
            })
    };
    let mut total = AgencyRow::new("", "");
    for row in rows.values_mut() {
        if let Some(c) = counts.get(&row.organ_id) {
            row.received = c.received;
            row.delivered = c.delivered;
            row.acknowledged = c.acknowledged;
            row.without_03 = c.without_03;
            row.overdue = c.overdue;
        }
        if let Some(l) = latency(Duration::AcceptToDelivery, &row.organ_id) {
            row.accept_to_delivery = l;
        }
        if let Some(l) = latency(Duration::DeliveryTo03, &row.organ_id) {
            row.delivery_to_03 = l;
        }
        row.finish();
        total.add(row);
    }
    total.accept_to_delivery = latency(Duration::AcceptToDelivery, "*").unwrap_or_default();
    total.delivery_to_03 = latency(Duration::DeliveryTo03, "*").unwrap_or_default();
    total.finish();
    if !matches!(scope, Scope::All | Scope::Agency(_)) {
        // Under a filter larger than the IN list the '*' rows covered more
        // than the scope: keep them only when the filter was exact.
        if let Filter::All = filter {
            total.accept_to_delivery = Latency::default();
            total.delivery_to_03 = Latency::default();
        }
    }

    Ok(Report {
        period: period.to_string(),
        from: lienthong_types::calendar::iso_date(d0),
        to: lienthong_types::calendar::iso_date(d1),
        scope: scope.to_string(),
        generated_at: format_rfc3339(now_micros()),
        as_of: format_rfc3339(as_of),
        accept_within_working_hours: settings.accept_within_hours,
        agencies: rows.into_values().collect(),
        unattributed_refusals: unattributed,
        total,
    })
}

/// Copies DueDate, số/ký hiệu and trích yếu out of the envelopes of
/// documents that do not have them in their columns yet (`due_date IS
/// NULL`: rows accepted before the pipeline wrote them with the document),
/// a page at a time. Returns how many documents it indexed. `serve` runs it
/// at start, and the jobs that report (the monthly reports, `lienthong
/// report`) before they read; the reports and the dashboard only read.
pub async fn index_documents(store: &Store) -> Result<u64> {
    store
        .index_documents(lienthong_core::facts::of_signed)
        .await
}

/// A reason code in plain Vietnamese, for the office.
pub fn reason_vi(code: &str) -> &'static str {
    match Reason::parse(code) {
        Some(r) => match r {
            Reason::BadIdentifier => "Mã định danh cơ quan không đúng quy định",
            Reason::UnknownRecipient => "Cơ quan nhận không có trong danh bạ của trục liên thông",
            Reason::UnknownSender => "Cơ quan gửi không có trong danh bạ hoặc đã ngừng hoạt động",
            Reason::SenderMismatch => "Cơ quan gửi ghi trong văn bản khác với cơ quan đã đăng nhập",
            Reason::BadSignature => "Chữ ký số của gói tin không hợp lệ hoặc bị thiếu",
            Reason::UntrustedCertificate => {
                "Chứng thư số không do tổ chức chứng thực được tin cậy cấp"
            }
            Reason::CertificateExpired => "Chứng thư số đã hết hạn",
            Reason::CertificateRevoked => "Chứng thư số đã bị thu hồi",
            Reason::CertificateNotBound => {
                "Chứng thư số chưa được gắn với cơ quan gửi trong danh bạ"
            }
            Reason::DigestMismatch => "Tệp đính kèm bị thay đổi, không khớp với bản đã ký",
            Reason::SizeLimit => "Văn bản hoặc tệp đính kèm vượt quá dung lượng cho phép",
            Reason::Malformed => "Gói tin sai cấu trúc hoặc thiếu thông tin bắt buộc",
            Reason::SecretDocument => "Văn bản mật không được gửi qua trục liên thông",
            Reason::DuplicateConflict => "Trùng mã gói tin với một văn bản khác đã gửi trước đó",
            Reason::NotFound => "Không tìm thấy đối tượng được yêu cầu",
            Reason::PermissionDenied => "Không có quyền thực hiện thao tác này",
            Reason::NotRoutable => "Không tìm được đường chuyển đến cơ quan nhận",
            Reason::RateLimited => "Gửi quá nhiều trong thời gian ngắn, cần gửi lại sau",
            Reason::DocumentUnsigned => "Văn bản chưa được ký số",
            Reason::DocumentSignatureInvalid => "Chữ ký số trên văn bản không hợp lệ",
            Reason::Unavailable => "Trục liên thông tạm thời gián đoạn, cần gửi lại sau",
            Reason::Internal => "Lỗi nội bộ của trục liên thông, cần báo người vận hành",
        },
        None => "Lý do khác",
    }
}

/// A status code in words.
pub fn status_words(code: &str, lang: Lang) -> &'static str {
    match (code, lang) {
        ("01", Lang::Vi) => "Đã đến",
        ("02", Lang::Vi) => "Từ chối tiếp nhận",
        ("03", Lang::Vi) => "Đã tiếp nhận",
        ("04", Lang::Vi) => "Phân công",
        ("05", Lang::Vi) => "Đang xử lý",
        ("06", Lang::Vi) => "Hoàn thành",
        ("13", Lang::Vi) => "Đề nghị lấy lại/cập nhật",
        ("15", Lang::Vi) => "Đồng ý lấy lại/cập nhật",
        ("16", Lang::Vi) => "Từ chối lấy lại/cập nhật",
        ("01", Lang::En) => "arrived",
        ("02", Lang::En) => "refused",
        ("03", Lang::En) => "accepted",
        ("04", Lang::En) => "assigned",
        ("05", Lang::En) => "in progress",
        ("06", Lang::En) => "completed",
        ("13", Lang::En) => "take back/update asked",
        ("15", Lang::En) => "take back/update agreed",
        ("16", Lang::En) => "take back/update refused",
        (_, Lang::Vi) => "Trạng thái khác",
        (_, Lang::En) => "other status",
    }
}

#[cfg(test)]
mod tests;

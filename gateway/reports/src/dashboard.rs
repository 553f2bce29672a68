//! What the dashboard reads: traffic today and this month, inbox depths,
//! recent refusals, overdue documents, and a message's trace.

use std::collections::HashMap;

use lienthong_proto::v1::TraceEvent;
use serde::Serialize;

use super::{Period, ReportSettings, reason_vi};
use lienthong_core::pipeline::Gateway;
use lienthong_core::records::Records;
use lienthong_types::calendar::{self as period, day_start_micros, local_date};
use lienthong_types::error::{Error, Reason, Result};
use lienthong_types::now_micros;
use lienthong_types::text::truncate;

pub use lienthong_store::reports::Traffic;

/// An agency's unacknowledged deliveries.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InboxDepth {
    pub organ_id: String,
    pub name: String,
    pub depth: u64,
    /// When the oldest unacknowledged delivery was created (RFC 3339).
    pub oldest_at: String,
    pub oldest_seconds: f64,
}

/// A refused submission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    pub at: String,
    pub sender: String,
    pub sender_name: String,
    pub message_id: String,
    pub reason: String,
    /// The reason in plain Vietnamese.
    pub reason_text: String,
    /// The sentence the sender was given.
    pub detail: String,
}

/// A document past its DueDate without a 06 from a recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OverdueDocument {
    pub sender: String,
    pub sender_name: String,
    pub recipient: String,
    pub recipient_name: String,
    pub message_id: String,
    pub code: String,
    pub subject: String,
    pub due_date: String,
    pub days_overdue: i64,
}

/// Whether the gateway's dependencies answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Health {
    pub database: bool,
    /// `None`: no message broker is configured in this version.
    pub broker: Option<bool>,
    pub checked_at: String,
}

/// The dashboard's first screen.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Overview {
    pub gateway: String,
    pub version: String,
    pub now: String,
    pub today: String,
    pub month: String,
    pub today_traffic: Traffic,
    pub month_traffic: Traffic,
    /// The agencies with the most unacknowledged deliveries (at most 10).
    pub inboxes: Vec<InboxDepth>,
    pub refusals: Vec<Refusal>,
    /// Documents past their DueDate without a 06 (the 20 most overdue of
    /// those accepted in the last year).
    pub overdue: Vec<OverdueDocument>,
    pub overdue_total: u64,
    /// Deliveries of the last 30 days without a 03 after the configured
    /// working hours.
    pub without_03_total: u64,
    pub accept_within_working_hours: f64,
    pub health: Health,
}

const DAY: i64 = 86_400_000_000;

async fn names(records: Records<'_>) -> Result<HashMap<String, String>> {
    Ok(records
        .agencies()
        .await?
        .into_iter()
        .map(|a| (a.organ_id, a.name))
        .collect())
}

fn name_of(names: &HashMap<String, String>, code: &str) -> String {
    names.get(code).cloned().unwrap_or_default()
}

async fn traffic(records: Records<'_>, p: Period) -> Result<Traffic> {
    let (t0, t1) = p.bounds();
    records.traffic(t0, t1).await
}

/// Every agency with unacknowledged deliveries, the deepest inbox first
/// (one query). Reads a `Store` or a gateway's [`Records`].
pub async fn inbox_depths<'a>(records: impl Into<Records<'a>>) -> Result<Vec<InboxDepth>> {
    let now = now_micros();
    let mut out = Vec::new();
    for r in records.into().pending_inboxes().await? {
        out.push(InboxDepth {
            oldest_at: period::format_rfc3339(r.oldest_at),
            oldest_seconds: r.oldest_seconds(now),
            organ_id: r.recipient,
            name: String::new(),
            depth: r.depth,
        });
    }
    Ok(out)
}

/// The latest refusals, newest first (`limit` is kept within 1..=200).
pub async fn recent_refusals(gw: &Gateway, limit: u32) -> Result<Vec<Refusal>> {
    let records = gw.records();
    let names = names(records).await?;
    refusals_in(records, &names, limit).await
}

async fn refusals_in(
    records: Records<'_>,
    names: &HashMap<String, String>,
    limit: u32,
) -> Result<Vec<Refusal>> {
    let limit = limit.clamp(1, 200) as i64;
    let mut out = Vec::new();
    for r in records.recent_refusals(limit).await? {
        out.push(Refusal {
            at: period::format_rfc3339(r.at),
            sender_name: name_of(names, &r.sender),
            sender: r.sender,
            message_id: r.message_id,
            reason_text: reason_vi(&r.reason).to_owned(),
            reason: r.reason,
            detail: truncate(&r.detail, 500).to_owned(),
        });
    }
    Ok(out)
}

/// Traffic, inboxes, refusals, overdue documents and health, for the
/// dashboard's first screen.
pub async fn overview(gw: &Gateway, settings: &ReportSettings) -> Result<Overview> {
    let records = gw.records();
    let now = now_micros();
    let database = records.ping().await.is_ok();
    if !database {
        return Err(Error::new(
            Reason::Unavailable,
            "the database does not answer; the figures cannot be read right now",
        ));
    }
    let names = names(records).await?;
    let today = Period::day_of(now);
    let month = Period::month_of(now);
    let today_traffic = traffic(records, today).await?;
    let month_traffic = traffic(records, month).await?;
    let mut inboxes = inbox_depths(records).await?;
    inboxes.truncate(10);
    for i in &mut inboxes {
        i.name = name_of(&names, &i.organ_id);
    }
    let refusals = refusals_in(records, &names, 10).await?;

    let today_date = local_date(now);
    let today_iso = period::iso_date(today_date);
    let year_ago = now - 365 * DAY;
    let (overdue_total, most_overdue) = records.overdue_deliveries(year_ago, &today_iso).await?;
    let mut overdue = Vec::new();
    for r in most_overdue {
        let days = period::parse_date(&r.due_date)
            .map(|d| (day_start_micros(today_date) - day_start_micros(d)) / DAY)
            .unwrap_or(0);
        overdue.push(OverdueDocument {
            sender_name: name_of(&names, &r.sender),
            recipient_name: name_of(&names, &r.recipient),
            sender: r.sender,
            recipient: r.recipient,
            message_id: r.message_id,
            code: r.code,
            subject: r.subject,
            due_date: r.due_date,
            days_overdue: days,
        });
    }

    let cutoff = settings.calendar.cutoff(now, settings.accept_within_hours);
    let without_03_total = records
        .deliveries_without_03(now - 30 * DAY, cutoff)
        .await?;

    Ok(Overview {
        gateway: gw.gateway_id().to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        now: period::format_rfc3339(now),
        today: today.to_string(),
        month: month.to_string(),
        today_traffic,
        month_traffic,
        inboxes,
        refusals,
        overdue,
        overdue_total,
        without_03_total,
        accept_within_working_hours: settings.accept_within_hours,
        health: Health {
            database,
            broker: None,
            checked_at: period::format_rfc3339(now),
        },
    })
}

/// One line of a trace, with Vietnamese words for the office.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TraceLine {
    pub at: String,
    pub kind: String,
    pub kind_text: String,
    pub message_id: String,
    pub from: String,
    pub to: String,
    pub reason: String,
    pub reason_text: String,
    pub detail: String,
}

/// A message found by a search, with its trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SearchHit {
    pub message_id: String,
    pub sender: String,
    pub sender_name: String,
    /// `document`, `status`, or `refused` (a submission that was never accepted).
    pub kind: String,
    pub document_id: String,
    pub code: String,
    pub subject: String,
    pub accepted_at: String,
    pub trace: Vec<TraceLine>,
}

fn kind_text(kind: &str, reason: &str) -> String {
    match kind {
        "accepted" => "Trục liên thông đã tiếp nhận".to_owned(),
        "routed" => "Đã chuyển vào hộp thư của cơ quan nhận".to_owned(),
        "delivered" => "Cơ quan nhận đã tải về".to_owned(),
        "acknowledged" => "Cơ quan nhận đã xác nhận nhận".to_owned(),
        "status_received" => format!(
            "Nhận trạng thái {reason} ({})",
            super::status_words(reason, super::Lang::Vi)
        ),
        "rejected" => "Bị từ chối".to_owned(),
        "duplicate" => "Gửi lặp lại (trả lại biên nhận lần đầu)".to_owned(),
        "directory_changed" => "Thay đổi danh bạ".to_owned(),
        other => other.to_owned(),
    }
}

fn trace_line(e: TraceEvent) -> TraceLine {
    let at =
        e.at.map(|t| t.seconds * 1_000_000 + i64::from(t.nanos) / 1000)
            .unwrap_or(0);
    let reason_text = if e.kind == "rejected" {
        reason_vi(&e.reason).to_owned()
    } else {
        String::new()
    };
    TraceLine {
        at: period::format_rfc3339(at),
        kind_text: kind_text(&e.kind, &e.reason),
        kind: e.kind,
        message_id: e.message_id,
        from: e.from,
        to: e.to,
        reason: e.reason,
        reason_text,
        detail: e.detail,
    }
}

/// Finds messages by message_id, số/ký hiệu (`15/QĐ-UBND`), document_id,
/// or a part of the số/ký hiệu, document_id or trích yếu, newest first (at
/// most 10), each with its trace. A refused submission is found by its
/// message_id. `NotFound` when nothing matches.
pub async fn search(gw: &Gateway, q: &str) -> Result<Vec<SearchHit>> {
    let q = q.trim();
    if q.is_empty() {
        return Err(Error::malformed(
            "Hãy nhập mã gói tin (message_id) hoặc số/ký hiệu văn bản để tìm.",
        ));
    }
    if q.chars().count() > 200 {
        return Err(Error::malformed(
            "Nội dung tìm kiếm quá dài (tối đa 200 ký tự).",
        ));
    }
    let records = gw.records();
    let names = names(records).await?;
    let mut hits = Vec::new();
    for r in records.search_messages(q).await? {
        let trace = match gw.trace(None, &r.sender, &r.message_id).await {
            Ok(t) => t.into_iter().map(trace_line).collect(),
            Err(e) if e.reason() == Reason::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        hits.push(SearchHit {
            sender_name: name_of(&names, &r.sender),
            sender: r.sender,
            message_id: r.message_id,
            kind: r.kind,
            document_id: r.document_id,
            code: r.code,
            subject: r.subject,
            accepted_at: period::format_rfc3339(r.accepted_at),
            trace,
        });
    }
    if hits.is_empty() {
        // A refused submission has events but no message row.
        match gw.trace_any(q).await {
            Ok(events) => {
                let sender = events.first().map(|e| e.from.clone()).unwrap_or_default();
                hits.push(SearchHit {
                    sender_name: name_of(&names, &sender),
                    sender,
                    message_id: q.to_owned(),
                    kind: "refused".to_owned(),
                    document_id: String::new(),
                    code: String::new(),
                    subject: String::new(),
                    accepted_at: String::new(),
                    trace: events.into_iter().map(trace_line).collect(),
                });
            }
            Err(e) if e.reason() == Reason::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    if hits.is_empty() {
        return Err(Error::new(
            Reason::NotFound,
            format!(
                "Không tìm thấy văn bản hay gói tin nào có mã gói tin hoặc số/ký hiệu «{}».",
                truncate(q, 80)
            ),
        ));
    }
    Ok(hits)
}

/// The last backup as the dashboard shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BackupStatus {
    /// `HH:MM` (Vietnam time) of the daily backup; `None`: not scheduled.
    pub schedule: Option<String>,
    /// When the newest finished backup was taken (RFC 3339), where it
    /// went and how large it is.
    pub last_at: Option<String>,
    pub last_dir: Option<String>,
    pub last_bytes: Option<u64>,
    /// The newest backup failed (after the last that finished): when, why.
    pub failed_at: Option<String>,
    pub failure: Option<String>,
    /// Scheduled, and no backup finished within the last
    /// [`BACKUP_LATE_HOURS`] hours.
    pub late: bool,
    /// The sentence the dashboard shows, in Vietnamese.
    pub message: String,
}

/// A daily backup is late when none finished within this many hours.
pub const BACKUP_LATE_HOURS: i64 = 26;

fn detail_field(detail: &str, key: &str) -> Option<serde_json::Value> {
    serde_json::from_str::<serde_json::Value>(detail)
        .ok()?
        .get(key)
        .cloned()
}

/// Sizes as people read them: `12,3 MB`.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{:.1} {}", v, UNITS[unit]).replace('.', ",")
    }
}

/// The last backup (from the transfer log: whichever replica made it),
/// and whether it is late for `schedule` (`(hour, minute)`, Vietnam time).
pub async fn backup_status(gw: &Gateway, schedule: Option<(u8, u8)>) -> Result<BackupStatus> {
    let (newest, finished) = gw.records().last_backups().await?;
    Ok(judge_backups(
        schedule,
        newest.map(|r| (r.at, r.reason, r.detail)),
        finished.map(|r| (r.at, r.detail)),
        now_micros(),
    ))
}

fn judge_backups(
    schedule: Option<(u8, u8)>,
    newest: Option<(i64, String, String)>,
    finished: Option<(i64, String)>,
    now: i64,
) -> BackupStatus {
    let mut s = BackupStatus {
        schedule: schedule.map(|(h, m)| format!("{h:02}:{m:02}")),
        last_at: None,
        last_dir: None,
        last_bytes: None,
        failed_at: None,
        failure: None,
        late: false,
        message: String::new(),
    };
    let mut sentences = Vec::new();
    match &finished {
        Some((at, detail)) => {
            s.last_at = Some(period::format_rfc3339(*at));
            s.last_dir = detail_field(detail, "dir").and_then(|v| v.as_str().map(str::to_owned));
            s.last_bytes = detail_field(detail, "bytes").and_then(|v| v.as_u64());
            sentences.push(format!(
                "Bản sao lưu gần nhất: {}, {}, tại {}.",
                period::format_local(*at),
                human_bytes(s.last_bytes.unwrap_or(0)),
                s.last_dir.as_deref().unwrap_or("?")
            ));
        }
        None => sentences.push("Chưa có bản sao lưu nào hoàn tất.".to_owned()),
    }
    if let Some((at, reason, detail)) = &newest
        && !reason.is_empty()
        && finished.as_ref().is_none_or(|(f, _)| f < at)
    {
        s.failed_at = Some(period::format_rfc3339(*at));
        s.failure = detail_field(detail, "error").and_then(|v| v.as_str().map(str::to_owned));
        sentences.push(format!(
            "Lần sao lưu lúc {} thất bại: {}",
            period::format_local(*at),
            s.failure.as_deref().unwrap_or("")
        ));
    }
    match schedule {
        None => sentences.push(
            "Chưa đặt lịch sao lưu tự động (backup.schedule): không có cảnh báo trễ.".to_owned(),
        ),
        Some(_) => {
            let limit = now - BACKUP_LATE_HOURS * 3_600_000_000;
            s.late = finished.as_ref().is_none_or(|(at, _)| *at < limit);
            if s.late {
                sentences.insert(
                    0,
                    format!(
                        "CẢNH BÁO: sao lưu trễ, không có bản sao lưu nào hoàn tất trong \
                         {BACKUP_LATE_HOURS} giờ qua (lịch hằng ngày lúc {}).",
                        s.schedule.as_deref().unwrap_or("")
                    ),
                );
            } else {
                sentences.push(format!(
                    "Sao lưu hằng ngày lúc {}.",
                    s.schedule.as_deref().unwrap_or("")
                ));
            }
        }
    }
    s.message = sentences.join(" ");
    s
}

#[cfg(test)]
mod backup_tests {
    use super::*;

    const HOUR: i64 = 3_600_000_000;

    #[test]
    fn a_daily_backup_is_late_after_26_hours() {
        let now = 1_800_000_000 * 1_000_000;
        let done = |ago: i64| {
            Some((
                now - ago * HOUR,
                r#"{"dir":"/b/x","bytes":1234567}"#.to_owned(),
            ))
        };
        let fine = judge_backups(Some((1, 30)), None, done(25), now);
        assert!(!fine.late, "{fine:?}");
        assert_eq!(fine.last_bytes, Some(1_234_567));
        assert!(
            fine.message.contains("1,2 MB") && fine.message.contains("/b/x"),
            "{}",
            fine.message
        );
        let late = judge_backups(Some((1, 30)), None, done(27), now);
        assert!(
            late.late && late.message.starts_with("CẢNH BÁO"),
            "{}",
            late.message
        );
        let never = judge_backups(Some((1, 30)), None, None, now);
        assert!(never.late);
        let unscheduled = judge_backups(None, None, done(500), now);
        assert!(!unscheduled.late && unscheduled.message.contains("Chưa đặt lịch"));
        let failed = judge_backups(
            Some((1, 30)),
            Some((
                now - HOUR,
                "BACKUP_FAILED".to_owned(),
                r#"{"error":"disk full"}"#.to_owned(),
            )),
            done(2),
            now,
        );
        assert_eq!(failed.failure.as_deref(), Some("disk full"));
        assert!(failed.message.contains("thất bại: disk full"));
    }
}

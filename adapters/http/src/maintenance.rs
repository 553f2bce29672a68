//! Maintenance windows on the dashboard: a banner at the top of
//! the page, in Vietnamese and English, times in Vietnam time, rendered
//! into the page by the server (so it shows without JavaScript) and kept
//! fresh by `dashboard.js` from `/api/maintenance`. Admins announce and
//! cancel windows from the page too.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use lienthong_core::error::{Error, OrErr, Reason};
use lienthong_core::maintenance::{Window, WindowJson, to_json};
use lienthong_core::now_micros;
use lienthong_core::operators::Session;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::{ApiError, App};

/// Where `index.html` takes the banners.
pub(crate) const PLACEHOLDER: &str = "<!--maintenance-->";

/// A window as `/api/maintenance` gives it: the core's fields and the
/// banner's two sentences.
#[derive(Debug, Serialize)]
struct Banner {
    #[serde(flatten)]
    window: WindowJson,
    text_vi: String,
    text_en: String,
}

/// `2026-11-30T22:00:00+07:00` → (`22:00 ngày 30/11/2026`, `22:00 on 30/11/2026`).
fn when(rfc3339: &str) -> (String, String) {
    let (Some(date), Some(time)) = (rfc3339.get(0..10), rfc3339.get(11..16)) else {
        return (rfc3339.to_owned(), rfc3339.to_owned());
    };
    let (y, m, d) = (&date[0..4], &date[5..7], &date[8..10]);
    (
        format!("{time} ngày {d}/{m}/{y}"),
        format!("{time} on {d}/{m}/{y}"),
    )
}

fn banner(w: &Window, now: i64) -> Banner {
    let j = to_json(w, now);
    let (from_vi, from_en) = when(&j.starts_at);
    let (to_vi, to_en) = when(&j.ends_at);
    let (text_vi, text_en) = match (j.state == "ongoing", w.interruption_expected) {
        (true, true) => (
            format!(
                "Đang bảo trì hệ thống đến {to_vi} (giờ Việt Nam); trục liên thông có thể gián đoạn."
            ),
            format!(
                "Maintenance in progress until {to_en} (Vietnam time, UTC+7); the gateway may be unavailable."
            ),
        ),
        (true, false) => (
            format!(
                "Đang bảo trì, nâng cấp hệ thống đến {to_vi} (giờ Việt Nam); không dự kiến gián đoạn."
            ),
            format!(
                "Maintenance in progress until {to_en} (Vietnam time, UTC+7); no interruption expected."
            ),
        ),
        (false, true) => (
            format!(
                "Lịch bảo trì hệ thống: từ {from_vi} đến {to_vi} (giờ Việt Nam); trục liên thông có thể gián đoạn."
            ),
            format!(
                "Scheduled maintenance from {from_en} to {to_en} (Vietnam time, UTC+7); the gateway may be unavailable."
            ),
        ),
        (false, false) => (
            format!(
                "Lịch bảo trì, nâng cấp hệ thống: từ {from_vi} đến {to_vi} (giờ Việt Nam); không dự kiến gián đoạn."
            ),
            format!(
                "Scheduled maintenance from {from_en} to {to_en} (Vietnam time, UTC+7); no interruption expected."
            ),
        ),
    };
    Banner {
        window: j,
        text_vi,
        text_en,
    }
}

pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The banners of `windows` as HTML (the operator's message escaped); the
/// same markup `dashboard.js` builds.
pub(crate) fn banners_html(windows: &[Window]) -> String {
    let now = now_micros();
    let mut html = String::new();
    for w in windows {
        let b = banner(w, now);
        html.push_str(&format!(
            "<div class=\"maintenance-item\" data-id=\"{}\"><strong>{}</strong> <span class=\"maintenance-message\">{}</span><br><span class=\"maintenance-en\" lang=\"en\">{}</span></div>",
            w.id,
            escape(&b.text_vi),
            escape(&w.message),
            escape(&b.text_en),
        ));
    }
    html
}

/// `/api/maintenance`: the windows current or to come, soonest first.
pub(crate) async fn api(State(app): State<App>) -> Result<Response, ApiError> {
    let now = now_micros();
    let windows = app.gw.maintenance_windows().await?;
    let out: Vec<Banner> = windows.iter().map(|w| banner(w, now)).collect();
    Ok(axum::Json(out).into_response())
}

/// `POST /api/maintenance`: what an admin announces.
#[derive(Debug, Deserialize)]
pub(crate) struct Announcement {
    /// RFC 3339; without an offset (`2026-11-30T22:00`) it is Vietnam time.
    from: String,
    to: String,
    message: String,
    /// False for a rolling upgrade (no interruption expected); absent, the
    /// gateway may be unavailable, as before the field existed.
    #[serde(default = "interruption_by_default")]
    interruption: bool,
}

fn interruption_by_default() -> bool {
    true
}

/// `2026-11-30T22:00:00+07:00`, or a form field's `2026-11-30T22:00`
/// (Vietnam time), as Unix microseconds.
fn instant(field: &str, s: &str) -> Result<i64, Error> {
    let t = s.trim();
    let parsed = OffsetDateTime::parse(t, &Rfc3339).or_else(|_| {
        let with_secs = if t.len() == 16 {
            format!("{t}:00+07:00")
        } else {
            format!("{t}+07:00")
        };
        OffsetDateTime::parse(&with_secs, &Rfc3339)
    });
    parsed
        .map(|d| (d.unix_timestamp_nanos() / 1000) as i64)
        .or_err_with(Reason::Malformed, |_| {
            format!(
                "{field} {:?} is not a time; write 2026-11-30T22:00 (Vietnam time) or RFC 3339 with an offset",
                lienthong_core::text::truncate(t, 40)
            )
        })
}

pub(crate) async fn announce(
    State(app): State<App>,
    axum::Extension(s): axum::Extension<Session>,
    axum::Json(a): axum::Json<Announcement>,
) -> Result<Response, ApiError> {
    let from = instant("from", &a.from)?;
    let to = instant("to", &a.to)?;
    let w = app
        .gw
        .announce_maintenance(from, to, &a.message, a.interruption)
        .await?;
    tracing::info!(id = w.id, operator = %s.operator.name, interruption_expected = w.interruption_expected, "maintenance window announced from the dashboard");
    Ok(axum::Json(banner(&w, now_micros())).into_response())
}

pub(crate) async fn cancel(
    State(app): State<App>,
    axum::Extension(s): axum::Extension<Session>,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    let w = app.gw.cancel_maintenance(id).await?;
    tracing::info!(id = w.id, operator = %s.operator.name, "maintenance window cancelled from the dashboard");
    Ok(axum::Json(banner(&w, now_micros())).into_response())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn a_banner_says_when_in_both_languages_and_escapes_the_message() {
        let start = 1_796_050_800 * 1_000_000; // 2026-11-30 22:00 in Vietnam
        let w = Window {
            id: 3,
            starts_at: start,
            ends_at: start + 7_200_000_000,
            message: "Nâng cấp <máy chủ> & mạng".to_owned(),
            announced_at: start - 86_400_000_000,
            cancelled_at: None,
            interruption_expected: true,
        };
        let b = banner(&w, start - 1);
        assert!(
            b.text_vi
                .contains("từ 22:00 ngày 30/11/2026 đến 00:00 ngày 01/12/2026 (giờ Việt Nam)"),
            "{}",
            b.text_vi
        );
        assert!(
            b.text_en
                .contains("from 22:00 on 30/11/2026 to 00:00 on 01/12/2026"),
            "{}",
            b.text_en
        );
        let ongoing = banner(&w, start + 1);
        assert!(
            ongoing.text_vi.starts_with("Đang bảo trì"),
            "{}",
            ongoing.text_vi
        );
        assert!(
            b.text_vi.ends_with("trục liên thông có thể gián đoạn."),
            "{}",
            b.text_vi
        );
        // A rolling upgrade: maintenance and upgrade, no interruption.
        let rolling = Window {
            interruption_expected: false,
            ..w.clone()
        };
        let b = banner(&rolling, start - 1);
        assert_eq!(
            b.text_vi,
            "Lịch bảo trì, nâng cấp hệ thống: từ 22:00 ngày 30/11/2026 đến 00:00 ngày 01/12/2026 (giờ Việt Nam); không dự kiến gián đoạn."
        );
        assert!(
            b.text_en.ends_with("; no interruption expected."),
            "{}",
            b.text_en
        );
        assert!(!b.window.interruption);
        let b = banner(&rolling, start + 1);
        assert_eq!(
            b.text_vi,
            "Đang bảo trì, nâng cấp hệ thống đến 00:00 ngày 01/12/2026 (giờ Việt Nam); không dự kiến gián đoạn."
        );
        assert!(
            b.text_en.starts_with("Maintenance in progress until"),
            "{}",
            b.text_en
        );
        let html = banners_html(&[w]);
        assert!(
            html.contains("Nâng cấp &lt;máy chủ&gt; &amp; mạng"),
            "{html}"
        );
        assert!(!html.contains("<máy"), "{html}");
    }
}

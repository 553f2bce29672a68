//! The public directory: the agencies' codes (mã định danh), names,
//! parents and contact details, as the regulation asks them published.
//!
//! Open by design: no login, no client certificate, whoever reaches the
//! listener (the Host allow-list still applies). Only the public fields
//! leave (`Records::public_directory`): no certificates, channel, update
//! times, extra columns, nothing of the transfer log. What it costs is
//! bounded per peer — an IPv4 address or an IPv6 /64 ([`PeerKey`]) — by a
//! token bucket (`http.public_directory_rate`, `_burst`), and as a whole by
//! a few queries at a time of its own, so that strangers cannot take the
//! dashboard's turns.
//!
//! | path | what |
//! | --- | --- |
//! | `/directory?q=&page=` | the page (Vietnamese), rendered here: works without script |
//! | `/api/public/directory?q=&page=` | `{total, page, per_page, agencies: [...]}` |
//! | `/api/public/directory/{code}` | one agency, or 404 with a sentence |

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use lienthong_core::error::{Error, Reason};
use lienthong_core::peers::PeerKey;
use lienthong_core::records::{PublicAgency, PublicDirectoryPage};
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::listen::PeerInfo;
use crate::maintenance::escape;
use crate::{ApiError, App, Params, param};

const DIRECTORY_HTML: &str = include_str!("../assets/directory.html");

/// Agencies on a page of the directory.
pub const PER_PAGE: u64 = 50;

/// The longest search text, in characters.
const MAX_QUERY_CHARS: usize = 200;

/// The highest page number asked for (50 agencies a page: far beyond any
/// directory).
const MAX_PAGE: u64 = 100_000;

/// Directory queries answered at once, whoever asks; the next waits a
/// moment, then gets 503.
const QUERIES_AT_ONCE: usize = 2;
const QUERY_WAIT: Duration = Duration::from_secs(2);

/// Most peers whose buckets are kept; past it, full buckets (the same as
/// none) are dropped, at most once a second.
const MAX_PEERS: usize = 65_536;

/// How the public directory is served.
#[derive(Debug, Clone, Copy)]
pub struct PublicDirectoryOptions {
    /// Serve it at all; off, its paths are 404 like any unknown path.
    pub enabled: bool,
    /// Requests a second one peer may make, sustained (0: no limit).
    pub rate: f64,
    /// Requests one peer may make at once above that rate.
    pub burst: u32,
}

impl Default for PublicDirectoryOptions {
    fn default() -> Self {
        PublicDirectoryOptions {
            enabled: true,
            rate: 10.0,
            burst: 30,
        }
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// The buckets by peer (`None`: a request whose address is unknown), and
/// when the map was last swept.
type Buckets = (HashMap<Option<PeerKey>, Bucket>, Option<Instant>);

/// Token buckets by peer. A plain map behind a lock never held across an
/// await.
#[derive(Debug)]
struct Limiter {
    rate: f64,
    burst: f64,
    map: Mutex<Buckets>,
}

impl Limiter {
    fn new(rate: f64, burst: f64) -> Limiter {
        Limiter {
            rate,
            burst: burst.max(1.0),
            map: Mutex::new((HashMap::new(), None)),
        }
    }

    /// Takes one token of `peer`'s bucket at `now`; when it is empty, how
    /// long until the next token.
    fn take_at(&self, peer: Option<PeerKey>, now: Instant) -> Result<(), Duration> {
        if self.rate <= 0.0 || !self.rate.is_finite() {
            return Ok(());
        }
        let mut guard = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let (map, pruned) = &mut *guard;
        if !map.contains_key(&peer) && map.len() >= MAX_PEERS {
            if pruned.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1)) {
                // Too many peers to track right now: this one goes
                // unmetered rather than costing every request a sweep (the
                // queries at once still bound the cost).
                return Ok(());
            }
            *pruned = Some(now);
            let (rate, burst) = (self.rate, self.burst);
            map.retain(|_, b| b.tokens + now.duration_since(b.last).as_secs_f64() * rate < burst);
        }
        let b = map.entry(peer).or_insert(Bucket {
            tokens: self.burst,
            last: now,
        });
        let refill = now.saturating_duration_since(b.last).as_secs_f64() * self.rate;
        b.tokens = (b.tokens + refill).min(self.burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / self.rate))
        }
    }
}

/// The public directory's share of the listener.
#[derive(Debug)]
pub(crate) struct Public {
    limiter: Limiter,
    queries: Arc<Semaphore>,
}

impl Public {
    pub(crate) fn new(opts: PublicDirectoryOptions) -> Public {
        Public {
            limiter: Limiter::new(opts.rate, f64::from(opts.burst)),
            queries: Arc::new(Semaphore::new(QUERIES_AT_ONCE)),
        }
    }

    async fn query_turn(&self) -> Result<OwnedSemaphorePermit, Error> {
        match tokio::time::timeout(QUERY_WAIT, self.queries.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(p),
            _ => Err(Error::new(
                Reason::Unavailable,
                "Trục liên thông đang trả lời nhiều yêu cầu tra cứu danh bạ cùng lúc; vui lòng thử lại sau vài giây.",
            )),
        }
    }
}

fn is_api(req: &Request) -> bool {
    req.uri().path().starts_with("/api/public/")
}

/// Open data: any site may read the JSON API from a browser.
fn allow_any_origin(res: &mut Response) {
    res.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
}

/// Takes one request from the peer's bucket; past it, 429 with
/// `Retry-After` and a sentence (JSON on the API, text on the page).
pub(crate) async fn limit(State(app): State<App>, req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<PeerInfo>>()
        .map(|ConnectInfo(p)| PeerKey::of(p.addr.ip()));
    let api = is_api(&req);
    let mut res = match app.public.limiter.take_at(peer, Instant::now()) {
        Ok(()) => next.run(req).await,
        Err(wait) => too_many(api, wait),
    };
    if api {
        allow_any_origin(&mut res);
    }
    res
}

fn too_many(api: bool, wait: Duration) -> Response {
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    let sentence = format!(
        "Quá nhiều yêu cầu tra cứu danh bạ từ địa chỉ của bạn. Vui lòng thử lại sau {secs} giây. \
         (Too many directory requests from your address; try again in {secs} s.)"
    );
    let mut res = if api {
        crate::auth::refusal(StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED", sentence)
    } else {
        (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            sentence,
        )
            .into_response()
    };
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        res.headers_mut().insert(header::RETRY_AFTER, v);
    }
    res
}

/// The search text and page of a request, checked.
struct Ask {
    q: String,
    page: u64,
}

impl Ask {
    fn of(p: &HashMap<String, String>) -> Result<Ask, Error> {
        let q = param(p, "q");
        if q.chars().count() > MAX_QUERY_CHARS {
            return Err(Error::malformed(format!(
                "Nội dung tìm kiếm quá dài (tối đa {MAX_QUERY_CHARS} ký tự)."
            )));
        }
        let page = match param(p, "page") {
            "" => 1,
            s => match s.parse::<u64>() {
                Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
                _ => {
                    return Err(Error::malformed(format!(
                        "Số trang {} không hợp lệ: hãy cho một số nguyên từ 1 đến {MAX_PAGE}.",
                        lienthong_core::text::quote(s)
                    )));
                }
            },
        };
        Ok(Ask {
            q: q.to_owned(),
            page,
        })
    }

    async fn run(&self, app: &App) -> Result<PublicDirectoryPage, Error> {
        let _turn = app.public.query_turn().await?;
        app.gw
            .records()
            .public_directory(&self.q, PER_PAGE, (self.page - 1) * PER_PAGE)
            .await
    }
}

/// One agency in the JSON API: these keys and no others.
#[derive(Debug, Serialize)]
struct AgencyJson {
    code: String,
    name: String,
    parent: Option<String>,
    parent_name: Option<String>,
    address: String,
    email: String,
    telephone: String,
    website: String,
    active: bool,
}

impl From<PublicAgency> for AgencyJson {
    fn from(a: PublicAgency) -> AgencyJson {
        AgencyJson {
            code: a.organ_id,
            name: a.name,
            parent: a.parent,
            parent_name: a.parent_name,
            address: a.address,
            email: a.email,
            telephone: a.telephone,
            website: a.website,
            active: a.active,
        }
    }
}

#[derive(Debug, Serialize)]
struct PageJson {
    total: u64,
    page: u64,
    per_page: u64,
    agencies: Vec<AgencyJson>,
}

/// `GET /api/public/directory?q=&page=`.
pub(crate) async fn api_search(
    State(app): State<App>,
    Query(p): Params,
) -> Result<Response, ApiError> {
    let ask = Ask::of(&p)?;
    let found = ask.run(&app).await?;
    Ok(axum::Json(PageJson {
        total: found.total,
        page: ask.page,
        per_page: PER_PAGE,
        agencies: found.agencies.into_iter().map(AgencyJson::from).collect(),
    })
    .into_response())
}

/// `GET /api/public/directory/{code}`.
pub(crate) async fn api_agency(
    State(app): State<App>,
    Path(code): Path<String>,
) -> Result<Response, ApiError> {
    let code = code.trim();
    if code.is_empty() || code.chars().count() > MAX_QUERY_CHARS {
        return Err(Error::malformed("Hãy cho một mã định danh để tra cứu.").into());
    }
    let found = {
        let _turn = app.public.query_turn().await?;
        app.gw.records().public_agency(code).await?
    };
    match found {
        Some(a) => Ok(axum::Json(AgencyJson::from(a)).into_response()),
        None => Err(Error::new(
            Reason::NotFound,
            format!(
                "Không có cơ quan, đơn vị nào mang mã định danh {} trong danh bạ của trục liên thông này; tra cứu theo tên tại /api/public/directory?q=…",
                lienthong_core::text::quote(code)
            ),
        )
        .into()),
    }
}

/// `/directory?q=…&page=…` with `q` and `page` encoded.
fn link(q: &str, page: u64) -> String {
    let mut s = String::from("/directory?q=");
    for b in q.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            s.push(b as char);
        } else {
            let _ = write!(s, "%{b:02X}");
        }
    }
    if page > 1 {
        let _ = write!(s, "&page={page}");
    }
    s
}

/// A website as a link when it is one (http or https); else as text.
fn website_html(w: &str) -> String {
    let lower = w.to_ascii_lowercase();
    if lower.starts_with("https://") || lower.starts_with("http://") {
        format!(
            "<a href=\"{0}\" rel=\"noopener noreferrer nofollow\">{0}</a>",
            escape(w)
        )
    } else {
        escape(w)
    }
}

fn row_html(a: &PublicAgency) -> String {
    let parent = match (&a.parent, &a.parent_name) {
        (Some(code), name) => format!(
            "<a href=\"{}\"><code>{}</code></a>{}",
            escape(&link(code, 1)),
            escape(code),
            name.as_deref()
                .map(|n| format!("<br>{}", escape(n)))
                .unwrap_or_default()
        ),
        (None, _) => String::new(),
    };
    let (class, status) = if a.active {
        ("active", "đang hoạt động")
    } else {
        ("inactive", "ngừng hoạt động")
    };
    format!(
        "<tr data-code=\"{code}\"><td><code>{code}</code></td><td class=\"name\">{name}</td>\
         <td class=\"parent\">{parent}</td><td>{address}</td><td>{email}</td><td>{telephone}</td>\
         <td>{website}</td><td class=\"status {class}\">{status}</td></tr>",
        code = escape(&a.organ_id),
        name = escape(&a.name),
        address = escape(&a.address),
        email = escape(&a.email),
        telephone = escape(&a.telephone),
        website = website_html(&a.website),
    )
}

fn page_html(q: &str, body: &str) -> String {
    DIRECTORY_HTML
        .replacen("{{q}}", &escape(q), 1)
        .replacen("<!--result-->", body, 1)
}

fn result_html(q: &str, page: u64, found: &PublicDirectoryPage) -> String {
    let mut out = String::new();
    if found.total == 0 {
        let _ = write!(
            out,
            "<p id=\"directory-summary\" class=\"error\">Không tìm thấy cơ quan, đơn vị nào{}.</p>",
            if q.is_empty() {
                String::new()
            } else {
                format!(" khớp với “{}”", escape(q))
            }
        );
        return out;
    }
    let pages = found.total.div_ceil(PER_PAGE).max(1);
    let first = (page - 1) * PER_PAGE + 1;
    let last = first + found.agencies.len() as u64 - 1;
    let _ = write!(
        out,
        "<p id=\"directory-summary\" class=\"muted\">{} cơ quan, đơn vị{}",
        found.total,
        if q.is_empty() {
            String::new()
        } else {
            format!(" khớp với “{}”", escape(q))
        }
    );
    if found.agencies.is_empty() {
        let _ = write!(
            out,
            " — trang {page} không có kết quả (có {pages} trang).</p>"
        );
    } else {
        let _ = write!(out, " — hiển thị {first}–{last}, trang {page}/{pages}.</p>");
    }
    out.push_str(
        "<div class=\"table-wrap\"><table id=\"directory\"><thead><tr><th>Mã định danh</th>\
         <th>Tên cơ quan, đơn vị</th><th>Cơ quan cấp trên</th><th>Địa chỉ</th><th>Thư điện tử</th>\
         <th>Điện thoại</th><th>Trang thông tin điện tử</th><th>Trạng thái</th></tr></thead><tbody>",
    );
    for a in &found.agencies {
        out.push_str(&row_html(a));
    }
    out.push_str("</tbody></table></div>");
    if pages > 1 {
        out.push_str("<nav class=\"pager\" aria-label=\"Phân trang\">");
        if page > 1 {
            let _ = write!(
                out,
                "<a id=\"page-prev\" href=\"{}\">← Trang trước</a>",
                escape(&link(q, page - 1))
            );
        }
        if page < pages {
            let _ = write!(
                out,
                "<a id=\"page-next\" href=\"{}\">Trang sau →</a>",
                escape(&link(q, page + 1))
            );
        }
        out.push_str("</nav>");
    }
    out
}

/// `GET /directory?q=&page=`: the page, rendered here.
pub(crate) async fn page(State(app): State<App>, Query(p): Params) -> Response {
    let q = param(&p, "q");
    let (status, body) = match Ask::of(&p) {
        Err(e) => (
            StatusCode::BAD_REQUEST,
            format!(
                "<p id=\"directory-summary\" class=\"error\">{}</p>",
                escape(e.message())
            ),
        ),
        Ok(ask) => match ask.run(&app).await {
            Ok(found) => (StatusCode::OK, result_html(&ask.q, ask.page, &found)),
            Err(e) => {
                let status = crate::status_of(e.reason());
                if status.is_server_error() {
                    tracing::warn!(reason = %e.reason(), error = %e.chain(), "http: the public directory could not be read");
                }
                let sentence = if e.reason() == Reason::Unavailable {
                    e.message().to_owned()
                } else {
                    "Không tra cứu được danh bạ lúc này. Vui lòng thử lại sau ít phút.".to_owned()
                };
                (
                    status,
                    format!(
                        "<p id=\"directory-summary\" class=\"error\">{}</p>",
                        escape(&sentence)
                    ),
                )
            }
        },
    };
    let mut res = (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        page_html(q, &body),
    )
        .into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    res
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::net::IpAddr;

    fn peer(s: &str) -> Option<PeerKey> {
        Some(PeerKey::of(s.parse::<IpAddr>().unwrap()))
    }

    #[test]
    fn a_peer_gets_its_burst_then_its_rate_and_a_wait() {
        let l = Limiter::new(10.0, 30.0);
        let t0 = Instant::now();
        let a = peer("192.0.2.1");
        for i in 0..30 {
            assert!(l.take_at(a, t0).is_ok(), "request {i} of the burst");
        }
        let wait = l.take_at(a, t0).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        // Another address has its own bucket; one of the same /64 does not.
        assert!(l.take_at(peer("192.0.2.2"), t0).is_ok());
        let v6 = peer("2001:db8:1:2::1");
        for _ in 0..30 {
            assert!(l.take_at(v6, t0).is_ok());
        }
        assert!(l.take_at(peer("2001:db8:1:2:ffff::9"), t0).is_err());
        assert!(l.take_at(peer("2001:db8:1:3::1"), t0).is_ok());
        // A tenth of a second later: one more.
        let t1 = t0 + Duration::from_millis(100);
        assert!(l.take_at(a, t1).is_ok());
        assert!(l.take_at(a, t1).is_err());
        // Off: no limit.
        let off = Limiter::new(0.0, 30.0);
        for _ in 0..1000 {
            assert!(off.take_at(a, t0).is_ok());
        }
    }

    #[test]
    fn the_map_of_peers_stays_bounded() {
        let l = Limiter::new(1.0, 2.0);
        let t0 = Instant::now();
        for i in 0..MAX_PEERS as u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            assert!(l.take_at(Some(PeerKey::of(ip)), t0).is_ok());
        }
        // Everyone's bucket refilled: the sweep drops them all.
        let later = t0 + Duration::from_secs(5);
        assert!(l.take_at(peer("192.0.2.1"), later).is_ok());
        assert_eq!(l.map.lock().unwrap().0.len(), 1);
    }

    #[test]
    fn links_and_rows_escape_what_agencies_send() {
        assert_eq!(link("uy ban", 1), "/directory?q=uy%20ban");
        assert_eq!(link("a&b=<c>", 3), "/directory?q=a%26b%3D%3Cc%3E&page=3");
        let a = PublicAgency {
            organ_id: "000.00.77.H35".into(),
            name: "<script>alert(1)</script> \"Sở\" & 'Ban'".into(),
            parent: Some("000.00.00.H35".into()),
            parent_name: Some("<b>UBND</b>".into()),
            address: "<i>".into(),
            email: "a@b".into(),
            telephone: "0213".into(),
            website: "javascript:alert(1)".into(),
            active: false,
        };
        let html = row_html(&a);
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("<b>") && !html.contains("<i>"), "{html}");
        assert!(
            html.contains(
                "&lt;script&gt;alert(1)&lt;/script&gt; &quot;Sở&quot; &amp; &#39;Ban&#39;"
            )
        );
        assert!(!html.contains("href=\"javascript"), "{html}");
        assert!(html.contains("ngừng hoạt động"));
        assert_eq!(
            website_html("https://laichau.gov.vn/?a=\"x\""),
            "<a href=\"https://laichau.gov.vn/?a=&quot;x&quot;\" rel=\"noopener noreferrer nofollow\">https://laichau.gov.vn/?a=&quot;x&quot;</a>"
        );
        let page = page_html("\"><script>", "");
        assert!(
            page.contains("value=\"&quot;&gt;&lt;script&gt;\""),
            "{page}"
        );
    }
}

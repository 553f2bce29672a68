//! The HTTP adapter: health checks, Prometheus metrics, report downloads,
//! a small JSON API and the dashboard of the province's IT office.
//!
//! API boundary: every handler calls a `lienthong_core` or
//! `lienthong_reports` function that takes the [`Gateway`]
//! (`reports::overview`, `reports::search`,
//! `Gateway::metrics_text`, `Gateway::operator_session`, …) and turns its answer, or its
//! [`Error`], into HTTP. This crate knows nothing of the database.
//!
//! Who may ask what: every request but `/health/*` must be addressed to an
//! allowed host ([`AllowedHosts`]: what stops DNS rebinding). The dashboard,
//! `/api/*` (but `/api/public/*`) and `/reports/*` need a logged-in operator (a session cookie;
//! `viewer` or `admin`); a request that changes something also needs the
//! session's CSRF token. `/metrics` needs a bearer token unless the listener
//! is on loopback. Report and search queries run a few at a time, over at
//! most [`HttpOptions::max_report_days`].
//!
//! | path | who | what |
//! | --- | --- | --- |
//! | `/` | viewer | the dashboard (Vietnamese), HTML/CSS/JS embedded in the binary |
//! | `/login` | anyone | the login page (`POST`: name and password) |
//! | `/login/certificate` | anyone | `POST`: log in with the HTTPS client certificate |
//! | `/logout` | viewer | `POST`: end the session |
//! | `/health/live` | anyone | 200 while the process runs |
//! | `/health/ready` | anyone | 200 while the database answers and, with AMQP, the broker is connected; else 503 |
//! | `/health/grpc` | anyone | 200 while agencies can be served over gRPC here (the database answers), whatever the broker; else 503: what a load balancer in front of replicas checks |
//! | `/metrics` | token | Prometheus (OpenMetrics text) |
//! | `/reports/summary.{csv,json,xlsx}?period=&under=&agency=&lang=` | viewer | a report file |
//! | `/api/session` | viewer | who is logged in, and the CSRF token |
//! | `/api/overview` | viewer | the dashboard's figures |
//! | `/api/refusals?limit=` | viewer | the latest refusals |
//! | `/api/search?q=` | viewer | messages by message_id or số/ký hiệu, with their trace |
//! | `/api/maintenance` | viewer | maintenance windows current or to come, with the banner's sentences |
//! | `/api/backup` | viewer | the last backup (when, size, where), whether it is late, in a sentence |
//! | `POST /api/maintenance` | admin | announce a window `{from, to, message}` |
//! | `POST /api/maintenance/{id}/cancel` | admin | cancel a window |
//! | `/directory?q=&page=` | anyone | the public directory of agencies' codes (mã định danh), rate-limited per peer ([`PublicDirectoryOptions`]) |
//! | `/api/public/directory?q=&page=` | anyone | the same as JSON, `Access-Control-Allow-Origin: *` |
//! | `/api/public/directory/{code}` | anyone | one agency, or 404 with a sentence |

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use lienthong_core::error::{Error, OrErr, Reason};
use lienthong_core::national_directory::DirectoryExchange;
use lienthong_core::operators::{LoginLimits, Session, SessionPolicy};
use lienthong_core::pipeline::Gateway;
use lienthong_reports::{self as reports, Format, Lang, Period, ReportSettings, Scope};
use lienthong_tls::ReloadingTls;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

mod auth;
mod listen;
mod maintenance;
mod public;

pub use auth::{AllowedHosts, CSRF_HEADER, MetricsAccess};
pub use listen::{PeerInfo, serve, serve_tls};
pub use public::PublicDirectoryOptions;

const INDEX_HTML: &str = include_str!("../assets/index.html");
const DASHBOARD_JS: &str = include_str!("../assets/dashboard.js");
const DASHBOARD_CSS: &str = include_str!("../assets/dashboard.css");

/// What every response carries: the page loads only its own files, and
/// nothing is cached that could go stale or leak.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// The longest period a report over HTTP may cover: 13 months (a year and
/// its neighbour month), so that no request scans a decade of the log.
pub const MAX_REPORT_DAYS: i64 = 397;

/// How long a report or search waits for its turn before it is turned away.
const QUERY_WAIT: Duration = Duration::from_secs(2);

/// How the listener is set up.
#[derive(Clone)]
pub struct HttpOptions {
    pub reports: ReportSettings,
    pub hosts: AllowedHosts,
    pub metrics: MetricsAccess,
    /// Cookies marked `Secure`, with the `__Host-` prefix (HTTPS).
    pub secure_cookies: bool,
    pub sessions: SessionPolicy,
    pub login_limits: LoginLimits,
    /// Report and search queries answered at once; the next waits a moment,
    /// then gets 503 with a sentence.
    pub queries: Arc<Semaphore>,
    /// The longest report period, in days.
    pub max_report_days: i64,
    /// The HTTPS set-up, whose client anchors judge operators' certificates.
    pub tls: Option<Arc<ReloadingTls>>,
    /// The daily backup's time (hour, minute; Vietnam time), `None` when
    /// none is scheduled: the dashboard warns when a backup is late.
    pub backup_schedule: Option<(u8, u8)>,
    /// The public directory (`/directory`, `/api/public/directory`): open
    /// to anyone, rate-limited per peer.
    pub public_directory: PublicDirectoryOptions,
    /// The national directory exchange, whose peers the dashboard shows.
    pub directory_exchange: Option<Arc<DirectoryExchange>>,
}

impl HttpOptions {
    /// A loopback listener's options: its own host names, `/metrics` open,
    /// plain cookies, four queries at once.
    pub fn loopback(reports: ReportSettings) -> HttpOptions {
        HttpOptions {
            reports,
            hosts: AllowedHosts::for_listener(std::net::SocketAddr::from(([127, 0, 0, 1], 0)), &[]),
            metrics: MetricsAccess::Open,
            secure_cookies: false,
            sessions: SessionPolicy::default(),
            login_limits: LoginLimits::default(),
            queries: Arc::new(Semaphore::new(4)),
            max_report_days: MAX_REPORT_DAYS,
            tls: None,
            backup_schedule: None,
            public_directory: PublicDirectoryOptions::default(),
            directory_exchange: None,
        }
    }
}

#[derive(Clone)]
struct App {
    gw: Gateway,
    settings: ReportSettings,
    hosts: AllowedHosts,
    metrics: MetricsAccess,
    auth: auth::Auth,
    queries: Arc<Semaphore>,
    max_report_days: i64,
    backup_schedule: Option<(u8, u8)>,
    public: Arc<public::Public>,
    directory_exchange: Option<Arc<DirectoryExchange>>,
}

impl App {
    /// A turn to run a report or search query, waited for a moment.
    async fn query_turn(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        match tokio::time::timeout(QUERY_WAIT, self.queries.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(p),
            _ => Err(ApiError(Error::new(
                Reason::Unavailable,
                "the gateway is already answering as many report and search queries as it takes at once; try again in a few seconds",
            ))),
        }
    }
}

/// The HTTP routes over a gateway.
pub fn router(gw: Gateway, opts: HttpOptions) -> Router {
    let guard = gw.login_guard(opts.login_limits);
    let app = App {
        gw,
        settings: opts.reports,
        hosts: opts.hosts,
        metrics: opts.metrics,
        auth: auth::Auth::new(guard, opts.sessions, opts.secure_cookies, opts.tls),
        queries: opts.queries,
        max_report_days: opts.max_report_days,
        backup_schedule: opts.backup_schedule,
        public: Arc::new(public::Public::new(opts.public_directory)),
        directory_exchange: opts.directory_exchange,
    };
    let viewer = Router::new()
        .route("/", get(index))
        .route("/reports/{file}", get(report))
        .route("/api/session", get(auth::session_info))
        .route("/api/overview", get(overview))
        .route("/api/refusals", get(refusals))
        .route("/api/search", get(search))
        .route("/api/maintenance", get(maintenance::api))
        .route("/api/backup", get(backup))
        .route("/api/peers", get(peers))
        .route_layer(axum::middleware::from_fn_with_state(
            app.clone(),
            auth::require_viewer,
        ));
    let admin = Router::new()
        .route("/api/maintenance", post(maintenance::announce))
        .route("/api/maintenance/{id}/cancel", post(maintenance::cancel))
        .route_layer(axum::middleware::from_fn_with_state(
            app.clone(),
            auth::require_admin,
        ));
    // Open by design: no login layer, only the per-peer rate limit.
    let open = if opts.public_directory.enabled {
        Router::new()
            .route("/directory", get(public::page))
            .route("/api/public/directory", get(public::api_search))
            .route("/api/public/directory/{code}", get(public::api_agency))
            .route_layer(axum::middleware::from_fn_with_state(
                app.clone(),
                public::limit,
            ))
    } else {
        Router::new()
    };
    Router::new()
        .route("/assets/dashboard.js", get(script))
        .route("/assets/dashboard.css", get(style))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/health/grpc", get(serving_grpc))
        .route("/metrics", get(metrics))
        .route("/login", get(auth::login_page).post(auth::login))
        .route("/login/certificate", post(auth::login_certificate))
        .route("/logout", post(auth::logout))
        .merge(admin)
        .merge(viewer)
        .merge(open)
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            auth::check_host,
        ))
        .layer(axum::middleware::map_response(secure_headers))
        .with_state(app)
}

async fn secure_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Same-origin requests keep their Origin (under `no-referrer` a browser
    // sends `Origin: null`, which the CSRF check cannot tell from a
    // sandboxed page of another site); other sites learn nothing.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    res
}

/// The core's error as JSON `{reason, message}` with a fitting status.
pub(crate) struct ApiError(pub(crate) Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

pub(crate) fn status_of(r: Reason) -> StatusCode {
    match r {
        Reason::Malformed | Reason::BadIdentifier => StatusCode::BAD_REQUEST,
        Reason::NotFound => StatusCode::NOT_FOUND,
        Reason::PermissionDenied => StatusCode::FORBIDDEN,
        Reason::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        Reason::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = status_of(self.0.reason());
        if status.is_server_error() {
            tracing::warn!(reason = %self.0.reason(), error = %self.0.chain(), "http: request failed");
        }
        let body = serde_json::json!({
            "reason": self.0.reason().as_str(),
            "message": self.0.message(),
        });
        let mut res = (status, axum::Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        res
    }
}

type Params = Query<HashMap<String, String>>;

fn param<'a>(p: &'a HashMap<String, String>, k: &str) -> &'a str {
    p.get(k).map(String::as_str).unwrap_or("").trim()
}

async fn index(State(app): State<App>, axum::Extension(s): axum::Extension<Session>) -> Response {
    // Maintenance banners in the page itself. The page shows even
    // when they cannot be read (dashboard.js tries again).
    let banners = match app.gw.maintenance_windows().await {
        Ok(w) => maintenance::banners_html(&w),
        Err(e) => {
            tracing::warn!(error = %e.chain(), "http: the maintenance windows could not be read");
            String::new()
        }
    };
    let role = s.operator.role.as_str();
    let who = format!(
        "<span id=\"operator-name\">{}</span> <span class=\"muted\">({})</span>\
         <form method=\"post\" action=\"/logout\" class=\"logout\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <button type=\"submit\" id=\"logout\">Đăng xuất</button></form>",
        maintenance::escape(&s.operator.name),
        if role == "admin" {
            "quản trị"
        } else {
            "xem"
        },
        maintenance::escape(&s.csrf_token),
    );
    let html = INDEX_HTML
        .replacen(maintenance::PLACEHOLDER, &banners, 1)
        .replacen("<!--operator-->", &who, 1)
        .replacen(
            "<!--csrf-->",
            &format!(
                "<meta name=\"csrf-token\" content=\"{}\">",
                maintenance::escape(&s.csrf_token)
            ),
            1,
        )
        .replacen("<body>", &format!("<body data-role=\"{role}\">"), 1);
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
}

async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        DASHBOARD_JS,
    )
        .into_response()
}

async fn style() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        DASHBOARD_CSS,
    )
        .into_response()
}

async fn live() -> Response {
    axum::Json(serde_json::json!({"status": "live"})).into_response()
}

/// Whether agencies can be served here. A broker that is away does not
/// count: sends and receipts go on (the outbox keeps what leaves), so a
/// load balancer must not take this replica out of the agencies' rotation
/// for it — with replicas, the one holding the AMQP lease would otherwise
/// leave the rotation at every broker outage.
async fn serving_grpc(State(app): State<App>) -> Result<Response, ApiError> {
    app.gw.ready().await?;
    Ok(axum::Json(serde_json::json!({"status": "serving", "database": "up"})).into_response())
}

async fn ready(State(app): State<App>) -> Result<Response, ApiError> {
    app.gw.ready().await?;
    match app.gw.broker_status() {
        None => Ok(
            axum::Json(serde_json::json!({"status": "ready", "database": "up"})).into_response(),
        ),
        Some(Ok(())) => Ok(axum::Json(
            serde_json::json!({"status": "ready", "database": "up", "broker": "up"}),
        )
        .into_response()),
        // Agencies can still send and receive here (the outbox keeps what
        // leaves), but the national exchange is cut off: not ready.
        Some(Err(why)) => Ok((
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({
                "status": "unavailable",
                "database": "up",
                "broker": "down",
                "reason": format!("the AMQP broker is not connected: {why}"),
            })),
        )
            .into_response()),
    }
}

async fn metrics(State(app): State<App>, headers: HeaderMap) -> Response {
    if let Err(refused) = auth::metrics_allowed(&app.metrics, &headers).await {
        return refused;
    }
    let text = app.gw.metrics_text().await;
    (
        [(header::CONTENT_TYPE, lienthong_metrics::CONTENT_TYPE)],
        text,
    )
        .into_response()
}

async fn report(
    State(app): State<App>,
    Path(file): Path<String>,
    Query(p): Params,
) -> Result<Response, ApiError> {
    let format = match file.strip_prefix("summary.") {
        Some(ext) => Format::parse(ext)?,
        None => {
            return Err(Error::new(
                Reason::NotFound,
                "reports are at /reports/summary.csv, /reports/summary.json and /reports/summary.xlsx",
            )
            .into());
        }
    };
    let period = match param(&p, "period") {
        "" => Period::month_of(lienthong_core::now_micros()),
        s => Period::parse(s)?,
    };
    let scope = match (param(&p, "agency"), param(&p, "under")) {
        ("", under) => Scope::parse(under)?,
        (agency, "") => Scope::agency(agency)?,
        _ => {
            return Err(Error::malformed(
                "give either agency (one agency) or under (an agency and those under it), not both",
            )
            .into());
        }
    };
    let lang = Lang::parse(param(&p, "lang"))?;
    let (first, last) = period.days();
    let days = (last - first).whole_days() + 1;
    if days > app.max_report_days {
        return Err(Error::malformed(format!(
            "the period {period} covers {days} days; a report from the dashboard covers at most {} days (13 months): ask for a shorter period, or run `lienthong report` on the gateway's machine",
            app.max_report_days
        ))
        .into());
    }
    let _turn = app.query_turn().await?;
    let r = reports::summary(&app.gw, period, &scope, &app.settings).await?;
    let bytes = match format {
        Format::Csv => reports::to_csv(&r, lang)?,
        Format::Json => reports::to_json(&r)?,
        Format::Xlsx => reports::to_xlsx(&r, lang)?,
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename=\"{}\"",
        reports::report_file_name(&r, format)
    )) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok((headers, bytes).into_response())
}

async fn overview(State(app): State<App>) -> Result<Response, ApiError> {
    let _turn = app.query_turn().await?;
    let o = reports::overview(&app.gw, &app.settings).await?;
    Ok(axum::Json(o).into_response())
}

async fn backup(State(app): State<App>) -> Result<Response, ApiError> {
    let s = reports::backup_status(&app.gw, app.backup_schedule).await?;
    Ok(axum::Json(s).into_response())
}

/// The peer gateways of the national directory exchange: for each, the
/// last update applied and seen (the lag) and the agencies held from it.
async fn peers(State(app): State<App>) -> Result<Response, ApiError> {
    let peers = match &app.directory_exchange {
        Some(x) => x.peer_status().await?,
        None => Vec::new(),
    };
    Ok(axum::Json(peers).into_response())
}

async fn refusals(State(app): State<App>, Query(p): Params) -> Result<Response, ApiError> {
    let limit = match param(&p, "limit") {
        "" => 20,
        s => s.parse::<u32>().or_err_with(Reason::Malformed, |_| {
            format!(
                "limit {:?} is not a whole number (1 to 200)",
                lienthong_core::text::truncate(s, 20)
            )
        })?,
    };
    let _turn = app.query_turn().await?;
    let r = reports::recent_refusals(&app.gw, limit).await?;
    Ok(axum::Json(r).into_response())
}

async fn search(State(app): State<App>, Query(p): Params) -> Result<Response, ApiError> {
    let _turn = app.query_turn().await?;
    let hits = reports::search(&app.gw, param(&p, "q")).await?;
    Ok(axum::Json(hits).into_response())
}

async fn not_found() -> ApiError {
    ApiError(Error::new(
        Reason::NotFound,
        "no such page; the dashboard is at / (log in at /login), metrics at /metrics, health at /health/live, /health/ready and /health/grpc",
    ))
}

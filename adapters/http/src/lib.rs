//! The HTTP adapter: health checks, Prometheus metrics, report downloads,
//! a small JSON API and the dashboard of the province's IT office.
//!
//! API boundary: every handler calls a `lienthong_core` function that takes
//! the [`Gateway`] (`reports::overview`, `reports::search`,
//! `metrics::render`, …) and turns its answer, or its [`Error`], into HTTP.
//! This crate knows nothing of the database.
//!
//! There is no authentication on this listener yet: it must stay on
//! loopback or a trusted network until mutual TLS lands.
//!
//! | path | what |
//! | --- | --- |
//! | `/` | the dashboard (Vietnamese), HTML/CSS/JS embedded in the binary |
//! | `/health/live` | 200 while the process runs |
//! | `/health/ready` | 200 while the database answers and, with AMQP, the broker is connected; else 503 |
//! | `/metrics` | Prometheus (OpenMetrics text) |
//! | `/reports/summary.{csv,json,xlsx}?period=&under=&agency=&lang=` | a report file |
//! | `/api/overview` | the dashboard's figures |
//! | `/api/refusals?limit=` | the latest refusals |
//! | `/api/search?q=` | messages by message_id or số/ký hiệu, with their trace |
//! | `/api/maintenance` | maintenance windows current or to come, with the banner's sentences |

use std::collections::HashMap;
use std::future::Future;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use lienthong_core::error::{Error, Reason};
use lienthong_core::pipeline::Gateway;
use lienthong_core::reports::{self, Format, Lang, Period, ReportSettings, Scope};
use tokio::net::TcpListener;

mod maintenance; // issue 6

const INDEX_HTML: &str = include_str!("../assets/index.html");
const DASHBOARD_JS: &str = include_str!("../assets/dashboard.js");
const DASHBOARD_CSS: &str = include_str!("../assets/dashboard.css");

/// What every response carries: the page loads only its own files, and
/// nothing is cached that could go stale or leak.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

#[derive(Clone)]
struct App {
    gw: Gateway,
    settings: ReportSettings,
}

/// The HTTP routes over a gateway.
pub fn router(gw: Gateway, settings: ReportSettings) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/assets/dashboard.js", get(script))
        .route("/assets/dashboard.css", get(style))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/reports/{file}", get(report))
        .route("/api/overview", get(overview))
        .route("/api/refusals", get(refusals))
        .route("/api/search", get(search))
        .route("/api/maintenance", get(maintenance::api))
        .fallback(not_found)
        .layer(axum::middleware::map_response(secure_headers))
        .with_state(App { gw, settings })
}

/// Serves `router` on `listener` until `shutdown` completes, then lets the
/// requests in flight finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
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
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    res
}

/// The core's error as JSON `{reason, message}` with a fitting status.
struct ApiError(Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

fn status_of(r: Reason) -> StatusCode {
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
        (status, axum::Json(body)).into_response()
    }
}

type Params = Query<HashMap<String, String>>;

fn param<'a>(p: &'a HashMap<String, String>, k: &str) -> &'a str {
    p.get(k).map(String::as_str).unwrap_or("").trim()
}

async fn index(State(app): State<App>) -> Response {
    // issue 6: maintenance banners in the page itself. The page shows even
    // when they cannot be read (dashboard.js tries again).
    let banners = match app.gw.maintenance_windows().await {
        Ok(w) => maintenance::banners_html(&w),
        Err(e) => {
            tracing::warn!(error = %e.chain(), "http: the maintenance windows could not be read");
            String::new()
        }
    };
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        INDEX_HTML.replacen(maintenance::PLACEHOLDER, &banners, 1),
    )
        .into_response()
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

async fn metrics(State(app): State<App>) -> Response {
    let text = lienthong_core::metrics::render(&app.gw).await;
    (
        [(header::CONTENT_TYPE, lienthong_core::metrics::CONTENT_TYPE)],
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
        "" => Period::month_of(lienthong_core::store::now_micros()),
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
    let o = reports::overview(&app.gw, &app.settings).await?;
    Ok(axum::Json(o).into_response())
}

async fn refusals(State(app): State<App>, Query(p): Params) -> Result<Response, ApiError> {
    let limit = match param(&p, "limit") {
        "" => 20,
        s => s.parse::<u32>().map_err(|_| {
            Error::malformed(format!(
                "limit {:?} is not a whole number (1 to 200)",
                lienthong_core::pipeline::truncate(s, 20)
            ))
        })?,
    };
    let r = reports::recent_refusals(&app.gw, limit).await?;
    Ok(axum::Json(r).into_response())
}

async fn search(State(app): State<App>, Query(p): Params) -> Result<Response, ApiError> {
    let hits = reports::search(&app.gw, param(&p, "q")).await?;
    Ok(axum::Json(hits).into_response())
}

async fn not_found() -> ApiError {
    ApiError(Error::new(
        Reason::NotFound,
        "no such page; the dashboard is at /, metrics at /metrics, health at /health/live and /health/ready",
    ))
}

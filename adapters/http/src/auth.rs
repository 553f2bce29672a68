//! Who may use the HTTP listener: the Host allow-list (what stops DNS
//! rebinding), operators' sessions (cookies naming a session stored in the
//! database), roles, CSRF tokens, the login page (password or client
//! certificate), and the bearer token of `/metrics`.
//!
//! The session check is a layer on the routes that need it (`viewer`,
//! `admin` in `router`), not on the listener: what is open is what is
//! routed outside them — `/health/*`, `/metrics` (its token), the login
//! page, the assets, and by design the public directory (`crate::public`:
//! `/directory`, `/api/public/directory`, rate-limited per peer).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Form, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use lienthong_core::operators::{
    self, LoginGuard, LoginRefusal, NewSession, OperatorRole, Session, SessionPolicy,
};
use lienthong_tls::ReloadingTls;
use serde::Deserialize;

use crate::App;
use crate::listen::PeerInfo;

const LOGIN_HTML: &str = include_str!("../assets/login.html");

/// The header a state-changing API call carries its session's CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The host names a request may be addressed to (the `Host` header, or
/// `:authority` in HTTP/2). A browser made to reach this listener through
/// another name — DNS rebinding — sends that name, and is refused.
#[derive(Debug, Clone)]
pub struct AllowedHosts {
    names: Vec<String>,
    any_ip_literal: bool,
}

impl AllowedHosts {
    /// The allow-list of a listener on `listen`: `configured` names when
    /// given; otherwise, on loopback, only `localhost`, `127.0.0.1` and
    /// `[::1]`; beyond loopback, `localhost` and any IP address written as
    /// such (an address typed by hand is no rebinding: that needs a name).
    pub fn for_listener(listen: SocketAddr, configured: &[String]) -> AllowedHosts {
        if !configured.is_empty() {
            return AllowedHosts {
                names: configured.iter().map(|h| normalize(h)).collect(),
                any_ip_literal: false,
            };
        }
        AllowedHosts {
            names: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            any_ip_literal: !listen.ip().is_loopback(),
        }
    }

    /// The names, for the log at start.
    pub fn describe(&self) -> String {
        let mut s = self.names.join(", ");
        if self.any_ip_literal {
            s.push_str(", any IP address");
        }
        s
    }

    fn allows(&self, host: &str) -> bool {
        let h = normalize(host);
        if h.is_empty() {
            return false;
        }
        self.names.contains(&h) || (self.any_ip_literal && h.parse::<IpAddr>().is_ok())
    }
}

/// `Example.VN.:8443` → `example.vn`; `[::1]:8080` → `::1`.
fn normalize(host: &str) -> String {
    let h = host.trim();
    let h = if let Some(rest) = h.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else if h.matches(':').count() == 1 {
        h.split(':').next().unwrap_or("")
    } else {
        h
    };
    h.trim_end_matches('.').to_ascii_lowercase()
}

/// Who may read `/metrics`.
#[derive(Debug, Clone)]
pub enum MetricsAccess {
    /// Anyone who reaches the listener (a loopback listener without a token).
    Open,
    /// Callers with `Authorization: Bearer <the file's content>`; the file
    /// is read at each scrape, so a new token needs no restart.
    Token(PathBuf),
    /// Nobody: a listener beyond loopback without `http.metrics_token_file`.
    Closed,
}

/// The login side of the listener.
#[derive(Clone)]
pub struct Auth {
    pub(crate) guard: LoginGuard,
    pub(crate) sessions: SessionPolicy,
    /// Cookies are `Secure` (and `__Host-` prefixed): the listener speaks
    /// HTTPS, or sits behind a proxy that does.
    pub(crate) secure: bool,
    /// The TLS set-up whose client anchors judge an operator's certificate.
    pub(crate) tls: Option<Arc<ReloadingTls>>,
}

impl Auth {
    pub fn new(
        guard: LoginGuard,
        sessions: SessionPolicy,
        secure: bool,
        tls: Option<Arc<ReloadingTls>>,
    ) -> Auth {
        Auth {
            guard,
            sessions,
            secure,
            tls,
        }
    }

    fn name(&self, base: &str) -> String {
        if self.secure {
            format!("__Host-{base}")
        } else {
            base.to_owned()
        }
    }

    fn set_cookie(&self, base: &str, value: &str, max_age: u64) -> Option<HeaderValue> {
        let secure = if self.secure { "; Secure" } else { "" };
        HeaderValue::from_str(&format!(
            "{}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}",
            self.name(base)
        ))
        .ok()
    }
}

const SESSION: &str = "lienthong_session";
const LOGIN: &str = "lienthong_login";

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// Compares secrets through their digests, so the time taken says nothing
/// about how much of a guess was right.
fn same_secret(a: &str, b: &str) -> bool {
    let d = |s: &str| ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
    !a.is_empty() && d(a).as_ref() == d(b).as_ref()
}

/// The JSON answer of a refusal: `{reason, message}`.
pub(crate) fn refusal(status: StatusCode, reason: &str, message: impl Into<String>) -> Response {
    let body = serde_json::json!({"reason": reason, "message": message.into()});
    (status, axum::Json(body)).into_response()
}

/// The host a request is addressed to: `:authority` (HTTP/2) or `Host`.
fn host_of(uri: &Uri, headers: &HeaderMap) -> Option<String> {
    uri.authority().map(|a| a.as_str().to_owned()).or_else(|| {
        headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
    })
}

fn request_host(req: &Request) -> Option<String> {
    host_of(req.uri(), req.headers())
}

/// Refuses requests addressed to a host not on the allow-list (421), or to
/// none (400). Health checks are answered whatever the host: probes and
/// load balancers address them by whatever name they know, and they tell
/// nothing.
pub(crate) async fn check_host(State(app): State<App>, req: Request, next: Next) -> Response {
    if req.uri().path().starts_with("/health/") {
        return next.run(req).await;
    }
    match request_host(&req).filter(|h| !h.trim().is_empty()) {
        None => refusal(
            StatusCode::BAD_REQUEST,
            "MALFORMED",
            "the request names no host (Host header); send the address of this gateway's dashboard",
        ),
        Some(h) if app.hosts.allows(&h) => next.run(req).await,
        Some(h) => refusal(
            StatusCode::MISDIRECTED_REQUEST,
            "MISDIRECTED",
            format!(
                "this gateway does not answer for the host {:?}; use one of its own names ({}), or ask its operators to add the name to http.allowed_hosts",
                lienthong_core::text::truncate(&h, 100),
                app.hosts.describe()
            ),
        ),
    }
}

fn peer_of(req_ext: &axum::http::Extensions) -> Option<PeerInfo> {
    req_ext
        .get::<ConnectInfo<PeerInfo>>()
        .map(|ConnectInfo(p)| p.clone())
}

fn peer_name(p: Option<&PeerInfo>) -> String {
    p.map(|p| operators::peer_key(p.addr.ip()))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// A state-changing request from a page of another site: refused whatever
/// token it carries (`Sec-Fetch-Site` and `Origin`, where the browser sends
/// them).
fn cross_site(headers: &HeaderMap, host: Option<&str>) -> bool {
    // The browser's own word first: it knows where the request came from
    // even when it sends `Origin: null`.
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        return site != "same-origin" && site != "none";
    }
    match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        None => false,
        Some(origin) => {
            let origin_host = origin.split_once("://").map(|(_, h)| h).unwrap_or("");
            host.is_none_or(|h| normalize(origin_host) != normalize(h))
        }
    }
}

fn is_safe(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

async fn current_session(app: &App, headers: &HeaderMap) -> Result<Option<Session>, Response> {
    let Some(token) = cookie(headers, &app.auth.name(SESSION)) else {
        return Ok(None);
    };
    app.gw
        .operator_session(token, app.auth.sessions)
        .await
        .map_err(|e| crate::ApiError(e).into_response())
}

fn wants_page(req: &Request) -> bool {
    req.method() == Method::GET
        && req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/html"))
}

fn to_login() -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, "/login")]).into_response()
}

pub(crate) async fn require_viewer(State(app): State<App>, req: Request, next: Next) -> Response {
    require(app, OperatorRole::Viewer, req, next).await
}

pub(crate) async fn require_admin(State(app): State<App>, req: Request, next: Next) -> Response {
    require(app, OperatorRole::Admin, req, next).await
}

/// Lets the request through only with a live session of an operator of at
/// least `need`, and — when it changes anything — with the session's CSRF
/// token in [`CSRF_HEADER`], from a page of this site.
async fn require(app: App, need: OperatorRole, mut req: Request, next: Next) -> Response {
    let session = match current_session(&app, req.headers()).await {
        Ok(Some(s)) => s,
        Ok(None) if wants_page(&req) => return to_login(),
        Ok(None) => {
            return refusal(
                StatusCode::UNAUTHORIZED,
                "UNAUTHENTICATED",
                "log in first: open /login in a browser (operator accounts are made with `lienthong operator add`); a session ends after a while unused",
            );
        }
        Err(r) => return r,
    };
    if session.operator.role < need {
        return refusal(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            format!(
                "this is for the gateway's admins; operator {:?} is a {}",
                session.operator.name,
                session.operator.role.as_str()
            ),
        );
    }
    if !is_safe(req.method()) {
        let host = request_host(&req);
        let sent = req
            .headers()
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if cross_site(req.headers(), host.as_deref()) || !same_secret(sent, &session.csrf_token) {
            return refusal(
                StatusCode::FORBIDDEN,
                "CSRF",
                format!(
                    "a request that changes something must come from the dashboard's own page, with its {CSRF_HEADER} header; reload the page and try again"
                ),
            );
        }
    }
    req.extensions_mut().insert(session);
    next.run(req).await
}

// ----- the login page ----------------------------------------------------------

fn escape(s: &str) -> String {
    crate::maintenance::escape(s)
}

struct LoginPage {
    status: StatusCode,
    error: Option<String>,
    certificate: Option<String>,
    retry_after: Option<u64>,
}

impl LoginPage {
    fn ok() -> LoginPage {
        LoginPage {
            status: StatusCode::OK,
            error: None,
            certificate: None,
            retry_after: None,
        }
    }

    fn error(status: StatusCode, text: impl Into<String>) -> LoginPage {
        LoginPage {
            status,
            error: Some(text.into()),
            ..LoginPage::ok()
        }
    }

    /// The page with a fresh login token (cookie and hidden field: a form
    /// posted from elsewhere cannot know it).
    fn render(self, app: &App) -> Response {
        let token = match operators::random_token() {
            Ok(t) => t,
            Err(e) => return crate::ApiError(e).into_response(),
        };
        let error = self
            .error
            .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(&e)))
            .unwrap_or_default();
        let cert = self
            .certificate
            .map(|name| {
                format!(
                    "<form method=\"post\" action=\"/login/certificate\" class=\"cert\">\
                     <input type=\"hidden\" name=\"csrf\" value=\"{token}\">\
                     <button type=\"submit\" id=\"cert-login\">Đăng nhập bằng chứng thư số của {}</button></form>",
                    escape(&name)
                )
            })
            .unwrap_or_default();
        let html = LOGIN_HTML
            .replace("{{csrf}}", &token)
            .replace("<!--error-->", &error)
            .replace("<!--certificate-->", &cert);
        let mut res = (
            self.status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            html,
        )
            .into_response();
        if let Some(c) = app.auth.set_cookie(LOGIN, &token, 3600) {
            res.headers_mut().append(header::SET_COOKIE, c);
        }
        if let Some(s) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            res.headers_mut().insert(header::RETRY_AFTER, v);
        }
        res
    }
}

/// `GET /login`. A browser that presented a client certificate bound to an
/// operator is offered to log in with it.
pub(crate) async fn login_page(State(app): State<App>, req: Request) -> Response {
    let mut page = LoginPage::ok();
    if let (Some(tls), Some(peer)) = (&app.auth.tls, peer_of(req.extensions()))
        && let Some(chain) = &peer.client_chain
        && let Ok(spki) = tls.verify_client(chain)
        && let Ok(op) = app.auth.guard.certificate_operator(&spki).await
    {
        page.certificate = Some(op.name);
    }
    page.render(&app)
}

#[derive(Debug, Deserialize)]
pub(crate) struct LoginForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// The login form's token matches the cookie set with the page, and the
/// form was posted from this site.
fn login_form_ok(app: &App, headers: &HeaderMap, host: Option<&str>, csrf: &str) -> bool {
    let cookie = cookie(headers, &app.auth.name(LOGIN)).unwrap_or("");
    let cross = cross_site(headers, host);
    let ok = !cross && same_secret(csrf, cookie);
    if !ok {
        tracing::info!(
            cross_site = cross,
            cookie = !cookie.is_empty(),
            token = !csrf.is_empty(),
            origin = ?headers.get(header::ORIGIN),
            host = ?host,
            "http: a login form without its token, or from another site, was refused"
        );
    }
    ok
}

fn stale_form() -> LoginPage {
    LoginPage::error(
        StatusCode::FORBIDDEN,
        "Trang đăng nhập đã cũ hoặc không được mở từ trục liên thông. Vui lòng đăng nhập lại trên trang này.",
    )
}

fn logged_in(app: &App, s: &NewSession) -> Response {
    let mut res = (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
    let h = res.headers_mut();
    if let Some(c) = app
        .auth
        .set_cookie(SESSION, &s.token, app.auth.sessions.absolute.as_secs())
    {
        h.append(header::SET_COOKIE, c);
    }
    if let Some(c) = app.auth.set_cookie(LOGIN, "", 0) {
        h.append(header::SET_COOKIE, c);
    }
    res
}

fn refused(app: &App, r: LoginRefusal) -> Response {
    let page = match r {
        LoginRefusal::Refused => LoginPage::error(
            StatusCode::UNAUTHORIZED,
            "Tên đăng nhập hoặc mật khẩu không đúng.",
        ),
        LoginRefusal::Throttled { retry_after } => {
            let minutes = retry_after.as_secs().div_ceil(60).max(1);
            LoginPage {
                retry_after: Some(retry_after.as_secs().max(1)),
                ..LoginPage::error(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "Đăng nhập sai quá nhiều lần. Vui lòng thử lại sau {minutes} phút, hoặc nhờ quản trị viên đặt lại mật khẩu."
                    ),
                )
            }
        }
        LoginRefusal::Certificate(why) => LoginPage::error(
            StatusCode::FORBIDDEN,
            format!("Không đăng nhập được bằng chứng thư số: {why}"),
        ),
        LoginRefusal::Failed(e) => {
            tracing::warn!(error = %e.chain(), "http: a login could not be completed");
            LoginPage::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Trục liên thông tạm thời không kiểm tra được đăng nhập. Vui lòng thử lại sau ít phút.",
            )
        }
    };
    page.render(app)
}

/// `POST /login`: name and password.
pub(crate) async fn login(
    State(app): State<App>,
    ext: axum::http::Extensions,
    uri: Uri,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    let host = host_of(&uri, &headers);
    if !login_form_ok(&app, &headers, host.as_deref(), &f.csrf) {
        return stale_form().render(&app);
    }
    let peer = peer_name(peer_of(&ext).as_ref());
    match app
        .auth
        .guard
        .password_login(&f.name, &f.password, &peer, app.auth.sessions)
        .await
    {
        Ok(s) => logged_in(&app, &s),
        Err(r) => refused(&app, r),
    }
}

/// `POST /login/certificate`: the client certificate of this HTTPS
/// connection, bound by `directory bind-operator` to an active account.
pub(crate) async fn login_certificate(
    State(app): State<App>,
    ext: axum::http::Extensions,
    uri: Uri,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Response {
    let host = host_of(&uri, &headers);
    if !login_form_ok(&app, &headers, host.as_deref(), &f.csrf) {
        return stale_form().render(&app);
    }
    let peer_info = peer_of(&ext);
    let peer = peer_name(peer_info.as_ref());
    let (Some(tls), Some(chain)) = (
        &app.auth.tls,
        peer_info.as_ref().and_then(|p| p.client_chain.clone()),
    ) else {
        return refused(
            &app,
            LoginRefusal::Certificate(
                "no client certificate was presented on this HTTPS connection".to_owned(),
            ),
        );
    };
    let spki = match tls.verify_client(&chain) {
        Ok(s) => s,
        Err(why) => {
            app.auth
                .guard
                .record_failure("(client certificate)", &peer)
                .await;
            return refused(&app, LoginRefusal::Certificate(why.message().to_owned()));
        }
    };
    match app
        .auth
        .guard
        .certificate_login(&spki, &peer, app.auth.sessions)
        .await
    {
        Ok(s) => logged_in(&app, &s),
        Err(r) => {
            if matches!(r, LoginRefusal::Certificate(_)) {
                app.auth
                    .guard
                    .record_failure("(client certificate)", &peer)
                    .await;
            }
            refused(&app, r)
        }
    }
}

/// `POST /logout` (a form with the session's CSRF token).
pub(crate) async fn logout(
    State(app): State<App>,
    uri: Uri,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Response {
    let host = host_of(&uri, &headers);
    let session = match current_session(&app, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if let Some(s) = session {
        if cross_site(&headers, host.as_deref()) || !same_secret(&f.csrf, &s.csrf_token) {
            return refusal(
                StatusCode::FORBIDDEN,
                "CSRF",
                "logging out must come from the dashboard's own page; reload it and try again",
            );
        }
        if let Some(token) = cookie(&headers, &app.auth.name(SESSION))
            && let Err(e) = app.gw.close_operator_session(token, &s.operator).await
        {
            return crate::ApiError(e).into_response();
        }
    }
    let mut res = to_login();
    if let Some(c) = app.auth.set_cookie(SESSION, "", 0) {
        res.headers_mut().append(header::SET_COOKIE, c);
    }
    res
}

/// `GET /api/session`: who is logged in, with the token that state-changing
/// calls carry in [`CSRF_HEADER`].
pub(crate) async fn session_info(axum::Extension(s): axum::Extension<Session>) -> Response {
    axum::Json(serde_json::json!({
        "name": s.operator.name,
        "role": s.operator.role,
        "via": s.via,
        "expires_at": lienthong_core::calendar::format_rfc3339(s.expires_at),
        "csrf_token": s.csrf_token,
    }))
    .into_response()
}

/// Whether `/metrics` may be read by this request.
pub(crate) async fn metrics_allowed(
    access: &MetricsAccess,
    headers: &HeaderMap,
) -> Result<(), Response> {
    match access {
        MetricsAccess::Open => Ok(()),
        MetricsAccess::Closed => Err(refusal(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            "/metrics on a listener beyond loopback needs a bearer token: set http.metrics_token_file and give Prometheus the same token (authorization.credentials_file)",
        )),
        MetricsAccess::Token(path) => {
            let expected = match tokio::fs::read_to_string(path).await {
                Ok(t) if !t.trim().is_empty() => t.trim().to_owned(),
                Ok(_) | Err(_) => {
                    tracing::warn!(file = %path.display(), "http: http.metrics_token_file cannot be read or is empty; /metrics refuses everyone");
                    return Err(refusal(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "UNAVAILABLE",
                        "the gateway cannot read its metrics token file (http.metrics_token_file); its operators must fix it",
                    ));
                }
            };
            let sent = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim)
                .unwrap_or("");
            if same_secret(sent, &expected) {
                Ok(())
            } else {
                let mut r = refusal(
                    StatusCode::UNAUTHORIZED,
                    "UNAUTHENTICATED",
                    "/metrics needs the bearer token of http.metrics_token_file (Authorization: Bearer …)",
                );
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                Err(r)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn hosts_of_a_loopback_listener_are_its_own_names_only() {
        let h = AllowedHosts::for_listener("127.0.0.1:8080".parse().unwrap(), &[]);
        for ok in [
            "localhost:8080",
            "127.0.0.1:8080",
            "[::1]:8080",
            "LOCALHOST",
            "localhost.",
        ] {
            assert!(h.allows(ok), "{ok}");
        }
        for bad in [
            "evil.example:8080",
            "10.0.0.1",
            "",
            "127.0.0.2",
            "localhost.evil.example",
        ] {
            assert!(!h.allows(bad), "{bad}");
        }
        let wide = AllowedHosts::for_listener("0.0.0.0:8080".parse().unwrap(), &[]);
        assert!(wide.allows("192.0.2.10:8080"));
        assert!(wide.allows("[2001:db8::1]:8080"));
        assert!(!wide.allows("lienthong.example.vn"));
        let named = AllowedHosts::for_listener(
            "0.0.0.0:443".parse().unwrap(),
            &["Lienthong.LaiChau.gov.vn".to_owned()],
        );
        assert!(named.allows("lienthong.laichau.gov.vn"));
        assert!(!named.allows("192.0.2.10"));
    }

    #[test]
    fn cookies_and_origins() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; lienthong_session=xyz; b=2"),
        );
        assert_eq!(cookie(&h, "lienthong_session"), Some("xyz"));
        assert_eq!(cookie(&h, "session"), None);
        assert!(!cross_site(&h, Some("localhost:8080")));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://localhost:8080"),
        );
        assert!(!cross_site(&h, Some("localhost:8080")));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(cross_site(&h, Some("localhost:8080")));
        h.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(!cross_site(&h, Some("localhost:8080")));
        h.insert("sec-fetch-site", HeaderValue::from_static("same-site"));
        assert!(cross_site(&h, Some("localhost:8080")));
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("", ""));
        assert!(!same_secret("abc", "abd"));
    }
}

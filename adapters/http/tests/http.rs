//! The HTTP adapter over a real gateway (SQLite, in-process): what the
//! office's browser, Prometheus and a load balancer's health check get.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use lienthong_core as lt;
use lienthong_http::HttpOptions;
use lienthong_reports::ReportSettings;
use lt::error::{Reason, Result};
use lt::operators::OperatorRole;
use lt::store::EventKind;
use tower::ServiceExt;

#[path = "../../../gateway/core/tests/support/world.rs"]
mod world;
use world::{Doc, World};

struct Got {
    status: StatusCode,
    content_type: String,
    disposition: String,
    csp: String,
    location: String,
    set_cookie: Vec<String>,
    body: Vec<u8>,
}

impl Got {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// A browser of the tests: its cookies, the Host it sends, and the CSRF
/// token of its session once logged in.
#[derive(Clone)]
struct Browser {
    app: axum::Router,
    host: String,
    cookies: Vec<(String, String)>,
    csrf: String,
}

impl Browser {
    fn new(app: &axum::Router) -> Browser {
        Browser {
            app: app.clone(),
            host: "localhost:8080".to_owned(),
            cookies: Vec::new(),
            csrf: String::new(),
        }
    }

    async fn send(&mut self, req: axum::http::request::Builder, body: Body) -> Got {
        let mut req = req.header(header::HOST, self.host.clone());
        if !self.cookies.is_empty() {
            let c: Vec<String> = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            req = req.header(header::COOKIE, c.join("; "));
        }
        let req = req.body(body).unwrap_or_default();
        let res = match self.app.clone().oneshot(req).await {
            Ok(r) => r,
            Err(e) => match e {},
        };
        let h = |k: header::HeaderName| {
            res.headers()
                .get(k)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        let set_cookie: Vec<String> = res
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect();
        for c in &set_cookie {
            let kv = c.split(';').next().unwrap_or("");
            if let Some((k, v)) = kv.split_once('=') {
                self.cookies.retain(|(n, _)| n != k);
                if !v.is_empty() {
                    self.cookies.push((k.to_owned(), v.to_owned()));
                }
            }
        }
        let (status, content_type, disposition, csp, location) = (
            res.status(),
            h(header::CONTENT_TYPE),
            h(header::CONTENT_DISPOSITION),
            h(header::CONTENT_SECURITY_POLICY),
            h(header::LOCATION),
        );
        let body = res
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes().to_vec())
            .unwrap_or_default();
        Got {
            status,
            content_type,
            disposition,
            csp,
            location,
            set_cookie,
            body,
        }
    }

    async fn get(&mut self, uri: &str) -> Got {
        self.send(Request::builder().uri(uri), Body::empty()).await
    }

    /// A JSON POST with the session's CSRF token (`csrf: false`: without).
    async fn post(&mut self, uri: &str, body: serde_json::Value, csrf: bool) -> Got {
        let mut r = Request::builder()
            .method("POST")
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/json");
        if csrf {
            r = r.header(lienthong_http::CSRF_HEADER, self.csrf.clone());
        }
        self.send(r, Body::from(body.to_string())).await
    }

    async fn post_form(&mut self, uri: &str, fields: &[(&str, &str)]) -> Got {
        let body: Vec<String> = fields
            .iter()
            .map(|(k, v)| format!("{k}={}", form_encode(v)))
            .collect();
        let r = Request::builder()
            .method("POST")
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        self.send(r, Body::from(body.join("&"))).await
    }

    /// The login form: GET /login (its token), then POST it.
    async fn login(&mut self, name: &str, password: &str) -> Got {
        let page = self.get("/login").await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text());
        let csrf = hidden_csrf(&page.text());
        let got = self
            .post_form(
                "/login",
                &[("name", name), ("password", password), ("csrf", &csrf)],
            )
            .await;
        if got.status == StatusCode::SEE_OTHER {
            let s = self.get("/api/session").await;
            self.csrf = s.json()["csrf_token"].as_str().unwrap_or("").to_owned();
        }
        got
    }
}

fn form_encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn hidden_csrf(html: &str) -> String {
    html.split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or("")
        .to_owned()
}

const PASSWORD: &str = "mật khẩu đủ dài 2026";

fn cli() -> lt::operators::Actor {
    lt::operators::Actor::cli("test")
}

/// A gateway with the listener's default options.
async fn gateway(dir: &tempfile::TempDir) -> Result<(World, axum::Router)> {
    let w = world(dir).await?;
    let app = lienthong_http::router(w.gw.clone(), options());
    Ok((w, app))
}

async fn add_operator(w: &World, name: &str, role: OperatorRole) -> Result<()> {
    lt::operators::add(&w.store, name, role, Some(PASSWORD), &cli()).await?;
    Ok(())
}

/// A browser logged in as a new operator of `role`.
async fn operator(w: &World, app: &axum::Router, name: &str, role: OperatorRole) -> Browser {
    add_operator(w, name, role).await.expect("add the operator");
    let mut b = Browser::new(app);
    let got = b.login(name, PASSWORD).await;
    assert_eq!(got.status, StatusCode::SEE_OTHER, "{}", got.text());
    assert_eq!(got.location, "/");
    b
}

fn options() -> HttpOptions {
    HttpOptions::loopback(ReportSettings::default())
}

/// The transfer log's lines of `kind`: (reason, detail, actor).
async fn log_lines(w: &World, kind: EventKind) -> Vec<(Option<String>, String, Option<String>)> {
    let mut lines = w
        .store
        .events_of_kind(kind, None, 100_000)
        .await
        .expect("read the transfer log");
    // Newest first as read; oldest first here.
    lines.reverse();
    lines
        .into_iter()
        .map(|e| (e.reason, e.detail, e.actor))
        .collect()
}

async fn world(dir: &tempfile::TempDir) -> Result<World> {
    let url = format!("sqlite://{}/h.db", dir.path().display());
    let agencies: Vec<(String, String)> = [
        ("000.00.01.H35", "Văn phòng UBND tỉnh Lai Châu"),
        ("000.00.12.H35", "Sở Khoa học và Công nghệ"),
        ("000.00.31.H35", "UBND huyện Phong Thổ"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_owned(), b.to_owned()))
    .collect();
    World::open(&url, &dir.path().join("blobs"), &agencies).await
}

#[tokio::test]
async fn health_metrics_dashboard_and_api_answer() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let w = world(&dir).await?;
    let doc = Doc {
        code_number: "15".into(),
        code_notation: "QĐ-UBND".into(),
        subject: "Quyết định phê duyệt kế hoạch".into(),
        due_date: String::new(),
    };
    w.send_document(0, &[1, 2], &doc).await?;
    assert_eq!(w.refused(0, 0).await, Reason::UnknownRecipient);
    let app = lienthong_http::router(w.gw.clone(), options());
    let mut b = operator(&w, &app, "Nguyễn Văn Xem", OperatorRole::Viewer).await;

    let live = b.get("/health/live").await;
    assert_eq!(live.status, StatusCode::OK);
    let ready = b.get("/health/ready").await;
    assert_eq!(
        (ready.status, ready.json()["status"].clone()),
        (StatusCode::OK, "ready".into())
    );

    let m = b.get("/metrics").await;
    assert_eq!(m.status, StatusCode::OK);
    assert!(
        m.content_type.starts_with("application/openmetrics-text"),
        "{}",
        m.content_type
    );
    let text = m.text();
    assert!(text.contains("lienthong_database_up 1"), "{text}");
    assert!(
        text.contains("lienthong_inbox_depth{agency=\"000.00.12.H35\"} 1"),
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");

    let page = b.get("/").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.content_type.starts_with("text/html"));
    let html = page.text();
    assert!(html.contains("Trục liên thông văn bản điện tử"));
    assert!(
        html.contains("Nguyễn Văn Xem"),
        "the page names who is logged in"
    );
    assert!(
        html.contains(&format!("content=\"{}\"", b.csrf)),
        "the page carries the CSRF token"
    );
    assert!(html.contains("data-role=\"viewer\""));
    assert!(page.csp.contains("default-src 'none'"), "{}", page.csp);
    for asset in ["/assets/dashboard.js", "/assets/dashboard.css"] {
        let a = b.get(asset).await;
        assert_eq!(a.status, StatusCode::OK, "{asset}");
        assert!(a.body.len() > 1000, "{asset}");
    }

    let o = b.get("/api/overview").await.json();
    assert_eq!(o["today_traffic"]["documents"], 1);
    assert_eq!(o["today_traffic"]["refused"], 1);
    assert_eq!(o["refusals"][0]["reason"], "UNKNOWN_RECIPIENT");
    assert_eq!(
        o["refusals"][0]["reason_text"],
        "Cơ quan nhận không có trong danh bạ của trục liên thông"
    );

    let r = b.get("/api/refusals?limit=5").await;
    assert_eq!(r.json().as_array().map(Vec::len), Some(1));
    let bad = b.get("/api/refusals?limit=many").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.json()["reason"], "MALFORMED");

    let hit = b.get("/api/search?q=15%2FQ%C4%90-UBND").await;
    assert_eq!(hit.status, StatusCode::OK, "{}", hit.text());
    assert_eq!(hit.json()[0]["code"], "15/QĐ-UBND");
    let none = b.get("/api/search?q=kh%C3%B4ng-c%C3%B3").await;
    assert_eq!(none.status, StatusCode::NOT_FOUND);
    assert!(
        none.json()["message"]
            .as_str()
            .is_some_and(|m| m.contains("Không tìm thấy"))
    );
    let empty = b.get("/api/search?q=").await;
    assert_eq!(empty.status, StatusCode::BAD_REQUEST);

    let missing = b.get("/nothing/here").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.json()["reason"], "NOT_FOUND");
    Ok(())
}

#[tokio::test]
async fn reports_download_in_three_formats_and_refuse_bad_questions() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let w = world(&dir).await?;
    w.send_document(0, &[1], &Doc::default()).await?;
    let app = lienthong_http::router(w.gw.clone(), options());
    let mut b = operator(&w, &app, "Bộ phận báo cáo", OperatorRole::Viewer).await;

    let x = b
        .get("/reports/summary.xlsx?period=2026&under=%23.H35")
        .await;
    assert_eq!(x.status, StatusCode::OK, "{}", x.text());
    assert!(x.content_type.contains("spreadsheetml"));
    assert_eq!(
        x.disposition,
        "attachment; filename=\"bao-cao-lienthong-2026.xlsx\""
    );
    assert!(x.body.starts_with(b"PK"));

    let c = b.get("/reports/summary.csv?under=000.00.01.H35").await;
    assert_eq!(c.status, StatusCode::OK);
    assert!(
        c.text().contains("Mã định danh,Tên cơ quan,Văn bản đã gửi"),
        "{}",
        c.text()
    );
    let e = b
        .get("/reports/summary.csv?lang=en&agency=000.00.12.H35")
        .await;
    let lines: Vec<String> = e.text().lines().map(str::to_owned).collect();
    assert!(
        lines[0].contains("Agency code,Agency,Documents sent"),
        "{lines:?}"
    );
    assert!(
        lines[1].starts_with("000.00.12.H35,Sở Khoa học và Công nghệ,0,1,"),
        "{lines:?}"
    );

    let j = b.get("/reports/summary.json").await;
    assert_eq!(j.json()["total"]["sent"], 1);

    for (uri, status, reason) in [
        (
            "/reports/summary.csv?period=2026-13",
            StatusCode::BAD_REQUEST,
            "MALFORMED",
        ),
        (
            "/reports/summary.csv?under=000.00.77.H35",
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
        ),
        (
            "/reports/summary.csv?under=00.77.H35",
            StatusCode::BAD_REQUEST,
            "BAD_IDENTIFIER",
        ),
        ("/reports/summary.pdf", StatusCode::BAD_REQUEST, "MALFORMED"),
        ("/reports/other.csv", StatusCode::NOT_FOUND, "NOT_FOUND"),
        (
            "/reports/summary.csv?lang=fr",
            StatusCode::BAD_REQUEST,
            "MALFORMED",
        ),
        (
            "/reports/summary.csv?agency=000.00.12.H35&under=000.00.01.H35",
            StatusCode::BAD_REQUEST,
            "MALFORMED",
        ),
    ] {
        let g = b.get(uri).await;
        assert_eq!(g.status, status, "{uri}: {}", g.text());
        assert_eq!(g.json()["reason"], reason, "{uri}");
        assert!(
            g.json()["message"].as_str().is_some_and(|m| m.len() > 20),
            "{uri}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn strangers_get_401_and_pages_send_them_to_the_login_form() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let w = world(&dir).await?;
    let doc = Doc {
        code_number: "15".into(),
        code_notation: "QĐ-UBND".into(),
        subject: "Quyết định bí mật nhà nước".into(),
        due_date: String::new(),
    };
    w.send_document(0, &[1], &doc).await?;
    let app = lienthong_http::router(w.gw.clone(), options());
    let mut stranger = Browser::new(&app);
    for uri in [
        "/api/search?q=15%2FQ%C4%90-UBND",
        "/api/overview",
        "/api/refusals",
        "/api/maintenance",
        "/api/session",
        "/reports/summary.csv",
        "/reports/summary.xlsx?period=2026",
    ] {
        let g = stranger.get(uri).await;
        assert_eq!(g.status, StatusCode::UNAUTHORIZED, "{uri}: {}", g.text());
        assert_eq!(g.json()["reason"], "UNAUTHENTICATED", "{uri}");
        assert!(!g.text().contains("bí mật"), "{uri} leaked: {}", g.text());
    }
    // A browser asking for the dashboard is sent to the login page.
    let page = stranger
        .send(
            Request::builder()
                .uri("/")
                .header(header::ACCEPT, "text/html"),
            Body::empty(),
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.location, "/login");
    let login = stranger.get("/login").await;
    assert_eq!(login.status, StatusCode::OK);
    assert!(login.text().contains("Đăng nhập"), "{}", login.text());
    assert!(login.csp.contains("default-src 'none'"));
    let cookie = login.set_cookie.join(" | ");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    // Forged cookies open nothing; nor does a wrong password.
    stranger
        .cookies
        .push(("lienthong_session".into(), "forged".into()));
    assert_eq!(
        stranger.get("/api/overview").await.status,
        StatusCode::UNAUTHORIZED
    );
    add_operator(&w, "an", OperatorRole::Admin).await?;
    let wrong = Browser::new(&app).login("an", "không phải mật khẩu").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(
        wrong
            .text()
            .contains("Tên đăng nhập hoặc mật khẩu không đúng")
    );
    // Health stays open for probes.
    assert_eq!(stranger.get("/health/ready").await.status, StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn a_viewer_cannot_announce_maintenance_and_an_admin_needs_the_csrf_token() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (w, app) = gateway(&dir).await?;
    let mut viewer = operator(&w, &app, "viewer", OperatorRole::Viewer).await;
    let mut admin = operator(&w, &app, "admin", OperatorRole::Admin).await;
    let window = serde_json::json!({
        "from": "2099-11-30T22:00",
        "to": "2099-12-01T02:00",
        "message": "Nâng cấp máy chủ",
    });

    let v = viewer.post("/api/maintenance", window.clone(), true).await;
    assert_eq!(v.status, StatusCode::FORBIDDEN, "{}", v.text());
    assert_eq!(v.json()["reason"], "PERMISSION_DENIED");
    assert!(v.text().contains("viewer"), "{}", v.text());

    // An admin's request without the session's token, or with another
    // session's, or from another site's page, is refused.
    let no = admin.post("/api/maintenance", window.clone(), false).await;
    assert_eq!(no.status, StatusCode::FORBIDDEN, "{}", no.text());
    assert_eq!(no.json()["reason"], "CSRF");
    let mut stolen = admin.clone();
    stolen.csrf = viewer.csrf.clone();
    assert_eq!(
        stolen
            .post("/api/maintenance", window.clone(), true)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let cross = admin
        .send(
            Request::builder()
                .method("POST")
                .uri("/api/maintenance")
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::ORIGIN, "http://evil.example")
                .header(lienthong_http::CSRF_HEADER, admin.csrf.clone()),
            Body::from(window.to_string()),
        )
        .await;
    assert_eq!(cross.status, StatusCode::FORBIDDEN, "{}", cross.text());
    assert!(
        w.gw.maintenance_windows().await?.is_empty(),
        "nothing was announced"
    );

    let ok = admin.post("/api/maintenance", window.clone(), true).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
    let id = ok.json()["id"].as_i64().unwrap_or_default();
    assert_eq!(w.gw.maintenance_windows().await?.len(), 1);
    let list = viewer.get("/api/maintenance").await;
    assert_eq!(list.json()[0]["message"], "Nâng cấp máy chủ");
    // Without "interruption" the gateway may be unavailable, as ever.
    assert_eq!(list.json()[0]["interruption"], true);
    let vc = viewer
        .post(
            &format!("/api/maintenance/{id}/cancel"),
            serde_json::json!({}),
            true,
        )
        .await;
    assert_eq!(vc.status, StatusCode::FORBIDDEN);
    let c = admin
        .post(
            &format!("/api/maintenance/{id}/cancel"),
            serde_json::json!({}),
            true,
        )
        .await;
    assert_eq!(c.status, StatusCode::OK, "{}", c.text());
    assert!(w.gw.maintenance_windows().await?.is_empty());

    // Logging out needs the token too, then the session is over.
    let forged = admin.post_form("/logout", &[("csrf", "nope")]).await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    let csrf = admin.csrf.clone();
    let out = admin.post_form("/logout", &[("csrf", &csrf)]).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert_eq!(
        admin.get("/api/overview").await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(log_lines(&w, EventKind::OperatorLogout).await.len(), 1);
    Ok(())
}

#[tokio::test]
async fn a_login_form_posted_from_elsewhere_is_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (w, app) = gateway(&dir).await?;
    add_operator(&w, "an", OperatorRole::Admin).await?;
    // No login page fetched first: no token, no cookie.
    let mut b = Browser::new(&app);
    let blind = b
        .post_form(
            "/login",
            &[("name", "an"), ("password", PASSWORD), ("csrf", "x")],
        )
        .await;
    assert_eq!(blind.status, StatusCode::FORBIDDEN, "{}", blind.text());
    assert!(b.get("/api/overview").await.status == StatusCode::UNAUTHORIZED);
    Ok(())
}

#[tokio::test]
async fn a_request_for_another_host_is_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (w, app) = gateway(&dir).await?;
    let mut b = operator(&w, &app, "an", OperatorRole::Admin).await;
    assert_eq!(b.get("/api/overview").await.status, StatusCode::OK);
    // The same browser, led by a rebound DNS name to this listener.
    b.host = "attacker.example:8080".to_owned();
    for uri in [
        "/api/overview",
        "/",
        "/login",
        "/metrics",
        "/reports/summary.csv",
    ] {
        let g = b.get(uri).await;
        assert_eq!(
            g.status,
            StatusCode::MISDIRECTED_REQUEST,
            "{uri}: {}",
            g.text()
        );
        assert!(g.text().contains("http.allowed_hosts"), "{}", g.text());
    }
    assert_eq!(b.get("/health/live").await.status, StatusCode::OK);
    for ok in ["127.0.0.1:8080", "[::1]:8080", "localhost"] {
        b.host = ok.to_owned();
        assert_eq!(b.get("/api/overview").await.status, StatusCode::OK, "{ok}");
    }
    b.host = String::new();
    let none = b.get("/api/overview").await;
    assert_eq!(none.status, StatusCode::BAD_REQUEST, "{}", none.text());
    Ok(())
}

#[tokio::test]
async fn a_removed_operators_session_stops_and_a_new_password_ends_sessions() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (w, app) = gateway(&dir).await?;
    let mut b = operator(&w, &app, "Trần Thị B", OperatorRole::Viewer).await;
    assert_eq!(b.get("/api/overview").await.status, StatusCode::OK);
    lt::operators::set_password(&w.store, "Trần Thị B", Some("một mật khẩu mới hẳn"), &cli())
        .await?;
    assert_eq!(
        b.get("/api/overview").await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        b.login("Trần Thị B", PASSWORD).await.status,
        StatusCode::UNAUTHORIZED,
        "the old password"
    );
    let again = b.login("Trần Thị B", "một mật khẩu mới hẳn").await;
    assert_eq!(again.status, StatusCode::SEE_OTHER);
    assert_eq!(b.get("/api/overview").await.status, StatusCode::OK);

    lt::operators::remove(&w.store, "Trần Thị B", &cli()).await?;
    assert_eq!(
        b.get("/api/overview").await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        b.login("Trần Thị B", "một mật khẩu mới hẳn").await.status,
        StatusCode::UNAUTHORIZED
    );
    let changes = log_lines(&w, EventKind::OperatorChanged).await;
    let details: Vec<&str> = changes.iter().map(|(_, d, _)| d.as_str()).collect();
    assert_eq!(changes.len(), 3, "{details:?}");
    assert!(details[0].contains("added as viewer"), "{details:?}");
    assert!(details[1].contains("new password"), "{details:?}");
    assert!(details[2].contains("removed"), "{details:?}");
    assert!(
        changes
            .iter()
            .all(|(_, _, a)| a.as_deref() == Some("cli:test"))
    );
    let logins = log_lines(&w, EventKind::OperatorLogin).await;
    assert_eq!(
        logins.iter().filter(|(r, _, _)| r.is_none()).count(),
        2,
        "{logins:?}"
    );
    Ok(())
}

#[tokio::test]
async fn metrics_need_the_bearer_token_when_one_is_set_or_the_listener_is_wide() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let w = world(&dir).await?;
    let token = dir.path().join("metrics.token");
    std::fs::write(&token, "s3cr3t-token-of-prometheus\n")?;
    let mut opts = options();
    opts.metrics = lienthong_http::MetricsAccess::Token(token);
    let app = lienthong_http::router(w.gw.clone(), opts);
    let mut b = Browser::new(&app);
    let no = b.get("/metrics").await;
    assert_eq!(no.status, StatusCode::UNAUTHORIZED, "{}", no.text());
    let with = |t: &str| {
        Request::builder()
            .uri("/metrics")
            .header(header::AUTHORIZATION, format!("Bearer {t}"))
    };
    assert_eq!(
        b.send(with("wrong"), Body::empty()).await.status,
        StatusCode::UNAUTHORIZED
    );
    let ok = b
        .send(with("s3cr3t-token-of-prometheus"), Body::empty())
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    assert!(ok.text().contains("lienthong_database_up 1"));

    let mut closed = options();
    closed.metrics = lienthong_http::MetricsAccess::Closed;
    let app = lienthong_http::router(w.gw.clone(), closed);
    let c = Browser::new(&app).get("/metrics").await;
    assert_eq!(c.status, StatusCode::FORBIDDEN);
    assert!(c.text().contains("http.metrics_token_file"), "{}", c.text());
    Ok(())
}

#[tokio::test]
async fn report_queries_are_bounded_in_number_and_length() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let w = world(&dir).await?;
    let mut opts = options();
    let queries = std::sync::Arc::new(tokio::sync::Semaphore::new(1));
    opts.queries = queries.clone();
    let app = lienthong_http::router(w.gw.clone(), opts);
    let mut b = operator(&w, &app, "an", OperatorRole::Viewer).await;

    let decade = b
        .get("/reports/summary.csv?period=2016-01-01..2026-01-01")
        .await;
    assert_eq!(decade.status, StatusCode::BAD_REQUEST, "{}", decade.text());
    assert!(
        decade.text().contains("at most 397 days"),
        "{}",
        decade.text()
    );
    assert_eq!(
        b.get("/reports/summary.csv?period=2026").await.status,
        StatusCode::OK
    );

    // Another query holds the only turn: the next is turned away after a
    // moment, with a sentence.
    let held = queries.clone().acquire_owned().await.expect("a turn");
    for uri in [
        "/reports/summary.csv?period=2026",
        "/api/search?q=x",
        "/api/overview",
    ] {
        let busy = b.get(uri).await;
        assert_eq!(busy.status, StatusCode::SERVICE_UNAVAILABLE, "{uri}");
        assert!(
            busy.text().contains("try again in a few seconds"),
            "{}",
            busy.text()
        );
    }
    drop(held);
    assert_eq!(b.get("/api/overview").await.status, StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn failed_logins_are_rate_limited_and_logged_in_aggregate() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (w, app) = gateway(&dir).await?;
    add_operator(&w, "an", OperatorRole::Admin).await?;
    let mut b = Browser::new(&app);
    for i in 0..5 {
        let g = b.login("an", &format!("đoán mò số {i}")).await;
        assert_eq!(g.status, StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    // The account is held: even the right password waits.
    let held = b.login("an", PASSWORD).await;
    assert_eq!(
        held.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        held.text()
    );
    assert!(held.text().contains("quá nhiều lần"), "{}", held.text());
    // Guessing across accounts from one peer.
    for i in 0..15 {
        let g = b.login(&format!("người thứ {i}"), "đoán mò").await;
        assert_eq!(g.status, StatusCode::UNAUTHORIZED, "account {i}");
    }
    // The peer is held too, whatever account it tries next.
    add_operator(&w, "bình", OperatorRole::Viewer).await?;
    assert_eq!(
        b.login("bình", PASSWORD).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // 20 failures and 2 turned away, one line so far: the others are counted for the next.
    let failed: Vec<_> = log_lines(&w, EventKind::OperatorLogin)
        .await
        .into_iter()
        .filter(|(r, _, _)| r.as_deref() == Some("LOGIN_FAILED"))
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(
        failed[0].1.starts_with("1 failed login from unknown"),
        "{failed:?}"
    );
    Ok(())
}

#[tokio::test]
async fn the_listener_stops_on_its_shutdown_signal() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir()?;
    let w = world(&dir).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(lienthong_http::serve(
        listener,
        lienthong_http::router(w.gw.clone(), options()),
        async {
            let _ = rx.await;
        },
    ));
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await?;
    assert!(buf.starts_with("HTTP/1.1 200"), "{buf}");
    let _ = tx.send(());
    let stopped = tokio::time::timeout(Duration::from_secs(10), server).await;
    assert!(
        matches!(stopped, Ok(Ok(Ok(())))),
        "the server did not stop cleanly: {stopped:?}"
    );
    Ok(())
}

/// The public directory answers strangers (no session) with the public
/// fields only, while the dashboard's API next to it still wants a login;
/// turned off, its paths are unknown.
#[tokio::test]
async fn the_public_directory_is_open_to_strangers_and_can_be_turned_off() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (w, app) = gateway(&dir).await?;
    let mut stranger = Browser::new(&app);
    assert_eq!(
        stranger.get("/api/overview").await.status,
        StatusCode::UNAUTHORIZED
    );
    let got = stranger.get("/api/public/directory?q=van%20phong").await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    let j = got.json();
    assert_eq!(j["total"], 1, "{j}");
    assert_eq!(j["agencies"][0]["code"], "000.00.01.H35");
    let got = stranger.get("/directory?q=khoa%20hoc").await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(got.content_type.starts_with("text/html"));
    assert!(got.csp.contains("default-src 'none'"), "{}", got.csp);
    assert!(got.text().contains("Sở Khoa học và Công nghệ"));
    assert!(got.text().contains("Danh bạ mã định danh cơ quan, đơn vị"));
    let got = stranger.get("/api/public/directory/000.00.99.H35").await;
    assert_eq!(got.status, StatusCode::NOT_FOUND);
    assert_eq!(got.json()["reason"], "NOT_FOUND");
    let got = stranger.get("/api/public/directory?page=0").await;
    assert_eq!(got.status, StatusCode::BAD_REQUEST, "{}", got.text());

    let mut opts = options();
    opts.public_directory.enabled = false;
    let off = lienthong_http::router(w.gw.clone(), opts);
    let mut stranger = Browser::new(&off);
    for path in [
        "/directory",
        "/api/public/directory",
        "/api/public/directory/000.00.01.H35",
    ] {
        assert_eq!(
            stranger.get(path).await.status,
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
    Ok(())
}

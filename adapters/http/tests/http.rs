//! The HTTP adapter over a real gateway (SQLite, in-process): what the
//! office's browser, Prometheus and a load balancer's health check get.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use lienthong_core as lt;
use lt::error::{Reason, Result};
use lt::reports::ReportSettings;
use tower::ServiceExt;

#[path = "../../../gateway/core/tests/support/world.rs"]
mod world;
use world::{Doc, World};

struct Got {
    status: StatusCode,
    content_type: String,
    disposition: String,
    csp: String,
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

async fn get(app: &axum::Router, uri: &str) -> Got {
    let req = Request::builder()
        .uri(uri)
        .body(Body::empty())
        .unwrap_or_default();
    let res = match app.clone().oneshot(req).await {
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
    let (status, content_type, disposition, csp) = (
        res.status(),
        h(header::CONTENT_TYPE),
        h(header::CONTENT_DISPOSITION),
        h(header::CONTENT_SECURITY_POLICY),
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
        body,
    }
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
    let app = lienthong_http::router(w.gw.clone(), ReportSettings::default());

    let live = get(&app, "/health/live").await;
    assert_eq!(live.status, StatusCode::OK);
    let ready = get(&app, "/health/ready").await;
    assert_eq!(
        (ready.status, ready.json()["status"].clone()),
        (StatusCode::OK, "ready".into())
    );

    let m = get(&app, "/metrics").await;
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

    let page = get(&app, "/").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.content_type.starts_with("text/html"));
    assert!(page.text().contains("Trục liên thông văn bản điện tử"));
    assert!(page.csp.contains("default-src 'none'"), "{}", page.csp);
    for asset in ["/assets/dashboard.js", "/assets/dashboard.css"] {
        let a = get(&app, asset).await;
        assert_eq!(a.status, StatusCode::OK, "{asset}");
        assert!(a.body.len() > 1000, "{asset}");
    }

    let o = get(&app, "/api/overview").await.json();
    assert_eq!(o["today_traffic"]["documents"], 1);
    assert_eq!(o["today_traffic"]["refused"], 1);
    assert_eq!(o["refusals"][0]["reason"], "UNKNOWN_RECIPIENT");
    assert_eq!(
        o["refusals"][0]["reason_text"],
        "Cơ quan nhận không có trong danh bạ của trục liên thông"
    );

    let r = get(&app, "/api/refusals?limit=5").await;
    assert_eq!(r.json().as_array().map(Vec::len), Some(1));
    let bad = get(&app, "/api/refusals?limit=many").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.json()["reason"], "MALFORMED");

    let hit = get(&app, "/api/search?q=15%2FQ%C4%90-UBND").await;
    assert_eq!(hit.status, StatusCode::OK, "{}", hit.text());
    assert_eq!(hit.json()[0]["code"], "15/QĐ-UBND");
    let none = get(&app, "/api/search?q=kh%C3%B4ng-c%C3%B3").await;
    assert_eq!(none.status, StatusCode::NOT_FOUND);
    assert!(
        none.json()["message"]
            .as_str()
            .is_some_and(|m| m.contains("Không tìm thấy"))
    );
    let empty = get(&app, "/api/search?q=").await;
    assert_eq!(empty.status, StatusCode::BAD_REQUEST);

    let missing = get(&app, "/nothing/here").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.json()["reason"], "NOT_FOUND");
    Ok(())
}

#[tokio::test]
async fn reports_download_in_three_formats_and_refuse_bad_questions() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let w = world(&dir).await?;
    w.send_document(0, &[1], &Doc::default()).await?;
    let app = lienthong_http::router(w.gw.clone(), ReportSettings::default());

    let x = get(&app, "/reports/summary.xlsx?period=2026&under=%23.H35").await;
    assert_eq!(x.status, StatusCode::OK, "{}", x.text());
    assert!(x.content_type.contains("spreadsheetml"));
    assert_eq!(
        x.disposition,
        "attachment; filename=\"bao-cao-lienthong-2026.xlsx\""
    );
    assert!(x.body.starts_with(b"PK"));

    let c = get(&app, "/reports/summary.csv?under=000.00.01.H35").await;
    assert_eq!(c.status, StatusCode::OK);
    assert!(
        c.text().contains("Mã định danh,Tên cơ quan,Văn bản đã gửi"),
        "{}",
        c.text()
    );
    let e = get(&app, "/reports/summary.csv?lang=en&agency=000.00.12.H35").await;
    let lines: Vec<String> = e.text().lines().map(str::to_owned).collect();
    assert!(
        lines[0].contains("Agency code,Agency,Documents sent"),
        "{lines:?}"
    );
    assert!(
        lines[1].starts_with("000.00.12.H35,Sở Khoa học và Công nghệ,0,1,"),
        "{lines:?}"
    );

    let j = get(&app, "/reports/summary.json").await;
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
        let g = get(&app, uri).await;
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
async fn the_listener_stops_on_its_shutdown_signal() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir()?;
    let w = world(&dir).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(lienthong_http::serve(
        listener,
        lienthong_http::router(w.gw.clone(), ReportSettings::default()),
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

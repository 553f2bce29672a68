//! Operators log in to the HTTP listener, as an outsider meets it with
//! curl: strangers get 401 (pages send them to the login form), a request
//! for another host name is refused (DNS rebinding), a viewer cannot do an
//! admin's work, a state-changing request needs the session's CSRF token,
//! a removed operator's session stops at once, `/metrics` needs its token
//! beyond loopback, and HTTPS works with the gateway's certificate —
//! including a login with a client certificate bound to an operator.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use lienthong_testkit::*;

/// `curl ARGS…` (an HTTP client that is not ours): (status code, body).
fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl is installed (.ci/run installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
    assert!(
        out.status.success(),
        "curl {args:?} failed: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

fn hidden_csrf(html: &str) -> String {
    html.split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_else(|| panic!("no token in the login page: {html}"))
        .to_owned()
}

/// Logs in through the form with curl, keeping cookies in `jar`; returns
/// the status of the POST.
fn curl_login(base: &str, jar: &Path, extra: &[&str], name: &str, password: &str) -> u16 {
    let jar = jar.to_str().unwrap();
    let mut get = vec!["-c", jar, "-b", jar];
    get.extend_from_slice(extra);
    let url = format!("{base}/login");
    get.push(&url);
    let (code, page) = curl(&get);
    assert_eq!(code, 200, "{page}");
    let csrf = hidden_csrf(&page);
    let (n, p, c) = (
        format!("name={name}"),
        format!("password={password}"),
        format!("csrf={csrf}"),
    );
    let mut post = vec!["-c", jar, "-b", jar, "-o", "/dev/null"];
    post.extend_from_slice(extra);
    post.extend_from_slice(&[
        "--data-urlencode",
        &n,
        "--data-urlencode",
        &p,
        "--data-urlencode",
        &c,
        &url,
    ]);
    curl(&post).0
}

async fn operator_lines(gw: &TestGateway) -> Vec<(String, String, String, String)> {
    gw.sql_rows(
        "SELECT kind, COALESCE(reason, '') AS reason, detail, COALESCE(actor, '') AS actor \
         FROM events WHERE kind LIKE 'operator_%' ORDER BY id",
    )
    .await
    .iter()
    .map(|r| {
        (
            r.try_get::<String>("kind").unwrap(),
            r.try_get::<String>("reason").unwrap(),
            r.try_get::<String>("detail").unwrap(),
            r.try_get::<String>("actor").unwrap(),
        )
    })
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_are_refused_and_operators_log_in_with_their_role() {
    let Some(gw) = TestGateway::start("operators_login", Backend::Sqlite).await else {
        return;
    };
    within(Duration::from_secs(180), "logging in", async {
        let a = gw.agency(A);
        let sent = a
            .send_document(&[B], "Quyết định về nhân sự của Sở", &[])
            .await
            .unwrap();
        let id = sent.message_id().to_string();
        let http = gw.http_addr.unwrap();
        let base = format!("http://{http}");

        // Strangers: nothing, whatever they ask.
        for path in [
            format!("/api/search?q={id}"),
            "/api/overview".to_owned(),
            "/api/refusals".to_owned(),
            "/reports/summary.csv".to_owned(),
        ] {
            let (code, body) = curl(&[&format!("{base}{path}")]);
            assert_eq!(code, 401, "{path}: {body}");
            assert!(body.contains("UNAUTHENTICATED"), "{path}: {body}");
            assert!(!body.contains("nhân sự"), "{path} leaked: {body}");
        }
        let (code, _) = curl(&[
            "-H",
            "Accept: text/html",
            "-o",
            "/dev/null",
            &format!("{base}/"),
        ]);
        assert_eq!(
            code, 303,
            "the dashboard sends a stranger to the login page"
        );
        // A page of another site that rebound its name to this address.
        let (code, body) = curl(&[
            "-H",
            "Host: rebind.attacker.example",
            &format!("{base}/api/overview"),
        ]);
        assert_eq!(code, 421, "{body}");
        assert_eq!(curl(&[&format!("{base}/health/ready")]).0, 200);

        // A viewer logs in through the form and reads.
        let dir = tempfile::tempdir().unwrap();
        let jar = dir.path().join("viewer.cookies");
        gw.add_operator("Lê Văn Xem", "viewer", "mật khẩu của người xem")
            .await;
        assert_eq!(
            curl_login(&base, &jar, &[], "Lê Văn Xem", "sai mật khẩu rồi"),
            401
        );
        assert_eq!(
            curl_login(&base, &jar, &[], "Lê Văn Xem", "mật khẩu của người xem"),
            303
        );
        let j = jar.to_str().unwrap();
        let (code, body) = curl(&["-b", j, &format!("{base}/api/search?q={id}")]);
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("Quyết định về nhân sự của Sở"), "{body}");
        let (code, csv) = curl(&["-b", j, &format!("{base}/reports/summary.csv")]);
        assert_eq!(code, 200, "{csv}");
        let (code, me) = curl(&["-b", j, &format!("{base}/api/session")]);
        assert_eq!(code, 200);
        let me: serde_json::Value = serde_json::from_str(&me).unwrap();
        assert_eq!(me["role"], "viewer");
        let csrf = me["csrf_token"].as_str().unwrap().to_owned();

        // Maintenance is an admin's: the viewer is refused even with its token.
        let window = serde_json::json!({
            "from": "2099-01-01T22:00", "to": "2099-01-02T02:00", "message": "Nâng cấp máy chủ",
        })
        .to_string();
        let header = format!("X-CSRF-Token: {csrf}");
        let (code, body) = curl(&[
            "-b",
            j,
            "-H",
            "Content-Type: application/json",
            "-H",
            &header,
            "--data",
            &window,
            &format!("{base}/api/maintenance"),
        ]);
        assert_eq!(code, 403, "{body}");
        assert!(body.contains("PERMISSION_DENIED"), "{body}");

        // An admin without the CSRF token is refused; with it, announces.
        let admin = gw.operator_session("Phạm Quản Trị", "admin").await;
        let no_token = http_request(
            http,
            "POST",
            "/api/maintenance",
            &[
                ("Cookie", &admin.cookie),
                ("Content-Type", "application/json"),
            ],
            window.as_bytes(),
        )
        .await;
        assert_eq!(no_token.status, 403, "{}", no_token.text());
        assert_eq!(no_token.json()["reason"], "CSRF");
        let ok = admin
            .post_json("/api/maintenance", &serde_json::from_str(&window).unwrap())
            .await;
        assert_eq!(ok.status, 200, "{}", ok.text());
        let listed = gw.run_cli(&["admin", "maintenance", "--list"]).await;
        assert!(
            String::from_utf8_lossy(&listed.stdout).contains("Nâng cấp máy chủ"),
            "{}",
            describe_output(&listed)
        );

        // Removing the viewer ends their session at once.
        let out = gw.run_cli(&["operator", "remove", "Lê Văn Xem"]).await;
        assert!(out.status.success(), "{}", describe_output(&out));
        let (code, body) = curl(&["-b", j, &format!("{base}/api/overview")]);
        assert_eq!(code, 401, "{body}");

        let list = gw.run_cli(&["operator", "list"]).await;
        let text = String::from_utf8_lossy(&list.stdout).into_owned();
        assert!(
            text.contains("\"Phạm Quản Trị\"") && !text.contains("Lê Văn Xem"),
            "{text}"
        );

        // Every change and login is a line of the transfer log, whose chain holds.
        let lines = operator_lines(&gw).await;
        let shown = format!("{lines:#?}");
        let changed: Vec<_> = lines.iter().filter(|l| l.0 == "operator_changed").collect();
        assert_eq!(changed.len(), 3, "{shown}");
        assert!(changed.iter().all(|l| l.3.starts_with("cli:")), "{shown}");
        assert!(changed[2].2.contains("removed"), "{shown}");
        let logins = lines
            .iter()
            .filter(|l| l.0 == "operator_login" && l.1.is_empty())
            .count();
        assert_eq!(logins, 2, "{shown}");
        assert!(
            lines
                .iter()
                .any(|l| l.1 == "LOGIN_FAILED" && l.2.contains("Lê Văn Xem")),
            "{shown}"
        );
        let verify = gw.run_cli(&["log", "verify"]).await;
        assert!(verify.status.success(), "{}", describe_output(&verify));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_the_token_when_the_listener_is_beyond_loopback() {
    let secrets = tempfile::tempdir().unwrap();
    let token = secrets.path().join("metrics.token");
    std::fs::write(&token, "prometheus-token-0f3a9c\n").unwrap();
    let opts = GatewayOptions {
        http_ip: Some([0, 0, 0, 0].into()),
        extra_http: format!("metrics_token_file = {:?}\n", token.display().to_string()),
        ..Default::default()
    };
    let Some(gw) = TestGateway::start_with("operators_metrics", opts).await else {
        return;
    };
    within(Duration::from_secs(60), "metrics", async {
        let port = gw.http_addr.unwrap().port();
        let url = format!("http://127.0.0.1:{port}/metrics");
        let (code, body) = curl(&[&url]);
        assert_eq!(code, 401, "{body}");
        let (code, _) = curl(&["-H", "Authorization: Bearer not-it", &url]);
        assert_eq!(code, 401);
        let (code, body) = curl(&["-H", "Authorization: Bearer prometheus-token-0f3a9c", &url]);
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("lienthong_database_up 1"), "{body}");
        // An IP address is a host name this listener answers for; a DNS
        // name not listed in http.allowed_hosts is not.
        let (code, _) = curl(&[
            "-H",
            "Host: gateway.example.vn",
            &format!("http://127.0.0.1:{port}/login"),
        ]);
        assert_eq!(code, 421);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_curl_and_logs_an_operator_in_with_a_client_certificate() {
    // A PKI made before the gateway, so that the configuration can name
    // its files.
    let pki = tempfile::tempdir().unwrap();
    let out = Command::new(bin_path())
        .arg("dev-pki")
        .arg(pki.path())
        .env_remove("LIENTHONG_CONFIG")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe_output(&out));
    let p = |f: &str| pki.path().join(f).display().to_string();
    let opts = GatewayOptions {
        pki: Some(pki.path().to_path_buf()),
        extra_http: format!(
            "tls = true\ntls_cert = {:?}\ntls_key = {:?}\nclient_anchors = [{:?}]\n",
            p("server.pem"),
            p("server.key.pem"),
            p("ca.pem")
        ),
        ..Default::default()
    };
    let Some(gw) = TestGateway::start_with("operators_https", opts).await else {
        return;
    };
    within(Duration::from_secs(180), "HTTPS", async {
        let port = gw.http_addr.unwrap().port();
        let base = format!("https://localhost:{port}");
        let ca = p("ca.pem");
        for version in ["--http1.1", "--http2"] {
            let (code, body) = curl(&["--cacert", &ca, version, &format!("{base}/health/live")]);
            assert_eq!(code, 200, "{version}: {body}");
        }
        let (code, _) = curl(&["--cacert", &ca, &format!("{base}/api/overview")]);
        assert_eq!(code, 401);
        // Plain HTTP on the HTTPS port is not answered with data.
        let plain = Command::new("curl")
            .args([
                "-s",
                "--max-time",
                "5",
                &format!("http://localhost:{port}/api/overview"),
            ])
            .output()
            .unwrap();
        assert!(!String::from_utf8_lossy(&plain.stdout).contains("today_traffic"));

        // A password login over HTTPS: the cookie is Secure, __Host-.
        let dir = tempfile::tempdir().unwrap();
        let jar = dir.path().join("cookies");
        gw.add_operator("Hoàng Văn Mật", "viewer", "mật khẩu qua HTTPS")
            .await;
        let tls = ["--cacert", ca.as_str()];
        assert_eq!(
            curl_login(&base, &jar, &tls, "Hoàng Văn Mật", "mật khẩu qua HTTPS"),
            303
        );
        let cookies = std::fs::read_to_string(&jar).unwrap();
        assert!(cookies.contains("__Host-lienthong_session"), "{cookies}");
        let j = jar.to_str().unwrap();
        let (code, me) = curl(&["--cacert", &ca, "-b", j, &format!("{base}/api/session")]);
        assert_eq!(code, 200, "{me}");
        assert!(me.contains("\"via\":\"password\""), "{me}");

        // An operator with a client certificate and no password.
        let out = gw
            .run_cli(&[
                "operator",
                "add",
                "Trung tâm CNTT",
                "--role",
                "admin",
                "--no-password",
            ])
            .await;
        assert!(out.status.success(), "{}", describe_output(&out));
        let (cert, _, _) = gw.new_client_cert("operator");
        let key_file = gw.dir.join("operator.key.pem");
        let (c, k) = (cert.to_str().unwrap(), key_file.to_str().unwrap());
        // Before it is bound, the certificate opens nothing.
        let cjar = dir.path().join("cert.cookies");
        let cj = cjar.to_str().unwrap();
        let with_cert = [
            "--cacert",
            ca.as_str(),
            "--cert",
            c,
            "--key",
            k,
            "-c",
            cj,
            "-b",
            cj,
        ];
        let cert_login = |expect_button: bool| {
            let mut get = with_cert.to_vec();
            let url = format!("{base}/login");
            get.push(&url);
            let (code, page) = curl(&get);
            assert_eq!(code, 200, "{page}");
            assert_eq!(page.contains("cert-login"), expect_button, "{page}");
            let field = format!("csrf={}", hidden_csrf(&page));
            let mut post = with_cert.to_vec();
            let url = format!("{base}/login/certificate");
            post.extend_from_slice(&["-o", "/dev/null", "--data-urlencode", &field, &url]);
            curl(&post).0
        };
        assert_eq!(cert_login(false), 403);
        let out = gw
            .run_cli(&["directory", "bind-operator", "Trung tâm CNTT", c])
            .await;
        assert!(out.status.success(), "{}", describe_output(&out));
        assert_eq!(cert_login(true), 303);
        let (code, me) = curl(&["--cacert", &ca, "-b", cj, &format!("{base}/api/session")]);
        assert_eq!(code, 200, "{me}");
        let me: serde_json::Value = serde_json::from_str(&me).unwrap();
        assert_eq!(
            (me["name"].as_str(), me["role"].as_str(), me["via"].as_str()),
            (Some("Trung tâm CNTT"), Some("admin"), Some("certificate"))
        );
        // Binding a certificate to a name with no account is refused.
        let out = gw
            .run_cli(&["directory", "bind-operator", "Không Có Ai", c])
            .await;
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("lienthong operator add"),
            "{}",
            describe_output(&out)
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_grpc_a_certificate_has_its_accounts_role_and_no_more() {
    use lienthong_testkit::v1::{
        self as pb, admin_client::AdminClient, reports_client::ReportsClient,
    };
    let opts = GatewayOptions {
        mtls: true,
        ..Default::default()
    };
    let Some(gw) = TestGateway::start_with("operators_grpc_roles", opts).await else {
        return;
    };
    within(
        Duration::from_secs(120),
        "operator roles over gRPC",
        async {
            let viewer = gw.operator_grpc("Người Xem", "viewer").await;
            let report = ReportsClient::new(viewer.channel())
                .summary(viewer.request(pb::ReportRequest {
                    period: "2026".to_owned(),
                    ..Default::default()
                }))
                .await;
            assert!(report.is_ok(), "a viewer reads the reports: {report:?}");
            let upsert = AdminClient::new(viewer.channel())
                .upsert_agency(viewer.request(pb::Agency {
                    organ_id: "000.00.77.H35".to_owned(),
                    name: "Cơ quan do người xem thêm".to_owned(),
                    active: true,
                    ..Default::default()
                }))
                .await
                .expect_err("a viewer does not change the directory");
            assert_eq!(
                reason_of(&upsert).as_deref(),
                Some("PERMISSION_DENIED"),
                "{upsert:?}"
            );
            assert!(upsert.message().contains("viewer"), "{upsert:?}");

            // Removed: the certificate opens nothing any more.
            let out = gw.run_cli(&["operator", "remove", "Người Xem"]).await;
            assert!(out.status.success(), "{}", describe_output(&out));
            let after = ReportsClient::new(viewer.channel())
                .summary(viewer.request(pb::ReportRequest {
                    period: "2026".to_owned(),
                    ..Default::default()
                }))
                .await
                .expect_err("a removed operator's certificate is refused");
            assert_eq!(
                reason_of(&after).as_deref(),
                Some("PERMISSION_DENIED"),
                "{after:?}"
            );
            assert!(
                after.message().contains("not an active operator account"),
                "{after:?}"
            );
        },
    )
    .await;
}

//! The public directory as anyone meets it with curl: open without a
//! login while the dashboard beside it wants one, agencies found by code
//! and by a part of their name typed without diacritics, nothing but the
//! public fields, and 429 with `Retry-After` past the burst from one
//! address.

use std::process::Command;
use std::time::Duration;

use lienthong_testkit::*;

/// `curl ARGS…` (an HTTP client that is not ours): (status, headers in
/// lower case, body).
fn curl(args: &[&str]) -> (u16, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "-i", "--max-time", "20", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl is installed (.ci/run installs it)");
    assert!(
        out.status.success(),
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (all, code) = text.rsplit_once('\n').unwrap_or(("", ""));
    let (head, body) = all.split_once("\r\n\r\n").unwrap_or((all, ""));
    (
        code.trim().parse().unwrap_or(0),
        head.to_ascii_lowercase(),
        body.to_owned(),
    )
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

const KEYS: [&str; 9] = [
    "active",
    "address",
    "code",
    "email",
    "name",
    "parent",
    "parent_name",
    "telephone",
    "website",
];

fn keys(agency: &serde_json::Value) -> Vec<String> {
    let mut k: Vec<String> = agency
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {agency}"))
        .keys()
        .cloned()
        .collect();
    k.sort();
    k
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_public_directory_is_open_searchable_and_rate_limited() {
    let Some(gw) = TestGateway::start_with(
        "public_directory",
        GatewayOptions {
            import_directory: true,
            // A slow refill, so that the burst alone decides when 429 comes.
            extra_http: "public_directory_rate = 0.2\npublic_directory_burst = 20\n".to_owned(),
            ..Default::default()
        },
    )
    .await
    else {
        return;
    };
    within(Duration::from_secs(120), "the public directory", async {
        let base = format!("http://{}", gw.http_addr.unwrap());
        // An operator exists, so the dashboard has logins to ask for.
        gw.add_operator("Lê Văn Xem", "viewer", "mật khẩu của người xem")
            .await;
        let (code, _, body) = curl(&[&format!("{base}/api/overview")]);
        assert_eq!(code, 401, "the dashboard's API wants a login: {body}");
        // Requests to the public directory so far, this address's tokens spent.
        let mut used = 0;

        // By code, without a login: the public fields and no others.
        let (code, head, body) = curl(&[&format!("{base}/api/public/directory/{B}")]);
        used += 1;
        assert_eq!(code, 200, "{body}");
        assert!(head.contains("access-control-allow-origin: *"), "{head}");
        assert!(!head.contains("set-cookie"), "{head}");
        let b = json(&body);
        assert_eq!(keys(&b), KEYS, "{b}");
        assert_eq!(b["code"], B);
        assert_eq!(b["name"], "Sở Khoa học và Công nghệ tỉnh Lai Châu");
        assert_eq!(b["parent"], "000.00.00.H35");
        assert_eq!(b["parent_name"], "Ủy ban nhân dân tỉnh Lai Châu");
        assert_eq!(b["active"], true);

        // By a part of the name typed without diacritics.
        let (code, head, body) = curl(&[&format!("{base}/api/public/directory?q=uy%20ban%20nhan")]);
        used += 1;
        assert_eq!(code, 200, "{body}");
        assert!(head.contains("access-control-allow-origin: *"), "{head}");
        let page = json(&body);
        assert_eq!(page["total"], 3, "{page}");
        assert_eq!(page["page"], 1);
        assert_eq!(page["per_page"], 50);
        let mut top: Vec<String> = page.as_object().unwrap().keys().cloned().collect();
        top.sort();
        assert_eq!(top, ["agencies", "page", "per_page", "total"]);
        let codes: Vec<&str> = page["agencies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                assert_eq!(keys(a), KEYS, "{a}");
                a["code"].as_str().unwrap()
            })
            .collect();
        assert_eq!(codes, ["000.00.00.H35", A, C]);
        // Part of a code.
        let (_, _, body) = curl(&[&format!("{base}/api/public/directory?q=00.31")]);
        used += 1;
        assert_eq!(json(&body)["agencies"][0]["code"], C);
        // Nothing internal anywhere in the answer.
        let (_, _, all) = curl(&[&format!("{base}/api/public/directory")]);
        used += 1;
        assert_eq!(json(&all)["total"], 4, "{all}");
        for internal in [
            "grpc",
            "channel",
            "updated_at",
            "extra",
            "BEGIN CERTIFICATE",
            ".pem",
        ] {
            assert!(!all.contains(internal), "{internal} leaked: {all}");
        }
        // An unknown code: 404 with a sentence.
        let (code, _, body) = curl(&[&format!("{base}/api/public/directory/000.00.99.H35")]);
        used += 1;
        assert_eq!(code, 404, "{body}");
        let e = json(&body);
        assert_eq!(e["reason"], "NOT_FOUND");
        assert!(
            e["message"].as_str().unwrap().contains("000.00.99.H35"),
            "{e}"
        );

        // The page, as a browser asks for it: no trip to the login form.
        let (code, head, page) = curl(&[
            "-H",
            "Accept: text/html",
            &format!("{base}/directory?q=khoa%20hoc"),
        ]);
        used += 1;
        assert_eq!(code, 200, "{page}");
        assert!(
            head.contains("content-security-policy: default-src 'none'"),
            "{head}"
        );
        assert!(page.contains("Danh bạ mã định danh cơ quan, đơn vị"));
        assert!(page.contains("Sở Khoa học và Công nghệ tỉnh Lai Châu"));
        assert!(!page.contains("Văn phòng Ủy ban"), "only what matches");

        // Past the burst from this address: 429, Retry-After, a sentence.
        let mut limited = None;
        for i in used..40 {
            let (code, head, body) = curl(&[&format!("{base}/api/public/directory?q=lai")]);
            if code == 429 {
                limited = Some((i, head, body));
                break;
            }
            assert_eq!(code, 200, "request {i}: {body}");
        }
        let (i, head, body) = limited.expect("no 429 within 40 requests of a burst of 20");
        assert!(
            (20..=22).contains(&i),
            "429 at request {i}, the burst is 20"
        );
        let retry = head
            .lines()
            .find_map(|l| l.strip_prefix("retry-after:"))
            .unwrap_or_else(|| panic!("no Retry-After: {head}"));
        assert!(retry.trim().parse::<u64>().unwrap() >= 1, "{retry}");
        assert!(head.contains("access-control-allow-origin: *"), "{head}");
        let e = json(&body);
        assert_eq!(e["reason"], "RATE_LIMITED");
        assert!(
            e["message"].as_str().unwrap().contains("thử lại sau"),
            "{e}"
        );
        let (code, _, _) = curl(&[&format!("{base}/directory")]);
        assert_eq!(code, 429, "the page shares the address's bucket");
        // The rest of the listener is not the public directory's to limit.
        let (code, _, _) = curl(&[&format!("{base}/health/ready")]);
        assert_eq!(code, 200);
    })
    .await;
}

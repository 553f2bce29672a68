//! `lienthong directory export` for the Ministry and for another gateway:
//! CSV, JSON and XLSX with a signed `FILE.sig` beside each; the CSV and
//! the JSON imported by fresh gateways that trust the first one's receipt
//! certificate export the same rows again; a changed file with the
//! original signature is refused and nothing is imported; the XLSX is read
//! by openpyxl, a reader that is not ours.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lienthong_testkit::*;

/// The header the export writes and `directory import` reads.
const HEADER: [&str; 8] = [
    "organ_id",
    "name",
    "email",
    "address",
    "telephone",
    "parent",
    "website",
    "active",
];

/// Agencies added to the dev directory, so that the export carries what a
/// real one does: Vietnamese with commas and quotes, a line break, leading
/// zeros and `+`, an explicit parent, a website, an inactive agency.
const MORE: &str = "organ_id,name,email,address,telephone,website,channel,Ghi chú\n\
000.00.13.H35,\"Sở Văn hóa, Thể thao và Du lịch\",svhttdl@laichau.gov.vn,\"Tầng 3, Khu hành chính \"\"B\"\"\",0213 3876 555,https://svhttdl.laichau.gov.vn,amqp,nội bộ\n\
000.01.13.H35,Trung tâm Văn hóa tỉnh,,\"Đường 30/4\nphường Tân Phong\",+84 213 3800 001,,,\n\
000.21.31.H35,Ủy ban nhân dân phường Tân Phong,,,0975280222,,,\n";

const INACTIVE: &str = "000.01.13.H35";

fn toml_path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

fn append_config(gw: &TestGateway, text: &str) {
    let mut config = std::fs::read_to_string(&gw.config_path).unwrap();
    config.push_str(text);
    std::fs::write(&gw.config_path, config).unwrap();
}

async fn cli_ok(gw: &TestGateway, args: &[&std::ffi::OsStr]) -> std::process::Output {
    let out = gw.run_cli(args).await;
    assert!(
        out.status.success(),
        "`lienthong {}` failed:\n{}",
        args.iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" "),
        describe_output(&out)
    );
    out
}

async fn export(gw: &TestGateway, format: &str, out: &Path, unsigned: bool) {
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "directory".as_ref(),
        "export".as_ref(),
        "--format".as_ref(),
        format.as_ref(),
        "--out".as_ref(),
        out.as_os_str(),
    ];
    if unsigned {
        args.push("--unsigned".as_ref());
    }
    cli_ok(gw, &args).await;
    assert!(out.is_file(), "no {}", out.display());
}

fn sig_of(file: &Path) -> PathBuf {
    PathBuf::from(format!("{}.sig", file.display()))
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap())
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Copies `file` and its `.sig` into `dir`, as a file handed to another
/// province would arrive.
fn hand_over(file: &Path, dir: &Path) -> PathBuf {
    let to = dir.join(file.file_name().unwrap());
    std::fs::copy(file, &to).unwrap();
    std::fs::copy(sig_of(file), sig_of(&to)).unwrap();
    to
}

async fn listed(gw: &TestGateway) -> Vec<String> {
    let out = cli_ok(
        gw,
        &["directory".as_ref(), "list".as_ref(), "--json".as_ref()],
    )
    .await;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["organ_id"].as_str().unwrap().to_string()
        })
        .collect()
}

async fn fresh_gateway(name: &str, trusted: &Path) -> TestGateway {
    let gw = TestGateway::start_with(
        name,
        GatewayOptions {
            import_directory: false,
            ..Default::default()
        },
    )
    .await
    .expect("a SQLite gateway always starts");
    append_config(
        &gw,
        &format!("\n[receipts]\ntrusted_signers = [{}]\n", toml_path(trusted)),
    );
    gw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_export_is_signed_and_imported_unchanged_elsewhere() {
    let Some(gw) = TestGateway::start("directory_export", Backend::Sqlite).await else {
        return;
    };
    within(
        Duration::from_secs(400),
        "the directory export scenario",
        scenario(gw),
    )
    .await;
}

async fn scenario(gw: TestGateway) {
    let pki = gw.pki_dir.clone();
    let gateway_pem = pki.join("gateway.pem");
    append_config(
        &gw,
        &format!(
            "\n[receipts]\nkey = {}\ncert = {}\n",
            toml_path(&pki.join("gateway.key.pem")),
            toml_path(&gateway_pem),
        ),
    );
    let more = gw.dir.join("more.csv");
    std::fs::write(&more, MORE).unwrap();
    cli_ok(
        &gw,
        &["directory".as_ref(), "import".as_ref(), more.as_os_str()],
    )
    .await;
    cli_ok(
        &gw,
        &[
            "directory".as_ref(),
            "deactivate".as_ref(),
            INACTIVE.as_ref(),
        ],
    )
    .await;

    // ---- The first gateway exports, signed.
    let out_dir = gw.dir.join("export");
    std::fs::create_dir_all(&out_dir).unwrap();
    let csv = out_dir.join("danh-ba.csv");
    let json = out_dir.join("danh-ba.json");
    let xlsx = out_dir.join("danh-ba.xlsx");
    export(&gw, "csv", &csv, false).await;
    export(&gw, "json", &json, false).await;
    export(&gw, "xlsx", &xlsx, false).await;
    for f in [&csv, &json, &xlsx] {
        let sig = read_json(&sig_of(f));
        assert_eq!(
            sig["payload_type"], "application/vnd.lienthong.directory-export.v1",
            "{sig}"
        );
        assert!(
            sig["alg"].is_string() && sig["value"].is_string(),
            "signed: {sig}"
        );
    }

    let csv_bytes = std::fs::read(&csv).unwrap();
    assert!(
        csv_bytes.starts_with(b"\xEF\xBB\xBF"),
        "a BOM, for Excel to read Vietnamese"
    );
    let csv_text = std::str::from_utf8(&csv_bytes[3..]).unwrap();
    let mut lines = csv_text.split("\r\n");
    assert_eq!(lines.next(), Some(HEADER.join(",").as_str()));
    for internal in [
        "amqp",
        "grpc",
        "Ghi chú",
        "nội bộ",
        ".pem",
        "BEGIN CERTIFICATE",
    ] {
        assert!(
            !csv_text.contains(internal),
            "{internal} is not public: {csv_text}"
        );
    }
    assert!(csv_text.contains("\"Sở Văn hóa, Thể thao và Du lịch\""));

    let doc = read_json(&json);
    let agencies = doc["agencies"].as_array().unwrap().clone();
    let codes: Vec<&str> = agencies
        .iter()
        .map(|a| a["organ_id"].as_str().unwrap())
        .collect();
    let mut sorted = codes.clone();
    sorted.sort_unstable();
    assert_eq!(codes, sorted, "ordered by code");
    assert_eq!(codes.len(), 7, "{codes:?}");
    assert_eq!(doc["count"], 7);
    assert!(
        doc["generated_at"].as_str().unwrap().ends_with('Z'),
        "{doc}"
    );
    let subject = doc["gateway"].as_str().unwrap_or_default();
    assert!(
        subject.contains("CN="),
        "the receipt certificate's subject: {doc}"
    );
    for a in &agencies {
        let keys: Vec<&str> = a.as_object().unwrap().keys().map(String::as_str).collect();
        let mut want = HEADER.to_vec();
        want.sort_unstable();
        assert_eq!(keys, want, "{a}");
    }
    let inactive = agencies.iter().find(|a| a["organ_id"] == INACTIVE).unwrap();
    assert_eq!(inactive["active"], false);
    assert_eq!(inactive["parent"], "000.00.13.H35");
    assert_eq!(inactive["address"], "Đường 30/4\nphường Tân Phong");
    assert_eq!(inactive["telephone"], "+84 213 3800 001");
    let top = agencies
        .iter()
        .find(|a| a["organ_id"] == "000.00.00.H35")
        .unwrap();
    assert_eq!(top["parent"], serde_json::Value::Null);
    assert_eq!(top["name"], "Ủy ban nhân dân tỉnh Lai Châu");

    // The same directory, the same bytes (the JSON's generated_at aside).
    let again = out_dir.join("again.csv");
    export(&gw, "csv", &again, false).await;
    assert_eq!(std::fs::read(&again).unwrap(), csv_bytes);
    let again_json = out_dir.join("again.json");
    export(&gw, "json", &again_json, false).await;
    let without_time = |mut v: serde_json::Value| {
        v.as_object_mut().unwrap().remove("generated_at");
        v
    };
    assert_eq!(
        without_time(read_json(&again_json)),
        without_time(doc.clone())
    );

    // Standard output: the same CSV, and a sentence that it is unsigned.
    let out = cli_ok(
        &gw,
        &[
            "directory".as_ref(),
            "export".as_ref(),
            "--format".as_ref(),
            "csv".as_ref(),
        ],
    )
    .await;
    assert_eq!(out.stdout, csv_bytes);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not signed"),
        "{}",
        describe_output(&out)
    );
    // XLSX is not for a terminal.
    let out = gw
        .run_cli(&["directory", "export", "--format", "xlsx"])
        .await;
    assert!(!out.status.success(), "{}", describe_output(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--out"),
        "{}",
        describe_output(&out)
    );

    // ---- The XLSX, read by openpyxl.
    read_xlsx_with_openpyxl(&xlsx, &agencies).await;

    // ---- A second gateway, without the directory, imports the CSV.
    let gw2 = TestGateway::start_with(
        "directory_export_b",
        GatewayOptions {
            import_directory: false,
            ..Default::default()
        },
    )
    .await
    .expect("a SQLite gateway always starts");
    let arrived = hand_over(&csv, &gw2.dir);
    // Not yet told whose signature to believe: refused, nothing written.
    let out = gw2
        .run_cli(&["directory".as_ref(), "import".as_ref(), arrived.as_os_str()])
        .await;
    assert!(!out.status.success(), "{}", describe_output(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("receipts.trusted_signers"),
        "{}",
        describe_output(&out)
    );
    assert!(listed(&gw2).await.is_empty());
    append_config(
        &gw2,
        &format!(
            "\n[receipts]\ntrusted_signers = [{}]\n",
            toml_path(&gateway_pem)
        ),
    );
    let out = cli_ok(
        &gw2,
        &["directory".as_ref(), "import".as_ref(), arrived.as_os_str()],
    )
    .await;
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("matches"),
        "the operator is told the signature was checked:\n{}",
        describe_output(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("imported 7 agencies"),
        "{}",
        describe_output(&out)
    );
    // Its own export (no receipt key of its own: --unsigned) has the same
    // rows, byte for byte.
    let csv2 = gw2.dir.join("re-export.csv");
    export(&gw2, "csv", &csv2, true).await;
    assert_eq!(
        String::from_utf8(std::fs::read(&csv2).unwrap()).unwrap(),
        String::from_utf8(csv_bytes.clone()).unwrap()
    );
    let unsigned = read_json(&sig_of(&csv2));
    assert!(unsigned["value"].is_null() && unsigned["unsigned"].is_string());
    let json2 = gw2.dir.join("re-export.json");
    export(&gw2, "json", &json2, true).await;
    let doc2 = read_json(&json2);
    assert_eq!(doc2["agencies"], doc["agencies"]);
    assert_eq!(doc2["count"], doc["count"]);
    assert_eq!(doc2["gateway"], serde_json::Value::Null);

    // ---- A third: a CSV with one name changed and the original signature
    // is refused, and nothing is imported; then the JSON export is.
    let gw3 = fresh_gateway("directory_export_c", &gateway_pem).await;
    let tampered = gw3.dir.join("danh-ba.csv");
    let changed = String::from_utf8(csv_bytes.clone()).unwrap().replacen(
        "Ủy ban nhân dân tỉnh Lai Châu",
        "Ủy ban nhân dân tỉnh Lai Chau",
        1,
    );
    assert_ne!(changed.as_bytes(), csv_bytes.as_slice());
    std::fs::write(&tampered, &changed).unwrap();
    std::fs::copy(sig_of(&csv), sig_of(&tampered)).unwrap();
    let out = gw3
        .run_cli(&[
            "directory".as_ref(),
            "import".as_ref(),
            tampered.as_os_str(),
        ])
        .await;
    assert!(!out.status.success(), "{}", describe_output(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("does not match its signature") && err.contains("nothing was imported"),
        "{}",
        describe_output(&out)
    );
    assert!(listed(&gw3).await.is_empty(), "nothing imported");
    let history = cli_ok(
        &gw3,
        &["directory".as_ref(), "history".as_ref(), "--json".as_ref()],
    )
    .await;
    assert!(
        history.stdout.iter().all(u8::is_ascii_whitespace),
        "no directory change was logged: {}",
        String::from_utf8_lossy(&history.stdout)
    );

    let arrived = hand_over(&json, &gw3.dir);
    cli_ok(
        &gw3,
        &["directory".as_ref(), "import".as_ref(), arrived.as_os_str()],
    )
    .await;
    let csv3 = gw3.dir.join("re-export.csv");
    export(&gw3, "csv", &csv3, true).await;
    assert_eq!(std::fs::read(&csv3).unwrap(), csv_bytes);

    // A JSON export changed after signing is refused too.
    let gw4 = fresh_gateway("directory_export_d", &gateway_pem).await;
    let bad_json = gw4.dir.join("danh-ba.json");
    let mut v = doc.clone();
    v["agencies"][0]["active"] = false.into();
    std::fs::write(&bad_json, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    std::fs::copy(sig_of(&json), sig_of(&bad_json)).unwrap();
    let out = gw4
        .run_cli(&[
            "directory".as_ref(),
            "import".as_ref(),
            bad_json.as_os_str(),
        ])
        .await;
    assert!(!out.status.success(), "{}", describe_output(&out));
    assert!(listed(&gw4).await.is_empty());
    // And the spreadsheet is for people: its import says what to do.
    let arrived = hand_over(&xlsx, &gw4.dir);
    let out = gw4
        .run_cli(&["directory".as_ref(), "import".as_ref(), arrived.as_os_str()])
        .await;
    assert!(!out.status.success(), "{}", describe_output(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("CSV"),
        "{}",
        describe_output(&out)
    );
}

/// openpyxl reads the sheet: its name, the header (bold), every row as the
/// JSON export has it, and column widths set.
async fn read_xlsx_with_openpyxl(xlsx: &Path, agencies: &[serde_json::Value]) {
    let Some(python) = python_venv(
        "directory_export_xlsx",
        Path::new(env!("CARGO_TARGET_TMPDIR")),
    ) else {
        return;
    };
    let script = r#"
import json, sys, openpyxl
wb = openpyxl.load_workbook(sys.argv[1])
ws = wb.worksheets[0]
rows = [["" if v is None else v for v in r] for r in ws.iter_rows(values_only=True)]
print(json.dumps({
    "sheets": wb.sheetnames,
    "bold": [c.font.bold for c in ws[1]],
    "rows": rows,
    "widths": [ws.column_dimensions[c].width for c in "ABCDEFGH"],
    "frozen": ws.freeze_panes,
}, ensure_ascii=False))
"#;
    let out = tokio::process::Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(xlsx)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "openpyxl:\n{}", describe_output(&out));
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["sheets"], serde_json::json!(["directory"]), "{got}");
    let rows = got["rows"].as_array().unwrap();
    assert_eq!(rows[0], serde_json::json!(HEADER), "{got}");
    assert_eq!(got["bold"], serde_json::json!(vec![true; 8]), "{got}");
    assert_eq!(got["frozen"], "A2", "{got}");
    assert_eq!(rows.len(), agencies.len() + 1);
    for (row, a) in rows[1..].iter().zip(agencies) {
        let want: Vec<serde_json::Value> = HEADER
            .iter()
            .map(|h| match &a[*h] {
                serde_json::Value::Null => "".into(),
                v => v.clone(),
            })
            .collect();
        assert_eq!(row, &serde_json::Value::from(want));
    }
    assert!(
        rows.iter()
            .any(|r| r[1] == "Sở Khoa học và Công nghệ tỉnh Lai Châu"),
        "{got}"
    );
    let widths: Vec<f64> = got["widths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_f64().unwrap_or(0.0))
        .collect();
    // The name column is wider than the code's, both wider than the default.
    assert!(widths[1] > widths[0] && widths[0] > 8.43, "{widths:?}");
}

//! The project's own edXML fixtures (tests/fixtures/): every business type
//! and every status code, between fictional Lai Châu agencies.
//!
//! They are written by the encoder from the envelopes below; this test
//! fails when the encoder's output drifts from the committed files. After a
//! deliberate change, rewrite them with
//! `LIENTHONG_UPDATE_FIXTURES=1 cargo test -p lienthong-edxml --test edxml fixtures`.

use std::io::Write as _;
use std::path::PathBuf;

use crate::common::*;
use lienthong_edxml::{
    EncodeOptions, MemorySource, NoAttachments, Policy, check, encode_to_vec, inspect_file,
    validate,
};
use lienthong_proto::prost::bytes::Bytes;
use lienthong_proto::v1::{
    AttachmentRef, Business, BusinessDocumentInfo, BusinessReceiver, Document, Envelope,
    ManifestReference, Organization, Replacement, ResponseFor, Signer, Staff, StatusNotice,
    TraceHeader, envelope::Body,
};
use ring::digest;

const VP: &str = "000.00.01.H35";
const SKHCN: &str = "000.00.12.H35";
const STTTT: &str = "000.00.13.H35";

fn dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"))
}

fn vp() -> Organization {
    Organization {
        organization_in_charge: "UBND tỉnh Lai Châu".into(),
        organ_name: "Văn phòng UBND tỉnh Lai Châu".into(),
        organ_add: "Đường 19/8, phường Tân Phong, thành phố Lai Châu".into(),
        email: "vanphong@laichau.gov.vn".into(),
        telephone: "0213 3876 123".into(),
        fax: "0213 3876 124".into(),
        website: "https://laichau.gov.vn".into(),
    }
}

fn agency(name: &str, email: &str) -> Organization {
    Organization {
        organization_in_charge: "UBND tỉnh Lai Châu".into(),
        organ_name: name.into(),
        organ_add: "Thành phố Lai Châu, tỉnh Lai Châu".into(),
        email: email.into(),
        ..Default::default()
    }
}

fn clerk() -> Staff {
    Staff {
        name: "Lò Thị Hoa".into(),
        department: "Văn thư".into(),
        email: "vanthu@laichau.gov.vn".into(),
        mobile: "0912000111".into(),
    }
}

fn attachment(
    name: &str,
    content_type: &str,
    description: &str,
    bytes: &[u8],
    cid: &str,
) -> AttachmentRef {
    AttachmentRef {
        name: name.into(),
        content_type: content_type.into(),
        size: bytes.len() as u64,
        sha256: Bytes::copy_from_slice(digest::digest(&digest::SHA256, bytes).as_ref()),
        description: description.into(),
        content_id: cid.into(),
        manifest: None,
    }
}

/// A zip archive of one file, stored rather than deflated: deflate's bytes
/// depend on which back end feature unification gives flate2 (they differ
/// between `cargo test -p lienthong-edxml` and the workspace), and the
/// fixtures must be the same bytes however the test is run.
fn zipped(name: &str, bytes: &[u8]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .last_modified_time(zip::DateTime::default());
    ok(w.start_file(name, opts), "zip");
    ok(w.write_all(bytes), "zip");
    ok(w.finish(), "zip").into_inner()
}

fn document(
    number: u32,
    business: Business,
    response_for: Vec<ResponseFor>,
) -> (Envelope, Vec<Vec<u8>>) {
    let letter = format!(
        "UBND TỈNH LAI CHÂU\nVĂN PHÒNG\nSố: {number}/VP-KGVX\n\nKính gửi: Sở Khoa học và Công nghệ; Sở Thông tin và Truyền thông.\n"
    )
    .into_bytes();
    let zipped_letter = zipped("cong-van.txt", &letter);
    let plan = "Kế hoạch chuyển đổi số năm 2026 (bản dự thảo)."
        .as_bytes()
        .to_vec();
    let mut zip_ref = attachment(
        "cong-van.txt",
        "application/zip",
        "Công văn (nén)",
        &zipped_letter,
        "cid:1",
    );
    zip_ref.manifest = Some(ManifestReference {
        content_id: "cid:1".into(),
        content_type: "text/plain".into(),
        description: "Công văn".into(),
        name: "cong-van.txt".into(),
    });
    let doc = Document {
        document_id: format!("{VP},2026/03/02,{number}/VP-KGVX"),
        code_number: number.to_string(),
        code_notation: "VP-KGVX".into(),
        promulgation_place: "Lai Châu".into(),
        promulgation_date: "2026-03-02".into(),
        r#type: 1,
        type_detail: 0,
        type_name: "Công văn".into(),
        subject: "V/v triển khai kế hoạch chuyển đổi số năm 2026".into(),
        content: "Đề nghị các sở rà soát, báo cáo tiến độ trước ngày 31/3/2026.".into(),
        signer: Some(Signer {
            competence: "KT. CHÁNH VĂN PHÒNG".into(),
            position: "Phó Chánh Văn phòng".into(),
            full_name: "Vàng A Dếnh".into(),
        }),
        due_date: "2026-03-31".into(),
        priority: 1,
        steering_type: 1,
        sphere_of_promulgation: "Liên thông văn bản".into(),
        typer_notation: "HT".into(),
        promulgation_amount: 3,
        page_amount: 2,
        to_places: vec!["Như trên".into(), "Lưu: VT, KGVX".into()],
        appendixes: vec!["Phụ lục: Kế hoạch chi tiết".into()],
        response_for,
        business: Some(business),
        attachments: vec![
            zip_ref,
            attachment("ke-hoach.txt", "text/plain", "Kế hoạch", &plan, "cid:2"),
        ],
        direction: false,
        confidentiality: String::new(),
    };
    let env = Envelope {
        message_id: format!("fixture-{number}"),
        from: VP.into(),
        to: vec![SKHCN.into(), STTTT.into()],
        created_at: Some(prost_types::Timestamp {
            seconds: 1_772_415_000,
            nanos: 0,
        }),
        body: Some(Body::Document(doc)),
        sender: Some(vp()),
        recipients: vec![
            agency(
                "Sở Khoa học và Công nghệ tỉnh Lai Châu",
                "skhcn@laichau.gov.vn",
            ),
            agency(
                "Sở Thông tin và Truyền thông tỉnh Lai Châu",
                "stttt@laichau.gov.vn",
            ),
        ],
        trace_headers: vec![TraceHeader {
            organ_id: VP.into(),
            timestamp: "2026/03/02 08:30:00".into(),
        }],
        extensions: Vec::new(),
    };
    (env, vec![zipped_letter, plan])
}

fn earlier() -> ResponseFor {
    ResponseFor {
        organ_id: VP.into(),
        code: "12/VP-KGVX".into(),
        promulgation_date: "2026-02-20".into(),
        document_id: format!("{VP},2026/02/20,12/VP-KGVX"),
    }
}

fn documents() -> Vec<(&'static str, Envelope, Vec<Vec<u8>>)> {
    let base = |t: i32, reason: &str| Business {
        r#type: t,
        reason: reason.into(),
        paper: "0".into(),
        staff: Some(clerk()),
        ..Default::default()
    };
    let (new, a0) = document(15, base(0, "Văn bản điện tử mới"), Vec::new());
    let mut recall = base(1, "Thu hồi do sai sót về thể thức");
    recall.replaces = earlier().document_id;
    let (recall, a1) = document(16, recall, vec![earlier()]);
    let mut update = base(2, "Cập nhật danh sách nơi nhận");
    update.replaces = earlier().document_id;
    update.document_info = Some(BusinessDocumentInfo {
        document_info: "0".into(),
        document_receiver: "1".into(),
        receivers: vec![BusinessReceiver {
            organ_id: STTTT.into(),
            receiver_type: "0".into(),
        }],
    });
    let (update, a2) = document(17, update, Vec::new());
    let mut replace = base(3, "Thay thế văn bản số 12/VP-KGVX");
    replace.replacements = vec![Replacement {
        document_id: earlier().document_id,
        organ_ids: vec![SKHCN.into(), STTTT.into()],
    }];
    let (replace, a3) = document(18, replace, vec![earlier()]);
    vec![
        ("edoc_new.edxml", new, a0),
        ("edoc_recall.edxml", recall, a1),
        ("edoc_update.edxml", update, a2),
        ("edoc_replace.edxml", replace, a3),
    ]
}

fn statuses() -> Vec<(String, Envelope)> {
    [
        ("01", "Đã đến: phần mềm đã nhận, văn thư chưa xử lý"),
        ("02", "Từ chối tiếp nhận: văn bản gửi nhầm nơi nhận"),
        ("03", "Đã tiếp nhận, vào sổ văn bản đến"),
        ("04", "Lãnh đạo sở đã phân công xử lý"),
        ("05", "Phòng Quản lý công nghệ đang xử lý"),
        ("06", "Hoàn thành xử lý"),
        ("13", "Đề nghị lấy lại văn bản để cập nhật"),
        ("15", "Đồng ý cho lấy lại, cập nhật văn bản"),
        ("16", "Không đồng ý lấy lại: văn bản đã ban hành"),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (code, description))| {
        let at = prost_types::Timestamp {
            seconds: 1_772_420_000 + i as i64 * 600,
            nanos: 0,
        };
        let env = Envelope {
            message_id: format!("fixture-status-{code}"),
            from: SKHCN.into(),
            to: vec![VP.into()],
            created_at: Some(at),
            body: Some(Body::Status(StatusNotice {
                document_id: format!("{VP},2026/03/02,15/VP-KGVX"),
                document_from: VP.into(),
                code: code.into(),
                description: description.into(),
                staff: Some(Staff {
                    name: "Giàng Thị Mai".into(),
                    department: "Văn phòng Sở".into(),
                    email: "vanthu.skhcn@laichau.gov.vn".into(),
                    mobile: "0912000222".into(),
                }),
                at: Some(at),
                document_code: "15/VP-KGVX".into(),
                document_promulgation_date: "2026-03-02".into(),
            })),
            sender: Some(agency(
                "Sở Khoa học và Công nghệ tỉnh Lai Châu",
                "skhcn@laichau.gov.vn",
            )),
            ..Default::default()
        };
        (format!("status_{code}.edxml"), env)
    })
    .collect()
}

fn compare_or_update(name: &str, bytes: &[u8]) {
    let path = dir().join(name);
    if std::env::var_os("LIENTHONG_UPDATE_FIXTURES").is_some() {
        ok(std::fs::write(&path, bytes), name);
        return;
    }
    let committed = ok(std::fs::read(&path), name);
    assert!(
        committed == bytes,
        "{name} is not what the encoder writes; rerun with LIENTHONG_UPDATE_FIXTURES=1 if the change is intended"
    );
}

#[test]
fn document_fixtures_cover_every_business_type() {
    let mut types = Vec::new();
    for (name, env, atts) in documents() {
        let xml = ok(
            encode_to_vec(
                &env,
                &mut MemorySource(atts.clone()),
                &EncodeOptions::default(),
            ),
            name,
        );
        compare_or_update(name, &xml);
        let (p, back) = decode_with_id(&xml, &env.message_id);
        assert_eq!(p.envelope, env, "{name}");
        assert_eq!(back, atts, "{name}");
        assert!(
            check(&p, Policy::Strict).is_ok(),
            "{name}: {:?}",
            validate(&p, Policy::Strict)
        );
        // The first attachment is a ZIP of one file: reported, still carried zipped.
        let entry = p.attachments[0].zip_entry.as_ref();
        assert_eq!(
            entry.map(|e| e.name.as_str()),
            Some("cong-van.txt"),
            "{name}"
        );
        assert!(p.attachments[0].is_zip && !p.attachments[1].is_zip);
        let j = ok(inspect_file(&dir().join(name)), name);
        types.push(j["business_type"].as_i64());
    }
    assert_eq!(types, [Some(0), Some(1), Some(2), Some(3)]);
}

#[test]
fn status_fixtures_cover_every_status_code() {
    let mut codes = Vec::new();
    for (name, env) in statuses() {
        let xml = ok(
            encode_to_vec(&env, &mut NoAttachments, &EncodeOptions::default()),
            &name,
        );
        compare_or_update(&name, &xml);
        let (p, _) = decode_with_id(&xml, &env.message_id);
        assert_eq!(p.envelope, env, "{name}");
        assert!(
            check(&p, Policy::Strict).is_ok(),
            "{name}: {:?}",
            validate(&p, Policy::Strict)
        );
        let j = ok(inspect_file(&dir().join(&name)), &name);
        assert_eq!(j["kind"], "status");
        assert_eq!(j["to"][0], VP);
        codes.push(j["status_code"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(
        codes,
        ["01", "02", "03", "04", "05", "06", "13", "15", "16"]
    );
}

/// Written by hand the way other producers write: `edXML:` prefixes,
/// attachments before the header, unknown elements and attributes, a
/// day-first date, base64 in CR LF lines, comments, a Signature in the
/// XML-DSig namespace.
#[test]
fn a_package_from_another_producer() {
    let path = dir().join("edoc_other_producer.edxml");
    let bytes = ok(std::fs::read(&path), "fixture");
    let (p, atts) = decode_bytes(&bytes);
    assert!(
        check(&p, Policy::Lenient).is_ok(),
        "{:?}",
        validate(&p, Policy::Lenient)
    );
    let strict: Vec<String> = validate(&p, Policy::Strict)
        .iter()
        .map(|x| x.to_string())
        .collect();
    assert_eq!(
        strict,
        [
            "/edXML/edXMLEnvelope/edXMLHeader/MessageHeader/PromulgationInfo/PromulgationDate: PromulgationDate \"02/03/2026\" is not a valid date written yyyy/MM/dd"
        ]
    );
    let Some(Body::Document(doc)) = &p.envelope.body else {
        panic!("not a document")
    };
    assert_eq!(doc.promulgation_date, "2026-03-02");
    assert_eq!(
        doc.subject,
        "V/v tham gia ý kiến dự thảo quy chế & quy trình"
    );
    assert_eq!(atts, vec!["Nội dung dự thảo quy chế.".as_bytes().to_vec()]);
    assert_eq!(p.envelope.to, [VP]);
    let paths: Vec<&str> = p
        .envelope
        .extensions
        .iter()
        .map(|e| e.path.as_str())
        .collect();
    assert!(
        paths.contains(&"/edXML/edXMLEnvelope/edXMLHeader/MessageHeader/{urn:vi-du:qlvb}SoDen"),
        "{paths:?}"
    );
    assert!(paths.contains(
        &"/edXML/edXMLEnvelope/edXMLHeader/{http://www.w3.org/2000/09/xmldsig#}Signature"
    ));
    assert!(
        paths.contains(&"/edXML/edXMLEnvelope/edXMLBody/edXMLManifest/Reference[1]/@xlink:href")
    );
    let sig = p.signature.as_ref();
    assert_eq!(sig.map(|s| s.unreadable.len()), Some(1), "{sig:?}");
    let copy = encode_package(&p, &atts);
    assert_keeps_everything(&bytes, &copy, "edoc_other_producer.edxml");
    let (p2, _) = decode_with_id(&copy, &p.envelope.message_id);
    assert_eq!(p2.envelope, p.envelope);
}

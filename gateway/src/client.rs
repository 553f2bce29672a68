//! `lienthong send` and `lienthong receive`: a small agency client over
//! gRPC, doing what agency software does.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use lienthong_pki::signing::{self, Algorithm, SigningKey};
use lienthong_proto::v1::{
    self as pb, Envelope, SendRequest, exchange_client::ExchangeClient, send_request::Item,
};
use prost::Message as _;
use ring::digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Request;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::cli::format_time;
use crate::config::Config;

const CHUNK: usize = 256 * 1024;

/// How to reach the gateway.
#[derive(Args, Debug, Clone)]
pub struct ConnectArgs {
    /// Gateway address, http://HOST:PORT or https://HOST:PORT for mutual
    /// TLS (default: from grpc.listen and auth.mode). Several, separated by
    /// commas (the replicas of one gateway): the first that answers is used.
    #[arg(long)]
    pub server: Option<String>,
    /// With https: the authority that issued the gateway's certificate (PEM).
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// With https: this agency software's client certificate (PEM).
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// With https: its private key (PEM).
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// With https: the name the gateway's certificate carries.
    #[arg(long, default_value = "localhost")]
    pub tls_domain: String,
}

#[derive(Args, Debug)]
pub struct SendArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The sending agency's code.
    #[arg(long)]
    pub from: String,
    /// A receiving agency's code (repeat, or separate with commas).
    #[arg(long, required = true, value_delimiter = ',')]
    pub to: Vec<String>,
    /// The sender's signing key (PKCS#8 PEM).
    #[arg(long)]
    pub key: PathBuf,
    /// The sender's signing certificate (PEM; intermediates may follow).
    #[arg(long)]
    pub cert: PathBuf,
    /// RS256 or PS256 for an RSA key (ECDSA keys choose their own).
    #[arg(long)]
    pub algorithm: Option<String>,
    /// Default: a new UUID.
    #[arg(long)]
    pub message_id: Option<String>,
    /// Trích yếu.
    #[arg(long, default_value = "")]
    pub subject: String,
    /// Số, e.g. 15.
    #[arg(long, default_value = "")]
    pub code_number: String,
    /// Ký hiệu, e.g. QĐ-UBND.
    #[arg(long, default_value = "")]
    pub code_notation: String,
    /// Default: {from},{date},{number}/{notation} or the message id.
    #[arg(long)]
    pub document_id: Option<String>,
    /// A file to attach (repeat).
    #[arg(long)]
    pub attach: Vec<PathBuf>,
    /// Send a status notice with this code (01..16) instead of a document.
    #[arg(long)]
    pub status: Option<String>,
    /// With --status: the agency that sent the document answered.
    #[arg(long)]
    pub document_from: Option<String>,
    /// With --status: a description.
    #[arg(long, default_value = "")]
    pub description: String,
    /// Save the gateway's signed receipt (protobuf) to this file, for
    /// `lienthong verify-receipt`.
    #[arg(long)]
    pub receipt: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ReceiveArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The receiving agency's code.
    #[arg(long = "as")]
    pub as_agency: String,
    /// Acknowledge each delivery once it is written (and its attachments verified).
    #[arg(long)]
    pub ack: bool,
    /// Write each document to DIR/<sender>/<message_id>/: envelope.pb (the
    /// signed envelope), package.edxml (with --edxml) and attachments/ (each
    /// attachment under its own name, made safe for the file system).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Keep waiting for new deliveries.
    #[arg(long)]
    pub follow: bool,
    /// Stop after N deliveries.
    #[arg(long, default_value_t = 0)]
    pub max: u32,
    /// With --out: also save each delivery as an edXML package
    /// (DIR/<sender>/<message_id>/package.edxml), rendered by the gateway.
    #[arg(long)]
    pub edxml: bool,
}

pub(crate) async fn connect(cfg: &Config, c: &ConnectArgs) -> Result<ExchangeClient<Channel>> {
    let urls = c.server.clone().unwrap_or_else(|| cfg.grpc_client_url());
    let mut failures = Vec::new();
    for url in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        match endpoint(url, c)?.connect().await {
            Ok(ch) => {
                return Ok(ExchangeClient::new(ch)
                    .max_decoding_message_size(16 * 1024 * 1024)
                    .max_encoding_message_size(16 * 1024 * 1024));
            }
            Err(e) => failures.push(format!(
                "{url}: {}",
                anyhow::Error::from(e)
                    .chain()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(": ")
            )),
        }
    }
    match failures.len() {
        0 => bail!("--server names no gateway address"),
        1 => bail!("cannot reach the gateway at {}", failures.join("")),
        _ => bail!(
            "cannot reach any of the gateway's addresses: {}",
            failures.join("; ")
        ),
    }
}

/// One gateway address, with the TLS settings when it is `https://`.
fn endpoint(url: &str, c: &ConnectArgs) -> Result<Endpoint> {
    // Larger HTTP/2 windows than the 64 KiB default, so that a large
    // attachment streams down at the disk's pace (the gateway does the same
    // for uploads).
    let mut endpoint = Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("{url} is not a valid gateway address"))?
        .initial_stream_window_size(1024 * 1024)
        .initial_connection_window_size(2 * 1024 * 1024);
    if url.starts_with("https://") {
        let mut tls = ClientTlsConfig::new().domain_name(c.tls_domain.clone());
        if let Some(ca) = &c.tls_ca {
            let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        match (&c.tls_cert, &c.tls_key) {
            (Some(cert), Some(key)) => {
                let cert = std::fs::read(cert)
                    .with_context(|| format!("cannot read {}", cert.display()))?;
                let key =
                    std::fs::read(key).with_context(|| format!("cannot read {}", key.display()))?;
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            (None, None) => {}
            _ => bail!("--tls-cert and --tls-key go together"),
        }
        endpoint = endpoint
            .tls_config(tls)
            .context("the TLS settings are not usable")?;
    }
    Ok(endpoint)
}

pub(crate) fn with_identity<T>(msg: T, organ_id: &str) -> Result<Request<T>> {
    let mut req = Request::new(msg);
    let v =
        MetadataValue::try_from(organ_id).context("the agency code is not a valid header value")?;
    req.metadata_mut().insert("x-organ-id", v);
    Ok(req)
}

pub(crate) fn describe_status(st: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    let reason = st
        .get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_else(|| format!("{:?}", st.code()));
    format!("{reason}: {}", st.message())
}

/// Size and SHA-256 of a file, read once in chunks.
async fn digest_file(path: &Path) -> Result<(u64, Vec<u8>)> {
    let mut f = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("cannot open {}", path.display()))?;
    let mut ctx = digest::Context::new(&digest::SHA256);
    let mut buf = vec![0u8; CHUNK];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, ctx.finish().as_ref().to_vec()))
}

fn content_type(path: &Path) -> &'static str {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .as_deref()
    {
        Some("pdf") => "application/pdf",
        Some("doc") => "application/msword",
        Some("docx") => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        Some("xls") => "application/vnd.ms-excel",
        Some("xlsx") => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        Some("zip") => "application/zip",
        Some("xml") => "application/xml",
        Some("txt") => "text/plain",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        _ => "application/octet-stream",
    }
}

fn now_ts() -> prost_types::Timestamp {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    prost_types::Timestamp {
        seconds: now.as_secs() as i64,
        nanos: now.subsec_nanos() as i32,
    }
}

pub async fn send(cfg: Config, args: SendArgs) -> Result<ExitCode> {
    let key_pem = std::fs::read_to_string(&args.key)
        .with_context(|| format!("cannot read the key {}", args.key.display()))?;
    let prefer = match args.algorithm.as_deref() {
        None => None,
        Some(a) => Some(Algorithm::parse(a).with_context(|| format!("unknown algorithm {a}"))?),
    };
    let key = SigningKey::from_pkcs8_pem(&key_pem, prefer)
        .map_err(|e| anyhow::anyhow!("{}", e.message()))?;
    let chain = signing::load_certificates_pem(&args.cert)
        .map_err(|e| anyhow::anyhow!("{}", e.message()))?;
    let message_id = args
        .message_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let body = match &args.status {
        Some(code) => {
            let Some(document_id) = args.document_id.clone() else {
                bail!("--status needs --document-id (the document it answers)");
            };
            let Some(document_from) = args.document_from.clone() else {
                bail!("--status needs --document-from (the agency that sent the document)");
            };
            if !args.attach.is_empty() {
                bail!("a status notice carries no attachments");
            }
            pb::envelope::Body::Status(pb::StatusNotice {
                document_id,
                document_from,
                code: code.clone(),
                description: args.description.clone(),
                staff: None,
                at: Some(now_ts()),
                ..Default::default()
            })
        }
        None => {
            let mut attachments = Vec::new();
            for p in &args.attach {
                let (size, sha) = digest_file(p).await?;
                attachments.push(pb::AttachmentRef {
                    name: p
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_else(|| "attachment".to_owned()),
                    content_type: content_type(p).to_owned(),
                    size,
                    sha256: sha.into(),
                    description: String::new(),
                    ..Default::default()
                });
            }
            let today = time::OffsetDateTime::now_utc().date();
            let date = format!(
                "{:04}-{:02}-{:02}",
                today.year(),
                today.month() as u8,
                today.day()
            );
            let document_id = args.document_id.clone().unwrap_or_else(|| {
                if args.code_number.is_empty() {
                    message_id.clone()
                } else {
                    format!(
                        "{},{},{}/{}",
                        args.from,
                        date.replace('-', "/"),
                        args.code_number,
                        args.code_notation
                    )
                }
            });
            pb::envelope::Body::Document(pb::Document {
                document_id,
                code_number: args.code_number.clone(),
                code_notation: args.code_notation.clone(),
                promulgation_date: date,
                subject: args.subject.clone(),
                attachments,
                ..Default::default()
            })
        }
    };
    let envelope = Envelope {
        message_id: message_id.clone(),
        from: args.from.clone(),
        to: args.to.clone(),
        created_at: Some(now_ts()),
        body: Some(body),
        ..Default::default()
    };
    let document_id = match &envelope.body {
        Some(pb::envelope::Body::Document(d)) => d.document_id.clone(),
        Some(pb::envelope::Body::Status(s)) => s.document_id.clone(),
        None => String::new(),
    };
    let signed = signing::sign_envelope(&envelope, &key, &chain)
        .map_err(|e| anyhow::anyhow!("{}", e.message()))?;

    let mut client = connect(&cfg, &args.connect).await?;
    let (tx, rx) = mpsc::channel::<SendRequest>(4);
    let files = args.attach.clone();
    let feeder = tokio::spawn(async move {
        if tx
            .send(SendRequest {
                item: Some(Item::Envelope(signed)),
            })
            .await
            .is_err()
        {
            return Ok(());
        }
        for (i, p) in files.iter().enumerate() {
            let mut f = tokio::fs::File::open(p).await?;
            loop {
                let mut buf = vec![0u8; CHUNK];
                let n = f.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                buf.truncate(n);
                let chunk = pb::AttachmentChunk {
                    index: i as u32,
                    data: buf.into(),
                };
                if tx
                    .send(SendRequest {
                        item: Some(Item::Chunk(chunk)),
                    })
                    .await
                    .is_err()
                {
                    // The gateway answered early (a refusal): stop reading.
                    return Ok(());
                }
            }
        }
        Ok::<(), std::io::Error>(())
    });
    let req = with_identity(ReceiverStream::new(rx), &args.from)?;
    let result = client.send(req).await;
    feeder.await??;
    match result {
        Ok(resp) => {
            let r = resp.into_inner();
            if let Some(path) = &args.receipt {
                std::fs::write(path, r.encode_to_vec())
                    .with_context(|| format!("cannot write the receipt to {}", path.display()))?;
            }
            println!(
                "{}",
                serde_json::json!({
                    "message_id": r.message_id,
                    "from": r.from,
                    "document_id": document_id,
                    "accepted_at": format_time(r.accepted_at.as_ref()),
                    "envelope_sha256": hex::encode(&r.envelope_sha256),
                    "duplicate": r.duplicate,
                    "recipients": r.recipients.iter().map(|x| serde_json::json!({"organ_id": x.organ_id, "route": x.route})).collect::<Vec<_>>(),
                    "gateway": r.gateway,
                    "receipt_signed": r.signature.is_some(),
                })
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(st) => {
            eprintln!("refused: {}", describe_status(&st));
            Ok(ExitCode::from(2))
        }
    }
}

pub async fn receive(cfg: Config, args: ReceiveArgs) -> Result<ExitCode> {
    let mut client = connect(&cfg, &args.connect).await?;
    let req = with_identity(
        pb::ReceiveRequest {
            follow: args.follow,
            max: args.max,
            format: if args.edxml {
                pb::DeliveryFormat::Edxml as i32
            } else {
                pb::DeliveryFormat::Envelope as i32
            },
        },
        &args.as_agency,
    )?;
    let mut stream = match client.receive(req).await {
        Ok(r) => r.into_inner(),
        Err(st) => {
            eprintln!("refused: {}", describe_status(&st));
            return Ok(ExitCode::from(2));
        }
    };
    while let Some(item) = stream.next().await {
        let d = match item {
            Ok(d) => d,
            Err(st) => {
                eprintln!("the stream broke: {}", describe_status(&st));
                return Ok(ExitCode::from(2));
            }
        };
        // A gateway notice (maintenance) is shown, never acknowledged.
        if let Some(n) = &d.notice {
            println!("{}", notice_json(n));
            continue;
        }
        let Some(signed) = d.envelope.clone() else {
            continue;
        };
        let env = Envelope::decode(signed.payload.clone())
            .context("a delivery's payload is not an Envelope")?;
        let mut summary = serde_json::json!({
            "delivery_id": d.delivery_id,
            "message_id": env.message_id,
            "from": env.from,
            "to": env.to,
            "accepted_at": format_time(d.accepted_at.as_ref()),
            "attempt": d.attempt,
            "verified": d.verification.as_ref().map(|v| v.summary.clone()).unwrap_or_default(),
        });
        match &env.body {
            Some(pb::envelope::Body::Document(doc)) => {
                summary["kind"] = "document".into();
                summary["document_id"] = doc.document_id.clone().into();
                summary["subject"] = doc.subject.clone().into();
                let pdf = d
                    .verification
                    .as_ref()
                    .map(|v| v.pdf.as_slice())
                    .unwrap_or_default();
                summary["attachments"] = doc
                    .attachments
                    .iter()
                    .enumerate()
                    .map(|(i, a)| {
                        let mut j = serde_json::json!({"name": a.name, "size": a.size, "sha256": hex::encode(&a.sha256)});
                        // What the gateway found in the PDF's own signatures.
                        if let Some(p) = pdf.iter().find(|p| p.attachment_index as usize == i) {
                            j["pdf_signatures"] = serde_json::json!({
                                "verdict": p.verdict,
                                "summary": p.summary,
                                "reasons": p.reasons,
                                "warnings": p.warnings,
                            });
                        }
                        j
                    })
                    .collect::<Vec<_>>()
                    .into();
                if let Some(out) = &args.out {
                    let dir = save_envelope(out, &env, &signed, &d.edxml).await?;
                    let files = dir.join(ATTACHMENTS_DIR);
                    let mut names = std::collections::HashSet::new();
                    for (i, a) in doc.attachments.iter().enumerate() {
                        let name = unique_name(&mut names, &a.name, i);
                        let part = dir.join(format!("attachment-{i}.part"));
                        fetch_to_file(
                            &mut client,
                            &args.as_agency,
                            &env,
                            (i as u32, a),
                            &part,
                            &files.join(&name),
                        )
                        .await?;
                        if let Some(j) = summary["attachments"].get_mut(i) {
                            j["saved_as"] = format!("{ATTACHMENTS_DIR}/{name}").into();
                        }
                    }
                    summary["saved_to"] = dir.display().to_string().into();
                }
            }
            Some(pb::envelope::Body::Status(st)) => {
                summary["kind"] = "status".into();
                summary["document_id"] = st.document_id.clone().into();
                summary["status_code"] = st.code.clone().into();
                summary["description"] = st.description.clone().into();
            }
            None => {}
        }
        println!("{summary}");
        if args.ack {
            let req = with_identity(
                pb::AckRequest {
                    delivery_id: d.delivery_id.clone(),
                },
                &args.as_agency,
            )?;
            if let Err(st) = client.ack(req).await {
                eprintln!("ack of {} refused: {}", d.delivery_id, describe_status(&st));
                return Ok(ExitCode::from(2));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One line of `lienthong receive` for a notice (it is not acknowledged).
fn notice_json(n: &pb::GatewayNotice) -> serde_json::Value {
    let t = |ts: Option<&prost_types::Timestamp>| format_time(ts);
    serde_json::json!({
        "notice": n.kind,
        "id": n.id,
        "starts_at": t(n.starts_at.as_ref()),
        "ends_at": t(n.ends_at.as_ref()),
        "message": n.message,
        "announced_at": t(n.announced_at.as_ref()),
        "cancelled": n.cancelled,
        "no_interruption_expected": n.no_interruption_expected,
    })
}

/// The folder of a document's attachments, inside its message folder: an
/// attachment's name never meets the envelope's or the package's.
const ATTACHMENTS_DIR: &str = "attachments";

/// Writes a document's envelope (and edXML package) to
/// `out/<sender>/<message_id>/`, and returns that folder. Keyed by sender
/// too: message ids are unique per sender only.
async fn save_envelope(
    out: &Path,
    env: &Envelope,
    signed: &pb::SignedEnvelope,
    edxml: &[u8],
) -> Result<PathBuf> {
    let dir = out
        .join(safe_name(&env.from))
        .join(safe_name(&env.message_id));
    tokio::fs::create_dir_all(dir.join(ATTACHMENTS_DIR)).await?;
    tokio::fs::write(dir.join("envelope.pb"), signed.encode_to_vec()).await?;
    if !edxml.is_empty() {
        tokio::fs::write(dir.join("package.edxml"), edxml).await?;
    }
    Ok(dir)
}

/// A safe file name for attachment `index`, not yet given to another
/// attachment of the same document (the file system may fold case).
fn unique_name(taken: &mut std::collections::HashSet<String>, name: &str, index: usize) -> String {
    let base = safe_name(name);
    let mut candidate = base.clone();
    let mut n = 0;
    while !taken.insert(candidate.to_lowercase()) {
        n += 1;
        candidate = if n == 1 {
            format!("{index}-{base}")
        } else {
            format!("{index}-{n}-{base}")
        };
    }
    candidate
}

/// Streams an attachment (its index and reference) to `part`, checks it
/// against the signed digest, then renames it to `path`.
async fn fetch_to_file(
    client: &mut ExchangeClient<Channel>,
    me: &str,
    env: &Envelope,
    (index, a): (u32, &pb::AttachmentRef),
    part: &Path,
    path: &Path,
) -> Result<()> {
    let req = with_identity(
        pb::FetchAttachmentRequest {
            message_id: env.message_id.clone(),
            from: env.from.clone(),
            index,
        },
        me,
    )?;
    let mut stream = client
        .fetch_attachment(req)
        .await
        .map_err(|st| anyhow::anyhow!("fetching {}: {}", a.name, describe_status(&st)))?
        .into_inner();
    // A fresh file: never written through a link someone left in its place.
    match tokio::fs::remove_file(part).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    let mut f = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(part)
        .await?;
    let mut ctx = digest::Context::new(&digest::SHA256);
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|st| anyhow::anyhow!("fetching {}: {}", a.name, describe_status(&st)))?;
        ctx.update(&chunk.data);
        size += chunk.data.len() as u64;
        f.write_all(&chunk.data).await?;
    }
    f.sync_all().await?;
    if size != a.size || ctx.finish().as_ref() != a.sha256.as_ref() {
        let _ = tokio::fs::remove_file(part).await;
        bail!(
            "attachment {} does not match its signed size and SHA-256",
            a.name
        );
    }
    tokio::fs::rename(part, path).await?;
    Ok(())
}

/// Longest file name written, in bytes (file systems stop at 255).
const MAX_NAME_BYTES: usize = 200;

/// A file name that stays inside its directory: no separator, no control
/// character, not `.` or `..`, not hidden, at most [`MAX_NAME_BYTES`] bytes
/// (the end, where the extension is, kept).
fn safe_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if matches!(c, '/' | '\\' | ':') || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    let trimmed = cleaned.trim().trim_start_matches('.');
    if trimmed.is_empty() {
        return "unnamed".to_owned();
    }
    if trimmed.len() <= MAX_NAME_BYTES {
        return trimmed.to_owned();
    }
    let mut start = trimmed.len() - MAX_NAME_BYTES;
    while !trimmed.is_char_boundary(start) {
        start += 1;
    }
    trimmed[start..].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_inside() {
        assert_eq!(safe_name("../../etc/passwd"), "_.._etc_passwd");
        assert_eq!(safe_name(".."), "unnamed");
        assert_eq!(safe_name("/etc/passwd"), "_etc_passwd");
        assert_eq!(safe_name("C:\\Windows\\x.dll"), "C__Windows_x.dll");
        assert_eq!(safe_name(".bashrc"), "bashrc");
        assert_eq!(safe_name("a\0b\nc"), "a_b_c");
        assert_eq!(safe_name("Quyết định.pdf"), "Quyết định.pdf");
        let long = format!("{}.pdf", "ệ".repeat(300));
        let s = safe_name(&long);
        assert!(s.len() <= MAX_NAME_BYTES && s.ends_with("ệ.pdf"), "{s}");
    }

    #[test]
    fn repeated_names_get_their_index() {
        let mut taken = std::collections::HashSet::new();
        assert_eq!(unique_name(&mut taken, "a.pdf", 0), "a.pdf");
        assert_eq!(unique_name(&mut taken, "A.PDF", 1), "1-A.PDF");
        assert_eq!(unique_name(&mut taken, "a.pdf", 2), "2-a.pdf");
        assert_eq!(unique_name(&mut taken, "2-a.pdf", 3), "3-2-a.pdf");
        assert_eq!(unique_name(&mut taken, "../a.pdf", 4), "_a.pdf");
    }
}

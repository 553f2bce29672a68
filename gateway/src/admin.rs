//! Operator commands that work on the database directly: the directory,
//! the transfer log, and the throwaway PKI for trying the gateway out.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use lienthong_core::devpki::{self, KeyType};
use lienthong_core::directory::{self, ClientRole};
use lienthong_core::organ_id::{IdPolicy, OrganId};
use lienthong_core::pipeline::{Gateway, Settings};
use lienthong_core::signing::TrustAnchors;
use lienthong_core::store::Store;
use lienthong_proto::v1::TraceEvent;

use crate::config::Config;

#[derive(Subcommand, Debug)]
pub enum DirectoryCommand {
    /// Import agencies from a CSV file (header: organ_id,name,... ; an
    /// optional signing_cert column names a PEM file to bind).
    Import {
        file: PathBuf,
        /// Import the good rows even when some rows are bad.
        #[arg(long)]
        skip_invalid: bool,
        /// Accept test-system identifiers such as vxp.saas.03.
        #[arg(long)]
        lenient: bool,
    },
    /// Bind a document-signing certificate to an agency.
    BindCert { organ_id: String, cert: PathBuf },
    /// Bind a client (system) certificate for mutual TLS to an agency: its
    /// software then connects as that agency.
    BindClientCert { organ_id: String, cert: PathBuf },
    /// Bind a client certificate to an operator account (made first with
    /// `lienthong operator add`): it logs in to the dashboard over HTTPS and
    /// calls the gRPC Admin and Reports services, with the account's role.
    BindOperator { name: String, cert: PathBuf },
    /// Let AGENT send documents in the name of PRINCIPAL (e.g. Văn phòng
    /// UBND tỉnh for UBND tỉnh); --revoke ends it.
    Represent {
        agent: String,
        principal: String,
        #[arg(long)]
        revoke: bool,
    },
    /// List the agencies.
    List {
        /// Only this agency and those under it.
        #[arg(long)]
        under: Option<String>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct DevPkiArgs {
    /// Directory to write into (created if missing).
    pub out_dir: PathBuf,
    #[arg(long, value_enum, default_value_t = KeyTypeArg::EcP256)]
    pub key_type: KeyTypeArg,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum KeyTypeArg {
    EcP256,
    EcP384,
    Rsa2048,
}

#[derive(Args, Debug)]
pub struct VerifyReceiptArgs {
    /// The receipt file (protobuf SendReceipt).
    pub file: PathBuf,
    /// PEM files of the authorities to trust instead of trust.anchors.
    #[arg(long)]
    pub anchors: Vec<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum LogCommand {
    /// Walk the transfer log's hash chain and report the first broken link
    /// (an event edited or removed after it was written). Exit 1 if broken.
    Verify,
}

#[derive(Args, Debug)]
pub struct TraceArgs {
    pub message_id: String,
    /// The sender, when several agencies used the same message_id.
    #[arg(long)]
    pub from: Option<String>,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct DocumentStatusArgs {
    pub document_id: String,
    /// The agency that sent the document.
    #[arg(long)]
    pub from: String,
    /// One JSON object.
    #[arg(long)]
    pub json: bool,
}

async fn store(cfg: &Config) -> Result<Store> {
    Store::connect(&cfg.database.url)
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.chain()))
}

pub async fn directory(cfg: Config, cmd: DirectoryCommand) -> Result<ExitCode> {
    let store = store(&cfg).await?;
    match cmd {
        DirectoryCommand::Import {
            file,
            skip_invalid,
            lenient,
        } => {
            let policy = if lenient {
                IdPolicy::Lenient
            } else {
                IdPolicy::Strict
            };
            let out = directory::import_csv(&store, &file, skip_invalid, policy)
                .await
                .map_err(|e| anyhow::anyhow!("{}", e.chain()))?;
            for p in &out.problems {
                eprintln!(
                    "{}:{}: {}: {}",
                    file.display(),
                    p.line,
                    p.organ_id,
                    p.reason
                );
            }
            if !out.applied {
                eprintln!(
                    "{} bad row(s); nothing was imported. Fix them, or pass --skip-invalid to import the good rows only.",
                    out.problems.len()
                );
                return Ok(ExitCode::from(1));
            }
            println!(
                "imported {} agencies, bound {} certificate(s){}",
                out.imported,
                out.certificates_bound,
                if out.problems.is_empty() {
                    String::new()
                } else {
                    format!(", skipped {} bad row(s)", out.problems.len())
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        DirectoryCommand::BindCert { organ_id, cert } => {
            let der = lienthong_core::signing::load_certificate_pem(&cert)
                .map_err(|e| anyhow::anyhow!("{}", e.message()))?;
            let row = directory::bind_signing_cert(&store, &organ_id, der)
                .await
                .map_err(|e| anyhow::anyhow!("{}", e.message()))?;
            println!(
                "bound {} (key sha256 {}) to {}",
                row.subject, row.spki_sha256, row.organ_id
            );
            Ok(ExitCode::SUCCESS)
        }
        DirectoryCommand::BindClientCert { organ_id, cert } => {
            let der = lienthong_core::signing::load_certificate_pem(&cert)
                .map_err(|e| anyhow::anyhow!("{}", e.message()))?;
            let row = directory::bind_client_cert(&store, &organ_id, der, ClientRole::Agency)
                .await
                .map_err(|e| anyhow::anyhow!("{}", e.message()))?;
            println!(
                "bound the client certificate {} (key sha256 {}) to {}",
                row.subject, row.spki_sha256, row.organ_id
            );
            Ok(ExitCode::SUCCESS)
        }
        DirectoryCommand::BindOperator { name, cert } => {
            let der = lienthong_core::signing::load_certificate_pem(&cert)
                .map_err(|e| anyhow::anyhow!("{}", e.message()))?;
            let row = directory::bind_client_cert(&store, &name, der, ClientRole::Operator)
                .await
                .map_err(|e| anyhow::anyhow!("{}", e.message()))?;
            println!(
                "bound the client certificate {} (key sha256 {}) to operator {}",
                row.subject, row.spki_sha256, row.organ_id
            );
            Ok(ExitCode::SUCCESS)
        }
        DirectoryCommand::Represent {
            agent,
            principal,
            revoke,
        } => {
            let err = |e: lienthong_core::error::Error| anyhow::anyhow!("{}", e.message());
            let agent = OrganId::parse_with(&agent, IdPolicy::Lenient).map_err(err)?;
            let principal = OrganId::parse_with(&principal, IdPolicy::Lenient).map_err(err)?;
            for id in [&agent, &principal] {
                if store.agency(id.as_str()).await.map_err(err)?.is_none() {
                    anyhow::bail!("{id} is not in the directory; import it first");
                }
            }
            if revoke {
                let had = store
                    .revoke_representation(agent.as_str(), principal.as_str())
                    .await
                    .map_err(err)?;
                println!(
                    "{agent} {} sends in the name of {principal}",
                    if had { "no longer" } else { "did not" }
                );
            } else {
                store
                    .grant_representation(agent.as_str(), principal.as_str())
                    .await
                    .map_err(err)?;
                println!("{agent} may now send in the name of {principal}");
            }
            Ok(ExitCode::SUCCESS)
        }
        DirectoryCommand::List { under, json } => {
            let under = match under {
                Some(u) => Some(
                    OrganId::parse_with(&u, IdPolicy::Lenient)
                        .map_err(|e| anyhow::anyhow!("{}", e.message()))?,
                ),
                None => None,
            };
            for a in store
                .agencies()
                .await
                .map_err(|e| anyhow::anyhow!("{}", e.chain()))?
            {
                if let Some(u) = &under {
                    let inside = OrganId::parse_with(&a.organ_id, IdPolicy::Lenient)
                        .map(|id| id.is_under(u))
                        .unwrap_or(false);
                    if !inside {
                        continue;
                    }
                }
                if json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "organ_id": a.organ_id, "name": a.name, "parent": a.parent,
                            "email": a.email, "channel": a.channel, "active": a.active,
                        })
                    );
                } else {
                    println!(
                        "{}\t{}\t{}",
                        a.organ_id,
                        if a.active { "active" } else { "inactive" },
                        a.name
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub fn dev_pki(args: DevPkiArgs) -> Result<ExitCode> {
    let kt = match args.key_type {
        KeyTypeArg::EcP256 => KeyType::EcP256,
        KeyTypeArg::EcP384 => KeyType::EcP384,
        KeyTypeArg::Rsa2048 => KeyType::Rsa2048,
    };
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("cannot create {}", args.out_dir.display()))?;
    let out = std::fs::canonicalize(&args.out_dir)?;
    let agencies = devpki::default_agencies();
    // The gateway's own agency (gateway.organ_id below): UBND tỉnh.
    let gateway_agency = agencies.first().map(|(id, _)| id.clone());
    devpki::write_dev_pki(&out, &agencies, kt, gateway_agency.as_ref())
        .map_err(|e| anyhow::anyhow!("{}", e.chain()))?;
    let toml = format!(
        r#"# A configuration to try lienthong out with the throwaway PKI in this folder.
# Not for production: auth.mode "dev-header" believes whatever agency the caller names.
[gateway]
id = "lienthong-dev"
organ_id = "000.00.00.H35"

[grpc]
listen = "127.0.0.1:50051"

[database]
url = "sqlite://{dir}/data/lienthong.db"

[storage]
path = "{dir}/data/blobs"

[trust]
anchors = ["{dir}/ca.pem"]

[receipts]
key = "{dir}/gateway.key.pem"
cert = "{dir}/gateway.pem"

[reports]
# The monthly report is written to reports.dir; to also send it as a document
# from gateway.organ_id (signed with receipts.key, bound to it in
# directory.csv), name the recipients:
# send_to = ["000.00.01.H35"]
dir = "{dir}/data/reports"

[auth]
mode = "dev-header"
"#,
        dir = out.display()
    );
    std::fs::write(out.join("lienthong.toml"), &toml)?;
    let mtls = toml
        .replace(
            "# Not for production: auth.mode \"dev-header\" believes whatever agency the caller names.",
            "# Mutual TLS: each agency's software presents its <organ_id>.client.pem.",
        )
        .replace(
            "[auth]\nmode = \"dev-header\"\n",
            &format!(
                "[auth]\nmode = \"mtls\"\n\n[tls]\ncert = \"{dir}/server.pem\"\nkey = \"{dir}/server.key.pem\"\nclient_anchors = [\"{dir}/ca.pem\"]\n",
                dir = out.display()
            ),
        );
    std::fs::write(out.join("lienthong-mtls.toml"), mtls)?;
    println!("wrote a throwaway PKI to {}:", out.display());
    println!("  ca.pem, ca.key.pem            the certification authority (trust anchor)");
    for (id, name) in &agencies {
        println!("  {id}.pem, {id}.key.pem   {name}");
    }
    println!(
        "  gateway.pem, gateway.key.pem  the gateway's certificate (receipts, the monthly report), bound to 000.00.00.H35"
    );
    println!("  directory.csv                 the agencies, with their signing certificates");
    println!(
        "  <organ_id>.client.pem, .client.key.pem   each agency software's TLS client certificate"
    );
    println!(
        "  server.pem, server.key.pem    the gateway's TLS certificate (localhost, 127.0.0.1)"
    );
    println!(
        "  lienthong.toml                a configuration that trusts ca.pem (dev-header identities)"
    );
    println!("  lienthong-mtls.toml           the same with mutual TLS");
    println!();
    println!(
        "next: lienthong --config {0}/lienthong.toml directory import {0}/directory.csv",
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

pub fn verify_receipt(cfg: Config, args: VerifyReceiptArgs) -> Result<ExitCode> {
    use prost::Message as _;
    let bytes = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let receipt = lienthong_proto::v1::SendReceipt::decode(bytes.as_slice())
        .with_context(|| format!("{} is not a lienthong receipt", args.file.display()))?;
    let anchors = if args.anchors.is_empty() {
        cfg.anchors()?
    } else {
        TrustAnchors::from_pem_files(&args.anchors)
            .map_err(|e| anyhow::anyhow!("{}", e.message()))?
    };
    let base = serde_json::json!({
        "message_id": receipt.message_id,
        "from": receipt.from,
        "accepted_at": format_time(receipt.accepted_at.as_ref()),
        "envelope_sha256": hex::encode(&receipt.envelope_sha256),
        "gateway": receipt.gateway,
    });
    match lienthong_core::receipts::verify_receipt(&receipt, &anchors) {
        Ok(signer) => {
            let mut out = base;
            out["valid"] = true.into();
            out["signed_by"] = signer.subject.into();
            out["trust_anchor"] = signer.trust_anchor.into();
            println!("{out}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            let mut out = base;
            out["valid"] = false.into();
            out["reason"] = e.reason().as_str().into();
            out["error"] = e.message().into();
            println!("{out}");
            Ok(ExitCode::from(1))
        }
    }
}

pub async fn log(cfg: Config, cmd: LogCommand) -> Result<ExitCode> {
    let store = store(&cfg).await?;
    match cmd {
        LogCommand::Verify => {
            let v = store
                .verify_log()
                .await
                .map_err(|e| anyhow::anyhow!("{}", e.chain()))?;
            match v.first_broken {
                None => {
                    println!(
                        "the transfer log is intact: {} chained event(s){}",
                        v.checked,
                        if v.unchained > 0 {
                            format!(", {} written before the chain existed", v.unchained)
                        } else {
                            String::new()
                        }
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Some((seq, what)) => {
                    println!(
                        "the transfer log is BROKEN at event {seq}: {what} ({} event(s) before it are intact)",
                        v.checked
                    );
                    Ok(ExitCode::from(1))
                }
            }
        }
    }
}

/// `lienthong document-status`: where a document stands with each recipient
/// (the operator's view of `Exchange.DocumentStatus`, from the database).
pub async fn document_status(cfg: Config, args: DocumentStatusArgs) -> Result<ExitCode> {
    let gw = log_reader(&cfg).await?;
    let operator = lienthong_core::pipeline::Caller {
        organ_id: "operator".to_owned(),
        transport: lienthong_core::pipeline::Transport::Cli,
        role: lienthong_core::pipeline::Role::Operator,
    };
    let s = match gw
        .document_status(&operator, &args.from, &args.document_id)
        .await
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{}", e.message());
            return Ok(ExitCode::from(1));
        }
    };
    let recipients: Vec<serde_json::Value> = s
        .recipients
        .iter()
        .map(|r| {
            serde_json::json!({
                "organ_id": r.organ_id,
                "state": r.state,
                "last_code": r.last_code,
                "updated_at": format_time(r.updated_at.as_ref()),
                "route": r.route,
                "overdue": r.overdue,
                "steps": r.steps.iter().map(|t| serde_json::json!({
                    "event": t.event,
                    "state": t.state,
                    "at": format_time(t.at.as_ref()),
                    "message_id": t.message_id,
                    "note": t.note,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    if args.json {
        let links: Vec<serde_json::Value> = s
            .links
            .iter()
            .map(|l| serde_json::json!({"relation": l.relation, "document_id": l.document_id, "message_id": l.message_id}))
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "document_id": s.document_id,
                "from": s.from,
                "message_id": s.message_id,
                "state": s.state,
                "due_date": s.due_date,
                "recipients": recipients,
                "links": links,
            })
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{} of {} ({}): {}",
        s.document_id, s.from, s.message_id, s.state
    );
    for l in &s.links {
        println!("  {} {}", l.relation, l.document_id);
    }
    for r in &s.recipients {
        println!(
            "  {:<15} {:<17} {}{}",
            r.organ_id,
            r.state,
            format_time(r.updated_at.as_ref()),
            if r.overdue { "  OVERDUE" } else { "" }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A `Gateway` over the database for the operator's read-only views (the
/// transfer log, document status). The attachment store stays unopened:
/// opening it would clean its tmp/ under a serving gateway's uploads.
async fn log_reader(cfg: &Config) -> Result<Gateway> {
    let store = store(cfg).await?;
    let blobs = lienthong_core::blobs::BlobStore::unopened(&cfg.storage.path);
    Ok(Gateway::from_parts(
        store,
        blobs,
        Settings {
            gateway_id: cfg.gateway.id.clone(),
            database_url: cfg.database.url.clone(),
            storage_path: cfg.storage.path.clone(),
            anchors: TrustAnchors::default(),
            limits: cfg.limits.to_limits(),
            receipt_signer: None,
            ..Settings::default()
        },
    ))
}

pub async fn trace(cfg: Config, args: TraceArgs) -> Result<ExitCode> {
    let gw = log_reader(&cfg).await?;
    let events = match &args.from {
        Some(from) => gw.trace(None, from, &args.message_id).await,
        None => gw.trace_any(&args.message_id).await,
    };
    let events = match events {
        Ok(e) => e,
        Err(e) => {
            eprintln!("{}", e.message());
            return Ok(ExitCode::from(1));
        }
    };
    for e in events {
        if args.json {
            println!("{}", trace_json(&e));
        } else {
            println!(
                "{:>6}  {}  {:<15} {} {}{}{}  {}",
                e.seq,
                format_time(e.at.as_ref()),
                e.kind,
                e.from,
                e.message_id,
                if e.to.is_empty() {
                    String::new()
                } else {
                    format!(" → {}", e.to)
                },
                if e.reason.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", e.reason)
                },
                e.detail
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn trace_json(e: &TraceEvent) -> serde_json::Value {
    serde_json::json!({
        "seq": e.seq,
        "at": format_time(e.at.as_ref()),
        "kind": e.kind,
        "message_id": e.message_id,
        "from": e.from,
        "to": e.to,
        "reason": e.reason,
        "detail": e.detail,
    })
}

/// RFC 3339 in UTC.
pub fn format_time(t: Option<&prost_types::Timestamp>) -> String {
    let Some(t) = t else {
        return String::new();
    };
    let nanos = i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos);
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

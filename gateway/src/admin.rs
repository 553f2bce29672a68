//! Operator commands that work on the database directly: the directory,
//! the transfer log, and the throwaway PKI for trying the gateway out.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use lienthong_core::directory::{self, CertRef, ChangedBy, ClientRole};
use lienthong_core::organ_id::{IdPolicy, OrganId};
use lienthong_core::pipeline::{Gateway, Settings};
use lienthong_core::store::{EventKind, Store};
use lienthong_pki::devpki::{self, KeyType};
use lienthong_pki::receipts::ReceiptSigners;
use lienthong_pki::signing::TrustAnchors;
use lienthong_proto::v1::TraceEvent;

use crate::cli::{cli_user_name, format_time};
use crate::config::Config;

#[derive(Subcommand, Debug)]
pub enum DirectoryCommand {
    /// Import agencies from a CSV file (header: organ_id,name,... ; an
    /// optional signing_cert column names a PEM file to bind), or from the
    /// JSON of `directory export`. When FILE.sig is beside it, the file
    /// must match it (receipts.cert, receipts.trusted_signers).
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
    /// Take a document-signing certificate back from an agency: documents
    /// signed with it are refused (CERTIFICATE_NOT_BOUND) from the next
    /// submission on; the agency's other certificates stay bound.
    UnbindCert {
        organ_id: String,
        #[command(flatten)]
        which: WhichCert,
    },
    /// Bind a client (system) certificate for mutual TLS to an agency: its
    /// software then connects as that agency.
    BindClientCert { organ_id: String, cert: PathBuf },
    /// Take a client certificate back from an agency: calls made with it
    /// are refused from the next call on, and a Receive stream under way
    /// ends within 5 seconds.
    UnbindClientCert {
        organ_id: String,
        #[command(flatten)]
        which: WhichCert,
    },
    /// Bind a client certificate to an operator account (made first with
    /// `lienthong operator add`): it logs in to the dashboard over HTTPS and
    /// calls the gRPC Admin and Reports services, with the account's role.
    BindOperator { name: String, cert: PathBuf },
    /// Take an operator's client certificate back.
    UnbindOperator {
        name: String,
        #[command(flatten)]
        which: WhichCert,
    },
    /// Deactivate an agency: its software can neither send nor receive, and
    /// documents addressed to it are refused (UNKNOWN_RECIPIENT), until
    /// `directory activate`. Nothing is deleted.
    Deactivate { organ_id: String },
    /// Activate again an agency that was deactivated.
    Activate { organ_id: String },
    /// The certificates bound to an agency (or an operator's name): signing
    /// and client certificates, with the key SHA-256 that `unbind-*
    /// --key` takes.
    Certs {
        organ_id: String,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// The directory's changes from the transfer log, newest first: who
    /// changed what, when.
    History {
        /// Only the changes about this agency.
        organ_id: Option<String>,
        /// At most this many lines.
        #[arg(long, default_value_t = 100)]
        limit: u64,
        /// The peer gateways' directory updates refused here (and the
        /// snapshots asked for), with their reasons, instead of the changes.
        #[arg(long)]
        refused: bool,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Let AGENT send documents in the name of PRINCIPAL (e.g. Văn phòng
    /// UBND tỉnh for UBND tỉnh); --revoke ends it.
    Represent {
        agent: String,
        principal: String,
        #[arg(long)]
        revoke: bool,
    },
    /// Export the directory's public columns (code, name, e-mail, address,
    /// telephone, parent, website, active), ordered by code, for the
    /// Ministry's national list or another gateway's `directory import`;
    /// FILE.sig beside it is signed with the receipt key.
    Export(crate::directory_export::ExportArgs),
    /// Block a foreign agency (kept by a peer gateway's signed directory
    /// updates) here, or with --key one of its signing keys: the agency is
    /// deactivated, or the key unbound, and the peer's updates cannot undo
    /// it until `directory unblock`.
    Block {
        organ_id: String,
        /// Only this signing key (SHA-256 of the key, 64 hex digits).
        #[arg(long)]
        key: Option<String>,
        /// Why, for the transfer log.
        #[arg(long)]
        reason: String,
    },
    /// Lift a block: the peer's next snapshot brings the agency or key back
    /// as the peer keeps it.
    Unblock {
        organ_id: String,
        #[arg(long)]
        key: Option<String>,
    },
    /// The peer gateways (`[[peers]]`): the codes each keeps, the last
    /// update applied and seen, the agencies held from it, and the blocks.
    Peers {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
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

/// A bound certificate: its PEM file, or the SHA-256 of its key.
#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub struct WhichCert {
    /// The certificate's PEM file.
    cert: Option<PathBuf>,
    /// Or the SHA-256 of its key (64 hex digits), as `directory certs`
    /// and the transfer log show it.
    #[arg(long)]
    key: Option<String>,
}

impl WhichCert {
    fn resolve(self) -> Result<CertRef> {
        match (self.cert, self.key) {
            (Some(path), _) => Ok(CertRef::Certificate(
                lienthong_pki::signing::load_certificate_pem(&path).map_err(core_err)?,
            )),
            (None, Some(key)) => Ok(CertRef::KeySha256(key)),
            (None, None) => anyhow::bail!("name the certificate: its PEM file, or --key SHA256"),
        }
    }
}

fn cli_user() -> ChangedBy {
    ChangedBy::cli(&cli_user_name())
}

fn core_err(e: lienthong_core::error::Error) -> anyhow::Error {
    anyhow::anyhow!("{}", e.message())
}

#[derive(Args, Debug)]
pub struct DevPkiArgs {
    /// Directory to write into (created if missing).
    pub out_dir: PathBuf,
    #[arg(long, value_enum, default_value_t = KeyTypeArg::EcP256)]
    pub key_type: KeyTypeArg,
    /// Another host name (or IP address) of the gateway's TLS certificate,
    /// besides localhost and 127.0.0.1: the name other machines or
    /// containers reach it by. Repeatable.
    #[arg(long = "server-name")]
    pub server_names: Vec<String>,
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
    /// PEM files of the gateways' receipt certificates to believe instead
    /// of receipts.cert and receipts.trusted_signers.
    #[arg(long)]
    pub signer: Vec<PathBuf>,
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

#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// Only say what is pending; exit 1 when something is.
    #[arg(long)]
    pub check: bool,
    /// Migrate even when the database fails its integrity check before
    /// migrating (`lienthong verify` names what fails).
    #[arg(long)]
    pub force: bool,
}

/// `lienthong migrate`: with migrations pending, the fast integrity check
/// before (refusing a database that fails it, unless `--force`) and after.
pub async fn migrate(cfg: Config, args: MigrateArgs) -> Result<ExitCode> {
    use crate::verify_cmd::{self, MigratedBy};

    let url = &cfg.database.url;
    let found = lienthong_core::store::migrate(url, false)
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.chain()))?;
    let where_ = lienthong_core::store::redact(url);
    if found.pending.is_empty() {
        println!("the schema of {where_} is up to date with this release");
        return Ok(ExitCode::SUCCESS);
    }
    if args.check {
        println!(
            "{} migration(s) pending on {where_}: {}",
            found.pending.len(),
            found.pending.join(", ")
        );
        return Ok(ExitCode::from(1));
    }
    // The same steps as `serve` with database.migrate = "auto".
    let done =
        verify_cmd::migrate_checked(&cfg, &found.pending, args.force, MigratedBy::Command).await?;
    Ok(if done.sound() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn store(cfg: &Config) -> Result<Store> {
    cfg.open_store().await
}

pub async fn directory(cfg: Config, cmd: DirectoryCommand) -> Result<ExitCode> {
    let store = store(&cfg).await?;
    let by = cli_user();
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
            let read = crate::directory_export::read_for_import(&cfg, &file)?;
            if let Some(said) = &read.signature {
                eprintln!("{said}");
            }
            let out = directory::import_csv_data(
                &store,
                &read.csv,
                &file,
                &read.sha256,
                skip_invalid,
                policy,
                &by,
            )
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
            // A row replaces the whole record, `active` included: say so
            // when that took an agency's trust back or gave it again.
            if !out.deactivated.is_empty() {
                println!(
                    "deactivated (their rows say active = false): {}",
                    out.deactivated.join(", ")
                );
            }
            if !out.activated.is_empty() {
                println!(
                    "activated again (their rows say active, or leave it empty): {}",
                    out.activated.join(", ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        DirectoryCommand::BindCert { organ_id, cert } => {
            let der = lienthong_pki::signing::load_certificate_pem(&cert).map_err(core_err)?;
            let row = directory::bind_signing_cert(&store, &organ_id, der, &by)
                .await
                .map_err(core_err)?;
            println!(
                "bound {} (key sha256 {}) to {}",
                row.subject, row.spki_sha256, row.organ_id
            );
            Ok(ExitCode::SUCCESS)
        }
        DirectoryCommand::UnbindCert { organ_id, which } => {
            let row = directory::unbind_signing_cert(&store, &organ_id, &which.resolve()?, &by)
                .await
                .map_err(core_err)?;
            println!(
                "unbound the signing certificate {} (key sha256 {}) from {}: documents signed with it are refused from now on",
                row.subject, row.spki_sha256, row.organ_id
            );
            Ok(ExitCode::SUCCESS)
        }
        DirectoryCommand::BindClientCert { organ_id, cert } => {
            bind_client(&store, &organ_id, &cert, ClientRole::Agency, &by).await
        }
        DirectoryCommand::BindOperator { name, cert } => {
            bind_client(&store, &name, &cert, ClientRole::Operator, &by).await
        }
        DirectoryCommand::UnbindClientCert { organ_id, which } => {
            unbind_client(&store, &organ_id, which, ClientRole::Agency, &by).await
        }
        DirectoryCommand::UnbindOperator { name, which } => {
            unbind_client(&store, &name, which, ClientRole::Operator, &by).await
        }
        DirectoryCommand::Block {
            organ_id,
            key,
            reason,
        } => {
            lienthong_core::national_directory::block(
                &store,
                &organ_id,
                key.as_deref(),
                &reason,
                &by,
            )
            .await
            .map_err(core_err)?;
            match key {
                None => println!(
                    "{organ_id} is blocked here: deactivated, whatever its gateway announces, until `lienthong directory unblock {organ_id}`"
                ),
                Some(k) => println!(
                    "the signing key {k} of {organ_id} is blocked here: documents signed with it are refused (CERTIFICATE_NOT_BOUND) until `lienthong directory unblock {organ_id} --key {k}`"
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        DirectoryCommand::Unblock { organ_id, key } => {
            lienthong_core::national_directory::unblock(&store, &organ_id, key.as_deref(), &by)
                .await
                .map_err(core_err)?;
            println!(
                "the block is lifted; the peer's next snapshot (asked within 15 s while the gateway runs) restores what it announces"
            );
            Ok(ExitCode::SUCCESS)
        }
        DirectoryCommand::Peers { json } => peers(&cfg, &store, json).await,
        DirectoryCommand::Deactivate { organ_id } => {
            let changed = directory::set_active(&store, &organ_id, false, &by)
                .await
                .map_err(core_err)?;
            if changed {
                println!(
                    "{organ_id} is deactivated: its software can neither send nor receive, and documents addressed to it are refused; `lienthong directory activate {organ_id}` undoes it"
                );
            } else {
                println!("{organ_id} was inactive already; nothing changed");
            }
            Ok(ExitCode::SUCCESS)
        }
        DirectoryCommand::Activate { organ_id } => {
            let changed = directory::set_active(&store, &organ_id, true, &by)
                .await
                .map_err(core_err)?;
            if changed {
                println!("{organ_id} is active again: it may send and receive");
            } else {
                println!("{organ_id} was active already; nothing changed");
            }
            Ok(ExitCode::SUCCESS)
        }
        DirectoryCommand::Certs { organ_id, json } => certs(&store, &organ_id, json).await,
        DirectoryCommand::History {
            organ_id,
            limit,
            refused,
            json,
        } => {
            let kind = if refused {
                EventKind::DirectoryRefused
            } else {
                EventKind::DirectoryChanged
            };
            let events = store
                .events_of_kind(kind, organ_id.as_deref(), limit)
                .await
                .map_err(|e| anyhow::anyhow!("{}", e.chain()))?;
            for e in events {
                let at = format_time(Some(&lienthong_core::timestamp(e.at)));
                let actor = e.actor.unwrap_or_default();
                if json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "seq": e.id, "at": at, "organ_id": e.sender, "actor": actor,
                            "transport": e.transport, "reason": e.reason, "detail": e.detail,
                        })
                    );
                } else {
                    let reason = e.reason.map(|r| format!("{r}: ")).unwrap_or_default();
                    println!(
                        "{:>6}  {at}  {:<15} {actor} ({}): {reason}{}",
                        e.id, e.sender, e.transport, e.detail
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        DirectoryCommand::Represent {
            agent,
            principal,
            revoke,
        } => {
            let changed = directory::represent(&store, &agent, &principal, revoke, &by)
                .await
                .map_err(core_err)?;
            let said = match (revoke, changed) {
                (false, _) => format!("{agent} may now send in the name of {principal}"),
                (true, true) => format!("{agent} no longer sends in the name of {principal}"),
                (true, false) => format!("{agent} did not send in the name of {principal}"),
            };
            println!("{said}");
            Ok(ExitCode::SUCCESS)
        }
        DirectoryCommand::Export(args) => crate::directory_export::export(&cfg, &store, args).await,
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

async fn bind_client(
    store: &Store,
    name: &str,
    cert: &std::path::Path,
    role: ClientRole,
    by: &ChangedBy,
) -> Result<ExitCode> {
    let der = lienthong_pki::signing::load_certificate_pem(cert).map_err(core_err)?;
    let row = directory::bind_client_cert(store, name, der, role, by)
        .await
        .map_err(core_err)?;
    println!(
        "bound the client certificate {} (key sha256 {}) to {}",
        row.subject,
        row.spki_sha256,
        role.whom(&row.organ_id)
    );
    Ok(ExitCode::SUCCESS)
}

async fn unbind_client(
    store: &Store,
    name: &str,
    which: WhichCert,
    role: ClientRole,
    by: &ChangedBy,
) -> Result<ExitCode> {
    let row = directory::unbind_client_cert(store, name, &which.resolve()?, role, by)
        .await
        .map_err(core_err)?;
    println!(
        "unbound the client certificate {} (key sha256 {}) from {}: calls made with it are refused from now on",
        row.subject,
        row.spki_sha256,
        role.whom(&row.organ_id)
    );
    Ok(ExitCode::SUCCESS)
}

/// `directory certs`: what is bound to an agency or an operator's name.
async fn certs(store: &Store, name: &str, json: bool) -> Result<ExitCode> {
    let err = |e: lienthong_core::error::Error| anyhow::anyhow!("{}", e.chain());
    let signing = store.signing_certs_of(name).await.map_err(err)?;
    let clients = store.client_certs_of(name).await.map_err(err)?;
    let rows = signing
        .iter()
        .map(|c| {
            (
                "signing",
                c.spki_sha256.as_str(),
                c.subject.as_str(),
                c.not_after,
            )
        })
        .chain(clients.iter().map(|c| {
            let kind = if c.role == "operator" {
                "operator"
            } else {
                "client"
            };
            (
                kind,
                c.spki_sha256.as_str(),
                c.subject.as_str(),
                c.not_after,
            )
        }));
    let mut any = false;
    for (kind, key, subject, not_after) in rows {
        any = true;
        let until = format_time(Some(&prost_types::Timestamp {
            seconds: not_after,
            nanos: 0,
        }));
        if json {
            println!(
                "{}",
                serde_json::json!({"kind": kind, "key_sha256": key, "subject": subject, "not_after": until})
            );
        } else {
            println!("{kind:<8} {key}  {subject}  (until {until})");
        }
    }
    if !any && !json {
        println!("no certificate is bound to {name}");
    }
    Ok(ExitCode::SUCCESS)
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
    devpki::write_dev_pki(
        &out,
        &agencies,
        kt,
        gateway_agency.as_ref(),
        &args.server_names,
    )
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
    let signers = if args.signer.is_empty() {
        cfg.receipt_signers()?
    } else {
        ReceiptSigners::from_pem_files(&args.signer).map_err(core_err)?
    };
    let base = serde_json::json!({
        "message_id": receipt.message_id,
        "from": receipt.from,
        "accepted_at": format_time(receipt.accepted_at.as_ref()),
        "envelope_sha256": hex::encode(&receipt.envelope_sha256),
        "gateway": receipt.gateway,
    });
    match lienthong_pki::receipts::verify_receipt(&receipt, &anchors, &signers) {
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
            let certs = lienthong_core::pipeline::ReceiptCerts(cfg.receipt_signers()?);
            let v = store
                .verify_log_with(certs.as_verifier())
                .await
                .map_err(|e| anyhow::anyhow!("{}", e.chain()))?;
            let unchained = if v.unchained > 0 {
                format!(", {} written before the chain existed", v.unchained)
            } else {
                String::new()
            };
            let broken = v.chains.iter().filter(|c| c.first_broken.is_some()).count();
            if v.intact() {
                println!(
                    "the transfer log is intact: {} chained event(s) in {} chain(s){unchained}",
                    v.checked(),
                    v.chains.len()
                );
            } else if broken > 0 {
                println!(
                    "the transfer log is BROKEN in {broken} of {} chain(s){unchained}",
                    v.chains.len()
                );
            } else {
                println!(
                    "the transfer log is BROKEN: each of its {} chain(s) verifies alone, but its checkpoints found {} problem(s){unchained}",
                    v.chains.len(),
                    v.findings.len()
                );
            }
            // One line per chain, each with its head: keep them to compare
            // with the next run (a cut tail with its head rewritten to match
            // shows only against an earlier head).
            for c in &v.chains {
                let head = match &c.head {
                    Some((seq, hash)) => format!("head at event {seq} ({hash})"),
                    None => "no head row".to_owned(),
                };
                match &c.first_broken {
                    None => println!(
                        "  chain {}: intact, {} event(s), {head}",
                        c.chain, c.checked
                    ),
                    Some((seq, what)) => println!(
                        "  chain {}: BROKEN at event {seq}: {what} ({} event(s) before it are intact; {head})",
                        c.chain, c.checked
                    ),
                }
            }
            let cp = &v.checkpoints;
            if cp.read == 0 {
                println!("  checkpoints: none");
            } else {
                let mut line = format!(
                    "  checkpoints: {} read, {} with a valid signature",
                    cp.read, cp.verified
                );
                if cp.unsigned > 0 {
                    line.push_str(&format!(
                        ", {} unsigned (written without receipts.key: they prove nothing against someone who can write to the database)",
                        cp.unsigned
                    ));
                }
                if cp.unchecked > 0 {
                    line.push_str(&format!(
                        ", {} signed but not checked (no receipts.cert or receipts.trusted_signers configured)",
                        cp.unchecked
                    ));
                }
                println!("{line}");
            }
            for f in &v.findings {
                println!("  BROKEN: {}", f.what);
            }
            Ok(if v.intact() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

/// `lienthong document-status`: where a document stands with each recipient
/// (the operator's view of `Exchange.DocumentStatus`, from the database).
pub async fn document_status(cfg: Config, args: DocumentStatusArgs) -> Result<ExitCode> {
    let gw = log_reader(&cfg).await?;
    let operator = lienthong_core::pipeline::Caller::operator(
        "operator",
        lienthong_core::pipeline::Transport::Cli,
    );
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
            writer: cfg.writer()?,
            storage_path: cfg.storage.path.clone(),
            anchors: TrustAnchors::default(),
            limits: cfg.limits.to_limits(),
            receipt_signer: None,
            receipt_certs: Default::default(),
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

/// `directory peers`.
async fn peers(cfg: &Config, store: &Store, json: bool) -> Result<ExitCode> {
    let progress = store.peers_progress().await.map_err(core_err)?;
    let agencies = store.agencies().await.map_err(core_err)?;
    let blocks = store.directory_blocks().await.map_err(core_err)?;
    if cfg.peers.is_empty() && !json {
        println!("no [[peers]] are configured: this gateway takes no directory updates");
    }
    for p in &cfg.peers {
        let g = progress.iter().find(|g| g.peer == p.name);
        let held: Vec<&str> = agencies
            .iter()
            .filter(|a| a.source.as_deref() == Some(p.name.as_str()))
            .map(|a| a.organ_id.as_str())
            .collect();
        let blocked: Vec<String> = blocks
            .iter()
            .filter(|b| held.contains(&b.organ_id.as_str()))
            .map(|b| match &b.spki_sha256 {
                None => b.organ_id.clone(),
                Some(k) => format!("{} key {k}", b.organ_id),
            })
            .collect();
        let applied = g.map_or(0, |g| g.sequence);
        let seen = g.map_or(0, |g| g.seen_sequence);
        if json {
            println!(
                "{}",
                serde_json::json!({
                    "name": p.name,
                    "codes": p.codes,
                    "applied_sequence": applied,
                    "seen_sequence": seen,
                    "lag": seen.saturating_sub(applied),
                    "applied_at": g.map(|g| g.applied_at),
                    "agencies": held.len(),
                    "blocked": blocked,
                })
            );
        } else {
            println!(
                "{}  codes {}  update {applied} applied{}  {} agencies{}",
                p.name,
                p.codes.join(", "),
                if seen > applied {
                    format!(" ({} behind: {seen} seen)", seen - applied)
                } else {
                    String::new()
                },
                held.len(),
                if blocked.is_empty() {
                    String::new()
                } else {
                    format!("  blocked here: {}", blocked.join(", "))
                }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

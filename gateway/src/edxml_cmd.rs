//! `lienthong edxml …`: look inside an edXML package, convert it, and send
//! one to a running gateway as agency software that speaks edXML would.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Subcommand, ValueEnum};
use lienthong_edxml::{DecodeOptions, DirSink, DirSource, EncodeOptions};
use lienthong_pki::signing::{self, SigningKey};
use lienthong_proto::v1::{self as pb, Envelope, SignedEnvelope};
use prost::Message as _;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::client::{ConnectArgs, connect, describe_status, with_identity};
use crate::config::Config;

#[derive(Subcommand, Debug)]
pub enum EdxmlCommand {
    /// Print what a package holds as one JSON object (kind, from, to,
    /// document_id, code, dates, subject, business_type, status_code,
    /// attachments with their SHA-256, trace, and the problems a strict
    /// check finds). Exit 0 when it parsed, 2 when it could not.
    Inspect { file: PathBuf },
    /// Convert between an edXML package and an envelope: `--to envelope`
    /// writes OUT (a SignedEnvelope, signed with --key/--cert if given) and
    /// the attachments as OUT.attachments/attachment-N; `--to edxml` reads
    /// such a pair back into a package.
    Convert {
        file: PathBuf,
        #[arg(long, value_enum)]
        to: ConvertTo,
        #[arg(long)]
        out: PathBuf,
        /// With --to envelope: sign with this PKCS#8 key…
        #[arg(long)]
        key: Option<PathBuf>,
        /// …and this certificate chain.
        #[arg(long)]
        cert: Option<PathBuf>,
    },
    /// Send a package to a running gateway (Exchange.SendEdxml) as `--as`.
    Send {
        file: PathBuf,
        #[command(flatten)]
        connect: ConnectArgs,
        /// The sending agency (must be the package's From/OrganId).
        #[arg(long = "as")]
        as_agency: String,
        /// Default: derived from the package's SHA-256.
        #[arg(long)]
        message_id: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ConvertTo {
    Envelope,
    Edxml,
}

pub async fn run(cfg: Config, cmd: EdxmlCommand) -> Result<ExitCode> {
    match cmd {
        EdxmlCommand::Inspect { file } => match lienthong_edxml::inspect_file(&file) {
            Ok(v) => {
                println!("{v}");
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{}: {}", file.display(), e.message());
                Ok(ExitCode::from(2))
            }
        },
        EdxmlCommand::Convert {
            file,
            to,
            out,
            key,
            cert,
        } => convert(file, to, out, key, cert),
        EdxmlCommand::Send {
            file,
            connect: c,
            as_agency,
            message_id,
        } => send(cfg, file, c, as_agency, message_id).await,
    }
}

fn attachments_dir(out: &std::path::Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".attachments");
    PathBuf::from(s)
}

fn convert(
    file: PathBuf,
    to: ConvertTo,
    out: PathBuf,
    key: Option<PathBuf>,
    cert: Option<PathBuf>,
) -> Result<ExitCode> {
    let err = |e: lienthong_core::error::Error| anyhow::anyhow!("{}", e.message());
    match to {
        ConvertTo::Envelope => {
            let dir = attachments_dir(&out);
            std::fs::create_dir_all(&dir)?;
            let f = std::fs::File::open(&file)
                .with_context(|| format!("cannot open {}", file.display()))?;
            let mut sink = DirSink::new(&dir);
            let pkg = lienthong_edxml::decode(
                std::io::BufReader::new(f),
                &mut sink,
                &DecodeOptions::default(),
            )
            .map_err(err)?;
            let signed = match (key, cert) {
                (Some(k), Some(c)) => {
                    let key = SigningKey::from_pkcs8_pem_file(&k, None).map_err(err)?;
                    let chain = signing::load_certificates_pem(&c).map_err(err)?;
                    signing::sign_envelope(&pkg.envelope, &key, &chain).map_err(err)?
                }
                (None, None) => SignedEnvelope {
                    payload: pkg.envelope.encode_to_vec().into(),
                    payload_type: pb::ENVELOPE_PAYLOAD_TYPE.to_owned(),
                    signatures: Vec::new(),
                },
                _ => anyhow::bail!("--key and --cert go together"),
            };
            std::fs::write(&out, signed.encode_to_vec())?;
            println!(
                "wrote {} ({}, {} attachment(s) in {})",
                out.display(),
                if signed.signatures.is_empty() {
                    "unsigned"
                } else {
                    "signed"
                },
                pkg.attachments.len(),
                dir.display()
            );
        }
        ConvertTo::Edxml => {
            let bytes = std::fs::read(&file)?;
            let signed = SignedEnvelope::decode(bytes.as_slice())
                .with_context(|| format!("{} is not a SignedEnvelope", file.display()))?;
            let env = Envelope::decode(signed.payload.clone())
                .context("the payload is not an Envelope")?;
            let mut src = DirSource(attachments_dir(&file));
            let w = std::io::BufWriter::new(std::fs::File::create(&out)?);
            lienthong_edxml::encode(&env, &mut src, w, &EncodeOptions::default()).map_err(err)?;
            println!("wrote {}", out.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn send(
    cfg: Config,
    file: PathBuf,
    c: ConnectArgs,
    as_agency: String,
    message_id: Option<String>,
) -> Result<ExitCode> {
    let mut client = connect(&cfg, &c).await?;
    let mut f = tokio::fs::File::open(&file)
        .await
        .with_context(|| format!("cannot open {}", file.display()))?;
    let (tx, rx) = mpsc::channel::<pb::EdxmlChunk>(4);
    let feeder = tokio::spawn(async move {
        let mut first = true;
        loop {
            let mut buf = vec![0u8; 256 * 1024];
            let n = f.read(&mut buf).await?;
            if n == 0 && !first {
                break;
            }
            buf.truncate(n);
            let chunk = pb::EdxmlChunk {
                data: buf.into(),
                message_id: if first {
                    message_id.clone().unwrap_or_default()
                } else {
                    String::new()
                },
            };
            first = false;
            if tx.send(chunk).await.is_err() || n == 0 {
                break;
            }
        }
        Ok::<(), std::io::Error>(())
    });
    let req = with_identity(ReceiverStream::new(rx), &as_agency)?;
    let result = client.send_edxml(req).await;
    feeder.await??;
    match result {
        Ok(r) => {
            let r = r.into_inner();
            println!(
                "{}",
                serde_json::json!({
                    "message_id": r.message_id,
                    "from": r.from,
                    "duplicate": r.duplicate,
                    "recipients": r.recipients.iter().map(|x| x.organ_id.clone()).collect::<Vec<_>>(),
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

//! `lienthong pdf verify`: the legal signatures inside a PDF (PAdES), judged
//! as the gateway judges every PDF attachment it carries.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use lienthong_core::blobs::BlobStore;
use lienthong_pades as pades;
use lienthong_pki::signing::TrustAnchors;

use crate::config::Config;

#[derive(Subcommand, Debug)]
pub enum PdfCommand {
    /// Check every signature of a PDF (or of the one PDF in a ZIP archive,
    /// as edXML producers send them): byte ranges, digest, CMS signature,
    /// timestamp, chain to the trust anchors and revocation — at the time a
    /// verified timestamp proves, else now (or --at) — and what changed
    /// after it. Prints one JSON object; exit 0 whatever the verdict, 2
    /// when the file is not a PDF it can read.
    Verify {
        file: PathBuf,
        /// Trust these CA certificates (PEM) instead of trust.anchors.
        #[arg(long)]
        anchors: Vec<PathBuf>,
        /// Revocation lists (DER or PEM) instead of trust.crls.
        #[arg(long)]
        crl: Vec<PathBuf>,
        /// Judge signatures without a trusted timestamp at this time
        /// (RFC 3339, e.g. the time the gateway received the document, as
        /// `lienthong trace` shows it) instead of now.
        #[arg(long, value_parser = parse_time)]
        at: Option<time::OffsetDateTime>,
    },
}

fn parse_time(s: &str) -> Result<time::OffsetDateTime, String> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("{s:?} is not an RFC 3339 time such as 2026-03-01T08:00:00Z ({e})"))
}

pub fn run(cfg: Config, cmd: PdfCommand) -> Result<ExitCode> {
    match cmd {
        PdfCommand::Verify {
            file,
            anchors,
            crl,
            at,
        } => {
            let trust = if anchors.is_empty() {
                let mut t = cfg.anchors()?;
                if !crl.is_empty() {
                    t = t.with_crl_files(&crl).context("loading --crl")?;
                }
                t
            } else {
                let crls = if crl.is_empty() {
                    cfg.trust.crls.clone()
                } else {
                    crl
                };
                TrustAnchors::from_pem_files(&anchors)
                    .context("loading --anchors")?
                    .with_policy(cfg.trust.policy())
                    .with_crl_files(&crls)
                    .context("loading the revocation lists")?
            };
            let moment = match at {
                Some(t) => {
                    let secs =
                        u64::try_from(t.unix_timestamp()).context("--at must be after 1970")?;
                    pades::Moment::Given(pades::Time::since_unix_epoch(
                        std::time::Duration::from_secs(secs),
                    ))
                }
                None => pades::Moment::Now(pades::Time::now()),
            };
            // A zipped PDF is unpacked where the gateway unpacks them: the
            // store's temporary area, sealed with the storage keys.
            let scratch =
                BlobStore::unopened_with(&cfg.storage.path, crate::storage::encryption_keys(&cfg)?);
            let opts = pades::Options {
                moment,
                limits: cfg.limits.pdf_limits(),
                scratch: &lienthong_core::blobs::BlobScratch(&scratch),
            };
            let src = match pades::FileSource::open(&file) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("lienthong: cannot open {}: {e}", file.display());
                    return Ok(ExitCode::from(2));
                }
            };
            match pades::verify_attachment(&src, &trust, &opts) {
                Ok(report) => {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                    Ok(ExitCode::SUCCESS)
                }
                Err(pades::AttachmentError::Unreadable(e)) => {
                    eprintln!(
                        "lienthong: {} is not a PDF that can be read: {e}",
                        file.display()
                    );
                    Ok(ExitCode::from(2))
                }
                Err(pades::AttachmentError::Storage(e)) => Err(anyhow::anyhow!(
                    "{e}; storage.path is {}",
                    cfg.storage.path.display()
                )),
            }
        }
    }
}

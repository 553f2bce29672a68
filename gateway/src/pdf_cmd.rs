//! `lienthong pdf verify`: the legal signatures inside a PDF (PAdES), judged
//! as the gateway judges every PDF attachment it carries.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use lienthong_core::pades;
use lienthong_core::signing::TrustAnchors;

use crate::config::Config;

#[derive(Subcommand, Debug)]
pub enum PdfCommand {
    /// Check every signature of a PDF (or of the one PDF in a ZIP archive,
    /// as edXML producers send them): byte ranges, digest, CMS signature,
    /// timestamp, chain to the trust anchors at the signing time,
    /// revocation, and what changed after it. Prints one JSON object; exit
    /// 0 whatever the verdict, 2 when the file is not a PDF it can read.
    Verify {
        file: PathBuf,
        /// Trust these CA certificates (PEM) instead of trust.anchors.
        #[arg(long)]
        anchors: Vec<PathBuf>,
        /// Revocation lists (DER or PEM) instead of trust.crls.
        #[arg(long)]
        crl: Vec<PathBuf>,
    },
}

pub fn run(cfg: Config, cmd: PdfCommand) -> Result<ExitCode> {
    match cmd {
        PdfCommand::Verify { file, anchors, crl } => {
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
            let src = match pades::FileSource::open(&file) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("lienthong: cannot open {}: {e}", file.display());
                    return Ok(ExitCode::from(2));
                }
            };
            match pades::verify_attachment(&src, &trust, pades::Time::now()) {
                Ok(report) => {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!(
                        "lienthong: {} is not a PDF that can be read: {e}",
                        file.display()
                    );
                    Ok(ExitCode::from(2))
                }
            }
        }
    }
}

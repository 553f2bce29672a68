//! `lienthong report`: the report of a period and a part of the directory,
//! read from the database the configuration names, as CSV, JSON or XLSX.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use lienthong_core::now_micros;
use lienthong_reports::{self as reports, Format, Lang, Period, Scope};

use crate::config::Config;

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// A day (2026-11-24), month (2026-11), quarter (2026-Q4), year (2026)
    /// or range of days (2026-11-01..2026-11-15), in Vietnam time.
    #[arg(long)]
    pub period: String,
    /// An agency and every agency under it (000.00.00.H35), or a pattern
    /// (#.H35 for a whole province). Default: the whole directory.
    #[arg(long, conflicts_with = "agency")]
    pub under: Option<String>,
    /// One agency only.
    #[arg(long)]
    pub agency: Option<String>,
    /// csv, json or xlsx. Default: from --out's extension, else csv.
    #[arg(long)]
    pub format: Option<String>,
    /// Column headers: vi (Vietnamese) or en (English).
    #[arg(long, default_value = "vi")]
    pub lang: String,
    /// Write to this file instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub async fn run(cfg: Config, args: ReportArgs) -> Result<ExitCode> {
    let core = |e: lienthong_core::error::Error| anyhow::anyhow!("{}", e.message());
    let period = Period::parse(&args.period).map_err(core)?;
    let scope = match (&args.agency, &args.under) {
        (Some(a), _) => Scope::agency(a).map_err(core)?,
        (None, Some(u)) => Scope::parse(u).map_err(core)?,
        (None, None) => Scope::All,
    };
    let format = match (&args.format, &args.out) {
        (Some(f), _) => Format::parse(f).map_err(core)?,
        (None, Some(out)) => match out.extension().and_then(|e| e.to_str()) {
            Some(ext) => Format::parse(ext).unwrap_or(Format::Csv),
            None => Format::Csv,
        },
        (None, None) => Format::Csv,
    };
    let lang = Lang::parse(&args.lang).map_err(core)?;
    if format == Format::Xlsx && args.out.is_none() && std::io::stdout().is_terminal() {
        anyhow::bail!(
            "an XLSX report is a binary file: give --out FILE (or redirect standard output)"
        );
    }
    let settings = cfg.report_settings()?;
    let store = cfg.open_store().await?;
    // Documents accepted before their columns were filled (by an older
    // version) are indexed first: the report itself only reads.
    reports::index_documents(&store)
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.chain()))?;
    let report = reports::summary_in(&store, period, &scope, &settings, now_micros())
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.chain()))?;
    let bytes = match format {
        Format::Csv => reports::to_csv(&report, lang),
        Format::Json => reports::to_json(&report),
        Format::Xlsx => reports::to_xlsx(&report, lang),
    }
    .map_err(|e| anyhow::anyhow!("{}", e.chain()))?;
    match &args.out {
        Some(path) => {
            std::fs::write(path, &bytes)
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!(
                "report {} for {} agencies written to {}",
                report.period,
                report.agencies.len(),
                path.display()
            );
        }
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(&bytes)
                .and_then(|_| out.flush())
                .context("cannot write to standard output")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

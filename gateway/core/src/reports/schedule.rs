//! The monthly report: on the first day of each month (Vietnam time) the
//! previous month's report is written to `reports.dir` as CSV and XLSX;
//! at start, a missing report for last month is written at once.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::render::{Format, period_file_name, to_csv, to_xlsx};
use super::{Lang, Period, ReportSettings, Scope, summary_in};
use crate::error::{Error, Reason, Result};
use crate::pipeline::Gateway;
use crate::store::{Store, now_micros};

/// What the monthly task writes, and where.
#[derive(Debug, Clone)]
pub struct MonthlyReports {
    pub dir: PathBuf,
    pub scope: Scope,
    pub settings: ReportSettings,
    pub lang: Lang,
}

fn paths(dir: &Path, period: Period) -> Vec<(Format, PathBuf)> {
    [Format::Csv, Format::Xlsx]
        .into_iter()
        .map(|f| (f, dir.join(period_file_name(&period.to_string(), f))))
        .collect()
}

/// Writes the report of `period` (CSV and XLSX) into `cfg.dir`, each file
/// written whole under a temporary name and then renamed into place.
/// Returns the paths written.
pub async fn write_monthly_report(
    store: &Store,
    cfg: &MonthlyReports,
    period: Period,
) -> Result<Vec<PathBuf>> {
    let io = |what: String| {
        move |e: std::io::Error| Error::new(Reason::Unavailable, what).with_source(e)
    };
    tokio::fs::create_dir_all(&cfg.dir)
        .await
        .map_err(io(format!(
            "cannot create reports.dir {}",
            cfg.dir.display()
        )))?;
    let report = summary_in(store, period, &cfg.scope, &cfg.settings, now_micros()).await?;
    let mut written = Vec::new();
    for (format, path) in paths(&cfg.dir, period) {
        let bytes = match format {
            Format::Xlsx => to_xlsx(&report, cfg.lang)?,
            _ => to_csv(&report, cfg.lang)?,
        };
        let tmp = path.with_extension(format!("{}.part", format.extension()));
        tokio::fs::write(&tmp, &bytes)
            .await
            .map_err(io(format!("cannot write {}", tmp.display())))?;
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(io(format!("cannot rename {} into place", tmp.display())))?;
        written.push(path);
    }
    Ok(written)
}

/// Unix microseconds of the next first-of-month midnight (Vietnam time).
fn next_month_start(now: i64) -> i64 {
    let (_, end) = Period::month_of(now).bounds();
    end
}

/// Runs until `shutdown`: writes last month's report when it is missing,
/// then sleeps until the next month begins (waking at least hourly, so a
/// clock change or a failed attempt is caught up). `reports.send_to` is not
/// acted on yet (sending the report as a document comes later).
pub async fn run_monthly_reports(
    gw: Gateway,
    cfg: MonthlyReports,
    shutdown: impl Future<Output = ()> + Send,
) {
    tokio::pin!(shutdown);
    loop {
        let now = now_micros();
        let period = Period::previous_month(now);
        let missing = paths(&cfg.dir, period).iter().any(|(_, p)| !p.exists());
        if missing {
            match write_monthly_report(gw.store(), &cfg, period).await {
                Ok(files) => {
                    for f in files {
                        tracing::info!(period = %period, file = %f.display(), "monthly report written");
                    }
                }
                Err(e) => {
                    tracing::error!(period = %period, error = %e.chain(), "the monthly report could not be written; trying again within the hour");
                }
            }
        }
        let wake = (next_month_start(now) + 60_000_000).min(now + 3_600_000_000);
        let sleep = Duration::from_micros((wake - now_micros()).max(1_000_000) as u64);
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}

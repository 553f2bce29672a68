//! `lienthong admin maintenance`: announce, list and cancel
//! maintenance windows. Like the directory commands it works on the
//! database directly; a running gateway notices the change within a few
//! seconds (`maintenance::POLL_INTERVAL`) and tells the agencies' `Receive`
//! streams.

use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{ArgGroup, Args, Subcommand};
use lienthong_core::calendar::VIETNAM;
use lienthong_core::maintenance::{self, Window};
use lienthong_core::now_micros;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime};

use crate::config::Config;

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Announce a maintenance window to every agency (on its Receive
    /// stream) and on the dashboard; list or cancel the announced ones.
    Maintenance(MaintenanceArgs),
}

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("action").args(["from", "list", "cancel"]).required(true)))]
pub struct MaintenanceArgs {
    /// When the maintenance begins: RFC 3339 (2026-11-30T22:00:00+07:00);
    /// without an offset (2026-11-30T22:00) it is Vietnam time.
    #[arg(long, requires_all = ["to", "message"])]
    pub from: Option<String>,
    /// When it is over (same forms as --from); must be after --from and in
    /// the future.
    #[arg(long, requires = "from")]
    pub to: Option<String>,
    /// What the agencies are told (at most 500 characters).
    #[arg(long, requires = "from")]
    pub message: Option<String>,
    /// No interruption is expected (a rolling upgrade, one replica at a
    /// time): agencies are told they need not hold back sends. Without it
    /// the gateway may be unavailable during the window.
    #[arg(long, requires = "from")]
    pub no_interruption: bool,
    /// List the windows current or to come, one JSON object per line.
    #[arg(long)]
    pub list: bool,
    /// Cancel the window with this id (see --list).
    #[arg(long, value_name = "ID")]
    pub cancel: Option<i64>,
}

pub async fn run(cfg: Config, cmd: AdminCommand) -> Result<ExitCode> {
    match cmd {
        AdminCommand::Maintenance(args) => maintenance(cfg, args).await,
    }
}

async fn maintenance(cfg: Config, args: MaintenanceArgs) -> Result<ExitCode> {
    // Check the times before touching the database.
    let times = match (&args.from, &args.to) {
        (Some(from), Some(to)) => Some((parse_time("--from", from)?, parse_time("--to", to)?)),
        _ => None,
    };
    let store = cfg.open_store().await?;
    let core = |e: lienthong_core::error::Error| anyhow::anyhow!("{}", e.message());
    if let Some(id) = args.cancel {
        let w = maintenance::cancel(&store, id).await.map_err(core)?;
        print_window(&w)?;
    } else if args.list {
        let windows = maintenance::current(&store).await.map_err(core)?;
        if windows.is_empty() {
            eprintln!("no maintenance window is announced");
        }
        for w in &windows {
            print_window(w)?;
        }
    } else if let Some((from, to)) = times {
        let message = args.message.as_deref().unwrap_or_default();
        let w = maintenance::announce(&store, from, to, message, !args.no_interruption)
            .await
            .map_err(core)?;
        print_window(&w)?;
    } else {
        bail!("give --from, --to and --message to announce a window, --list, or --cancel ID");
    }
    Ok(ExitCode::SUCCESS)
}

fn print_window(w: &Window) -> Result<()> {
    println!(
        "{}",
        serde_json::to_string(&maintenance::to_json(w, now_micros()))?
    );
    Ok(())
}

/// RFC 3339, or a date and time without an offset taken as Vietnam time;
/// Unix microseconds.
fn parse_time(flag: &str, s: &str) -> Result<i64> {
    let s = s.trim();
    let t = OffsetDateTime::parse(s, &Rfc3339).ok().or_else(|| {
        let normal = s.replacen(' ', "T", 1);
        let with_seconds = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
        let minutes = format_description!("[year]-[month]-[day]T[hour]:[minute]");
        PrimitiveDateTime::parse(&normal, with_seconds)
            .or_else(|_| PrimitiveDateTime::parse(&normal, minutes))
            .ok()
            .map(|p| p.assume_offset(VIETNAM))
    });
    match t {
        Some(t) => Ok((t.unix_timestamp_nanos() / 1000) as i64),
        None => bail!(
            "{flag} {s:?} is not a time; write it as RFC 3339, e.g. 2026-11-30T22:00:00+07:00 (or 2026-11-30T22:00 for Vietnam time)"
        ),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn times_are_rfc3339_or_vietnam_local() {
        let utc = parse_time("--from", "2026-11-30T15:00:00Z").unwrap();
        assert_eq!(utc, 1_796_050_800 * 1_000_000);
        assert_eq!(
            parse_time("--from", "2026-11-30T22:00:00+07:00").unwrap(),
            utc
        );
        assert_eq!(parse_time("--from", "2026-11-30T22:00").unwrap(), utc);
        assert_eq!(parse_time("--from", "2026-11-30 22:00:00").unwrap(), utc);
        let e = parse_time("--to", "tomorrow").unwrap_err().to_string();
        assert!(e.contains("--to \"tomorrow\" is not a time"), "{e}");
    }
}

//! `lienthong verify`: the database's integrity check, and the checks
//! `lienthong migrate` runs around a migration. Each check leaves a line in
//! the transfer log (when the schema is current) and a JSON report in
//! `reports.dir`.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use lienthong_core::integrity::{self, Depth, IntegrityReport, Progress};
use lienthong_core::store::{EventKind, NewEvent, Store};
use serde_json::json;

use crate::cli::cli_user_name;
use crate::config::Config;

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Read every attachment through and check its size and SHA-256 (the
    /// fast default only checks that each one is there).
    #[arg(long)]
    pub full: bool,
    /// Print the report as one JSON object instead of sentences.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(cfg: Config, args: VerifyArgs) -> Result<ExitCode> {
    // A check never changes the schema, whatever database.migrate says: a
    // database behind this release is checked by `lienthong migrate`,
    // before and after it migrates.
    let store = lienthong_core::store::Store::open(
        &cfg.database.url,
        cfg.writer()?,
        lienthong_core::store::Migrations::Require,
    )
    .await
    .map_err(|e| anyhow::anyhow!("{}", e.chain()))?;
    let depth = if args.full { Depth::Full } else { Depth::Fast };
    let report = check(&cfg, &store, depth).await?;
    let file = write_report(&cfg, &report, "verify");
    if args.json {
        let mut v = report_json(&cfg, &report, "verify");
        if let Ok(path) = &file {
            v["report_file"] = json!(path.display().to_string());
        }
        println!("{v}");
    } else {
        print_report(&report, "");
    }
    match file {
        Ok(path) if !args.json => println!("  report: {}", path.display()),
        Ok(_) => {}
        Err(e) => eprintln!("lienthong: the report file was not written: {e:#}"),
    }
    // After the report is out: a database that takes no writes (a
    // standby, a copy mounted read-only) is still checked.
    if let Err(e) = log_result(&store, &report, "verify").await {
        eprintln!("lienthong: {e:#}");
    }
    Ok(if report.holds() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Runs the check on `store` with the configured attachment store and
/// receipt certificates; a progress line on a terminal for the full mode.
pub async fn check(cfg: &Config, store: &Store, depth: Depth) -> Result<IntegrityReport> {
    let keys = crate::storage::encryption_keys(cfg)?;
    let blobs = crate::storage::open_with(cfg, keys, Some(store)).await?;
    let certs = lienthong_core::pipeline::ReceiptCerts(cfg.receipt_signers()?);
    let show = depth == Depth::Full && std::io::stderr().is_terminal();
    let mut last = Instant::now();
    let mut shown = false;
    let mut progress = |p: Progress| {
        // A line every half second at most: a terminal, not a log.
        if !show || last.elapsed() < Duration::from_millis(500) {
            return;
        }
        last = Instant::now();
        shown = true;
        eprint!(
            "\rverifying: {}/{} blob(s) read, {} MiB",
            p.blobs_done,
            p.blobs_total,
            p.bytes_read >> 20
        );
    };
    let report = integrity::verify(store, &blobs, depth, certs.as_verifier(), &mut progress)
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.chain()))
        .context("checking the database's integrity")?;
    if shown {
        eprintln!();
    }
    Ok(report)
}

/// The report in sentences, each line after the first indented by
/// `indent` and two spaces.
pub fn print_report(r: &IntegrityReport, indent: &str) {
    let mode = match r.depth {
        Depth::Fast => "fast check: blobs looked for, not read",
        Depth::Full => "full check: every blob read",
    };
    if r.holds() {
        println!("{indent}the database holds ({mode})");
    } else {
        println!(
            "{indent}the database does NOT hold: {} problem(s) ({mode})",
            r.problems()
        );
    }
    let broken = r
        .log
        .chains
        .iter()
        .filter(|c| c.first_broken.is_some())
        .count();
    let log = if r.log.intact() {
        "intact".to_owned()
    } else if broken > 0 {
        format!("BROKEN in {broken} chain(s)")
    } else {
        "BROKEN (see its checkpoints below)".to_owned()
    };
    println!(
        "{indent}  transfer log: {log}, {} chained event(s) in {} chain(s)",
        r.log.checked(),
        r.log.chains.len()
    );
    let counts: Vec<String> = r.counts.iter().map(|(t, n)| format!("{t} {n}")).collect();
    println!("{indent}  rows: {}", counts.join(", "));
    match r.depth {
        Depth::Fast => println!("{indent}  blobs: {} looked for", r.blobs_checked),
        Depth::Full => println!(
            "{indent}  blobs: {} read, {} byte(s)",
            r.blobs_checked, r.bytes_read
        ),
    }
    for f in &r.findings {
        println!("{indent}  PROBLEM ({}): {}", f.check, f.what);
    }
    if r.not_listed > 0 {
        println!(
            "{indent}  … and {} more problem(s) of the same kinds, not listed",
            r.not_listed
        );
    }
}

/// The report as the JSON file and `--json` give it.
pub fn report_json(cfg: &Config, r: &IntegrityReport, context: &str) -> serde_json::Value {
    let chains: Vec<serde_json::Value> = r
        .log
        .chains
        .iter()
        .map(|c| {
            json!({
                "chain": c.chain,
                "checked": c.checked,
                "head": c.head.as_ref().map(|(seq, hash)| json!({"seq": seq, "hash": hash})),
                "first_broken": c.first_broken.as_ref().map(|(seq, what)| json!({"seq": seq, "what": what})),
            })
        })
        .collect();
    let counts: serde_json::Map<String, serde_json::Value> = r
        .counts
        .iter()
        .map(|(t, n)| ((*t).to_owned(), json!(n)))
        .collect();
    let findings: Vec<serde_json::Value> = r
        .findings
        .iter()
        .map(|f| json!({"check": f.check, "what": f.what}))
        .collect();
    let cp = &r.log.checkpoints;
    json!({
        "context": context,
        "mode": r.depth.as_str(),
        "holds": r.holds(),
        "checked_at": now_rfc3339(),
        "database": lienthong_core::store::redact(&cfg.database.url),
        "log": {
            "intact": r.log.intact(),
            "chained_events": r.log.checked(),
            "unchained_events": r.log.unchained,
            "chains": chains,
            "checkpoints": {
                "read": cp.read,
                "verified": cp.verified,
                "unsigned": cp.unsigned,
                "unchecked": cp.unchecked,
            },
        },
        "counts": counts,
        "blobs_checked": r.blobs_checked,
        "bytes_read": r.bytes_read,
        "problems": r.problems(),
        "findings": findings,
        "not_listed": r.not_listed,
    })
}

/// `reports.dir/verify-<UTC time>[-<context>].json`.
pub fn write_report(cfg: &Config, r: &IntegrityReport, context: &str) -> Result<PathBuf> {
    let dir = &cfg.reports.dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let stamp = time::OffsetDateTime::now_utc();
    let suffix = match context {
        "verify" => String::new(),
        other => format!("-{}", other.replace(' ', "-")),
    };
    let name = format!(
        "verify-{:04}{:02}{:02}T{:02}{:02}{:02}.{:03}Z{suffix}.json",
        stamp.year(),
        u8::from(stamp.month()),
        stamp.day(),
        stamp.hour(),
        stamp.minute(),
        stamp.second(),
        stamp.millisecond()
    );
    let path = dir.join(name);
    let text = serde_json::to_string_pretty(&report_json(cfg, r, context))?;
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The check's line in the transfer log.
pub async fn log_result(store: &Store, r: &IntegrityReport, context: &str) -> Result<()> {
    let outcome = if r.holds() {
        "everything holds".to_owned()
    } else {
        let first = r
            .findings
            .first()
            .map(|f| format!("; first: {}", f.what))
            .unwrap_or_default();
        format!("{} problem(s){first}", r.problems())
    };
    let counts: Vec<String> = r.counts.iter().map(|(t, n)| format!("{t} {n}")).collect();
    let detail = format!(
        "{context}: {} check, {outcome} ({}; {} chained event(s))",
        r.depth.as_str(),
        counts.join(", "),
        r.log.checked()
    );
    store
        .log(NewEvent {
            kind: EventKind::IntegrityChecked,
            sender: String::new(),
            message_id: String::new(),
            recipient: None,
            reason: None,
            detail,
            actor: Some(format!("cli:{}", cli_user_name())),
            transport: "cli".to_owned(),
        })
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.chain()))
        .context("writing the check's line in the transfer log")
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

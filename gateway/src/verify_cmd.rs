//! `lienthong verify`: the database's integrity check, and the checks
//! `lienthong migrate` runs around a migration. Each check leaves a line in
//! the transfer log (when the schema is current) and a JSON report in
//! `reports.dir`.

use std::path::PathBuf;
use std::process::ExitCode;

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
    let schema = lienthong_core::store::migrate(&cfg.database.url, false)
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.chain()))?;
    if let Some(first) = schema.pending.first() {
        anyhow::bail!(
            "the schema of {} is behind this release ({} migration(s) pending, the first {first}); \
             `lienthong verify` checks a database on this release's schema and never migrates \
             it: run `lienthong migrate`, which checks the database before and after it \
             migrates, then verify again",
            lienthong_core::store::redact(&cfg.database.url),
            schema.pending.len()
        );
    }
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
    // A bar on a terminal only (hidden otherwise), for the blob pass.
    let bar = if depth == Depth::Full {
        crate::cli::progress_bar(0, "reading attachments")
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut progress = |p: Progress| {
        bar.set_length(p.blobs_total);
        bar.set_position(p.blobs_done);
        bar.set_message(format!("reading attachments, {} MiB", p.bytes_read >> 20));
    };
    let report = integrity::verify(store, &blobs, depth, certs.as_verifier(), &mut progress)
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.chain()))
        .context("checking the database's integrity");
    bar.finish_and_clear();
    report
}

/// The report in sentences, each line after the first indented by
/// `indent` and two spaces.
pub fn print_report(r: &IntegrityReport, indent: &str) {
    for line in report_lines(r, indent) {
        println!("{line}");
    }
}

/// The lines [`print_report`] prints.
pub fn report_lines(r: &IntegrityReport, indent: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mode = match r.depth {
        Depth::Fast => "fast check: blobs looked for, not read",
        Depth::Full => "full check: every blob read",
    };
    if r.holds() {
        lines.push(format!("{indent}the database holds ({mode})"));
    } else {
        lines.push(format!(
            "{indent}the database does NOT hold: {} problem(s) ({mode})",
            r.problems()
        ));
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
    lines.push(format!(
        "{indent}  transfer log: {log}, {} chained event(s) in {} chain(s)",
        r.log.checked(),
        r.log.chains.len()
    ));
    let counts: Vec<String> = r.counts.iter().map(|(t, n)| format!("{t} {n}")).collect();
    lines.push(format!("{indent}  rows: {}", counts.join(", ")));
    lines.push(match r.depth {
        Depth::Fast => format!("{indent}  blobs: {} looked for", r.blobs_checked),
        Depth::Full => format!(
            "{indent}  blobs: {} read, {} byte(s)",
            r.blobs_checked, r.bytes_read
        ),
    });
    for f in &r.findings {
        lines.push(format!("{indent}  PROBLEM ({}): {}", f.check, f.what));
    }
    if r.not_listed > 0 {
        lines.push(format!(
            "{indent}  … and {} more problem(s) of the same kinds, not listed",
            r.not_listed
        ));
    }
    lines
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

/// The check's line in the transfer log, written by the command line.
pub async fn log_result(store: &Store, r: &IntegrityReport, context: &str) -> Result<()> {
    log_result_by(store, r, context, format!("cli:{}", cli_user_name()), "cli").await
}

/// The check's line in the transfer log, written by `actor` through
/// `transport` (`cli`, or `serve` migrating at start).
async fn log_result_by(
    store: &Store,
    r: &IntegrityReport,
    context: &str,
    actor: String,
    transport: &str,
) -> Result<()> {
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
            actor: Some(actor),
            transport: transport.to_owned(),
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

/// Who migrates the schema between two checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigratedBy {
    /// `lienthong migrate`: its account on stdout, its warnings on stderr.
    Command,
    /// `lienthong serve` with `database.migrate = "auto"`: its account in
    /// the gateway's log.
    Serve,
}

impl MigratedBy {
    fn say(self, line: &str) {
        match self {
            MigratedBy::Command => println!("{line}"),
            MigratedBy::Serve => tracing::info!("{line}"),
        }
    }

    fn warn(self, line: &str) {
        match self {
            MigratedBy::Command => eprintln!("lienthong: {line}"),
            MigratedBy::Serve => tracing::warn!("{line}"),
        }
    }

    /// What does not hold: on stdout with the rest of the command's
    /// account, a warning in the gateway's log.
    fn problem(self, line: &str) {
        match self {
            MigratedBy::Command => println!("{line}"),
            MigratedBy::Serve => tracing::warn!("{}", line.trim_start()),
        }
    }

    fn report(self, r: &IntegrityReport) {
        for line in report_lines(r, "  ") {
            if line.contains("PROBLEM (") || line.contains("does NOT hold") {
                self.problem(&line);
            } else {
                self.say(&line);
            }
        }
    }
}

/// What [`migrate_checked`] did.
#[derive(Debug)]
pub enum CheckedMigration {
    /// A new database (not even the first migration applied): migrated,
    /// with nothing to check before.
    NewDatabase,
    /// Not migrated: the database failed its check before migrating.
    Refused {
        /// What the check found (0: it could not run).
        problems: u64,
        /// The check's report file, when it was written.
        report: Option<PathBuf>,
    },
    /// Migrated between the two checks.
    Migrated {
        before_held: bool,
        after: IntegrityReport,
        /// The second check's report file, when it was written.
        report: Option<PathBuf>,
    },
}

impl CheckedMigration {
    /// Whether the migration left the database as sound as it found it: a
    /// forced migration of a damaged database is expected to stay damaged;
    /// only damage the migration itself brought counts.
    pub fn sound(&self) -> bool {
        match self {
            CheckedMigration::NewDatabase => true,
            CheckedMigration::Refused { .. } => false,
            CheckedMigration::Migrated {
                before_held, after, ..
            } => after.holds() || !before_held,
        }
    }
}

/// Applies the `pending` migrations as `lienthong migrate` does, whoever
/// runs them: the fast check before (a database that fails it is refused
/// unless `force`), the migration, the fast check after. Both reports go to
/// `reports.dir` (`verify-…-before-migrate.json`,
/// `verify-…-after-migrate.json`) and the second to the transfer log; a new
/// database is migrated without the check before (it holds nothing).
pub async fn migrate_checked(
    cfg: &Config,
    pending: &[String],
    force: bool,
    by: MigratedBy,
) -> Result<CheckedMigration> {
    use lienthong_core::store::Migrations;

    let url = &cfg.database.url;
    let where_ = lienthong_core::store::redact(url);
    let list = pending.join(", ");
    let migrate = || async {
        lienthong_core::store::migrate(url, true)
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.chain()))
    };
    if pending.first().is_some_and(|m| m.contains("_000001_")) {
        migrate().await?;
        by.say(&format!(
            "applied {} migration(s) to {where_} (a new database): {list}",
            pending.len()
        ));
        return Ok(CheckedMigration::NewDatabase);
    }
    // The schema is left as it is for the check: the transfer log gets
    // its line after migrating, on the schema this release writes.
    let before = {
        let store = Store::open(url, cfg.writer()?, Migrations::Leave)
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.chain()))?;
        check(cfg, &store, Depth::Fast).await
    };
    let (before_held, problems, report) = match &before {
        Ok(r) => {
            by.say("before migrating:");
            by.report(r);
            let file = match write_report(cfg, r, "before migrate") {
                Ok(path) => Some(path),
                Err(e) => {
                    by.warn(&format!("the report file was not written: {e:#}"));
                    None
                }
            };
            (r.holds(), r.problems(), file)
        }
        Err(e) => {
            by.problem(&format!(
                "before migrating: the integrity check could not run: {e:#}"
            ));
            (false, 0, None)
        }
    };
    if !before_held && !force {
        if by == MigratedBy::Command {
            by.say(&format!(
                "refusing to migrate {where_}: the database fails its integrity check (above); \
                 repair it or restore a backup, or migrate it as it is with `lienthong migrate \
                 --force`"
            ));
        }
        return Ok(CheckedMigration::Refused { problems, report });
    }
    if !before_held {
        by.say("migrating anyway (--force)");
    }
    migrate().await?;
    by.say(&format!(
        "applied {} migration(s) to {where_}: {list}",
        pending.len()
    ));

    let store = Store::open(url, cfg.writer()?, Migrations::Require)
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.chain()))?;
    let after = check(cfg, &store, Depth::Fast).await?;
    by.say("after migrating:");
    by.report(&after);
    let report = match write_report(cfg, &after, "after migrate") {
        Ok(path) => Some(path),
        Err(e) => {
            by.warn(&format!("the report file was not written: {e:#}"));
            None
        }
    };
    match by {
        MigratedBy::Command => log_result(&store, &after, "after migrating").await?,
        MigratedBy::Serve => {
            log_result_by(
                &store,
                &after,
                "after migrating",
                format!("serve:{}", store.writer().as_str()),
                "serve",
            )
            .await?
        }
    }
    Ok(CheckedMigration::Migrated {
        before_held,
        after,
        report,
    })
}

/// `serve` with `database.migrate = "auto"`: the pending migrations, if
/// any, applied as `lienthong migrate` applies them ([`migrate_checked`]);
/// an error (refusing to start) when the database fails its check before,
/// or the migration breaks it. Nothing pending: nothing checked.
pub async fn migrate_at_start(cfg: &Config) -> Result<()> {
    let url = &cfg.database.url;
    let schema = lienthong_core::store::migrate(url, false)
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.chain()))?;
    if schema.pending.is_empty() {
        return Ok(());
    }
    let where_ = lienthong_core::store::redact(url);
    let n = schema.pending.len();
    let named = |report: &Option<PathBuf>| match report {
        Some(p) => format!(" and in the report {}", p.display()),
        None => String::new(),
    };
    tracing::info!(
        pending = %schema.pending.join(", "),
        "database.migrate is \"auto\": {n} migration(s) to apply to {where_}, between two integrity checks"
    );
    match migrate_checked(cfg, &schema.pending, false, MigratedBy::Serve).await? {
        CheckedMigration::Refused { problems, report } => anyhow::bail!(
            "refusing to start: {n} migration(s) are pending on {where_}, and the database fails \
             its integrity check before migrating ({}, named in the log above{}); nothing was \
             migrated. Repair the database or restore a backup, or migrate it as it is with \
             `lienthong migrate --force`, then start again",
            if problems > 0 {
                format!("{problems} problem(s)")
            } else {
                "the check could not run".to_owned()
            },
            named(&report)
        ),
        CheckedMigration::Migrated {
            before_held: true,
            after,
            report,
        } if !after.holds() => {
            anyhow::bail!(
                "refusing to start: the database held before its {n} migration(s) on {where_}, \
                 but fails its integrity check after them ({} problem(s), named in the log \
                 above{}); restore the backup taken before the upgrade and report the problem",
                after.problems(),
                named(&report)
            )
        }
        _ => Ok(()),
    }
}

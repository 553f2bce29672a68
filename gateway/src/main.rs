//! `lienthong`: the gateway and its operator's command line.
//!
//! This binary wires the transports (adapters) to the core and reads the
//! configuration; the command-line clients (`send`, `receive`) speak gRPC
//! to a running gateway exactly as agency software would.

mod admin;
mod archive;
mod backup;
mod bench;
mod cli;
mod client;
mod config;
mod directory_export;
mod edxml_cmd;
mod maintenance_cmd;
mod manifest_sig;
mod operator_cmd;
mod pdf_cmd;
mod report;
mod serve;
mod storage;
mod verify_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "lienthong",
    version,
    about = "Gateway for signed electronic administrative documents between state agencies"
)]
struct Cli {
    /// Configuration file (TOML). Keys can be overridden by LIENTHONG_SECTION__KEY.
    #[arg(long, global = true, env = "LIENTHONG_CONFIG")]
    config: Option<PathBuf>,

    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gateway.
    Serve(serve::ServeArgs),
    /// Bring the database's schema up to this release (with
    /// `database.migrate = "manual"`: once, before this release's replicas
    /// start). `--check` only says what is pending.
    Migrate(admin::MigrateArgs),
    /// Manage the agency directory.
    #[command(subcommand)]
    Directory(admin::DirectoryCommand),
    /// Make a throwaway certification authority and signing certificates for
    /// a few agencies, with a directory.csv and a lienthong.toml to try it out.
    DevPki(admin::DevPkiArgs),
    /// Send a signed document (or a status notice) to a running gateway.
    Send(Box<client::SendArgs>),
    /// Receive an agency's deliveries from a running gateway.
    Receive(client::ReceiveArgs),
    /// Show the transfer log of a message (reads the database directly).
    Trace(admin::TraceArgs),
    /// Where a document stands with each recipient: states, trail, links
    /// (reads the database directly).
    DocumentStatus(admin::DocumentStatusArgs),
    /// Check a receipt saved by `send --receipt`: the gateway's signature,
    /// its certificate chain to trust.anchors (or --anchors), and that the
    /// receipt's fields are the signed ones.
    VerifyReceipt(admin::VerifyReceiptArgs),
    /// edXML packages (QCVN 102:2016): inspect, convert, send.
    #[command(subcommand)]
    Edxml(edxml_cmd::EdxmlCommand),
    /// The signatures inside PDF documents (PAdES).
    #[command(subcommand)]
    Pdf(pdf_cmd::PdfCommand),
    /// Check the transfer log.
    #[command(subcommand)]
    Log(admin::LogCommand),
    /// Encryption keys of the attachment store: make one, rotate to it.
    #[command(subcommand)]
    Storage(storage::StorageCommand),
    /// Report who sent and received what over a period (reads the database
    /// directly): CSV, JSON or XLSX, headers in Vietnamese or English.
    Report(report::ReportArgs),
    /// Load generator: starts a throwaway gateway, drives it as many
    /// agencies at once, and prints throughput, latency and errors
    /// (`lienthong-bench`, built beside this binary).
    Bench(bench::BenchArgs),
    /// Operator announcements (reads and writes the database directly):
    /// maintenance windows.
    #[command(subcommand)]
    Admin(maintenance_cmd::AdminCommand),
    /// Operator accounts of the dashboard (reads and writes the database
    /// directly): add, remove, passwd, role, disable, enable, list.
    #[command(subcommand)]
    Operator(operator_cmd::OperatorCommand),
    /// Back up the database and the attachments while the gateway serves,
    /// with a signed manifest (docs/operations.md).
    Backup(backup::BackupArgs),
    /// Restore a backup into the empty database and storage configured.
    Restore(backup::RestoreArgs),
    /// Check the database's integrity: the transfer log's chains, the rows
    /// that point at one another, the directory's bindings and every
    /// attachment (`--full`: read through). Exit 1 if anything does not hold.
    Verify(verify_cmd::VerifyArgs),
    /// Archive packages: write the next one (create), check them offline
    /// (verify), give a message back (extract), take archived messages out
    /// of the database (purge), list them (docs/operations.md).
    #[command(subcommand)]
    Archive(archive::ArchiveCommand),
}

fn main() -> ExitCode {
    // Both rustls providers may be compiled in through dependencies; pick
    // ring before anything builds a TLS configuration.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    init_logging(cli.log_format, matches!(cli.command, Command::Serve(_)));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lienthong: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(run(cli));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lienthong: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let cfg = config::Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Serve(args) => serve::run(cfg, args).await,
        Command::Migrate(args) => admin::migrate(cfg, args).await,
        Command::Directory(cmd) => admin::directory(cfg, cmd).await,
        Command::DevPki(args) => admin::dev_pki(args),
        Command::Send(args) => client::send(cfg, *args).await,
        Command::Receive(args) => client::receive(cfg, args).await,
        Command::Trace(args) => admin::trace(cfg, args).await,
        Command::DocumentStatus(args) => admin::document_status(cfg, args).await,
        Command::Log(cmd) => admin::log(cfg, cmd).await,
        Command::Edxml(cmd) => edxml_cmd::run(cfg, cmd).await,
        Command::Pdf(cmd) => pdf_cmd::run(cfg, cmd),
        Command::Storage(cmd) => storage::run(cfg, cmd).await,
        Command::Report(args) => report::run(cfg, args).await,
        Command::VerifyReceipt(args) => admin::verify_receipt(cfg, args),
        Command::Bench(args) => bench::run(args).await,
        Command::Admin(cmd) => maintenance_cmd::run(cfg, cmd).await,
        Command::Operator(cmd) => operator_cmd::run(cfg, cmd).await,
        Command::Verify(args) => verify_cmd::run(cfg, args).await,
        Command::Backup(args) => backup::backup(cfg, args).await,
        Command::Restore(args) => backup::restore(cfg, args).await,
        Command::Archive(cmd) => archive::run(cfg, cmd).await,
    }
}

fn init_logging(format: LogFormat, serving: bool) {
    use tracing_subscriber::EnvFilter;
    // Client commands print their results on stdout; their logs stay quiet.
    let default = if serving { "info" } else { "warn" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

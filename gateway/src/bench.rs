//! `lienthong bench`: the load generator is a binary of its own,
//! `lienthong-bench`, so that the gateway carries none of its clients
//! (RabbitMQ, the baselines' raw SQL). This runs the one beside this
//! executable with everything after `bench`, naming this binary as the
//! gateway to measure.

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;

#[derive(Args, Debug)]
#[command(disable_help_flag = true)]
pub struct BenchArgs {
    /// The load generator's mode and options (`lienthong bench --help`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    pub args: Vec<OsString>,
}

pub async fn run(args: BenchArgs) -> Result<ExitCode> {
    let exe = std::env::current_exe().context("cannot find the lienthong executable")?;
    let bench = exe.with_file_name(format!("lienthong-bench{}", std::env::consts::EXE_SUFFIX));
    if !bench.is_file() {
        bail!(
            "the load generator is a binary of its own, and there is none at {}: build it \
             beside this one (`cargo build --release -p lienthong-bench`, or `cargo build -p \
             lienthong-bench` for a debug lienthong)",
            bench.display()
        );
    }
    let status = tokio::process::Command::new(&bench)
        .arg("--gateway-bin")
        .arg(&exe)
        .args(&args.args)
        .status()
        .await
        .with_context(|| format!("cannot run {}", bench.display()))?;
    // A bench ended by a signal has no code of its own.
    Ok(match status.code() {
        Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
        None => ExitCode::from(1),
    })
}

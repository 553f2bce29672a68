//! `lienthong operator`: the accounts that log in to the dashboard (and
//! whose bound client certificates call the gRPC Admin and Reports
//! services). Works on the database directly, like the directory commands;
//! every change is a line in the transfer log naming the OS user who ran it.

use std::io::{BufRead, IsTerminal};
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Subcommand, ValueEnum};
use lienthong_core::calendar::format_rfc3339;
use lienthong_core::operators::{self, Actor, OperatorRole};

use crate::config::Config;

#[derive(Subcommand, Debug)]
pub enum OperatorCommand {
    /// Add an operator account. The password is asked at the terminal
    /// (twice, not echoed) unless --password-stdin or --no-password.
    Add {
        name: String,
        #[arg(long, value_enum)]
        role: RoleArg,
        /// Read the password from the first line of standard input (for scripts).
        #[arg(long, conflicts_with = "no_password")]
        password_stdin: bool,
        /// No password: the account logs in only with a client certificate
        /// (`lienthong directory bind-operator NAME CERT.pem`).
        #[arg(long)]
        no_password: bool,
    },
    /// Remove an operator: their sessions end at once and their bound
    /// certificates open nothing any more.
    Remove { name: String },
    /// Set a new password; every session of the account ends.
    Passwd {
        name: String,
        #[arg(long, conflicts_with = "no_password")]
        password_stdin: bool,
        /// Take the password away (client certificate only).
        #[arg(long)]
        no_password: bool,
    },
    /// Change an operator's role; their sessions end.
    Role {
        name: String,
        #[arg(value_enum)]
        role: RoleArg,
    },
    /// Disable an account (its sessions end) until `operator enable`.
    Disable { name: String },
    /// Enable a disabled account.
    Enable { name: String },
    /// List the accounts, one JSON object per line.
    List {
        /// Also the removed ones.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RoleArg {
    /// The dashboard, reports and traces.
    Viewer,
    /// Also maintenance windows and the directory.
    Admin,
}

impl From<RoleArg> for OperatorRole {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::Viewer => OperatorRole::Viewer,
            RoleArg::Admin => OperatorRole::Admin,
        }
    }
}

/// Who runs the command, for the transfer log (as for the directory's
/// changes).
fn actor() -> Actor {
    Actor::cli(&crate::cli::cli_user_name())
}

fn read_password(name: &str, from_stdin: bool) -> Result<String> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        let p = line.trim_end_matches(['\r', '\n']).to_owned();
        if p.is_empty() {
            bail!("--password-stdin: standard input held no password");
        }
        return Ok(p);
    }
    if !std::io::stdin().is_terminal() {
        bail!(
            "no terminal to ask the password at: pass --password-stdin and give it on standard input, or --no-password for a certificate-only account"
        );
    }
    let p = rpassword::prompt_password(format!("Mật khẩu cho / password for {name}: "))?;
    let again = rpassword::prompt_password("Nhập lại / again: ")?;
    if p != again {
        bail!("the two passwords differ; nothing was changed");
    }
    Ok(p)
}

pub async fn run(cfg: Config, cmd: OperatorCommand) -> Result<ExitCode> {
    // Ask for the password before touching the database.
    let password = match &cmd {
        OperatorCommand::Add {
            name,
            password_stdin,
            no_password: false,
            ..
        }
        | OperatorCommand::Passwd {
            name,
            password_stdin,
            no_password: false,
        } => Some(read_password(name, *password_stdin)?),
        _ => None,
    };
    let store = cfg.open_store().await?;
    let core = |e: lienthong_core::error::Error| anyhow::anyhow!("{}", e.message());
    let by = actor();
    let done = match cmd {
        OperatorCommand::Add { name, role, .. } => {
            operators::add(&store, &name, role.into(), password.as_deref(), &by)
                .await
                .map_err(core)?
        }
        OperatorCommand::Remove { name } => {
            operators::remove(&store, &name, &by).await.map_err(core)?
        }
        OperatorCommand::Passwd { name, .. } => {
            operators::set_password(&store, &name, password.as_deref(), &by)
                .await
                .map_err(core)?
        }
        OperatorCommand::Role { name, role } => {
            operators::set_role(&store, &name, role.into(), &by)
                .await
                .map_err(core)?
        }
        OperatorCommand::Disable { name } => {
            operators::disable(&store, &name, &by).await.map_err(core)?
        }
        OperatorCommand::Enable { name } => {
            operators::enable(&store, &name, &by).await.map_err(core)?
        }
        OperatorCommand::List { all } => {
            let certs = operators::certificate_counts(&store).await.map_err(core)?;
            let list = operators::list(&store).await.map_err(core)?;
            let shown: Vec<_> = list
                .into_iter()
                .filter(|o| all || o.state != "removed")
                .collect();
            if shown.is_empty() {
                eprintln!(
                    "no operator accounts; add one with `lienthong operator add NAME --role admin`"
                );
            }
            for o in shown {
                println!(
                    "{}",
                    serde_json::json!({
                        "name": o.name,
                        "role": o.role,
                        "state": o.state,
                        "password": o.password,
                        "certificates": certs.get(&o.name).copied().unwrap_or(0),
                        "created_at": format_rfc3339(o.created_at),
                        "updated_at": format_rfc3339(o.updated_at),
                        "last_login_at": o.last_login_at.map(format_rfc3339),
                    })
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
    };
    println!(
        "operator {:?}: {} ({}{})",
        done.name,
        done.state,
        done.role.as_str(),
        if done.password {
            ", with a password"
        } else {
            ", client certificate only"
        }
    );
    Ok(ExitCode::SUCCESS)
}

//! `lienthong serve`: the gateway itself.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use std::sync::Arc;

use lienthong_core::pipeline::{Gateway, Settings};
use lienthong_core::receipts::ReceiptSigner;
use lienthong_grpc::{AuthMode, GrpcServer};
use tokio::net::TcpListener;

use crate::config::{AuthModeSetting, Config};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Allow `auth.mode = "dev-header"` on an address other than loopback.
    /// Anyone who can reach the port can then send as any agency.
    #[arg(long)]
    pub insecure_allow_remote: bool,
}

pub async fn run(cfg: Config, args: ServeArgs) -> Result<ExitCode> {
    let auth = match cfg.auth.mode {
        AuthModeSetting::DevHeader => {
            if !cfg.grpc.listen.ip().is_loopback() && !args.insecure_allow_remote {
                anyhow::bail!(
                    "auth.mode = \"dev-header\" trusts whatever agency code the caller claims; \
                     refusing to listen on {} (not loopback). Use a loopback address, or pass \
                     --insecure-allow-remote if you really mean it",
                    cfg.grpc.listen
                );
            }
            tracing::warn!(
                "auth.mode = \"dev-header\": callers are identified by the x-organ-id header they send, \
                 with no proof. Use it only to try the gateway out"
            );
            AuthMode::DevHeader
        }
    };
    let anchors = cfg.anchors()?;
    if anchors.is_empty() {
        tracing::warn!(
            "no trust.anchors configured: every signed envelope will be refused as UNTRUSTED_CERTIFICATE"
        );
    }
    let receipt_signer = match (&cfg.receipts.key, &cfg.receipts.cert) {
        (Some(key), Some(cert)) => Some(Arc::new(
            ReceiptSigner::load(key, cert)
                .map_err(|e| anyhow::anyhow!("{}", e.message()))
                .context("loading receipts.key / receipts.cert")?,
        )),
        (None, None) => {
            tracing::warn!(
                "no receipts.key configured: receipts are not signed, senders get no proof of acceptance"
            );
            None
        }
        _ => anyhow::bail!("receipts.key and receipts.cert go together: set both or neither"),
    };
    let gw = Gateway::open(Settings {
        gateway_id: cfg.gateway.id.clone(),
        database_url: cfg.database.url.clone(),
        storage_path: cfg.storage.path.clone(),
        anchors,
        limits: cfg.limits.to_limits(),
        receipt_signer,
    })
    .await
    .map_err(|e| anyhow::anyhow!("{}", e.chain()))
    .context("opening the database and the attachment store")?;

    let listener = TcpListener::bind(cfg.grpc.listen)
        .await
        .with_context(|| format!("cannot listen for gRPC on {}", cfg.grpc.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(
        grpc = %addr,
        gateway = %cfg.gateway.id,
        database = %lienthong_core::store::redact(&cfg.database.url),
        storage = %cfg.storage.path.display(),
        "lienthong is serving"
    );
    GrpcServer::new(gw, auth)
        .serve(listener, shutdown_signal())
        .await
        .context("the gRPC server stopped")?;
    tracing::info!("lienthong stopped");
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch SIGTERM");
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutting down: finishing the calls in flight");
}

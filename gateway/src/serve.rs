//! `lienthong serve`: the gateway itself.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use std::sync::Arc;

use lienthong_core::pipeline::{Gateway, Settings};
use lienthong_grpc::{AuthMode, GrpcServer};
use lienthong_pki::receipts::ReceiptSigner;
use lienthong_tls::{Alpn, ClientAuth, ReloadingTls, TlsFiles};
use tokio::net::TcpListener;

use crate::config::{AuthModeSetting, Config, MigrateSetting};

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
        AuthModeSetting::Mtls => {
            let (Some(cert), Some(key)) = (&cfg.tls.cert, &cfg.tls.key) else {
                anyhow::bail!(
                    "auth.mode = \"mtls\" needs tls.cert and tls.key (the gateway's certificate and key) \
                     and tls.client_anchors (the authorities of the agencies' client certificates)"
                );
            };
            let tls = ReloadingTls::load(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_anchors: cfg.tls.client_anchors.clone(),
                client_auth: ClientAuth::Required,
                alpn: Alpn::Grpc,
            })
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("loading the TLS configuration")?;
            AuthMode::Mtls(tls)
        }
    };
    let anchors = cfg.anchors()?;
    if let AuthMode::Mtls(tls) = &auth {
        // A client certificate revoked in trust.crls is refused as a
        // signing certificate would be.
        tls.check_revocation_with(anchors.clone());
    }
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
                "no receipts.key configured: receipts and the transfer log's checkpoints are not signed, senders get no proof of acceptance"
            );
            None
        }
        _ => anyhow::bail!("receipts.key and receipts.cert go together: set both or neither"),
    };
    // `verify-receipt` and `log verify` read them; a file that is not there
    // is said at start-up, not on the day a receipt is disputed.
    let receipt_certs = lienthong_core::pipeline::ReceiptCerts(cfg.receipt_signers()?);
    // database.migrate = "auto": pending migrations are applied as
    // `lienthong migrate` applies them, between two integrity checks; a
    // database that fails the first is not migrated and the gateway does
    // not start. Nothing pending, nothing checked.
    if cfg.database.migrate == MigrateSetting::Auto {
        crate::verify_cmd::migrate_at_start(&cfg).await?;
    }
    let store = cfg.open_store().await.context("opening the database")?;
    // The attachment store opens with the storage keys, and refuses wrong
    // ones before this replica joins; after the database, which holds it
    // with storage.backend = "database".
    let blobs = crate::storage::open_blob_store(&cfg, &store).await?;
    // One live process per chain of the transfer log: a second replica
    // with the same name would extend the same chain. Held until exit.
    // A process of the same name killed a moment ago may still hold it
    // until PostgreSQL notices its connection is gone.
    let mut replica = None;
    for _ in 0..10 {
        replica = store
            .try_lease(&lienthong_core::replicas::name_lease(
                store.writer().as_str(),
            ))
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.chain()))?;
        if replica.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let replica = match replica {
        Some(l) => l,
        None => anyhow::bail!(
            "another live replica already serves as {:?} on this database: give each replica its own gateway.replica (LIENTHONG_GATEWAY__REPLICA); a replica without one is \"main\"",
            store.writer().as_str()
        ),
    };
    // The same trust and routes as every other live replica, or refused.
    store
        .join_replicas(&cfg.replica_config()?)
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.message()))?;
    // Documents accepted before their report columns were filled (by an
    // older version, or when indexing after an acceptance failed) are
    // indexed once, beside the start; acceptances index their own.
    let sweep = store.clone();
    tokio::spawn(async move {
        if let Err(e) = lienthong_reports::index_documents(&sweep).await {
            tracing::warn!(error = %e.chain(), "indexing the documents' due dates and codes failed; the next acceptance tries again");
        }
    });
    // The monthly report's sender is checked against the directory below.
    let report_sending = cfg.report_sending()?;
    let report_anchors = report_sending.as_ref().map(|_| anchors.clone());
    let http_anchors = anchors.clone();
    let http_connections = cfg.limits.connection_limits();
    // Routes and the national exchange.
    let routes = cfg.route_table()?;
    let exchange = cfg
        .amqp
        .url
        .as_ref()
        .map(|_| lienthong_core::pipeline::ExchangeSettings {
            max_message_bytes: cfg.amqp.max_message_bytes,
        });
    let gw = Gateway::from_parts(
        store.clone(),
        blobs,
        Settings {
            gateway_id: cfg.gateway.id.clone(),
            database_url: cfg.database.url.clone(),
            writer: cfg.writer()?,
            storage_path: cfg.storage.path.clone(),
            anchors,
            limits: cfg.limits.to_limits(),
            receipt_signer,
            receipt_certs,
            routes: routes.clone(),
            exchange,
            pdf_policy: cfg.signatures.pdf.policy(),
            calendar: cfg.report_settings()?.calendar,
            metrics: Default::default(),
        },
    );
    // A checkpoint at start records where every chain stood before this
    // replica takes traffic, and one at a clean stop where it left them.
    let checkpoint_every = cfg.log.checkpoint_every_secs;
    if checkpoint_every > 0 {
        write_checkpoint(&gw, "start").await;
    }
    // One counter of refused connections for both TLS listeners.
    let refused_connections = lienthong_tls::RefusedConnections::register(gw.metrics_registry());

    let listener = TcpListener::bind(cfg.grpc.listen)
        .await
        .with_context(|| format!("cannot listen for gRPC on {}", cfg.grpc.listen))?;
    let addr = listener.local_addr()?;
    // The HTTP listener (dashboard, metrics, health) and the monthly
    // report run beside gRPC; one shutdown signal stops them all, and any
    // server that stops stops the others.
    let report_settings = cfg.report_settings()?;
    let backup_at = cfg.backup.daily_at()?;
    let grpc_report_settings = report_settings.clone();
    let mut monthly = cfg.monthly_reports()?;
    if let (Some(sending), Some(anchors)) = (report_sending, report_anchors) {
        sending
            .check(&gw, &anchors)
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.message()))?;
        if !cfg.reports.monthly {
            tracing::warn!(
                "reports.send_to is set but reports.monthly = false: no monthly report is written or sent"
            );
        }
        monthly.send = Some(sending);
    }
    // The HTTP listener: operators log in; HTTPS when http.tls is on.
    let http_tls = match cfg.http_tls_files()? {
        Some(files) => Some(
            ReloadingTls::load(files)
                .map_err(|e| anyhow::anyhow!("{e}"))
                .context("loading the HTTPS configuration (http.tls)")?,
        ),
        None => None,
    };
    if let Some(tls) = &http_tls {
        // An operator's certificate revoked in trust.crls logs nobody in.
        tls.check_revocation_with(http_anchors);
    }
    // The directory exchange runs with peers to take updates from (and
    // to announce this gateway's agencies to).
    let peers = cfg.directory_peers()?;
    let directory_exchange = if cfg.amqp.url.is_some() && !peers.is_empty() {
        let authority: Vec<_> = routes.local_patterns().cloned().collect();
        let x = lienthong_core::national_directory::DirectoryExchange::new(
            gw.clone(),
            cfg.gateway.id.clone(),
            authority,
            peers,
        );
        if !x.publishes() {
            tracing::warn!(
                "no receipts.key: this gateway does not announce its agencies to its peers on the directory exchange"
            );
        }
        tracing::info!(peers = x.peers().len(), exchange = %cfg.amqp.directory_exchange, "national directory exchange on");
        Some(Arc::new(x))
    } else {
        None
    };
    let mut http_options = cfg.http_options(cfg.http.listen)?;
    http_options.directory_exchange = directory_exchange.clone();
    http_options.reports = report_settings;
    http_options.tls = http_tls.clone();
    let http = if cfg.http.enabled {
        let l = TcpListener::bind(cfg.http.listen).await.with_context(|| {
            format!(
                "cannot listen for HTTP on {} (http.listen; set http.enabled = false to run without the dashboard and /metrics)",
                cfg.http.listen
            )
        })?;
        if !cfg.http.listen.ip().is_loopback() {
            if http_tls.is_none() {
                tracing::warn!(http = %cfg.http.listen, "the HTTP listener is beyond loopback without http.tls: passwords and session cookies cross the network in clear");
            }
            if cfg.http.metrics_token_file.is_none() {
                tracing::warn!(http = %cfg.http.listen, "/metrics is closed: a listener beyond loopback needs http.metrics_token_file");
            }
        }
        tracing::info!(hosts = %http_options.hosts.describe(), "the HTTP listener answers for these host names (http.allowed_hosts)");
        Some(l)
    } else {
        None
    };
    let http_addr = match &http {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };
    tracing::info!(
        grpc = %addr,
        http = %http_addr.map(|a| a.to_string()).unwrap_or_else(|| "off".to_owned()),
        gateway = %cfg.gateway.id,
        database = %lienthong_core::store::redact(&cfg.database.url),
        storage = %cfg.storage.path.display(),
        "lienthong is serving"
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |rx: &tokio::sync::watch::Receiver<bool>| {
        let mut rx = rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let signal = {
        let tx = stop_tx.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            let _ = tx.send(true);
        })
    };
    let name_task = tokio::spawn(hold_replica_name(store.clone(), replica, stop_tx.clone()));
    // The AMQP adapter keeps its own connection (reconnecting as
    // needed) until shutdown; health checks read its state.
    let amqp_task = cfg.amqp.url.as_ref().map(|url| {
        tracing::info!(broker = %lienthong_core::store::redact(url), queue = %cfg.amqp.queue, "AMQP on");
        let (state, task) =
            lienthong_amqp::spawn(
                gw.clone(),
                cfg.amqp.clone(),
                routes,
                directory_exchange,
                stop_rx.clone(),
            );
        gw.attach_broker(Arc::new(move || {
            if state.is_up() {
                Ok(())
            } else {
                Err(state.last_error())
            }
        }));
        task
    });
    // Maintenance windows announced by `lienthong admin maintenance`
    // (another process) reach the following Receive streams through this poll.
    let maintenance_task = tokio::spawn(lienthong_core::pipeline::watch_maintenance(
        gw.clone(),
        lienthong_core::maintenance::POLL_INTERVAL,
        stopped(&stop_rx),
    ));
    // Replicas on one PostgreSQL database: a document another replica
    // accepts reaches the Receive streams open here.
    let landed_task = tokio::spawn(lienthong_core::pipeline::watch_landed(
        gw.clone(),
        stopped(&stop_rx),
    ));
    // Deadlines — an `overdue` line when a recipient misses one.
    let deadlines = cfg.lifecycle.deadlines()?;
    // On one replica at a time (the lease "deadlines").
    let deadline_task = {
        let gw = gw.clone();
        let every = std::time::Duration::from_secs(cfg.lifecycle.check_every_secs.max(1));
        tokio::spawn(lienthong_core::pipeline::while_leading(
            gw.clone(),
            "deadlines",
            stopped(&stop_rx),
            move || {
                let (gw, deadlines) = (gw.clone(), deadlines.clone());
                async move {
                    loop {
                        tokio::time::sleep(every).await;
                        match gw
                            .check_deadlines(&deadlines, lienthong_core::now_micros())
                            .await
                        {
                            Ok(0) => {}
                            Ok(n) => {
                                tracing::info!(count = n, "recipients missed a deadline (overdue)")
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "the deadline check failed; it runs again later")
                            }
                        }
                    }
                }
            },
        ))
    };
    // Every replica witnesses every chain, in its own chain.
    let checkpoint_task = (checkpoint_every > 0).then(|| {
        tokio::spawn(lienthong_core::pipeline::watch_checkpoints(
            gw.clone(),
            std::time::Duration::from_secs(checkpoint_every),
            stopped(&stop_rx),
        ))
    });
    // Calls refused before identification: one summary line per peer per
    // minute in the transfer log, and a last one at shutdown.
    let unauthenticated_task = tokio::spawn(lienthong_core::pipeline::watch_unauthenticated(
        gw.clone(),
        lienthong_core::peers::SUMMARY_INTERVAL,
        stopped(&stop_rx),
    ));
    // On one replica at a time (the lease "reports"): one report a month.
    let reports_task = cfg.reports.monthly.then(|| {
        let gw = gw.clone();
        tokio::spawn(lienthong_core::pipeline::while_leading(
            gw.clone(),
            "reports",
            stopped(&stop_rx),
            move || {
                lienthong_reports::run_monthly_reports(
                    gw.clone(),
                    monthly.clone(),
                    std::future::pending::<()>(),
                )
            },
        ))
    });
    // On one replica at a time (the lease "backup"): the daily backup.
    let backup_task = backup_at.map(|at| {
        tracing::info!(dir = %cfg.backup.dir.display(), at = %format!("{:02}:{:02}", at.0, at.1), keep_days = cfg.backup.keep, "daily backup on (backup.schedule)");
        let (cfg, store) = (cfg.clone(), store.clone());
        tokio::spawn(lienthong_core::pipeline::while_leading(
            gw.clone(),
            "backup",
            stopped(&stop_rx),
            move || crate::backup::run_schedule(cfg.clone(), store.clone(), at),
        ))
    });
    let grpc = {
        let (gw, tx, stop) = (gw.clone(), stop_tx.clone(), stopped(&stop_rx));
        let refused = refused_connections.clone();
        async move {
            let r = GrpcServer::new(gw, auth)
                .with_edxml_policy(cfg.edxml.policy.policy())
                .with_agency_limits(cfg.limits.agency_limits())
                .with_peer_limits(cfg.limits.peer_limits())
                .with_connection_limits(cfg.limits.connection_limits(), refused)
                .with_upload_limits(cfg.limits.upload_limits())
                .with_trace_organ_id(cfg.gateway.organ_id.as_deref().unwrap_or(&cfg.gateway.id))
                .with_report_settings(grpc_report_settings)
                .serve(listener, stop)
                .await;
            let _ = tx.send(true);
            r.context("the gRPC server stopped")
        }
    };
    let web = {
        let (gw, tx, stop) = (gw.clone(), stop_tx.clone(), stopped(&stop_rx));
        async move {
            let r = match (http, http_tls) {
                (Some(l), Some(tls)) => {
                    tls.spawn_watcher(std::time::Duration::from_secs(5));
                    let router = lienthong_http::router(gw, http_options);
                    lienthong_http::serve_tls(
                        l,
                        tls,
                        http_connections,
                        refused_connections,
                        router,
                        stop,
                    )
                    .await
                    .context("the HTTPS server stopped")
                }
                (Some(l), None) => {
                    lienthong_http::serve(l, lienthong_http::router(gw, http_options), stop)
                        .await
                        .context("the HTTP server stopped")
                }
                (None, _) => {
                    // No HTTP listener: nothing to stop the others for.
                    stop.await;
                    return Ok(());
                }
            };
            let _ = tx.send(true);
            r
        }
    };
    let (grpc, web) = tokio::join!(grpc, web);
    signal.abort();
    name_task.abort();
    let _ = maintenance_task.await;
    let _ = landed_task.await;
    let _ = deadline_task.await;
    let _ = unauthenticated_task.await;
    if let Some(t) = reports_task {
        let _ = t.await;
    }
    if let Some(t) = backup_task {
        let _ = t.await;
    }
    if let Some(t) = amqp_task {
        let _ = t.await;
    }
    if let Some(t) = checkpoint_task {
        let _ = t.await;
        // After every other writer of this process has stopped: the last
        // line of its chain.
        write_checkpoint(&gw, "stop").await;
    }
    grpc?;
    web?;
    tracing::info!("lienthong stopped");
    Ok(ExitCode::SUCCESS)
}

/// Keeps this replica's name while it runs. The name's lease goes with its
/// connection — a database restart or failover ends it — and is taken
/// again as soon as the database answers. Should another process have taken
/// the name meanwhile (started with the same `gateway.replica` while this
/// one was cut off), two processes would extend one chain of the transfer
/// log: this one stops instead.
async fn hold_replica_name(
    store: lienthong_core::store::Store,
    mut lease: lienthong_core::store::Lease,
    stop: tokio::sync::watch::Sender<bool>,
) {
    let name = lienthong_core::replicas::name_lease(store.writer().as_str());
    loop {
        lease.lost().await;
        lease = loop {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            match store.try_lease(&name).await {
                Ok(Some(l)) => {
                    tracing::info!(replica = %store.writer().as_str(), "this replica holds its name again");
                    break l;
                }
                Ok(None) => {
                    tracing::error!(
                        replica = %store.writer().as_str(),
                        "another process took this replica's name (gateway.replica) while the database was away; stopping, so that two processes do not extend one chain of the transfer log"
                    );
                    let _ = stop.send(true);
                    return;
                }
                Err(_) => continue,
            }
        };
    }
}

async fn write_checkpoint(gw: &Gateway, when: &str) {
    match gw.write_checkpoint().await {
        Ok(cp) => tracing::info!(
            chains = cp.heads.len(),
            "wrote a checkpoint of the transfer log at {when}"
        ),
        Err(e) => tracing::warn!(
            error = %e.chain(),
            "could not write a checkpoint of the transfer log at {when}"
        ),
    }
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

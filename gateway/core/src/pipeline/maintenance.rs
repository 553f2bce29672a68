//! Maintenance windows through the gateway: announced and cancelled with
//! the following `Receive` streams told at once, each stream's notice feed,
//! and the poll `serve` runs so that changes made elsewhere reach them.

use super::Gateway;
use crate::error::Result;
use crate::maintenance::{NoticeFeed, Window, announce, cancel, current, not_over};
use std::future::Future;
use std::time::Duration;

impl Gateway {
    /// The windows current or to come, soonest first (the dashboard).
    pub async fn maintenance_windows(&self) -> Result<Vec<Window>> {
        current(self.store()).await
    }

    /// Announces a window and tells the following streams at once
    /// (`interruption_expected`: see [`announce`]).
    pub async fn announce_maintenance(
        &self,
        starts_at: i64,
        ends_at: i64,
        message: &str,
        interruption_expected: bool,
    ) -> Result<Window> {
        let w = announce(
            self.store(),
            starts_at,
            ends_at,
            message,
            interruption_expected,
        )
        .await?;
        self.refresh_notices().await?;
        Ok(w)
    }

    /// Cancels a window and tells the following streams at once.
    pub async fn cancel_maintenance(&self, id: i64) -> Result<Window> {
        let w = cancel(self.store(), id).await?;
        self.refresh_notices().await?;
        Ok(w)
    }

    /// Reads the windows not yet over and publishes them to the following
    /// streams when they changed.
    pub async fn refresh_notices(&self) -> Result<()> {
        let windows = not_over(self.store()).await?;
        self.notices().publish(windows);
        Ok(())
    }

    /// The notices of one `Receive` call: [`NoticeFeed::initial`] first,
    /// then, if it follows, [`NoticeFeed::changed`]. If the table cannot be
    /// read the call goes on without the initial notices (they are no
    /// reason to keep an agency from its documents); the failure is logged.
    pub async fn notice_feed(&self) -> NoticeFeed {
        let mut feed = NoticeFeed::subscribe(self.notices());
        match not_over(self.store()).await {
            Ok(windows) => feed.start(&windows),
            Err(e) => {
                tracing::warn!(error = %e.chain(), "maintenance windows could not be read for a Receive call")
            }
        }
        feed
    }
}

/// Polls the maintenance windows every `every` until `stop` completes, and
/// publishes them to the following `Receive` streams (see the module
/// documentation). `serve` runs it.
pub async fn watch_maintenance(gw: Gateway, every: Duration, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    let mut failing = false;
    loop {
        match not_over(gw.store()).await {
            Ok(windows) => {
                if failing {
                    tracing::info!("maintenance windows are readable again");
                    failing = false;
                }
                let summary: Vec<(i64, bool)> =
                    windows.iter().map(|w| (w.id, w.is_cancelled())).collect();
                if gw.notices().publish(windows) {
                    tracing::info!(windows = ?summary, "maintenance windows changed; telling the following Receive streams");
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e.chain(), "cannot read the maintenance windows; retrying");
                    failing = true;
                }
            }
        }
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

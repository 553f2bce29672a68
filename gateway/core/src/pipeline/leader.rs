//! Jobs that run on one replica at a time: this replica runs `job` while it
//! holds its lease (the store's `lease.rs`), stops it when the lease is lost,
//! and asks for the lease again.

use std::future::Future;
use std::time::Duration;

use super::Gateway;

/// Runs the job `make` builds while this replica leads `job`, until `stop`.
/// When the job ends by itself, it is started again a second later (still
/// leading).
pub async fn while_leading<F, Fut>(
    gw: Gateway,
    job: &str,
    stop: impl Future<Output = ()>,
    mut make: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    tokio::pin!(stop);
    loop {
        let lease = tokio::select! {
            _ = &mut stop => return,
            lease = gw.inner.store.lease(job) => lease,
        };
        let mut lease = match lease {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(job, error = %e.chain(), "cannot ask for a job's lease; trying again");
                tokio::select! {
                    _ = &mut stop => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
        };
        tracing::info!(job, replica = %gw.inner.store.writer(), "this replica runs the job");
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = lease.lost() => break,
                // A job that ended by itself starts again a second later,
                // never in a tight loop.
                _ = async {
                    make().await;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                } => {}
            }
        }
    }
}

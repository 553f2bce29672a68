//! The gateway's notices on a `Receive` stream (maintenance
//! windows). The core's [`NoticeFeed`] says what to tell; this module only
//! puts it on the stream, beside the inbox's deliveries and never through
//! them: `max` counts deliveries, and a notice is never acknowledged.

use lienthong_core::maintenance::NoticeFeed;
use lienthong_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::Status;

type Tx = mpsc::Sender<Result<pb::Delivery, Status>>;

/// Stops a stream's notice task when the stream's delivery loop ends.
pub(crate) struct Following(Option<JoinHandle<()>>);

impl Drop for Following {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// Sends the notices still current, then, for a following stream, starts a
/// task that sends those announced or cancelled later until the returned
/// guard is dropped. `None` when the caller has gone.
pub(crate) async fn start(mut feed: NoticeFeed, tx: &Tx, follow: bool) -> Option<Following> {
    for d in feed.initial() {
        tx.send(Ok(d)).await.ok()?;
    }
    if !follow {
        return Some(Following(None));
    }
    let tx = tx.clone();
    Some(Following(Some(tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                changed = feed.changed() => {
                    let Some(notices) = changed else { return };
                    for d in notices {
                        if tx.send(Ok(d)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }))))
}

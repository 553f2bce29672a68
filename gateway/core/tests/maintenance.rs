//! Maintenance notices in the core: what a `Receive` call's
//! notice feed says when windows are announced and cancelled, through the
//! gateway and behind its back (another process writing the database, seen
//! by `watch_maintenance`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use lienthong_core::error::{Reason, Result};
use lienthong_core::maintenance::{self, NoticeFeed};
use lienthong_core::pipeline::{Gateway, Settings};
use lienthong_core::store::now_micros;
use lienthong_proto::v1::Delivery;

const HOUR: i64 = 3_600_000_000;

async fn gateway(dir: &std::path::Path) -> Result<Gateway> {
    Gateway::open(Settings {
        gateway_id: "lienthong-test".to_owned(),
        database_url: format!("sqlite://{}", dir.join("db.sqlite").display()),
        storage_path: dir.join("blobs"),
        ..Settings::default()
    })
    .await
}

fn told(ds: &[Delivery]) -> Vec<(String, String, bool)> {
    ds.iter()
        .map(|d| {
            assert!(d.delivery_id.is_empty() && d.envelope.is_none());
            let n = d.notice.as_ref().expect("a notice");
            (n.id.clone(), n.message.clone(), n.cancelled)
        })
        .collect()
}

async fn changed(feed: &mut NoticeFeed) -> Vec<Delivery> {
    tokio::time::timeout(Duration::from_secs(10), feed.changed())
        .await
        .expect("a change within 10 s")
        .expect("the gateway is there")
}

#[tokio::test]
async fn feeds_hear_of_announcements_and_cancellations() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let gw = gateway(dir.path()).await?;
    let now = now_micros();

    let mut following = gw.notice_feed().await;
    assert!(following.initial().is_empty());

    let w = gw
        .announce_maintenance(now + HOUR, now + 3 * HOUR, "  Bảo trì định kỳ ", true)
        .await?;
    assert_eq!(w.message, "Bảo trì định kỳ");
    let id = w.id.to_string();
    assert_eq!(
        told(&changed(&mut following).await),
        [(id.clone(), w.message.clone(), false)]
    );
    // A new call starts with it; the list and the dashboard see it.
    let mut fresh = gw.notice_feed().await;
    assert_eq!(
        told(&fresh.initial()),
        [(id.clone(), w.message.clone(), false)]
    );
    assert!(fresh.initial().is_empty(), "only once");
    assert_eq!(gw.maintenance_windows().await?, std::slice::from_ref(&w));

    // Refused: a window already over, one ending before it starts.
    let e = gw
        .announce_maintenance(now - 3 * HOUR, now - HOUR, "x", true)
        .await
        .unwrap_err();
    assert_eq!(e.reason(), Reason::Malformed);
    let e = gw
        .announce_maintenance(now + 2 * HOUR, now + HOUR, "x", true)
        .await
        .unwrap_err();
    assert!(
        e.message().contains("end after it starts"),
        "{}",
        e.message()
    );

    // Cancelled: both feeds are told once; new calls and the list no more.
    let c = gw.cancel_maintenance(w.id).await?;
    assert!(c.is_cancelled());
    assert_eq!(
        told(&changed(&mut following).await),
        [(id.clone(), w.message.clone(), true)]
    );
    assert_eq!(
        told(&changed(&mut fresh).await),
        [(id.clone(), w.message.clone(), true)]
    );
    assert!(gw.notice_feed().await.initial().is_empty());
    assert!(gw.maintenance_windows().await?.is_empty());
    // Cancelling again changes nothing; an unknown window is NOT_FOUND.
    assert!(gw.cancel_maintenance(w.id).await?.is_cancelled());
    assert_eq!(
        gw.cancel_maintenance(w.id + 100)
            .await
            .unwrap_err()
            .reason(),
        Reason::NotFound
    );
    Ok(())
}

#[tokio::test]
async fn windows_written_behind_the_gateways_back_are_polled() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let gw = gateway(dir.path()).await?;
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let poller = tokio::spawn(lienthong_core::pipeline::watch_maintenance(
        gw.clone(),
        Duration::from_millis(100),
        async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        },
    ));
    let mut following = gw.notice_feed().await;
    // The command line writes the database through a store of its own.
    let other = lienthong_core::store::Store::connect(
        &format!("sqlite://{}", dir.path().join("db.sqlite").display()),
        lienthong_core::store::WriterId::main(),
    )
    .await?;
    let now = now_micros();
    // A rolling upgrade: the notice says no interruption is expected.
    let w = maintenance::announce(&other, now - HOUR, now + HOUR, "Đang nâng cấp", false).await?;
    assert!(!w.interruption_expected);
    let heard = changed(&mut following).await;
    assert_eq!(
        told(&heard),
        [(w.id.to_string(), "Đang nâng cấp".to_owned(), false)]
    );
    assert!(heard[0].notice.as_ref().unwrap().no_interruption_expected);
    maintenance::cancel(&other, w.id).await?;
    assert!(told(&changed(&mut following).await)[0].2);
    let _ = stop_tx.send(true);
    poller.await.expect("the poller stops");
    Ok(())
}

//! `lienthong bench`: the load generator's modes, small, as smoke
//! tests — each mode runs end to end, checks what it carried, and leaves
//! nothing behind.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use lienthong_e2e::amqp::Vhost;
use lienthong_e2e::*;

/// `bench amqp` plays the national exchange: 50 signed documents published
/// to `lienthong.documents`, through the gateway's inbound queue and
/// pipeline, out to the agencies' queues, each checked (known, right
/// recipient, once, payload unchanged); then raw RabbitMQ beside it. The
/// bench makes and deletes its own virtual host.
#[tokio::test(flavor = "multi_thread")]
async fn bench_amqp_carries_every_document_through_the_gateway_once() {
    // The bench makes its own virtual host; this one only shows that
    // RabbitMQ and rabbitmqctl are here (or says SKIPPED).
    let Some(probe) = Vhost::create_or_skip("bench") else {
        return;
    };
    drop(probe);
    let mut cmd = tokio::process::Command::new(bin_path());
    cmd.args([
        "bench",
        "amqp",
        "--docs",
        "50",
        "--concurrency",
        "4",
        "--json",
    ])
    .env("NO_COLOR", "1");
    // No inherited LIENTHONG_* variable may reach its configuration.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("LIENTHONG_") {
            cmd.env_remove(&k);
        }
    }
    let out = cmd.output().await.expect("run lienthong bench amqp");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let r: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("bench printed no JSON ({e}): {}", describe_output(&out)));
    assert!(out.status.success(), "{}", describe_output(&out));
    assert_eq!(r["mode"], "amqp", "{r:#}");
    assert_eq!(r["error_count"], 0, "{r:#}");
    assert_eq!(r["published"], 50, "{r:#}");
    assert_eq!(r["delivered"], 50, "{r:#}");
    assert_eq!(r["acknowledged"], 50, "{r:#}");
    let raw = &r["rabbitmq_baseline"];
    assert_eq!(raw["error_count"], 0, "{r:#}");
    assert_eq!(raw["delivered"], 50, "{r:#}");
    assert!(
        raw["gateway_delivered_ratio"].as_f64().unwrap() > 0.0,
        "{r:#}"
    );

    // Nothing left on the broker.
    let vhost = r["vhost"].as_str().expect("the report names its vhost");
    let list = std::process::Command::new("rabbitmqctl")
        .arg("list_vhosts")
        .output()
        .expect("rabbitmqctl list_vhosts");
    assert!(
        !String::from_utf8_lossy(&list.stdout)
            .lines()
            .any(|l| l.trim() == vhost),
        "the bench left its virtual host {vhost} behind"
    );
}

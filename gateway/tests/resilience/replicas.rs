//! Two replicas of one gateway on one PostgreSQL database, as a province
//! runs them behind a load balancer: an agency's `Receive` stream open on
//! one replica hears what the other accepts at once, not at the streams'
//! periodic look; acknowledgements on either replica go into the transfer
//! log, each replica's in a chain of its own, and the log verifies; a
//! second live process with a replica's name is refused, and so is a
//! replica with other routes.

use std::time::{Duration, Instant};

use lienthong_testkit::*;
use tokio_stream::StreamExt;

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_on_one_replica_hears_what_the_other_accepts_at_once() {
    // The streams' own look comes every quarter of redelivery_after:
    // 150 s here, so only the replicas' notices can bring documents sooner.
    let opts = GatewayOptions {
        backend: Backend::Postgres,
        extra_limits: "redelivery_after_secs = 600\n".to_owned(),
        ..Default::default()
    };
    let Some(first) = TestGateway::start_with("replicas", opts).await else {
        return;
    };
    let second = first.start_replica("replica-2").await;
    within(Duration::from_secs(120), "two replicas", async {
        let a = first.agency(A);
        let b = second.agency(B);
        let mut follow = b
            .follow()
            .await
            .expect("B follows its inbox on the second replica");
        // The stream is open before the first document is sent.
        tokio::time::sleep(Duration::from_millis(300)).await;

        let mut slowest = Duration::ZERO;
        for i in 0..20 {
            let sent = a
                .send_document(&[B], &format!("Công văn số {i}"), &[])
                .await
                .expect("A sends through the first replica");
            let started = Instant::now();
            let got = tokio::time::timeout(Duration::from_secs(10), follow.next())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "document {i} accepted by the first replica did not reach B's stream on the second within 10 s"
                    )
                })
                .expect("the stream is open")
                .expect("a delivery");
            slowest = slowest.max(started.elapsed());
            let env = decode_envelope(got.envelope.as_ref().expect("the delivery's envelope"));
            assert_eq!(env.message_id, sent.message_id(), "document {i}");
            b.ack(&got.delivery_id).await.expect("B acknowledges on the second replica");
        }
        eprintln!("the slowest of 20 documents reached the other replica's stream in {slowest:?}");

        // Each replica wrote to its own chain; the log verifies whole.
        let chains = first
            .sql_rows("SELECT chain, count(*) AS n FROM events GROUP BY chain ORDER BY chain")
            .await;
        let names: Vec<String> = chains.iter().map(|r| r.get::<String>("chain")).collect();
        assert!(
            names.contains(&"main".to_owned()) && names.contains(&"replica-2".to_owned()),
            "chains written: {names:?}"
        );
        let verify = second.run_cli(&["log", "verify"]).await;
        assert!(verify.status.success(), "{}", describe_output(&verify));

        // A second live process named replica-2 would extend its chain too:
        // refused, with what to do.
        let err = refused_serve(&second.dir, &second.config_path, "replica-2").await;
        assert!(
            err.contains("another live replica already serves as \"replica-2\"")
                && err.contains("gateway.replica"),
            "{err}"
        );

        // A third replica that routes a code the others do not: refused,
        // naming what differs.
        let other = second.dir.join("other-routes.toml");
        let mut text = std::fs::read_to_string(&second.config_path).expect("config");
        text.push_str("\n[[routes]]\npattern = \"#.H99\"\nto = \"local\"\n");
        std::fs::write(&other, text).expect("write");
        let err = refused_serve(&second.dir, &other, "replica-3").await;
        assert!(
            err.contains("runs with other routes ([[routes]]) than this one"),
            "{err}"
        );
    })
    .await;
    drop(second);
}

/// A replica stopped (SIGTERM, as a rolling restart does) while an agency
/// follows its inbox: it says NOT_SERVING, ends the stream at once with
/// `UNAVAILABLE` and a sentence telling the software to connect again, and
/// exits cleanly — it does not hang on the open stream until it is killed.
/// The agency reconnects to the other replica and gets what was sent
/// meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn a_stopping_replica_ends_its_streams_so_agencies_reconnect_elsewhere() {
    let opts = GatewayOptions {
        backend: Backend::Postgres,
        ..Default::default()
    };
    let Some(first) = TestGateway::start_with("draining", opts).await else {
        return;
    };
    let mut second = first.start_replica("replica-2").await;
    within(Duration::from_secs(120), "a stopping replica", async {
        let b = second.agency(B);
        let mut follow = b
            .follow()
            .await
            .expect("B follows its inbox on the second replica");
        let reader = tokio::spawn(async move {
            loop {
                match follow.next().await {
                    Some(Ok(_)) => continue,
                    Some(Err(status)) => return Some(status),
                    None => return None,
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let started = Instant::now();
        let (status, second) = tokio::task::spawn_blocking(move || {
            let status = second.stop();
            (status, second)
        })
        .await
        .expect("stop");
        let took = started.elapsed();
        let status = status.expect("the replica was running");
        assert!(
            status.success(),
            "the replica did not exit cleanly ({status}) in {took:?}:\n{}",
            second.log_tails(40)
        );
        assert!(
            took < Duration::from_secs(10),
            "the replica took {took:?} to stop with a stream open"
        );
        let ended = reader.await.expect("the reader");
        let ended = ended.expect("the stream ended with a status, not silently");
        assert_eq!(ended.code(), tonic::Code::Unavailable, "{ended:?}");
        assert!(
            ended.message().contains("connect again"),
            "{}",
            ended.message()
        );

        // B's software reconnects to the first replica.
        let sent = first
            .agency(A)
            .send_document(&[B], "Gửi trong lúc khởi động lại", &[])
            .await
            .expect("A sends");
        let got = receive_message(&first.agency(B), sent.message_id()).await;
        assert!(got.envelope.is_some());

        // The command line, given both replicas' addresses, passes over the
        // stopped one.
        let again = first
            .agency(A)
            .send_document(&[B], "Gửi lần nữa", &[])
            .await
            .expect("A sends");
        let servers = format!("http://{},http://{}", second.grpc_addr, first.grpc_addr);
        let out = first
            .run_cli(&["receive", "--as", B, "--server", &servers])
            .await;
        assert!(out.status.success(), "{}", describe_output(&out));
        let printed = String::from_utf8_lossy(&out.stdout);
        assert!(printed.contains(again.message_id()), "{printed}");
        drop(second);
    })
    .await;
}

/// Runs `serve` as replica `name` with `config`, which must refuse to start;
/// returns what it said.
async fn refused_serve(dir: &std::path::Path, config: &std::path::Path, name: &str) -> String {
    let mut serve = lienthong_command(&bin_path(), dir);
    serve
        .env("LIENTHONG_GATEWAY__REPLICA", name)
        .arg("--config")
        .arg(config)
        .arg("serve");
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::from(serve).output(),
    )
    .await
    .unwrap_or_else(|_| panic!("replica {name} did not give up within 30 s"))
    .expect("run lienthong");
    assert!(!out.status.success(), "{}", describe_output(&out));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

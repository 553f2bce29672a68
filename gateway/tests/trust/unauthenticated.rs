//! Refuse before you write: callers the gateway cannot identify are
//! answered (UNAUTHENTICATED, with a reason and a sentence), counted in the
//! metrics and summed in the transfer log — a line per peer per minute, not
//! one chained, fsynced event per call — and a peer is held to a rate
//! before identification, to a number of TLS handshakes at once, while the
//! agencies go on sending and receiving.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use lienthong_testkit::*;
use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// Where the attacker connects from in the tests that tell peers apart
/// (Linux answers all of 127.0.0.0/8 on the loopback interface).
const ELSEWHERE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// A client with a self-signed certificate the gateway has never seen, as
/// anyone on the network can make; `from` binds its connection's source
/// address.
fn stranger(gw: &TestGateway, from: Option<IpAddr>) -> Agency {
    let made = rcgen::generate_simple_self_signed(vec!["intruder.example".to_owned()]).unwrap();
    let ca = std::fs::read(gw.pki_dir.join("ca.pem")).unwrap();
    let tls = ClientTlsConfig::new()
        .domain_name("localhost")
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(
            made.cert.pem(),
            made.signing_key.serialize_pem(),
        ));
    let channel = Endpoint::from_shared(format!("https://{}", gw.grpc_addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .local_address(from)
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .connect_lazy();
    gw.agency(A).with_channel(channel)
}

/// Rows of a query on the gateway's database.
async fn rows(gw: &TestGateway, sql: &str) -> Vec<SqlRow> {
    gw.sql_rows(sql).await
}

/// The transfer log's events by kind.
async fn events_by_kind(gw: &TestGateway) -> HashMap<String, i64> {
    rows(gw, "SELECT kind, COUNT(*) AS n FROM events GROUP BY kind")
        .await
        .iter()
        .map(|r| {
            (
                r.try_get::<String>("kind").unwrap(),
                r.try_get::<i64>("n").unwrap(),
            )
        })
        .collect()
}

/// The `unauthenticated` lines: (actor, reason, detail).
async fn summaries(gw: &TestGateway) -> Vec<(String, String, String)> {
    let text = |r: &SqlRow, c: &str| r.try_get::<Option<String>>(c).unwrap().unwrap_or_default();
    rows(
        gw,
        "SELECT actor, reason, detail FROM events WHERE kind = 'unauthenticated' ORDER BY id",
    )
    .await
    .iter()
    .map(|r| (text(r, "actor"), text(r, "reason"), text(r, "detail")))
    .collect()
}

/// How many chained events `lienthong log verify` counts (the chain intact).
async fn chained_events(gw: &TestGateway) -> u64 {
    let out = gw.run_cli(&["log", "verify"]).await;
    assert!(out.status.success(), "{}", describe_output(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("intact: ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("`lienthong log verify` said: {text}"))
}

async fn metrics(gw: &TestGateway) -> String {
    let addr = gw.http_addr.expect("the test gateway serves HTTP");
    lienthong_testkit::amqp::http_get(addr, "/metrics").await.1
}

/// The value of one series (`name{labels}`), 0 when absent.
fn series(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// The call count a summary line starts with ("N call(s) from ...").
fn summed(detail: &str) -> u64 {
    detail
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a summary: {detail}"))
}

/// Hundreds of calls with a self-signed certificate: each is refused with
/// UNAUTHENTICATED and a reason, the metric counts every one, the transfer
/// log grows by summary lines only, and an agency sends, receives and
/// acknowledges meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_are_refused_without_writing_a_line_per_call() {
    strangers_knock(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_are_refused_without_writing_a_line_per_call_on_postgres() {
    strangers_knock(Backend::Postgres).await;
}

async fn strangers_knock(backend: Backend) {
    let opts = GatewayOptions {
        mtls: true,
        backend,
        ..Default::default()
    };
    let name = format!("unauthenticated_flood_{backend:?}").to_lowercase();
    let Some(mut gw) = TestGateway::start_with(&name, opts).await else {
        return;
    };
    const CALLS: usize = 400;
    within(Duration::from_secs(240), "the flood of strangers", async {
        let before = chained_events(&gw).await;
        let kinds_before = events_by_kind(&gw).await;

        // Four connections of strangers, a hundred calls each, while A
        // sends three documents to B.
        let flood = (0..4).map(|_| {
            let s = stranger(&gw, None);
            tokio::spawn(async move {
                let mut refusals = Vec::new();
                for i in 0..CALLS / 4 {
                    let r = if i % 2 == 0 {
                        s.lookup(B).await.map(|_| ())
                    } else {
                        s.receive_all(0).await.map(|_| ())
                    };
                    refusals.push(r.expect_err("a stranger must be refused"));
                }
                refusals
            })
        });
        let flood: Vec<_> = flood.collect();
        let a = gw.agency(A);
        let b = gw.agency(B);
        let mut sent = Vec::new();
        for n in 0..3 {
            let s = a
                .send_document(
                    &[B],
                    &format!("Công văn số {n} giữa lúc bị dò quét"),
                    &[AttachmentSpec::text("phu-luc.txt", "Phụ lục")],
                )
                .await
                .expect("A sends while strangers knock");
            sent.push(s.message_id().to_owned());
        }
        let mut refusals = Vec::new();
        for f in flood {
            refusals.extend(f.await.unwrap());
        }
        let got = b.receive_all(0).await.expect("B receives meanwhile");
        let mut ids: Vec<String> = got
            .iter()
            .map(|d| decode_envelope(d.envelope.as_ref().unwrap()).message_id)
            .collect();
        ids.sort();
        sent.sort();
        assert_eq!(ids, sent, "B has A's three documents");
        for d in &got {
            b.ack(&d.delivery_id).await.expect("B acknowledges");
        }

        // The client still hears why, call by call.
        assert_eq!(refusals.len(), CALLS);
        for e in &refusals {
            assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
            assert_eq!(reason_of(e).as_deref(), Some("PERMISSION_DENIED"), "{e:?}");
            assert!(
                e.message().contains("not issued by an authority"),
                "{}",
                e.message()
            );
        }

        // The log: A's and B's lines, no refusal line per stranger's call,
        // at most a summary line or two (one a minute).
        let kinds = events_by_kind(&gw).await;
        let grown = |k: &str| {
            kinds.get(k).copied().unwrap_or(0) - kinds_before.get(k).copied().unwrap_or(0)
        };
        let own: i64 = ["accepted", "routed", "delivered", "acknowledged"]
            .iter()
            .map(|k| grown(k))
            .sum();
        let after = chained_events(&gw).await;
        assert!(
            after - before <= own as u64 + 2,
            "the log grew by {} events for the agencies' {own} and {CALLS} strangers' calls: {kinds:?}",
            after - before
        );
        assert_eq!(grown("rejected"), 0, "{kinds:?}");
        assert!(grown("unauthenticated") <= 2, "{kinds:?}");

        // The metric counted each one.
        let text = metrics(&gw).await;
        assert_eq!(
            series(
                &text,
                "lienthong_calls_unauthenticated_total{reason=\"PERMISSION_DENIED\"}"
            ),
            CALLS as u64,
            "{text}"
        );
    })
    .await;

    // Stopping writes what the last minute summed: every refusal is in a
    // summary line of the peer.
    let status = gw.stop().expect("the gateway was running");
    assert!(status.success(), "lienthong serve stopped with {status}");
    let lines = summaries(&gw).await;
    assert!(!lines.is_empty(), "no summary line was written");
    let total: u64 = lines.iter().map(|(_, _, d)| summed(d)).sum();
    assert_eq!(total, CALLS as u64, "{lines:#?}");
    for (actor, reason, detail) in &lines {
        assert_eq!(actor, "peer 127.0.0.1", "{detail}");
        assert_eq!(reason, "PERMISSION_DENIED", "{detail}");
        assert!(
            detail.contains("from 127.0.0.1 refused before the caller was identified")
                && detail.contains("not issued by an authority"),
            "{detail}"
        );
    }
    let out = gw.run_cli(&["log", "verify"]).await;
    assert!(out.status.success(), "{}", describe_output(&out));
}

/// A peer over its rate is refused before identification (RATE_LIMITED,
/// counted, summed), and a peer opening handshakes beyond its bound has the
/// connections closed at once; another address is not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_noisy_peer_is_held_to_its_rate_and_handshakes_not_the_others() {
    let opts = GatewayOptions {
        mtls: true,
        extra_limits: "peer_calls_per_second = 0.5\npeer_burst = 30.0\npeer_handshakes = 4\n\
                       handshake_timeout_secs = 60\n"
            .into(),
        ..Default::default()
    };
    let Some(gw) = TestGateway::start_with("unauthenticated_peer", opts).await else {
        return;
    };
    within(Duration::from_secs(180), "the noisy peer", async {
        let noisy = stranger(&gw, Some(ELSEWHERE));
        let mut by_reason: HashMap<String, u64> = HashMap::new();
        for _ in 0..200 {
            let e = noisy.lookup(B).await.expect_err("refused");
            let reason = reason_of(&e).unwrap_or_default();
            match reason.as_str() {
                "PERMISSION_DENIED" => assert_eq!(e.code(), Code::Unauthenticated, "{e:?}"),
                "RATE_LIMITED" => {
                    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                    assert!(
                        e.message().contains("127.0.0.2") && e.message().contains("per second"),
                        "{}",
                        e.message()
                    );
                }
                other => panic!("unexpected reason {other}: {e:?}"),
            }
            *by_reason.entry(reason).or_default() += 1;
        }
        let denied = by_reason.get("PERMISSION_DENIED").copied().unwrap_or(0);
        let limited = by_reason.get("RATE_LIMITED").copied().unwrap_or(0);
        assert!(
            (30..=60).contains(&denied) && denied + limited == 200,
            "the peer's burst of 30 (and a few refilled) reach identification, the rest are held back: {by_reason:?}"
        );

        // The agencies, on another address, go on.
        let a = gw.agency(A);
        let b = gw.agency(B);
        let sent = a
            .send_document(&[B], "Công văn trong lúc một địa chỉ gọi dồn dập", &[])
            .await
            .expect("A is not held back by another peer's rate");
        let got = b.receive_all(0).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(
            decode_envelope(got[0].envelope.as_ref().unwrap()).message_id,
            sent.message_id()
        );

        let text = metrics(&gw).await;
        assert_eq!(
            series(&text, "lienthong_calls_unauthenticated_total{reason=\"RATE_LIMITED\"}"),
            limited,
            "{text}"
        );
        assert_eq!(
            series(
                &text,
                "lienthong_calls_unauthenticated_total{reason=\"PERMISSION_DENIED\"}"
            ),
            denied,
            "{text}"
        );

        // Handshakes: ten connections from 127.0.0.2 that never start TLS.
        // Four hold the peer's handshake places until they time out; the
        // others are closed at once, before a byte.
        let mut silent = Vec::new();
        for _ in 0..10 {
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            sock.bind(SocketAddr::new(ELSEWHERE, 0)).unwrap();
            silent.push(sock.connect(gw.grpc_addr).await.unwrap());
        }
        let mut closed = 0;
        for s in &mut silent {
            let mut buf = [0u8; 1];
            let read = tokio::time::timeout(
                Duration::from_secs(2),
                tokio::io::AsyncReadExt::read(s, &mut buf),
            )
            .await;
            if matches!(read, Ok(Ok(0)) | Ok(Err(_))) {
                closed += 1;
            }
        }
        assert_eq!(closed, 6, "all but the peer's 4 handshake places are closed at once");
        let text = metrics(&gw).await;
        assert_eq!(
            series(
                &text,
                "lienthong_connections_refused_total{reason=\"peer_handshakes\"}"
            ),
            6,
            "{text}"
        );
        // Meanwhile 127.0.0.1 completes its handshakes and calls.
        let fresh = Agency::with_tls(
            gw.grpc_addr,
            B,
            Arc::clone(&b.signer),
            b.chain.clone(),
            gw.client_tls(B),
        );
        assert!(fresh.receive_all(0).await.unwrap().len() == 1);
        drop(silent);
    })
    .await;
}

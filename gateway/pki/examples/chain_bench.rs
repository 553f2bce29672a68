//! What a document's signature costs to verify with its signer's chain
//! checked every time, and with the chain kept once verified
//! (`lienthong_pki::chain_cache`).
//!
//! ```sh
//! cargo run --release -p lienthong-pki --features dev --example chain_bench
//! cargo run --release -p lienthong-pki --features dev --example chain_bench -- --docs 20000 --signers 50
//! ```
//!
//! The PKI is shaped like the government CA's and the test suite's
//! OpenSSL one: an RSA-2048 root, an EC P-256 issuing CA, agency
//! certificates of either key, and a revocation list from each CA (so every
//! chain is also checked for revocation, as `trust.crls` makes the gateway
//! do). Each document is a different envelope; the signers take turns.

use std::time::{Duration, Instant};

use lienthong_pki::devpki::{DevCa, Issued, KeyType};
use lienthong_pki::signing::{
    SigningKey, TrustAnchors, VerifyOptions, sign_envelope, verify_envelope_signatures_with,
};
use lienthong_proto::v1::{Envelope, SignedEnvelope};
use rcgen::{CertificateRevocationListParams, Issuer, KeyIdMethod, KeyPair, SerialNumber};
use rustls_pki_types::{CertificateDer, UnixTime};
use time::OffsetDateTime;

fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("chain_bench: {what}: {e}");
    std::process::exit(1)
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == name) {
        Some(i) => match args.get(i + 1).map(|v| v.parse()) {
            Some(Ok(n)) => n,
            _ => fail(name, "give a number after it"),
        },
        None => default,
    }
}

/// An empty revocation list of `ca`, current for a week.
fn crl(ca: &DevCa) -> Vec<u8> {
    let now = OffsetDateTime::now_utc();
    let made = (|| {
        let key = KeyPair::from_pem(ca.key_pem())?;
        let issuer = Issuer::from_ca_cert_der(&CertificateDer::from(ca.cert_der()), key)?;
        CertificateRevocationListParams {
            this_update: now - time::Duration::hours(1),
            next_update: now + time::Duration::days(7),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: Vec::new(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&issuer)
    })();
    match made {
        Ok(c) => c.der().to_vec(),
        Err(e) => fail("a revocation list", e),
    }
}

fn timed(label: &str, docs: &[SignedEnvelope], anchors: &TrustAnchors) -> Duration {
    let t = Instant::now();
    for d in docs {
        let opts = VerifyOptions::at(UnixTime::now());
        if let Err(e) = verify_envelope_signatures_with(d, anchors, &opts) {
            fail(label, e.chain());
        }
    }
    let took = t.elapsed();
    let stats = anchors.chain_cache_stats();
    println!(
        "{label:<28} {:>8.1} µs / document   ({} documents, {} chains verified, {} reused)",
        took.as_secs_f64() * 1e6 / docs.len() as f64,
        docs.len(),
        stats.verified,
        stats.reused
    );
    took
}

fn main() {
    let n_docs = arg("--docs", 5_000);
    let n_signers = arg("--signers", 20).max(1);
    let now = OffsetDateTime::now_utc();
    let validity = (
        now - time::Duration::hours(1),
        now + time::Duration::days(365),
    );

    let root = DevCa::generate("Bench Root CA", KeyType::Rsa2048)
        .unwrap_or_else(|e| fail("the root", e.chain()));
    let mid = root
        .intermediate("Bench Issuing CA", KeyType::EcP256)
        .unwrap_or_else(|e| fail("the intermediate", e.chain()));
    let signers: Vec<(SigningKey, Issued)> = (0..n_signers)
        .map(|i| {
            let kt = if i % 2 == 0 {
                KeyType::Rsa2048
            } else {
                KeyType::EcP256
            };
            let issued = mid
                .issue_signing(
                    &format!("000.00.{i:02}.H35"),
                    &format!("Agency {i}"),
                    kt,
                    validity,
                )
                .unwrap_or_else(|e| fail("a signer", e.chain()));
            let key = SigningKey::from_pkcs8_pem(&issued.key_pem, None)
                .unwrap_or_else(|e| fail("a signer's key", e.chain()));
            (key, issued)
        })
        .collect();

    let dir = tempfile::tempdir().unwrap_or_else(|e| fail("a temporary directory", e));
    let files: Vec<_> = [(&root, "root.crl"), (&mid, "mid.crl")]
        .into_iter()
        .map(|(ca, name)| {
            let path = dir.path().join(name);
            std::fs::write(&path, crl(ca)).unwrap_or_else(|e| fail(name, e));
            path
        })
        .collect();
    let anchors = |capacity| {
        TrustAnchors::from_der_certs([root.cert_der()])
            .and_then(|a| a.with_crl_files(&files))
            .map(|a| a.with_chain_cache(capacity))
            .unwrap_or_else(|e| fail("the anchors", e.chain()))
    };

    let docs: Vec<SignedEnvelope> = (0..n_docs)
        .map(|i| {
            let (key, issued) = &signers[i % n_signers];
            let env = Envelope {
                message_id: format!("bench-{i}"),
                ..Default::default()
            };
            sign_envelope(&env, key, &issued.chain_der)
                .unwrap_or_else(|e| fail("signing", e.chain()))
        })
        .collect();

    println!(
        "{n_docs} documents from {n_signers} signers (RSA-2048 and EC P-256 leaves, EC P-256 \
         issuing CA, RSA-2048 root, a revocation list from each CA)"
    );
    // Twice each, alternated: the first pass also warms the caches of the
    // machine.
    let mut uncached = Vec::new();
    let mut cached = Vec::new();
    for _ in 0..2 {
        uncached.push(timed("chain verified every time", &docs, &anchors(0)));
        cached.push(timed("chain kept once verified", &docs, &anchors(10_000)));
    }
    let per_doc = |d: &[Duration]| {
        d.iter().map(Duration::as_secs_f64).fold(f64::MAX, f64::min) * 1e6 / n_docs as f64
    };
    let (u, c) = (per_doc(&uncached), per_doc(&cached));
    println!(
        "best of 2: {u:.1} µs → {c:.1} µs per document; the cache saves {:.1} µs ({:.0} %)",
        u - c,
        (u - c) / u * 100.0
    );
}

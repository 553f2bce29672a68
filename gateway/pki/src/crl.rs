//! Certificate revocation lists for document-signing certificates
//! (`trust.crls`).
//!
//! The operator lists CRL files (DER or PEM, as the CAs publish them). They
//! are read at start — an unreadable or forged file stops the gateway with a
//! sentence naming it — and read again when they change: whoever verifies a
//! signature asks for a [`CrlSnapshot`], and at most every few seconds that
//! call looks at the files' modification times (no watcher thread, no
//! dependency on inotify). A file that fails to load on a reload (half
//! written, corrupt) leaves the previous lists in force and is tried again at
//! the next look.
//!
//! The lists are checked against the trust anchors twice: when loaded, a CRL
//! that names a trust anchor as its issuer must be signed by that anchor's
//! key (a list from another CA that reuses the name is refused at once); and
//! when used, webpki checks every list's signature against the issuing
//! certificate of the chain it judges (lists issued by intermediate CAs can
//! only be checked then, since the intermediates come with the signatures).
//!
//! Fetching lists from the certificates' distribution points over HTTP is
//! not done here: the operator (or a cron job) puts current files in place.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use lienthong_types::error::{Error, OrErr, Reason, Result};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateRevocationListDer, SignatureVerificationAlgorithm};
use time::OffsetDateTime;
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use crate::algorithms::chain_algorithms;
use crate::der::der_next;

/// How often a verification may look at the files' modification times.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(5);

/// One loaded revocation list.
#[derive(Debug)]
pub struct LoadedCrl {
    source: PathBuf,
    issuer: String,
    /// The issuer Name as DER (tag and length included), to match
    /// certificates' issuers byte for byte as RFC 5280 asks.
    issuer_der: Vec<u8>,
    has_distribution_point: bool,
    this_update: i64,
    next_update: i64,
    crl_number: Option<String>,
    revoked: usize,
    webpki: webpki::CertRevocationList<'static>,
    /// A stale list is logged once, the first time a verification uses it,
    /// not at every signature.
    stale_logged: AtomicBool,
}

impl LoadedCrl {
    /// The file it was read from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The issuer's subject, e.g. `C=VN, O=…, CN=…`.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn this_update(&self) -> OffsetDateTime {
        to_datetime(self.this_update)
    }

    pub fn next_update(&self) -> OffsetDateTime {
        to_datetime(self.next_update)
    }

    /// The CRL number (decimal), when the list carries one.
    pub fn crl_number(&self) -> Option<&str> {
        self.crl_number.as_deref()
    }

    /// How many certificates the list revokes.
    pub fn revoked_count(&self) -> usize {
        self.revoked
    }

    /// Whether `now` (Unix seconds) is at or past nextUpdate.
    pub fn is_stale_at(&self, now: i64) -> bool {
        now >= self.next_update
    }

    /// Tells the operators (once per list read) that a verification relied
    /// on this list although it is past its nextUpdate.
    pub fn log_stale_use(&self) {
        if !self.stale_logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                file = %self.source.display(),
                issuer = %self.issuer,
                next_update = %self.next_update(),
                "a revocation list in use is past its nextUpdate: put a current one in place (trust.crls)"
            );
        }
    }

    /// The revocation entry of `serial` (the certificate's raw serial bytes).
    pub fn find_revoked(&self, serial: &[u8]) -> Option<RevokedEntry> {
        match self.webpki.find_serial(serial) {
            Ok(Some(r)) => Some(RevokedEntry {
                revocation_date: i64::try_from(r.revocation_date.as_secs()).unwrap_or(i64::MAX),
                reason: r.reason_code.map(reason_name),
            }),
            _ => None,
        }
    }
}

/// What a list says about a revoked certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedEntry {
    pub revocation_date: i64,
    pub reason: Option<&'static str>,
}

fn reason_name(r: webpki::RevocationReason) -> &'static str {
    use webpki::RevocationReason as R;
    match r {
        R::Unspecified => "unspecified",
        R::KeyCompromise => "keyCompromise",
        R::CaCompromise => "cACompromise",
        R::AffiliationChanged => "affiliationChanged",
        R::Superseded => "superseded",
        R::CessationOfOperation => "cessationOfOperation",
        R::CertificateHold => "certificateHold",
        R::RemoveFromCrl => "removeFromCRL",
        R::PrivilegeWithdrawn => "privilegeWithdrawn",
        R::AaCompromise => "aACompromise",
    }
}

/// Numbers every snapshot read from files, in the order they were read:
/// verified chains remember the one they were judged under
/// ([`crate::chain_cache`]), and a reload is a new number.
static GENERATIONS: AtomicU64 = AtomicU64::new(1);

/// The lists in force at one moment. Cheap to hold: verifications share it.
#[derive(Debug, Default)]
pub struct CrlSnapshot {
    crls: Vec<LoadedCrl>,
    generation: u64,
}

impl CrlSnapshot {
    pub fn crls(&self) -> &[LoadedCrl] {
        &self.crls
    }

    /// Which reading of the files this is: every load or reload has a
    /// number greater than all before it (0: an empty default).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The earliest nextUpdate (Unix seconds) of the lists whose issuer is
    /// `issuer_der` (DER Name): webpki may judge a certificate of that
    /// issuer by any of them.
    pub fn next_update_of_issuer(&self, issuer_der: &[u8]) -> Option<i64> {
        self.crls
            .iter()
            .filter(|c| c.issuer_der == issuer_der)
            .map(|c| c.next_update)
            .min()
    }

    pub fn is_empty(&self) -> bool {
        self.crls.is_empty()
    }

    /// The list of the CA whose subject is `issuer_der` (DER Name). A list
    /// without an issuing distribution point (covering everything the CA
    /// issued) is preferred, as webpki would use it for any certificate.
    pub fn for_issuer(&self, issuer_der: &[u8]) -> Option<&LoadedCrl> {
        let mut candidates = self.crls.iter().filter(|c| c.issuer_der == issuer_der);
        let first = candidates.next()?;
        if !first.has_distribution_point {
            return Some(first);
        }
        candidates
            .find(|c| !c.has_distribution_point)
            .or(Some(first))
    }

    pub fn webpki_lists(&self) -> Vec<&webpki::CertRevocationList<'static>> {
        self.crls.iter().map(|c| &c.webpki).collect()
    }
}

/// A trust anchor's name and key, to check lists that claim to be its own.
#[derive(Debug, Clone)]
struct AnchorKey {
    subject_der: Vec<u8>,
    spki_der: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

#[derive(Debug)]
struct PollState {
    last_look: Instant,
    stamps: Vec<Option<Stamp>>,
}

/// The files of `trust.crls` and the lists last read from them.
#[derive(Debug)]
pub struct CrlSet {
    paths: Vec<PathBuf>,
    anchors: Vec<AnchorKey>,
    current: RwLock<Arc<CrlSnapshot>>,
    poll: Mutex<PollState>,
    poll_every: Duration,
}

impl CrlSet {
    /// Reads every file; an error names the file and says what to do.
    /// `anchors` are the certificates (DER) of the trust anchors the lists
    /// are checked against, as a `&TrustAnchors` gives them.
    pub fn load<'a>(
        paths: &[PathBuf],
        anchors: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<CrlSet> {
        let anchors = anchor_keys(anchors);
        let stamps = paths.iter().map(|p| stamp(p)).collect();
        let snapshot = load_all(paths, &anchors)?;
        for c in &snapshot.crls {
            tracing::info!(
                file = %c.source.display(),
                issuer = %c.issuer,
                this_update = %c.this_update(),
                next_update = %c.next_update(),
                revoked = c.revoked,
                "revocation list loaded"
            );
        }
        Ok(CrlSet {
            paths: paths.to_vec(),
            anchors,
            current: RwLock::new(Arc::new(snapshot)),
            poll: Mutex::new(PollState {
                last_look: Instant::now(),
                stamps,
            }),
            poll_every: DEFAULT_POLL_INTERVAL,
        })
    }

    /// How often the files' modification times are looked at (tests use
    /// zero).
    pub fn with_poll_interval(mut self, every: Duration) -> CrlSet {
        self.poll_every = every;
        self
    }

    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// The lists in force, re-read first if a file changed since the last
    /// look and the last look is older than the poll interval.
    pub fn snapshot(&self) -> Arc<CrlSnapshot> {
        self.reload_if_changed();
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn reload_if_changed(&self) {
        // Another thread is already looking: use what is in force.
        let Ok(mut poll) = self.poll.try_lock() else {
            return;
        };
        if poll.last_look.elapsed() < self.poll_every {
            return;
        }
        poll.last_look = Instant::now();
        let stamps: Vec<Option<Stamp>> = self.paths.iter().map(|p| stamp(p)).collect();
        if stamps == poll.stamps {
            return;
        }
        match load_all(&self.paths, &self.anchors) {
            Ok(snapshot) => {
                tracing::info!(
                    lists = snapshot.crls.len(),
                    "the revocation lists (trust.crls) changed on disk and were read again"
                );
                let new = Arc::new(snapshot);
                match self.current.write() {
                    Ok(mut g) => *g = new,
                    Err(p) => *p.into_inner() = new,
                }
                poll.stamps = stamps;
            }
            Err(e) => {
                // Keep the stamps as they were, so the next look tries again
                // (a file being copied in place is often caught half-written).
                tracing::warn!(
                    error = %e.chain(),
                    "a revocation list (trust.crls) changed but cannot be read; the lists read before stay in force"
                );
            }
        }
    }
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let inode = 0;
    Some(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        inode,
    })
}

fn anchor_keys<'a>(anchors: impl IntoIterator<Item = &'a [u8]>) -> Vec<AnchorKey> {
    anchors
        .into_iter()
        .filter_map(|der| {
            let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
            Some(AnchorKey {
                subject_der: cert.subject().as_raw().to_vec(),
                spki_der: cert.public_key().raw.to_vec(),
            })
        })
        .collect()
}

fn load_all(paths: &[PathBuf], anchors: &[AnchorKey]) -> Result<CrlSnapshot> {
    let mut crls: Vec<LoadedCrl> = Vec::new();
    for path in paths {
        for (i, der) in read_crl_file(path)?.into_iter().enumerate() {
            let crl = load_one(path, &der, anchors).map_err(|msg| {
                Error::malformed(format!(
                    "trust.crls: {} (revocation list {}): {msg}",
                    path.display(),
                    i + 1
                ))
            })?;
            // Two lists of the same CA and scope (an old copy left beside a
            // new one): keep the newer, or webpki would use whichever came
            // first.
            if let Some(old) = crls.iter_mut().find(|c| {
                c.issuer_der == crl.issuer_der
                    && !c.has_distribution_point
                    && !crl.has_distribution_point
            }) {
                if crl.this_update > old.this_update {
                    *old = crl;
                }
                continue;
            }
            crls.push(crl);
        }
    }
    Ok(CrlSnapshot {
        crls,
        generation: GENERATIONS.fetch_add(1, Ordering::Relaxed),
    })
}

fn read_crl_file(path: &Path) -> Result<Vec<Vec<u8>>> {
    let bytes = std::fs::read(path).or_err_with(Reason::Malformed, |e| {
        format!(
            "trust.crls: cannot read {}: {e}; check the path and that the gateway's user may read it",
            path.display()
        )
    })?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Ok(vec![bytes]);
    }
    let lists: std::result::Result<Vec<Vec<u8>>, _> =
        CertificateRevocationListDer::pem_slice_iter(&bytes)
            .map(|r| r.map(|c| c.to_vec()))
            .collect();
    match lists {
        Ok(l) if !l.is_empty() => Ok(l),
        Ok(_) => Err(Error::malformed(format!(
            "trust.crls: {} holds no revocation list (no -----BEGIN X509 CRL----- block); give the \
             CRL file the CA publishes, DER or PEM",
            path.display()
        ))),
        Err(e) => Err(Error::malformed(format!(
            "trust.crls: {} is not readable PEM ({e}); give the CRL file the CA publishes, DER or PEM",
            path.display()
        ))),
    }
}

fn load_one(
    path: &Path,
    der: &[u8],
    anchors: &[AnchorKey],
) -> std::result::Result<LoadedCrl, String> {
    let parsed = match CertificateRevocationList::from_der(der) {
        Ok(([], c)) => c,
        Ok(_) => return Err("trailing bytes after the revocation list".to_owned()),
        Err(e) => return Err(format!("not an X.509 revocation list ({e})")),
    };
    let owned = webpki::OwnedCertRevocationList::from_der(der).map_err(|e| {
        format!(
            "the revocation list cannot be used ({e}); a version 2 CRL with a nextUpdate is needed"
        )
    })?;
    let issuer = parsed.issuer().to_string();
    let issuer_der = parsed.issuer().as_raw().to_vec();
    let Some(next_update) = parsed.next_update() else {
        return Err("the revocation list has no nextUpdate".to_owned());
    };
    let has_distribution_point = parsed
        .extensions()
        .iter()
        .any(|e| e.oid.to_id_string() == "2.5.29.28");

    let same_name: Vec<&AnchorKey> = anchors
        .iter()
        .filter(|a| a.subject_der == issuer_der)
        .collect();
    if !same_name.is_empty()
        && !same_name
            .iter()
            .any(|a| verify_signed_by(der, &a.spki_der, &all_algorithms()))
    {
        return Err(format!(
            "the list names the trust anchor {issuer} as its issuer but is not signed by that \
             anchor's key: it comes from another CA with the same name, or it was altered; get \
             the list from the CA again"
        ));
    }
    if same_name.is_empty() {
        tracing::debug!(
            file = %path.display(),
            issuer = %issuer,
            "a revocation list of a CA that is not a trust anchor (an intermediate): its signature is checked when a chain through that CA is verified"
        );
    }
    Ok(LoadedCrl {
        source: path.to_path_buf(),
        issuer,
        issuer_der,
        has_distribution_point,
        this_update: parsed.last_update().timestamp(),
        next_update: next_update.timestamp(),
        crl_number: parsed.crl_number().map(|n| n.to_string()),
        revoked: parsed.iter_revoked_certificates().count(),
        webpki: owned.into(),
        stale_logged: AtomicBool::new(false),
    })
}

/// Every algorithm a list's signature may use when it is checked at load
/// (SHA-1 included: at load the question is only "did this CA sign it";
/// whether SHA-1 is acceptable is decided when the list is used).
fn all_algorithms() -> Vec<&'static dyn SignatureVerificationAlgorithm> {
    let mut algs = chain_algorithms(false);
    algs.extend(chain_algorithms(true));
    algs
}

/// Whether the signed DER structure (a CRL or certificate: SEQUENCE of
/// to-be-signed, AlgorithmIdentifier, BIT STRING) is signed by the key of
/// `spki_der`.
pub fn verify_signed_by(
    der: &[u8],
    spki_der: &[u8],
    algs: &[&'static dyn SignatureVerificationAlgorithm],
) -> bool {
    let Some((0x30, _, body, [])) = der_next(der) else {
        return false;
    };
    let Some((0x30, tbs, _, rest)) = der_next(body) else {
        return false;
    };
    let Some((0x30, _, sig_alg, rest)) = der_next(rest) else {
        return false;
    };
    let Some((0x03, _, sig_bits, [])) = der_next(rest) else {
        return false;
    };
    let Some((0, sig)) = sig_bits.split_first() else {
        return false;
    };
    let Some((0x30, _, spki, _)) = der_next(spki_der) else {
        return false;
    };
    let Some((0x30, _, key_alg, rest)) = der_next(spki) else {
        return false;
    };
    let Some((0x03, _, key_bits, _)) = der_next(rest) else {
        return false;
    };
    let Some((0, key)) = key_bits.split_first() else {
        return false;
    };
    algs.iter()
        .filter(|a| {
            a.public_key_alg_id().as_ref() == key_alg && a.signature_alg_id().as_ref() == sig_alg
        })
        .any(|a| a.verify_signature(key, tbs, sig).is_ok())
}

fn to_datetime(unix: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(unix).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Where a certificate's revocation status came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationInfo {
    /// `crl:` and the path of the file in `trust.crls`.
    pub source: String,
    /// The list's issuer (the certificate's CA).
    pub issuer: String,
    pub this_update: OffsetDateTime,
    pub next_update: OffsetDateTime,
    /// The list's CRL number (decimal), when it has one.
    pub crl_number: Option<String>,
    /// The list was past its nextUpdate at the check (accepted under
    /// `trust.stale_crl = "warn"`).
    pub stale: bool,
}

impl RevocationInfo {
    pub(crate) fn of(crl: &LoadedCrl, now: i64) -> RevocationInfo {
        RevocationInfo {
            source: format!("crl:{}", crl.source().display()),
            issuer: crl.issuer().to_owned(),
            this_update: crl.this_update(),
            next_update: crl.next_update(),
            crl_number: crl.crl_number().map(str::to_owned),
            stale: crl.is_stale_at(now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devpki::tests::valid_now;
    use crate::devpki::{DevCa, Issued, KeyType};
    use crate::signing::{
        CertPolicy, SigningKey, StaleCrlPolicy, TrustAnchors, VerifiedSigner, pae, sign_envelope,
        verify_signature,
    };
    use lienthong_proto::v1::Envelope;
    use rcgen::{
        CertificateRevocationListParams, Issuer, KeyIdMethod, KeyPair, RevocationReason,
        RevokedCertParams, SerialNumber,
    };
    use rustls_pki_types::{CertificateDer, UnixTime};
    use time::Duration as Days;

    fn ok<T>(r: Result<T>) -> T {
        match r {
            Ok(v) => v,
            Err(e) => panic!("{}", e.chain()),
        }
    }

    fn err<T: std::fmt::Debug>(r: Result<T>) -> Error {
        match r {
            Ok(v) => panic!("expected a refusal, got {v:?}"),
            Err(e) => e,
        }
    }

    fn serial(issued: &[u8]) -> Vec<u8> {
        match x509_parser::parse_x509_certificate(issued) {
            Ok((_, c)) => c.raw_serial().to_vec(),
            Err(e) => panic!("{e}"),
        }
    }

    /// A CRL signed by `ca` (its devpki key) revoking `revoked` at the
    /// given times.
    fn crl(
        ca: &DevCa,
        revoked: &[(&[u8], OffsetDateTime)],
        this_update: OffsetDateTime,
        next_update: OffsetDateTime,
    ) -> Vec<u8> {
        let made = (|| {
            let key = KeyPair::from_pem(ca.key_pem())?;
            let issuer = Issuer::from_ca_cert_der(&CertificateDer::from(ca.cert_der()), key)?;
            CertificateRevocationListParams {
                this_update,
                next_update,
                crl_number: SerialNumber::from(7u64),
                issuing_distribution_point: None,
                revoked_certs: revoked
                    .iter()
                    .map(|(cert, at)| RevokedCertParams {
                        serial_number: SerialNumber::from_slice(&serial(cert)),
                        revocation_time: *at,
                        reason_code: Some(RevocationReason::KeyCompromise),
                        invalidity_date: None,
                    })
                    .collect(),
                key_identifier_method: KeyIdMethod::Sha256,
            }
            .signed_by(&issuer)
        })();
        match made {
            Ok(c) => c.der().to_vec(),
            Err(e) => panic!("{e}"),
        }
    }

    fn fresh() -> (OffsetDateTime, OffsetDateTime) {
        let now = OffsetDateTime::now_utc();
        (now - Days::hours(1), now + Days::days(7))
    }

    fn stale() -> (OffsetDateTime, OffsetDateTime) {
        let now = OffsetDateTime::now_utc();
        (now - Days::days(10), now - Days::days(1))
    }

    fn leaf(ca: &DevCa, name: &str) -> Issued {
        ok(ca.issue_signing("000.00.01.H35", name, KeyType::EcP256, valid_now()))
    }

    fn verify(issued: &Issued, anchors: &TrustAnchors) -> Result<VerifiedSigner> {
        let key = ok(SigningKey::from_pkcs8_pem(&issued.key_pem, None));
        let signed = ok(sign_envelope(&Envelope::default(), &key, &issued.chain_der));
        let msg = pae(&signed.payload_type, &signed.payload);
        verify_signature(&signed.signatures[0], &msg, anchors, UnixTime::now())
    }

    struct World {
        dir: tempfile::TempDir,
    }

    impl World {
        fn new() -> World {
            World {
                dir: ok(tempfile::tempdir().map_err(Error::from)),
            }
        }

        fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
            let p = self.dir.path().join(name);
            ok(std::fs::write(&p, bytes).map_err(Error::from));
            p
        }

        fn anchors(&self, root: &DevCa, policy: CertPolicy, crls: &[PathBuf]) -> TrustAnchors {
            let a = ok(TrustAnchors::from_der_certs([root.cert_der()])).with_policy(policy);
            ok(a.with_crl_files(crls))
        }
    }

    #[test]
    fn a_revoked_leaf_is_refused_naming_serial_date_and_list() {
        let w = World::new();
        let root = ok(DevCa::generate("Test Root CA", KeyType::EcP256));
        let revoked = leaf(&root, "Sở Nội vụ");
        let good = leaf(&root, "Sở Tài chính");
        let at = OffsetDateTime::now_utc() - Days::days(2);
        let (tu, nu) = fresh();
        let file = w.write("root.crl", &crl(&root, &[(&revoked.cert_der, at)], tu, nu));
        let anchors = w.anchors(&root, CertPolicy::default(), &[file]);

        let e = err(verify(&revoked, &anchors));
        assert_eq!(e.reason(), Reason::CertificateRevoked, "{}", e.message());
        let m = e.message();
        assert!(m.contains("CN=Sở Nội vụ"), "{m}");
        assert!(m.contains(&hex::encode(serial(&revoked.cert_der))), "{m}");
        let day = at.date().to_string();
        assert!(m.contains(&day), "{m} lacks {day}");
        assert!(m.contains("keyCompromise") && m.contains("root.crl"), "{m}");

        let v = ok(verify(&good, &anchors));
        assert!(v.warnings.is_empty(), "{:?}", v.warnings);
        let r = v.revocation.unwrap_or_else(|| panic!("no revocation info"));
        assert!(r.source.starts_with("crl:") && r.source.ends_with("root.crl"));
        assert!(r.issuer.contains("CN=Test Root CA"), "{}", r.issuer);
        assert_eq!(r.crl_number.as_deref(), Some("7"));
        assert_eq!(r.next_update.unix_timestamp(), nu.unix_timestamp());
        assert!(!r.stale);
    }

    #[test]
    fn a_revoked_intermediate_revokes_what_it_issued() {
        let w = World::new();
        let root = ok(DevCa::generate("Test Root CA", KeyType::EcP256));
        let mid = ok(root.intermediate("Test Issuing CA", KeyType::EcP256));
        let issued = leaf(&mid, "VP");
        let (tu, nu) = fresh();
        let at = OffsetDateTime::now_utc() - Days::hours(3);
        let arl = w.write("root.crl", &crl(&root, &[(mid.cert_der(), at)], tu, nu));
        let mid_crl = w.write("mid.crl", &crl(&mid, &[], tu, nu));
        let anchors = w.anchors(
            &root,
            CertPolicy::default(),
            &[arl.clone(), mid_crl.clone()],
        );
        let e = err(verify(&issued, &anchors));
        assert_eq!(e.reason(), Reason::CertificateRevoked, "{}", e.message());
        assert!(
            e.message()
                .contains("intermediate CA certificate of CN=Test Issuing CA"),
            "{}",
            e.message()
        );

        // With the intermediate in good standing, both lists are used and the
        // leaf's own list is the one reported.
        let arl = w.write("root.crl", &crl(&root, &[], tu, nu));
        let anchors = w.anchors(&root, CertPolicy::default(), &[arl, mid_crl]);
        let v = ok(verify(&issued, &anchors));
        assert!(v.warnings.is_empty(), "{:?}", v.warnings);
        assert!(
            v.revocation
                .is_some_and(|r| r.issuer.contains("CN=Test Issuing CA"))
        );
    }

    #[test]
    fn a_stale_list_is_refused_or_warned_about_as_configured() {
        let w = World::new();
        let root = ok(DevCa::generate("Test Root CA", KeyType::EcP256));
        let good = leaf(&root, "VP");
        let revoked = leaf(&root, "Old");
        let (tu, nu) = stale();
        let file = w.write(
            "stale.pem",
            // PEM too: what many CAs publish.
            crate::devpki::der_to_pem(&crl(&root, &[(&revoked.cert_der, tu)], tu, nu))
                .replace("CERTIFICATE", "X509 CRL")
                .as_bytes(),
        );

        let refuse = CertPolicy {
            stale_crl: StaleCrlPolicy::Refuse,
            ..CertPolicy::default()
        };
        let e = err(verify(
            &good,
            &w.anchors(&root, refuse, std::slice::from_ref(&file)),
        ));
        assert_eq!(e.reason(), Reason::UntrustedCertificate, "{}", e.message());
        let m = e.message();
        assert!(
            m.contains("the revocation list of") && m.contains("CN=Test Root CA"),
            "{m}"
        );
        assert!(m.contains(&format!("expired on {}", nu.date())), "{m}");
        assert!(
            m.contains("cannot tell whether the certificate of CN=VP"),
            "{m}"
        );

        let warn = CertPolicy {
            stale_crl: StaleCrlPolicy::Warn,
            ..CertPolicy::default()
        };
        let anchors = w.anchors(&root, warn, &[file]);
        let v = ok(verify(&good, &anchors));
        assert_eq!(v.warnings.len(), 1, "{:?}", v.warnings);
        assert!(v.warnings[0].contains("expired on"), "{}", v.warnings[0]);
        assert!(v.revocation.is_some_and(|r| r.stale));
        // What the old list does say still counts.
        assert_eq!(
            err(verify(&revoked, &anchors)).reason(),
            Reason::CertificateRevoked
        );
    }

    #[test]
    fn lists_of_other_cas_never_judge_a_certificate() {
        let w = World::new();
        let root = ok(DevCa::generate("Test Root CA", KeyType::EcP256));
        let issued = leaf(&root, "VP");
        let (tu, nu) = fresh();

        // Another CA listing the same serial: not the issuer, ignored.
        let other = ok(DevCa::generate("Some Other CA", KeyType::EcP256));
        let file = w.write("other.crl", &crl(&other, &[(&issued.cert_der, tu)], tu, nu));
        let v = ok(verify(
            &issued,
            &w.anchors(&root, CertPolicy::default(), std::slice::from_ref(&file)),
        ));
        assert!(v.revocation.is_none());
        assert!(
            v.warnings.iter().any(|x| x.contains("was not checked")),
            "{:?}",
            v.warnings
        );
        // ... and under require_revocation that is a refusal.
        let strict = CertPolicy {
            require_revocation: true,
            ..CertPolicy::default()
        };
        let e = err(verify(&issued, &w.anchors(&root, strict, &[file])));
        assert_eq!(e.reason(), Reason::UntrustedCertificate);
        assert!(
            e.message().contains("trust.require_revocation"),
            "{}",
            e.message()
        );

        // A CA with the anchor's very name but another key: refused at load,
        // naming the file.
        let impostor = ok(DevCa::generate("Test Root CA", KeyType::EcP256));
        let forged = w.write("forged.crl", &crl(&impostor, &[], tu, nu));
        let e = err(ok(TrustAnchors::from_der_certs([root.cert_der()])).with_crl_files(&[forged]));
        assert!(
            e.message().contains("forged.crl") && e.message().contains("not signed by that"),
            "{}",
            e.message()
        );

        // An intermediate's list signed by an impostor of the intermediate:
        // caught when used, the signature is refused.
        let mid = ok(root.intermediate("Test Issuing CA", KeyType::EcP256));
        let fake_mid = ok(root.intermediate("Test Issuing CA", KeyType::EcP256));
        let under_mid = leaf(&mid, "VP");
        let bad = w.write("mid.crl", &crl(&fake_mid, &[], tu, nu));
        let e = err(verify(
            &under_mid,
            &w.anchors(&root, CertPolicy::default(), &[bad]),
        ));
        assert_eq!(e.reason(), Reason::UntrustedCertificate, "{}", e.message());
        assert!(
            e.message().contains("mid.crl") && e.message().contains("cannot be used"),
            "{}",
            e.message()
        );
    }

    #[test]
    fn require_revocation_without_any_list_refuses() {
        let root = ok(DevCa::generate("Test Root CA", KeyType::EcP256));
        let issued = leaf(&root, "VP");
        let strict = CertPolicy {
            require_revocation: true,
            ..CertPolicy::default()
        };
        let anchors = ok(TrustAnchors::from_der_certs([root.cert_der()])).with_policy(strict);
        let e = err(verify(&issued, &anchors));
        assert_eq!(e.reason(), Reason::UntrustedCertificate);
        assert!(e.message().contains("trust.crls"), "{}", e.message());

        // The default records it and accepts.
        let lax = ok(TrustAnchors::from_der_certs([root.cert_der()]));
        let v = ok(verify(&issued, &lax));
        assert!(v.revocation.is_none());
        assert!(
            v.warnings[0].contains("was not checked"),
            "{:?}",
            v.warnings
        );
    }

    #[test]
    fn lists_are_read_again_when_the_files_change() {
        let w = World::new();
        let root = ok(DevCa::generate("Test Root CA", KeyType::EcP256));
        let issued = leaf(&root, "VP");
        let (tu, nu) = fresh();
        let file = w.write("root.crl", &crl(&root, &[], tu, nu));
        let base = ok(TrustAnchors::from_der_certs([root.cert_der()]));
        let set =
            ok(CrlSet::load(std::slice::from_ref(&file), &base)).with_poll_interval(Duration::ZERO);
        let anchors = base.with_crls(set);
        let shared = anchors.clone();
        assert!(verify(&issued, &anchors).is_ok());
        assert!(verify(&issued, &shared).is_ok());
        let stats = anchors.chain_cache_stats();
        assert_eq!(
            (stats.verified, stats.reused),
            (1, 1),
            "kept for both clones"
        );

        // The CA revokes it; the operator copies the new list in place.
        w.write("root.crl", &crl(&root, &[(&issued.cert_der, tu)], tu, nu));
        assert_eq!(
            err(verify(&issued, &shared)).reason(),
            Reason::CertificateRevoked,
            "a clone sees the reload, and the chain kept before it is dropped"
        );
        assert_eq!(anchors.chain_cache_stats().entries, 0);

        // A half-written copy does not undo the revocation.
        w.write("root.crl", b"\x30\x82\x01");
        assert_eq!(
            err(verify(&issued, &anchors)).reason(),
            Reason::CertificateRevoked
        );
        assert_eq!(anchors.crls().map(|s| s.crls().len()), Some(1));
    }

    /// Another certificate for `issued`'s key, with its own serial.
    fn same_key_again(ca: &DevCa, issued: &Issued) -> Issued {
        let made = (|| {
            let key = KeyPair::from_pem(&issued.key_pem)?;
            let ca_key = KeyPair::from_pem(ca.key_pem())?;
            let issuer = Issuer::from_ca_cert_der(&CertificateDer::from(ca.cert_der()), ca_key)?;
            let mut params = rcgen::CertificateParams::default();
            (params.not_before, params.not_after) = valid_now();
            params.serial_number = Some(SerialNumber::from(0x5a5a_5a5a_u64));
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "VP");
            params.is_ca = rcgen::IsCa::ExplicitNoCa;
            params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
            params.use_authority_key_identifier_extension = true;
            params.signed_by(&key, &issuer)
        })();
        match made {
            Ok(c) => Issued {
                cert_der: c.der().to_vec(),
                cert_pem: c.pem(),
                key_pem: issued.key_pem.clone(),
                chain_der: vec![c.der().to_vec()],
            },
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn a_kept_chain_never_vouches_for_another_certificate_of_the_same_key() {
        let w = World::new();
        let root = ok(DevCa::generate("Test Root CA", KeyType::EcP256));
        let renewed = leaf(&root, "VP");
        let revoked = same_key_again(&root, &renewed);
        let (tu, nu) = fresh();
        let file = w.write("root.crl", &crl(&root, &[(&revoked.cert_der, tu)], tu, nu));
        let anchors = w.anchors(&root, CertPolicy::default(), &[file]);
        for _ in 0..2 {
            let v = ok(verify(&renewed, &anchors));
            assert_eq!(
                v.spki_sha256,
                ok(crate::signing::spki_sha256(&revoked.cert_der))
            );
            assert_eq!(
                err(verify(&revoked, &anchors)).reason(),
                Reason::CertificateRevoked
            );
        }
        let stats = anchors.chain_cache_stats();
        assert_eq!(
            (stats.verified, stats.reused, stats.entries),
            (3, 1, 1),
            "{stats:?}"
        );
    }

    #[test]
    fn a_kept_chain_ends_at_the_lists_next_update_and_stale_lists_keep_nothing() {
        let w = World::new();
        let root = ok(DevCa::generate("Test Root CA", KeyType::EcP256));
        let issued = leaf(&root, "VP");
        let now = OffsetDateTime::now_utc();
        let next = now + Days::days(2);
        let file = w.write("root.crl", &crl(&root, &[], now - Days::hours(1), next));
        let anchors = w.anchors(&root, CertPolicy::default(), &[file]);
        let at = |t: OffsetDateTime| {
            UnixTime::since_unix_epoch(std::time::Duration::from_secs(t.unix_timestamp() as u64))
        };
        let verify_at = |t| {
            let key = ok(SigningKey::from_pkcs8_pem(&issued.key_pem, None));
            let signed = ok(sign_envelope(&Envelope::default(), &key, &issued.chain_der));
            let msg = pae(&signed.payload_type, &signed.payload);
            verify_signature(&signed.signatures[0], &msg, &anchors, at(t))
        };
        let v = ok(verify_at(now));
        assert!(v.warnings.is_empty() && v.revocation.is_some_and(|r| !r.stale));
        ok(verify_at(now + Days::days(1)));
        assert_eq!(anchors.chain_cache_stats().verified, 1);

        // Past nextUpdate the list is stale: judged again, with the warning,
        // and that judgement is not kept (it holds for no later time).
        for _ in 0..2 {
            let v = ok(verify_at(next + Days::hours(1)));
            assert!(v.revocation.is_some_and(|r| r.stale));
            assert!(v.warnings[0].contains("expired on"), "{:?}", v.warnings);
        }
        let stats = anchors.chain_cache_stats();
        assert_eq!((stats.verified, stats.reused), (3, 1), "{stats:?}");
    }

    #[test]
    fn unreadable_lists_stop_the_start_with_the_file_named() {
        let w = World::new();
        let root = ok(DevCa::generate("Test Root CA", KeyType::EcP256));
        let base = ok(TrustAnchors::from_der_certs([root.cert_der()]));
        for (name, bytes, says) in [
            (
                "junk.crl",
                b"not a list".as_slice(),
                "not an X.509 revocation list",
            ),
            (
                "empty.pem",
                b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".as_slice(),
                "holds no revocation list",
            ),
        ] {
            let f = w.write(name, bytes);
            let e = err(base.clone().with_crl_files(&[f]));
            assert!(
                e.message().contains(name) && e.message().contains(says),
                "{}",
                e.message()
            );
        }
        let e = err(base.with_crl_files(&[w.dir.path().join("missing.crl")]));
        assert!(e.message().contains("missing.crl"), "{}", e.message());
    }

    #[test]
    fn an_older_copy_of_a_list_does_not_shadow_the_newer() {
        let w = World::new();
        let root = ok(DevCa::generate("Test Root CA", KeyType::EcP256));
        let issued = leaf(&root, "VP");
        let now = OffsetDateTime::now_utc();
        let old = w.write(
            "a-old.crl",
            &crl(&root, &[], now - Days::days(3), now + Days::days(4)),
        );
        let new = w.write(
            "b-new.crl",
            &crl(
                &root,
                &[(&issued.cert_der, now)],
                now - Days::hours(1),
                now + Days::days(7),
            ),
        );
        let anchors = w.anchors(&root, CertPolicy::default(), &[old, new]);
        assert_eq!(
            err(verify(&issued, &anchors)).reason(),
            Reason::CertificateRevoked
        );
    }
}

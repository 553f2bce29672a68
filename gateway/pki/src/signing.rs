//! DSSE signing and verification of `SignedEnvelope`s (DESIGN.md §4).
//!
//! The signed bytes are DSSE's pre-authentication encoding of
//! (payload_type, payload): no canonicalisation, the bytes are the bytes.
//! A signature carries its certificate chain (DER, leaf first); verification
//! checks the value with the leaf's key, then builds a path from the leaf to
//! one of the configured trust anchors with webpki.
//!
//! The certificate policy for document-signing certificates lives here too
//! ([`CertPolicy`]): key sizes (RSA of 2048 bits or more, EC P-256/P-384),
//! no SHA-1 in the chain unless the operator allows it, revocation by the
//! lists of `trust.crls` ([`crate::crl`]), and validity both now and at the
//! signing time the envelope claims.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use lienthong_proto::v1::{ENVELOPE_PAYLOAD_TYPE, Envelope, Signature, SignedEnvelope};
use lienthong_types::error::{Context, Error, OrErr, Reason, Result};
use lienthong_types::text::quote;
use prost::Message;
use prost::bytes::Bytes;
use ring::rand::SystemRandom;
use ring::signature::{self as rsig, EcdsaKeyPair, KeyPair, RsaKeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{
    CertificateDer, PrivatePkcs8KeyDer, SignatureVerificationAlgorithm, TrustAnchor, UnixTime,
};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use crate::algorithms::chain_algorithms;
use crate::chain_cache::{ChainCache, ChainCacheStats, ChainKey, VerifiedChain};
pub use crate::crl::RevocationInfo;
use crate::crl::{CrlSet, CrlSnapshot};

/// DSSE's pre-authentication encoding:
/// `"DSSEv1" SP LEN(type) SP type SP LEN(payload) SP payload`.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let ty = payload_type.as_bytes();
    let mut out = Vec::with_capacity(32 + ty.len() + payload.len());
    out.extend_from_slice(b"DSSEv1 ");
    out.extend_from_slice(ty.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(ty);
    out.push(b' ');
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload);
    out
}

/// The signature algorithms of the contract, with JOSE's meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// RSA PKCS#1 v1.5 with SHA-256.
    Rs256,
    /// RSA-PSS with SHA-256, MGF1-SHA-256, salt as long as the hash.
    Ps256,
    /// ECDSA P-256 with SHA-256, fixed-size `r||s` (64 bytes).
    Es256,
    /// ECDSA P-384 with SHA-384, fixed-size `r||s` (96 bytes).
    Es384,
}

impl Algorithm {
    pub const ALL: [Algorithm; 4] = [
        Algorithm::Rs256,
        Algorithm::Ps256,
        Algorithm::Es256,
        Algorithm::Es384,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Rs256 => "RS256",
            Algorithm::Ps256 => "PS256",
            Algorithm::Es256 => "ES256",
            Algorithm::Es384 => "ES384",
        }
    }

    /// Exact, case-sensitive names as JOSE writes them.
    pub fn parse(s: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|a| a.as_str() == s)
    }

    fn key_kind(self) -> KeyKind {
        match self {
            Algorithm::Rs256 | Algorithm::Ps256 => KeyKind::Rsa,
            Algorithm::Es256 => KeyKind::P256,
            Algorithm::Es384 => KeyKind::P384,
        }
    }

    fn verification(self) -> &'static dyn rsig::VerificationAlgorithm {
        match self {
            Algorithm::Rs256 => &rsig::RSA_PKCS1_2048_8192_SHA256,
            Algorithm::Ps256 => &rsig::RSA_PSS_2048_8192_SHA256,
            Algorithm::Es256 => &rsig::ECDSA_P256_SHA256_FIXED,
            Algorithm::Es384 => &rsig::ECDSA_P384_SHA384_FIXED,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Algorithm {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Algorithm::parse(s).ok_or_else(|| unknown_algorithm(s))
    }
}

fn unknown_algorithm(s: &str) -> Error {
    Error::new(
        Reason::BadSignature,
        format!(
            "the signature algorithm {} is not supported; sign with RS256, PS256, ES256 or ES384",
            quote(s)
        ),
    )
}

/// The kind of a certificate's public key, as refusals name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    P256,
    P384,
    Other,
}

impl KeyKind {
    fn describe(self) -> &'static str {
        match self {
            KeyKind::Rsa => "an RSA key",
            KeyKind::P256 => "an EC P-256 key",
            KeyKind::P384 => "an EC P-384 key",
            KeyKind::Other => "a key of an unsupported type",
        }
    }

    fn algorithms(self) -> &'static str {
        match self {
            KeyKind::Rsa => "RS256 or PS256",
            KeyKind::P256 => "ES256",
            KeyKind::P384 => "ES384",
            KeyKind::Other => "an RSA, P-256 or P-384 certificate",
        }
    }
}

// ---------------------------------------------------------------------------
// Signing
// ---------------------------------------------------------------------------

enum KeyInner {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

/// A private key ready to sign, with the algorithm it signs with.
pub struct SigningKey {
    algorithm: Algorithm,
    inner: KeyInner,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key material.
        f.debug_struct("SigningKey")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Reads an unencrypted PKCS#8 PEM key (`-----BEGIN PRIVATE KEY-----`).
    /// RSA keys sign with RS256 unless `prefer` is PS256; EC keys with ES256
    /// or ES384 according to their curve.
    pub fn from_pkcs8_pem(pem: &str, prefer: Option<Algorithm>) -> Result<SigningKey> {
        let der = match PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()) {
            Ok(d) => d,
            Err(_) => return Err(key_pem_refusal(pem)),
        };
        SigningKey::from_pkcs8_der(der.secret_pkcs8_der(), prefer)
    }

    /// Reads a PKCS#8 PEM key file; the error names the file.
    pub fn from_pkcs8_pem_file(path: &Path, prefer: Option<Algorithm>) -> Result<SigningKey> {
        let text = std::fs::read_to_string(path).or_err_with(Reason::Malformed, |e| {
            format!(
                "cannot read the signing key {}: {e}; give the path of a PKCS#8 PEM key file",
                path.display()
            )
        })?;
        SigningKey::from_pkcs8_pem(&text, prefer).context(path.display())
    }

    /// Reads a PKCS#8 DER key.
    pub fn from_pkcs8_der(der: &[u8], prefer: Option<Algorithm>) -> Result<SigningKey> {
        let rng = SystemRandom::new();
        let (kind, inner) = if let Ok(k) = RsaKeyPair::from_pkcs8(der) {
            (KeyKind::Rsa, KeyInner::Rsa(k))
        } else if let Ok(k) =
            EcdsaKeyPair::from_pkcs8(&rsig::ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
        {
            (KeyKind::P256, KeyInner::Ec(k))
        } else if let Ok(k) =
            EcdsaKeyPair::from_pkcs8(&rsig::ECDSA_P384_SHA384_FIXED_SIGNING, der, &rng)
        {
            (KeyKind::P384, KeyInner::Ec(k))
        } else {
            return Err(Error::malformed(
                "the signing key is not an RSA (2048 to 8192 bits), EC P-256 or EC P-384 PKCS#8 key; \
                 use one of those, e.g. the key.pem that `lienthong dev-pki` writes",
            ));
        };
        let algorithm = match (kind, prefer) {
            (KeyKind::Rsa, None | Some(Algorithm::Rs256)) => Algorithm::Rs256,
            (KeyKind::Rsa, Some(Algorithm::Ps256)) => Algorithm::Ps256,
            (KeyKind::P256, None | Some(Algorithm::Es256)) => Algorithm::Es256,
            (KeyKind::P384, None | Some(Algorithm::Es384)) => Algorithm::Es384,
            (kind, Some(asked)) => {
                return Err(Error::malformed(format!(
                    "{asked} was asked for, but the signing key is {}; choose {} for this key",
                    kind.describe(),
                    kind.algorithms()
                )));
            }
            (KeyKind::Other, None) => {
                return Err(Error::malformed("the signing key type is not supported"));
            }
        };
        Ok(SigningKey { algorithm, inner })
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Signs `msg` (for an envelope: its PAE).
    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>> {
        let rng = SystemRandom::new();
        let failed = |_| {
            Error::new(
                Reason::Unavailable,
                "signing failed in the cryptographic library; try again",
            )
        };
        match &self.inner {
            KeyInner::Rsa(k) => {
                let padding: &'static dyn rsig::RsaEncoding = match self.algorithm {
                    Algorithm::Ps256 => &rsig::RSA_PSS_SHA256,
                    _ => &rsig::RSA_PKCS1_SHA256,
                };
                let mut sig = vec![0u8; k.public().modulus_len()];
                k.sign(padding, &rng, msg, &mut sig).map_err(failed)?;
                Ok(sig)
            }
            KeyInner::Ec(k) => Ok(k.sign(&rng, msg).map_err(failed)?.as_ref().to_vec()),
        }
    }

    /// The public key as it appears inside a certificate's SPKI bit string
    /// (RSAPublicKey DER, or the uncompressed EC point).
    fn public_key_bytes(&self) -> &[u8] {
        match &self.inner {
            KeyInner::Rsa(k) => k.public_key().as_ref(),
            KeyInner::Ec(k) => k.public_key().as_ref(),
        }
    }
}

fn key_pem_refusal(pem: &str) -> Error {
    let hint = if pem.contains("ENCRYPTED PRIVATE KEY") {
        "the key is encrypted; decrypt it with `openssl pkcs8 -in key.pem -out plain.pem` and keep \
         the result readable only by the gateway's user"
    } else if pem.contains("RSA PRIVATE KEY") || pem.contains("EC PRIVATE KEY") {
        "the key is in the older PKCS#1/SEC1 form; convert it with \
         `openssl pkcs8 -topk8 -nocrypt -in key.pem -out key.pkcs8.pem`"
    } else {
        "give a PEM file that starts with -----BEGIN PRIVATE KEY-----"
    };
    Error::malformed(format!(
        "the signing key is not an unencrypted PKCS#8 PEM key; {hint}"
    ))
}

/// Serializes `envelope` and signs it: payload type
/// [`ENVELOPE_PAYLOAD_TYPE`], one signature carrying `chain` (DER, leaf
/// first). The leaf must be the key's own certificate: signing with a key
/// and someone else's certificate would only fail later, at the gateway.
pub fn sign_envelope(
    envelope: &Envelope,
    key: &SigningKey,
    chain: &[Vec<u8>],
) -> Result<SignedEnvelope> {
    let mut signed = SignedEnvelope {
        payload: Bytes::from(envelope.encode_to_vec()),
        payload_type: ENVELOPE_PAYLOAD_TYPE.to_owned(),
        signatures: Vec::new(),
    };
    add_signature(&mut signed, key, chain)?;
    Ok(signed)
}

/// Adds one more signature over the same payload (e.g. the organisation's
/// seal after the signer's own).
pub fn add_signature(
    signed: &mut SignedEnvelope,
    key: &SigningKey,
    chain: &[Vec<u8>],
) -> Result<()> {
    if let Some(leaf) = chain.first() {
        let cert = parse_cert(leaf).map_err(|_| {
            Error::malformed(
                "the first certificate of the signing chain is not a DER X.509 certificate; \
                 give the signer's certificate first, as DER",
            )
        })?;
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_bytes() {
            return Err(Error::malformed(format!(
                "the signing key does not belong to the certificate of {}; give the key and \
                 certificate issued together (leaf first in the chain)",
                display_name(&cert)
            )));
        }
    }
    let value = key.sign(&pae(&signed.payload_type, &signed.payload))?;
    signed.signatures.push(Signature {
        algorithm: key.algorithm().as_str().to_owned(),
        value: Bytes::from(value),
        certificates: chain.iter().map(|c| Bytes::from(c.clone())).collect(),
    });
    Ok(())
}

// ---------------------------------------------------------------------------
// Trust anchors
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Anchor {
    der: Vec<u8>,
    subject: String,
}

/// What to do with a revocation list past its nextUpdate
/// (`trust.stale_crl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaleCrlPolicy {
    /// Refuse the signature (`UNTRUSTED_CERTIFICATE`): the gateway cannot
    /// tell whether the certificate was revoked since the list was issued.
    Refuse,
    /// Accept it, checked against the old list, with a warning in the
    /// verification report.
    Warn,
}

/// The certificate policy for document-signing certificates
/// (`trust.refuse_sha1`, `trust.stale_crl`, `trust.require_revocation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertPolicy {
    /// Refuse chains with a certificate signed with SHA-1.
    pub refuse_sha1: bool,
    pub stale_crl: StaleCrlPolicy,
    /// Refuse a certificate whose issuer has no revocation list configured
    /// (else: accepted, with "revocation not checked" in the report).
    pub require_revocation: bool,
}

impl Default for CertPolicy {
    fn default() -> Self {
        CertPolicy {
            refuse_sha1: true,
            // Lists are put in place by hand (no fetching yet): a late copy
            // should show in every report, not stop the province's mail.
            stale_crl: StaleCrlPolicy::Warn,
            require_revocation: false,
        }
    }
}

/// The CA certificates signatures must chain to (`trust.anchors`), with the
/// certificate policy and the revocation lists (`trust.crls`) that go with
/// them. Clones share the revocation lists, so a reload is seen by all, and
/// the chains already verified ([`crate::chain_cache`]), so a signer's
/// chain is checked once for all of them.
#[derive(Debug, Clone, Default)]
pub struct TrustAnchors {
    anchors: Vec<Anchor>,
    webpki: Vec<TrustAnchor<'static>>,
    policy: CertPolicy,
    crls: Option<Arc<CrlSet>>,
    chains: Arc<ChainCache>,
}

impl TrustAnchors {
    /// No anchors: every signature is then untrusted.
    pub fn empty() -> TrustAnchors {
        TrustAnchors::default()
    }

    /// Every certificate of every file (PEM, or a single DER certificate);
    /// errors name the file.
    pub fn from_pem_files(paths: &[PathBuf]) -> Result<TrustAnchors> {
        let mut out = TrustAnchors::default();
        for path in paths {
            let certs = load_certificates_pem(path)?;
            for (i, der) in certs.into_iter().enumerate() {
                out.push(der).with_context(|| {
                    format!(
                        "trust anchor file {} (certificate {})",
                        path.display(),
                        i + 1
                    )
                })?;
            }
        }
        Ok(out)
    }

    /// Every certificate in a PEM text.
    pub fn from_pem(pem: &str) -> Result<TrustAnchors> {
        let certs = pem_certificates(pem.as_bytes()).map_err(|e| {
            Error::malformed(format!("the trust anchors are not readable PEM: {e}"))
        })?;
        if certs.is_empty() {
            return Err(Error::malformed(
                "the trust anchor text holds no certificate; give PEM blocks starting with \
                 -----BEGIN CERTIFICATE-----",
            ));
        }
        TrustAnchors::from_der_certs(certs)
    }

    pub fn from_der_certs<I, C>(certs: I) -> Result<TrustAnchors>
    where
        I: IntoIterator<Item = C>,
        C: AsRef<[u8]>,
    {
        let mut out = TrustAnchors::default();
        for c in certs {
            out.push(c.as_ref().to_vec())?;
        }
        Ok(out)
    }

    fn push(&mut self, der: Vec<u8>) -> Result<()> {
        let cert = parse_cert(&der).map_err(|_| {
            Error::malformed(
                "a trust anchor is not an X.509 certificate; trust.anchors must list PEM files of \
                 CA certificates",
            )
        })?;
        let subject = cert.subject().to_string();
        let cd = CertificateDer::from(der.as_slice());
        let anchor = webpki::anchor_from_trusted_cert(&cd)
            .map_err(|e| {
                Error::malformed(format!(
                    "the trust anchor {subject} cannot be used as an anchor ({e}); give the CA's \
                     certificate as issued"
                ))
            })?
            .to_owned();
        // The same CA listed twice (two config files) is harmless: keep one.
        if self.anchors.iter().any(|a| a.der == der) {
            return Ok(());
        }
        self.anchors.push(Anchor { der, subject });
        self.webpki.push(anchor);
        Ok(())
    }

    /// The same anchors under `policy`.
    pub fn with_policy(mut self, policy: CertPolicy) -> TrustAnchors {
        self.policy = policy;
        self.fresh_chains()
    }

    /// Chains verified under other anchors, lists or policy say nothing
    /// under these.
    fn fresh_chains(self) -> TrustAnchors {
        let capacity = self.chains.capacity();
        self.with_chain_cache(capacity)
    }

    /// Keeps at most `capacity` verified chains (default
    /// [`crate::chain_cache::DEFAULT_CAPACITY`]); 0 verifies every
    /// signature's chain anew.
    pub fn with_chain_cache(mut self, capacity: usize) -> TrustAnchors {
        self.chains = Arc::new(ChainCache::with_capacity(capacity));
        self
    }

    /// How many chains were verified and how many signatures reused one.
    pub fn chain_cache_stats(&self) -> ChainCacheStats {
        self.chains.stats()
    }

    /// The same anchors with the revocation lists of these files
    /// (`trust.crls`, DER or PEM), checked against the anchors and read
    /// again when they change. Call it after every anchor is in. No files:
    /// no revocation checking.
    pub fn with_crl_files(self, paths: &[PathBuf]) -> Result<TrustAnchors> {
        if paths.is_empty() {
            return Ok(self);
        }
        let set = CrlSet::load(paths, &self)?;
        Ok(self.with_crls(set))
    }

    /// The same anchors with an already loaded set of revocation lists.
    pub fn with_crls(mut self, crls: CrlSet) -> TrustAnchors {
        self.crls = Some(Arc::new(crls));
        self.fresh_chains()
    }

    pub fn policy(&self) -> CertPolicy {
        self.policy
    }

    /// The revocation lists in force (re-read if a file changed), e.g. for
    /// `serve`'s start-up report; `None` without `trust.crls`.
    pub fn crls(&self) -> Option<Arc<CrlSnapshot>> {
        self.crls.as_ref().map(|c| c.snapshot())
    }

    pub fn is_empty(&self) -> bool {
        self.anchors.is_empty()
    }

    pub fn len(&self) -> usize {
        self.anchors.len()
    }

    /// The anchors' subjects, for logs and `serve`'s start-up report.
    pub fn subjects(&self) -> Vec<String> {
        self.anchors.iter().map(|a| a.subject.clone()).collect()
    }

    /// The anchors' DER certificates (e.g. for a TLS client verifier).
    pub fn certificates_der(&self) -> impl Iterator<Item = &[u8]> {
        self.into_iter()
    }

    /// The anchors in webpki's form (e.g. for a rustls `RootCertStore`).
    pub fn webpki_anchors(&self) -> &[TrustAnchor<'static>] {
        &self.webpki
    }

    pub fn subject_of(&self, anchor: &TrustAnchor<'_>) -> String {
        self.anchor_of(anchor)
            .map(|a| a.subject.clone())
            .unwrap_or_default()
    }

    fn anchor_of(&self, anchor: &TrustAnchor<'_>) -> Option<&Anchor> {
        self.webpki
            .iter()
            .zip(&self.anchors)
            .find(|(w, _)| {
                w.subject.as_ref() == anchor.subject.as_ref()
                    && w.subject_public_key_info.as_ref() == anchor.subject_public_key_info.as_ref()
            })
            .map(|(_, a)| a)
    }
}

/// The anchors' DER certificates: what revocation lists are checked
/// against (`CrlSet::load`).
impl<'a> IntoIterator for &'a TrustAnchors {
    type Item = &'a [u8];
    type IntoIter = AnchorCertificates<'a>;

    fn into_iter(self) -> AnchorCertificates<'a> {
        AnchorCertificates(self.anchors.iter())
    }
}

/// The DER certificates of [`TrustAnchors`], in order.
#[derive(Debug, Clone)]
pub struct AnchorCertificates<'a>(std::slice::Iter<'a, Anchor>);

impl<'a> Iterator for AnchorCertificates<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        self.0.next().map(|a| a.der.as_slice())
    }
}

// ---------------------------------------------------------------------------
// Verification
// ---------------------------------------------------------------------------

/// Who signed, as proven by a verified signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedSigner {
    pub algorithm: Algorithm,
    /// The leaf's subject DN, e.g. `C=VN, O=…, CN=…`.
    pub subject: String,
    /// The issuers' subjects from the leaf's issuer up to and including the
    /// trust anchor.
    pub chain: Vec<String>,
    /// The anchor's subject (also the last element of `chain`).
    pub trust_anchor: String,
    /// SHA-256 of the leaf's SubjectPublicKeyInfo: what the directory binds
    /// to an agency (`directory bind-cert`).
    pub spki_sha256: [u8; 32],
    /// The leaf's serial number, hex.
    pub serial: String,
    pub not_after: OffsetDateTime,
    /// The revocation list the leaf was checked against; `None` when no
    /// list of its issuer is configured (then `warnings` says the
    /// revocation was not checked).
    pub revocation: Option<RevocationInfo>,
    /// What the receiving clerk should know although the signature was
    /// accepted: a stale revocation list, revocation not checked.
    pub warnings: Vec<String>,
}

/// When a signature is judged.
#[derive(Debug, Clone, Copy)]
pub struct VerifyOptions {
    /// The chain must be valid, and not revoked, now.
    pub now: UnixTime,
    /// The signing time the envelope claims (its `created_at`): every
    /// certificate of the chain must have been valid then as well. A
    /// document signed before its certificate existed, or after it
    /// expired, is refused even if the certificate is valid today.
    pub signed_at: Option<UnixTime>,
}

impl VerifyOptions {
    pub fn at(now: UnixTime) -> VerifyOptions {
        VerifyOptions {
            now,
            signed_at: None,
        }
    }

    pub fn signed_at(mut self, at: Option<UnixTime>) -> VerifyOptions {
        self.signed_at = at;
        self
    }
}

/// The envelope's `created_at` as a verification time (`None` when it is
/// absent or before 1970).
pub fn signed_at_of(envelope: &Envelope) -> Option<UnixTime> {
    let t = envelope.created_at.as_ref()?;
    let secs = u64::try_from(t.seconds).ok()?;
    Some(UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        secs,
    )))
}

/// At most this many certificates per signature: real chains have two or
/// three, and each costs a parse and a path-building step.
const MAX_CERTIFICATES: usize = 8;

/// Verifies one signature over `signed_bytes` (the PAE) and its chain to
/// `anchors` at time `now`, under the anchors' certificate policy.
pub fn verify_signature(
    sig: &Signature,
    signed_bytes: &[u8],
    anchors: &TrustAnchors,
    now: UnixTime,
) -> Result<VerifiedSigner> {
    verify_signature_with(sig, signed_bytes, anchors, &VerifyOptions::at(now))
}

/// Like [`verify_signature`], also checking the chain at the claimed
/// signing time when `opts.signed_at` is given.
pub fn verify_signature_with(
    sig: &Signature,
    signed_bytes: &[u8],
    anchors: &TrustAnchors,
    opts: &VerifyOptions,
) -> Result<VerifiedSigner> {
    let now = opts.now;
    let policy = anchors.policy;
    let algorithm =
        Algorithm::parse(&sig.algorithm).ok_or_else(|| unknown_algorithm(&sig.algorithm))?;
    let Some(leaf_der) = sig.certificates.first() else {
        return Err(bad_signature(
            "the signature carries no certificate; put the signer's certificate (DER, leaf first, \
             then intermediates) in Signature.certificates",
        ));
    };
    if sig.certificates.len() > MAX_CERTIFICATES {
        return Err(bad_signature(format!(
            "the signature carries {} certificates; send the signer's certificate and its \
             intermediates only (at most {MAX_CERTIFICATES})",
            sig.certificates.len()
        )));
    }
    let mut parsed = Vec::with_capacity(sig.certificates.len());
    for (i, der) in sig.certificates.iter().enumerate() {
        let cert = parse_cert(der).map_err(|_| {
            bad_signature(format!(
                "certificate {} of the signature is not a DER X.509 certificate; send certificates \
                 as DER bytes (not PEM text), the signer's first",
                i + 1
            ))
        })?;
        parsed.push(cert);
    }
    let leaf = &parsed[0];
    let who = display_name(leaf);

    let kind = key_kind(leaf);
    if kind != algorithm.key_kind() {
        return Err(bad_signature(format!(
            "the signature says {algorithm} but the certificate of {who} holds {}; sign with {}",
            kind.describe(),
            kind.algorithms()
        )));
    }

    // Before the signature: a 1024-bit key would otherwise only show as a
    // signature that "does not verify", which sends the signer looking for
    // a changed payload.
    check_key_strength(&parsed)?;
    if policy.refuse_sha1 {
        refuse_sha1_links(&parsed)?;
    }

    // No KeyUsage extension means no restriction (RFC 5280 §4.2.1.3).
    match leaf.key_usage() {
        Ok(Some(ku)) if !ku.value.digital_signature() && !ku.value.non_repudiation() => {
            return Err(bad_signature(format!(
                "the certificate of {who} is not for signing: its KeyUsage allows neither \
                 digitalSignature nor nonRepudiation; sign with the organisation's \
                 document-signing certificate"
            )));
        }
        Ok(_) => {}
        Err(_) => {
            return Err(bad_signature(format!(
                "the certificate of {who} has a malformed KeyUsage extension; ask its CA for a \
                 correct certificate"
            )));
        }
    }

    let public_key = rsig::UnparsedPublicKey::new(
        algorithm.verification(),
        leaf.public_key().subject_public_key.data.as_ref(),
    );
    if public_key.verify(signed_bytes, &sig.value).is_err() {
        return Err(bad_signature(format!(
            "the {algorithm} signature does not verify with the certificate of {who}: the payload \
             or payload_type changed after signing, or another key signed it; sign the DSSE PAE \
             of the exact bytes sent, with that certificate's key"
        )));
    }

    if anchors.is_empty() {
        return Err(Error::new(
            Reason::UntrustedCertificate,
            format!(
                "the certificate of {who} cannot be trusted: no trust anchors are configured; the \
                 gateway operator must list the CA certificates in trust.anchors"
            ),
        ));
    }

    let snapshot = anchors.crls.as_ref().map(|c| c.snapshot());
    let generation = snapshot.as_deref().map_or(0, CrlSnapshot::generation);
    let key = ChainKey::of(&sig.certificates);
    let verified = match anchors.chains.get(&key, generation, unix_secs(now)) {
        Some(chain) => {
            // The path was valid at every time the entry holds for; the
            // claimed signing time is this document's own.
            if let Some(at) = opts.signed_at {
                let path_certs: Vec<&X509Certificate<'_>> = std::iter::once(leaf)
                    .chain(chain.path.iter().filter_map(|&i| parsed.get(i)))
                    .collect();
                check_validity_at_signing(&path_certs, at)?;
            }
            chain
        }
        None => {
            anchors.chains.count_verification();
            let (chain, cacheable) =
                verify_chain(sig, leaf_der, &parsed, anchors, opts, snapshot.as_deref())?;
            let chain = Arc::new(chain);
            if cacheable {
                anchors.chains.insert(key, generation, Arc::clone(&chain));
            }
            chain
        }
    };

    Ok(VerifiedSigner {
        algorithm,
        subject: leaf.subject().to_string(),
        chain: verified.chain.clone(),
        trust_anchor: verified.trust_anchor.clone(),
        spki_sha256: sha256(leaf.public_key().raw),
        serial: hex::encode(leaf.raw_serial()),
        not_after: to_datetime(leaf.validity().not_after.timestamp()),
        revocation: verified.revocation.clone(),
        warnings: verified.warnings.clone(),
    })
}

/// Builds the path from the signature's leaf (`parsed[0]`) to the anchors
/// and checks it against the revocation lists of `snapshot`: what
/// [`crate::chain_cache`] keeps. Also whether the outcome may be kept: not
/// when a list is already stale (its warning is for this verification), nor
/// when the signature carries certificates the path does not use (another
/// time might choose another path through them).
fn verify_chain(
    sig: &Signature,
    leaf_der: &[u8],
    parsed: &[X509Certificate<'_>],
    anchors: &TrustAnchors,
    opts: &VerifyOptions,
    snapshot: Option<&CrlSnapshot>,
) -> Result<(VerifiedChain, bool)> {
    let now = opts.now;
    let policy = anchors.policy;
    let leaf = &parsed[0];
    let who = display_name(leaf);
    let ee_der = CertificateDer::from(leaf_der);
    let ee = webpki::EndEntityCert::try_from(&ee_der).map_err(|e| {
        bad_signature(format!(
            "the certificate of {who} cannot be used for verification ({e}); ask its CA for a \
             correct certificate"
        ))
    })?;
    let intermediates: Vec<CertificateDer<'_>> = sig.certificates[1..]
        .iter()
        .map(|c| CertificateDer::from(c.as_ref()))
        .collect();
    let algs = chain_algorithms(!policy.refuse_sha1);
    let lists = snapshot.map(CrlSnapshot::webpki_lists).unwrap_or_default();
    let revocation = revocation_options(&lists, policy);
    let path = ee
        .verify_for_usage(
            &algs,
            anchors.webpki_anchors(),
            &intermediates,
            now,
            AnyExtendedKeyUsage,
            revocation,
            None,
        )
        .map_err(|e| chain_refusal(e, parsed, now, snapshot))?;

    // The certificates of the path webpki chose (the signer may have sent
    // more), leaf first, as parsed above.
    let mut path_certs: Vec<&X509Certificate<'_>> = vec![leaf];
    let mut positions = Vec::new();
    let mut chain = Vec::new();
    for c in path.intermediate_certificates() {
        let der = c.der();
        let position = sig
            .certificates
            .iter()
            .position(|s| s.as_ref() == der.as_ref());
        let found = position.and_then(|i| Some((i, parsed.get(i)?)));
        if let Some((i, p)) = found {
            path_certs.push(p);
            positions.push(i);
        }
        chain.push(
            found
                .map(|(_, c)| c.subject().to_string())
                .unwrap_or_default(),
        );
    }
    let anchor = anchors.anchor_of(path.anchor());
    let trust_anchor = anchor.map(|a| a.subject.clone()).unwrap_or_default();
    chain.push(trust_anchor.clone());
    let unused = sig.certificates[1..]
        .iter()
        .enumerate()
        .any(|(i, c)| !positions.contains(&(i + 1)) && anchor.is_none_or(|a| a.der != c.as_ref()));

    if let Some(at) = opts.signed_at {
        check_validity_at_signing(&path_certs, at)?;
    }

    let now_s = unix_secs(now);
    let mut warnings = Vec::new();
    let mut revocation = None;
    // The times this outcome holds for: every certificate of the path valid
    // (webpki: notBefore <= t <= notAfter), every list that judged it not
    // stale (t < nextUpdate).
    let mut valid_from = i64::MIN;
    let mut valid_until = i64::MAX;
    for c in &path_certs {
        valid_from = valid_from.max(c.validity().not_before.timestamp());
        valid_until = valid_until.min(c.validity().not_after.timestamp().saturating_add(1));
        if let Some(next) = snapshot.and_then(|s| s.next_update_of_issuer(c.issuer().as_raw())) {
            valid_until = valid_until.min(next);
        }
    }
    match snapshot.filter(|s| !s.is_empty()) {
        None if policy.require_revocation => {
            return Err(Error::new(
                Reason::UntrustedCertificate,
                format!(
                    "the revocation status of the certificate of {who} is unknown: no revocation \
                     list of {} is configured and this gateway requires one \
                     (trust.require_revocation); nothing was accepted: the gateway's operators \
                     must add that CA's list to trust.crls",
                    leaf.issuer()
                ),
            ));
        }
        None => warnings.push(format!(
            "the revocation of the certificate of {who} was not checked: no revocation list of \
             {} is configured on this gateway (trust.crls)",
            leaf.issuer()
        )),
        Some(s) => {
            for (i, c) in path_certs.iter().enumerate() {
                let role = if i == 0 { "" } else { "intermediate CA " };
                match s.for_issuer(c.issuer().as_raw()) {
                    Some(crl) => {
                        if crl.is_stale_at(now_s) {
                            crl.log_stale_use();
                            warnings.push(format!(
                                "the revocation list of {} ({}) expired on {}: the {role}\
                                 certificate of {} was checked against it, but a revocation \
                                 after {} would not be known to the gateway",
                                crl.issuer(),
                                crl.source().display(),
                                fmt_time(crl.next_update().unix_timestamp()),
                                display_name(c),
                                fmt_time(crl.this_update().unix_timestamp()),
                            ));
                        }
                        if i == 0 {
                            revocation = Some(RevocationInfo::of(crl, now_s));
                        }
                    }
                    None => warnings.push(format!(
                        "the revocation of the {role}certificate of {} was not checked: no \
                         revocation list of {} is configured on this gateway (trust.crls)",
                        display_name(c),
                        c.issuer()
                    )),
                }
            }
        }
    }

    let verified = VerifiedChain {
        path: positions,
        chain,
        trust_anchor,
        revocation,
        warnings,
        valid_from,
        valid_until,
    };
    let cacheable = !unused && verified.valid_from <= now_s && now_s < verified.valid_until;
    Ok((verified, cacheable))
}

/// webpki's revocation options for `lists` under `policy`: the whole chain
/// checked, an unknown status refused only under `require_revocation`, a
/// stale list refused only under `stale_crl = "refuse"`. `None` without
/// any list.
fn revocation_options<'a>(
    lists: &'a [&'a webpki::CertRevocationList<'a>],
    policy: CertPolicy,
) -> Option<webpki::RevocationOptions<'a>> {
    webpki::RevocationOptionsBuilder::new(lists).ok().map(|b| {
        b.with_depth(webpki::RevocationCheckDepth::Chain)
            .with_status_policy(if policy.require_revocation {
                webpki::UnknownStatusPolicy::Deny
            } else {
                webpki::UnknownStatusPolicy::Allow
            })
            .with_expiration_policy(match policy.stale_crl {
                StaleCrlPolicy::Refuse => webpki::ExpirationPolicy::Enforce,
                StaleCrlPolicy::Warn => webpki::ExpirationPolicy::Ignore,
            })
            .build()
    })
}

/// Checks a TLS client certificate chain (leaf first, as the handshake
/// presented it) for client authentication at `now`: a path to one of
/// `client_anchors` (`tls.client_anchors`), and, when `revocation` is
/// given, the revocation lists of `trust.crls` under the `[trust]` policy
/// (a stale list, an unknown status), exactly as for document-signing
/// certificates. Returns the SHA-256 of the leaf's SubjectPublicKeyInfo:
/// the key the directory binds to an agency.
///
/// A revoked certificate is `CERTIFICATE_REVOKED`, a list that cannot
/// settle it `UNTRUSTED_CERTIFICATE`; every other refusal is
/// `PERMISSION_DENIED`. The transport answers all of them as
/// "unauthenticated".
pub fn verify_client_chain(
    chain: &[CertificateDer<'_>],
    client_anchors: &[TrustAnchor<'_>],
    algs: &[&dyn SignatureVerificationAlgorithm],
    revocation: Option<&TrustAnchors>,
    now: UnixTime,
) -> Result<[u8; 32]> {
    let denied = |m: String| Error::new(Reason::PermissionDenied, m);
    let Some(leaf) = chain.first() else {
        return Err(denied(
            "no client certificate was presented; mutual TLS requires one".to_owned(),
        ));
    };
    if chain.len() > MAX_CERTIFICATES {
        return Err(denied(format!(
            "the client presented {} certificates; present the client certificate and its \
             intermediates only (at most {MAX_CERTIFICATES})",
            chain.len()
        )));
    }
    let ee = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| denied(format!("the client certificate cannot be read: {e}")))?;
    let snapshot = revocation.and_then(TrustAnchors::crls);
    let lists = snapshot
        .as_deref()
        .map(CrlSnapshot::webpki_lists)
        .unwrap_or_default();
    let policy = revocation.map(TrustAnchors::policy).unwrap_or_default();
    let options = revocation.and_then(|_| revocation_options(&lists, policy));
    let checked = ee.verify_for_usage(
        algs,
        client_anchors,
        &chain[1..],
        now,
        webpki::KeyUsage::client_auth(),
        options,
        None,
    );
    let parsed =
        || -> Vec<X509Certificate<'_>> { chain.iter().map_while(|c| parse_cert(c).ok()).collect() };
    match checked {
        Ok(_) => {}
        Err(e) if is_revocation_error(&e) => {
            return Err(revocation_refusal(
                e,
                &parsed(),
                now,
                snapshot.as_deref(),
                Purpose::ClientAuth,
            ));
        }
        Err(webpki::Error::CertExpired { .. }) => {
            return Err(denied(
                "the client certificate has expired; renew it".to_owned(),
            ));
        }
        Err(webpki::Error::CertNotValidYet { .. }) => {
            return Err(denied(
                "the client certificate is not valid yet; check the clocks".to_owned(),
            ));
        }
        Err(webpki::Error::UnknownIssuer) => {
            return Err(denied(
                "the client certificate is not issued by an authority this gateway trusts \
                 (tls.client_anchors)"
                    .to_owned(),
            ));
        }
        Err(other) => {
            return Err(denied(format!(
                "the client certificate is not acceptable: {other}"
            )));
        }
    }
    if let Some(s) = snapshot.as_deref() {
        let now_s = unix_secs(now);
        for c in parsed() {
            if let Some(crl) = s.for_issuer(c.issuer().as_raw())
                && crl.is_stale_at(now_s)
            {
                crl.log_stale_use();
            }
        }
    }
    spki_sha256(leaf.as_ref()).map_err(|e| {
        denied(format!(
            "the client certificate cannot be read: {}",
            e.message()
        ))
    })
}

/// Verifies every signature of an envelope (there must be at least one):
/// an envelope carrying a signature that does not verify is refused even if
/// another one does, since something changed it or someone tried to.
pub fn verify_envelope_signatures(
    signed: &SignedEnvelope,
    anchors: &TrustAnchors,
    now: UnixTime,
) -> Result<Vec<VerifiedSigner>> {
    if signed.signatures.is_empty() {
        return Err(bad_signature(
            "the envelope carries no signature; sign it (DSSE over payload_type and payload) \
             with the agency's certificate",
        ));
    }
    verify_envelope_signatures_with(signed, anchors, &VerifyOptions::at(now))
}

/// Like [`verify_envelope_signatures`] with the signing time too.
pub fn verify_envelope_signatures_with(
    signed: &SignedEnvelope,
    anchors: &TrustAnchors,
    opts: &VerifyOptions,
) -> Result<Vec<VerifiedSigner>> {
    if signed.signatures.is_empty() {
        return Err(bad_signature(
            "the envelope carries no signature; sign it (DSSE over payload_type and payload) \
             with the agency's certificate",
        ));
    }
    let msg = pae(&signed.payload_type, &signed.payload);
    signed
        .signatures
        .iter()
        .map(|s| verify_signature_with(s, &msg, anchors, opts))
        .collect()
}

fn bad_signature(msg: impl Into<String>) -> Error {
    Error::new(Reason::BadSignature, msg)
}

/// Document-signing certificates carry clientAuth, emailProtection, vendor
/// EKUs or none: the gateway does not judge a leaf by its EKU, only by its
/// KeyUsage (checked separately).
pub struct AnyExtendedKeyUsage;

impl webpki::ExtendedKeyUsageValidator for AnyExtendedKeyUsage {
    fn validate(&self, iter: webpki::KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        for id in iter {
            id?;
        }
        Ok(())
    }
}

/// The SHA-1 signature algorithms a CA may have signed a certificate with.
const SHA1_SIGNATURE_OIDS: [(&str, &str); 4] = [
    ("1.2.840.113549.1.1.5", "sha1WithRSAEncryption"),
    ("1.3.14.3.2.29", "sha1WithRSASignature"),
    ("1.2.840.10045.4.1", "ecdsa-with-SHA1"),
    ("1.2.840.10040.4.3", "dsa-with-sha1"),
];

/// The name of the SHA-1 algorithm `cert` is signed with, if it is.
fn sha1_signature(cert: &X509Certificate<'_>) -> Option<&'static str> {
    let oid = cert.signature_algorithm.algorithm.to_id_string();
    SHA1_SIGNATURE_OIDS
        .iter()
        .find(|(o, _)| *o == oid)
        .map(|(_, name)| *name)
}

/// `trust.refuse_sha1`: every link the signer sends (the leaf and its
/// intermediates; an anchor's self-signature proves nothing and is not
/// judged) must be signed with SHA-2.
fn refuse_sha1_links(certs: &[X509Certificate<'_>]) -> Result<()> {
    for (i, c) in certs.iter().enumerate() {
        if let Some(alg) = sha1_signature(c) {
            let role = if i == 0 { "" } else { "intermediate CA " };
            return Err(Error::new(
                Reason::UntrustedCertificate,
                format!(
                    "the {role}certificate of {} is signed by its CA with SHA-1 ({alg}), which \
                     can be forged; this gateway refuses SHA-1 chains (trust.refuse_sha1): ask \
                     the CA for a certificate signed with SHA-256",
                    display_name(c)
                ),
            ));
        }
    }
    Ok(())
}

/// The smallest RSA modulus accepted anywhere in a chain.
const MIN_RSA_BITS: usize = 2048;

/// RSA keys of at least [`MIN_RSA_BITS`], EC keys on P-256 or P-384 only,
/// for the leaf and every intermediate sent.
fn check_key_strength(certs: &[X509Certificate<'_>]) -> Result<()> {
    for (i, c) in certs.iter().enumerate() {
        let role = if i == 0 { "" } else { "intermediate CA " };
        match key_kind(c) {
            KeyKind::Rsa => {
                let bits = rsa_modulus_bits(c).unwrap_or(0);
                if bits < MIN_RSA_BITS {
                    let key = if bits == 0 {
                        "an RSA key that cannot be read".to_owned()
                    } else {
                        format!("RSA-{bits}")
                    };
                    return Err(Error::new(
                        Reason::UntrustedCertificate,
                        format!(
                            "the key of the {role}certificate of {} is {key}; at least \
                             {MIN_RSA_BITS} bits are required: ask the CA for a certificate with \
                             a 2048-bit or larger key",
                            display_name(c)
                        ),
                    ));
                }
            }
            KeyKind::P256 | KeyKind::P384 => {}
            // A leaf of another type was already refused for its algorithm.
            KeyKind::Other => {
                return Err(Error::new(
                    Reason::UntrustedCertificate,
                    format!(
                        "the {role}certificate of {} holds {}; only RSA (2048 bits or more), EC \
                         P-256 and EC P-384 keys are accepted",
                        display_name(c),
                        KeyKind::Other.describe()
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn rsa_modulus_bits(cert: &X509Certificate<'_>) -> Option<usize> {
    match cert.public_key().parsed().ok()? {
        x509_parser::public_key::PublicKey::RSA(k) => {
            let m = k.modulus;
            let start = m.iter().position(|&b| b != 0)?;
            let m = &m[start..];
            let first = *m.first()?;
            Some(m.len() * 8 - first.leading_zeros() as usize)
        }
        _ => None,
    }
}

/// `signed_at` must fall inside every certificate's validity period.
fn check_validity_at_signing(certs: &[&X509Certificate<'_>], signed_at: UnixTime) -> Result<()> {
    let at = unix_secs(signed_at);
    for (i, c) in certs.iter().enumerate() {
        let role = if i == 0 { "" } else { "intermediate CA " };
        let nb = c.validity().not_before.timestamp();
        let na = c.validity().not_after.timestamp();
        let when = if at < nb {
            format!("was not valid yet (it is valid from {})", fmt_time(nb))
        } else if at > na {
            format!("had expired (on {})", fmt_time(na))
        } else {
            continue;
        };
        return Err(Error::new(
            Reason::CertificateExpired,
            format!(
                "the envelope says it was signed at {} (created_at), when the {role}certificate of \
                 {} {when}; sign with a certificate valid at the signing time, and set created_at \
                 to the time of signing",
                fmt_time(at),
                display_name(c)
            ),
        ));
    }
    Ok(())
}

fn unix_secs(t: UnixTime) -> i64 {
    i64::try_from(t.as_secs()).unwrap_or(i64::MAX)
}

fn chain_refusal(
    e: webpki::Error,
    certs: &[X509Certificate<'_>],
    now: UnixTime,
    crls: Option<&CrlSnapshot>,
) -> Error {
    use webpki::Error as W;
    if is_revocation_error(&e) {
        return revocation_refusal(e, certs, now, crls, Purpose::Signing);
    }
    let who = certs.first().map(display_name).unwrap_or_default();
    let issuer = certs
        .first()
        .map(|c| c.issuer().to_string())
        .unwrap_or_default();
    match e {
        W::CertExpired { .. } | W::CertNotValidYet { .. } => {
            Error::new(Reason::CertificateExpired, validity_sentence(certs, now))
        }
        W::CaUsedAsEndEntity => bad_signature(format!(
            "the first certificate ({who}) is a CA certificate; put the signer's own certificate \
             first in Signature.certificates"
        )),
        W::BadDer
        | W::BadDerTime
        | W::TrailingData(_)
        | W::MalformedExtensions
        | W::ExtensionValueInvalid
        | W::InvalidSerialNumber
        | W::InvalidCertValidity
        | W::UnsupportedCertVersion
        | W::UnsupportedCriticalExtension
        | W::EmptyEkuExtension => bad_signature(format!(
            "a certificate of the signature of {who} is malformed or uses an unsupported feature \
             ({e}); ask the CA for a standard certificate"
        )),
        _ => Error::new(
            Reason::UntrustedCertificate,
            format!(
                "the certificate of {who} (issued by {issuer}) is not issued by a trusted \
                 authority ({e}); send its intermediate CA certificates after it, or ask the \
                 gateway operator to add the issuing CA to trust.anchors"
            ),
        ),
    }
}

#[allow(deprecated)]
fn is_revocation_error(e: &webpki::Error) -> bool {
    use webpki::Error as W;
    matches!(
        e,
        W::CertRevoked
            | W::CrlExpired { .. }
            | W::UnknownRevocationStatus
            | W::InvalidCrlSignatureForPublicKey
            | W::IssuerNotCrlSigner
            | W::InvalidCrlNumber
            | W::UnsupportedCrlIssuingDistributionPoint
            | W::UnsupportedCrlVersion
            | W::UnsupportedDeltaCrl
            | W::UnsupportedIndirectCrl
            | W::UnsupportedRevocationReason
            | W::UnsupportedRevocationReasonsPartitioning
            | W::UnsupportedCrlSignatureAlgorithm
            | W::UnsupportedCrlSignatureAlgorithmContext(_)
            | W::UnsupportedCrlSignatureAlgorithmForPublicKey
            | W::UnsupportedCrlSignatureAlgorithmForPublicKeyContext(_)
    )
}

/// What a certificate judged for revocation is used for: the sentences
/// tell its holder what to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// A document or receipt signature.
    Signing,
    /// A TLS client certificate (agency software, operators).
    ClientAuth,
}

impl Purpose {
    /// "the certificate" / "the client certificate" (with the role of an
    /// intermediate CA, when it is one, before it).
    fn cert(self, intermediate: bool) -> &'static str {
        match (intermediate, self) {
            (true, _) => "intermediate CA certificate",
            (false, Purpose::Signing) => "certificate",
            (false, Purpose::ClientAuth) => "client certificate",
        }
    }

    fn renew(self) -> &'static str {
        match self {
            Purpose::Signing => "sign with a current certificate",
            Purpose::ClientAuth => {
                "the agency's software must connect with a current client certificate, bound by \
                 the gateway's operators (lienthong directory bind-client-cert)"
            }
        }
    }

    fn again(self) -> &'static str {
        match self {
            Purpose::Signing => "send again",
            Purpose::ClientAuth => "call again",
        }
    }
}

/// webpki says what went wrong with revocation, not for which certificate
/// or list: find them in the chain sent and the lists in force.
fn revocation_refusal(
    e: webpki::Error,
    certs: &[X509Certificate<'_>],
    now: UnixTime,
    crls: Option<&CrlSnapshot>,
    purpose: Purpose,
) -> Error {
    use webpki::Error as W;
    let who = certs.first().map(display_name).unwrap_or_default();
    let leaf = purpose.cert(false);
    let list_of = |c: &X509Certificate<'_>| crls.and_then(|s| s.for_issuer(c.issuer().as_raw()));
    let now_s = unix_secs(now);
    match e {
        W::CertRevoked => {
            for (i, c) in certs.iter().enumerate() {
                let Some(crl) = list_of(c) else { continue };
                let Some(entry) = crl.find_revoked(c.raw_serial()) else {
                    continue;
                };
                let reason = entry
                    .reason
                    .map(|r| format!(" (reason: {r})"))
                    .unwrap_or_default();
                return Error::new(
                    Reason::CertificateRevoked,
                    format!(
                        "the {} of {} (serial {}) was revoked by {} on {}{reason}, according to \
                         the revocation list {} issued {}; {}",
                        purpose.cert(i > 0),
                        display_name(c),
                        hex::encode(c.raw_serial()),
                        crl.issuer(),
                        fmt_time(entry.revocation_date),
                        crl.source().display(),
                        fmt_time(crl.this_update().unix_timestamp()),
                        purpose.renew(),
                    ),
                );
            }
            Error::new(
                Reason::CertificateRevoked,
                format!("the {leaf} of {who} is revoked; {}", purpose.renew()),
            )
        }
        W::CrlExpired { .. } => {
            for c in certs {
                let Some(crl) = list_of(c).filter(|l| l.is_stale_at(now_s)) else {
                    continue;
                };
                return Error::new(
                    Reason::UntrustedCertificate,
                    format!(
                        "the revocation list of {} ({}) expired on {}; the gateway cannot tell \
                         whether the {} of {} is revoked. Nothing was accepted: the \
                         gateway's operators must put a current list in place (trust.crls), then \
                         {}",
                        crl.issuer(),
                        crl.source().display(),
                        fmt_time(crl.next_update().unix_timestamp()),
                        purpose.cert(false),
                        display_name(c),
                        purpose.again(),
                    ),
                );
            }
            Error::new(
                Reason::UntrustedCertificate,
                format!(
                    "a revocation list needed to check the {leaf} of {who} has expired; the \
                     gateway's operators must put a current list in place (trust.crls)"
                ),
            )
        }
        W::UnknownRevocationStatus => {
            let Some((i, c)) = certs
                .iter()
                .enumerate()
                .find(|(_, c)| list_of(c).is_none())
                .or_else(|| certs.first().map(|c| (0, c)))
            else {
                return Error::new(
                    Reason::UntrustedCertificate,
                    "the revocation status of the certificate is unknown (trust.require_revocation)",
                );
            };
            Error::new(
                Reason::UntrustedCertificate,
                format!(
                    "the revocation status of the {} of {} is unknown: no revocation list of {} \
                     is configured and this gateway requires one (trust.require_revocation); \
                     nothing was accepted: the gateway's operators must add that CA's list to \
                     trust.crls",
                    purpose.cert(i > 0),
                    display_name(c),
                    c.issuer()
                ),
            )
        }
        other => {
            let list = certs.iter().find_map(list_of);
            let which = list
                .map(|l| {
                    format!(
                        "the revocation list of {} ({})",
                        l.issuer(),
                        l.source().display()
                    )
                })
                .unwrap_or_else(|| "a revocation list in trust.crls".to_owned());
            Error::new(
                Reason::UntrustedCertificate,
                format!(
                    "{which} cannot be used to check the {leaf} of {who} ({other}): it is not \
                     signed by the key of the CA it names, or it uses a form or algorithm this \
                     gateway refuses; nothing was accepted: the gateway's operators must replace it"
                ),
            )
        }
    }
}

/// Names the certificate whose validity period excludes `now` (webpki's
/// error does not say which one).
fn validity_sentence(certs: &[X509Certificate<'_>], now: UnixTime) -> String {
    let now_s = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    let at = fmt_time(now_s);
    for (i, c) in certs.iter().enumerate() {
        let nb = c.validity().not_before.timestamp();
        let na = c.validity().not_after.timestamp();
        let role = if i == 0 { "" } else { "intermediate CA " };
        if now_s > na {
            return format!(
                "the {role}certificate of {} expired on {} (checked at {at}); renew it with the \
                 CA and sign again",
                display_name(c),
                fmt_time(na)
            );
        }
        if now_s < nb {
            return format!(
                "the {role}certificate of {} is not valid before {} (checked at {at}); check the \
                 signer's clock, or sign with a certificate already in force",
                display_name(c),
                fmt_time(nb)
            );
        }
    }
    format!(
        "a CA certificate in the chain is outside its validity period (checked at {at}); send \
         current intermediate certificates"
    )
}

fn fmt_time(unix: i64) -> String {
    to_datetime(unix)
        .format(&Rfc3339)
        .unwrap_or_else(|_| unix.to_string())
}

fn to_datetime(unix: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(unix).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

pub fn key_kind(cert: &X509Certificate<'_>) -> KeyKind {
    const RSA: &str = "1.2.840.113549.1.1.1";
    const EC: &str = "1.2.840.10045.2.1";
    const P256: &str = "1.2.840.10045.3.1.7";
    const P384: &str = "1.3.132.0.34";
    let alg = &cert.public_key().algorithm;
    match alg.algorithm.to_id_string().as_str() {
        RSA => KeyKind::Rsa,
        EC => match alg
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .map(|o| o.to_id_string())
            .as_deref()
        {
            Some(P256) => KeyKind::P256,
            Some(P384) => KeyKind::P384,
            _ => KeyKind::Other,
        },
        _ => KeyKind::Other,
    }
}

// ---------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------

fn parse_cert(der: &[u8]) -> std::result::Result<X509Certificate<'_>, ()> {
    match X509Certificate::from_der(der) {
        // Trailing bytes would be unsigned data riding along: refuse them.
        Ok(([], cert)) => Ok(cert),
        _ => Err(()),
    }
}

/// `CN=…` when the certificate has a common name, else its whole subject.
fn display_name(cert: &X509Certificate<'_>) -> String {
    match cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
    {
        Some(cn) => format!("CN={cn}"),
        None => cert.subject().to_string(),
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Checks a signature with the key of one certificate and nothing more:
/// no chain, no validity period. For signers pinned by their key (the
/// gateway's checkpoints of its transfer log), where the pin is the trust.
pub fn verify_with_certificate(
    algorithm: &str,
    cert_der: &[u8],
    signed_bytes: &[u8],
    value: &[u8],
) -> Result<()> {
    let algorithm = Algorithm::parse(algorithm).ok_or_else(|| unknown_algorithm(algorithm))?;
    let cert = parse_cert(cert_der).map_err(|_| not_a_certificate())?;
    let who = display_name(&cert);
    let kind = key_kind(&cert);
    if kind != algorithm.key_kind() {
        return Err(bad_signature(format!(
            "the signature says {algorithm} but the certificate of {who} holds {}",
            kind.describe()
        )));
    }
    rsig::UnparsedPublicKey::new(
        algorithm.verification(),
        cert.public_key().subject_public_key.data.as_ref(),
    )
    .verify(signed_bytes, value)
    .map_err(|_| {
        bad_signature(format!(
            "the {algorithm} signature does not verify with the certificate of {who}: the signed \
             bytes changed after signing"
        ))
    })
}

/// SHA-256 of a certificate's SubjectPublicKeyInfo: the key's fingerprint,
/// stable across renewals that keep the key.
pub fn spki_sha256(cert_der: &[u8]) -> Result<[u8; 32]> {
    let cert = parse_cert(cert_der).map_err(|_| not_a_certificate())?;
    Ok(sha256(cert.public_key().raw))
}

fn not_a_certificate() -> Error {
    Error::malformed(
        "the bytes are not a DER X.509 certificate; give the certificate itself (PEM files are \
         read with load_certificate_pem)",
    )
}

/// What an operator wants to see of a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    /// Hex.
    pub serial: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub spki_sha256: [u8; 32],
}

pub fn describe_certificate(der: &[u8]) -> Result<CertInfo> {
    let cert = parse_cert(der).map_err(|_| not_a_certificate())?;
    Ok(CertInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        serial: hex::encode(cert.raw_serial()),
        not_before: to_datetime(cert.validity().not_before.timestamp()),
        not_after: to_datetime(cert.validity().not_after.timestamp()),
        spki_sha256: sha256(cert.public_key().raw),
    })
}

fn pem_certificates(bytes: &[u8]) -> std::result::Result<Vec<Vec<u8>>, String> {
    CertificateDer::pem_slice_iter(bytes)
        .map(|r| r.map(|c| c.to_vec()).map_err(|e| e.to_string()))
        .collect()
}

/// The first certificate of a PEM file (e.g. the leaf of a chain file), or
/// of a file holding one DER certificate.
pub fn load_certificate_pem(path: &Path) -> Result<Vec<u8>> {
    let mut certs = load_certificates_pem(path)?;
    Ok(certs.swap_remove(0))
}

/// Every certificate of a PEM file, in order (a chain file: leaf first);
/// a file holding one DER certificate is accepted too. Never empty.
pub fn load_certificates_pem(path: &Path) -> Result<Vec<Vec<u8>>> {
    let bytes = std::fs::read(path).or_err_with(Reason::Malformed, |e| {
        format!(
            "cannot read the certificate file {}: {e}; check the path",
            path.display()
        )
    })?;
    let looks_pem = bytes.windows(11).any(|w| w == b"-----BEGIN ");
    if !looks_pem {
        if parse_cert(&bytes).is_ok() {
            return Ok(vec![bytes]);
        }
        return Err(Error::malformed(format!(
            "{} is neither a PEM file nor a DER certificate; give a file with \
             -----BEGIN CERTIFICATE----- blocks",
            path.display()
        )));
    }
    let certs = pem_certificates(&bytes).map_err(|e| {
        Error::malformed(format!(
            "{} is not readable PEM ({e}); give a file with -----BEGIN CERTIFICATE----- blocks",
            path.display()
        ))
    })?;
    if certs.is_empty() {
        return Err(Error::malformed(format!(
            "{} holds no certificate (no -----BEGIN CERTIFICATE----- block)",
            path.display()
        )));
    }
    for (i, c) in certs.iter().enumerate() {
        if parse_cert(c).is_err() {
            return Err(Error::malformed(format!(
                "certificate {} in {} is not a valid X.509 certificate",
                i + 1,
                path.display()
            )));
        }
    }
    Ok(certs)
}

/// A signing key and its chain from the files `lienthong dev-pki` (or a CA)
/// gives an agency: a PKCS#8 key and a PEM chain, leaf first.
pub fn load_signer(
    key_path: &Path,
    chain_path: &Path,
    prefer: Option<Algorithm>,
) -> Result<(SigningKey, Vec<Vec<u8>>)> {
    let key = SigningKey::from_pkcs8_pem_file(key_path, prefer)?;
    let chain = load_certificates_pem(chain_path)?;
    Ok((key, chain))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devpki::tests::{shared_rsa_root, valid_now};
    use crate::devpki::{DevCa, Issued, KeyType};
    use lienthong_proto::v1::envelope::Body;
    use lienthong_proto::v1::{Document, StatusNotice};
    use proptest::prelude::*;
    use rcgen::{ExtendedKeyUsagePurpose, KeyUsagePurpose};
    use time::Duration;

    fn ok<T>(r: Result<T>) -> T {
        match r {
            Ok(v) => v,
            Err(e) => panic!("{}", e.chain()),
        }
    }

    fn err<T: fmt::Debug>(r: Result<T>) -> Error {
        match r {
            Ok(v) => panic!("expected a refusal, got {v:?}"),
            Err(e) => e,
        }
    }

    fn envelope() -> Envelope {
        Envelope {
            message_id: "7b0e5a0e-9d0c-4a51-9a54-000000000001".into(),
            from: "000.00.01.H35".into(),
            to: vec!["000.00.12.H35".into()],
            created_at: None,
            body: Some(Body::Document(Document {
                document_id: "000.00.01.H35,2026/11/24,15/QĐ-UBND".into(),
                subject: "Về việc triển khai liên thông văn bản".into(),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn ec_root() -> DevCa {
        ok(DevCa::generate("Test Root CA", KeyType::EcP256))
    }

    fn leaf(ca: &DevCa, kt: KeyType) -> Issued {
        ok(ca.issue_signing(
            "000.00.01.H35",
            "Văn phòng Ủy ban nhân dân tỉnh Lai Châu",
            kt,
            valid_now(),
        ))
    }

    fn anchors(ca: &DevCa) -> TrustAnchors {
        ok(TrustAnchors::from_der_certs([ca.cert_der()]))
    }

    fn sign(issued: &Issued, prefer: Option<Algorithm>) -> SignedEnvelope {
        let key = ok(SigningKey::from_pkcs8_pem(&issued.key_pem, prefer));
        ok(sign_envelope(&envelope(), &key, &issued.chain_der))
    }

    fn verify_one(signed: &SignedEnvelope, a: &TrustAnchors) -> Result<VerifiedSigner> {
        let msg = pae(&signed.payload_type, &signed.payload);
        verify_signature(&signed.signatures[0], &msg, a, UnixTime::now())
    }

    #[test]
    fn pae_matches_the_dsse_spec_example() {
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
        assert_eq!(pae("", b""), b"DSSEv1 0  0 ".to_vec());
        // LEN counts bytes, not characters.
        assert_eq!(pae("ắ", b"x"), "DSSEv1 3 ắ 1 x".as_bytes().to_vec());
    }

    #[test]
    fn algorithm_names_round_trip() {
        for a in Algorithm::ALL {
            assert_eq!(Algorithm::parse(a.as_str()), Some(a));
        }
        assert_eq!(Algorithm::parse("rs256"), None);
        assert!(
            "HS256"
                .parse::<Algorithm>()
                .is_err_and(|e| e.reason() == Reason::BadSignature)
        );
    }

    #[test]
    fn all_four_algorithms_sign_and_verify() {
        let ec = ec_root();
        let rsa = shared_rsa_root();
        let cases = [
            (rsa, KeyType::Rsa2048, None, Algorithm::Rs256, 256),
            (
                rsa,
                KeyType::Rsa2048,
                Some(Algorithm::Ps256),
                Algorithm::Ps256,
                256,
            ),
            (&ec, KeyType::EcP256, None, Algorithm::Es256, 64),
            (&ec, KeyType::EcP384, None, Algorithm::Es384, 96),
        ];
        for (ca, kt, prefer, alg, len) in cases {
            let issued = leaf(ca, kt);
            let signed = sign(&issued, prefer);
            assert_eq!(signed.payload_type, ENVELOPE_PAYLOAD_TYPE);
            assert_eq!(signed.signatures.len(), 1);
            let s = &signed.signatures[0];
            assert_eq!(s.algorithm, alg.as_str());
            assert_eq!(s.value.len(), len, "{alg}");
            assert_eq!(s.certificates.len(), 1);
            assert_eq!(
                Envelope::decode(signed.payload.clone()).ok(),
                Some(envelope()),
                "the payload is the envelope, byte for byte"
            );

            let v = ok(verify_one(&signed, &anchors(ca)));
            assert_eq!(v.algorithm, alg);
            assert!(
                v.subject
                    .contains("CN=Văn phòng Ủy ban nhân dân tỉnh Lai Châu"),
                "{}",
                v.subject
            );
            let root_subject = ok(describe_certificate(ca.cert_der())).subject;
            assert_eq!(v.trust_anchor, root_subject);
            assert_eq!(v.chain, [root_subject]);
            assert_eq!(v.spki_sha256, ok(spki_sha256(&issued.cert_der)));
            assert_eq!(v.serial, ok(describe_certificate(&issued.cert_der)).serial);
            assert!(v.not_after > OffsetDateTime::now_utc());
        }
    }

    #[test]
    fn a_changed_payload_or_type_is_a_bad_signature() {
        let ca = ec_root();
        let signed = sign(&leaf(&ca, KeyType::EcP256), None);

        let mut tampered = signed.clone();
        let mut p = tampered.payload.to_vec();
        let last = p.len() - 1;
        p[last] ^= 1;
        tampered.payload = Bytes::from(p);
        let e = err(verify_one(&tampered, &anchors(&ca)));
        assert_eq!(e.reason(), Reason::BadSignature);
        assert!(e.message().contains("does not verify"), "{}", e.message());

        let mut retyped = signed.clone();
        retyped.payload_type = "application/json".into();
        assert_eq!(
            err(verify_one(&retyped, &anchors(&ca))).reason(),
            Reason::BadSignature
        );

        let mut revalued = signed;
        revalued.signatures[0].value = Bytes::from(vec![0u8; 64]);
        assert_eq!(
            err(verify_one(&revalued, &anchors(&ca))).reason(),
            Reason::BadSignature
        );
    }

    #[test]
    fn a_signature_labelled_with_the_wrong_algorithm_is_refused() {
        let ca = ec_root();
        let mut signed = sign(&leaf(&ca, KeyType::EcP256), None);
        signed.signatures[0].algorithm = "ES384".into();
        let e = err(verify_one(&signed, &anchors(&ca)));
        assert_eq!(e.reason(), Reason::BadSignature);
        assert!(
            e.message().contains("P-256") && e.message().contains("ES256"),
            "{}",
            e.message()
        );

        signed.signatures[0].algorithm = "RS256".into();
        assert_eq!(
            err(verify_one(&signed, &anchors(&ca))).reason(),
            Reason::BadSignature
        );

        let rsa = shared_rsa_root();
        let mut pss = sign(&leaf(rsa, KeyType::Rsa2048), Some(Algorithm::Ps256));
        pss.signatures[0].algorithm = "RS256".into();
        assert_eq!(
            err(verify_one(&pss, &anchors(rsa))).reason(),
            Reason::BadSignature
        );
    }

    #[test]
    fn another_ca_is_untrusted() {
        let ca = ec_root();
        let other = ok(DevCa::generate("Some Other CA", KeyType::EcP256));
        let signed = sign(&leaf(&ca, KeyType::EcP256), None);
        let e = err(verify_one(&signed, &anchors(&other)));
        assert_eq!(e.reason(), Reason::UntrustedCertificate);
        assert!(e.message().contains("trust.anchors"), "{}", e.message());
        assert!(e.message().contains("CN=Văn phòng"), "{}", e.message());

        let e = err(verify_one(&signed, &TrustAnchors::empty()));
        assert_eq!(e.reason(), Reason::UntrustedCertificate);
        assert!(e.message().contains("no trust anchors"), "{}", e.message());
    }

    #[test]
    fn expired_and_not_yet_valid_leaves_are_refused() {
        let ca = ec_root();
        let now = OffsetDateTime::now_utc();
        for (validity, word) in [
            (
                (now - Duration::days(400), now - Duration::days(35)),
                "expired on",
            ),
            (
                (now + Duration::days(1), now + Duration::days(400)),
                "not valid before",
            ),
        ] {
            let issued = ok(ca.issue_signing("000.00.01.H35", "VP", KeyType::EcP256, validity));
            let signed = sign(&issued, None);
            let e = err(verify_one(&signed, &anchors(&ca)));
            assert_eq!(e.reason(), Reason::CertificateExpired, "{}", e.message());
            assert!(
                e.message().contains(word) && e.message().contains("CN=VP"),
                "{}",
                e.message()
            );
        }
    }

    #[test]
    fn intermediates_after_the_leaf_complete_the_chain() {
        let root = ec_root();
        let mid = ok(root.intermediate("Test Issuing CA", KeyType::EcP384));
        let issued = leaf(&mid, KeyType::EcP256);
        assert_eq!(issued.chain_der.len(), 2);
        let signed = sign(&issued, None);
        let v = ok(verify_one(&signed, &anchors(&root)));
        assert_eq!(v.chain.len(), 2);
        assert!(v.chain[0].contains("CN=Test Issuing CA"), "{:?}", v.chain);
        assert!(v.chain[1].contains("CN=Test Root CA"), "{:?}", v.chain);

        // Without the intermediate the leaf does not reach the root.
        let key = ok(SigningKey::from_pkcs8_pem(&issued.key_pem, None));
        let bare = ok(sign_envelope(&envelope(), &key, &issued.chain_der[..1]));
        assert_eq!(
            err(verify_one(&bare, &anchors(&root))).reason(),
            Reason::UntrustedCertificate
        );

        // The intermediate itself as an anchor is enough.
        assert!(verify_one(&bare, &anchors(&mid)).is_ok());
    }

    #[test]
    fn an_expired_intermediate_is_named() {
        let root = ec_root();
        let now = OffsetDateTime::now_utc();
        let mid = ok(root.intermediate_with_validity(
            "Old Issuing CA",
            KeyType::EcP256,
            (now - Duration::days(800), now - Duration::days(1)),
        ));
        let signed = sign(&leaf(&mid, KeyType::EcP256), None);
        let e = err(verify_one(&signed, &anchors(&root)));
        assert_eq!(e.reason(), Reason::CertificateExpired, "{}", e.message());
        assert!(
            e.message()
                .contains("intermediate CA certificate of CN=Old Issuing CA"),
            "{}",
            e.message()
        );
    }

    #[test]
    fn a_leaf_whose_key_usage_forbids_signing_is_refused() {
        let ca = ec_root();
        let issued = ok(ca.issue_with_key_usage(
            "000.00.01.H35",
            "VP",
            KeyType::EcP256,
            valid_now(),
            &[KeyUsagePurpose::KeyCertSign],
        ));
        let e = err(verify_one(&sign(&issued, None), &anchors(&ca)));
        assert_eq!(e.reason(), Reason::BadSignature);
        assert!(e.message().contains("KeyUsage"), "{}", e.message());

        // Non-repudiation alone is a signing certificate.
        let nr = ok(ca.issue_with_key_usage(
            "000.00.01.H35",
            "VP",
            KeyType::EcP256,
            valid_now(),
            &[KeyUsagePurpose::ContentCommitment],
        ));
        assert!(verify_one(&sign(&nr, None), &anchors(&ca)).is_ok());
    }

    #[test]
    fn the_leaf_is_not_judged_by_its_eku_or_missing_key_usage() {
        let ca = ec_root();
        for eku in [
            vec![],
            vec![ExtendedKeyUsagePurpose::ServerAuth],
            vec![ExtendedKeyUsagePurpose::EmailProtection],
        ] {
            let issued =
                ok(
                    ca.issue_with("000.00.01.H35", "VP", KeyType::EcP256, valid_now(), |p| {
                        p.extended_key_usages = eku.clone();
                        p.key_usages.clear();
                    }),
                );
            let r = verify_one(&sign(&issued, None), &anchors(&ca));
            assert!(r.is_ok(), "{eku:?}: {r:?}");
        }
    }

    #[test]
    fn signatures_without_or_with_unusable_certificates_are_bad() {
        let ca = ec_root();
        let signed = sign(&leaf(&ca, KeyType::EcP256), None);
        let a = anchors(&ca);

        let mut none = signed.clone();
        none.signatures[0].certificates.clear();
        let e = err(verify_one(&none, &a));
        assert_eq!(e.reason(), Reason::BadSignature);
        assert!(e.message().contains("no certificate"), "{}", e.message());

        let mut pem = signed.clone();
        pem.signatures[0].certificates = vec![Bytes::from(ca.cert_pem().as_bytes().to_vec())];
        let e = err(verify_one(&pem, &a));
        assert_eq!(e.reason(), Reason::BadSignature);
        assert!(e.message().contains("not a DER X.509"), "{}", e.message());

        let mut many = signed.clone();
        many.signatures[0].certificates = vec![Bytes::from(ca.cert_der().to_vec()); 20];
        assert_eq!(err(verify_one(&many, &a)).reason(), Reason::BadSignature);

        let mut unknown = signed;
        unknown.signatures[0].algorithm = "HS256".into();
        let e = err(verify_one(&unknown, &a));
        assert_eq!(e.reason(), Reason::BadSignature);
        assert!(e.message().contains("\"HS256\""), "{}", e.message());
    }

    #[test]
    fn a_ca_certificate_as_leaf_is_refused() {
        let root = ec_root();
        let mid = ok(root.intermediate("Mid", KeyType::EcP256));
        let key = ok(SigningKey::from_pkcs8_pem(mid.key_pem(), None));
        let signed = ok(sign_envelope(&envelope(), &key, &[mid.cert_der().to_vec()]));
        let e = err(verify_one(&signed, &anchors(&root)));
        assert_eq!(e.reason(), Reason::BadSignature, "{}", e.message());
    }

    #[test]
    fn a_second_signature_is_added_and_every_one_must_verify() {
        let ca = ec_root();
        let signer = leaf(&ca, KeyType::EcP256);
        let seal = ok(ca.issue_signing("000.00.01.H35", "Con dấu", KeyType::EcP384, valid_now()));
        let mut signed = sign(&signer, None);
        let seal_key = ok(SigningKey::from_pkcs8_pem(&seal.key_pem, None));
        ok(add_signature(&mut signed, &seal_key, &seal.chain_der));
        let all = ok(verify_envelope_signatures(
            &signed,
            &anchors(&ca),
            UnixTime::now(),
        ));
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].algorithm, Algorithm::Es384);

        signed.signatures[1].value = Bytes::from(vec![1u8; 96]);
        let e = err(verify_envelope_signatures(
            &signed,
            &anchors(&ca),
            UnixTime::now(),
        ));
        assert_eq!(e.reason(), Reason::BadSignature);

        signed.signatures.clear();
        let e = err(verify_envelope_signatures(
            &signed,
            &anchors(&ca),
            UnixTime::now(),
        ));
        assert!(e.message().contains("no signature"), "{}", e.message());
    }

    #[test]
    fn status_envelopes_sign_too() {
        let ca = ec_root();
        let issued = leaf(&ca, KeyType::EcP256);
        let key = ok(SigningKey::from_pkcs8_pem(&issued.key_pem, None));
        let env = Envelope {
            body: Some(Body::Status(StatusNotice {
                code: "03".into(),
                ..Default::default()
            })),
            ..envelope()
        };
        let signed = ok(sign_envelope(&env, &key, &issued.chain_der));
        assert!(verify_one(&signed, &anchors(&ca)).is_ok());
    }

    #[test]
    fn signing_keys_refuse_wrong_forms_and_mismatches() {
        let ca = ec_root();
        let p256 = leaf(&ca, KeyType::EcP256);
        let e = err(SigningKey::from_pkcs8_pem(
            &p256.key_pem,
            Some(Algorithm::Es384),
        ));
        assert!(
            e.message().contains("P-256") && e.message().contains("ES256"),
            "{}",
            e.message()
        );
        assert!(SigningKey::from_pkcs8_pem(&p256.key_pem, Some(Algorithm::Rs256)).is_err());

        let rsa = leaf(shared_rsa_root(), KeyType::Rsa2048);
        assert!(SigningKey::from_pkcs8_pem(&rsa.key_pem, Some(Algorithm::Es256)).is_err());
        assert_eq!(
            ok(SigningKey::from_pkcs8_pem(&rsa.key_pem, None)).algorithm(),
            Algorithm::Rs256
        );

        let pkcs1 = rsa.key_pem.replace("PRIVATE KEY", "RSA PRIVATE KEY");
        let e = err(SigningKey::from_pkcs8_pem(&pkcs1, None));
        assert!(
            e.message().contains("openssl pkcs8 -topk8"),
            "{}",
            e.message()
        );

        let enc =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n";
        assert!(
            err(SigningKey::from_pkcs8_pem(enc, None))
                .message()
                .contains("encrypted")
        );
        assert!(SigningKey::from_pkcs8_pem("", None).is_err());

        // A key with somebody else's certificate.
        let other = leaf(&ca, KeyType::EcP256);
        let key = ok(SigningKey::from_pkcs8_pem(&p256.key_pem, None));
        let e = err(sign_envelope(&envelope(), &key, &other.chain_der));
        assert!(e.message().contains("does not belong"), "{}", e.message());
        assert!(format!("{key:?}").contains("Es256"));
    }

    #[test]
    fn anchors_load_from_files_with_errors_naming_them() {
        let dir = ok(tempfile::tempdir().map_err(Error::from));
        let ca = ec_root();
        let mid = ok(ca.intermediate("Mid", KeyType::EcP256));
        let both = dir.path().join("both.pem");
        ok(
            std::fs::write(&both, format!("{}{}", ca.cert_pem(), mid.cert_pem()))
                .map_err(Error::from),
        );
        let der = dir.path().join("ca.cer");
        ok(std::fs::write(&der, ca.cert_der()).map_err(Error::from));
        let a = ok(TrustAnchors::from_pem_files(&[both.clone(), der.clone()]));
        assert_eq!(a.len(), 2, "the DER copy of the root is the same anchor");
        assert!(!a.is_empty());
        assert!(a.subjects()[1].contains("CN=Mid"));
        assert_eq!(a.certificates_der().count(), 2);

        let missing = dir.path().join("nope.pem");
        let e = err(TrustAnchors::from_pem_files(&[missing]));
        assert!(e.message().contains("nope.pem"), "{}", e.message());

        let empty = dir.path().join("empty.pem");
        ok(std::fs::write(
            &empty,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .map_err(Error::from));
        let e = err(TrustAnchors::from_pem_files(&[empty]));
        assert!(
            e.message().contains("empty.pem") && e.message().contains("no certificate"),
            "{}",
            e.message()
        );

        let junk = dir.path().join("junk.pem");
        ok(std::fs::write(&junk, b"\x00\x01not a cert").map_err(Error::from));
        assert!(
            err(TrustAnchors::from_pem_files(&[junk]))
                .message()
                .contains("junk.pem")
        );

        assert_eq!(ok(TrustAnchors::from_pem(ca.cert_pem())).len(), 1);
        assert!(TrustAnchors::from_pem("hello").is_err());

        assert_eq!(ok(load_certificate_pem(&both)), ca.cert_der());
        assert_eq!(ok(load_certificates_pem(&both)).len(), 2);
    }

    #[test]
    fn the_government_ca_samples_load_as_anchors() {
        let Some(dir) = lienthong_testkit::reference_samples(
            "the_government_ca_samples_load_as_anchors",
            "trust",
        ) else {
            return;
        };
        let entries = ok(std::fs::read_dir(&dir).map_err(Error::from));
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "pem"))
            .collect();
        files.sort();
        let a = ok(TrustAnchors::from_pem_files(&files));
        assert!(a.len() >= files.len(), "{:?}", a.subjects());
        for f in &files {
            let info = ok(describe_certificate(&ok(load_certificate_pem(f))));
            assert!(!info.subject.is_empty());
            assert!(info.not_before < info.not_after);
        }
    }

    #[test]
    fn describe_certificate_reports_names_dates_and_key() {
        let ca = ec_root();
        let now = OffsetDateTime::now_utc();
        let validity = (now - Duration::hours(1), now + Duration::days(30));
        let issued = ok(ca.issue_signing("000.00.12.H35", "Sở KH&CN", KeyType::EcP256, validity));
        let info = ok(describe_certificate(&issued.cert_der));
        assert!(info.subject.contains("CN=Sở KH&CN"), "{}", info.subject);
        assert!(info.issuer.contains("CN=Test Root CA"), "{}", info.issuer);
        assert_eq!(info.not_after.unix_timestamp(), validity.1.unix_timestamp());
        assert_eq!(info.spki_sha256, ok(spki_sha256(&issued.cert_der)));
        assert_ne!(info.spki_sha256, ok(spki_sha256(ca.cert_der())));
        assert_eq!(info.serial.len(), 32);
        assert!(describe_certificate(b"garbage").is_err_and(|e| e.reason() == Reason::Malformed));
    }

    /// The `rsa` crate's RNG interface over ring (as devpki does).
    struct TestRng;

    impl rsa::rand_core::TryRng for TestRng {
        type Error = std::convert::Infallible;
        fn try_next_u32(&mut self) -> std::result::Result<u32, Self::Error> {
            let mut b = [0u8; 4];
            self.try_fill_bytes(&mut b)?;
            Ok(u32::from_le_bytes(b))
        }
        fn try_next_u64(&mut self) -> std::result::Result<u64, Self::Error> {
            let mut b = [0u8; 8];
            self.try_fill_bytes(&mut b)?;
            Ok(u64::from_le_bytes(b))
        }
        fn try_fill_bytes(&mut self, dst: &mut [u8]) -> std::result::Result<(), Self::Error> {
            use ring::rand::SecureRandom;
            if SystemRandom::new().fill(dst).is_err() {
                panic!("no randomness");
            }
            Ok(())
        }
    }

    impl rsa::rand_core::TryCryptoRng for TestRng {}

    /// PKCS#1 v1.5 over a DigestInfo prefix and digest, with the `rsa`
    /// crate (ring signs with no key under 2048 bits and never with SHA-1).
    fn rsa_sign(key: &rsa::PrivateKey, digest_info_prefix: &[u8], digest: &[u8]) -> Vec<u8> {
        let info = [digest_info_prefix, digest].concat();
        match key.sign(rsa::Pkcs1v15Sign::new_unprefixed(), &info) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        }
    }

    const SHA256_INFO: [u8; 19] = [
        0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
        0x05, 0x00, 0x04, 0x20,
    ];
    const SHA1_INFO: [u8; 15] = [
        0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00, 0x04, 0x14,
    ];

    /// An RSA public key for rcgen to put in a certificate.
    struct RsaPublic(Vec<u8>);

    impl rcgen::PublicKeyData for RsaPublic {
        fn der_bytes(&self) -> &[u8] {
            &self.0
        }
        fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
            &rcgen::PKCS_RSA_SHA256
        }
    }

    #[test]
    fn an_rsa_1024_signing_key_is_an_untrusted_certificate() {
        use rsa::pkcs1::EncodeRsaPublicKey;
        let ca = ec_root();
        let key = match rsa::PrivateKey::new(&mut TestRng, 1024) {
            Ok(k) => k,
            Err(e) => panic!("{e}"),
        };
        let public = match rsa::PublicKey::from(&key).to_pkcs1_der() {
            Ok(d) => d.as_bytes().to_vec(),
            Err(e) => panic!("{e}"),
        };
        let cert = (|| {
            let issuer = rcgen::Issuer::from_ca_cert_der(
                &CertificateDer::from(ca.cert_der()),
                rcgen::KeyPair::from_pem(ca.key_pem())?,
            )?;
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
            (params.not_before, params.not_after) = valid_now();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "VP RSA-1024");
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.signed_by(&RsaPublic(public), &issuer)
        })();
        let cert = match cert {
            Ok(c) => c.der().to_vec(),
            Err(e) => panic!("{e}"),
        };
        let payload = envelope().encode_to_vec();
        let msg = pae(ENVELOPE_PAYLOAD_TYPE, &payload);
        let sig = Signature {
            algorithm: "RS256".into(),
            value: Bytes::from(rsa_sign(&key, &SHA256_INFO, &sha256(&msg))),
            certificates: vec![Bytes::from(cert)],
        };
        let e = err(verify_signature(&sig, &msg, &anchors(&ca), UnixTime::now()));
        // Not BAD_SIGNATURE: the signature itself is sound; what is refused is
        // trusting a certificate whose key is too weak to prove anything.
        assert_eq!(e.reason(), Reason::UntrustedCertificate, "{}", e.message());
        assert!(
            e.message()
                .contains("the key of the certificate of CN=VP RSA-1024 is RSA-1024; at least 2048 bits are required"),
            "{}",
            e.message()
        );
    }

    /// `issued` as if its CA had signed it with SHA-1: the signature
    /// algorithm (in the to-be-signed part and outside it) becomes
    /// sha1WithRSAEncryption, and the CA's key signs the new bytes.
    fn resigned_with_sha1(issued: &Issued, ca: &DevCa) -> Vec<u8> {
        use rsa::pkcs8::DecodePrivateKey;
        let sha256_rsa = [
            0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b,
        ];
        let mut der = issued.cert_der.clone();
        let mut found = 0;
        for i in 0..der.len() - sha256_rsa.len() {
            if der[i..i + sha256_rsa.len()] == sha256_rsa {
                der[i + sha256_rsa.len() - 1] = 0x05;
                found += 1;
            }
        }
        assert_eq!(found, 2, "both algorithm identifiers");
        let Some((_, _, body, _)) = crate::der::der_next(&der) else {
            panic!("not DER");
        };
        let Some((_, tbs, _, _)) = crate::der::der_next(body) else {
            panic!("no tbs");
        };
        let sha1 = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, tbs);
        let key = match rsa::PrivateKey::from_pkcs8_pem(ca.key_pem()) {
            Ok(k) => k,
            Err(e) => panic!("{e}"),
        };
        let sig = rsa_sign(&key, &SHA1_INFO, sha1.as_ref());
        let at = der.len() - sig.len();
        der[at..].copy_from_slice(&sig);
        der
    }

    #[test]
    fn sha1_chains_are_refused_unless_allowed() {
        let ca = shared_rsa_root();
        let issued = leaf(ca, KeyType::EcP256);
        let old = resigned_with_sha1(&issued, ca);
        let key = ok(SigningKey::from_pkcs8_pem(&issued.key_pem, None));
        let signed = ok(sign_envelope(&envelope(), &key, std::slice::from_ref(&old)));

        let e = err(verify_one(&signed, &anchors(ca)));
        assert_eq!(e.reason(), Reason::UntrustedCertificate, "{}", e.message());
        assert!(
            e.message()
                .contains("signed by its CA with SHA-1 (sha1WithRSAEncryption)")
                && e.message().contains("trust.refuse_sha1"),
            "{}",
            e.message()
        );

        // The operator may accept such chains: the SHA-1 link then verifies
        // (and a wrong one would not).
        let lax = anchors(ca).with_policy(CertPolicy {
            refuse_sha1: false,
            ..CertPolicy::default()
        });
        let v = ok(verify_one(&signed, &lax));
        assert!(v.subject.contains("CN=Văn phòng"), "{}", v.subject);
        let mut broken = old.clone();
        let last = broken.len() - 1;
        broken[last] ^= 1;
        let bad = ok(sign_envelope(&envelope(), &key, &[broken]));
        assert_eq!(
            err(verify_one(&bad, &lax)).reason(),
            Reason::UntrustedCertificate
        );
    }

    #[test]
    fn the_chain_must_be_valid_at_the_claimed_signing_time_too() {
        let ca = ec_root();
        let now = OffsetDateTime::now_utc();
        let issued = ok(ca.issue_signing(
            "000.00.01.H35",
            "VP",
            KeyType::EcP256,
            (now - Duration::days(1), now + Duration::days(30)),
        ));
        let signed = sign(&issued, None);
        let msg = pae(&signed.payload_type, &signed.payload);
        let at = |t: OffsetDateTime| {
            UnixTime::since_unix_epoch(std::time::Duration::from_secs(t.unix_timestamp() as u64))
        };
        let opts = |signed_at| VerifyOptions::at(UnixTime::now()).signed_at(Some(signed_at));
        let check = |o: &VerifyOptions| {
            verify_signature_with(&signed.signatures[0], &msg, &anchors(&ca), o)
        };

        assert!(check(&opts(at(now - Duration::hours(2)))).is_ok());
        assert!(check(&VerifyOptions::at(UnixTime::now())).is_ok());

        let e = err(check(&opts(at(now - Duration::days(3)))));
        assert_eq!(e.reason(), Reason::CertificateExpired, "{}", e.message());
        assert!(
            e.message().contains("created_at") && e.message().contains("was not valid yet"),
            "{}",
            e.message()
        );
        let e = err(check(&opts(at(now + Duration::days(31)))));
        assert!(e.message().contains("had expired"), "{}", e.message());

        let env = Envelope {
            created_at: Some(prost_types::Timestamp {
                seconds: now.unix_timestamp(),
                nanos: 0,
            }),
            ..envelope()
        };
        assert_eq!(
            signed_at_of(&env).map(|t| t.as_secs()),
            Some(now.unix_timestamp() as u64)
        );
        assert!(signed_at_of(&envelope()).is_none());
    }

    // ----- the verified chains kept ------------------------------------

    fn at(t: OffsetDateTime) -> UnixTime {
        UnixTime::since_unix_epoch(std::time::Duration::from_secs(t.unix_timestamp() as u64))
    }

    fn signed_with(issued: &Issued, chain: &[Vec<u8>], subject: &str) -> SignedEnvelope {
        let key = ok(SigningKey::from_pkcs8_pem(&issued.key_pem, None));
        let mut env = envelope();
        if let Some(Body::Document(d)) = env.body.as_mut() {
            d.subject = subject.to_owned();
        }
        ok(sign_envelope(&env, &key, chain))
    }

    fn verify_at(
        signed: &SignedEnvelope,
        a: &TrustAnchors,
        opts: &VerifyOptions,
    ) -> Result<VerifiedSigner> {
        let msg = pae(&signed.payload_type, &signed.payload);
        verify_signature_with(&signed.signatures[0], &msg, a, opts)
    }

    #[test]
    fn a_chain_is_verified_once_and_every_document_is_still_checked() {
        let root = ec_root();
        let mid = ok(root.intermediate("Test Issuing CA", KeyType::EcP256));
        let issued = leaf(&mid, KeyType::EcP256);
        let trust = anchors(&root);
        let shared = trust.clone();
        let first = ok(verify_one(
            &signed_with(&issued, &issued.chain_der, "một"),
            &trust,
        ));
        let second = ok(verify_one(
            &signed_with(&issued, &issued.chain_der, "hai"),
            &shared,
        ));
        assert_eq!(first, second, "the same outcome, from the cache");
        let stats = trust.chain_cache_stats();
        assert_eq!((stats.verified, stats.reused, stats.entries), (1, 1, 1));

        // The signature over each document is its own: a changed payload is
        // refused though its chain is known.
        let mut changed = signed_with(&issued, &issued.chain_der, "ba");
        let mut payload = changed.payload.to_vec();
        payload.push(b' ');
        changed.payload = payload.into();
        assert_eq!(
            err(verify_one(&changed, &trust)).reason(),
            Reason::BadSignature
        );

        // So is the claimed signing time.
        let now = OffsetDateTime::now_utc();
        let e = err(verify_at(
            &signed_with(&issued, &issued.chain_der, "bốn"),
            &trust,
            &VerifyOptions::at(UnixTime::now()).signed_at(Some(at(now - Duration::days(3)))),
        ));
        assert_eq!(e.reason(), Reason::CertificateExpired, "{}", e.message());
        assert!(e.message().contains("was not valid yet"), "{}", e.message());

        // The leaf without its intermediate is another list of certificates:
        // refused, as without a cache.
        let bare = signed_with(&issued, &issued.chain_der[..1], "năm");
        assert_eq!(
            err(verify_one(&bare, &trust)).reason(),
            Reason::UntrustedCertificate
        );
        // The root sent along (a common habit) is the anchor: still kept.
        let mut with_root = issued.chain_der.clone();
        with_root.push(root.cert_der().to_vec());
        for subject in ["sáu", "bảy"] {
            ok(verify_one(
                &signed_with(&issued, &with_root, subject),
                &trust,
            ));
        }
        // A certificate the path does not use: verified every time.
        let stranger = leaf(&root, KeyType::EcP256);
        let mut with_stranger = issued.chain_der.clone();
        with_stranger.push(stranger.cert_der.clone());
        for subject in ["tám", "chín"] {
            ok(verify_one(
                &signed_with(&issued, &with_stranger, subject),
                &trust,
            ));
        }
        let stats = trust.chain_cache_stats();
        assert_eq!(
            (stats.verified, stats.entries),
            (1 + 1 + 1 + 2, 2),
            "{stats:?}"
        );

        // Other anchors or another policy start with nothing kept.
        let strict = trust.clone().with_policy(CertPolicy {
            refuse_sha1: false,
            ..CertPolicy::default()
        });
        assert_eq!(strict.chain_cache_stats(), ChainCacheStats::default());
    }

    #[test]
    fn a_kept_chain_is_used_only_while_its_path_is_valid() {
        let root = ec_root();
        let now = OffsetDateTime::now_utc();
        // The intermediate expires before the leaf: it bounds the entry.
        let mid = ok(root.intermediate_with_validity(
            "Test Issuing CA",
            KeyType::EcP256,
            (now - Duration::days(1), now + Duration::days(5)),
        ));
        let issued = ok(mid.issue_signing(
            "000.00.01.H35",
            "VP",
            KeyType::EcP256,
            (now - Duration::days(1), now + Duration::days(30)),
        ));
        let trust = anchors(&root);
        let signed = signed_with(&issued, &issued.chain_der, "một");
        let when = |t| VerifyOptions::at(at(t));
        ok(verify_at(&signed, &trust, &when(now)));
        ok(verify_at(&signed, &trust, &when(now + Duration::days(4))));
        assert_eq!(trust.chain_cache_stats().verified, 1);

        let e = err(verify_at(&signed, &trust, &when(now + Duration::days(6))));
        assert_eq!(e.reason(), Reason::CertificateExpired, "{}", e.message());
        assert!(
            e.message().contains("CN=Test Issuing CA"),
            "{}",
            e.message()
        );
        // Before the path was valid, too.
        let e = err(verify_at(&signed, &trust, &when(now - Duration::days(2))));
        assert_eq!(e.reason(), Reason::CertificateExpired, "{}", e.message());
        let stats = trust.chain_cache_stats();
        assert_eq!((stats.verified, stats.reused), (3, 1), "{stats:?}");
    }

    #[test]
    fn the_cache_keeps_a_bounded_number_of_chains() {
        let root = ec_root();
        let trust = anchors(&root).with_chain_cache(2);
        let signers: Vec<Issued> = (0..3).map(|_| leaf(&root, KeyType::EcP256)).collect();
        for s in &signers {
            ok(verify_one(&signed_with(s, &s.chain_der, "một"), &trust));
        }
        assert_eq!(trust.chain_cache_stats().entries, 2);
        // The first one went out first: verified again; the last is kept.
        ok(verify_one(
            &signed_with(&signers[0], &signers[0].chain_der, "hai"),
            &trust,
        ));
        ok(verify_one(
            &signed_with(&signers[2], &signers[2].chain_der, "hai"),
            &trust,
        ));
        let stats = trust.chain_cache_stats();
        assert_eq!(
            (stats.verified, stats.reused, stats.entries),
            (4, 1, 2),
            "{stats:?}"
        );

        let off = anchors(&root).with_chain_cache(0);
        for _ in 0..2 {
            ok(verify_one(
                &signed_with(&signers[0], &signers[0].chain_der, "ba"),
                &off,
            ));
        }
        assert_eq!(off.chain_cache_stats().verified, 2);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn garbage_never_panics(
            alg in "(RS256|PS256|ES256|ES384|[A-Z0-9]{0,6})",
            value in proptest::collection::vec(any::<u8>(), 0..600),
            certs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..4),
            msg in proptest::collection::vec(any::<u8>(), 0..100),
            text in "\\PC{0,200}",
        ) {
            let sig = Signature {
                algorithm: alg,
                value: Bytes::from(value),
                certificates: certs.iter().cloned().map(Bytes::from).collect(),
            };
            let r = verify_signature(&sig, &msg, &TrustAnchors::empty(), UnixTime::now());
            prop_assert!(r.is_err());
            let _ = SigningKey::from_pkcs8_pem(&text, None);
            let _ = SigningKey::from_pkcs8_der(&msg, None);
            let _ = TrustAnchors::from_pem(&text);
            let _ = TrustAnchors::from_der_certs(&certs);
            for c in &certs {
                let _ = describe_certificate(c);
                let _ = spki_sha256(c);
            }
        }

        #[test]
        fn a_valid_chain_with_a_garbled_byte_never_panics(pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            static CA: std::sync::OnceLock<Option<(DevCa, Issued)>> = std::sync::OnceLock::new();
            let Some((ca, issued)) = CA.get_or_init(|| {
                let ca = DevCa::generate("Fuzz Root", KeyType::EcP256).ok()?;
                let issued = ca.issue_signing("000.00.01.H35", "VP", KeyType::EcP256, valid_now()).ok()?;
                Some((ca, issued))
            }) else {
                return Err(TestCaseError::fail("no PKI"));
            };
            let mut signed = sign(issued, None);
            let mut cert = signed.signatures[0].certificates[0].to_vec();
            let i = pos.index(cert.len());
            cert[i] ^= 1 << bit;
            signed.signatures[0].certificates[0] = Bytes::from(cert);
            // Most flips break the certificate; none may panic or verify
            // unless the flip is in a part nothing covers.
            let _ = verify_one(&signed, &anchors(ca));
        }
    }
}

//! A PDF signing toolkit for the tests of `lienthong pdf verify`, written
//! independently of the verifier (no lienthong-core, no PDF or CMS crate):
//!
//! * [`TestPki`] / [`test_pki`] — a root CA, signers (RSA-2048, P-256,
//!   P-384, an organisation certificate whose CN is its O), an expired
//!   signer, revoked signers and their CRL, an untrusted root with its own
//!   signer, a TSA with the critical EKU timeStamping; rcgen + ring + rsa.
//! * [`minimal_pdf`], [`minimal_pdf_xref_stream`], [`write_large_pdf`] —
//!   base documents (classic xref table; cross-reference stream with the
//!   catalog and page tree in an object stream; ~200 MB in bounded memory).
//! * [`sign`], [`sign_file_in_place`] — an incremental update with a PAdES
//!   signature (`/ETSI.CAdES.detached`): signature dictionary, field and
//!   widget, AcroForm, page `/Annots`, new xref section with `/Prev`, and a
//!   detached CMS `SignedData` encoded by hand ([`der`]), optionally with an
//!   RFC 3161 signature timestamp.
//! * Damage: [`append_content_change`], [`append_text_annotation`],
//!   [`flip_signed_byte`], [`tamper_signature_value`], [`truncate`],
//!   [`corrupt_xref`].
//! * Reading back: [`parse`], [`summary`], [`self_verify`] (the toolkit's
//!   own check of what it wrote), [`byte_ranges`].
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CustomExtension,
    DistinguishedName, DnType, DnValue, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod,
    KeyPair, KeyUsagePurpose, RevocationReason, RevokedCertParams, SerialNumber,
};
use ring::digest;
use ring::rand::SystemRandom;
use ring::signature::{self as rsig, EcdsaKeyPair, RsaKeyPair};
use time::OffsetDateTime;
use time::macros::datetime;

// ---------------------------------------------------------------------------
// Names and times the tests share
// ---------------------------------------------------------------------------

/// The organisation of the person signers and of the organisation signer.
pub const ORGANISATION: &str = "Sở Nội vụ tỉnh Thử nghiệm";
/// The organisation of the ECDSA signers.
pub const OFFICE: &str = "Văn phòng UBND tỉnh Thử nghiệm";
/// CN of the RSA person signer.
pub const RSA_SIGNER_CN: &str = "Nguyễn Văn A";
/// CN of the P-256 person signer.
pub const EC_SIGNER_CN: &str = "Trần Thị B";
/// CN of the P-384 person signer.
pub const P384_SIGNER_CN: &str = "Lê Văn C";

/// The signing time [`SignOptions::new`] uses: 2026-03-01T08:00:00Z.
pub fn default_signing_time() -> OffsetDateTime {
    datetime!(2026-03-01 08:00:00 UTC)
}

/// When [`TestPki::revoked`] was revoked: a month before [`default_signing_time`].
pub fn revoked_at() -> OffsetDateTime {
    datetime!(2026-02-01 00:00:00 UTC)
}

/// When [`TestPki::revoked_later`] was revoked: three months after [`default_signing_time`].
pub fn revoked_later_at() -> OffsetDateTime {
    datetime!(2026-06-01 00:00:00 UTC)
}

/// RFC 3339 UTC with seconds and `Z`, as the verifier prints times.
pub fn rfc3339(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

// ---------------------------------------------------------------------------
// DER
// ---------------------------------------------------------------------------

/// A tiny DER writer (and reader) for CMS: tag-length-value, nothing more.
pub mod der {
    use time::OffsetDateTime;

    pub const INTEGER: u8 = 0x02;
    pub const BIT_STRING: u8 = 0x03;
    pub const OCTET_STRING: u8 = 0x04;
    pub const OID: u8 = 0x06;
    pub const SEQUENCE: u8 = 0x30;
    pub const SET: u8 = 0x31;

    pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(content.len() + 6);
        out.push(tag);
        let n = content.len();
        if n < 0x80 {
            out.push(n as u8);
        } else {
            let bytes = (n as u64).to_be_bytes();
            let skip = bytes.iter().take_while(|b| **b == 0).count();
            out.push(0x80 | (8 - skip) as u8);
            out.extend_from_slice(&bytes[skip..]);
        }
        out.extend_from_slice(content);
        out
    }

    pub fn seq(parts: &[&[u8]]) -> Vec<u8> {
        tlv(SEQUENCE, &parts.concat())
    }

    /// A SET OF in DER order (elements sorted by their encodings).
    pub fn set_of(mut items: Vec<Vec<u8>>) -> Vec<u8> {
        items.sort();
        tlv(SET, &items.concat())
    }

    /// `[n]` constructed (EXPLICIT, or IMPLICIT of a constructed type).
    pub fn ctx(n: u8, content: &[u8]) -> Vec<u8> {
        tlv(0xA0 | n, content)
    }

    /// An OBJECT IDENTIFIER from its dotted form.
    pub fn oid(dotted: &str) -> Vec<u8> {
        let arcs: Vec<u64> = dotted
            .split('.')
            .map(|a| a.parse().expect("OID arc"))
            .collect();
        assert!(arcs.len() >= 2, "OID {dotted} has fewer than two arcs");
        let mut body = Vec::new();
        let mut push = |mut v: u64| {
            let mut tmp = vec![(v & 0x7f) as u8];
            v >>= 7;
            while v > 0 {
                tmp.push(0x80 | (v & 0x7f) as u8);
                v >>= 7;
            }
            tmp.reverse();
            body.extend(tmp);
        };
        push(arcs[0] * 40 + arcs[1]);
        for a in &arcs[2..] {
            push(*a);
        }
        tlv(OID, &body)
    }

    /// A non-negative INTEGER.
    pub fn uint(v: u64) -> Vec<u8> {
        let bytes = v.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count().min(7);
        let mut content = bytes[skip..].to_vec();
        if content[0] & 0x80 != 0 {
            content.insert(0, 0);
        }
        tlv(INTEGER, &content)
    }

    /// An INTEGER from its content octets as they are (e.g. a certificate's serial).
    pub fn int_raw(content: &[u8]) -> Vec<u8> {
        tlv(INTEGER, content)
    }

    pub fn octets(b: &[u8]) -> Vec<u8> {
        tlv(OCTET_STRING, b)
    }

    pub fn null() -> Vec<u8> {
        vec![0x05, 0x00]
    }

    pub fn utc_time(t: OffsetDateTime) -> Vec<u8> {
        let t = t.to_offset(time::UtcOffset::UTC);
        let s = format!(
            "{:02}{:02}{:02}{:02}{:02}{:02}Z",
            t.year() % 100,
            t.month() as u8,
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        );
        tlv(0x17, s.as_bytes())
    }

    pub fn generalized_time(t: OffsetDateTime) -> Vec<u8> {
        let t = t.to_offset(time::UtcOffset::UTC);
        let s = format!(
            "{:04}{:02}{:02}{:02}{:02}{:02}Z",
            t.year(),
            t.month() as u8,
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        );
        tlv(0x18, s.as_bytes())
    }

    /// AlgorithmIdentifier with optional parameters.
    pub fn alg_id(dotted: &str, params: Option<&[u8]>) -> Vec<u8> {
        match params {
            Some(p) => seq(&[&oid(dotted), p]),
            None => seq(&[&oid(dotted)]),
        }
    }

    /// A node of a DER buffer, by absolute offsets into that buffer.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Node {
        pub tag: u8,
        pub start: usize,
        pub content_start: usize,
        pub end: usize,
    }

    impl Node {
        pub fn content<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
            &buf[self.content_start..self.end]
        }
        pub fn raw<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
            &buf[self.start..self.end]
        }
    }

    /// The TLV at `pos` (definite lengths only).
    pub fn node_at(buf: &[u8], pos: usize) -> Option<Node> {
        let tag = *buf.get(pos)?;
        let first = *buf.get(pos + 1)? as usize;
        let (len, hdr) = if first < 0x80 {
            (first, 2)
        } else {
            let n = first & 0x7f;
            if n == 0 || n > 8 {
                return None;
            }
            let mut len = 0usize;
            for i in 0..n {
                len = (len << 8) | *buf.get(pos + 2 + i)? as usize;
            }
            (len, 2 + n)
        };
        let end = pos.checked_add(hdr)?.checked_add(len)?;
        if end > buf.len() {
            return None;
        }
        Some(Node {
            tag,
            start: pos,
            content_start: pos + hdr,
            end,
        })
    }

    /// The children of a constructed node.
    pub fn children(buf: &[u8], parent: &Node) -> Option<Vec<Node>> {
        let mut out = Vec::new();
        let mut pos = parent.content_start;
        while pos < parent.end {
            let n = node_at(buf, pos)?;
            if n.end > parent.end {
                return None;
            }
            pos = n.end;
            out.push(n);
        }
        Some(out)
    }
}

// OIDs
const OID_DATA: &str = "1.2.840.113549.1.7.1";
const OID_SIGNED_DATA: &str = "1.2.840.113549.1.7.2";
const OID_CONTENT_TYPE: &str = "1.2.840.113549.1.9.3";
const OID_MESSAGE_DIGEST: &str = "1.2.840.113549.1.9.4";
const OID_SIGNING_TIME: &str = "1.2.840.113549.1.9.5";
const OID_SIGNING_CERT_V2: &str = "1.2.840.113549.1.9.16.2.47";
const OID_SIGNATURE_TIMESTAMP: &str = "1.2.840.113549.1.9.16.2.14";
const OID_TST_INFO: &str = "1.2.840.113549.1.9.16.1.4";
const OID_SHA256: &str = "2.16.840.1.101.3.4.2.1";
const OID_SHA384: &str = "2.16.840.1.101.3.4.2.2";
const OID_RSA_ENCRYPTION: &str = "1.2.840.113549.1.1.1";
const OID_SHA256_WITH_RSA: &str = "1.2.840.113549.1.1.11";
const OID_SHA384_WITH_RSA: &str = "1.2.840.113549.1.1.12";
const OID_RSASSA_PSS: &str = "1.2.840.113549.1.1.10";
const OID_MGF1: &str = "1.2.840.113549.1.1.8";
const OID_ECDSA_SHA256: &str = "1.2.840.10045.4.3.2";
const OID_ECDSA_SHA384: &str = "1.2.840.10045.4.3.3";
/// A made-up TSA policy (under Vietnam's country arc, for tests only).
const OID_TSA_POLICY: &str = "2.16.704.1.99.1";

// ---------------------------------------------------------------------------
// Keys and certificates
// ---------------------------------------------------------------------------

/// Key types of the test PKI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    Rsa2048,
    EcP256,
    EcP384,
}

/// The CMS digest algorithm (and the hash of the signature).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DigestAlg {
    Sha256,
    Sha384,
}

impl DigestAlg {
    fn ring(self) -> &'static digest::Algorithm {
        match self {
            DigestAlg::Sha256 => &digest::SHA256,
            DigestAlg::Sha384 => &digest::SHA384,
        }
    }
    fn oid(self) -> &'static str {
        match self {
            DigestAlg::Sha256 => OID_SHA256,
            DigestAlg::Sha384 => OID_SHA384,
        }
    }
    /// `SHA256` / `SHA384`, as in the verifier's algorithm names.
    pub fn label(self) -> &'static str {
        match self {
            DigestAlg::Sha256 => "SHA256",
            DigestAlg::Sha384 => "SHA384",
        }
    }
}

/// How an RSA key signs, and which signatureAlgorithm the SignerInfo names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RsaScheme {
    /// PKCS#1 v1.5, signatureAlgorithm rsaEncryption (what most PDF signers write).
    Pkcs1RsaEncryption,
    /// PKCS#1 v1.5, signatureAlgorithm sha256WithRSAEncryption / sha384WithRSAEncryption.
    Pkcs1WithHash,
    /// RSASSA-PSS, MGF1 with the same hash, salt length = hash length.
    Pss,
}

/// A private key the toolkit signs with (PKCS#8 for ring).
pub struct SigningKey {
    pub kind: KeyKind,
    pkcs8: Vec<u8>,
}

impl SigningKey {
    /// Signs `msg`; returns the signature and the CMS signatureAlgorithm.
    pub fn sign(&self, scheme: RsaScheme, digest: DigestAlg, msg: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let rng = SystemRandom::new();
        match self.kind {
            KeyKind::Rsa2048 => {
                let kp = RsaKeyPair::from_pkcs8(&self.pkcs8).expect("ring accepts the RSA key");
                let padding: &'static dyn rsig::RsaEncoding = match (scheme, digest) {
                    (RsaScheme::Pss, DigestAlg::Sha256) => &rsig::RSA_PSS_SHA256,
                    (RsaScheme::Pss, DigestAlg::Sha384) => &rsig::RSA_PSS_SHA384,
                    (_, DigestAlg::Sha256) => &rsig::RSA_PKCS1_SHA256,
                    (_, DigestAlg::Sha384) => &rsig::RSA_PKCS1_SHA384,
                };
                let mut sig = vec![0u8; kp.public().modulus_len()];
                kp.sign(padding, &rng, msg, &mut sig).expect("RSA signing");
                let alg = match scheme {
                    RsaScheme::Pkcs1RsaEncryption => {
                        der::alg_id(OID_RSA_ENCRYPTION, Some(&der::null()))
                    }
                    RsaScheme::Pkcs1WithHash => der::alg_id(
                        match digest {
                            DigestAlg::Sha256 => OID_SHA256_WITH_RSA,
                            DigestAlg::Sha384 => OID_SHA384_WITH_RSA,
                        },
                        Some(&der::null()),
                    ),
                    RsaScheme::Pss => {
                        let hash = der::alg_id(digest.oid(), None);
                        let salt = match digest {
                            DigestAlg::Sha256 => 32,
                            DigestAlg::Sha384 => 48,
                        };
                        let params = der::seq(&[
                            &der::ctx(0, &hash),
                            &der::ctx(1, &der::alg_id(OID_MGF1, Some(&hash))),
                            &der::ctx(2, &der::uint(salt)),
                        ]);
                        der::alg_id(OID_RSASSA_PSS, Some(&params))
                    }
                };
                (sig, alg)
            }
            KeyKind::EcP256 | KeyKind::EcP384 => {
                let alg: &'static rsig::EcdsaSigningAlgorithm = match (self.kind, digest) {
                    (KeyKind::EcP256, DigestAlg::Sha256) => &rsig::ECDSA_P256_SHA256_ASN1_SIGNING,
                    (KeyKind::EcP384, DigestAlg::Sha384) => &rsig::ECDSA_P384_SHA384_ASN1_SIGNING,
                    (k, d) => {
                        panic!("ring signs {k:?} keys with their own curve's hash, not {d:?}")
                    }
                };
                let kp = EcdsaKeyPair::from_pkcs8(alg, &self.pkcs8, &rng)
                    .expect("ring accepts the EC key");
                let sig = kp.sign(&rng, msg).expect("ECDSA signing").as_ref().to_vec();
                let oid = match digest {
                    DigestAlg::Sha256 => OID_ECDSA_SHA256,
                    DigestAlg::Sha384 => OID_ECDSA_SHA384,
                };
                (sig, der::alg_id(oid, None))
            }
        }
    }

    /// The key as PKCS#8 DER.
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }
}

/// ring signs with RSA keys but cannot make them; RustCrypto's `rsa` does.
fn generate_rsa_pkcs8() -> Vec<u8> {
    use rsa::pkcs8::EncodePrivateKey;
    let key = rsa::PrivateKey::new(&mut RingRng, 2048).expect("generate an RSA-2048 key");
    key.to_pkcs8_der()
        .expect("encode the RSA key as PKCS#8")
        .as_bytes()
        .to_vec()
}

struct RingRng;

#[derive(Debug)]
struct RngFailed;

impl std::fmt::Display for RngFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the system random number generator failed")
    }
}

impl std::error::Error for RngFailed {}

impl rsa::rand_core::TryRng for RingRng {
    type Error = RngFailed;
    fn try_next_u32(&mut self) -> Result<u32, RngFailed> {
        let mut b = [0u8; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn try_next_u64(&mut self) -> Result<u64, RngFailed> {
        let mut b = [0u8; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), RngFailed> {
        use ring::rand::SecureRandom;
        SystemRandom::new().fill(dst).map_err(|_| RngFailed)
    }
}

impl rsa::rand_core::TryCryptoRng for RingRng {}

/// A fresh key: rcgen's form (for certificates) and the toolkit's (for signing).
fn generate_key(kind: KeyKind) -> (KeyPair, SigningKey) {
    let kp = match kind {
        KeyKind::Rsa2048 => {
            let pkcs8 = generate_rsa_pkcs8();
            KeyPair::from_pkcs8_der_and_sign_algo(
                &rustls_pki_types::PrivatePkcs8KeyDer::from(pkcs8.as_slice()),
                &rcgen::PKCS_RSA_SHA256,
            )
            .expect("rcgen accepts the RSA key")
        }
        KeyKind::EcP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256"),
        KeyKind::EcP384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("P-384"),
    };
    let pkcs8 = kp.serialize_der();
    (kp, SigningKey { kind, pkcs8 })
}

fn random_serial() -> SerialNumber {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    SystemRandom::new().fill(&mut b).expect("random");
    b[0] = 0x10 | (b[0] & 0x3f); // positive, no leading zero
    SerialNumber::from_slice(&b)
}

fn dn(country: &str, org: &str, cn: &str) -> DistinguishedName {
    let mut d = DistinguishedName::new();
    d.push(
        DnType::CountryName,
        DnValue::PrintableString(country.try_into().expect("printable country")),
    );
    d.push(DnType::OrganizationName, org);
    d.push(DnType::CommonName, cn);
    d
}

/// The subject of a certificate as x509-parser's `Display` prints it.
pub fn subject_of(cert_der: &[u8]) -> String {
    let (_, c) = x509_parser::parse_x509_certificate(cert_der).expect("parse certificate");
    c.subject().to_string()
}

/// The serial of a certificate (INTEGER content octets).
pub fn serial_of(cert_der: &[u8]) -> Vec<u8> {
    let (_, c) = x509_parser::parse_x509_certificate(cert_der).expect("parse certificate");
    c.tbs_certificate.raw_serial().to_vec()
}

fn issuer_and_serial(cert_der: &[u8]) -> Vec<u8> {
    let (_, c) = x509_parser::parse_x509_certificate(cert_der).expect("parse certificate");
    der::seq(&[
        c.tbs_certificate.issuer.as_raw(),
        &der::int_raw(c.tbs_certificate.raw_serial()),
    ])
}

fn pem(label: &str, der_bytes: &[u8]) -> String {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der_bytes.chunks(3) {
        let n = (chunk[0] as u32) << 16
            | (*chunk.get(1).unwrap_or(&0) as u32) << 8
            | *chunk.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A certificate with its private key, for signing.
pub struct Identity {
    pub cert_der: Vec<u8>,
    pub cert_pem: String,
    pub key: SigningKey,
    /// The issuer's certificate (what "include the chain" embeds).
    pub issuer_der: Vec<u8>,
}

impl Identity {
    /// An identity from its parts (e.g. handed to another process as files).
    pub fn from_parts(
        cert_der: Vec<u8>,
        kind: KeyKind,
        key_pkcs8: Vec<u8>,
        issuer_der: Vec<u8>,
    ) -> Identity {
        Identity {
            cert_pem: pem("CERTIFICATE", &cert_der),
            cert_der,
            key: SigningKey {
                kind,
                pkcs8: key_pkcs8,
            },
            issuer_der,
        }
    }

    /// The subject as x509-parser prints it, e.g. `C=VN, O=…, CN=…`.
    pub fn subject(&self) -> String {
        subject_of(&self.cert_der)
    }
    /// The serial (INTEGER content octets).
    pub fn serial(&self) -> Vec<u8> {
        serial_of(&self.cert_der)
    }
    /// Writes the certificate as PEM.
    pub fn write_pem(&self, path: &Path) {
        std::fs::write(path, &self.cert_pem)
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
}

/// A certificate authority whose key we hold.
pub struct Ca {
    pub cert_der: Vec<u8>,
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    /// A self-signed root CA, valid 2024–2045.
    pub fn root(org: &str, cn: &str, kind: KeyKind) -> Ca {
        let (key, _) = generate_key(kind);
        let mut params = CertificateParams::default();
        params.distinguished_name = dn("VN", org, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = datetime!(2024-01-01 00:00:00 UTC);
        params.not_after = datetime!(2045-01-01 00:00:00 UTC);
        params.serial_number = Some(random_serial());
        params.key_identifier_method = KeyIdMethod::Sha256;
        let cert = params.self_signed(&key).expect("self-sign the root");
        Ca {
            cert_der: cert.der().to_vec(),
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The subject as x509-parser prints it.
    pub fn subject(&self) -> String {
        subject_of(&self.cert_der)
    }

    /// Writes the CA certificate as PEM (what `--anchors` takes).
    pub fn write_pem(&self, path: &Path) {
        std::fs::write(path, &self.cert_pem)
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// A document-signing certificate `C=VN, O=org, CN=cn`.
    pub fn issue(
        &self,
        org: &str,
        cn: &str,
        kind: KeyKind,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Identity {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn("VN", org, cn);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::ContentCommitment,
        ];
        // Shaped like the government CA's signing certificates.
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::EmailProtection,
        ];
        self.issue_with(params, kind, not_before, not_after)
    }

    /// A timestamping authority: EKU timeStamping, critical (RFC 3161 §2.3).
    pub fn issue_tsa(&self, org: &str, cn: &str) -> Identity {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn("VN", org, cn);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::ContentCommitment,
        ];
        let mut eku = CustomExtension::from_oid_content(
            &[2, 5, 29, 37],
            der::seq(&[&der::oid("1.3.6.1.5.5.7.3.8")]),
        );
        eku.set_criticality(true);
        params.custom_extensions = vec![eku];
        self.issue_with(
            params,
            KeyKind::EcP256,
            datetime!(2025-01-01 00:00:00 UTC),
            datetime!(2040-01-01 00:00:00 UTC),
        )
    }

    fn issue_with(
        &self,
        mut params: CertificateParams,
        kind: KeyKind,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Identity {
        let (kp, key) = generate_key(kind);
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        params.key_identifier_method = KeyIdMethod::Sha256;
        let cert = params
            .signed_by(&kp, &self.issuer)
            .expect("issue certificate");
        Identity {
            cert_der: cert.der().to_vec(),
            cert_pem: cert.pem(),
            key,
            issuer_der: self.cert_der.clone(),
        }
    }

    /// A CRL (DER) of this CA listing `revoked` (certificate, revocation time).
    pub fn crl(
        &self,
        revoked: &[(&Identity, OffsetDateTime)],
        this_update: OffsetDateTime,
        next_update: OffsetDateTime,
    ) -> Vec<u8> {
        let params = CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|(id, at)| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&id.serial()),
                    revocation_time: *at,
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params
            .signed_by(&self.issuer)
            .expect("sign CRL")
            .der()
            .to_vec()
    }
}

/// The PKI of the PDF tests (made once per test process: RSA keys are slow).
pub struct TestPki {
    /// The trusted root (RSA-2048): what the tests pass to `--anchors`.
    pub root: Ca,
    /// A root the verifier is not told about (P-256).
    pub untrusted_root: Ca,
    /// RSA-2048, `C=VN, O=ORGANISATION, CN=RSA_SIGNER_CN`.
    pub rsa_signer: Identity,
    /// P-256, `C=VN, O=OFFICE, CN=EC_SIGNER_CN`.
    pub ec_signer: Identity,
    /// P-384, `C=VN, O=OFFICE, CN=P384_SIGNER_CN`.
    pub p384_signer: Identity,
    /// The organisation's own certificate (RSA-2048): CN == O == ORGANISATION.
    pub organisation: Identity,
    /// Valid 2020-01-01 – 2021-01-01 only.
    pub expired: Identity,
    /// On [`TestPki::crl_der`], revoked at [`revoked_at`] (before signing).
    pub revoked: Identity,
    /// On [`TestPki::crl_der`], revoked at [`revoked_later_at`] (after signing).
    pub revoked_later: Identity,
    /// Issued by [`TestPki::untrusted_root`].
    pub untrusted_signer: Identity,
    /// The timestamping authority (issued by the trusted root).
    pub tsa: Identity,
    /// The root's CRL: `revoked` and `revoked_later`.
    pub crl_der: Vec<u8>,
}

/// The shared [`TestPki`].
pub fn test_pki() -> &'static TestPki {
    static PKI: OnceLock<TestPki> = OnceLock::new();
    PKI.get_or_init(TestPki::generate)
}

impl TestPki {
    pub fn generate() -> TestPki {
        let from = datetime!(2025-01-01 00:00:00 UTC);
        let to = datetime!(2035-01-01 00:00:00 UTC);
        let root = Ca::root(
            "Ban Cơ yếu Chính phủ (thử nghiệm)",
            "lienthong e2e PDF Root CA",
            KeyKind::Rsa2048,
        );
        let untrusted_root = Ca::root(
            "Tổ chức không được tin cậy",
            "lienthong e2e untrusted root",
            KeyKind::EcP256,
        );
        let rsa_signer = root.issue(ORGANISATION, RSA_SIGNER_CN, KeyKind::Rsa2048, from, to);
        let ec_signer = root.issue(OFFICE, EC_SIGNER_CN, KeyKind::EcP256, from, to);
        let p384_signer = root.issue(OFFICE, P384_SIGNER_CN, KeyKind::EcP384, from, to);
        let organisation = root.issue(ORGANISATION, ORGANISATION, KeyKind::Rsa2048, from, to);
        let expired = root.issue(
            ORGANISATION,
            "Phạm Văn Hết Hạn",
            KeyKind::EcP256,
            datetime!(2020-01-01 00:00:00 UTC),
            datetime!(2021-01-01 00:00:00 UTC),
        );
        let revoked = root.issue(ORGANISATION, "Hoàng Văn Thu Hồi", KeyKind::EcP256, from, to);
        let revoked_later = root.issue(
            ORGANISATION,
            "Đỗ Thị Thu Hồi Sau",
            KeyKind::EcP256,
            from,
            to,
        );
        let untrusted_signer = untrusted_root.issue(
            "Tổ chức không được tin cậy",
            "Người Lạ",
            KeyKind::EcP256,
            from,
            to,
        );
        let tsa = root.issue_tsa("Ban Cơ yếu Chính phủ (thử nghiệm)", "lienthong e2e TSA");
        let crl_der = root.crl(
            &[
                (&revoked, revoked_at()),
                (&revoked_later, revoked_later_at()),
            ],
            datetime!(2026-06-15 00:00:00 UTC),
            datetime!(2036-01-01 00:00:00 UTC),
        );
        TestPki {
            root,
            untrusted_root,
            rsa_signer,
            ec_signer,
            p384_signer,
            organisation,
            expired,
            revoked,
            revoked_later,
            untrusted_signer,
            tsa,
            crl_der,
        }
    }

    /// Writes the trusted root as `dir/root.pem`.
    pub fn write_anchor(&self, dir: &Path) -> PathBuf {
        let p = dir.join("root.pem");
        self.root.write_pem(&p);
        p
    }

    /// Writes the untrusted root as `dir/untrusted-root.pem`.
    pub fn write_untrusted_anchor(&self, dir: &Path) -> PathBuf {
        let p = dir.join("untrusted-root.pem");
        self.untrusted_root.write_pem(&p);
        p
    }

    /// Writes the root's CRL as DER, `dir/root.crl`.
    pub fn write_crl(&self, dir: &Path) -> PathBuf {
        let p = dir.join("root.crl");
        std::fs::write(&p, &self.crl_der).expect("write CRL");
        p
    }

    /// Writes the root's CRL as PEM, `dir/root.crl.pem`.
    pub fn write_crl_pem(&self, dir: &Path) -> PathBuf {
        let p = dir.join("root.crl.pem");
        std::fs::write(&p, pem("X509 CRL", &self.crl_der)).expect("write CRL");
        p
    }
}

// ---------------------------------------------------------------------------
// PDF objects
// ---------------------------------------------------------------------------

/// A dictionary, keys without the slash, in order.
pub type Dict = Vec<(String, Obj)>;

/// A PDF object (enough of the syntax for what this toolkit writes).
#[derive(Clone, Debug, PartialEq)]
pub enum Obj {
    Null,
    Bool(bool),
    Int(i64),
    Real(String),
    Name(String),
    Str(Vec<u8>),
    Hex(Vec<u8>),
    Array(Vec<Obj>),
    Dict(Dict),
    Ref(u32, u16),
}

impl Obj {
    pub fn name(s: &str) -> Obj {
        Obj::Name(s.to_string())
    }
    pub fn as_dict(&self) -> Option<&Dict> {
        match self {
            Obj::Dict(d) => Some(d),
            _ => None,
        }
    }
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Obj::Int(i) => Some(*i),
            _ => None,
        }
    }
    pub fn as_ref_num(&self) -> Option<u32> {
        match self {
            Obj::Ref(n, _) => Some(*n),
            _ => None,
        }
    }
    pub fn as_name(&self) -> Option<&str> {
        match self {
            Obj::Name(n) => Some(n),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&Vec<Obj>> {
        match self {
            Obj::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// A dictionary from `(key, value)` pairs.
pub fn dict<const N: usize>(pairs: [(&str, Obj); N]) -> Dict {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

pub fn dict_get<'a>(d: &'a Dict, key: &str) -> Option<&'a Obj> {
    d.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

pub fn dict_set(d: &mut Dict, key: &str, value: Obj) {
    match d.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = value,
        None => d.push((key.to_string(), value)),
    }
}

fn is_ws(c: u8) -> bool {
    matches!(c, 0 | 9 | 10 | 12 | 13 | 32)
}

fn is_delim(c: u8) -> bool {
    b"()<>[]{}/%".contains(&c)
}

fn is_regular(c: u8) -> bool {
    !is_ws(c) && !is_delim(c)
}

/// Serialises an object.
pub fn write_obj(o: &Obj, out: &mut Vec<u8>) {
    match o {
        Obj::Null => out.extend_from_slice(b"null"),
        Obj::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Obj::Int(i) => out.extend_from_slice(i.to_string().as_bytes()),
        Obj::Real(r) => out.extend_from_slice(r.as_bytes()),
        Obj::Name(n) => {
            out.push(b'/');
            for &c in n.as_bytes() {
                if is_regular(c) && c != b'#' && (0x21..0x7f).contains(&c) {
                    out.push(c);
                } else {
                    out.extend_from_slice(format!("#{c:02X}").as_bytes());
                }
            }
        }
        Obj::Str(s) => {
            out.push(b'(');
            for &c in s {
                match c {
                    b'(' | b')' | b'\\' => {
                        out.push(b'\\');
                        out.push(c);
                    }
                    b'\r' => out.extend_from_slice(b"\\r"),
                    b'\n' => out.extend_from_slice(b"\\n"),
                    _ => out.push(c),
                }
            }
            out.push(b')');
        }
        Obj::Hex(h) => {
            out.push(b'<');
            out.extend_from_slice(hex::encode(h).as_bytes());
            out.push(b'>');
        }
        Obj::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b' ');
                }
                write_obj(x, out);
            }
            out.push(b']');
        }
        Obj::Dict(d) => {
            out.extend_from_slice(b"<<");
            for (k, v) in d {
                out.push(b' ');
                write_obj(&Obj::Name(k.clone()), out);
                out.push(b' ');
                write_obj(v, out);
            }
            out.extend_from_slice(b" >>");
        }
        Obj::Ref(n, g) => out.extend_from_slice(format!("{n} {g} R").as_bytes()),
    }
}

fn obj_bytes(o: &Obj) -> Vec<u8> {
    let mut v = Vec::new();
    write_obj(o, &mut v);
    v
}

/// A tokenizer / parser over a byte window.
pub struct Lexer<'a> {
    pub b: &'a [u8],
    pub pos: usize,
}

impl<'a> Lexer<'a> {
    pub fn new(b: &'a [u8], pos: usize) -> Self {
        Lexer { b, pos }
    }

    pub fn skip_ws(&mut self) {
        while self.pos < self.b.len() {
            let c = self.b[self.pos];
            if is_ws(c) {
                self.pos += 1;
            } else if c == b'%' {
                while self.pos < self.b.len() && !matches!(self.b[self.pos], b'\r' | b'\n') {
                    self.pos += 1;
                }
            } else {
                break;
            }
        }
    }

    /// A keyword or bare word (regular characters).
    pub fn word(&mut self) -> &'a [u8] {
        self.skip_ws();
        let start = self.pos;
        while self.pos < self.b.len() && is_regular(self.b[self.pos]) {
            self.pos += 1;
        }
        &self.b[start..self.pos]
    }

    pub fn expect_word(&mut self, w: &str) -> Result<(), String> {
        let at = self.pos;
        let got = self.word();
        if got == w.as_bytes() {
            Ok(())
        } else {
            Err(format!(
                "expected `{w}` at +{at}, found `{}`",
                String::from_utf8_lossy(&got[..got.len().min(40)])
            ))
        }
    }

    pub fn int(&mut self) -> Result<i64, String> {
        let at = self.pos;
        let w = self.word();
        std::str::from_utf8(w)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                format!(
                    "expected an integer at +{at}, found `{}`",
                    String::from_utf8_lossy(&w[..w.len().min(40)])
                )
            })
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    pub fn parse(&mut self) -> Result<Obj, String> {
        self.skip_ws();
        let Some(c) = self.peek() else {
            return Err("unexpected end of data".into());
        };
        match c {
            b'/' => {
                self.pos += 1;
                let start = self.pos;
                while self.pos < self.b.len() && is_regular(self.b[self.pos]) {
                    self.pos += 1;
                }
                let raw = &self.b[start..self.pos];
                let mut name = Vec::new();
                let mut i = 0;
                while i < raw.len() {
                    if raw[i] == b'#' && i + 3 <= raw.len() {
                        let h = std::str::from_utf8(&raw[i + 1..i + 3]).unwrap_or("");
                        if let Ok(v) = u8::from_str_radix(h, 16) {
                            name.push(v);
                            i += 3;
                            continue;
                        }
                    }
                    name.push(raw[i]);
                    i += 1;
                }
                Ok(Obj::Name(String::from_utf8_lossy(&name).into_owned()))
            }
            b'<' if self.b.get(self.pos + 1) == Some(&b'<') => {
                self.pos += 2;
                let mut d = Dict::new();
                loop {
                    self.skip_ws();
                    if self.b[self.pos..].starts_with(b">>") {
                        self.pos += 2;
                        return Ok(Obj::Dict(d));
                    }
                    let k = match self.parse()? {
                        Obj::Name(n) => n,
                        other => return Err(format!("dictionary key is not a name: {other:?}")),
                    };
                    let v = self.parse()?;
                    d.push((k, v));
                }
            }
            b'<' => {
                self.pos += 1;
                let mut digits = Vec::new();
                loop {
                    let Some(c) = self.peek() else {
                        return Err("unterminated hex string".into());
                    };
                    self.pos += 1;
                    if c == b'>' {
                        break;
                    }
                    if c.is_ascii_hexdigit() {
                        digits.push(c);
                    }
                }
                if digits.len() % 2 == 1 {
                    digits.push(b'0');
                }
                let s = std::str::from_utf8(&digits).unwrap();
                Ok(Obj::Hex(hex::decode(s).map_err(|e| e.to_string())?))
            }
            b'(' => {
                self.pos += 1;
                let mut depth = 1;
                let mut s = Vec::new();
                loop {
                    let Some(c) = self.peek() else {
                        return Err("unterminated string".into());
                    };
                    self.pos += 1;
                    match c {
                        b'\\' => {
                            let Some(e) = self.peek() else {
                                return Err("unterminated string".into());
                            };
                            self.pos += 1;
                            match e {
                                b'n' => s.push(b'\n'),
                                b'r' => s.push(b'\r'),
                                b't' => s.push(b'\t'),
                                b'b' => s.push(8),
                                b'f' => s.push(12),
                                b'0'..=b'7' => {
                                    let mut v = (e - b'0') as u32;
                                    for _ in 0..2 {
                                        match self.peek() {
                                            Some(d @ b'0'..=b'7') => {
                                                v = v * 8 + (d - b'0') as u32;
                                                self.pos += 1;
                                            }
                                            _ => break,
                                        }
                                    }
                                    s.push(v as u8);
                                }
                                b'\r' | b'\n' => {}
                                other => s.push(other),
                            }
                        }
                        b'(' => {
                            depth += 1;
                            s.push(c);
                        }
                        b')' => {
                            depth -= 1;
                            if depth == 0 {
                                return Ok(Obj::Str(s));
                            }
                            s.push(c);
                        }
                        _ => s.push(c),
                    }
                }
            }
            b'[' => {
                self.pos += 1;
                let mut a = Vec::new();
                loop {
                    self.skip_ws();
                    if self.peek() == Some(b']') {
                        self.pos += 1;
                        return Ok(Obj::Array(a));
                    }
                    if self.peek().is_none() {
                        return Err("unterminated array".into());
                    }
                    a.push(self.parse()?);
                }
            }
            b'0'..=b'9' | b'+' | b'-' | b'.' => {
                let w = self.word();
                let s = String::from_utf8_lossy(w).into_owned();
                let Ok(i) = s.parse::<i64>() else {
                    return Ok(Obj::Real(s));
                };
                // `n g R`?
                let save = self.pos;
                let g = self.word();
                if !g.is_empty() && g.iter().all(|c| c.is_ascii_digit()) {
                    let r = self.word();
                    if r == b"R" {
                        let g: u16 = std::str::from_utf8(g).unwrap().parse().unwrap_or(0);
                        return Ok(Obj::Ref(i as u32, g));
                    }
                }
                self.pos = save;
                Ok(Obj::Int(i))
            }
            _ => {
                let at = self.pos;
                let w = self.word();
                match w {
                    b"true" => Ok(Obj::Bool(true)),
                    b"false" => Ok(Obj::Bool(false)),
                    b"null" => Ok(Obj::Null),
                    _ => Err(format!(
                        "unexpected `{}` at +{at}",
                        String::from_utf8_lossy(&w[..w.len().min(40)])
                    )),
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Reading PDFs back (the toolkit's own documents)
// ---------------------------------------------------------------------------

/// Random access to a PDF's bytes.
pub trait Source {
    fn size(&self) -> u64;
    fn read_range(&self, offset: u64, len: usize) -> Vec<u8>;
}

impl Source for [u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }
    fn read_range(&self, offset: u64, len: usize) -> Vec<u8> {
        let start = (offset as usize).min(self.len());
        let end = start.saturating_add(len).min(self.len());
        self[start..end].to_vec()
    }
}

impl Source for File {
    fn size(&self) -> u64 {
        self.metadata().expect("file metadata").len()
    }
    fn read_range(&self, offset: u64, len: usize) -> Vec<u8> {
        let size = self.size();
        let len = (len as u64).min(size.saturating_sub(offset)) as usize;
        let mut buf = vec![0u8; len];
        self.read_exact_at(&mut buf, offset).expect("read file");
        buf
    }
}

/// Where an object lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loc {
    Free,
    At(u64),
    InStream(u32, u32),
}

/// One cross-reference section (one revision).
#[derive(Clone, Debug)]
pub struct Section {
    pub offset: u64,
    pub xref_stream: bool,
    pub trailer: Dict,
    pub entries: BTreeMap<u32, Loc>,
}

/// A parsed PDF: its cross-reference sections, newest first.
#[derive(Clone, Debug)]
pub struct Parsed {
    pub size: u64,
    pub sections: Vec<Section>,
    pub objects: BTreeMap<u32, Loc>,
}

impl Parsed {
    pub fn revisions(&self) -> usize {
        self.sections.len()
    }
    pub fn trailer(&self) -> &Dict {
        &self.sections[0].trailer
    }
    pub fn startxref(&self) -> u64 {
        self.sections[0].offset
    }
    pub fn uses_xref_stream(&self) -> bool {
        self.sections[0].xref_stream
    }
    fn trailer_size(&self) -> u32 {
        dict_get(self.trailer(), "Size")
            .and_then(Obj::as_int)
            .unwrap_or(0) as u32
    }
    fn next_object_number(&self) -> u32 {
        let max_obj = self.objects.keys().max().copied().unwrap_or(0) + 1;
        max_obj.max(self.trailer_size())
    }
    pub fn root_num(&self) -> u32 {
        dict_get(self.trailer(), "Root")
            .and_then(Obj::as_ref_num)
            .expect("trailer /Root")
    }
}

const WINDOW: usize = 1 << 20;

fn find_last(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).rposition(|w| w == needle)
}

fn find_first(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn flate_decode(data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    flate2::read::ZlibDecoder::new(data)
        .read_to_end(&mut out)
        .map_err(|e| format!("FlateDecode: {e}"))?;
    Ok(out)
}

fn flate_encode(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// An indirect object: its number, value and, for a stream, the absolute
/// range of its raw data.
type Indirect = (u32, Obj, Option<(u64, u64)>);

/// An indirect object at `offset`: its number, value and, for a stream,
/// the absolute range of its (raw) data.
fn read_indirect<S: Source + ?Sized>(src: &S, offset: u64) -> Result<Indirect, String> {
    let win = src.read_range(offset, WINDOW.min(64 * 1024));
    let mut lx = Lexer::new(&win, 0);
    let num = lx.int()? as u32;
    lx.int()?;
    lx.expect_word("obj")?;
    let obj = lx.parse()?;
    lx.skip_ws();
    if win[lx.pos..].starts_with(b"stream") {
        let mut p = lx.pos + 6;
        if win.get(p) == Some(&b'\r') {
            p += 1;
        }
        if win.get(p) == Some(&b'\n') {
            p += 1;
        }
        let d = obj.as_dict().ok_or("a stream without a dictionary")?;
        let len = match dict_get(d, "Length") {
            Some(Obj::Int(n)) => *n as u64,
            other => return Err(format!("stream /Length is {other:?}, not a direct integer")),
        };
        return Ok((num, obj, Some((offset + p as u64, len))));
    }
    Ok((num, obj, None))
}

fn stream_data<S: Source + ?Sized>(
    src: &S,
    dict: &Dict,
    range: (u64, u64),
) -> Result<Vec<u8>, String> {
    let raw = src.read_range(range.0, range.1 as usize);
    match dict_get(dict, "Filter") {
        None => Ok(raw),
        Some(Obj::Name(n)) if n == "FlateDecode" => flate_decode(&raw),
        Some(f) => Err(format!("unsupported filter {f:?}")),
    }
}

fn parse_section<S: Source + ?Sized>(src: &S, offset: u64) -> Result<Section, String> {
    let win = src.read_range(offset, WINDOW);
    let mut lx = Lexer::new(&win, 0);
    lx.skip_ws();
    if win[lx.pos..].starts_with(b"xref") {
        lx.expect_word("xref")?;
        let mut entries = BTreeMap::new();
        loop {
            lx.skip_ws();
            if win[lx.pos..].starts_with(b"trailer") {
                lx.expect_word("trailer")?;
                let trailer = match lx.parse()? {
                    Obj::Dict(d) => d,
                    other => return Err(format!("trailer is not a dictionary: {other:?}")),
                };
                return Ok(Section {
                    offset,
                    xref_stream: false,
                    trailer,
                    entries,
                });
            }
            let start = lx.int()? as u32;
            let count = lx.int()? as u32;
            for i in 0..count {
                let off = lx.int()? as u64;
                let _gen = lx.int()?;
                let kind = lx.word();
                let loc = match kind {
                    b"n" => Loc::At(off),
                    b"f" => Loc::Free,
                    other => {
                        return Err(format!(
                            "xref entry type `{}`",
                            String::from_utf8_lossy(other)
                        ));
                    }
                };
                entries.entry(start + i).or_insert(loc);
            }
        }
    }
    // A cross-reference stream.
    let (_, obj, range) = read_indirect(src, offset)?;
    let d = obj
        .as_dict()
        .ok_or("xref stream without dictionary")?
        .clone();
    if dict_get(&d, "Type").and_then(Obj::as_name) != Some("XRef") {
        return Err(format!("no `xref` or xref stream at {offset}"));
    }
    let data = stream_data(src, &d, range.ok_or("xref stream without data")?)?;
    let w: Vec<usize> = dict_get(&d, "W")
        .and_then(Obj::as_array)
        .ok_or("xref stream without /W")?
        .iter()
        .map(|x| x.as_int().unwrap_or(0) as usize)
        .collect();
    let size = dict_get(&d, "Size").and_then(Obj::as_int).unwrap_or(0);
    let index: Vec<i64> = match dict_get(&d, "Index").and_then(Obj::as_array) {
        Some(a) => a.iter().map(|x| x.as_int().unwrap_or(0)).collect(),
        None => vec![0, size],
    };
    let field = |b: &[u8]| b.iter().fold(0u64, |acc, x| (acc << 8) | *x as u64);
    let rec = w.iter().sum::<usize>();
    let mut entries = BTreeMap::new();
    let mut pos = 0;
    for pair in index.chunks(2) {
        for i in 0..pair[1] {
            let r = data
                .get(pos..pos + rec)
                .ok_or("xref stream data too short")?;
            pos += rec;
            let t = if w[0] == 0 { 1 } else { field(&r[..w[0]]) };
            let f2 = field(&r[w[0]..w[0] + w[1]]);
            let f3 = field(&r[w[0] + w[1]..]);
            let loc = match t {
                0 => Loc::Free,
                1 => Loc::At(f2),
                2 => Loc::InStream(f2 as u32, f3 as u32),
                _ => continue,
            };
            entries.insert((pair[0] + i) as u32, loc);
        }
    }
    Ok(Section {
        offset,
        xref_stream: true,
        trailer: d,
        entries,
    })
}

/// Parses the cross-reference chain of a PDF this toolkit wrote.
pub fn parse<S: Source + ?Sized>(src: &S) -> Result<Parsed, String> {
    let size = src.size();
    let tail_len = size.min(2048);
    let tail = src.read_range(size - tail_len, tail_len as usize);
    let at = find_last(&tail, b"startxref").ok_or("no startxref")?;
    let mut lx = Lexer::new(&tail, at + 9);
    let mut offset = lx.int()? as u64;
    let mut sections = Vec::new();
    let mut seen = BTreeSet::new();
    loop {
        if offset >= size || !seen.insert(offset) {
            return Err(format!("bad xref offset {offset}"));
        }
        let s = parse_section(src, offset)?;
        let prev = dict_get(&s.trailer, "Prev").and_then(Obj::as_int);
        sections.push(s);
        match prev {
            Some(p) => offset = p as u64,
            None => break,
        }
    }
    let mut objects = BTreeMap::new();
    for s in &sections {
        for (k, v) in &s.entries {
            objects.entry(*k).or_insert(*v);
        }
    }
    Ok(Parsed {
        size,
        sections,
        objects,
    })
}

/// The newest version of object `num`.
pub fn get_object<S: Source + ?Sized>(src: &S, p: &Parsed, num: u32) -> Result<Obj, String> {
    match p.objects.get(&num) {
        None | Some(Loc::Free) => Err(format!("object {num} is not in use")),
        Some(Loc::At(off)) => {
            let (n, obj, _) = read_indirect(src, *off)?;
            if n != num {
                return Err(format!(
                    "xref says object {num} is at {off}, found object {n}"
                ));
            }
            Ok(obj)
        }
        Some(Loc::InStream(stm, idx)) => {
            let Some(Loc::At(off)) = p.objects.get(stm) else {
                return Err(format!("object stream {stm} not found"));
            };
            let (_, sobj, range) = read_indirect(src, *off)?;
            let d = sobj.as_dict().ok_or("object stream without dictionary")?;
            let data = stream_data(src, d, range.ok_or("object stream without data")?)?;
            let n = dict_get(d, "N").and_then(Obj::as_int).unwrap_or(0) as usize;
            let first = dict_get(d, "First").and_then(Obj::as_int).unwrap_or(0) as usize;
            let mut lx = Lexer::new(&data, 0);
            let mut pairs = Vec::new();
            for _ in 0..n {
                let o = lx.int()? as u32;
                let rel = lx.int()? as usize;
                pairs.push((o, rel));
            }
            let (o, rel) = *pairs.get(*idx as usize).ok_or("object stream index")?;
            if o != num {
                return Err(format!(
                    "object stream {stm} holds {o} at index {idx}, not {num}"
                ));
            }
            Lexer::new(&data, first + rel).parse()
        }
    }
}

fn get_dict<S: Source + ?Sized>(src: &S, p: &Parsed, num: u32) -> Dict {
    match get_object(src, p, num) {
        Ok(Obj::Dict(d)) => d,
        other => panic!("object {num} is not a dictionary: {other:?}"),
    }
}

/// What the toolkit reads back from a PDF.
#[derive(Clone, Debug)]
pub struct Summary {
    pub revisions: usize,
    pub pages: usize,
    /// Field names (`/T`) of the AcroForm, in order.
    pub fields: Vec<String>,
    /// `/Subtype` of each annotation of the first page.
    pub annotations: Vec<String>,
    pub uses_xref_stream: bool,
}

/// Reads back the structure of a PDF this toolkit wrote (fails on anything
/// it cannot resolve: every object it follows must be where the xref says).
pub fn summary<S: Source + ?Sized>(src: &S) -> Result<Summary, String> {
    let p = parse(src)?;
    let catalog = match get_object(src, &p, p.root_num())? {
        Obj::Dict(d) => d,
        o => return Err(format!("catalog is {o:?}")),
    };
    if dict_get(&catalog, "Type").and_then(Obj::as_name) != Some("Catalog") {
        return Err("the /Root is not a /Catalog".into());
    }
    let pages_num = dict_get(&catalog, "Pages")
        .and_then(Obj::as_ref_num)
        .ok_or("catalog without /Pages")?;
    let pages = match get_object(src, &p, pages_num)? {
        Obj::Dict(d) => d,
        o => return Err(format!("page tree is {o:?}")),
    };
    let kids = dict_get(&pages, "Kids")
        .and_then(Obj::as_array)
        .ok_or("page tree without /Kids")?
        .clone();
    let mut annotations = Vec::new();
    if let Some(first) = kids.first().and_then(Obj::as_ref_num) {
        let page = match get_object(src, &p, first)? {
            Obj::Dict(d) => d,
            o => return Err(format!("page is {o:?}")),
        };
        if let Some(c) = dict_get(&page, "Contents").and_then(Obj::as_ref_num) {
            get_object(src, &p, c)?;
        }
        if let Some(a) = dict_get(&page, "Annots").and_then(Obj::as_array) {
            for r in a {
                let n = r.as_ref_num().ok_or("annotation is not a reference")?;
                let ad = match get_object(src, &p, n)? {
                    Obj::Dict(d) => d,
                    o => return Err(format!("annotation {n} is {o:?}")),
                };
                annotations.push(
                    dict_get(&ad, "Subtype")
                        .and_then(Obj::as_name)
                        .unwrap_or("")
                        .to_string(),
                );
            }
        }
    }
    let mut fields = Vec::new();
    let acro = match dict_get(&catalog, "AcroForm") {
        Some(Obj::Ref(n, _)) => Some(get_object(src, &p, *n)?),
        Some(o) => Some(o.clone()),
        None => None,
    };
    if let Some(Obj::Dict(acro)) = acro {
        for f in dict_get(&acro, "Fields")
            .and_then(Obj::as_array)
            .cloned()
            .unwrap_or_default()
        {
            let n = f.as_ref_num().ok_or("field is not a reference")?;
            let fd = match get_object(src, &p, n)? {
                Obj::Dict(d) => d,
                o => return Err(format!("field {n} is {o:?}")),
            };
            if let Some(Obj::Ref(v, _)) = dict_get(&fd, "V") {
                get_object(src, &p, *v)?;
            }
            match dict_get(&fd, "T") {
                Some(Obj::Str(s)) => fields.push(String::from_utf8_lossy(s).into_owned()),
                _ => return Err(format!("field {n} without /T")),
            }
        }
    }
    Ok(Summary {
        revisions: p.revisions(),
        pages: kids.len(),
        fields,
        annotations,
        uses_xref_stream: p.uses_xref_stream(),
    })
}

// ---------------------------------------------------------------------------
// Writing PDFs
// ---------------------------------------------------------------------------

const FILE_ID: &str = "6c69656e74686f6e672d653265000001";

fn pdf_string_escape(text: &str) -> Vec<u8> {
    obj_bytes(&Obj::Str(text.as_bytes().to_vec()))
}

fn content_stream(text: &str) -> Vec<u8> {
    let mut s = b"BT /F1 14 Tf 72 770 Td ".to_vec();
    s.extend(pdf_string_escape(text));
    s.extend_from_slice(b" Tj ET\n");
    s
}

fn write_indirect(
    out: &mut Vec<u8>,
    offsets: &mut BTreeMap<u32, u64>,
    base: u64,
    num: u32,
    body: &[u8],
) {
    offsets.insert(num, base + out.len() as u64);
    out.extend_from_slice(format!("{num} 0 obj\n").as_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(b"\nendobj\n");
}

fn stream_body(mut dict: Dict, data: &[u8]) -> Vec<u8> {
    dict_set(&mut dict, "Length", Obj::Int(data.len() as i64));
    let mut b = obj_bytes(&Obj::Dict(dict));
    b.extend_from_slice(b"\nstream\n");
    b.extend_from_slice(data);
    b.extend_from_slice(b"\nendstream");
    b
}

const CATALOG: &str = "<< /Type /Catalog /Pages 2 0 R >>";
const PAGES: &str = "<< /Type /Pages /Kids [3 0 R] /Count 1 >>";
const PAGE: &str = "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] \
                    /Resources << /Font << /F1 5 0 R >> >> /Contents 4 0 R >>";
const FONT: &str = "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>";
const INFO: &str = "<< /Producer (lienthong e2e pdf toolkit) /Title (Van ban thu nghiem) >>";

fn classic_xref(offsets: &BTreeMap<u32, u64>, with_free_head: bool) -> Vec<u8> {
    let mut out = b"xref\n".to_vec();
    let mut nums: Vec<u32> = offsets.keys().copied().collect();
    if with_free_head {
        nums.insert(0, 0);
    }
    let mut i = 0;
    while i < nums.len() {
        let mut j = i;
        while j + 1 < nums.len() && nums[j + 1] == nums[j] + 1 {
            j += 1;
        }
        out.extend_from_slice(format!("{} {}\n", nums[i], j - i + 1).as_bytes());
        for n in &nums[i..=j] {
            if *n == 0 && with_free_head {
                out.extend_from_slice(b"0000000000 65535 f \n");
            } else {
                out.extend_from_slice(format!("{:010} 00000 n \n", offsets[n]).as_bytes());
            }
        }
        i = j + 1;
    }
    out
}

/// A valid one-page PDF 1.7 with a classic cross-reference table: catalog
/// 1, pages 2, page 3, contents 4 (showing `text`), font 5, info 6.
pub fn minimal_pdf(text: &str) -> Vec<u8> {
    let mut out = b"%PDF-1.7\n%\xE2\xE3\xCF\xD3\n".to_vec();
    let mut offs = BTreeMap::new();
    write_indirect(&mut out, &mut offs, 0, 1, CATALOG.as_bytes());
    write_indirect(&mut out, &mut offs, 0, 2, PAGES.as_bytes());
    write_indirect(&mut out, &mut offs, 0, 3, PAGE.as_bytes());
    write_indirect(
        &mut out,
        &mut offs,
        0,
        4,
        &stream_body(Dict::new(), &content_stream(text)),
    );
    write_indirect(&mut out, &mut offs, 0, 5, FONT.as_bytes());
    write_indirect(&mut out, &mut offs, 0, 6, INFO.as_bytes());
    let xref = out.len();
    out.extend(classic_xref(&offs, true));
    out.extend_from_slice(
        format!(
            "trailer\n<< /Size 7 /Root 1 0 R /Info 6 0 R /ID [<{FILE_ID}> <{FILE_ID}>] >>\n\
             startxref\n{xref}\n%%EOF\n"
        )
        .as_bytes(),
    );
    out
}

/// As [`minimal_pdf`], but PDF 1.5 style: the catalog (1) and page tree (2)
/// in a flate-compressed object stream (7), and a flate-compressed
/// cross-reference stream (8) instead of a table.
pub fn minimal_pdf_xref_stream(text: &str) -> Vec<u8> {
    let mut out = b"%PDF-1.7\n%\xE2\xE3\xCF\xD3\n".to_vec();
    let mut offs = BTreeMap::new();
    write_indirect(&mut out, &mut offs, 0, 3, PAGE.as_bytes());
    write_indirect(
        &mut out,
        &mut offs,
        0,
        4,
        &stream_body(Dict::new(), &content_stream(text)),
    );
    write_indirect(&mut out, &mut offs, 0, 5, FONT.as_bytes());
    write_indirect(&mut out, &mut offs, 0, 6, INFO.as_bytes());
    // Object stream 7: objects 1 and 2.
    let o1 = format!("{CATALOG}\n");
    let header = format!("1 0 2 {} ", o1.len());
    let body = format!("{header}{o1}{PAGES}\n");
    let sd = dict([
        ("Type", Obj::name("ObjStm")),
        ("N", Obj::Int(2)),
        ("First", Obj::Int(header.len() as i64)),
        ("Filter", Obj::name("FlateDecode")),
    ]);
    write_indirect(
        &mut out,
        &mut offs,
        0,
        7,
        &stream_body(sd, &flate_encode(body.as_bytes())),
    );
    // Xref stream 8.
    let xref_off = out.len() as u64;
    let mut rows = Vec::new();
    let mut row = |t: u8, f2: u64, f3: u16| {
        rows.push(t);
        rows.extend_from_slice(&(f2 as u32).to_be_bytes());
        rows.extend_from_slice(&f3.to_be_bytes());
    };
    row(0, 0, 0xFFFF);
    row(2, 7, 0);
    row(2, 7, 1);
    for n in 3..=7 {
        row(1, offs[&n], 0);
    }
    row(1, xref_off, 0);
    let xd = dict([
        ("Type", Obj::name("XRef")),
        ("Size", Obj::Int(9)),
        ("W", Obj::Array(vec![Obj::Int(1), Obj::Int(4), Obj::Int(2)])),
        ("Root", Obj::Ref(1, 0)),
        ("Info", Obj::Ref(6, 0)),
        (
            "ID",
            Obj::Array(vec![
                Obj::Hex(hex::decode(FILE_ID).unwrap()),
                Obj::Hex(hex::decode(FILE_ID).unwrap()),
            ]),
        ),
        ("Filter", Obj::name("FlateDecode")),
    ]);
    write_indirect(
        &mut out,
        &mut offs,
        0,
        8,
        &stream_body(xd, &flate_encode(&rows)),
    );
    out.extend_from_slice(format!("startxref\n{xref_off}\n%%EOF\n").as_bytes());
    out
}

/// Writes a PDF of about `size` bytes to `path` in bounded memory (1 MiB
/// buffers): [`minimal_pdf`]'s objects, with a page content stream padded
/// by comment lines to the size asked. Returns the size written.
pub fn write_large_pdf(path: &Path, size: u64, text: &str) -> io::Result<u64> {
    let mut w = BufWriter::with_capacity(1 << 20, File::create(path)?);
    let mut pos: u64 = 0;
    let mut offs = BTreeMap::new();
    fn put(w: &mut BufWriter<File>, b: &[u8], pos: &mut u64) -> io::Result<()> {
        w.write_all(b)?;
        *pos += b.len() as u64;
        Ok(())
    }
    put(&mut w, b"%PDF-1.7\n%\xE2\xE3\xCF\xD3\n", &mut pos)?;
    for (n, body) in [(1, CATALOG), (2, PAGES), (3, PAGE), (5, FONT), (6, INFO)] {
        offs.insert(n, pos);
        put(
            &mut w,
            format!("{n} 0 obj\n{body}\nendobj\n").as_bytes(),
            &mut pos,
        )?;
    }
    // The content stream: text, then filler comment lines.
    let head = content_stream(text);
    let line: &[u8] = b"% lienthong e2e filler: a large signed document, streamed not held\n";
    let mut chunk = Vec::with_capacity(1 << 20);
    while chunk.len() + line.len() <= 1 << 20 {
        chunk.extend_from_slice(line);
    }
    let chunks = size.saturating_sub(4096) / chunk.len() as u64;
    let len = head.len() as u64 + chunks * chunk.len() as u64;
    offs.insert(4, pos);
    put(
        &mut w,
        format!("4 0 obj\n<< /Length {len} >>\nstream\n").as_bytes(),
        &mut pos,
    )?;
    put(&mut w, &head, &mut pos)?;
    for _ in 0..chunks {
        put(&mut w, &chunk, &mut pos)?;
    }
    put(&mut w, b"\nendstream\nendobj\n", &mut pos)?;
    let xref = pos;
    put(&mut w, &classic_xref(&offs, true), &mut pos)?;
    put(
        &mut w,
        format!(
            "trailer\n<< /Size 7 /Root 1 0 R /Info 6 0 R /ID [<{FILE_ID}> <{FILE_ID}>] >>\n\
             startxref\n{xref}\n%%EOF\n"
        )
        .as_bytes(),
        &mut pos,
    )?;
    w.flush()?;
    Ok(pos)
}

/// An incremental update being written after `base_len` bytes.
struct Update {
    base_len: u64,
    buf: Vec<u8>,
    offsets: BTreeMap<u32, u64>,
    next: u32,
}

impl Update {
    fn new<S: Source + ?Sized>(src: &S, p: &Parsed) -> Update {
        let base_len = src.size();
        let mut buf = Vec::new();
        let last = src.read_range(base_len.saturating_sub(1), 1);
        if last != b"\n" && last != b"\r" {
            buf.push(b'\n');
        }
        Update {
            base_len,
            buf,
            offsets: BTreeMap::new(),
            next: p.next_object_number(),
        }
    }

    fn alloc(&mut self) -> u32 {
        let n = self.next;
        self.next += 1;
        n
    }

    fn obj(&mut self, num: u32, o: &Obj) {
        write_indirect(
            &mut self.buf,
            &mut self.offsets,
            self.base_len,
            num,
            &obj_bytes(o),
        );
    }

    fn raw(&mut self, num: u32, body: &[u8]) {
        write_indirect(&mut self.buf, &mut self.offsets, self.base_len, num, body);
    }

    /// Writes the cross-reference section (same kind as the newest one of
    /// the base) and the trailer.
    fn finish(&mut self, p: &Parsed) {
        let old = p.trailer();
        let mut trailer = Dict::new();
        for k in ["Root", "Info", "ID"] {
            if let Some(v) = dict_get(old, k) {
                trailer.push((k.into(), v.clone()));
            }
        }
        if p.uses_xref_stream() {
            let num = self.alloc();
            let xref_off = self.base_len + self.buf.len() as u64;
            self.offsets.insert(num, xref_off);
            let nums: Vec<u32> = self.offsets.keys().copied().collect();
            let mut index = Vec::new();
            let mut rows = Vec::new();
            let mut i = 0;
            while i < nums.len() {
                let mut j = i;
                while j + 1 < nums.len() && nums[j + 1] == nums[j] + 1 {
                    j += 1;
                }
                index.push(Obj::Int(nums[i] as i64));
                index.push(Obj::Int((j - i + 1) as i64));
                for n in &nums[i..=j] {
                    rows.push(1u8);
                    rows.extend_from_slice(&(self.offsets[n] as u32).to_be_bytes());
                    rows.extend_from_slice(&0u16.to_be_bytes());
                }
                i = j + 1;
            }
            let mut d = dict([
                ("Type", Obj::name("XRef")),
                ("Size", Obj::Int(self.next as i64)),
                ("W", Obj::Array(vec![Obj::Int(1), Obj::Int(4), Obj::Int(2)])),
                ("Index", Obj::Array(index)),
            ]);
            d.extend(trailer);
            d.push(("Prev".into(), Obj::Int(p.startxref() as i64)));
            d.push(("Filter".into(), Obj::name("FlateDecode")));
            let body = stream_body(d, &flate_encode(&rows));
            self.buf
                .extend_from_slice(format!("{num} 0 obj\n").as_bytes());
            self.buf.extend_from_slice(&body);
            self.buf.extend_from_slice(b"\nendobj\n");
            self.buf
                .extend_from_slice(format!("startxref\n{xref_off}\n%%EOF\n").as_bytes());
        } else {
            let xref_off = self.base_len + self.buf.len() as u64;
            let table = classic_xref(&self.offsets, false);
            self.buf.extend(table);
            let mut t = vec![("Size".to_string(), Obj::Int(self.next as i64))];
            t.extend(trailer);
            t.push(("Prev".into(), Obj::Int(p.startxref() as i64)));
            self.buf.extend_from_slice(b"trailer\n");
            self.buf.extend(obj_bytes(&Obj::Dict(t)));
            self.buf
                .extend_from_slice(format!("\nstartxref\n{xref_off}\n%%EOF\n").as_bytes());
        }
    }
}

/// The first page's object number and dictionary.
fn first_page<S: Source + ?Sized>(src: &S, p: &Parsed) -> (u32, Dict, u32, Dict) {
    let root = p.root_num();
    let catalog = get_dict(src, p, root);
    let pages_num = dict_get(&catalog, "Pages")
        .and_then(Obj::as_ref_num)
        .expect("catalog /Pages");
    let pages = get_dict(src, p, pages_num);
    let page_num = dict_get(&pages, "Kids")
        .and_then(Obj::as_array)
        .and_then(|k| k.first())
        .and_then(Obj::as_ref_num)
        .expect("a first page");
    (root, catalog, page_num, get_dict(src, p, page_num))
}

/// The page dictionary with `annot` appended to its `/Annots`.
fn with_annot<S: Source + ?Sized>(src: &S, p: &Parsed, mut page: Dict, annot: u32) -> Dict {
    let mut annots = match dict_get(&page, "Annots") {
        Some(Obj::Array(a)) => a.clone(),
        Some(Obj::Ref(n, _)) => match get_object(src, p, *n) {
            Ok(Obj::Array(a)) => a,
            other => panic!("page /Annots {n} is {other:?}"),
        },
        _ => Vec::new(),
    };
    annots.push(Obj::Ref(annot, 0));
    dict_set(&mut page, "Annots", Obj::Array(annots));
    page
}

// ---------------------------------------------------------------------------
// Signing
// ---------------------------------------------------------------------------

/// An RFC 3161 timestamp on the signature value.
#[derive(Clone, Copy)]
pub struct TimestampOptions<'a> {
    pub tsa: &'a Identity,
    pub gen_time: OffsetDateTime,
}

/// How to sign.
#[derive(Clone)]
pub struct SignOptions<'a> {
    pub signer: &'a Identity,
    /// The signature field's `/T`.
    pub field_name: String,
    pub digest: DigestAlg,
    /// For RSA keys only.
    pub rsa_scheme: RsaScheme,
    /// The signed attribute signingTime (UTCTime) and the dictionary's `/M`.
    pub signing_time: OffsetDateTime,
    /// Add the ESS signingCertificateV2 signed attribute.
    pub ess_signing_certificate: bool,
    /// Embed the issuer's certificate after the signer's.
    pub include_chain: bool,
    pub timestamp: Option<TimestampOptions<'a>>,
    /// Bytes reserved for the CMS (the hole holds twice as many hex digits).
    pub contents_capacity: usize,
    /// `/SubFilter` (default `ETSI.CAdES.detached`).
    pub sub_filter: &'static str,
    /// Leave the last N bytes of the revision outside the ByteRange (a
    /// signature that does not cover its whole revision).
    pub uncovered_tail: u64,
}

impl<'a> SignOptions<'a> {
    pub fn new(signer: &'a Identity) -> Self {
        SignOptions {
            signer,
            field_name: "Signature1".into(),
            digest: DigestAlg::Sha256,
            rsa_scheme: RsaScheme::Pkcs1RsaEncryption,
            signing_time: default_signing_time(),
            ess_signing_certificate: true,
            include_chain: false,
            timestamp: None,
            contents_capacity: 16 * 1024,
            sub_filter: "ETSI.CAdES.detached",
            uncovered_tail: 0,
        }
    }

    /// The algorithm name the verifier reports (`RSA-SHA256`, …).
    pub fn algorithm_label(&self) -> String {
        let h = self.digest.label();
        match self.signer.key.kind {
            KeyKind::Rsa2048 if self.rsa_scheme == RsaScheme::Pss => format!("RSA-PSS-{h}"),
            KeyKind::Rsa2048 => format!("RSA-{h}"),
            KeyKind::EcP256 => format!("ECDSA-P256-{h}"),
            KeyKind::EcP384 => format!("ECDSA-P384-{h}"),
        }
    }
}

fn attribute(oid: &str, value: &[u8]) -> Vec<u8> {
    der::seq(&[&der::oid(oid), &der::set_of(vec![value.to_vec()])])
}

fn signing_certificate_v2(cert_der: &[u8]) -> Vec<u8> {
    let hash = digest::digest(&digest::SHA256, cert_der);
    // ESSCertIDv2 with the default hash algorithm (SHA-256) omitted.
    let ess_cert_id = der::seq(&[&der::octets(hash.as_ref()), &issuer_serial(cert_der)]);
    der::seq(&[&der::seq(&[&ess_cert_id])])
}

/// IssuerSerial (RFC 5035): GeneralNames { directoryName } and the serial.
fn issuer_serial(cert_der: &[u8]) -> Vec<u8> {
    let (_, c) = x509_parser::parse_x509_certificate(cert_der).expect("parse certificate");
    let general_names = der::seq(&[&der::ctx(4, c.tbs_certificate.issuer.as_raw())]);
    der::seq(&[
        &general_names,
        &der::int_raw(c.tbs_certificate.raw_serial()),
    ])
}

/// One SignerInfo (v1, IssuerAndSerialNumber) over `signed_attrs`; returns
/// (SignerInfo without unsigned attributes closed yet, signature value).
fn signer_info(
    signer: &Identity,
    scheme: RsaScheme,
    dig: DigestAlg,
    attrs: Vec<Vec<u8>>,
    unsigned: impl FnOnce(&[u8]) -> Option<Vec<u8>>,
) -> Vec<u8> {
    let set = der::set_of(attrs);
    let (sig, sig_alg) = signer.key.sign(scheme, dig, &set);
    let mut implicit = set.clone();
    implicit[0] = 0xA0;
    let mut parts = vec![
        der::uint(1),
        issuer_and_serial(&signer.cert_der),
        der::alg_id(dig.oid(), None),
        implicit,
        sig_alg,
        der::octets(&sig),
    ];
    if let Some(u) = unsigned(&sig) {
        parts.push(u);
    }
    der::tlv(der::SEQUENCE, &parts.concat())
}

/// An RFC 3161 TimeStampToken over `imprint` (SHA-256 of the timestamped data).
pub fn timestamp_token(tsa: &Identity, imprint: &[u8], gen_time: OffsetDateTime) -> Vec<u8> {
    let tst_info = der::seq(&[
        &der::uint(1),
        &der::oid(OID_TSA_POLICY),
        &der::seq(&[&der::alg_id(OID_SHA256, None), &der::octets(imprint)]),
        &der::uint(gen_time.unix_timestamp() as u64),
        &der::generalized_time(gen_time),
    ]);
    let tst_digest = digest::digest(&digest::SHA256, &tst_info);
    let attrs = vec![
        attribute(OID_CONTENT_TYPE, &der::oid(OID_TST_INFO)),
        attribute(OID_MESSAGE_DIGEST, &der::octets(tst_digest.as_ref())),
        attribute(OID_SIGNING_CERT_V2, &signing_certificate_v2(&tsa.cert_der)),
    ];
    let si = signer_info(
        tsa,
        RsaScheme::Pkcs1RsaEncryption,
        DigestAlg::Sha256,
        attrs,
        |_| None,
    );
    let signed_data = der::seq(&[
        &der::uint(3),
        &der::set_of(vec![der::alg_id(OID_SHA256, None)]),
        &der::seq(&[
            &der::oid(OID_TST_INFO),
            &der::ctx(0, &der::octets(&tst_info)),
        ]),
        &der::ctx(0, &tsa.cert_der),
        &der::set_of(vec![si]),
    ]);
    der::seq(&[&der::oid(OID_SIGNED_DATA), &der::ctx(0, &signed_data)])
}

/// The detached CMS SignedData (a ContentInfo) for content whose digest is `content_digest`.
pub fn build_cms(content_digest: &[u8], opts: &SignOptions<'_>) -> Vec<u8> {
    let signer = opts.signer;
    let mut attrs = vec![
        attribute(OID_CONTENT_TYPE, &der::oid(OID_DATA)),
        attribute(OID_SIGNING_TIME, &der::utc_time(opts.signing_time)),
        attribute(OID_MESSAGE_DIGEST, &der::octets(content_digest)),
    ];
    if opts.ess_signing_certificate {
        attrs.push(attribute(
            OID_SIGNING_CERT_V2,
            &signing_certificate_v2(&signer.cert_der),
        ));
    }
    let ts = opts.timestamp;
    let si = signer_info(signer, opts.rsa_scheme, opts.digest, attrs, |sig| {
        ts.map(|ts| {
            let imprint = digest::digest(&digest::SHA256, sig);
            let token = timestamp_token(ts.tsa, imprint.as_ref(), ts.gen_time);
            der::tlv(0xA1, &attribute(OID_SIGNATURE_TIMESTAMP, &token))
        })
    });
    let mut certs = vec![signer.cert_der.clone()];
    if opts.include_chain {
        certs.push(signer.issuer_der.clone());
    }
    certs.sort();
    let signed_data = der::seq(&[
        &der::uint(1),
        &der::set_of(vec![der::alg_id(opts.digest.oid(), None)]),
        &der::seq(&[&der::oid(OID_DATA)]),
        &der::ctx(0, &certs.concat()),
        &der::set_of(vec![si]),
    ]);
    der::seq(&[&der::oid(OID_SIGNED_DATA), &der::ctx(0, &signed_data)])
}

const BYTE_RANGE_WIDTH: usize = 48;

/// The update of a signature, written but not yet signed.
struct PreparedSignature {
    buf: Vec<u8>,
    base_len: u64,
    /// Relative to `buf`: the `<` of /Contents and one past its `>`.
    hole: (usize, usize),
    byte_range: [u64; 4],
}

fn pdf_date(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "D:{:04}{:02}{:02}{:02}{:02}{:02}Z",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn prepare_signature<S: Source + ?Sized>(src: &S, opts: &SignOptions<'_>) -> PreparedSignature {
    let p = parse(src).expect("the toolkit reads the document back");
    let mut up = Update::new(src, &p);
    let (root, mut catalog, page_num, page) = first_page(src, &p);
    let sig_num = up.alloc();
    let field_num = up.alloc();
    let ap_num = up.alloc();

    // AcroForm: rewrite the existing one, or make one and point the catalog at it.
    let (acro_num, mut acro) = match dict_get(&catalog, "AcroForm") {
        Some(Obj::Ref(n, _)) => (*n, get_dict(src, &p, *n)),
        Some(Obj::Dict(d)) => {
            let d = d.clone();
            let n = up.alloc();
            dict_set(&mut catalog, "AcroForm", Obj::Ref(n, 0));
            (n, d)
        }
        _ => {
            let n = up.alloc();
            dict_set(&mut catalog, "AcroForm", Obj::Ref(n, 0));
            (n, Dict::new())
        }
    };
    let catalog_changed = !matches!(
        p.objects.get(&acro_num),
        Some(Loc::At(_) | Loc::InStream(..))
    );
    let mut fields = dict_get(&acro, "Fields")
        .and_then(Obj::as_array)
        .cloned()
        .unwrap_or_default();
    fields.push(Obj::Ref(field_num, 0));
    dict_set(&mut acro, "Fields", Obj::Array(fields));
    dict_set(&mut acro, "SigFlags", Obj::Int(3));

    if catalog_changed {
        up.obj(root, &Obj::Dict(catalog));
    }
    up.obj(acro_num, &Obj::Dict(acro));
    up.obj(page_num, &Obj::Dict(with_annot(src, &p, page, field_num)));

    // The signature dictionary, with fixed-width placeholders.
    let mut body = format!(
        "<< /Type /Sig /Filter /Adobe.PPKLite /SubFilter /{} /ByteRange ",
        opts.sub_filter
    )
    .into_bytes();
    let br_rel = up.buf.len() + format!("{sig_num} 0 obj\n").len() + body.len();
    body.extend(std::iter::repeat_n(b' ', BYTE_RANGE_WIDTH));
    body.extend_from_slice(b" /Contents ");
    let hole_start_in_body = body.len();
    body.push(b'<');
    body.extend(std::iter::repeat_n(b'0', opts.contents_capacity * 2));
    body.push(b'>');
    body.extend_from_slice(
        format!(
            " /M ({}) /Name {} >>",
            pdf_date(opts.signing_time),
            String::from_utf8_lossy(&obj_bytes(&utf16_text(&cn_of(&opts.signer.cert_der))))
        )
        .as_bytes(),
    );
    let obj_header = format!("{sig_num} 0 obj\n").len();
    let hole_rel = up.buf.len() + obj_header + hole_start_in_body;
    up.raw(sig_num, &body);

    let field = dict([
        ("Type", Obj::name("Annot")),
        ("Subtype", Obj::name("Widget")),
        ("FT", Obj::name("Sig")),
        ("T", Obj::Str(opts.field_name.as_bytes().to_vec())),
        ("V", Obj::Ref(sig_num, 0)),
        ("F", Obj::Int(132)),
        (
            "Rect",
            Obj::Array(vec![Obj::Int(0), Obj::Int(0), Obj::Int(0), Obj::Int(0)]),
        ),
        ("P", Obj::Ref(page_num, 0)),
        ("AP", Obj::Dict(vec![("N".into(), Obj::Ref(ap_num, 0))])),
    ]);
    up.obj(field_num, &Obj::Dict(field));
    let ap = dict([
        ("Type", Obj::name("XObject")),
        ("Subtype", Obj::name("Form")),
        (
            "BBox",
            Obj::Array(vec![Obj::Int(0), Obj::Int(0), Obj::Int(0), Obj::Int(0)]),
        ),
    ]);
    up.raw(ap_num, &stream_body(ap, b""));
    up.finish(&p);

    let base_len = up.base_len;
    let hole = (hole_rel, hole_rel + opts.contents_capacity * 2 + 2);
    let total = base_len + up.buf.len() as u64;
    let a = base_len + hole.0 as u64;
    let b = base_len + hole.1 as u64;
    assert!(opts.uncovered_tail < total - b, "uncovered_tail too large");
    let c = total - b - opts.uncovered_tail;
    let byte_range = [0, a, b, c];
    let text = format!("[0 {a} {b} {c}]");
    assert!(text.len() <= BYTE_RANGE_WIDTH);
    up.buf[br_rel..br_rel + text.len()].copy_from_slice(text.as_bytes());
    PreparedSignature {
        buf: up.buf,
        base_len,
        hole,
        byte_range,
    }
}

/// A PDF text string in UTF-16BE with its byte order mark.
fn utf16_text(s: &str) -> Obj {
    let mut b = vec![0xFE, 0xFF];
    for u in s.encode_utf16() {
        b.extend_from_slice(&u.to_be_bytes());
    }
    Obj::Hex(b)
}

fn cn_of(cert_der: &[u8]) -> String {
    let (_, c) = x509_parser::parse_x509_certificate(cert_der).expect("parse certificate");
    c.subject()
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .unwrap_or("")
        .to_string()
}

/// The digest of the bytes the ByteRange covers: `base` (hashed by the
/// caller's function) then the covered parts of the update.
fn finish_signature(
    mut prep: PreparedSignature,
    opts: &SignOptions<'_>,
    hash_base: impl FnOnce(&mut digest::Context),
) -> PreparedSignature {
    let mut ctx = digest::Context::new(opts.digest.ring());
    hash_base(&mut ctx);
    let [_, _, b, c] = prep.byte_range;
    ctx.update(&prep.buf[..prep.hole.0]);
    let tail_start = (b - prep.base_len) as usize;
    let tail_end = tail_start + c as usize;
    ctx.update(&prep.buf[tail_start..tail_end]);
    let d = ctx.finish();
    let cms = build_cms(d.as_ref(), opts);
    assert!(
        cms.len() <= opts.contents_capacity,
        "the CMS ({} bytes) does not fit SignOptions::contents_capacity ({})",
        cms.len(),
        opts.contents_capacity
    );
    let h = hex::encode(&cms);
    let start = prep.hole.0 + 1;
    prep.buf[start..start + h.len()].copy_from_slice(h.as_bytes());
    prep
}

/// Signs `input` (a PDF this toolkit can read) in an incremental update.
pub fn sign(input: &[u8], opts: &SignOptions<'_>) -> Vec<u8> {
    let prep = prepare_signature(input, opts);
    let prep = finish_signature(prep, opts, |ctx| ctx.update(input));
    let mut out = Vec::with_capacity(input.len() + prep.buf.len());
    out.extend_from_slice(input);
    out.extend_from_slice(&prep.buf);
    out
}

/// Signs the PDF at `path` in place (appends the update), hashing the file
/// as a stream: memory stays bounded whatever the file's size.
pub fn sign_file_in_place(path: &Path, opts: &SignOptions<'_>) -> io::Result<()> {
    let file = File::open(path)?;
    let prep = prepare_signature(&file, opts);
    let base_len = prep.base_len;
    let prep = finish_signature(prep, opts, |ctx| {
        let mut f = File::open(path).expect("reopen for hashing");
        let mut buf = vec![0u8; 1 << 20];
        let mut left = base_len;
        while left > 0 {
            let n = f
                .read(&mut buf[..(left.min(1 << 20)) as usize])
                .expect("read for hashing");
            assert!(n > 0, "file shrank while hashing");
            ctx.update(&buf[..n]);
            left -= n as u64;
        }
    });
    let mut f = OpenOptions::new().append(true).open(path)?;
    f.write_all(&prep.buf)?;
    f.sync_all()?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Later revisions and damage
// ---------------------------------------------------------------------------

/// An incremental update that replaces the first page's content stream
/// (same object number, new text): a change to the content.
pub fn append_content_change(pdf: &[u8], new_text: &str) -> Vec<u8> {
    let p = parse(pdf).expect("parse");
    let mut up = Update::new(pdf, &p);
    let (_, _, _, page) = first_page(pdf, &p);
    let contents = dict_get(&page, "Contents")
        .and_then(Obj::as_ref_num)
        .expect("page /Contents is a reference");
    up.raw(
        contents,
        &stream_body(Dict::new(), &content_stream(new_text)),
    );
    up.finish(&p);
    [pdf, &up.buf[..]].concat()
}

/// An incremental update adding a `/Subtype /Text` annotation (a sticky
/// note) to the first page.
pub fn append_text_annotation(pdf: &[u8], note: &str) -> Vec<u8> {
    let p = parse(pdf).expect("parse");
    let mut up = Update::new(pdf, &p);
    let (_, _, page_num, page) = first_page(pdf, &p);
    let annot = up.alloc();
    let d = dict([
        ("Type", Obj::name("Annot")),
        ("Subtype", Obj::name("Text")),
        (
            "Rect",
            Obj::Array(vec![
                Obj::Int(400),
                Obj::Int(700),
                Obj::Int(420),
                Obj::Int(720),
            ]),
        ),
        ("Contents", Obj::Str(note.as_bytes().to_vec())),
        ("Open", Obj::Bool(false)),
        ("P", Obj::Ref(page_num, 0)),
    ]);
    up.obj(annot, &Obj::Dict(d));
    up.obj(page_num, &Obj::Dict(with_annot(pdf, &p, page, annot)));
    up.finish(&p);
    [pdf, &up.buf[..]].concat()
}

/// An incremental update adding `count` signature fields to a signed PDF,
/// each pointing at a copy of its last signature (the same CMS) whose
/// /ByteRange leaves out only bytes 16..32 of the new file and so covers
/// nearly all of it: the shape of a PDF made to be costly to check, each
/// signature asking for the whole file to be hashed again.
pub fn append_overlapping_signatures(pdf: &[u8], count: usize) -> Vec<u8> {
    const PLACEHOLDER: &str = "@@@@@@@@@@@@@@@@@@@@";
    let (_, cms) = signature_contents(pdf).pop().expect("a signed PDF");
    let p = parse(pdf).expect("parse");
    let mut up = Update::new(pdf, &p);
    let (_, catalog, _, _) = first_page(pdf, &p);
    let acro_num = dict_get(&catalog, "AcroForm")
        .and_then(Obj::as_ref_num)
        .expect("a signed PDF has an indirect /AcroForm");
    let mut acro = get_dict(pdf, &p, acro_num);
    let mut fields = dict_get(&acro, "Fields")
        .and_then(Obj::as_array)
        .cloned()
        .unwrap_or_default();
    for i in 0..count {
        let sig = up.alloc();
        let field = up.alloc();
        up.raw(
            sig,
            format!(
                "<< /Type /Sig /Filter /Adobe.PPKLite /SubFilter /ETSI.CAdES.detached \
                 /ByteRange [0 16 32 {PLACEHOLDER}] /Contents <{}> >>",
                hex::encode(&cms)
            )
            .as_bytes(),
        );
        up.obj(
            field,
            &Obj::Dict(dict([
                ("FT", Obj::name("Sig")),
                ("T", Obj::Str(format!("Extra{i}").into_bytes())),
                ("V", Obj::Ref(sig, 0)),
            ])),
        );
        fields.push(Obj::Ref(field, 0));
    }
    dict_set(&mut acro, "Fields", Obj::Array(fields));
    up.obj(acro_num, &Obj::Dict(acro));
    up.finish(&p);
    let mut out = [pdf, &up.buf[..]].concat();
    // Every second range runs from byte 32 to the end of the file, whose
    // length is known only now; the placeholders keep their width.
    let value = format!("{:>20}", out.len() - 32);
    let mut at = pdf.len();
    while let Some(i) = find_first(&out[at..], PLACEHOLDER.as_bytes()) {
        out[at + i..at + i + PLACEHOLDER.len()].copy_from_slice(value.as_bytes());
        at += i + PLACEHOLDER.len();
    }
    out
}

/// Writes a ZIP archive holding one file, `name`, whose bytes come from
/// `content` (streamed: raw deflate through flate2, CRC-32 on the way),
/// to `path`. `declared_size`, when given, is the uncompressed size the
/// archive claims instead of the real one (what a ZIP bomb does to slip
/// past a size check). Returns the archive's size.
pub fn write_zip(
    path: &Path,
    name: &str,
    content: &mut dyn io::Read,
    declared_size: Option<u32>,
) -> io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut f = BufWriter::with_capacity(1 << 20, File::create(path)?);
    let local = |crc: u32, csize: u32, usize_: u32| {
        let mut h = Vec::new();
        h.extend_from_slice(b"PK\x03\x04");
        h.extend_from_slice(&20u16.to_le_bytes()); // version needed
        h.extend_from_slice(&0u16.to_le_bytes()); // flags
        h.extend_from_slice(&8u16.to_le_bytes()); // deflate
        h.extend_from_slice(&0u32.to_le_bytes()); // time, date
        h.extend_from_slice(&crc.to_le_bytes());
        h.extend_from_slice(&csize.to_le_bytes());
        h.extend_from_slice(&usize_.to_le_bytes());
        h.extend_from_slice(&(name.len() as u16).to_le_bytes());
        h.extend_from_slice(&0u16.to_le_bytes()); // extra
        h.extend_from_slice(name.as_bytes());
        h
    };
    f.write_all(&local(0, 0, 0))?;
    let data_start = f.stream_position()?;
    let mut crc = flate2::Crc::new();
    let mut enc = flate2::write::DeflateEncoder::new(f, flate2::Compression::fast());
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = content.read(&mut buf)?;
        if n == 0 {
            break;
        }
        crc.update(&buf[..n]);
        enc.write_all(&buf[..n])?;
    }
    let mut f = enc.finish()?;
    let cd_start = f.stream_position()?;
    let csize = u32::try_from(cd_start - data_start).expect("a ZIP under 4 GiB");
    let real = crc.amount();
    let usize_ = declared_size.unwrap_or(real);
    let mut cd = Vec::new();
    cd.extend_from_slice(b"PK\x01\x02");
    cd.extend_from_slice(&20u16.to_le_bytes()); // version made by
    cd.extend_from_slice(&local(crc.sum(), csize, usize_)[4..30]);
    cd.extend_from_slice(&0u16.to_le_bytes()); // comment length
    cd.extend_from_slice(&0u16.to_le_bytes()); // disk
    cd.extend_from_slice(&0u16.to_le_bytes()); // internal attributes
    cd.extend_from_slice(&0u32.to_le_bytes()); // external attributes
    cd.extend_from_slice(&0u32.to_le_bytes()); // local header offset
    cd.extend_from_slice(name.as_bytes());
    let mut end = Vec::new();
    end.extend_from_slice(b"PK\x05\x06");
    end.extend_from_slice(&[0, 0, 0, 0]); // disks
    end.extend_from_slice(&1u16.to_le_bytes());
    end.extend_from_slice(&1u16.to_le_bytes());
    end.extend_from_slice(&(cd.len() as u32).to_le_bytes());
    end.extend_from_slice(&(cd_start as u32).to_le_bytes());
    end.extend_from_slice(&0u16.to_le_bytes());
    f.write_all(&cd)?;
    f.write_all(&end)?;
    let total = f.stream_position()?;
    f.seek(SeekFrom::Start(0))?;
    f.write_all(&local(crc.sum(), csize, usize_))?;
    f.flush()?;
    Ok(total)
}

/// The ByteRanges of every signature dictionary, in file order.
pub fn byte_ranges(pdf: &[u8]) -> Vec<[u64; 4]> {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some(i) = find_first(&pdf[pos..], b"/ByteRange") {
        let at = pos + i + 10;
        let mut lx = Lexer::new(pdf, at);
        if let Ok(Obj::Array(a)) = lx.parse() {
            let v: Vec<u64> = a
                .iter()
                .filter_map(|x| x.as_int())
                .map(|x| x as u64)
                .collect();
            if v.len() == 4 {
                out.push([v[0], v[1], v[2], v[3]]);
            }
        }
        pos = at;
    }
    out
}

/// Flips the case of the first letter of the page text (`… Td (X…`) that
/// the last signature covers: the document still parses, its digest does
/// not match.
pub fn flip_signed_byte(pdf: &[u8]) -> Vec<u8> {
    let br = *byte_ranges(pdf).last().expect("a signed PDF");
    let at =
        find_first(&pdf[..br[1] as usize], b"Td (").expect("page text in the signed range") + 4;
    let mut out = pdf.to_vec();
    let c = out[at];
    assert!(
        c.is_ascii_alphabetic(),
        "page text starts with {c:?}, not a letter"
    );
    out[at] ^= 0x20;
    out
}

/// The CMS of each signature (the DER, without the hole's zero padding).
pub fn signature_contents(pdf: &[u8]) -> Vec<([u64; 4], Vec<u8>)> {
    byte_ranges(pdf)
        .into_iter()
        .map(|br| {
            let hexs = &pdf[br[1] as usize + 1..br[2] as usize - 1];
            let bytes = hex::decode(hexs).expect("hex /Contents");
            let n = der::node_at(&bytes, 0).expect("DER in /Contents");
            (br, bytes[..n.end].to_vec())
        })
        .collect()
}

/// Walks ContentInfo → SignedData → the first SignerInfo.
fn signer_info_nodes(cms: &[u8]) -> Result<Vec<der::Node>, String> {
    let ci = der::node_at(cms, 0).ok_or("ContentInfo")?;
    let ci_kids = der::children(cms, &ci).ok_or("ContentInfo children")?;
    let explicit = ci_kids.get(1).ok_or("[0] content")?;
    let sd = der::node_at(cms, explicit.content_start).ok_or("SignedData")?;
    let sd_kids = der::children(cms, &sd).ok_or("SignedData children")?;
    let sis = sd_kids.last().ok_or("signerInfos")?;
    let si = der::children(cms, sis)
        .and_then(|v| v.first().copied())
        .ok_or("a SignerInfo")?;
    der::children(cms, &si).ok_or_else(|| "SignerInfo children".into())
}

/// Changes hex digits inside the last signature's signature value (the
/// SignerInfo's OCTET STRING): the CMS still decodes, the signature fails.
pub fn tamper_signature_value(pdf: &[u8]) -> Vec<u8> {
    let (br, cms) = signature_contents(pdf).pop().expect("a signed PDF");
    let kids = signer_info_nodes(&cms).expect("the CMS decodes");
    let sig = kids
        .iter()
        .find(|n| n.tag == der::OCTET_STRING)
        .expect("the signature value");
    let byte = sig.content_start + (sig.end - sig.content_start) / 2;
    let hex_at = br[1] as usize + 1 + 2 * byte;
    let mut out = pdf.to_vec();
    let old =
        u8::from_str_radix(std::str::from_utf8(&out[hex_at..hex_at + 2]).unwrap(), 16).unwrap();
    out[hex_at..hex_at + 2].copy_from_slice(format!("{:02x}", old ^ 0xff).as_bytes());
    out
}

/// The first `len` bytes.
pub fn truncate(pdf: &[u8], len: usize) -> Vec<u8> {
    pdf[..len.min(pdf.len())].to_vec()
}

/// Ways to break the newest cross-reference table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XrefDamage {
    /// The `xref` keyword that startxref points at becomes `xrfq`.
    GarbageKeyword,
    /// Every offset of the newest table is off by 7 bytes.
    WrongOffsets,
    /// startxref points past the end of the file.
    StartxrefBeyondEnd,
}

/// Breaks the newest classic cross-reference table.
pub fn corrupt_xref(pdf: &[u8], damage: XrefDamage) -> Vec<u8> {
    let p = parse(pdf).expect("parse");
    assert!(!p.uses_xref_stream(), "corrupt_xref works on xref tables");
    let x = p.startxref() as usize;
    let mut out = pdf.to_vec();
    match damage {
        XrefDamage::GarbageKeyword => out[x..x + 4].copy_from_slice(b"xrfq"),
        XrefDamage::WrongOffsets => {
            let end = x + find_first(&pdf[x..], b"trailer").expect("trailer");
            let mut i = x;
            while i + 20 <= end {
                // An entry line: 10 digits, space, 5 digits, space, n.
                let l = &pdf[i..i + 18];
                if l[..10].iter().all(u8::is_ascii_digit)
                    && l[10] == b' '
                    && l[11..16].iter().all(u8::is_ascii_digit)
                    && l[16] == b' '
                    && l[17] == b'n'
                {
                    let v: u64 = std::str::from_utf8(&l[..10]).unwrap().parse().unwrap();
                    out[i..i + 10].copy_from_slice(format!("{:010}", v + 7).as_bytes());
                    i += 20;
                } else {
                    i += 1;
                }
            }
        }
        XrefDamage::StartxrefBeyondEnd => {
            let at = find_last(&out, b"startxref").unwrap() + 9;
            out.truncate(at);
            out.extend_from_slice(format!("\n{}\n%%EOF\n", pdf.len() * 10 + 12345).as_bytes());
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Self-check
// ---------------------------------------------------------------------------

/// What [`self_verify`] found for one signature.
#[derive(Clone, Debug)]
pub struct SelfCheck {
    pub byte_range: [u64; 4],
    /// The ByteRange covers the file up to the end of a revision (`%%EOF`).
    pub covers_to_revision_end: bool,
    pub digest_ok: bool,
    pub signature_ok: bool,
    pub timestamped: bool,
}

/// Checks each signature the way this toolkit wrote it: messageDigest
/// against the ByteRange, the signature over the signed attributes with
/// the first certificate's key (not a verifier: no chain, no policy).
pub fn self_verify(pdf: &[u8]) -> Result<Vec<SelfCheck>, String> {
    let mut out = Vec::new();
    for (br, cms) in signature_contents(pdf) {
        let [a0, a1, b0, b1] = br.map(|x| x as usize);
        if a0 != 0 || b0 + b1 > pdf.len() || a1 > b0 {
            return Err(format!("ByteRange {br:?} is outside the file"));
        }
        let end = b0 + b1;
        let covers_to_revision_end = pdf[..end].ends_with(b"%%EOF\n");
        // SignedData pieces.
        let ci = der::node_at(&cms, 0).ok_or("ContentInfo")?;
        let ci_kids = der::children(&cms, &ci).ok_or("ContentInfo")?;
        let sd = der::node_at(&cms, ci_kids[1].content_start).ok_or("SignedData")?;
        let sd_kids = der::children(&cms, &sd).ok_or("SignedData")?;
        let certs = sd_kids
            .iter()
            .find(|n| n.tag == 0xA0)
            .ok_or("no certificates")?;
        let cert_nodes = der::children(&cms, certs).ok_or("certificates")?;
        let kids = signer_info_nodes(&cms)?;
        // sid → the certificate with that issuer and serial.
        let sid = kids[1].raw(&cms);
        let cert = cert_nodes
            .iter()
            .map(|n| n.raw(&cms))
            .find(|c| issuer_and_serial(c) == sid)
            .ok_or("no certificate matches the SignerInfo's sid")?;
        let dig_oid = kids[2].raw(&cms);
        let dig = if dig_oid == der::alg_id(OID_SHA384, None) {
            DigestAlg::Sha384
        } else {
            DigestAlg::Sha256
        };
        let mut ctx = digest::Context::new(dig.ring());
        ctx.update(&pdf[..a1]);
        ctx.update(&pdf[b0..end]);
        let d = ctx.finish();
        let attrs_node = kids[3];
        if attrs_node.tag != 0xA0 {
            return Err("no signed attributes".into());
        }
        let attrs = der::children(&cms, &attrs_node).ok_or("signed attributes")?;
        let md_oid = der::oid(OID_MESSAGE_DIGEST);
        let mut digest_ok = false;
        for a in &attrs {
            let parts = der::children(&cms, a).ok_or("attribute")?;
            if parts[0].raw(&cms) == md_oid.as_slice() {
                let vals = der::children(&cms, &parts[1]).ok_or("attribute values")?;
                digest_ok = vals[0].content(&cms) == d.as_ref();
            }
        }
        let mut set = attrs_node.raw(&cms).to_vec();
        set[0] = der::SET;
        let sig_alg = kids[4].raw(&cms);
        let sig = kids[5].content(&cms);
        let (_, x509) = x509_parser::parse_x509_certificate(cert).map_err(|e| e.to_string())?;
        let spki = x509.public_key().subject_public_key.data.as_ref();
        let alg: &dyn rsig::VerificationAlgorithm =
            if sig_alg == der::alg_id(OID_ECDSA_SHA256, None) {
                match x509.public_key().raw.len() {
                    n if n > 100 => &rsig::ECDSA_P384_SHA256_ASN1,
                    _ => &rsig::ECDSA_P256_SHA256_ASN1,
                }
            } else if sig_alg == der::alg_id(OID_ECDSA_SHA384, None) {
                match x509.public_key().raw.len() {
                    n if n > 100 => &rsig::ECDSA_P384_SHA384_ASN1,
                    _ => &rsig::ECDSA_P256_SHA384_ASN1,
                }
            } else if der::node_at(sig_alg, 2).map(|n| n.raw(sig_alg).to_vec())
                == Some(der::oid(OID_RSASSA_PSS))
            {
                match dig {
                    DigestAlg::Sha256 => &rsig::RSA_PSS_2048_8192_SHA256,
                    DigestAlg::Sha384 => &rsig::RSA_PSS_2048_8192_SHA384,
                }
            } else {
                match dig {
                    DigestAlg::Sha256 => &rsig::RSA_PKCS1_2048_8192_SHA256,
                    DigestAlg::Sha384 => &rsig::RSA_PKCS1_2048_8192_SHA384,
                }
            };
        let signature_ok = rsig::UnparsedPublicKey::new(alg, spki)
            .verify(&set, sig)
            .is_ok();
        let timestamped = kids.last().map(|n| n.tag) == Some(0xA1);
        out.push(SelfCheck {
            byte_range: br,
            covers_to_revision_end,
            digest_ok,
            signature_ok,
            timestamped,
        });
    }
    Ok(out)
}

/// A set of documents of every shape the toolkit makes (named), for
/// external checkers and for trying a verifier by hand.
pub fn sample_documents() -> Vec<(&'static str, Vec<u8>)> {
    let p = test_pki();
    let base = minimal_pdf("Quyet dinh so 1");
    let xs = minimal_pdf_xref_stream("Quyet dinh so 2");
    let one = sign(&base, &SignOptions::new(&p.rsa_signer));
    let mut o = SignOptions::new(&p.organisation);
    o.field_name = "Signature2".into();
    o.rsa_scheme = RsaScheme::Pkcs1WithHash;
    let two = sign(&one, &o);
    let mut pss = SignOptions::new(&p.rsa_signer);
    pss.rsa_scheme = RsaScheme::Pss;
    let mut p384 = SignOptions::new(&p.p384_signer);
    p384.digest = DigestAlg::Sha384;
    let mut ts = SignOptions::new(&p.ec_signer);
    ts.timestamp = Some(TimestampOptions {
        tsa: &p.tsa,
        gen_time: datetime!(2026-03-01 08:05:00 UTC),
    });
    let xs_signed = sign(&xs, &SignOptions::new(&p.ec_signer));
    let xs_two = sign(&xs_signed, &o);
    vec![
        ("minimal", base.clone()),
        ("xref-stream", xs),
        ("rsa", one.clone()),
        ("two-signatures", two),
        ("pss", sign(&base, &pss)),
        ("p384", sign(&base, &p384)),
        ("timestamped", sign(&base, &ts)),
        ("xref-stream-signed", xs_signed.clone()),
        ("xref-stream-two", xs_two),
        ("annotated", append_text_annotation(&one, "Ghi chú")),
        ("content-changed", append_content_change(&one, "Khac")),
        (
            "annotated-xref-stream",
            append_text_annotation(&xs_signed, "x"),
        ),
    ]
}

/// Writes [`sample_documents`] as `dir/<name>.pdf`, with `root.pem` and
/// `root.crl` beside them; returns the PDFs' paths.
pub fn write_sample_documents(dir: &Path) -> Vec<PathBuf> {
    test_pki().write_anchor(dir);
    test_pki().write_crl(dir);
    sample_documents()
        .into_iter()
        .map(|(name, pdf)| {
            let path = dir.join(format!("{name}.pdf"));
            std::fs::write(&path, pdf).expect("write sample");
            path
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn pki() -> &'static TestPki {
        test_pki()
    }

    #[test]
    fn der_basics() {
        assert_eq!(
            der::oid("1.2.840.113549.1.7.2"),
            hex::decode("06092a864886f70d010702").unwrap()
        );
        assert_eq!(der::uint(0), vec![2, 1, 0]);
        assert_eq!(der::uint(128), vec![2, 2, 0, 128]);
        assert_eq!(der::tlv(4, &[0u8; 200])[..3], [4, 0x81, 200]);
        assert_eq!(der::tlv(4, &[0u8; 300])[..4], [4, 0x82, 1, 44]);
        assert_eq!(
            der::utc_time(default_signing_time()),
            der::tlv(0x17, b"260301080000Z")
        );
        assert_eq!(rfc3339(default_signing_time()), "2026-03-01T08:00:00Z");
        let s = der::set_of(vec![vec![0x30, 1, 9], vec![0x02, 1, 1]]);
        assert_eq!(s, vec![0x31, 6, 2, 1, 1, 0x30, 1, 9]);
    }

    #[test]
    fn subjects_print_like_the_contract() {
        let p = pki();
        assert_eq!(
            p.rsa_signer.subject(),
            "C=VN, O=Sở Nội vụ tỉnh Thử nghiệm, CN=Nguyễn Văn A"
        );
        assert_eq!(
            p.organisation.subject(),
            format!("C=VN, O={ORGANISATION}, CN={ORGANISATION}")
        );
        assert_ne!(p.revoked.serial(), p.revoked_later.serial());
    }

    #[test]
    fn minimal_pdfs_read_back() {
        for pdf in [minimal_pdf("Hello"), minimal_pdf_xref_stream("Hello")] {
            let s = summary(pdf.as_slice()).unwrap();
            assert_eq!(s.revisions, 1);
            assert_eq!(s.pages, 1);
            assert!(s.fields.is_empty());
            assert!(s.annotations.is_empty());
        }
        assert!(
            summary(minimal_pdf_xref_stream("x").as_slice())
                .unwrap()
                .uses_xref_stream
        );
        // Offsets in the table point at their objects.
        let pdf = minimal_pdf("Hello");
        let p = parse(pdf.as_slice()).unwrap();
        for (n, loc) in &p.objects {
            if let Loc::At(off) = loc {
                assert!(pdf[*off as usize..].starts_with(format!("{n} 0 obj").as_bytes()));
            }
        }
    }

    fn check_signed(pdf: &[u8], fields: &[&str], revisions: usize) -> Vec<SelfCheck> {
        let s = summary(pdf).unwrap();
        assert_eq!(s.revisions, revisions);
        assert_eq!(s.fields, fields);
        let checks = self_verify(pdf).unwrap();
        assert_eq!(checks.len(), fields.len());
        for c in &checks {
            assert!(
                c.digest_ok && c.signature_ok && c.covers_to_revision_end,
                "{c:?}"
            );
        }
        checks
    }

    #[test]
    fn signatures_of_every_kind_read_back_and_verify() {
        let p = pki();
        let base = minimal_pdf("Quyet dinh so 1");
        let mut cases: Vec<SignOptions<'_>> = Vec::new();
        cases.push(SignOptions::new(&p.rsa_signer));
        let mut o = SignOptions::new(&p.rsa_signer);
        o.rsa_scheme = RsaScheme::Pss;
        cases.push(o);
        let mut o = SignOptions::new(&p.organisation);
        o.rsa_scheme = RsaScheme::Pkcs1WithHash;
        o.digest = DigestAlg::Sha384;
        o.include_chain = true;
        cases.push(o);
        cases.push(SignOptions::new(&p.ec_signer));
        let mut o = SignOptions::new(&p.p384_signer);
        o.digest = DigestAlg::Sha384;
        cases.push(o);
        let mut o = SignOptions::new(&p.ec_signer);
        o.timestamp = Some(TimestampOptions {
            tsa: &p.tsa,
            gen_time: datetime!(2026-03-01 08:05:00 UTC),
        });
        cases.push(o);
        for o in &cases {
            let signed = sign(&base, o);
            let c = check_signed(&signed, &["Signature1"], 2);
            assert_eq!(c[0].timestamped, o.timestamp.is_some());
            assert_eq!(c[0].byte_range[2] + c[0].byte_range[3], signed.len() as u64);
            // The hole is exactly the hex string.
            assert_eq!(signed[c[0].byte_range[1] as usize], b'<');
            assert_eq!(signed[c[0].byte_range[2] as usize - 1], b'>');
        }
    }

    #[test]
    fn two_signatures_annotation_and_content_change() {
        let p = pki();
        for base in [minimal_pdf("Van ban"), minimal_pdf_xref_stream("Van ban")] {
            let one = sign(&base, &SignOptions::new(&p.rsa_signer));
            let mut o = SignOptions::new(&p.organisation);
            o.field_name = "Signature2".into();
            let two = sign(&one, &o);
            check_signed(&two, &["Signature1", "Signature2"], 3);
            let s = summary(two.as_slice()).unwrap();
            assert_eq!(s.annotations, ["Widget", "Widget"]);
            let annotated = append_text_annotation(&one, "Ghi chú");
            let s = summary(annotated.as_slice()).unwrap();
            assert_eq!(s.revisions, 3);
            assert_eq!(s.annotations, ["Widget", "Text"]);
            let changed = append_content_change(&one, "Noi dung khac");
            assert_eq!(summary(changed.as_slice()).unwrap().revisions, 3);
            // The earlier signature still checks on its own range.
            let c = self_verify(&changed).unwrap();
            assert!(c[0].digest_ok && c[0].signature_ok);
        }
    }

    #[test]
    fn damage_is_what_it_says() {
        let p = pki();
        let signed = sign(&minimal_pdf("Hello"), &SignOptions::new(&p.ec_signer));
        let flipped = flip_signed_byte(&signed);
        let c = self_verify(&flipped).unwrap();
        assert!(!c[0].digest_ok);
        summary(flipped.as_slice()).unwrap();
        let tampered = tamper_signature_value(&signed);
        let c = self_verify(&tampered).unwrap();
        assert!(c[0].digest_ok && !c[0].signature_ok, "{c:?}");
        for d in [
            XrefDamage::GarbageKeyword,
            XrefDamage::WrongOffsets,
            XrefDamage::StartxrefBeyondEnd,
        ] {
            let broken = corrupt_xref(&signed, d);
            assert_eq!(
                broken.len() == signed.len(),
                d != XrefDamage::StartxrefBeyondEnd
            );
            assert!(summary(broken.as_slice()).is_err(), "{d:?} still reads");
        }
        assert!(parse(truncate(&signed, 300).as_slice()).is_err());
        let mut o = SignOptions::new(&p.ec_signer);
        o.uncovered_tail = 6;
        let short = sign(&minimal_pdf("Hello"), &o);
        let c = self_verify(&short).unwrap();
        assert!(c[0].digest_ok && c[0].signature_ok && !c[0].covers_to_revision_end);
    }

    #[test]
    fn large_pdf_is_written_and_signed_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.pdf");
        let n = write_large_pdf(&path, 3 << 20, "Hello").unwrap();
        assert_eq!(n, std::fs::metadata(&path).unwrap().len());
        assert!(n > 2 << 20 && n <= 3 << 20, "{n}");
        let p = pki();
        sign_file_in_place(&path, &SignOptions::new(&p.rsa_signer)).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        check_signed(&bytes, &["Signature1"], 2);
    }

    #[test]
    fn qpdf_checks_the_documents() {
        if let Some(dir) = std::env::var_os("LIENTHONG_PDF_SAMPLES") {
            std::fs::create_dir_all(&dir).unwrap();
            write_sample_documents(Path::new(&dir));
        }
        if !tool(
            "qpdf",
            "--version",
            "qpdf",
            "the toolkit's PDFs are not cross-checked",
        ) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        for (name, pdf) in sample_documents() {
            let path = dir.path().join(format!("{name}.pdf"));
            std::fs::write(&path, &pdf).unwrap();
            let out = Command::new("qpdf")
                .arg("--check")
                .arg(&path)
                .output()
                .unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            // Exit 0: no problem; 3: warnings only. Warnings are failures here.
            assert!(
                out.status.success() && !text.contains("WARNING"),
                "qpdf --check {name}: {text}"
            );
        }
    }

    #[test]
    fn pdfsig_verifies_the_signatures() {
        if !tool(
            "pdfsig",
            "-v",
            "poppler-utils",
            "signatures are not cross-checked",
        ) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        for (name, pdf) in sample_documents() {
            let n = byte_ranges(&pdf).len();
            if n == 0 {
                continue;
            }
            let path = dir.path().join(format!("{name}.pdf"));
            std::fs::write(&path, &pdf).unwrap();
            let out = Command::new("pdfsig")
                .arg("-nocert")
                .arg(&path)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            assert_eq!(
                text.matches("Signature Validation: Signature is Valid.")
                    .count(),
                n,
                "pdfsig {name}: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    fn openssl() -> bool {
        tool(
            "openssl",
            "version",
            "openssl",
            "the toolkit's CMS is not cross-checked",
        )
    }

    /// Whether an independent tool is there to cross-check with. Missing,
    /// it is a SKIPPED line, or a failure where services are required (CI
    /// installs it).
    fn tool(program: &str, version_arg: &str, package: &str, unchecked: &str) -> bool {
        match Command::new(program).arg(version_arg).output() {
            Ok(_) => true,
            Err(e) if crate::require_services() => panic!(
                "{program} not found ({e}), and LIENTHONG_REQUIRE_SERVICES=1 says it must be \
                 there; install it (Debian: apt-get install {package})"
            ),
            Err(_) => {
                crate::notice(&format!("SKIPPED: {program} not found; {unchecked}"));
                false
            }
        }
    }

    #[test]
    fn openssl_verifies_the_cms_and_the_timestamp() {
        if !openssl() {
            return;
        }
        let p = pki();
        let dir = tempfile::tempdir().unwrap();
        let root = p.write_anchor(dir.path());
        let mut opts = vec![SignOptions::new(&p.rsa_signer)];
        let mut o = SignOptions::new(&p.rsa_signer);
        o.rsa_scheme = RsaScheme::Pss;
        opts.push(o);
        let mut o = SignOptions::new(&p.p384_signer);
        o.digest = DigestAlg::Sha384;
        opts.push(o);
        let mut o = SignOptions::new(&p.ec_signer);
        o.timestamp = Some(TimestampOptions {
            tsa: &p.tsa,
            gen_time: datetime!(2026-03-01 08:05:00 UTC),
        });
        opts.push(o);
        for (i, o) in opts.iter().enumerate() {
            let signed = sign(&minimal_pdf("Hello"), o);
            let (br, cms) = signature_contents(&signed).pop().unwrap();
            let sig = dir.path().join(format!("sig{i}.der"));
            let content = dir.path().join(format!("content{i}.bin"));
            std::fs::write(&sig, &cms).unwrap();
            let [_, a, b, c] = br.map(|x| x as usize);
            std::fs::write(&content, [&signed[..a], &signed[b..b + c]].concat()).unwrap();
            let out = Command::new("openssl")
                .args([
                    "cms", "-verify", "-binary", "-inform", "DER", "-purpose", "any",
                ])
                .arg("-CAfile")
                .arg(&root)
                .arg("-in")
                .arg(&sig)
                .arg("-content")
                .arg(&content)
                .args(["-out", "/dev/null"])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "openssl cms -verify ({}): {}",
                o.algorithm_label(),
                String::from_utf8_lossy(&out.stderr)
            );
            if o.timestamp.is_some() {
                // The token: the unsigned attribute's value.
                let kids = signer_info_nodes(&cms).unwrap();
                let sigval = kids[5].content(&cms);
                let ua = kids.last().unwrap();
                let attr = der::children(&cms, ua).unwrap()[0];
                let parts = der::children(&cms, &attr).unwrap();
                let token = der::children(&cms, &parts[1]).unwrap()[0]
                    .raw(&cms)
                    .to_vec();
                let tok = dir.path().join("token.der");
                std::fs::write(&tok, token).unwrap();
                let tsa = dir.path().join("tsa.pem");
                p.tsa.write_pem(&tsa);
                let out = Command::new("openssl")
                    .args(["ts", "-verify", "-token_in", "-in"])
                    .arg(&tok)
                    .arg("-digest")
                    .arg(hex::encode(digest::digest(&digest::SHA256, sigval)))
                    .arg("-CAfile")
                    .arg(&root)
                    .arg("-untrusted")
                    .arg(&tsa)
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "openssl ts -verify: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        // The CRL reads and lists both revoked serials.
        let crl = p.write_crl(dir.path());
        let out = Command::new("openssl")
            .args(["crl", "-inform", "DER", "-noout", "-text", "-in"])
            .arg(&crl)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_uppercase();
        assert!(out.status.success());
        for s in [p.revoked.serial(), p.revoked_later.serial()] {
            assert!(text.contains(&hex::encode_upper(&s)), "{text}");
        }
    }
}

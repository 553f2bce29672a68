//! The CMS SignedData inside a PDF signature (RFC 5652), and the RFC 3161
//! timestamp tokens that may ride in it.
//!
//! The structure is walked with the crate's small DER reader rather than
//! decoded into typed structs: the signature covers the signed attributes
//! exactly as the signer encoded them, and a decoder that re-sorts a SET OF
//! (as `der` does on decode) cannot give those bytes back. Certificates are
//! handed to x509-parser and webpki; the signature maths is ring's.

use lienthong_pki::der::der_next;
use lienthong_pki::signing::KeyKind;
use ring::signature as rsig;
use x509_parser::prelude::{FromDer, X509Certificate};

/// A DER OBJECT IDENTIFIER's contents.
type Oid = &'static [u8];

const ID_DATA: Oid = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01];
const ID_SIGNED_DATA: Oid = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02];
const ATTR_CONTENT_TYPE: Oid = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x03];
const ATTR_MESSAGE_DIGEST: Oid = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x04];
const ATTR_SIGNING_TIME: Oid = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x05];
const ATTR_TIMESTAMP_TOKEN: Oid = &[
    0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x10, 0x02, 0x0e,
];
pub(crate) const ID_CT_TST_INFO: Oid = &[
    0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x10, 0x01, 0x04,
];
const SHA1: Oid = &[0x2b, 0x0e, 0x03, 0x02, 0x1a];
const SHA256: Oid = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
const SHA384: Oid = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02];
const SHA512: Oid = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03];
const RSA_ENCRYPTION: Oid = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const RSA_PSS: Oid = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a];
const SHA256_RSA: Oid = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b];
const SHA384_RSA: Oid = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c];
const SHA512_RSA: Oid = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d];
const SHA1_RSA: Oid = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05];
const EC_PUBLIC_KEY: Oid = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const ECDSA_SHA256: Oid = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
const ECDSA_SHA384: Oid = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];
const ECDSA_SHA512: Oid = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04];

/// The digests a signature may be made over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Digest {
    Sha256,
    Sha384,
    Sha512,
}

impl Digest {
    fn from_oid(oid: &[u8]) -> Option<Digest> {
        match oid {
            SHA256 => Some(Digest::Sha256),
            SHA384 => Some(Digest::Sha384),
            SHA512 => Some(Digest::Sha512),
            _ => None,
        }
    }

    pub fn ring(self) -> &'static ring::digest::Algorithm {
        match self {
            Digest::Sha256 => &ring::digest::SHA256,
            Digest::Sha384 => &ring::digest::SHA384,
            Digest::Sha512 => &ring::digest::SHA512,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Digest::Sha256 => "SHA256",
            Digest::Sha384 => "SHA384",
            Digest::Sha512 => "SHA512",
        }
    }
}

/// A decoded SignedData with one signer.
#[derive(Debug, Clone)]
pub struct Signed {
    /// The signer's digest algorithm (what the byte ranges are hashed with).
    pub digest: Digest,
    /// eContentType and the encapsulated content (None when detached).
    pub content_type: Vec<u8>,
    pub content: Option<Vec<u8>>,
    /// The messageDigest signed attribute.
    pub message_digest: Vec<u8>,
    /// The signed signingTime, as Unix seconds.
    pub signing_time: Option<i64>,
    /// The signed attributes re-tagged as SET, exactly as signed.
    signed_attrs_der: Vec<u8>,
    signature_alg: Vec<u8>,
    signature_params: Option<Vec<u8>>,
    pub signature: Vec<u8>,
    /// The signer's certificate (DER) and the others the CMS carries.
    pub signer_cert: Vec<u8>,
    pub other_certs: Vec<Vec<u8>>,
    /// The raw timestamp token (a ContentInfo), when one is attached.
    pub timestamp_token: Option<Vec<u8>>,
}

fn bad<T>(what: impl Into<String>) -> Result<T, String> {
    Err(what.into())
}

/// One DER element of `input`, or a sentence.
fn next<'a>(input: &'a [u8], what: &str) -> Result<lienthong_pki::der::DerElement<'a>, String> {
    der_next(input).ok_or_else(|| format!("the signature's {what} is not valid DER"))
}

/// (the whole element, its contents, what follows)
type Element<'a> = (&'a [u8], &'a [u8], &'a [u8]);

fn expect<'a>(input: &'a [u8], tag: u8, what: &str) -> Result<Element<'a>, String> {
    let (t, whole, contents, rest) = next(input, what)?;
    if t != tag {
        return bad(format!("the signature's {what} is not where CMS puts it"));
    }
    Ok((whole, contents, rest))
}

/// Decodes the ContentInfo in a signature's /Contents (trailing zero
/// padding allowed).
pub fn decode(contents: &[u8]) -> Result<Signed, String> {
    let (ci, _, _) = expect(contents, 0x30, "ContentInfo")?;
    let (_, ci_body, _) = expect(ci, 0x30, "ContentInfo")?;
    let (_, oid, rest) = expect(ci_body, 0x06, "content type")?;
    if oid != ID_SIGNED_DATA {
        return bad("the signature is a CMS structure but not SignedData");
    }
    let (_, explicit, _) = expect(rest, 0xa0, "SignedData")?;
    let (_, sd, _) = expect(explicit, 0x30, "SignedData")?;
    let (_, _version, rest) = expect(sd, 0x02, "SignedData version")?;
    let (_, _digest_algs, rest) = expect(rest, 0x31, "digest algorithms")?;
    let (_, eci, mut rest) = expect(rest, 0x30, "encapsulated content")?;
    let (_, content_type, eci_rest) = expect(eci, 0x06, "encapsulated content type")?;
    let content = if eci_rest.is_empty() {
        None
    } else {
        let (_, explicit, _) = expect(eci_rest, 0xa0, "encapsulated content")?;
        // An OCTET STRING (DER); a constructed one (BER) is joined.
        let (t, _, c, _) = next(explicit, "encapsulated content")?;
        match t {
            0x04 => Some(c.to_vec()),
            0x24 => {
                let mut out = Vec::new();
                let mut p = c;
                while !p.is_empty() {
                    let (_, part, r) = expect(p, 0x04, "encapsulated content")?;
                    out.extend_from_slice(part);
                    p = r;
                }
                Some(out)
            }
            _ => return bad("the signature's encapsulated content is not an OCTET STRING"),
        }
    };
    let mut certs = Vec::new();
    if let Some((0xa0, _, c, r)) = der_next(rest) {
        let mut p = c;
        while !p.is_empty() {
            let (t, whole, _, r2) = next(p, "certificates")?;
            if t == 0x30 {
                certs.push(whole.to_vec());
            }
            p = r2;
        }
        rest = r;
    }
    if let Some((0xa1, _, _, r)) = der_next(rest) {
        rest = r; // CRLs: the configured lists are what count
    }
    let (_, infos, _) = expect(rest, 0x31, "signer infos")?;
    let (_, si, more) = expect(infos, 0x30, "signer info")?;
    if !more.is_empty() {
        return bad(
            "the signature holds more than one SignerInfo; a PDF signature has exactly one signer",
        );
    }
    let (_, _v, rest) = expect(si, 0x02, "SignerInfo version")?;
    let (sid_tag, _, sid, rest) = next(rest, "signer identifier")?;
    let (_, dalg, rest) = expect(rest, 0x30, "digest algorithm")?;
    let (_, dalg_oid, _) = expect(dalg, 0x06, "digest algorithm")?;
    let digest = match Digest::from_oid(dalg_oid) {
        Some(d) => d,
        None if dalg_oid == SHA1 => {
            return bad(
                "the signature uses SHA-1, which no longer proves anything; sign again with SHA-256",
            );
        }
        None => {
            return bad(
                "the signature uses a digest algorithm that is not supported (SHA-256, SHA-384 or SHA-512 are)",
            );
        }
    };
    let (signed_attrs, rest) = match der_next(rest) {
        Some((0xa0, _, c, r)) => (Some(c), r),
        _ => (None, rest),
    };
    let Some(signed_attrs) = signed_attrs else {
        return bad("the signature has no signed attributes; PAdES signatures must have them");
    };
    let (_, salg, rest) = expect(rest, 0x30, "signature algorithm")?;
    let (_, salg_oid, salg_rest) = expect(salg, 0x06, "signature algorithm")?;
    let signature_params = (!salg_rest.is_empty()).then(|| salg_rest.to_vec());
    let (_, signature, rest) = expect(rest, 0x04, "signature value")?;
    let mut timestamp_token = None;
    if let Some((0xa1, _, unsigned, _)) = der_next(rest) {
        for (oid, values) in attributes(unsigned)? {
            if oid == ATTR_TIMESTAMP_TOKEN
                && let Some((0x30, whole, _, _)) = der_next(values)
            {
                timestamp_token = Some(whole.to_vec());
            }
        }
    }

    let mut message_digest = None;
    let mut signing_time = None;
    let mut ct_attr = None;
    for (oid, values) in attributes(signed_attrs)? {
        match oid {
            ATTR_MESSAGE_DIGEST => {
                let (_, d, _) = expect(values, 0x04, "messageDigest attribute")?;
                message_digest = Some(d.to_vec());
            }
            ATTR_SIGNING_TIME => signing_time = Some(parse_time(values)?),
            ATTR_CONTENT_TYPE => {
                let (_, c, _) = expect(values, 0x06, "contentType attribute")?;
                ct_attr = Some(c.to_vec());
            }
            _ => {}
        }
    }
    let Some(message_digest) = message_digest else {
        return bad("the signature's signed attributes have no messageDigest");
    };
    if ct_attr.as_deref().is_some_and(|c| c != content_type) {
        return bad(
            "the signature's contentType attribute differs from its encapsulated content type",
        );
    }

    // The signer's certificate, by issuer and serial or by key identifier.
    let mut signer_cert = None;
    for der in &certs {
        let Ok((_, c)) = X509Certificate::from_der(der) else {
            continue;
        };
        let matches = match sid_tag {
            0x30 => {
                let Some((0x30, issuer, _, r)) = der_next(sid) else {
                    return bad("the signature's signer identifier is malformed");
                };
                let serial = der_next(r).map(|(_, _, s, _)| s).unwrap_or_default();
                c.issuer().as_raw() == issuer && c.raw_serial() == serial
            }
            0x80 => c
                .extensions()
                .iter()
                .find_map(|e| match e.parsed_extension() {
                    x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0),
                    _ => None,
                })
                .is_some_and(|k| k == sid),
            _ => false,
        };
        if matches {
            signer_cert = Some(der.clone());
            break;
        }
    }
    let Some(signer_cert) = signer_cert else {
        return bad(
            "the signature does not carry its signer's certificate; the signing software must embed it",
        );
    };
    let other_certs = certs.into_iter().filter(|c| *c != signer_cert).collect();

    let mut signed_attrs_der = vec![0x31];
    push_len(&mut signed_attrs_der, signed_attrs.len());
    signed_attrs_der.extend_from_slice(signed_attrs);

    Ok(Signed {
        digest,
        content_type: content_type.to_vec(),
        content,
        message_digest,
        signing_time,
        signed_attrs_der,
        signature_alg: salg_oid.to_vec(),
        signature_params,
        signature: signature.to_vec(),
        signer_cert,
        other_certs,
        timestamp_token,
    })
}

/// `(oid, first value)` of each Attribute in a SET's contents.
/// (attribute type, first value)
type Attribute<'a> = (&'a [u8], &'a [u8]);

fn attributes(mut p: &[u8]) -> Result<Vec<Attribute<'_>>, String> {
    let mut out = Vec::new();
    while !p.is_empty() {
        let (_, attr, r) = expect(p, 0x30, "attribute")?;
        let (_, oid, vals) = expect(attr, 0x06, "attribute type")?;
        let (_, values, _) = expect(vals, 0x31, "attribute values")?;
        out.push((oid, values));
        p = r;
    }
    Ok(out)
}

fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

/// A UTCTime or GeneralizedTime, as Unix seconds.
pub fn parse_time(der: &[u8]) -> Result<i64, String> {
    let (tag, _, c, _) = next(der, "time")?;
    let s = std::str::from_utf8(c).map_err(|_| "a time is not text".to_string())?;
    let (year, rest) = match tag {
        0x17 => {
            let y: i32 = s
                .get(0..2)
                .and_then(|v| v.parse().ok())
                .ok_or("a bad UTCTime")?;
            (if y >= 50 { 1900 + y } else { 2000 + y }, &s[2..])
        }
        0x18 => {
            let y: i32 = s
                .get(0..4)
                .and_then(|v| v.parse().ok())
                .ok_or("a bad GeneralizedTime")?;
            (y, &s[4..])
        }
        _ => return bad("a time is neither UTCTime nor GeneralizedTime"),
    };
    let num = |i: usize| -> Result<u8, String> {
        rest.get(i..i + 2)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("a malformed time '{s}'"))
    };
    let (mo, d, h, mi) = (num(0)?, num(2)?, num(4)?, num(6)?);
    let (sec, tail) = match rest.get(8..10).and_then(|v| v.parse::<u8>().ok()) {
        Some(v) => (v, &rest[10..]),
        None => (0, &rest[8..]),
    };
    // Fractions of a second are dropped; only UTC ("Z") is DER.
    let tail = tail.trim_start_matches(|c: char| c == '.' || c.is_ascii_digit());
    if tail != "Z" {
        return bad(format!("the time '{s}' is not in UTC"));
    }
    let month = time::Month::try_from(mo).map_err(|_| format!("a malformed time '{s}'"))?;
    let date = time::Date::from_calendar_date(year, month, d)
        .map_err(|_| format!("a malformed time '{s}'"))?;
    let t = time::Time::from_hms(h, mi, sec).map_err(|_| format!("a malformed time '{s}'"))?;
    Ok(time::PrimitiveDateTime::new(date, t)
        .assume_utc()
        .unix_timestamp())
}

impl Signed {
    /// The algorithm as reported, e.g. `RSA-SHA256`, `ECDSA-P256-SHA256`.
    pub fn algorithm_name(&self) -> String {
        let key = key_kind(&self.signer_cert);
        match key {
            KeyKind::Rsa if self.signature_alg == RSA_PSS => {
                format!("RSA-PSS-{}", self.digest.name())
            }
            KeyKind::Rsa => format!("RSA-{}", self.digest.name()),
            KeyKind::P256 => format!("ECDSA-P256-{}", self.digest.name()),
            KeyKind::P384 => format!("ECDSA-P384-{}", self.digest.name()),
            KeyKind::Other => format!("unsupported-key-{}", self.digest.name()),
        }
    }

    /// Checks the signature over the signed attributes with the signer's
    /// key; `Err` says why it does not hold.
    pub fn verify_signature(&self) -> Result<(), String> {
        let Ok((_, cert)) = X509Certificate::from_der(&self.signer_cert) else {
            return bad("the signer's certificate cannot be parsed");
        };
        let key = cert.public_key().subject_public_key.data.as_ref();
        let kind = key_kind(&self.signer_cert);
        let alg: &dyn rsig::VerificationAlgorithm = match (kind, self.signature_alg.as_slice()) {
            (KeyKind::Rsa, RSA_ENCRYPTION) => match self.digest {
                Digest::Sha256 => &rsig::RSA_PKCS1_2048_8192_SHA256,
                Digest::Sha384 => &rsig::RSA_PKCS1_2048_8192_SHA384,
                Digest::Sha512 => &rsig::RSA_PKCS1_2048_8192_SHA512,
            },
            (KeyKind::Rsa, SHA256_RSA) => &rsig::RSA_PKCS1_2048_8192_SHA256,
            (KeyKind::Rsa, SHA384_RSA) => &rsig::RSA_PKCS1_2048_8192_SHA384,
            (KeyKind::Rsa, SHA512_RSA) => &rsig::RSA_PKCS1_2048_8192_SHA512,
            (KeyKind::Rsa, SHA1_RSA) => {
                return bad("the signature is RSA with SHA-1, which no longer proves anything");
            }
            (KeyKind::Rsa, RSA_PSS) => match pss_hash(self.signature_params.as_deref()) {
                Some(Digest::Sha256) => &rsig::RSA_PSS_2048_8192_SHA256,
                Some(Digest::Sha384) => &rsig::RSA_PSS_2048_8192_SHA384,
                Some(Digest::Sha512) => &rsig::RSA_PSS_2048_8192_SHA512,
                None => {
                    return bad(
                        "the RSA-PSS parameters are not supported (the MGF1 hash must equal the digest and the salt its length)",
                    );
                }
            },
            (KeyKind::P256 | KeyKind::P384, _) => {
                // ecdsa-with-SHAx names the hash; a bare id-ecPublicKey
                // (some signers write it) means the digest algorithm's.
                let hash = match self.signature_alg.as_slice() {
                    ECDSA_SHA256 => Digest::Sha256,
                    ECDSA_SHA384 => Digest::Sha384,
                    EC_PUBLIC_KEY => self.digest,
                    ECDSA_SHA512 => return bad("ECDSA with SHA-512 is not supported"),
                    _ => {
                        return bad(
                            "the signature algorithm does not match the signer's ECDSA key",
                        );
                    }
                };
                match (kind, hash) {
                    (KeyKind::P256, Digest::Sha256) => &rsig::ECDSA_P256_SHA256_ASN1,
                    (KeyKind::P256, Digest::Sha384) => &rsig::ECDSA_P256_SHA384_ASN1,
                    (KeyKind::P384, Digest::Sha256) => &rsig::ECDSA_P384_SHA256_ASN1,
                    (KeyKind::P384, Digest::Sha384) => &rsig::ECDSA_P384_SHA384_ASN1,
                    _ => return bad("ECDSA with SHA-512 is not supported"),
                }
            }
            (KeyKind::Other, _) => {
                return bad(
                    "the signer's key type is not supported (RSA, ECDSA P-256 and P-384 are)",
                );
            }
            _ => return bad("the signature algorithm does not match the signer's key"),
        };
        if (kind == KeyKind::Rsa) && key_bits_rsa(key) < 2048 {
            return bad("the signer's RSA key is shorter than 2048 bits");
        }
        rsig::UnparsedPublicKey::new(alg, key)
            .verify(&self.signed_attrs_der, &self.signature)
            .map_err(|_| "the signature value does not verify with the signer's certificate: the signed attributes were changed or another key signed them".to_string())
    }
}

/// The signer's key type; an RSASSA-PSS key (its own SPKI type) is RSA.
fn key_kind(cert_der: &[u8]) -> KeyKind {
    let Ok((_, cert)) = X509Certificate::from_der(cert_der) else {
        return KeyKind::Other;
    };
    if cert.public_key().algorithm.algorithm.as_bytes() == RSA_PSS {
        return KeyKind::Rsa;
    }
    lienthong_pki::signing::key_kind(&cert)
}

fn key_bits_rsa(rsa_public_key: &[u8]) -> usize {
    let Some((0x30, _, seq, _)) = der_next(rsa_public_key) else {
        return 0;
    };
    let Some((0x02, _, n, _)) = der_next(seq) else {
        return 0;
    };
    let n = match n.iter().position(|b| *b != 0) {
        Some(i) => &n[i..],
        None => return 0,
    };
    n.len() * 8 - n[0].leading_zeros() as usize
}

/// The hash of RSASSA-PSS-params when ring can verify them (MGF1 with the
/// same hash, salt as long as the hash).
fn pss_hash(params: Option<&[u8]>) -> Option<Digest> {
    let (0x30, _, seq, _) = der_next(params?)? else {
        return None;
    };
    let mut hash = None;
    let mut mgf_hash = None;
    let mut salt = 20i64;
    let mut p = seq;
    while let Some((tag, _, c, r)) = der_next(p) {
        match tag {
            0xa0 => {
                let (_, _, alg, _) = der_next(c)?;
                let (_, _, oid, _) = der_next(alg)?;
                hash = Digest::from_oid(oid);
            }
            0xa1 => {
                let (_, _, mgf, _) = der_next(c)?;
                let (_, _, _mgf_oid, r2) = der_next(mgf)?;
                let (_, _, halg, _) = der_next(r2)?;
                let (_, _, oid, _) = der_next(halg)?;
                mgf_hash = Digest::from_oid(oid);
            }
            0xa2 => {
                let (_, _, v, _) = der_next(c)?;
                salt = v.iter().fold(0i64, |a, b| (a << 8) | i64::from(*b));
            }
            _ => {}
        }
        p = r;
    }
    let h = hash?;
    let want_salt = match h {
        Digest::Sha256 => 32,
        Digest::Sha384 => 48,
        Digest::Sha512 => 64,
    };
    (mgf_hash == Some(h) && salt == want_salt).then_some(h)
}

/// An RFC 3161 TSTInfo's imprint and time.
#[derive(Debug, Clone)]
pub struct TstInfo {
    pub imprint_digest: Digest,
    pub imprint: Vec<u8>,
    pub gen_time: i64,
}

/// Decodes a TSTInfo (the content of a timestamp token).
pub fn decode_tst_info(der: &[u8]) -> Result<TstInfo, String> {
    let (_, seq, _) = expect(der, 0x30, "TSTInfo")?;
    let (_, _v, rest) = expect(seq, 0x02, "TSTInfo version")?;
    let (_, _policy, rest) = expect(rest, 0x06, "TSTInfo policy")?;
    let (_, mi, rest) = expect(rest, 0x30, "TSTInfo messageImprint")?;
    let (_, alg, mi_rest) = expect(mi, 0x30, "messageImprint algorithm")?;
    let (_, oid, _) = expect(alg, 0x06, "messageImprint algorithm")?;
    let imprint_digest = Digest::from_oid(oid)
        .ok_or_else(|| "the timestamp's imprint uses an unsupported digest".to_string())?;
    let (_, imprint, _) = expect(mi_rest, 0x04, "messageImprint")?;
    let (_, _serial, rest) = expect(rest, 0x02, "TSTInfo serial")?;
    let gen_time = parse_time(rest)?;
    Ok(TstInfo {
        imprint_digest,
        imprint: imprint.to_vec(),
        gen_time,
    })
}

/// Whether the encapsulated content type is id-data (a detached PDF
/// signature) or TSTInfo (a document timestamp).
pub fn is_data(content_type: &[u8]) -> bool {
    content_type == ID_DATA
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(parse_time(b"\x17\x0d260302010000Z").unwrap(), 1_772_413_200);
        assert_eq!(
            parse_time(b"\x18\x0f20260302010000Z").unwrap(),
            1_772_413_200
        );
        assert_eq!(
            parse_time(b"\x18\x1120260302010000.5Z").unwrap(),
            1_772_413_200
        );
        assert!(parse_time(b"\x17\x0d260302010000+").is_err());
    }

    #[test]
    fn garbage_is_a_sentence_not_a_panic() {
        for input in [&b""[..], b"\x30\x80", b"\x30\x03\x06\x01\x00", &[0u8; 64]] {
            assert!(decode(input).is_err());
        }
    }
}

//! A throwaway PKI: a root CA, optional intermediates, and agency signing
//! certificates, for trying the gateway out (`lienthong dev-pki`) and for
//! tests.
//!
//! Nothing here is fit for production: keys are written unencrypted and the
//! CA has no revocation. Real agencies use the government-specialised CA
//! (DESIGN.md §2 "PKI").

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use lienthong_types::OrganId;
use lienthong_types::error::{Error, Reason, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384,
    PKCS_RSA_SHA256, SerialNumber,
};
use ring::rand::SecureRandom;
use rsa::pkcs8::EncodePrivateKey;
use rustls_pki_types::PrivatePkcs8KeyDer;
use time::{Duration, OffsetDateTime};

/// The key algorithm of a generated certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyType {
    EcP256,
    EcP384,
    /// What the government CA issues to organisations; slow to generate in
    /// debug builds (about a second).
    Rsa2048,
}

impl KeyType {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::EcP256 => "ec-p256",
            KeyType::EcP384 => "ec-p384",
            KeyType::Rsa2048 => "rsa2048",
        }
    }

    pub fn parse(s: &str) -> Option<KeyType> {
        match s.trim().to_ascii_lowercase().as_str() {
            "ec-p256" | "p256" | "p-256" | "es256" => Some(KeyType::EcP256),
            "ec-p384" | "p384" | "p-384" | "es384" => Some(KeyType::EcP384),
            "rsa2048" | "rsa-2048" | "rsa" | "rs256" => Some(KeyType::Rsa2048),
            _ => None,
        }
    }
}

/// A generated certificate with its key.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_der: Vec<u8>,
    pub cert_pem: String,
    /// PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), unencrypted.
    pub key_pem: String,
    /// What a signer sends in `Signature.certificates`: this certificate,
    /// then the intermediates up to (not including) the root.
    pub chain_der: Vec<Vec<u8>>,
}

/// A certificate authority whose key is in memory.
pub struct DevCa {
    params: CertificateParams,
    key: KeyPair,
    cert_der: Vec<u8>,
    cert_pem: String,
    key_pem: String,
    /// The certificates that follow a leaf this CA issues: this CA's own
    /// certificate and those above it, without the root (verifiers hold the
    /// root as their anchor).
    chain_above: Vec<Vec<u8>>,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs.
        f.debug_struct("DevCa")
            .field("subject", &self.params.distinguished_name)
            .field("intermediates_above", &self.chain_above.len())
            .finish_non_exhaustive()
    }
}

/// How long a generated CA lives when no validity is given.
const CA_YEARS: i64 = 10;

impl DevCa {
    /// A self-signed root CA valid from an hour ago for ten years.
    pub fn generate(common_name: &str, key_type: KeyType) -> Result<DevCa> {
        let now = OffsetDateTime::now_utc();
        let validity = (
            now - Duration::hours(1),
            now + Duration::days(365 * CA_YEARS),
        );
        let key = generate_key(key_type)?;
        let params = ca_params(common_name, validity)?;
        let cert = params
            .self_signed(&key)
            .map_err(|e| rcgen_error("the dev root CA", e))?;
        Ok(DevCa {
            key_pem: key.serialize_pem(),
            cert_der: cert.der().to_vec(),
            cert_pem: cert.pem(),
            params,
            key,
            chain_above: Vec::new(),
        })
    }

    /// An intermediate CA under this one, valid from an hour ago for ten years.
    pub fn intermediate(&self, common_name: &str, key_type: KeyType) -> Result<DevCa> {
        let now = OffsetDateTime::now_utc();
        self.intermediate_with_validity(
            common_name,
            key_type,
            (
                now - Duration::hours(1),
                now + Duration::days(365 * CA_YEARS),
            ),
        )
    }

    /// An intermediate CA with the given (not_before, not_after), e.g. an
    /// expired one for tests.
    pub fn intermediate_with_validity(
        &self,
        common_name: &str,
        key_type: KeyType,
        validity: (OffsetDateTime, OffsetDateTime),
    ) -> Result<DevCa> {
        let key = generate_key(key_type)?;
        let params = ca_params(common_name, validity)?;
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|e| rcgen_error("a dev intermediate CA", e))?;
        let cert_der = cert.der().to_vec();
        let mut chain_above = vec![cert_der.clone()];
        chain_above.extend(self.chain_above.iter().cloned());
        Ok(DevCa {
            key_pem: key.serialize_pem(),
            cert_der,
            cert_pem: cert.pem(),
            params,
            key,
            chain_above,
        })
    }

    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key, PKCS#8 PEM.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The intermediates a leaf of this CA carries after itself (empty for a
    /// root).
    pub fn chain_above(&self) -> &[Vec<u8>] {
        &self.chain_above
    }

    /// An agency's document-signing certificate: O and CN are the
    /// organisation's name (UTF-8, so Vietnamese names survive), OU its code,
    /// KeyUsage digitalSignature + nonRepudiation, EKU clientAuth +
    /// emailProtection, as the government CA's organisation certificates do.
    pub fn issue_signing(
        &self,
        organ_id: &str,
        organisation_name: &str,
        key_type: KeyType,
        validity: (OffsetDateTime, OffsetDateTime),
    ) -> Result<Issued> {
        self.issue_with(organ_id, organisation_name, key_type, validity, |_| {})
    }

    /// Like [`DevCa::issue_signing`] with the given KeyUsage bits instead:
    /// for tests of certificates that must not sign documents.
    pub fn issue_with_key_usage(
        &self,
        organ_id: &str,
        organisation_name: &str,
        key_type: KeyType,
        validity: (OffsetDateTime, OffsetDateTime),
        key_usages: &[KeyUsagePurpose],
    ) -> Result<Issued> {
        self.issue_with(organ_id, organisation_name, key_type, validity, |p| {
            p.key_usages = key_usages.to_vec();
        })
    }

    /// Like [`DevCa::issue_signing`], letting the caller change the
    /// certificate's parameters last (extensions, names, basic constraints).
    pub fn issue_with(
        &self,
        organ_id: &str,
        organisation_name: &str,
        key_type: KeyType,
        validity: (OffsetDateTime, OffsetDateTime),
        customise: impl FnOnce(&mut CertificateParams),
    ) -> Result<Issued> {
        let key = generate_key(key_type)?;
        let mut params = CertificateParams::default();
        params.not_before = validity.0;
        params.not_after = validity.1;
        params.serial_number = Some(random_serial()?);
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CountryName, "VN");
        dn.push(DnType::OrganizationName, organisation_name);
        dn.push(DnType::OrganizationalUnitName, organ_id);
        dn.push(DnType::CommonName, organisation_name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::ContentCommitment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::EmailProtection,
        ];
        params.use_authority_key_identifier_extension = true;
        customise(&mut params);

        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|e| rcgen_error("an agency certificate", e))?;
        let cert_der = cert.der().to_vec();
        let mut chain_der = vec![cert_der.clone()];
        chain_der.extend(self.chain_above.iter().cloned());
        Ok(Issued {
            cert_der,
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            chain_der,
        })
    }
}

fn ca_params(
    common_name: &str,
    validity: (OffsetDateTime, OffsetDateTime),
) -> Result<CertificateParams> {
    let mut params = CertificateParams::default();
    params.not_before = validity.0;
    params.not_after = validity.1;
    params.serial_number = Some(random_serial()?);
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CountryName, "VN");
    dn.push(
        DnType::OrganizationName,
        "lienthong dev PKI (not for production)",
    );
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn random_serial() -> Result<SerialNumber> {
    let mut b = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| rng_error())?;
    // A positive INTEGER of fixed length, so two serials never collide by
    // leading-zero trimming.
    b[0] = (b[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&b))
}

fn rng_error() -> Error {
    Error::new(
        Reason::Unavailable,
        "the operating system's random number generator failed; try again",
    )
}

fn rcgen_error(what: &str, e: rcgen::Error) -> Error {
    Error::malformed(format!("could not build {what}: {e}")).with_source(e)
}

/// A fresh key pair in rcgen's form (its PKCS#8 is what we write out).
fn generate_key(key_type: KeyType) -> Result<KeyPair> {
    match key_type {
        KeyType::EcP256 => KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| rcgen_error("a P-256 key", e)),
        KeyType::EcP384 => KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384)
            .map_err(|e| rcgen_error("a P-384 key", e)),
        KeyType::Rsa2048 => {
            let pkcs8 = generate_rsa_pkcs8(2048)?;
            KeyPair::from_pkcs8_der_and_sign_algo(
                &PrivatePkcs8KeyDer::from(pkcs8.as_slice()),
                &PKCS_RSA_SHA256,
            )
            .map_err(|e| rcgen_error("an RSA key", e))
        }
    }
}

/// ring signs with RSA keys but cannot make them; RustCrypto's `rsa` does.
fn generate_rsa_pkcs8(bits: usize) -> Result<Vec<u8>> {
    let key =
        rsa::PrivateKey::new(&mut RingRng, bits).map_err(|e| {
            Error::malformed(format!("could not generate an RSA-{bits} key: {e}")).with_source(
                Box::<dyn std::error::Error + Send + Sync>::from(e.to_string()),
            )
        })?;
    let doc = key
        .to_pkcs8_der()
        .map_err(|e| Error::malformed(format!("could not encode an RSA key as PKCS#8: {e}")))?;
    Ok(doc.as_bytes().to_vec())
}

/// The `rsa` crate's RNG interface over ring's system RNG, so one source of
/// randomness serves the whole crate.
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

    fn try_next_u32(&mut self) -> std::result::Result<u32, RngFailed> {
        let mut b = [0u8; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn try_next_u64(&mut self) -> std::result::Result<u64, RngFailed> {
        let mut b = [0u8; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> std::result::Result<(), RngFailed> {
        ring::rand::SystemRandom::new()
            .fill(dst)
            .map_err(|_| RngFailed)
    }
}

impl rsa::rand_core::TryCryptoRng for RingRng {}

// ---------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------

/// The files [`write_dev_pki`] wrote.
#[derive(Debug, Clone)]
pub struct DevPkiFiles {
    pub dir: PathBuf,
    /// The root certificate: what `trust.anchors` lists.
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    /// A directory file for `lienthong directory import`.
    pub directory_csv: PathBuf,
    pub agencies: Vec<AgencyFiles>,
    /// The gateway's own receipt-signing certificate and key
    /// (`receipts.cert`, `receipts.key`).
    pub gateway_cert: PathBuf,
    pub gateway_key: PathBuf,
    /// The gateway's TLS server certificate (localhost, 127.0.0.1) and key
    /// (`tls.cert`, `tls.key`).
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct AgencyFiles {
    pub organ_id: OrganId,
    /// The leaf certificate, then its intermediates (PEM).
    pub cert: PathBuf,
    /// Its PKCS#8 key, readable by the owner only.
    pub key: PathBuf,
    /// The agency software's client (system) certificate for mutual TLS,
    /// separate from the document-signing one, and its key.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// Four Lai Châu agencies (province, its office, a department, a city) for
/// trying the gateway out.
pub fn default_agencies() -> Vec<(OrganId, String)> {
    [
        ("000.00.00.H35", "Ủy ban nhân dân tỉnh Lai Châu"),
        ("000.00.01.H35", "Văn phòng Ủy ban nhân dân tỉnh Lai Châu"),
        ("000.00.12.H35", "Sở Khoa học và Công nghệ tỉnh Lai Châu"),
        ("000.00.31.H35", "Ủy ban nhân dân thành phố Lai Châu"),
    ]
    .into_iter()
    .filter_map(|(id, name)| OrganId::parse(id).ok().map(|id| (id, name.to_owned())))
    .collect()
}

/// Writes a root CA (`ca.pem`, `ca.key.pem`), for each agency
/// `<organ_id>.pem` and `<organ_id>.key.pem` (keys mode 0600 on unix), and a
/// `directory.csv` naming each agency's certificate.
///
/// `gateway_organ_id` is the gateway's own agency (`gateway.organ_id`), one
/// of `agencies`: the gateway's certificate (`gateway.pem`, which signs
/// receipts and the monthly report) is issued for it and bound to it in
/// `directory.csv` as a second signing certificate, so that
/// `reports.send_to` works out of the box.
///
/// The gateway's TLS certificate names `localhost` and 127.0.0.1, and
/// `server_names` besides (the host name other containers reach it by).
///
/// Refuses a directory that already holds a dev CA key: replacing it would
/// silently invalidate every certificate a running gateway trusts.
pub fn write_dev_pki(
    out_dir: &Path,
    agencies: &[(OrganId, String)],
    key_type: KeyType,
    gateway_organ_id: Option<&OrganId>,
    server_names: &[String],
) -> Result<DevPkiFiles> {
    let mut server_sans = Vec::new();
    for name in server_names {
        match name.parse::<std::net::IpAddr>() {
            Ok(ip) => server_sans.push(rcgen::SanType::IpAddress(ip)),
            Err(_) => server_sans.push(rcgen::SanType::DnsName(name.clone().try_into().map_err(
                |_| {
                    Error::malformed(format!(
                        "{name:?} is not a host name a certificate can hold"
                    ))
                },
            )?)),
        }
    }
    let gateway_agency = match gateway_organ_id {
        Some(g) => match agencies.iter().find(|(id, _)| id == g) {
            Some(a) => Some(a),
            None => {
                return Err(Error::malformed(format!(
                    "the gateway's agency {g} is not one of the agencies of the dev PKI"
                )));
            }
        },
        None => None,
    };
    let ca_cert = out_dir.join("ca.pem");
    let ca_key = out_dir.join("ca.key.pem");
    if ca_key.exists() {
        return Err(Error::malformed(format!(
            "{} already holds a dev CA key; choose another directory or delete that one first",
            out_dir.display()
        )));
    }
    fs::create_dir_all(out_dir).map_err(|e| write_error(out_dir, e))?;

    let ca = DevCa::generate("lienthong dev root CA", key_type)?;
    write_file(&ca_cert, ca.cert_pem().as_bytes(), false)?;
    write_file(&ca_key, ca.key_pem().as_bytes(), true)?;

    let now = OffsetDateTime::now_utc();
    let validity = (now - Duration::hours(1), now + Duration::days(2 * 365));
    // The gateway signs receipts (and the monthly report) with a certificate
    // of its own, issued by the same throwaway CA so that senders can check
    // them with ca.pem; when it has an agency, the certificate names it.
    let gw = match gateway_agency {
        Some((id, name)) => ca.issue_with(id.as_str(), name, key_type, validity, |p| {
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CountryName, "VN");
            dn.push(DnType::OrganizationName, name.as_str());
            dn.push(DnType::OrganizationalUnitName, id.as_str());
            dn.push(DnType::CommonName, "lienthong dev gateway");
            p.distinguished_name = dn;
        })?,
        None => ca.issue_signing("lienthong", "lienthong dev gateway", key_type, validity)?,
    };
    let gateway_cert = out_dir.join("gateway.pem");
    let gateway_key = out_dir.join("gateway.key.pem");
    write_file(&gateway_cert, gw.cert_pem.as_bytes(), false)?;
    write_file(&gateway_key, gw.key_pem.as_bytes(), true)?;

    let mut files = Vec::with_capacity(agencies.len());
    let mut csv_out = csv::Writer::from_writer(Vec::new());
    let csv_err = |e: csv::Error| Error::malformed(format!("could not write directory.csv: {e}"));
    csv_out
        .write_record([
            "organ_id",
            "name",
            "parent",
            "email",
            "signing_cert",
            "client_cert",
        ])
        .map_err(csv_err)?;
    for (organ_id, name) in agencies {
        let issued = ca.issue_signing(organ_id.as_str(), name, key_type, validity)?;
        let cert_name = format!("{organ_id}.pem");
        let cert_path = out_dir.join(&cert_name);
        let key_path = out_dir.join(format!("{organ_id}.key.pem"));
        let mut pem = issued.cert_pem.clone();
        for der in issued.chain_der.iter().skip(1) {
            pem.push_str(&der_to_pem(der));
        }
        write_file(&cert_path, pem.as_bytes(), false)?;
        write_file(&key_path, issued.key_pem.as_bytes(), true)?;
        let client = ca.issue_with(organ_id.as_str(), name, key_type, validity, |p| {
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        })?;
        let client_name = format!("{organ_id}.client.pem");
        let client_cert = out_dir.join(&client_name);
        let client_key = out_dir.join(format!("{organ_id}.client.key.pem"));
        write_file(&client_cert, client.cert_pem.as_bytes(), false)?;
        write_file(&client_key, client.key_pem.as_bytes(), true)?;
        let parent = organ_id.parent().map(String::from).unwrap_or_default();
        let signing = if gateway_organ_id == Some(organ_id) {
            format!("{cert_name};gateway.pem")
        } else {
            cert_name
        };
        csv_out
            .write_record([organ_id.as_str(), name, &parent, "", &signing, &client_name])
            .map_err(csv_err)?;
        files.push(AgencyFiles {
            organ_id: organ_id.clone(),
            cert: cert_path,
            key: key_path,
            client_cert,
            client_key,
        });
    }
    let csv_bytes = csv_out
        .into_inner()
        .map_err(|e| Error::malformed(format!("could not write directory.csv: {e}")))?;
    let directory_csv = out_dir.join("directory.csv");
    write_file(&directory_csv, &csv_bytes, false)?;

    let server = ca.issue_with(
        "lienthong",
        "lienthong dev gateway",
        key_type,
        validity,
        |p| {
            p.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            p.subject_alt_names = vec![rcgen::SanType::IpAddress(std::net::IpAddr::V4(
                std::net::Ipv4Addr::LOCALHOST,
            ))];
            if let Ok(name) = "localhost".to_owned().try_into() {
                p.subject_alt_names.push(rcgen::SanType::DnsName(name));
            }
            p.subject_alt_names.extend(server_sans.iter().cloned());
        },
    )?;
    let server_cert = out_dir.join("server.pem");
    let server_key = out_dir.join("server.key.pem");
    write_file(&server_cert, server.cert_pem.as_bytes(), false)?;
    write_file(&server_key, server.key_pem.as_bytes(), true)?;

    Ok(DevPkiFiles {
        server_cert,
        server_key,
        dir: out_dir.to_path_buf(),
        ca_cert,
        ca_key,
        directory_csv,
        agencies: files,
        gateway_cert,
        gateway_key,
    })
}

/// PEM for a DER certificate (64-column base64, as openssl writes).
pub fn der_to_pem(der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n = match chunk {
            [a, b, c] => (u32::from(*a) << 16) | (u32::from(*b) << 8) | u32::from(*c),
            [a, b] => (u32::from(*a) << 16) | (u32::from(*b) << 8),
            [a] => u32::from(*a) << 16,
            _ => 0,
        };
        let idx = |shift: u32| char::from(ALPHABET[((n >> shift) & 63) as usize]);
        b64.push(idx(18));
        b64.push(idx(12));
        b64.push(if chunk.len() > 1 { idx(6) } else { '=' });
        b64.push(if chunk.len() > 2 { idx(0) } else { '=' });
    }
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

fn write_error(path: &Path, e: std::io::Error) -> Error {
    Error::new(
        Reason::Unavailable,
        format!(
            "could not write {}: {e}; check that the directory is writable and the disk is not full",
            path.display()
        ),
    )
    .with_source(e)
}

fn write_file(path: &Path, bytes: &[u8], secret: bool) -> Result<()> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut f = opts.open(path).map_err(|e| write_error(path, e))?;
    f.write_all(bytes).map_err(|e| write_error(path, e))?;
    f.sync_all().map_err(|e| write_error(path, e))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::OnceLock;
    use x509_parser::prelude::*;

    /// Time-boxed certificates are the norm: an hour ago until a year on.
    pub(crate) fn valid_now() -> (OffsetDateTime, OffsetDateTime) {
        let now = OffsetDateTime::now_utc();
        (now - Duration::hours(1), now + Duration::days(365))
    }

    /// One RSA root shared by tests: RSA generation is slow unoptimised.
    pub(crate) fn shared_rsa_root() -> &'static DevCa {
        static CA: OnceLock<DevCa> = OnceLock::new();
        CA.get_or_init(
            || match DevCa::generate("test RSA root", KeyType::Rsa2048) {
                Ok(ca) => ca,
                Err(e) => panic!("{e}"),
            },
        )
    }

    fn ok<T>(r: Result<T>) -> T {
        match r {
            Ok(v) => v,
            Err(e) => panic!("{}", e.chain()),
        }
    }

    #[test]
    fn leaf_carries_utf8_names_usages_and_the_chain() {
        let root = ok(DevCa::generate("root", KeyType::EcP256));
        let mid = ok(root.intermediate("mid", KeyType::EcP384));
        let name = "Sở Khoa học và Công nghệ tỉnh Lai Châu";
        let leaf = ok(mid.issue_signing("000.00.12.H35", name, KeyType::EcP256, valid_now()));
        assert_eq!(leaf.chain_der.len(), 2);
        assert_eq!(leaf.chain_der[0], leaf.cert_der);
        assert_eq!(leaf.chain_der[1], mid.cert_der());
        assert!(leaf.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));

        let (_, cert) = match parse_x509_certificate(&leaf.cert_der) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        let cn: Vec<&str> = cert
            .subject()
            .iter_common_name()
            .filter_map(|a| a.as_str().ok())
            .collect();
        assert_eq!(cn, [name]);
        let o: Vec<&str> = cert
            .subject()
            .iter_organization()
            .filter_map(|a| a.as_str().ok())
            .collect();
        assert_eq!(o, [name]);
        let ou: Vec<&str> = cert
            .subject()
            .iter_organizational_unit()
            .filter_map(|a| a.as_str().ok())
            .collect();
        assert_eq!(ou, ["000.00.12.H35"]);
        let ku = cert.key_usage().ok().flatten().map(|k| *k.value);
        assert!(
            ku.is_some_and(|k| k.digital_signature() && k.non_repudiation() && !k.key_cert_sign())
        );
        let eku = cert
            .extended_key_usage()
            .ok()
            .flatten()
            .map(|e| e.value.clone());
        assert!(eku.is_some_and(|e| e.client_auth && e.email_protection && !e.server_auth));
        assert!(!cert.is_ca());

        let (_, ca_cert) = match parse_x509_certificate(mid.cert_der()) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        assert!(ca_cert.is_ca());
        assert_eq!(cert.issuer(), ca_cert.subject());
    }

    #[test]
    fn rsa_keys_are_pkcs8_that_ring_accepts() {
        let root = shared_rsa_root();
        assert!(root.key_pem().starts_with("-----BEGIN PRIVATE KEY-----"));
        let leaf = ok(root.issue_signing("000.00.01.H35", "VP", KeyType::Rsa2048, valid_now()));
        let pkcs8: PrivatePkcs8KeyDer<'static> =
            match rustls_pki_types::pem::PemObject::from_pem_slice(leaf.key_pem.as_bytes()) {
                Ok(k) => k,
                Err(e) => panic!("{e}"),
            };
        let kp = ring::signature::RsaKeyPair::from_pkcs8(pkcs8.secret_pkcs8_der());
        assert!(kp.is_ok_and(|k| k.public().modulus_len() == 256));
        assert_eq!(
            leaf.chain_der.len(),
            1,
            "a root's leaf carries no intermediates"
        );
    }

    #[test]
    fn key_type_names_round_trip() {
        for k in [KeyType::EcP256, KeyType::EcP384, KeyType::Rsa2048] {
            assert_eq!(KeyType::parse(k.as_str()), Some(k));
        }
        assert_eq!(KeyType::parse("dsa"), None);
    }

    #[test]
    fn pem_encoding_matches_rcgen() {
        let root = ok(DevCa::generate("root", KeyType::EcP256));
        assert_eq!(
            der_to_pem(root.cert_der()).replace("\r\n", "\n"),
            root.cert_pem().replace("\r\n", "\n")
        );
    }

    #[test]
    fn default_agencies_are_the_four_lai_chau_ones() {
        let a = default_agencies();
        let ids: Vec<&str> = a.iter().map(|(i, _)| i.as_str()).collect();
        assert_eq!(
            ids,
            [
                "000.00.00.H35",
                "000.00.01.H35",
                "000.00.12.H35",
                "000.00.31.H35"
            ]
        );
        assert_eq!(a[0].1, "Ủy ban nhân dân tỉnh Lai Châu");
    }

    #[test]
    fn write_dev_pki_writes_everything_and_refuses_to_overwrite() {
        let dir = ok(tempfile::tempdir().map_err(Error::from));
        let out = dir.path().join("pki");
        let agencies = default_agencies();
        let files = ok(write_dev_pki(
            &out,
            &agencies,
            KeyType::EcP256,
            Some(&agencies[0].0),
            &["gateway".to_owned()],
        ));
        assert_eq!(files.agencies.len(), 4);
        for p in [
            &files.ca_cert,
            &files.ca_key,
            &files.directory_csv,
            &files.server_cert,
            &files.server_key,
            &files.gateway_cert,
            &files.gateway_key,
            &files.agencies[0].client_cert,
            &files.agencies[0].client_key,
        ] {
            assert!(p.is_file(), "{}", p.display());
        }
        let first = &files.agencies[0];
        assert_eq!(first.cert, out.join("000.00.00.H35.pem"));
        assert_eq!(first.key, out.join("000.00.00.H35.key.pem"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for p in [&files.ca_key, &first.key] {
                let mode = fs::metadata(p).map(|m| m.permissions().mode() & 0o777).ok();
                assert_eq!(mode, Some(0o600), "{}", p.display());
            }
        }
        let csv_text = fs::read_to_string(&files.directory_csv).unwrap_or_default();
        let mut lines = csv_text.lines();
        assert_eq!(
            lines.next(),
            Some("organ_id,name,parent,email,signing_cert,client_cert")
        );
        assert_eq!(
            lines.next(),
            Some(
                "000.00.00.H35,Ủy ban nhân dân tỉnh Lai Châu,,,000.00.00.H35.pem;gateway.pem,000.00.00.H35.client.pem"
            )
        );
        assert_eq!(
            lines.next(),
            Some(
                "000.00.01.H35,Văn phòng Ủy ban nhân dân tỉnh Lai Châu,000.00.00.H35,,000.00.01.H35.pem,000.00.01.H35.client.pem"
            )
        );

        // The gateway's certificate names its agency.
        let gw_der = ok(crate::signing::load_certificate_pem(&files.gateway_cert));
        let info = ok(crate::signing::describe_certificate(&gw_der));
        assert!(info.subject.contains("000.00.00.H35"), "{}", info.subject);

        // The TLS certificate names the extra host (other containers reach
        // the gateway by it).
        let server_der = ok(crate::signing::load_certificate_pem(&files.server_cert));
        let names: Vec<String> = x509_parser::parse_x509_certificate(&server_der)
            .ok()
            .and_then(|(_, c)| {
                c.subject_alternative_name().ok().flatten().map(|s| {
                    s.value
                        .general_names
                        .iter()
                        .map(|g| g.to_string())
                        .collect()
                })
            })
            .unwrap_or_default();
        assert!(
            names.iter().any(|n| n.contains("gateway"))
                && names.iter().any(|n| n.contains("localhost")),
            "{names:?}"
        );

        let again = write_dev_pki(&out, &default_agencies(), KeyType::EcP256, None, &[]);
        assert!(again.is_err_and(|e| e.message().contains("already holds a dev CA key")));
    }
}

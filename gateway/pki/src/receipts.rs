//! Signed receipts: the sender's proof that the gateway accepted a message.
//!
//! The gateway signs, with its own key, DSSE's pre-authentication encoding
//! of a `ReceiptPayload` (message_id, from, SHA-256 of the signed envelope,
//! accepted_at, gateway, recipients). Anyone holding the gateway's receipt
//! certificate and its trust anchor can check it later, like an AS4
//! non-repudiation receipt.
//!
//! A receipt proves acceptance only when a gateway signed it: agencies'
//! signing certificates chain to the same anchors, so a chain alone would
//! let an agency sign a "receipt" for itself. The check is therefore pinned
//! to the receipt certificates named ([`ReceiptSigners`]): the gateway's own
//! and those of peer gateways whose receipts are to be believed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lienthong_proto::v1::{self as pb, ReceiptPayload, SendReceipt};
use lienthong_types::error::{Error, OrErr, Reason, Result};
use prost::Message as _;
use rustls_pki_types::UnixTime;

use crate::signing::{self, SigningKey, TrustAnchors, VerifiedSigner};

/// The gateway's receipt key and certificate chain.
#[derive(Debug)]
pub struct ReceiptSigner {
    key: SigningKey,
    chain: Vec<Vec<u8>>,
}

impl ReceiptSigner {
    /// Loads a PKCS#8 PEM key and its PEM certificate chain (leaf first).
    pub fn load(key: &Path, cert: &Path) -> Result<ReceiptSigner> {
        let (key, chain) = signing::load_signer(key, cert, None)?;
        Ok(ReceiptSigner { key, chain })
    }

    pub fn new(key: SigningKey, chain: Vec<Vec<u8>>) -> ReceiptSigner {
        ReceiptSigner { key, chain }
    }

    /// Fills `receipt_payload` and `signature` from the receipt's fields.
    pub fn sign(&self, receipt: &mut SendReceipt) -> Result<()> {
        let payload = ReceiptPayload {
            message_id: receipt.message_id.clone(),
            from: receipt.from.clone(),
            envelope_sha256: receipt.envelope_sha256.clone(),
            accepted_at: receipt.accepted_at,
            gateway: receipt.gateway.clone(),
            recipients: receipt.recipients.clone(),
        }
        .encode_to_vec();
        let pae = signing::pae(pb::RECEIPT_PAYLOAD_TYPE, &payload);
        let value = self.key.sign(&pae)?;
        receipt.receipt_payload = payload.into();
        receipt.signature = Some(pb::Signature {
            algorithm: self.key.algorithm().as_str().to_owned(),
            value: value.into(),
            certificates: self.chain.iter().map(|c| c.clone().into()).collect(),
        });
        Ok(())
    }

    /// Signs DSSE's pre-authentication encoding of `payload` under
    /// `payload_type`, carrying the certificate chain: for what another
    /// gateway checks (the directory exchange's updates).
    pub fn sign_pb(&self, payload_type: &str, payload: &[u8]) -> Result<pb::Signature> {
        let value = self.key.sign(&signing::pae(payload_type, payload))?;
        Ok(pb::Signature {
            algorithm: self.key.algorithm().as_str().to_owned(),
            value: value.into(),
            certificates: self.chain.iter().map(|c| c.clone().into()).collect(),
        })
    }

    /// Signs DSSE's pre-authentication encoding of `payload` under
    /// `payload_type`, naming the key rather than carrying the certificate
    /// chain: for records the gateway writes often (the transfer log's
    /// checkpoints), checked against the pinned receipt certificates.
    pub fn sign_detached(&self, payload_type: &str, payload: &[u8]) -> Result<DetachedSignature> {
        let leaf = self.chain.first().ok_or_else(|| {
            Error::new(
                Reason::Internal,
                "the receipt key has no certificate (receipts.cert)",
            )
        })?;
        let value = self.key.sign(&signing::pae(payload_type, payload))?;
        Ok(DetachedSignature {
            algorithm: self.key.algorithm().as_str().to_owned(),
            key_sha256: signing::spki_sha256(leaf)?,
            value,
        })
    }
}

/// A signature made by [`ReceiptSigner::sign_detached`]: the algorithm, the
/// SHA-256 of the signer's SubjectPublicKeyInfo (what the receipt
/// certificates are pinned by) and the signature's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetachedSignature {
    pub algorithm: String,
    pub key_sha256: [u8; 32],
    pub value: Vec<u8>,
}

/// The receipt certificates a receipt may be signed with, pinned by the
/// SHA-256 of their key: a gateway's receipt certificate renewed over the
/// same key stays pinned; one with a new key is added beside the old one,
/// whose receipts stay provable.
#[derive(Debug, Clone, Default)]
pub struct ReceiptSigners {
    signers: Vec<PinnedSigner>,
}

#[derive(Debug, Clone)]
struct PinnedSigner {
    spki_sha256: [u8; 32],
    subject: String,
    der: Vec<u8>,
}

impl ReceiptSigners {
    /// The leaf (first certificate) of each PEM file.
    pub fn from_pem_files(files: &[PathBuf]) -> Result<ReceiptSigners> {
        let mut out = ReceiptSigners::default();
        for f in files {
            out.add_der(&signing::load_certificate_pem(f)?)?;
        }
        Ok(out)
    }

    /// Pins one more certificate (DER).
    pub fn add_der(&mut self, der: &[u8]) -> Result<()> {
        let info = signing::describe_certificate(der)?;
        if !self
            .signers
            .iter()
            .any(|s| s.spki_sha256 == info.spki_sha256)
        {
            self.signers.push(PinnedSigner {
                spki_sha256: info.spki_sha256,
                subject: info.subject,
                der: der.to_vec(),
            });
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.signers.is_empty()
    }

    /// The pinned certificates, for a sentence: subject and key SHA-256.
    pub fn describe(&self) -> String {
        self.signers
            .iter()
            .map(|s| format!("{} (key sha256 {})", s.subject, hex::encode(s.spki_sha256)))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Checks a [`DetachedSignature`] over DSSE's pre-authentication
    /// encoding of `payload`: made by the key of one of the pinned
    /// certificates, whose subject it returns. The pin is the trust, so no
    /// chain is built: a checkpoint stays provable after its certificate
    /// expired, as long as its certificate stays listed.
    pub fn verify_detached(
        &self,
        payload_type: &str,
        payload: &[u8],
        sig: &DetachedSignature,
    ) -> Result<String> {
        let Some(pinned) = self
            .signers
            .iter()
            .find(|s| s.spki_sha256 == sig.key_sha256)
        else {
            let accepted = if self.is_empty() {
                "none is configured (receipts.cert, receipts.trusted_signers)".to_owned()
            } else {
                format!("accepted here: {}", self.describe())
            };
            return Err(Error::new(
                Reason::CertificateNotBound,
                format!(
                    "it is signed by a key (sha256 {}) that is not one of the gateway's receipt certificates; {accepted}",
                    hex::encode(sig.key_sha256)
                ),
            ));
        };
        signing::verify_with_certificate(
            &sig.algorithm,
            &pinned.der,
            &signing::pae(payload_type, payload),
            &sig.value,
        )?;
        Ok(pinned.subject.clone())
    }

    fn check(&self, signer: &VerifiedSigner) -> Result<()> {
        if self.is_empty() {
            return Err(Error::new(
                Reason::CertificateNotBound,
                "there is no gateway receipt certificate to check the receipt against: set receipts.cert (this gateway's) or receipts.trusted_signers (peer gateways'), or name the gateway's certificate with --signer",
            ));
        }
        if self
            .signers
            .iter()
            .any(|s| s.spki_sha256 == signer.spki_sha256)
        {
            return Ok(());
        }
        Err(Error::new(
            Reason::CertificateNotBound,
            format!(
                "the receipt is signed by {} (key sha256 {}), which is not a gateway's receipt certificate: its signature is valid, but a receipt proves acceptance only when a gateway signed it; accepted here: {}",
                signer.subject,
                hex::encode(signer.spki_sha256),
                self.describe()
            ),
        ))
    }
}

/// Checks a receipt: the signature over its payload, the certificate chain
/// to `anchors` as it stood when the message was accepted, that the signer
/// is one of `signers` (a gateway's receipt certificate), and that the
/// fields shown outside the signature are the signed ones.
pub fn verify_receipt(
    receipt: &SendReceipt,
    anchors: &TrustAnchors,
    signers: &ReceiptSigners,
) -> Result<VerifiedSigner> {
    let Some(sig) = &receipt.signature else {
        return Err(Error::new(
            Reason::BadSignature,
            "the receipt is not signed (the gateway had no receipt key configured)",
        ));
    };
    let payload = ReceiptPayload::decode(receipt.receipt_payload.clone()).or_err(
        Reason::BadSignature,
        "the receipt's signed payload is not a ReceiptPayload",
    )?;
    let at = payload.accepted_at.unwrap_or_default();
    let when = UnixTime::since_unix_epoch(Duration::from_secs(at.seconds.max(0) as u64));
    let pae = signing::pae(pb::RECEIPT_PAYLOAD_TYPE, &receipt.receipt_payload);
    let signer = signing::verify_signature(sig, &pae, anchors, when)?;
    signers.check(&signer)?;
    let mismatch = |what: &str| {
        Err(Error::new(
            Reason::BadSignature,
            format!(
                "the receipt's {what} differs from the {what} the gateway signed: the receipt was altered"
            ),
        ))
    };
    if payload.message_id != receipt.message_id {
        return mismatch("message_id");
    }
    if payload.from != receipt.from {
        return mismatch("sender");
    }
    if payload.envelope_sha256 != receipt.envelope_sha256 {
        return mismatch("envelope SHA-256");
    }
    if payload.accepted_at != receipt.accepted_at {
        return mismatch("acceptance time");
    }
    if payload.gateway != receipt.gateway {
        return mismatch("gateway");
    }
    if payload.recipients != receipt.recipients {
        return mismatch("recipient list");
    }
    Ok(signer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devpki::{DevCa, KeyType};

    fn issue(ca: &DevCa, organ_id: &str, name: &str) -> Result<ReceiptSigner> {
        let now = time::OffsetDateTime::now_utc();
        let issued = ca.issue_signing(
            organ_id,
            name,
            KeyType::EcP256,
            (
                now - time::Duration::days(1),
                now + time::Duration::days(365),
            ),
        )?;
        let key = SigningKey::from_pkcs8_pem(&issued.key_pem, None)?;
        Ok(ReceiptSigner::new(key, issued.chain_der))
    }

    /// The gateway's receipt signer, its pin, an agency's signer under the
    /// same CA, and the anchors.
    fn world() -> Result<(ReceiptSigner, ReceiptSigners, ReceiptSigner, TrustAnchors)> {
        let ca = DevCa::generate("Receipt Test CA", KeyType::EcP256)?;
        let gateway = issue(&ca, "000.00.00.H35", "Cổng liên thông tỉnh Lai Châu")?;
        let agency = issue(&ca, "000.00.01.H35", "Văn phòng UBND tỉnh")?;
        let mut pins = ReceiptSigners::default();
        pins.add_der(&gateway.chain[0])?;
        let anchors = TrustAnchors::from_der_certs([ca.cert_der()])?;
        Ok((gateway, pins, agency, anchors))
    }

    fn receipt() -> SendReceipt {
        SendReceipt {
            message_id: "m-1".into(),
            from: "000.00.01.H35".into(),
            accepted_at: Some(prost_types::Timestamp {
                seconds: time::OffsetDateTime::now_utc().unix_timestamp(),
                nanos: 5,
            }),
            envelope_sha256: vec![7u8; 32].into(),
            gateway: "lienthong-h35".into(),
            recipients: vec![pb::RecipientRoute {
                organ_id: "000.00.12.H35".into(),
                route: "local".into(),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn a_signed_receipt_verifies_and_an_altered_one_does_not() -> Result<()> {
        let (signer, pins, _, anchors) = world()?;
        let mut r = receipt();
        signer.sign(&mut r)?;
        let v = verify_receipt(&r, &anchors, &pins)?;
        assert!(v.subject.contains("Cổng liên thông"), "{}", v.subject);

        let mut altered = r.clone();
        altered.envelope_sha256 = vec![8u8; 32].into();
        let e = verify_receipt(&altered, &anchors, &pins).err();
        assert_eq!(e.map(|e| e.reason()), Some(Reason::BadSignature));

        let mut forged = r.clone();
        let mut payload = ReceiptPayload::decode(forged.receipt_payload.clone())
            .map_err(|e| Error::malformed("decode").with_source(e))?;
        payload.message_id = "m-2".into();
        forged.receipt_payload = payload.encode_to_vec().into();
        forged.message_id = "m-2".into();
        let e = verify_receipt(&forged, &anchors, &pins).err();
        assert_eq!(e.map(|e| e.reason()), Some(Reason::BadSignature));

        let other =
            TrustAnchors::from_der_certs([DevCa::generate("Other", KeyType::EcP256)?.cert_der()])?;
        let e = verify_receipt(&r, &other, &pins).err();
        assert_eq!(e.map(|e| e.reason()), Some(Reason::UntrustedCertificate));
        Ok(())
    }

    #[test]
    fn a_receipt_signed_by_an_agency_is_not_a_receipt() -> Result<()> {
        let (gateway, pins, agency, anchors) = world()?;
        let mut r = receipt();
        agency.sign(&mut r)?;
        let e = verify_receipt(&r, &anchors, &pins).err();
        let e = e.ok_or_else(|| Error::malformed("an agency's receipt verified"))?;
        assert_eq!(e.reason(), Reason::CertificateNotBound);
        assert!(
            e.message().contains("Văn phòng UBND tỉnh"),
            "{}",
            e.message()
        );
        assert!(e.message().contains("Cổng liên thông"), "{}", e.message());

        // Pinned as a peer gateway, the same signer is believed.
        let mut peers = pins.clone();
        peers.add_der(&agency.chain[0])?;
        verify_receipt(&r, &anchors, &peers)?;

        // Nothing pinned: nothing is believed, and the sentence says why.
        let mut own = receipt();
        gateway.sign(&mut own)?;
        let e = verify_receipt(&own, &anchors, &ReceiptSigners::default()).err();
        assert!(e.is_some_and(|e| e.message().contains("receipts.trusted_signers")));
        Ok(())
    }

    #[test]
    fn a_detached_signature_verifies_against_the_pins_only() -> Result<()> {
        let (gateway, pins, agency, _) = world()?;
        const TYPE: &str = "application/vnd.lienthong.test+json";
        let sig = gateway.sign_detached(TYPE, b"{\"v\":1}")?;
        assert!(
            pins.verify_detached(TYPE, b"{\"v\":1}", &sig)?
                .contains("Cổng liên thông")
        );
        let e = pins.verify_detached(TYPE, b"{\"v\":2}", &sig).err();
        assert_eq!(e.map(|e| e.reason()), Some(Reason::BadSignature));
        let e = pins.verify_detached("other/type", b"{\"v\":1}", &sig).err();
        assert_eq!(e.map(|e| e.reason()), Some(Reason::BadSignature));
        let by_agency = agency.sign_detached(TYPE, b"{\"v\":1}")?;
        let e = pins.verify_detached(TYPE, b"{\"v\":1}", &by_agency).err();
        assert_eq!(e.map(|e| e.reason()), Some(Reason::CertificateNotBound));
        let e = ReceiptSigners::default()
            .verify_detached(TYPE, b"{\"v\":1}", &sig)
            .err();
        assert!(e.is_some_and(|e| e.message().contains("receipts.cert")));
        Ok(())
    }

    #[test]
    fn an_unsigned_receipt_says_so() {
        let e = verify_receipt(
            &receipt(),
            &TrustAnchors::empty(),
            &ReceiptSigners::default(),
        )
        .err();
        assert!(e.is_some_and(|e| e.message().contains("not signed")));
    }
}

//! The files a manifest lists and the detached signature beside it
//! (`manifest.sig`), shared by
//! backups and archive packages: DSSE's pre-authentication encoding of the
//! manifest's exact bytes under a payload type of its own, made with the
//! receipt key and checked against the pinned receipt certificates.

use anyhow::{Context, Result, bail};
use lienthong_core::receipts::{DetachedSignature, ReceiptSigner};
use serde::{Deserialize, Serialize};

use crate::config::Config;

/// A file a manifest lists.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Relative to the backup's directory or the package's root, with `/`.
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// `manifest.sig`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureFile {
    pub payload_type: String,
    /// JOSE name, `null` when unsigned.
    pub alg: Option<String>,
    /// Hex SHA-256 of the signer's SubjectPublicKeyInfo.
    pub key: Option<String>,
    /// Hex.
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsigned: Option<String>,
}

/// The receipt key, or `None` with `unsigned`; a sentence naming `what`
/// when there is neither.
pub fn signer(cfg: &Config, unsigned: bool, what: &str) -> Result<Option<ReceiptSigner>> {
    match (&cfg.receipts.key, &cfg.receipts.cert) {
        (Some(key), Some(cert)) => Ok(Some(
            ReceiptSigner::load(key, cert)
                .map_err(|e| anyhow::anyhow!("{}", e.chain()))
                .context("loading receipts.key / receipts.cert")?,
        )),
        _ if unsigned => Ok(None),
        _ => bail!(
            "the gateway has no receipt key (receipts.key, receipts.cert) to sign {what} with: \
             configure one, or pass --unsigned (whoever reads it then cannot tell a rewritten \
             copy from this one)"
        ),
    }
}

/// `manifest.sig`'s bytes for `manifest`.
pub fn sign(
    signer: Option<&ReceiptSigner>,
    payload_type: &str,
    manifest: &[u8],
) -> Result<Vec<u8>> {
    let sig = match signer {
        Some(s) => {
            let d = s
                .sign_detached(payload_type, manifest)
                .map_err(|e| anyhow::anyhow!("{}", e.chain()))?;
            SignatureFile {
                payload_type: payload_type.to_owned(),
                alg: Some(d.algorithm),
                key: Some(hex::encode(d.key_sha256)),
                value: Some(hex::encode(d.value)),
                unsigned: None,
            }
        }
        None => SignatureFile {
            payload_type: payload_type.to_owned(),
            alg: None,
            key: None,
            value: None,
            unsigned: Some("made with --unsigned: the gateway had no receipt key".to_owned()),
        },
    };
    Ok(serde_json::to_vec_pretty(&sig)?)
}

/// Whether the manifest is signed: checks `sig` over `manifest` with the
/// configured receipt certificates. `Ok(false)`: unsigned, and
/// `unsigned_ok`. `what` names the manifest in sentences.
pub fn verify(
    cfg: &Config,
    payload_type: &str,
    what: &str,
    manifest: &[u8],
    sig: &[u8],
    unsigned_ok: bool,
) -> Result<bool> {
    let sig: SignatureFile = serde_json::from_slice(sig)
        .with_context(|| format!("the signature of {what} cannot be read"))?;
    if sig.payload_type != payload_type {
        bail!(
            "the signature beside {what} is for {:?}, not for this kind of manifest",
            sig.payload_type
        );
    }
    let (Some(alg), Some(key), Some(value)) = (sig.alg, sig.key, sig.value) else {
        if unsigned_ok {
            return Ok(false);
        }
        bail!(
            "{what} is not signed ({}): pass --unsigned to accept it anyway",
            sig.unsigned.unwrap_or_default()
        );
    };
    let key_sha256 = hex::decode(&key)
        .ok()
        .and_then(|k| <[u8; 32]>::try_from(k).ok())
        .with_context(|| format!("the signature of {what}: its key is not a SHA-256 in hex"))?;
    let value = hex::decode(&value)
        .with_context(|| format!("the signature of {what}: its value is not hex"))?;
    let signers = cfg.receipt_signers()?;
    if signers.is_empty() {
        bail!(
            "{what} is signed, and there is no receipt certificate to check it with: set \
             receipts.cert (or receipts.trusted_signers)"
        );
    }
    signers
        .verify_detached(
            payload_type,
            manifest,
            &DetachedSignature {
                algorithm: alg,
                key_sha256,
                value,
            },
        )
        .map_err(|e| {
            anyhow::anyhow!(
                "{what} does not match its signature (key SHA-256 {key}): {} — is it another \
                 gateway's, or was it changed?",
                e.message()
            )
        })?;
    Ok(true)
}

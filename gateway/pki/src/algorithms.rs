//! The signature algorithms the links of a certificate chain may use: what
//! a CA signs its certificates and revocation lists with. The chain checks
//! of signatures and the loading of revocation lists both judge by them.

use ring::signature as rsig;
use rustls_pki_types::{
    AlgorithmIdentifier, InvalidSignature, SignatureVerificationAlgorithm, alg_id,
};

/// What CA certificates and revocation lists may be signed with (chain
/// links, not envelopes); SHA-1 (RSA PKCS#1 only: ring verifies no ECDSA
/// with SHA-1) only when `allow_sha1`.
pub fn chain_algorithms(allow_sha1: bool) -> Vec<&'static dyn SignatureVerificationAlgorithm> {
    use webpki::ring as w;
    let mut algs: Vec<&'static dyn SignatureVerificationAlgorithm> = vec![
        w::RSA_PKCS1_2048_8192_SHA256,
        w::RSA_PKCS1_2048_8192_SHA384,
        w::RSA_PKCS1_2048_8192_SHA512,
        w::RSA_PKCS1_3072_8192_SHA384,
        w::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
        w::RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
        w::RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
        w::ECDSA_P256_SHA256,
        w::ECDSA_P256_SHA384,
        w::ECDSA_P384_SHA256,
        w::ECDSA_P384_SHA384,
        w::ED25519,
    ];
    if allow_sha1 {
        algs.push(RSA_PKCS1_SHA1);
    }
    algs
}

/// `sha1WithRSAEncryption` with its NULL parameters, as certificates carry it.
const SHA1_WITH_RSA: [u8; 13] = [
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05, 0x05, 0x00,
];

/// RSA PKCS#1 v1.5 with SHA-1, for `trust.refuse_sha1 = false`: webpki has
/// none, ring keeps one for legacy verification.
#[derive(Debug)]
struct RsaPkcs1Sha1;

impl SignatureVerificationAlgorithm for RsaPkcs1Sha1 {
    fn public_key_alg_id(&self) -> AlgorithmIdentifier {
        alg_id::RSA_ENCRYPTION
    }

    fn signature_alg_id(&self) -> AlgorithmIdentifier {
        AlgorithmIdentifier::from_slice(&SHA1_WITH_RSA)
    }

    fn verify_signature(
        &self,
        public_key: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> std::result::Result<(), InvalidSignature> {
        rsig::UnparsedPublicKey::new(
            &rsig::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
            public_key,
        )
        .verify(message, signature)
        .map_err(|_| InvalidSignature)
    }
}

static RSA_PKCS1_SHA1: &dyn SignatureVerificationAlgorithm = &RsaPkcs1Sha1;

//! The gateway's public-key infrastructure, apart from everything that
//! stores or carries documents: DSSE signatures of envelopes ([`signing`]),
//! certificate chains to the trust anchors and the certificate policy,
//! revocation lists ([`crl`]), the chains already verified
//! ([`chain_cache`]), the DER reader the lists and the PDF
//! signatures share ([`der`]), and signed receipts ([`receipts`]).
//!
//! Architecture invariant: no database, no network, no async runtime; what
//! it reads from disk (anchors, keys, CRL files) it is told the path of. The
//! throwaway CA of `lienthong dev-pki` ([`devpki`]) is compiled only with
//! the `dev` feature, so the gateway's own code paths cannot depend on it.

pub mod algorithms;
pub mod chain_cache;
pub mod crl;
pub mod der;
#[cfg(any(test, feature = "dev"))]
pub mod devpki;
pub mod receipts;
pub mod signing;

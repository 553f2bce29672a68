//! Trust and security, end to end: receipts, certificates bound and unbound,
//! mutual TLS, who may see what, callers nobody identified, tamper evidence,
//! clients that are not ours.
//!
//! Each test starts the real `lienthong` binary this package builds (see
//! `lienthong_testkit::bin_path`) and drives it as agency software and
//! operators would.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod authorization;
mod integrity;
mod interop;
mod mtls;
mod trust;
mod unauthenticated;

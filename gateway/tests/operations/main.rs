//! What operators do, end to end: maintenance notices, reports, accounts and
//! logins.
//!
//! Each test starts the real `lienthong` binary this package builds (see
//! `lienthong_testkit::bin_path`) and drives it as agency software and
//! operators would.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod archive;
mod backup;
mod integrity_check;
mod maintenance;
mod operators;
mod public_directory;
mod reports;
mod upgrade;

//! A gateway under stress, end to end: killed mid-way, abused, overloaded,
//! its database taken away.
//!
//! Each test starts the real `lienthong` binary this package builds (see
//! `lienthong_testkit::bin_path`) and drives it as agency software and
//! operators would.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod blobs_in_database;
mod crash;
mod limits;
mod overload;
mod pg_outage;
mod replicas;

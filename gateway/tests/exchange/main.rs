//! Documents between agencies, end to end: sending and receiving, status
//! notices and the lifecycle, edXML, text fields, who may speak for whom, bad
//! input, the directory.
//!
//! Each test starts the real `lienthong` binary this package builds (see
//! `lienthong_testkit::bin_path`) and drives it as agency software and
//! operators would.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod authority;
mod bad_input;
mod directory;
mod directory_export;
mod edxml;
mod edxml_at_rest;
mod exchange;
mod lifecycle;
mod receive_out;
mod status;
mod text_fields;

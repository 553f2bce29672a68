//! Signatures inside PDF documents, end to end: `lienthong pdf verify` and
//! the pipeline.
//!
//! Each test starts the real `lienthong` binary this package builds (see
//! `lienthong_testkit::bin_path`) and drives it as agency software and
//! operators would.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod pdf_pipeline;
mod pdf_pyhanko;
mod pdf_verify;

//! The national exchange over AMQP, end to end, against the real RabbitMQ.
//! Alone in its binary: one test restarts the broker.
//!
//! Each test starts the real `lienthong` binary this package builds (see
//! `lienthong_testkit::bin_path`) and drives it as agency software and
//! operators would.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod amqp;
mod chaos;
mod directory_exchange;

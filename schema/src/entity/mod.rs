//! One module per table.

pub mod agency;
pub mod archive_package;
pub mod attachment;
pub mod client_cert;
pub mod delivery;
pub mod event;
pub mod log_head;
pub mod maintenance; // Maintenance notices
pub mod message;
pub mod operator;
pub mod operator_session;
pub mod outbox;
pub mod representation;
pub mod signing_cert;

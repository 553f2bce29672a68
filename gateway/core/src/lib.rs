pub mod admin;
pub mod blobs;
pub mod crl;
pub mod devpki;
pub mod directory;
pub mod directory_csv;
pub mod error;
pub mod lifecycle;
pub mod maintenance; // Maintenance notices
pub mod metrics;
pub mod operators;
pub mod pades;
pub mod peers;
pub mod pipeline;
pub mod receipts;
pub mod reports;
pub mod routing;
pub mod signing;
pub mod store;

pub use lienthong_types::{organ_id, text};

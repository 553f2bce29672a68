pub mod blobs;
pub mod caller;
pub mod directory;
pub mod directory_csv;
pub mod error;
pub mod facts;
pub mod lifecycle;
pub mod maintenance; // Maintenance notices
mod metrics;
pub mod national_directory;
pub mod operators;
pub mod peers;
pub mod pipeline;
pub mod records;
pub mod routing;

pub use lienthong_pades as pades;
#[cfg(any(test, feature = "dev"))]
pub use lienthong_pki::devpki;
pub use lienthong_pki::{crl, receipts, signing};
pub use lienthong_store::{archive, backup, integrity, replicas, rows, store};
pub use lienthong_types::{calendar, now_micros, organ_id, sha256, text, timestamp};

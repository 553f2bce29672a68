pub mod admin;
pub mod blobs;
pub mod crl;
pub mod devpki;
pub mod directory;
pub mod directory_csv;
pub mod error;
pub mod lifecycle; // issue 6
pub mod maintenance; // issue 6: maintenance notices
pub mod metrics; // issue 7
pub mod operators;
pub mod organ_id;
pub mod pades; // issue 8
pub mod peers;
pub mod pipeline;
pub mod receipts;
pub mod reports; // issue 7
pub mod routing; // issue 5
pub mod signing;
pub mod store;
pub mod text;

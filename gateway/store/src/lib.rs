//! Everything the gateway keeps: the database (which rows change together,
//! the transfer log's chain) and the content-addressed attachment blobs.
//! The only crate that speaks SQL; the rest of the gateway calls its
//! operations, named in the domain's words.

pub mod archive;
pub mod backup;
pub mod blobs;
pub mod checkpoint;
mod commit;
mod directory_cache;
pub mod directory_exchange;
pub mod error;
pub mod integrity;
pub mod landed;
pub mod lease;
pub mod maintenance;
pub mod operators;
pub mod outbox;
pub mod peer_changes;
pub mod public_directory;
pub mod replicas;
pub mod reports;
pub mod rows;
mod sql;
pub mod store;
mod writes;

pub use store::Store;

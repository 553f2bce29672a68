//! Everything the gateway keeps: the database (which rows change together,
//! the transfer log's chain) and the content-addressed attachment blobs.
//! The only crate that speaks SQL; the rest of the gateway calls its
//! operations, named in the domain's words.

pub mod blobs;
pub mod error;
pub mod maintenance;
pub mod operators;
pub mod reports;
mod sql;
pub mod store;

pub use store::Store;

/// The rows the rest of the gateway reads, as plain records (no query
/// builder comes with them).
pub mod rows {
    /// An agency of the directory.
    pub use lienthong_schema::entity::agency::Model as AgencyRow;
    /// An attachment of a message (its blob by SHA-256).
    pub use lienthong_schema::entity::attachment::Model as AttachmentRow;
    /// A TLS client certificate bound to an agency or an operator.
    pub use lienthong_schema::entity::client_cert::Model as ClientCertRow;
    /// One recipient's copy of a message.
    pub use lienthong_schema::entity::delivery::Model as DeliveryRow;
    /// A line of the transfer log.
    pub use lienthong_schema::entity::event::Model as EventRow;
    /// A message as accepted.
    pub use lienthong_schema::entity::message::Model as MessageRow;
    /// A document-signing certificate bound to an agency.
    pub use lienthong_schema::entity::signing_cert::Model as SigningCertRow;
}

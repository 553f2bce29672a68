//! The gateway's error type (from `lienthong-types`).

pub use lienthong_store::error::{DbFault, OrDb, db_error};
pub use lienthong_types::error::*;

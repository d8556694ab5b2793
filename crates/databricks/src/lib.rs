//! Trig's client for the Databricks REST APIs.
//!
//! This crate is being built (issue #3). What is here so far is the boundary
//! where customer input enters: [`settings`] parses the workspace URL and the
//! SQL-warehouse HTTP path a customer pastes into the connect form into
//! validated types, and refuses URLs that would let the form reach internal
//! addresses (SSRF) unless an allow-list names the host. [`Secret`] holds
//! tokens and client secrets so that they never print.

mod error;
mod secret;
pub mod settings;

pub use error::Error;
pub use secret::Secret;
pub use settings::{AllowHosts, Cloud, WarehouseId, WorkspaceUrl};

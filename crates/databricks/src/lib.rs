//! Trig's client for the Databricks REST APIs.
//!
//! This crate is being built (issue #3). What is here so far is the boundary
//! where customer input enters: [`settings`] parses the workspace URL and the
//! SQL-warehouse HTTP path a customer pastes into the connect form into
//! validated types, and refuses URLs that would let the form reach internal
//! addresses (SSRF) unless an allow-list names the host. [`Secret`] holds
//! tokens and client secrets so that they never print. [`sql`] proves a
//! statement only reads before it is sent and quotes table names. [`retry`]
//! is the one retry policy every request will go through.

mod error;
pub mod retry;
mod secret;
pub mod settings;
pub mod sql;

pub use error::Error;
pub use retry::{RetryPolicy, Verdict};
pub use secret::Secret;
pub use settings::{AllowHosts, Cloud, WarehouseId, WorkspaceUrl};
pub use sql::{TableName, ensure_read_only};

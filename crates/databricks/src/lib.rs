//! Trig's client for the Databricks REST APIs.
//!
//! - [`settings`] parses what a customer pastes into the connect form
//!   (workspace URL, HTTP path) into validated types and refuses URLs that
//!   would let the form reach internal addresses (SSRF) unless an allow-list
//!   names the host.
//! - [`Client`] authenticates (token, or OAuth M2M with a cached token
//!   refreshed before expiry and re-fetched once on a refusal), sends every
//!   request through the one [`retry`] policy, and turns every failure into
//!   an [`Error`] kind that says what to fix.
//! - [`Client::query`] runs read-only statements ([`sql::ensure_read_only`])
//!   and streams their result as Arrow record batches with bounded memory.
//! - [`check::test_connection`] is the product page's Test connection.

mod api;
mod arrow;
pub mod check;
mod client;
mod error;
mod metadata;
pub mod profile;
pub mod retry;
mod secret;
pub mod settings;
pub mod sql;
mod statement;
pub mod suggest;

pub use api::{Column, Manifest, ResultSchema};
pub use client::{Client, ClientOptions, ConnectionSettings, Credentials};
pub use error::Error;
pub use metadata::{AccessTokenInfo, Catalog, EffectivePrivilege, Identity, TableColumn, TableInfo, Warehouse};
pub use retry::{RetryPolicy, Verdict};
pub use secret::Secret;
pub use settings::{AllowHosts, Cloud, WarehouseId, WebhookUrl, WorkspaceUrl};
pub use sql::{TableName, ensure_read_only, quote_ident, validate_filter};
pub use statement::{Parameter, Progress, ProgressFn, QueryOptions, ResultStream, Statement, TextResult};

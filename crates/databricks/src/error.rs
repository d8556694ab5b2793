//! The crate's one error type. Each variant is something a person must do
//! (the product page's troubleshooting list), says so in its message, and
//! knows whether trying again unchanged can help.

use std::time::Duration;

/// What went wrong, phrased for the person who has to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The workspace URL cannot be used; the message names the problem and the fix.
    #[error("workspace URL `{input}`: {reason}")]
    InvalidUrl { input: String, reason: String },
    /// The HTTP path does not name a SQL warehouse.
    #[error("HTTP path `{input}`: {reason}")]
    InvalidHttpPath { input: String, reason: String },
    /// A table name from the pipeline settings is not `catalog.schema.table`.
    #[error("table name `{input}`: {reason}")]
    InvalidTableName { input: String, reason: String },
    /// A setting other than the URL and path is unusable (empty token, bad parameter).
    #[error("{field}: {reason}")]
    InvalidSetting { field: &'static str, reason: String },
    /// The statement would change data or metadata; Trig only reads, so it
    /// was refused before it left the process.
    #[error("refused to send a {kind} statement: Trig only reads from Databricks (SELECT, WITH, SHOW, DESCRIBE)")]
    WriteRefused { kind: String },
    /// The statement does not parse, so it cannot be proven read-only.
    #[error("the statement does not parse, so Trig cannot tell that it only reads: {reason}")]
    UnparsableStatement { reason: String },

    /// The workspace cannot be reached at all (DNS, refused, TLS).
    #[error("cannot reach the workspace at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// The token (or the OAuth client) is invalid, expired or revoked.
    #[error("the access token was refused: {detail}")]
    TokenInvalid { detail: String },
    /// The HTTP path names a warehouse that does not exist.
    #[error("SQL warehouse {warehouse} was not found in this workspace")]
    WarehouseNotFound { warehouse: String },
    /// The principal lacks CAN USE on the warehouse.
    #[error("the principal{} has no CAN USE permission on SQL warehouse {warehouse}", principal_suffix(.principal))]
    NoWarehouseAccess { warehouse: String, principal: Option<String> },
    /// A Unity Catalog privilege is missing on an object.
    #[error("the principal{} lacks {privilege} on {object_type} {object}", principal_suffix(.principal))]
    MissingPrivilege { privilege: String, object_type: String, object: String, principal: Option<String> },
    /// The warehouse is stopped and only starts manually.
    #[error("SQL warehouse {warehouse} is stopped and is set to start manually, so queries cannot run")]
    WarehouseStopped { warehouse: String },
    /// The table or view does not exist (or is invisible to the principal).
    #[error("the table or view {name} cannot be found{}", tried_suffix(.tried))]
    TableNotFound {
        name: String,
        /// The lookups that failed, in order (the Unity Catalog API, the warehouse).
        tried: Vec<String>,
    },
    /// A column the statement names does not exist.
    #[error("column `{column}` does not exist{}", suggestion_suffix(.suggestions))]
    ColumnMissing { column: String, suggestions: Vec<String> },
    /// Databricks throttled us and the retry budget ran out.
    #[error("Databricks is rate limiting requests (HTTP 429) and kept doing so for {attempts} attempts")]
    RateLimited { attempts: u32, retry_after: Option<Duration> },
    /// Databricks answered 5xx (or reset the connection) and kept doing so.
    #[error("Databricks is unavailable: {detail}")]
    Unavailable { detail: String },
    /// A statement or request did not finish in time (and was cancelled).
    #[error("{what} did not finish within {}s and was cancelled", .after.as_secs())]
    TimedOut { what: String, after: Duration },
    /// The statement failed in the SQL engine.
    #[error("SQL error {class}{}: {message}", state_suffix(.sql_state))]
    Sql { class: String, sql_state: Option<String>, message: String },
    /// The statement was cancelled by someone else, or its result was closed.
    #[error("statement {statement_id} ended as {state} before its result was read")]
    StatementEnded { statement_id: String, state: String },
    /// The server said something this client does not understand.
    #[error("unexpected response from Databricks: {detail}")]
    Protocol { detail: String },
    /// The request was refused for a reason the other kinds do not cover.
    #[error("Databricks refused the request ({code}): {message}")]
    Api { status: u16, code: String, message: String },
    /// The caller cancelled the operation.
    #[error("cancelled")]
    Cancelled,
}

fn principal_suffix(p: &Option<String>) -> String {
    p.as_deref().map(|p| format!(" `{p}`")).unwrap_or_default()
}
fn suggestion_suffix(s: &[String]) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!("; did you mean {}?", s.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(" or "))
    }
}
fn tried_suffix(t: &[String]) -> String {
    if t.is_empty() { String::new() } else { format!(" ({})", t.join("; ")) }
}
fn state_suffix(s: &Option<String>) -> String {
    s.as_deref().map(|s| format!(" (SQLSTATE {s})")).unwrap_or_default()
}

/// The quoted principal for a GRANT statement.
fn grantee(p: &Option<String>) -> String {
    format!("`{}`", p.as_deref().unwrap_or("<application id of Trig's service principal>"))
}

impl Error {
    /// Whether trying again unchanged can help.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Unreachable { .. }
                | Error::RateLimited { .. }
                | Error::Unavailable { .. }
                | Error::TimedOut { .. }
                | Error::StatementEnded { .. }
        )
    }

    /// A stable name for the kind, for JSON output and sync-run records.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::InvalidUrl { .. } => "invalid_url",
            Error::InvalidHttpPath { .. } => "invalid_http_path",
            Error::InvalidTableName { .. } => "invalid_table_name",
            Error::InvalidSetting { .. } => "invalid_setting",
            Error::WriteRefused { .. } => "write_refused",
            Error::UnparsableStatement { .. } => "unparsable_statement",
            Error::Unreachable { .. } => "unreachable",
            Error::TokenInvalid { .. } => "token_invalid",
            Error::WarehouseNotFound { .. } => "warehouse_not_found",
            Error::NoWarehouseAccess { .. } => "no_warehouse_access",
            Error::MissingPrivilege { .. } => "missing_privilege",
            Error::WarehouseStopped { .. } => "warehouse_stopped",
            Error::TableNotFound { .. } => "table_not_found",
            Error::ColumnMissing { .. } => "column_missing",
            Error::RateLimited { .. } => "rate_limited",
            Error::Unavailable { .. } => "unavailable",
            Error::TimedOut { .. } => "timed_out",
            Error::Sql { .. } => "sql_error",
            Error::StatementEnded { .. } => "statement_ended",
            Error::Protocol { .. } => "protocol",
            Error::Api { .. } => "api_error",
            Error::Cancelled => "cancelled",
        }
    }

    /// Whether the person configuring the integration must change something
    /// (settings, grants, the warehouse, the source) rather than wait.
    pub fn is_user_fixable(&self) -> bool {
        !self.is_retryable() && !matches!(self, Error::Protocol { .. } | Error::Cancelled | Error::Api { .. })
    }

    /// The form field the error is about, when it is about one.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Error::InvalidUrl { .. } | Error::Unreachable { .. } => Some("workspace_url"),
            Error::InvalidHttpPath { .. } | Error::WarehouseNotFound { .. } => Some("http_path"),
            Error::InvalidTableName { .. } => Some("source"),
            Error::InvalidSetting { field, .. } => Some(field),
            Error::TokenInvalid { .. } => Some("token"),
            _ => None,
        }
    }

    /// What to do about it, in one or two sentences.
    pub fn hint(&self) -> String {
        match self {
            Error::InvalidUrl { .. } => "Paste the workspace URL from your browser's address bar when you are signed in to Databricks.".into(),
            Error::InvalidHttpPath { .. } => {
                "Open SQL Warehouses → your warehouse → Connection details and copy the HTTP path (/sql/1.0/warehouses/<id>).".into()
            }
            Error::InvalidTableName { .. } => "Name the source as catalog.schema.table, or schema.table with a default catalog.".into(),
            Error::InvalidSetting { field, .. } => format!("Correct `{field}` and try again."),
            Error::WriteRefused { .. } | Error::UnparsableStatement { .. } => {
                "Trig only runs read-only statements; change the configured SQL to a SELECT.".into()
            }
            Error::Unreachable { .. } => {
                "Check the workspace URL and that this network can reach it (private link, firewall, proxy); Trig retries automatically.".into()
            }
            Error::TokenInvalid { .. } => "Create a new token (for a service principal: Settings → Identity and access → Service principals → \
                 Secrets/Tokens) and update the connection. Tokens expire under workspace policy; a service principal with OAuth avoids that."
                .into(),
            Error::WarehouseNotFound { .. } => {
                "Check that the HTTP path is copied from the SQL warehouse you intend to use, in this workspace.".into()
            }
            Error::NoWarehouseAccess { warehouse, principal } => format!(
                "In SQL Warehouses → {warehouse} → Permissions, give {} the Can use permission.",
                principal.as_deref().map(|p| format!("`{p}`")).unwrap_or_else(|| "Trig's principal".into())
            ),
            Error::MissingPrivilege { privilege, object_type, object, principal } => {
                format!("Run: GRANT {privilege} ON {} {object} TO {};", object_type.to_ascii_uppercase(), grantee(principal))
            }
            Error::WarehouseStopped { .. } => {
                "Start the warehouse, or edit it and turn on auto-start (a short auto-stop keeps uptime billing low).".into()
            }
            Error::TableNotFound { .. } => {
                "Check the source name in the pipeline settings, and that Trig's principal has USE CATALOG, USE SCHEMA and SELECT on it.".into()
            }
            Error::ColumnMissing { .. } => {
                "The source's columns changed: update the pipeline's column mapping, or restore the column in the view Trig reads.".into()
            }
            Error::RateLimited { .. } => "Nothing to change: Trig backs off and the next run retries. If it persists, lower the sync frequency.".into(),
            Error::Unavailable { .. } => "Nothing to change: Trig retries on the next run. Check the Databricks status page if it persists.".into(),
            Error::TimedOut { .. } => "A larger warehouse or a narrower source (a view with a filter) makes the query faster.".into(),
            Error::Sql { .. } => "Fix the SQL (the filter or the source view) and run again.".into(),
            Error::StatementEnded { .. } => "Run again; if someone cancels Trig's queries in the query history, ask them not to.".into(),
            Error::Protocol { .. } | Error::Api { .. } => "Report this to Trig support with the time of the failure.".into(),
            Error::Cancelled => "Nothing to do.".into(),
        }
    }
}

//! The crate's one error type. Each variant is something a person must do,
//! and says so.

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
    /// The statement would change data or metadata; Trig only reads, so it
    /// was refused before it left the process.
    #[error("refused to send a {kind} statement: Trig only reads from Databricks (SELECT, WITH, SHOW, DESCRIBE)")]
    WriteRefused { kind: String },
    /// The statement does not parse, so it cannot be proven read-only.
    #[error("the statement does not parse, so Trig cannot tell that it only reads: {reason}")]
    UnparsableStatement { reason: String },
}

impl Error {
    /// Whether trying again unchanged can help (never, for bad settings).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::InvalidUrl { .. }
            | Error::InvalidHttpPath { .. }
            | Error::InvalidTableName { .. }
            | Error::WriteRefused { .. }
            | Error::UnparsableStatement { .. } => false,
        }
    }
    /// The form field the error is about.
    pub fn field(&self) -> &'static str {
        match self {
            Error::InvalidUrl { .. } => "workspace_url",
            Error::InvalidHttpPath { .. } => "http_path",
            Error::InvalidTableName { .. } => "table",
            Error::WriteRefused { .. } | Error::UnparsableStatement { .. } => "statement",
        }
    }
}

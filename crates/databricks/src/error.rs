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
}

impl Error {
    /// Whether trying again unchanged can help (never, for bad settings).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::InvalidUrl { .. } | Error::InvalidHttpPath { .. } => false,
        }
    }
    /// The form field the error is about.
    pub fn field(&self) -> &'static str {
        match self {
            Error::InvalidUrl { .. } => "workspace_url",
            Error::InvalidHttpPath { .. } => "http_path",
        }
    }
}

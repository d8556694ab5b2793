//! The sync engine's one error type.

/// Whose move it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The person configuring the integration must change something (config, grants, the source).
    User,
    /// Databricks or the network failed in a way the next run may not see.
    Remote,
    /// A bug or a broken store.
    Internal,
}

/// Why a run could not start or finish.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config names no such pipeline or connection, or a secret is missing.
    #[error("{key}: {message}")]
    Config { key: String, message: String },
    /// The source's columns no longer match the pipeline's mapping.
    #[error(
        "{source_table} has no column `{column}` (configured as {key}){}; the cursor did not move. Update the mapping or restore the column in the view",
        suggestion_text(.suggestion)
    )]
    Drift { source_table: String, column: String, key: String, suggestion: Option<String> },
    /// Databricks refused or failed.
    #[error(transparent)]
    Databricks(#[from] databricks::Error),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] trig_store::Error),
    /// The run was cancelled; what committed stays, the rest is re-read next time.
    #[error("the run was cancelled")]
    Cancelled,
}

fn suggestion_text(s: &Option<String>) -> String {
    s.as_deref().map(|c| format!("; did you mean `{c}`?")).unwrap_or_default()
}

impl Error {
    pub fn class(&self) -> Class {
        match self {
            Error::Config { .. } | Error::Drift { .. } => Class::User,
            Error::Databricks(e) if e.is_retryable() => Class::Remote,
            Error::Databricks(e) if e.is_user_fixable() => Class::User,
            Error::Databricks(databricks::Error::Api { .. }) => Class::Remote,
            Error::Databricks(_) => Class::Internal,
            Error::Store(e) if e.is_user_fixable() => Class::User,
            Error::Store(e) if e.is_transient() => Class::Remote,
            Error::Store(_) => Class::Internal,
            Error::Cancelled => Class::Remote,
        }
    }

    /// A stable name for run records and JSON.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Config { .. } => "config",
            Error::Drift { .. } => "schema_drift",
            Error::Databricks(e) => e.kind(),
            Error::Store(trig_store::Error::LeaseHeld { .. }) => "lease_held",
            Error::Store(trig_store::Error::LeaseLost { .. }) => "lease_lost",
            Error::Store(_) => "store",
            Error::Cancelled => "cancelled",
        }
    }

    /// What to do, when there is something to do.
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::Databricks(e) => Some(e.hint()),
            Error::Drift { .. } => {
                Some("Point Trig at a stable view whose columns your data team keeps, or update the pipeline's column mapping.".into())
            }
            _ => None,
        }
    }
}

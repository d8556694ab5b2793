//! The store's one error type.

/// What went wrong with the store, for the operator who must fix it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store URL names something this build cannot open.
    #[error("store url `{url}`: {reason}")]
    Unsupported { url: String, reason: String },
    /// The database file cannot be opened or created.
    #[error("cannot open the store at {path}: {reason}; check that the folder exists and is writable")]
    Open { path: String, reason: String },
    /// The database was written by a newer trig-databricks.
    #[error("the store at {path} has schema version {found}, newer than this build's {supported}; upgrade trig-databricks")]
    TooNew { path: String, found: i64, supported: i64 },
    /// A database call failed.
    #[error("store: {0}")]
    Database(String),
    /// A failpoint fired (tests only: `TRIG_FAILPOINT`).
    #[error("failpoint {0} fired")]
    Failpoint(String),
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::Database(e.to_string())
    }
}

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
    /// The file is not a SQLite database, or is damaged.
    #[error(
        "the store at {path} is not a readable SQLite database (damaged, or another kind of file); restore it from a backup, or move it away and run again: a new store is created and the next sync re-reads from Databricks"
    )]
    Corrupt { path: String },
    /// The file or its folder cannot be written.
    #[error(
        "the store at {path} cannot be written (a read-only file, folder or disk); make it writable for the user running trig-databricks"
    )]
    ReadOnly { path: String },
    /// Another process held the write lock for longer than the busy timeout.
    #[error(
        "the store at {path} stayed locked by another process for {timeout_secs}s; nothing was lost and the next run retries (if this repeats, look for a stuck trig-databricks process using this file)"
    )]
    Busy { path: String, timeout_secs: u64 },
    /// Another run of the pipeline holds its lease.
    #[error(
        "pipeline `{pipeline}` is already running: {holder} has held it since {since} (lease until {until}); this run did not start (`--wait` waits for it)"
    )]
    LeaseHeld { pipeline: String, holder: String, since: String, until: String },
    /// This run's lease expired or was taken over: it wrote nothing more.
    #[error(
        "pipeline `{pipeline}`: this run lost its lease ({reason}); it stopped writing, and the run that holds the lease now resumes from the last checkpoint"
    )]
    LeaseLost { pipeline: String, reason: String },
    /// A pipeline or tenant the store does not know.
    #[error("{what} exists already")]
    Exists { what: String },

    #[error("{what} is not in the store")]
    NotFound { what: String },
    /// The PostgreSQL server could not be reached (down, wrong host or port, a network problem).
    #[error("cannot reach the PostgreSQL store at {target}: {reason}; nothing was written, and the next run retries")]
    Unreachable { target: String, reason: String },
    /// The PostgreSQL server refused us: a wrong user or password, a missing database, no privilege.
    #[error("the PostgreSQL store at {target} refused the connection: {reason}")]
    Refused { target: String, reason: String },
    /// A database call failed.
    #[error("store: {0}")]
    Database(String),
    /// A failpoint fired (tests only: `TRIG_FAILPOINT`, with the `failpoints` feature).
    #[error("failpoint {0} fired")]
    Failpoint(String),
}

impl Error {
    /// Names the file in errors that were raised without it.
    pub(crate) fn at(self, file: &str, busy_timeout: std::time::Duration) -> Error {
        match self {
            Error::Corrupt { path } if path.is_empty() => Error::Corrupt { path: file.to_string() },
            Error::ReadOnly { path } if path.is_empty() => Error::ReadOnly { path: file.to_string() },
            Error::Busy { path, .. } if path.is_empty() => Error::Busy { path: file.to_string(), timeout_secs: busy_timeout.as_secs() },
            other => other,
        }
    }

    /// Names the PostgreSQL server in errors that were raised without it.
    pub(crate) fn at_target(self, target: &str) -> Error {
        match self {
            Error::Unreachable { target: t, reason } if t.is_empty() => Error::Unreachable { target: target.to_string(), reason },
            Error::Refused { target: t, reason } if t.is_empty() => Error::Refused { target: target.to_string(), reason },
            other => other,
        }
    }

    /// Whether the same call may succeed later without anyone changing anything.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Busy { .. } | Error::LeaseHeld { .. } | Error::LeaseLost { .. } | Error::Unreachable { .. })
    }

    /// Whether the operator must fix something (the URL, the file, its permissions).
    pub fn is_user_fixable(&self) -> bool {
        matches!(
            self,
            Error::Unsupported { .. }
                | Error::Open { .. }
                | Error::TooNew { .. }
                | Error::Corrupt { .. }
                | Error::ReadOnly { .. }
                | Error::Refused { .. }
                | Error::Exists { .. }
                | Error::NotFound { .. }
        )
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode;
        match e.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => Error::Busy { path: String::new(), timeout_secs: 0 },
            Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => Error::Corrupt { path: String::new() },
            Some(ErrorCode::ReadOnly) => Error::ReadOnly { path: String::new() },
            _ => Error::Database(e.to_string()),
        }
    }
}

impl From<postgres::Error> for Error {
    fn from(e: postgres::Error) -> Self {
        use postgres::error::SqlState;
        let reason = || {
            // The server's own words (never the URL, which may hold a password).
            e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| {
                let mut s = e.to_string();
                if let Some(src) = std::error::Error::source(&e) {
                    s = format!("{s}: {src}");
                }
                s
            })
        };
        match e.code() {
            Some(c) if *c == SqlState::INVALID_PASSWORD || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION => {
                Error::Refused { target: String::new(), reason: format!("{}; check the user and password in [store] url", reason()) }
            }
            Some(c) if *c == SqlState::INVALID_CATALOG_NAME => Error::Refused {
                target: String::new(),
                reason: format!("{}; create the database (createdb) or fix its name in [store] url", reason()),
            },
            Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED => {
                Error::Busy { path: "PostgreSQL".into(), timeout_secs: 0 }
            }
            Some(_) => Error::Database(reason()),
            None if e.is_closed() || std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>()) => {
                Error::Unreachable { target: String::new(), reason: reason() }
            }
            None => Error::Database(reason()),
        }
    }
}

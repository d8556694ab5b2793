//! The crate's one error: each kind says what the person who sees it must do,
//! and the API answers it as `{"error": {"kind", "message", "field"?, "hint"?}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the secret key {what} {problem}; {}", crate::secrets::HOW_TO_MAKE_A_KEY)]
    Key { what: String, problem: String },

    #[error("the secret of {context} {problem}")]
    Sealed { context: String, problem: String },

    #[error("no valid API token: send `Authorization: Bearer <token>` with a token from `trig-databricks tokens create`")]
    Unauthorized,

    #[error("a {role} token may not {action}")]
    Forbidden { role: &'static str, action: String },

    #[error("{what} does not exist")]
    NotFound { what: String },

    #[error("{what} exists already")]
    Conflict { what: String },

    #[error("{what} comes from {file} and is read-only here; change it in the file and restart serve")]
    ReadOnly { what: String, file: String },

    #[error("{field}: {message}")]
    Invalid { field: String, message: String },

    /// A run or a preview failed: the engine's words, kind and fix.
    #[error("{message}")]
    Sync { kind: &'static str, message: String, hint: Option<String> },

    #[error("the request body is over {limit} bytes")]
    TooLarge { limit: usize },

    #[error(transparent)]
    Store(#[from] trig_store::Error),
}

impl Error {
    /// A stable name for the kind, for JSON and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Key { .. } => "secret_key",
            Error::Sealed { .. } => "sealed_secret",
            Error::Unauthorized => "unauthorized",
            Error::Forbidden { .. } => "forbidden",
            Error::NotFound { .. } => "not_found",
            Error::Conflict { .. } => "conflict",
            Error::ReadOnly { .. } => "read_only",
            Error::Invalid { .. } => "invalid",
            Error::TooLarge { .. } => "too_large",
            Error::Sync { kind, .. } => kind,
            Error::Store(trig_store::Error::Unreachable { .. }) => "store_unreachable",
            Error::Store(_) => "store",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Error::Unauthorized => StatusCode::UNAUTHORIZED,
            Error::Forbidden { .. } => StatusCode::FORBIDDEN,
            Error::NotFound { .. } => StatusCode::NOT_FOUND,
            Error::Conflict { .. } | Error::ReadOnly { .. } => StatusCode::CONFLICT,
            Error::Invalid { .. } => StatusCode::BAD_REQUEST,
            Error::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Sync { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Error::Store(trig_store::Error::Unreachable { .. } | trig_store::Error::Busy { .. }) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Key { .. } | Error::Sealed { .. } | Error::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The form field or body key at fault.
    pub fn field(&self) -> Option<&str> {
        match self {
            Error::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }

    /// What to do, when the message alone does not say it.
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::Unauthorized => Some("a token is printed once by `trig-databricks tokens create --tenant ID --role admin`".into()),
            Error::Forbidden { .. } => Some("ask a Trig representative".into()),
            Error::TooLarge { .. } => Some("send the configuration only; rows are never uploaded".into()),
            Error::Sync { hint, .. } => hint.clone(),
            _ => None,
        }
    }

    /// A store error that a person may see (a store's `Exists` and `NotFound` are the API's).
    pub fn from_store(e: trig_store::Error) -> Error {
        match e {
            trig_store::Error::Exists { what } => Error::Conflict { what },
            trig_store::Error::NotFound { what } => Error::NotFound { what },
            other => Error::Store(other),
        }
    }

    pub(crate) fn in_file(self, what: &str) -> Error {
        match self {
            Error::Key { problem, .. } => Error::Key { what: what.to_string(), problem },
            other => other,
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(kind = self.kind(), "{self}");
        }
        let mut body = json!({ "kind": self.kind(), "message": self.to_string() });
        if let Some(f) = self.field() {
            body["field"] = json!(f);
        }
        if let Some(h) = self.hint() {
            body["hint"] = json!(h);
        }
        crate::api::json_response(status, &json!({ "error": body }))
    }
}

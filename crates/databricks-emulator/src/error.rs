//! Errors: the crate's own (starting the emulator) and the two shapes the
//! emulator answers with on the wire (REST error bodies and FAILED statements).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// Why the emulator could not start or load a fixture.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The fixture file could not be read.
    #[error("cannot read fixture {path}: {reason}. Check the path passed to --fixture.")]
    ReadFixture { path: String, reason: std::io::Error },
    /// The fixture is not valid TOML or has unknown keys.
    #[error("fixture {path} is invalid: {message}")]
    ParseFixture { path: String, message: String },
    /// The fixture parsed but describes an inconsistent workspace.
    #[error("fixture is inconsistent: {0}")]
    Fixture(String),
    /// A table's data file could not be loaded.
    #[error("cannot load data for table {table} from {path}: {message}")]
    LoadTable { table: String, path: String, message: String },
    /// The SQL engine refused a view or a table definition.
    #[error("view {view} does not plan: {message}. Fix the view's SQL in the fixture.")]
    View { view: String, message: String },
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}: {reason}. Pick another --addr or free the port.")]
    Bind { addr: String, reason: std::io::Error },
}

/// A REST error as Databricks sends it: a status and `{error_code, message, details?}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    /// A string such as `INVALID_PARAMETER_VALUE`, or a number (the auth layer's `403`).
    pub error_code: Value,
    pub message: String,
    pub details: Option<Value>,
    /// Extra response headers (`Retry-After`, `WWW-Authenticate`, ...).
    pub headers: Vec<(&'static str, String)>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        ApiError { status, error_code: json!(code), message: message.into(), details: None, headers: Vec::new() }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BAD_REQUEST", message)
    }
    pub fn invalid_parameter(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "INVALID_PARAMETER_VALUE", message)
    }
    pub fn malformed_json() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "MALFORMED_REQUEST",
            "Invalid JSON given in the body of the request - failed to parse given JSON",
        )
    }
    pub fn not_found(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }
    pub fn permission_denied(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "PERMISSION_DENIED", message)
    }
    /// The auth layer's answer to a bad, revoked or expired token: 403 with a numeric code.
    pub fn invalid_token(request_id: &str) -> Self {
        let mut e = ApiError {
            status: StatusCode::FORBIDDEN,
            error_code: json!(403),
            message: format!("Invalid access token. [ReqId: {request_id}]"),
            details: None,
            headers: vec![("x-databricks-reason-phrase", "Invalid access token.".into())],
        };
        e.headers.push(("content-type", "application/json; charset=utf-8".into()));
        e
    }
    /// No credential at all: the only 401.
    pub fn unauthenticated() -> Self {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            error_code: json!(401),
            message: "Credential was not sent or was of an unsupported type for this API.".into(),
            details: None,
            headers: vec![
                ("www-authenticate", "Bearer realm=\"DatabricksRealm\"".into()),
                ("content-type", "application/json; charset=utf-8".into()),
            ],
        }
    }
    pub fn endpoint_not_found(method: &str, path: &str) -> Self {
        let short = path.strip_prefix("/api/2.0").or_else(|| path.strip_prefix("/api/2.1")).unwrap_or(path);
        Self::new(StatusCode::NOT_FOUND, "ENDPOINT_NOT_FOUND", format!("No API found for '{method} {short}'"))
    }
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }
    pub fn body(&self) -> Value {
        let mut body = serde_json::Map::new();
        body.insert("error_code".into(), self.error_code.clone());
        body.insert("message".into(), json!(self.message));
        if let Some(d) = &self.details {
            body.insert("details".into(), d.clone());
        }
        Value::Object(body)
    }
}

/// `google.rpc.ResourceInfo` + `RequestInfo` details, as Databricks attaches them.
pub fn resource_details(resource_type: &str, resource_name: &str, description: &str, request_id: &str) -> Value {
    json!([
        {"@type": "type.googleapis.com/google.rpc.ResourceInfo", "resource_type": resource_type,
         "resource_name": resource_name, "description": description},
        {"@type": "type.googleapis.com/google.rpc.RequestInfo", "request_id": request_id, "serving_data": ""}
    ])
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.body().to_string();
        let mut resp = (self.status, body).into_response();
        let headers = resp.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        for (name, value) in &self.headers {
            if let Ok(v) = HeaderValue::from_str(value) {
                headers.insert(*name, v);
            }
        }
        resp
    }
}

/// A SQL failure: HTTP 200, state FAILED, the class in the message.
#[derive(Debug, Clone, PartialEq)]
pub struct SqlError {
    /// `status.error.error_code`; `BAD_REQUEST` for every engine error.
    pub error_code: &'static str,
    /// The whole message, `[CLASS] text SQLSTATE: xxxxx...`.
    pub message: String,
    pub sql_state: Option<String>,
}

impl SqlError {
    /// `[CLASS] text SQLSTATE: state`, the shape of almost every engine error.
    pub fn class(class: &str, text: impl AsRef<str>, sql_state: &str) -> Self {
        SqlError {
            error_code: "BAD_REQUEST",
            message: format!("[{class}] {} SQLSTATE: {sql_state}", text.as_ref()),
            sql_state: Some(sql_state.to_string()),
        }
    }
    /// A message without a class prefix (Unity Catalog's `PERMISSION_DENIED: ...`).
    pub fn raw(text: impl Into<String>, sql_state: &str) -> Self {
        SqlError { error_code: "BAD_REQUEST", message: text.into(), sql_state: Some(sql_state.to_string()) }
    }
    pub fn insufficient(privilege: &str, kind: &str, name: &str) -> Self {
        SqlError::class(
            "INSUFFICIENT_PERMISSIONS",
            format!("Insufficient privileges:\nUser does not have {privilege} on {kind} '{name}'."),
            "42501",
        )
    }
    pub fn parse_syntax(sql: &str, near: &str, line: usize, pos: usize) -> Self {
        SqlError {
            error_code: "BAD_REQUEST",
            message: format!(
                "\n[PARSE_SYNTAX_ERROR] Syntax error at or near '{near}'. SQLSTATE: 42601 (line {line}, pos {pos})\n\n== SQL ==\n{sql}\n{}^^^\n",
                " ".repeat(pos)
            ),
            sql_state: Some("42601".into()),
        }
    }
    pub fn internal(text: impl AsRef<str>) -> Self {
        SqlError::class("INTERNAL_ERROR", text, "XX000")
    }
    pub fn to_json(&self) -> Value {
        json!({"error_code": self.error_code, "message": self.message})
    }
}

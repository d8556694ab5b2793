//! The wire: response shapes of the Statement Execution API, and the one
//! place where Databricks' error shapes become [`Error`] kinds.
//!
//! Classification follows what the reference records: the `error_code` is
//! read first, then the status; the auth layer answers 403 with a *numeric*
//! `error_code` for a bad or expired token (that is not a grant problem);
//! SQL failures arrive as HTTP 200 FAILED statements whose class is only the
//! `[CLASS]` prefix of the message plus `sql_state`.

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::error::Error;

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct StatementResponse {
    pub statement_id: String,
    pub status: Status,
    #[serde(default)]
    pub manifest: Option<Manifest>,
    #[serde(default)]
    pub result: Option<ResultData>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Status {
    pub state: String,
    #[serde(default)]
    pub error: Option<ServiceError>,
    #[serde(default)]
    pub sql_state: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ServiceError {
    #[serde(default)]
    pub error_code: Option<Value>,
    #[serde(default)]
    pub message: Option<String>,
}

/// The manifest of a finished statement.
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub schema: ResultSchema,
    #[serde(default)]
    pub total_chunk_count: u64,
    #[serde(default)]
    pub total_row_count: u64,
    #[serde(default)]
    pub total_byte_count: Option<u64>,
    #[serde(default)]
    pub truncated: bool,
    #[serde(default)]
    pub result_compression: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ResultSchema {
    #[serde(default)]
    pub column_count: u64,
    #[serde(default)]
    pub columns: Vec<Column>,
}

/// A result column as the Statement API describes it.
#[derive(Debug, Clone, Deserialize)]
pub struct Column {
    pub name: String,
    #[serde(default)]
    pub type_name: String,
    #[serde(default)]
    pub type_text: String,
    #[serde(default)]
    pub position: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct ResultData {
    #[serde(default)]
    pub data_array: Option<Vec<Vec<Option<String>>>>,
    #[serde(default)]
    pub external_links: Option<Vec<ExternalLink>>,
    #[serde(default)]
    pub next_chunk_index: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ExternalLink {
    pub external_link: String,
    pub chunk_index: u64,
    #[serde(default)]
    pub http_headers: Option<std::collections::BTreeMap<String, String>>,
}

/// What a non-2xx REST answer said, parsed from any of the error formats the SDKs accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RestError {
    pub status: u16,
    pub code: String,
    pub message: String,
    /// `resource_type` and `resource_name` of a ResourceInfo detail.
    pub resource: Option<(String, String)>,
    pub retry_after: Option<Duration>,
}

impl RestError {
    pub fn parse(status: u16, retry_after: Option<Duration>, body: &[u8]) -> RestError {
        let mut e = RestError { status, code: String::new(), message: String::new(), resource: None, retry_after };
        if let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(body) {
            e.code = match m.get("error_code") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                _ => m.get("scimType").and_then(Value::as_str).unwrap_or_default().to_string(),
            };
            e.message = ["message", "detail", "error", "error_description"]
                .iter()
                .find_map(|k| m.get(*k).and_then(Value::as_str))
                .unwrap_or_default()
                .to_string();
            if let Some(Value::Array(details)) = m.get("details") {
                for d in details {
                    if d.get("@type").and_then(Value::as_str).is_some_and(|t| t.ends_with("ResourceInfo")) {
                        let t = d.get("resource_type").and_then(Value::as_str).unwrap_or_default();
                        let n = d.get("resource_name").and_then(Value::as_str).unwrap_or_default();
                        e.resource = Some((t.to_string(), n.to_string()));
                    }
                }
            }
        } else {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            match text.split_once(": ") {
                Some((code, msg)) if !code.is_empty() && code.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') => {
                    e.code = code.to_string();
                    e.message = msg.to_string();
                }
                _ => e.message = text.chars().take(300).collect(),
            }
        }
        if e.message.is_empty() {
            e.message = format!("HTTP {status}");
        }
        e
    }

    /// The auth layer's answer to a bad, expired or revoked credential.
    pub fn is_bad_credential(&self) -> bool {
        self.status == 401 || (self.status == 403 && (self.code == "403" || self.code == "401" || self.code == "UNAUTHENTICATED"))
    }

    /// Turns the error into the kind a person acts on.
    pub fn classify(&self, warehouse: &str, principal: Option<&str>, attempts: u32) -> Error {
        let principal = principal.map(str::to_string);
        let msg = strip_request_id(&self.message);
        if self.is_bad_credential() {
            return Error::TokenInvalid { detail: msg };
        }
        match (self.status, self.code.as_str()) {
            (429, _) | (_, "RESOURCE_EXHAUSTED" | "REQUEST_LIMIT_EXCEEDED") => {
                return Error::RateLimited { attempts, retry_after: self.retry_after };
            }
            (500..=599, _) | (_, "TEMPORARILY_UNAVAILABLE" | "WORKSPACE_TEMPORARILY_UNAVAILABLE" | "SERVICE_UNDER_MAINTENANCE") => {
                let tries = if attempts > 1 { format!(" after {attempts} attempts") } else { String::new() };
                return Error::Unavailable { detail: format!("HTTP {}{tries}: {msg}", self.status) };
            }
            _ => {}
        }
        if let Some((kind, name)) = &self.resource
            && kind == "warehouse"
            && self.status == 403
        {
            return Error::NoWarehouseAccess { warehouse: name.clone(), principal };
        }
        if self.status == 403
            && let Some(e) = parse_privilege(&msg, principal.clone())
        {
            return e;
        }
        if msg.ends_with("is not a valid endpoint id.") || (self.status == 404 && msg.to_ascii_lowercase().contains("warehouse")) {
            return Error::WarehouseNotFound { warehouse: warehouse.to_string() };
        }
        if matches!(self.code.as_str(), "TABLE_DOES_NOT_EXIST" | "SCHEMA_DOES_NOT_EXIST" | "CATALOG_DOES_NOT_EXIST") {
            return Error::TableNotFound { name: quoted_name(&msg).unwrap_or(msg), tried: Vec::new() };
        }
        Error::Api {
            status: self.status,
            code: if self.code.is_empty() { self.status.to_string() } else { self.code.clone() },
            message: msg,
        }
    }
}

/// Classifies a FAILED statement's status.
pub(crate) fn classify_failed(status: &Status, principal: Option<&str>, warehouse: &str) -> Error {
    let message = status.error.as_ref().and_then(|e| e.message.clone()).unwrap_or_default();
    let message = message.trim().to_string();
    let (class, text) = match message.strip_prefix('[').and_then(|r| r.split_once(']')) {
        Some((class, rest)) => (class.to_string(), rest.trim().to_string()),
        None => match message.split_once(": ") {
            Some((c, rest)) if c.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') => (c.to_string(), rest.to_string()),
            _ => (String::new(), message.clone()),
        },
    };
    let principal = principal.map(str::to_string);
    let base = class.split('.').next().unwrap_or_default();
    match base {
        "TABLE_OR_VIEW_NOT_FOUND" => {
            return Error::TableNotFound { name: backticked(&text).into_iter().next().unwrap_or_default(), tried: Vec::new() };
        }
        "UNRESOLVED_COLUMN" => {
            let names = backticked(&text);
            let column = names.first().cloned().unwrap_or_default();
            let suggestions = text
                .split_once("Did you mean one of the following?")
                .map(|(_, rest)| backticked(rest.split(']').next().unwrap_or_default()))
                .unwrap_or_default();
            return Error::ColumnMissing { column, suggestions };
        }
        "WAREHOUSE_NOT_RUNNING" => return Error::WarehouseStopped { warehouse: warehouse.to_string() },
        _ => {}
    }
    if (base == "INSUFFICIENT_PERMISSIONS" || base == "PERMISSION_DENIED" || status.sql_state.as_deref() == Some("42501"))
        && let Some(e) = parse_privilege(&text, principal)
    {
        return e;
    }
    let class = if class.is_empty() {
        status.error.as_ref().and_then(|e| e.error_code.as_ref()).and_then(Value::as_str).unwrap_or("UNKNOWN").to_string()
    } else {
        class
    };
    let text = text.split(" SQLSTATE:").next().unwrap_or(&text).trim().to_string();
    Error::Sql { class, sql_state: status.sql_state.clone(), message: text }
}

/// "User does not have SELECT on Table 'main.crm.people'." → MissingPrivilege.
fn parse_privilege(text: &str, principal: Option<String>) -> Option<Error> {
    let (_, rest) = text.split_once("does not have ")?;
    let (privilege, rest) = rest.split_once(" on ")?;
    let (object_type, rest) = rest.split_once(' ')?;
    let object = quoted_name(rest)?;
    if privilege.len() > 40 || privilege.contains("permission") {
        return None;
    }
    Some(Error::MissingPrivilege {
        privilege: privilege.replace('_', " ").to_string(),
        object_type: object_type.to_ascii_uppercase(),
        object,
        principal,
    })
}

fn quoted_name(s: &str) -> Option<String> {
    let start = s.find('\'')?;
    let rest = &s[start + 1..];
    let end = rest.find('\'')?;
    Some(rest[..end].to_string())
}

/// Every `` `name` `` in a message, in order.
fn backticked(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut parts = s.split('`');
    parts.next();
    while let (Some(inside), _) = (parts.next(), parts.next()) {
        if !inside.is_empty() {
            out.push(inside.to_string());
        }
    }
    out
}

fn strip_request_id(m: &str) -> String {
    match m.find(" [ReqId:") {
        Some(i) => m[..i].trim().to_string(),
        None => m.trim().to_string(),
    }
}

/// Parses `Retry-After` (integer seconds; an HTTP date is treated as 1 s).
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    Some(v.trim().parse::<u64>().map(Duration::from_secs).unwrap_or(Duration::from_secs(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(msg: &str, state: Option<&str>) -> Status {
        Status {
            state: "FAILED".into(),
            error: Some(ServiceError { error_code: Some(Value::String("BAD_REQUEST".into())), message: Some(msg.into()) }),
            sql_state: state.map(str::to_string),
        }
    }

    #[test]
    fn sql_failures_become_kinds() {
        let e = classify_failed(
            &failed(
                "[UNRESOLVED_COLUMN.WITH_SUGGESTION] A column, variable, or function parameter with name `nosuch` cannot be resolved. Did you mean one of the following? [`id`, `name`]. SQLSTATE: 42703; line 1 pos 7",
                Some("42703"),
            ),
            None,
            "w",
        );
        assert_eq!(e, Error::ColumnMissing { column: "nosuch".into(), suggestions: vec!["id".into(), "name".into()] });
        let e = classify_failed(
            &failed("[TABLE_OR_VIEW_NOT_FOUND] The table or view `main`.`x`.`y` cannot be found. Verify the spelling", Some("42P01")),
            None,
            "w",
        );
        assert_eq!(e.kind(), "table_not_found");
        let e = classify_failed(
            &failed(
                "[INSUFFICIENT_PERMISSIONS] Insufficient privileges:\nUser does not have SELECT on Table 'main.crm.people'. SQLSTATE: 42501",
                Some("42501"),
            ),
            Some("sp-1"),
            "w",
        );
        assert_eq!(e.hint(), "Run: GRANT SELECT ON TABLE main.crm.people TO `sp-1`;");
        let e = classify_failed(&failed("PERMISSION_DENIED: User does not have USE CATALOG on Catalog 'main'.", Some("42501")), None, "w");
        assert!(
            matches!(e, Error::MissingPrivilege { ref privilege, ref object_type, .. } if privilege == "USE CATALOG" && object_type == "CATALOG")
        );
        let e = classify_failed(
            &failed("\n[PARSE_SYNTAX_ERROR] Syntax error at or near 'SELEC'. SQLSTATE: 42601 (line 1, pos 0)", Some("42601")),
            None,
            "w",
        );
        assert!(matches!(e, Error::Sql { ref class, .. } if class == "PARSE_SYNTAX_ERROR"), "{e:?}");
        assert!(!e.is_retryable());
    }

    #[test]
    fn rest_errors_become_kinds() {
        let bad_token = RestError::parse(403, None, br#"{"error_code":403,"message":"Invalid access token. [ReqId: 9b07]"}"#);
        assert_eq!(bad_token.classify("w", None, 1), Error::TokenInvalid { detail: "Invalid access token.".into() });
        let wh = RestError::parse(
            403,
            None,
            br#"{"error_code":"PERMISSION_DENIED","message":"You do not have permission to use the SQL Warehouse.","details":[{"@type":"type.googleapis.com/google.rpc.ResourceInfo","resource_type":"warehouse","resource_name":"abc"}]}"#,
        );
        assert_eq!(wh.classify("abc", Some("p"), 1), Error::NoWarehouseAccess { warehouse: "abc".into(), principal: Some("p".into()) });
        let throttled = RestError::parse(429, Some(Duration::from_secs(2)), b"");
        assert!(matches!(throttled.classify("w", None, 8), Error::RateLimited { attempts: 8, .. }));
        assert!(throttled.classify("w", None, 8).is_retryable());
        let text = RestError::parse(400, None, b"INVALID_STATE: nope");
        assert_eq!(text.code, "INVALID_STATE");
        let nf = RestError::parse(400, None, br#"{"error_code":"INVALID_PARAMETER_VALUE","message":"nosuch is not a valid endpoint id."}"#);
        assert_eq!(nf.classify("nosuch", None, 1).kind(), "warehouse_not_found");
    }
}

//! The HTTP layer: every route a Databricks SQL client calls, answered with
//! Databricks' status codes, headers and bodies; external-link downloads on a
//! path of their own; the admin API under `/emulator/v1/`.

// Handlers return `ApiError` by value because axum turns it straight into a
// response; it is only built on the (cold) error path, so boxing it buys nothing.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use chrono::Utc;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::emulator::{ColumnChange, Emulator, EmulatorConfig};
use crate::engine::Param;
use crate::error::{ApiError, Error, resource_details};
use crate::faults::FaultRule;
use crate::results::{Format, ResultSet};
use crate::statements::{Disposition, Request as StmtRequest, State as StmtState, Statement};
use crate::types::catalog_column_json;
use crate::workspace::{Principal, PrincipalKind, Relation, Securable, Token, WarehouseState, Workspace};

/// The most a request body may carry (statements are capped at 16 MiB by
/// Databricks; admin row appends may be larger).
const BODY_LIMIT: usize = 64 << 20;
/// Page size when a client asks the server to pick (`max_results=0`).
const DEFAULT_PAGE: usize = 1000;
/// A fixed, fake metastore id.
const METASTORE_ID: &str = "6261caff-bd18-4bf5-be80-8eea8225bebd";
const ACCOUNT_ID: &str = "0d3f2c1b-aaaa-4bbb-8ccc-112233445566";

/// An emulator serving on a socket.
#[derive(Debug)]
pub struct RunningEmulator {
    emulator: Emulator,
    addr: SocketAddr,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<()>,
}

impl RunningEmulator {
    /// `http://127.0.0.1:PORT`: the workspace URL.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    pub fn emulator(&self) -> &Emulator {
        &self.emulator
    }
    pub fn admin_token(&self) -> &str {
        self.emulator.admin_token()
    }
    /// Stops accepting requests and waits for the server task to end.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.emulator.inner.shutdown.cancel();
        let _ = self.server.await;
    }
    /// Serves until `stop` fires (e.g. Ctrl-C), then shuts down.
    pub async fn serve_until(self, stop: impl std::future::Future<Output = ()>) {
        stop.await;
        self.shutdown().await;
    }
}

/// Starts serving `workspace` on `addr` (`127.0.0.1:0` picks a free port).
pub async fn start(workspace: Workspace, config: EmulatorConfig, addr: &str) -> Result<RunningEmulator, Error> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|reason| Error::Bind { addr: addr.to_string(), reason })?;
    let local = listener.local_addr().map_err(|reason| Error::Bind { addr: addr.to_string(), reason })?;
    let emulator = Emulator::new(config, workspace);
    let _ = emulator.inner.base_url.set(format!("http://{local}"));
    let shutdown = CancellationToken::new();
    let app = router(emulator.clone());
    let stop = shutdown.clone();
    let server = tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "emulator server stopped");
        }
    });
    tokio::spawn(emulator.clone().housekeeping());
    tracing::info!(addr = %local, "databricks emulator listening");
    Ok(RunningEmulator { emulator, addr: local, shutdown, server })
}

fn router(emu: Emulator) -> Router {
    let api = Router::new()
        // Statement Execution API 2.0
        .route("/api/2.0/sql/statements", post(submit_statement))
        .route("/api/2.0/sql/statements/", post(submit_statement))
        .route("/api/2.0/sql/statements/{id}", get(get_statement).delete(cancel_statement))
        .route("/api/2.0/sql/statements/{id}/cancel", post(cancel_statement))
        .route("/api/2.0/sql/statements/{id}/result/chunks/{index}", get(get_chunk))
        // Warehouses
        .route("/api/2.0/sql/warehouses", get(list_warehouses))
        .route("/api/2.0/sql/warehouses/{id}", get(get_warehouse))
        .route("/api/2.0/sql/warehouses/{id}/start", post(start_warehouse))
        .route("/api/2.0/sql/warehouses/{id}/stop", post(stop_warehouse))
        .route("/api/2.0/permissions/warehouses/{id}", get(warehouse_permissions))
        .route("/api/2.0/permissions/sql/warehouses/{id}", get(warehouse_permissions))
        // Unity Catalog
        .route("/api/2.1/unity-catalog/catalogs", get(list_catalogs))
        .route("/api/2.1/unity-catalog/catalogs/{name}", get(get_catalog))
        .route("/api/2.1/unity-catalog/schemas", get(list_schemas))
        .route("/api/2.1/unity-catalog/tables", get(list_tables))
        .route("/api/2.1/unity-catalog/tables/{full_name}", get(get_table))
        .route("/api/2.1/unity-catalog/tables/{full_name}/exists", get(table_exists))
        .route("/api/2.1/unity-catalog/effective-permissions/{kind}/{full_name}", get(effective_permissions))
        .route("/api/2.1/unity-catalog/permissions/{kind}/{full_name}", get(direct_permissions))
        // Identity and OAuth
        .route("/api/2.0/preview/scim/v2/Me", get(scim_me))
        .route("/.well-known/databricks-config", get(host_metadata))
        .route("/oidc/.well-known/oauth-authorization-server", get(oidc_discovery))
        .route("/oidc/v1/token", post(oauth_token))
        // External links
        .route("/emulator/files/{id}/{index}", get(download_chunk))
        // Admin API
        .route("/emulator/v1/counters", get(admin_counters))
        .route("/emulator/v1/statements", get(admin_statements))
        .route("/emulator/v1/tables/{full_name}/rows", post(admin_append_rows).delete(admin_delete_rows))
        .route("/emulator/v1/tables/{full_name}/columns", post(admin_alter_column))
        .route("/emulator/v1/grants", post(admin_grant).delete(admin_revoke))
        .route("/emulator/v1/tokens", post(admin_create_token))
        .route("/emulator/v1/tokens/{token}/expire", post(admin_expire_token))
        .route("/emulator/v1/tokens/{token}/rotate", post(admin_rotate_token))
        .route("/emulator/v1/oauth/expire", post(admin_expire_oauth))
        .route("/emulator/v1/warehouses/{id}", post(admin_set_warehouse))
        .route("/emulator/v1/faults", get(admin_faults).post(admin_add_fault).delete(admin_clear_faults))
        .fallback(fallback)
        .method_not_allowed_fallback(fallback);
    api.layer(DefaultBodyLimit::max(BODY_LIMIT)).layer(middleware::from_fn_with_state(emu.clone(), common)).with_state(emu)
}

// ---------------------------------------------------------------------------
// Middleware: request ids, Databricks' headers, counters, injected faults.

#[derive(Debug, Clone)]
struct ReqId(String);

async fn common(State(emu): State<Emulator>, mut req: Request, next: Next) -> Response {
    emu.inner.counters.requests.fetch_add(1, Ordering::Relaxed);
    let request_id = uuid::Uuid::new_v4().to_string();
    req.extensions_mut().insert(ReqId(request_id.clone()));
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let admin = path.starts_with("/emulator/v1");
    let effects = if admin { Default::default() } else { emu.faults().for_request(method.as_str(), &path) };
    if effects.latency_ms > 0 {
        emu.inner.counters.faults_injected.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(effects.latency_ms)).await;
    }
    let mut resp = match effects.status {
        Some((status, retry_after)) => {
            emu.inner.counters.faults_injected.fetch_add(1, Ordering::Relaxed);
            injected_status(status, retry_after)
        }
        None => next.run(req).await,
    };
    let h = resp.headers_mut();
    h.insert(header::SERVER, HeaderValue::from_static("databricks"));
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        h.insert("x-request-id", v);
    }
    if let Ok(v) = HeaderValue::from_str(&emu.ws().org_id) {
        h.insert("x-databricks-org-id", v);
    }
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    if let Some(after) = effects.reset_after {
        emu.inner.counters.faults_injected.fetch_add(1, Ordering::Relaxed);
        resp = reset_mid_body(resp, after).await;
    }
    resp
}

fn injected_status(status: u16, retry_after: Option<u64>) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = match status {
        429 => ApiError::new(code, "REQUEST_LIMIT_EXCEEDED", "Too many requests. Please wait a moment and try again.").into_response(),
        503 => ApiError::new(code, "TEMPORARILY_UNAVAILABLE", "The service is temporarily unavailable. Please try again later.")
            .into_response(),
        502 | 504 => {
            let reason = code.canonical_reason().unwrap_or("Gateway Error");
            let mut r = (code, format!("<html><body><h1>{status} {reason}</h1></body></html>")).into_response();
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
            r
        }
        500 => ApiError::new(code, "INTERNAL_ERROR", "An internal error occurred. Please try again.").into_response(),
        _ => ApiError::new(code, "UNKNOWN", format!("Injected HTTP {status}.")).into_response(),
    };
    if let Some(secs) = retry_after
        && let Ok(v) = HeaderValue::from_str(&secs.to_string())
    {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

/// Sends the first `after` bytes of the body, then drops the connection
/// (the declared Content-Length stays the full length, as a real reset does).
async fn reset_mid_body(resp: Response, after: usize) -> Response {
    let (mut parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
    let head = bytes.slice(..after.min(bytes.len()));
    parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    let stream = futures::stream::iter(vec![
        Ok::<Bytes, std::io::Error>(head),
        Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "injected connection reset")),
    ]);
    Response::from_parts(parts, Body::from_stream(stream))
}

async fn fallback(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::endpoint_not_found(method.as_str(), uri.path())
}

// ---------------------------------------------------------------------------
// Authentication.

/// The authenticated caller of a client API.
struct Caller {
    principal: Principal,
    request_id: String,
}

fn request_id(parts: &Parts) -> String {
    parts.extensions.get::<ReqId>().map(|r| r.0.clone()).unwrap_or_default()
}

fn bearer(headers: &HeaderMap) -> Result<Option<String>, ()> {
    let Some(v) = headers.get(header::AUTHORIZATION) else { return Ok(None) };
    let v = v.to_str().map_err(|_| ())?;
    match v.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => Ok(Some(token.trim().to_string())),
        _ => Err(()),
    }
}

impl FromRequestParts<Emulator> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, emu: &Emulator) -> Result<Self, Self::Rejection> {
        let request_id = request_id(parts);
        let token = match bearer(&parts.headers) {
            Ok(Some(t)) => t,
            // No credential, or a scheme this API does not take (Basic, ...).
            Ok(None) | Err(()) => return Err(ApiError::unauthenticated()),
        };
        match emu.authenticate(&token) {
            Some(principal) => Ok(Caller { principal, request_id }),
            None => Err(ApiError::invalid_token(&request_id)),
        }
    }
}

/// The admin API's caller: only the admin token opens it.
struct Admin;

impl FromRequestParts<Emulator> for Admin {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, emu: &Emulator) -> Result<Self, Self::Rejection> {
        match bearer(&parts.headers) {
            Ok(Some(t)) if t == emu.admin_token() => Ok(Admin),
            Ok(None) | Err(()) => Err(ApiError::unauthenticated()),
            Ok(Some(_)) => Err(ApiError::permission_denied(
                "The emulator's admin API takes only the admin token printed at start-up (admin_token); client tokens cannot reach it.",
            )),
        }
    }
}

fn ok(v: Value) -> Response {
    let mut r = (StatusCode::OK, v.to_string()).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn parse_json(body: &Bytes) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(ApiError::malformed_json()),
    }
}

fn wrong_type(field: &str, want: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "MALFORMED_REQUEST",
        format!("Invalid JSON given in the body of the request - expected {want} for field '{field}'"),
    )
}

fn opt_str<'a>(m: &'a Map<String, Value>, field: &str) -> Result<Option<&'a str>, ApiError> {
    match m.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(wrong_type(field, "a string")),
    }
}

fn opt_i64(m: &Map<String, Value>, field: &str) -> Result<Option<i64>, ApiError> {
    match m.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_i64().map(Some).ok_or_else(|| wrong_type(field, "an integer")),
        // Databricks' JSON layer accepts int64 fields as strings too.
        Some(Value::String(s)) => s.parse().map(Some).map_err(|_| wrong_type(field, "an integer")),
        Some(_) => Err(wrong_type(field, "an integer")),
    }
}

fn is_warehouse_id(id: &str) -> bool {
    id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

fn warehouse_denied(id: &str, request_id: &str) -> ApiError {
    ApiError::permission_denied("You do not have permission to use the SQL Warehouse. Please contact your administrator.")
        .with_details(resource_details("warehouse", id, "user is not authorized to use this warehouse", request_id))
}

// ---------------------------------------------------------------------------
// Statement Execution API.

async fn submit_statement(State(emu): State<Emulator>, caller: Caller, body: Bytes) -> Result<Response, ApiError> {
    let m = parse_json(&body)?;
    let warehouse_id =
        opt_str(&m, "warehouse_id")?.ok_or_else(|| ApiError::bad_request("Required field is not specified: warehouse_id."))?;
    let statement = opt_str(&m, "statement")?.ok_or_else(|| ApiError::bad_request("Required field is not specified: statement."))?;
    if statement.len() > 16 << 20 {
        return Err(ApiError::invalid_parameter("The statement field is longer than 16 MiB."));
    }
    let wait = match opt_str(&m, "wait_timeout")? {
        None => 10,
        Some(w) => {
            let secs: u64 = w
                .strip_suffix('s')
                .and_then(|n| n.trim().parse().ok())
                .ok_or_else(|| ApiError::invalid_parameter("Error while parsing type: duration."))?;
            if secs != 0 && !(5..=50).contains(&secs) {
                return Err(ApiError::invalid_parameter(
                    "The wait_timeout field must be 0 seconds (disables wait), or between 5 seconds and 50 seconds.",
                )
                .with_details(
                    json!([{"@type": "type.googleapis.com/google.rpc.RequestInfo", "request_id": caller.request_id, "serving_data": ""}]),
                ));
            }
            secs
        }
    };
    let cancel_on_timeout = opt_str(&m, "on_wait_timeout")? == Some("CANCEL");
    let disposition = match opt_str(&m, "disposition")? {
        Some("EXTERNAL_LINKS") => Disposition::ExternalLinks,
        _ => Disposition::Inline,
    };
    let format = match opt_str(&m, "format")? {
        Some("ARROW_STREAM") => Format::ArrowStream,
        Some("CSV") => Format::Csv,
        _ => Format::JsonArray,
    };
    if disposition == Disposition::ExternalLinks && emu.faults().refuse_external_links() {
        emu.inner.counters.faults_injected.fetch_add(1, Ordering::Relaxed);
        return Err(ApiError::invalid_parameter(
            "The EXTERNAL_LINKS disposition is not enabled for this workspace. Use disposition INLINE.",
        ));
    }
    if disposition == Disposition::Inline && format != Format::JsonArray {
        return Err(ApiError::invalid_parameter(
            "Incompatible parameters: The format field must be JSON_ARRAY when the disposition field is INLINE.",
        ));
    }
    let row_limit = opt_i64(&m, "row_limit")?;
    if row_limit.is_some_and(|r| !(0..=i32::MAX as i64).contains(&r)) {
        return Err(ApiError::invalid_parameter("The row_limit field must be between 0 and 2147483647."));
    }
    let byte_limit = opt_i64(&m, "byte_limit")?;
    let max_bytes: i64 = if disposition == Disposition::Inline { 25 << 20 } else { 100 << 30 };
    if byte_limit.is_some_and(|b| b < 1 || b > max_bytes) {
        return Err(ApiError::invalid_parameter(format!("The byte_limit field must be between 1 and {max_bytes}.")));
    }
    let lz4 = opt_str(&m, "result_compression")? == Some("LZ4_FRAME") && format == Format::ArrowStream;
    let params: Vec<Param> = match m.get("parameters") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => serde_json::from_value(v.clone()).map_err(|_| wrong_type("parameters", "an array of {name, value, type}"))?,
    };
    if m.contains_key("query_tags") && emu.faults().refuse_query_tags() {
        emu.inner.counters.faults_injected.fetch_add(1, Ordering::Relaxed);
        return Err(ApiError::invalid_parameter("Invalid parameter: query_tags is not a recognized field of this request."));
    }
    let query_tags: Vec<(String, Option<String>)> = match m.get("query_tags") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => {
            let mut tags: Vec<(String, Option<String>)> = Vec::new();
            for it in items {
                let key = it.get("key").and_then(Value::as_str).ok_or_else(|| wrong_type("query_tags", "an array of {key, value}"))?;
                let value = it.get("value").and_then(Value::as_str).map(str::to_string);
                if let Some(t) = tags.iter_mut().find(|(k, _)| k == key) {
                    t.1 = value;
                } else {
                    tags.push((key.to_string(), value));
                }
            }
            tags.truncate(20);
            tags
        }
        Some(_) => return Err(wrong_type("query_tags", "an array of {key, value}")),
    };
    if !is_warehouse_id(warehouse_id) {
        return Err(ApiError::invalid_parameter(format!("{warehouse_id} is not a valid endpoint id.")));
    }
    let can_use = emu.ws().warehouses.get(warehouse_id).is_some_and(|w| w.can_use(&caller.principal));
    if !can_use {
        return Err(warehouse_denied(warehouse_id, &caller.request_id));
    }
    let request = StmtRequest {
        statement: statement.to_string(),
        warehouse_id: warehouse_id.to_string(),
        principal: caller.principal.user_name.clone(),
        disposition,
        format,
        lz4,
        query_tags,
        row_limit: row_limit.map(|r| r as u64),
        byte_limit: byte_limit.map(|b| b as u64),
        catalog: opt_str(&m, "catalog")?.map(str::to_string),
        schema: opt_str(&m, "schema")?.map(str::to_string),
        params,
    };
    let stmt = emu.submit(request);
    if wait > 0 {
        stmt.wait(Duration::from_secs(wait)).await;
        if !stmt.state().is_terminal() && cancel_on_timeout {
            stmt.cancel.cancel();
            stmt.transition(StmtState::Canceled, None, None);
        }
    }
    Ok(ok(statement_json(&emu, &stmt)))
}

/// Parses a statement id from the path (Databricks insists on a UUID).
fn statement_id(id: &str) -> Result<String, ApiError> {
    uuid::Uuid::parse_str(id).map(|u| u.to_string()).map_err(|_| ApiError::invalid_parameter("Error while parsing type: statement_id."))
}

fn statement_not_found(id: &str, request_id: &str) -> ApiError {
    ApiError::not_found("NOT_FOUND", format!("The statement {id} was not found.")).with_details(resource_details(
        "statement",
        id,
        "does not exist",
        request_id,
    ))
}

/// The caller's own statement (others' statements do not exist for them).
fn own_statement(emu: &Emulator, caller: &Caller, id: &str) -> Result<std::sync::Arc<Statement>, ApiError> {
    let id = statement_id(id)?;
    match emu.statement(&id) {
        Some(s) if s.request.principal == caller.principal.user_name => Ok(s),
        _ => Err(statement_not_found(&id, &caller.request_id)),
    }
}

async fn get_statement(State(emu): State<Emulator>, caller: Caller, Path(id): Path<String>) -> Result<Response, ApiError> {
    let stmt = own_statement(&emu, &caller, &id)?;
    Ok(ok(statement_json(&emu, &stmt)))
}

/// `POST .../cancel` and `DELETE ...`: both end the caller's statement if it
/// is still running, and both answer `{}` for any well-formed id, as Databricks does.
async fn cancel_statement(State(emu): State<Emulator>, caller: Caller, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = statement_id(&id)?;
    if let Some(s) = emu.statement(&id).filter(|s| s.request.principal == caller.principal.user_name) {
        s.cancel.cancel();
        s.transition(StmtState::Canceled, None, None);
    }
    Ok(ok(json!({})))
}

async fn get_chunk(State(emu): State<Emulator>, caller: Caller, Path((id, index)): Path<(String, String)>) -> Result<Response, ApiError> {
    let stmt = own_statement(&emu, &caller, &id)?;
    emu.inner.counters.chunk_requests.fetch_add(1, Ordering::Relaxed);
    let index: usize = index.parse().map_err(|_| ApiError::invalid_parameter("Error while parsing type: chunk_index."))?;
    let (state, result) = {
        let g = stmt.lock();
        (g.state, g.result.clone())
    };
    let Some(rs) = result.filter(|_| state == StmtState::Succeeded) else {
        return Err(ApiError::not_found(
            "NOT_FOUND",
            format!("The result of statement {} cannot be fetched: its state is {}.", stmt.id, state.as_str()),
        )
        .with_details(resource_details(
            "statement",
            &stmt.id,
            "the statement state should be SUCCEEDED before you can start fetching the result",
            &caller.request_id,
        )));
    };
    if index >= rs.chunks.len() {
        return Err(ApiError::invalid_parameter(format!("The chunk_index {index} is out of bounds.")));
    }
    Ok(ok(result_data(&emu, &stmt, &rs, index)))
}

/// A statement as the API shows it: `statement_id`, `status`, and for a
/// success the `manifest` and the first chunk.
fn statement_json(emu: &Emulator, stmt: &Statement) -> Value {
    let status = stmt.status_json();
    let (state, result) = {
        let g = stmt.lock();
        (g.state, g.result.clone())
    };
    let mut out = Map::new();
    out.insert("statement_id".into(), json!(stmt.id));
    out.insert("status".into(), status);
    if state == StmtState::Succeeded
        && let Some(rs) = result
    {
        let inline = stmt.request.disposition == Disposition::Inline;
        out.insert("manifest".into(), rs.manifest(inline));
        let first = if rs.chunks.is_empty() { json!({}) } else { result_data(emu, stmt, &rs, 0) };
        out.insert("result".into(), first);
    }
    Value::Object(out)
}

/// One chunk's `ResultData`: rows inline, or a freshly signed external link.
fn result_data(emu: &Emulator, stmt: &Statement, rs: &ResultSet, index: usize) -> Value {
    let chunk = &rs.chunks[index];
    let mut d = Map::new();
    d.insert("chunk_index".into(), json!(index));
    d.insert("row_offset".into(), json!(chunk.row_offset));
    d.insert("row_count".into(), json!(chunk.row_count));
    let next =
        (index + 1 < rs.chunks.len()).then(|| (index + 1, format!("/api/2.0/sql/statements/{}/result/chunks/{}", stmt.id, index + 1)));
    if stmt.request.disposition == Disposition::Inline {
        let rows: Value = serde_json::from_slice(&chunk.body).unwrap_or(Value::Array(Vec::new()));
        d.insert("data_array".into(), rows);
        if let Some((i, link)) = next {
            d.insert("next_chunk_index".into(), json!(i));
            d.insert("next_chunk_internal_link".into(), json!(link));
        }
        return Value::Object(d);
    }
    d.insert("byte_count".into(), json!(chunk.body.len()));
    if let Some((i, link)) = next {
        d.insert("next_chunk_index".into(), json!(i));
        d.insert("next_chunk_internal_link".into(), json!(link));
    }
    let (url, expiration) = sign_link(emu, &stmt.id, index);
    d.insert("external_link".into(), json!(url));
    d.insert("expiration".into(), json!(expiration));
    json!({"external_links": [Value::Object(d)]})
}

fn link_signature(secret: &str, id: &str, index: usize, issued_ms: i64, ttl_ms: i64) -> String {
    let mut h = Sha256::new();
    h.update(format!("{secret}\n{id}\n{index}\n{issued_ms}\n{ttl_ms}").as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A pre-signed URL for one chunk, valid for the configured link lifetime
/// (or already expired when a fault says so).
fn sign_link(emu: &Emulator, id: &str, index: usize) -> (String, String) {
    let now = Utc::now().timestamp_millis();
    let (issued, ttl) = if emu.faults().expire_link() {
        emu.inner.counters.faults_injected.fetch_add(1, Ordering::Relaxed);
        (now - 1000, 0)
    } else {
        (now, emu.config().link_ttl.as_millis() as i64)
    };
    let sig = link_signature(&emu.inner.link_secret, id, index, issued, ttl);
    let url = format!(
        "{}/emulator/files/{id}/{index}?X-Databricks-Issued={issued}&X-Databricks-TTL={ttl}&X-Databricks-Signature={sig}",
        emu.base_url()
    );
    let expiration = chrono::DateTime::from_timestamp_millis(issued + ttl).unwrap_or_default().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
    (url, expiration)
}

fn storage_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>");
    let mut r = (status, body).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/xml"));
    r
}

/// `GET` of an external link: no Authorization header allowed, a valid
/// unexpired signature required; serves the chunk's bytes.
async fn download_chunk(
    State(emu): State<Emulator>,
    Path((id, index)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if headers.contains_key(header::AUTHORIZATION) {
        return storage_error(
            StatusCode::BAD_REQUEST,
            "InvalidArgument",
            "Only one auth mechanism allowed; only the X-Databricks-Signature query parameter or the Authorization header should be specified",
        );
    }
    let (Some(issued), Some(ttl), Some(sig), Ok(index)) = (
        q.get("X-Databricks-Issued").and_then(|v| v.parse::<i64>().ok()),
        q.get("X-Databricks-TTL").and_then(|v| v.parse::<i64>().ok()),
        q.get("X-Databricks-Signature"),
        index.parse::<usize>(),
    ) else {
        return storage_error(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            "Query-string authentication requires the Signature, Issued and TTL parameters",
        );
    };
    if link_signature(&emu.inner.link_secret, &id, index, issued, ttl) != *sig {
        return storage_error(
            StatusCode::FORBIDDEN,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided.",
        );
    }
    if Utc::now().timestamp_millis() >= issued + ttl {
        return storage_error(StatusCode::FORBIDDEN, "AccessDenied", "Request has expired");
    }
    let rs = emu.statement(&id).and_then(|s| {
        let g = s.lock();
        g.result.clone().filter(|_| g.state == StmtState::Succeeded)
    });
    let Some(chunk) = rs.as_ref().and_then(|rs| rs.chunks.get(index)) else {
        return storage_error(StatusCode::NOT_FOUND, "NoSuchKey", "The specified key does not exist.");
    };
    emu.inner.counters.link_downloads.fetch_add(1, Ordering::Relaxed);
    emu.inner.counters.link_bytes.fetch_add(chunk.body.len() as u64, Ordering::Relaxed);
    let content_type = match rs.as_ref().map(|r| r.format) {
        Some(Format::ArrowStream) => "application/vnd.apache.arrow.stream",
        Some(Format::Csv) => "text/csv",
        _ => "application/json",
    };
    let mut r = (StatusCode::OK, Body::from(chunk.body.clone())).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(chunk.body.len()));
    r
}

// ---------------------------------------------------------------------------
// Warehouses.

fn warehouse_json(emu: &Emulator, ws: &Workspace, id: &str) -> Value {
    let w = &ws.warehouses[id];
    let host = emu.base_url().trim_start_matches("http://").to_string();
    let (hostname, port) =
        host.rsplit_once(':').map(|(h, p)| (h.to_string(), p.parse::<u16>().unwrap_or(80))).unwrap_or((host.clone(), 80));
    let creator_id = ws.principal(&w.creator).map(|p| p.id.parse::<u64>().unwrap_or(0)).unwrap_or(0);
    let path = format!("/sql/1.0/warehouses/{id}");
    let size = match w.cluster_size.as_str() {
        "2X-Small" => "XXSMALL",
        "X-Small" => "XSMALL",
        "Small" => "SMALL",
        "Medium" => "MEDIUM",
        "Large" => "LARGE",
        _ => "XLARGE",
    };
    json!({
        "id": w.id,
        "name": w.name,
        "size": size,
        "cluster_size": w.cluster_size,
        "min_num_clusters": 1,
        "max_num_clusters": 1,
        "auto_stop_mins": w.auto_stop_mins,
        "auto_resume": w.auto_resume,
        "creator_name": w.creator,
        "creator_id": creator_id,
        "tags": {},
        "spot_instance_policy": "COST_OPTIMIZED",
        "enable_photon": true,
        "channel": {"name": "CHANNEL_NAME_CURRENT"},
        "enable_serverless_compute": w.serverless,
        "warehouse_type": "PRO",
        "num_clusters": if matches!(w.state, WarehouseState::Running) { 1 } else { 0 },
        "num_active_sessions": w.counters.active_statements,
        "state": w.state.as_str(),
        "jdbc_url": format!("jdbc:spark://{hostname}:{port}/default;transportMode=http;ssl=0;AuthMech=3;httpPath={path};"),
        "odbc_params": {"hostname": hostname, "path": path, "protocol": "http", "port": port},
        "health": {"status": "HEALTHY"},
    })
}

fn warehouse_for(emu: &Emulator, caller: &Caller, id: &str) -> Result<(), ApiError> {
    if !is_warehouse_id(id) {
        return Err(ApiError::invalid_parameter(format!("{id} is not a valid endpoint id.")));
    }
    let ws = emu.ws();
    match ws.warehouses.get(id) {
        None => Err(ApiError::not_found("RESOURCE_DOES_NOT_EXIST", format!("Warehouse {id} does not exist."))),
        Some(w) if !w.can_use(&caller.principal) => Err(warehouse_denied(id, &caller.request_id)),
        Some(_) => Ok(()),
    }
}

async fn list_warehouses(State(emu): State<Emulator>, caller: Caller) -> Response {
    let ws = emu.ws();
    let list: Vec<Value> =
        ws.warehouses.values().filter(|w| w.can_use(&caller.principal)).map(|w| warehouse_json(&emu, &ws, &w.id)).collect();
    ok(json!({"warehouses": list}))
}

async fn get_warehouse(State(emu): State<Emulator>, caller: Caller, Path(id): Path<String>) -> Result<Response, ApiError> {
    warehouse_for(&emu, &caller, &id)?;
    let ws = emu.ws();
    Ok(ok(warehouse_json(&emu, &ws, &id)))
}

async fn start_warehouse(State(emu): State<Emulator>, caller: Caller, Path(id): Path<String>) -> Result<Response, ApiError> {
    warehouse_for(&emu, &caller, &id)?;
    emu.start_warehouse(&id, false);
    Ok(ok(json!({})))
}

async fn stop_warehouse(State(emu): State<Emulator>, caller: Caller, Path(id): Path<String>) -> Result<Response, ApiError> {
    warehouse_for(&emu, &caller, &id)?;
    let can_manage = emu.ws().warehouses.get(&id).is_some_and(|w| w.can_manage(&caller.principal));
    if !can_manage {
        return Err(ApiError::permission_denied(format!(
            "You do not have permission to stop warehouse {id}. Stopping needs CAN MANAGE or ownership."
        )));
    }
    emu.stop_warehouse(&id);
    Ok(ok(json!({})))
}

async fn warehouse_permissions(State(emu): State<Emulator>, caller: Caller, Path(id): Path<String>) -> Result<Response, ApiError> {
    warehouse_for(&emu, &caller, &id)?;
    let ws = emu.ws();
    let w = &ws.warehouses[&id];
    if !w.can_manage(&caller.principal) {
        return Err(ApiError::permission_denied(format!(
            "{} does not have Manage permissions on /sql/warehouses/{id}. Please contact the owner or an administrator for access.",
            caller.principal.user_name
        )));
    }
    let acl: Vec<Value> = w
        .acl
        .iter()
        .map(|(who, level)| {
            let mut e = Map::new();
            match ws.principal(who) {
                Some(p) if p.kind == PrincipalKind::ServicePrincipal => {
                    e.insert("service_principal_name".into(), json!(p.user_name));
                    e.insert("display_name".into(), json!(p.display_name));
                }
                Some(p) => {
                    e.insert("user_name".into(), json!(p.user_name));
                    e.insert("display_name".into(), json!(p.display_name));
                }
                None => {
                    e.insert("group_name".into(), json!(who));
                }
            }
            e.insert("all_permissions".into(), json!([{"permission_level": level, "inherited": false}]));
            Value::Object(e)
        })
        .chain(std::iter::once(json!({
            "group_name": "admins",
            "all_permissions": [{"permission_level": "CAN_MANAGE", "inherited": true, "inherited_from_object": ["/sql/warehouses/"]}]
        })))
        .collect();
    Ok(ok(json!({"object_id": format!("/sql/warehouses/{id}"), "object_type": "warehouses", "access_control_list": acl})))
}

// ---------------------------------------------------------------------------
// Unity Catalog.

/// `max_results` / `page_token` as Unity Catalog takes them.
fn page<T>(items: Vec<T>, q: &HashMap<String, String>, min_positive: i64) -> Result<(Vec<T>, Option<String>), ApiError> {
    let max = match q.get("max_results") {
        None => None,
        Some(v) => {
            let n: i64 = v.parse().map_err(|_| ApiError::invalid_parameter(format!("Invalid max_results: {v}")))?;
            if n < 0 || (n > 0 && n < min_positive) {
                let range = if min_positive > 1 { format!("0 or at least {min_positive}") } else { "0 or greater".into() };
                return Err(ApiError::invalid_parameter(format!("max_results must be {range}; got {n}.")));
            }
            Some(if n == 0 { DEFAULT_PAGE } else { (n as usize).min(DEFAULT_PAGE) })
        }
    };
    let offset = match q.get("page_token").filter(|t| !t.is_empty()) {
        None => 0,
        Some(t) => base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(t)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.strip_prefix("offset:").and_then(|n| n.parse::<usize>().ok()))
            .ok_or_else(|| ApiError::invalid_parameter("Invalid page_token: it was not issued by this server."))?,
    };
    let Some(size) = max else { return Ok((items.into_iter().skip(offset).collect(), None)) };
    let total = items.len();
    let page: Vec<T> = items.into_iter().skip(offset).take(size).collect();
    // A full page always carries a token, so a listing whose size is a
    // multiple of the page size ends with an empty page, as Databricks' can.
    let next = (page.len() == size && offset + size <= total)
        .then(|| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("offset:{}", offset + size)));
    Ok((page, next))
}

fn listing(key: &str, items: Vec<Value>, next: Option<String>) -> Response {
    let mut m = Map::new();
    m.insert(key.into(), Value::Array(items));
    if let Some(t) = next {
        m.insert("next_page_token".into(), json!(t));
    }
    ok(Value::Object(m))
}

fn flag(q: &HashMap<String, String>, name: &str) -> bool {
    q.get(name).is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

fn catalog_json(name: &str, owner: &str, comment: &str, created_ms: i64, browse_only: bool) -> Value {
    let system = name == "system";
    json!({
        "name": name,
        "full_name": name,
        "catalog_type": if system { "SYSTEM_CATALOG" } else { "MANAGED_CATALOG" },
        "owner": owner,
        "comment": comment,
        "metastore_id": METASTORE_ID,
        "created_at": created_ms,
        "created_by": if system { "System user" } else { owner },
        "updated_at": created_ms,
        "updated_by": if system { "System user" } else { owner },
        "isolation_mode": "OPEN",
        "securable_type": "CATALOG",
        "securable_kind": if system { "CATALOG_SYSTEM" } else { "CATALOG_STANDARD" },
        "browse_only": browse_only,
    })
}

fn visible_catalog_list(ws: &Workspace, p: &Principal, include_browse: bool) -> Vec<Value> {
    let mut out: Vec<(String, Value)> = ws
        .visible_catalogs(p, include_browse)
        .into_iter()
        .map(|(name, c, browse)| (name.clone(), catalog_json(name, &c.owner, &c.comment, c.created_at.timestamp_millis(), browse)))
        .collect();
    if !ws.catalogs.contains_key("system") {
        out.push(("system".into(), catalog_json("system", "System user", "System catalog (auto-created)", 0, false)));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out.into_iter().map(|(_, v)| v).collect()
}

async fn list_catalogs(
    State(emu): State<Emulator>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let all = visible_catalog_list(&emu.ws(), &caller.principal, flag(&q, "include_browse"));
    let (items, next) = page(all, &q, 1)?;
    Ok(listing("catalogs", items, next))
}

async fn get_catalog(State(emu): State<Emulator>, caller: Caller, Path(name): Path<String>) -> Result<Response, ApiError> {
    let ws = emu.ws();
    if name != "system" && !ws.catalogs.contains_key(&name) {
        return Err(ApiError::not_found("CATALOG_DOES_NOT_EXIST", format!("Catalog '{name}' does not exist.")));
    }
    visible_catalog_list(&ws, &caller.principal, true)
        .into_iter()
        .find(|c| c["name"] == name)
        .map(ok)
        .ok_or_else(|| ApiError::permission_denied(format!("User does not have USE CATALOG on Catalog '{name}'.")))
}

/// The catalog and schema a listing names, checked as Unity Catalog checks them.
fn check_schema_access(ws: &Workspace, p: &Principal, c: &str, s: Option<&str>) -> Result<(), ApiError> {
    if !ws.catalogs.contains_key(c) {
        return Err(ApiError::not_found("CATALOG_DOES_NOT_EXIST", format!("Catalog '{c}' does not exist.")));
    }
    if let Some(d) = ws.use_denied(p, c, None) {
        return Err(ApiError::permission_denied(d.message()));
    }
    if let Some(s) = s
        && s != "information_schema"
        && !ws.catalogs[c].schemas.contains_key(s)
    {
        return Err(ApiError::not_found("SCHEMA_DOES_NOT_EXIST", format!("Schema '{c}.{s}' does not exist.")));
    }
    match ws.use_denied(p, c, s) {
        Some(d) => Err(ApiError::permission_denied(d.message())),
        None => Ok(()),
    }
}

fn required<'a>(q: &'a HashMap<String, String>, name: &str) -> Result<&'a str, ApiError> {
    q.get(name)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ApiError::invalid_parameter(format!("Missing required field: {name}")))
}

async fn list_schemas(State(emu): State<Emulator>, caller: Caller, Query(q): Query<HashMap<String, String>>) -> Result<Response, ApiError> {
    let c = required(&q, "catalog_name")?;
    let ws = emu.ws();
    if c == "system" {
        let info = json!({"name": "information_schema", "catalog_name": "system", "owner": "System user", "full_name": "system.information_schema",
            "comment": "Information schema (auto-created)", "securable_type": "SCHEMA", "securable_kind": "SCHEMA_SYSTEM",
            "metastore_id": METASTORE_ID, "catalog_type": "SYSTEM_CATALOG", "browse_only": false});
        let (items, next) = page(vec![info], &q, 1)?;
        return Ok(listing("schemas", items, next));
    }
    check_schema_access(&ws, &caller.principal, c, None)?;
    let cat = &ws.catalogs[c];
    let mut all: Vec<(String, Value)> = cat
        .schemas
        .iter()
        .filter(|(s, _)| ws.can_see_schema(&caller.principal, c, s))
        .map(|(s, e)| {
            (
                s.clone(),
                json!({
                    "name": s, "catalog_name": c, "owner": e.owner, "comment": e.comment,
                    "properties": {}, "metastore_id": METASTORE_ID, "full_name": format!("{c}.{s}"),
                    "created_at": e.created_at.timestamp_millis(), "created_by": e.owner,
                    "updated_at": e.created_at.timestamp_millis(), "updated_by": e.owner,
                    "catalog_type": "MANAGED_CATALOG", "schema_id": e.schema_id,
                    "securable_type": "SCHEMA", "securable_kind": "SCHEMA_STANDARD", "browse_only": false,
                }),
            )
        })
        .collect();
    all.push((
        "information_schema".into(),
        json!({"name": "information_schema", "catalog_name": c, "owner": "System user", "comment": "Information schema (auto-created)",
            "full_name": format!("{c}.information_schema"), "metastore_id": METASTORE_ID, "catalog_type": "MANAGED_CATALOG",
            "securable_type": "SCHEMA", "securable_kind": "SCHEMA_SYSTEM", "browse_only": false}),
    ));
    all.sort_by(|a, b| a.0.cmp(&b.0));
    let (items, next) = page(all.into_iter().map(|(_, v)| v).collect(), &q, 1)?;
    Ok(listing("schemas", items, next))
}

fn table_json(ws: &Workspace, c: &str, s: &str, t: &str, with_columns: bool) -> Value {
    let e = ws.table(c, s, t).expect("caller checked the table exists");
    let schema = e.schema();
    let mut m = Map::new();
    m.insert("name".into(), json!(t));
    m.insert("catalog_name".into(), json!(c));
    m.insert("schema_name".into(), json!(s));
    m.insert("table_type".into(), json!(if e.is_view() { "VIEW" } else { "MANAGED" }));
    if !e.is_view() {
        m.insert("data_source_format".into(), json!("DELTA"));
        m.insert("storage_location".into(), json!(format!("s3://emulator-metastore/tables/{}", e.table_id)));
    }
    if with_columns {
        let cols: Vec<Value> = schema.fields().iter().enumerate().map(|(i, f)| catalog_column_json(f, i)).collect();
        m.insert("columns".into(), Value::Array(cols));
    }
    m.insert("owner".into(), json!(e.owner));
    m.insert("comment".into(), json!(e.comment));
    m.insert("properties".into(), json!({}));
    if let Relation::View { sql, .. } = &e.relation {
        m.insert("view_definition".into(), json!(sql.trim()));
    }
    m.insert("full_name".into(), json!(format!("{c}.{s}.{t}")));
    m.insert("table_id".into(), json!(e.table_id));
    m.insert("metastore_id".into(), json!(METASTORE_ID));
    m.insert("created_at".into(), json!(e.created_at.timestamp_millis()));
    m.insert("created_by".into(), json!(e.owner));
    m.insert("updated_at".into(), json!(e.updated_at.timestamp_millis()));
    m.insert("updated_by".into(), json!(e.owner));
    m.insert("securable_type".into(), json!("TABLE"));
    m.insert("securable_kind".into(), json!(if e.is_view() { "TABLE_VIEW" } else { "TABLE_DELTA" }));
    m.insert("browse_only".into(), json!(false));
    Value::Object(m)
}

async fn list_tables(State(emu): State<Emulator>, caller: Caller, Query(q): Query<HashMap<String, String>>) -> Result<Response, ApiError> {
    let c = required(&q, "catalog_name")?;
    let s = required(&q, "schema_name")?;
    let ws = emu.ws();
    check_schema_access(&ws, &caller.principal, c, Some(s))?;
    let names: Vec<String> = ws.catalogs[c]
        .schemas
        .get(s)
        .map(|sch| sch.tables.keys().filter(|t| ws.can_see_table(&caller.principal, c, s, t)).cloned().collect())
        .unwrap_or_default();
    let with_columns = !flag(&q, "omit_columns");
    let all: Vec<Value> = names.iter().map(|t| table_json(&ws, c, s, t, with_columns)).collect();
    let (items, next) = page(all, &q, 1)?;
    Ok(listing("tables", items, next))
}

fn split_table(full: &str) -> Result<(String, String, String), ApiError> {
    let parts: Vec<&str> = full.split('.').collect();
    match parts.as_slice() {
        [c, s, t] if !c.is_empty() && !s.is_empty() && !t.is_empty() => Ok((c.to_string(), s.to_string(), t.to_string())),
        _ => Err(ApiError::invalid_parameter(format!("Invalid table full name '{full}': a table is named catalog.schema.table."))),
    }
}

async fn get_table(State(emu): State<Emulator>, caller: Caller, Path(full): Path<String>) -> Result<Response, ApiError> {
    let (c, s, t) = split_table(&full)?;
    let ws = emu.ws();
    check_schema_access(&ws, &caller.principal, &c, Some(&s))?;
    if ws.table(&c, &s, &t).is_none() {
        return Err(ApiError::not_found("TABLE_DOES_NOT_EXIST", format!("Table '{c}.{s}.{t}' does not exist.")));
    }
    if !ws.can_see_table(&caller.principal, &c, &s, &t) {
        return Err(ApiError::permission_denied(format!("User does not have SELECT on Table '{c}.{s}.{t}'.")));
    }
    Ok(ok(table_json(&ws, &c, &s, &t, true)))
}

async fn table_exists(State(emu): State<Emulator>, caller: Caller, Path(full): Path<String>) -> Result<Response, ApiError> {
    let (c, s, t) = split_table(&full)?;
    let ws = emu.ws();
    check_schema_access(&ws, &caller.principal, &c, Some(&s))?;
    Ok(ok(json!({"table_exists": ws.table(&c, &s, &t).is_some()})))
}

fn securable(ws: &Workspace, kind: &str, full: &str) -> Result<Securable, ApiError> {
    let sec = Securable::parse(kind, full).ok_or_else(|| {
        ApiError::invalid_parameter(format!(
            "Invalid securable_type '{kind}' for '{full}': use catalog, schema or table with a matching full name."
        ))
    })?;
    let (exists, code, what) = match &sec {
        Securable::Catalog(c) => (ws.catalogs.contains_key(c), "CATALOG_DOES_NOT_EXIST", "Catalog"),
        Securable::Schema(c, s) => (ws.catalogs.get(c).is_some_and(|x| x.schemas.contains_key(s)), "SCHEMA_DOES_NOT_EXIST", "Schema"),
        Securable::Table(c, s, t) => (ws.table(c, s, t).is_some(), "TABLE_DOES_NOT_EXIST", "Table"),
    };
    if !exists {
        return Err(ApiError::not_found(code, format!("{what} '{full}' does not exist.")));
    }
    Ok(sec)
}

async fn effective_permissions(
    State(emu): State<Emulator>,
    caller: Caller,
    Path((kind, full)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let ws = emu.ws();
    let sec = securable(&ws, &kind, &full)?;
    let me = &caller.principal;
    let privileged = me.admin || ws.has(me, "MANAGE", &sec);
    let who: Vec<String> = match q.get("principal").filter(|p| !p.is_empty()) {
        Some(p) if p != &me.user_name && !privileged => {
            return Err(ApiError::permission_denied(format!(
                "User does not have MANAGE on {} '{full}' and cannot read the permissions of '{p}'.",
                sec.noun()
            )));
        }
        Some(p) => vec![p.clone()],
        None if privileged => ws.principals.iter().map(|p| p.user_name.clone()).collect(),
        None => vec![me.user_name.clone()],
    };
    let mut assignments = Vec::new();
    for name in who {
        let Some(p) = ws.principal(&name) else { continue };
        let privs: Vec<Value> = ws
            .effective_privileges(p, &sec)
            .into_iter()
            .map(|(privilege, from)| match from {
                None => json!({"privilege": privilege}),
                Some(f) => json!({"privilege": privilege, "inherited_from_type": f.kind(), "inherited_from_name": f.full_name()}),
            })
            .collect();
        if !privs.is_empty() {
            assignments.push(json!({"principal": p.user_name, "privileges": privs}));
        }
    }
    let (items, next) = page(assignments, &q, 150)?;
    Ok(listing("privilege_assignments", items, next))
}

async fn direct_permissions(
    State(emu): State<Emulator>,
    _caller: Caller,
    Path((kind, full)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let ws = emu.ws();
    let sec = securable(&ws, &kind, &full)?;
    let mut by: Vec<(String, Vec<String>)> = Vec::new();
    for g in ws.grants.iter().filter(|g| g.securable == sec) {
        match by.iter_mut().find(|(p, _)| p == &g.principal) {
            Some((_, v)) => v.push(g.privilege.clone()),
            None => by.push((g.principal.clone(), vec![g.privilege.clone()])),
        }
    }
    let items: Vec<Value> = by
        .into_iter()
        .map(|(p, privs)| match ws.principal(&p) {
            Some(pr) => json!({"principal": p, "principal_id": pr.id.parse::<u64>().unwrap_or(0), "privileges": privs}),
            None => json!({"principal": p, "privileges": privs}),
        })
        .collect();
    Ok(listing("privilege_assignments", items, None))
}

// ---------------------------------------------------------------------------
// Identity and OAuth.

async fn scim_me(caller: Caller) -> Response {
    let p = &caller.principal;
    let mut m = Map::new();
    m.insert(
        "schemas".into(),
        json!(["urn:ietf:params:scim:schemas:core:2.0:User", "urn:ietf:params:scim:schemas:extension:workspace:2.0:User"]),
    );
    m.insert("id".into(), json!(p.id));
    m.insert("userName".into(), json!(p.user_name));
    m.insert("displayName".into(), json!(p.display_name));
    m.insert("active".into(), json!(true));
    if p.kind == PrincipalKind::User {
        m.insert("emails".into(), json!([{"value": p.user_name, "type": "work", "primary": true}]));
    }
    let mut groups = vec![json!({"display": "users", "type": "direct", "value": "100", "$ref": "Groups/100"})];
    if p.admin {
        groups.push(json!({"display": "admins", "type": "direct", "value": "101", "$ref": "Groups/101"}));
    }
    m.insert("groups".into(), Value::Array(groups));
    m.insert("entitlements".into(), json!([{"value": "databricks-sql-access"}, {"value": "workspace-access"}]));
    ok(Value::Object(m))
}

async fn host_metadata(State(emu): State<Emulator>) -> Response {
    let base = emu.base_url();
    ok(json!({"oidc_endpoint": format!("{base}/oidc"), "workspace_id": emu.ws().org_id, "account_id": ACCOUNT_ID, "cloud": "AWS"}))
}

async fn oidc_discovery(State(emu): State<Emulator>) -> Response {
    let base = emu.base_url();
    ok(json!({
        "authorization_endpoint": format!("{base}/oidc/v1/authorize"),
        "token_endpoint": format!("{base}/oidc/v1/token"),
        "issuer": format!("{base}/oidc"),
        "jwks_uri": format!("{base}/oidc/jwks.json"),
        "scopes_supported": ["all-apis", "email", "offline_access", "openid", "profile", "sql"],
        "response_types_supported": ["code", "id_token"],
        "response_modes_supported": ["query", "fragment", "form_post"],
        "grant_types_supported": ["client_credentials", "authorization_code", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "request_uri_parameter_supported": false,
    }))
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    let mut r = (status, json!({"error": error, "error_description": description}).to_string()).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// `POST /oidc/v1/token`: client credentials in HTTP Basic or the form.
async fn oauth_token(State(emu): State<Emulator>, headers: HeaderMap, body: Bytes) -> Response {
    let form: HashMap<String, String> = form_pairs(&body);
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "This emulator issues tokens only for grant_type=client_credentials (OAuth machine-to-machine).",
        );
    }
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic ").or_else(|| v.strip_prefix("basic ")))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b.trim()).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.split_once(':').map(|(a, b)| (a.to_string(), b.to_string())));
    let creds = basic.or_else(|| Some((form.get("client_id")?.clone(), form.get("client_secret")?.clone())));
    let Some((client_id, secret)) = creds else {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "Client authentication failed");
    };
    let principal = {
        let ws = emu.ws();
        ws.principal(&client_id)
            .filter(|p| p.kind == PrincipalKind::ServicePrincipal && p.oauth_secret.as_deref() == Some(secret.as_str()))
            .cloned()
    };
    let Some(p) = principal else {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "Client authentication failed");
    };
    let ttl = emu.config().oauth_token_ttl;
    let claims = json!({"sub": p.user_name, "exp": (Utc::now() + chrono::Duration::from_std(ttl).unwrap_or_default()).timestamp(), "jti": uuid::Uuid::new_v4().to_string()});
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let token = format!(
        "{}.{}.{}",
        b64.encode(r#"{"alg":"RS256","typ":"JWT","kid":"emulator"}"#),
        b64.encode(claims.to_string()),
        uuid::Uuid::new_v4().simple()
    );
    let expires_at = Utc::now() + chrono::Duration::from_std(ttl).unwrap_or_default();
    emu.ws_mut().tokens.insert(token.clone(), Token { principal: p.user_name.clone(), expires_at: Some(expires_at), oauth: true });
    emu.inner.counters.oauth_tokens.fetch_add(1, Ordering::Relaxed);
    let scope = form.get("scope").cloned().unwrap_or_else(|| "all-apis".into());
    ok(json!({"access_token": token, "token_type": "Bearer", "expires_in": ttl.as_secs(), "scope": scope}))
}

/// Decodes an `application/x-www-form-urlencoded` body.
fn form_pairs(body: &[u8]) -> HashMap<String, String> {
    fn decode(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            let hex = (b[i] == b'%' && i + 2 < b.len())
                .then(|| std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()))
                .flatten();
            match (b[i], hex) {
                (b'+', _) => out.push(b' '),
                (_, Some(byte)) => {
                    out.push(byte);
                    i += 2;
                }
                (c, None) => out.push(c),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Admin API.

fn admin_error(message: impl Into<String>) -> ApiError {
    ApiError::invalid_parameter(message)
}

async fn admin_counters(State(emu): State<Emulator>, _a: Admin) -> Response {
    ok(emu.counters_json())
}

async fn admin_statements(State(emu): State<Emulator>, _a: Admin) -> Response {
    ok(json!({"statements": emu.history_json()}))
}

async fn admin_append_rows(State(emu): State<Emulator>, _a: Admin, Path(full): Path<String>, body: Bytes) -> Result<Response, ApiError> {
    let m = parse_json(&body)?;
    let Some(Value::Array(rows)) = m.get("rows") else {
        return Err(admin_error("Send {\"rows\": [{\"column\": value, ...}, ...]}."));
    };
    let n = emu.append_rows(&full, rows).await.map_err(admin_error)?;
    Ok(ok(json!({"appended": n})))
}

async fn admin_delete_rows(State(emu): State<Emulator>, _a: Admin, Path(full): Path<String>, body: Bytes) -> Result<Response, ApiError> {
    let m = parse_json(&body)?;
    let (Some(Value::String(column)), Some(Value::String(value))) = (m.get("column"), m.get("equals")) else {
        return Err(admin_error("Send {\"column\": \"name\", \"equals\": \"value\"}."));
    };
    let n = emu.delete_rows(&full, column, value).await.map_err(admin_error)?;
    Ok(ok(json!({"deleted": n})))
}

async fn admin_alter_column(State(emu): State<Emulator>, _a: Admin, Path(full): Path<String>, body: Bytes) -> Result<Response, ApiError> {
    let change: ColumnChange = serde_json::from_slice(&body).map_err(|e| {
        admin_error(format!(
            "{e}. Send {{\"action\": \"add\", \"name\": .., \"type\": ..}}, {{\"action\": \"rename\", \"from\": .., \"to\": ..}} or {{\"action\": \"drop\", \"name\": ..}}."
        ))
    })?;
    emu.alter_column(&full, &change).await.map_err(admin_error)?;
    Ok(ok(json!({})))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantBody {
    principal: String,
    securable_type: String,
    full_name: String,
    privileges: Vec<String>,
}

fn grant_body(emu: &Emulator, body: &Bytes) -> Result<(GrantBody, Securable), ApiError> {
    let g: GrantBody = serde_json::from_slice(body)
        .map_err(|e| admin_error(format!("{e}. Send {{\"principal\", \"securable_type\", \"full_name\", \"privileges\": [..]}}.")))?;
    let ws = emu.ws();
    let sec = securable(&ws, &g.securable_type, &g.full_name)?;
    if g.principal != "account users" && ws.principal(&g.principal).is_none() {
        return Err(admin_error(format!("principal '{}' does not exist", g.principal)));
    }
    Ok((g, sec))
}

fn normalize_privilege(p: &str) -> Result<String, ApiError> {
    let p = p.to_ascii_uppercase().replace(' ', "_");
    if crate::fixture::PRIVILEGES.contains(&p.as_str()) {
        Ok(p)
    } else {
        Err(admin_error(format!("unknown privilege '{p}'; use one of {}", crate::fixture::PRIVILEGES.join(", "))))
    }
}

async fn admin_grant(State(emu): State<Emulator>, _a: Admin, body: Bytes) -> Result<Response, ApiError> {
    let (g, sec) = grant_body(&emu, &body)?;
    let privs = g.privileges.iter().map(|p| normalize_privilege(p)).collect::<Result<Vec<_>, _>>()?;
    let mut ws = emu.ws_mut();
    for p in privs {
        let grant = crate::workspace::Grant { principal: g.principal.clone(), privilege: p, securable: sec.clone() };
        if !ws.grants.contains(&grant) {
            ws.grants.push(grant);
        }
    }
    Ok(ok(json!({})))
}

async fn admin_revoke(State(emu): State<Emulator>, _a: Admin, body: Bytes) -> Result<Response, ApiError> {
    let (g, sec) = grant_body(&emu, &body)?;
    let privs = g.privileges.iter().map(|p| normalize_privilege(p)).collect::<Result<Vec<_>, _>>()?;
    let mut ws = emu.ws_mut();
    let before = ws.grants.len();
    ws.grants.retain(|x| !(x.principal == g.principal && x.securable == sec && privs.contains(&x.privilege)));
    let revoked = before - ws.grants.len();
    Ok(ok(json!({"revoked": revoked})))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    principal: String,
    #[serde(default)]
    expires_in_secs: Option<i64>,
}

async fn admin_create_token(State(emu): State<Emulator>, _a: Admin, body: Bytes) -> Result<Response, ApiError> {
    let t: NewToken =
        serde_json::from_slice(&body).map_err(|e| admin_error(format!("{e}. Send {{\"principal\", \"expires_in_secs\"?}}.")))?;
    let mut ws = emu.ws_mut();
    if ws.principal(&t.principal).is_none() {
        return Err(admin_error(format!("principal '{}' does not exist", t.principal)));
    }
    let value = format!("dapi{}", uuid::Uuid::new_v4().simple());
    let expires_at = t.expires_in_secs.map(|s| Utc::now() + chrono::Duration::seconds(s));
    ws.tokens.insert(value.clone(), Token { principal: t.principal, expires_at, oauth: false });
    Ok(ok(json!({"token": value, "expires_at": expires_at.map(|e| e.to_rfc3339())})))
}

async fn admin_expire_token(State(emu): State<Emulator>, _a: Admin, Path(token): Path<String>) -> Result<Response, ApiError> {
    let mut ws = emu.ws_mut();
    let t = ws.tokens.get_mut(&token).ok_or_else(|| ApiError::not_found("RESOURCE_DOES_NOT_EXIST", "No such token."))?;
    t.expires_at = Some(Utc::now() - chrono::Duration::seconds(1));
    Ok(ok(json!({})))
}

/// Expires every OAuth access token issued so far (a revocation, or a clock
/// skew between client and server): clients must fetch a new one.
async fn admin_expire_oauth(State(emu): State<Emulator>, _a: Admin) -> Response {
    let mut ws = emu.ws_mut();
    let mut n = 0;
    for t in ws.tokens.values_mut().filter(|t| t.oauth) {
        t.expires_at = Some(Utc::now() - chrono::Duration::seconds(1));
        n += 1;
    }
    ok(json!({"expired": n}))
}

async fn admin_rotate_token(State(emu): State<Emulator>, _a: Admin, Path(token): Path<String>) -> Result<Response, ApiError> {
    let mut ws = emu.ws_mut();
    let old = ws.tokens.remove(&token).ok_or_else(|| ApiError::not_found("RESOURCE_DOES_NOT_EXIST", "No such token."))?;
    let value = format!("dapi{}", uuid::Uuid::new_v4().simple());
    ws.tokens.insert(value.clone(), old);
    Ok(ok(json!({"token": value})))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct WarehouseChange {
    #[serde(default)]
    state: Option<WarehouseState>,
    #[serde(default)]
    auto_resume: Option<bool>,
    #[serde(default)]
    start_delay_ms: Option<u64>,
    #[serde(default)]
    stop_delay_ms: Option<u64>,
    #[serde(default)]
    auto_stop_secs: Option<u64>,
    /// `principal userName -> level`, or `null` to remove.
    #[serde(default)]
    permissions: Option<HashMap<String, Option<String>>>,
}

async fn admin_set_warehouse(State(emu): State<Emulator>, _a: Admin, Path(id): Path<String>, body: Bytes) -> Result<Response, ApiError> {
    let c: WarehouseChange = serde_json::from_slice(&body).map_err(|e| {
        admin_error(format!("{e}. Send any of state, auto_resume, start_delay_ms, stop_delay_ms, auto_stop_secs, permissions."))
    })?;
    // Validate everything before changing anything: a bad request changes nothing.
    for (who, level) in c.permissions.iter().flatten() {
        if let Some(l) = level
            && !crate::fixture::WAREHOUSE_LEVELS.contains(&l.as_str())
        {
            return Err(admin_error(format!(
                "permission `{l}` for `{who}` must be one of {}",
                crate::fixture::WAREHOUSE_LEVELS.join(", ")
            )));
        }
    }
    let stopping = {
        let mut ws = emu.ws_mut();
        let w = ws
            .warehouses
            .get_mut(&id)
            .ok_or_else(|| ApiError::not_found("RESOURCE_DOES_NOT_EXIST", format!("Warehouse {id} does not exist.")))?;
        if let Some(v) = c.auto_resume {
            w.auto_resume = v;
        }
        if let Some(v) = c.start_delay_ms {
            w.start_delay_ms = v;
        }
        if let Some(v) = c.stop_delay_ms {
            w.stop_delay_ms = v;
        }
        if let Some(v) = c.auto_stop_secs {
            w.auto_stop_secs = v;
        }
        if let Some(perms) = c.permissions {
            for (who, level) in perms {
                match level {
                    Some(l) => {
                        w.acl.insert(who, l);
                    }
                    None => {
                        w.acl.remove(&who);
                    }
                }
            }
        }
        if let Some(s) = c.state {
            w.set_state(s, Utc::now());
        }
        matches!(c.state, Some(WarehouseState::Stopped | WarehouseState::Stopping | WarehouseState::Deleted))
    };
    if stopping {
        emu.cancel_running_on(&id);
    }
    let ws = emu.ws();
    Ok(ok(warehouse_json(&emu, &ws, &id)))
}

async fn admin_faults(State(emu): State<Emulator>, _a: Admin) -> Response {
    ok(json!({"faults": emu.faults().rules}))
}

async fn admin_add_fault(State(emu): State<Emulator>, _a: Admin, body: Bytes) -> Result<Response, ApiError> {
    let value: Value = serde_json::from_slice(&body).map_err(|_| ApiError::malformed_json())?;
    let rule = FaultRule::from_json(value).map_err(|e| {
        admin_error(format!(
            "{e}. Send {{\"kind\": \"status\"|\"latency\"|\"reset_body\"|\"expire_links\"|\"fail_statement\", ...,  \"path_prefix\"?, \"method\"?, \"times\"?}}."
        ))
    })?;
    emu.faults().rules.push(rule);
    Ok(ok(json!({})))
}

async fn admin_clear_faults(State(emu): State<Emulator>, _a: Admin) -> Response {
    emu.faults().rules.clear();
    ok(json!({}))
}

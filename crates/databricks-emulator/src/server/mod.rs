//! The HTTP layer: every route a Databricks SQL client calls, answered with
//! Databricks' status codes, headers and bodies. This module holds the
//! router, the middleware (request ids, headers, injected faults) and
//! authentication; each API has a module of its own: [`statement_api`]
//! (with the external-link downloads), [`warehouses`], [`unity_catalog`],
//! [`identity`] (SCIM, OAuth) and [`admin`] (`/emulator/v1/`).

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

mod admin;
mod identity;
mod statement_api;
mod unity_catalog;
mod warehouses;

use admin::*;
use identity::*;
use statement_api::*;
use unity_catalog::*;
use warehouses::*;

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
        .route("/api/2.0/token/list", get(list_tokens))
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

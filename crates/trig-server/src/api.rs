//! The HTTP API: JSON over bearer tokens, every request authorised.
//!
//! Bodies are read whole up to [`BODY_LIMIT`] (413 above it) and parsed
//! strictly: an unknown key is refused naming it. Errors are
//! `{"error": {"kind", "message", "field"?, "hint"?}}` ([`Error`]).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use trig_model::TenantName;
use trig_store::{Store, TenantInfo};

use crate::auth::Principal;
use crate::secrets::Keyring;
use crate::{Error, connections, pipelines};

/// The largest body the API reads.
pub const BODY_LIMIT: usize = 1024 * 1024;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub keys: Keyring,
    /// The config file `serve` started with: its connections are read-only here.
    pub config: Option<Arc<trig_config::Config>>,
    /// Wakes the scheduler (a run was asked for).
    pub wake: Arc<tokio::sync::Notify>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Hosts an alert webhook may be on although the SSRF rules refuse them.
    pub webhook_allow: databricks::AllowHosts,
    /// The scheduler's clock.
    pub clock: Arc<dyn crate::Clock>,
    /// The warehouses' settings the cost panel shows, read at most once a minute each.
    pub warehouses: Arc<crate::cost::WarehouseCache>,
}

/// The API's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/openapi.json", get(|| async { json_response(StatusCode::OK, &crate::openapi::document()) }))
        .route("/api/v1/tenants", get(list_tenants).post(create_tenant))
        .route("/api/v1/tenants/{t}", get(get_tenant).patch(patch_tenant))
        .route("/api/v1/tenants/{t}/connections", get(connections::list))
        .route(
            "/api/v1/tenants/{t}/connections/{c}",
            get(connections::get).put(connections::put).patch(connections::patch).delete(connections::delete),
        )
        .route("/api/v1/tenants/{t}/connections/{c}/test", post(connections::test))
        .route("/api/v1/tenants/{t}/warehouses", get(crate::cost::warehouses))
        .route("/api/v1/tenants/{t}/pipelines", get(pipelines::list))
        .route(
            "/api/v1/tenants/{t}/pipelines/{p}",
            get(pipelines::get).put(pipelines::put).patch(pipelines::patch).delete(pipelines::delete),
        )
        .route("/api/v1/tenants/{t}/pipelines/{p}/preview", post(pipelines::preview))
        .route("/api/v1/tenants/{t}/pipelines/{p}/sync", post(pipelines::sync))
        .route("/api/v1/tenants/{t}/pipelines/{p}/resume", post(pipelines::resume))
        .route("/api/v1/tenants/{t}/pipelines/{p}/runs", get(pipelines::runs))
        .route("/api/v1/tenants/{t}/pipelines/{p}/runs/{run_id}", get(pipelines::run))
        .route("/api/v1/tenants/{t}/pipelines/{p}/timeline", get(pipelines::timeline))
        .route("/api/v1/tenants/{t}/pipelines/{p}/quarantine", get(pipelines::quarantine))
        .merge(crate::pages::router())
        .fallback(not_found)
        .layer(axum::middleware::from_fn(crate::pages::security_headers))
        .with_state(state)
}

/// A JSON answer.
pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// A request's body as `T`, read whole up to [`BODY_LIMIT`] and parsed strictly.
/// (Called after the request is authorised, so a stranger's body is never parsed.)
pub(crate) async fn read_json<T: DeserializeOwned>(req: Request) -> Result<T, Error> {
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json")));
    if !is_json {
        return Err(Error::Invalid { field: "Content-Type".into(), message: "send the body as application/json".into() });
    }
    let bytes = axum::body::to_bytes(req.into_body(), BODY_LIMIT).await.map_err(|_| Error::TooLarge { limit: BODY_LIMIT })?;
    parse_body(&bytes)
}

/// Parses a body; a problem names the key at fault.
pub(crate) fn parse_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|e| {
        let said = e.to_string();
        // serde names the key in backticks: "unknown field `x`, expected …", "missing field `x`".
        let field = said.split('`').nth(1).filter(|_| said.contains("field")).unwrap_or("body").to_string();
        let message = match said.split(" at line ").next() {
            Some(m) if m.starts_with("unknown field") => format!("is not a key here ({m})"),
            Some(m) => m.to_string(),
            None => said.clone(),
        };
        Error::Invalid { field, message }
    })
}

/// Every handler that takes a [`Principal`] is authorised first: the token is
/// read from `Authorization` before the body or anything else.
impl axum::extract::FromRequestParts<AppState> for Principal {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &AppState) -> Result<Principal, Error> {
        let header = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        Principal::from_header(state.store.as_ref(), header).await
    }
}

async fn healthz() -> Response {
    json_response(StatusCode::OK, &json!({ "status": "ok" }))
}

/// Ready when the store answers.
async fn readyz(State(state): State<AppState>) -> Response {
    match state.store.tenants().await {
        Ok(_) => json_response(StatusCode::OK, &json!({ "status": "ready" })),
        Err(e) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({ "status": "not ready", "error": { "kind": "store", "message": e.to_string() } }),
        ),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}

/// An unknown path: JSON under `/api/`, a page with a way home elsewhere.
async fn not_found(uri: axum::http::Uri) -> Response {
    if uri.path().starts_with("/api/") {
        Error::NotFound { what: "this path".into() }.into_response()
    } else {
        crate::pages::not_found_page()
    }
}

fn tenant_json(t: &TenantInfo, state: &AppState) -> Value {
    // The webhook's URL may hold a secret: only its host is shown.
    let webhook = t.webhook.as_ref().map(|s| {
        let shown = state
            .keys
            .open(s, &crate::alerts::context(&t.name))
            .ok()
            .and_then(|u| databricks::WebhookUrl::parse(&u, &state.webhook_allow).ok())
            .map(|u| u.shown());
        json!({ "set": true, "shown": shown })
    });
    json!({
        "id": t.name, "name": t.display_name, "created_at": trig_store::time::rfc3339(t.created_at),
        "webhook": webhook.unwrap_or(json!({ "set": false })),
    })
}

async fn get_tenant(State(state): State<AppState>, Path(t): Path<String>, who: Principal) -> Result<Response, Error> {
    let t = connections::tenant_of(&state, &who, &t).await?;
    Ok(json_response(StatusCode::OK, &tenant_json(&t, &state)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantChange {
    name: Option<String>,
    /// A URL, or `null` to remove the webhook.
    #[serde(default, deserialize_with = "some_or_null")]
    webhook_url: Option<Option<String>>,
}

/// `"key": null` is `Some(None)`; an absent key is `None`.
fn some_or_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Ok(Some(Option::deserialize(d)?))
}

async fn patch_tenant(State(state): State<AppState>, Path(t): Path<String>, who: Principal, req: Request) -> Result<Response, Error> {
    let t = connections::tenant_of(&state, &who, &t).await?;
    let b: TenantChange = read_json(req).await?;
    let name = match b.name.as_deref().map(str::trim) {
        Some("") => return Err(Error::Invalid { field: "name".into(), message: "is empty".into() }),
        Some(n) if n.chars().count() > 200 => {
            return Err(Error::Invalid { field: "name".into(), message: "is over 200 characters".into() });
        }
        other => other,
    };
    let webhook = match &b.webhook_url {
        None => None,
        Some(None) => Some(None),
        Some(Some(u)) => {
            let url = crate::alerts::parse(u, &state.webhook_allow)?;
            Some(Some(state.keys.seal(url.expose(), &crate::alerts::context(&t.name))?))
        }
    };
    state.store.update_tenant(t.id, name, webhook.as_ref().map(|w| w.as_deref())).await.map_err(Error::from_store)?;
    let t = state
        .store
        .tenant_info(&t.name)
        .await
        .map_err(Error::from_store)?
        .ok_or_else(|| Error::NotFound { what: format!("tenant `{}`", t.name) })?;
    Ok(json_response(StatusCode::OK, &tenant_json(&t, &state)))
}

async fn list_tenants(State(state): State<AppState>, who: Principal) -> Result<Response, Error> {
    who.representative("list tenants")?;
    let all = state.store.tenants().await.map_err(Error::from_store)?;
    Ok(json_response(StatusCode::OK, &json!({ "tenants": all.iter().map(|t| tenant_json(t, &state)).collect::<Vec<_>>() })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTenant {
    id: String,
    name: Option<String>,
}

async fn create_tenant(State(state): State<AppState>, who: Principal, req: Request) -> Result<Response, Error> {
    who.representative("create tenants")?;
    let b: NewTenant = read_json(req).await?;
    let name = TenantName::parse(b.id.trim()).map_err(|message| Error::Invalid { field: "id".into(), message })?;
    let display = match b.name.as_deref().map(str::trim) {
        Some("") | None => None,
        Some(n) if n.chars().count() > 200 => {
            return Err(Error::Invalid { field: "name".into(), message: "is over 200 characters".into() });
        }
        Some(n) => Some(n),
    };
    let t = state.store.create_tenant(&name, display).await.map_err(Error::from_store)?;
    Ok(json_response(StatusCode::CREATED, &tenant_json(&t, &state)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_problem_names_its_key() {
        let e = parse_body::<NewTenant>(br#"{"id": "acme", "nmae": "Acme"}"#).err().unwrap();
        assert_eq!(e.field(), Some("nmae"));
        assert!(e.to_string().contains("is not a key here"), "{e}");
        let e = parse_body::<NewTenant>(br#"{"name": "Acme"}"#).err().unwrap();
        assert_eq!((e.field(), e.to_string().as_str()), (Some("id"), "id: missing field `id`"));
        let e = parse_body::<NewTenant>(b"{").err().unwrap();
        assert_eq!(e.field(), Some("body"));
    }
}

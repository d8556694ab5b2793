//! Pipelines through the API: `/api/v1/tenants/{t}/pipelines[/{p}[/sync|/runs|/timeline|/quarantine|/resume]]`,
//! and the tenant's configuration as the engine reads it.
//!
//! A pipeline's body is the config file's `[pipelines.NAME]` keys as JSON,
//! validated against the tenant's connections by the config loader. Only a
//! representative defines, changes, deletes or runs one; a customer admin
//! reads status, runs, the timeline and quarantine samples.

use std::collections::BTreeMap;
use std::path::PathBuf;

use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};
use trig_config::{Config, ConnectionConfig, PipelineConfig, TenantName, pipeline_from_json};
use trig_store::{PipelineRecord, PipelineWrite, TenantInfo};

use crate::Error;
use crate::api::{AppState, json_response, read_json};
use crate::auth::Principal;
use crate::connections::{actor, resource_name, settings_of, tenant_of};

/// A tenant's configuration as the engine reads it: the connections and
/// pipelines that validate now, and why the others do not.
pub struct TenantConfig {
    pub config: Config,
    /// Pipelines whose definition no longer validates (e.g. their connection
    /// was deleted), with the first problem.
    pub invalid: BTreeMap<String, Error>,
}

/// Builds a tenant's configuration from the store (and the config file, for its own).
pub async fn tenant_config(state: &AppState, t: &TenantInfo) -> Result<TenantConfig, Error> {
    let mut connections: BTreeMap<String, ConnectionConfig> = BTreeMap::new();
    for rec in state.store.connections(t.id).await.map_err(Error::from_store)? {
        match settings_of(state, t, &rec) {
            Ok(c) => {
                connections.insert(rec.name.clone(), c);
            }
            Err(e) => tracing::warn!(tenant = %t.name, connection = %rec.name, error = %e, "connection cannot be used"),
        }
    }
    let mut pipelines: BTreeMap<String, PipelineConfig> = BTreeMap::new();
    let mut invalid = BTreeMap::new();
    for rec in state.store.pipeline_records(t.id).await.map_err(Error::from_store)? {
        match parse(state, &rec, &connections) {
            Ok(p) => {
                pipelines.insert(rec.name.clone(), p);
            }
            Err(e) => {
                invalid.insert(rec.name.clone(), e);
            }
        }
    }
    let tenant = TenantName::parse(&t.name).map_err(|m| Error::Invalid { field: "tenant".into(), message: m })?;
    let path = state.config.as_ref().map(|c| c.path.clone()).unwrap_or_else(|| PathBuf::from("serve"));
    Ok(TenantConfig { config: Config { path, tenant, store_url: String::new(), store_url_secret: None, connections, pipelines }, invalid })
}

fn parse(state: &AppState, rec: &PipelineRecord, connections: &BTreeMap<String, ConnectionConfig>) -> Result<PipelineConfig, Error> {
    if rec.origin.as_deref() == Some("config")
        && let Some(p) = state.config.as_ref().and_then(|c| c.pipelines.get(&rec.name))
    {
        return Ok(p.clone());
    }
    let def = rec.definition.as_ref().ok_or_else(|| Error::NotFound { what: format!("pipeline `{}`", rec.name) })?;
    pipeline_from_json(&rec.name, def, connections).map_err(|errors| match errors.into_iter().next() {
        Some(e) => Error::Invalid { field: e.key, message: e.message },
        None => Error::Invalid { field: "body".into(), message: "is not a pipeline".into() },
    })
}

/// `healthy`, `failing`, `paused` or `running`.
pub(crate) fn state_of(r: &PipelineRecord) -> &'static str {
    let now = chrono::Utc::now().timestamp_micros();
    if r.paused_reason.is_some() {
        "paused"
    } else if r.holder.is_some() && r.lease_until.is_some_and(|u| u > now) {
        "running"
    } else if r.failures > 0 {
        "failing"
    } else {
        "healthy"
    }
}

fn time(t: Option<i64>) -> Value {
    t.map(|t| json!(trig_store::time::rfc3339(t))).unwrap_or(Value::Null)
}

async fn view(state: &AppState, t: &TenantInfo, r: &PipelineRecord) -> Result<Value, Error> {
    let last = state.store.runs(t.id, Some(&r.name), 1).await.map_err(Error::from_store)?.into_iter().next();
    Ok(json!({
        "name": r.name,
        "kind": r.definition.as_ref().and_then(|d| d.get("kind")).cloned().unwrap_or(Value::Null),
        "connection": r.definition.as_ref().and_then(|d| d.get("connection")).cloned().unwrap_or(Value::Null),
        "origin": r.origin,
        "read_only": r.origin.as_deref() == Some("config"),
        "mapping": r.definition,
        "state": state_of(r),
        "next_run_at": if r.requested.is_some() { json!("now") } else { time(r.next_run_at) },
        "requested": r.requested,
        "last_run": last,
        "last_error": r.last_error,
        "failures": r.failures,
        "failing_since": time(r.failing_since),
        "paused_reason": r.paused_reason,
        "paused_at": time(r.paused_at),
    }))
}

pub(crate) async fn record(state: &AppState, t: &TenantInfo, p: &str) -> Result<PipelineRecord, Error> {
    state
        .store
        .pipeline_record(t.id, p)
        .await
        .map_err(Error::from_store)?
        .filter(|r| r.definition.is_some())
        .ok_or_else(|| Error::NotFound { what: format!("pipeline `{p}` of tenant `{}`", t.name) })
}

pub(crate) fn writable(state: &AppState, r: &PipelineRecord) -> Result<(), Error> {
    if r.origin.as_deref() == Some("config") {
        let file = state.config.as_ref().map(|c| c.path.display().to_string()).unwrap_or_else(|| "the config file".into());
        return Err(Error::ReadOnly { what: format!("pipeline `{}`", r.name), file });
    }
    Ok(())
}

pub(crate) async fn list(State(state): State<AppState>, Path(t): Path<String>, who: Principal) -> Result<Response, Error> {
    let t = tenant_of(&state, &who, &t).await?;
    let mut out = Vec::new();
    for r in state.store.pipeline_records(t.id).await.map_err(Error::from_store)? {
        out.push(view(&state, &t, &r).await?);
    }
    Ok(json_response(StatusCode::OK, &json!({ "pipelines": out })))
}

pub(crate) async fn get(State(state): State<AppState>, Path((t, p)): Path<(String, String)>, who: Principal) -> Result<Response, Error> {
    let t = tenant_of(&state, &who, &t).await?;
    let p = resource_name("pipeline", &p)?;
    let r = record(&state, &t, &p).await?;
    Ok(json_response(StatusCode::OK, &view(&state, &t, &r).await?))
}

async fn define(
    state: &AppState,
    who: &crate::auth::Principal,
    t: &TenantInfo,
    p: &str,
    body: Value,
    action: &str,
) -> Result<Response, Error> {
    let (r, created) = define_pipeline(state, who, t, p, body, action).await?;
    Ok(json_response(if created { StatusCode::CREATED } else { StatusCode::OK }, &view(state, t, &r).await?))
}

/// Validates a pipeline's body against the tenant's connections and stores
/// it (the API and the pages both define by it): the record, and whether it is new.
pub(crate) async fn define_pipeline(
    state: &AppState,
    who: &crate::auth::Principal,
    t: &TenantInfo,
    p: &str,
    body: Value,
    action: &str,
) -> Result<(PipelineRecord, bool), Error> {
    let tc = tenant_config(state, t).await?;
    pipeline_from_json(p, &body, &tc.config.connections).map_err(|errors| match errors.into_iter().next() {
        Some(e) => Error::Invalid { field: e.key, message: e.message },
        None => Error::Invalid { field: "body".into(), message: "is not a pipeline".into() },
    })?;
    let w = PipelineWrite {
        origin: "api".into(),
        definition: body,
        actor: actor(who),
        action: action.into(),
        // A new pipeline's first run (its backfill) starts at the scheduler's next wake-up.
        first_run_at: state.clock.now(),
    };
    let (r, created) = state.store.put_pipeline(t.id, p, w).await.map_err(Error::from_store)?;
    state.wake.notify_one();
    Ok((r, created))
}

pub(crate) async fn put(
    State(state): State<AppState>,
    Path((t, p)): Path<(String, String)>,
    who: Principal,
    req: Request,
) -> Result<Response, Error> {
    who.representative("define pipelines")?;
    let t = tenant_of(&state, &who, &t).await?;
    let p = resource_name("pipeline", &p)?;
    if let Some(old) = state.store.pipeline_record(t.id, &p).await.map_err(Error::from_store)?.filter(|r| r.definition.is_some()) {
        writable(&state, &old)?;
    }
    let body: Value = read_json(req).await?;
    define(&state, &who, &t, &p, body, "replaced").await
}

pub(crate) async fn patch(
    State(state): State<AppState>,
    Path((t, p)): Path<(String, String)>,
    who: Principal,
    req: Request,
) -> Result<Response, Error> {
    who.representative("change pipelines")?;
    let t = tenant_of(&state, &who, &t).await?;
    let p = resource_name("pipeline", &p)?;
    let old = record(&state, &t, &p).await?;
    writable(&state, &old)?;
    let change: Value = read_json(req).await?;
    if !change.is_object() {
        return Err(Error::Invalid { field: "body".into(), message: "must be a JSON object of the keys to change".into() });
    }
    let mut body = old.definition.clone().unwrap_or(Value::Null);
    crate::connections::merge(&mut body, &change);
    define(&state, &who, &t, &p, body, "changed").await
}

pub(crate) async fn delete(State(state): State<AppState>, Path((t, p)): Path<(String, String)>, who: Principal) -> Result<Response, Error> {
    who.representative("delete pipelines")?;
    let t = tenant_of(&state, &who, &t).await?;
    let p = resource_name("pipeline", &p)?;
    let old = record(&state, &t, &p).await?;
    writable(&state, &old)?;
    state.store.delete_pipeline(t.id, &p, &actor(&who)).await.map_err(Error::from_store)?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "deleted": p, "kept": "its events, people, runs and cursors stay; defining it again continues from them" }),
    ))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SyncBody {
    #[serde(default)]
    full_refresh: bool,
}

pub(crate) async fn sync(
    State(state): State<AppState>,
    Path((t, p)): Path<(String, String)>,
    who: Principal,
    req: Request,
) -> Result<Response, Error> {
    who.representative("start runs")?;
    let t = tenant_of(&state, &who, &t).await?;
    let p = resource_name("pipeline", &p)?;
    let has_body = req.headers().get(axum::http::header::CONTENT_LENGTH).is_some_and(|v| v != "0");
    let body: SyncBody = if has_body { read_json(req).await? } else { SyncBody::default() };
    let what = if body.full_refresh { "full_refresh" } else { "sync" };
    let run_id = uuid::Uuid::new_v4().to_string();
    let (requested, run_id) = state
        .store
        .request_run(t.id, &p, what, &run_id)
        .await
        .map_err(Error::from_store)?
        .ok_or_else(|| Error::NotFound { what: format!("pipeline `{p}` of tenant `{}`", t.name) })?;
    state.wake.notify_one();
    Ok(json_response(StatusCode::ACCEPTED, &json!({ "run_id": run_id, "requested": requested, "pipeline": p })))
}

pub(crate) async fn resume(State(state): State<AppState>, Path((t, p)): Path<(String, String)>, who: Principal) -> Result<Response, Error> {
    who.representative("resume pipelines")?;
    let t = tenant_of(&state, &who, &t).await?;
    let p = resource_name("pipeline", &p)?;
    record(&state, &t, &p).await?;
    let was = state.store.unpause(t.id, &p, &actor(&who)).await.map_err(Error::from_store)?;
    state.wake.notify_one();
    Ok(json_response(StatusCode::OK, &json!({ "pipeline": p, "resumed": was })))
}

/// The exact SQL a run would send, its parameters, and the first 20 rows mapped; nothing is written.
pub(crate) async fn preview(
    State(state): State<AppState>,
    Path((t, p)): Path<(String, String)>,
    who: Principal,
) -> Result<Response, Error> {
    who.representative("preview pipelines")?;
    let t = tenant_of(&state, &who, &t).await?;
    let p = resource_name("pipeline", &p)?;
    record(&state, &t, &p).await?;
    let mut tc = tenant_config(&state, &t).await?;
    if let Some(e) = tc.invalid.remove(&p) {
        return Err(e);
    }
    let engine = trig_sync::Engine::new(tc.config, state.store.clone(), trig_sync::EngineOptions::default());
    // As a full refresh reads it: the first rows of the source, whatever the cursor.
    match engine.dry_run(&p, trig_sync::Trigger::FullRefresh, 20).await {
        Ok(d) => Ok(json_response(StatusCode::OK, &serde_json::to_value(&d).unwrap_or(Value::Null))),
        Err(e) => Err(Error::Sync { kind: e.kind(), message: e.to_string(), hint: e.hint() }),
    }
}

/// `?limit=N&after=X`; any other parameter is refused, naming it.
#[derive(Default)]
pub(crate) struct Page {
    limit: Option<usize>,
    after: Option<String>,
}

fn page(uri: &Uri) -> Result<Page, Error> {
    let mut p = Page::default();
    for pair in uri.query().unwrap_or("").split('&').filter(|s| !s.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "limit" => {
                p.limit = Some(
                    v.parse().map_err(|_| Error::Invalid { field: "limit".into(), message: format!("`{v}` is not a number of rows") })?,
                )
            }
            "after" => p.after = Some(v.to_string()),
            other => return Err(Error::Invalid { field: other.to_string(), message: "is not a parameter here (limit, after)".into() }),
        }
    }
    Ok(p)
}

const MAX_PAGE: usize = 200;

pub(crate) async fn runs(
    State(state): State<AppState>,
    Path((t, p)): Path<(String, String)>,
    uri: Uri,
    who: Principal,
) -> Result<Response, Error> {
    let t = tenant_of(&state, &who, &t).await?;
    let p = resource_name("pipeline", &p)?;
    record(&state, &t, &p).await?;
    let page = page(&uri)?;
    let limit = page.limit.unwrap_or(50).clamp(1, MAX_PAGE);
    // Newest first; `after` is the last run id of the previous page (one more is read to know whether a page follows).
    let mut runs = state.store.runs_page(t.id, &p, page.after.as_deref(), limit + 1).await.map_err(Error::from_store)?;
    let more = runs.len() > limit;
    runs.truncate(limit);
    let next = if more { runs.last().map(|r| r.run_id.clone()) } else { None };
    Ok(json_response(StatusCode::OK, &json!({ "runs": runs, "next": next })))
}

pub(crate) async fn run(
    State(state): State<AppState>,
    Path((t, p, id)): Path<(String, String, String)>,
    who: Principal,
) -> Result<Response, Error> {
    let t = tenant_of(&state, &who, &t).await?;
    let p = resource_name("pipeline", &p)?;
    record(&state, &t, &p).await?;
    let r = state
        .store
        .run(t.id, &p, &id)
        .await
        .map_err(Error::from_store)?
        .ok_or_else(|| Error::NotFound { what: format!("run `{id}` of pipeline `{p}`") })?;
    Ok(json_response(StatusCode::OK, &serde_json::to_value(&r).unwrap_or(Value::Null)))
}

pub(crate) async fn timeline(
    State(state): State<AppState>,
    Path((t, p)): Path<(String, String)>,
    uri: Uri,
    who: Principal,
) -> Result<Response, Error> {
    let t = tenant_of(&state, &who, &t).await?;
    let p = resource_name("pipeline", &p)?;
    let limit = page(&uri)?.limit.unwrap_or(50).clamp(1, MAX_PAGE);
    let r = record(&state, &t, &p).await?;
    let runs = state.store.runs(t.id, Some(&p), limit).await.map_err(Error::from_store)?;
    let mut changes = state.store.changes(t.id, "pipeline", &p, limit).await.map_err(Error::from_store)?;
    // Its connection's changes too (a new token, a new URL): often what a run's failure or recovery follows.
    if let Some(c) = r.definition.as_ref().and_then(|d| d.get("connection")).and_then(Value::as_str) {
        changes.extend(state.store.changes(t.id, "connection", c, limit).await.map_err(Error::from_store)?);
    }
    let mut items: Vec<(i64, Value)> =
        runs.iter().map(|r| (r.started_at, json!({ "type": "run", "at": trig_store::time::rfc3339(r.started_at), "run": r }))).collect();
    items.extend(changes.iter().map(|c| {
        (
            c.at,
            json!({
                "type": "change", "subject": c.subject, "name": c.name, "at": trig_store::time::rfc3339(c.at), "action": c.action, "actor": c.actor,
                "before": c.before, "after": c.after, "note": c.note,
            }),
        )
    }));
    items.sort_by_key(|i| std::cmp::Reverse(i.0));
    items.truncate(limit);
    Ok(json_response(StatusCode::OK, &json!({ "timeline": items.into_iter().map(|(_, v)| v).collect::<Vec<_>>() })))
}

pub(crate) async fn quarantine(
    State(state): State<AppState>,
    Path((t, p)): Path<(String, String)>,
    uri: Uri,
    who: Principal,
) -> Result<Response, Error> {
    let t = tenant_of(&state, &who, &t).await?;
    let p = resource_name("pipeline", &p)?;
    let r = record(&state, &t, &p).await?;
    let page = page(&uri)?;
    let limit = page.limit.unwrap_or(50).clamp(1, MAX_PAGE);
    let after = match &page.after {
        None => 0,
        Some(a) => {
            a.parse().map_err(|_| Error::Invalid { field: "after".into(), message: "must be the `next` of the previous page".into() })?
        }
    };
    let rows = state.store.quarantine_of(r.key, after, limit).await.map_err(Error::from_store)?;
    let next = if rows.len() == limit { rows.last().map(|(id, _)| id.to_string()) } else { None };
    Ok(json_response(StatusCode::OK, &json!({ "rows": rows.into_iter().map(|(_, v)| v).collect::<Vec<_>>(), "next": next })))
}

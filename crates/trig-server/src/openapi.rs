//! The OpenAPI 3.1 document at `/api/openapi.json`, built from [`ROUTES`]:
//! the one table of the API's routes, their roles and bodies. A test calls
//! every route in it, so a route listed is a route served.

use serde_json::{Map, Value, json};

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    Anyone,
    /// A customer admin (own tenant) or a representative.
    Both,
    Representative,
}

/// One operation of the API.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub who: Who,
    pub summary: &'static str,
    /// The body's description, for operations that take one.
    pub body: Option<&'static str>,
    /// The success status.
    pub status: u16,
}

const CONNECTION_BODY: &str = "The config file's [connections.NAME] keys as JSON, the secret itself: {\"workspace_url\", \"http_path\", \"token\"} or \"oauth\": {\"client_id\", \"client_secret\"}, \"default_catalog\"?, \"allow_hosts\"?. PATCH: a JSON merge patch. Without a secret the stored one is kept.";
const PIPELINE_BODY: &str =
    "The config file's [pipelines.NAME] keys as JSON: {\"connection\", \"kind\", \"source\", \"event_id\", …}. PATCH: a JSON merge patch.";

pub const ROUTES: &[Route] = &[
    Route { method: "get", path: "/healthz", who: Who::Anyone, summary: "The process is up.", body: None, status: 200 },
    Route { method: "get", path: "/readyz", who: Who::Anyone, summary: "The store answers.", body: None, status: 200 },
    Route { method: "get", path: "/metrics", who: Who::Anyone, summary: "Metrics in Prometheus' text format.", body: None, status: 200 },
    Route { method: "get", path: "/api/openapi.json", who: Who::Anyone, summary: "This document.", body: None, status: 200 },
    Route { method: "get", path: "/api/v1/tenants", who: Who::Representative, summary: "Every tenant.", body: None, status: 200 },
    Route {
        method: "post",
        path: "/api/v1/tenants",
        who: Who::Representative,
        summary: "Create a tenant.",
        body: Some("{\"id\", \"name\"?}"),
        status: 201,
    },
    Route {
        method: "get",
        path: "/api/v1/tenants/{t}",
        who: Who::Both,
        summary: "A tenant: its name and whether a webhook is set.",
        body: None,
        status: 200,
    },
    Route {
        method: "patch",
        path: "/api/v1/tenants/{t}",
        who: Who::Both,
        summary: "Change a tenant's name or alert webhook.",
        body: Some("{\"name\"?, \"webhook_url\"?: string or null}"),
        status: 200,
    },
    Route {
        method: "get",
        path: "/api/v1/tenants/{t}/connections",
        who: Who::Both,
        summary: "The tenant's connections (never a secret).",
        body: None,
        status: 200,
    },
    Route {
        method: "put",
        path: "/api/v1/tenants/{t}/connections/{c}",
        who: Who::Both,
        summary: "Create or replace a connection.",
        body: Some(CONNECTION_BODY),
        status: 201,
    },
    Route { method: "get", path: "/api/v1/tenants/{t}/connections/{c}", who: Who::Both, summary: "A connection.", body: None, status: 200 },
    Route {
        method: "patch",
        path: "/api/v1/tenants/{t}/connections/{c}",
        who: Who::Both,
        summary: "Change some of a connection's keys.",
        body: Some(CONNECTION_BODY),
        status: 200,
    },
    Route {
        method: "delete",
        path: "/api/v1/tenants/{t}/connections/{c}",
        who: Who::Both,
        summary: "Delete a connection.",
        body: None,
        status: 200,
    },
    Route {
        method: "post",
        path: "/api/v1/tenants/{t}/connections/{c}/test",
        who: Who::Both,
        summary: "Test connection: {ok, checks: [{name, ok, detail, hint}], catalogs}.",
        body: None,
        status: 200,
    },
    Route {
        method: "get",
        path: "/api/v1/tenants/{t}/warehouses",
        who: Who::Both,
        summary: "Per warehouse: the uptime Trig caused per day, wake-ups, statements, a suggestion.",
        body: None,
        status: 200,
    },
    Route {
        method: "get",
        path: "/api/v1/tenants/{t}/pipelines",
        who: Who::Both,
        summary: "Every pipeline with its status.",
        body: None,
        status: 200,
    },
    Route {
        method: "put",
        path: "/api/v1/tenants/{t}/pipelines/{p}",
        who: Who::Representative,
        summary: "Create or replace a pipeline's mapping.",
        body: Some(PIPELINE_BODY),
        status: 201,
    },
    Route {
        method: "get",
        path: "/api/v1/tenants/{t}/pipelines/{p}",
        who: Who::Both,
        summary: "Mapping and status: state, last_run, next_run_at, last_error, paused_reason.",
        body: None,
        status: 200,
    },
    Route {
        method: "patch",
        path: "/api/v1/tenants/{t}/pipelines/{p}",
        who: Who::Representative,
        summary: "Change some of a pipeline's keys.",
        body: Some(PIPELINE_BODY),
        status: 200,
    },
    Route {
        method: "delete",
        path: "/api/v1/tenants/{t}/pipelines/{p}",
        who: Who::Representative,
        summary: "Stop and remove a pipeline (its rows stay).",
        body: None,
        status: 200,
    },
    Route {
        method: "post",
        path: "/api/v1/tenants/{t}/pipelines/{p}/preview",
        who: Who::Representative,
        summary: "The exact SQL, its parameters and the first 20 mapped rows.",
        body: None,
        status: 200,
    },
    Route {
        method: "post",
        path: "/api/v1/tenants/{t}/pipelines/{p}/sync",
        who: Who::Representative,
        summary: "Queue a run; 202 with its run id.",
        body: Some("{\"full_refresh\": bool}"),
        status: 202,
    },
    Route {
        method: "post",
        path: "/api/v1/tenants/{t}/pipelines/{p}/resume",
        who: Who::Representative,
        summary: "Un-pause a paused pipeline.",
        body: None,
        status: 200,
    },
    Route {
        method: "get",
        path: "/api/v1/tenants/{t}/pipelines/{p}/runs",
        who: Who::Both,
        summary: "Runs, newest first, paged (?limit, ?after).",
        body: None,
        status: 200,
    },
    Route {
        method: "get",
        path: "/api/v1/tenants/{t}/pipelines/{p}/runs/{run_id}",
        who: Who::Both,
        summary: "One run.",
        body: None,
        status: 200,
    },
    Route {
        method: "get",
        path: "/api/v1/tenants/{t}/pipelines/{p}/timeline",
        who: Who::Both,
        summary: "Runs and configuration changes in one list, newest first.",
        body: None,
        status: 200,
    },
    Route {
        method: "get",
        path: "/api/v1/tenants/{t}/pipelines/{p}/quarantine",
        who: Who::Both,
        summary: "Quarantined rows with their reasons, paged (?limit, ?after).",
        body: None,
        status: 200,
    },
];

/// The document.
pub fn document() -> Value {
    let mut paths: Map<String, Value> = Map::new();
    for r in ROUTES {
        let params: Vec<Value> = r
            .path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
            .collect();
        let who = match r.who {
            Who::Anyone => "anyone",
            Who::Both => "a customer admin of the tenant, or a Trig representative",
            Who::Representative => "a Trig representative",
        };
        let mut op = json!({
            "summary": r.summary,
            "description": format!("Who: {who}."),
            "parameters": params,
            "responses": {
                r.status.to_string(): { "description": "Done." },
                "default": { "description": "An error.", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } },
            },
        });
        if r.who != Who::Anyone {
            op["security"] = json!([{ "bearer": [] }]);
        }
        if let Some(b) = r.body {
            op["requestBody"] =
                json!({ "required": true, "description": b, "content": { "application/json": { "schema": { "type": "object" } } } });
        }
        paths.entry(r.path.to_string()).or_insert_with(|| json!({}))[r.method] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": { "title": "trig-databricks", "version": env!("CARGO_PKG_VERSION"),
                  "description": "Trig's Databricks integration: tenants, connections, pipelines, runs. Bodies are JSON, at most 1 MiB; unknown keys are refused." },
        "paths": paths,
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer", "description": "A token from `trig-databricks tokens create`." } },
            "schemas": { "Error": {
                "type": "object",
                "properties": { "error": { "type": "object", "required": ["kind", "message"], "properties": {
                    "kind": { "type": "string" }, "message": { "type": "string" }, "field": { "type": "string" }, "hint": { "type": "string" } } } },
            } },
        },
    })
}

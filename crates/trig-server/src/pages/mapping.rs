//! `/settings/integrations/databricks/pipelines/{p}/mapping`, for Trig
//! representatives only: pick the catalog, schema and table or view from
//! what the connection can see, map its columns to the event or person
//! fields, Preview (the exact SQL and the first 20 mapped rows, nothing
//! saved), Save, Sync now and Full refresh (after a confirmation).
//!
//! Without a script the pickers are plain selects: "Browse" posts the form
//! and the page comes back with the next level listed.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::session::{Form, Posted, Session};
use super::{Chrome, HOME, PageError, html, tenant_of};
use crate::Error;
use crate::api::AppState;
use crate::connections::resource_name;

/// A mapping field: the config key, its label and help, what the form holds.
#[derive(Debug, Clone)]
pub struct Field {
    pub key: &'static str,
    pub label: &'static str,
    pub help: &'static str,
    pub value: String,
    /// A column name is expected (the input suggests the table's columns).
    pub column: bool,
    pub required: bool,
}

/// The fields of a kind, in the order the form shows them.
fn fields_of(kind: &str) -> Vec<Field> {
    let f = |key, label, help, column, required| Field { key, label, help, value: String::new(), column, required };
    let mut v = match kind {
        "people" => vec![
            f("id", "Person ID column", "Your user id; events match people by it.", true, true),
            f("name", "Name column", "", true, false),
            f("email", "Email column", "", true, false),
            f("organisation_id", "Organisation ID column", "Links the person to their organisation.", true, false),
            f("include", "Attribute columns to include", "Comma-separated; empty: every other column.", false, false),
            f("exclude", "Attribute columns to exclude", "Comma-separated.", false, false),
            f("updated_at", "Updated-at column", "Only records changed since the last run are read.", true, false),
        ],
        "organisations" => vec![
            f("id", "Organisation ID column", "", true, true),
            f("name", "Name column", "", true, false),
            f("domain", "Domain column", "", true, false),
            f("include", "Attribute columns to include", "Comma-separated; empty: every other column.", false, false),
            f("exclude", "Attribute columns to exclude", "Comma-separated.", false, false),
            f("updated_at", "Updated-at column", "Only records changed since the last run are read.", true, false),
        ],
        _ => vec![
            f("event_id", "Event ID column", "Unique per event: a row seen again is not imported twice.", true, true),
            f("event_name", "Event name column", "", true, true),
            f("timestamp", "Timestamp column", "When the event happened.", true, true),
            f("user_id", "User ID column", "Matches the event to a person.", true, true),
            f("user_id_kind", "User ID is", "external_id (your user id) or email.", false, false),
            f("email", "Email column", "Creates the person when the user id is new.", true, false),
            f("properties", "Property columns", "Comma-separated columns kept as event properties.", false, false),
            f("properties_column", "Properties column", "A MAP, STRUCT or JSON string column of properties.", true, false),
            f("timezone", "Time zone", "For timestamps without a zone, e.g. Europe/Berlin; default UTC.", false, false),
            f("where", "WHERE", "A filter on the source, e.g. environment = 'production'.", false, false),
            f("cursor", "Cursor column", "An ingestion-time column, when rows arrive late; default the timestamp.", true, false),
            f("backfill_from", "Backfill from", "RFC 3339 time the first run reads from, e.g. 2025-01-01T00:00:00Z.", false, false),
        ],
    };
    v.push(f("lookback", "Lookback", "How far back each run re-reads for late rows, e.g. 2h.", false, false));
    v.push(f("schedule", "Schedule", "How often it runs, e.g. 15m or 24h.", false, false));
    v
}

/// Keys whose value is a list.
fn is_list(key: &str) -> bool {
    matches!(key, "properties" | "include" | "exclude")
}

#[derive(Debug, Clone, Default)]
pub struct Column {
    pub name: String,
    pub type_text: String,
}

#[derive(Debug, Clone)]
pub struct Preview {
    pub sql: String,
    pub parameters: Vec<(String, String)>,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
    pub quarantined: Vec<(String, String)>,
}

#[derive(Template)]
#[template(path = "mapping.html")]
struct MappingPage {
    chrome: Option<Chrome>,
    name: String,
    exists: bool,
    read_only: Option<String>,
    kind: String,
    connection: String,
    connections: Vec<String>,
    catalog: String,
    schema: String,
    table: String,
    catalogs: Vec<String>,
    schemas: Vec<String>,
    tables: Vec<(String, String)>,
    columns: Vec<Column>,
    browse_error: Option<String>,
    fields: Vec<Field>,
    errors: Vec<(String, String)>,
    preview: Option<Preview>,
    saved: bool,
}

impl MappingPage {
    pub fn error(&self, key: &str) -> Option<&str> {
        self.errors.iter().find(|(k, _)| k == key).map(|(_, m)| m.as_str())
    }
}

/// Only a representative maps tables; anyone else gets a page saying so.
async fn representative(state: &AppState, s: &Session) -> Result<(trig_store::TenantInfo, Chrome), PageError> {
    let (t, chrome) = tenant_of(state, s).await?;
    if !s.is_representative() {
        return Err(PageError::Forbidden { what: "The mapping of tables to Trig's events and people".into(), chrome: Some(chrome) });
    }
    Ok((t, chrome))
}

#[derive(Deserialize)]
pub(super) struct MappingQuery {
    kind: Option<String>,
    saved: Option<String>,
}

/// The mapping as the form holds it: `[catalog.]schema.table` split, the fields by key.
struct Mapping {
    kind: String,
    connection: String,
    catalog: String,
    schema: String,
    table: String,
    fields: Vec<Field>,
}

impl Mapping {
    fn of_definition(d: &Value) -> Mapping {
        let s = |k: &str| d.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let kind = s("kind");
        let source = s("source");
        let parts: Vec<&str> = source.split('.').collect();
        let (catalog, schema, table) = match parts.as_slice() {
            [c, s, t] => (c.to_string(), s.to_string(), t.to_string()),
            [s, t] => (String::new(), s.to_string(), t.to_string()),
            _ => (String::new(), String::new(), source.clone()),
        };
        let mut fields = fields_of(&kind);
        for f in &mut fields {
            f.value = match d.get(f.key) {
                Some(Value::String(v)) => v.clone(),
                Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
        }
        Mapping { kind, connection: s("connection"), catalog, schema, table, fields }
    }

    fn of_form(f: &Form) -> Mapping {
        let kind = match f.get("kind") {
            k @ ("people" | "organisations") => k.to_string(),
            _ => "events".to_string(),
        };
        let mut fields = fields_of(&kind);
        for field in &mut fields {
            field.value = f.get(field.key).to_string();
        }
        Mapping {
            kind,
            connection: f.get("connection").to_string(),
            catalog: f.get("catalog").to_string(),
            schema: f.get("schema").to_string(),
            table: f.get("table").to_string(),
            fields,
        }
    }

    fn source(&self) -> String {
        [self.catalog.as_str(), self.schema.as_str(), self.table.as_str()]
            .iter()
            .filter(|p| !p.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(".")
    }

    /// The config file's keys as JSON (what the API takes).
    fn body(&self) -> Value {
        let mut m = Map::new();
        m.insert("connection".into(), json!(self.connection));
        m.insert("kind".into(), json!(self.kind));
        m.insert("source".into(), json!(self.source()));
        for f in &self.fields {
            if f.value.is_empty() {
                continue;
            }
            let v = if is_list(f.key) {
                json!(f.value.split(',').map(str::trim).filter(|s| !s.is_empty()).collect::<Vec<_>>())
            } else {
                json!(f.value)
            };
            m.insert(f.key.to_string(), v);
        }
        Value::Object(m)
    }
}

/// What the connection lists at each level chosen so far.
#[derive(Default)]
struct Browse {
    catalogs: Vec<String>,
    schemas: Vec<String>,
    tables: Vec<(String, String)>,
    columns: Vec<Column>,
    error: Option<String>,
}

async fn browse(state: &AppState, t: &trig_store::TenantInfo, m: &Mapping) -> Browse {
    let mut b = Browse::default();
    if m.connection.is_empty() {
        return b;
    }
    let client = match client_of(state, t, &m.connection).await {
        Ok(c) => c,
        Err(e) => {
            b.error = Some(e);
            return b;
        }
    };
    let said = |e: databricks::Error| format!("{e} ({})", e.hint());
    match client.list_catalogs().await {
        Ok(c) => b.catalogs = c.into_iter().map(|c| c.name).collect(),
        Err(e) => {
            b.error = Some(said(e));
            return b;
        }
    }
    if m.catalog.is_empty() {
        return b;
    }
    match client.list_schemas(&m.catalog).await {
        Ok(s) => b.schemas = s,
        Err(e) => {
            b.error = Some(said(e));
            return b;
        }
    }
    if m.schema.is_empty() {
        return b;
    }
    match client.list_tables(&m.catalog, &m.schema).await {
        Ok(ts) => b.tables = ts.into_iter().map(|t| (t.name, t.table_type.unwrap_or_default().to_lowercase().replace('_', " "))).collect(),
        Err(e) => {
            b.error = Some(said(e));
            return b;
        }
    }
    if m.table.is_empty() || !b.tables.iter().any(|(n, _)| *n == m.table) {
        return b;
    }
    let name = match databricks::sql::TableName::parse(&m.source(), None) {
        Ok(n) => n,
        Err(e) => {
            b.error = Some(e.to_string());
            return b;
        }
    };
    match client.table_columns(&name).await {
        Ok(cols) => b.columns = cols.into_iter().map(|c| Column { name: c.name, type_text: c.type_text }).collect(),
        Err(e) => b.error = Some(said(e)),
    }
    b
}

async fn client_of(state: &AppState, t: &trig_store::TenantInfo, connection: &str) -> Result<databricks::Client, String> {
    let rec = crate::connections::stored(state, t, connection).await.map_err(|e| e.to_string())?;
    let settings = crate::connections::settings_of(state, t, &rec).map_err(|e| e.to_string())?;
    let s = settings.settings().map_err(|e| format!("{}: {}", e.key, e.message))?;
    databricks::Client::new(s).map_err(|e| e.to_string())
}

#[allow(clippy::too_many_arguments)]
async fn render(
    state: &AppState,
    t: &trig_store::TenantInfo,
    chrome: Chrome,
    name: &str,
    exists: bool,
    read_only: Option<String>,
    m: Mapping,
    errors: Vec<(String, String)>,
    preview: Option<Preview>,
    saved: bool,
    status: StatusCode,
) -> Result<Response, PageError> {
    let connections: Vec<String> = state.store.connections(t.id).await.map_err(Error::from_store)?.into_iter().map(|c| c.name).collect();
    let mut m = m;
    if m.connection.is_empty() && connections.len() == 1 {
        m.connection = connections[0].clone();
    }
    let b = browse(state, t, &m).await;
    let page = MappingPage {
        chrome: Some(chrome),
        name: name.to_string(),
        exists,
        read_only,
        kind: m.kind,
        connection: m.connection,
        connections,
        catalog: m.catalog,
        schema: m.schema,
        table: m.table,
        catalogs: b.catalogs,
        schemas: b.schemas,
        tables: b.tables,
        columns: b.columns,
        browse_error: b.error,
        fields: m.fields,
        errors,
        preview,
        saved,
    };
    Ok(html(status, &page))
}

fn read_only_of(state: &AppState, r: &trig_store::PipelineRecord) -> Option<String> {
    (r.origin.as_deref() == Some("config"))
        .then(|| state.config.as_ref().map(|c| c.path.display().to_string()).unwrap_or_else(|| "the config file".into()))
}

pub(super) async fn page(
    State(state): State<AppState>,
    s: Session,
    Path(p): Path<String>,
    Query(q): Query<MappingQuery>,
) -> Result<Response, PageError> {
    let (t, chrome) = representative(&state, &s).await?;
    let p = resource_name("pipeline", &p).map_err(|e| PageError::with(e, chrome.clone()))?;
    let rec = state.store.pipeline_record(t.id, &p).await.map_err(Error::from_store)?.filter(|r| r.definition.is_some());
    let (m, exists, read_only) = match &rec {
        Some(r) => (Mapping::of_definition(r.definition.as_ref().unwrap_or(&Value::Null)), true, read_only_of(&state, r)),
        None => {
            let kind = q.kind.as_deref().unwrap_or("events");
            (Mapping::of_definition(&json!({ "kind": kind })), false, None)
        }
    };
    render(&state, &t, chrome, &p, exists, read_only, m, Vec::new(), None, q.saved.is_some(), StatusCode::OK).await
}

/// The loader's key of a problem → the form's field.
fn field_of(key: &str) -> String {
    match key {
        "source" => "table".into(),
        k => k.split('.').next().unwrap_or(k).to_string(),
    }
}

pub(super) async fn submit(State(state): State<AppState>, Path(p): Path<String>, posted: Posted) -> Result<Response, PageError> {
    let Posted { session: s, form: f } = posted;
    let (t, chrome) = representative(&state, &s).await?;
    let p = resource_name("pipeline", &p).map_err(|e| PageError::with(e, chrome.clone()))?;
    let rec = state.store.pipeline_record(t.id, &p).await.map_err(Error::from_store)?.filter(|r| r.definition.is_some());
    let (exists, read_only) = (rec.is_some(), rec.as_ref().and_then(|r| read_only_of(&state, r)));
    let m = Mapping::of_form(&f);
    let action = f.get("action").to_string();
    if action == "browse" {
        return render(&state, &t, chrome, &p, exists, read_only, m, Vec::new(), None, false, StatusCode::OK).await;
    }
    let body = m.body();
    let tc = crate::pipelines::tenant_config(&state, &t).await?;
    let config = match trig_config::pipeline_from_json(&p, &body, &tc.config.connections) {
        Ok(c) => c,
        Err(errors) => {
            // The label is shown before the message: a message that names its key again drops it.
            let errors = errors
                .into_iter()
                .map(|e| {
                    let field = field_of(&e.key);
                    let message = e.message.strip_prefix(&format!("{field}: ")).map(str::to_string).unwrap_or(e.message);
                    (field, message)
                })
                .collect();
            return render(&state, &t, chrome, &p, exists, read_only, m, errors, None, false, StatusCode::BAD_REQUEST).await;
        }
    };
    match action.as_str() {
        "preview" => {
            let mut tc = tc;
            tc.config.pipelines.insert(p.clone(), config);
            let engine = trig_sync::Engine::new(tc.config, state.store.clone(), trig_sync::EngineOptions::default());
            match engine.dry_run(&p, trig_sync::Trigger::FullRefresh, 20).await {
                Ok(d) => {
                    let preview = preview_of(d);
                    render(&state, &t, chrome, &p, exists, read_only, m, Vec::new(), Some(preview), false, StatusCode::OK).await
                }
                Err(e) => {
                    let said = match e.hint() {
                        Some(h) => format!("{e} — {h}"),
                        None => e.to_string(),
                    };
                    render(
                        &state,
                        &t,
                        chrome,
                        &p,
                        exists,
                        read_only,
                        m,
                        vec![("form".into(), said)],
                        None,
                        false,
                        StatusCode::UNPROCESSABLE_ENTITY,
                    )
                    .await
                }
            }
        }
        "save" => {
            if let Some(r) = &rec {
                crate::pipelines::writable(&state, r).map_err(|e| PageError::with(e, chrome.clone()))?;
            }
            let action = if exists { "changed" } else { "replaced" };
            match crate::pipelines::define_pipeline(&state, &s.principal, &t, &p, body, action).await {
                Ok(_) => Ok(Redirect::to(&format!("{HOME}/pipelines/{p}/mapping?saved=1")).into_response()),
                Err(Error::Invalid { field, message }) => {
                    render(
                        &state,
                        &t,
                        chrome,
                        &p,
                        exists,
                        read_only,
                        m,
                        vec![(field_of(&field), message)],
                        None,
                        false,
                        StatusCode::BAD_REQUEST,
                    )
                    .await
                }
                Err(e) => Err(PageError::with(e, chrome)),
            }
        }
        other => Err(PageError::with(
            Error::Invalid {
                field: "action".into(),
                message: format!("`{other}` is not something this form does (browse, preview, save)"),
            },
            chrome,
        )),
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn preview_of(d: trig_sync::DryRun) -> Preview {
    let header: Vec<String> = d
        .rows
        .iter()
        .find(|r| r.get("quarantined").is_none())
        .and_then(Value::as_object)
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    let mut rows = Vec::new();
    let mut quarantined = Vec::new();
    for r in &d.rows {
        if let Some(reason) = r.get("quarantined") {
            quarantined.push((cell(reason), r.get("row").map(Value::to_string).unwrap_or_default()));
        } else {
            rows.push(header.iter().map(|h| r.get(h).map(cell).unwrap_or_default()).collect());
        }
    }
    let parameters = d.parameters.iter().map(|p| (p.name.clone(), p.value.clone().unwrap_or_default())).collect();
    Preview { sql: d.sql, parameters, header, rows, quarantined }
}

/// A new pipeline: its name and kind, then its mapping.
pub(super) async fn create(State(state): State<AppState>, posted: Posted) -> Result<Response, PageError> {
    let (t, chrome) = representative(&state, &posted.session).await?;
    let name = posted.form.get("name");
    let name = resource_name("New pipeline name", name).map_err(|e| PageError::with(e, chrome.clone()))?;
    if state.store.pipeline_record(t.id, &name).await.map_err(Error::from_store)?.is_some_and(|r| r.definition.is_some()) {
        return Err(PageError::with(Error::Conflict { what: format!("pipeline `{name}`") }, chrome));
    }
    let kind = match posted.form.get("kind") {
        k @ ("events" | "people" | "organisations") => k.to_string(),
        other => {
            return Err(PageError::with(
                Error::Invalid {
                    field: "Kind".into(),
                    message: format!("`{other}` is not a kind; choose events, people or organisations"),
                },
                chrome,
            ));
        }
    };
    Ok(Redirect::to(&format!("{HOME}/pipelines/{name}/mapping?kind={kind}")).into_response())
}

async fn request(state: &AppState, posted: &Posted, p: &str, what: &str) -> Result<Response, PageError> {
    let (t, chrome) = representative(state, &posted.session).await?;
    let p = resource_name("pipeline", p).map_err(|e| PageError::with(e, chrome.clone()))?;
    crate::pipelines::record(state, &t, &p).await.map_err(|e| PageError::with(e, chrome.clone()))?;
    let run_id = uuid::Uuid::new_v4().to_string();
    state.store.request_run(t.id, &p, what, &run_id).await.map_err(Error::from_store)?;
    state.wake.notify_one();
    Ok(Redirect::to(&format!("{HOME}/pipelines/{p}?requested={what}")).into_response())
}

pub(super) async fn sync(State(state): State<AppState>, Path(p): Path<String>, posted: Posted) -> Result<Response, PageError> {
    request(&state, &posted, &p, "sync").await
}

#[derive(Template)]
#[template(path = "full_refresh.html")]
struct ConfirmPage {
    chrome: Option<Chrome>,
    name: String,
    source: String,
}

pub(super) async fn confirm_full_refresh(State(state): State<AppState>, s: Session, Path(p): Path<String>) -> Result<Response, PageError> {
    let (t, chrome) = representative(&state, &s).await?;
    let p = resource_name("pipeline", &p).map_err(|e| PageError::with(e, chrome.clone()))?;
    let r = crate::pipelines::record(&state, &t, &p).await.map_err(|e| PageError::with(e, chrome.clone()))?;
    let source = r.definition.as_ref().and_then(|d| d.get("source")).and_then(Value::as_str).unwrap_or("").to_string();
    Ok(html(StatusCode::OK, &ConfirmPage { chrome: Some(chrome), name: p, source }))
}

pub(super) async fn full_refresh(State(state): State<AppState>, Path(p): Path<String>, posted: Posted) -> Result<Response, PageError> {
    if posted.form.get("confirm") != "yes" {
        let (_, chrome) = representative(&state, &posted.session).await?;
        return Err(PageError::with(
            Error::Invalid { field: "confirm".into(), message: "tick the box to confirm the full refresh".into() },
            chrome,
        ));
    }
    request(&state, &posted, &p, "full_refresh").await
}

//! `/settings/integrations/databricks`: the connect form (or the list of
//! connections and a "New connection" form), Test connection on what the
//! form holds, saved or not, each pipeline's status, and the warehouse cost.
//!
//! A secret typed into the form is never sent back in clear: when the page
//! comes back (a test, a problem to fix) it rides in a hidden field sealed
//! by the service's key for this session only, so Save after Test needs no
//! retyping. A stored secret is never shown, only when it was set.

use askama::Template;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use trig_store::{ConnectionRecord, PipelineRecord, RunCounts, SyncRun};

use super::session::{Posted, Session};
use super::{Chrome, HOME, PageError, html, tenant_of, took, when};
use crate::Error;
use crate::api::AppState;
use crate::connections::{self, resource_name};

/// The connect form as the page shows it.
#[derive(Debug, Clone, Default)]
pub struct ConnForm {
    /// The connection being edited; empty for a new one.
    pub original: String,
    pub name: String,
    pub workspace_url: String,
    pub http_path: String,
    pub default_catalog: String,
    /// `token` or `oauth`.
    pub auth: String,
    pub client_id: String,
    pub allow_hosts: String,
    /// "set on 2026-12-02", or where a config file's secret is read from.
    pub secret_note: Option<String>,
    /// A secret typed before, sealed for this session (hidden).
    pub kept: String,
    /// The config file a read-only connection comes from.
    pub read_only: Option<String>,
    /// Problems by field: `name`, `workspace_url`, `http_path`, `token`, `client_id`, `client_secret`, `default_catalog`, `allow_hosts`, `form`.
    pub errors: Vec<(String, String)>,
}

impl ConnForm {
    pub fn error(&self, field: &str) -> Option<&str> {
        self.errors.iter().find(|(f, _)| f == field).map(|(_, m)| m.as_str())
    }

    pub fn is_oauth(&self) -> bool {
        self.auth == "oauth"
    }

    fn of_record(r: &ConnectionRecord, state: &AppState) -> ConnForm {
        let s = |k: &str| r.config.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let client_id = r.config.get("oauth").and_then(|o| o.get("client_id")).and_then(Value::as_str).unwrap_or("").to_string();
        let allow: Vec<String> = r
            .config
            .get("allow_hosts")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
            .unwrap_or_default();
        let read_only = (r.origin == "config")
            .then(|| state.config.as_ref().map(|c| c.path.display().to_string()).unwrap_or_else(|| "the config file".into()));
        let secret_note = if r.origin == "config" {
            r.config.get("secret_from").and_then(Value::as_str).map(|f| format!("read from {f}"))
        } else {
            r.secret_changed_at.filter(|_| r.sealed_secret.is_some()).map(|t| format!("set on {}", super::date(t)))
        };
        ConnForm {
            original: r.name.clone(),
            name: r.name.clone(),
            workspace_url: s("workspace_url"),
            http_path: s("http_path"),
            default_catalog: s("default_catalog"),
            auth: if client_id.is_empty() && r.config.get("auth").and_then(Value::as_str) != Some("oauth") {
                "token".into()
            } else {
                "oauth".into()
            },
            client_id,
            allow_hosts: allow.join(", "),
            secret_note,
            kept: String::new(),
            read_only,
            errors: Vec::new(),
        }
    }
}

/// A run as the pages show it.
#[derive(Debug, Clone)]
pub struct RunView {
    pub run_id: String,
    pub trigger: String,
    pub status: String,
    pub started: String,
    pub took: String,
    pub counts: RunCounts,
    pub error: Option<String>,
    pub notes: Vec<String>,
}

impl RunView {
    pub fn of(r: &SyncRun) -> RunView {
        RunView {
            run_id: r.run_id.clone(),
            trigger: r.trigger.replace('_', " "),
            status: r.status.clone(),
            started: when(r.started_at),
            took: r.ended_at.map(|e| took(e - r.started_at)).unwrap_or_else(|| "running".into()),
            counts: r.counts,
            error: r.error_message.clone(),
            notes: r.notes.clone(),
        }
    }
}

/// A pipeline's status, for the settings page and its own.
#[derive(Debug, Clone)]
pub struct PipeRow {
    pub name: String,
    pub kind: String,
    pub connection: String,
    pub source: String,
    /// healthy, failing, paused, running.
    pub state: &'static str,
    pub paused_reason: Option<String>,
    pub failures: i64,
    pub failing_since: Option<String>,
    pub last_run: Option<RunView>,
    pub next_run: String,
    pub error: Option<String>,
    pub error_hint: Option<String>,
    pub read_only: bool,
}

impl PipeRow {
    pub fn of(r: &PipelineRecord, last: Option<&SyncRun>) -> PipeRow {
        let d = |k: &str| r.definition.as_ref().and_then(|d| d.get(k)).and_then(Value::as_str).unwrap_or("").to_string();
        let e = |k: &str| r.last_error.as_ref().and_then(|e| e.get(k)).and_then(Value::as_str).map(str::to_string);
        let failing = r.failures > 0;
        PipeRow {
            name: r.name.clone(),
            kind: d("kind"),
            connection: d("connection"),
            source: d("source"),
            state: crate::pipelines::state_of(r),
            paused_reason: r.paused_reason.clone(),
            failures: r.failures,
            failing_since: r.failing_since.map(when),
            last_run: last.map(RunView::of),
            next_run: match (&r.requested, r.paused_reason.is_some(), r.next_run_at) {
                (Some(what), _, _) => format!("{} requested: next", what.replace('_', " ")),
                (None, true, _) => "not until it is resumed".into(),
                (None, false, Some(t)) => when(t),
                (None, false, None) => "not scheduled".into(),
            },
            error: if failing || r.paused_reason.is_some() { e("message") } else { None },
            error_hint: if failing || r.paused_reason.is_some() { e("hint") } else { None },
            read_only: r.origin.as_deref() == Some("config"),
        }
    }

    /// The state in words, readable without colour.
    pub fn state_label(&self) -> &'static str {
        match self.state {
            "healthy" => "✓ Healthy",
            "failing" => "✗ Failing",
            "paused" => "⏸ Paused",
            "running" => "↻ Running",
            _ => "?",
        }
    }
}

#[derive(Template)]
#[template(path = "databricks.html")]
struct DatabricksPage {
    chrome: Option<Chrome>,
    connections: Vec<ConnectionRecord>,
    /// The form shown: a connection to edit, or a new one.
    form: ConnForm,
    /// Whether the form is a new connection beside a list.
    new_beside_list: bool,
    report: Option<databricks::check::Report>,
    tested: String,
    saved: Option<String>,
    pipelines: Vec<PipeRow>,
    costs: Vec<crate::cost::WarehouseCost>,
    cost_note: Option<String>,
}

impl DatabricksPage {
    fn connection_host(&self, c: &ConnectionRecord) -> String {
        c.config.get("workspace_url").and_then(Value::as_str).unwrap_or("").to_string()
    }

    fn secret_of(&self, c: &ConnectionRecord) -> String {
        match (c.origin.as_str(), c.secret_changed_at) {
            ("config", _) => "in the config file".into(),
            (_, Some(t)) if c.sealed_secret.is_some() => format!("set on {}", super::date(t)),
            _ => "not set".into(),
        }
    }

    fn is_rep(&self) -> bool {
        self.chrome.as_ref().is_some_and(|c| c.representative)
    }
}

#[derive(Deserialize)]
pub(super) struct PageQuery {
    connection: Option<String>,
    new: Option<String>,
    saved: Option<String>,
}

/// How long the page waits for the warehouses' settings (the cost panel).
const COST_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

async fn render(
    state: &AppState,
    s: &Session,
    form: Option<ConnForm>,
    report: Option<(databricks::check::Report, String)>,
    q: &PageQuery,
    status: StatusCode,
) -> Result<Response, PageError> {
    let (t, chrome) = tenant_of(state, s).await?;
    let connections = state.store.connections(t.id).await.map_err(Error::from_store)?;
    let wanted = q.connection.as_deref().or(form.as_ref().map(|f| f.original.as_str()).filter(|o| !o.is_empty()));
    let selected = match wanted {
        Some(name) => connections.iter().find(|c| c.name == name),
        None if connections.len() == 1 && q.new.is_none() => connections.first(),
        None => None,
    };
    let form = form.unwrap_or_else(|| match selected {
        Some(c) => ConnForm::of_record(c, state),
        None => ConnForm {
            name: if connections.is_empty() { "production".into() } else { String::new() },
            auth: "token".into(),
            ..ConnForm::default()
        },
    });
    let new_beside_list = form.original.is_empty() && !connections.is_empty();
    let mut pipelines = Vec::new();
    for r in state.store.pipeline_records(t.id).await.map_err(Error::from_store)?.iter().filter(|r| r.definition.is_some()) {
        let last = state.store.runs(t.id, Some(&r.name), 1).await.map_err(Error::from_store)?;
        pipelines.push(PipeRow::of(r, last.first()));
    }
    let (costs, cost_note) = if connections.is_empty() {
        (Vec::new(), None)
    } else {
        match tokio::time::timeout(COST_WAIT, crate::cost::report(state, &t)).await {
            Ok(Ok((c, _))) => (c, None),
            Ok(Err(e)) => (Vec::new(), Some(format!("The warehouse figures are not available: {e}"))),
            Err(_) => (Vec::new(), Some("The warehouses' settings did not answer in time; reload to try again.".into())),
        }
    };
    let (report, tested) = match report {
        Some((r, n)) => (Some(r), n),
        None => (None, String::new()),
    };
    let page = DatabricksPage {
        chrome: Some(chrome),
        connections,
        form,
        new_beside_list,
        report,
        tested,
        saved: q.saved.clone(),
        pipelines,
        costs,
        cost_note,
    };
    Ok(html(status, &page))
}

pub(super) async fn page(State(state): State<AppState>, s: Session, Query(q): Query<PageQuery>) -> Result<Response, PageError> {
    render(&state, &s, None, None, &q, StatusCode::OK).await
}

/// The form's field of a loader's key (`oauth.client_secret` → `client_secret`).
fn field_of(key: &str) -> String {
    match key.rsplit('.').next().unwrap_or(key) {
        k @ ("workspace_url" | "http_path" | "token" | "client_id" | "client_secret" | "default_catalog" | "allow_hosts" | "name") => {
            k.to_string()
        }
        "oauth" => "client_id".into(),
        "connection" => "name".into(),
        _ => "form".into(),
    }
}

/// Where a typed secret is sealed while the form goes back and forth: this session only.
fn kept_context(s: &Session) -> String {
    format!("pages/{}/connection-form", s.hash)
}

/// `test` or `save` the connect form.
pub(super) async fn submit(State(state): State<AppState>, posted: Posted) -> Result<Response, PageError> {
    let Posted { session: s, form: f } = posted;
    let (t, chrome) = tenant_of(&state, &s).await?;
    let action = f.get("action").to_string();
    let original = f.get("original").to_string();
    let mut form = ConnForm {
        original: original.clone(),
        name: if original.is_empty() { f.get("name").to_string() } else { original.clone() },
        workspace_url: f.get("workspace_url").to_string(),
        http_path: f.get("http_path").to_string(),
        default_catalog: f.get("default_catalog").to_string(),
        auth: if f.get("auth") == "oauth" { "oauth".into() } else { "token".into() },
        client_id: f.get("client_id").to_string(),
        allow_hosts: f.get("allow_hosts").to_string(),
        ..ConnForm::default()
    };
    let q = PageQuery { connection: None, new: None, saved: None };
    let old = if original.is_empty() {
        None
    } else {
        Some(connections::stored(&state, &t, &original).await.map_err(|e| PageError::with(e, chrome.clone()))?)
    };
    if let Some(o) = &old {
        let shown = ConnForm::of_record(o, &state);
        form.secret_note = shown.secret_note;
        form.read_only = shown.read_only;
    }
    let name = match resource_name("name", &form.name) {
        Ok(n) => n,
        Err(_) => {
            form.errors.push((
                "name".into(),
                "Connection name: use 1 to 63 letters, digits, - or _, starting with a letter or digit (e.g. production).".into(),
            ));
            return render(&state, &s, Some(form), None, &q, StatusCode::BAD_REQUEST).await;
        }
    };
    if old.is_none() && state.store.connection(t.id, &name).await.map_err(Error::from_store)?.is_some() {
        form.errors.push((
            "name".into(),
            format!("Connection name: `{name}` exists already; open it from the list to change it, or choose another name."),
        ));
        return render(&state, &s, Some(form), None, &q, StatusCode::BAD_REQUEST).await;
    }

    // The secret: typed now, typed before (sealed in the form), or the stored one.
    let secret_key = if form.is_oauth() { "client_secret" } else { "token" };
    let typed = f.opt(secret_key);
    let kept: Option<String> = match f.opt("kept") {
        Some(k) => state
            .keys
            .open(&k, &kept_context(&s))
            .ok()
            .and_then(|v| serde_json::from_str::<Value>(&v).ok())
            .and_then(|v| v.get(secret_key).and_then(Value::as_str).map(str::to_string)),
        None => None,
    };
    let new_secret = typed.or(kept);
    if let Some(sec) = &new_secret {
        form.kept = state.keys.seal(&json!({ secret_key: sec }).to_string(), &kept_context(&s))?;
    }

    let mut body = json!({ "workspace_url": form.workspace_url, "http_path": form.http_path });
    if !form.default_catalog.is_empty() {
        body["default_catalog"] = json!(form.default_catalog);
    }
    let hosts: Vec<&str> = form.allow_hosts.split([',', ' ', '\n']).map(str::trim).filter(|h| !h.is_empty()).collect();
    if !hosts.is_empty() {
        body["allow_hosts"] = json!(hosts);
    }
    if form.is_oauth() {
        body["oauth"] = json!({ "client_id": form.client_id });
        if let Some(sec) = &new_secret {
            body["oauth"]["client_secret"] = json!(sec);
        }
    } else if let Some(sec) = &new_secret {
        body["token"] = json!(sec);
    }
    // What the loader validates: the body with the secret it would use.
    let stored = match &old {
        Some(o) if o.origin == "api" => connections::stored_secret(&state, &t, o)?,
        _ => Value::Null,
    };
    let full = connections::join_secret(&body, &stored);
    let config = match (&old, action.as_str()) {
        // A config file's connection is tested as the file has it.
        (Some(o), "test") if o.origin == "config" => crate::connections::settings_of(&state, &t, o)
            .map_err(|e| vec![trig_config::ConfigError { key: "form".into(), message: e.to_string() }]),
        _ => trig_config::connection_from_json(&name, &full),
    };
    let config = match config {
        Ok(c) => c,
        Err(errors) => {
            for e in errors {
                let field = field_of(&e.key);
                let message = match (field.as_str(), e.message.as_str()) {
                    ("token" | "client_secret", m) if m.contains("missing") || m.contains("required") => {
                        format!("{}: enter it (it is stored encrypted and never shown again).", label_of(&field))
                    }
                    (_, m) => format!("{}: {m}", label_of(&field)),
                };
                form.errors.push((field, message));
            }
            return render(&state, &s, Some(form), None, &q, StatusCode::BAD_REQUEST).await;
        }
    };

    // Kept as the loader reads it: the workspace's base URL, whatever was pasted.
    body["workspace_url"] = json!(config.workspace.base());
    form.workspace_url = config.workspace.base();
    match action.as_str() {
        "test" => {
            let mut tc = crate::pipelines::tenant_config(&state, &t).await?;
            tc.config.connections.insert(name.clone(), config);
            let input = match tc.config.check_input(&name) {
                Ok(i) => i,
                Err(e) => {
                    let field = field_of(&e.key);
                    form.errors.push((field.clone(), format!("{}: {}", label_of(&field), e.message)));
                    return render(&state, &s, Some(form), None, &q, StatusCode::BAD_REQUEST).await;
                }
            };
            let report = databricks::check::test_connection(&input).await;
            let status = if report.ok { StatusCode::OK } else { StatusCode::UNPROCESSABLE_ENTITY };
            render(&state, &s, Some(form), Some((report, name)), &q, status).await
        }
        "save" => {
            let action = if old.is_some() { "changed" } else { "replaced" };
            match connections::save(&state, &s.principal, &t, &name, body, old.as_ref(), action).await {
                Ok(_) => Ok(Redirect::to(&format!("{HOME}?connection={name}&saved=1")).into_response()),
                Err(Error::Invalid { field, message }) => {
                    let field = field_of(&field);
                    form.errors.push((field.clone(), format!("{}: {message}", label_of(&field))));
                    render(&state, &s, Some(form), None, &q, StatusCode::BAD_REQUEST).await
                }
                Err(e) => Err(PageError::with(e, chrome)),
            }
        }
        other => Err(PageError::with(
            Error::Invalid { field: "action".into(), message: format!("`{other}` is not something this form does (test, save)") },
            chrome,
        )),
    }
}

/// A field's label on the page, for messages that name it.
fn label_of(field: &str) -> &'static str {
    match field {
        "name" => "Connection name",
        "workspace_url" => "Workspace URL",
        "http_path" => "HTTP path",
        "token" => "Access token",
        "client_id" => "OAuth client ID",
        "client_secret" => "OAuth client secret",
        "default_catalog" => "Default catalog",
        "allow_hosts" => "Private hosts",
        _ => "Connection",
    }
}

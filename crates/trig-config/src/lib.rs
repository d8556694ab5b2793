//! The config file (TOML): `[store]`, `[connections.<name>]` and
//! `[pipelines.<name>]`. The key names are a contract: the format may grow,
//! never change. Loading validates everything up front and reports every
//! problem at once, each naming its key (`pipelines.acme_events.lookback`).
//!
//! Secrets are never written in the file itself: a token or client secret is
//! `{ env = "VAR" }` or `{ file = "path" }`, read when a connection is opened.

pub mod demo;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, FixedOffset, Utc};
use databricks::{AllowHosts, ConnectionSettings, Credentials, Secret, TableName, WarehouseId, WorkspaceUrl};
use toml::{Table, Value};
pub use trig_model::{Entity, IdentityRule, TenantName};

/// Every problem found in a config file, each with its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    pub path: String,
    pub errors: Vec<ConfigError>,
}

/// One problem: the key, what is wrong, and (in the message) the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        writeln!(f, "{}: {n} problem{}:", self.path, if n == 1 { "" } else { "s" })?;
        for e in &self.errors {
            writeln!(f, "  {}: {}", e.key, e.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Where a secret comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    Env(String),
    File(PathBuf),
    /// The secret itself: one the service keeps (sealed) for a connection
    /// made through its API, never one written in a config file.
    Inline(Secret),
}

impl SecretRef {
    /// Reads the secret; the error names the key and the variable or file, never the value.
    pub fn resolve(&self, key: &str) -> Result<Secret, ConfigError> {
        let err = |message: String| ConfigError { key: key.to_string(), message };
        let value = match self {
            SecretRef::Env(var) => {
                std::env::var(var).map_err(|_| err(format!("the environment variable {var} is not set; export it with the secret")))?
            }
            SecretRef::File(p) => {
                std::fs::read_to_string(p).map_err(|e| err(format!("cannot read the secret file {}: {e}", p.display())))?
            }
            SecretRef::Inline(s) if s.is_empty() => return Err(err("is empty: send the secret itself".into())),
            SecretRef::Inline(s) => return Ok(s.clone()),
        };
        let value = value.trim().to_string();
        if value.is_empty() {
            return Err(err(match self {
                SecretRef::Env(v) => format!("the environment variable {v} is empty"),
                SecretRef::File(p) => format!("the secret file {} is empty", p.display()),
                SecretRef::Inline(_) => "is empty".to_string(),
            }));
        }
        Ok(Secret::new(value))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthConfig {
    Token(SecretRef),
    OAuth {
        client_id: String,
        client_secret: SecretRef,
    },
    /// A Databricks configuration profile's token or OAuth client, read from
    /// the file when the connection is opened.
    Profile {
        file: PathBuf,
        name: String,
    },
}

/// `[connections.<name>]`, parsed: the URL, the warehouse and the hosts are
/// the validated types the client takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionConfig {
    pub name: String,
    pub workspace: WorkspaceUrl,
    pub warehouse: WarehouseId,
    pub auth: AuthConfig,
    pub default_catalog: Option<String>,
    pub allow_hosts: AllowHosts,
}

impl ConnectionConfig {
    /// Reads the secret and builds validated settings.
    pub fn credentials(&self) -> Result<Credentials, ConfigError> {
        let key = format!("connections.{}", self.name);
        Ok(match &self.auth {
            AuthConfig::Token(r) => Credentials::Token(r.resolve(&format!("{key}.token"))?),
            AuthConfig::OAuth { client_id, client_secret } => Credentials::OAuth {
                client_id: client_id.clone(),
                client_secret: client_secret.resolve(&format!("{key}.oauth.client_secret"))?,
            },
            AuthConfig::Profile { file, name } => {
                let err = |message: String| ConfigError { key: format!("{key}.profile"), message };
                let p = databricks::profile::load(file, name).map_err(|e| err(e.to_string()))?;
                match (p.token, p.client_id, p.client_secret) {
                    (Some(t), _, _) => Credentials::Token(t),
                    (None, Some(client_id), Some(client_secret)) => Credentials::OAuth { client_id, client_secret },
                    _ => {
                        return Err(err(format!(
                            "profile [{name}] in {} has no token, nor client_id and client_secret; add them to the profile",
                            file.display()
                        )));
                    }
                }
            }
        })
    }
    pub fn settings(&self) -> Result<ConnectionSettings, ConfigError> {
        let creds = self.credentials()?;
        ConnectionSettings::new(
            self.workspace.clone(),
            self.warehouse.clone(),
            creds,
            self.default_catalog.clone(),
            self.allow_hosts.clone(),
        )
        .map_err(|e| ConfigError { key: format!("connections.{}.{}", self.name, e.field().unwrap_or("")), message: e.to_string() })
    }

    /// The HTTP path of the warehouse, as the connect form shows it.
    pub fn http_path(&self) -> String {
        format!("/sql/1.0/warehouses/{}", self.warehouse)
    }
}

/// The events pipeline's mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsSpec {
    pub event_id: String,
    pub event_name: String,
    pub timestamp: String,
    pub user_id: String,
    pub user_id_kind: IdentityRule,
    pub email: Option<String>,
    pub properties: Vec<String>,
    /// A MAP, STRUCT, VARIANT or JSON-object string column whose keys are
    /// merged into the event's properties (a listed property wins a clash).
    pub properties_column: Option<String>,
    /// The zone of zone-less values (TIMESTAMP_NTZ, strings without an offset).
    pub timezone: Zone,
    pub filter: Option<String>,
    pub cursor: Option<String>,
    pub lookback: Duration,
    pub backfill_from: Option<DateTime<Utc>>,
}

impl EventsSpec {
    /// The cursor column (default: the timestamp column).
    pub fn cursor_column(&self) -> &str {
        self.cursor.as_deref().unwrap_or(&self.timestamp)
    }
    /// Every source column the pipeline reads.
    pub fn columns(&self) -> Vec<String> {
        let mut c = vec![self.event_id.clone(), self.event_name.clone(), self.timestamp.clone(), self.user_id.clone()];
        c.extend(self.email.clone());
        c.extend(self.properties.iter().cloned());
        c.extend(self.properties_column.clone());
        c.extend(self.cursor.clone());
        dedup(c)
    }
}

/// The people / organisations pipelines' mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttributesSpec {
    pub kind: Entity,
    pub id: String,
    pub name: String,
    pub email: Option<String>,
    pub organisation_id: Option<String>,
    pub domain: Option<String>,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub updated_at: Option<String>,
    /// How far before the last sync an incremental read starts (with `updated_at`).
    pub lookback: Duration,
}

impl AttributesSpec {
    /// The source columns named explicitly (include may add more; empty include means all).
    pub fn columns(&self) -> Vec<String> {
        let mut c = vec![self.id.clone(), self.name.clone()];
        c.extend(self.email.clone());
        c.extend(self.organisation_id.clone());
        c.extend(self.domain.clone());
        c.extend(self.include.iter().cloned());
        c.extend(self.updated_at.clone());
        dedup(c)
    }
}

fn dedup(v: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for c in v {
        if !out.contains(&c) {
            out.push(c);
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PipelineSpec {
    Events(EventsSpec),
    Attributes(AttributesSpec),
}

/// `[pipelines.<name>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineConfig {
    pub name: String,
    pub connection: String,
    /// The source table or view, resolved against the connection's default catalog.
    pub source: TableName,
    pub schedule: Duration,
    pub spec: PipelineSpec,
}

impl PipelineConfig {
    pub fn kind(&self) -> &'static str {
        match &self.spec {
            PipelineSpec::Events(_) => "events",
            PipelineSpec::Attributes(a) if a.kind == Entity::People => "people",
            PipelineSpec::Attributes(_) => "organisations",
        }
    }
    pub fn columns(&self) -> Vec<String> {
        match &self.spec {
            PipelineSpec::Events(e) => e.columns(),
            PipelineSpec::Attributes(a) => a.columns(),
        }
    }
}

/// A loaded, validated config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file it came from (relative paths in it are relative to its folder).
    pub path: PathBuf,
    /// The Trig customer account everything this config syncs belongs to
    /// (top-level `tenant = "acme"`; `default` when absent).
    pub tenant: TenantName,
    /// `[store] url` as written, with a relative SQLite path resolved against
    /// the config's folder; empty when the URL comes from a secret
    /// ([`Config::resolve_store_url`] reads either).
    pub store_url: String,
    /// `[store] url = { env = "…" }` or `{ file = "…" }`: a URL holding a password.
    pub store_url_secret: Option<SecretRef>,
    pub connections: BTreeMap<String, ConnectionConfig>,
    pub pipelines: BTreeMap<String, PipelineConfig>,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            path: path.display().to_string(),
            errors: vec![ConfigError { key: "(file)".into(), message: format!("cannot read it: {e}") }],
        })?;
        Config::parse(&text, path)
    }

    /// Parses config text; `path` locates relative paths and names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut errs = Vec::new();
        let root: Table = match text.parse::<Table>() {
            Ok(t) => t,
            Err(e) => return Err(ConfigErrors { path: path.display().to_string(), errors: vec![syntax_error(text, &e)] }),
        };
        let mut r = Reader { errs: &mut errs, inline_secrets: false };
        r.unknown(&root, "", &["tenant", "store", "connections", "pipelines"]);
        let tenant = match root.get("tenant") {
            None => TenantName::default(),
            Some(Value::String(s)) => TenantName::parse(s.trim()).unwrap_or_else(|m| {
                r.err("tenant", m);
                TenantName::default()
            }),
            Some(_) => {
                r.err("tenant", "must be a string, e.g. tenant = \"acme\" (at the top of the file, before any [table])");
                TenantName::default()
            }
        };
        let (store_url, store_url_secret) = match r.table(&root, "store", "store") {
            Some(t) => {
                r.unknown(t, "store", &["url"]);
                match t.get("url") {
                    Some(Value::Table(_)) => (String::new(), r.secret(t, "url", "store.url", &base)),
                    _ => {
                        let url = r.string(t, "url", "store.url", true).map(|u| resolve_store_url(&u, &base)).unwrap_or_default();
                        if let Some(m) = store_url_problem(&url) {
                            r.err("store.url", m);
                        }
                        (url, None)
                    }
                }
            }
            None => {
                r.err("store", "missing: add [store] with url = \"sqlite://trig.db\"");
                (String::new(), None)
            }
        };
        let mut connections = BTreeMap::new();
        // Each connection's default catalog as written, so that a pipeline on a
        // connection with another problem is not also told to use full names.
        let mut written_catalogs: BTreeMap<String, Option<String>> = BTreeMap::new();
        if let Some(t) = root.get("connections").and_then(Value::as_table) {
            for (name, v) in t {
                let catalog = v.get("default_catalog").and_then(Value::as_str).map(str::trim).filter(|c| !c.is_empty());
                written_catalogs.insert(name.clone(), catalog.map(str::to_string));
            }
        }
        if let Some(t) = r.table(&root, "connections", "connections") {
            for (name, v) in t {
                let key = format!("connections.{name}");
                match v.as_table() {
                    Some(c) => {
                        if let Some(conn) = read_connection(&mut r, name, c, &key, &base) {
                            connections.insert(name.clone(), conn);
                        }
                    }
                    None => r.err(&key, "must be a table: [connections.<name>]"),
                }
            }
        }
        let mut pipelines = BTreeMap::new();
        if let Some(t) = r.table(&root, "pipelines", "pipelines") {
            for (name, v) in t {
                let key = format!("pipelines.{name}");
                match v.as_table() {
                    Some(p) => {
                        if let Some(pl) = read_pipeline(&mut r, name, p, &key, &connections, &written_catalogs) {
                            pipelines.insert(name.clone(), pl);
                        }
                    }
                    None => r.err(&key, "must be a table: [pipelines.<name>]"),
                }
            }
        }
        if errs.is_empty() {
            Ok(Config { path: path.to_path_buf(), tenant, store_url, store_url_secret, connections, pipelines })
        } else {
            Err(ConfigErrors { path: path.display().to_string(), errors: errs })
        }
    }

    pub fn connection(&self, name: &str) -> Result<&ConnectionConfig, String> {
        self.connections.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.connections.keys().map(String::as_str).collect();
            format!("{}: there is no [connections.{name}]; the connections are: {}", self.path.display(), list(&known))
        })
    }

    pub fn pipeline(&self, name: &str) -> Result<&PipelineConfig, String> {
        self.pipelines.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.pipelines.keys().map(String::as_str).collect();
            format!("{}: there is no [pipelines.{name}]; the pipelines are: {}", self.path.display(), list(&known))
        })
    }

    /// The pipelines that read through one connection.
    pub fn pipelines_of(&self, connection: &str) -> impl Iterator<Item = &PipelineConfig> {
        self.pipelines.values().filter(move |p| p.connection == connection)
    }
}

fn list(names: &[&str]) -> String {
    if names.is_empty() { "(none)".into() } else { names.join(", ") }
}

/// What is wrong with a store URL written in the file, if anything (the
/// password is never repeated).
fn store_url_problem(url: &str) -> Option<String> {
    if url.is_empty() || url.starts_with("sqlite://") {
        return None;
    }
    let Some(rest) = url.strip_prefix("postgres://").or_else(|| url.strip_prefix("postgresql://")) else {
        return Some("must start with sqlite:// (a file) or postgres:// (a server), e.g. url = \"sqlite://trig.db\"".into());
    };
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    match authority.rsplit_once('@') {
        Some((userinfo, _)) if userinfo.contains(':') => Some(
            "holds a password, and a secret is never written in the config file; put the whole URL in a variable or file: url = { env = \"TRIG_STORE_URL\" }"
                .into(),
        ),
        _ => None,
    }
}

impl Config {
    /// The store's URL: as written, or read from its variable or file.
    pub fn resolve_store_url(&self) -> Result<String, ConfigError> {
        match &self.store_url_secret {
            None => Ok(self.store_url.clone()),
            Some(s) => {
                let url = s.resolve("store.url")?.expose().to_string();
                let url = resolve_store_url(&url, self.path.parent().unwrap_or(Path::new("")));
                match url.split_once("://").map(|(scheme, _)| scheme) {
                    Some("sqlite" | "postgres" | "postgresql") => Ok(url),
                    _ => Err(ConfigError {
                        key: "store.url".into(),
                        message: "the URL read from its variable or file must start with sqlite:// or postgres://".into(),
                    }),
                }
            }
        }
    }
}

fn resolve_store_url(url: &str, base: &Path) -> String {
    match url.strip_prefix("sqlite://") {
        Some(p) if !p.starts_with('/') && !p.starts_with(":memory:") => format!("sqlite://{}", base.join(p).display()),
        _ => url.to_string(),
    }
}

struct Reader<'a> {
    errs: &'a mut Vec<ConfigError>,
    /// The API's bodies carry a secret itself (write-only); a file never does.
    inline_secrets: bool,
}

impl Reader<'_> {
    fn err(&mut self, key: &str, message: impl Into<String>) {
        self.errs.push(ConfigError { key: key.to_string(), message: message.into() });
    }
    fn unknown(&mut self, t: &Table, key: &str, known: &[&str]) {
        for k in t.keys() {
            if !known.contains(&k.as_str()) {
                let full = if key.is_empty() { k.clone() } else { format!("{key}.{k}") };
                let hint = databricks::suggest::closest(k, known).map(|s| format!("; did you mean `{s}`?")).unwrap_or_default();
                self.err(&full, format!("unknown key{hint} (known: {})", known.join(", ")));
            }
        }
    }
    fn table<'t>(&mut self, t: &'t Table, k: &str, key: &str) -> Option<&'t Table> {
        match t.get(k) {
            None => None,
            Some(Value::Table(x)) => Some(x),
            Some(_) => {
                self.err(key, "must be a table");
                None
            }
        }
    }
    fn string(&mut self, t: &Table, k: &str, key: &str, required: bool) -> Option<String> {
        match t.get(k) {
            None if required => {
                self.err(key, "missing (required)");
                None
            }
            None => None,
            Some(Value::String(s)) if s.trim().is_empty() => {
                self.err(key, "is empty");
                None
            }
            Some(Value::String(s)) => Some(s.trim().to_string()),
            Some(_) => {
                self.err(key, "must be a string");
                None
            }
        }
    }
    fn strings(&mut self, t: &Table, k: &str, key: &str) -> Vec<String> {
        match t.get(k) {
            None => Vec::new(),
            Some(Value::Array(a)) => {
                let mut out = Vec::new();
                for (i, v) in a.iter().enumerate() {
                    match v.as_str() {
                        Some(s) if !s.trim().is_empty() => out.push(s.trim().to_string()),
                        _ => self.err(&format!("{key}[{i}]"), "must be a non-empty string"),
                    }
                }
                out
            }
            Some(_) => {
                self.err(key, "must be an array of strings, e.g. [\"plan\", \"platform\"]");
                Vec::new()
            }
        }
    }
    fn duration(&mut self, t: &Table, k: &str, key: &str, default: Duration, range: (Duration, Duration)) -> Option<Duration> {
        match self.string(t, k, key, false) {
            None => Some(default),
            Some(s) => match parse_duration_in(&s, range) {
                Ok(d) => Some(d),
                Err(m) => {
                    self.err(key, m);
                    None
                }
            },
        }
    }
    fn secret(&mut self, t: &Table, k: &str, key: &str, base: &Path) -> Option<SecretRef> {
        match t.get(k) {
            None => None,
            Some(Value::Table(s)) => match (s.get("env").and_then(Value::as_str), s.get("file").and_then(Value::as_str), s.len()) {
                // A secret pasted where its variable's name or file belongs is never repeated.
                (Some(v), None, 1) if looks_like_secret(v) => {
                    self.err(&format!("{key}.env"), PASTED_SECRET);
                    None
                }
                (Some(v), None, 1) if !v.trim().is_empty() && !is_variable_name(v.trim()) => {
                    self.err(
                        &format!("{key}.env"),
                        "is not an environment variable name (letters, digits and _, not starting with a digit); write the variable's name, e.g. { env = \"ACME_DATABRICKS_TOKEN\" }",
                    );
                    None
                }
                (Some(v), None, 1) if !v.trim().is_empty() => Some(SecretRef::Env(v.trim().to_string())),
                (None, Some(f), 1) if looks_like_secret(f) => {
                    self.err(&format!("{key}.file"), PASTED_SECRET);
                    None
                }
                (None, Some(f), 1) if !f.trim().is_empty() => {
                    let p = Path::new(f.trim());
                    Some(SecretRef::File(if p.is_absolute() { p.to_path_buf() } else { base.join(p) }))
                }
                _ => {
                    self.err(key, "must be { env = \"VARIABLE\" } or { file = \"path\" }");
                    None
                }
            },
            Some(Value::String(v)) if self.inline_secrets => {
                if v.trim().is_empty() {
                    self.err(key, "is empty: send the secret itself (it is stored encrypted and never shown again)");
                    None
                } else {
                    Some(SecretRef::Inline(Secret::new(v.trim())))
                }
            }
            Some(Value::String(_)) => {
                self.err(key, "a secret is never written in the config file; use { env = \"VARIABLE\" } or { file = \"path\" }");
                None
            }
            Some(_) if self.inline_secrets => {
                self.err(key, "must be a string: the secret itself");
                None
            }
            Some(_) => {
                self.err(key, "must be { env = \"VARIABLE\" } or { file = \"path\" }");
                None
            }
        }
    }
}

/// TOML as JSON (dates as their text).
fn toml_to_json(v: &Value) -> serde_json::Value {
    match v {
        Value::String(s) => serde_json::Value::String(s.clone()),
        Value::Integer(i) => serde_json::json!(i),
        Value::Float(f) => serde_json::json!(f),
        Value::Boolean(b) => serde_json::Value::Bool(*b),
        Value::Datetime(d) => serde_json::Value::String(d.to_string()),
        Value::Array(a) => serde_json::Value::Array(a.iter().map(toml_to_json).collect()),
        Value::Table(t) => serde_json::Value::Object(t.iter().map(|(k, v)| (k.clone(), toml_to_json(v))).collect()),
    }
}

impl Config {
    /// What Test connection checks for connection `name`: its settings, its secret read, and every pipeline's source on it.
    pub fn check_input(&self, name: &str) -> Result<databricks::check::CheckInput, ConfigError> {
        let conn = self.connection(name).map_err(|message| ConfigError { key: "connection".into(), message })?;
        let credentials = conn.credentials()?;
        let tables = self
            .pipelines_of(name)
            .map(|p| databricks::check::TableCheck { pipeline: p.name.clone(), source: p.source.quoted(), columns: p.columns() })
            .collect();
        Ok(databricks::check::CheckInput {
            workspace_url: conn.workspace.base(),
            http_path: conn.http_path(),
            credentials,
            default_catalog: conn.default_catalog.clone(),
            allow_hosts: conn.allow_hosts.entries(),
            tables,
        })
    }

    /// Each pipeline's keys as written in the file, as JSON (what the API shows and takes).
    pub fn pipeline_definitions(&self) -> BTreeMap<String, serde_json::Value> {
        let Ok(text) = std::fs::read_to_string(&self.path) else { return BTreeMap::new() };
        let Ok(root) = text.parse::<Table>() else { return BTreeMap::new() };
        root.get("pipelines")
            .and_then(Value::as_table)
            .map(|t| t.iter().filter(|(k, _)| self.pipelines.contains_key(*k)).map(|(k, v)| (k.clone(), toml_to_json(v))).collect())
            .unwrap_or_default()
    }
}

/// JSON as TOML: `null` is an absent key (how a JSON body says "none").
fn json_to_toml(v: &serde_json::Value) -> Option<Value> {
    use serde_json::Value as J;
    Some(match v {
        J::Null => return None,
        J::Bool(b) => Value::Boolean(*b),
        J::Number(n) => match n.as_i64() {
            Some(i) => Value::Integer(i),
            None => Value::Float(n.as_f64()?),
        },
        J::String(s) => Value::String(s.clone()),
        J::Array(a) => Value::Array(a.iter().filter_map(json_to_toml).collect()),
        J::Object(o) => Value::Table(o.iter().filter_map(|(k, v)| Some((k.clone(), json_to_toml(v)?))).collect()),
    })
}

/// A pipeline as the service's API receives it: the keys of
/// `[pipelines.NAME]` as a JSON object, against the tenant's connections.
/// The same validation and messages as the file's; each error's key is the
/// body's (`event_id`, `where`).
pub fn pipeline_from_json(
    name: &str,
    body: &serde_json::Value,
    connections: &BTreeMap<String, ConnectionConfig>,
) -> Result<PipelineConfig, Vec<ConfigError>> {
    let Some(Value::Table(t)) = body.as_object().and(json_to_toml(body)) else {
        return Err(vec![ConfigError { key: "body".into(), message: "must be a JSON object of the pipeline's keys".into() }]);
    };
    let catalogs: BTreeMap<String, Option<String>> = connections.iter().map(|(n, c)| (n.clone(), c.default_catalog.clone())).collect();
    let mut errs = Vec::new();
    let mut r = Reader { errs: &mut errs, inline_secrets: false };
    let p = read_pipeline(&mut r, name, &t, "", connections, &catalogs);
    match p {
        Some(p) if errs.is_empty() => Ok(p),
        _ => Err(errs
            .into_iter()
            .map(|e| ConfigError { key: e.key.strip_prefix('.').map(str::to_string).unwrap_or(e.key), message: e.message })
            .collect()),
    }
}

/// A connection as the service's API receives it: the keys of
/// `[connections.NAME]` as a JSON object, the secret itself (`"token"` or
/// `"oauth": {"client_secret"}`) instead of `{ env }` or `{ file }`. The
/// same validation and messages as the file's; each error's key is the
/// body's (`workspace_url`, `oauth.client_secret`).
pub fn connection_from_json(name: &str, body: &serde_json::Value) -> Result<ConnectionConfig, Vec<ConfigError>> {
    let Some(Value::Table(mut t)) = body.as_object().and(json_to_toml(body)) else {
        return Err(vec![ConfigError { key: "body".into(), message: "must be a JSON object of the connection's keys".into() }]);
    };
    let mut errs = Vec::new();
    let mut r = Reader { errs: &mut errs, inline_secrets: true };
    if t.remove("profile").is_some() {
        r.err(
            ".profile",
            "a profile is a file on the machine that runs the CLI, not something the service can read; send workspace_url, http_path and a token or oauth",
        );
    }
    let conn = read_connection(&mut r, name, &t, "", Path::new(""));
    match conn {
        Some(c) if errs.is_empty() => Ok(c),
        _ => Err(errs
            .into_iter()
            .map(|e| ConfigError { key: e.key.strip_prefix('.').map(str::to_string).unwrap_or(e.key), message: e.message })
            .collect()),
    }
}

/// `profile = "NAME"`: a profile of the Databricks config file (the host and
/// credentials the Databricks CLI uses), instead of the connection's own keys.
fn read_profile(r: &mut Reader, c: &Table, key: &str) -> Option<databricks::profile::Profile> {
    let pkey = format!("{key}.profile");
    let name = r.string(c, "profile", &pkey, false)?;
    let own: Vec<&str> = ["workspace_url", "token", "oauth"].into_iter().filter(|k| c.contains_key(*k)).collect();
    if !own.is_empty() {
        r.err(
            &pkey,
            format!("a connection takes its host and credentials from a profile or from its own keys, not both; remove {}", own.join(", ")),
        );
        return None;
    }
    let loaded = databricks::profile::default_file().and_then(|file| databricks::profile::load(&file, &name));
    match loaded {
        Ok(p) if p.host.is_none() => {
            r.err(
                &pkey,
                format!("profile [{name}] in {} has no host; add host = https://<workspace>.cloud.databricks.com", p.file.display()),
            );
            None
        }
        Ok(p) => Some(p),
        Err(e) => {
            r.err(&pkey, e.to_string());
            None
        }
    }
}

fn read_connection(r: &mut Reader, name: &str, c: &Table, key: &str, base: &Path) -> Option<ConnectionConfig> {
    // Through the API a profile (a file on the CLI's machine) is not a key.
    let keys: &[&str] = if r.inline_secrets {
        &["workspace_url", "http_path", "token", "oauth", "default_catalog", "allow_hosts"]
    } else {
        &["workspace_url", "http_path", "token", "oauth", "profile", "default_catalog", "allow_hosts"]
    };
    r.unknown(c, key, keys);
    let before = r.errs.len();
    let profile = read_profile(r, c, key);
    let has_profile = c.contains_key("profile");
    let allow_hosts = r.strings(c, "allow_hosts", &format!("{key}.allow_hosts"));
    let allow = match AllowHosts::parse(&allow_hosts) {
        Ok(a) => a,
        Err(m) => {
            r.err(&format!("{key}.allow_hosts"), m);
            AllowHosts::default()
        }
    };
    let workspace_url = match &profile {
        Some(p) => p.host.clone(),
        None if has_profile => None,
        None => r.string(c, "workspace_url", &format!("{key}.workspace_url"), true),
    };
    let workspace = workspace_url.and_then(|u| match WorkspaceUrl::parse(&u, &allow) {
        Ok(w) => Some(w),
        Err(e) => {
            r.err(&format!("{key}.{}", if has_profile { "profile" } else { "workspace_url" }), e.to_string());
            None
        }
    });
    let from_profile = profile.as_ref().and_then(|p| p.warehouse_id.as_ref()).map(|id| format!("/sql/1.0/warehouses/{id}"));
    let http_path = match r.string(c, "http_path", &format!("{key}.http_path"), from_profile.is_none()) {
        Some(p) => Some(p),
        None => from_profile,
    };
    let warehouse = http_path.and_then(|p| match WarehouseId::from_http_path(&p) {
        Ok(w) => Some(w),
        Err(e) => {
            r.err(&format!("{key}.http_path"), e.to_string());
            None
        }
    });
    let token = r.secret(c, "token", &format!("{key}.token"), base);
    let oauth = match r.table(c, "oauth", &format!("{key}.oauth")) {
        Some(o) => {
            let k = format!("{key}.oauth");
            r.unknown(o, &k, &["client_id", "client_secret"]);
            let id = r.string(o, "client_id", &format!("{k}.client_id"), true);
            let secret = r.secret(o, "client_secret", &format!("{k}.client_secret"), base);
            if o.get("client_secret").is_none() {
                r.err(&format!("{k}.client_secret"), "missing: add client_secret = { env = \"VARIABLE\" }");
            }
            id.zip(secret).map(|(client_id, client_secret)| AuthConfig::OAuth { client_id, client_secret })
        }
        None => None,
    };
    let auth = match (token, oauth, c.contains_key("token") || c.contains_key("oauth")) {
        (None, None, false) if has_profile => profile.as_ref().map(|p| AuthConfig::Profile { file: p.file.clone(), name: p.name.clone() }),
        (Some(_), Some(_), _) => {
            r.err(key, "set either token or oauth, not both (OAuth client credentials are recommended for a service principal)");
            None
        }
        (Some(t), None, _) => Some(AuthConfig::Token(t)),
        (None, Some(o), _) => Some(o),
        (None, None, false) => {
            r.err(&format!("{key}.token"), "missing: set token = { env = \"VARIABLE\" } or an [oauth] client id and secret");
            None
        }
        (None, None, true) => None,
    };
    let default_catalog = r.string(c, "default_catalog", &format!("{key}.default_catalog"), false);
    if r.errs.len() > before {
        return None;
    }
    Some(ConnectionConfig {
        name: name.to_string(),
        workspace: workspace?,
        warehouse: warehouse?,
        auth: auth?,
        default_catalog,
        allow_hosts: allow,
    })
}

const EVENT_KEYS: &[&str] = &[
    "connection",
    "kind",
    "source",
    "schedule",
    "event_id",
    "event_name",
    "timestamp",
    "user_id",
    "user_id_kind",
    "email",
    "properties",
    "properties_column",
    "timezone",
    "where",
    "cursor",
    "lookback",
    "backfill_from",
];
const PEOPLE_KEYS: &[&str] =
    &["connection", "kind", "source", "schedule", "id", "name", "email", "organisation_id", "include", "exclude", "updated_at", "lookback"];
const ORG_KEYS: &[&str] =
    &["connection", "kind", "source", "schedule", "id", "name", "domain", "include", "exclude", "updated_at", "lookback"];

fn read_pipeline(
    r: &mut Reader,
    name: &str,
    p: &Table,
    key: &str,
    connections: &BTreeMap<String, ConnectionConfig>,
    written_catalogs: &BTreeMap<String, Option<String>>,
) -> Option<PipelineConfig> {
    let before = r.errs.len();
    let k = |f: &str| format!("{key}.{f}");
    let connection = r.string(p, "connection", &k("connection"), true);
    let default_catalog = connection.as_ref().and_then(|c| written_catalogs.get(c)).cloned().flatten();
    if let Some(c) = &connection
        && !connections.contains_key(c)
        && !r.errs.iter().any(|e| e.key.starts_with(&format!("connections.{c}")))
    {
        let known: Vec<&str> = connections.keys().map(String::as_str).collect();
        r.err(&k("connection"), format!("there is no [connections.{c}] (known: {})", list(&known)));
    }
    let kind = r.string(p, "kind", &k("kind"), true);
    let source = r.string(p, "source", &k("source"), true).and_then(|s| match TableName::parse(&s, default_catalog.as_deref()) {
        Ok(t) => Some(t),
        Err(e) => {
            r.err(&k("source"), e.to_string());
            None
        }
    });
    let (default_schedule, keys) = match kind.as_deref() {
        Some("events") => (Duration::from_secs(15 * 60), EVENT_KEYS),
        Some("people") => (Duration::from_secs(24 * 3600), PEOPLE_KEYS),
        Some("organisations") => (Duration::from_secs(24 * 3600), ORG_KEYS),
        Some(other) => {
            r.err(&k("kind"), format!("`{other}` is not a pipeline kind; use events, people or organisations"));
            return None;
        }
        None => return None,
    };
    r.unknown(p, key, keys);
    let schedule = r.duration(p, "schedule", &k("schedule"), default_schedule, SCHEDULE_RANGE);
    let spec = if kind.as_deref() == Some("events") {
        let event_id = r.string(p, "event_id", &k("event_id"), true);
        let event_name = r.string(p, "event_name", &k("event_name"), true);
        let timestamp = r.string(p, "timestamp", &k("timestamp"), true);
        let user_id = r.string(p, "user_id", &k("user_id"), true);
        let user_id_kind = match r.string(p, "user_id_kind", &k("user_id_kind"), false).as_deref() {
            None | Some("external_id") => Some(IdentityRule::ExternalId),
            Some("email") => Some(IdentityRule::Email),
            Some(o) => {
                r.err(&k("user_id_kind"), format!("`{o}` is not allowed; use external_id or email"));
                None
            }
        };
        let email = r.string(p, "email", &k("email"), false);
        let properties = r.strings(p, "properties", &k("properties"));
        let properties_column = r.string(p, "properties_column", &k("properties_column"), false);
        let timezone = match r.string(p, "timezone", &k("timezone"), false) {
            None => Some(Zone::Fixed(FixedOffset::east_opt(0).expect("UTC is an offset"))),
            Some(tz) => match Zone::parse(&tz) {
                Ok(z) => Some(z),
                Err(m) => {
                    r.err(&k("timezone"), m);
                    None
                }
            },
        };
        let filter = r.string(p, "where", &k("where"), false);
        if let Some(f) = &filter
            && let Err(e) = databricks::sql::validate_filter(f)
        {
            r.err(&k("where"), e.to_string());
        }
        let cursor = r.string(p, "cursor", &k("cursor"), false);
        let lookback = r.duration(p, "lookback", &k("lookback"), Duration::from_secs(2 * 3600), LOOKBACK_RANGE);
        let backfill_from = match r.string(p, "backfill_from", &k("backfill_from"), false) {
            None => None,
            Some(s) => match DateTime::parse_from_rfc3339(&s) {
                Ok(t) => Some(t.with_timezone(&Utc)),
                Err(_) => {
                    r.err(&k("backfill_from"), format!("`{s}` is not an RFC 3339 time; write e.g. 2025-01-01T00:00:00Z"));
                    None
                }
            },
        };
        if r.errs.len() > before {
            return None;
        }
        PipelineSpec::Events(EventsSpec {
            event_id: event_id?,
            event_name: event_name?,
            timestamp: timestamp?,
            user_id: user_id?,
            user_id_kind: user_id_kind?,
            email,
            properties,
            properties_column,
            timezone: timezone?,
            filter,
            cursor,
            lookback: lookback?,
            backfill_from,
        })
    } else {
        let people = kind.as_deref() == Some("people");
        let id = r.string(p, "id", &k("id"), true);
        let name_col = r.string(p, "name", &k("name"), true);
        let email = if people { r.string(p, "email", &k("email"), false) } else { None };
        let organisation_id = if people { r.string(p, "organisation_id", &k("organisation_id"), false) } else { None };
        let domain = if people { None } else { r.string(p, "domain", &k("domain"), false) };
        let include = r.strings(p, "include", &k("include"));
        let exclude = r.strings(p, "exclude", &k("exclude"));
        for c in &include {
            if exclude.contains(c) {
                r.err(&k("exclude"), format!("`{c}` is both included and excluded"));
            }
        }
        for (required, col) in [("id", &id), ("name", &name_col)] {
            if let Some(c) = col
                && exclude.contains(c)
            {
                r.err(&k("exclude"), format!("`{c}` is the {required} column, which is always imported; remove it from exclude"));
            }
        }
        let updated_at = r.string(p, "updated_at", &k("updated_at"), false);
        let lookback = r.duration(p, "lookback", &k("lookback"), Duration::from_secs(3600), LOOKBACK_RANGE);
        if r.errs.len() > before {
            return None;
        }
        PipelineSpec::Attributes(AttributesSpec {
            kind: if people { Entity::People } else { Entity::Organisations },
            id: id?,
            name: name_col?,
            email,
            organisation_id,
            domain,
            include,
            exclude,
            updated_at,
            lookback: lookback?,
        })
    };
    if r.errs.len() > before {
        return None;
    }
    Some(PipelineConfig { name: name.to_string(), connection: connection?, source: source?, schedule: schedule?, spec })
}

/// How often a pipeline may run: from every minute to once a month.
pub const SCHEDULE_RANGE: (Duration, Duration) = (Duration::from_secs(60), Duration::from_secs(30 * 86_400));
/// How far back a read may start before the last cursor: up to 30 days.
pub const LOOKBACK_RANGE: (Duration, Duration) = (Duration::ZERO, Duration::from_secs(30 * 86_400));

/// `30s`, `15m`, `2h`, `1d`, `1h 30m` (humantime's forms), whole seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration ({e}); write a number and a unit: 30s, 15m, 2h, 1d, or 1h 30m"))?;
    if d.subsec_nanos() != 0 {
        return Err(format!("`{s}` is not a whole number of seconds"));
    }
    Ok(d)
}

/// [`parse_duration`] within `range` (inclusive); out of range names the range.
pub fn parse_duration_in(s: &str, (min, max): (Duration, Duration)) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < min || d > max {
        return Err(format!(
            "`{}` is out of range: it must be between {} and {}",
            s.trim(),
            humantime::format_duration(min),
            humantime::format_duration(max)
        ));
    }
    Ok(d)
}

/// What a pasted secret gets instead of an echo.
const PASTED_SECRET: &str = "this looks like a secret itself, not where to find one (it is not repeated here). Put the secret in an environment variable or a file and write its name, e.g. token = { env = \"ACME_DATABRICKS_TOKEN\" }; and since it was pasted into a file, consider rotating it";

/// A Databricks token or secret by its well-known prefixes (personal access
/// tokens `dapi…`, OAuth secrets `dose…`, `dkea…`), a JWT, or any long run of
/// hex or base64 without a path separator.
pub fn looks_like_secret(v: &str) -> bool {
    let v = v.trim();
    let prefixed = ["dapi", "dose", "dkea", "eyJ"].iter().any(|p| v.starts_with(p)) && v.len() >= 20;
    let opaque = v.len() >= 32
        && !v.contains(['/', '\\', '.', ' '])
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'+' | b'='))
        && v.bytes().any(|b| b.is_ascii_digit())
        && v.bytes().any(|b| b.is_ascii_lowercase());
    prefixed || opaque
}

fn is_variable_name(v: &str) -> bool {
    let mut b = v.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_') && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// The keys whose values are secrets: never quoted, whatever their form.
const SECRET_KEYS: &[&str] = &["token", "client_secret", "password", "secret"];

/// A TOML syntax error with its line and column and without the offending
/// text: the line may hold a secret pasted unquoted.
fn syntax_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let at = e.span().map(|s| s.start).unwrap_or(0).min(text.len());
    let line_no = text[..at].matches('\n').count() + 1;
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let col = text[line_start..at].chars().count() + 1;
    let line = text[line_start..].lines().next().unwrap_or("");
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim())
        .filter(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'"')));
    let mut message = e.message().trim().replace('\n', " ");
    // The parser's own words may quote a piece of the value.
    if let Some((_, value)) = line.split_once('=') {
        for piece in value.split(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '{' | '}' | '=' | ',')) {
            if piece.len() >= 4 && message.contains(piece) {
                message = message.replace(piece, "…");
            }
        }
    }
    let secret = key.is_some_and(|k| SECRET_KEYS.contains(&k.trim_matches('"')));
    let about = match key {
        Some(k) if secret => format!(
            " in the value of `{}` (not shown: it may be a secret; a secret is never written in the config file — use {} = {{ env = \"VARIABLE\" }} or {{ file = \"path\" }})",
            k.trim_matches('"'),
            k.trim_matches('"')
        ),
        Some(k) => format!(" in the value of `{}`", k.trim_matches('"')),
        None => String::new(),
    };
    ConfigError { key: "(syntax)".into(), message: format!("line {line_no}, column {col}: {message}{about}") }
}

/// The time zone hint for zone-less values: an IANA zone or a fixed offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zone {
    Fixed(FixedOffset),
    Named(chrono_tz::Tz),
}

impl Zone {
    /// `UTC`, `+02:00` (within ±18:00), or an IANA name such as `Europe/Berlin`.
    pub fn parse(s: &str) -> Result<Zone, String> {
        if let Some(o) = parse_offset(s) {
            return o.map(Zone::Fixed);
        }
        s.trim().parse::<chrono_tz::Tz>().map(Zone::Named).map_err(|_| {
            format!("`{}` is not a time zone; use an IANA name such as Europe/Berlin, UTC, or a fixed offset such as +02:00", s.trim())
        })
    }

    /// The instant a wall-clock time in this zone names. In a daylight-saving
    /// overlap the earlier instant; in a gap (a time that never happened) `None`.
    pub fn to_utc(&self, t: chrono::NaiveDateTime) -> Option<DateTime<Utc>> {
        use chrono::TimeZone;
        match self {
            Zone::Fixed(o) => o.from_local_datetime(&t).earliest().map(|d| d.with_timezone(&Utc)),
            Zone::Named(z) => z.from_local_datetime(&t).earliest().map(|d| d.with_timezone(&Utc)),
        }
    }
}

impl fmt::Display for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Zone::Fixed(o) if o.local_minus_utc() == 0 => f.write_str("UTC"),
            Zone::Fixed(o) => write!(f, "{o}"),
            Zone::Named(z) => write!(f, "{}", z.name()),
        }
    }
}

/// `UTC`, `Z`, or `±HH:MM` within ±18:00 with minutes below 60 (the range
/// SQL and ISO 8601 allow). `None`: not an offset at all; `Err`: an offset
/// out of range.
fn parse_offset(tz: &str) -> Option<Result<FixedOffset, String>> {
    let t = tz.trim();
    if t.eq_ignore_ascii_case("utc") || t == "Z" || t.eq_ignore_ascii_case("etc/utc") {
        return FixedOffset::east_opt(0).map(Ok);
    }
    let sign = match t.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let bad = || Some(Err(format!("`{t}` is not an offset from -18:00 to +18:00; write ±HH:MM, e.g. +02:00 or -05:30")));
    let Some((h, m)) = t[1..].split_once(':') else { return bad() };
    if h.len() != 2 || m.len() != 2 || !h.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
        return bad();
    }
    let (h, m): (i32, i32) = (h.parse().ok()?, m.parse().ok()?);
    if m > 59 || h * 60 + m > 18 * 60 {
        return bad();
    }
    FixedOffset::east_opt(sign * (h * 3600 + m * 60)).map(Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[store]
url = "sqlite://trig.db"

[connections.acme]
workspace_url = "https://dbc-a1b2c3d4-e5f6.cloud.databricks.com"
http_path = "/sql/1.0/warehouses/abcdef1234567890"
token = { env = "ACME_DATABRICKS_TOKEN" }
default_catalog = "main"
allow_hosts = []

[pipelines.acme_events]
connection = "acme"
kind = "events"
source = "product.events_v"
event_id = "event_id"
event_name = "event_name"
timestamp = "event_ts"
user_id = "user_id"
user_id_kind = "external_id"
email = "email"
properties = ["plan", "platform"]
timezone = "UTC"
where = "environment = 'production'"
cursor = "ingested_at"
lookback = "2h"
backfill_from = "2025-01-01T00:00:00Z"
schedule = "15m"

[pipelines.acme_people]
connection = "acme"
kind = "people"
source = "crm.people_v"
id = "user_id"
name = "full_name"
email = "email"
organisation_id = "account_id"
include = []
exclude = ["internal_notes"]
updated_at = "updated_at"
schedule = "24h"
"#;

    #[test]
    fn a_store_url_with_a_password_comes_from_a_secret() {
        let with = |store: &str| GOOD.replacen("url = \"sqlite://trig.db\"", store, 1);
        let e = Config::parse(&with("url = \"postgres://trig:hunter2@db:5432/trig\""), Path::new("/etc/trig/trig.toml")).unwrap_err();
        assert_eq!(e.errors[0].key, "store.url");
        assert!(e.errors[0].message.contains("{ env = \"TRIG_STORE_URL\" }"), "{e}");
        assert!(!e.to_string().contains("hunter2"), "the password is never repeated: {e}");
        let c = Config::parse(&with("url = \"postgres://trig@db:5432/trig\""), Path::new("/etc/trig/trig.toml")).unwrap();
        assert_eq!(c.resolve_store_url().unwrap(), "postgres://trig@db:5432/trig", "no password: fine as written");
        let c = Config::parse(&with("url = { env = \"TRIG_TEST_STORE_URL_X\" }"), Path::new("/etc/trig/trig.toml")).unwrap();
        let e = c.resolve_store_url().unwrap_err();
        assert!(e.message.contains("TRIG_TEST_STORE_URL_X is not set"), "{e:?}");
        let e = Config::parse(&with("url = \"mysql://db\""), Path::new("/etc/trig/trig.toml")).unwrap_err();
        assert!(e.errors[0].message.contains("sqlite:// (a file) or postgres://"), "{e}");
    }

    #[test]
    fn a_connection_from_the_api_takes_its_secret_itself_with_the_files_messages() {
        let body = serde_json::json!({
            "workspace_url": "https://adb-1234567890123456.7.azuredatabricks.net",
            "http_path": "/sql/1.0/warehouses/abc123",
            "token": "dapi-the-secret",
            "default_catalog": null,
        });
        let c = connection_from_json("prod", &body).unwrap();
        assert_eq!(c.warehouse.to_string(), "abc123");
        assert_eq!(c.default_catalog, None, "null is absent");
        match &c.auth {
            AuthConfig::Token(r) => assert_eq!(r.resolve("token").unwrap().expose(), "dapi-the-secret"),
            other => panic!("{other:?}"),
        }
        let e = connection_from_json(
            "prod",
            &serde_json::json!({"workspace_url": "http://localhost:1", "http_path": "/sql/1.0/nothing", "oauth": {"client_id": "x"}, "tokne": "y"}),
        )
        .unwrap_err();
        let keys: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
        for k in ["tokne", "workspace_url", "http_path", "oauth.client_secret"] {
            assert!(keys.contains(&k), "{k} in {e:?}");
        }
        assert!(
            e.iter().any(|e| e.key == "tokne" && e.message.contains("did you mean `token`") && !e.message.contains("profile")),
            "{e:?}"
        );
        let e = connection_from_json("prod", &serde_json::json!({"profile": "acme"})).unwrap_err();
        assert!(e.iter().any(|e| e.key == "profile" && e.message.contains("not something the service can read")), "{e:?}");
        let e = connection_from_json("prod", &serde_json::json!([1])).unwrap_err();
        assert_eq!(e[0].key, "body");
        let e = connection_from_json(
            "prod",
            &serde_json::json!({"workspace_url": "https://adb-1.7.azuredatabricks.net", "http_path": "/sql/1.0/warehouses/abc", "token": " "}),
        )
        .unwrap_err();
        assert!(e.iter().any(|e| e.key == "token" && e.message.contains("is empty")), "{e:?}");
    }

    #[test]
    fn a_pipeline_from_the_api_is_read_as_the_file_reads_it() {
        let c = Config::parse(GOOD, Path::new("/etc/trig/trig.toml")).unwrap();
        let body = serde_json::json!({
            "connection": "acme", "kind": "events", "source": "product.events",
            "event_id": "event_id", "event_name": "event_name", "timestamp": "event_ts", "user_id": "user_id",
        });
        let p = pipeline_from_json("acme_events", &body, &c.connections).unwrap();
        assert_eq!((p.kind(), p.source.full_name()), ("events", "main.product.events".to_string()));
        let e = pipeline_from_json(
            "x",
            &serde_json::json!({"connection": "nope", "kind": "events", "source": "a.b", "evnt_id": "e"}),
            &c.connections,
        )
        .unwrap_err();
        let keys: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
        assert!(keys.contains(&"connection") && keys.contains(&"evnt_id"), "{e:?}");
        assert!(e.iter().any(|e| e.key == "connection" && e.message.contains("there is no [connections.nope]")), "{e:?}");
    }

    #[test]
    fn a_config_names_its_tenant_at_the_top() {
        let c = Config::parse(&format!("tenant = \"acme\"\n{GOOD}"), Path::new("/etc/trig/trig.toml")).unwrap();
        assert_eq!(c.tenant.as_str(), "acme");
        let e = Config::parse(&format!("tenant = \"Acme Corp\"\n{GOOD}"), Path::new("/etc/trig/trig.toml")).unwrap_err();
        assert_eq!(e.errors[0].key, "tenant");
        assert!(e.errors[0].message.contains("lower-case letters"), "{e}");
        let e = Config::parse(&format!("tenant = 7\n{GOOD}"), Path::new("/etc/trig/trig.toml")).unwrap_err();
        assert!(e.errors[0].message.contains("before any [table]"), "{e}");
    }

    #[test]
    fn the_documented_example_loads() {
        let c = Config::parse(GOOD, Path::new("/etc/trig/trig.toml")).unwrap();
        assert_eq!(c.store_url, "sqlite:///etc/trig/trig.db");
        assert_eq!(c.tenant.as_str(), "default", "no tenant = the default tenant");
        let e = c.pipeline("acme_events").unwrap();
        assert_eq!(e.schedule, Duration::from_secs(900));
        let PipelineSpec::Events(ev) = &e.spec else { panic!() };
        assert_eq!(ev.cursor_column(), "ingested_at");
        assert_eq!(ev.lookback, Duration::from_secs(7200));
        assert_eq!(e.columns(), ["event_id", "event_name", "event_ts", "user_id", "email", "plan", "platform", "ingested_at"]);
        assert_eq!(c.pipelines_of("acme").count(), 2);
        assert_eq!(c.connection("acme").unwrap().auth, AuthConfig::Token(SecretRef::Env("ACME_DATABRICKS_TOKEN".into())));
    }

    #[test]
    fn every_error_is_reported_at_once_with_its_key() {
        let bad = GOOD
            .replace("lookback = \"2h\"", "lookback = \"two hours\"")
            .replace("token = { env = \"ACME_DATABRICKS_TOKEN\" }", "token = \"dapi123\"")
            .replace("kind = \"people\"", "kind = \"persons\"")
            .replace("user_id_kind = \"external_id\"", "user_id_kind = \"external_id\"\nevent_nmae = \"x\"")
            .replace("http_path = \"/sql/1.0/warehouses/abcdef1234567890\"", "http_path = \"/sql/protocolv1/o/1/0123\"");
        let e = Config::parse(&bad, Path::new("trig.toml")).unwrap_err();
        let keys: Vec<&str> = e.errors.iter().map(|e| e.key.as_str()).collect();
        // The connection's own problem is not repeated as a problem of every pipeline on it.
        assert!(!keys.iter().any(|k| k.ends_with(".source")), "{keys:?}");
        for want in [
            "connections.acme.http_path",
            "connections.acme.token",
            "pipelines.acme_events.lookback",
            "pipelines.acme_events.event_nmae",
            "pipelines.acme_people.kind",
        ] {
            assert!(keys.contains(&want), "{want} not in {keys:?}");
        }
        let text = e.to_string();
        assert!(text.contains("did you mean `event_name`"), "{text}");
        assert!(text.contains("never written in the config file"), "{text}");
        assert!(!text.contains("dapi123"), "a secret leaked: {text}");
    }

    #[test]
    fn secrets_resolve_from_files_and_say_what_is_missing() {
        let dir = std::env::temp_dir().join(format!("trig-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("tok"), "dapi-from-file\n").unwrap();
        let r = SecretRef::File(dir.join("tok"));
        assert_eq!(r.resolve("k").unwrap().expose(), "dapi-from-file");
        let missing = SecretRef::Env("TRIG_CONFIG_TEST_SURELY_UNSET".into()).resolve("connections.a.token").unwrap_err();
        assert!(missing.message.contains("TRIG_CONFIG_TEST_SURELY_UNSET is not set"));
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn durations_and_offsets_parse() {
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("1d").unwrap(), Duration::from_secs(86400));
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("15").is_err());
        assert!(parse_duration("m").is_err());
        assert_eq!(parse_offset("+02:00"), FixedOffset::east_opt(7200).map(Ok));
        assert_eq!(parse_offset("-05:30"), FixedOffset::east_opt(-19800).map(Ok));
        assert_eq!(parse_offset("UTC"), FixedOffset::east_opt(0).map(Ok));
        assert_eq!(parse_offset("Europe/Berlin"), None);
        for bad in ["+02:75", "+1193046:29", "+19:00", "-18:01", "+2:00", "+02:0", "+0a:00", "+02"] {
            let e = Zone::parse(bad).unwrap_err();
            assert!(e.contains("-18:00 to +18:00"), "{bad}: {e}");
        }
        assert!(Zone::parse("+18:00").is_ok());
        let berlin = Zone::parse("Europe/Berlin").unwrap();
        let summer = chrono::NaiveDate::from_ymd_opt(2026, 7, 1).unwrap().and_hms_opt(12, 0, 0).unwrap();
        assert_eq!(berlin.to_utc(summer).unwrap().to_rfc3339(), "2026-07-01T10:00:00+00:00");
        let gap = chrono::NaiveDate::from_ymd_opt(2026, 3, 29).unwrap().and_hms_opt(2, 30, 0).unwrap();
        assert_eq!(berlin.to_utc(gap), None);
        assert!(Zone::parse("Mars/Olympus").unwrap_err().contains("IANA"));
    }

    #[test]
    fn every_duration_has_a_range_named_in_the_error() {
        for (key, value, want) in [
            ("lookback = \"2h\"", "lookback = \"106751991d\"", "pipelines.acme_events.lookback"),
            ("lookback = \"2h\"", "lookback = \"31d\"", "pipelines.acme_events.lookback"),
            ("schedule = \"15m\"", "schedule = \"10s\"", "pipelines.acme_events.schedule"),
            ("schedule = \"24h\"", "schedule = \"400d\"", "pipelines.acme_people.schedule"),
        ] {
            let e = Config::parse(&GOOD.replacen(key, value, 1), Path::new("trig.toml")).unwrap_err();
            let err = e.errors.iter().find(|x| x.key == want).unwrap_or_else(|| panic!("{want} in {e}"));
            assert!(err.message.contains("out of range") && err.message.contains(" and "), "{}", err.message);
        }
        let e = Config::parse(&GOOD.replace("timezone = \"UTC\"", "timezone = \"+02:75\""), Path::new("trig.toml")).unwrap_err();
        assert!(e.to_string().contains("pipelines.acme_events.timezone: `+02:75` is not an offset from -18:00 to +18:00"), "{e}");
    }

    #[test]
    fn a_secret_is_never_echoed_from_a_broken_or_misused_config() {
        let secret = "dapi0123456789abcdef0123456789abcdef";
        let env = "token = { env = \"ACME_DATABRICKS_TOKEN\" }";
        for broken in [
            format!("token = {secret}"),
            format!("token = \"{secret}"),
            format!("token = '{secret}"),
            format!("token = {{ env = \"{secret}\" }}"),
            format!("token = {{ env = \"{secret}"),
            format!("token = {{ file = \"{secret}\" }}"),
            format!("token = {{ env = \"{}\" }}", &secret[4..]),
        ] {
            let e = Config::parse(&GOOD.replace(env, &broken), Path::new("trig.toml")).unwrap_err();
            let text = e.to_string();
            assert!(!text.contains(&secret[4..20]), "{broken}: the secret leaked: {text}");
            assert!(text.contains("connections.acme.token") || text.contains("(syntax): line "), "{broken}: names where: {text}");
        }
        // A syntax error names the line and the key, and says why the value is not shown.
        let e = Config::parse(&GOOD.replace(env, &format!("token = {secret}")), Path::new("trig.toml")).unwrap_err();
        assert!(e.to_string().contains("line 8, column") && e.to_string().contains("value of `token` (not shown"), "{e}");
        // A token where a variable's name belongs is recognised as one.
        let e = Config::parse(&GOOD.replace(env, &format!("token = {{ env = \"{secret}\" }}")), Path::new("trig.toml")).unwrap_err();
        assert!(e.to_string().contains("connections.acme.token.env: this looks like a secret itself"), "{e}");
    }
}

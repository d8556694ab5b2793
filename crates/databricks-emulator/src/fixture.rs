//! Workspace fixtures: one TOML file declaring warehouses, principals,
//! tokens, catalogs, schemas, tables (from CSV, NDJSON or Parquet files, or
//! generated), views, grants and warehouse permissions.
//!
//! ```toml
//! [workspace]
//! org_id = "1234567890123456"
//! default_catalog = "main"
//!
//! [dataset]            # what `generate = "..."` tables are made of
//! events = 100000
//! seed = 7
//!
//! [[warehouses]]
//! id = "a1b2c3d4e5f60718"
//! name = "Trig warehouse"
//! permissions = { "trig-sync" = "CAN_USE" }
//!
//! [[principals]]
//! user_name = "trig-sync"
//! kind = "service_principal"
//!
//! [[tokens]]
//! name = "service_principal"     # how the start-up line names it
//! principal = "trig-sync"        # value: omitted = a fresh random token
//!
//! [[catalogs]]
//! name = "main"
//! [[catalogs.schemas]]
//! name = "crm"
//! [[catalogs.schemas.tables]]
//! name = "people"
//! csv = "people.csv"             # relative to the fixture file
//! columns = [{ name = "user_id", type = "STRING" }, { name = "signup_date", type = "DATE" }]
//! [[catalogs.schemas.views]]
//! name = "people_v"
//! sql = "SELECT * FROM main.crm.people"
//!
//! [[grants]]
//! principal = "trig-sync"
//! securable_type = "catalog"
//! full_name = "main"
//! privileges = ["USE_CATALOG", "USE_SCHEMA", "SELECT"]
//! ```
//!
//! Unknown keys are errors: a typo must not silently build another workspace.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchReader};
use serde::Deserialize;

use crate::engine::Engine;
use crate::error::Error;
use crate::generator::{self, DatasetSpec};
use crate::types;
use crate::workspace::{
    CatalogEntry, EmuTable, Grant, Principal, PrincipalKind, Relation, SchemaEntry, Securable, TableEntry, Token, Warehouse,
    WarehouseCounters, WarehouseState, Workspace,
};

/// The privileges a fixture may grant (Unity Catalog's REST spellings).
pub const PRIVILEGES: &[&str] = &[
    "ALL_PRIVILEGES",
    "BROWSE",
    "USE_CATALOG",
    "USE_SCHEMA",
    "SELECT",
    "MODIFY",
    "EXECUTE",
    "READ_VOLUME",
    "CREATE_TABLE",
    "CREATE_SCHEMA",
    "APPLY_TAG",
];

/// Warehouse permission levels.
pub const WAREHOUSE_LEVELS: &[&str] = &["CAN_USE", "CAN_MONITOR", "CAN_MANAGE", "IS_OWNER", "CAN_VIEW"];

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fixture {
    #[serde(default)]
    pub workspace: WorkspaceSection,
    #[serde(default)]
    pub dataset: Option<DatasetSection>,
    #[serde(default)]
    pub warehouses: Vec<WarehouseDef>,
    #[serde(default)]
    pub principals: Vec<PrincipalDef>,
    #[serde(default)]
    pub tokens: Vec<TokenDef>,
    #[serde(default)]
    pub catalogs: Vec<CatalogDef>,
    #[serde(default)]
    pub grants: Vec<GrantDef>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceSection {
    #[serde(default = "default_org")]
    pub org_id: String,
    #[serde(default = "default_catalog")]
    pub default_catalog: String,
}

impl Default for WorkspaceSection {
    fn default() -> Self {
        WorkspaceSection { org_id: default_org(), default_catalog: default_catalog() }
    }
}

fn default_org() -> String {
    "1234567890123456".into()
}
fn default_catalog() -> String {
    "main".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSection {
    #[serde(default = "default_events")]
    pub events: u64,
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// The instant event timestamps lead up to; now when absent.
    #[serde(default)]
    pub anchor: Option<DateTime<Utc>>,
}

fn default_events() -> u64 {
    100_000
}
fn default_seed() -> u64 {
    7
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarehouseDef {
    pub id: String,
    pub name: String,
    #[serde(default = "default_size")]
    pub cluster_size: String,
    /// `RUNNING` or `STOPPED` at start.
    #[serde(default = "default_state")]
    pub state: WarehouseState,
    /// Start on a statement (Databricks' default for SQL warehouses).
    #[serde(default = "yes")]
    pub auto_resume: bool,
    #[serde(default = "default_auto_stop")]
    pub auto_stop_mins: u32,
    /// Overrides `auto_stop_mins` (tests use seconds).
    #[serde(default)]
    pub auto_stop_secs: Option<u64>,
    #[serde(default = "default_start_delay")]
    pub start_delay_ms: u64,
    #[serde(default = "default_stop_delay")]
    pub stop_delay_ms: u64,
    #[serde(default = "yes")]
    pub serverless: bool,
    /// `principal userName -> CAN_USE | CAN_MANAGE | IS_OWNER | CAN_MONITOR`.
    #[serde(default)]
    pub permissions: BTreeMap<String, String>,
}

fn default_size() -> String {
    "2X-Small".into()
}
fn default_state() -> WarehouseState {
    WarehouseState::Stopped
}
fn yes() -> bool {
    true
}
fn default_auto_stop() -> u32 {
    10
}
fn default_start_delay() -> u64 {
    1500
}
fn default_stop_delay() -> u64 {
    200
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalDef {
    /// An email for users, an application id (UUID) or name for service principals.
    pub user_name: String,
    pub kind: PrincipalKind,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub admin: bool,
    /// Lets the principal use OAuth M2M with this secret (service principals only).
    /// `"random"` makes a fresh one.
    #[serde(default)]
    pub oauth_secret: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenDef {
    /// A label the start-up line reports the token under.
    pub name: String,
    pub principal: String,
    /// The token; a fresh random `dapi…` token when absent.
    #[serde(default)]
    pub value: Option<String>,
    /// Lifetime from start-up; negative or zero makes an expired token.
    #[serde(default)]
    pub expires_in_secs: Option<i64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogDef {
    pub name: String,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub comment: String,
    #[serde(default)]
    pub schemas: Vec<SchemaDef>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaDef {
    pub name: String,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub comment: String,
    #[serde(default)]
    pub tables: Vec<TableDef>,
    #[serde(default)]
    pub views: Vec<ViewDef>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnDef {
    pub name: String,
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(default = "yes")]
    pub nullable: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableDef {
    pub name: String,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub comment: String,
    /// Required for CSV and NDJSON and for empty tables; optional for Parquet
    /// (then the file's own schema is used) and generated tables.
    #[serde(default)]
    pub columns: Option<Vec<ColumnDef>>,
    #[serde(default)]
    pub csv: Option<PathBuf>,
    #[serde(default)]
    pub ndjson: Option<PathBuf>,
    #[serde(default)]
    pub parquet: Option<PathBuf>,
    /// `events`, `people` or `organisations`, sized by `[dataset]`.
    #[serde(default)]
    pub generate: Option<Generated>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Generated {
    Events,
    People,
    Organisations,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewDef {
    pub name: String,
    pub sql: String,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub comment: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantDef {
    /// A principal's `userName`, or `account users`.
    pub principal: String,
    /// `catalog`, `schema`, `table` or `view`.
    pub securable_type: String,
    pub full_name: String,
    pub privileges: Vec<String>,
}

/// A loaded workspace and what the start-up line reports about it.
#[derive(Debug)]
pub struct Loaded {
    pub workspace: Workspace,
    /// Token label → token value.
    pub tokens: BTreeMap<String, String>,
    /// Service principal userName → OAuth secret.
    pub oauth_secrets: BTreeMap<String, String>,
}

impl Fixture {
    /// Reads and parses a fixture file; relative data paths resolve against its folder.
    pub fn from_path(path: &Path) -> Result<(Fixture, PathBuf), Error> {
        let text = std::fs::read_to_string(path).map_err(|reason| Error::ReadFixture { path: path.display().to_string(), reason })?;
        let fixture = Fixture::parse(&text, &path.display().to_string())?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok((fixture, base))
    }

    /// Parses fixture text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Fixture, Error> {
        toml::from_str(text).map_err(|e| Error::ParseFixture { path: origin.to_string(), message: e.to_string().trim().to_string() })
    }

    /// Builds the workspace: loads or generates every table, plans every view.
    pub async fn load(&self, base_dir: &Path) -> Result<Loaded, Error> {
        let now = Utc::now();
        let bad = |m: String| Error::Fixture(m);
        let mut ws = Workspace {
            org_id: self.workspace.org_id.clone(),
            default_catalog: self.workspace.default_catalog.clone(),
            ..Workspace::default()
        };
        if self.workspace.org_id.is_empty() || !self.workspace.org_id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad(format!("workspace.org_id `{}` must be digits, like 1234567890123456", self.workspace.org_id)));
        }

        // Principals.
        let mut oauth_secrets = BTreeMap::new();
        for (i, p) in self.principals.iter().enumerate() {
            if p.user_name.trim().is_empty() {
                return Err(bad(format!("principals[{i}].user_name is empty")));
            }
            if ws.principal(&p.user_name).is_some() {
                return Err(bad(format!("principal `{}` is declared twice", p.user_name)));
            }
            let secret = match p.oauth_secret.as_deref() {
                None => None,
                Some(_) if p.kind != PrincipalKind::ServicePrincipal => {
                    return Err(bad(format!(
                        "principal `{}` has an oauth_secret but is a user; only service principals use OAuth machine-to-machine",
                        p.user_name
                    )));
                }
                Some("random") => Some(format!("dose{}", uuid::Uuid::new_v4().simple())),
                Some(s) => Some(s.to_string()),
            };
            if let Some(s) = &secret {
                oauth_secrets.insert(p.user_name.clone(), s.clone());
            }
            ws.principals.push(Principal {
                id: format!("{}", 7_000_000_000_000_000u64 + i as u64 * 7919),
                kind: p.kind,
                user_name: p.user_name.clone(),
                display_name: p.display_name.clone().unwrap_or_else(|| p.user_name.clone()),
                admin: p.admin,
                oauth_secret: secret,
            });
        }
        let known = |ws: &Workspace, who: &str, field: &str| -> Result<(), Error> {
            if who == "account users" || who == "users" || ws.principal(who).is_some() {
                Ok(())
            } else {
                Err(Error::Fixture(format!("{field} names principal `{who}`, which is not declared under [[principals]]")))
            }
        };

        // Tokens.
        let mut tokens = BTreeMap::new();
        for t in &self.tokens {
            known(&ws, &t.principal, &format!("token `{}`", t.name))?;
            let value = t.value.clone().unwrap_or_else(|| format!("dapi{}", uuid::Uuid::new_v4().simple()));
            if tokens.insert(t.name.clone(), value.clone()).is_some() {
                return Err(bad(format!("token name `{}` is used twice", t.name)));
            }
            let expires_at = t.expires_in_secs.map(|s| now + chrono::Duration::seconds(s));
            ws.tokens.insert(value, Token { principal: t.principal.clone(), expires_at, oauth: false });
        }

        // Warehouses.
        for w in &self.warehouses {
            if w.id.len() != 16 || !w.id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad(format!("warehouse id `{}` must be 16 hexadecimal characters, like a1b2c3d4e5f60718", w.id)));
            }
            if !matches!(w.state, WarehouseState::Running | WarehouseState::Stopped) {
                return Err(bad(format!("warehouse {} state must be RUNNING or STOPPED at start", w.id)));
            }
            for (who, level) in &w.permissions {
                known(&ws, who, &format!("warehouse {} permissions", w.id))?;
                if !WAREHOUSE_LEVELS.contains(&level.as_str()) {
                    return Err(bad(format!(
                        "warehouse {} permission `{level}` for `{who}` must be one of {}",
                        w.id,
                        WAREHOUSE_LEVELS.join(", ")
                    )));
                }
            }
            let mut wh = Warehouse {
                id: w.id.clone(),
                name: w.name.clone(),
                cluster_size: w.cluster_size.clone(),
                state: WarehouseState::Stopped,
                auto_resume: w.auto_resume,
                auto_stop_mins: w.auto_stop_mins,
                auto_stop_secs: w.auto_stop_secs.unwrap_or(w.auto_stop_mins as u64 * 60),
                start_delay_ms: w.start_delay_ms,
                stop_delay_ms: w.stop_delay_ms,
                serverless: w.serverless,
                creator: self.principals.iter().find(|p| p.admin).map(|p| p.user_name.clone()).unwrap_or_default(),
                acl: w.permissions.clone(),
                generation: 0,
                counters: WarehouseCounters::default(),
            };
            if w.state == WarehouseState::Running {
                wh.set_state(WarehouseState::Running, now);
            }
            if ws.warehouses.insert(w.id.clone(), wh).is_some() {
                return Err(bad(format!("warehouse {} is declared twice", w.id)));
            }
        }

        // Catalogs, schemas, tables.
        let spec = self.dataset.as_ref().map(|d| DatasetSpec { events: d.events, seed: d.seed, anchor: d.anchor.unwrap_or(now) });
        let owner_default = self.principals.iter().find(|p| p.admin).map(|p| p.user_name.clone()).unwrap_or_else(|| "admin".into());
        let mut views = Vec::new();
        let mut next_id = 0u64;
        let mut id = || {
            next_id += 1;
            uuid::Uuid::from_u64_pair(0x5eed_0000_0000_4000 | next_id, 0x8000_0000_0000_0000 | next_id).to_string()
        };
        for c in &self.catalogs {
            check_name(&c.name, "catalog")?;
            if c.name == "system" {
                return Err(bad("catalog `system` is built in; pick another name".into()));
            }
            let mut cat = CatalogEntry {
                owner: c.owner.clone().unwrap_or_else(|| owner_default.clone()),
                comment: c.comment.clone(),
                created_at: now,
                schemas: BTreeMap::new(),
            };
            for s in &c.schemas {
                check_name(&s.name, "schema")?;
                if s.name == "information_schema" {
                    return Err(bad(format!("schema {}.information_schema is built in; pick another name", c.name)));
                }
                let mut sch = SchemaEntry {
                    owner: s.owner.clone().unwrap_or_else(|| cat.owner.clone()),
                    comment: s.comment.clone(),
                    schema_id: id(),
                    created_at: now,
                    tables: BTreeMap::new(),
                };
                for t in &s.tables {
                    check_name(&t.name, "table")?;
                    let full = format!("{}.{}.{}", c.name, s.name, t.name);
                    let table = load_table(t, &full, base_dir, spec.as_ref())?;
                    let entry = TableEntry {
                        relation: Relation::Table(Arc::new(table)),
                        table_id: id(),
                        owner: t.owner.clone().unwrap_or_else(|| sch.owner.clone()),
                        comment: t.comment.clone(),
                        created_at: now,
                        updated_at: now,
                    };
                    if sch.tables.insert(t.name.clone(), entry).is_some() {
                        return Err(bad(format!("table {full} is declared twice")));
                    }
                }
                for v in &s.views {
                    check_name(&v.name, "view")?;
                    if sch.tables.contains_key(&v.name) {
                        return Err(bad(format!("{}.{}.{} is declared as both a table and a view", c.name, s.name, v.name)));
                    }
                    views.push((c.name.clone(), s.name.clone(), v.clone()));
                }
                if cat.schemas.insert(s.name.clone(), sch).is_some() {
                    return Err(bad(format!("schema {}.{} is declared twice", c.name, s.name)));
                }
            }
            if ws.catalogs.insert(c.name.clone(), cat).is_some() {
                return Err(bad(format!("catalog {} is declared twice", c.name)));
            }
        }

        // Views, in declaration order (a view may read an earlier one).
        let engine = Engine::new();
        for (c, s, v) in views {
            let planned = engine
                .plan_view(&ws, &v.sql, &c, &s)
                .await
                .map_err(|e| Error::View { view: format!("{c}.{s}.{}", v.name), message: e.message.trim().to_string() })?;
            let schema = planned.schema();
            let sch = ws.catalogs.get_mut(&c).and_then(|x| x.schemas.get_mut(&s)).expect("schema was just inserted");
            let owner = v.owner.clone().unwrap_or_else(|| sch.owner.clone());
            sch.tables.insert(
                v.name.clone(),
                TableEntry {
                    relation: Relation::View { sql: v.sql.clone(), planned: Ok(planned), schema },
                    table_id: id(),
                    owner,
                    comment: v.comment.clone(),
                    created_at: now,
                    updated_at: now,
                },
            );
        }

        // Grants.
        for g in &self.grants {
            known(&ws, &g.principal, "a grant")?;
            let Some(sec) = Securable::parse(&g.securable_type, &g.full_name) else {
                return Err(bad(format!(
                    "grant on `{}`: securable_type `{}` with that full_name is not valid; use catalog (name), schema (catalog.schema) or table/view (catalog.schema.table)",
                    g.full_name, g.securable_type
                )));
            };
            let exists = match &sec {
                Securable::Catalog(c) => ws.catalogs.contains_key(c),
                Securable::Schema(c, s) => ws.catalogs.get(c).is_some_and(|x| x.schemas.contains_key(s)),
                Securable::Table(c, s, t) => ws.table(c, s, t).is_some(),
            };
            if !exists {
                return Err(bad(format!("grant on {} `{}`, which is not declared", sec.kind().to_lowercase(), g.full_name)));
            }
            for p in &g.privileges {
                let p = p.to_ascii_uppercase().replace(' ', "_");
                if !PRIVILEGES.contains(&p.as_str()) {
                    return Err(bad(format!("grant on `{}`: unknown privilege `{p}`; use one of {}", g.full_name, PRIVILEGES.join(", "))));
                }
                ws.grants.push(Grant { principal: g.principal.clone(), privilege: p, securable: sec.clone() });
            }
        }
        Ok(Loaded { workspace: ws, tokens, oauth_secrets })
    }
}

fn check_name(name: &str, what: &str) -> Result<(), Error> {
    if name.is_empty() || name.contains(['.', '`', ' ', '/']) {
        return Err(Error::Fixture(format!("{what} name `{name}` must be non-empty and contain no dots, spaces, slashes or backticks")));
    }
    Ok(())
}

fn declared_schema(t: &TableDef, full: &str) -> Result<Option<SchemaRef>, Error> {
    let Some(cols) = &t.columns else { return Ok(None) };
    let mut fields = Vec::new();
    for c in cols {
        let dt = types::parse_type(&c.type_).map_err(|e| Error::Fixture(format!("table {full}, column `{}`: {e}", c.name)))?;
        fields.push(Field::new(&c.name, dt, c.nullable));
    }
    Ok(Some(Arc::new(Schema::new(fields))))
}

fn load_table(t: &TableDef, full: &str, base: &Path, spec: Option<&DatasetSpec>) -> Result<EmuTable, Error> {
    let sources = [t.csv.is_some(), t.ndjson.is_some(), t.parquet.is_some(), t.generate.is_some()];
    if sources.iter().filter(|s| **s).count() > 1 {
        return Err(Error::Fixture(format!("table {full} names more than one source; keep one of csv, ndjson, parquet, generate")));
    }
    let declared = declared_schema(t, full)?;
    let load_err = |path: &Path, message: String| Error::LoadTable { table: full.to_string(), path: path.display().to_string(), message };
    let open = |p: &Path| -> Result<(PathBuf, std::fs::File), Error> {
        let path = if p.is_absolute() { p.to_path_buf() } else { base.join(p) };
        let f = std::fs::File::open(&path).map_err(|e| load_err(&path, e.to_string()))?;
        Ok((path, f))
    };
    let (schema, batches): (SchemaRef, Vec<RecordBatch>) = if let Some(p) = &t.csv {
        let schema = declared.ok_or_else(|| Error::Fixture(format!("table {full} is loaded from CSV and needs `columns`")))?;
        let (path, f) = open(p)?;
        let reader = datafusion::arrow::csv::ReaderBuilder::new(schema.clone())
            .with_header(true)
            .with_batch_size(65_536)
            .build(f)
            .map_err(|e| load_err(&path, e.to_string()))?;
        let batches = reader.collect::<Result<Vec<_>, _>>().map_err(|e| load_err(&path, e.to_string()))?;
        (schema, batches)
    } else if let Some(p) = &t.ndjson {
        let schema = declared.ok_or_else(|| Error::Fixture(format!("table {full} is loaded from NDJSON and needs `columns`")))?;
        let (path, f) = open(p)?;
        let reader = datafusion::arrow::json::ReaderBuilder::new(schema.clone())
            .with_batch_size(65_536)
            .build(std::io::BufReader::new(f))
            .map_err(|e| load_err(&path, e.to_string()))?;
        let batches = reader.collect::<Result<Vec<_>, _>>().map_err(|e| load_err(&path, e.to_string()))?;
        (schema, batches)
    } else if let Some(p) = &t.parquet {
        let (path, f) = open(p)?;
        let reader = datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
            .map_err(|e| load_err(&path, e.to_string()))?
            .with_batch_size(65_536)
            .build()
            .map_err(|e| load_err(&path, e.to_string()))?;
        let file_schema = reader.schema();
        let batches = reader.collect::<Result<Vec<_>, _>>().map_err(|e| load_err(&path, e.to_string()))?;
        let schema = match declared {
            Some(s) if s.fields().len() != file_schema.fields().len() => {
                return Err(load_err(
                    &path,
                    format!("the file has {} columns, `columns` declares {}", file_schema.fields().len(), s.fields().len()),
                ));
            }
            Some(s) => s,
            None => file_schema,
        };
        (schema, batches)
    } else if let Some(g) = t.generate {
        let spec = spec.ok_or_else(|| Error::Fixture(format!("table {full} is generated but the fixture has no [dataset] section")))?;
        match g {
            Generated::Organisations => (generator::organisations_schema(), vec![generator::organisations(spec)]),
            Generated::People => (generator::people_schema(), vec![generator::people(spec)]),
            Generated::Events => (generator::events_schema(), generator::events(*spec, 65_536).collect()),
        }
    } else {
        let schema = declared.ok_or_else(|| Error::Fixture(format!("table {full} has no source and no `columns`; declare one")))?;
        (schema, Vec::new())
    };
    let schema = types::normalize_schema(&schema);
    let batches = batches
        .iter()
        .map(|b| types::normalize_batch(b, &schema))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::LoadTable { table: full.to_string(), path: String::new(), message: e })?;
    Ok(EmuTable::new(schema, batches))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let e = Fixture::parse("[[catalogs]]\nname = \"main\"\nschemaz = []\n", "t.toml").unwrap_err().to_string();
        assert!(e.contains("schemaz"), "{e}");
    }

    #[tokio::test]
    async fn a_small_fixture_loads_csv_and_plans_views() {
        let dir = std::env::temp_dir().join(format!("emu-fixture-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("p.csv"), "user_id,signup_date\nu1,2024-01-02\nu2,\n").unwrap();
        let text = r#"
            [[principals]]
            user_name = "sp"
            kind = "service_principal"
            [[tokens]]
            name = "sp"
            principal = "sp"
            [[catalogs]]
            name = "main"
            [[catalogs.schemas]]
            name = "crm"
            [[catalogs.schemas.tables]]
            name = "people"
            csv = "p.csv"
            columns = [{ name = "user_id", type = "STRING" }, { name = "signup_date", type = "DATE" }]
            [[catalogs.schemas.views]]
            name = "people_v"
            sql = "SELECT user_id FROM main.crm.people"
            [[grants]]
            principal = "sp"
            securable_type = "catalog"
            full_name = "main"
            privileges = ["use catalog", "USE_SCHEMA", "SELECT"]
        "#;
        let loaded = Fixture::parse(text, "t").unwrap().load(&dir).await.unwrap();
        let ws = &loaded.workspace;
        let people = ws.table("main", "crm", "people").unwrap();
        let Relation::Table(t) = &people.relation else { panic!("people is a table") };
        assert_eq!(t.row_count(), 2);
        assert_eq!(ws.table("main", "crm", "people_v").unwrap().schema().fields().len(), 1);
        assert!(loaded.tokens["sp"].starts_with("dapi"));
        assert_eq!(ws.grants.len(), 3);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn grants_on_undeclared_objects_are_refused() {
        let text = r#"
            [[principals]]
            user_name = "sp"
            kind = "service_principal"
            [[grants]]
            principal = "sp"
            securable_type = "catalog"
            full_name = "nope"
            privileges = ["USE_CATALOG"]
        "#;
        let e = Fixture::parse(text, "t").unwrap().load(Path::new(".")).await.unwrap_err().to_string();
        assert!(e.contains("`nope`, which is not declared"), "{e}");
    }
}

//! The workspace's state: Unity Catalog objects, principals, tokens, grants
//! and warehouses. Everything the HTTP layer and the SQL engine decide about
//! *who may see what* is answered here, in one place, so the REST APIs and SQL
//! can never disagree.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;

use crate::error::SqlError;

/// A table's rows: Arrow batches behind a lock, so appends and column
/// changes made through the admin API are seen by the next query (and by
/// every view over the table) without re-registering anything.
#[derive(Debug)]
pub struct EmuTable {
    data: RwLock<TableData>,
    /// Batches handed to scans so far (what data skipping saves shows here).
    batches_scanned: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Clone)]
struct TableData {
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
    /// Per batch, per column: its timestamp range (see [`Stats`]).
    stats: Vec<Stats>,
}

/// A batch's statistics, as Delta keeps them per data file: for each
/// microsecond-timestamp column, its least and greatest non-NULL value
/// (`None` for other columns, or when every value is NULL). A scan skips
/// the batches whose ranges no row of the query's filters can fall in, as
/// Databricks skips files: a window over the last hour does not read a
/// year of events.
#[derive(Debug, Clone)]
struct Stats(Vec<Option<(i64, i64)>>);

impl Stats {
    fn of(batch: &RecordBatch) -> Stats {
        use datafusion::arrow::array::AsArray;
        use datafusion::arrow::compute::{max, min};
        use datafusion::arrow::datatypes::{DataType, TimeUnit, TimestampMicrosecondType};
        Stats(
            batch
                .columns()
                .iter()
                .map(|c| match c.data_type() {
                    DataType::Timestamp(TimeUnit::Microsecond, _) => {
                        let a = c.as_primitive::<TimestampMicrosecondType>();
                        Some((min(a)?, max(a)?))
                    }
                    _ => None,
                })
                .collect(),
        )
    }

    /// Whether a row of this batch may satisfy `e` (`false` only when none can).
    fn may_match(&self, schema: &SchemaRef, e: &Expr) -> bool {
        use datafusion::logical_expr::{Between, BinaryExpr, Operator};
        match e {
            Expr::BinaryExpr(BinaryExpr { left, op: Operator::And, right }) => {
                self.may_match(schema, left) && self.may_match(schema, right)
            }
            Expr::BinaryExpr(BinaryExpr { left, op: Operator::Or, right }) => self.may_match(schema, left) || self.may_match(schema, right),
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                let (range, value, op) = match (self.range(schema, left), micros(right), self.range(schema, right), micros(left)) {
                    (Some(r), Some(v), _, _) => (r, v, *op),
                    (_, _, Some(r), Some(v)) => match op.swap() {
                        Some(op) => (r, v, op),
                        None => return true,
                    },
                    _ => return true,
                };
                let (lo, hi) = range;
                match op {
                    Operator::Gt => hi > value,
                    Operator::GtEq => hi >= value,
                    Operator::Lt => lo < value,
                    Operator::LtEq => lo <= value,
                    Operator::Eq => lo <= value && value <= hi,
                    _ => true,
                }
            }
            Expr::Between(Between { expr, negated: false, low, high }) => match (self.range(schema, expr), micros(low), micros(high)) {
                (Some((lo, hi)), Some(l), Some(h)) => hi >= l && lo <= h,
                _ => true,
            },
            _ => true,
        }
    }

    /// The range of the column `e` names, if it has one.
    fn range(&self, schema: &SchemaRef, e: &Expr) -> Option<(i64, i64)> {
        let Expr::Column(c) = e else { return None };
        self.0.get(schema.index_of(&c.name).ok()?).copied().flatten()
    }
}

/// A timestamp literal in microseconds (one that falls between two is left alone).
fn micros(e: &Expr) -> Option<i64> {
    use datafusion::scalar::ScalarValue;
    let Expr::Literal(v, _) = e else { return None };
    match v {
        ScalarValue::TimestampSecond(Some(x), _) => x.checked_mul(1_000_000),
        ScalarValue::TimestampMillisecond(Some(x), _) => x.checked_mul(1_000),
        ScalarValue::TimestampMicrosecond(Some(x), _) => Some(*x),
        ScalarValue::TimestampNanosecond(Some(x), _) if x % 1_000 == 0 => Some(x / 1_000),
        _ => None,
    }
}

impl TableData {
    fn new(schema: SchemaRef, batches: Vec<RecordBatch>) -> TableData {
        let stats = batches.iter().map(Stats::of).collect();
        TableData { schema, batches, stats }
    }
}

impl EmuTable {
    pub fn new(schema: SchemaRef, batches: Vec<RecordBatch>) -> Self {
        EmuTable { data: RwLock::new(TableData::new(schema, batches)), batches_scanned: Default::default() }
    }
    pub fn snapshot(&self) -> (SchemaRef, Vec<RecordBatch>) {
        let d = self.data.read().unwrap_or_else(|e| e.into_inner());
        (d.schema.clone(), d.batches.clone())
    }
    /// The batches a row satisfying every filter may be in.
    fn batches_for(&self, filters: &[Expr]) -> (SchemaRef, Vec<RecordBatch>) {
        let d = self.data.read().unwrap_or_else(|e| e.into_inner());
        let kept = d.batches.iter().zip(&d.stats).filter(|(_, s)| filters.iter().all(|f| s.may_match(&d.schema, f)));
        let kept: Vec<RecordBatch> = kept.map(|(b, _)| b.clone()).collect();
        self.batches_scanned.fetch_add(kept.len() as u64, std::sync::atomic::Ordering::Relaxed);
        (d.schema.clone(), kept)
    }
    /// How many batches scans have read so far.
    pub fn batches_scanned(&self) -> u64 {
        self.batches_scanned.load(std::sync::atomic::Ordering::Relaxed)
    }
    pub fn append(&self, batch: RecordBatch) {
        let mut d = self.data.write().unwrap_or_else(|e| e.into_inner());
        d.stats.push(Stats::of(&batch));
        d.batches.push(batch);
    }
    pub fn replace(&self, schema: SchemaRef, batches: Vec<RecordBatch>) {
        let mut d = self.data.write().unwrap_or_else(|e| e.into_inner());
        *d = TableData::new(schema, batches);
    }
    pub fn row_count(&self) -> usize {
        let d = self.data.read().unwrap_or_else(|e| e.into_inner());
        d.batches.iter().map(|b| b.num_rows()).sum()
    }
}

#[async_trait]
impl TableProvider for EmuTable {
    fn schema(&self) -> SchemaRef {
        self.data.read().unwrap_or_else(|e| e.into_inner()).schema.clone()
    }
    fn table_type(&self) -> TableType {
        TableType::Base
    }
    /// Filters are used to skip batches; the query still applies them to every row.
    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }
    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let (schema, batches) = self.batches_for(filters);
        // Two partitions: this machine class has two cores.
        let mut parts: Vec<Vec<RecordBatch>> = vec![Vec::new(), Vec::new()];
        for (i, b) in batches.into_iter().enumerate() {
            parts[i % 2].push(b);
        }
        Ok(MemorySourceConfig::try_new_exec(&parts, schema, projection.cloned())?)
    }
}

/// What a Unity Catalog table entry holds.
#[derive(Clone)]
pub enum Relation {
    Table(Arc<EmuTable>),
    /// A view: its SQL, and the planned provider (or why it no longer plans,
    /// e.g. after a column it reads was renamed).
    View {
        sql: String,
        planned: Result<Arc<dyn TableProvider>, SqlError>,
        schema: SchemaRef,
    },
}

impl fmt::Debug for Relation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Relation::Table(_) => f.write_str("Table"),
            Relation::View { sql, .. } => write!(f, "View({sql})"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct TableEntry {
    pub relation: Relation,
    pub table_id: String,
    pub owner: String,
    pub comment: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl TableEntry {
    pub fn schema(&self) -> SchemaRef {
        match &self.relation {
            Relation::Table(t) => t.schema(),
            Relation::View { schema, .. } => schema.clone(),
        }
    }
    pub fn is_view(&self) -> bool {
        matches!(self.relation, Relation::View { .. })
    }
}

#[derive(Debug, Clone, Default)]
pub struct SchemaEntry {
    pub owner: String,
    pub comment: String,
    pub schema_id: String,
    pub created_at: DateTime<Utc>,
    pub tables: BTreeMap<String, TableEntry>,
}

#[derive(Debug, Clone, Default)]
pub struct CatalogEntry {
    pub owner: String,
    pub comment: String,
    pub created_at: DateTime<Utc>,
    pub schemas: BTreeMap<String, SchemaEntry>,
}

/// Users log in with an email; service principals with an application id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalKind {
    User,
    ServicePrincipal,
}

#[derive(Debug, Clone)]
pub struct Principal {
    /// SCIM id (a number, as text).
    pub id: String,
    pub kind: PrincipalKind,
    /// `userName`: an email for users, the application id for service principals.
    pub user_name: String,
    pub display_name: String,
    /// Metastore and workspace admin: sees and may do everything.
    pub admin: bool,
    /// OAuth M2M secret, for service principals.
    pub oauth_secret: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Token {
    pub principal: String,
    pub expires_at: Option<DateTime<Utc>>,
    /// Issued by the OAuth token endpoint rather than created as a PAT.
    pub oauth: bool,
}

/// A securable in Unity Catalog.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Securable {
    Catalog(String),
    Schema(String, String),
    Table(String, String, String),
}

impl Securable {
    pub fn parse(kind: &str, full_name: &str) -> Option<Securable> {
        let parts: Vec<&str> = full_name.split('.').collect();
        match (kind.to_ascii_lowercase().as_str(), parts.as_slice()) {
            ("catalog", [c]) => Some(Securable::Catalog(c.to_string())),
            ("schema", [c, s]) => Some(Securable::Schema(c.to_string(), s.to_string())),
            ("table" | "view", [c, s, t]) => Some(Securable::Table(c.to_string(), s.to_string(), t.to_string())),
            _ => None,
        }
    }
    pub fn kind(&self) -> &'static str {
        match self {
            Securable::Catalog(_) => "CATALOG",
            Securable::Schema(..) => "SCHEMA",
            Securable::Table(..) => "TABLE",
        }
    }
    /// The word Databricks uses in permission messages (`Catalog`, `Schema`, `Table`).
    pub fn noun(&self) -> &'static str {
        match self {
            Securable::Catalog(_) => "Catalog",
            Securable::Schema(..) => "Schema",
            Securable::Table(..) => "Table",
        }
    }
    pub fn full_name(&self) -> String {
        match self {
            Securable::Catalog(c) => c.clone(),
            Securable::Schema(c, s) => format!("{c}.{s}"),
            Securable::Table(c, s, t) => format!("{c}.{s}.{t}"),
        }
    }
    /// This securable and the ones it inherits privileges from, outermost first.
    fn lineage(&self) -> Vec<Securable> {
        match self {
            Securable::Catalog(_) => vec![self.clone()],
            Securable::Schema(c, _) => vec![Securable::Catalog(c.clone()), self.clone()],
            Securable::Table(c, s, _) => {
                vec![Securable::Catalog(c.clone()), Securable::Schema(c.clone(), s.clone()), self.clone()]
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// A principal's `userName`, or `account users` for everyone.
    pub principal: String,
    /// REST spelling, `USE_CATALOG`.
    pub privilege: String,
    pub securable: Securable,
}

/// Warehouse lifecycle states, as the Warehouses API names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WarehouseState {
    Starting,
    Running,
    Stopping,
    Stopped,
    Deleting,
    Deleted,
}

impl WarehouseState {
    pub fn as_str(&self) -> &'static str {
        match self {
            WarehouseState::Starting => "STARTING",
            WarehouseState::Running => "RUNNING",
            WarehouseState::Stopping => "STOPPING",
            WarehouseState::Stopped => "STOPPED",
            WarehouseState::Deleting => "DELETING",
            WarehouseState::Deleted => "DELETED",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Warehouse {
    pub id: String,
    pub name: String,
    pub cluster_size: String,
    pub state: WarehouseState,
    pub auto_resume: bool,
    pub auto_stop_mins: u32,
    /// Idle time before auto-stop, in seconds; defaults to `auto_stop_mins * 60`
    /// (tests shorten it).
    pub auto_stop_secs: u64,
    pub start_delay_ms: u64,
    pub stop_delay_ms: u64,
    pub serverless: bool,
    pub creator: String,
    /// `principal userName -> permission level` (`CAN_USE`, `CAN_MANAGE`, `IS_OWNER`, ...).
    pub acl: BTreeMap<String, String>,
    /// Bumped on every state change so that delayed transitions from an
    /// earlier start/stop do not clobber a newer one.
    pub generation: u64,
    pub counters: WarehouseCounters,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct WarehouseCounters {
    /// Seconds spent in STARTING or RUNNING (billed time), completed intervals.
    pub uptime_ms: u64,
    /// When the current billed interval began.
    #[serde(skip)]
    pub up_since: Option<DateTime<Utc>>,
    /// STOPPED → STARTING transitions.
    pub starts: u64,
    /// Starts caused by a statement (auto-resume) rather than the start API.
    pub wakeups: u64,
    pub statements: u64,
    pub active_statements: u64,
    #[serde(skip)]
    pub last_activity: Option<DateTime<Utc>>,
}

impl Warehouse {
    pub fn can_use(&self, principal: &Principal) -> bool {
        principal.admin
            || self
                .acl
                .get(&principal.user_name)
                .is_some_and(|l| matches!(l.as_str(), "CAN_USE" | "CAN_MANAGE" | "IS_OWNER" | "CAN_MONITOR"))
            || self.acl.get("users").is_some_and(|l| l == "CAN_USE")
    }
    pub fn can_manage(&self, principal: &Principal) -> bool {
        principal.admin || self.acl.get(&principal.user_name).is_some_and(|l| matches!(l.as_str(), "CAN_MANAGE" | "IS_OWNER"))
    }
    /// Moves to `state`, keeping the billing counters right.
    pub fn set_state(&mut self, state: WarehouseState, now: DateTime<Utc>) {
        let billed = |s: WarehouseState| matches!(s, WarehouseState::Starting | WarehouseState::Running | WarehouseState::Stopping);
        if billed(self.state)
            && !billed(state)
            && let Some(since) = self.counters.up_since.take()
        {
            self.counters.uptime_ms += (now - since).num_milliseconds().max(0) as u64;
        }
        if !billed(self.state) && billed(state) {
            self.counters.up_since = Some(now);
            self.counters.starts += 1;
        }
        if state == WarehouseState::Running {
            self.counters.last_activity = Some(now);
        }
        self.state = state;
        self.generation += 1;
    }
    pub fn uptime_ms(&self, now: DateTime<Utc>) -> u64 {
        self.counters.uptime_ms + self.counters.up_since.map(|s| (now - s).num_milliseconds().max(0) as u64).unwrap_or(0)
    }
}

/// The whole workspace. Guarded by one lock in [`crate::Emulator`]; no method
/// here does I/O or waits.
#[derive(Debug, Clone, Default)]
pub struct Workspace {
    pub org_id: String,
    /// The catalog a statement runs in when it names none (the workspace's
    /// default catalog, `main` unless the fixture says otherwise).
    pub default_catalog: String,
    pub catalogs: BTreeMap<String, CatalogEntry>,
    pub principals: Vec<Principal>,
    pub tokens: BTreeMap<String, Token>,
    pub grants: Vec<Grant>,
    pub warehouses: BTreeMap<String, Warehouse>,
}

/// What the caller may do with a securable, from the most to the least.
pub const ALL_PRIVILEGES: &str = "ALL_PRIVILEGES";

impl Workspace {
    pub fn principal(&self, user_name: &str) -> Option<&Principal> {
        self.principals.iter().find(|p| p.user_name == user_name)
    }
    /// Finds a principal by `userName` or display name (fixtures use either).
    pub fn principal_by_any_name(&self, name: &str) -> Option<&Principal> {
        self.principals.iter().find(|p| p.user_name == name || p.display_name == name)
    }

    pub fn table(&self, c: &str, s: &str, t: &str) -> Option<&TableEntry> {
        self.catalogs.get(c)?.schemas.get(s)?.tables.get(t)
    }

    fn owns(&self, p: &Principal, sec: &Securable) -> bool {
        sec.lineage().iter().any(|s| match s {
            Securable::Catalog(c) => self.catalogs.get(c).is_some_and(|e| e.owner == p.user_name),
            Securable::Schema(c, sc) => self.catalogs.get(c).and_then(|e| e.schemas.get(sc)).is_some_and(|e| e.owner == p.user_name),
            Securable::Table(c, sc, t) => self.table(c, sc, t).is_some_and(|e| e.owner == p.user_name),
        })
    }

    /// Whether `p` holds `privilege` on `sec`, directly, through a parent,
    /// through `ALL_PRIVILEGES`, ownership, or being an admin.
    pub fn has(&self, p: &Principal, privilege: &str, sec: &Securable) -> bool {
        if p.admin || self.owns(p, sec) {
            return true;
        }
        let lineage = sec.lineage();
        self.grants.iter().any(|g| {
            (g.principal == p.user_name || g.principal == "account users")
                && (g.privilege == privilege || g.privilege == ALL_PRIVILEGES)
                && lineage.contains(&g.securable)
        })
    }

    /// Any privilege at all on `sec` or below it (what makes an object
    /// visible in listings and `information_schema`).
    pub fn has_any_on_or_below(&self, p: &Principal, sec: &Securable) -> bool {
        if p.admin || self.owns(p, sec) {
            return true;
        }
        let lineage = sec.lineage();
        self.grants.iter().any(|g| {
            let mine = g.principal == p.user_name || g.principal == "account users";
            let on_or_below = g.securable == *sec || g.securable.lineage().contains(sec);
            // Inherited privileges count only if they act on the object itself:
            // USE CATALOG / USE SCHEMA on a parent reveal nothing below it.
            let inherited = lineage.contains(&g.securable) && !matches!(g.privilege.as_str(), "USE_CATALOG" | "USE_SCHEMA");
            mine && (on_or_below || inherited)
        })
    }

    /// Catalogs a principal sees: owned, or with USE CATALOG (or BROWSE when asked).
    pub fn visible_catalogs(&self, p: &Principal, include_browse: bool) -> Vec<(&String, &CatalogEntry, bool)> {
        self.catalogs
            .iter()
            .filter_map(|(name, c)| {
                let sec = Securable::Catalog(name.clone());
                if name == "system" || self.has(p, "USE_CATALOG", &sec) {
                    Some((name, c, false))
                } else if include_browse && self.has(p, "BROWSE", &sec) {
                    Some((name, c, true))
                } else {
                    None
                }
            })
            .collect()
    }

    /// The first privilege `p` lacks on the way to schema `s` of catalog `c`
    /// (or to the catalog alone), in Unity Catalog's order: USE CATALOG, then
    /// USE SCHEMA. The one place this chain is decided: REST listings, SHOW
    /// and SELECT all ask here.
    pub fn use_denied(&self, p: &Principal, c: &str, s: Option<&str>) -> Option<Denied> {
        if !self.has(p, "USE_CATALOG", &Securable::Catalog(c.into())) {
            return Some(Denied { privilege: "USE CATALOG", object_type: "Catalog", object: c.to_string() });
        }
        match s {
            Some(s) if s != "information_schema" && !self.has(p, "USE_SCHEMA", &Securable::Schema(c.into(), s.into())) => {
                Some(Denied { privilege: "USE SCHEMA", object_type: "Schema", object: format!("{c}.{s}") })
            }
            _ => None,
        }
    }

    /// The privilege a SELECT on a table lacks, checked as Unity Catalog does:
    /// USE CATALOG, then USE SCHEMA, then SELECT.
    pub fn select_denied(&self, p: &Principal, c: &str, s: &str, t: &str) -> Option<SqlError> {
        if let Some(d) = self.use_denied(p, c, Some(s)) {
            return Some(d.sql());
        }
        let tab = Securable::Table(c.into(), s.into(), t.into());
        if !self.has(p, "SELECT", &tab) {
            return Some(SqlError::insufficient("SELECT", "Table", &format!("{c}.{s}.{t}")));
        }
        None
    }

    /// Tables whose metadata a principal may read (USE CATALOG, USE SCHEMA and
    /// any privilege on the table).
    pub fn can_see_table(&self, p: &Principal, c: &str, s: &str, t: &str) -> bool {
        self.use_denied(p, c, Some(s)).is_none() && self.has_any_on_or_below(p, &Securable::Table(c.into(), s.into(), t.into()))
    }

    pub fn can_see_schema(&self, p: &Principal, c: &str, s: &str) -> bool {
        self.use_denied(p, c, None).is_none()
            && (s == "information_schema" || self.has_any_on_or_below(p, &Securable::Schema(c.into(), s.into())))
    }

    /// Effective privileges of `p` on `sec`, with where each is inherited from.
    pub fn effective_privileges(&self, p: &Principal, sec: &Securable) -> Vec<(String, Option<Securable>)> {
        let lineage = sec.lineage();
        let mut out: Vec<(String, Option<Securable>)> = Vec::new();
        for g in &self.grants {
            if (g.principal == p.user_name || g.principal == "account users") && lineage.contains(&g.securable) {
                let from = if &g.securable == sec { None } else { Some(g.securable.clone()) };
                if !out.iter().any(|(priv_, f)| priv_ == &g.privilege && f == &from) {
                    out.push((g.privilege.clone(), from));
                }
            }
        }
        out
    }
}

/// A privilege missing on the way to an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    /// As Databricks writes it in messages: `USE CATALOG`, `USE SCHEMA`.
    pub privilege: &'static str,
    pub object_type: &'static str,
    pub object: String,
}

impl Denied {
    /// `User does not have USE CATALOG on Catalog 'main'.`
    pub fn message(&self) -> String {
        format!("User does not have {} on {} '{}'.", self.privilege, self.object_type, self.object)
    }
    /// The FAILED statement's error.
    pub fn sql(&self) -> SqlError {
        SqlError::insufficient(self.privilege, self.object_type, &self.object)
    }
}

#[cfg(test)]
mod skipping_tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, TimestampMicrosecondArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use datafusion::prelude::{col, lit};
    use datafusion::scalar::ScalarValue;

    fn table() -> EmuTable {
        let schema = Arc::new(Schema::new(vec![
            Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), true),
            Field::new("n", DataType::Int64, false),
        ]));
        let batch = |ts: Vec<Option<i64>>| {
            let n = Int64Array::from(vec![1; ts.len()]);
            RecordBatch::try_new(schema.clone(), vec![Arc::new(TimestampMicrosecondArray::from(ts).with_timezone("UTC")), Arc::new(n)])
                .unwrap()
        };
        let t = EmuTable::new(schema.clone(), vec![batch(vec![Some(0), Some(10)]), batch(vec![Some(11), None, Some(20)])]);
        // Appended later, with a row stamped far in the future.
        t.append(batch(vec![Some(21), Some(1_000), Some(30)]));
        t
    }

    fn at(us: i64) -> datafusion::logical_expr::Expr {
        lit(ScalarValue::TimestampMicrosecond(Some(us), Some("UTC".into())))
    }

    fn kept(t: &EmuTable, filters: &[datafusion::logical_expr::Expr]) -> Vec<i64> {
        use datafusion::arrow::array::AsArray;
        use datafusion::arrow::datatypes::TimestampMicrosecondType;
        let (_, batches) = t.batches_for(filters);
        batches.iter().map(|b| b.column(0).as_primitive::<TimestampMicrosecondType>().iter().flatten().next().unwrap()).collect()
    }

    #[test]
    fn a_window_reads_only_the_batches_its_rows_can_be_in() {
        let t = table();
        // Each batch is named by its first timestamp: 0, 11, 21.
        assert_eq!(kept(&t, &[col("ts").gt(at(12)), col("ts").lt_eq(at(20))]), vec![11]);
        assert_eq!(kept(&t, &[col("ts").gt(at(10)).and(col("ts").lt_eq(at(20)))]), vec![11]);
        assert_eq!(kept(&t, &[at(10).lt(col("ts"))]), vec![11, 21], "a literal on the left is read the other way round");
        assert_eq!(kept(&t, &[col("ts").gt_eq(at(10))]), vec![0, 11, 21]);
        assert_eq!(kept(&t, &[col("ts").eq(at(500))]), vec![21], "the future row widens its batch's range");
        assert_eq!(kept(&t, &[col("ts").between(at(1), at(10))]), vec![0]);
        assert_eq!(kept(&t, &[col("ts").gt(at(2_000))]), Vec::<i64>::new());
    }

    #[test]
    fn what_it_cannot_judge_it_reads() {
        let t = table();
        let all = vec![0, 11, 21];
        // A NULL timestamp matches `IS NULL`, whatever the range.
        assert_eq!(kept(&t, &[col("ts").gt(at(2_000)).or(col("ts").is_null())]), all);
        assert_eq!(kept(&t, &[col("n").gt(lit(5i64))]), all, "integer columns keep no ranges");
        assert_eq!(kept(&t, &[col("ts").not_eq(at(5))]), all);
        // Nanoseconds between two microseconds are not rounded either way.
        assert_eq!(kept(&t, &[col("ts").gt(lit(ScalarValue::TimestampNanosecond(Some(2_000_000_001), None)))]), all);
        assert_eq!(kept(&t, &[col("ts").gt(lit(ScalarValue::TimestampNanosecond(Some(2_000_000_000), None)))]), Vec::<i64>::new());
    }

    #[test]
    fn a_replaced_table_gets_new_ranges() {
        let t = table();
        let (schema, _) = t.snapshot();
        let b = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(TimestampMicrosecondArray::from(vec![Some(5_000)]).with_timezone("UTC")), Arc::new(Int64Array::from(vec![1]))],
        )
        .unwrap();
        t.replace(schema, vec![b]);
        assert_eq!(kept(&t, &[col("ts").gt(at(4_000))]), vec![5_000]);
        assert_eq!(kept(&t, &[col("ts").lt(at(4_000))]), Vec::<i64>::new());
    }
}

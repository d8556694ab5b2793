//! The emulator's shared state and the operations the HTTP layer calls.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use chrono::Utc;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::engine::{Engine, Query};
use crate::error::SqlError;
use crate::faults::Faults;
use crate::results::{self, ChunkPolicy};
use crate::statements::{Disposition, Request, State, Statement};
use crate::workspace::{Principal, Relation, WarehouseState, Workspace};

/// Timings and sizes. Tests shorten the delays; the defaults are Databricks'.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// How long an external link stays valid (Databricks: about 15 minutes).
    pub link_ttl: Duration,
    /// How long a finished statement's result can be fetched (Databricks: 1 hour).
    pub result_ttl: Duration,
    /// Rows and Arrow bytes per chunk.
    pub chunk_policy: ChunkPolicy,
    /// The INLINE result cap; bigger INLINE results fail the statement.
    pub inline_limit_bytes: u64,
    /// The token that opens `/emulator/v1/*`.
    pub admin_token: String,
    /// Lifetime of OAuth M2M access tokens.
    pub oauth_token_ttl: Duration,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            link_ttl: Duration::from_secs(15 * 60),
            result_ttl: Duration::from_secs(3600),
            chunk_policy: ChunkPolicy { max_rows: 131_072, max_bytes: 16 << 20 },
            inline_limit_bytes: 25 << 20,
            admin_token: format!("emu-admin-{}", uuid::Uuid::new_v4().simple()),
            oauth_token_ttl: Duration::from_secs(3600),
        }
    }
}

/// Request and traffic counters, readable through the admin API.
#[derive(Debug, Default)]
pub struct Counters {
    pub requests: AtomicU64,
    pub statements: AtomicU64,
    pub chunk_requests: AtomicU64,
    pub link_downloads: AtomicU64,
    pub link_bytes: AtomicU64,
    pub faults_injected: AtomicU64,
    pub oauth_tokens: AtomicU64,
}

/// A local Databricks workspace. Cheap to clone (an `Arc`).
#[derive(Clone)]
pub struct Emulator {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub config: EmulatorConfig,
    pub ws: RwLock<Workspace>,
    pub engine: Engine,
    pub statements: Mutex<HashMap<String, Arc<Statement>>>,
    pub faults: Mutex<Faults>,
    pub counters: Counters,
    pub base_url: OnceLock<String>,
    pub link_secret: String,
    pub shutdown: CancellationToken,
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator").finish_non_exhaustive()
    }
}

impl Emulator {
    pub fn new(config: EmulatorConfig, ws: Workspace) -> Self {
        Emulator {
            inner: Arc::new(Inner {
                config,
                ws: RwLock::new(ws),
                engine: Engine::new(),
                statements: Mutex::new(HashMap::new()),
                faults: Mutex::new(Faults::default()),
                counters: Counters::default(),
                base_url: OnceLock::new(),
                link_secret: uuid::Uuid::new_v4().simple().to_string(),
                shutdown: CancellationToken::new(),
            }),
        }
    }

    pub fn config(&self) -> &EmulatorConfig {
        &self.inner.config
    }
    pub fn admin_token(&self) -> &str {
        &self.inner.config.admin_token
    }
    pub(crate) fn ws(&self) -> std::sync::RwLockReadGuard<'_, Workspace> {
        self.inner.ws.read().unwrap_or_else(|e| e.into_inner())
    }
    pub(crate) fn ws_mut(&self) -> std::sync::RwLockWriteGuard<'_, Workspace> {
        self.inner.ws.write().unwrap_or_else(|e| e.into_inner())
    }
    pub(crate) fn faults(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.inner.faults.lock().unwrap_or_else(|e| e.into_inner())
    }
    pub fn base_url(&self) -> String {
        self.inner.base_url.get().cloned().unwrap_or_default()
    }

    /// The principal behind a bearer token, or `None` if the token is
    /// unknown or expired.
    pub(crate) fn authenticate(&self, token: &str) -> Option<Principal> {
        let ws = self.ws();
        let t = ws.tokens.get(token)?;
        if t.expires_at.is_some_and(|e| e <= Utc::now()) {
            return None;
        }
        ws.principal(&t.principal).cloned()
    }

    pub(crate) fn statement(&self, id: &str) -> Option<Arc<Statement>> {
        let s = self.inner.statements.lock().unwrap_or_else(|e| e.into_inner()).get(id).cloned()?;
        s.close_if_expired(chrono::Duration::from_std(self.inner.config.result_ttl).unwrap_or(chrono::Duration::hours(1)));
        Some(s)
    }

    /// Accepts a statement and starts running it in the background.
    pub(crate) fn submit(&self, request: Request) -> Arc<Statement> {
        let id = new_statement_id();
        let stmt = Statement::new(id.clone(), request);
        self.inner.statements.lock().unwrap_or_else(|e| e.into_inner()).insert(id, stmt.clone());
        self.inner.counters.statements.fetch_add(1, Ordering::Relaxed);
        {
            let mut ws = self.ws_mut();
            if let Some(w) = ws.warehouses.get_mut(&stmt.request.warehouse_id) {
                w.counters.statements += 1;
                w.counters.active_statements += 1;
                w.counters.last_activity = Some(Utc::now());
            }
        }
        let emu = self.clone();
        let s = stmt.clone();
        tokio::spawn(async move {
            emu.run(&s).await;
            let mut ws = emu.ws_mut();
            if let Some(w) = ws.warehouses.get_mut(&s.request.warehouse_id) {
                w.counters.active_statements = w.counters.active_statements.saturating_sub(1);
                w.counters.last_activity = Some(Utc::now());
            }
        });
        stmt
    }

    async fn run(&self, stmt: &Arc<Statement>) {
        // Wait for the warehouse (auto-starting it if it may).
        loop {
            let (state, auto_resume) = {
                let ws = self.ws();
                match ws.warehouses.get(&stmt.request.warehouse_id) {
                    Some(w) => (w.state, w.auto_resume),
                    None => return,
                }
            };
            match state {
                WarehouseState::Running => break,
                WarehouseState::Stopped | WarehouseState::Stopping if !auto_resume => {
                    let id = &stmt.request.warehouse_id;
                    stmt.transition(
                        State::Failed,
                        Some(SqlError {
                            error_code: "BAD_REQUEST",
                            message: format!(
                                "[WAREHOUSE_NOT_RUNNING] The SQL warehouse {id} is {} and is not set to start automatically, so the statement cannot run. Start the warehouse (POST /api/2.0/sql/warehouses/{id}/start) or turn on auto-start.",
                                state.as_str()
                            ),
                            sql_state: None,
                        }),
                        None,
                    );
                    return;
                }
                WarehouseState::Stopped => {
                    self.start_warehouse(&stmt.request.warehouse_id, true);
                }
                WarehouseState::Deleted | WarehouseState::Deleting => {
                    stmt.transition(State::Failed, Some(SqlError::raw("The SQL warehouse was deleted.", "08000")), None);
                    return;
                }
                _ => {}
            }
            tokio::select! {
                _ = stmt.cancel.cancelled() => {
                    stmt.transition(State::Canceled, None, None);
                    return;
                }
                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
        }
        if !stmt.transition(State::Running, None, None) {
            return;
        }
        if let Some(err) = self.faults().statement_failure(&stmt.request.statement) {
            self.inner.counters.faults_injected.fetch_add(1, Ordering::Relaxed);
            stmt.transition(State::Failed, Some(err), None);
            return;
        }
        let ws = self.ws().clone();
        let Some(principal) = ws.principal(&stmt.request.principal).cloned() else { return };
        let q = Query {
            sql: stmt.request.statement.clone(),
            catalog: stmt.request.catalog.clone(),
            schema: stmt.request.schema.clone(),
            params: stmt.request.params.clone(),
            max_rows: stmt.request.row_limit.map(|r| r as usize),
        };
        let engine_fut = self.inner.engine.execute(&ws, &principal, &q);
        let out = tokio::select! {
            _ = stmt.cancel.cancelled() => {
                stmt.transition(State::Canceled, None, None);
                return;
            }
            out = engine_fut => out,
        };
        let out = match out {
            Ok(o) => o,
            Err(e) => {
                stmt.transition(State::Failed, Some(e), None);
                return;
            }
        };
        let req = stmt.request.clone();
        let policy = self.inner.config.chunk_policy;
        let inline_limit = self.inner.config.inline_limit_bytes;
        let built = tokio::task::spawn_blocking(move || {
            let mut out = out;
            if let Some(limit) = req.row_limit
                && limit == 0 {
                    out.batches.clear();
                    out.truncated = true;
                }
            let byte_limit = req.byte_limit;
            let rs = results::build(&out, req.format, req.lz4, policy, byte_limit)?;
            if req.disposition == Disposition::Inline && byte_limit.is_none() && rs.total_byte_count > inline_limit {
                return Err(SqlError::raw(
                    format!("The result is larger than the {} MiB INLINE limit. Use disposition EXTERNAL_LINKS for large results, or add a LIMIT.", inline_limit >> 20),
                    "54000",
                ));
            }
            Ok(rs)
        })
        .await;
        match built {
            Ok(Ok(rs)) => {
                stmt.transition(State::Succeeded, None, Some(Arc::new(rs)));
            }
            Ok(Err(e)) => {
                stmt.transition(State::Failed, Some(e), None);
            }
            Err(e) => {
                stmt.transition(State::Failed, Some(SqlError::internal(e.to_string())), None);
            }
        }
    }

    /// Starts a warehouse: STOPPED → STARTING now, RUNNING after its start delay.
    pub(crate) fn start_warehouse(&self, id: &str, by_statement: bool) {
        let (generation, delay) = {
            let mut ws = self.ws_mut();
            let Some(w) = ws.warehouses.get_mut(id) else { return };
            if !matches!(w.state, WarehouseState::Stopped | WarehouseState::Stopping) {
                return;
            }
            w.set_state(WarehouseState::Starting, Utc::now());
            if by_statement {
                w.counters.wakeups += 1;
            }
            (w.generation, w.start_delay_ms)
        };
        self.settle_later(id, generation, delay, WarehouseState::Running);
    }

    /// Stops a warehouse: RUNNING → STOPPING now, STOPPED after its stop delay.
    /// Statements still running on it are canceled, as Databricks does.
    pub(crate) fn stop_warehouse(&self, id: &str) {
        let (generation, delay) = {
            let mut ws = self.ws_mut();
            let Some(w) = ws.warehouses.get_mut(id) else { return };
            if matches!(w.state, WarehouseState::Stopped | WarehouseState::Stopping) {
                return;
            }
            w.set_state(WarehouseState::Stopping, Utc::now());
            (w.generation, w.stop_delay_ms)
        };
        self.cancel_running_on(id);
        self.settle_later(id, generation, delay, WarehouseState::Stopped);
    }

    /// Cancels the statements running on a warehouse that is going away.
    pub(crate) fn cancel_running_on(&self, warehouse_id: &str) {
        for s in self.inner.statements.lock().unwrap_or_else(|e| e.into_inner()).values() {
            if s.request.warehouse_id == warehouse_id && s.state() == State::Running {
                s.cancel.cancel();
            }
        }
    }

    /// Ends a transition (STARTING → RUNNING, STOPPING → STOPPED) after
    /// `delay_ms`, unless another state change came first.
    fn settle_later(&self, id: &str, generation: u64, delay_ms: u64, state: WarehouseState) {
        let emu = self.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            let mut ws = emu.ws_mut();
            if let Some(w) = ws.warehouses.get_mut(&id)
                && w.generation == generation
            {
                w.set_state(state, Utc::now());
            }
        });
    }

    /// Stops idle warehouses past their auto-stop time and forgets results
    /// past their lifetime. Runs until shutdown.
    pub(crate) async fn housekeeping(self) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = self.inner.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = Utc::now();
            let idle: Vec<String> = self
                .ws()
                .warehouses
                .values()
                .filter(|w| {
                    w.state == WarehouseState::Running
                        && w.auto_stop_secs > 0
                        && w.counters.active_statements == 0
                        && w.counters.last_activity.is_some_and(|a| (now - a).num_milliseconds() as u64 >= w.auto_stop_secs * 1000)
                })
                .map(|w| w.id.clone())
                .collect();
            for id in idle {
                tracing::info!(warehouse = %id, "auto-stopping idle warehouse");
                self.stop_warehouse(&id);
            }
            // Statements are removed 12 hours after they end, as on Databricks.
            self.inner
                .statements
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|_, s| s.lock().finished_at.is_none_or(|f| (now - f) < chrono::Duration::hours(12)));
            // Expired OAuth tokens are forgotten, so minting them cannot grow
            // memory; expired PATs stay (they must keep answering 403).
            self.ws_mut().tokens.retain(|_, t| !t.oauth || t.expires_at.is_none_or(|e| e > now));
        }
    }

    /// Re-plans every view (after a column of some table changed). A view
    /// that no longer plans keeps its last columns and fails when queried.
    pub(crate) async fn replan_views(&self) {
        let snapshot = self.ws().clone();
        let mut planned = Vec::new();
        for (c, cat) in &snapshot.catalogs {
            for (s, sch) in &cat.schemas {
                for (t, entry) in &sch.tables {
                    if let Relation::View { sql, .. } = &entry.relation {
                        let r = self.inner.engine.plan_view(&snapshot, sql, c, s).await;
                        planned.push((c.clone(), s.clone(), t.clone(), sql.clone(), r));
                    }
                }
            }
        }
        let mut ws = self.ws_mut();
        for (c, s, t, sql, r) in planned {
            if let Some(entry) = ws.catalogs.get_mut(&c).and_then(|x| x.schemas.get_mut(&s)).and_then(|x| x.tables.get_mut(&t)) {
                let old_schema = entry.schema();
                let schema = r.as_ref().map(|p| p.schema()).unwrap_or(old_schema);
                entry.relation = Relation::View { sql, planned: r, schema };
                entry.updated_at = Utc::now();
            }
        }
    }

    /// Appends rows given as JSON objects (the admin API), converted with the
    /// table's own schema.
    pub async fn append_rows(&self, full_name: &str, rows: &[Value]) -> Result<usize, String> {
        let table = self.base_table(full_name)?;
        let (schema, _) = table.snapshot();
        let mut text = String::new();
        for r in rows {
            if !r.is_object() {
                return Err("each row must be a JSON object of column: value".into());
            }
            text.push_str(&r.to_string());
            text.push('\n');
        }
        let mut reader = datafusion::arrow::json::ReaderBuilder::new(schema.clone())
            .with_strict_mode(true)
            .build(std::io::Cursor::new(text.into_bytes()))
            .map_err(|e| e.to_string())?;
        let mut n = 0;
        for batch in reader.by_ref() {
            let batch = batch.map_err(|e| format!("rows do not match the columns of {full_name}: {e}"))?;
            n += batch.num_rows();
            table.append(batch);
        }
        let mut ws = self.ws_mut();
        if let Some(e) = table_entry_mut(&mut ws, full_name) {
            e.updated_at = Utc::now();
        }
        Ok(n)
    }

    /// Deletes the rows whose `column`, read as text, equals `value` (the
    /// admin API; with an append it stands in for an UPDATE).
    pub async fn delete_rows(&self, full_name: &str, column: &str, value: &str) -> Result<usize, String> {
        use datafusion::arrow::array::{Array, BooleanArray, StringArray};
        let table = self.base_table(full_name)?;
        let (schema, batches) = table.snapshot();
        let idx = schema.index_of(column).map_err(|_| format!("{full_name} has no column `{column}`"))?;
        let mut deleted = 0;
        let mut kept = Vec::with_capacity(batches.len());
        for b in batches {
            let text = datafusion::arrow::compute::cast(b.column(idx), &DataType::Utf8).map_err(|e| e.to_string())?;
            let text = text.as_any().downcast_ref::<StringArray>().ok_or("the column does not read as text")?;
            let keep: BooleanArray = (0..text.len()).map(|i| Some(text.is_null(i) || text.value(i) != value)).collect();
            deleted += keep.iter().filter(|k| *k == Some(false)).count();
            kept.push(datafusion::arrow::compute::filter_record_batch(&b, &keep).map_err(|e| e.to_string())?);
        }
        table.replace(schema, kept);
        let mut ws = self.ws_mut();
        if let Some(e) = table_entry_mut(&mut ws, full_name) {
            e.updated_at = Utc::now();
        }
        Ok(deleted)
    }

    fn base_table(&self, full_name: &str) -> Result<Arc<crate::workspace::EmuTable>, String> {
        let ws = self.ws();
        let parts: Vec<&str> = full_name.split('.').collect();
        let [c, s, t] = parts.as_slice() else {
            return Err(format!("`{full_name}` is not a full name; use catalog.schema.table"));
        };
        match ws.table(c, s, t).map(|e| &e.relation) {
            Some(Relation::Table(tab)) => Ok(tab.clone()),
            Some(Relation::View { .. }) => Err(format!("{full_name} is a view; change its base table instead")),
            None => Err(format!("table {full_name} does not exist")),
        }
    }

    /// Adds, renames or drops a column of a base table, then re-plans views.
    pub async fn alter_column(&self, full_name: &str, change: &ColumnChange) -> Result<(), String> {
        let table = self.base_table(full_name)?;
        let (schema, batches) = table.snapshot();
        let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        let find =
            |fields: &[Field], n: &str| fields.iter().position(|f| f.name() == n).ok_or_else(|| format!("{full_name} has no column `{n}`"));
        let new_batches: Vec<RecordBatch>;
        match change {
            ColumnChange::Add { name, type_ } => {
                if fields.iter().any(|f| f.name() == name) {
                    return Err(format!("{full_name} already has a column `{name}`"));
                }
                let dt = crate::types::parse_type(type_)?;
                fields.push(Field::new(name, dt.clone(), true));
                let schema = Arc::new(Schema::new(fields.clone()));
                new_batches = batches
                    .iter()
                    .map(|b| {
                        let mut cols = b.columns().to_vec();
                        cols.push(datafusion::arrow::array::new_null_array(&dt, b.num_rows()));
                        RecordBatch::try_new(schema.clone(), cols).map_err(|e| e.to_string())
                    })
                    .collect::<Result<_, _>>()?;
            }
            ColumnChange::Rename { from, to } => {
                let i = find(&fields, from)?;
                fields[i] = fields[i].clone().with_name(to);
                let schema = Arc::new(Schema::new(fields.clone()));
                new_batches = batches
                    .iter()
                    .map(|b| RecordBatch::try_new(schema.clone(), b.columns().to_vec()).map_err(|e| e.to_string()))
                    .collect::<Result<_, _>>()?;
            }
            ColumnChange::Drop { name } => {
                let i = find(&fields, name)?;
                fields.remove(i);
                let schema = Arc::new(Schema::new(fields.clone()));
                new_batches = batches
                    .iter()
                    .map(|b| {
                        let mut cols = b.columns().to_vec();
                        cols.remove(i);
                        RecordBatch::try_new(schema.clone(), cols).map_err(|e| e.to_string())
                    })
                    .collect::<Result<_, _>>()?;
            }
        }
        table.replace(Arc::new(Schema::new(fields)), new_batches);
        {
            let mut ws = self.ws_mut();
            if let Some(e) = table_entry_mut(&mut ws, full_name) {
                e.updated_at = Utc::now();
            }
        }
        self.replan_views().await;
        Ok(())
    }

    /// The counters as JSON (admin API).
    pub fn counters_json(&self) -> Value {
        let c = &self.inner.counters;
        let now = Utc::now();
        let ws = self.ws();
        let warehouses: serde_json::Map<String, Value> = ws
            .warehouses
            .values()
            .map(|w| {
                (
                    w.id.clone(),
                    json!({
                        "state": w.state.as_str(),
                        "uptime_ms": w.uptime_ms(now),
                        "starts": w.counters.starts,
                        "wakeups": w.counters.wakeups,
                        "statements": w.counters.statements,
                        "active_statements": w.counters.active_statements,
                    }),
                )
            })
            .collect();
        json!({
            "requests": c.requests.load(Ordering::Relaxed),
            "statements": c.statements.load(Ordering::Relaxed),
            "chunk_requests": c.chunk_requests.load(Ordering::Relaxed),
            "link_downloads": c.link_downloads.load(Ordering::Relaxed),
            "link_bytes": c.link_bytes.load(Ordering::Relaxed),
            "faults_injected": c.faults_injected.load(Ordering::Relaxed),
            "oauth_tokens": c.oauth_tokens.load(Ordering::Relaxed),
            "warehouses": warehouses,
        })
    }

    /// The statements seen so far, newest first (a query history).
    pub fn history_json(&self) -> Value {
        let map = self.inner.statements.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<&Arc<Statement>> = map.values().collect();
        all.sort_by_key(|s| std::cmp::Reverse(s.submitted_at));
        Value::Array(
            all.iter()
                .map(|s| {
                    let tags: Vec<Value> = s.request.query_tags.iter().map(|(k, v)| json!({"key": k, "value": v})).collect();
                    json!({
                        "statement_id": s.id,
                        "statement": s.request.statement,
                        "principal": s.request.principal,
                        "warehouse_id": s.request.warehouse_id,
                        "state": s.state().as_str(),
                        "query_tags": tags,
                        "submitted_at": s.submitted_at.to_rfc3339(),
                    })
                })
                .collect(),
        )
    }
}

/// A change to a table's columns (admin API).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum ColumnChange {
    Add {
        name: String,
        #[serde(rename = "type")]
        type_: String,
    },
    Rename {
        from: String,
        to: String,
    },
    Drop {
        name: String,
    },
}

fn table_entry_mut<'a>(ws: &'a mut Workspace, full_name: &str) -> Option<&'a mut crate::workspace::TableEntry> {
    let parts: Vec<&str> = full_name.split('.').collect();
    let [c, s, t] = parts.as_slice() else { return None };
    ws.catalogs.get_mut(*c)?.schemas.get_mut(*s)?.tables.get_mut(*t)
}

/// A time-based UUID, like Databricks' statement ids (`01f1c46b-...`).
pub fn new_statement_id() -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let now = Utc::now();
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let ts = uuid::Timestamp::from_unix(uuid::NoContext, now.timestamp() as u64, now.timestamp_subsec_nanos());
    let node = {
        let mut n = [0u8; 6];
        n[..6].copy_from_slice(&seq.to_be_bytes()[2..]);
        n
    };
    uuid::Uuid::new_v1(ts, &node).to_string()
}

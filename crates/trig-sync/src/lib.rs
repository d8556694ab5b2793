//! The sync engine: pipelines that pull from Databricks into the Trig store.
//!
//! - [`Engine::run`] runs one pipeline once (scheduled, manual, full refresh
//!   or replay) and records a [`SyncRun`].
//! - **Events** ([`events`]): one SELECT per window `(cursor − lookback,
//!   now − settle]`, rows streamed from the client into the store batch by
//!   batch; each window's cursor commits in the same transaction as its last
//!   rows, so a crash re-reads and never skips (dedup makes the re-read
//!   harmless).
//! - **People / organisations** ([`attributes`]): an incremental read by
//!   `updated_at`, or a full read diffed against stored hashes.
//! - Before reading, the source's columns are checked against the mapping
//!   (schema drift fails the run, naming the column, with the cursor
//!   unmoved).
//!
//! Nothing here is SQLite-specific: the engine talks to [`trig_store::Store`].

mod attributes;
mod error;
mod events;
mod pump;
pub mod query;
pub mod values;
pub mod window;

use std::sync::Arc;
use std::time::{Duration, Instant};

use databricks::{Client, ClientOptions, QueryOptions, TableName};
use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use trig_config::{Config, PipelineConfig, PipelineSpec};
use trig_store::{Fence, Holder, Lease, Micros, PipelineKey, RunKey, Store, SyncRun};

pub use error::{Class, Error};
pub use query::{Query, QueryParameter};
pub use window::Window;

/// Why a run happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Schedule,
    Manual,
    /// Re-read everything (events: from `backfill_from`); events carry the backfill flag.
    FullRefresh,
    /// Re-read `(from, to]` without moving the live cursor; events carry the backfill flag.
    Replay {
        from: Micros,
        to: Micros,
    },
}

impl Trigger {
    pub fn as_str(&self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::Manual => "manual",
            Trigger::FullRefresh => "full_refresh",
            Trigger::Replay { .. } => "replay",
        }
    }
}

/// Where a run is, for a progress bar.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub pipeline: String,
    pub rows_read: u64,
    pub elapsed: Duration,
    pub window: Option<Window>,
    /// How much of the run's range is read, 0 to 1.
    pub covered: f64,
}

pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;
pub type StatementFn = Arc<dyn Fn(&Query) + Send + Sync>;

/// The engine's knobs. The defaults are what the product runs with.
#[derive(Clone)]
pub struct EngineOptions {
    /// How far behind now a window ends, so rows still being written are read next time.
    pub settle: Duration,
    /// Events stamped further than this in the future are quarantined.
    pub future_tolerance: Duration,
    /// How long an unmatched event waits for its person before it is dropped (and counted).
    pub parked_retention: Duration,
    /// The longest window one statement reads. A backfill is cut into windows
    /// sized to hold about `window_rows` rows each (from the density of the
    /// previous one, growing at most 8× at a time), each checkpointed when its
    /// rows commit; after an empty window one statement asks where the data
    /// resumes. Sparse years thus cost a few statements, not one per week.
    pub max_window: Duration,
    /// The rows one statement should return: bounds the work a crash can
    /// lose (a window is checkpointed when its last rows commit) and the
    /// size of a result chunk. Fewer, larger statements cost a warehouse less
    /// (at 100k a 1M-event backfill ran about a sixth faster here), but peak
    /// RSS rose from ~125 to ~160 MiB: the allocator keeps freed chunk and
    /// row buffers for up to a second, and larger chunks leave more of them.
    pub window_rows: u64,
    /// Rows per store transaction (mapped rows are gathered up to about this many).
    pub write_batch_rows: usize,
    pub client: ClientOptions,
    pub query: QueryOptions,
    pub progress: Option<ProgressFn>,
    /// Called with every statement just before it is sent (`--print-sql`).
    pub on_statement: Option<StatementFn>,
    /// Who runs the pipelines, as their leases record it.
    pub holder: Holder,
    /// How long a run's lease lasts without a heartbeat; it is extended every
    /// third of that while the run runs. A run that cannot extend it stops
    /// writing (its writes fail on the fence) and another may take over.
    pub lease_ttl: Duration,
    /// How long a run waits for a pipeline another run holds; `None` fails at once.
    pub wait_for_lease: Option<Duration>,
    /// Clients kept across runs (a service's: the OAuth token cache and the
    /// connection pool live on); `None` makes one per run.
    pub clients: Option<Arc<ClientCache>>,
}

/// One `databricks::Client` per connection, reused across runs while the
/// connection's settings stay the same (a changed token or URL makes a new one).
#[derive(Default)]
pub struct ClientCache {
    clients: std::sync::Mutex<std::collections::HashMap<(String, String), (u64, Client)>>,
}

impl ClientCache {
    /// The client of `tenant`'s connection `name` for `settings`.
    fn get(&self, tenant: &str, name: &str, settings: databricks::ConnectionSettings, options: &ClientOptions) -> Result<Client, Error> {
        let print = fingerprint(&settings);
        let mut m = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let key = (tenant.to_string(), name.to_string());
        if let Some((p, c)) = m.get(&key)
            && *p == print
        {
            return Ok(c.clone());
        }
        let c = Client::with_options(settings, options.clone())?;
        m.insert(key, (print, c.clone()));
        Ok(c)
    }

    /// How many clients are kept.
    pub fn len(&self) -> usize {
        self.clients.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Settings as a number (kept in memory only): equal settings, equal numbers.
fn fingerprint(s: &databricks::ConnectionSettings) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.workspace.base().hash(&mut h);
    s.warehouse.as_str().hash(&mut h);
    s.default_catalog.hash(&mut h);
    s.allow_hosts.entries().hash(&mut h);
    match &s.credentials {
        databricks::Credentials::Token(t) => ("token", t.expose()).hash(&mut h),
        databricks::Credentials::OAuth { client_id, client_secret } => ("oauth", client_id, client_secret.expose()).hash(&mut h),
    }
    h.finish()
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            settle: Duration::from_secs(60),
            future_tolerance: Duration::from_secs(3600),
            parked_retention: Duration::from_secs(7 * 86_400),
            max_window: Duration::from_secs(366 * 86_400),
            window_rows: 20_000,
            write_batch_rows: 20_000,
            client: ClientOptions::default(),
            query: QueryOptions::default(),
            progress: None,
            on_statement: None,
            holder: Holder::this_process("trig-databricks"),
            lease_ttl: Duration::from_secs(60),
            wait_for_lease: None,
            clients: None,
        }
    }
}

/// A finished run: its record (also stored) and, when it failed, the typed error.
#[derive(Debug)]
pub struct Finished {
    pub run: SyncRun,
    pub error: Option<Error>,
}

/// What `--dry-run` shows: the first statement a real run would send, and the first rows mapped.
#[derive(Debug, Clone, Serialize)]
pub struct DryRun {
    pub sql: String,
    pub parameters: Vec<QueryParameter>,
    pub rows: Vec<Value>,
}

/// Runs pipelines of one config against one store.
pub struct Engine {
    config: Config,
    store: Arc<dyn Store>,
    options: EngineOptions,
}

pub(crate) fn now_micros() -> Micros {
    chrono::Utc::now().timestamp_micros()
}

pub(crate) fn micros(d: Duration) -> Micros {
    d.as_micros().min(i64::MAX as u128) as i64
}

/// A spawned task, aborted when the handle is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What one run needs while it runs.
pub(crate) struct Ctx<'a> {
    pub pipeline: &'a PipelineConfig,
    /// The pipeline in the store, the fence of the lease the run holds, and the run's record.
    pub key: PipelineKey,
    pub fence: Fence,
    pub run: RunKey,
    pub table: TableName,
    pub client: Client,
    pub store: &'a dyn Store,
    pub options: &'a EngineOptions,
    pub cancel: &'a CancellationToken,
    pub run_id: String,
    pub started: Instant,
}

impl Ctx<'_> {
    pub fn progress(&self, rows_read: u64, window: Option<Window>, covered: f64) {
        if let Some(p) = &self.options.progress {
            p(&Progress { pipeline: self.pipeline.name.clone(), rows_read, elapsed: self.started.elapsed(), window, covered });
        }
    }

    /// Sends a statement (tagged with the run) and returns its result stream.
    pub async fn query(&self, q: &Query, limit: Option<u64>) -> Result<databricks::ResultStream, Error> {
        let mut stmt = self.statement(q);
        stmt.row_limit = limit;
        tokio::select! {
            r = self.client.query(&stmt, &self.options.query) => Ok(r?),
            _ = self.cancel.cancelled() => Err(Error::Cancelled),
        }
    }

    /// The statement `q` sends, tagged with the run (and shown to the
    /// `on_statement` hook as it is sent).
    fn statement(&self, q: &Query) -> databricks::Statement {
        if let Some(f) = &self.options.on_statement {
            f(q);
        }
        q.statement().tag("trig_run_id", self.run_id.clone()).tag("trig_pipeline", self.pipeline.name.clone())
    }

    /// [`Ctx::query`] started at once as a task of its own: the statement
    /// runs on the warehouse, and is polled for, whatever the caller awaits
    /// meanwhile (a sync waiting for its writer still has its next window's
    /// result ready when it gets there). Dropping the returned future aborts
    /// the task, which cancels the statement.
    pub fn query_ahead(&self, q: Query) -> impl Future<Output = Result<databricks::ResultStream, Error>> + Send + 'static {
        let stmt = self.statement(&q);
        let (client, options, cancel) = (self.client.clone(), self.options.query.clone(), self.cancel.clone());
        let task = tokio::spawn(async move {
            tokio::select! {
                r = client.query(&stmt, &options) => Ok(r?),
                _ = cancel.cancelled() => Err(Error::Cancelled),
            }
        });
        let mut task = AbortOnDrop(task);
        async move {
            match (&mut task.0).await {
                Ok(r) => r,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => Err(Error::Cancelled),
            }
        }
    }

    /// The source's columns, checked against the mapping: a configured column
    /// that is missing fails with its key and the closest existing name.
    pub async fn preflight(&self, wanted: &[(String, String)]) -> Result<Vec<String>, Error> {
        let cols = tokio::select! {
            r = self.client.table_columns(&self.table) => r?,
            _ = self.cancel.cancelled() => return Err(Error::Cancelled),
        };
        let names: Vec<&str> = cols.iter().map(|c| c.name.as_str()).collect();
        for (key, col) in wanted {
            if !names.iter().any(|n| n.eq_ignore_ascii_case(col)) {
                return Err(Error::Drift {
                    source_table: self.table.full_name(),
                    column: col.clone(),
                    key: format!("pipelines.{}.{key}", self.pipeline.name),
                    suggestion: databricks::suggest::closest(col, &names).map(str::to_string),
                });
            }
        }
        Ok(cols.into_iter().map(|c| c.name).collect())
    }
}

impl Engine {
    pub fn new(config: Config, store: Arc<dyn Store>, options: EngineOptions) -> Engine {
        Engine { config, store, options }
    }

    fn client_for(&self, p: &PipelineConfig) -> Result<(Client, TableName), Error> {
        let conn = self
            .config
            .connection(&p.connection)
            .map_err(|m| Error::Config { key: format!("pipelines.{}.connection", p.name), message: m })?;
        let settings = conn.settings().map_err(|e| Error::Config { key: e.key, message: e.message })?;
        let client = match &self.options.clients {
            Some(cache) => cache.get(self.config.tenant.as_str(), &p.connection, settings, &self.options.client)?,
            None => Client::with_options(settings, self.options.client.clone())?,
        };
        Ok((client, p.source.clone()))
    }

    fn pipeline(&self, name: &str) -> Result<&PipelineConfig, Error> {
        self.config.pipeline(name).map_err(|m| Error::Config { key: "pipeline".into(), message: m })
    }

    /// The pipeline in the store, in the config's tenant.
    async fn key(&self, p: &PipelineConfig) -> Result<PipelineKey, Error> {
        let tenant = self.store.tenant(self.config.tenant.as_str()).await?;
        Ok(self.store.pipeline(tenant, &p.name).await?)
    }

    /// Leases the pipeline, waiting for another run's lease when the options say so.
    async fn claim(&self, key: PipelineKey, cancel: &CancellationToken) -> Result<Lease, Error> {
        let deadline = self.options.wait_for_lease.map(|w| Instant::now() + w);
        loop {
            match self.store.claim(key, &self.options.holder, self.options.lease_ttl).await {
                Err(trig_store::Error::LeaseHeld { .. }) if deadline.is_some_and(|d| Instant::now() < d) => {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = cancel.cancelled() => return Err(Error::Cancelled),
                    }
                }
                other => return Ok(other?),
            }
        }
    }

    /// Runs `pipeline` once and records the run. `Err` only when no run
    /// could be recorded (unknown pipeline, unreadable secret, store down,
    /// the pipeline held by another run, the lease lost); otherwise the
    /// run's record, with its error when it failed.
    pub async fn run(&self, pipeline: &str, trigger: Trigger, cancel: &CancellationToken) -> Result<Finished, Error> {
        self.run_as(pipeline, trigger, None, cancel).await
    }

    /// [`Engine::run`] under a run id chosen beforehand (the one a "sync now" answered with).
    pub async fn run_as(
        &self,
        pipeline: &str,
        trigger: Trigger,
        run_id: Option<String>,
        cancel: &CancellationToken,
    ) -> Result<Finished, Error> {
        let p = self.pipeline(pipeline)?;
        let (client, table) = self.client_for(p)?;
        let key = self.key(p).await?;
        // One run of a pipeline at a time, across processes: the lease.
        let lease = self.claim(key, cancel).await?;
        // The heartbeat extends the lease while the run runs; a lease lost
        // (expired, taken over) stops the run, whose writes would fail anyway.
        let run_cancel = cancel.child_token();
        let lost: Arc<std::sync::Mutex<Option<trig_store::Error>>> = Arc::default();
        let heartbeat = {
            let (store, lease, ttl, stop, lost) =
                (self.store.clone(), lease.clone(), self.options.lease_ttl, run_cancel.clone(), lost.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(ttl / 3).await;
                    match store.heartbeat(&lease, ttl).await {
                        Ok(_) => {}
                        Err(e @ trig_store::Error::LeaseLost { .. }) => {
                            tracing::warn!(error = %e, "lease lost; stopping the run");
                            *lost.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                            stop.cancel();
                            return;
                        }
                        // Busy or down: the next beat tries again; the lease outlives a few misses.
                        Err(e) => tracing::warn!(error = %e, "lease heartbeat failed; retrying"),
                    }
                }
            })
        };
        let result = self.run_leased(p, client, table, key, &lease, trigger, run_id, &run_cancel).await;
        heartbeat.abort();
        if let Some(e) = lost.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Err(e.into());
        }
        let finished = result?;
        if let Err(e) = self.store.release(&lease).await {
            tracing::warn!(error = %e, "could not release the lease; it expires on its own");
        }
        Ok(finished)
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_leased(
        &self,
        p: &PipelineConfig,
        client: Client,
        table: TableName,
        key: PipelineKey,
        lease: &Lease,
        trigger: Trigger,
        run_id: Option<String>,
        cancel: &CancellationToken,
    ) -> Result<Finished, Error> {
        let run_id = run_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let mut run = SyncRun {
            run_id: run_id.clone(),
            pipeline: p.name.clone(),
            trigger: trigger.as_str().into(),
            status: "running".into(),
            started_at: now_micros(),
            ..Default::default()
        };
        // The warehouse's state at the start (a cold start explains a slow run). Failing
        // to read it is not fatal: the query that follows reports the real problem.
        run.warehouse_state = tokio::select! {
            w = client.warehouse() => w.ok().map(|w| w.state),
            _ = cancel.cancelled() => None,
        };
        let fence = lease.fence;
        let run_key = self.store.begin_run(fence, &run).await?;
        tracing::info!(pipeline = %p.name, run_id = %run_id, trigger = trigger.as_str(), fence = fence.value, "sync run started");
        let ctx = Ctx {
            pipeline: p,
            key,
            fence,
            run: run_key,
            table,
            client,
            store: self.store.as_ref(),
            options: &self.options,
            cancel,
            run_id,
            started: Instant::now(),
        };
        let result = match &p.spec {
            PipelineSpec::Events(spec) => events::run(&ctx, spec, trigger, &mut run).await,
            PipelineSpec::Attributes(spec) => attributes::run(&ctx, spec, trigger, &mut run).await,
        };
        if ctx.client.query_tags_refused() {
            run.notes.push(
                "this workspace refuses query_tags, so the run's statements were sent without them \
                 (they are not tagged with trig_run_id in the query history)"
                    .into(),
            );
        }
        run.ended_at = Some(now_micros());
        let error = match result {
            // A write refused on the fence: this run is no longer the pipeline's; the record is the new holder's to close.
            Err(Error::Store(e @ trig_store::Error::LeaseLost { .. })) => return Err(Error::Store(e)),
            Ok(()) => {
                run.status = "succeeded".into();
                None
            }
            Err(e) => {
                run.status = if matches!(e, Error::Cancelled) { "cancelled" } else { "failed" }.into();
                run.error_kind = Some(e.kind().into());
                run.error_message = Some(e.to_string());
                // Recorded in the run and returned: the caller reports it (once) to whoever must act.
                tracing::info!(pipeline = %p.name, run_id = %run.run_id, kind = e.kind(), error = %e, "sync run failed");
                Some(e)
            }
        };
        self.store.finish_run(fence, run_key, &run).await?;
        tracing::info!(pipeline = %p.name, run_id = %run.run_id, status = %run.status, rows = run.counts.rows_read, "sync run ended");
        Ok(Finished { run, error })
    }

    /// The first statement a real run would send (same SQL, same parameters)
    /// and the first `limit` rows mapped; nothing is written.
    pub async fn dry_run(&self, pipeline: &str, trigger: Trigger, limit: u64) -> Result<DryRun, Error> {
        let p = self.pipeline(pipeline)?;
        let (client, table) = self.client_for(p)?;
        let cancel = CancellationToken::new();
        let key = self.key(p).await?;
        let ctx = Ctx {
            pipeline: p,
            key,
            // Nothing is written: no lease, no run record.
            fence: Fence { pipeline: key, value: -1 },
            run: RunKey(-1),
            table,
            client,
            store: self.store.as_ref(),
            options: &self.options,
            cancel: &cancel,
            run_id: format!("dry-run-{}", uuid::Uuid::new_v4()),
            started: Instant::now(),
        };
        match &p.spec {
            PipelineSpec::Events(spec) => events::dry_run(&ctx, spec, trigger, limit).await,
            PipelineSpec::Attributes(spec) => attributes::dry_run(&ctx, spec, trigger, limit).await,
        }
    }
}

/// Every pipeline of a config in the order a complete sync runs them:
/// organisations, then people, then events (so events find their people).
pub fn ordered_pipelines(config: &Config) -> Vec<String> {
    let rank = |p: &PipelineConfig| match p.kind() {
        "organisations" => 0,
        "people" => 1,
        _ => 2,
    };
    let mut v: Vec<&PipelineConfig> = config.pipelines.values().collect();
    v.sort_by_key(|p| (rank(p), p.name.clone()));
    v.into_iter().map(|p| p.name.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(token: &str) -> databricks::ConnectionSettings {
        let allow = databricks::AllowHosts::default();
        databricks::ConnectionSettings::new(
            databricks::WorkspaceUrl::parse("https://dbc-a1b2c3d4-e5f6.cloud.databricks.com", &allow).unwrap(),
            databricks::WarehouseId::from_http_path("/sql/1.0/warehouses/abc123").unwrap(),
            databricks::Credentials::Token(databricks::Secret::new(token)),
            None,
            allow,
        )
        .unwrap()
    }

    #[test]
    fn a_connection_keeps_one_client_until_its_settings_change() {
        let cache = ClientCache::default();
        let o = ClientOptions::default();
        let a = cache.get("acme", "prod", settings("dapi-1"), &o).unwrap();
        let b = cache.get("acme", "prod", settings("dapi-1"), &o).unwrap();
        assert!(a.is_same(&b), "reused across runs");
        let c = cache.get("acme", "prod", settings("dapi-2"), &o).unwrap();
        assert!(!c.is_same(&a), "a new token makes a new client");
        let d = cache.get("globex", "prod", settings("dapi-2"), &o).unwrap();
        assert!(!d.is_same(&c), "another tenant's connection is its own");
        assert_eq!(cache.len(), 2);
    }
}

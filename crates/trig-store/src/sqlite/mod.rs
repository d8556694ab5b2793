//! The embedded store: one SQLite file, created and migrated on first use.
//!
//! One connection owned by one thread that runs the calls in turn; every
//! call is one transaction (WAL, `synchronous = NORMAL`: a killed process loses
//! nothing that committed). Several processes may share the file: every write
//! transaction takes the write lock when it begins (`BEGIN IMMEDIATE`), so a
//! writer waits up to [`BUSY_TIMEOUT`] for another instead of failing, and the
//! migration runs inside one such transaction that re-reads the version.
//! The decisions are the rules' (`rules.rs`); this module runs them in a
//! transaction ([`tx`] offers the rows).

mod tx;

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use serde_json::{Value, json};

use crate::rules::{self, PeopleCache, json_text, now_micros};
use crate::time::rfc3339;
use crate::{
    Error, EventBatch, EventOutcome, Export, Fence, Holder, Lease, Micros, PipelineKey, RecordBatch, RecordOutcome, RunCounts, RunKey,
    RunTime, Slot, Store, SyncRun, TenantId, Totals,
};

/// The migrations, in order: version `i + 1` is `MIGRATIONS[i]`. A new file
/// runs them all, so the path an old file takes is the path every file took.
pub(crate) const MIGRATIONS: &[&str] = &[
    include_str!("v1.sql"),
    // 2: a run's record moves with each commit (its end is its last commit if
    // it dies); the first sync's progress has a slot of its own, shared with
    // the full refresh.
    "ALTER TABLE sync_runs ADD COLUMN last_commit_at INTEGER;
     ALTER TABLE sync_runs ADD COLUMN notes TEXT NOT NULL DEFAULT '[]';
     UPDATE cursors SET slot = 'backfill' WHERE slot = 'full_refresh';",
    // 3: tenants, pipelines by id with their lease, one b-tree per event.
    include_str!("v3.sql"),
    // 4: the service's records: a tenant's name for people, API tokens by hash.
    include_str!("v4.sql"),
    // 5: the pages' sign-ins (sessions and one-time login links, by hash).
    include_str!("v5.sql"),
    // 6: a counter of people given an external id (created with one, or claimed) (the cache of identifiers with no person).
    include_str!("v6.sql"),
    // 7: what a write's events share (run, backfill, time stored) in a batch row, not in every event.
    include_str!("v7.sql"),
];
/// The schema version this build reads and writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// How long a write waits for another process's transaction before it fails
/// as [`Error::Busy`] (transient: the next run retries).
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// SQLite's page cache, in KiB: bounded, whatever the size of the database.
pub const PAGE_CACHE_KIB: i64 = 16 * 1024;

/// The page size of a database file this store creates (SQLite's default is
/// 4 KiB). A backfill appends rows to the events b-tree, and with pages four
/// times larger SQLite does a quarter of the page work (fetches, splits,
/// WAL frames) per row: a 1M-event backfill ran ~5 % shorter, the same
/// rows in every round. A file made before keeps its page size.
pub const NEW_FILE_PAGE_SIZE: i64 = 16 * 1024;

type Job = Box<dyn FnOnce(&mut Worker) + Send>;

/// What the store's thread owns: the connection, and the people already resolved.
struct Worker {
    conn: Connection,
    people: std::sync::Mutex<PeopleCache>,
}

/// The SQLite store.
#[derive(Clone)]
pub struct SqliteStore {
    /// Jobs for the thread that owns the connection.
    jobs: std::sync::mpsc::Sender<Job>,
    path: String,
    busy_timeout: Duration,
    #[cfg(feature = "failpoints")]
    failpoint: crate::failpoint::Failpoint,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.path).finish()
    }
}

impl SqliteStore {
    /// Opens (creating and migrating) the database at `path`; `:memory:` for a private in-memory one.
    ///
    /// With the `failpoints` feature (tests only),
    /// `TRIG_FAILPOINT=events_before_commit:N` aborts the process on the N-th
    /// event batch, after its rows are written and before its commit.
    pub fn open(path: &str) -> Result<SqliteStore, Error> {
        SqliteStore::open_with(path, BUSY_TIMEOUT)
    }

    /// [`SqliteStore::open`] with another busy timeout (tests).
    pub fn open_with(path: &str, busy_timeout: Duration) -> Result<SqliteStore, Error> {
        let open_err = |e: rusqlite::Error| match Error::from(e) {
            Error::Database(reason) => Error::Open { path: path.to_string(), reason },
            other => other.at(path, busy_timeout),
        };
        if path != ":memory:"
            && let Some(dir) = Path::new(path).parent()
            && !dir.as_os_str().is_empty()
            && !dir.exists()
        {
            return Err(Error::Open { path: path.to_string(), reason: format!("the folder {} does not exist", dir.display()) });
        }
        let mut conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(busy_timeout).map_err(open_err)?;
        // Switching a new file to WAL and creating the schema can meet
        // another process doing the same; SQLite answers some of those
        // collisions with SQLITE_BUSY at once, without its busy handler, so
        // the setup waits here, within the same timeout.
        let deadline = std::time::Instant::now() + busy_timeout;
        // Only a new, empty file takes it; an existing one keeps its own (and
        // a failure here only leaves SQLite's default).
        let _ = conn.pragma_update(None, "page_size", NEW_FILE_PAGE_SIZE);
        until_not_busy(deadline, || conn.pragma_update(None, "journal_mode", "WAL").map_err(Error::from)).map_err(|e| match e {
            Error::Database(reason) => Error::Open { path: path.to_string(), reason },
            other => other.at(path, busy_timeout),
        })?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(open_err)?;
        conn.pragma_update(None, "cache_size", -PAGE_CACHE_KIB).map_err(open_err)?;
        until_not_busy(deadline, || migrate(&mut conn, path)).map_err(|e| e.at(path, busy_timeout))?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(open_err)?;
        let checkpoints = if path == ":memory:" { None } else { checkpointer(path, busy_timeout) };
        if checkpoints.is_some() {
            let page: i64 = conn.pragma_query_value(None, "page_size", |r| r.get(0)).map_err(open_err)?;
            conn.pragma_update(None, "wal_autocheckpoint", WAL_SELF_CHECKPOINT_BYTES / page.max(512)).map_err(open_err)?;
        }
        // One thread owns the connection and runs every call in turn: SQLite
        // sees one thread, and its memory stays in one allocator arena.
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("trig-store".into())
            .spawn(move || {
                let mut checkpointed_at = conn.total_changes();
                let mut worker = Worker { conn, people: std::sync::Mutex::default() };
                while let Ok(job) = queue.recv() {
                    // A panic is a bug; it fails that call (its answer is dropped), not the store.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut worker)));
                    // Something was written: the checkpointer copies it from the
                    // WAL into the database while this thread goes on.
                    let changes = worker.conn.total_changes();
                    if let Some(c) = &checkpoints
                        && changes != checkpointed_at
                    {
                        checkpointed_at = changes;
                        let _ = c.try_send(());
                    }
                }
            })
            .map_err(|e| Error::Open { path: path.to_string(), reason: format!("cannot start the store's thread: {e}") })?;
        Ok(SqliteStore {
            jobs,
            path: path.to_string(),
            busy_timeout,
            #[cfg(feature = "failpoints")]
            failpoint: crate::failpoint::Failpoint::from_env(),
        })
    }

    /// Arms the failpoint in `write_events` for the `nth` call from now (tests).
    #[cfg(feature = "failpoints")]
    pub fn set_failpoint(&self, nth: u64, action: crate::FailAction) {
        self.failpoint.arm(nth, action);
    }

    async fn with<T: Send + 'static>(&self, f: impl FnOnce(&mut Connection) -> Result<T, Error> + Send + 'static) -> Result<T, Error> {
        self.with_worker(move |w| f(&mut w.conn)).await
    }

    /// Runs `f` in one write transaction, committed when it returns `Ok`.
    async fn write<T: Send + 'static>(&self, f: impl FnOnce(&mut Transaction) -> Result<T, Error> + Send + 'static) -> Result<T, Error> {
        self.with(move |c| {
            let mut tx = write_tx(c)?;
            let out = f(&mut tx)?;
            tx.commit()?;
            Ok(out)
        })
        .await
    }

    async fn with_worker<T: Send + 'static>(&self, f: impl FnOnce(&mut Worker) -> Result<T, Error> + Send + 'static) -> Result<T, Error> {
        let (path, timeout) = (self.path.clone(), self.busy_timeout);
        let (answer, answered) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move |w: &mut Worker| {
                let _ = answer.send(f(w));
            }))
            .map_err(|_| Error::Database("the store's thread has stopped".into()))?;
        let out = answered.await.map_err(|_| Error::Database("a store call failed unexpectedly (a bug); see the log".into()))?;
        out.map_err(|e| e.at(&path, timeout))
    }
}

/// WAL bytes after which the writer checkpoints on its own thread. The
/// checkpointer normally keeps the WAL far shorter; this bounds it when that
/// thread cannot keep up or could not start.
const WAL_SELF_CHECKPOINT_BYTES: i64 = 64 << 20;

/// Starts the thread that moves committed pages from the WAL into the
/// database, on a connection of its own, after each write the store's
/// thread signals (several signals while it works make one more pass).
/// Copying is about half of what a commit costs; here it runs beside the
/// writer instead of inside its commits. Its checkpoints are `PASSIVE`: they
/// never wait for nor block the writer or a reader, and copy what no reader
/// still needs. It ends when the store's thread does (its sender drops).
/// `None` when its connection cannot open: the writer then checkpoints
/// itself, as SQLite does by default.
fn checkpointer(path: &str, busy_timeout: Duration) -> Option<std::sync::mpsc::SyncSender<()>> {
    let conn = Connection::open(path).ok()?;
    conn.busy_timeout(busy_timeout).ok()?;
    let (signal, signals) = std::sync::mpsc::sync_channel::<()>(1);
    std::thread::Builder::new()
        .name("trig-store-wal".into())
        .spawn(move || {
            while signals.recv().is_ok() {
                // A failed pass (another process's checkpoint, a full disk) is
                // left to the next signal, or to the writer's own bound.
                let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
            }
        })
        .ok()?;
    Some(signal)
}

/// Runs `f` again while it fails with [`Error::Busy`], until `deadline`.
fn until_not_busy<T>(deadline: std::time::Instant, mut f: impl FnMut() -> Result<T, Error>) -> Result<T, Error> {
    let mut pause = Duration::from_millis(2);
    loop {
        match f() {
            Err(Error::Busy { .. }) if std::time::Instant::now() + pause < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

/// Brings the schema to [`SCHEMA_VERSION`] in one write transaction that
/// reads the version under the write lock, so two processes opening a new
/// file never both create it, and a failed step leaves the old version whole.
fn migrate(conn: &mut Connection, path: &str) -> Result<(), Error> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version == SCHEMA_VERSION {
        return Ok(());
    }
    if version > SCHEMA_VERSION {
        return Err(Error::TooNew { path: path.to_string(), found: version, supported: SCHEMA_VERSION });
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(Error::TooNew { path: path.to_string(), found: version, supported: SCHEMA_VERSION });
    }
    for step in &MIGRATIONS[version.max(0) as usize..] {
        tx.execute_batch(step)?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(())
}

/// A write transaction: it holds the write lock from its first statement, so
/// waiting for another writer goes through the busy timeout (a deferred
/// transaction that upgrades to a write fails at once instead).
fn write_tx(conn: &mut Connection) -> Result<Transaction<'_>, Error> {
    Ok(conn.transaction_with_behavior(TransactionBehavior::Immediate)?)
}

fn run_from_row(r: &rusqlite::Row) -> rusqlite::Result<SyncRun> {
    let ids: String = r.get("statement_ids")?;
    Ok(SyncRun {
        run_id: r.get("run_id")?,
        pipeline: r.get("pipeline")?,
        trigger: r.get("trigger")?,
        status: r.get("status")?,
        started_at: r.get("started_at")?,
        ended_at: r.get("ended_at")?,
        window_from: r.get("window_from")?,
        window_to: r.get("window_to")?,
        statement_ids: serde_json::from_str(&ids).unwrap_or_default(),
        warehouse_state: r.get("warehouse_state")?,
        counts: RunCounts {
            rows_read: r.get::<_, i64>("rows_read")? as u64,
            inserted: r.get::<_, i64>("inserted")? as u64,
            updated: r.get::<_, i64>("updated")? as u64,
            unchanged: r.get::<_, i64>("unchanged")? as u64,
            deduplicated: r.get::<_, i64>("deduplicated")? as u64,
            parked: r.get::<_, i64>("parked")? as u64,
            rematched: r.get::<_, i64>("rematched")? as u64,
            dropped: r.get::<_, i64>("dropped")? as u64,
            quarantined: r.get::<_, i64>("quarantined")? as u64,
            late: r.get::<_, i64>("late")? as u64,
            people_created: r.get::<_, i64>("people_created")? as u64,
            bytes: r.get::<_, i64>("bytes")? as u64,
        },
        error_kind: r.get("error_kind")?,
        error_message: r.get("error_message")?,
        notes: serde_json::from_str(&r.get::<_, String>("notes")?).unwrap_or_default(),
    })
}

fn export_tx(
    conn: &Connection,
    t: TenantId,
    what: Export,
    after: Option<&str>,
    limit: usize,
) -> Result<(Vec<Value>, Option<String>), Error> {
    let n = limit as i64;
    let mut last: Option<String> = None;
    let mut out = Vec::new();
    // Positions: a row id, or for events `pipeline id:event id` (their key).
    let after_id: i64 = after.and_then(|a| a.parse().ok()).unwrap_or(0);
    match what {
        Export::Events => {
            let (from_pipeline, from_event) = match after.and_then(|a| a.split_once(':')) {
                Some((p, e)) => (p.parse::<i64>().unwrap_or(0), e.to_string()),
                None => (0, String::new()),
            };
            let mut s = conn.prepare_cached(
                "SELECT e.pipeline_id, e.event_id, e.name, e.ts, p.external_id, p.email, e.properties, b.backfill, l.name, b.ingested_at
                 FROM events e JOIN people p ON p.id = e.person_id JOIN pipelines l ON l.id = e.pipeline_id
                 JOIN event_batches b ON b.tenant_id = e.tenant_id AND b.id = e.batch
                 WHERE e.tenant_id = ?1 AND (e.pipeline_id, e.event_id) > (?2, ?3) ORDER BY e.pipeline_id, e.event_id LIMIT ?4",
            )?;
            let mut rows = s.query(params![t.0, from_pipeline, from_event, n])?;
            while let Some(r) = rows.next()? {
                last = Some(format!("{}:{}", r.get::<_, i64>(0)?, r.get::<_, String>(1)?));
                let props: String = r.get(6)?;
                out.push(json!({
                    "event_id": r.get::<_, String>(1)?,
                    "event_name": r.get::<_, String>(2)?,
                    "timestamp": rfc3339(r.get(3)?),
                    "person_id": r.get::<_, Option<String>>(4)?,
                    "email": r.get::<_, Option<String>>(5)?,
                    "properties": json_text(&props),
                    "backfill": r.get::<_, bool>(7)?,
                    "pipeline": r.get::<_, String>(8)?,
                    "ingested_at": rfc3339(r.get(9)?),
                }));
            }
        }
        Export::People => {
            let mut s = conn.prepare_cached(
                "SELECT id, external_id, name, email, organisation_external_id, attributes FROM people WHERE tenant_id = ?1 AND id > ?2
                 ORDER BY id LIMIT ?3",
            )?;
            let mut rows = s.query(params![t.0, after_id, n])?;
            while let Some(r) = rows.next()? {
                last = Some(r.get::<_, i64>(0)?.to_string());
                let attrs: String = r.get(5)?;
                out.push(json!({
                    "id": r.get::<_, Option<String>>(1)?,
                    "name": r.get::<_, Option<String>>(2)?,
                    "email": r.get::<_, Option<String>>(3)?,
                    "organisation_id": r.get::<_, Option<String>>(4)?,
                    "attributes": json_text(&attrs),
                }));
            }
        }
        Export::Organisations => {
            let mut s = conn.prepare_cached(
                "SELECT id, external_id, name, domain, attributes FROM organisations WHERE tenant_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
            )?;
            let mut rows = s.query(params![t.0, after_id, n])?;
            while let Some(r) = rows.next()? {
                last = Some(r.get::<_, i64>(0)?.to_string());
                let attrs: String = r.get(4)?;
                out.push(json!({
                    "id": r.get::<_, String>(1)?,
                    "name": r.get::<_, String>(2)?,
                    "domain": r.get::<_, Option<String>>(3)?,
                    "attributes": json_text(&attrs),
                }));
            }
        }
        Export::Parked => {
            let mut s = conn.prepare_cached(
                "SELECT e.id, l.name, e.event_id, e.name, e.ts, e.key_kind, e.user_key, e.email, e.backfill, e.parked_at
                 FROM parked_events e JOIN pipelines l ON l.id = e.pipeline_id WHERE e.tenant_id = ?1 AND e.id > ?2 ORDER BY e.id LIMIT ?3",
            )?;
            let mut rows = s.query(params![t.0, after_id, n])?;
            while let Some(r) = rows.next()? {
                last = Some(r.get::<_, i64>(0)?.to_string());
                out.push(json!({
                    "pipeline": r.get::<_, String>(1)?,
                    "event_id": r.get::<_, String>(2)?,
                    "event_name": r.get::<_, String>(3)?,
                    "timestamp": rfc3339(r.get(4)?),
                    "key_kind": r.get::<_, String>(5)?,
                    "user_key": r.get::<_, String>(6)?,
                    "email": r.get::<_, Option<String>>(7)?,
                    "backfill": r.get::<_, bool>(8)?,
                    "parked_at": rfc3339(r.get(9)?),
                }));
            }
        }
        Export::Quarantine => {
            let mut s = conn.prepare_cached(
                "SELECT q.id, l.name, r.run_id, q.key, q.reason, q.row, q.at FROM quarantine q JOIN pipelines l ON l.id = q.pipeline_id
                 LEFT JOIN sync_runs r ON r.id = q.run WHERE q.tenant_id = ?1 AND q.id > ?2 ORDER BY q.id LIMIT ?3",
            )?;
            let mut rows = s.query(params![t.0, after_id, n])?;
            while let Some(r) = rows.next()? {
                last = Some(r.get::<_, i64>(0)?.to_string());
                let row: String = r.get(5)?;
                out.push(json!({
                    "pipeline": r.get::<_, String>(1)?,
                    "run_id": r.get::<_, Option<String>>(2)?,
                    "key": r.get::<_, Option<String>>(3)?,
                    "reason": r.get::<_, String>(4)?,
                    "row": json_text(&row),
                    "at": rfc3339(r.get(6)?),
                }));
            }
        }
    }
    // A short page is the last one.
    let next = if out.len() < limit { None } else { last };
    Ok((out, next))
}

#[async_trait]
impl crate::catalog::Backend for SqliteStore {
    async fn db<T, F>(&self, write: bool, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn crate::sql::Db) -> Result<T, Error> + Send + 'static,
    {
        self.with(move |c| {
            let mut tx = if write { write_tx(c)? } else { c.transaction()? };
            let out = f(&mut tx)?;
            tx.commit()?;
            Ok(out)
        })
        .await
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn tenant(&self, name: &str) -> Result<TenantId, Error> {
        let name = name.to_string();
        self.write(move |tx| {
            tx.execute("INSERT INTO tenants (name, created_at) VALUES (?1, ?2) ON CONFLICT DO NOTHING", params![name, now_micros()])?;
            Ok(TenantId(tx.query_row("SELECT id FROM tenants WHERE name = ?1", [&name], |r| r.get(0))?))
        })
        .await
    }

    async fn pipeline(&self, tenant: TenantId, name: &str) -> Result<PipelineKey, Error> {
        let name = name.to_string();
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO pipelines (tenant_id, name, created_at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                params![tenant.0, name, now_micros()],
            )
            .map_err(|e| match Error::from(e) {
                Error::Database(m) if m.contains("FOREIGN KEY") => Error::NotFound { what: format!("tenant {}", tenant.0) },
                other => other,
            })?;
            let id = tx.query_row("SELECT id FROM pipelines WHERE tenant_id = ?1 AND name = ?2", params![tenant.0, name], |r| r.get(0))?;
            Ok(PipelineKey { tenant, pipeline: crate::PipelineId(id) })
        })
        .await
    }

    async fn claim(&self, pipeline: PipelineKey, holder: &Holder, ttl: Duration) -> Result<Lease, Error> {
        let holder = holder.clone();
        self.write(move |tx| rules::claim(tx, pipeline, &holder, ttl)).await
    }

    async fn heartbeat(&self, lease: &Lease, ttl: Duration) -> Result<Micros, Error> {
        let lease = lease.clone();
        self.write(move |tx| rules::heartbeat(tx, &lease, ttl)).await
    }

    async fn release(&self, lease: &Lease) -> Result<(), Error> {
        let lease = lease.clone();
        self.write(move |tx| rules::release(tx, &lease)).await
    }

    async fn cursor(&self, p: PipelineKey, slot: Slot) -> Result<Option<Micros>, Error> {
        self.with(move |c| {
            Ok(c.prepare_cached("SELECT value FROM cursors WHERE pipeline_id = ?1 AND slot = ?2")?
                .query_row(params![p.pipeline.0, slot.as_str()], |r| r.get(0))
                .optional()?)
        })
        .await
    }

    async fn begin_run(&self, fence: Fence, run: &SyncRun) -> Result<RunKey, Error> {
        let run = run.clone();
        self.write(move |tx| rules::begin_run(tx, fence, &run)).await
    }

    async fn write_events(&self, batch: EventBatch) -> Result<EventOutcome, Error> {
        #[cfg(feature = "failpoints")]
        let fire = self.failpoint.fire();
        let (out, batch) = self
            .with_worker(move |w| {
                let mut tx = write_tx(&mut w.conn)?;
                let (out, found) = rules::write_events(&mut tx, &w.people, &batch)?;
                #[cfg(feature = "failpoints")]
                crate::failpoint::Failpoint::act(fire)?;
                tx.commit()?;
                // Only what committed is remembered.
                rules::cached(&w.people, |c| c.remember(batch.fence.pipeline.tenant, batch.rule, found));
                Ok((out, batch))
            })
            .await?;
        // The rows are freed here, usually on the thread that made them,
        // not on the store's: the allocator frees a thread's own memory
        // faster, and the store's thread is a backfill's bottleneck (freeing
        // them there was 12% of its time in a 1M-row backfill). (Freed on
        // another task instead, as PostgreSQL's are, the 1M sync was no
        // faster and its peak RSS rose 115–119 → 125–133 MiB.)
        drop(batch);
        Ok(out)
    }

    async fn write_records(&self, batch: RecordBatch) -> Result<RecordOutcome, Error> {
        self.write(move |tx| rules::write_records(tx, &batch)).await
    }

    async fn rematch_parked(&self, fence: Fence, run: RunKey, only_this_pipeline: bool) -> Result<u64, Error> {
        self.write(move |tx| rules::rematch(tx, fence, run, only_this_pipeline)).await
    }

    async fn expire_parked(&self, fence: Fence, run: RunKey, before: Micros) -> Result<u64, Error> {
        self.write(move |tx| rules::expire(tx, fence, run, before)).await
    }

    async fn finish_run(&self, fence: Fence, run: RunKey, record: &SyncRun) -> Result<(), Error> {
        let record = record.clone();
        self.write(move |tx| rules::finish_run(tx, fence, run, &record)).await
    }

    async fn runs(&self, tenant: TenantId, pipeline: Option<&str>, limit: usize) -> Result<Vec<SyncRun>, Error> {
        let pipeline = pipeline.map(str::to_string);
        self.with(move |c| {
            let mut s = c.prepare_cached(
                "SELECT r.*, p.name AS pipeline FROM sync_runs r JOIN pipelines p ON p.id = r.pipeline_id
                 WHERE r.tenant_id = ?1 AND (?2 IS NULL OR p.name = ?2) ORDER BY r.started_at DESC, r.id DESC LIMIT ?3",
            )?;
            let rows = s.query_map(params![tenant.0, pipeline, limit as i64], run_from_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn run_times(&self, tenant: TenantId, since: Micros, limit: usize) -> Result<Vec<RunTime>, Error> {
        self.with(move |c| {
            let mut s = c.prepare_cached(
                "SELECT p.name, r.started_at, r.ended_at, r.warehouse_state, json_array_length(r.statement_ids)
                 FROM sync_runs r JOIN pipelines p ON p.id = r.pipeline_id
                 WHERE r.tenant_id = ?1 AND r.started_at >= ?2 ORDER BY r.started_at, r.id LIMIT ?3",
            )?;
            let rows = s.query_map(params![tenant.0, since, limit as i64], |r| {
                Ok(RunTime {
                    pipeline: r.get(0)?,
                    started_at: r.get(1)?,
                    ended_at: r.get(2)?,
                    warehouse_state: r.get(3)?,
                    statements: r.get::<_, Option<i64>>(4)?.unwrap_or(0).max(0) as u64,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn runs_page(&self, tenant: TenantId, pipeline: &str, after: Option<&str>, limit: usize) -> Result<Vec<SyncRun>, Error> {
        let (pipeline, after) = (pipeline.to_string(), after.map(str::to_string));
        self.with(move |c| {
            let mut s = c.prepare_cached(
                "SELECT r.*, p.name AS pipeline FROM sync_runs r JOIN pipelines p ON p.id = r.pipeline_id
                 WHERE r.tenant_id = ?1 AND p.name = ?2
                   AND (?3 IS NULL OR (r.started_at, r.id) < (SELECT started_at, id FROM sync_runs WHERE run_id = ?3 AND tenant_id = ?1))
                 ORDER BY r.started_at DESC, r.id DESC LIMIT ?4",
            )?;
            let rows = s.query_map(params![tenant.0, pipeline, after, limit as i64], run_from_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn run(&self, tenant: TenantId, pipeline: &str, run_id: &str) -> Result<Option<SyncRun>, Error> {
        let (pipeline, run_id) = (pipeline.to_string(), run_id.to_string());
        self.with(move |c| {
            Ok(c.prepare_cached(
                "SELECT r.*, p.name AS pipeline FROM sync_runs r JOIN pipelines p ON p.id = r.pipeline_id
                 WHERE r.tenant_id = ?1 AND p.name = ?2 AND r.run_id = ?3",
            )?
            .query_row(params![tenant.0, pipeline, run_id], run_from_row)
            .optional()?)
        })
        .await
    }

    async fn export_page(
        &self,
        tenant: TenantId,
        what: Export,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Value>, Option<String>), Error> {
        let after = after.map(str::to_string);
        self.with(move |c| export_tx(c, tenant, what, after.as_deref(), limit)).await
    }

    async fn totals(&self, tenant: TenantId) -> Result<Totals, Error> {
        self.with(move |c| {
            let n = |table: &str, filter: &str| -> Result<u64, Error> {
                let sql = format!("SELECT count(*) FROM {table} WHERE tenant_id = ?1 {filter}");
                Ok(c.prepare_cached(&sql)?.query_row([tenant.0], |r| r.get::<_, i64>(0))? as u64)
            };
            Ok(Totals {
                organisations: n("organisations", "")?,
                people: n("people", "")?,
                events: n("events", "")?,
                backfilled_events: n("events", "AND batch IN (SELECT id FROM event_batches WHERE tenant_id = ?1 AND backfill)")?,
                parked: n("parked_events", "")?,
                quarantined: n("quarantine", "")?,
                runs: n("sync_runs", "")?,
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests;

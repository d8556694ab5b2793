//! The PostgreSQL store: several processes of a service share one database.
//!
//! A bounded pool of blocking connections (the `postgres` crate), each call
//! run on tokio's blocking pool in one transaction; the decisions are the
//! rules' (`rules.rs`), the rows move through [`tx`] (arrays, `UNNEST`,
//! binary `COPY`). The schema is migrated on open, in one transaction under
//! an advisory lock, so processes starting together migrate it once.

mod copy;
mod order;
mod tx;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use postgres::{Client, NoTls, Transaction};
use serde_json::{Value, json};

use crate::rules::{self, PeopleCache, json_text, now_micros};
use crate::time::rfc3339;
use crate::{
    Error, EventBatch, EventOutcome, Export, Fence, Holder, Lease, Micros, PipelineId, PipelineKey, RecordBatch, RecordOutcome, RunCounts,
    RunKey, RunTime, Slot, Store, SyncRun, TenantId, Totals,
};

/// The migrations, in order: version `i + 1` is `MIGRATIONS[i]`.
const MIGRATIONS: &[&str] = &[
    include_str!("v1.sql"),
    // 2: the service's records: a tenant's name for people, API tokens by hash.
    include_str!("v2.sql"),
    // 3: the pages' sign-ins (sessions and one-time login links, by hash).
    include_str!("v3.sql"),
    // 4: a counter of people given an external id (created with one, or claimed) (the cache of identifiers with no person).
    include_str!("v4.sql"),
    // 5: what a write's events share (run, backfill, time stored) in a batch row, not in every event.
    include_str!("v5.sql"),
];
/// The schema version this build reads and writes.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;
/// Connections per store.
pub const POOL_SIZE: usize = 4;

struct Inner {
    url: String,
    /// `host:port/database`, for messages (never the user or password).
    target: String,
    idle: Mutex<Vec<Client>>,
    permits: tokio::sync::Semaphore,
    people: Mutex<PeopleCache>,
    /// The order of each run's event writes in flight.
    order: Arc<order::Order>,
    #[cfg(feature = "failpoints")]
    failpoint: crate::failpoint::Failpoint,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // A blocking client closes through its own runtime: never inside an async task's thread.
        let idle = std::mem::take(self.idle.get_mut().unwrap_or_else(|p| p.into_inner()));
        if !idle.is_empty() {
            let _ = std::thread::spawn(move || drop(idle)).join();
        }
    }
}

/// The PostgreSQL store.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").field("target", &self.inner.target).finish()
    }
}

/// `host:port/database` of a URL, without its user or password.
pub fn target(url: &str) -> String {
    match url.parse::<postgres::Config>() {
        Ok(c) => {
            let host = c
                .get_hosts()
                .first()
                .map(|h| match h {
                    postgres::config::Host::Tcp(h) => h.clone(),
                    postgres::config::Host::Unix(p) => p.display().to_string(),
                })
                .unwrap_or_else(|| "localhost".into());
            let port = c.get_ports().first().copied().unwrap_or(5432);
            format!("{host}:{port}/{}", c.get_dbname().unwrap_or("(the user's database)"))
        }
        Err(_) => "(an unreadable postgres:// URL)".into(),
    }
}

fn connect(url: &str, target: &str) -> Result<Client, Error> {
    let config: postgres::Config =
        url.parse().map_err(|e| Error::Unsupported { url: target.to_string(), reason: format!("not a PostgreSQL URL: {e}") })?;
    let mut config = config;
    config.connect_timeout(Duration::from_secs(10));
    config.connect(NoTls).map_err(|e| Error::from(e).at_target(target))
}

/// Brings the schema to [`SCHEMA_VERSION`] in one transaction holding an
/// advisory lock, so two processes opening a new database create it once.
fn migrate(c: &mut Client, target: &str) -> Result<(), Error> {
    let mut tx = c.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock(7420113011)", &[])?;
    let exists: bool = tx.query_one("SELECT to_regclass('trig_schema') IS NOT NULL", &[])?.get(0);
    let version: i32 = if exists { tx.query_opt("SELECT version FROM trig_schema", &[])?.map(|r| r.get(0)).unwrap_or(0) } else { 0 };
    if version > SCHEMA_VERSION {
        return Err(Error::TooNew { path: target.to_string(), found: version.into(), supported: SCHEMA_VERSION.into() });
    }
    if version == SCHEMA_VERSION {
        return Ok(());
    }
    for step in &MIGRATIONS[version as usize..] {
        tx.batch_execute(step)?;
    }
    tx.execute("DELETE FROM trig_schema", &[])?;
    tx.execute("INSERT INTO trig_schema (version) VALUES ($1)", &[&SCHEMA_VERSION])?;
    tx.commit()?;
    Ok(())
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user:password@host:port/database`) and
    /// migrates the schema. Blocks; call it outside an async task or let
    /// [`crate::open`] do so.
    pub fn open(url: &str) -> Result<PostgresStore, Error> {
        let url = url.to_string();
        // The blocking client must not start inside an async task's thread.
        std::thread::spawn(move || {
            let target = target(&url);
            let mut c = connect(&url, &target)?;
            migrate(&mut c, &target)?;
            Ok(PostgresStore {
                inner: Arc::new(Inner {
                    url,
                    target,
                    idle: Mutex::new(vec![c]),
                    permits: tokio::sync::Semaphore::new(POOL_SIZE),
                    people: Mutex::default(),
                    order: Arc::default(),
                    #[cfg(feature = "failpoints")]
                    failpoint: crate::failpoint::Failpoint::from_env(),
                }),
            })
        })
        .join()
        .map_err(|_| Error::Database("opening the PostgreSQL store failed unexpectedly (a bug)".into()))?
    }

    /// Arms the failpoint in `write_events` for the `nth` call from now (tests).
    #[cfg(feature = "failpoints")]
    pub fn set_failpoint(&self, nth: u64, action: crate::FailAction) {
        self.inner.failpoint.arm(nth, action);
    }

    /// Where the store is, without credentials.
    pub fn target(&self) -> &str {
        &self.inner.target
    }

    /// Runs `f` with a pooled connection on the blocking pool.
    async fn with<T: Send + 'static>(&self, f: impl FnOnce(&mut Client, &Inner) -> Result<T, Error> + Send + 'static) -> Result<T, Error> {
        let _permit = self.inner.permits.acquire().await.map_err(|_| Error::Database("the store is closed".into()))?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = inner.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let mut c = match pooled {
                Some(c) if !c.is_closed() => c,
                _ => connect(&inner.url, &inner.target)?,
            };
            let out = f(&mut c, &inner).map_err(|e| e.at_target(&inner.target));
            if !c.is_closed() {
                inner.idle.lock().unwrap_or_else(|p| p.into_inner()).push(c);
            }
            out
        })
        .await
        .map_err(|_| Error::Database("a store call failed unexpectedly (a bug); see the log".into()))?
    }

    /// Runs `f` in one transaction, committed when it returns `Ok`.
    async fn write<T: Send + 'static>(&self, f: impl FnOnce(&mut Transaction) -> Result<T, Error> + Send + 'static) -> Result<T, Error> {
        self.with(move |c, _| {
            let mut tx = c.transaction()?;
            let out = f(&mut tx)?;
            tx.commit()?;
            Ok(out)
        })
        .await
    }
}

fn run_from_row(r: &postgres::Row) -> SyncRun {
    let n = |c: &str| r.get::<_, i64>(c) as u64;
    SyncRun {
        run_id: r.get("run_id"),
        pipeline: r.get("pipeline"),
        trigger: r.get("trigger"),
        status: r.get("status"),
        started_at: r.get("started_at"),
        ended_at: r.get("ended_at"),
        window_from: r.get("window_from"),
        window_to: r.get("window_to"),
        statement_ids: serde_json::from_str(&r.get::<_, String>("statement_ids")).unwrap_or_default(),
        warehouse_state: r.get("warehouse_state"),
        counts: RunCounts {
            rows_read: n("rows_read"),
            inserted: n("inserted"),
            updated: n("updated"),
            unchanged: n("unchanged"),
            deduplicated: n("deduplicated"),
            parked: n("parked"),
            rematched: n("rematched"),
            dropped: n("dropped"),
            quarantined: n("quarantined"),
            late: n("late"),
            people_created: n("people_created"),
            bytes: n("bytes"),
        },
        error_kind: r.get("error_kind"),
        error_message: r.get("error_message"),
        notes: serde_json::from_str(&r.get::<_, String>("notes")).unwrap_or_default(),
    }
}

fn export(c: &mut Client, t: TenantId, what: Export, after: Option<&str>, limit: usize) -> Result<(Vec<Value>, Option<String>), Error> {
    let n = limit as i64;
    let after_id: i64 = after.and_then(|a| a.parse().ok()).unwrap_or(0);
    let mut last: Option<String> = None;
    let mut out = Vec::new();
    match what {
        Export::Events => {
            let (from_pipeline, from_event) = match after.and_then(|a| a.split_once(':')) {
                Some((p, e)) => (p.parse::<i64>().unwrap_or(0), e.to_string()),
                None => (0, String::new()),
            };
            // Ordered by the key as bytes (COLLATE "C"), as SQLite orders text.
            for r in c.query(
                "SELECT e.pipeline_id, e.event_id, e.name, e.ts, p.external_id, p.email, e.properties, b.backfill, l.name, b.ingested_at
                 FROM events e JOIN people p ON p.id = e.person_id JOIN pipelines l ON l.id = e.pipeline_id
                 JOIN event_batches b ON b.tenant_id = e.tenant_id AND b.id = e.batch
                 WHERE e.tenant_id = $1 AND (e.pipeline_id, e.event_id COLLATE \"C\") > ($2, $3 COLLATE \"C\")
                 ORDER BY e.pipeline_id, e.event_id COLLATE \"C\" LIMIT $4",
                &[&t.0, &from_pipeline, &from_event, &n],
            )? {
                last = Some(format!("{}:{}", r.get::<_, i64>(0), r.get::<_, String>(1)));
                out.push(json!({
                    "event_id": r.get::<_, String>(1),
                    "event_name": r.get::<_, String>(2),
                    "timestamp": rfc3339(r.get(3)),
                    "person_id": r.get::<_, Option<String>>(4),
                    "email": r.get::<_, Option<String>>(5),
                    "properties": json_text(&r.get::<_, String>(6)),
                    "backfill": r.get::<_, bool>(7),
                    "pipeline": r.get::<_, String>(8),
                    "ingested_at": rfc3339(r.get(9)),
                }));
            }
        }
        Export::People => {
            for r in c.query(
                "SELECT id, external_id, name, email, organisation_external_id, attributes FROM people WHERE tenant_id = $1 AND id > $2
                 ORDER BY id LIMIT $3",
                &[&t.0, &after_id, &n],
            )? {
                last = Some(r.get::<_, i64>(0).to_string());
                out.push(json!({
                    "id": r.get::<_, Option<String>>(1),
                    "name": r.get::<_, Option<String>>(2),
                    "email": r.get::<_, Option<String>>(3),
                    "organisation_id": r.get::<_, Option<String>>(4),
                    "attributes": json_text(&r.get::<_, String>(5)),
                }));
            }
        }
        Export::Organisations => {
            for r in c.query(
                "SELECT id, external_id, name, domain, attributes FROM organisations WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3",
                &[&t.0, &after_id, &n],
            )? {
                last = Some(r.get::<_, i64>(0).to_string());
                out.push(json!({
                    "id": r.get::<_, String>(1),
                    "name": r.get::<_, String>(2),
                    "domain": r.get::<_, Option<String>>(3),
                    "attributes": json_text(&r.get::<_, String>(4)),
                }));
            }
        }
        Export::Parked => {
            for r in c.query(
                "SELECT e.id, l.name, e.event_id, e.name, e.ts, e.key_kind, e.user_key, e.email, e.backfill, e.parked_at
                 FROM parked_events e JOIN pipelines l ON l.id = e.pipeline_id WHERE e.tenant_id = $1 AND e.id > $2 ORDER BY e.id LIMIT $3",
                &[&t.0, &after_id, &n],
            )? {
                last = Some(r.get::<_, i64>(0).to_string());
                out.push(json!({
                    "pipeline": r.get::<_, String>(1),
                    "event_id": r.get::<_, String>(2),
                    "event_name": r.get::<_, String>(3),
                    "timestamp": rfc3339(r.get(4)),
                    "key_kind": r.get::<_, String>(5),
                    "user_key": r.get::<_, String>(6),
                    "email": r.get::<_, Option<String>>(7),
                    "backfill": r.get::<_, bool>(8),
                    "parked_at": rfc3339(r.get(9)),
                }));
            }
        }
        Export::Quarantine => {
            for r in c.query(
                "SELECT q.id, l.name, r.run_id, q.key, q.reason, q.row, q.at FROM quarantine q JOIN pipelines l ON l.id = q.pipeline_id
                 LEFT JOIN sync_runs r ON r.id = q.run WHERE q.tenant_id = $1 AND q.id > $2 ORDER BY q.id LIMIT $3",
                &[&t.0, &after_id, &n],
            )? {
                last = Some(r.get::<_, i64>(0).to_string());
                out.push(json!({
                    "pipeline": r.get::<_, String>(1),
                    "run_id": r.get::<_, Option<String>>(2),
                    "key": r.get::<_, Option<String>>(3),
                    "reason": r.get::<_, String>(4),
                    "row": json_text(&r.get::<_, String>(5)),
                    "at": rfc3339(r.get(6)),
                }));
            }
        }
    }
    let next = if out.len() < limit { None } else { last };
    Ok((out, next))
}

#[async_trait]
impl crate::catalog::Backend for PostgresStore {
    async fn db<T, F>(&self, _write: bool, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn crate::sql::Db) -> Result<T, Error> + Send + 'static,
    {
        self.write(move |tx| f(tx)).await
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn tenant(&self, name: &str) -> Result<TenantId, Error> {
        let name = name.to_string();
        self.write(move |tx| {
            tx.execute("INSERT INTO tenants (name, created_at) VALUES ($1, $2) ON CONFLICT DO NOTHING", &[&name, &now_micros()])?;
            Ok(TenantId(tx.query_one("SELECT id FROM tenants WHERE name = $1", &[&name])?.get(0)))
        })
        .await
    }

    async fn pipeline(&self, tenant: TenantId, name: &str) -> Result<PipelineKey, Error> {
        let name = name.to_string();
        self.write(move |tx| {
            let known: bool = tx.query_one("SELECT EXISTS (SELECT 1 FROM tenants WHERE id = $1)", &[&tenant.0])?.get(0);
            if !known {
                return Err(Error::NotFound { what: format!("tenant {}", tenant.0) });
            }
            tx.execute(
                "INSERT INTO pipelines (tenant_id, name, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&tenant.0, &name, &now_micros()],
            )?;
            let id = tx.query_one("SELECT id FROM pipelines WHERE tenant_id = $1 AND name = $2", &[&tenant.0, &name])?.get(0);
            Ok(PipelineKey { tenant, pipeline: PipelineId(id) })
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
        self.with(move |c, _| {
            Ok(c.query_opt("SELECT value FROM cursors WHERE pipeline_id = $1 AND slot = $2", &[&p.pipeline.0, &slot.as_str()])?
                .map(|r| r.get(0)))
        })
        .await
    }

    async fn begin_run(&self, fence: Fence, run: &SyncRun) -> Result<RunKey, Error> {
        let run = run.clone();
        self.write(move |tx| rules::begin_run(tx, fence, &run)).await
    }

    // Not an `async fn`: the call takes its place in the run's order when
    // it is made, not when its future is first polled (see `Store::write_events`).
    fn write_events<'life0, 'async_trait>(
        &'life0 self,
        batch: EventBatch,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<EventOutcome, Error>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        let ticket = self.inner.order.call(batch.run);
        Box::pin(async move {
            // Holding nothing until the call before has done its first half:
            // a connection is only taken by a call whose predecessor has one.
            ticket.first_turn().await?;
            let (out, batch) = self
                .with(move |c, inner| {
                    let mut tx = c.transaction()?;
                    // The call's place as PostgreSQL sees it: the call after
                    // waits on this lock (below) as well as on the ticket, so
                    // a cycle through that wait (this call waiting for a lock
                    // of another pipeline's transaction, which waits for the
                    // call after's rows) is one the server's deadlock
                    // detector sees and breaks, not a silent hang.
                    let (run, n) = (order::lock_key(batch.run), ticket.place());
                    tx.execute("SELECT pg_advisory_xact_lock($1, $2)", &[&run, &n])?;
                    // The first half runs while the call before finishes its second half and commits.
                    let first = rules::events_first(&mut tx, &inner.people, &batch);
                    ticket.first_done();
                    let done = first.and_then(|first| {
                        if n > 0 {
                            tx.execute("SELECT pg_advisory_xact_lock_shared($1, $2)", &[&run, &n.wrapping_sub(1)])?;
                        }
                        ticket.second_turn()?;
                        let (out, found) = rules::events_second(&mut tx, &inner.people, &batch, first)?;
                        #[cfg(feature = "failpoints")]
                        crate::failpoint::Failpoint::act(inner.failpoint.fire())?;
                        tx.commit()?;
                        Ok((out, found))
                    });
                    match done {
                        Ok((out, found)) => {
                            // Only what committed is remembered.
                            rules::cached(&inner.people, |c| c.remember(batch.fence.pipeline.tenant, batch.rule, found));
                            ticket.finish(true);
                            Ok((out, batch))
                        }
                        Err(e) => {
                            ticket.finish(false);
                            Err(e)
                        }
                    }
                })
                .await?;
            // Freed on another task, off the writer's path to its next batch
            // (freeing 20k rows here held the next transaction back ~1.7 ms).
            drop(tokio::spawn(async move { drop(batch) }));
            Ok(out)
        })
    }

    fn event_writes_in_flight(&self) -> usize {
        2
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
        self.with(move |c, _| {
            let rows = c.query(
                "SELECT r.*, p.name AS pipeline FROM sync_runs r JOIN pipelines p ON p.id = r.pipeline_id
                 WHERE r.tenant_id = $1 AND ($2::text IS NULL OR p.name = $2) ORDER BY r.started_at DESC, r.id DESC LIMIT $3",
                &[&tenant.0, &pipeline, &(limit as i64)],
            )?;
            Ok(rows.iter().map(run_from_row).collect())
        })
        .await
    }

    async fn run_times(&self, tenant: TenantId, since: Micros, limit: usize) -> Result<Vec<RunTime>, Error> {
        self.with(move |c, _| {
            let rows = c.query(
                "SELECT p.name, r.started_at, r.ended_at, r.warehouse_state, json_array_length(r.statement_ids::json)::bigint
                 FROM sync_runs r JOIN pipelines p ON p.id = r.pipeline_id
                 WHERE r.tenant_id = $1 AND r.started_at >= $2 ORDER BY r.started_at, r.id LIMIT $3",
                &[&tenant.0, &since, &(limit as i64)],
            )?;
            Ok(rows
                .iter()
                .map(|r| RunTime {
                    pipeline: r.get(0),
                    started_at: r.get(1),
                    ended_at: r.get(2),
                    warehouse_state: r.get(3),
                    statements: r.get::<_, Option<i64>>(4).unwrap_or(0).max(0) as u64,
                })
                .collect())
        })
        .await
    }

    async fn runs_page(&self, tenant: TenantId, pipeline: &str, after: Option<&str>, limit: usize) -> Result<Vec<SyncRun>, Error> {
        let (pipeline, after) = (pipeline.to_string(), after.map(str::to_string));
        self.with(move |c, _| {
            let rows = c.query(
                "SELECT r.*, p.name AS pipeline FROM sync_runs r JOIN pipelines p ON p.id = r.pipeline_id
                 WHERE r.tenant_id = $1 AND p.name = $2
                   AND ($3::text IS NULL OR (r.started_at, r.id) < (SELECT started_at, id FROM sync_runs WHERE run_id = $3 AND tenant_id = $1))
                 ORDER BY r.started_at DESC, r.id DESC LIMIT $4",
                &[&tenant.0, &pipeline, &after, &(limit as i64)],
            )?;
            Ok(rows.iter().map(run_from_row).collect())
        })
        .await
    }

    async fn run(&self, tenant: TenantId, pipeline: &str, run_id: &str) -> Result<Option<SyncRun>, Error> {
        let (pipeline, run_id) = (pipeline.to_string(), run_id.to_string());
        self.with(move |c, _| {
            Ok(c.query_opt(
                "SELECT r.*, p.name AS pipeline FROM sync_runs r JOIN pipelines p ON p.id = r.pipeline_id
                 WHERE r.tenant_id = $1 AND p.name = $2 AND r.run_id = $3",
                &[&tenant.0, &pipeline, &run_id],
            )?
            .map(|r| run_from_row(&r)))
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
        self.with(move |c, _| export(c, tenant, what, after.as_deref(), limit)).await
    }

    async fn totals(&self, tenant: TenantId) -> Result<Totals, Error> {
        self.with(move |c, _| {
            let mut n = |table: &str, filter: &str| -> Result<u64, Error> {
                let sql = format!("SELECT count(*) FROM {table} WHERE tenant_id = $1 {filter}");
                Ok(c.query_one(&sql, &[&tenant.0])?.get::<_, i64>(0) as u64)
            };
            Ok(Totals {
                organisations: n("organisations", "")?,
                people: n("people", "")?,
                events: n("events", "")?,
                backfilled_events: n("events", "AND batch IN (SELECT id FROM event_batches WHERE tenant_id = $1 AND backfill)")?,
                parked: n("parked_events", "")?,
                quarantined: n("quarantine", "")?,
                runs: n("sync_runs", "")?,
            })
        })
        .await
    }
}

//! The embedded store: one SQLite file, created and migrated on first use.
//!
//! One connection owned by one thread that runs the calls in turn; every
//! call is one transaction (WAL, `synchronous = NORMAL`: a killed process loses
//! nothing that committed). Several processes may share the file: every write
//! transaction takes the write lock when it begins (`BEGIN IMMEDIATE`), so a
//! writer waits up to [`BUSY_TIMEOUT`] for another instead of failing, and the
//! migration runs inside one such transaction that re-reads the version.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::time::rfc3339;
use crate::{
    Checkpoint, Claim, Entity, Error, EventBatch, EventOutcome, Export, IdentityRule, Micros, Progress, Quarantined, RecordBatch,
    RecordOutcome, RunCounts, Slot, Store, SyncRun, Totals,
};

/// The migrations, in order: version `i + 1` is `MIGRATIONS[i]`.
const MIGRATIONS: &[&str] = &[
    include_str!("schema.sql"),
    // 2: a run's record moves with each commit (its end is its last commit if
    // it dies); the first sync's progress has a slot of its own, shared with
    // the full refresh.
    "ALTER TABLE sync_runs ADD COLUMN last_commit_at INTEGER;
     ALTER TABLE sync_runs ADD COLUMN notes TEXT NOT NULL DEFAULT '[]';
     UPDATE cursors SET slot = 'backfill' WHERE slot = 'full_refresh';",
];
const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// How long a write waits for another process's transaction before it fails
/// as [`Error::Busy`] (transient: the next run retries).
pub const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// SQLite's page cache, in KiB: bounded, whatever the size of the database.
pub const PAGE_CACHE_KIB: i64 = 16 * 1024;

/// What a failpoint does when it fires.
#[cfg(feature = "failpoints")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailAction {
    /// Return an error (the transaction rolls back).
    Error,
    /// Abort the process, as a kill would.
    Abort,
}

/// Fires inside `write_events` after the rows are written and before the
/// commit, on the `nth` call (1-based). Tests use it to prove that a crash at
/// that instant loses and duplicates nothing.
#[cfg(feature = "failpoints")]
#[derive(Debug, Clone, Copy)]
struct Failpoint {
    nth: u64,
    action: FailAction,
}

type Job = Box<dyn FnOnce(&mut Worker) + Send>;

/// What the store's thread owns: the connection, and the people already
/// resolved by identifier. People are never deleted and an external id never
/// moves, so a hit stays right; emails can change, so a people write clears
/// the email half. Entries are added only after their transaction commits.
struct Worker {
    conn: Connection,
    people: HashMap<(IdentityRule, String), i64>,
}

/// The most identifiers the resolved-people cache holds before it starts over.
const PEOPLE_CACHE_MAX: usize = 200_000;

/// The SQLite store.
#[derive(Clone)]
pub struct SqliteStore {
    /// Jobs for the thread that owns the connection.
    jobs: std::sync::mpsc::Sender<Job>,
    path: String,
    busy_timeout: std::time::Duration,
    /// Pipelines claimed in a private in-memory store.
    claims: Arc<Mutex<std::collections::HashSet<String>>>,
    #[cfg(feature = "failpoints")]
    failpoint: Arc<Mutex<Option<(Failpoint, u64)>>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.path).finish()
    }
}

fn now_micros() -> Micros {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
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
    pub fn open_with(path: &str, busy_timeout: std::time::Duration) -> Result<SqliteStore, Error> {
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
        until_not_busy(deadline, || conn.pragma_update(None, "journal_mode", "WAL").map_err(Error::from)).map_err(|e| match e {
            Error::Database(reason) => Error::Open { path: path.to_string(), reason },
            other => other.at(path, busy_timeout),
        })?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(open_err)?;
        conn.pragma_update(None, "cache_size", -PAGE_CACHE_KIB).map_err(open_err)?;
        until_not_busy(deadline, || migrate(&mut conn, path)).map_err(|e| e.at(path, busy_timeout))?;
        #[cfg(feature = "failpoints")]
        let failpoint = std::env::var("TRIG_FAILPOINT").ok().and_then(|v| {
            let n = v.strip_prefix("events_before_commit:")?.parse().ok()?;
            Some((Failpoint { nth: n, action: FailAction::Abort }, 0))
        });
        // One thread owns the connection and runs every call in turn: SQLite
        // sees one thread, and its memory stays in one allocator arena.
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("trig-store".into())
            .spawn(move || {
                let mut worker = Worker { conn, people: HashMap::new() };
                while let Ok(job) = queue.recv() {
                    // A panic is a bug; it fails that call (its answer is dropped), not the store.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut worker)));
                }
            })
            .map_err(|e| Error::Open { path: path.to_string(), reason: format!("cannot start the store's thread: {e}") })?;
        Ok(SqliteStore {
            jobs,
            path: path.to_string(),
            busy_timeout,
            claims: Arc::default(),
            #[cfg(feature = "failpoints")]
            failpoint: Arc::new(Mutex::new(failpoint)),
        })
    }

    /// Claims a pipeline with an exclusive lock on a file beside the database
    /// (`<db>.locks/<hash of the name>.lock`, holding who and since when), so
    /// processes sharing the file see each other's runs; the OS releases it
    /// if the process dies. A private in-memory store claims in memory.
    fn claim_pipeline(&self, pipeline: &str) -> Result<Claim, Error> {
        if self.path == ":memory:" {
            let mut held = self.claims.lock().unwrap_or_else(|p| p.into_inner());
            if !held.insert(pipeline.to_string()) {
                return Err(Error::AlreadyRunning { pipeline: pipeline.into(), holder: "in this process".into() });
            }
            return Ok(Claim::new(MemoryClaim { claims: self.claims.clone(), pipeline: pipeline.to_string() }));
        }
        let dir = format!("{}.locks", self.path);
        let cannot = |e: std::io::Error| Error::Open { path: dir.clone(), reason: format!("cannot create the run lock: {e}") };
        std::fs::create_dir_all(&dir).map_err(cannot)?;
        let file = Path::new(&dir).join(format!("{}.lock", &hex(&Sha256::digest(pipeline.as_bytes()))[..16]));
        let mut f = std::fs::OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&file).map_err(cannot)?;
        match f.try_lock() {
            Ok(()) => {
                use std::io::Write;
                let _ = f.set_len(0);
                let _ = write!(f, "process {} since {}, pipeline {pipeline}", std::process::id(), rfc3339(now_micros()));
                Ok(Claim::new(f))
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&file).ok().and_then(|t| t.split(", pipeline").next().map(str::to_string));
                Err(Error::AlreadyRunning { pipeline: pipeline.into(), holder: holder.unwrap_or_else(|| "another process".into()) })
            }
            Err(std::fs::TryLockError::Error(e)) => Err(cannot(e)),
        }
    }

    /// Arms the failpoint in `write_events` for the `nth` call from now (tests).
    #[cfg(feature = "failpoints")]
    pub fn set_failpoint(&self, nth: u64, action: FailAction) {
        *self.failpoint.lock().unwrap_or_else(|p| p.into_inner()) = Some((Failpoint { nth, action }, 0));
    }

    async fn with<T: Send + 'static>(&self, f: impl FnOnce(&mut Connection) -> Result<T, Error> + Send + 'static) -> Result<T, Error> {
        self.with_worker(move |w| f(&mut w.conn)).await
    }

    async fn with_worker<T: Send + 'static>(&self, f: impl FnOnce(&mut Worker) -> Result<T, Error> + Send + 'static) -> Result<T, Error> {
        let (path, timeout) = (self.path.clone(), self.busy_timeout);
        self.on_worker(f).await.map_err(|e| e.at(&path, timeout))
    }

    async fn on_worker<T: Send + 'static>(&self, f: impl FnOnce(&mut Worker) -> Result<T, Error> + Send + 'static) -> Result<T, Error> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move |w: &mut Worker| {
                let _ = answer.send(f(w));
            }))
            .map_err(|_| Error::Database("the store's thread has stopped".into()))?;
        answered.await.map_err(|_| Error::Database("a store call failed unexpectedly (a bug); see the log".into()))?
    }

    #[cfg(feature = "failpoints")]
    fn fire_failpoint(&self) -> Option<FailAction> {
        let mut fp = self.failpoint.lock().unwrap_or_else(|p| p.into_inner());
        let (point, count) = fp.as_mut()?;
        *count += 1;
        if *count == point.nth {
            let action = point.action;
            *fp = None;
            return Some(action);
        }
        None
    }
}

/// Runs `f` again while it fails with [`Error::Busy`], until `deadline`.
fn until_not_busy<T>(deadline: std::time::Instant, mut f: impl FnMut() -> Result<T, Error>) -> Result<T, Error> {
    let mut pause = std::time::Duration::from_millis(2);
    loop {
        match f() {
            Err(Error::Busy { .. }) if std::time::Instant::now() + pause < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

/// Brings the schema to [`SCHEMA_VERSION`] in one write transaction that
/// reads the version under the write lock, so two processes opening a new
/// file never both create it.
fn migrate(conn: &mut Connection, path: &str) -> Result<(), Error> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version == SCHEMA_VERSION {
        return Ok(());
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

/// Adds a transaction's figures to its run's record, and moves the record's
/// last commit, inside that transaction.
fn add_to_run(tx: &Transaction, run_id: &str, c: &RunCounts, statement_ids: &[String]) -> Result<(), Error> {
    let mut ids_text: Option<String> = None;
    if !statement_ids.is_empty() {
        let old: Option<String> =
            tx.prepare_cached("SELECT statement_ids FROM sync_runs WHERE run_id = ?1")?.query_row([run_id], |r| r.get(0)).optional()?;
        let mut ids: Vec<String> = old.as_deref().and_then(|t| serde_json::from_str(t).ok()).unwrap_or_default();
        ids.extend(statement_ids.iter().cloned());
        ids_text = Some(serde_json::to_string(&ids).unwrap_or_else(|_| "[]".into()));
    }
    tx.prepare_cached(
        "UPDATE sync_runs SET rows_read = rows_read + ?2, inserted = inserted + ?3, updated = updated + ?4, unchanged = unchanged + ?5,
           deduplicated = deduplicated + ?6, parked = parked + ?7, rematched = rematched + ?8, dropped = dropped + ?9,
           quarantined = quarantined + ?10, late = late + ?11, people_created = people_created + ?12, bytes = bytes + ?13,
           statement_ids = COALESCE(?14, statement_ids), last_commit_at = ?15
         WHERE run_id = ?1",
    )?
    .execute(params![
        run_id,
        c.rows_read as i64,
        c.inserted as i64,
        c.updated as i64,
        c.unchanged as i64,
        c.deduplicated as i64,
        c.parked as i64,
        c.rematched as i64,
        c.dropped as i64,
        c.quarantined as i64,
        c.late as i64,
        c.people_created as i64,
        c.bytes as i64,
        ids_text,
        now_micros(),
    ])?;
    Ok(())
}

fn with_progress(mut c: RunCounts, p: &Progress) -> RunCounts {
    c.rows_read += p.rows_read;
    c.bytes += p.bytes;
    c
}

fn write_checkpoints(tx: &Transaction, pipeline: &str, checkpoints: &[Checkpoint]) -> Result<(), Error> {
    for c in checkpoints {
        match c.value {
            Some(v) => tx.execute(
                "INSERT INTO cursors (pipeline, slot, value, updated_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (pipeline, slot) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                params![pipeline, c.slot.as_str(), v, now_micros()],
            )?,
            None => tx.execute("DELETE FROM cursors WHERE pipeline = ?1 AND slot = ?2", params![pipeline, c.slot.as_str()])?,
        };
    }
    Ok(())
}

fn write_quarantine(tx: &Transaction, pipeline: &str, run_id: &str, rows: &[Quarantined]) -> Result<u64, Error> {
    let mut stmt = tx.prepare_cached(
        "INSERT OR IGNORE INTO quarantine (pipeline, run_id, key, reason, row, row_hash, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    let mut n = 0;
    let now = now_micros();
    for q in rows {
        let hash = hex(&Sha256::digest(q.row.as_bytes()));
        n += stmt.execute(params![pipeline, run_id, q.key, q.reason, q.row, hash, now])? as u64;
    }
    Ok(n)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Finds (or, when the rule allows, creates) the person an event belongs to.
fn resolve_person(
    tx: &Transaction,
    rule: IdentityRule,
    key: &str,
    email: Option<&str>,
    now: Micros,
    created: &mut u64,
) -> Result<Option<i64>, Error> {
    let by_external = |k: &str| -> Result<Option<i64>, Error> {
        Ok(tx.prepare_cached("SELECT id FROM people WHERE external_id = ?1")?.query_row([k], |r| r.get(0)).optional()?)
    };
    let by_email = |e: &str| -> Result<Option<(i64, Option<String>)>, Error> {
        Ok(tx
            .prepare_cached("SELECT id, external_id FROM people WHERE email = ?1")?
            .query_row([e], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    };
    match rule {
        IdentityRule::Email => {
            if let Some((id, _)) = by_email(key)? {
                return Ok(Some(id));
            }
            tx.prepare_cached("INSERT INTO people (email, created_at, updated_at) VALUES (?1, ?2, ?2)")?.execute(params![key, now])?;
            *created += 1;
            Ok(Some(tx.last_insert_rowid()))
        }
        IdentityRule::ExternalId => {
            if let Some(id) = by_external(key)? {
                return Ok(Some(id));
            }
            let Some(email) = email else { return Ok(None) };
            if let Some((id, ext)) = by_email(email)? {
                if ext.is_none() {
                    tx.prepare_cached("UPDATE people SET external_id = ?1, updated_at = ?2 WHERE id = ?3")?
                        .execute(params![key, now, id])?;
                }
                return Ok(Some(id));
            }
            tx.prepare_cached("INSERT INTO people (external_id, email, created_at, updated_at) VALUES (?1, ?2, ?3, ?3)")?
                .execute(params![key, email, now])?;
            *created += 1;
            Ok(Some(tx.last_insert_rowid()))
        }
    }
}

fn write_events_tx(
    tx: &Transaction,
    b: &EventBatch,
    known: &HashMap<(IdentityRule, String), i64>,
    found: &mut Vec<(String, i64)>,
) -> Result<EventOutcome, Error> {
    let now = now_micros();
    let mut out = EventOutcome::default();
    let any_parked: bool =
        tx.prepare_cached("SELECT EXISTS (SELECT 1 FROM parked_events WHERE pipeline = ?1)")?.query_row([&b.pipeline], |r| r.get(0))?;
    // People found (or created) in this transaction, by identifier, on top of
    // those known from committed ones. Misses are not remembered: a later row
    // with the same identifier may carry an email.
    let mut people: HashMap<&str, i64> = HashMap::new();
    let mut key = (b.rule, String::new());
    let mut insert = tx.prepare_cached(
        "INSERT OR IGNORE INTO events (pipeline, event_id, name, ts, person_id, properties, backfill, ingested_at, run_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    let mut stored = tx.prepare_cached("SELECT EXISTS (SELECT 1 FROM events WHERE pipeline = ?1 AND event_id = ?2)")?;
    let mut park = tx.prepare_cached(
        "INSERT OR IGNORE INTO parked_events (pipeline, event_id, name, ts, key_kind, user_key, email, properties, backfill, parked_at, run_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?;
    let key_kind = b.rule.as_str();
    for r in &b.rows {
        let cached = people.get(r.user_key.as_str()).copied().or_else(|| {
            key.1.clear();
            key.1.push_str(&r.user_key);
            known.get(&key).copied()
        });
        let person = match cached {
            Some(p) => Some(p),
            None => {
                let p = resolve_person(tx, b.rule, &r.user_key, r.email.as_deref(), now, &mut out.people_created)?;
                if let Some(id) = p {
                    people.insert(&r.user_key, id);
                    found.push((r.user_key.clone(), id));
                }
                p
            }
        };
        let new = match person {
            Some(pid) => {
                let n = insert.execute(params![b.pipeline, r.event_id, r.name, r.ts, pid, r.properties, b.backfill, now, b.run_id])?;
                out.inserted += n as u64;
                n == 1
            }
            None => {
                let n = if stored.query_row(params![b.pipeline, r.event_id], |row| row.get::<_, bool>(0))? {
                    0
                } else {
                    park.execute(params![
                        b.pipeline,
                        r.event_id,
                        r.name,
                        r.ts,
                        key_kind,
                        r.user_key,
                        r.email,
                        r.properties,
                        b.backfill,
                        now,
                        b.run_id
                    ])?
                };
                out.parked += n as u64;
                n == 1
            }
        };
        if !new {
            out.deduplicated += 1;
        } else if r.late {
            out.late += 1;
        }
    }
    // An event parked earlier (unknown person) that is now stored (a later row
    // with the same id matched): it leaves the parked set. One pass over the
    // parked rows, which the retention keeps small, instead of a probe per row.
    if out.inserted > 0 && (any_parked || out.parked > 0) {
        tx.prepare_cached(
            "DELETE FROM parked_events WHERE pipeline = ?1
               AND EXISTS (SELECT 1 FROM events e WHERE e.pipeline = ?1 AND e.event_id = parked_events.event_id)",
        )?
        .execute([&b.pipeline])?;
    }
    out.quarantined = write_quarantine(tx, &b.pipeline, &b.run_id, &b.quarantine)?;
    write_checkpoints(tx, &b.pipeline, &b.checkpoints)?;
    Ok(out)
}

/// Replaces `pipeline`'s group in an attributes object.
fn merge_attributes(existing: Option<String>, pipeline: &str, group: &str) -> Result<String, Error> {
    let mut all: Map<String, Value> = existing.as_deref().and_then(|s| serde_json::from_str(s).ok()).unwrap_or_default();
    let group: Value = serde_json::from_str(group).map_err(|e| Error::Database(format!("attributes are not JSON: {e}")))?;
    all.insert(pipeline.to_string(), group);
    Ok(Value::Object(all).to_string())
}

enum Upsert {
    Inserted,
    Updated,
    Conflict(String),
}

fn upsert_person(tx: &Transaction, pipeline: &str, r: &crate::RecordRow, now: Micros) -> Result<Upsert, Error> {
    let existing: Option<(i64, String)> = tx
        .prepare_cached("SELECT id, attributes FROM people WHERE external_id = ?1")?
        .query_row([&r.external_id], |x| Ok((x.get(0)?, x.get(1)?)))
        .optional()?;
    let by_email: Option<(i64, Option<String>, String)> = match &r.email {
        Some(e) => tx
            .prepare_cached("SELECT id, external_id, attributes FROM people WHERE email = ?1")?
            .query_row([e], |x| Ok((x.get(0)?, x.get(1)?, x.get(2)?)))
            .optional()?,
        None => None,
    };
    let target = match (existing, by_email) {
        (Some((id, _)), Some((other, ext, _))) if other != id => {
            return Ok(Upsert::Conflict(format!(
                "email {} already belongs to another person ({})",
                r.email.as_deref().unwrap_or_default(),
                ext.map(|e| format!("external id {e}")).unwrap_or_else(|| "created from events".into())
            )));
        }
        (Some(found), _) => Some(found),
        (None, Some((id, None, attrs))) => Some((id, attrs)),
        (None, Some((_, Some(ext), _))) => {
            return Ok(Upsert::Conflict(format!(
                "email {} already belongs to the person with external id {ext}",
                r.email.as_deref().unwrap_or_default()
            )));
        }
        (None, None) => None,
    };
    match target {
        Some((id, attrs)) => {
            let attributes = merge_attributes(Some(attrs), pipeline, &r.attributes)?;
            tx.prepare_cached(
                "UPDATE people SET external_id = ?1, name = ?2, email = COALESCE(?3, email), organisation_external_id = ?4,
                 attributes = ?5, updated_at = ?6 WHERE id = ?7",
            )?
            .execute(params![r.external_id, r.name, r.email, r.link, attributes, now, id])?;
            Ok(Upsert::Updated)
        }
        None => {
            let attributes = merge_attributes(None, pipeline, &r.attributes)?;
            tx.prepare_cached(
                "INSERT INTO people (external_id, email, name, organisation_external_id, attributes, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
            )?
            .execute(params![r.external_id, r.email, r.name, r.link, attributes, now])?;
            Ok(Upsert::Inserted)
        }
    }
}

fn upsert_organisation(tx: &Transaction, pipeline: &str, r: &crate::RecordRow, now: Micros) -> Result<Upsert, Error> {
    let existing: Option<(i64, String)> = tx
        .prepare_cached("SELECT id, attributes FROM organisations WHERE external_id = ?1")?
        .query_row([&r.external_id], |x| Ok((x.get(0)?, x.get(1)?)))
        .optional()?;
    match existing {
        Some((id, attrs)) => {
            let attributes = merge_attributes(Some(attrs), pipeline, &r.attributes)?;
            tx.prepare_cached("UPDATE organisations SET name = ?1, domain = ?2, attributes = ?3, updated_at = ?4 WHERE id = ?5")?
                .execute(params![r.name, r.link, attributes, now, id])?;
            Ok(Upsert::Updated)
        }
        None => {
            let attributes = merge_attributes(None, pipeline, &r.attributes)?;
            tx.prepare_cached(
                "INSERT INTO organisations (external_id, name, domain, attributes, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
            )?
            .execute(params![r.external_id, r.name, r.link, attributes, now])?;
            Ok(Upsert::Inserted)
        }
    }
}

fn write_records_tx(tx: &Transaction, b: &RecordBatch) -> Result<RecordOutcome, Error> {
    let now = now_micros();
    let mut out = RecordOutcome::default();
    let mut conflicts = Vec::new();
    for r in &b.rows {
        let old: Option<String> = tx
            .prepare_cached("SELECT hash FROM record_hashes WHERE pipeline = ?1 AND external_id = ?2")?
            .query_row(params![b.pipeline, r.external_id], |x| x.get(0))
            .optional()?;
        if old.as_deref() == Some(r.hash.as_str()) {
            out.unchanged += 1;
            continue;
        }
        let done = match b.entity {
            Entity::People => upsert_person(tx, &b.pipeline, r, now)?,
            Entity::Organisations => upsert_organisation(tx, &b.pipeline, r, now)?,
        };
        match done {
            Upsert::Inserted => out.inserted += 1,
            Upsert::Updated => out.updated += 1,
            Upsert::Conflict(reason) => {
                conflicts.push(Quarantined {
                    key: Some(r.external_id.clone()),
                    reason,
                    row: json!({"id": r.external_id, "name": r.name, "email": r.email}).to_string(),
                });
                continue;
            }
        }
        tx.prepare_cached(
            "INSERT INTO record_hashes (pipeline, external_id, hash) VALUES (?1, ?2, ?3)
             ON CONFLICT (pipeline, external_id) DO UPDATE SET hash = excluded.hash",
        )?
        .execute(params![b.pipeline, r.external_id, r.hash])?;
    }
    out.quarantined = write_quarantine(tx, &b.pipeline, &b.run_id, &b.quarantine)?;
    out.quarantined += write_quarantine(tx, &b.pipeline, &b.run_id, &conflicts)?;
    write_checkpoints(tx, &b.pipeline, &b.checkpoints)?;
    Ok(out)
}

fn rematch_tx(tx: &Transaction, pipeline: Option<&str>) -> Result<u64, Error> {
    let now = now_micros();
    // Parked rows whose person now exists, by the key they were parked under
    // or by their email.
    let matched = "SELECT p.id AS parked, p.pipeline, COALESCE(
            CASE p.key_kind WHEN 'email' THEN (SELECT id FROM people WHERE email = p.user_key)
                            ELSE (SELECT id FROM people WHERE external_id = p.user_key) END,
            (SELECT id FROM people WHERE email = p.email)) AS person
        FROM parked_events p WHERE ?1 IS NULL OR p.pipeline = ?1";
    let rows: Vec<(i64, String, Option<i64>)> = {
        let mut stmt = tx.prepare(matched)?;
        let it = stmt.query_map([pipeline], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        it.collect::<Result<_, _>>()?
    };
    let mut out = 0;
    for (parked, _, person) in rows {
        let Some(person) = person else { continue };
        tx.prepare_cached(
            "INSERT OR IGNORE INTO events (pipeline, event_id, name, ts, person_id, properties, backfill, ingested_at, run_id)
             SELECT pipeline, event_id, name, ts, ?1, properties, backfill, ?2, run_id FROM parked_events WHERE id = ?3",
        )?
        .execute(params![person, now, parked])?;
        tx.prepare_cached("DELETE FROM parked_events WHERE id = ?1")?.execute([parked])?;
        out += 1;
    }
    Ok(out)
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

fn json_text(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or(Value::String(s.to_string()))
}

fn export_tx(conn: &Connection, what: Export, after: i64, limit: usize) -> Result<(Vec<Value>, i64), Error> {
    let limit = limit as i64;
    let mut last = after;
    let mut out = Vec::new();
    match what {
        Export::Events => {
            let mut s = conn.prepare_cached(
                "SELECT e.id, e.event_id, e.name, e.ts, p.external_id, p.email, e.properties, e.backfill, e.pipeline, e.ingested_at
                 FROM events e JOIN people p ON p.id = e.person_id WHERE e.id > ?1 ORDER BY e.id LIMIT ?2",
            )?;
            let mut rows = s.query(params![after, limit])?;
            while let Some(r) = rows.next()? {
                last = r.get(0)?;
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
                "SELECT id, external_id, name, email, organisation_external_id, attributes FROM people WHERE id > ?1 ORDER BY id LIMIT ?2",
            )?;
            let mut rows = s.query(params![after, limit])?;
            while let Some(r) = rows.next()? {
                last = r.get(0)?;
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
            let mut s = conn
                .prepare_cached("SELECT id, external_id, name, domain, attributes FROM organisations WHERE id > ?1 ORDER BY id LIMIT ?2")?;
            let mut rows = s.query(params![after, limit])?;
            while let Some(r) = rows.next()? {
                last = r.get(0)?;
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
                "SELECT id, pipeline, event_id, name, ts, key_kind, user_key, email, backfill, parked_at FROM parked_events
                 WHERE id > ?1 ORDER BY id LIMIT ?2",
            )?;
            let mut rows = s.query(params![after, limit])?;
            while let Some(r) = rows.next()? {
                last = r.get(0)?;
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
            let mut s = conn
                .prepare_cached("SELECT id, pipeline, run_id, key, reason, row, at FROM quarantine WHERE id > ?1 ORDER BY id LIMIT ?2")?;
            let mut rows = s.query(params![after, limit])?;
            while let Some(r) = rows.next()? {
                last = r.get(0)?;
                let row: String = r.get(5)?;
                out.push(json!({
                    "pipeline": r.get::<_, String>(1)?,
                    "run_id": r.get::<_, String>(2)?,
                    "key": r.get::<_, Option<String>>(3)?,
                    "reason": r.get::<_, String>(4)?,
                    "row": json_text(&row),
                    "at": rfc3339(r.get(6)?),
                }));
            }
        }
    }
    Ok((out, last))
}

/// A claim in a private in-memory store.
struct MemoryClaim {
    claims: Arc<Mutex<std::collections::HashSet<String>>>,
    pipeline: String,
}

impl Drop for MemoryClaim {
    fn drop(&mut self) {
        self.claims.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.pipeline);
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn claim(&self, pipeline: &str) -> Result<Claim, Error> {
        self.claim_pipeline(pipeline)
    }

    async fn cursor(&self, pipeline: &str, slot: Slot) -> Result<Option<Micros>, Error> {
        let pipeline = pipeline.to_string();
        self.with(move |c| {
            Ok(c.query_row("SELECT value FROM cursors WHERE pipeline = ?1 AND slot = ?2", params![pipeline, slot.as_str()], |r| r.get(0))
                .optional()?)
        })
        .await
    }

    async fn write_events(&self, batch: EventBatch) -> Result<EventOutcome, Error> {
        #[cfg(feature = "failpoints")]
        let fire = self.fire_failpoint();
        self.with_worker(move |w| {
            let tx = write_tx(&mut w.conn)?;
            let mut found = Vec::new();
            let out = write_events_tx(&tx, &batch, &w.people, &mut found)?;
            add_to_run(&tx, &batch.run_id, &with_progress(out.into(), &batch.progress), &batch.progress.statement_ids)?;
            #[cfg(feature = "failpoints")]
            match fire {
                Some(FailAction::Abort) => {
                    // The rows are written, the commit has not happened: a kill here must lose nothing.
                    std::process::abort();
                }
                Some(FailAction::Error) => return Err(Error::Failpoint("events_before_commit".into())),
                None => {}
            }
            tx.commit()?;
            // Only what committed is remembered.
            if w.people.len() + found.len() > PEOPLE_CACHE_MAX {
                w.people.clear();
            }
            w.people.extend(found.into_iter().map(|(k, id)| ((batch.rule, k), id)));
            Ok(out)
        })
        .await
    }

    async fn write_records(&self, batch: RecordBatch) -> Result<RecordOutcome, Error> {
        self.with_worker(move |w| {
            let tx = write_tx(&mut w.conn)?;
            let out = write_records_tx(&tx, &batch)?;
            add_to_run(&tx, &batch.run_id, &with_progress(out.into(), &batch.progress), &batch.progress.statement_ids)?;
            tx.commit()?;
            if batch.entity == Entity::People && out.inserted + out.updated > 0 {
                // An email may have moved to another person.
                w.people.retain(|(rule, _), _| *rule == IdentityRule::ExternalId);
            }
            Ok(out)
        })
        .await
    }

    async fn rematch_parked(&self, pipeline: Option<&str>, run_id: &str) -> Result<u64, Error> {
        let pipeline = pipeline.map(str::to_string);
        let run_id = run_id.to_string();
        self.with(move |c| {
            let tx = write_tx(c)?;
            let out = rematch_tx(&tx, pipeline.as_deref())?;
            if out > 0 {
                add_to_run(&tx, &run_id, &RunCounts { rematched: out, ..Default::default() }, &[])?;
            }
            tx.commit()?;
            Ok(out)
        })
        .await
    }

    async fn expire_parked(&self, pipeline: &str, before: Micros, run_id: &str) -> Result<u64, Error> {
        let pipeline = pipeline.to_string();
        let run_id = run_id.to_string();
        self.with(move |c| {
            let tx = write_tx(c)?;
            let out = tx.execute("DELETE FROM parked_events WHERE pipeline = ?1 AND parked_at < ?2", params![pipeline, before])? as u64;
            if out > 0 {
                add_to_run(&tx, &run_id, &RunCounts { dropped: out, ..Default::default() }, &[])?;
            }
            tx.commit()?;
            Ok(out)
        })
        .await
    }

    async fn begin_run(&self, run: &SyncRun) -> Result<(), Error> {
        let run = run.clone();
        self.with(move |c| {
            let tx = write_tx(c)?;
            // A run still `running` died: what it committed is in its record,
            // and it ended at its last commit.
            tx.execute(
                "UPDATE sync_runs SET status = 'interrupted', ended_at = COALESCE(last_commit_at, started_at),
                   error_kind = 'interrupted', error_message = 'the process stopped before the run ended; the next run resumed from the last checkpoint'
                 WHERE pipeline = ?1 AND status = 'running'",
                params![run.pipeline],
            )?;
            tx.execute(
                "INSERT INTO sync_runs (run_id, pipeline, trigger, status, started_at, window_from, window_to, warehouse_state)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![run.run_id, run.pipeline, run.trigger, run.status, run.started_at, run.window_from, run.window_to, run.warehouse_state],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn finish_run(&self, run: &SyncRun) -> Result<(), Error> {
        let run = run.clone();
        self.with(move |c| {
            let k = &run.counts;
            let tx = write_tx(c)?;
            tx.execute(
                "UPDATE sync_runs SET status = ?2, ended_at = ?3, window_from = ?4, window_to = ?5, statement_ids = ?6, warehouse_state = ?7,
                   rows_read = ?8, inserted = ?9, updated = ?10, unchanged = ?11, deduplicated = ?12, parked = ?13, rematched = ?14,
                   dropped = ?15, quarantined = ?16, late = ?17, people_created = ?18, bytes = ?19, error_kind = ?20, error_message = ?21,
                   notes = ?22
                 WHERE run_id = ?1",
                params![
                    run.run_id,
                    run.status,
                    run.ended_at,
                    run.window_from,
                    run.window_to,
                    serde_json::to_string(&run.statement_ids).unwrap_or_else(|_| "[]".into()),
                    run.warehouse_state,
                    k.rows_read as i64,
                    k.inserted as i64,
                    k.updated as i64,
                    k.unchanged as i64,
                    k.deduplicated as i64,
                    k.parked as i64,
                    k.rematched as i64,
                    k.dropped as i64,
                    k.quarantined as i64,
                    k.late as i64,
                    k.people_created as i64,
                    k.bytes as i64,
                    run.error_kind,
                    run.error_message,
                    serde_json::to_string(&run.notes).unwrap_or_else(|_| "[]".into()),
                ],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn runs(&self, pipeline: Option<&str>, limit: usize) -> Result<Vec<SyncRun>, Error> {
        let pipeline = pipeline.map(str::to_string);
        self.with(move |c| {
            let mut s =
                c.prepare("SELECT * FROM sync_runs WHERE (?1 IS NULL OR pipeline = ?1) ORDER BY started_at DESC, id DESC LIMIT ?2")?;
            let rows = s.query_map(params![pipeline, limit as i64], run_from_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn export_page(&self, what: Export, after: i64, limit: usize) -> Result<(Vec<Value>, i64), Error> {
        self.with(move |c| export_tx(c, what, after, limit)).await
    }

    async fn totals(&self) -> Result<Totals, Error> {
        self.with(|c| {
            let n = |sql: &str| -> Result<u64, Error> { Ok(c.query_row(sql, [], |r| r.get::<_, i64>(0))? as u64) };
            Ok(Totals {
                organisations: n("SELECT count(*) FROM organisations")?,
                people: n("SELECT count(*) FROM people")?,
                events: n("SELECT count(*) FROM events")?,
                backfilled_events: n("SELECT count(*) FROM events WHERE backfill")?,
                parked: n("SELECT count(*) FROM parked_events")?,
                quarantined: n("SELECT count(*) FROM quarantine")?,
                runs: n("SELECT count(*) FROM sync_runs")?,
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EventRow, RecordRow};

    fn ev(id: &str, user: &str, email: Option<&str>) -> EventRow {
        EventRow {
            event_id: id.into(),
            name: "signed_in".into(),
            ts: 1_700_000_000_000_000,
            user_key: user.into(),
            email: email.map(str::to_string),
            properties: "{}".into(),
            late: false,
        }
    }

    fn batch(rows: Vec<EventRow>, rule: IdentityRule) -> EventBatch {
        EventBatch {
            pipeline: "p".into(),
            run_id: "r1".into(),
            rule,
            backfill: false,
            rows,
            quarantine: vec![],
            checkpoints: vec![],
            progress: Progress::default(),
        }
    }

    fn person(id: &str, email: Option<&str>, hash: &str) -> RecordRow {
        RecordRow {
            external_id: id.into(),
            name: format!("Name {id}"),
            email: email.map(str::to_string),
            link: None,
            attributes: r#"{"role":"admin"}"#.into(),
            hash: hash.into(),
        }
    }

    #[tokio::test]
    async fn events_dedup_park_and_rematch() {
        let s = SqliteStore::open(":memory:").unwrap();
        // Email rule creates people; external-id rule without email parks.
        let o = s.write_events(batch(vec![ev("e1", "a@x.com", None), ev("e1", "a@x.com", None)], IdentityRule::Email)).await.unwrap();
        assert_eq!((o.inserted, o.deduplicated, o.people_created), (1, 1, 1));
        let o = s.write_events(batch(vec![ev("e2", "u1", None), ev("e3", "u2", Some("b@x.com"))], IdentityRule::ExternalId)).await.unwrap();
        assert_eq!((o.inserted, o.parked, o.people_created), (1, 1, 1));
        // Parked again on a re-read: a duplicate, not a second parked row.
        let o = s.write_events(batch(vec![ev("e2", "u1", None)], IdentityRule::ExternalId)).await.unwrap();
        assert_eq!((o.parked, o.deduplicated), (0, 1));
        // The person appears: the parked event moves.
        let r = RecordBatch {
            pipeline: "people".into(),
            run_id: "r2".into(),
            entity: Entity::People,
            rows: vec![person("u1", None, "h1")],
            quarantine: vec![],
            checkpoints: vec![],
            progress: Progress::default(),
        };
        assert_eq!(s.write_records(r).await.unwrap().inserted, 1);
        assert_eq!(s.rematch_parked(Some("other"), "r3").await.unwrap(), 0);
        assert_eq!(s.rematch_parked(Some("p"), "r3").await.unwrap(), 1);
        let t = s.totals().await.unwrap();
        assert_eq!((t.events, t.parked, t.people), (3, 0, 3));
    }

    #[tokio::test]
    async fn a_parked_event_whose_id_later_matches_is_stored_once() {
        let s = SqliteStore::open(":memory:").unwrap();
        // The same id twice in one batch: first for nobody known, then with an email that creates the person.
        let o = s.write_events(batch(vec![ev("e9", "u9", None), ev("e9", "u9", Some("n@x.com"))], IdentityRule::ExternalId)).await.unwrap();
        assert_eq!((o.parked, o.inserted), (1, 1));
        let t = s.totals().await.unwrap();
        assert_eq!((t.events, t.parked), (1, 0), "stored once, no longer parked");
        // Across batches too.
        s.write_events(batch(vec![ev("e10", "u10", None)], IdentityRule::ExternalId)).await.unwrap();
        s.write_events(batch(vec![ev("e10", "u9", None)], IdentityRule::ExternalId)).await.unwrap();
        let t = s.totals().await.unwrap();
        assert_eq!((t.events, t.parked), (2, 0));
    }

    #[tokio::test]
    async fn records_skip_unchanged_hashes_and_claim_email_people() {
        let s = SqliteStore::open(":memory:").unwrap();
        s.write_events(batch(vec![ev("e1", "a@x.com", None)], IdentityRule::Email)).await.unwrap();
        let rb = |rows| RecordBatch {
            pipeline: "people".into(),
            run_id: "r".into(),
            entity: Entity::People,
            rows,
            quarantine: vec![],
            checkpoints: vec![Checkpoint { slot: Slot::Live, value: Some(42) }],
            progress: Progress::default(),
        };
        // The person created from an email event gets its external id.
        let o = s.write_records(rb(vec![person("u1", Some("a@x.com"), "h1")])).await.unwrap();
        assert_eq!((o.inserted, o.updated), (0, 1));
        let o = s.write_records(rb(vec![person("u1", Some("a@x.com"), "h1")])).await.unwrap();
        assert_eq!(o.unchanged, 1);
        // Another id claiming the same email is quarantined, not merged.
        let o = s.write_records(rb(vec![person("u2", Some("a@x.com"), "h2")])).await.unwrap();
        assert_eq!(o.quarantined, 1);
        assert_eq!(s.cursor("people", Slot::Live).await.unwrap(), Some(42));
        assert_eq!(s.totals().await.unwrap().people, 1);
    }

    #[cfg(feature = "failpoints")]
    #[tokio::test]
    async fn a_failed_commit_leaves_nothing_behind() {
        let s = SqliteStore::open(":memory:").unwrap();
        s.set_failpoint(1, FailAction::Error);
        let mut b = batch(vec![ev("e1", "a@x.com", None)], IdentityRule::Email);
        b.checkpoints.push(Checkpoint { slot: Slot::Live, value: Some(7) });
        assert!(s.write_events(b.clone()).await.is_err());
        assert_eq!(s.totals().await.unwrap().events, 0);
        assert_eq!(s.cursor("p", Slot::Live).await.unwrap(), None);
        assert_eq!(s.write_events(b).await.unwrap().inserted, 1);
        assert_eq!(s.cursor("p", Slot::Live).await.unwrap(), Some(7));
    }

    fn temp_db(name: &str) -> (std::path::PathBuf, String) {
        let dir = std::env::temp_dir().join(format!("trig-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("trig.db").to_str().unwrap().to_string();
        (dir, file)
    }

    fn run(id: &str) -> SyncRun {
        SyncRun {
            run_id: id.into(),
            pipeline: "p".into(),
            trigger: "schedule".into(),
            status: "running".into(),
            started_at: now_micros(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_dead_runs_record_counts_what_it_committed_and_ends_at_its_last_commit() {
        let s = SqliteStore::open(":memory:").unwrap();
        s.begin_run(&run("r1")).await.unwrap();
        let mut b = batch(vec![ev("e1", "a@x.com", None), ev("e2", "b@x.com", None)], IdentityRule::Email);
        b.progress = Progress { rows_read: 3, bytes: 100, statement_ids: vec!["s1".into()] };
        b.quarantine.push(Quarantined { key: None, reason: "bad".into(), row: "{}".into() });
        s.write_events(b).await.unwrap();
        let mut b = batch(vec![ev("e3", "a@x.com", None)], IdentityRule::Email);
        b.progress = Progress { rows_read: 1, bytes: 0, statement_ids: vec!["s2".into()] };
        s.write_events(b).await.unwrap();
        let committed = s.runs(None, 1).await.unwrap().remove(0);
        assert_eq!(committed.status, "running");
        assert_eq!((committed.counts.rows_read, committed.counts.inserted, committed.counts.quarantined), (4, 3, 1));
        assert_eq!((committed.counts.people_created, committed.counts.bytes), (2, 100));
        assert_eq!(committed.statement_ids, ["s1", "s2"]);
        // The process dies; the next run marks it interrupted, ended at its last commit.
        std::thread::sleep(std::time::Duration::from_millis(20));
        s.begin_run(&run("r2")).await.unwrap();
        let dead = s.runs(None, 2).await.unwrap().into_iter().find(|r| r.run_id == "r1").unwrap();
        assert_eq!(dead.status, "interrupted");
        assert_eq!(dead.counts, committed.counts);
        let ended = dead.ended_at.unwrap();
        assert!(ended > dead.started_at && ended < now_micros() - 10_000, "ended at its last commit, not when found dead");
    }

    #[tokio::test]
    async fn two_stores_on_one_new_file_migrate_once_and_write_side_by_side() {
        let (dir, file) = temp_db("two");
        // Two opens of a new file at once: one creates the schema, the other waits and sees it.
        // (Several rounds: SQLite answers some of these collisions with BUSY at once.)
        for round in 0..20 {
            let fresh = format!("{file}.{round}");
            std::thread::scope(|sc| {
                let a = sc.spawn(|| SqliteStore::open(&fresh));
                let b = sc.spawn(|| SqliteStore::open(&fresh));
                a.join().unwrap().unwrap();
                b.join().unwrap().unwrap();
            });
        }
        let (a, b) = (SqliteStore::open(&file).unwrap(), SqliteStore::open(&file).unwrap());
        let write = |s: SqliteStore, tag: &'static str| async move {
            for i in 0..40 {
                let rows = (0..200).map(|j| ev(&format!("{tag}-{i}-{j}"), &format!("{tag}{j}@x.com"), None)).collect();
                let mut b = batch(rows, IdentityRule::Email);
                b.pipeline = tag.into();
                s.write_events(b).await?;
            }
            Ok::<_, Error>(())
        };
        let (ra, rb) = tokio::join!(write(a.clone(), "a"), write(b, "b"));
        ra.unwrap();
        rb.unwrap();
        assert_eq!(a.totals().await.unwrap().events, 2 * 40 * 200);
        std::fs::remove_dir_all(dir).ok();
    }

    #[tokio::test]
    async fn a_lock_held_past_the_timeout_is_a_transient_busy_error_naming_the_file() {
        let (dir, file) = temp_db("busy");
        let s = SqliteStore::open_with(&file, std::time::Duration::from_millis(300)).unwrap();
        let holder = Connection::open(&file).unwrap();
        holder.execute_batch("BEGIN IMMEDIATE; INSERT INTO cursors VALUES ('x', 'live', 1, 1);").unwrap();
        let e = s.write_events(batch(vec![ev("e1", "a@x.com", None)], IdentityRule::Email)).await.unwrap_err();
        assert!(matches!(&e, Error::Busy { path, timeout_secs: 0 } if path == &file), "{e:?}");
        assert!(e.is_transient() && !e.is_user_fixable());
        holder.execute_batch("ROLLBACK").unwrap();
        // Released: the same write goes through, nothing half-written before.
        assert_eq!(s.write_events(batch(vec![ev("e1", "a@x.com", None)], IdentityRule::Email)).await.unwrap().inserted, 1);
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn a_file_that_is_not_a_database_is_named_with_what_to_do() {
        let (dir, file) = temp_db("corrupt");
        std::fs::write(&file, "this is not a database, it is a note about one\n".repeat(200)).unwrap();
        let e = SqliteStore::open(&file).unwrap_err();
        assert!(matches!(&e, Error::Corrupt { path } if path == &file), "{e:?}");
        assert!(e.is_user_fixable());
        assert!(e.to_string().contains("restore it from a backup"), "{e}");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn a_read_only_database_is_a_read_only_error() {
        let (dir, file) = temp_db("ro");
        drop(SqliteStore::open(&file).unwrap());
        let ro = Connection::open_with_flags(&file, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let e = Error::from(ro.execute("DELETE FROM cursors", []).unwrap_err()).at(&file, BUSY_TIMEOUT);
        assert!(matches!(&e, Error::ReadOnly { path } if path == &file), "{e:?}");
        assert!(e.to_string().contains("make it writable"), "{e}");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn a_version_1_store_migrates_its_full_refresh_slot() {
        let (dir, file) = temp_db("v1");
        let c = Connection::open(&file).unwrap();
        c.execute_batch(MIGRATIONS[0]).unwrap();
        c.execute_batch("PRAGMA user_version = 1; INSERT INTO cursors VALUES ('p', 'full_refresh', 5, 1);").unwrap();
        drop(c);
        drop(SqliteStore::open(&file).unwrap());
        let c = Connection::open(&file).unwrap();
        let slot: String = c.query_row("SELECT slot FROM cursors WHERE pipeline = 'p'", [], |r| r.get(0)).unwrap();
        assert_eq!(slot, "backfill");
        let v: i64 = c.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        std::fs::remove_dir_all(dir).ok();
    }

    #[tokio::test]
    async fn a_pipeline_is_claimed_by_one_run_at_a_time_across_stores() {
        let (dir, file) = temp_db("claim");
        let (a, b) = (SqliteStore::open(&file).unwrap(), SqliteStore::open(&file).unwrap());
        let held = a.claim("events").await.unwrap();
        let e = b.claim("events").await.unwrap_err();
        assert!(matches!(&e, Error::AlreadyRunning { pipeline, holder } if pipeline == "events" && holder.contains("process")), "{e:?}");
        assert!(e.is_transient());
        let other = b.claim("people").await.expect("another pipeline is free");
        drop(held);
        let again = b.claim("events").await.expect("released on drop");
        drop((other, again));
        let m = SqliteStore::open(":memory:").unwrap();
        let held = m.claim("p").await.unwrap();
        assert!(m.claim("p").await.is_err());
        drop(held);
        assert!(m.claim("p").await.is_ok());
        std::fs::remove_dir_all(dir).ok();
    }
}

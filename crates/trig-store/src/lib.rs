//! Trig's store: what the sync engine writes and Trig reads.
//!
//! - **Organisations** and **people** (external id, name, email, the
//!   organisation link, attributes grouped by the pipeline they came from);
//! - **events** (dedup key `(tenant, pipeline, event id)`, UTC time in microseconds,
//!   the matched person, properties, the backfill flag);
//! - **parked events** that matched no person yet, **quarantined rows** with
//!   their reason, **record hashes** for attribute diffs;
//! - **cursors** per pipeline and slot, and **sync runs**.
//!
//! Every row belongs to a **tenant** (a Trig customer account); matching,
//! dedup and every read stay inside one.
//!
//! The engine talks to the [`Store`] trait only. Every write the engine makes
//! is one call, and each call is one transaction: a batch's rows, its
//! quarantined rows and the cursor that covers them commit together or not at
//! all ([`EventBatch::checkpoints`]), and only while the run's lease holds
//! ([`Fence`]). The domain rules (identity, parking, the attribute merge,
//! leases) are written once in `rules.rs` over a backend's transaction;
//! [`sqlite::SqliteStore`] is the embedded default (one file, created and
//! migrated on first use); nothing above the trait assumes SQLite.

mod catalog;
mod error;
#[cfg(feature = "failpoints")]
mod failpoint;
pub mod postgres;
mod rules;
mod sql;
pub mod sqlite;
#[cfg(feature = "failpoints")]
pub mod testing;
pub mod time;

use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

pub use catalog::{
    Catalog, ChangeRecord, ConnectionRecord, ConnectionWrite, Outcome, PipelineRecord, PipelineWrite, SealedSecret, TenantInfo, TokenInfo,
    WebSession,
};
pub use error::Error;
#[cfg(feature = "failpoints")]
pub use failpoint::FailAction;
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;
pub use trig_model::{Entity, IdentityRule, TenantName};

/// A tenant, inside the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct TenantId(pub i64);

/// A pipeline, inside the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct PipelineId(pub i64);

/// A pipeline and its tenant: what every per-pipeline call takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct PipelineKey {
    pub tenant: TenantId,
    pub pipeline: PipelineId,
}

/// A run, inside the store (its record's row).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct RunKey(pub i64);

/// Who holds a lease: a process on a host, and what it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Holder {
    pub host: String,
    pub pid: u32,
    /// A person-readable label (`trig-databricks sync`, `serve worker 2`).
    pub label: String,
}

impl Holder {
    /// This process, on this host.
    pub fn this_process(label: &str) -> Holder {
        Holder { host: rules::this_host(), pid: std::process::id(), label: label.to_string() }
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (process {} on {})", self.label, self.pid, self.host)
    }
}

/// A lease's generation: every claim of a pipeline takes the next one, so a
/// write that carries an older one comes from a run that lost its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Fence {
    pub pipeline: PipelineKey,
    pub value: i64,
}

/// A pipeline leased for one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lease {
    pub fence: Fence,
    pub holder: Holder,
    pub since: Micros,
    pub until: Micros,
}

/// Microseconds since the Unix epoch, UTC.
pub type Micros = i64;

/// Which cursor of a pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Slot {
    /// The live watermark scheduled runs read from. It is set only once a
    /// pipeline's first backfill has finished.
    Live,
    /// Progress of an unfinished backfill (a first sync or a full refresh),
    /// so a crash or a cancel resumes it, still as a backfill.
    Backfill,
}

impl Slot {
    pub fn as_str(self) -> &'static str {
        match self {
            Slot::Live => "live",
            Slot::Backfill => "backfill",
        }
    }
}

/// One mapped, valid event.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    pub event_id: String,
    pub name: String,
    pub ts: Micros,
    /// The identifier value (an external id, or a normalised email under [`IdentityRule::Email`]).
    pub user_key: String,
    /// A normalised email from a separate column (lets an external-id pipeline create people).
    pub email: Option<String>,
    /// A JSON object, as text.
    pub properties: String,
    /// The event happened at or before the cursor the run started from, yet is new to the store.
    pub late: bool,
}

/// A row that could not be stored, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Quarantined {
    /// The row's key when it has one (event id, record id).
    pub key: Option<String>,
    pub reason: String,
    /// The source row as a JSON object.
    pub row: String,
}

/// A cursor move committed with the rows it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    pub slot: Slot,
    /// `None` clears the slot (a finished full refresh).
    pub value: Option<Micros>,
}

/// What a run read since its previous transaction. It commits with the
/// transaction and is added to the run's record, so the record of a run that
/// dies counts what it committed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    pub rows_read: u64,
    pub bytes: u64,
    pub statement_ids: Vec<String>,
}

/// One transaction's worth of events.
#[derive(Debug, Clone)]
pub struct EventBatch {
    pub fence: Fence,
    pub run: RunKey,
    pub rule: IdentityRule,
    pub backfill: bool,
    pub rows: Vec<EventRow>,
    pub quarantine: Vec<Quarantined>,
    pub checkpoints: Vec<Checkpoint>,
    pub progress: Progress,
}

/// What a batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EventOutcome {
    pub inserted: u64,
    pub deduplicated: u64,
    pub parked: u64,
    pub people_created: u64,
    pub late: u64,
    pub quarantined: u64,
}

/// One mapped person or organisation from an attribute pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordRow {
    pub external_id: String,
    pub name: String,
    /// People: the normalised email.
    pub email: Option<String>,
    /// People: the organisation's external id. Organisations: the domain.
    pub link: Option<String>,
    /// This pipeline's attributes (a JSON object as text; NULLs already removed, so they clear).
    pub attributes: String,
    /// A hash of everything above; an unchanged hash is not rewritten.
    pub hash: String,
}

#[derive(Debug, Clone)]
pub struct RecordBatch {
    pub fence: Fence,
    pub run: RunKey,
    pub entity: Entity,
    pub rows: Vec<RecordRow>,
    pub quarantine: Vec<Quarantined>,
    pub checkpoints: Vec<Checkpoint>,
    pub progress: Progress,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RecordOutcome {
    pub inserted: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub quarantined: u64,
}

/// A run as the warehouse cost model reads it: when it ran and what it
/// found the warehouse doing (a narrow read of many runs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunTime {
    pub pipeline: String,
    pub started_at: Micros,
    pub ended_at: Option<Micros>,
    pub warehouse_state: Option<String>,
    pub statements: u64,
}

/// A sync run, as recorded (one row per run).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SyncRun {
    pub run_id: String,
    pub pipeline: String,
    /// schedule, manual, full_refresh, replay
    pub trigger: String,
    /// running, succeeded, failed, cancelled, interrupted
    pub status: String,
    pub started_at: Micros,
    pub ended_at: Option<Micros>,
    pub window_from: Option<Micros>,
    pub window_to: Option<Micros>,
    pub statement_ids: Vec<String>,
    pub warehouse_state: Option<String>,
    pub counts: RunCounts,
    pub error_kind: Option<String>,
    pub error_message: Option<String>,
    /// What the run had to work around and the customer may want to know
    /// (e.g. a workspace that refuses query tags).
    pub notes: Vec<String>,
}

/// A run's figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RunCounts {
    pub rows_read: u64,
    pub inserted: u64,
    /// Attribute records rewritten because they changed.
    pub updated: u64,
    /// Attribute records read but unchanged (not rewritten).
    pub unchanged: u64,
    pub deduplicated: u64,
    pub parked: u64,
    pub rematched: u64,
    pub dropped: u64,
    pub quarantined: u64,
    pub late: u64,
    pub people_created: u64,
    pub bytes: u64,
}

impl std::ops::AddAssign for RunCounts {
    fn add_assign(&mut self, o: RunCounts) {
        self.rows_read += o.rows_read;
        self.inserted += o.inserted;
        self.updated += o.updated;
        self.unchanged += o.unchanged;
        self.deduplicated += o.deduplicated;
        self.parked += o.parked;
        self.rematched += o.rematched;
        self.dropped += o.dropped;
        self.quarantined += o.quarantined;
        self.late += o.late;
        self.people_created += o.people_created;
        self.bytes += o.bytes;
    }
}

impl From<EventOutcome> for RunCounts {
    fn from(o: EventOutcome) -> RunCounts {
        RunCounts {
            inserted: o.inserted,
            deduplicated: o.deduplicated,
            parked: o.parked,
            people_created: o.people_created,
            late: o.late,
            quarantined: o.quarantined,
            ..Default::default()
        }
    }
}

impl From<RecordOutcome> for RunCounts {
    fn from(o: RecordOutcome) -> RunCounts {
        RunCounts { inserted: o.inserted, updated: o.updated, unchanged: o.unchanged, quarantined: o.quarantined, ..Default::default() }
    }
}

/// How many rows of each kind the store holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub organisations: u64,
    pub people: u64,
    pub events: u64,
    pub backfilled_events: u64,
    pub parked: u64,
    pub quarantined: u64,
    pub runs: u64,
}

/// The store the sync engine writes to. Each method is one transaction.
///
/// Everything belongs to a tenant (a Trig customer account): a pipeline is
/// named within its tenant and known inside the store by a [`PipelineKey`].
/// A run's writes carry the [`Fence`] of the lease it holds; a write whose
/// fence is no longer current (the lease expired or was taken over) writes
/// nothing and fails with [`Error::LeaseLost`].
#[async_trait]
pub trait Store: Catalog + Send + Sync + 'static {
    /// The tenant named `name`, created when new.
    async fn tenant(&self, name: &str) -> Result<TenantId, Error>;

    /// The pipeline named `name` in `tenant`, created when new.
    async fn pipeline(&self, tenant: TenantId, name: &str) -> Result<PipelineKey, Error>;

    /// Leases `pipeline` to `holder` for `ttl`, or fails with
    /// [`Error::LeaseHeld`] naming the live holder. A free lease (released,
    /// expired, or held by a process of this host that is gone) is taken
    /// with the next fence, and runs still recorded as running (their holder
    /// died) are marked `interrupted`, ended at their last commit.
    async fn claim(&self, pipeline: PipelineKey, holder: &Holder, ttl: Duration) -> Result<Lease, Error>;

    /// Extends a lease by `ttl` from now; [`Error::LeaseLost`] when it is no longer ours.
    async fn heartbeat(&self, lease: &Lease, ttl: Duration) -> Result<Micros, Error>;

    /// Gives a lease up (a no-op when it is no longer ours).
    async fn release(&self, lease: &Lease) -> Result<(), Error>;

    /// A pipeline's cursor in `slot`.
    async fn cursor(&self, pipeline: PipelineKey, slot: Slot) -> Result<Option<Micros>, Error>;

    /// Records a run as started under `fence`.
    async fn begin_run(&self, fence: Fence, run: &SyncRun) -> Result<RunKey, Error>;

    /// Stores events (dedup on `(tenant, pipeline, event id)`, identity
    /// matching, parking), quarantined rows and the checkpoints, and adds what
    /// it did (and the batch's progress) to the run's record, in one
    /// transaction that checks the fence.
    ///
    /// A run may have up to [`Store::event_writes_in_flight`] of these
    /// pending at once. They commit in the order they were **called** (not
    /// the order their futures are first polled: the call takes its place),
    /// each as if the ones before it had committed first; when one fails,
    /// the ones called after it while it was pending fail too and write
    /// nothing, so a cursor never moves past rows that were not stored.
    async fn write_events(&self, batch: EventBatch) -> Result<EventOutcome, Error>;

    /// How many [`Store::write_events`] of one run may be pending at once:
    /// more than one where the next batch's work can overlap this one's
    /// commit (PostgreSQL, on a second connection).
    fn event_writes_in_flight(&self) -> usize {
        1
    }

    /// Upserts people or organisations whose hash changed, quarantined rows
    /// and the checkpoints, and adds what it did to the run's record, in one
    /// fenced transaction.
    async fn write_records(&self, batch: RecordBatch) -> Result<RecordOutcome, Error>;

    /// Moves the tenant's parked events (of the fenced pipeline only, or of
    /// all its pipelines) whose person now exists into events, counted in
    /// `run`'s record; returns how many.
    async fn rematch_parked(&self, fence: Fence, run: RunKey, only_this_pipeline: bool) -> Result<u64, Error>;

    /// Drops the fenced pipeline's events parked before `before`, counted as
    /// dropped in `run`'s record; returns how many.
    async fn expire_parked(&self, fence: Fence, run: RunKey, before: Micros) -> Result<u64, Error>;

    /// Records a run's end (status, counts, error), if `fence` still holds.
    async fn finish_run(&self, fence: Fence, run: RunKey, record: &SyncRun) -> Result<(), Error>;

    /// A tenant's runs (of one pipeline, or all), newest first.
    async fn runs(&self, tenant: TenantId, pipeline: Option<&str>, limit: usize) -> Result<Vec<SyncRun>, Error>;

    /// A tenant's runs started at `since` or later, oldest first, at most
    /// `limit`: only their times, warehouse state and statement count.
    async fn run_times(&self, tenant: TenantId, since: Micros, limit: usize) -> Result<Vec<RunTime>, Error>;

    /// One page of a pipeline's runs, newest first, after the run `after`
    /// (a run id of the previous page; `None` for the first page).
    async fn runs_page(&self, tenant: TenantId, pipeline: &str, after: Option<&str>, limit: usize) -> Result<Vec<SyncRun>, Error>;

    /// One run of a pipeline, by its run id.
    async fn run(&self, tenant: TenantId, pipeline: &str, run_id: &str) -> Result<Option<SyncRun>, Error>;

    /// One page of a tenant's stored rows as JSON objects, in a stable
    /// order, after `after` (`None` for the start, else a position this
    /// returned); the position to continue from, `None` at the end.
    async fn export_page(
        &self,
        tenant: TenantId,
        what: Export,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<serde_json::Value>, Option<String>), Error>;

    async fn totals(&self, tenant: TenantId) -> Result<Totals, Error>;
}

/// What `export` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Export {
    Events,
    People,
    Organisations,
    Parked,
    Quarantine,
}

/// Opens the store a config's `[store] url` names.
pub fn open(url: &str) -> Result<Box<dyn Store>, Error> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        return Ok(Box::new(SqliteStore::open(path)?));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Box::new(PostgresStore::open(url)?));
    }
    Err(Error::Unsupported {
        url: url.split('@').next_back().unwrap_or("").to_string(),
        reason: "the store URL must start with sqlite:// or postgres://".into(),
    })
}

//! Trig's store: what the sync engine writes and Trig reads.
//!
//! - **Organisations** and **people** (external id, name, email, the
//!   organisation link, attributes grouped by the pipeline they came from);
//! - **events** (dedup key `(pipeline, event id)`, UTC time in microseconds,
//!   the matched person, properties, the backfill flag);
//! - **parked events** that matched no person yet, **quarantined rows** with
//!   their reason, **record hashes** for attribute diffs;
//! - **cursors** per pipeline and slot, and **sync runs**.
//!
//! The engine talks to the [`Store`] trait only. Every write the engine makes
//! is one call, and each call is one transaction: a batch's rows, its
//! quarantined rows and the cursor that covers them commit together or not at
//! all ([`EventBatch::checkpoint`]). [`sqlite::SqliteStore`] is the embedded
//! default (one file, created and migrated on first use); nothing above the
//! trait assumes SQLite.

mod error;
pub mod sqlite;
pub mod time;

use async_trait::async_trait;
use serde::Serialize;

pub use error::Error;
pub use sqlite::SqliteStore;
pub use trig_model::{Entity, IdentityRule};

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
    pub pipeline: String,
    pub run_id: String,
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
    pub pipeline: String,
    pub run_id: String,
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

/// A pipeline claimed for one run: while it lives, no other run of the
/// pipeline (in this process or another) can claim it. Dropping it releases
/// the claim, also when the process dies.
pub struct Claim {
    _held: Box<dyn std::any::Any + Send + Sync>,
}

impl Claim {
    pub fn new(held: impl std::any::Any + Send + Sync) -> Claim {
        Claim { _held: Box::new(held) }
    }
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Claim")
    }
}

/// The store the sync engine writes to. Each method is one transaction.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Claims `pipeline` for one run, or fails with [`Error::AlreadyRunning`]
    /// when another run holds it: two runs of one pipeline never overlap
    /// (their cursors and records would cross).
    async fn claim(&self, pipeline: &str) -> Result<Claim, Error>;

    /// A pipeline's cursor in `slot`.
    async fn cursor(&self, pipeline: &str, slot: Slot) -> Result<Option<Micros>, Error>;

    /// Stores events (dedup on `(pipeline, event id)`, identity matching,
    /// parking), quarantined rows and the checkpoints, and adds what it did
    /// (and the batch's progress) to the run's record, in one transaction.
    async fn write_events(&self, batch: EventBatch) -> Result<EventOutcome, Error>;

    /// Upserts people or organisations whose hash changed, quarantined rows
    /// and the checkpoints, and adds what it did to the run's record, in one
    /// transaction.
    async fn write_records(&self, batch: RecordBatch) -> Result<RecordOutcome, Error>;

    /// Moves parked events (of one pipeline, or all) whose person now exists
    /// into events, counted in `run_id`'s record; returns how many.
    async fn rematch_parked(&self, pipeline: Option<&str>, run_id: &str) -> Result<u64, Error>;

    /// Drops a pipeline's events parked before `before`, counted as dropped
    /// in `run_id`'s record; returns how many.
    async fn expire_parked(&self, pipeline: &str, before: Micros, run_id: &str) -> Result<u64, Error>;

    /// Records a run as started; marks earlier runs of the pipeline still
    /// `running` (a crashed process) as `interrupted`, ended at their last commit.
    async fn begin_run(&self, run: &SyncRun) -> Result<(), Error>;

    /// Records a run's end (status, counts, error).
    async fn finish_run(&self, run: &SyncRun) -> Result<(), Error>;

    /// Runs, newest first.
    async fn runs(&self, pipeline: Option<&str>, limit: usize) -> Result<Vec<SyncRun>, Error>;

    /// One page of stored rows as JSON objects, in a stable order, after `after` (a position this returned).
    async fn export_page(&self, what: Export, after: i64, limit: usize) -> Result<(Vec<serde_json::Value>, i64), Error>;

    async fn totals(&self) -> Result<Totals, Error>;
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
        return Err(Error::Unsupported {
            url: url.split('@').next_back().unwrap_or("").to_string(),
            reason: "the PostgreSQL store is not built yet; use sqlite://FILE for now".into(),
        });
    }
    Err(Error::Unsupported { url: url.to_string(), reason: "the store URL must start with sqlite://".into() })
}

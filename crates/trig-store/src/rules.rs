//! The store's domain rules, written once over a backend's transaction.
//!
//! A backend (SQLite, PostgreSQL) implements [`Tx`]: set-based reads and
//! writes of rows, with no decision in them. Every decision is here: the
//! lease and its fence, identity matching (external id, email, create),
//! parking, re-matching and expiry, the attribute merge with its NULL clears
//! and email conflicts, quarantine dedup and the run's record. A backend runs
//! one of these functions inside one of its transactions and commits when it
//! returns `Ok`.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

/// The maps and sets built per row of a batch (identifiers, event ids): a
/// fast hasher, seeded per process.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type FastSet<T> = HashSet<T, foldhash::fast::RandomState>;

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::time::rfc3339;
use crate::{
    Checkpoint, Entity, Error, EventBatch, EventOutcome, EventRow, Fence, Holder, IdentityRule, Lease, Micros, PipelineId, PipelineKey,
    Progress, Quarantined, RecordBatch, RecordOutcome, RunCounts, RunKey, Slot, SyncRun, TenantId,
};

/// How a lease row is read: to change it, or to rely on it until the commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lock {
    /// Claims, heartbeats and releases (PostgreSQL: `FOR UPDATE`).
    Update,
    /// A run's writes: a takeover waits for them to commit (PostgreSQL: `FOR SHARE`).
    Share,
}

/// A pipeline's lease as stored.
#[derive(Debug, Clone)]
pub(crate) struct LeaseRow {
    pub name: String,
    pub fence: i64,
    pub holder: Option<Holder>,
    pub since: Option<Micros>,
    pub until: Option<Micros>,
}

/// A person as the rules need them.
#[derive(Debug, Clone)]
pub(crate) struct PersonRow {
    pub id: i64,
    pub external_id: Option<String>,
    pub email: Option<String>,
    pub name: Option<String>,
    pub organisation: Option<String>,
    pub attributes: String,
}

/// A person to create from an event.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct NewPerson {
    pub external_id: Option<String>,
    pub email: Option<String>,
}

/// A person's or organisation's fields as an attribute pipeline leaves them.
#[derive(Debug, Clone)]
pub(crate) struct RecordWrite {
    /// `None` for a new one.
    pub id: Option<i64>,
    pub external_id: String,
    pub name: String,
    /// People: the email. Organisations: unused.
    pub email: Option<String>,
    /// People: the organisation's external id. Organisations: the domain.
    pub link: Option<String>,
    pub attributes: String,
}

/// An event that matched no person yet.
#[derive(Debug, Clone)]
pub(crate) struct ParkedRow {
    pub id: i64,
    pub key_kind: IdentityRule,
    pub user_key: String,
    pub email: Option<String>,
}

/// What a backend's transaction offers the rules. Reads and writes take
/// sets, so a backend with a round trip per statement makes few of them.
pub(crate) trait Tx {
    /// The store's clock (PostgreSQL: the server's, shared by every process).
    fn now(&mut self) -> Result<Micros, Error>;

    fn lease(&mut self, p: PipelineKey, lock: Lock) -> Result<LeaseRow, Error>;
    fn set_lease(
        &mut self,
        p: PipelineKey,
        fence: i64,
        holder: Option<&Holder>,
        since: Option<Micros>,
        until: Option<Micros>,
    ) -> Result<(), Error>;
    /// Marks the pipeline's runs still `running` as `interrupted`, ended at their last commit.
    fn interrupt_running(&mut self, p: PipelineKey, message: &str) -> Result<u64, Error>;
    fn insert_run(&mut self, p: PipelineKey, run: &SyncRun) -> Result<RunKey, Error>;
    fn update_run(&mut self, run: RunKey, record: &SyncRun) -> Result<(), Error>;
    /// Adds figures to a run's record and moves its last commit to `now`.
    fn add_to_run(&mut self, run: RunKey, counts: &RunCounts, statement_ids: &[String], now: Micros) -> Result<(), Error>;

    /// The tenant's two people counters (see [`PeopleEpochs`]).
    fn people_epochs(&mut self, t: TenantId) -> Result<PeopleEpochs, Error>;
    fn bump_people_epoch(&mut self, t: TenantId) -> Result<(), Error>;
    /// Moves the `added` counter on: its value after the move.
    fn bump_people_added(&mut self, t: TenantId) -> Result<i64, Error>;
    fn people_by_external_id(&mut self, t: TenantId, keys: &[&str]) -> Result<Vec<PersonRow>, Error>;
    fn people_by_email(&mut self, t: TenantId, emails: &[&str]) -> Result<Vec<PersonRow>, Error>;
    /// Creates each person unless one with that external id or email exists
    /// (another writer made it first): the new id, or `None`.
    fn insert_people(&mut self, t: TenantId, people: &[NewPerson], now: Micros) -> Result<Vec<Option<i64>>, Error>;
    /// Gives people created from an email event their external id.
    fn set_external_ids(&mut self, t: TenantId, claims: &[(i64, &str)], now: Micros) -> Result<(), Error>;
    fn write_people(&mut self, t: TenantId, rows: &[RecordWrite], now: Micros) -> Result<(), Error>;
    fn organisations_by_external_id(&mut self, t: TenantId, keys: &[&str]) -> Result<Vec<(i64, String, String)>, Error>;
    fn write_organisations(&mut self, t: TenantId, rows: &[RecordWrite], now: Micros) -> Result<(), Error>;
    fn record_hashes(&mut self, p: PipelineKey, keys: &[&str]) -> Result<HashMap<String, String>, Error>;
    fn put_record_hashes(&mut self, p: PipelineKey, rows: &[(&str, &str)]) -> Result<(), Error>;

    /// Inserts events unless `(tenant, pipeline, event id)` is stored: which were new.
    fn insert_events(
        &mut self,
        p: PipelineKey,
        run: RunKey,
        backfill: bool,
        now: Micros,
        rows: &[(&EventRow, i64)],
    ) -> Result<Vec<bool>, Error>;
    fn stored_event_ids(&mut self, p: PipelineKey, ids: &[&str]) -> Result<HashSet<String>, Error>;
    /// Whether a backfill's insert costs much more when one of its ids is
    /// stored already (PostgreSQL's COPY fails and the batch starts over),
    /// so repeats are worth finding first ([`StoredIds`]).
    fn repeats_are_costly(&self) -> bool {
        false
    }
    /// Parks events unless parked already: which were new.
    fn park(
        &mut self,
        p: PipelineKey,
        run: RunKey,
        backfill: bool,
        rule: IdentityRule,
        now: Micros,
        rows: &[&EventRow],
    ) -> Result<Vec<bool>, Error>;
    /// The event ids the pipeline has parked, or `None` when there are more than `max`.
    fn parked_ids(&mut self, p: PipelineKey, max: usize) -> Result<Option<Vec<String>>, Error>;
    /// Deletes the parked events of these ids (just stored as events).
    fn unpark(&mut self, p: PipelineKey, ids: &[&str]) -> Result<u64, Error>;
    fn parked(&mut self, t: TenantId, only: Option<PipelineId>) -> Result<Vec<ParkedRow>, Error>;
    /// Moves parked events to events with their person: how many left the parked set.
    fn move_parked(&mut self, t: TenantId, moves: &[(i64, i64)], now: Micros) -> Result<u64, Error>;
    fn expire_parked(&mut self, p: PipelineKey, before: Micros) -> Result<u64, Error>;
    /// Inserts quarantined rows unless the same row hash and reason is kept: how many were new.
    fn insert_quarantine(&mut self, p: PipelineKey, run: RunKey, now: Micros, rows: &[(&Quarantined, String)]) -> Result<u64, Error>;
    fn set_cursor(&mut self, p: PipelineKey, slot: Slot, value: Option<Micros>, now: Micros) -> Result<(), Error>;
}

/// This process's clock, in microseconds since the Unix epoch.
pub(crate) fn now_micros() -> Micros {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

/// For each row, whether it is the first of its event id in the batch: only
/// a first may be new; a later one is the batch's own repeat.
pub(crate) fn first_of_each_id(rows: &[(&EventRow, i64)]) -> Vec<bool> {
    let mut seen: FastSet<&str> = FastSet::with_capacity_and_hasher(rows.len(), Default::default());
    rows.iter().map(|(r, _)| seen.insert(r.event_id.as_str())).collect()
}

/// A list as the stores keep it: JSON text.
pub(crate) fn json_list(v: &[String]) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "[]".into())
}

/// Stored JSON text as a value (text that is not JSON stays a string).
pub(crate) fn json_text(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or(Value::String(s.to_string()))
}

/// This host's name, as leases record it.
pub(crate) fn this_host() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|f| std::fs::read_to_string(f).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()))
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

/// Whether a holder is a process of this host that no longer exists (a
/// killed `sync`): its lease is free at once instead of after its TTL.
fn holder_gone(h: &Holder) -> bool {
    cfg!(target_os = "linux")
        && h.pid != std::process::id()
        && h.host == this_host()
        && !std::path::Path::new(&format!("/proc/{}", h.pid)).exists()
}

fn micros(d: std::time::Duration) -> Micros {
    d.as_micros().min(i64::MAX as u128 / 2) as i64
}

pub(crate) const INTERRUPTED: &str =
    "the process stopped before the run ended (or lost its lease); the next run resumed from the last checkpoint";

/// Leases a pipeline (see [`crate::Store::claim`]).
pub(crate) fn claim<T: Tx>(tx: &mut T, p: PipelineKey, holder: &Holder, ttl: std::time::Duration) -> Result<Lease, Error> {
    let now = tx.now()?;
    let l = tx.lease(p, Lock::Update)?;
    if let Some(h) = &l.holder
        && l.until.unwrap_or(0) >= now
        && !holder_gone(h)
    {
        return Err(Error::LeaseHeld {
            pipeline: l.name,
            holder: h.to_string(),
            since: l.since.map(rfc3339).unwrap_or_default(),
            until: l.until.map(rfc3339).unwrap_or_default(),
        });
    }
    let fence = Fence { pipeline: p, value: l.fence + 1 };
    let until = now + micros(ttl);
    tx.set_lease(p, fence.value, Some(holder), Some(now), Some(until))?;
    // Nobody holds the pipeline, so a run still recorded as running died.
    tx.interrupt_running(p, INTERRUPTED)?;
    Ok(Lease { fence, holder: holder.clone(), since: now, until })
}

fn lost(l: &LeaseRow, fence: Fence, now: Micros) -> Option<String> {
    if l.fence != fence.value {
        return Some(match &l.holder {
            Some(h) => format!("{h} took it over"),
            None => "another run took it over and has finished".into(),
        });
    }
    match (&l.holder, l.until) {
        (None, _) => Some("it was released".into()),
        (Some(_), Some(until)) if until < now => Some(format!("it expired at {} without a heartbeat", rfc3339(until))),
        _ => None,
    }
}

/// Extends a lease (see [`crate::Store::heartbeat`]).
pub(crate) fn heartbeat<T: Tx>(tx: &mut T, lease: &Lease, ttl: std::time::Duration) -> Result<Micros, Error> {
    let now = tx.now()?;
    let l = tx.lease(lease.fence.pipeline, Lock::Update)?;
    if let Some(reason) = lost(&l, lease.fence, now) {
        return Err(Error::LeaseLost { pipeline: l.name, reason });
    }
    let until = now + micros(ttl);
    tx.set_lease(lease.fence.pipeline, lease.fence.value, l.holder.as_ref(), l.since, Some(until))?;
    Ok(until)
}

/// Gives a lease up, if it is still ours.
pub(crate) fn release<T: Tx>(tx: &mut T, lease: &Lease) -> Result<(), Error> {
    let l = tx.lease(lease.fence.pipeline, Lock::Update)?;
    if l.fence == lease.fence.value && l.holder.is_some() {
        tx.set_lease(lease.fence.pipeline, l.fence, None, None, None)?;
    }
    Ok(())
}

/// The first step of every write of a run: its fence must be the current,
/// unexpired one. Returns the store's time and the pipeline's name.
pub(crate) fn check_fence<T: Tx>(tx: &mut T, fence: Fence) -> Result<(Micros, String), Error> {
    let now = tx.now()?;
    let l = tx.lease(fence.pipeline, Lock::Share)?;
    if let Some(reason) = lost(&l, fence, now) {
        return Err(Error::LeaseLost { pipeline: l.name, reason });
    }
    Ok((now, l.name))
}

pub(crate) fn begin_run<T: Tx>(tx: &mut T, fence: Fence, run: &SyncRun) -> Result<RunKey, Error> {
    check_fence(tx, fence)?;
    tx.insert_run(fence.pipeline, run)
}

pub(crate) fn finish_run<T: Tx>(tx: &mut T, fence: Fence, run: RunKey, record: &SyncRun) -> Result<(), Error> {
    check_fence(tx, fence)?;
    tx.update_run(run, record)
}

/// Two counters of a tenant's people that every writer in every process
/// moves, so a process that remembers people knows when to forget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PeopleEpochs {
    /// Moved whenever a person's email changes.
    pub emails: i64,
    /// Moved whenever a person with an external id is created or a person
    /// gains one (never by a person made from an email alone).
    pub added: i64,
}

/// People already resolved by identifier, per tenant. External ids never
/// move and people are never deleted, so those hits stay right whoever
/// writes; emails can move, so the email half is forgotten whenever the
/// tenant's `emails` counter moves (any writer, any process). Beside them,
/// the external ids found with no person (their events were parked), which
/// are forgotten whenever the `added` counter moves: a backfill's events of
/// unknown users are not looked up again in every batch. Entries are added
/// only after their transaction commits. Beside them, the parked ids each
/// pipeline's lease may find ([`ParkedIds`]), which event writes also need.
#[derive(Debug, Default)]
pub(crate) struct PeopleCache {
    maps: HashMap<(TenantId, IdentityRule), FastMap<String, i64>>,
    /// External ids with no person, as of `epochs[tenant].added`.
    absent: HashMap<TenantId, FastSet<String>>,
    epochs: HashMap<TenantId, PeopleEpochs>,
    /// Entries in `maps` and `absent`.
    len: usize,
    /// Which event ids each pipeline may have parked (see [`ParkedIds`]).
    parked: ParkedIds,
    /// Which event ids each pipeline's lease has stored (see [`StoredIds`]).
    stored: StoredIds,
}

/// The event ids a pipeline's lease holder has stored, as a Bloom filter,
/// so that a backfill's repeat of an id an earlier transaction of the same
/// lease stored (a source's duplicate, an overlap of windows) is found
/// before the batch is written: a miss is certain for what this holder
/// stored, a hit is confirmed by the store. Ids stored before the lease (a
/// resumed backfill, a full refresh) are not in it; the store's insert
/// still decides those. Bounded: [`STORED_FILTERS`] pipelines of
/// [`STORED_FILTER_BITS`] bits each; a fuller filter only costs more probes.
/// An id's three bits lie in one 64-bit word (a blocked filter): a probe or
/// an add touches one cache line of the 2 MiB, not three.
#[derive(Debug, Default)]
struct StoredIds {
    filters: Vec<(PipelineKey, i64, Box<[u64]>)>,
}

/// Bits per pipeline's filter (2 MiB): with three bits per id in one word,
/// about one false hit in 140 at 1M ids, one in 5 at 5M (each a probe).
const STORED_FILTER_BITS: usize = 1 << 24;
/// Pipelines whose filters are held at once (the oldest goes first).
const STORED_FILTERS: usize = 4;

impl StoredIds {
    /// The filter of this lease, empty when the lease is new to it.
    fn filter(&mut self, fence: Fence) -> &mut [u64] {
        let at = match self.filters.iter().position(|(p, _, _)| *p == fence.pipeline) {
            Some(i) => {
                if self.filters[i].1 != fence.value {
                    self.filters[i].1 = fence.value;
                    self.filters[i].2.fill(0);
                }
                i
            }
            None => {
                if self.filters.len() == STORED_FILTERS {
                    self.filters.remove(0);
                }
                self.filters.push((fence.pipeline, fence.value, vec![0u64; STORED_FILTER_BITS / 64].into_boxed_slice()));
                self.filters.len() - 1
            }
        };
        &mut self.filters[at].2
    }

    /// An id's word in the filter and its (up to) three bits in that word:
    /// the word from the hash's low bits, each bit from six higher ones.
    fn slot(id: &str) -> (usize, u64) {
        use std::hash::BuildHasher;
        let h = foldhash::quality::FixedState::default().hash_one(id);
        let word = (h as usize) % (STORED_FILTER_BITS / 64);
        (word, (1 << ((h >> 40) & 63)) | (1 << ((h >> 46) & 63)) | (1 << ((h >> 52) & 63)))
    }

    fn may_hold(filter: &[u64], (word, bits): (usize, u64)) -> bool {
        filter[word] & bits == bits
    }

    fn add(filter: &mut [u64], (word, bits): (usize, u64)) {
        filter[word] |= bits;
    }
}

/// The event ids a pipeline may have parked, as seen by the holder of one
/// lease: read once per fence, then grown by what this holder parks and
/// shrunk by what it stores. Only a pipeline's lease holder parks its
/// events; everyone else only takes them away (re-matching, expiry), so the
/// set holds every id that is parked: an event stored whose id is not in it
/// was not parked, and needs no probe of the parked table. A pipeline with
/// more parked ids than the bound is not held (`None`): every id is probed.
#[derive(Debug, Default)]
struct ParkedIds {
    by_pipeline: HashMap<PipelineKey, (i64, Option<FastSet<String>>)>,
    len: usize,
}

/// The most parked ids held, over all pipelines.
const PARKED_IDS_MAX: usize = 100_000;

impl ParkedIds {
    /// Reads the pipeline's parked ids unless held for this fence already.
    fn load<T: Tx>(&mut self, tx: &mut T, fence: Fence) -> Result<(), Error> {
        if self.by_pipeline.get(&fence.pipeline).is_some_and(|(f, _)| *f == fence.value) {
            return Ok(());
        }
        self.forget(fence.pipeline);
        let ids: Option<FastSet<String>> = tx.parked_ids(fence.pipeline, PARKED_IDS_MAX)?.map(|v| v.into_iter().collect());
        let n = ids.as_ref().map_or(0, |s| s.len());
        if self.len + n > PARKED_IDS_MAX {
            self.by_pipeline.clear();
            self.len = 0;
        }
        self.len += n;
        self.by_pipeline.insert(fence.pipeline, (fence.value, ids));
        Ok(())
    }

    fn forget(&mut self, p: PipelineKey) {
        if let Some((_, Some(old))) = self.by_pipeline.remove(&p) {
            self.len -= old.len();
        }
    }

    /// The ids `p` may have parked (looked up once per batch, not per row);
    /// `None` when they are not held: then any id may be parked.
    fn of(&self, p: PipelineKey) -> Option<&FastSet<String>> {
        self.by_pipeline.get(&p).and_then(|(_, ids)| ids.as_ref())
    }

    fn add<'a>(&mut self, p: PipelineKey, ids: impl Iterator<Item = &'a str>) {
        let Some((_, held)) = self.by_pipeline.get_mut(&p) else { return };
        let Some(set) = held else { return };
        for id in ids {
            if set.insert(id.to_string()) {
                self.len += 1;
            }
        }
        if self.len > PARKED_IDS_MAX {
            // Too many to hold: this pipeline's ids are probed from now on.
            self.len -= set.len();
            *held = None;
        }
    }

    fn remove(&mut self, p: PipelineKey, ids: &[&str]) {
        let Some((_, Some(set))) = self.by_pipeline.get_mut(&p) else { return };
        for id in ids {
            if set.remove(*id) {
                self.len -= 1;
            }
        }
    }
}

/// The most identifiers the cache holds before it starts over.
const PEOPLE_CACHE_MAX: usize = 200_000;

/// What a transaction learnt about people, for the cache once it commits.
#[derive(Debug, Default)]
pub(crate) struct Found {
    /// Identifiers resolved to a person.
    people: Vec<(String, i64)>,
    /// External ids found with no person (and given no email).
    absent: Vec<String>,
    /// The `added` counter as the transaction began.
    added_before: i64,
    /// The `added` counter after the transaction moved it (it created people).
    added_after: Option<i64>,
}

impl PeopleCache {
    /// Forgets what another writer may have made wrong since the last look.
    fn observe(&mut self, t: TenantId, now: PeopleEpochs) {
        let was = self.epochs.insert(t, now);
        if was.map(|w| w.emails) != Some(now.emails)
            && let Some(m) = self.maps.remove(&(t, IdentityRule::Email))
        {
            self.len -= m.len();
        }
        if was.map(|w| w.added) != Some(now.added) {
            self.forget_absent(t);
        }
    }

    fn forget_absent(&mut self, t: TenantId) {
        if let Some(a) = self.absent.remove(&t) {
            self.len -= a.len();
        }
    }

    /// Remembers what a committed transaction learnt.
    pub(crate) fn remember(&mut self, t: TenantId, rule: IdentityRule, found: Found) {
        if self.len + found.people.len() + found.absent.len() > PEOPLE_CACHE_MAX {
            self.maps.clear();
            self.absent.clear();
            self.len = 0;
        }
        // The transaction's own move of `added` leaves the absent ids right
        // (it made only the people it resolved, forgotten below); a move by
        // anyone else in between may not, and the transaction cannot tell
        // whether its lookups saw it.
        let mut absent_hold = true;
        if let Some(after) = found.added_after {
            absent_hold = after == found.added_before + 1;
            if !absent_hold {
                self.forget_absent(t);
            }
            self.epochs.entry(t).or_default().added = after;
        } else if self.epochs.get(&t).is_some_and(|e| e.added != found.added_before) {
            // A transaction that overlapped this one (an earlier batch still
            // committing when this one looked) moved it: this one's lookups
            // may predate that move.
            absent_hold = false;
        }
        if let Some(a) = self.absent.get_mut(&t) {
            for (k, _) in &found.people {
                if a.remove(k.as_str()) {
                    self.len -= 1;
                }
            }
        }
        if absent_hold && !found.absent.is_empty() {
            let a = self.absent.entry(t).or_default();
            for k in found.absent {
                if a.insert(k) {
                    self.len += 1;
                }
            }
        }
        let m = self.maps.entry((t, rule)).or_default();
        for (k, id) in found.people {
            if m.insert(k, id).is_none() {
                self.len += 1;
            }
        }
    }
}

fn quarantine_rows(rows: &[Quarantined]) -> Vec<(&Quarantined, String)> {
    rows.iter().map(|q| (q, hex(&Sha256::digest(q.row.as_bytes())))).collect()
}

pub(crate) fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    b.iter().fold(String::with_capacity(b.len() * 2), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

fn with_progress(mut c: RunCounts, p: &Progress) -> RunCounts {
    c.rows_read += p.rows_read;
    c.bytes += p.bytes;
    c
}

fn write_checkpoints<T: Tx>(tx: &mut T, p: PipelineKey, checkpoints: &[Checkpoint], now: Micros) -> Result<(), Error> {
    for c in checkpoints {
        tx.set_cursor(p, c.slot, c.value, now)?;
    }
    Ok(())
}

/// Who each identifier of a batch's rows the cache does not know belongs
/// to: people found, claimed by email or created. Identifiers with no person
/// (an external id without an email) are not in the map (their events are
/// parked) but in `did.absent`.
fn resolve_people<'r, T: Tx>(
    tx: &mut T,
    t: TenantId,
    rule: IdentityRule,
    unknown: impl Iterator<Item = &'r EventRow>,
    now: Micros,
    did: &mut Resolved,
) -> Result<FastMap<String, i64>, Error> {
    let mut resolved: FastMap<String, i64> = FastMap::default();
    let mut seen: FastSet<&str> = FastSet::default();
    let mut missing: Vec<&str> = Vec::new();
    // The first email given for each identifier in the batch.
    let mut email_of: FastMap<&str, &str> = FastMap::default();
    for r in unknown {
        let k = r.user_key.as_str();
        if seen.insert(k) {
            missing.push(k);
        }
        if let Some(e) = r.email.as_deref() {
            email_of.entry(k).or_insert(e);
        }
    }
    if missing.is_empty() {
        return Ok(resolved);
    }
    let found = match rule {
        IdentityRule::Email => tx.people_by_email(t, &missing)?.into_iter().filter_map(|p| Some((p.email?, p.id))).collect::<Vec<_>>(),
        IdentityRule::ExternalId => {
            tx.people_by_external_id(t, &missing)?.into_iter().filter_map(|p| Some((p.external_id?, p.id))).collect()
        }
    };
    resolved.extend(found);
    let mut unresolved: Vec<&str> = missing.into_iter().filter(|k| !resolved.contains_key(*k)).collect();
    unresolved.sort_unstable(); // one order for every writer: concurrent creations cannot deadlock
    let mut creates: Vec<NewPerson> = Vec::new();
    match rule {
        IdentityRule::Email => creates.extend(unresolved.iter().map(|k| NewPerson { external_id: None, email: Some(k.to_string()) })),
        IdentityRule::ExternalId => {
            let emails: Vec<&str> = unresolved.iter().filter_map(|k| email_of.get(k).copied()).collect();
            let by_email: HashMap<String, PersonRow> = if emails.is_empty() {
                HashMap::new()
            } else {
                tx.people_by_email(t, &emails)?.into_iter().filter_map(|p| Some((p.email.clone()?, p))).collect()
            };
            let mut claims: Vec<(i64, &str)> = Vec::new();
            let mut creating: HashSet<&str> = HashSet::new();
            for k in &unresolved {
                let Some(e) = email_of.get(k).copied() else {
                    did.absent.push(k.to_string());
                    continue;
                };
                match by_email.get(e) {
                    // A person created from an email event gets this external id.
                    Some(p) if p.external_id.is_none() && !claims.iter().any(|(id, _)| *id == p.id) => {
                        claims.push((p.id, k));
                        resolved.insert(k.to_string(), p.id);
                    }
                    // The email's person has another external id: the event is theirs.
                    Some(p) => {
                        resolved.insert(k.to_string(), p.id);
                    }
                    None if creating.insert(e) => creates.push(NewPerson { external_id: Some(k.to_string()), email: Some(e.to_string()) }),
                    // Two new identifiers with one email: the second one's events are parked until a person pipeline says whose it is.
                    None => {}
                }
            }
            if !claims.is_empty() {
                tx.set_external_ids(t, &claims, now)?;
                did.changed = true;
            }
        }
    }
    if creates.is_empty() {
        return Ok(resolved);
    }
    let ids = tx.insert_people(t, &creates, now)?;
    // A person made from an email has no external id: no absent id can be theirs.
    did.changed |= rule == IdentityRule::ExternalId;
    let mut again: Vec<&NewPerson> = Vec::new();
    for (np, id) in creates.iter().zip(&ids) {
        let key = match rule {
            IdentityRule::Email => np.email.clone(),
            IdentityRule::ExternalId => np.external_id.clone(),
        };
        match (id, key) {
            (Some(id), Some(key)) => {
                did.created += 1;
                resolved.insert(key, *id);
            }
            _ => again.push(np),
        }
    }
    // Another writer created these between our read and our insert: read them again.
    if !again.is_empty() {
        let exts: Vec<&str> = again.iter().filter_map(|n| n.external_id.as_deref()).collect();
        let emails: Vec<&str> = again.iter().filter_map(|n| n.email.as_deref()).collect();
        let mut by_ext: HashMap<String, i64> = HashMap::new();
        if !exts.is_empty() {
            by_ext.extend(tx.people_by_external_id(t, &exts)?.into_iter().filter_map(|p| Some((p.external_id?, p.id))));
        }
        let by_email: HashMap<String, i64> = tx.people_by_email(t, &emails)?.into_iter().filter_map(|p| Some((p.email?, p.id))).collect();
        for np in again {
            let id = np.external_id.as_ref().and_then(|e| by_ext.get(e)).or_else(|| np.email.as_ref().and_then(|e| by_email.get(e)));
            let key = match rule {
                IdentityRule::Email => &np.email,
                IdentityRule::ExternalId => &np.external_id,
            };
            if let (Some(id), Some(key)) = (id, key) {
                resolved.insert(key.clone(), *id);
            }
        }
    }
    Ok(resolved)
}

/// What resolving a batch's people did besides finding them.
#[derive(Debug, Default)]
struct Resolved {
    /// People created.
    created: u64,
    /// External ids found with no person (and given no email).
    absent: Vec<String>,
    /// Whether a person with an external id was created, or one was given an external id.
    changed: bool,
}

/// The people cache, held only around steps in memory, never across a
/// statement that may wait for another transaction's locks: a transaction
/// that creates a person another (uncommitted) one created waits for it to
/// commit, and that one may need the cache to get there.
pub(crate) fn cached<R>(cache: &Mutex<PeopleCache>, f: impl FnOnce(&mut PeopleCache) -> R) -> R {
    f(&mut cache.lock().unwrap_or_else(|p| p.into_inner()))
}

/// What the first half of an event batch's transaction did, for the second.
pub(crate) struct EventsFirst<'b> {
    out: EventOutcome,
    found: Found,
    resolved: FastMap<String, i64>,
    changed: bool,
    /// Rows with a person, inserted in the first half, and whether each was new.
    inserted: Vec<(&'b EventRow, bool)>,
    /// Rows with a person whose id the stored-ids filter may hold: confirmed
    /// against the table and inserted in the second half.
    maybe: Vec<(&'b EventRow, i64)>,
    /// Rows with no person (parked in the second half).
    unmatched: Vec<&'b EventRow>,
}

/// Stores a batch of events (see [`crate::Store::write_events`]): the two
/// halves of its transaction, one after the other.
pub(crate) fn write_events<T: Tx>(tx: &mut T, cache: &Mutex<PeopleCache>, b: &EventBatch) -> Result<(EventOutcome, Found), Error> {
    let first = events_first(tx, cache, b)?;
    events_second(tx, cache, b, first)
}

/// The first half of an event batch's transaction: people found (or made)
/// for its rows, and the rows with a person that are certainly new to this
/// lease inserted. It takes no lock the second half of an earlier batch of
/// the same pipeline may need, so it may run while that one finishes (see
/// [`crate::Store::event_writes_in_flight`]): it reads nothing that batch
/// writes in its second half, and the rows it inserts are none of that
/// batch's (every id a first half saw goes into the stored-ids filter
/// before the next first half splits its rows by it).
pub(crate) fn events_first<'b, T: Tx>(tx: &mut T, cache: &Mutex<PeopleCache>, b: &'b EventBatch) -> Result<EventsFirst<'b>, Error> {
    let now = tx.now()?;
    let p = b.fence.pipeline;
    let t = p.tenant;
    let mut out = EventOutcome::default();
    let epochs = tx.people_epochs(t)?;
    // Each row's person as the cache knows it: one lookup per row. Rows of
    // an external id known to have no person need no lookup, unless they
    // bring an email (which may create or claim one).
    let (known, unknown) = cached(cache, |cache| {
        cache.observe(t, epochs);
        let known: Vec<Option<i64>> = match cache.maps.get(&(t, b.rule)) {
            Some(m) => b.rows.iter().map(|r| m.get(r.user_key.as_str()).copied()).collect(),
            None => vec![None; b.rows.len()],
        };
        let absent = if b.rule == IdentityRule::ExternalId { cache.absent.get(&t) } else { None };
        let unknown: Vec<usize> = (0..b.rows.len())
            .filter(|&i| {
                let r = &b.rows[i];
                known[i].is_none() && !(r.email.is_none() && absent.is_some_and(|a| a.contains(r.user_key.as_str())))
            })
            .collect();
        (known, unknown)
    });
    let mut did = Resolved::default();
    let resolved = resolve_people(tx, t, b.rule, unknown.iter().map(|&i| &b.rows[i]), now, &mut did)?;
    out.people_created = did.created;
    let found = Found { absent: did.absent, added_before: epochs.added, ..Found::default() };

    let mut matched: Vec<(&EventRow, i64)> = Vec::with_capacity(b.rows.len());
    let mut unmatched: Vec<&EventRow> = Vec::new();
    for (r, id) in b.rows.iter().zip(known) {
        match id.or_else(|| resolved.get(r.user_key.as_str()).copied()) {
            Some(id) => matched.push((r, id)),
            None => unmatched.push(r),
        }
    }
    // A backfill's repeats of ids this lease stored, where a repeat is
    // costly: the rows the filter may hold wait for the second half, which
    // confirms them against the table (holding every earlier batch's rows
    // by then). Each id hashed once.
    let mut maybe: Vec<(&EventRow, i64)> = Vec::new();
    let mut slots: Vec<(usize, u64)> = Vec::new();
    if b.backfill && tx.repeats_are_costly() {
        slots = matched.iter().map(|(r, _)| StoredIds::slot(&r.event_id)).collect();
        let hits: Vec<bool> = cached(cache, |cache| {
            let filter = cache.stored.filter(b.fence);
            slots.iter().map(|s| StoredIds::may_hold(filter, *s)).collect()
        });
        if hits.iter().any(|h| *h) {
            let mut sure = Vec::with_capacity(matched.len());
            for (row, hit) in matched.into_iter().zip(&hits) {
                if *hit { maybe.push(row) } else { sure.push(row) }
            }
            matched = sure;
        }
    }
    let new = tx.insert_events(p, b.run, b.backfill, now, &matched)?;
    if !slots.is_empty() {
        // Every id this half saw, stored now or about to be confirmed: the
        // next batch's first half sends its repeats to its second half.
        cached(cache, |cache| {
            let filter = cache.stored.filter(b.fence);
            slots.iter().for_each(|s| StoredIds::add(filter, *s));
        });
    }
    let mut inserted = Vec::with_capacity(matched.len());
    count_inserted(&mut out, &matched, new, &mut inserted);
    Ok(EventsFirst { out, found, resolved, changed: did.changed, inserted, maybe, unmatched })
}

/// Counts an insert's rows (new, or a duplicate) and keeps each with whether it was new.
fn count_inserted<'b>(out: &mut EventOutcome, rows: &[(&'b EventRow, i64)], new: Vec<bool>, into: &mut Vec<(&'b EventRow, bool)>) {
    for ((r, _), new) in rows.iter().zip(new) {
        if new {
            out.inserted += 1;
            out.late += r.late as u64;
        } else {
            out.deduplicated += 1;
        }
        into.push((*r, new));
    }
}

/// The second half of an event batch's transaction, once every earlier
/// batch of the pipeline has committed: the fence check (the lease row is
/// held from here to the commit), the filter's maybes confirmed and the
/// new ones inserted, parking, unparking, quarantine, checkpoints, the run
/// record, the people counter.
pub(crate) fn events_second<T: Tx>(
    tx: &mut T,
    cache: &Mutex<PeopleCache>,
    b: &EventBatch,
    first: EventsFirst<'_>,
) -> Result<(EventOutcome, Found), Error> {
    let (now, _) = check_fence(tx, b.fence)?;
    let p = b.fence.pipeline;
    let t = p.tenant;
    let EventsFirst { mut out, mut found, resolved, changed, mut inserted, mut maybe, unmatched } = first;
    if !maybe.is_empty() {
        let ids: Vec<&str> = maybe.iter().map(|(r, _)| r.event_id.as_str()).collect();
        let stored = tx.stored_event_ids(p, &ids)?;
        if !stored.is_empty() {
            let before = maybe.len();
            maybe.retain(|(r, _)| !stored.contains(&r.event_id));
            out.deduplicated += (before - maybe.len()) as u64;
        }
        let new = tx.insert_events(p, b.run, b.backfill, now, &maybe)?;
        count_inserted(&mut out, &maybe, new, &mut inserted);
    }
    // Parked ids, read here (not in the first half) so that a read sees every earlier batch's parking.
    let mut load = Ok(());
    let unpark: Vec<&str> = cached(cache, |cache| {
        load = cache.parked.load(tx, b.fence);
        let parked = cache.parked.of(p);
        inserted
            .iter()
            .filter(|(r, new)| *new && parked.is_none_or(|ids| ids.contains(&r.event_id)))
            .map(|(r, _)| r.event_id.as_str())
            .collect()
    });
    load?;
    if !unmatched.is_empty() {
        // Stored already (this batch or before): a duplicate, not a parked event.
        let ids: Vec<&str> = unmatched.iter().map(|r| r.event_id.as_str()).collect();
        let stored = tx.stored_event_ids(p, &ids)?;
        let to_park: Vec<&EventRow> = unmatched.iter().copied().filter(|r| !stored.contains(&r.event_id)).collect();
        out.deduplicated += (unmatched.len() - to_park.len()) as u64;
        let new = tx.park(p, b.run, b.backfill, b.rule, now, &to_park)?;
        cached(cache, |cache| cache.parked.add(p, to_park.iter().zip(&new).filter(|(_, new)| **new).map(|(r, _)| r.event_id.as_str())));
        for (r, new) in to_park.iter().zip(&new) {
            if *new {
                out.parked += 1;
                out.late += r.late as u64;
            } else {
                out.deduplicated += 1;
            }
        }
    }
    // An event parked earlier that is now stored (a later row with the same
    // id matched) leaves the parked set. (This batch parks no id it stored:
    // those were deduplicated above.) By the ids just stored, not by a scan
    // of everything parked: the cost follows the batch.
    if !unpark.is_empty() {
        tx.unpark(p, &unpark)?;
        cached(cache, |cache| cache.parked.remove(p, &unpark));
    }
    out.quarantined = tx.insert_quarantine(p, b.run, now, &quarantine_rows(&b.quarantine))?;
    write_checkpoints(tx, p, &b.checkpoints, now)?;
    tx.add_to_run(b.run, &with_progress(out.into(), &b.progress), &b.progress.statement_ids, now)?;
    // Last, so that other writers' moves wait on this row for the shortest time.
    if changed {
        found.added_after = Some(tx.bump_people_added(t)?);
    }
    found.people = resolved.into_iter().collect();
    Ok((out, found))
}

/// Replaces `pipeline`'s group in an attributes object.
pub(crate) fn merge_attributes(existing: &str, pipeline: &str, group: &str) -> Result<String, Error> {
    let mut all: Map<String, Value> = serde_json::from_str(existing).unwrap_or_default();
    let group: Value = serde_json::from_str(group).map_err(|e| Error::Database(format!("attributes are not JSON: {e}")))?;
    all.insert(pipeline.to_string(), group);
    Ok(Value::Object(all).to_string())
}

/// A person's state while a batch is applied: the rows before it, changed by the rows before.
struct Work {
    row: RecordWrite,
    dirty: bool,
    email_changed: bool,
}

/// Upserts people or organisations (see [`crate::Store::write_records`]).
pub(crate) fn write_records<T: Tx>(tx: &mut T, b: &RecordBatch) -> Result<RecordOutcome, Error> {
    let (now, name) = check_fence(tx, b.fence)?;
    let p = b.fence.pipeline;
    let t = p.tenant;
    let mut out = RecordOutcome::default();
    let ids: Vec<&str> = b.rows.iter().map(|r| r.external_id.as_str()).collect();
    let hashes = tx.record_hashes(p, &ids)?;
    let changed: Vec<&crate::RecordRow> = b.rows.iter().filter(|r| hashes.get(&r.external_id) != Some(&r.hash)).collect();
    out.unchanged = (b.rows.len() - changed.len()) as u64;

    let mut works: Vec<Work> = Vec::new();
    let mut by_ext: HashMap<String, usize> = HashMap::new();
    let mut by_email: HashMap<String, usize> = HashMap::new();
    let mut by_id: HashMap<i64, usize> = HashMap::new();
    let mut seed = |w: RecordWrite, works: &mut Vec<Work>, by_ext: &mut HashMap<String, usize>, by_email: &mut HashMap<String, usize>| {
        let Some(id) = w.id else { return };
        if by_id.contains_key(&id) {
            return;
        }
        let i = works.len();
        by_id.insert(id, i);
        if !w.external_id.is_empty() {
            by_ext.insert(w.external_id.clone(), i);
        }
        if let Some(e) = &w.email {
            by_email.insert(e.clone(), i);
        }
        works.push(Work { row: w, dirty: false, email_changed: false });
    };
    let exts: Vec<&str> = changed.iter().map(|r| r.external_id.as_str()).collect();
    match b.entity {
        Entity::People => {
            let emails: Vec<&str> = changed.iter().filter_map(|r| r.email.as_deref()).collect();
            let mut found = tx.people_by_external_id(t, &exts)?;
            if !emails.is_empty() {
                found.extend(tx.people_by_email(t, &emails)?);
            }
            for p in found {
                let w = RecordWrite {
                    id: Some(p.id),
                    external_id: p.external_id.unwrap_or_default(),
                    name: p.name.unwrap_or_default(),
                    email: p.email,
                    link: p.organisation,
                    attributes: p.attributes,
                };
                seed(w, &mut works, &mut by_ext, &mut by_email);
            }
        }
        Entity::Organisations => {
            for (id, ext, attributes) in tx.organisations_by_external_id(t, &exts)? {
                let w = RecordWrite { id: Some(id), external_id: ext, name: String::new(), email: None, link: None, attributes };
                seed(w, &mut works, &mut by_ext, &mut by_email);
            }
        }
    }

    let mut conflicts = Vec::new();
    let mut hashes_out: Vec<(&str, &str)> = Vec::new();
    for r in changed {
        let a = by_ext.get(&r.external_id).copied();
        let e = if b.entity == Entity::People { r.email.as_ref().and_then(|e| by_email.get(e)).copied() } else { None };
        let conflict = match (a, e) {
            (Some(i), Some(j)) if i != j => Some(format!(
                "email {} already belongs to another person ({})",
                r.email.as_deref().unwrap_or_default(),
                Some(&works[j].row.external_id)
                    .filter(|x| !x.is_empty())
                    .map(|x| format!("external id {x}"))
                    .unwrap_or_else(|| "created from events".into())
            )),
            (None, Some(j)) if !works[j].row.external_id.is_empty() => Some(format!(
                "email {} already belongs to the person with external id {}",
                r.email.as_deref().unwrap_or_default(),
                works[j].row.external_id
            )),
            _ => None,
        };
        if let Some(reason) = conflict {
            conflicts.push(Quarantined {
                key: Some(r.external_id.clone()),
                reason,
                row: json!({"id": r.external_id, "name": r.name, "email": r.email}).to_string(),
            });
            continue;
        }
        let i = match a.or(e) {
            Some(i) => i,
            None => {
                works.push(Work {
                    row: RecordWrite {
                        id: None,
                        external_id: String::new(),
                        name: String::new(),
                        email: None,
                        link: None,
                        attributes: "{}".into(),
                    },
                    dirty: false,
                    email_changed: false,
                });
                works.len() - 1
            }
        };
        let w = &mut works[i];
        if w.row.id.is_none() && !w.dirty {
            out.inserted += 1;
        } else {
            out.updated += 1;
        }
        w.row.external_id = r.external_id.clone();
        w.row.name = r.name.clone();
        w.row.link = r.link.clone();
        if let Some(email) = &r.email
            && w.row.email.as_ref() != Some(email)
        {
            if let Some(old) = w.row.email.take() {
                by_email.remove(&old);
                w.email_changed |= w.row.id.is_some();
            }
            w.row.email = Some(email.clone());
            by_email.insert(email.clone(), i);
        }
        w.row.attributes = merge_attributes(&w.row.attributes, &name, &r.attributes)?;
        w.dirty = true;
        by_ext.insert(r.external_id.clone(), i);
        hashes_out.push((&r.external_id, &r.hash));
    }
    let writes: Vec<RecordWrite> = works.iter().filter(|w| w.dirty).map(|w| w.row.clone()).collect();
    if !writes.is_empty() {
        match b.entity {
            Entity::People => tx.write_people(t, &writes, now)?,
            Entity::Organisations => tx.write_organisations(t, &writes, now)?,
        }
    }
    if works.iter().any(|w| w.email_changed) {
        tx.bump_people_epoch(t)?;
    }
    if b.entity == Entity::People && !writes.is_empty() {
        tx.bump_people_added(t)?;
    }
    tx.put_record_hashes(p, &hashes_out)?;
    out.quarantined = tx.insert_quarantine(p, b.run, now, &quarantine_rows(&b.quarantine))?;
    out.quarantined += tx.insert_quarantine(p, b.run, now, &quarantine_rows(&conflicts))?;
    write_checkpoints(tx, p, &b.checkpoints, now)?;
    tx.add_to_run(b.run, &with_progress(out.into(), &b.progress), &b.progress.statement_ids, now)?;
    Ok(out)
}

/// Moves parked events whose person now exists (see [`crate::Store::rematch_parked`]).
pub(crate) fn rematch<T: Tx>(tx: &mut T, fence: Fence, run: RunKey, only_this_pipeline: bool) -> Result<u64, Error> {
    let (now, _) = check_fence(tx, fence)?;
    let t = fence.pipeline.tenant;
    let parked = tx.parked(t, only_this_pipeline.then_some(fence.pipeline.pipeline))?;
    if parked.is_empty() {
        return Ok(0);
    }
    let mut exts: Vec<&str> = Vec::new();
    let mut emails: Vec<&str> = Vec::new();
    for r in &parked {
        match r.key_kind {
            IdentityRule::Email => emails.push(&r.user_key),
            IdentityRule::ExternalId => exts.push(&r.user_key),
        }
        emails.extend(r.email.as_deref());
    }
    let by_ext: HashMap<String, i64> = if exts.is_empty() {
        HashMap::new()
    } else {
        tx.people_by_external_id(t, &exts)?.into_iter().filter_map(|p| Some((p.external_id?, p.id))).collect()
    };
    let by_email: HashMap<String, i64> = if emails.is_empty() {
        HashMap::new()
    } else {
        tx.people_by_email(t, &emails)?.into_iter().filter_map(|p| Some((p.email?, p.id))).collect()
    };
    let moves: Vec<(i64, i64)> = parked
        .iter()
        .filter_map(|r| {
            let by_key = match r.key_kind {
                IdentityRule::Email => by_email.get(&r.user_key),
                IdentityRule::ExternalId => by_ext.get(&r.user_key),
            };
            by_key.or_else(|| r.email.as_ref().and_then(|e| by_email.get(e))).map(|person| (r.id, *person))
        })
        .collect();
    if moves.is_empty() {
        return Ok(0);
    }
    let n = tx.move_parked(t, &moves, now)?;
    if n > 0 {
        tx.add_to_run(run, &RunCounts { rematched: n, ..Default::default() }, &[], now)?;
    }
    Ok(n)
}

/// Drops a pipeline's events parked too long (see [`crate::Store::expire_parked`]).
pub(crate) fn expire<T: Tx>(tx: &mut T, fence: Fence, run: RunKey, before: Micros) -> Result<u64, Error> {
    let (now, _) = check_fence(tx, fence)?;
    let n = tx.expire_parked(fence.pipeline, before)?;
    if n > 0 {
        tx.add_to_run(run, &RunCounts { dropped: n, ..Default::default() }, &[], now)?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The filter of stored ids never misses an id it was given (a miss
    /// would let a repeat fail a backfill's COPY), and at 1M ids it sends
    /// few others to the store for a probe.
    #[test]
    fn the_stored_ids_filter_holds_every_id_added_and_few_others() {
        let mut filter = vec![0u64; STORED_FILTER_BITS / 64];
        let id = |i: u32| format!("evt_{i:010}");
        for i in 0..1_000_000 {
            StoredIds::add(&mut filter, StoredIds::slot(&id(i)));
        }
        assert!((0..1_000_000).all(|i| StoredIds::may_hold(&filter, StoredIds::slot(&id(i)))));
        let others = 200_000;
        let false_hits = (1_000_000..1_000_000 + others).filter(|&i| StoredIds::may_hold(&filter, StoredIds::slot(&id(i)))).count();
        assert!(false_hits * 100 < others as usize, "{false_hits} of {others} ids never added look stored");
    }
}

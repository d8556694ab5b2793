//! The store's conformance suite: every test runs against each backend
//! through `dyn Store` only (SQLite: a fresh file; two handles on it are two
//! connections). The rules (identity, parking, the attribute merge,
//! quarantine dedup), the lease and its fence, tenants, and concurrent
//! writers from two tasks and two connections.

use std::sync::Arc;
use std::time::Duration;

use trig_store::{
    Checkpoint, Entity, Error, EventBatch, EventRow, Export, Fence, Holder, IdentityRule, Lease, PipelineKey, Progress, Quarantined,
    RecordBatch, RecordRow, RunKey, Slot, SqliteStore, Store, SyncRun, TenantName,
};

/// Two connections to one fresh store, and what removes it afterwards.
struct Fixture {
    a: Arc<dyn Store>,
    b: Arc<dyn Store>,
    _dir: Option<TempDir>,
    _db: Option<DropDb>,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn sqlite(name: &str) -> Fixture {
    let dir = std::env::temp_dir().join(format!("trig-store-suite-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("trig.db").to_str().unwrap().to_string();
    let a = SqliteStore::open(&file).unwrap();
    let b = SqliteStore::open(&file).unwrap();
    Fixture { a: Arc::new(a), b: Arc::new(b), _dir: Some(TempDir(dir)), _db: None }
}

/// Both stores on a fresh PostgreSQL database (see [`fresh_database`]).
async fn postgres(name: &str) -> Option<Fixture> {
    let (url, db) = fresh_database(name)?;
    let a = trig_store::PostgresStore::open(&url).unwrap();
    let b = trig_store::PostgresStore::open(&url).unwrap();
    Some(Fixture { a: Arc::new(a), b: Arc::new(b), _dir: None, _db: Some(db) })
}

/// A fresh, empty PostgreSQL database on the server `TRIG_TEST_POSTGRES_URL`
/// names (e.g. `postgres://root@127.0.0.1:5432/test`): its URL, and what
/// drops it afterwards; `None` (the test is skipped, saying how to enable it)
/// when the variable is unset outside CI. With `CI` set, an unset variable or
/// an unreachable server fails.
fn fresh_database(name: &str) -> Option<(String, DropDb)> {
    let Ok(admin) = std::env::var("TRIG_TEST_POSTGRES_URL") else {
        assert!(std::env::var_os("CI").is_none(), "CI is set but TRIG_TEST_POSTGRES_URL is not: the PostgreSQL tests must run in CI");
        eprintln!("skipped: set TRIG_TEST_POSTGRES_URL=postgres://root@127.0.0.1:5432/test to run the PostgreSQL store's tests");
        return None;
    };
    let db = format!("trig_test_{}_{}", name.chars().take(40).collect::<String>(), std::process::id());
    let url = with_database(&admin, &db);
    let (admin2, db2) = (admin.clone(), db.clone());
    std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&admin2, postgres::NoTls).unwrap_or_else(|e| panic!("PostgreSQL at {admin2}: {e}"));
        c.batch_execute(&format!("DROP DATABASE IF EXISTS {db2} WITH (FORCE)")).unwrap();
        c.batch_execute(&format!("CREATE DATABASE {db2}")).unwrap();
    })
    .join()
    .unwrap();
    Some((url, DropDb { admin, db }))
}

/// `url` with another database.
fn with_database(url: &str, db: &str) -> String {
    let (base, _) = url.rsplit_once('/').expect("a URL ending in /DATABASE");
    format!("{base}/{db}")
}

struct DropDb {
    admin: String,
    db: String,
}

impl Drop for DropDb {
    fn drop(&mut self) {
        let (admin, db) = (self.admin.clone(), self.db.clone());
        // The blocking client runs on a thread of its own, outside the test's runtime.
        let _ = std::thread::spawn(move || {
            if let Ok(mut c) = postgres::Client::connect(&admin, postgres::NoTls) {
                let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"));
            }
        })
        .join();
    }
}

/// Runs each test against every backend.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::sqlite(stringify!($name)).await).await
                }
            )*
        }
        mod postgres_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(f) = super::postgres(stringify!($name)).await {
                        super::$name(f).await
                    }
                }
            )*
        }
    };
}

conformance!(
    tenants_keep_everything_apart,
    events_dedup_park_and_rematch,
    a_parked_event_whose_id_later_matches_is_stored_once,
    a_large_backfill_batch_stores_each_new_row_once_with_its_values,
    an_event_parked_by_another_lease_leaves_the_parked_set_when_stored,
    event_writes_in_flight_commit_in_order_as_if_one_after_another,
    records_skip_unchanged_hashes_and_claim_email_people,
    attributes_merge_by_pipeline_and_nulls_clear,
    quarantine_keeps_a_row_and_reason_once,
    parked_events_expire_and_are_counted,
    a_lease_is_held_by_one_run_and_a_stale_fence_writes_nothing,
    a_claim_after_expiry_marks_the_dead_run_interrupted_at_its_last_commit,
    a_moved_email_is_seen_by_every_connection,
    an_external_id_with_no_person_is_matched_once_anyone_gives_it_one,
    two_connections_create_each_person_once,
    export_pages_through_everything,
    tenants_and_tokens_are_the_same_records_on_every_connection,
    connections_keep_a_sealed_secret_and_every_change,
    pipelines_are_defined_scheduled_requested_and_paused,
    warehouse_slots_bound_the_runs_on_a_warehouse_across_connections,
    page_sessions_and_login_links_are_kept_by_hash_and_end,
);

const TTL: Duration = Duration::from_secs(60);

fn holder(label: &str) -> Holder {
    Holder::this_process(label)
}

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

/// A pipeline leased, with a run begun.
struct Running {
    key: PipelineKey,
    lease: Lease,
    run: RunKey,
}

impl Running {
    fn fence(&self) -> Fence {
        self.lease.fence
    }

    fn events(&self, rows: Vec<EventRow>, rule: IdentityRule) -> EventBatch {
        EventBatch {
            fence: self.fence(),
            run: self.run,
            rule,
            backfill: false,
            rows,
            quarantine: vec![],
            checkpoints: vec![],
            progress: Progress::default(),
        }
    }

    fn records(&self, entity: Entity, rows: Vec<RecordRow>) -> RecordBatch {
        RecordBatch {
            fence: self.fence(),
            run: self.run,
            entity,
            rows,
            quarantine: vec![],
            checkpoints: vec![],
            progress: Progress::default(),
        }
    }
}

fn record(pipeline: &str, run_id: &str) -> SyncRun {
    SyncRun {
        run_id: run_id.into(),
        pipeline: pipeline.into(),
        trigger: "schedule".into(),
        status: "running".into(),
        started_at: now(),
        ..Default::default()
    }
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64
}

async fn start(s: &dyn Store, tenant: &str, pipeline: &str) -> Running {
    start_with(s, tenant, pipeline, TTL).await
}

async fn start_with(s: &dyn Store, tenant: &str, pipeline: &str, ttl: Duration) -> Running {
    let t = s.tenant(tenant).await.unwrap();
    let key = s.pipeline(t, pipeline).await.unwrap();
    let lease = s.claim(key, &holder("suite"), ttl).await.unwrap();
    let run = s.begin_run(lease.fence, &record(pipeline, &format!("{tenant}-{pipeline}-{}", lease.fence.value))).await.unwrap();
    Running { key, lease, run }
}

async fn finish(s: &dyn Store, r: &Running) {
    let mut rec = s.runs(r.key.tenant, None, 100).await.unwrap().into_iter().find(|x| x.status == "running").unwrap();
    rec.status = "succeeded".into();
    rec.ended_at = Some(now());
    s.finish_run(r.fence(), r.run, &rec).await.unwrap();
    s.release(&r.lease).await.unwrap();
}

async fn tenants_keep_everything_apart(f: Fixture) {
    let s = f.a.as_ref();
    let acme = s.tenant("acme").await.unwrap();
    assert_eq!(s.tenant("acme").await.unwrap(), acme, "a tenant is created once");
    let globex = s.tenant("globex").await.unwrap();
    assert_ne!(acme, globex);
    let a = start(s, "acme", "events").await;
    let g = start(s, "globex", "events").await;
    assert_ne!(a.key, g.key, "one pipeline name, two tenants, two pipelines");
    // The same event id and the same email in both tenants: two events, two people.
    let o = s.write_events(a.events(vec![ev("e1", "pat@x.com", None)], IdentityRule::Email)).await.unwrap();
    assert_eq!((o.inserted, o.people_created), (1, 1));
    let o = s.write_events(g.events(vec![ev("e1", "pat@x.com", None)], IdentityRule::Email)).await.unwrap();
    assert_eq!((o.inserted, o.deduplicated, o.people_created), (1, 0, 1), "dedup and matching stay inside a tenant");
    // An external id known in one tenant does not match in the other.
    let ap = start(s, "acme", "people").await;
    s.write_records(ap.records(Entity::People, vec![person("u1", None, "h")])).await.unwrap();
    let o = s.write_events(g.events(vec![ev("e2", "u1", None)], IdentityRule::ExternalId)).await.unwrap();
    assert_eq!(o.parked, 1);
    let o = s.write_events(a.events(vec![ev("e2", "u1", None)], IdentityRule::ExternalId)).await.unwrap();
    assert_eq!(o.inserted, 1);
    let (ta, tg) = (s.totals(acme).await.unwrap(), s.totals(globex).await.unwrap());
    assert_eq!((ta.events, ta.people, ta.parked, ta.runs), (2, 2, 0, 2));
    assert_eq!((tg.events, tg.people, tg.parked, tg.runs), (1, 1, 1, 1));
    // Cursors, runs and exports are per tenant too.
    let mut b = g.events(vec![], IdentityRule::Email);
    b.checkpoints.push(Checkpoint { slot: Slot::Live, value: Some(9) });
    s.write_events(b).await.unwrap();
    assert_eq!(s.cursor(g.key, Slot::Live).await.unwrap(), Some(9));
    assert_eq!(s.cursor(a.key, Slot::Live).await.unwrap(), None);
    assert!(s.runs(globex, None, 10).await.unwrap().iter().all(|r| r.pipeline == "events"));
    assert_eq!(s.runs(acme, Some("people"), 10).await.unwrap().len(), 1);
    // Runs by id and by page, inside the tenant only.
    let people = s.runs(acme, Some("people"), 1).await.unwrap().remove(0);
    assert_eq!(s.run(acme, "people", &people.run_id).await.unwrap().map(|r| r.run_id), Some(people.run_id.clone()));
    assert_eq!(s.run(globex, "people", &people.run_id).await.unwrap(), None, "another tenant's run is not found");
    // Their times, oldest first, from a time on, inside the tenant only.
    let times = s.run_times(acme, 0, 10).await.unwrap();
    assert_eq!(times.iter().map(|r| r.pipeline.as_str()).collect::<Vec<_>>(), vec!["events", "people"], "{times:?}");
    assert!(times[0].started_at <= times[1].started_at && times.iter().all(|r| r.statements == 0 && r.ended_at.is_none()));
    assert_eq!(s.run_times(globex, 0, 10).await.unwrap().len(), 1);
    assert!(s.run_times(acme, times[1].started_at + 1, 10).await.unwrap().is_empty(), "none started since");
    assert_eq!(s.run_times(acme, 0, 1).await.unwrap().len(), 1, "at most the limit");
    let mut done = s.runs(acme, Some("events"), 1).await.unwrap().remove(0);
    (done.status, done.ended_at, done.statement_ids) = ("succeeded".into(), Some(now()), vec!["s1".into(), "s2".into()]);
    done.warehouse_state = Some("STOPPED".into());
    s.finish_run(a.fence(), a.run, &done).await.unwrap();
    let t = s.run_times(acme, 0, 10).await.unwrap().remove(0);
    assert_eq!((t.statements, t.ended_at, t.warehouse_state.as_deref()), (2, done.ended_at, Some("STOPPED")));
    assert_eq!(s.runs_page(acme, "people", None, 10).await.unwrap().len(), 1);
    assert!(s.runs_page(acme, "people", Some(&people.run_id), 10).await.unwrap().is_empty(), "nothing after the last");
    let (rows, _) = s.export_page(globex, Export::Events, None, 100).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["email"], "pat@x.com");
    // The other connection sees the same tenants.
    assert_eq!(f.b.tenant("globex").await.unwrap(), globex);
}

async fn events_dedup_park_and_rematch(f: Fixture) {
    let s = f.a.as_ref();
    let r = start(s, "default", "p").await;
    // Email rule creates people; external-id rule without email parks.
    let o = s.write_events(r.events(vec![ev("e1", "a@x.com", None), ev("e1", "a@x.com", None)], IdentityRule::Email)).await.unwrap();
    assert_eq!((o.inserted, o.deduplicated, o.people_created), (1, 1, 1));
    // A stored id among new ones (a lookback's re-read; on PostgreSQL the fast COPY falls back): each row on its own.
    let o = s
        .write_events(r.events(vec![ev("e4", "a@x.com", None), ev("e1", "a@x.com", None), ev("e4", "a@x.com", None)], IdentityRule::Email))
        .await
        .unwrap();
    assert_eq!((o.inserted, o.deduplicated), (1, 2));
    // A backfill's batch (on PostgreSQL one COPY into events): its own repeats, then a stored id among new ones.
    let backfill = |rows| EventBatch { backfill: true, ..r.events(rows, IdentityRule::Email) };
    let o = s.write_events(backfill(vec![ev("e5", "a@x.com", None), ev("e5", "a@x.com", None), ev("e6", "a@x.com", None)])).await.unwrap();
    assert_eq!((o.inserted, o.deduplicated), (2, 1));
    // e5: stored by this lease's earlier backfill batch (found before the insert, by the lease's filter on PostgreSQL).
    let o = s.write_events(backfill(vec![ev("e7", "a@x.com", None), ev("e5", "a@x.com", None)])).await.unwrap();
    assert_eq!((o.inserted, o.deduplicated), (1, 1));
    // e1: stored by a live batch, which the filter does not know (on PostgreSQL the COPY fails and the batch goes row by row).
    let o = s.write_events(backfill(vec![ev("e8", "a@x.com", None), ev("e1", "a@x.com", None)])).await.unwrap();
    assert_eq!((o.inserted, o.deduplicated), (1, 1));
    assert_eq!(s.totals(r.key.tenant).await.unwrap().backfilled_events, 4, "stored as backfilled, each once");
    let o = s.write_events(r.events(vec![ev("e2", "u1", None), ev("e3", "u2", Some("b@x.com"))], IdentityRule::ExternalId)).await.unwrap();
    assert_eq!((o.inserted, o.parked, o.people_created), (1, 1, 1));
    // Parked again on a re-read: a duplicate, not a second parked row.
    let o = s.write_events(r.events(vec![ev("e2", "u1", None)], IdentityRule::ExternalId)).await.unwrap();
    assert_eq!((o.parked, o.deduplicated), (0, 1));
    // The person appears: the parked event moves.
    let people = start(s, "default", "people").await;
    assert_eq!(s.write_records(people.records(Entity::People, vec![person("u1", None, "h1")])).await.unwrap().inserted, 1);
    let other = start(s, "default", "other").await;
    assert_eq!(s.rematch_parked(other.fence(), other.run, true).await.unwrap(), 0, "only the pipeline's own parked events");
    assert_eq!(s.rematch_parked(r.fence(), r.run, true).await.unwrap(), 1);
    let t = s.totals(r.key.tenant).await.unwrap();
    assert_eq!((t.events, t.parked, t.people), (8, 0, 3));
    let run = s.runs(r.key.tenant, Some("p"), 1).await.unwrap().remove(0);
    assert_eq!((run.counts.inserted, run.counts.parked, run.counts.rematched, run.counts.deduplicated), (7, 1, 1, 7));
}

/// A backfill batch large enough for the bulk paths (SQLite: multi-row
/// INSERTs of 64 rows; PostgreSQL: one COPY), with its own repeats and an id
/// a live batch stored, in the middle of a full statement's rows: the rows
/// beside the stored id are still stored, each once, with their own values.
async fn a_large_backfill_batch_stores_each_new_row_once_with_its_values(f: Fixture) {
    let s = f.a.as_ref();
    let r = start(s, "default", "p").await;
    let row = |i: usize| EventRow {
        name: format!("name {i}"),
        ts: 1_700_000_000_000_000 + i as i64,
        properties: format!(r#"{{"i":{i}}}"#),
        ..ev(&format!("b{i:04}"), "a@x.com", None)
    };
    let o = s.write_events(r.events(vec![row(150)], IdentityRule::Email)).await.unwrap();
    assert_eq!(o.inserted, 1);
    // 300 rows: b0150 stored already, b0099 and b0003 repeated in the batch.
    let mut rows: Vec<EventRow> = (0..300).map(row).collect();
    rows.insert(100, row(99));
    rows.push(row(3));
    let o = s.write_events(EventBatch { backfill: true, ..r.events(rows, IdentityRule::Email) }).await.unwrap();
    assert_eq!((o.inserted, o.deduplicated), (299, 3));
    let t = s.totals(r.key.tenant).await.unwrap();
    assert_eq!((t.events, t.backfilled_events), (300, 299), "each stored once; the live one stays live");
    let (stored, _) = s.export_page(r.key.tenant, Export::Events, None, 1000).await.unwrap();
    assert_eq!(stored.len(), 300);
    for (i, e) in stored.iter().enumerate() {
        let want = row(i);
        assert_eq!(e["event_id"], want.event_id.as_str());
        assert_eq!(e["event_name"], want.name.as_str(), "{e}");
        assert_eq!(e["timestamp"], trig_store::time::rfc3339(want.ts));
        assert_eq!(e["properties"]["i"], i, "{e}");
        assert_eq!(e["backfill"], i != 150, "{e}");
        assert_eq!(e["email"], "a@x.com");
    }
    // A full refresh of the same rows by the next run (its lease's filter
    // knows none of them), with one new id among them: whole bulk inserts
    // find every row stored, one finds all but the new one.
    finish(s, &r).await;
    let r = start(s, "default", "p").await;
    let mut again: Vec<EventRow> = (0..300).map(row).collect();
    again.insert(200, row(300));
    let o = s.write_events(EventBatch { backfill: true, ..r.events(again, IdentityRule::Email) }).await.unwrap();
    assert_eq!((o.inserted, o.deduplicated), (1, 300));
    let (stored, _) = s.export_page(r.key.tenant, Export::Events, None, 1000).await.unwrap();
    assert_eq!(stored.len(), 301);
    assert_eq!(stored[300]["event_id"], "b0300");
}

async fn a_parked_event_whose_id_later_matches_is_stored_once(f: Fixture) {
    let s = f.a.as_ref();
    let r = start(s, "default", "p").await;
    // The same id twice in one batch: once with no email, once with the email that creates the person.
    let o = s.write_events(r.events(vec![ev("e9", "u9", None), ev("e9", "u9", Some("n@x.com"))], IdentityRule::ExternalId)).await.unwrap();
    assert_eq!((o.inserted, o.parked, o.people_created), (1, 0, 1));
    assert_eq!(o.inserted + o.parked + o.deduplicated, 2, "every row accounted for");
    // Across batches: parked first, stored by a later row with the same id.
    s.write_events(r.events(vec![ev("e10", "u10", None)], IdentityRule::ExternalId)).await.unwrap();
    assert_eq!(s.totals(r.key.tenant).await.unwrap().parked, 1);
    let o = s.write_events(r.events(vec![ev("e10", "u9", None)], IdentityRule::ExternalId)).await.unwrap();
    assert_eq!(o.inserted, 1);
    let t = s.totals(r.key.tenant).await.unwrap();
    assert_eq!((t.events, t.parked), (2, 0), "stored once, no longer parked");
    // A re-read of a stored event with an unknown person is a duplicate, not parked.
    let o = s.write_events(r.events(vec![ev("e10", "nobody", None)], IdentityRule::ExternalId)).await.unwrap();
    assert_eq!((o.parked, o.deduplicated), (0, 1));
}

/// A writer remembers which ids its pipeline has parked (so a stored event
/// needs no probe of the parked table unless its id is among them): what
/// other leases parked, on this connection or another, must still be found.
async fn an_event_parked_by_another_lease_leaves_the_parked_set_when_stored(f: Fixture) {
    let (a, b) = (f.a.as_ref(), f.b.as_ref());
    let events = |r: &Running, rows: Vec<EventRow>| r.events(rows, IdentityRule::ExternalId);
    // Parked on b before a has read anything.
    let r = start(b, "default", "p").await;
    b.write_events(events(&r, vec![ev("e1", "u1", Some("one@x.com")), ev("e20", "gone", None)])).await.unwrap();
    finish(b, &r).await;
    // a's lease: it parks one of its own and stores an unrelated event.
    let r = start(a, "default", "p").await;
    let o = a.write_events(events(&r, vec![ev("e21", "gone", None), ev("e2", "u1", None)])).await.unwrap();
    assert_eq!((o.inserted, o.parked), (1, 1));
    finish(a, &r).await;
    // b's next lease parks another, after a has read the parked ids.
    let r = start(b, "default", "p").await;
    b.write_events(events(&r, vec![ev("e22", "gone", None)])).await.unwrap();
    finish(b, &r).await;
    let t = a.tenant("default").await.unwrap();
    assert_eq!(a.totals(t).await.unwrap().parked, 3);
    // a's new lease stores all three ids for a known person: none stays parked.
    let r = start(a, "default", "p").await;
    let o = a.write_events(events(&r, vec![ev("e20", "u1", None), ev("e21", "u1", None), ev("e22", "u1", None)])).await.unwrap();
    assert_eq!(o.inserted, 3);
    let totals = a.totals(t).await.unwrap();
    assert_eq!((totals.events, totals.parked), (5, 0), "each stored once, none left parked");
    finish(a, &r).await;
}

/// A run's event writes, as many pending at once as the store allows
/// (PostgreSQL: two, the second's first half running while the first
/// commits): each behaves as if the ones before it had committed first (a
/// repeat of the earlier batch's id is a duplicate, an id the earlier batch
/// parked leaves the parked set when stored, the run's statement ids keep
/// both batches', in order), and when one fails the one behind it writes
/// nothing.
async fn event_writes_in_flight_commit_in_order_as_if_one_after_another(f: Fixture) {
    let s = f.a.as_ref();
    let people = start(s, "default", "people").await;
    s.write_records(people.records(Entity::People, vec![person("u1", None, "h1"), person("u2", None, "h2")])).await.unwrap();
    finish(s, &people).await;
    let r = start(s, "default", "p").await;
    let batch = |rows: Vec<EventRow>, statement: &str, cursor: i64| EventBatch {
        backfill: true,
        checkpoints: vec![Checkpoint { slot: Slot::Backfill, value: Some(cursor) }],
        progress: Progress { rows_read: rows.len() as u64, bytes: 0, statement_ids: vec![statement.into()] },
        ..r.events(rows, IdentityRule::ExternalId)
    };
    let mut first: Vec<EventRow> = (0..200).map(|i| ev(&format!("a{i:03}"), "u1", None)).collect();
    first.push(ev("x1", "nobody", None));
    let mut second: Vec<EventRow> = (0..200).map(|i| ev(&format!("b{i:03}"), "u2", None)).collect();
    second.extend([ev("a007", "u2", None), ev("a199", "u1", None), ev("x1", "u2", None)]);
    let both = s.event_writes_in_flight() >= 2;
    let (one, two) = if both {
        // Both called before either is awaited: the second's place is taken now.
        let (one, two) = (s.write_events(batch(first, "s1", 10)), s.write_events(batch(second, "s2", 20)));
        tokio::join!(one, two)
    } else {
        let one = s.write_events(batch(first, "s1", 10)).await;
        (one, s.write_events(batch(second, "s2", 20)).await)
    };
    let (one, two) = (one.unwrap(), two.unwrap());
    assert_eq!((one.inserted, one.parked, one.deduplicated), (200, 1, 0));
    assert_eq!((two.inserted, two.parked, two.deduplicated), (201, 0, 2), "the first batch's ids are duplicates; x1 is stored");
    let t = s.totals(r.key.tenant).await.unwrap();
    assert_eq!((t.events, t.parked), (401, 0), "x1, parked by the first, left the parked set when the second stored it");
    assert_eq!(s.cursor(r.key, Slot::Backfill).await.unwrap(), Some(20), "the second batch's checkpoint is the last");
    let run = s.runs(r.key.tenant, Some("p"), 1).await.unwrap().remove(0);
    assert_eq!(run.statement_ids, ["s1", "s2"]);
    assert_eq!((run.counts.inserted, run.counts.parked, run.counts.deduplicated, run.counts.rows_read), (401, 1, 2, 404));
    if !both {
        return;
    }
    // The first of two fails (its lease was taken over): the second, though
    // its own rows and fence are fine, writes nothing.
    let stale = Fence { value: r.fence().value - 1, ..r.fence() };
    let (one, two) = (
        s.write_events(EventBatch { fence: stale, ..batch(vec![ev("c1", "u1", None)], "s3", 30) }),
        s.write_events(batch(vec![ev("c2", "u1", None), ev("b000", "u1", None)], "s4", 40)),
    );
    let (one, two) = tokio::join!(one, two);
    assert!(matches!(one, Err(Error::LeaseLost { .. })), "{one:?}");
    assert!(two.is_err(), "the batch behind a failed one is not written: {two:?}");
    let t = s.totals(r.key.tenant).await.unwrap();
    assert_eq!(t.events, 401, "nothing of either batch");
    assert_eq!(s.cursor(r.key, Slot::Backfill).await.unwrap(), Some(20), "the cursor did not move");
    let run = s.runs(r.key.tenant, Some("p"), 1).await.unwrap().remove(0);
    assert_eq!(run.statement_ids, ["s1", "s2"]);
}

async fn records_skip_unchanged_hashes_and_claim_email_people(f: Fixture) {
    let s = f.a.as_ref();
    let ev_run = start(s, "default", "events").await;
    s.write_events(ev_run.events(vec![ev("e1", "a@x.com", None)], IdentityRule::Email)).await.unwrap();
    let r = start(s, "default", "people").await;
    let batch = |rows| {
        let mut b = r.records(Entity::People, rows);
        b.checkpoints.push(Checkpoint { slot: Slot::Live, value: Some(42) });
        b
    };
    // The person created from an email event gets its external id.
    let o = s.write_records(batch(vec![person("u1", Some("a@x.com"), "h1")])).await.unwrap();
    assert_eq!((o.inserted, o.updated), (0, 1));
    let o = s.write_records(batch(vec![person("u1", Some("a@x.com"), "h1")])).await.unwrap();
    assert_eq!(o.unchanged, 1);
    // Another id claiming the same email is quarantined, not merged.
    let o = s.write_records(batch(vec![person("u2", Some("a@x.com"), "h2")])).await.unwrap();
    assert_eq!(o.quarantined, 1);
    assert_eq!(s.cursor(r.key, Slot::Live).await.unwrap(), Some(42));
    assert_eq!(s.totals(r.key.tenant).await.unwrap().people, 1);
    // The same id twice in one batch: one person, inserted then updated.
    let o = s.write_records(batch(vec![person("u3", Some("c@x.com"), "h3"), person("u3", Some("d@x.com"), "h4")])).await.unwrap();
    assert_eq!((o.inserted, o.updated), (1, 1));
    let (people, _) = s.export_page(r.key.tenant, Export::People, None, 10).await.unwrap();
    let u3: Vec<_> = people.iter().filter(|p| p["id"] == "u3").collect();
    assert_eq!(u3.len(), 1);
    assert_eq!(u3[0]["email"], "d@x.com");
    // External-id events now find u1 (the claimed person).
    let o = s.write_events(ev_run.events(vec![ev("e2", "u1", None)], IdentityRule::ExternalId)).await.unwrap();
    assert_eq!((o.inserted, o.people_created), (1, 0));
}

async fn attributes_merge_by_pipeline_and_nulls_clear(f: Fixture) {
    let s = f.a.as_ref();
    let crm = start(s, "default", "crm").await;
    let billing = start(s, "default", "billing").await;
    let row = |attrs: &str, hash: &str| RecordRow { attributes: attrs.into(), ..person("u1", Some("u1@x.com"), hash) };
    s.write_records(crm.records(Entity::People, vec![row(r#"{"role":"admin","plan":"pro"}"#, "a")])).await.unwrap();
    s.write_records(billing.records(Entity::People, vec![row(r#"{"mrr":120}"#, "b")])).await.unwrap();
    // A NULL arrives as an absent key: the crm group is replaced, so `plan` clears; billing's stays.
    s.write_records(crm.records(Entity::People, vec![row(r#"{"role":"owner"}"#, "c")])).await.unwrap();
    let (people, _) = s.export_page(crm.key.tenant, Export::People, None, 10).await.unwrap();
    assert_eq!(people.len(), 1);
    assert_eq!(people[0]["attributes"], serde_json::json!({"crm": {"role": "owner"}, "billing": {"mrr": 120}}));
    // Organisations merge the same way.
    let orgs = start(s, "default", "orgs").await;
    let org = |attrs: &str, hash: &str| RecordRow {
        external_id: "o1".into(),
        name: "Acme".into(),
        email: None,
        link: Some("acme.com".into()),
        attributes: attrs.into(),
        hash: hash.into(),
    };
    assert_eq!(s.write_records(orgs.records(Entity::Organisations, vec![org(r#"{"tier":"gold"}"#, "1")])).await.unwrap().inserted, 1);
    assert_eq!(s.write_records(orgs.records(Entity::Organisations, vec![org(r#"{}"#, "2")])).await.unwrap().updated, 1);
    let (o, _) = s.export_page(orgs.key.tenant, Export::Organisations, None, 10).await.unwrap();
    assert_eq!(o[0]["attributes"], serde_json::json!({"orgs": {}}));
    assert_eq!(o[0]["domain"], "acme.com");
}

async fn quarantine_keeps_a_row_and_reason_once(f: Fixture) {
    let s = f.a.as_ref();
    let r = start(s, "default", "p").await;
    let bad = |reason: &str| Quarantined { key: Some("e1".into()), reason: reason.into(), row: r#"{"id":"e1"}"#.into() };
    let mut b = r.events(vec![], IdentityRule::Email);
    b.quarantine = vec![bad("no timestamp"), bad("no timestamp"), bad("in the future")];
    assert_eq!(s.write_events(b.clone()).await.unwrap().quarantined, 2);
    assert_eq!(s.write_events(b).await.unwrap().quarantined, 0, "a re-read quarantines nothing twice");
    let (q, _) = s.export_page(r.key.tenant, Export::Quarantine, None, 10).await.unwrap();
    assert_eq!(q.len(), 2);
    assert_eq!(q[0]["pipeline"], "p");
    assert!(q[0]["run_id"].as_str().unwrap().starts_with("default-p-"));
}

async fn parked_events_expire_and_are_counted(f: Fixture) {
    let s = f.a.as_ref();
    let r = start(s, "default", "p").await;
    s.write_events(r.events(vec![ev("e1", "u1", None), ev("e2", "u2", None)], IdentityRule::ExternalId)).await.unwrap();
    let other = start(s, "default", "q").await;
    s.write_events(other.events(vec![ev("e1", "u1", None)], IdentityRule::ExternalId)).await.unwrap();
    assert_eq!(s.expire_parked(r.fence(), r.run, now() - 3_600_000_000).await.unwrap(), 0, "none is old yet");
    assert_eq!(s.expire_parked(r.fence(), r.run, now() + 1).await.unwrap(), 2, "only this pipeline's");
    assert_eq!(s.totals(r.key.tenant).await.unwrap().parked, 1);
    let run = s.runs(r.key.tenant, Some("p"), 1).await.unwrap().remove(0);
    assert_eq!((run.counts.parked, run.counts.dropped), (2, 2));
}

async fn a_lease_is_held_by_one_run_and_a_stale_fence_writes_nothing(f: Fixture) {
    let (a, b) = (f.a.as_ref(), f.b.as_ref());
    let t = a.tenant("acme").await.unwrap();
    let key = a.pipeline(t, "events").await.unwrap();
    let first = a.claim(key, &holder("worker one"), Duration::from_millis(400)).await.unwrap();
    // Held: another connection's claim names the holder and when it started.
    let e = b.claim(key, &holder("worker two"), TTL).await.unwrap_err();
    match &e {
        Error::LeaseHeld { pipeline, holder, since, .. } => {
            assert_eq!(pipeline, "events");
            assert!(holder.contains("worker one") && holder.contains(&std::process::id().to_string()), "{holder}");
            assert!(since.ends_with('Z'), "{since}");
        }
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains("--wait"), "{e}");
    let run = a.begin_run(first.fence, &record("events", "r1")).await.unwrap();
    // A heartbeat extends it.
    let until = a.heartbeat(&first, Duration::from_millis(400)).await.unwrap();
    assert!(until >= first.until);
    let write = |fence: Fence, id: &str| EventBatch {
        fence,
        run,
        rule: IdentityRule::Email,
        backfill: false,
        rows: vec![ev(id, "a@x.com", None)],
        quarantine: vec![],
        checkpoints: vec![Checkpoint { slot: Slot::Live, value: Some(100) }],
        progress: Progress::default(),
    };
    assert_eq!(a.write_events(write(first.fence, "e1")).await.unwrap().inserted, 1);
    // It expires without a heartbeat: the holder's next write is refused, whole.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let e = a.write_events(write(first.fence, "e2")).await.unwrap_err();
    assert!(matches!(&e, Error::LeaseLost { reason, .. } if reason.contains("expired")), "{e:?}");
    // Another worker takes over with the next fence.
    let second = b.claim(key, &holder("worker two"), TTL).await.unwrap();
    assert_eq!(second.fence.value, first.fence.value + 1);
    let mut late = write(first.fence, "e3");
    late.checkpoints[0].value = Some(50);
    let e = a.write_events(late).await.unwrap_err();
    assert!(matches!(&e, Error::LeaseLost { reason, .. } if reason.contains("worker two")), "{e:?}");
    assert!(matches!(a.heartbeat(&first, TTL).await, Err(Error::LeaseLost { .. })));
    assert!(matches!(a.finish_run(first.fence, run, &record("events", "r1")).await, Err(Error::LeaseLost { .. })));
    assert!(matches!(a.rematch_parked(first.fence, run, true).await, Err(Error::LeaseLost { .. })));
    assert!(matches!(a.expire_parked(first.fence, run, now()).await, Err(Error::LeaseLost { .. })));
    assert!(matches!(a.begin_run(first.fence, &record("events", "r9")).await, Err(Error::LeaseLost { .. })));
    // Nothing of the zombie's landed: one event, the cursor where the live holder left it.
    assert_eq!(a.totals(t).await.unwrap().events, 1);
    assert_eq!(a.cursor(key, Slot::Live).await.unwrap(), Some(100));
    // Releasing someone else's lease does nothing; releasing one's own frees it.
    a.release(&first).await.unwrap();
    assert!(matches!(a.claim(key, &holder("worker three"), TTL).await, Err(Error::LeaseHeld { .. })));
    b.release(&second).await.unwrap();
    let third = a.claim(key, &holder("worker three"), TTL).await.unwrap();
    assert_eq!(third.fence.value, second.fence.value + 1);
    // A lease of another pipeline is independent.
    let other = a.pipeline(t, "people").await.unwrap();
    a.claim(other, &holder("worker one"), TTL).await.unwrap();
}

async fn a_claim_after_expiry_marks_the_dead_run_interrupted_at_its_last_commit(f: Fixture) {
    let s = f.a.as_ref();
    let r = start_with(s, "default", "p", Duration::from_millis(300)).await;
    let mut b = r.events(vec![ev("e1", "a@x.com", None), ev("e2", "b@x.com", None)], IdentityRule::Email);
    b.progress = Progress { rows_read: 3, bytes: 100, statement_ids: vec!["s1".into()] };
    b.quarantine.push(Quarantined { key: None, reason: "bad".into(), row: "{}".into() });
    s.write_events(b).await.unwrap();
    let mut b = r.events(vec![ev("e3", "a@x.com", None)], IdentityRule::Email);
    b.progress = Progress { rows_read: 1, bytes: 0, statement_ids: vec!["s2".into()] };
    s.write_events(b).await.unwrap();
    let committed = s.runs(r.key.tenant, None, 1).await.unwrap().remove(0);
    assert_eq!(committed.status, "running");
    assert_eq!((committed.counts.rows_read, committed.counts.inserted, committed.counts.quarantined), (4, 3, 1));
    assert_eq!((committed.counts.people_created, committed.counts.bytes), (2, 100));
    assert_eq!(committed.statement_ids, ["s1", "s2"]);
    // The holder dies (no heartbeat). Starting another run alone does not touch the record;
    // the next claim, once the lease has expired, does.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(s.runs(r.key.tenant, None, 1).await.unwrap()[0].status, "running");
    let next = s.claim(r.key, &holder("next"), TTL).await.unwrap();
    let dead = s.runs(r.key.tenant, None, 5).await.unwrap().into_iter().find(|x| x.run_id == committed.run_id).unwrap();
    assert_eq!(dead.status, "interrupted");
    assert_eq!(dead.counts, committed.counts);
    let ended = dead.ended_at.unwrap();
    assert!(ended > dead.started_at && ended < now() - 300_000, "ended at its last commit, not when found dead");
    // The new run's record is untouched by the next claim's sweep.
    let run = s.begin_run(next.fence, &record("p", "r2")).await.unwrap();
    s.heartbeat(&next, TTL).await.unwrap();
    let live = Running { key: r.key, lease: next, run };
    finish(s, &live).await;
    let runs = s.runs(r.key.tenant, None, 5).await.unwrap();
    assert_eq!(runs.iter().map(|x| x.status.as_str()).collect::<Vec<_>>(), ["succeeded", "interrupted"]);
}

async fn a_moved_email_is_seen_by_every_connection(f: Fixture) {
    let (a, b) = (f.a.as_ref(), f.b.as_ref());
    let events = start(a, "default", "events").await;
    let o = a.write_events(events.events(vec![ev("e1", "old@x.com", None)], IdentityRule::Email)).await.unwrap();
    assert_eq!(o.people_created, 1);
    // Another connection's people pipeline gives that person another email.
    let people = start(b, "default", "people").await;
    b.write_records(people.records(Entity::People, vec![person("u1", Some("old@x.com"), "1")])).await.unwrap();
    b.write_records(people.records(Entity::People, vec![person("u1", Some("new@x.com"), "2")])).await.unwrap();
    // The first connection, which had resolved old@x.com, no longer attaches events to them.
    let o =
        a.write_events(events.events(vec![ev("e2", "old@x.com", None), ev("e3", "new@x.com", None)], IdentityRule::Email)).await.unwrap();
    assert_eq!((o.inserted, o.people_created), (2, 1), "old@x.com is a new person now");
    let (rows, _) = a.export_page(events.key.tenant, Export::Events, None, 10).await.unwrap();
    let of = |id: &str| rows.iter().find(|r| r["event_id"] == id).unwrap()["person_id"].clone();
    assert_eq!(of("e1"), "u1");
    assert_eq!(of("e3"), "u1");
    assert_eq!(of("e2"), serde_json::Value::Null);
}

/// A writer remembers the external ids it found with no person (so a
/// backfill does not look them up again in every batch) and forgets them as
/// soon as any writer, on any connection, creates a person or gives one an
/// external id.
async fn an_external_id_with_no_person_is_matched_once_anyone_gives_it_one(f: Fixture) {
    let (a, b) = (f.a.as_ref(), f.b.as_ref());
    let ext = IdentityRule::ExternalId;
    let events = start(a, "default", "events").await;
    let write = |rows: Vec<EventRow>| a.write_events(events.events(rows, ext));
    let o = write(vec![ev("e1", "u9", None)]).await.unwrap();
    assert_eq!((o.inserted, o.parked), (0, 1));
    let o = write(vec![ev("e2", "u9", None)]).await.unwrap();
    assert_eq!((o.inserted, o.parked), (0, 1), "still no person");
    // Another connection's people pipeline creates u9.
    let people = start(b, "default", "people").await;
    assert_eq!(b.write_records(people.records(Entity::People, vec![person("u9", None, "1")])).await.unwrap().inserted, 1);
    let o = write(vec![ev("e3", "u9", None)]).await.unwrap();
    assert_eq!((o.inserted, o.parked), (1, 0), "u9 exists now");

    // An event of an absent id that brings an email creates its person, in the same batch as rows without one.
    assert_eq!(write(vec![ev("e4", "u8", None)]).await.unwrap().parked, 1);
    let o = write(vec![ev("e5", "u8", None), ev("e6", "u8", Some("eight@x.com"))]).await.unwrap();
    assert_eq!((o.inserted, o.parked, o.people_created), (2, 0, 1));
    assert_eq!(write(vec![ev("e7", "u8", None)]).await.unwrap().inserted, 1);

    // Another connection's events give an absent id the person an email event created before.
    let by_email = start(b, "default", "signups").await;
    b.write_events(by_email.events(vec![ev("s1", "seven@x.com", None)], IdentityRule::Email)).await.unwrap();
    assert_eq!(write(vec![ev("e8", "u7", None)]).await.unwrap().parked, 1);
    let claims = start(b, "default", "logins").await;
    let o = b.write_events(claims.events(vec![ev("l1", "u7", Some("seven@x.com"))], ext)).await.unwrap();
    assert_eq!((o.inserted, o.people_created), (1, 0), "u7 claims the person signups created");
    let o = write(vec![ev("e9", "u7", None)]).await.unwrap();
    assert_eq!((o.inserted, o.parked), (1, 0), "u7 has a person now");

    // Another connection's events create a person for an absent id.
    assert_eq!(write(vec![ev("e10", "u6", None)]).await.unwrap().parked, 1);
    let o = b.write_events(claims.events(vec![ev("l2", "u6", Some("six@x.com"))], ext)).await.unwrap();
    assert_eq!((o.inserted, o.people_created), (1, 1));
    assert_eq!(write(vec![ev("e11", "u6", None)]).await.unwrap().inserted, 1);

    let t = a.totals(events.key.tenant).await.unwrap();
    assert_eq!((t.parked, t.people), (5, 4), "e1, e2, e4, e8 and e10 wait for a re-match; u9, u8, u7 and u6");
}

async fn two_connections_create_each_person_once(f: Fixture) {
    let t = f.a.tenant("default").await.unwrap();
    let mut tasks = Vec::new();
    for (i, s) in [f.a.clone(), f.b.clone(), f.a.clone(), f.b.clone()].into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let r = start(s.as_ref(), "default", &format!("p{i}")).await;
            for round in 0..20 {
                // Every writer sees the same 50 new emails in a different order.
                let mut rows: Vec<EventRow> = (0..50)
                    .map(|j| ev(&format!("{i}-{round}-{j}"), &format!("user{}@x.com", (j * 7 + i * 13 + round) % 50), None))
                    .collect();
                rows.rotate_left(i * 11);
                s.write_events(r.events(rows, IdentityRule::Email)).await?;
            }
            Ok::<_, Error>(())
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let totals = f.a.totals(t).await.unwrap();
    assert_eq!((totals.people, totals.events), (50, 4 * 20 * 50));
    let created: u64 = f.a.runs(t, None, 10).await.unwrap().iter().map(|r| r.counts.people_created).sum();
    assert_eq!(created, 50, "each person created by exactly one writer");
}

async fn export_pages_through_everything(f: Fixture) {
    let s = f.a.as_ref();
    let t = s.tenant("default").await.unwrap();
    for p in ["a", "b"] {
        let r = start(s, "default", p).await;
        let rows = (0..25).map(|j| ev(&format!("id:{j:03}"), &format!("u{j}@x.com"), None)).collect();
        s.write_events(r.events(rows, IdentityRule::Email)).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let (page, next) = s.export_page(t, Export::Events, after.as_deref(), 7).await.unwrap();
        assert!(page.len() <= 7);
        seen.extend(page.into_iter().map(|v| format!("{}/{}", v["pipeline"].as_str().unwrap(), v["event_id"].as_str().unwrap())));
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(seen.len(), 50, "every event once, ids with `:` included");
    let mut sorted = seen.clone();
    sorted.dedup();
    assert_eq!(sorted.len(), 50);
    let (people, next) = s.export_page(t, Export::People, None, 100).await.unwrap();
    assert_eq!((people.len(), next), (25, None));
}

async fn tenants_and_tokens_are_the_same_records_on_every_connection(f: Fixture) {
    let acme = TenantName::parse("acme").unwrap();
    let made = f.a.create_tenant(&acme, Some("Acme Corp")).await.unwrap();
    assert_eq!((made.name.as_str(), made.display_name.as_str()), ("acme", "Acme Corp"));
    let e = f.b.create_tenant(&acme, None).await.unwrap_err();
    assert!(matches!(&e, Error::Exists { .. }) && e.to_string().contains("tenant `acme` exists already"), "{e}");
    // The sync's `tenant(name)` finds the same tenant, and one made by it is listed with its name for people.
    assert_eq!(f.b.tenant("acme").await.unwrap(), made.id);
    let globex = f.b.tenant("globex").await.unwrap();
    let listed = f.a.tenants().await.unwrap();
    let names: Vec<(&str, &str)> = listed.iter().map(|t| (t.name.as_str(), t.display_name.as_str())).collect();
    assert!(names.contains(&("acme", "Acme Corp")) && names.contains(&("globex", "globex")), "{names:?}");
    assert_eq!(f.b.tenant_info("acme").await.unwrap().unwrap().id, made.id);
    assert_eq!(f.b.tenant_info("nobody").await.unwrap(), None);

    let admin = f.a.create_token(made.id, "admin", "hash-a", "acme's admin").await.unwrap();
    let rep = f.b.create_token(globex, "representative", "hash-r", "").await.unwrap();
    assert_eq!((admin.tenant_name.as_str(), admin.role.as_str(), admin.revoked_at), ("acme", "admin", None));
    assert_eq!(f.b.token_by_hash("hash-a").await.unwrap().unwrap().id, admin.id);
    assert_eq!(f.a.token_by_hash("hash-x").await.unwrap(), None);
    assert_eq!(f.a.tokens(Some(made.id)).await.unwrap().iter().map(|t| t.id).collect::<Vec<_>>(), vec![admin.id]);
    assert_eq!(f.a.tokens(None).await.unwrap().len(), 2);
    // A hash is one token's, and an unknown role or tenant is refused by the store itself.
    assert!(f.a.create_token(made.id, "admin", "hash-a", "").await.is_err());
    assert!(f.a.create_token(made.id, "owner", "hash-o", "").await.is_err());
    assert!(matches!(f.a.create_token(trig_store::TenantId(9999), "admin", "hash-n", "").await, Err(Error::NotFound { .. })));

    assert!(f.b.revoke_token(admin.id).await.unwrap());
    assert!(!f.a.revoke_token(admin.id).await.unwrap(), "revoked once");
    assert_eq!(f.a.token_by_hash("hash-a").await.unwrap(), None, "a revoked token authenticates nothing");
    assert!(f.a.tokens(None).await.unwrap().iter().any(|t| t.id == admin.id && t.revoked_at.is_some()));
    assert_eq!(f.a.token_by_hash("hash-r").await.unwrap().unwrap().id, rep.id);
}

async fn page_sessions_and_login_links_are_kept_by_hash_and_end(f: Fixture) {
    let acme = f.a.tenant("acme").await.unwrap();
    let globex = f.a.tenant("globex").await.unwrap();
    let admin = f.a.create_token(acme, "admin", "hash-admin", "").await.unwrap();
    let rep = f.a.create_token(globex, "representative", "hash-rep", "").await.unwrap();
    let now = 1_800_000_000_000_000;
    f.a.create_web_session("s1", "session", admin.id, None, now, now + 1_000).await.unwrap();
    // Seen from another connection, with its token's tenant and role.
    let s = f.b.web_session("s1").await.unwrap().unwrap();
    assert_eq!((s.token.id, s.token.tenant_name.as_str(), s.tenant.clone(), s.expires_at), (admin.id, "acme", None, now + 1_000));
    assert_eq!(f.b.web_session("s2").await.unwrap(), None);
    // A representative's session remembers the tenant chosen.
    f.a.create_web_session("s3", "session", rep.id, None, now, now + 1_000).await.unwrap();
    f.b.set_web_session_tenant("s3", acme).await.unwrap();
    assert_eq!(f.a.web_session("s3").await.unwrap().unwrap().tenant, Some((acme, "acme".to_string())));
    // A login link is no session, and works once, while live.
    f.a.create_web_session("l1", "link", rep.id, None, now, now + 1_000).await.unwrap();
    assert_eq!(f.a.web_session("l1").await.unwrap(), None, "a link is not a session");
    assert_eq!(f.b.redeem_login_link("l1", now + 1).await.unwrap().map(|t| t.id), Some(rep.id));
    assert_eq!(f.a.redeem_login_link("l1", now + 2).await.unwrap(), None, "once only");
    f.a.create_web_session("l2", "link", rep.id, None, now, now + 1_000).await.unwrap();
    assert_eq!(f.a.redeem_login_link("l2", now + 1_000).await.unwrap(), None, "expired");
    assert_eq!(f.a.redeem_login_link("s3", now).await.unwrap(), None, "a session is no link");
    // Signed out; and a revoked token ends its sessions.
    f.b.end_web_session("s3").await.unwrap();
    assert_eq!(f.a.web_session("s3").await.unwrap(), None);
    f.a.revoke_token(admin.id).await.unwrap();
    assert_eq!(f.a.web_session("s1").await.unwrap(), None);
    // Expired rows go when a new one is made; an unknown kind is refused by the store.
    f.a.create_web_session("s4", "session", rep.id, None, now + 5_000, now + 6_000).await.unwrap();
    assert!(f.a.create_web_session("x", "cookie", rep.id, None, now, now + 1).await.is_err());
}

async fn connections_keep_a_sealed_secret_and_every_change(f: Fixture) {
    use serde_json::json;
    use trig_store::ConnectionWrite;
    let acme = f.a.tenant("acme").await.unwrap();
    let globex = f.a.tenant("globex").await.unwrap();
    let w = |config: serde_json::Value, sealed: Option<&str>, action: &str| ConnectionWrite {
        origin: "api".into(),
        config,
        sealed_secret: sealed.map(str::to_string),
        actor: "token 1 (representative)".into(),
        action: action.into(),
    };
    let (made, new) =
        f.a.put_connection(acme, "prod", w(json!({"workspace_url": "https://a"}), Some("trig:v1:k1:AAAA"), "replaced")).await.unwrap();
    assert!(new);
    assert_eq!((made.sealed_secret.as_deref(), made.origin.as_str()), (Some("trig:v1:k1:AAAA"), "api"));
    assert!(made.secret_changed_at.is_some());
    // The same name in another tenant is another connection.
    let (other, new) =
        f.b.put_connection(globex, "prod", w(json!({"workspace_url": "https://g"}), Some("trig:v1:k1:BBBB"), "replaced")).await.unwrap();
    assert!(new && other.id != made.id);
    // Replaced without a secret: the secret stays.
    let (kept, new) = f.b.put_connection(acme, "prod", w(json!({"workspace_url": "https://b"}), None, "changed")).await.unwrap();
    assert!(!new);
    assert_eq!((kept.sealed_secret.as_deref(), kept.secret_changed_at), (Some("trig:v1:k1:AAAA"), made.secret_changed_at));
    assert_eq!(kept.config, json!({"workspace_url": "https://b"}));
    // The same again changes nothing and records nothing.
    f.a.put_connection(acme, "prod", w(json!({"workspace_url": "https://b"}), None, "changed")).await.unwrap();
    assert_eq!(f.a.connections(acme).await.unwrap().len(), 1);
    assert_eq!(f.a.connection(globex, "prod").await.unwrap().unwrap().config, json!({"workspace_url": "https://g"}));

    // Rotation: compare-and-set on the sealed text, recorded.
    let sealed = f.a.sealed_secrets().await.unwrap();
    assert_eq!(sealed.len(), 2);
    let s = sealed.iter().find(|s| s.tenant == acme).unwrap();
    assert_eq!((s.tenant_name.as_str(), s.connection.as_str()), ("acme", "prod"));
    assert!(f.b.reseal(s.connection_id, &s.sealed, "trig:v1:k2:CCCC", "secrets rotate").await.unwrap());
    assert!(!f.a.reseal(s.connection_id, &s.sealed, "trig:v1:k2:DDDD", "secrets rotate").await.unwrap(), "changed since it was read");
    assert_eq!(f.a.connection(acme, "prod").await.unwrap().unwrap().sealed_secret.as_deref(), Some("trig:v1:k2:CCCC"));

    assert!(f.a.delete_connection(acme, "prod", "token 2 (admin)").await.unwrap());
    assert!(!f.b.delete_connection(acme, "prod", "token 2 (admin)").await.unwrap());
    assert_eq!(f.a.connection(acme, "prod").await.unwrap(), None);
    let changes = f.b.changes(acme, "connection", "prod", 10).await.unwrap();
    let actions: Vec<&str> = changes.iter().map(|c| c.action.as_str()).collect();
    assert_eq!(actions, vec!["deleted", "secret_rotated", "changed", "created"], "newest first, once each");
    assert_eq!(changes[3].note.as_deref(), Some("the secret was set"));
    assert_eq!(
        (changes[2].before.clone(), changes[2].after.clone()),
        (Some(json!({"workspace_url": "https://a"})), Some(json!({"workspace_url": "https://b"})))
    );
    assert_eq!((changes[0].actor.as_str(), changes[0].after.clone()), ("token 2 (admin)", None));
    assert_eq!(f.a.changes(globex, "connection", "prod", 10).await.unwrap().len(), 1, "another tenant's timeline is its own");
    assert!(
        f.a.changes(acme, "connection", "prod", 10).await.unwrap().iter().all(|c| !format!("{c:?}").contains("AAAA")),
        "no secret in the timeline"
    );
}

async fn pipelines_are_defined_scheduled_requested_and_paused(f: Fixture) {
    use serde_json::json;
    use trig_store::{Outcome, PipelineWrite};
    let acme = f.a.tenant("acme").await.unwrap();
    let t0 = now();
    let w = |def: serde_json::Value| PipelineWrite {
        origin: "api".into(),
        definition: def,
        actor: "token 1 (representative of trig)".into(),
        action: "replaced".into(),
        first_run_at: t0,
    };
    let (p, created) = f.a.put_pipeline(acme, "events", w(json!({"kind": "events", "schedule": "15m"}))).await.unwrap();
    assert!(created);
    assert_eq!((p.next_run_at, p.origin.as_deref(), p.failures), (Some(t0), Some("api"), 0));
    // The sync's own name for it is the same pipeline (its events, runs and cursors).
    assert_eq!(f.b.pipeline(acme, "events").await.unwrap(), p.key);
    let due = f.b.due_pipelines(t0, 10).await.unwrap();
    assert_eq!(due.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(), vec!["events"]);
    assert!(f.b.due_pipelines(t0 - 1, 10).await.unwrap().is_empty(), "not before its time");

    // A run ends: next time set; a failure counts; a pause stops it being due; a change un-pauses.
    f.a.record_outcome(p.key, &Outcome { at: now(), next_run_at: t0 + 900_000_000, error: None, pause: None }).await.unwrap();
    assert!(f.a.due_pipelines(t0 + 1, 10).await.unwrap().is_empty());
    let e = json!({"kind": "token_expired", "message": "the token expired", "hint": "make a new one"});
    f.a.record_outcome(p.key, &Outcome { at: now(), next_run_at: t0, error: Some(e.clone()), pause: None }).await.unwrap();
    f.b.record_outcome(
        p.key,
        &Outcome { at: now(), next_run_at: t0, error: Some(e.clone()), pause: Some("failing for 24 h: the token expired".into()) },
    )
    .await
    .unwrap();
    let paused = f.a.pipeline_record(acme, "events").await.unwrap().unwrap();
    assert_eq!(
        (paused.failures, paused.last_error.clone(), paused.paused_reason.as_deref()),
        (2, Some(e), Some("failing for 24 h: the token expired"))
    );
    assert!(paused.failing_since.is_some() && paused.paused_at.is_some());
    assert!(f.a.due_pipelines(t0 + 1, 10).await.unwrap().is_empty(), "paused: not due");
    assert!(f.a.unpause(acme, "events", "token 1").await.unwrap());
    assert!(!f.a.unpause(acme, "events", "token 1").await.unwrap());
    assert_eq!(f.a.pipeline_record(acme, "events").await.unwrap().unwrap().failures, 0);

    // "Sync now" and "full refresh": queued with a run id, absorbed while pending, never downgraded; due at once.
    f.a.record_outcome(p.key, &Outcome { at: now(), next_run_at: t0 + 900_000_000, error: None, pause: None }).await.unwrap();
    assert_eq!(f.a.request_run(acme, "events", "sync", "run-1").await.unwrap(), Some(("sync".into(), "run-1".into())));
    assert_eq!(f.b.request_run(acme, "events", "full_refresh", "run-2").await.unwrap(), Some(("full_refresh".into(), "run-1".into())));
    assert_eq!(f.a.request_run(acme, "events", "sync", "run-3").await.unwrap(), Some(("full_refresh".into(), "run-1".into())));
    assert_eq!(f.a.request_run(acme, "nothing", "sync", "run-4").await.unwrap(), None);
    assert_eq!(f.a.due_pipelines(t0 + 1, 10).await.unwrap().len(), 1, "a request is due now");
    f.a.take_request(p.key, "sync").await.unwrap();
    assert_eq!(
        f.a.pipeline_record(acme, "events").await.unwrap().unwrap().requested.as_deref(),
        Some("full_refresh"),
        "only the request taken"
    );
    f.a.take_request(p.key, "full_refresh").await.unwrap();
    assert_eq!(f.a.pipeline_record(acme, "events").await.unwrap().unwrap().requested_run_id, None);

    // A redefinition is recorded and keeps the schedule; a deletion keeps the rows' pipeline but stops scheduling.
    let (_, created) = f.b.put_pipeline(acme, "events", w(json!({"kind": "events", "schedule": "30m"}))).await.unwrap();
    assert!(!created);
    assert_eq!(f.a.pipeline_record(acme, "events").await.unwrap().unwrap().next_run_at, Some(t0 + 900_000_000));
    assert_eq!(f.a.pipeline_records(acme).await.unwrap().len(), 1);
    assert!(f.a.delete_pipeline(acme, "events", "token 1").await.unwrap());
    assert!(f.a.pipeline_records(acme).await.unwrap().is_empty());
    assert_eq!(f.a.request_run(acme, "events", "sync", "run-5").await.unwrap(), None, "a deleted pipeline runs no more");
    let changes = f.a.changes(acme, "pipeline", "events", 10).await.unwrap();
    assert_eq!(changes.iter().map(|c| c.action.as_str()).collect::<Vec<_>>(), vec!["deleted", "replaced", "changed", "created"]);
    let (again, created) = f.a.put_pipeline(acme, "events", w(json!({"kind": "events"}))).await.unwrap();
    assert!(created && again.key == p.key, "defined again: the same pipeline, its rows kept");
}

async fn warehouse_slots_bound_the_runs_on_a_warehouse_across_connections(f: Fixture) {
    let t0 = now();
    let w = "https://a.cloud.databricks.com/sql/1.0/warehouses/abc";
    let a = f.a.claim_warehouse_slot(w, 2, "p1", t0, t0 + 60_000_000).await.unwrap();
    let b = f.b.claim_warehouse_slot(w, 2, "p2", t0, t0 + 60_000_000).await.unwrap();
    assert_eq!((a, b), (Some(0), Some(1)));
    assert_eq!(f.a.claim_warehouse_slot(w, 2, "p3", t0, t0 + 60_000_000).await.unwrap(), None, "both held");
    assert_eq!(f.a.claim_warehouse_slot("another", 2, "p3", t0, t0 + 60_000_000).await.unwrap(), Some(0), "per warehouse");
    assert!(f.b.extend_warehouse_slot(w, 1, "p2", t0 + 120_000_000).await.unwrap());
    assert!(!f.b.extend_warehouse_slot(w, 1, "p1", t0 + 120_000_000).await.unwrap(), "not p1's");
    f.a.release_warehouse_slot(w, 0, "p1").await.unwrap();
    assert_eq!(f.b.claim_warehouse_slot(w, 2, "p3", t0, t0 + 60_000_000).await.unwrap(), Some(0), "released");
    // An expired slot (its holder died) is free.
    assert_eq!(f.a.claim_warehouse_slot(w, 2, "p4", t0 + 121_000_000, t0 + 200_000_000).await.unwrap(), Some(0));
    // Many claimers at once from two connections: never more than the slots.
    let mut tasks = Vec::new();
    for i in 0..16 {
        let s = if i % 2 == 0 { f.a.clone() } else { f.b.clone() };
        tasks.push(tokio::spawn(async move { s.claim_warehouse_slot("race", 3, &format!("h{i}"), t0, t0 + 60_000_000).await.unwrap() }));
    }
    let mut got = Vec::new();
    for t in tasks {
        if let Some(s) = t.await.unwrap() {
            got.push(s);
        }
    }
    got.sort();
    assert_eq!(got, vec![0, 1, 2]);
}

/// A version 4 PostgreSQL store's events, as a version 4 binary wrote them:
/// the run, the backfill flag and the time stored in every row.
const PG_V4_ROWS: &str = "
    INSERT INTO tenants (name, created_at) VALUES ('default', 1);
    INSERT INTO pipelines (tenant_id, name, created_at) VALUES (1, 'events', 1);
    INSERT INTO people (tenant_id, external_id, email, created_at, updated_at) VALUES (1, 'u1', 'pat@acme.com', 1, 1);
    INSERT INTO events VALUES (1, 1, 'e1', 'signed_in', 100, 1, '{\"plan\":\"pro\"}', false, 11, 1),
                              (1, 1, 'e2', 'signed_in', 200, 1, '{}', true, 12, 1),
                              (1, 1, 'e3', 'clicked', 300, 1, '{}', true, 12, 1);
    INSERT INTO trig_schema (version) VALUES (4);
";

/// Version 5 keeps what a write's events share in a batch row: a version 4
/// database's events keep their backfill flag and time stored, and the store
/// writes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_4_postgres_store_migrates_its_events_into_batches() {
    let Some((url, _db)) = fresh_database("v4_migration") else { return };
    let url2 = url.clone();
    std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&url2, postgres::NoTls).unwrap();
        for step in [
            include_str!("../src/postgres/v1.sql"),
            include_str!("../src/postgres/v2.sql"),
            include_str!("../src/postgres/v3.sql"),
            include_str!("../src/postgres/v4.sql"),
            PG_V4_ROWS,
        ] {
            c.batch_execute(step).unwrap();
        }
    })
    .join()
    .unwrap();
    let s = trig_store::PostgresStore::open(&url).unwrap();
    let t = s.tenant("default").await.unwrap();
    let totals = s.totals(t).await.unwrap();
    assert_eq!((totals.events, totals.backfilled_events), (3, 2));
    let (rows, _) = s.export_page(t, Export::Events, None, 10).await.unwrap();
    let kept: Vec<(&str, bool, &str)> = rows
        .iter()
        .map(|r| (r["event_id"].as_str().unwrap(), r["backfill"].as_bool().unwrap(), r["ingested_at"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kept,
        [
            ("e1", false, "1970-01-01T00:00:00.000011Z"),
            ("e2", true, "1970-01-01T00:00:00.000012Z"),
            ("e3", true, "1970-01-01T00:00:00.000012Z")
        ]
    );
    let url3 = url.clone();
    let (batches, left): (i64, i64) = std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&url3, postgres::NoTls).unwrap();
        let b = c.query_one("SELECT count(*) FROM event_batches", &[]).unwrap().get(0);
        let l = c.query_one("SELECT count(*) FROM pg_class WHERE relname LIKE 'v4_%'", &[]).unwrap().get(0);
        (b, l)
    })
    .join()
    .unwrap();
    assert_eq!((batches, left), (2, 0), "one batch for each run, flag and time; no table of the old layout left");
    // The migrated store writes on: a re-read is deduplicated, a new id stored.
    let r = start(&s, "default", "events").await;
    let o =
        s.write_events(r.events(vec![ev("e1", "pat@acme.com", None), ev("e9", "pat@acme.com", None)], IdentityRule::Email)).await.unwrap();
    assert_eq!((o.inserted, o.deduplicated), (1, 1));
    assert_eq!(s.totals(t).await.unwrap().events, 4);
}

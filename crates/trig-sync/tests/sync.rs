//! The sync engine end to end: the emulator in-process over real HTTP, and
//! each test run against both stores: a fresh SQLite file, and a fresh
//! PostgreSQL database (dropped afterwards) on the server
//! `TRIG_TEST_POSTGRES_URL` names. Expectations are computed from the source
//! with plain HTTP calls to the Statement API (not through our client).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use databricks::{ClientOptions, RetryPolicy};
use databricks_emulator::demo::{self, DemoOptions};
use databricks_emulator::{EmulatorConfig, RunningEmulator};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use trig_config::Config;
use trig_store::testing::FreshDatabase;
use trig_store::{Export, FailAction, PostgresStore, Slot, SqliteStore, Store, SyncRun};
use trig_sync::{Engine, EngineOptions, Finished, Query, Trigger};

static N: AtomicU32 = AtomicU32::new(0);

/// A part of the demo config (`trig_config::demo`, the one source the demo
/// command and the benches use too), as text a test can compose and edit.
struct Part(fn() -> String);

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&(self.0)())
    }
}

impl Part {
    fn replace(&self, from: &str, to: &str) -> String {
        (self.0)().replace(from, to)
    }
}

const ORGS: Part = Part(|| trig_config::demo::organisations("orgs", "emu"));
const PEOPLE: Part = Part(|| trig_config::demo::people("people", "emu"));
const EVENTS: Part = Part(|| trig_config::demo::events("events", "emu"));

/// Which store a test runs on.
#[derive(Clone, Debug)]
enum Backend {
    Sqlite,
    /// The server's URL (`TRIG_TEST_POSTGRES_URL`); each Env makes a database on it.
    Postgres(String),
}

impl Backend {
    /// PostgreSQL when `TRIG_TEST_POSTGRES_URL` is set (see `trig_store::testing`).
    fn postgres() -> Option<Backend> {
        trig_store::testing::postgres_server("the sync tests").map(Backend::Postgres)
    }
}

/// Runs each test against SQLite and PostgreSQL.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Sqlite).await
                }
            )*
        }
        mod postgres_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(b) = super::Backend::postgres() {
                        super::$name(b).await
                    }
                }
            )*
        }
    };
}

on_both_stores!(
    events_land_exactly_once_matched_to_people_with_bad_rows_quarantined,
    a_crash_between_writing_and_committing_loses_and_duplicates_nothing,
    a_window_failing_while_earlier_ones_are_read_keeps_what_they_committed,
    late_rows_within_the_lookback_are_stored_and_counted,
    identity_rules_park_rematch_create_and_expire,
    attributes_diff_by_hash_clear_nulls_link_people_and_never_delete,
    schema_drift_fails_naming_the_column_and_keeps_the_cursor,
    replay_and_full_refresh_flag_backfill_and_keep_the_live_cursor,
    remote_failures_fail_with_their_kind_and_throttling_is_survived,
    dry_run_shows_the_statement_a_real_run_sends_and_writes_nothing,
    a_cancelled_run_is_recorded_and_the_next_one_completes,
    backfill_windows_follow_the_data_density,
    a_sparse_source_costs_statements_by_its_rows_not_its_calendar,
    a_properties_column_merges_its_keys_and_listed_properties_win,
    a_workspace_refusing_query_tags_is_synced_untagged_and_the_run_says_so,
    a_run_keeps_its_lease_by_heartbeat_and_stops_writing_when_it_loses_it,
);

/// The store under test, with what tests reach past the trait for: the
/// failpoint, and raw SQL to play another worker.
enum Backing {
    Sqlite(Arc<SqliteStore>, PathBuf),
    Postgres(Arc<PostgresStore>, FreshDatabase),
}

impl Backing {
    fn open(backend: &Backend, dir: &std::path::Path) -> (Backing, String) {
        match backend {
            Backend::Sqlite => {
                let file = dir.join("trig.db");
                let store = Arc::new(SqliteStore::open(file.to_str().unwrap()).unwrap());
                (Backing::Sqlite(store, file), "sqlite://trig.db".into())
            }
            Backend::Postgres(admin) => {
                let db = FreshDatabase::create(admin, "trig_sync_test");
                let store = Arc::new(PostgresStore::open(&db.url).unwrap_or_else(|e| panic!("{e}")));
                let url = db.url.clone();
                (Backing::Postgres(store, db), url)
            }
        }
    }

    fn store(&self) -> Arc<dyn Store> {
        match self {
            Backing::Sqlite(s, _) => s.clone(),
            Backing::Postgres(s, _) => s.clone(),
        }
    }

    fn set_failpoint(&self, nth: u64, action: FailAction) {
        match self {
            Backing::Sqlite(s, _) => s.set_failpoint(nth, action),
            Backing::Postgres(s, _) => s.set_failpoint(nth, action),
        }
    }

    /// Runs `sql` on the store's database directly, as another process would.
    fn execute(&self, sql: &str) {
        match self {
            Backing::Sqlite(_, file) => {
                rusqlite::Connection::open(file).unwrap().execute_batch(sql).unwrap();
            }
            Backing::Postgres(_, db) => trig_store::testing::execute(&db.url, sql),
        }
    }
}

struct Env {
    emu: Arc<RunningEmulator>,
    dir: PathBuf,
    config: Config,
    backing: Backing,
    store: Arc<dyn Store>,
    token: String,
    http: reqwest::Client,
}

fn quick_client() -> ClientOptions {
    ClientOptions {
        retry: RetryPolicy {
            initial_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(200),
            max_attempts: 5,
            max_elapsed: Duration::from_secs(20),
        },
        ..Default::default()
    }
}

impl Env {
    async fn start(backend: Backend, events: u64, pipelines: &str) -> Env {
        let loaded = demo::workspace(&DemoOptions { events, start_delay_ms: Some(50), running: true, ..Default::default() })
            .await
            .expect("demo workspace loads");
        let token = loaded.tokens["service_principal"].clone();
        let emu = databricks_emulator::start(loaded.workspace, EmulatorConfig::default(), "127.0.0.1:0").await.expect("emulator starts");
        Env::on(Arc::new(emu), token, backend, pipelines)
    }

    /// Another store (of either kind) syncing from this Env's workspace.
    fn beside(&self, backend: Backend, pipelines: &str) -> Env {
        Env::on(self.emu.clone(), self.token.clone(), backend, pipelines)
    }

    fn on(emu: Arc<RunningEmulator>, token: String, backend: Backend, pipelines: &str) -> Env {
        let dir = std::env::temp_dir().join(format!("trig-sync-test-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst)));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("token"), &token).unwrap();
        let (backing, url) = Backing::open(&backend, &dir);
        let text = trig_config::demo::store(&url)
            + &trig_config::demo::connection("emu", &emu.base_url(), demo::WAREHOUSE_ID, &emu.addr().to_string(), "token")
            + pipelines;
        let path = dir.join("trig.toml");
        std::fs::write(&path, text).unwrap();
        let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let store = backing.store();
        Env { emu, dir, config, backing, store, token, http: reqwest::Client::new() }
    }

    fn engine(&self, options: EngineOptions) -> Engine {
        Engine::new(self.config.clone(), self.store.clone(), EngineOptions { client: quick_client(), ..options })
    }

    async fn run(&self, pipeline: &str, trigger: Trigger) -> Finished {
        self.run_with(EngineOptions::default(), pipeline, trigger).await
    }

    async fn run_with(&self, options: EngineOptions, pipeline: &str, trigger: Trigger) -> Finished {
        self.engine(options).run(pipeline, trigger, &CancellationToken::new()).await.expect("the run is recorded")
    }

    async fn ok(&self, pipeline: &str, trigger: Trigger) -> SyncRun {
        let f = self.run(pipeline, trigger).await;
        assert!(f.error.is_none(), "{pipeline} failed: {:?}", f.error);
        assert_eq!(f.run.status, "succeeded");
        f.run
    }

    /// A statement over plain HTTP (INLINE, JSON_ARRAY): the source's truth.
    async fn sql(&self, statement: &str) -> Vec<Vec<Option<String>>> {
        let body = json!({"statement": statement, "warehouse_id": demo::WAREHOUSE_ID, "wait_timeout": "30s", "disposition": "INLINE", "format": "JSON_ARRAY"});
        let v: Value = self
            .http
            .post(format!("{}/api/2.0/sql/statements", self.emu.base_url()))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["status"]["state"], "SUCCEEDED", "{statement}: {v}");
        let rows = v["result"]["data_array"].as_array().cloned().unwrap_or_default();
        rows.iter().map(|r| r.as_array().unwrap().iter().map(|c| c.as_str().map(str::to_string)).collect()).collect()
    }

    async fn admin(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let r = self
            .http
            .request(method, format!("{}{path}", self.emu.base_url()))
            .bearer_auth(self.emu.admin_token())
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "admin {path}: {}", r.status());
        r.json().await.unwrap_or(Value::Null)
    }

    async fn append(&self, table: &str, rows: Value) {
        self.admin(reqwest::Method::POST, &format!("/emulator/v1/tables/{table}/rows"), json!({ "rows": rows })).await;
    }

    async fn export(&self, what: Export) -> Vec<Value> {
        let tenant = self.tenant().await;
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let (page, next) = self.store.export_page(tenant, what, after.as_deref(), 1000).await.unwrap();
            out.extend(page);
            match next {
                Some(n) => after = Some(n),
                None => return out,
            }
        }
    }

    /// The config's tenant (`default`).
    async fn tenant(&self) -> trig_store::TenantId {
        self.store.tenant(self.config.tenant.as_str()).await.unwrap()
    }

    async fn cursor(&self, pipeline: &str, slot: Slot) -> Result<Option<i64>, trig_store::Error> {
        let key = self.store.pipeline(self.tenant().await, pipeline).await?;
        self.store.cursor(key, slot).await
    }

    async fn totals(&self) -> Result<trig_store::Totals, trig_store::Error> {
        self.store.totals(self.tenant().await).await
    }

    async fn runs(&self, pipeline: Option<&str>, limit: usize) -> Result<Vec<SyncRun>, trig_store::Error> {
        self.store.runs(self.tenant().await, pipeline, limit).await
    }

    async fn ids(&self, what: Export) -> Vec<String> {
        self.export(what).await.iter().map(|v| v["event_id"].as_str().unwrap().to_string()).collect()
    }

    /// The event ids that must be stored once (in events or parked): every id
    /// with at least one valid row at or before the live cursor.
    async fn expected_ids(&self, pipeline: &str) -> BTreeSet<String> {
        let cursor = self.cursor(pipeline, Slot::Live).await.unwrap().expect("a cursor");
        let rows = self
            .sql(&format!(
                "SELECT DISTINCT event_id FROM main.product.events_v WHERE event_id IS NOT NULL AND event_name IS NOT NULL \
                 AND user_id IS NOT NULL AND event_ts IS NOT NULL AND event_ts <= TIMESTAMP'{}'",
                trig_store::time::rfc3339(cursor)
            ))
            .await;
        rows.into_iter().map(|r| r[0].clone().unwrap()).collect()
    }

    /// Every expected id is stored exactly once, in events or parked, and nothing else is.
    async fn assert_exactly_once(&self, pipeline: &str) {
        let expected = self.expected_ids(pipeline).await;
        let events = self.ids(Export::Events).await;
        let parked = self.ids(Export::Parked).await;
        let mut seen = BTreeSet::new();
        for id in events.iter().chain(parked.iter()) {
            assert!(seen.insert(id.clone()), "{id} is stored twice");
        }
        let missing: Vec<_> = expected.difference(&seen).take(5).collect();
        let extra: Vec<_> = seen.difference(&expected).take(5).collect();
        assert!(missing.is_empty() && extra.is_empty(), "missing {missing:?}, extra {extra:?}");
        assert!(expected.len() > 100, "the test reads a real amount of data: {}", expected.len());
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ago(d: Duration) -> String {
    (chrono::Utc::now() - chrono::Duration::from_std(d).unwrap()).to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn event(id: &str, user: &str, ts: &str, ingested: &str) -> Value {
    json!({"event_id": id, "event_name": "signed_in", "event_ts": ts, "user_id": user, "email": null, "plan": "growth",
           "platform": "web", "properties": {}, "ingested_at": ingested, "event_ts_local": null, "environment": "production"})
}

async fn events_land_exactly_once_matched_to_people_with_bad_rows_quarantined(backend: Backend) {
    let env = Env::start(backend.clone(), 4000, &format!("{ORGS}{PEOPLE}{EVENTS}")).await;
    let orgs = env.ok("orgs", Trigger::Schedule).await;
    assert_eq!((orgs.counts.rows_read, orgs.counts.inserted, orgs.counts.quarantined), (20, 20, 0));
    let people = env.ok("people", Trigger::Schedule).await;
    assert_eq!(people.counts.inserted, 160);
    let first = env.ok("events", Trigger::Schedule).await;
    env.assert_exactly_once("events").await;

    // The figures add up: every row read was stored, deduplicated, parked or quarantined.
    let c = first.counts;
    assert_eq!(c.rows_read, c.inserted + c.deduplicated + c.parked + c.quarantined, "{c:?}");
    assert!(c.deduplicated > 0 && c.parked > 0 && c.quarantined > 0, "{c:?}");
    assert_eq!(c.late, 0, "a first sync has no watermark to be late against");
    assert_eq!(first.trigger, "schedule");
    let totals = env.totals().await.unwrap();
    assert_eq!(totals.events, totals.backfilled_events, "the first sync is a backfill");

    // Matched to the right people; parked ones belong to nobody known.
    let people_ids: BTreeSet<String> = env.export(Export::People).await.iter().map(|p| p["id"].as_str().unwrap().to_string()).collect();
    let source: BTreeMap<String, String> = env
        .sql("SELECT event_id, min(user_id) FROM main.product.events_v WHERE event_id IS NOT NULL AND user_id IS NOT NULL GROUP BY event_id HAVING count(DISTINCT user_id) = 1")
        .await
        .into_iter()
        .map(|r| (r[0].clone().unwrap(), r[1].clone().unwrap()))
        .collect();
    for e in env.export(Export::Events).await {
        let id = e["event_id"].as_str().unwrap();
        if let Some(user) = source.get(id) {
            assert_eq!(e["person_id"].as_str(), Some(user.as_str()), "{e}");
        }
        assert_eq!(e["properties"].as_object().unwrap().len(), 2, "{e}");
    }
    for p in env.export(Export::Parked).await {
        assert!(!people_ids.contains(p["user_key"].as_str().unwrap()), "{p} was parked but its person exists");
    }
    // Each kind of bad row is quarantined with its reason, once.
    let reasons: Vec<String> = env.export(Export::Quarantine).await.iter().map(|q| q["reason"].as_str().unwrap().to_string()).collect();
    for want in [
        "event id (`event_id`) is NULL",
        "event name (`event_name`) is NULL",
        "timestamp (`event_ts`) is NULL",
        "user identifier (`user_id`) is NULL",
    ] {
        assert!(reasons.iter().any(|r| r.starts_with(want)), "no `{want}` in {reasons:?}");
    }

    // Every statement carries the run id in its query tags.
    let history = env.admin(reqwest::Method::GET, "/emulator/v1/statements", Value::Null).await;
    let tagged = history["statements"].as_array().unwrap().iter().filter(|s| s.to_string().contains(&first.run_id)).count();
    assert_eq!(tagged, first.statement_ids.len() + 1, "the window statements and the min(cursor) probe: {history}");

    // Running again stores nothing new and re-quarantines nothing.
    let quarantined = env.totals().await.unwrap().quarantined;
    let second = env.ok("events", Trigger::Schedule).await;
    assert_eq!(second.counts.inserted + second.counts.parked, 0, "{:?}", second.counts);
    assert_eq!(env.totals().await.unwrap().quarantined, quarantined);
    assert!(second.window_from.unwrap() < first.window_to.unwrap(), "the lookback re-reads the last two hours");
    env.assert_exactly_once("events").await;
    let runs = env.runs(Some("events"), 10).await.unwrap();
    assert_eq!(runs.iter().map(|r| r.run_id.as_str()).collect::<Vec<_>>(), [second.run_id.as_str(), first.run_id.as_str()]);
}

async fn a_crash_between_writing_and_committing_loses_and_duplicates_nothing(backend: Backend) {
    let env = Env::start(backend.clone(), 6000, &format!("{PEOPLE}{EVENTS}")).await;
    env.ok("people", Trigger::Schedule).await;
    // Small windows (a cursor every two days) and small transactions (several per window,
    // each of exactly `write_batch_rows` but a window's last), so crashes land both
    // between windows and inside one.
    let options = || EngineOptions { max_window: Duration::from_secs(2 * 86_400), write_batch_rows: 150, ..Default::default() };
    let mut cursors = Vec::new();
    for nth in [5, 4, 7] {
        env.backing.set_failpoint(nth, FailAction::Error);
        let f = env.run_with(options(), "events", Trigger::Schedule).await;
        let e = f.error.expect("the failpoint fails the run");
        assert_eq!((f.run.status.as_str(), e.kind()), ("failed", "store"));
        // The first sync is unfinished: its progress is the backfill's, the live cursor is unset.
        assert_eq!(env.cursor("events", Slot::Live).await.unwrap(), None, "an unfinished backfill sets no live cursor");
        cursors.push(env.cursor("events", Slot::Backfill).await.unwrap());
    }
    // Each crash resumed from the last checkpoint and got further.
    assert!(cursors[0].is_some() && cursors[0] < cursors[2], "{cursors:?}");
    // The last crash came inside a window: rows past the cursor were committed without it.
    let last = trig_store::time::rfc3339(cursors[2].unwrap());
    let beyond = env.export(Export::Events).await.iter().filter(|e| e["timestamp"].as_str().unwrap() > last.as_str()).count();
    assert!(beyond > 0, "a crash inside a window: {cursors:?}");
    let resumed = env.run_with(options(), "events", Trigger::Schedule).await;
    assert!(resumed.error.is_none(), "{:?}", resumed.error);
    assert_eq!(resumed.run.window_from, cursors[2], "resumed where it stopped, not restarted");
    assert_eq!(resumed.run.counts.late, 0, "re-read rows of a backfill are not late");
    assert_eq!(env.cursor("events", Slot::Backfill).await.unwrap(), None, "the backfill finished");
    env.assert_exactly_once("events").await;
    // Interrupted or not, the first sync's events are all backfilled (live triggers ignore them).
    let events = env.export(Export::Events).await;
    assert!(
        events.iter().all(|e| e["backfill"] == true),
        "{} of {} live",
        events.iter().filter(|e| e["backfill"] != true).count(),
        events.len()
    );
    let runs = env.runs(Some("events"), 10).await.unwrap();
    assert_eq!(runs.iter().filter(|r| r.status == "failed" && r.error_kind.as_deref() == Some("store")).count(), 3);
    // Each stored event was counted once, by the run whose transaction committed it.
    let counted: u64 = runs.iter().map(|r| r.counts.inserted + r.counts.rematched).sum();
    assert_eq!(counted, events.len() as u64, "{runs:?}");
}

async fn late_rows_within_the_lookback_are_stored_and_counted(backend: Backend) {
    let ingest = EVENTS.replace("[pipelines.events]", "[pipelines.by_ingestion]") + "cursor = \"ingested_at\"\n";
    let env = Env::start(backend.clone(), 2000, &format!("{PEOPLE}{EVENTS}{ingest}")).await;
    env.ok("people", Trigger::Schedule).await;
    env.ok("events", Trigger::Schedule).await;
    env.ok("by_ingestion", Trigger::Schedule).await;
    let now_ish = ago(Duration::from_secs(120));
    let mut rows = Vec::new();
    for i in 0..10 {
        // Within the two-hour lookback of the timestamp cursor.
        rows.push(event(&format!("late90_{i}"), "u_000001", &ago(Duration::from_secs(90 * 60)), &now_ish));
    }
    for i in 0..5 {
        // Beyond it: only an ingestion-time cursor sees these.
        rows.push(event(&format!("late5h_{i}"), "u_000002", &ago(Duration::from_secs(5 * 3600)), &now_ish));
    }
    // A clock three days ahead: quarantined, and it never pushes the cursor ahead.
    let future = (chrono::Utc::now() + chrono::Duration::days(3)).to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    rows.push(event("future_1", "u_000003", &future, &now_ish));
    env.append(demo::EVENTS_TABLE, Value::Array(rows)).await;
    let by_ts = env.ok("events", Trigger::Schedule).await;
    assert_eq!((by_ts.counts.inserted, by_ts.counts.late), (10, 10), "{:?}", by_ts.counts);
    let by_ingestion = env.ok("by_ingestion", Trigger::Schedule).await;
    assert_eq!(
        (by_ingestion.counts.inserted, by_ingestion.counts.late, by_ingestion.counts.quarantined),
        (15, 15, 1),
        "{:?}",
        by_ingestion.counts
    );
    let q = env.export(Export::Quarantine).await;
    let future_row = q.iter().find(|r| r["key"] == "future_1").expect("the future row is quarantined");
    assert!(future_row["reason"].as_str().unwrap().contains("in the future"), "{future_row}");
    for p in ["events", "by_ingestion"] {
        let cursor = env.cursor(p, Slot::Live).await.unwrap().unwrap();
        assert!(cursor <= chrono::Utc::now().timestamp_micros(), "{p}: the cursor never passes now");
    }
    let live: Vec<Value> =
        env.export(Export::Events).await.into_iter().filter(|e| e["event_id"].as_str().unwrap().starts_with("late")).collect();
    assert_eq!(live.len(), 25);
    assert!(live.iter().all(|e| e["backfill"] == false), "incremental rows are live rows");
}

async fn identity_rules_park_rematch_create_and_expire(backend: Backend) {
    let by_email = r#"
[pipelines.by_email]
connection = "emu"
kind = "events"
source = "product.events_v"
event_id = "event_id"
event_name = "event_name"
timestamp = "event_ts"
user_id = "email"
user_id_kind = "email"
"#;
    let external = EVENTS.replace("email = \"email\"\n", "");
    let env = Env::start(backend.clone(), 2000, &format!("{PEOPLE}{external}{by_email}")).await;
    // Events before people: external ids match nobody, so everything is parked.
    let first = env.ok("events", Trigger::Schedule).await;
    assert_eq!(first.counts.inserted, 0);
    assert!(first.counts.parked > 1000, "{:?}", first.counts);
    // People arrive: their parked events land.
    let people = env.ok("people", Trigger::Schedule).await;
    let parked_left = env.totals().await.unwrap().parked;
    assert_eq!(people.counts.rematched + parked_left, first.counts.parked);
    assert!(parked_left > 0 && parked_left < first.counts.parked / 5, "only unknown users stay parked: {parked_left}");
    env.assert_exactly_once("events").await;

    // Email-keyed events match people by email or create them (normalised); NULL emails are quarantined.
    env.append(
        demo::EVENTS_TABLE,
        json!([{"event_id": "mail-1", "event_name": "signed_in", "event_ts": ago(Duration::from_secs(600)), "user_id": "x",
                "email": "  New.Person@Example.COM ", "plan": null, "platform": null, "properties": {}, "ingested_at": ago(Duration::from_secs(600)),
                "event_ts_local": null, "environment": "production"}]),
    )
    .await;
    let before = env.totals().await.unwrap().people;
    let mail = env.ok("by_email", Trigger::Schedule).await;
    assert!(mail.counts.people_created >= 1 && mail.counts.quarantined > 0, "{:?}", mail.counts);
    assert_eq!(env.totals().await.unwrap().people, before + mail.counts.people_created);
    let people = env.export(Export::People).await;
    assert!(people.iter().any(|p| p["email"] == "new.person@example.com" && p["id"].is_null()), "created by email");

    // Parked events wait for their retention, then are dropped and counted.
    let expired = env.run_with(EngineOptions { parked_retention: Duration::ZERO, ..Default::default() }, "events", Trigger::Schedule).await;
    assert_eq!(expired.run.counts.dropped, parked_left);
    assert_eq!(env.totals().await.unwrap().parked, expired.run.counts.parked);
}

async fn attributes_diff_by_hash_clear_nulls_link_people_and_never_delete(backend: Backend) {
    let env = Env::start(backend.clone(), 2000, &format!("{ORGS}{PEOPLE}")).await;
    env.ok("orgs", Trigger::Schedule).await;
    let first = env.ok("people", Trigger::Schedule).await;
    assert_eq!((first.counts.inserted, first.counts.updated), (160, 0));
    let again = env.ok("people", Trigger::Schedule).await;
    assert_eq!((again.counts.unchanged, again.counts.updated, again.counts.inserted), (160, 0, 0), "unchanged records are not rewritten");

    // u_000001 changes name and loses its role; u_000002 vanishes from the source.
    let path = format!("/emulator/v1/tables/{}/rows", demo::PEOPLE);
    env.admin(reqwest::Method::DELETE, &path, json!({"column": "user_id", "equals": "u_000001"})).await;
    env.admin(reqwest::Method::DELETE, &path, json!({"column": "user_id", "equals": "u_000002"})).await;
    env.append(
        demo::PEOPLE,
        json!([{"user_id": "u_000001", "email": "Grace@Example.com", "name": "Grace Hopper", "organisation_id": "org_00003",
                "role": null, "signup_date": "2025-01-02", "updated_at": ago(Duration::from_secs(60))}]),
    )
    .await;
    let changed = env.ok("people", Trigger::Schedule).await;
    assert_eq!((changed.counts.updated, changed.counts.unchanged, changed.counts.rows_read), (1, 158, 159));
    let people = env.export(Export::People).await;
    assert_eq!(people.len(), 160, "a vanished row never deletes");
    let grace = people.iter().find(|p| p["id"] == "u_000001").unwrap();
    assert_eq!(grace["name"], "Grace Hopper");
    assert_eq!(grace["email"], "grace@example.com");
    assert_eq!(grace["organisation_id"], "org_00003");
    let attrs = grace["attributes"]["people"].as_object().unwrap();
    assert!(attrs.get("role").is_none(), "NULL cleared the role: {attrs:?}");
    assert_eq!(attrs["signup_date"], "2025-01-02");
    let orgs = env.export(Export::Organisations).await;
    assert!(orgs.iter().any(|o| o["id"] == "org_00003" && o["domain"].as_str().is_some_and(|d| d.ends_with(".example.com"))));

    // With updated_at, a scheduled run reads only the recently changed rows.
    let incremental = PEOPLE.replace("[pipelines.people]", "[pipelines.people_inc]") + "updated_at = \"updated_at\"\n";
    let env2 = Env::start(backend.clone(), 2000, &incremental).await;
    let full = env2.ok("people_inc", Trigger::Schedule).await;
    assert_eq!(full.counts.rows_read, 160);
    env2.append(
        demo::PEOPLE,
        json!([{"user_id": "u_999999", "email": "late.joiner@example.com", "name": "Late Joiner", "organisation_id": null,
                "role": "member", "signup_date": null, "updated_at": ago(Duration::from_secs(120))}]),
    )
    .await;
    let inc = env2.ok("people_inc", Trigger::Schedule).await;
    assert_eq!((inc.counts.rows_read, inc.counts.inserted), (1, 1));
    let refresh = env2.ok("people_inc", Trigger::FullRefresh).await;
    assert_eq!((refresh.counts.rows_read, refresh.counts.unchanged), (161, 161));
}

async fn schema_drift_fails_naming_the_column_and_keeps_the_cursor(backend: Backend) {
    let base = EVENTS.replace("product.events_v", "product.events") + "where = \"environment = 'production'\"\n";
    let env = Env::start(backend.clone(), 1000, &format!("{PEOPLE}{base}")).await;
    env.ok("events", Trigger::Schedule).await;
    let cursor = env.cursor("events", Slot::Live).await.unwrap();
    let cols = format!("/emulator/v1/tables/{}/columns", demo::EVENTS_TABLE);
    env.admin(reqwest::Method::POST, &cols, json!({"action": "rename", "from": "event_name", "to": "event_type"})).await;
    let f = env.run("events", Trigger::Schedule).await;
    let e = f.error.expect("drift fails the run");
    assert_eq!((e.kind(), e.class()), ("schema_drift", trig_sync::Class::User));
    let msg = e.to_string();
    assert!(
        msg.contains("`event_name`") && msg.contains("did you mean `event_type`") && msg.contains("pipelines.events.event_name"),
        "{msg}"
    );
    assert_eq!(f.run.status, "failed");
    assert_eq!(f.run.error_kind.as_deref(), Some("schema_drift"));
    assert!(f.run.statement_ids.is_empty(), "nothing was read");
    assert_eq!(env.cursor("events", Slot::Live).await.unwrap(), cursor, "the cursor did not move");
    // Renamed back and a new column added: fine.
    env.admin(reqwest::Method::POST, &cols, json!({"action": "rename", "from": "event_type", "to": "event_name"})).await;
    env.admin(reqwest::Method::POST, &cols, json!({"action": "add", "name": "experiment", "type": "STRING"})).await;
    env.ok("events", Trigger::Schedule).await;
}

async fn replay_and_full_refresh_flag_backfill_and_keep_the_live_cursor(backend: Backend) {
    let env = Env::start(backend.clone(), 2000, &format!("{PEOPLE}{EVENTS}")).await;
    env.ok("people", Trigger::Schedule).await;
    env.ok("events", Trigger::Schedule).await;
    let live = env.cursor("events", Slot::Live).await.unwrap().unwrap();
    // Rows three days old arrive: beyond the lookback, a scheduled run misses them.
    let old = ago(Duration::from_secs(3 * 86_400));
    env.append(demo::EVENTS_TABLE, json!([event("old-1", "u_000003", &old, &old), event("old-2", "u_000004", &old, &old)])).await;
    let missed = env.ok("events", Trigger::Schedule).await;
    assert_eq!(missed.counts.inserted, 0);
    let live = env.cursor("events", Slot::Live).await.unwrap().unwrap().max(live);

    let now = chrono::Utc::now().timestamp_micros();
    let day = 86_400 * 1_000_000;
    let replay = env.ok("events", Trigger::Replay { from: now - 4 * day, to: now - 2 * day }).await;
    assert_eq!(replay.counts.inserted, 2);
    assert_eq!(env.cursor("events", Slot::Live).await.unwrap(), Some(live), "a replay never moves the live cursor");
    let replayed: Vec<Value> =
        env.export(Export::Events).await.into_iter().filter(|e| e["event_id"].as_str().unwrap().starts_with("old-")).collect();
    assert!(replayed.len() == 2 && replayed.iter().all(|e| e["backfill"] == true), "{replayed:?}");

    // A full refresh crashes half-way, then resumes from its own checkpoint.
    let small = || EngineOptions { max_window: Duration::from_secs(3 * 86_400), ..Default::default() };
    env.backing.set_failpoint(4, FailAction::Error);
    assert!(env.run_with(small(), "events", Trigger::FullRefresh).await.error.is_some());
    let checkpoint = env.cursor("events", Slot::Backfill).await.unwrap().expect("a full-refresh checkpoint");
    let resumed = env.run_with(small(), "events", Trigger::FullRefresh).await;
    assert!(resumed.error.is_none(), "{:?}", resumed.error);
    assert_eq!(resumed.run.window_from, Some(checkpoint), "resumed where it stopped");
    assert_eq!(resumed.run.counts.inserted, 0, "everything was already stored");
    assert_eq!(env.cursor("events", Slot::Backfill).await.unwrap(), None);
    assert!(env.cursor("events", Slot::Live).await.unwrap().unwrap() >= live);
    env.assert_exactly_once("events").await;
}

async fn remote_failures_fail_with_their_kind_and_throttling_is_survived(backend: Backend) {
    let env = Env::start(backend.clone(), 1000, &format!("{PEOPLE}{EVENTS}")).await;
    env.ok("people", Trigger::Schedule).await;
    env.ok("events", Trigger::Schedule).await;
    let cursor = env.cursor("events", Slot::Live).await.unwrap();

    // Throttled twice, then served: the run succeeds.
    env.admin(
        reqwest::Method::POST,
        "/emulator/v1/faults",
        json!({"kind": "status", "status": 429, "retry_after_secs": 0, "path_prefix": "/api/2.0/sql/statements", "times": 2}),
    )
    .await;
    env.ok("events", Trigger::Schedule).await;

    // A revoked grant: the run fails with the privilege and the GRANT to run.
    let grant =
        json!({"principal": demo::SERVICE_PRINCIPAL, "securable_type": "schema", "full_name": "main.product", "privileges": ["SELECT"]});
    env.admin(reqwest::Method::DELETE, "/emulator/v1/grants", grant.clone()).await;
    let cursor_before = env.cursor("events", Slot::Live).await.unwrap();
    let f = env.run("events", Trigger::Schedule).await;
    let e = f.error.expect("no SELECT fails");
    assert_eq!((e.kind(), e.class()), ("missing_privilege", trig_sync::Class::User));
    assert!(e.hint().unwrap().contains("GRANT SELECT"), "{:?}", e.hint());
    assert_eq!(env.cursor("events", Slot::Live).await.unwrap(), cursor_before);
    env.admin(reqwest::Method::POST, "/emulator/v1/grants", grant).await;

    // A stopped warehouse that only starts manually.
    env.admin(
        reqwest::Method::POST,
        &format!("/emulator/v1/warehouses/{}", demo::WAREHOUSE_ID),
        json!({"state": "STOPPED", "auto_resume": false}),
    )
    .await;
    let f = env.run("events", Trigger::Schedule).await;
    assert_eq!(f.error.as_ref().map(|e| e.kind()), Some("warehouse_stopped"), "{:?}", f.error);
    assert_eq!(f.run.warehouse_state.as_deref(), Some("STOPPED"));
    env.admin(reqwest::Method::POST, &format!("/emulator/v1/warehouses/{}", demo::WAREHOUSE_ID), json!({"auto_resume": true})).await;

    // A warehouse that keeps answering 503: transient, the next run retries.
    env.admin(
        reqwest::Method::POST,
        "/emulator/v1/faults",
        json!({"kind": "status", "status": 503, "path_prefix": "/api/2.0/sql/statements"}),
    )
    .await;
    let f = env.run("events", Trigger::Schedule).await;
    let e = f.error.expect("503s fail the run");
    assert_eq!((e.kind(), e.class()), ("unavailable", trig_sync::Class::Remote));
    env.admin(reqwest::Method::DELETE, "/emulator/v1/faults", Value::Null).await;

    // An expired token.
    env.admin(reqwest::Method::POST, &format!("/emulator/v1/tokens/{}/expire", env.token), Value::Null).await;
    let f = env.run("events", Trigger::Schedule).await;
    assert_eq!(f.error.as_ref().map(|e| e.kind()), Some("token_invalid"), "{:?}", f.error);
    assert!(cursor <= env.cursor("events", Slot::Live).await.unwrap());
    let runs = env.runs(Some("events"), 10).await.unwrap();
    let kinds: Vec<Option<&str>> = runs.iter().map(|r| r.error_kind.as_deref()).collect();
    assert_eq!(kinds[..4], [Some("token_invalid"), Some("unavailable"), Some("warehouse_stopped"), Some("missing_privilege")]);
}

async fn dry_run_shows_the_statement_a_real_run_sends_and_writes_nothing(backend: Backend) {
    let env = Env::start(backend.clone(), 1000, &format!("{PEOPLE}{EVENTS}")).await;
    let engine = env.engine(EngineOptions::default());
    let dry = engine.dry_run("events", Trigger::Schedule, 20).await.unwrap();
    assert!(
        dry.sql.starts_with(
            "SELECT `event_id`, `event_name`, `event_ts`, `user_id`, `email`, `plan`, `platform`\nFROM `main`.`product`.`events_v`"
        ),
        "{}",
        dry.sql
    );
    let names: Vec<&str> = dry.parameters.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["window_from", "window_to"]);
    assert!(dry.parameters.iter().all(|p| p.type_name == "TIMESTAMP"));
    assert_eq!(dry.rows.len(), 20);
    let t = env.totals().await.unwrap();
    assert_eq!((t.events, t.parked, t.quarantined, t.runs, t.people), (0, 0, 0, 0, 0), "a dry run writes nothing");

    // The first statement of a real run is the one the dry run showed.
    let seen: Arc<Mutex<Vec<Query>>> = Arc::default();
    let sink = seen.clone();
    let options =
        EngineOptions { on_statement: Some(Arc::new(move |q: &Query| sink.lock().unwrap().push(q.clone()))), ..Default::default() };
    let f = env.run_with(options, "events", Trigger::Schedule).await;
    assert!(f.error.is_none());
    let sent = seen.lock().unwrap();
    let first_window = sent.iter().find(|q| q.sql.starts_with("SELECT `event_id`")).unwrap();
    assert_eq!(first_window.sql, dry.sql);
    assert_eq!(first_window.parameters[0], dry.parameters[0], "same window start");
}

async fn a_window_failing_while_earlier_ones_are_read_keeps_what_they_committed(backend: Backend) {
    let env = Env::start(backend.clone(), 6000, &format!("{PEOPLE}{EVENTS}")).await;
    env.ok("people", Trigger::Schedule).await;
    // While the fourth window's statement is being built (the first three are
    // sent, and are read while the planner runs ahead), every later statement
    // on the events view starts failing.
    let (base, admin) = (env.emu.base_url(), env.emu.admin_token().to_string());
    let param = |q: &Query, name: &str| q.parameters.iter().find(|p| p.name == name).and_then(|p| p.value.clone());
    let windows = Arc::new(AtomicU32::new(0));
    let third_to: Arc<Mutex<Option<String>>> = Arc::default();
    let (seen, third) = (windows.clone(), third_to.clone());
    let on_statement = move |q: &Query| {
        if !q.sql.starts_with("SELECT `event_id`") {
            return;
        }
        let n = seen.fetch_add(1, Ordering::SeqCst);
        if n == 2 {
            *third.lock().unwrap() = param(q, "window_to");
        }
        if n == 3 {
            let (base, admin) = (base.clone(), admin.clone());
            tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(async {
                    let fault =
                        json!({"kind": "fail_statement", "contains": "events_v", "error_class": "DIVIDE_BY_ZERO", "sql_state": "22012"});
                    let r = reqwest::Client::new().post(format!("{base}/emulator/v1/faults")).bearer_auth(&admin).json(&fault).send().await;
                    assert!(r.unwrap().status().is_success());
                })
            });
        }
    };
    let options = || EngineOptions { max_window: Duration::from_secs(2 * 86_400), write_batch_rows: 150, ..Default::default() };
    let f = env.run_with(EngineOptions { on_statement: Some(Arc::new(on_statement)), ..options() }, "events", Trigger::Schedule).await;
    assert!(f.error.is_some(), "the fourth window fails the run");
    assert_eq!(f.run.status, "failed");
    assert!(windows.load(Ordering::SeqCst) >= 4);
    // The three windows before it committed, each with its cursor; nothing past the cursor.
    let cursor = env.cursor("events", Slot::Backfill).await.unwrap().expect("three windows committed their cursor");
    let stored = env.export(Export::Events).await;
    assert!(!stored.is_empty());
    let last = trig_store::time::rfc3339(cursor);
    assert!(stored.iter().all(|e| e["timestamp"].as_str().unwrap() <= last.as_str()), "rows past the committed cursor");
    env.admin(reqwest::Method::DELETE, "/emulator/v1/faults", Value::Null).await;
    let firsts: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let sink = firsts.clone();
    let record = move |q: &Query| {
        if q.sql.starts_with("SELECT `event_id`") {
            sink.lock().unwrap().push(param(q, "window_from"));
        }
    };
    let resumed = env.run_with(EngineOptions { on_statement: Some(Arc::new(record)), ..options() }, "events", Trigger::Schedule).await;
    assert!(resumed.error.is_none(), "{:?}", resumed.error);
    assert_eq!(resumed.run.window_from, Some(cursor), "resumed after the windows that committed");
    // Exactly the three windows sent before the failure committed: the next run starts where the third ended.
    let third_to = third_to.lock().unwrap().clone();
    assert!(third_to.is_some());
    assert_eq!(firsts.lock().unwrap().first().cloned().flatten(), third_to);
    env.assert_exactly_once("events").await;
}

async fn a_cancelled_run_is_recorded_and_the_next_one_completes(backend: Backend) {
    let env = Env::start(backend.clone(), 3000, &format!("{PEOPLE}{EVENTS}")).await;
    env.ok("people", Trigger::Schedule).await;
    let cancel = CancellationToken::new();
    cancel.cancel();
    let f = env.engine(EngineOptions::default()).run("events", Trigger::Schedule, &cancel).await.unwrap();
    assert_eq!(f.run.status, "cancelled");
    assert_eq!(f.error.map(|e| e.kind()), Some("cancelled"));
    env.ok("events", Trigger::Schedule).await;
    env.assert_exactly_once("events").await;
}

async fn backfill_windows_follow_the_data_density(backend: Backend) {
    let env = Env::start(backend.clone(), 4000, &format!("{PEOPLE}{EVENTS}")).await;
    env.ok("people", Trigger::Schedule).await;
    // About 130 rows a day: windows of ~400 rows are about three days long.
    let windows: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let seen = windows.clone();
    let on_statement = move |q: &Query| {
        let param = |name: &str| q.parameters.iter().find(|p| p.name == name).and_then(|p| p.value.clone()).unwrap();
        if q.sql.starts_with("SELECT `event_id`") {
            seen.lock().unwrap().push((param("window_from"), param("window_to")));
        }
    };
    let options =
        EngineOptions { window_rows: 400, write_batch_rows: 100, on_statement: Some(Arc::new(on_statement)), ..Default::default() };
    let f = env.run_with(options, "events", Trigger::Schedule).await;
    assert!(f.error.is_none(), "{:?}", f.error);
    let statements = f.run.statement_ids.len();
    assert!((7..=20).contains(&statements), "{statements} statements for ~4000 rows in windows of ~400");
    // The first window is sized from the rows the start's statement counted
    // (a quarter of 400 at ~130 a day: about 18 hours), not a fixed day.
    let (from, to) = windows.lock().unwrap()[0].clone();
    let hours = (chrono::DateTime::parse_from_rfc3339(&to).unwrap() - chrono::DateTime::parse_from_rfc3339(&from).unwrap()).num_minutes()
        as f64
        / 60.0;
    assert!((12.0..22.0).contains(&hours), "a first window of {hours} hours ({from} → {to})");
    env.assert_exactly_once("events").await;
}

/// Statements this run sent, from the workspace's own history (its query tags).
async fn statements_of(env: &Env, run_id: &str) -> usize {
    let history = env.admin(reqwest::Method::GET, "/emulator/v1/statements", Value::Null).await;
    history["statements"].as_array().unwrap().iter().filter(|s| s.to_string().contains(run_id)).count()
}

async fn a_sparse_source_costs_statements_by_its_rows_not_its_calendar(backend: Backend) {
    // One row stamped 1970-01-01 in a table whose other rows are from the last month.
    let env = Env::start(backend.clone(), 4000, &format!("{PEOPLE}{EVENTS}")).await;
    env.ok("people", Trigger::Schedule).await;
    env.append(demo::EVENTS_TABLE, json!([event("epoch-1", "u_000003", "1970-01-01T00:00:00Z", "1970-01-01T00:00:00Z")])).await;
    let first = env.ok("events", Trigger::Schedule).await;
    let sent = statements_of(&env, &first.run_id).await;
    assert!(sent <= 10, "{sent} statements for one old row and a month of data");
    env.assert_exactly_once("events").await;
    assert!(env.ids(Export::Events).await.contains(&"epoch-1".to_string()), "the old row is read");

    // A backfill from year 1 costs no more.
    let env = Env::start(backend.clone(), 4000, &format!("{PEOPLE}{EVENTS}backfill_from = \"0001-01-01T00:00:00Z\"\n")).await;
    env.ok("people", Trigger::Schedule).await;
    let first = env.ok("events", Trigger::Schedule).await;
    let sent = statements_of(&env, &first.run_id).await;
    assert!(sent <= 10, "{sent} statements for a backfill from 0001-01-01");
    env.assert_exactly_once("events").await;
}

async fn a_properties_column_merges_its_keys_and_listed_properties_win(backend: Backend) {
    let with_column = EVENTS.replace("[pipelines.events]", "[pipelines.merged]") + "properties_column = \"properties\"\n";
    let env = Env::start(backend.clone(), 500, &format!("{PEOPLE}{with_column}")).await;
    env.ok("people", Trigger::Schedule).await;
    env.ok("merged", Trigger::Schedule).await;
    let at = ago(Duration::from_secs(600));
    let mut e = event("props-1", "u_000003", &at, &at);
    e["properties"] = json!({"feature": "export", "plan": "from-the-map", "seats": "12"});
    env.append(demo::EVENTS_TABLE, json!([e])).await;
    env.ok("merged", Trigger::Schedule).await;
    let stored = env.export(Export::Events).await.into_iter().find(|e| e["event_id"] == "props-1").expect("stored");
    let props = stored["properties"].as_object().unwrap();
    assert_eq!(props["feature"], "export", "{stored}");
    assert_eq!(props["seats"], "12", "{stored}");
    assert_eq!(props["plan"], "growth", "the listed column wins a clash: {stored}");
    assert_eq!(props["platform"], "web");
}

async fn a_workspace_refusing_query_tags_is_synced_untagged_and_the_run_says_so(backend: Backend) {
    let env = Env::start(backend.clone(), 500, &format!("{PEOPLE}{EVENTS}")).await;
    env.admin(reqwest::Method::POST, "/emulator/v1/faults", json!({"kind": "refuse_query_tags"})).await;
    env.ok("people", Trigger::Schedule).await;
    let run = env.ok("events", Trigger::Schedule).await;
    assert!(run.notes.iter().any(|n| n.contains("refuses query_tags")), "{:?}", run.notes);
    let stored = env.runs(Some("events"), 1).await.unwrap().remove(0);
    assert_eq!(stored.notes, run.notes, "the note is in the stored record");
    env.assert_exactly_once("events").await;
}

async fn a_run_keeps_its_lease_by_heartbeat_and_stops_writing_when_it_loses_it(backend: Backend) {
    let env = Env::start(backend.clone(), 4000, &format!("{PEOPLE}{EVENTS}")).await;
    env.ok("people", Trigger::Schedule).await;
    // Slow answers make the run outlast its lease's TTL several times over: the heartbeat keeps it.
    let slow = json!({"kind": "latency", "ms": 250, "times": 8});
    env.admin(reqwest::Method::POST, "/emulator/v1/faults", slow.clone()).await;
    let short = || EngineOptions { lease_ttl: Duration::from_millis(300), ..EngineOptions::default() };
    let started = std::time::Instant::now();
    let f = env.run_with(short(), "events", Trigger::Schedule).await;
    assert!(f.error.is_none(), "{:?}", f.error);
    assert!(started.elapsed() > Duration::from_millis(900), "the run outlasted the TTL: {:?}", started.elapsed());
    let stored = env.totals().await.unwrap().events;
    assert!(stored > 0);

    // Another run, whose lease is taken over while it waits on Databricks: it stops with
    // LeaseLost, writes nothing more, and the new holder's claim closes its record.
    env.admin(reqwest::Method::POST, "/emulator/v1/faults", slow).await;
    let thief = async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        tokio::task::block_in_place(|| {
            env.backing.execute(
                "UPDATE pipelines SET fence = fence + 1, holder = 'another worker', holder_host = 'elsewhere', holder_pid = 1,
                   lease_until = lease_until + 600000000 WHERE name = 'events'",
            )
        });
    };
    let (engine, cancel) = (env.engine(short()), CancellationToken::new());
    let (run, ()) = tokio::join!(engine.run("events", Trigger::Schedule, &cancel), thief);
    let e = run.unwrap_err();
    assert!(
        matches!(&e, trig_sync::Error::Store(trig_store::Error::LeaseLost { reason, .. }) if reason.contains("another worker")),
        "{e:?}"
    );
    assert_eq!(e.kind(), "lease_lost");
    assert_eq!(env.totals().await.unwrap().events, stored, "nothing written after the takeover");
    // Held by the other worker: a third run does not start and names it.
    let e = env.engine(short()).run("events", Trigger::Schedule, &CancellationToken::new()).await.unwrap_err();
    assert!(
        matches!(&e, trig_sync::Error::Store(trig_store::Error::LeaseHeld { holder, .. }) if holder.contains("another worker")),
        "{e:?}"
    );
    let runs = env.runs(Some("events"), 5).await.unwrap();
    assert_eq!(runs[0].status, "running", "the zombie's record is left for the holder's claim to close");
}

/// What a store holds, comparable across stores: every export, each row
/// without the instants of its writing, in one order.
async fn contents(env: &Env, up_to: i64) -> BTreeMap<&'static str, Vec<String>> {
    let up_to = trig_store::time::rfc3339(up_to);
    let mut out = BTreeMap::new();
    for (name, what) in [
        ("events", Export::Events),
        ("parked", Export::Parked),
        ("people", Export::People),
        ("organisations", Export::Organisations),
        ("quarantine", Export::Quarantine),
    ] {
        let mut rows: Vec<String> = env
            .export(what)
            .await
            .into_iter()
            // Both stores read up to the earlier of their cursors.
            .filter(|r| r["timestamp"].as_str().is_none_or(|t| t <= up_to.as_str()))
            .map(|mut r| {
                let o = r.as_object_mut().unwrap();
                for volatile in ["run_id", "at", "parked_at", "ingested_at"] {
                    o.remove(volatile);
                }
                r.to_string()
            })
            .collect();
        rows.sort();
        out.insert(name, rows);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_and_postgres_store_the_same_rows_for_the_same_source() {
    let Some(pg) = Backend::postgres() else { return };
    let pipelines = format!("{ORGS}{PEOPLE}{EVENTS}");
    let lite = Env::start(Backend::Sqlite, 3000, &pipelines).await;
    let post = lite.beside(pg, &pipelines);
    let both = [&lite, &post];
    // Events first (parked: no people yet), then the attributes that land them, then more of each.
    for p in ["events", "orgs", "people", "events"] {
        let (a, b) = (lite.ok(p, Trigger::Schedule).await, post.ok(p, Trigger::Schedule).await);
        assert_eq!(a.counts, b.counts, "{p}: the same run on each store counts the same");
    }
    let at = ago(Duration::from_secs(600));
    lite.append(demo::EVENTS_TABLE, json!([event("same-1", "u_000004", &at, &at), event("same-2", "nobody", &at, &at)])).await;
    let path = format!("/emulator/v1/tables/{}/rows", demo::PEOPLE);
    lite.admin(reqwest::Method::DELETE, &path, json!({"column": "user_id", "equals": "u_000005"})).await;
    lite.append(
        demo::PEOPLE,
        json!([{"user_id": "u_000005", "email": "moved@example.com", "name": "Moved", "organisation_id": null,
                "role": null, "signup_date": null, "updated_at": at}]),
    )
    .await;
    for p in ["people", "events"] {
        let (a, b) = (lite.ok(p, Trigger::Schedule).await, post.ok(p, Trigger::Schedule).await);
        assert_eq!(a.counts, b.counts, "{p}: the same run on each store counts the same");
    }
    let mut cursors = Vec::new();
    for env in both {
        cursors.push(env.cursor("events", Slot::Live).await.unwrap().unwrap());
    }
    let up_to = *cursors.iter().min().unwrap();
    let (a, b) = (contents(&lite, up_to).await, contents(&post, up_to).await);
    for (what, rows) in &a {
        assert!(!rows.is_empty(), "the comparison covers {what}");
        let other = &b[what];
        assert_eq!(rows.len(), other.len(), "{what}: as many rows on each store");
        for (x, y) in rows.iter().zip(other) {
            assert_eq!(x, y, "{what}: row for row the same");
        }
    }
    let (ta, tb) = (lite.totals().await.unwrap(), post.totals().await.unwrap());
    assert_eq!(format!("{ta:?}"), format!("{tb:?}"));
}

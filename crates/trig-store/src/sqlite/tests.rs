//! What only the SQLite backend has: its file (busy, damaged, read-only),
//! its migrations from older files, and the failpoint. The rules are the
//! conformance suite's (`tests/store.rs`).

use super::*;
#[cfg(feature = "failpoints")]
use crate::FailAction;
use crate::{EventRow, IdentityRule, Progress};

fn temp_db(name: &str) -> (std::path::PathBuf, String) {
    let dir = std::env::temp_dir().join(format!("trig-store-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("trig.db").to_str().unwrap().to_string();
    (dir, file)
}

fn ev(id: &str, user: &str) -> EventRow {
    EventRow {
        event_id: id.into(),
        name: "signed_in".into(),
        ts: 1_700_000_000_000_000,
        user_key: user.into(),
        email: None,
        properties: "{}".into(),
        late: false,
    }
}

/// A pipeline of the default tenant, leased, with a run begun.
async fn leased(s: &SqliteStore, pipeline: &str) -> (Fence, RunKey) {
    let t = s.tenant("default").await.unwrap();
    let key = s.pipeline(t, pipeline).await.unwrap();
    let lease = s.claim(key, &Holder::this_process("test"), Duration::from_secs(60)).await.unwrap();
    let run = SyncRun { run_id: format!("run-{pipeline}"), pipeline: pipeline.into(), status: "running".into(), ..Default::default() };
    let run = s.begin_run(lease.fence, &run).await.unwrap();
    (lease.fence, run)
}

fn batch(fence: Fence, run: RunKey, rows: Vec<EventRow>) -> EventBatch {
    EventBatch {
        fence,
        run,
        rule: IdentityRule::Email,
        backfill: false,
        rows,
        quarantine: vec![],
        checkpoints: vec![],
        progress: Progress::default(),
    }
}

#[cfg(feature = "failpoints")]
#[tokio::test]
async fn a_failed_commit_leaves_nothing_behind() {
    use crate::Checkpoint;
    let s = SqliteStore::open(":memory:").unwrap();
    let (fence, run) = leased(&s, "p").await;
    s.set_failpoint(1, FailAction::Error);
    let mut b = batch(fence, run, vec![ev("e1", "a@x.com")]);
    b.checkpoints.push(Checkpoint { slot: Slot::Live, value: Some(7) });
    assert!(s.write_events(b.clone()).await.is_err());
    assert_eq!(s.totals(fence.pipeline.tenant).await.unwrap().events, 0);
    assert_eq!(s.cursor(fence.pipeline, Slot::Live).await.unwrap(), None);
    assert_eq!(s.write_events(b).await.unwrap().inserted, 1);
    assert_eq!(s.cursor(fence.pipeline, Slot::Live).await.unwrap(), Some(7));
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
        let (fence, run) = leased(&s, tag).await;
        for i in 0..40 {
            let rows = (0..200).map(|j| ev(&format!("{tag}-{i}-{j}"), &format!("{tag}{j}@x.com"))).collect();
            s.write_events(batch(fence, run, rows)).await?;
        }
        Ok::<_, Error>(fence.pipeline.tenant)
    };
    let (ra, rb) = tokio::join!(write(a.clone(), "a"), write(b, "b"));
    let t = ra.unwrap();
    rb.unwrap();
    assert_eq!(a.totals(t).await.unwrap().events, 2 * 40 * 200);
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn a_lock_held_past_the_timeout_is_a_transient_busy_error_naming_the_file() {
    let (dir, file) = temp_db("busy");
    let s = SqliteStore::open_with(&file, Duration::from_millis(300)).unwrap();
    let (fence, run) = leased(&s, "p").await;
    let holder = Connection::open(&file).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE; UPDATE tenants SET name = name;").unwrap();
    let e = s.write_events(batch(fence, run, vec![ev("e1", "a@x.com")])).await.unwrap_err();
    assert!(matches!(&e, Error::Busy { path, timeout_secs: 0 } if path == &file), "{e:?}");
    assert!(e.is_transient() && !e.is_user_fixable());
    holder.execute_batch("ROLLBACK").unwrap();
    // Released: the same write goes through, nothing half-written before.
    assert_eq!(s.write_events(batch(fence, run, vec![ev("e1", "a@x.com")])).await.unwrap().inserted, 1);
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
fn a_newer_database_is_refused_naming_both_versions() {
    let (dir, file) = temp_db("newer");
    drop(SqliteStore::open(&file).unwrap());
    Connection::open(&file).unwrap().pragma_update(None, "user_version", SCHEMA_VERSION + 4).unwrap();
    let e = SqliteStore::open(&file).unwrap_err();
    assert!(matches!(&e, Error::TooNew { found, supported, .. } if *found == SCHEMA_VERSION + 4 && *supported == SCHEMA_VERSION), "{e:?}");
    let said = e.to_string();
    assert!(said.contains(&format!("schema version {}", SCHEMA_VERSION + 4)) && said.contains("upgrade trig-databricks"), "{said}");
    std::fs::remove_dir_all(dir).ok();
}

/// Rows written by the version 1 schema, as a version 1 binary wrote them.
const V1_ROWS: &str = "
    INSERT INTO organisations VALUES (1, 'o1', 'Acme', 'acme.com', '{\"orgs\":{\"tier\":\"gold\"}}', 1, 1);
    INSERT INTO people VALUES (1, 'u1', 'pat@acme.com', 'Pat', 'o1', '{\"people\":{\"role\":\"admin\"}}', 1, 1);
    INSERT INTO people VALUES (2, NULL, 'sam@acme.com', NULL, NULL, '{}', 1, 1);
    INSERT INTO sync_runs (id, run_id, pipeline, trigger, status, started_at, ended_at, inserted)
      VALUES (1, 'run-1', 'events', 'schedule', 'succeeded', 10, 20, 2);
    INSERT INTO events VALUES (1, 'events', 'e1', 'signed_in', 100, 1, '{\"plan\":\"pro\"}', 0, 11, 'run-1');
    INSERT INTO events VALUES (2, 'events', 'e2', 'signed_in', 200, 2, '{}', 1, 12, 'run-1');
    INSERT INTO parked_events VALUES (1, 'events', 'e3', 'clicked', 300, 'external_id', 'u9', NULL, '{}', 0, 13, 'run-1');
    INSERT INTO quarantine VALUES (1, 'events', 'run-1', 'e4', 'no timestamp', '{\"id\":\"e4\"}', 'h', 14);
    INSERT INTO record_hashes VALUES ('people', 'u1', 'hash-u1');
    INSERT INTO cursors VALUES ('events', 'live', 250, 15);
    INSERT INTO cursors VALUES ('events', 'full_refresh', 150, 15);
";

#[tokio::test]
async fn a_version_1_store_migrates_in_place_into_the_default_tenant() {
    for from in [1, 2] {
        let (dir, file) = temp_db(&format!("v{from}"));
        let c = Connection::open(&file).unwrap();
        c.execute_batch(MIGRATIONS[0]).unwrap();
        c.execute_batch(V1_ROWS).unwrap();
        if from == 2 {
            c.execute_batch(MIGRATIONS[1]).unwrap();
        }
        c.pragma_update(None, "user_version", from).unwrap();
        drop(c);
        let s = SqliteStore::open(&file).unwrap();
        let t = s.tenant("default").await.unwrap();
        assert_eq!(t, TenantId(1), "the old rows are the default tenant's");
        let totals = s.totals(t).await.unwrap();
        assert_eq!(
            (totals.organisations, totals.people, totals.events, totals.backfilled_events, totals.parked, totals.quarantined, totals.runs),
            (1, 2, 2, 1, 1, 1, 1),
            "from v{from}"
        );
        let events = s.pipeline(t, "events").await.unwrap();
        assert_eq!(s.cursor(events, Slot::Live).await.unwrap(), Some(250));
        assert_eq!(s.cursor(events, Slot::Backfill).await.unwrap(), Some(150), "the old full_refresh slot is the backfill slot");
        let runs = s.runs(t, Some("events"), 5).await.unwrap();
        assert_eq!((runs[0].run_id.as_str(), runs[0].counts.inserted), ("run-1", 2));
        let (rows, _) = s.export_page(t, Export::Events, None, 10).await.unwrap();
        assert_eq!(rows[0]["person_id"], "u1");
        assert_eq!(rows[0]["properties"]["plan"], "pro");
        // Each event keeps its run's backfill flag and time of storing (v7 keeps them in a batch row).
        let kept: Vec<(bool, &str)> = rows.iter().map(|r| (r["backfill"].as_bool().unwrap(), r["ingested_at"].as_str().unwrap())).collect();
        assert_eq!(kept, [(false, "1970-01-01T00:00:00.000011Z"), (true, "1970-01-01T00:00:00.000012Z")], "from v{from}");
        let (q, _) = s.export_page(t, Export::Quarantine, None, 10).await.unwrap();
        assert_eq!(q[0]["run_id"], "run-1");
        // The migrated store works on: a re-read is deduplicated, the hash still skips.
        let (fence, run) = leased(&s, "events").await;
        let o = s.write_events(batch(fence, run, vec![ev("e1", "pat@acme.com"), ev("e5", "pat@acme.com")])).await.unwrap();
        assert_eq!((o.inserted, o.deduplicated, o.people_created), (1, 1, 0));
        let c = Connection::open(&file).unwrap();
        let v: i64 = c.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        let left: i64 =
            c.query_row("SELECT count(*) FROM sqlite_master WHERE name LIKE 'v2_%' OR name LIKE 'v6_%'", [], |r| r.get(0)).unwrap();
        assert_eq!(left, 0, "no table of the old layout is left");
        std::fs::remove_dir_all(dir).ok();
    }
}

#[test]
fn a_migration_that_fails_leaves_the_old_version_whole() {
    let (dir, file) = temp_db("v1-broken");
    let c = Connection::open(&file).unwrap();
    c.execute_batch(MIGRATIONS[0]).unwrap();
    c.execute_batch(V1_ROWS).unwrap();
    // A table the migration creates exists already: its step fails half-way.
    c.execute_batch("CREATE TABLE tenants (x INTEGER); PRAGMA user_version = 1;").unwrap();
    drop(c);
    assert!(SqliteStore::open(&file).is_err());
    let c = Connection::open(&file).unwrap();
    let v: i64 = c.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
    let events: i64 = c.query_row("SELECT count(*) FROM events WHERE pipeline = 'events'", [], |r| r.get(0)).unwrap();
    assert_eq!((v, events), (1, 2), "rolled back: still version 1, with its rows");
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn committed_pages_reach_the_database_file_without_the_writer_checkpointing() {
    let (dir, file) = temp_db("checkpointer");
    let s = SqliteStore::open(&file).unwrap();
    let (fence, run) = leased(&s, "p").await;
    let before = std::fs::metadata(&file).unwrap().len();
    let rows = (0..5000).map(|i| ev(&format!("event-{i:06}"), "a@x.com")).collect();
    s.write_events(batch(fence, run, rows)).await.unwrap();
    // The writer checkpoints itself only past 64 MiB of WAL; these pages
    // reach the file because the checkpointer thread copies them.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let grown = loop {
        let now = std::fs::metadata(&file).unwrap().len();
        if now >= before + 256 * 1024 || std::time::Instant::now() > deadline {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(grown >= before + 256 * 1024, "the database file stayed at {grown} bytes (from {before}): nothing was checkpointed");
    drop(s);
    let _ = std::fs::remove_dir_all(dir);
}

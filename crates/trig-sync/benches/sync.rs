//! Does a sync run at the speed of its destination?
//!
//! For 100k and 1M events (the demo dataset, `main.product.events_v`), in
//! fresh processes so each peak RSS is the sync's own:
//!
//! - the emulator serves in a child process;
//! - a second child syncs people (untimed), then the events pipeline's
//!   first sync (a backfill) into a fresh SQLite file, timed end to end:
//!   statements, downloads, Arrow decode, mapping, identity, dedup,
//!   parking, quarantine, transactions; its peak RSS is read from VmHWM;
//! - the **ceiling**, in the same child right after: the rows that sync
//!   stored, read back into memory, then inserted into a fresh database
//!   with the same schema, indexes and settings, in transactions of the
//!   same size, with no sync logic at all.
//!
//! `cargo bench -p trig-sync --bench sync` (BENCH_SIZES=100000,1000000 changes the sizes).

#![allow(clippy::print_stdout)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use databricks_emulator::demo::{self, DemoOptions};
use databricks_emulator::{ChunkPolicy, EmulatorConfig};
use rusqlite::params;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use trig_config::Config;
use trig_store::SqliteStore;
use trig_sync::{Engine, EngineOptions, Trigger};

/// Rows per transaction, for the sync and the ceiling alike (BENCH_WRITE_BATCH changes it).
fn write_batch() -> usize {
    std::env::var("BENCH_WRITE_BATCH").ok().and_then(|v| v.parse().ok()).unwrap_or(EngineOptions::default().write_batch_rows)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    match std::env::var("TRIG_BENCH_ROLE").as_deref() {
        Ok("serve") => return rt.block_on(serve()),
        Ok("sync") => return rt.block_on(sync()),
        _ => {}
    }
    let sizes: Vec<u64> =
        std::env::var("BENCH_SIZES").unwrap_or_else(|_| "100000,1000000".into()).split(',').filter_map(|s| s.trim().parse().ok()).collect();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("sync of the events pipeline's first run (a backfill) into SQLite; {cores} cores; write batches of {} rows", write_batch());
    let mut results = Vec::new();
    for n in sizes {
        let mut emu = child("serve", n, None);
        let mut line = String::new();
        BufReader::new(emu.stdout.take().unwrap()).read_line(&mut line).expect("the emulator prints its address");
        let mut best: Option<Value> = None;
        for _ in 0..3 {
            let mut s = child("sync", n, Some(line.trim()));
            let mut out = String::new();
            BufReader::new(s.stdout.take().unwrap()).read_line(&mut out).expect("the sync prints its result");
            let _ = s.wait();
            let r: Value = serde_json::from_str(&out).expect("a JSON result");
            println!("  {n} events: {r}");
            if best.as_ref().is_none_or(|b| r["sync_rows_per_s"].as_f64() > b["sync_rows_per_s"].as_f64()) {
                best = Some(r);
            }
        }
        let _ = emu.kill();
        let _ = emu.wait();
        results.push((n, best.unwrap()));
    }
    println!("\nbest of 3 per size:");
    println!("| events | sync rows read/s | sync events stored/s | ceiling inserts/s | ratio stored/ceiling | peak RSS (sync) |");
    println!("|---|---|---|---|---|---|");
    for (n, r) in &results {
        println!(
            "| {n} | {:.0} | {:.0} | {:.0} | {:.2} | {:.0} MiB |",
            r["sync_rows_per_s"].as_f64().unwrap(),
            r["sync_stored_per_s"].as_f64().unwrap(),
            r["ceiling_rows_per_s"].as_f64().unwrap(),
            r["sync_stored_per_s"].as_f64().unwrap() / r["ceiling_rows_per_s"].as_f64().unwrap(),
            r["peak_rss_mib"].as_f64().unwrap()
        );
    }
    if let [(_, small), .., (_, large)] = results.as_slice() {
        println!(
            "peak RSS ratio largest / smallest: {:.2}",
            large["peak_rss_mib"].as_f64().unwrap() / small["peak_rss_mib"].as_f64().unwrap()
        );
    }
}

fn child(role: &str, events: u64, info: Option<&str>) -> std::process::Child {
    let mut c = Command::new(std::env::current_exe().expect("own path"));
    c.env("TRIG_BENCH_ROLE", role).env("BENCH_EVENTS", events.to_string()).stdout(Stdio::piped());
    if let Some(i) = info {
        c.env("BENCH_INFO", i);
    }
    c.spawn().expect("child starts")
}

fn events() -> u64 {
    std::env::var("BENCH_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000)
}

async fn serve() {
    let options = DemoOptions { events: events(), start_delay_ms: Some(0), running: true, ..Default::default() };
    let loaded = demo::workspace(&options).await.expect("dataset loads");
    let token = loaded.tokens["service_principal"].clone();
    let config = EmulatorConfig { chunk_policy: ChunkPolicy { max_rows: 131_072, max_bytes: 16 << 20 }, ..Default::default() };
    let running = databricks_emulator::start(loaded.workspace, config, "127.0.0.1:0").await.expect("starts");
    println!("{}", json!({"base": running.base_url(), "token": token, "host": running.addr().to_string()}));
    running.serve_until(std::future::pending()).await;
}

fn status_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb: f64 =
        status.lines().find_map(|l| l.strip_prefix(field)).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).unwrap_or(0.0);
    kb / 1024.0
}

async fn sync() {
    let info: Value = serde_json::from_str(&std::env::var("BENCH_INFO").expect("BENCH_INFO")).expect("JSON");
    let dir = std::env::temp_dir().join(format!("trig-sync-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("token"), info["token"].as_str().unwrap()).unwrap();
    let text = trig_config::demo::store("sqlite://trig.db")
        + &trig_config::demo::connection(
            "bench",
            info["base"].as_str().unwrap(),
            demo::WAREHOUSE_ID,
            info["host"].as_str().unwrap(),
            "token",
        )
        + &trig_config::demo::people("people", "bench")
        + &trig_config::demo::events("events", "bench")
        + "properties_column = \"properties\"\n";
    std::fs::write(dir.join("trig.toml"), text).unwrap();
    let config = Config::load(&dir.join("trig.toml")).expect("config");
    let db = dir.join("trig.db");
    let store = Arc::new(Timed { inner: SqliteStore::open(db.to_str().unwrap()).unwrap(), busy_us: Default::default() });
    let mut options = EngineOptions { write_batch_rows: write_batch(), ..Default::default() };
    if let Some(n) = std::env::var("BENCH_CHUNKS").ok().and_then(|v| v.parse().ok()) {
        options.query.max_concurrent_chunks = n;
    }
    if let Some(n) = std::env::var("BENCH_WINDOW_ROWS").ok().and_then(|v| v.parse().ok()) {
        options.window_rows = n;
    }
    if let Some(d) = std::env::var("BENCH_WINDOW_HOURS").ok().and_then(|v| v.parse::<u64>().ok()) {
        options.max_window = std::time::Duration::from_secs(d * 3600);
    }
    let engine = Engine::new(config, store.clone(), options);
    let cancel = CancellationToken::new();
    let people = engine.run("people", Trigger::Schedule, &cancel).await.unwrap();
    assert!(people.error.is_none());

    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let t = Instant::now();
    let f = engine.run("events", Trigger::Schedule, &cancel).await.unwrap();
    let elapsed = t.elapsed().as_secs_f64();
    assert!(f.error.is_none(), "{:?}", f.error);
    let peak = status_mib("VmHWM:");
    let c = f.run.counts;
    let stored = c.inserted + c.parked;

    let ceiling = ceiling(&db, &dir.join("ceiling.db"));
    println!(
        "{}",
        json!({
            "rows_read": c.rows_read, "inserted": c.inserted, "parked": c.parked, "deduplicated": c.deduplicated,
            "quarantined": c.quarantined, "sync_s": elapsed,
            "sync_rows_per_s": c.rows_read as f64 / elapsed, "sync_stored_per_s": stored as f64 / elapsed,
            "ceiling_rows": ceiling.0, "ceiling_s": ceiling.1, "ceiling_rows_per_s": ceiling.0 as f64 / ceiling.1,
            "peak_rss_mib": peak,
            "store_busy_s": store.busy_us.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e6,
        })
    );
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The stored events, inserted straight into a fresh database of the same
/// schema and settings in transactions of the same size. Returns (rows, seconds).
fn ceiling(synced: &std::path::Path, fresh: &std::path::Path) -> (u64, f64) {
    drop(SqliteStore::open(fresh.to_str().unwrap()).expect("schema")); // same schema and indexes
    let mut c = rusqlite::Connection::open(fresh).unwrap();
    c.pragma_update(None, "synchronous", "NORMAL").unwrap();
    c.pragma_update(None, "foreign_keys", "ON").unwrap();
    c.pragma_update(None, "cache_size", -trig_store::sqlite::PAGE_CACHE_KIB).unwrap();
    c.execute("ATTACH DATABASE ?1 AS src", [synced.to_str().unwrap()]).unwrap();
    c.execute("INSERT INTO people SELECT * FROM src.people", []).unwrap();
    type Row = (String, String, String, i64, i64, String, bool, i64, String);
    let rows: Vec<Row> = {
        let mut s = c
            .prepare(
                "SELECT pipeline, event_id, name, ts, person_id, properties, backfill, ingested_at, run_id FROM src.events ORDER BY id",
            )
            .unwrap();
        s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?, r.get(8)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    c.execute("DETACH DATABASE src", []).unwrap();
    let t = Instant::now();
    for chunk in rows.chunks(write_batch()) {
        let tx = c.transaction().unwrap();
        {
            let mut s = tx
                .prepare_cached(
                    "INSERT INTO events (pipeline, event_id, name, ts, person_id, properties, backfill, ingested_at, run_id)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )
                .unwrap();
            for r in chunk {
                s.execute(params![r.0, r.1, r.2, r.3, r.4, r.5, r.6, r.7, r.8]).unwrap();
            }
        }
        tx.commit().unwrap();
    }
    (rows.len() as u64, t.elapsed().as_secs_f64())
}

/// The store, timing its event writes: how much of the sync the destination was busy.
struct Timed {
    inner: SqliteStore,
    busy_us: std::sync::atomic::AtomicU64,
}

#[async_trait::async_trait]
impl trig_store::Store for Timed {
    async fn cursor(&self, p: &str, s: trig_store::Slot) -> Result<Option<i64>, trig_store::Error> {
        self.inner.cursor(p, s).await
    }
    async fn claim(&self, p: &str) -> Result<trig_store::Claim, trig_store::Error> {
        self.inner.claim(p).await
    }
    async fn write_events(&self, b: trig_store::EventBatch) -> Result<trig_store::EventOutcome, trig_store::Error> {
        let t = Instant::now();
        let r = self.inner.write_events(b).await;
        self.busy_us.fetch_add(t.elapsed().as_micros() as u64, std::sync::atomic::Ordering::Relaxed);
        r
    }
    async fn write_records(&self, b: trig_store::RecordBatch) -> Result<trig_store::RecordOutcome, trig_store::Error> {
        self.inner.write_records(b).await
    }
    async fn rematch_parked(&self, p: Option<&str>, run_id: &str) -> Result<u64, trig_store::Error> {
        self.inner.rematch_parked(p, run_id).await
    }
    async fn expire_parked(&self, p: &str, before: i64, run_id: &str) -> Result<u64, trig_store::Error> {
        self.inner.expire_parked(p, before, run_id).await
    }
    async fn begin_run(&self, r: &trig_store::SyncRun) -> Result<(), trig_store::Error> {
        self.inner.begin_run(r).await
    }
    async fn finish_run(&self, r: &trig_store::SyncRun) -> Result<(), trig_store::Error> {
        self.inner.finish_run(r).await
    }
    async fn runs(&self, p: Option<&str>, n: usize) -> Result<Vec<trig_store::SyncRun>, trig_store::Error> {
        self.inner.runs(p, n).await
    }
    async fn export_page(&self, w: trig_store::Export, a: i64, n: usize) -> Result<(Vec<Value>, i64), trig_store::Error> {
        self.inner.export_page(w, a, n).await
    }
    async fn totals(&self) -> Result<trig_store::Totals, trig_store::Error> {
        self.inner.totals().await
    }
}

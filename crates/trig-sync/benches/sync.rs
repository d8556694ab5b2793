//! Is a sync faster than what a user would write instead?
//!
//! For 100k and 1M events (the demo dataset, `main.product.events_v`), in
//! fresh processes so each peak RSS is the sync's own, best of 3:
//!
//! - the emulator serves in a child process;
//! - **ours**: a second child syncs people (untimed), then the events
//!   pipeline's first sync (a backfill) into a fresh SQLite file, timed end
//!   to end: statements, downloads, Arrow decode, mapping, identity, dedup,
//!   parking, quarantine, transactions; its peak RSS is read from VmHWM;
//! - **ours with the script's requests**: the same sync asking for chunks
//!   without LZ4 (`QueryOptions::compression` off), as the official SDK asks.
//!   Our default asks for LZ4 frames, which Databricks compresses on its own
//!   machines; here the emulator compresses them on the same two cores as
//!   the sync, work the script's requests never cause. This row compares
//!   like with like;
//! - **the user's script** (`benches/user_script.py`), on the same emulator
//!   and rows: the official Databricks SDK for Python (EXTERNAL_LINKS +
//!   ARROW_STREAM), pyarrow, and sqlite3 `executemany` into a 7-column table
//!   with a primary key. The bench installs `databricks-sdk` and `pyarrow`
//!   into a virtual environment of its own (`$TMPDIR/trig-bench-venv`);
//! - **a bare insert**, the physical bound: the rows our sync stored, as 7
//!   text columns, inserted by prepared statement into a fresh 7-column
//!   table with a primary key, in transactions of the same size.
//!
//! - **PostgreSQL** (when `TRIG_BENCH_POSTGRES_URL` or `TRIG_TEST_POSTGRES_URL`
//!   names a server): the same sync into a fresh database on it, against a
//!   **bare binary COPY** of the rows it stored into a fresh table like our
//!   `events` (same columns, same primary key), in transactions of the same
//!   size, in the same run.
//!
//! Each result also says where the CPU went during the timed part: this
//! process, the emulator beside it and the PostgreSQL server (`cpu_s`).
//! Beside the best-of-3 tables, each round's own ratio (ours against the
//! baseline measured in that round) and their median, and each round's
//! peak RSS with the ratio of the medians: the comparisons without choosing
//! a round.
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
use trig_store::{PostgresStore, SqliteStore, Store};
use trig_sync::{Engine, EngineOptions, Trigger};

/// The allocator of the `trig-databricks` binary, so the sync here runs as it does there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Rows per transaction, for the sync and the ceiling alike (BENCH_WRITE_BATCH changes it).
fn write_batch() -> usize {
    std::env::var("BENCH_WRITE_BATCH").ok().and_then(|v| v.parse().ok()).unwrap_or(EngineOptions::default().write_batch_rows)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    match std::env::var("TRIG_BENCH_ROLE").as_deref() {
        Ok("serve") => return rt.block_on(serve()),
        Ok("sync") => {
            // RUST_LOG=trig_sync=debug: the pump's timers (writer busy, reader mapping and waiting) on stderr.
            if std::env::var_os("RUST_LOG").is_some() {
                tracing_subscriber::fmt()
                    .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                    .with_writer(std::io::stderr)
                    .init();
            }
            return rt.block_on(sync());
        }
        _ => {}
    }
    let sizes: Vec<u64> =
        std::env::var("BENCH_SIZES").unwrap_or_else(|_| "100000,1000000".into()).split(',').filter_map(|s| s.trim().parse().ok()).collect();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let python = venv();
    let postgres = postgres_server();
    println!("sync of the events pipeline's first run (a backfill) into SQLite; {cores} cores; write batches of {} rows", write_batch());
    let mut results = Vec::new();
    let mut rounds = Vec::new();
    for n in sizes {
        let mut emu = Reaped(child("serve", n, None, &[]));
        let mut line = String::new();
        BufReader::new(emu.0.stdout.take().unwrap()).read_line(&mut line).expect("the emulator prints its address");
        let info: Value = serde_json::from_str(line.trim()).expect("JSON");
        let mut best: Option<Value> = None;
        let mut best_plain: Option<Value> = None;
        let mut best_script: f64 = 0.0;
        let mut best_pg: Option<Value> = None;
        // Each round's own ratio (ours against the baseline measured beside it).
        let (mut paired, mut paired_plain, mut paired_pg) = (Vec::new(), Vec::new(), Vec::new());
        // Each round's peak RSS (SQLite), for the median beside the fastest round's.
        let mut peaks = Vec::new();
        for _ in 0..3 {
            let r = ours(n, line.trim(), None, Requests::Default);
            println!("  {n} events, ours: {r}");
            let plain = ours(n, line.trim(), None, Requests::Uncompressed);
            println!("  {n} events, ours with the script's requests (no LZ4): {plain}");
            let script = user_script(&python, &info);
            println!("  {n} events, the user's script: {script}");
            let script_rate = script["rows"].as_f64().unwrap() / script["seconds"].as_f64().unwrap();
            best_script = best_script.max(script_rate);
            paired.push(r["sync_rows_per_s"].as_f64().unwrap() / script_rate);
            paired_plain.push(plain["sync_rows_per_s"].as_f64().unwrap() / script_rate);
            if best_plain.as_ref().is_none_or(|b| plain["sync_rows_per_s"].as_f64() > b["sync_rows_per_s"].as_f64()) {
                best_plain = Some(plain);
            }
            peaks.push(r["peak_rss_mib"].as_f64().unwrap());
            if best.as_ref().is_none_or(|b| r["sync_rows_per_s"].as_f64() > b["sync_rows_per_s"].as_f64()) {
                best = Some(r);
            }
            if let Some(url) = &postgres {
                let r = ours(n, line.trim(), Some(url), Requests::Default);
                println!("  {n} events, ours on PostgreSQL: {r}");
                paired_pg.push(r["sync_stored_per_s"].as_f64().unwrap() / r["bare_rows_per_s"].as_f64().unwrap());
                if best_pg.as_ref().is_none_or(|b| r["sync_stored_per_s"].as_f64() > b["sync_stored_per_s"].as_f64()) {
                    best_pg = Some(r);
                }
            }
        }
        drop(emu);
        results.push((n, best.unwrap(), best_script, best_pg, best_plain.unwrap()));
        rounds.push((n, paired, paired_plain, paired_pg, peaks));
    }
    println!("\nbest of 3 per size:");
    println!(
        "| events | ours: rows read/s | ours: events stored/s | user's script: rows/s | ratio ours / script | bare insert: rows/s | peak RSS (ours) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (n, r, script, ..) in &results {
        println!(
            "| {n} | {:.0} | {:.0} | {:.0} | **{:.2}** | {:.0} | {:.0} MiB |",
            r["sync_rows_per_s"].as_f64().unwrap(),
            r["sync_stored_per_s"].as_f64().unwrap(),
            script,
            r["sync_rows_per_s"].as_f64().unwrap() / script,
            r["bare_rows_per_s"].as_f64().unwrap(),
            r["peak_rss_mib"].as_f64().unwrap()
        );
    }
    if let [(_, small, ..), .., (_, large, ..)] = results.as_slice() {
        println!(
            "peak RSS ratio largest / smallest: {:.2}",
            large["peak_rss_mib"].as_f64().unwrap() / small["peak_rss_mib"].as_f64().unwrap()
        );
    }
    println!("\nlike for like (ours asking the emulator for what the script asks: no LZ4), best of 3 per size:");
    println!("| events | ours: rows read/s | user's script: rows/s | ratio ours / script | emulator CPU s: LZ4 / none | peak RSS (ours) |");
    println!("|---|---|---|---|---|---|");
    for (n, r, script, _, plain) in &results {
        println!(
            "| {n} | {:.0} | {:.0} | **{:.2}** | {:.2} / {:.2} | {:.0} MiB |",
            plain["sync_rows_per_s"].as_f64().unwrap(),
            script,
            plain["sync_rows_per_s"].as_f64().unwrap() / script,
            r["cpu_s"]["emulator"].as_f64().unwrap(),
            plain["cpu_s"]["emulator"].as_f64().unwrap(),
            plain["peak_rss_mib"].as_f64().unwrap()
        );
    }
    if postgres.is_some() {
        println!("\non PostgreSQL, best of 3 per size:");
        println!(
            "| events | ours: rows read/s | ours: events stored/s | bare binary COPY: rows/s | ratio stored / COPY | server CPU s: ours / COPY | peak RSS (ours) |"
        );
        println!("|---|---|---|---|---|---|---|");
        for (n, _, _, pg, _) in &results {
            let r = pg.as_ref().unwrap();
            println!(
                "| {n} | {:.0} | {:.0} | {:.0} | **{:.2}** | {:.2} / {:.2} | {:.0} MiB |",
                r["sync_rows_per_s"].as_f64().unwrap(),
                r["sync_stored_per_s"].as_f64().unwrap(),
                r["bare_rows_per_s"].as_f64().unwrap(),
                r["sync_stored_per_s"].as_f64().unwrap() / r["bare_rows_per_s"].as_f64().unwrap(),
                r["cpu_s"]["postgres"].as_f64().unwrap(),
                r["bare_cpu_s"]["postgres"].as_f64().unwrap(),
                r["peak_rss_mib"].as_f64().unwrap()
            );
        }
    }
    // The same comparison without choosing a round: each round's ratio, and their median.
    println!("\neach round's own ratio (ours / the baseline measured beside it), and the median:");
    for (n, sqlite, plain, pg, _) in &rounds {
        println!("  {n} events, SQLite / the user's script: {}", median_of(sqlite));
        println!("  {n} events, SQLite with the script's requests / the user's script: {}", median_of(plain));
        if !pg.is_empty() {
            println!("  {n} events, PostgreSQL / bare binary COPY: {}", median_of(pg));
        }
    }
    // Peak RSS likewise: each round's, and the ratio of the largest size's median to the smallest's.
    if let [(small, .., first), .., (large, .., last)] = rounds.as_slice() {
        let median = |v: &[f64]| {
            let mut v = v.to_vec();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let each = |v: &[f64]| v.iter().map(|m| format!("{m:.0}")).collect::<Vec<_>>().join(" / ");
        println!(
            "  peak RSS (SQLite), MiB: {small} events {}, {large} events {}; ratio of the medians **{:.2}**",
            each(first),
            each(last),
            median(last) / median(first)
        );
    }
    if postgres.is_none() {
        println!("\n(PostgreSQL skipped: set TRIG_BENCH_POSTGRES_URL=postgres://root@127.0.0.1:5432/test to measure it)");
    }
}

/// "a / b / c, median m" of some ratios.
fn median_of(ratios: &[f64]) -> String {
    let mut sorted = ratios.to_vec();
    sorted.sort_by(f64::total_cmp);
    let median = match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    };
    let each: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
    format!("{}, median **{median:.2}**", each.join(" / "))
}

/// The PostgreSQL server to measure on, if one is named.
fn postgres_server() -> Option<String> {
    std::env::var("TRIG_BENCH_POSTGRES_URL").or_else(|_| std::env::var("TRIG_TEST_POSTGRES_URL")).ok()
}

/// One sync of ours in a fresh process: into SQLite, or into a fresh database on the PostgreSQL server `postgres`.
fn ours(n: u64, info: &str, postgres: Option<&str>, requests: Requests) -> Value {
    let mut env: Vec<(&str, &str)> = postgres.map(|url| ("BENCH_POSTGRES", url)).into_iter().collect();
    if requests == Requests::Uncompressed {
        env.push(("BENCH_COMPRESSION", "none"));
    }
    let mut s = Reaped(child("sync", n, Some(info), &env));
    let mut out = String::new();
    BufReader::new(s.0.stdout.take().unwrap()).read_line(&mut out).expect("the sync prints its result");
    let _ = s.0.wait();
    serde_json::from_str(&out).expect("a JSON result")
}

/// What our sync asks the warehouse for.
#[derive(Clone, Copy, PartialEq)]
enum Requests {
    /// As the product does: LZ4-framed chunks (`result_compression`), which
    /// the emulator compresses on this machine's cores (Databricks does it
    /// on its own).
    Default,
    /// The user's script's requests: the official SDK asks for no
    /// compression, so the emulator does the same work for both.
    Uncompressed,
}

/// A child process killed when the bench ends, also by a panic.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A virtual environment of the bench's own with the official SDK and pyarrow: its python.
fn venv() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join("trig-bench-venv");
    let python = dir.join("bin/python");
    let ready = Command::new(&python).args(["-c", "import databricks.sdk, pyarrow, requests"]).status().is_ok_and(|s| s.success());
    if !ready {
        let ok = Command::new("python3").args(["-m", "venv"]).arg(&dir).status().is_ok_and(|s| s.success())
            && Command::new(dir.join("bin/pip")).args(["install", "-q", "databricks-sdk", "pyarrow"]).status().is_ok_and(|s| s.success());
        assert!(ok, "could not install databricks-sdk and pyarrow into {}", dir.display());
    }
    let version = Command::new(&python)
        .args(["-c", "import databricks.sdk.version as v, pyarrow; print('databricks-sdk', v.__version__, 'pyarrow', pyarrow.__version__)"])
        .output()
        .expect("python runs");
    println!("the user's script runs on {}", String::from_utf8_lossy(&version.stdout).trim());
    python
}

/// Runs the user's script against the emulator into a fresh file: `{"rows", "seconds"}`.
fn user_script(python: &std::path::Path, info: &Value) -> Value {
    let db = std::env::temp_dir().join(format!("trig-bench-script-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&db);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/user_script.py");
    let out = Command::new(python)
        .arg(script)
        .args([info["base"].as_str().unwrap(), info["token"].as_str().unwrap(), demo::WAREHOUSE_ID])
        .arg(&db)
        .env("DATABRICKS_CONFIG_FILE", "/dev/null")
        .output()
        .expect("the script runs");
    assert!(out.status.success(), "the user's script failed: {}", String::from_utf8_lossy(&out.stderr));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    serde_json::from_slice(&out.stdout).expect("the script prints JSON")
}

/// This bench in another role, its stdout piped.
fn child(role: &str, events: u64, info: Option<&str>, env: &[(&str, &str)]) -> std::process::Child {
    let mut c = Command::new(std::env::current_exe().expect("own path"));
    c.env("TRIG_BENCH_ROLE", role).env("BENCH_EVENTS", events.to_string()).envs(env.iter().copied()).stdout(Stdio::piped());
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
    println!("{}", json!({"base": running.base_url(), "token": token, "host": running.addr().to_string(), "pid": std::process::id()}));
    running.serve_until(std::future::pending()).await;
}

/// CPU seconds (user + system) a process has used, from `/proc/PID/stat`
/// (in clock ticks of 1/100 s, Linux's USER_HZ).
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis; utime and stime are the 12th and 13th.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0) + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// CPU seconds used so far by every PostgreSQL server process on this machine.
fn postgres_cpu_seconds() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0.0 };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.starts_with("postgres")))
        .map(|pid| cpu_seconds(&pid))
        .sum()
}

/// CPU seconds of this process and of the PostgreSQL server since `start`.
#[derive(Clone, Copy)]
struct Cpu(f64, f64);

impl Cpu {
    fn start() -> Cpu {
        Cpu(cpu_seconds("self"), postgres_cpu_seconds())
    }
    fn since(self) -> Cpu {
        Cpu(cpu_seconds("self") - self.0, postgres_cpu_seconds() - self.1)
    }
}

/// Per thread name, this process's threads' (seconds on a CPU, seconds
/// runnable but waiting for one) from `/proc/self/task/*/schedstat`.
fn thread_times() -> std::collections::BTreeMap<String, (f64, f64)> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else { return out };
    for task in dir.filter_map(|e| e.ok()) {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default().trim().to_string();
        let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        let f: Vec<f64> = stat.split_whitespace().filter_map(|v| v.parse().ok()).collect();
        if let [on, waiting, ..] = f[..] {
            let e: &mut (f64, f64) = out.entry(comm).or_default();
            e.0 += on / 1e9;
            e.1 += waiting / 1e9;
        }
    }
    out
}

/// The threads' times since `before` (threads that ended are not counted), rounded to ms.
fn threads_since(before: std::collections::BTreeMap<String, (f64, f64)>) -> Value {
    let now = thread_times();
    let m: serde_json::Map<String, Value> = now
        .into_iter()
        .map(|(k, (on, waiting))| {
            let (b_on, b_waiting) = before.get(&k).copied().unwrap_or_default();
            let r = |x: f64| (x * 1000.0).round() / 1000.0;
            (k, json!({"on_cpu_s": r(on - b_on), "waiting_for_cpu_s": r(waiting - b_waiting)}))
        })
        .collect();
    Value::Object(m)
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
    let pg = std::env::var("BENCH_POSTGRES").ok().map(|server| trig_store::testing::FreshDatabase::create(&server, "trig_bench"));
    let text = trig_config::demo::store(pg.as_ref().map_or("sqlite://trig.db", |d| d.url.as_str()))
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
    let store: Arc<dyn Store> = match &pg {
        Some(d) => Arc::new(PostgresStore::open(&d.url).expect("PostgreSQL store")),
        None => Arc::new(SqliteStore::open(db.to_str().unwrap()).unwrap()),
    };
    let mut options = EngineOptions { write_batch_rows: write_batch(), ..Default::default() };
    if let Some(n) = std::env::var("BENCH_CHUNKS").ok().and_then(|v| v.parse().ok()) {
        options.query.max_concurrent_chunks = n;
    }
    if std::env::var("BENCH_COMPRESSION").as_deref() == Ok("none") {
        options.query.compression = false;
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
    // Where the CPU goes: this process, the emulator beside it, the PostgreSQL server.
    let emulator = info["pid"].to_string();
    let (cpu, emulator_before, threads_before) = (Cpu::start(), cpu_seconds(&emulator), thread_times());
    let t = Instant::now();
    let f = engine.run("events", Trigger::Schedule, &cancel).await.unwrap();
    let elapsed = t.elapsed().as_secs_f64();
    let (cpu, emulator_cpu) = (cpu.since(), cpu_seconds(&emulator) - emulator_before);
    let threads = threads_since(threads_before);
    assert!(f.error.is_none(), "{:?}", f.error);
    let peak = status_mib("VmHWM:");
    let c = f.run.counts;
    let stored = c.inserted + c.parked;

    let bare = match &pg {
        Some(d) => bare_copy(&d.url),
        None => bare_insert(&db, &dir.join("bare.db")),
    };
    println!(
        "{}",
        json!({
            "rows_read": c.rows_read, "inserted": c.inserted, "parked": c.parked, "deduplicated": c.deduplicated,
            "quarantined": c.quarantined, "sync_s": elapsed,
            "sync_rows_per_s": c.rows_read as f64 / elapsed, "sync_stored_per_s": stored as f64 / elapsed,
            "bare_rows": bare.0, "bare_s": bare.1, "bare_rows_per_s": bare.0 as f64 / bare.1,
            "peak_rss_mib": peak,
            "cpu_s": {"ours": cpu.0, "emulator": emulator_cpu, "postgres": cpu.1},
            "bare_cpu_s": {"ours": bare.2.0, "postgres": bare.2.1},
            "threads": threads,
        })
    );
    drop(store);
    drop(pg);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The stored events, copied by binary `COPY` into a fresh table like ours
/// (the same columns, types and primary key), in transactions of the sync's
/// size: the least work that stores them on PostgreSQL. Returns (rows, seconds, CPU seconds).
fn bare_copy(url: &str) -> (u64, f64, Cpu) {
    use postgres::binary_copy::BinaryCopyInWriter;
    use postgres::types::{ToSql, Type};
    let url = url.to_string();
    std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        c.batch_execute("CREATE TABLE bare_events (LIKE events INCLUDING ALL)").unwrap();
        type Row = (i64, i64, String, String, i64, i64, String, i64);
        let rows: Vec<Row> = c
            .query("SELECT tenant_id, pipeline_id, event_id, name, ts, person_id, properties, batch FROM events", &[])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6), r.get(7)))
            .collect();
        let types = [Type::INT8, Type::INT8, Type::TEXT, Type::TEXT, Type::INT8, Type::INT8, Type::TEXT, Type::INT8];
        let cpu = Cpu::start();
        let t = Instant::now();
        for chunk in rows.chunks(write_batch()) {
            let mut tx = c.transaction().unwrap();
            let sink = tx.copy_in("COPY bare_events FROM STDIN BINARY").unwrap();
            let mut w = BinaryCopyInWriter::new(sink, &types);
            for r in chunk {
                let values: [&(dyn ToSql + Sync); 8] = [&r.0, &r.1, &r.2, &r.3, &r.4, &r.5, &r.6, &r.7];
                w.write(&values).unwrap();
            }
            w.finish().unwrap();
            tx.commit().unwrap();
        }
        (rows.len() as u64, t.elapsed().as_secs_f64(), cpu.since())
    })
    .join()
    .unwrap()
}

/// The stored events as 7 text columns, inserted straight into a fresh
/// 7-column table with a primary key, in transactions of the sync's size: the
/// least work that stores them. Returns (rows, seconds, CPU seconds).
fn bare_insert(synced: &std::path::Path, fresh: &std::path::Path) -> (u64, f64, Cpu) {
    let mut c = rusqlite::Connection::open(fresh).unwrap();
    c.pragma_update(None, "journal_mode", "WAL").unwrap();
    c.pragma_update(None, "synchronous", "NORMAL").unwrap();
    c.pragma_update(None, "cache_size", -trig_store::sqlite::PAGE_CACHE_KIB).unwrap();
    c.execute_batch(
        "CREATE TABLE events (event_id TEXT PRIMARY KEY, event_name TEXT, event_ts TEXT, user_id TEXT, email TEXT, properties TEXT, platform TEXT)",
    )
    .unwrap();
    c.execute("ATTACH DATABASE ?1 AS src", [synced.to_str().unwrap()]).unwrap();
    type Row = (String, String, String, String, Option<String>, String, String);
    let rows: Vec<Row> = {
        let mut s = c
            .prepare(
                "SELECT e.event_id, e.name, CAST(e.ts AS TEXT), COALESCE(p.external_id, ''), p.email, e.properties, 'web'
                 FROM src.events e JOIN src.people p ON p.id = e.person_id",
            )
            .unwrap();
        s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    c.execute("DETACH DATABASE src", []).unwrap();
    let cpu = Cpu::start();
    let t = Instant::now();
    for chunk in rows.chunks(write_batch()) {
        let tx = c.transaction().unwrap();
        {
            let mut s = tx.prepare_cached("INSERT OR IGNORE INTO events VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)").unwrap();
            for r in chunk {
                s.execute(params![r.0, r.1, r.2, r.3, r.4, r.5, r.6]).unwrap();
            }
        }
        tx.commit().unwrap();
    }
    (rows.len() as u64, t.elapsed().as_secs_f64(), cpu.since())
}

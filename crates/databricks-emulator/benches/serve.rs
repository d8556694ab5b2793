//! How fast the emulator serves a large ARROW_STREAM result over external
//! links, beside how fast a client can decode the same bytes (the baseline
//! measured in the same run), and how long the demo workspace takes to load.
//!
//! `cargo bench -p databricks-emulator --bench serve` (set `BENCH_ROWS` to change the 1M rows).

// A bench binary reports its figures on stdout.
#![allow(clippy::print_stdout)]

use std::io::Cursor;
use std::time::{Duration, Instant};

use databricks_emulator::EmulatorConfig;
use databricks_emulator::demo::{self, DemoOptions};
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use serde_json::{Value, json};

fn main() {
    let rows: u64 = std::env::var("BENCH_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(run(rows));
}

async fn run(rows: u64) {
    // Start-up with the demo dataset (100k events), best of 3.
    let mut startup = Duration::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let loaded = demo::workspace(&DemoOptions::default()).await.expect("demo loads");
        let running = databricks_emulator::start(loaded.workspace, EmulatorConfig::default(), "127.0.0.1:0").await.expect("starts");
        startup = startup.min(t.elapsed());
        running.shutdown().await;
    }
    println!("demo start-up (100k events): {:.0} ms", startup.as_secs_f64() * 1000.0);

    let options = DemoOptions { events: rows, start_delay_ms: Some(0), running: true, ..Default::default() };
    let loaded = demo::workspace(&options).await.expect("dataset loads");
    let token = loaded.tokens["service_principal"].clone();
    let running = databricks_emulator::start(loaded.workspace, EmulatorConfig::default(), "127.0.0.1:0").await.expect("starts");
    let http = reqwest::Client::new();
    let base = running.base_url();

    // Ten columns of the events table.
    let sql = "SELECT event_id, event_name, event_ts, user_id, email, plan, platform, properties, ingested_at, event_ts_local FROM main.product.events";
    let t = Instant::now();
    let body = json!({"statement": sql, "warehouse_id": demo::WAREHOUSE_ID, "wait_timeout": "50s",
                      "disposition": "EXTERNAL_LINKS", "format": "ARROW_STREAM"});
    let s: Value =
        http.post(format!("{base}/api/2.0/sql/statements")).bearer_auth(&token).json(&body).send().await.unwrap().json().await.unwrap();
    assert_eq!(s["status"]["state"], "SUCCEEDED", "{s}");
    let statement_ms = t.elapsed().as_secs_f64() * 1000.0;
    let id = s["statement_id"].as_str().unwrap().to_string();
    let chunks = s["manifest"]["total_chunk_count"].as_u64().unwrap() as usize;
    let total_rows = s["manifest"]["total_row_count"].as_u64().unwrap();
    assert_eq!(total_rows, rows);

    // Serve: fetch every chunk's link and download it, one after another, as a client does.
    let mut bodies = Vec::with_capacity(chunks);
    let mut best_serve = Duration::MAX;
    for round in 0..3 {
        let t = Instant::now();
        let mut got = Vec::with_capacity(chunks);
        for i in 0..chunks {
            got.push(fetch_chunk(&http, &base, &token, &id, i).await);
        }
        best_serve = best_serve.min(t.elapsed());
        if round == 0 {
            bodies = got;
        }
    }
    let bytes: usize = bodies.iter().map(|b| b.len()).sum();

    // Baseline: decode the same bytes with the Arrow IPC reader (what a client must do with them).
    let mut best_decode = Duration::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let mut n = 0usize;
        for b in &bodies {
            for batch in StreamReader::try_new(Cursor::new(b.as_ref()), None).unwrap() {
                n += batch.unwrap().num_rows();
            }
        }
        assert_eq!(n as u64, rows);
        best_decode = best_decode.min(t.elapsed());
    }
    // Baseline 2: decode and turn every cell into an owned value, the least a
    // client that uses the rows (maps them to events) must do.
    let mut best_use = Duration::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let mut cells = 0usize;
        for b in &bodies {
            for batch in StreamReader::try_new(Cursor::new(b.as_ref()), None).unwrap() {
                let batch = batch.unwrap();
                let options = FormatOptions::default();
                let formatters: Vec<ArrayFormatter> =
                    batch.columns().iter().map(|c| ArrayFormatter::try_new(c.as_ref(), &options).unwrap()).collect();
                for row in 0..batch.num_rows() {
                    let owned: Vec<String> = formatters.iter().map(|f| f.value(row).to_string()).collect();
                    cells += owned.len();
                }
            }
        }
        assert_eq!(cells as u64, rows * 10);
        best_use = best_use.min(t.elapsed());
    }
    // Parallel downloads (4 at a time), as the official drivers fetch chunks.
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(4));
    for i in 0..chunks {
        let (http, base, token, id, sem) = (http.clone(), base.clone(), token.clone(), id.clone(), sem.clone());
        tasks.spawn(async move {
            let _permit = sem.acquire_owned().await.unwrap();
            fetch_chunk(&http, &base, &token, &id, i).await.len()
        });
    }
    let mut parallel_bytes = 0;
    while let Some(n) = tasks.join_next().await {
        parallel_bytes += n.unwrap();
    }
    assert_eq!(parallel_bytes, bytes);
    let parallel_rps = rows as f64 / t.elapsed().as_secs_f64();
    let use_rps = rows as f64 / best_use.as_secs_f64();
    let serve_rps = rows as f64 / best_serve.as_secs_f64();
    let decode_rps = rows as f64 / best_decode.as_secs_f64();
    println!("rows: {rows}, columns: 10, chunks: {chunks}, bytes: {:.1} MiB", bytes as f64 / (1 << 20) as f64);
    println!("statement (execute + encode chunks): {statement_ms:.0} ms");
    println!(
        "served over external links (loopback, sequential): {:.0} rows/s, {:.0} MiB/s",
        serve_rps,
        bytes as f64 / (1 << 20) as f64 / best_serve.as_secs_f64()
    );
    println!("baseline, client Arrow IPC decode of the same bytes: {:.0} rows/s", decode_rps);
    println!("served over external links (loopback, 4 in parallel): {:.0} rows/s", parallel_rps);
    println!("baseline 2, client decode + every cell to an owned value: {:.0} rows/s", use_rps);
    println!("ratio served (sequential) / decode only: {:.2}", serve_rps / decode_rps);
    println!("ratio served (sequential) / decode + use: {:.2}", serve_rps / use_rps);
    running.shutdown().await;
}

/// What a client does per chunk: ask for a fresh link, then download it (without the token).
async fn fetch_chunk(http: &reqwest::Client, base: &str, token: &str, id: &str, index: usize) -> bytes::Bytes {
    let r: Value = http
        .get(format!("{base}/api/2.0/sql/statements/{id}/result/chunks/{index}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = r["external_links"][0]["external_link"].as_str().unwrap().to_string();
    http.get(url).send().await.unwrap().bytes().await.unwrap()
}

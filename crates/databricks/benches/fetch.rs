//! Is fetching a large ARROW_STREAM result limited by the server and
//! loopback, or by the client? Measures, against the emulator in a child
//! process (so this process's memory is the client's alone):
//!
//! - baseline: a bare HTTP download of the same result's chunks (LZ4 bytes
//!   fetched and dropped, same concurrency, no decompression, no decoding);
//! - the client: `Client::query` streaming every record batch (download,
//!   LZ4, Arrow IPC decode), rows counted and batches dropped.
//!
//! Both report rows/s and the growth of this process's peak RSS during the
//! run (VmHWM, reset through /proc/self/clear_refs before each run).
//!
//! `cargo bench -p databricks --bench fetch` (BENCH_ROWS changes the 1M rows).

#![allow(clippy::print_stdout)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use databricks::{Client, ConnectionSettings, Credentials, QueryOptions, Secret, Statement};
use databricks_emulator::demo::{self, DemoOptions};
use databricks_emulator::{ChunkPolicy, EmulatorConfig};
use futures::{StreamExt, TryStreamExt};
use serde_json::{Value, json};

const SQL: &str = "SELECT event_id, event_name, event_ts, user_id, email, plan, platform, properties, ingested_at, event_ts_local FROM main.product.events";
const CONCURRENCY: usize = 4;

fn main() {
    let rows: u64 = std::env::var("BENCH_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    if std::env::var("TRIG_BENCH_SERVE").is_ok() {
        rt.block_on(serve(rows));
        return;
    }
    // The emulator runs in a child process: this same binary, serving.
    let mut child = Command::new(std::env::current_exe().expect("own path"))
        .env("TRIG_BENCH_SERVE", "1")
        .env("BENCH_ROWS", rows.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("emulator child starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).expect("child prints its address");
    let info: Value = serde_json::from_str(&line).expect("JSON line");
    rt.block_on(measure(rows, &info));
    let _ = child.kill();
    let _ = child.wait();
}

async fn serve(rows: u64) {
    let options = DemoOptions { events: rows, start_delay_ms: Some(0), running: true, ..Default::default() };
    let loaded = demo::workspace(&options).await.expect("dataset loads");
    let token = loaded.tokens["service_principal"].clone();
    let config = EmulatorConfig { chunk_policy: ChunkPolicy { max_rows: 131_072, max_bytes: 16 << 20 }, ..Default::default() };
    let running = databricks_emulator::start(loaded.workspace, config, "127.0.0.1:0").await.expect("starts");
    println!("{}", json!({"base": running.base_url(), "token": token, "host": running.addr().to_string()}));
    running.serve_until(std::future::pending()).await;
}

/// This process's peak resident set since the last reset, in MiB.
fn peak_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

async fn measure(rows: u64, info: &Value) {
    let base = info["base"].as_str().unwrap().to_string();
    let token = info["token"].as_str().unwrap().to_string();
    let settings = ConnectionSettings::parse(
        &base,
        &format!("/sql/1.0/warehouses/{}", demo::WAREHOUSE_ID),
        Credentials::Token(Secret::new(token.clone())),
        None,
        &[info["host"].as_str().unwrap().to_string()],
    )
    .unwrap();
    let client = Client::new(settings).unwrap();
    let http = reqwest::Client::new();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("rows: {rows}, 10 columns, ARROW_STREAM + LZ4_FRAME over EXTERNAL_LINKS, {CONCURRENCY} downloads in flight, {cores} cores");

    let mut best_decode = Duration::MAX;
    let mut best_bare = (Duration::MAX, 0u64, 0f64);
    let mut best_client = (Duration::MAX, 0u64, 0f64);
    for round in 0..3 {
        // Baseline: bare downloads of the same chunks.
        reset_peak();
        let before = rss_mib();
        let t = Instant::now();
        let body = json!({"statement": SQL, "warehouse_id": demo::WAREHOUSE_ID, "wait_timeout": "50s",
                          "disposition": "EXTERNAL_LINKS", "format": "ARROW_STREAM", "result_compression": "LZ4_FRAME"});
        let s: Value =
            http.post(format!("{base}/api/2.0/sql/statements")).bearer_auth(&token).json(&body).send().await.unwrap().json().await.unwrap();
        assert_eq!(s["status"]["state"], "SUCCEEDED", "{s}");
        let id = s["statement_id"].as_str().unwrap().to_string();
        let chunks = s["manifest"]["total_chunk_count"].as_u64().unwrap();
        let bytes: u64 = futures::stream::iter(0..chunks)
            .map(|i| {
                let (http, base, token, id) = (http.clone(), base.clone(), token.clone(), id.clone());
                async move {
                    let c: Value = http
                        .get(format!("{base}/api/2.0/sql/statements/{id}/result/chunks/{i}"))
                        .bearer_auth(&token)
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    let link = c["external_links"][0]["external_link"].as_str().unwrap().to_string();
                    http.get(link).send().await.unwrap().bytes().await.unwrap().len() as u64
                }
            })
            .buffered(CONCURRENCY)
            .fold(0u64, |a, b| async move { a + b })
            .await;
        let bare = (t.elapsed(), bytes, peak_mib() - before);
        if bare.0 < best_bare.0 {
            best_bare = bare;
        }

        // Baseline 2: the same bare download plus the least work that yields
        // record batches (LZ4 frame + Arrow IPC decode), same concurrency.
        let t = Instant::now();
        let s: Value =
            http.post(format!("{base}/api/2.0/sql/statements")).bearer_auth(&token).json(&body).send().await.unwrap().json().await.unwrap();
        let id = s["statement_id"].as_str().unwrap().to_string();
        let decoded: u64 = futures::stream::iter(0..chunks)
            .map(|i| {
                let (http, base, token, id) = (http.clone(), base.clone(), token.clone(), id.clone());
                tokio::spawn(async move {
                    let c: Value = http
                        .get(format!("{base}/api/2.0/sql/statements/{id}/result/chunks/{i}"))
                        .bearer_auth(&token)
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    let link = c["external_links"][0]["external_link"].as_str().unwrap().to_string();
                    let bytes = http.get(link).send().await.unwrap().bytes().await.unwrap();
                    let mut raw = Vec::new();
                    std::io::Read::read_to_end(&mut lz4_flex::frame::FrameDecoder::new(&bytes[..]), &mut raw).unwrap();
                    let reader = arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(raw), None).unwrap();
                    reader.map(|b| b.unwrap().num_rows() as u64).sum::<u64>()
                })
            })
            .buffered(CONCURRENCY)
            .fold(0u64, |a, b| async move { a + b.unwrap() })
            .await;
        assert_eq!(decoded, rows);
        best_decode = best_decode.min(t.elapsed());

        // The client: stream every batch.
        reset_peak();
        let before = rss_mib();
        let t = Instant::now();
        let opts = QueryOptions { max_concurrent_chunks: CONCURRENCY, ..Default::default() };
        let stream = client.query(&Statement::new(SQL), &opts).await.expect("query runs");
        let got: u64 = stream.try_fold(0u64, |n, b| async move { Ok(n + b.num_rows() as u64) }).await.expect("stream reads");
        assert_eq!(got, rows);
        let ours = (t.elapsed(), got, peak_mib() - before);
        if ours.0 < best_client.0 {
            best_client = ours;
        }
        println!(
            "round {round}: bare {:.0} ms ({:.1} MiB), client {:.0} ms; peak RSS growth bare {:.0} MiB, client {:.0} MiB",
            bare.0.as_secs_f64() * 1e3,
            bare.1 as f64 / 1048576.0,
            ours.0.as_secs_f64() * 1e3,
            bare.2,
            ours.2
        );
    }
    let bare_rps = rows as f64 / best_bare.0.as_secs_f64();
    let client_rps = rows as f64 / best_client.0.as_secs_f64();
    println!(
        "baseline bare download (statement + chunks, bytes dropped): {:.2} M rows/s, peak RSS growth {:.0} MiB",
        bare_rps / 1e6,
        best_bare.2
    );
    println!(
        "client stream (download + LZ4 + Arrow decode):              {:.2} M rows/s, peak RSS growth {:.0} MiB",
        client_rps / 1e6,
        best_client.2
    );
    let decode_rps = rows as f64 / best_decode.as_secs_f64();
    println!("baseline bare download + LZ4 + Arrow decode (no client logic): {:.2} M rows/s", decode_rps / 1e6);
    println!("ratio client / bare download: {:.2}", client_rps / bare_rps);
    println!("ratio client / bare download + decode: {:.2}", client_rps / decode_rps);
}

//! `serve` under load (issue #12), the binary as an operator runs it.
//!
//! 1. **Scheduler lag**: one `serve` process on SQLite, 1,000 events
//!    pipelines (100 on each of 10 emulated workspaces, each emulator a child
//!    process), every one due each minute; after their first runs, the lag
//!    (start minus due, the jitter being part of the due time) from the
//!    process's own `trig_scheduler_lag_seconds` histogram over
//!    `BENCH_LAG_SECS` (default 150 s); the process's CPU share and RSS.
//! 2. **Status reads**: 100 concurrent clients reading one pipeline's status
//!    (`GET /api/v1/tenants/{t}/pipelines/{p}`, the store and the last run),
//!    for 10 s, against `/healthz` from the same clients (no store) in the
//!    same run: requests/s and p99.
//! 3. **Throughput on PostgreSQL** (when `TRIG_BENCH_POSTGRES_URL` or
//!    `TRIG_TEST_POSTGRES_URL` names a server): 12 events pipelines' first
//!    runs (`BENCH_EVENTS` events each, default 50,000; 4 on each of 3
//!    warehouses) into a fresh database by 1, 2 and 3 `serve` processes:
//!    events stored per second.
//!
//! `cargo bench -p trig-cli --bench service` (BENCH_PIPELINES, BENCH_LAG_SECS, BENCH_EVENTS change it).

#![allow(clippy::print_stdout)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_trig-databricks");
const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A child that prints one JSON line first.
fn spawn_json(args: &[&str], envs: &[(&str, &str)]) -> (Reaped, Value) {
    let mut c = Command::new(BIN)
        .args(args)
        .envs(envs.iter().copied())
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the binary starts");
    let mut line = String::new();
    BufReader::new(c.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let v: Value = serde_json::from_str(line.trim()).unwrap_or_else(|_| panic!("{args:?} printed {line:?}"));
    (Reaped(c), v)
}

fn emulator(events: u64) -> (Reaped, Value) {
    spawn_json(&["emulator", "--demo", "--events", &events.to_string(), "--addr", "127.0.0.1:0", "--start-delay-ms", "50"], &[])
}

fn cli(args: &[&str]) -> String {
    let o = Command::new(BIN).args(args).env("TRIG_SECRET_KEY", KEY).output().unwrap();
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

fn host_of(info: &Value) -> String {
    info["workspace_url"].as_str().unwrap().trim_start_matches("http://").to_string()
}

/// utime + stime of a process, in seconds, and its VmRSS and VmHWM in MiB.
fn usage(pid: u32) -> (f64, f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (cpu, kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
}

/// A histogram's cumulative buckets from Prometheus text: `(le, count)`.
fn buckets(text: &str, name: &str) -> Vec<(f64, f64)> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}_bucket{{")))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect()
}

/// The smallest bucket bound holding the quantile `q` of the observations between two scrapes.
fn quantile_bound(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> (f64, f64) {
    let delta: Vec<(f64, f64)> =
        after.iter().map(|(le, n)| (*le, n - before.iter().find(|(b, _)| b == le).map(|(_, m)| *m).unwrap_or(0.0))).collect();
    let total = delta.last().map(|(_, n)| *n).unwrap_or(0.0);
    let bound = delta.iter().find(|(_, n)| *n >= q * total).map(|(le, _)| *le).unwrap_or(f64::INFINITY);
    (bound, total)
}

async fn get_json(http: &reqwest::Client, url: &str, token: &str) -> Value {
    http.get(url).bearer_auth(token).send().await.unwrap().json().await.unwrap()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("serve under load; {cores} cores");
    let dir = std::env::temp_dir().join(format!("trig-bench-serve-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    scheduler_and_status(&dir).await;
    if let Ok(server) = std::env::var("TRIG_BENCH_POSTGRES_URL").or_else(|_| std::env::var("TRIG_TEST_POSTGRES_URL")) {
        throughput(&dir, &server).await;
    } else {
        println!("\n(PostgreSQL skipped: set TRIG_BENCH_POSTGRES_URL=postgres://root@127.0.0.1:5432/test to measure it)");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

async fn scheduler_and_status(dir: &std::path::Path) {
    let pipelines = env_num("BENCH_PIPELINES", 1000) as usize;
    let workspaces = 10.min(pipelines.max(1));
    let emus: Vec<(Reaped, Value)> = (0..workspaces).map(|_| emulator(200)).collect();
    let config = dir.join("lag.toml");
    std::fs::write(&config, "[store]\nurl = \"sqlite://lag.db\"\n").unwrap();
    let c = config.to_str().unwrap();
    cli(&["tenants", "create", "acme", "--config", c]);
    cli(&["tenants", "create", "trig", "--config", c]);
    let admin = cli(&["tokens", "create", "--tenant", "acme", "--role", "admin", "--config", c]);
    let rep = cli(&["tokens", "create", "--tenant", "trig", "--role", "representative", "--config", c]);
    let (serve, listening) = spawn_json(&["serve", "--config", c, "--addr", "127.0.0.1:0"], &[("TRIG_SECRET_KEY", KEY)]);
    let base = listening["listening"].as_str().unwrap().to_string();
    let pid = serve.0.id();
    let http = reqwest::Client::new();
    let t = format!("{base}/api/v1/tenants/acme");
    for (i, (_, info)) in emus.iter().enumerate() {
        let body = json!({
            "workspace_url": info["workspace_url"], "http_path": info["http_path"], "token": info["tokens"]["service_principal"],
            "default_catalog": "main", "allow_hosts": [host_of(info)],
        });
        let r = http.put(format!("{t}/connections/w{i}")).bearer_auth(&admin).json(&body).send().await.unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }
    let started = Instant::now();
    for i in 0..pipelines {
        let body = json!({
            "connection": format!("w{}", i % workspaces), "kind": "events", "source": "product.events_v", "schedule": "1m",
            "event_id": "event_id", "event_name": "event_name", "timestamp": "event_ts", "user_id": "user_id", "user_id_kind": "external_id",
        });
        let r = http.put(format!("{t}/pipelines/p{i:04}")).bearer_auth(&rep).json(&body).send().await.unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }
    // Every first run (a small backfill each) done.
    loop {
        let list = get_json(&http, &format!("{t}/pipelines"), &admin).await;
        let done = list["pipelines"].as_array().unwrap().iter().filter(|p| p["last_run"]["status"] == "succeeded").count();
        if done == pipelines {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(1800), "first runs not done: {done}/{pipelines}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    println!(
        "\n1. scheduler: {pipelines} pipelines on {workspaces} workspaces, one process; first runs all done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let window = Duration::from_secs(env_num("BENCH_LAG_SECS", 150));
    let before = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    let (cpu0, _, _) = usage(pid);
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let (cpu1, rss, hwm) = usage(pid);
    let after = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    let lb = buckets(&before, "trig_scheduler_lag_seconds");
    let la = buckets(&after, "trig_scheduler_lag_seconds");
    let (p50, n) = quantile_bound(&lb, &la, 0.50);
    let (p99, _) = quantile_bound(&lb, &la, 0.99);
    let cpu_share = (cpu1 - cpu0) / t0.elapsed().as_secs_f64();
    println!(
        "   over {:.0} s: {n:.0} scheduled runs ({:.1}/s); lag p50 <= {p50} s, p99 <= {p99} s; CPU {:.0}% of one core; RSS {rss:.0} MiB (peak {hwm:.0} MiB)",
        t0.elapsed().as_secs_f64(),
        n / t0.elapsed().as_secs_f64(),
        cpu_share * 100.0
    );

    // 2. Status reads, 100 concurrent clients, against /healthz from the same clients.
    let status_url = format!("{t}/pipelines/p0000");
    for (what, url, token) in [
        ("GET /healthz (no store; the baseline)", format!("{base}/healthz"), None),
        ("GET pipeline status", status_url, Some(admin.clone())),
    ] {
        let stop_at = Instant::now() + Duration::from_secs(10);
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let (http, url, token) = (http.clone(), url.clone(), token.clone());
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                while Instant::now() < stop_at {
                    let s = Instant::now();
                    let mut r = http.get(&url);
                    if let Some(t) = &token {
                        r = r.bearer_auth(t);
                    }
                    let resp = r.send().await.unwrap();
                    assert!(resp.status().is_success());
                    let _ = resp.bytes().await.unwrap();
                    lat.push(s.elapsed().as_secs_f64());
                }
                lat
            }));
        }
        let mut all: Vec<f64> = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all.sort_by(|a, b| a.total_cmp(b));
        let p99 = all[(all.len() as f64 * 0.99) as usize];
        println!("2. {what}: {:.0} requests/s, p99 {:.1} ms (100 clients, 10 s)", all.len() as f64 / 10.0, p99 * 1000.0);
    }
    drop(serve);
    drop(emus);
}

async fn throughput(dir: &std::path::Path, server: &str) {
    let events = env_num("BENCH_EVENTS", 50_000);
    // Three warehouses (one emulated workspace each), 4 pipelines on each: at most 2 runs per
    // warehouse at once across all processes, so up to 6 runs at once.
    let emus: Vec<(Reaped, Value)> = (0..3).map(|_| emulator(events)).collect();
    for (i, (_, info)) in emus.iter().enumerate() {
        std::fs::write(dir.join(format!("token{i}")), info["tokens"]["service_principal"].as_str().unwrap()).unwrap();
    }
    println!("\n3. throughput into PostgreSQL: 12 events pipelines x {events} events (first runs), on 3 warehouses");
    for procs in 1..=3 {
        let db = trig_store::testing::FreshDatabase::create(server, "trig_bench_serve");
        let mut text = format!("[store]\nurl = \"{}\"\n", db.url);
        for (i, (_, info)) in emus.iter().enumerate() {
            text += &trig_config::demo::connection(
                &format!("w{i}"),
                info["workspace_url"].as_str().unwrap(),
                info["warehouse_id"].as_str().unwrap(),
                &host_of(info),
                &format!("token{i}"),
            );
        }
        for i in 0..12 {
            text += &trig_config::demo::events(&format!("e{i:02}"), &format!("w{}", i % 3));
        }
        let config = dir.join(format!("pg{procs}.toml"));
        std::fs::write(&config, text).unwrap();
        let c = config.to_str().unwrap().to_string();
        let start = Instant::now();
        let serves: Vec<(Reaped, Value)> =
            (0..procs).map(|_| spawn_json(&["serve", "--config", &c, "--addr", "127.0.0.1:0"], &[("TRIG_SECRET_KEY", KEY)])).collect();
        let url = db.url.clone();
        let stored = tokio::task::spawn_blocking(move || {
            std::thread::spawn(move || {
                let mut pg = postgres::Client::connect(&url, postgres::NoTls).unwrap();
                loop {
                    let done: i64 = pg
                        .query_one("SELECT count(DISTINCT pipeline_id) FROM sync_runs WHERE status = 'succeeded'", &[])
                        .map(|r| r.get(0))
                        .unwrap_or(0);
                    if done == 12 {
                        let n: i64 = pg.query_one("SELECT count(*) FROM events", &[]).unwrap().get(0);
                        return n;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
            .join()
            .unwrap()
        })
        .await
        .unwrap();
        let secs = start.elapsed().as_secs_f64();
        println!(
            "   {procs} process{}: {stored} events in {secs:.1} s = {:.0} events/s",
            if procs == 1 { "" } else { "es" },
            stored as f64 / secs
        );
        drop(serves);
        std::thread::spawn(move || drop(db)).join().unwrap();
    }
}

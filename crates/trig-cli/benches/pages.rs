//! The pages' render time (issue #13), the binary as an operator runs it.
//!
//! One `serve` process (SQLite, `--no-scheduler` so nothing else runs) with
//! one tenant's connection on an emulated workspace (a child process), 50
//! events pipelines and 10,000 finished runs spread over the last 7 days
//! (200 per pipeline, written through the store's own run API). Signed in
//! through the login form like a browser, each page is fetched `BENCH_N`
//! times (default 300) one after another; p50 and p99 of the whole request
//! on loopback (an upper bound of the server-side time) beside `/healthz`
//! fetched the same way in the same run.
//!
//! `cargo bench -p trig-cli --bench pages` (`BENCH_N` fetches per page; `BENCH_KEEP=1` keeps the store to look at)

#![allow(clippy::print_stdout)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use trig_store::{Holder, Store, SyncRun};

const BIN: &str = env!("CARGO_BIN_EXE_trig-databricks");
const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const PIPELINES: usize = 50;
const RUNS_PER_PIPELINE: usize = 200;

struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_json(args: &[&str]) -> (Reaped, Value) {
    let mut c = Command::new(BIN)
        .args(args)
        .env("TRIG_SECRET_KEY", KEY)
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

fn cli(args: &[&str]) -> String {
    let o = Command::new(BIN).args(args).env("TRIG_SECRET_KEY", KEY).output().unwrap();
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

fn between<'a>(s: &'a str, start: &str, end: &str) -> &'a str {
    let at = s.find(start).unwrap_or_else(|| panic!("no {start}")) + start.len();
    &s[at..at + s[at..].find(end).unwrap()]
}

/// Signs in through the form, as a browser does: the session cookie.
async fn sign_in(http: &reqwest::Client, base: &str, token: &str) -> String {
    let r = http.get(format!("{base}/login")).send().await.unwrap();
    let pair =
        r.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_string()).find(|v| v.starts_with("trig_login=")).unwrap();
    let pair = between(&pair, "trig_login=", ";").to_string();
    let body = r.text().await.unwrap();
    let csrf = between(&body, "name=\"csrf\" value=\"", "\"").to_string();
    let r = http
        .post(format!("{base}/login"))
        .header("cookie", format!("trig_login={pair}"))
        .form(&[("csrf", csrf.as_str()), ("token", token)])
        .send()
        .await
        .unwrap();
    let c =
        r.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_string()).find(|v| v.starts_with("trig_session=")).unwrap();
    between(&c, "trig_session=", ";").to_string()
}

async fn measure(http: &reqwest::Client, url: &str, session: Option<&str>, n: usize) -> (f64, f64, usize) {
    let mut lat = Vec::with_capacity(n);
    let mut bytes = 0;
    for _ in 0..n {
        let s = Instant::now();
        let mut r = http.get(url);
        if let Some(c) = session {
            r = r.header("cookie", format!("trig_session={c}"));
        }
        let resp = r.send().await.unwrap();
        assert!(resp.status().is_success(), "{url}: {}", resp.status());
        bytes = resp.bytes().await.unwrap().len();
        lat.push(s.elapsed().as_secs_f64() * 1000.0);
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    (lat[n / 2], lat[((n as f64 * 0.99) as usize).min(n - 1)], bytes)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let n: usize = std::env::var("BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("the pages' render time; {cores} cores");
    let dir = std::env::temp_dir().join(format!("trig-bench-pages-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (_emu, info) = spawn_json(&["emulator", "--demo", "--events", "200", "--addr", "127.0.0.1:0", "--start-delay-ms", "50"]);
    let config = dir.join("pages.toml");
    std::fs::write(&config, "[store]\nurl = \"sqlite://pages.db\"\n").unwrap();
    let c = config.to_str().unwrap();
    cli(&["tenants", "create", "acme", "--config", c]);
    cli(&["tenants", "create", "trig", "--config", c]);
    let admin = cli(&["tokens", "create", "--tenant", "acme", "--role", "admin", "--config", c]);
    let rep = cli(&["tokens", "create", "--tenant", "trig", "--role", "representative", "--config", c]);
    let (_serve, listening) = spawn_json(&["serve", "--config", c, "--addr", "127.0.0.1:0", "--no-scheduler"]);
    let base = listening["listening"].as_str().unwrap().to_string();
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let t = format!("{base}/api/v1/tenants/acme");
    let host = info["workspace_url"].as_str().unwrap().trim_start_matches("http://").to_string();
    let body = json!({
        "workspace_url": info["workspace_url"], "http_path": info["http_path"], "token": info["tokens"]["service_principal"],
        "default_catalog": "main", "allow_hosts": [host],
    });
    let r = http.put(format!("{t}/connections/production")).bearer_auth(&admin).json(&body).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    for i in 0..PIPELINES {
        let body = json!({
            "connection": "production", "kind": "events", "source": "main.product.events_v",
            "event_id": "event_id", "event_name": "event_name", "timestamp": "event_ts", "user_id": "user_id",
        });
        let r = http.put(format!("{t}/pipelines/p{i:02}")).bearer_auth(&rep).json(&body).send().await.unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }

    // 10,000 finished runs over the last 7 days, through the store's run API (a second writer on the same file).
    let seeded = Instant::now();
    let store = trig_store::SqliteStore::open(dir.join("pages.db").to_str().unwrap()).unwrap();
    let tenant = store.tenant("acme").await.unwrap();
    let now = chrono::Utc::now().timestamp_micros();
    let step = 7 * 86_400_000_000 / RUNS_PER_PIPELINE as i64;
    for i in 0..PIPELINES {
        let name = format!("p{i:02}");
        let key = store.pipeline(tenant, &name).await.unwrap();
        for j in 0..RUNS_PER_PIPELINE {
            let lease = store.claim(key, &Holder::this_process("bench"), Duration::from_secs(60)).await.unwrap();
            let started_at = now - (RUNS_PER_PIPELINE - j) as i64 * step;
            let mut run = SyncRun {
                run_id: format!("{name}-{j:04}"),
                pipeline: name.clone(),
                trigger: "schedule".into(),
                status: "running".into(),
                started_at,
                warehouse_state: Some(if j % 10 == 0 { "STOPPED" } else { "RUNNING" }.into()),
                ..Default::default()
            };
            let k = store.begin_run(lease.fence, &run).await.unwrap();
            run.status = if j % 37 == 0 { "failed".into() } else { "succeeded".into() };
            run.ended_at = Some(started_at + 2_000_000 + (j as i64 % 7) * 1_000_000);
            run.counts.rows_read = 1000 + (j as u64 * 37) % 500;
            run.counts.inserted = run.counts.rows_read - 10;
            run.counts.deduplicated = 10;
            if run.status == "failed" {
                run.error_kind = Some("warehouse".into());
                run.error_message = Some("the warehouse stopped while the run waited".into());
            }
            store.finish_run(lease.fence, k, &run).await.unwrap();
            store.release(&lease).await.unwrap();
        }
    }
    drop(store);
    println!(
        "{} pipelines, {} runs written in {:.1} s; each page fetched {n} times in a row",
        PIPELINES,
        PIPELINES * RUNS_PER_PIPELINE,
        seeded.elapsed().as_secs_f64()
    );

    let admin_s = sign_in(&http, &base, &admin).await;
    let rep_s = sign_in(&http, &base, &rep).await;
    // The representative works on acme.
    let page =
        http.get(format!("{base}/tenants")).header("cookie", format!("trig_session={rep_s}")).send().await.unwrap().text().await.unwrap();
    let csrf = between(&page, "name=\"csrf\" value=\"", "\"").to_string();
    let r = http
        .post(format!("{base}/tenants"))
        .header("cookie", format!("trig_session={rep_s}"))
        .form(&[("csrf", csrf.as_str()), ("tenant", "acme")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);

    let home = format!("{base}/settings/integrations/databricks");
    let pages: Vec<(&str, String, Option<&str>)> = vec![
        ("GET /healthz (the baseline: no store, no template)", format!("{base}/healthz"), None),
        ("GET /login (a template, no store)", format!("{base}/login"), None),
        ("settings page (50 pipelines' status, the cost panel)", home.clone(), Some(&admin_s)),
        ("pipeline page (first page of 25 runs, chart of 7 days)", format!("{home}/pipelines/p07"), Some(&admin_s)),
        ("pipeline page, an older page", format!("{home}/pipelines/p07?after=p07-0100"), Some(&admin_s)),
        (
            "mapping editor (representative; lists catalogs, schemas, tables, columns)",
            format!("{home}/pipelines/p07/mapping"),
            Some(&rep_s),
        ),
    ];
    for (what, url, session) in pages {
        let _ = measure(&http, &url, session, 10).await;
        let (p50, p99, bytes) = measure(&http, &url, session, n).await;
        println!("  {what}: p50 {p50:.2} ms, p99 {p99:.2} ms ({} KiB)", bytes / 1024);
    }
    if std::env::var_os("BENCH_KEEP").is_some() {
        println!("kept {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
}

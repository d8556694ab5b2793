//! The binary as a user runs it: `trig-databricks emulator ...`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_trig-databricks");

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn emulator_demo_prints_how_to_reach_it_and_serves() {
    let mut child = Command::new(BIN)
        .args(["emulator", "--demo", "--events", "2000", "--addr", "127.0.0.1:0", "--start-delay-ms", "50"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the binary starts");
    let stdout = child.stdout.take().expect("stdout is piped");
    let _guard = Child(child);
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("one line");
        line
    })
    .await
    .unwrap();
    let info: Value = serde_json::from_str(&line).expect("the first line is JSON");
    for key in ["workspace_url", "http_path", "warehouse_id", "admin_token"] {
        assert!(info[key].as_str().is_some_and(|v| !v.is_empty()), "{key} in {info}");
    }
    for key in ["service_principal", "no_select", "expired", "no_can_use"] {
        assert!(info["tokens"][key].as_str().is_some_and(|v| v.starts_with("dapi")), "tokens.{key} in {info}");
    }
    assert_eq!(info["tables"]["events"], "main.product.events_v");
    assert_eq!(info["tables"]["people"], "main.crm.people");
    assert_eq!(info["tables"]["organisations"], "main.crm.organisations");
    assert_eq!(info["http_path"], format!("/sql/1.0/warehouses/{}", info["warehouse_id"].as_str().unwrap()));

    // It serves what it printed.
    let url = format!("{}/api/2.0/sql/statements", info["workspace_url"].as_str().unwrap());
    let body =
        json!({"statement": "SELECT count(*) FROM main.product.events", "warehouse_id": info["warehouse_id"], "wait_timeout": "30s"});
    let s: Value = reqwest::Client::new()
        .post(url)
        .bearer_auth(info["tokens"]["service_principal"].as_str().unwrap())
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(s["result"]["data_array"], json!([["2000"]]), "{s}");
}

/// Starts `trig-databricks emulator --demo` and returns its JSON line.
async fn demo_emulator() -> (Child, Value) {
    let mut child = Command::new(BIN)
        .args(["emulator", "--demo", "--events", "2000", "--addr", "127.0.0.1:0", "--start-delay-ms", "50"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the binary starts");
    let stdout = child.stdout.take().expect("stdout is piped");
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("one line");
        line
    })
    .await
    .unwrap();
    (Child(child), serde_json::from_str(&line).expect("the first line is JSON"))
}

fn host_of(info: &Value) -> String {
    info["workspace_url"].as_str().unwrap().trim_start_matches("http://").to_string()
}

fn connection_test(info: &Value, token: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "connection".to_string(),
        "test".into(),
        "--workspace-url".into(),
        info["workspace_url"].as_str().unwrap().into(),
        "--http-path".into(),
        info["http_path"].as_str().unwrap().into(),
        "--allow-host".into(),
        host_of(info),
        "--token-env".into(),
        "TRIG_TEST_TOKEN".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    Command::new(BIN)
        .args(&args)
        .env("TRIG_TEST_TOKEN", info["tokens"][token].as_str().unwrap())
        .env_remove("DATABRICKS_TOKEN")
        .output()
        .unwrap()
}

#[tokio::test]
async fn connection_test_by_flags_prints_a_checklist_or_json_and_exits_by_outcome() {
    let (_emu, info) = demo_emulator().await;
    let out = connection_test(&info, "service_principal", &["--catalog", "main", "--json"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["ok"], true);
    assert!(report["catalogs"].as_array().unwrap().contains(&json!("main")));
    for c in report["checks"].as_array().unwrap() {
        for k in ["name", "ok", "detail", "hint"] {
            assert!(c.get(k).is_some(), "{k} missing in {c}");
        }
    }
    let out = connection_test(&info, "no_can_use", &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("✗ Warehouse access") && text.contains("Can use permission"), "{text}");
    // No secret is ever printed.
    for t in info["tokens"].as_object().unwrap().values() {
        let t = t.as_str().unwrap();
        assert!(!stdout.contains(t) && !text.contains(t) && !String::from_utf8_lossy(&out.stderr).contains(t));
    }
    // A bad URL is a failed check, named.
    let out = Command::new(BIN)
        .args(["connection", "test", "--workspace-url", "http://10.0.0.5", "--http-path", "/sql/1.0/warehouses/a1b2c3d4e5f60718"])
        .env("DATABRICKS_TOKEN", "dapi-x")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stdout).contains("✗ Workspace URL"));
    // No credentials at all: the fix is named.
    let out = Command::new(BIN)
        .args([
            "connection",
            "test",
            "--workspace-url",
            "dbc-a1b2c3d4-e5f6.cloud.databricks.com",
            "--http-path",
            "/sql/1.0/warehouses/a1b2c3d4e5f60718",
        ])
        .env_remove("DATABRICKS_TOKEN")
        .env_remove("DATABRICKS_CLIENT_ID")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("DATABRICKS_TOKEN"));
}

#[tokio::test]
async fn connection_test_from_a_config_checks_each_pipeline_source() {
    let (_emu, info) = demo_emulator().await;
    let dir = std::env::temp_dir().join(format!("trig-cli-conn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = format!(
        r#"
[store]
url = "sqlite://trig.db"

[connections.demo]
workspace_url = "{url}"
http_path = "{path}"
token = {{ env = "TRIG_DEMO_TOKEN" }}
default_catalog = "main"
allow_hosts = ["{host}"]

[pipelines.demo_events]
connection = "demo"
kind = "events"
source = "product.events_v"
event_id = "event_id"
event_name = "event_name"
timestamp = "event_ts"
user_id = "user_id"
properties = ["plan", "platform"]
cursor = "ingested_at"

[pipelines.demo_people]
connection = "demo"
kind = "people"
source = "crm.people"
id = "user_id"
name = "name"
organisation_id = "organisation_id"
"#,
        url = info["workspace_url"].as_str().unwrap(),
        path = info["http_path"].as_str().unwrap(),
        host = host_of(&info)
    );
    let file = dir.join("trig.toml");
    std::fs::write(&file, config).unwrap();
    let run = |token: &str| {
        Command::new(BIN)
            .args(["connection", "test", "--config", file.to_str().unwrap(), "--connection", "demo"])
            .env("TRIG_DEMO_TOKEN", info["tokens"][token].as_str().unwrap())
            .output()
            .unwrap()
    };
    let ok = run("service_principal");
    let text = String::from_utf8_lossy(&ok.stdout);
    assert_eq!(ok.status.code(), Some(0), "{text}{}", String::from_utf8_lossy(&ok.stderr));
    assert!(text.contains("✓ Source demo_events") && text.contains("✓ Source demo_people"), "{text}");
    let denied = run("no_select");
    let text = String::from_utf8_lossy(&denied.stdout);
    assert_eq!(denied.status.code(), Some(2), "{text}");
    assert!(text.contains("GRANT SELECT ON TABLE `main`.`product`.`events_v`"), "{text}");
    // An unknown connection names the ones there are.
    let out = Command::new(BIN).args(["connection", "test", "--config", file.to_str().unwrap(), "--connection", "nope"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the connections are: demo"));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_missing_fixture_is_named_with_the_fix() {
    let out = Command::new(BIN).args(["emulator", "--fixture", "/nonexistent/ws.toml", "--addr", "127.0.0.1:0"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot read fixture /nonexistent/ws.toml") && err.contains("--fixture"), "{err}");
}

#[test]
fn the_emulator_needs_a_source() {
    let out = Command::new(BIN).args(["emulator"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--demo") && err.contains("--fixture"), "{err}");
}

#[test]
fn a_taken_port_is_explained() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(BIN).args(["emulator", "--demo", "--events", "100", "--addr", &addr]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot listen on {addr}")) && err.contains("--addr"), "{err}");
}

// ---------------------------------------------------------------------------
// sync, runs, export, demo.

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("trig-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A config against a running emulator, its token in a file beside it
/// (the demo config's parts, `trig_config::demo`); `extra` follows the events pipeline.
fn sync_config(dir: &std::path::Path, info: &Value, token: &str, extra: &str) -> std::path::PathBuf {
    use trig_config::demo;
    std::fs::write(dir.join("token"), info["tokens"][token].as_str().unwrap()).unwrap();
    let text = demo::store("sqlite://trig.db")
        + &demo::connection(
            "demo",
            info["workspace_url"].as_str().unwrap(),
            info["warehouse_id"].as_str().unwrap(),
            &host_of(info),
            "token",
        )
        + &demo::people("people", "demo")
        + &demo::events("events", "demo")
        + extra;
    let file = dir.join("trig.toml");
    std::fs::write(&file, text).unwrap();
    file
}

/// A backfill start a month before the demo's first event (a `backfill_from`
/// line): the backfill then reads windows of a day and more, so a run has
/// several transactions to be killed between. (Without it the start's
/// statement counts the demo's ~2,000 events, and one statement and one
/// transaction read them all.)
fn several_windows() -> String {
    let from = chrono::Utc::now() - chrono::Duration::days(31);
    format!("backfill_from = \"{}\"\n", from.format("%Y-%m-%dT%H:%M:%SZ"))
}

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).env_remove("TRIG_FAILPOINT").output().unwrap()
}

fn text(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn ndjson(o: &std::process::Output) -> Vec<Value> {
    String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).expect("one JSON object per line")).collect()
}

async fn source_ids(info: &Value, cursor: &str) -> std::collections::BTreeSet<String> {
    let statement = format!(
        "SELECT DISTINCT event_id FROM main.product.events_v WHERE event_id IS NOT NULL AND event_name IS NOT NULL \
         AND user_id IS NOT NULL AND event_ts IS NOT NULL AND event_ts <= TIMESTAMP'{cursor}'"
    );
    let s: Value = reqwest::Client::new()
        .post(format!("{}/api/2.0/sql/statements", info["workspace_url"].as_str().unwrap()))
        .bearer_auth(info["tokens"]["service_principal"].as_str().unwrap())
        .json(&json!({"statement": statement, "warehouse_id": info["warehouse_id"], "wait_timeout": "30s"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    s["result"]["data_array"].as_array().unwrap().iter().map(|r| r[0].as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn a_killed_sync_resumes_and_stores_every_event_once() {
    let (_emu, info) = demo_emulator().await;
    let dir = temp_dir("crash");
    let config = sync_config(&dir, &info, "service_principal", &several_windows());
    let c = config.to_str().unwrap();
    assert_eq!(cli(&["sync", "people", "--config", c]).status.code(), Some(0));
    // The third batch's rows are written, then the process dies before the commit.
    let killed =
        Command::new(BIN).args(["sync", "events", "--config", c]).env("TRIG_FAILPOINT", "events_before_commit:3").output().unwrap();
    assert_eq!(killed.status.code(), None, "killed by a signal: {}", text(&killed));
    let resumed = cli(&["sync", "events", "--config", c, "--json"]);
    assert_eq!(resumed.status.code(), Some(0), "{}", text(&resumed));
    let run: Value = serde_json::from_slice(&resumed.stdout).unwrap();
    assert_eq!(run["status"], "succeeded");
    let runs: Value = serde_json::from_slice(&cli(&["runs", "--config", c, "--pipeline", "events", "--json"]).stdout).unwrap();
    let dead = &runs[1];
    assert_eq!(dead["status"], "interrupted", "{runs}");
    // The dead run's record counts the two transactions it committed and ends at the last of them.
    let committed = dead["counts"]["inserted"].as_u64().unwrap() + dead["counts"]["parked"].as_u64().unwrap();
    assert!(committed > 0 && dead["counts"]["rows_read"].as_u64().unwrap() >= committed, "{dead}");
    let (started, ended) = (dead["started_at"].as_i64().unwrap(), dead["ended_at"].as_i64().unwrap());
    assert!(started < ended && ended < run["started_at"].as_i64().unwrap(), "{dead}");
    assert_eq!(run["counts"]["late"], 0, "the resumed backfill re-reads nothing as late: {run}");
    // Every valid source event is stored once (matched or parked).
    let cursor = run["window_to"].as_i64().unwrap();
    let cursor = chrono::DateTime::from_timestamp_micros(cursor).unwrap().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let expected = source_ids(&info, &cursor).await;
    let mut stored = Vec::new();
    for what in ["events", "parked"] {
        let out = cli(&["export", what, "--config", c]);
        stored.extend(ndjson(&out).iter().map(|e| e["event_id"].as_str().unwrap().to_string()));
    }
    let unique: std::collections::BTreeSet<String> = stored.iter().cloned().collect();
    assert_eq!(unique.len(), stored.len(), "nothing is stored twice");
    assert_eq!(unique, expected);
    // The first sync was interrupted, and every event it stored is still a backfilled one.
    let events = ndjson(&cli(&["export", "events", "--config", c]));
    let live = events.iter().filter(|e| e["backfill"] != true).count();
    assert_eq!(live, 0, "{live} of {} events of an interrupted first sync are flagged live", events.len());
    // Each stored event is counted by exactly one run: the dead one's commits, then the resumed one's.
    let counted: u64 =
        [dead, &run].iter().map(|r| r["counts"]["inserted"].as_u64().unwrap() + r["counts"]["rematched"].as_u64().unwrap()).sum();
    assert_eq!(counted, events.len() as u64, "{runs}");
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn two_syncs_at_once_on_one_new_store_both_succeed() {
    let (_emu, info) = demo_emulator().await;
    let dir = temp_dir("together");
    let config = sync_config(&dir, &info, "service_principal", &trig_config::demo::events("events2", "demo"));
    let c = config.to_str().unwrap();
    // Both open a store that does not exist yet (one migrates it), then write side by side.
    let spawn = |p: &str| Command::new(BIN).args(["sync", p, "--config", c]).env_remove("TRIG_FAILPOINT").output().unwrap();
    let (a, b) = std::thread::scope(|sc| {
        let a = sc.spawn(|| spawn("events"));
        let b = sc.spawn(|| spawn("events2"));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_eq!(a.status.code(), Some(0), "{}", text(&a));
    assert_eq!(b.status.code(), Some(0), "{}", text(&b));
    let runs: Value = serde_json::from_slice(&cli(&["runs", "--config", c, "--json"]).stdout).unwrap();
    assert_eq!(runs.as_array().unwrap().iter().filter(|r| r["status"] == "succeeded").count(), 2, "{runs}");
    // A run of the same pipeline while another holds its lease does not start (exit 2, naming
    // the holder and since when), and marks nothing interrupted.
    let store = trig_store::SqliteStore::open(dir.join("trig.db").to_str().unwrap()).unwrap();
    let s: &dyn trig_store::Store = &store;
    let key = s.pipeline(s.tenant("default").await.unwrap(), "events").await.unwrap();
    let held = s.claim(key, &trig_store::Holder::this_process("the test"), std::time::Duration::from_secs(600)).await.unwrap();
    let out = spawn("events");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("pipeline `events` is already running: the test (process"), "{said}");
    assert!(said.contains("has held it since 20") && said.contains("--wait"), "{said}");
    let after: Value = serde_json::from_slice(&cli(&["runs", "--config", c, "--json"]).stdout).unwrap();
    assert_eq!(after, runs, "no run was recorded or marked interrupted");
    // `--wait` waits for the holder, then runs.
    let waiting = Command::new(BIN)
        .args(["sync", "events", "--config", c, "--wait"])
        .env_remove("TRIG_FAILPOINT")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    s.release(&held).await.unwrap();
    let out = waiting.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(spawn("events").status.code(), Some(0), "released, it runs");
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn sync_dry_run_json_exit_codes_and_no_secret_printed() {
    let (_emu, info) = demo_emulator().await;
    let dir = temp_dir("sync");
    let config = sync_config(&dir, &info, "service_principal", "");
    let c = config.to_str().unwrap();
    let token = info["tokens"]["service_principal"].as_str().unwrap();

    // Dry run: the statement, its parameters and 20 mapped rows; nothing written.
    let dry = cli(&["sync", "events", "--config", c, "--dry-run", "--json"]);
    assert_eq!(dry.status.code(), Some(0), "{}", text(&dry));
    let d: Value = serde_json::from_slice(&dry.stdout).unwrap();
    assert!(d["sql"].as_str().unwrap().contains("FROM `main`.`product`.`events_v`"), "{d}");
    assert_eq!(d["parameters"][0]["name"], "window_from");
    assert_eq!(d["parameters"][0]["type"], "TIMESTAMP");
    assert_eq!(d["rows"].as_array().unwrap().len(), 20);
    assert!(ndjson(&cli(&["export", "events", "--config", c])).is_empty(), "a dry run writes nothing");

    // A real run prints its record; export has the documented keys.
    assert_eq!(cli(&["sync", "people", "--config", c]).status.code(), Some(0));
    let run = cli(&["sync", "events", "--config", c, "--json", "--print-sql"]);
    assert_eq!(run.status.code(), Some(0), "{}", text(&run));
    let r: Value = serde_json::from_slice(&run.stdout).unwrap();
    for k in [
        "run_id",
        "pipeline",
        "trigger",
        "status",
        "started_at",
        "ended_at",
        "window_from",
        "window_to",
        "statement_ids",
        "counts",
        "warehouse_state",
    ] {
        assert!(r.get(k).is_some(), "{k} in {r}");
    }
    assert!(String::from_utf8_lossy(&run.stderr).contains("-- parameters: :window_from = "), "--print-sql shows each statement");
    let events = ndjson(&cli(&["export", "events", "--config", c]));
    assert!(events.len() as u64 == r["counts"]["inserted"].as_u64().unwrap() && !events.is_empty());
    for k in ["event_id", "event_name", "timestamp", "person_id", "email", "properties", "backfill", "pipeline"] {
        assert!(events[0].get(k).is_some(), "{k} in {}", events[0]);
    }
    assert!(events[0]["timestamp"].as_str().unwrap().ends_with('Z'));
    let people = ndjson(&cli(&["export", "people", "--config", c]));
    for k in ["id", "name", "email", "organisation_id", "attributes"] {
        assert!(people[0].get(k).is_some(), "{k} in {}", people[0]);
    }
    let runs = cli(&["runs", "--config", c]);
    assert!(String::from_utf8_lossy(&runs.stdout).contains("events (manual): succeeded"), "{}", text(&runs));

    // Bad input: named, with the fix, exit 2.
    let bad = sync_config(&dir, &info, "service_principal", "").with_file_name("bad.toml");
    std::fs::write(&bad, std::fs::read_to_string(&config).unwrap().replace("lookback = \"2h\"", "lookback = \"two hours\"")).unwrap();
    let out = cli(&["sync", "events", "--config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("pipelines.events.lookback") && text(&out).contains("30s, 15m, 2h, 1d"), "{}", text(&out));
    let out = cli(&["sync", "nope", "--config", c]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("the pipelines are: events, people"), "{}", text(&out));
    let out = cli(&["sync", "events", "--config", c, "--from", "yesterday", "--to", "2026-01-01T00:00:00Z"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("--from: `yesterday` is not an RFC 3339 time"), "{}", text(&out));

    // A missing grant: exit 2 with the GRANT to run.
    let denied = sync_config(&dir, &info, "no_select", "");
    let out = cli(&["sync", "events", "--config", denied.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("fix: Run: GRANT SELECT ON"), "{}", text(&out));

    // Databricks keeps failing: exit 3 (transient).
    let ok = sync_config(&dir, &info, "service_principal", "");
    reqwest::Client::new()
        .post(format!("{}/emulator/v1/faults", info["workspace_url"].as_str().unwrap()))
        .bearer_auth(info["admin_token"].as_str().unwrap())
        .json(&json!({"kind": "status", "status": 503, "path_prefix": "/api/2.0/sql/statements"}))
        .send()
        .await
        .unwrap();
    let out = cli(&["sync", "events", "--config", ok.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(!text(&out).contains(token) && !text(&run).contains(token) && !text(&dry).contains(token), "a secret was printed");
    std::fs::remove_dir_all(dir).ok();
}

/// The first `trig_session` cookie a response sets.
fn session_cookie(r: &reqwest::Response) -> Option<String> {
    r.headers().get_all("set-cookie").iter().filter_map(|v| v.to_str().ok()).find_map(|v| {
        let pair = v.split(';').next()?.strip_prefix("trig_session=")?;
        Some(pair.to_string())
    })
}

#[tokio::test]
async fn the_demo_syncs_everything_and_leaves_a_config_and_a_database() {
    let dir = temp_dir("demo");
    // --serve: the demo keeps its workspace up after the report, and serves the pages, until interrupted.
    let mut child = Command::new(BIN)
        .args(["demo", "--dir", dir.to_str().unwrap(), "--events", "5000", "--serve", "--addr", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let guard = Child(child);
    let mut stdout = String::new();
    while !stdout.contains("keeps serving") {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "the demo ended early: {stdout}");
        stdout.push_str(&line);
    }
    // The config it wrote works against the workspace it serves.
    let again = cli(&["sync", "demo_events", "--config", dir.join("trig-demo.toml").to_str().unwrap(), "--json"]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    let run: Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(run["counts"]["inserted"], 0, "everything was stored by the demo: {run}");

    // The pages, through the login links it printed: once each.
    let link = |who: &str| {
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("as {who}")))
            .unwrap_or_else(|| panic!("no link for {who}: {stdout}"));
        line.rsplit(' ').next().unwrap().to_string()
    };
    let (admin, rep) = (link("a customer admin"), link("a Trig representative"));
    let base = admin.split("/login/link/").next().unwrap().to_string();
    assert!(stdout.contains(&format!("The pages: {base}/settings/integrations/databricks")), "{stdout}");
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let r = http.get(&admin).send().await.unwrap();
    assert_eq!(r.status(), 303);
    let session = session_cookie(&r).expect("the link starts a session");
    let page = http
        .get(format!("{base}/settings/integrations/databricks"))
        .header("cookie", format!("trig_session={session}"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    for want in ["demo_events", "demo_people", "demo_organisations", "Healthy"] {
        assert!(page.contains(want), "`{want}` on the settings page: {page}");
    }
    assert_eq!(http.get(&admin).send().await.unwrap().status(), 401, "a login link works once");
    let r = http.get(&rep).send().await.unwrap();
    let session = session_cookie(&r).expect("the representative's link starts a session");
    let page = http.get(format!("{base}/tenants")).header("cookie", format!("trig_session={session}")).send().await.unwrap();
    assert_eq!(page.status(), 200, "a representative chooses a tenant");
    assert!(page.text().await.unwrap().contains("default"));

    // tokens link: another link for a live token; a wrong id or URL is named.
    let c = dir.join("trig-demo.toml");
    let c = c.to_str().unwrap();
    let tokens: Value = serde_json::from_slice(&cli(&["tokens", "list", "--config", c, "--json"]).stdout).unwrap();
    let id = tokens.as_array().unwrap().iter().find(|t| t["role"] == "admin").unwrap()["id"].to_string();
    let out = cli(&["tokens", "link", &id, "--url", &format!("{base}/"), "--config", c]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let again = String::from_utf8(out.stdout).unwrap();
    assert!(again.trim().starts_with(&format!("{base}/login/link/")), "{again}");
    let r = http.get(again.trim()).send().await.unwrap();
    assert!(r.status() == 303 && session_cookie(&r).is_some());
    let out = cli(&["tokens", "link", "999", "--config", c]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("ID: there is no live token 999") && text(&out).contains("tokens list"), "{}", text(&out));
    let out = cli(&["tokens", "link", &id, "--url", "localhost:8080", "--config", c]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("--url") && text(&out).contains("http://127.0.0.1:8080"), "{}", text(&out));
    drop(guard);
    // A port already taken is said at once, before the demo does its work.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let other = temp_dir("demo-port");
    let out = cli(&["demo", "--dir", other.to_str().unwrap(), "--events", "1000", "--serve", "--addr", &addr]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains(&format!("--addr: cannot listen on {addr}")) && text(&out).contains("choose another"), "{}", text(&out));
    assert!(!text(&out).contains("First sync"), "nothing was done first: {}", text(&out));
    std::fs::remove_dir_all(other).ok();
    for want in ["Connection OK.", "First sync", "Second sync", "Report", "deduplicated", "late           40", "parked", "quarantined"] {
        assert!(stdout.contains(want), "`{want}` in {stdout}");
    }
    let config = dir.join("trig-demo.toml");
    let token = std::fs::read_to_string(dir.join("trig-demo.token")).unwrap();
    assert!(!std::fs::read_to_string(&config).unwrap().contains(&token), "the config references the token, never holds it");
    assert!(!stdout.contains(&token));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(dir.join("trig-demo.token")).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let c = config.to_str().unwrap();
    let runs: Value = serde_json::from_slice(&cli(&["runs", "--config", c, "--json"]).stdout).unwrap();
    assert_eq!(runs.as_array().unwrap().len(), 5, "four by the demo, one by hand");
    let live = ndjson(&cli(&["export", "events", "--config", c])).into_iter().filter(|e| e["backfill"] == false).count();
    assert_eq!(live, 250, "200 new + 40 late + 10 for new people; duplicates and broken rows are not stored");
    let orgs = ndjson(&cli(&["export", "organisations", "--config", c]));
    assert!(orgs.iter().all(|o| o.get("domain").is_some() && o.get("attributes").is_some()));
    std::fs::remove_dir_all(dir).ok();
}

// ---------------------------------------------------------------------------
// Output for scripts and logs, stores that cannot be used, Databricks profiles.

fn json_errors(o: &std::process::Output) -> Vec<Value> {
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(o)));
    assert_eq!(v["ok"], false, "{v}");
    let errors = v["errors"].as_array().unwrap().clone();
    for e in &errors {
        assert!(e["key"].is_string() && e["message"].is_string() && e.get("hint").is_some(), "{e}");
    }
    errors
}

#[tokio::test]
async fn json_is_printed_whatever_fails_and_plain_text_has_no_colour_and_no_repeat() {
    let (_emu, info) = demo_emulator().await;
    let dir = temp_dir("json");
    let config = sync_config(&dir, &info, "service_principal", "");
    let c = config.to_str().unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, std::fs::read_to_string(&config).unwrap().replace("lookback = \"2h\"", "lookback = \"two hours\"")).unwrap();
    let b = bad.to_str().unwrap();
    // A bad config, for each command that takes --json: the same error object, exit 2.
    for args in [
        vec!["sync", "events", "--config", b, "--json"],
        vec!["sync", "events", "--config", b, "--json", "--dry-run"],
        vec!["runs", "--config", b, "--json"],
        vec!["connection", "test", "--config", b, "--connection", "demo", "--json"],
    ] {
        let out = cli(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        let errors = json_errors(&out);
        assert!(errors.iter().any(|e| e["key"].as_str().unwrap().ends_with("pipelines.events.lookback")), "{args:?}: {errors:?}");
    }
    // A bad flag value, a flag clap refuses, an unknown pipeline, missing credentials: JSON too.
    let out = cli(&["sync", "events", "--config", c, "--json", "--from", "yesterday", "--to", "2026-01-01T00:00:00Z"]);
    assert_eq!((out.status.code(), json_errors(&out)[0]["key"].as_str()), (Some(2), Some("--from")));
    let out = cli(&["sync", "events", "--config", c, "--json", "--bogus"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(json_errors(&out)[0]["message"].as_str().unwrap().contains("--bogus"), "{}", text(&out));
    let out = cli(&["runs", "--config", c, "--pipeline", "nope", "--json"]);
    assert_eq!((out.status.code(), json_errors(&out)[0]["key"].as_str()), (Some(2), Some("--pipeline")));
    let out = Command::new(BIN)
        .args(["connection", "test", "--workspace-url", "dbc-a1b2c3d4-e5f6.cloud.databricks.com", "--json"])
        .env_remove("DATABRICKS_TOKEN")
        .env_remove("DATABRICKS_CLIENT_ID")
        .env_remove("DATABRICKS_CONFIG_PROFILE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let keys: Vec<String> = json_errors(&out).iter().map(|e| e["key"].as_str().unwrap().to_string()).collect();
    assert_eq!(keys, ["--http-path", "--token-env"], "every missing setting at once");

    // A failed run, captured as a log would be: no escape codes, the error said once.
    assert_eq!(cli(&["sync", "people", "--config", c]).status.code(), Some(0));
    let denied = sync_config(&dir, &info, "no_select", "");
    let out = Command::new(BIN)
        .args(["sync", "events", "--config", denied.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .env_remove("TRIG_FAILPOINT")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains('\u{1b}'), "escape codes in a captured log: {err:?}");
    assert_eq!(err.matches("GRANT SELECT ON").count(), 1, "the error is printed once: {err}");
    // With --json the failed run is its record, and nothing else on stdout.
    let out = cli(&["sync", "events", "--config", denied.to_str().unwrap(), "--json"]);
    let run: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    assert_eq!((out.status.code(), run["status"].as_str()), (Some(2), Some("failed")));
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn a_store_that_is_not_a_database_is_named_with_what_to_do() {
    let (_emu, info) = demo_emulator().await;
    let dir = temp_dir("corrupt");
    let config = sync_config(&dir, &info, "service_principal", "");
    let c = config.to_str().unwrap();
    std::fs::write(dir.join("trig.db"), "not a database, a shopping list\n".repeat(300)).unwrap();
    for args in [vec!["sync", "events", "--config", c], vec!["runs", "--config", c], vec!["export", "events", "--config", c]] {
        let out = cli(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        let t = text(&out);
        assert!(t.contains(&dir.join("trig.db").display().to_string()) && t.contains("restore it from a backup"), "{t}");
    }
    let out = cli(&["runs", "--config", c, "--json"]);
    assert_eq!(json_errors(&out)[0]["key"], "store.url");
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn connection_test_reads_databricks_profiles() {
    let (_emu, info) = demo_emulator().await;
    let dir = temp_dir("profile");
    let token = info["tokens"]["service_principal"].as_str().unwrap();
    let cfg = dir.join("databrickscfg");
    std::fs::write(
        &cfg,
        format!(
            "[DEFAULT]\nhost = https://elsewhere.cloud.databricks.com\n\n[demo]\nhost = {}\ntoken = {token}\n",
            info["workspace_url"].as_str().unwrap()
        ),
    )
    .unwrap();
    let test = |profile_args: &[&str], env_profile: Option<&str>| {
        let mut cmd = Command::new(BIN);
        cmd.args(["connection", "test", "--http-path", info["http_path"].as_str().unwrap(), "--allow-host", &host_of(&info)])
            .args(profile_args)
            .env("DATABRICKS_CONFIG_FILE", &cfg)
            .env_remove("DATABRICKS_TOKEN")
            .env_remove("DATABRICKS_HOST")
            .env_remove("DATABRICKS_CONFIG_PROFILE");
        if let Some(p) = env_profile {
            cmd.env("DATABRICKS_CONFIG_PROFILE", p);
        }
        cmd.output().unwrap()
    };
    let out = test(&["--profile", "demo"], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("Connection OK."), "{}", text(&out));
    let out = test(&[], Some("demo"));
    assert_eq!(out.status.code(), Some(0), "DATABRICKS_CONFIG_PROFILE: {}", text(&out));
    let out = test(&["--profile", "acme"], None);
    assert_eq!(out.status.code(), Some(2));
    let t = text(&out);
    assert!(t.contains(&cfg.display().to_string()) && t.contains("no profile [acme]") && t.contains("demo"), "{t}");
    assert!(!t.contains(token), "{t}");

    // A config file's connection may name a profile instead of its own keys.
    let config = dir.join("trig.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\nurl = \"sqlite://trig.db\"\n\n[connections.demo]\nprofile = \"demo\"\nhttp_path = \"{}\"\ndefault_catalog = \"main\"\nallow_hosts = [\"{}\"]\n",
            info["http_path"].as_str().unwrap(),
            host_of(&info)
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["connection", "test", "--config", config.to_str().unwrap(), "--connection", "demo"])
        .env("DATABRICKS_CONFIG_FILE", &cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    std::fs::remove_dir_all(dir).ok();
}

/// `sync_config` with another `[store] url` line.
fn with_store(config: &std::path::Path, url_line: &str) {
    let text = std::fs::read_to_string(config).unwrap().replace("url = \"sqlite://trig.db\"", url_line);
    std::fs::write(config, text).unwrap();
}

#[tokio::test]
async fn a_postgres_store_that_cannot_be_used_is_named_and_two_processes_share_one_that_can() {
    let (_emu, info) = demo_emulator().await;
    let dir = temp_dir("postgres");
    let config = sync_config(&dir, &info, "service_principal", "");
    let c = config.to_str().unwrap();
    let original = std::fs::read_to_string(&config).unwrap();
    let reset = || std::fs::write(&config, &original).unwrap();

    // Nothing listens on port 1: transient (exit 3), naming host and port; the password, from
    // the environment, is never printed.
    with_store(&config, "url = { env = \"TRIG_TEST_STORE_URL\" }");
    let out = Command::new(BIN)
        .args(["sync", "events", "--config", c])
        .env("TRIG_TEST_STORE_URL", "postgres://root:hunter2-not-printed@127.0.0.1:1/test")
        .output()
        .unwrap();
    let said = text(&out);
    assert_eq!(out.status.code(), Some(3), "{said}");
    assert!(said.contains("cannot reach the PostgreSQL store at 127.0.0.1:1/test") && said.contains("the next run retries"), "{said}");
    assert!(!said.contains("hunter2"), "the password is printed: {said}");
    reset();
    // A password written into the file itself is refused, and not echoed.
    with_store(&config, "url = \"postgres://root:hunter2-in-the-file@127.0.0.1:1/test\"");
    let out = cli(&["sync", "events", "--config", c]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("store.url") && !said.contains("hunter2"), "{said}");
    reset();

    let Some(server) = trig_store::testing::postgres_server("the CLI") else { return };
    let (base, _) = server.rsplit_once('/').unwrap();
    let host = base.rsplit_once('@').map_or(base, |(_, h)| h).to_string();
    // A database that does not exist, and a user the server does not know: exit 2, naming which.
    with_store(&config, &format!("url = \"postgres://root@{host}/trig_no_such_database\""));
    let out = cli(&["sync", "events", "--config", c]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("trig_no_such_database") && said.contains("create the database"), "{said}");
    reset();
    with_store(&config, &format!("url = \"postgres://trig_nobody_at_all@{host}/test\""));
    let out = cli(&["sync", "events", "--config", c]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("trig_nobody_at_all") && said.contains("check the user and password"), "{said}");
    reset();

    // A fresh database: two processes sync the same pipeline at once with --wait; one waits for
    // the other's lease, both succeed, and every event is stored once.
    let db = trig_store::testing::FreshDatabase::create(&server, "trig_cli_test");
    with_store(&config, &format!("url = \"{}\"", db.url));
    assert_eq!(cli(&["sync", "people", "--config", c]).status.code(), Some(0));
    let spawn = || Command::new(BIN).args(["sync", "events", "--config", c, "--wait"]).env_remove("TRIG_FAILPOINT").output().unwrap();
    let (a, b) = std::thread::scope(|sc| {
        let a = sc.spawn(spawn);
        let b = sc.spawn(spawn);
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_eq!(a.status.code(), Some(0), "{}", text(&a));
    assert_eq!(b.status.code(), Some(0), "{}", text(&b));
    let runs: Value = serde_json::from_slice(&cli(&["runs", "--config", c, "--json"]).stdout).unwrap();
    let events_runs: Vec<&Value> = runs.as_array().unwrap().iter().filter(|r| r["pipeline"] == "events").collect();
    assert_eq!(events_runs.iter().filter(|r| r["status"] == "succeeded").count(), 2, "{runs}");
    let events = ndjson(&cli(&["export", "events", "--config", c]));
    let ids: std::collections::BTreeSet<&str> = events.iter().map(|e| e["event_id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), events.len(), "an event stored twice");
    let inserted: u64 =
        events_runs.iter().map(|r| r["counts"]["inserted"].as_u64().unwrap() + r["counts"]["rematched"].as_u64().unwrap()).sum();
    assert!(events.len() > 100);
    assert_eq!(inserted, events.len() as u64, "each event was counted by the one run that stored it");
    drop(db);
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn tenants_tokens_and_serve_from_a_config_holding_only_its_store() {
    let dir = temp_dir("serve");
    let config = dir.join("trig.toml");
    std::fs::write(&config, "[store]\nurl = \"sqlite://trig.db\"\n").unwrap();
    let c = config.to_str().unwrap();
    let o = cli(&["secrets", "rotate", "--config", c]);
    assert!(o.status.success() && text(&o).contains("0 sealed again"), "nothing to rotate yet: {}", text(&o));

    let o = cli(&["tenants", "create", "acme", "--name", "Acme Corp", "--config", c]);
    assert!(o.status.success(), "{}", text(&o));
    let o = cli(&["tenants", "create", "acme", "--config", c]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("tenant `acme` exists already"), "{}", text(&o));
    let o = cli(&["tenants", "create", "Acme Corp", "--config", c]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("error: ID: `Acme Corp` is not a tenant name"), "{}", text(&o));
    let o = cli(&["tenants", "list", "--json", "--config", c]);
    let listed: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(listed.as_array().unwrap().iter().any(|t| t["name"] == "acme" && t["display_name"] == "Acme Corp"), "{listed}");

    // A token alone on stdout, once; the list never shows it.
    let o = cli(&["tokens", "create", "--tenant", "acme", "--role", "admin", "--label", "acme's admin", "--config", c]);
    assert!(o.status.success(), "{}", text(&o));
    let admin = String::from_utf8(o.stdout.clone()).unwrap().trim().to_string();
    assert!(admin.starts_with("trig_") && !admin.contains(char::is_whitespace), "{admin}");
    let o = cli(&["tenants", "create", "trig", "--config", c]);
    assert!(o.status.success());
    let o = cli(&["tokens", "create", "--tenant", "trig", "--role", "representative", "--config", c]);
    let rep = String::from_utf8(o.stdout.clone()).unwrap().trim().to_string();
    let o = cli(&["tokens", "list", "--config", c]);
    assert!(
        o.status.success() && text(&o).contains("acme's admin") && !text(&o).contains(&admin) && !text(&o).contains(&rep),
        "{}",
        text(&o)
    );
    let o = cli(&["tokens", "create", "--tenant", "nobody", "--role", "admin", "--config", c]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("--tenant: there is no tenant `nobody`") && text(&o).contains("tenants create nobody"), "{}", text(&o));
    let o = cli(&["tokens", "create", "--tenant", "acme", "--role", "owner", "--config", c]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("--role") && text(&o).contains("use admin or representative"), "{}", text(&o));
    let db = std::fs::read(dir.join("trig.db")).unwrap();
    assert!(!db.windows(admin.len()).any(|w| w == admin.as_bytes()), "the store holds no token in clear");

    // serve: a key made beside the database (0600), the API on the port it prints, a clean stop on SIGTERM;
    // the config file's connection is loaded into its tenant.
    std::fs::write(
        &config,
        String::from("[store]\nurl = \"sqlite://trig.db\"\n")
            + &trig_config::demo::connection("demo", "https://adb-1234567890123456.7.azuredatabricks.net", "abc123", "localhost", "token"),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--config", c, "--addr", "127.0.0.1:0"])
        .env_remove("TRIG_SECRET_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap();
    let base = serde_json::from_str::<Value>(&line).unwrap()["listening"].as_str().unwrap().to_string();
    // The config file's connection is listed in its tenant, read-only, its secret where the file says.
    let (status, listed) = {
        let r = reqwest::Client::new().get(format!("{base}/api/v1/tenants/default/connections")).bearer_auth(&rep).send().await.unwrap();
        (r.status(), r.json::<Value>().await.unwrap())
    };
    assert_eq!(status, 200, "{listed}");
    let file_conn = &listed["connections"][0];
    assert_eq!((file_conn["id"].as_str(), file_conn["read_only"].as_bool()), (Some("demo"), Some(true)), "{listed}");
    assert!(file_conn["secret_from"].as_str().unwrap().contains("token"), "{listed}");
    let r =
        reqwest::Client::new().delete(format!("{base}/api/v1/tenants/default/connections/demo")).bearer_auth(&rep).send().await.unwrap();
    assert_eq!(r.status(), 409);
    let e: Value = r.json().await.unwrap();
    assert!(e["error"]["message"].as_str().unwrap().contains("read-only here; change it in the file"), "{e}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(dir.join("trig.db.key")).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let http = reqwest::Client::new();
    let get = |token: &str| http.get(format!("{base}/api/v1/tenants")).bearer_auth(token.to_string()).send();
    assert_eq!(get(&admin).await.unwrap().status(), 403);
    let r = get(&rep).await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    let ids: Vec<&str> = body["tenants"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec!["acme", "default", "trig"], "the config's own tenant exists too");
    let id = cli(&["tokens", "list", "--json", "--config", c]);
    let rep_id = serde_json::from_slice::<Value>(&id.stdout).unwrap().as_array().unwrap()[1]["id"].as_i64().unwrap();
    assert!(cli(&["tokens", "revoke", &rep_id.to_string(), "--config", c]).status.success());
    assert_eq!(get(&rep).await.unwrap().status(), 401, "revoked while serving: refused at once");
    let o = cli(&["tokens", "revoke", &rep_id.to_string(), "--config", c]);
    assert_eq!(o.status.code(), Some(2));
    #[cfg(unix)]
    {
        Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(0), "SIGTERM stops serve cleanly");
    }
    #[cfg(not(unix))]
    let _ = child.kill();

    // On PostgreSQL several processes share the secrets: no key, no start.
    std::fs::write(&config, "[store]\nurl = \"postgres://trig@127.0.0.1:1/trig\"\n").unwrap();
    let o = Command::new(BIN).args(["serve", "--config", c, "--addr", "127.0.0.1:0"]).env_remove("TRIG_SECRET_KEY").output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("TRIG_SECRET_KEY: is not set") && text(&o).contains("head -c 32 /dev/urandom | base64"), "{}", text(&o));
    let o = Command::new(BIN).args(["serve", "--config", c]).env("TRIG_SECRET_KEY", "short").output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("TRIG_SECRET_KEY") && !text(&o).contains("short"), "{}", text(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A pipeline's name, events, parked events and succeeded runs.
type PipelineCounts = (String, i64, i64, i64);

/// Starts `trig-databricks serve` and returns it with the URL it listens on.
async fn serve(config: &str, extra: &[&str]) -> (Child, String) {
    let mut child = Command::new(BIN)
        .args(["serve", "--config", config, "--addr", "127.0.0.1:0", "--scheduler-tick-ms", "200"])
        .args(extra)
        .env("TRIG_SECRET_KEY", "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=")
        .env_remove("TRIG_FAILPOINT")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap();
    let base = serde_json::from_str::<Value>(&line).unwrap_or_else(|_| panic!("serve printed {line:?}"))["listening"]
        .as_str()
        .unwrap()
        .to_string();
    (Child(child), base)
}

#[tokio::test]
async fn three_serve_processes_on_one_postgres_run_every_pipeline_once_at_a_time_through_a_kill() {
    let Some(server) = trig_store::testing::postgres_server("the scale-out test") else { return };
    let db = trig_store::testing::FreshDatabase::create(&server, "trig_scale");
    let (_emu, info) = demo_emulator().await;
    let dir = temp_dir("scale");
    // The reference: one pipeline synced once by the CLI into SQLite.
    let reference = sync_config(&dir, &info, "service_principal", "");
    let r = cli(&["sync", "events", "--config", reference.to_str().unwrap(), "--json"]);
    assert!(r.status.success(), "{}", text(&r));
    let o = cli(&["export", "events", "--config", reference.to_str().unwrap()]);
    let expected_events = ndjson(&o).len() as i64;
    let o = cli(&["export", "parked", "--config", reference.to_str().unwrap()]);
    let expected_parked = ndjson(&o).len() as i64;
    assert!(expected_events > 1000, "{expected_events}");

    // 30 events pipelines on one warehouse, in a config three processes share.
    const N: usize = 30;
    let mut text = format!("[store]\nurl = \"{}\"\n", db.url)
        + &trig_config::demo::connection(
            "demo",
            info["workspace_url"].as_str().unwrap(),
            info["warehouse_id"].as_str().unwrap(),
            &host_of(&info),
            "token",
        );
    for i in 0..N {
        text += &(trig_config::demo::events(&format!("e{i:02}"), "demo") + &several_windows());
    }
    let config = dir.join("scale.toml");
    std::fs::write(&config, text).unwrap();
    let c = config.to_str().unwrap();
    let mut procs = Vec::new();
    for _ in 0..3 {
        procs.push(serve(c, &["--lease-ttl-secs", "3"]).await);
    }

    // Kill one process while it holds a lease (mid-run), with SIGKILL.
    let url = db.url.clone();
    let victim = procs[0].0.0.id() as i64;
    let killed = std::thread::spawn(move || {
        let mut pg = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            let held: i64 = pg
                .query_one(
                    "SELECT count(*) FROM pipelines p JOIN sync_runs r ON r.pipeline_id = p.id AND r.status = 'running'
                     WHERE p.holder_pid = $1 AND r.rows_read > 0",
                    &[&victim],
                )
                .unwrap()
                .get(0);
            if held > 0 {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        false
    })
    .join()
    .unwrap();
    assert!(killed, "the first process never ran a pipeline");
    Command::new("kill").args(["-KILL", &victim.to_string()]).status().unwrap();

    // Every pipeline ends with exactly the source's events, each once.
    let url = db.url.clone();
    let checked = std::thread::spawn(move || -> (Vec<PipelineCounts>, i64, i64) {
        let mut pg = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
        loop {
            let rows = pg
                .query(
                    "SELECT p.name,
                       (SELECT count(*) FROM events e WHERE e.pipeline_id = p.id),
                       (SELECT count(*) FROM parked_events e WHERE e.pipeline_id = p.id),
                       (SELECT count(*) FROM sync_runs r WHERE r.pipeline_id = p.id AND r.status = 'succeeded')
                     FROM pipelines p WHERE p.definition IS NOT NULL ORDER BY p.name",
                    &[],
                )
                .unwrap();
            let all: Vec<PipelineCounts> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect();
            if all.len() == N && all.iter().all(|(_, _, _, ok)| *ok > 0) {
                // No pipeline ever ran twice at once: its runs' intervals never overlap.
                let overlaps: i64 = pg
                    .query_one(
                        "SELECT count(*) FROM sync_runs a JOIN sync_runs b ON a.pipeline_id = b.pipeline_id AND a.id < b.id
                         WHERE a.started_at < COALESCE(b.ended_at, 9223372036854775807)
                           AND b.started_at < COALESCE(a.ended_at, 9223372036854775807)",
                        &[],
                    )
                    .unwrap()
                    .get(0);
                let interrupted: i64 = pg.query_one("SELECT count(*) FROM sync_runs WHERE status = 'interrupted'", &[]).unwrap().get(0);
                // At most 2 runs (the default) on the one warehouse at any moment, across the 3 processes.
                let widest: i64 = pg
                    .query_one(
                        "SELECT COALESCE(MAX(n), 0) FROM (SELECT (SELECT count(*) FROM sync_runs b
                           WHERE b.started_at <= a.started_at AND COALESCE(b.ended_at, 9223372036854775807) > a.started_at) AS n
                         FROM sync_runs a) x",
                        &[],
                    )
                    .unwrap()
                    .get(0);
                assert!(widest <= 2, "{widest} runs on one warehouse at once");
                return (all, overlaps, interrupted);
            }
            assert!(std::time::Instant::now() < deadline, "not every pipeline finished: {all:?}");
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    })
    .join()
    .unwrap();
    let (all, overlaps, interrupted) = checked;
    for (name, events, parked, _) in &all {
        assert_eq!(
            (*events, *parked),
            (expected_events, expected_parked),
            "pipeline {name}: events and parked as the reference sync stored them"
        );
    }
    assert_eq!(overlaps, 0, "two runs of one pipeline overlapped");
    assert!(interrupted >= 1, "the killed process's run is marked interrupted by the process that took over");
    drop(procs);
}

#[tokio::test]
async fn sigterm_stops_serve_within_its_deadline_and_the_next_start_resumes() {
    // A warehouse that takes 5 s to start: the first run is waiting for it when serve is told to stop.
    let mut child = Command::new(BIN)
        .args(["emulator", "--demo", "--events", "2000", "--addr", "127.0.0.1:0", "--start-delay-ms", "5000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _emu = Child(child);
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap();
    let info: Value = serde_json::from_str(&line).unwrap();
    let dir = temp_dir("sigterm");
    let config = sync_config(&dir, &info, "service_principal", "");
    let c = config.to_str().unwrap();
    let (mut serving, _base) = serve(c, &["--shutdown-deadline-secs", "10"]).await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let asked = std::time::Instant::now();
    #[cfg(unix)]
    Command::new("kill").args(["-TERM", &serving.0.id().to_string()]).status().unwrap();
    let status = serving.0.wait().unwrap();
    assert_eq!(status.code(), Some(0), "a clean stop");
    assert!(asked.elapsed() < std::time::Duration::from_secs(10), "within the deadline: {:?}", asked.elapsed());
    let o = cli(&["runs", "--config", c, "--json"]);
    let runs: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(runs.as_array().unwrap().iter().any(|r| r["status"] == "cancelled"), "the run in flight was stopped and recorded: {runs}");

    // Started again, the pipelines run to the end; the stopped one is due at once.
    let (_again, _) = serve(c, &[]).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let o = cli(&["runs", "--config", c, "--json"]);
        let runs: Value = serde_json::from_slice(&o.stdout).unwrap();
        let ok: std::collections::BTreeSet<&str> =
            runs.as_array().unwrap().iter().filter(|r| r["status"] == "succeeded").filter_map(|r| r["pipeline"].as_str()).collect();
        if ok.contains("events") && ok.contains("people") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not resumed: {runs}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let events = ndjson(&cli(&["export", "events", "--config", c]));
    let ids: std::collections::BTreeSet<&str> = events.iter().filter_map(|e| e["event_id"].as_str()).collect();
    assert_eq!(ids.len(), events.len(), "each event once");
    assert!(!events.is_empty());
}

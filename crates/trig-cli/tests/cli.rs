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

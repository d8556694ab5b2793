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

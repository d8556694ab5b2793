//! The API end to end: a real server on a real store, spoken to over HTTP.

use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use trig_server::secrets::{KeySource, Keyring};
use trig_server::{ServeOptions, Server};
use trig_store::{SqliteStore, Store, TenantName};

struct Running {
    base: String,
    store: Arc<dyn Store>,
    stop: CancellationToken,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn start(name: &str) -> Running {
    let dir = std::env::temp_dir().join(format!("trig-server-api-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.join("trig.db").to_str().unwrap()).unwrap());
    let keys = Keyring::new("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", &[], KeySource::Environment).unwrap();
    let options = ServeOptions { addr: "127.0.0.1:0".parse().unwrap(), ..Default::default() };
    let server = Server::bind(store.clone(), keys, options).await.unwrap();
    let base = format!("http://{}", server.local_addr().unwrap());
    let stop = CancellationToken::new();
    tokio::spawn(server.run(stop.clone()));
    Running { base, store, stop, _dir: TempDir(dir) }
}

/// A token of `role` for tenant `tenant` (created when new), as `tokens create` makes one.
async fn token(store: &dyn Store, tenant: &str, role: &str) -> String {
    let t = match store.tenant_info(tenant).await.unwrap() {
        Some(t) => t,
        None => store.create_tenant(&TenantName::parse(tenant).unwrap(), None).await.unwrap(),
    };
    let token = trig_server::auth::new_token().unwrap();
    store.create_token(t.id, role, &trig_server::auth::token_hash(&token), "").await.unwrap();
    token
}

async fn call(method: reqwest::Method, url: &str, token: Option<&str>, body: Option<&Value>) -> (StatusCode, Value) {
    let mut r = reqwest::Client::new().request(method, url);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if let Some(b) = body {
        r = r.header("content-type", "application/json").body(b.to_string());
    }
    let resp = r.send().await.unwrap();
    let status = resp.status();
    assert_eq!(resp.headers().get("content-type").and_then(|v| v.to_str().ok()), Some("application/json"), "{url}");
    (status, resp.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_unknown_paths_answer_json() {
    let s = start("health").await;
    assert_eq!(call(reqwest::Method::GET, &format!("{}/healthz", s.base), None, None).await, (StatusCode::OK, json!({"status": "ok"})));
    assert_eq!(call(reqwest::Method::GET, &format!("{}/readyz", s.base), None, None).await.0, StatusCode::OK);
    let (status, body) = call(reqwest::Method::GET, &format!("{}/api/v1/nothing", s.base), None, None).await;
    assert_eq!((status, body["error"]["kind"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_authorised_by_its_role() {
    let s = start("roles").await;
    let url = format!("{}/api/v1/tenants", s.base);
    let admin = token(s.store.as_ref(), "acme", "admin").await;
    let rep = token(s.store.as_ref(), "trig", "representative").await;

    let (status, body) = call(reqwest::Method::GET, &url, None, None).await;
    assert_eq!((status, body["error"]["kind"].as_str()), (StatusCode::UNAUTHORIZED, Some("unauthorized")));
    assert!(body["error"]["hint"].as_str().unwrap().contains("tokens create"), "{body}");
    assert_eq!(call(reqwest::Method::GET, &url, Some("trig_not-a-real-token"), None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(call(reqwest::Method::GET, &url, Some(&format!("{admin}x")), None).await.0, StatusCode::UNAUTHORIZED);

    let (status, body) = call(reqwest::Method::GET, &url, Some(&admin), None).await;
    assert_eq!((status, body["error"]["kind"].as_str()), (StatusCode::FORBIDDEN, Some("forbidden")), "{body}");
    let (status, body) = call(reqwest::Method::POST, &url, Some(&admin), Some(&json!({"id": "globex"}))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    let (status, body) = call(reqwest::Method::GET, &url, Some(&rep), None).await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<&str> = body["tenants"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec!["acme", "default", "trig"], "every tenant, the store's default one too");

    // A revoked token stops at once.
    let listed = s.store.tokens(None).await.unwrap();
    s.store.revoke_token(listed[0].id).await.unwrap();
    assert_eq!(call(reqwest::Method::GET, &url, Some(&admin), None).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_is_created_once_and_bad_bodies_name_their_field() {
    let s = start("create").await;
    let url = format!("{}/api/v1/tenants", s.base);
    let rep = token(s.store.as_ref(), "trig", "representative").await;

    let (status, body) = call(reqwest::Method::POST, &url, Some(&rep), Some(&json!({"id": "acme", "name": "<b>Acme</b> Corp"}))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!((body["id"].as_str(), body["name"].as_str()), (Some("acme"), Some("<b>Acme</b> Corp")), "stored and returned as text");
    let (status, body) = call(reqwest::Method::POST, &url, Some(&rep), Some(&json!({"id": "acme"}))).await;
    assert_eq!((status, body["error"]["kind"].as_str()), (StatusCode::CONFLICT, Some("conflict")), "{body}");

    let (status, body) = call(reqwest::Method::POST, &url, Some(&rep), Some(&json!({"id": "Acme Corp"}))).await;
    assert_eq!((status, body["error"]["field"].as_str()), (StatusCode::BAD_REQUEST, Some("id")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("lower-case letters"), "{body}");
    let (status, body) = call(reqwest::Method::POST, &url, Some(&rep), Some(&json!({"id": "globex", "nmae": "Globex"}))).await;
    assert_eq!((status, body["error"]["field"].as_str()), (StatusCode::BAD_REQUEST, Some("nmae")), "{body}");
    let (status, body) = call(reqwest::Method::POST, &url, Some(&rep), Some(&json!({"name": "Globex"}))).await;
    assert_eq!((status, body["error"]["field"].as_str()), (StatusCode::BAD_REQUEST, Some("id")), "{body}");

    let resp = reqwest::Client::new().post(&url).bearer_auth(&rep).body(r#"{"id": "globex"}"#).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "a body that does not say it is JSON");
    let big = json!({"id": "globex", "name": "x".repeat(1024 * 1024 + 1)});
    let (status, body) = call(reqwest::Method::POST, &url, Some(&rep), Some(&big)).await;
    assert_eq!((status, body["error"]["kind"].as_str()), (StatusCode::PAYLOAD_TOO_LARGE, Some("too_large")), "{body}");
    assert_eq!(s.store.tenants().await.unwrap().len(), 3, "default, trig, acme: nothing was made by a refused body");
}

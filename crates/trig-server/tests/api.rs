//! The API end to end: a real server on a real store, spoken to over HTTP.

use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use trig_server::secrets::{KeySource, Keyring};
use trig_server::{Clock, ServeOptions, Server};
use trig_store::{SqliteStore, Store, TenantName};

// The pages: over plain HTTP, and in a real browser (one test binary for the crate).
#[path = "pages/browser.rs"]
mod browser;
#[path = "pages/http.rs"]
mod pages_http;
#[path = "pages/webdriver.rs"]
mod webdriver;

struct Running {
    base: String,
    db: std::path::PathBuf,
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
    let server = Server::bind(store.clone(), keys, None, options).await.unwrap();
    let base = format!("http://{}", server.local_addr().unwrap());
    let stop = CancellationToken::new();
    tokio::spawn(server.run(stop.clone()));
    Running { base, db: dir.join("trig.db"), store, stop, _dir: TempDir(dir) }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_is_validated_sealed_tested_and_never_shown_its_secret() {
    use databricks_emulator::demo::{self, DemoOptions};
    let loaded =
        demo::workspace(&DemoOptions { events: 200, start_delay_ms: Some(50), running: true, ..Default::default() }).await.unwrap();
    let good = loaded.tokens["service_principal"].clone();
    let expired = loaded.tokens["expired"].clone();
    let emu = databricks_emulator::start(loaded.workspace, Default::default(), "127.0.0.1:0").await.unwrap();
    let s = start("connections").await;
    let admin = token(s.store.as_ref(), "acme", "admin").await;
    let other = token(s.store.as_ref(), "globex", "admin").await;
    let url = format!("{}/api/v1/tenants/acme/connections/prod", s.base);
    let body = json!({
        "workspace_url": emu.base_url(),
        "http_path": format!("/sql/1.0/warehouses/{}", demo::WAREHOUSE_ID),
        "token": good,
        "allow_hosts": [emu.addr().to_string()],
    });

    let (status, made) = call(reqwest::Method::PUT, &url, Some(&admin), Some(&body)).await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    assert_eq!((made["id"].as_str(), made["auth"].as_str(), made["secret"]["set"].as_bool()), (Some("prod"), Some("token"), Some(true)));
    assert!(!made.to_string().contains(&good), "write-only: {made}");
    let (status, again) = call(reqwest::Method::PUT, &url, Some(&admin), Some(&body)).await;
    assert_eq!(status, StatusCode::OK, "a replace: {again}");
    let (_, listed) = call(reqwest::Method::GET, &format!("{}/api/v1/tenants/acme/connections", s.base), Some(&admin), None).await;
    assert_eq!(listed["connections"].as_array().unwrap().len(), 1);
    assert!(!listed.to_string().contains(&good));
    let db = std::fs::read(&s.db).unwrap();
    assert!(!db.windows(good.len()).any(|w| w == good.as_bytes()), "the store holds the token sealed, never in clear");

    // Another tenant's admin sees nothing: 404, as for a connection that does not exist.
    let (status, body404) = call(reqwest::Method::GET, &url, Some(&other), None).await;
    assert_eq!((status, body404["error"]["kind"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
    let (missing, _) = call(reqwest::Method::GET, &format!("{}/api/v1/tenants/acme/connections/nope", s.base), Some(&admin), None).await;
    assert_eq!(missing, StatusCode::NOT_FOUND);
    let (status, _) = call(reqwest::Method::DELETE, &url, Some(&other), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nor may change it");

    // Test connection with the sealed token: the checklist passes and lists catalogs.
    let (status, report) = call(reqwest::Method::POST, &format!("{url}/test"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(report["ok"], true, "{report}");
    assert!(report["catalogs"].as_array().unwrap().iter().any(|c| c == "main"), "{report}");

    // A bad change names its field and changes nothing.
    let (status, e) = call(reqwest::Method::PATCH, &url, Some(&admin), Some(&json!({"http_path": "/sql/1.0/nothing"}))).await;
    assert_eq!((status, e["error"]["field"].as_str()), (StatusCode::BAD_REQUEST, Some("http_path")), "{e}");
    let (status, e) = call(reqwest::Method::PATCH, &url, Some(&admin), Some(&json!({"workspace_url": "http://169.254.169.254"}))).await;
    assert_eq!((status, e["error"]["field"].as_str()), (StatusCode::BAD_REQUEST, Some("workspace_url")), "SSRF rules: {e}");
    let (status, e) = call(reqwest::Method::PATCH, &url, Some(&admin), Some(&json!({"oauth": {"client_id": "x"}}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
    let (_, now) = call(reqwest::Method::GET, &url, Some(&admin), None).await;
    assert_eq!(now["http_path"], made["http_path"]);
    assert_eq!(now["updated_at"], again["updated_at"]);

    // A new token through PATCH: the test now explains the expired token.
    let (status, changed) = call(reqwest::Method::PATCH, &url, Some(&admin), Some(&json!({"token": expired}))).await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_ne!(changed["secret"]["changed_at"], made["secret"]["changed_at"]);
    let (_, report) = call(reqwest::Method::POST, &format!("{url}/test"), Some(&admin), None).await;
    assert_eq!(report["ok"], false, "{report}");
    assert!(
        report["checks"].as_array().unwrap().iter().any(|c| c["ok"] == false && c["hint"].as_str().is_some_and(|h| !h.is_empty())),
        "{report}"
    );

    // The timeline of changes names who, and holds no secret.
    let t = s.store.tenant_info("acme").await.unwrap().unwrap();
    let changes = s.store.changes(t.id, "connection", "prod", 10).await.unwrap();
    assert_eq!(
        changes.iter().map(|c| c.action.as_str()).collect::<Vec<_>>(),
        vec!["changed", "created"],
        "the identical replace recorded nothing"
    );
    assert_eq!(
        changes[0].before,
        Some(
            made.as_object()
                .map(|o| o
                    .iter()
                    .filter(|(k, _)| ["workspace_url", "http_path", "allow_hosts"].contains(&k.as_str()))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect())
                .unwrap()
        )
    );
    assert!(changes[0].actor.contains("admin of acme") && changes[0].note.as_deref() == Some("the secret changed"));
    assert!(!format!("{changes:?}").contains(&good) && !format!("{changes:?}").contains(&expired));

    // A new key: `secrets rotate` seals every secret again; the old key is then needed no more.
    let k2 = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";
    let k1 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let during = Keyring::new(k2, &[k1], KeySource::Environment).unwrap();
    let r = trig_server::secrets::rotate(s.store.as_ref(), &during).await.unwrap();
    assert_eq!((r.resealed, r.current, r.raced, r.failed.len()), (1, 0, 0, 0), "{r:?}");
    let r = trig_server::secrets::rotate(s.store.as_ref(), &during).await.unwrap();
    assert_eq!((r.resealed, r.current), (0, 1), "a second rotation has nothing to do");
    let after = Keyring::new(k2, &[], KeySource::Environment).unwrap();
    let sealed = s.store.sealed_secrets().await.unwrap();
    assert_eq!(after.open(&sealed[0].sealed, "acme/connections/prod").unwrap(), json!({"token": expired}).to_string());
    let stranger = Keyring::new(k1, &[], KeySource::Environment).unwrap();
    let r = trig_server::secrets::rotate(s.store.as_ref(), &stranger).await.unwrap();
    assert_eq!(r.failed.len(), 1, "a key that does not open it leaves it alone: {r:?}");
    assert!(r.failed[0].contains("acme/connections/prod") && r.failed[0].contains("TRIG_SECRET_KEYS_OLD"), "{r:?}");
    assert_eq!(s.store.sealed_secrets().await.unwrap()[0].sealed, sealed[0].sealed);

    let (status, _) = call(reqwest::Method::DELETE, &url, Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(call(reqwest::Method::GET, &url, Some(&admin), None).await.0, StatusCode::NOT_FOUND);
    let (status, e) =
        call(reqwest::Method::PUT, &format!("{}/api/v1/tenants/acme/connections/bad%20name", s.base), Some(&admin), Some(&body)).await;
    assert_eq!((status, e["error"]["field"].as_str()), (StatusCode::BAD_REQUEST, Some("connection")), "{e}");
}

/// Polls `url` until `done` holds for its JSON (at most 60 s).
async fn until(url: &str, token: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (status, body) = call(reqwest::Method::GET, url, Some(token), None).await;
        if status == StatusCode::OK && done(&body) {
            return body;
        }
        assert!(std::time::Instant::now() < deadline, "timed out waiting on {url}: {status} {body}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_defined_through_the_api_are_scheduled_run_on_request_and_explained() {
    use databricks_emulator::demo::{self, DemoOptions};
    let loaded =
        demo::workspace(&DemoOptions { events: 300, start_delay_ms: Some(50), running: true, ..Default::default() }).await.unwrap();
    let good = loaded.tokens["service_principal"].clone();
    let emu = databricks_emulator::start(loaded.workspace, Default::default(), "127.0.0.1:0").await.unwrap();
    let dir = std::env::temp_dir().join(format!("trig-server-api-scheduled-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.join("trig.db").to_str().unwrap()).unwrap());
    let keys = Keyring::new("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", &[], KeySource::Environment).unwrap();
    let scheduler = trig_server::scheduler::SchedulerOptions { tick: std::time::Duration::from_millis(200), ..Default::default() };
    let options = ServeOptions { addr: "127.0.0.1:0".parse().unwrap(), scheduler: Some(scheduler), ..Default::default() };
    let server = Server::bind(store.clone(), keys, None, options).await.unwrap();
    let base = format!("http://{}", server.local_addr().unwrap());
    let stop = CancellationToken::new();
    let serving = tokio::spawn(server.run(stop.clone()));
    let _dir = TempDir(dir);

    let rep = token(store.as_ref(), "trig", "representative").await;
    let admin = token(store.as_ref(), "acme", "admin").await;
    let t = format!("{base}/api/v1/tenants/acme");
    let conn = json!({
        "workspace_url": emu.base_url(), "http_path": format!("/sql/1.0/warehouses/{}", demo::WAREHOUSE_ID),
        "token": good, "default_catalog": "main", "allow_hosts": [emu.addr().to_string()],
    });
    assert_eq!(call(reqwest::Method::PUT, &format!("{t}/connections/demo"), Some(&admin), Some(&conn)).await.0, StatusCode::CREATED);
    let people = json!({"connection": "demo", "kind": "people", "source": "crm.people", "id": "user_id", "name": "name", "email": "email", "organisation_id": "organisation_id"});
    let events = json!({"connection": "demo", "kind": "events", "source": "product.events_v", "event_id": "event_id", "event_name": "event_name",
        "timestamp": "event_ts", "user_id": "user_id", "user_id_kind": "external_id", "email": "email", "properties_column": "properties",
        "backfill_from": "2020-01-01T00:00:00Z"});

    // Only a representative maps pipelines; a bad mapping names its key and the closest one.
    let (status, _) = call(reqwest::Method::PUT, &format!("{t}/pipelines/people"), Some(&admin), Some(&people)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let mut typo = events.clone();
    typo["evnt_id"] = json!("event_id");
    let (status, e) = call(reqwest::Method::PUT, &format!("{t}/pipelines/events"), Some(&rep), Some(&typo)).await;
    assert_eq!((status, e["error"]["field"].as_str()), (StatusCode::BAD_REQUEST, Some("evnt_id")), "{e}");
    let (status, e) =
        call(reqwest::Method::PUT, &format!("{t}/pipelines/events"), Some(&rep), Some(&json!({"connection": "nope", "kind": "events"})))
            .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");

    let (status, made) = call(reqwest::Method::PUT, &format!("{t}/pipelines/people"), Some(&rep), Some(&people)).await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    let (status, made) = call(reqwest::Method::PUT, &format!("{t}/pipelines/events"), Some(&rep), Some(&events)).await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    assert_eq!(made["kind"], "events");

    // A new pipeline's first run (its backfill) starts at once; its status says how it went.
    let done = until(&format!("{t}/pipelines/events"), &admin, |p| p["last_run"]["status"] == "succeeded" && p["state"] == "healthy").await;
    assert!(done["last_run"]["counts"]["inserted"].as_u64().unwrap() > 0, "{done}");
    assert!(done["next_run_at"].as_str().is_some(), "{done}");
    let (_, list) = call(reqwest::Method::GET, &format!("{t}/pipelines"), Some(&admin), None).await;
    assert_eq!(list["pipelines"].as_array().unwrap().len(), 2);

    // Sync now: 202 with the run's id, and that run appears with that id.
    let (status, queued) = call(reqwest::Method::POST, &format!("{t}/pipelines/events/sync"), Some(&rep), Some(&json!({}))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{queued}");
    let run_id = queued["run_id"].as_str().unwrap().to_string();
    let run = until(&format!("{t}/pipelines/events/runs/{run_id}"), &admin, |r| r["status"] == "succeeded").await;
    assert_eq!(run["trigger"], "manual");
    let (status, _) = call(reqwest::Method::POST, &format!("{t}/pipelines/events/sync"), Some(&admin), Some(&json!({}))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "an admin may not start runs");
    let (status, e) = call(reqwest::Method::POST, &format!("{t}/pipelines/events/sync"), Some(&rep), Some(&json!({"full": true}))).await;
    assert_eq!((status, e["error"]["field"].as_str()), (StatusCode::BAD_REQUEST, Some("full")), "{e}");
    let (_, queued) =
        call(reqwest::Method::POST, &format!("{t}/pipelines/events/sync"), Some(&rep), Some(&json!({"full_refresh": true}))).await;
    let full = queued["run_id"].as_str().unwrap().to_string();
    let run = until(&format!("{t}/pipelines/events/runs/{full}"), &admin, |r| r["status"] == "succeeded").await;
    assert_eq!(run["trigger"], "full_refresh");

    // Runs, newest first and paged; the timeline holds the runs and the changes.
    let (_, page1) = call(reqwest::Method::GET, &format!("{t}/pipelines/events/runs?limit=2"), Some(&admin), None).await;
    assert_eq!(page1["runs"][0]["run_id"], full.as_str());
    assert_eq!(page1["runs"].as_array().unwrap().len(), 2);
    let next = page1["next"].as_str().expect("a next page");
    let (_, page2) = call(reqwest::Method::GET, &format!("{t}/pipelines/events/runs?limit=2&after={next}"), Some(&admin), None).await;
    assert!(!page2["runs"].as_array().unwrap().is_empty());
    assert_ne!(page2["runs"][0]["run_id"], page1["runs"][0]["run_id"]);
    let (status, e) = call(reqwest::Method::GET, &format!("{t}/pipelines/events/runs?limt=2"), Some(&admin), None).await;
    assert_eq!((status, e["error"]["field"].as_str()), (StatusCode::BAD_REQUEST, Some("limt")));
    let (_, timeline) = call(reqwest::Method::GET, &format!("{t}/pipelines/events/timeline"), Some(&admin), None).await;
    let kinds: Vec<&str> = timeline["timeline"].as_array().unwrap().iter().map(|i| i["type"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"run") && kinds.contains(&"change"), "{timeline}");
    assert_eq!(*kinds.last().unwrap(), "change", "oldest: the pipeline's creation");
    let (status, q) = call(reqwest::Method::GET, &format!("{t}/pipelines/events/quarantine?limit=5"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{q}");
    for row in q["rows"].as_array().unwrap() {
        assert!(row["reason"].as_str().is_some_and(|r| !r.is_empty()), "{row}");
    }

    // Test connection now checks each pipeline's source on the connection too.
    let (status, report) = call(reqwest::Method::POST, &format!("{t}/connections/demo/test"), Some(&admin), None).await;
    assert_eq!((status, report["ok"].as_bool()), (StatusCode::OK, Some(true)), "{report}");
    assert!(report["checks"].as_array().unwrap().iter().any(|c| c.to_string().contains("events_v")), "{report}");

    // Preview: the SQL, its parameters, the first mapped rows; nothing written.
    let (status, p) = call(reqwest::Method::POST, &format!("{t}/pipelines/events/preview"), Some(&rep), None).await;
    assert_eq!(status, StatusCode::OK, "{p}");
    assert!(p["sql"].as_str().unwrap().contains("events_v"), "{p}");
    assert!(!p["rows"].as_array().unwrap().is_empty());

    // Another tenant's admin sees none of it.
    let other = token(store.as_ref(), "globex", "admin").await;
    assert_eq!(call(reqwest::Method::GET, &format!("{t}/pipelines/events"), Some(&other), None).await.0, StatusCode::NOT_FOUND);
    assert_eq!(call(reqwest::Method::GET, &format!("{t}/pipelines/events/runs/{full}"), Some(&other), None).await.0, StatusCode::NOT_FOUND);

    // Metrics: runs by kind and status, rows by outcome; no tenant, table or token in them.
    let text = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
    assert!(text.contains("trig_runs_total{kind=\"events\",status=\"succeeded\"}"), "{text}");
    assert!(text.contains("trig_rows_total{outcome=\"inserted\"}") && text.contains("trig_run_duration_seconds_bucket"), "{text}");
    assert!(!text.contains("acme") && !text.contains("events_v") && !text.contains(&good) && !text.contains(&rep), "{text}");

    // The warehouse's cost: per day, the uptime the runs caused, wake-ups and statements.
    let (status, w) = call(reqwest::Method::GET, &format!("{t}/warehouses"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{w}");
    let wh = &w["warehouses"][0];
    assert_eq!(wh["warehouse_id"], demo::WAREHOUSE_ID, "{w}");
    assert!(wh["auto_stop_mins"].as_i64().is_some(), "{w}");
    let day = &wh["days"][0];
    assert!(day["statements"].as_u64().unwrap() > 0, "{w}");

    // A deleted pipeline stops; its runs stay.
    assert_eq!(call(reqwest::Method::DELETE, &format!("{t}/pipelines/people"), Some(&rep), None).await.0, StatusCode::OK);
    assert_eq!(call(reqwest::Method::GET, &format!("{t}/pipelines/people"), Some(&admin), None).await.0, StatusCode::NOT_FOUND);
    stop.cancel();
    serving.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_pipeline_alerts_once_and_again_when_it_recovers() {
    use databricks_emulator::demo::{self, DemoOptions};
    let loaded =
        demo::workspace(&DemoOptions { events: 200, start_delay_ms: Some(50), running: true, ..Default::default() }).await.unwrap();
    let (good, expired) = (loaded.tokens["service_principal"].clone(), loaded.tokens["expired"].clone());
    let emu = databricks_emulator::start(loaded.workspace, Default::default(), "127.0.0.1:0").await.unwrap();

    // A webhook receiver, on loopback: allowed by the operator's list, not by the SSRF rules.
    let got: Arc<std::sync::Mutex<Vec<Value>>> = Arc::default();
    let sink = got.clone();
    let hook = axum::Router::new().route(
        "/hook/T000/secret",
        axum::routing::post(move |body: String| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(serde_json::from_str(&body).unwrap());
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, hook).await });

    let dir = std::env::temp_dir().join(format!("trig-server-api-alerts-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let _dir = TempDir(dir.clone());
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.join("trig.db").to_str().unwrap()).unwrap());
    let keys = Keyring::new("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", &[], KeySource::Environment).unwrap();
    let options = ServeOptions {
        addr: "127.0.0.1:0".parse().unwrap(),
        scheduler: Some(trig_server::scheduler::SchedulerOptions {
            tick: std::time::Duration::from_millis(200),
            expiry_check: std::time::Duration::from_millis(300),
            ..Default::default()
        }),
        webhook_allow: databricks::AllowHosts::parse(&[hook_addr.to_string()]).unwrap(),
        ..Default::default()
    };
    let server = Server::bind(store.clone(), keys, None, options).await.unwrap();
    let base = format!("http://{}", server.local_addr().unwrap());
    let stop = CancellationToken::new();
    tokio::spawn(server.run(stop.clone()));
    let rep = token(store.as_ref(), "trig", "representative").await;
    let admin = token(store.as_ref(), "acme", "admin").await;
    let t = format!("{base}/api/v1/tenants/acme");

    // The admin sets the tenant's webhook; it is shown by its host only; an internal address is refused.
    let (status, e) = call(reqwest::Method::PATCH, &t, Some(&admin), Some(&json!({"webhook_url": "https://10.1.2.3/hook"}))).await;
    assert_eq!((status, e["error"]["field"].as_str()), (StatusCode::BAD_REQUEST, Some("webhook_url")), "{e}");
    let hook_url = format!("http://{hook_addr}/hook/T000/secret");
    let (status, tenant) =
        call(reqwest::Method::PATCH, &t, Some(&admin), Some(&json!({"webhook_url": hook_url, "name": "Acme Corp"}))).await;
    assert_eq!(status, StatusCode::OK, "{tenant}");
    assert_eq!((tenant["webhook"]["set"].as_bool(), tenant["name"].as_str()), (Some(true), Some("Acme Corp")));
    assert!(!tenant.to_string().contains("secret"), "{tenant}");

    let conn = json!({
        "workspace_url": emu.base_url(), "http_path": format!("/sql/1.0/warehouses/{}", demo::WAREHOUSE_ID),
        "token": good, "default_catalog": "main", "allow_hosts": [emu.addr().to_string()],
    });
    call(reqwest::Method::PUT, &format!("{t}/connections/demo"), Some(&admin), Some(&conn)).await;
    let events = json!({"connection": "demo", "kind": "events", "source": "product.events_v", "event_id": "event_id", "event_name": "event_name",
        "timestamp": "event_ts", "user_id": "user_id", "user_id_kind": "external_id", "email": "email"});
    call(reqwest::Method::PUT, &format!("{t}/pipelines/events"), Some(&rep), Some(&events)).await;
    until(&format!("{t}/pipelines/events"), &admin, |p| p["last_run"]["status"] == "succeeded").await;

    // The token expires: two failed runs, one alert.
    call(reqwest::Method::PATCH, &format!("{t}/connections/demo"), Some(&admin), Some(&json!({"token": expired}))).await;
    for _ in 0..2 {
        let (_, q) = call(reqwest::Method::POST, &format!("{t}/pipelines/events/sync"), Some(&rep), Some(&json!({}))).await;
        let id = q["run_id"].as_str().unwrap();
        until(&format!("{t}/pipelines/events/runs/{id}"), &admin, |r| r["status"] == "failed").await;
    }
    let status = until(&format!("{t}/pipelines/events"), &admin, |p| p["state"] == "failing" && p["failures"] == 2).await;
    assert!(status["last_error"]["hint"].as_str().is_some_and(|h| !h.is_empty()), "{status}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while got.lock().unwrap().is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    {
        let alerts = got.lock().unwrap();
        assert_eq!(alerts.len(), 1, "once per transition, not per retry: {alerts:?}");
        assert_eq!((alerts[0]["event"].as_str(), alerts[0]["pipeline"].as_str()), (Some("failing"), Some("events")));
        let text = alerts[0]["text"].as_str().unwrap();
        assert!(text.contains("Acme Corp") && text.contains("What to do:"), "{text}");
        assert!(!alerts[0].to_string().contains(&expired) && !alerts[0].to_string().contains(&good));
    }

    // Fixed: the next run succeeds and says so, once.
    call(reqwest::Method::PATCH, &format!("{t}/connections/demo"), Some(&admin), Some(&json!({"token": good}))).await;
    let (_, q) = call(reqwest::Method::POST, &format!("{t}/pipelines/events/sync"), Some(&rep), Some(&json!({}))).await;
    let id = q["run_id"].as_str().unwrap();
    until(&format!("{t}/pipelines/events/runs/{id}"), &admin, |r| r["status"] == "succeeded").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while got.lock().unwrap().len() < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let alerts = got.lock().unwrap().clone();
    assert_eq!(alerts.iter().map(|a| a["event"].as_str().unwrap()).collect::<Vec<_>>(), vec!["failing", "recovered"]);
    let text = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
    assert!(text.contains("trig_alerts_total{event=\"failing\",result=\"delivered\"} 1"), "{text}");

    // A token of the connection's principal expires in 3 days (the Token API says so): one warning, however often it is read.
    let r = reqwest::Client::new()
        .post(format!("{}/emulator/v1/tokens", emu.base_url()))
        .bearer_auth(emu.admin_token())
        .header("content-type", "application/json")
        .body(json!({"principal": "8c1c7f4e-5b1a-4a41-9d7a-2f6f0c1d9e01", "expires_in_secs": 3 * 86_400}).to_string())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let soon: Value = r.json().await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while got.lock().unwrap().len() < 3 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Three more reads of the Token API (the process counts them), and still one warning.
    let checks = || async {
        let text = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
        text.lines().find_map(|l| l.strip_prefix("trig_token_expiry_checks_total ")).and_then(|n| n.parse::<u64>().ok()).unwrap()
    };
    let (seen, deadline) = (checks().await, std::time::Instant::now() + std::time::Duration::from_secs(20));
    while checks().await < seen + 3 {
        assert!(std::time::Instant::now() < deadline, "the token expiry was not read again");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let alerts = got.lock().unwrap().clone();
    assert_eq!(alerts.iter().map(|a| a["event"].as_str().unwrap()).collect::<Vec<_>>(), vec!["failing", "recovered", "token_expiring"]);
    let text = alerts[2]["text"].as_str().unwrap();
    assert!(text.contains("expires in 3 days") && text.contains("connection `demo`") && text.contains("What to do:"), "{text}");
    assert!(!alerts[2].to_string().contains(soon["token"].as_str().unwrap()) && !alerts[2].to_string().contains(&good));

    // Paused (as after a day of failures): a change of its connection un-pauses it.
    let rec = store.pipeline_record(store.tenant_info("acme").await.unwrap().unwrap().id, "events").await.unwrap().unwrap();
    let pause = trig_store::Outcome {
        at: chrono::Utc::now().timestamp_micros(),
        next_run_at: i64::MAX / 2,
        error: Some(json!({"kind": "k", "message": "m", "hint": null})),
        pause: Some("paused after failing for 24 h: m".into()),
    };
    store.record_outcome(rec.key, &pause).await.unwrap();
    let (_, p) = call(reqwest::Method::GET, &format!("{t}/pipelines/events"), Some(&admin), None).await;
    assert_eq!((p["state"].as_str(), p["paused_reason"].as_str()), (Some("paused"), Some("paused after failing for 24 h: m")));
    call(reqwest::Method::PATCH, &format!("{t}/connections/demo"), Some(&admin), Some(&json!({"default_catalog": "main"}))).await;
    let (_, p) = call(reqwest::Method::GET, &format!("{t}/pipelines/events"), Some(&admin), None).await;
    assert_ne!(p["state"], "paused", "{p}");
    // The pipeline's timeline holds its connection's changes too, and the un-pause.
    let (_, tl) = call(reqwest::Method::GET, &format!("{t}/pipelines/events/timeline?limit=200"), Some(&admin), None).await;
    let items = tl["timeline"].as_array().unwrap();
    assert!(items.iter().any(|i| i["subject"] == "connection" && i["note"] == "the secret changed"), "{tl}");
    assert!(items.iter().any(|i| i["note"].as_str().is_some_and(|n| n.starts_with("un-paused"))), "{tl}");
    assert!(!tl.to_string().contains(&good) && !tl.to_string().contains(&expired));
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_route_is_served_and_asks_for_a_token_unless_public() {
    let s = start("openapi").await;
    let (status, doc) = call(reqwest::Method::GET, &format!("{}/api/openapi.json", s.base), None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/api/v1/tenants/{t}/pipelines/{p}/sync"]["post"]["security"].is_array(), "{doc}");
    for r in trig_server::openapi::ROUTES {
        let path = r.path.replace("{t}", "acme").replace("{c}", "prod").replace("{p}", "events").replace("{run_id}", "x");
        let method = reqwest::Method::from_bytes(r.method.to_uppercase().as_bytes()).unwrap();
        let resp = reqwest::Client::new().request(method, format!("{}{path}", s.base)).send().await.unwrap();
        let status = resp.status();
        let body = resp.text().await.unwrap();
        match r.who {
            trig_server::openapi::Who::Anyone => assert_eq!(status, StatusCode::OK, "{} {}", r.method, r.path),
            _ => {
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{} {}: a listed route exists and asks for a token: {body}", r.method, r.path)
            }
        }
    }
    // An unknown path is JSON 404, not 401: the fallback is not hidden behind authentication.
    let (status, _) = call(reqwest::Method::GET, &format!("{}/api/v1/nope", s.base), None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// A scheduler's state on `store` and `clock`, with tenant acme's events
/// pipeline due now on a connection that was deleted: every run fails at
/// once, as a failure only the customer can fix (no network).
async fn broken_pipeline(store: &Arc<dyn Store>, clock: Arc<dyn trig_server::Clock>) -> (trig_server::api::AppState, trig_store::TenantId) {
    let state = trig_server::api::AppState {
        store: store.clone(),
        keys: Keyring::new("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", &[], KeySource::Environment).unwrap(),
        config: None,
        wake: Arc::default(),
        metrics: Arc::default(),
        webhook_allow: Default::default(),
        clock: clock.clone(),
        warehouses: Arc::default(),
    };
    let acme = store.tenant("acme").await.unwrap();
    let w = trig_store::PipelineWrite {
        origin: "api".into(),
        definition: json!({"connection": "gone", "kind": "events", "source": "product.events_v", "event_id": "e", "event_name": "n", "timestamp": "t", "user_id": "u"}),
        actor: "test".into(),
        action: "replaced".into(),
        first_run_at: clock.now(),
    };
    store.put_pipeline(acme, "events", w).await.unwrap();
    (state, acme)
}

/// The scheduler on a clock the test moves, driven round by round
/// (`Scheduler::run_due`): days pass in milliseconds and the test sleeps for
/// none of them. The pipeline's definition names a connection that was
/// deleted, so every run fails at once, as a failure only the customer can
/// fix (no network in this test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_moved_clock_a_customer_fix_is_retried_on_schedule_paused_after_a_day_and_missed_slots_run_once() {
    let dir = std::env::temp_dir().join(format!("trig-server-paused-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let _dir = TempDir(dir.clone());
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.join("trig.db").to_str().unwrap()).unwrap());
    let clock = Arc::new(trig_server::ManualClock::new());
    let (state, acme) = broken_pipeline(&store, clock.clone()).await;
    let record = || async { store.pipeline_record(acme, "events").await.unwrap().unwrap() };
    let options = trig_server::scheduler::SchedulerOptions::default();
    let start = |state: trig_server::api::AppState| trig_server::scheduler::Scheduler::new(state, options.clone());
    // Moves the clock in steps of at most 6 h (so each due time is met on
    // its step), letting the scheduler run what is due after each: days pass
    // in milliseconds, without waiting for any of them.
    async fn pass(secs: u64, clock: Arc<trig_server::ManualClock>, mut sched: Option<&mut trig_server::scheduler::Scheduler>) {
        let mut left = secs;
        while left > 0 {
            let s = 21_600.min(left);
            clock.advance(std::time::Duration::from_secs(s));
            left -= s;
            if let Some(sc) = sched.as_deref_mut() {
                sc.run_due().await.unwrap();
            }
        }
    }
    let mut sched = start(state.clone());
    sched.run_due().await.unwrap();
    let r = record().await;
    assert_eq!(r.failures, 1, "due at once on creation: {r:?}");
    assert_eq!(r.last_error.as_ref().unwrap()["kind"], "config");
    let first_next = r.next_run_at.unwrap();
    // Not hammered: nothing more for most of a day (the normal schedule of a broken definition is a day).
    pass(6 * 3600, clock.clone(), Some(&mut sched)).await;
    assert_eq!(record().await.failures, 1, "a customer's fix is not retried before its schedule");

    // The next time survives a restart: a new scheduler on the same store waits for it too.
    let mut sched = start(state.clone());
    pass(60, clock.clone(), Some(&mut sched)).await;
    assert_eq!(record().await.next_run_at.unwrap(), first_next, "the next time is the store's, not the process's");
    // A day after the first failure: the second, and the pipeline paused with its reason.
    pass(18 * 3600 + 60, clock.clone(), Some(&mut sched)).await;
    let r = record().await;
    assert_eq!(r.failures, 2, "{r:?}");
    assert!(r.paused_reason.as_deref().is_some_and(|p| p.starts_with("paused after failing for 24 h")), "{r:?}");
    pass(3 * 24 * 3600, clock.clone(), Some(&mut sched)).await;
    assert_eq!(record().await.failures, 2, "paused: not run again");

    // Missed slots run once: stopped for a week, un-paused, started again: one run, then the schedule.
    drop(sched);
    assert!(store.unpause(acme, "events", "test").await.unwrap());
    pass(7 * 24 * 3600, clock.clone(), None).await;
    let mut sched = start(state.clone());
    pass(600, clock.clone(), Some(&mut sched)).await;
    let r = record().await;
    assert_eq!(r.failures, 1, "a week of missed slots ran once (the un-pause reset the count): {r:?}");
    assert!(r.next_run_at.unwrap() > clock.now() + 23 * 3600 * 1_000_000, "then the schedule: {r:?}");
}

/// The scheduler's own loop (`Scheduler::run`: its naps, its wake-ups) in
/// tokio's paused time: days pass as the runtime's timers fire, and the test
/// sleeps only in that virtual time. On PostgreSQL, whose calls run on
/// tokio's blocking pool: a paused current-thread runtime does not move its
/// clock while one of those is in flight, so virtual time never outruns the
/// work. (SQLite answers from a thread of its own, which the runtime cannot
/// see; the moved-clock test above drives that store round by round.)
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn in_paused_tokio_time_the_scheduler_loop_keeps_a_customer_fix_to_its_schedule_and_pauses_after_a_day() {
    let Some(server) = trig_store::testing::postgres_server("the scheduler in paused time") else { return };
    let db = trig_store::testing::FreshDatabase::create(&server, "trig_paused");
    let store: Arc<dyn Store> = Arc::new(trig_store::PostgresStore::open(&db.url).unwrap());
    let clock = Arc::new(trig_server::TokioClock::new());
    let (state, acme) = broken_pipeline(&store, clock.clone()).await;
    let record = || async { store.pipeline_record(acme, "events").await.unwrap().unwrap() };
    // A 5-minute tick: four virtual days are some 1,150 wake-ups of the loop.
    let options = trig_server::scheduler::SchedulerOptions { tick: std::time::Duration::from_secs(300), ..Default::default() };
    let stop = CancellationToken::new();
    let task =
        tokio::spawn(trig_server::scheduler::Scheduler::new(state.clone(), options).run(stop.clone(), std::time::Duration::from_secs(1)));
    let started = tokio::time::Instant::now();

    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    let r = record().await;
    assert_eq!(r.failures, 1, "due at once on creation: {r:?}");
    assert_eq!(r.last_error.as_ref().unwrap()["kind"], "config");
    let next = r.next_run_at.unwrap();
    assert!(next >= clock.now() + 23 * 3600 * 1_000_000, "a customer's fix waits the schedule (a day for a broken definition): {r:?}");
    tokio::time::sleep(std::time::Duration::from_secs(6 * 3600)).await;
    assert_eq!(record().await.failures, 1, "not hammered while the loop naps and wakes");
    // A day after the first failure: the second, and the pipeline paused with its reason.
    tokio::time::sleep(std::time::Duration::from_secs(18 * 3600 + 120)).await;
    let r = record().await;
    assert_eq!(r.failures, 2, "{r:?}");
    assert!(r.paused_reason.as_deref().is_some_and(|p| p.starts_with("paused after failing for 24 h")), "{r:?}");
    tokio::time::sleep(std::time::Duration::from_secs(3 * 24 * 3600)).await;
    assert_eq!(record().await.failures, 2, "paused: not run again");
    stop.cancel();
    task.await.unwrap();
    assert!(started.elapsed() >= std::time::Duration::from_secs(4 * 24 * 3600), "four days passed on tokio's clock");
}

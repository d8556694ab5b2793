//! The client against the emulator over real HTTP: results, every error
//! kind, every fault the emulator injects, auth refresh, cold warehouses,
//! the INLINE fallback, cancellation, and Test connection's checklist.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow_array::{Array, Int64Array, StringArray};
use databricks::check::{CheckInput, TableCheck, test_connection_with};
use databricks::{
    Client, ClientOptions, ConnectionSettings, Credentials, Error, Progress, QueryOptions, RetryPolicy, Secret, Statement, TableName,
};
use databricks_emulator::demo::{self, DemoOptions};
use databricks_emulator::{ChunkPolicy, EmulatorConfig, RunningEmulator};
use futures::StreamExt;
use serde_json::{Value, json};

struct Emu {
    run: RunningEmulator,
    tokens: BTreeMap<String, String>,
    oauth_secret: String,
    admin: reqwest::Client,
}

fn quick() -> ClientOptions {
    ClientOptions {
        retry: RetryPolicy {
            initial_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(200),
            max_attempts: 5,
            max_elapsed: Duration::from_secs(20),
        },
        ..Default::default()
    }
}

impl Emu {
    async fn start() -> Emu {
        Emu::start_with(
            EmulatorConfig::default(),
            DemoOptions { events: 3000, start_delay_ms: Some(100), running: true, ..Default::default() },
        )
        .await
    }

    async fn start_with(config: EmulatorConfig, options: DemoOptions) -> Emu {
        let loaded = demo::workspace(&options).await.expect("demo workspace loads");
        let oauth_secret = loaded.oauth_secrets[demo::SERVICE_PRINCIPAL].clone();
        let run = databricks_emulator::start(loaded.workspace, config, "127.0.0.1:0").await.expect("emulator starts");
        Emu { run, tokens: loaded.tokens, oauth_secret, admin: reqwest::Client::new() }
    }

    fn host(&self) -> String {
        self.run.addr().to_string()
    }

    fn settings(&self, creds: Credentials) -> ConnectionSettings {
        ConnectionSettings::parse(
            &self.run.base_url(),
            &format!("/sql/1.0/warehouses/{}", demo::WAREHOUSE_ID),
            creds,
            Some("main"),
            &[self.host()],
        )
        .expect("settings parse")
    }

    fn token(&self, name: &str) -> Credentials {
        Credentials::Token(Secret::new(self.tokens[name].clone()))
    }

    fn oauth(&self) -> Credentials {
        Credentials::OAuth { client_id: demo::SERVICE_PRINCIPAL.into(), client_secret: Secret::new(self.oauth_secret.clone()) }
    }

    fn client(&self, name: &str) -> Client {
        Client::with_options(self.settings(self.token(name)), quick()).unwrap()
    }

    async fn admin(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let resp = self
            .admin
            .request(method, format!("{}{path}", self.run.base_url()))
            .bearer_auth(self.run.admin_token())
            .json(&body)
            .send()
            .await
            .expect("admin answers");
        assert!(resp.status().is_success(), "admin {path}: {}", resp.status());
        resp.json().await.unwrap_or(Value::Null)
    }

    async fn fault(&self, rule: Value) {
        self.admin(reqwest::Method::POST, "/emulator/v1/faults", rule).await;
    }

    async fn counters(&self) -> Value {
        self.admin(reqwest::Method::GET, "/emulator/v1/counters", Value::Null).await
    }

    async fn history(&self) -> Vec<Value> {
        let v = self.admin(reqwest::Method::GET, "/emulator/v1/statements", Value::Null).await;
        v.get("statements").and_then(Value::as_array).cloned().unwrap_or_else(|| v.as_array().cloned().unwrap_or_default())
    }

    async fn set_warehouse(&self, body: Value) {
        self.admin(reqwest::Method::POST, &format!("/emulator/v1/warehouses/{}", demo::WAREHOUSE_ID), body).await;
    }
}

async fn count(client: &Client, sql: &str) -> i64 {
    let r = client.query_text(&Statement::new(sql), 10).await.expect("count runs");
    r.rows[0][0].as_deref().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_results_stream_in_order_through_lz4_external_links() {
    let config = EmulatorConfig { chunk_policy: ChunkPolicy { max_rows: 1000, max_bytes: 16 << 20 }, ..Default::default() };
    let emu = Emu::start_with(config, DemoOptions { events: 20_000, running: true, ..Default::default() }).await;
    let client = emu.client("service_principal");
    let total = count(&client, "SELECT count(*) FROM main.product.events WHERE event_ts IS NOT NULL AND event_id IS NOT NULL").await;
    let stmt = Statement::new("SELECT event_id, event_ts FROM main.product.events WHERE event_ts IS NOT NULL AND event_id IS NOT NULL ORDER BY event_ts, event_id")
        .tag("trig_run_id", "run-42");
    let stream = client.query(&stmt, &QueryOptions { max_concurrent_chunks: 3, ..Default::default() }).await.unwrap();
    assert_eq!(stream.disposition(), "EXTERNAL_LINKS");
    assert_eq!(stream.manifest().result_compression.as_deref(), Some("LZ4_FRAME"));
    assert!(stream.manifest().total_chunk_count >= 20, "chunks: {}", stream.manifest().total_chunk_count);
    let id = stream.statement_id().to_string();
    let batches = stream.collect_batches().await.unwrap();
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows as i64, total);
    // Order preserved across concurrently fetched chunks.
    let mut last: Option<(i64, String)> = None;
    for b in &batches {
        let ts = arrow_cast::cast(b.column(1), &arrow_schema::DataType::Int64).unwrap();
        let ts = ts.as_any().downcast_ref::<Int64Array>().unwrap();
        let ids = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
        for i in 0..b.num_rows() {
            let cur = (ts.value(i), ids.value(i).to_string());
            if let Some(prev) = &last {
                assert!(prev <= &cur, "out of order: {prev:?} then {cur:?}");
            }
            last = Some(cur);
        }
    }
    // The run id is in the query history; the links were fetched without
    // Authorization (the emulator refuses a link request that carries one).
    let h = emu.history().await;
    let mine = h.iter().find(|s| s["statement_id"] == id.as_str()).expect("statement in history");
    assert!(mine.to_string().contains("run-42"), "{mine}");
    assert!(emu.counters().await["link_downloads"].as_u64().unwrap() >= 20);
}

/// A sync reads one result while the next statement's runs: that result's
/// first chunk is downloaded as soon as the result is ready, before the
/// stream is first read; the rest wait for the reader (memory stays bounded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_results_first_chunk_downloads_before_the_stream_is_read() {
    let config = EmulatorConfig { chunk_policy: ChunkPolicy { max_rows: 1000, max_bytes: 16 << 20 }, ..Default::default() };
    let emu = Emu::start_with(config, DemoOptions { events: 5_000, running: true, ..Default::default() }).await;
    let client = emu.client("service_principal");
    let stmt = Statement::new("SELECT event_id, event_ts FROM main.product.events ORDER BY event_ts, event_id");
    let before = emu.counters().await["link_downloads"].as_u64().unwrap();
    let mut stream = client.query(&stmt, &QueryOptions { max_concurrent_chunks: 2, ..Default::default() }).await.unwrap();
    assert!(stream.manifest().total_chunk_count >= 4, "chunks: {}", stream.manifest().total_chunk_count);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut downloaded = 0;
    while std::time::Instant::now() < deadline {
        downloaded = emu.counters().await["link_downloads"].as_u64().unwrap() - before;
        if downloaded > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(downloaded, 1, "the first chunk downloads before the stream is read");
    // Nothing else is fetched until the reader asks.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(emu.counters().await["link_downloads"].as_u64().unwrap() - before, 1);
    let first = stream.next().await.expect("a batch").unwrap();
    assert!(first.num_rows() > 0);
    let rest: usize = stream.collect_batches().await.unwrap().iter().map(|b| b.num_rows()).sum();
    assert_eq!(first.num_rows() + rest, 5_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_parameters_bind_with_types() {
    let emu = Emu::start().await;
    let client = emu.client("service_principal");
    let all = count(&client, "SELECT count(*) FROM main.product.events WHERE event_ts IS NOT NULL AND event_name IS NOT NULL").await;
    let stmt = Statement::new("SELECT count(*) AS n FROM main.product.events WHERE event_ts >= :from AND event_name <> :skip")
        .param("from", Some("2000-01-01T00:00:00Z".into()), "TIMESTAMP")
        .param("skip", Some("no such event".into()), "STRING");
    let r = client.query_text(&stmt, 1).await.unwrap();
    assert_eq!(r.column("n")[0].unwrap().parse::<i64>().unwrap(), all);
    let none = Statement::new("SELECT count(*) AS n FROM main.product.events WHERE event_ts >= :from").param(
        "from",
        Some("2999-01-01T00:00:00Z".into()),
        "TIMESTAMP",
    );
    assert_eq!(client.query_text(&none, 1).await.unwrap().column("n")[0], Some("0"));
    let bad = Statement::new("SELECT 1").param("from-x", None, "STRING");
    assert!(matches!(client.query_text(&bad, 1).await, Err(Error::InvalidSetting { field: "parameters", .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_never_leave_the_process() {
    let emu = Emu::start().await;
    let client = emu.client("service_principal");
    let before = emu.counters().await["statements"].as_u64().unwrap();
    for sql in ["DROP TABLE main.product.events", "WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x", "SELECT 1; DELETE FROM t"] {
        let e = client.query(&Statement::new(sql), &QueryOptions::default()).await.unwrap_err();
        assert!(matches!(e, Error::WriteRefused { .. } | Error::UnparsableStatement { .. }), "{sql}: {e:?}");
    }
    assert_eq!(emu.counters().await["statements"].as_u64().unwrap(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_failure_has_its_kind_and_fix() {
    let emu = Emu::start().await;
    let sp = emu.client("service_principal");
    sp.me().await.unwrap();
    let q = |c: &Client, sql: &'static str| {
        let c = c.clone();
        async move { c.query_text(&Statement::new(sql), 5).await.unwrap_err() }
    };
    // Token invalid / expired: a 403 that is not a grant problem.
    let bogus = Client::with_options(emu.settings(Credentials::Token(Secret::new("dapi-not-a-token"))), quick()).unwrap();
    let e = bogus.me().await.unwrap_err();
    assert_eq!(e.kind(), "token_invalid", "{e}");
    assert!(!e.is_retryable());
    assert!(!e.to_string().contains("dapi-not-a-token"));
    assert_eq!(emu.client("expired").me().await.unwrap_err().kind(), "token_invalid");
    // No CAN USE.
    let e = q(&emu.client("no_can_use"), "SELECT 1").await;
    assert!(matches!(e, Error::NoWarehouseAccess { ref warehouse, .. } if warehouse == demo::WAREHOUSE_ID), "{e:?}");
    assert!(e.hint().contains("Can use"));
    // Missing privilege, with the GRANT to run.
    let ns = emu.client("no_select");
    ns.me().await.unwrap();
    let e = q(&ns, "SELECT * FROM main.product.events_v").await;
    assert_eq!(e.kind(), "missing_privilege", "{e:?}");
    assert!(e.hint().starts_with("Run: GRANT SELECT ON TABLE main.product.events_v TO `3f0e9d8c-"), "{}", e.hint());
    // Table missing; column missing with Databricks' suggestion; a SQL error.
    assert_eq!(q(&sp, "SELECT * FROM main.product.nosuch").await.kind(), "table_not_found");
    let e = q(&sp, "SELECT event_nmae FROM main.product.events_v").await;
    assert!(
        matches!(e, Error::ColumnMissing { ref column, ref suggestions } if column == "event_nmae" && suggestions.iter().any(|s| s.contains("event_name"))),
        "{e:?}"
    );
    let e = q(&sp, "SELECT 1/0 AS x FROM main.product.events_v WHERE event_name = (SELECT 1)").await;
    assert!(matches!(e, Error::Sql { .. } | Error::ColumnMissing { .. }), "{e:?}");
    // A warehouse that does not exist.
    let gone = ConnectionSettings::parse(
        &emu.run.base_url(),
        "/sql/1.0/warehouses/ffffffffffffffff",
        emu.token("service_principal"),
        None,
        &[emu.host()],
    )
    .unwrap();
    let e = Client::with_options(gone, quick()).unwrap().warehouse().await.unwrap_err();
    assert_eq!(e.kind(), "warehouse_not_found");
    // An unreachable workspace (nothing listens on the port).
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let s = ConnectionSettings::parse(
        &format!("http://{closed}"),
        "/sql/1.0/warehouses/a1b2c3d4e5f60718",
        emu.token("service_principal"),
        None,
        &[closed.to_string()],
    )
    .unwrap();
    let e = Client::with_options(s, quick()).unwrap().me().await.unwrap_err();
    assert_eq!(e.kind(), "unreachable", "{e:?}");
    assert!(e.is_retryable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_outages_are_retried_and_bad_answers_are_not() {
    let emu = Emu::start().await;
    let client = emu.client("service_principal");
    // Refusals are retried, a submit's included (it started nothing); a gateway
    // timeout is retried for the polls, which change nothing.
    for (status, method) in [(429, None), (502, None), (503, None), (504, Some("GET"))] {
        emu.fault(json!({"kind": "status", "status": status, "retry_after_secs": 0, "times": 2, "path_prefix": "/api/2.0/sql/statements", "method": method}))
            .await;
        assert!(count(&client, "SELECT count(*) FROM main.crm.people").await > 0, "after {status}");
    }
    assert_eq!(emu.counters().await["faults_injected"].as_u64().unwrap(), 8);
    // Throttled for longer than the budget: RateLimited, retryable.
    emu.fault(json!({"kind": "status", "status": 429, "retry_after_secs": 0, "times": 50, "path_prefix": "/api/2.0/preview"})).await;
    let e = client.me().await.unwrap_err();
    assert!(matches!(e, Error::RateLimited { attempts: 5, .. }), "{e:?}");
    assert!(e.is_retryable());
    emu.admin(reqwest::Method::DELETE, "/emulator/v1/faults", Value::Null).await;
    // A 500 fails at once: one attempt, not five.
    emu.fault(json!({"kind": "status", "status": 500, "times": 10, "path_prefix": "/api/2.0/preview"})).await;
    let e = client.me().await.unwrap_err();
    assert_eq!(e.kind(), "unavailable", "{e:?}");
    let left = emu.admin(reqwest::Method::GET, "/emulator/v1/faults", Value::Null).await;
    assert!(left.to_string().contains("\"times\":9"), "{left}");
    emu.admin(reqwest::Method::DELETE, "/emulator/v1/faults", Value::Null).await;
    // Latency is survived; a failing statement has its class.
    emu.fault(json!({"kind": "latency", "ms": 300, "times": 2})).await;
    assert!(client.me().await.is_ok());
    emu.fault(json!({"kind": "fail_statement", "contains": "people", "error_class": "DIVIDE_BY_ZERO", "message": "Division by zero.", "sql_state": "22012", "times": 1})).await;
    let e = client.query_text(&Statement::new("SELECT count(*) FROM main.crm.people"), 1).await.unwrap_err();
    assert!(
        matches!(e, Error::Sql { ref class, ref sql_state, .. } if class == "DIVIDE_BY_ZERO" && sql_state.as_deref() == Some("22012")),
        "{e:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_and_expired_links_mid_result_are_recovered() {
    let config = EmulatorConfig { chunk_policy: ChunkPolicy { max_rows: 500, max_bytes: 16 << 20 }, ..Default::default() };
    let emu = Emu::start_with(config, DemoOptions { events: 5000, running: true, ..Default::default() }).await;
    let client = emu.client("service_principal");
    let total = count(&client, "SELECT count(*) FROM main.product.events").await;
    emu.fault(json!({"kind": "reset_body", "after_bytes": 100, "times": 2, "path_prefix": "/emulator/files"})).await;
    emu.fault(json!({"kind": "expire_links", "times": 3})).await;
    emu.fault(json!({"kind": "status", "status": 503, "times": 1, "path_prefix": "/emulator/files"})).await;
    let stream = client.query(&Statement::new("SELECT * FROM main.product.events"), &QueryOptions::default()).await.unwrap();
    let rows: usize = stream.collect_batches().await.unwrap().iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows as i64, total);
    assert_eq!(emu.counters().await["faults_injected"].as_u64().unwrap(), 6);
    // Links that never stop expiring end with a clear error, not a hang.
    emu.fault(json!({"kind": "expire_links"})).await;
    let stream = client.query(&Statement::new("SELECT * FROM main.product.events"), &QueryOptions::default()).await.unwrap();
    let e = stream.collect_batches().await.unwrap_err();
    assert_eq!(e.kind(), "unavailable", "{e:?}");
    assert!(e.to_string().contains("HTTP 403"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_external_links_disposition_falls_back_to_inline() {
    let emu = Emu::start().await;
    let client = emu.client("service_principal");
    emu.fault(json!({"kind": "refuse_external_links", "times": 1})).await;
    let sql = "SELECT user_id, count(*) AS n FROM main.product.events GROUP BY user_id ORDER BY user_id";
    let stream = client.query(&Statement::new(sql), &QueryOptions::default()).await.unwrap();
    assert_eq!(stream.disposition(), "INLINE");
    let inline = stream.collect_batches().await.unwrap();
    let stream = client.query(&Statement::new(sql), &QueryOptions::default()).await.unwrap();
    assert_eq!(stream.disposition(), "EXTERNAL_LINKS");
    let links = stream.collect_batches().await.unwrap();
    let flat = |bs: &[arrow_array::RecordBatch]| -> Vec<(Option<String>, i64)> {
        bs.iter()
            .flat_map(|b| {
                let u = arrow_cast::cast(b.column(0), &arrow_schema::DataType::Utf8).unwrap();
                let n = arrow_cast::cast(b.column(1), &arrow_schema::DataType::Int64).unwrap();
                let u = u.as_any().downcast_ref::<StringArray>().unwrap().clone();
                let n = n.as_any().downcast_ref::<Int64Array>().unwrap().clone();
                (0..b.num_rows()).map(move |i| ((!u.is_null(i)).then(|| u.value(i).to_string()), n.value(i))).collect::<Vec<_>>()
            })
            .collect()
    };
    assert_eq!(flat(&inline), flat(&links));
    assert!(!flat(&inline).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth_tokens_are_cached_refreshed_and_refetched_once_when_refused() {
    let config = EmulatorConfig { chunk_policy: ChunkPolicy { max_rows: 500, max_bytes: 16 << 20 }, ..Default::default() };
    let emu = Emu::start_with(config, DemoOptions { events: 3000, running: true, ..Default::default() }).await;
    let client = Client::with_options(emu.settings(emu.oauth()), quick()).unwrap();
    let me = client.me().await.unwrap();
    assert!(me.is_service_principal);
    client.me().await.unwrap();
    assert_eq!(emu.counters().await["oauth_tokens"], 1, "the token is cached");
    // Revoke every OAuth token in the middle of a multi-chunk result: the
    // next chunk request is refused, a new token is fetched, reading goes on.
    let mut stream = client
        .query(&Statement::new("SELECT * FROM main.product.events"), &QueryOptions { max_concurrent_chunks: 1, ..Default::default() })
        .await
        .unwrap();
    let chunks = stream.manifest().total_chunk_count;
    assert!(chunks >= 4);
    let mut rows = stream.next().await.unwrap().unwrap().num_rows();
    emu.admin(reqwest::Method::POST, "/emulator/v1/oauth/expire", Value::Null).await;
    while let Some(b) = stream.next().await {
        rows += b.unwrap().num_rows();
    }
    assert_eq!(rows as i64, count(&client, "SELECT count(*) FROM main.product.events").await);
    assert_eq!(emu.counters().await["oauth_tokens"], 2, "one re-fetch after the refusal");
    // A refresh margin longer than the lifetime refreshes before every use.
    let eager =
        Client::with_options(emu.settings(emu.oauth()), ClientOptions { token_refresh_margin: Duration::from_secs(7200), ..quick() })
            .unwrap();
    eager.me().await.unwrap();
    eager.me().await.unwrap();
    assert_eq!(emu.counters().await["oauth_tokens"], 4);
    // A wrong secret is a token problem, said once.
    let wrong = Credentials::OAuth { client_id: demo::SERVICE_PRINCIPAL.into(), client_secret: Secret::new("wrong-secret") };
    let e = Client::with_options(emu.settings(wrong), quick()).unwrap().me().await.unwrap_err();
    assert_eq!(e.kind(), "token_invalid");
    assert!(!e.to_string().contains("wrong-secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_token_expiring_mid_stream_fails_clearly() {
    let config = EmulatorConfig { chunk_policy: ChunkPolicy { max_rows: 500, max_bytes: 16 << 20 }, ..Default::default() };
    let emu = Emu::start_with(config, DemoOptions { events: 3000, running: true, ..Default::default() }).await;
    let client = emu.client("user_pat");
    let mut stream = client
        .query(&Statement::new("SELECT * FROM main.product.events"), &QueryOptions { max_concurrent_chunks: 1, ..Default::default() })
        .await
        .unwrap();
    stream.next().await.unwrap().unwrap();
    let token = emu.tokens["user_pat"].clone();
    emu.admin(reqwest::Method::POST, &format!("/emulator/v1/tokens/{token}/expire"), Value::Null).await;
    let mut err = None;
    while let Some(b) = stream.next().await {
        if let Err(e) = b {
            err = Some(e);
        }
    }
    assert_eq!(err.expect("the stream fails").kind(), "token_invalid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_warehouse_reports_progress_and_a_manual_one_says_so() {
    let emu = Emu::start_with(
        EmulatorConfig::default(),
        DemoOptions { events: 1000, start_delay_ms: Some(1500), running: false, ..Default::default() },
    )
    .await;
    let client = emu.client("service_principal");
    let seen: Arc<Mutex<Vec<Progress>>> = Arc::default();
    let sink = seen.clone();
    let opts = QueryOptions { progress: Some(Arc::new(move |p: &Progress| sink.lock().unwrap().push(p.clone()))), ..Default::default() };
    let stream = client.query(&Statement::new("SELECT count(*) FROM main.crm.people"), &opts).await.unwrap();
    assert_eq!(stream.collect_batches().await.unwrap()[0].num_rows(), 1);
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter().any(|p| matches!(p, Progress::Waiting { warehouse_state: Some(s), .. } if s == "STARTING")),
        "no STARTING progress in {seen:?}"
    );
    assert!(matches!(seen.last(), Some(Progress::Ready { rows: 1, .. })));
    // Manual start only, stopped: its own error.
    emu.set_warehouse(json!({"state": "STOPPED", "auto_resume": false})).await;
    let e = client.query_text(&Statement::new("SELECT 1"), 1).await.unwrap_err();
    assert_eq!(e.kind(), "warehouse_stopped", "{e:?}");
    assert!(e.hint().contains("auto-start"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_and_dropped_queries_cancel_the_statement() {
    let emu = Emu::start_with(
        EmulatorConfig::default(),
        DemoOptions { events: 1000, start_delay_ms: Some(4000), running: false, ..Default::default() },
    )
    .await;
    let client = emu.client("service_principal");
    let opts = QueryOptions { timeout: Duration::from_millis(700), ..Default::default() };
    let e = client.query(&Statement::new("SELECT 1 AS timed"), &opts).await.unwrap_err();
    assert_eq!(e.kind(), "timed_out");
    // Dropping the future while the statement waits cancels it too.
    let c2 = client.clone();
    let task = tokio::spawn(async move { c2.query(&Statement::new("SELECT 2 AS dropped"), &QueryOptions::default()).await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(600)).await;
    task.abort();
    let _ = task.await;
    let mut states = BTreeMap::new();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        states = emu
            .history()
            .await
            .iter()
            .map(|s| (s["statement"].as_str().unwrap_or_default().to_string(), s["state"].as_str().unwrap_or_default().to_string()))
            .collect();
        if states.values().filter(|s| *s == "CANCELED").count() == 2 {
            break;
        }
    }
    assert_eq!(states.get("SELECT 1 AS timed").map(String::as_str), Some("CANCELED"), "{states:?}");
    assert_eq!(states.get("SELECT 2 AS dropped").map(String::as_str), Some("CANCELED"), "{states:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_catalogs_columns_and_effective_privileges() {
    let emu = Emu::start().await;
    let client = emu.client("service_principal");
    let cats: Vec<String> = client.list_catalogs().await.unwrap().into_iter().map(|c| c.name).collect();
    assert!(cats.contains(&"main".to_string()), "{cats:?}");
    assert!(!cats.contains(&"finance".to_string()), "a catalog without grants is hidden: {cats:?}");
    let t = TableName::parse("product.events_v", Some("main")).unwrap();
    let cols: Vec<String> = client.table_columns(&t).await.unwrap().into_iter().map(|c| c.name).collect();
    assert_eq!(cols[..4], ["event_id", "event_name", "event_ts", "user_id"]);
    let privs = client.effective_privileges("table", &t.full_name(), demo::SERVICE_PRINCIPAL).await.unwrap();
    let names: Vec<&str> = privs.iter().map(|p| p.privilege.as_str()).collect();
    for p in ["USE_CATALOG", "USE_SCHEMA", "SELECT"] {
        assert!(names.contains(&p), "{p} not in {names:?}");
    }
    let w = client.warehouse().await.unwrap();
    assert_eq!(w.id, demo::WAREHOUSE_ID);
    assert_eq!(w.auto_resume, Some(true));
}

// --- Test connection -------------------------------------------------------

fn input(emu: &Emu, creds: Credentials, tables: Vec<TableCheck>) -> CheckInput {
    CheckInput {
        workspace_url: emu.run.base_url(),
        http_path: format!("/sql/1.0/warehouses/{}", demo::WAREHOUSE_ID),
        credentials: creds,
        default_catalog: Some("main".into()),
        allow_hosts: vec![emu.host()],
        tables,
    }
}

fn events_table() -> TableCheck {
    TableCheck {
        pipeline: "acme_events".into(),
        source: "product.events_v".into(),
        columns: ["event_id", "event_name", "event_ts", "user_id", "email", "plan"].map(String::from).to_vec(),
    }
}

fn people_table() -> TableCheck {
    TableCheck { pipeline: "acme_people".into(), source: "crm.people".into(), columns: vec![] }
}

fn text(emu: &Emu, r: &databricks::check::Report) -> String {
    r.render().replace(&emu.run.base_url(), "http://EMULATOR").replace(&emu.host(), "EMULATOR")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_connection_checklists() {
    let emu = Emu::start().await;
    let good = test_connection_with(&input(&emu, emu.token("service_principal"), vec![events_table(), people_table()]), quick()).await;
    assert!(good.ok, "{}", good.render());
    assert!(good.catalogs.contains(&"main".to_string()));
    insta::assert_snapshot!("check_ok", text(&emu, &good));

    let oauth = test_connection_with(&input(&emu, emu.oauth(), vec![]), quick()).await;
    assert!(oauth.ok, "{}", oauth.render());

    let pat = test_connection_with(&input(&emu, emu.token("user_pat"), vec![]), quick()).await;
    assert!(pat.ok);
    insta::assert_snapshot!("check_pat_warns", text(&emu, &pat));

    let no_use = test_connection_with(&input(&emu, emu.token("no_can_use"), vec![]), quick()).await;
    assert!(!no_use.ok);
    insta::assert_snapshot!("check_no_can_use", text(&emu, &no_use));

    let no_select = test_connection_with(&input(&emu, emu.token("no_select"), vec![events_table(), people_table()]), quick()).await;
    assert!(!no_select.ok);
    insta::assert_snapshot!("check_no_select", text(&emu, &no_select));

    let expired = test_connection_with(&input(&emu, emu.token("expired"), vec![]), quick()).await;
    insta::assert_snapshot!("check_expired_token", text(&emu, &expired));

    let mut drifted = events_table();
    drifted.columns.push("event_time".into());
    drifted.columns.push("usr_id".into());
    let drift = test_connection_with(&input(&emu, emu.token("service_principal"), vec![drifted]), quick()).await;
    insta::assert_snapshot!("check_column_missing", text(&emu, &drift));

    let mut cluster = input(&emu, emu.token("service_principal"), vec![]);
    cluster.http_path = "sql/protocolv1/o/1234567890123456/0123-456789-abcdefgh".into();
    let r = test_connection_with(&cluster, quick()).await;
    insta::assert_snapshot!("check_cluster_path", text(&emu, &r));

    let mut foreign = input(&emu, emu.token("service_principal"), vec![]);
    foreign.allow_hosts.clear();
    let r = test_connection_with(&foreign, quick()).await;
    assert!(!r.ok);
    assert_eq!(r.checks.len(), 1);
    assert!(r.checks[0].detail.contains("plain http is refused"), "{}", r.render());

    let mut missing_catalog = input(&emu, emu.token("service_principal"), vec![]);
    missing_catalog.default_catalog = Some("finance".into());
    let r = test_connection_with(&missing_catalog, quick()).await;
    assert!(!r.ok);
    insta::assert_snapshot!("check_default_catalog_hidden", text(&emu, &r));

    emu.set_warehouse(json!({"state": "STOPPED", "auto_resume": false})).await;
    let stopped = test_connection_with(&input(&emu, emu.token("service_principal"), vec![]), quick()).await;
    insta::assert_snapshot!("check_manual_warehouse_stopped", text(&emu, &stopped));
    // Nothing printed holds a secret.
    for r in [&good, &pat, &no_use, &no_select, &expired, &drift, &stopped] {
        let json = serde_json::to_string(r).unwrap();
        for t in emu.tokens.values() {
            assert!(!json.contains(t.as_str()) && !r.render().contains(t.as_str()));
        }
    }
}

/// A submit whose answer is lost may have started a statement: it is not
/// sent again (which would run it twice on the customer's warehouse); the
/// failure is transient, for the next run to retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_submit_answer_is_not_sent_twice() {
    let emu = Emu::start().await;
    let client = emu.client("service_principal");
    let before = emu.history().await.len();
    for rule in [
        json!({"kind": "reset_body", "after_bytes": 0, "times": 1, "method": "POST", "path_prefix": "/api/2.0/sql/statements"}),
        json!({"kind": "status", "status": 504, "times": 1, "method": "POST", "path_prefix": "/api/2.0/sql/statements"}),
    ] {
        emu.fault(rule.clone()).await;
        let e = client.query_text(&Statement::new("SELECT count(*) FROM main.crm.people"), 1).await.unwrap_err();
        assert!(e.is_retryable() && e.to_string().contains("not sent again"), "{rule}: {e}");
    }
    // The reset came after the statement was accepted: it exists once; the 504 came instead of it.
    assert_eq!(emu.history().await.len(), before + 1, "no statement was sent twice");
    assert!(count(&client, "SELECT count(*) FROM main.crm.people").await > 0, "the next try works");
}

/// A workspace that refuses `query_tags` gets its statements without them,
/// remembered for the client, and Test connection passes saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_refusing_query_tags_gets_untagged_statements() {
    let emu = Emu::start().await;
    emu.fault(json!({"kind": "refuse_query_tags"})).await;
    let client = emu.client("service_principal");
    assert!(!client.query_tags_refused());
    assert!(count(&client, "SELECT count(*) FROM main.crm.people").await > 0);
    assert!(client.query_tags_refused());
    assert!(count(&client, "SELECT count(*) FROM main.crm.organisations").await > 0);
    let refused = emu.counters().await["faults_injected"].as_u64().unwrap();
    assert_eq!(refused, 1, "refused once, then remembered");
    let r = test_connection_with(&input(&emu, emu.token("service_principal"), vec![events_table()]), quick()).await;
    assert!(r.ok, "{}", r.render());
    assert!(r.render().contains("refuses query_tags"), "{}", r.render());
}

/// A source the Unity Catalog tables API cannot find (or a workspace
/// without that API) is looked up through the warehouse before it is
/// "not found", and the error says which lookups failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn columns_are_found_through_the_warehouse_when_the_tables_api_cannot() {
    let emu = Emu::start().await;
    let client = emu.client("service_principal");
    let events = TableName::parse("main.product.events_v", None).unwrap();
    let by_api = client.table_columns(&events).await.unwrap();
    emu.fault(json!({"kind": "status", "status": 404, "path_prefix": "/api/2.1/unity-catalog/tables"})).await;
    let by_warehouse = client.table_columns(&events).await.unwrap();
    let names = |c: &[databricks::TableColumn]| c.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&by_warehouse), names(&by_api));
    assert_eq!(by_warehouse.iter().find(|c| c.name == "event_ts").unwrap().type_text, "timestamp");
    let missing = TableName::parse("main.product.nope", None).unwrap();
    let e = client.table_columns(&missing).await.unwrap_err();
    assert_eq!(e.kind(), "table_not_found");
    let text = e.to_string();
    assert!(text.contains("Unity Catalog tables API") && text.contains("the warehouse cannot find it"), "{text}");
    emu.admin(reqwest::Method::DELETE, "/emulator/v1/faults", Value::Null).await;
    // Unity Catalog's own "does not exist" is double-checked the same way.
    let e = client.table_columns(&missing).await.unwrap_err();
    assert!(e.to_string().contains("does not know it") && e.to_string().contains("the warehouse cannot find it"), "{e}");
}

/// An HTTP path naming no warehouse: Test connection lists the ones the principal may use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_warehouse_id_is_answered_with_the_warehouses_to_use() {
    let emu = Emu::start().await;
    let mut wrong = input(&emu, emu.token("service_principal"), vec![]);
    wrong.http_path = "/sql/1.0/warehouses/bhw-0000".into();
    let r = test_connection_with(&wrong, quick()).await;
    assert!(!r.ok);
    let c = r.checks.iter().find(|c| c.name == "Warehouse").unwrap_or_else(|| panic!("{}", r.render()));
    assert!(c.detail.contains("bhw-0000"), "{}", r.render());
    let hint = c.hint.as_deref().unwrap_or_default();
    assert!(hint.contains(&format!("/sql/1.0/warehouses/{}", demo::WAREHOUSE_ID)), "{}", r.render());
}

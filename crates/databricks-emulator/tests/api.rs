//! The emulator over real HTTP, driven with a plain HTTP client and the Arrow
//! IPC reader — never with the project's own Databricks client, so the two
//! cannot share a mistake.

use std::collections::BTreeMap;
use std::io::{Cursor, Read};
use std::time::{Duration, Instant};

use databricks_emulator::demo::{self, DemoOptions};
use databricks_emulator::{ChunkPolicy, EmulatorConfig, RunningEmulator};
use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::arrow::ipc::reader::StreamReader;
use reqwest::StatusCode;
use serde_json::{Value, json};

const WH: &str = demo::WAREHOUSE_ID;

struct Emu {
    run: RunningEmulator,
    http: reqwest::Client,
    tokens: BTreeMap<String, String>,
    oauth_secret: String,
}

struct Reply {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Emu {
    async fn start() -> Emu {
        Emu::start_with(EmulatorConfig::default(), DemoOptions { events: 3000, start_delay_ms: Some(150), ..Default::default() }).await
    }

    async fn start_with(config: EmulatorConfig, options: DemoOptions) -> Emu {
        let loaded = demo::workspace(&options).await.expect("demo workspace loads");
        let oauth_secret = loaded.oauth_secrets[demo::SERVICE_PRINCIPAL].clone();
        let run = databricks_emulator::start(loaded.workspace, config, "127.0.0.1:0").await.expect("emulator starts");
        Emu { run, http: reqwest::Client::new(), tokens: loaded.tokens, oauth_secret }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.run.base_url())
    }

    fn token(&self, name: &str) -> String {
        match name {
            "admin" => self.run.admin_token().to_string(),
            "" => String::new(),
            n if n.starts_with("raw:") => n[4..].to_string(),
            n => self.tokens[n].clone(),
        }
    }

    async fn send(&self, method: reqwest::Method, who: &str, path: &str, body: Option<Value>) -> Reply {
        let mut req = self.http.request(method, self.url(path));
        let token = self.token(who);
        if !token.is_empty() {
            req = req.bearer_auth(token);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request is answered");
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body arrives");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Reply { status, headers, body }
    }

    async fn get(&self, who: &str, path: &str) -> Reply {
        self.send(reqwest::Method::GET, who, path, None).await
    }

    async fn post(&self, who: &str, path: &str, body: Value) -> Reply {
        self.send(reqwest::Method::POST, who, path, Some(body)).await
    }

    async fn post_raw(&self, who: &str, path: &str, body: &'static str) -> Reply {
        let resp = self
            .http
            .post(self.url(path))
            .bearer_auth(self.token(who))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = serde_json::from_str(&resp.text().await.unwrap()).unwrap_or(Value::Null);
        Reply { status, headers, body }
    }

    /// Submits a statement and polls it to the end; returns the final statement.
    async fn sql_with(&self, who: &str, mut request: Value) -> Value {
        request["warehouse_id"] = json!(WH);
        if request.get("wait_timeout").is_none() {
            request["wait_timeout"] = json!("30s");
        }
        let r = self.post(who, "/api/2.0/sql/statements", request).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let mut s = r.body;
        let deadline = Instant::now() + Duration::from_secs(30);
        while matches!(s["status"]["state"].as_str(), Some("PENDING" | "RUNNING")) {
            assert!(Instant::now() < deadline, "statement never finished: {s}");
            tokio::time::sleep(Duration::from_millis(20)).await;
            s = self.get(who, &format!("/api/2.0/sql/statements/{}", s["statement_id"].as_str().unwrap())).await.body;
        }
        s
    }

    async fn sql(&self, who: &str, statement: &str) -> Value {
        self.sql_with(who, json!({"statement": statement})).await
    }

    /// Rows of a successful INLINE statement, every chunk followed.
    async fn rows(&self, who: &str, statement: &str) -> Vec<Vec<Value>> {
        let s = self.sql(who, statement).await;
        assert_eq!(s["status"]["state"], "SUCCEEDED", "{s}");
        let mut rows: Vec<Vec<Value>> = Vec::new();
        let mut result = s["result"].clone();
        loop {
            for r in result["data_array"].as_array().cloned().unwrap_or_default() {
                rows.push(r.as_array().unwrap().clone());
            }
            let Some(next) = result["next_chunk_internal_link"].as_str() else { break };
            result = self.get(who, next).await.body;
        }
        rows
    }

    async fn admin(&self, method: reqwest::Method, path: &str, body: Value) -> Reply {
        self.send(method, "admin", path, Some(body)).await
    }

    async fn warehouse_state(&self) -> String {
        self.get("service_principal", &format!("/api/2.0/sql/warehouses/{WH}")).await.body["state"].as_str().unwrap().to_string()
    }
}

fn error_message(s: &Value) -> String {
    s["status"]["error"]["message"].as_str().unwrap_or_default().to_string()
}

async fn download(http: &reqwest::Client, link: &Value) -> Vec<u8> {
    let url = link["external_link"].as_str().expect("a link");
    let resp = http.get(url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.bytes().await.unwrap().to_vec()
}

fn arrow_batches(bytes: &[u8]) -> Vec<RecordBatch> {
    StreamReader::try_new(Cursor::new(bytes.to_vec()), None).expect("an Arrow IPC stream").map(|b| b.unwrap()).collect()
}

// ---------------------------------------------------------------------------
// Identity, authentication, headers.

#[tokio::test]
async fn who_am_i_answers_with_databricks_headers() {
    let emu = Emu::start().await;
    let r = emu.get("service_principal", "/api/2.0/preview/scim/v2/Me").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["userName"], demo::SERVICE_PRINCIPAL);
    assert_eq!(r.body["displayName"], "trig-sync");
    assert_eq!(r.headers["x-databricks-org-id"], "1234567890123456");
    assert_eq!(r.headers["server"], "databricks");
    assert!(r.headers.contains_key("x-request-id"));
    insta::assert_json_snapshot!("scim_me_service_principal", r.body, {".id" => "[id]"});
    let r = emu.get("user_pat", "/api/2.0/preview/scim/v2/Me").await;
    assert_eq!(r.body["emails"][0]["value"], "analyst@example.com");
}

#[tokio::test]
async fn the_token_api_lists_the_callers_own_live_tokens_with_their_expiry() {
    let emu = Emu::start().await;
    let r = emu.get("service_principal", "/api/2.0/token/list").await;
    assert_eq!(r.status, StatusCode::OK);
    let infos = r.body["token_infos"].as_array().unwrap();
    // The service principal's live token (90 days); not its expired one, not another principal's.
    assert_eq!(infos.len(), 1, "{}", r.body);
    let expiry = infos[0]["expiry_time"].as_i64().unwrap();
    let days = (expiry - chrono::Utc::now().timestamp_millis()) / 86_400_000;
    assert!((89..=90).contains(&days), "{days}");
    assert!(!r.body.to_string().contains("dapi"), "never a token's value: {}", r.body);
    let r = emu.get("no_select", "/api/2.0/token/list").await;
    assert_eq!(r.body["token_infos"][0]["expiry_time"], -1, "a token without expiry");
}

#[tokio::test]
async fn bad_credentials_get_databricks_statuses() {
    let emu = Emu::start().await;
    // No credential: the only 401.
    let r = emu.get("", "/api/2.0/sql/warehouses").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers["www-authenticate"], "Bearer realm=\"DatabricksRealm\"");
    assert_eq!(r.body["error_code"], 401);
    // Unknown, expired: 403 with a numeric error_code and the request id.
    for who in ["raw:dapi0000", "expired"] {
        let r = emu.get(who, "/api/2.0/sql/warehouses").await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{who}");
        assert_eq!(r.body["error_code"], 403);
        let msg = r.body["message"].as_str().unwrap();
        assert!(msg.starts_with("Invalid access token. [ReqId: "), "{msg}");
        assert!(msg.contains(r.headers["x-request-id"].to_str().unwrap()));
        assert_eq!(r.headers["x-databricks-reason-phrase"], "Invalid access token.");
    }
    // A Basic credential is not a type this API takes.
    let resp = emu.http.get(emu.url("/api/2.0/sql/warehouses")).basic_auth("a", Some("b")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // The admin token opens nothing but the admin API, and client tokens never open it.
    assert_eq!(emu.get("admin", "/api/2.0/sql/warehouses").await.status, StatusCode::FORBIDDEN);
    let r = emu.get("service_principal", "/emulator/v1/counters").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.body["error_code"], "PERMISSION_DENIED");
    assert_eq!(emu.get("", "/emulator/v1/counters").await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn oauth_machine_to_machine_issues_short_lived_tokens() {
    let config = EmulatorConfig { oauth_token_ttl: Duration::from_secs(2), ..Default::default() };
    let emu = Emu::start_with(config, DemoOptions { events: 100, ..Default::default() }).await;
    let meta = emu.get("", "/.well-known/databricks-config").await;
    assert_eq!(meta.status, StatusCode::OK);
    assert_eq!(meta.body["workspace_id"], "1234567890123456");
    let oidc = meta.body["oidc_endpoint"].as_str().unwrap().to_string();
    let disc: Value = emu.http.get(format!("{oidc}/.well-known/oauth-authorization-server")).send().await.unwrap().json().await.unwrap();
    let token_url = disc["token_endpoint"].as_str().unwrap().to_string();
    assert_eq!(token_url, emu.url("/oidc/v1/token"));

    // HTTP Basic, as the official SDKs send it.
    let resp = emu
        .http
        .post(&token_url)
        .basic_auth(demo::SERVICE_PRINCIPAL, Some(&emu.oauth_secret))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials&scope=all-apis")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let tok: Value = resp.json().await.unwrap();
    assert_eq!(tok["token_type"], "Bearer");
    assert_eq!(tok["expires_in"], 2);
    assert_eq!(tok["scope"], "all-apis");
    let access = tok["access_token"].as_str().unwrap().to_string();
    let me = emu.get(&format!("raw:{access}"), "/api/2.0/preview/scim/v2/Me").await;
    assert_eq!(me.body["userName"], demo::SERVICE_PRINCIPAL);

    // Form credentials (client_secret_post) work too; a wrong secret does not.
    let body = format!("grant_type=client_credentials&client_id={}&client_secret={}", demo::SERVICE_PRINCIPAL, emu.oauth_secret);
    let resp = emu.http.post(&token_url).header("content-type", "application/x-www-form-urlencoded").body(body).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = emu
        .http
        .post(&token_url)
        .basic_auth(demo::SERVICE_PRINCIPAL, Some("wrong"))
        .body("grant_type=client_credentials")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"], "invalid_client");
    let resp = emu
        .http
        .post(&token_url)
        .basic_auth(demo::SERVICE_PRINCIPAL, Some(&emu.oauth_secret))
        .body("grant_type=password")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    // The token expires.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let me = emu.get(&format!("raw:{access}"), "/api/2.0/preview/scim/v2/Me").await;
    assert_eq!(me.status, StatusCode::FORBIDDEN);
}

// ---------------------------------------------------------------------------
// Statement Execution API: requests and shapes.

#[tokio::test]
async fn inline_json_statement_has_databricks_shape() {
    let emu = Emu::start().await;
    let s = emu.sql("service_principal", "SELECT 1 AS a, 'x' AS b").await;
    insta::assert_json_snapshot!("inline_succeeded", s, {".statement_id" => "[id]"});
    // Zero rows: columns but no chunks, `result: {}`.
    let s = emu.sql("service_principal", "SELECT event_id FROM main.product.events_v WHERE 1 = 0").await;
    insta::assert_json_snapshot!("inline_zero_rows", s, {".statement_id" => "[id]"});
    // A statement without a result set.
    let s = emu.sql("service_principal", "USE CATALOG main").await;
    assert_eq!(s["manifest"]["schema"], json!({"column_count": 0}));
    assert_eq!(s["result"], json!({}));
}

#[tokio::test]
async fn bad_requests_get_databricks_errors() {
    let emu = Emu::start().await;
    let p = "/api/2.0/sql/statements";
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            json!({"statement": "SELECT 1", "warehouse_id": WH, "wait_timeout": "51s"}),
            "INVALID_PARAMETER_VALUE",
            "The wait_timeout field must be 0 seconds (disables wait), or between 5 seconds and 50 seconds.",
        ),
        (
            json!({"statement": "SELECT 1", "warehouse_id": WH, "wait_timeout": "3s"}),
            "INVALID_PARAMETER_VALUE",
            "The wait_timeout field must be 0 seconds (disables wait), or between 5 seconds and 50 seconds.",
        ),
        (
            json!({"statement": "SELECT 1", "warehouse_id": WH, "wait_timeout": "soon"}),
            "INVALID_PARAMETER_VALUE",
            "Error while parsing type: duration.",
        ),
        (json!({"statement": "SELECT 1"}), "BAD_REQUEST", "Required field is not specified: warehouse_id."),
        (json!({}), "BAD_REQUEST", "Required field is not specified: warehouse_id."),
        (json!({"warehouse_id": WH}), "BAD_REQUEST", "Required field is not specified: statement."),
        (json!({"statement": "SELECT 1", "warehouse_id": "nosuch"}), "INVALID_PARAMETER_VALUE", "nosuch is not a valid endpoint id."),
        (
            json!({"statement": "SELECT 1", "warehouse_id": WH, "disposition": "INLINE", "format": "ARROW_STREAM"}),
            "INVALID_PARAMETER_VALUE",
            "Incompatible parameters: The format field must be JSON_ARRAY when the disposition field is INLINE.",
        ),
        (
            json!({"statement": "SELECT 1", "warehouse_id": WH, "format": "CSV"}),
            "INVALID_PARAMETER_VALUE",
            "Incompatible parameters: The format field must be JSON_ARRAY when the disposition field is INLINE.",
        ),
        (
            json!({"statement": "SELECT 1", "warehouse_id": WH, "row_limit": -1}),
            "INVALID_PARAMETER_VALUE",
            "The row_limit field must be between 0 and 2147483647.",
        ),
        (
            json!({"statement": "SELECT 1", "warehouse_id": WH, "byte_limit": 0}),
            "INVALID_PARAMETER_VALUE",
            "The byte_limit field must be between 1 and 26214400.",
        ),
        (
            json!({"statement": 42, "warehouse_id": WH}),
            "MALFORMED_REQUEST",
            "Invalid JSON given in the body of the request - expected a string for field 'statement'",
        ),
        (
            json!({"statement": "SELECT 1", "warehouse_id": WH, "row_limit": "many"}),
            "MALFORMED_REQUEST",
            "Invalid JSON given in the body of the request - expected an integer for field 'row_limit'",
        ),
    ];
    for (body, code, message) in cases {
        let r = emu.post("service_principal", p, body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(r.body["error_code"], code, "{body}");
        assert_eq!(r.body["message"], message, "{body}");
    }
    let r = emu.post_raw("service_principal", p, "{\"statement\": ").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        r.body,
        json!({"error_code": "MALFORMED_REQUEST", "message": "Invalid JSON given in the body of the request - failed to parse given JSON"})
    );
    // A warehouse the caller cannot use, or that does not exist: 403 with details.
    for (who, wh) in [("no_can_use", WH), ("service_principal", "0123456789abcdef")] {
        let r = emu.post(who, p, json!({"statement": "SELECT 1", "warehouse_id": wh})).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        assert_eq!(r.body["error_code"], "PERMISSION_DENIED");
        assert_eq!(r.body["message"], "You do not have permission to use the SQL Warehouse. Please contact your administrator.");
        assert_eq!(r.body["details"][0]["resource_name"], wh);
    }
    // Unknown members and unknown enum values are ignored, as Databricks does.
    let s = emu.sql_with("service_principal", json!({"statement": "SELECT 1", "surprise": true, "on_wait_timeout": "MAYBE"})).await;
    assert_eq!(s["status"]["state"], "SUCCEEDED");
    // Empty statement: HTTP 200, FAILED.
    let s = emu.sql("service_principal", "").await;
    assert_eq!(s["status"]["sql_state"], "42617");
    // Statement ids.
    let r = emu.get("service_principal", "/api/2.0/sql/statements/not-a-uuid").await;
    assert_eq!((r.status, r.body["message"].as_str()), (StatusCode::BAD_REQUEST, Some("Error while parsing type: statement_id.")));
    let zero = "00000000-0000-0000-0000-000000000000";
    let r = emu.get("service_principal", &format!("/api/2.0/sql/statements/{zero}")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.body["error_code"], "NOT_FOUND");
    assert_eq!(r.body["message"], format!("The statement {zero} was not found."));
    assert_eq!(r.body["details"][0]["description"], "does not exist");
    let r = emu.post("service_principal", &format!("/api/2.0/sql/statements/{zero}/cancel"), json!({})).await;
    assert_eq!((r.status, r.body), (StatusCode::OK, json!({})));
    // Unknown routes.
    let r = emu.send(reqwest::Method::PUT, "service_principal", p, Some(json!({}))).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.body, json!({"error_code": "ENDPOINT_NOT_FOUND", "message": "No API found for 'PUT /sql/statements'"}));
}

#[tokio::test]
async fn sql_errors_fail_the_statement_with_class_and_state() {
    let emu = Emu::start().await;
    let cases = [
        ("SELEC 1", "42601", "[PARSE_SYNTAX_ERROR] Syntax error at or near 'SELEC'"),
        (
            "SELECT * FROM main.product.nope",
            "42P01",
            "[TABLE_OR_VIEW_NOT_FOUND] The table or view `main`.`product`.`nope` cannot be found.",
        ),
        (
            "SELECT evnt_ts FROM main.product.events_v",
            "42703",
            "[UNRESOLVED_COLUMN.WITH_SUGGESTION] A column, variable, or function parameter with name `evnt_ts` cannot be resolved. Did you mean one of the following? [`event_ts`",
        ),
        (
            "INSERT INTO main.product.events (event_id) VALUES ('x')",
            "42501",
            "[INSUFFICIENT_PERMISSIONS] Insufficient privileges:\nUser does not have MODIFY on Table 'main.product.events'.",
        ),
        ("DELETE FROM main.crm.people", "42501", "[INSUFFICIENT_PERMISSIONS]"),
        ("DROP TABLE main.crm.people", "42501", "[INSUFFICIENT_PERMISSIONS]"),
        ("CREATE TABLE main.crm.x (a INT)", "42501", "[INSUFFICIENT_PERMISSIONS]"),
        ("SELECT * FROM finance.ledger.invoices", "42501", "User does not have USE CATALOG on Catalog 'finance'."),
    ];
    for (sql, state, text) in cases {
        let s = emu.sql("service_principal", sql).await;
        assert_eq!(s["status"]["state"], "FAILED", "{sql}: {s}");
        assert_eq!(s["status"]["error"]["error_code"], "BAD_REQUEST", "{sql}");
        assert_eq!(s["status"]["sql_state"], state, "{sql}: {s}");
        assert!(error_message(&s).contains(text), "{sql}: {}", error_message(&s));
        assert!(s.get("manifest").is_none() && s.get("result").is_none());
    }
    // Nothing was written.
    let rows = emu.rows("service_principal", "SELECT count(*) FROM main.product.events WHERE event_id = 'x'").await;
    assert_eq!(rows[0][0], "0");
    let s = emu.sql("service_principal", "SELEC 1").await;
    insta::assert_json_snapshot!("failed_parse_error", s, {".statement_id" => "[id]"});
}

#[tokio::test]
async fn grants_are_enforced_in_sql() {
    let emu = Emu::start().await;
    for table in [demo::EVENTS, demo::EVENTS_TABLE] {
        let s = emu.sql("no_select", &format!("SELECT * FROM {table} LIMIT 1")).await;
        assert_eq!(s["status"]["sql_state"], "42501");
        assert!(error_message(&s).contains(&format!("User does not have SELECT on Table '{table}'.")), "{s}");
    }
    assert_eq!(emu.rows("no_select", "SELECT count(*) FROM main.crm.people").await.len(), 1);
    // What a principal may not read, it does not see either.
    let tables = emu.rows("no_select", "SHOW TABLES IN main.product").await;
    assert!(tables.is_empty(), "{tables:?}");
    let cols = emu.rows("no_select", "SELECT table_name FROM main.information_schema.columns WHERE table_schema = 'product'").await;
    assert!(cols.is_empty(), "{cols:?}");
    let catalogs: Vec<Value> = emu.rows("service_principal", "SHOW CATALOGS").await.into_iter().map(|r| r[0].clone()).collect();
    assert_eq!(catalogs, vec![json!("main"), json!("system")]);
    let schemas: Vec<Value> = emu.rows("service_principal", "SHOW SCHEMAS IN main").await.into_iter().map(|r| r[0].clone()).collect();
    assert_eq!(schemas, vec![json!("crm"), json!("information_schema"), json!("product")]);
    let describe = emu.rows("service_principal", "DESCRIBE TABLE main.product.events_v").await;
    let names: Vec<&str> = describe.iter().map(|r| r[0].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["event_id", "event_name", "event_ts", "user_id", "email", "plan", "platform", "properties", "ingested_at", "event_ts_local"]
    );
    assert_eq!(describe[9][1], "timestamp_ntz");
    let cols = emu
        .rows("service_principal", "SELECT column_name, data_type, ordinal_position, is_nullable FROM main.information_schema.columns WHERE table_name = 'people' ORDER BY ordinal_position")
        .await;
    assert_eq!(cols[0], vec![json!("user_id"), json!("STRING"), json!("0"), json!("NO")]);
    // The default catalog and schema of the request.
    let s =
        emu.sql_with("service_principal", json!({"statement": "SELECT count(*) FROM people", "catalog": "main", "schema": "crm"})).await;
    assert_eq!(s["status"]["state"], "SUCCEEDED", "{s}");
    // Backticks.
    let rows = emu.rows("service_principal", "SELECT `user_id` FROM `main`.`crm`.`people` LIMIT 1").await;
    assert_eq!(rows.len(), 1);
}

#[tokio::test]
async fn types_render_as_databricks_renders_them() {
    let emu = Emu::start().await;
    let sql = "SELECT CAST(1 AS INT) AS i, CAST(2 AS BIGINT) AS b, CAST(1.5 AS DOUBLE) AS d, CAST(12.34 AS DECIMAL(10,2)) AS dec, \
               'x' AS s, DATE'2024-01-02' AS dt, TIMESTAMP'2024-01-02 03:04:05.123' AS ts, \
               CAST('2024-01-02 03:04:05' AS TIMESTAMP_NTZ) AS ntz, true AS bo, NULL AS n, array(1, 2) AS arr, \
               map('a', 'b') AS m, named_struct('a', 1, 'b', 'x') AS st";
    let s = emu.sql("service_principal", sql).await;
    insta::assert_json_snapshot!("types_json_array", s, {".statement_id" => "[id]"});
    let row = &s["result"]["data_array"][0];
    assert_eq!(row[6], "2024-01-02T03:04:05.123Z");
    assert_eq!(row[7], "2024-01-02T03:04:05.000");
    assert_eq!(row[9], Value::Null);

    // The same in Arrow.
    let s = emu.sql_with("service_principal", json!({"statement": sql, "disposition": "EXTERNAL_LINKS", "format": "ARROW_STREAM"})).await;
    let bytes = download(&emu.http, &s["result"]["external_links"][0]).await;
    let batches = arrow_batches(&bytes);
    let schema = batches[0].schema();
    let ty = |n: &str| schema.field_with_name(n).unwrap().data_type().clone();
    assert_eq!(ty("i"), DataType::Int32);
    assert_eq!(ty("b"), DataType::Int64);
    assert_eq!(ty("dec"), DataType::Decimal128(10, 2));
    assert_eq!(ty("s"), DataType::Utf8);
    assert_eq!(ty("dt"), DataType::Date32);
    assert_eq!(ty("ts"), DataType::Timestamp(TimeUnit::Microsecond, Some("Etc/UTC".into())));
    assert_eq!(ty("ntz"), DataType::Timestamp(TimeUnit::Microsecond, None));
    assert!(matches!(ty("arr"), DataType::List(_)));
    assert!(matches!(ty("m"), DataType::Map(..)));
    assert!(matches!(ty("st"), DataType::Struct(_)));
    let ts = batches[0].column_by_name("ts").unwrap().as_primitive::<datafusion::arrow::datatypes::TimestampMicrosecondType>();
    assert_eq!(ts.value(0), 1_704_164_645_123_000);
}

#[tokio::test]
async fn named_parameters_bind_with_their_types() {
    let emu = Emu::start().await;
    let s = emu
        .sql_with(
            "service_principal",
            json!({
                "statement": "SELECT :d AS d, :n + 1 AS n, :s AS s, :missing_value AS v",
                "parameters": [
                    {"name": "d", "value": "2024-01-02", "type": "DATE"},
                    {"name": "n", "value": "41", "type": "INT"},
                    {"name": "s", "value": "it's"},
                    {"name": "missing_value", "type": "STRING"}
                ]
            }),
        )
        .await;
    assert_eq!(s["status"]["state"], "SUCCEEDED", "{s}");
    assert_eq!(s["result"]["data_array"][0], json!(["2024-01-02", "42", "it's", null]));
    assert_eq!(s["manifest"]["schema"]["columns"][0]["type_name"], "DATE");

    let s = emu.sql_with("service_principal", json!({"statement": "SELECT :nope"})).await;
    assert_eq!(s["status"]["sql_state"], "42P02");
    assert!(error_message(&s).starts_with("[UNBOUND_SQL_PARAMETER]"), "{s}");
    let s = emu
        .sql_with("service_principal", json!({"statement": "SELECT :n", "parameters": [{"name": "n", "value": "abc", "type": "INT"}]}))
        .await;
    assert_eq!(s["status"]["sql_state"], "22023");
    assert!(error_message(&s).contains("INVALID_VALUE_FOR_DATA_TYPE"), "{s}");
    let s = emu
        .sql_with("service_principal", json!({"statement": "SELECT :n", "parameters": [{"name": "n", "value": "[1]", "type": "ARRAY"}]}))
        .await;
    assert!(error_message(&s).contains("INVALID_PARAMETER_MARKER_VALUE.INVALID_DATA_TYPE"), "{s}");
    // Parameters in a pipeline-style incremental query.
    let s = emu
        .sql_with(
            "service_principal",
            json!({
                "statement": "SELECT count(*) FROM main.product.events_v WHERE ingested_at > :since",
                "parameters": [{"name": "since", "value": "2000-01-01T00:00:00Z", "type": "TIMESTAMP"}]
            }),
        )
        .await;
    assert_eq!(s["status"]["state"], "SUCCEEDED", "{s}");
}

#[tokio::test]
async fn spark_functions_a_connector_uses_work() {
    let emu = Emu::start().await;
    let rows = emu
        .rows(
            "service_principal",
            "SELECT sha2('abc', 256), to_json(named_struct('a', 1)), date_sub(DATE'2024-01-02', 1), date_add(DATE'2024-01-02', 1), \
             lower(trim('  AB ')), coalesce(NULL, 'z'), current_timestamp() > TIMESTAMP'2020-01-01 00:00:00', current_user(), \
             current_date() >= DATE'2020-01-01'",
        )
        .await;
    assert_eq!(
        rows[0],
        vec![
            json!("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
            json!("{\"a\":1}"),
            json!("2024-01-01"),
            json!("2024-01-03"),
            json!("ab"),
            json!("z"),
            json!("true"),
            json!(demo::SERVICE_PRINCIPAL),
            json!("true"),
        ]
    );
    let rows = emu
        .rows("service_principal", "SELECT count(*) FROM main.product.events_v WHERE event_ts > current_timestamp() - INTERVAL 400 DAYS")
        .await;
    assert!(rows[0][0].as_str().unwrap().parse::<u64>().unwrap() > 0);
}

// ---------------------------------------------------------------------------
// Results: chunks, links, limits, compression.

fn small_chunks() -> EmulatorConfig {
    EmulatorConfig { chunk_policy: ChunkPolicy { max_rows: 700, max_bytes: usize::MAX }, ..Default::default() }
}

#[tokio::test]
async fn arrow_results_come_in_chunks_over_external_links() {
    let emu = Emu::start_with(small_chunks(), DemoOptions { events: 3000, start_delay_ms: Some(50), ..Default::default() }).await;
    let sql = "SELECT event_id, event_name, event_ts, user_id, properties FROM main.product.events ORDER BY event_id";
    for lz4 in [false, true] {
        let mut req = json!({"statement": sql, "disposition": "EXTERNAL_LINKS", "format": "ARROW_STREAM"});
        if lz4 {
            req["result_compression"] = json!("LZ4_FRAME");
        }
        let s = emu.sql_with("service_principal", req).await;
        let m = &s["manifest"];
        assert_eq!(m["total_chunk_count"], 5, "{m}");
        assert_eq!(m["total_row_count"], 3000);
        assert_eq!(m["result_compression"], if lz4 { "LZ4_FRAME" } else { "NONE" });
        let chunks = m["chunks"].as_array().unwrap();
        assert_eq!(chunks[4], json!({"chunk_index": 4, "row_offset": 2800, "row_count": 200, "byte_count": chunks[4]["byte_count"]}));
        let mut link = s["result"]["external_links"][0].clone();
        let mut ids = Vec::new();
        loop {
            assert!(link["expiration"].as_str().unwrap().ends_with('Z'));
            let mut bytes = download(&emu.http, &link).await;
            assert_eq!(bytes.len() as u64, link["byte_count"].as_u64().unwrap());
            if lz4 {
                let mut plain = Vec::new();
                lz4_flex::frame::FrameDecoder::new(Cursor::new(bytes)).read_to_end(&mut plain).unwrap();
                bytes = plain;
            }
            // Every chunk is a complete IPC stream with its own schema.
            let batches = arrow_batches(&bytes);
            let n: usize = batches.iter().map(|b| b.num_rows()).sum();
            assert_eq!(n as u64, link["row_count"].as_u64().unwrap());
            for b in &batches {
                ids.extend(b.column(0).as_string::<i32>().iter().map(|v| v.map(str::to_string)));
            }
            let Some(next) = link["next_chunk_internal_link"].as_str() else { break };
            let r = emu.get("service_principal", next).await;
            assert_eq!(r.status, StatusCode::OK);
            assert!(r.body.get("external_links").is_some(), "{}", r.body);
            link = r.body["external_links"][0].clone();
        }
        assert_eq!(ids.len(), 3000);
        let mut sorted = ids.clone();
        // ORDER BY puts NULLs last, as Databricks does.
        sorted.sort_by_key(|v| (v.is_none(), v.clone()));
        assert_eq!(ids, sorted, "chunks arrive in order");
    }
}

#[tokio::test]
async fn external_links_refuse_authorization_and_expire() {
    let config = EmulatorConfig { link_ttl: Duration::from_millis(600), ..small_chunks() };
    let emu = Emu::start_with(config, DemoOptions { events: 1000, start_delay_ms: Some(50), ..Default::default() }).await;
    let s = emu
        .sql_with(
            "service_principal",
            json!({"statement": "SELECT * FROM main.product.events", "disposition": "EXTERNAL_LINKS", "format": "JSON_ARRAY"}),
        )
        .await;
    let id = s["statement_id"].as_str().unwrap().to_string();
    let url = s["result"]["external_links"][0]["external_link"].as_str().unwrap().to_string();
    // A link must be fetched without an Authorization header.
    let resp = emu.http.get(&url).bearer_auth(emu.token("service_principal")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(resp.text().await.unwrap().contains("Only one auth mechanism allowed"));
    // A tampered link is refused.
    let resp = emu.http.get(url.replace("/0?", "/1?")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    // JSON_ARRAY chunk bodies are compact arrays of arrays of strings.
    let body: Value = emu.http.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(body.as_array().unwrap().len(), 700);
    // Links expire; asking for the chunk again gives a fresh one.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let resp = emu.http.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert!(resp.text().await.unwrap().contains("Request has expired"));
    let r = emu.get("service_principal", &format!("/api/2.0/sql/statements/{id}/result/chunks/0")).await;
    let fresh = &r.body["external_links"][0];
    assert_ne!(fresh["external_link"].as_str().unwrap(), url);
    assert_eq!(download(&emu.http, fresh).await.len() as u64, fresh["byte_count"].as_u64().unwrap());
    // Chunk indexes out of range.
    let r = emu.get("service_principal", &format!("/api/2.0/sql/statements/{id}/result/chunks/2")).await;
    assert_eq!((r.status, r.body["message"].as_str()), (StatusCode::BAD_REQUEST, Some("The chunk_index 2 is out of bounds.")));
    // Another principal cannot see the statement.
    let r = emu.get("user_pat", &format!("/api/2.0/sql/statements/{id}")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn csv_chunks_have_one_header() {
    let emu = Emu::start_with(small_chunks(), DemoOptions { events: 1000, start_delay_ms: Some(50), ..Default::default() }).await;
    let s = emu
        .sql_with("service_principal", json!({"statement": "SELECT event_id, email FROM main.product.events ORDER BY event_id LIMIT 800", "disposition": "EXTERNAL_LINKS", "format": "CSV"}))
        .await;
    let first = String::from_utf8(download(&emu.http, &s["result"]["external_links"][0]).await).unwrap();
    assert!(first.starts_with("event_id,email\r\n"), "{}", &first[..40]);
    let id = s["statement_id"].as_str().unwrap();
    let r = emu.get("service_principal", &format!("/api/2.0/sql/statements/{id}/result/chunks/1")).await;
    let second = String::from_utf8(download(&emu.http, &r.body["external_links"][0]).await).unwrap();
    assert!(!second.contains("event_id,email"));
    assert_eq!(first.lines().count() + second.lines().count(), 801);
}

#[tokio::test]
async fn inline_results_follow_next_chunk_links_and_limits() {
    let emu = Emu::start_with(small_chunks(), DemoOptions { events: 3000, start_delay_ms: Some(50), ..Default::default() }).await;
    let rows = emu.rows("service_principal", "SELECT event_id FROM main.product.events").await;
    assert_eq!(rows.len(), 3000);
    let s = emu.sql_with("service_principal", json!({"statement": "SELECT event_id FROM main.product.events", "row_limit": 10})).await;
    assert_eq!(s["manifest"]["total_row_count"], 10);
    assert_eq!(s["manifest"]["truncated"], true);
    let s =
        emu.sql_with("service_principal", json!({"statement": "SELECT event_id FROM main.product.events LIMIT 5", "row_limit": 10})).await;
    assert_eq!(s["manifest"]["truncated"], false);
    let s = emu.sql_with("service_principal", json!({"statement": "SELECT event_id FROM main.product.events", "row_limit": 0})).await;
    assert_eq!((s["manifest"]["total_row_count"].as_u64(), s["manifest"]["truncated"].as_bool()), (Some(0), Some(true)));
    let s = emu.sql_with("service_principal", json!({"statement": "SELECT event_id FROM main.product.events", "byte_limit": 1000})).await;
    assert_eq!(s["manifest"]["truncated"], true);
    assert!(s["manifest"]["total_row_count"].as_u64().unwrap() < 3000);
}

#[tokio::test]
async fn inline_results_over_the_limit_fail() {
    let config = EmulatorConfig { inline_limit_bytes: 10_000, ..Default::default() };
    let emu = Emu::start_with(config, DemoOptions { events: 3000, start_delay_ms: Some(50), ..Default::default() }).await;
    let s = emu.sql("service_principal", "SELECT * FROM main.product.events").await;
    assert_eq!(s["status"]["state"], "FAILED");
    assert!(error_message(&s).contains("EXTERNAL_LINKS"), "{s}");
}

#[tokio::test]
async fn finished_results_expire_and_the_statement_closes() {
    let config = EmulatorConfig { result_ttl: Duration::from_millis(300), ..Default::default() };
    let emu = Emu::start_with(config, DemoOptions { events: 100, start_delay_ms: Some(50), ..Default::default() }).await;
    let s = emu.sql("service_principal", "SELECT 1").await;
    let id = s["statement_id"].as_str().unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = emu.get("service_principal", &format!("/api/2.0/sql/statements/{id}")).await;
    assert_eq!(r.body, json!({"statement_id": id, "status": {"state": "CLOSED"}}));
    let r = emu.get("service_principal", &format!("/api/2.0/sql/statements/{id}/result/chunks/0")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.body["details"][0]["description"], "the statement state should be SUCCEEDED before you can start fetching the result");
}

// ---------------------------------------------------------------------------
// Warehouses: lifecycle, auto-start, billing.

#[tokio::test]
async fn statements_wait_pending_while_the_warehouse_starts() {
    let emu =
        Emu::start_with(EmulatorConfig::default(), DemoOptions { events: 100, start_delay_ms: Some(400), ..Default::default() }).await;
    assert_eq!(emu.warehouse_state().await, "STOPPED");
    let r = emu
        .post("service_principal", "/api/2.0/sql/statements", json!({"statement": "SELECT 1", "warehouse_id": WH, "wait_timeout": "0s"}))
        .await;
    assert_eq!(r.body["status"]["state"], "PENDING");
    assert_eq!(r.body.as_object().unwrap().len(), 2, "only statement_id and status: {}", r.body);
    assert_eq!(emu.warehouse_state().await, "STARTING");
    let id = r.body["statement_id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = emu.get("service_principal", &format!("/api/2.0/sql/statements/{id}")).await.body;
        if s["status"]["state"] == "SUCCEEDED" {
            break;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(emu.warehouse_state().await, "RUNNING");
    let c = emu.get("admin", "/emulator/v1/counters").await.body;
    assert_eq!(c["warehouses"][WH]["wakeups"], 1);
    assert_eq!(c["warehouses"][WH]["statements"], 1);
    assert!(c["warehouses"][WH]["uptime_ms"].as_u64().unwrap() >= 300);
}

#[tokio::test]
async fn wait_timeout_with_cancel_cancels() {
    let emu =
        Emu::start_with(EmulatorConfig::default(), DemoOptions { events: 100, start_delay_ms: Some(8000), ..Default::default() }).await;
    let t = Instant::now();
    let r = emu
        .post(
            "service_principal",
            "/api/2.0/sql/statements",
            json!({"statement": "SELECT 1", "warehouse_id": WH, "wait_timeout": "5s", "on_wait_timeout": "CANCEL"}),
        )
        .await;
    assert!(t.elapsed() >= Duration::from_secs(5));
    assert_eq!(r.body["status"], json!({"state": "CANCELED"}));
    // CONTINUE (the default) leaves it pending.
    let r = emu
        .post("service_principal", "/api/2.0/sql/statements", json!({"statement": "SELECT 1", "warehouse_id": WH, "wait_timeout": "0s"}))
        .await;
    assert_eq!(r.body["status"]["state"], "PENDING");
    let id = r.body["statement_id"].as_str().unwrap();
    let c = emu.post("service_principal", &format!("/api/2.0/sql/statements/{id}/cancel"), json!({})).await;
    assert_eq!(c.body, json!({}));
    let s = emu.get("service_principal", &format!("/api/2.0/sql/statements/{id}")).await.body;
    assert_eq!(s["status"], json!({"state": "CANCELED"}));
}

#[tokio::test]
async fn a_warehouse_without_auto_start_fails_statements() {
    let emu = Emu::start().await;
    let r = emu.admin(reqwest::Method::POST, &format!("/emulator/v1/warehouses/{WH}"), json!({"auto_resume": false})).await;
    assert_eq!(r.status, StatusCode::OK);
    let s = emu.sql("service_principal", "SELECT 1").await;
    assert_eq!(s["status"]["state"], "FAILED");
    assert!(error_message(&s).contains("STOPPED"), "{s}");
    assert_eq!(emu.warehouse_state().await, "STOPPED");
}

#[tokio::test]
async fn warehouses_start_stop_and_auto_stop() {
    let emu = Emu::start().await;
    let list = emu.get("service_principal", "/api/2.0/sql/warehouses").await.body;
    assert_eq!(list["warehouses"].as_array().unwrap().len(), 1);
    assert_eq!(emu.get("no_can_use", "/api/2.0/sql/warehouses").await.body["warehouses"], json!([]));
    let w = emu.get("service_principal", &format!("/api/2.0/sql/warehouses/{WH}")).await.body;
    insta::assert_json_snapshot!("warehouse", w, {".jdbc_url" => "[url]", ".odbc_params.hostname" => "[host]", ".odbc_params.port" => "[port]"});
    // Start returns with STARTING already set (the SDK waiter's first GET must not see STOPPED).
    let r = emu.post("service_principal", &format!("/api/2.0/sql/warehouses/{WH}/start"), json!({})).await;
    assert_eq!((r.status, r.body), (StatusCode::OK, json!({})));
    assert_eq!(emu.warehouse_state().await, "STARTING");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(emu.warehouse_state().await, "RUNNING");
    // CAN USE may start, not stop.
    let r = emu.post("service_principal", &format!("/api/2.0/sql/warehouses/{WH}/stop"), json!({})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(emu.get("no_can_use", &format!("/api/2.0/sql/warehouses/{WH}")).await.status, StatusCode::FORBIDDEN);
    assert_eq!(emu.get("service_principal", "/api/2.0/sql/warehouses/0123456789abcdef").await.status, StatusCode::NOT_FOUND);
    assert_eq!(emu.get("service_principal", "/api/2.0/sql/warehouses/nope").await.status, StatusCode::BAD_REQUEST);
    // Auto-stop after the idle time.
    emu.admin(reqwest::Method::POST, &format!("/emulator/v1/warehouses/{WH}"), json!({"auto_stop_secs": 1})).await;
    emu.sql("service_principal", "SELECT 1").await;
    tokio::time::sleep(Duration::from_millis(1800)).await;
    assert_eq!(emu.warehouse_state().await, "STOPPED");
    let c = emu.get("admin", "/emulator/v1/counters").await.body;
    assert_eq!(c["warehouses"][WH]["starts"], 1);
    assert_eq!(c["warehouses"][WH]["wakeups"], 0);
    let up = c["warehouses"][WH]["uptime_ms"].as_u64().unwrap();
    assert!((1000..5000).contains(&up), "{up}");
    // Only a manager may read the permissions; the owner may also stop.
    let perms = emu.get("service_principal", &format!("/api/2.0/permissions/warehouses/{WH}")).await;
    assert_eq!(perms.status, StatusCode::FORBIDDEN);
    let r = emu.admin(reqwest::Method::POST, "/emulator/v1/tokens", json!({"principal": "admin@example.com"})).await;
    let owner = format!("raw:{}", r.body["token"].as_str().unwrap());
    let perms = emu.get(&owner, &format!("/api/2.0/permissions/warehouses/{WH}")).await;
    assert_eq!(perms.status, StatusCode::OK, "{}", perms.body);
    let acl = perms.body["access_control_list"].as_array().unwrap();
    assert!(
        acl.contains(&json!({"service_principal_name": demo::SERVICE_PRINCIPAL, "display_name": "trig-sync",
        "all_permissions": [{"permission_level": "CAN_USE", "inherited": false}]})),
        "{acl:?}"
    );
    emu.post("service_principal", &format!("/api/2.0/sql/warehouses/{WH}/start"), json!({})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = emu.post(&owner, &format!("/api/2.0/sql/warehouses/{WH}/stop"), json!({})).await;
    assert_eq!((r.status, r.body), (StatusCode::OK, json!({})));
    assert_eq!(emu.warehouse_state().await, "STOPPING");
    // A bad permission level changes nothing.
    let r = emu
        .admin(
            reqwest::Method::POST,
            &format!("/emulator/v1/warehouses/{WH}"),
            json!({"auto_resume": false, "permissions": {"x": "CAN_FLY"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body["message"].as_str().unwrap().contains("CAN_FLY"));
    let w = emu.get("service_principal", &format!("/api/2.0/sql/warehouses/{WH}")).await.body;
    assert_eq!(w["auto_resume"], true);
}

// ---------------------------------------------------------------------------
// Unity Catalog REST.

#[tokio::test]
async fn unity_catalog_lists_what_the_caller_may_see() {
    let emu = Emu::start().await;
    let all = emu.get("service_principal", "/api/2.1/unity-catalog/catalogs").await.body;
    let names: Vec<&str> = all["catalogs"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["main", "system"]);
    assert!(all.get("next_page_token").is_none());
    // Pagination: pages of one, then an empty last page.
    let mut token: Option<String> = None;
    let mut pages = Vec::new();
    loop {
        let q = match &token {
            Some(t) => format!("/api/2.1/unity-catalog/catalogs?max_results=1&page_token={t}"),
            None => "/api/2.1/unity-catalog/catalogs?max_results=1".into(),
        };
        let page = emu.get("service_principal", &q).await.body;
        pages.push(page["catalogs"].as_array().unwrap().len());
        match page["next_page_token"].as_str() {
            Some(t) if !t.is_empty() => token = Some(t.to_string()),
            _ => break,
        }
    }
    assert_eq!(pages, [1, 1, 0]);
    let r = emu.get("service_principal", "/api/2.1/unity-catalog/catalogs?max_results=-1").await;
    assert_eq!((r.status, r.body["error_code"].as_str()), (StatusCode::BAD_REQUEST, Some("INVALID_PARAMETER_VALUE")));

    let schemas = emu.get("service_principal", "/api/2.1/unity-catalog/schemas?catalog_name=main").await.body;
    let names: Vec<&str> = schemas["schemas"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["crm", "information_schema", "product"]);
    let r = emu.get("service_principal", "/api/2.1/unity-catalog/schemas?catalog_name=finance").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.body["message"], "User does not have USE CATALOG on Catalog 'finance'.");
    let r = emu.get("service_principal", "/api/2.1/unity-catalog/schemas?catalog_name=nope").await;
    assert_eq!((r.status, r.body["error_code"].as_str()), (StatusCode::NOT_FOUND, Some("CATALOG_DOES_NOT_EXIST")));

    let tables = emu.get("no_select", "/api/2.1/unity-catalog/tables?catalog_name=main&schema_name=crm").await.body;
    assert_eq!(tables["tables"].as_array().unwrap().len(), 2);
    let tables = emu.get("no_select", "/api/2.1/unity-catalog/tables?catalog_name=main&schema_name=product").await.body;
    assert_eq!(tables["tables"], json!([]));

    let t = emu.get("service_principal", "/api/2.1/unity-catalog/tables/main.product.events_v").await;
    assert_eq!(t.status, StatusCode::OK);
    assert_eq!(t.body["table_type"], "VIEW");
    insta::assert_json_snapshot!("uc_table_columns", t.body["columns"]);
    let r = emu.get("no_select", "/api/2.1/unity-catalog/tables/main.product.events_v").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = emu.get("service_principal", "/api/2.1/unity-catalog/tables/main.product.nope").await;
    assert_eq!((r.status, r.body["error_code"].as_str()), (StatusCode::NOT_FOUND, Some("TABLE_DOES_NOT_EXIST")));
    let r = emu.get("service_principal", "/api/2.1/unity-catalog/tables/main.product.nope/exists").await;
    assert_eq!(r.body, json!({"table_exists": false}));
}

#[tokio::test]
async fn effective_permissions_show_inheritance() {
    let emu = Emu::start().await;
    for kind in ["table", "TABLE"] {
        let r = emu.get("service_principal", &format!("/api/2.1/unity-catalog/effective-permissions/{kind}/main.product.events_v")).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let a = &r.body["privilege_assignments"];
        assert_eq!(a.as_array().unwrap().len(), 1);
        assert_eq!(a[0]["principal"], demo::SERVICE_PRINCIPAL);
        let privs = a[0]["privileges"].as_array().unwrap();
        assert!(privs.contains(&json!({"privilege": "USE_CATALOG", "inherited_from_type": "CATALOG", "inherited_from_name": "main"})));
        assert!(privs.contains(&json!({"privilege": "SELECT", "inherited_from_type": "SCHEMA", "inherited_from_name": "main.product"})));
    }
    let r = emu.get("service_principal", "/api/2.1/unity-catalog/effective-permissions/catalog/main?max_results=10").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = emu.get("service_principal", "/api/2.1/unity-catalog/effective-permissions/catalog/main?max_results=150").await;
    assert_eq!(r.status, StatusCode::OK);
    let r = emu.get("service_principal", "/api/2.1/unity-catalog/effective-permissions/catalog/main?principal=analyst@example.com").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = emu.get("service_principal", "/api/2.1/unity-catalog/effective-permissions/volume/main").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

// ---------------------------------------------------------------------------
// Admin API: data changes, grants, tokens, faults.

#[tokio::test]
async fn appended_rows_are_seen_through_the_view() {
    let emu = Emu::start().await;
    let path = format!("/emulator/v1/tables/{}/rows", demo::EVENTS_TABLE);
    let rows = json!({"rows": [
        {"event_id": "late-1", "event_name": "signed_in", "event_ts": "2020-01-01T00:00:00Z", "user_id": "u_1",
         "properties": {"k": "v"}, "ingested_at": "2030-01-01T00:00:00Z", "event_ts_local": "2020-01-01T01:00:00", "environment": "production"}
    ]});
    let r = emu.admin(reqwest::Method::POST, &path, rows).await;
    assert_eq!((r.status, r.body.clone()), (StatusCode::OK, json!({"appended": 1})));
    let got = emu
        .rows(
            "service_principal",
            "SELECT event_id, event_ts, properties FROM main.product.events_v WHERE ingested_at > TIMESTAMP'2029-01-01 00:00:00'",
        )
        .await;
    assert_eq!(got, vec![vec![json!("late-1"), json!("2020-01-01T00:00:00.000Z"), json!("{\"k\":\"v\"}")]]);
    // Bad rows are refused with the reason, and nothing is appended.
    let r = emu.admin(reqwest::Method::POST, &path, json!({"rows": [{"event_id": "x", "no_such_column": 1}]})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body["message"].as_str().unwrap().contains("no_such_column"), "{}", r.body);
    let r = emu.admin(reqwest::Method::POST, "/emulator/v1/tables/main.product.events_v/rows", json!({"rows": []})).await;
    assert!(r.body["message"].as_str().unwrap().contains("is a view"));
    let r = emu.admin(reqwest::Method::POST, &path, json!({"row": []})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // Deleting by a column's value (with an append, an update).
    let r = emu.admin(reqwest::Method::DELETE, &path, json!({"column": "event_id", "equals": "late-1"})).await;
    assert_eq!((r.status, r.body.clone()), (StatusCode::OK, json!({"deleted": 1})));
    let left = emu.rows("service_principal", "SELECT count(*) FROM main.product.events WHERE event_id = 'late-1'").await;
    assert_eq!(left, vec![vec![json!("0")]]);
    let r = emu.admin(reqwest::Method::DELETE, &path, json!({"column": "nope", "equals": "x"})).await;
    assert!(r.body["message"].as_str().unwrap().contains("no column `nope`"), "{}", r.body);
}

#[tokio::test]
async fn column_changes_break_views_as_databricks_does() {
    let emu = Emu::start().await;
    let path = format!("/emulator/v1/tables/{}/columns", demo::EVENTS_TABLE);
    let r = emu.admin(reqwest::Method::POST, &path, json!({"action": "add", "name": "country", "type": "STRING"})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let rows = emu.rows("service_principal", "SELECT count(country) FROM main.product.events").await;
    assert_eq!(rows[0][0], "0");
    let r = emu.admin(reqwest::Method::POST, &path, json!({"action": "rename", "from": "event_name", "to": "name"})).await;
    assert_eq!(r.status, StatusCode::OK);
    let s = emu.sql("service_principal", "SELECT * FROM main.product.events_v LIMIT 1").await;
    assert_eq!(s["status"]["state"], "FAILED");
    assert!(error_message(&s).contains("event_name"), "{s}");
    let r = emu.admin(reqwest::Method::POST, &path, json!({"action": "rename", "from": "name", "to": "event_name"})).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(emu.sql("service_principal", "SELECT * FROM main.product.events_v LIMIT 1").await["status"]["state"], "SUCCEEDED");
    let r = emu.admin(reqwest::Method::POST, &path, json!({"action": "drop", "name": "nope"})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = emu.admin(reqwest::Method::POST, &path, json!({"action": "explode"})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn grants_and_tokens_change_at_runtime() {
    let emu = Emu::start().await;
    let grant =
        json!({"principal": demo::SERVICE_PRINCIPAL, "securable_type": "schema", "full_name": "main.product", "privileges": ["SELECT"]});
    let r = emu.admin(reqwest::Method::DELETE, "/emulator/v1/grants", grant.clone()).await;
    assert_eq!(r.body["revoked"], 1);
    let s = emu.sql("service_principal", "SELECT 1 FROM main.product.events_v LIMIT 1").await;
    assert_eq!(s["status"]["sql_state"], "42501");
    emu.admin(reqwest::Method::POST, "/emulator/v1/grants", grant).await;
    let s = emu.sql("service_principal", "SELECT 1 FROM main.product.events_v LIMIT 1").await;
    assert_eq!(s["status"]["state"], "SUCCEEDED");
    let r = emu
        .admin(
            reqwest::Method::POST,
            "/emulator/v1/grants",
            json!({"principal": "nobody", "securable_type": "catalog", "full_name": "main", "privileges": ["SELECT"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    // Rotate: the old token stops working, the new one works.
    let old = emu.token("service_principal");
    let r = emu.admin(reqwest::Method::POST, &format!("/emulator/v1/tokens/{old}/rotate"), json!({})).await;
    let new = r.body["token"].as_str().unwrap().to_string();
    assert_eq!(emu.get(&format!("raw:{old}"), "/api/2.0/preview/scim/v2/Me").await.status, StatusCode::FORBIDDEN);
    assert_eq!(emu.get(&format!("raw:{new}"), "/api/2.0/preview/scim/v2/Me").await.status, StatusCode::OK);
    emu.admin(reqwest::Method::POST, &format!("/emulator/v1/tokens/{new}/expire"), json!({})).await;
    assert_eq!(emu.get(&format!("raw:{new}"), "/api/2.0/preview/scim/v2/Me").await.status, StatusCode::FORBIDDEN);
    let r =
        emu.admin(reqwest::Method::POST, "/emulator/v1/tokens", json!({"principal": demo::SERVICE_PRINCIPAL, "expires_in_secs": 60})).await;
    let t = r.body["token"].as_str().unwrap();
    assert_eq!(emu.get(&format!("raw:{t}"), "/api/2.0/preview/scim/v2/Me").await.status, StatusCode::OK);
}

#[tokio::test]
async fn faults_are_injected_as_configured() {
    let emu = Emu::start().await;
    let add = |rule: Value| emu.admin(reqwest::Method::POST, "/emulator/v1/faults", rule);
    assert_eq!(
        add(json!({"kind": "status", "status": 429, "retry_after_secs": 2, "path_prefix": "/api/2.0/sql/statements", "times": 1}))
            .await
            .status,
        StatusCode::OK
    );
    let r = emu.post("service_principal", "/api/2.0/sql/statements", json!({"statement": "SELECT 1", "warehouse_id": WH})).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers["retry-after"], "2");
    assert_eq!(r.body["error_code"], "REQUEST_LIMIT_EXCEEDED");
    assert_eq!(emu.sql("service_principal", "SELECT 1").await["status"]["state"], "SUCCEEDED");

    add(json!({"kind": "status", "status": 503, "method": "GET", "times": 1})).await;
    let r = emu.get("service_principal", "/api/2.0/preview/scim/v2/Me").await;
    assert_eq!((r.status, r.body["error_code"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("TEMPORARILY_UNAVAILABLE")));
    add(json!({"kind": "status", "status": 500, "times": 1})).await;
    assert_eq!(emu.get("service_principal", "/api/2.0/preview/scim/v2/Me").await.status, StatusCode::INTERNAL_SERVER_ERROR);

    add(json!({"kind": "latency", "ms": 300, "times": 1})).await;
    let t = Instant::now();
    emu.get("service_principal", "/api/2.0/preview/scim/v2/Me").await;
    assert!(t.elapsed() >= Duration::from_millis(300));

    add(
        json!({"kind": "fail_statement", "contains": "events_v", "error_class": "DELTA_TABLE_NOT_FOUND", "sql_state": "42P01", "times": 1}),
    )
    .await;
    let s = emu.sql("service_principal", "SELECT count(*) FROM main.product.events_v").await;
    assert_eq!(s["status"]["sql_state"], "42P01");
    assert!(error_message(&s).starts_with("[DELTA_TABLE_NOT_FOUND]"));

    // A connection reset in the middle of a download.
    let s = emu
        .sql_with(
            "service_principal",
            json!({"statement": "SELECT * FROM main.product.events", "disposition": "EXTERNAL_LINKS", "format": "ARROW_STREAM"}),
        )
        .await;
    add(json!({"kind": "reset_body", "after_bytes": 1000, "path_prefix": "/emulator/files", "times": 1})).await;
    let url = s["result"]["external_links"][0]["external_link"].as_str().unwrap();
    let body = match emu.http.get(url).send().await {
        Ok(resp) => resp.bytes().await.map(|b| b.len()),
        Err(e) => Err(e),
    };
    assert!(body.is_err(), "the body must fail part-way: {body:?}");
    // Links born expired.
    add(json!({"kind": "expire_links", "times": 1})).await;
    let id = s["statement_id"].as_str().unwrap();
    let r = emu.get("service_principal", &format!("/api/2.0/sql/statements/{id}/result/chunks/0")).await;
    let resp = emu.http.get(r.body["external_links"][0]["external_link"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let r = emu.get("service_principal", &format!("/api/2.0/sql/statements/{id}/result/chunks/0")).await;
    assert_eq!(
        download(&emu.http, &r.body["external_links"][0]).await.len() as u64,
        r.body["external_links"][0]["byte_count"].as_u64().unwrap()
    );

    let faults = emu.get("admin", "/emulator/v1/faults").await.body;
    assert_eq!(faults["faults"], json!([]));
    let r = add(json!({"kind": "status", "stauts": 500})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let c = emu.get("admin", "/emulator/v1/counters").await.body;
    assert!(c["faults_injected"].as_u64().unwrap() >= 7, "{c}");
}

#[tokio::test]
async fn query_tags_are_recorded() {
    let emu = Emu::start().await;
    let tags = json!([{"key": "app", "value": "trig"}, {"key": "pipeline", "value": "events"}, {"key": "flag"}]);
    emu.sql_with("service_principal", json!({"statement": "SELECT 1", "query_tags": tags})).await;
    let h = emu.get("admin", "/emulator/v1/statements").await.body;
    let s = &h["statements"][0];
    assert_eq!(
        s["query_tags"],
        json!([{"key": "app", "value": "trig"}, {"key": "pipeline", "value": "events"}, {"key": "flag", "value": null}])
    );
    assert_eq!(s["principal"], demo::SERVICE_PRINCIPAL);
}

// ---------------------------------------------------------------------------
// Fixtures from files.

#[tokio::test]
async fn fixtures_load_csv_ndjson_and_parquet() {
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};
    let dir = std::env::temp_dir().join(format!("emu-fixture-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("orgs.csv"), "organisation_id,name\no1,Acme\no2,\"Globex, Inc\"\n").unwrap();
    std::fs::write(dir.join("people.ndjson"), "{\"user_id\":\"u1\",\"signup_date\":\"2024-01-02\"}\n{\"user_id\":\"u2\"}\n").unwrap();
    let schema = std::sync::Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false), Field::new("name", DataType::Utf8, true)]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            std::sync::Arc::new(Int64Array::from(vec![1, 2, 3])),
            std::sync::Arc::new(StringArray::from(vec![Some("a"), None, Some("c")])),
        ],
    )
    .unwrap();
    let mut w =
        datafusion::parquet::arrow::ArrowWriter::try_new(std::fs::File::create(dir.join("t.parquet")).unwrap(), schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let text = r#"
        [[warehouses]]
        id = "00112233445566ff"
        name = "wh"
        state = "RUNNING"
        permissions = { "sp" = "CAN_USE" }
        [[principals]]
        user_name = "sp"
        kind = "service_principal"
        [[tokens]]
        name = "sp"
        principal = "sp"
        value = "dapi-fixture-token"
        [[catalogs]]
        name = "lake"
        [[catalogs.schemas]]
        name = "raw"
        [[catalogs.schemas.tables]]
        name = "orgs"
        csv = "orgs.csv"
        columns = [{ name = "organisation_id", type = "STRING" }, { name = "name", type = "STRING" }]
        [[catalogs.schemas.tables]]
        name = "people"
        ndjson = "people.ndjson"
        columns = [{ name = "user_id", type = "STRING" }, { name = "signup_date", type = "DATE" }]
        [[catalogs.schemas.tables]]
        name = "t"
        parquet = "t.parquet"
        [[grants]]
        principal = "sp"
        securable_type = "catalog"
        full_name = "lake"
        privileges = ["ALL_PRIVILEGES"]
    "#;
    std::fs::write(dir.join("ws.toml"), text).unwrap();
    let (fixture, base) = databricks_emulator::fixture::Fixture::from_path(&dir.join("ws.toml")).unwrap();
    let loaded = fixture.load(&base).await.unwrap();
    let run = databricks_emulator::start(loaded.workspace, EmulatorConfig::default(), "127.0.0.1:0").await.unwrap();
    let http = reqwest::Client::new();
    let q = |sql: &str| {
        let body = json!({"statement": sql, "warehouse_id": "00112233445566ff", "wait_timeout": "30s"});
        http.post(format!("{}/api/2.0/sql/statements", run.base_url())).bearer_auth("dapi-fixture-token").json(&body).send()
    };
    let s: Value = q("SELECT name FROM lake.raw.orgs ORDER BY organisation_id").await.unwrap().json().await.unwrap();
    assert_eq!(s["result"]["data_array"], json!([["Acme"], ["Globex, Inc"]]), "{s}");
    let s: Value = q("SELECT user_id, signup_date FROM lake.raw.people ORDER BY user_id").await.unwrap().json().await.unwrap();
    assert_eq!(s["result"]["data_array"], json!([["u1", "2024-01-02"], ["u2", null]]));
    let s: Value = q("SELECT sum(id), count(name) FROM lake.raw.t").await.unwrap().json().await.unwrap();
    assert_eq!(s["result"]["data_array"], json!([["6", "2"]]));
    run.shutdown().await;

    // A fixture with a typo names it.
    std::fs::write(dir.join("bad.toml"), "[[catalogs]]\nname = \"x\"\ncomment = 1\n").unwrap();
    let e = databricks_emulator::fixture::Fixture::from_path(&dir.join("bad.toml")).unwrap_err().to_string();
    assert!(e.contains("bad.toml") && e.contains("comment"), "{e}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn the_demo_dataset_has_the_awkward_rows() {
    let emu =
        Emu::start_with(EmulatorConfig::default(), DemoOptions { events: 20_000, start_delay_ms: Some(10), ..Default::default() }).await;
    let r = emu
        .rows(
            "service_principal",
            "SELECT count(*), count(DISTINCT e.event_id), count(*) - count(e.event_id), \
                    sum(CASE WHEN e.event_ts > current_timestamp() THEN 1 ELSE 0 END), \
                    sum(CASE WHEN e.ingested_at > e.event_ts + INTERVAL 2 HOURS THEN 1 ELSE 0 END), \
                    sum(CASE WHEN p.user_id IS NULL THEN 1 ELSE 0 END) \
             FROM main.product.events e LEFT JOIN (SELECT user_id FROM main.crm.people) p ON e.user_id = p.user_id",
        )
        .await;
    let n: Vec<u64> = r[0].iter().map(|v| v.as_str().unwrap().parse().unwrap()).collect();
    assert_eq!(n[0], 20_000);
    assert!(n[1] < n[0] - n[2], "duplicates exist: {n:?}");
    assert!(n[2] > 0, "null ids exist: {n:?}");
    assert!(n[3] > 0, "future timestamps exist: {n:?}");
    assert!(n[4] > 0, "late arrivals exist: {n:?}");
    assert!(n[5] > 0, "unknown users exist: {n:?}");
    let people = emu.rows("service_principal", "SELECT count(*), count(DISTINCT organisation_id) FROM main.crm.people").await;
    assert!(people[0][0].as_str().unwrap().parse::<u64>().unwrap() > 0);
    // The same seed gives the same rows.
    let first_ids = "SELECT event_id, event_name, user_id FROM main.product.events ORDER BY event_id LIMIT 100";
    let a = emu.rows("service_principal", first_ids).await;
    let other =
        Emu::start_with(EmulatorConfig::default(), DemoOptions { events: 20_000, start_delay_ms: Some(10), ..Default::default() }).await;
    let b = other.rows("service_principal", first_ids).await;
    assert_eq!(a, b);
}

//! The pages in a real Chromium, against a real server, store and emulator:
//! the customer admin connects, tests and meets an expired token; script and
//! markup typed into fields come back inert; an admin cannot reach the
//! mapping editor or another tenant; a representative maps an events table
//! with a preview, saves, syncs now and sees the run's figures. A screenshot
//! of each step goes to `target/tmp/screenshots/`.

use std::time::{Duration, Instant};

use databricks_emulator::demo::{self, DemoOptions};

use super::webdriver::{Browser, available};
use super::{start, token};

const XSS: &str = r#"<script>document.title='owned'</script><img src=x onerror="document.title='owned'">"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_connects_and_a_representative_maps_and_syncs_in_a_real_browser() {
    if !available() {
        return;
    }
    let loaded =
        demo::workspace(&DemoOptions { events: 300, start_delay_ms: Some(50), running: true, ..Default::default() }).await.unwrap();
    let emu = databricks_emulator::start(loaded.workspace, Default::default(), "127.0.0.1:0").await.unwrap();
    let s = start("pages-browser").await;
    let admin = token(s.store.as_ref(), "acme", "admin").await;
    let rep = token(s.store.as_ref(), "trig", "representative").await;
    // Another tenant with a pipeline of its own: the admin of acme must never reach it.
    token(s.store.as_ref(), "globex", "admin").await;

    let shots = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    let b = Browser::start(shots).await;
    let home = format!("{}/settings/integrations/databricks", s.base);

    // Sign in as the customer's admin.
    b.goto(&home).await;
    assert!(b.text().await.contains("Sign in to Trig"));
    b.fill("API token", &admin).await;
    b.screenshot("01-sign-in").await;
    b.press("Sign in").await;
    assert_eq!(b.url().await, home);
    let text = b.text().await;
    assert!(text.contains("Connect Databricks") && text.contains("Customer admin"), "{text}");
    b.screenshot("02-connect-form").await;

    // Connect with the service principal: the URL pasted from the address bar (path, ?o=, trailing slash).
    b.fill("Workspace URL", &format!("{}/?o=1234567890123456", emu.base_url())).await;
    b.fill("HTTP path", &format!("/sql/1.0/warehouses/{}", demo::WAREHOUSE_ID)).await;
    b.fill("Access token", &loaded.tokens["service_principal"]).await;
    b.fill("Default catalog", "main").await;
    b.click_on("summary", "Workspace on a private address").await;
    b.fill("Private hosts", &emu.addr().to_string()).await;
    b.press("Test connection").await;
    let text = b.text().await;
    assert!(text.contains("Connection OK"), "{text}");
    let mut catalogs = Vec::new();
    for li in b.find_all("ul.catalogs li").await {
        catalogs.push(b.text_of(&li).await);
    }
    assert!(catalogs.contains(&"main".to_string()), "the catalogs are listed: {catalogs:?}");
    assert!(!b.source().await.contains(&loaded.tokens["service_principal"]), "the typed token is not sent back in clear");
    b.screenshot("03-connection-ok").await;
    b.press("Save").await;
    let text = b.text().await;
    assert!(text.contains("Saved.") && text.contains("A token is set on"), "{text}");
    b.screenshot("04-saved").await;

    // An expired token: the test says so, with the fix.
    b.fill("Access token", &loaded.tokens["expired"]).await;
    b.press("Test connection").await;
    let text = b.text().await;
    assert!(text.contains("Connection test failed"), "{text}");
    // Databricks answers an expired token as an invalid one; the fix names both.
    assert!(text.contains("Authentication failed: the access token was refused"), "{text}");
    assert!(text.contains("What to do: Create a new token") && text.contains("Tokens expire"), "{text}");
    b.screenshot("05-expired-token").await;

    // Script and markup typed into fields come back as text.
    b.goto(&format!("{home}?new=1")).await;
    b.fill("Connection name", XSS).await;
    b.fill("Workspace URL", XSS).await;
    b.fill("HTTP path", XSS).await;
    b.fill("Default catalog", XSS).await;
    b.press("Save").await;
    let text = b.text().await;
    assert!(text.contains("Connection name:"), "the name's problem is named: {text}");
    assert!(b.find_all("script").await.is_empty() && b.find_all("img").await.is_empty(), "nothing typed became markup");
    let title = b.title().await;
    assert_ne!(title, "owned");
    let name = b.by_label("Connection name").await;
    assert_eq!(b.attr(&name, "value").await.as_deref(), Some(XSS), "the field holds what was typed, as text");
    b.screenshot("06-markup-is-inert").await;

    // The admin cannot reach the mapping editor nor another tenant.
    b.goto(&format!("{home}/pipelines/product_events/mapping")).await;
    assert!(b.text().await.contains("Only a Trig representative can open this"));
    b.screenshot("07-admin-forbidden").await;
    b.goto(&format!("{}/tenants", s.base)).await;
    assert!(b.text().await.contains("Only a Trig representative can open this"));
    b.goto(&home).await;
    b.press("Sign out").await;
    assert!(b.text().await.contains("You are signed out"));

    // The representative: choose the tenant, map an events table, preview, save, sync now.
    b.fill("API token", &rep).await;
    b.press("Sign in").await;
    b.goto(&format!("{}/tenants", s.base)).await;
    b.choose("Tenant", "acme").await;
    b.press("Open").await;
    let text = b.text().await;
    assert!(text.contains("Trig representative") && text.contains("acme"), "{text}");
    b.fill("New pipeline name", "product_events").await;
    b.choose("Kind", "events").await;
    b.press("Map a table").await;
    assert!(b.url().await.ends_with("/pipelines/product_events/mapping?kind=events"));
    b.choose("Catalog", "main").await;
    b.press("Browse").await;
    b.choose("Schema", "product").await;
    b.press("Browse").await;
    b.choose("Table or view", "events_v").await;
    b.press("Browse").await;
    let text = b.text().await;
    assert!(text.contains("Columns of main.product.events_v") && text.contains("event_ts"), "{text}");
    for (label, column) in [
        ("Event ID column", "event_id"),
        ("Event name column", "event_name"),
        ("Timestamp column", "event_ts"),
        ("User ID column", "user_id"),
        ("Email column", "email"),
        ("Property columns", "plan, platform"),
    ] {
        b.fill(&format!("{label}{}", if label == "Email column" || label == "Property columns" { "" } else { " (required)" }), column)
            .await;
    }
    b.press("Preview").await;
    let text = b.text().await;
    assert!(text.contains("Preview") && text.contains("events_v"), "{text}");
    let rows = b.find_all("table.preview tbody tr").await.len();
    assert!((1..=20).contains(&rows), "the first rows, at most 20: {rows}");
    b.screenshot("08-mapping-preview").await;
    b.press("Save").await;
    assert!(b.text().await.contains("Saved."));
    b.press("Sync now").await;
    assert!(b.text().await.contains("Sync requested"));
    b.screenshot("09-sync-requested").await;

    // The runs' figures appear on the pipeline's page: the first run (the
    // backfill, started by Save) reads the table, then the one asked for.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        b.goto(&format!("{home}/pipelines/product_events")).await;
        let mut read = Vec::new();
        for el in b.find_all(".timeline .run-succeeded .counts").await {
            read.push(b.text_of(&el).await.split(' ').next().unwrap_or("").parse::<u64>().unwrap_or(0));
        }
        if read.len() >= 2 && read.iter().any(|n| *n > 0) {
            break;
        }
        assert!(Instant::now() < deadline, "no run's figures within a minute: {}", b.text().await);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(b.source().await.contains("rows read in all"), "the chart says what it shows in words");
    assert!(b.find_all("svg.chart rect").await.len() >= 2, "the chart draws the runs");
    b.screenshot("10-pipeline-history").await;
    b.goto(&home).await;
    b.screenshot("11-settings-with-pipeline").await;

    // Markup typed into the pipeline's name and every mapping field comes back as text too.
    b.fill("New pipeline name", XSS).await;
    b.press("Map a table").await;
    assert!(b.text().await.contains("New pipeline name:"), "the name's problem is named: {}", b.text().await);
    assert!(b.find_all("script").await.is_empty() && b.find_all("img").await.is_empty());
    b.goto(&format!("{home}/pipelines/probe/mapping?kind=events")).await;
    let fields = b.find_all("input[id^='f-']").await;
    assert!(fields.len() >= 10, "every field of an events pipeline: {}", fields.len());
    for f in &fields {
        b.clear(f).await;
        b.type_into(f, XSS).await;
    }
    b.press("Save").await;
    assert!(b.find_all("script").await.is_empty() && b.find_all("img").await.is_empty(), "nothing typed became markup");
    assert_ne!(b.title().await, "owned");
    let fields = b.find_all("input[id^='f-']").await;
    for f in &fields {
        assert_eq!(b.attr(f, "value").await.as_deref(), Some(XSS), "each field holds what was typed, as text");
    }
    assert!(b.text().await.contains("Nothing was saved") || b.find_all("[aria-invalid='true']").await.len() >= 3, "{}", b.text().await);
    assert!(!b.text().await.contains("WHERE: where:"), "a message does not repeat its field's name");
    b.screenshot("12-mapping-markup-is-inert").await;
    emu.shutdown().await;
}

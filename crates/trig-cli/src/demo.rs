//! `trig-databricks demo`: the whole product on a fresh machine, no account.
//!
//! Starts the emulator in-process with the demo dataset, writes a working
//! config next to the database, runs Test connection, syncs organisations,
//! people and events, appends live events (new, late, duplicated, for
//! unknown users, broken), syncs again and reports what happened.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use databricks::check::{CheckInput, TableCheck, test_connection};
use databricks_emulator::{EmulatorConfig, demo as emu_demo};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use trig_config::Config;
use trig_store::{Store, SyncRun};
use trig_sync::{Engine, EngineOptions, Trigger};

use crate::sync::{describe, exit_code};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Folder for trig-demo.toml, trig-demo.token and trig-demo.db (a previous demo's files there are replaced).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Events in the demo dataset.
    #[arg(long, default_value_t = 100_000)]
    events: u64,
    /// Keep the local workspace serving after the report (until Ctrl-C), so
    /// `sync`, `runs` and `export` can be tried with the config the demo wrote,
    /// and serve the pages (Settings → Integrations → Databricks) on `--addr`,
    /// printing a login link for a customer admin and one for a Trig representative.
    #[arg(long)]
    serve: bool,
    /// Where `--serve` serves the pages and the API.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
}

const DB: &str = "trig-demo.db";
const CONFIG: &str = "trig-demo.toml";
const TOKEN: &str = "trig-demo.token";
const SETTLE: std::time::Duration = std::time::Duration::from_secs(1);

/// The demo's config: every pipeline kind against the emulator (the parts
/// come from `trig_config::demo`, which the tests and benches use too).
pub fn config_text(workspace_url: &str, host: &str) -> String {
    use trig_config::demo;
    let header = format!(
        "# Written by `trig-databricks demo`. The workspace is the local emulator the\n\
         # demo ran in-process; it stopped when the demo ended (`demo --serve` keeps it\n\
         # up). To sync again, start one (`trig-databricks emulator --demo --addr {host}`),\n\
         # put its tokens.service_principal in {TOKEN}, and run e.g.\n\
         # `trig-databricks sync demo_events --config {CONFIG}`.\n\n"
    );
    let updated = "updated_at = \"updated_at\"\nschedule = \"24h\"\n";
    header
        + &demo::store(&format!("sqlite://{DB}"))
        + &demo::connection("demo", workspace_url, emu_demo::WAREHOUSE_ID, host, TOKEN)
        + &demo::organisations("demo_organisations", "demo")
        + updated
        + &demo::people("demo_people", "demo")
        + updated
        + &demo::events("demo_events", "demo")
        + "user_id_kind = \"external_id\"\nproperties_column = \"properties\"\ntimezone = \"UTC\"\n\
           # An ingestion-time cursor: rows that arrive hours late are still read.\n\
           cursor = \"ingested_at\"\nschedule = \"15m\"\n"
}

fn remove_previous(dir: &Path) -> anyhow::Result<()> {
    for f in [DB, "trig-demo.db-wal", "trig-demo.db-shm", "trig-demo.db.key", CONFIG, TOKEN] {
        match std::fs::remove_file(dir.join(f)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot replace {}", dir.join(f).display())),
        }
    }
    Ok(())
}

fn write_secret(path: &Path, value: &str) -> anyhow::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(value.as_bytes())?;
    Ok(())
}

/// Live rows for the second sync, stamped after the first sync's watermark
/// `since` (and ingested by `until`): new, late, duplicated, for unknown
/// people (with and without an email), and broken.
fn live_rows(since: chrono::DateTime<chrono::Utc>, until: chrono::DateTime<chrono::Utc>) -> Vec<Value> {
    let span = (until - since).num_microseconds().unwrap_or(1).max(1);
    let at = |i: i64| (since + chrono::Duration::microseconds(1 + (i * 7919) % span)).to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let hours_ago = |h: i64, i: i64| {
        (until - chrono::Duration::hours(h) - chrono::Duration::minutes(i)).to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    };
    let mut rows = Vec::new();
    let mut row = |id: String, name: Option<&str>, ts: String, user: String, email: Option<String>, ingested: String| {
        rows.push(json!({
            "event_id": id, "event_name": name, "event_ts": ts, "user_id": user, "email": email,
            "plan": "growth", "platform": "web", "properties": {"page": "/app/live"},
            "ingested_at": ingested, "event_ts_local": null, "environment": "production",
        }));
    };
    for i in 0..200 {
        row(format!("live_{i:04}"), Some("feature_used"), at(i), format!("u_{:06}", i % 50), None, at(i));
    }
    // Late: they happened six hours ago and reached the warehouse only now.
    for i in 0..40 {
        row(format!("late_{i:04}"), Some("report_exported"), hours_ago(6, i), format!("u_{:06}", 100 + i), None, at(i));
    }
    // Duplicates of new events.
    for i in 0..25 {
        row(format!("live_{i:04}"), Some("feature_used"), at(i), format!("u_{:06}", i % 50), None, at(i));
    }
    // Unknown users: without an email they are parked, with one they create the person.
    for i in 0..30 {
        row(format!("anon_{i:04}"), Some("signed_in"), at(i), format!("u_9{i:05}"), None, at(i));
    }
    for i in 0..10 {
        row(format!("new_{i:04}"), Some("signed_in"), at(i), format!("u_8{i:05}"), Some(format!("new.person{i}@example.org")), at(i));
    }
    // Broken: no event name.
    for i in 0..5 {
        row(format!("bad_{i:04}"), None, at(i), "u_000001".into(), None, at(i));
    }
    rows
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let started = std::time::Instant::now();
    // Refused before any work, as every bad flag is.
    let addr: std::net::SocketAddr = match args.addr.parse() {
        Ok(a) => a,
        Err(_) => {
            let p = crate::problem::Problem::new("--addr", format!("`{}` is not HOST:PORT, e.g. 127.0.0.1:8080", args.addr));
            return Ok(crate::problem::user(false, &[p]));
        }
    };
    // A port already taken is said before the demo's work, not after it.
    if args.serve
        && let Err(e) = std::net::TcpListener::bind(addr)
    {
        return Ok(port_taken(addr, &e));
    }
    std::fs::create_dir_all(&args.dir).with_context(|| format!("cannot create {}", args.dir.display()))?;
    let dir = args.dir.canonicalize()?;
    remove_previous(&dir)?;
    let mut out = std::io::stdout().lock();

    writeln!(out, "Starting a local Databricks workspace with {} demo events…", args.events)?;
    let options = emu_demo::DemoOptions { events: args.events, ..Default::default() };
    let loaded = emu_demo::workspace(&options).await.context("cannot build the demo workspace")?;
    let token = loaded.tokens["service_principal"].clone();
    let emulator = databricks_emulator::start(loaded.workspace, EmulatorConfig::default(), "127.0.0.1:0").await?;
    let host = emulator.addr().to_string();

    let config_path = dir.join(CONFIG);
    write_secret(&dir.join(TOKEN), &token)?;
    std::fs::write(&config_path, config_text(&emulator.base_url(), &host))?;
    let config = Config::load(&config_path).map_err(|e| anyhow::anyhow!("the demo wrote a bad config (a bug): {e}"))?;

    writeln!(out, "\nTest connection ({}):", config_path.display())?;
    let conn = config.connection("demo").map_err(anyhow::Error::msg)?;
    let input = CheckInput {
        workspace_url: conn.workspace.base(),
        http_path: conn.http_path(),
        credentials: conn.credentials().map_err(|e| anyhow::anyhow!("{}: {}", e.key, e.message))?,
        default_catalog: conn.default_catalog.clone(),
        allow_hosts: conn.allow_hosts.entries(),
        tables: config
            .pipelines_of("demo")
            .map(|p| TableCheck { pipeline: p.name.clone(), source: p.source.quoted(), columns: p.columns() })
            .collect(),
    };
    let report = test_connection(&input).await;
    write!(out, "{}", report.render())?;
    if !report.ok {
        writeln!(out, "The demo's own connection failed its test; this is a bug.")?;
        return Ok(ExitCode::FAILURE);
    }

    let store: Arc<dyn Store> =
        Arc::from(trig_store::open(&config.resolve_store_url().map_err(|e| anyhow::anyhow!("{}: {}", e.key, e.message))?)?);
    // A short settle so the second sync, a few seconds later, sees the live
    // rows; the product waits a minute for rows still being written.
    let engine = Engine::new(config.clone(), store.clone(), EngineOptions { settle: SETTLE, ..EngineOptions::default() });
    let cancel = CancellationToken::new();
    let mut runs: Vec<SyncRun> = Vec::new();

    writeln!(out, "\nFirst sync (a backfill):")?;
    for name in trig_sync::ordered_pipelines(&config) {
        let f = engine.run(&name, Trigger::Schedule, &cancel).await?;
        write!(out, "{}", describe(&f.run))?;
        if let Some(e) = f.error {
            writeln!(out, "error: {e}")?;
            return Ok(exit_code(e.class()));
        }
        runs.push(f.run);
    }

    // The live rows land after the first sync's watermark, as new rows do.
    let since = chrono::Utc::now() - SETTLE;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let live = live_rows(since, chrono::Utc::now() - SETTLE - std::time::Duration::from_millis(100));
    emulator.emulator().append_rows(emu_demo::EVENTS_TABLE, &live).await.map_err(anyhow::Error::msg)?;
    writeln!(
        out,
        "\nAppended {} live events to {}: 200 new, 40 that happened six hours ago, 25 duplicates, 30 for unknown users, 10 for new people with an email, 5 without a name.",
        live.len(),
        emu_demo::EVENTS_TABLE
    )?;
    writeln!(out, "Second sync (incremental):")?;
    let f = engine.run("demo_events", Trigger::Schedule, &cancel).await?;
    write!(out, "{}", describe(&f.run))?;
    if let Some(e) = f.error {
        writeln!(out, "error: {e}")?;
        return Ok(exit_code(e.class()));
    }
    runs.push(f.run);

    let t = store.totals(store.tenant(config.tenant.as_str()).await?).await?;
    let sum = |f: fn(&SyncRun) -> u64| runs.iter().map(f).sum::<u64>();
    writeln!(out, "\nReport")?;
    writeln!(out, "  organisations  {}", t.organisations)?;
    writeln!(out, "  people         {}", t.people)?;
    writeln!(out, "  events         {} ({} backfilled, {} live)", t.events, t.backfilled_events, t.events - t.backfilled_events)?;
    writeln!(out, "  runs           {}", t.runs)?;
    writeln!(out, "  deduplicated   {}", sum(|r| r.counts.deduplicated))?;
    writeln!(out, "  late           {}", sum(|r| r.counts.late))?;
    writeln!(out, "  parked         {} (waiting for their person; dropped after 7 days)", t.parked)?;
    writeln!(out, "  quarantined    {} (see `trig-databricks export quarantine --config {CONFIG}`)", t.quarantined)?;
    let counters = emulator.emulator().counters_json();
    if let Some(w) = counters.get("warehouses").and_then(|w| w.get(emu_demo::WAREHOUSE_ID)) {
        writeln!(out, "  warehouse      {}", w)?;
    }
    writeln!(out, "\nConfig:   {}", config_path.display())?;
    writeln!(out, "Database: {}", dir.join(DB).display())?;
    writeln!(out, "Try: trig-databricks runs --config {}", config_path.display())?;
    writeln!(out, "     trig-databricks export events --config {} | head", config_path.display())?;
    writeln!(out, "Done in {:.1}s.", started.elapsed().as_secs_f64())?;
    if args.serve {
        drop(out);
        let code = serve_pages(&config, store, addr, &emulator.base_url()).await?;
        emulator.shutdown().await;
        return Ok(code);
    } else {
        writeln!(out, "The local workspace stopped with the demo; `--serve` keeps it running for `sync`.")?;
    }
    emulator.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// `--serve`: the service on the demo's store (its scheduler, the API, the
/// pages) with a customer admin of the config's tenant and a Trig
/// representative, each given a one-time login link; until Ctrl-C.
async fn serve_pages(config: &Config, store: Arc<dyn Store>, addr: std::net::SocketAddr, workspace: &str) -> anyhow::Result<ExitCode> {
    use trig_server::auth::{Role, new_token, token_hash};
    let url = config.resolve_store_url().map_err(|e| anyhow::anyhow!("{}: {}", e.key, e.message))?;
    let keys = match crate::serve::keyring(config, &url) {
        Ok(k) => k,
        Err(code) => return Ok(code),
    };
    // The demo synced every pipeline a moment ago: each is next due a schedule from now
    // (Sync now on a pipeline's page runs one at once).
    let now = chrono::Utc::now().timestamp_micros();
    let next = |name: &str| now + config.pipelines.get(name).map_or(0, |p| p.schedule.as_micros() as i64);
    crate::serve::load_file(store.as_ref(), config, &next).await?;
    let customer = store.tenant_info(config.tenant.as_str()).await?.context("the config's tenant was just made")?;
    let trig = match store.tenant_info("trig").await? {
        Some(t) => t,
        None => store.create_tenant(&trig_store::TenantName::parse("trig").map_err(anyhow::Error::msg)?, Some("Trig")).await?,
    };
    let mut links = Vec::new();
    for (t, role, who) in [(&customer, Role::Admin, "a customer admin"), (&trig, Role::Representative, "a Trig representative")] {
        let made = store.create_token(t.id, role.as_str(), &token_hash(&new_token()?), "demo --serve").await?;
        links.push((who, t.name.clone(), trig_server::pages::session::login_link(store.as_ref(), made.id, now).await?));
    }
    let scheduler = crate::serve::scheduler_options(
        "trig-databricks demo --serve",
        std::time::Duration::from_secs(1),
        EngineOptions::default().lease_ttl,
    );
    let options = trig_server::ServeOptions { addr, scheduler: Some(scheduler), ..Default::default() };
    let server = match trig_server::Server::bind(store, keys, Some(Arc::new(config.clone())), options).await {
        Ok(s) => s,
        Err(e) => return Ok(port_taken(addr, &e)),
    };
    let base = format!("http://{}", server.local_addr()?);
    let mut out = std::io::stdout().lock();
    writeln!(out, "\nThe pages: {base}/settings/integrations/databricks. Sign in with a link (each works once, within a day):")?;
    for (who, tenant, path) in &links {
        writeln!(out, "  as {who} (tenant {tenant}): {base}{path}")?;
    }
    let c = config.path.display();
    writeln!(
        out,
        "More links: `trig-databricks tokens list --config {c}`, then `trig-databricks tokens link ID --url {base} --config {c}`."
    )?;
    writeln!(out, "\nThe local workspace keeps serving at {workspace} and the pages at {base} (Ctrl-C stops both). In another terminal:")?;
    writeln!(out, "     trig-databricks sync demo_events --config {}", config.path.display())?;
    out.flush()?;
    drop(out);
    let stop = CancellationToken::new();
    let serving = tokio::spawn(server.run(stop.clone()));
    crate::serve::shutdown_signal().await;
    stop.cancel();
    serving.await??;
    Ok(ExitCode::SUCCESS)
}

fn port_taken(addr: std::net::SocketAddr, e: &std::io::Error) -> ExitCode {
    let p = crate::problem::Problem::new("--addr", format!("cannot listen on {addr}: {e}"))
        .hint("another program has the port; choose another, e.g. --addr 127.0.0.1:8081");
    crate::problem::report(false, &[p], ExitCode::from(2))
}

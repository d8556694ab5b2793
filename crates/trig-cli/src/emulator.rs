//! `trig-databricks emulator`: serves the demo workspace or a fixture until
//! interrupted, after printing one JSON line that says how to reach it.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use databricks_emulator::{EmulatorConfig, demo, fixture::Fixture};
use serde_json::json;

#[derive(Debug, clap::Args)]
#[command(group = clap::ArgGroup::new("source").required(true).args(["demo", "fixture"]))]
pub struct Args {
    /// Serve the demo workspace (main.product.events, main.crm.people, ...).
    #[arg(long)]
    demo: bool,
    /// Serve the workspace a TOML fixture declares.
    #[arg(long, value_name = "FILE")]
    fixture: Option<PathBuf>,
    /// Number of demo events to generate.
    #[arg(long, default_value_t = 100_000, requires = "demo")]
    events: u64,
    /// Seed of the demo dataset (same seed, same rows).
    #[arg(long, default_value_t = 7, requires = "demo")]
    seed: u64,
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8765", value_name = "HOST:PORT")]
    addr: String,
    /// How long the demo warehouse takes to start, in milliseconds.
    #[arg(long, value_name = "MS", requires = "demo")]
    start_delay_ms: Option<u64>,
    /// How long an external link stays valid, in seconds.
    #[arg(long, default_value_t = 900, value_name = "SECS")]
    link_ttl_secs: u64,
    /// How long a finished statement's result can be fetched, in seconds.
    #[arg(long, default_value_t = 3600, value_name = "SECS")]
    result_ttl_secs: u64,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let loaded = if args.demo {
        let options = demo::DemoOptions { events: args.events, seed: args.seed, start_delay_ms: args.start_delay_ms, running: false };
        demo::workspace(&options).await.context("cannot build the demo workspace")?
    } else {
        let path = args.fixture.as_deref().context("--fixture FILE or --demo is required")?;
        let (fixture, base) = Fixture::from_path(path)?;
        fixture.load(&base).await?
    };
    let config = EmulatorConfig {
        link_ttl: Duration::from_secs(args.link_ttl_secs),
        result_ttl: Duration::from_secs(args.result_ttl_secs),
        ..EmulatorConfig::default()
    };
    let warehouse_id = loaded.workspace.warehouses.keys().next().cloned().unwrap_or_default();
    let running = databricks_emulator::start(loaded.workspace, config, &args.addr).await?;
    let mut line = json!({
        "workspace_url": running.base_url(),
        "http_path": format!("/sql/1.0/warehouses/{warehouse_id}"),
        "warehouse_id": warehouse_id,
        "admin_token": running.admin_token(),
        "tokens": loaded.tokens,
        "startup_ms": started.elapsed().as_millis() as u64,
    });
    if args.demo {
        line["tables"] = demo::tables_json();
        line["oauth"] = demo::oauth_json(&loaded.oauth_secrets);
    } else if !loaded.oauth_secrets.is_empty() {
        line["oauth_secrets"] = json!(loaded.oauth_secrets);
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    drop(out);
    tracing::info!(url = %running.base_url(), "emulator ready; Ctrl-C stops it");
    running.serve_until(interrupted()).await;
    Ok(())
}

/// Ctrl-C, or SIGTERM from a supervisor.
async fn interrupted() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

//! `trig-databricks connection test`: the product page's Test connection
//! from a terminal, by flags (and Databricks' standard environment
//! variables) or from a config file's `[connections.<name>]`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args as ClapArgs, Subcommand};
use databricks::check::{CheckInput, Report, TableCheck, test_connection};
use databricks::{Credentials, Secret};
use trig_config::Config;

#[derive(Debug, ClapArgs)]
pub struct Args {
    #[command(subcommand)]
    command: Sub,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// Check a connection: URL, HTTP path, token, warehouse, CAN USE, catalogs, and each pipeline's source.
    Test(TestArgs),
}

#[derive(Debug, ClapArgs)]
struct TestArgs {
    /// Workspace URL (default: $DATABRICKS_HOST).
    #[arg(long, conflicts_with = "config")]
    workspace_url: Option<String>,
    /// SQL warehouse HTTP path, /sql/1.0/warehouses/<id>.
    #[arg(long, conflicts_with = "config")]
    http_path: Option<String>,
    /// Default catalog.
    #[arg(long, conflicts_with = "config")]
    catalog: Option<String>,
    /// The environment variable holding the token (default: $DATABRICKS_TOKEN,
    /// or OAuth with $DATABRICKS_CLIENT_ID and $DATABRICKS_CLIENT_SECRET).
    #[arg(long, value_name = "VAR", conflicts_with = "config")]
    token_env: Option<String>,
    /// A host beyond the standard workspace hosts (private link, the local emulator); repeatable.
    #[arg(long = "allow-host", value_name = "HOST[:PORT]", conflicts_with = "config")]
    allow_hosts: Vec<String>,
    /// A config file; with --connection, its connection and that connection's pipelines are checked.
    #[arg(long, requires = "connection")]
    config: Option<PathBuf>,
    /// The `[connections.<name>]` to check.
    #[arg(long, requires = "config")]
    connection: Option<String>,
    /// Print {"ok", "checks": [{"name", "ok", "detail", "hint"}], "catalogs"} instead of the checklist.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let Sub::Test(a) = args.command;
    let input = match (&a.config, &a.connection) {
        (Some(path), Some(name)) => from_config(path, name),
        _ => from_flags(&a),
    };
    // Missing or bad settings are for the user to fix: exit 2, like a failed check.
    let input = match input {
        Ok(i) => i,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(ExitCode::from(2));
        }
    };
    let report = test_connection(&input).await;
    print(&report, a.json)?;
    Ok(if report.ok { ExitCode::SUCCESS } else { ExitCode::from(2) })
}

fn print(report: &Report, json: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, report)?;
        writeln!(out)?;
    } else {
        write!(out, "{}", report.render())?;
    }
    Ok(())
}

fn env(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.trim().is_empty())
}

fn from_flags(a: &TestArgs) -> anyhow::Result<CheckInput> {
    let workspace_url = a.workspace_url.clone().or_else(|| env("DATABRICKS_HOST")).context(
        "no workspace URL: pass --workspace-url https://<workspace>.cloud.databricks.com or set DATABRICKS_HOST (or use --config FILE --connection NAME)",
    )?;
    let http_path =
        a.http_path.clone().context("no HTTP path: pass --http-path /sql/1.0/warehouses/<id> (from the warehouse's Connection details)")?;
    let credentials = match &a.token_env {
        Some(var) => match env(var) {
            Some(t) => Credentials::Token(Secret::new(t)),
            None => bail!("--token-env {var}: the environment variable {var} is not set or empty; export it with the token"),
        },
        None => match (env("DATABRICKS_TOKEN"), env("DATABRICKS_CLIENT_ID"), env("DATABRICKS_CLIENT_SECRET")) {
            (Some(t), _, _) => Credentials::Token(Secret::new(t)),
            (None, Some(id), Some(secret)) => Credentials::OAuth { client_id: id, client_secret: Secret::new(secret) },
            (None, Some(_), None) => bail!("DATABRICKS_CLIENT_ID is set but DATABRICKS_CLIENT_SECRET is not; export the OAuth secret too"),
            _ => bail!(
                "no credentials: pass --token-env VAR, or set DATABRICKS_TOKEN, or DATABRICKS_CLIENT_ID and DATABRICKS_CLIENT_SECRET (OAuth, recommended for a service principal)"
            ),
        },
    };
    Ok(CheckInput {
        workspace_url,
        http_path,
        credentials,
        default_catalog: a.catalog.clone(),
        allow_hosts: a.allow_hosts.clone(),
        tables: Vec::new(),
    })
}

fn from_config(path: &std::path::Path, name: &str) -> anyhow::Result<CheckInput> {
    let config = Config::load(path)?;
    let conn = config.connection(name).map_err(anyhow::Error::msg)?;
    let credentials = conn.credentials().map_err(|e| anyhow::anyhow!("{}: {}: {}", path.display(), e.key, e.message))?;
    let tables = config
        .pipelines_of(name)
        .map(|p| TableCheck { pipeline: p.name.clone(), source: p.source.clone(), columns: p.columns() })
        .collect();
    Ok(CheckInput {
        workspace_url: conn.workspace_url.clone(),
        http_path: conn.http_path.clone(),
        credentials,
        default_catalog: conn.default_catalog.clone(),
        allow_hosts: conn.allow_hosts.clone(),
        tables,
    })
}

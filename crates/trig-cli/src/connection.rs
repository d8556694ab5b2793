//! `trig-databricks connection test`: the product page's Test connection
//! from a terminal, by flags (and Databricks' standard environment
//! variables) or from a config file's `[connections.<name>]`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args as ClapArgs, Subcommand};
use databricks::check::{CheckInput, Report, test_connection};
use databricks::profile::Profile;
use databricks::{Credentials, Secret};
use trig_config::Config;

use crate::problem::{self, Problem};

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
    /// A profile of ~/.databrickscfg (or $DATABRICKS_CONFIG_FILE) for the host, token or OAuth client,
    /// as the Databricks CLI reads it (default: $DATABRICKS_CONFIG_PROFILE).
    #[arg(long, value_name = "NAME", conflicts_with = "config")]
    profile: Option<String>,
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
        Err(problems) => return Ok(problem::user(a.json, &problems)),
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

/// The profile named by `--profile` or `DATABRICKS_CONFIG_PROFILE`, read from
/// `DATABRICKS_CONFIG_FILE` or `~/.databrickscfg`.
fn profile(a: &TestArgs) -> Result<Option<Profile>, Problem> {
    let (key, name) = match (&a.profile, env("DATABRICKS_CONFIG_PROFILE")) {
        (Some(p), _) => ("--profile", p.clone()),
        (None, Some(p)) => ("DATABRICKS_CONFIG_PROFILE", p),
        (None, None) => return Ok(None),
    };
    let file = databricks::profile::default_file().map_err(|e| Problem::new(key, e.to_string()))?;
    databricks::profile::load(&file, &name).map(Some).map_err(|e| Problem::new(key, e.to_string()))
}

fn from_flags(a: &TestArgs) -> Result<CheckInput, Vec<Problem>> {
    let profile = profile(a).map_err(|p| vec![p])?;
    let from_profile =
        |what: &str| profile.as_ref().map(|p| format!(" (profile [{}] in {} has no {what})", p.name, p.file.display())).unwrap_or_default();
    let mut problems = Vec::new();
    let workspace_url =
        a.workspace_url.clone().or_else(|| profile.as_ref().and_then(|p| p.host.clone())).or_else(|| env("DATABRICKS_HOST"));
    if workspace_url.is_none() {
        problems.push(
            Problem::new("--workspace-url", format!("no workspace URL{}", from_profile("host")))
                .hint("pass --workspace-url https://<workspace>.cloud.databricks.com, set DATABRICKS_HOST, use --profile NAME, or --config FILE --connection NAME"),
        );
    }
    let http_path = a
        .http_path
        .clone()
        .or_else(|| profile.as_ref().and_then(|p| p.warehouse_id.as_ref()).map(|id| format!("/sql/1.0/warehouses/{id}")));
    if http_path.is_none() {
        problems.push(
            Problem::new("--http-path", "no HTTP path")
                .hint("pass --http-path /sql/1.0/warehouses/<id> (from the warehouse's Connection details)"),
        );
    }
    let credentials = match credentials(a, profile.as_ref()) {
        Ok(c) => Some(c),
        Err(p) => {
            problems.push(p);
            None
        }
    };
    match (workspace_url, http_path, credentials) {
        (Some(workspace_url), Some(http_path), Some(credentials)) if problems.is_empty() => Ok(CheckInput {
            workspace_url,
            http_path,
            credentials,
            default_catalog: a.catalog.clone(),
            allow_hosts: a.allow_hosts.clone(),
            tables: Vec::new(),
        }),
        _ => Err(problems),
    }
}

fn credentials(a: &TestArgs, profile: Option<&Profile>) -> Result<Credentials, Problem> {
    if let Some(var) = &a.token_env {
        return match env(var) {
            Some(t) => Ok(Credentials::Token(Secret::new(t))),
            None => {
                Err(Problem::new("--token-env", format!("the environment variable {var} is not set or empty"))
                    .hint("export it with the token"))
            }
        };
    }
    if let Some(p) = profile {
        return match (&p.token, &p.client_id, &p.client_secret) {
            (Some(t), _, _) => Ok(Credentials::Token(t.clone())),
            (None, Some(id), Some(secret)) => Ok(Credentials::OAuth { client_id: id.clone(), client_secret: secret.clone() }),
            _ => Err(Problem::new(
                "--profile",
                format!("profile [{}] in {} has no token, nor client_id and client_secret", p.name, p.file.display()),
            )
            .hint("add token = … or client_id and client_secret (OAuth, recommended for a service principal) to the profile")),
        };
    }
    match (env("DATABRICKS_TOKEN"), env("DATABRICKS_CLIENT_ID"), env("DATABRICKS_CLIENT_SECRET")) {
        (Some(t), _, _) => Ok(Credentials::Token(Secret::new(t))),
        (None, Some(id), Some(secret)) => Ok(Credentials::OAuth { client_id: id, client_secret: Secret::new(secret) }),
        (None, Some(_), None) => Err(Problem::new("DATABRICKS_CLIENT_SECRET", "DATABRICKS_CLIENT_ID is set but DATABRICKS_CLIENT_SECRET is not")
            .hint("export the OAuth secret too")),
        _ => Err(Problem::new("--token-env", "no credentials").hint(
            "pass --token-env VAR or --profile NAME, or set DATABRICKS_TOKEN, or DATABRICKS_CLIENT_ID and DATABRICKS_CLIENT_SECRET (OAuth, recommended for a service principal)",
        )),
    }
}

fn from_config(path: &std::path::Path, name: &str) -> Result<CheckInput, Vec<Problem>> {
    let config = Config::load(path).map_err(|e| problem::from_config(&e))?;
    config.check_input(name).map_err(|e| {
        if e.key == "connection" {
            vec![Problem::new("--connection", e.message)]
        } else {
            vec![Problem::new(format!("{}: {}", path.display(), e.key), e.message)]
        }
    })
}

//! `serve`, `tenants` and `tokens`: the service and what it authenticates.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args as ClapArgs, Subcommand};
use tokio_util::sync::CancellationToken;
use trig_config::Config;
use trig_server::secrets::{KeySource, Keyring};
use trig_server::{ServeOptions, Server};
use trig_store::{Store, TenantName};

use crate::problem::{self, Problem};
use crate::sync::{load_config, open_store, store_exit};

#[derive(Debug, ClapArgs)]
pub struct ServeArgs {
    /// The config file (a `[store]` table is enough; connections and pipelines may come through the API).
    #[arg(long)]
    config: PathBuf,
    /// Where the HTTP API listens.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    /// How long running work may take to stop after SIGINT or SIGTERM, in seconds.
    #[arg(long, default_value_t = 30)]
    shutdown_deadline_secs: u64,
    /// How often the scheduler looks for due pipelines when nothing wakes it, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    scheduler_tick_ms: u64,
    /// Serve the API only; run no pipelines in this process.
    #[arg(long)]
    no_scheduler: bool,
    /// How long a run's lease lasts without a heartbeat, in seconds: how soon another
    /// process takes over the pipelines of one that died.
    #[arg(long, default_value_t = 60)]
    lease_ttl_secs: u64,
    /// A host (HOST or HOST:PORT) an alert webhook may be on although the SSRF rules
    /// refuse it, e.g. a receiver inside your network; repeat for several.
    #[arg(long = "webhook-allow-host")]
    webhook_allow_hosts: Vec<String>,
}

#[derive(Debug, ClapArgs)]
pub struct TenantsArgs {
    #[command(subcommand)]
    command: TenantsCommand,
}

#[derive(Debug, Subcommand)]
enum TenantsCommand {
    /// Create a tenant (a Trig customer account).
    Create {
        /// Its id in paths and config files: lower-case letters, digits, `-`, `_` (e.g. acme).
        id: String,
        /// A name for people (e.g. "Acme Corp").
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        config: PathBuf,
    },
    /// List the tenants.
    List {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, ClapArgs)]
pub struct SecretsArgs {
    #[command(subcommand)]
    command: SecretsCommand,
}

#[derive(Debug, Subcommand)]
enum SecretsCommand {
    /// Seal every stored secret again under TRIG_SECRET_KEY (the old key in TRIG_SECRET_KEYS_OLD).
    Rotate {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, ClapArgs)]
pub struct TokensArgs {
    #[command(subcommand)]
    command: TokensCommand,
}

#[derive(Debug, Subcommand)]
enum TokensCommand {
    /// Make an API token; it is printed once, alone on stdout, and the store keeps only its hash.
    Create {
        /// The tenant the token belongs to (an admin token sees only it; a representative's sees every tenant).
        #[arg(long)]
        tenant: String,
        /// admin (a customer's administrator) or representative (Trig's).
        #[arg(long)]
        role: String,
        /// A note for the list (who has it, what for).
        #[arg(long, default_value = "")]
        label: String,
        #[arg(long)]
        config: PathBuf,
    },
    /// List tokens (never the tokens themselves).
    List {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Print a one-time login link for the pages, signing in as a token (by its id from
    /// `tokens list`); it works once, within a day.
    Link {
        id: i64,
        /// Where `serve` is reached, as a browser opens it.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        #[arg(long)]
        config: PathBuf,
    },
    /// Revoke a token by its id (from `tokens list`); it stops working at once.
    Revoke {
        id: i64,
        #[arg(long)]
        config: PathBuf,
    },
}

fn store_of(config: &Path, json: bool) -> Result<(Config, Arc<dyn Store>), ExitCode> {
    let c = load_config(config, json)?;
    let s = open_store(&c, json)?;
    Ok((c, s))
}

fn failed(key: &str, e: impl std::fmt::Display, code: ExitCode) -> ExitCode {
    problem::report(false, &[Problem::new(key, e.to_string())], code)
}

/// The config, its store and the keyring for that store (see [`keyring`]).
fn keyed_store(path: &Path, json: bool) -> Result<(Config, Keyring, Arc<dyn Store>), ExitCode> {
    let config = load_config(path, json)?;
    let url = config.resolve_store_url().map_err(|e| problem::user(json, &[Problem::new(&e.key, e.message)]))?;
    let keys = keyring(&config, &url)?;
    let store = open_store(&config, json)?;
    Ok((config, keys, store))
}

pub async fn tenants(a: TenantsArgs) -> anyhow::Result<ExitCode> {
    match a.command {
        TenantsCommand::Create { id, name, config } => {
            let tenant = match TenantName::parse(id.trim()) {
                Ok(t) => t,
                Err(m) => return Ok(problem::user(false, &[Problem::new("ID", m)])),
            };
            let (_, store) = match store_of(&config, false) {
                Ok(s) => s,
                Err(code) => return Ok(code),
            };
            match store.create_tenant(&tenant, name.as_deref().map(str::trim).filter(|n| !n.is_empty())).await {
                Ok(t) => {
                    writeln!(std::io::stdout(), "{}", t.name)?;
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => Ok(failed("ID", &e, store_exit(&e))),
            }
        }
        TenantsCommand::List { config, json } => {
            let (_, store) = match store_of(&config, json) {
                Ok(s) => s,
                Err(code) => return Ok(code),
            };
            let all = match store.tenants().await {
                Ok(t) => t,
                Err(e) => return Ok(failed("store.url", &e, store_exit(&e))),
            };
            let mut out = std::io::stdout().lock();
            if json {
                serde_json::to_writer_pretty(&mut out, &all)?;
                writeln!(out)?;
            } else {
                for t in &all {
                    writeln!(out, "{}\t{}\tcreated {}", t.name, t.display_name, trig_store::time::rfc3339(t.created_at))?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub async fn tokens(a: TokensArgs) -> anyhow::Result<ExitCode> {
    match a.command {
        TokensCommand::Create { tenant, role, label, config } => {
            let role = match trig_server::auth::Role::parse(role.trim()) {
                Ok(r) => r,
                Err(e) => return Ok(problem::user(false, &[Problem::new("--role", e.to_string())])),
            };
            let (_, store) = match store_of(&config, false) {
                Ok(s) => s,
                Err(code) => return Ok(code),
            };
            let t = match store.tenant_info(tenant.trim()).await {
                Ok(Some(t)) => t,
                Ok(None) => {
                    let p = Problem::new("--tenant", format!("there is no tenant `{}`", tenant.trim())).hint(format!(
                        "create it with `trig-databricks tenants create {} --config {}`",
                        tenant.trim(),
                        config.display()
                    ));
                    return Ok(problem::user(false, &[p]));
                }
                Err(e) => return Ok(failed("store.url", &e, store_exit(&e))),
            };
            let token = trig_server::auth::new_token()?;
            match store.create_token(t.id, role.as_str(), &trig_server::auth::token_hash(&token), label.trim()).await {
                Ok(made) => {
                    eprintln!("token {} for tenant {} ({}); it is shown once, now:", made.id, made.tenant_name, made.role);
                    writeln!(std::io::stdout(), "{token}")?;
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => Ok(failed("store.url", &e, store_exit(&e))),
            }
        }
        TokensCommand::List { tenant, config, json } => {
            let (_, store) = match store_of(&config, json) {
                Ok(s) => s,
                Err(code) => return Ok(code),
            };
            let only = match &tenant {
                None => None,
                Some(name) => match store.tenant_info(name.trim()).await {
                    Ok(Some(t)) => Some(t.id),
                    Ok(None) => {
                        return Ok(problem::user(json, &[Problem::new("--tenant", format!("there is no tenant `{}`", name.trim()))]));
                    }
                    Err(e) => return Ok(failed("store.url", &e, store_exit(&e))),
                },
            };
            let all = match store.tokens(only).await {
                Ok(t) => t,
                Err(e) => return Ok(failed("store.url", &e, store_exit(&e))),
            };
            let mut out = std::io::stdout().lock();
            if json {
                serde_json::to_writer_pretty(&mut out, &all)?;
                writeln!(out)?;
            } else {
                for t in &all {
                    let state = match t.revoked_at {
                        Some(at) => format!("revoked {}", trig_store::time::rfc3339(at)),
                        None => "live".into(),
                    };
                    writeln!(
                        out,
                        "{}\t{}\t{}\t{}\tcreated {}\t{}",
                        t.id,
                        t.tenant_name,
                        t.role,
                        state,
                        trig_store::time::rfc3339(t.created_at),
                        t.label
                    )?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        TokensCommand::Link { id, url, config } => {
            let base = match page_base(&url) {
                Ok(b) => b,
                Err(m) => return Ok(problem::user(false, &[Problem::new("--url", m)])),
            };
            let (_, store) = match store_of(&config, false) {
                Ok(s) => s,
                Err(code) => return Ok(code),
            };
            let live = match store.tokens(None).await {
                Ok(all) => all.into_iter().find(|t| t.id == id && t.revoked_at.is_none()),
                Err(e) => return Ok(failed("store.url", &e, store_exit(&e))),
            };
            let Some(t) = live else {
                return Ok(problem::user(
                    false,
                    &[Problem::new("ID", format!("there is no live token {id}")).hint("`trig-databricks tokens list` shows the ids")],
                ));
            };
            match trig_server::pages::session::login_link(store.as_ref(), t.id, chrono::Utc::now().timestamp_micros()).await {
                Ok(path) => {
                    eprintln!("a login link for token {} ({}, tenant {}); it works once, within a day:", t.id, t.role, t.tenant_name);
                    writeln!(std::io::stdout(), "{base}{path}")?;
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => Ok(failed("store.url", &e, ExitCode::FAILURE)),
            }
        }
        TokensCommand::Revoke { id, config } => {
            let (_, store) = match store_of(&config, false) {
                Ok(s) => s,
                Err(code) => return Ok(code),
            };
            match store.revoke_token(id).await {
                Ok(true) => {
                    eprintln!("token {id} revoked");
                    Ok(ExitCode::SUCCESS)
                }
                Ok(false) => Ok(problem::user(
                    false,
                    &[Problem::new("ID", format!("there is no live token {id}")).hint("`trig-databricks tokens list` shows the ids")],
                )),
                Err(e) => Ok(failed("store.url", &e, store_exit(&e))),
            }
        }
    }
}

pub async fn secrets(a: SecretsArgs) -> anyhow::Result<ExitCode> {
    let SecretsCommand::Rotate { config, json } = a.command;
    let (_, keys, store) = match keyed_store(&config, json) {
        Ok(k) => k,
        Err(code) => return Ok(code),
    };
    let r = match trig_server::secrets::rotate(store.as_ref(), &keys).await {
        Ok(r) => r,
        Err(e) => return Ok(failed("store.url", &e, ExitCode::FAILURE)),
    };
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &r)?;
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "{} sealed again under key {}, {} already under it, {} changed meanwhile",
            r.resealed,
            keys.key_id(),
            r.current,
            r.raced
        )?;
        for f in &r.failed {
            writeln!(out, "not rotated: {f}")?;
        }
    }
    Ok(if r.failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(2) })
}

/// The keyring for this store: the environment's; on SQLite without one, a
/// key file beside the database; on PostgreSQL without one, a refusal.
pub(crate) fn keyring(config: &Config, url: &str) -> Result<Keyring, ExitCode> {
    let refuse = |e: trig_server::Error| problem::user(false, &[Problem::new(trig_server::secrets::KEY_VAR, e.to_string())]);
    match url.strip_prefix("sqlite://") {
        Some(path) if path != ":memory:" => {
            let k = Keyring::for_sqlite(Path::new(path)).map_err(refuse)?;
            match k.source() {
                KeySource::Created(f) => eprintln!(
                    "made a secret key for the secrets this store keeps: {} (mode 0600); back it up with the database, or set {}",
                    f.display(),
                    trig_server::secrets::KEY_VAR
                ),
                KeySource::File(f) => tracing::info!("secret key from {}", f.display()),
                KeySource::Environment => tracing::info!("secret key from {}", trig_server::secrets::KEY_VAR),
            }
            Ok(k)
        }
        _ => match Keyring::from_env().map_err(refuse)? {
            Some(k) => Ok(k),
            None => {
                let p = Problem::new(
                    trig_server::secrets::KEY_VAR,
                    format!(
                        "is not set; with the store at {} several processes share the secrets, so each needs the same key",
                        config.store_url.split('@').next_back().unwrap_or("")
                    ),
                )
                .hint(trig_server::secrets::HOW_TO_MAKE_A_KEY);
                Err(problem::user(false, &[p]))
            }
        },
    }
}

pub async fn serve(a: ServeArgs) -> anyhow::Result<ExitCode> {
    let addr = match a.addr.parse() {
        Ok(addr) => addr,
        Err(_) => {
            return Ok(problem::user(false, &[Problem::new("--addr", format!("`{}` is not HOST:PORT, e.g. 127.0.0.1:8080", a.addr))]));
        }
    };
    let (config, keys, store) = match keyed_store(&a.config, false) {
        Ok(k) => k,
        Err(code) => return Ok(code),
    };
    // The config's own tenant exists from the start, with the file's connections (read-only).
    let now = chrono::Utc::now().timestamp_micros();
    if let Err(e) = load_file(store.as_ref(), &config, &|_| now).await {
        return Ok(failed("store.url", &e, store_exit(&e)));
    }
    let scheduler = (!a.no_scheduler).then(|| {
        scheduler_options(
            "trig-databricks serve",
            std::time::Duration::from_millis(a.scheduler_tick_ms.max(50)),
            std::time::Duration::from_secs(a.lease_ttl_secs.clamp(2, 3600)),
        )
    });
    let webhook_allow = match databricks::AllowHosts::parse(&a.webhook_allow_hosts) {
        Ok(h) => h,
        Err(m) => return Ok(problem::user(false, &[Problem::new("--webhook-allow-host", m)])),
    };
    let options = ServeOptions {
        addr,
        shutdown_deadline: std::time::Duration::from_secs(a.shutdown_deadline_secs),
        scheduler,
        webhook_allow,
        clock: std::sync::Arc::new(trig_server::SystemClock),
    };
    let server = match Server::bind(store, keys, Some(Arc::new(config)), options).await {
        Ok(s) => s,
        Err(e) => return Ok(problem::report(false, &[Problem::new("--addr", format!("cannot listen on {addr}: {e}"))], ExitCode::from(2))),
    };
    let bound = server.local_addr()?;
    // One line a supervisor (or a test) can read: where the API is.
    writeln!(std::io::stdout(), "{}", serde_json::json!({ "listening": format!("http://{bound}") }))?;
    std::io::stdout().flush()?;
    let stop = CancellationToken::new();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        eprintln!("stopping: no new work; waiting for what runs");
        on_signal.cancel();
    });
    server.run(stop).await?;
    Ok(ExitCode::SUCCESS)
}

/// The scheduler of a process named `holder` in the store's leases: its
/// tick, its leases' time to live, one `databricks::Client` kept per connection.
pub(crate) fn scheduler_options(
    holder: &str,
    tick: std::time::Duration,
    lease_ttl: std::time::Duration,
) -> trig_server::scheduler::SchedulerOptions {
    trig_server::scheduler::SchedulerOptions {
        tick,
        engine: trig_sync::EngineOptions {
            holder: trig_store::Holder::this_process(holder),
            lease_ttl,
            clients: Some(Default::default()),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// `--url`: where a browser reaches `serve`, as `http(s)://HOST[:PORT]` with no trailing slash.
pub(crate) fn page_base(url: &str) -> Result<String, String> {
    let u = url.trim().trim_end_matches('/');
    let rest = u.strip_prefix("http://").or_else(|| u.strip_prefix("https://"));
    match rest {
        Some(host) if !host.is_empty() && !host.contains(['?', '#', ' ']) => Ok(u.to_string()),
        _ => {
            Err(format!("`{url}` is not where serve is reached; give its address, e.g. http://127.0.0.1:8080 or https://trig.example.com"))
        }
    }
}

/// The config file's tenant and connections, into the store (the file wins
/// over the API for a name it defines); a pipeline new to the store is first
/// due at `first_run_at(its name)`.
pub(crate) async fn load_file(
    store: &dyn Store,
    config: &Config,
    first_run_at: &dyn Fn(&str) -> trig_store::Micros,
) -> Result<(), trig_store::Error> {
    let tenant = store.tenant(config.tenant.as_str()).await?;
    for c in config.connections.values() {
        let w = trig_store::ConnectionWrite {
            origin: "config".into(),
            config: trig_server::connections::config_file_json(c),
            sealed_secret: None,
            actor: format!("config file {}", config.path.display()),
            action: "replaced".into(),
        };
        store.put_connection(tenant, &c.name, w).await?;
    }
    let defined = config.pipeline_definitions();
    // A pipeline the file no longer has stops (its rows stay).
    for gone in store
        .pipeline_records(tenant)
        .await?
        .into_iter()
        .filter(|p| p.origin.as_deref() == Some("config") && !defined.contains_key(&p.name))
    {
        store.delete_pipeline(tenant, &gone.name, &format!("config file {}", config.path.display())).await?;
    }
    for (name, definition) in defined {
        let w = trig_store::PipelineWrite {
            origin: "config".into(),
            definition,
            actor: format!("config file {}", config.path.display()),
            action: "replaced".into(),
            first_run_at: first_run_at(&name),
        };
        store.put_pipeline(tenant, &name, w).await?;
    }
    Ok(())
}

pub(crate) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

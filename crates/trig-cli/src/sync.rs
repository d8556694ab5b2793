//! `trig-databricks sync`, `runs` and `export`: run a pipeline once, read
//! the run history, and dump what the store holds as NDJSON.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args as ClapArgs, ValueEnum};
use tokio_util::sync::CancellationToken;
use trig_config::Config;
use trig_store::{Export, Store, SyncRun};
use trig_sync::{Class, Engine, EngineOptions, Error, Trigger};

use crate::problem::{self, Problem};

/// Exit codes: 0 success, 2 a failure the user must fix, 3 remote or transient, 1 a bug.
pub fn exit_code(class: Class) -> ExitCode {
    match class {
        Class::User => ExitCode::from(2),
        Class::Remote => ExitCode::from(3),
        Class::Internal => ExitCode::from(1),
    }
}

#[derive(Debug, ClapArgs)]
pub struct SyncArgs {
    /// The `[pipelines.<name>]` to run.
    pipeline: String,
    /// The config file.
    #[arg(long)]
    config: PathBuf,
    /// Re-read everything (events: from backfill_from); re-read events carry the backfill flag.
    #[arg(long, conflicts_with_all = ["from", "to"])]
    full_refresh: bool,
    /// Replay from this time (RFC 3339), without moving the live cursor; needs --to.
    #[arg(long, requires = "to", value_name = "TIME")]
    from: Option<String>,
    /// Replay up to this time (RFC 3339, inclusive).
    #[arg(long, requires = "from", value_name = "TIME")]
    to: Option<String>,
    /// Show the SQL and parameters a real run would send and the first 20 mapped rows; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print every statement and its parameters to stderr as it is sent.
    #[arg(long)]
    print_sql: bool,
    /// When another run holds the pipeline, wait for it to end instead of exiting (Ctrl-C stops waiting).
    #[arg(long)]
    wait: bool,
    /// Print the run record (or, with --dry-run, {"sql", "parameters", "rows"}) as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, ClapArgs)]
pub struct RunsArgs {
    #[arg(long)]
    config: PathBuf,
    /// Only this pipeline's runs.
    #[arg(long)]
    pipeline: Option<String>,
    /// How many runs, newest first.
    #[arg(long, default_value_t = 20)]
    limit: usize,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum What {
    Events,
    People,
    Organisations,
    Parked,
    Quarantine,
}

#[derive(Debug, ClapArgs)]
pub struct ExportArgs {
    /// What to export, one JSON object per line.
    #[arg(value_enum)]
    what: What,
    #[arg(long)]
    config: PathBuf,
}

/// Loads the config; a bad one is the user's to fix (exit 2), every problem printed at once.
pub fn load_config(path: &Path, json: bool) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        if json {
            problem::user(true, &problem::from_config(&e))
        } else {
            eprint!("{e}");
            ExitCode::from(2)
        }
    })
}

/// A store error's exit code: 3 when the next try may succeed (busy), 2
/// when the operator must fix the file or URL, 1 for a bug.
pub fn store_exit(e: &trig_store::Error) -> ExitCode {
    if e.is_transient() {
        ExitCode::from(3)
    } else if e.is_user_fixable() {
        ExitCode::from(2)
    } else {
        ExitCode::FAILURE
    }
}

pub fn open_store(config: &Config, json: bool) -> Result<Arc<dyn Store>, ExitCode> {
    let url = config.resolve_store_url().map_err(|e| problem::user(json, &[Problem::new(&e.key, e.message)]))?;
    trig_store::open(&url).map(Arc::from).map_err(|e| store_failed(&e, json))
}

fn store_failed(e: &trig_store::Error, json: bool) -> ExitCode {
    problem::report(json, &[Problem::new("store.url", e.to_string())], store_exit(e))
}

fn parse_time(flag: &str, v: &str, json: bool) -> Result<i64, ExitCode> {
    chrono::DateTime::parse_from_rfc3339(v).map(|t| t.timestamp_micros()).map_err(|_| {
        problem::user(json, &[Problem::new(flag, format!("`{v}` is not an RFC 3339 time")).hint("write e.g. 2026-11-01T00:00:00Z")])
    })
}

fn human(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The run record as one short paragraph.
pub fn describe(run: &SyncRun) -> String {
    let c = &run.counts;
    let secs = run.ended_at.map(|e| (e - run.started_at) as f64 / 1e6).unwrap_or(0.0);
    let window = match (run.window_from, run.window_to) {
        (Some(f), Some(t)) => format!(", window {} → {}", trig_store::time::rfc3339(f), trig_store::time::rfc3339(t)),
        (None, Some(t)) => format!(", up to {}", trig_store::time::rfc3339(t)),
        _ => String::new(),
    };
    let mut s = format!("{} ({}): {} in {secs:.1}s{window}\n", run.pipeline, run.trigger, run.status);
    s.push_str(&format!(
        "  read {} · inserted {} · updated {} · unchanged {} · deduplicated {} · parked {} · re-matched {} · dropped {} · quarantined {} · late {} · people created {}\n",
        human(c.rows_read),
        human(c.inserted),
        human(c.updated),
        human(c.unchanged),
        human(c.deduplicated),
        human(c.parked),
        human(c.rematched),
        human(c.dropped),
        human(c.quarantined),
        human(c.late),
        human(c.people_created),
    ));
    if let Some(w) = &run.warehouse_state {
        s.push_str(&format!("  warehouse was {w} at the start; {} statement(s); run {}\n", run.statement_ids.len(), run.run_id));
    }
    for n in &run.notes {
        s.push_str(&format!("  note: {n}\n"));
    }
    s
}

fn progress_bar(pipeline: &str) -> trig_sync::ProgressFn {
    let name = pipeline.to_string();
    Arc::new(move |p: &trig_sync::Progress| {
        let rate = p.rows_read as f64 / p.elapsed.as_secs_f64().max(0.001);
        let window = p
            .window
            .map(|w| format!(" · window {} → {}", &trig_store::time::rfc3339(w.from)[..16], &trig_store::time::rfc3339(w.to)[..16]))
            .unwrap_or_default();
        let mut err = std::io::stderr().lock();
        let _ =
            write!(err, "\r\x1b[2K{name}: {} rows · {} rows/s{window} · {:.0}%", human(p.rows_read), human(rate as u64), p.covered * 100.0);
        let _ = err.flush();
    })
}

pub async fn sync(a: SyncArgs) -> anyhow::Result<ExitCode> {
    let config = match load_config(&a.config, a.json) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let trigger = match (&a.from, &a.to) {
        (Some(f), Some(t)) => {
            let (from, to) = match parse_time("--from", f, a.json).and_then(|f| parse_time("--to", t, a.json).map(|t| (f, t))) {
                Ok(range) => range,
                Err(c) => return Ok(c),
            };
            if to <= from {
                return Ok(problem::user(a.json, &[Problem::new("--to", "must be after --from")]));
            }
            Trigger::Replay { from, to }
        }
        _ if a.full_refresh => Trigger::FullRefresh,
        _ => Trigger::Manual,
    };
    if let Err(m) = config.pipeline(&a.pipeline) {
        return Ok(problem::user(a.json, &[Problem::new("PIPELINE", m)]));
    }
    let store = match open_store(&config, a.json) {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let mut options = EngineOptions { holder: trig_store::Holder::this_process("trig-databricks sync"), ..EngineOptions::default() };
    if a.wait {
        options.wait_for_lease = Some(std::time::Duration::from_secs(365 * 86_400));
    }
    if a.print_sql || a.dry_run && !a.json {
        options.on_statement = Some(Arc::new(|q: &trig_sync::Query| {
            let params: Vec<String> =
                q.parameters.iter().map(|p| format!(":{} = {} ({})", p.name, p.value.as_deref().unwrap_or("NULL"), p.type_name)).collect();
            eprintln!("-- statement\n{}\n-- parameters: {}", q.sql, if params.is_empty() { "none".into() } else { params.join(", ") });
        }));
    }
    let tty = std::io::stderr().is_terminal() && !a.json;
    if tty && !a.dry_run {
        options.progress = Some(progress_bar(&a.pipeline));
    }
    let engine = Engine::new(config, store, options);
    let mut out = std::io::stdout().lock();
    if a.dry_run {
        return match engine.dry_run(&a.pipeline, trigger, 20).await {
            Ok(d) => {
                if a.json {
                    serde_json::to_writer_pretty(&mut out, &d)?;
                    writeln!(out)?;
                } else {
                    for r in &d.rows {
                        writeln!(out, "{r}")?;
                    }
                    writeln!(out, "(dry run: {} row(s) shown, nothing written)", d.rows.len())?;
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => Ok(report_error(&e, a.json)),
        };
    }
    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\ninterrupted: stopping after the current batch (what committed stays)");
            on_signal.cancel();
        }
    });
    let finished = match engine.run(&a.pipeline, trigger, &cancel).await {
        Ok(f) => f,
        Err(e) => return Ok(report_error(&e, a.json)),
    };
    if tty {
        eprintln!();
    }
    if a.json {
        serde_json::to_writer_pretty(&mut out, &finished.run)?;
        writeln!(out)?;
    } else {
        write!(out, "{}", describe(&finished.run))?;
    }
    Ok(match &finished.error {
        None => ExitCode::SUCCESS,
        // The run's record (printed above, as JSON with --json) holds the error; say it once more
        // on stderr only for a person reading the text.
        Some(e) if a.json => exit_code(e.class()),
        Some(e) => report_error(e, false),
    })
}

/// An error that stopped a command (no run, or a failed run in text mode):
/// printed once, with its fix.
fn report_error(e: &Error, json: bool) -> ExitCode {
    let code = match e {
        // Someone else's run: not this one's to retry, and nothing is wrong.
        Error::Store(trig_store::Error::LeaseHeld { .. }) => ExitCode::from(2),
        _ => exit_code(e.class()),
    };
    problem::report(json, &[problem::from_sync(e)], code)
}

/// The config's tenant in the store.
async fn tenant(store: &dyn Store, config: &Config) -> Result<trig_store::TenantId, trig_store::Error> {
    store.tenant(config.tenant.as_str()).await
}

pub async fn runs(a: RunsArgs) -> anyhow::Result<ExitCode> {
    let config = match load_config(&a.config, a.json) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    if let Some(p) = &a.pipeline
        && let Err(m) = config.pipeline(p)
    {
        return Ok(problem::user(a.json, &[Problem::new("--pipeline", m)]));
    }
    let store = match open_store(&config, a.json) {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let runs = match async { store.runs(tenant(store.as_ref(), &config).await?, a.pipeline.as_deref(), a.limit).await }.await {
        Ok(r) => r,
        Err(e) => return Ok(store_failed(&e, a.json)),
    };
    let mut out = std::io::stdout().lock();
    if a.json {
        serde_json::to_writer_pretty(&mut out, &runs)?;
        writeln!(out)?;
    } else if runs.is_empty() {
        writeln!(out, "no runs yet")?;
    } else {
        for r in &runs {
            writeln!(out, "{} {}", trig_store::time::rfc3339(r.started_at), describe(r).trim_end())?;
            if let (Some(k), Some(m)) = (&r.error_kind, &r.error_message) {
                writeln!(out, "  error ({k}): {m}")?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn export(a: ExportArgs) -> anyhow::Result<ExitCode> {
    let config = match load_config(&a.config, false) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let store = match open_store(&config, false) {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let what = match a.what {
        What::Events => Export::Events,
        What::People => Export::People,
        What::Organisations => Export::Organisations,
        What::Parked => Export::Parked,
        What::Quarantine => Export::Quarantine,
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let tenant = match tenant(store.as_ref(), &config).await {
        Ok(t) => t,
        Err(e) => return Ok(store_failed(&e, false)),
    };
    let mut after: Option<String> = None;
    loop {
        let (page, next) = match store.export_page(tenant, what, after.as_deref(), 10_000).await {
            Ok(p) => p,
            Err(e) => return Ok(store_failed(&e, false)),
        };
        for v in &page {
            serde_json::to_writer(&mut out, v).map_err(std::io::Error::from)?;
            out.write_all(b"\n")?;
        }
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

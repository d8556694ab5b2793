//! `trig-databricks`: the one binary. Each subcommand lives in its own module.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod connection;
mod demo;
mod emulator;
mod problem;
mod serve;
mod sync;

#[derive(Debug, Parser)]
#[command(name = "trig-databricks", version, about = "Trig's Databricks integration")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a local Databricks workspace (SQL warehouse, Unity Catalog, OAuth) for demos and tests.
    Emulator(emulator::Args),
    /// Test a Databricks connection (exit 0: all checks pass, 2: a check failed, 1: internal error).
    Connection(connection::Args),
    /// Run one pipeline once (exit 0: success, 2: a problem to fix, 3: remote or transient, 1: a bug).
    Sync(sync::SyncArgs),
    /// List sync runs, newest first.
    Runs(sync::RunsArgs),
    /// Print what the store holds as NDJSON.
    Export(sync::ExportArgs),
    /// The whole product on this machine: a local workspace, Test connection, syncs, a report.
    Demo(demo::Args),
    /// Run the service: the HTTP API (and its roles) on the config's store.
    Serve(serve::ServeArgs),
    /// Create and list tenants (Trig customer accounts).
    Tenants(serve::TenantsArgs),
    /// Create, list and revoke the API's tokens.
    Tokens(serve::TokensArgs),
    /// Seal the stored secrets again under a new key.
    Secrets(serve::SecretsArgs),
}

/// mimalloc keeps freed memory for the next batch of a run: glibc's malloc hands
/// large buffers back to the kernel and takes them again, zeroed, each time.
/// Its v2 line (the workspace's `v2` feature): v3 keeps freed pages committed
/// for a second before it returns them, so a run's peak memory grew with its
/// length (a 1M-event sync peaked at 131–135 MiB with v3, 118–123 with v2).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => return bad_arguments(e),
    };
    // Colour only for a person at a terminal who has not asked for none.
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Emulator(args) => emulator::run(args).await.map(|()| ExitCode::SUCCESS),
            Command::Connection(args) => connection::run(args).await,
            Command::Sync(args) => sync::sync(args).await,
            Command::Runs(args) => sync::runs(args).await,
            Command::Export(args) => sync::export(args).await,
            Command::Demo(args) => demo::run(args).await,
            Command::Serve(args) => serve::serve(args).await,
            Command::Tenants(args) => serve::tenants(args).await,
            Command::Tokens(args) => serve::tokens(args).await,
            Command::Secrets(args) => serve::secrets(args).await,
        }
    });
    match result {
        Ok(code) => code,
        // `trig-databricks export events | head`: the reader left, which is not an error.
        Err(e) if e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A flag clap refused: with `--json` anywhere on the line, the same JSON
/// error object every command prints (exit 2); otherwise clap's own words.
fn bad_arguments(e: clap::Error) -> ExitCode {
    use clap::error::{ContextKind, ErrorKind};
    let wants_json = std::env::args().any(|a| a == "--json");
    if !wants_json
        || matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand)
    {
        e.exit();
    }
    let key = e.get(ContextKind::InvalidArg).map(|v| v.to_string()).unwrap_or_else(|| "(arguments)".into());
    let rendered = e.render().to_string();
    let message = rendered.lines().next().unwrap_or("").trim_start_matches("error: ").to_string();
    let hint = rendered.lines().find(|l| l.trim_start().starts_with("tip:")).map(|l| l.trim().to_string());
    let p = problem::Problem { key, message, hint: hint.or_else(|| Some("run the command with --help".into())) };
    problem::user(true, &[p])
}

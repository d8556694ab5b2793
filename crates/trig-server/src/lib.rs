//! `trig-databricks serve`: one process hosting the HTTP API (and, next, the
//! scheduler), on the embedded SQLite store or on PostgreSQL shared by
//! several processes (issue #12).
//!
//! | module | what it owns |
//! |---|---|
//! | `api` | the routes, strict JSON bodies (1 MiB, unknown keys refused), JSON errors |
//! | `connections` | connections through the API: validated by the config loader, the secret sealed and write-only |
//! | `pipelines` | pipelines through the API (representative), status, runs, the timeline, quarantine, sync now; a tenant's configuration for the engine |
//! | `scheduler` | every defined pipeline on its schedule: due from the store, leases, warehouse limits, backoff, pauses |
//! | `metrics` | `/metrics` in Prometheus' text format; labels only of our own words |
//! | `alerts` | a tenant's webhook, once per transition (failing, recovered, paused), SSRF-checked, retried |
//! | `cost` | the uptime Trig's runs caused per warehouse and day, wake-ups, statements, and the setting that would cut it |
//! | `pages` | the pages (Settings → Integrations → Databricks, run history, the mapping editor): askama, sessions, CSRF |
//! | `openapi` | the routes' one table and the OpenAPI 3.1 document built from it |
//! | `auth` | API tokens (random, stored as SHA-256), roles, who sees which tenant |
//! | `secrets` | secrets at rest: the keyring (current key, old keys), seal and open |
//! | `error` | the crate's one `Error`, its HTTP status and JSON shape |

pub mod alerts;
pub mod api;
pub mod auth;
pub mod connections;
pub mod cost;
mod error;
pub mod metrics;
pub mod openapi;
pub mod pages;
pub mod pipelines;
pub mod scheduler;
pub mod secrets;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use trig_store::Store;

pub use error::Error;

/// What time it is, for the scheduler: the system's clock in service, a
/// clock a test moves ([`ManualClock`]).
pub trait Clock: Send + Sync {
    /// Microseconds since the Unix epoch.
    fn now(&self) -> trig_store::Micros;
}

/// The system's clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> trig_store::Micros {
        chrono::Utc::now().timestamp_micros()
    }
}

/// A clock that moves only when told to (tests: a day passes in a call).
pub struct ManualClock(std::sync::atomic::AtomicI64);

impl ManualClock {
    /// Starting at the system's time.
    pub fn new() -> ManualClock {
        ManualClock(std::sync::atomic::AtomicI64::new(chrono::Utc::now().timestamp_micros()))
    }

    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_micros() as i64, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> trig_store::Micros {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A clock that reads tokio's: with tokio's time paused (tests) it moves
/// only as the runtime's timers fire, starting at the system's time.
pub struct TokioClock {
    base: trig_store::Micros,
    start: tokio::time::Instant,
}

impl TokioClock {
    pub fn new() -> TokioClock {
        TokioClock { base: chrono::Utc::now().timestamp_micros(), start: tokio::time::Instant::now() }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        TokioClock::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> trig_store::Micros {
        self.base + self.start.elapsed().as_micros() as trig_store::Micros
    }
}

/// How `serve` runs.
#[derive(Clone)]
pub struct ServeOptions {
    pub addr: SocketAddr,
    /// How long running work may take to stop once asked.
    pub shutdown_deadline: Duration,
    /// The scheduler's knobs; `None` serves the API only.
    pub scheduler: Option<scheduler::SchedulerOptions>,
    /// Hosts an alert webhook may be on although the SSRF rules refuse them (a local receiver).
    pub webhook_allow: databricks::AllowHosts,
    /// The scheduler's clock.
    pub clock: Arc<dyn Clock>,
}

impl Default for ServeOptions {
    fn default() -> ServeOptions {
        ServeOptions {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            shutdown_deadline: Duration::from_secs(30),
            scheduler: Some(scheduler::SchedulerOptions::default()),
            webhook_allow: databricks::AllowHosts::default(),
            clock: Arc::new(SystemClock),
        }
    }
}

/// A bound server: its address is known before it serves (port 0 picks one).
pub struct Server {
    listener: tokio::net::TcpListener,
    state: api::AppState,
    options: ServeOptions,
}

impl Server {
    pub async fn bind(
        store: Arc<dyn Store>,
        keys: secrets::Keyring,
        config: Option<Arc<trig_config::Config>>,
        options: ServeOptions,
    ) -> std::io::Result<Server> {
        let listener = tokio::net::TcpListener::bind(options.addr).await?;
        let wake = Arc::new(tokio::sync::Notify::new());
        let metrics = Arc::default();
        let (webhook_allow, clock) = (options.webhook_allow.clone(), options.clock.clone());
        Ok(Server {
            listener,
            state: api::AppState { store, keys, config, wake, metrics, webhook_allow, clock, warehouses: Arc::default() },
            options,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `stop` is cancelled, then lets requests in flight finish
    /// within the shutdown deadline.
    pub async fn run(self, stop: CancellationToken) -> std::io::Result<()> {
        let deadline = self.options.shutdown_deadline;
        let scheduling = self.options.scheduler.clone().map(|o| {
            let (s, stop) = (scheduler::Scheduler::new(self.state.clone(), o), stop.clone());
            tokio::spawn(s.run(stop, deadline))
        });
        let served = self.serve(stop).await;
        if let Some(s) = scheduling {
            let _ = s.await;
        }
        served
    }

    async fn serve(self, stop: CancellationToken) -> std::io::Result<()> {
        let app = api::router(self.state);
        let graceful = stop.clone();
        let serving = axum::serve(self.listener, app).with_graceful_shutdown(async move { graceful.cancelled().await });
        let deadline = self.options.shutdown_deadline;
        tokio::select! {
            r = serving => r,
            _ = async { stop.cancelled().await; tokio::time::sleep(deadline).await } => {
                tracing::warn!("requests still in flight {deadline:?} after the stop; leaving them");
                Ok(())
            }
        }
    }
}

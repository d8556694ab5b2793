//! The demo workspace (`fixtures/demo.toml`): a B2B SaaS company's
//! `main.product.events` (and the `events_v` view over it),
//! `main.crm.people` and `main.crm.organisations`, a catalog nobody but the
//! admin sees, and principals for every permission problem the product
//! page warns about.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};

use crate::error::Error;
use crate::fixture::{Fixture, Loaded};

/// The fixture text, compiled in so the binary needs no files.
pub const DEMO_FIXTURE: &str = include_str!("../fixtures/demo.toml");

/// The demo warehouse's id.
pub const WAREHOUSE_ID: &str = "a1b2c3d4e5f60718";

/// The full names pipelines read.
pub const EVENTS: &str = "main.product.events_v";
pub const EVENTS_TABLE: &str = "main.product.events";
pub const PEOPLE: &str = "main.crm.people";
pub const ORGANISATIONS: &str = "main.crm.organisations";

/// The service principal Trig should use.
pub const SERVICE_PRINCIPAL: &str = "8c1c7f4e-5b1a-4a41-9d7a-2f6f0c1d9e01";

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub events: u64,
    pub seed: u64,
    /// Overrides the warehouse's start delay (tests use a short one).
    pub start_delay_ms: Option<u64>,
    /// Start with the warehouse RUNNING rather than STOPPED.
    pub running: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions { events: 100_000, seed: 7, start_delay_ms: None, running: false }
    }
}

/// The demo fixture with `options` applied.
pub fn fixture(options: &DemoOptions) -> Result<Fixture, Error> {
    let mut f = Fixture::parse(DEMO_FIXTURE, "demo.toml")?;
    if let Some(d) = f.dataset.as_mut() {
        d.events = options.events;
        d.seed = options.seed;
    }
    for w in &mut f.warehouses {
        if let Some(ms) = options.start_delay_ms {
            w.start_delay_ms = ms;
        }
        if options.running {
            w.state = crate::WarehouseState::Running;
        }
    }
    Ok(f)
}

/// Builds the demo workspace.
pub async fn workspace(options: &DemoOptions) -> Result<Loaded, Error> {
    fixture(options)?.load(Path::new(".")).await
}

/// The start-up line's `tables` member for the demo.
pub fn tables_json() -> Value {
    json!({"events": EVENTS, "events_table": EVENTS_TABLE, "people": PEOPLE, "organisations": ORGANISATIONS})
}

/// The OAuth client of the demo's service principal, if it has a secret.
pub fn oauth_json(secrets: &BTreeMap<String, String>) -> Value {
    match secrets.get(SERVICE_PRINCIPAL) {
        Some(s) => json!({"client_id": SERVICE_PRINCIPAL, "client_secret": s}),
        None => Value::Null,
    }
}

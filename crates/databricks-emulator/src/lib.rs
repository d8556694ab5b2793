//! A local Databricks workspace for tests and demos.
//!
//! It serves, over real HTTP, what a Databricks SQL client talks to: the SQL
//! Statement Execution API 2.0 (INLINE and EXTERNAL_LINKS results in
//! JSON_ARRAY, ARROW_STREAM and CSV, with chunks, limits, parameters and LZ4),
//! the Warehouses API with a real lifecycle and uptime accounting, Unity
//! Catalog REST with grants enforced, SCIM `Me`, OAuth machine-to-machine, and
//! an admin API (`/emulator/v1/*`) to change data, grants and tokens and to
//! inject faults. SQL runs on Apache DataFusion with the Databricks dialect.
//!
//! ```no_run
//! # async fn demo() -> Result<(), databricks_emulator::Error> {
//! let loaded = databricks_emulator::demo::workspace(&Default::default()).await?;
//! let running = databricks_emulator::start(loaded.workspace, Default::default(), "127.0.0.1:0").await?;
//! assert!(running.base_url().starts_with("http://127.0.0.1:"));
//! # Ok(()) }
//! ```
//!
//! The crate depends on no other crate of the project, so the client and the
//! emulator can never share a mistake.

pub mod demo;
mod emulator;
mod engine;
mod error;
pub mod faults;
pub mod fixture;
mod functions;
pub mod generator;
mod results;
mod server;
mod statements;
pub mod types;
mod workspace;

pub use emulator::{ColumnChange, Emulator, EmulatorConfig};
pub use error::Error;
pub use results::ChunkPolicy;
pub use server::{RunningEmulator, start};
pub use workspace::{
    CatalogEntry, EmuTable, Grant, Principal, PrincipalKind, Relation, SchemaEntry, Securable, TableEntry, Token, Warehouse,
    WarehouseCounters, WarehouseState, Workspace,
};

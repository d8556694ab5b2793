//! Test connection: the product page's check, made to explain every problem.
//!
//! Checks run in order and stop at the first one that makes the rest
//! meaningless (a bad URL, a refused token, a missing warehouse). Each check
//! has a detail and, when something must change, a hint with the exact fix.

use std::time::Duration;

use serde::Serialize;

use crate::client::{Client, ClientOptions, ConnectionSettings, Credentials, check_credentials};
use crate::error::Error;
use crate::settings::{AllowHosts, WarehouseId, WorkspaceUrl};
use crate::sql::{TableName, quote_ident};
use crate::statement::Statement;

/// A source table to check, from a pipeline's settings.
#[derive(Debug, Clone)]
pub struct TableCheck {
    pub pipeline: String,
    /// As configured: `[catalog.]schema.table`.
    pub source: String,
    /// Columns the pipeline reads.
    pub columns: Vec<String>,
}

/// What Test connection is given: the connect form, raw.
#[derive(Debug, Clone)]
pub struct CheckInput {
    pub workspace_url: String,
    pub http_path: String,
    pub credentials: Credentials,
    pub default_catalog: Option<String>,
    pub allow_hosts: Vec<String>,
    pub tables: Vec<TableCheck>,
}

/// One line of the checklist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
    /// What to do; also set on a passing check that deserves a warning.
    pub hint: Option<String>,
}

/// The whole answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub ok: bool,
    pub checks: Vec<Check>,
    pub catalogs: Vec<String>,
}

impl Report {
    fn pass(&mut self, name: &str, detail: impl Into<String>) {
        self.checks.push(Check { name: name.into(), ok: true, detail: detail.into(), hint: None });
    }
    fn warn(&mut self, name: &str, detail: impl Into<String>, hint: impl Into<String>) {
        self.checks.push(Check { name: name.into(), ok: true, detail: detail.into(), hint: Some(hint.into()) });
    }
    fn fail(&mut self, name: &str, e: &Error) {
        self.ok = false;
        self.checks.push(Check { name: name.into(), ok: false, detail: e.to_string(), hint: Some(e.hint()) });
    }
    fn fail_with(&mut self, name: &str, detail: impl Into<String>, hint: impl Into<String>) {
        self.ok = false;
        self.checks.push(Check { name: name.into(), ok: false, detail: detail.into(), hint: Some(hint.into()) });
    }

    /// The human checklist: ✓/✗, the detail, and the fix under a failure.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let width = self.checks.iter().map(|c| c.name.chars().count()).max().unwrap_or(0);
        for c in &self.checks {
            let mark = if c.ok { "✓" } else { "✗" };
            out.push_str(&format!("{mark} {:width$}  {}\n", c.name, c.detail));
            if let Some(h) = &c.hint {
                let lead = if c.ok { "note" } else { "fix" };
                out.push_str(&format!("  {:width$}  {lead}: {h}\n", ""));
            }
        }
        out.push_str(if self.ok { "Connection OK.\n" } else { "Connection test failed.\n" });
        out
    }
}

/// Runs Test connection with production timeouts.
pub async fn test_connection(input: &CheckInput) -> Report {
    test_connection_with(input, ClientOptions::default()).await
}

/// Runs Test connection with the given client options (tests shorten the retry budget).
pub async fn test_connection_with(input: &CheckInput, options: ClientOptions) -> Report {
    let mut r = Report { ok: true, checks: Vec::new(), catalogs: Vec::new() };
    let allow = match AllowHosts::parse(&input.allow_hosts) {
        Ok(a) => a,
        Err(reason) => {
            r.fail("Allow hosts", &Error::InvalidSetting { field: "allow_hosts", reason });
            return r;
        }
    };
    let workspace = match WorkspaceUrl::parse(&input.workspace_url, &allow) {
        Ok(w) => {
            let cloud = match w.cloud() {
                crate::settings::Cloud::Aws => "AWS",
                crate::settings::Cloud::Azure => "Azure",
                crate::settings::Cloud::Gcp => "GCP",
                crate::settings::Cloud::Other => "allow-listed host",
            };
            r.pass("Workspace URL", format!("{} ({cloud})", w.base()));
            w
        }
        Err(e) => {
            r.fail("Workspace URL", &e);
            return r;
        }
    };
    let warehouse = match WarehouseId::from_http_path(&input.http_path) {
        Ok(w) => {
            r.pass("HTTP path", format!("SQL warehouse {w}"));
            w
        }
        Err(e) => {
            r.fail("HTTP path", &e);
            return r;
        }
    };
    if let Err(e) = check_credentials(&input.credentials) {
        r.fail("Authentication", &e);
        return r;
    }
    let settings = ConnectionSettings {
        workspace,
        warehouse,
        credentials: input.credentials.clone(),
        default_catalog: input.default_catalog.clone().filter(|c| !c.trim().is_empty()),
        allow_hosts: allow,
    };
    let client = match Client::with_options(settings, options) {
        Ok(c) => c,
        Err(e) => {
            r.fail("Authentication", &e);
            return r;
        }
    };

    // Who are we?
    match client.me().await {
        Ok(me) if me.is_service_principal => {
            let name = me.display_name.map(|d| format!(" ({d})")).unwrap_or_default();
            r.pass(
                "Authentication",
                format!("authenticated as service principal {}{name} with {}", me.user_name, input.credentials.describe()),
            );
        }
        Ok(me) => r.warn(
            "Authentication",
            format!("authenticated as the user {} with a personal access token", me.user_name),
            "A personal access token ties the integration to a person and expires under workspace policy; \
             use a service principal (OAuth client credentials or its token) for a long-lived integration.",
        ),
        Err(e) => {
            r.fail("Authentication", &e);
            return r;
        }
    }

    // The warehouse: exists, state, CAN USE.
    match client.warehouse().await {
        Ok(w) => {
            let auto = match w.auto_resume {
                Some(false) => "starts manually",
                _ => "auto-starts on query",
            };
            let stop = w
                .auto_stop_mins
                .map(|m| if m == 0 { ", never auto-stops".to_string() } else { format!(", auto-stops after {m} min") })
                .unwrap_or_default();
            let name = if w.name.is_empty() { w.id.clone() } else { format!("{} ({})", w.name, w.id) };
            if matches!(w.state.as_str(), "STOPPED" | "STOPPING") && w.auto_resume == Some(false) {
                r.fail("Warehouse", &Error::WarehouseStopped { warehouse: name });
                return r;
            }
            if w.auto_stop_mins == Some(0) {
                r.warn(
                    "Warehouse",
                    format!("{name} is {}, {auto}{stop}", w.state),
                    "Warehouses are billed by uptime; set a short auto-stop (e.g. 10 minutes) since Trig syncs every 15 minutes at most.",
                );
            } else {
                r.pass("Warehouse", format!("{name} is {}, {auto}{stop}", w.state));
            }
        }
        Err(e @ Error::WarehouseNotFound { .. }) => {
            // Say which warehouses this principal could use instead.
            let hint = match client.list_warehouses().await {
                Ok(list) if !list.is_empty() => format!(
                    "{} This principal may use: {}.",
                    e.hint(),
                    list.iter()
                        .map(|w| format!("{} (HTTP path /sql/1.0/warehouses/{})", if w.name.is_empty() { &w.id } else { &w.name }, w.id))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                Ok(_) => format!("{} This principal may use no SQL warehouse at all; give it Can use on one.", e.hint()),
                Err(_) => e.hint(),
            };
            r.fail_with("Warehouse", e.to_string(), hint);
            return r;
        }
        Err(e) => {
            let name = if matches!(e, Error::NoWarehouseAccess { .. }) { "Warehouse access" } else { "Warehouse" };
            r.fail(name, &e);
            return r;
        }
    }
    let started = std::time::Instant::now();
    match client.query_text(&Statement::new("SELECT 1 AS ok"), 1).await {
        Ok(_) => {
            let waited = started.elapsed();
            let note = if waited > Duration::from_secs(2) {
                format!(" (the warehouse took {}s to answer)", waited.as_secs())
            } else {
                String::new()
            };
            let tags = if client.query_tags_refused() {
                "; this workspace refuses query_tags, so Trig's statements go untagged in the query history"
            } else {
                ""
            };
            r.pass("Warehouse access", format!("CAN USE: a test query ran{note}{tags}"));
        }
        Err(e) => {
            r.fail("Warehouse access", &e);
            return r;
        }
    }

    // Catalogs, as the product page's check.
    match client.list_catalogs().await {
        Ok(cats) => {
            r.catalogs = cats.iter().map(|c| c.name.clone()).collect();
            if r.catalogs.is_empty() {
                r.fail_with(
                    "Catalogs",
                    "the principal cannot see any catalog",
                    format!("Run: GRANT USE CATALOG ON CATALOG <catalog> TO `{}`;", client.principal().unwrap_or("<principal>")),
                );
            } else {
                r.pass("Catalogs", format!("{} visible: {}", r.catalogs.len(), r.catalogs.join(", ")));
            }
        }
        Err(e) => {
            r.fail("Catalogs", &e);
            return r;
        }
    }
    if let Some(dc) = &client.settings().default_catalog {
        if r.catalogs.iter().any(|c| c == dc) {
            r.pass("Default catalog", format!("`{dc}` is visible"));
        } else {
            let e = Error::MissingPrivilege {
                privilege: "USE CATALOG".into(),
                object_type: "CATALOG".into(),
                object: quote_ident(dc),
                principal: client.principal().map(str::to_string),
            };
            r.fail_with("Default catalog", format!("`{dc}` is not among the visible catalogs (it does not exist, or {e})"), e.hint());
        }
    }

    for t in &input.tables {
        check_table(&client, t, &mut r).await;
    }
    r
}

async fn check_table(client: &Client, t: &TableCheck, r: &mut Report) {
    let label = format!("Source {}", t.pipeline);
    let table = match TableName::parse(&t.source, client.settings().default_catalog.as_deref()) {
        Ok(n) => n,
        Err(e) => {
            r.fail(&label, &e);
            return;
        }
    };
    let principal = client.principal().unwrap_or_default().to_string();
    // Privileges: read the principal's own effective privileges on the table,
    // which include those inherited from the schema and catalog.
    let mut missing = Vec::new();
    match client.effective_privileges("table", &table.full_name(), &principal).await {
        Ok(privs) => {
            let has = |p: &str| privs.iter().any(|x| x.privilege == p || x.privilege == "ALL_PRIVILEGES");
            for (p, kind, object) in [
                ("USE_CATALOG", "CATALOG", table.catalog_quoted()),
                ("USE_SCHEMA", "SCHEMA", table.schema_quoted()),
                ("SELECT", "TABLE", table.quoted()),
            ] {
                if !has(p) {
                    missing.push(Error::MissingPrivilege {
                        privilege: p.replace('_', " "),
                        object_type: kind.into(),
                        object,
                        principal: Some(principal.clone()),
                    });
                }
            }
        }
        // Not allowed to read privileges, or the table is hidden: reading the table tells.
        Err(e) => tracing::debug!(error = %e, "effective permissions unavailable; relying on reading the table"),
    }
    if !missing.is_empty() {
        r.ok = false;
        let detail = missing.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ");
        let hint = missing.iter().map(|e| e.hint().trim_start_matches("Run: ").to_string()).collect::<Vec<_>>().join(" ");
        r.checks.push(Check {
            name: label,
            ok: false,
            detail: format!("{}: {detail}", table.full_name()),
            hint: Some(format!("Run: {hint}")),
        });
        return;
    }
    let columns = match client.table_columns(&table).await {
        Ok(c) => c,
        Err(e) => {
            r.fail(&label, &e);
            return;
        }
    };
    let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
    let absent: Vec<String> = t
        .columns
        .iter()
        .filter(|c| !names.iter().any(|n| n.eq_ignore_ascii_case(c)))
        .map(|c| match crate::suggest::closest(c, &names) {
            Some(s) => format!("`{c}` (closest: `{s}`)"),
            None => format!("`{c}`"),
        })
        .collect();
    if !absent.is_empty() {
        r.fail_with(
            &label,
            format!("{} has no column {}", table.full_name(), absent.join(", ")),
            "Update the pipeline's column mapping to the table's current columns, or restore the column in the view.",
        );
        return;
    }
    // Prove the read path end to end (a view whose owner lost access fails only here).
    let cols = if t.columns.is_empty() { "*".to_string() } else { t.columns.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ") };
    match client.query_text(&Statement::new(format!("SELECT {cols} FROM {} LIMIT 0", table.quoted())), 1).await {
        Ok(_) if t.columns.is_empty() => {
            r.pass(&label, format!("{}: USE CATALOG, USE SCHEMA and SELECT; a test read worked", table.full_name()))
        }
        Ok(_) => r.pass(
            &label,
            format!(
                "{}: USE CATALOG, USE SCHEMA, SELECT; all {} configured columns present; a test read worked",
                table.full_name(),
                t.columns.len()
            ),
        ),
        Err(e) => r.fail(&label, &e),
    }
}

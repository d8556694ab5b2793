//! What Trig's runs cost a customer's warehouse: the uptime they caused per
//! day, the wake-ups and the statements, and — when the schedule and the
//! auto-stop keep the warehouse up most of the day — the setting that would
//! cut it. `GET /api/v1/tenants/{t}/warehouses`.
//!
//! The model: a run that found its warehouse not running woke it; the
//! warehouse then stays up until `auto_stop` after the last run that keeps
//! it busy. So Trig's uptime is the union of `[start, end + auto_stop]`
//! over chains of runs that begin with a wake-up (a run that found it
//! running outside such a chain rode on someone else's uptime). Each day
//! (UTC) gets the part of the union that falls in it.

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Serialize;
use serde_json::{Value, json};
use trig_store::Micros;

use crate::Error;
use crate::api::{AppState, json_response};
use crate::auth::Principal;
use crate::connections::tenant_of;

const DAY: Micros = 86_400_000_000;
const MIN: Micros = 60_000_000;
/// The most runs one report reads (a week of 15-minute runs of 1,000 pipelines).
const RUNS_READ: usize = 700_000;
/// How long a warehouse's settings, as read, are shown without asking again.
const WAREHOUSE_TTL: std::time::Duration = std::time::Duration::from_secs(60);
/// The most warehouses remembered at once (the oldest are dropped first).
const WAREHOUSE_MAX: usize = 4096;

/// The warehouses' settings as last read (or why they could not be), per
/// tenant and warehouse, for [`WAREHOUSE_TTL`]: the settings page shows the
/// cost panel without a call to the customer's workspace on every load. A
/// connection saved or deleted in this process forgets its tenant's; another
/// process's change shows within the TTL.
#[derive(Debug, Default)]
pub struct WarehouseCache {
    entries: std::sync::Mutex<HashMap<String, (std::time::Instant, WarehouseRead)>>,
}

/// A warehouse's settings, or why they could not be read.
type WarehouseRead = Result<databricks::Warehouse, String>;

impl WarehouseCache {
    fn key(t: trig_store::TenantId, c: &trig_config::ConnectionConfig) -> String {
        format!("{}|{}{}", t.0, c.workspace.base(), c.http_path())
    }

    fn fresh(&self, key: &str) -> Option<WarehouseRead> {
        let m = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        m.get(key).filter(|(at, _)| at.elapsed() < WAREHOUSE_TTL).map(|(_, v)| v.clone())
    }

    fn keep(&self, key: String, value: WarehouseRead) {
        let mut m = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if m.len() >= WAREHOUSE_MAX {
            m.retain(|_, (at, _)| at.elapsed() < WAREHOUSE_TTL);
            while m.len() >= WAREHOUSE_MAX {
                let Some(oldest) = m.iter().min_by_key(|(_, (at, _))| *at).map(|(k, _)| k.clone()) else { break };
                m.remove(&oldest);
            }
        }
        m.insert(key, (std::time::Instant::now(), value));
    }

    /// Forgets a tenant's warehouses (one of its connections changed).
    pub fn forget(&self, t: trig_store::TenantId) {
        let prefix = format!("{}|", t.0);
        self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner).retain(|k, _| !k.starts_with(&prefix));
    }

    /// The warehouse a connection names: as read within the TTL, else read now.
    pub async fn warehouse(&self, t: trig_store::TenantId, c: &trig_config::ConnectionConfig) -> Result<databricks::Warehouse, String> {
        let key = Self::key(t, c);
        if let Some(v) = self.fresh(&key) {
            return v;
        }
        let read = match c.settings().map_err(|e| e.message).and_then(|s| databricks::Client::new(s).map_err(|e| e.to_string())) {
            Ok(client) => client.warehouse().await.map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        self.keep(key, read.clone());
        read
    }
}

/// One run, as the cost model sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunSpan {
    pub start: Micros,
    pub end: Micros,
    /// The warehouse was not running when the run began.
    pub woke: bool,
    pub statements: u64,
}

/// A day's figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Day {
    pub day: String,
    pub uptime_caused_minutes: f64,
    pub wakeups: u64,
    pub statements: u64,
}

/// The uptime Trig caused per day, with its wake-ups and statements.
pub fn per_day(runs: &[RunSpan], auto_stop: Micros) -> Vec<Day> {
    let mut runs = runs.to_vec();
    runs.sort_by_key(|r| r.start);
    let mut spans: Vec<(Micros, Micros)> = Vec::new();
    let mut days: BTreeMap<i64, Day> = BTreeMap::new();
    for r in &runs {
        let d = days.entry(r.start.div_euclid(DAY)).or_default();
        d.statements += r.statements;
        let until = r.end.max(r.start) + auto_stop;
        match spans.last_mut() {
            // Inside Trig's own uptime: it keeps the warehouse up longer.
            Some((_, end)) if r.start <= *end => *end = (*end).max(until),
            _ if r.woke => {
                d.wakeups += 1;
                spans.push((r.start, until));
            }
            // Found it running on someone else's uptime.
            _ => {}
        }
    }
    for (from, to) in spans {
        let mut t = from;
        while t < to {
            let day = t.div_euclid(DAY);
            let end = ((day + 1) * DAY).min(to);
            days.entry(day).or_default().uptime_caused_minutes += (end - t) as f64 / MIN as f64;
            t = end;
        }
    }
    days.into_iter()
        .map(|(day, mut d)| {
            d.day = chrono::DateTime::from_timestamp(day * 86_400, 0).map(|t| t.format("%Y-%m-%d").to_string()).unwrap_or_default();
            d.uptime_caused_minutes = (d.uptime_caused_minutes * 10.0).round() / 10.0;
            d
        })
        .collect()
}

/// When Trig keeps a warehouse up most of the day: what to change, and the estimate with it.
pub fn suggestion(runs: &[RunSpan], auto_stop_mins: i64, serverless: bool, shortest_schedule_mins: Option<i64>) -> Option<Value> {
    let days = per_day(runs, auto_stop_mins * MIN);
    let full: Vec<&Day> = days.iter().filter(|d| d.statements > 0).collect();
    if full.is_empty() {
        return None;
    }
    let avg = full.iter().map(|d| d.uptime_caused_minutes).sum::<f64>() / full.len() as f64;
    if avg < 12.0 * 60.0 {
        return None;
    }
    let lowest = if serverless { 5 } else { 10 };
    let target = lowest.min(auto_stop_mins);
    let with = per_day(runs, target * MIN);
    let with_avg = with.iter().filter(|d| d.statements > 0).map(|d| d.uptime_caused_minutes).sum::<f64>() / full.len() as f64;
    let schedule = shortest_schedule_mins.map(|s| format!(" (runs every {s} min)")).unwrap_or_default();
    let mut text = format!(
        "Trig's runs{schedule} keep this warehouse up about {:.0} h a day: its auto-stop ({auto_stop_mins} min) is longer than the gaps between runs, so it rarely stops.",
        avg / 60.0
    );
    if target < auto_stop_mins {
        text += &format!(" With auto-stop at {target} min it would be up about {:.0} h a day.", with_avg / 60.0);
    }
    text += " Or run the events pipelines less often (e.g. every hour), or on a warehouse that is up anyway.";
    Some(json!({
        "text": text,
        "uptime_caused_hours_per_day": (avg / 6.0).round() / 10.0,
        "suggested_auto_stop_mins": target,
        "estimated_hours_per_day_with_it": (with_avg / 6.0).round() / 10.0,
    }))
}

/// One warehouse's cost, as the API and the settings page show it.
#[derive(Debug, Clone, Serialize)]
pub struct WarehouseCost {
    pub warehouse_id: String,
    pub name: String,
    pub connections: Vec<String>,
    pub auto_stop_mins: Option<i64>,
    pub days: Vec<Day>,
    pub suggestion: Option<Value>,
    /// Why the warehouse's settings could not be read.
    pub error: Option<String>,
}

impl WarehouseCost {
    /// The suggestion's sentence, if there is one.
    pub fn suggestion_text(&self) -> Option<&str> {
        self.suggestion.as_ref().and_then(|s| s.get("text")).and_then(Value::as_str)
    }
}

pub(crate) async fn warehouses(State(state): State<AppState>, Path(t): Path<String>, who: Principal) -> Result<Response, Error> {
    let t = tenant_of(&state, &who, &t).await?;
    let (out, since) = report(&state, &t).await?;
    Ok(json_response(StatusCode::OK, &json!({ "warehouses": out, "since": trig_store::time::rfc3339(since) })))
}

/// Every warehouse of a tenant's connections over the last 7 days, and since when.
pub(crate) async fn report(state: &AppState, t: &trig_store::TenantInfo) -> Result<(Vec<WarehouseCost>, Micros), Error> {
    let tc = crate::pipelines::tenant_config(state, t).await?;
    let since = chrono::Utc::now().timestamp_micros() - 7 * DAY;
    // Only the times of the last 7 days' runs (50 pipelines every 15 minutes are 33,600).
    let runs = state.store.run_times(t.id, since, RUNS_READ).await.map_err(Error::from_store)?;
    // Warehouse (its workspace and HTTP path) → the connections on it.
    let mut by_warehouse: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, c) in &tc.config.connections {
        by_warehouse.entry(format!("{}{}", c.workspace.base(), c.http_path())).or_default().push(name.clone());
    }
    let pipeline_conn: HashMap<&str, (&str, i64)> =
        tc.config.pipelines.values().map(|p| (p.name.as_str(), (p.connection.as_str(), (p.schedule.as_secs() / 60) as i64))).collect();
    let mut out = Vec::new();
    for conns in by_warehouse.values() {
        let c = &tc.config.connections[&conns[0]];
        let spans: Vec<RunSpan> = runs
            .iter()
            .filter(|r| pipeline_conn.get(r.pipeline.as_str()).is_some_and(|(conn, _)| conns.iter().any(|n| n == conn)))
            .map(|r| RunSpan {
                start: r.started_at,
                end: r.ended_at.unwrap_or(r.started_at),
                woke: r.warehouse_state.as_deref().is_some_and(|s| s != "RUNNING"),
                statements: r.statements,
            })
            .collect();
        let shortest = pipeline_conn.values().filter(|(conn, _)| conns.iter().any(|n| n == conn)).map(|(_, s)| *s).min();
        let info = state.warehouses.warehouse(t.id, c).await;
        let (name, auto_stop, serverless, err) = match &info {
            Ok(w) => (w.name.clone(), w.auto_stop_mins, w.enable_serverless_compute.unwrap_or(false), None),
            Err(e) => (String::new(), None, false, Some(e.clone())),
        };
        let stop = auto_stop.unwrap_or(10).max(0);
        out.push(WarehouseCost {
            warehouse_id: c.warehouse.as_str().to_string(),
            name,
            connections: conns.clone(),
            auto_stop_mins: auto_stop,
            days: per_day(&spans, stop * MIN),
            suggestion: auto_stop.and_then(|a| suggestion(&spans, a, serverless, shortest)),
            error: err,
        });
    }
    Ok((out, since))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_warehouse_cache_forgets_a_tenant_and_stays_bounded() {
        let c = WarehouseCache::default();
        c.keep("1|https://a/sql".into(), Err("refused".into()));
        c.keep("2|https://a/sql".into(), Err("other".into()));
        assert_eq!(c.fresh("1|https://a/sql").map(|r| r.unwrap_err()).as_deref(), Some("refused"));
        c.forget(trig_store::TenantId(1));
        assert!(c.fresh("1|https://a/sql").is_none(), "a tenant's connection changed: read again");
        assert!(c.fresh("2|https://a/sql").is_some(), "another tenant's stays");
        for i in 0..WAREHOUSE_MAX + 10 {
            c.keep(format!("3|{i}"), Err(String::new()));
        }
        assert_eq!(c.entries.lock().unwrap().len(), WAREHOUSE_MAX);
        assert!(c.fresh(&format!("3|{}", WAREHOUSE_MAX + 9)).is_some(), "the newest is kept, the oldest dropped");
    }

    fn run(start_min: i64, mins: i64, woke: bool) -> RunSpan {
        RunSpan { start: start_min * MIN, end: (start_min + mins) * MIN, woke, statements: 2 }
    }

    #[test]
    fn a_wake_up_costs_the_run_and_the_auto_stop_and_later_runs_extend_it() {
        // Woken at 0:00 for 2 min, auto-stop 10: up until 0:12. A run at 0:05 keeps it to 0:17.
        let days = per_day(&[run(0, 2, true), run(5, 2, false)], 10 * MIN);
        assert_eq!(days.len(), 1);
        assert_eq!((days[0].uptime_caused_minutes, days[0].wakeups, days[0].statements), (17.0, 1, 4));
        // A run that found the warehouse up on someone else's uptime costs nothing.
        let days = per_day(&[run(60, 2, false)], 10 * MIN);
        assert_eq!((days[0].uptime_caused_minutes, days[0].wakeups), (0.0, 0));
        // Uptime across midnight is split between the days.
        let days = per_day(&[run(24 * 60 - 5, 1, true)], 10 * MIN);
        assert_eq!(days.iter().map(|d| d.uptime_caused_minutes).collect::<Vec<_>>(), vec![5.0, 6.0]);
    }

    #[test]
    fn a_schedule_shorter_than_the_auto_stop_keeps_the_warehouse_up_and_says_what_to_change() {
        // Every 15 min for a day, 1 min each, auto-stop 20: never stops.
        let runs: Vec<RunSpan> = (0..96).map(|i| run(i * 15, 1, i == 0)).collect();
        let s = suggestion(&runs, 20, true, Some(15)).expect("a suggestion");
        assert_eq!(s["suggested_auto_stop_mins"], 5);
        assert!(s["uptime_caused_hours_per_day"].as_f64().unwrap() > 23.0, "{s}");
        assert!(s["estimated_hours_per_day_with_it"].as_f64().unwrap() < 12.0, "{s}");
        assert!(s["text"].as_str().unwrap().contains("runs every 15 min"), "{s}");
        // Hourly runs with a 10 min auto-stop: no suggestion.
        let hourly: Vec<RunSpan> = (0..24).map(|i| run(i * 60, 1, true)).collect();
        assert_eq!(suggestion(&hourly, 10, false, Some(60)), None);
    }
}

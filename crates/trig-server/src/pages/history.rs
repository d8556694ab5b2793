//! `/settings/integrations/databricks/pipelines/{p}`: a pipeline's status,
//! the timeline of its runs and configuration changes (paged: one page of
//! runs and the changes between them), the chart of the last 7 days, and
//! quarantine samples with their reasons.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::Value;
use trig_store::Micros;

use super::session::Session;
use super::settings::{PipeRow, RunView};
use super::{Chrome, PageError, html, tenant_of, when};
use crate::Error;
use crate::api::AppState;
use crate::connections::resource_name;

/// Runs per page of history.
pub const PAGE: usize = 25;
/// The chart's days, and the most runs it reads (15-minute runs for 7 days are 672).
const CHART_DAYS: i64 = 7;
const CHART_MAX_RUNS: usize = 1000;
/// Quarantine samples shown.
const SAMPLES: usize = 20;

/// One line of the timeline.
#[derive(Debug, Clone)]
pub enum Item {
    Run(RunView),
    Change { at: String, what: String, actor: String, note: Option<String>, details: String },
}

#[derive(Debug, Clone)]
pub struct Sample {
    pub reason: String,
    pub row: String,
    pub at: String,
}

#[derive(Template)]
#[template(path = "pipeline.html")]
struct PipelinePage {
    chrome: Option<Chrome>,
    pipe: PipeRow,
    chart: String,
    timeline: Vec<Item>,
    next: Option<String>,
    first_page: bool,
    samples: Vec<Sample>,
    flash: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct HistoryQuery {
    after: Option<String>,
    requested: Option<String>,
}

pub(super) async fn page(
    State(state): State<AppState>,
    s: Session,
    Path(p): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Result<Response, PageError> {
    let (t, chrome) = tenant_of(&state, &s).await?;
    let with = |e: Error| PageError::with(e, chrome.clone());
    let p = resource_name("pipeline", &p).map_err(with)?;
    let r = crate::pipelines::record(&state, &t, &p).await.map_err(with)?;
    let store = &state.store;
    let mut runs = store.runs_page(t.id, &p, q.after.as_deref(), PAGE + 1).await.map_err(Error::from_store)?;
    let more = runs.len() > PAGE;
    runs.truncate(PAGE);
    let next = if more { runs.last().map(|r| r.run_id.clone()) } else { None };
    let last = if q.after.is_none() {
        runs.first().cloned()
    } else {
        store.runs(t.id, Some(&p), 1).await.map_err(Error::from_store)?.into_iter().next()
    };

    // The changes between this page's runs: from its oldest run (or the beginning, on the last page) to its newest (now, on the first).
    let newest: Micros = if q.after.is_none() { Micros::MAX } else { runs.first().map(|r| r.started_at).unwrap_or(Micros::MAX) };
    let oldest: Micros = if more { runs.last().map(|r| r.started_at).unwrap_or(Micros::MIN) } else { Micros::MIN };
    let mut changes = store.changes(t.id, "pipeline", &p, 200).await.map_err(Error::from_store)?;
    if let Some(c) = r.definition.as_ref().and_then(|d| d.get("connection")).and_then(Value::as_str) {
        changes.extend(store.changes(t.id, "connection", c, 200).await.map_err(Error::from_store)?);
    }
    let mut items: Vec<(Micros, Item)> = runs.iter().map(|r| (r.started_at, Item::Run(RunView::of(r)))).collect();
    for c in changes.iter().filter(|c| c.at >= oldest && c.at < newest) {
        let fields =
            |v: &Option<Value>| v.as_ref().and_then(Value::as_object).map(|o| o.keys().cloned().collect::<Vec<_>>()).unwrap_or_default();
        let changed: Vec<String> = {
            let (b, a) = (c.before.as_ref(), c.after.as_ref());
            let mut keys = fields(&c.before);
            keys.extend(fields(&c.after));
            keys.sort();
            keys.dedup();
            keys.into_iter().filter(|k| b.and_then(|b| b.get(k)) != a.and_then(|a| a.get(k))).collect()
        };
        let details = if changed.is_empty() { String::new() } else { format!("changed: {}", changed.join(", ")) };
        items.push((
            c.at,
            Item::Change {
                at: when(c.at),
                what: format!("{} `{}` {}", c.subject, c.name, c.action),
                actor: c.actor.clone(),
                note: c.note.clone(),
                details,
            },
        ));
    }
    items.sort_by_key(|i| std::cmp::Reverse(i.0));

    let now = state.clock.now();
    let from = now - CHART_DAYS * 86_400_000_000;
    let recent = store.runs(t.id, Some(&p), CHART_MAX_RUNS).await.map_err(Error::from_store)?;
    let mut points: Vec<super::chart::Point> = recent
        .iter()
        .filter(|r| r.started_at >= from)
        .map(|r| super::chart::Point {
            at: r.started_at,
            rows: r.counts.rows_read,
            seconds: r.ended_at.map(|e| (e - r.started_at) as f64 / 1e6).unwrap_or(0.0),
            failed: matches!(r.status.as_str(), "failed" | "interrupted"),
        })
        .collect();
    points.sort_by_key(|p| p.at);
    let chart = super::chart::svg(&points, from, now);

    let samples = store
        .quarantine_of(r.key, 0, SAMPLES)
        .await
        .map_err(Error::from_store)?
        .into_iter()
        .map(|(_, v)| Sample {
            reason: v.get("reason").and_then(Value::as_str).unwrap_or("").to_string(),
            row: v.get("row").map(|r| r.to_string()).unwrap_or_default(),
            at: v.get("at").and_then(Value::as_str).unwrap_or("").to_string(),
        })
        .collect();
    let flash = q.requested.map(|what| match what.as_str() {
        "full_refresh" => "Full refresh requested: it starts next and re-reads the whole source. Reload to see it here.".to_string(),
        _ => "Sync requested: it starts next. Reload to see its figures here.".to_string(),
    });
    let page = PipelinePage {
        chrome: Some(chrome),
        pipe: PipeRow::of(&r, last.as_ref()),
        chart,
        timeline: items.into_iter().map(|(_, i)| i).collect(),
        next,
        first_page: q.after.is_none(),
        samples,
        flash,
    };
    Ok(html(StatusCode::OK, &page))
}

//! The events pipeline.

use arrow_array::{ArrayRef, RecordBatch};
use serde_json::{Map, Value};
use trig_config::{EventsSpec, UserIdKind};
use trig_store::{Checkpoint, EventBatch, EventRow, IdentityRule, Micros, Quarantined, RunCounts, Slot, SyncRun};

use crate::pump::{self, Sink};
use crate::query::{self, Query, Select};
use crate::values::{instant_at, json_at, normalise_email, text_at};
use crate::window::{Window, incremental_start, split, upper_bound};
use crate::{Ctx, DryRun, Error, Trigger, micros, now_micros};

/// Where each mapped column is in the projection.
struct Layout {
    columns: Vec<String>,
    id: usize,
    name: usize,
    ts: usize,
    user: usize,
    email: Option<usize>,
    properties: Vec<(String, usize)>,
}

impl Layout {
    fn new(spec: &EventsSpec) -> Layout {
        let columns = spec.columns();
        let at = |c: &str| columns.iter().position(|x| x == c).expect("every mapped column is projected");
        Layout {
            id: at(&spec.event_id),
            name: at(&spec.event_name),
            ts: at(&spec.timestamp),
            user: at(&spec.user_id),
            email: spec.email.as_deref().map(at),
            properties: spec.properties.iter().map(|p| (p.clone(), at(p))).collect(),
            columns,
        }
    }
}

type CheckpointsFn = Box<dyn Fn(usize, &Window) -> Vec<Checkpoint> + Send + Sync>;

/// One window's plan: what to read and which cursors its last batch moves.
struct Plan {
    windows: Vec<Window>,
    backfill: bool,
    /// Also read NULL-cursor rows in the first window (so they are quarantined, not invisible).
    include_null_first: bool,
    /// The checkpoints to commit with each window's last batch.
    checkpoints: CheckpointsFn,
    /// When there is nothing to read, the checkpoints to commit anyway.
    empty: Vec<Checkpoint>,
}

async fn source_start(ctx: &Ctx<'_>, spec: &EventsSpec) -> Result<Option<Micros>, Error> {
    if let Some(t) = spec.backfill_from {
        return Ok(Some(t.timestamp_micros()));
    }
    let q = query::min_cursor(&ctx.table, spec.cursor_column(), spec.filter.as_deref());
    if let Some(f) = &ctx.options.on_statement {
        f(&q);
    }
    let stmt = q.statement().tag("trig_run_id", ctx.run_id.clone()).tag("trig_pipeline", ctx.pipeline.name.clone());
    let r = tokio::select! {
        r = ctx.client.query_text(&stmt, 1) => r?,
        _ = ctx.cancel.cancelled() => return Err(Error::Cancelled),
    };
    let first = r.rows.first().and_then(|row| row.first().cloned().flatten());
    match first {
        None => Ok(None),
        Some(s) => crate::values::parse_instant(&s, &spec.timezone).map(|t| Some(t - 1)).map_err(|e| {
            Error::Databricks(databricks::Error::Protocol { detail: format!("the first cursor value `{s}` does not parse: {e}") })
        }),
    }
}

async fn plan(ctx: &Ctx<'_>, spec: &EventsSpec, trigger: Trigger, prev: Option<Micros>) -> Result<Plan, Error> {
    let now = now_micros();
    let upper = upper_bound(now, micros(ctx.options.settle));
    let max = micros(ctx.options.max_window);
    let store = ctx.store;
    Ok(match (trigger, prev) {
        (Trigger::Schedule | Trigger::Manual, Some(cursor)) => {
            let start = incremental_start(cursor, micros(spec.lookback));
            let live = move |_: usize, w: &Window| vec![Checkpoint { slot: Slot::Live, value: Some(w.to.max(cursor)) }];
            Plan {
                windows: split(start, upper, max),
                backfill: false,
                include_null_first: false,
                checkpoints: Box::new(live),
                empty: vec![Checkpoint { slot: Slot::Live, value: Some(upper.max(cursor)) }],
            }
        }
        (Trigger::Schedule | Trigger::Manual, None) => {
            // The first sync is a backfill, checkpointed window by window.
            let start = source_start(ctx, spec).await?;
            Plan {
                windows: start.map(|s| split(s, upper, max)).unwrap_or_default(),
                backfill: true,
                include_null_first: true,
                checkpoints: Box::new(|_, w: &Window| vec![Checkpoint { slot: Slot::Live, value: Some(w.to) }]),
                empty: vec![Checkpoint { slot: Slot::Live, value: Some(upper) }],
            }
        }
        (Trigger::FullRefresh, _) => {
            let resume = store.cursor(&ctx.pipeline.name, Slot::FullRefresh).await?;
            let start = match resume {
                Some(r) => Some(r),
                None => source_start(ctx, spec).await?,
            };
            let windows = start.map(|s| split(s, upper, max)).unwrap_or_default();
            let last = windows.len().saturating_sub(1);
            let live = prev.map_or(upper, |p| p.max(upper));
            Plan {
                windows,
                backfill: true,
                include_null_first: resume.is_none(),
                checkpoints: Box::new(move |i, w: &Window| {
                    if i == last {
                        vec![Checkpoint { slot: Slot::FullRefresh, value: None }, Checkpoint { slot: Slot::Live, value: Some(live) }]
                    } else {
                        vec![Checkpoint { slot: Slot::FullRefresh, value: Some(w.to) }]
                    }
                }),
                empty: vec![Checkpoint { slot: Slot::FullRefresh, value: None }, Checkpoint { slot: Slot::Live, value: Some(live) }],
            }
        }
        (Trigger::Replay { from, to }, _) => Plan {
            windows: split(from, to.min(upper), max),
            backfill: true,
            include_null_first: false,
            checkpoints: Box::new(|_, _| Vec::new()),
            empty: Vec::new(),
        },
    })
}

/// Maps one record batch: valid rows, and quarantined rows with their reason.
struct Mapper<'a> {
    spec: &'a EventsSpec,
    layout: &'a Layout,
    now: Micros,
    tolerance: Micros,
    prev: Option<Micros>,
}

impl Mapper<'_> {
    fn row_json(&self, cols: &[ArrayRef], i: usize) -> String {
        let mut m = Map::new();
        for (name, c) in self.layout.columns.iter().zip(cols) {
            m.insert(name.clone(), json_at(c, i, Some(&self.spec.timezone)));
        }
        Value::Object(m).to_string()
    }

    fn map(&self, batch: &RecordBatch) -> (Vec<EventRow>, Vec<Quarantined>) {
        let cols = batch.columns();
        let mut rows = Vec::with_capacity(batch.num_rows());
        let mut bad = Vec::new();
        for i in 0..batch.num_rows() {
            match self.row(cols, i) {
                Ok(r) => rows.push(r),
                Err((key, reason)) => bad.push(Quarantined { key, reason, row: self.row_json(cols, i) }),
            }
        }
        (rows, bad)
    }

    fn row(&self, cols: &[ArrayRef], i: usize) -> Result<EventRow, (Option<String>, String)> {
        let (l, s) = (self.layout, self.spec);
        let required = |idx: usize, what: &str, col: &str, key: &Option<String>| -> Result<String, (Option<String>, String)> {
            match text_at(&cols[idx], i) {
                Ok(Some(v)) if !v.trim().is_empty() => Ok(v),
                Ok(_) => Err((key.clone(), format!("{what} (`{col}`) is NULL or empty"))),
                Err(e) => Err((key.clone(), format!("{what} (`{col}`): {e}"))),
            }
        };
        let event_id = required(l.id, "event id", &s.event_id, &None)?;
        let key = Some(event_id.clone());
        let name = required(l.name, "event name", &s.event_name, &key)?;
        let ts = match instant_at(&cols[l.ts], i, &s.timezone) {
            Ok(Some(t)) => t,
            Ok(None) => return Err((key, format!("timestamp (`{}`) is NULL", s.timestamp))),
            Err(e) => return Err((key, format!("timestamp (`{}`): {e}", s.timestamp))),
        };
        if ts > self.now + self.tolerance {
            return Err((
                key,
                format!(
                    "timestamp {} is more than {}s in the future; fix the clock that produced it",
                    trig_store::sqlite::rfc3339(ts),
                    self.tolerance / 1_000_000
                ),
            ));
        }
        let user = required(l.user, "user identifier", &s.user_id, &key)?;
        let user_key = match s.user_id_kind {
            UserIdKind::ExternalId => user.trim().to_string(),
            UserIdKind::Email => {
                normalise_email(&user).ok_or_else(|| (key.clone(), format!("user identifier `{user}` is not an email")))?
            }
        };
        let email = match l.email {
            Some(e) => text_at(&cols[e], i).ok().flatten().and_then(|v| normalise_email(&v)),
            None => None,
        };
        // Late: it happened before the cursor the run started from, yet is new
        // to us. With an ingestion-time cursor this is what that cursor catches.
        let late = self.prev.is_some_and(|p| ts <= p);
        let mut props = Map::new();
        for (name, idx) in &l.properties {
            props.insert(name.clone(), json_at(&cols[*idx], i, Some(&s.timezone)));
        }
        Ok(EventRow { event_id, name, ts, user_key, email, properties: Value::Object(props).to_string(), late })
    }
}

fn rule(spec: &EventsSpec) -> IdentityRule {
    match spec.user_id_kind {
        UserIdKind::ExternalId => IdentityRule::ExternalId,
        UserIdKind::Email => IdentityRule::Email,
    }
}

fn wanted(spec: &EventsSpec) -> Vec<(String, String)> {
    let mut w = vec![
        ("event_id".to_string(), spec.event_id.clone()),
        ("event_name".into(), spec.event_name.clone()),
        ("timestamp".into(), spec.timestamp.clone()),
        ("user_id".into(), spec.user_id.clone()),
    ];
    w.extend(spec.email.clone().map(|c| ("email".into(), c)));
    w.extend(spec.properties.iter().map(|c| ("properties".into(), c.clone())));
    w.extend(spec.cursor.clone().map(|c| ("cursor".into(), c)));
    w
}

fn select<'a>(ctx: &'a Ctx<'_>, spec: &'a EventsSpec, layout: &'a Layout, w: Window, include_null: bool) -> Query {
    query::build(&Select {
        table: &ctx.table,
        columns: &layout.columns,
        filter: spec.filter.as_deref(),
        window: Some((spec.cursor_column(), w)),
        include_null_cursor: include_null,
    })
}

struct EventsSink<'a> {
    ctx: &'a Ctx<'a>,
    mapper: Mapper<'a>,
    rule: IdentityRule,
    backfill: bool,
}

impl Sink for EventsSink<'_> {
    type Row = EventRow;
    fn map(&self, batch: &RecordBatch) -> (Vec<EventRow>, Vec<Quarantined>) {
        self.mapper.map(batch)
    }
    async fn write(&self, rows: Vec<EventRow>, quarantine: Vec<Quarantined>, checkpoints: Vec<Checkpoint>) -> Result<RunCounts, Error> {
        let batch = EventBatch {
            pipeline: self.ctx.pipeline.name.clone(),
            run_id: self.ctx.run_id.clone(),
            rule: self.rule,
            backfill: self.backfill,
            rows,
            quarantine,
            checkpoints,
        };
        Ok(self.ctx.store.write_events(batch).await?.into())
    }
}

pub(crate) async fn run(ctx: &Ctx<'_>, spec: &EventsSpec, trigger: Trigger, run: &mut SyncRun) -> Result<(), Error> {
    let name = &ctx.pipeline.name;
    let now = now_micros();
    // Parked events: expire the old (counted as dropped), re-match those whose person appeared.
    let dropped = ctx.store.expire_parked(now - micros(ctx.options.parked_retention)).await?;
    run.counts.dropped += dropped.get(name).copied().unwrap_or(0);
    let rematched = ctx.store.rematch_parked().await?;
    run.counts.rematched += rematched.get(name).copied().unwrap_or(0);

    ctx.preflight(&wanted(spec)).await?;
    let prev = ctx.store.cursor(name, Slot::Live).await?;
    let plan = plan(ctx, spec, trigger, prev).await?;
    let layout = Layout::new(spec);
    run.window_from = plan.windows.first().map(|w| w.from);
    run.window_to = plan.windows.last().map(|w| w.to);
    let tolerance = micros(ctx.options.future_tolerance);
    let sink =
        |now| EventsSink { ctx, mapper: Mapper { spec, layout: &layout, now, tolerance, prev }, rule: rule(spec), backfill: plan.backfill };
    if plan.windows.is_empty() {
        let c = sink(now).write(Vec::new(), Vec::new(), plan.empty.clone()).await?;
        pump::add(&mut run.counts, &c);
        return Ok(());
    }
    let total = plan.windows.len();
    for (wi, w) in plan.windows.iter().enumerate() {
        let q = select(ctx, spec, &layout, *w, wi == 0 && plan.include_null_first);
        let stream = ctx.query(&q, None).await?;
        let checkpoints = (plan.checkpoints)(wi, w);
        pump::pump(ctx, &sink(now_micros()), stream, run, checkpoints, |rows| ctx.progress(rows, Some(*w), wi, total)).await?;
        ctx.progress(run.counts.rows_read, Some(*w), wi + 1, total);
    }
    Ok(())
}

pub(crate) async fn dry_run(ctx: &Ctx<'_>, spec: &EventsSpec, trigger: Trigger, limit: u64) -> Result<DryRun, Error> {
    ctx.preflight(&wanted(spec)).await?;
    let prev = ctx.store.cursor(&ctx.pipeline.name, Slot::Live).await?;
    let plan = plan(ctx, spec, trigger, prev).await?;
    let layout = Layout::new(spec);
    let Some(w) = plan.windows.first() else {
        let q = select(ctx, spec, &layout, Window { from: now_micros(), to: now_micros() }, false);
        return Ok(DryRun { sql: q.sql, parameters: q.parameters, rows: Vec::new() });
    };
    let q = select(ctx, spec, &layout, *w, plan.include_null_first);
    let stream = ctx.query(&q, Some(limit)).await?;
    let batches = stream.collect_batches().await?;
    let mapper = Mapper { spec, layout: &layout, now: now_micros(), tolerance: micros(ctx.options.future_tolerance), prev };
    let mut rows = Vec::new();
    for b in &batches {
        for i in 0..b.num_rows() {
            rows.push(match mapper.row(b.columns(), i) {
                Ok(r) => serde_json::json!({
                    "event_id": r.event_id,
                    "event_name": r.name,
                    "timestamp": trig_store::sqlite::rfc3339(r.ts),
                    "user_key": r.user_key,
                    "email": r.email,
                    "properties": serde_json::from_str::<Value>(&r.properties).unwrap_or(Value::Null),
                    "late": r.late,
                    "backfill": plan.backfill,
                }),
                Err((_, reason)) => serde_json::json!({
                    "quarantined": reason,
                    "row": serde_json::from_str::<Value>(&mapper.row_json(b.columns(), i)).unwrap_or(Value::Null),
                }),
            });
        }
    }
    Ok(DryRun { sql: q.sql, parameters: q.parameters, rows })
}

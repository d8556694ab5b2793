//! The events pipeline.

use std::borrow::Cow;

use arrow_array::RecordBatch;
use serde_json::Value;
use trig_config::EventsSpec;
use trig_store::time::rfc3339;
use trig_store::{Checkpoint, EventBatch, EventRow, IdentityRule, Micros, Quarantined, RunCounts, Slot, SyncRun};

use crate::pump::{self, Plan, Sink, Step, Txn};
use crate::query::{self, Query, Select};
use crate::values::{Col, Properties, map_batch, normalise_email, row_json, trimmed};
use crate::window::{self, Window, incremental_start, upper_bound};
use crate::{Ctx, DryRun, Error, Trigger, micros, now_micros};

/// Where each mapped column is in the projection.
struct Layout {
    columns: Vec<String>,
    id: usize,
    name: usize,
    ts: usize,
    user: usize,
    email: Option<usize>,
    properties: Properties,
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
            properties: Properties::new(
                // A property listed twice is one key (its column is the same).
                {
                    let mut seen = std::collections::HashSet::new();
                    spec.properties.iter().filter(|p| seen.insert(p.as_str())).map(|p| (p.clone(), at(p))).collect()
                },
                spec.properties_column.as_deref().map(at),
            ),
            columns,
        }
    }
}

type CheckpointsFn = Box<dyn Fn(bool, &Window) -> Vec<Checkpoint> + Send + Sync>;

/// What a run reads: the range `(start, end]` of the cursor, and which
/// cursors each window's last transaction moves.
struct Range {
    /// `None`: the source is empty; nothing to read.
    start: Option<Micros>,
    end: Micros,
    backfill: bool,
    /// Also read NULL-cursor rows in the first window (so they are quarantined, not invisible).
    include_null_first: bool,
    /// The checkpoints a window commits with its last rows; `true` for the range's last window.
    checkpoints: CheckpointsFn,
    /// When there is nothing to read, the checkpoints to commit anyway.
    empty: Vec<Checkpoint>,
    /// About how many rows `(start, end]` holds, when the statement that
    /// found `start` also counted them: the first window is sized from it.
    rows: Option<u64>,
}

/// Where the data resumes within a window: the first cursor value in it.
type ProbeFn<'a> = Box<dyn Fn(Window) -> futures::future::BoxFuture<'a, Result<Option<Micros>, Error>> + Send + Sync + 'a>;

/// The range cut into windows as the run goes, each sized from the density
/// of the one before to hold about `window_rows` rows. After an empty window
/// one statement asks where the data resumes and the plan jumps there, so a
/// backfill's statement count follows its rows, not the calendar.
struct Windows<'a> {
    range: Range,
    from: Micros,
    len: Micros,
    /// The length of the last window that held rows (what a jump resumes with).
    dense_len: Micros,
    target: u64,
    max: Micros,
    first: bool,
    query: Box<dyn Fn(Window, bool) -> Query + Send + 'a>,
    probe: ProbeFn<'a>,
}

/// The shortest window: finer than this is not worth a statement.
const MIN_WINDOW: Micros = 60_000_000;
/// A backfill's first window, before any density is known: a day.
const FIRST_WINDOW: Micros = 24 * 3600 * 1_000_000;

impl Plan for Windows<'_> {
    async fn next(&mut self, last_rows: Option<u64>) -> Result<Option<Step>, Error> {
        if let Some(rows) = last_rows {
            if rows > 0 {
                self.len = window::next_len(self.len, rows, self.target, MIN_WINDOW, self.max);
                self.dense_len = self.len;
            } else if self.from < self.range.end {
                // An empty window: jump to where the data resumes, or to the end.
                match (self.probe)(Window { from: self.from, to: self.range.end }).await? {
                    Some(next) if next > self.from => {
                        // Resume at the last density seen, but no longer than the first window's day:
                        // a few sparse rows before a gap say little about what follows it.
                        self.from = self.from.max(next - 1);
                        self.len = self.dense_len.min(FIRST_WINDOW);
                    }
                    Some(_) => self.len = window::next_len(self.len, 0, self.target, MIN_WINDOW, self.max),
                    // Nothing up to the end: the rest in as few windows as
                    // the longest allowed takes (found by the property test
                    // below: a tail longer than `max` was read in one window).
                    None => self.len = (self.range.end - self.from).min(self.max),
                }
            }
        }
        if self.from >= self.range.end {
            return Ok(None);
        }
        let w = Window { from: self.from, to: self.from.saturating_add(self.len).min(self.range.end) };
        self.from = w.to;
        let include_null = std::mem::take(&mut self.first) && self.range.include_null_first;
        Ok(Some(Step {
            query: (self.query)(w, include_null),
            checkpoints: (self.range.checkpoints)(w.to == self.range.end, &w),
            window: Some(w),
        }))
    }
    fn covered(&self) -> f64 {
        match self.range.start {
            Some(s) if self.range.end > s => (self.from - s) as f64 / (self.range.end - s) as f64,
            _ => 1.0,
        }
    }
}

/// Where a backfill starts (just before the source's first cursor value, or
/// at `backfill_from`) and, when a statement was run to find it, how many
/// rows the source holds from there (a few may lie past the range's end:
/// the estimate is of a density, not a promise).
async fn source_start(ctx: &Ctx<'_>, spec: &EventsSpec) -> Result<(Option<Micros>, Option<u64>), Error> {
    if let Some(t) = spec.backfill_from {
        return Ok((Some(t.timestamp_micros()), None));
    }
    let q = query::source_extent(&ctx.table, spec.cursor_column(), spec.filter.as_deref());
    let mut row = first_row(ctx, &q).await?.into_iter();
    let first = instant(spec, row.next().flatten())?;
    let rows = row.next().flatten().and_then(|n| n.trim().parse::<u64>().ok());
    Ok((first.map(|t| t - 1), rows))
}

/// Runs a one-row statement and returns its values (none when it returned no row).
async fn first_row(ctx: &Ctx<'_>, q: &Query) -> Result<Vec<Option<String>>, Error> {
    if let Some(f) = &ctx.options.on_statement {
        f(q);
    }
    let stmt = q.statement().tag("trig_run_id", ctx.run_id.clone()).tag("trig_pipeline", ctx.pipeline.name.clone());
    let r = tokio::select! {
        r = ctx.client.query_text(&stmt, 1) => r?,
        _ = ctx.cancel.cancelled() => return Err(Error::Cancelled),
    };
    Ok(r.rows.into_iter().next().unwrap_or_default())
}

/// A cursor value as an instant.
fn instant(spec: &EventsSpec, value: Option<String>) -> Result<Option<Micros>, Error> {
    match value {
        None => Ok(None),
        Some(s) => crate::values::parse_instant(&s, &spec.timezone)
            .map(Some)
            .map_err(|e| Error::Databricks(databricks::Error::Protocol { detail: format!("the cursor value `{s}` does not parse: {e}") })),
    }
}

async fn range(ctx: &Ctx<'_>, spec: &EventsSpec, trigger: Trigger, prev: Option<Micros>) -> Result<Range, Error> {
    let now = now_micros();
    let upper = upper_bound(now, micros(ctx.options.settle));
    Ok(match (trigger, prev) {
        (Trigger::Schedule | Trigger::Manual, Some(cursor)) => Range {
            start: Some(incremental_start(cursor, micros(spec.lookback))),
            end: upper,
            backfill: false,
            include_null_first: false,
            checkpoints: Box::new(move |_, w: &Window| vec![Checkpoint { slot: Slot::Live, value: Some(w.to.max(cursor)) }]),
            empty: vec![Checkpoint { slot: Slot::Live, value: Some(upper.max(cursor)) }],
            rows: None,
        },
        // The first sync and a full refresh are backfills. Their progress has
        // a slot of its own, so an interrupted one resumes where it stopped and
        // stays a backfill; the live cursor is set when the last window commits.
        (Trigger::Schedule | Trigger::Manual, None) | (Trigger::FullRefresh, _) => {
            let resume = ctx.store.cursor(ctx.key, Slot::Backfill).await?;
            let (start, rows) = match resume {
                Some(r) => (Some(r), None),
                None => source_start(ctx, spec).await?,
            };
            let live = prev.map_or(upper, |p| p.max(upper));
            let done = vec![Checkpoint { slot: Slot::Backfill, value: None }, Checkpoint { slot: Slot::Live, value: Some(live) }];
            let finished = done.clone();
            Range {
                start,
                end: upper,
                backfill: true,
                include_null_first: resume.is_none(),
                checkpoints: Box::new(
                    move |last, w: &Window| {
                        if last { finished.clone() } else { vec![Checkpoint { slot: Slot::Backfill, value: Some(w.to) }] }
                    },
                ),
                empty: done,
                rows,
            }
        }
        (Trigger::Replay { from, to }, _) => Range {
            start: Some(from),
            end: to.min(upper),
            backfill: true,
            include_null_first: false,
            checkpoints: Box::new(|_, _| Vec::new()),
            empty: Vec::new(),
            rows: None,
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
    fn map(&self, batch: &RecordBatch) -> (Vec<EventRow>, Vec<Quarantined>) {
        map_batch(batch, &self.layout.columns, &self.spec.timezone, |cols, i| self.row(cols, i))
    }

    fn row<'b>(&self, cols: &[Col<'b>], i: usize) -> Result<EventRow, (Option<String>, String)> {
        let (l, s) = (self.layout, self.spec);
        let required = |idx: usize, what: &str, col: &str, key: Option<&str>| -> Result<Cow<'b, str>, (Option<String>, String)> {
            match cols[idx].text(i) {
                Ok(Some(v)) if !trimmed(&v).is_empty() => Ok(v),
                Ok(_) => Err((key.map(str::to_string), format!("{what} (`{col}`) is NULL or empty"))),
                Err(e) => Err((key.map(str::to_string), format!("{what} (`{col}`): {e}"))),
            }
        };
        let event_id = required(l.id, "event id", &s.event_id, None)?.into_owned();
        // The row's key in a quarantine reason, built only when there is one.
        let key = || Some(event_id.clone());
        let name = required(l.name, "event name", &s.event_name, Some(&event_id))?.into_owned();
        let ts = match cols[l.ts].instant(i, &s.timezone) {
            Ok(Some(t)) => t,
            Ok(None) => return Err((key(), format!("timestamp (`{}`) is NULL", s.timestamp))),
            Err(e) => return Err((key(), format!("timestamp (`{}`): {e}", s.timestamp))),
        };
        if ts > self.now + self.tolerance {
            return Err((
                key(),
                format!(
                    "timestamp {} is more than {}s in the future; fix the clock that produced it",
                    rfc3339(ts),
                    self.tolerance / 1_000_000
                ),
            ));
        }
        let user = required(l.user, "user identifier", &s.user_id, Some(&event_id))?;
        let user_key = match s.user_id_kind {
            IdentityRule::ExternalId if trimmed(&user).len() == user.len() => user.into_owned(),
            IdentityRule::ExternalId => user.trim().to_string(),
            IdentityRule::Email => normalise_email(&user).ok_or_else(|| (key(), format!("user identifier `{user}` is not an email")))?,
        };
        let email = match l.email {
            Some(e) => cols[e].text(i).ok().flatten().and_then(|v| normalise_email(&v)),
            None => None,
        };
        // Late: it happened before the cursor the run started from, yet is new
        // to us. With an ingestion-time cursor this is what that cursor catches.
        let late = self.prev.is_some_and(|p| ts <= p);
        let properties = l
            .properties
            .json(cols, i, &s.timezone)
            .map_err(|why| (key(), format!("properties column (`{}`) {why}", s.properties_column.as_deref().unwrap_or_default())))?;
        Ok(EventRow { event_id, name, ts, user_key, email, properties, late })
    }
}

/// What a read's rows are late against: the live cursor, for live reads
/// only. A backfill (first, resumed, full refresh, replay) has no one
/// waiting on it, so nothing in it is late.
fn late_against(backfill: bool, prev: Option<Micros>) -> Option<Micros> {
    if backfill { None } else { prev }
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
    w.extend(spec.properties_column.clone().map(|c| ("properties_column".into(), c)));
    w.extend(spec.cursor.clone().map(|c| ("cursor".into(), c)));
    w
}

fn select(table: &databricks::TableName, spec: &EventsSpec, layout: &Layout, w: Window, include_null: bool) -> Query {
    query::build(&Select {
        table,
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
    fn write(&self, txn: Txn<EventRow>) -> impl Future<Output = Result<RunCounts, Error>> + Send {
        let batch = EventBatch {
            fence: self.ctx.fence,
            run: self.ctx.run,
            rule: self.rule,
            backfill: self.backfill,
            rows: txn.rows,
            quarantine: txn.quarantine,
            checkpoints: txn.checkpoints,
            progress: txn.progress,
        };
        // Called here, not inside the future: with several in flight, the
        // call's order is the order they commit in (`Store::write_events`).
        let written = self.ctx.store.write_events(batch);
        async move { Ok(written.await?.into()) }
    }
    fn in_flight(&self) -> usize {
        self.ctx.store.event_writes_in_flight()
    }
}

pub(crate) async fn run(ctx: &Ctx<'_>, spec: &EventsSpec, trigger: Trigger, run: &mut SyncRun) -> Result<(), Error> {
    let now = now_micros();
    // Parked events: expire the old (counted as dropped), re-match those whose person appeared.
    run.counts.dropped += ctx.store.expire_parked(ctx.fence, ctx.run, now - micros(ctx.options.parked_retention)).await?;
    run.counts.rematched += ctx.store.rematch_parked(ctx.fence, ctx.run, true).await?;

    ctx.preflight(&wanted(spec)).await?;
    let prev = ctx.store.cursor(ctx.key, Slot::Live).await?;
    let range = range(ctx, spec, trigger, prev).await?;
    let layout = Layout::new(spec);
    let sink = EventsSink {
        ctx,
        mapper: Mapper {
            spec,
            layout: &layout,
            now,
            tolerance: micros(ctx.options.future_tolerance),
            prev: late_against(range.backfill, prev),
        },
        rule: spec.user_id_kind,
        backfill: range.backfill,
    };
    let Some(start) = range.start.filter(|s| *s < range.end) else {
        let c = sink.write(Txn::checkpoints(range.empty)).await?;
        run.counts += c;
        return Ok(());
    };
    run.window_from = Some(start);
    run.window_to = Some(range.end);
    let mut windows = windows(ctx, spec, &layout, range, start);
    pump::pump(ctx, &sink, &mut windows, run).await
}

fn windows<'a>(ctx: &'a Ctx<'a>, spec: &'a EventsSpec, layout: &'a Layout, range: Range, start: Micros) -> Windows<'a> {
    let max = micros(ctx.options.max_window).max(MIN_WINDOW);
    // A quarter of a window's rows to begin with, a ramp: the first rows
    // reach the store while the next statement runs (a whole window made
    // the store wait for it; see the README's bench notes).
    let first = first_len(&range, start, (ctx.options.window_rows / 4).max(1), max);
    Windows {
        range,
        from: start,
        len: first,
        dense_len: first,
        target: ctx.options.window_rows,
        max,
        first: true,
        query: Box::new(move |w, include_null| select(&ctx.table, spec, layout, w, include_null)),
        probe: Box::new(move |within| {
            Box::pin(async move {
                let q = query::next_cursor(&ctx.table, spec.cursor_column(), spec.filter.as_deref(), within);
                instant(spec, first_row(ctx, &q).await?.into_iter().next().flatten())
            })
        }),
    }
}

/// The first window's length: sized to hold `target` rows at the range's
/// average density when its rows were counted (so a source that holds
/// millions of rows a day does not read a day at once, and a small one is
/// read in one statement), else a day; later windows follow the density of
/// the one before.
fn first_len(range: &Range, start: Micros, target: u64, max: Micros) -> Micros {
    match range.rows {
        Some(rows) if rows > 0 && range.end > start => window::first_len(range.end - start, rows, target, MIN_WINDOW, max),
        _ => FIRST_WINDOW.min(max),
    }
}

pub(crate) async fn dry_run(ctx: &Ctx<'_>, spec: &EventsSpec, trigger: Trigger, limit: u64) -> Result<DryRun, Error> {
    ctx.preflight(&wanted(spec)).await?;
    let prev = ctx.store.cursor(ctx.key, Slot::Live).await?;
    let range = range(ctx, spec, trigger, prev).await?;
    let layout = Layout::new(spec);
    let backfill = range.backfill;
    let Some(start) = range.start.filter(|s| *s < range.end) else {
        let q = select(&ctx.table, spec, &layout, Window { from: range.end, to: range.end }, false);
        return Ok(DryRun { sql: q.sql, parameters: q.parameters, rows: Vec::new() });
    };
    // The plan a real run follows, up to its first statement that returns
    // rows (empty windows are skipped as a run skips them), at most a few statements.
    let mut plan = windows(ctx, spec, &layout, range, start);
    let mut last = None;
    let (mut q, mut batches) = (None, Vec::new());
    for _ in 0..8 {
        let Some(Step { query, .. }) = plan.next(last).await? else { break };
        batches = ctx.query(&query, Some(limit)).await?.collect_batches().await?;
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        q = Some(query);
        if rows > 0 {
            break;
        }
        last = Some(0);
    }
    let q = q.expect("a non-empty range has a first window");
    let mapper = Mapper {
        spec,
        layout: &layout,
        now: now_micros(),
        tolerance: micros(ctx.options.future_tolerance),
        prev: late_against(backfill, prev),
    };
    let mut rows = Vec::new();
    for b in &batches {
        let cols: Vec<Col<'_>> = b.columns().iter().map(Col::new).collect();
        for i in 0..b.num_rows() {
            rows.push(match mapper.row(&cols, i) {
                Ok(r) => serde_json::json!({
                    "event_id": r.event_id,
                    "event_name": r.name,
                    "timestamp": rfc3339(r.ts),
                    "user_key": r.user_key,
                    "email": r.email,
                    "properties": serde_json::from_str::<Value>(&r.properties).unwrap_or(Value::Null),
                    "late": r.late,
                    "backfill": backfill,
                }),
                Err((_, reason)) => serde_json::json!({
                    "quarantined": reason,
                    "row": row_json(&layout.columns, b.columns(), i, &mapper.spec.timezone),
                }),
            });
        }
    }
    Ok(DryRun { sql: q.sql, parameters: q.parameters, rows })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn plan(start: Micros, end: Micros, target: u64, max: Micros, resume_every: Micros) -> Windows<'static> {
        Windows {
            range: Range {
                start: Some(start),
                end,
                backfill: true,
                include_null_first: true,
                checkpoints: Box::new(|last, w: &Window| {
                    vec![Checkpoint { slot: Slot::Live, value: Some(if last { -w.to } else { w.to }) }]
                }),
                empty: Vec::new(),
                rows: None,
            },
            from: start,
            len: 86_400_000_000i64.min(max),
            dense_len: 86_400_000_000i64.min(max),
            target,
            max,
            first: true,
            probe: Box::new(move |w: Window| {
                // The data resumes at the next multiple of `resume_every` inside the window, if any.
                let next = (w.from / resume_every + 1) * resume_every;
                Box::pin(async move { Ok((next <= w.to).then_some(next)) })
            }),
            query: Box::new(|w, include_null| Query {
                sql: if include_null { "first".into() } else { String::new() },
                parameters: vec![crate::QueryParameter { name: "to".into(), value: Some(w.to.to_string()), type_name: "TIMESTAMP".into() }],
            }),
        }
    }

    fn block<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Whatever the density, the windows are ordered and disjoint, each
        /// within the bounds, end exactly at the range's end, skip only
        /// stretches the probe found empty (every point where data resumes
        /// is in exactly one window), only the first reads NULL cursors, and
        /// only the last carries the range's final checkpoint.
        #[test]
        fn adaptive_windows_cover_the_range_exactly_once(
            start in 0i64..1_000_000_000_000_000,
            span in 1i64..30 * 86_400_000_000,
            rows in proptest::collection::vec(0u64..200_000, 1..400),
            target in 1u64..100_000,
            resume_every in 3_600_000_000i64..30 * 86_400_000_000,
        ) {
            let max = 7 * 86_400_000_000;
            let end = start + span;
            let mut p = plan(start, end, target, max, resume_every);
            let mut at = start;
            let mut last_rows = None;
            let mut windows = Vec::new();
            while let Some(step) = block(p.next(last_rows)).unwrap() {
                let w = step.window.unwrap();
                let n = windows.len();
                prop_assert!(w.from >= at, "ordered and disjoint");
                if w.from > at {
                    prop_assert_eq!(last_rows, Some(0), "only an empty window is followed by a jump");
                }
                prop_assert!(w.to > w.from && w.to - w.from <= max && w.to <= end);
                prop_assert_eq!(step.query.sql == "first", n == 0);
                let last = step.checkpoints[0].value.unwrap() < 0;
                prop_assert_eq!(last, w.to == end);
                at = w.to;
                last_rows = Some(rows[n % rows.len()]);
                windows.push(w);
                prop_assert!(windows.len() < 1_000_000, "terminates");
            }
            prop_assert_eq!(at, end);
            prop_assert!((p.covered() - 1.0).abs() < 1e-9);
            let mut point = (start / resume_every + 1) * resume_every;
            while point <= end {
                prop_assert_eq!(windows.iter().filter(|w| w.contains(point)).count(), 1, "{} is read once", point);
                point += resume_every;
            }
        }
    }

    /// A counted range's first window holds about `target` rows at the
    /// range's average density (within the shortest and longest windows);
    /// an uncounted one starts with a day.
    #[test]
    fn a_counted_range_sizes_its_first_window_from_its_density() {
        let day = 86_400_000_000i64;
        let mut p = plan(0, 30 * day, 20_000, 366 * day, 1);
        let first = |p: &Windows<'_>| first_len(&p.range, 0, 20_000, p.max);
        assert_eq!(first(&p), day, "no count: a day");
        p.range.rows = Some(100_000);
        assert_eq!(first(&p), 6 * day, "100k rows in 30 days: 20k in 6 days");
        p.range.rows = Some(1_000_000);
        assert_eq!(first(&p), 30 * day / 50);
        p.range.rows = Some(10);
        assert_eq!(first(&p), 30 * day, "a sparse range: all of it, as one window");
        p.max = 7 * day;
        assert_eq!(first(&p), 7 * day, "never past the longest window");
        p.range.rows = Some(u64::MAX);
        assert_eq!(first(&p), MIN_WINDOW, "never below the shortest");
        p.range.rows = Some(0);
        assert_eq!(first(&p), day);
    }

    /// One row in 1970 and a month of recent data: the backfill's statements
    /// follow the rows, not the 56 years between.
    #[test]
    fn an_empty_stretch_costs_one_probe() {
        let day = 86_400_000_000i64;
        let end = 1_764_000_000_000_000; // late 2025
        let recent = end - 30 * day;
        let mut p = plan(-1, end, 20_000, 7 * day, 1);
        let probes = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counted = probes.clone();
        p.probe = Box::new(move |w: Window| {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move { Ok((w.to > recent).then_some(w.from.max(recent) + 1)) })
        });
        let mut last = None;
        let mut statements = 0;
        while let Some(step) = block(p.next(last)).unwrap() {
            let w = step.window.unwrap();
            statements += 1;
            // The 1970 row, then 10k rows a day in the recent month, none between.
            last = Some(if w.contains(0) {
                1
            } else if w.to <= recent {
                0
            } else {
                ((w.to - w.from.max(recent)) / day * 10_000) as u64
            });
        }
        let probes = probes.load(std::sync::atomic::Ordering::SeqCst);
        assert!(probes <= 2, "{probes} probes");
        assert!(statements <= 20, "{statements} windows for one old row and 300k recent rows");
    }
}

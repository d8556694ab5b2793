//! The scheduler: every defined pipeline of every tenant on its schedule.
//!
//! Each wake-up (every `tick`, or at once when a run is asked for) reads the
//! pipelines due from the store (requested first, then the longest overdue;
//! leased ones are skipped) and starts each in a task of its own, within
//! `max_runs` for this process and `per_warehouse` at once per SQL
//! warehouse. A pipeline's runs never overlap, across processes too: the
//! engine claims its lease, and one that another process holds is left to it.
//! Pipelines on a warehouse that is being woken anyway, and due within
//! `coalesce` of now, run in the same wake-up (one warehouse start, not two).
//!
//! After a run, [`next_after`] decides the next time: the schedule (plus
//! jitter) after a success; capped exponential backoff after a failure that
//! may pass by itself; the normal schedule after one only the customer can
//! fix (expired token, missing grant, drift), and a pause with its reason
//! once such failures have lasted `pause_after`. The next time is in the
//! store, so it survives restarts, and a missed slot runs once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use trig_store::{Micros, Outcome, PipelineKey, PipelineRecord};
use trig_sync::{Class, Engine, EngineOptions, Trigger};

use crate::api::AppState;

/// The scheduler's knobs; the defaults are what `serve` runs with.
#[derive(Clone)]
pub struct SchedulerOptions {
    /// How often an idle scheduler looks for due pipelines.
    pub tick: Duration,
    /// Runs at once in this process.
    pub max_runs: usize,
    /// Runs (each one statement at a time) at once per SQL warehouse, from every process together
    /// (slots in the store) and from this one (a semaphore).
    pub per_warehouse: usize,
    /// Up to this much is added to each next time, so pipelines on one schedule spread out.
    pub jitter: Duration,
    /// Pipelines due within this of now run in the wake-up that starts their warehouse.
    pub coalesce: Duration,
    /// The first retry after a failure that may pass by itself; doubled each time, up to `retry_max`.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// How long failures only the customer can fix may last before the pipeline is paused.
    pub pause_after: Duration,
    /// How often each connection's token expiry is read (the Token API).
    pub expiry_check: Duration,
    pub engine: EngineOptions,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        SchedulerOptions {
            tick: Duration::from_secs(5),
            max_runs: 8,
            per_warehouse: 2,
            jitter: Duration::from_secs(30),
            coalesce: Duration::from_secs(180),
            retry_base: Duration::from_secs(60),
            retry_max: Duration::from_secs(30 * 60),
            pause_after: Duration::from_secs(24 * 3600),
            expiry_check: Duration::from_secs(12 * 3600),
            engine: EngineOptions {
                holder: trig_store::Holder::this_process("trig-databricks serve"),
                clients: Some(Arc::default()),
                ..EngineOptions::default()
            },
        }
    }
}

/// How a run ended, as the schedule sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum RunEnd {
    Succeeded,
    Failed { class: Class, kind: String, message: String, hint: Option<String> },
}

fn micros(d: Duration) -> Micros {
    d.as_micros().min(i64::MAX as u128) as i64
}

/// The next time of a pipeline whose run ended at `now` as `end`, given its
/// failures in a row before this run and since when it fails; `jitter` is
/// a sample in `[0, 1)`.
pub fn next_after(
    now: Micros,
    schedule: Duration,
    failures_before: i64,
    failing_since: Option<Micros>,
    end: &RunEnd,
    o: &SchedulerOptions,
    jitter: f64,
) -> Outcome {
    let spread = (micros(o.jitter) as f64 * jitter.clamp(0.0, 1.0)) as Micros;
    match end {
        RunEnd::Succeeded => Outcome { at: now, next_run_at: now + micros(schedule) + spread, error: None, pause: None },
        RunEnd::Failed { class, kind, message, hint } => {
            let error = Some(json!({ "kind": kind, "message": message, "hint": hint }));
            match class {
                // Only the customer can fix it: the normal schedule, never hammered; paused after a day of it.
                Class::User => {
                    let since = failing_since.unwrap_or(now);
                    let pause = (now - since >= micros(o.pause_after))
                        .then(|| format!("paused after failing for {}: {message}", humantime_short(o.pause_after)));
                    Outcome { at: now, next_run_at: now + micros(schedule) + spread, error, pause }
                }
                // It may pass by itself: capped exponential backoff, never later than the schedule.
                Class::Remote | Class::Internal => {
                    let exp = failures_before.clamp(0, 20) as u32;
                    let backoff = o.retry_base.saturating_mul(2u32.saturating_pow(exp)).min(o.retry_max).min(schedule);
                    Outcome { at: now, next_run_at: now + micros(backoff) + spread / 4, error, pause: None }
                }
            }
        }
    }
}

fn humantime_short(d: Duration) -> String {
    let h = d.as_secs() / 3600;
    if h > 0 && d.as_secs().is_multiple_of(3600) { format!("{h} h") } else { format!("{} min", d.as_secs() / 60) }
}

fn jitter_sample() -> f64 {
    let mut b = [0u8; 4];
    let _ = getrandom::fill(&mut b);
    f64::from(u32::from_le_bytes(b)) / (f64::from(u32::MAX) + 1.0)
}

/// The scheduler of one process.
pub struct Scheduler {
    state: AppState,
    options: SchedulerOptions,
    warehouses: HashMap<String, Arc<Semaphore>>,
}

impl Scheduler {
    pub fn new(state: AppState, options: SchedulerOptions) -> Scheduler {
        Scheduler { state, options, warehouses: HashMap::new() }
    }

    /// Runs until `stop` is cancelled; then starts nothing new, asks running
    /// runs to stop at their next safe point (what committed stays), and
    /// waits for them up to `deadline`.
    pub async fn run(mut self, stop: CancellationToken, deadline: Duration) {
        let mut runs = tokio::task::JoinSet::new();
        let mut running: HashSet<PipelineKey> = HashSet::new();
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<PipelineKey>();
        let runs_stop = CancellationToken::new();
        let mut expiry_checked: Option<tokio::time::Instant> = None;
        loop {
            if expiry_checked.is_none_or(|t| t.elapsed() >= self.options.expiry_check) {
                expiry_checked = Some(tokio::time::Instant::now());
                let state = self.state.clone();
                tokio::spawn(async move { check_expiries(&state).await });
            }
            while let Ok(k) = done_rx.try_recv() {
                running.remove(&k);
            }
            while runs.try_join_next().is_some() {}
            if stop.is_cancelled() {
                break;
            }
            let free = self.options.max_runs.saturating_sub(running.len());
            if free > 0 {
                match self.due(free, &running).await {
                    Ok(due) => {
                        for (rec, config, warehouse) in due {
                            let sem = self.semaphore(&warehouse);
                            running.insert(rec.key);
                            let (state, options, done, cancel) =
                                (self.state.clone(), self.options.clone(), done_tx.clone(), runs_stop.clone());
                            runs.spawn(async move {
                                let key = rec.key;
                                run_one(state, options, rec, config, sem, warehouse, cancel).await;
                                let _ = done.send(key);
                            });
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "the scheduler cannot read the due pipelines; trying again"),
                }
            }
            // Until the next pipeline is due, the next tick at the latest.
            let now = self.state.clock.now();
            let nap = match self.state.store.next_due(now).await {
                Ok(Some(due)) => Duration::from_micros((due - now).max(0) as u64).min(self.options.tick),
                _ => self.options.tick,
            };
            // One due now but not started (every slot busy) waits for a run to end (below), or a moment: never a spin.
            let nap = nap.max(Duration::from_millis(50));
            tokio::select! {
                _ = tokio::time::sleep(nap) => {}
                _ = self.state.wake.notified() => {}
                _ = stop.cancelled() => {}
                Some(k) = done_rx.recv() => { running.remove(&k); }
            }
        }
        if !runs.is_empty() {
            tracing::info!(runs = runs.len(), "stopping: asking the running runs to stop at their next safe point");
            runs_stop.cancel();
            let waited = tokio::time::timeout(deadline, async { while runs.join_next().await.is_some() {} }).await;
            if waited.is_err() {
                tracing::warn!(
                    runs = runs.len(),
                    "runs still going after {deadline:?}: abandoned (their uncommitted work is re-read next time)"
                );
                runs.abort_all();
            }
        }
    }

    /// One round of [`Scheduler::run`], driven by the caller: starts what is
    /// due on the scheduler's clock (as `run` does on each wake-up) and waits
    /// for those runs to end; how many it started. `run` is this in a loop
    /// with its naps; a test moves a manual clock and calls this, so time
    /// passes without waiting for it.
    pub async fn run_due(&mut self) -> Result<usize, crate::Error> {
        let due = self.due(self.options.max_runs, &HashSet::new()).await?;
        let started = due.len();
        let cancel = CancellationToken::new();
        let mut runs = tokio::task::JoinSet::new();
        for (rec, config, warehouse) in due {
            let sem = self.semaphore(&warehouse);
            runs.spawn(run_one(self.state.clone(), self.options.clone(), rec, config, sem, warehouse, cancel.clone()));
        }
        while runs.join_next().await.is_some() {}
        Ok(started)
    }

    /// This process's limit of runs at once on a warehouse.
    fn semaphore(&mut self, warehouse: &str) -> Arc<Semaphore> {
        let per = self.options.per_warehouse;
        self.warehouses.entry(warehouse.to_string()).or_insert_with(|| Arc::new(Semaphore::new(per))).clone()
    }

    /// The pipelines to start now: due ones, plus ones due soon on a warehouse being started anyway.
    async fn due(
        &self,
        free: usize,
        running: &HashSet<PipelineKey>,
    ) -> Result<Vec<(PipelineRecord, Arc<trig_config::Config>, String)>, crate::Error> {
        let now = self.state.clock.now();
        let soon = now + micros(self.options.coalesce);
        let candidates = self.state.store.due_pipelines(soon, free * 4 + 16).await.map_err(crate::Error::from_store)?;
        let mut configs: BTreeMap<i64, Arc<trig_config::Config>> = BTreeMap::new();
        let mut picked = Vec::new();
        let mut waking: HashSet<String> = HashSet::new();
        let mut later = Vec::new();
        for rec in candidates.into_iter().filter(|r| !running.contains(&r.key)) {
            let config = match configs.get(&rec.key.tenant.0) {
                Some(c) => c.clone(),
                None => {
                    let Some(t) = self.state.store.tenant_info(&rec.tenant_name).await.map_err(crate::Error::from_store)? else { continue };
                    let tc = crate::pipelines::tenant_config(&self.state, &t).await?;
                    for (name, e) in &tc.invalid {
                        if let Some(bad) = self.state.store.pipeline_record(t.id, name).await.map_err(crate::Error::from_store)?
                            && bad.next_run_at.is_some_and(|n| n <= now)
                        {
                            self.invalid(&bad, e).await;
                        }
                    }
                    let c = Arc::new(tc.config);
                    configs.insert(rec.key.tenant.0, c.clone());
                    c
                }
            };
            let Some(p) = config.pipelines.get(&rec.name) else { continue };
            let Some(conn) = config.connections.get(&p.connection) else { continue };
            let warehouse = format!("{}{}", conn.workspace.base(), conn.http_path());
            let due_now = rec.requested.is_some() || rec.next_run_at.is_some_and(|n| n <= now);
            if due_now {
                waking.insert(warehouse.clone());
                picked.push((rec, config, warehouse));
            } else {
                later.push((rec, config, warehouse));
            }
        }
        // Due soon on a warehouse that is being started now: run it in this wake-up.
        picked.extend(later.into_iter().filter(|(_, _, w)| waking.contains(w)));
        picked.truncate(free);
        Ok(picked)
    }

    /// A pipeline whose definition no longer validates fails without a run, as a customer's fix.
    async fn invalid(&self, rec: &PipelineRecord, e: &crate::Error) {
        let end = RunEnd::Failed {
            class: Class::User,
            kind: "config".into(),
            message: e.to_string(),
            hint: Some("fix the pipeline's mapping or its connection".into()),
        };
        let schedule = Duration::from_secs(24 * 3600);
        let o = next_after(self.state.clock.now(), schedule, rec.failures, rec.failing_since, &end, &self.options, jitter_sample());
        if let Err(e) = self.state.store.record_outcome(rec.key, &o).await {
            tracing::warn!(error = %e, "cannot record a pipeline's failure");
        }
    }
}

/// Reads each token-authenticated connection's token expiry and warns once per expiry.
async fn check_expiries(state: &AppState) {
    let Ok(tenants) = state.store.tenants().await else { return };
    for t in tenants.into_iter().filter(|t| t.webhook.is_some()) {
        let Ok(tc) = crate::pipelines::tenant_config(state, &t).await else { continue };
        for (name, c) in &tc.config.connections {
            if !matches!(c.auth, trig_config::AuthConfig::Token(_)) {
                continue;
            }
            let Ok(client) = c.settings().map_err(|e| e.message).and_then(|s| databricks::Client::new(s).map_err(|e| e.to_string())) else {
                continue;
            };
            // A workspace may not report tokens (the Token API refused): nothing to say.
            let Ok(tokens) = client.own_tokens().await else { continue };
            state.metrics.token_checked();
            let now = state.clock.now();
            let Some(expiry) = crate::alerts::expiring(&tokens, now) else { continue };
            if state.store.warn_expiry_once(t.id, name, expiry).await.unwrap_or(false) {
                let body = crate::alerts::expiry_payload(&t, name, expiry, now);
                let delivered = crate::alerts::deliver(state, &t, &body).await;
                state.metrics.alert("token_expiring", if delivered { "delivered" } else { "failed" });
            }
        }
    }
}

/// A warehouse slot held for one run, kept alive by a heartbeat until released.
struct Slot {
    warehouse: String,
    slot: i64,
    holder: String,
    beat: tokio::task::JoinHandle<()>,
}

impl Slot {
    async fn release(self, state: &AppState) {
        self.beat.abort();
        if let Err(e) = state.store.release_warehouse_slot(&self.warehouse, self.slot, &self.holder).await {
            tracing::warn!(error = %e, "cannot give a warehouse slot back; it expires on its own");
        }
    }
}

/// Waits for a free slot of the warehouse (checking every 250 ms), or `None` when stopping.
async fn warehouse_slot(state: &AppState, options: &SchedulerOptions, warehouse: &str, cancel: &CancellationToken) -> Option<Slot> {
    let ttl = micros(options.engine.lease_ttl);
    let holder = format!("{}:{}:{}", options.engine.holder.host, options.engine.holder.pid, uuid::Uuid::new_v4().simple());
    loop {
        let now = state.clock.now();
        match state.store.claim_warehouse_slot(warehouse, options.per_warehouse as i64, &holder, now, now + ttl).await {
            Ok(Some(slot)) => {
                let (st, w, h, every) = (state.clone(), warehouse.to_string(), holder.clone(), options.engine.lease_ttl / 3);
                let beat = tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(every).await;
                        let until = st.clock.now() + ttl;
                        if let Err(e) = st.store.extend_warehouse_slot(&w, slot, &h, until).await {
                            tracing::warn!(error = %e, "cannot extend a warehouse slot");
                        }
                    }
                });
                return Some(Slot { warehouse: warehouse.to_string(), slot, holder, beat });
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot claim a warehouse slot; trying again"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = cancel.cancelled() => return None,
        }
    }
}

async fn run_one(
    state: AppState,
    options: SchedulerOptions,
    rec: PipelineRecord,
    config: Arc<trig_config::Config>,
    warehouse: Arc<Semaphore>,
    warehouse_key: String,
    cancel: CancellationToken,
) {
    let Some(p) = config.pipelines.get(&rec.name) else { return };
    let schedule = p.schedule;
    let trigger = match rec.requested.as_deref() {
        Some("full_refresh") => Trigger::FullRefresh,
        Some(_) => Trigger::Manual,
        None => Trigger::Schedule,
    };
    let Ok(_permit) = warehouse.acquire_owned().await else { return };
    // And one of the warehouse's slots shared by every process: at most `per_warehouse` runs on it at once, in all.
    let Some(slot) = warehouse_slot(&state, &options, &warehouse_key, &cancel).await else { return };
    if let Some(r) = &rec.requested
        && let Err(e) = state.store.take_request(rec.key, r).await
    {
        tracing::warn!(error = %e, "cannot take a run request; trying again later");
        return;
    }
    let engine = Engine::new((*config).clone(), state.store.clone(), options.engine.clone());
    let started = state.clock.now();
    if rec.requested.is_none()
        && let Some(due) = rec.next_run_at
    {
        state.metrics.lag((started - due) as f64 / 1e6);
    }
    let result = engine.run_as(&rec.name, trigger, rec.requested_run_id.clone(), &cancel).await;
    slot.release(&state).await;
    let now = state.clock.now();
    let seconds = (now - started) as f64 / 1e6;
    let end = match result {
        Ok(f) => {
            state.metrics.claim("claimed");
            state.metrics.run_ended(p.kind(), &f.run, seconds);
            match f.error {
                None => RunEnd::Succeeded,
                Some(trig_sync::Error::Cancelled) if cancel.is_cancelled() => return, // stopping: due again at once after the restart
                Some(e) => RunEnd::Failed { class: e.class(), kind: e.kind().into(), message: e.to_string(), hint: e.hint() },
            }
        }
        // Another process runs it (it saw it due at the same time): theirs to record.
        Err(trig_sync::Error::Store(trig_store::Error::LeaseHeld { .. })) => {
            state.metrics.claim("held");
            return;
        }
        Err(trig_sync::Error::Store(trig_store::Error::LeaseLost { .. })) => {
            state.metrics.lease_lost();
            return;
        }
        Err(trig_sync::Error::Cancelled) => return,
        Err(e) => {
            state.metrics.error(e.kind());
            RunEnd::Failed { class: e.class(), kind: e.kind().into(), message: e.to_string(), hint: e.hint() }
        }
    };
    tracing::info!(tenant = %rec.tenant_name, pipeline = %rec.name, ok = matches!(end, RunEnd::Succeeded), secs = (now - started) / 1_000_000, "run ended");
    let o = next_after(now, schedule, rec.failures, rec.failing_since, &end, &options, jitter_sample());
    match state.store.record_outcome(rec.key, &o).await {
        Ok((failures_before, was_paused)) => {
            let ok = matches!(end, RunEnd::Succeeded);
            if let Some(event) = crate::alerts::transition(failures_before, was_paused, ok, o.pause.is_some()) {
                alert(&state, &rec, event, o.error.as_ref()).await;
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot record the run's outcome; the pipeline stays due"),
    }
}

/// Sends an alert in a task of its own (delivery retries must not hold the run's slot).
async fn alert(state: &AppState, rec: &PipelineRecord, event: crate::alerts::Event, error: Option<&serde_json::Value>) {
    let tenant = match state.store.tenant_info(&rec.tenant_name).await {
        Ok(Some(t)) => t,
        _ => return,
    };
    if tenant.webhook.is_none() {
        return;
    }
    let body = crate::alerts::payload(&tenant, &rec.name, event, error);
    let state = state.clone();
    tokio::spawn(async move {
        let delivered = crate::alerts::deliver(&state, &tenant, &body).await;
        state.metrics.alert(event.as_str(), if delivered { "delivered" } else { "failed" });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Micros = 60_000_000;

    fn failed(class: Class) -> RunEnd {
        RunEnd::Failed { class, kind: "k".into(), message: "the token expired".into(), hint: None }
    }

    #[test]
    fn a_success_waits_its_schedule_plus_at_most_the_jitter() {
        let o = SchedulerOptions::default();
        let a = next_after(0, Duration::from_secs(900), 0, None, &RunEnd::Succeeded, &o, 0.0);
        let b = next_after(0, Duration::from_secs(900), 3, Some(-5), &RunEnd::Succeeded, &o, 0.999);
        assert_eq!((a.next_run_at, a.error, a.pause), (15 * MIN, None, None));
        assert!(b.next_run_at > 15 * MIN && b.next_run_at < 15 * MIN + 30_000_000);
    }

    #[test]
    fn a_passing_failure_backs_off_exponentially_up_to_the_cap_and_the_schedule() {
        let o = SchedulerOptions::default();
        let at = |failures, schedule: u64| {
            next_after(0, Duration::from_secs(schedule), failures, Some(0), &failed(Class::Remote), &o, 0.0).next_run_at
        };
        assert_eq!([at(0, 86_400), at(1, 86_400), at(2, 86_400), at(3, 86_400)], [MIN, 2 * MIN, 4 * MIN, 8 * MIN]);
        assert_eq!(at(10, 86_400), 30 * MIN, "capped");
        assert_eq!(at(10, 900), 15 * MIN, "never later than the schedule");
        let o2 = next_after(0, Duration::from_secs(900), 0, None, &failed(Class::Remote), &o, 0.0);
        assert_eq!(o2.error.unwrap()["message"], "the token expired");
        assert_eq!(o2.pause, None, "a failure that may pass never pauses");
    }

    #[test]
    fn a_customer_fix_is_retried_on_schedule_and_paused_after_a_day() {
        let o = SchedulerOptions::default();
        let day = 24 * 60 * MIN;
        let first = next_after(0, Duration::from_secs(900), 5, None, &failed(Class::User), &o, 0.0);
        assert_eq!((first.next_run_at, first.pause.clone()), (15 * MIN, None), "not hammered, not paused yet");
        let later = next_after(day - MIN, Duration::from_secs(900), 96, Some(0), &failed(Class::User), &o, 0.0);
        assert_eq!(later.pause, None);
        let paused = next_after(day, Duration::from_secs(900), 97, Some(0), &failed(Class::User), &o, 0.0);
        assert_eq!(paused.pause.as_deref(), Some("paused after failing for 24 h: the token expired"));
    }
}

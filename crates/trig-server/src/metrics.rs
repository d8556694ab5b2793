//! Metrics at `/metrics`, in Prometheus' text format.
//!
//! Labels hold only values of our own vocabularies (a pipeline's kind, a
//! run's status, a row's outcome, an error's kind): never a tenant, a
//! table, a secret or any customer data.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Upper bounds of the run duration histograms, in seconds.
const BUCKETS: &[f64] = &[0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0];
/// Upper bounds of the scheduler lag histogram, in seconds (the target is under 1 s).
const LAG_BUCKETS: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0];

struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram { bounds: BUCKETS, counts: vec![0; BUCKETS.len()], sum: 0.0, count: 0 }
    }
}

impl Histogram {
    fn lag() -> Histogram {
        Histogram { bounds: LAG_BUCKETS, counts: vec![0; LAG_BUCKETS.len()], sum: 0.0, count: 0 }
    }

    fn observe(&mut self, v: f64) {
        for (i, b) in self.bounds.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }
}

struct Inner {
    runs: BTreeMap<(&'static str, String), u64>,
    rows: BTreeMap<&'static str, u64>,
    errors: BTreeMap<String, u64>,
    durations: BTreeMap<&'static str, Histogram>,
    lag: Histogram,
    claims: BTreeMap<&'static str, u64>,
    lease_losses: u64,
    wakeups: u64,
    statements: u64,
    alerts: BTreeMap<(&'static str, &'static str), u64>,
    token_checks: u64,
}

impl Default for Inner {
    fn default() -> Inner {
        Inner {
            runs: BTreeMap::new(),
            rows: BTreeMap::new(),
            errors: BTreeMap::new(),
            durations: BTreeMap::new(),
            lag: Histogram::lag(),
            claims: BTreeMap::new(),
            lease_losses: 0,
            wakeups: 0,
            statements: 0,
            alerts: BTreeMap::new(),
            token_checks: 0,
        }
    }
}

/// The process's metrics.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

/// A pipeline kind as a label (only these three).
pub fn kind_label(kind: &str) -> &'static str {
    match kind {
        "events" => "events",
        "people" => "people",
        "organisations" => "organisations",
        _ => "other",
    }
}

/// An error kind as a label: ours are short snake_case words; anything else is `other`.
fn error_label(kind: &str) -> String {
    if !kind.is_empty() && kind.len() <= 40 && kind.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
        kind.to_string()
    } else {
        "other".into()
    }
}

impl Metrics {
    fn with(&self, f: impl FnOnce(&mut Inner)) {
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// A run ended.
    pub fn run_ended(&self, kind: &str, run: &trig_store::SyncRun, seconds: f64) {
        let kind = kind_label(kind);
        self.with(|m| {
            let status = match run.status.as_str() {
                s @ ("succeeded" | "failed" | "cancelled" | "interrupted") => s.to_string(),
                _ => "other".into(),
            };
            *m.runs.entry((kind, status)).or_default() += 1;
            let c = &run.counts;
            for (outcome, n) in [
                ("inserted", c.inserted),
                ("updated", c.updated),
                ("unchanged", c.unchanged),
                ("deduplicated", c.deduplicated),
                ("parked", c.parked),
                ("rematched", c.rematched),
                ("dropped", c.dropped),
                ("quarantined", c.quarantined),
            ] {
                *m.rows.entry(outcome).or_default() += n;
            }
            if let Some(k) = &run.error_kind {
                *m.errors.entry(error_label(k)).or_default() += 1;
            }
            m.durations.entry(kind).or_default().observe(seconds);
            m.statements += run.statement_ids.len() as u64;
            if run.warehouse_state.as_deref().is_some_and(|s| s != "RUNNING") {
                m.wakeups += 1;
            }
        });
    }

    /// A run failed before it could be recorded (a config error, the store down).
    pub fn error(&self, kind: &str) {
        self.with(|m| *m.errors.entry(error_label(kind)).or_default() += 1);
    }

    /// A run started this long after it was due.
    pub fn lag(&self, seconds: f64) {
        self.with(|m| m.lag.observe(seconds.max(0.0)));
    }

    /// A claim: `claimed`, or `held` (another process runs it).
    pub fn claim(&self, result: &'static str) {
        self.with(|m| *m.claims.entry(result).or_default() += 1);
    }

    /// A connection's token expiry read from its workspace's Token API.
    pub fn token_checked(&self) {
        self.with(|m| m.token_checks += 1);
    }

    pub fn lease_lost(&self) {
        self.with(|m| m.lease_losses += 1);
    }

    /// An alert: its event (`failing`, `recovered`, `paused`) and whether it was `delivered` or `failed`.
    pub fn alert(&self, event: &'static str, result: &'static str) {
        self.with(|m| *m.alerts.entry((event, result)).or_default() += 1);
    }

    /// The text `/metrics` answers.
    pub fn render(&self) -> String {
        let m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        let head = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        head(&mut out, "trig_runs_total", "counter", "Runs ended, by pipeline kind and status.");
        for ((kind, status), n) in &m.runs {
            let _ = writeln!(out, "trig_runs_total{{kind=\"{kind}\",status=\"{status}\"}} {n}");
        }
        head(&mut out, "trig_rows_total", "counter", "Rows by what became of them.");
        for (outcome, n) in &m.rows {
            let _ = writeln!(out, "trig_rows_total{{outcome=\"{outcome}\"}} {n}");
        }
        head(&mut out, "trig_errors_total", "counter", "Failed runs by error kind.");
        for (kind, n) in &m.errors {
            let _ = writeln!(out, "trig_errors_total{{kind=\"{kind}\"}} {n}");
        }
        head(&mut out, "trig_run_duration_seconds", "histogram", "Run durations, by pipeline kind.");
        for (kind, h) in &m.durations {
            histogram(&mut out, "trig_run_duration_seconds", &format!("kind=\"{kind}\","), h);
        }
        head(&mut out, "trig_scheduler_lag_seconds", "histogram", "How long after it was due a run started.");
        histogram(&mut out, "trig_scheduler_lag_seconds", "", &m.lag);
        head(&mut out, "trig_lease_claims_total", "counter", "Lease claims: claimed, or held by another process.");
        for (result, n) in &m.claims {
            let _ = writeln!(out, "trig_lease_claims_total{{result=\"{result}\"}} {n}");
        }
        head(&mut out, "trig_lease_losses_total", "counter", "Runs that lost their lease (expired or taken over).");
        let _ = writeln!(out, "trig_lease_losses_total {}", m.lease_losses);
        head(&mut out, "trig_warehouse_wakeups_total", "counter", "Runs that found their warehouse not running (a start Trig caused).");
        let _ = writeln!(out, "trig_warehouse_wakeups_total {}", m.wakeups);
        head(&mut out, "trig_statements_total", "counter", "Statements Trig sent to warehouses.");
        let _ = writeln!(out, "trig_statements_total {}", m.statements);
        head(
            &mut out,
            "trig_token_expiry_checks_total",
            "counter",
            "Connections whose token expiry was read from the workspace's Token API.",
        );
        let _ = writeln!(out, "trig_token_expiry_checks_total {}", m.token_checks);
        head(&mut out, "trig_alerts_total", "counter", "Alerts by event and delivery.");
        for ((event, result), n) in &m.alerts {
            let _ = writeln!(out, "trig_alerts_total{{event=\"{event}\",result=\"{result}\"}} {n}");
        }
        out
    }
}

fn histogram(out: &mut String, name: &str, labels: &str, h: &Histogram) {
    for (i, b) in h.bounds.iter().enumerate() {
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{b}\"}} {}", h.counts.get(i).copied().unwrap_or(0));
    }
    let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {}", h.count);
    let trimmed = labels.trim_end_matches(',');
    let braces = if trimmed.is_empty() { String::new() } else { format!("{{{trimmed}}}") };
    let _ = writeln!(out, "{name}_sum{braces} {}", h.sum);
    let _ = writeln!(out, "{name}_count{braces} {}", h.count);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_counted_by_kind_status_rows_and_duration_and_labels_hold_no_customer_words() {
        let m = Metrics::default();
        let mut run =
            trig_store::SyncRun { status: "failed".into(), error_kind: Some("Token Expired for acme".into()), ..Default::default() };
        run.counts.inserted = 7;
        run.statement_ids = vec!["s1".into(), "s2".into()];
        run.warehouse_state = Some("STOPPED".into());
        m.run_ended("events", &run, 2.0);
        m.lag(0.3);
        let text = m.render();
        assert!(text.contains("trig_runs_total{kind=\"events\",status=\"failed\"} 1"), "{text}");
        assert!(text.contains("trig_rows_total{outcome=\"inserted\"} 7"));
        assert!(text.contains("trig_errors_total{kind=\"other\"} 1"), "an unknown error kind is not a label: {text}");
        assert!(text.contains("trig_run_duration_seconds_bucket{kind=\"events\",le=\"5\"} 1"), "{text}");
        assert!(text.contains("trig_run_duration_seconds_bucket{kind=\"events\",le=\"1\"} 0"));
        assert!(text.contains("trig_run_duration_seconds_count{kind=\"events\"} 1"));
        assert!(text.contains("trig_scheduler_lag_seconds_count 1"));
        assert!(
            text.contains("trig_scheduler_lag_seconds_bucket{le=\"0.25\"} 0")
                && text.contains("trig_scheduler_lag_seconds_bucket{le=\"0.5\"} 1"),
            "{text}"
        );
        assert!(text.contains("trig_statements_total 2") && text.contains("trig_warehouse_wakeups_total 1"));
        assert!(!text.contains("acme"));
    }
}

//! The statement lifecycle: PENDING (waiting for the warehouse) → RUNNING →
//! SUCCEEDED / FAILED / CANCELED, and CLOSED once the result has expired.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::error::SqlError;
use crate::results::{Format, ResultSet};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Pending,
    Running,
    Succeeded,
    Failed,
    Canceled,
    Closed,
}

impl State {
    pub fn as_str(&self) -> &'static str {
        match self {
            State::Pending => "PENDING",
            State::Running => "RUNNING",
            State::Succeeded => "SUCCEEDED",
            State::Failed => "FAILED",
            State::Canceled => "CANCELED",
            State::Closed => "CLOSED",
        }
    }
    pub fn is_terminal(&self) -> bool {
        !matches!(self, State::Pending | State::Running)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Inline,
    ExternalLinks,
}

/// What the client asked for, recorded with the statement.
#[derive(Debug, Clone)]
pub struct Request {
    pub statement: String,
    pub warehouse_id: String,
    pub principal: String,
    pub disposition: Disposition,
    pub format: Format,
    pub lz4: bool,
    pub query_tags: Vec<(String, Option<String>)>,
    pub row_limit: Option<u64>,
    pub byte_limit: Option<u64>,
    pub catalog: Option<String>,
    pub schema: Option<String>,
    pub params: Vec<crate::engine::Param>,
}

#[derive(Debug)]
pub struct Inner {
    pub state: State,
    pub error: Option<SqlError>,
    pub result: Option<Arc<ResultSet>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// One statement. The executing task and the HTTP handlers share it.
#[derive(Debug)]
pub struct Statement {
    pub id: String,
    pub request: Request,
    pub submitted_at: DateTime<Utc>,
    pub cancel: CancellationToken,
    inner: Mutex<Inner>,
    changed: watch::Sender<State>,
}

impl Statement {
    pub fn new(id: String, request: Request) -> Arc<Self> {
        let (tx, _) = watch::channel(State::Pending);
        Arc::new(Statement {
            id,
            request,
            submitted_at: Utc::now(),
            cancel: CancellationToken::new(),
            inner: Mutex::new(Inner { state: State::Pending, error: None, result: None, finished_at: None }),
            changed: tx,
        })
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn state(&self) -> State {
        self.lock().state
    }

    /// Moves to `state` unless the statement already ended (a late cancel
    /// never overwrites a result, a late result never revives a cancel).
    pub fn transition(&self, state: State, error: Option<SqlError>, result: Option<Arc<ResultSet>>) -> bool {
        let mut g = self.lock();
        if g.state.is_terminal() {
            return false;
        }
        g.state = state;
        g.error = error;
        g.result = result;
        if state.is_terminal() {
            g.finished_at = Some(Utc::now());
        }
        drop(g);
        self.changed.send_replace(state);
        true
    }

    /// Closes a finished statement whose result has expired.
    pub fn close_if_expired(&self, result_ttl: chrono::Duration) {
        let mut g = self.lock();
        if g.state == State::Succeeded && g.finished_at.is_some_and(|f| Utc::now() - f > result_ttl) {
            g.state = State::Closed;
            g.result = None;
        }
    }

    /// Waits until the statement ends or `timeout` passes.
    pub async fn wait(&self, timeout: std::time::Duration) {
        let mut rx = self.changed.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|s| s.is_terminal())).await;
    }

    /// `status` as the API shows it.
    pub fn status_json(&self) -> Value {
        let g = self.lock();
        let mut status = serde_json::Map::new();
        status.insert("state".into(), json!(g.state.as_str()));
        if let Some(e) = &g.error {
            status.insert("error".into(), e.to_json());
            if let Some(s) = &e.sql_state {
                status.insert("sql_state".into(), json!(s));
            }
        }
        Value::Object(status)
    }
}

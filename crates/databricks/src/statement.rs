//! Statements: submit, wait (reporting a cold warehouse's progress), and
//! read the result as a stream of Arrow record batches.
//!
//! The main path is EXTERNAL_LINKS + ARROW_STREAM with LZ4 frames: chunks are
//! downloaded by at most `max_concurrent_chunks` tasks, yielded in order, so
//! memory holds a bounded number of chunks whatever the result's size. An
//! expired link is refreshed by asking for the chunk again. A server that
//! refuses EXTERNAL_LINKS gets INLINE + JSON_ARRAY instead. A statement that
//! times out, whose future is dropped, or whose stream is dropped before the
//! end is cancelled on the server.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use futures::{Stream, StreamExt, stream};
use reqwest::Method;
use serde_json::{Value, json};

use crate::api::{Manifest, ResultData, StatementResponse, classify_failed};
use crate::arrow::{batch_from_rows, decode_chunk, schema_of};
use crate::client::{Client, Failure};
use crate::error::Error;
use crate::sql::ensure_read_only;

/// A read-only statement with named, typed parameters.
#[derive(Debug, Clone, Default)]
pub struct Statement {
    pub sql: String,
    pub parameters: Vec<Parameter>,
    pub catalog: Option<String>,
    pub schema: Option<String>,
    /// `query_tags`: shown in the customer's query history (e.g. the sync run id).
    pub tags: Vec<(String, String)>,
    pub row_limit: Option<u64>,
}

/// A named parameter marker `:name`, bound as `value` cast to `type_name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parameter {
    pub name: String,
    /// `None` binds SQL NULL.
    pub value: Option<String>,
    /// A Databricks type: `STRING`, `TIMESTAMP`, `BIGINT`, `DATE`, ...
    pub type_name: String,
}

impl Statement {
    pub fn new(sql: impl Into<String>) -> Statement {
        Statement { sql: sql.into(), ..Default::default() }
    }
    pub fn param(mut self, name: &str, value: Option<String>, type_name: &str) -> Statement {
        self.parameters.push(Parameter { name: name.into(), value, type_name: type_name.into() });
        self
    }
    pub fn tag(mut self, key: &str, value: impl Into<String>) -> Statement {
        self.tags.push((key.into(), value.into()));
        self
    }
    pub fn catalog(mut self, c: impl Into<String>) -> Statement {
        self.catalog = Some(c.into());
        self
    }
}

/// What a long wait looks like from outside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The statement is queued or running; `warehouse_state` is set while the warehouse is not RUNNING.
    Waiting { statement_id: String, state: String, warehouse_state: Option<String>, waited: Duration },
    /// The result is ready.
    Ready { statement_id: String, rows: u64, chunks: u64 },
}

pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// How to run one statement.
#[derive(Clone)]
pub struct QueryOptions {
    /// Time from submission to a ready result; the statement is cancelled after it.
    pub timeout: Duration,
    /// External-link downloads in flight at once.
    pub max_concurrent_chunks: usize,
    /// Ask for LZ4-framed Arrow chunks.
    pub compression: bool,
    /// Skip EXTERNAL_LINKS (small metadata queries).
    pub inline: bool,
    pub progress: Option<ProgressFn>,
}

impl Default for QueryOptions {
    fn default() -> Self {
        QueryOptions { timeout: Duration::from_secs(30 * 60), max_concurrent_chunks: 4, compression: true, inline: false, progress: None }
    }
}

impl std::fmt::Debug for QueryOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryOptions")
            .field("timeout", &self.timeout)
            .field("max_concurrent_chunks", &self.max_concurrent_chunks)
            .field("compression", &self.compression)
            .field("inline", &self.inline)
            .finish()
    }
}

/// Cancels the statement on the server when dropped while armed.
struct CancelGuard {
    client: Client,
    statement_id: String,
    armed: bool,
}

impl CancelGuard {
    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let client = self.client.clone();
            let id = std::mem::take(&mut self.statement_id);
            tracing::debug!(statement_id = %id, "cancelling the statement");
            rt.spawn(async move { client.cancel(&id).await });
        }
    }
}

/// A finished statement's result: Arrow record batches in order, read lazily.
pub struct ResultStream {
    statement_id: String,
    manifest: Manifest,
    schema: SchemaRef,
    disposition: &'static str,
    inner: Pin<Box<dyn Stream<Item = Result<RecordBatch, Error>> + Send>>,
    guard: CancelGuard,
    done: bool,
}

impl std::fmt::Debug for ResultStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResultStream").field("statement_id", &self.statement_id).field("disposition", &self.disposition).finish()
    }
}

impl ResultStream {
    pub fn statement_id(&self) -> &str {
        &self.statement_id
    }
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    /// The schema the manifest describes (batches carry the server's exact Arrow schema).
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }
    /// `EXTERNAL_LINKS` or `INLINE`.
    pub fn disposition(&self) -> &'static str {
        self.disposition
    }
    pub fn total_rows(&self) -> u64 {
        self.manifest.total_row_count
    }
    /// Reads everything (for small results and tests).
    pub async fn collect_batches(mut self) -> Result<Vec<RecordBatch>, Error> {
        let mut out = Vec::new();
        while let Some(b) = self.next().await {
            out.push(b?);
        }
        Ok(out)
    }
}

impl Stream for ResultStream {
    type Item = Result<RecordBatch, Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.inner.as_mut().poll_next(cx) {
            Poll::Ready(None) => {
                self.done = true;
                self.guard.disarm();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                self.done = true;
                Poll::Ready(Some(Err(e)))
            }
            other => other,
        }
    }
}

/// A spawned task that is aborted when its handle is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> std::future::Future for AbortOnDrop<T> {
    type Output = Result<T, Error>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|r| r.map_err(|e| Error::Protocol { detail: format!("chunk download task failed: {e}") }))
    }
}

fn valid_parameter_name(n: &str) -> bool {
    !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') && !n.as_bytes()[0].is_ascii_digit()
}

impl Client {
    /// Runs a read-only statement and returns its result as a stream.
    pub async fn query(&self, stmt: &Statement, opts: &QueryOptions) -> Result<ResultStream, Error> {
        let started = Instant::now();
        let mut inline = opts.inline;
        let resp = match self.submit(stmt, inline, opts.compression).await {
            Err(Error::Api { status: 400, message, .. }) if !inline && refuses_external_links(&message) => {
                tracing::warn!("the workspace refuses EXTERNAL_LINKS ({message}); falling back to INLINE results, limited to 25 MiB");
                inline = true;
                self.submit(stmt, true, false).await?
            }
            other => other?,
        };
        let mut guard = CancelGuard { client: self.clone(), statement_id: resp.statement_id.clone(), armed: true };
        let resp = self.wait(resp, started, opts, &mut guard).await?;
        let manifest =
            resp.manifest.clone().ok_or_else(|| Error::Protocol { detail: "a SUCCEEDED statement without a manifest".into() })?;
        if let Some(p) = &opts.progress {
            p(&Progress::Ready {
                statement_id: resp.statement_id.clone(),
                rows: manifest.total_row_count,
                chunks: manifest.total_chunk_count,
            });
        }
        let schema = schema_of(&manifest.schema.columns);
        let first = resp.result.clone().unwrap_or_default();
        let id = resp.statement_id.clone();
        let inner: Pin<Box<dyn Stream<Item = Result<RecordBatch, Error>> + Send>> = if manifest.total_chunk_count == 0 {
            Box::pin(stream::empty())
        } else if manifest.format == "ARROW_STREAM" {
            self.link_stream(id.clone(), &manifest, first, opts.max_concurrent_chunks.max(1))
        } else if manifest.format == "JSON_ARRAY" {
            self.inline_stream(id.clone(), schema.clone(), first)
        } else {
            return Err(Error::Protocol { detail: format!("unexpected result format {}", manifest.format) });
        };
        Ok(ResultStream {
            statement_id: id,
            manifest,
            schema,
            disposition: if inline { "INLINE" } else { "EXTERNAL_LINKS" },
            inner,
            guard,
            done: false,
        })
    }

    /// Runs a small statement (metadata) and returns its rows as text, as
    /// the JSON_ARRAY format renders them. At most `max_rows` rows are kept.
    pub async fn query_text(&self, stmt: &Statement, max_rows: u64) -> Result<TextResult, Error> {
        let mut s = stmt.clone();
        s.row_limit = Some(max_rows);
        let (resp, manifest) = self.run_inline(&s).await?;
        let columns = manifest.schema.columns.iter().map(|c| c.name.clone()).collect();
        let mut rows = Vec::new();
        let mut data = resp.result.unwrap_or_default();
        loop {
            rows.extend(data.data_array.take().unwrap_or_default());
            match data.next_chunk_index {
                Some(i) => data = self.chunk(&resp.statement_id, i).await?,
                None => break,
            }
        }
        Ok(TextResult { statement_id: resp.statement_id, columns, rows, truncated: manifest.truncated })
    }

    /// The columns a statement's result has (its manifest), without reading rows.
    pub async fn result_columns(&self, stmt: &Statement) -> Result<Vec<crate::Column>, Error> {
        Ok(self.run_inline(stmt).await?.1.schema.columns)
    }

    /// Runs a small statement INLINE to its end (cancelled if dropped or too
    /// slow): its final response and manifest.
    async fn run_inline(&self, stmt: &Statement) -> Result<(StatementResponse, Manifest), Error> {
        let opts = QueryOptions { inline: true, timeout: Duration::from_secs(120), ..Default::default() };
        let started = Instant::now();
        let resp = self.submit(stmt, true, false).await?;
        let mut guard = CancelGuard { client: self.clone(), statement_id: resp.statement_id.clone(), armed: true };
        let resp = self.wait(resp, started, &opts, &mut guard).await?;
        guard.disarm();
        let manifest =
            resp.manifest.clone().ok_or_else(|| Error::Protocol { detail: "a SUCCEEDED statement without a manifest".into() })?;
        Ok((resp, manifest))
    }

    /// Sends a statement, without `query_tags` once the workspace has
    /// refused them (a Databricks-compatible service may not know the
    /// field): the statement runs untagged instead of not at all, and
    /// [`Client::query_tags_refused`] says so for the run's record.
    async fn submit(&self, stmt: &Statement, inline: bool, compression: bool) -> Result<StatementResponse, Error> {
        let tagged = !self.inner.query_tags_refused.load(std::sync::atomic::Ordering::Relaxed);
        match self.submit_once(stmt, inline, compression, tagged).await {
            Err(Error::Api { status: 400, message, .. }) if tagged && message.to_ascii_lowercase().contains("query_tags") => {
                tracing::warn!("the workspace refuses query_tags ({message}); sending statements without them from now on");
                self.inner.query_tags_refused.store(true, std::sync::atomic::Ordering::Relaxed);
                self.submit_once(stmt, inline, compression, false).await
            }
            other => other,
        }
    }

    /// Whether this workspace refused `query_tags` (statements then go untagged).
    pub fn query_tags_refused(&self) -> bool {
        self.inner.query_tags_refused.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Submits asynchronously (`wait_timeout: 0s`): the statement id comes
    /// back at once, so a timeout, a dropped future or a dropped stream can
    /// always cancel it, and a cold warehouse's start is reported while it
    /// happens instead of hiding inside a 10 s server-side wait. The price is
    /// one poll for statements that would have finished within the wait.
    ///
    /// The submit is re-sent only when it certainly started nothing (see
    /// `Failure::submit_verdict`): a lost answer may hide a running
    /// statement, and sending it again would run it twice on the
    /// customer's warehouse.
    async fn submit_once(&self, stmt: &Statement, inline: bool, compression: bool, tagged: bool) -> Result<StatementResponse, Error> {
        ensure_read_only(&stmt.sql)?;
        for p in &stmt.parameters {
            if !valid_parameter_name(&p.name) {
                return Err(Error::InvalidSetting { field: "parameters", reason: format!("`{}` is not a valid parameter name", p.name) });
            }
        }
        let mut body = json!({
            "statement": stmt.sql,
            "warehouse_id": self.warehouse_id(),
            "wait_timeout": "0s",
            "on_wait_timeout": "CONTINUE",
        });
        let m = body.as_object_mut().expect("object");
        if let Some(c) = stmt.catalog.as_ref().or(self.settings().default_catalog.as_ref()) {
            m.insert("catalog".into(), json!(c));
        }
        if let Some(s) = &stmt.schema {
            m.insert("schema".into(), json!(s));
        }
        if inline {
            m.insert("disposition".into(), json!("INLINE"));
            m.insert("format".into(), json!("JSON_ARRAY"));
        } else {
            m.insert("disposition".into(), json!("EXTERNAL_LINKS"));
            m.insert("format".into(), json!("ARROW_STREAM"));
            if compression {
                m.insert("result_compression".into(), json!("LZ4_FRAME"));
            }
        }
        if let Some(r) = stmt.row_limit {
            m.insert("row_limit".into(), json!(r));
        }
        if !stmt.parameters.is_empty() {
            let ps: Vec<Value> = stmt.parameters.iter().map(|p| json!({"name": p.name, "value": p.value, "type": p.type_name})).collect();
            m.insert("parameters".into(), Value::Array(ps));
        }
        if tagged {
            let mut tags: Vec<Value> = vec![json!({"key": "application", "value": "trig"})];
            tags.extend(stmt.tags.iter().take(19).map(|(k, v)| json!({"key": k, "value": v})));
            m.insert("query_tags".into(), Value::Array(tags));
        }
        self.call_submit("/api/2.0/sql/statements", &body).await
    }

    async fn get_statement(&self, id: &str) -> Result<StatementResponse, Error> {
        self.call(Method::GET, &format!("/api/2.0/sql/statements/{id}"), &[], None).await
    }

    pub(crate) async fn chunk(&self, id: &str, index: u64) -> Result<ResultData, Error> {
        self.call(Method::GET, &format!("/api/2.0/sql/statements/{id}/result/chunks/{index}"), &[], None).await
    }

    /// Asks the server to cancel a statement (best effort; errors are logged).
    pub async fn cancel(&self, statement_id: &str) {
        let r: Result<Value, Error> =
            self.call(Method::POST, &format!("/api/2.0/sql/statements/{statement_id}/cancel"), &[], Some(&json!({}))).await;
        if let Err(e) = r {
            tracing::warn!(statement_id, error = %e, "cancelling the statement failed");
        }
    }

    /// Polls until the statement is terminal, with capped exponential
    /// backoff; checks the warehouse while the statement is PENDING.
    async fn wait(
        &self,
        mut resp: StatementResponse,
        started: Instant,
        opts: &QueryOptions,
        guard: &mut CancelGuard,
    ) -> Result<StatementResponse, Error> {
        // Polls start fast and grow by half each time: the time lost between
        // the statement finishing and us noticing stays under a third of its
        // run time, with few requests for long statements (capped at 2 s).
        // The first comes after 2 ms: a backfill's windows on a running
        // warehouse finish in tens of milliseconds, one after another, and
        // what is lost noticing each is lost again for every window (from
        // 10 ms, a 1M-event backfill's reader waited about 0.25 s more for
        // its statements). A 10 s statement costs four polls more for it.
        let mut delay = Duration::from_millis(2);
        let mut last_warehouse_check: Option<Instant> = None;
        let mut warehouse_state: Option<String> = None;
        loop {
            match resp.status.state.as_str() {
                "SUCCEEDED" => return Ok(resp),
                "FAILED" => {
                    guard.disarm();
                    return Err(classify_failed(&resp.status, self.principal(), self.warehouse_id()));
                }
                "CANCELED" | "CLOSED" => {
                    guard.disarm();
                    return Err(Error::StatementEnded { statement_id: resp.statement_id.clone(), state: resp.status.state.clone() });
                }
                _ => {}
            }
            let waited = started.elapsed();
            if waited >= opts.timeout {
                guard.disarm();
                self.cancel(&resp.statement_id).await;
                return Err(Error::TimedOut { what: "the statement".into(), after: opts.timeout });
            }
            if resp.status.state == "PENDING"
                && waited > Duration::from_millis(500)
                && last_warehouse_check.is_none_or(|t| t.elapsed() > Duration::from_secs(5))
            {
                last_warehouse_check = Some(Instant::now());
                if let Ok(w) = self.warehouse().await {
                    if matches!(w.state.as_str(), "STOPPED" | "STOPPING") && w.auto_resume == Some(false) {
                        guard.disarm();
                        self.cancel(&resp.statement_id).await;
                        return Err(Error::WarehouseStopped { warehouse: self.warehouse_id().to_string() });
                    }
                    warehouse_state = (w.state != "RUNNING").then_some(w.state);
                }
            }
            if let Some(p) = &opts.progress {
                p(&Progress::Waiting {
                    statement_id: resp.statement_id.clone(),
                    state: resp.status.state.clone(),
                    warehouse_state: warehouse_state.clone(),
                    waited,
                });
            }
            tokio::time::sleep(delay.min(opts.timeout.saturating_sub(waited))).await;
            delay = delay.mul_f64(1.5).min(Duration::from_secs(2));
            resp = self.get_statement(&resp.statement_id).await?;
        }
    }

    fn inline_stream(
        &self,
        id: String,
        schema: SchemaRef,
        first: ResultData,
    ) -> Pin<Box<dyn Stream<Item = Result<RecordBatch, Error>> + Send>> {
        let client = self.clone();
        Box::pin(stream::try_unfold(Some(first), move |next| {
            let client = client.clone();
            let id = id.clone();
            let schema = schema.clone();
            async move {
                let Some(mut data) = next else { return Ok(None) };
                let rows = data.data_array.take().unwrap_or_default();
                let batch = batch_from_rows(&schema, &rows)?;
                let following = match data.next_chunk_index {
                    Some(i) => Some(client.chunk(&id, i).await?),
                    None => None,
                };
                Ok(Some((batch, following)))
            }
        }))
    }

    fn link_stream(
        &self,
        id: String,
        manifest: &Manifest,
        first: ResultData,
        concurrency: usize,
    ) -> Pin<Box<dyn Stream<Item = Result<RecordBatch, Error>> + Send>> {
        let lz4 = manifest.result_compression.as_deref() == Some("LZ4_FRAME");
        let first_links = Arc::new(std::sync::Mutex::new(first.external_links.unwrap_or_default()));
        let client = self.clone();
        let fetch = move |index: u64| {
            let client = client.clone();
            let id = id.clone();
            let known = first_links.lock().ok().and_then(|mut l| l.iter().position(|x| x.chunk_index == index).map(|p| l.swap_remove(p)));
            AbortOnDrop(tokio::spawn(async move { client.fetch_chunk(&id, index, known, lz4).await }))
        };
        // The first chunk is on its way as soon as the result is, not when
        // the stream is first polled: a reader still busy with an earlier
        // result (a sync maps one window while the next one runs) finds it
        // downloaded and decoded. The others follow as the stream is read,
        // at most `concurrency` at a time.
        let total = manifest.total_chunk_count;
        let first_chunk = (total > 0).then(|| fetch(0));
        let chunks =
            stream::iter(first_chunk).chain(stream::iter(1..total).map(fetch)).buffered(concurrency).map(|joined| joined.and_then(|r| r));
        Box::pin(chunks.flat_map(|r| match r {
            Ok(batches) => stream::iter(batches.into_iter().map(Ok).collect::<Vec<_>>()),
            Err(e) => stream::iter(vec![Err(e)]),
        }))
    }

    /// Downloads and decodes one chunk; a link the storage refuses (expired)
    /// is replaced by asking for the chunk again, up to three times.
    async fn fetch_chunk(
        &self,
        id: &str,
        index: u64,
        known: Option<crate::api::ExternalLink>,
        lz4: bool,
    ) -> Result<Vec<RecordBatch>, Error> {
        let mut link = known;
        let mut refreshed = 0;
        loop {
            let l = match link.take() {
                Some(l) => l,
                None => {
                    let data = self.chunk(id, index).await?;
                    data.external_links
                        .unwrap_or_default()
                        .into_iter()
                        .find(|l| l.chunk_index == index)
                        .ok_or_else(|| Error::Protocol { detail: format!("chunk {index} came without an external link") })?
                }
            };
            let policy = self.inner.options.retry;
            match policy.run(|_| self.download(&l.external_link, l.http_headers.as_ref()), Failure::verdict).await {
                Ok(bytes) => return decode_chunk(bytes, lz4),
                Err(ex) => match ex.error {
                    Failure::Rest(e) if (400..500).contains(&e.status) && e.status != 429 && refreshed < 3 => {
                        refreshed += 1;
                        tracing::debug!(
                            statement_id = id,
                            chunk = index,
                            status = e.status,
                            "the result link was refused (expired?); asking for a fresh one"
                        );
                    }
                    Failure::Rest(e) => {
                        return Err(Error::Unavailable {
                            detail: format!(
                                "downloading result chunk {index} failed with HTTP {} after {} attempts: {}",
                                e.status, ex.attempts, e.message
                            ),
                        });
                    }
                    other => return Err(self.classify(other, ex.attempts)),
                },
            }
        }
    }
}

fn refuses_external_links(message: &str) -> bool {
    let m = message.to_ascii_uppercase();
    m.contains("EXTERNAL_LINKS") || m.contains("DISPOSITION")
}

/// A small result as text.
#[derive(Debug, Clone)]
pub struct TextResult {
    pub statement_id: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
    pub truncated: bool,
}

impl TextResult {
    /// The values of one named column.
    pub fn column(&self, name: &str) -> Vec<Option<&str>> {
        match self.columns.iter().position(|c| c == name) {
            Some(i) => self.rows.iter().map(|r| r.get(i).and_then(|v| v.as_deref())).collect(),
            None => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_names_are_identifiers() {
        assert!(valid_parameter_name("from_ts"));
        assert!(!valid_parameter_name("1x"));
        assert!(!valid_parameter_name("a-b"));
        assert!(!valid_parameter_name(""));
    }

    #[test]
    fn refusal_of_external_links_is_recognised() {
        assert!(refuses_external_links("The EXTERNAL_LINKS disposition is disabled for this workspace."));
        assert!(!refuses_external_links("The wait_timeout field must be 0 seconds"));
    }
}

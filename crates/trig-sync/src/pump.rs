//! Moves a run's statements into the store: record batches are mapped
//! while earlier transactions are being written, rows are gathered into
//! transactions of about `write_batch_rows`, and the last transaction of
//! each statement carries its checkpoints (the cursor moves with the rows it
//! covers). Memory holds at most two transactions of mapped rows beside
//! the store's writes in flight (one, or two on PostgreSQL), plus the
//! client's chunks in flight and the next two statements' first chunks,
//! whatever the size of the source.

use arrow_array::RecordBatch;
use databricks::ResultStream;
use futures::StreamExt;
use trig_store::{Checkpoint, Progress, Quarantined, RunCounts, SyncRun};

use crate::query::Query;
use crate::window::Window;
use crate::{Ctx, Error};

/// Rows mapped at a time. The writer runs in the reader's task: while the
/// reader maps it is not polled, so a transaction the store has finished
/// waits for the mapping to end before the next one is handed over. A slice
/// of this size maps in about a millisecond.
const MAP_SLICE_ROWS: usize = 2048;

/// What a pipeline does with rows: map them, and write one transaction.
pub(crate) trait Sink {
    type Row: Send;
    fn map(&self, batch: &RecordBatch) -> (Vec<Self::Row>, Vec<Quarantined>);
    /// Writes one transaction (its rows, and what was read for them, added
    /// to the run's record in the same commit); returns what it did, as run
    /// figures.
    fn write(&self, txn: Txn<Self::Row>) -> impl Future<Output = Result<RunCounts, Error>> + Send;
    /// How many writes may be pending at once: they commit in the order of
    /// the calls to `write`, and one failing fails those called while it was
    /// pending (`Store::write_events`).
    fn in_flight(&self) -> usize {
        1
    }
}

/// One store transaction's worth.
pub(crate) struct Txn<R> {
    pub rows: Vec<R>,
    pub quarantine: Vec<Quarantined>,
    pub checkpoints: Vec<Checkpoint>,
    /// What was read since the previous transaction.
    pub progress: Progress,
}

impl<R> Txn<R> {
    /// A transaction that only moves cursors.
    pub fn checkpoints(checkpoints: Vec<Checkpoint>) -> Txn<R> {
        Txn { rows: Vec::new(), quarantine: Vec::new(), checkpoints, progress: Progress::default() }
    }
}

/// One statement to read, and the checkpoints its last transaction commits.
pub(crate) struct Step {
    pub query: Query,
    pub checkpoints: Vec<Checkpoint>,
    pub window: Option<Window>,
}

/// The statements of a run, decided one at a time (so a window can be sized
/// by how many rows the previous one held, and an empty stretch skipped by
/// asking where the data resumes).
pub(crate) trait Plan: Send {
    fn next(&mut self, last_rows: Option<u64>) -> impl Future<Output = Result<Option<Step>, Error>> + Send;
    /// How much of the run's range is read, 0 to 1.
    fn covered(&self) -> f64;
}

/// A plan of exactly one statement.
pub(crate) struct Once(pub Option<Step>);

impl Plan for Once {
    async fn next(&mut self, _: Option<u64>) -> Result<Option<Step>, Error> {
        Ok(self.0.take())
    }
    fn covered(&self) -> f64 {
        if self.0.is_some() { 0.0 } else { 1.0 }
    }
}

/// Reads every statement of `plan` into the store through `sink`.
///
/// Two futures run side by side: the reader runs the statements one after
/// another, maps their batches and hands full transactions to the writer,
/// which commits them in order (on the store's thread, or its
/// connections). The reader builds the next transaction while the writer
/// commits the last, and waits only when it has a whole one ready before
/// the writer has room: at most two transactions of rows exist beside the
/// writes in flight (one on SQLite; two on PostgreSQL, where the next
/// transaction's first half runs while the last one commits). Each
/// statement ends with a transaction that carries its checkpoints.
pub(crate) async fn pump<S: Sink + Sync>(ctx: &Ctx<'_>, sink: &S, plan: &mut impl Plan, run: &mut SyncRun) -> Result<(), Error> {
    let target = ctx.options.write_batch_rows.max(1);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Txn<S::Row>>(1);
    let already_read = run.counts.rows_read;
    let mut read_into = Reading {
        rows_read: already_read,
        statement_ids: Vec::new(),
        bytes: 0,
        unsent: Progress::default(),
        mapping: std::time::Duration::ZERO,
        waiting: std::time::Duration::ZERO,
        source: std::time::Duration::ZERO,
        transactions: 0,
    };
    let reading = &mut read_into;
    // Sends a step's statement at once (a task of its own); dropping the
    // future cancels it.
    let start = |step: Step| -> Pending { (step.checkpoints, step.window, Box::pin(ctx.query_ahead(step.query))) };
    // The planner runs the statements ahead of the reader, in order: as soon
    // as one succeeds it decides the next window (sized from this one's row
    // count), hands this one over (its first chunk downloading: the client
    // fetches it at once) and sends the next, which runs on the warehouse
    // while the reader is still on the one before. It waits while the reader
    // has one statement in hand and one handed over: the statements read,
    // ready and running are at most three. It owns the sender: when it
    // finishes, the reader sees the end; when the reader stops, its next
    // hand-over fails and it stops too.
    let (ready_tx, mut ready) = tokio::sync::mpsc::channel::<Result<Ready, Error>>(1);
    let planner = async move {
        let mut running = match plan.next(None).await {
            Ok(step) => step.map(start),
            Err(e) => return drop(ready_tx.send(Err(e)).await),
        };
        while let Some((checkpoints, window, statement)) = running.take() {
            let mut following = None;
            let handed = match statement.await {
                Ok(stream) => match plan.next(Some(stream.total_rows())).await {
                    Ok(step) => {
                        following = step;
                        Ok(Ready { checkpoints, window, stream, covered: plan.covered() })
                    }
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            let failed = handed.is_err();
            if ready_tx.send(handed).await.is_err() || failed {
                return;
            }
            // Sent once this one is handed over: at most two wait beside the one being read.
            running = following.map(start);
        }
    };
    // The reader owns the writer's sender: when it finishes, the writer sees the end.
    let reader = async move {
        // A transaction is only built once the writer has taken the previous
        // one (the channel's slot is free): at most two exist at once.
        let Ok(mut slot) = tx.reserve().await else { return Ok(()) };
        loop {
            let waiting = std::time::Instant::now();
            let next = tokio::select! {
                r = ready.recv() => r,
                _ = ctx.cancel.cancelled() => return Err(Error::Cancelled),
            };
            reading.source += waiting.elapsed();
            let Some(next) = next else { break };
            let Ready { checkpoints, window, mut stream, covered } = next?;
            reading.statement_ids.push(stream.statement_id().to_string());
            reading.unsent.statement_ids.push(stream.statement_id().to_string());
            let bytes = stream.manifest().total_byte_count.unwrap_or(0);
            reading.bytes += bytes;
            reading.unsent.bytes += bytes;
            let total = stream.total_rows();
            let mut rows: Vec<S::Row> = Vec::with_capacity(target.min(total as usize));
            let mut bad: Vec<Quarantined> = Vec::new();
            let mut read_here: u64 = 0;
            loop {
                let waiting = std::time::Instant::now();
                let next = tokio::select! {
                    b = stream.next() => b,
                    _ = ctx.cancel.cancelled() => return Err(Error::Cancelled),
                };
                reading.source += waiting.elapsed();
                let Some(batch) = next else { break };
                let batch = batch?;
                // A chunk can hold far more rows than a transaction (Databricks
                // cuts results into chunks of ~120k rows): it is mapped in
                // slices of at most a transaction's worth (a slice shares the
                // chunk's buffers), so mapped rows never exceed two transactions (of
                // which a statement's last may be a quarter larger, below).
                let mut offset = 0;
                while offset < batch.num_rows() {
                    let mapping = std::time::Instant::now();
                    let held = rows.len() + bad.len();
                    // The statement's last rows join this transaction rather
                    // than make one of their own (a commit, and on PostgreSQL a
                    // WAL flush, for a handful of rows) when they are at most a
                    // quarter of a transaction more. By the manifest's row
                    // count; once more rows arrive than it said, as usual.
                    let left = total.checked_sub(read_here).filter(|&l| l > 0).map(|l| usize::try_from(l).unwrap_or(usize::MAX));
                    let whole = left.filter(|&l| held.saturating_add(l) <= target + target / 4);
                    let room = whole.unwrap_or(target.saturating_sub(held));
                    let take = room.max(1).min(batch.num_rows() - offset).min(MAP_SLICE_ROWS);
                    let (mapped, quarantined) = sink.map(&batch.slice(offset, take));
                    offset += take;
                    read_here += take as u64;
                    reading.rows_read += take as u64;
                    reading.unsent.rows_read += take as u64;
                    rows.extend(mapped);
                    bad.extend(quarantined);
                    reading.mapping += mapping.elapsed();
                    if whole.is_none() && rows.len() + bad.len() >= target {
                        reading.transactions += 1;
                        slot.send(Txn {
                            rows: std::mem::replace(&mut rows, Vec::with_capacity(target)),
                            quarantine: std::mem::take(&mut bad),
                            checkpoints: Vec::new(),
                            progress: std::mem::take(&mut reading.unsent),
                        });
                        // A closed channel means the writer failed; it reports why.
                        let waiting = std::time::Instant::now();
                        let Ok(next) = tx.reserve().await else { return Ok(()) };
                        reading.waiting += waiting.elapsed();
                        slot = next;
                    } else {
                        // The writer shares this task: let it see that the
                        // store finished and hand it the next transaction.
                        tokio::task::yield_now().await;
                    }
                }
                drop(batch);
                ctx.progress(reading.rows_read, window, covered);
            }
            // The statement's last rows and the cursor that covers them: one transaction.
            reading.transactions += 1;
            slot.send(Txn { rows, quarantine: bad, checkpoints, progress: std::mem::take(&mut reading.unsent) });
            let waiting = std::time::Instant::now();
            let Ok(next) = tx.reserve().await else { return Ok(()) };
            reading.waiting += waiting.elapsed();
            slot = next;
            ctx.progress(reading.rows_read, window, covered);
        }
        Ok(())
    };
    // The writer owns the receiver: when it fails, the reader's sends fail.
    // It keeps up to `sink.in_flight()` writes pending (a store that can
    // start the next transaction while the last one commits), taking the next
    // transaction only when there is room; they finish in the order sent.
    let depth = sink.in_flight().max(1);
    let writer = async move {
        let mut counts = RunCounts::default();
        let mut busy = std::time::Duration::ZERO;
        let mut pending = futures::stream::FuturesOrdered::new();
        let mut since: Option<std::time::Instant> = None;
        loop {
            tokio::select! {
                // The oldest write first: its result (and its failure) comes before any later one's.
                biased;
                Some(wrote) = pending.next(), if !pending.is_empty() => {
                    if pending.is_empty() {
                        busy += since.take().map_or(std::time::Duration::ZERO, |s| s.elapsed());
                    }
                    match wrote {
                        Ok(c) => counts += c,
                        Err(e) => return (counts, busy, Err(e)),
                    }
                }
                txn = rx.recv(), if pending.len() < depth => match txn {
                    Some(txn) => {
                        since.get_or_insert_with(std::time::Instant::now);
                        pending.push_back(sink.write(txn));
                    }
                    None => break,
                },
            }
        }
        while let Some(wrote) = pending.next().await {
            match wrote {
                Ok(c) => counts += c,
                Err(e) => return (counts, busy, Err(e)),
            }
        }
        busy += since.take().map_or(std::time::Duration::ZERO, |s| s.elapsed());
        (counts, busy, Ok(()))
    };
    let started = std::time::Instant::now();
    // The planner is dropped (its running statement cancelled) once the
    // reader and the writer are done, whether it finished or not.
    let (read, (written, busy, wrote)) = {
        let mut work = std::pin::pin!(async { tokio::join!(reader, writer) });
        let mut planner = std::pin::pin!(planner);
        let mut planning = true;
        loop {
            tokio::select! {
                done = &mut work => break done,
                () = &mut planner, if planning => planning = false,
            }
        }
    };
    // Which side held the run back: a writer busy nearly all along is the
    // store's limit; a reader waiting little while mapping much is the CPU's;
    // a reader waiting for the source is the warehouse's (or the network's).
    tracing::debug!(
        elapsed_s = started.elapsed().as_secs_f64(),
        writer_busy_s = busy.as_secs_f64(),
        reader_mapping_s = read_into.mapping.as_secs_f64(),
        reader_waiting_s = read_into.waiting.as_secs_f64(),
        reader_waiting_for_source_s = read_into.source.as_secs_f64(),
        statements = read_into.statement_ids.len(),
        transactions = read_into.transactions,
        "statements read into the store"
    );
    // What was read and what committed are counted, even when the run then fails.
    run.counts.rows_read = read_into.rows_read;
    run.counts.bytes += read_into.bytes;
    run.statement_ids.extend(read_into.statement_ids);
    run.counts += written;
    wrote?;
    read
}

/// A statement that succeeded, handed to the reader: the checkpoints its
/// last transaction commits, its window, its result, and how much of the
/// run's range is planned (for progress).
struct Ready {
    checkpoints: Vec<Checkpoint>,
    window: Option<Window>,
    stream: ResultStream,
    covered: f64,
}

/// A step whose statement has been sent: its result, when it is ready.
type Pending = (Vec<Checkpoint>, Option<Window>, futures::future::BoxFuture<'static, Result<ResultStream, Error>>);

struct Reading {
    rows_read: u64,
    statement_ids: Vec<String>,
    bytes: u64,
    /// Read but not yet handed to the writer.
    unsent: Progress,
    /// Time spent mapping batches, and waiting for the writer to take a transaction.
    mapping: std::time::Duration,
    waiting: std::time::Duration,
    /// Time spent waiting for the warehouse: a statement's result, a chunk.
    source: std::time::Duration,
    transactions: u64,
}

//! Moves one statement's result into the store: record batches are mapped
//! while the previous transaction is being written, rows are gathered into
//! transactions of about `write_batch_rows`, and the last transaction of the
//! result carries the checkpoints (the cursor moves with the rows it covers).
//! Memory holds at most two transactions of mapped rows, whatever the result's size.

use arrow_array::RecordBatch;
use databricks::ResultStream;
use futures::StreamExt;
use trig_store::{Checkpoint, Quarantined, RunCounts, SyncRun};

use crate::{Ctx, Error};

/// What a pipeline does with rows: map them, and write one transaction.
pub(crate) trait Sink {
    type Row: Send;
    fn map(&self, batch: &RecordBatch) -> (Vec<Self::Row>, Vec<Quarantined>);
    /// Writes one transaction; returns what it did, as run figures.
    fn write(
        &self,
        rows: Vec<Self::Row>,
        quarantine: Vec<Quarantined>,
        checkpoints: Vec<Checkpoint>,
    ) -> impl Future<Output = Result<RunCounts, Error>> + Send;
}

pub(crate) fn add(total: &mut RunCounts, c: &RunCounts) {
    total.inserted += c.inserted;
    total.updated += c.updated;
    total.unchanged += c.unchanged;
    total.deduplicated += c.deduplicated;
    total.parked += c.parked;
    total.people_created += c.people_created;
    total.late += c.late;
    total.quarantined += c.quarantined;
}

/// Reads `stream` to its end into the store through `sink`.
pub(crate) async fn pump<S: Sink + Sync>(
    ctx: &Ctx<'_>,
    sink: &S,
    mut stream: ResultStream,
    run: &mut SyncRun,
    checkpoints: Vec<Checkpoint>,
    progress: impl Fn(u64),
) -> Result<(), Error> {
    let target = ctx.options.write_batch_rows.max(1);
    run.statement_ids.push(stream.statement_id().to_string());
    run.counts.bytes += stream.manifest().total_byte_count.unwrap_or(0);
    let mut ready: Option<(Vec<S::Row>, Vec<Quarantined>)> = None;
    let mut rows: Vec<S::Row> = Vec::new();
    let mut bad: Vec<Quarantined> = Vec::new();
    loop {
        let next = tokio::select! {
            b = stream.next() => b,
            _ = ctx.cancel.cancelled() => return Err(Error::Cancelled),
        };
        let Some(batch) = next else { break };
        let batch = batch?;
        run.counts.rows_read += batch.num_rows() as u64;
        let write = async {
            match ready.take() {
                Some((r, q)) => sink.write(r, q, Vec::new()).await.map(Some),
                None => Ok(None),
            }
        };
        let (written, (mapped, quarantined)) = tokio::join!(write, async { sink.map(&batch) });
        if let Some(c) = written? {
            add(&mut run.counts, &c);
        }
        rows.extend(mapped);
        bad.extend(quarantined);
        if rows.len() + bad.len() >= target {
            ready = Some((std::mem::take(&mut rows), std::mem::take(&mut bad)));
        }
        progress(run.counts.rows_read);
    }
    if let Some((r, q)) = ready.take() {
        let c = sink.write(r, q, Vec::new()).await?;
        add(&mut run.counts, &c);
    }
    // The last rows and the cursor that covers them: one transaction.
    let c = sink.write(rows, bad, checkpoints).await?;
    add(&mut run.counts, &c);
    Ok(())
}

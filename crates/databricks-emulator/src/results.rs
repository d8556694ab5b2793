//! Turning a query's rows into what the Statement Execution API serves:
//! chunks with a manifest, in `JSON_ARRAY`, `ARROW_STREAM` (one complete IPC
//! stream per chunk, optionally wrapped in one LZ4 frame) or `CSV`.

use std::io::Write;

use bytes::Bytes;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::arrow::record_batch::RecordBatch;
use serde_json::{Value, json};

use crate::engine::Output;
use crate::error::SqlError;
use crate::types::{render_value, statement_column_json};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    JsonArray,
    ArrowStream,
    Csv,
}

impl Format {
    pub fn as_str(&self) -> &'static str {
        match self {
            Format::JsonArray => "JSON_ARRAY",
            Format::ArrowStream => "ARROW_STREAM",
            Format::Csv => "CSV",
        }
    }
}

/// How a result is cut into chunks.
#[derive(Debug, Clone, Copy)]
pub struct ChunkPolicy {
    pub max_rows: usize,
    /// Target in-memory (Arrow) size of one chunk.
    pub max_bytes: usize,
}

/// One chunk as stored: its place in the result and the bytes a link serves.
#[derive(Debug, Clone)]
pub struct Chunk {
    pub row_offset: u64,
    pub row_count: u64,
    /// Uncompressed size (what the manifest reports).
    pub byte_count: u64,
    /// What the external link serves (compressed when LZ4 was asked for),
    /// or the JSON text of `data_array` for INLINE.
    pub body: Bytes,
}

#[derive(Debug, Clone)]
pub struct ResultSet {
    pub format: Format,
    pub lz4: bool,
    pub columns: Vec<Value>,
    pub chunks: Vec<Chunk>,
    pub total_row_count: u64,
    pub total_byte_count: u64,
    pub truncated: bool,
    /// A statement with no result set (`USE`, `SET`).
    pub no_schema: bool,
}

/// Builds the chunks. `byte_limit` truncates (sets `truncated`), measured on
/// the Arrow size, as Databricks measures on its internal representation.
pub fn build(out: &Output, format: Format, lz4: bool, policy: ChunkPolicy, byte_limit: Option<u64>) -> Result<ResultSet, SqlError> {
    let columns: Vec<Value> = out.schema.fields().iter().enumerate().map(|(i, f)| statement_column_json(f, i)).collect();
    let total_rows: usize = out.batches.iter().map(|b| b.num_rows()).sum();
    // The bytes the rows really occupy: `get_array_memory_size` counts whole
    // (over-allocated, shared) buffers and would make chunks ten times too small.
    let total_mem: usize = out.batches.iter().map(batch_bytes).sum();
    let row_bytes = total_mem.checked_div(total_rows).unwrap_or(1).max(1);
    let rows_per_chunk = policy.max_rows.min((policy.max_bytes / row_bytes).max(1)).max(1);

    let mut truncated = out.truncated;
    let mut allowed_rows = total_rows;
    if let Some(limit) = byte_limit {
        let fit = (limit as usize) / row_bytes;
        if fit < total_rows {
            allowed_rows = fit;
            truncated = true;
        }
    }

    let mut chunks = Vec::new();
    let mut pending: Vec<RecordBatch> = Vec::new();
    let mut pending_rows = 0usize;
    let mut offset = 0u64;
    let mut taken = 0usize;
    let mut flush = |pending: &mut Vec<RecordBatch>, pending_rows: &mut usize, offset: &mut u64| -> Result<(), SqlError> {
        if *pending_rows == 0 {
            return Ok(());
        }
        let first = chunks.is_empty();
        let chunk = encode(pending, format, lz4, first, *offset, *pending_rows as u64)?;
        *offset += *pending_rows as u64;
        chunks.push(chunk);
        pending.clear();
        *pending_rows = 0;
        Ok(())
    };
    'outer: for batch in &out.batches {
        let mut start = 0;
        while start < batch.num_rows() {
            if taken >= allowed_rows {
                break 'outer;
            }
            let n = (batch.num_rows() - start).min(rows_per_chunk - pending_rows).min(allowed_rows - taken);
            pending.push(batch.slice(start, n));
            pending_rows += n;
            taken += n;
            start += n;
            if pending_rows == rows_per_chunk {
                flush(&mut pending, &mut pending_rows, &mut offset)?;
            }
        }
    }
    flush(&mut pending, &mut pending_rows, &mut offset)?;
    let total_byte_count = chunks.iter().map(|c| c.byte_count).sum();
    Ok(ResultSet {
        format,
        lz4: lz4 && format == Format::ArrowStream,
        columns,
        chunks,
        total_row_count: taken as u64,
        total_byte_count,
        truncated,
        no_schema: out.schema.fields().is_empty(),
    })
}

fn batch_bytes(b: &RecordBatch) -> usize {
    b.columns().iter().map(|c| c.to_data().get_slice_memory_size().unwrap_or_else(|_| c.get_array_memory_size())).sum()
}

fn encode(batches: &[RecordBatch], format: Format, lz4: bool, first: bool, row_offset: u64, row_count: u64) -> Result<Chunk, SqlError> {
    let (raw, body) = match format {
        Format::ArrowStream => {
            let schema = batches[0].schema();
            let mut buf = Vec::new();
            {
                let mut w = StreamWriter::try_new(&mut buf, &schema).map_err(|e| SqlError::internal(e.to_string()))?;
                for b in batches {
                    w.write(b).map_err(|e| SqlError::internal(e.to_string()))?;
                }
                w.finish().map_err(|e| SqlError::internal(e.to_string()))?;
            }
            let raw = buf.len() as u64;
            let body = if lz4 {
                let mut enc = lz4_flex::frame::FrameEncoder::new(Vec::with_capacity(buf.len() / 2));
                enc.write_all(&buf).map_err(|e| SqlError::internal(e.to_string()))?;
                Bytes::from(enc.finish().map_err(|e| SqlError::internal(e.to_string()))?)
            } else {
                Bytes::from(buf)
            };
            (raw, body)
        }
        Format::JsonArray => {
            let rows = json_rows(batches);
            let text = serde_json::to_string(&rows).map_err(|e| SqlError::internal(e.to_string()))?;
            (text.len() as u64, Bytes::from(text))
        }
        Format::Csv => {
            let mut out = String::new();
            if first {
                let names: Vec<String> = batches[0].schema().fields().iter().map(|f| csv_field(f.name())).collect();
                out.push_str(&names.join(","));
                out.push_str("\r\n");
            }
            for row in json_rows(batches) {
                let cells: Vec<String> = row.iter().map(|v| v.as_deref().map(csv_field).unwrap_or_else(|| "null".into())).collect();
                out.push_str(&cells.join(","));
                out.push_str("\r\n");
            }
            (out.len() as u64, Bytes::from(out))
        }
    };
    Ok(Chunk { row_offset, row_count, byte_count: raw, body })
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}

/// Rows as Databricks renders them in `JSON_ARRAY`.
pub fn json_rows(batches: &[RecordBatch]) -> Vec<Vec<Option<String>>> {
    let mut rows = Vec::new();
    for b in batches {
        for r in 0..b.num_rows() {
            rows.push(b.columns().iter().map(|c| render_value(c.as_ref(), r)).collect());
        }
    }
    rows
}

impl ResultSet {
    /// The `manifest` member of a statement response.
    pub fn manifest(&self, inline: bool) -> Value {
        let mut m = serde_json::Map::new();
        m.insert("format".into(), json!(self.format.as_str()));
        let mut schema = serde_json::Map::new();
        schema.insert("column_count".into(), json!(self.columns.len()));
        if !self.no_schema {
            schema.insert("columns".into(), Value::Array(self.columns.clone()));
        }
        m.insert("schema".into(), Value::Object(schema));
        m.insert("total_chunk_count".into(), json!(self.chunks.len()));
        if !self.chunks.is_empty() {
            let chunks: Vec<Value> = self
                .chunks
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    if inline {
                        json!({"chunk_index": i, "row_offset": c.row_offset, "row_count": c.row_count})
                    } else {
                        json!({"chunk_index": i, "row_offset": c.row_offset, "row_count": c.row_count, "byte_count": c.byte_count})
                    }
                })
                .collect();
            m.insert("chunks".into(), Value::Array(chunks));
        }
        m.insert("total_row_count".into(), json!(self.total_row_count));
        if !inline && !self.chunks.is_empty() {
            m.insert("total_byte_count".into(), json!(self.total_byte_count));
        }
        m.insert("truncated".into(), json!(self.truncated));
        if self.format == Format::ArrowStream {
            m.insert("result_compression".into(), json!(if self.lz4 { "LZ4_FRAME" } else { "NONE" }));
        }
        Value::Object(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    fn output(rows: i64) -> Output {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from_iter_values(0..rows))]).unwrap();
        Output { schema, batches: vec![batch], truncated: false }
    }

    #[test]
    fn chunks_cover_every_row_once() {
        let rs = build(&output(25), Format::JsonArray, false, ChunkPolicy { max_rows: 10, max_bytes: usize::MAX }, None).unwrap();
        assert_eq!(rs.chunks.len(), 3);
        assert_eq!(rs.chunks.iter().map(|c| c.row_count).collect::<Vec<_>>(), vec![10, 10, 5]);
        assert_eq!(rs.chunks[2].row_offset, 20);
        assert_eq!(&rs.chunks[2].body[..], br#"[["20"],["21"],["22"],["23"],["24"]]"#);
        assert!(!rs.truncated);
    }

    #[test]
    fn byte_limit_truncates() {
        let rs = build(&output(1000), Format::JsonArray, false, ChunkPolicy { max_rows: 100, max_bytes: usize::MAX }, Some(80)).unwrap();
        assert!(rs.truncated);
        assert!(rs.total_row_count < 1000);
    }
}

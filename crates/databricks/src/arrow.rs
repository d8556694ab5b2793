//! Result bytes to Arrow: ARROW_STREAM chunks (optionally one LZ4 frame
//! each) decoded with the IPC stream reader, and INLINE JSON_ARRAY rows cast
//! from their string forms to the types the manifest names.

use std::io::Read;
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::api::Column;
use crate::error::Error;

/// Decodes one ARROW_STREAM chunk into its record batches. The arrays
/// point into the (decompressed) chunk buffer: no copy after LZ4.
pub(crate) fn decode_chunk(bytes: bytes::Bytes, lz4: bool) -> Result<Vec<RecordBatch>, Error> {
    let bad = |what: &str, e: &dyn std::fmt::Display| Error::Protocol { detail: format!("result chunk: {what}: {e}") };
    let mut buffer = if lz4 {
        let mut out = Vec::with_capacity(bytes.len() * 3);
        lz4_flex::frame::FrameDecoder::new(&bytes[..]).read_to_end(&mut out).map_err(|e| bad("LZ4 frame", &e))?;
        arrow_buffer::Buffer::from_vec(out)
    } else {
        arrow_buffer::Buffer::from(bytes.to_vec())
    };
    let mut decoder = arrow_ipc::reader::StreamDecoder::new();
    let mut out = Vec::new();
    while !buffer.is_empty() {
        match decoder.decode(&mut buffer).map_err(|e| bad("Arrow IPC", &e))? {
            Some(batch) => out.push(batch),
            None if buffer.is_empty() => break,
            None => {}
        }
    }
    decoder.finish().map_err(|e| bad("Arrow IPC (truncated)", &e))?;
    Ok(out)
}

/// The Arrow type for a Statement API column (INLINE results and empty ones).
pub(crate) fn arrow_type(c: &Column) -> DataType {
    match c.type_name.as_str() {
        "BOOLEAN" => DataType::Boolean,
        "BYTE" => DataType::Int8,
        "SHORT" => DataType::Int16,
        "INT" => DataType::Int32,
        "LONG" => DataType::Int64,
        "FLOAT" => DataType::Float32,
        "DOUBLE" => DataType::Float64,
        "DATE" => DataType::Date32,
        "TIMESTAMP" => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        "TIMESTAMP_NTZ" => DataType::Timestamp(TimeUnit::Microsecond, None),
        "DECIMAL" => decimal(&c.type_text).unwrap_or(DataType::Utf8),
        "NULL" => DataType::Null,
        // STRING, CHAR, BINARY (base64 text), INTERVAL, ARRAY/MAP/STRUCT (JSON text), VARIANT...
        _ if c.type_text.eq_ignore_ascii_case("TIMESTAMP_NTZ") => DataType::Timestamp(TimeUnit::Microsecond, None),
        _ => DataType::Utf8,
    }
}

fn decimal(type_text: &str) -> Option<DataType> {
    let inner = type_text.trim().strip_prefix("DECIMAL(")?.strip_suffix(')')?;
    let (p, s) = inner.split_once(',')?;
    Some(DataType::Decimal128(p.trim().parse().ok()?, s.trim().parse().ok()?))
}

pub(crate) fn schema_of(columns: &[Column]) -> SchemaRef {
    Arc::new(Schema::new(columns.iter().map(|c| Field::new(&c.name, arrow_type(c), true)).collect::<Vec<_>>()))
}

/// Builds a batch from JSON_ARRAY rows (every value a string or null).
pub(crate) fn batch_from_rows(schema: &SchemaRef, rows: &[Vec<Option<String>>]) -> Result<RecordBatch, Error> {
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for (i, field) in schema.fields().iter().enumerate() {
        let text: StringArray = rows.iter().map(|r| r.get(i).and_then(|v| v.as_deref())).collect();
        let array: ArrayRef = Arc::new(text);
        let typed = if field.data_type() == &DataType::Utf8 {
            array
        } else {
            let opts = arrow_cast::CastOptions { safe: false, ..Default::default() };
            arrow_cast::cast_with_options(&array, field.data_type(), &opts)
                .map_err(|e| Error::Protocol { detail: format!("column `{}`: {e}", field.name()) })?
        };
        arrays.push(typed);
    }
    let opts = arrow_array::RecordBatchOptions::new().with_row_count(Some(rows.len()));
    RecordBatch::try_new_with_options(schema.clone(), arrays, &opts).map_err(|e| Error::Protocol { detail: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Array, Int64Array, TimestampMicrosecondArray};

    fn col(name: &str, t: &str, text: &str) -> Column {
        Column { name: name.into(), type_name: t.into(), type_text: text.into(), position: 0 }
    }

    #[test]
    fn json_rows_cast_to_the_manifest_types() {
        let schema = schema_of(&[col("n", "LONG", "BIGINT"), col("ts", "TIMESTAMP", "TIMESTAMP"), col("d", "DECIMAL", "DECIMAL(10,2)")]);
        let rows = vec![vec![Some("42".into()), Some("2024-01-02T03:04:05.123Z".into()), Some("1.50".into())], vec![None, None, None]];
        let b = batch_from_rows(&schema, &rows).unwrap();
        let n = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(n.value(0), 42);
        assert!(n.is_null(1));
        let ts = b.column(1).as_any().downcast_ref::<TimestampMicrosecondArray>().unwrap();
        assert_eq!(ts.value(0), 1_704_164_645_123_000);
        assert_eq!(b.column(2).data_type(), &DataType::Decimal128(10, 2));
        let bad = batch_from_rows(&schema, &[vec![Some("x".into()), None, None]]);
        assert!(bad.is_err());
    }
}

//! Databricks SQL types and their Arrow representation.
//!
//! The emulator stores everything as Arrow, so this module is the one place that
//! knows how Databricks *names* a type (`BIGINT` / `LONG` / `bigint`), how it
//! renders a value in `JSON_ARRAY` results, and which Arrow type stands for a
//! Databricks type in `ARROW_STREAM` results (`TIMESTAMP` is a UTC instant,
//! `TIMESTAMP_NTZ` a zone-less one).

use std::sync::Arc;

use base64::Engine as _;
use chrono::{DateTime, NaiveDate};
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Date32Array, Decimal128Array, Float32Array, Float64Array, Int8Array, Int16Array, Int32Array,
    Int64Array, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Fields, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use serde_json::{Value, json};

/// The session time zone the emulator reports on `TIMESTAMP` columns, as
/// Databricks does for a workspace in UTC.
pub const SESSION_TZ: &str = "Etc/UTC";

/// Parses a Databricks type (`BIGINT`, `decimal(10,2)`, `ARRAY<STRING>`,
/// `MAP<STRING, INT>`, `STRUCT<a: INT, b: STRING>`, `TIMESTAMP_NTZ`, ...) into
/// the Arrow type the emulator stores it as.
pub fn parse_type(text: &str) -> Result<DataType, String> {
    let mut p = TypeParser { s: text.as_bytes(), i: 0, text };
    let t = p.parse()?;
    p.ws();
    if p.i != p.s.len() {
        return Err(format!("unexpected text after type in `{text}`"));
    }
    Ok(t)
}

struct TypeParser<'a> {
    s: &'a [u8],
    i: usize,
    text: &'a str,
}

impl TypeParser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }
    fn word(&mut self) -> String {
        self.ws();
        let start = self.i;
        while self.i < self.s.len() && (self.s[self.i].is_ascii_alphanumeric() || self.s[self.i] == b'_') {
            self.i += 1;
        }
        self.text[start..self.i].to_string()
    }
    fn eat(&mut self, c: u8) -> bool {
        self.ws();
        if self.i < self.s.len() && self.s[self.i] == c {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn expect(&mut self, c: u8) -> Result<(), String> {
        if self.eat(c) { Ok(()) } else { Err(format!("expected `{}` in type `{}`", c as char, self.text)) }
    }
    fn number(&mut self) -> Result<u32, String> {
        let w = self.word();
        w.parse().map_err(|_| format!("expected a number in type `{}`", self.text))
    }
    fn parse(&mut self) -> Result<DataType, String> {
        let w = self.word().to_ascii_uppercase();
        Ok(match w.as_str() {
            "BOOLEAN" | "BOOL" => DataType::Boolean,
            "TINYINT" | "BYTE" => DataType::Int8,
            "SMALLINT" | "SHORT" => DataType::Int16,
            "INT" | "INTEGER" => DataType::Int32,
            "BIGINT" | "LONG" => DataType::Int64,
            "FLOAT" | "REAL" => DataType::Float32,
            "DOUBLE" => DataType::Float64,
            "STRING" | "VARCHAR" | "CHAR" | "TEXT" => {
                if self.eat(b'(') {
                    self.number()?;
                    self.expect(b')')?;
                }
                DataType::Utf8
            }
            "BINARY" => DataType::Binary,
            "DATE" => DataType::Date32,
            "TIMESTAMP" | "TIMESTAMP_LTZ" => timestamp_type(),
            "TIMESTAMP_NTZ" => DataType::Timestamp(TimeUnit::Microsecond, None),
            "DECIMAL" | "DEC" | "NUMERIC" => {
                let (mut p, mut s) = (10, 0);
                if self.eat(b'(') {
                    p = self.number()?;
                    if self.eat(b',') {
                        s = self.number()?;
                    }
                    self.expect(b')')?;
                }
                if !(1..=38).contains(&p) || s > p {
                    return Err(format!("DECIMAL({p},{s}) is out of range in `{}`", self.text));
                }
                DataType::Decimal128(p as u8, s as i8)
            }
            "ARRAY" => {
                self.expect(b'<')?;
                let inner = self.parse()?;
                self.expect(b'>')?;
                DataType::List(Arc::new(Field::new("element", inner, true)))
            }
            "MAP" => {
                self.expect(b'<')?;
                let k = self.parse()?;
                self.expect(b',')?;
                let v = self.parse()?;
                self.expect(b'>')?;
                map_type(k, v)
            }
            "STRUCT" => {
                self.expect(b'<')?;
                let mut fields = Vec::new();
                loop {
                    let name = self.word();
                    if name.is_empty() {
                        return Err(format!("expected a field name in `{}`", self.text));
                    }
                    self.eat(b':');
                    let t = self.parse()?;
                    let mut nullable = true;
                    let save = self.i;
                    if self.word().eq_ignore_ascii_case("NOT") {
                        self.word();
                        nullable = false;
                    } else {
                        self.i = save;
                    }
                    fields.push(Field::new(name, t, nullable));
                    if !self.eat(b',') {
                        break;
                    }
                }
                self.expect(b'>')?;
                DataType::Struct(Fields::from(fields))
            }
            "" => return Err(format!("expected a type name in `{}`", self.text)),
            other => return Err(format!("unknown type `{other}`")),
        })
    }
}

/// The Arrow type of a Databricks `TIMESTAMP` (an instant, shown in UTC).
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// The Arrow type of a Databricks `MAP<k, v>`.
pub fn map_type(k: DataType, v: DataType) -> DataType {
    DataType::Map(
        Arc::new(Field::new(
            "entries",
            DataType::Struct(Fields::from(vec![Field::new("key", k, false), Field::new("value", v, true)])),
            false,
        )),
        false,
    )
}

/// The Statement API's `type_name` for an Arrow type (`LONG` for `BIGINT`, ...).
pub fn type_name(dt: &DataType) -> &'static str {
    match dt {
        DataType::Boolean => "BOOLEAN",
        DataType::Int8 | DataType::UInt8 => "BYTE",
        DataType::Int16 | DataType::UInt16 => "SHORT",
        DataType::Int32 | DataType::UInt32 => "INT",
        DataType::Int64 | DataType::UInt64 => "LONG",
        DataType::Float16 | DataType::Float32 => "FLOAT",
        DataType::Float64 => "DOUBLE",
        DataType::Decimal128(..) | DataType::Decimal256(..) => "DECIMAL",
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "STRING",
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "BINARY",
        DataType::Date32 | DataType::Date64 => "DATE",
        DataType::Timestamp(_, Some(_)) => "TIMESTAMP",
        DataType::Timestamp(_, None) => "TIMESTAMP_NTZ",
        DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(..) => "ARRAY",
        DataType::Map(..) => "MAP",
        DataType::Struct(_) => "STRUCT",
        DataType::Null => "NULL",
        DataType::Interval(_) | DataType::Duration(_) => "INTERVAL",
        _ => "STRING",
    }
}

/// The Statement API's `type_text` (uppercase, `MAP<STRING, INT>`,
/// `STRUCT<a: INT NOT NULL>`).
pub fn type_text(dt: &DataType) -> String {
    match dt {
        DataType::Int8 => "TINYINT".into(),
        DataType::Int16 => "SMALLINT".into(),
        DataType::Int64 => "BIGINT".into(),
        DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => format!("DECIMAL({p},{s})"),
        DataType::Null => "VOID".into(),
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
            format!("ARRAY<{}>", type_text(f.data_type()))
        }
        DataType::Map(entries, _) => match entries.data_type() {
            DataType::Struct(kv) if kv.len() == 2 => {
                format!("MAP<{}, {}>", type_text(kv[0].data_type()), type_text(kv[1].data_type()))
            }
            _ => "MAP<STRING, STRING>".into(),
        },
        DataType::Struct(fields) => {
            let parts: Vec<String> = fields
                .iter()
                .map(|f| {
                    let nn = if f.is_nullable() { "" } else { " NOT NULL" };
                    format!("{}: {}{nn}", f.name(), type_text(f.data_type()))
                })
                .collect();
            format!("STRUCT<{}>", parts.join(", "))
        }
        other => type_name(other).into(),
    }
}

/// Unity Catalog's `type_text`: lowercase Spark catalog strings, no spaces
/// (`bigint`, `map<string,int>`, `struct<a:int>`).
pub fn catalog_type_text(dt: &DataType) -> String {
    match dt {
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
            format!("array<{}>", catalog_type_text(f.data_type()))
        }
        DataType::Map(entries, _) => match entries.data_type() {
            DataType::Struct(kv) if kv.len() == 2 => {
                format!("map<{},{}>", catalog_type_text(kv[0].data_type()), catalog_type_text(kv[1].data_type()))
            }
            _ => "map<string,string>".into(),
        },
        DataType::Struct(fields) => {
            let parts: Vec<String> = fields.iter().map(|f| format!("{}:{}", f.name(), catalog_type_text(f.data_type()))).collect();
            format!("struct<{}>", parts.join(","))
        }
        DataType::Int32 => "int".into(),
        other => type_text(other).to_ascii_lowercase(),
    }
}

/// Spark's JSON name of a type, as found in Unity Catalog's `type_json`.
fn spark_json_type(dt: &DataType) -> Value {
    match dt {
        DataType::Boolean => json!("boolean"),
        DataType::Int8 => json!("byte"),
        DataType::Int16 => json!("short"),
        DataType::Int32 => json!("integer"),
        DataType::Int64 => json!("long"),
        DataType::Float32 => json!("float"),
        DataType::Float64 => json!("double"),
        DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => json!(format!("decimal({p},{s})")),
        DataType::Binary => json!("binary"),
        DataType::Date32 => json!("date"),
        DataType::Timestamp(_, Some(_)) => json!("timestamp"),
        DataType::Timestamp(_, None) => json!("timestamp_ntz"),
        DataType::List(f) => json!({"type": "array", "elementType": spark_json_type(f.data_type()), "containsNull": true}),
        DataType::Map(entries, _) => match entries.data_type() {
            DataType::Struct(kv) if kv.len() == 2 => json!({
                "type": "map",
                "keyType": spark_json_type(kv[0].data_type()),
                "valueType": spark_json_type(kv[1].data_type()),
                "valueContainsNull": true
            }),
            _ => json!("string"),
        },
        DataType::Struct(fields) => json!({
            "type": "struct",
            "fields": fields.iter().map(|f| spark_field_json(f)).collect::<Vec<_>>()
        }),
        _ => json!("string"),
    }
}

fn spark_field_json(f: &Field) -> Value {
    json!({"name": f.name(), "type": spark_json_type(f.data_type()), "nullable": f.is_nullable(), "metadata": {}})
}

/// Unity Catalog `ColumnInfo` for one column.
pub fn catalog_column_json(f: &Field, position: usize) -> Value {
    json!({
        "name": f.name(),
        "type_text": catalog_type_text(f.data_type()),
        "type_name": type_name(f.data_type()),
        "position": position,
        // Databricks really reports 0/0 here, even for decimals.
        "type_precision": 0,
        "type_scale": 0,
        "type_json": spark_field_json(f).to_string(),
        "nullable": f.is_nullable(),
    })
}

/// Statement API `ColumnInfo` for one result column.
pub fn statement_column_json(f: &Field, position: usize) -> Value {
    let mut col = serde_json::Map::new();
    col.insert("name".into(), json!(f.name()));
    col.insert("type_text".into(), json!(type_text(f.data_type())));
    col.insert("type_name".into(), json!(type_name(f.data_type())));
    col.insert("position".into(), json!(position));
    if let DataType::Decimal128(p, s) = f.data_type() {
        col.insert("type_precision".into(), json!(p));
        col.insert("type_scale".into(), json!(s));
    }
    Value::Object(col)
}

/// Converts query output to the Arrow types Databricks sends: `utf8` strings,
/// microsecond timestamps (`Etc/UTC` on instants), no dictionaries or views.
pub fn normalize_type(dt: &DataType) -> DataType {
    match dt {
        DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
        DataType::BinaryView | DataType::LargeBinary => DataType::Binary,
        DataType::Dictionary(_, v) => normalize_type(v),
        DataType::Date64 => DataType::Date32,
        DataType::UInt8 => DataType::Int16,
        DataType::UInt16 => DataType::Int32,
        DataType::UInt32 | DataType::UInt64 => DataType::Int64,
        DataType::Float16 => DataType::Float32,
        DataType::Timestamp(_, Some(_)) => DataType::Timestamp(TimeUnit::Microsecond, Some(SESSION_TZ.into())),
        DataType::Timestamp(_, None) => DataType::Timestamp(TimeUnit::Microsecond, None),
        DataType::List(f) | DataType::LargeList(f) | DataType::ListView(f) | DataType::LargeListView(f) => {
            DataType::List(Arc::new(Field::new("element", normalize_type(f.data_type()), true)))
        }
        DataType::Struct(fields) => DataType::Struct(Fields::from(
            fields.iter().map(|f| Field::new(f.name(), normalize_type(f.data_type()), f.is_nullable())).collect::<Vec<_>>(),
        )),
        DataType::Map(entries, sorted) => match entries.data_type() {
            DataType::Struct(kv) if kv.len() == 2 => {
                let _ = sorted;
                map_type(normalize_type(kv[0].data_type()), normalize_type(kv[1].data_type()))
            }
            _ => dt.clone(),
        },
        other => other.clone(),
    }
}

/// The normalised schema of a query's output.
pub fn normalize_schema(schema: &Schema) -> SchemaRef {
    Arc::new(Schema::new(
        schema.fields().iter().map(|f| Field::new(f.name(), normalize_type(f.data_type()), f.is_nullable())).collect::<Vec<_>>(),
    ))
}

/// Casts a batch to the normalised schema (a no-op for columns already right).
pub fn normalize_batch(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, String> {
    let columns: Result<Vec<ArrayRef>, String> = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(col, field)| if col.data_type() == field.data_type() { Ok(col.clone()) } else { relabel_or_cast(col, field) })
        .collect();
    RecordBatch::try_new(schema.clone(), columns?).map_err(|e| e.to_string())
}

fn relabel_or_cast(col: &ArrayRef, field: &FieldRef) -> Result<ArrayRef, String> {
    // Instants keep their values and only change the zone label, so arrow
    // never has to look the zone name up.
    if let (DataType::Timestamp(unit, Some(tz_in)), DataType::Timestamp(TimeUnit::Microsecond, Some(tz))) =
        (col.data_type(), field.data_type())
    {
        let us = if *unit == TimeUnit::Microsecond {
            col.clone()
        } else {
            cast(col, &DataType::Timestamp(TimeUnit::Microsecond, Some(tz_in.clone()))).map_err(|e| e.to_string())?
        };
        let a = us.as_primitive::<datafusion::arrow::datatypes::TimestampMicrosecondType>().clone();
        return Ok(Arc::new(a.with_timezone(tz.clone())));
    }
    cast(col, field.data_type()).map_err(|e| e.to_string())
}

/// Renders one value as Databricks does in `JSON_ARRAY` results: every
/// non-null value is a string, NULL is `None`.
pub fn render_value(col: &dyn Array, row: usize) -> Option<String> {
    // A `NullArray` (the type of `SELECT NULL`) has no null buffer, so `is_null` alone says false.
    if col.data_type() == &DataType::Null || col.is_null(row) {
        return None;
    }
    Some(match col.data_type() {
        DataType::Utf8 => col.as_string::<i32>().value(row).to_string(),
        DataType::List(_) | DataType::Map(..) | DataType::Struct(_) => nested_json(col, row).to_string(),
        _ => scalar_text(col, row),
    })
}

fn scalar_text(col: &dyn Array, row: usize) -> String {
    let any = col.as_any();
    match col.data_type() {
        DataType::Boolean => any.downcast_ref::<BooleanArray>().map(|a| a.value(row).to_string()),
        DataType::Int8 => any.downcast_ref::<Int8Array>().map(|a| a.value(row).to_string()),
        DataType::Int16 => any.downcast_ref::<Int16Array>().map(|a| a.value(row).to_string()),
        DataType::Int32 => any.downcast_ref::<Int32Array>().map(|a| a.value(row).to_string()),
        DataType::Int64 => any.downcast_ref::<Int64Array>().map(|a| a.value(row).to_string()),
        DataType::Float32 => any.downcast_ref::<Float32Array>().map(|a| java_double(a.value(row) as f64)),
        DataType::Float64 => any.downcast_ref::<Float64Array>().map(|a| java_double(a.value(row))),
        DataType::Decimal128(_, _) => any.downcast_ref::<Decimal128Array>().map(|a| a.value_as_string(row)),
        DataType::Utf8 => any.downcast_ref::<StringArray>().map(|a| a.value(row).to_string()),
        DataType::Binary => Some(base64::engine::general_purpose::STANDARD.encode(col.as_binary::<i32>().value(row))),
        DataType::Date32 => any.downcast_ref::<Date32Array>().map(|a| {
            let days = a.value(row);
            NaiveDate::from_num_days_from_ce_opt(days + 719_163).map(|d| d.format("%Y-%m-%d").to_string()).unwrap_or_default()
        }),
        DataType::Timestamp(TimeUnit::Microsecond, tz) => {
            any.downcast_ref::<TimestampMicrosecondArray>().map(|a| format_timestamp(a.value(row), tz.is_some()))
        }
        _ => None,
    }
    .unwrap_or_else(|| datafusion::arrow::util::display::array_value_to_string(col, row).unwrap_or_default())
}

/// `2024-01-02T03:04:05.123Z` (instants) or `2024-01-02T03:04:05.123` (NTZ):
/// exactly three fractional digits, microseconds truncated.
pub fn format_timestamp(micros: i64, with_zone: bool) -> String {
    let dt = DateTime::from_timestamp_micros(micros).unwrap_or_default().naive_utc();
    let millis = micros.rem_euclid(1_000_000) / 1000;
    let base = dt.format("%Y-%m-%dT%H:%M:%S");
    if with_zone { format!("{base}.{millis:03}Z") } else { format!("{base}.{millis:03}") }
}

/// Java's `Double.toString`, which Databricks uses for FLOAT and DOUBLE.
pub fn java_double(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    if v == 0.0 {
        return "0.0".into();
    }
    let abs = v.abs();
    if (1e-3..1e7).contains(&abs) {
        let s = format!("{v}");
        if s.contains('.') { s } else { format!("{s}.0") }
    } else {
        // Scientific: shortest digits, mantissa with at least one decimal.
        let s = format!("{v:e}");
        let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let mant = if mant.contains('.') { mant.to_string() } else { format!("{mant}.0") };
        format!("{mant}E{exp}")
    }
}

/// A nested value as JSON whose leaves are strings (the `JSON_ARRAY` form).
fn nested_json(col: &dyn Array, row: usize) -> Value {
    if col.is_null(row) {
        return Value::Null;
    }
    match col.data_type() {
        DataType::List(_) => {
            let list = col.as_list::<i32>();
            let values = list.value(row);
            Value::Array((0..values.len()).map(|i| nested_json(values.as_ref(), i)).collect())
        }
        DataType::Map(..) => {
            let map = col.as_map();
            let entries = map.value(row);
            let keys = entries.column(0);
            let vals = entries.column(1);
            let mut obj = serde_json::Map::new();
            for i in 0..entries.len() {
                let k = render_value(keys.as_ref(), i).unwrap_or_else(|| "null".into());
                obj.insert(k, nested_json(vals.as_ref(), i));
            }
            Value::Object(obj)
        }
        DataType::Struct(fields) => {
            let s = col.as_struct();
            let mut obj = serde_json::Map::new();
            for (i, f) in fields.iter().enumerate() {
                obj.insert(f.name().clone(), nested_json(s.column(i).as_ref(), row));
            }
            Value::Object(obj)
        }
        DataType::Utf8 => Value::String(col.as_string::<i32>().value(row).to_string()),
        _ => Value::String(scalar_text(col, row)),
    }
}

/// A value as JSON with real JSON types (Spark's `to_json`).
pub fn typed_json(col: &dyn Array, row: usize) -> Value {
    if col.is_null(row) {
        return Value::Null;
    }
    match col.data_type() {
        DataType::Boolean => json!(col.as_boolean().value(row)),
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => {
            scalar_text(col, row).parse::<i64>().map(Value::from).unwrap_or(Value::Null)
        }
        DataType::Float32 | DataType::Float64 => {
            let text = scalar_text(col, row);
            text.parse::<f64>().ok().and_then(serde_json::Number::from_f64).map(Value::Number).unwrap_or(Value::String(text))
        }
        DataType::Decimal128(..) => {
            let text = scalar_text(col, row);
            serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text))
        }
        DataType::List(_) => {
            let values = col.as_list::<i32>().value(row);
            Value::Array((0..values.len()).map(|i| typed_json(values.as_ref(), i)).collect())
        }
        DataType::Map(..) => {
            let entries = col.as_map().value(row);
            let mut obj = serde_json::Map::new();
            for i in 0..entries.len() {
                let k = render_value(entries.column(0).as_ref(), i).unwrap_or_else(|| "null".into());
                obj.insert(k, typed_json(entries.column(1).as_ref(), i));
            }
            Value::Object(obj)
        }
        DataType::Struct(fields) => {
            let s = col.as_struct();
            let mut obj = serde_json::Map::new();
            for (i, f) in fields.iter().enumerate() {
                obj.insert(f.name().clone(), typed_json(s.column(i).as_ref(), row));
            }
            Value::Object(obj)
        }
        DataType::Utf8 => Value::String(col.as_string::<i32>().value(row).to_string()),
        _ => Value::String(scalar_text(col, row)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_names_types() {
        for (text, name, stmt_text, cat_text) in [
            ("BIGINT", "LONG", "BIGINT", "bigint"),
            ("int", "INT", "INT", "int"),
            ("decimal(10,2)", "DECIMAL", "DECIMAL(10,2)", "decimal(10,2)"),
            ("TIMESTAMP", "TIMESTAMP", "TIMESTAMP", "timestamp"),
            ("TIMESTAMP_NTZ", "TIMESTAMP_NTZ", "TIMESTAMP_NTZ", "timestamp_ntz"),
            ("ARRAY<STRING>", "ARRAY", "ARRAY<STRING>", "array<string>"),
            ("MAP<STRING,INT>", "MAP", "MAP<STRING, INT>", "map<string,int>"),
            ("STRUCT<a: INT, b: STRING>", "STRUCT", "STRUCT<a: INT, b: STRING>", "struct<a:int,b:string>"),
        ] {
            let dt = parse_type(text).unwrap();
            assert_eq!(type_name(&dt), name, "{text}");
            assert_eq!(type_text(&dt), stmt_text, "{text}");
            assert_eq!(catalog_type_text(&dt), cat_text, "{text}");
        }
        assert!(parse_type("NOPE").is_err());
        assert!(parse_type("DECIMAL(40,2)").is_err());
        assert!(parse_type("ARRAY<INT").is_err());
    }

    #[test]
    fn renders_like_databricks() {
        assert_eq!(format_timestamp(1_704_164_645_123_456, true), "2024-01-02T03:04:05.123Z");
        assert_eq!(format_timestamp(1_704_164_645_000_000, false), "2024-01-02T03:04:05.000");
        assert_eq!(java_double(1.5), "1.5");
        assert_eq!(java_double(2.0), "2.0");
        assert_eq!(java_double(16_777_216.0), "1.6777216E7");
        assert_eq!(java_double(f64::NAN), "NaN");
        assert_eq!(java_double(-0.0), "0.0");
    }
}

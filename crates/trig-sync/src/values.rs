//! Arrow cells → Trig values (trig-notes, "Types"): strings → String;
//! integral, floating and decimal → Number; boolean → Boolean;
//! date/timestamp → Date (UTC); arrays → Array; maps, structs and anything
//! else → JSON text. Zone-less timestamps take the pipeline's time zone.

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Date64Type, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use std::borrow::Cow;

use arrow_array::{
    Array, ArrayRef, BooleanArray, Int32Array, Int64Array, LargeStringArray, MapArray, StringArray, StringViewArray,
    TimestampMicrosecondArray,
};
use arrow_schema::{DataType, TimeUnit};
use chrono::{DateTime, NaiveDate, NaiveDateTime};
use serde_json::{Map, Number, Value};
use trig_config::Zone;
use trig_store::Micros;

/// A cell as text: strings as they are, numbers and booleans printed; `None` for NULL.
pub fn text_at(a: &ArrayRef, i: usize) -> Result<Option<String>, String> {
    if a.is_null(i) {
        return Ok(None);
    }
    Ok(Some(match a.data_type() {
        DataType::Utf8 => a.as_string::<i32>().value(i).to_string(),
        DataType::LargeUtf8 => a.as_string::<i64>().value(i).to_string(),
        DataType::Utf8View => a.as_string_view().value(i).to_string(),
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => match json_at(a, i, None) {
            Value::Number(n) => n.to_string(),
            _ => return Err("not a whole number".into()),
        },
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 | DataType::Decimal128(_, 0) => {
            match json_at(a, i, None) {
                Value::Number(n) => n.to_string(),
                Value::String(s) => s,
                _ => return Err("not a whole number".into()),
            }
        }
        other => return Err(format!("a {other} column cannot be an identifier or name; cast it to STRING in the view")),
    }))
}

/// A cell as an instant (microseconds, UTC); `None` for NULL, `Err` when it
/// is not a time (an unparseable string, a number, a time that does not exist in the zone).
pub fn instant_at(a: &ArrayRef, i: usize, zone: &Zone) -> Result<Option<Micros>, String> {
    if a.is_null(i) {
        return Ok(None);
    }
    let naive = |us: i64| -> Result<Micros, String> {
        let t = DateTime::from_timestamp_micros(us).ok_or("out of range")?.naive_utc();
        zone.to_utc(t).map(|d| d.timestamp_micros()).ok_or_else(|| format!("{t} does not exist in {zone} (a daylight-saving gap)"))
    };
    let v = match a.data_type() {
        DataType::Timestamp(unit, tz) => {
            let us = match unit {
                TimeUnit::Second => a.as_primitive::<TimestampSecondType>().value(i).saturating_mul(1_000_000),
                TimeUnit::Millisecond => a.as_primitive::<TimestampMillisecondType>().value(i).saturating_mul(1000),
                TimeUnit::Microsecond => a.as_primitive::<TimestampMicrosecondType>().value(i),
                TimeUnit::Nanosecond => a.as_primitive::<TimestampNanosecondType>().value(i) / 1000,
            };
            if tz.is_some() { us } else { naive(us)? }
        }
        DataType::Date32 => naive(a.as_primitive::<Date32Type>().value(i) as i64 * 86_400_000_000)?,
        DataType::Date64 => naive(a.as_primitive::<Date64Type>().value(i) * 1000)?,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            let s = text_at(a, i)?.unwrap_or_default();
            parse_instant(&s, zone)?
        }
        other => return Err(format!("a {other} column is not a timestamp; use a TIMESTAMP, TIMESTAMP_NTZ, DATE or string column")),
    };
    Ok(Some(v))
}

/// RFC 3339 (with its own offset) or a zone-less `yyyy-MM-dd[ T]HH:mm:ss[.f]` / `yyyy-MM-dd` in `zone`.
pub fn parse_instant(s: &str, zone: &Zone) -> Result<Micros, String> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_micros());
    }
    let naive = ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
        .or_else(|| NaiveDate::parse_from_str(s, "%Y-%m-%d").ok().and_then(|d| d.and_hms_opt(0, 0, 0)));
    let t = naive.ok_or_else(|| format!("`{s}` is not a time (expected RFC 3339 or yyyy-MM-dd HH:mm:ss)"))?;
    zone.to_utc(t).map(|d| d.timestamp_micros()).ok_or_else(|| format!("`{s}` does not exist in {zone} (a daylight-saving gap)"))
}

fn number(f: f64) -> Value {
    Number::from_f64(f).map(Value::Number).unwrap_or(Value::Null)
}

/// A cell as a Trig value. `zone` applies to zone-less timestamps (`None`: UTC).
pub fn json_at(a: &ArrayRef, i: usize, zone: Option<&Zone>) -> Value {
    if a.is_null(i) {
        return Value::Null;
    }
    match a.data_type() {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Value::String(text_at(a, i).ok().flatten().unwrap_or_default()),
        DataType::Boolean => Value::Bool(a.as_boolean().value(i)),
        DataType::Int8 => a.as_primitive::<Int8Type>().value(i).into(),
        DataType::Int16 => a.as_primitive::<Int16Type>().value(i).into(),
        DataType::Int32 => a.as_primitive::<Int32Type>().value(i).into(),
        DataType::Int64 => a.as_primitive::<Int64Type>().value(i).into(),
        DataType::UInt8 => a.as_primitive::<UInt8Type>().value(i).into(),
        DataType::UInt16 => a.as_primitive::<UInt16Type>().value(i).into(),
        DataType::UInt32 => a.as_primitive::<UInt32Type>().value(i).into(),
        DataType::UInt64 => a.as_primitive::<UInt64Type>().value(i).into(),
        DataType::Float32 => number(a.as_primitive::<Float32Type>().value(i) as f64),
        DataType::Float64 => number(a.as_primitive::<Float64Type>().value(i)),
        DataType::Decimal128(_, _) => {
            let s = a.as_primitive::<arrow_array::types::Decimal128Type>().value_as_string(i);
            s.parse::<f64>().map(number).unwrap_or(Value::String(s))
        }
        DataType::Timestamp(_, _) | DataType::Date64 => {
            let utc = Zone::Fixed(chrono::FixedOffset::east_opt(0).expect("UTC"));
            match instant_at(a, i, zone.unwrap_or(&utc)) {
                Ok(Some(us)) => Value::String(trig_store::time::rfc3339(us)),
                _ => Value::Null,
            }
        }
        DataType::Date32 => {
            let d = a.as_primitive::<Date32Type>().value(i);
            match NaiveDate::from_num_days_from_ce_opt(d + 719_163) {
                Some(d) => Value::String(d.format("%Y-%m-%d").to_string()),
                None => Value::Null,
            }
        }
        DataType::List(_) => {
            let l = a.as_list::<i32>().value(i);
            Value::Array((0..l.len()).map(|j| json_at(&l, j, zone)).collect())
        }
        DataType::LargeList(_) => {
            let l = a.as_list::<i64>().value(i);
            Value::Array((0..l.len()).map(|j| json_at(&l, j, zone)).collect())
        }
        // Maps and structs are JSON text (trig-notes #10), nested values as JSON too.
        DataType::Map(_, _) | DataType::Struct(_) => match object_at(a, i, zone) {
            Ok(Some(m)) => Value::String(Value::Object(m).to_string()),
            _ => Value::Null,
        },
        _ => match arrow_cast::display::ArrayFormatter::try_new(a.as_ref(), &Default::default()) {
            Ok(f) => Value::String(f.value(i).to_string()),
            Err(_) => Value::Null,
        },
    }
}

/// A cell as JSON with nested maps and structs as objects (not as text):
/// what the keys of a properties column hold.
fn nested_json(a: &ArrayRef, i: usize, zone: Option<&Zone>) -> Value {
    if a.is_null(i) {
        return Value::Null;
    }
    match a.data_type() {
        DataType::Map(_, _) | DataType::Struct(_) => match object_at(a, i, zone) {
            Ok(Some(m)) => Value::Object(m),
            _ => Value::Null,
        },
        DataType::List(_) => {
            let l = a.as_list::<i32>().value(i);
            Value::Array((0..l.len()).map(|j| nested_json(&l, j, zone)).collect())
        }
        DataType::LargeList(_) => {
            let l = a.as_list::<i64>().value(i);
            Value::Array((0..l.len()).map(|j| nested_json(&l, j, zone)).collect())
        }
        _ => json_at(a, i, zone),
    }
}

/// A cell of a properties column as an object: a MAP's entries, a STRUCT's
/// fields, or a VARIANT or string holding a JSON object. `Ok(None)` for
/// NULL; `Err` for anything that is not an object.
pub fn object_at(a: &ArrayRef, i: usize, zone: Option<&Zone>) -> Result<Option<Map<String, Value>>, String> {
    if a.is_null(i) {
        return Ok(None);
    }
    match a.data_type() {
        DataType::Map(_, _) => {
            let entries = a.as_map().value(i);
            let (k, v) = (entries.column(0), entries.column(1));
            let mut obj = Map::new();
            for j in 0..entries.len() {
                let key = match json_at(k, j, zone) {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                obj.insert(key, nested_json(v, j, zone));
            }
            Ok(Some(obj))
        }
        DataType::Struct(fields) => {
            let s = a.as_struct();
            Ok(Some(fields.iter().zip(s.columns()).map(|(f, col)| (f.name().clone(), nested_json(col, i, zone))).collect()))
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            let text = text_at(a, i)?.unwrap_or_default();
            match serde_json::from_str::<Value>(&text) {
                Ok(Value::Object(m)) => Ok(Some(m)),
                Ok(Value::Null) => Ok(None),
                Ok(_) => Err("holds JSON that is not an object".into()),
                Err(_) => Err("is not JSON".into()),
            }
        }
        other => Err(format!("is {other}, not a MAP, STRUCT, VARIANT or JSON object")),
    }
}

/// Where an event's properties are in the projection: the listed columns
/// (by name, each name once) and the properties column.
#[derive(Debug, Clone)]
pub(crate) struct Properties {
    listed: Vec<(String, usize)>,
    column: Option<usize>,
    /// Each listed name as a JSON key and its colon (`"plan":`), written once
    /// here rather than escaped again for every row.
    keys: Vec<String>,
}

impl Properties {
    pub(crate) fn new(listed: Vec<(String, usize)>, column: Option<usize>) -> Properties {
        let keys = listed
            .iter()
            .map(|(name, _)| {
                let mut key = String::with_capacity(name.len() + 3);
                put_str(&mut key, name);
                key.push(':');
                key
            })
            .collect();
        Properties { listed, column, keys }
    }

    /// A row's properties as the text of a JSON object: the listed columns
    /// by name, then the keys of the properties column that are not listed.
    /// The same text as [`Properties::value`] printed by `serde_json`,
    /// written straight from the Arrow cells for the usual case (a MAP with
    /// string keys, scalar listed columns) rather than through a `Value` per
    /// cell; anything else takes [`Properties::value`].
    pub(crate) fn json(&self, cols: &[Col<'_>], i: usize, zone: &Zone) -> Result<String, String> {
        match self.direct(cols, i, zone) {
            Some(out) => Ok(out),
            None => self.value(cols, i, zone).map(|v| v.to_string()),
        }
    }

    /// The direct path of [`Properties::json`]; `None` when the row needs the general one.
    fn direct(&self, cols: &[Col<'_>], i: usize, zone: &Zone) -> Option<String> {
        // Built as text from text: no UTF-8 check of the finished string.
        let mut out = String::with_capacity(96);
        out.push('{');
        // The keys written so far, to keep each once (on the stack: no allocation per row).
        let mut keys: [&str; DIRECT_KEYS_MAX] = [""; DIRECT_KEYS_MAX];
        let mut n = 0;
        for ((name, idx), key) in self.listed.iter().zip(&self.keys) {
            if n == DIRECT_KEYS_MAX {
                return None;
            }
            if n > 0 {
                out.push(',');
            }
            keys[n] = name.as_str();
            n += 1;
            out.push_str(key);
            cols[*idx].write_json(&mut out, i, Some(zone));
        }
        let Some(idx) = self.column else {
            out.push('}');
            return Some(out);
        };
        let c = &cols[idx];
        if !c.is_null(i) {
            let Kind::Map { map, keys: k, values: v, nested } = &c.kind else { return None };
            let offsets = map.value_offsets();
            let listed_keys = n;
            for j in offsets[i] as usize..offsets[i + 1] as usize {
                if k.is_null(j) {
                    return None;
                }
                let key = k.value(j);
                // A listed property wins over the column's key of that name.
                if keys[..listed_keys].contains(&key) {
                    continue;
                }
                // A map with a key twice keeps its last value (the general path's rule).
                if keys[listed_keys..n].contains(&key) || n == DIRECT_KEYS_MAX {
                    return None;
                }
                if n > 0 {
                    out.push(',');
                }
                keys[n] = key;
                n += 1;
                put_str(&mut out, key);
                out.push(':');
                if *nested { put(&mut out, &nested_json(v.array, j, Some(zone))) } else { v.write_json(&mut out, j, Some(zone)) }
            }
        }
        out.push('}');
        Some(out)
    }

    /// A row's properties as a `Value` (the general path of [`Properties::json`]).
    pub(crate) fn value(&self, cols: &[Col<'_>], i: usize, zone: &Zone) -> Result<Value, String> {
        let mut props = Map::new();
        for (name, idx) in &self.listed {
            props.insert(name.clone(), json_at(cols[*idx].array, i, Some(zone)));
        }
        if let Some(idx) = self.column
            && let Some(obj) = object_at(cols[idx].array, i, Some(zone))?
        {
            for (k, v) in obj {
                props.entry(k).or_insert(v);
            }
        }
        Ok(Value::Object(props))
    }
}

/// How many keys a row may have for the direct path (keys are checked
/// against each other one by one); a row with more takes [`Properties::value`].
const DIRECT_KEYS_MAX: usize = 32;

/// Appends `v` as compact JSON, as serde_json prints it (the rare cells:
/// nested values, text that needs escapes).
fn put<T: serde::Serialize + ?Sized>(out: &mut String, v: &T) {
    // Serialising into memory cannot fail for these types: strings and
    // `Value`s have no fallible parts.
    out.push_str(&serde_json::to_string(v).unwrap_or_default());
}

/// Appends a whole number as serde_json prints it.
fn put_int(out: &mut String, n: i64) {
    use std::fmt::Write;
    let _ = write!(out, "{n}");
}

/// Appends `s` as a JSON string. Most text needs no escape (JSON escapes only
/// control characters, `"` and `\\`): then it is copied between quotes as
/// it is, which is what serde_json would write, without its per-byte work.
fn put_str(out: &mut String, s: &str) {
    if needs_escape(s.as_bytes()) {
        put(out, s);
    } else {
        out.reserve(s.len() + 2);
        out.push('"');
        out.push_str(s);
        out.push('"');
    }
}

/// Whether JSON must escape a byte of `s`: a control character, `"` or
/// `\\`. Eight bytes at a time as one word, a few instructions a word
/// instead of a few a byte (the word tests are the exact "has a byte below
/// n" and "has a zero byte" of bit-twiddling lore: non-zero exactly when
/// some byte qualifies). A tail shorter than a word is tested as one word
/// too: the last eight bytes again (overlapping), or for a text of four to
/// seven bytes its first and last four, so no byte is tested one by one
/// unless the whole text is shorter than four.
fn needs_escape(s: &[u8]) -> bool {
    let n = s.len();
    if n < 4 {
        return s.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\');
    }
    if n < 8 {
        let half = |b: &[u8]| u64::from(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
        return word_needs_escape(half(&s[..4]) | half(&s[n - 4..]) << 32);
    }
    let word = |b: &[u8]| u64::from_ne_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    let mut words = s.chunks_exact(8);
    if words.any(|w| word_needs_escape(word(w))) {
        return true;
    }
    !words.remainder().is_empty() && word_needs_escape(word(&s[n - 8..]))
}

/// Whether any of the eight bytes of `x` is one JSON must escape.
fn word_needs_escape(x: u64) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    // Any byte of `x` below `n` (n at most 0x80).
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGH;
    below(x, 0x20) | below(x ^ (ONES * u64::from(b'"')), 1) | below(x ^ (ONES * u64::from(b'\\')), 1) != 0
}

/// A source row as a JSON object of its projected columns (what a quarantined row keeps).
pub fn row_json(columns: &[String], cols: &[ArrayRef], i: usize, zone: &Zone) -> Value {
    Value::Object(columns.iter().zip(cols).map(|(name, c)| (name.clone(), json_at(c, i, Some(zone)))).collect())
}

/// A batch's column with its type looked at once per batch, not per cell:
/// the kinds the mappers read most are held as their concrete arrays, so a
/// cell is read without a dynamic call or a type check.
pub(crate) struct Col<'a> {
    pub array: &'a ArrayRef,
    kind: Kind<'a>,
}

enum Kind<'a> {
    Utf8(&'a StringArray),
    LargeUtf8(&'a LargeStringArray),
    View(&'a StringViewArray),
    Boolean(&'a BooleanArray),
    Int32(&'a Int32Array),
    Int64(&'a Int64Array),
    /// Microseconds since the epoch, with a zone (so already UTC).
    Utc(&'a TimestampMicrosecondArray),
    /// A MAP with string keys (its values read the same way; `nested` when
    /// they are maps, structs or lists, which properties keep as objects).
    Map {
        map: &'a MapArray,
        keys: &'a StringArray,
        values: Box<Col<'a>>,
        nested: bool,
    },
    Other,
}

impl<'a> Col<'a> {
    pub(crate) fn new(array: &'a ArrayRef) -> Col<'a> {
        let kind = match array.data_type() {
            DataType::Utf8 => Kind::Utf8(array.as_string::<i32>()),
            DataType::LargeUtf8 => Kind::LargeUtf8(array.as_string::<i64>()),
            DataType::Utf8View => Kind::View(array.as_string_view()),
            DataType::Boolean => Kind::Boolean(array.as_boolean()),
            DataType::Int32 => Kind::Int32(array.as_primitive::<Int32Type>()),
            DataType::Int64 => Kind::Int64(array.as_primitive::<Int64Type>()),
            DataType::Timestamp(TimeUnit::Microsecond, Some(_)) => Kind::Utc(array.as_primitive::<TimestampMicrosecondType>()),
            DataType::Map(_, _) => {
                let map = array.as_map();
                match map.keys().data_type() {
                    DataType::Utf8 => Kind::Map {
                        map,
                        keys: map.keys().as_string::<i32>(),
                        values: Box::new(Col::new(map.values())),
                        nested: matches!(
                            map.values().data_type(),
                            DataType::Map(_, _) | DataType::Struct(_) | DataType::List(_) | DataType::LargeList(_)
                        ),
                    },
                    _ => Kind::Other,
                }
            }
            _ => Kind::Other,
        };
        Col { array, kind }
    }

    pub(crate) fn is_null(&self, i: usize) -> bool {
        match &self.kind {
            Kind::Utf8(a) => a.is_null(i),
            Kind::LargeUtf8(a) => a.is_null(i),
            Kind::View(a) => a.is_null(i),
            Kind::Boolean(a) => a.is_null(i),
            Kind::Int32(a) => a.is_null(i),
            Kind::Int64(a) => a.is_null(i),
            Kind::Utc(a) => a.is_null(i),
            Kind::Map { map, .. } => map.is_null(i),
            Kind::Other => self.array.is_null(i),
        }
    }

    /// [`text_at`] of a cell, borrowed from the batch when it is a string.
    pub(crate) fn text(&self, i: usize) -> Result<Option<Cow<'a, str>>, String> {
        let s = match &self.kind {
            Kind::Utf8(a) => (!a.is_null(i)).then(|| a.value(i)),
            Kind::LargeUtf8(a) => (!a.is_null(i)).then(|| a.value(i)),
            Kind::View(a) => (!a.is_null(i)).then(|| a.value(i)),
            _ => return text_at(self.array, i).map(|t| t.map(Cow::Owned)),
        };
        Ok(s.map(Cow::Borrowed))
    }

    /// [`instant_at`] of a cell.
    pub(crate) fn instant(&self, i: usize, zone: &Zone) -> Result<Option<Micros>, String> {
        match &self.kind {
            Kind::Utc(a) => Ok((!a.is_null(i)).then(|| a.value(i))),
            _ => instant_at(self.array, i, zone),
        }
    }

    /// Appends what `serde_json` prints for [`json_at`] of a cell: strings,
    /// whole numbers and booleans directly, the rest through [`json_at`].
    fn write_json(&self, out: &mut String, i: usize, zone: Option<&Zone>) {
        if self.is_null(i) {
            out.push_str("null");
            return;
        }
        match &self.kind {
            Kind::Utf8(a) => put_str(out, a.value(i)),
            Kind::LargeUtf8(a) => put_str(out, a.value(i)),
            Kind::View(a) => put_str(out, a.value(i)),
            Kind::Boolean(a) => out.push_str(if a.value(i) { "true" } else { "false" }),
            Kind::Int32(a) => put_int(out, i64::from(a.value(i))),
            Kind::Int64(a) => put_int(out, a.value(i)),
            _ => put(out, &json_at(self.array, i, zone)),
        }
    }
}

/// A batch mapped row by row: the rows `row` accepts, and the others
/// quarantined with its reason and the source row.
pub(crate) fn map_batch<R>(
    batch: &arrow_array::RecordBatch,
    columns: &[String],
    zone: &Zone,
    row: impl Fn(&[Col<'_>], usize) -> Result<R, (Option<String>, String)>,
) -> (Vec<R>, Vec<trig_store::Quarantined>) {
    let arrays = batch.columns();
    let cols: Vec<Col<'_>> = arrays.iter().map(Col::new).collect();
    let mut rows = Vec::with_capacity(batch.num_rows());
    let mut bad = Vec::new();
    for i in 0..batch.num_rows() {
        match row(&cols, i) {
            Ok(r) => rows.push(r),
            Err((key, reason)) => bad.push(trig_store::Quarantined { key, reason, row: row_json(columns, arrays, i, zone).to_string() }),
        }
    }
    (rows, bad)
}

/// `s` trimmed, without the Unicode scan when it starts and ends with a
/// visible ASCII character (nothing to trim), as identifiers nearly always do.
pub(crate) fn trimmed(s: &str) -> &str {
    let b = s.as_bytes();
    if b.first().is_some_and(u8::is_ascii_graphic) && b.last().is_some_and(u8::is_ascii_graphic) { s } else { s.trim() }
}

/// Trims and lower-cases an email; `None` when it is not one.
pub fn normalise_email(s: &str) -> Option<String> {
    // Most emails are stored as they should be: printable ASCII, lower case,
    // no space (nor anything to trim). They need only the `@` checks.
    let plain = s.as_bytes().chunks(16).all(|c| c.iter().fold(true, |ok, &b| ok & b.is_ascii_graphic() & !b.is_ascii_uppercase()));
    let lowered;
    let e = if plain {
        s
    } else {
        lowered = s.trim().to_lowercase();
        lowered.as_str()
    };
    let (local, domain) = e.split_once('@')?;
    if local.is_empty() || domain.is_empty() || domain.contains('@') || (!plain && e.chars().any(char::is_whitespace)) {
        return None;
    }
    Some(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use arrow_array::{Date32Array, Decimal128Array, StringArray, TimestampMicrosecondArray};

    fn utc() -> Zone {
        Zone::parse("UTC").unwrap()
    }

    #[test]
    fn types_map_as_trig_notes_say() {
        let d: ArrayRef = Arc::new(Decimal128Array::from(vec![Some(1234)]).with_precision_and_scale(12, 2).unwrap());
        assert_eq!(json_at(&d, 0, None), serde_json::json!(12.34));
        let t: ArrayRef = Arc::new(TimestampMicrosecondArray::from(vec![Some(1_000_000)]).with_timezone("UTC"));
        assert_eq!(json_at(&t, 0, None), serde_json::json!("1970-01-01T00:00:01.000000Z"));
        let day: ArrayRef = Arc::new(Date32Array::from(vec![Some(1)]));
        assert_eq!(json_at(&day, 0, None), serde_json::json!("1970-01-02"));
    }

    #[test]
    fn zone_less_times_take_the_pipeline_zone() {
        let berlin = Zone::parse("Europe/Berlin").unwrap();
        let ntz: ArrayRef = Arc::new(TimestampMicrosecondArray::from(vec![Some(3_600_000_000)]));
        assert_eq!(instant_at(&ntz, 0, &berlin).unwrap(), Some(0));
        let tz: ArrayRef = Arc::new(TimestampMicrosecondArray::from(vec![Some(3_600_000_000)]).with_timezone("UTC"));
        assert_eq!(instant_at(&tz, 0, &berlin).unwrap(), Some(3_600_000_000));
        let s: ArrayRef = Arc::new(StringArray::from(vec![Some("1970-01-01 01:00:00"), Some("1970-01-01T00:00:00Z"), Some("soon")]));
        assert_eq!(instant_at(&s, 0, &berlin).unwrap(), Some(0));
        assert_eq!(instant_at(&s, 1, &berlin).unwrap(), Some(0));
        assert!(instant_at(&s, 2, &utc()).unwrap_err().contains("not a time"));
    }

    #[test]
    fn properties_written_directly_are_what_the_general_path_prints() {
        use arrow_array::builder::{Int64Builder, MapBuilder, StringBuilder};
        use arrow_array::{BooleanArray, Float64Array, Int64Array};
        // A MAP<STRING, STRING> column: plain keys, a key that a listed column
        // has too, a key twice, an escaped key, an empty map, a NULL map, a NULL value.
        let mut b = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
        type Entries<'a> = &'a [(&'a str, Option<&'a str>)];
        let rows: [Option<Entries>; 6] = [
            Some(&[("a", Some("1")), ("plan", Some("shadowed")), ("q\"uote\n", Some("é \u{1}"))]),
            Some(&[("k", Some("first")), ("k", Some("last"))]),
            Some(&[]),
            None,
            Some(&[("n", None)]),
            Some(&[("z", Some("x\\y\u{7f}"))]),
        ];
        for row in rows {
            match row {
                Some(entries) => {
                    for (k, v) in entries {
                        b.keys().append_value(k);
                        b.values().append_option(*v);
                    }
                    b.append(true).unwrap();
                }
                None => b.append(false).unwrap(),
            }
        }
        let map: ArrayRef = Arc::new(b.finish());
        let plan: ArrayRef = Arc::new(StringArray::from(vec![Some("pro"), None, Some("free"), Some("x\ty"), Some(""), Some("p")]));
        let count: ArrayRef = Arc::new(Int64Array::from(vec![Some(1), Some(-2), None, Some(i64::MAX), Some(0), Some(7)]));
        let flag: ArrayRef = Arc::new(BooleanArray::from(vec![Some(true), Some(false), None, Some(true), Some(true), None]));
        let ratio: ArrayRef = Arc::new(Float64Array::from(vec![Some(0.1), Some(1e300), None, Some(f64::NAN), Some(-0.0), Some(2.5)]));
        let arrays = [plan, count, flag, ratio, map];
        let cols: Vec<Col<'_>> = arrays.iter().map(Col::new).collect();
        let listed: Vec<(String, usize)> = ["plan", "count", "flag", "ratio"].iter().enumerate().map(|(i, n)| (n.to_string(), i)).collect();
        // A MAP whose values are maps (nested objects).
        let mut nested = MapBuilder::new(None, StringBuilder::new(), MapBuilder::new(None, StringBuilder::new(), Int64Builder::new()));
        nested.keys().append_value("outer");
        nested.values().keys().append_value("inner");
        nested.values().values().append_value(3);
        nested.values().append(true).unwrap();
        nested.append(true).unwrap();
        let nested: ArrayRef = Arc::new(nested.finish());
        let zone = utc();
        for i in 0..6 {
            for (listed, column) in [(&listed[..], Some(4)), (&listed[..], None), (&listed[..0], Some(4)), (&listed[1..2], Some(4))] {
                let p = Properties::new(listed.to_vec(), column);
                let general = p.value(&cols, i, &zone).unwrap().to_string();
                assert_eq!(p.json(&cols, i, &zone).unwrap(), general, "row {i}, {} listed, column {column:?}", listed.len());
            }
        }
        let direct = Properties::new(vec![], Some(0)).json(&[Col::new(&nested)], 0, &zone).unwrap();
        assert_eq!(direct, r#"{"outer":{"inner":3}}"#);
        assert_eq!(
            Properties::new(listed.clone(), Some(4)).json(&cols, 0, &zone).unwrap(),
            r#"{"plan":"pro","count":1,"flag":true,"ratio":0.1,"a":"1","q\"uote\n":"é \u0001"}"#
        );
        assert_eq!(Properties::new(vec![], Some(4)).json(&cols, 1, &zone).unwrap(), r#"{"k":"last"}"#);
    }

    proptest::proptest! {
        #[test]
        fn needs_escape_is_the_byte_by_byte_test(s in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40)) {
            let slow = s.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\');
            proptest::prop_assert_eq!(needs_escape(&s), slow);
        }
    }

    #[test]
    fn needs_escape_at_every_position() {
        for len in 0..24 {
            let plain = vec![b'a'; len];
            assert!(!needs_escape(&plain));
            for at in 0..len {
                for b in [0x00, 0x1f, b'"', b'\\', 0x7f, 0x80, 0xff, 0x21, 0x5b, 0x5d] {
                    let mut s = plain.clone();
                    s[at] = b;
                    assert_eq!(needs_escape(&s), b < 0x20 || b == b'"' || b == b'\\', "{s:?}");
                }
            }
        }
    }

    #[test]
    fn trimmed_is_trim() {
        for s in ["", " ", "a", " a", "a ", "evt_1", "\u{a0}x", "x\u{2003}", "\tx\n", "é", "a b", "\u{85}"] {
            assert_eq!(trimmed(s), s.trim(), "{s:?}");
        }
    }

    /// `normalise_email` as it reads without its shortcut for plain emails.
    fn normalise_email_slowly(s: &str) -> Option<String> {
        let e = s.trim().to_lowercase();
        let (local, domain) = e.split_once('@')?;
        (!local.is_empty() && !domain.is_empty() && !domain.contains('@') && !e.chars().any(char::is_whitespace)).then_some(e)
    }

    proptest::proptest! {
        #[test]
        fn the_plain_email_shortcut_agrees_with_the_general_rule(s in "[ a-zA-Z0-9@.\t\u{a0}é_+-]{0,24}") {
            proptest::prop_assert_eq!(normalise_email(&s), normalise_email_slowly(&s));
        }
    }

    #[test]
    fn emails_normalise() {
        assert_eq!(normalise_email("  Ada@Example.COM "), Some("ada@example.com".into()));
        assert_eq!(normalise_email("not-an-email"), None);
        assert_eq!(normalise_email("a b@x.com"), None);
        // Already normal: taken as it is, with the same checks.
        assert_eq!(normalise_email("ada@example.com"), Some("ada@example.com".into()));
        for bad in ["a@b@x.com", "@x.com", "ada@", "a\tb@x.com", "ada\u{a0}@x.com", "Ad a@x.com"] {
            assert_eq!(normalise_email(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_properties_cell_is_an_object_or_says_why_not() {
        use arrow_array::StringArray;
        let a: ArrayRef =
            std::sync::Arc::new(StringArray::from(vec![Some(r#"{"a": 1, "b": {"c": true}}"#), None, Some("[1]"), Some("nope")]));
        let m = object_at(&a, 0, None).unwrap().unwrap();
        assert_eq!(Value::Object(m), serde_json::json!({"a": 1, "b": {"c": true}}));
        assert_eq!(object_at(&a, 1, None).unwrap(), None);
        assert!(object_at(&a, 2, None).unwrap_err().contains("not an object"));
        assert!(object_at(&a, 3, None).unwrap_err().contains("not JSON"));
    }
}

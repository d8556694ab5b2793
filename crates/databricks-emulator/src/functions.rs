//! The Spark SQL functions connectors use that DataFusion lacks or spells
//! differently: `sha2`, `to_json`, `date_add`/`date_sub` with integer days,
//! `current_user()`.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Date32Array, StringArray, StringBuilder};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{DataFusionError, Result, ScalarValue, exec_err};
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility};
use sha2::Digest;

use crate::types::typed_json;

type Body = fn(&[ArrayRef], &str) -> Result<ArrayRef>;

/// A scalar function whose arguments are turned into arrays before the body runs.
#[derive(Debug)]
struct SparkFn {
    name: &'static str,
    signature: Signature,
    returns: DataType,
    body: Body,
    /// Per-session context (the caller's `userName` for `current_user`).
    context: String,
}

// Two functions are the same when their name and context are (the body is
// fixed by the name).
impl PartialEq for SparkFn {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.context == other.context && self.returns == other.returns
    }
}
impl Eq for SparkFn {}
impl std::hash::Hash for SparkFn {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
        self.context.hash(state);
    }
}

impl ScalarUDFImpl for SparkFn {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(self.returns.clone())
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let scalar = args.args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let arrays = if args.args.is_empty() { Vec::new() } else { ColumnarValue::values_to_arrays(&args.args)? };
        let out = (self.body)(&arrays, &self.context)?;
        if args.args.is_empty() {
            return Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?));
        }
        if scalar && out.len() == 1 {
            return Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?));
        }
        Ok(ColumnarValue::Array(out))
    }
}

fn udf(name: &'static str, signature: Signature, returns: DataType, body: Body) -> ScalarUDF {
    ScalarUDF::new_from_impl(SparkFn { name, signature, returns, body, context: String::new() })
}

/// Functions registered once for every session.
pub fn spark_functions() -> Vec<ScalarUDF> {
    vec![
        udf("sha2", Signature::any(2, Volatility::Immutable), DataType::Utf8, sha2_body),
        udf("to_json", Signature::any(1, Volatility::Immutable), DataType::Utf8, to_json_body),
        udf("date_add", Signature::any(2, Volatility::Immutable), DataType::Date32, |a, _| shift_days(a, 1)),
        udf("date_sub", Signature::any(2, Volatility::Immutable), DataType::Date32, |a, _| shift_days(a, -1)),
    ]
}

/// `current_user()` for one caller.
pub fn current_user(user_name: &str) -> ScalarUDF {
    ScalarUDF::new_from_impl(SparkFn {
        name: "current_user",
        signature: Signature::nullary(Volatility::Stable),
        returns: DataType::Utf8,
        body: |_, ctx| Ok(Arc::new(StringArray::from(vec![ctx.to_string()]))),
        context: user_name.to_string(),
    })
}

fn sha2_body(args: &[ArrayRef], _: &str) -> Result<ArrayRef> {
    let input = cast(&args[0], &DataType::Utf8)?;
    let bits = cast(&args[1], &DataType::Int64)?;
    let input = input.as_string::<i32>();
    let bits = bits.as_primitive::<datafusion::arrow::datatypes::Int64Type>();
    let mut out = StringBuilder::new();
    for i in 0..input.len() {
        let b = if bits.len() == 1 { bits.value(0) } else { bits.value(i) };
        if input.is_null(i) {
            out.append_null();
            continue;
        }
        let bytes = input.value(i).as_bytes();
        let digest = match b {
            224 => hex(&sha2::Sha224::digest(bytes)),
            256 | 0 => hex(&sha2::Sha256::digest(bytes)),
            384 => hex(&sha2::Sha384::digest(bytes)),
            512 => hex(&sha2::Sha512::digest(bytes)),
            // Spark returns NULL for an unsupported bit length.
            _ => {
                out.append_null();
                continue;
            }
        };
        out.append_value(digest);
    }
    Ok(Arc::new(out.finish()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn to_json_body(args: &[ArrayRef], _: &str) -> Result<ArrayRef> {
    let col = &args[0];
    let mut out = StringBuilder::new();
    for i in 0..col.len() {
        if col.is_null(i) {
            out.append_null();
        } else {
            out.append_value(typed_json(col.as_ref(), i).to_string());
        }
    }
    Ok(Arc::new(out.finish()))
}

fn shift_days(args: &[ArrayRef], sign: i32) -> Result<ArrayRef> {
    let dates = match args[0].data_type() {
        DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 => cast(&cast(&args[0], &DataType::Utf8)?, &DataType::Date32)?,
        DataType::Timestamp(..) | DataType::Date32 | DataType::Date64 => cast(&args[0], &DataType::Date32)?,
        other => return exec_err!("date_add/date_sub expects a DATE, got {other}"),
    };
    let days = cast(&args[1], &DataType::Int32)
        .map_err(|e| DataFusionError::Execution(format!("date_add/date_sub expects an integer number of days: {e}")))?;
    let dates = dates.as_primitive::<datafusion::arrow::datatypes::Date32Type>();
    let days = days.as_primitive::<datafusion::arrow::datatypes::Int32Type>();
    let n = dates.len().max(days.len());
    let out: Date32Array = (0..n)
        .map(|i| {
            let d = if dates.len() == 1 { 0 } else { i };
            let k = if days.len() == 1 { 0 } else { i };
            if dates.is_null(d) || days.is_null(k) { None } else { Some(dates.value(d) + sign * days.value(k)) }
        })
        .collect();
    Ok(Arc::new(out))
}

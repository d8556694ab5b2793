//! The SQL engine: Apache DataFusion speaking the Databricks dialect, with
//! Unity Catalog's rules in front of it.
//!
//! A statement goes through: parse (Databricks dialect) → classify (only
//! reads are allowed to clients) → resolve every table it names against the
//! default catalog/schema → check USE CATALOG / USE SCHEMA / SELECT → bind
//! `:name` parameters with their declared types → run. `SHOW` and `DESCRIBE`
//! are answered from the workspace, filtered to what the caller may see, as
//! are the per-catalog `information_schema` views.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BooleanArray, Int64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{
    CatalogProvider, CatalogProviderList, MemoryCatalogProvider, MemoryCatalogProviderList, MemorySchemaProvider, SchemaProvider,
    TableProvider,
};
use datafusion::common::{ParamValues, ScalarValue, SchemaError, TableReference};
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use datafusion::execution::context::SessionState;
use datafusion::execution::{FunctionRegistry, SessionStateBuilder};
use datafusion::logical_expr::planner::TypePlanner;
use datafusion::prelude::SessionConfig;
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{self, Statement};
use datafusion::sql::sqlparser::dialect::DatabricksDialect;
use datafusion::sql::sqlparser::parser::Parser;
use futures::StreamExt;

use crate::error::SqlError;
use crate::functions;
use crate::types::{self, catalog_type_text};
use crate::workspace::{Principal, Relation, Workspace};

/// One named parameter of a statement, as sent on the wire.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
pub struct Param {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default, rename = "type")]
    pub type_: Option<String>,
}

/// What a statement asks for.
#[derive(Debug, Clone)]
pub struct Query {
    pub sql: String,
    pub catalog: Option<String>,
    pub schema: Option<String>,
    pub params: Vec<Param>,
    /// Stop reading after this many rows (the caller sets `truncated`).
    pub max_rows: Option<usize>,
}

/// A finished query's rows, in Databricks' Arrow types.
#[derive(Debug, Clone)]
pub struct Output {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    /// More rows existed than `max_rows`.
    pub truncated: bool,
}

/// Databricks' `TIMESTAMP` is an instant; DataFusion's is zone-less. This
/// planner gives `CAST(x AS TIMESTAMP)` and `TIMESTAMP_NTZ` Databricks' meaning.
#[derive(Debug)]
struct DatabricksTypes;

impl TypePlanner for DatabricksTypes {
    #[allow(deprecated)]
    fn plan_type(&self, sql_type: &ast::DataType) -> datafusion::error::Result<Option<DataType>> {
        Ok(match sql_type {
            ast::DataType::TimestampNtz(_) => Some(DataType::Timestamp(TimeUnit::Microsecond, None)),
            ast::DataType::Timestamp(_, ast::TimezoneInfo::None | ast::TimezoneInfo::WithTimeZone) => Some(types::timestamp_type()),
            ast::DataType::String(_) => Some(DataType::Utf8),
            _ => None,
        })
    }
}

/// The DataFusion side of the emulator: a template session every statement
/// clones, with the Databricks dialect and the Spark functions registered.
pub struct Engine {
    base: SessionState,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Engine")
    }
}

impl Default for Engine {
    fn default() -> Self {
        Self::new()
    }
}

impl Engine {
    pub fn new() -> Self {
        let mut config = SessionConfig::new().with_information_schema(false).with_target_partitions(2);
        config.options_mut().sql_parser.dialect = datafusion::config::Dialect::Databricks;
        config.options_mut().sql_parser.enable_ident_normalization = false;
        config.options_mut().execution.time_zone = Some("UTC".into());
        let mut state =
            SessionStateBuilder::new().with_config(config).with_default_features().with_type_planner(Arc::new(DatabricksTypes)).build();
        for f in functions::spark_functions() {
            let _ = state.register_udf(Arc::new(f));
        }
        // Spark spells DataFusion's `make_array` as `array`.
        if let Some(make_array) = state.scalar_functions().get("make_array").cloned() {
            let _ = state.register_udf(Arc::new(make_array.as_ref().clone().with_aliases(["array"])));
        }
        Engine { base: state }
    }

    fn session(&self, ws: &Workspace, principal: Option<&Principal>, catalog: &str, schema: &str, info_schema: bool) -> SessionState {
        let mut state = self.base.clone();
        state.config_mut().options_mut().catalog.default_catalog = catalog.to_string();
        state.config_mut().options_mut().catalog.default_schema = schema.to_string();
        state.register_catalog_list(build_catalogs(ws, principal, info_schema));
        if let Some(p) = principal {
            let _ = state.register_udf(Arc::new(functions::current_user(&p.user_name)));
        }
        // Fixes `now()` / `current_timestamp()` / `current_date()` for this statement.
        state.mark_start_execution();
        state
    }

    /// Plans a view's SQL with the owner's rights (all tables visible), as
    /// Unity Catalog evaluates views.
    pub async fn plan_view(&self, ws: &Workspace, sql: &str, catalog: &str, schema: &str) -> Result<Arc<dyn TableProvider>, SqlError> {
        let state = self.session(ws, None, catalog, schema, false);
        let plan = state.create_logical_plan(sql).await.map_err(|e| map_df_error(&e, sql))?;
        Ok(Arc::new(datafusion::catalog::view::ViewTable::new(plan, Some(sql.to_string()))))
    }

    /// Runs one client statement for `principal`.
    pub async fn execute(&self, ws: &Workspace, principal: &Principal, q: &Query) -> Result<Output, SqlError> {
        let sql = q.sql.trim().trim_end_matches(';').trim();
        if sql.is_empty() {
            return Err(SqlError::class("PARSE_EMPTY_STATEMENT", "Syntax error, unexpected empty statement.", "42617"));
        }
        let catalog = q.catalog.clone().unwrap_or_else(|| default_catalog(ws));
        let schema = q.schema.clone().unwrap_or_else(|| "default".to_string());
        let stmt = parse_one(sql)?;
        match &stmt {
            Statement::Query(_) => {}
            Statement::ShowCatalogs { .. } => return Ok(show_catalogs(ws, principal)),
            Statement::ShowSchemas { show_options, .. } | Statement::ShowDatabases { show_options, .. } => {
                let cat = show_in_name(show_options).and_then(|n| n.first().cloned()).unwrap_or(catalog.clone());
                return show_schemas(ws, principal, &cat);
            }
            Statement::ShowTables { show_options, .. } => {
                let parts = show_in_name(show_options).unwrap_or_default();
                let (c, s) = match parts.as_slice() {
                    [] => (catalog.clone(), schema.clone()),
                    [s] => (catalog.clone(), s.clone()),
                    [c, s, ..] => (c.clone(), s.clone()),
                };
                return show_tables(ws, principal, &c, &s);
            }
            Statement::ExplainTable { table_name, .. } => {
                let parts: Vec<String> = table_name.0.iter().filter_map(|p| p.as_ident().map(|i| i.value.clone())).collect();
                let (c, s, t) = resolve(&parts, &catalog, &schema)?;
                return describe(ws, principal, &c, &s, &t, &parts.join("."));
            }
            Statement::Use(_) | Statement::Set(_) => return Ok(empty_output()),
            other => return Err(write_denied(other, &catalog, &schema)),
        }

        // Every table the query names must exist and be readable.
        let df_stmt = DfStatement::Statement(Box::new(stmt));
        let refs = self.base.resolve_table_references(&df_stmt).map_err(|e| map_df_error(&e, sql))?;
        let mut info_schema = false;
        for r in &refs {
            let (c, s, t) = resolve_ref(r, &catalog, &schema);
            if s == "information_schema" {
                if c != "system" && !ws.catalogs.contains_key(&c) {
                    return Err(table_not_found(&r.to_string(), &catalog, &schema));
                }
                info_schema = true;
                continue;
            }
            let Some(entry) = ws.table(&c, &s, &t) else {
                return Err(table_not_found(&r.to_string(), &catalog, &schema));
            };
            if let Some(denied) = ws.select_denied(principal, &c, &s, &t) {
                return Err(denied);
            }
            if let Relation::View { planned: Err(e), .. } = &entry.relation {
                return Err(e.clone());
            }
        }

        let state = self.session(ws, Some(principal), &catalog, &schema, info_schema);
        let plan = state.statement_to_plan(df_stmt).await.map_err(|e| map_df_error(&e, sql))?;
        let used = plan.get_parameter_names().map_err(|e| map_df_error(&e, sql))?;
        let mut values: HashMap<String, ScalarValue> = HashMap::new();
        for p in &q.params {
            if let Some(name) = &p.name {
                values.insert(name.clone(), param_value(p)?);
            }
        }
        for name in &used {
            let bare = name.trim_start_matches([':', '$']);
            if !values.contains_key(bare) {
                return Err(SqlError::class(
                    "UNBOUND_SQL_PARAMETER",
                    format!(
                        "Found the unbound parameter: {bare}. Please, fix `args` and provide a mapping of the parameter to either a SQL literal or collection constructor functions such as `map()`, `array()`, `struct()`."
                    ),
                    "42P02",
                ));
            }
        }
        let plan = if used.is_empty() {
            plan
        } else {
            let map: HashMap<String, datafusion::common::metadata::ScalarAndMetadata> =
                values.into_iter().map(|(k, v)| (k, v.into())).collect();
            plan.with_param_values(ParamValues::Map(map)).map_err(|e| map_df_error(&e, sql))?
        };
        let df = datafusion::dataframe::DataFrame::new(state, plan);
        let out_schema = types::normalize_schema(df.schema().as_arrow());
        let mut stream = df.execute_stream().await.map_err(|e| map_df_error(&e, sql))?;
        let mut batches = Vec::new();
        let mut rows = 0usize;
        let mut truncated = false;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(|e| map_df_error(&e, sql))?;
            let mut batch = types::normalize_batch(&batch, &out_schema).map_err(SqlError::internal)?;
            if let Some(max) = q.max_rows
                && rows + batch.num_rows() > max
            {
                batch = batch.slice(0, max - rows);
                truncated = true;
            }
            rows += batch.num_rows();
            if batch.num_rows() > 0 {
                batches.push(batch);
            }
            if truncated {
                break;
            }
        }
        Ok(Output { schema: out_schema, batches, truncated })
    }
}

fn default_catalog(ws: &Workspace) -> String {
    if ws.catalogs.contains_key(&ws.default_catalog) {
        ws.default_catalog.clone()
    } else if ws.catalogs.contains_key("main") {
        "main".into()
    } else {
        ws.catalogs.keys().next().cloned().unwrap_or_else(|| "main".into())
    }
}

fn empty_output() -> Output {
    Output { schema: Arc::new(Schema::empty()), batches: Vec::new(), truncated: false }
}

/// Parses exactly one statement, mapping parser errors to `PARSE_SYNTAX_ERROR`.
fn parse_one(sql: &str) -> Result<Statement, SqlError> {
    // sqlparser's Databricks dialect does not take `DESCRIBE TABLE x`; the
    // keyword is optional in Databricks, so drop it.
    let lowered = sql.to_ascii_lowercase();
    let text = ["describe table ", "desc table ", "describe extended ", "describe table extended "]
        .iter()
        .find(|p| lowered.starts_with(*p))
        .map(|p| format!("DESCRIBE {}", &sql[p.len()..]))
        .unwrap_or_else(|| sql.to_string());
    let text = spark_literals(&text).map_err(|at| SqlError::parse_syntax(sql, "'", 1, at))?;
    let mut stmts = Parser::parse_sql(&DatabricksDialect {}, &text).map_err(|e| parse_error(sql, &e.to_string()))?;
    match stmts.len() {
        1 => Ok(stmts.remove(0)),
        0 => Err(SqlError::class("PARSE_EMPTY_STATEMENT", "Syntax error, unexpected empty statement.", "42617")),
        _ => Err(SqlError::parse_syntax(sql, ";", 1, sql.find(';').unwrap_or(0))),
    }
}

/// Rewrites string literals as Spark reads them into the form sqlparser
/// reads alike: `'…'` and `"…"` with backslash escapes (`'O\'Connell'`),
/// raw `r'…'` / `R"…"`, all become `'…'` with quotes doubled and escapes
/// resolved. Backtick identifiers and comments pass through untouched. `Err`
/// holds the byte offset of a literal that is not closed.
fn spark_literals(sql: &str) -> Result<String, usize> {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let mut i = 0;
    let mut plain_from = 0;
    let ident_byte = |x: u8| x.is_ascii_alphanumeric() || x == b'_' || x >= 0x80;
    while i < b.len() {
        let raw = matches!(b[i], b'r' | b'R') && matches!(b.get(i + 1), Some(b'\'' | b'"')) && (i == 0 || !ident_byte(b[i - 1]));
        match b[i] {
            _ if raw => {
                let q = b[i + 1];
                let end = b[i + 2..].iter().position(|&x| x == q).ok_or(i)? + i + 2;
                out.push_str(&sql[plain_from..i]);
                out.push('\'');
                out.push_str(&sql[i + 2..end].replace('\'', "''"));
                out.push('\'');
                i = end + 1;
                plain_from = i;
            }
            q @ (b'\'' | b'"') => {
                out.push_str(&sql[plain_from..i]);
                let start = i;
                let mut value = String::new();
                let mut chars = sql[i + 1..].char_indices();
                let close = loop {
                    let Some((k, c)) = chars.next() else { return Err(start) };
                    match c {
                        '\\' => {
                            let Some((_, e)) = chars.next() else { return Err(start) };
                            match e {
                                'n' => value.push('\n'),
                                't' => value.push('\t'),
                                'r' => value.push('\r'),
                                'b' => value.push('\u{8}'),
                                '0' => value.push('\0'),
                                'Z' => value.push('\u{1a}'),
                                '%' | '_' => {
                                    value.push('\\');
                                    value.push(e);
                                }
                                other => value.push(other),
                            }
                        }
                        c if c as u32 == q as u32 => break i + 1 + k,
                        c => value.push(c),
                    }
                };
                out.push('\'');
                out.push_str(&value.replace('\'', "''"));
                out.push('\'');
                i = close + 1;
                plain_from = i;
            }
            b'`' => {
                // Identifiers keep their doubled backticks; skip to the closing one.
                let mut j = i + 1;
                while j < b.len() {
                    if b[j] == b'`' {
                        if b.get(j + 1) == Some(&b'`') {
                            j += 2;
                            continue;
                        }
                        break;
                    }
                    j += 1;
                }
                i = j + 1;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            _ => i += 1,
        }
    }
    out.push_str(&sql[plain_from.min(sql.len())..]);
    Ok(out)
}

/// `sql parser error: Expected: ..., found: SELEC at Line: 1, Column: 1`
/// becomes Databricks' `Syntax error at or near 'SELEC'` with its position.
fn parse_error(sql: &str, msg: &str) -> SqlError {
    let near = msg.split("found: ").nth(1).and_then(|r| r.split(" at Line:").next()).unwrap_or("end of input");
    let near = if near == "EOF" { "end of input" } else { near };
    let line = msg.split("Line: ").nth(1).and_then(|r| r.split(',').next()).and_then(|n| n.trim().parse().ok()).unwrap_or(1usize);
    let col = msg
        .split("Column: ")
        .nth(1)
        .and_then(|r| r.trim().split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(1usize);
    SqlError::parse_syntax(sql, near, line, col.saturating_sub(1))
}

fn resolve(parts: &[String], catalog: &str, schema: &str) -> Result<(String, String, String), SqlError> {
    Ok(match parts {
        [t] => (catalog.into(), schema.into(), t.clone()),
        [s, t] => (catalog.into(), s.clone(), t.clone()),
        [c, s, t] => (c.clone(), s.clone(), t.clone()),
        _ => return Err(SqlError::class("REQUIRES_SINGLE_PART_NAMESPACE", format!("{} is not a valid name.", parts.join(".")), "42K05")),
    })
}

fn resolve_ref(r: &TableReference, catalog: &str, schema: &str) -> (String, String, String) {
    let full = r.clone().resolve(catalog, schema);
    (full.catalog.to_string(), full.schema.to_string(), full.table.to_string())
}

fn table_not_found(name: &str, catalog: &str, schema: &str) -> SqlError {
    let quoted: Vec<String> = name.split('.').map(|p| format!("`{}`", p.trim_matches('"'))).collect();
    SqlError::class(
        "TABLE_OR_VIEW_NOT_FOUND",
        format!(
            "The table or view {} cannot be found. Verify the spelling and correctness of the schema and catalog.\nSearch path: [`system`.`builtin`, `{catalog}`.`{schema}`].\nIf you did not qualify the name with a schema, verify the current_schema() output, or qualify the name with the correct schema and catalog.\nTo tolerate the error on drop use DROP VIEW IF EXISTS or DROP TABLE IF EXISTS.",
            quoted.join(".")
        ),
        "42P01",
    )
}

/// Anything but a read: fail as Unity Catalog fails a principal without
/// write privileges.
fn write_denied(stmt: &Statement, catalog: &str, schema: &str) -> SqlError {
    let target = |name: &ast::ObjectName| {
        let parts: Vec<String> = name.0.iter().filter_map(|p| p.as_ident().map(|i| i.value.clone())).collect();
        match resolve(&parts, catalog, schema) {
            Ok((c, s, t)) => format!("{c}.{s}.{t}"),
            Err(_) => parts.join("."),
        }
    };
    match stmt {
        Statement::Insert(i) => {
            let name = match &i.table {
                ast::TableObject::TableName(n) => target(n),
                other => other.to_string(),
            };
            SqlError::insufficient("MODIFY", "Table", &name)
        }
        Statement::Update(u) => SqlError::insufficient("MODIFY", "Table", &u.table.relation.to_string()),
        Statement::Delete(_) | Statement::Merge(_) | Statement::Truncate(_) => {
            SqlError::insufficient("MODIFY", "Table", stmt.to_string().split_whitespace().nth(2).unwrap_or(""))
        }
        Statement::CreateTable(_) | Statement::CreateView(_) => {
            SqlError::insufficient("CREATE TABLE", "Schema", &format!("{catalog}.{schema}"))
        }
        Statement::CreateSchema { .. } => SqlError::insufficient("CREATE SCHEMA", "Catalog", catalog),
        _ => SqlError::class(
            "INSUFFICIENT_PERMISSIONS",
            "Insufficient privileges:\nUser does not have permission to run this statement; only SELECT, WITH, SHOW and DESCRIBE are allowed for this principal.",
            "42501",
        ),
    }
}

fn show_in_name(opts: &ast::ShowStatementOptions) -> Option<Vec<String>> {
    opts.show_in
        .as_ref()
        .and_then(|i| i.parent_name.as_ref())
        .map(|n| n.0.iter().filter_map(|p| p.as_ident().map(|i| i.value.clone())).collect())
}

fn strings(name: &str, values: Vec<String>) -> (Field, ArrayRef) {
    (Field::new(name, DataType::Utf8, false), Arc::new(StringArray::from(values)) as ArrayRef)
}

fn output(cols: Vec<(Field, ArrayRef)>) -> Output {
    let (fields, arrays): (Vec<Field>, Vec<ArrayRef>) = cols.into_iter().unzip();
    let schema = Arc::new(Schema::new(fields));
    let n = arrays.first().map(|a| a.len()).unwrap_or(0);
    let batches =
        if n == 0 { Vec::new() } else { vec![RecordBatch::try_new(schema.clone(), arrays).expect("columns built with matching lengths")] };
    Output { schema, batches, truncated: false }
}

fn show_catalogs(ws: &Workspace, p: &Principal) -> Output {
    let mut names: Vec<String> = ws.visible_catalogs(p, true).into_iter().map(|(n, _, _)| n.clone()).collect();
    // `system` is built in and visible to everyone.
    if !names.iter().any(|n| n == "system") {
        names.push("system".into());
        names.sort();
    }
    output(vec![strings("catalog", names)])
}

fn show_schemas(ws: &Workspace, p: &Principal, catalog: &str) -> Result<Output, SqlError> {
    let Some(cat) = ws.catalogs.get(catalog) else {
        return Err(SqlError::class(
            "NO_SUCH_CATALOG_EXCEPTION",
            format!("Catalog '{catalog}' was not found. Please verify the catalog name and then retry the query or command again."),
            "42704",
        ));
    };
    // SHOW SCHEMAS also answers to BROWSE on the catalog.
    if let Some(d) = ws.use_denied(p, catalog, None)
        && !ws.has(p, "BROWSE", &crate::workspace::Securable::Catalog(catalog.into()))
    {
        return Err(SqlError::raw(format!("PERMISSION_DENIED: {}", d.message()), "42501"));
    }
    let mut names: Vec<String> = cat.schemas.keys().filter(|s| ws.can_see_schema(p, catalog, s)).cloned().collect();
    if !names.iter().any(|n| n == "information_schema") {
        names.push("information_schema".into());
        names.sort();
    }
    Ok(output(vec![strings("databaseName", names)]))
}

fn show_tables(ws: &Workspace, p: &Principal, catalog: &str, schema: &str) -> Result<Output, SqlError> {
    let Some(sch) = ws.catalogs.get(catalog).and_then(|c| c.schemas.get(schema)) else {
        return Err(SqlError::class(
            "SCHEMA_NOT_FOUND",
            format!("The schema `{catalog}`.`{schema}` cannot be found. Verify the spelling and correctness of the schema and catalog."),
            "42704",
        ));
    };
    if let Some(d) = ws.use_denied(p, catalog, Some(schema)) {
        return Err(if d.privilege == "USE CATALOG" {
            SqlError::raw(format!("PERMISSION_DENIED: {}", d.message()), "42501")
        } else {
            d.sql()
        });
    }
    let names: Vec<String> = sch.tables.keys().filter(|t| ws.can_see_table(p, catalog, schema, t)).cloned().collect();
    let n = names.len();
    Ok(output(vec![
        strings("database", vec![schema.to_string(); n]),
        strings("tableName", names),
        (Field::new("isTemporary", DataType::Boolean, false), Arc::new(BooleanArray::from(vec![false; n])) as ArrayRef),
    ]))
}

fn describe(ws: &Workspace, p: &Principal, c: &str, s: &str, t: &str, written: &str) -> Result<Output, SqlError> {
    let Some(entry) = ws.table(c, s, t) else {
        return Err(table_not_found(written, c, s));
    };
    if !ws.can_see_table(p, c, s, t)
        && let Some(e) = ws.select_denied(p, c, s, t)
    {
        return Err(e);
    }
    let schema = entry.schema();
    let names = schema.fields().iter().map(|f| f.name().clone()).collect();
    let types = schema.fields().iter().map(|f| catalog_type_text(f.data_type())).collect();
    let n = schema.fields().len();
    Ok(output(vec![
        strings("col_name", names),
        strings("data_type", types),
        (Field::new("comment", DataType::Utf8, true), Arc::new(StringArray::from(vec![None::<String>; n])) as ArrayRef),
    ]))
}

/// Binds one parameter: `cast(value AS type)`, as Databricks does.
fn param_value(p: &Param) -> Result<ScalarValue, SqlError> {
    let type_text = p.type_.clone().unwrap_or_else(|| "STRING".into());
    let dt = types::parse_type(&type_text).map_err(|e| {
        SqlError::class(
            "INVALID_PARAMETER_MARKER_VALUE.INVALID_DATA_TYPE",
            format!("The parameter type `{type_text}` is not supported: {e}."),
            "22023",
        )
    })?;
    if matches!(dt, DataType::List(_) | DataType::Map(..) | DataType::Struct(_) | DataType::Binary) {
        return Err(SqlError::class(
            "INVALID_PARAMETER_MARKER_VALUE.INVALID_DATA_TYPE",
            format!(
                "The parameter `{}` has type {type_text}, which cannot be bound; bind ARRAY, MAP, STRUCT and BINARY values with SQL constructors.",
                p.name.clone().unwrap_or_default()
            ),
            "22023",
        ));
    }
    let Some(v) = &p.value else {
        return ScalarValue::try_from(&dt).map_err(|e| SqlError::internal(e.to_string()));
    };
    let invalid = || {
        SqlError::class(
            "INVALID_VALUE_FOR_DATA_TYPE",
            format!("The value '{v}' of parameter `{}` cannot be cast to {}.", p.name.clone().unwrap_or_default(), types::type_text(&dt)),
            "22023",
        )
    };
    // Timestamps: accept RFC 3339 and Spark's `yyyy-MM-dd HH:mm:ss[.SSSSSS]`.
    if let DataType::Timestamp(_, tz) = &dt {
        let micros = parse_timestamp_micros(v, tz.is_some()).ok_or_else(invalid)?;
        return Ok(ScalarValue::TimestampMicrosecond(Some(micros), tz.clone()));
    }
    let cast = ScalarValue::Utf8(Some(v.trim().to_string())).cast_to(&dt).map_err(|_| invalid())?;
    if cast.is_null() { Err(invalid()) } else { Ok(cast) }
}

/// Parses a timestamp literal to microseconds since the epoch (UTC for
/// values without a zone).
pub fn parse_timestamp_micros(v: &str, _instant: bool) -> Option<i64> {
    let v = v.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(v) {
        return Some(t.timestamp_micros());
    }
    for fmt in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(v, fmt) {
            return Some(t.and_utc().timestamp_micros());
        }
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d") {
        return d.and_hms_opt(0, 0, 0).map(|t| t.and_utc().timestamp_micros());
    }
    None
}

/// Maps a DataFusion error to the Databricks error class a user would see.
pub fn map_df_error(e: &DataFusionError, sql: &str) -> SqlError {
    let root = e.find_root();
    match root {
        DataFusionError::SchemaError(err, _) => {
            if let SchemaError::FieldNotFound { field, valid_fields } = err.as_ref() {
                let name = field.name.clone();
                let mut candidates: Vec<(usize, String)> = valid_fields
                    .iter()
                    .map(|c| (levenshtein(&name.to_lowercase(), &c.name.to_lowercase()), format!("`{}`", c.name)))
                    .collect();
                candidates.sort();
                candidates.dedup_by(|a, b| a.1 == b.1);
                let proposal: Vec<String> = candidates.into_iter().take(5).map(|(_, n)| n).collect();
                let pos = sql.find(name.as_str()).unwrap_or(0);
                let text = format!(
                    "A column, variable, or function parameter with name `{name}` cannot be resolved. Did you mean one of the following? [{}]",
                    proposal.join(", ")
                );
                return SqlError {
                    error_code: "BAD_REQUEST",
                    message: format!("[UNRESOLVED_COLUMN.WITH_SUGGESTION] {text}. SQLSTATE: 42703; line 1 pos {pos}"),
                    sql_state: Some("42703".into()),
                };
            }
            SqlError::class("INVALID_SCHEMA", root.message(), "42000")
        }
        DataFusionError::ArrowError(a, _) => {
            let msg = a.to_string();
            if msg.contains("Divide by zero") {
                SqlError::class(
                    "DIVIDE_BY_ZERO",
                    "Division by zero. Use `try_divide` to tolerate divisor being 0 and return NULL instead.",
                    "22012",
                )
            } else if msg.contains("Cast error") || msg.contains("Parser error") {
                SqlError::class("CAST_INVALID_INPUT", msg, "22018")
            } else if msg.contains("overflow") {
                SqlError::class("ARITHMETIC_OVERFLOW", msg, "22003")
            } else {
                SqlError::internal(msg)
            }
        }
        DataFusionError::SQL(p, _) => parse_error(sql, &p.to_string()),
        DataFusionError::Plan(msg) if msg.contains("Invalid function") || msg.contains("not found in function") => {
            let name = msg.split('\'').nth(1).unwrap_or("");
            SqlError::class(
                "UNRESOLVED_ROUTINE",
                format!("Cannot resolve routine `{name}` on search path [`system`.`builtin`, `system`.`session`]."),
                "42883",
            )
        }
        DataFusionError::Plan(msg) if msg.contains("table") && msg.contains("not found") => {
            let name = msg.split('\'').nth(1).unwrap_or("");
            table_not_found(name, "", "")
        }
        DataFusionError::Execution(msg) if msg.contains("Divide by zero") => SqlError::class(
            "DIVIDE_BY_ZERO",
            "Division by zero. Use `try_divide` to tolerate divisor being 0 and return NULL instead.",
            "22012",
        ),
        DataFusionError::NotImplemented(msg) => SqlError::class("NOT_SUPPORTED_WITH_DB_SQL", msg, "0A000"),
        other => {
            let msg = other.message().to_string();
            if msg.contains("Divide by zero") {
                SqlError::class("DIVIDE_BY_ZERO", "Division by zero.", "22012")
            } else if msg.contains("Cannot cast") || msg.contains("Cast error") {
                SqlError::class("CAST_INVALID_INPUT", msg, "22018")
            } else {
                SqlError::class("DATATYPE_MISMATCH", msg, "42K09")
            }
        }
    }
}

/// Edit distance, for "did you mean" suggestions.
pub fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The catalogs DataFusion sees for one statement: every table provider (the
/// grant check already ran), plus `information_schema` filtered to `principal`.
fn build_catalogs(ws: &Workspace, principal: Option<&Principal>, info_schema: bool) -> Arc<dyn CatalogProviderList> {
    let list = MemoryCatalogProviderList::new();
    for (cname, cat) in &ws.catalogs {
        let provider = MemoryCatalogProvider::new();
        for (sname, sch) in &cat.schemas {
            let sp = MemorySchemaProvider::new();
            for (tname, t) in &sch.tables {
                let table: Option<Arc<dyn TableProvider>> = match &t.relation {
                    Relation::Table(tab) => Some(tab.clone()),
                    Relation::View { planned: Ok(v), .. } => Some(v.clone()),
                    Relation::View { planned: Err(_), .. } => None,
                };
                if let Some(table) = table {
                    let _ = sp.register_table(tname.clone(), table);
                }
            }
            let _ = provider.register_schema(sname, Arc::new(sp));
        }
        if info_schema && let Some(p) = principal {
            let _ = provider.register_schema("information_schema", info_schema_for(ws, p, Some(cname)));
        }
        list.register_catalog(cname.clone(), Arc::new(provider));
    }
    if info_schema
        && !ws.catalogs.contains_key("system")
        && let Some(p) = principal
    {
        let provider = MemoryCatalogProvider::new();
        let _ = provider.register_schema("information_schema", info_schema_for(ws, p, None));
        list.register_catalog("system".into(), Arc::new(provider));
    }
    Arc::new(list)
}

/// `information_schema.{catalogs,schemata,tables,columns}` as `p` may see them;
/// `only` limits it to one catalog (the per-catalog schema), `None` is
/// `system.information_schema` (every catalog).
fn info_schema_for(ws: &Workspace, p: &Principal, only: Option<&String>) -> Arc<dyn SchemaProvider> {
    let sp = MemorySchemaProvider::new();
    let mut cat_rows: Vec<[String; 3]> = Vec::new();
    let mut schema_rows: Vec<[String; 4]> = Vec::new();
    let mut table_rows: Vec<[String; 6]> = Vec::new();
    #[allow(clippy::type_complexity)]
    let mut col_rows: Vec<(String, String, String, String, i64, bool, String, String, Option<i64>, Option<i64>)> = Vec::new();
    for (cname, cat) in &ws.catalogs {
        if only.is_some_and(|o| o != cname) || ws.use_denied(p, cname, None).is_some() {
            continue;
        }
        cat_rows.push([cname.clone(), cat.owner.clone(), cat.comment.clone()]);
        for (sname, sch) in &cat.schemas {
            if !ws.can_see_schema(p, cname, sname) {
                continue;
            }
            schema_rows.push([cname.clone(), sname.clone(), sch.owner.clone(), sch.comment.clone()]);
            for (tname, t) in &sch.tables {
                if !ws.can_see_table(p, cname, sname, tname) {
                    continue;
                }
                let kind = if t.is_view() { "VIEW" } else { "MANAGED" };
                table_rows.push([cname.clone(), sname.clone(), tname.clone(), kind.into(), t.owner.clone(), t.comment.clone()]);
                for (i, f) in t.schema().fields().iter().enumerate() {
                    let (prec, scale) = match f.data_type() {
                        DataType::Decimal128(p, s) => (Some(*p as i64), Some(*s as i64)),
                        DataType::Int32 => (Some(10), Some(0)),
                        DataType::Int64 => (Some(19), Some(0)),
                        _ => (None, None),
                    };
                    col_rows.push((
                        cname.clone(),
                        sname.clone(),
                        tname.clone(),
                        f.name().clone(),
                        i as i64,
                        f.is_nullable(),
                        catalog_type_text(f.data_type()),
                        types::type_name(f.data_type()).to_string(),
                        prec,
                        scale,
                    ));
                }
            }
        }
    }
    let col = |i: usize, rows: &Vec<[String; 3]>| -> ArrayRef {
        Arc::new(StringArray::from(rows.iter().map(|r| r[i].clone()).collect::<Vec<_>>()))
    };
    let catalogs =
        mem_table(vec![("catalog_name", col(0, &cat_rows)), ("catalog_owner", col(1, &cat_rows)), ("comment", col(2, &cat_rows))]);
    let s = |i: usize| -> ArrayRef { Arc::new(StringArray::from(schema_rows.iter().map(|r| r[i].clone()).collect::<Vec<_>>())) };
    let schemata = mem_table(vec![("catalog_name", s(0)), ("schema_name", s(1)), ("schema_owner", s(2)), ("comment", s(3))]);
    let t = |i: usize| -> ArrayRef { Arc::new(StringArray::from(table_rows.iter().map(|r| r[i].clone()).collect::<Vec<_>>())) };
    let tables = mem_table(vec![
        ("table_catalog", t(0)),
        ("table_schema", t(1)),
        ("table_name", t(2)),
        ("table_type", t(3)),
        ("table_owner", t(4)),
        ("comment", t(5)),
    ]);
    let c = |f: fn(&ColumnRow) -> String| -> ArrayRef { Arc::new(StringArray::from(col_rows.iter().map(f).collect::<Vec<_>>())) };
    let columns = mem_table(vec![
        ("table_catalog", c(|r| r.0.clone())),
        ("table_schema", c(|r| r.1.clone())),
        ("table_name", c(|r| r.2.clone())),
        ("column_name", c(|r| r.3.clone())),
        ("ordinal_position", Arc::new(Int64Array::from(col_rows.iter().map(|r| r.4).collect::<Vec<_>>()))),
        ("is_nullable", c(|r| if r.5 { "YES".into() } else { "NO".into() })),
        ("full_data_type", c(|r| r.6.clone())),
        ("data_type", c(|r| r.7.clone())),
        ("numeric_precision", Arc::new(Int64Array::from(col_rows.iter().map(|r| r.8).collect::<Vec<_>>()))),
        ("numeric_scale", Arc::new(Int64Array::from(col_rows.iter().map(|r| r.9).collect::<Vec<_>>()))),
    ]);
    let _ = sp.register_table("catalogs".into(), catalogs);
    let _ = sp.register_table("schemata".into(), schemata);
    let _ = sp.register_table("tables".into(), tables);
    let _ = sp.register_table("columns".into(), columns);
    Arc::new(sp)
}

fn mem_table(cols: Vec<(&str, ArrayRef)>) -> Arc<dyn TableProvider> {
    let fields: Vec<Field> = cols.iter().map(|(n, a)| Field::new(*n, a.data_type().clone(), true)).collect();
    let schema = Arc::new(Schema::new(fields));
    let arrays: Vec<ArrayRef> = cols.into_iter().map(|(_, a)| a).collect();
    let batch = RecordBatch::try_new(schema.clone(), arrays).expect("information_schema columns have equal lengths");
    Arc::new(MemTable::try_new(schema, vec![vec![batch]]).expect("schema matches its batch"))
}

/// One row of `information_schema.columns`: catalog, schema, table, column,
/// position, nullable, data type, full type, precision, scale.
type ColumnRow = (String, String, String, String, i64, bool, String, String, Option<i64>, Option<i64>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_read_as_spark_reads_them() {
        assert_eq!(spark_literals(r#"SELECT 'O\'Connell', "a\\b""#).unwrap(), "SELECT 'O''Connell', 'a\\b'");
        assert_eq!(spark_literals(r"SELECT r'C:\n', `it``s` -- 'x").unwrap(), r"SELECT 'C:\n', `it``s` -- 'x");
        assert_eq!(spark_literals("SELECT 'tab\\there' /* 'q' */").unwrap(), "SELECT 'tab\there' /* 'q' */");
        assert!(spark_literals(r"SELECT 'open\'").is_err());
        // The stacked attack is one string to Spark, so one statement here too.
        let s = parse_one(r"SELECT 'x\'); DROP TABLE t; SELECT (1 --'");
        assert!(matches!(s, Ok(Statement::Query(_))), "{s:?}");
    }

    #[test]
    fn parse_errors_name_the_token() {
        let e = parse_one("SELEC 1").unwrap_err();
        assert!(
            e.message.starts_with("\n[PARSE_SYNTAX_ERROR] Syntax error at or near 'SELEC'. SQLSTATE: 42601 (line 1, pos 0)"),
            "{}",
            e.message
        );
        assert_eq!(e.sql_state.as_deref(), Some("42601"));
    }

    #[test]
    fn levenshtein_works() {
        assert_eq!(levenshtein("event_ts", "event_ts"), 0);
        assert_eq!(levenshtein("evnt_ts", "event_ts"), 1);
    }

    #[test]
    fn timestamps_parse_in_every_form() {
        let want = Some(1_704_164_645_000_000);
        assert_eq!(parse_timestamp_micros("2024-01-02T03:04:05Z", true), want);
        assert_eq!(parse_timestamp_micros("2024-01-02 03:04:05", true), want);
        assert_eq!(parse_timestamp_micros("2024-01-02T04:04:05+01:00", true), want);
        assert_eq!(parse_timestamp_micros("yesterday", true), None);
    }

    /// A window over the demo's view reads only the table's batches its
    /// rows can be in: the filters reach the table through the view, and
    /// the rows are those of a full scan.
    #[tokio::test]
    async fn a_window_through_a_view_skips_batches_and_loses_no_row() {
        use crate::demo::{self, DemoOptions};
        use datafusion::arrow::array::{Array, AsArray};
        use datafusion::arrow::datatypes::TimestampMicrosecondType;

        let loaded = demo::workspace(&DemoOptions { events: 200_000, ..Default::default() }).await.unwrap();
        let ws = &loaded.workspace;
        let Relation::Table(table) = &ws.table("main", "product", "events").unwrap().relation else { panic!("events is a table") };
        let (schema, batches) = table.snapshot();
        assert!(batches.len() >= 4, "the demo's events come in several batches");
        // A window inside the second batch's time span.
        let ts = schema.index_of("event_ts").unwrap();
        let env = schema.index_of("environment").unwrap();
        let second = batches[1].column(ts).as_primitive::<TimestampMicrosecondType>();
        // Leaving out the few NULL and future-stamped rows at either end.
        let mut span: Vec<i64> = (0..20_000).filter(|&i| second.is_valid(i)).map(|i| second.value(i)).collect();
        span.sort_unstable();
        let (from, to) = (span[100], span[span.len() - 100]);
        let expected: usize = batches
            .iter()
            .map(|b| {
                let (t, e) = (b.column(ts).as_primitive::<TimestampMicrosecondType>(), b.column(env).as_string::<i32>());
                (0..b.num_rows()).filter(|&i| t.is_valid(i) && t.value(i) > from && t.value(i) <= to && e.value(i) == "production").count()
            })
            .sum();
        let iso = |us: i64| chrono::DateTime::from_timestamp_micros(us).unwrap().format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
        let param = |name: &str, us: i64| Param { name: Some(name.into()), value: Some(iso(us)), type_: Some("TIMESTAMP".into()) };
        let q = Query {
            sql: "SELECT event_id FROM main.product.events_v WHERE event_ts > :window_from AND event_ts <= :window_to".into(),
            catalog: None,
            schema: None,
            params: vec![param("window_from", from), param("window_to", to)],
            max_rows: None,
        };
        let principal = ws.principal(demo::SERVICE_PRINCIPAL).unwrap().clone();
        let before = table.batches_scanned();
        let out = Engine::new().execute(ws, &principal, &q).await.unwrap();
        let scanned = table.batches_scanned() - before;
        assert_eq!(out.batches.iter().map(|b| b.num_rows()).sum::<usize>(), expected);
        assert!(expected > 1000, "the window holds rows ({expected})");
        assert!(scanned >= 1 && (scanned as usize) < batches.len(), "read {scanned} of {} batches", batches.len());
    }
}

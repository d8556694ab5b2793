//! The SQL a pipeline sends: a projection of quoted identifiers, the
//! configured filter wrapped in parentheses, and the window as named
//! parameters. Values never become SQL text.

use databricks::{Parameter, Statement, TableName, quote_ident};
use serde::Serialize;
use trig_store::Micros;

use crate::window::Window;

/// A statement and its parameters, as a real run sends them (and `--dry-run` shows them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Query {
    pub sql: String,
    pub parameters: Vec<QueryParameter>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueryParameter {
    pub name: String,
    pub value: Option<String>,
    #[serde(rename = "type")]
    pub type_name: String,
}

impl Query {
    pub fn statement(&self) -> Statement {
        let mut s = Statement::new(self.sql.clone());
        s.parameters = self
            .parameters
            .iter()
            .map(|p| Parameter { name: p.name.clone(), value: p.value.clone(), type_name: p.type_name.clone() })
            .collect();
        s
    }
}

/// The earliest and latest instants a Databricks `TIMESTAMP` holds
/// (0001-01-01T00:00:00Z and 9999-12-31T23:59:59.999999Z).
pub const TIMESTAMP_MIN: Micros = -62_135_596_800_000_000;
pub const TIMESTAMP_MAX: Micros = 253_402_300_799_999_999;

/// A timestamp parameter's value as Databricks reads it: ISO 8601 in UTC with
/// microseconds, within the type's range.
pub fn timestamp_value(t: Micros) -> String {
    let t = t.clamp(TIMESTAMP_MIN, TIMESTAMP_MAX);
    match chrono::DateTime::from_timestamp_micros(t) {
        Some(d) => d.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        None => unreachable!("the clamped range is within chrono's"),
    }
}

/// What to read.
#[derive(Debug, Clone)]
pub struct Select<'a> {
    pub table: &'a TableName,
    pub columns: &'a [String],
    pub filter: Option<&'a str>,
    /// The cursor column and the window on it; `None` reads every row.
    pub window: Option<(&'a str, Window)>,
    /// Also read rows whose cursor column is NULL (once, in a backfill), so they are quarantined rather than never seen.
    pub include_null_cursor: bool,
}

/// Builds the statement.
pub fn build(s: &Select) -> Query {
    let projection = s.columns.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ");
    let mut sql = format!("SELECT {projection}\nFROM {}", s.table.quoted());
    let mut conditions = Vec::new();
    if let Some(f) = s.filter {
        conditions.push(format!("({f})"));
    }
    let mut parameters = Vec::new();
    if let Some((col, w)) = s.window {
        let c = quote_ident(col);
        let range = format!("{c} > :window_from AND {c} <= :window_to");
        conditions.push(if s.include_null_cursor { format!("(({range}) OR {c} IS NULL)") } else { range });
        parameters.push(QueryParameter { name: "window_from".into(), value: Some(timestamp_value(w.from)), type_name: "TIMESTAMP".into() });
        parameters.push(QueryParameter { name: "window_to".into(), value: Some(timestamp_value(w.to)), type_name: "TIMESTAMP".into() });
    }
    if !conditions.is_empty() {
        sql.push_str("\nWHERE ");
        sql.push_str(&conditions.join("\n  AND "));
    }
    Query { sql, parameters }
}

/// `SELECT min(cursor), count(cursor)` over the filtered source: where a
/// backfill without `backfill_from` starts, and about how many rows it will
/// read (so its first window is sized from the data's density, not
/// guessed). One statement, as `min` alone was, and as cheap: without a
/// `where`, a Delta table's file statistics can answer both without a scan.
pub fn source_extent(table: &TableName, cursor: &str, filter: Option<&str>) -> Query {
    let c = quote_ident(cursor);
    let mut sql = format!("SELECT min({c}) AS first, count({c}) AS rows\nFROM {}", table.quoted());
    if let Some(f) = filter {
        sql.push_str(&format!("\nWHERE ({f})"));
    }
    Query { sql, parameters: Vec::new() }
}

/// `SELECT min(cursor)` over the filtered source within `(from, to]`: where
/// the data resumes after an empty window, so a backfill skips empty
/// stretches in one statement instead of one per window.
pub fn next_cursor(table: &TableName, cursor: &str, filter: Option<&str>, within: Window) -> Query {
    let c = quote_ident(cursor);
    let mut sql = format!("SELECT min({c}) AS next\nFROM {}\nWHERE ", table.quoted());
    if let Some(f) = filter {
        sql.push_str(&format!("({f})\n  AND "));
    }
    sql.push_str(&format!("{c} > :window_from AND {c} <= :window_to"));
    let parameters = vec![
        QueryParameter { name: "window_from".into(), value: Some(timestamp_value(within.from)), type_name: "TIMESTAMP".into() },
        QueryParameter { name: "window_to".into(), value: Some(timestamp_value(within.to)), type_name: "TIMESTAMP".into() },
    ];
    Query { sql, parameters }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn table() -> TableName {
        TableName::parse("main.product.events_v", None).unwrap()
    }

    #[test]
    fn the_events_statement() {
        let cols: Vec<String> = ["event_id", "event_name", "event_ts", "user_id"].iter().map(|s| s.to_string()).collect();
        let q = build(&Select {
            table: &table(),
            columns: &cols,
            filter: Some("environment = 'production'"),
            window: Some(("event_ts", Window { from: 0, to: 1_000_000 })),
            include_null_cursor: false,
        });
        assert_eq!(
            q.sql,
            "SELECT `event_id`, `event_name`, `event_ts`, `user_id`\nFROM `main`.`product`.`events_v`\nWHERE (environment = 'production')\n  AND `event_ts` > :window_from AND `event_ts` <= :window_to"
        );
        assert_eq!(q.parameters[0].value.as_deref(), Some("1970-01-01T00:00:00.000000Z"));
        assert_eq!(q.parameters[1].value.as_deref(), Some("1970-01-01T00:00:01.000000Z"));
        databricks::ensure_read_only(&q.sql).unwrap();
    }

    proptest! {
        /// Whatever the column names, the statement stays one read-only
        /// SELECT and each name appears only quoted.
        #[test]
        fn identifiers_are_always_quoted(name in "[a-zA-Z_`'\";) -]{1,20}", from in 0i64..4_000_000_000_000_000, len in 1i64..1_000_000_000) {
            let cols = vec![name.clone(), "b".to_string()];
            let q = build(&Select {
                table: &table(),
                columns: &cols,
                filter: None,
                window: Some((name.as_str(), Window { from, to: from + len })),
                include_null_cursor: true,
            });
            prop_assert!(databricks::ensure_read_only(&q.sql).is_ok(), "{}", q.sql);
            prop_assert!(q.sql.contains(&quote_ident(&name)));
            prop_assert_eq!(q.parameters.len(), 2);
            let f = chrono::DateTime::parse_from_rfc3339(q.parameters[0].value.as_deref().unwrap()).unwrap();
            prop_assert_eq!(f.timestamp_micros(), from);
        }
    }
}

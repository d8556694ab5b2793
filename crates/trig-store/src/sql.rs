//! SQL both stores speak alike: one statement text, run on either backend.
//!
//! The service's own records (tenants, API tokens, and next the connections,
//! pipelines and their timeline) are plain rows; their queries are written
//! once, in [`crate::catalog`], over [`Db`], with `$1`-style placeholders and
//! only types both databases share (`BIGINT` integers, `TEXT`). The sync's hot
//! path stays on each backend's own `Tx` (binary `COPY`, prepared statements),
//! where the dialects differ on purpose.

use crate::Error;

/// A statement parameter: an integer or a text, either maybe `NULL`.
#[derive(Debug, Clone, Copy)]
pub enum Param<'a> {
    Int(Option<i64>),
    Text(Option<&'a str>),
}

impl From<i64> for Param<'_> {
    fn from(v: i64) -> Self {
        Param::Int(Some(v))
    }
}

impl From<Option<i64>> for Param<'_> {
    fn from(v: Option<i64>) -> Self {
        Param::Int(v)
    }
}

impl<'a> From<&'a str> for Param<'a> {
    fn from(v: &'a str) -> Self {
        Param::Text(Some(v))
    }
}

impl<'a> From<&'a String> for Param<'a> {
    fn from(v: &'a String) -> Self {
        Param::Text(Some(v.as_str()))
    }
}

impl<'a> From<Option<&'a str>> for Param<'a> {
    fn from(v: Option<&'a str>) -> Self {
        Param::Text(v)
    }
}

/// One value of a result row.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Int(i64),
    Text(String),
}

/// A result row, read by column position.
#[derive(Debug, Clone, PartialEq)]
pub struct Row(pub(crate) Vec<Cell>);

impl Row {
    fn cell(&self, i: usize) -> &Cell {
        self.0.get(i).unwrap_or(&Cell::Null)
    }

    pub fn int(&self, i: usize) -> i64 {
        self.opt_int(i).unwrap_or_default()
    }

    pub fn opt_int(&self, i: usize) -> Option<i64> {
        match self.cell(i) {
            Cell::Int(v) => Some(*v),
            Cell::Text(t) => t.parse().ok(),
            Cell::Null => None,
        }
    }

    pub fn text(&self, i: usize) -> String {
        self.opt_text(i).unwrap_or_default()
    }

    pub fn opt_text(&self, i: usize) -> Option<String> {
        match self.cell(i) {
            Cell::Text(t) => Some(t.clone()),
            Cell::Int(v) => Some(v.to_string()),
            Cell::Null => None,
        }
    }
}

/// A transaction on either store.
pub trait Db {
    /// Runs a statement; how many rows it changed.
    fn execute(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64, Error>;
    /// Runs a query; its rows.
    fn query(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, Error>;

    fn query_opt(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Option<Row>, Error> {
        Ok(self.query(sql, params)?.into_iter().next())
    }
}

/// `$1` → `?1`: SQLite numbers its parameters the same way with `?`.
/// (No statement of ours has a `$` inside a string literal.)
fn sqlite_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(|d| d.is_ascii_digit()) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

impl Db for rusqlite::Transaction<'_> {
    fn execute(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64, Error> {
        let mut s = self.prepare_cached(&sqlite_placeholders(sql))?;
        Ok(s.execute(rusqlite::params_from_iter(params.iter().map(sqlite_value)))? as u64)
    }

    fn query(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, Error> {
        let mut s = self.prepare_cached(&sqlite_placeholders(sql))?;
        let n = s.column_count();
        let rows = s.query_map(rusqlite::params_from_iter(params.iter().map(sqlite_value)), |r| {
            (0..n)
                .map(|i| {
                    Ok(match r.get_ref(i)? {
                        rusqlite::types::ValueRef::Null => Cell::Null,
                        rusqlite::types::ValueRef::Integer(v) => Cell::Int(v),
                        rusqlite::types::ValueRef::Real(v) => Cell::Text(v.to_string()),
                        rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => {
                            Cell::Text(String::from_utf8_lossy(t).into_owned())
                        }
                    })
                })
                .collect::<Result<Vec<Cell>, rusqlite::Error>>()
                .map(Row)
        })?;
        Ok(rows.collect::<Result<Vec<Row>, rusqlite::Error>>()?)
    }
}

fn sqlite_value(p: &Param<'_>) -> rusqlite::types::Value {
    use rusqlite::types::Value;
    match *p {
        Param::Int(Some(v)) => Value::Integer(v),
        Param::Text(Some(t)) => Value::Text(t.to_string()),
        Param::Int(None) | Param::Text(None) => Value::Null,
    }
}

impl Db for postgres::Transaction<'_> {
    fn execute(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64, Error> {
        let values = postgres_values(params);
        let refs: Vec<&(dyn postgres::types::ToSql + Sync)> = values.iter().map(|v| v.as_ref()).collect();
        Ok(postgres::Transaction::execute(self, sql, &refs)?)
    }

    fn query(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, Error> {
        use postgres::types::Type;
        let values = postgres_values(params);
        let refs: Vec<&(dyn postgres::types::ToSql + Sync)> = values.iter().map(|v| v.as_ref()).collect();
        let rows = postgres::Transaction::query(self, sql, &refs)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let mut cells = Vec::with_capacity(r.len());
            for (i, c) in r.columns().iter().enumerate() {
                let cell = match *c.type_() {
                    Type::INT8 => r.try_get::<_, Option<i64>>(i)?.map(Cell::Int),
                    Type::INT4 => r.try_get::<_, Option<i32>>(i)?.map(|v| Cell::Int(v.into())),
                    Type::INT2 => r.try_get::<_, Option<i16>>(i)?.map(|v| Cell::Int(v.into())),
                    Type::BOOL => r.try_get::<_, Option<bool>>(i)?.map(|v| Cell::Int(v.into())),
                    _ => r.try_get::<_, Option<String>>(i)?.map(Cell::Text),
                };
                cells.push(cell.unwrap_or(Cell::Null));
            }
            out.push(Row(cells));
        }
        Ok(out)
    }
}

fn postgres_values<'a>(params: &[Param<'a>]) -> Vec<Box<dyn postgres::types::ToSql + Sync + 'a>> {
    params
        .iter()
        .map(|p| -> Box<dyn postgres::types::ToSql + Sync + 'a> {
            match *p {
                Param::Int(v) => Box::new(v),
                Param::Text(v) => Box::new(v),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_renumbered_for_sqlite_only_where_they_are_placeholders() {
        assert_eq!(sqlite_placeholders("SELECT a FROM t WHERE b = $1 AND c = $12"), "SELECT a FROM t WHERE b = ?1 AND c = ?12");
        assert_eq!(sqlite_placeholders("SELECT '$' || x$y"), "SELECT '$' || x$y");
    }

    #[test]
    fn the_same_statement_reads_the_same_cells_from_sqlite() {
        let mut c = rusqlite::Connection::open_in_memory().unwrap();
        let mut tx = c.transaction().unwrap();
        Db::execute(&mut tx, "CREATE TABLE t (a BIGINT, b TEXT)", &[]).unwrap();
        assert_eq!(
            Db::execute(
                &mut tx,
                "INSERT INTO t VALUES ($1, $2), ($3, $4)",
                &[7.into(), "x".into(), None::<i64>.into(), None::<&str>.into()]
            )
            .unwrap(),
            2
        );
        let rows = Db::query(&mut tx, "SELECT a, b FROM t WHERE a = $1 OR a IS NULL ORDER BY a", &[7.into()]).unwrap();
        assert_eq!(rows, vec![Row(vec![Cell::Null, Cell::Null]), Row(vec![Cell::Int(7), Cell::Text("x".into())])]);
        assert_eq!(rows[1].int(0), 7);
        assert_eq!(rows[1].text(1), "x");
        assert_eq!(rows[0].opt_text(1), None);
    }
}

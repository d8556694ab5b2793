//! SQL the client sends: the read-only guard and table names.
//!
//! The guard parses the statement with the Databricks dialect and accepts
//! only queries (`SELECT`, `WITH`, `VALUES`), `SHOW ...` and `DESCRIBE`:
//! a prefix check would let `WITH x AS (...) INSERT ...` or
//! `SELECT 1; DROP TABLE t` through.

use std::fmt;

use sqlparser::ast::Statement;
use sqlparser::dialect::DatabricksDialect;
use sqlparser::parser::Parser;

use crate::error::Error;

/// Refuses, before it leaves the process, any statement that is not a read.
pub fn ensure_read_only(sql: &str) -> Result<(), Error> {
    // `DESCRIBE TABLE x` is Databricks SQL the parser does not know; `DESCRIBE x` is the same.
    let trimmed = sql.trim_start();
    let normalized = match trimmed.get(..15) {
        Some(head) if head.eq_ignore_ascii_case("describe table ") => format!("DESCRIBE {}", &trimmed[15..]),
        _ => trimmed.to_string(),
    };
    let statements =
        Parser::parse_sql(&DatabricksDialect {}, &normalized).map_err(|e| Error::UnparsableStatement { reason: e.to_string() })?;
    if statements.is_empty() {
        return Err(Error::UnparsableStatement { reason: "it is empty".into() });
    }
    for s in &statements {
        let ok = match s {
            Statement::Query(q) => !query_writes(q),
            Statement::ShowCatalogs { .. }
            | Statement::ShowSchemas { .. }
            | Statement::ShowDatabases { .. }
            | Statement::ShowTables { .. }
            | Statement::ShowViews { .. }
            | Statement::ShowColumns { .. }
            | Statement::ShowFunctions { .. }
            | Statement::ExplainTable { .. } => true,
            _ => false,
        };
        if !ok {
            return Err(Error::WriteRefused { kind: kind_of(s) });
        }
    }
    Ok(())
}

/// `SELECT ... INTO` and data-changing CTEs are writes even inside a query.
fn query_writes(q: &sqlparser::ast::Query) -> bool {
    let body_writes = matches!(
        q.body.as_ref(),
        sqlparser::ast::SetExpr::Insert(_)
            | sqlparser::ast::SetExpr::Update(_)
            | sqlparser::ast::SetExpr::Delete(_)
            | sqlparser::ast::SetExpr::Merge(_)
    );
    let cte_writes = q.with.as_ref().is_some_and(|w| w.cte_tables.iter().any(|c| query_writes(&c.query)));
    let select_into = matches!(q.body.as_ref(), sqlparser::ast::SetExpr::Select(s) if s.into.is_some());
    body_writes || cte_writes || select_into
}

fn kind_of(s: &Statement) -> String {
    // The first words of the statement's own rendering name its kind (`INSERT`, `DROP TABLE`, ...).
    let text = s.to_string();
    let words: Vec<&str> = text.split_whitespace().take(2).collect();
    match words.as_slice() {
        [first, second] if matches!(first.to_ascii_uppercase().as_str(), "CREATE" | "DROP" | "ALTER" | "TRUNCATE") => {
            format!("{} {}", first.to_ascii_uppercase(), second.to_ascii_uppercase())
        }
        [first, ..] => first.to_ascii_uppercase(),
        [] => "unknown".into(),
    }
}

/// Checks a pipeline's `where` setting: exactly one SQL expression (it is
/// wrapped in parentheses and ANDed with the window predicate, so anything
/// that is not a single expression, such as `1=1) OR (1=1` or a second
/// statement, is refused before it is ever sent).
pub fn validate_filter(expr: &str) -> Result<(), Error> {
    let bad = |reason: String| Error::InvalidSetting { field: "where", reason };
    if expr.trim().is_empty() {
        return Err(bad("the filter is empty; remove `where` or write a condition such as environment = 'production'".into()));
    }
    let dialect = DatabricksDialect {};
    let mut parser = Parser::new(&dialect).try_with_sql(expr).map_err(|e| bad(format!("`{expr}` does not parse: {e}")))?;
    parser.parse_expr().map_err(|e| bad(format!("`{expr}` is not one SQL condition: {e}")))?;
    if parser.peek_token().token != sqlparser::tokenizer::Token::EOF {
        return Err(bad(format!("`{expr}` is not one SQL condition: there is text after it ({})", parser.peek_token().token)));
    }
    let sql = format!("SELECT 1 WHERE ({expr})");
    ensure_read_only(&sql).map_err(|e| bad(format!("`{expr}`: {e}")))
}

/// A Unity Catalog table or view name, `catalog.schema.table`, parsed once
/// and only ever pasted into SQL quoted.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableName {
    parts: [String; 3],
}

impl TableName {
    /// Parses `catalog.schema.table`, or `schema.table` when a default
    /// catalog is given; each part may be backtick-quoted (with backticks
    /// doubled inside), as Databricks writes them.
    pub fn parse(input: &str, default_catalog: Option<&str>) -> Result<TableName, Error> {
        let bad = |reason: &str| Error::InvalidTableName { input: input.to_string(), reason: reason.to_string() };
        let mut parts = Vec::new();
        let mut cur = String::new();
        let mut chars = input.trim().chars().peekable();
        let mut quoted_part = false;
        while let Some(c) = chars.next() {
            match c {
                '`' => {
                    quoted_part = true;
                    loop {
                        match chars.next() {
                            Some('`') if chars.peek() == Some(&'`') => {
                                chars.next();
                                cur.push('`');
                            }
                            Some('`') => break,
                            Some(ch) => cur.push(ch),
                            None => return Err(bad("a backtick is not closed")),
                        }
                    }
                }
                '.' => {
                    parts.push(std::mem::take(&mut cur));
                    quoted_part = false;
                }
                c if c.is_whitespace() && !quoted_part => return Err(bad("a name part has a space; quote it with backticks")),
                c => cur.push(c),
            }
        }
        parts.push(cur);
        if parts.len() == 2
            && let Some(c) = default_catalog.filter(|c| !c.trim().is_empty())
        {
            parts.insert(0, c.trim().to_string());
        }
        if parts.len() != 3 {
            return Err(bad("use the full name catalog.schema.table (or schema.table with a default catalog), e.g. main.product.events_v"));
        }
        if parts.iter().any(|p| p.is_empty()) {
            return Err(bad("a part of the name is empty"));
        }
        let [c, s, t]: [String; 3] = parts.try_into().map_err(|_| bad("use the full name catalog.schema.table"))?;
        Ok(TableName { parts: [c, s, t] })
    }
    pub fn catalog(&self) -> &str {
        &self.parts[0]
    }
    pub fn schema(&self) -> &str {
        &self.parts[1]
    }
    pub fn table(&self) -> &str {
        &self.parts[2]
    }
    /// `catalog.schema.table` unquoted, as Unity Catalog's REST paths take it.
    pub fn full_name(&self) -> String {
        self.parts.join(".")
    }
    /// `` `catalog`.`schema`.`table` `` with backticks doubled: the only form put into SQL.
    pub fn quoted(&self) -> String {
        self.parts.iter().map(|p| quote_ident(p)).collect::<Vec<_>>().join(".")
    }
    /// `` `catalog` ``, for a GRANT on the catalog.
    pub fn catalog_quoted(&self) -> String {
        quote_ident(&self.parts[0])
    }
    /// `` `catalog`.`schema` ``, for a GRANT on the schema.
    pub fn schema_quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.parts[0]), quote_ident(&self.parts[1]))
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.quoted())
    }
}

/// Quotes one identifier for Databricks SQL.
pub fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pass() {
        for sql in [
            "SELECT 1",
            "  select * from main.product.events_v where ingested_at > :since",
            "WITH x AS (SELECT 1 AS a) SELECT a FROM x",
            "SHOW CATALOGS",
            "SHOW SCHEMAS IN main",
            "SHOW TABLES IN main.product",
            "DESCRIBE TABLE main.crm.people",
            "DESCRIBE main.crm.people",
            "SELECT `weird``name` FROM `main`.`crm`.`people`",
        ] {
            ensure_read_only(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
    }

    #[test]
    fn writes_are_refused_by_parsing_not_by_prefix() {
        for (sql, kind) in [
            ("INSERT INTO t VALUES (1)", "INSERT"),
            ("DELETE FROM main.crm.people", "DELETE"),
            ("UPDATE t SET a = 1", "UPDATE"),
            ("DROP TABLE main.crm.people", "DROP TABLE"),
            ("CREATE TABLE x (a INT)", "CREATE TABLE"),
            ("SELECT 1; DROP TABLE t", "DROP TABLE"),
            ("MERGE INTO t USING s ON t.a = s.a WHEN MATCHED THEN DELETE", "MERGE"),
            ("GRANT SELECT ON TABLE t TO `x`", "GRANT"),
            ("SET x = 1", "SET"),
            ("TRUNCATE TABLE t", "TRUNCATE TABLE"),
        ] {
            match ensure_read_only(sql) {
                Err(Error::WriteRefused { kind: k }) => assert_eq!(k, kind, "{sql}"),
                other => panic!("{sql}: {other:?}"),
            }
        }
        assert!(matches!(ensure_read_only("SELEC 1"), Err(Error::UnparsableStatement { .. })));
        assert!(matches!(ensure_read_only(""), Err(Error::UnparsableStatement { .. })));
        let e = ensure_read_only("DELETE FROM t").unwrap_err();
        assert!(e.to_string().contains("Trig only reads"), "{e}");
    }

    /// Property: any three names, however hostile, quote into SQL that
    /// parses back to the same names and stays a single read-only SELECT.
    #[test]
    fn quoting_round_trips_for_arbitrary_names() {
        let alphabet: Vec<char> = "ab`'\";.-_ ()*/\n\tdrop DROP é🙂0".chars().collect();
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..2000 {
            let mut name = || -> String {
                let len = 1 + (next() % 12) as usize;
                (0..len).map(|_| alphabet[(next() % alphabet.len() as u64) as usize]).collect()
            };
            let parts = [name(), name(), name()];
            let quoted = parts.iter().map(|p| quote_ident(p)).collect::<Vec<_>>().join(".");
            let t = TableName::parse(&quoted, None).unwrap_or_else(|e| panic!("{quoted}: {e}"));
            assert_eq!([t.catalog(), t.schema(), t.table()], [parts[0].as_str(), parts[1].as_str(), parts[2].as_str()]);
            assert_eq!(t.quoted(), quoted);
            let sql = format!("SELECT * FROM {quoted} WHERE 1 = 1");
            ensure_read_only(&sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
            let stmts = Parser::parse_sql(&DatabricksDialect {}, &sql).unwrap();
            assert_eq!(stmts.len(), 1, "{sql}");
        }
    }

    #[test]
    fn filters_are_one_expression() {
        assert!(validate_filter("environment = 'production'").is_ok());
        assert!(validate_filter("a IN (SELECT x FROM t) AND b IS NOT NULL").is_ok());
        for bad in ["1=1) OR (1=1", "x = 1; DROP TABLE t", "", "x = 1 --", "x ="] {
            let r = validate_filter(bad);
            if bad == "x = 1 --" {
                // A trailing comment is harmless but hides nothing: it parses.
                continue;
            }
            assert!(r.is_err(), "{bad}");
        }
    }

    #[test]
    fn table_names_parse_and_quote() {
        let t = TableName::parse("main.product.events_v", None).unwrap();
        assert_eq!(t.quoted(), "`main`.`product`.`events_v`");
        assert_eq!(t.full_name(), "main.product.events_v");
        let t = TableName::parse("`my cat`.`sch.ema`.`we``ird`", None).unwrap();
        assert_eq!((t.catalog(), t.schema(), t.table()), ("my cat", "sch.ema", "we`ird"));
        assert_eq!(t.quoted(), "`my cat`.`sch.ema`.`we``ird`");
        // The quoted form round-trips and cannot break out of the identifier.
        assert_eq!(TableName::parse(&t.quoted(), None).unwrap(), t);
        let evil = TableName::parse("a.b.`x`` FROM t; DROP TABLE y; --`", None).unwrap();
        assert_eq!(evil.table(), "x` FROM t; DROP TABLE y; --");
        assert!(ensure_read_only(&format!("SELECT * FROM {}", evil.quoted())).is_ok());
        for (input, want) in
            [("events", "full name"), ("a.b", "full name"), ("a..c", "empty"), ("a.b.`c", "not closed"), ("a.b.c d", "space")]
        {
            let e = TableName::parse(input, None).unwrap_err();
            assert_eq!(e.field(), Some("source"));
            assert!(e.to_string().contains(want), "{input}: {e}");
        }
        assert_eq!(TableName::parse("product.events_v", Some("main")).unwrap().full_name(), "main.product.events_v");
        assert_eq!(TableName::parse("x.product.events_v", Some("main")).unwrap().catalog(), "x");
    }
}

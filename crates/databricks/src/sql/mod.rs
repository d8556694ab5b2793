//! SQL the client sends: the read-only guard, a pipeline's `where`, and
//! table names.
//!
//! Both checks read the text by Databricks' own lexical rules first
//! ([`lex`]): a backslash escapes inside strings, `"…"` is a string, `r'…'`
//! is raw, comments nest. sqlparser then parses the *twin* of the text, in
//! which every literal is re-quoted so that any dialect reads the same
//! boundaries; what is decided about the twin holds for what Databricks runs.
//!
//! The guard accepts only queries (`SELECT`, `WITH`, `VALUES`), `SHOW ...`
//! and `DESCRIBE`, and no write at any depth: a prefix check would let
//! `WITH x AS (...) INSERT ...` or `SELECT 1; DROP TABLE t` through.

pub mod functions;
pub mod lex;

use std::fmt;
use std::ops::ControlFlow;

use sqlparser::ast::{Expr, ObjectName, Query, SetExpr, Statement, TableFactor, Visit, Visitor};
use sqlparser::dialect::DatabricksDialect;
use sqlparser::parser::Parser;

use crate::error::Error;

/// Refuses, before it leaves the process, any statement that is not a read.
pub fn ensure_read_only(sql: &str) -> Result<(), Error> {
    let lexed = lex::lex(sql).map_err(|e| Error::UnparsableStatement { reason: e.to_string() })?;
    let twin = lexed.twin();
    // `DESCRIBE TABLE x` is Databricks SQL the parser does not know; `DESCRIBE x` is the same.
    let trimmed = twin.trim_start();
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
            Statement::Query(q) => !query_writes_anywhere(q),
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

/// `SELECT ... INTO` and data-changing bodies are writes even inside a query.
fn query_writes(q: &Query) -> bool {
    let body_writes = matches!(q.body.as_ref(), SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_));
    let select_into = matches!(q.body.as_ref(), SetExpr::Select(s) if s.into.is_some());
    body_writes || select_into
}

/// [`query_writes`] for the query and every query nested in it (CTEs,
/// subqueries in expressions and in FROM, set operations).
fn query_writes_anywhere(q: &Query) -> bool {
    struct Writes;
    impl Visitor for Writes {
        type Break = ();
        fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
            if query_writes(q) { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
        }
    }
    query_writes(q) || q.visit(&mut Writes).is_break()
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

/// Checks a pipeline's `where` setting: exactly one SQL condition that only
/// filters. It is wrapped in parentheses and ANDed with the window
/// predicate, so anything that is not a single expression (`1=1) OR (1=1`,
/// a second statement, a string that Databricks closes elsewhere than it
/// seems) is refused before it is ever sent; so are comments, parameters,
/// writes at any depth, table-valued functions, and any function that is
/// not one of Spark's built-in deterministic ones ([`functions`]).
pub fn validate_filter(expr: &str) -> Result<(), Error> {
    let bad = |reason: String| Error::InvalidSetting { field: "where", reason };
    if expr.trim().is_empty() {
        return Err(bad("the filter is empty; remove `where` or write a condition such as environment = 'production'".into()));
    }
    let lexed = lex::lex(expr).map_err(|e| bad(format!("`{expr}` does not parse as Databricks reads it: {e}")))?;
    if let Some(c) = lexed.comments().next() {
        return Err(bad(format!("comments are not allowed in a filter (found `{c}`); remove it")));
    }
    if lexed.has_separator() {
        return Err(bad(format!("`{expr}` has a `;` outside a string: a filter is one condition, never a second statement")));
    }
    let twin = lexed.twin();
    let dialect = DatabricksDialect {};
    let mut parser = Parser::new(&dialect).try_with_sql(&twin).map_err(|e| bad(format!("`{expr}` does not parse: {e}")))?;
    let parsed = parser.parse_expr().map_err(|e| bad(format!("`{expr}` is not one SQL condition: {e}")))?;
    if parser.peek_token().token != sqlparser::tokenizer::Token::EOF {
        return Err(bad(format!(
            "`{expr}` is not one SQL condition: there is text after it ({}), as Databricks reads the quotes",
            parser.peek_token().token
        )));
    }
    if let ControlFlow::Break(reason) = parsed.visit(&mut OnlyFilters) {
        return Err(bad(format!("`{expr}`: {reason}")));
    }
    let sql = format!("SELECT 1 WHERE ({expr})");
    ensure_read_only(&sql).map_err(|e| bad(format!("`{expr}`: {e}")))
}

/// Walks a filter and stops at the first thing a filter may not do.
struct OnlyFilters;

fn function_name(n: &ObjectName) -> String {
    n.0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(".")
}

impl Visitor for OnlyFilters {
    type Break = String;
    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<String> {
        match e {
            Expr::Function(f) => {
                let name = function_name(&f.name);
                if f.name.0.len() > 1 {
                    return ControlFlow::Break(format!(
                        "`{name}` is a catalog function, which may run any code; a filter may call only Spark's built-in functions"
                    ));
                }
                match functions::refusal(&name) {
                    Some(why) => ControlFlow::Break(format!("the function `{name}` is not allowed in a filter: {why}")),
                    None => ControlFlow::Continue(()),
                }
            }
            Expr::Value(v) if matches!(v.value, sqlparser::ast::Value::Placeholder(_)) => {
                ControlFlow::Break(format!("`{v}` is a parameter; a filter holds its values as literals"))
            }
            _ => ControlFlow::Continue(()),
        }
    }
    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<String> {
        if query_writes(q) {
            return ControlFlow::Break("a subquery writes (INSERT, UPDATE, DELETE, MERGE or SELECT … INTO); a filter only reads".into());
        }
        ControlFlow::Continue(())
    }
    fn pre_visit_table_factor(&mut self, t: &TableFactor) -> ControlFlow<String> {
        match t {
            TableFactor::Table { args: None, .. } | TableFactor::Derived { .. } | TableFactor::NestedJoin { .. } => {
                ControlFlow::Continue(())
            }
            TableFactor::Table { name, .. } => ControlFlow::Break(format!(
                "`{}` is a table-valued function; a subquery in a filter may read only tables and views",
                function_name(name)
            )),
            other => ControlFlow::Break(format!("`{other}` is not a table or view; a subquery in a filter may read only tables and views")),
        }
    }
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
    /// `catalog.schema.table` unquoted, for people.
    pub fn full_name(&self) -> String {
        self.parts.join(".")
    }
    /// `catalog.schema.table` with each part percent-encoded, as one path
    /// segment of Unity Catalog's REST API (`#`, `?`, `%`, `/` and spaces in a
    /// name reach Databricks whole).
    pub fn path_segment(&self) -> String {
        self.parts.iter().map(|p| percent_encode(p)).collect::<Vec<_>>().join(".")
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

/// Percent-encodes everything but RFC 3986's unreserved characters
/// (letters, digits, `-`, `.`, `_`, `~`), for one URL path segment.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
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
        for good in [
            "environment = 'production'",
            "a IN (SELECT x FROM t) AND b IS NOT NULL",
            r#"name = 'O\'Connell' OR name = "D'Arcy""#,
            "lower(trim(plan)) IN ('pro', 'team') AND event_ts >= TIMESTAMP '2025-01-01'",
            "coalesce(get_json_object(props, '$.env'), 'prod') <> 'test'",
            r"path LIKE 'a\_%' AND r'C:\x' <> ''",
        ] {
            validate_filter(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for bad in ["1=1) OR (1=1", "x = 1; DROP TABLE t", "", "x = 1 --", "x = 1 /* hidden */", "x =", r"x = 'open\'"] {
            assert!(validate_filter(bad).is_err(), "{bad}");
        }
    }

    /// The attacks from issue #10: strings that sqlparser's dialect closes
    /// in one place and Databricks in another.
    #[test]
    fn backslash_escapes_cannot_smuggle_a_union_or_a_second_statement() {
        for attack in [
            r"event_name = 'x\' AND user_id = ') UNION ALL SELECT user_id, name, email FROM main.crm.people --'",
            r"event_name = 'x\' AND y = '); DROP TABLE main.product.events; SELECT 1 --'",
        ] {
            // sqlparser alone reads one harmless condition (this is what let them through) ...
            let dialect = DatabricksDialect {};
            let mut naive = Parser::new(&dialect).try_with_sql(attack).unwrap();
            assert!(naive.parse_expr().is_ok() && naive.peek_token().token == sqlparser::tokenizer::Token::EOF, "{attack}");
            // ... while Databricks closes the string at the second quote: the rest is code, and a comment hides the tail.
            let e = validate_filter(attack).unwrap_err().to_string();
            assert!(e.contains("comments are not allowed"), "{attack}: {e}");
            let without_comment = attack.trim_end_matches("--'").to_string() + "'";
            assert!(validate_filter(&without_comment).is_err(), "{without_comment}");
        }
        let guarded = r"SELECT * FROM t WHERE (event_name = 'x\' AND y = '); DROP TABLE t; SELECT 1 --')";
        assert!(ensure_read_only(guarded).is_err(), "the guard reads the same boundaries");
    }

    #[test]
    fn a_filter_can_only_filter() {
        for (bad, want) in [
            ("x IN (SELECT a INTO b FROM t)", "writes"),
            ("x IN (WITH w AS (SELECT 1 AS a) SELECT a INTO z FROM w)", "writes"),
            ("http_request('https://evil.example', 'GET') IS NOT NULL", "`http_request`"),
            ("ai_query('m', name) = 'yes'", "`ai_query`"),
            ("reflect('java.lang.Runtime', 'getRuntime') IS NULL", "`reflect`"),
            ("java_method('java.lang.System', 'exit', 0) = 1", "`java_method`"),
            ("secret('scope', 'key') = 'x'", "`secret`"),
            ("try_secret('scope', 'key') IS NULL", "`try_secret`"),
            ("x IN (SELECT value FROM read_files('s3://bucket/x'))", "read_files"),
            ("main.default.my_udf(x) = 1", "catalog function"),
            ("my_udf(x) = 1", "`my_udf`"),
            ("rand() < 0.5", "`rand`"),
            ("ts > current_timestamp()", "`current_timestamp`"),
            ("ts > :window_from", "parameter"),
        ] {
            let e = validate_filter(bad).map(|_| ()).unwrap_err().to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// Strings, raw strings, double-quoted strings and quoted
        /// identifiers written by Databricks' rules, with hostile content:
        /// the guard sees one statement with the generated literals exactly,
        /// a `;` outside them is a second statement, and a filter made of
        /// them is one condition.
        #[test]
        fn the_guards_boundaries_are_databricks(parts in proptest::collection::vec((0u8..5, "[a-z'\"`\\\\;() -]{0,12}"), 1..5)) {
            let (sql_parts, values): (Vec<String>, Vec<Option<String>>) = parts.iter().map(|(form, v)| databricks_form(*form, v)).unzip();
            let select = format!("SELECT {} FROM t WHERE 1 = 1", sql_parts.iter().enumerate().map(|(i, p)| format!("{p} AS c{i}")).collect::<Vec<_>>().join(", "));
            let lexed = lex::lex(&select).unwrap();
            let strings: Vec<String> = lexed.0.iter().filter_map(|p| match p { lex::Piece::Str { value, .. } => Some(value.clone()), _ => None }).collect();
            let want: Vec<String> = values.iter().flatten().cloned().collect();
            proptest::prop_assert_eq!(&strings, &want);
            proptest::prop_assert!(ensure_read_only(&select).is_ok(), "{}", select);
            let stacked = format!("{select}; DROP TABLE t");
            proptest::prop_assert!(matches!(ensure_read_only(&stacked), Err(Error::WriteRefused { .. })), "{}", stacked);
            let filter = sql_parts.iter().enumerate().map(|(i, p)| format!("c{i} = {p}")).collect::<Vec<_>>().join(" OR ");
            proptest::prop_assert!(validate_filter(&filter).is_ok(), "{}: {:?}", filter, validate_filter(&filter));
            let escaped = format!("{filter}) OR (1 = 1");
            proptest::prop_assert!(validate_filter(&escaped).is_err(), "{}", escaped);
        }
    }

    /// One literal in Databricks' syntax and the string value it holds (`None` for an identifier).
    fn databricks_form(form: u8, v: &str) -> (String, Option<String>) {
        match form {
            0 => (lex::quote_string(v), Some(v.to_string())),
            1 => (format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")), Some(v.to_string())),
            2 if !v.contains('\'') => (format!("r'{v}'"), Some(v.to_string())),
            3 if !v.contains('"') => (format!("R\"{v}\""), Some(v.to_string())),
            4 if !v.is_empty() => (quote_ident(v), None),
            _ => (lex::quote_string(v), Some(v.to_string())),
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
        // Each part reaches the REST API whole.
        let t = TableName::parse("main.product.`events_v#x`", None).unwrap();
        assert_eq!((t.table(), t.path_segment().as_str()), ("events_v#x", "main.product.events_v%23x"));
        let t = TableName::parse("`my cat`.`a?b`.`50%/é`", None).unwrap();
        assert_eq!(t.path_segment(), "my%20cat.a%3Fb.50%25%2F%C3%A9");
        assert_eq!(TableName::parse("x.product.events_v", Some("main")).unwrap().catalog(), "x");
    }
}

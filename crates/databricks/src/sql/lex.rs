//! Databricks' lexical rules for the parts of SQL where dialects disagree:
//! string literals, raw strings, quoted identifiers and comments.
//!
//! Databricks (Spark SQL) reads a backslash inside `'…'` and `"…"` as an
//! escape (`'O\'Connell'` is one string), takes `"…"` as a string, not an
//! identifier, reads `r'…'` / `R"…"` as raw strings (no escapes), doubles a
//! backtick inside a `` `quoted` `` identifier, and nests `/* … */` comments.
//! sqlparser's Databricks dialect differs on the first three, so the guard
//! never lets it read those parts: [`lex`] cuts the text by Databricks'
//! rules and [`Lexed::twin`] writes the same statement with every literal
//! re-quoted in the one form every dialect reads alike. What sqlparser then
//! parses has exactly Databricks' statement and expression boundaries.

use std::fmt;

/// A piece of SQL text, as Databricks cuts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Anything outside literals, identifiers and comments, as written.
    Code(String),
    /// A string literal's value, escapes resolved (`raw`: written `r'…'`).
    Str { value: String, raw: bool },
    /// A backtick-quoted identifier's name.
    Ident(String),
    /// A `--` or `/* */` comment, as written.
    Comment(String),
}

/// Text that Databricks' lexer would refuse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LexError {
    pub reason: &'static str,
    /// Character offset of the construct that is not closed.
    pub at: usize,
}

impl fmt::Display for LexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (at character {})", self.reason, self.at + 1)
    }
}

/// SQL cut into pieces by Databricks' rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lexed(pub Vec<Piece>);

impl Lexed {
    /// The same SQL with every string as a plain `'…'` literal (quotes
    /// doubled, no backslash escapes), identifiers re-quoted, comments as a
    /// space: what any SQL parser reads with Databricks' boundaries.
    pub fn twin(&self) -> String {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Piece::Code(c) => out.push_str(c),
                Piece::Str { value, .. } => {
                    out.push('\'');
                    out.push_str(&value.replace('\'', "''"));
                    out.push('\'');
                }
                Piece::Ident(name) => {
                    out.push('`');
                    out.push_str(&name.replace('`', "``"));
                    out.push('`');
                }
                Piece::Comment(_) => out.push(' '),
            }
        }
        out
    }

    /// The comments, as written.
    pub fn comments(&self) -> impl Iterator<Item = &str> {
        self.0.iter().filter_map(|p| match p {
            Piece::Comment(c) => Some(c.as_str()),
            _ => None,
        })
    }

    /// Whether a `;` stands outside every literal, identifier and comment.
    pub fn has_separator(&self) -> bool {
        self.0.iter().any(|p| matches!(p, Piece::Code(c) if c.contains(';')))
    }
}

fn word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Cuts `sql` by Databricks' rules.
pub fn lex(sql: &str) -> Result<Lexed, LexError> {
    let chars: Vec<char> = sql.chars().collect();
    let mut pieces = Vec::new();
    let mut code = String::new();
    let mut i = 0;
    let flush = |code: &mut String, pieces: &mut Vec<Piece>| {
        if !code.is_empty() {
            pieces.push(Piece::Code(std::mem::take(code)));
        }
    };
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        // A raw string: `r` or `R` starting a word, right before a quote.
        if matches!(c, 'r' | 'R') && matches!(next, Some('\'' | '"')) && !(i > 0 && word_char(chars[i - 1])) {
            let quote = next.expect("matched");
            let start = i;
            let mut j = i + 2;
            while j < chars.len() && chars[j] != quote {
                j += 1;
            }
            if j >= chars.len() {
                return Err(LexError { reason: "a raw string is not closed", at: start });
            }
            flush(&mut code, &mut pieces);
            pieces.push(Piece::Str { value: chars[i + 2..j].iter().collect(), raw: true });
            i = j + 1;
            continue;
        }
        match c {
            '\'' | '"' => {
                let start = i;
                let mut value = String::new();
                let mut j = i + 1;
                loop {
                    let Some(&ch) = chars.get(j) else { return Err(LexError { reason: "a string is not closed", at: start }) };
                    if ch == c {
                        break;
                    }
                    if ch == '\\' {
                        let Some(&e) = chars.get(j + 1) else { return Err(LexError { reason: "a string is not closed", at: start }) };
                        let (resolved, used) = unescape(e, &chars[j + 1..]);
                        value.push_str(&resolved);
                        j += 1 + used;
                        continue;
                    }
                    value.push(ch);
                    j += 1;
                }
                flush(&mut code, &mut pieces);
                pieces.push(Piece::Str { value, raw: false });
                i = j + 1;
            }
            '`' => {
                let start = i;
                let mut name = String::new();
                let mut j = i + 1;
                loop {
                    match chars.get(j) {
                        None => return Err(LexError { reason: "a quoted identifier is not closed", at: start }),
                        Some('`') if chars.get(j + 1) == Some(&'`') => {
                            name.push('`');
                            j += 2;
                        }
                        Some('`') => break,
                        Some(&ch) => {
                            name.push(ch);
                            j += 1;
                        }
                    }
                }
                flush(&mut code, &mut pieces);
                pieces.push(Piece::Ident(name));
                i = j + 1;
            }
            '-' if next == Some('-') => {
                let mut j = i;
                while j < chars.len() && chars[j] != '\n' {
                    j += 1;
                }
                flush(&mut code, &mut pieces);
                pieces.push(Piece::Comment(chars[i..j].iter().collect()));
                i = j;
            }
            '/' if next == Some('*') => {
                let start = i;
                let mut depth = 0usize;
                let mut j = i;
                loop {
                    match (chars.get(j), chars.get(j + 1)) {
                        (None, _) => return Err(LexError { reason: "a /* comment is not closed", at: start }),
                        (Some('/'), Some('*')) => {
                            depth += 1;
                            j += 2;
                        }
                        (Some('*'), Some('/')) => {
                            depth -= 1;
                            j += 2;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => j += 1,
                    }
                }
                flush(&mut code, &mut pieces);
                pieces.push(Piece::Comment(chars[i..j].iter().collect()));
                i = j;
            }
            _ => {
                code.push(c);
                i += 1;
            }
        }
    }
    flush(&mut code, &mut pieces);
    Ok(Lexed(pieces))
}

/// One escape after a backslash (`rest` starts at the escaped character):
/// its value and how many characters it used. Spark's rules: the C escapes,
/// `\Z`, octal `\NNN`, `\uXXXX`, `\UXXXXXXXX`; `\%` and `\_` keep their
/// backslash (LIKE patterns); any other character stands for itself.
fn unescape(e: char, rest: &[char]) -> (String, usize) {
    let hex = |n: usize| -> Option<char> {
        let digits: String = rest.get(1..=n)?.iter().collect();
        if digits.len() == n && digits.chars().all(|d| d.is_ascii_hexdigit()) {
            char::from_u32(u32::from_str_radix(&digits, 16).ok()?)
        } else {
            None
        }
    };
    let octal = || -> Option<char> {
        let d: String = rest.get(..3)?.iter().collect();
        let ok = d.len() == 3 && d.chars().all(|x| ('0'..='7').contains(&x)) && d.as_bytes()[0] <= b'3';
        if ok { char::from_u32(u32::from_str_radix(&d, 8).ok()?) } else { None }
    };
    match e {
        'u' if hex(4).is_some() => (hex(4).expect("checked").to_string(), 5),
        'U' if hex(8).is_some() => (hex(8).expect("checked").to_string(), 9),
        '0'..='3' if octal().is_some() => (octal().expect("checked").to_string(), 3),
        '0' => ("\0".into(), 1),
        'b' => ("\u{8}".into(), 1),
        'n' => ("\n".into(), 1),
        'r' => ("\r".into(), 1),
        't' => ("\t".into(), 1),
        'Z' => ("\u{1a}".into(), 1),
        '%' => ("\\%".into(), 1),
        '_' => ("\\_".into(), 1),
        other => (other.to_string(), 1),
    }
}

/// Writes `value` as a Databricks string literal that [`lex`] reads back as
/// `value` (backslash and quote escaped).
pub fn quote_string(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strs(sql: &str) -> Vec<String> {
        lex(sql)
            .unwrap()
            .0
            .into_iter()
            .filter_map(|p| match p {
                Piece::Str { value, .. } => Some(value),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn strings_follow_databricks_escapes() {
        assert_eq!(strs(r"SELECT 'O\'Connell'"), ["O'Connell"]);
        assert_eq!(strs(r#"SELECT "say \"hi\"", 'a\\'"#), ["say \"hi\"", "a\\"]);
        assert_eq!(strs(r"SELECT 'tab\there\nnew', '\u00e9\101'"), ["tab\there\nnew", "éA"]);
        assert_eq!(strs(r"SELECT 'like\%this\_'"), [r"like\%this\_"]);
        // Raw strings take backslashes as they are and end at the first quote.
        assert_eq!(strs(r"SELECT r'C:\new\', R'x'"), [r"C:\new\", "x"]);
        // `r` inside a word is not a raw prefix.
        assert_eq!(strs(r"SELECT bar'x\'y'"), ["x'y"]);
        // Quoted identifiers double their backticks; comments nest.
        let l = lex("SELECT `a``b` /* x /* y */ 'z */ -- c'\n, 1").unwrap();
        assert!(l.0.contains(&Piece::Ident("a`b".into())));
        assert_eq!(l.comments().collect::<Vec<_>>(), ["/* x /* y */ 'z */", "-- c'"]);
        assert!(!l.has_separator());
    }

    #[test]
    fn the_twin_keeps_databricks_boundaries() {
        let l = lex(r"x = 'a\' ; DROP TABLE t; --'").unwrap();
        assert!(!l.has_separator(), "the semicolons are inside the string");
        assert_eq!(l.twin(), "x = 'a'' ; DROP TABLE t; --'");
        let l = lex(r"x = 'a\\' ; DROP TABLE t").unwrap();
        assert!(l.has_separator(), "an escaped backslash closes the string");
    }

    #[test]
    fn what_is_not_closed_is_refused() {
        for (sql, want) in [(r"'abc\'", "string"), ("`abc", "identifier"), ("/* /* */", "comment"), ("r'abc", "raw string")] {
            let e = lex(sql).unwrap_err();
            assert!(e.reason.contains(want), "{sql}: {e}");
        }
    }

    #[test]
    fn quote_string_round_trips() {
        for v in ["", "O'Connell", r"C:\x\", "\\'", "a\nb", "'; DROP TABLE t; --"] {
            assert_eq!(strs(&format!("SELECT {}", quote_string(v))), [v]);
        }
    }
}

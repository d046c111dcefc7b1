//! SQL embedded in Rust: the string literals passed to sqlx's `query!`, `query_as!`,
//! `query_scalar!` (and their `_unchecked` forms), to the functions `query`, `query_as`,
//! `query_scalar`, and to the methods `query`, `execute`, `query_one`, `query_opt`, `prepare` (and
//! friends) of tokio-postgres and sqlx executors. Each literal keeps its own position in the file;
//! escapes are followed so that a position inside the SQL maps to the right byte of the literal.
//!
//! ```
//! let source = r##"
//! async fn load(pool: &sqlx::PgPool) {
//!     let rows = sqlx::query!(r#"SELECT * FROM patients.patients"#).fetch_all(pool).await;
//! }
//! "##;
//! let queries = moat_analysis::embedded::extract(source).unwrap();
//! assert_eq!(queries.len(), 1);
//! assert_eq!(queries[0].sql, "SELECT * FROM patients.patients");
//! assert_eq!(&source[queries[0].literal.clone()], "r#\"SELECT * FROM patients.patients\"#");
//! ```

use std::ops::Range;

use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::visit::Visit;
use syn::{Expr, ExprLit, Lit, LitStr, Token};

use crate::fragment::OffsetMap;

/// One SQL string literal found in Rust source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedQuery {
    /// The literal's value: the SQL.
    pub sql: String,
    /// The literal token's byte range in the file, quotes included.
    pub literal: Range<usize>,
    /// 1-based lines a `// moat:allow` comment may sit above: the call's and the literal's.
    pub anchor_lines: Vec<u32>,
    /// From `sql` offsets to file offsets.
    pub(crate) map: OffsetMap,
}

/// The Rust source could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RustSourceError {
    /// The parser's message.
    pub message: String,
    /// Where, in the file.
    pub span: Range<usize>,
}

/// Macros whose SQL is their first argument.
const MACROS_SQL_FIRST: &[&str] = &["query", "query_scalar", "query_unchecked", "query_scalar_unchecked"];
/// Macros whose SQL is their second argument (the first is the output type).
const MACROS_SQL_SECOND: &[&str] = &["query_as", "query_as_unchecked"];
/// Functions whose first argument is SQL.
const FUNCTIONS: &[&str] = &["query", "query_as", "query_scalar", "query_as_with", "query_with", "query_scalar_with"];
/// Methods whose first argument is SQL (tokio-postgres clients and transactions, sqlx executors).
const METHODS: &[&str] = &[
    "query",
    "execute",
    "query_one",
    "query_opt",
    "prepare",
    "prepare_cached",
    "prepare_typed",
    "query_raw",
    "query_typed",
    "execute_raw",
    "batch_execute",
    "simple_query",
];

/// Finds the SQL literals of a Rust source file.
pub fn extract(source: &str) -> Result<Vec<EmbeddedQuery>, RustSourceError> {
    let result = match syn::parse_file(source) {
        Ok(file) => {
            let mut finder = Finder { source, line_starts: line_starts(source), found: Vec::new() };
            finder.visit_file(&file);
            Ok(finder.found)
        }
        Err(error) => {
            let span = error.span().byte_range();
            Err(RustSourceError { message: format!("cannot read Rust source: {error}"), span })
        }
    };
    // Spans live in a per-thread source map that grows with every file; nothing outlives this
    // call, so release it.
    proc_macro2::extra::invalidate_current_thread_spans();
    result
}

fn line_starts(text: &str) -> Vec<usize> {
    std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect()
}

struct Finder<'s> {
    source: &'s str,
    line_starts: Vec<usize>,
    found: Vec<EmbeddedQuery>,
}

fn last_segment(path: &syn::Path) -> String {
    path.segments.last().map(|s| s.ident.to_string()).unwrap_or_default()
}

fn string_literal(expr: &Expr) -> Option<&LitStr> {
    match expr {
        Expr::Lit(ExprLit { lit: Lit::Str(lit), .. }) => Some(lit),
        Expr::Group(group) => string_literal(&group.expr),
        Expr::Paren(paren) => string_literal(&paren.expr),
        Expr::Reference(reference) => string_literal(&reference.expr),
        _ => None,
    }
}

impl Finder<'_> {
    fn line_of(&self, offset: usize) -> u32 {
        self.line_starts.partition_point(|&s| s <= offset) as u32
    }

    fn record(&mut self, literal: &LitStr, call: proc_macro2::Span) {
        let range = literal.span().byte_range();
        let value = literal.value();
        let token = self.source.get(range.clone()).unwrap_or("");
        let map = match rust_string_map(token) {
            Some((decoded, map)) if decoded == value => map.shifted(range.start),
            _ => OffsetMap::fixed(range.start),
        };
        let mut anchor_lines = vec![self.line_of(call.byte_range().start), self.line_of(range.start)];
        anchor_lines.dedup();
        self.found.push(EmbeddedQuery { sql: value, literal: range, anchor_lines, map });
    }
}

impl<'ast> Visit<'ast> for Finder<'_> {
    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        let name = last_segment(&mac.path);
        let args = mac.parse_body_with(Punctuated::<Expr, Token![,]>::parse_terminated).ok();
        if let Some(args) = &args {
            let sql = if MACROS_SQL_FIRST.contains(&name.as_str()) {
                args.first()
            } else if MACROS_SQL_SECOND.contains(&name.as_str()) {
                args.iter().nth(1)
            } else {
                None
            };
            if let Some(literal) = sql.and_then(string_literal) {
                self.record(literal, mac.path.span());
            }
            // Calls inside other macros (`vec![...]`, `assert!(...)`, `tokio::join!(...)`).
            for arg in args {
                self.visit_expr(arg);
            }
        } else if let Ok(block) = mac.parse_body_with(syn::Block::parse_within) {
            for statement in &block {
                self.visit_stmt(statement);
            }
        }
    }

    fn visit_expr_call(&mut self, call: &'ast syn::ExprCall) {
        if let Expr::Path(path) = &*call.func
            && FUNCTIONS.contains(&last_segment(&path.path).as_str())
            && let Some(literal) = call.args.first().and_then(string_literal)
        {
            self.record(literal, call.func.span());
        }
        syn::visit::visit_expr_call(self, call);
    }

    fn visit_expr_method_call(&mut self, call: &'ast syn::ExprMethodCall) {
        if METHODS.contains(&call.method.to_string().as_str())
            && let Some(literal) = call.args.first().and_then(string_literal)
        {
            self.record(literal, call.method.span());
        }
        syn::visit::visit_expr_method_call(self, call);
    }
}

/// Decodes a Rust string literal token (`"..."`, `r"..."`, `r#"..."#`) and maps its value's
/// offsets to the token's offsets.
pub(crate) fn rust_string_map(token: &str) -> Option<(String, OffsetMap)> {
    if let Some(raw) = token.strip_prefix('r') {
        let hashes = raw.len() - raw.trim_start_matches('#').len();
        let open = 1 + hashes + 1;
        let close = 1 + hashes;
        if token.len() < open + close {
            return None;
        }
        let value = token.get(open..token.len() - close)?;
        return Some((value.to_owned(), OffsetMap::identity(open)));
    }
    let body = token.strip_prefix('"')?;
    let end = body.rfind('"')?;
    let body = &body[..end];
    let mut value = String::with_capacity(body.len());
    let mut segments = vec![(0, 1)];
    let mut chars = body.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c != '\\' {
            value.push(c);
            continue;
        }
        let (_, e) = chars.next()?;
        match e {
            'n' => value.push('\n'),
            'r' => value.push('\r'),
            't' => value.push('\t'),
            '\\' => value.push('\\'),
            '0' => value.push('\0'),
            '\'' => value.push('\''),
            '"' => value.push('"'),
            'x' => {
                let hex: String = [chars.next()?.1, chars.next()?.1].iter().collect();
                value.push(char::from(u8::from_str_radix(&hex, 16).ok()?));
            }
            'u' => {
                chars.next(); // `{`
                let mut hex = String::new();
                for (_, h) in chars.by_ref() {
                    if h == '}' {
                        break;
                    }
                    hex.push(h);
                }
                value.push(char::from_u32(u32::from_str_radix(&hex.replace('_', ""), 16).ok()?)?);
            }
            '\n' | '\r' => {
                // A line continuation: the newline and the next line's leading white space vanish.
                while chars.peek().is_some_and(|&(_, w)| w.is_whitespace()) {
                    chars.next();
                }
            }
            _ => return None,
        }
        let next = chars.peek().map_or(body.len(), |&(n, _)| n);
        // Offsets are relative to the token, whose body starts after the opening quote.
        segments.push((value.len(), 1 + next));
        let _ = i;
    }
    segments.dedup_by_key(|s| s.0);
    Some((value, OffsetMap::from_segments(segments)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_map_back_to_the_literal() {
        let (value, map) = rust_string_map(r#""a\n\"b\" \u{e9}x""#).unwrap();
        assert_eq!(value, "a\n\"b\" \u{e9}x");
        // `x` is the last character of the value; in the token it sits before the closing quote.
        let token = r#""a\n\"b\" \u{e9}x""#;
        assert_eq!(map.map(value.len() - 1), token.len() - 2);
        assert_eq!(map.map(0), 1);
    }

    #[test]
    fn raw_strings_are_verbatim() {
        let (value, map) = rust_string_map("r##\"x\"y\"##").unwrap();
        assert_eq!(value, "x\"y");
        assert_eq!(map.map(0), 4);
    }

    #[test]
    fn line_continuations_skip_the_indentation() {
        let token = "\"SELECT 1 \\\n      FROM t\"";
        let (value, map) = rust_string_map(token).unwrap();
        assert_eq!(value, "SELECT 1 FROM t");
        assert_eq!(&token[map.map(9)..map.map(9) + 4], "FROM");
    }

    #[test]
    fn finds_every_supported_form() {
        let source = r#"
            fn f() {
                let a = sqlx::query!("SELECT 1");
                let b = sqlx::query_as!(Row, "SELECT 2");
                let c = sqlx::query_scalar::<_, i64>("SELECT 3");
                let d = client.query_one("SELECT 4", &[]);
                let e = vec![sqlx::query("SELECT 5")];
                let f = format!("not {}", "SQL");
                let g = client.execute(&format!("SELECT {}", 6), &[]);
                let h = tx.batch_execute(r"SELECT 7");
            }
        "#;
        let sql: Vec<String> = extract(source).unwrap().into_iter().map(|q| q.sql).collect();
        assert_eq!(sql, ["SELECT 1", "SELECT 2", "SELECT 3", "SELECT 4", "SELECT 5", "SELECT 7"]);
    }

    #[test]
    fn unparsable_rust_is_an_error_with_a_place() {
        let error = extract("fn f( {").unwrap_err();
        assert!(error.message.starts_with("cannot read Rust source"), "{error}");
    }
}

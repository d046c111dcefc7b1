//! PL/pgSQL bodies: PostgreSQL's PL/pgSQL compiler (through `pg_query::parse_plpgsql`) reads
//! the body; every SQL expression and statement in it is found again in the body's text, so that
//! findings inside it point into the file.

use std::ops::Range;

use serde_json::Value;

use crate::ast::Body;
use crate::fragment::OffsetMap;

/// A SQL expression or statement inside a PL/pgSQL body.
#[derive(Debug, Clone)]
pub(crate) struct Expression {
    /// Its text as PL/pgSQL hands it to the SQL parser.
    pub(crate) query: String,
    /// The parser mode (`pg_query::ParserOptions` bits: 0 statement, 2 expression, 3-5 assignment).
    pub(crate) mode: i32,
    /// From the query's offsets to file offsets.
    pub(crate) map: OffsetMap,
    /// Whether it is the string that `EXECUTE` runs.
    pub(crate) dynamic: bool,
}

/// A PL/pgSQL body read.
#[derive(Debug, Clone, Default)]
pub(crate) struct Plpgsql {
    /// Its expressions and statements, in order.
    pub(crate) expressions: Vec<Expression>,
    /// Its `COMMIT` and `ROLLBACK` statements (in procedures and DO blocks): the word, and where
    /// its line starts, in the file.
    pub(crate) transaction_control: Vec<(&'static str, Range<usize>)>,
}

/// PL/pgSQL rejected a body.
#[derive(Debug, Clone)]
pub(crate) struct PlpgsqlError {
    /// The message.
    pub(crate) message: String,
    /// Where, in the file.
    pub(crate) span: Range<usize>,
}

/// Reads a PL/pgSQL body.
pub(crate) fn read(body: &Body) -> Result<Plpgsql, PlpgsqlError> {
    let parsed = std::panic::catch_unwind(|| pg_query::parse_plpgsql(&body.plpgsql_source));
    let json = match parsed {
        Ok(Ok(json)) => json,
        Ok(Err(error)) => {
            let message = match error {
                pg_query::Error::Parse(message) => message,
                pg_query::Error::InvalidJson(_) => "the PL/pgSQL body is nested too deeply to analyze".to_owned(),
                other => other.to_string(),
            };
            let span = near(&body.text, &message)
                .map(|r| body.map.map_range(r))
                .unwrap_or_else(|| body.span.start..body.span.start);
            return Err(PlpgsqlError { message: format!("in PL/pgSQL body: {message}"), span });
        }
        Err(_) => {
            return Err(PlpgsqlError {
                message: "the PL/pgSQL compiler failed on this body".to_owned(),
                span: body.span.start..body.span.start,
            });
        }
    };
    let lines: Vec<usize> = std::iter::once(0).chain(body.text.match_indices('\n').map(|(i, _)| i + 1)).collect();
    let mut reader = Reader { body, lines: &lines, out: Plpgsql::default() };
    reader.walk(&json, "", "", None);
    Ok(reader.out)
}

fn near(text: &str, message: &str) -> Option<Range<usize>> {
    let start = message.find("at or near \"")? + "at or near \"".len();
    let near = message[start..].strip_suffix('"')?;
    let at = text.find(near).filter(|_| !near.is_empty())?;
    Some(at..at + near.len())
}

struct Reader<'b> {
    body: &'b Body,
    lines: &'b [usize],
    out: Plpgsql,
}

impl Reader<'_> {
    fn walk(&mut self, value: &Value, statement: &str, field: &str, line: Option<usize>) {
        match value {
            Value::Object(map) => {
                let line = map.get("lineno").and_then(Value::as_u64).map(|l| l as usize).or(line);
                for (key, child) in map {
                    if key == "PLpgSQL_expr" {
                        let dynamic = matches!(
                            (statement, field),
                            ("PLpgSQL_stmt_dynexecute" | "PLpgSQL_stmt_dynfors", "query")
                                | ("PLpgSQL_stmt_return_query" | "PLpgSQL_stmt_open", "dynquery")
                        );
                        self.expression(child, dynamic, line);
                    } else if key.starts_with("PLpgSQL_") {
                        let word = match key.as_str() {
                            "PLpgSQL_stmt_commit" => Some("COMMIT"),
                            "PLpgSQL_stmt_rollback" => Some("ROLLBACK"),
                            _ => None,
                        };
                        if let Some(word) = word {
                            let line = child.get("lineno").and_then(Value::as_u64).map(|l| l as usize).or(line);
                            self.transaction(word, line);
                        }
                        self.walk(child, key, "", line);
                    } else {
                        self.walk(child, statement, key, line);
                    }
                }
            }
            Value::Array(items) => {
                for item in items {
                    self.walk(item, statement, field, line);
                }
            }
            _ => {}
        }
    }

    /// A `COMMIT`/`ROLLBACK` statement on body line `line`: the word on that line, or its start.
    fn transaction(&mut self, word: &'static str, line: Option<usize>) {
        let text = &self.body.text;
        let start = line.and_then(|l| self.lines.get(l.saturating_sub(1))).copied().unwrap_or(0);
        let end = text[start..].find('\n').map_or(text.len(), |i| start + i);
        let at = text[start..end]
            .to_ascii_uppercase()
            .find(word)
            .map_or_else(|| crate::script::skip_trivia(text, start), |i| start + i);
        let span = self.body.map.map_range(at..(at + word.len()).min(text.len()));
        self.out.transaction_control.push((word, span));
    }

    fn expression(&mut self, expr: &Value, dynamic: bool, line: Option<usize>) {
        let Some(query) = expr.get("query").and_then(Value::as_str) else { return };
        let mode = expr.get("parseMode").and_then(Value::as_i64).unwrap_or(0) as i32;
        let text = &self.body.text;
        let from = line.and_then(|l| self.lines.get(l.saturating_sub(1))).copied().unwrap_or(0);
        let found = find_from(text, query, from)
            .map(|at| (at, 0))
            .or_else(|| {
                // PERFORM is read as SELECT: `PERFORM f()` arrives as `SELECT f()`.
                let rest = query.strip_prefix("SELECT ")?;
                let at = find_from(text, rest, from)?;
                let before = text[..at].trim_end();
                before.to_lowercase().ends_with("perform").then_some((at, "SELECT ".len()))
            })
            // `SELECT ... INTO x FROM`: PL/pgSQL blanks the INTO clause with spaces, keeping offsets.
            .or_else(|| find_masked(text, query, from).or_else(|| find_masked(text, query, 0)).map(|at| (at, 0)));
        let map = match found {
            Some((at, 0)) => self.body.map.compose(&OffsetMap::identity(at), query.len()),
            Some((at, shift)) => {
                // The `SELECT ` PL/pgSQL put in points at `PERFORM`; the rest is verbatim.
                let perform = text[..at].trim_end().len() - "perform".len();
                let inner = OffsetMap::from_segments(vec![(0, perform), (shift, at)]);
                self.body.map.compose(&inner, query.len())
            }
            None => {
                let at = line.and_then(|l| self.lines.get(l.saturating_sub(1))).copied().unwrap_or(0);
                OffsetMap::fixed(self.body.map.map(crate::script::skip_trivia(text, at)))
            }
        };
        self.out.expressions.push(Expression { query: query.to_owned(), mode, map, dynamic });
    }
}

/// Where `query` is written at or after `from`, reading spaces in `query` as any character:
/// PL/pgSQL replaces the `INTO` clause of a statement by as many spaces.
fn find_masked(text: &str, query: &str, from: usize) -> Option<usize> {
    let (t, q) = (text.as_bytes(), query.as_bytes());
    let first = q.iter().position(|&c| c != b' ')?;
    let mut start = from.min(t.len());
    while let Some(k) = t[start..].iter().position(|&c| c == q[first]) {
        let hit = start + k;
        if let Some(p) = hit.checked_sub(first)
            && p + q.len() <= t.len()
            && text.is_char_boundary(p)
            && q.iter().enumerate().all(|(i, &c)| c == b' ' || t[p + i] == c)
        {
            return Some(p);
        }
        start = hit + 1;
    }
    None
}

/// The first occurrence of `needle` at or after `from`, else anywhere.
fn find_from(text: &str, needle: &str, from: usize) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    let from = (0..=from.min(text.len())).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
    text[from..].find(needle).map(|i| i + from).or_else(|| text.find(needle))
}

//! A small SQL lexer that splits a script into statements.
//!
//! The runtime library applies migrations that opt out of a transaction one statement at a time
//! (PostgreSQL runs a multi-statement query string in one implicit transaction, which
//! `CREATE INDEX CONCURRENTLY` refuses). The runtime must not link the SQL parser, so this lexer
//! knows just enough of PostgreSQL's lexical rules to find statement boundaries: quoted strings
//! and identifiers, `E''` escapes, dollar quoting, nested block comments, parentheses (rule
//! actions), and `BEGIN ATOMIC ... END` bodies of SQL-standard functions, the way psql's own
//! scanner does.

/// One statement of a script: byte range of its text, without the terminating semicolon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatementSpan {
    /// Byte offset of the statement's first non-blank, non-comment character.
    pub start: usize,
    /// Byte offset just past its last character (before the `;`).
    pub end: usize,
}

/// Splits `sql` into statements; empty statements (only blanks and comments) are dropped.
pub fn split_statements(sql: &str) -> Vec<StatementSpan> {
    let bytes = sql.as_bytes();
    let mut spans = Vec::new();
    let mut i = 0;
    let mut start: Option<usize> = None;
    let mut last_end = 0;
    // Words seen at the start of the current statement, for `CREATE [OR REPLACE] FUNCTION`.
    let mut leading_words: Vec<String> = Vec::new();
    let mut begin_depth = 0usize;
    let mut paren_depth = 0usize;

    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i = skip_block_comment(bytes, i);
                continue;
            }
            b';' => {
                if begin_depth == 0 && paren_depth == 0 {
                    if let Some(s) = start.take() {
                        spans.push(StatementSpan { start: s, end: last_end });
                    }
                    leading_words.clear();
                    begin_depth = 0;
                } else if start.is_none() {
                    start = Some(i);
                }
                i += 1;
                last_end = i;
                continue;
            }
            c if c.is_ascii_whitespace() => {
                i += 1;
                continue;
            }
            _ => {}
        }
        if start.is_none() {
            start = Some(i);
        }
        match b {
            b'\'' => {
                let escapes = i > 0 && matches!(bytes[i - 1], b'e' | b'E') && !is_ident_byte_before(bytes, i - 1);
                i = skip_quoted(bytes, i, b'\'', escapes);
            }
            b'"' => i = skip_quoted(bytes, i, b'"', false),
            b'(' => {
                paren_depth += 1;
                i += 1;
            }
            b')' => {
                paren_depth = paren_depth.saturating_sub(1);
                i += 1;
            }
            b'$' => match dollar_tag(bytes, i) {
                Some(tag_len) => {
                    let tag = &bytes[i..i + tag_len];
                    i += tag_len;
                    while i < bytes.len() && !bytes[i..].starts_with(tag) {
                        i += 1;
                    }
                    i = (i + tag_len).min(bytes.len());
                }
                None => i += 1,
            },
            c if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
                let word_start = i;
                while i < bytes.len()
                    && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b'$' || bytes[i] >= 0x80)
                {
                    i += 1;
                }
                let word = sql[word_start..i].to_ascii_lowercase();
                if leading_words.len() < 4 {
                    leading_words.push(word.clone());
                }
                if is_routine_definition(&leading_words) {
                    match word.as_str() {
                        "begin" | "case" => begin_depth += 1,
                        "end" => begin_depth = begin_depth.saturating_sub(1),
                        _ => {}
                    }
                }
            }
            _ => i += 1,
        }
        last_end = i;
    }
    if let Some(s) = start {
        spans.push(StatementSpan { start: s, end: last_end.max(s) });
    }
    spans
}

fn is_ident_byte_before(bytes: &[u8], i: usize) -> bool {
    i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_')
}

fn is_routine_definition(words: &[String]) -> bool {
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    matches!(
        words.as_slice(),
        ["create", "function" | "procedure", ..] | ["create", "or", "replace", "function" | "procedure", ..]
    )
}

/// Skips a quoted string or identifier starting at `i`; returns the offset after it.
fn skip_quoted(bytes: &[u8], mut i: usize, quote: u8, backslash_escapes: bool) -> usize {
    i += 1;
    while i < bytes.len() {
        if backslash_escapes && bytes[i] == b'\\' {
            i += 2;
            continue;
        }
        if bytes[i] == quote {
            if bytes.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    bytes.len()
}

/// The length of a dollar-quote tag (`$$` or `$tag$`) at `i`, if there is one.
fn dollar_tag(bytes: &[u8], i: usize) -> Option<usize> {
    // `$1` is a parameter, and a `$` inside an identifier is not a quote.
    if is_ident_byte_before(bytes, i) {
        return None;
    }
    let mut j = i + 1;
    while j < bytes.len() && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_' || bytes[j] >= 0x80) {
        if j == i + 1 && bytes[j].is_ascii_digit() {
            return None;
        }
        j += 1;
    }
    (bytes.get(j) == Some(&b'$')).then_some(j + 1 - i)
}

/// The offset just past the (nested) block comment that starts at `start` (`/*`), or the end of
/// `bytes` when it is not closed.
pub fn skip_block_comment(bytes: &[u8], start: usize) -> usize {
    let mut i = start;
    let mut depth = 0usize;
    while i < bytes.len() {
        if bytes[i] == b'/' && bytes.get(i + 1) == Some(&b'*') {
            depth += 1;
            i += 2;
        } else if bytes[i] == b'*' && bytes.get(i + 1) == Some(&b'/') {
            depth -= 1;
            i += 2;
            if depth == 0 {
                break;
            }
        } else {
            i += 1;
        }
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(sql: &str) -> Vec<&str> {
        split_statements(sql).iter().map(|s| &sql[s.start..s.end]).collect()
    }

    #[test]
    fn splits_on_semicolons_outside_quotes_and_comments() {
        let sql = "select ';'; -- a; comment\nselect \"a;b\" /* c; /* nested; */ */ from t;\n\n";
        assert_eq!(texts(sql), vec!["select ';'", "select \"a;b\" /* c; /* nested; */ */ from t"]);
    }

    #[test]
    fn dollar_quotes_and_escape_strings() {
        let sql = "do $x$ begin perform 1; end $x$; select E'\\';', $1;";
        assert_eq!(texts(sql), vec!["do $x$ begin perform 1; end $x$", "select E'\\';', $1"]);
    }

    #[test]
    fn begin_atomic_bodies_stay_whole() {
        let sql = "create function f() returns int language sql begin atomic select 1; select case when true then 2 end; end; select 3";
        assert_eq!(
            texts(sql),
            vec![
                "create function f() returns int language sql begin atomic select 1; select case when true then 2 end; end",
                "select 3"
            ]
        );
    }

    #[test]
    fn rule_actions_in_parentheses_stay_whole() {
        let sql =
            "create rule r as on insert to t do also (insert into a values (1); insert into b values (2)); select 1";
        assert_eq!(
            texts(sql),
            vec![
                "create rule r as on insert to t do also (insert into a values (1); insert into b values (2))",
                "select 1"
            ]
        );
    }

    #[test]
    fn comments_only_is_empty() {
        assert!(texts("-- nothing\n/* here */ ;;").is_empty());
    }
}

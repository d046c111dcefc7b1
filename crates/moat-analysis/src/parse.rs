//! Parsing with PostgreSQL's own grammar: a script into statements, each with its tree or with
//! the error PostgreSQL reports and where.

use std::ops::Range;

use pg_query::protobuf::ScanToken;
use pg_query::{NodeEnum, ParserOptions};

use crate::script::{MAX_NESTING, Script};

/// One statement of a script: its tree, or why there is none.
#[derive(Debug)]
pub(crate) struct Statement {
    /// The statement's text range (without the `;`), in the script's text.
    pub(crate) range: Range<usize>,
    /// Its first token.
    pub(crate) first_token: usize,
    /// The offset that the tree's locations count from.
    pub(crate) base: usize,
    /// The tree, or the parse error.
    pub(crate) parsed: Result<NodeEnum, ParseError>,
}

/// PostgreSQL rejected a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParseError {
    /// PostgreSQL's message, such as `syntax error at or near "SELEC"`.
    pub(crate) message: String,
    /// Where, in the script's text.
    pub(crate) span: Range<usize>,
}

/// Parses SQL text with the given parser mode; never panics.
pub(crate) fn parse_text(text: &str, mode: ParserOptions) -> Result<Vec<(NodeEnum, i32, i32)>, String> {
    let result = std::panic::catch_unwind(|| pg_query::parse(text, mode));
    match result {
        Ok(Ok(parsed)) => Ok(parsed
            .protobuf
            .stmts
            .into_iter()
            .filter_map(|raw| raw.stmt.and_then(|s| s.node).map(|n| (n, raw.stmt_location, raw.stmt_len)))
            .collect()),
        Ok(Err(pg_query::Error::Parse(message))) => Err(message),
        Ok(Err(pg_query::Error::Decode(_))) => {
            Err("the statement is nested too deeply to analyze (its parse tree exceeds 100 levels)".to_owned())
        }
        Ok(Err(other)) => Err(other.to_string()),
        Err(_) => Err("the parser failed on this statement".to_owned()),
    }
}

/// Statements parsed together: one call to the parser for a group is much cheaper than one per
/// statement, and a group that fails is parsed again statement by statement.
const GROUP: usize = 24;

/// Parses every statement of a script, in groups of statements; a group that PostgreSQL rejects
/// is parsed again statement by statement, so that one bad statement does not hide the others.
pub(crate) fn parse_script(script: &Script) -> Vec<Statement> {
    let mut out = Vec::with_capacity(script.pieces.len());
    for_each_statement(script, |statement| out.push(statement));
    out
}

/// Like [`parse_script`], but hands each statement to `f` as soon as its group is parsed, so
/// that only one group's trees exist at a time.
pub(crate) fn for_each_statement(script: &Script, mut f: impl FnMut(Statement)) {
    let text = &*script.text;
    for group in script.pieces.chunks(GROUP) {
        if group.len() > 1 && group.iter().all(|p| p.nesting <= MAX_NESTING) {
            let start = group[0].range.start;
            let end = group[group.len() - 1].range.end;
            if let Ok(statements) = parse_text(&text[start..end], ParserOptions::DEFAULT) {
                for (node, location, len) in statements {
                    let from = start + usize::try_from(location).unwrap_or(0).min(end - start);
                    let to = if len <= 0 { end } else { (from + len as usize).min(end) };
                    let first_token = crate::script::skip_trivia(text, from);
                    f(Statement { range: from..to, first_token, base: start, parsed: Ok(node) });
                }
                continue;
            }
        }
        for piece in group {
            if let Some(statement) = parse_piece(text, piece) {
                f(statement);
            }
        }
    }
}

/// Parses one statement; `None` for a piece that holds no statement.
fn parse_piece(text: &str, piece: &crate::script::Piece) -> Option<Statement> {
    let piece_text = &text[piece.range.clone()];
    let parsed = if piece.nesting > MAX_NESTING {
        Err(ParseError {
            message: format!(
                "the statement nests parentheses {} levels deep; moat reads at most {MAX_NESTING}",
                piece.nesting
            ),
            span: piece.first_token..piece.first_token,
        })
    } else {
        match parse_text(piece_text, ParserOptions::DEFAULT) {
            Ok(nodes) if nodes.is_empty() => return None,
            // A piece holds one statement by construction.
            Ok(mut nodes) => Ok(nodes.swap_remove(0).0),
            Err(message) => {
                let span = locate_error(piece_text, &message, ParserOptions::DEFAULT);
                Err(ParseError { message, span: piece.range.start + span.start..piece.range.start + span.end })
            }
        }
    };
    Some(Statement { range: piece.range.clone(), first_token: piece.first_token, base: piece.range.start, parsed })
}

/// Finds where PostgreSQL's grammar rejects `text`: the first token at which a prefix of the
/// text fails other than by ending early. The C parser knows the position but the `pg_query`
/// crate does not pass it on, so it is found again by bisecting over token prefixes.
pub(crate) fn locate_error(text: &str, message: &str, mode: ParserOptions) -> Range<usize> {
    let end_of_text = text.trim_end().len();
    let first = crate::script::skip_trivia(text, 0);
    if message.ends_with("at end of input") {
        return end_of_text..end_of_text;
    }
    let tokens = match std::panic::catch_unwind(|| pg_query::scan_tokens(text)) {
        Ok(Ok(tokens)) => tokens,
        _ => return near_text(text, message).unwrap_or(first..first),
    };
    let tokens: Vec<&ScanToken> = tokens.iter().filter(|t| !is_comment(t)).collect();
    let fails_here = |n: usize| -> bool {
        let end = tokens[n - 1].end as usize;
        match parse_text(&text[..end.min(text.len())], mode) {
            Ok(_) => false,
            Err(m) => !m.ends_with("at end of input"),
        }
    };
    if tokens.is_empty() || !fails_here(tokens.len()) {
        return near_text(text, message).unwrap_or(first..first);
    }
    // The smallest n such that the first n tokens fail.
    let (mut lo, mut hi) = (1, tokens.len());
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if fails_here(mid) { hi = mid } else { lo = mid + 1 }
    }
    let token = tokens[lo - 1];
    let (start, end) = (token.start as usize, token.end as usize);
    if start <= end && end <= text.len() && text.is_char_boundary(start) && text.is_char_boundary(end) {
        start..end
    } else {
        first..first
    }
}

fn is_comment(token: &ScanToken) -> bool {
    use pg_query::protobuf::Token;
    token.token == Token::SqlComment as i32 || token.token == Token::CComment as i32
}

/// The text PostgreSQL quotes in `... at or near "X"`, found in `text`.
fn near_text(text: &str, message: &str) -> Option<Range<usize>> {
    let start = message.find("at or near \"")? + "at or near \"".len();
    let near = message[start..].strip_suffix('"')?;
    if near.is_empty() {
        return None;
    }
    let at = text.find(near)?;
    Some(at..at + near.len())
}

/// Rewrites PostgreSQL's `at or near "X"` to name X in backticks, as moat's messages do.
pub(crate) fn message_with_backticks(message: &str) -> String {
    match message.find("at or near \"") {
        Some(i) if message.ends_with('"') => {
            let near = &message[i + "at or near \"".len()..message.len() - 1];
            format!("{}at or near `{}`", &message[..i], near.replace('`', "'"))
        }
        _ => message.to_owned(),
    }
}

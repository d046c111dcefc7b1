//! Small lexical helpers over SQL text: where a name written at an offset ends, where a name
//! without a location in the tree is written, and the string literal at an offset.

use std::ops::Range;

use crate::resolve::QualifiedName;

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_ident_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

/// One identifier at `i`: its end and its value (folded to lower case unless quoted).
fn identifier_at(b: &[u8], i: usize) -> Option<(usize, String)> {
    match b.get(i)? {
        b'"' => {
            let mut j = i + 1;
            let mut value = Vec::new();
            while j < b.len() {
                if b[j] == b'"' {
                    if b.get(j + 1) == Some(&b'"') {
                        value.push(b'"');
                        j += 2;
                        continue;
                    }
                    return Some((j + 1, String::from_utf8_lossy(&value).into_owned()));
                }
                value.push(b[j]);
                j += 1;
            }
            None
        }
        &c if is_ident_start(c) => {
            let mut j = i;
            while j < b.len() && is_ident_char(b[j]) {
                j += 1;
            }
            Some((j, String::from_utf8_lossy(&b[i..j]).to_lowercase()))
        }
        _ => None,
    }
}

fn skip_spaces(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// The end of the (possibly qualified) name written at `start`: `a`, `"A"`, `s . a`.
pub(crate) fn name_extent(text: &str, start: usize) -> usize {
    let b = text.as_bytes();
    let Some((mut end, _)) = identifier_at(b, start) else {
        return start;
    };
    loop {
        let dot = skip_spaces(b, end);
        if b.get(dot) != Some(&b'.') {
            return end;
        }
        let next = skip_spaces(b, dot + 1);
        match identifier_at(b, next) {
            Some((e, _)) => end = e,
            None => return end,
        }
    }
}

/// The extent of a string literal token at `start` (`'...'`, `E'...'`, `$tag$...$tag$`).
pub(crate) fn string_token_at(text: &str, start: usize) -> Option<Range<usize>> {
    let b = text.as_bytes();
    match *b.get(start)? {
        b'$' => {
            let mut j = start + 1;
            while j < b.len() && b[j] != b'$' && is_ident_char(b[j]) {
                j += 1;
            }
            if b.get(j) != Some(&b'$') {
                return None;
            }
            let tag = &b[start..=j];
            let body = j + 1;
            let close = b[body..].windows(tag.len()).position(|w| w == tag)?;
            Some(start..body + close + tag.len())
        }
        b'\'' => quoted_end(b, start, false).map(|end| start..end),
        b'E' | b'e' if b.get(start + 1) == Some(&b'\'') => quoted_end(b, start + 1, true).map(|end| start..end),
        _ => None,
    }
}

fn quoted_end(b: &[u8], quote: usize, escapes: bool) -> Option<usize> {
    let mut j = quote + 1;
    while j < b.len() {
        if escapes && b[j] == b'\\' {
            j += 2;
            continue;
        }
        if b[j] == b'\'' {
            if b.get(j + 1) == Some(&b'\'') {
                j += 2;
                continue;
            }
            return Some(j + 1);
        }
        j += 1;
    }
    None
}

#[derive(Debug, PartialEq)]
enum Token {
    Ident(String),
    Dot,
    Other,
}

/// Identifiers and dots of `text[range]`, skipping comments and string literals.
fn tokens(text: &str, range: Range<usize>) -> Vec<(Range<usize>, Token)> {
    let b = text.as_bytes();
    let end = range.end.min(b.len());
    let mut i = range.start.min(end);
    let mut out = Vec::new();
    while i < end {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if b[i..end].starts_with(b"--") {
            while i < end && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..end].starts_with(b"/*") {
            i = b[i..end].windows(2).position(|w| w == b"*/").map_or(end, |k| i + k + 2);
        } else if c == b'\'' || c == b'$' && string_token_at(text, i).is_some() {
            let next = string_token_at(text, i).map_or(end, |r| r.end);
            out.push((i..next, Token::Other));
            i = next.max(i + 1);
        } else if c == b'.' {
            out.push((i..i + 1, Token::Dot));
            i += 1;
        } else if let Some((e, value)) = identifier_at(b, i) {
            out.push((i..e, Token::Ident(value)));
            i = e.max(i + 1);
        } else {
            out.push((i..i + 1, Token::Other));
            i += 1;
        }
    }
    out
}

/// Where `name` is written inside `text[range]`, for names the tree gives no location for.
pub(crate) fn find_name(text: &str, range: Range<usize>, name: &QualifiedName) -> Option<Range<usize>> {
    let tokens = tokens(text, range);
    let is = |k: usize, value: &str| matches!(tokens.get(k), Some((_, Token::Ident(v))) if v == value);
    for k in 0..tokens.len() {
        match &name.schema {
            Some(schema) => {
                if is(k, schema) && matches!(tokens.get(k + 1), Some((_, Token::Dot))) && is(k + 2, &name.name) {
                    return Some(tokens[k].0.start..tokens[k + 2].0.end);
                }
            }
            None => {
                let after_dot = k > 0 && tokens[k - 1].1 == Token::Dot;
                if is(k, &name.name) && !after_dot {
                    return Some(tokens[k].0.clone());
                }
            }
        }
    }
    None
}

/// Where the identifier `word` is written inside `text[range]` (case-insensitive).
pub(crate) fn find_word(text: &str, range: Range<usize>, word: &str) -> Option<Range<usize>> {
    tokens(text, range).into_iter().find(|(_, t)| matches!(t, Token::Ident(v) if v == word)).map(|(r, _)| r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_extend_over_dots_and_quotes() {
        let text = "SELECT * FROM patients . \"Pat\"\"x\" p";
        assert_eq!(&text[14..name_extent(text, 14)], "patients . \"Pat\"\"x\"");
    }

    #[test]
    fn names_are_found_outside_comments_and_strings() {
        let text = "-- patients.x\nCOMMENT ON TABLE 'patients.x' patients.X IS 'a'";
        let name = QualifiedName { schema: Some("patients".into()), name: "x".into() };
        let found = find_name(text, 0..text.len(), &name).unwrap();
        assert_eq!(&text[found], "patients.X");
    }

    #[test]
    fn string_tokens() {
        assert_eq!(string_token_at("$a$ x $a$;", 0), Some(0..9));
        assert_eq!(string_token_at("'it''s' x", 0), Some(0..7));
        assert_eq!(string_token_at("E'\\'' x", 0), Some(0..5));
        assert_eq!(string_token_at("'open", 0), None);
    }
}

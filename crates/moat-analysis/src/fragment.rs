//! Text that is analyzed somewhere other than where it is written: the value of a string literal
//! (a function body, an embedded query) mapped back to byte offsets of the file.

use std::ops::Range;

/// Maps byte offsets of an analyzed text to byte offsets of the file it came from.
///
/// The map is piecewise linear: each segment starts at a text offset and the file offset it maps
/// to; inside a segment both advance together. An escape sequence (`''`, `\n`) starts a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OffsetMap {
    /// `(text offset, file offset)`, sorted by text offset, the first at text offset 0.
    segments: Vec<(usize, usize)>,
    /// Every offset maps to this one (a text whose form the map cannot follow).
    fixed: Option<usize>,
}

impl OffsetMap {
    /// Text offset `i` is file offset `base + i`.
    pub(crate) fn identity(base: usize) -> Self {
        Self { segments: vec![(0, base)], fixed: None }
    }

    /// Every text offset is file offset `file`.
    pub(crate) fn fixed(file: usize) -> Self {
        Self { segments: vec![(0, file)], fixed: Some(file) }
    }

    /// A map from segments; `segments` must start at text offset 0 and be sorted.
    pub(crate) fn from_segments(segments: Vec<(usize, usize)>) -> Self {
        if segments.first().is_none_or(|s| s.0 != 0) {
            let base = segments.first().map_or(0, |s| s.1);
            let mut all = vec![(0, base)];
            all.extend(segments);
            return Self { segments: all, fixed: None };
        }
        Self { segments, fixed: None }
    }

    /// The same map with every file offset moved by `by`.
    pub(crate) fn shifted(&self, by: usize) -> OffsetMap {
        OffsetMap {
            segments: self.segments.iter().map(|&(text, file)| (text, file + by)).collect(),
            fixed: self.fixed.map(|file| file + by),
        }
    }

    /// The file offset of a text offset.
    pub(crate) fn map(&self, offset: usize) -> usize {
        if let Some(file) = self.fixed {
            return file;
        }
        let i = self.segments.partition_point(|s| s.0 <= offset).saturating_sub(1);
        let (text, file) = self.segments[i];
        file + offset.saturating_sub(text)
    }

    /// The file range of a text range.
    pub(crate) fn map_range(&self, range: Range<usize>) -> Range<usize> {
        let start = self.map(range.start);
        let end = if range.end > range.start { self.map(range.end - 1) + 1 } else { start };
        start..end.max(start)
    }

    /// The map of a text inside this one: `inner` maps the inner text to offsets of this text;
    /// the result maps the inner text to file offsets. `inner_len` is the inner text's length.
    pub(crate) fn compose(&self, inner: &OffsetMap, inner_len: usize) -> OffsetMap {
        if let Some(file) = self.fixed {
            return OffsetMap::fixed(file);
        }
        if let Some(outer) = inner.fixed {
            return OffsetMap::fixed(self.map(outer));
        }
        let mut segments = Vec::with_capacity(inner.segments.len() + 2);
        for (k, &(text, outer)) in inner.segments.iter().enumerate() {
            let text_end = inner.segments.get(k + 1).map_or(inner_len, |s| s.0);
            let outer_end = outer + text_end.saturating_sub(text);
            let mut position = outer;
            loop {
                segments.push((text + (position - outer), self.map(position)));
                // The next segment of `self` that starts inside this inner segment.
                let next = self.segments.partition_point(|s| s.0 <= position);
                match self.segments.get(next) {
                    Some(&(start, _)) if start < outer_end => position = start,
                    _ => break,
                }
            }
        }
        segments.dedup_by_key(|s| s.0);
        OffsetMap::from_segments(segments)
    }
}

/// The value of a SQL string constant token (`'...'`, `E'...'`, `$tag$...$tag$`) and the map
/// from the value's offsets to the token's offsets. `None` when the token is not a string.
pub(crate) fn sql_string_value(token: &str) -> Option<(String, OffsetMap)> {
    let bytes = token.as_bytes();
    if bytes.first() == Some(&b'$') {
        let close = token[1..].find('$')? + 1;
        let tag = &token[..=close];
        if token.len() < 2 * tag.len() || !token.ends_with(tag) {
            return None;
        }
        let value = &token[tag.len()..token.len() - tag.len()];
        return Some((value.to_owned(), OffsetMap::identity(tag.len())));
    }
    let (prefix, escapes) = match bytes.first()? {
        b'\'' => (0, false),
        b'E' | b'e' if bytes.get(1) == Some(&b'\'') => (1, true),
        _ => return None,
    };
    let body_start = prefix + 1;
    if token.len() < body_start + 1 || !token.ends_with('\'') {
        return None;
    }
    let body = &token[body_start..token.len() - 1];
    let mut value = String::with_capacity(body.len());
    let mut segments = vec![(0, body_start)];
    let mut chars = body.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == '\'' {
            // A doubled quote stands for one quote.
            if chars.peek().is_some_and(|&(_, n)| n == '\'') {
                chars.next();
            }
            value.push('\'');
            segments.push((value.len(), body_start + i + 2));
        } else if c == '\\' && escapes {
            let Some((_, e)) = chars.next() else {
                value.push('\\');
                break;
            };
            match e {
                'n' => value.push('\n'),
                't' => value.push('\t'),
                'r' => value.push('\r'),
                'b' => value.push('\u{8}'),
                'f' => value.push('\u{c}'),
                other => value.push(other),
            }
            let next = chars.peek().map_or(body.len(), |&(n, _)| n);
            segments.push((value.len(), body_start + next));
        } else {
            value.push(c);
        }
    }
    segments.dedup_by_key(|s| s.0);
    Some((value, OffsetMap::from_segments(segments)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_adds_the_base() {
        let map = OffsetMap::identity(10);
        assert_eq!(map.map(0), 10);
        assert_eq!(map.map_range(2..5), 12..15);
    }

    #[test]
    fn doubled_quotes_shift_the_rest() {
        let (value, map) = sql_string_value("'it''s x'").unwrap();
        assert_eq!(value, "it's x");
        // `x` is at value offset 5 and token offset 7.
        assert_eq!(map.map(5), 7);
        assert_eq!(map.map(0), 1);
    }

    #[test]
    fn dollar_quotes_are_verbatim() {
        let (value, map) = sql_string_value("$body$ BEGIN $body$").unwrap();
        assert_eq!(value, " BEGIN ");
        assert_eq!(map.map(1), 7);
    }

    #[test]
    fn composition_follows_both_maps() {
        // Outer: the file has a literal at 100 with one escape at text offset 3 (two bytes).
        let outer = OffsetMap::from_segments(vec![(0, 100), (4, 105)]);
        let inner = OffsetMap::identity(2);
        let both = outer.compose(&inner, 6);
        assert_eq!(both.map(0), 102);
        assert_eq!(both.map(1), 103);
        assert_eq!(both.map(2), 105);
    }
}

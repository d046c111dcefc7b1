//! Positions in text: byte offsets, PostgreSQL's character positions, and 1-based line/column.

/// A 1-based line and column; the column counts characters, as editors and rustc do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct LineCol {
    /// 1-based line.
    pub line: u32,
    /// 1-based column, in characters.
    pub column: u32,
}

/// Maps byte offsets of one text to lines and columns.
#[derive(Debug, Clone)]
pub struct LineIndex<'a> {
    text: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    /// Indexes `text`.
    pub fn new(text: &'a str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Self { text, line_starts }
    }

    /// The line and column of a byte offset (clamped to the text, snapped to a char boundary).
    pub fn line_col(&self, offset: usize) -> LineCol {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self.line_starts.partition_point(|&start| start <= offset) - 1;
        let column = self.text[self.line_starts[line]..offset].chars().count() + 1;
        LineCol { line: line as u32 + 1, column: column as u32 }
    }

    /// The byte offset of the first character of a 1-based line.
    pub fn line_start(&self, line: u32) -> Option<usize> {
        self.line_starts.get((line as usize).checked_sub(1)?).copied()
    }

    /// The text of a 1-based line, without its line ending.
    pub fn line_text(&self, line: u32) -> Option<&'a str> {
        let start = self.line_start(line)?;
        let end = self.line_starts.get(line as usize).map_or(self.text.len(), |next| next - 1);
        Some(self.text[start..end].trim_end_matches('\r'))
    }
}

/// Converts PostgreSQL's error position (1-based, in characters) into a byte offset into `text`.
pub fn char_position_to_byte(text: &str, position: usize) -> usize {
    text.char_indices().nth(position.saturating_sub(1)).map_or(text.len(), |(i, _)| i)
}

/// Normalizes line endings (CRLF and CR to LF) so that checksums do not depend on the checkout.
pub fn normalize_line_endings(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\r') {
        std::borrow::Cow::Owned(text.replace("\r\n", "\n").replace('\r', "\n"))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_count_characters() {
        let index = LineIndex::new("ab\nçd\nef");
        assert_eq!(index.line_col(0), LineCol { line: 1, column: 1 });
        assert_eq!(index.line_col(3), LineCol { line: 2, column: 1 });
        assert_eq!(index.line_col(5), LineCol { line: 2, column: 2 });
        assert_eq!(index.line_col(7), LineCol { line: 3, column: 1 });
        assert_eq!(index.line_text(2), Some("çd"));
    }

    #[test]
    fn postgres_positions_are_characters() {
        assert_eq!(char_position_to_byte("çx", 2), 2);
        assert_eq!(char_position_to_byte("abc", 1), 0);
    }
}

//! A SQL script as psql reads it: statements split at top-level semicolons, psql meta-commands
//! (`\set`, `\d`, `\gset`, ...) and the data of `COPY ... FROM stdin` blanked out and counted.
//!
//! Blanking replaces bytes with spaces (newlines are kept), so that every byte offset into the
//! blanked text is the same offset into the file.

use std::ops::Range;
use std::sync::Arc;

/// Parentheses nested deeper than this are not handed to the parser (its output and our walk
/// recurse once per level); the statement gets a parse error instead.
pub(crate) const MAX_NESTING: usize = 400;

/// A script split into statements.
#[derive(Debug, Clone)]
pub(crate) struct Script {
    /// The text with meta-commands, COPY data and NUL characters replaced by spaces (shared by
    /// every statement read from it).
    pub(crate) text: Arc<str>,
    /// Each statement: its range (without the terminating `;`), its first token, its deepest
    /// parenthesis nesting.
    pub(crate) pieces: Vec<Piece>,
    /// psql meta-commands skipped.
    pub(crate) meta_commands: usize,
    /// COPY data lines skipped.
    pub(crate) copy_data_lines: usize,
    /// Offsets of NUL characters (PostgreSQL cannot read them).
    pub(crate) nuls: Vec<usize>,
    /// psql variables (`:name`, `:'name'`, `:"name"`), replaced in `text` by a placeholder of the
    /// same length and kind (an identifier, a string, a quoted identifier): where, and the name.
    pub(crate) variables: Vec<(Range<usize>, String)>,
    /// psql includes (`\i`, `\ir`, `\include`, `\include_relative`): where, the path, and
    /// whether it is relative to the including file.
    pub(crate) includes: Vec<(Range<usize>, String, bool)>,
}

/// One statement of a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Piece {
    /// From the end of the previous statement to the `;` (exclusive).
    pub(crate) range: Range<usize>,
    /// The first byte that is not white space or a comment.
    pub(crate) first_token: usize,
    /// The deepest parenthesis nesting.
    pub(crate) nesting: usize,
}

/// Meta-commands that send the query buffer, like a semicolon does.
const SENDING_META_COMMANDS: &[&str] = &["g", "gx", "gset", "gexec", "gdesc", "watch", "crosstabview", "gp"];

/// Splits `text`; with `psql`, also blanks meta-commands and COPY data.
pub(crate) fn split(text: &str, psql: bool) -> Script {
    let mut out = text.as_bytes().to_vec();
    let mut nuls = Vec::new();
    for (i, byte) in out.iter_mut().enumerate() {
        if *byte == 0 {
            *byte = b' ';
            nuls.push(i);
        }
    }
    let mut lexer = Lexer {
        b: out,
        i: 0,
        psql,
        pieces: Vec::new(),
        meta_commands: 0,
        copy_data_lines: 0,
        variables: Vec::new(),
        includes: Vec::new(),
        brackets: 0,
        no_copy_end_from: usize::MAX,
    };
    lexer.run();
    // Only whole characters were replaced, by ASCII spaces, so the text is still UTF-8.
    let text = String::from_utf8(lexer.b).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    Script {
        text: Arc::from(text),
        pieces: lexer.pieces,
        meta_commands: lexer.meta_commands,
        copy_data_lines: lexer.copy_data_lines,
        nuls,
        variables: lexer.variables,
        includes: lexer.includes,
    }
}

/// Skips white space and comments from `offset`; returns the offset of the next token.
pub(crate) fn skip_trivia(text: &str, offset: usize) -> usize {
    let b = text.as_bytes();
    let mut offset = offset.min(b.len());
    loop {
        while offset < b.len() && b[offset].is_ascii_whitespace() {
            offset += 1;
        }
        if b[offset..].starts_with(b"--") {
            while offset < b.len() && b[offset] != b'\n' {
                offset += 1;
            }
        } else if b[offset..].starts_with(b"/*") {
            offset = skip_block_comment(b, offset);
        } else {
            return offset.min(b.len());
        }
    }
}

fn skip_block_comment(b: &[u8], mut i: usize) -> usize {
    let mut depth = 0usize;
    while i < b.len() {
        if b[i..].starts_with(b"/*") {
            depth += 1;
            i += 2;
        } else if b[i..].starts_with(b"*/") {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    b.len()
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_ident_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

struct Lexer {
    b: Vec<u8>,
    i: usize,
    psql: bool,
    pieces: Vec<Piece>,
    meta_commands: usize,
    copy_data_lines: usize,
    variables: Vec<(Range<usize>, String)>,
    includes: Vec<(Range<usize>, String, bool)>,
    /// Open square brackets: a `:` inside them is an array slice (`a[1:n]`), not a variable.
    brackets: usize,
    /// A line start from which no `\.` line follows (found by a COPY that had no data), so that
    /// later COPYs do not search the rest of the file again; `usize::MAX` until then.
    no_copy_end_from: usize,
}

/// The state of the statement being read.
#[derive(Default)]
struct Statement {
    start: usize,
    first_token: Option<usize>,
    paren_depth: usize,
    nesting: usize,
    begin_depth: usize,
    /// psql's heuristic for `CREATE [OR REPLACE] FUNCTION|PROCEDURE ... BEGIN ATOMIC ... END`:
    /// the first letters of the first identifiers.
    identifiers: [u8; 4],
    identifier_count: usize,
    /// The first few words, lowercased, to recognize `COPY ... FROM stdin`.
    words: Vec<String>,
}

impl Lexer {
    fn run(&mut self) {
        let mut st = Statement::default();
        while self.i < self.b.len() {
            let c = self.b[self.i];
            let next = self.b.get(self.i + 1).copied();
            match c {
                b'-' if next == Some(b'-') => {
                    while self.i < self.b.len() && self.b[self.i] != b'\n' {
                        self.i += 1;
                    }
                }
                b'/' if next == Some(b'*') => self.i = skip_block_comment(&self.b, self.i),
                b'\'' => {
                    st.first_token.get_or_insert(self.i);
                    let escapes = self.i > 0
                        && matches!(self.b[self.i - 1], b'E' | b'e')
                        && (self.i < 2 || !is_ident_char(self.b[self.i - 2]));
                    self.skip_quoted(b'\'', escapes);
                }
                b'"' => {
                    st.first_token.get_or_insert(self.i);
                    self.skip_quoted(b'"', false);
                }
                b'$' => {
                    st.first_token.get_or_insert(self.i);
                    self.dollar();
                }
                b'(' => {
                    st.first_token.get_or_insert(self.i);
                    st.paren_depth += 1;
                    st.nesting = st.nesting.max(st.paren_depth);
                    self.i += 1;
                }
                b')' => {
                    st.paren_depth = st.paren_depth.saturating_sub(1);
                    self.i += 1;
                }
                b';' if st.paren_depth == 0 && st.begin_depth == 0 => {
                    let end = self.i;
                    self.i += 1;
                    self.finish(&mut st, end);
                }
                b'\\' if self.psql => {
                    let start = self.i;
                    let mut end = start;
                    while end < self.b.len() && self.b[end] != b'\n' {
                        end += 1;
                    }
                    let name_end =
                        (start + 1..end).find(|&k| !self.b[k].is_ascii_alphanumeric()).unwrap_or(end).max(start + 1);
                    let name = String::from_utf8_lossy(&self.b[start + 1..name_end]).to_ascii_lowercase();
                    if matches!(name.as_str(), "i" | "ir" | "include" | "include_relative") {
                        let argument = String::from_utf8_lossy(&self.b[name_end..end]).trim().to_owned();
                        let argument = argument.trim_matches('\'').to_owned();
                        self.includes.push((start..end, argument, name == "ir" || name == "include_relative"));
                    }
                    for byte in &mut self.b[start..end] {
                        *byte = b' ';
                    }
                    self.meta_commands += 1;
                    self.i = end;
                    if SENDING_META_COMMANDS.contains(&name.as_str()) {
                        self.finish(&mut st, start);
                    }
                }
                b'[' | b']' => {
                    st.first_token.get_or_insert(self.i);
                    self.brackets = if c == b'[' { self.brackets + 1 } else { self.brackets.saturating_sub(1) };
                    self.i += 1;
                }
                b':' if self.psql && self.brackets == 0 => {
                    st.first_token.get_or_insert(self.i);
                    if !self.psql_variable() {
                        self.i += 1;
                    }
                }
                c if is_ident_start(c) => {
                    st.first_token.get_or_insert(self.i);
                    let start = self.i;
                    while self.i < self.b.len() && is_ident_char(self.b[self.i]) {
                        self.i += 1;
                    }
                    // `E'...'` strings: leave the quote to the string branch.
                    let word = String::from_utf8_lossy(&self.b[start..self.i]).to_ascii_lowercase();
                    self.identifier(&mut st, &word);
                }
                c if c.is_ascii_whitespace() => self.i += 1,
                _ => {
                    st.first_token.get_or_insert(self.i);
                    self.i += 1;
                }
            }
        }
        let end = self.b.len();
        self.finish(&mut st, end);
    }

    /// A psql variable at `self.i` (`:name`, `:'name'`, `:"name"`, not `::` or `:=`): replaced by
    /// a placeholder of the same length and kind (`_name`, `'name' `, `"name" `), and skipped.
    /// `false` when there is none.
    fn psql_variable(&mut self) -> bool {
        let start = self.i;
        if start > 0 && self.b[start - 1] == b':' {
            return false;
        }
        let (quote, name_start) = match self.b.get(start + 1) {
            Some(&q @ (b'\'' | b'"')) => (Some(q), start + 2),
            Some(&c) if is_ident_start(c) => (None, start + 1),
            _ => return false,
        };
        let mut end = name_start;
        while end < self.b.len() && (self.b[end].is_ascii_alphanumeric() || self.b[end] == b'_' || self.b[end] >= 0x80)
        {
            end += 1;
        }
        if end == name_start {
            return false;
        }
        let name = String::from_utf8_lossy(&self.b[name_start..end]).into_owned();
        match quote {
            Some(q) => {
                if self.b.get(end) != Some(&q) {
                    return false;
                }
                end += 1;
                // `:'name'` becomes `'name' `, `:"name"` becomes `"name" `: the same length.
                self.b.copy_within(start + 1..end, start);
                self.b[end - 1] = b' ';
            }
            None => {
                // `_name`: an identifier, which the grammar takes wherever psql could put text.
                self.b[start] = b'_';
                for byte in &mut self.b[start + 1..end] {
                    if *byte >= 0x80 {
                        *byte = b'_';
                    }
                }
            }
        }
        self.variables.push((start..end, name));
        self.i = end;
        true
    }

    fn identifier(&mut self, st: &mut Statement, word: &str) {
        if st.words.len() < 8 {
            st.words.push(word.to_owned());
        }
        if st.identifier_count == 0 {
            st.identifiers = [0; 4];
        }
        if matches!(word, "create" | "function" | "procedure" | "or" | "replace") && st.identifier_count < 4 {
            st.identifiers[st.identifier_count] = word.as_bytes()[0];
        }
        st.identifier_count += 1;
        let ids = st.identifiers;
        let routine = ids[0] == b'c'
            && (ids[1] == b'f'
                || ids[1] == b'p'
                || (ids[1] == b'o' && ids[2] == b'r' && (ids[3] == b'f' || ids[3] == b'p')));
        if routine && st.paren_depth == 0 {
            match word {
                "begin" => st.begin_depth += 1,
                "case" if st.begin_depth >= 1 => st.begin_depth += 1,
                "end" => st.begin_depth = st.begin_depth.saturating_sub(1),
                _ => {}
            }
        }
    }

    fn skip_quoted(&mut self, quote: u8, escapes: bool) {
        self.i += 1;
        while self.i < self.b.len() {
            let c = self.b[self.i];
            if escapes && c == b'\\' {
                self.i += 2;
                continue;
            }
            self.i += 1;
            if c == quote {
                if self.b.get(self.i) == Some(&quote) {
                    self.i += 1;
                } else {
                    return;
                }
            }
        }
        self.i = self.b.len();
    }

    /// A dollar-quoted string (`$$...$$`, `$tag$...$tag$`), or a lone `$` (a parameter `$1`).
    fn dollar(&mut self) {
        let start = self.i;
        let preceded_by_ident = start > 0 && is_ident_char(self.b[start - 1]);
        let mut end = start + 1;
        if end < self.b.len() && is_ident_start(self.b[end]) {
            while end < self.b.len() && is_ident_char(self.b[end]) && self.b[end] != b'$' {
                end += 1;
            }
        }
        if preceded_by_ident || self.b.get(end) != Some(&b'$') {
            self.i += 1;
            return;
        }
        let tag = self.b[start..=end].to_vec();
        let body = end + 1;
        match self.b[body..].windows(tag.len()).position(|w| w == tag.as_slice()) {
            Some(k) => self.i = body + k + tag.len(),
            None => self.i = self.b.len(),
        }
    }

    fn finish(&mut self, st: &mut Statement, end: usize) {
        if let Some(first_token) = st.first_token {
            self.pieces.push(Piece { range: st.start..end, first_token, nesting: st.nesting });
            let copy_from_stdin = st.words.first().is_some_and(|w| w == "copy")
                && st.words.windows(2).any(|w| w[0] == "from" && w[1] == "stdin");
            if copy_from_stdin && self.psql {
                self.skip_copy_data();
            }
        }
        *st = Statement { start: self.i, ..Statement::default() };
        self.brackets = 0;
    }

    /// Blanks the lines after `COPY ... FROM stdin;` up to and including the `\.` line. Without
    /// a `\.` line there is no data in the file (it came from elsewhere): nothing is blanked.
    fn skip_copy_data(&mut self) {
        // The data starts on the line after the statement.
        let mut line_start = self.i;
        while line_start < self.b.len() && self.b[line_start] != b'\n' {
            line_start += 1;
        }
        let data_start = line_start + 1;
        let mut lines = 0;
        let mut start = data_start;
        let end = loop {
            if start >= self.b.len() || start >= self.no_copy_end_from {
                // Blanking and variable placeholders never write a backslash, so a part of the
                // text that held no `\.` line still holds none.
                self.no_copy_end_from = self.no_copy_end_from.min(data_start);
                return;
            }
            let line_end = self.b[start..].iter().position(|&c| c == b'\n').map_or(self.b.len(), |k| start + k);
            lines += 1;
            if self.b[start..line_end].trim_ascii() == b"\\." {
                break line_end;
            }
            start = line_end + 1;
        };
        for byte in &mut self.b[data_start..end] {
            if *byte != b'\n' {
                *byte = b' ';
            }
        }
        self.copy_data_lines += lines;
        self.i = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(text: &str) -> Vec<String> {
        let script = split(text, true);
        script.pieces.iter().map(|p| script.text[p.first_token..p.range.end].trim_end().to_owned()).collect()
    }

    #[test]
    fn semicolons_inside_quotes_comments_and_bodies_do_not_split() {
        let sql = "SELECT ';' -- ;\n; /* ; /* ; */ */ SELECT $x$;$x$; SELECT \";\"; SELECT E'\\';'";
        assert_eq!(pieces(sql), vec!["SELECT ';' -- ;", "SELECT $x$;$x$", "SELECT \";\"", "SELECT E'\\';'"]);
    }

    #[test]
    fn begin_atomic_bodies_hold_semicolons() {
        let sql = "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT CASE WHEN true THEN 2 END; END; SELECT 3;";
        let got = pieces(sql);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].ends_with("END"));
    }

    #[test]
    fn rules_with_parenthesized_actions_hold_semicolons() {
        assert_eq!(pieces("CREATE RULE r AS ON INSERT TO t DO (SELECT 1; SELECT 2); SELECT 3").len(), 2);
    }

    #[test]
    fn meta_commands_are_blanked_counted_and_gset_ends_a_statement() {
        let sql = "\\set x 1\nSELECT 1 AS a \\gset\nSELECT :'x';\n  \\d t\n";
        let script = split(sql, true);
        assert_eq!(script.meta_commands, 3);
        assert_eq!(script.text.len(), sql.len());
        assert!(!script.text.contains('\\'));
        // The psql variable is replaced by a string of the same length.
        assert_eq!(pieces(sql), vec!["SELECT 1 AS a", "SELECT 'x'"]);
    }

    #[test]
    fn psql_variables_become_placeholders_of_their_kind_and_includes_are_recorded() {
        let sql = "CREATE ROLE :role PASSWORD :'pass';\nSELECT * FROM :\"table\" WHERE a::text = b AND c[1:n] = d;\n\\ir other.sql\n";
        let script = split(sql, true);
        assert_eq!(script.text.len(), sql.len());
        let names: Vec<&str> = script.variables.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(names, ["role", "pass", "table"]);
        assert!(script.text.starts_with("CREATE ROLE _role PASSWORD 'pass' ;\nSELECT * FROM \"table\"  WHERE a::text"));
        assert_eq!(script.includes.len(), 1);
        assert_eq!((script.includes[0].1.as_str(), script.includes[0].2), ("other.sql", true));
        assert!(split(":x", false).variables.is_empty());
    }

    #[test]
    fn copy_data_is_skipped() {
        let sql = "COPY t FROM stdin;\n1\tx;y\n2\tz\n\\.\nSELECT 1;";
        let script = split(sql, true);
        assert_eq!(script.copy_data_lines, 3);
        assert_eq!(pieces(sql), vec!["COPY t FROM stdin", "SELECT 1"]);
    }

    #[test]
    fn copy_without_a_terminator_skips_nothing() {
        let sql = "COPY t FROM stdin;\n-- 1\tx\nSELECT 1;";
        let script = split(sql, true);
        assert_eq!(script.copy_data_lines, 0);
        assert_eq!(pieces(sql), vec!["COPY t FROM stdin", "SELECT 1"]);
    }

    #[test]
    fn copies_without_data_are_statements_and_a_later_copy_still_finds_its_data() {
        // The first COPY finds no `\.` after it; the later ones must not search again, and must
        // answer the same: nothing is data, every line is a statement.
        let sql = "COPY a FROM stdin;\nSELECT 1;\nCOPY b FROM stdin;\nSELECT 2;\nCOPY c FROM stdin;\n";
        let script = split(sql, true);
        assert_eq!(script.copy_data_lines, 0);
        assert_eq!(
            pieces(sql),
            vec!["COPY a FROM stdin", "SELECT 1", "COPY b FROM stdin", "SELECT 2", "COPY c FROM stdin"]
        );
        // A `\.` after the first COPY is found by every COPY before it.
        let sql = "COPY a FROM stdin;\nCOPY b FROM stdin;\n1\n\\.\nSELECT 1;";
        let script = split(sql, true);
        assert_eq!(script.copy_data_lines, 3);
        assert_eq!(pieces(sql), vec!["COPY a FROM stdin", "SELECT 1"]);
    }

    #[test]
    fn nul_characters_become_spaces() {
        let script = split("SELECT\0 1;", true);
        assert_eq!(script.nuls, vec![6]);
        assert_eq!(&*script.text, "SELECT  1;");
    }

    #[test]
    fn unterminated_things_end_at_the_end() {
        for sql in ["SELECT 'abc", "SELECT $a$ x", "SELECT /* x", "SELECT \"x", "\\", "$", "E'\\"] {
            let script = split(sql, true);
            assert!(script.pieces.len() <= 1, "{sql:?}");
        }
    }
}

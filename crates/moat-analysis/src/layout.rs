//! Migration tools' file layouts and markers: which parts of a migration file run on the way up.
//!
//! moat applies migrations forwards only, so the analysis checks what runs on the way up; the
//! down parts are read for syntax only. Formats are recognized by file name (diesel's
//! `<folder>/up.sql` and `down.sql`, sqlx's `NNNN_name.up.sql` and `.down.sql`, Flyway's
//! `V1__name.sql`, `R__name.sql` and undo `U1__name.sql`) or by markers in the text (goose's
//! `-- +goose Up` / `Down` with `StatementBegin` / `StatementEnd`, dbmate's `-- migrate:up` /
//! `-- migrate:down`). Masking keeps every byte offset: what does not run becomes spaces.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

/// The migration tool whose layout a file follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MigrationFormat {
    /// A plain SQL script (moat's own layout).
    Plain,
    /// goose: `-- +goose Up` / `-- +goose Down` sections.
    Goose,
    /// dbmate: `-- migrate:up` / `-- migrate:down` sections.
    Dbmate,
    /// diesel: a folder per migration with `up.sql` and `down.sql`.
    Diesel,
    /// sqlx (reversible): `NNNN_name.up.sql` and `NNNN_name.down.sql`.
    Sqlx,
    /// Flyway: `V1__name.sql`, `R__name.sql`, undo `U1__name.sql`.
    Flyway,
}

impl MigrationFormat {
    /// The tool's name, as the summary prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            MigrationFormat::Plain => "plain SQL",
            MigrationFormat::Goose => "goose",
            MigrationFormat::Dbmate => "dbmate",
            MigrationFormat::Diesel => "diesel",
            MigrationFormat::Sqlx => "sqlx",
            MigrationFormat::Flyway => "Flyway",
        }
    }
}

impl fmt::Display for MigrationFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A migration file split by direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Layout<'a> {
    /// The format recognized.
    pub(crate) format: MigrationFormat,
    /// The text that runs on the way up, same length as the file (the file itself when all of
    /// it runs on the way up).
    pub(crate) up: Cow<'a, str>,
    /// The text that runs on the way down, same length as the file, if any.
    pub(crate) down: Option<String>,
}

/// Recognizes the format of the migration file `file` (a path with `/` separators) and splits it.
pub(crate) fn read<'a>(file: &str, text: &'a str) -> Layout<'a> {
    let base = file.rsplit('/').next().unwrap_or(file);
    let whole_down = |format| Layout {
        format,
        up: Cow::Owned(blank(text, std::slice::from_ref(&(0..text.len())))),
        down: Some(text.to_owned()),
    };
    let whole_up = |format| Layout { format, up: Cow::Borrowed(text), down: None };
    if base == "up.sql" {
        return whole_up(MigrationFormat::Diesel);
    }
    if base == "down.sql" {
        return whole_down(MigrationFormat::Diesel);
    }
    if base.ends_with(".up.sql") {
        return whole_up(MigrationFormat::Sqlx);
    }
    if base.ends_with(".down.sql") {
        return whole_down(MigrationFormat::Sqlx);
    }
    if let Some(kind) = flyway_kind(base) {
        return if kind == 'U' { whole_down(MigrationFormat::Flyway) } else { whole_up(MigrationFormat::Flyway) };
    }
    sections(text).unwrap_or_else(|| whole_up(MigrationFormat::Plain))
}

/// `V1__x.sql`, `V1_2__x.sql`, `R__x.sql`, `U1__x.sql`: the prefix letter.
fn flyway_kind(base: &str) -> Option<char> {
    let (prefix, rest) = base.split_once("__")?;
    if rest.is_empty() || !base.ends_with(".sql") {
        return None;
    }
    let mut chars = prefix.chars();
    let kind = chars.next()?;
    let version: &str = chars.as_str();
    match kind {
        'R' if version.is_empty() => Some('R'),
        'V' | 'U' if !version.is_empty() && version.chars().all(|c| c.is_ascii_digit() || c == '_' || c == '.') => {
            Some(kind)
        }
        _ => None,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Marker {
    Up,
    Down,
    StatementEnd,
    Other,
}

/// A goose or dbmate marker comment on a line.
fn marker(line: &str) -> Option<(MigrationFormat, Marker)> {
    let comment = line.trim().strip_prefix("--")?.trim();
    if let Some(rest) = comment.strip_prefix("+goose") {
        let word = rest.split_whitespace().next().unwrap_or("").to_ascii_lowercase();
        let marker = match word.as_str() {
            "up" => Marker::Up,
            "down" => Marker::Down,
            "statementend" => Marker::StatementEnd,
            _ => Marker::Other,
        };
        return Some((MigrationFormat::Goose, marker));
    }
    let rest = comment.strip_prefix("migrate:")?;
    let marker = match rest.split_whitespace().next().unwrap_or("") {
        "up" => Marker::Up,
        "down" => Marker::Down,
        _ => return None,
    };
    Some((MigrationFormat::Dbmate, marker))
}

/// goose and dbmate files: the sections after `Down` markers are down; goose's `StatementEnd`
/// ends a statement (a block needs no trailing semicolon). `None` without an up marker.
fn sections(text: &str) -> Option<Layout<'_>> {
    let mut format = None;
    let mut down: Vec<Range<usize>> = Vec::new();
    let mut ends: Vec<usize> = Vec::new();
    let mut down_start: Option<usize> = None;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        let Some((tool, marker)) = marker(line) else { continue };
        if format.is_some_and(|f| f != tool) {
            continue;
        }
        match marker {
            Marker::Up => {
                format = Some(tool);
                if let Some(from) = down_start.take() {
                    down.push(from..start);
                }
            }
            Marker::Down if format.is_some() && down_start.is_none() => down_start = Some(offset),
            Marker::StatementEnd => ends.push(start + (line.len() - line.trim_start().len())),
            _ => {}
        }
    }
    let format = format?;
    if let Some(from) = down_start {
        down.push(from..text.len());
    }
    let end_statements = |mut masked: String| {
        for &at in &ends {
            // The marker line becomes `;` and spaces: the block ends there, semicolon or not.
            let line_end = masked[at..].find('\n').map_or(masked.len(), |i| at + i);
            masked.replace_range(at..line_end, &format!(";{}", " ".repeat(line_end - at - 1)));
        }
        masked
    };
    let up_sections: Vec<Range<usize>> = complement(&down, text.len());
    Some(Layout {
        format,
        up: Cow::Owned(end_statements(blank(text, &down))),
        down: (!down.is_empty()).then(|| end_statements(blank(text, &up_sections))),
    })
}

/// The ranges of `0..len` not in `ranges` (sorted, disjoint).
fn complement(ranges: &[Range<usize>], len: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut at = 0;
    for r in ranges {
        if r.start > at {
            out.push(at..r.start);
        }
        at = r.end;
    }
    if at < len {
        out.push(at..len);
    }
    out
}

/// `text` with `ranges` replaced by spaces (newlines kept), so that offsets stay.
fn blank(text: &str, ranges: &[Range<usize>]) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for r in ranges {
        for byte in &mut bytes[r.clone()] {
            if *byte != b'\n' {
                *byte = b' ';
            }
        }
    }
    // Whole lines (or the whole text) were blanked, so no character was cut.
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Go-template placeholders (`{{ .Name }}`, `{{ index .Options "x" }}`, `{{- if ... }}`) on
/// one line: their ranges. Array literals (`'{{1,2},{3,4}}'`) are not placeholders.
pub(crate) fn template_placeholders(text: &str) -> Vec<Range<usize>> {
    const ACTIONS: &[&str] =
        &["if", "else", "end", "range", "with", "template", "define", "block", "index", "printf", "print", "len"];
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(k) = text[from..].find("{{") {
        let start = from + k;
        let Some(len) = text[start + 2..].find("}}") else { break };
        let end = start + 2 + len + 2;
        let inner = &text[start + 2..end - 2];
        let action = inner.trim_matches(|c: char| c == '-' || c.is_whitespace());
        let first = action.split(|c: char| !(c.is_alphanumeric() || c == '_')).next().unwrap_or("");
        let placeholder = !inner.contains('\n')
            && (action.starts_with('.') || action.starts_with('$') || ACTIONS.contains(&first))
            && !action.is_empty();
        if placeholder {
            out.push(start..end);
            from = end;
        } else {
            from = start + 2;
        }
    }
    out
}

/// `text` with `placeholders` replaced by identifiers of the same length (`_____`).
pub(crate) fn fill_placeholders(text: &str, placeholders: &[Range<usize>]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for r in placeholders {
        out.push_str(&text[at..r.start]);
        out.push_str(&"_".repeat(r.len()));
        at = r.end;
    }
    out.push_str(&text[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_recognized_by_name_and_markers() {
        let plain = "CREATE TABLE t (id int);";
        for (file, format, down) in [
            ("migrations/2024-01-01-000000_create/up.sql", MigrationFormat::Diesel, false),
            ("migrations/2024-01-01-000000_create/down.sql", MigrationFormat::Diesel, true),
            ("migrations/0001_create.up.sql", MigrationFormat::Sqlx, false),
            ("migrations/0001_create.down.sql", MigrationFormat::Sqlx, true),
            ("migrations/V1__create.sql", MigrationFormat::Flyway, false),
            ("migrations/V1_2__create.sql", MigrationFormat::Flyway, false),
            ("migrations/R__views.sql", MigrationFormat::Flyway, false),
            ("migrations/U1__create.sql", MigrationFormat::Flyway, true),
            ("migrations/0001_create.sql", MigrationFormat::Plain, false),
            ("migrations/Vx__create.sql", MigrationFormat::Plain, false),
        ] {
            let layout = read(file, plain);
            assert_eq!((layout.format, layout.down.is_some()), (format, down), "{file}");
            assert_eq!(layout.up.len(), plain.len());
            assert_eq!(layout.up.trim().is_empty(), down, "{file}");
        }
    }

    #[test]
    fn goose_down_sections_are_masked_and_statement_end_ends_a_statement() {
        let text = "-- +goose Up\n-- +goose StatementBegin\nCREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$\n-- +goose StatementEnd\nCREATE TABLE t (id int);\n\n-- +goose Down\nDROP TABLE t;\n";
        let layout = read("0001_x.sql", text);
        assert_eq!(layout.format, MigrationFormat::Goose);
        assert_eq!(layout.up.len(), text.len());
        assert!(!layout.up.contains("DROP TABLE"));
        assert!(layout.up.contains("$$\n;"), "{}", layout.up);
        let down = layout.down.expect("down");
        assert!(down.contains("DROP TABLE t;") && !down.contains("CREATE TABLE"));
    }

    #[test]
    fn dbmate_sections_are_recognized() {
        let text = "-- migrate:up\nCREATE TABLE t (id int);\n-- migrate:down\nDROP TABLE t;\n";
        let layout = read("20240101_x.sql", text);
        assert_eq!(layout.format, MigrationFormat::Dbmate);
        assert!(layout.up.contains("CREATE TABLE") && !layout.up.contains("DROP"));
    }

    #[test]
    fn template_placeholders_are_found_but_array_literals_are_not() {
        let text = "CREATE SCHEMA {{ index .Options \"Namespace\" }};\nSELECT '{{1,2},{3,4}}'::int[], '{{a,b}}'::text[];\n{{- if .X }}\n";
        let found: Vec<&str> = template_placeholders(text).into_iter().map(|r| &text[r]).collect();
        assert_eq!(found, ["{{ index .Options \"Namespace\" }}", "{{- if .X }}"]);
        let filled = fill_placeholders(text, &template_placeholders(text));
        assert_eq!(filled.len(), text.len());
        assert!(filled.starts_with("CREATE SCHEMA ______"));
    }
}

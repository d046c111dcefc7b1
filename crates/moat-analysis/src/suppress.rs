//! Suppressions: `-- moat:allow <rule>[, <rule>] -- <reason>` on the line before a statement (or
//! `// moat:allow ...` above the Rust call that holds an embedded query) silences those rules for
//! that statement. The reason is required.

use std::ops::Range;

use moat_core::text::LineIndex;

use crate::fragment::OffsetMap;

/// One `moat:allow` comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Suppression {
    /// The rules it names.
    pub(crate) rules: Vec<String>,
    /// Why, if given.
    pub(crate) reason: Option<String>,
    /// The comment, in the file.
    pub(crate) span: Range<usize>,
    /// The 1-based file line of the first code after the comment: the statement it applies to
    /// starts there (or a finding sits on it).
    pub(crate) target_line: Option<u32>,
    /// The file it is in, among those a script reads (0: the script's own; then the files it
    /// includes).
    pub(crate) segment: usize,
}

/// Where an offset is: the file (0 for the script's own, then the files it includes) and its
/// 1-based line there.
pub(crate) trait Lines {
    fn line_of(&self, offset: usize) -> (usize, u32);
}

impl Lines for LineIndex<'_> {
    fn line_of(&self, offset: usize) -> (usize, u32) {
        (0, self.line_col(offset).line)
    }
}

const DIRECTIVE: &str = "moat:allow";

/// Reads the directive after a comment marker: `moat:allow a, b -- reason`.
fn directive(comment: &str) -> Option<(Vec<String>, Option<String>)> {
    let rest = comment.trim_start().strip_prefix(DIRECTIVE)?;
    if !rest.is_empty() && !rest.starts_with(char::is_whitespace) {
        return None;
    }
    let (rules, reason) = match rest.find("--") {
        Some(i) => (&rest[..i], Some(rest[i + 2..].trim()).filter(|r| !r.is_empty())),
        None => (rest, None),
    };
    let rules = rules.split([',', ' ', '\t']).map(str::trim).filter(|r| !r.is_empty()).map(str::to_owned).collect();
    Some((rules, reason.map(str::to_owned)))
}

/// `-- moat:allow` comments in SQL text, whose offsets `map` takes to the file.
pub(crate) fn in_sql(text: &str, map: &OffsetMap, file: &impl Lines) -> Vec<Suppression> {
    if !text.contains(DIRECTIVE) {
        return Vec::new();
    }
    let lines: Vec<(usize, &str)> = line_spans(text);
    let mut out = Vec::new();
    for (k, &(start, line)) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let Some(comment) = trimmed.strip_prefix("--") else { continue };
        let Some((rules, reason)) = directive(comment) else { continue };
        let comment_start = start + (line.len() - trimmed.len());
        let target = lines[k + 1..]
            .iter()
            .find(|(_, l)| {
                let t = l.trim();
                !t.is_empty() && !t.starts_with("--")
            })
            .map(|&(s, l)| file.line_of(map.map(s + (l.len() - l.trim_start().len()))).1);
        let span = map.map_range(comment_start..start + line.trim_end().len());
        out.push(Suppression { rules, reason, segment: file.line_of(span.start).0, span, target_line: target });
    }
    out
}

/// `// moat:allow` comments in Rust source.
pub(crate) fn in_rust(source: &str) -> Vec<Suppression> {
    if !source.contains(DIRECTIVE) {
        return Vec::new();
    }
    let lines = line_spans(source);
    let mut out = Vec::new();
    for (k, &(start, line)) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let Some(comment) = trimmed.strip_prefix("//") else { continue };
        let Some((rules, reason)) = directive(comment.trim_start_matches('/')) else { continue };
        let comment_start = start + (line.len() - trimmed.len());
        let target = lines[k + 1..]
            .iter()
            .position(|(_, l)| {
                let t = l.trim();
                !t.is_empty() && !t.starts_with("//")
            })
            .map(|p| (k + 1 + p + 1) as u32);
        out.push(Suppression {
            rules,
            reason,
            span: comment_start..start + line.trim_end().len(),
            target_line: target,
            segment: 0,
        });
    }
    out
}

/// Each line's start offset and text (without the newline).
fn line_spans(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start = 0;
    for line in text.split('\n') {
        out.push((start, line.strip_suffix('\r').unwrap_or(line)));
        start += line.len() + 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_name_rules_and_a_reason() {
        assert_eq!(
            directive(" moat:allow cross-module-reference, dynamic-sql -- legacy report"),
            Some((vec!["cross-module-reference".into(), "dynamic-sql".into()], Some("legacy report".into())))
        );
        assert_eq!(directive(" moat:allow dynamic-sql"), Some((vec!["dynamic-sql".into()], None)));
        assert_eq!(directive(" moat:allow dynamic-sql --  "), Some((vec!["dynamic-sql".into()], None)));
        assert_eq!(directive(" moat:allowed x"), None);
        assert_eq!(directive(" see moat:allow"), None);
    }

    #[test]
    fn a_suppression_targets_the_next_code_line() {
        let text = "SELECT 1;\n-- moat:allow dynamic-sql -- why\n-- another comment\n\nDO $$ BEGIN END $$;\n";
        let index = LineIndex::new(text);
        let found = in_sql(text, &OffsetMap::identity(0), &index);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].target_line, Some(5));
        assert_eq!(&text[found[0].span.clone()], "-- moat:allow dynamic-sql -- why");
    }
}

//! rustc-style diagnostics.

use annotate_snippets::{AnnotationKind, Group, Level, Renderer, Snippet};
use moat_core::findings::{Finding, Severity};
use moat_core::text::LineIndex;

use super::Sources;

/// Renders findings as rustc does, styled with ANSI colours (which `anstream` strips when colour
/// is off): `error[rule]: message`, ` --> file:line:column`, the SQL lines with a caret under the
/// span, and `= help: ...`.
pub fn human(findings: &[Finding], sources: &Sources) -> String {
    let renderer = Renderer::styled();
    let mut out = String::new();
    for finding in findings {
        let level = match finding.severity {
            Severity::Error => Level::ERROR,
            Severity::Warning => Level::WARNING,
        };
        let title = level.primary_title(finding.message.as_str()).id(finding.rule.as_str());
        let mut group = Group::with_title(title);
        let located = finding.file.as_deref().and_then(|file| {
            let text = sources.get(file)?;
            Some((file, text.as_str(), finding.span.clone()?))
        });
        match located {
            Some((file, text, span)) => group = group.element(snippet(file, text, span)),
            None => {
                // A finding without a snippet (a catalog finding): where it is, in words.
                let mut notes = Vec::new();
                if let Some(file) = &finding.file {
                    notes.push(format!("in {file}:{}:{}", finding.line.unwrap_or(1), finding.column.unwrap_or(1)));
                }
                if let Some(object) = &finding.object {
                    notes.push(format!("object `{object}`"));
                }
                if let Some(module) = &finding.module {
                    notes.push(format!("module `{module}`"));
                }
                if let Some(database) = &finding.database {
                    notes.push(format!("in database `{database}`"));
                }
                if !notes.is_empty() {
                    group = group.element(Level::NOTE.message(notes.join(", ")));
                }
            }
        }
        if let Some(help) = &finding.help {
            group = group.element(Level::HELP.message(help.as_str()));
        }
        out.push_str(&renderer.render(&[group]));
        out.push_str("\n\n");
    }
    out
}

/// The lines of `text` that `span` covers, numbered as in the file, with the span marked.
fn snippet<'a>(
    file: &'a str,
    text: &'a str,
    span: std::ops::Range<usize>,
) -> Snippet<'a, annotate_snippets::Annotation<'a>> {
    let index = LineIndex::new(text);
    let start = span.start.min(text.len());
    let end = span.end.clamp(start, text.len());
    let first = index.line_col(start).line;
    let last = index.line_col(end.saturating_sub(1).max(start)).line;
    let from = index.line_start(first).unwrap_or(0);
    let to = index.line_start(last + 1).map_or(text.len(), |next| next.saturating_sub(1)).max(from);
    let lines = &text[from..to];
    // Control characters would garble a terminal; the renderer normalizes tabs itself.
    let mut local = start - from..end - from;
    if local.start > lines.len() {
        local = lines.len()..lines.len();
    }
    Snippet::source(lines)
        .line_start(first as usize)
        .path(file)
        .annotation(AnnotationKind::Primary.span(local.start..local.end.min(lines.len())))
}

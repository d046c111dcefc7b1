//! Findings as people and tools read them: rustc-style diagnostics with the SQL snippet and a
//! caret under the offending name (`human`), PRODUCT.md's JSON document (`json`), SARIF 2.1.0 for
//! code-scanning upload (`sarif`) and GitHub workflow commands (`github`).
//!
//! Every renderer takes the findings and, for findings in files, the files' text by the path the
//! finding carries; findings without a file (catalog findings of `moat audit`) render without a
//! snippet. Colour is written as ANSI and left to `anstream` to keep or strip (`--color`,
//! `NO_COLOR`, non-tty).

mod github;
mod human;
mod sarif;

use std::collections::BTreeMap;

use moat_core::findings::{Finding, Summary};

pub use github::github;
pub use human::human;
pub use sarif::{RuleDescription, sarif};

/// The text of each file findings point into, by the path findings carry.
pub type Sources = BTreeMap<String, String>;

/// PRODUCT.md's findings document: `{"version": 1, "findings": [...], "summary": {...}}`.
pub fn json(findings: &[Finding], files: usize) -> serde_json::Value {
    serde_json::json!({
        "version": 1,
        "findings": findings,
        "summary": Summary::of(findings, files),
    })
}

/// The module-to-module table of `moat check`: how many foreign keys, references and function
/// calls cross from each module to each other (before suppressions and the baseline).
pub fn coupling(rows: &[moat_analysis::CouplingRow]) -> String {
    let from_width = rows.iter().map(|r| r.from.len()).max().unwrap_or(0).max("from".len());
    let to_width = rows.iter().map(|r| r.to.len()).max().unwrap_or(0).max("to".len());
    let mut out = String::from("coupling between modules (before suppressions and the baseline):\n");
    out.push_str(&format!(
        "  {:from_width$}    {:to_width$}  {:>12}  {:>10}  {:>14}\n",
        "from", "to", "foreign keys", "references", "function calls"
    ));
    for r in rows {
        out.push_str(&format!(
            "  {:from_width$} -> {:to_width$}  {:>12}  {:>10}  {:>14}\n",
            r.from, r.to, r.foreign_keys, r.references, r.function_calls
        ));
    }
    out.push('\n');
    out
}

/// The 1-based end line and column of a finding's span, when its file's text is known.
fn end_position(finding: &Finding, sources: &Sources) -> Option<(u32, u32)> {
    let text = sources.get(finding.file.as_deref()?)?;
    let span = finding.span.as_ref()?;
    let end = span.end.max(span.start).min(text.len());
    let position = moat_core::text::LineIndex::new(text).line_col(end);
    Some((position.line, position.column))
}

#[cfg(test)]
mod tests;

//! GitHub Actions workflow commands: each finding becomes an annotation on the pull request.

use moat_core::findings::{Finding, Severity};

use super::{Sources, end_position};

/// One `::error file=...,line=...,col=...,title=...::message` line per finding (`::warning` for
/// warnings), with the help after the message.
pub fn github(findings: &[Finding], sources: &Sources) -> String {
    let mut out = String::new();
    for finding in findings {
        let command = match finding.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let mut properties = Vec::new();
        if let Some(file) = &finding.file {
            properties.push(format!("file={}", property(file)));
            if let Some(line) = finding.line {
                properties.push(format!("line={line}"));
            }
            if let Some(column) = finding.column {
                properties.push(format!("col={column}"));
            }
            if let Some((line, column)) = end_position(finding, sources)
                && Some(line) == finding.line
            {
                properties.push(format!("endColumn={column}"));
            }
        }
        properties.push(format!("title={}", property(&format!("moat {}", finding.rule))));
        let mut message = finding.message.clone();
        if finding.file.is_none()
            && let Some(object) = &finding.object
        {
            message.push_str(&format!(" (`{object}`)"));
        }
        if let Some(database) = &finding.database {
            message.push_str(&format!(" in database `{database}`"));
        }
        if let Some(help) = &finding.help {
            message.push_str("\nhelp: ");
            message.push_str(help);
        }
        out.push_str(&format!("::{command} {}::{}\n", properties.join(","), data(&message)));
    }
    out
}

/// Escapes a command's message, as the Actions toolkit does.
fn data(text: &str) -> String {
    text.replace('%', "%25").replace('\r', "%0D").replace('\n', "%0A")
}

/// Escapes a command's property value.
fn property(text: &str) -> String {
    data(text).replace(':', "%3A").replace(',', "%2C")
}

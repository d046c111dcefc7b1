//! Findings: what `moat check` and `moat audit` report. Findings are data, not errors.

use serde::{Deserialize, Serialize};

use crate::rules::RuleId;

/// How bad a finding is. Errors fail the command (exit code 1); warnings do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Fails the command.
    Error,
    /// Reported, does not fail the command.
    Warning,
}

impl Severity {
    /// `"error"` or `"warning"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

/// One thing `moat check` or `moat audit` found.
///
/// `file`, `line` and `column` (1-based) are present for findings in files; `object` names the
/// database object for catalog findings (and the referenced object for SQL findings).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// The rule, serialized as its id (such as `"cross-module-reference"`).
    pub rule: RuleId,
    /// Error or warning.
    pub severity: Severity,
    /// The module the finding belongs to, when there is one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub module: Option<String>,
    /// Path of the file, relative to the manifest's directory, with `/` separators.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub file: Option<String>,
    /// 1-based line.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub line: Option<u32>,
    /// 1-based column, in characters.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub column: Option<u32>,
    /// The database object concerned, such as `patients.patients`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub object: Option<String>,
    /// The manifest's `[databases]` key of the database the object is in, when it is not the
    /// main database.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub database: Option<String>,
    /// What is wrong, one sentence starting lowercase.
    pub message: String,
    /// How to fix it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub help: Option<String>,
    /// Byte range in the file, for rendering a snippet; not part of the JSON contract.
    #[serde(skip)]
    pub span: Option<std::ops::Range<usize>>,
}

impl Finding {
    /// A finding with a rule, severity and message; the other fields start empty.
    pub fn new(rule: RuleId, severity: Severity, message: impl Into<String>) -> Self {
        Self {
            rule,
            severity,
            module: None,
            file: None,
            line: None,
            column: None,
            object: None,
            database: None,
            message: message.into(),
            help: None,
            span: None,
        }
    }

    /// Sets the module.
    pub fn module(mut self, module: impl Into<String>) -> Self {
        self.module = Some(module.into());
        self
    }

    /// Sets the object.
    pub fn object(mut self, object: impl Into<String>) -> Self {
        self.object = Some(object.into());
        self
    }

    /// Sets the help line.
    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Sets the file and the position of `span` in `text` (the file's contents).
    pub fn at(mut self, file: impl Into<String>, text: &str, span: std::ops::Range<usize>) -> Self {
        let position = crate::text::LineIndex::new(text).line_col(span.start);
        self.file = Some(file.into());
        self.line = Some(position.line);
        self.column = Some(position.column);
        self.span = Some(span);
        self
    }

    /// The key a baseline matches this finding by: rule, module, file and object, never a line.
    pub fn baseline_key(&self) -> crate::baseline::BaselineKey {
        crate::baseline::BaselineKey {
            rule: self.rule.as_str().to_owned(),
            module: self.module.clone(),
            file: self.file.clone(),
            object: self.object.clone().or_else(|| Some(self.message.clone()).filter(|_| self.file.is_none())),
        }
    }
}

/// Counts of a report, as in the JSON contract.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Findings of severity error.
    pub errors: usize,
    /// Findings of severity warning.
    pub warnings: usize,
    /// Files read (check) or `0` (audit).
    pub files: usize,
}

impl Summary {
    /// Counts the findings of a report.
    pub fn of(findings: &[Finding], files: usize) -> Self {
        let errors = findings.iter().filter(|f| f.severity == Severity::Error).count();
        Self { errors, warnings: findings.len() - errors, files }
    }
}

/// Sorts findings by file, position, rule, then object, so that output is stable.
pub fn sort(findings: &mut [Finding]) {
    findings.sort_by(|a, b| {
        (&a.file, a.line, a.column, &a.rule, &a.object, &a.message)
            .cmp(&(&b.file, b.line, b.column, &b.rule, &b.object, &b.message))
    });
}

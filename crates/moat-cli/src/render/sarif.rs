//! SARIF 2.1.0, the format GitHub code scanning (and most CI dashboards) upload.

use moat_core::findings::{Finding, Severity};
use moat_core::rules::RuleId;
use serde_json::{Value, json};

use super::{Sources, end_position};

/// What SARIF says about a rule.
#[derive(Debug, Clone, Copy)]
pub struct RuleDescription<'a> {
    /// The rule's name, such as `cross-module-reference`.
    pub id: &'a str,
    /// One line.
    pub summary: &'a str,
    /// The full documentation (Markdown).
    pub doc: &'a str,
    /// The rule's default severity.
    pub severity: Severity,
}

impl RuleDescription<'static> {
    /// The catalog's description of `rule`.
    pub fn of(rule: RuleId) -> Self {
        Self { id: rule.as_str(), summary: rule.summary(), doc: rule.doc(), severity: rule.severity() }
    }
}

fn level(severity: Severity) -> &'static str {
    match severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
    }
}

/// A SARIF 2.1.0 log with one run of moat: the rules it knows (plus the catalog's description of
/// any rule a finding names that is not among them) and one result per finding.
pub fn sarif(findings: &[Finding], rules: &[RuleDescription<'_>], sources: &Sources) -> Value {
    let mut described: Vec<RuleDescription<'_>> = rules.to_vec();
    for finding in findings {
        if !described.iter().any(|r| finding.rule == r.id) {
            described.push(RuleDescription::of(finding.rule));
        }
    }
    let rule_objects: Vec<Value> = described
        .iter()
        .map(|rule| {
            let mut object = json!({
                "id": rule.id,
                "name": rule.id,
                "defaultConfiguration": {"level": level(rule.severity)},
            });
            if !rule.summary.is_empty() {
                object["shortDescription"] = json!({"text": rule.summary});
            }
            if !rule.doc.is_empty() {
                object["fullDescription"] = json!({"text": rule.summary});
                object["help"] = json!({"text": rule.doc, "markdown": rule.doc});
            }
            object
        })
        .collect();
    let results: Vec<Value> = findings
        .iter()
        .map(|finding| {
            let index = described.iter().position(|r| finding.rule == r.id).unwrap_or(0);
            let mut text = finding.message.clone();
            if let Some(help) = &finding.help {
                text.push_str("\nhelp: ");
                text.push_str(help);
            }
            let mut result = json!({
                "ruleId": finding.rule,
                "ruleIndex": index,
                "level": level(finding.severity),
                "message": {"text": text},
            });
            let mut properties = serde_json::Map::new();
            if let Some(module) = &finding.module {
                properties.insert("module".into(), json!(module));
            }
            if let Some(object) = &finding.object {
                properties.insert("object".into(), json!(object));
            }
            if let Some(database) = &finding.database {
                properties.insert("database".into(), json!(database));
            }
            if !properties.is_empty() {
                result["properties"] = Value::Object(properties);
            }
            if let Some(file) = &finding.file {
                let mut region = json!({
                    "startLine": finding.line.unwrap_or(1),
                    "startColumn": finding.column.unwrap_or(1),
                });
                if let Some((line, column)) = end_position(finding, sources) {
                    region["endLine"] = json!(line);
                    region["endColumn"] = json!(column);
                }
                result["locations"] = json!([{
                    "physicalLocation": {
                        "artifactLocation": {"uri": file, "uriBaseId": "%SRCROOT%"},
                        "region": region,
                    }
                }]);
            } else if let Some(object) = &finding.object {
                result["locations"] = json!([{"logicalLocations": [{"fullyQualifiedName": object}]}]);
            }
            result
        })
        .collect();
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "moat",
                "semanticVersion": env!("CARGO_PKG_VERSION"),
                "informationUri": env!("CARGO_PKG_REPOSITORY"),
                "rules": rule_objects,
            }},
            "columnKind": "unicodeCodePoints",
            "results": results,
        }],
    })
}

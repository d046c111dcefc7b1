//! Baselines: today's findings recorded in `moat-baseline.toml`, so that only new ones fail.
//!
//! Entries are keyed by rule, module, file and object (never line numbers), with a count, so an
//! unrelated edit that moves a finding keeps the baseline valid. `moat check` and `moat audit`
//! share the file; each owns the entries of its own `source`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::findings::Finding;

/// The baseline file's name, next to the manifest.
pub const FILE_NAME: &str = "moat-baseline.toml";

/// What a baseline entry matches.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BaselineKey {
    /// The rule's id, as the file spells it. It stays text rather than a [`crate::rules::RuleId`]
    /// on purpose: an entry whose id names no rule (a rule renamed or removed since the file was
    /// written) matches no finding and is reported as stale, instead of making the file unreadable.
    pub rule: String,
    /// Module, if any.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub module: Option<String>,
    /// File relative to the manifest, if any.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub file: Option<String>,
    /// Object, if any (for findings without file or object: the message).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub object: Option<String>,
}

/// One entry of the baseline file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaselineEntry {
    /// `check` or `audit`.
    pub source: String,
    /// What it matches.
    #[serde(flatten)]
    pub key: BaselineKey,
    /// How many findings with this key are accepted.
    pub count: usize,
}

/// The baseline file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Baseline {
    /// Format version (1).
    pub version: u32,
    /// Accepted findings.
    #[serde(default, rename = "finding")]
    pub entries: Vec<BaselineEntry>,
}

/// A baseline file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    /// The file exists but could not be read.
    #[error("cannot read `{path}`")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid baseline.
    #[error("`{path}` is not a valid baseline: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// The TOML error, with its line.
        message: String,
    },
}

/// What applying a baseline leaves.
#[derive(Debug, Clone, Default)]
pub struct BaselineOutcome {
    /// Findings the baseline does not cover: these are reported and fail the run.
    pub new: Vec<Finding>,
    /// How many findings the baseline absorbed.
    pub accepted: usize,
    /// Baseline entries (or parts of their count) that no longer occur.
    pub stale: Vec<BaselineEntry>,
}

impl Baseline {
    /// Reads the baseline next to a manifest; a missing file is an empty baseline.
    pub fn load(path: &Path) -> Result<Self, BaselineError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self { version: 1, entries: Vec::new() });
            }
            Err(source) => {
                return Err(BaselineError::Read { path: path.display().to_string(), source });
            }
        };
        toml::from_str(&text)
            .map_err(|e| BaselineError::Invalid { path: path.display().to_string(), message: e.to_string() })
    }

    /// Replaces the entries of `source` with the given findings, keeping other sources' entries.
    pub fn record(&mut self, source: &str, findings: &[Finding]) {
        self.version = 1;
        self.entries.retain(|e| e.source != source);
        let mut counts: BTreeMap<BaselineKey, usize> = BTreeMap::new();
        for finding in findings {
            *counts.entry(finding.baseline_key()).or_default() += 1;
        }
        self.entries.extend(counts.into_iter().map(|(key, count)| BaselineEntry {
            source: source.to_owned(),
            key,
            count,
        }));
        self.entries.sort_by(|a, b| (&a.source, &a.key).cmp(&(&b.source, &b.key)));
    }

    /// The file's text, with a header that says what it is.
    pub fn to_toml(&self) -> String {
        let body = toml::to_string(self).unwrap_or_default();
        format!(
            "# moat baseline: findings accepted when this file was written; only new ones fail.\n\
             # Rewrite with `moat check --write-baseline` or `moat audit --write-baseline`.\n\n{body}"
        )
    }

    /// Splits `findings` of `source` into new ones and accepted ones, and lists stale entries.
    pub fn apply(&self, source: &str, findings: Vec<Finding>) -> BaselineOutcome {
        let mut remaining: BTreeMap<&BaselineKey, usize> =
            self.entries.iter().filter(|e| e.source == source).map(|e| (&e.key, e.count)).collect();
        let mut outcome = BaselineOutcome::default();
        for finding in findings {
            let key = finding.baseline_key();
            match remaining.get_mut(&key) {
                Some(count) if *count > 0 => {
                    *count -= 1;
                    outcome.accepted += 1;
                }
                _ => outcome.new.push(finding),
            }
        }
        for entry in self.entries.iter().filter(|e| e.source == source) {
            let left = remaining.get(&entry.key).copied().unwrap_or(0);
            if left > 0 {
                outcome.stale.push(BaselineEntry { count: left, ..entry.clone() });
            }
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::findings::Severity;
    use crate::rules::RuleId;

    fn finding(object: &str, line: u32) -> Finding {
        let mut f = Finding::new(RuleId::CrossModuleReference, Severity::Error, "m").module("billing").object(object);
        f.file = Some("a.sql".into());
        f.line = Some(line);
        f
    }

    #[test]
    fn new_findings_fail_old_ones_do_not_and_fixed_ones_are_stale() {
        let mut baseline = Baseline::default();
        baseline.record("check", &[finding("patients.patients", 3), finding("lab.results", 9)]);
        let text = baseline.to_toml();
        let baseline: Baseline = toml::from_str(&text).unwrap();

        // The patients finding moved to another line; the lab one was fixed; one is new.
        let outcome = baseline.apply("check", vec![finding("patients.patients", 30), finding("orders.orders", 1)]);
        assert_eq!(outcome.accepted, 1);
        assert_eq!(outcome.new.len(), 1);
        assert_eq!(outcome.new[0].object.as_deref(), Some("orders.orders"));
        assert_eq!(outcome.stale.len(), 1);
        assert_eq!(outcome.stale[0].key.object.as_deref(), Some("lab.results"));
    }

    #[test]
    fn sources_do_not_touch_each_other() {
        let mut baseline = Baseline::default();
        baseline.record("audit", &[finding("x.y", 1)]);
        baseline.record("check", &[]);
        assert_eq!(baseline.entries.len(), 1);
        assert!(baseline.apply("check", vec![]).stale.is_empty());
    }

    #[test]
    fn an_entry_whose_rule_no_longer_exists_loads_and_is_stale() {
        // A baseline written before a rule was renamed: `rule = "grant-to-public"`.
        let text = "version = 1\n\n[[finding]]\nsource = \"audit\"\nrule = \"grant-to-public\"\nobject = \"clinic\"\ncount = 1\n";
        let baseline: Baseline = toml::from_str(text).unwrap();
        let outcome = baseline.apply("audit", vec![finding("clinic", 1)]);
        assert_eq!(outcome.new.len(), 1);
        assert_eq!(outcome.stale.len(), 1);
        assert_eq!(outcome.stale[0].key.rule, "grant-to-public");
    }
}

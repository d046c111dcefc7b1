//! `unused-suppression`: a `moat:allow` comment that silences nothing.

use moat_core::rules::RuleId;

use super::{Hit, rules};
use crate::suppress::Suppression;

/// The rule (its documentation is in the catalog, `moat_core::rules`).
pub(crate) const RULE: RuleId = RuleId::UnusedSuppression;

/// The hit for `rule` of `suppression`.
pub(crate) fn hit(suppression: &Suppression, rule: &str) -> Hit {
    let (message, help) = if RuleId::parse(rule).is_none() {
        (format!("`moat:allow` names `{rule}`, which is not a rule"), "`moat explain` lists the rules".to_owned())
    } else if !rules().iter().any(|r| *r == rule) {
        (
            format!("`moat:allow` names `{rule}`, which `moat check` does not report (only `moat audit` does)"),
            "an audit finding is silenced by the baseline (`moat audit --write-baseline`), not in SQL".to_owned(),
        )
    } else {
        (
            format!("`moat:allow {rule}` silences nothing"),
            "remove the comment; the statement after it no longer triggers the rule".to_owned(),
        )
    };
    Hit::new(RULE, suppression.span.clone(), message, help).object(rule)
}

#[cfg(test)]
mod tests {
    use crate::rules::test_support::{migration, render, rules, rust};

    #[test]
    fn fires_when_nothing_is_silenced_or_the_rule_is_unknown() {
        let sql =
            "-- moat:allow cross-module-reference -- legacy\nSELECT 1;\n-- moat:allow no-such-rule -- why\nSELECT 2;";
        let findings = migration("billing", sql);
        assert_eq!(rules(&findings), ["unused-suppression", "unused-suppression"]);
        insta::assert_snapshot!(render(sql, &findings));
    }

    #[test]
    fn an_audit_rule_is_named_as_one_that_only_the_audit_reports() {
        let findings = migration("billing", "-- moat:allow access-leak -- the old grant\nSELECT 1;");
        assert_eq!(rules(&findings), ["unused-suppression"]);
        assert!(findings[0].message.contains("which `moat check` does not report"), "{}", findings[0].message);
    }

    #[test]
    fn does_not_fire_when_the_suppression_silences_a_finding() {
        let sql = "-- moat:allow cross-module-reference -- the old report, until #42\nSELECT * FROM patients.patients;";
        assert!(migration("billing", sql).is_empty());
    }

    #[test]
    fn silences_only_the_next_statement() {
        let sql = "-- moat:allow cross-module-reference -- one\nSELECT 1;\nSELECT * FROM patients.patients;";
        assert_eq!(rules(&migration("billing", sql)), ["unused-suppression", "cross-module-reference"]);
    }

    #[test]
    fn a_rust_comment_above_the_call_silences_its_query() {
        let source = "fn f() {\n    // moat:allow cross-module-reference -- migrating away, see #7\n    let q = sqlx::query(\n        \"SELECT * FROM patients.patients\",\n    );\n}\n";
        assert!(rust("billing", source).is_empty());
    }
}

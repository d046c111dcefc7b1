//! `unused-suppression`: a `moat:allow` comment that silences nothing.

use moat_core::findings::Severity;

use super::{Hit, Rule, find_rule};
use crate::suppress::Suppression;

/// The rule.
pub(crate) const RULE: Rule = Rule {
    name: "unused-suppression",
    severity: Severity::Warning,
    summary: "a `moat:allow` comment that silences nothing",
    doc: r#"# unused-suppression

**What it finds.** A `-- moat:allow <rule> -- <reason>` comment (or `// moat:allow ...` above a
Rust call with embedded SQL) whose rule finds nothing in the statement that follows it, or that
names a rule that does not exist.

**Why it matters.** A suppression documents an accepted boundary crossing. When the crossing is
gone, a stale suppression would silently cover the next one written there; a misspelt rule name
suppresses nothing while looking as if it did.

**Example.**

```sql
-- moat:allow cross-module-reference -- the report reads patients directly until #42
SELECT count(*) FROM charges;   -- no longer reads patients: the comment silences nothing
```

**Fix.** Delete the comment, or correct the rule name (`moat explain` lists them).
"#,
};

/// The hit for `rule` of `suppression`.
pub(crate) fn hit(suppression: &Suppression, rule: &str) -> Hit {
    let (message, help) = if find_rule(rule).is_none() {
        (format!("`moat:allow` names `{rule}`, which is not a rule"), "`moat explain` lists the rules".to_owned())
    } else {
        (
            format!("`moat:allow {rule}` silences nothing"),
            "remove the comment; the statement after it no longer triggers the rule".to_owned(),
        )
    };
    Hit::new(&RULE, suppression.span.clone(), message, help).object(rule)
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

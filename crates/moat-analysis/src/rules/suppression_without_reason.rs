//! `suppression-without-reason`: a `moat:allow` comment without `-- <reason>`.

use moat_core::findings::Severity;

use super::{Hit, Rule};
use crate::suppress::Suppression;

/// The rule.
pub(crate) const RULE: Rule = Rule {
    name: "suppression-without-reason",
    severity: Severity::Error,
    summary: "a `moat:allow` comment without a reason",
    doc: r#"# suppression-without-reason

**What it finds.** A `moat:allow` comment with no reason after its rules.

**Why it matters.** A suppression accepts a boundary crossing; the next reader needs to know why
it was accepted and when it can go. The reason is required. The suppression still silences its
rules, so that this is the only error the comment causes.

**Example.**

```sql
-- moat:allow cross-module-reference
SELECT * FROM patients.patients;
```

**Fix.** Add the reason after `--`:

```sql
-- moat:allow cross-module-reference -- the nightly export reads patients until #42 lands
```
"#,
};

/// The hit for `suppression`.
pub(crate) fn hit(suppression: &Suppression) -> Hit {
    Hit::new(
        &RULE,
        suppression.span.clone(),
        format!("`moat:allow {}` gives no reason", suppression.rules.join(", ")),
        "add why the crossing is accepted: `-- moat:allow <rule> -- <reason>`".to_owned(),
    )
    .object(suppression.rules.join(", "))
}

#[cfg(test)]
mod tests {
    use crate::rules::test_support::{migration, render, rules};

    #[test]
    fn fires_without_a_reason_and_still_silences() {
        let sql = "-- moat:allow cross-module-reference\nSELECT * FROM patients.patients;";
        let findings = migration("billing", sql);
        assert_eq!(rules(&findings), ["suppression-without-reason"]);
        insta::assert_snapshot!(render(sql, &findings));
    }

    #[test]
    fn does_not_fire_with_a_reason() {
        let sql = "-- moat:allow cross-module-reference -- export until #42\nSELECT * FROM patients.patients;";
        assert!(migration("billing", sql).is_empty());
    }
}

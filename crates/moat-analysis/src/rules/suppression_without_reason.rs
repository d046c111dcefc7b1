//! `suppression-without-reason`: a `moat:allow` comment without `-- <reason>`.

use moat_core::rules::RuleId;

use super::Hit;
use crate::suppress::Suppression;

/// The rule (its documentation is in the catalog, `moat_core::rules`).
pub(crate) const RULE: RuleId = RuleId::SuppressionWithoutReason;

/// The hit for `suppression`.
pub(crate) fn hit(suppression: &Suppression) -> Hit {
    Hit::new(
        RULE,
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

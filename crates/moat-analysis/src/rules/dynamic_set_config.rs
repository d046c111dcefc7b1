//! `dynamic-set-config`: a migration calls `set_config` with a setting, or a `search_path`, that
//! is not a constant.

use moat_core::rules::RuleId;

use super::{Cx, Hit};

/// The rule (its documentation is in the catalog, `moat_core::rules`).
pub(crate) const RULE: RuleId = RuleId::DynamicSetConfig;

/// Reports `set_config` calls that cannot be read before they run.
pub(crate) fn check(cx: &Cx<'_>, out: &mut Vec<Hit>) {
    if !cx.is_migration() {
        return;
    }
    for (what, span) in &cx.unit.facts.dynamic_settings {
        out.push(
            Hit::new(
                RULE,
                span.clone(),
                format!("`set_config` in a migration with {what} not a constant"),
                "write the setting's name and the `search_path` as constants: a computed name can change the role \
                 the migration runs as, a computed path decides what every later name resolves to"
                    .to_owned(),
            )
            .object("set_config"),
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::rules::test_support::{migration, render, rules, rust};

    #[test]
    fn fires_on_computed_setting_names_and_search_paths() {
        let sql = "SELECT set_config('ro' || 'le', 'postgres', true);\n\
                   SELECT pg_catalog.set_config('search_path', current_setting('x.path'), true);\n\
                   DO $$ BEGIN PERFORM set_config(lower('ROLE'), 'none', true); END $$;";
        let findings = migration("billing", sql);
        assert_eq!(rules(&findings), ["dynamic-set-config"; 3]);
        assert_eq!((findings[2].line, findings[2].column), (Some(3), Some(21)));
        insta::assert_snapshot!(render(sql, &findings));
    }

    #[test]
    fn does_not_fire_on_constants_or_outside_migrations() {
        for sql in [
            "SELECT set_config('search_path', 'billing_data, pg_temp', true);",
            "SELECT set_config('lock_timeout'::text, '1s', true);",
            "SELECT set_config('app.user', current_user, true);",
        ] {
            assert!(migration("billing", sql).is_empty(), "{sql}");
        }
        assert!(rust("billing", "fn f() { q(\"SELECT set_config($1, $2, true)\"); }").is_empty());
    }
}

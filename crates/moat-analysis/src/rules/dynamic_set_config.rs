//! `dynamic-set-config`: a migration calls `set_config` with a setting, or a `search_path`, that
//! is not a constant.

use moat_core::findings::Severity;

use super::{Cx, Hit, Rule};

/// The rule.
pub(crate) const RULE: Rule = Rule {
    name: "dynamic-set-config",
    severity: Severity::Error,
    summary: "set_config with a setting name, or a search_path, that is not a constant, in a module migration",
    doc: r#"# dynamic-set-config

**What it finds.** In a module migration (also inside its function bodies and DO blocks): a call
of `set_config(name, value, is_local)` whose `name` is not a string constant
(`set_config('ro' || 'le', ...)`, `set_config(x, ...)`), or that sets `search_path` to a value
that is not a constant. (`set_config('role', ...)` and `set_config('session_authorization', ...)`
are reported by `privileged-statement-in-migration`.)

**Why it matters.** A setting whose name is computed can be `role` or `session_authorization`:
the migration changes the role it runs as, and no reader of the file can tell. A `search_path`
computed at run time decides where every unqualified name of the rest of the migration resolves,
so moat cannot check which module's objects they are, and the schemas on it can shadow built-ins
with planted functions.

**Example.**

```sql
SELECT set_config('ro' || 'le', 'postgres', true);
SELECT set_config('search_path', current_setting('x.path'), true);
```

**Fix.** Write the setting's name as a constant, and set `search_path` with `SET search_path =
...` (or a constant `set_config`) to the module's own schema. Never change the role inside a
migration.
"#,
};

/// Reports `set_config` calls that cannot be read before they run.
pub(crate) fn check(cx: &Cx<'_>, out: &mut Vec<Hit>) {
    if !cx.is_migration() {
        return;
    }
    for (what, span) in &cx.unit.facts.dynamic_settings {
        out.push(
            Hit::new(
                &RULE,
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

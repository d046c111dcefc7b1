//! `dynamic-sql`: `EXECUTE` of a string built at run time in PL/pgSQL or a DO block.

use moat_core::rules::RuleId;

use super::{Cx, Hit};

/// The rule (its documentation is in the catalog, `moat_core::rules`).
pub(crate) const RULE: RuleId = RuleId::DynamicSql;

/// Reports the dynamic `EXECUTE`s found in the statement's PL/pgSQL body.
pub(crate) fn check(cx: &Cx<'_>, out: &mut Vec<Hit>) {
    for (span, owner) in &cx.unit.dynamic {
        out.push(
            Hit::new(
                RULE,
                span.clone(),
                format!("`EXECUTE` of a string built at run time in `{owner}` cannot be checked"),
                "use static SQL (or a constant string); if it must be dynamic, check it by hand and add \
                 `-- moat:allow dynamic-sql -- <reason>` above the statement"
                    .to_owned(),
            )
            .object(owner.clone()),
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::rules::test_support::{migration, render, rules};

    #[test]
    fn fires_on_every_form_of_dynamic_execute() {
        let sql = "CREATE FUNCTION purge(tbl text) RETURNS SETOF record LANGUAGE plpgsql AS $$\nDECLARE\n  r record;\n  c refcursor;\nBEGIN\n  EXECUTE format('DELETE FROM %I', tbl);\n  FOR r IN EXECUTE 'SELECT * FROM ' || tbl LOOP END LOOP;\n  RETURN QUERY EXECUTE tbl;\n  OPEN c FOR EXECUTE tbl;\nEND $$;\n\
                   DO $$ BEGIN EXECUTE 'DROP TABLE ' || 'x'; END $$;";
        let findings = migration("billing", sql);
        assert_eq!(rules(&findings), ["dynamic-sql"; 5]);
        assert_eq!((findings[0].line, findings[0].column), (Some(6), Some(11)));
        insta::assert_snapshot!(render(sql, &findings));
    }

    #[test]
    fn does_not_fire_on_constant_strings_or_static_sql() {
        for sql in [
            "DO $$ BEGIN EXECUTE 'SELECT 1'; END $$;",
            "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN (SELECT count(*) FROM charges); END $$;",
            "PREPARE q AS SELECT 1; EXECUTE q;",
        ] {
            assert!(migration("billing", sql).is_empty(), "{sql}");
        }
    }

    #[test]
    fn a_suppression_with_a_reason_silences_it() {
        let sql = "-- moat:allow dynamic-sql -- table names come from a fixed list\nDO $$ BEGIN EXECUTE 'TRUNCATE ' || 'x'; END $$;";
        assert!(migration("billing", sql).is_empty());
    }
}

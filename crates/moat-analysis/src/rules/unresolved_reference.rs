//! `unresolved-reference`: an unqualified relation or sequence that no module creates.

use moat_core::rules::RuleId;

use super::{Cx, Hit};

/// The rule (its documentation is in the catalog, `moat_core::rules`).
pub(crate) const RULE: RuleId = RuleId::UnresolvedReference;

/// Reports unqualified relations and sequences that no file creates.
pub(crate) fn check(cx: &Cx<'_>, out: &mut Vec<Hit>) {
    let mut seen: Vec<&str> = Vec::new();
    for reference in cx.unit.facts.references.iter().filter(|r| !r.target) {
        if !cx.resolver.is_unresolved(reference.kind, &reference.name) || seen.contains(&reference.name.name.as_str()) {
            continue;
        }
        seen.push(&reference.name.name);
        let name = &reference.name.name;
        let suggestion = cx.resolver.suggest(name);
        let message = match (&suggestion.object, &suggestion.module) {
            (Some(object), Some(module)) => format!(
                "{} `{name}` is created by no module's migrations; did you mean `{object}` of module `{module}`?",
                reference.kind.label()
            ),
            (None, Some(module)) => format!(
                "{} `{name}` is created by no module's migrations; the closest module is `{module}`",
                reference.kind.label()
            ),
            _ => format!("{} `{name}` is created by no module's migrations", reference.kind.label()),
        };
        out.push(
            Hit::new(
                RULE,
                reference.span.clone(),
                message,
                "correct the name, qualify it with the schema that holds it, or create it in a migration of the \
                 module that owns it; moat cannot check what it cannot resolve"
                    .to_owned(),
            )
            .object(name.clone()),
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::rules::test_support::{migration_with_unresolved, migrations, render, rules};

    #[test]
    fn fires_on_a_name_no_module_creates_with_the_closest_object() {
        let files = [
            ("patients", "0001.sql", "CREATE TABLE patients (id uuid PRIMARY KEY);"),
            (
                "billing",
                "0001.sql",
                "CREATE TABLE charges (\n  id uuid PRIMARY KEY,\n  patient_id uuid REFERENCES patient (id)\n);\nSELECT nextval('invoice_seq') FROM billing_notes;",
            ),
        ];
        let findings = migrations(&files);
        assert_eq!(rules(&findings), ["unresolved-reference"; 3]);
        assert_eq!((findings[0].line, findings[0].column), (Some(3), Some(30)));
        assert!(findings[0].message.contains("`patients.patients` of module `patients`"), "{}", findings[0].message);
        assert!(findings[2].message.contains("closest module is `billing`"), "{}", findings[2].message);
        insta::assert_snapshot!(render(files[1].2, &findings));
    }

    #[test]
    fn does_not_fire_on_created_temporary_renamed_serial_or_qualified_names() {
        for sql in [
            "CREATE TABLE charges (id serial PRIMARY KEY);\nSELECT nextval('charges_id_seq'), * FROM charges;",
            "CREATE TEMP TABLE scratch (id int);\nINSERT INTO scratch VALUES (1);",
            "CREATE TABLE a (id int);\nALTER TABLE a RENAME TO b;\nSELECT * FROM b;",
            "CREATE TABLE c (id bigint GENERATED ALWAYS AS IDENTITY);\nSELECT currval('c_id_seq');",
            "SELECT * FROM billing_data.anything, pg_class, information_schema.tables;",
            "WITH x AS (SELECT 1) SELECT * FROM x;",
            "DROP TABLE IF EXISTS gone;",
        ] {
            assert!(migration_with_unresolved("billing", sql).is_empty(), "{sql}");
        }
    }
}

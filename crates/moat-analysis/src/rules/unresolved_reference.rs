//! `unresolved-reference`: an unqualified relation or sequence that no module creates.

use moat_core::findings::Severity;

use super::{Cx, Hit, Rule};

/// The rule.
pub(crate) const RULE: Rule = Rule {
    name: "unresolved-reference",
    severity: Severity::Warning,
    summary: "an unqualified table, view or sequence that no module's migrations create",
    doc: r#"# unresolved-reference

**What it finds.** An unqualified relation or sequence (`REFERENCES customers (id)`, `FROM
customers`, `nextval('customers_id_seq')`, and the same inside function bodies and DO blocks) that
no migration of any module creates: not the module's own, not another module's, not a temporary
table of the file. moat resolves an unqualified name along the `search_path` in force and then
across every module's objects; a name that matches nothing cannot be checked. The finding names
the closest object some module creates, or the module whose name the reference starts with.

**Why it matters.** When an existing database is split into modules with its names left
unqualified (as Rails, diesel and most hand-written migrations write them), a reference to a
table that moved to another module, or one that was never created by a migration at all (made by
hand, by an extension, or by a dump that is not in the migrations), would otherwise be silently
taken for the module's own. At run time it fails (`relation "customers" does not exist`) or, worse,
finds a different object of the same name.

**Example.** In a migration of `orders`, where module `customers` creates `customers`:

```sql
CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint REFERENCES customer (id));
--                                                                       ^ `customer` is created by no module; did you mean `customers.customers`?
```

**Fix.** Correct the name, qualify it with the schema that holds it, or create the object in a
migration of the module that owns it. An object that comes from outside moat's migrations
(an extension's tables) is best qualified with its schema.
"#,
};

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
                &RULE,
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

//! `cross-module-foreign-key`: a foreign key into another module's table.

use moat_core::findings::Severity;

use super::{Cx, Hit, Owner, Rule};
use crate::CrossingKind;

/// The rule.
pub(crate) const RULE: Rule = Rule {
    name: "cross-module-foreign-key",
    severity: Severity::Error,
    summary: "a foreign key that references another module's table",
    doc: r#"# cross-module-foreign-key

**What it finds.** A `REFERENCES` clause (in `CREATE TABLE`, a column, or `ALTER TABLE ... ADD
CONSTRAINT ... FOREIGN KEY`) whose referenced table lives in another module's schema.

**Why it matters.** A foreign key is the tightest coupling there is: the other module can no
longer delete, rename or move its rows or its table without asking yours, its migrations must run
before yours, and the two modules can never live in separate databases. The database refuses it
at run time too, because your module's owner role has no rights on the other schema.

**Example.** In a migration of `prescriptions`:

```sql
CREATE TABLE prescriptions (
    id uuid PRIMARY KEY,
    patient_id uuid NOT NULL REFERENCES patients.patients (id)
);
```

**Fix.** Reference the other module by id only: keep `patient_id uuid NOT NULL` as a plain
column and validate it through the owning module's API when you write it (for example
`patients.exists(id)` in application code), not with a constraint. If the other module's data
must be shown or checked later, keep an event-fed snapshot (`PatientUpdated` upserts
`prescriptions.patient_snapshots`) and react to `PatientDeleted` events instead of cascading.
"#,
};

/// Reports foreign keys whose referenced table resolves into another module's schema.
pub(crate) fn check(cx: &Cx<'_>, out: &mut Vec<Hit>) {
    let Owner::Module { name: module, schema: own } = cx.owner else { return };
    for reference in cx.unit.facts.references.iter().filter(|r| r.foreign_key) {
        let Some(schema) = cx.resolve(reference) else { continue };
        let Some(other) = cx.resolver.owner_of(&schema, &reference.name.name).filter(|m| *m != module && schema != own)
        else {
            continue;
        };
        let object = reference.name.in_schema(&schema);
        out.push(
            Hit::new(
                &RULE,
                reference.span.clone(),
                format!("foreign key references `{object}` of module `{other}`"),
                format!(
                    "store the id as a plain column and validate it through module `{other}`'s API (for example \
                     `{other}.exists(id)`); keep an event-fed snapshot in `{own}` if you need its data"
                ),
            )
            .object(object)
            .crossing(other, CrossingKind::ForeignKey),
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::rules::test_support::{migration, render, rules};

    #[test]
    fn fires_on_column_table_and_alter_table_foreign_keys() {
        let sql = "CREATE TABLE prescriptions (\n  id uuid PRIMARY KEY,\n  patient_id uuid NOT NULL REFERENCES patients.patients (id)\n);\n\
                   CREATE TABLE refills (id uuid, patient_id uuid, FOREIGN KEY (patient_id) REFERENCES patients.patients);\n\
                   ALTER TABLE prescriptions ADD CONSTRAINT by_admission FOREIGN KEY (id) REFERENCES patients.admissions (id);";
        let findings = migration("prescriptions", sql);
        assert_eq!(rules(&findings), ["cross-module-foreign-key"; 3]);
        assert_eq!((findings[0].line, findings[0].column), (Some(3), Some(39)));
        insta::assert_snapshot!(render(sql, &findings));
    }

    #[test]
    fn follows_the_search_path() {
        let sql =
            "SET search_path = patients;\nCREATE TABLE prescriptions.x (patient_id uuid REFERENCES patients (id));";
        assert_eq!(rules(&migration("prescriptions", sql)), ["cross-module-foreign-key"]);
    }

    #[test]
    fn does_not_fire_inside_the_module_or_without_a_constraint() {
        for sql in [
            "CREATE TABLE admissions (id uuid PRIMARY KEY, patient_id uuid REFERENCES patients (id));",
            "CREATE TABLE admissions (id uuid PRIMARY KEY, patient_id uuid REFERENCES patients.patients (id));",
            "CREATE TABLE visits (patient_id uuid NOT NULL);",
        ] {
            assert!(migration("patients", sql).is_empty(), "{sql}");
        }
    }
}

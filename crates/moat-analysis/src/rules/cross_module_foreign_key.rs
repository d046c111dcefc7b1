//! `cross-module-foreign-key`: a foreign key into another module's table.

use moat_core::rules::RuleId;

use super::{Cx, Hit, Owner};
use crate::CrossingKind;

/// The rule (its documentation is in the catalog, `moat_core::rules`).
pub(crate) const RULE: RuleId = RuleId::CrossModuleForeignKey;

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
                RULE,
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

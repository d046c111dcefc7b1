//! `cross-module-reference`: one module's SQL names an object in another module's schema.

use moat_core::rules::RuleId;

use super::{Cx, Hit, Owner};
use crate::CrossingKind;
use crate::resolve::ObjectKind;

/// The rule (its documentation is in the catalog, `moat_core::rules`).
pub(crate) const RULE: RuleId = RuleId::CrossModuleReference;

/// Reports references that resolve into another module's schema.
pub(crate) fn check(cx: &Cx<'_>, out: &mut Vec<Hit>) {
    let Owner::Module { name: module, schema: own } = cx.owner else { return };
    // One finding per object and statement: a column's type and its default's cast are one crossing.
    let mut reported: Vec<String> = Vec::new();
    for reference in &cx.unit.facts.references {
        if reference.foreign_key {
            continue;
        }
        let Some(schema) = cx.resolve(reference) else { continue };
        if schema == own {
            continue;
        }
        let Some(other) = cx.resolver.owner_of_reference(reference.kind, &schema, &reference.name) else { continue };
        if other == module {
            continue;
        }
        let object =
            if reference.kind == ObjectKind::Schema { schema.clone() } else { reference.name.in_schema(&schema) };
        if reported.contains(&object) {
            continue;
        }
        reported.push(object.clone());
        out.push(
            Hit::new(
                RULE,
                reference.span.clone(),
                format!("references {} `{object}` of module `{other}`", reference.kind.label()),
                format!(
                    "module `{module}` may use only schema `{own}`: keep an event-fed snapshot of what it needs in \
                     `{own}`, call module `{other}`'s API, or read a contract view declared in moat.toml"
                ),
            )
            .object(object)
            .crossing(
                other,
                if reference.kind == ObjectKind::Function {
                    CrossingKind::FunctionCall
                } else {
                    CrossingKind::Reference
                },
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::rules::test_support::{migration, only, render, rules, rust};

    #[test]
    fn fires_on_a_join_into_another_module() {
        let sql = "CREATE VIEW unpaid AS\nSELECT c.id, p.last_name\nFROM charges c\nJOIN patients.patients p ON p.id = c.patient_id;";
        let findings = migration("billing", sql);
        assert_eq!(rules(&findings), ["cross-module-reference"]);
        assert_eq!(findings[0].object.as_deref(), Some("patients.patients"));
        assert_eq!((findings[0].line, findings[0].column), (Some(4), Some(6)));
        insta::assert_snapshot!(render(sql, &findings));
    }

    #[test]
    fn fires_on_functions_types_sequences_and_casts() {
        let sql = "CREATE TABLE charges (\n  id bigint DEFAULT nextval('patients.ids'),\n  kind patients.kind,\n  owner regclass DEFAULT 'patients.patients'::regclass,\n  checked boolean DEFAULT patients.exists(1)\n);";
        let findings = migration("billing", sql);
        let objects: Vec<_> = findings.iter().map(|f| f.object.clone().unwrap_or_default()).collect();
        assert_eq!(objects, ["patients.ids", "patients.kind", "patients.patients", "patients.exists"]);
        insta::assert_snapshot!(render(sql, &findings));
    }

    #[test]
    fn fires_in_dml_copy_triggers_policies_and_grants() {
        for sql in [
            "INSERT INTO patients.patients (id) VALUES (1);",
            "UPDATE charges SET x = 1 FROM patients.patients p WHERE p.id = charges.patient_id;",
            "DELETE FROM patients.admissions;",
            "COPY patients.patients TO STDOUT;",
            "TRUNCATE patients.patients;",
            "CREATE TRIGGER t AFTER INSERT ON charges FOR EACH ROW EXECUTE FUNCTION patients.on_charge();",
            "CREATE POLICY p ON charges USING (EXISTS (SELECT 1 FROM patients.patients));",
            "GRANT USAGE ON SCHEMA patients TO clinic_billing;",
            "DROP TABLE patients.patients;",
            "COMMENT ON TABLE patients.patients IS 'x';",
            "CREATE FUNCTION f(p patients.patients.id%TYPE) RETURNS int LANGUAGE sql AS 'SELECT 1';",
        ] {
            let findings = migration("billing", sql);
            assert_eq!(only(&findings, "cross-module-reference").len(), 1, "{sql}: {findings:?}");
        }
    }

    #[test]
    fn fires_inside_function_bodies_and_do_blocks() {
        let sql = "CREATE FUNCTION n() RETURNS bigint LANGUAGE sql AS $$ SELECT count(*) FROM patients.patients $$;\n\
                   CREATE FUNCTION m() RETURNS bigint LANGUAGE plpgsql AS $$\nDECLARE\n  c bigint;\nBEGIN\n  SELECT count(*) INTO c FROM patients.admissions;\n  PERFORM patients.touch();\n  RETURN c;\nEND $$;\n\
                   DO $$ BEGIN EXECUTE 'DELETE FROM patients.patients'; END $$;\n\
                   CREATE FUNCTION a() RETURNS bigint LANGUAGE sql BEGIN ATOMIC SELECT count(*) FROM patients.patients; END;";
        let findings = migration("billing", sql);
        let objects: Vec<_> =
            findings.iter().map(|f| (f.line.unwrap_or(0), f.object.clone().unwrap_or_default())).collect();
        assert_eq!(
            objects,
            [
                (1, "patients.patients".to_owned()),
                (6, "patients.admissions".to_owned()),
                (7, "patients.touch".to_owned()),
                (10, "patients.patients".to_owned()),
                (11, "patients.patients".to_owned()),
            ]
        );
        insta::assert_snapshot!(render(sql, &findings));
    }

    #[test]
    fn follows_search_path_changes_in_file_order() {
        let sql = "SELECT pg_catalog.set_config('search_path', '', false);\nSELECT * FROM patients;\n\
                   SET search_path TO patients, public;\nSELECT * FROM admissions;\nRESET search_path;\nSELECT * FROM admissions;";
        let findings = migration("billing", sql);
        assert_eq!(rules(&findings), ["cross-module-reference"]);
        assert_eq!(findings[0].line, Some(4));
        assert_eq!(findings[0].object.as_deref(), Some("patients.admissions"));
    }

    #[test]
    fn unqualified_functions_resolve_only_to_known_ones() {
        let patients = "CREATE FUNCTION exists_patient(id uuid) RETURNS boolean LANGUAGE sql AS 'SELECT true';";
        assert!(migration("patients", patients).is_empty());
        // Built-ins on a path that names another module are not its functions.
        let sql = "SET search_path = patients;\nSELECT now(), count(*) FROM billing_data.charges;";
        assert!(migration("billing", sql).is_empty());
    }

    #[test]
    fn fires_in_embedded_rust_sql_with_the_literal_position() {
        let source = "async fn f(pool: &sqlx::PgPool) {\n    sqlx::query!(\"SELECT c.id FROM charges c JOIN patients.patients p ON p.id = c.patient_id\")\n        .fetch_all(pool).await;\n}\n";
        let findings = rust("billing", source);
        assert_eq!(rules(&findings), ["cross-module-reference"]);
        assert_eq!((findings[0].line, findings[0].column), (Some(2), Some(51)));
        insta::assert_snapshot!(render(source, &findings));
    }

    #[test]
    fn does_not_fire_on_own_schema_catalogs_ctes_or_unknown_schemas() {
        for sql in [
            "SELECT * FROM charges JOIN billing_data.refunds USING (id);",
            "SELECT * FROM pg_catalog.pg_class, information_schema.tables, public.anything;",
            "WITH patients AS (SELECT 1) SELECT * FROM patients;",
            "CREATE TABLE charges (id uuid PRIMARY KEY, patient_id uuid NOT NULL);",
            "SELECT now()::date, 'x'::text, nextval('charges_id_seq');",
            "SELECT 'patients.patients';",
        ] {
            assert!(migration("billing", sql).is_empty(), "{sql}");
        }
    }
}

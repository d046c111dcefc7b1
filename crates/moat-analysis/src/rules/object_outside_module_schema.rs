//! `object-outside-module-schema`: a module creates something outside its own schema.

use moat_core::rules::RuleId;

use super::{Cx, Hit, Owner};
use crate::resolve::{ObjectKind, Resolver};

/// The rule (its documentation is in the catalog, `moat_core::rules`).
pub(crate) const RULE: RuleId = RuleId::ObjectOutsideModuleSchema;

/// Reports creations whose schema is not the file's own.
pub(crate) fn check(cx: &Cx<'_>, out: &mut Vec<Hit>) {
    let own = cx.own_schema();
    let whose = match cx.owner {
        Owner::Module { name, .. } => format!("module `{name}`"),
        Owner::Contract { name, .. } => format!("contract `{name}`"),
    };
    for creation in &cx.unit.facts.creations {
        let Some(name) = &creation.name else {
            let label = if creation.label.is_empty() { String::new() } else { format!(" `{}`", creation.label) };
            out.push(
                Hit::new(
                    RULE,
                    creation.span.clone(),
                    format!("creates {}{label}, which belongs to no schema, outside schema `{own}`", creation.what),
                    format!(
                        "{whose} may create objects only in schema `{own}`; database-wide objects belong to the \
                         database's setup, run by an administrator"
                    ),
                )
                .object(format!("{} {}", creation.what, creation.label).trim_end().to_owned()),
            );
            continue;
        };
        let schema = if creation.attached {
            cx.resolver.resolve(ObjectKind::Relation, name, &cx.unit.path)
        } else {
            Resolver::creation_schema(name, &cx.unit.path)
        };
        let Some(schema) = schema else { continue };
        if schema == own || schema == "pg_temp" || schema.starts_with("pg_temp_") {
            continue;
        }
        let claimant = if creation.what == "schema" || cx.resolver.module_of(&schema).is_some() {
            None
        } else {
            cx.resolver.owner_of(&schema, &name.name)
        };
        if creation.what != "schema" {
            // Claimed by this module (`claims` in moat.toml): its own, for now.
            if claimant.is_some() && claimant == cx.module() {
                continue;
            }
            // An index, trigger, policy or rule on a table in a shared schema that the files create:
            // the table is reported (once), not each object on it.
            if creation.attached
                && claimant.is_none()
                && cx.resolver.module_of(&schema).is_none()
                && cx.resolver.is_created(ObjectKind::Relation, &schema, &name.name)
            {
                continue;
            }
        }
        let (message, object) = if creation.what == "schema" {
            (format!("creates schema `{schema}`; {whose} owns only schema `{own}`"), schema.clone())
        } else if creation.what == "moved" {
            let object = name.in_schema(&schema);
            (format!("moves `{}` into schema `{schema}`, outside schema `{own}`", name.name), object)
        } else if creation.attached {
            let table = name.in_schema(&schema);
            let label = if creation.label.is_empty() { String::new() } else { format!(" `{}`", creation.label) };
            let object = if creation.label.is_empty() { table.clone() } else { format!("{schema}.{}", creation.label) };
            (
                format!("creates {}{label} on `{table}`, in schema `{schema}` outside schema `{own}`", creation.what),
                object,
            )
        } else {
            let object = name.in_schema(&schema);
            let claimed = claimant.map_or_else(String::new, |other| format!(", claimed by module `{other}`"));
            (format!("creates {} `{object}` outside schema `{own}`{claimed}", creation.what), object)
        };
        out.push(
            Hit::new(
                RULE,
                creation.span.clone(),
                message,
                format!(
                    "create it in schema `{own}`: leave the name unqualified (the {} runs with `search_path` set to \
                     `{own}`) or write `{own}.<name>`",
                    if cx.is_migration() { "migration" } else { "SQL" }
                ),
            )
            .object(object),
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::rules::test_support::{contract, migration, render, rules};

    #[test]
    fn fires_on_objects_created_elsewhere() {
        let sql = "CREATE TABLE public.invoice_numbers (n bigint);\nCREATE INDEX by_patient ON patients.patients (id);\n\
                   CREATE SCHEMA reports;\nCREATE EVENT TRIGGER audit_ddl ON ddl_command_end EXECUTE FUNCTION billing_data.audit();\n\
                   ALTER TABLE charges SET SCHEMA public;";
        let findings = migration("billing", sql);
        assert_eq!(rules(&findings), ["object-outside-module-schema"; 5]);
        insta::assert_snapshot!(render(sql, &findings));
    }

    #[test]
    fn unqualified_names_go_to_the_first_schema_of_the_path() {
        let sql = "SET search_path = public;\nCREATE TABLE t (id int);\nSET search_path TO DEFAULT;\nCREATE TABLE u (id int);";
        let findings = migration("billing", sql);
        assert_eq!(rules(&findings), ["object-outside-module-schema"]);
        assert_eq!(findings[0].object.as_deref(), Some("public.t"));
    }

    #[test]
    fn contracts_create_in_schema_contracts() {
        let sql = "CREATE VIEW patients.census AS SELECT 1;";
        assert_eq!(rules(&contract(sql)), ["object-outside-module-schema"]);
    }

    #[test]
    fn does_not_fire_in_the_module_schema_or_for_temporary_objects() {
        for sql in [
            "CREATE TABLE charges (id uuid);",
            "CREATE TABLE billing_data.charges (id uuid);",
            "CREATE SCHEMA IF NOT EXISTS billing_data;",
            "CREATE TEMP TABLE scratch (id int);",
            "CREATE INDEX c ON charges (id);",
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1';",
            "CREATE TYPE status AS ENUM ('open', 'paid');",
            "CREATE SCHEMA billing_data CREATE TABLE t (id int);",
        ] {
            assert!(migration("billing", sql).is_empty(), "{sql}");
        }
    }
}

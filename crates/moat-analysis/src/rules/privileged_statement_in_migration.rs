//! `privileged-statement-in-migration`: statements a module's owner role must not run.

use moat_core::rules::RuleId;
use pg_query::NodeEnum;
use pg_query::protobuf::{ObjectType, VariableSetKind};

use super::{Cx, Hit, statement_label};

/// The rule (its documentation is in the catalog, `moat_core::rules`).
pub(crate) const RULE: RuleId = RuleId::PrivilegedStatementInMigration;

/// Reports privileged statements in migrations.
pub(crate) fn check(cx: &Cx<'_>, out: &mut Vec<Hit>) {
    if !cx.is_migration() {
        return;
    }
    let frame = cx.frame();
    let owner = cx.own_roles().pop().unwrap_or_default();
    let role_help = || {
        format!(
            "moat runs each migration as `{owner}` (`SET LOCAL ROLE`); changing or resetting the role would escape it"
        )
    };
    for (setting, span) in &cx.unit.facts.role_changes {
        out.push(
            Hit::new(
                RULE,
                span.clone(),
                format!("`set_config('{setting}', ...)` changes the role in a migration"),
                role_help(),
            )
            .object(setting.clone()),
        );
    }
    let Some(node) = cx.node() else { return };
    // `CREATE FUNCTION ... SET role = ...`: every call switches the role.
    let function_settings = match node {
        NodeEnum::CreateFunctionStmt(f) => Some(&f.options),
        NodeEnum::AlterFunctionStmt(f) => Some(&f.actions),
        _ => None,
    };
    for option in function_settings.into_iter().flatten() {
        if let Some(NodeEnum::DefElem(def)) = &option.node
            && def.defname == "set"
            && let Some(NodeEnum::VariableSetStmt(set)) = def.arg.as_deref().and_then(|a| a.node.as_ref())
            && matches!(set.name.as_str(), "role" | "session_authorization")
        {
            let span = frame.offset(def.location).map_or_else(|| frame.keyword_span(), |o| frame.file_span(o..o + 3));
            out.push(
                Hit::new(
                    RULE,
                    span,
                    format!("`SET {}` on a function in a migration: every call changes the role", set.name),
                    role_help(),
                )
                .object(format!("SET {}", set.name)),
            );
        }
    }
    // `DROP SCHEMA` of a schema that is no module's (another module's is a cross-module reference).
    if let NodeEnum::DropStmt(d) = node
        && d.remove_type == ObjectType::ObjectSchema as i32
    {
        for object in &d.objects {
            let Some(NodeEnum::String(schema)) = &object.node else { continue };
            if schema.sval == cx.own_schema() || cx.manifest.module_by_schema(&schema.sval).is_some() {
                continue;
            }
            let cascade =
                if d.behavior == pg_query::protobuf::DropBehavior::DropCascade as i32 { " CASCADE" } else { "" };
            out.push(
                Hit::new(
                    RULE,
                    frame.word_span(&schema.sval),
                    format!(
                        "`DROP SCHEMA{cascade}` of `{}` in a migration, outside schema `{}`",
                        schema.sval,
                        cx.own_schema()
                    ),
                    "a module may drop only objects of its own schema; schemas that are no module's belong to the \
                     database's setup"
                        .to_owned(),
                )
                .object(format!("DROP SCHEMA {}", schema.sval)),
            );
        }
        return;
    }
    let (object, help) = match node {
        NodeEnum::CreateRoleStmt(r) => (r.role.clone(), roles_help()),
        NodeEnum::AlterRoleStmt(r) => (r.role.as_ref().map(|r| r.rolename.clone()).unwrap_or_default(), roles_help()),
        NodeEnum::AlterRoleSetStmt(r) => {
            (r.role.as_ref().map(|r| r.rolename.clone()).unwrap_or_default(), roles_help())
        }
        NodeEnum::DropRoleStmt(_) | NodeEnum::ReassignOwnedStmt(_) => (String::new(), roles_help()),
        NodeEnum::RenameStmt(r) if r.rename_type == ObjectType::ObjectRole as i32 => (r.subname.clone(), roles_help()),
        NodeEnum::CreatedbStmt(d) => (d.dbname.clone(), database_help()),
        NodeEnum::AlterDatabaseStmt(d) => (d.dbname.clone(), database_help()),
        NodeEnum::AlterDatabaseSetStmt(d) => (d.dbname.clone(), database_help()),
        NodeEnum::AlterDatabaseRefreshCollStmt(d) => (d.dbname.clone(), database_help()),
        NodeEnum::DropdbStmt(d) => (d.dbname.clone(), database_help()),
        NodeEnum::AlterSystemStmt(_) => (String::new(), database_help()),
        NodeEnum::CreateExtensionStmt(e) => (e.extname.clone(), extension_help()),
        NodeEnum::AlterExtensionStmt(e) => (e.extname.clone(), extension_help()),
        NodeEnum::AlterExtensionContentsStmt(e) => (e.extname.clone(), extension_help()),
        NodeEnum::DropStmt(d) if d.remove_type == ObjectType::ObjectExtension as i32 => {
            let names: Vec<String> = d
                .objects
                .iter()
                .filter_map(|o| match &o.node {
                    Some(NodeEnum::String(s)) => Some(s.sval.clone()),
                    _ => None,
                })
                .collect();
            (names.join(", "), extension_help())
        }
        NodeEnum::VariableSetStmt(set) if matches!(set.name.as_str(), "role" | "session_authorization") => {
            let verb =
                if set.kind == VariableSetKind::VarReset as i32 || set.kind == VariableSetKind::VarSetDefault as i32 {
                    "RESET"
                } else {
                    "SET"
                };
            let what = if set.name == "role" { "ROLE" } else { "SESSION AUTHORIZATION" };
            out.push(
                Hit::new(RULE, frame.keyword_span(), format!("`{verb} {what}` in a migration"), role_help())
                    .object(format!("{verb} {what}")),
            );
            return;
        }
        _ => return,
    };
    let label = statement_label(node);
    let message = if object.is_empty() {
        format!("`{label}` in a migration")
    } else {
        format!("`{label}` of `{object}` in a migration")
    };
    let object = if object.is_empty() { label } else { format!("{label} {object}") };
    out.push(Hit::new(RULE, frame.keyword_span(), message, help).object(object));
}

fn roles_help() -> String {
    "moat creates and manages roles itself (`moat provision`); declare consumers in moat.toml instead".to_owned()
}

fn database_help() -> String {
    "databases and server settings belong to the database's setup, run by an administrator, not to a module".to_owned()
}

fn extension_help() -> String {
    "install extensions once, as an administrator, in the database's setup; a module's owner role cannot".to_owned()
}

#[cfg(test)]
mod tests {
    use crate::rules::test_support::{migration, render, rules, rust};

    #[test]
    fn fires_on_role_database_extension_and_session_statements() {
        let sql = "CREATE ROLE auditor;\nALTER ROLE clinic_billing SET work_mem = '1GB';\nDROP ROLE IF EXISTS x;\n\
                   CREATE DATABASE scratch;\nCREATE EXTENSION IF NOT EXISTS pgcrypto;\nSET ROLE postgres;\n\
                   SET SESSION AUTHORIZATION postgres;\nRESET ROLE;\nRESET SESSION AUTHORIZATION;\n\
                   ALTER SYSTEM SET fsync = off;\nSELECT set_config('role', 'postgres', true);\n\
                   DO $$ BEGIN CREATE ROLE sneaky; END $$;";
        let findings = migration("billing", sql);
        assert_eq!(rules(&findings), ["privileged-statement-in-migration"; 12]);
        insta::assert_snapshot!(render(sql, &findings));
    }

    #[test]
    fn names_drop_extension_and_fires_on_drop_schema_elsewhere_and_role_settings_of_functions() {
        let sql = "DROP EXTENSION IF EXISTS pgcrypto;\nDROP SCHEMA public CASCADE;\nDROP SCHEMA billing_data;\n\
                   CREATE FUNCTION f() RETURNS int LANGUAGE sql SET role = 'postgres' AS 'SELECT 1';\n\
                   ALTER FUNCTION f() SET session_authorization = 'postgres';";
        let findings = migration("billing", sql);
        assert_eq!(rules(&findings), ["privileged-statement-in-migration"; 4]);
        assert_eq!(findings[0].message, "`DROP EXTENSION` of `pgcrypto` in a migration");
        assert_eq!(findings[1].object.as_deref(), Some("DROP SCHEMA public"));
        assert_eq!((findings[2].line, findings[2].column), (Some(4), Some(46)));
        insta::assert_snapshot!(render(sql, &findings));
    }

    #[test]
    fn does_not_fire_on_ordinary_statements_or_outside_migrations() {
        for sql in ["SET lock_timeout = '1s';", "SET LOCAL statement_timeout = 0;", "CREATE TABLE t (id int);"] {
            assert!(migration("billing", sql).is_empty(), "{sql}");
        }
        assert!(rust("billing", "fn f() { client.execute(\"SET ROLE x\", &[]); }").is_empty());
    }
}

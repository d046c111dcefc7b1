//! `grant-beyond-manifest`: a module grants privileges to roles that are not its own.

use moat_core::rules::RuleId;
use pg_query::NodeEnum;
use pg_query::protobuf::{self, GrantTargetType, ObjectType, RoleSpecType};

use super::{Cx, Hit, Owner};
use crate::ast::{range_var_name, strings};

/// The rule (its documentation is in the catalog, `moat_core::rules`).
pub(crate) const RULE: RuleId = RuleId::GrantBeyondManifest;

/// Reports grants to roles outside the module.
pub(crate) fn check(cx: &Cx<'_>, out: &mut Vec<Hit>) {
    let Owner::Module { name: module, schema } = cx.owner else { return };
    let own = cx.own_roles();
    let relay = cx.manifest.roles().relay();
    let frame = cx.frame();
    let help = format!(
        "only `{}` get privileges on module `{module}`'s objects, and moat grants them itself; share data through a \
         contract view declared in moat.toml (`[contracts.<name>]` with `readers`)",
        own.join("` and `")
    );
    let Some(node) = cx.node() else { return };
    let (grant, default_privileges) = match node {
        NodeEnum::GrantStmt(g) => (g, false),
        NodeEnum::AlterDefaultPrivilegesStmt(a) => match &a.action {
            Some(g) => (g, true),
            None => return,
        },
        NodeEnum::GrantRoleStmt(g) if g.is_grant => {
            let granted = g
                .granted_roles
                .iter()
                .filter_map(|n| match &n.node {
                    Some(NodeEnum::AccessPriv(p)) => Some(p.priv_name.clone()),
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join(", ");
            for grantee in &g.grantee_roles {
                let Some(NodeEnum::RoleSpec(role)) = &grantee.node else { continue };
                let span = frame.name_span(role.location, None);
                out.push(
                    Hit::new(
                        RULE,
                        span,
                        format!("grants membership in `{granted}` to `{}`", role_name(role)),
                        help.clone(),
                    )
                    .object(granted.clone()),
                );
            }
            return;
        }
        _ => return,
    };
    if !grant.is_grant {
        return;
    }
    let privileges = if grant.privileges.is_empty() {
        "ALL".to_owned()
    } else {
        grant
            .privileges
            .iter()
            .filter_map(|n| match &n.node {
                Some(NodeEnum::AccessPriv(p)) => Some(p.priv_name.to_uppercase()),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let target = target(grant, default_privileges, schema);
    let moat_tables = grant.objects.iter().all(|o| match &o.node {
        Some(NodeEnum::RangeVar(rv)) => rv.relname.starts_with("moat_outbox"),
        _ => false,
    }) && !grant.objects.is_empty();
    for grantee in &grant.grantees {
        let Some(NodeEnum::RoleSpec(role)) = &grantee.node else { continue };
        let name = role_name(role);
        let allowed = match RoleSpecType::try_from(role.roletype).unwrap_or(RoleSpecType::Undefined) {
            RoleSpecType::RolespecCurrentRole | RoleSpecType::RolespecCurrentUser => true,
            RoleSpecType::RolespecCstring => own.contains(&role.rolename) || (role.rolename == relay && moat_tables),
            _ => false,
        };
        let span = frame.name_span(role.location, None);
        if !allowed {
            let whom = if name == "PUBLIC" { "PUBLIC, that is to every role".to_owned() } else { format!("`{name}`") };
            out.push(
                Hit::new(
                    RULE,
                    span,
                    format!("grants {privileges} on {target} to {whom}, beyond module `{module}`'s own roles"),
                    help.clone(),
                )
                .object(format!("{target} to {name}").replace('`', "")),
            );
        } else if grant.grant_option && role.roletype == RoleSpecType::RolespecCstring as i32 {
            out.push(
                Hit::new(
                    RULE,
                    span,
                    format!("grants {privileges} on {target} to `{name}` WITH GRANT OPTION"),
                    "a module's roles hold no grant option: they must not pass privileges on".to_owned(),
                )
                .object(format!("{target} to {name} with grant option").replace('`', "")),
            );
        }
    }
}

fn role_name(role: &protobuf::RoleSpec) -> String {
    match RoleSpecType::try_from(role.roletype).unwrap_or(RoleSpecType::Undefined) {
        RoleSpecType::RolespecPublic => "PUBLIC".to_owned(),
        RoleSpecType::RolespecCurrentRole => "CURRENT_ROLE".to_owned(),
        RoleSpecType::RolespecCurrentUser => "CURRENT_USER".to_owned(),
        RoleSpecType::RolespecSessionUser => "SESSION_USER".to_owned(),
        _ => role.rolename.clone(),
    }
}

/// What a grant is on, in words: `` `billing.charges` ``, ``schema `billing` ``.
fn target(grant: &protobuf::GrantStmt, default_privileges: bool, own_schema: &str) -> String {
    let kind = match ObjectType::try_from(grant.objtype).unwrap_or(ObjectType::Undefined) {
        ObjectType::ObjectTable => "tables",
        ObjectType::ObjectSequence => "sequences",
        ObjectType::ObjectFunction | ObjectType::ObjectRoutine => "functions",
        ObjectType::ObjectProcedure => "procedures",
        ObjectType::ObjectType | ObjectType::ObjectDomain => "types",
        ObjectType::ObjectSchema => "schemas",
        _ => "objects",
    };
    if default_privileges {
        return format!("future {kind} (default privileges)");
    }
    let names: Vec<String> = grant
        .objects
        .iter()
        .filter_map(|o| match &o.node {
            Some(NodeEnum::RangeVar(rv)) => {
                let name = range_var_name(rv);
                Some(if name.schema.is_some() { name.to_string() } else { name.in_schema(own_schema) })
            }
            Some(NodeEnum::String(s)) => Some(s.sval.clone()),
            Some(NodeEnum::ObjectWithArgs(f)) => Some(qualified(strings(&f.objname), own_schema)),
            Some(NodeEnum::List(l)) => Some(qualified(strings(&l.items), own_schema)),
            _ => None,
        })
        .collect();
    let names = names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ");
    if grant.targtype == GrantTargetType::AclTargetAllInSchema as i32 {
        format!("all {kind} in schema {names}")
    } else if grant.objtype == ObjectType::ObjectSchema as i32 {
        format!("schema {names}")
    } else {
        names
    }
}

/// `a.b` as written, `own.a` for an unqualified name.
fn qualified(parts: Vec<String>, own_schema: &str) -> String {
    if parts.len() == 1 { format!("{own_schema}.{}", parts[0]) } else { parts.join(".") }
}

#[cfg(test)]
mod tests {
    use crate::rules::test_support::{migration, render, rules};

    #[test]
    fn fires_on_grants_to_public_and_foreign_roles() {
        let sql = "GRANT SELECT ON charges TO reporting;\nGRANT USAGE ON SCHEMA billing_data TO PUBLIC;\n\
                   ALTER DEFAULT PRIVILEGES IN SCHEMA billing_data GRANT SELECT ON TABLES TO clinic_patients;\n\
                   GRANT EXECUTE ON FUNCTION total(uuid) TO clinic_reporting, clinic_billing;\n\
                   GRANT SELECT ON ALL TABLES IN SCHEMA billing_data TO SESSION_USER;\n\
                   GRANT clinic_billing_owner TO clinic_patients;\n\
                   GRANT SELECT ON charges TO clinic_billing WITH GRANT OPTION;";
        let findings = migration("billing", sql);
        assert_eq!(rules(&findings), ["grant-beyond-manifest"; 7]);
        insta::assert_snapshot!(render(sql, &findings));
    }

    #[test]
    fn does_not_fire_on_the_modules_own_roles_or_revokes() {
        for sql in [
            "GRANT SELECT, INSERT ON charges TO clinic_billing;",
            "GRANT ALL ON SCHEMA billing_data TO clinic_billing_owner;",
            "ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO clinic_billing;",
            "GRANT SELECT ON charges TO CURRENT_USER;",
            "REVOKE ALL ON charges FROM PUBLIC;",
            "GRANT SELECT ON moat_outbox TO clinic_relay;",
        ] {
            assert!(migration("billing", sql).is_empty(), "{sql}");
        }
    }
}

//! Findings read from the catalog alone: drift from the provisioning plan, privileges outside
//! the access policy (table, column, routine, schema, database and default ACLs), role
//! attributes and memberships, SECURITY DEFINER routines, objects in `public`, routine bodies
//! handed to the SQL analysis, moat's own tables, large objects and role settings.

use std::collections::{BTreeMap, BTreeSet};

use moat_core::findings::{Finding, Severity};
use moat_core::manifest::Manifest;
use moat_core::rules::RuleId;
use sqlx::PgConnection;

use super::{BODY_RULES, BodyAnalyzer, DANGEROUS_PREDEFINED_ROLES, RoutineBody, module_of};
use crate::catalog::{AclItem, PUBLIC, RelKind, Snapshot};
use crate::error::{AdminError, db};
use crate::internal;
use crate::plan::{Note, Plan, Step, wanted_roles};
use crate::policy::{Policy, Wanted};

pub(super) fn drift_findings(plan: &Plan, findings: &mut Vec<Finding>) {
    for step in &plan.steps {
        match step {
            // Extra privileges and attributes are reported, with their holder, by the rules below.
            Step::Sql { sql, .. } if sql.starts_with("REVOKE ") || only_dropped_attributes(sql) => {}
            Step::Sql { sql, display, .. } => findings.push(
                Finding::new(
                    RuleId::ProvisioningDrift,
                    Severity::Error,
                    format!(
                        "the database is not provisioned as the manifest says: `{}` is pending",
                        display.as_deref().unwrap_or(sql)
                    ),
                )
                .object(drift_object(sql))
                .help("run `moat provision` (or `moat up`); `moat plan` prints every pending statement"),
            ),
            Step::InstallContract(install) => findings.push(
                Finding::new(
                    RuleId::ProvisioningDrift,
                    Severity::Error,
                    format!("contract `{}` is not installed as {} says", install.contract, install.file),
                )
                .object(format!("contract {}", install.contract))
                .help("run `moat up` to install it"),
            ),
        }
    }
    for note in &plan.notes {
        match note {
            Note::OrphanedRole(role) => findings.push(
                Finding::new(
                    RuleId::OrphanedObject,
                    Severity::Warning,
                    format!("role `{role}` has the project's prefix but is not in the manifest"),
                )
                .object(role.clone())
                .help("a removed module's roles are left alone; drop them by hand once its data is gone"),
            ),
            Note::OrphanedSchema(schema) => findings.push(
                Finding::new(
                    RuleId::OrphanedObject,
                    Severity::Warning,
                    format!("schema `{schema}` belongs to no module of the manifest"),
                )
                .object(schema.clone())
                .help("a removed module's schema is left alone; drop it by hand once its data is gone"),
            ),
            Note::MovedAway { module, schema } => findings.push(
                Finding::new(
                    RuleId::OrphanedObject,
                    Severity::Warning,
                    format!(
                        "schema `{schema}` is the copy module `{module}` left behind when it moved to its own database"
                    ),
                )
                .object(schema.clone())
                .help(format!(
                    "the module cannot read it; keep it while you may still want to compare, then run \
                     `moat extract {module} --finalize` to drop it"
                )),
            ),
            Note::ContractWaiting { contract, missing } => findings.push(
                Finding::new(
                    RuleId::ProvisioningDrift,
                    Severity::Error,
                    format!("contract `{contract}` cannot be installed: {} missing", missing.join(", ")),
                )
                .object(format!("contract {contract}"))
                .help("run `moat up`: migrations create the relations, then the contract is installed"),
            ),
        }
    }
}

/// `ALTER ROLE x WITH NOSUPERUSER ...` that only removes attributes the privileged-role rule reports.
fn only_dropped_attributes(sql: &str) -> bool {
    let Some((head, attributes)) = sql.split_once(" WITH ") else { return false };
    head.starts_with("ALTER ROLE ")
        && attributes
            .split_whitespace()
            .all(|a| matches!(a, "NOSUPERUSER" | "NOCREATEDB" | "NOCREATEROLE" | "NOREPLICATION" | "NOBYPASSRLS"))
}

/// The object a drift statement is about: the first quoted name in it.
fn drift_object(sql: &str) -> String {
    let mut parts = sql.split('"');
    match (parts.next(), parts.next()) {
        (Some(_), Some(name)) => {
            let rest: String = sql.split('"').skip(2).take(2).collect();
            if rest.starts_with('.') {
                format!("{name}.{}", sql.split('"').nth(3).unwrap_or_default())
            } else {
                name.to_owned()
            }
        }
        _ => sql.to_owned(),
    }
}

fn grantee_text(grantee: &str) -> String {
    if grantee == PUBLIC { "PUBLIC".to_owned() } else { format!("`{grantee}`") }
}

/// Privileges held beyond `wanted` on one object, as findings.
#[allow(clippy::too_many_arguments)]
fn beyond(
    findings: &mut Vec<Finding>,
    module: Option<&str>,
    what: &str,
    object: &str,
    acl: &[AclItem],
    owner: &str,
    wanted: &Wanted,
    only: Option<&BTreeSet<String>>,
) {
    let mut extra: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for item in acl {
        if item.grantee == owner {
            continue;
        }
        if let Some(only) = only
            && !only.contains(&item.grantee)
        {
            continue;
        }
        let allowed = wanted.get(&item.grantee).is_some_and(|p| p.contains(item.privilege.as_str()));
        if !allowed || item.grantable {
            let privilege = if allowed { "GRANT OPTION" } else { item.privilege.as_str() };
            extra.entry(item.grantee.as_str()).or_default().push(privilege);
        }
    }
    for (grantee, privileges) in extra {
        let rule = RuleId::GrantBeyondManifest;
        let mut finding = Finding::new(
            rule,
            Severity::Error,
            format!("{} holds {} on {what} `{object}`, which the manifest does not allow", grantee_text(grantee), privileges.join(", ")),
        )
        .object(object.to_owned())
        .help(format!(
            "revoke it (`moat provision` revokes what moat's roles and PUBLIC hold; grants to {} must be revoked by hand); cross-module reads go through a contract view",
            grantee_text(grantee)
        ));
        if let Some(module) = module {
            finding = finding.module(module);
        }
        findings.push(finding);
    }
}

pub(super) fn acl_findings(manifest: &Manifest, snapshot: &Snapshot, policy: &Policy<'_>, findings: &mut Vec<Finding>) {
    let ours: BTreeSet<String> = wanted_roles(manifest).into_iter().map(|r| r.name).collect();
    let mut ours_and_public = ours.clone();
    ours_and_public.insert(PUBLIC.to_owned());

    // The database: PUBLIC's rights are their own rule; moat's roles hold CONNECT only.
    for item in snapshot.database_acl.iter().filter(|a| a.grantee == PUBLIC) {
        findings.push(
            Finding::new(RuleId::PublicDatabaseAccess, Severity::Error, format!("PUBLIC holds {} on database `{}`", item.privilege, snapshot.database))
                .object(snapshot.database.clone())
                .help(format!("every role may connect or create temporary tables; `moat provision` runs `REVOKE ALL ON DATABASE \"{}\" FROM PUBLIC`", snapshot.database)),
        );
    }
    beyond(
        findings,
        None,
        "database",
        &snapshot.database,
        &snapshot.database_acl,
        &snapshot.database_owner,
        &policy.database(),
        Some(&ours),
    );
    if let Some(public) = snapshot.schemas.get("public") {
        for item in public.acl.iter().filter(|a| a.grantee == PUBLIC) {
            findings.push(
                Finding::new(
                    RuleId::PublicDatabaseAccess,
                    Severity::Error,
                    format!("PUBLIC holds {} on schema `public`", item.privilege),
                )
                .object("public")
                .help("`moat provision` runs `REVOKE ALL ON SCHEMA \"public\" FROM PUBLIC`"),
            );
        }
        beyond(findings, None, "schema", "public", &public.acl, &public.owner, &Wanted::new(), Some(&ours));
    }
    for (name, schema) in &snapshot.schemas {
        let Some((owner, wanted)) = policy.schema(name) else { continue };
        let module = module_of(manifest, name).map(|m| m.name.to_string());
        if schema.owner != owner {
            findings.push(
                Finding::new(RuleId::GrantBeyondManifest, Severity::Error, format!("schema `{name}` is owned by `{}`, not by `{owner}`", schema.owner))
                    .object(name.clone())
                    .help("the owner holds every right on the schema; `moat provision` gives it back to the module's owner role"),
            );
        }
        beyond(findings, module.as_deref(), "schema", name, &schema.acl, &schema.owner, &wanted, None);
    }
    for relation in snapshot.relations.iter().filter(|r| !r.extension) {
        let Some((owner, wanted)) = policy.relation(&relation.schema, &relation.name, &relation.kind) else { continue };
        let object = format!("{}.{}", relation.schema, relation.name);
        let module = module_of(manifest, &relation.schema).map(|m| m.name.to_string());
        if relation.owner != owner && !relation.owned_by_table {
            findings.push(
                Finding::new(
                    RuleId::GrantBeyondManifest,
                    Severity::Error,
                    format!("`{object}` is owned by `{}`, not by `{owner}`", relation.owner),
                )
                .object(object.clone())
                .help("its owner holds every right on it; `moat provision` gives it to the module's owner role"),
            );
        }
        let what = match relation.relkind() {
            RelKind::Sequence => "sequence",
            RelKind::View => "view",
            _ => "table",
        };
        beyond(findings, module.as_deref(), what, &object, &relation.acl, &relation.owner, &wanted, None);
        // moat grants single columns only where the policy says so (the runtime role's INSERT on
        // the outbox's publishing columns); every other column privilege is beyond the manifest.
        let column_policy = policy.column_privileges(&relation.schema, &relation.name);
        for column in &relation.column_acls {
            let object = format!("{object}.{}", column.column);
            let mut wanted = Wanted::new();
            for (grantee, privilege, columns) in &column_policy {
                if columns.contains(&column.column.as_str()) {
                    wanted.entry(grantee.clone()).or_default().insert(*privilege);
                }
            }
            beyond(findings, module.as_deref(), "column", &object, &column.acl, &relation.owner, &wanted, None);
        }
    }
    for function in snapshot.functions.iter().filter(|f| !f.extension) {
        let Some((owner, wanted)) = policy.function(&function.schema, &function.name, &function.owner) else {
            continue;
        };
        let module = module_of(manifest, &function.schema).map(|m| m.name.to_string());
        if function.owner != owner {
            findings.push(
                Finding::new(
                    RuleId::GrantBeyondManifest,
                    Severity::Error,
                    format!("routine `{}` is owned by `{}`, not by `{owner}`", function.signature, function.owner),
                )
                .object(function.signature.clone())
                .help("`moat provision` gives it to the module's owner role"),
            );
        }
        beyond(
            findings,
            module.as_deref(),
            "routine",
            &function.signature,
            &function.acl,
            &function.owner,
            &wanted,
            None,
        );
    }
    // Default privileges: a module owner's, in its schema or globally, and anyone's in a module schema.
    for entry in &snapshot.default_acls {
        let in_module_schema = entry.schema.as_deref().and_then(|s| module_of(manifest, s));
        let owner_module = manifest.modules.iter().find(|m| manifest.roles().module_owner(&m.name) == entry.role);
        let wanted: Wanted = match (in_module_schema, owner_module) {
            (Some(schema_module), Some(owner)) if schema_module.name == owner.name => policy
                .module_defaults(owner)
                .into_iter()
                .find(|(objtype, _, _)| *objtype == entry.objtype)
                .map(|(_, _, w)| w)
                .unwrap_or_default(),
            (None, Some(_)) if entry.schema.is_none() => Wanted::new(),
            (Some(_), _) => Wanted::new(),
            _ => continue,
        };
        let scope = match &entry.schema {
            Some(schema) => format!("for objects `{}` creates in schema `{schema}`", entry.role),
            None => format!("for every object `{}` creates", entry.role),
        };
        let module = in_module_schema.or(owner_module).map(|m| m.name.to_string());
        let kind = match entry.objtype.as_str() {
            "r" => "tables",
            "S" => "sequences",
            "f" => "functions",
            "T" => "types",
            "n" => "schemas",
            _ => "objects",
        };
        let object = format!("default privileges on {kind} {scope}");
        beyond(findings, module.as_deref(), "", &object, &entry.acl, &entry.role, &wanted, None);
    }
}

pub(super) fn role_findings(manifest: &Manifest, snapshot: &Snapshot, findings: &mut Vec<Finding>) {
    let wanted = wanted_roles(manifest);
    let ours: BTreeSet<&str> = wanted.iter().map(|r| r.name.as_str()).collect();
    for role in &wanted {
        let Some(info) = snapshot.roles.get(&role.name) else { continue };
        let mut attributes = Vec::new();
        for (set, name) in [
            (info.superuser, "SUPERUSER"),
            (info.createrole, "CREATEROLE"),
            (info.createdb, "CREATEDB"),
            (info.replication, "REPLICATION"),
            (info.bypassrls, "BYPASSRLS"),
        ] {
            if set {
                attributes.push(name);
            }
        }
        if !attributes.is_empty() {
            findings.push(
                Finding::new(
                    RuleId::PrivilegedRole,
                    Severity::Error,
                    format!("role `{}` has {}", role.name, attributes.join(", ")),
                )
                .object(role.name.clone())
                .help(format!(
                    "moat's roles hold no attribute beyond LOGIN; `moat provision` runs `ALTER ROLE \"{}\" WITH NO...`",
                    role.name
                )),
            );
        }
    }
    let owners: BTreeSet<String> = wanted.iter().filter(|r| r.kind.admin_is_member()).map(|r| r.name.clone()).collect();
    for membership in &snapshot.memberships {
        let member_ours = ours.contains(membership.member.as_str());
        let role_ours = ours.contains(membership.role.as_str());
        if member_ours
            && crate::plan::wanted_membership(manifest, &membership.member).as_deref() == Some(membership.role.as_str())
        {
            continue;
        }
        if member_ours {
            let why = if DANGEROUS_PREDEFINED_ROLES.contains(&membership.role.as_str()) {
                "a predefined role that reaches every table or the server itself"
            } else if role_ours {
                "so it can act as another of the project's roles"
            } else {
                "and gains whatever that role may do"
            };
            findings.push(
                Finding::new(
                    RuleId::RoleMembership,
                    Severity::Error,
                    format!("role `{}` is a member of `{}`, {why}", membership.member, membership.role),
                )
                .object(format!("{} -> {}", membership.member, membership.role))
                .help(format!(
                    "`REVOKE \"{}\" FROM \"{}\"` (`moat provision` does it)",
                    membership.role, membership.member
                )),
            );
        } else if role_ours {
            // The admin's membership in owner roles is how migrations SET ROLE without superuser.
            if membership.member == snapshot.user && owners.contains(&membership.role) {
                continue;
            }
            findings.push(
                Finding::new(
                    RuleId::RoleMembership,
                    Severity::Error,
                    format!("role `{}` is a member of `{}` and can act as it", membership.member, membership.role),
                )
                .object(format!("{} -> {}", membership.member, membership.role))
                .help(format!(
                    "`REVOKE \"{}\" FROM \"{}\"`; other applications read a module's data through a contract view",
                    membership.role, membership.member
                )),
            );
        }
    }
}

pub(super) fn routine_findings(manifest: &Manifest, snapshot: &Snapshot, findings: &mut Vec<Finding>) {
    for function in snapshot.functions.iter().filter(|f| f.security_definer && !f.extension) {
        let Some(module) = module_of(manifest, &function.schema) else { continue };
        let pinned = function.config.iter().any(|c| c.starts_with("search_path="));
        let finding = if pinned {
            Finding::new(
                RuleId::SecurityDefinerFunction,
                Severity::Warning,
                format!("routine `{}` is SECURITY DEFINER: it runs with its owner's rights", function.signature),
            )
            .help("its search_path is pinned; make sure it is not executable by other modules' roles")
        } else {
            Finding::new(
                RuleId::SecurityDefinerFunction,
                Severity::Error,
                format!("routine `{}` is SECURITY DEFINER without a pinned search_path", function.signature),
            )
            .help(format!("a caller can shadow the objects it uses; add `SET search_path = {}, pg_temp`, or make it SECURITY INVOKER", function.schema))
        };
        findings.push(finding.module(module.name.to_string()).object(function.signature.clone()));
    }
}

/// Objects in `public` that no module claims (a claimed object belongs to its claimant). Indexes
/// and sequences owned by a table are not listed separately: one finding per table.
pub(super) fn public_findings(manifest: &Manifest, snapshot: &Snapshot, findings: &mut Vec<Finding>) {
    let unclaimed = |name: &str| manifest.claimant("public", name).is_none();
    for relation in snapshot
        .relations
        .iter()
        .filter(|r| r.schema == "public" && !r.extension && !r.owned_by_table && unclaimed(&r.name))
    {
        findings.push(
            Finding::new(
                RuleId::ObjectInPublicSchema,
                Severity::Warning,
                format!("`public.{}` belongs to no module", relation.name),
            )
            .object(format!("public.{}", relation.name))
            .help("move it into the schema of the module that owns it"),
        );
    }
    for function in snapshot.functions.iter().filter(|f| f.schema == "public" && !f.extension && unclaimed(&f.name)) {
        findings.push(
            Finding::new(
                RuleId::ObjectInPublicSchema,
                Severity::Warning,
                format!("routine `{}` belongs to no module", function.signature),
            )
            .object(function.signature.clone())
            .help("move it into the schema of the module that owns it"),
        );
    }
}

/// Objects in the schemas that claims name (and `public`) owned by one of the project's roles
/// other than their claimant's owner role. Provisioning leaves claimed objects with whoever
/// owns them (the operator); a module's roles own nothing outside their schema, except that a
/// module's owner role may own what its module claims. The owner holds every right on an
/// object and can grant them: a module role owning another module's claimed table, or a table
/// nobody claims, has reached outside its module.
pub(super) fn claimed_owner_findings(manifest: &Manifest, snapshot: &Snapshot, findings: &mut Vec<Finding>) {
    let mut shared = manifest.claimed_schemas();
    if !shared.iter().any(|s| s == "public") {
        shared.push("public".to_owned());
    }
    let roles = manifest.roles();
    let module_of_role = |role: &str| {
        manifest.modules.iter().find(|m| {
            role == roles.module_owner(&m.name)
                || role == roles.module_runtime(&m.name)
                || role == roles.module_migrator(&m.name)
        })
    };
    let mut check = |schema: &str, name: &str, object: &str, what: &str, owner: &str| {
        if !shared.iter().any(|s| s == schema) || !snapshot.roles.contains_key(owner) {
            return;
        }
        let claimant = manifest.claimant(schema, name);
        if claimant.is_some_and(|m| roles.module_owner(&m.name) == owner) {
            return;
        }
        let holder = match module_of_role(owner) {
            Some(m) => format!("`{owner}`, a role of module `{}`", m.name),
            None => format!("`{owner}`, one of the project's roles"),
        };
        let (message, module) = match claimant {
            Some(m) => (format!("{what} `{object}` is claimed by module `{}` but owned by {holder}", m.name), Some(m)),
            None => (format!("{what} `{object}` belongs to no module but is owned by {holder}"), module_of_role(owner)),
        };
        let mut finding = Finding::new(RuleId::GrantBeyondManifest, Severity::Error, message)
            .object(object.to_owned())
            .help(format!(
                "its owner holds every right on it and can grant them; give it back to the operator (`ALTER ... OWNER TO` the role that owned it before){}",
                claimant.map_or(String::new(), |m| format!(" or to `{}`", roles.module_owner(&m.name)))
            ));
        if let Some(module) = module {
            finding = finding.module(module.name.to_string());
        }
        findings.push(finding);
    };
    for relation in snapshot.relations.iter().filter(|r| !r.extension && !r.owned_by_table) {
        let what = match relation.relkind() {
            RelKind::Sequence => "sequence",
            RelKind::View => "view",
            _ => "table",
        };
        let object = format!("{}.{}", relation.schema, relation.name);
        check(&relation.schema, &relation.name, &object, what, &relation.owner);
    }
    for function in snapshot.functions.iter().filter(|f| !f.extension) {
        check(&function.schema, &function.name, &function.signature, "routine", &function.owner);
    }
}

/// Routine bodies of module schemas and claimed schemas (PL/pgSQL and SQL, not from extensions).
const ROUTINE_BODIES_SQL: &str = include_str!("routine_bodies.sql");

/// One row of [`ROUTINE_BODIES_SQL`].
#[derive(sqlx::FromRow)]
struct RoutineRow {
    schema: String,
    name: String,
    signature: String,
    language: String,
    body: String,
    definition: String,
}

pub(super) async fn body_findings(
    conn: &mut PgConnection,
    manifest: &Manifest,
    analyzer: &dyn BodyAnalyzer,
    findings: &mut Vec<Finding>,
) -> Result<(), AdminError> {
    let mut schemas: Vec<String> = manifest.modules.iter().map(|m| m.schema.to_string()).collect();
    schemas.extend(manifest.claimed_schemas());
    let rows: Vec<RoutineRow> = sqlx::query_as(ROUTINE_BODIES_SQL)
        .bind(&schemas)
        .fetch_all(&mut *conn)
        .await
        .map_err(db("reading routine bodies"))?;
    for RoutineRow { schema, name, signature, language, body, definition } in rows {
        // A routine a module claims in a shared schema is that module's; one nobody claims is skipped.
        let Some(module) = manifest.owner_of(&schema, &name) else { continue };
        let routine = RoutineBody { schema, signature, language, body, definition };
        findings
            .extend(analyzer.analyze(manifest, module, &routine).into_iter().filter(|f| BODY_RULES.contains(&f.rule)));
    }
    Ok(())
}

/// Large objects owned by a project role, or that one may read or write: a channel between
/// modules outside every schema, which no grant of moat's creates.
pub(super) fn large_object_findings(snapshot: &Snapshot, findings: &mut Vec<Finding>) {
    for object in &snapshot.large_objects {
        let owned = snapshot.roles.contains_key(&object.owner);
        let mut grantees: Vec<String> = object
            .acl
            .iter()
            .filter(|a| a.grantee != object.owner && (a.grantee == PUBLIC || snapshot.roles.contains_key(&a.grantee)))
            .map(|a| format!("{} {}", a.privilege, grantee_text(&a.grantee)))
            .collect();
        grantees.dedup();
        let mut message = format!("large object {} is owned by `{}`", object.oid, object.owner);
        if !grantees.is_empty() {
            message.push_str(&format!(" and granted ({}) ", grantees.join(", ")));
            message.push_str("to the project's roles");
        } else if !owned {
            continue;
        }
        findings.push(
            Finding::new(RuleId::LargeObject, Severity::Error, message)
                .object(format!("large object {}", object.oid))
                .help(format!(
                    "large objects live outside every schema and carry data between roles; drop it (`SELECT pg_catalog.lo_unlink({})` as the admin) and keep module data in the module's tables",
                    object.oid
                )),
        );
    }
}

/// One of moat's own tables, from `moat_tables.sql`.
#[derive(sqlx::FromRow)]
struct MoatTable {
    schema: String,
    name: String,
    kind: String,
    owner: String,
    row_security: bool,
    triggers: Vec<String>,
    rules: Vec<String>,
    policies: Vec<String>,
}

const MOAT_TABLES_SQL: &str = include_str!("moat_tables.sql");

/// moat's own tables in module schemas and the contracts ledger: plain tables (the outbox a
/// partitioned one), with no trigger, rule, policy or row security, owned as moat owns them.
/// Anything else can run a module owner's code when moat, the relay or another module touches
/// them, or hide what they hold.
pub(super) async fn moat_table_findings(
    conn: &mut PgConnection,
    manifest: &Manifest,
    policy: &Policy<'_>,
    findings: &mut Vec<Finding>,
) -> Result<(), AdminError> {
    let mut schemas: Vec<String> = manifest.modules.iter().map(|m| m.schema.to_string()).collect();
    schemas.push(moat_core::names::CONTRACTS_SCHEMA.to_owned());
    let mut names: Vec<String> = [
        internal::MIGRATIONS,
        internal::OUTBOX,
        internal::OUTBOX_PROGRESS,
        internal::SUBSCRIPTIONS,
        internal::INBOX,
        internal::MOVE,
        internal::CONTRACTS_LEDGER,
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    names.extend((0..internal::OUTBOX_SLOTS).map(internal::outbox_partition));
    let tables: Vec<MoatTable> = sqlx::query_as(MOAT_TABLES_SQL)
        .bind(&schemas)
        .bind(&names)
        .fetch_all(&mut *conn)
        .await
        .map_err(db("reading moat's own tables"))?;
    for table in tables {
        let in_contracts = table.schema == moat_core::names::CONTRACTS_SCHEMA;
        if in_contracts != (table.name == internal::CONTRACTS_LEDGER) {
            continue;
        }
        let object = format!("{}.{}", table.schema, table.name);
        let kind = RelKind::from_code(&table.kind);
        let expected_kind = if table.name == internal::OUTBOX { RelKind::PartitionedTable } else { RelKind::Table };
        let mut problems = Vec::new();
        if kind != expected_kind {
            problems.push(format!("is a {} instead of a {}", kind.noun(), expected_kind.noun()));
        }
        if !table.triggers.is_empty() {
            problems.push(format!("carries trigger{} {}", plural(table.triggers.len()), quoted_list(&table.triggers)));
        }
        if !table.rules.is_empty() {
            problems.push(format!("carries rule{} {}", plural(table.rules.len()), quoted_list(&table.rules)));
        }
        if !table.policies.is_empty() {
            problems.push(format!(
                "carries polic{} {}",
                if table.policies.len() == 1 { "y" } else { "ies" },
                quoted_list(&table.policies)
            ));
        }
        if table.row_security {
            problems.push("has row level security enabled".to_owned());
        }
        if let Some((owner, _)) = policy.relation(&table.schema, &table.name, expected_kind.code())
            && owner != table.owner
        {
            problems.push(format!("is owned by `{}`, not by `{owner}`", table.owner));
        }
        if problems.is_empty() {
            continue;
        }
        let mut finding = Finding::new(
            RuleId::MoatTableAltered,
            Severity::Error,
            format!("moat's table `{object}` {}", problems.join(", ")),
        )
        .object(object)
        .help("moat, the relay and other modules touch this table: code on it would run as them; restore it (drop the trigger, rule, policy or view and recreate the table) and find the migration that changed it");
        if let Some(module) = module_of(manifest, &table.schema) {
            finding = finding.module(module.name.to_string());
        }
        findings.push(finding);
    }
    Ok(())
}

fn quoted_list(names: &[String]) -> String {
    names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// One role setting, from `role_settings.sql`.
#[derive(sqlx::FromRow)]
struct RoleSetting {
    role: String,
    /// `None`: the setting applies in every database.
    database: Option<String>,
    setting: String,
}

const ROLE_SETTINGS_SQL: &str = include_str!("role_settings.sql");

/// Role-level settings of project roles that moat does not manage (it sets only the
/// `search_path` of runtime and consumer roles): a role's own `statement_timeout`,
/// `default_transaction_read_only`, `search_path` and the like change what the application and
/// moat's sessions do.
pub(super) async fn role_setting_findings(
    conn: &mut PgConnection,
    manifest: &Manifest,
    findings: &mut Vec<Finding>,
) -> Result<(), AdminError> {
    let wanted = wanted_roles(manifest);
    let elsewhere = crate::plan::elsewhere_roles(manifest);
    let settings: Vec<RoleSetting> = sqlx::query_as(ROLE_SETTINGS_SQL)
        .bind(manifest.roles().prefix())
        .fetch_all(&mut *conn)
        .await
        .map_err(db("reading role settings"))?;
    for RoleSetting { role, database, setting } in settings {
        // Roles of modules in another database are audited there.
        if elsewhere.contains(&role) {
            continue;
        }
        let name = setting.split_once('=').map_or(setting.as_str(), |(n, _)| n);
        let managed = name == "search_path"
            && database.is_some()
            && wanted.iter().any(|w| w.name == role && w.search_path.is_some());
        if managed {
            continue;
        }
        let scope = match &database {
            Some(database) => format!("in database `{database}`"),
            None => "in every database".to_owned(),
        };
        let reset = match &database {
            Some(database) => format!("ALTER ROLE \"{role}\" IN DATABASE \"{database}\" RESET {name}"),
            None => format!("ALTER ROLE \"{role}\" RESET {name}"),
        };
        findings.push(
            Finding::new(
                RuleId::UnmanagedRoleSetting,
                Severity::Error,
                format!("role `{role}` sets `{setting}` {scope}, which moat does not manage"),
            )
            .object(format!("{role} {name}"))
            .help(format!(
                "a role setting changes every session of the role (the application's and moat's); run `{reset}`"
            )),
        );
    }
    Ok(())
}

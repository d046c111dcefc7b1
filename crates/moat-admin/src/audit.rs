//! `moat audit`: compare the live catalog with the manifest, then try.
//!
//! The audit reads the catalog (drift from the provisioning plan, foreign keys and dependencies
//! across modules, ACL entries outside the access policy, SECURITY DEFINER routines, role
//! attributes and memberships, objects in `public`) and then probes: it logs in as every runtime
//! and consumer role (and the relay), or `SET ROLE`s from the admin session where it cannot, and
//! really attempts SELECT, INSERT, UPDATE and DELETE on every relation of every other module and
//! on every contract view, inside a transaction that is rolled back. The attempts touch no row:
//! `SELECT ... LIMIT 0`, `INSERT ... SELECT ... WHERE false`, `UPDATE ... WHERE false`,
//! `DELETE ... WHERE false`. An attempt refused at the schema (no USAGE) stands for every
//! relation of that schema: name lookup refuses them all alike.

use std::collections::{BTreeMap, BTreeSet};

use futures::StreamExt;
use moat_core::findings::{Finding, Severity};
use moat_core::manifest::{Manifest, Module};
use moat_core::names::CONTRACTS_SCHEMA;
use serde::{Deserialize, Serialize};
use sqlx::{Connection, PgConnection};

use crate::catalog::{PUBLIC, Snapshot};
use crate::error::{AdminError, db};
use crate::plan::{Note, Plan, Step, plan, wanted_roles};
use crate::policy::{Policy, Wanted};
use crate::provision::read_state;
use crate::target::{DatabaseUrl, password_from_env};

/// Rule names of the audit's findings.
pub mod rules {
    /// The database differs from the provisioning plan in something it lacks.
    pub const PROVISIONING_DRIFT: &str = "provisioning-drift";
    /// A role or schema with the project's prefix that the manifest does not declare.
    pub const ORPHANED: &str = "orphaned-object";
    /// A foreign key between tables of two modules.
    pub const CROSS_MODULE_FOREIGN_KEY: &str = "cross-module-foreign-key";
    /// An object of one module that depends on another module's object.
    pub const CROSS_MODULE_REFERENCE: &str = "cross-module-reference";
    /// A contract view that depends on a relation outside its `reads`.
    pub const CONTRACT_UNDECLARED_READ: &str = "contract-undeclared-read";
    /// A privilege outside the manifest's access policy.
    pub const GRANT_BEYOND_MANIFEST: &str = "grant-beyond-manifest";
    /// A SECURITY DEFINER routine in a module schema.
    pub const SECURITY_DEFINER: &str = "security-definer-function";
    /// A moat role with SUPERUSER, CREATEROLE, CREATEDB, REPLICATION or BYPASSRLS.
    pub const PRIVILEGED_ROLE: &str = "privileged-role";
    /// A membership that lets a role act as another.
    pub const ROLE_MEMBERSHIP: &str = "role-membership";
    /// A table, view or routine in schema `public`.
    pub const OBJECT_IN_PUBLIC: &str = "object-in-public-schema";
    /// CONNECT or TEMPORARY on the database, or rights on schema `public`, held by PUBLIC.
    pub const PUBLIC_ACCESS: &str = "public-database-access";
    /// The probe did what the manifest forbids.
    pub const ACCESS_LEAK: &str = "access-leak";
    /// The probe could not do what the manifest allows (a consumer cannot read its view).
    pub const ACCESS_BROKEN: &str = "access-broken";
}

/// Predefined roles that read or write everything or reach the server's files and programs.
pub const DANGEROUS_PREDEFINED_ROLES: [&str; 6] = [
    "pg_read_all_data",
    "pg_write_all_data",
    "pg_execute_server_program",
    "pg_read_server_files",
    "pg_write_server_files",
    "pg_signal_backend",
];

/// A routine body handed to the SQL analysis (which this crate does not link).
#[derive(Debug, Clone)]
pub struct RoutineBody {
    /// Schema.
    pub schema: String,
    /// `oid::regprocedure` text.
    pub signature: String,
    /// `plpgsql`, `sql`, ...
    pub language: String,
    /// `prosrc`.
    pub body: String,
    /// `pg_get_functiondef`: the complete `CREATE OR REPLACE FUNCTION` statement.
    pub definition: String,
}

/// Analyzes routine bodies found in module schemas (the CLI plugs the SQL analysis in here).
pub trait BodyAnalyzer: Sync {
    /// Findings for one routine of `module`.
    fn analyze(&self, manifest: &Manifest, module: &Module, routine: &RoutineBody) -> Vec<Finding>;
}

/// How to audit.
#[derive(Clone, Copy)]
pub struct AuditOptions<'a> {
    /// Run the access probe (default true).
    pub probe: bool,
    /// How many roles to probe at once.
    pub concurrency: usize,
    /// Analysis of routine bodies, when available.
    pub body_analyzer: Option<&'a dyn BodyAnalyzer>,
}

impl Default for AuditOptions<'_> {
    fn default() -> Self {
        Self { probe: true, concurrency: 8, body_analyzer: None }
    }
}

impl std::fmt::Debug for AuditOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditOptions")
            .field("probe", &self.probe)
            .field("concurrency", &self.concurrency)
            .field("body_analyzer", &self.body_analyzer.is_some())
            .finish()
    }
}

/// How the probe acted as a role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeMethod {
    /// It logged in as the role.
    Login,
    /// It could not log in and used `SET ROLE` from the admin session.
    SetRole,
}

/// One probed role.
#[derive(Debug, Clone, Serialize)]
pub struct ProbedRole {
    /// Role name.
    pub role: String,
    /// What the role is (`module:patients`, `consumer:reporting`, `relay`).
    pub kind: String,
    /// How the probe acted as it.
    pub method: ProbeMethod,
    /// Why logging in failed, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub login_error: Option<String>,
}

/// What a role may do with a relation, and what it could do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Nothing allowed, nothing possible.
    Denied,
    /// Allowed by the manifest (a contract view, the relay's outbox) and possible.
    Allowed,
    /// Possible but not allowed.
    Leak,
    /// Allowed but not possible.
    Broken,
}

/// One row of the access array: a role and a relation of another module or a contract view.
/// `select`, `insert`, `update`, `delete` say whether the attempt succeeded.
#[derive(Debug, Clone, Serialize)]
pub struct AccessRow {
    /// Role.
    pub role: String,
    /// `schema.relation`.
    pub relation: String,
    /// SELECT succeeded.
    pub select: bool,
    /// INSERT succeeded.
    pub insert: bool,
    /// UPDATE succeeded.
    pub update: bool,
    /// DELETE succeeded.
    pub delete: bool,
    /// Judged against the manifest.
    pub verdict: Verdict,
    /// The catalog's answer (`has_schema_privilege` USAGE and `has_table_privilege`), for
    /// comparison with the attempts.
    pub privileges: Privileges,
}

/// Privilege functions' answers for one role and relation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Privileges {
    /// USAGE on the schema.
    pub usage: bool,
    /// SELECT on the relation.
    pub select: bool,
    /// INSERT.
    pub insert: bool,
    /// UPDATE.
    pub update: bool,
    /// DELETE.
    pub delete: bool,
}

/// A cell of the access matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Cell {
    /// The role's own module.
    Own,
    /// Allowed by the manifest (contract, outbox) and possible.
    Allowed,
    /// Denied, as it should be.
    Denied,
    /// Possible but not allowed.
    Leak,
    /// Allowed but not possible.
    Broken,
}

/// The access matrix: rows are roles, columns modules then contracts.
#[derive(Debug, Clone, Serialize)]
pub struct Matrix {
    /// Column names (`patients`, `contract ward_census`).
    pub columns: Vec<String>,
    /// One row per probed role: the role and its cells.
    pub rows: Vec<(String, Vec<Cell>)>,
}

/// What the audit found.
#[derive(Debug, Clone)]
pub struct AuditReport {
    /// Findings, sorted.
    pub findings: Vec<Finding>,
    /// The access array.
    pub access: Vec<AccessRow>,
    /// The probed roles.
    pub probed: Vec<ProbedRole>,
    /// The access matrix.
    pub matrix: Matrix,
    /// How many attempts the probe made.
    pub attempts: usize,
}

impl AuditReport {
    /// Whether any finding is an error.
    pub fn has_errors(&self) -> bool {
        self.findings.iter().any(|f| f.severity == Severity::Error)
    }
}

/// Runs the audit.
pub async fn audit(
    url: &DatabaseUrl,
    manifest: &Manifest,
    options: AuditOptions<'_>,
) -> Result<AuditReport, AdminError> {
    let started = std::time::Instant::now();
    let phase = |name: &str| tracing::debug!(phase = name, elapsed_ms = started.elapsed().as_millis() as u64, "audit");
    let mut conn = crate::connect(url).await?;
    let (snapshot, inputs) = read_state(&mut conn, manifest).await?;
    phase("catalog snapshot");
    let plan = plan(manifest, &snapshot, &inputs);
    let policy = Policy::new(manifest, &inputs.installed_contracts);
    let mut findings = Vec::new();
    drift_findings(&plan, &mut findings);
    acl_findings(manifest, &snapshot, &policy, &mut findings);
    role_findings(manifest, &snapshot, &mut findings);
    routine_findings(manifest, &snapshot, &mut findings);
    public_findings(&snapshot, &mut findings);
    phase("catalog findings");
    dependency_findings(&mut conn, manifest, &mut findings).await?;
    phase("dependencies");
    if let Some(analyzer) = options.body_analyzer {
        body_findings(&mut conn, manifest, analyzer, &mut findings).await?;
        phase("routine bodies");
    }
    let (access, probed, attempts) = if options.probe {
        probe(&mut conn, url, manifest, &snapshot, &policy, &inputs.installed_contracts, options.concurrency).await?
    } else {
        (Vec::new(), Vec::new(), 0)
    };
    phase("probe");
    crate::provision::close(conn).await;
    access_findings(manifest, &access, &probed, &mut findings);
    let matrix = matrix(manifest, &inputs.installed_contracts, &access, &probed);
    moat_core::findings::sort(&mut findings);
    findings.dedup_by(|a, b| a.rule == b.rule && a.object == b.object && a.message == b.message);
    phase("matrix");
    Ok(AuditReport { findings, access, probed, matrix, attempts })
}

fn module_of<'m>(manifest: &'m Manifest, schema: &str) -> Option<&'m Module> {
    manifest.module_by_schema(schema)
}

fn drift_findings(plan: &Plan, findings: &mut Vec<Finding>) {
    for step in &plan.steps {
        match step {
            // Extra privileges and attributes are reported, with their holder, by the rules below.
            Step::Sql { sql, .. } if sql.starts_with("REVOKE ") || only_dropped_attributes(sql) => {}
            Step::Sql { sql, display, .. } => findings.push(
                Finding::new(
                    rules::PROVISIONING_DRIFT,
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
                    rules::PROVISIONING_DRIFT,
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
                    rules::ORPHANED,
                    Severity::Warning,
                    format!("role `{role}` has the project's prefix but is not in the manifest"),
                )
                .object(role.clone())
                .help("a removed module's roles are left alone; drop them by hand once its data is gone"),
            ),
            Note::OrphanedSchema(schema) => findings.push(
                Finding::new(
                    rules::ORPHANED,
                    Severity::Warning,
                    format!("schema `{schema}` belongs to no module of the manifest"),
                )
                .object(schema.clone())
                .help("a removed module's schema is left alone; drop it by hand once its data is gone"),
            ),
            Note::ContractWaiting { contract, missing } => findings.push(
                Finding::new(
                    rules::PROVISIONING_DRIFT,
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
    acl: &[crate::catalog::AclItem],
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
        let rule = rules::GRANT_BEYOND_MANIFEST;
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

fn acl_findings(manifest: &Manifest, snapshot: &Snapshot, policy: &Policy<'_>, findings: &mut Vec<Finding>) {
    let ours: BTreeSet<String> = wanted_roles(manifest).into_iter().map(|r| r.name).collect();
    let mut ours_and_public = ours.clone();
    ours_and_public.insert(PUBLIC.to_owned());

    // The database: PUBLIC's rights are their own rule; moat's roles hold CONNECT only.
    for item in snapshot.database_acl.iter().filter(|a| a.grantee == PUBLIC) {
        findings.push(
            Finding::new(rules::PUBLIC_ACCESS, Severity::Error, format!("PUBLIC holds {} on database `{}`", item.privilege, snapshot.database))
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
                    rules::PUBLIC_ACCESS,
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
                Finding::new(rules::GRANT_BEYOND_MANIFEST, Severity::Error, format!("schema `{name}` is owned by `{}`, not by `{owner}`", schema.owner))
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
                    rules::GRANT_BEYOND_MANIFEST,
                    Severity::Error,
                    format!("`{object}` is owned by `{}`, not by `{owner}`", relation.owner),
                )
                .object(object.clone())
                .help("its owner holds every right on it; `moat provision` gives it to the module's owner role"),
            );
        }
        let what = if relation.kind == "S" {
            "sequence"
        } else if relation.kind == "v" {
            "view"
        } else {
            "table"
        };
        beyond(findings, module.as_deref(), what, &object, &relation.acl, &relation.owner, &wanted, None);
    }
    for function in snapshot.functions.iter().filter(|f| !f.extension) {
        let Some((owner, wanted)) = policy.function(&function.schema) else { continue };
        let module = module_of(manifest, &function.schema).map(|m| m.name.to_string());
        if function.owner != owner {
            findings.push(
                Finding::new(
                    rules::GRANT_BEYOND_MANIFEST,
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

fn role_findings(manifest: &Manifest, snapshot: &Snapshot, findings: &mut Vec<Finding>) {
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
                    rules::PRIVILEGED_ROLE,
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
    let owners: BTreeSet<String> = wanted
        .iter()
        .filter(|r| matches!(r.kind, crate::plan::RoleKind::ModuleOwner(_) | crate::plan::RoleKind::ContractsOwner))
        .map(|r| r.name.clone())
        .collect();
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
                    rules::ROLE_MEMBERSHIP,
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
                    rules::ROLE_MEMBERSHIP,
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

fn routine_findings(manifest: &Manifest, snapshot: &Snapshot, findings: &mut Vec<Finding>) {
    for function in snapshot.functions.iter().filter(|f| f.security_definer && !f.extension) {
        let Some(module) = module_of(manifest, &function.schema) else { continue };
        let pinned = function.config.iter().any(|c| c.starts_with("search_path="));
        let finding = if pinned {
            Finding::new(
                rules::SECURITY_DEFINER,
                Severity::Warning,
                format!("routine `{}` is SECURITY DEFINER: it runs with its owner's rights", function.signature),
            )
            .help("its search_path is pinned; make sure it is not executable by other modules' roles")
        } else {
            Finding::new(
                rules::SECURITY_DEFINER,
                Severity::Error,
                format!("routine `{}` is SECURITY DEFINER without a pinned search_path", function.signature),
            )
            .help(format!("a caller can shadow the objects it uses; add `SET search_path = {}, pg_temp`, or make it SECURITY INVOKER", function.schema))
        };
        findings.push(finding.module(module.name.to_string()).object(function.signature.clone()));
    }
}

fn public_findings(snapshot: &Snapshot, findings: &mut Vec<Finding>) {
    for relation in snapshot.relations.iter().filter(|r| r.schema == "public" && !r.extension && !r.owned_by_table) {
        findings.push(
            Finding::new(
                rules::OBJECT_IN_PUBLIC,
                Severity::Warning,
                format!("`public.{}` belongs to no module", relation.name),
            )
            .object(format!("public.{}", relation.name))
            .help("move it into the schema of the module that owns it"),
        );
    }
    for function in snapshot.functions.iter().filter(|f| f.schema == "public" && !f.extension) {
        findings.push(
            Finding::new(
                rules::OBJECT_IN_PUBLIC,
                Severity::Warning,
                format!("routine `{}` belongs to no module", function.signature),
            )
            .object(function.signature.clone())
            .help("move it into the schema of the module that owns it"),
        );
    }
}

#[derive(Debug, Deserialize)]
struct Dependency {
    kind: String,
    schema: String,
    identity: String,
    ref_kind: String,
    ref_schema: String,
    ref_identity: String,
    foreign_key: Option<String>,
    ref_relation: Option<String>,
}

const DEPENDENCIES_SQL: &str = r#"
WITH managed AS (SELECT oid, nspname FROM pg_namespace WHERE nspname = ANY($1)),
refs AS (
  SELECT d.classid, d.objid, d.objsubid, d.refclassid, d.refobjid,
         coalesce(c.relnamespace, p.pronamespace, t.typnamespace) AS refns,
         CASE d.classid
           WHEN 'pg_class'::regclass THEN d.objid
           WHEN 'pg_rewrite'::regclass THEN (SELECT ev_class FROM pg_rewrite WHERE oid = d.objid)
           WHEN 'pg_trigger'::regclass THEN (SELECT tgrelid FROM pg_trigger WHERE oid = d.objid)
           WHEN 'pg_policy'::regclass THEN (SELECT polrelid FROM pg_policy WHERE oid = d.objid)
           WHEN 'pg_attrdef'::regclass THEN (SELECT adrelid FROM pg_attrdef WHERE oid = d.objid)
           WHEN 'pg_constraint'::regclass THEN (SELECT conrelid FROM pg_constraint WHERE oid = d.objid)
         END AS onrel,
         CASE d.classid
           WHEN 'pg_proc'::regclass THEN (SELECT pronamespace FROM pg_proc WHERE oid = d.objid)
           WHEN 'pg_type'::regclass THEN (SELECT typnamespace FROM pg_type WHERE oid = d.objid)
           WHEN 'pg_constraint'::regclass THEN (SELECT connamespace FROM pg_constraint WHERE oid = d.objid)
         END AS ownns
  FROM pg_depend d
  LEFT JOIN pg_class c ON d.refclassid = 'pg_class'::regclass AND c.oid = d.refobjid
  LEFT JOIN pg_proc p ON d.refclassid = 'pg_proc'::regclass AND p.oid = d.refobjid
  LEFT JOIN pg_type t ON d.refclassid = 'pg_type'::regclass AND t.oid = d.refobjid
  WHERE d.deptype IN ('n', 'a') AND d.refobjid >= 16384
),
located AS (
  SELECT refs.*, m.nspname AS ref_schema,
         coalesce((SELECT relnamespace FROM pg_class WHERE oid = refs.onrel AND refs.onrel <> 0), refs.ownns) AS depns
  FROM refs JOIN managed m ON m.oid = refs.refns
),
-- Only dependencies that cross schemas are described (pg_identify_object is not cheap).
crossing AS MATERIALIZED (
  SELECT l.* FROM located l JOIN pg_namespace dn ON dn.oid = l.depns
  WHERE dn.nspname <> l.ref_schema AND dn.nspname = ANY($1)
)
SELECT coalesce(json_agg(DISTINCT jsonb_build_object(
    'kind', CASE WHEN a.type = 'rule' THEN (SELECT CASE relkind WHEN 'm' THEN 'materialized view' ELSE 'view' END FROM pg_class WHERE oid = l.onrel) ELSE a.type END,
    'schema', dn.nspname,
    'identity', CASE WHEN a.type = 'rule' THEN l.onrel::regclass::text ELSE a.identity END,
    'ref_kind', b.type, 'ref_schema', l.ref_schema, 'ref_identity', b.identity,
    'foreign_key', CASE WHEN l.classid = 'pg_constraint'::regclass
                        THEN (SELECT conname FROM pg_constraint WHERE oid = l.objid AND contype = 'f') END,
    'ref_relation', CASE WHEN l.refclassid = 'pg_class'::regclass
                         THEN (SELECT relname FROM pg_class WHERE oid = l.refobjid) END
  )), '[]')::text
FROM crossing l
JOIN pg_namespace dn ON dn.oid = l.depns
CROSS JOIN LATERAL pg_identify_object(l.classid, l.objid, 0) a
CROSS JOIN LATERAL pg_identify_object(l.refclassid, l.refobjid, 0) b
"#;

async fn dependency_findings(
    conn: &mut PgConnection,
    manifest: &Manifest,
    findings: &mut Vec<Finding>,
) -> Result<(), AdminError> {
    let mut schemas: Vec<String> = manifest.modules.iter().map(|m| m.schema.to_string()).collect();
    schemas.push(CONTRACTS_SCHEMA.to_owned());
    let text: String = sqlx::query_scalar(DEPENDENCIES_SQL)
        .bind(&schemas)
        .fetch_one(&mut *conn)
        .await
        .map_err(db("reading dependencies between schemas"))?;
    let dependencies: Vec<Dependency> = serde_json::from_str(&text).map_err(|e| AdminError::Database {
        context: "reading dependencies".into(),
        source: sqlx::Error::Decode(Box::new(e)),
    })?;
    for dep in dependencies {
        let ref_module = module_of(manifest, &dep.ref_schema);
        if dep.schema == CONTRACTS_SCHEMA {
            // A contract view may read exactly its declared relations (which contract owns which
            // view is not needed here: a read outside every contract's `reads` is undeclared).
            let declared = dep.ref_relation.as_ref().is_some_and(|relation| {
                manifest
                    .contracts
                    .iter()
                    .flat_map(|c| c.reads.iter())
                    .any(|r| r.schema.as_str() == dep.ref_schema && r.relation.as_str() == relation)
            });
            if !declared && ref_module.is_some() {
                findings.push(
                    Finding::new(
                        rules::CONTRACT_UNDECLARED_READ,
                        Severity::Error,
                        format!(
                            "{} `{}` depends on {} `{}`, which no contract declares in `reads`",
                            dep.kind, dep.identity, dep.ref_kind, dep.ref_identity
                        ),
                    )
                    .object(dep.identity.clone())
                    .help("declare the relation in the contract's `reads`, or change the view"),
                );
            }
            continue;
        }
        let Some(module) = module_of(manifest, &dep.schema) else { continue };
        let owner_text = match ref_module {
            Some(m) => format!("module `{}`", m.name),
            None => format!("schema `{}`", dep.ref_schema),
        };
        if let Some(constraint) = dep.foreign_key {
            // A foreign key depends on the referenced table and on its unique index; one finding.
            if dep.ref_kind != "table" {
                continue;
            }
            let table = dep.identity.rsplit_once(" on ").map_or(dep.identity.as_str(), |(_, t)| t).to_owned();
            findings.push(
                Finding::new(
                    rules::CROSS_MODULE_FOREIGN_KEY,
                    Severity::Error,
                    format!("foreign key `{constraint}` on `{table}` references `{}` of {owner_text}", dep.ref_identity),
                )
                .module(module.name.to_string())
                .object(format!("{table}.{constraint}"))
                .help("store the other module's id as a plain value (no foreign key) and validate it through that module's API; a foreign key couples the two schemas for good"),
            );
            continue;
        }
        findings.push(
            Finding::new(
                rules::CROSS_MODULE_REFERENCE,
                Severity::Error,
                format!("{} `{}` depends on {} `{}` of {owner_text}", dep.kind, dep.identity, dep.ref_kind, dep.ref_identity),
            )
            .module(module.name.to_string())
            .object(dep.identity.clone())
            .help("modules reference each other by id and read each other through APIs, events and snapshots, or through a contract view"),
        );
    }
    Ok(())
}

async fn body_findings(
    conn: &mut PgConnection,
    manifest: &Manifest,
    analyzer: &dyn BodyAnalyzer,
    findings: &mut Vec<Finding>,
) -> Result<(), AdminError> {
    let schemas: Vec<String> = manifest.modules.iter().map(|m| m.schema.to_string()).collect();
    let rows: Vec<(String, String, String, String, String)> = sqlx::query_as(
        "SELECT n.nspname::text, p.oid::regprocedure::text, l.lanname::text, p.prosrc, pg_get_functiondef(p.oid) \
         FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace JOIN pg_language l ON l.oid = p.prolang \
         WHERE n.nspname = ANY($1) AND l.lanname IN ('plpgsql', 'sql') AND p.prokind IN ('f', 'p') \
           AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')",
    )
    .bind(&schemas)
    .fetch_all(&mut *conn)
    .await
    .map_err(db("reading routine bodies"))?;
    for (schema, signature, language, body, definition) in rows {
        let Some(module) = module_of(manifest, &schema) else { continue };
        findings.extend(analyzer.analyze(
            manifest,
            module,
            &RoutineBody { schema, signature, language, body, definition },
        ));
    }
    Ok(())
}

/// One relation the probe attempts.
#[derive(Debug, Clone, Serialize)]
struct Target {
    schema: String,
    name: String,
    /// A column to name in INSERT and UPDATE attempts (none: only SELECT and DELETE are tried).
    column: Option<String>,
    kind: String,
}

/// The probe's DO block: attempts every operation on every target inside a subtransaction and
/// leaves one character per attempt in `moat.probe_output` (Y succeeded, N 42501, ? other error,
/// n refused by the schema's refusal of an earlier attempt).
const PROBE_DO: &str = r#"DO $moat_probe$
DECLARE
  t json;
  out text := '';
  op text;
  stmt text;
  message text;
  denied_schema text;
BEGIN
  FOR t IN SELECT * FROM json_array_elements(current_setting('moat.probe_input')::json) LOOP
    -- A schema whose name lookup was refused refuses every statement on every object in it:
    -- the first refused attempt stands for the schema's other relations.
    IF t->>0 = denied_schema THEN
      out := out || 'nnnn';
      CONTINUE;
    END IF;
    FOREACH op IN ARRAY ARRAY['S', 'I', 'U', 'D'] LOOP
      stmt := CASE
        WHEN op = 'S' THEN format('SELECT 1 FROM %I.%I LIMIT 0', t->>0, t->>1)
        WHEN op = 'I' AND t->>2 IS NOT NULL THEN format('INSERT INTO %I.%I (%I) OVERRIDING SYSTEM VALUE SELECT NULL WHERE false', t->>0, t->>1, t->>2)
        WHEN op = 'U' AND t->>2 IS NOT NULL THEN format('UPDATE %I.%I SET %I = DEFAULT WHERE false', t->>0, t->>1, t->>2)
        WHEN op = 'D' THEN format('DELETE FROM %I.%I WHERE false', t->>0, t->>1)
      END;
      IF stmt IS NULL THEN
        out := out || '?';
        CONTINUE;
      END IF;
      BEGIN
        EXECUTE stmt;
        out := out || 'Y';
      EXCEPTION
        WHEN insufficient_privilege THEN
          GET STACKED DIAGNOSTICS message = MESSAGE_TEXT;
          IF message = format('permission denied for schema %s', t->>0) THEN
            denied_schema := t->>0;
            out := out || 'N' || repeat('n', 3 - (length(out) % 4));
            EXIT;
          END IF;
          out := out || 'N';
        WHEN OTHERS THEN out := out || '?';
      END;
    END LOOP;
  END LOOP;
  PERFORM set_config('moat.probe_output', out, true);
END
$moat_probe$"#;

const TARGETS_SQL: &str = r#"
SELECT n.nspname::text, c.relname::text, c.relkind::text,
       (SELECT a.attname::text FROM pg_attribute a
         WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
         ORDER BY a.attnum LIMIT 1)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = ANY($1) AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
ORDER BY 1, 2
"#;

const PRIVILEGES_SQL: &str = r#"
SELECT r.rolname::text, n.nspname::text, c.relname::text,
       has_schema_privilege(r.oid, n.oid, 'USAGE'),
       has_table_privilege(r.oid, c.oid, 'SELECT'), has_table_privilege(r.oid, c.oid, 'INSERT'),
       has_table_privilege(r.oid, c.oid, 'UPDATE'), has_table_privilege(r.oid, c.oid, 'DELETE')
FROM pg_roles r CROSS JOIN pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE r.rolname = ANY($1) AND n.nspname = ANY($2) AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
"#;

type ProbeResult = (Vec<AccessRow>, Vec<ProbedRole>, usize);

async fn probe(
    conn: &mut PgConnection,
    url: &DatabaseUrl,
    manifest: &Manifest,
    snapshot: &Snapshot,
    policy: &Policy<'_>,
    installed: &BTreeMap<String, crate::plan::InstalledContract>,
    concurrency: usize,
) -> Result<ProbeResult, AdminError> {
    let roles = manifest.roles();
    let mut schemas: Vec<String> = manifest.modules.iter().map(|m| m.schema.to_string()).collect();
    if !manifest.contracts.is_empty() {
        schemas.push(CONTRACTS_SCHEMA.to_owned());
    }
    let rows: Vec<(String, String, String, Option<String>)> = sqlx::query_as(TARGETS_SQL)
        .bind(&schemas)
        .fetch_all(&mut *conn)
        .await
        .map_err(db("listing relations to probe"))?;
    let contract_views: BTreeSet<&str> = installed.values().flat_map(|c| c.views.iter().map(String::as_str)).collect();
    let all: Vec<Target> = rows
        .into_iter()
        .filter(|(schema, name, _, _)| schema != CONTRACTS_SCHEMA || contract_views.contains(name.as_str()))
        .map(|(schema, name, kind, column)| Target { schema, name, column, kind })
        .collect();

    // Who is probed: every runtime role, every consumer, and the relay.
    let mut who: Vec<(String, String, Option<String>)> = Vec::new();
    for module in &manifest.modules {
        who.push((
            roles.module_runtime(&module.name),
            format!("module:{}", module.name),
            Some(module.schema.to_string()),
        ));
    }
    for consumer in &manifest.consumers {
        who.push((roles.consumer(consumer), format!("consumer:{consumer}"), None));
    }
    if manifest.uses_events() {
        who.push((roles.relay(), "relay".to_owned(), None));
    }
    who.retain(|(role, _, _)| snapshot.roles.contains_key(role));

    let names: Vec<String> = who.iter().map(|(r, _, _)| r.clone()).collect();
    type PrivilegeRow = (String, String, String, bool, bool, bool, bool, bool);
    // The privilege matrix (catalog) and the attempts (one session per role) run side by side.
    let privileges_query =
        sqlx::query_as::<_, PrivilegeRow>(PRIVILEGES_SQL).bind(&names).bind(&schemas).fetch_all(&mut *conn);
    let jobs = who.iter().map(|(role, kind, own_schema)| {
        let targets: Vec<Target> = all.iter().filter(|t| Some(&t.schema) != own_schema.as_ref()).cloned().collect();
        async move {
            let outcome = probe_role(url, role, &targets).await;
            (role.clone(), kind.clone(), targets, outcome)
        }
    });
    let attempts_stream = futures::stream::iter(jobs).buffer_unordered(concurrency.max(1)).collect::<Vec<_>>();
    let (privilege_rows, results) = tokio::join!(privileges_query, attempts_stream);
    let privileges: BTreeMap<(String, String, String), Privileges> = privilege_rows
        .map_err(db("reading the privilege matrix"))?
        .into_iter()
        .map(|(role, schema, name, usage, select, insert, update, delete)| {
            ((role, schema, name), Privileges { usage, select, insert, update, delete })
        })
        .collect();

    let mut access = Vec::new();
    let mut probed = Vec::new();
    let mut attempts = 0;
    for (role, kind, targets, outcome) in results {
        let (method, login_error, codes) = outcome?;
        attempts += codes.bytes().filter(|c| *c != b'n').count();
        probed.push(ProbedRole { role: role.clone(), kind, method, login_error });
        for (i, target) in targets.iter().enumerate() {
            let catalog = privileges
                .get(&(role.clone(), target.schema.clone(), target.name.clone()))
                .copied()
                .unwrap_or_default();
            let code = |op: usize, by_catalog: bool| match codes.as_bytes().get(i * 4 + op) {
                Some(b'Y') => true,
                Some(b'N' | b'n') => false,
                // The attempt failed before its privilege check (a view that cannot take an
                // INSERT, a table with no column to name): the catalog answers instead.
                _ => catalog.usage && by_catalog,
            };
            let (select, insert, update, delete) =
                (code(0, catalog.select), code(1, catalog.insert), code(2, catalog.update), code(3, catalog.delete));
            let wanted =
                policy.relation(&target.schema, &target.name, &target.kind).map(|(_, w)| w).unwrap_or_default();
            let expected: BTreeSet<&str> = wanted.get(&role).cloned().unwrap_or_default();
            let done: Vec<&str> = [("SELECT", select), ("INSERT", insert), ("UPDATE", update), ("DELETE", delete)]
                .into_iter()
                .filter(|(_, ok)| *ok)
                .map(|(p, _)| p)
                .collect();
            let probed_ops: BTreeSet<&str> =
                expected.iter().copied().filter(|p| matches!(*p, "SELECT" | "INSERT" | "UPDATE" | "DELETE")).collect();
            let verdict = if done.iter().any(|p| !expected.contains(p)) {
                Verdict::Leak
            } else if !probed_ops.is_empty() && probed_ops.iter().all(|p| done.contains(p)) {
                Verdict::Allowed
            } else if !probed_ops.is_empty() {
                Verdict::Broken
            } else {
                Verdict::Denied
            };
            access.push(AccessRow {
                role: role.clone(),
                relation: format!("{}.{}", target.schema, target.name),
                select,
                insert,
                update,
                delete,
                verdict,
                privileges: catalog,
            });
        }
    }
    access.sort_by(|a, b| (&a.role, &a.relation).cmp(&(&b.role, &b.relation)));
    probed.sort_by(|a, b| a.role.cmp(&b.role));
    Ok((access, probed, attempts))
}

/// Attempts every operation on `targets` as `role`: logged in as the role if it can, otherwise
/// by `SET ROLE` from an admin session. Returns the method, the login error and the codes.
async fn probe_role(
    url: &DatabaseUrl,
    role: &str,
    targets: &[Target],
) -> Result<(ProbeMethod, Option<String>, String), AdminError> {
    let input: Vec<(&str, &str, Option<&str>)> = targets
        .iter()
        .map(|t| (t.schema.as_str(), t.name.as_str(), if t.kind == "m" { None } else { t.column.as_deref() }))
        .collect();
    let input = serde_json::to_string(&input).unwrap_or_else(|_| "[]".to_owned());
    let login = url.with_login(role, password_from_env(role).as_deref());
    let (mut conn, method, login_error) = match crate::connect_as(&login).await {
        Ok(conn) => (conn, ProbeMethod::Login, None),
        Err(e) => {
            let reason = match &e {
                AdminError::Connect { source, .. } => crate::error::describe_sqlx(source),
                other => other.to_string(),
            };
            (crate::connect(url).await?, ProbeMethod::SetRole, Some(reason))
        }
    };
    let mut tx = conn.begin().await.map_err(db("starting the probe"))?;
    if method == ProbeMethod::SetRole {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SET LOCAL ROLE {}", moat_core::quote::ident(role))))
            .execute(&mut *tx)
            .await
            .map_err(db(format!("becoming `{role}` for the probe")))?;
    }
    sqlx::query("SELECT set_config('moat.probe_input', $1, true)")
        .bind(&input)
        .execute(&mut *tx)
        .await
        .map_err(db("preparing the probe"))?;
    sqlx::raw_sql(PROBE_DO).execute(&mut *tx).await.map_err(db(format!("probing as `{role}`")))?;
    let codes: String = sqlx::query_scalar("SELECT current_setting('moat.probe_output')")
        .fetch_one(&mut *tx)
        .await
        .map_err(db("reading the probe's result"))?;
    tx.rollback().await.map_err(db("ending the probe"))?;
    let _ = conn.close().await;
    Ok((method, login_error, codes))
}

fn access_findings(manifest: &Manifest, access: &[AccessRow], probed: &[ProbedRole], findings: &mut Vec<Finding>) {
    let method_of = |role: &str| probed.iter().find(|p| p.role == role).map(|p| p.method);
    for row in access {
        let how = match method_of(&row.role) {
            Some(ProbeMethod::Login) => "logged in as the role",
            _ => "as the role via SET ROLE",
        };
        let schema = row.relation.split('.').next().unwrap_or_default();
        let module = module_of(manifest, schema).map(|m| m.name.to_string());
        match row.verdict {
            Verdict::Leak => {
                let done: Vec<&str> =
                    [("SELECT", row.select), ("INSERT", row.insert), ("UPDATE", row.update), ("DELETE", row.delete)]
                        .into_iter()
                        .filter(|(_, ok)| *ok)
                        .map(|(p, _)| p)
                        .collect();
                let mut finding = Finding::new(
                    rules::ACCESS_LEAK,
                    Severity::Error,
                    format!("`{}` could {} `{}` ({how}), which the manifest does not allow", row.role, done.join(", "), row.relation),
                )
                .object(format!("{} -> {}", row.role, row.relation))
                .help("find the grant, membership or attribute that allows it (see the other findings) and revoke it; `moat provision` restores moat's own grants");
                if let Some(module) = module {
                    finding = finding.module(module);
                }
                findings.push(finding);
            }
            Verdict::Broken => findings.push(
                Finding::new(
                    rules::ACCESS_BROKEN,
                    Severity::Error,
                    format!("`{}` cannot read `{}` ({how}), which the manifest allows", row.role, row.relation),
                )
                .object(format!("{} -> {}", row.role, row.relation))
                .help("run `moat provision` to restore the grant"),
            ),
            Verdict::Denied | Verdict::Allowed => {}
        }
    }
}

fn matrix(
    manifest: &Manifest,
    installed: &BTreeMap<String, crate::plan::InstalledContract>,
    access: &[AccessRow],
    probed: &[ProbedRole],
) -> Matrix {
    let mut columns: Vec<(String, Vec<String>)> = Vec::new();
    for module in &manifest.modules {
        columns.push((module.name.to_string(), vec![module.schema.to_string()]));
    }
    for contract in &manifest.contracts {
        let views = installed
            .get(contract.name.as_str())
            .map(|c| c.views.iter().map(|v| format!("{CONTRACTS_SCHEMA}.{v}")).collect())
            .unwrap_or_default();
        columns.push((format!("contract {}", contract.name), views));
    }
    // One pass over the access rows: the worst verdict per (role, column).
    let mut column_of: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, (_, scope)) in columns.iter().enumerate() {
        for item in scope {
            column_of.insert(item.as_str(), i);
        }
    }
    let rank = |v: Verdict| match v {
        Verdict::Denied => 0,
        Verdict::Allowed => 1,
        Verdict::Broken => 2,
        Verdict::Leak => 3,
    };
    let mut worst: BTreeMap<(&str, usize), Verdict> = BTreeMap::new();
    for row in access {
        let schema = row.relation.split_once('.').map_or(row.relation.as_str(), |(s, _)| s);
        let Some(&column) = column_of.get(row.relation.as_str()).or_else(|| column_of.get(schema)) else { continue };
        let entry = worst.entry((row.role.as_str(), column)).or_insert(Verdict::Denied);
        if rank(row.verdict) > rank(*entry) {
            *entry = row.verdict;
        }
    }
    let rows = probed
        .iter()
        .map(|p| {
            let own = p.kind.strip_prefix("module:");
            let cells = columns
                .iter()
                .enumerate()
                .map(|(i, (name, _))| {
                    if own == Some(name.as_str()) {
                        return Cell::Own;
                    }
                    match worst.get(&(p.role.as_str(), i)).copied().unwrap_or(Verdict::Denied) {
                        Verdict::Leak => Cell::Leak,
                        Verdict::Broken => Cell::Broken,
                        Verdict::Allowed => Cell::Allowed,
                        Verdict::Denied => Cell::Denied,
                    }
                })
                .collect();
            (p.role.clone(), cells)
        })
        .collect();
    Matrix { columns: columns.into_iter().map(|(name, _)| name).collect(), rows }
}

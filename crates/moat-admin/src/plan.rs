//! The provisioning plan: what the manifest wants, compared with a catalog snapshot, as the list
//! of statements that would make the database match. An empty plan means the database is in sync.
//!
//! moat manages every privilege held by the project's own roles and by PUBLIC on the objects it
//! manages (the database, schema `public`, module schemas and everything in them, the contracts
//! schema). Grants to roles that are not the project's are left alone here and reported by the
//! audit. Nothing is ever dropped: a module removed from the manifest is reported as orphaned.

use std::collections::{BTreeMap, BTreeSet};

use moat_core::manifest::Manifest;
use moat_core::names::CONTRACTS_SCHEMA;
use moat_core::quote::{ident, literal, qualified};

use crate::catalog::{AclItem, Grants, PUBLIC, RelationInfo, Snapshot, grants_by_grantee};
use crate::internal;

/// What a section of the plan is about (for grouping in output).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Section {
    /// Roles and their attributes, memberships and settings.
    Roles,
    /// Privileges on the database and on schema `public`.
    Database,
    /// Schemas and their privileges.
    Schemas,
    /// moat's own tables (migration history, outbox, inbox, contracts ledger).
    InternalTables,
    /// Ownership of and privileges on relations and routines.
    Objects,
    /// Default privileges for objects created later.
    DefaultPrivileges,
    /// Contract views.
    Contracts,
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A statement.
    Sql {
        /// Its section.
        section: Section,
        /// The statement as executed.
        sql: String,
        /// The statement as shown, when it differs (a password replaced by `***`).
        display: Option<String>,
    },
    /// Installing (or re-installing) a contract's views.
    InstallContract(ContractInstall),
}

/// A contract whose views must be (re)created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContractInstall {
    /// Contract name.
    pub contract: String,
    /// Its SQL file relative to the manifest.
    pub file: String,
    /// The file's text.
    pub text: String,
    /// Checksum of the text.
    pub checksum: String,
    /// Views the previous version created (dropped first).
    pub previous_views: Vec<String>,
    /// Roles granted SELECT on the views.
    pub readers: Vec<String>,
    /// The contract's own owner role (`<project>_contract_<contract>`): its SQL runs in a session
    /// that logs in as this role, never in the admin's.
    pub owner: String,
    /// The relations the contract may read (`schema.relation`): its views may use nothing else.
    pub reads: Vec<String>,
}

impl Step {
    fn sql(section: Section, sql: String) -> Self {
        Step::Sql { section, sql, display: None }
    }

    /// The step's SQL as shown to people (passwords redacted), ending with `;`.
    pub fn display(&self) -> String {
        match self {
            Step::Sql { sql, display, .. } => format!("{};", display.as_deref().unwrap_or(sql)),
            Step::InstallContract(c) => {
                let mut out = format!("-- contract `{}` from {}\n", c.contract, c.file);
                out.push_str(&format!("-- in a session logged in as {}:\n", ident(&c.owner)));
                out.push_str("BEGIN;\n");
                for view in &c.previous_views {
                    out.push_str(&format!("DROP VIEW IF EXISTS {};\n", qualified(CONTRACTS_SCHEMA, view)));
                }
                out.push_str(&format!("SET LOCAL search_path = {};\n", ident(CONTRACTS_SCHEMA)));
                out.push_str(c.text.trim_end());
                out.push('\n');
                out.push_str("COMMIT;\n");
                out.push_str(&format!(
                    "-- then, as the admin: check that the views read only {}\n",
                    c.reads.join(", ")
                ));
                if c.readers.is_empty() {
                    out.push_str("-- no consumer reads this contract");
                } else {
                    out.push_str(&format!(
                        "-- then: GRANT SELECT ON each view created above TO {}",
                        c.readers.iter().map(|r| ident(r)).collect::<Vec<_>>().join(", ")
                    ));
                }
                out
            }
        }
    }

    /// The step's section.
    pub fn section(&self) -> Section {
        match self {
            Step::Sql { section, .. } => *section,
            Step::InstallContract(_) => Section::Contracts,
        }
    }
}

/// Something provisioning noticed and left alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// A role with the project's prefix that the manifest does not declare.
    OrphanedRole(String),
    /// A schema owned by such a role.
    OrphanedSchema(String),
    /// The schema of a module that lives in another database now: the source copy a move left
    /// (`moat extract MODULE --finalize` drops it).
    MovedAway {
        /// The module.
        module: String,
        /// Its schema here.
        schema: String,
    },
    /// A contract whose read relations do not exist yet (installed after migrations).
    ContractWaiting {
        /// Contract name.
        contract: String,
        /// Relations that do not exist.
        missing: Vec<String>,
    },
}

impl std::fmt::Display for Note {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Note::OrphanedRole(role) => {
                write!(f, "role `{role}` is not in the manifest (a removed module?); left alone")
            }
            Note::OrphanedSchema(schema) => {
                write!(f, "schema `{schema}` belongs to no module in the manifest; left alone")
            }
            Note::MovedAway { module, schema } => write!(
                f,
                "schema `{schema}` is the copy module `{module}` left here when it moved to its own database; \
                 `moat extract {module} --finalize` drops it"
            ),
            Note::ContractWaiting { contract, missing } => {
                write!(f, "contract `{contract}` waits for {} (created by migrations)", missing.join(", "))
            }
        }
    }
}

/// The plan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Steps, in execution order.
    pub steps: Vec<Step>,
    /// What was noticed and left alone.
    pub notes: Vec<Note>,
}

impl Plan {
    /// Whether the database is in sync (nothing to run).
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The plan as SQL text, one statement per line (empty when in sync).
    pub fn to_sql(&self) -> String {
        let mut out = String::new();
        if !self.steps.is_empty() {
            // The statements resolve types and functions as moat's own session does (it pins
            // `search_path` to `pg_catalog`), so a schema a module can create objects in never
            // lends them a type or function when the plan is run by hand.
            out.push_str("SET search_path = pg_catalog;\n\n");
        }
        let mut section = None;
        for step in &self.steps {
            if section != Some(step.section()) {
                if section.is_some() {
                    out.push('\n');
                }
                out.push_str(&format!("-- {}\n", section_title(step.section())));
                section = Some(step.section());
            }
            out.push_str(&step.display());
            out.push('\n');
        }
        out
    }
}

fn section_title(section: Section) -> &'static str {
    match section {
        Section::Roles => "roles",
        Section::Database => "database and schema public",
        Section::Schemas => "module schemas",
        Section::InternalTables => "moat tables",
        Section::Objects => "objects in module schemas",
        Section::DefaultPrivileges => "default privileges",
        Section::Contracts => "contracts",
    }
}

/// An installed contract, from the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledContract {
    /// Checksum of the SQL that was installed.
    pub checksum: String,
    /// Views it created.
    pub views: Vec<String>,
}

/// Inputs of planning besides the manifest and the snapshot.
#[derive(Debug, Clone, Default)]
pub struct PlanInputs {
    /// Contract texts by contract name (read by the caller).
    pub contract_texts: BTreeMap<String, String>,
    /// The contracts ledger, by contract name.
    pub installed_contracts: BTreeMap<String, InstalledContract>,
    /// Passwords for login roles, by role (from the environment); used only when creating a role.
    pub passwords: BTreeMap<String, String>,
    /// Subscribers with a progress row beside the outbox, by module schema (where the table exists).
    pub progress: BTreeMap<String, BTreeSet<String>>,
    /// Modules whose writes a move under way stopped here (their journal, `moat_move`, says
    /// so): the plan does not give their runtime role and the relay their schema back.
    pub frozen: BTreeSet<String>,
}

/// A role the manifest wants.
#[derive(Debug, Clone)]
pub struct WantedRole {
    /// Name.
    pub name: String,
    /// LOGIN or NOLOGIN.
    pub login: bool,
    /// `search_path` in this database.
    pub search_path: Option<String>,
    /// What the role is for (for messages).
    pub kind: RoleKind,
}

impl WantedRole {
    /// Whether the role inherits the privileges of roles it is a member of (all but migrators,
    /// which must `SET ROLE` to act as the owner, so that `RESET ROLE` loses the owner's rights).
    pub fn inherit(&self) -> bool {
        !matches!(self.kind, RoleKind::ModuleMigrator(_))
    }
}

/// The one membership moat wants for `member`: a migrator is a member of its module's owner.
pub fn wanted_membership(manifest: &Manifest, member: &str) -> Option<String> {
    let roles = manifest.roles();
    manifest.modules.iter().find(|m| roles.module_migrator(&m.name) == member).map(|m| roles.module_owner(&m.name))
}

/// The kinds of role moat creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoleKind {
    /// A module's owner role.
    ModuleOwner(String),
    /// A module's runtime role.
    ModuleRuntime(String),
    /// A module's migrator: LOGIN, NOINHERIT, member of the module's owner only; migrations log
    /// in as it and `SET ROLE` to the owner.
    ModuleMigrator(String),
    /// The contracts owner (owns schema `contracts`).
    ContractsOwner,
    /// moat's own role (`<project>_moat`): owns module schemas and moat's tables.
    MoatOwner,
    /// One contract's owner.
    ContractOwner(String),
    /// A consumer.
    Consumer(String),
    /// The event relay.
    Relay,
}

/// The roles the manifest wants, in creation order.
pub fn wanted_roles(manifest: &Manifest) -> Vec<WantedRole> {
    let roles = manifest.roles();
    let mut wanted = Vec::new();
    // moat's own role first: it owns the module schemas created below.
    wanted.push(WantedRole { name: roles.moat_owner(), login: false, search_path: None, kind: RoleKind::MoatOwner });
    for module in &manifest.modules {
        wanted.push(WantedRole {
            name: roles.module_owner(&module.name),
            login: false,
            search_path: None,
            kind: RoleKind::ModuleOwner(module.name.to_string()),
        });
        wanted.push(WantedRole {
            name: roles.module_runtime(&module.name),
            login: true,
            search_path: Some(module.schema.to_string()),
            kind: RoleKind::ModuleRuntime(module.name.to_string()),
        });
        wanted.push(WantedRole {
            name: roles.module_migrator(&module.name),
            login: true,
            search_path: None,
            kind: RoleKind::ModuleMigrator(module.name.to_string()),
        });
    }
    if !manifest.contracts.is_empty() {
        wanted.push(WantedRole {
            name: roles.contracts_owner(),
            login: false,
            search_path: None,
            kind: RoleKind::ContractsOwner,
        });
    }
    for contract in &manifest.contracts {
        // LOGIN without a password: moat logs in with a one-time password to run its SQL.
        wanted.push(WantedRole {
            name: roles.contract_owner(&contract.name),
            login: true,
            search_path: None,
            kind: RoleKind::ContractOwner(contract.name.to_string()),
        });
    }
    for consumer in &manifest.consumers {
        wanted.push(WantedRole {
            name: roles.consumer(consumer),
            login: true,
            search_path: (!manifest.contracts.is_empty()).then(|| CONTRACTS_SCHEMA.to_owned()),
            kind: RoleKind::Consumer(consumer.to_string()),
        });
    }
    if manifest.uses_events() {
        wanted.push(WantedRole { name: roles.relay(), login: true, search_path: None, kind: RoleKind::Relay });
    }
    wanted
}

impl RoleKind {
    /// Whether a non-superuser admin must be a member of roles of this kind (to create and
    /// re-own what they own).
    pub fn admin_is_member(&self) -> bool {
        matches!(self, RoleKind::ModuleOwner(_) | RoleKind::ContractsOwner | RoleKind::MoatOwner)
    }
}

/// Roles of the project that belong to modules and contracts in other databases than the one
/// `manifest` is restricted to: roles are per cluster, so they may show up here, and they are
/// neither orphans nor managed here.
pub fn elsewhere_roles(manifest: &Manifest) -> BTreeSet<String> {
    let roles = manifest.roles();
    let mut names = BTreeSet::new();
    for module in &manifest.elsewhere {
        names.insert(roles.module_owner(&module.name));
        names.insert(roles.module_runtime(&module.name));
        names.insert(roles.module_migrator(&module.name));
    }
    for contract in &manifest.elsewhere_contracts {
        names.insert(roles.contract_owner(contract));
    }
    if !manifest.elsewhere_contracts.is_empty() && manifest.contracts.is_empty() {
        names.insert(roles.contracts_owner());
    }
    for consumer in &manifest.elsewhere_consumers {
        names.insert(roles.consumer(consumer));
    }
    names
}

/// The `CONNECTION LIMIT` a role moat creates gets: every login role has one (`[project]
/// connection_limit`, or the module's own `connection_limit` for its runtime role); NOLOGIN
/// roles have none.
pub fn connection_limit(manifest: &Manifest, role: &WantedRole) -> Option<i32> {
    if !role.login {
        return None;
    }
    let limit = match &role.kind {
        RoleKind::ModuleRuntime(module) => {
            manifest.module(module).and_then(|m| m.connection_limit).unwrap_or(manifest.connection_limit)
        }
        _ => manifest.connection_limit,
    };
    Some(i32::try_from(limit).unwrap_or(i32::MAX))
}

/// The schemas whose contents moat manages or inspects (module schemas, contracts, public, and
/// the schemas that claims name).
pub fn schemas_of_interest(manifest: &Manifest) -> Vec<String> {
    let mut schemas: Vec<String> = manifest.modules.iter().map(|m| m.schema.to_string()).collect();
    schemas.push(CONTRACTS_SCHEMA.to_owned());
    schemas.push("public".to_owned());
    for claimed in manifest.claimed_schemas() {
        if !schemas.contains(&claimed) {
            schemas.push(claimed);
        }
    }
    schemas
}

use crate::policy::{Policy, Wanted};

/// Privileges in PostgreSQL's canonical order, for stable statements.
fn privilege_rank(privilege: &str) -> usize {
    const ORDER: [&str; 13] = [
        "SELECT",
        "INSERT",
        "UPDATE",
        "DELETE",
        "TRUNCATE",
        "REFERENCES",
        "TRIGGER",
        "MAINTAIN",
        "USAGE",
        "CREATE",
        "CONNECT",
        "TEMPORARY",
        "EXECUTE",
    ];
    ORDER.iter().position(|p| *p == privilege).unwrap_or(ORDER.len())
}

fn privilege_list<'a>(privileges: impl IntoIterator<Item = &'a str>) -> String {
    let mut list: Vec<&str> = privileges.into_iter().collect();
    list.sort_by_key(|p| (privilege_rank(p), *p));
    list.dedup();
    list.join(", ")
}

fn grantee_sql(grantee: &str) -> String {
    if grantee == PUBLIC { PUBLIC.to_owned() } else { ident(grantee) }
}

/// Statements that make the privileges of `managed` grantees on one object equal to `wanted`.
/// `object` is the SQL after `ON` (`TABLE "s"."t"`); `default_acl` switches to the
/// `ALTER DEFAULT PRIVILEGES ... GRANT ... ON TABLES` form, with `object` being its prefix and kind.
fn acl_statements(target: &AclTarget<'_>, actual: &Grants, wanted: &Wanted, managed: &BTreeSet<String>) -> Vec<String> {
    let mut statements = Vec::new();
    for grantee in managed {
        let want: BTreeSet<&str> = wanted.get(grantee).cloned().unwrap_or_default();
        let have: BTreeSet<(String, bool)> = actual.get(grantee).cloned().unwrap_or_default();
        let have_privs: BTreeSet<&str> = have.iter().map(|(p, _)| p.as_str()).collect();
        let missing: Vec<&str> = want.iter().copied().filter(|p| !have_privs.contains(p)).collect();
        let extra: Vec<&str> = have_privs.iter().copied().filter(|p| !want.contains(p)).collect();
        let grant_option: Vec<&str> =
            have.iter().filter(|(p, g)| *g && want.contains(p.as_str())).map(|(p, _)| p.as_str()).collect();
        if !missing.is_empty() {
            statements.push(target.grant(&privilege_list(missing), grantee));
        }
        if !extra.is_empty() {
            let list = if want.is_empty() && target.revoke_all_ok { "ALL".to_owned() } else { privilege_list(extra) };
            statements.push(target.revoke(&list, grantee, false));
        }
        if !grant_option.is_empty() {
            statements.push(target.revoke(&privilege_list(grant_option), grantee, true));
        }
    }
    statements
}

/// The object a set of ACL statements is about.
struct AclTarget<'a> {
    /// `TABLE "s"."t"`, `SCHEMA "s"`, ... or, for default privileges, `TABLES`.
    object: String,
    /// For default privileges: `ALTER DEFAULT PRIVILEGES FOR ROLE "o" [IN SCHEMA "s"]`.
    default_prefix: Option<&'a str>,
    /// Whether `REVOKE ALL` may stand for "everything this grantee holds".
    revoke_all_ok: bool,
}

impl AclTarget<'_> {
    fn grant(&self, privileges: &str, grantee: &str) -> String {
        let core = format!("GRANT {privileges} ON {} TO {}", self.object, grantee_sql(grantee));
        match self.default_prefix {
            Some(prefix) => format!("{prefix} {core}"),
            None => core,
        }
    }

    fn revoke(&self, privileges: &str, grantee: &str, grant_option: bool) -> String {
        let option = if grant_option { "GRANT OPTION FOR " } else { "" };
        let core = format!("REVOKE {option}{privileges} ON {} FROM {}", self.object, grantee_sql(grantee));
        match self.default_prefix {
            Some(prefix) => format!("{prefix} {core}"),
            None => core,
        }
    }
}

fn plain(object: String) -> AclTarget<'static> {
    AclTarget { object, default_prefix: None, revoke_all_ok: true }
}

/// Computes the plan. Pure: no I/O.
pub fn plan(manifest: &Manifest, snapshot: &Snapshot, inputs: &PlanInputs) -> Plan {
    Planner::new(manifest, snapshot, inputs).run()
}

struct Planner<'a> {
    manifest: &'a Manifest,
    snapshot: &'a Snapshot,
    inputs: &'a PlanInputs,
    wanted_roles: Vec<WantedRole>,
    managed: BTreeSet<String>,
    plan: Plan,
}

impl<'a> Planner<'a> {
    fn new(manifest: &'a Manifest, snapshot: &'a Snapshot, inputs: &'a PlanInputs) -> Self {
        let wanted_roles = wanted_roles(manifest);
        let mut managed: BTreeSet<String> = wanted_roles.iter().map(|r| r.name.clone()).collect();
        managed.insert(PUBLIC.to_owned());
        // Roles of modules in other databases hold nothing here.
        managed.extend(elsewhere_roles(manifest));
        Self { manifest, snapshot, inputs, wanted_roles, managed, plan: Plan::default() }
    }

    fn push(&mut self, section: Section, sql: String) {
        self.plan.steps.push(Step::sql(section, sql));
    }

    fn run(mut self) -> Plan {
        self.roles();
        self.database();
        self.schemas();
        self.internal_tables();
        self.objects();
        self.default_privileges();
        self.contracts();
        self.orphans();
        self.plan
    }

    fn roles(&mut self) {
        let wanted = self.wanted_roles.clone();
        for role in &wanted {
            match self.snapshot.roles.get(&role.name) {
                None => {
                    let login = if role.login { "LOGIN" } else { "NOLOGIN" };
                    let inherit = if role.inherit() { "INHERIT" } else { "NOINHERIT" };
                    let base = format!(
                        "CREATE ROLE {} {login} NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS {inherit}",
                        ident(&role.name)
                    );
                    match self.inputs.passwords.get(&role.name).filter(|_| role.login) {
                        Some(password) => self.plan.steps.push(Step::Sql {
                            section: Section::Roles,
                            sql: format!("{base} PASSWORD {}", literal(password)),
                            display: Some(format!("{base} PASSWORD '***'")),
                        }),
                        None => self.push(Section::Roles, base),
                    }
                }
                Some(actual) => {
                    let mut fixes = Vec::new();
                    let checks = [
                        (actual.login != role.login, if role.login { "LOGIN" } else { "NOLOGIN" }),
                        (actual.superuser, "NOSUPERUSER"),
                        (actual.createdb, "NOCREATEDB"),
                        (actual.createrole, "NOCREATEROLE"),
                        (actual.replication, "NOREPLICATION"),
                        (actual.bypassrls, "NOBYPASSRLS"),
                        (actual.inherit != role.inherit(), if role.inherit() { "INHERIT" } else { "NOINHERIT" }),
                    ];
                    for (differs, attribute) in checks {
                        if differs {
                            fixes.push(attribute);
                        }
                    }
                    if !fixes.is_empty() {
                        self.push(Section::Roles, format!("ALTER ROLE {} WITH {}", ident(&role.name), fixes.join(" ")));
                    }
                }
            }
        }
        // moat's roles are members of nothing (the admin's membership in owner roles aside).
        // Memberships are per cluster: those of roles of modules in another database are managed
        // by that database's plan (a migrator's membership in its owner), never revoked here.
        let elsewhere = elsewhere_roles(self.manifest);
        for membership in &self.snapshot.memberships {
            if self.managed.contains(&membership.member)
                && !elsewhere.contains(&membership.member)
                && wanted_membership(self.manifest, &membership.member).as_deref() != Some(membership.role.as_str())
            {
                self.plan.steps.push(Step::sql(
                    Section::Roles,
                    format!("REVOKE {} FROM {}", ident(&membership.role), ident(&membership.member)),
                ));
            }
        }
        for role in &wanted {
            if let Some(owner) = wanted_membership(self.manifest, &role.name)
                && !self.snapshot.is_member(&role.name, &owner)
            {
                self.push(Section::Roles, format!("GRANT {} TO {}", ident(&owner), ident(&role.name)));
            }
        }
        if !self.snapshot.superuser {
            for role in wanted.iter().filter(|r| r.kind.admin_is_member()) {
                if !self.snapshot.is_member(&self.snapshot.user, &role.name) {
                    self.push(Section::Roles, format!("GRANT {} TO {}", ident(&role.name), ident(&self.snapshot.user)));
                }
            }
        }
        self.connection_limits();
        self.role_settings();
    }

    /// Every login role has the connection limit the manifest gives it, so that one module
    /// cannot take every connection of the server.
    fn connection_limits(&mut self) {
        for role in self.wanted_roles.clone() {
            let Some(limit) = connection_limit(self.manifest, &role) else { continue };
            let current = self.snapshot.roles.get(&role.name).map(|r| r.connection_limit);
            if current != Some(limit) {
                self.push(Section::Roles, format!("ALTER ROLE {} WITH CONNECTION LIMIT {limit}", ident(&role.name)));
            }
        }
    }

    /// Role-level settings: moat manages the `search_path` of the roles that have one in this
    /// database and nothing else, so every other setting of a project role (in this database or
    /// in all databases) is reset: a module role cannot `ALTER ROLE ... SET statement_timeout`
    /// to break other principals' sessions.
    fn role_settings(&mut self) {
        let database = ident(&self.snapshot.database);
        for role in self.wanted_roles.clone() {
            let settings = self.snapshot.role_settings.get(&role.name).cloned().unwrap_or_default();
            for setting in &settings {
                let key = setting.split_once('=').map_or(setting.as_str(), |(k, _)| k);
                if key == "search_path" && role.search_path.is_some() {
                    continue;
                }
                self.push(
                    Section::Roles,
                    format!("ALTER ROLE {} IN DATABASE {database} RESET {}", ident(&role.name), setting_name(key)),
                );
            }
            let everywhere = self.snapshot.role_settings_all_databases.get(&role.name);
            if everywhere.is_some_and(|s| !s.is_empty()) {
                self.push(Section::Roles, format!("ALTER ROLE {} RESET ALL", ident(&role.name)));
            }
            let Some(path) = &role.search_path else { continue };
            let current =
                settings.iter().find_map(|s| s.strip_prefix("search_path=")).map(|v| v.replace(['"', ' '], ""));
            if current.as_deref() != Some(path.as_str()) {
                self.push(
                    Section::Roles,
                    format!(
                        "ALTER ROLE {} IN DATABASE {database} SET search_path = {}",
                        ident(&role.name),
                        ident(path)
                    ),
                );
            }
        }
    }

    fn database(&mut self) {
        let wanted = self.policy().database();
        let actual = grants_by_grantee(&self.snapshot.database_acl, Some(&self.snapshot.database_owner));
        let target = plain(format!("DATABASE {}", ident(&self.snapshot.database)));
        for sql in acl_statements(&target, &actual, &wanted, &self.managed) {
            self.push(Section::Database, sql);
        }
        if let Some(public) = self.snapshot.schemas.get("public") {
            let actual = grants_by_grantee(&public.acl, Some(&public.owner));
            for sql in
                acl_statements(&plain(format!("SCHEMA {}", ident("public"))), &actual, &Wanted::new(), &self.managed)
            {
                self.push(Section::Database, sql);
            }
        }
    }

    fn schemas(&mut self) {
        let policy = self.policy();
        let mut names: Vec<String> = self.manifest.modules.iter().map(|m| m.schema.to_string()).collect();
        names.push(CONTRACTS_SCHEMA.to_owned());
        let schema_wants: Vec<(String, String, Wanted)> = names
            .into_iter()
            .filter_map(|name| policy.schema(&name).map(|(owner, wanted)| (name, owner, wanted)))
            .collect();
        for (schema, owner, wanted) in schema_wants {
            match self.snapshot.schemas.get(&schema) {
                None => {
                    self.push(
                        Section::Schemas,
                        format!("CREATE SCHEMA {} AUTHORIZATION {}", ident(&schema), ident(&owner)),
                    );
                    let empty = Grants::new();
                    for sql in
                        acl_statements(&plain(format!("SCHEMA {}", ident(&schema))), &empty, &wanted, &self.managed)
                    {
                        self.push(Section::Schemas, sql);
                    }
                }
                Some(actual) => {
                    if actual.owner != owner {
                        self.push(
                            Section::Schemas,
                            format!("ALTER SCHEMA {} OWNER TO {}", ident(&schema), ident(&owner)),
                        );
                    }
                    let grants = grants_by_grantee(&actual.acl, Some(&actual.owner));
                    let mut grants = grants;
                    // After an owner change, the old owner's implicit rights are not a grant to revoke.
                    grants.remove(&owner);
                    for sql in
                        acl_statements(&plain(format!("SCHEMA {}", ident(&schema))), &grants, &wanted, &self.managed)
                    {
                        self.push(Section::Schemas, sql);
                    }
                }
            }
        }
    }

    fn internal_tables(&mut self) {
        let roles = self.manifest.roles();
        // moat's tables belong to moat's own role, which no module role can become.
        let owner = roles.moat_owner();
        for module in &self.manifest.modules {
            let schema = module.schema.as_str();
            if self.snapshot.relation(schema, internal::MIGRATIONS).is_none() {
                for sql in internal::migrations_ddl(schema, &owner) {
                    self.push(Section::InternalTables, sql);
                }
                self.grant_on_created(module, &[(internal::MIGRATIONS.to_owned(), "r")]);
            }
            if self.manifest.is_depended_on(&module.name) && self.snapshot.relation(schema, internal::OUTBOX).is_none()
            {
                for sql in internal::outbox_ddl(schema, &owner, &roles.module_runtime(&module.name)) {
                    self.push(Section::InternalTables, sql);
                }
                let mut created = vec![(internal::OUTBOX.to_owned(), "p"), (internal::OUTBOX_SEQUENCE.to_owned(), "S")];
                created.extend((0..internal::OUTBOX_SLOTS).map(|slot| (internal::outbox_partition(slot), "r")));
                created.push((internal::OUTBOX_PROGRESS.to_owned(), "r"));
                self.grant_on_created(module, &created);
                for (grantee, privilege, columns) in self.policy().column_privileges(schema, internal::OUTBOX) {
                    let sql = internal::column_grant_sql(schema, internal::OUTBOX, privilege, columns, &grantee);
                    self.push(Section::InternalTables, sql);
                }
            }
            self.progress_rows(module);
            self.cluster_function(module, &owner);
            self.added_columns(schema);
            if !module.depends_on.is_empty() && self.snapshot.relation(schema, internal::SUBSCRIPTIONS).is_none() {
                for sql in internal::inbox_ddl(schema, &owner) {
                    self.push(Section::InternalTables, sql);
                }
                let created = [
                    (internal::SUBSCRIPTIONS.to_owned(), "r"),
                    (internal::INBOX.to_owned(), "r"),
                    (internal::INBOX_SEQUENCE.to_owned(), "S"),
                ];
                self.grant_on_created(module, &created);
            }
        }
        if !self.manifest.contracts.is_empty()
            && self.snapshot.relation(CONTRACTS_SCHEMA, internal::CONTRACTS_LEDGER).is_none()
        {
            for sql in internal::contracts_ledger_ddl(&owner) {
                self.push(Section::InternalTables, sql);
            }
        }
    }

    /// The function the outbox's `cluster` defaults to, for an outbox an older moat created
    /// (whose default read the control file for every row): created, and made the default when
    /// the column exists (when it does not, [`Self::added_columns`] adds it with this default).
    fn cluster_function(&mut self, module: &moat_core::manifest::Module, owner: &str) {
        let schema = module.schema.as_str();
        let Some(outbox) = self.snapshot.relation(schema, internal::OUTBOX) else { return };
        if !self.manifest.is_depended_on(&module.name)
            || self.snapshot.functions.iter().any(|f| f.schema == schema && f.name == internal::CLUSTER_FUNCTION)
        {
            return;
        }
        let runtime = self.manifest.roles().module_runtime(&module.name);
        for sql in internal::cluster_function_ddl(schema, owner, &runtime) {
            self.push(Section::InternalTables, sql);
        }
        for column in
            internal::ADDED_COLUMNS.iter().filter(|c| c.cluster_of_existing_rows && c.table == internal::OUTBOX)
        {
            if outbox.columns.as_ref().is_some_and(|columns| columns.iter().any(|c| c == column.name)) {
                self.push(Section::InternalTables, internal::cluster_set_default_sql(schema, column));
            }
        }
    }

    /// The columns an older moat did not create in moat's tables of `schema` that exist (tables
    /// this plan creates have them). Snapshots without column lists (built by hand) add nothing.
    fn added_columns(&mut self, schema: &str) {
        let cluster = self.snapshot.cluster.clone();
        for column in &internal::ADDED_COLUMNS {
            let missing = self
                .snapshot
                .relation(schema, column.table)
                .and_then(|r| r.columns.as_ref())
                .is_some_and(|columns| !columns.iter().any(|c| c == column.name));
            // Existing rows are labelled with this cluster's identity, which a live snapshot
            // always reads (one built by hand without it adds no cluster column).
            if !missing || (column.cluster_of_existing_rows && cluster.is_none()) {
                continue;
            }
            for sql in internal::add_column_sql(schema, column, cluster.as_deref().unwrap_or_default()) {
                self.push(Section::InternalTables, sql);
            }
        }
    }

    /// Progress rows beside the outbox of `module`: one per subscriber in the manifest (so that
    /// retention keeps its events before its dispatcher first starts), none for the others.
    fn progress_rows(&mut self, module: &moat_core::manifest::Module) {
        let schema = module.schema.as_str();
        let existing = self.inputs.progress.get(schema);
        let creating = self.manifest.is_depended_on(&module.name)
            && existing.is_none()
            && self.snapshot.relation(schema, internal::OUTBOX_PROGRESS).is_none();
        if existing.is_none() && !creating {
            return;
        }
        // Subscribers that read the outbox, and the relay when a subscriber reads JetStream (or
        // the project sends every event there).
        let mut wanted: BTreeSet<&str> = self
            .manifest
            .dependents(&module.name)
            .filter(|m| self.manifest.transport(m, &module.name) == moat_core::manifest::Transport::Direct)
            .map(|m| m.name.as_str())
            .collect();
        if self.manifest.relayed(&module.name) {
            wanted.insert(internal::RELAY_PROGRESS);
        }
        let empty = BTreeSet::new();
        let existing = existing.unwrap_or(&empty);
        let add: Vec<&str> = wanted.iter().copied().filter(|s| !existing.contains(*s)).collect();
        let remove: Vec<&str> = existing.iter().map(String::as_str).filter(|s| !wanted.contains(s)).collect();
        for sql in internal::progress_rows_sql(schema, &add, &remove) {
            self.push(Section::InternalTables, sql);
        }
    }

    /// Grants on relations this plan creates (the snapshot cannot list them yet).
    fn grant_on_created(&mut self, module: &moat_core::manifest::Module, created: &[(String, &str)]) {
        for (name, kind) in created {
            let wanted = self.policy().relation(module.schema.as_str(), name, kind).map(|(_, w)| w).unwrap_or_default();
            let keyword = if *kind == "S" { "SEQUENCE" } else { "TABLE" };
            let object = format!("{keyword} {}", qualified(module.schema.as_str(), name));
            for sql in acl_statements(&plain(object), &Grants::new(), &wanted, &self.managed) {
                self.push(Section::InternalTables, sql);
            }
        }
    }

    fn objects(&mut self) {
        let policy = self.policy();
        let mut statements = Vec::new();
        for relation in &self.snapshot.relations {
            if relation.extension {
                continue;
            }
            let Some((owner, wanted)) = policy.relation(&relation.schema, &relation.name, &relation.kind) else {
                continue;
            };
            if relation.owner != owner && !relation.owned_by_table {
                statements.push(format!(
                    "ALTER {} {} OWNER TO {}",
                    relation_keyword(relation),
                    qualified(&relation.schema, &relation.name),
                    ident(&owner)
                ));
            }
            let mut actual = grants_by_grantee(&relation.acl, Some(&relation.owner));
            actual.remove(&owner);
            let object = format!(
                "{} {}",
                if relation.kind == "S" { "SEQUENCE" } else { "TABLE" },
                qualified(&relation.schema, &relation.name)
            );
            statements.extend(acl_statements(&plain(object), &actual, &wanted, &self.managed));
            statements.extend(column_statements(relation, &actual, &policy, &self.managed));
        }
        for function in &self.snapshot.functions {
            if function.extension {
                continue;
            }
            let Some((owner, wanted)) = policy.function(&function.schema, &function.name, &function.owner) else {
                continue;
            };
            if function.owner != owner {
                statements.push(format!("ALTER ROUTINE {} OWNER TO {}", function.signature, ident(&owner)));
            }
            let mut actual = grants_by_grantee(&function.acl, Some(&function.owner));
            actual.remove(&owner);
            statements.extend(acl_statements(
                &plain(format!("ROUTINE {}", function.signature)),
                &actual,
                &wanted,
                &self.managed,
            ));
        }
        for sql in statements {
            self.push(Section::Objects, sql);
        }
    }

    fn policy(&self) -> Policy<'a> {
        Policy::new(self.manifest, &self.inputs.installed_contracts).with_frozen(&self.inputs.frozen)
    }

    fn default_privileges(&mut self) {
        let roles = self.manifest.roles();
        let mut statements = Vec::new();
        for module in &self.manifest.modules {
            let owner = roles.module_owner(&module.name);
            let schema = module.schema.as_str();
            let prefix = format!("ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {}", ident(&owner), ident(schema));
            for (objtype, keyword, wanted) in self.policy().module_defaults(module) {
                let actual = self.default_acl(&owner, Some(schema), objtype);
                let target =
                    AclTarget { object: keyword.to_owned(), default_prefix: Some(&prefix), revoke_all_ok: false };
                statements.extend(acl_statements(&target, &actual, &wanted, &self.managed));
            }
            // Functions are executable by PUBLIC unless the owner's global defaults say otherwise.
            let global =
                self.snapshot.default_acls.iter().find(|d| d.role == owner && d.schema.is_none() && d.objtype == "f");
            let public_executes = match global {
                None => true,
                Some(entry) => entry.acl.iter().any(|a| a.grantee == PUBLIC && a.privilege == "EXECUTE"),
            };
            if public_executes {
                statements.push(format!(
                    "ALTER DEFAULT PRIVILEGES FOR ROLE {} REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC",
                    ident(&owner)
                ));
            }
        }
        for sql in statements {
            self.push(Section::DefaultPrivileges, sql);
        }
    }

    fn default_acl(&self, role: &str, schema: Option<&str>, objtype: &str) -> Grants {
        self.snapshot
            .default_acls
            .iter()
            .find(|d| d.role == role && d.schema.as_deref() == schema && d.objtype == objtype)
            .map(|d| grants_by_grantee(&d.acl, Some(role)))
            .unwrap_or_default()
    }

    fn contracts(&mut self) {
        let roles = self.manifest.roles();
        for contract in &self.manifest.contracts {
            let missing: Vec<String> = contract
                .reads
                .iter()
                .filter(|r| self.snapshot.relation(r.schema.as_str(), r.relation.as_str()).is_none())
                .map(ToString::to_string)
                .collect();
            if !missing.is_empty() {
                // Grants on relations that do not exist yet cannot be planned either.
                self.plan.notes.push(Note::ContractWaiting { contract: contract.name.to_string(), missing });
                continue;
            }
            let Some(text) = self.inputs.contract_texts.get(contract.name.as_str()) else { continue };
            let checksum = moat_core::checksum(text);
            let installed = self.inputs.installed_contracts.get(contract.name.as_str());
            if installed.is_some_and(|i| i.checksum == checksum) {
                continue;
            }
            self.plan.steps.push(Step::InstallContract(ContractInstall {
                contract: contract.name.to_string(),
                file: self.manifest.relative(&contract.sql),
                text: text.clone(),
                checksum,
                previous_views: installed.map(|i| i.views.clone()).unwrap_or_default(),
                readers: contract.readers.iter().map(|r| roles.consumer(r)).collect(),
                owner: roles.contract_owner(&contract.name),
                reads: contract.reads.iter().map(ToString::to_string).collect(),
            }));
        }
    }

    fn orphans(&mut self) {
        let mut wanted: BTreeSet<String> = self.wanted_roles.iter().map(|r| r.name.clone()).collect();
        wanted.extend(elsewhere_roles(self.manifest));
        for role in self.snapshot.roles.keys() {
            if !wanted.contains(role.as_str()) {
                self.plan.notes.push(Note::OrphanedRole(role.clone()));
            }
        }
        let claimed = self.manifest.claimed_schemas();
        for (name, schema) in &self.snapshot.schemas {
            let declared = self.manifest.module_by_schema(name).is_some()
                || name == CONTRACTS_SCHEMA
                || name == "public"
                || claimed.contains(name);
            if declared || !self.snapshot.roles.contains_key(&schema.owner) {
                continue;
            }
            match self.manifest.elsewhere.iter().find(|m| m.schema.as_str() == name) {
                Some(module) => {
                    self.plan.notes.push(Note::MovedAway { module: module.name.to_string(), schema: name.clone() })
                }
                None => self.plan.notes.push(Note::OrphanedSchema(name.clone())),
            }
        }
    }
}

/// A setting's name as SQL (`statement_timeout`, `"app"."key"` for a custom one).
fn setting_name(key: &str) -> String {
    key.split('.').map(ident).collect::<Vec<_>>().join(".")
}

/// Column privileges of `relation`: every one a managed grantee holds (`attacl`) that the
/// policy does not want is revoked like an extra table grant (`REVOKE INSERT ("last_name") ON
/// TABLE "patients"."patients" FROM "clinic_billing"`); every one the policy wants (the runtime
/// role's INSERT on the outbox's publishing columns) is granted when missing, or when a
/// table-level grant of the same privilege is revoked above (which revokes the column grants too).
fn column_statements(
    relation: &RelationInfo,
    actual: &Grants,
    policy: &Policy<'_>,
    managed: &BTreeSet<String>,
) -> Vec<String> {
    let wanted = policy.column_privileges(&relation.schema, &relation.name);
    let is_wanted = |grantee: &str, privilege: &str, column: &str| {
        wanted.iter().any(|(g, p, columns)| g == grantee && *p == privilege && columns.contains(&column))
    };
    let mut by_grantee: BTreeMap<&str, BTreeMap<&str, Vec<&str>>> = BTreeMap::new();
    for column in &relation.column_acls {
        for item in &column.acl {
            if item.grantee == relation.owner
                || !managed.contains(&item.grantee)
                || is_wanted(&item.grantee, &item.privilege, &column.column)
            {
                continue;
            }
            by_grantee.entry(&item.grantee).or_default().entry(&item.privilege).or_default().push(&column.column);
        }
    }
    let table = qualified(&relation.schema, &relation.name);
    let mut statements: Vec<String> = by_grantee
        .into_iter()
        .map(|(grantee, privileges)| {
            let mut privileges: Vec<(&str, Vec<&str>)> = privileges.into_iter().collect();
            privileges.sort_by_key(|(p, _)| (privilege_rank(p), *p));
            let list = privileges
                .iter()
                .map(|(privilege, columns)| {
                    format!("{privilege} ({})", columns.iter().map(|c| ident(c)).collect::<Vec<_>>().join(", "))
                })
                .collect::<Vec<_>>()
                .join(", ");
            format!("REVOKE {list} ON TABLE {table} FROM {}", grantee_sql(grantee))
        })
        .collect();
    for (grantee, privilege, columns) in &wanted {
        let table_grant_revoked = actual.get(grantee).is_some_and(|have| have.iter().any(|(p, _)| p == privilege));
        let held = |column: &str| {
            relation.column_acls.iter().any(|c| {
                c.column == column && c.acl.iter().any(|item| &item.grantee == grantee && item.privilege == *privilege)
            })
        };
        if table_grant_revoked || !columns.iter().all(|c| held(c)) {
            statements.push(internal::column_grant_sql(&relation.schema, &relation.name, privilege, columns, grantee));
        }
    }
    statements
}

fn relation_keyword(relation: &RelationInfo) -> &'static str {
    match relation.kind.as_str() {
        "v" => "VIEW",
        "m" => "MATERIALIZED VIEW",
        "f" => "FOREIGN TABLE",
        "S" => "SEQUENCE",
        _ => "TABLE",
    }
}

/// The ACL items of `acl` held by `grantee` (a helper for the audit).
pub fn held_by<'a>(acl: &'a [AclItem], grantee: &'a str) -> impl Iterator<Item = &'a AclItem> + 'a {
    acl.iter().filter(move |a| a.grantee == grantee)
}

//! `moat audit`: compare the live catalog with the manifest, then try.
//!
//! The audit reads the catalog ([`findings`]: drift from the provisioning plan, ACL entries
//! outside the access policy down to single columns, SECURITY DEFINER routines, role attributes,
//! memberships and settings, objects in `public`, moat's own tables, large objects;
//! [`dependencies`]: foreign keys and dependencies across modules) and then probes ([`probe`]):
//! it logs in as every runtime and consumer role, the relay, every module owner (through its
//! migrator) and every contract owner, and really attempts every privilege on every relation of
//! every other module and on every contract view, in a transaction that is rolled back and
//! without touching a row or firing a trigger. [`matrix`] folds the attempts into one cell per
//! role and module. The audit never reads a module's tables as the admin: only the catalog.

mod dependencies;
mod findings;
mod matrix;
mod probe;

use moat_core::findings::{Finding, Severity};
use moat_core::manifest::{Manifest, Module};

use crate::error::AdminError;
use crate::plan::plan;
use crate::policy::Policy;
use crate::provision::read_state;
use crate::target::DatabaseUrl;

pub use matrix::{Cell, Matrix};
pub use probe::{
    AccessRow, PROBE_LOCK_TIMEOUT, PROBE_STATEMENT_TIMEOUT, Privilege, Privileges, ProbeMethod, ProbedRole, Verdict,
};

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
    /// A privilege outside the manifest's access policy (ownership included: an object in a
    /// shared schema owned by a project role other than its claimant module's owner).
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
    /// The probe could not act as a role (it could not log in) or gave up waiting for a lock.
    pub const PROBE_INCOMPLETE: &str = "probe-incomplete";
    /// One of moat's own tables is not a plain table, carries triggers, rules, policies or row
    /// security, or has another owner than moat gives it.
    pub const MOAT_TABLE_ALTERED: &str = "moat-table-altered";
    /// A large object owned by or granted to a project role (or PUBLIC).
    pub const LARGE_OBJECT: &str = "large-object";
    /// A role-level setting (`ALTER ROLE ... SET`) of a project role that moat does not manage.
    pub const UNMANAGED_ROLE_SETTING: &str = "unmanaged-role-setting";
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
    // The admin session waits for no lock longer than moat's other admin work does.
    sqlx::query("SELECT pg_catalog.set_config('lock_timeout', $1, false)")
        .bind(format!("{}ms", crate::locks::LOCK_TIMEOUT.as_millis()))
        .execute(&mut conn)
        .await
        .map_err(crate::error::db("setting the audit's lock_timeout"))?;
    let (snapshot, inputs) = read_state(&mut conn, manifest).await?;
    phase("catalog snapshot");
    let plan = plan(manifest, &snapshot, &inputs);
    let policy = Policy::new(manifest, &inputs.installed_contracts);
    let mut findings = Vec::new();
    findings::drift_findings(&plan, &mut findings);
    findings::acl_findings(manifest, &snapshot, &policy, &mut findings);
    findings::role_findings(manifest, &snapshot, &mut findings);
    findings::routine_findings(manifest, &snapshot, &mut findings);
    findings::public_findings(manifest, &snapshot, &mut findings);
    findings::claimed_owner_findings(manifest, &snapshot, &mut findings);
    findings::large_object_findings(&snapshot, &mut findings);
    findings::moat_table_findings(&mut conn, manifest, &policy, &mut findings).await?;
    findings::role_setting_findings(&mut conn, manifest, &mut findings).await?;
    phase("catalog findings");
    dependencies::dependency_findings(&mut conn, manifest, &mut findings).await?;
    phase("dependencies");
    if let Some(analyzer) = options.body_analyzer {
        findings::body_findings(&mut conn, manifest, analyzer, &mut findings).await?;
        phase("routine bodies");
    }
    let probed = if options.probe {
        probe::probe(&mut conn, url, manifest, &snapshot, &policy, &inputs.installed_contracts, options.concurrency)
            .await?
    } else {
        probe::ProbeOutput::default()
    };
    phase("probe");
    crate::provision::close(conn).await;
    let probe::ProbeOutput { access, probed, attempts, findings: probe_findings, claimants } = probed;
    findings.extend(probe_findings);
    probe::access_findings(manifest, &claimants, &access, &probed, &mut findings);
    let matrix = matrix::matrix(manifest, &inputs.installed_contracts, &claimants, &access, &probed);
    moat_core::findings::sort(&mut findings);
    findings.dedup_by(|a, b| a.rule == b.rule && a.object == b.object && a.message == b.message);
    phase("matrix");
    Ok(AuditReport { findings, access, probed, matrix, attempts })
}

fn module_of<'m>(manifest: &'m Manifest, schema: &str) -> Option<&'m Module> {
    manifest.module_by_schema(schema)
}

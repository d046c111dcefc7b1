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
use moat_core::rules::RuleId;

use crate::error::AdminError;
use crate::plan::plan;
use crate::policy::Policy;
use crate::provision::read_state;
use crate::target::DatabaseUrl;

pub use matrix::{Cell, Matrix};
pub use probe::{
    AccessRow, PROBE_LOCK_TIMEOUT, PROBE_STATEMENT_TIMEOUT, Privilege, Privileges, ProbeMethod, ProbedRole, Verdict,
};

/// Every rule the audit can report, in the order `moat explain` lists them: its own, the rules it
/// shares with `moat check` when it finds the same thing in the live catalog, and
/// [`BODY_RULES`]. The rules, their ids and their documentation live in the catalog,
/// [`moat_core::rules`].
pub fn rules() -> &'static [RuleId] {
    &[
        RuleId::CrossModuleReference,
        RuleId::CrossModuleForeignKey,
        RuleId::GrantBeyondManifest,
        RuleId::SecurityDefinerFunction,
        RuleId::DynamicSql,
        RuleId::ContractUndeclaredRead,
        RuleId::ProvisioningDrift,
        RuleId::OrphanedObject,
        RuleId::PrivilegedRole,
        RuleId::RoleMembership,
        RuleId::ObjectInPublicSchema,
        RuleId::PublicDatabaseAccess,
        RuleId::AccessLeak,
        RuleId::AccessBroken,
        RuleId::ProbeIncomplete,
        RuleId::MoatTableAltered,
        RuleId::LargeObject,
        RuleId::UnmanagedRoleSetting,
    ]
}

/// The rules of a [`BodyAnalyzer`]'s findings that the audit reports for a routine body; it
/// drops the others (a routine body is not a migration, so migration rules do not apply).
pub const BODY_RULES: [RuleId; 3] = [RuleId::CrossModuleReference, RuleId::CrossModuleForeignKey, RuleId::DynamicSql];

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
    /// Findings for one routine of `module`; the audit keeps those of [`BODY_RULES`].
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
    let policy = Policy::new(manifest, &inputs.installed_contracts).with_frozen(&inputs.frozen);
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
    // `rules()` is what `moat explain` and the catalog test take for the audit's rules.
    debug_assert!(
        findings.iter().all(|f| rules().contains(&f.rule)),
        "a finding of a rule missing from `moat_admin::audit::rules()`"
    );
    phase("matrix");
    Ok(AuditReport { findings, access, probed, matrix, attempts })
}

/// What the audit found in every database of the project.
#[derive(Debug, Clone)]
pub struct AuditAll {
    /// Where every module was found.
    pub placement: crate::placement::Placement,
    /// One report per database, the main database first.
    pub databases: Vec<(crate::databases::DatabaseKey, AuditReport)>,
    /// Findings about where modules are, across databases.
    pub placement_findings: Vec<Finding>,
}

impl AuditAll {
    /// Every finding, each of a named database marked with it, sorted.
    pub fn findings(&self) -> Vec<Finding> {
        let mut all = self.placement_findings.clone();
        for (key, report) in &self.databases {
            all.extend(report.findings.iter().cloned().map(|mut f| {
                f.database = key.as_ref().map(ToString::to_string);
                f
            }));
        }
        moat_core::findings::sort(&mut all);
        all
    }

    /// Every access row, each of a named database marked with it.
    pub fn access(&self) -> Vec<AccessRow> {
        let mut all = Vec::new();
        for (key, report) in &self.databases {
            all.extend(report.access.iter().cloned().map(|mut row| {
                row.database = key.as_ref().map(ToString::to_string);
                row
            }));
        }
        all
    }

    /// Whether any finding is an error.
    pub fn has_errors(&self) -> bool {
        self.findings().iter().any(|f| f.severity == Severity::Error)
    }

    /// Attempts of the probe in every database.
    pub fn attempts(&self) -> usize {
        self.databases.iter().map(|(_, r)| r.attempts).sum()
    }
}

/// [`audit`] in every database of the project, each with the part of the manifest that lives
/// there, plus a warning for each module that is not where the manifest puts it.
pub async fn audit_all(
    target: &crate::up::Target,
    manifest: &Manifest,
    options: AuditOptions<'_>,
) -> Result<AuditAll, AdminError> {
    let (placement, parts) = target.parts(manifest).await?;
    let mut databases = Vec::new();
    for part in parts {
        let report = audit(&part.url, &part.manifest, options).await?;
        databases.push((part.key, report));
    }
    let placement_findings = placement_findings(&placement);
    Ok(AuditAll { placement, databases, placement_findings })
}

/// A module whose data is not in the database the manifest names, or that is moving.
pub fn placement_findings(placement: &crate::placement::Placement) -> Vec<Finding> {
    placement
        .notes()
        .into_iter()
        .map(|(module, message, help)| {
            Finding::new(RuleId::ProvisioningDrift, Severity::Warning, message)
                .help(help)
                .object(format!("module {module}"))
        })
        .collect()
}

fn module_of<'m>(manifest: &'m Manifest, schema: &str) -> Option<&'m Module> {
    manifest.module_by_schema(schema)
}

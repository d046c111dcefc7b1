//! `moat up`: resolve the target (starting the embedded cluster if needed), provision, migrate
//! every module in dependency order, install contracts after all modules.

use moat_core::manifest::Manifest;

use crate::embedded::{EmbeddedOptions, RunningCluster};
use crate::error::AdminError;
use crate::migrate::{MigrateEvent, MigrateReport};
use crate::plan::{Note, Plan};
use crate::provision::{ProvisionOutcome, provision};
use crate::target::{DatabaseUrl, UrlSource, admin_url_from};

/// The database moat administers.
#[derive(Debug, Clone)]
pub struct Target {
    /// The admin URL (of the project database).
    pub url: DatabaseUrl,
    /// Where the URL came from; `None` for the embedded default.
    pub source: Option<UrlSource>,
    /// The embedded cluster, when it is used.
    pub embedded: Option<RunningCluster>,
}

/// Finds the admin URL (flag, `MOAT_DATABASE_URL`, `DATABASE_URL`) or starts the embedded
/// cluster next to the manifest and creates the project's database in it.
pub async fn resolve_target(manifest: &Manifest, flag: Option<&str>) -> Result<Target, AdminError> {
    if let Some((url, source)) = admin_url_from(flag)? {
        return Ok(Target { url, source: Some(source), embedded: None });
    }
    let options = EmbeddedOptions::for_project(&manifest.root);
    let cluster =
        tokio::task::spawn_blocking(move || crate::embedded::ensure_running(&options)).await.map_err(|e| {
            AdminError::Embedded { message: format!("the embedded cluster task failed: {e}"), help: String::new() }
        })??;
    let database = manifest.project.to_string();
    crate::embedded::ensure_database(&cluster.url("postgres"), &database).await?;
    Ok(Target { url: cluster.url(&database), source: None, embedded: Some(cluster) })
}

/// What `up` reports as it goes.
#[derive(Debug, Clone)]
pub enum UpEvent<'a> {
    /// Provisioning ran a plan (possibly empty).
    Provisioned(&'a ProvisionOutcome),
    /// A migration event.
    Migrate(MigrateEvent<'a>),
}

/// What `up` did.
#[derive(Debug, Clone)]
pub struct UpReport {
    /// The first provisioning pass.
    pub provision: ProvisionOutcome,
    /// Migrations.
    pub migrate: MigrateReport,
    /// The second pass (contracts after migrations), when one was needed.
    pub contracts: Option<ProvisionOutcome>,
    /// Statements sent to the server (approximate for setup queries).
    pub statements: usize,
}

impl UpReport {
    /// Whether anything changed in the database.
    pub fn changed(&self) -> bool {
        !self.provision.plan.is_empty()
            || !self.migrate.applied.is_empty()
            || self.contracts.as_ref().is_some_and(|c| !c.plan.is_empty())
    }

    /// Notes from the last provisioning pass.
    pub fn notes(&self) -> &[Note] {
        &self.contracts.as_ref().unwrap_or(&self.provision).plan.notes
    }

    /// Every plan that ran.
    pub fn plans(&self) -> impl Iterator<Item = &Plan> {
        std::iter::once(&self.provision.plan).chain(self.contracts.iter().map(|c| &c.plan))
    }
}

/// Provisions, migrates every module in dependency order, then installs contracts.
pub async fn up(
    url: &DatabaseUrl,
    manifest: &Manifest,
    observe: &(dyn Fn(UpEvent<'_>) + Sync),
) -> Result<UpReport, AdminError> {
    let mut conn = crate::connect(url).await?;
    crate::provision::check_server(&mut conn).await?;
    let first = provision(&mut conn, url, manifest).await?;
    observe(UpEvent::Provisioned(&first));
    let migrate = crate::migrate::migrate(&mut conn, url, manifest, None, &|e| observe(UpEvent::Migrate(e))).await?;
    let waiting = first.plan.notes.iter().any(|n| matches!(n, Note::ContractWaiting { .. }));
    let contracts = if waiting || !migrate.applied.is_empty() {
        let second = provision(&mut conn, url, manifest).await?;
        observe(UpEvent::Provisioned(&second));
        Some(second)
    } else {
        None
    };
    crate::provision::close(conn).await;
    let statements = 1 + first.statements + migrate.statements + contracts.as_ref().map_or(0, |c| c.statements);
    Ok(UpReport { provision: first, migrate, contracts, statements })
}

//! `moat up`: resolve the target (starting the embedded cluster if needed), provision, migrate
//! every module in dependency order, install contracts after all modules.

use moat_core::manifest::Manifest;
use moat_core::names::DatabaseName;

use crate::databases::{DatabaseKey, Databases};
use crate::embedded::{EmbeddedOptions, RunningCluster};
use crate::error::AdminError;
use crate::migrate::{MigrateEvent, MigrateReport};
use crate::placement::Placement;
use crate::plan::{Note, Plan};
use crate::provision::{ProvisionOutcome, provision};
use crate::target::{DatabaseUrl, UrlSource, admin_url_from};

/// The databases moat administers.
#[derive(Debug, Clone)]
pub struct Target {
    /// The admin URL (of the project's main database).
    pub url: DatabaseUrl,
    /// Every database of the project: the main one and the manifest's `[databases]`.
    pub databases: Databases,
    /// Where the URL came from; `None` for the embedded default.
    pub source: Option<UrlSource>,
    /// The embedded cluster, when it is used.
    pub embedded: Option<RunningCluster>,
}

/// Finds the admin URL (flag, `MOAT_DATABASE_URL`, `DATABASE_URL`) or starts the embedded
/// cluster next to the manifest and creates the project's database in it.
pub async fn resolve_target(manifest: &Manifest, flag: Option<&str>) -> Result<Target, AdminError> {
    resolve_target_with(manifest, flag, &std::collections::BTreeMap::new()).await
}

/// [`resolve_target`], with the admin URLs of some `[databases]` given instead of read from their
/// `url_env` (applications and tests that hold them already).
pub async fn resolve_target_with(
    manifest: &Manifest,
    flag: Option<&str>,
    given: &std::collections::BTreeMap<String, DatabaseUrl>,
) -> Result<Target, AdminError> {
    if let Some((url, source)) = admin_url_from(flag)? {
        let databases = Databases::resolve(manifest, url.clone(), given)?;
        return Ok(Target { url, databases, source: Some(source), embedded: None });
    }
    let options = EmbeddedOptions::for_project(&manifest.root);
    let cluster =
        tokio::task::spawn_blocking(move || crate::embedded::ensure_running(&options)).await.map_err(|e| {
            AdminError::Embedded { message: format!("the embedded cluster task failed: {e}"), help: String::new() }
        })??;
    let database = manifest.project.to_string();
    crate::embedded::ensure_database(&cluster.url("postgres"), &database).await?;
    // The embedded cluster serves `[databases.NAME]` as database `NAME`.
    let mut databases = Databases::single(cluster.url(&database));
    for named in &manifest.databases {
        crate::embedded::ensure_database(&cluster.url("postgres"), named.name.as_str()).await?;
        databases.named.insert(named.name.clone(), cluster.url(named.name.as_str()));
    }
    Ok(Target { url: cluster.url(&database), databases, source: None, embedded: Some(cluster) })
}

impl Target {
    /// A target of explicit URLs (tests, and applications that resolve URLs themselves).
    pub fn new(databases: Databases) -> Self {
        Self { url: databases.main.clone(), databases, source: None, embedded: None }
    }

    /// Where every module is now, and the part of the manifest each database holds: the main
    /// database first (always, so that a project without modules there is still provisioned),
    /// then each named database that holds a module or a contract.
    pub async fn parts(&self, manifest: &Manifest) -> Result<(Placement, Vec<Part>), AdminError> {
        let placement = crate::placement::locate(manifest, &self.databases).await?;
        let mut parts = Vec::new();
        for key in self.databases.keys() {
            let part = placement.part(manifest, key.as_ref());
            if key.is_some() && part.modules.is_empty() && part.contracts.is_empty() {
                continue;
            }
            parts.push(Part { url: self.databases.url(key.as_ref())?.clone(), key, manifest: part });
        }
        Ok((placement, parts))
    }
}

/// One database and the part of the manifest that lives in it.
#[derive(Debug, Clone)]
pub struct Part {
    /// Which database.
    pub key: DatabaseKey,
    /// Its admin URL.
    pub url: DatabaseUrl,
    /// The manifest restricted to it ([`Manifest::restricted`]).
    pub manifest: Manifest,
}

impl Part {
    /// How messages name the database.
    pub fn label(&self) -> String {
        crate::databases::label(self.key.as_ref())
    }

    /// The database's key, `None` for the main database.
    pub fn name(&self) -> Option<&DatabaseName> {
        self.key.as_ref()
    }
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

/// What `up` did in each database.
#[derive(Debug, Clone)]
pub struct UpAll {
    /// Where every module was found.
    pub placement: Placement,
    /// One report per database, the main database first.
    pub databases: Vec<(DatabaseKey, UpReport)>,
}

impl UpAll {
    /// Whether anything changed in any database.
    pub fn changed(&self) -> bool {
        self.databases.iter().any(|(_, r)| r.changed())
    }
}

/// [`up`] in every database of the project, each with the part of the manifest that lives there:
/// a module is provisioned and migrated where its data is (see [`crate::placement`]).
pub async fn up_all(
    target: &Target,
    manifest: &Manifest,
    observe: &(dyn Fn(&DatabaseKey, UpEvent<'_>) + Sync),
) -> Result<UpAll, AdminError> {
    let (placement, parts) = target.parts(manifest).await?;
    let mut databases = Vec::new();
    for part in parts {
        let key = part.key.clone();
        let report = up(&part.url, &part.manifest, &|event| observe(&key, event)).await?;
        databases.push((part.key, report));
    }
    Ok(UpAll { placement, databases })
}

/// What `plan` would run in each database that holds part of the project (see [`Target::parts`]).
pub async fn plan_all(target: &Target, manifest: &Manifest) -> Result<(Placement, Vec<(Part, Plan)>), AdminError> {
    let (placement, parts) = target.parts(manifest).await?;
    let mut plans = Vec::new();
    for part in parts {
        let mut conn = crate::connect(&part.url).await?;
        let plan = crate::provision::compute_plan(&mut conn, &part.manifest).await;
        crate::provision::close(conn).await;
        plans.push((part, plan?));
    }
    Ok((placement, plans))
}

/// [`provision`] in each database that holds part of the project, the main database first.
pub async fn provision_all(
    target: &Target,
    manifest: &Manifest,
) -> Result<(Placement, Vec<(Part, ProvisionOutcome)>), AdminError> {
    let (placement, parts) = target.parts(manifest).await?;
    let mut outcomes = Vec::new();
    for part in parts {
        let mut conn = crate::connect(&part.url).await?;
        let outcome = async {
            crate::provision::check_server(&mut conn).await?;
            provision(&mut conn, &part.url, &part.manifest).await
        }
        .await;
        crate::provision::close(conn).await;
        outcomes.push((part, outcome?));
    }
    Ok((placement, outcomes))
}

/// Migrations of every module (or of `only`), each in the database it lives in.
pub async fn migrate_all(
    target: &Target,
    manifest: &Manifest,
    only: Option<&str>,
    observe: &(dyn Fn(&DatabaseKey, MigrateEvent<'_>) + Sync),
) -> Result<(Placement, Vec<(DatabaseKey, MigrateReport)>), AdminError> {
    if let Some(name) = only
        && manifest.module(name).is_none()
    {
        return Err(AdminError::UnknownModule {
            name: name.to_owned(),
            known: manifest.modules.iter().map(|m| format!("`{}`", m.name)).collect::<Vec<_>>().join(", "),
        });
    }
    let (placement, parts) = target.parts(manifest).await?;
    let mut reports = Vec::new();
    for part in parts {
        if only.is_some_and(|name| part.manifest.module(name).is_none()) {
            continue;
        }
        let key = part.key.clone();
        let mut conn = crate::connect(&part.url).await?;
        let report =
            crate::migrate::migrate(&mut conn, &part.url, &part.manifest, only, &|event| observe(&key, event)).await;
        crate::provision::close(conn).await;
        reports.push((part.key, report?));
    }
    Ok((placement, reports))
}

/// `moat status` in every database: each module's migrations, read where it lives, in the
/// manifest's dependency order.
pub async fn status_all(
    target: &Target,
    manifest: &Manifest,
) -> Result<(Placement, Vec<crate::migrate::ModuleStatus>), AdminError> {
    let (placement, parts) = target.parts(manifest).await?;
    let mut statuses = Vec::new();
    for part in parts {
        let mut conn = crate::connect(&part.url).await?;
        let found = crate::migrate::status(&mut conn, &part.url, &part.manifest).await;
        crate::provision::close(conn).await;
        statuses.extend(found?.into_iter().map(|mut status| {
            status.database = part.key.as_ref().map(ToString::to_string);
            status
        }));
    }
    let order: Vec<String> = manifest.modules_in_dependency_order().iter().map(|m| m.name.to_string()).collect();
    statuses.sort_by_key(|s| order.iter().position(|m| *m == s.module));
    Ok((placement, statuses))
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

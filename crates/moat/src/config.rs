//! How an application starts moat.

use std::path::Path;

use moat_core::manifest::Manifest;

use crate::Error;

/// Start-up configuration: the manifest and where the database is.
#[derive(Debug, Clone)]
pub struct Config {
    pub(crate) manifest: Manifest,
    pub(crate) database_url: Option<String>,
    pub(crate) databases: std::collections::BTreeMap<String, String>,
    pub(crate) migrate: bool,
    pub(crate) pool_size: u32,
    pub(crate) audit: bool,
    pub(crate) isolation: bool,
    pub(crate) modules: Option<Vec<String>>,
}

impl Config {
    /// Loads the manifest. The admin URL then comes from `MOAT_DATABASE_URL` or `DATABASE_URL`,
    /// or the embedded cluster next to the manifest is used.
    pub fn from_manifest(path: impl AsRef<Path>) -> Result<Self, Error> {
        let manifest = Manifest::load(path.as_ref())?;
        Ok(Self::new(manifest))
    }

    /// A configuration for an already loaded manifest.
    pub fn new(manifest: Manifest) -> Self {
        Self {
            manifest,
            database_url: None,
            databases: Default::default(),
            migrate: true,
            pool_size: 10,
            audit: true,
            isolation: true,
            modules: None,
        }
    }

    /// The admin connection (a role that can create roles and schemas); overrides the environment.
    pub fn database_url(mut self, url: impl Into<String>) -> Self {
        self.database_url = Some(url.into());
        self
    }

    /// The admin URL of the manifest's `[databases.NAME]`; overrides the variable its `url_env`
    /// names.
    pub fn database(mut self, name: impl Into<String>, url: impl Into<String>) -> Self {
        self.databases.insert(name.into(), url.into());
        self
    }

    /// Whether [`crate::Moat::start`] provisions and migrates (default: yes).
    pub fn migrate(mut self, migrate: bool) -> Self {
        self.migrate = migrate;
        self
    }

    /// Whether [`crate::Moat::start`] audits the database and refuses to start on an error
    /// finding (default: yes).
    pub fn audit(mut self, audit: bool) -> Self {
        self.audit = audit;
        self
    }

    /// With `false`, every module's pool logs in as the admin role (with `search_path` set to the
    /// module's schema) instead of the module's runtime role: no isolation at all. For measuring
    /// what isolation costs, never for production.
    pub fn isolation(mut self, isolation: bool) -> Self {
        self.isolation = isolation;
        self
    }

    /// Opens pools for these modules only (default: every module): a service that runs some
    /// modules of the project, or the relay, which needs none (and no consumer's either). The
    /// others' pools are never opened, so their roles need not be able to log in from here.
    pub fn modules<S: Into<String>>(mut self, modules: impl IntoIterator<Item = S>) -> Self {
        self.modules = Some(modules.into_iter().map(Into::into).collect());
        self
    }

    /// Connections per module pool (default 10).
    pub fn pool_size(mut self, size: u32) -> Self {
        self.pool_size = size.max(1);
        self
    }
}

//! moat's runtime library: what an application of a modular monolith links.
//!
//! Each module gets a connection pool that logs in as the module's own runtime role, so the
//! database itself refuses any read of another module's tables. [`Moat::start`] provisions the
//! database, applies every module's migrations (each module's own, in dependency order), installs
//! the contract views and audits the result before the application serves anything: it refuses to
//! start when the audit finds an error.
//!
//! ```no_run
//! # async fn example() -> Result<(), moat::Error> {
//! let app = moat::Moat::start(moat::Config::from_manifest("moat.toml")?).await?;
//! let patients = app.pool("patients")?; // logs in as `<project>_patients`
//! let count: i64 = sqlx::query_scalar("SELECT count(*) FROM patients").fetch_one(patients).await?;
//! # let _ = count; Ok(()) }
//! ```
//!
//! This crate does not depend on the SQL parser (`moat-analysis`): applications build no C code
//! for moat.

mod config;
mod error;
pub mod events;
mod notify;

pub use config::Config;
pub use error::Error;
pub use moat_admin as admin;
pub use moat_core::manifest::Manifest;

use std::collections::BTreeMap;
use std::sync::Arc;

use moat_admin::DatabaseUrl;
use moat_admin::target::password_from_env;
use moat_admin::up::{Target, UpReport};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

/// A running moat application: the manifest, the admin target and one pool per module.
#[derive(Debug, Clone)]
pub struct Moat {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    manifest: Manifest,
    target: Target,
    pools: BTreeMap<String, PgPool>,
    consumer_pools: BTreeMap<String, PgPool>,
    relay: Option<PgPool>,
    /// Modules whose pooled connections hold the prepared outbox INSERT.
    prepared: BTreeMap<String, bool>,
    notifier: Arc<notify::Notifier>,
    _senders: Vec<tokio::task::JoinHandle<()>>,
    startup: Option<UpReport>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for sender in &self._senders {
            sender.abort();
        }
    }
}

impl Moat {
    /// Provisions and migrates (unless the config says otherwise), then opens the pools.
    pub async fn start(config: Config) -> Result<Self, Error> {
        let target = moat_admin::up::resolve_target(&config.manifest, config.database_url.as_deref()).await?;
        let startup = if config.migrate {
            let report = moat_admin::up::up(&target.url, &config.manifest, &|event| {
                if let moat_admin::up::UpEvent::Migrate(moat_admin::migrate::MigrateEvent::Applied {
                    module,
                    file,
                    duration_ms,
                }) = event
                {
                    tracing::info!(module, file, duration_ms, "migration applied");
                }
            })
            .await?;
            Some(report)
        } else {
            None
        };
        if config.audit {
            let audit =
                moat_admin::audit::audit(&target.url, &config.manifest, moat_admin::audit::AuditOptions::default())
                    .await?;
            let baseline =
                moat_core::baseline::Baseline::load(&config.manifest.root.join(moat_core::baseline::FILE_NAME))
                    .map_err(|e| {
                        Error::Admin(moat_admin::AdminError::Refused {
                            message: e.to_string(),
                            help: "fix or remove the baseline file".into(),
                        })
                    })?;
            let outcome = baseline.apply("audit", audit.findings);
            let errors: Vec<_> =
                outcome.new.into_iter().filter(|f| f.severity == moat_core::findings::Severity::Error).collect();
            if !errors.is_empty() {
                return Err(Error::AuditFailed { findings: errors });
            }
        }
        Self::open(config, target, startup).await
    }

    /// Opens the pools without provisioning or migrating (migrations ran elsewhere).
    pub async fn connect(config: Config) -> Result<Self, Error> {
        let target = moat_admin::up::resolve_target(&config.manifest, config.database_url.as_deref()).await?;
        Self::open(config, target, None).await
    }

    async fn open(config: Config, target: Target, startup: Option<UpReport>) -> Result<Self, Error> {
        let roles = config.manifest.roles();
        let mut pools = BTreeMap::new();
        let mut prepared = BTreeMap::new();
        for module in &config.manifest.modules {
            let role = roles.module_runtime(&module.name);
            // A publishing module's connections prepare the outbox INSERT once, if the outbox
            // exists when the pool opens; transactions then send `EXECUTE ...; COMMIT`.
            let outbox =
                config.manifest.is_depended_on(&module.name).then(|| events::publish_outbox(module.schema.as_str()));
            // Without isolation the pool logs in as the admin with the module's `search_path`;
            // everything else (the prepared publish included) is the same, so that the two modes
            // differ by isolation alone.
            let login = if config.isolation {
                target.url.with_login(&role, password_from_env(&role).as_deref())
            } else {
                target.url.clone()
            };
            let mut options = login.connect_options()?;
            if !config.isolation {
                options = options.options([("search_path", module.schema.as_str())]);
            }
            let prepare = match &outbox {
                Some(outbox) if outbox_exists(&target.url, outbox).await? => {
                    prepared.insert(module.name.to_string(), true);
                    Some(events::prepare_publish_sql(outbox))
                }
                _ => None,
            };
            let pool = module_pool(&login, options, config.pool_size, prepare).await?;
            pools.insert(module.name.to_string(), pool);
        }
        let mut consumer_pools = BTreeMap::new();
        for consumer in &config.manifest.consumers {
            let role = roles.consumer(consumer);
            let pool = login_pool(&target.url, &role, config.pool_size).await?;
            consumer_pools.insert(consumer.to_string(), pool);
        }
        let relay = if config.manifest.uses_events() {
            Some(login_pool(&target.url, &roles.relay(), config.pool_size.min(4)).await?)
        } else {
            None
        };
        let publishers: Vec<String> = config
            .manifest
            .modules
            .iter()
            .filter(|m| config.manifest.is_depended_on(&m.name))
            .map(|m| m.name.to_string())
            .collect();
        let notifier = Arc::new(notify::Notifier::new(publishers.iter().cloned()));
        let senders = match &relay {
            Some(relay) => notifier.spawn_senders(
                relay.clone(),
                publishers
                    .iter()
                    .map(|p| (p.clone(), notify::channel_name(config.manifest.project.as_str(), p)))
                    .collect(),
                events::DispatcherConfig::default().notify_debounce,
            ),
            None => Vec::new(),
        };
        Ok(Self {
            inner: Arc::new(Inner {
                manifest: config.manifest,
                target,
                pools,
                consumer_pools,
                relay,
                prepared,
                notifier,
                _senders: senders,
                startup,
            }),
        })
    }

    /// The pool of a module: every connection logs in as the module's runtime role.
    pub fn pool(&self, module: &str) -> Result<&PgPool, Error> {
        self.inner.pools.get(module).ok_or_else(|| Error::UnknownModule {
            name: module.to_owned(),
            known: self.inner.pools.keys().cloned().collect::<Vec<_>>().join(", "),
        })
    }

    /// The pool of a consumer (a reporting or support role that reads contract views).
    pub fn consumer_pool(&self, consumer: &str) -> Result<&PgPool, Error> {
        self.inner.consumer_pools.get(consumer).ok_or_else(|| Error::UnknownConsumer {
            name: consumer.to_owned(),
            known: self.inner.consumer_pools.keys().cloned().collect::<Vec<_>>().join(", "),
        })
    }

    /// Begins a transaction of `module` on its own runtime-role connection. Events published in
    /// it are written to the module's outbox with its commit.
    pub async fn begin(&self, module: &str) -> Result<events::ModuleTx, Error> {
        let pool = self.pool(module)?;
        let conn = pool.acquire().await?;
        let outbox = self
            .inner
            .manifest
            .module(module)
            .filter(|m| self.inner.manifest.is_depended_on(&m.name))
            .map(|m| events::publish_outbox(m.schema.as_str()));
        let prepared = self.inner.prepared.get(module).copied().unwrap_or(false);
        events::ModuleTx::begin(conn, module, outbox, prepared, self.inner.notifier.clone()).await
    }

    /// The event bus: register handlers with [`events::EventBus::subscribe`], then start it.
    pub fn events(&self) -> events::EventBus {
        events::EventBus::new(self.clone())
    }

    /// The relay's pool (logs in as `<project>_relay`).
    pub fn relay_pool(&self) -> Result<&PgPool, Error> {
        self.inner.relay.as_ref().ok_or(Error::NoRelay)
    }

    pub(crate) fn notifier(&self) -> Arc<notify::Notifier> {
        self.inner.notifier.clone()
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.inner.manifest
    }

    /// The admin URL (never log it: it may hold a password; its `Display` hides it).
    pub fn admin_url(&self) -> &DatabaseUrl {
        &self.inner.target.url
    }

    /// What start-up did (provisioning and migrations), when [`Moat::start`] ran it.
    pub fn startup_report(&self) -> Option<&UpReport> {
        self.inner.startup.as_ref()
    }

    /// Closes every pool.
    pub async fn close(&self) {
        for pool in self.inner.pools.values().chain(self.inner.consumer_pools.values()).chain(self.inner.relay.iter()) {
            pool.close().await;
        }
    }
}

async fn outbox_exists(admin: &DatabaseUrl, outbox: &str) -> Result<bool, Error> {
    let mut conn = moat_admin::connect(admin).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL").bind(outbox).fetch_one(&mut conn).await?;
    let _ = sqlx::Connection::close(conn).await;
    Ok(exists)
}

/// A module's pool: `options` log in as the module's runtime role (or, without isolation, as the
/// admin); `prepare` (`PREPARE moat_publish ...`) runs on every new connection of a publishing
/// module, so that transactions send `EXECUTE ...; COMMIT`.
async fn module_pool(
    login: &DatabaseUrl,
    options: sqlx::postgres::PgConnectOptions,
    size: u32,
    prepare: Option<String>,
) -> Result<PgPool, Error> {
    let mut pool = PgPoolOptions::new().max_connections(size).min_connections(0);
    if let Some(prepare) = prepare {
        pool = pool.after_connect(move |conn, _| {
            let prepare = prepare.clone();
            Box::pin(async move {
                sqlx::raw_sql(sqlx::AssertSqlSafe(prepare)).execute(conn).await?;
                Ok(())
            })
        });
    }
    pool.connect_with(options).await.map_err(|source| Error::Login {
        role: login.user(),
        target: login.to_string(),
        source,
    })
}

/// A pool that logs in as `role` next to the admin URL, with `MOAT_PASSWORD_<ROLE>` if set.
/// One connection is opened right away, so that a role that cannot log in fails at start-up.
pub async fn login_pool(admin: &DatabaseUrl, role: &str, size: u32) -> Result<PgPool, Error> {
    let url = admin.with_login(role, password_from_env(role).as_deref());
    let options = url.connect_options()?;
    module_pool(&url, options, size, None).await
}

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
//! let count: i64 = sqlx::query_scalar("SELECT count(*) FROM patients").fetch_one(&patients).await?;
//! # let _ = count; Ok(()) }
//! ```
//!
//! This crate does not depend on the SQL parser (`moat-analysis`): applications build no C code
//! for moat.

pub mod compose;
mod config;
mod error;
pub mod events;
mod follow;
pub mod jetstream;
mod notify;

pub use config::Config;
pub use error::Error;
pub use moat_admin as admin;
pub use moat_core::manifest::Manifest;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use moat_admin::DatabaseUrl;
use moat_admin::databases::DatabaseKey;
use moat_admin::placement::Placement;
use moat_admin::target::password_from_env;
use moat_admin::up::{Target, UpAll, UpReport};
use moat_core::names::DatabaseName;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::watch;

/// A running moat application: the manifest, the admin target and one pool per module, each in
/// the database the module lives in (and moved there when `moat extract` switches it).
#[derive(Debug, Clone)]
pub struct Moat {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    manifest: Manifest,
    target: Target,
    pool_size: u32,
    isolation: bool,
    /// Each module's pool and where it points.
    pools: RwLock<BTreeMap<String, ModulePool>>,
    consumer_pools: BTreeMap<String, PgPool>,
    /// The relay's pool per database, opened when first needed.
    relays: tokio::sync::Mutex<BTreeMap<DatabaseKey, PgPool>>,
    /// Where each module is, as last read.
    placement: RwLock<Placement>,
    /// Bumped whenever a module's pool moves to another database.
    moves: watch::Sender<u64>,
    notifier: Arc<notify::Notifier>,
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    startup: Option<UpAll>,
}

/// A module's pool and the database it logs in to.
#[derive(Debug, Clone)]
struct ModulePool {
    pool: PgPool,
    at: DatabaseKey,
    /// Whether its connections hold the prepared outbox INSERT.
    prepared: bool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in
            self.tasks.lock().map(|t| t.iter().map(|t| t.abort_handle()).collect::<Vec<_>>()).unwrap_or_default()
        {
            task.abort();
        }
    }
}

impl Moat {
    /// Provisions and migrates every database (unless the config says otherwise), audits them,
    /// then opens the pools.
    pub async fn start(config: Config) -> Result<Self, Error> {
        let target = resolve(&config).await?;
        let startup = if config.migrate {
            let report = moat_admin::up::up_all(&target, &config.manifest, &|database, event| {
                if let moat_admin::up::UpEvent::Migrate(moat_admin::migrate::MigrateEvent::Applied {
                    module,
                    file,
                    duration_ms,
                }) = event
                {
                    let database = moat_admin::databases::label(database.as_ref());
                    tracing::info!(module, file, duration_ms, database, "migration applied");
                }
            })
            .await?;
            Some(report)
        } else {
            None
        };
        if config.audit {
            let audit =
                moat_admin::audit::audit_all(&target, &config.manifest, moat_admin::audit::AuditOptions::default())
                    .await?;
            let baseline =
                moat_core::baseline::Baseline::load(&config.manifest.root.join(moat_core::baseline::FILE_NAME))
                    .map_err(|e| {
                        Error::Admin(moat_admin::AdminError::Refused {
                            message: e.to_string(),
                            help: "fix or remove the baseline file".into(),
                        })
                    })?;
            let outcome = baseline.apply("audit", audit.findings());
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
        let target = resolve(&config).await?;
        Self::open(config, target, None).await
    }

    async fn open(config: Config, target: Target, startup: Option<UpAll>) -> Result<Self, Error> {
        let placement = match &startup {
            Some(report) => report.placement.clone(),
            None => moat_admin::placement::locate(&config.manifest, &target.databases).await?,
        };
        let mut pools = BTreeMap::new();
        for module in &config.manifest.modules {
            if config.modules.as_ref().is_some_and(|only| !only.iter().any(|m| m == module.name.as_str())) {
                continue;
            }
            let at = placement.at(module.name.as_str()).cloned();
            let pool =
                open_module_pool(&config.manifest, &target, config.isolation, config.pool_size, module, &at).await?;
            pools.insert(module.name.to_string(), pool);
        }
        let mut consumer_pools = BTreeMap::new();
        let roles = config.manifest.roles();
        for consumer in config.manifest.consumers.iter().filter(|_| config.modules.is_none()) {
            // A consumer reads contracts of one database (the manifest refuses more).
            let database = config
                .manifest
                .contracts
                .iter()
                .find(|c| c.readers.contains(consumer))
                .and_then(|c| config.manifest.contract_database(c))
                .and_then(|d| placement_of_database(&placement, &config.manifest, d));
            let url = target.databases.url(database.as_ref())?;
            let pool = login_pool(url, &roles.consumer(consumer), config.pool_size).await?;
            consumer_pools.insert(consumer.to_string(), pool);
        }
        let publishers: Vec<String> = config
            .manifest
            .modules
            .iter()
            .filter(|m| config.manifest.is_depended_on(&m.name))
            .map(|m| m.name.to_string())
            .collect();
        let notifier = Arc::new(notify::Notifier::new(publishers.iter().cloned()));
        let follow = config
            .manifest
            .modules
            .iter()
            .any(|m| placement.modules.get(m.name.as_str()).is_some_and(|l| l.at != l.wanted));
        let app = Self {
            inner: Arc::new(Inner {
                manifest: config.manifest,
                target,
                pool_size: config.pool_size,
                isolation: config.isolation,
                pools: RwLock::new(pools),
                consumer_pools,
                relays: tokio::sync::Mutex::new(BTreeMap::new()),
                placement: RwLock::new(placement),
                moves: watch::channel(0).0,
                notifier,
                tasks: std::sync::Mutex::new(Vec::new()),
                startup,
            }),
        };
        if app.inner.manifest.uses_events() {
            // A role that cannot log in fails at start-up, not at the first event.
            for key in app.databases_with_publishers() {
                app.relay_at(&key).await?;
            }
        }
        let mut tasks = Vec::new();
        let weak = Arc::downgrade(&app.inner);
        tasks.extend(
            app.inner.notifier.spawn_senders(
                publishers
                    .iter()
                    .map(|p| (p.clone(), notify::channel_name(app.inner.manifest.project.as_str(), p)))
                    .collect(),
                events::DispatcherConfig::default().notify_debounce,
                Arc::new(move |module: &str| weak.upgrade().and_then(|inner| Moat { inner }.pool(module).ok())),
            ),
        );
        if follow {
            tasks.push(tokio::spawn(follow::follow(Arc::downgrade(&app.inner))));
        }
        if let Ok(mut slot) = app.inner.tasks.lock() {
            slot.extend(tasks);
        }
        Ok(app)
    }

    /// The pool of a module: every connection logs in as the module's runtime role, to the
    /// database the module lives in now. Take it anew for each unit of work: after `moat
    /// extract` switches the module to another database, the next call returns a pool there.
    pub fn pool(&self, module: &str) -> Result<PgPool, Error> {
        Ok(self.current(module)?.pool)
    }

    /// A module's pool as it is now, with where it points.
    fn current(&self, module: &str) -> Result<ModulePool, Error> {
        let pools = self.inner.pools.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        pools.get(module).cloned().ok_or_else(|| Error::UnknownModule {
            name: module.to_owned(),
            known: pools.keys().cloned().collect::<Vec<_>>().join(", "),
        })
    }

    /// The database a module's pool logs in to (`None`: the main database).
    pub fn database_of(&self, module: &str) -> Option<DatabaseName> {
        let pools = self.inner.pools.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        match pools.get(module) {
            Some(pool) => pool.at.clone(),
            // A module this process opened no pool for (`Config::modules`): where it lives.
            None => {
                let placement = self.inner.placement.read().unwrap_or_else(std::sync::PoisonError::into_inner);
                placement.at(module).cloned()
            }
        }
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
        let (conn, prepared) = self.acquire_prepared(module).await?;
        let outbox = self
            .inner
            .manifest
            .module(module)
            .filter(|m| self.inner.manifest.is_depended_on(&m.name))
            .map(|m| events::publish_outbox(m.schema.as_str()));
        events::ModuleTx::begin(conn, module, outbox, prepared, self.inner.notifier.clone()).await
    }

    /// A connection of `module`'s pool. When the module moves to another database while this
    /// waits (its old database refuses new sessions during the cutover), the connection comes
    /// from its new pool.
    pub async fn acquire(&self, module: &str) -> Result<sqlx::pool::PoolConnection<sqlx::Postgres>, Error> {
        Ok(self.acquire_prepared(module).await?.0)
    }

    async fn acquire_prepared(
        &self,
        module: &str,
    ) -> Result<(sqlx::pool::PoolConnection<sqlx::Postgres>, bool), Error> {
        let mut moves = self.inner.moves.subscribe();
        loop {
            let ModulePool { pool, prepared, .. } = self.current(module)?;
            moves.borrow_and_update();
            tokio::select! {
                conn = pool.acquire() => return Ok((conn?, prepared)),
                changed = moves.changed() => if changed.is_err() { return Ok((pool.acquire().await?, prepared)) },
            }
        }
    }

    /// The event bus: register handlers with [`events::EventBus::subscribe`], then start it.
    pub fn events(&self) -> events::EventBus {
        events::EventBus::new(self.clone())
    }

    /// The relay's pool (logs in as `<project>_relay`) in the main database.
    pub async fn relay_pool(&self) -> Result<PgPool, Error> {
        self.relay_at(&None).await
    }

    /// The relay's pool in the database `module` lives in now (its outbox is there).
    pub async fn relay_for(&self, module: &str) -> Result<PgPool, Error> {
        let at = self.database_of(module);
        self.relay_at(&at).await
    }

    async fn relay_at(&self, key: &DatabaseKey) -> Result<PgPool, Error> {
        if !self.inner.manifest.uses_events() {
            return Err(Error::NoRelay);
        }
        let mut relays = self.inner.relays.lock().await;
        if let Some(pool) = relays.get(key) {
            return Ok(pool.clone());
        }
        let url = self.inner.target.databases.url(key.as_ref())?;
        let pool = login_pool(url, &self.inner.manifest.roles().relay(), self.inner.pool_size.min(4)).await?;
        relays.insert(key.clone(), pool.clone());
        Ok(pool)
    }

    /// The databases publishing modules live in now.
    fn databases_with_publishers(&self) -> Vec<DatabaseKey> {
        let mut keys: Vec<DatabaseKey> = self
            .inner
            .manifest
            .modules
            .iter()
            .filter(|m| self.inner.manifest.is_depended_on(&m.name))
            .map(|m| self.database_of(m.name.as_str()))
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// A receiver that changes whenever a module's pool moves to another database.
    pub fn moves(&self) -> watch::Receiver<u64> {
        self.inner.moves.subscribe()
    }

    /// Reads where every module lives and moves the pools of modules that changed database
    /// (after `moat extract` switched them): new connections go to the new database, the old pool
    /// is closed. Returns the modules moved. The application calls nothing: a task does this when
    /// some module is not where the manifest puts it.
    pub async fn relocate(&self) -> Result<Vec<String>, Error> {
        let placement = moat_admin::placement::locate(&self.inner.manifest, &self.inner.target.databases).await?;
        let mut moved = Vec::new();
        for module in &self.inner.manifest.modules {
            let name = module.name.as_str();
            let now = placement.at(name).cloned();
            let before = self.database_of(name);
            if now == before {
                continue;
            }
            if !self.inner.pools.read().unwrap_or_else(std::sync::PoisonError::into_inner).contains_key(name) {
                // No pool here (`Config::modules`); the placement below is what follows it.
                moved.push(name.to_owned());
                continue;
            }
            let pool = open_module_pool(
                &self.inner.manifest,
                &self.inner.target,
                self.inner.isolation,
                self.inner.pool_size,
                module,
                &now,
            )
            .await?;
            let old = {
                let mut pools = self.inner.pools.write().unwrap_or_else(std::sync::PoisonError::into_inner);
                pools.insert(name.to_owned(), pool)
            };
            if let Some(old) = old {
                // Connections in use finish their work (and fail, if the source refuses them).
                let pool = old.pool;
                tokio::spawn(async move { pool.close().await });
            }
            tracing::info!(
                module = name,
                from = %moat_admin::databases::label(before.as_ref()),
                to = %moat_admin::databases::label(now.as_ref()),
                "module moved; its pool follows"
            );
            moved.push(name.to_owned());
        }
        *self.inner.placement.write().unwrap_or_else(std::sync::PoisonError::into_inner) = placement;
        if !moved.is_empty() {
            self.inner.moves.send_modify(|n| *n += 1);
        }
        Ok(moved)
    }

    /// Whether some module still lives elsewhere than the manifest says (a move may come).
    pub(crate) fn may_move(&self) -> bool {
        let placement = self.inner.placement.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        placement.modules.values().any(|l| l.at != l.wanted)
    }

    pub(crate) fn notifier(&self) -> Arc<notify::Notifier> {
        self.inner.notifier.clone()
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.inner.manifest
    }

    /// The admin URL of the main database (never log it: it may hold a password; its `Display`
    /// hides it).
    pub fn admin_url(&self) -> &DatabaseUrl {
        &self.inner.target.url
    }

    /// Every database's admin URL.
    pub fn databases(&self) -> &moat_admin::databases::Databases {
        &self.inner.target.databases
    }

    /// What start-up did in the main database (provisioning and migrations), when
    /// [`Moat::start`] ran it; [`Moat::startup`] has every database.
    pub fn startup_report(&self) -> Option<&UpReport> {
        self.inner.startup.as_ref().and_then(|s| s.databases.first().map(|(_, r)| r))
    }

    /// What start-up did in every database, when [`Moat::start`] ran it.
    pub fn startup(&self) -> Option<&UpAll> {
        self.inner.startup.as_ref()
    }

    /// Closes every pool.
    pub async fn close(&self) {
        let pools: Vec<PgPool> = {
            let pools = self.inner.pools.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            pools.values().map(|p| p.pool.clone()).collect()
        };
        let relays: Vec<PgPool> = self.inner.relays.lock().await.values().cloned().collect();
        for pool in pools.iter().chain(self.inner.consumer_pools.values()).chain(relays.iter()) {
            pool.close().await;
        }
    }
}

/// The admin target of a configuration.
async fn resolve(config: &Config) -> Result<Target, Error> {
    let mut given = BTreeMap::new();
    for (name, url) in &config.databases {
        given.insert(name.clone(), DatabaseUrl::parse(url)?);
    }
    Ok(moat_admin::up::resolve_target_with(&config.manifest, config.database_url.as_deref(), &given).await?)
}

/// The database a `[databases]` key stands for now: where the modules of that key live (a
/// contract follows the modules it reads).
fn placement_of_database(placement: &Placement, manifest: &Manifest, key: &DatabaseName) -> DatabaseKey {
    manifest
        .modules
        .iter()
        .find(|m| m.database.as_ref() == Some(key))
        .map_or(Some(key.clone()), |m| placement.at(m.name.as_str()).cloned())
}

/// A module's pool in database `at`: it logs in as the module's runtime role (or, without
/// isolation, as the admin with the module's `search_path`); a publishing module's connections
/// prepare the outbox INSERT once, if the outbox exists, so that transactions send
/// `EXECUTE ...; COMMIT`.
async fn open_module_pool(
    manifest: &Manifest,
    target: &Target,
    isolation: bool,
    size: u32,
    module: &moat_core::manifest::Module,
    at: &DatabaseKey,
) -> Result<ModulePool, Error> {
    let admin = target.databases.url(at.as_ref())?;
    let role = manifest.roles().module_runtime(&module.name);
    let outbox = manifest.is_depended_on(&module.name).then(|| events::publish_outbox(module.schema.as_str()));
    let login = if isolation { admin.with_login(&role, password_from_env(&role).as_deref()) } else { admin.clone() };
    let mut options = login.connect_options()?;
    if !isolation {
        options = options.options([("search_path", module.schema.as_str())]);
    }
    let prepare = match &outbox {
        Some(outbox) if outbox_exists(admin, outbox).await? => Some(events::prepare_publish_sql(outbox)),
        _ => None,
    };
    let prepared = prepare.is_some();
    let pool = module_pool(&login, options, size, prepare).await?;
    Ok(ModulePool { pool, at: at.clone(), prepared })
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

//! Test harness: every database test gets its own database and a unique project name (roles are
//! cluster-wide, so their names carry the project prefix), and both are dropped afterwards.
//!
//! The server is `DATABASE_URL` when it is set; otherwise an embedded cluster under
//! `target/moat-test-pg`, started on first use and shared by all tests. A test never skips when
//! no server is reachable: it fails with a message that says how to start one.
#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use moat_admin::DatabaseUrl;
use moat_admin::embedded::{EmbeddedOptions, ensure_running};
use moat_core::manifest::Manifest;
use moat_core::quote::ident;
use sqlx::{Connection, PgConnection};

pub mod nats;

/// The server URL (of its `postgres` database) that tests use.
pub fn server_url() -> DatabaseUrl {
    static SERVER: OnceLock<DatabaseUrl> = OnceLock::new();
    SERVER
        .get_or_init(|| {
            if let Ok(url) = std::env::var("DATABASE_URL")
                && !url.is_empty() {
                    return DatabaseUrl::parse(&url).expect("DATABASE_URL is not a valid postgres:// URL").with_database("postgres");
                }
            let dir = test_cluster_dir();
            match ensure_running(&EmbeddedOptions { dir: dir.clone(), durable: false, logical: true }) {
                Ok(cluster) => cluster.url("postgres"),
                Err(e) => panic!(
                    "no PostgreSQL for the tests: DATABASE_URL is not set and the embedded cluster in `{}` did not start:\n{e}\n\
                     Start a server and set DATABASE_URL (for example `pg_ctlcluster 15 main start` and \
                     DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres), or install the PostgreSQL server binaries \
                     (`scripts/setup` does it).",
                    dir.display()
                ),
            }
        })
        .clone()
}

/// The tests' embedded cluster (its `postgres` database), whatever `DATABASE_URL` says: moat
/// starts it with `wal_level = logical`, for the tests of logical replication (the local server
/// may run with `wal_level = replica`).
pub fn logical_server_url() -> DatabaseUrl {
    static SERVER: OnceLock<DatabaseUrl> = OnceLock::new();
    SERVER
        .get_or_init(|| {
            let dir = test_cluster_dir();
            match ensure_running(&EmbeddedOptions { dir: dir.clone(), durable: false, logical: true }) {
                Ok(cluster) => cluster.url("postgres"),
                Err(e) => panic!(
                    "the tests of logical replication need moat's embedded cluster in `{}`, which did not start:\n{e}\n\
                     Install the PostgreSQL server binaries (`scripts/setup` does it).",
                    dir.display()
                ),
            }
        })
        .clone()
}

/// Where the tests' embedded cluster lives: `target/moat-test-pg`, or, when the tests run as root
/// (the cluster then runs as the `postgres` user, who may not enter a private checkout), a folder
/// under the system's temporary directory named after the workspace.
pub fn test_cluster_dir() -> PathBuf {
    let in_target = target_dir().join("moat-test-pg");
    if !running_as_root() {
        return in_target;
    }
    let workspace = std::fs::canonicalize(Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")).unwrap_or_default();
    let digest = moat_core::checksum(&workspace.to_string_lossy());
    std::env::temp_dir().join(format!("moat-test-pg-{}", &digest[..12]))
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0).unwrap_or(false)
}

/// The workspace's `target` folder.
pub fn target_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target")
}

/// A fresh database and project name for one test.
#[derive(Debug)]
pub struct TestDb {
    /// The admin URL of the test database.
    pub url: DatabaseUrl,
    /// The project name (prefix of every role of this test).
    pub project: String,
    /// The database name.
    pub database: String,
    server: DatabaseUrl,
    /// More databases of this test ([`TestDb::another`]), dropped with it.
    others: std::sync::Mutex<Vec<String>>,
}

impl TestDb {
    /// Creates the database. Panics with instructions when no server is reachable.
    pub async fn new() -> Self {
        let server = tokio::task::spawn_blocking(server_url).await.unwrap();
        Self::on(server).await
    }

    /// Creates the database in the tests' embedded cluster, which runs with `wal_level =
    /// logical` ([`logical_server_url`]).
    pub async fn logical() -> Self {
        let server = tokio::task::spawn_blocking(logical_server_url).await.unwrap();
        Self::on(server).await
    }

    async fn on(server: DatabaseUrl) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let project = format!("t{}", &id[..12]);
        let database = format!("moat_test_{}", &id[..16]);
        let mut conn = match moat_admin::connect(&server).await {
            Ok(conn) => conn,
            Err(e) => panic!("cannot reach the test PostgreSQL: {e}"),
        };
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {}", ident(&database))))
            .execute(&mut conn)
            .await
            .unwrap();
        let _ = conn.close().await;
        Self { url: server.with_database(&database), project, database, server, others: Default::default() }
    }

    /// Another database on the same server (`<database>_<suffix>`), for a module that lives in a
    /// database of its own; dropped with this one. Returns its admin URL.
    pub async fn another(&self, suffix: &str) -> DatabaseUrl {
        let database = format!("{}_{suffix}", self.database);
        let mut conn = moat_admin::connect(&self.server).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {}", ident(&database))))
            .execute(&mut conn)
            .await
            .unwrap();
        let _ = conn.close().await;
        self.others.lock().unwrap().push(database.clone());
        self.server.with_database(&database)
    }

    /// An admin connection to the test database.
    pub async fn connect(&self) -> PgConnection {
        moat_admin::connect(&self.url).await.unwrap()
    }

    /// A connection that logs in as `role` (trust authentication on the test server).
    pub async fn connect_as(&self, role: &str) -> PgConnection {
        moat_admin::connect_as(&self.url.with_login(role, None)).await.unwrap()
    }

    /// A role name of this test's project: `<project>_<suffix>`.
    pub fn role(&self, suffix: &str) -> String {
        format!("{}_{suffix}", self.project)
    }

    /// Runs SQL as the admin.
    pub async fn exec(&self, sql: &str) {
        let mut conn = self.connect().await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        let _ = conn.close().await;
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let server = self.server.clone();
        let mut databases = std::mem::take(&mut *self.others.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        databases.push(self.database.clone());
        let prefix = format!("{}_", self.project);
        // Drop runs inside the test's runtime; clean up on a thread with a runtime of its own.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let Ok(mut conn) = moat_admin::connect(&server).await else { return };
                for database in databases {
                    // A subscription or replication slot a failed test left keeps its database
                    // (and a replication worker of the cluster) busy: end them first.
                    drop_replication(&server, &database).await;
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                        ident(&database)
                    )))
                    .execute(&mut conn)
                    .await;
                }
                let roles: Vec<String> =
                    sqlx::query_scalar("SELECT rolname::text FROM pg_roles WHERE starts_with(rolname, $1)")
                        .bind(&prefix)
                        .fetch_all(&mut conn)
                        .await
                        .unwrap_or_default();
                for role in roles {
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP ROLE IF EXISTS {}", ident(&role))))
                        .execute(&mut conn)
                        .await;
                }
                let _ = conn.close().await;
            });
        });
        let _ = cleanup.join();
    }
}

/// Drops the subscriptions in `database` (detached from their slots) and the replication slots
/// of `database`, whatever state a test left them in.
async fn drop_replication(server: &DatabaseUrl, database: &str) {
    if let Ok(mut conn) = moat_admin::connect(&server.with_database(database)).await {
        let subscriptions: Vec<String> = sqlx::query_scalar(
            "SELECT subname::text FROM pg_subscription WHERE subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap_or_default();
        for name in subscriptions {
            let name = ident(&name);
            for sql in [
                format!("ALTER SUBSCRIPTION {name} DISABLE"),
                format!("ALTER SUBSCRIPTION {name} SET (slot_name = NONE)"),
                format!("DROP SUBSCRIPTION {name}"),
            ] {
                let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await;
            }
        }
        let _ = conn.close().await;
    }
    if let Ok(mut conn) = moat_admin::connect(server).await {
        for _ in 0..20 {
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE database = {0} AND active_pid IS NOT NULL; \
                 SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = {0} AND NOT active",
                moat_core::quote::literal(database)
            )))
            .execute(&mut conn)
            .await;
            let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_replication_slots WHERE database = $1")
                .bind(database)
                .fetch_one(&mut conn)
                .await
                .unwrap_or(0);
            if left == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let _ = conn.close().await;
    }
}

/// Copies the folder `from` into `to` (created if needed), leaving out embedded clusters
/// (`.moat/`): how tests take a copy of an example project.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() == ".moat" {
            continue;
        }
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A project on disk: a temporary folder with `moat.toml`, module migration folders and files.
#[derive(Debug)]
pub struct TestProject {
    /// The folder.
    pub dir: tempfile::TempDir,
}

impl TestProject {
    /// Writes `moat.toml` (with `{project}` replaced by the project name) and the given files.
    pub fn new(project: &str, manifest: &str, files: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("moat.toml"), manifest.replace("{project}", project)).unwrap();
        let project = Self { dir };
        for (path, text) in files {
            project.write(path, text);
        }
        project
    }

    /// Writes a file (creating folders).
    pub fn write(&self, path: &str, text: &str) {
        let path = self.dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// Creates an empty folder.
    pub fn mkdir(&self, path: &str) {
        std::fs::create_dir_all(self.dir.path().join(path)).unwrap();
    }

    /// The manifest path.
    pub fn manifest_path(&self) -> PathBuf {
        self.dir.path().join("moat.toml")
    }

    /// Loads the manifest.
    pub fn manifest(&self) -> Manifest {
        Manifest::load(&self.manifest_path()).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// The SQLSTATE of a failed statement, or `None` when it succeeded.
pub async fn sqlstate_of(conn: &mut PgConnection, sql: &str) -> Option<String> {
    match sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned())).execute(&mut *conn).await {
        Ok(_) => None,
        Err(e) => Some(moat_admin::error::sqlstate(&e).unwrap_or_else(|| format!("not a server error: {e}"))),
    }
}

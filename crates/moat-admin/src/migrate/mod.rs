//! Per-module migrations: `NNNN_description.sql` files in the module's folder, applied in order
//! as the module's owner role, recorded in `<schema>.moat_migrations`.
//!
//! Module SQL never runs on the admin's connection. For each module moat opens a session that
//! logs in as `<project>_<module>_migrator` ([`crate::login::login_as`]): a LOGIN, NOINHERIT role
//! whose only membership is the module's owner role. The session `SET ROLE`s to the owner and
//! sets `search_path` to the module's schema; a role change inside a migration (`RESET ROLE`,
//! `set_config('role', ...)`) can only drop to the migrator, which holds nothing but the
//! history table. The history is read and written in that session too, never as the admin.
//!
//! Each migration runs in its own transaction. Before its `COMMIT`, the runner checks that the
//! transaction is still the one it opened, that the migration still runs as the owner, and that
//! no membership of the project's roles and no setting or attribute of them changed (in
//! PostgreSQL 15 the session user may grant membership in itself); otherwise it rolls back. A
//! first line `-- moat:no-transaction` opts out of the transaction; such a migration runs
//! statement by statement with the same checks after each statement, and moat undoes a
//! membership or role setting it made (see [`runner`]).
//!
//! Before running anything, the runner refuses a file whose statements visibly leave the
//! migration's transaction, role or schema ([`screen`]); the database is the real guarantee.
//!
//! A session advisory lock per module (keyed by project and module, taken by the admin's
//! connection under `lock_timeout`) serializes concurrent runs of one module without making other
//! modules wait; the history is re-read after taking it.

mod discover;
mod errors;
pub mod runner;
mod scaffold;
pub mod screen;
pub(crate) mod session;
mod status;

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

pub use discover::{compare, discover, parse_file_name};
pub use errors::MigrationError;
pub use runner::migrate;
pub use scaffold::new_migration;
pub use status::{moat_owned_histories, read_history, ready_modules, status};

/// The first line that makes a migration run outside a transaction.
pub const NO_TRANSACTION: &str = "-- moat:no-transaction";

/// A migration file on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationFile {
    /// The number in its name.
    pub version: u64,
    /// The description in its name.
    pub name: String,
    /// Its path.
    pub path: PathBuf,
    /// Its path relative to the manifest, for messages.
    pub file: String,
    /// Its text.
    pub text: String,
    /// Checksum of the text with line endings normalized.
    pub checksum: String,
    /// Whether its first line is `-- moat:no-transaction`.
    pub no_transaction: bool,
}

/// A row of a module's migration history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedMigration {
    /// Version.
    pub version: u64,
    /// Name at the time it was applied.
    pub name: String,
    /// Checksum at the time it was applied.
    pub checksum: String,
    /// When.
    pub applied_at: chrono::DateTime<chrono::Utc>,
    /// How long it took.
    pub duration_ms: i64,
    /// False for a no-transaction migration that failed partway.
    pub success: bool,
}

/// Where a migration stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MigrationState {
    /// Applied, and the file is unchanged.
    Applied,
    /// On disk, not applied.
    Pending,
    /// Applied, but the file changed since.
    Modified,
    /// Applied, but the file is gone.
    Missing,
    /// A no-transaction migration that failed partway; it is retried by the next run.
    Failed,
}

impl fmt::Display for MigrationState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MigrationState::Applied => "applied",
            MigrationState::Pending => "pending",
            MigrationState::Modified => "modified",
            MigrationState::Missing => "missing",
            MigrationState::Failed => "failed",
        })
    }
}

/// One line of `moat status`.
#[derive(Debug, Clone, Serialize)]
pub struct StatusEntry {
    /// Version.
    pub version: u64,
    /// Name.
    pub name: String,
    /// State.
    pub state: MigrationState,
    /// The file, relative to the manifest, when it exists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// When it was applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The migrations of one module.
#[derive(Debug, Clone, Serialize)]
pub struct ModuleStatus {
    /// Module.
    pub module: String,
    /// Its schema.
    pub schema: String,
    /// The `[databases]` key of the database its data is in now (`None`: the main database).
    pub database: Option<String>,
    /// The `[databases]` key of the database the manifest puts it in (`None`: the main one);
    /// differs from `database` until `moat extract` moves it.
    pub manifest_database: Option<String>,
    /// Whether its schema and history table exist.
    pub provisioned: bool,
    /// Every migration on disk or in the history, by version.
    pub migrations: Vec<StatusEntry>,
}

impl ModuleStatus {
    /// How many migrations are in `state`.
    pub fn count(&self, state: MigrationState) -> usize {
        self.migrations.iter().filter(|m| m.state == state).count()
    }
}
/// What the migration runner reports as it goes.
#[derive(Debug, Clone)]
pub enum MigrateEvent<'a> {
    /// Another process holds the module's lock; waiting.
    Waiting {
        /// Module.
        module: &'a str,
    },
    /// A migration starts.
    Applying {
        /// Module.
        module: &'a str,
        /// The file.
        file: &'a str,
    },
    /// A migration was applied.
    Applied {
        /// Module.
        module: &'a str,
        /// The file.
        file: &'a str,
        /// How long it took.
        duration_ms: i64,
    },
}

/// What a migration run did.
#[derive(Debug, Clone, Default)]
pub struct MigrateReport {
    /// Applied migrations, `(module, file)`, in order.
    pub applied: Vec<(String, String)>,
    /// Statements sent to the server.
    pub statements: usize,
}

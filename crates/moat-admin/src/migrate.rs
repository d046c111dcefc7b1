//! Per-module migrations: `NNNN_description.sql` files in the module's folder, applied in order
//! as the module's owner role, recorded in `<schema>.moat_migrations`.
//!
//! Each migration runs in its own transaction (`SET LOCAL ROLE <owner>`, `search_path` set to the
//! module's schema), so the database itself refuses a migration that touches another module. A
//! first line `-- moat:no-transaction` opts out; such a migration runs statement by statement.
//! A session advisory lock per module (keyed by project and module) serializes concurrent runs of
//! one module without making other modules wait; the history is re-read after taking it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use moat_core::manifest::{Manifest, Module};
use moat_core::quote::{ident, literal, qualified};
use moat_core::text::{LineIndex, char_position_to_byte};
use serde::Serialize;
use sqlx::{Connection, PgConnection, Row};

use crate::error::{AdminError, db};
use crate::internal::MIGRATIONS;
use crate::target::DatabaseUrl;

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

/// Why a module's migrations cannot run (or stopped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrationError {
    /// A `.sql` file whose name is not `NNNN_description.sql`.
    BadFileName {
        /// The file.
        file: String,
    },
    /// Two files with one number.
    DuplicateVersion {
        /// The number.
        version: u64,
        /// One file.
        first: String,
        /// The other.
        second: String,
    },
    /// A migration failed; nothing of it remains (unless it ran without a transaction).
    Failed {
        /// Module.
        module: String,
        /// The file.
        file: String,
        /// 1-based line of the error, when PostgreSQL gave a position.
        line: Option<u32>,
        /// 1-based column.
        column: Option<u32>,
        /// SQLSTATE.
        sqlstate: Option<String>,
        /// PostgreSQL's message.
        message: String,
        /// PostgreSQL's detail and hint, and moat's advice.
        help: Option<String>,
    },
    /// Applied migrations whose files changed.
    Modified {
        /// Module.
        module: String,
        /// Files.
        files: Vec<String>,
    },
    /// Applied migrations whose files are gone.
    Missing {
        /// Module.
        module: String,
        /// `NNNN_name` of each.
        migrations: Vec<String>,
    },
    /// A pending migration numbered below an applied one.
    OutOfOrder {
        /// Module.
        module: String,
        /// The pending file.
        file: String,
        /// The highest applied version.
        applied: u64,
    },
    /// The module's schema or history table does not exist.
    NotProvisioned {
        /// Module.
        module: String,
        /// Its schema.
        schema: String,
    },
    /// A module was not migrated because a module it depends on failed.
    Skipped {
        /// Module.
        module: String,
        /// The failed dependency.
        because: String,
    },
    /// Several modules failed.
    Several(Vec<MigrationError>),
}

impl fmt::Display for MigrationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MigrationError::BadFileName { file } => write!(
                f,
                "migration file `{file}` is not named `NNNN_description.sql`\n  help: rename it, such as `0001_create_patients.sql`"
            ),
            MigrationError::DuplicateVersion { version, first, second } => write!(
                f,
                "migrations `{first}` and `{second}` share the number {version}\n  help: renumber one of them (`moat new` picks the next number)"
            ),
            MigrationError::Failed { module, file, line, column, sqlstate, message, help } => {
                write!(f, "migration of module `{module}` failed: {file}")?;
                if let (Some(line), Some(column)) = (line, column) {
                    write!(f, ":{line}:{column}")?;
                }
                write!(f, ": {message}")?;
                if let Some(code) = sqlstate {
                    write!(f, " (SQLSTATE {code})")?;
                }
                if let Some(help) = help {
                    write!(f, "\n  help: {help}")?;
                }
                Ok(())
            }
            MigrationError::Modified { module, files } => write!(
                f,
                "module `{module}`: applied migration{} changed on disk: {}\n  help: an applied migration must not be edited; restore it (`git checkout -- <file>`) and put the change in a new migration (`moat new {module} <name>`)",
                if files.len() == 1 { "" } else { "s" },
                files.iter().map(|f| format!("`{f}`")).collect::<Vec<_>>().join(", ")
            ),
            MigrationError::Missing { module, migrations } => write!(
                f,
                "module `{module}`: applied migration{} no longer on disk: {}\n  help: restore the file{}; the database has already run {}",
                if migrations.len() == 1 { " is" } else { "s are" },
                migrations.iter().map(|m| format!("`{m}`")).collect::<Vec<_>>().join(", "),
                if migrations.len() == 1 { "" } else { "s" },
                if migrations.len() == 1 { "it" } else { "them" },
            ),
            MigrationError::OutOfOrder { module, file, applied } => write!(
                f,
                "module `{module}`: pending migration `{file}` is numbered below the applied version {applied}\n  help: renumber it after {applied}"
            ),
            MigrationError::NotProvisioned { module, schema } => write!(
                f,
                "module `{module}` is not provisioned: schema `{schema}` or its `{MIGRATIONS}` table does not exist\n  help: run `moat provision` (or `moat up`) first"
            ),
            MigrationError::Skipped { module, because } => {
                write!(f, "module `{module}` was not migrated because module `{because}`, which it depends on, failed")
            }
            MigrationError::Several(errors) => {
                for (i, e) in errors.iter().enumerate() {
                    if i > 0 {
                        writeln!(f)?;
                    }
                    write!(f, "{e}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for MigrationError {}

/// Reads the migration files of a module, sorted by number.
pub fn discover(manifest: &Manifest, module: &Module) -> Result<Vec<MigrationFile>, AdminError> {
    let dir = &module.migrations;
    let entries =
        std::fs::read_dir(dir).map_err(|source| AdminError::Io { action: "read", path: dir.clone(), source })?;
    let mut files: Vec<MigrationFile> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| AdminError::Io { action: "read", path: dir.clone(), source })?;
        let path = entry.path();
        let file_name = entry.file_name().to_string_lossy().into_owned();
        if !file_name.ends_with(".sql") || !path.is_file() {
            continue;
        }
        let relative = manifest.relative(&path);
        let Some((version, name)) = parse_file_name(&file_name) else {
            return Err(MigrationError::BadFileName { file: relative }.into());
        };
        let text = std::fs::read_to_string(&path).map_err(|source| AdminError::Io {
            action: "read",
            path: path.clone(),
            source,
        })?;
        let no_transaction = text.lines().next().is_some_and(|l| l.trim_end() == NO_TRANSACTION);
        files.push(MigrationFile {
            version,
            name,
            file: relative,
            checksum: moat_core::checksum(&text),
            text,
            path,
            no_transaction,
        });
    }
    files.sort_by(|a, b| (a.version, &a.file).cmp(&(b.version, &b.file)));
    for pair in files.windows(2) {
        if pair[0].version == pair[1].version {
            return Err(MigrationError::DuplicateVersion {
                version: pair[0].version,
                first: pair[0].file.clone(),
                second: pair[1].file.clone(),
            }
            .into());
        }
    }
    Ok(files)
}

/// `0001_create_patients.sql` → `(1, "create_patients")`.
pub fn parse_file_name(file_name: &str) -> Option<(u64, String)> {
    let stem = file_name.strip_suffix(".sql")?;
    let (number, name) = stem.split_once('_')?;
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) || name.is_empty() {
        return None;
    }
    Some((number.parse().ok()?, name.to_owned()))
}

/// Reads the histories of the given modules (those whose history table exists) in one query.
pub async fn read_histories(
    conn: &mut PgConnection,
    schemas: &[&str],
) -> Result<BTreeMap<String, Vec<AppliedMigration>>, AdminError> {
    let mut histories: BTreeMap<String, Vec<AppliedMigration>> =
        schemas.iter().map(|s| (s.to_string(), Vec::new())).collect();
    if schemas.is_empty() {
        return Ok(histories);
    }
    let sql = schemas
        .iter()
        .map(|schema| {
            format!(
                "SELECT {} AS schema, version, name, checksum, applied_at, duration_ms, success FROM {}",
                literal(schema),
                qualified(schema, MIGRATIONS)
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ")
        + " ORDER BY 1, 2";
    let rows =
        sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(&mut *conn).await.map_err(db("reading migration histories"))?;
    for row in rows {
        let schema: String = row.get("schema");
        let version: i64 = row.get("version");
        histories.entry(schema).or_default().push(AppliedMigration {
            version: version as u64,
            name: row.get("name"),
            checksum: row.get("checksum"),
            applied_at: row.get("applied_at"),
            duration_ms: row.get("duration_ms"),
            success: row.get("success"),
        });
    }
    Ok(histories)
}

/// Compares files with a history.
pub fn compare(files: &[MigrationFile], history: &[AppliedMigration]) -> Vec<StatusEntry> {
    let mut entries: BTreeMap<u64, StatusEntry> = BTreeMap::new();
    for file in files {
        entries.insert(
            file.version,
            StatusEntry {
                version: file.version,
                name: file.name.clone(),
                state: MigrationState::Pending,
                file: Some(file.file.clone()),
                applied_at: None,
            },
        );
    }
    for applied in history {
        let file = files.iter().find(|f| f.version == applied.version);
        let state = match (file, applied.success) {
            (None, _) => MigrationState::Missing,
            (Some(_), false) => MigrationState::Failed,
            (Some(f), true) if f.checksum != applied.checksum => MigrationState::Modified,
            (Some(_), true) => MigrationState::Applied,
        };
        entries.insert(
            applied.version,
            StatusEntry {
                version: applied.version,
                name: file.map_or_else(|| applied.name.clone(), |f| f.name.clone()),
                state,
                file: file.map(|f| f.file.clone()),
                applied_at: Some(applied.applied_at),
            },
        );
    }
    entries.into_values().collect()
}

/// Which schemas have a history table.
pub async fn provisioned_schemas(conn: &mut PgConnection, schemas: &[String]) -> Result<Vec<String>, AdminError> {
    sqlx::query_scalar(
        "SELECT n.nspname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relname = 'moat_migrations' AND n.nspname = ANY($1)",
    )
    .bind(schemas)
    .fetch_all(&mut *conn)
    .await
    .map_err(db("looking up migration history tables"))
}

/// `moat status`: every module's migrations.
pub async fn status(conn: &mut PgConnection, manifest: &Manifest) -> Result<Vec<ModuleStatus>, AdminError> {
    let schemas: Vec<String> = manifest.modules.iter().map(|m| m.schema.to_string()).collect();
    let provisioned = provisioned_schemas(conn, &schemas).await?;
    let refs: Vec<&str> = provisioned.iter().map(String::as_str).collect();
    let histories = read_histories(conn, &refs).await?;
    let mut statuses = Vec::new();
    for module in manifest.modules_in_dependency_order() {
        let files = discover(manifest, module)?;
        let history = histories.get(module.schema.as_str()).map(Vec::as_slice).unwrap_or(&[]);
        statuses.push(ModuleStatus {
            module: module.name.to_string(),
            schema: module.schema.to_string(),
            provisioned: provisioned.iter().any(|s| s == module.schema.as_str()),
            migrations: compare(&files, history),
        });
    }
    Ok(statuses)
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

/// Applies pending migrations of one module (`only`) or of all, in dependency order.
pub async fn migrate(
    admin: &mut PgConnection,
    url: &DatabaseUrl,
    manifest: &Manifest,
    only: Option<&str>,
    observe: &(dyn Fn(MigrateEvent<'_>) + Sync),
) -> Result<MigrateReport, AdminError> {
    let modules: Vec<&Module> = match only {
        Some(name) => vec![manifest.module(name).ok_or_else(|| AdminError::UnknownModule {
            name: name.to_owned(),
            known: manifest.modules.iter().map(|m| format!("`{}`", m.name)).collect::<Vec<_>>().join(", "),
        })?],
        None => manifest.modules_in_dependency_order(),
    };
    let schemas: Vec<String> = modules.iter().map(|m| m.schema.to_string()).collect();
    let provisioned = provisioned_schemas(admin, &schemas).await?;
    let refs: Vec<&str> = provisioned.iter().map(String::as_str).collect();
    let histories = read_histories(admin, &refs).await?;
    let mut report = MigrateReport { applied: Vec::new(), statements: 2 };

    let mut errors: Vec<MigrationError> = Vec::new();
    let mut failed: Vec<String> = Vec::new();
    for module in modules {
        if let Some(dep) = module.depends_on.iter().find(|d| failed.contains(&d.to_string())) {
            errors.push(MigrationError::Skipped { module: module.name.to_string(), because: dep.to_string() });
            failed.push(module.name.to_string());
            continue;
        }
        let result = async {
            if !provisioned.iter().any(|s| s == module.schema.as_str()) {
                return Err(AdminError::from(MigrationError::NotProvisioned {
                    module: module.name.to_string(),
                    schema: module.schema.to_string(),
                }));
            }
            let files = discover(manifest, module)?;
            let history = histories.get(module.schema.as_str()).map(Vec::as_slice).unwrap_or(&[]);
            let pending = pending(module, &files, history)?;
            if pending.is_empty() {
                return Ok(());
            }
            migrate_module(url, manifest, module, observe, &mut report).await
        }
        .await;
        match result {
            Ok(()) => {}
            Err(AdminError::Migration(e)) => {
                errors.push(*e);
                failed.push(module.name.to_string());
            }
            Err(other) => return Err(other),
        }
    }
    match errors.len() {
        0 => Ok(report),
        1 => Err(errors.remove(0).into()),
        _ => Err(MigrationError::Several(errors).into()),
    }
}

/// The files still to apply, after refusing modified, missing and out-of-order migrations.
fn pending<'f>(
    module: &Module,
    files: &'f [MigrationFile],
    history: &[AppliedMigration],
) -> Result<Vec<&'f MigrationFile>, AdminError> {
    let entries = compare(files, history);
    let modified: Vec<String> =
        entries.iter().filter(|e| e.state == MigrationState::Modified).filter_map(|e| e.file.clone()).collect();
    if !modified.is_empty() {
        return Err(MigrationError::Modified { module: module.name.to_string(), files: modified }.into());
    }
    let missing: Vec<String> = entries
        .iter()
        .filter(|e| e.state == MigrationState::Missing)
        .map(|e| format!("{:04}_{}", e.version, e.name))
        .collect();
    if !missing.is_empty() {
        return Err(MigrationError::Missing { module: module.name.to_string(), migrations: missing }.into());
    }
    let highest_applied = history.iter().filter(|h| h.success).map(|h| h.version).max();
    let pending: Vec<&MigrationFile> = files
        .iter()
        .filter(|f| {
            entries
                .iter()
                .any(|e| e.version == f.version && matches!(e.state, MigrationState::Pending | MigrationState::Failed))
        })
        .collect();
    if let (Some(applied), Some(first)) = (highest_applied, pending.first())
        && first.version < applied
    {
        return Err(
            MigrationError::OutOfOrder { module: module.name.to_string(), file: first.file.clone(), applied }.into()
        );
    }
    Ok(pending)
}

/// Migrates one module on its own connection, under its advisory lock.
async fn migrate_module(
    url: &DatabaseUrl,
    manifest: &Manifest,
    module: &Module,
    observe: &(dyn Fn(MigrateEvent<'_>) + Sync),
    report: &mut MigrateReport,
) -> Result<(), AdminError> {
    let mut conn = crate::connect(url).await?;
    let key = format!("moat:migrate:{}:{}", manifest.project, module.name);
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
        .bind(&key)
        .fetch_one(&mut conn)
        .await
        .map_err(db("taking the migration lock"))?;
    report.statements += 1;
    if !locked {
        observe(MigrateEvent::Waiting { module: module.name.as_str() });
        sqlx::query("SELECT pg_advisory_lock(hashtextextended($1, 0))")
            .bind(&key)
            .execute(&mut conn)
            .await
            .map_err(db("waiting for the migration lock"))?;
        report.statements += 1;
    }
    let result = apply_pending(&mut conn, manifest, module, observe, report).await;
    // Closing the connection releases the session lock even if the unlock fails.
    let _ = sqlx::query("SELECT pg_advisory_unlock(hashtextextended($1, 0))").bind(&key).execute(&mut conn).await;
    let _ = conn.close().await;
    result
}

async fn apply_pending(
    conn: &mut PgConnection,
    manifest: &Manifest,
    module: &Module,
    observe: &(dyn Fn(MigrateEvent<'_>) + Sync),
    report: &mut MigrateReport,
) -> Result<(), AdminError> {
    // Re-read under the lock: another process may have applied some meanwhile.
    let histories = read_histories(conn, &[module.schema.as_str()]).await?;
    report.statements += 1;
    let files = discover(manifest, module)?;
    let history = histories.get(module.schema.as_str()).map(Vec::as_slice).unwrap_or(&[]);
    let owner = manifest.roles().module_owner(&module.name);
    for file in pending(module, &files, history)? {
        observe(MigrateEvent::Applying { module: module.name.as_str(), file: &file.file });
        let started = Instant::now();
        let retry = history.iter().any(|h| h.version == file.version && !h.success);
        if file.no_transaction {
            apply_without_transaction(conn, module, &owner, file, retry, report).await?;
        } else {
            apply_in_transaction(conn, module, &owner, file, started, report).await?;
        }
        let duration_ms = started.elapsed().as_millis() as i64;
        report.applied.push((module.name.to_string(), file.file.clone()));
        observe(MigrateEvent::Applied { module: module.name.as_str(), file: &file.file, duration_ms });
    }
    Ok(())
}

async fn apply_in_transaction(
    conn: &mut PgConnection,
    module: &Module,
    owner: &str,
    file: &MigrationFile,
    started: Instant,
    report: &mut MigrateReport,
) -> Result<(), AdminError> {
    let schema = module.schema.as_str();
    let begin = format!(
        "BEGIN; SET LOCAL ROLE {}; SET LOCAL search_path = {}; SET LOCAL moat.migration = 'running'",
        ident(owner),
        ident(schema)
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(begin))
        .execute(&mut *conn)
        .await
        .map_err(db(format!("starting migration `{}`", file.file)))?;
    report.statements += 4;
    // Statement by statement, so that an error without a position still names its statement.
    for span in moat_core::sqltext::split_statements(&file.text) {
        let statement = &file.text[span.start..span.end];
        report.statements += 1;
        if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(statement.to_owned())).execute(&mut *conn).await {
            let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
            return Err(failure(module, file, statement, span.start, &e).into());
        }
    }
    // A migration must end as it started: in its transaction, as the owner role.
    let (user, marker): (String, Option<String>) =
        sqlx::query_as("SELECT current_user::text, current_setting('moat.migration', true)")
            .fetch_one(&mut *conn)
            .await
            .map_err(db("checking the migration's session"))?;
    if marker.as_deref() != Some("running") || user != owner {
        let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
        let message = if marker.as_deref() != Some("running") {
            "the migration ended its transaction (COMMIT or ROLLBACK inside a migration)".to_owned()
        } else {
            format!("the migration changed its role from `{owner}` to `{user}`")
        };
        return Err(MigrationError::Failed {
            module: module.name.to_string(),
            file: file.file.clone(),
            line: None,
            column: None,
            sqlstate: None,
            message,
            help: Some(format!(
                "migrations run in one transaction as `{owner}`; remove transaction control and SET ROLE, or start the file with `{NO_TRANSACTION}`"
            )),
        }
        .into());
    }
    let record = format!(
        "INSERT INTO {} (version, name, checksum, duration_ms, success) VALUES ($1, $2, $3, $4, true)",
        qualified(schema, MIGRATIONS)
    );
    let recorded = sqlx::query(sqlx::AssertSqlSafe(record))
        .bind(file.version as i64)
        .bind(&file.name)
        .bind(&file.checksum)
        .bind(started.elapsed().as_millis() as i64)
        .execute(&mut *conn)
        .await;
    if let Err(e) = recorded {
        let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
        return Err(db(format!("recording migration `{}`", file.file))(e));
    }
    sqlx::raw_sql("COMMIT")
        .execute(&mut *conn)
        .await
        .map_err(|e| AdminError::from(failure(module, file, "", 0, &e)))?;
    report.statements += 3;
    Ok(())
}

async fn apply_without_transaction(
    conn: &mut PgConnection,
    module: &Module,
    owner: &str,
    file: &MigrationFile,
    retry: bool,
    report: &mut MigrateReport,
) -> Result<(), AdminError> {
    let schema = module.schema.as_str();
    let enter = format!("SET ROLE {}; SET search_path = {}", ident(owner), ident(schema));
    sqlx::raw_sql(sqlx::AssertSqlSafe(enter))
        .execute(&mut *conn)
        .await
        .map_err(db(format!("starting migration `{}`", file.file)))?;
    let started = Instant::now();
    let mut outcome = Ok(());
    for span in moat_core::sqltext::split_statements(&file.text) {
        let statement = file.text[span.start..span.end].to_owned();
        report.statements += 1;
        if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(statement.clone())).execute(&mut *conn).await {
            outcome = Err(failure(module, file, &statement, span.start, &e));
            break;
        }
    }
    let _ = sqlx::raw_sql("RESET ROLE; RESET search_path").execute(&mut *conn).await;
    let success = outcome.is_ok();
    let record = format!(
        "INSERT INTO {} (version, name, checksum, duration_ms, success) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (version) DO UPDATE SET name = excluded.name, checksum = excluded.checksum, \
         applied_at = now(), duration_ms = excluded.duration_ms, success = excluded.success",
        qualified(schema, MIGRATIONS)
    );
    sqlx::query(sqlx::AssertSqlSafe(record))
        .bind(file.version as i64)
        .bind(&file.name)
        .bind(&file.checksum)
        .bind(started.elapsed().as_millis() as i64)
        .bind(success)
        .execute(&mut *conn)
        .await
        .map_err(db(format!("recording migration `{}`", file.file)))?;
    report.statements += 2;
    let _ = retry;
    outcome.map_err(|mut e| {
        if let MigrationError::Failed { help, .. } = &mut e {
            let note = "it ran without a transaction, so statements before the failing one stayed applied; it is retried by the next run, so write it to be re-runnable (IF NOT EXISTS)";
            *help = Some(match help.take() {
                Some(h) => format!("{h}\n  note: {note}"),
                None => note.to_owned(),
            });
        }
        e.into()
    })
}

/// Turns a server error into a located migration failure. `statement` is the text that was sent
/// and `offset` its byte offset in the file.
fn failure(
    module: &Module,
    file: &MigrationFile,
    statement: &str,
    offset: usize,
    error: &sqlx::Error,
) -> MigrationError {
    let (mut line, mut column, mut sqlstate, mut message, mut help_parts) =
        (None, None, None, error.to_string(), Vec::new());
    if let sqlx::Error::Database(db_error) = error {
        message = db_error.message().to_owned();
        sqlstate = db_error.code().map(|c| c.into_owned());
        if let Some(pg) = db_error.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
            if let Some(sqlx::postgres::PgErrorPosition::Original(position)) = pg.position() {
                let byte = offset + char_position_to_byte(statement, position);
                let at = LineIndex::new(&file.text).line_col(byte);
                line = Some(at.line);
                column = Some(at.column);
            }
            if let Some(detail) = pg.detail() {
                help_parts.push(format!("detail: {detail}"));
            }
            if let Some(hint) = pg.hint() {
                help_parts.push(format!("hint: {hint}"));
            }
            if let Some(context) = pg.r#where() {
                help_parts.push(format!("context: {}", context.replace('\n', "; ")));
            }
        }
    }
    if sqlstate.as_deref() == Some("42501") {
        help_parts.push(format!(
            "migrations of `{}` run as its owner role, which may only touch schema `{}`; another module's tables are out of reach: \
             store its ids as plain values (no foreign key) and validate them through that module's API",
            module.name, module.schema
        ));
    }
    if line.is_none() && !statement.is_empty() {
        // PostgreSQL gives no position for some errors (privileges, run-time errors): point at the
        // object the message names when the statement mentions it, else at the statement.
        let within = named_object(&message).and_then(|name| find_word(statement, &name)).unwrap_or(0);
        let at = LineIndex::new(&file.text).line_col(offset + within);
        line = Some(at.line);
        column = Some(at.column);
    }
    MigrationError::Failed {
        module: module.name.to_string(),
        file: file.file.clone(),
        line,
        column,
        sqlstate,
        message,
        help: (!help_parts.is_empty()).then(|| help_parts.join("\n  ")),
    }
}

/// The object a position-less error message names: `permission denied for schema patients`,
/// `relation "x" does not exist`.
fn named_object(message: &str) -> Option<String> {
    for marker in ["for schema ", "for table ", "for sequence ", "for view ", "for function "] {
        if let Some(rest) = message.split(marker).nth(1) {
            return rest.split_whitespace().next().map(|w| w.trim_matches('"').to_owned());
        }
    }
    let quoted = message.split('"').nth(1)?;
    Some(quoted.to_owned())
}

/// The byte offset of the first whole-word, case-insensitive occurrence of `word` in `text`.
fn find_word(text: &str, word: &str) -> Option<usize> {
    if word.is_empty() {
        return None;
    }
    let lower = text.to_ascii_lowercase();
    let word = word.to_ascii_lowercase();
    let is_word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut from = 0;
    while let Some(found) = lower[from..].find(&word) {
        let start = from + found;
        let end = start + word.len();
        let before_ok = start == 0 || !is_word(lower.as_bytes()[start - 1]);
        let after_ok = end == lower.len() || !is_word(lower.as_bytes()[end]);
        if before_ok && after_ok {
            return Some(start);
        }
        from = start + 1;
    }
    None
}

/// `moat new MODULE NAME`: creates the next migration file of a module and returns its path.
pub fn new_migration(manifest: &Manifest, module: &str, name: &str) -> Result<PathBuf, AdminError> {
    let module = manifest.module(module).ok_or_else(|| AdminError::UnknownModule {
        name: module.to_owned(),
        known: manifest.modules.iter().map(|m| format!("`{}`", m.name)).collect::<Vec<_>>().join(", "),
    })?;
    let files = discover(manifest, module)?;
    let next = files.last().map_or(1, |f| f.version + 1);
    let slug: String = name
        .trim()
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect::<String>()
        .split('_')
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("_");
    if slug.is_empty() {
        return Err(AdminError::Refused {
            message: format!("`{name}` does not make a migration name"),
            help: "use letters and digits, such as `add_ward_to_patients`".into(),
        });
    }
    let path = module.migrations.join(format!("{next:04}_{slug}.sql"));
    let header = format!(
        "-- {slug}: a migration of module `{}` (runs as `{}` in schema `{}`)\n\n",
        module.name,
        manifest.roles().module_owner(&module.name),
        module.schema
    );
    write_new(&path, &header)?;
    Ok(path)
}

fn write_new(path: &Path, text: &str) -> Result<(), AdminError> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|source| AdminError::Io { action: "create", path: path.to_owned(), source })?;
    file.write_all(text.as_bytes()).map_err(|source| AdminError::Io { action: "write", path: path.to_owned(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names() {
        assert_eq!(parse_file_name("0001_create_patients.sql"), Some((1, "create_patients".into())));
        assert_eq!(parse_file_name("12_x.sql"), Some((12, "x".into())));
        assert_eq!(parse_file_name("create.sql"), None);
        assert_eq!(parse_file_name("0001.sql"), None);
        assert_eq!(parse_file_name("0001_.sql"), None);
        assert_eq!(parse_file_name("v1_x.sql"), None);
    }
}

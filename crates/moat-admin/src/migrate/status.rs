//! Reading histories (`moat status`, and the runner before it runs anything).
//!
//! A history table sits in a module's schema, where the module's owner can reach it (today it
//! owns it); the admin's superuser session never reads it. Each module's history is read in a
//! session logged in as that module's migrator, so whatever the owner made of the table (a view
//! calling its own function, a rule) runs with the migrator's rights at most.

use std::collections::BTreeSet;

use moat_core::manifest::{Manifest, Module};
use moat_core::quote::qualified;
use sqlx::{Connection, PgConnection, Row};

use super::session::MigratorRoles;
use super::{AppliedMigration, ModuleStatus, compare, discover};
use crate::error::{AdminError, db};
use crate::internal::MIGRATIONS;
use crate::target::DatabaseUrl;

/// The schemas of `modules` whose history table and migrator role exist (a catalog query on the
/// admin's connection: nothing in a module schema is read).
pub async fn ready_modules(
    admin: &mut PgConnection,
    manifest: &Manifest,
    modules: &[&Module],
) -> Result<BTreeSet<String>, AdminError> {
    let schemas: Vec<String> = modules.iter().map(|m| m.schema.to_string()).collect();
    let migrators: Vec<String> = modules.iter().map(|m| manifest.roles().module_migrator(&m.name)).collect();
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT s.schema FROM ROWS FROM (pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::text[])) AS s(schema, migrator) \
         WHERE EXISTS (SELECT FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                       WHERE c.relname = 'moat_migrations' AND n.nspname::text = s.schema) \
         AND EXISTS (SELECT FROM pg_catalog.pg_roles r WHERE r.rolname::text = s.migrator AND r.rolcanlogin)",
    )
    .bind(&schemas)
    .bind(&migrators)
    .fetch_all(&mut *admin)
    .await
    .map_err(db("looking up migration history tables"))?;
    Ok(rows.into_iter().collect())
}

/// Reads a module's history in `session` (logged in as its migrator).
pub async fn read_history(session: &mut PgConnection, schema: &str) -> Result<Vec<AppliedMigration>, AdminError> {
    let sql = format!(
        "SELECT version, name, checksum, applied_at, duration_ms, success FROM {} ORDER BY version",
        qualified(schema, MIGRATIONS)
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .fetch_all(&mut *session)
        .await
        .map_err(db(format!("reading the migration history of schema `{schema}`")))?;
    let mut history = Vec::with_capacity(rows.len());
    for row in rows {
        let version: i64 = row.try_get("version").map_err(db("reading the migration history"))?;
        history.push(AppliedMigration {
            version: version as u64,
            name: row.try_get("name").map_err(db("reading the migration history"))?,
            checksum: row.try_get("checksum").map_err(db("reading the migration history"))?,
            applied_at: row.try_get("applied_at").map_err(db("reading the migration history"))?,
            duration_ms: row.try_get("duration_ms").map_err(db("reading the migration history"))?,
            success: row.try_get("success").map_err(db("reading the migration history"))?,
        });
    }
    Ok(history)
}

/// Logs in as the module's migrator and reads its history; the session is closed afterwards.
pub(crate) async fn history_of(
    admin: &mut PgConnection,
    url: &DatabaseUrl,
    roles: &MigratorRoles,
    schema: &str,
) -> Result<Vec<AppliedMigration>, AdminError> {
    let mut session = crate::login::login_as(admin, url, &roles.migrator).await?;
    let history = read_history(&mut session, schema).await;
    let _ = session.close().await;
    history
}

/// `moat status`: every module's migrations. `admin` runs catalog queries and the logins;
/// histories are read by each module's migrator.
pub async fn status(
    admin: &mut PgConnection,
    url: &DatabaseUrl,
    manifest: &Manifest,
) -> Result<Vec<ModuleStatus>, AdminError> {
    let modules = manifest.modules_in_dependency_order();
    let ready = ready_modules(admin, manifest, &modules).await?;
    let mut statuses = Vec::new();
    for module in modules {
        let files = discover(manifest, module)?;
        let provisioned = ready.contains(module.schema.as_str());
        let history = if provisioned {
            history_of(admin, url, &MigratorRoles::of(manifest, module), module.schema.as_str()).await?
        } else {
            Vec::new()
        };
        statuses.push(ModuleStatus {
            module: module.name.to_string(),
            schema: module.schema.to_string(),
            provisioned,
            migrations: compare(&files, &history),
        });
    }
    Ok(statuses)
}

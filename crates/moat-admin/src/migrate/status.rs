//! Reading histories (`moat status`, and the runner before it runs anything).
//!
//! A history table sits in a module's schema and belongs to `<project>_moat`, as does the
//! schema, so no module role can drop it, replace it with a view or hang a trigger, rule or
//! policy on it. The admin reads a history itself only after the catalog shows exactly that (a
//! plain table, owned by moat's role in a schema moat's role owns, with no trigger, rule, row
//! security or policy): such a read runs no code of anybody's. Any other history (a database not
//! converted yet, or one a superuser changed by hand) is read in a session logged in as the
//! module's migrator, so whatever was made of it runs with the migrator's rights at most.

use std::collections::{BTreeMap, BTreeSet};

use moat_core::manifest::{Manifest, Module};
use moat_core::quote::{literal, qualified};
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

/// The histories of `schemas` that the admin may read itself (see the module docs), read in one
/// query on the admin's connection; schemas missing from the result must be read by their
/// migrator.
pub async fn moat_owned_histories(
    admin: &mut PgConnection,
    manifest: &Manifest,
    schemas: &[&str],
) -> Result<BTreeMap<String, Vec<AppliedMigration>>, AdminError> {
    let plain: Vec<String> = sqlx::query_scalar(
        "SELECT n.nspname::text FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         JOIN pg_catalog.pg_roles r ON r.oid = c.relowner \
         WHERE c.relname = 'moat_migrations' AND n.nspname::text OPERATOR(pg_catalog.=) ANY($1) AND r.rolname::text OPERATOR(pg_catalog.=) $2 \
         AND c.relkind = 'r' AND n.nspowner = c.relowner AND NOT c.relhastriggers AND NOT c.relhasrules \
         AND NOT c.relrowsecurity AND NOT EXISTS (SELECT FROM pg_catalog.pg_policy p WHERE p.polrelid = c.oid)",
    )
    .bind(schemas)
    .bind(manifest.roles().moat_owner())
    .fetch_all(&mut *admin)
    .await
    .map_err(db("checking the migration history tables"))?;
    let mut histories: BTreeMap<String, Vec<AppliedMigration>> =
        plain.iter().map(|s| (s.clone(), Vec::new())).collect();
    if plain.is_empty() {
        return Ok(histories);
    }
    let sql = plain
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
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .fetch_all(&mut *admin)
        .await
        .map_err(db("reading migration histories"))?;
    for row in rows {
        let schema: String = row.try_get("schema").map_err(db("reading migration histories"))?;
        histories.entry(schema).or_default().push(history_row(&row)?);
    }
    Ok(histories)
}

fn history_row(row: &sqlx::postgres::PgRow) -> Result<AppliedMigration, AdminError> {
    let version: i64 = row.try_get("version").map_err(db("reading the migration history"))?;
    Ok(AppliedMigration {
        version: version as u64,
        name: row.try_get("name").map_err(db("reading the migration history"))?,
        checksum: row.try_get("checksum").map_err(db("reading the migration history"))?,
        applied_at: row.try_get("applied_at").map_err(db("reading the migration history"))?,
        duration_ms: row.try_get("duration_ms").map_err(db("reading the migration history"))?,
        success: row.try_get("success").map_err(db("reading the migration history"))?,
    })
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
    rows.iter().map(history_row).collect()
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

/// `moat status`: every module's migrations. `admin` runs catalog queries, reads the histories
/// that are moat's plain tables, and logs in as the migrators of the others.
pub async fn status(
    admin: &mut PgConnection,
    url: &DatabaseUrl,
    manifest: &Manifest,
) -> Result<Vec<ModuleStatus>, AdminError> {
    let modules = manifest.modules_in_dependency_order();
    let ready = ready_modules(admin, manifest, &modules).await?;
    let ready_schemas: Vec<&str> = ready.iter().map(String::as_str).collect();
    let mut owned = moat_owned_histories(admin, manifest, &ready_schemas).await?;
    let mut statuses = Vec::new();
    for module in modules {
        let files = discover(manifest, module)?;
        let provisioned = ready.contains(module.schema.as_str());
        let history = if let Some(history) = owned.remove(module.schema.as_str()) {
            history
        } else if provisioned {
            history_of(admin, url, &MigratorRoles::of(manifest, module), module.schema.as_str()).await?
        } else {
            Vec::new()
        };
        statuses.push(ModuleStatus {
            module: module.name.to_string(),
            schema: module.schema.to_string(),
            database: None,
            manifest_database: module.database.as_ref().map(ToString::to_string),
            provisioned,
            migrations: compare(&files, &history),
        });
    }
    Ok(statuses)
}

//! Applying migrations in the migrator's session.
//!
//! Per module: the admin's connection (search_path pinned to `pg_catalog`) looks the module up in
//! the catalog and logs in as its migrator; everything else happens in that migrator session:
//! reading the history, running each pending migration as the owner, writing the history. The
//! admin's connection only takes the module's advisory lock (bounded, see [`crate::locks`]) and,
//! after a no-transaction migration changed a membership or role setting, undoes it.
//!
//! What the database guarantees either way: the session user is the migrator, which is not a
//! superuser, holds no attribute, is a member of the owner role only, and has no privilege of
//! its own beyond USAGE on the module's schema and reading and writing the history table. So a
//! migration never has more rights than the owner, whatever it does to its role. What moat's
//! checks add: a transactional migration that leaves its transaction or its role, or changes a
//! membership, setting or attribute of the project's roles, is rolled back and refused. A
//! no-transaction migration is checked after each statement: it stops at the first statement
//! after which its role, a membership or a setting changed, and moat revokes the memberships
//! and resets the settings it made. What the checks cannot see there is a statement that changes
//! a membership and changes it back before it ends (a `DO` block or procedure that commits
//! inside, which only works outside a transaction): for that statement's duration another role
//! could act as the migrator, that is, with the owner's rights. PostgreSQL 16 no longer lets a
//! session user grant membership in itself.

use std::time::Instant;

use moat_core::manifest::{Manifest, Module};
use moat_core::quote::{ident, literal, qualified};
use sqlx::{Connection, PgConnection};

use super::errors::failure;
use super::session::{self, MigratorRoles, SessionState};
use super::status::{moat_owned_histories, read_history, ready_modules};
use super::{MigrateEvent, MigrateReport, MigrationError, MigrationFile, NO_TRANSACTION, discover};
use crate::error::{AdminError, db};
use crate::internal::MIGRATIONS;
use crate::target::DatabaseUrl;

/// Applies pending migrations of one module (`only`) or of all, in dependency order. `admin` is
/// the admin's connection: it runs catalog queries, logins and locks, never module SQL.
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
    let ready = ready_modules(admin, manifest, &modules).await?;
    let ready_schemas: Vec<&str> = ready.iter().map(String::as_str).collect();
    // Histories the admin may read itself show which modules have nothing pending: those need no
    // migrator session at all. The others are re-read by their migrator under the module's lock.
    let owned = moat_owned_histories(admin, manifest, &ready_schemas).await?;
    let mut report = MigrateReport { applied: Vec::new(), statements: 3 };

    let mut errors: Vec<MigrationError> = Vec::new();
    let mut failed: Vec<String> = Vec::new();
    for module in modules {
        if let Some(dep) = module.depends_on.iter().find(|d| failed.contains(&d.to_string())) {
            errors.push(MigrationError::Skipped { module: module.name.to_string(), because: dep.to_string() });
            failed.push(module.name.to_string());
            continue;
        }
        let result = async {
            if !ready.contains(module.schema.as_str()) {
                return Err(AdminError::from(MigrationError::NotProvisioned {
                    module: module.name.to_string(),
                    schema: module.schema.to_string(),
                }));
            }
            // Bad file names and duplicate numbers are refused before logging in.
            let files = discover(manifest, module)?;
            if let Some(history) = owned.get(module.schema.as_str())
                && super::discover::pending(module, &files, history)?.is_empty()
            {
                return Ok(());
            }
            refuse_during_a_move(admin, manifest, module).await?;
            migrate_module(admin, url, manifest, module, &files, observe, &mut report).await
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

/// A module whose move to another database (`moat extract`) is unfinished takes no migration:
/// the move copied its schema as it was, and its checks (what replication may apply) hold for
/// that schema only. The journal is read only when it is moat's plain table.
async fn refuse_during_a_move(
    admin: &mut PgConnection,
    manifest: &Manifest,
    module: &Module,
) -> Result<(), AdminError> {
    let schema = module.schema.as_str();
    let journal: bool = sqlx::query_scalar(
        "SELECT count(*) > 0 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
         JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) c.relowner \
         WHERE n.nspname OPERATOR(pg_catalog.=) $1 AND c.relname OPERATOR(pg_catalog.=) $2 \
           AND c.relkind OPERATOR(pg_catalog.=) 'r' AND r.rolname OPERATOR(pg_catalog.=) $3",
    )
    .bind(schema)
    .bind(crate::internal::MOVE)
    .bind(manifest.roles().moat_owner())
    .fetch_one(&mut *admin)
    .await
    .map_err(crate::error::db("looking for a move journal"))?;
    if !journal {
        return Ok(());
    }
    let step = crate::placement::read_journal(admin, schema).await?.map(|j| j.step);
    match step {
        Some(step) if step != crate::internal::MOVE_SWITCHED => Err(AdminError::Refused {
            message: format!(
                "module `{}` is being moved to another database (step `{step}`): its migrations wait until the move ends",
                module.name
            ),
            help: format!(
                "finish the move with `moat extract {0}`, or roll it back with `moat extract {0} --abort`, then migrate",
                module.name
            ),
        }),
        _ => Ok(()),
    }
}

/// Migrates one module in its migrator's session; the session is closed afterwards (it ran
/// module SQL and is never reused).
async fn migrate_module(
    admin: &mut PgConnection,
    url: &DatabaseUrl,
    manifest: &Manifest,
    module: &Module,
    files: &[MigrationFile],
    observe: &(dyn Fn(MigrateEvent<'_>) + Sync),
    report: &mut MigrateReport,
) -> Result<(), AdminError> {
    let roles = MigratorRoles::of(manifest, module);
    let mut session = crate::login::login_as(admin, url, &roles.migrator).await?;
    report.statements += 4;
    let result = async {
        let history = read_history(&mut session, module.schema.as_str()).await?;
        report.statements += 1;
        if super::discover::pending(module, files, &history)?.is_empty() {
            return Ok(false);
        }
        let key = format!("moat:migrate:{}:{}", manifest.project, module.name);
        let doing = format!("migrating module `{}`", module.name);
        let got: bool =
            sqlx::query_scalar("SELECT pg_catalog.pg_try_advisory_lock(pg_catalog.hashtextextended($1, 0))")
                .bind(&key)
                .fetch_one(&mut *admin)
                .await
                .map_err(db(format!("taking the lock for {doing}")))?;
        report.statements += 1;
        if !got {
            observe(MigrateEvent::Waiting { module: module.name.as_str() });
            crate::locks::wait_for_advisory_lock(admin, &key, &doing).await?;
            report.statements += 2;
        }
        let applied = apply_pending(admin, &mut session, module, &roles, files, observe, report).await;
        crate::locks::advisory_unlock(admin, &key).await;
        report.statements += 1;
        applied.map(|()| true)
    }
    .await;
    let _ = session.close().await;
    // Only a session that ran module SQL can have given the migrator a password.
    if matches!(result, Ok(true) | Err(AdminError::Migration(_)))
        && session::clear_migrator_password(admin, &roles).await?
    {
        return Err(MigrationError::Failed {
            module: module.name.to_string(),
            file: report.applied.iter().rev().find(|(m, _)| m == module.name.as_str()).map_or_else(String::new, |(_, f)| f.clone()),
            line: None,
            column: None,
            sqlstate: None,
            message: format!("a migration gave role `{}` a password; moat removed it", roles.migrator),
            help: Some(
                "the migrator logs in with one-time passwords only; remove the `ALTER ROLE ... PASSWORD` from the migration \
                 (it stays recorded as applied: check what else it did with `moat audit`)"
                    .to_owned(),
            ),
        }
        .into());
    }
    result.map(|_| ())
}

async fn apply_pending(
    admin: &mut PgConnection,
    session: &mut PgConnection,
    module: &Module,
    roles: &MigratorRoles,
    files: &[MigrationFile],
    observe: &(dyn Fn(MigrateEvent<'_>) + Sync),
    report: &mut MigrateReport,
) -> Result<(), AdminError> {
    // Re-read under the lock: another process may have applied some meanwhile.
    let history = read_history(session, module.schema.as_str()).await?;
    report.statements += 1;
    let pending = super::discover::pending(module, files, &history)?;
    // Every pending file is screened before the first one runs.
    for file in &pending {
        super::screen::screen(module, &roles.owner, file)?;
    }
    for file in pending {
        observe(MigrateEvent::Applying { module: module.name.as_str(), file: &file.file });
        let started = Instant::now();
        if file.no_transaction {
            apply_without_transaction(admin, session, module, roles, file, report).await?;
        } else {
            apply_in_transaction(session, module, roles, file, started, report).await?;
        }
        let duration_ms = started.elapsed().as_millis() as i64;
        report.applied.push((module.name.to_string(), file.file.clone()));
        observe(MigrateEvent::Applied { module: module.name.as_str(), file: &file.file, duration_ms });
    }
    Ok(())
}

/// A refusal of a migration that moat noticed itself (no server error to locate).
fn refusal(module: &Module, file: &MigrationFile, message: String, help: String) -> MigrationError {
    MigrationError::Failed {
        module: module.name.to_string(),
        file: file.file.clone(),
        line: None,
        column: None,
        sqlstate: None,
        message,
        help: Some(help),
    }
}

async fn rollback(session: &mut PgConnection) {
    let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *session).await;
}

fn record_sql(schema: &str, file: &MigrationFile, duration_ms: i64, success: bool, upsert: bool) -> String {
    let mut sql = format!(
        "INSERT INTO {} (version, name, checksum, applied_at, duration_ms, success) \
         VALUES ({}, {}, {}, pg_catalog.now(), {duration_ms}, {success})",
        qualified(schema, MIGRATIONS),
        file.version,
        literal(&file.name),
        literal(&file.checksum),
    );
    if upsert {
        sql.push_str(
            " ON CONFLICT (version) DO UPDATE SET name = excluded.name, checksum = excluded.checksum, \
             applied_at = excluded.applied_at, duration_ms = excluded.duration_ms, success = excluded.success",
        );
    }
    sql
}

async fn apply_in_transaction(
    session: &mut PgConnection,
    module: &Module,
    roles: &MigratorRoles,
    file: &MigrationFile,
    started: Instant,
    report: &mut MigrateReport,
) -> Result<(), AdminError> {
    let schema = module.schema.as_str();
    let before = session::begin(session, roles, schema).await.map_err(|e| {
        refusal(module, file, format!("could not start the migration: {e}"), "check the database".into())
    })?;
    report.statements += 4;
    let help = || {
        format!(
            "migrations run in one transaction as `{}`; remove transaction control, role changes and role grants, \
             or start the file with `{NO_TRANSACTION}` for statements that cannot run in a transaction",
            roles.owner
        )
    };
    // Statement by statement, so that an error without a position still names its statement.
    for span in moat_core::sqltext::split_statements(&file.text) {
        let statement = &file.text[span.start..span.end];
        report.statements += 1;
        if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(statement.to_owned())).execute(&mut *session).await {
            rollback(session).await;
            return Err(failure(module, file, statement, span.start, &e).into());
        }
    }
    // The migration must end as it started: in its transaction, as the owner, with the
    // project's roles as they were.
    match session::state(session, roles).await {
        Ok(after) => {
            if let Some(what) = session::difference(&before, &after, &roles.owner, true) {
                rollback(session).await;
                return Err(refusal(module, file, what, help()).into());
            }
        }
        Err(e) => {
            rollback(session).await;
            return Err(
                refusal(module, file, format!("the migration's session could not be checked: {e}"), help()).into()
            );
        }
    }
    // The history is written by the migrator (the session user), in the migration's transaction;
    // a trigger the owner put on the table runs with the migrator's rights and is checked below.
    let record = format!(
        "RESET ROLE; SET LOCAL search_path = pg_catalog, pg_temp; {}",
        record_sql(schema, file, started.elapsed().as_millis() as i64, true, false)
    );
    if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(record)).execute(&mut *session).await {
        rollback(session).await;
        return Err(refusal(
            module,
            file,
            format!("recording the migration failed: {}", crate::error::describe_sqlx(&e)),
            format!(
                "the history table `{}` must stay moat's: a plain table without triggers or rules",
                qualified(schema, MIGRATIONS)
            ),
        )
        .into());
    }
    match session::state(session, roles).await {
        Ok(after) => {
            if let Some(what) = session::difference(&before, &after, &roles.migrator, true) {
                rollback(session).await;
                return Err(refusal(module, file, format!("while recording the migration, {what}"), help()).into());
            }
        }
        Err(e) => {
            rollback(session).await;
            return Err(
                refusal(module, file, format!("the migration's session could not be checked: {e}"), help()).into()
            );
        }
    }
    sqlx::raw_sql("COMMIT")
        .execute(&mut *session)
        .await
        .map_err(|e| AdminError::from(failure(module, file, "", 0, &e)))?;
    report.statements += 5;
    Ok(())
}

async fn apply_without_transaction(
    admin: &mut PgConnection,
    session: &mut PgConnection,
    module: &Module,
    roles: &MigratorRoles,
    file: &MigrationFile,
    report: &mut MigrateReport,
) -> Result<(), AdminError> {
    let schema = module.schema.as_str();
    let facts = session::role_facts(admin, roles).await?;
    let enter = format!("SET ROLE {}; SET search_path = {}", ident(&roles.owner), ident(schema));
    sqlx::raw_sql(sqlx::AssertSqlSafe(enter))
        .execute(&mut *session)
        .await
        .map_err(db(format!("starting migration `{}`", file.file)))?;
    let before: SessionState = session::state(session, roles).await?;
    report.statements += 4;
    let started = Instant::now();
    let mut outcome: Result<(), MigrationError> = Ok(());
    for span in moat_core::sqltext::split_statements(&file.text) {
        let statement = file.text[span.start..span.end].to_owned();
        report.statements += 2;
        if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(statement.clone())).execute(&mut *session).await {
            outcome = Err(failure(module, file, &statement, span.start, &e));
            break;
        }
        let changed = match session::state(session, roles).await {
            Ok(after) => session::difference(&before, &after, &roles.owner, false),
            Err(e) => Some(format!("the migration's session could not be checked: {e}")),
        };
        if let Some(what) = changed {
            let at = moat_core::text::LineIndex::new(&file.text).line_col(span.start);
            let undone = session::undo_role_changes(admin, roles, &facts).await?;
            let mut help = format!(
                "a migration runs as `{}` and leaves the project's roles alone; remove the statement",
                roles.owner
            );
            if !undone.is_empty() {
                help.push_str(&format!("\n  note: moat undid it: {}", undone.join("; ")));
            }
            outcome = Err(MigrationError::Failed {
                module: module.name.to_string(),
                file: file.file.clone(),
                line: Some(at.line),
                column: Some(at.column),
                sqlstate: None,
                message: what,
                help: Some(help),
            });
            break;
        }
    }
    let success = outcome.is_ok();
    let record = format!(
        "RESET ROLE; SET search_path = pg_catalog, pg_temp; {}",
        record_sql(schema, file, started.elapsed().as_millis() as i64, success, true)
    );
    let recorded = sqlx::raw_sql(sqlx::AssertSqlSafe(record)).execute(&mut *session).await;
    report.statements += 3;
    // A trigger on the history table runs in the session too: check once more.
    if let Ok(after) = session::state(session, roles).await
        && session::difference(&before, &after, &roles.migrator, false).is_some()
    {
        let undone = session::undo_role_changes(admin, roles, &facts).await?;
        return Err(refusal(
            module,
            file,
            "while recording the migration, the project's roles changed".to_owned(),
            format!("moat undid it: {}", undone.join("; ")),
        )
        .into());
    }
    recorded.map_err(db(format!("recording migration `{}`", file.file)))?;
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

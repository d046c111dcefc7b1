//! Stopping the module's writes on the source, giving them back, and dropping the source copy.
//!
//! The freeze revokes `USAGE` on the module's schema from its runtime role and from the relay
//! (which truncates and marks progress in the outbox), records in the journal whom it revoked
//! (in the same transaction), then ends the runtime role's sessions in the source database and
//! the relay's sessions holding locks there. A running transaction of theirs is rolled back; a
//! new statement is refused. An abort, or a verification that fails, grants exactly those rights
//! back. While the journal is at a step between the freeze and the switch, provisioning must not
//! give them back either (the placement module reads the journal).

use moat_core::quote::{ident, literal, qualified};
use sqlx::PgConnection;

use super::{Ctx, journal};
use crate::error::{AdminError, db};
use crate::internal::MOVE;

/// Stops the module's writes on the source (idempotent).
pub async fn freeze(ctx: &Ctx<'_>, src: &mut PgConnection) -> Result<(), AdminError> {
    let schema = ctx.schema();
    let roles = ctx.manifest.roles();
    let runtime = roles.module_runtime(&ctx.module.name);
    let relay = roles.relay();
    let holding: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT pg_catalog.pg_get_userbyid(a.grantee)::text \
         FROM pg_catalog.pg_namespace n, pg_catalog.aclexplode(n.nspacl) a \
         WHERE n.nspname OPERATOR(pg_catalog.=) $1 AND a.privilege_type OPERATOR(pg_catalog.=) 'USAGE' \
           AND a.grantee OPERATOR(pg_catalog.<>) 0 AND pg_catalog.pg_get_userbyid(a.grantee) OPERATOR(pg_catalog.=) ANY ($2)",
    )
    .bind(schema)
    .bind([runtime.clone(), relay.clone()])
    .fetch_all(&mut *src)
    .await
    .map_err(db(format!("reading who may use schema `{schema}`")))?;
    let journal = journal::read(src, ctx.manifest, ctx.module).await?;
    let mut revoked: Vec<String> = journal.map(|j| j.revoked).unwrap_or_default();
    for role in &holding {
        if !revoked.contains(role) {
            revoked.push(role.clone());
        }
    }
    let mut sql = String::from("BEGIN; ");
    for role in &holding {
        sql.push_str(&format!("REVOKE USAGE ON SCHEMA {} FROM {}; ", ident(schema), ident(role)));
    }
    sql.push_str(&format!(
        "UPDATE {} SET frozen_at = coalesce(frozen_at, pg_catalog.now()), revoked = ARRAY[{}]::text[], updated_at = pg_catalog.now(); COMMIT",
        qualified(schema, MOVE),
        revoked.iter().map(|r| literal(r)).collect::<Vec<_>>().join(", ")
    ));
    if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut *src).await {
        let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *src).await;
        return Err(db(format!("stopping the writes of module `{}` on the source", ctx.module.name))(e));
    }
    // Sessions that passed their privilege checks before the revoke may still write: end them,
    // and wait until they are gone (a transaction of theirs then either committed before the
    // copy's snapshot or never will).
    let mut left: Vec<(i32, String)> = Vec::new();
    for _ in 0..6 {
        // The sessions are chosen first (a materialized CTE), then ended: a condition next to
        // `pg_terminate_backend` in one WHERE could be evaluated after it.
        left = sqlx::query_as(
            "WITH chosen AS MATERIALIZED (SELECT a.pid, a.usename::text AS role FROM pg_catalog.pg_stat_activity a \
             WHERE a.datname OPERATOR(pg_catalog.=) pg_catalog.current_database() AND a.pid OPERATOR(pg_catalog.<>) pg_catalog.pg_backend_pid() \
               AND (a.usename OPERATOR(pg_catalog.=) $1 \
                    OR (a.usename OPERATOR(pg_catalog.=) $2 AND EXISTS (SELECT FROM pg_catalog.pg_locks l \
                        JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) l.relation \
                        JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
                        WHERE l.pid OPERATOR(pg_catalog.=) a.pid AND n.nspname OPERATOR(pg_catalog.=) $3)))), \
             ended AS MATERIALIZED (SELECT pid, role, pg_catalog.pg_terminate_backend(pid, 5000) AS gone FROM chosen) \
             SELECT pid, role FROM ended WHERE NOT gone",
        )
        .bind(&runtime)
        .bind(&relay)
        .bind(schema)
        .fetch_all(&mut *src)
        .await
        .map_err(db(format!("ending the sessions of `{runtime}` in the source database")))?;
        if left.is_empty() {
            return Ok(());
        }
    }
    Err(AdminError::Refused {
        message: format!(
            "the writes of module `{}` are stopped, but these sessions did not end within 30 s: {}",
            ctx.module.name,
            left.iter().map(|(pid, role)| format!("`{role}` (pid {pid})")).collect::<Vec<_>>().join(", ")
        ),
        help: format!(
            "end them as the admin (`SELECT pg_terminate_backend(<pid>)`) and run `moat extract {0}` again, or `moat extract {0} --abort`",
            ctx.module.name
        ),
    })
}

/// Gives back what [`freeze`] revoked (idempotent): the module serves from the source again.
pub async fn unfreeze(ctx: &Ctx<'_>, src: &mut PgConnection) -> Result<(), AdminError> {
    let schema = ctx.schema();
    let Some(journal) = journal::read(src, ctx.manifest, ctx.module).await? else { return Ok(()) };
    let existing: Vec<String> = sqlx::query_scalar(
        "SELECT rolname::text FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) ANY ($1)",
    )
    .bind(&journal.revoked)
    .fetch_all(&mut *src)
    .await
    .map_err(db("looking up roles"))?;
    let mut sql = String::from("BEGIN; ");
    for role in &existing {
        sql.push_str(&format!("GRANT USAGE ON SCHEMA {} TO {}; ", ident(schema), ident(role)));
    }
    sql.push_str(&format!(
        "UPDATE {} SET frozen_at = NULL, revoked = '{{}}', updated_at = pg_catalog.now(); COMMIT",
        qualified(schema, MOVE)
    ));
    if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut *src).await {
        let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *src).await;
        return Err(db(format!("giving module `{}` its rights on the source back", ctx.module.name))(e));
    }
    Ok(())
}

/// `--finalize`: drops the source copy of the module's schema, with its journal. DROP runs no
/// code of the module (only event triggers, which only a superuser creates).
pub async fn drop_source_schema(ctx: &Ctx<'_>, src: &mut PgConnection) -> Result<(), AdminError> {
    let sql = format!(
        "SET lock_timeout = '{}ms'; DROP SCHEMA {} CASCADE; SET lock_timeout = 0",
        crate::locks::LOCK_TIMEOUT.as_millis(),
        ident(ctx.schema())
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut *src)
        .await
        .map_err(db(format!("dropping the source copy of schema `{}`", ctx.schema())))?;
    Ok(())
}

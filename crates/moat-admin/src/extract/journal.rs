//! The move journal, `<schema>.moat_move` in the source database: one row that says which step
//! of a move is under way, read by the next run (to resume) and by placement (a row at step
//! `switched` means the module lives in the target). moat's own table, owned by `<project>_moat`:
//! the admin reads and writes it only after checking in the catalog that it is still the plain
//! table moat created (a module owner may create objects in its schema, so a table of that name
//! it planted first, or a trigger on it, would otherwise run its code as the admin).

use chrono::{DateTime, Utc};
use moat_core::manifest::{Manifest, Module};
use moat_core::quote::{ident, literal, qualified};
use sqlx::{Connection, PgConnection};

use super::{Ctx, Step, Verification};
use crate::error::{AdminError, db};
use crate::internal::{MOVE, MOVE_CHANNEL, move_ddl};

/// The journal's row.
#[derive(Debug, Clone)]
pub struct Journal {
    /// The manifest's key of the target database (`""`: the main one).
    pub target: String,
    /// `replicate` or `copy`.
    pub mode: Option<String>,
    /// The step under way.
    pub step: Step,
    /// When the move started.
    pub started_at: DateTime<Utc>,
    /// When the module switched.
    pub switched_at: Option<DateTime<Utc>>,
    /// Since when the module's writes are stopped on the source (`None`: they are not).
    pub frozen_at: Option<DateTime<Utc>>,
    /// Roles whose `USAGE` on the source schema the move revoked.
    pub revoked: Vec<String>,
}

impl Journal {
    /// Milliseconds from the freeze to the switch.
    pub fn write_unavailable_ms(&self) -> Option<u64> {
        let (from, to) = (self.frozen_at?, self.switched_at?);
        u64::try_from((to - from).num_milliseconds()).ok()
    }
}

type Row = (String, Option<String>, String, DateTime<Utc>, Option<DateTime<Utc>>, Option<DateTime<Utc>>, Vec<String>);

/// Reads the journal of `module` in the database `src` is connected to; `None` when there is no
/// move (no table, or no row).
pub async fn read(src: &mut PgConnection, manifest: &Manifest, module: &Module) -> Result<Option<Journal>, AdminError> {
    let schema = module.schema.as_str();
    if !check_table(src, manifest, schema).await? {
        return Ok(None);
    }
    let sql = format!(
        "SELECT target, mode, step, started_at, switched_at, frozen_at, revoked FROM {}",
        qualified(schema, MOVE)
    );
    let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .fetch_optional(&mut *src)
        .await
        .map_err(db(format!("reading the move journal `{schema}.{MOVE}`")))?;
    let Some((target, mode, step, started_at, switched_at, frozen_at, revoked)) = row else { return Ok(None) };
    let step = Step::parse(&step).ok_or_else(|| AdminError::Refused {
        message: format!("the move journal `{schema}.{MOVE}` names an unknown step `{step}`"),
        help: "it was written by a newer moat; use that version to finish or abort the move".into(),
    })?;
    Ok(Some(Journal { target, mode, step, started_at, switched_at, frozen_at, revoked }))
}

/// Whether the journal table exists; refuses one that is not moat's plain table.
async fn check_table(conn: &mut PgConnection, manifest: &Manifest, schema: &str) -> Result<bool, AdminError> {
    let row: Option<(String, String, i64, bool)> = sqlx::query_as(
        "SELECT c.relkind::text, pg_catalog.pg_get_userbyid(c.relowner)::text, \
         (SELECT pg_catalog.count(*) FROM pg_catalog.pg_trigger t WHERE t.tgrelid OPERATOR(pg_catalog.=) c.oid) \
         + (SELECT pg_catalog.count(*) FROM pg_catalog.pg_rewrite r WHERE r.ev_class OPERATOR(pg_catalog.=) c.oid) \
         + (SELECT pg_catalog.count(*) FROM pg_catalog.pg_policy p WHERE p.polrelid OPERATOR(pg_catalog.=) c.oid), \
         c.relrowsecurity OR c.relforcerowsecurity \
         FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
         WHERE n.nspname OPERATOR(pg_catalog.=) $1 AND c.relname OPERATOR(pg_catalog.=) $2",
    )
    .bind(schema)
    .bind(MOVE)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db(format!("looking for the move journal `{schema}.{MOVE}`")))?;
    let Some((kind, owner, code, row_security)) = row else { return Ok(false) };
    let moat = manifest.roles().moat_owner();
    if kind != "r" || owner != moat || code > 0 || row_security {
        return Err(AdminError::Refused {
            message: format!(
                "`{schema}.{MOVE}` is not moat's move journal (kind `{kind}`, owned by `{owner}`, {code} triggers, rules or policies{})",
                if row_security { ", row level security" } else { "" }
            ),
            help: format!(
                "moat keeps the journal of `moat extract` there, owned by `{moat}`; a module role created this object. \
                 Inspect and drop it as the admin, then run `moat extract` again"
            ),
        });
    }
    Ok(true)
}

/// Creates the journal (if needed) and its row at step `preflight`, in one transaction.
pub async fn start(src: &mut PgConnection, ctx: &Ctx<'_>) -> Result<(), AdminError> {
    let schema = ctx.schema();
    let exists = check_table(src, ctx.manifest, schema).await?;
    let mut tx = src.begin().await.map_err(db("starting the move journal"))?;
    if !exists {
        for sql in move_ddl(schema, &ctx.manifest.roles().moat_owner()) {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut *tx)
                .await
                .map_err(db(format!("creating the move journal `{schema}.{MOVE}`")))?;
        }
    }
    let sql = format!(
        "INSERT INTO {} (target, mode, step) VALUES ({}, {}, {})",
        qualified(schema, MOVE),
        literal(ctx.target_key),
        literal(ctx.mode.as_str()),
        literal(Step::Preflight.as_str())
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut *tx)
        .await
        .map_err(db(format!("writing the move journal `{schema}.{MOVE}`")))?;
    tx.commit().await.map_err(db("committing the move journal"))
}

async fn update(src: &mut PgConnection, ctx: &Ctx<'_>, set: &str, doing: &str) -> Result<(), AdminError> {
    let schema = ctx.schema();
    check_table(src, ctx.manifest, schema).await?;
    let sql = format!("UPDATE {} SET {set}, updated_at = pg_catalog.now()", qualified(schema, MOVE));
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut *src)
        .await
        .map_err(db(format!("{doing} in the move journal `{schema}.{MOVE}`")))?;
    Ok(())
}

/// Records that `step` is under way.
pub async fn set_step(src: &mut PgConnection, ctx: &Ctx<'_>, step: Step) -> Result<(), AdminError> {
    update(src, ctx, &format!("step = {}", literal(step.as_str())), "recording the step").await
}

/// Records the last verification.
pub async fn set_report(src: &mut PgConnection, ctx: &Ctx<'_>, verification: &Verification) -> Result<(), AdminError> {
    let json = serde_json::to_string(verification).unwrap_or_else(|_| "null".to_owned());
    update(src, ctx, &format!("report = {}::jsonb", literal(&json)), "recording the verification").await
}

/// The switch: step `switched` and `NOTIFY moat_move` in one transaction. Returns the journal.
pub async fn switch(src: &mut PgConnection, ctx: &Ctx<'_>) -> Result<Journal, AdminError> {
    let schema = ctx.schema();
    check_table(src, ctx.manifest, schema).await?;
    let sql = format!(
        "BEGIN; UPDATE {} SET step = {}, switched_at = pg_catalog.now(), updated_at = pg_catalog.now(); \
         NOTIFY {}, {}; COMMIT",
        qualified(schema, MOVE),
        literal(Step::Switched.as_str()),
        ident(MOVE_CHANNEL),
        literal(ctx.module.name.as_str())
    );
    if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut *src).await {
        let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *src).await;
        return Err(db(format!("switching module `{}`", ctx.module.name))(e));
    }
    read(src, ctx.manifest, ctx.module).await?.ok_or_else(|| AdminError::Refused {
        message: format!("the move journal `{schema}.{MOVE}` disappeared during the switch"),
        help: "another process ran `moat extract --abort` at the same time; check both databases".into(),
    })
}

/// Deletes the journal's row (the table stays: moat's, empty).
pub async fn delete(src: &mut PgConnection, ctx: &Ctx<'_>) -> Result<(), AdminError> {
    let schema = ctx.schema();
    if !check_table(src, ctx.manifest, schema).await? {
        return Ok(());
    }
    let sql = format!("DELETE FROM {}", qualified(schema, MOVE));
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut *src)
        .await
        .map_err(db(format!("deleting the move journal `{schema}.{MOVE}`")))?;
    Ok(())
}

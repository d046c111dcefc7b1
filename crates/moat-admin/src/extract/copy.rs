//! The copy step's data: every table of the module streamed from `COPY ... TO STDOUT` on the
//! source into `COPY ... FROM STDIN` on the target, in owner sessions on both sides (one
//! transaction each: the source's a single snapshot, the target's committed whole or not at
//! all); moat's own tables by the admin (moat's, checked to carry no code); then the post-data
//! section as the owner and the sequences.

use futures::StreamExt;
use moat_core::quote::{literal, qualified};
use sqlx::PgConnection;

use super::objects::{self, Sequence, Table};
use super::session::OwnerSession;
use super::{Ctx, ExtractEvent, TableReport, dump};
use crate::error::{AdminError, db};

/// How often a table's progress is reported, in bytes.
const PROGRESS_EVERY: u64 = 8 << 20;

/// Copies every table (target tables must be empty: the prepare step made them), then runs the
/// post-data SQL and moves the sequences on.
pub async fn copy(
    ctx: &Ctx<'_>,
    src: &mut PgConnection,
    dst: &mut PgConnection,
    post_data: &str,
) -> Result<Vec<TableReport>, AdminError> {
    let schema = ctx.schema();
    let moat_owner = ctx.manifest.roles().moat_owner();
    objects::check_moat_tables(src, schema, &moat_owner, "source").await?;
    objects::check_moat_tables(dst, schema, &moat_owner, "target").await?;
    let source_tables = objects::tables(src, schema).await?;
    let target_tables = objects::tables(dst, schema).await?;
    for (table, _) in &source_tables {
        match target_tables.iter().find(|(t, _)| t.name == table.name) {
            Some((t, _)) if t.columns == table.columns => {}
            Some((t, _)) => {
                return Err(AdminError::Refused {
                    message: format!(
                        "table `{schema}.{}` has columns ({}) in the source but ({}) in the target",
                        table.name,
                        table.columns.join(", "),
                        t.columns.join(", ")
                    ),
                    help:
                        "the source's schema changed during the move; run `moat extract` again to start the copy over"
                            .into(),
                });
            }
            None => {
                return Err(AdminError::Refused {
                    message: format!("table `{schema}.{}` of the source is missing in the target", table.name),
                    help:
                        "the source's schema changed during the move; run `moat extract` again to start the copy over"
                            .into(),
                });
            }
        }
    }
    let mut reports = Vec::new();
    let module_tables: Vec<&Table> = source_tables.iter().map(|(t, _)| t).filter(|t| !t.moat).collect();
    let moat_tables: Vec<&Table> = source_tables.iter().map(|(t, _)| t).filter(|t| t.moat).collect();
    reports.extend(copy_module_tables(ctx, src, dst, &module_tables).await?);
    reports.extend(copy_moat_tables(ctx, src, dst, &moat_tables).await?);
    finish(ctx, src, dst, post_data).await?;
    Ok(reports)
}

/// moat's tables of the module (`moat_*`, owned by `<project>_moat`), as listed in the source.
pub async fn moat_tables(src: &mut PgConnection, schema: &str) -> Result<Vec<Table>, AdminError> {
    Ok(objects::tables(src, schema).await?.into_iter().map(|(t, _)| t).filter(|t| t.moat).collect())
}

/// The module's own tables, as listed in the source.
pub async fn module_tables(src: &mut PgConnection, schema: &str) -> Result<Vec<Table>, AdminError> {
    Ok(objects::tables(src, schema).await?.into_iter().map(|(t, _)| t).filter(|t| !t.moat).collect())
}

/// The module's tables, as its owner on both sides, in one snapshot of the source.
async fn copy_module_tables(
    ctx: &Ctx<'_>,
    src: &mut PgConnection,
    dst: &mut PgConnection,
    module_tables: &[&Table],
) -> Result<Vec<TableReport>, AdminError> {
    let mut reports = Vec::new();
    let mut from = OwnerSession::open(src, ctx.source_url, ctx.manifest, ctx.module).await?;
    let mut to = match OwnerSession::open(dst, ctx.target_url, ctx.manifest, ctx.module).await {
        Ok(to) => to,
        Err(e) => {
            from.close().await;
            return Err(e);
        }
    };
    let copied = async {
        from.begin("REPEATABLE READ").await?;
        to.begin("READ COMMITTED").await?;
        for table in module_tables {
            reports.push(copy_table(ctx, &mut from.conn, &mut to.conn, table, false).await?);
        }
        if let Err(what) = to.check(true).await {
            return Err(AdminError::Refused {
                message: format!("copying the tables of module `{}` into the target: {what}", ctx.module.name),
                help: "a constraint, default or generated column of the module runs a function that changed roles; fix it in the source".into(),
            });
        }
        sqlx::raw_sql("COMMIT").execute(&mut to.conn).await.map_err(db("committing the copy in the target"))?;
        sqlx::raw_sql("COMMIT").execute(&mut from.conn).await.map_err(db("ending the copy's snapshot in the source"))?;
        Ok(())
    }
    .await;
    from.close().await;
    to.close().await;
    copied?;
    Ok(reports)
}

/// moat's tables, as the admin: they belong to `<project>_moat` and carry no code (checked).
/// What the target holds of them is replaced.
pub async fn copy_moat_tables(
    ctx: &Ctx<'_>,
    src: &mut PgConnection,
    dst: &mut PgConnection,
    moat_tables: &[&Table],
) -> Result<Vec<TableReport>, AdminError> {
    let schema = ctx.schema();
    let moat_owner = ctx.manifest.roles().moat_owner();
    objects::check_moat_tables(src, schema, &moat_owner, "source").await?;
    objects::check_moat_tables(dst, schema, &moat_owner, "target").await?;
    let mut reports = Vec::new();
    sqlx::raw_sql("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *src)
        .await
        .map_err(db("starting the copy of moat's tables"))?;
    sqlx::raw_sql("BEGIN").execute(&mut *dst).await.map_err(db("starting the copy of moat's tables"))?;
    let moat_copied = async {
        for table in moat_tables {
            let sql = format!("DELETE FROM {}", table.qualified(schema));
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut *dst)
                .await
                .map_err(db("emptying moat's tables in the target"))?;
            reports.push(copy_table(ctx, src, dst, table, true).await?);
        }
        sqlx::raw_sql("COMMIT").execute(&mut *dst).await.map_err(db("committing moat's tables in the target"))?;
        Ok::<(), AdminError>(())
    }
    .await;
    let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *src).await;
    if moat_copied.is_err() {
        let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *dst).await;
    }
    moat_copied?;
    Ok(reports)
}

/// After the rows: the post-data SQL (constraints, indexes, triggers, policies) as the owner,
/// materialized views refreshed, then the sequences moved on.
pub async fn finish(
    ctx: &Ctx<'_>,
    src: &mut PgConnection,
    dst: &mut PgConnection,
    post_data: &str,
) -> Result<(), AdminError> {
    let schema = ctx.schema();
    let mut post = post_data.to_owned();
    let matviews: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
         WHERE n.nspname OPERATOR(pg_catalog.=) $1 AND c.relkind OPERATOR(pg_catalog.=) 'm' AND c.relispopulated ORDER BY 1",
    )
    .bind(schema)
    .fetch_all(&mut *src)
    .await
    .map_err(db("listing the module's materialized views"))?;
    for view in matviews {
        post.push_str(&format!("\nREFRESH MATERIALIZED VIEW {};\n", qualified(schema, &view)));
    }
    dump::run_module_sql(ctx, dst, ctx.target_url, &post, "post-data").await?;
    sequences(ctx, src, dst).await
}

/// Streams one table; `from` and `to` are inside their transactions.
async fn copy_table(
    ctx: &Ctx<'_>,
    from: &mut PgConnection,
    to: &mut PgConnection,
    table: &Table,
    moat: bool,
) -> Result<TableReport, AdminError> {
    let schema = ctx.schema();
    let name = format!("{schema}.{}", table.name);
    let columns = table.column_list();
    let out_sql = format!("COPY {} {columns} TO STDOUT", table.qualified(schema));
    let in_sql = format!("COPY {} {columns} FROM STDIN", table.qualified(schema));
    let mut sink =
        to.copy_in_raw(&in_sql).await.map_err(db(format!("starting the copy of `{name}` into the target")))?;
    let mut stream = match from.copy_out_raw(&out_sql).await {
        Ok(stream) => stream,
        Err(e) => {
            let _ = sink.abort("the source failed").await;
            return Err(db(format!("starting the copy of `{name}` out of the source"))(e));
        }
    };
    let mut bytes: u64 = 0;
    let mut reported: u64 = 0;
    let mut newlines: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => {
                let _ = sink.abort("the source failed").await;
                return Err(db(format!("copying `{name}` out of the source"))(e));
            }
        };
        bytes += chunk.len() as u64;
        newlines += chunk.iter().filter(|b| **b == b'\n').count() as u64;
        if let Err(e) = sink.send(chunk).await {
            return Err(db(format!("copying `{name}` into the target"))(e));
        }
        if bytes - reported >= PROGRESS_EVERY {
            reported = bytes;
            (ctx.observe)(ExtractEvent::Table { table: &name, rows: newlines, bytes, done: false });
        }
    }
    drop(stream);
    let rows = sink.finish().await.map_err(db(format!("finishing the copy of `{name}` into the target")))?;
    (ctx.observe)(ExtractEvent::Table { table: &name, rows, bytes, done: true });
    Ok(TableReport { table: name, rows, bytes, moat_table: moat })
}

/// Moves every sequence of the target to where the source's is (the module's as its owner,
/// moat's as the admin).
async fn sequences(ctx: &Ctx<'_>, src: &mut PgConnection, dst: &mut PgConnection) -> Result<(), AdminError> {
    let schema = ctx.schema();
    let all = objects::sequences(src, schema).await?;
    let (moat, module): (Vec<Sequence>, Vec<Sequence>) = all.into_iter().partition(|s| s.moat);
    if !module.is_empty() {
        let mut from = OwnerSession::open(src, ctx.source_url, ctx.manifest, ctx.module).await?;
        let values = read_sequences(&mut from.conn, schema, &module).await;
        from.close().await;
        let values = values?;
        let mut to = OwnerSession::open(dst, ctx.target_url, ctx.manifest, ctx.module).await?;
        let set = set_sequences(&mut to.conn, schema, &values).await;
        to.close().await;
        set?;
    }
    let values = read_sequences(src, schema, &moat).await?;
    set_sequences(dst, schema, &values).await
}

/// `(name, last_value, is_called)` of each sequence.
pub async fn read_sequences(
    conn: &mut PgConnection,
    schema: &str,
    sequences: &[Sequence],
) -> Result<Vec<(String, i64, bool)>, AdminError> {
    let mut values = Vec::new();
    for sequence in sequences {
        let sql = format!("SELECT last_value, is_called FROM {}", qualified(schema, &sequence.name));
        let (last, called): (i64, bool) = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .fetch_one(&mut *conn)
            .await
            .map_err(db(format!("reading sequence `{schema}.{}`", sequence.name)))?;
        values.push((sequence.name.clone(), last, called));
    }
    Ok(values)
}

async fn set_sequences(
    conn: &mut PgConnection,
    schema: &str,
    values: &[(String, i64, bool)],
) -> Result<(), AdminError> {
    for (name, last, called) in values {
        let sql = format!(
            "SELECT pg_catalog.setval({}::pg_catalog.regclass, {last}, {called})",
            literal(&qualified(schema, name))
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut *conn)
            .await
            .map_err(db(format!("setting sequence `{schema}.{name}` in the target")))?;
    }
    Ok(())
}

//! Verification before the switch: for every table, the row count and an MD5 per chunk of
//! [`CHUNK_ROWS`] rows in key order, computed on both sides (the module's tables in owner
//! sessions, moat's tables, among them the migration history and the outbox, by the admin);
//! every sequence of the target at or above the source's. Any difference blocks the switch.

use serde::Serialize;
use sqlx::PgConnection;

use super::objects::{self, Sequence, Table};
use super::session::OwnerSession;
use super::{Ctx, copy};
use crate::error::{AdminError, db};
use crate::internal;

/// Rows per hashed chunk.
pub const CHUNK_ROWS: i64 = 10_000;

/// The verification's result.
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    /// Per table: rows on each side and chunks compared.
    pub tables: Vec<TableCheck>,
    /// Sequences compared.
    pub sequences: usize,
    /// Everything that differs (empty: the switch may happen).
    pub mismatches: Vec<Mismatch>,
}

/// One compared table.
#[derive(Debug, Clone, Serialize)]
pub struct TableCheck {
    /// `schema.table`.
    pub table: String,
    /// Rows in the source.
    pub source_rows: u64,
    /// Rows in the target.
    pub target_rows: u64,
    /// Chunks hashed.
    pub chunks: usize,
}

/// A difference between the source and the target.
#[derive(Debug, Clone, Serialize)]
pub struct Mismatch {
    /// `table`, `migration_history`, `outbox`, `moat_table` or `sequence`.
    pub kind: &'static str,
    /// `schema.object`.
    pub object: String,
    /// What differs.
    pub detail: String,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.kind {
            "migration_history" => "migration history",
            "outbox" => "outbox",
            "sequence" => "sequence",
            "moat_table" => "moat's table",
            _ => "table",
        };
        write!(f, "{what} `{}`: {}", self.object, self.detail)
    }
}

/// `(chunk, rows, md5)` per chunk, in chunk order.
type Hashes = Vec<(i64, i64, String)>;

/// Compares both sides.
pub async fn verify(ctx: &Ctx<'_>, src: &mut PgConnection, dst: &mut PgConnection) -> Result<Verification, AdminError> {
    let schema = ctx.schema();
    let moat_owner = ctx.manifest.roles().moat_owner();
    objects::check_moat_tables(src, schema, &moat_owner, "source").await?;
    objects::check_moat_tables(dst, schema, &moat_owner, "target").await?;
    let tables: Vec<Table> = objects::tables(src, schema).await?.into_iter().map(|(t, _)| t).collect();
    let target_tables: Vec<String> = objects::tables(dst, schema).await?.into_iter().map(|(t, _)| t.name).collect();
    let mut result = Verification { tables: Vec::new(), sequences: 0, mismatches: Vec::new() };
    for table in tables.iter().filter(|t| !target_tables.contains(&t.name)) {
        result.mismatches.push(Mismatch {
            kind: kind_of(table),
            object: format!("{schema}.{}", table.name),
            detail: "missing in the target".into(),
        });
    }
    let present: Vec<&Table> = tables.iter().filter(|t| target_tables.contains(&t.name)).collect();
    let (moat, module): (Vec<&Table>, Vec<&Table>) = present.into_iter().partition(|t| t.moat);

    // Both sides hash at once (the module's writes are stopped while this runs): the module's
    // tables in owner sessions, moat's by the admin.
    let mut from = OwnerSession::open(src, ctx.source_url, ctx.manifest, ctx.module).await?;
    let mut to = match OwnerSession::open(dst, ctx.target_url, ctx.manifest, ctx.module).await {
        Ok(to) => to,
        Err(e) => {
            from.close().await;
            return Err(e);
        }
    };
    let (source, target) =
        tokio::join!(hash_all(&mut from.conn, schema, &module), hash_all(&mut to.conn, schema, &module));
    from.close().await;
    to.close().await;
    let (mut source_hashes, mut target_hashes) = (source?, target?);
    let (source, target) = tokio::join!(hash_all(src, schema, &moat), hash_all(dst, schema, &moat));
    source_hashes.extend(source?);
    target_hashes.extend(target?);
    let ordered: Vec<&Table> = module.iter().chain(moat.iter()).copied().collect();
    for ((table, source), target) in ordered.iter().zip(&source_hashes).zip(&target_hashes) {
        let object = format!("{schema}.{}", table.name);
        let rows = |h: &Hashes| h.iter().map(|(_, n, _)| u64::try_from(*n).unwrap_or(0)).sum::<u64>();
        let (source_rows, target_rows) = (rows(source), rows(target));
        result.tables.push(TableCheck {
            table: object.clone(),
            source_rows,
            target_rows,
            chunks: source.len().max(target.len()),
        });
        if source_rows != target_rows {
            result.mismatches.push(Mismatch {
                kind: kind_of(table),
                object,
                detail: format!("{source_rows} rows in the source, {target_rows} in the target"),
            });
            continue;
        }
        if let Some(((chunk, _, _), _)) = source.iter().zip(target).find(|(s, t)| s != t) {
            let first = chunk * CHUNK_ROWS + 1;
            let last = ((chunk + 1) * CHUNK_ROWS).min(i64::try_from(source_rows).unwrap_or(i64::MAX));
            result.mismatches.push(Mismatch {
                kind: kind_of(table),
                object,
                detail: format!("rows {first} to {last} in key order differ (same row count, different content)"),
            });
        }
    }
    sequences(ctx, src, dst, &mut result).await?;
    Ok(result)
}

fn kind_of(table: &Table) -> &'static str {
    if !table.moat {
        "table"
    } else if table.name == internal::MIGRATIONS {
        "migration_history"
    } else if internal::is_outbox_partition(&table.name) {
        "outbox"
    } else {
        "moat_table"
    }
}

async fn hash_all(conn: &mut PgConnection, schema: &str, tables: &[&Table]) -> Result<Vec<Hashes>, AdminError> {
    let mut all = Vec::new();
    for table in tables {
        let sql = format!(
            "SELECT ((s.n OPERATOR(pg_catalog.-) 1) OPERATOR(pg_catalog./) {CHUNK_ROWS})::pg_catalog.int8, pg_catalog.count(*)::pg_catalog.int8, \
             pg_catalog.md5(pg_catalog.string_agg(s.r, E'\\n' ORDER BY s.n)) \
             FROM (SELECT pg_catalog.row_number() OVER (ORDER BY {}) AS n, (x.*)::pg_catalog.text AS r FROM {} x) s \
             GROUP BY 1 ORDER BY 1",
            table.order.join(", "),
            table.qualified(schema)
        );
        let hashes: Hashes = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .fetch_all(&mut *conn)
            .await
            .map_err(db(format!("hashing the rows of `{schema}.{}`", table.name)))?;
        all.push(hashes);
    }
    Ok(all)
}

async fn sequences(
    ctx: &Ctx<'_>,
    src: &mut PgConnection,
    dst: &mut PgConnection,
    result: &mut Verification,
) -> Result<(), AdminError> {
    let schema = ctx.schema();
    let all = objects::sequences(src, schema).await?;
    let (moat, module): (Vec<Sequence>, Vec<Sequence>) = all.into_iter().partition(|s| s.moat);
    let mut source = Vec::new();
    let mut target = Vec::new();
    if !module.is_empty() {
        let mut from = OwnerSession::open(src, ctx.source_url, ctx.manifest, ctx.module).await?;
        let read = copy::read_sequences(&mut from.conn, schema, &module).await;
        from.close().await;
        source.extend(read?);
        let mut to = OwnerSession::open(dst, ctx.target_url, ctx.manifest, ctx.module).await?;
        let read = copy::read_sequences(&mut to.conn, schema, &module).await;
        to.close().await;
        target.extend(read?);
    }
    source.extend(copy::read_sequences(src, schema, &moat).await?);
    target.extend(copy::read_sequences(dst, schema, &moat).await?);
    let used = |(_, last, called): &(String, i64, bool)| if *called { *last } else { last - 1 };
    for (s, t) in source.iter().zip(&target) {
        result.sequences += 1;
        if used(t) < used(s) {
            result.mismatches.push(Mismatch {
                kind: "sequence",
                object: format!("{schema}.{}", s.0),
                detail: format!("the source has used values up to {}, the target only up to {}", used(s), used(t)),
            });
        }
    }
    Ok(())
}

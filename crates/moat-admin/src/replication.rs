//! Logical replication of one module's tables from the database it lives in to the one it moves
//! to (`moat extract --mode replicate`): a publication of exactly its tables in the source, a
//! replication slot made for it, a subscription in the target; and the checks that make this safe.
//!
//! **Who runs what.** In PostgreSQL 15 a subscription's apply worker runs as the subscription's
//! owner, which must be a superuser, with `session_replication_role = replica`. It never fires an
//! ordinary trigger, but it evaluates whatever the target's tables compute on insert: column
//! defaults and generated columns, CHECK constraints, index expressions and predicates, domain
//! constraints, partition keys (rows are routed to partitions), and the `subtype_diff` of a range
//! type that a GiST index calls. So replication is refused ([`superuser_traps`]) when any of these on the module's
//! tables calls a function that is neither PostgreSQL's nor an extension's (the operator installed
//! those); `--mode copy` moves such a module with every row written as its owner. Triggers, rules
//! and policies are created on the target only after the subscription is gone.
//!
//! **Same cluster.** `CREATE SUBSCRIPTION` that creates its slot in the same cluster waits for
//! itself; the slot is therefore created first, on the source, and the subscription uses it
//! (`create_slot = false`), which works whether or not the two databases share a cluster.
//!
//! **Names.** Publication, slot and subscription are named after the project and the module
//! ([`names`]), so that a rerun after a crash finds what an earlier run created, and `drop_all`
//! leaves nothing behind on either side.

use moat_core::quote::{ident, literal, qualified};
use sqlx::PgConnection;

use crate::error::{AdminError, db};
use crate::target::DatabaseUrl;

/// What one move's replication objects are called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// The publication in the source.
    pub publication: String,
    /// The logical replication slot in the source's cluster.
    pub slot: String,
    /// The subscription in the target.
    pub subscription: String,
}

/// The names for moving `module` of `project` (at most 63 bytes each: both are short names).
pub fn names(project: &str, module: &str) -> Names {
    let base = format!("moat_move_{project}_{module}");
    Names { publication: base.clone(), slot: base.clone(), subscription: base }
}

/// A column default, generated column, constraint, index, partition key or range type of the
/// module's tables that calls a function a superuser applying replicated rows would run.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Trap {
    /// The table.
    pub table: String,
    /// What on it (`CHECK constraint x`, `default of column y`, `index z`, `domain d`).
    pub what: String,
    /// The function, `schema.name(args)`.
    pub function: String,
}

const TRAPS_SQL: &str = "\
WITH tables AS (\
  SELECT c.oid, c.relname FROM pg_catalog.pg_class c \
  WHERE c.relnamespace = (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = $1) AND c.relkind IN ('r', 'p') \
    AND c.relowner <> coalesce((SELECT oid FROM pg_catalog.pg_roles WHERE rolname = $2), 0)), \
domains AS (\
  SELECT DISTINCT t.relname, ty.oid AS typid, ty.typname FROM tables t \
  JOIN pg_catalog.pg_attribute a ON a.attrelid = t.oid AND a.attnum > 0 AND NOT a.attisdropped \
  JOIN pg_catalog.pg_type ty ON ty.oid = a.atttypid OR ty.oid = (SELECT typelem FROM pg_catalog.pg_type WHERE oid = a.atttypid) \
  WHERE ty.typtype = 'd'), \
parts AS (\
  SELECT t.relname, 'pg_catalog.pg_attrdef'::pg_catalog.regclass AS classid, d.oid AS objid, \
         'default or generated value of column ' || a.attname AS what \
  FROM tables t JOIN pg_catalog.pg_attrdef d ON d.adrelid = t.oid \
  JOIN pg_catalog.pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.adnum \
  UNION ALL \
  SELECT t.relname, 'pg_catalog.pg_constraint'::pg_catalog.regclass, con.oid, 'constraint ' || con.conname \
  FROM tables t JOIN pg_catalog.pg_constraint con ON con.conrelid = t.oid \
  UNION ALL \
  SELECT t.relname, 'pg_catalog.pg_class'::pg_catalog.regclass, i.indexrelid, 'index ' || ic.relname \
  FROM tables t JOIN pg_catalog.pg_index i ON i.indrelid = t.oid JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid \
  UNION ALL \
  SELECT d.relname, 'pg_catalog.pg_constraint'::pg_catalog.regclass, con.oid, 'constraint ' || con.conname || ' of domain ' || d.typname \
  FROM domains d JOIN pg_catalog.pg_constraint con ON con.contypid = d.typid \
  UNION ALL \
  SELECT t.relname, 'pg_catalog.pg_class'::pg_catalog.regclass, t.oid, 'partition key' FROM tables t), \
ranges AS (\
  SELECT DISTINCT t.relname, 'range type ' || rt.typname || ' of column ' || a.attname AS what, r.rngsubdiff AS fn \
  FROM tables t \
  JOIN pg_catalog.pg_attribute a ON a.attrelid = t.oid AND a.attnum > 0 AND NOT a.attisdropped \
  JOIN pg_catalog.pg_type ct ON ct.oid = a.atttypid \
  JOIN pg_catalog.pg_range r ON r.rngtypid IN (ct.oid, ct.typbasetype, ct.typelem) OR r.rngmultitypid IN (ct.oid, ct.typbasetype) \
  JOIN pg_catalog.pg_type rt ON rt.oid = r.rngtypid \
  UNION ALL \
  SELECT DISTINCT t.relname, 'range type ' || rt.typname || ' of column ' || a.attname, r.rngcanonical \
  FROM tables t \
  JOIN pg_catalog.pg_attribute a ON a.attrelid = t.oid AND a.attnum > 0 AND NOT a.attisdropped \
  JOIN pg_catalog.pg_type ct ON ct.oid = a.atttypid \
  JOIN pg_catalog.pg_range r ON r.rngtypid IN (ct.oid, ct.typbasetype, ct.typelem) OR r.rngmultitypid IN (ct.oid, ct.typbasetype) \
  JOIN pg_catalog.pg_type rt ON rt.oid = r.rngtypid), \
calls AS (\
  SELECT p.relname, p.what, dep.refobjid AS fn FROM parts p \
  JOIN pg_catalog.pg_depend dep ON dep.classid = p.classid AND dep.objid = p.objid \
    AND dep.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass \
  UNION ALL SELECT relname, what, fn FROM ranges WHERE fn <> 0) \
SELECT DISTINCT c.relname::text AS table, c.what::text AS what, \
       pr.oid::pg_catalog.regprocedure::text AS function \
FROM calls c \
JOIN pg_catalog.pg_proc pr ON pr.oid = c.fn \
WHERE pr.pronamespace <> 'pg_catalog'::pg_catalog.regnamespace \
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend e WHERE e.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass \
                  AND e.objid = pr.oid AND e.deptype = 'e') \
ORDER BY 1, 2, 3";

/// What on the module's tables (in `schema`) would run a module's function in the apply worker.
/// Tables of `moat_owner` (moat's own, which moves by copy at the cutover) are left out.
pub async fn superuser_traps(
    source: &mut PgConnection,
    schema: &str,
    moat_owner: &str,
) -> Result<Vec<Trap>, AdminError> {
    sqlx::query_as(TRAPS_SQL)
        .bind(schema)
        .bind(moat_owner)
        .fetch_all(&mut *source)
        .await
        .map_err(db(format!("looking for functions the tables of schema {} call", ident(schema))))
}

/// `wal_level`, and the replication slots and WAL senders still free, of the source's server.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Capacity {
    /// `wal_level`.
    pub wal_level: String,
    /// `max_replication_slots` minus the slots that exist.
    pub free_slots: i64,
    /// `max_wal_senders` minus the senders running.
    pub free_senders: i64,
}

/// Reads [`Capacity`] (the caller is the admin).
pub async fn capacity(source: &mut PgConnection) -> Result<Capacity, AdminError> {
    sqlx::query_as(
        "SELECT pg_catalog.current_setting('wal_level') AS wal_level, \
         pg_catalog.current_setting('max_replication_slots')::bigint - (SELECT count(*) FROM pg_catalog.pg_replication_slots) AS free_slots, \
         pg_catalog.current_setting('max_wal_senders')::bigint - (SELECT count(*) FROM pg_catalog.pg_stat_replication) AS free_senders",
    )
    .fetch_one(&mut *source)
    .await
    .map_err(db("reading the server's replication settings"))
}

/// Whether the source server can replicate a module (one slot and one sender for the
/// subscription, and one more of each for the initial copy of tables).
pub fn check_capacity(capacity: &Capacity) -> Result<(), AdminError> {
    if capacity.wal_level != "logical" {
        return Err(AdminError::Refused {
            message: format!(
                "the source server runs with `wal_level = {}`; `--mode replicate` needs `logical`",
                capacity.wal_level
            ),
            help: "move with `--mode copy` (the module's writes stop while it copies), or set `wal_level = logical` \
                   and restart the server (an embedded cluster started by an older moat: `moat dev stop`, then run moat \
                   again; it starts with `wal_level = logical`)"
                .into(),
        });
    }
    if capacity.free_slots < 2 || capacity.free_senders < 2 {
        return Err(AdminError::Refused {
            message: format!(
                "the source server has {} free replication slot(s) and {} free WAL sender(s); a move needs 2 of each",
                capacity.free_slots.max(0),
                capacity.free_senders.max(0)
            ),
            help: "raise `max_replication_slots` and `max_wal_senders`, or drop unused slots, or use `--mode copy`"
                .into(),
        });
    }
    Ok(())
}

/// Creates (if missing) the publication of `tables` (`schema.table`, quoted by the caller's
/// names) and the slot, in the source. Partitioned tables publish through their root.
pub async fn publish(
    source: &mut PgConnection,
    names: &Names,
    schema: &str,
    tables: &[String],
) -> Result<(), AdminError> {
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $1)")
        .bind(&names.publication)
        .fetch_one(&mut *source)
        .await
        .map_err(db("looking up the publication"))?;
    if !exists {
        let list = tables.iter().map(|t| qualified(schema, t)).collect::<Vec<_>>().join(", ");
        let sql = format!(
            "CREATE PUBLICATION {} FOR TABLE {list} WITH (publish_via_partition_root = true)",
            ident(&names.publication)
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut *source)
            .await
            .map_err(db(format!("creating publication `{}`", names.publication)))?;
    }
    let slot: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = $1)")
            .bind(&names.slot)
            .fetch_one(&mut *source)
            .await
            .map_err(db("looking up the replication slot"))?;
    if !slot {
        sqlx::query("SELECT pg_catalog.pg_create_logical_replication_slot($1, 'pgoutput')")
            .bind(&names.slot)
            .execute(&mut *source)
            .await
            .map_err(db(format!("creating replication slot `{}`", names.slot)))?;
    }
    Ok(())
}

/// Creates (if missing) the subscription in the target, on the slot [`publish`] made, copying
/// the tables' rows first. `source` is the admin URL of the source database (stored in the
/// target's catalog, readable by superusers only, until [`drop_all`]).
pub async fn subscribe(target: &mut PgConnection, names: &Names, source: &DatabaseUrl) -> Result<(), AdminError> {
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_subscription WHERE subname = $1)")
            .bind(&names.subscription)
            .fetch_one(&mut *target)
            .await
            .map_err(db("looking up the subscription"))?;
    if exists {
        return Ok(());
    }
    let sql = format!(
        "CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} \
         WITH (create_slot = false, slot_name = {}, copy_data = true, enabled = true)",
        ident(&names.subscription),
        literal(&conninfo(source)),
        ident(&names.publication),
        ident(&names.slot),
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut *target).await.map_err(|e| {
        // The driver's message may quote the statement; never the connection string.
        AdminError::Refused {
            message: format!(
                "creating subscription `{}` in the target failed: {}",
                names.subscription,
                crate::error::sqlstate(&e).map_or_else(|| "see the server log".to_owned(), |s| format!("SQLSTATE {s}"))
            ),
            help: "the target's server must be able to connect to the source with the source's admin URL".into(),
        }
    })?;
    Ok(())
}

/// A libpq connection string for the source (key/value form, so that no URL parsing differs
/// between the driver and the server).
fn conninfo(url: &DatabaseUrl) -> String {
    let parsed = url::Url::parse(url.expose()).ok();
    let host = parsed.as_ref().and_then(|u| u.host_str().map(str::to_owned)).unwrap_or_else(|| "localhost".into());
    let port = parsed.as_ref().and_then(url::Url::port).unwrap_or(5432);
    let mut parts = vec![
        format!("host={}", quote_conninfo(&host)),
        format!("port={port}"),
        format!("dbname={}", quote_conninfo(&url.database())),
        format!("user={}", quote_conninfo(&url.user())),
        "application_name=moat_extract".to_owned(),
    ];
    if let Some(password) = parsed.as_ref().and_then(|u| u.password()) {
        let password = url::form_urlencoded::parse(format!("x={password}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        parts.push(format!("password={}", quote_conninfo(&password)));
    }
    if let Some(query) = parsed.as_ref().and_then(|u| u.query()) {
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            if key == "sslmode" {
                parts.push(format!("sslmode={}", quote_conninfo(&value)));
            }
        }
    }
    parts.join(" ")
}

/// A conninfo value in single quotes, with `\` and `'` escaped.
fn quote_conninfo(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Tables of the subscription not yet copied and in sync (`pg_subscription_rel` state other than
/// ready), in the target.
pub async fn tables_not_ready(target: &mut PgConnection, names: &Names) -> Result<Vec<String>, AdminError> {
    sqlx::query_scalar(
        "SELECT r.srrelid::pg_catalog.regclass::text FROM pg_catalog.pg_subscription_rel r \
         JOIN pg_catalog.pg_subscription s ON s.oid = r.srsubid WHERE s.subname = $1 AND r.srsubstate <> 'r' ORDER BY 1",
    )
    .bind(&names.subscription)
    .fetch_all(&mut *target)
    .await
    .map_err(db("reading the subscription's table states"))
}

/// The source's current WAL position.
pub async fn current_lsn(source: &mut PgConnection) -> Result<String, AdminError> {
    sqlx::query_scalar("SELECT pg_catalog.pg_current_wal_lsn()::text")
        .fetch_one(&mut *source)
        .await
        .map_err(db("reading the source's WAL position"))
}

/// How many bytes of WAL the subscription has not confirmed (the slot's view in the source).
pub async fn lag_bytes(source: &mut PgConnection, names: &Names) -> Result<Option<i64>, AdminError> {
    sqlx::query_scalar(
        "SELECT (pg_catalog.pg_current_wal_lsn() - confirmed_flush_lsn)::bigint FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
    )
    .bind(&names.slot)
    .fetch_optional(&mut *source)
    .await
    .map(Option::flatten)
    .map_err(db("reading the replication slot's lag"))
}

/// Drops the subscription (in the target), then the slot and the publication (in the source),
/// whichever exist: after this, nothing of the move's replication is left on either side.
pub async fn drop_all(source: &mut PgConnection, target: &mut PgConnection, names: &Names) -> Result<(), AdminError> {
    let subscription: Option<String> =
        sqlx::query_scalar("SELECT oid::text FROM pg_catalog.pg_subscription WHERE subname = $1")
            .bind(&names.subscription)
            .fetch_optional(&mut *target)
            .await
            .map_err(db("looking up the subscription"))?;
    if subscription.is_some() {
        // Detached from its slot first, so that dropping it does not need the source (the slot
        // is dropped below, by name).
        let sub = ident(&names.subscription);
        for sql in [
            format!("ALTER SUBSCRIPTION {sub} DISABLE"),
            format!("ALTER SUBSCRIPTION {sub} SET (slot_name = NONE)"),
            format!("DROP SUBSCRIPTION {sub}"),
        ] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut *target)
                .await
                .map_err(db(format!("dropping subscription `{}`", names.subscription)))?;
        }
    }
    // The slot may still be active for a moment after the subscription's worker stops.
    for attempt in 0..50 {
        let active: Option<bool> =
            sqlx::query_scalar("SELECT active FROM pg_catalog.pg_replication_slots WHERE slot_name = $1")
                .bind(&names.slot)
                .fetch_optional(&mut *source)
                .await
                .map_err(db("looking up the replication slot"))?;
        match active {
            None => break,
            Some(true) if attempt < 49 => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            Some(_) => {
                sqlx::query("SELECT pg_catalog.pg_drop_replication_slot($1)")
                    .bind(&names.slot)
                    .execute(&mut *source)
                    .await
                    .map_err(db(format!("dropping replication slot `{}`", names.slot)))?;
                break;
            }
        }
    }
    // Table-sync slots of an interrupted initial copy are named `pg_<subscription oid>_sync_...`;
    // a subscription detached from its slot leaves them to us.
    if let Some(oid) = subscription {
        let leftovers: Vec<String> = sqlx::query_scalar(
            "SELECT slot_name::text FROM pg_catalog.pg_replication_slots WHERE starts_with(slot_name::text, $1)",
        )
        .bind(format!("pg_{oid}_sync_"))
        .fetch_all(&mut *source)
        .await
        .map_err(db("looking for table-sync slots"))?;
        for slot in leftovers {
            sqlx::query("SELECT pg_catalog.pg_drop_replication_slot($1)")
                .bind(&slot)
                .execute(&mut *source)
                .await
                .map_err(db(format!("dropping table-sync slot `{slot}`")))?;
        }
    }
    let sql = format!("DROP PUBLICATION IF EXISTS {}", ident(&names.publication));
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut *source)
        .await
        .map_err(db(format!("dropping publication `{}`", names.publication)))?;
    Ok(())
}

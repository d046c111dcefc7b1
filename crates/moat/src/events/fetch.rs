//! Batch fetch: the cursor of a subscription, the statement that locks it, and the relay's read of
//! the next batch from the publisher's outbox.
//!
//! A subscription's cursor is a pair of PostgreSQL snapshots in the subscriber's schema
//! (`moat_subscriptions`: `lo`, `hi`, `last_id`). A batch is every outbox row whose transaction is
//! visible in `hi` and was not in `lo`, in `id` order; a transaction still running when `hi` was
//! taken is not visible in it and lands in a later batch, whatever its id.

use std::collections::BTreeSet;

use moat_core::quote::literal;
use sqlx::postgres::PgRow;
use sqlx::{Column, PgPool, Row};

use super::handler::RawEvent;
use crate::Error;

/// The cursor as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cursor {
    /// Every transaction visible in this snapshot is consumed.
    pub(crate) lo: String,
    /// When a batch did not fit: the snapshot that bounds it.
    pub(crate) hi: Option<String>,
    /// When a batch did not fit: the last outbox id consumed of it.
    pub(crate) last_id: i64,
    /// The cluster `lo` and `hi` were taken in (`None`: a cursor from before moat recorded it,
    /// taken as the current cluster's).
    pub(crate) cluster: Option<String>,
    /// Outbox rows of other clusters than `cluster` with an id up to this one were consumed (or
    /// copied into the inbox) when the cursor was last re-based.
    pub(crate) moved_id: i64,
}

/// What a dispatcher sees once it holds a subscription's cursor.
#[derive(Debug)]
pub(crate) struct Locked {
    pub(crate) cursor: Cursor,
    /// Event types some process of the subscriber handles (registered in the database, the
    /// union over every process) and that the subscriber has not declared ignored.
    pub(crate) handled: Vec<String>,
    /// Keys with an event held in the inbox: later events of these keys wait behind it.
    pub(crate) blocked: BTreeSet<String>,
    /// The transport that ran last (`direct` or `jetstream`).
    pub(crate) transport: String,
    /// Events applied through JetStream that `lo` does not cover yet (`<tx>/<event id>`).
    pub(crate) applied: Vec<String>,
    /// The last JetStream stream sequence gone through.
    pub(crate) stream_seq: i64,
    /// When the row last changed.
    pub(crate) updated_at: chrono::DateTime<chrono::Utc>,
}

/// `BEGIN` follows, then this: the cursor row locked (`FOR UPDATE SKIP LOCKED`; no row when
/// another dispatcher holds it), then, in a statement of its own, the blocked keys. In READ
/// COMMITTED each statement takes a new snapshot, so the second one sees every event that the
/// previous holder of the lock parked: the blocked set is never older than the cursor.
pub(crate) fn lock_sql(subscriptions: &str, inbox: &str, publisher: &str) -> String {
    let publisher = literal(publisher);
    format!(
        "SELECT lo::text, hi::text, last_id, cluster, moved_id, handled, transport, applied, stream_seq, updated_at FROM {subscriptions} WHERE publisher = {publisher} FOR UPDATE SKIP LOCKED; \
         SELECT coalesce(array_agg(DISTINCT event_key), '{{}}') AS blocked FROM {inbox} WHERE publisher = {publisher}"
    )
}

/// Reads the rows of [`lock_sql`]; `None` when another dispatcher holds the cursor.
pub(crate) fn parse_lock(rows: &[PgRow]) -> Result<Option<Locked>, Error> {
    let mut cursor = None;
    let mut blocked = BTreeSet::new();
    for row in rows {
        if row.columns().iter().any(|c| c.name() == "blocked") {
            blocked = row.try_get::<Vec<String>, _>("blocked")?.into_iter().collect();
        } else {
            cursor = Some((
                Cursor {
                    lo: row.try_get("lo")?,
                    hi: row.try_get("hi")?,
                    last_id: row.try_get("last_id")?,
                    cluster: row.try_get("cluster")?,
                    moved_id: row.try_get("moved_id")?,
                },
                row.try_get::<Vec<String>, _>("handled")?,
                row.try_get::<String, _>("transport")?,
                row.try_get::<Vec<String>, _>("applied")?,
                row.try_get::<i64, _>("stream_seq")?,
                row.try_get::<chrono::DateTime<chrono::Utc>, _>("updated_at")?,
            ));
        }
    }
    Ok(cursor.map(|(cursor, handled, transport, applied, stream_seq, updated_at)| Locked {
        cursor,
        handled,
        blocked,
        transport,
        applied,
        stream_seq,
        updated_at,
    }))
}

/// A batch as the relay read it.
#[derive(Debug)]
pub(crate) struct Batch {
    /// The snapshot that bounds it.
    pub(crate) hi: String,
    /// Its rows in outbox `id` order.
    pub(crate) events: Vec<RawEvent>,
}

/// Reads the next batch after `cursor` as the relay: events of the `types` given, at most `limit`,
/// of the rows published in the cluster `here` (the cursor's; rows of other clusters were dealt
/// with when the cursor was re-based, [`moved`]).
pub(crate) async fn fetch(
    relay: &PgPool,
    outbox: &str,
    here: &str,
    cursor: &Cursor,
    types: &[String],
    limit: i64,
) -> Result<Batch, Error> {
    let here = literal(here);
    const COLUMNS: &str = "o.id, o.event_id, o.event_type, o.event_key, o.payload::text, o.correlation_id, o.causation_id, o.published_at";
    // One simple-query round trip: planner settings for this implicit transaction, then the
    // query with its values quoted by moat_core::quote. Freshly filled outbox slots have no
    // statistics yet, and a plan chosen on guesses could sort the whole backlog per batch.
    let types = format!("ARRAY[{}]::text[]", types.iter().map(|t| literal(t)).collect::<Vec<_>>().join(", "));
    let lo = format!("{}::pg_snapshot", literal(&cursor.lo));
    let sql = match &cursor.hi {
        // The rows visible to this statement are exactly those visible in the snapshot it
        // returns. The tx index bounds the search (consumed rows wait in the outbox until
        // their slot is truncated); `id + 0` keeps the planner from walking the id index.
        None => format!(
            "SET LOCAL enable_seqscan = off; \
             WITH s AS (SELECT pg_current_snapshot() AS snap) \
             SELECT s.snap::text AS hi, {COLUMNS} FROM s LEFT JOIN LATERAL (\
               SELECT * FROM {outbox} WHERE tx >= pg_snapshot_xmin({lo}) AND NOT pg_visible_in_snapshot(tx, {lo}) \
               AND event_type = ANY({types}) AND cluster = {here} ORDER BY id + 0 LIMIT {limit}) o ON true"
        ),
        // A batch that did not fit continues in id order from where it stopped.
        Some(hi) => {
            let hi_snapshot = format!("{}::pg_snapshot", literal(hi));
            format!(
                "SET LOCAL enable_seqscan = off; SET LOCAL enable_sort = off; \
             SELECT {hi_text} AS hi, {COLUMNS} FROM {outbox} o WHERE id > {last_id} \
             AND pg_visible_in_snapshot(tx, {hi_snapshot}) AND NOT pg_visible_in_snapshot(tx, {lo}) \
             AND event_type = ANY({types}) AND cluster = {here} ORDER BY id LIMIT {limit}",
                hi_text = literal(hi),
                last_id = cursor.last_id,
            )
        }
    };
    let rows = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).fetch_all(relay).await?;
    let mut hi = cursor.hi.clone().unwrap_or_else(|| cursor.lo.clone());
    let mut events = Vec::with_capacity(rows.len());
    for row in rows {
        hi = row.try_get("hi")?;
        if row.try_get::<Option<i64>, _>("id")?.is_none() {
            continue;
        }
        events.push(RawEvent::from_row(&row, "id")?);
    }
    Ok(Batch { hi, events })
}

/// Whether the outbox holds an event of `types` of the cluster `here` beyond the snapshot `lo`.
pub(crate) async fn anything_after(
    relay: &PgPool,
    outbox: &str,
    here: &str,
    lo: &str,
    types: &[String],
) -> Result<bool, Error> {
    let sql = format!(
        "SELECT EXISTS (SELECT 1 FROM {outbox} WHERE tx >= pg_snapshot_xmin($1::pg_snapshot) AND NOT pg_visible_in_snapshot(tx, $1::pg_snapshot) AND event_type = ANY($2) AND cluster = $3)"
    );
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(lo).bind(types).bind(here).fetch_one(relay).await?)
}

/// The current cluster's identity, as the outbox records it.
pub(crate) async fn cluster_id(relay: &PgPool) -> Result<String, Error> {
    let sql = format!("SELECT {}", moat_admin::internal::CLUSTER_ID);
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(relay).await?)
}

/// What re-basing a cursor taken in another cluster finds, read as the relay in the cluster
/// `here`: every outbox row of another cluster that the cursor has not consumed (of the cluster
/// the cursor was taken in: not consumed by its snapshots, which are comparable with that
/// cluster's `tx`; of any other cluster: every row after `moved_id`, the cursor never saw them),
/// of the `types` given, in id order; and the highest outbox id (every row of a cluster the
/// outbox moves to later gets a higher one, its sequence continues).
pub(crate) async fn moved(
    relay: &PgPool,
    outbox: &str,
    here: &str,
    cursor: &Cursor,
    types: &[String],
) -> Result<(Vec<RawEvent>, i64), Error> {
    let old = cursor.cluster.as_deref().unwrap_or(here);
    let consumed = match &cursor.hi {
        None => "pg_visible_in_snapshot(o.tx, $3::pg_snapshot)".to_owned(),
        Some(_) => "(pg_visible_in_snapshot(o.tx, $3::pg_snapshot) OR (pg_visible_in_snapshot(o.tx, $4::pg_snapshot) AND o.id <= $5))"
            .to_owned(),
    };
    let sql = format!(
        "SELECT o.id, o.event_id, o.event_type, o.event_key, o.payload::text, o.correlation_id, o.causation_id, o.published_at \
         FROM {outbox} o WHERE o.cluster <> $1 AND o.event_type = ANY($7) \
         AND CASE WHEN o.cluster = $2 THEN NOT {consumed} ELSE o.id > $6 END ORDER BY o.id"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(here)
        .bind(old)
        .bind(&cursor.lo)
        .bind(cursor.hi.as_deref().unwrap_or(&cursor.lo))
        .bind(cursor.last_id)
        .bind(cursor.moved_id)
        .bind(types)
        .fetch_all(relay)
        .await?;
    let events = rows.iter().map(|row| RawEvent::from_row(row, "id")).collect::<Result<Vec<_>, _>>()?;
    let sql = format!("SELECT coalesce(max(id), 0) FROM {outbox}");
    let max_id: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(relay).await?;
    Ok((events, max_id))
}

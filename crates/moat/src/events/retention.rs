//! Retention: subscribers report how far they consumed to the publisher's side
//! (`moat_outbox_progress`), and outbox slots that every subscriber in the manifest has consumed
//! are truncated.
//!
//! Provisioning creates a progress row (nothing consumed) for every subscriber in the manifest
//! and removes the rows of subscribers that left it, so a subscriber that has not started yet
//! holds retention back from the moment it is in the manifest, and one that is gone does not.
//!
//! Progress names the cluster its `consumed_below` was taken in; a slot is truncated only when
//! every subscriber reported progress in the current cluster (so each has re-based its cursor
//! after a move, and holds in its inbox what it had not consumed of the rows of other clusters).

use std::time::Duration;

use moat_admin::internal::{OUTBOX_PROGRESS, OUTBOX_SLOT_SECONDS, OUTBOX_SLOTS, outbox_partition};
use moat_core::quote::qualified;
use sqlx::PgPool;
use tokio::sync::watch;

use super::subscription::Subscription;
use super::tx::RawTx;
use crate::Error;

impl Subscription {
    /// Tells the publisher's side how far this subscriber got, so that consumed outbox slots can
    /// be truncated. It lags the real cursor, which is safe: it only delays truncation.
    pub(crate) async fn report_progress(&self) -> Result<(), Error> {
        let sql = format!("SELECT lo::text, cluster FROM {} WHERE publisher = $1", self.tables.subscriptions);
        let row: Option<(String, Option<String>)> =
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(&self.publisher).fetch_optional(&self.pool()?).await?;
        let here = self.here();
        let Some((lo, cluster)) = row else { return Ok(()) };
        // A cursor not yet re-based after a move says nothing about this cluster's transactions.
        if cluster.is_some_and(|c| c != here) {
            return Ok(());
        }
        // Progress of another cluster (or of none yet) is replaced, never compared.
        let sql = format!(
            "INSERT INTO {progress} AS p (subscriber, consumed_below, cluster) VALUES ($1, pg_snapshot_xmin($2::pg_snapshot), $3) \
             ON CONFLICT (subscriber) DO UPDATE SET consumed_below = CASE WHEN p.cluster = excluded.cluster \
               THEN greatest(p.consumed_below, excluded.consumed_below) ELSE excluded.consumed_below END, cluster = excluded.cluster, updated_at = now() \
             WHERE p.cluster IS DISTINCT FROM excluded.cluster OR p.consumed_below < excluded.consumed_below",
            progress = self.tables.progress
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&self.subscriber)
            .bind(&lo)
            .bind(&here)
            .execute(&self.relay().await?)
            .await?;
        Ok(())
    }
}

/// Truncates consumed outbox slots of `schema` (of module `publisher`, in the database it lives
/// in now) every `interval` until stopped.
pub(crate) async fn retention(
    app: crate::Moat,
    publisher: String,
    schema: String,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! { _ = tokio::time::sleep(interval) => {}, _ = stop.changed() => return }
        let relay = match app.relay_for(&publisher).await {
            Ok(relay) => relay,
            Err(e) => {
                tracing::debug!(schema, error = %e, "outbox retention skipped this round");
                continue;
            }
        };
        if let Err(e) = truncate_consumed(&relay, &schema).await {
            tracing::debug!(schema, error = %e, "outbox retention skipped this round");
        }
    }
}

/// One round of retention for the outbox in `schema` (run by the dispatcher every
/// `retention_interval`; public for tests and benchmarks): truncates the slots that every
/// subscriber with a progress row has consumed and that are neither the current slot nor the
/// next one. The check runs under an ACCESS EXCLUSIVE lock on the slot (so no transaction can
/// still be inserting into it) with a short lock timeout, so publishers never wait on it for
/// long; TRUNCATE leaves no dead tuples behind. Returns how many slots were truncated.
pub async fn truncate_consumed(relay: &PgPool, schema: &str) -> Result<usize, Error> {
    let current: i32 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT (floor(extract(epoch FROM now()) / {OUTBOX_SLOT_SECONDS})::bigint % {OUTBOX_SLOTS})::int"
    )))
    .fetch_one(relay)
    .await?;
    let progress = qualified(schema, OUTBOX_PROGRESS);
    let mut truncated = 0;
    for step in 2..OUTBOX_SLOTS as i32 {
        let slot = ((current + step) % OUTBOX_SLOTS as i32) as u16;
        let partition = qualified(schema, &outbox_partition(slot));
        let conn = relay.acquire().await?;
        let lock = format!("SET LOCAL lock_timeout = '100ms'; LOCK TABLE {partition} IN ACCESS EXCLUSIVE MODE");
        let mut tx = match RawTx::begin_with(conn, &lock).await {
            Ok((tx, _)) => tx,
            // A transaction still inserting into (or reading) the slot: try again next round.
            Err(Error::Database(e)) if moat_admin::error::sqlstate(&e).as_deref() == Some("55P03") => continue,
            Err(e) => return Err(e),
        };
        let ready: Option<bool> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT EXISTS (SELECT 1 FROM {partition}) AND EXISTS (SELECT 1 FROM {progress}) \
             AND NOT EXISTS (SELECT 1 FROM {progress} WHERE cluster IS DISTINCT FROM {here}) \
             AND coalesce((SELECT max(tx) FROM {partition} WHERE cluster = {here}), '0'::xid8) < (SELECT min(consumed_below) FROM {progress})",
            here = moat_admin::internal::CLUSTER_ID
        )))
        .fetch_one(&mut *tx)
        .await?;
        if ready == Some(true) {
            tx.commit(&format!("TRUNCATE {partition}; ")).await?;
            truncated += 1;
        } else {
            tx.rollback().await?;
        }
    }
    Ok(truncated)
}

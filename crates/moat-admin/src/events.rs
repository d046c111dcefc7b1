//! Operations on module events (`moat events status | dead | retry`), read as the admin.

use moat_core::manifest::Manifest;
use moat_core::quote::qualified;
use serde::Serialize;
use sqlx::Row;

use crate::error::{AdminError, db};
use crate::internal::{INBOX, OUTBOX, SUBSCRIPTIONS};
use crate::target::DatabaseUrl;

/// Delivery state of one subscription (a subscriber module and a module it depends on).
#[derive(Debug, Clone, Serialize)]
pub struct SubscriptionStatus {
    /// Subscriber module.
    pub subscriber: String,
    /// Publishing module.
    pub publisher: String,
    /// Whether a dispatcher has registered it.
    pub started: bool,
    /// Outbox events not yet consumed.
    pub lag_events: i64,
    /// Age of the oldest unconsumed event, in seconds.
    pub lag_seconds: f64,
    /// Held events waiting behind a failed event of their key.
    pub waiting: i64,
    /// Held events being retried.
    pub retrying: i64,
    /// Dead letters.
    pub dead: i64,
    /// When the cursor last moved.
    pub updated_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// A dead letter.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// Subscriber module.
    pub subscriber: String,
    /// Publishing module.
    pub publisher: String,
    /// The event's id (what `moat events retry` takes).
    pub event_id: uuid::Uuid,
    /// Event type.
    pub event_type: String,
    /// Ordering key.
    pub key: String,
    /// Attempts made.
    pub attempts: i32,
    /// The last error.
    pub last_error: Option<String>,
    /// When it was published.
    pub published_at: chrono::DateTime<chrono::Utc>,
}

/// Which dead letters to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryTarget {
    /// One event (in every subscriber where it is dead).
    Event(uuid::Uuid),
    /// Every dead letter.
    All,
}

fn pairs(manifest: &Manifest) -> Vec<(&moat_core::manifest::Module, &moat_core::manifest::Module)> {
    let mut pairs = Vec::new();
    for subscriber in &manifest.modules {
        for dependency in &subscriber.depends_on {
            if let Some(publisher) = manifest.module(dependency.as_str()) {
                pairs.push((subscriber, publisher));
            }
        }
    }
    pairs
}

/// `moat events status`.
pub async fn status(url: &DatabaseUrl, manifest: &Manifest) -> Result<Vec<SubscriptionStatus>, AdminError> {
    let mut conn = crate::connect(url).await?;
    let mut statuses = Vec::new();
    for (subscriber, publisher) in pairs(manifest) {
        let subscriptions = qualified(subscriber.schema.as_str(), SUBSCRIPTIONS);
        let inbox = qualified(subscriber.schema.as_str(), INBOX);
        let outbox = qualified(publisher.schema.as_str(), OUTBOX);
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL AND to_regclass($2) IS NOT NULL")
            .bind(&subscriptions)
            .bind(&outbox)
            .fetch_one(&mut conn)
            .await
            .map_err(db("looking up event tables"))?;
        if !exists {
            continue;
        }
        let sql = format!(
            "WITH s AS (SELECT lo, hi, last_id, updated_at FROM {subscriptions} WHERE publisher = $1), \
             pending AS (SELECT o.published_at FROM {outbox} o, s \
               WHERE o.tx >= pg_snapshot_xmin(s.lo) AND NOT (pg_visible_in_snapshot(o.tx, s.lo) \
                 OR (s.hi IS NOT NULL AND pg_visible_in_snapshot(o.tx, s.hi) AND o.id <= s.last_id))) \
             SELECT (SELECT count(*) FROM s) > 0 AS started, \
                    (SELECT count(*) FROM pending) AS lag_events, \
                    coalesce((SELECT extract(epoch FROM now() - min(published_at))::float8 FROM pending), 0) AS lag_seconds, \
                    (SELECT count(*) FROM {inbox} WHERE publisher = $1 AND state = 'waiting') AS waiting, \
                    (SELECT count(*) FROM {inbox} WHERE publisher = $1 AND state = 'retry') AS retrying, \
                    (SELECT count(*) FROM {inbox} WHERE publisher = $1 AND state = 'dead') AS dead, \
                    (SELECT updated_at FROM s) AS updated_at"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(publisher.name.as_str())
            .fetch_one(&mut conn)
            .await
            .map_err(db("reading subscription status"))?;
        let started: bool = row.get("started");
        statuses.push(SubscriptionStatus {
            subscriber: subscriber.name.to_string(),
            publisher: publisher.name.to_string(),
            started,
            lag_events: if started { row.get("lag_events") } else { 0 },
            lag_seconds: if started { row.get("lag_seconds") } else { 0.0 },
            waiting: row.get("waiting"),
            retrying: row.get("retrying"),
            dead: row.get("dead"),
            updated_at: row.get("updated_at"),
        });
    }
    crate::provision::close(conn).await;
    Ok(statuses)
}

/// `moat events dead`.
pub async fn dead(url: &DatabaseUrl, manifest: &Manifest) -> Result<Vec<DeadLetter>, AdminError> {
    let mut conn = crate::connect(url).await?;
    let mut letters = Vec::new();
    for subscriber in manifest.modules.iter().filter(|m| !m.depends_on.is_empty()) {
        let inbox = qualified(subscriber.schema.as_str(), INBOX);
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(&inbox)
            .fetch_one(&mut conn)
            .await
            .map_err(db("looking up the inbox"))?;
        if !exists {
            continue;
        }
        let sql = format!(
            "SELECT publisher, event_id, event_type, event_key, attempts, last_error, published_at FROM {inbox} WHERE state = 'dead' ORDER BY id"
        );
        for row in
            sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(&mut conn).await.map_err(db("reading dead letters"))?
        {
            letters.push(DeadLetter {
                subscriber: subscriber.name.to_string(),
                publisher: row.get("publisher"),
                event_id: row.get("event_id"),
                event_type: row.get("event_type"),
                key: row.get("event_key"),
                attempts: row.get("attempts"),
                last_error: row.get("last_error"),
                published_at: row.get("published_at"),
            });
        }
    }
    crate::provision::close(conn).await;
    Ok(letters)
}

/// `moat events retry`: dead letters go back to the retry queue with their attempts reset; the
/// running dispatcher applies them (in key order) on its next round. Returns how many.
pub async fn retry(url: &DatabaseUrl, manifest: &Manifest, target: RetryTarget) -> Result<u64, AdminError> {
    let mut conn = crate::connect(url).await?;
    let mut count = 0;
    for subscriber in manifest.modules.iter().filter(|m| !m.depends_on.is_empty()) {
        let inbox = qualified(subscriber.schema.as_str(), INBOX);
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(&inbox)
            .fetch_one(&mut conn)
            .await
            .map_err(db("looking up the inbox"))?;
        if !exists {
            continue;
        }
        let sql = format!(
            "UPDATE {inbox} SET state = 'retry', attempts = 0, next_attempt_at = now() WHERE state = 'dead' AND ($1::uuid IS NULL OR event_id = $1)"
        );
        let event = match target {
            RetryTarget::Event(id) => Some(id),
            RetryTarget::All => None,
        };
        count += sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(event)
            .execute(&mut conn)
            .await
            .map_err(db("retrying dead letters"))?
            .rows_affected();
    }
    crate::provision::close(conn).await;
    Ok(count)
}

//! Operations on module events (`moat events status | dead | retry`). The admin session only
//! reads the catalog; module tables are read and written as the module's runtime role, outboxes
//! and progress as the relay.
//!
//! Every module is read in the database it lives in ([`crate::placement`]): a subscriber's
//! cursor and inbox in the subscriber's database, the publisher's outbox and progress in the
//! publisher's. A cursor's snapshots are taken by the relay in the publisher's database (that is
//! where the transactions they judge ran), so the lag of a subscription across databases is the
//! cursor read in one database applied to the outbox read in the other.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use moat_core::manifest::Manifest;
use moat_core::quote::qualified;
use serde::Serialize;
use sqlx::PgConnection;
use sqlx::Row;

use crate::databases::{DatabaseKey, Databases};
use crate::error::{AdminError, db};
use crate::internal::{CLUSTER_ID, INBOX, InboxState, OUTBOX, OUTBOX_PROGRESS, SUBSCRIPTIONS};
use crate::placement::Placement;
use crate::target::{DatabaseUrl, password_from_env};
use crate::up::Target;

/// Delivery state of one subscription (a subscriber module and a module it depends on).
#[derive(Debug, Clone, Serialize)]
pub struct SubscriptionStatus {
    /// Subscriber module.
    pub subscriber: String,
    /// Publishing module.
    pub publisher: String,
    /// The `[databases]` key of the subscriber's database, when it is not the main one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// The `[databases]` key of the publisher's database, when it is not the main one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publisher_database: Option<String>,
    /// Whether a dispatcher has registered it.
    pub started: bool,
    /// Event types some process of the subscriber handles.
    pub handled_types: Vec<String>,
    /// Event types the subscriber declared ignored.
    pub ignored_types: Vec<String>,
    /// Outbox events of the handled types not yet consumed.
    pub lag_events: i64,
    /// Age of the oldest of them, in seconds.
    pub lag_seconds: f64,
    /// Outbox events beyond the cursor that no process of the subscriber handles (they are
    /// passed over, not delivered).
    pub ignored: i64,
    /// Held events (waiting and retrying).
    pub held: i64,
    /// Held events waiting behind a failed event of their key, or for a process that handles them.
    pub waiting: i64,
    /// Held events being retried.
    pub retrying: i64,
    /// Dead letters.
    pub dead: i64,
    /// When the cursor last moved.
    pub updated_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// A subscriber that is no longer in the manifest but still has a progress row beside a
/// publisher's outbox (`moat provision` removes it; until then it holds retention back).
#[derive(Debug, Clone, Serialize)]
pub struct RemovedSubscriber {
    /// Publishing module.
    pub publisher: String,
    /// The `[databases]` key of the publisher's database, when it is not the main one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// The subscriber's name as recorded.
    pub subscriber: String,
}

/// `moat events status`: every subscription, and subscribers that left the manifest.
#[derive(Debug, Clone, Serialize)]
pub struct EventsStatus {
    /// One per (subscriber, publisher) pair whose tables exist.
    pub subscriptions: Vec<SubscriptionStatus>,
    /// Progress rows of subscribers no longer in the manifest.
    pub removed_subscribers: Vec<RemovedSubscriber>,
}

/// A dead letter.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// Subscriber module.
    pub subscriber: String,
    /// The `[databases]` key of the subscriber's database, when it is not the main one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
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

/// Sessions to the project's databases, opened when first needed and closed together: the
/// admin's (catalog lookups only) and logins as project roles, per database.
struct Sessions<'t> {
    databases: &'t Databases,
    placement: Placement,
    open: BTreeMap<(DatabaseKey, Option<String>), PgConnection>,
    clusters: BTreeMap<DatabaseKey, String>,
}

impl<'t> Sessions<'t> {
    async fn new(target: &'t Target, manifest: &Manifest) -> Result<Self, AdminError> {
        let placement = crate::placement::locate(manifest, &target.databases).await?;
        Ok(Self { databases: &target.databases, placement, open: BTreeMap::new(), clusters: BTreeMap::new() })
    }

    /// The database a module lives in now.
    fn of(&self, module: &str) -> DatabaseKey {
        self.placement.at(module).cloned()
    }

    /// The admin's session in `key` (`role` `None`), or a login as `role` there (its password from
    /// the environment, as the runtime library does).
    async fn get(&mut self, key: &DatabaseKey, role: Option<&str>) -> Result<&mut PgConnection, AdminError> {
        let slot = (key.clone(), role.map(str::to_owned));
        match self.open.entry(slot) {
            Entry::Occupied(open) => Ok(open.into_mut()),
            Entry::Vacant(slot) => {
                let url = self.databases.url(key.as_ref())?;
                let conn = match role {
                    None => crate::connect(url).await?,
                    Some(role) => crate::connect(&url.with_login(role, password_from_env(role).as_deref())).await?,
                };
                Ok(slot.insert(conn))
            }
        }
    }

    /// Whether `relation` exists in `key`, read from the catalog as the admin (no module object is
    /// touched).
    async fn exists(&mut self, key: &DatabaseKey, relation: &str) -> Result<bool, AdminError> {
        let admin = self.get(key, None).await?;
        sqlx::query_scalar("SELECT pg_catalog.to_regclass($1) IS NOT NULL")
            .bind(relation)
            .fetch_one(admin)
            .await
            .map_err(db("looking up event tables"))
    }

    /// The identity of the cluster that holds `key`, read as the relay.
    async fn cluster(&mut self, key: &DatabaseKey, relay: &str) -> Result<String, AdminError> {
        if let Some(cluster) = self.clusters.get(key) {
            return Ok(cluster.clone());
        }
        let conn = self.get(key, Some(relay)).await?;
        let cluster: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT {CLUSTER_ID}")))
            .fetch_one(conn)
            .await
            .map_err(db("reading the cluster's identity"))?;
        self.clusters.insert(key.clone(), cluster.clone());
        Ok(cluster)
    }

    async fn close(self) {
        for (_, conn) in self.open {
            crate::provision::close(conn).await;
        }
    }
}

fn key_name(key: &DatabaseKey) -> Option<String> {
    key.as_ref().map(ToString::to_string)
}

/// [`status_all`] for a project in one database.
pub async fn status(url: &DatabaseUrl, manifest: &Manifest) -> Result<EventsStatus, AdminError> {
    status_all(&Target::new(Databases::single(url.clone())), manifest).await
}

/// [`dead_all`] for a project in one database.
pub async fn dead(url: &DatabaseUrl, manifest: &Manifest) -> Result<Vec<DeadLetter>, AdminError> {
    dead_all(&Target::new(Databases::single(url.clone())), manifest).await
}

/// [`retry_all`] for a project in one database.
pub async fn retry(url: &DatabaseUrl, manifest: &Manifest, target: RetryTarget) -> Result<u64, AdminError> {
    retry_all(&Target::new(Databases::single(url.clone())), manifest, target).await
}

/// `moat events status`, in every database. The subscriber's cursor and inbox are read as the
/// subscriber's runtime role in its database, the publisher's outbox and progress as the relay in
/// the publisher's: never as the admin.
pub async fn status_all(target: &Target, manifest: &Manifest) -> Result<EventsStatus, AdminError> {
    let mut sessions = Sessions::new(target, manifest).await?;
    let result = status_in(&mut sessions, manifest).await;
    sessions.close().await;
    result
}

async fn status_in(sessions: &mut Sessions<'_>, manifest: &Manifest) -> Result<EventsStatus, AdminError> {
    let roles = manifest.roles();
    let relay = roles.relay();
    let mut statuses = Vec::new();
    let mut removed = Vec::new();
    for publisher in manifest.modules.iter() {
        let at = sessions.of(publisher.name.as_str());
        let progress = qualified(publisher.schema.as_str(), OUTBOX_PROGRESS);
        if !manifest.uses_events() || !sessions.exists(&at, &progress).await? {
            continue;
        }
        let conn = sessions.get(&at, Some(&relay)).await?;
        let recorded: Vec<String> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT subscriber FROM {progress} ORDER BY subscriber")))
                .fetch_all(conn)
                .await
                .map_err(db("reading outbox progress"))?;
        for subscriber in recorded {
            // The relay's row when the manifest relays this module; a subscriber's when it reads
            // the outbox (one that reads JetStream does not hold the outbox back).
            let subscribes = if subscriber == crate::internal::RELAY_PROGRESS {
                manifest.relayed(&publisher.name)
            } else {
                manifest.module(&subscriber).is_some_and(|m| {
                    m.depends_on.iter().any(|d| d.as_str() == publisher.name.as_str())
                        && manifest.transport(m, &publisher.name) == moat_core::manifest::Transport::Direct
                })
            };
            if !subscribes {
                removed.push(RemovedSubscriber {
                    publisher: publisher.name.to_string(),
                    database: key_name(&at),
                    subscriber,
                });
            }
        }
    }
    for (subscriber, publisher) in pairs(manifest) {
        let (sub_at, pub_at) = (sessions.of(subscriber.name.as_str()), sessions.of(publisher.name.as_str()));
        let subscriptions = qualified(subscriber.schema.as_str(), SUBSCRIPTIONS);
        let inbox = qualified(subscriber.schema.as_str(), INBOX);
        let outbox = qualified(publisher.schema.as_str(), OUTBOX);
        if !sessions.exists(&sub_at, &subscriptions).await? || !sessions.exists(&pub_at, &outbox).await? {
            continue;
        }
        let runtime = sessions.get(&sub_at, Some(&roles.module_runtime(&subscriber.name))).await?;
        let cursor = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT lo::text, hi::text, last_id, handled, ignored, updated_at, cluster, moved_id FROM {subscriptions} WHERE publisher = $1"
        )))
        .bind(publisher.name.as_str())
        .fetch_optional(&mut *runtime)
        .await
        .map_err(db("reading the subscription"))?;
        let sql = format!(
            "SELECT count(*) FILTER (WHERE state = {waiting}) AS waiting, count(*) FILTER (WHERE state = {retry}) AS retrying, \
             count(*) FILTER (WHERE state = {dead}) AS dead FROM {inbox} WHERE publisher = $1",
            waiting = InboxState::Waiting.sql(),
            retry = InboxState::Retry.sql(),
            dead = InboxState::Dead.sql(),
        );
        let held = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(publisher.name.as_str())
            .fetch_one(&mut *runtime)
            .await
            .map_err(db("reading the inbox"))?;
        let (waiting, retrying, dead): (i64, i64, i64) = (held.get("waiting"), held.get("retrying"), held.get("dead"));
        let mut status = SubscriptionStatus {
            subscriber: subscriber.name.to_string(),
            publisher: publisher.name.to_string(),
            database: key_name(&sub_at),
            publisher_database: key_name(&pub_at),
            started: cursor.is_some(),
            handled_types: Vec::new(),
            ignored_types: Vec::new(),
            lag_events: 0,
            lag_seconds: 0.0,
            ignored: 0,
            held: waiting + retrying,
            waiting,
            retrying,
            dead,
            updated_at: None,
        };
        if let Some(cursor) = cursor {
            status.handled_types = cursor.get("handled");
            status.ignored_types = cursor.get("ignored");
            status.updated_at = cursor.get("updated_at");
            // The relay took the cursor's snapshots in the publisher's database: its cluster is
            // the one they are compared with.
            let here = sessions.cluster(&pub_at, &relay).await?;
            // Rows of the cursor's cluster are pending unless its snapshots consumed them. A
            // cursor of another cluster (a moved database whose dispatcher has not run yet) will
            // be re-based: then every row of this cluster is pending too, and of any third
            // cluster every row after `moved_id` (as the dispatcher's re-base counts them).
            let cluster: String = cursor.get::<Option<String>, _>("cluster").unwrap_or_else(|| here.clone());
            let consumed = "(pg_visible_in_snapshot(o.tx, $1::pg_snapshot) \
                 OR ($2::pg_snapshot IS NOT NULL AND pg_visible_in_snapshot(o.tx, $2::pg_snapshot) AND o.id <= $3))";
            let pending = if cluster == here {
                format!("o.cluster = $5 AND o.tx >= pg_snapshot_xmin($1::pg_snapshot) AND NOT {consumed}")
            } else {
                format!("CASE WHEN o.cluster = $5 THEN NOT {consumed} WHEN o.cluster = $6 THEN true ELSE o.id > $7 END")
            };
            let sql = format!(
                "WITH pending AS (SELECT o.event_type, o.published_at FROM {outbox} o WHERE {pending}) \
                 SELECT count(*) FILTER (WHERE event_type = ANY ($4)) AS lag_events, \
                        coalesce(extract(epoch FROM now() - min(published_at) FILTER (WHERE event_type = ANY ($4)))::float8, 0) AS lag_seconds, \
                        count(*) FILTER (WHERE event_type <> ALL ($4)) AS ignored FROM pending"
            );
            let relay_conn = sessions.get(&pub_at, Some(&relay)).await?;
            let lag = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(cursor.get::<String, _>("lo"))
                .bind(cursor.get::<Option<String>, _>("hi"))
                .bind(cursor.get::<i64, _>("last_id"))
                .bind(&status.handled_types)
                .bind(&cluster)
                .bind(here.as_str())
                .bind(cursor.get::<i64, _>("moved_id"))
                .fetch_one(relay_conn)
                .await
                .map_err(db("reading subscription lag"))?;
            status.lag_events = lag.get("lag_events");
            status.lag_seconds = lag.get("lag_seconds");
            status.ignored = lag.get("ignored");
        }
        statuses.push(status);
    }
    Ok(EventsStatus { subscriptions: statuses, removed_subscribers: removed })
}

/// `moat events dead`, in every database, read as each subscriber's runtime role in its own.
pub async fn dead_all(target: &Target, manifest: &Manifest) -> Result<Vec<DeadLetter>, AdminError> {
    let mut sessions = Sessions::new(target, manifest).await?;
    let result = dead_in(&mut sessions, manifest).await;
    sessions.close().await;
    result
}

async fn dead_in(sessions: &mut Sessions<'_>, manifest: &Manifest) -> Result<Vec<DeadLetter>, AdminError> {
    let mut letters = Vec::new();
    for subscriber in manifest.modules.iter().filter(|m| !m.depends_on.is_empty()) {
        let at = sessions.of(subscriber.name.as_str());
        let inbox = qualified(subscriber.schema.as_str(), INBOX);
        if !sessions.exists(&at, &inbox).await? {
            continue;
        }
        let runtime = sessions.get(&at, Some(&manifest.roles().module_runtime(&subscriber.name))).await?;
        let sql = format!(
            "SELECT publisher, event_id, event_type, event_key, attempts, last_error, published_at FROM {inbox} WHERE state = {} ORDER BY id",
            InboxState::Dead.sql()
        );
        let rows =
            sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(runtime).await.map_err(db("reading dead letters"))?;
        for row in rows {
            letters.push(DeadLetter {
                subscriber: subscriber.name.to_string(),
                database: key_name(&at),
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
    Ok(letters)
}

/// `moat events retry`, in every database: dead letters go back to the retry queue with their
/// attempts reset; the running dispatcher applies them (in key order) on its next round. Returns
/// how many. The inbox is written as the subscriber's runtime role in its own database (whatever
/// its owner hung on the table runs with that role's rights, never the admin's).
pub async fn retry_all(target: &Target, manifest: &Manifest, which: RetryTarget) -> Result<u64, AdminError> {
    let mut sessions = Sessions::new(target, manifest).await?;
    let result = retry_in(&mut sessions, manifest, which).await;
    sessions.close().await;
    result
}

async fn retry_in(sessions: &mut Sessions<'_>, manifest: &Manifest, which: RetryTarget) -> Result<u64, AdminError> {
    let mut count = 0;
    for subscriber in manifest.modules.iter().filter(|m| !m.depends_on.is_empty()) {
        let at = sessions.of(subscriber.name.as_str());
        let inbox = qualified(subscriber.schema.as_str(), INBOX);
        if !sessions.exists(&at, &inbox).await? {
            continue;
        }
        let sql = format!(
            "UPDATE {inbox} SET state = {retry}, attempts = 0, next_attempt_at = now() WHERE state = {dead} AND ($1::uuid IS NULL OR event_id = $1)",
            retry = InboxState::Retry.sql(),
            dead = InboxState::Dead.sql(),
        );
        let event = match which {
            RetryTarget::Event(id) => Some(id),
            RetryTarget::All => None,
        };
        let runtime = sessions.get(&at, Some(&manifest.roles().module_runtime(&subscriber.name))).await?;
        let done = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(event).execute(runtime).await;
        count += done.map_err(db("retrying dead letters"))?.rows_affected();
    }
    Ok(count)
}

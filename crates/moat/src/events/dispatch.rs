//! Delivery: one task per (subscriber, publisher) pair reads the publisher's outbox as the relay
//! role and applies batches in transactions on the subscriber's own connection.
//!
//! A subscription's cursor is a pair of PostgreSQL snapshots in the subscriber's schema
//! (`moat_subscriptions`: `lo`, `hi`, `last_id`). A batch is every outbox row whose transaction is
//! visible in `hi` and was not in `lo`, in `id` order; a transaction still running when `hi` was
//! taken is not visible in it and lands in a later batch, whatever its id. The cursor row is locked
//! (`FOR UPDATE SKIP LOCKED`) for the batch and updated in the same transaction as the handlers'
//! writes, so two dispatchers never apply one event twice, and a crash anywhere re-delivers the
//! batch to a subscriber that has applied none of it.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use moat_admin::internal::{
    INBOX, OUTBOX_PROGRESS, OUTBOX_SLOT_SECONDS, OUTBOX_SLOTS, SUBSCRIPTIONS, outbox_partition,
};
use moat_core::quote::{literal, qualified};
use sqlx::{PgConnection, PgPool, Row};
use tokio::sync::watch;
use uuid::Uuid;

use super::publish::{EventMeta, PendingEvent, outbox_insert, outbox_table, pending_event};
use super::{Envelope, Event};
use crate::notify::{Notifier, channel_name};
use crate::{Error, Moat};

/// What a handler returns on failure: any error (it is recorded with the held event).
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// Handles events of type `E` for a subscriber module.
///
/// ```
/// # use moat::events::{Envelope, Event, Handler, HandlerContext, HandlerError};
/// # #[derive(serde::Serialize, serde::Deserialize)] struct CustomerRenamed { id: i64, name: String, version: i64 }
/// # impl Event for CustomerRenamed { const MODULE: &'static str = "customers"; const TYPE: &'static str = "CustomerRenamed"; fn key(&self) -> String { self.id.to_string() } }
/// struct Snapshots;
///
/// impl Handler<CustomerRenamed> for Snapshots {
///     async fn handle(&self, ctx: &mut HandlerContext<'_>, event: &Envelope<CustomerRenamed>) -> Result<(), HandlerError> {
///         moat::events::SnapshotUpsert::new("customer_snapshots", "customer_id", event.payload.id)
///             .version("version", event.payload.version)
///             .set("name", event.payload.name.clone())
///             .execute(ctx)
///             .await?;
///         Ok(())
///     }
/// }
/// ```
pub trait Handler<E: Event>: Send + Sync + 'static {
    /// Applies one event inside the subscriber's transaction (`ctx` dereferences to its
    /// connection). An error rolls back this event's writes; it is retried later.
    fn handle(
        &self,
        ctx: &mut HandlerContext<'_>,
        event: &Envelope<E>,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// Applies consecutive events of this type in one go (they share the batch's transaction).
    /// The default calls [`Handler::handle`] for each; override it to write a batch with one
    /// statement (a snapshot keeps the newest event per key). When it fails, the batch is rolled
    /// back and redone event by event with [`Handler::handle`], so that only the failing event is
    /// held back.
    fn handle_batch(
        &self,
        ctx: &mut HandlerContext<'_>,
        events: &[Envelope<E>],
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        async move {
            for event in events {
                self.handle(ctx, event).await?;
            }
            Ok(())
        }
    }
}

/// The subscriber's transaction while a handler runs: its connection, and a way to publish
/// events caused by the one being handled (written with the batch's commit).
#[derive(Debug)]
pub struct HandlerContext<'c> {
    conn: &'c mut PgConnection,
    subscriber: &'c str,
    has_outbox: bool,
    event_id: Uuid,
    correlation_id: Option<Uuid>,
    published: Vec<PendingEvent>,
}

impl HandlerContext<'_> {
    /// The subscriber module.
    pub fn subscriber(&self) -> &str {
        self.subscriber
    }

    /// Publishes an event of the subscriber module, caused by the event being handled.
    pub fn publish<E: Event>(&mut self, event: &E) -> Result<Uuid, Error> {
        let meta = EventMeta {
            correlation_id: self.correlation_id.or(Some(self.event_id)),
            causation_id: Some(self.event_id),
        };
        let pending = pending_event(self.subscriber, self.has_outbox, event, meta)?;
        let id = pending.id;
        self.published.push(pending);
        Ok(id)
    }
}

impl Deref for HandlerContext<'_> {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        self.conn
    }
}

impl DerefMut for HandlerContext<'_> {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.conn
    }
}

/// An outbox row as the relay reads it.
#[derive(Debug, Clone)]
struct RawEvent {
    position: i64,
    id: Uuid,
    event_type: String,
    key: String,
    payload: String,
    correlation_id: Option<Uuid>,
    causation_id: Option<Uuid>,
    published_at: chrono::DateTime<chrono::Utc>,
}

trait ErasedHandler: Send + Sync {
    fn handle<'a>(
        &'a self,
        ctx: &'a mut HandlerContext<'_>,
        raw: &'a RawEvent,
        publisher: &'a str,
    ) -> BoxFuture<'a, Result<(), HandlerError>>;
    fn handle_batch<'a>(
        &'a self,
        ctx: &'a mut HandlerContext<'_>,
        raws: &'a [RawEvent],
        publisher: &'a str,
    ) -> BoxFuture<'a, Result<(), HandlerError>>;
}

struct Typed<E, H> {
    handler: H,
    _event: PhantomData<fn() -> E>,
}

fn envelope<E: Event>(raw: &RawEvent, publisher: &str) -> Result<Envelope<E>, HandlerError> {
    let payload: E = serde_json::from_str(&raw.payload)
        .map_err(|e| format!("the payload of `{}` does not deserialize: {e}", raw.event_type))?;
    Ok(Envelope {
        id: raw.id,
        position: raw.position,
        publisher: publisher.to_owned(),
        key: raw.key.clone(),
        correlation_id: raw.correlation_id,
        causation_id: raw.causation_id,
        published_at: raw.published_at,
        payload,
    })
}

impl<E: Event, H: Handler<E>> ErasedHandler for Typed<E, H> {
    fn handle<'a>(
        &'a self,
        ctx: &'a mut HandlerContext<'_>,
        raw: &'a RawEvent,
        publisher: &'a str,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let envelope = envelope::<E>(raw, publisher)?;
            ctx.event_id = raw.id;
            ctx.correlation_id = raw.correlation_id;
            self.handler.handle(ctx, &envelope).await
        })
    }

    fn handle_batch<'a>(
        &'a self,
        ctx: &'a mut HandlerContext<'_>,
        raws: &'a [RawEvent],
        publisher: &'a str,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let envelopes = raws.iter().map(|raw| envelope::<E>(raw, publisher)).collect::<Result<Vec<_>, _>>()?;
            if let Some(last) = raws.last() {
                ctx.event_id = last.id;
                ctx.correlation_id = last.correlation_id;
            }
            self.handler.handle_batch(ctx, &envelopes).await
        })
    }
}

/// Tuning of the dispatcher.
#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    /// Events per batch (one transaction per batch per subscriber).
    pub batch_size: i64,
    /// How often to look for events when no notification came (the polling fallback).
    pub poll_interval: Duration,
    /// At most one cross-process NOTIFY per publisher per this interval.
    pub notify_debounce: Duration,
    /// Attempts before an event is parked as a dead letter.
    pub max_attempts: i32,
    /// Backoff before the second attempt; it doubles with each attempt.
    pub backoff_base: Duration,
    /// Longest backoff.
    pub backoff_max: Duration,
    /// How often consumed outbox slots are truncated.
    pub retention_interval: Duration,
    /// How often a subscription reports its progress to the publisher (for retention).
    pub progress_interval: Duration,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        Self {
            batch_size: 500,
            poll_interval: Duration::from_millis(500),
            notify_debounce: Duration::from_millis(5),
            max_attempts: 8,
            backoff_base: Duration::from_millis(200),
            backoff_max: Duration::from_secs(60),
            retention_interval: Duration::from_secs(10),
            progress_interval: Duration::from_secs(1),
        }
    }
}

struct SubscriptionSpec {
    subscriber: String,
    publisher: String,
    handlers: BTreeMap<&'static str, Arc<dyn ErasedHandler>>,
}

/// Registers handlers, then starts the dispatcher.
pub struct EventBus {
    app: Moat,
    config: DispatcherConfig,
    subscriptions: Vec<SubscriptionSpec>,
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBus").field("subscriptions", &self.subscriptions.len()).finish()
    }
}

impl EventBus {
    pub(crate) fn new(app: Moat) -> Self {
        Self { app, config: DispatcherConfig::default(), subscriptions: Vec::new() }
    }

    /// Replaces the tuning.
    pub fn config(mut self, config: DispatcherConfig) -> Self {
        self.config = config;
        self
    }

    /// Registers `handler` of module `subscriber` for events `E`. The subscriber must declare
    /// the publishing module in `depends_on`; anything else is an error that names both.
    pub fn subscribe<E: Event, H: Handler<E>>(mut self, subscriber: &str, handler: H) -> Result<Self, Error> {
        let manifest = self.app.manifest();
        let module = manifest.module(subscriber).ok_or_else(|| Error::UnknownModule {
            name: subscriber.to_owned(),
            known: manifest.modules.iter().map(|m| m.name.to_string()).collect::<Vec<_>>().join(", "),
        })?;
        if manifest.module(E::MODULE).is_none() {
            return Err(Error::UnknownPublisher {
                subscriber: subscriber.to_owned(),
                publisher: E::MODULE,
                event_type: E::TYPE,
            });
        }
        if !module.depends_on.iter().any(|d| d.as_str() == E::MODULE) {
            return Err(Error::UndeclaredDependency {
                subscriber: subscriber.to_owned(),
                publisher: E::MODULE,
                event_type: E::TYPE,
            });
        }
        let erased: Arc<dyn ErasedHandler> = Arc::new(Typed { handler, _event: PhantomData::<fn() -> E> });
        match self.subscriptions.iter_mut().find(|s| s.subscriber == subscriber && s.publisher == E::MODULE) {
            Some(spec) => {
                if spec.handlers.insert(E::TYPE, erased).is_some() {
                    return Err(Error::DuplicateHandler { subscriber: subscriber.to_owned(), event_type: E::TYPE });
                }
            }
            None => self.subscriptions.push(SubscriptionSpec {
                subscriber: subscriber.to_owned(),
                publisher: E::MODULE.to_owned(),
                handlers: BTreeMap::from([(E::TYPE, erased)]),
            }),
        }
        Ok(self)
    }

    /// Registers the subscriptions in the database and starts delivering.
    pub async fn start(self) -> Result<Dispatcher, Error> {
        let relay = self.app.relay_pool()?.clone();
        let manifest = self.app.manifest();
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let mut channels = BTreeMap::new();
        let mut subscriptions = Vec::new();
        for spec in self.subscriptions {
            let sub_module = manifest
                .module(&spec.subscriber)
                .ok_or_else(|| Error::UnknownModule { name: spec.subscriber.clone(), known: String::new() })?;
            let pub_module = manifest
                .module(&spec.publisher)
                .ok_or_else(|| Error::UnknownModule { name: spec.publisher.clone(), known: String::new() })?;
            let subscription = Arc::new(Subscription {
                types: spec.handlers.keys().map(|t| (*t).to_owned()).collect(),
                handlers: spec.handlers,
                subscriber: spec.subscriber.clone(),
                publisher: spec.publisher.clone(),
                subscriptions: qualified(sub_module.schema.as_str(), SUBSCRIPTIONS),
                inbox: qualified(sub_module.schema.as_str(), INBOX),
                sub_outbox: manifest.is_depended_on(&sub_module.name).then(|| outbox_table(sub_module.schema.as_str())),
                outbox: outbox_table(pub_module.schema.as_str()),
                progress: qualified(pub_module.schema.as_str(), OUTBOX_PROGRESS),
                pool: self.app.pool(&spec.subscriber)?.clone(),
                relay: relay.clone(),
                config: self.config.clone(),
                notifier: self.app.notifier(),
                state: std::sync::Mutex::new(LocalState::default()),
            });
            subscription.register().await?;
            channels.insert(channel_name(manifest.project.as_str(), &spec.publisher), spec.publisher.clone());
            subscriptions.push(subscription);
        }
        for subscription in &subscriptions {
            let subscription = subscription.clone();
            let stop = stop_rx.clone();
            tasks.push(tokio::spawn(async move { subscription.run(stop).await }));
        }
        // Cross-process wake-ups: LISTEN on each publisher's channel as the relay.
        if !channels.is_empty() {
            let notifier = self.app.notifier();
            let stop = stop_rx.clone();
            let relay = relay.clone();
            tasks.push(tokio::spawn(async move { listen(relay, channels, notifier, stop).await }));
        }
        // Retention: truncate outbox slots every subscriber has consumed.
        let publishers: BTreeSet<String> = subscriptions.iter().map(|s| s.publisher.clone()).collect();
        for publisher in publishers {
            let Some(module) = manifest.module(&publisher) else { continue };
            let schema = module.schema.to_string();
            let relay = relay.clone();
            let stop = stop_rx.clone();
            let interval = self.config.retention_interval;
            tasks.push(tokio::spawn(async move { retention(relay, schema, interval, stop).await }));
        }
        Ok(Dispatcher { stop: stop_tx, tasks })
    }
}

/// The running dispatcher.
#[derive(Debug)]
pub struct Dispatcher {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Dispatcher {
    /// Stops delivering after the batches in flight and waits for the tasks.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

struct Subscription {
    subscriber: String,
    publisher: String,
    handlers: BTreeMap<&'static str, Arc<dyn ErasedHandler>>,
    types: Vec<String>,
    subscriptions: String,
    inbox: String,
    sub_outbox: Option<String>,
    outbox: String,
    progress: String,
    pool: PgPool,
    relay: PgPool,
    config: DispatcherConfig,
    notifier: Arc<Notifier>,
    state: std::sync::Mutex<LocalState>,
}

/// What this process remembers of its subscription between rounds (an optimization only: the
/// database row is the truth).
#[derive(Debug, Default)]
struct LocalState {
    /// The cursor's `lo` as this process last saw or wrote it (the real one is never older).
    lo: Option<String>,
    /// Whether the inbox may hold events to retry.
    held: bool,
    /// When `lo` was last moved forward without events (so that retention can progress).
    last_advance: Option<Instant>,
}

/// The cursor as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cursor {
    lo: String,
    hi: Option<String>,
    last_id: i64,
}

enum Mode {
    Fast,
    Careful,
}

impl Subscription {
    async fn register(&self) -> Result<(), Error> {
        let sql = format!(
            "INSERT INTO {} (publisher, lo) VALUES ($1, '1:1:') ON CONFLICT (publisher) DO NOTHING",
            self.subscriptions
        );
        sqlx::query(sqlx::AssertSqlSafe(sql)).bind(&self.publisher).execute(&self.pool).await?;
        let sql = format!(
            "INSERT INTO {} (subscriber, consumed_below) VALUES ($1, '0') ON CONFLICT (subscriber) DO NOTHING",
            self.progress
        );
        sqlx::query(sqlx::AssertSqlSafe(sql)).bind(&self.subscriber).execute(&self.relay).await?;
        let sql = format!("SELECT count(*) > 0 FROM {} WHERE publisher = $1", self.inbox);
        let held: bool =
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(&self.publisher).fetch_one(&self.pool).await?;
        self.local().held = held;
        Ok(())
    }

    fn local(&self) -> std::sync::MutexGuard<'_, LocalState> {
        // The state is a cache; a poisoned lock only means a panic elsewhere mid-update.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let wake = self.notifier.channel(&self.publisher);
        let mut last_report = Instant::now() - self.config.progress_interval;
        let mut failures = 0u32;
        loop {
            if *stop.borrow() {
                return;
            }
            let local = wake.as_ref().map(|c| c.local.notified());
            let mut local = std::pin::pin!(local);
            if let Some(n) = local.as_mut().as_pin_mut() {
                n.enable();
            }
            let next_retry = match self.cycle(&mut last_report).await {
                Ok(next_retry) => {
                    failures = 0;
                    next_retry
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(subscriber = %self.subscriber, publisher = %self.publisher, error = %e, "event delivery failed; retrying");
                    Some(backoff(&self.config, failures as i32).min(Duration::from_secs(5)))
                }
            };
            let sleep = next_retry.map_or(self.config.poll_interval, |d| d.min(self.config.poll_interval));
            tokio::select! {
                _ = async { match local.as_mut().as_pin_mut() { Some(n) => n.await, None => std::future::pending().await } } => {}
                _ = tokio::time::sleep(sleep) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// Drains the outbox, retries due held events, reports progress; returns when the next held
    /// event is due.
    async fn cycle(&self, last_report: &mut Instant) -> Result<Option<Duration>, Error> {
        loop {
            let handled = self.drain_once(Mode::Fast).await?;
            if handled < self.config.batch_size as usize {
                break;
            }
        }
        let next_retry = if self.local().held { self.retry_due().await? } else { None };
        if last_report.elapsed() >= self.config.progress_interval {
            self.report_progress().await?;
            *last_report = Instant::now();
        }
        Ok(next_retry)
    }

    /// Whether the outbox may hold something for us beyond the cursor we know. A `false` is
    /// exact: the real cursor is never older than the one remembered.
    async fn anything_new(&self) -> Result<bool, Error> {
        let (lo, idle_for) = {
            let local = self.local();
            (local.lo.clone(), local.last_advance.map(|t| t.elapsed()))
        };
        let Some(lo) = lo else { return Ok(true) };
        // Move the cursor now and then even without events, so that retention can progress.
        if idle_for.is_none_or(|d| d >= self.config.progress_interval) {
            return Ok(true);
        }
        let sql = format!(
            "SELECT EXISTS (SELECT 1 FROM {} WHERE tx >= pg_snapshot_xmin($1::pg_snapshot) AND NOT pg_visible_in_snapshot(tx, $1::pg_snapshot) AND event_type = ANY($2))",
            self.outbox
        );
        Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(&lo).bind(&self.types).fetch_one(&self.relay).await?)
    }

    /// One batch. Returns how many outbox rows it consumed.
    async fn drain_once(&self, mode: Mode) -> Result<usize, Error> {
        if matches!(mode, Mode::Fast) && !self.anything_new().await? {
            return Ok(0);
        }
        let mut conn = self.pool.acquire().await?;
        let result = self.drain_in(&mut conn, mode).await;
        match result {
            Ok(Some(n)) => Ok(n),
            Ok(None) => {
                // A handler failed in the fast path: nothing of the batch stays; redo it carefully.
                sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await?;
                drop(conn);
                Box::pin(self.drain_once(Mode::Careful)).await
            }
            Err(e) => {
                let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
                Err(e)
            }
        }
    }

    /// The body of a batch inside the subscriber's transaction. `Ok(None)` asks for a careful redo.
    async fn drain_in(&self, conn: &mut PgConnection, mode: Mode) -> Result<Option<usize>, Error> {
        // BEGIN and the cursor lock in one round trip.
        let lock = format!(
            "BEGIN; SELECT lo::text, hi::text, last_id, (SELECT coalesce(array_agg(DISTINCT event_key), '{{}}') FROM {inbox} WHERE publisher = {publisher}) AS blocked \
             FROM {subscriptions} WHERE publisher = {publisher} FOR UPDATE SKIP LOCKED",
            inbox = self.inbox,
            subscriptions = self.subscriptions,
            publisher = literal(&self.publisher)
        );
        let row = sqlx::raw_sql(sqlx::AssertSqlSafe(lock)).fetch_optional(&mut *conn).await?;
        let Some(row) = row else {
            // Another dispatcher holds this subscription right now.
            sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await?;
            return Ok(Some(0));
        };
        let cursor = Cursor { lo: row.try_get("lo")?, hi: row.try_get("hi")?, last_id: row.try_get("last_id")? };
        let blocked: Vec<String> = row.try_get("blocked")?;
        let (hi, events) = self.fetch(&cursor).await?;
        let mut blocked: BTreeSet<String> = blocked.into_iter().collect();
        if !blocked.is_empty() {
            self.local().held = true;
        }
        let mut published = Vec::new();
        match mode {
            Mode::Fast => {
                let mut run: Vec<RawEvent> = Vec::new();
                for event in &events {
                    if blocked.contains(&event.key) {
                        self.hold(conn, event, "waiting", 0, None).await?;
                        continue;
                    }
                    if run.first().is_some_and(|first| first.event_type != event.event_type) {
                        if self.apply_run(conn, &run, &mut published).await.is_err() {
                            return Ok(None);
                        }
                        run.clear();
                    }
                    run.push(event.clone());
                }
                if !run.is_empty() && self.apply_run(conn, &run, &mut published).await.is_err() {
                    return Ok(None);
                }
            }
            Mode::Careful => {
                for event in &events {
                    if blocked.contains(&event.key) {
                        self.hold(conn, event, "waiting", 0, None).await?;
                        continue;
                    }
                    sqlx::raw_sql("SAVEPOINT moat_event").execute(&mut *conn).await?;
                    let mut event_published = Vec::new();
                    match self.apply(conn, event, &mut event_published).await {
                        Ok(()) => {
                            sqlx::raw_sql("RELEASE SAVEPOINT moat_event").execute(&mut *conn).await?;
                            published.extend(event_published);
                        }
                        Err(error) => {
                            sqlx::raw_sql("ROLLBACK TO SAVEPOINT moat_event; RELEASE SAVEPOINT moat_event")
                                .execute(&mut *conn)
                                .await?;
                            tracing::warn!(subscriber = %self.subscriber, event = %event.id, key = %event.key, %error, "event handler failed; retrying later");
                            self.hold(conn, event, "retry", 1, Some(&error.to_string())).await?;
                            blocked.insert(event.key.clone());
                            self.local().held = true;
                        }
                    }
                }
            }
        }
        let complete = (events.len() as i64) < self.config.batch_size;
        let next = if complete {
            Cursor { lo: hi.clone(), hi: None, last_id: 0 }
        } else {
            Cursor {
                lo: cursor.lo.clone(),
                hi: Some(hi.clone()),
                last_id: events.last().map_or(cursor.last_id, |e| e.position),
            }
        };
        if events.is_empty() && next.lo == cursor.lo && cursor.hi.is_none() {
            sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await?;
            let mut local = self.local();
            local.lo = Some(cursor.lo);
            local.last_advance = Some(Instant::now());
            return Ok(Some(0));
        }
        let mut finish = String::new();
        if !published.is_empty() {
            match &self.sub_outbox {
                Some(outbox) => {
                    finish.push_str(&outbox_insert(outbox, &published)?);
                    finish.push_str("; ");
                }
                None => {
                    return Err(Error::NoOutbox {
                        module: self.subscriber.clone(),
                        event_type: published[0].event_type,
                    });
                }
            }
        }
        finish.push_str(&format!(
            "UPDATE {} SET lo = {}::pg_snapshot, hi = {}, last_id = {}, updated_at = now() WHERE publisher = {}; COMMIT",
            self.subscriptions,
            literal(&next.lo),
            next.hi.as_deref().map_or_else(|| "NULL".to_owned(), |h| format!("{}::pg_snapshot", literal(h))),
            next.last_id,
            literal(&self.publisher)
        ));
        sqlx::raw_sql(sqlx::AssertSqlSafe(finish)).execute(&mut *conn).await?;
        {
            let mut local = self.local();
            local.lo = if next.hi.is_none() { Some(next.lo.clone()) } else { None };
            local.last_advance = Some(Instant::now());
        }
        if !published.is_empty() {
            self.notifier.published(&self.subscriber);
        }
        Ok(Some(events.len()))
    }

    /// Reads the next batch as the relay: the snapshot that bounds it and its rows.
    async fn fetch(&self, cursor: &Cursor) -> Result<(String, Vec<RawEvent>), Error> {
        const COLUMNS: &str = "o.id, o.event_id, o.event_type, o.event_key, o.payload::text, o.correlation_id, o.causation_id, o.published_at";
        // One simple-query round trip: planner settings for this implicit transaction, then the
        // query with its values quoted by moat_core::quote. Freshly filled outbox slots have no
        // statistics yet, and a plan chosen on guesses could sort the whole backlog per batch.
        let types = format!("ARRAY[{}]::text[]", self.types.iter().map(|t| literal(t)).collect::<Vec<_>>().join(", "));
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
                   AND event_type = ANY({types}) ORDER BY id + 0 LIMIT {limit}) o ON true",
                outbox = self.outbox,
                limit = self.config.batch_size
            ),
            // A batch that did not fit continues in id order from where it stopped.
            Some(hi) => {
                let hi_snapshot = format!("{}::pg_snapshot", literal(hi));
                format!(
                    "SET LOCAL enable_seqscan = off; SET LOCAL enable_sort = off; \
                 SELECT {hi_text} AS hi, {COLUMNS} FROM {outbox} o WHERE id > {last_id} \
                 AND pg_visible_in_snapshot(tx, {hi}) AND NOT pg_visible_in_snapshot(tx, {lo}) \
                 AND event_type = ANY({types}) ORDER BY id LIMIT {limit}",
                    hi_text = literal(hi),
                    hi = hi_snapshot,
                    outbox = self.outbox,
                    last_id = cursor.last_id,
                    limit = self.config.batch_size
                )
            }
        };
        let rows = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).fetch_all(&self.relay).await?;
        let mut hi = cursor.hi.clone().unwrap_or_else(|| cursor.lo.clone());
        let mut events = Vec::with_capacity(rows.len());
        for row in rows {
            hi = row.try_get("hi")?;
            let Some(position) = row.try_get::<Option<i64>, _>("id")? else { continue };
            events.push(RawEvent {
                position,
                id: row.try_get("event_id")?,
                event_type: row.try_get("event_type")?,
                key: row.try_get("event_key")?,
                payload: row.try_get("payload")?,
                correlation_id: row.try_get("correlation_id")?,
                causation_id: row.try_get("causation_id")?,
                published_at: row.try_get("published_at")?,
            });
        }
        Ok((hi, events))
    }

    fn context<'c>(&'c self, conn: &'c mut PgConnection, event: &RawEvent) -> HandlerContext<'c> {
        HandlerContext {
            conn,
            subscriber: &self.subscriber,
            has_outbox: self.sub_outbox.is_some(),
            event_id: event.id,
            correlation_id: event.correlation_id,
            published: Vec::new(),
        }
    }

    fn handler(&self, event_type: &str) -> Result<&Arc<dyn ErasedHandler>, HandlerError> {
        self.handlers
            .get(event_type)
            .ok_or_else(|| format!("module `{}` has no handler for `{event_type}` any more", self.subscriber).into())
    }

    /// Runs the handler of one event; a panic counts as a failure.
    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: &RawEvent,
        published: &mut Vec<PendingEvent>,
    ) -> Result<(), HandlerError> {
        let handler = self.handler(&event.event_type)?;
        let mut ctx = self.context(conn, event);
        let outcome = AssertUnwindSafe(handler.handle(&mut ctx, event, &self.publisher)).catch_unwind().await;
        finish(outcome, &mut ctx, published, &event.event_type)
    }

    /// Runs the batch handler on consecutive events of one type.
    async fn apply_run(
        &self,
        conn: &mut PgConnection,
        run: &[RawEvent],
        published: &mut Vec<PendingEvent>,
    ) -> Result<(), HandlerError> {
        let Some(first) = run.first() else { return Ok(()) };
        let handler = self.handler(&first.event_type)?;
        let mut ctx = self.context(conn, first);
        let outcome = AssertUnwindSafe(handler.handle_batch(&mut ctx, run, &self.publisher)).catch_unwind().await;
        finish(outcome, &mut ctx, published, &first.event_type)
    }

    /// Copies an event into the subscriber's inbox (it no longer needs the publisher's outbox).
    async fn hold(
        &self,
        conn: &mut PgConnection,
        event: &RawEvent,
        state: &str,
        attempts: i32,
        error: Option<&str>,
    ) -> Result<(), Error> {
        let delay = if attempts > 0 { backoff(&self.config, attempts) } else { Duration::ZERO };
        let sql = format!(
            "INSERT INTO {} (publisher, outbox_id, event_id, event_type, event_key, payload, correlation_id, causation_id, published_at, \
             state, attempts, next_attempt_at, last_error) \
             VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9, $10, $11, now() + $12::interval, $13) ON CONFLICT (publisher, event_id) DO NOTHING",
            self.inbox
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&self.publisher)
            .bind(event.position)
            .bind(event.id)
            .bind(&event.event_type)
            .bind(&event.key)
            .bind(&event.payload)
            .bind(event.correlation_id)
            .bind(event.causation_id)
            .bind(event.published_at)
            .bind(state)
            .bind(attempts)
            .bind(format!("{} milliseconds", delay.as_millis()))
            .bind(error)
            .execute(&mut *conn)
            .await?;
        self.local().held = true;
        Ok(())
    }

    /// Retries held events whose turn has come (the oldest of each key), one transaction each.
    /// Returns when the next one is due.
    async fn retry_due(&self) -> Result<Option<Duration>, Error> {
        let pick = format!(
            "SELECT id, outbox_id, event_id, event_type, event_key, payload::text, correlation_id, causation_id, published_at, attempts \
             FROM {inbox} i WHERE publisher = $1 AND state IN ('retry', 'waiting') \
               AND id = (SELECT min(id) FROM {inbox} j WHERE j.publisher = i.publisher AND j.event_key = i.event_key) \
               AND (state = 'waiting' OR next_attempt_at <= now()) \
             ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED",
            inbox = self.inbox
        );
        loop {
            let mut conn = self.pool.acquire().await?;
            sqlx::raw_sql("BEGIN").execute(&mut *conn).await?;
            let Some(row) =
                sqlx::query(sqlx::AssertSqlSafe(pick.clone())).bind(&self.publisher).fetch_optional(&mut *conn).await?
            else {
                sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await?;
                break;
            };
            let held_id: i64 = row.try_get("id")?;
            let attempts: i32 = row.try_get("attempts")?;
            let event = RawEvent {
                position: row.try_get("outbox_id")?,
                id: row.try_get("event_id")?,
                event_type: row.try_get("event_type")?,
                key: row.try_get("event_key")?,
                payload: row.try_get("payload")?,
                correlation_id: row.try_get("correlation_id")?,
                causation_id: row.try_get("causation_id")?,
                published_at: row.try_get("published_at")?,
            };
            let mut published = Vec::new();
            match self.apply(&mut conn, &event, &mut published).await {
                Ok(()) => {
                    let mut finish = String::new();
                    if !published.is_empty() {
                        let Some(outbox) = &self.sub_outbox else {
                            sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await?;
                            return Err(Error::NoOutbox {
                                module: self.subscriber.clone(),
                                event_type: published[0].event_type,
                            });
                        };
                        finish.push_str(&outbox_insert(outbox, &published)?);
                        finish.push_str("; ");
                    }
                    finish.push_str(&format!("DELETE FROM {} WHERE id = {held_id}; COMMIT", self.inbox));
                    sqlx::raw_sql(sqlx::AssertSqlSafe(finish)).execute(&mut *conn).await?;
                    if !published.is_empty() {
                        self.notifier.published(&self.subscriber);
                    }
                }
                Err(error) => {
                    sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await?;
                    let attempts = attempts + 1;
                    let dead = attempts >= self.config.max_attempts;
                    tracing::warn!(subscriber = %self.subscriber, event = %event.id, attempts, dead, %error, "event handler failed again");
                    let sql = format!(
                        "UPDATE {} SET attempts = $2, state = $3, next_attempt_at = now() + $4::interval, last_error = $5 WHERE id = $1",
                        self.inbox
                    );
                    sqlx::query(sqlx::AssertSqlSafe(sql))
                        .bind(held_id)
                        .bind(attempts)
                        .bind(if dead { "dead" } else { "retry" })
                        .bind(format!("{} milliseconds", backoff(&self.config, attempts).as_millis()))
                        .bind(error.to_string())
                        .execute(&mut *conn)
                        .await?;
                }
            }
        }
        let sql = format!(
            "SELECT count(*) > 0 AS held, greatest(extract(epoch FROM min(next_attempt_at) FILTER (WHERE state = 'retry') - now()), 0)::float8 AS next \
             FROM {} WHERE publisher = $1",
            self.inbox
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(&self.publisher).fetch_one(&self.pool).await?;
        let held: bool = row.try_get("held")?;
        let next: Option<f64> = row.try_get("next")?;
        // Dead letters keep `held` set: `moat events retry` may revive them at any time.
        self.local().held = held;
        Ok(next.map(Duration::from_secs_f64))
    }

    /// Tells the publisher's side how far this subscriber got, so that consumed outbox slots can
    /// be truncated. It lags the real cursor, which is safe: it only delays truncation.
    async fn report_progress(&self) -> Result<(), Error> {
        let sql = format!("SELECT lo::text FROM {} WHERE publisher = $1", self.subscriptions);
        let lo: Option<String> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(&self.publisher).fetch_optional(&self.pool).await?;
        let Some(lo) = lo else { return Ok(()) };
        let sql = format!(
            "INSERT INTO {progress} AS p (subscriber, consumed_below) VALUES ($1, pg_snapshot_xmin($2::pg_snapshot)) \
             ON CONFLICT (subscriber) DO UPDATE SET consumed_below = greatest(p.consumed_below, excluded.consumed_below), updated_at = now() \
             WHERE p.consumed_below < excluded.consumed_below",
            progress = self.progress
        );
        sqlx::query(sqlx::AssertSqlSafe(sql)).bind(&self.subscriber).bind(&lo).execute(&self.relay).await?;
        Ok(())
    }
}

fn finish(
    outcome: std::thread::Result<Result<(), HandlerError>>,
    ctx: &mut HandlerContext<'_>,
    published: &mut Vec<PendingEvent>,
    event_type: &str,
) -> Result<(), HandlerError> {
    match outcome {
        Ok(Ok(())) => {
            published.append(&mut ctx.published);
            Ok(())
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!("the handler of `{event_type}` panicked").into()),
    }
}

fn backoff(config: &DispatcherConfig, attempts: i32) -> Duration {
    let factor = 2u32.saturating_pow(attempts.saturating_sub(1).clamp(0, 20) as u32);
    config.backoff_base.saturating_mul(factor).min(config.backoff_max)
}

/// Wakes local subscription tasks when another process's publisher sends a NOTIFY.
async fn listen(
    relay: PgPool,
    channels: BTreeMap<String, String>,
    notifier: Arc<Notifier>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let mut listener = match sqlx::postgres::PgListener::connect_with(&relay).await {
            Ok(listener) => listener,
            Err(e) => {
                tracing::warn!(error = %e, "cannot LISTEN for events; polling only");
                tokio::select! { _ = tokio::time::sleep(Duration::from_secs(5)) => continue, _ = stop.changed() => return }
            }
        };
        let names: Vec<&str> = channels.keys().map(String::as_str).collect();
        if let Err(e) = listener.listen_all(names).await {
            tracing::warn!(error = %e, "cannot LISTEN for events; polling only");
            tokio::select! { _ = tokio::time::sleep(Duration::from_secs(5)) => continue, _ = stop.changed() => return }
        }
        loop {
            tokio::select! {
                notification = listener.recv() => match notification {
                    Ok(n) => {
                        if let Some(channel) = channels.get(n.channel()).and_then(|publisher| notifier.channel(publisher)) {
                            channel.local.notify_waiters();
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the event LISTEN connection failed; reconnecting");
                        break;
                    }
                },
                _ = stop.changed() => return,
            }
        }
    }
}

/// Truncates outbox slots that every registered subscriber has consumed and that are neither
/// the current slot nor the next one. The check runs under an ACCESS EXCLUSIVE lock on the slot
/// (so no transaction can still be inserting into it) with a short lock timeout, so publishers
/// never wait on it for long; TRUNCATE leaves no dead tuples behind.
async fn retention(relay: PgPool, schema: String, interval: Duration, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! { _ = tokio::time::sleep(interval) => {}, _ = stop.changed() => return }
        if let Err(e) = truncate_consumed(&relay, &schema).await {
            tracing::debug!(schema, error = %e, "outbox retention skipped this round");
        }
    }
}

/// One round of retention for the outbox in `schema` (run by the dispatcher every
/// `retention_interval`; public for tests and benchmarks). Returns how many slots were truncated.
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
        let mut conn = relay.acquire().await?;
        let lock = format!("BEGIN; SET LOCAL lock_timeout = '100ms'; LOCK TABLE {partition} IN ACCESS EXCLUSIVE MODE");
        if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(lock)).execute(&mut *conn).await {
            let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
            // A transaction still inserting into (or reading) the slot: try again next round.
            if moat_admin::error::sqlstate(&e).as_deref() == Some("55P03") {
                continue;
            }
            return Err(e.into());
        }
        let ready: Option<bool> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT EXISTS (SELECT 1 FROM {partition}) AND EXISTS (SELECT 1 FROM {progress}) \
             AND (SELECT max(tx) FROM {partition}) < (SELECT min(consumed_below) FROM {progress})"
        )))
        .fetch_one(&mut *conn)
        .await
        .ok()
        .flatten();
        if ready == Some(true) {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("TRUNCATE {partition}; COMMIT"))).execute(&mut *conn).await?;
            truncated += 1;
        } else {
            sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await?;
        }
    }
    Ok(truncated)
}

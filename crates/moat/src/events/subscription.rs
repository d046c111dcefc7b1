//! The subscription loop: one task per (subscriber, publisher) pair drains the publisher's outbox
//! into handler transactions on the subscriber's own connection.
//!
//! The cursor row is locked (`FOR UPDATE SKIP LOCKED`) for the batch and updated in the same
//! transaction as the handlers' writes, so two dispatchers never apply one event twice, and a
//! crash anywhere re-delivers the batch to a subscriber that has applied none of it.
//!
//! **Handler sets across processes.** Every process registers, when it starts, the event types
//! it handles in the subscription row (`handled`, the union over every process that ever started,
//! minus the types the subscriber declared ignored, `ignored`). A batch holds every event of a
//! type in that union; an event whose type this process has no handler for is held in the inbox
//! (and its key blocked behind it) for a process that has one, never skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moat_core::quote::literal;
use sqlx::{PgConnection, PgPool};
use tokio::sync::watch;

use super::bus::DispatcherConfig;
use super::fetch::{Cursor, Locked, anything_after, cluster_id, fetch, lock_sql, moved, parse_lock};
use super::handler::{Call, ErasedHandler, HandlerContext, RawEvent, run_handler};
use super::inbox::Hold;
use super::publish::{PendingEvent, outbox_insert};
use super::tx::RawTx;
use crate::Error;
use crate::notify::Notifier;

/// The tables a subscription touches, qualified.
#[derive(Debug, Clone)]
pub(crate) struct Tables {
    /// The subscriber's cursors.
    pub(crate) subscriptions: String,
    /// The subscriber's inbox.
    pub(crate) inbox: String,
    /// The subscriber's own outbox, when it publishes.
    pub(crate) sub_outbox: Option<String>,
    /// The publisher's outbox.
    pub(crate) outbox: String,
    /// The publisher's record of what each subscriber consumed.
    pub(crate) progress: String,
}

pub(crate) struct Subscription {
    pub(crate) subscriber: String,
    pub(crate) publisher: String,
    pub(crate) handlers: BTreeMap<&'static str, Arc<dyn ErasedHandler>>,
    /// The types this process handles.
    pub(crate) mine: Vec<String>,
    /// The types this process declares ignored by the subscriber.
    pub(crate) ignored: Vec<String>,
    pub(crate) tables: Tables,
    /// The application: the subscriber's pool and the relay's pool in the publisher's database
    /// are taken from it for each unit of work, so that both follow a module that moves.
    pub(crate) app: crate::Moat,
    /// Changes when a module's pool moved to another database: the subscription registers again
    /// (the cluster it talks to may be another).
    pub(crate) moves: std::sync::Mutex<watch::Receiver<u64>>,
    pub(crate) config: DispatcherConfig,
    pub(crate) notifier: Arc<Notifier>,
    pub(crate) state: std::sync::Mutex<LocalState>,
    /// The transport the manifest gives this subscription.
    pub(crate) transport: moat_core::manifest::Transport,
    /// The JetStream side: for a subscription reading JetStream, and for one that must first
    /// drain JetStream after the manifest switched it back to the direct transport.
    pub(crate) jet: Option<Arc<crate::jetstream::consume::Jet>>,
}

/// What this process remembers of its subscription between rounds (an optimization only: the
/// database row is the truth).
#[derive(Debug, Default)]
pub(crate) struct LocalState {
    /// The cursor's `lo` as this process last saw or wrote it (the real one is never older).
    pub(crate) lo: Option<String>,
    /// The subscriber's handled types as last read (the union over its processes).
    pub(crate) handled: Vec<String>,
    /// Whether the inbox may hold events to retry.
    pub(crate) held: bool,
    /// When `lo` was last moved forward without events (so that retention can progress).
    pub(crate) last_advance: Option<Instant>,
    /// The identity of the cluster this process talks to (read when it registers).
    pub(crate) cluster: String,
    /// JetStream: take the consumer again from what the row says was applied.
    pub(crate) jet_reset: bool,
}

/// How a batch runs its handlers.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Mode {
    /// Runs of one type through `handle_batch`; any failure redoes the batch carefully.
    Fast,
    /// One event at a time in a savepoint; a failing event is held for retry.
    Careful,
}

/// What a batch did.
enum Outcome {
    /// It consumed this many outbox rows (0: nothing new, or another dispatcher holds the cursor).
    Consumed(usize),
    /// A handler failed in the fast path: redo the batch carefully.
    Redo,
}

impl Subscription {
    /// Registers this process's handled and ignored types, creates the cursor (and, for the
    /// direct transport, the progress row beside the publisher's outbox) if missing, and drops
    /// held events of types the subscriber now ignores. A new row of a subscription reading
    /// JetStream starts at the stream's beginning; the publisher's database is not needed then.
    pub(crate) async fn register(&self) -> Result<(), Error> {
        let direct = self.transport == moat_core::manifest::Transport::Direct;
        let here = if direct { Some(cluster_id(&self.relay().await?).await?) } else { None };
        // The upsert takes the cursor row's lock, so a registration lands between two batches:
        // every batch after it holds the new types.
        let sql = format!(
            "INSERT INTO {subscriptions} AS s (publisher, lo, handled, ignored, cluster, transport) VALUES ($1, '1:1:', $2, $3, $4, $5) \
             ON CONFLICT (publisher) DO UPDATE SET \
               handled = ARRAY(SELECT DISTINCT t FROM unnest(s.handled || $2) t WHERE t <> ALL ($3) ORDER BY t), \
               ignored = ARRAY(SELECT DISTINCT t FROM unnest(s.ignored || $3) t WHERE t <> ALL ($2) ORDER BY t) \
             RETURNING handled",
            subscriptions = self.tables.subscriptions
        );
        let handled: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(&self.publisher)
            .bind(&self.mine)
            .bind(&self.ignored)
            .bind(&here)
            .bind(self.transport.as_str())
            .fetch_one(&self.pool()?)
            .await?;
        if let Some(here) = here {
            self.local().cluster = here;
        }
        if !self.ignored.is_empty() {
            let sql = format!("DELETE FROM {} WHERE publisher = $1 AND event_type = ANY($2)", self.tables.inbox);
            let dropped = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(&self.publisher)
                .bind(&self.ignored)
                .execute(&self.pool()?)
                .await?
                .rows_affected();
            if dropped > 0 {
                tracing::info!(subscriber = %self.subscriber, publisher = %self.publisher, dropped, "held events of ignored types dropped");
            }
        }
        if direct {
            let sql = format!(
                "INSERT INTO {} (subscriber, consumed_below) VALUES ($1, '0') ON CONFLICT (subscriber) DO NOTHING",
                self.tables.progress
            );
            sqlx::query(sqlx::AssertSqlSafe(sql)).bind(&self.subscriber).execute(&self.relay().await?).await?;
        }
        let sql = format!("SELECT count(*) > 0 FROM {} WHERE publisher = $1", self.tables.inbox);
        let held: bool =
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(&self.publisher).fetch_one(&self.pool()?).await?;
        let mut local = self.local();
        local.held = held;
        local.handled = handled;
        Ok(())
    }

    /// The transport the subscription's row says ran last.
    pub(crate) async fn last_transport(&self) -> Result<String, Error> {
        let sql = format!("SELECT transport FROM {} WHERE publisher = $1", self.tables.subscriptions);
        let transport: Option<String> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(&self.publisher).fetch_optional(&self.pool()?).await?;
        Ok(transport.unwrap_or_else(|| "direct".into()))
    }

    /// The subscriber's pool, in the database it lives in now.
    pub(crate) fn pool(&self) -> Result<PgPool, Error> {
        self.app.pool(&self.subscriber)
    }

    /// The relay's pool in the database the publisher lives in now (its outbox is there).
    pub(crate) async fn relay(&self) -> Result<PgPool, Error> {
        self.app.relay_for(&self.publisher).await
    }

    /// Registers again when a module moved since the last look.
    async fn follow_moves(&self) -> Result<(), Error> {
        let moved = {
            let mut moves = self.moves.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let changed = moves.has_changed().unwrap_or(false);
            if changed {
                moves.borrow_and_update();
            }
            changed
        };
        if moved {
            self.register().await?;
        }
        Ok(())
    }

    pub(crate) fn local(&self) -> std::sync::MutexGuard<'_, LocalState> {
        // The state is a cache; a poisoned lock only means a panic elsewhere mid-update.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The identity of the cluster this process talks to.
    pub(crate) fn here(&self) -> String {
        self.local().cluster.clone()
    }

    pub(crate) fn context<'c>(&'c self, conn: &'c mut PgConnection, event: &RawEvent) -> HandlerContext<'c> {
        HandlerContext::new(conn, &self.subscriber, self.tables.sub_outbox.is_some(), event)
    }

    pub(crate) async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        if self.jet.is_some() {
            // JetStream, or a drain of it before the direct transport takes over again.
            let drain = self.transport == moat_core::manifest::Transport::Direct;
            loop {
                match self.run_jetstream(&mut stop, drain).await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::warn!(subscriber = %self.subscriber, publisher = %self.publisher, error = %e, "event delivery from JetStream failed; retrying");
                        tokio::select! { _ = tokio::time::sleep(Duration::from_secs(1)) => {}, _ = stop.changed() => {} }
                    }
                }
            }
            if !drain || *stop.borrow() {
                return;
            }
        }
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
        self.follow_moves().await?;
        loop {
            let handled = self.drain_once().await?;
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
        let (lo, idle_for, handled) = {
            let local = self.local();
            (local.lo.clone(), local.last_advance.map(|t| t.elapsed()), local.handled.clone())
        };
        let Some(lo) = lo else { return Ok(true) };
        // Move the cursor now and then even without events, so that retention can progress
        // (and so that the handled types and held events of other processes are seen).
        if idle_for.is_none_or(|d| d >= self.config.progress_interval) {
            return Ok(true);
        }
        let here = self.here();
        anything_after(&self.relay().await?, &self.tables.outbox, &here, &lo, &handled).await
    }

    /// One batch. Returns how many outbox rows it consumed.
    async fn drain_once(&self) -> Result<usize, Error> {
        if !self.anything_new().await? {
            return Ok(0);
        }
        match self.batch(Mode::Fast).await? {
            Outcome::Consumed(n) => Ok(n),
            Outcome::Redo => match self.batch(Mode::Careful).await? {
                Outcome::Consumed(n) => Ok(n),
                Outcome::Redo => Ok(0),
            },
        }
    }

    /// One batch in one transaction of the subscriber.
    async fn batch(&self, mode: Mode) -> Result<Outcome, Error> {
        let conn = self.app.acquire(&self.subscriber).await?;
        let lock = lock_sql(&self.tables.subscriptions, &self.tables.inbox, &self.publisher);
        let (mut tx, rows) = RawTx::begin_with(conn, &lock).await?;
        let Some(Locked { cursor, handled, mut blocked, transport, applied: jet_applied, .. }) = parse_lock(&rows)?
        else {
            // Another dispatcher holds this subscription right now.
            tx.rollback().await?;
            return Ok(Outcome::Consumed(0));
        };
        if transport != moat_core::manifest::Transport::Direct.as_str() {
            // JetStream ran last: the process that drains it switches the row back first.
            tx.rollback().await?;
            return Ok(Outcome::Consumed(0));
        }
        {
            let mut local = self.local();
            local.handled.clone_from(&handled);
            if !blocked.is_empty() {
                local.held = true;
            }
        }
        let here = self.here();
        if cursor.cluster.as_ref().is_some_and(|c| *c != here) {
            return self.rebase(tx, &cursor, &handled, &here).await;
        }
        let mut batch =
            fetch(&self.relay().await?, &self.tables.outbox, &here, &cursor, &handled, self.config.batch_size).await?;
        let fetched = batch.events.len();
        let last_position = batch.events.last().map(|e| e.position);
        if !jet_applied.is_empty() {
            // Applied through JetStream before the switch back; `lo` does not cover them yet.
            let ids = crate::jetstream::consume::applied_ids(&jet_applied);
            batch.events.retain(|e| !ids.contains(&e.id));
        }
        let mut published = Vec::new();
        let applied = match mode {
            Mode::Fast => self.apply_fast(&mut tx, &batch.events, &mut blocked, &mut published).await?,
            Mode::Careful => {
                self.apply_careful(&mut tx, &batch.events, &mut blocked, &mut published).await?;
                true
            }
        };
        if !applied {
            tx.rollback().await?;
            return Ok(Outcome::Redo);
        }
        let complete = (fetched as i64) < self.config.batch_size;
        let next = if complete {
            Cursor { lo: batch.hi.clone(), hi: None, last_id: 0, ..cursor.clone() }
        } else {
            Cursor {
                lo: cursor.lo.clone(),
                hi: Some(batch.hi.clone()),
                last_id: last_position.unwrap_or(cursor.last_id),
                ..cursor.clone()
            }
        };
        if fetched == 0 && next.lo == cursor.lo && cursor.hi.is_none() {
            tx.rollback().await?;
            let mut local = self.local();
            local.lo = Some(cursor.lo);
            local.last_advance = Some(Instant::now());
            return Ok(Outcome::Consumed(0));
        }
        let mut finish = String::new();
        if !published.is_empty() {
            let Some(outbox) = &self.tables.sub_outbox else {
                return Err(Error::NoOutbox { module: self.subscriber.clone(), event_type: published[0].event_type });
            };
            finish.push_str(&outbox_insert(outbox, &published)?);
            finish.push_str("; ");
        }
        finish.push_str(&format!(
            "UPDATE {} SET lo = {}::pg_snapshot, hi = {}, last_id = {}, cluster = {}, updated_at = now() WHERE publisher = {}; ",
            self.tables.subscriptions,
            literal(&next.lo),
            next.hi.as_deref().map_or_else(|| "NULL".to_owned(), |h| format!("{}::pg_snapshot", literal(h))),
            next.last_id,
            literal(&here),
            literal(&self.publisher)
        ));
        if !jet_applied.is_empty() && next.hi.is_none() {
            let kept = crate::jetstream::consume::prune_applied(&jet_applied, &next.lo);
            finish.push_str(&format!(
                "UPDATE {} SET applied = ARRAY[{}]::text[] WHERE publisher = {}; ",
                self.tables.subscriptions,
                kept.iter().map(|a| literal(a)).collect::<Vec<_>>().join(", "),
                literal(&self.publisher)
            ));
        }
        tx.commit(&finish).await?;
        {
            let mut local = self.local();
            local.lo = if next.hi.is_none() { Some(next.lo.clone()) } else { None };
            local.last_advance = Some(Instant::now());
        }
        if !published.is_empty() {
            self.notifier.published(&self.subscriber);
        }
        Ok(Outcome::Consumed(fetched))
    }

    /// Re-bases a cursor taken in another cluster (the database was dumped and restored, or
    /// moved): every outbox row it had not consumed that came from another cluster is copied into
    /// the inbox (waiting, in id order, so that per-key order holds and its keys block newer
    /// events), and the cursor starts over in this cluster from nothing consumed of the rows
    /// published here. Runs in the transaction that holds the cursor row.
    async fn rebase(&self, mut tx: RawTx, cursor: &Cursor, handled: &[String], here: &str) -> Result<Outcome, Error> {
        let (events, moved_id) = moved(&self.relay().await?, &self.tables.outbox, here, cursor, handled).await?;
        for event in &events {
            self.hold(&mut tx, event, Hold::Waiting).await?;
        }
        tracing::info!(
            subscriber = %self.subscriber, publisher = %self.publisher, from = ?cursor.cluster, to = %here,
            carried = events.len(), "cursor re-based after a move to another cluster"
        );
        let finish = format!(
            "UPDATE {} SET lo = '1:1:', hi = NULL, last_id = 0, cluster = {}, moved_id = greatest(moved_id, {moved_id}), updated_at = now() WHERE publisher = {}; ",
            self.tables.subscriptions,
            literal(here),
            literal(&self.publisher)
        );
        tx.commit(&finish).await?;
        let mut local = self.local();
        local.lo = None;
        local.held = true;
        Ok(Outcome::Consumed(self.config.batch_size as usize))
    }

    /// Whether `event` must be held rather than applied here: its key is blocked, or this process
    /// has no handler for its type (another process has: the type is in the union). Holding it
    /// blocks its key for the rest of the batch.
    fn must_hold(&self, event: &RawEvent, blocked: &mut BTreeSet<String>) -> bool {
        if blocked.contains(&event.key) {
            return true;
        }
        if !self.handlers.contains_key(event.event_type.as_str()) {
            blocked.insert(event.key.clone());
            return true;
        }
        false
    }

    /// Runs of consecutive events of one type through `handle_batch`. `false` when one failed
    /// (the caller rolls back and redoes the batch carefully).
    pub(crate) async fn apply_fast(
        &self,
        tx: &mut RawTx,
        events: &[RawEvent],
        blocked: &mut BTreeSet<String>,
        published: &mut Vec<PendingEvent>,
    ) -> Result<bool, Error> {
        let mut run: Vec<RawEvent> = Vec::new();
        for event in events {
            if self.must_hold(event, blocked) {
                self.hold(tx, event, Hold::Waiting).await?;
                continue;
            }
            if run.first().is_some_and(|first| first.event_type != event.event_type) {
                if !self.apply_run(tx, &run, published).await {
                    return Ok(false);
                }
                run.clear();
            }
            run.push(event.clone());
        }
        Ok(run.is_empty() || self.apply_run(tx, &run, published).await)
    }

    async fn apply_run(&self, conn: &mut PgConnection, run: &[RawEvent], published: &mut Vec<PendingEvent>) -> bool {
        let Some(first) = run.first() else { return true };
        let Some(handler) = self.handlers.get(first.event_type.as_str()) else { return false };
        let mut ctx = self.context(conn, first);
        run_handler(handler, &mut ctx, run, &self.publisher, published, Call::Batch).await.is_ok()
    }

    /// One event at a time, each in a savepoint; a failing event is held for retry and blocks
    /// its key.
    pub(crate) async fn apply_careful(
        &self,
        tx: &mut RawTx,
        events: &[RawEvent],
        blocked: &mut BTreeSet<String>,
        published: &mut Vec<PendingEvent>,
    ) -> Result<(), Error> {
        for event in events {
            if self.must_hold(event, blocked) {
                self.hold(tx, event, Hold::Waiting).await?;
                continue;
            }
            let Some(handler) = self.handlers.get(event.event_type.as_str()) else { continue };
            sqlx::raw_sql("SAVEPOINT moat_event").execute(&mut **tx).await?;
            let mut event_published = Vec::new();
            let mut ctx = self.context(tx, event);
            let outcome = run_handler(
                handler,
                &mut ctx,
                std::slice::from_ref(event),
                &self.publisher,
                &mut event_published,
                Call::One,
            )
            .await;
            match outcome {
                Ok(()) => {
                    sqlx::raw_sql("RELEASE SAVEPOINT moat_event").execute(&mut **tx).await?;
                    published.extend(event_published);
                }
                Err(error) => {
                    sqlx::raw_sql("ROLLBACK TO SAVEPOINT moat_event; RELEASE SAVEPOINT moat_event")
                        .execute(&mut **tx)
                        .await?;
                    tracing::warn!(subscriber = %self.subscriber, event = %event.id, key = %event.key, %error, "event handler failed; retrying later");
                    let error = error.to_string();
                    self.hold(tx, event, Hold::Failed(&error)).await?;
                    blocked.insert(event.key.clone());
                }
            }
        }
        Ok(())
    }
}

/// The delay before attempt `attempts + 1`.
pub(crate) fn backoff(config: &DispatcherConfig, attempts: i32) -> Duration {
    let factor = 2u32.saturating_pow(attempts.saturating_sub(1).clamp(0, 20) as u32);
    config.backoff_base.saturating_mul(factor).min(config.backoff_max)
}

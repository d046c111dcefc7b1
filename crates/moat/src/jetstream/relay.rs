//! `moat relay`: every publishing module's outbox, read as the relay role, published to the
//! project's JetStream stream.
//!
//! The relay keeps the same snapshot cursor a subscription keeps, in its progress row beside the
//! outbox (`$relay` in `moat_outbox_progress`, moat's table). A batch runs in one transaction
//! that holds that row (`FOR UPDATE SKIP LOCKED`: one relay publishes a module at a time, however
//! many run; the others stand by), publishes every event of the batch, waits for every PubAck,
//! and only then moves the cursor and commits. A relay killed anywhere publishes the batch again:
//! JetStream drops what it already stored (message id = event id, within the duplicate window),
//! and a subscriber drops what it already applied beyond that window (see
//! [`crate::jetstream`]).
//!
//! **Order.** An event is published only after the PubAck of the previous event of its key in
//! the batch (events of other keys stay in flight meanwhile): if a publish fails, no later event
//! of its key can have been stored before it. Every event is published after
//! every event its `Moat-Lo` header covers was acknowledged.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::message::PublishMessage;
use moat_admin::internal::{OUTBOX_PROGRESS, RELAY_PROGRESS};
use moat_core::quote::{literal, qualified};
use sqlx::Row;
use tokio::sync::watch;

use super::broker::{Broker, nats_error};
use super::envelope::{Origin, encode};
use crate::events::{RawEvent, RawTx, cluster_id, outbox_table};
use crate::{Error, Moat};

/// Tuning of the relay.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Events per batch (one transaction of the relay per batch).
    pub batch_size: i64,
    /// How often to look for events when no notification came.
    pub poll_interval: Duration,
    /// How often consumed outbox slots are truncated.
    pub retention_interval: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: 5000,
            poll_interval: Duration::from_millis(500),
            retention_interval: Duration::from_secs(10),
        }
    }
}

/// What the relay did since it started.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Events JetStream stored.
    pub published: AtomicU64,
    /// Events JetStream acknowledged as duplicates (published again after a crash).
    pub duplicates: AtomicU64,
    /// Batches committed.
    pub batches: AtomicU64,
}

/// The relay: start it with [`Relay::start`].
#[derive(Debug)]
pub struct Relay;

/// A running relay.
#[derive(Debug)]
pub struct RelayHandle {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stats: Arc<RelayStats>,
}

impl RelayHandle {
    /// Counters of what it published.
    pub fn stats(&self) -> &Arc<RelayStats> {
        &self.stats
    }

    /// Stops after the batches in flight.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

struct Publisher {
    app: Moat,
    broker: Broker,
    config: RelayConfig,
    module: String,
    outbox: String,
    progress: String,
    stats: Arc<RelayStats>,
    cluster: tokio::sync::Mutex<Option<(u64, String)>>,
    /// The next batch, read while the previous one was being acknowledged.
    prefetched: tokio::sync::Mutex<Option<Prefetched>>,
}

/// A relay cursor: `lo`, `hi`, `last_id` and the cluster they belong to.
type Cursor = (String, Option<String>, i64, String);

/// A batch read ahead, for the cursor `at`.
struct Prefetched {
    at: Cursor,
    snap: String,
    events: Vec<(RawEvent, Origin)>,
}

impl Relay {
    /// Checks that the relay can log in where every publisher lives and has its progress row
    /// there, checks (or creates) the stream, then relays every publishing module until
    /// [`RelayHandle::shutdown`]. A refused relay leaves nothing behind (no stream).
    pub async fn start(app: Moat, broker: Broker, config: RelayConfig) -> Result<RelayHandle, Error> {
        let manifest = app.manifest().clone();
        let publishers: Vec<_> = manifest.modules.iter().filter(|m| manifest.is_depended_on(&m.name)).collect();
        let mut units = Vec::new();
        let stats = Arc::new(RelayStats::default());
        for module in publishers {
            let unit = Arc::new(Publisher {
                app: app.clone(),
                broker: broker.clone(),
                config: config.clone(),
                module: module.name.to_string(),
                outbox: outbox_table(module.schema.as_str()),
                progress: qualified(module.schema.as_str(), OUTBOX_PROGRESS),
                stats: stats.clone(),
                cluster: tokio::sync::Mutex::new(None),
                prefetched: tokio::sync::Mutex::new(None),
            });
            unit.check().await?;
            units.push(unit);
        }
        broker.ensure_stream().await?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let channels: BTreeMap<String, String> = units
            .iter()
            .map(|u| (crate::notify::channel_name(manifest.project.as_str(), &u.module), u.module.clone()))
            .collect();
        let notifier = app.notifier();
        if !channels.is_empty() {
            let (app, notifier, stop) = (app.clone(), notifier.clone(), stop_rx.clone());
            tasks.push(tokio::spawn(async move { crate::events::listen(app, channels, notifier, stop).await }));
        }
        for unit in units {
            let stop = stop_rx.clone();
            let retention = unit.clone();
            let retention_stop = stop_rx.clone();
            tasks.push(tokio::spawn(async move { unit.run(stop).await }));
            tasks.push(tokio::spawn(async move { retention.retention(retention_stop).await }));
        }
        Ok(RelayHandle { stop: stop_tx, tasks, stats })
    }
}

impl Publisher {
    /// The relay logs in where the module lives, and its progress row is there.
    async fn check(&self) -> Result<(), Error> {
        let relay = self.app.relay_for(&self.module).await?;
        let sql = format!("SELECT count(*) FROM {} WHERE subscriber = $1", self.progress);
        let rows: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(RELAY_PROGRESS).fetch_one(&relay).await?;
        if rows == 0 {
            return Err(Error::Nats {
                context: format!("relaying module `{}`", self.module),
                message: "the outbox has no progress row for the relay, so retention would not wait for it".into(),
                help: Some(
                    "set `transport = \"jetstream\"` in `[events]` (or for a subscription) in moat.toml and run `moat up`"
                        .into(),
                ),
            });
        }
        Ok(())
    }

    async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let wake = self.app.notifier().channel(&self.module);
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
            let sleep = match self.batch().await {
                Ok(n) if n >= self.config.batch_size as usize => {
                    failures = 0;
                    continue;
                }
                Ok(_) => {
                    failures = 0;
                    self.config.poll_interval
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(module = %self.module, error = %e, "relaying failed; trying again");
                    Duration::from_millis(100 * u64::from(failures.min(50)))
                }
            };
            tokio::select! {
                _ = async { match local.as_mut().as_pin_mut() { Some(n) => n.await, None => std::future::pending().await } } => {}
                _ = tokio::time::sleep(sleep) => {}
                _ = stop.changed() => {}
            }
        }
    }

    async fn retention(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let schema = self.progress.clone();
        loop {
            tokio::select! { _ = tokio::time::sleep(self.config.retention_interval) => {}, _ = stop.changed() => return }
            let Some(module) = self.app.manifest().module(&self.module) else { return };
            let relay = match self.app.relay_for(&self.module).await {
                Ok(relay) => relay,
                Err(_) => continue,
            };
            if let Err(e) = crate::events::truncate_consumed(&relay, module.schema.as_str()).await {
                tracing::debug!(schema, error = %e, "outbox retention skipped this round");
            }
        }
    }

    /// The cluster the module's outbox is in now (read once per database the module lives in).
    async fn here(&self, relay: &sqlx::PgPool) -> Result<String, Error> {
        let moves = *self.app.moves().borrow();
        let mut cached = self.cluster.lock().await;
        if let Some((at, id)) = cached.as_ref()
            && *at == moves
        {
            return Ok(id.clone());
        }
        let id = cluster_id(relay).await?;
        *cached = Some((moves, id.clone()));
        Ok(id)
    }

    /// One batch: returns how many events it published.
    async fn batch(&self) -> Result<usize, Error> {
        let relay = self.app.relay_for(&self.module).await?;
        let here = self.here(&relay).await?;
        let lock = format!(
            "SELECT coalesce(lo::text, '1:1:') AS lo, hi::text AS hi, last_id, cluster, moved_id FROM {} WHERE subscriber = {} FOR UPDATE SKIP LOCKED",
            self.progress,
            literal(RELAY_PROGRESS)
        );
        let (mut tx, rows) = RawTx::begin_with(relay.acquire().await?, &lock).await?;
        let Some(row) = rows.first() else {
            // Another relay holds this module right now (or the row is gone: `check` said so).
            tx.rollback().await?;
            return Ok(0);
        };
        let lo: String = row.try_get("lo")?;
        let hi: Option<String> = row.try_get("hi")?;
        let last_id: i64 = row.try_get("last_id")?;
        let cluster: Option<String> = row.try_get("cluster")?;
        let moved_id: i64 = row.try_get("moved_id")?;
        if cluster.as_ref().is_some_and(|c| *c != here) && lo != "1:1:" {
            return self
                .rebase(tx, &lo, hi.as_deref(), last_id, cluster.as_deref().unwrap_or(&here), moved_id, &here)
                .await;
        }
        let limit = self.config.batch_size;
        let at = (lo.clone(), hi.clone(), last_id, here.clone());
        let prefetched = self.prefetched.lock().await.take();
        let (snap, events) = match prefetched {
            Some(p) if p.at == at => (p.snap, p.events),
            _ => self.read(&mut tx, &at).await?,
        };
        let complete = (events.len() as i64) < limit;
        let (next_lo, next_hi, next_last) = if complete {
            (snap.clone(), None, 0)
        } else {
            (lo.clone(), Some(snap.clone()), events.last().map_or(last_id, |(e, _)| e.position))
        };
        if events.is_empty() && next_lo == lo && hi.is_none() {
            tx.rollback().await?;
            return Ok(0);
        }
        // While JetStream acknowledges this batch, the next one (when the backlog goes on) is read
        // on another connection: it is published only after every PubAck of this one.
        let next = (next_lo.clone(), next_hi.clone(), next_last, here.clone());
        let prefetch = async {
            if complete {
                return None;
            }
            let mut conn = relay.acquire().await.ok()?;
            let (snap, events) = self.read(&mut conn, &next).await.ok()?;
            Some(Prefetched { at: next, snap, events })
        };
        let (published, prefetched) = tokio::join!(self.publish(&events), prefetch);
        published?;
        *self.prefetched.lock().await = prefetched;
        let here_sql = literal(&here);
        let finish = format!(
            "UPDATE {progress} SET lo = {lo}::pg_snapshot, hi = {hi}, last_id = {next_last}, cluster = {here_sql}, \
             consumed_below = pg_snapshot_xmin({lo}::pg_snapshot), updated_at = now() WHERE subscriber = {name}; ",
            progress = self.progress,
            lo = literal(&next_lo),
            hi = next_hi.as_deref().map_or_else(|| "NULL".to_owned(), |h| format!("{}::pg_snapshot", literal(h))),
            name = literal(RELAY_PROGRESS),
        );
        tx.commit(&finish).await?;
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        Ok(events.len())
    }

    /// The batch after the cursor `at` (`lo`, `hi`, `last_id`, the cluster), as the relay reads
    /// it: the snapshot that bounds it and its events in outbox order, each with its origin.
    async fn read(
        &self,
        conn: &mut sqlx::PgConnection,
        at: &Cursor,
    ) -> Result<(String, Vec<(RawEvent, Origin)>), Error> {
        let (lo, hi, last_id, here) = at;
        let limit = self.config.batch_size;
        const COLUMNS: &str = "o.id, o.tx::text AS tx, o.cluster, o.event_id, o.event_type, o.event_key, o.payload::text, o.correlation_id, o.causation_id, o.published_at";
        let lo_snapshot = format!("{}::pg_snapshot", literal(lo));
        let here_sql = literal(here);
        let sql = match hi {
            None => format!(
                "SET LOCAL enable_seqscan = off; \
                 WITH s AS (SELECT pg_current_snapshot() AS snap) \
                 SELECT s.snap::text AS snap, {COLUMNS} FROM s LEFT JOIN LATERAL (\
                   SELECT * FROM {outbox} WHERE tx >= pg_snapshot_xmin({lo_snapshot}) AND NOT pg_visible_in_snapshot(tx, {lo_snapshot}) \
                   AND cluster = {here_sql} ORDER BY id + 0 LIMIT {limit}) o ON true",
                outbox = self.outbox
            ),
            Some(hi) => format!(
                "SET LOCAL enable_seqscan = off; SET LOCAL enable_sort = off; \
                 SELECT {hi_text} AS snap, {COLUMNS} FROM {outbox} o WHERE id > {last_id} \
                 AND pg_visible_in_snapshot(tx, {hi_snapshot}) AND NOT pg_visible_in_snapshot(tx, {lo_snapshot}) \
                 AND cluster = {here_sql} ORDER BY id LIMIT {limit}",
                hi_text = literal(hi),
                hi_snapshot = format_args!("{}::pg_snapshot", literal(hi)),
                outbox = self.outbox
            ),
        };
        let rows = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).fetch_all(&mut *conn).await?;
        let mut snap = hi.clone().unwrap_or_else(|| lo.clone());
        let mut events = Vec::with_capacity(rows.len());
        for row in &rows {
            snap = row.try_get("snap")?;
            if row.try_get::<Option<i64>, _>("id")?.is_none() {
                continue;
            }
            let tx_id: String = row.try_get("tx")?;
            let origin = Origin {
                tx: tx_id.parse().map_err(|e| nats_error("reading the outbox", e))?,
                cluster: row.try_get("cluster")?,
                lo: lo.clone(),
                // This page's events come after `last_id` in `hi`: those up to it were acknowledged.
                floor: hi.clone().map(|hi| (hi, *last_id)),
            };
            events.push((RawEvent::from_row(row, "id")?, origin));
        }
        Ok((snap, events))
    }

    /// The outbox now lives in another cluster (the module was moved, or its database restored
    /// elsewhere): publishes every row of other clusters the cursor had not consumed, in id
    /// order, then starts over in this cluster.
    #[allow(clippy::too_many_arguments)]
    async fn rebase(
        &self,
        tx: RawTx,
        lo: &str,
        hi: Option<&str>,
        last_id: i64,
        old: &str,
        moved_id: i64,
        here: &str,
    ) -> Result<usize, Error> {
        let mut tx = tx;
        let consumed = match hi {
            None => "pg_visible_in_snapshot(o.tx, $3::pg_snapshot)".to_owned(),
            Some(_) => "(pg_visible_in_snapshot(o.tx, $3::pg_snapshot) OR (pg_visible_in_snapshot(o.tx, $4::pg_snapshot) AND o.id <= $5))".to_owned(),
        };
        let sql = format!(
            "SELECT o.id, o.tx::text AS tx, o.cluster, o.event_id, o.event_type, o.event_key, o.payload::text, o.correlation_id, o.causation_id, o.published_at \
             FROM {outbox} o WHERE o.cluster <> $1 AND CASE WHEN o.cluster = $2 THEN NOT {consumed} ELSE o.id > $6 END ORDER BY o.id",
            outbox = self.outbox
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(here)
            .bind(old)
            .bind(lo)
            .bind(hi.unwrap_or(lo))
            .bind(last_id)
            .bind(moved_id)
            .fetch_all(&mut *tx)
            .await?;
        let mut events = Vec::with_capacity(rows.len());
        for row in &rows {
            let tx_id: String = row.try_get("tx")?;
            let origin = Origin {
                tx: tx_id.parse().map_err(|e| nats_error("reading the outbox", e))?,
                cluster: row.try_get("cluster")?,
                lo: lo.to_owned(),
                floor: None,
            };
            events.push((RawEvent::from_row(row, "id")?, origin));
        }
        self.publish(&events).await?;
        let sql = format!("SELECT coalesce(max(id), 0) FROM {}", self.outbox);
        let max_id: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(&mut *tx).await?;
        tracing::info!(module = %self.module, from = old, to = here, carried = events.len(), "relay cursor re-based after a move to another cluster");
        let finish = format!(
            "UPDATE {} SET lo = '1:1:', hi = NULL, last_id = 0, cluster = {}, moved_id = greatest(moved_id, {max_id}), updated_at = now() WHERE subscriber = {}; ",
            self.progress,
            literal(here),
            literal(RELAY_PROGRESS)
        );
        tx.commit(&finish).await?;
        Ok(self.config.batch_size as usize)
    }

    /// Publishes `events`, each after its key's previous one was acknowledged, and waits for
    /// every PubAck, within
    /// the relay's retry horizon (`[events] relay_retry`).
    async fn publish(&self, events: &[(RawEvent, Origin)]) -> Result<(), Error> {
        let horizon = self.broker.manifest.events.relay_retry;
        match tokio::time::timeout(horizon, self.publish_in_key_order(events)).await {
            Ok(result) => result,
            Err(_) => Err(Error::Nats {
                context: format!("relaying module `{}`", self.module),
                message: format!(
                    "JetStream did not acknowledge the batch within the retry horizon ({})",
                    moat_core::manifest::format_duration(horizon)
                ),
                help: Some("the relay publishes the batch again; JetStream drops what it already stored".into()),
            }),
        }
    }

    async fn publish_in_key_order(&self, events: &[(RawEvent, Origin)]) -> Result<(), Error> {
        // Each key's previous publish is acknowledged before its next one goes out; other keys'
        // publishes stay in flight meanwhile.
        let mut pending: Vec<Option<PublishAckFuture>> = Vec::with_capacity(events.len());
        let mut last_of_key: HashMap<&str, usize> = HashMap::new();
        for (event, origin) in events {
            if let Some(previous) = last_of_key.get(event.key.as_str()).and_then(|i| pending[*i].take()) {
                self.acks(vec![previous]).await?;
            }
            let (headers, body) = encode(&self.module, event, origin)?;
            let subject = self.broker.subject(&self.module, &event.event_type);
            let ack = self
                .broker
                .js
                .send_publish(subject, PublishMessage::build().payload(body).headers(headers))
                .await
                .map_err(|e| nats_error(format!("publishing an event of module `{}`", self.module), e))?;
            last_of_key.insert(event.key.as_str(), pending.len());
            pending.push(Some(ack));
        }
        self.acks(pending.into_iter().flatten().collect()).await
    }

    async fn acks(&self, pending: Vec<PublishAckFuture>) -> Result<(), Error> {
        for ack in futures::future::join_all(pending.into_iter().map(|f| f.into_future())).await {
            let ack = ack
                .map_err(|e| nats_error(format!("waiting for JetStream to store an event of `{}`", self.module), e))?;
            if ack.duplicate {
                self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
            } else {
                self.stats.published.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

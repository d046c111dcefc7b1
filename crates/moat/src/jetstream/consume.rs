//! A subscription that reads JetStream: a durable consumer of the publisher's subjects, applied
//! in the subscriber's own transactions.
//!
//! **What the subscriber records.** In its `moat_subscriptions` row, in the transaction of the
//! handlers' writes: `stream_seq`, the last stream sequence it went through; `lo`, a snapshot of
//! the publisher's transactions all of whose events it went through (taken from the `Moat-Lo`
//! header: the relay publishes an event only after every event visible in that snapshot was
//! acknowledged, so those are earlier in the stream); and `applied`, the events it applied (or
//! holds in its inbox) that `lo` does not cover yet. An event is already applied when its
//! transaction is visible in `lo` or it is in `applied`: so a message JetStream delivers again,
//! and an event the relay published again after the stream's duplicate window, have no second
//! effect, however late they come. The direct transport keeps the same `lo`, so a subscription
//! switches between the two without loss or duplicate.
//!
//! **Order.** A batch fetches under the subscription row's lock (`FOR UPDATE SKIP LOCKED`), so
//! one process at a time takes messages from the consumer, and only after it checked that the
//! consumer has delivered nothing beyond `stream_seq` that nobody applied (a process killed with
//! a fetched batch): otherwise the consumer is created again from `stream_seq + 1`, since
//! JetStream would deliver those messages again only after their ack wait, behind newer ones.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{consumer, stream};
use futures::StreamExt;
use moat_core::manifest::Transport;
use moat_core::quote::literal;
use tokio::sync::{Mutex, Notify, watch};
use uuid::Uuid;

use super::broker::{Broker, nats_error};
use super::envelope::{Origin, decode};
use super::snapshot::Snapshot;
use crate::Error;
use crate::events::{Locked, Mode, RawEvent, RawTx, Subscription, backoff, lock_sql, outbox_insert, parse_lock};

/// What a subscription that reads JetStream holds besides the rest.
pub(crate) struct Jet {
    pub(crate) broker: Broker,
    pub(crate) stream: stream::Stream,
    consumer: Mutex<Option<consumer::PullConsumer>>,
    /// Woken by a plain NATS subscription to the publisher's subjects.
    wake: Arc<Notify>,
    wake_task: tokio::task::JoinHandle<()>,
}

impl Drop for Jet {
    fn drop(&mut self) {
        self.wake_task.abort();
    }
}

impl Jet {
    pub(crate) async fn new(broker: Broker, stream: stream::Stream, publisher: &str) -> Result<Self, Error> {
        let wake = Arc::new(Notify::new());
        let mut live = broker
            .client
            .subscribe(broker.module_subjects(publisher))
            .await
            .map_err(|e| nats_error("subscribing to wake-ups", e))?;
        let notify = wake.clone();
        let wake_task = tokio::spawn(async move {
            while live.next().await.is_some() {
                notify.notify_one();
            }
        });
        Ok(Self { broker, stream, consumer: Mutex::new(None), wake, wake_task })
    }
}

/// The cursor of a subscription as JetStream batches move it.
#[derive(Debug, Clone)]
pub(crate) struct JetCursor {
    pub(crate) lo: String,
    lo_snapshot: Snapshot,
    /// A direct cursor in the middle of a batch when the subscription switched: the events of
    /// transactions visible in `hi` up to outbox id `last_id` were consumed too.
    pub(crate) floor: Option<(String, i64)>,
    floor_snapshot: Option<Snapshot>,
    pub(crate) cluster: Option<String>,
    /// `<tx>/<event id>` of events applied or held beyond `lo`.
    pub(crate) applied: Vec<String>,
    ids: BTreeSet<Uuid>,
}

impl JetCursor {
    pub(crate) fn new(lo: String, floor: Option<(String, i64)>, cluster: Option<String>, applied: Vec<String>) -> Self {
        let lo_snapshot = Snapshot::parse(&lo).unwrap_or_else(|| Snapshot::parse("1:1:").expect("a valid snapshot"));
        let floor_snapshot = floor.as_ref().and_then(|(hi, _)| Snapshot::parse(hi));
        let ids = applied.iter().filter_map(|a| applied_id(a)).collect();
        Self { lo, lo_snapshot, floor, floor_snapshot, cluster, applied, ids }
    }

    /// Whether the event (at `position` in the outbox) was applied (or held) already.
    pub(crate) fn consumed(&self, origin: &Origin, id: Uuid, position: i64) -> bool {
        if self.ids.contains(&id) {
            return true;
        }
        match &self.cluster {
            Some(cluster) if *cluster != origin.cluster => false,
            _ => {
                self.lo_snapshot.visible(origin.tx)
                    || self
                        .floor
                        .as_ref()
                        .zip(self.floor_snapshot.as_ref())
                        .is_some_and(|((_, last_id), hi)| hi.visible(origin.tx) && position <= *last_id)
            }
        }
    }

    /// Goes past a message: its `lo` becomes the cursor's when it covers the cursor's (every
    /// earlier message was seen), and an event applied or held is remembered until then.
    pub(crate) fn pass(&mut self, origin: &Origin, id: Uuid, position: i64, applied: bool) {
        let entry = format!("{}/{id}/{position}", origin.tx);
        if self.cluster.as_ref().is_some_and(|c| *c != origin.cluster) {
            // The publisher's outbox moved to another cluster: its transactions are numbered anew.
            *self = Self::new(origin.lo.clone(), None, Some(origin.cluster.clone()), Vec::new());
        } else if self.cluster.is_none() {
            self.cluster = Some(origin.cluster.clone());
        }
        if let Some(lo) = Snapshot::parse(&origin.lo)
            && lo.covers(&self.lo_snapshot)
            && lo != self.lo_snapshot
        {
            self.applied.retain(|a| applied_tx(a).is_none_or(|tx| !lo.visible(tx)));
            self.ids = self.applied.iter().filter_map(|a| applied_id(a)).collect();
            if self.floor_snapshot.as_ref().is_some_and(|hi| lo.covers(hi)) {
                self.floor = None;
                self.floor_snapshot = None;
            }
            self.lo = origin.lo.clone();
            self.lo_snapshot = lo;
        }
        // The relay pages through a large batch: what it published in earlier pages of it is
        // passed, and need not be remembered one by one.
        if let Some((hi, last_id)) = &origin.floor
            && origin.lo == self.lo
            && let Some(hi_snapshot) = Snapshot::parse(hi)
        {
            let adopt = match &self.floor {
                None => true,
                Some((current, current_last)) => current == hi && last_id > current_last,
            };
            if adopt {
                self.applied.retain(|a| {
                    !(applied_tx(a).is_some_and(|tx| hi_snapshot.visible(tx))
                        && applied_position(a).is_some_and(|p| p <= *last_id))
                });
                self.ids = self.applied.iter().filter_map(|a| applied_id(a)).collect();
                self.floor = Some((hi.clone(), *last_id));
                self.floor_snapshot = Some(hi_snapshot);
            }
        }
        if applied && self.ids.insert(id) {
            self.applied.push(entry);
        }
    }
}

/// The outbox position of an entry of `applied` (`<tx>/<event id>/<position>`; entries written
/// before positions were recorded have none).
fn applied_position(entry: &str) -> Option<i64> {
    entry.splitn(3, '/').nth(2).and_then(|p| p.parse().ok())
}

fn applied_tx(entry: &str) -> Option<u64> {
    entry.split_once('/').and_then(|(tx, _)| tx.parse().ok())
}

fn applied_id(entry: &str) -> Option<Uuid> {
    entry.split('/').nth(1).and_then(|id| id.parse().ok())
}

/// Prunes `applied` of what `lo` covers (after the direct transport moved `lo`).
pub(crate) fn prune_applied(applied: &[String], lo: &str) -> Vec<String> {
    match Snapshot::parse(lo) {
        Some(lo) => applied.iter().filter(|a| applied_tx(a).is_none_or(|tx| !lo.visible(tx))).cloned().collect(),
        None => applied.to_vec(),
    }
}

/// The ids in `applied`.
pub(crate) fn applied_ids(applied: &[String]) -> BTreeSet<Uuid> {
    applied.iter().filter_map(|a| applied_id(a)).collect()
}

/// How far before the cursor's last write a switch from the direct transport starts reading the
/// stream: the snapshot `lo` was taken shortly before that write, and every event it does not
/// cover was committed, hence published, after it was taken.
const SWITCH_MARGIN: Duration = Duration::from_secs(600);

/// The expiry of a fetch: the server ends a request it served only in part after this long
/// (408), and the batch goes on with what came.
const FETCH_EXPIRY: Duration = Duration::from_secs(1);

/// How long fetching one batch from the consumer may take: beyond the expiry, and beyond the
/// client's own end of an expired request (5 s after it).
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// A message taken from the consumer.
struct Taken {
    message: async_nats::jetstream::Message,
    sequence: u64,
    delivered: i64,
}

impl Subscription {
    fn jet(&self) -> Result<&Jet, Error> {
        self.jet.as_deref().ok_or_else(|| Error::Nats {
            context: format!("subscription of `{}` to `{}`", self.subscriber, self.publisher),
            message: "no JetStream connection".into(),
            help: None,
        })
    }

    /// The loop of a subscription reading JetStream; with `drain`, until everything in the
    /// stream is applied (then the row is switched to the direct transport and it returns).
    pub(crate) async fn run_jetstream(&self, stop: &mut watch::Receiver<bool>, drain: bool) -> Result<(), Error> {
        let mut failures = 0u32;
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            let wake = self.jet()?.wake.clone();
            let notified = wake.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            let sleep = match self.jet_cycle(drain).await {
                Ok(JetOutcome::Drained) => return Ok(()),
                Ok(JetOutcome::More) => {
                    failures = 0;
                    continue;
                }
                Ok(JetOutcome::Idle(next_retry)) => {
                    failures = 0;
                    next_retry.map_or(self.config.poll_interval, |d| d.min(self.config.poll_interval))
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(subscriber = %self.subscriber, publisher = %self.publisher, error = %e, "event delivery from JetStream failed; retrying");
                    // Whatever was fetched and not applied must come again, in order.
                    *self.jet()?.consumer.lock().await = None;
                    self.local().jet_reset = true;
                    backoff(&self.config, failures as i32).min(Duration::from_secs(5))
                }
            };
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(sleep) => {}
                _ = stop.changed() => {}
            }
        }
    }

    async fn jet_cycle(&self, drain: bool) -> Result<JetOutcome, Error> {
        let mut total = 0usize;
        if !drain && !self.local().held && self.nothing_pending().await? {
            // Idle: no transaction (each would lock the cursor row and take a transaction id).
            return Ok(JetOutcome::Idle(None));
        }
        loop {
            match self.jet_batch(Mode::Fast, drain, None).await? {
                Batched::Done(n) => {
                    total += n;
                    if n < self.config.batch_size as usize {
                        break;
                    }
                }
                Batched::Redo(messages) => {
                    if let Batched::Done(n) = self.jet_batch(Mode::Careful, drain, Some(messages)).await? {
                        total += n;
                    }
                }
                Batched::Drained => return Ok(JetOutcome::Drained),
            }
        }
        let next_retry = if self.local().held { self.retry_due().await? } else { None };
        Ok(if total > 0 { JetOutcome::More } else { JetOutcome::Idle(next_retry) })
    }

    /// Whether the consumer this process uses has nothing to deliver and nothing delivered that
    /// waits for an acknowledgement (then a batch would find nothing). `false` when unsure.
    async fn nothing_pending(&self) -> Result<bool, Error> {
        let jet = self.jet()?;
        let cached = jet.consumer.lock().await.clone();
        let Some(mut consumer) = cached else { return Ok(false) };
        match consumer.info().await {
            Ok(info) => Ok(info.num_pending == 0 && info.num_ack_pending == 0),
            Err(_) => Ok(false),
        }
    }

    /// The consumer, created (or created again from the subscriber's record) when needed.
    async fn consumer_for(&self, row: &Locked) -> Result<consumer::PullConsumer, Error> {
        let jet = self.jet()?;
        let mut slot = jet.consumer.lock().await;
        let reset = std::mem::take(&mut self.local().jet_reset);
        let start = consumer::DeliverPolicy::ByStartSequence { start_sequence: row.stream_seq as u64 + 1 };
        let mut current = match slot.take() {
            Some(c) if !reset => c,
            _ => jet.broker.consumer(&jet.stream, &self.subscriber, &self.publisher, start).await?,
        };
        // Holding the row lock, nobody else fetches: anything delivered beyond what the row says
        // was applied was fetched by a process that did not finish (or by this one, before an
        // error), and would come again only after its ack wait, behind newer messages. Such
        // messages are unacknowledged; the delivered stream sequence alone says nothing, since a
        // filtered consumer moves it past the other publishers' messages it skipped (at the end
        // of the stream, beyond the last message of this publisher).
        let info = current.info().await.map_err(|e| nats_error("reading the consumer", e))?;
        if info.num_ack_pending > 0 && info.delivered.stream_sequence > row.stream_seq as u64 {
            tracing::info!(
                subscriber = %self.subscriber, publisher = %self.publisher,
                delivered = info.delivered.stream_sequence, applied = row.stream_seq, unacknowledged = info.num_ack_pending,
                "messages were taken but not applied; reading the stream again from the last applied one"
            );
            current = jet.broker.reset_consumer(&jet.stream, &self.subscriber, &self.publisher, start).await?;
        }
        *slot = Some(current.clone());
        Ok(current)
    }

    /// Fetches what the consumer has (up to `limit`), with an expiry ([`FETCH_EXPIRY`]) and
    /// within [`FETCH_TIMEOUT`]. Without them a fetch whose end the server never sent (it went
    /// down meanwhile, or stopped short of the batch, as nats-server 2.9 does at times with a
    /// filtered consumer) waited for ever, holding the row lock that every other process of the
    /// subscriber skips.
    async fn take(&self, consumer: &consumer::PullConsumer, limit: usize) -> Result<Vec<Taken>, Error> {
        let fetch = async {
            let mut batch = consumer
                .fetch()
                .max_messages(limit)
                .expires(FETCH_EXPIRY)
                .messages()
                .await
                .map_err(|e| nats_error("fetching events", e))?;
            let mut taken = Vec::new();
            while let Some(message) = batch.next().await {
                let message = message.map_err(|e| nats_error("fetching events", e))?;
                let info = message.info().map_err(|e| nats_error("reading a message's metadata", e))?;
                let (sequence, delivered) = (info.stream_sequence, info.delivered);
                taken.push(Taken { message, sequence, delivered });
            }
            Ok(taken)
        };
        match tokio::time::timeout(FETCH_TIMEOUT, fetch).await {
            Ok(taken) => taken,
            // The next batch creates the consumer again from the row when it delivered more.
            Err(_) => Err(nats_error("fetching events", format!("no answer within {FETCH_TIMEOUT:?}"))),
        }
    }

    /// One batch in one transaction of the subscriber.
    async fn jet_batch(&self, mode: Mode, drain: bool, again: Option<Vec<Taken>>) -> Result<Batched, Error> {
        let conn = self.app.acquire(&self.subscriber).await?;
        let lock = lock_sql(&self.tables.subscriptions, &self.tables.inbox, &self.publisher);
        let (mut tx, rows) = RawTx::begin_with(conn, &lock).await?;
        let Some(row) = parse_lock(&rows)? else {
            tx.rollback().await?;
            return Ok(Batched::Done(0));
        };
        if row.transport != Transport::JetStream.as_str() {
            if drain {
                tx.rollback().await?;
                return Ok(Batched::Drained);
            }
            return self.switch_from_direct(tx, &row).await;
        }
        self.local().handled.clone_from(&row.handled);
        if !row.blocked.is_empty() {
            self.local().held = true;
        }
        let taken = match again {
            Some(taken) => taken,
            None => {
                let consumer = self.consumer_for(&row).await?;
                let taken = self.take(&consumer, self.config.batch_size as usize).await?;
                if taken.is_empty() && drain {
                    let info =
                        consumer.clone().info().await.map_err(|e| nats_error("reading the consumer", e))?.clone();
                    if info.num_pending == 0 {
                        let sql = format!(
                            "UPDATE {} SET transport = 'direct', updated_at = now() WHERE publisher = {}; ",
                            self.tables.subscriptions,
                            literal(&self.publisher)
                        );
                        tx.commit(&sql).await?;
                        tracing::info!(subscriber = %self.subscriber, publisher = %self.publisher, "drained JetStream; the subscription reads the outbox again");
                        return Ok(Batched::Drained);
                    }
                }
                taken
            }
        };
        if taken.is_empty() {
            tx.rollback().await?;
            return Ok(Batched::Done(0));
        }
        let started = Instant::now();
        let floor = row.cursor.hi.clone().map(|hi| (hi, row.cursor.last_id));
        let mut cursor = JetCursor::new(row.cursor.lo.clone(), floor, row.cursor.cluster.clone(), row.applied.clone());
        let handled: BTreeSet<&str> = row.handled.iter().map(String::as_str).collect();
        let mut to_apply: Vec<RawEvent> = Vec::new();
        let mut last = row.stream_seq as u64;
        for t in &taken {
            if t.sequence <= row.stream_seq as u64 {
                continue;
            }
            if t.delivered > 1 && t.sequence > last {
                // Delivered before and never applied: newer messages may have gone by.
                tx.rollback().await?;
                self.local().jet_reset = true;
                return Err(nats_error(
                    "reading events in order",
                    format!("message {} was delivered again before being applied", t.sequence),
                ));
            }
            last = t.sequence;
            let (event, origin) =
                decode(t.message.subject.as_str(), t.sequence, t.message.headers.as_ref(), &t.message.payload)?;
            if cursor.consumed(&origin, event.id, event.position) {
                cursor.pass(&origin, event.id, event.position, false);
                continue;
            }
            let wanted = handled.contains(event.event_type.as_str());
            cursor.pass(&origin, event.id, event.position, wanted);
            if wanted {
                to_apply.push(event);
            }
        }
        let mut blocked = row.blocked.clone();
        let mut published = Vec::new();
        let timeout = self.app.manifest().events.handler_timeout;
        let applied = match mode {
            Mode::Fast => {
                match tokio::time::timeout(timeout, self.apply_fast(&mut tx, &to_apply, &mut blocked, &mut published))
                    .await
                {
                    Ok(result) => result?,
                    Err(_) => return Err(self.timed_out(timeout)),
                }
            }
            Mode::Careful => {
                match tokio::time::timeout(
                    timeout,
                    self.apply_careful(&mut tx, &to_apply, &mut blocked, &mut published),
                )
                .await
                {
                    Ok(result) => result?,
                    Err(_) => return Err(self.timed_out(timeout)),
                }
                true
            }
        };
        if !applied {
            tx.rollback().await?;
            return Ok(Batched::Redo(taken));
        }
        let mut finish = String::new();
        if !published.is_empty() {
            let Some(outbox) = &self.tables.sub_outbox else {
                return Err(Error::NoOutbox { module: self.subscriber.clone(), event_type: published[0].event_type });
            };
            finish.push_str(&outbox_insert(outbox, &published)?);
            finish.push_str("; ");
        }
        let applied_sql =
            format!("ARRAY[{}]::text[]", cursor.applied.iter().map(|a| literal(a)).collect::<Vec<_>>().join(", "));
        finish.push_str(&format!(
            "UPDATE {} SET lo = {}::pg_snapshot, hi = {}, last_id = {}, cluster = {}, stream_seq = {last}, applied = {applied_sql}, updated_at = now() WHERE publisher = {}; ",
            self.tables.subscriptions,
            literal(&cursor.lo),
            cursor.floor.as_ref().map_or_else(|| "NULL".to_owned(), |(hi, _)| format!("{}::pg_snapshot", literal(hi))),
            cursor.floor.as_ref().map_or(0, |(_, last_id)| *last_id),
            cursor.cluster.as_deref().map_or_else(|| "cluster".to_owned(), literal),
            literal(&self.publisher)
        ));
        tx.commit(&finish).await?;
        // Acknowledging the last message acknowledges every earlier one (ack policy `all`). A lost
        // acknowledgement is harmless: the row says these were applied.
        if let Some(t) = taken.last() {
            let _ = t.message.ack().await;
        }
        if !published.is_empty() {
            self.notifier.published(&self.subscriber);
        }
        tracing::trace!(subscriber = %self.subscriber, applied = to_apply.len(), elapsed = ?started.elapsed(), "JetStream batch applied");
        Ok(Batched::Done(taken.len()))
    }

    fn timed_out(&self, timeout: Duration) -> Error {
        Error::Nats {
            context: format!("handlers of `{}` for events of `{}`", self.subscriber, self.publisher),
            message: format!(
                "the batch ran longer than `handler_timeout` ({})",
                moat_core::manifest::format_duration(timeout)
            ),
            help: Some("raise `[events] handler_timeout` (and `ack_wait` with it), or make the handler faster".into()),
        }
    }

    /// The row says the direct transport ran last: start the consumer where the direct cursor
    /// stands (the whole stream when it consumed nothing; otherwise from a little before its last
    /// write, every message its `lo` covers being passed over), and record the switch.
    async fn switch_from_direct(&self, tx: RawTx, row: &Locked) -> Result<Batched, Error> {
        let jet = self.jet()?;
        let start = if row.cursor.lo == "1:1:" && row.cursor.hi.is_none() && row.applied.is_empty() {
            consumer::DeliverPolicy::All
        } else {
            let at = row.updated_at - chrono::Duration::from_std(SWITCH_MARGIN).unwrap_or_default();
            let start_time =
                time::OffsetDateTime::from_unix_timestamp_nanos(at.timestamp_nanos_opt().map_or(0, i128::from))
                    .map_err(|e| nats_error("computing where to start reading", e))?;
            consumer::DeliverPolicy::ByStartTime { start_time }
        };
        let mut consumer = jet.broker.reset_consumer(&jet.stream, &self.subscriber, &self.publisher, start).await?;
        // The consumer starts after this sequence: the row says so, or the next batch would
        // take it for messages fetched and never applied.
        let before =
            consumer.info().await.map_err(|e| nats_error("reading the consumer", e))?.delivered.stream_sequence;
        *jet.consumer.lock().await = Some(consumer);
        let sql = format!(
            "UPDATE {} SET transport = 'jetstream', stream_seq = {before}, updated_at = now() WHERE publisher = {}; ",
            self.tables.subscriptions,
            literal(&self.publisher)
        );
        tx.commit(&sql).await?;
        tracing::info!(subscriber = %self.subscriber, publisher = %self.publisher, "the subscription reads JetStream from now on");
        Ok(Batched::Done(self.config.batch_size as usize))
    }
}

enum Batched {
    Done(usize),
    Redo(Vec<Taken>),
    Drained,
}

enum JetOutcome {
    More,
    Idle(Option<Duration>),
    Drained,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(tx: u64, lo: &str) -> Origin {
        Origin { tx, cluster: "c".into(), lo: lo.into(), floor: None }
    }

    #[test]
    fn a_relay_floor_keeps_the_applied_list_to_one_page() {
        let mut cursor = JetCursor::new("5:5:".into(), None, None, Vec::new());
        let page = |floor: Option<i64>| Origin {
            tx: 0,
            cluster: "c".into(),
            lo: "5:5:".into(),
            floor: floor.map(|last| ("5:900:".to_owned(), last)),
        };
        // Page one (no floor yet), then page two, whose floor says page one was acknowledged.
        for position in 1..=100 {
            let origin = Origin { tx: 10 + position as u64, ..page(None) };
            cursor.pass(&origin, Uuid::now_v7(), position, true);
        }
        assert_eq!(cursor.applied.len(), 100);
        let first_of_two = Origin { tx: 111, ..page(Some(100)) };
        let id = Uuid::now_v7();
        cursor.pass(&first_of_two, id, 101, true);
        assert_eq!(cursor.applied.len(), 1, "page one is covered by the floor");
        // A message of page one delivered again is still recognized, through the floor.
        assert!(cursor.consumed(&Origin { tx: 50, ..page(Some(100)) }, Uuid::now_v7(), 40));
        assert!(cursor.consumed(&first_of_two, id, 101));
        assert!(!cursor.consumed(&Origin { tx: 112, ..page(Some(100)) }, Uuid::now_v7(), 102));
    }

    #[test]
    fn a_cursor_passes_events_once_and_forgets_what_lo_covers() {
        let mut cursor = JetCursor::new("1:1:".into(), None, None, Vec::new());
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        assert!(!cursor.consumed(&origin(5, "1:1:"), a, 1));
        cursor.pass(&origin(5, "1:1:"), a, 1, true);
        cursor.pass(&origin(6, "1:1:"), b, 2, true);
        assert!(cursor.consumed(&origin(5, "1:1:"), a, 1), "applied beyond lo");
        // The relay moved on: its lo covers both.
        cursor.pass(&origin(9, "7:9:"), c, 3, true);
        assert_eq!(cursor.lo, "7:9:");
        assert_eq!(cursor.applied.len(), 1, "{:?}", cursor.applied);
        assert!(cursor.consumed(&origin(5, "1:1:"), a, 1), "covered by lo");
        assert!(cursor.consumed(&origin(9, "7:9:"), c, 3));
        assert!(!cursor.consumed(&origin(10, "7:9:"), Uuid::now_v7(), 4));
        // An older lo never moves the cursor back.
        cursor.pass(&origin(11, "1:1:"), Uuid::now_v7(), 5, false);
        assert_eq!(cursor.lo, "7:9:");
        assert_eq!(prune_applied(&cursor.applied, "10:12:"), Vec::<String>::new());
    }
}

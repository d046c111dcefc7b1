//! The public handler API and its type erasure: what a subscriber implements, and how the
//! dispatcher calls it with rows it read from an outbox or an inbox.

use std::future::Future;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use sqlx::PgConnection;
use uuid::Uuid;

use super::publish::{EventMeta, PendingEvent, pending_event};
use super::{Envelope, Event};
use crate::Error;

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

impl<'c> HandlerContext<'c> {
    pub(crate) fn new(conn: &'c mut PgConnection, subscriber: &'c str, has_outbox: bool, event: &RawEvent) -> Self {
        Self {
            conn,
            subscriber,
            has_outbox,
            event_id: event.id,
            correlation_id: event.correlation_id,
            published: Vec::new(),
        }
    }
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

/// An outbox row as the relay reads it (or its copy in the subscriber's inbox).
#[derive(Debug, Clone)]
pub(crate) struct RawEvent {
    /// Its `id` in the publisher's outbox.
    pub(crate) position: i64,
    pub(crate) id: Uuid,
    pub(crate) event_type: String,
    pub(crate) key: String,
    pub(crate) payload: String,
    pub(crate) correlation_id: Option<Uuid>,
    pub(crate) causation_id: Option<Uuid>,
    pub(crate) published_at: chrono::DateTime<chrono::Utc>,
}

impl RawEvent {
    /// Reads the columns `outbox_id` or `id` (the position), `event_id`, `event_type`,
    /// `event_key`, `payload` (text), `correlation_id`, `causation_id`, `published_at`.
    pub(crate) fn from_row(row: &sqlx::postgres::PgRow, position_column: &str) -> Result<Self, sqlx::Error> {
        use sqlx::Row;
        Ok(Self {
            position: row.try_get(position_column)?,
            id: row.try_get("event_id")?,
            event_type: row.try_get("event_type")?,
            key: row.try_get("event_key")?,
            payload: row.try_get("payload")?,
            correlation_id: row.try_get("correlation_id")?,
            causation_id: row.try_get("causation_id")?,
            published_at: row.try_get("published_at")?,
        })
    }
}

/// A handler with its event type erased, as the dispatcher holds it.
pub(crate) trait ErasedHandler: Send + Sync {
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

/// How [`run_handler`] calls a handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Call {
    /// [`Handler::handle`] on one event.
    One,
    /// [`Handler::handle_batch`] on a run of events.
    Batch,
}

/// Erases the event type of `handler`.
pub(crate) fn erase<E: Event, H: Handler<E>>(handler: H) -> Arc<dyn ErasedHandler> {
    Arc::new(Typed { handler, _event: PhantomData::<fn() -> E> })
}

/// Runs `handler` in the subscriber's transaction on consecutive events of its type: with
/// [`Handler::handle_batch`] for [`Call::Batch`], with [`Handler::handle`] on the first event for
/// [`Call::One`]. A panic counts as a failure. On success the events the handler
/// published are appended to `published`.
pub(crate) async fn run_handler(
    handler: &Arc<dyn ErasedHandler>,
    ctx: &mut HandlerContext<'_>,
    run: &[RawEvent],
    publisher: &str,
    published: &mut Vec<PendingEvent>,
    call: Call,
) -> Result<(), HandlerError> {
    let Some(first) = run.first() else { return Ok(()) };
    let outcome = match call {
        Call::One => AssertUnwindSafe(handler.handle(ctx, first, publisher)).catch_unwind().await,
        Call::Batch => AssertUnwindSafe(handler.handle_batch(ctx, run, publisher)).catch_unwind().await,
    };
    match outcome {
        Ok(Ok(())) => {
            published.append(&mut ctx.published);
            Ok(())
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!("the handler of `{}` panicked", first.event_type).into()),
    }
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

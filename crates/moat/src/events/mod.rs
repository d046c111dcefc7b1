//! Module events: a transactional outbox, a dispatcher that delivers each event exactly once in
//! effect to every subscriber, and snapshots.
//!
//! * **Publish.** [`ModuleTx::publish`] buffers a typed event; [`ModuleTx::commit`] writes the
//!   outbox rows and commits in one round trip (`INSERT ...; COMMIT`), so an event is stored in
//!   the publishing module's own schema in the same transaction as the state change, or not at all.
//! * **Subscribe.** [`EventBus::subscribe`] registers a handler of a subscriber module for an event
//!   type of a module it `depends_on` (anything else is an error naming both modules). A handler
//!   runs in a transaction on the subscriber's own runtime-role connection; the subscriber's cursor
//!   commits in the same transaction, so an event's effect is applied exactly once although
//!   delivery is at least once.
//! * **Dispatch.** The dispatcher reads outboxes as the `<project>_relay` role, which can read the
//!   outbox tables and nothing else. Batches are delimited by PostgreSQL snapshots (the rows whose
//!   transaction is visible in the new snapshot and was not in the previous one), so a transaction
//!   that commits after a later-numbered one is never skipped.
//! * **Failures.** A failing handler is retried with exponential backoff, then parked as a dead
//!   letter; later events of the same key wait behind it, events of other keys flow on.

mod dispatch;
mod publish;
mod snapshot;

pub use dispatch::{Dispatcher, DispatcherConfig, EventBus, Handler, HandlerContext, HandlerError};
pub use publish::{EventMeta, ModuleTx};
pub use snapshot::SnapshotUpsert;

pub use dispatch::truncate_consumed;
pub(crate) use publish::{outbox_table as publish_outbox, prepare_publish_sql};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A module event: a serde type with a stable name, published by one module.
///
/// ```
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct CustomerRenamed { customer_id: i64, name: String, version: i64 }
///
/// impl moat::events::Event for CustomerRenamed {
///     const MODULE: &'static str = "customers";
///     const TYPE: &'static str = "CustomerRenamed";
///     fn key(&self) -> String { self.customer_id.to_string() }
/// }
/// ```
pub trait Event: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The publishing module (its name in the manifest).
    const MODULE: &'static str;
    /// The event type's stable name; renaming the Rust type must not change it.
    const TYPE: &'static str;
    /// The ordering key (such as the aggregate id): events with one key are handled in publish order.
    fn key(&self) -> String;
}

/// A delivered event with its metadata.
#[derive(Debug, Clone)]
pub struct Envelope<E> {
    /// Unique id of the event (UUIDv7, chosen when published).
    pub id: uuid::Uuid,
    /// Its position in the publisher's outbox (increasing in publish order for one key).
    pub position: i64,
    /// The publishing module.
    pub publisher: String,
    /// The ordering key.
    pub key: String,
    /// The id of the request or workflow this event belongs to.
    pub correlation_id: Option<uuid::Uuid>,
    /// The id of the event that caused this one.
    pub causation_id: Option<uuid::Uuid>,
    /// When it was written (the publishing transaction's commit).
    pub published_at: chrono::DateTime<chrono::Utc>,
    /// The event.
    pub payload: E,
}

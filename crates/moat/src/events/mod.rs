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
//! * **Order.** Events of one key are applied in publish order, however many dispatcher
//!   processes share a subscription and while events of the key are held: a dispatcher reads the
//!   held keys after it holds the cursor (in a statement of its own, so never from a snapshot
//!   older than the previous holder's commit), and only the oldest held event of a key is retried.
//!
//! # Handler sets and rolling deploys
//!
//! All processes of a subscriber module share one cursor per publisher. When a dispatcher
//! starts, it registers in the subscription row (`moat_subscriptions.handled`) the event types
//! it has handlers for; the row holds the union over every process that ever started, minus the
//! types declared ignored ([`EventBus::ignore`], stored in `ignored`). Then:
//!
//! * A batch takes every event of a type in the union. An event whose type this process has no
//!   handler for is not skipped: it is held in the subscriber's inbox (state `waiting`, its key
//!   blocked behind it) and applied by the next process that has a handler for it; later events
//!   of its key wait behind it. `moat events status` shows them as held.
//! * **Adding a handler.** The new version registers its type when it starts; from the batch
//!   after that on (the registration takes the cursor's row lock, so it falls between two
//!   batches) every event of that type is delivered, to the new version, even while old
//!   versions run beside it. Events of that type that the cursor had passed before the first
//!   registration are not replayed (as with a single process).
//! * **Rolling back** a version that added a handler keeps the type registered: its events are
//!   held until a version with the handler runs again, or until the type is declared ignored.
//! * **Removing a handler.** The version without it declares the type ignored
//!   (`.ignore::<E>(subscriber)`): the type leaves the union, its events are no longer delivered,
//!   and held events of that type are dropped (so their keys flow again). Starting a version that
//!   subscribes to it again takes it back from then on.
//! * Types that no process ever registered are not delivered (they are passed over, and counted
//!   as `ignored` by `moat events status`).

mod bus;
mod fetch;
mod handler;
mod inbox;
mod publish;
mod retention;
mod snapshot;
mod subscription;
mod tx;
mod wake;

pub use bus::{Dispatcher, DispatcherConfig, EventBus};
pub use handler::{Handler, HandlerContext, HandlerError};
pub use publish::{EventMeta, ModuleTx};
pub use snapshot::SnapshotUpsert;

pub(crate) use fetch::{Locked, cluster_id, lock_sql, parse_lock};
pub(crate) use handler::RawEvent;
pub use moat_admin::internal::InboxState;
pub(crate) use publish::{outbox_insert, outbox_table, outbox_table as publish_outbox, prepare_publish_sql};
pub use retention::truncate_consumed;
pub(crate) use subscription::{Mode, Subscription, backoff};
pub(crate) use tx::RawTx;
pub(crate) use wake::listen;

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

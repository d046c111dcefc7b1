//! Module events through NATS JetStream, for subscribers that cannot reach a publisher's
//! database and for systems outside moat.
//!
//! ```text
//! publisher's database ──► moat relay ──► JetStream stream <project> ──► subscriber's database
//!   (outbox, relay role)    (PubAck, then    subjects <project>.<module>.<EventType>   (handler, inbox and
//!                            its cursor)     message id = event id                     cursor: one transaction)
//! ```
//!
//! * [`Relay`] publishes every publishing module's outbox (see [`relay`]'s documentation for how
//!   a crash loses nothing and publishes again only what JetStream deduplicates).
//! * A subscription whose manifest transport is `jetstream` reads a durable consumer (see
//!   [`consume`]'s documentation for exactly-once effects and per-key order). The handlers are the
//!   same on both transports; the manifest chooses per project (`[events] transport`) or per
//!   subscription (a module's `transport = { publisher = "jetstream" }`).
//! * [`Broker::ensure_stream`] creates the stream or refuses one whose settings could lose,
//!   duplicate or reorder events; [`tail`] follows the stream for people and tools.
//! * The body of a message is the documented JSON [`EnvelopeJson`].

mod broker;
pub(crate) mod consume;
mod envelope;
pub(crate) mod relay;
mod snapshot;
mod tail;

pub use broker::{Broker, ConsumerState};
pub use envelope::{
    CAUSATION_HEADER, CLUSTER_HEADER, CORRELATION_HEADER, EnvelopeJson, KEY_HEADER, LO_HEADER, TX_HEADER,
};
pub use relay::{Relay, RelayConfig, RelayHandle, RelayStats};
pub use tail::{Tailed, tail};

//! Publishing: a module transaction that carries its events to the outbox with its commit.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use moat_core::quote::{literal_checked, qualified};
use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, Postgres};
use uuid::Uuid;

use super::Event;
use super::tx::RawTx;
use crate::Error;
use crate::notify::Notifier;

/// Correlation and causation ids of a published event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventMeta {
    /// The request or workflow the event belongs to.
    pub correlation_id: Option<Uuid>,
    /// The event that caused it.
    pub causation_id: Option<Uuid>,
}

#[derive(Debug, Clone)]
pub(crate) struct PendingEvent {
    pub(crate) id: Uuid,
    pub(crate) event_type: &'static str,
    pub(crate) key: String,
    pub(crate) payload: String,
    pub(crate) meta: EventMeta,
}

/// A transaction of one module on its own runtime-role connection.
///
/// Dereferences to the connection, like sqlx's `Transaction`: `query.execute(&mut *tx)`.
/// Events published in it are written to the module's outbox by [`ModuleTx::commit`] in the same
/// round trip as the `COMMIT`. Dropping it without committing rolls it back.
#[derive(Debug)]
pub struct ModuleTx {
    tx: Option<RawTx>,
    module: String,
    outbox: Option<String>,
    prepared: bool,
    events: Vec<PendingEvent>,
    notifier: Arc<Notifier>,
}

impl ModuleTx {
    pub(crate) async fn begin(
        conn: PoolConnection<Postgres>,
        module: &str,
        outbox: Option<String>,
        prepared: bool,
        notifier: Arc<Notifier>,
    ) -> Result<Self, Error> {
        let tx = RawTx::begin(conn).await?;
        Ok(Self { tx: Some(tx), module: module.to_owned(), outbox, prepared, events: Vec::new(), notifier })
    }

    /// The module this transaction belongs to.
    pub fn module(&self) -> &str {
        &self.module
    }

    /// Publishes an event of this module; it is stored when the transaction commits.
    pub fn publish<E: Event>(&mut self, event: &E) -> Result<Uuid, Error> {
        self.publish_with(event, EventMeta::default())
    }

    /// Publishes an event with correlation and causation ids.
    pub fn publish_with<E: Event>(&mut self, event: &E, meta: EventMeta) -> Result<Uuid, Error> {
        let pending = pending_event(&self.module, self.outbox.is_some(), event, meta)?;
        let id = pending.id;
        self.events.push(pending);
        Ok(id)
    }

    /// Writes the published events to the outbox and commits, in one round trip. An error means
    /// that nothing of the transaction was stored: a failed statement earlier in it, a failed
    /// INSERT or COMMIT, or a transaction that a statement sent through it had already ended.
    pub async fn commit(mut self) -> Result<(), Error> {
        let tx = self.tx.take().ok_or(Error::TransactionFinished)?;
        let sql = match &self.outbox {
            _ if self.events.is_empty() => String::new(),
            Some(_) if self.prepared => execute_publish(&self.events)?,
            Some(outbox) => format!("{}; ", outbox_insert(outbox, &self.events)?),
            // publish() refuses events when the module has no outbox.
            None => String::new(),
        };
        tx.commit(&sql).await?;
        if !self.events.is_empty() {
            self.notifier.published(&self.module);
        }
        Ok(())
    }

    /// Rolls back; the published events are discarded.
    pub async fn rollback(mut self) -> Result<(), Error> {
        match self.tx.take() {
            Some(tx) => tx.rollback().await,
            None => Ok(()),
        }
    }
}

/// Validates and serializes an event published by `module`.
pub(crate) fn pending_event<E: Event>(
    module: &str,
    has_outbox: bool,
    event: &E,
    meta: EventMeta,
) -> Result<PendingEvent, Error> {
    if E::MODULE != module {
        return Err(Error::WrongPublisher { module: module.to_owned(), event_type: E::TYPE, publisher: E::MODULE });
    }
    if !has_outbox {
        return Err(Error::NoOutbox { module: module.to_owned(), event_type: E::TYPE });
    }
    let payload = serde_json::to_string(event).map_err(|source| Error::Serialize { event_type: E::TYPE, source })?;
    // jsonb cannot hold \u0000; refuse it here rather than fail the commit.
    if has_nul_escape(&payload) {
        return Err(Error::InvalidEvent {
            event_type: E::TYPE,
            reason: "it contains a NUL character, which PostgreSQL's jsonb cannot store".into(),
        });
    }
    Ok(PendingEvent { id: Uuid::now_v7(), event_type: E::TYPE, key: event.key(), payload, meta })
}

/// Whether serialized JSON holds the escape `\u0000` (a NUL character in a string): an escape is a
/// backslash preceded by an even number of backslashes, so the text `\\u0000` (a backslash, then
/// `u0000`) is not one.
fn has_nul_escape(json: &str) -> bool {
    json.match_indices("\\u0000").any(|(at, _)| {
        let backslashes = json[..at].bytes().rev().take_while(|b| *b == b'\\').count();
        backslashes % 2 == 0
    })
}

/// The outbox columns an event fills; the others take their defaults.
const OUTBOX_COLUMNS: &str = "event_id, event_type, event_key, payload, correlation_id, causation_id";

/// The values of [`OUTBOX_COLUMNS`] for `event` as SQL literals, quoted by `moat_core::quote`.
fn literals(event: &PendingEvent) -> Result<[String; 6], Error> {
    let quote = |value: &str| {
        literal_checked(value).map_err(|_| Error::InvalidEvent {
            event_type: event.event_type,
            reason: "its key holds a NUL character".into(),
        })
    };
    let uuid = |value: Option<Uuid>| value.map_or_else(|| "NULL".to_owned(), |u| format!("'{u}'"));
    Ok([
        format!("'{}'", event.id),
        quote(event.event_type)?,
        quote(&event.key)?,
        quote(&event.payload)?,
        uuid(event.meta.correlation_id),
        uuid(event.meta.causation_id),
    ])
}

/// `INSERT INTO <outbox> (...) VALUES (...), ...` with every value quoted by `moat_core::quote`.
pub(crate) fn outbox_insert(outbox: &str, events: &[PendingEvent]) -> Result<String, Error> {
    let mut sql = format!("INSERT INTO {outbox} ({OUTBOX_COLUMNS}) VALUES ");
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        let [id, event_type, key, payload, correlation, causation] = literals(event)?;
        sql.push_str(&format!("({id}, {event_type}, {key}, {payload}::jsonb, {correlation}, {causation})"));
    }
    Ok(sql)
}

/// The statement every connection of a publishing module prepares once.
pub(crate) fn prepare_publish_sql(outbox: &str) -> String {
    format!(
        "PREPARE moat_publish (uuid, text, text, text, uuid, uuid) AS \
         INSERT INTO {outbox} ({OUTBOX_COLUMNS}) VALUES ($1, $2, $3, $4::jsonb, $5, $6)"
    )
}

/// `EXECUTE moat_publish(...); ` for each event, values quoted by `moat_core::quote`.
pub(crate) fn execute_publish(events: &[PendingEvent]) -> Result<String, Error> {
    let mut sql = String::new();
    for event in events {
        sql.push_str(&format!("EXECUTE moat_publish({}); ", literals(event)?.join(", ")));
    }
    Ok(sql)
}

/// The qualified outbox table of a schema.
pub(crate) fn outbox_table(schema: &str) -> String {
    qualified(schema, moat_admin::internal::OUTBOX)
}

impl Deref for ModuleTx {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        match &self.tx {
            Some(tx) => tx,
            None => finished(),
        }
    }
}

impl DerefMut for ModuleTx {
    fn deref_mut(&mut self) -> &mut PgConnection {
        match &mut self.tx {
            Some(tx) => tx,
            None => finished(),
        }
    }
}

#[allow(clippy::panic)]
fn finished() -> ! {
    // commit() and rollback() consume the transaction, so no reference can outlive them.
    panic!("BUG: a finished ModuleTx was used")
}

// Dropping a ModuleTx drops its RawTx, which rolls back.

#[cfg(test)]
mod tests {
    use super::has_nul_escape;

    #[test]
    fn only_a_real_nul_escape_counts() {
        assert!(has_nul_escape(r#"{"a":"\u0000"}"#));
        assert!(has_nul_escape(r#"{"a":"x\\\u0000"}"#));
        // A backslash followed by the text `u0000` is an ordinary string.
        assert!(!has_nul_escape(r#"{"a":"\\u0000"}"#));
        assert!(!has_nul_escape(r#"{"a":"\\\\u0000"}"#));
        assert!(!has_nul_escape(r#"{"a":"u0000"}"#));
    }

    #[test]
    fn a_float_that_jsonb_prints_as_a_long_integer_reads_back() {
        // jsonb stores numbers as numeric and prints f64::MAX with all 309 digits; the dispatcher
        // must read back the number that was published.
        let printed = format!("{:.0}", f64::MAX);
        assert_eq!(printed.len(), 309);
        assert_eq!(serde_json::from_str::<f64>(&printed).unwrap_or_default(), f64::MAX);
    }
}

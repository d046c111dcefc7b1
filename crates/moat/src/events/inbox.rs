//! The subscriber's inbox: events held back (a failed handler, an earlier held event of the same
//! key, or a type that this process has no handler for) and their retries.
//!
//! An event is held in the inbox, in the subscriber's own transaction, instead of being applied;
//! later events of its key are held behind it (the key is blocked), so that per-key order holds.
//! The head of each key (its oldest held event) is retried by any dispatcher process that
//! handles its type; a dead head blocks its key until `moat events retry`.

use std::time::Duration;

use moat_admin::internal::InboxState;
use sqlx::{PgConnection, Row};

use super::handler::{Call, RawEvent, run_handler};
use super::publish::outbox_insert;
use super::subscription::{Subscription, backoff};
use super::tx::RawTx;
use crate::Error;

/// Why an event is held.
#[derive(Debug)]
pub(crate) enum Hold<'e> {
    /// Behind an earlier held event of its key, or until a process that handles its type takes it.
    Waiting,
    /// Its handler failed once (with this error).
    Failed(&'e str),
}

impl Subscription {
    /// Copies an event into the subscriber's inbox (it no longer needs the publisher's outbox).
    pub(crate) async fn hold(&self, conn: &mut PgConnection, event: &RawEvent, why: Hold<'_>) -> Result<(), Error> {
        let (state, attempts, error) = match why {
            Hold::Waiting => (InboxState::Waiting, 0, None),
            Hold::Failed(error) => (InboxState::Retry, 1, Some(error)),
        };
        let delay = if attempts > 0 { backoff(&self.config, attempts) } else { Duration::ZERO };
        let sql = format!(
            "INSERT INTO {} (publisher, outbox_id, event_id, event_type, event_key, payload, correlation_id, causation_id, published_at, \
             state, attempts, next_attempt_at, last_error) \
             VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9, $10, $11, now() + $12::interval, $13) ON CONFLICT (publisher, event_id) DO NOTHING",
            self.tables.inbox
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
            .bind(state.as_str())
            .bind(attempts)
            .bind(format!("{} milliseconds", delay.as_millis()))
            .bind(error)
            .execute(&mut *conn)
            .await?;
        self.local().held = true;
        Ok(())
    }

    /// Retries held events whose turn has come (the head of each key, if this process handles its
    /// type), one transaction each. Returns when the next one is due.
    pub(crate) async fn retry_due(&self) -> Result<Option<Duration>, Error> {
        let pick = format!(
            "SELECT id, outbox_id, event_id, event_type, event_key, payload::text, correlation_id, causation_id, published_at, attempts \
             FROM {inbox} i WHERE publisher = $1 AND state IN ({retry}, {waiting}) AND event_type = ANY($2) \
               AND id = (SELECT min(id) FROM {inbox} j WHERE j.publisher = i.publisher AND j.event_key = i.event_key) \
               AND (state = {waiting} OR next_attempt_at <= now()) \
             ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED",
            inbox = self.tables.inbox,
            retry = InboxState::Retry.sql(),
            waiting = InboxState::Waiting.sql(),
        );
        loop {
            let mut tx = RawTx::begin(self.pool()?.acquire().await?).await?;
            let Some(row) = sqlx::query(sqlx::AssertSqlSafe(pick.clone()))
                .bind(&self.publisher)
                .bind(&self.mine)
                .fetch_optional(&mut *tx)
                .await?
            else {
                tx.rollback().await?;
                break;
            };
            let held_id: i64 = row.try_get("id")?;
            let attempts: i32 = row.try_get("attempts")?;
            let event = RawEvent::from_row(&row, "outbox_id")?;
            let Some(handler) = self.handlers.get(event.event_type.as_str()) else {
                // The pick only returns types this process handles.
                tx.rollback().await?;
                break;
            };
            sqlx::raw_sql("SAVEPOINT moat_event").execute(&mut *tx).await?;
            let mut published = Vec::new();
            let mut ctx = self.context(&mut tx, &event);
            match run_handler(
                handler,
                &mut ctx,
                std::slice::from_ref(&event),
                &self.publisher,
                &mut published,
                Call::One,
            )
            .await
            {
                Ok(()) => {
                    let mut finish = String::new();
                    if !published.is_empty() {
                        let Some(outbox) = &self.tables.sub_outbox else {
                            return Err(Error::NoOutbox {
                                module: self.subscriber.clone(),
                                event_type: published[0].event_type,
                            });
                        };
                        finish.push_str(&outbox_insert(outbox, &published)?);
                        finish.push_str("; ");
                    }
                    finish.push_str(&format!("DELETE FROM {} WHERE id = {held_id}; ", self.tables.inbox));
                    tx.commit(&finish).await?;
                    if !published.is_empty() {
                        self.notifier.published(&self.subscriber);
                    }
                }
                Err(error) => {
                    // Undo the handler's writes, keep the row lock, count the attempt.
                    sqlx::raw_sql("ROLLBACK TO SAVEPOINT moat_event").execute(&mut *tx).await?;
                    let attempts = attempts + 1;
                    let dead = attempts >= self.config.max_attempts;
                    tracing::warn!(subscriber = %self.subscriber, event = %event.id, attempts, dead, %error, "event handler failed again");
                    let sql = format!(
                        "UPDATE {} SET attempts = $2, state = $3, next_attempt_at = now() + $4::interval, last_error = $5 WHERE id = $1",
                        self.tables.inbox
                    );
                    sqlx::query(sqlx::AssertSqlSafe(sql))
                        .bind(held_id)
                        .bind(attempts)
                        .bind(if dead { InboxState::Dead } else { InboxState::Retry }.as_str())
                        .bind(format!("{} milliseconds", backoff(&self.config, attempts).as_millis()))
                        .bind(error.to_string())
                        .execute(&mut *tx)
                        .await?;
                    tx.commit("").await?;
                }
            }
        }
        let sql = format!(
            "SELECT count(*) > 0 AS held, greatest(extract(epoch FROM min(next_attempt_at) FILTER (WHERE state = {retry} AND event_type = ANY($2)) - now()), 0)::float8 AS next \
             FROM {inbox} WHERE publisher = $1",
            inbox = self.tables.inbox,
            retry = InboxState::Retry.sql(),
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&self.publisher)
            .bind(&self.mine)
            .fetch_one(&self.pool()?)
            .await?;
        let held: bool = row.try_get("held")?;
        let next: Option<f64> = row.try_get("next")?;
        // Dead letters keep `held` set: `moat events retry` may revive them at any time.
        self.local().held = held;
        Ok(next.map(Duration::from_secs_f64))
    }
}

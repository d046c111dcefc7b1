//! Worked example of module events: module `customers` publishes `CustomerRenamed`; module
//! `orders` keeps `customer_snapshots` in its own schema, so that it can show a customer's name
//! next to an order without reading the customers schema (which its role cannot do).
//!
//! The snapshot applies an event only if its version is newer than what the row holds, so a
//! burst of renames converges to the last name even when events arrive out of order or twice.

use moat::Moat;
use moat::events::{Envelope, Event, Handler, HandlerContext, HandlerError, SnapshotUpsert};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

/// Published by `customers` whenever a customer's name changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerRenamed {
    /// The customer.
    pub customer_id: i64,
    /// The new name.
    pub name: String,
    /// The customer row's version after the change.
    pub version: i64,
}

impl Event for CustomerRenamed {
    const MODULE: &'static str = "customers";
    const TYPE: &'static str = "CustomerRenamed";
    fn key(&self) -> String {
        self.customer_id.to_string()
    }
}

/// The customers module's API.
pub mod customers {
    use super::*;

    /// Creates a customer; returns its id.
    pub async fn create(app: &Moat, name: &str) -> Result<i64, moat::Error> {
        let mut tx = app.begin("customers").await?;
        let (id, version): (i64, i64) =
            sqlx::query_as("INSERT INTO customers (name) VALUES ($1) RETURNING id, version")
                .bind(name)
                .fetch_one(&mut *tx)
                .await?;
        tx.publish(&CustomerRenamed { customer_id: id, name: name.to_owned(), version })?;
        tx.commit().await?;
        Ok(id)
    }

    /// Renames a customer; the event commits with the change or not at all.
    pub async fn rename(app: &Moat, id: i64, name: &str) -> Result<(), moat::Error> {
        let mut tx = app.begin("customers").await?;
        let version: i64 =
            sqlx::query_scalar("UPDATE customers SET name = $2, version = version + 1 WHERE id = $1 RETURNING version")
                .bind(id)
                .bind(name)
                .fetch_one(&mut *tx)
                .await?;
        tx.publish(&CustomerRenamed { customer_id: id, name: name.to_owned(), version })?;
        tx.commit().await?;
        Ok(())
    }
}

/// The orders module's side: its snapshot of customers.
pub mod orders {
    use super::*;

    /// Applies a rename to `customer_snapshots` if it is newer than the row; returns whether it did.
    pub async fn apply_rename(conn: &mut PgConnection, event: &CustomerRenamed) -> Result<bool, moat::Error> {
        SnapshotUpsert::new("customer_snapshots", "customer_id", event.customer_id)
            .version("version", event.version)
            .set("name", event.name.clone())
            .execute(conn)
            .await
    }

    /// The event handler registered for module `orders`.
    #[derive(Debug, Clone, Copy)]
    pub struct CustomerSnapshots;

    impl Handler<CustomerRenamed> for CustomerSnapshots {
        async fn handle(
            &self,
            ctx: &mut HandlerContext<'_>,
            event: &Envelope<CustomerRenamed>,
        ) -> Result<(), HandlerError> {
            apply_rename(ctx, &event.payload).await?;
            Ok(())
        }
    }

    /// The name orders shows for a customer, from its own snapshot.
    pub async fn customer_name(app: &Moat, customer_id: i64) -> Result<Option<String>, moat::Error> {
        Ok(sqlx::query_scalar("SELECT name FROM customer_snapshots WHERE customer_id = $1")
            .bind(customer_id)
            .fetch_optional(&app.pool("orders")?)
            .await?)
    }
}

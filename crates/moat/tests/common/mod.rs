//! What the tests of a publisher (`customers`) and one subscriber (`orders`) share: the manifest
//! and migrations, the event, a handler that records each application, a fast dispatcher
//! configuration, and queries against the database.
#![allow(dead_code, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use moat::Moat;
use moat::events::{DispatcherConfig, Envelope, Event, Handler, HandlerContext, HandlerError};
use moat_admin::DatabaseUrl;
use moat_testkit::{TestDb, TestProject};
use serde::{Deserialize, Serialize};

pub const MANIFEST: &str = r#"
[project]
name = "{project}"
[modules.customers]
[modules.orders]
depends_on = ["customers"]
"#;

/// How many events `orders` applied.
pub const APPLIED: &str = "SELECT count(*) FROM orders.applied";

/// Applications whose sequence number is not the previous one of their key plus one.
pub const OUT_OF_ORDER: &str = "SELECT count(*) FROM (SELECT seq, lag(seq) OVER (PARTITION BY key ORDER BY id) AS prev FROM orders.applied) x \
                                WHERE seq <> coalesce(prev, 0) + 1";

/// The project: `customers` publishes, `orders` records what it applies.
pub fn project(db: &TestDb) -> TestProject {
    TestProject::new(
        &db.project,
        MANIFEST,
        &[
            ("modules/customers/migrations/0001_customers.sql", "CREATE TABLE customers (id bigint PRIMARY KEY);\n"),
            (
                "modules/orders/migrations/0001_applied.sql",
                "CREATE TABLE applied (id bigserial PRIMARY KEY, event_id uuid NOT NULL, key text NOT NULL, seq bigint NOT NULL);\n",
            ),
        ],
    )
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CustomerRenamed {
    pub customer_id: i64,
    pub version: i64,
}

impl Event for CustomerRenamed {
    const MODULE: &'static str = "customers";
    const TYPE: &'static str = "CustomerRenamed";
    fn key(&self) -> String {
        self.customer_id.to_string()
    }
}

/// Records every event it applies in `orders.applied`.
pub struct Record;

impl Handler<CustomerRenamed> for Record {
    async fn handle(&self, ctx: &mut HandlerContext<'_>, e: &Envelope<CustomerRenamed>) -> Result<(), HandlerError> {
        sqlx::query("INSERT INTO applied (event_id, key, seq) VALUES ($1, $2, $3)")
            .bind(e.id)
            .bind(&e.key)
            .bind(e.payload.version)
            .execute(&mut **ctx)
            .await?;
        Ok(())
    }
}

/// Small batches, fast polling and retries, frequent progress.
pub fn config() -> DispatcherConfig {
    DispatcherConfig {
        batch_size: 4,
        poll_interval: Duration::from_millis(50),
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        progress_interval: Duration::from_millis(100),
        ..DispatcherConfig::default()
    }
}

/// Publishes events `from..to`, one per transaction, over 3 keys (versions 1, 2, ... per key).
pub async fn publish(app: &Moat, from: i64, to: i64) {
    for n in from..to {
        let mut tx = app.begin("customers").await.unwrap();
        tx.publish(&CustomerRenamed { customer_id: n % 3, version: n / 3 + 1 }).unwrap();
        tx.commit().await.unwrap();
    }
}

pub async fn count(url: &DatabaseUrl, sql: &str) -> i64 {
    let mut conn = moat_admin::connect(url).await.unwrap();
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned())).fetch_one(&mut conn).await.unwrap()
}

pub async fn text(url: &DatabaseUrl, sql: &str) -> String {
    let mut conn = moat_admin::connect(url).await.unwrap();
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned())).fetch_one(&mut conn).await.unwrap()
}

/// Waits until `sql` counts `expected`, failing after `timeout`.
pub async fn wait_for(url: &DatabaseUrl, sql: &str, expected: i64, timeout: Duration) {
    let started = Instant::now();
    loop {
        let n = count(url, sql).await;
        if n == expected {
            return;
        }
        assert!(started.elapsed() < timeout, "`{sql}` is {n}, expected {expected} within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

//! Modules in databases of their own: each module's pool logs in to its own database, and events
//! cross databases without a broker: the relay reads the publisher's outbox in the publisher's
//! database, the subscriber commits its cursor with its handler's writes in its own.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{APPLIED, OUT_OF_ORDER, Record, config, count, publish, text, wait_for};
use moat::{Config, Moat};
use moat_testkit::{TestDb, TestProject};

const MANIFEST: &str = r#"
[project]
name = "{project}"
[databases.orders_db]
url_env = "MOAT_TEST_UNSET_ORDERS_URL"
[modules.customers]
[modules.orders]
database = "orders_db"
depends_on = ["customers"]
"#;

fn project(db: &TestDb) -> TestProject {
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

#[tokio::test]
async fn a_subscriber_in_another_database_gets_every_event_once_in_key_order() {
    let db = TestDb::new().await;
    let orders_db = db.another("orders").await;
    let project = project(&db);
    let app = Moat::start(
        Config::new(project.manifest()).database_url(db.url.expose()).database("orders_db", orders_db.expose()),
    )
    .await
    .unwrap();

    // Each module is in its own database, and its pool logs in there.
    assert_eq!(app.database_of("orders").map(|d| d.to_string()).as_deref(), Some("orders_db"));
    assert_eq!(app.database_of("customers"), None);
    let schemas = "SELECT count(*) FROM pg_namespace WHERE nspname IN ('customers', 'orders')";
    assert_eq!(count(&db.url, "SELECT count(*) FROM pg_namespace WHERE nspname = 'orders'").await, 0);
    assert_eq!(count(&orders_db, "SELECT count(*) FROM pg_namespace WHERE nspname = 'customers'").await, 0);
    assert_eq!(count(&db.url, schemas).await, 1);
    assert_eq!(count(&orders_db, schemas).await, 1);
    let here: String =
        sqlx::query_scalar("SELECT current_database()::text").fetch_one(&app.pool("orders").unwrap()).await.unwrap();
    assert_eq!(here, orders_db.database());

    let dispatcher = app.events().config(config()).subscribe::<common::CustomerRenamed, _>("orders", Record).unwrap();
    let dispatcher = dispatcher.start().await.unwrap();
    publish(&app, 0, 60).await;
    wait_for(&orders_db, APPLIED, 60, Duration::from_secs(30)).await;
    // A little longer: nothing more arrives.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count(&orders_db, APPLIED).await, 60);
    assert_eq!(count(&orders_db, OUT_OF_ORDER).await, 0);
    assert_eq!(count(&orders_db, "SELECT count(DISTINCT event_id) FROM orders.applied").await, 60);
    // The cursor is in the subscriber's database, the outbox in the publisher's.
    assert_eq!(
        count(&orders_db, "SELECT count(*) FROM orders.moat_subscriptions WHERE publisher = 'customers'").await,
        1
    );
    assert_eq!(count(&db.url, "SELECT count(*) FROM customers.moat_outbox").await, 60);
    let progress = text(&db.url, "SELECT string_agg(subscriber, ',') FROM customers.moat_outbox_progress").await;
    assert_eq!(progress, "orders");
    dispatcher.shutdown().await;

    // The subscriber's role holds nothing in the publisher's database.
    let login = db.url.with_login(&db.role("orders"), None);
    if let Ok(mut conn) = moat_admin::connect_as(&login).await {
        let denied = sqlx::query("SELECT count(*) FROM customers.customers").execute(&mut conn).await;
        assert!(denied.is_err(), "orders read customers' table across databases");
    }
    app.close().await;
}

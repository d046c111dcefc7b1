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

/// The manifest with `customers`, the publisher, declared in a database of its own.
const PUBLISHER_MOVES: &str = r#"
[project]
name = "{project}"
[databases.customers_db]
url_env = "MOAT_TEST_UNSET_CUSTOMERS_URL"
[modules.customers]
database = "customers_db"
[modules.orders]
depends_on = ["customers"]
"#;

#[tokio::test]
async fn a_publisher_moved_while_its_subscriber_lags_delivers_every_event_once_and_a_running_app_follows_it() {
    let db = TestDb::new().await;
    let customers_db = db.another("customers").await;
    let project = common::project(&db);
    // Everything in the main database; events published while no dispatcher runs.
    let app = Moat::start(Config::new(project.manifest()).database_url(db.url.expose())).await.unwrap();
    publish(&app, 0, 40).await;
    app.close().await;

    // The manifest now puts customers in a database of its own; the application starts with it
    // and keeps publishing while `moat extract customers` moves the module.
    project.write("moat.toml", &PUBLISHER_MOVES.replace("{project}", &db.project));
    let manifest = project.manifest();
    let app = Moat::start(
        Config::new(manifest.clone()).database_url(db.url.expose()).database("customers_db", customers_db.expose()),
    )
    .await
    .unwrap();
    assert_eq!(app.database_of("customers"), None, "before the move the module is used where its data is");
    let publishing = {
        let app = app.clone();
        tokio::spawn(async move {
            let mut published = 0i64;
            let mut failed = 0u32;
            let mut n = 40;
            while n < 120 {
                let attempt = async {
                    let mut tx = app.begin("customers").await?;
                    tx.publish(&common::CustomerRenamed { customer_id: n % 3, version: n / 3 + 1 })?;
                    tx.commit().await
                };
                match attempt.await {
                    Ok(()) => {
                        published += 1;
                        n += 1;
                    }
                    // The module's writes are refused while it is frozen; the publisher retries.
                    Err(_) => failed += 1,
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (published, failed)
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    let customers = moat_core::names::ModuleName::parse("customers").unwrap();
    let copy = moat_admin::extract::ExtractOptions {
        mode: Some(moat_admin::extract::Mode::Copy),
        ..moat_admin::extract::ExtractOptions::default()
    };
    let report = moat_admin::extract::extract(
        &manifest,
        &customers,
        &db.url,
        &customers_db,
        Some("customers_db"),
        &copy,
        &|_| {},
    )
    .await
    .unwrap_or_else(|e| panic!("extract failed: {e}"));
    assert_eq!(report.outcome, moat_admin::extract::Outcome::Moved);
    let (published, failed) = publishing.await.unwrap();
    assert_eq!(published, 80);
    eprintln!("publishes refused during the move: {failed}; write_unavailable_ms: {:?}", report.write_unavailable_ms);
    // The running application follows the module to its new database.
    let started = std::time::Instant::now();
    while app.database_of("customers").is_none() {
        assert!(started.elapsed() < Duration::from_secs(15), "the application did not follow customers");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let here: String =
        sqlx::query_scalar("SELECT current_database()::text").fetch_one(&app.pool("customers").unwrap()).await.unwrap();
    assert_eq!(here, customers_db.database());

    // The subscriber, which lagged through all of it, gets every event once, in key order.
    let dispatcher = app
        .events()
        .config(config())
        .subscribe::<common::CustomerRenamed, _>("orders", Record)
        .unwrap()
        .start()
        .await
        .unwrap();
    publish(&app, 120, 130).await;
    wait_for(&db.url, APPLIED, 130, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count(&db.url, APPLIED).await, 130);
    assert_eq!(count(&db.url, OUT_OF_ORDER).await, 0);
    assert_eq!(count(&db.url, "SELECT count(DISTINCT event_id) FROM orders.applied").await, 130);
    assert!(count(&customers_db, "SELECT count(*) FROM customers.moat_outbox").await >= 10);
    dispatcher.shutdown().await;
    app.close().await;
}

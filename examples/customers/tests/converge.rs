//! The snapshot converges: a burst of renames applied out of order and with replays ends at the
//! last name, directly and through the dispatcher.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use customers_example::{CustomerRenamed, customers, orders};
use moat::{Config, Moat};
use moat_testkit::{TestDb, TestProject};
use rand::seq::SliceRandom;

fn project(db: &TestDb) -> TestProject {
    let root = env!("CARGO_MANIFEST_DIR");
    let manifest = std::fs::read_to_string(format!("{root}/moat.toml"))
        .unwrap()
        .replace("name = \"shop\"", "name = \"{project}\"");
    let customers =
        std::fs::read_to_string(format!("{root}/modules/customers/migrations/0001_create_customers.sql")).unwrap();
    let orders = std::fs::read_to_string(format!("{root}/modules/orders/migrations/0001_create_orders.sql")).unwrap();
    TestProject::new(
        &db.project,
        &manifest,
        &[
            ("modules/customers/migrations/0001_create_customers.sql", &customers),
            ("modules/orders/migrations/0001_create_orders.sql", &orders),
        ],
    )
}

#[tokio::test]
async fn a_burst_of_renames_out_of_order_and_replayed_converges_to_the_last_name() {
    let db = TestDb::new().await;
    let project = project(&db);
    let app = Moat::start(Config::new(project.manifest()).database_url(db.url.expose())).await.unwrap();

    // Ten customers renamed twenty times each: the events as published.
    let mut events = Vec::new();
    for customer in 1..=10 {
        for version in 1..=20 {
            events.push(CustomerRenamed {
                customer_id: customer,
                name: format!("customer {customer} v{version}"),
                version,
            });
        }
    }
    // Delivered shuffled, every event twice.
    let mut delivery: Vec<&CustomerRenamed> = events.iter().chain(events.iter()).collect();
    delivery.shuffle(&mut rand::rng());
    let mut conn = app.pool("orders").unwrap().acquire().await.unwrap();
    let mut applied = 0;
    for event in delivery {
        applied += usize::from(orders::apply_rename(&mut conn, event).await.unwrap());
    }
    assert!((10..=200).contains(&applied), "{applied}");
    let names: Vec<(i64, String, i64)> =
        sqlx::query_as("SELECT customer_id, name, version FROM customer_snapshots ORDER BY 1")
            .fetch_all(&mut *conn)
            .await
            .unwrap();
    let expected: Vec<(i64, String, i64)> = (1..=10).map(|c| (c, format!("customer {c} v20"), 20)).collect();
    assert_eq!(names, expected);
    // A replay of an old event changes nothing.
    assert!(!orders::apply_rename(&mut conn, &events[3]).await.unwrap());
    drop(conn);
    app.close().await;
}

#[tokio::test]
async fn renames_reach_the_orders_snapshot_through_the_dispatcher() {
    let db = TestDb::new().await;
    let project = project(&db);
    let app = Moat::start(Config::new(project.manifest()).database_url(db.url.expose())).await.unwrap();
    let dispatcher = app.events().subscribe("orders", orders::CustomerSnapshots).unwrap().start().await.unwrap();
    let id = customers::create(&app, "Ada").await.unwrap();
    for round in 1..=30 {
        customers::rename(&app, id, &format!("Ada {round}")).await.unwrap();
    }
    let started = Instant::now();
    while orders::customer_name(&app, id).await.unwrap().as_deref() != Some("Ada 30") {
        assert!(started.elapsed() < Duration::from_secs(10), "the snapshot did not converge");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // orders reads only its snapshot: the customers table is out of its reach.
    let denied =
        sqlx::query("SELECT name FROM customers.customers").execute(&app.pool("orders").unwrap()).await.unwrap_err();
    assert_eq!(moat::admin::error::sqlstate(&denied).as_deref(), Some("42501"));
    dispatcher.shutdown().await;
    app.close().await;
}

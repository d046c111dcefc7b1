//! Module events against a real PostgreSQL: atomic publishing, exactly-once effects, per-key
//! order, late commits, concurrent dispatchers, retries and dead letters, wake-ups, retention.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use moat::events::{DispatcherConfig, Envelope, Event, Handler, HandlerContext, HandlerError};
use moat::{Config, Moat};
use moat_testkit::{TestDb, TestProject};
use serde::{Deserialize, Serialize};

const MANIFEST: &str = r#"
[project]
name = "{project}"
[modules.customers]
[modules.orders]
depends_on = ["customers"]
[modules.invoices]
depends_on = ["customers"]
[modules.audit_log]
"#;

const APPLIED: &str = "CREATE TABLE applied (id bigserial PRIMARY KEY, event_id uuid NOT NULL, key text NOT NULL, seq bigint NOT NULL);\n";

fn project(db: &TestDb) -> TestProject {
    TestProject::new(
        &db.project,
        MANIFEST,
        &[
            (
                "modules/customers/migrations/0001_customers.sql",
                "CREATE TABLE customers (id bigint PRIMARY KEY, name text NOT NULL, version bigint NOT NULL);\n",
            ),
            ("modules/orders/migrations/0001_applied.sql", APPLIED),
            ("modules/invoices/migrations/0001_applied.sql", APPLIED),
            ("modules/audit_log/migrations/0001_nothing.sql", "SELECT 1;\n"),
        ],
    )
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CustomerRenamed {
    customer_id: i64,
    name: String,
    version: i64,
}

impl Event for CustomerRenamed {
    const MODULE: &'static str = "customers";
    const TYPE: &'static str = "CustomerRenamed";
    fn key(&self) -> String {
        self.customer_id.to_string()
    }
}

/// Records every event it applies; fails for customers listed as broken while `broken` is set.
#[derive(Clone, Default)]
struct Record {
    broken: Arc<AtomicBool>,
    broken_customer: i64,
}

impl Handler<CustomerRenamed> for Record {
    async fn handle(
        &self,
        ctx: &mut HandlerContext<'_>,
        event: &Envelope<CustomerRenamed>,
    ) -> Result<(), HandlerError> {
        if self.broken.load(Ordering::SeqCst) && event.payload.customer_id == self.broken_customer {
            return Err(format!("customer {} cannot be handled yet", event.payload.customer_id).into());
        }
        sqlx::query("INSERT INTO applied (event_id, key, seq) VALUES ($1, $2, $3)")
            .bind(event.id)
            .bind(&event.key)
            .bind(event.payload.version)
            .execute(&mut **ctx)
            .await?;
        Ok(())
    }
}

fn fast() -> DispatcherConfig {
    DispatcherConfig {
        poll_interval: Duration::from_millis(50),
        backoff_base: Duration::from_millis(20),
        backoff_max: Duration::from_millis(100),
        max_attempts: 3,
        ..DispatcherConfig::default()
    }
}

async fn start(db: &TestDb, project: &TestProject) -> Moat {
    Moat::start(Config::new(project.manifest()).database_url(db.url.expose()).pool_size(4)).await.unwrap()
}

async fn connect(db: &TestDb, project: &TestProject) -> Moat {
    Moat::connect(Config::new(project.manifest()).database_url(db.url.expose()).pool_size(4)).await.unwrap()
}

/// Renames a customer in one transaction of the customers module, publishing the event.
async fn rename(app: &Moat, customer: i64, version: i64) -> uuid::Uuid {
    let mut tx = app.begin("customers").await.unwrap();
    let name = format!("name {version}");
    sqlx::query("INSERT INTO customers (id, name, version) VALUES ($1, $2, $3) ON CONFLICT (id) DO UPDATE SET name = $2, version = $3")
        .bind(customer)
        .bind(&name)
        .bind(version)
        .execute(&mut *tx)
        .await
        .unwrap();
    let id = tx.publish(&CustomerRenamed { customer_id: customer, name, version }).unwrap();
    tx.commit().await.unwrap();
    id
}

async fn count(db: &TestDb, sql: &str) -> i64 {
    let mut conn = db.connect().await;
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned())).fetch_one(&mut conn).await.unwrap()
}

async fn wait_for(db: &TestDb, sql: &str, expected: i64, timeout: Duration) {
    let started = Instant::now();
    loop {
        let n = count(db, sql).await;
        if n == expected {
            return;
        }
        assert!(started.elapsed() < timeout, "`{sql}` is {n}, expected {expected} within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn publishing_is_atomic_with_the_state_change() {
    let db = TestDb::new().await;
    let project = project(&db);
    let app = start(&db, &project).await;
    let mut tx = app.begin("customers").await.unwrap();
    sqlx::query("INSERT INTO customers VALUES (1, 'Ada', 1)").execute(&mut *tx).await.unwrap();
    tx.publish(&CustomerRenamed { customer_id: 1, name: "Ada".into(), version: 1 }).unwrap();
    tx.rollback().await.unwrap();
    {
        // Dropped without commit: rolled back too.
        let mut tx = app.begin("customers").await.unwrap();
        sqlx::query("INSERT INTO customers VALUES (2, 'Bob', 1)").execute(&mut *tx).await.unwrap();
        tx.publish(&CustomerRenamed { customer_id: 2, name: "Bob".into(), version: 1 }).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(count(&db, "SELECT count(*) FROM customers.moat_outbox").await, 0);
    assert_eq!(count(&db, "SELECT count(*) FROM customers.customers").await, 0);

    rename(&app, 3, 1).await;
    assert_eq!(count(&db, "SELECT count(*) FROM customers.moat_outbox").await, 1);
    assert_eq!(count(&db, "SELECT count(*) FROM customers.customers").await, 1);

    // An event of another module, or from a module nobody depends on, is refused.
    let mut tx = app.begin("orders").await.unwrap();
    let error = tx.publish(&CustomerRenamed { customer_id: 1, name: "x".into(), version: 1 }).unwrap_err();
    assert!(error.to_string().contains("module `orders` cannot publish `customers.CustomerRenamed`"), "{error}");
    tx.rollback().await.unwrap();
    app.close().await;
}

#[tokio::test]
async fn subscribing_without_depends_on_is_an_error_naming_both_modules() {
    let db = TestDb::new().await;
    let project = project(&db);
    let app = start(&db, &project).await;
    let error = app.events().subscribe::<CustomerRenamed, _>("audit_log", Record::default()).unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains(
            "module `audit_log` subscribes to `customers.CustomerRenamed` but does not depend on module `customers`"
        ),
        "{message}"
    );
    assert!(message.contains("depends_on"), "{message}");
    app.close().await;
}

#[tokio::test]
async fn every_event_is_applied_once_per_subscriber_in_key_order() {
    let db = TestDb::new().await;
    let project = project(&db);
    let app = start(&db, &project).await;
    let dispatcher = app
        .events()
        .config(DispatcherConfig { batch_size: 7, ..fast() })
        .subscribe::<CustomerRenamed, _>("orders", Record::default())
        .unwrap()
        .subscribe::<CustomerRenamed, _>("invoices", Record::default())
        .unwrap()
        .start()
        .await
        .unwrap();
    // Ten customers renamed concurrently, twenty times each.
    let mut tasks = Vec::new();
    for customer in 0..10 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            for version in 1..=20 {
                rename(&app, customer, version).await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    for subscriber in ["orders", "invoices"] {
        wait_for(&db, &format!("SELECT count(*) FROM {subscriber}.applied"), 200, Duration::from_secs(20)).await;
        assert_eq!(count(&db, &format!("SELECT count(DISTINCT event_id) FROM {subscriber}.applied")).await, 200);
        // Per key, handling order (id) follows publish order (seq).
        let out_of_order = count(
            &db,
            &format!(
                "SELECT count(*) FROM (SELECT seq, lag(seq) OVER (PARTITION BY key ORDER BY id) AS prev FROM {subscriber}.applied) x WHERE seq <> prev + 1"
            ),
        )
        .await;
        assert_eq!(out_of_order, 0, "{subscriber} handled a key out of order");
    }
    dispatcher.shutdown().await;
    app.close().await;
}

#[tokio::test]
async fn a_transaction_that_commits_after_a_later_numbered_one_is_not_skipped() {
    let db = TestDb::new().await;
    let project = project(&db);
    let app = start(&db, &project).await;
    let dispatcher = app
        .events()
        .config(fast())
        .subscribe::<CustomerRenamed, _>("orders", Record::default())
        .unwrap()
        .start()
        .await
        .unwrap();

    // T1 writes its outbox row first (lower id) and stays open.
    let mut slow = app.pool("customers").unwrap().begin().await.unwrap();
    sqlx::query(
        "INSERT INTO moat_outbox (event_id, event_type, event_key, payload) VALUES (gen_random_uuid(), 'CustomerRenamed', '1', '{\"customer_id\": 1, \"name\": \"slow\", \"version\": 1}')",
    )
    .execute(&mut *slow)
    .await
    .unwrap();
    // T2 gets a higher id, commits, and is delivered.
    rename(&app, 2, 1).await;
    wait_for(&db, "SELECT count(*) FROM orders.applied WHERE key = '2'", 1, Duration::from_secs(10)).await;
    // Now T1 commits: its lower id must still be delivered.
    slow.commit().await.unwrap();
    wait_for(&db, "SELECT count(*) FROM orders.applied WHERE key = '1'", 1, Duration::from_secs(10)).await;
    let t1_first = count(&db, "SELECT count(*) FROM customers.moat_outbox a, customers.moat_outbox b WHERE a.event_key = '1' AND b.event_key = '2' AND a.id < b.id").await;
    assert_eq!(t1_first, 1, "T1's row has the lower id although it committed last");
    dispatcher.shutdown().await;
    app.close().await;
}

#[tokio::test]
async fn two_dispatchers_at_once_lose_nothing_and_duplicate_nothing() {
    let db = TestDb::new().await;
    let project = project(&db);
    let publisher = start(&db, &project).await;
    let (a, b) = (connect(&db, &project).await, connect(&db, &project).await);
    let mut dispatchers = Vec::new();
    for app in [&a, &b] {
        dispatchers.push(
            app.events()
                .config(DispatcherConfig { batch_size: 5, ..fast() })
                .subscribe::<CustomerRenamed, _>("orders", Record::default())
                .unwrap()
                .subscribe::<CustomerRenamed, _>("invoices", Record::default())
                .unwrap()
                .start()
                .await
                .unwrap(),
        );
    }
    for version in 1..=60 {
        rename(&publisher, version % 6, version).await;
    }
    for subscriber in ["orders", "invoices"] {
        wait_for(&db, &format!("SELECT count(*) FROM {subscriber}.applied"), 60, Duration::from_secs(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for subscriber in ["orders", "invoices"] {
        assert_eq!(count(&db, &format!("SELECT count(*) FROM {subscriber}.applied")).await, 60);
        assert_eq!(count(&db, &format!("SELECT count(DISTINCT event_id) FROM {subscriber}.applied")).await, 60);
    }
    for d in dispatchers {
        d.shutdown().await;
    }
    for app in [a, b, publisher] {
        app.close().await;
    }
}

#[tokio::test]
async fn a_failing_handler_is_retried_then_parked_without_blocking_other_keys() {
    let db = TestDb::new().await;
    let project = project(&db);
    let app = start(&db, &project).await;
    let broken = Arc::new(AtomicBool::new(true));
    let handler = Record { broken: broken.clone(), broken_customer: 13 };
    let dispatcher =
        app.events().config(fast()).subscribe::<CustomerRenamed, _>("orders", handler).unwrap().start().await.unwrap();

    rename(&app, 13, 1).await;
    rename(&app, 13, 2).await;
    for customer in 1..=5 {
        rename(&app, customer, 1).await;
    }
    // Other keys flow.
    wait_for(&db, "SELECT count(*) FROM orders.applied", 5, Duration::from_secs(10)).await;
    // The failing event is retried with backoff, then parked; the next event of its key waits.
    wait_for(&db, "SELECT count(*) FROM orders.moat_inbox WHERE state = 'dead'", 1, Duration::from_secs(10)).await;
    assert_eq!(count(&db, "SELECT max(attempts)::bigint FROM orders.moat_inbox").await, 3);
    assert_eq!(count(&db, "SELECT count(*) FROM orders.moat_inbox WHERE state = 'waiting'").await, 1);
    let error: String = sqlx::query_scalar("SELECT last_error FROM orders.moat_inbox WHERE state = 'dead'")
        .fetch_one(&mut db.connect().await)
        .await
        .unwrap();
    assert!(error.contains("customer 13 cannot be handled yet"), "{error}");

    // Fixed and retried: both events of the key are applied, in order.
    broken.store(false, Ordering::SeqCst);
    let retried =
        moat::admin::events::retry(&db.url, &project.manifest(), moat::admin::events::RetryTarget::All).await.unwrap();
    assert_eq!(retried, 1);
    wait_for(&db, "SELECT count(*) FROM orders.applied WHERE key = '13'", 2, Duration::from_secs(10)).await;
    assert_eq!(count(&db, "SELECT count(*) FROM orders.applied WHERE key = '13' AND seq = 1 AND id < (SELECT id FROM orders.applied WHERE key = '13' AND seq = 2)").await, 1);
    assert_eq!(count(&db, "SELECT count(*) FROM orders.moat_inbox").await, 0);
    dispatcher.shutdown().await;
    app.close().await;
}

#[tokio::test]
async fn delivery_wakes_after_the_commit_in_process_and_across_processes() {
    let db = TestDb::new().await;
    let project = project(&db);
    let app = start(&db, &project).await;
    // No polling to speak of: only wake-ups can deliver within the test's bound.
    let slow_poll = DispatcherConfig { poll_interval: Duration::from_secs(60), ..fast() };
    let dispatcher = app
        .events()
        .config(slow_poll.clone())
        .subscribe::<CustomerRenamed, _>("orders", Record::default())
        .unwrap()
        .start()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    rename(&app, 1, 1).await;
    wait_for(&db, "SELECT count(*) FROM orders.applied", 1, Duration::from_secs(5)).await;

    // Another "process" (its own pools and notifier) publishes: the debounced NOTIFY wakes us.
    let other = connect(&db, &project).await;
    rename(&other, 2, 1).await;
    wait_for(&db, "SELECT count(*) FROM orders.applied", 2, Duration::from_secs(5)).await;
    dispatcher.shutdown().await;
    app.close().await;
    other.close().await;
}

#[tokio::test]
async fn consumed_outbox_slots_are_truncated_and_unconsumed_ones_kept() {
    let db = TestDb::new().await;
    let project = project(&db);
    let app = start(&db, &project).await;
    let dispatcher = app
        .events()
        .config(DispatcherConfig { progress_interval: Duration::from_millis(10), ..fast() })
        .subscribe::<CustomerRenamed, _>("orders", Record::default())
        .unwrap()
        .subscribe::<CustomerRenamed, _>("invoices", Record::default())
        .unwrap()
        .start()
        .await
        .unwrap();
    // Events in an old slot (as if published two minutes ago).
    let old_slot = "((floor(extract(epoch FROM now()) / 60)::bigint + 2) % 4)::smallint";
    db.exec(&format!(
        "INSERT INTO customers.moat_outbox (slot, event_id, event_type, event_key, payload) \
         SELECT {old_slot}, gen_random_uuid(), 'CustomerRenamed', g::text, json_build_object('customer_id', g, 'name', 'n', 'version', 1) FROM generate_series(1, 50) g"
    ))
    .await;
    rename(&app, 99, 1).await;
    for subscriber in ["orders", "invoices"] {
        wait_for(&db, &format!("SELECT count(*) FROM {subscriber}.applied"), 51, Duration::from_secs(10)).await;
    }
    // Progress reaches the publisher's side; then the old slot can go, the current one stays.
    let relay = &app.relay_pool().await.unwrap();
    let started = Instant::now();
    loop {
        if moat::events::truncate_consumed(relay, "customers").await.unwrap() >= 1 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the consumed slot was never truncated");
        // Unrelated transactions move the xmin horizon forward, as a live cluster does.
        db.exec("SELECT pg_current_xact_id()").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        count(&db, "SELECT count(*) FROM customers.moat_outbox").await,
        1,
        "only the current slot's event remains"
    );
    // A subscriber that has not consumed a slot keeps it: stop invoices, publish into an old slot.
    dispatcher.shutdown().await;
    db.exec(&format!(
        "INSERT INTO customers.moat_outbox (slot, event_id, event_type, event_key, payload) \
         VALUES ({old_slot}, gen_random_uuid(), 'CustomerRenamed', '7', '{{\"customer_id\": 7, \"name\": \"n\", \"version\": 2}}')"
    ))
    .await;
    assert_eq!(moat::events::truncate_consumed(relay, "customers").await.unwrap(), 0);
    assert_eq!(count(&db, "SELECT count(*) FROM customers.moat_outbox").await, 2);
    app.close().await;
}

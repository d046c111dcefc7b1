//! Event delivery in the cases real deployments hit: processes with different handler sets,
//! interleaved dispatchers with parked keys, subscribers that start late or leave the manifest,
//! commits that did not commit, connections left inside a transaction, admin commands that must
//! not run module code with the admin's rights, status counts.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moat::events::{DispatcherConfig, Envelope, Event, Handler, HandlerContext, HandlerError};
use moat::{Config, Moat};
use moat_testkit::{TestDb, TestProject};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

const MANIFEST: &str = r#"
[project]
name = "{project}"
[modules.customers]
[modules.orders]
depends_on = ["customers"]
[modules.invoices]
depends_on = ["customers"]
"#;

const APPLIED: &str = "CREATE TABLE applied (id bigserial PRIMARY KEY, event_id uuid NOT NULL, key text NOT NULL, \
                       seq bigint NOT NULL, event_type text NOT NULL, by text NOT NULL);\n";

fn project_with(db: &TestDb, manifest: &str) -> TestProject {
    TestProject::new(
        &db.project,
        manifest,
        &[
            (
                "modules/customers/migrations/0001_customers.sql",
                "CREATE TABLE customers (id bigint PRIMARY KEY, version bigint NOT NULL);\n",
            ),
            ("modules/orders/migrations/0001_applied.sql", APPLIED),
            ("modules/invoices/migrations/0001_applied.sql", APPLIED),
        ],
    )
}

fn project(db: &TestDb) -> TestProject {
    project_with(db, MANIFEST)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CustomerRenamed {
    customer_id: i64,
    version: i64,
}

impl Event for CustomerRenamed {
    const MODULE: &'static str = "customers";
    const TYPE: &'static str = "CustomerRenamed";
    fn key(&self) -> String {
        self.customer_id.to_string()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CustomerDeleted {
    customer_id: i64,
    version: i64,
}

impl Event for CustomerDeleted {
    const MODULE: &'static str = "customers";
    const TYPE: &'static str = "CustomerDeleted";
    fn key(&self) -> String {
        self.customer_id.to_string()
    }
}

/// Records every event it applies with the name of the process that applied it.
#[derive(Clone)]
struct Tagged(&'static str);

async fn record(
    ctx: &mut HandlerContext<'_>,
    id: uuid::Uuid,
    key: &str,
    seq: i64,
    event_type: &str,
    by: &str,
) -> Result<(), HandlerError> {
    sqlx::query("INSERT INTO applied (event_id, key, seq, event_type, by) VALUES ($1, $2, $3, $4, $5)")
        .bind(id)
        .bind(key)
        .bind(seq)
        .bind(event_type)
        .bind(by)
        .execute(&mut **ctx)
        .await?;
    Ok(())
}

impl Handler<CustomerRenamed> for Tagged {
    async fn handle(&self, ctx: &mut HandlerContext<'_>, e: &Envelope<CustomerRenamed>) -> Result<(), HandlerError> {
        record(ctx, e.id, &e.key, e.payload.version, CustomerRenamed::TYPE, self.0).await
    }
}

impl Handler<CustomerDeleted> for Tagged {
    async fn handle(&self, ctx: &mut HandlerContext<'_>, e: &Envelope<CustomerDeleted>) -> Result<(), HandlerError> {
        record(ctx, e.id, &e.key, e.payload.version, CustomerDeleted::TYPE, self.0).await
    }
}

fn fast() -> DispatcherConfig {
    DispatcherConfig {
        poll_interval: Duration::from_millis(50),
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        max_attempts: 3,
        progress_interval: Duration::from_millis(100),
        ..DispatcherConfig::default()
    }
}

async fn start(db: &TestDb, project: &TestProject) -> Moat {
    Moat::start(Config::new(project.manifest()).database_url(db.url.expose()).pool_size(4)).await.unwrap()
}

async fn connect(db: &TestDb, project: &TestProject) -> Moat {
    Moat::connect(Config::new(project.manifest()).database_url(db.url.expose()).pool_size(4)).await.unwrap()
}

async fn publish_renamed(app: &Moat, customer: i64, version: i64) {
    let mut tx = app.begin("customers").await.unwrap();
    tx.publish(&CustomerRenamed { customer_id: customer, version }).unwrap();
    tx.commit().await.unwrap();
}

async fn publish_deleted(app: &Moat, customer: i64, version: i64) {
    let mut tx = app.begin("customers").await.unwrap();
    tx.publish(&CustomerDeleted { customer_id: customer, version }).unwrap();
    tx.commit().await.unwrap();
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

/// Events applied out of per-key publish order in `schema.applied` (versions of a key are 1, 2, ...).
async fn out_of_order(db: &TestDb, schema: &str) -> i64 {
    count(
        db,
        &format!(
            "SELECT count(*) FROM (SELECT seq, lag(seq) OVER (PARTITION BY key ORDER BY id) AS prev FROM {schema}.applied) x \
             WHERE seq <> coalesce(prev, 0) + 1"
        ),
    )
    .await
}

#[tokio::test]
async fn two_processes_with_different_handler_sets_apply_every_event_once_where_it_is_handled() {
    let db = TestDb::new().await;
    let project = project(&db);
    let publisher = start(&db, &project).await;
    let (old, new) = (connect(&db, &project).await, connect(&db, &project).await);
    // The old version has no handler for CustomerDeleted; the new one has.
    let old_dispatcher = old
        .events()
        .config(DispatcherConfig { batch_size: 3, ..fast() })
        .subscribe::<CustomerRenamed, _>("orders", Tagged("old"))
        .unwrap()
        .start()
        .await
        .unwrap();
    let new_dispatcher = new
        .events()
        .config(DispatcherConfig { batch_size: 3, ..fast() })
        .subscribe::<CustomerRenamed, _>("orders", Tagged("new"))
        .unwrap()
        .subscribe::<CustomerDeleted, _>("orders", Tagged("new"))
        .unwrap()
        .start()
        .await
        .unwrap();
    let mut versions = [0i64; 5];
    for n in 0..90 {
        let key = n % 5;
        versions[key as usize] += 1;
        let version = versions[key as usize];
        if n % 3 == 0 {
            publish_deleted(&publisher, key, version).await;
        } else {
            publish_renamed(&publisher, key, version).await;
        }
    }
    wait_for(&db, "SELECT count(*) FROM orders.applied", 90, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count(&db, "SELECT count(*) FROM orders.applied").await, 90);
    assert_eq!(count(&db, "SELECT count(DISTINCT event_id) FROM orders.applied").await, 90);
    assert_eq!(count(&db, "SELECT count(*) FROM orders.applied WHERE event_type = 'CustomerDeleted'").await, 30);
    assert_eq!(
        count(&db, "SELECT count(*) FROM orders.applied WHERE event_type = 'CustomerDeleted' AND by <> 'new'").await,
        0
    );
    assert_eq!(out_of_order(&db, "orders").await, 0, "a key was applied out of order");
    assert_eq!(count(&db, "SELECT count(*) FROM orders.moat_inbox").await, 0);
    old_dispatcher.shutdown().await;
    new_dispatcher.shutdown().await;
    for app in [old, new, publisher] {
        app.close().await;
    }
}

#[tokio::test]
async fn events_no_running_process_handles_are_held_until_one_runs_or_the_type_is_ignored() {
    let db = TestDb::new().await;
    let project = project(&db);
    let publisher = start(&db, &project).await;
    // A new version registers CustomerDeleted, then is rolled back.
    let new = connect(&db, &project).await;
    new.events()
        .config(fast())
        .subscribe::<CustomerRenamed, _>("orders", Tagged("new"))
        .unwrap()
        .subscribe::<CustomerDeleted, _>("orders", Tagged("new"))
        .unwrap()
        .start()
        .await
        .unwrap()
        .shutdown()
        .await;
    let old = connect(&db, &project).await;
    let old_dispatcher = old
        .events()
        .config(fast())
        .subscribe::<CustomerRenamed, _>("orders", Tagged("old"))
        .unwrap()
        .start()
        .await
        .unwrap();
    publish_renamed(&publisher, 1, 1).await;
    publish_deleted(&publisher, 1, 2).await;
    publish_renamed(&publisher, 1, 3).await;
    publish_renamed(&publisher, 2, 1).await;
    wait_for(&db, "SELECT count(*) FROM orders.applied", 2, Duration::from_secs(10)).await;
    wait_for(&db, "SELECT count(*) FROM orders.moat_inbox WHERE state = 'waiting'", 2, Duration::from_secs(10)).await;
    // Held, not skipped: key 1 waits behind the event nobody running can handle.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count(&db, "SELECT count(*) FROM orders.applied WHERE key = '1'").await, 1);
    let status = moat::admin::events::status(&db.url, &project.manifest()).await.unwrap();
    let orders = status.subscriptions.iter().find(|s| s.subscriber == "orders").unwrap();
    assert_eq!((orders.held, orders.waiting, orders.dead), (2, 2, 0), "{orders:?}");
    assert_eq!(orders.handled_types, ["CustomerDeleted", "CustomerRenamed"]);

    // The new version comes back: it applies the held event, then the one behind it, in order.
    let new_dispatcher = new
        .events()
        .config(fast())
        .subscribe::<CustomerRenamed, _>("orders", Tagged("new"))
        .unwrap()
        .subscribe::<CustomerDeleted, _>("orders", Tagged("new"))
        .unwrap()
        .start()
        .await
        .unwrap();
    wait_for(&db, "SELECT count(*) FROM orders.applied", 4, Duration::from_secs(10)).await;
    assert_eq!(out_of_order(&db, "orders").await, 0);
    assert_eq!(
        count(&db, "SELECT count(*) FROM orders.applied WHERE event_type = 'CustomerDeleted' AND by = 'new'").await,
        1
    );
    new_dispatcher.shutdown().await;

    // A process that declares CustomerDeleted ignored: no such event is held any more.
    old_dispatcher.shutdown().await;
    let ignoring = old
        .events()
        .config(fast())
        .subscribe::<CustomerRenamed, _>("orders", Tagged("old"))
        .unwrap()
        .ignore::<CustomerDeleted>("orders")
        .unwrap()
        .start()
        .await
        .unwrap();
    publish_deleted(&publisher, 3, 1).await;
    publish_renamed(&publisher, 3, 2).await;
    wait_for(&db, "SELECT count(*) FROM orders.applied WHERE key = '3'", 1, Duration::from_secs(10)).await;
    assert_eq!(count(&db, "SELECT count(*) FROM orders.moat_inbox").await, 0);
    let status = moat::admin::events::status(&db.url, &project.manifest()).await.unwrap();
    let orders = status.subscriptions.iter().find(|s| s.subscriber == "orders").unwrap();
    assert_eq!(orders.handled_types, ["CustomerRenamed"]);
    assert_eq!(orders.ignored_types, ["CustomerDeleted"]);
    ignoring.shutdown().await;
    for app in [old, new, publisher] {
        app.close().await;
    }
}

/// Fails the first attempts of a random subset of events, so that keys are parked and retried
/// while other dispatchers deliver.
#[derive(Clone)]
struct Flaky {
    failures: Arc<Mutex<std::collections::HashMap<uuid::Uuid, u32>>>,
    doomed: Arc<Mutex<HashSet<uuid::Uuid>>>,
    rate: f64,
    seed: Arc<Mutex<rand::rngs::StdRng>>,
    by: &'static str,
}

impl Handler<CustomerRenamed> for Flaky {
    async fn handle(&self, ctx: &mut HandlerContext<'_>, e: &Envelope<CustomerRenamed>) -> Result<(), HandlerError> {
        let fail = {
            let mut doomed = self.doomed.lock().unwrap();
            let mut failures = self.failures.lock().unwrap();
            let n = failures.entry(e.id).or_insert(0);
            if *n == 0 && self.seed.lock().unwrap().random_bool(self.rate) {
                doomed.insert(e.id);
            }
            if doomed.contains(&e.id) && *n < 2 {
                *n += 1;
                true
            } else {
                false
            }
        };
        if fail {
            return Err(format!("event {} is flaky", e.id).into());
        }
        record(ctx, e.id, &e.key, e.payload.version, CustomerRenamed::TYPE, self.by).await
    }
}

#[tokio::test]
async fn per_key_order_holds_under_random_interleavings_of_dispatchers_and_parked_keys() {
    let seed: u64 = std::env::var("MOAT_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    // Three rounds, each with its own database and random configuration.
    for round in 0..3u64 {
        let seed = seed.wrapping_add(round);
        println!("round {round}: seed {seed} (set MOAT_TEST_SEED to replay from this round)");
        interleaving_round(seed).await;
    }
}

async fn interleaving_round(seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let db = TestDb::new().await;
    let project = project(&db);
    let publisher = start(&db, &project).await;
    let failures = Arc::new(Mutex::new(std::collections::HashMap::new()));
    let doomed = Arc::new(Mutex::new(HashSet::new()));
    let shared = Arc::new(Mutex::new(rand::rngs::StdRng::seed_from_u64(rng.random())));
    let mut apps = Vec::new();
    let mut dispatchers = Vec::new();
    for by in ["a", "b", "c"] {
        let app = connect(&db, &project).await;
        let config = DispatcherConfig {
            batch_size: rng.random_range(1..=6),
            max_attempts: 10,
            backoff_base: Duration::from_millis(rng.random_range(1..=15)),
            poll_interval: Duration::from_millis(rng.random_range(5..=60)),
            ..fast()
        };
        let handler =
            Flaky { failures: failures.clone(), doomed: doomed.clone(), rate: 0.15, seed: shared.clone(), by };
        dispatchers.push(
            app.events()
                .config(config)
                .subscribe::<CustomerRenamed, _>("orders", handler)
                .unwrap()
                .start()
                .await
                .unwrap(),
        );
        apps.push(app);
    }
    // Eight publishers, twelve keys; each key's versions are published in order by one task.
    const KEYS: i64 = 12;
    const VERSIONS: i64 = 15;
    let mut tasks = Vec::new();
    for task in 0..8i64 {
        let app = publisher.clone();
        let mut rng = rand::rngs::StdRng::seed_from_u64(rng.random());
        tasks.push(tokio::spawn(async move {
            let keys: Vec<i64> = (0..KEYS).filter(|k| k % 8 == task).collect();
            let mut next = vec![1i64; keys.len()];
            while next.iter().any(|v| *v <= VERSIONS) {
                let i = rng.random_range(0..keys.len());
                if next[i] > VERSIONS {
                    continue;
                }
                publish_renamed(&app, keys[i], next[i]).await;
                next[i] += 1;
                if rng.random_bool(0.3) {
                    tokio::time::sleep(Duration::from_millis(rng.random_range(0..4))).await;
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let total = KEYS * VERSIONS;
    wait_for(&db, "SELECT count(*) FROM orders.applied", total, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count(&db, "SELECT count(DISTINCT event_id) FROM orders.applied").await, total, "seed {seed}");
    assert_eq!(count(&db, "SELECT count(*) FROM orders.applied").await, total, "seed {seed}");
    assert_eq!(out_of_order(&db, "orders").await, 0, "a key was applied out of order (seed {seed})");
    assert!(!doomed.lock().unwrap().is_empty(), "no key was parked: the test proved nothing (seed {seed})");
    for d in dispatchers {
        d.shutdown().await;
    }
    for app in apps {
        app.close().await;
    }
    publisher.close().await;
}

const OLD_SLOT: &str = "((floor(extract(epoch FROM now()) / 60)::bigint + 2) % 4)::smallint";

/// Publishes `n` events into a slot that retention may truncate (as if published minutes ago).
async fn publish_old(db: &TestDb, n: i64) {
    db.exec(&format!(
        "INSERT INTO customers.moat_outbox (slot, event_id, event_type, event_key, payload) \
         SELECT {OLD_SLOT}, gen_random_uuid(), 'CustomerRenamed', g::text, json_build_object('customer_id', g, 'version', 1) FROM generate_series(1, {n}) g"
    ))
    .await;
}

/// Waits until `subscriber`'s reported progress covers every event in the outbox.
async fn wait_progress(db: &TestDb, subscriber: &str) {
    let sql = format!(
        "SELECT count(*) FROM customers.moat_outbox_progress WHERE subscriber = '{subscriber}' \
         AND consumed_below > (SELECT max(tx) FROM customers.moat_outbox)"
    );
    let started = Instant::now();
    while count(db, &sql).await != 1 {
        assert!(started.elapsed() < Duration::from_secs(10), "{subscriber} never reported its progress");
        // Unrelated transactions move the xmin horizon forward, as a live cluster does.
        db.exec("SELECT pg_current_xact_id()").await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

#[tokio::test]
async fn a_subscriber_that_starts_late_still_receives_every_event() {
    let db = TestDb::new().await;
    let project = project(&db);
    let app = start(&db, &project).await;
    // Provisioning gave both subscribers their progress row.
    assert_eq!(count(&db, "SELECT count(*) FROM customers.moat_outbox_progress WHERE consumed_below = '0'").await, 2);
    let orders = app
        .events()
        .config(fast())
        .subscribe::<CustomerRenamed, _>("orders", Tagged("o"))
        .unwrap()
        .start()
        .await
        .unwrap();
    publish_old(&db, 40).await;
    wait_for(&db, "SELECT count(*) FROM orders.applied", 40, Duration::from_secs(10)).await;
    wait_progress(&db, "orders").await;
    let relay = &app.relay_pool().await.unwrap();
    for _ in 0..10 {
        assert_eq!(
            moat::events::truncate_consumed(relay, "customers").await.unwrap(),
            0,
            "truncated before invoices started"
        );
        db.exec("SELECT pg_current_xact_id()").await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let invoices = app
        .events()
        .config(fast())
        .subscribe::<CustomerRenamed, _>("invoices", Tagged("i"))
        .unwrap()
        .start()
        .await
        .unwrap();
    wait_for(&db, "SELECT count(*) FROM invoices.applied", 40, Duration::from_secs(10)).await;
    orders.shutdown().await;
    invoices.shutdown().await;
    app.close().await;
}

#[tokio::test]
async fn a_subscriber_removed_from_the_manifest_is_reported_then_no_longer_blocks_truncation() {
    let db = TestDb::new().await;
    let project = project(&db);
    let app = start(&db, &project).await;
    // invoices ran once, then leaves the manifest.
    app.events()
        .config(fast())
        .subscribe::<CustomerRenamed, _>("invoices", Tagged("i"))
        .unwrap()
        .start()
        .await
        .unwrap()
        .shutdown()
        .await;
    app.close().await;
    let without = MANIFEST.replace("[modules.invoices]\ndepends_on = [\"customers\"]", "[modules.invoices]");
    project.write("moat.toml", &without.replace("{project}", &db.project));
    let manifest = project.manifest();
    let status = moat::admin::events::status(&db.url, &manifest).await.unwrap();
    let removed: Vec<_> =
        status.removed_subscribers.iter().map(|r| (r.publisher.as_str(), r.subscriber.as_str())).collect();
    assert_eq!(removed, [("customers", "invoices")]);
    // Provisioning drops it, and says so in its plan.
    let app = Moat::start(Config::new(manifest.clone()).database_url(db.url.expose()).pool_size(4).audit(false))
        .await
        .unwrap();
    let plan = app.startup_report().map(|r| format!("{r:?}")).unwrap_or_default();
    assert!(plan.contains("moat_outbox_progress\\\" WHERE subscriber IN ('invoices')"), "{plan}");
    let status = moat::admin::events::status(&db.url, &manifest).await.unwrap();
    assert!(status.removed_subscribers.is_empty(), "{:?}", status.removed_subscribers);
    let orders = app
        .events()
        .config(fast())
        .subscribe::<CustomerRenamed, _>("orders", Tagged("o"))
        .unwrap()
        .start()
        .await
        .unwrap();
    publish_old(&db, 20).await;
    wait_for(&db, "SELECT count(*) FROM orders.applied", 20, Duration::from_secs(10)).await;
    wait_progress(&db, "orders").await;
    let relay = &app.relay_pool().await.unwrap();
    let started = Instant::now();
    while moat::events::truncate_consumed(relay, "customers").await.unwrap() == 0 {
        assert!(started.elapsed() < Duration::from_secs(10), "the removed subscriber still blocks truncation");
        db.exec("SELECT pg_current_xact_id()").await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    orders.shutdown().await;
    app.close().await;
}

#[tokio::test]
async fn commit_after_a_failed_statement_or_an_ended_transaction_is_an_error() {
    let db = TestDb::new().await;
    let project = project(&db);
    let app = start(&db, &project).await;
    // No events: a bare COMMIT of an aborted transaction is answered with ROLLBACK.
    let mut tx = app.begin("customers").await.unwrap();
    sqlx::query("INSERT INTO customers VALUES (1, 1)").execute(&mut *tx).await.unwrap();
    assert!(sqlx::query("SELECT 1 / 0").execute(&mut *tx).await.is_err());
    assert!(tx.commit().await.is_err(), "commit() of an aborted transaction returned Ok");
    // With events.
    let mut tx = app.begin("customers").await.unwrap();
    sqlx::query("INSERT INTO customers VALUES (2, 1)").execute(&mut *tx).await.unwrap();
    tx.publish(&CustomerRenamed { customer_id: 2, version: 1 }).unwrap();
    assert!(sqlx::query("SELECT 1 / 0").execute(&mut *tx).await.is_err());
    assert!(tx.commit().await.is_err());
    // A ROLLBACK sent through the transaction ends it: committing afterwards is an error too, and
    // the events are not written in autocommit.
    let mut tx = app.begin("customers").await.unwrap();
    sqlx::query("INSERT INTO customers VALUES (3, 1)").execute(&mut *tx).await.unwrap();
    tx.publish(&CustomerRenamed { customer_id: 3, version: 1 }).unwrap();
    sqlx::raw_sql("ROLLBACK").execute(&mut *tx).await.unwrap();
    assert!(tx.commit().await.is_err());
    assert_eq!(count(&db, "SELECT count(*) FROM customers.customers").await, 0);
    assert_eq!(count(&db, "SELECT count(*) FROM customers.moat_outbox").await, 0);
    // The pool's connections are fine afterwards.
    publish_renamed(&app, 4, 1).await;
    assert_eq!(count(&db, "SELECT count(*) FROM customers.moat_outbox").await, 1);
    app.close().await;
}

/// Fails the first attempt of every event; on the retry it runs a failing statement and hides the
/// error, so the retry's commit fails.
#[derive(Clone, Default)]
struct SwallowsErrors {
    seen: Arc<Mutex<std::collections::HashMap<uuid::Uuid, u32>>>,
}

impl Handler<CustomerRenamed> for SwallowsErrors {
    async fn handle(&self, ctx: &mut HandlerContext<'_>, e: &Envelope<CustomerRenamed>) -> Result<(), HandlerError> {
        let attempt = {
            let mut seen = self.seen.lock().unwrap();
            let n = seen.entry(e.id).or_insert(0);
            *n += 1;
            *n
        };
        if attempt == 1 {
            return Err("first attempt fails".into());
        }
        let _ = sqlx::query("SELECT 1 / 0").execute(&mut **ctx).await;
        Ok(())
    }
}

#[tokio::test]
async fn an_early_error_in_every_dispatcher_path_leaves_no_connection_inside_a_transaction() {
    let db = TestDb::new().await;
    let project = project(&db);
    let app = start(&db, &project).await;
    let handler = SwallowsErrors::default();
    let dispatcher = app
        .events()
        .config(DispatcherConfig { max_attempts: 100, ..fast() })
        .subscribe::<CustomerRenamed, _>("orders", handler.clone())
        .unwrap()
        .start()
        .await
        .unwrap();
    // The retry path: a retry whose commit fails.
    publish_renamed(&app, 1, 1).await;
    publish_renamed(&app, 2, 1).await;
    // Wait for several failed retry commits.
    let started = Instant::now();
    while handler.seen.lock().unwrap().values().copied().min().unwrap_or(0) < 4
        || handler.seen.lock().unwrap().len() < 2
    {
        assert!(started.elapsed() < Duration::from_secs(20), "the retries never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A failed commit of a module transaction.
    let mut tx = app.begin("customers").await.unwrap();
    assert!(sqlx::query("SELECT 1 / 0").execute(&mut *tx).await.is_err());
    assert!(tx.commit().await.is_err());
    // Retention that meets an error after BEGIN (a slot held by a transaction).
    let mut holder = db.connect().await;
    sqlx::raw_sql("BEGIN; LOCK TABLE customers.moat_outbox_2 IN ACCESS SHARE MODE").execute(&mut holder).await.unwrap();
    let relay = &app.relay_pool().await.unwrap();
    let _ = moat::events::truncate_consumed(relay, "customers").await;
    sqlx::raw_sql("ROLLBACK").execute(&mut holder).await.unwrap();
    dispatcher.shutdown().await;
    // No session of the project's roles is left inside a transaction (a rollback after an error
    // may still be on its way for a moment).
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE usename LIKE '{}\\_%' AND state LIKE 'idle in transaction%'",
        db.project
    );
    wait_for(&db, &sql, 0, Duration::from_secs(5)).await;
    app.close().await;
}

#[tokio::test]
async fn status_counts_lag_of_the_handled_types_only() {
    let db = TestDb::new().await;
    let project = project(&db);
    let app = start(&db, &project).await;
    app.events()
        .config(fast())
        .subscribe::<CustomerRenamed, _>("orders", Tagged("o"))
        .unwrap()
        .start()
        .await
        .unwrap()
        .shutdown()
        .await;
    for v in 1..=3 {
        publish_renamed(&app, 1, v).await;
    }
    publish_deleted(&app, 2, 1).await;
    publish_deleted(&app, 3, 1).await;
    let status = moat::admin::events::status(&db.url, &project.manifest()).await.unwrap();
    let orders = status.subscriptions.iter().find(|s| s.subscriber == "orders").unwrap();
    assert!(orders.started);
    assert_eq!((orders.lag_events, orders.ignored, orders.held, orders.dead), (3, 2, 0, 0), "{orders:?}");
    let invoices = status.subscriptions.iter().find(|s| s.subscriber == "invoices").unwrap();
    assert!(!invoices.started);
    app.close().await;
}

#[tokio::test]
async fn events_retry_runs_as_the_subscribers_runtime_role_so_an_inbox_trigger_gains_nothing() {
    let db = TestDb::new().await;
    let project = project(&db);
    let app = start(&db, &project).await;
    let owner = db.role("orders_owner");
    // The module's owner hangs a statement trigger on its inbox, as a migration could, that
    // tries to make the owner a superuser and records who ran it.
    let attack = format!(
        "SET ROLE {owner}; \
         CREATE TABLE orders.trigger_log (who text NOT NULL, superuser boolean NOT NULL); \
         GRANT INSERT ON orders.trigger_log TO PUBLIC; \
         CREATE FUNCTION orders.escalate() RETURNS trigger LANGUAGE plpgsql AS $f$ BEGIN \
           BEGIN EXECUTE 'ALTER ROLE {owner} SUPERUSER'; EXCEPTION WHEN OTHERS THEN NULL; END; \
           INSERT INTO orders.trigger_log SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user; \
           RETURN NULL; END $f$; \
         CREATE TRIGGER escalate AFTER UPDATE ON orders.moat_inbox FOR EACH STATEMENT EXECUTE FUNCTION orders.escalate()"
    );
    let mut admin = db.connect().await;
    let planted = sqlx::raw_sql(sqlx::AssertSqlSafe(attack)).execute(&mut admin).await.is_ok();
    drop(admin);
    let retried =
        moat::admin::events::retry(&db.url, &project.manifest(), moat::admin::events::RetryTarget::All).await.unwrap();
    assert_eq!(retried, 0);
    let superuser = count(&db, &format!("SELECT count(*) FROM pg_roles WHERE rolname = '{owner}' AND rolsuper")).await;
    assert_eq!(superuser, 0, "the inbox trigger made the module owner a superuser");
    if planted {
        // The trigger ran, as the runtime role.
        assert_eq!(
            count(
                &db,
                &format!(
                    "SELECT count(*) FROM orders.trigger_log WHERE who = '{}' AND NOT superuser",
                    db.role("orders")
                )
            )
            .await,
            1
        );
        assert_eq!(count(&db, "SELECT count(*) FROM orders.trigger_log WHERE superuser").await, 0);
    }
    // `moat events status` and `dead` read as module roles too.
    moat::admin::events::status(&db.url, &project.manifest()).await.unwrap();
    moat::admin::events::dead(&db.url, &project.manifest()).await.unwrap();
    let superuser = count(&db, &format!("SELECT count(*) FROM pg_roles WHERE rolname = '{owner}' AND rolsuper")).await;
    assert_eq!(superuser, 0);
    app.close().await;
}

#[tokio::test]
async fn the_runtime_role_can_insert_only_the_outbox_columns_publishing_needs() {
    let db = TestDb::new().await;
    let project = project(&db);
    let app = start(&db, &project).await;
    let mut runtime = db.connect_as(&db.role("customers")).await;
    for (column, value) in [("id", "1"), ("tx", "'1'"), ("slot", "0"), ("published_at", "now()")] {
        let sql = format!(
            "INSERT INTO customers.moat_outbox ({column}, event_id, event_type, event_key, payload) \
             VALUES ({value}, gen_random_uuid(), 'CustomerRenamed', '1', '{{}}')"
        );
        assert_eq!(
            moat_testkit::sqlstate_of(&mut runtime, &sql).await.as_deref(),
            Some("42501"),
            "the runtime role set `{column}`"
        );
    }
    // What publishing writes still works, and a rerun of provisioning changes nothing.
    publish_renamed(&app, 1, 1).await;
    assert_eq!(count(&db, "SELECT count(*) FROM customers.moat_outbox").await, 1);
    let mut admin = db.connect().await;
    let plan = moat::admin::provision::compute_plan(&mut admin, &project.manifest()).await.unwrap();
    assert!(plan.steps.is_empty(), "{plan:?}");
    app.close().await;
}

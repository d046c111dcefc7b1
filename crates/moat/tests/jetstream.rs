//! Module events through NATS JetStream: `moat relay` publishes the outbox, a subscription reads
//! a durable consumer. Each test runs its own `nats-server` (moat_testkit::nats) and database.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{APPLIED, CustomerRenamed, OUT_OF_ORDER, Record, config, count, publish, text, wait_for};
use moat::jetstream::{Broker, Relay, RelayConfig};
use moat::{Config, Moat};
use moat_testkit::nats::NatsServer;
use moat_testkit::{TestDb, TestProject};

const FILES: &[(&str, &str)] = &[
    ("modules/customers/migrations/0001_customers.sql", "CREATE TABLE customers (id bigint PRIMARY KEY);\n"),
    (
        "modules/orders/migrations/0001_applied.sql",
        "CREATE TABLE applied (id bigserial PRIMARY KEY, event_id uuid NOT NULL, key text NOT NULL, seq bigint NOT NULL);\n",
    ),
];

fn manifest(transport: &str, extra: &str) -> String {
    format!(
        "[project]\nname = \"{{project}}\"\n[events]\ntransport = \"{transport}\"\n{extra}\n[modules.customers]\n[modules.orders]\ndepends_on = [\"customers\"]\n"
    )
}

fn relay_config() -> RelayConfig {
    RelayConfig { batch_size: 7, poll_interval: Duration::from_millis(20), ..RelayConfig::default() }
}

async fn start(db: &TestDb, project: &TestProject) -> Moat {
    Moat::start(Config::new(project.manifest()).database_url(db.url.expose())).await.unwrap()
}

/// Messages in the project's stream.
async fn stream_messages(broker: &Broker) -> u64 {
    let mut stream = broker.jetstream().get_stream(broker.stream_name()).await.unwrap();
    stream.info().await.unwrap().state.messages
}

#[tokio::test]
async fn events_travel_through_jetstream_once_each_in_key_order() {
    let nats = NatsServer::start();
    let db = TestDb::new().await;
    let project = TestProject::new(&db.project, &manifest("jetstream", ""), FILES);
    let app = start(&db, &project).await;
    let broker = Broker::connect_to(app.manifest(), &nats.url()).await.unwrap();
    // Retention waits for the relay, not for the subscriber that reads JetStream.
    let progress = text(&db.url, "SELECT string_agg(subscriber, ',') FROM customers.moat_outbox_progress").await;
    assert_eq!(progress, "$relay");

    let relay = Relay::start(app.clone(), broker.clone(), relay_config()).await.unwrap();
    let dispatcher = app
        .events()
        .jetstream(broker.clone())
        .config(config())
        .subscribe::<CustomerRenamed, _>("orders", Record)
        .unwrap()
        .start()
        .await
        .unwrap();
    publish(&app, 0, 60).await;
    wait_for(&db.url, APPLIED, 60, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count(&db.url, APPLIED).await, 60);
    assert_eq!(count(&db.url, OUT_OF_ORDER).await, 0);
    assert_eq!(stream_messages(&broker).await, 60);
    assert_eq!(relay.stats().published.load(Ordering::Relaxed), 60);
    // The subjects are `<project>.<module>.<EventType>`.
    let mut sub = broker.client().subscribe(format!("{}.customers.CustomerRenamed", db.project)).await.unwrap();
    publish(&app, 60, 61).await;
    let message =
        tokio::time::timeout(Duration::from_secs(10), futures::StreamExt::next(&mut sub)).await.unwrap().unwrap();
    let body: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
    assert_eq!(body["module"], "customers");
    assert_eq!(body["type"], "CustomerRenamed");
    assert_eq!(body["payload"]["customer_id"], 0);
    wait_for(&db.url, APPLIED, 61, Duration::from_secs(30)).await;
    dispatcher.shutdown().await;
    relay.shutdown().await;
    app.close().await;
}

#[tokio::test]
async fn a_relay_that_publishes_again_beyond_the_duplicate_window_causes_no_second_effect() {
    let nats = NatsServer::start();
    let db = TestDb::new().await;
    // A one-second window (and retry horizon): JetStream forgets the message ids quickly.
    let project =
        TestProject::new(&db.project, &manifest("jetstream", "duplicate_window = \"1s\"\nrelay_retry = \"1s\""), FILES);
    let app = start(&db, &project).await;
    let broker = Broker::connect_to(app.manifest(), &nats.url()).await.unwrap();
    let relay = Relay::start(app.clone(), broker.clone(), relay_config()).await.unwrap();
    let dispatcher = app
        .events()
        .jetstream(broker.clone())
        .config(config())
        .subscribe::<CustomerRenamed, _>("orders", Record)
        .unwrap()
        .start()
        .await
        .unwrap();
    publish(&app, 0, 30).await;
    wait_for(&db.url, APPLIED, 30, Duration::from_secs(30)).await;
    relay.shutdown().await;

    // Within the window: the relay lost its progress (as if it never saw the PubAcks) and
    // publishes every event again; JetStream drops them all.
    db.exec(
        "UPDATE customers.moat_outbox_progress SET lo = '1:1:', hi = NULL, last_id = 0 WHERE subscriber = '$relay'",
    )
    .await;
    let relay = Relay::start(app.clone(), broker.clone(), relay_config()).await.unwrap();
    let started = Instant::now();
    while relay.stats().duplicates.load(Ordering::Relaxed) < 30 {
        assert!(started.elapsed() < Duration::from_secs(20), "the relay did not publish again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    relay.shutdown().await;
    assert_eq!(stream_messages(&broker).await, 30);

    // Beyond the window: the stream stores them a second time; the subscriber applies none.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    db.exec(
        "UPDATE customers.moat_outbox_progress SET lo = '1:1:', hi = NULL, last_id = 0 WHERE subscriber = '$relay'",
    )
    .await;
    let relay = Relay::start(app.clone(), broker.clone(), relay_config()).await.unwrap();
    let started = Instant::now();
    while stream_messages(&broker).await < 60 {
        assert!(started.elapsed() < Duration::from_secs(20), "the relay did not publish again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    publish(&app, 30, 33).await;
    wait_for(&db.url, APPLIED, 33, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count(&db.url, APPLIED).await, 33);
    assert_eq!(count(&db.url, "SELECT count(DISTINCT event_id) FROM orders.applied").await, 33);
    assert_eq!(count(&db.url, OUT_OF_ORDER).await, 0);
    dispatcher.shutdown().await;
    relay.shutdown().await;
    app.close().await;
}

#[tokio::test]
async fn a_subscription_switches_between_transports_without_loss_or_duplicate() {
    let nats = NatsServer::start();
    let db = TestDb::new().await;
    let project = TestProject::new(&db.project, &manifest("direct", ""), FILES);

    // Direct.
    let app = start(&db, &project).await;
    let dispatcher =
        app.events().config(config()).subscribe::<CustomerRenamed, _>("orders", Record).unwrap().start().await.unwrap();
    publish(&app, 0, 30).await;
    wait_for(&db.url, APPLIED, 30, Duration::from_secs(30)).await;
    dispatcher.shutdown().await;
    // Published while no dispatcher runs: the next transport must deliver them.
    publish(&app, 30, 40).await;
    app.close().await;

    // JetStream.
    project.write("moat.toml", &manifest("jetstream", "").replace("{project}", &db.project));
    let app = start(&db, &project).await;
    let broker = Broker::connect_to(app.manifest(), &nats.url()).await.unwrap();
    let relay = Relay::start(app.clone(), broker.clone(), relay_config()).await.unwrap();
    let dispatcher = app
        .events()
        .jetstream(broker.clone())
        .config(config())
        .subscribe::<CustomerRenamed, _>("orders", Record)
        .unwrap()
        .start()
        .await
        .unwrap();
    publish(&app, 40, 60).await;
    wait_for(&db.url, APPLIED, 60, Duration::from_secs(30)).await;
    assert_eq!(text(&db.url, "SELECT transport FROM orders.moat_subscriptions").await, "jetstream");
    dispatcher.shutdown().await;
    publish(&app, 60, 70).await;
    // The relay publishes them; the subscriber is not running.
    let started = Instant::now();
    while stream_messages(&broker).await < 70 {
        assert!(started.elapsed() < Duration::from_secs(20), "the relay did not publish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    relay.shutdown().await;
    app.close().await;

    // Direct again: what JetStream holds for it is drained first.
    project.write("moat.toml", &manifest("direct", "").replace("{project}", &db.project));
    let app = start(&db, &project).await;
    let dispatcher = app
        .events()
        .jetstream(broker.clone())
        .config(config())
        .subscribe::<CustomerRenamed, _>("orders", Record)
        .unwrap()
        .start()
        .await
        .unwrap();
    publish(&app, 70, 90).await;
    wait_for(&db.url, APPLIED, 90, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count(&db.url, APPLIED).await, 90);
    assert_eq!(count(&db.url, "SELECT count(DISTINCT event_id) FROM orders.applied").await, 90);
    assert_eq!(count(&db.url, OUT_OF_ORDER).await, 0);
    assert_eq!(text(&db.url, "SELECT transport FROM orders.moat_subscriptions").await, "direct");
    dispatcher.shutdown().await;
    app.close().await;
}

#[tokio::test]
async fn outbox_retention_waits_for_the_relay() {
    let nats = NatsServer::start();
    let db = TestDb::new().await;
    let project = TestProject::new(&db.project, &manifest("jetstream", ""), FILES);
    let app = start(&db, &project).await;
    // Events in an old slot (as if published two minutes ago), nobody relayed them yet.
    let old_slot = "((floor(extract(epoch FROM now()) / 60)::bigint + 2) % 4)::smallint";
    db.exec(&format!(
        "INSERT INTO customers.moat_outbox (slot, event_id, event_type, event_key, payload) \
         SELECT {old_slot}, gen_random_uuid(), 'CustomerRenamed', g::text, json_build_object('customer_id', g, 'version', 1) FROM generate_series(1, 50) g"
    ))
    .await;
    let relay_pool = app.relay_pool().await.unwrap();
    db.exec("SELECT pg_current_xact_id()").await;
    assert_eq!(
        moat::events::truncate_consumed(&relay_pool, "customers").await.unwrap(),
        0,
        "the relay has not published them"
    );
    assert_eq!(count(&db.url, "SELECT count(*) FROM customers.moat_outbox").await, 50);

    let broker = Broker::connect_to(app.manifest(), &nats.url()).await.unwrap();
    let relay = Relay::start(app.clone(), broker.clone(), relay_config()).await.unwrap();
    let started = Instant::now();
    loop {
        if moat::events::truncate_consumed(&relay_pool, "customers").await.unwrap() >= 1 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "the relayed slot was never truncated");
        db.exec("SELECT pg_current_xact_id()").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stream_messages(&broker).await, 50);
    assert_eq!(count(&db.url, "SELECT count(*) FROM customers.moat_outbox").await, 0);
    relay.shutdown().await;
    app.close().await;
}

/// Module code is not trusted: its runtime role can write any event type into its own outbox,
/// including types that are no valid NATS subject token. The relay publishes them under a
/// sanitized token (the body keeps the real type) and goes on with the module's later events.
#[tokio::test]
async fn event_types_that_are_no_subject_token_neither_stop_the_relay_nor_escape_their_subject() {
    use futures::StreamExt as _;
    let nats = NatsServer::start();
    let db = TestDb::new().await;
    let project = TestProject::new(&db.project, &manifest("jetstream", ""), FILES);
    let app = start(&db, &project).await;
    let broker = Broker::connect_to(app.manifest(), &nats.url()).await.unwrap();
    let relay = Relay::start(app.clone(), broker.clone(), relay_config()).await.unwrap();
    publish(&app, 0, 3).await;

    // As the module's runtime role, straight into its outbox.
    let poison = [("Evil.>", "Evil__"), ("has space", "has_space"), ("", "_"), ("*", "_"), ("a\r\nb", "a__b")];
    let mut runtime = db.connect_as(&db.role("customers")).await;
    for (event_type, _) in poison {
        sqlx::query(
            "INSERT INTO customers.moat_outbox (event_id, event_type, event_key, payload) \
             VALUES (gen_random_uuid(), $1, 'evil', '{}')",
        )
        .bind(event_type)
        .execute(&mut runtime)
        .await
        .unwrap();
    }
    drop(runtime);
    publish(&app, 3, 6).await;

    let expected = 6 + poison.len() as u64;
    let started = Instant::now();
    while stream_messages(&broker).await < expected {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the relay is stuck: {} of {expected} events in the stream",
            stream_messages(&broker).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    relay.shutdown().await;
    // A subscriber reading JetStream passes over the poison events (no handler takes their
    // types) and applies the module's other events, before and after them.
    let dispatcher = app
        .events()
        .jetstream(broker.clone())
        .config(config())
        .subscribe::<CustomerRenamed, _>("orders", Record)
        .unwrap()
        .start()
        .await
        .unwrap();
    wait_for(&db.url, APPLIED, 6, Duration::from_secs(30)).await;
    dispatcher.shutdown().await;
    assert_eq!(count(&db.url, OUT_OF_ORDER).await, 0);

    // Every message, in order, with its subject and the type its body carries.
    let tailed = moat::jetstream::tail(&broker, None, true).await.unwrap();
    let tailed: Vec<_> = tailed
        .take(expected as usize)
        .map(|t| {
            let t = t.unwrap();
            let event = t.event.unwrap();
            (t.subject, event.event_type, event.key)
        })
        .collect()
        .await;
    let prefix = format!("{}.customers.", db.project);
    let mut wanted: Vec<(String, String, String)> = Vec::new();
    for n in 0..3 {
        wanted.push((format!("{prefix}CustomerRenamed"), "CustomerRenamed".into(), (n % 3).to_string()));
    }
    for (event_type, token) in poison {
        wanted.push((format!("{prefix}{token}"), event_type.into(), "evil".into()));
    }
    for n in 3..6 {
        wanted.push((format!("{prefix}CustomerRenamed"), "CustomerRenamed".into(), (n % 3).to_string()));
    }
    assert_eq!(tailed, wanted);
    app.close().await;
}

/// Fails every event of key 1 while `orders.failing` has a row.
struct FailsKeyOne;

impl moat::events::Handler<CustomerRenamed> for FailsKeyOne {
    async fn handle(
        &self,
        ctx: &mut moat::events::HandlerContext<'_>,
        e: &moat::events::Envelope<CustomerRenamed>,
    ) -> Result<(), moat::events::HandlerError> {
        let failing: i64 = sqlx::query_scalar("SELECT count(*) FROM failing").fetch_one(&mut **ctx).await?;
        if e.payload.customer_id == 1 && failing > 0 {
            return Err("key 1 is failing".into());
        }
        Record.handle(ctx, e).await
    }
}

#[tokio::test]
async fn retries_dead_letters_and_events_retry_work_on_jetstream_as_on_the_outbox() {
    let nats = NatsServer::start();
    let db = TestDb::new().await;
    let mut files = FILES.to_vec();
    files.push((
        "modules/orders/migrations/0002_failing.sql",
        "CREATE TABLE failing (one int);\nINSERT INTO failing VALUES (1);\n",
    ));
    let project = TestProject::new(&db.project, &manifest("jetstream", ""), &files);
    let app = start(&db, &project).await;
    let broker = Broker::connect_to(app.manifest(), &nats.url()).await.unwrap();
    let relay = Relay::start(app.clone(), broker.clone(), relay_config()).await.unwrap();
    let dispatcher = app
        .events()
        .jetstream(broker.clone())
        .config(moat::events::DispatcherConfig { max_attempts: 3, ..config() })
        .subscribe::<CustomerRenamed, _>("orders", FailsKeyOne)
        .unwrap()
        .start()
        .await
        .unwrap();
    publish(&app, 0, 30).await;
    // Keys 0 and 2 flow; key 1's first event is retried, then dead, its later events wait.
    wait_for(&db.url, APPLIED, 20, Duration::from_secs(30)).await;
    wait_for(&db.url, "SELECT count(*) FROM orders.moat_inbox WHERE state = 'dead'", 1, Duration::from_secs(30)).await;
    assert_eq!(count(&db.url, "SELECT count(*) FROM orders.moat_inbox WHERE state = 'waiting'").await, 9);
    let status = moat::admin::events::status(&db.url, app.manifest()).await.unwrap();
    let orders = status.subscriptions.iter().find(|s| s.subscriber == "orders").unwrap();
    assert_eq!((orders.dead, orders.waiting), (1, 9));

    // Fixed: `moat events retry --all` revives it, and key 1 follows in order.
    db.exec("DELETE FROM orders.failing").await;
    let revived =
        moat::admin::events::retry(&db.url, app.manifest(), moat::admin::events::RetryTarget::All).await.unwrap();
    assert_eq!(revived, 1);
    wait_for(&db.url, APPLIED, 30, Duration::from_secs(30)).await;
    assert_eq!(count(&db.url, OUT_OF_ORDER).await, 0);
    assert_eq!(count(&db.url, "SELECT count(*) FROM orders.moat_inbox").await, 0);
    dispatcher.shutdown().await;
    relay.shutdown().await;
    app.close().await;
}

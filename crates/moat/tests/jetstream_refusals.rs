//! JetStream settings that could lose, duplicate or reorder events are refused: on a stream or
//! consumer someone created before moat (the relay and a subscription read their live settings),
//! and in the manifest itself. Each refusal names the setting and its safe value. Each test runs
//! its own `nats-server` (moat_testkit::nats) and database.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use async_nats::jetstream::{consumer, stream};
use common::{CustomerRenamed, Record, config, publish};
use moat::jetstream::{Broker, Relay, RelayConfig};
use moat::{Config, Error, Moat};
use moat_testkit::nats::NatsServer;
use moat_testkit::{TestDb, TestProject};

const FILES: &[(&str, &str)] = &[
    ("modules/customers/migrations/0001_customers.sql", "CREATE TABLE customers (id bigint PRIMARY KEY);\n"),
    (
        "modules/orders/migrations/0001_applied.sql",
        "CREATE TABLE applied (id bigserial PRIMARY KEY, event_id uuid NOT NULL, key text NOT NULL, seq bigint NOT NULL);\n",
    ),
];

/// `[events]` with `events` (the transport and more), `orders` with `orders` (its own keys).
fn manifest(events: &str, orders: &str) -> String {
    format!(
        "[project]\nname = \"{{project}}\"\n[events]\n{events}\n[modules.customers]\n[modules.orders]\ndepends_on = [\"customers\"]\n{orders}\n"
    )
}

const JETSTREAM: &str = "transport = \"jetstream\"";

fn relay_config() -> RelayConfig {
    RelayConfig { batch_size: 7, poll_interval: Duration::from_millis(20), ..RelayConfig::default() }
}

async fn start(db: &TestDb, project: &TestProject) -> Moat {
    Moat::start(Config::new(project.manifest()).database_url(db.url.expose())).await.unwrap()
}

/// Creates the project's stream as someone other than moat would: `<project>.>`, file storage,
/// a two-minute duplicate window, no limits, then `change`.
async fn precreate_stream(broker: &Broker, change: impl FnOnce(&mut stream::Config)) {
    let mut config = stream::Config {
        name: broker.stream_name().to_owned(),
        subjects: vec![format!("{}.>", broker.stream_name())],
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    };
    change(&mut config);
    broker.jetstream().create_stream(config).await.unwrap();
}

/// Messages and consumers of the project's stream.
async fn stream_state(broker: &Broker) -> (u64, usize) {
    let mut stream = broker.jetstream().get_stream(broker.stream_name()).await.unwrap();
    let info = stream.info().await.unwrap();
    (info.state.messages, info.state.consumer_count)
}

/// The error is `Error::UnsafeEventTransport` on `object`, naming exactly `settings`, and its
/// message names each of them and the safe value `safe`.
#[track_caller]
fn assert_refused(result: Result<impl std::fmt::Debug, Error>, object: &str, settings: &[&str], safe: &[&str]) {
    let error = result.expect_err("an unsafe transport was accepted");
    let message = error.to_string();
    match &error {
        Error::UnsafeEventTransport { object: o, settings: found } => {
            assert!(o.contains(object), "refused `{o}`, expected `{object}`: {message}");
            let names: Vec<&str> = found.iter().map(|s| s.setting).collect();
            assert_eq!(names, settings, "{message}");
        }
        other => panic!("expected UnsafeEventTransport, got {other:?}: {message}"),
    }
    for setting in settings {
        assert!(message.contains(&format!("`{setting} = ")), "the message does not name `{setting}`: {message}");
    }
    for safe in safe {
        assert!(message.contains(safe), "the message does not give the safe value {safe}: {message}");
    }
}

/// Starts a JetStream subscription of `orders` to `customers` on `broker`.
async fn subscribe(app: &Moat, broker: &Broker) -> Result<moat::events::Dispatcher, Error> {
    app.events()
        .jetstream(broker.clone())
        .config(config())
        .subscribe::<CustomerRenamed, _>("orders", Record)?
        .start()
        .await
}

#[tokio::test]
async fn a_stream_kept_in_memory_is_refused_and_nothing_is_published_or_consumed() {
    let nats = NatsServer::start();
    let db = TestDb::new().await;
    let project = TestProject::new(&db.project, &manifest(JETSTREAM, ""), FILES);
    let app = start(&db, &project).await;
    let broker = Broker::connect_to(app.manifest(), &nats.url()).await.unwrap();
    precreate_stream(&broker, |c| c.storage = stream::StorageType::Memory).await;
    publish(&app, 0, 5).await;

    assert_refused(
        Relay::start(app.clone(), broker.clone(), relay_config()).await,
        "stream",
        &["storage"],
        &["`storage = \"file\"`"],
    );
    assert_refused(subscribe(&app, &broker).await, "stream", &["storage"], &["`storage = \"file\"`"]);
    // Refused before anything moved: no message, no consumer.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stream_state(&broker).await, (0, 0));
    app.close().await;
}

#[tokio::test]
async fn a_duplicate_window_shorter_than_the_relay_retry_is_refused_with_the_retry_as_the_safe_value() {
    let nats = NatsServer::start();
    let db = TestDb::new().await;
    // `relay_retry` is the default, 60 seconds.
    let project = TestProject::new(&db.project, &manifest(JETSTREAM, ""), FILES);
    let app = start(&db, &project).await;
    let broker = Broker::connect_to(app.manifest(), &nats.url()).await.unwrap();
    precreate_stream(&broker, |c| c.duplicate_window = Duration::from_secs(5)).await;
    publish(&app, 0, 5).await;

    let safe = ["`duplicate_window = \"1m\"` or longer", "\"5s\""];
    assert_refused(
        Relay::start(app.clone(), broker.clone(), relay_config()).await,
        "stream",
        &["duplicate_window"],
        &safe,
    );
    assert_refused(subscribe(&app, &broker).await, "stream", &["duplicate_window"], &safe);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stream_state(&broker).await, (0, 0));
    app.close().await;
}

#[tokio::test]
async fn stream_limits_are_refused_while_a_subscription_reads_jetstream() {
    let nats = NatsServer::start();
    let db = TestDb::new().await;
    let project = TestProject::new(&db.project, &manifest(JETSTREAM, ""), FILES);
    let app = start(&db, &project).await;
    let broker = Broker::connect_to(app.manifest(), &nats.url()).await.unwrap();
    precreate_stream(&broker, |c| {
        c.max_age = Duration::from_secs(3600);
        c.max_messages = 1000;
    })
    .await;
    publish(&app, 0, 5).await;

    let safe = [
        "no `max_age` (unlimited) while a subscription uses `transport = \"jetstream\"`",
        "no `max_msgs` (unlimited) while a subscription uses `transport = \"jetstream\"`",
    ];
    assert_refused(
        Relay::start(app.clone(), broker.clone(), relay_config()).await,
        "stream",
        &["max_age", "max_msgs"],
        &safe,
    );
    assert_refused(subscribe(&app, &broker).await, "stream", &["max_age", "max_msgs"], &safe);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stream_state(&broker).await, (0, 0));
    app.close().await;
}

#[tokio::test]
async fn stream_limits_are_accepted_when_no_subscription_reads_jetstream() {
    let nats = NatsServer::start();
    let limits = |c: &mut stream::Config| {
        c.max_age = Duration::from_secs(3600);
        c.max_messages = 1000;
    };

    // Every subscription direct, no `[events] transport`: the stream only serves outside
    // systems, so its limits delete nothing a subscriber needs.
    let db = TestDb::new().await;
    let project = TestProject::new(&db.project, &manifest("", ""), FILES);
    let broker = Broker::connect_to(&project.manifest(), &nats.url()).await.unwrap();
    precreate_stream(&broker, limits).await;
    broker.ensure_stream().await.unwrap();

    // The project sends every event to JetStream (so `moat up` gives the relay its progress
    // row) but its one subscription reads the outbox directly: the relay runs on that stream.
    let db = TestDb::new().await;
    let project = TestProject::new(&db.project, &manifest(JETSTREAM, "transport = { customers = \"direct\" }"), FILES);
    let app = start(&db, &project).await;
    assert!(app.manifest().jetstream_subscriptions().is_empty());
    let broker = Broker::connect_to(app.manifest(), &nats.url()).await.unwrap();
    precreate_stream(&broker, limits).await;
    let relay = Relay::start(app.clone(), broker.clone(), relay_config()).await.unwrap();
    publish(&app, 0, 5).await;
    let started = std::time::Instant::now();
    while stream_state(&broker).await.0 < 5 {
        assert!(started.elapsed() < Duration::from_secs(20), "the relay did not publish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    relay.shutdown().await;
    app.close().await;
}

#[tokio::test]
async fn a_consumer_whose_ack_wait_is_shorter_than_the_handler_timeout_is_refused_at_start() {
    let nats = NatsServer::start();
    let db = TestDb::new().await;
    let project = TestProject::new(&db.project, &manifest(JETSTREAM, ""), FILES);
    let app = start(&db, &project).await;
    let broker = Broker::connect_to(app.manifest(), &nats.url()).await.unwrap();
    let stream = broker.ensure_stream().await.unwrap();
    let name = Broker::consumer_name("orders", "customers");
    assert_eq!(name, "moat_orders_from_customers");
    stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(name.clone()),
            filter_subject: broker.module_subjects("customers"),
            ack_policy: consumer::AckPolicy::All,
            ack_wait: Duration::from_secs(5),
            ..Default::default()
        })
        .await
        .unwrap();

    // `handler_timeout` is the default, 30 seconds.
    assert_refused(
        subscribe(&app, &broker).await,
        "consumer `moat_orders_from_customers`",
        &["ack_wait"],
        &["`ack_wait = \"30s\"` or longer", "\"5s\""],
    );
    // The consumer is left as it was, for its owner to delete.
    let info = stream.consumer_info(&name).await.unwrap();
    assert_eq!(info.config.ack_wait, Duration::from_secs(5));
    app.close().await;
}

#[tokio::test]
async fn unsafe_settings_in_the_manifest_are_refused_before_the_server_is_touched() {
    let nats = NatsServer::start();
    let cases: [(&str, &[&str], &[&str]); 3] = [
        ("storage = \"memory\"", &["storage"], &["`storage = \"file\"`"]),
        ("duplicate_window = \"10s\"", &["duplicate_window"], &["`duplicate_window = \"1m\"` or longer"]),
        (
            "max_age = \"1h\"",
            &["max_age"],
            &["no `max_age` (unlimited) while a subscription uses `transport = \"jetstream\"`"],
        ),
    ];
    for (setting, names, safe) in cases {
        let db = TestDb::new().await;
        let project = TestProject::new(&db.project, &manifest(&format!("{JETSTREAM}\n{setting}"), ""), FILES);
        let app = start(&db, &project).await;
        let broker = Broker::connect_to(app.manifest(), &nats.url()).await.unwrap();
        assert_refused(Relay::start(app.clone(), broker.clone(), relay_config()).await, "moat.toml", names, safe);
        assert_refused(subscribe(&app, &broker).await, "moat.toml", names, safe);
        // No stream was created.
        let missing = broker.jetstream().get_stream(broker.stream_name()).await;
        assert!(missing.is_err(), "{setting}: a stream was created");
        app.close().await;
    }

    // The manifest's ack wait: the subscription refuses it when it starts (not in its retry loop).
    let db = TestDb::new().await;
    let project = TestProject::new(&db.project, &manifest(&format!("{JETSTREAM}\nack_wait = \"10s\""), ""), FILES);
    let app = start(&db, &project).await;
    let broker = Broker::connect_to(app.manifest(), &nats.url()).await.unwrap();
    assert_refused(subscribe(&app, &broker).await, "moat.toml", &["ack_wait"], &["`ack_wait = \"30s\"` or longer"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, consumers) = stream_state(&broker).await;
    assert_eq!(consumers, 0, "a consumer was created");
    app.close().await;
}

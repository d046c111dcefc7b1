//! Benchmark of `moat relay` and of JetStream subscriptions, run by `scripts/bench-relay`. One
//! process, one PostgreSQL (DATABASE_URL, or the tests' embedded cluster), nats-servers of its own
//! (moat_testkit::nats).
//!
//! * `raw_msgs_per_s`: JetStream publishes with async-nats alone, on a nats-server of their own:
//!   `EVENTS` messages of the size of the relay's (the body and headers of one of its messages,
//!   each with a `Nats-Msg-Id` of its own), up to 4,096 in flight (the relay's `max_ack_inflight`), every PubAck awaited;
//! * `relay_events_per_s`: `EVENTS` events (default 100,000; 1,000 keys at random, 1,000 per
//!   transaction) already in the outbox, then the relay (default `RelayConfig`, its own
//!   `Moat::connect`, as `moat relay` runs), timed until the stream holds them all;
//!   `relay_ratio` = relay / raw; `subscriber_drain_events_per_s`: a subscription reading
//!   JetStream (a handler that writes nothing) applying that backlog;
//! * `jetstream_p50_ms`, `jetstream_p99_ms`: commit → handled (the handler measures
//!   `now() - published_at`, which the outbox sets at the commit) at 1,000 events/s for
//!   `SECONDS` (default 10) through relay, stream and a subscription reading JetStream (relay and
//!   dispatcher on their own `Moat::connect`, so the wake-ups cross connections as between
//!   processes); `direct_p50_ms`, `direct_p99_ms`: the same through the direct transport;
//! * `*_lost`, `*_duplicated`: events published and never handled, or handled more than once.
//!
//! The last line printed is one JSON object.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::{self, stream};
use moat::events::{DispatcherConfig, Envelope, Handler, HandlerContext, HandlerError};
use moat::jetstream::{Broker, Relay, RelayConfig};
use moat::{Config, Moat};
use moat_chaos::TickA;
use moat_testkit::nats::NatsServer;
use moat_testkit::{TestDb, TestProject};
use rand::Rng;

const KEYS: i64 = 1000;
const RATE: u64 = 1000;

fn manifest(transport: &str) -> String {
    format!(
        "[project]\nname = \"{{project}}\"\n[events]\ntransport = \"{transport}\"\n[modules.pub_a]\n[modules.sub_a]\ndepends_on = [\"pub_a\"]\n"
    )
}

const FILES: &[(&str, &str)] = &[
    ("modules/pub_a/migrations/0001_things.sql", "CREATE TABLE things (id bigint PRIMARY KEY);\n"),
    ("modules/sub_a/migrations/0001_things.sql", "CREATE TABLE things (id bigint PRIMARY KEY);\n"),
];

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Records each handled event's id and its commit → handled latency (ms).
#[derive(Clone, Default)]
struct Latency(Arc<Mutex<Vec<(uuid::Uuid, f64)>>>);

impl Handler<TickA> for Latency {
    async fn handle(&self, _ctx: &mut HandlerContext<'_>, e: &Envelope<TickA>) -> Result<(), HandlerError> {
        let ms = (chrono::Utc::now() - e.published_at).num_microseconds().unwrap_or(0) as f64 / 1000.0;
        self.0.lock().unwrap().push((e.id, ms));
        Ok(())
    }
}

async fn stream_messages(broker: &Broker) -> (u64, u64) {
    let mut stream = broker.jetstream().get_stream(broker.stream_name()).await.unwrap();
    let info = stream.info().await.unwrap();
    (info.state.messages, info.state.bytes)
}

async fn start(db: &TestDb, project: &TestProject) -> Moat {
    Moat::start(Config::new(project.manifest()).database_url(db.url.expose())).await.unwrap()
}

async fn connect(db: &TestDb, project: &TestProject, modules: &[&str]) -> Moat {
    Moat::connect(Config::new(project.manifest()).database_url(db.url.expose()).modules(modules.iter().copied()))
        .await
        .unwrap()
}

/// Publishes `events` events, `per_tx` per transaction, keys at random.
async fn prefill(app: &Moat, events: usize, per_tx: usize) {
    let mut rng = rand::rng();
    let mut seqs = vec![0i64; KEYS as usize];
    let mut done = 0;
    while done < events {
        let n = per_tx.min(events - done);
        let mut tx = app.begin("pub_a").await.unwrap();
        for _ in 0..n {
            let key = rng.random_range(0..KEYS);
            seqs[key as usize] += 1;
            tx.publish(&TickA { key, seq: seqs[key as usize] }).unwrap();
        }
        tx.commit().await.unwrap();
        done += n;
    }
}

/// Publishes at `RATE` events/s (one per transaction, 4 publishing tasks) for `seconds`, then
/// waits until every published event was handled (or 30 s) and returns (latencies sorted, lost,
/// duplicated).
async fn steady(app: &Moat, latency: &Latency, seconds: u64) -> (Vec<f64>, i64, i64) {
    let total = RATE * seconds;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..4u64 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            let mut n = t;
            while n < total {
                let due = Duration::from_micros(n * 1_000_000 / RATE);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
                let mut tx = app.begin("pub_a").await.unwrap();
                ids.push(tx.publish(&TickA { key: (n as i64) % KEYS, seq: 0 }).unwrap());
                tx.commit().await.unwrap();
                n += 4;
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.extend(t.await.unwrap());
    }
    eprintln!("published {} events in {:.1}s", ids.len(), started.elapsed().as_secs_f64());
    let waited = Instant::now();
    while latency.0.lock().unwrap().len() < ids.len() && waited.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let handled = latency.0.lock().unwrap().clone();
    let mut counts: HashMap<uuid::Uuid, i64> = HashMap::new();
    for (id, _) in &handled {
        *counts.entry(*id).or_default() += 1;
    }
    let lost = ids.iter().filter(|id| !counts.contains_key(id)).count() as i64;
    let duplicated = counts.values().map(|c| c - 1).sum::<i64>();
    let mut ms: Vec<f64> = handled.iter().map(|(_, ms)| *ms).collect();
    ms.sort_by(f64::total_cmp);
    (ms, lost, duplicated)
}

#[tokio::main]
async fn main() {
    // RUST_LOG=moat::jetstream::consume=trace shows each batch of the subscription.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let events: usize = env_or("EVENTS", 100_000);
    let seconds: u64 = env_or("SECONDS", 10);

    // The relay's throughput: the outbox already holds `events` events.
    let nats = NatsServer::start();
    let db = TestDb::new().await;
    let project = TestProject::new(&db.project, &manifest("jetstream"), FILES);
    let app = start(&db, &project).await;
    prefill(&app, events, 1000).await;
    eprintln!("outbox holds {events} events");
    let relay_app = connect(&db, &project, &[]).await;
    let broker = Broker::connect_to(app.manifest(), &nats.url()).await.unwrap();
    broker.ensure_stream().await.unwrap();
    let started = Instant::now();
    let relay = Relay::start(relay_app.clone(), broker.clone(), RelayConfig::default()).await.unwrap();
    loop {
        let (messages, _) = stream_messages(&broker).await;
        if messages >= events as u64 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(600), "the relay published {messages} events in 10 minutes");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let relay_s = started.elapsed().as_secs_f64();
    let relay_rate = events as f64 / relay_s;
    let (messages, bytes) = stream_messages(&broker).await;
    eprintln!(
        "relay: {events} events in {relay_s:.2}s = {relay_rate:.0}/s ({} bytes per message in the store)",
        bytes / messages.max(1)
    );

    // The same messages with async-nats alone, on a server of their own.
    let sample = {
        let mut sub = broker.client().subscribe(format!("{}.pub_a.>", db.project)).await.unwrap();
        prefill(&app, 1, 1).await;
        tokio::time::timeout(Duration::from_secs(10), futures::StreamExt::next(&mut sub)).await.unwrap().unwrap()
    };
    let body = sample.payload.clone();
    let sample_headers = sample.headers.clone().unwrap_or_default();
    let raw_nats = NatsServer::start();
    let client = async_nats::connect(raw_nats.url()).await.unwrap();
    let js = jetstream::ContextBuilder::new().max_ack_inflight(4096).build(client);
    js.create_stream(stream::Config {
        name: "raw".into(),
        subjects: vec!["raw.>".into()],
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .unwrap();
    let started = Instant::now();
    let mut pending: Vec<PublishAckFuture> = Vec::with_capacity(4096);
    for _ in 0..events {
        let mut headers = sample_headers.clone();
        headers.insert("Nats-Msg-Id", uuid::Uuid::now_v7().to_string().as_str());
        let ack = js
            .send_publish(
                "raw.pub_a.Tick",
                jetstream::message::PublishMessage::build().payload(body.clone()).headers(headers),
            )
            .await
            .unwrap();
        pending.push(ack);
        if pending.len() == 4096 {
            for ack in futures::future::join_all(pending.drain(..).map(|f| f.into_future())).await {
                ack.unwrap();
            }
        }
    }
    for ack in futures::future::join_all(pending.drain(..).map(|f| f.into_future())).await {
        ack.unwrap();
    }
    let raw_s = started.elapsed().as_secs_f64();
    let raw_rate = events as f64 / raw_s;
    eprintln!("raw: {events} messages of {} bytes in {raw_s:.2}s = {raw_rate:.0}/s", body.len());
    drop(raw_nats);

    // Commit → handled through JetStream.
    let latency = Latency::default();
    let sub_app = connect(&db, &project, &["sub_a"]).await;
    let dispatcher = sub_app
        .events()
        .jetstream(broker.clone())
        .config(DispatcherConfig::default())
        .subscribe::<TickA, _>("sub_a", latency.clone())
        .unwrap()
        .start()
        .await
        .unwrap();
    // The backlog first (every event so far), then the steady phase.
    let waited = Instant::now();
    while latency.0.lock().unwrap().len() < events + 1 {
        assert!(waited.elapsed() < Duration::from_secs(600), "the subscriber did not catch up in 10 minutes");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drain_rate = (events + 1) as f64 / waited.elapsed().as_secs_f64();
    eprintln!(
        "subscriber: backlog of {} events applied in {:.2}s = {drain_rate:.0}/s",
        events + 1,
        waited.elapsed().as_secs_f64()
    );
    latency.0.lock().unwrap().clear();
    let (js_ms, js_lost, js_dup) = steady(&app, &latency, seconds).await;
    let (js_p50, js_p99) = (percentile(&js_ms, 50.0), percentile(&js_ms, 99.0));
    eprintln!("jetstream: p50 {js_p50:.1} ms, p99 {js_p99:.1} ms, lost {js_lost}, duplicated {js_dup}");
    dispatcher.shutdown().await;
    relay.shutdown().await;
    sub_app.close().await;
    relay_app.close().await;
    app.close().await;

    // Commit → handled through the direct transport (a project of its own).
    let db2 = TestDb::new().await;
    let project2 = TestProject::new(&db2.project, &manifest("direct"), FILES);
    let app2 = start(&db2, &project2).await;
    let sub_app2 = connect(&db2, &project2, &["sub_a"]).await;
    let latency2 = Latency::default();
    let dispatcher2 = sub_app2
        .events()
        .config(DispatcherConfig::default())
        .subscribe::<TickA, _>("sub_a", latency2.clone())
        .unwrap()
        .start()
        .await
        .unwrap();
    let (direct_ms, direct_lost, direct_dup) = steady(&app2, &latency2, seconds).await;
    let (direct_p50, direct_p99) = (percentile(&direct_ms, 50.0), percentile(&direct_ms, 99.0));
    eprintln!("direct: p50 {direct_p50:.1} ms, p99 {direct_p99:.1} ms, lost {direct_lost}, duplicated {direct_dup}");
    dispatcher2.shutdown().await;
    sub_app2.close().await;
    app2.close().await;

    let json = serde_json::json!({
        "events": events,
        "message_bytes": body.len(),
        "raw_msgs_per_s": raw_rate.round(),
        "relay_events_per_s": relay_rate.round(),
        "relay_ratio": (relay_rate / raw_rate * 1000.0).round() / 1000.0,
        "subscriber_drain_events_per_s": drain_rate.round(),
        "rate_per_s": RATE,
        "seconds": seconds,
        "jetstream_p50_ms": (js_p50 * 10.0).round() / 10.0,
        "jetstream_p99_ms": (js_p99 * 10.0).round() / 10.0,
        "jetstream_lost": js_lost,
        "jetstream_duplicated": js_dup,
        "direct_p50_ms": (direct_p50 * 10.0).round() / 10.0,
        "direct_p99_ms": (direct_p99 * 10.0).round() / 10.0,
        "direct_lost": direct_lost,
        "direct_duplicated": direct_dup,
    });
    println!("{json}");
}

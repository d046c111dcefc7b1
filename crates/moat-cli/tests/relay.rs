//! `moat relay`, `moat events tail` and `moat events status` on JetStream, as a user runs them:
//! the built binary against a real PostgreSQL and a `nats-server` of the test's own; events
//! published by the application through `moat::Moat`.
#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use moat::events::{Envelope, Event, Handler, HandlerContext, HandlerError};
use moat::jetstream::Broker;
use moat::{Config, Moat};
use moat_testkit::nats::NatsServer;
use moat_testkit::{TestDb, TestProject};
use serde::{Deserialize, Serialize};

const FILES: &[(&str, &str)] = &[
    ("modules/customers/migrations/0001_customers.sql", "CREATE TABLE customers (id bigint PRIMARY KEY);\n"),
    ("modules/orders/migrations/0001_orders.sql", "CREATE TABLE orders (id bigint PRIMARY KEY);\n"),
];

fn manifest(events: &str) -> String {
    format!(
        "[project]\nname = \"{{project}}\"\n[events]\n{events}\n[modules.customers]\n[modules.orders]\ndepends_on = [\"customers\"]\n"
    )
}

fn command(project: &TestProject, url: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_moat"));
    command
        .current_dir(project.dir.path())
        .env("NO_COLOR", "1")
        .env_remove("DATABASE_URL")
        .env_remove("MOAT_DATABASE_URL")
        .env_remove("NATS_URL")
        .env_remove("MOAT_LOG")
        .env_remove("RUST_LOG")
        .arg("--database-url")
        .arg(url)
        .args(args);
    command
}

fn moat(project: &TestProject, url: &str, args: &[&str]) -> Output {
    command(project, url, args).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[track_caller]
fn assert_exit(output: &Output, code: i32) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        text(&output.stdout),
        text(&output.stderr)
    );
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CustomerRenamed {
    customer_id: i64,
    name: String,
}

impl Event for CustomerRenamed {
    const MODULE: &'static str = "customers";
    const TYPE: &'static str = "CustomerRenamed";
    fn key(&self) -> String {
        self.customer_id.to_string()
    }
}

/// Applies nothing: the test looks at the consumer, not at effects.
struct Nothing;

impl Handler<CustomerRenamed> for Nothing {
    async fn handle(&self, _: &mut HandlerContext<'_>, _: &Envelope<CustomerRenamed>) -> Result<(), HandlerError> {
        Ok(())
    }
}

async fn publish(app: &Moat, from: i64, to: i64) {
    for n in from..to {
        let mut tx = app.begin("customers").await.unwrap();
        tx.publish(&CustomerRenamed { customer_id: n % 3, name: format!("name {n}") }).unwrap();
        tx.commit().await.unwrap();
    }
}

/// Waits until the stream holds `expected` messages.
async fn wait_for_stream(broker: &Broker, expected: u64) {
    let started = Instant::now();
    loop {
        let messages = match broker.jetstream().get_stream(broker.stream_name()).await {
            Ok(mut stream) => stream.info().await.unwrap().state.messages,
            Err(_) => 0,
        };
        if messages == expected {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the stream holds {messages}, expected {expected}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGTERM, then the child's output (killed after 30 s).
fn terminate(mut child: Child) -> Output {
    let status = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    assert!(status.success());
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(30) {
            child.kill().unwrap();
            panic!("the relay did not stop within 30 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = child.wait().unwrap();
    let mut stdout = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut stdout).unwrap();
    let mut stderr = Vec::new();
    child.stderr.take().unwrap().read_to_end(&mut stderr).unwrap();
    Output { status, stdout, stderr }
}

#[tokio::test]
async fn the_relay_publishes_until_sigterm_tail_prints_the_envelopes_and_status_shows_the_consumer() {
    let nats = NatsServer::start();
    let db = TestDb::new().await;
    let project = TestProject::new(&db.project, &manifest("transport = \"jetstream\""), FILES);
    let url = db.url.expose().to_owned();
    assert_exit(&moat(&project, &url, &["up"]), 0);

    let relay = command(
        &project,
        &url,
        &["--format", "json", "relay", "--nats-url", &nats.url(), "--progress-every", "1", "--batch-size", "4"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let app = Moat::connect(Config::new(project.manifest()).database_url(db.url.expose())).await.unwrap();
    let broker = Broker::connect_to(app.manifest(), &nats.url()).await.unwrap();
    publish(&app, 0, 10).await;
    wait_for_stream(&broker, 10).await;
    let output = terminate(relay);
    assert_exit(&output, 0);
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: stdout:\n{}\nstderr:\n{}", text(&output.stdout), text(&output.stderr)));
    assert_eq!(summary["published"], 10, "{summary}");
    assert_eq!(summary["duplicates"], 0, "{summary}");
    assert_eq!(summary["stream"], db.project.as_str(), "{summary}");

    // `moat events tail`: one envelope per line, in outbox order.
    let tail = moat(
        &project,
        &url,
        &["--format", "json", "events", "tail", "--nats-url", &nats.url(), "--from-start", "--limit", "10"],
    );
    assert_exit(&tail, 0);
    let lines: Vec<serde_json::Value> =
        text(&tail.stdout).lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    assert_eq!(lines.len(), 10, "{}", text(&tail.stdout));
    for (n, envelope) in lines.iter().enumerate() {
        assert_eq!(envelope["module"], "customers", "{envelope}");
        assert_eq!(envelope["type"], "CustomerRenamed", "{envelope}");
        assert_eq!(envelope["key"], (n % 3).to_string(), "{envelope}");
        assert_eq!(envelope["payload"], serde_json::json!({"customer_id": n % 3, "name": format!("name {n}")}));
    }

    // `moat events status` before the subscriber ever ran: no consumer yet.
    let status = moat(&project, &url, &["--format", "json", "events", "status", "--nats-url", &nats.url()]);
    assert_exit(&status, 0);
    let document: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let subscription = &document["subscriptions"][0];
    assert_eq!(subscription["subscriber"], "orders", "{document}");
    assert_eq!(subscription["transport"], "jetstream", "{document}");
    assert_eq!(subscription["jetstream"], serde_json::Value::Null, "{document}");

    // The subscriber consumes the ten, stops; five more are relayed: five pending.
    let dispatcher = app
        .events()
        .jetstream(broker.clone())
        .subscribe::<CustomerRenamed, _>("orders", Nothing)
        .unwrap()
        .start()
        .await
        .unwrap();
    let started = Instant::now();
    loop {
        let state = broker.consumer_state("orders", "customers").await.unwrap();
        if state.is_some_and(|s| s.pending == 0 && s.ack_pending == 0) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the subscriber did not consume: {state:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    dispatcher.shutdown().await;
    let relay = command(&project, &url, &["--format", "json", "relay", "--nats-url", &nats.url()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    publish(&app, 10, 15).await;
    wait_for_stream(&broker, 15).await;
    let output = terminate(relay);
    assert_exit(&output, 0);
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["published"], 5, "{summary}");

    let status = moat(&project, &url, &["--format", "json", "events", "status", "--nats-url", &nats.url()]);
    assert_exit(&status, 0);
    let document: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let subscription = &document["subscriptions"][0];
    assert_eq!(subscription["transport"], "jetstream", "{document}");
    assert_eq!(
        subscription["jetstream"],
        serde_json::json!({"pending": 5, "redelivered": 0, "ack_pending": 0}),
        "{document}"
    );
    assert_eq!(document["warnings"], serde_json::json!([]), "{document}");
    let human = moat(&project, &url, &["events", "status", "--nats-url", &nats.url()]);
    assert_exit(&human, 0);
    assert!(
        text(&human.stdout)
            .contains("jetstream consumer `moat_orders_from_customers`: 5 pending, 0 redelivered, 0 awaiting ack"),
        "{}",
        text(&human.stdout)
    );

    // NATS unreachable: the rest is shown, with a warning; no failure.
    let port = nats.port();
    drop(nats);
    let unreachable = format!("nats://127.0.0.1:{port}");
    let status = moat(&project, &url, &["--format", "json", "events", "status", "--nats-url", &unreachable]);
    assert_exit(&status, 0);
    let document: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(document["subscriptions"][0]["subscriber"], "orders", "{document}");
    assert_eq!(document["subscriptions"][0]["jetstream"], serde_json::Value::Null, "{document}");
    assert_eq!(document["warnings"].as_array().map(Vec::len), Some(1), "{document}");
    assert!(text(&status.stderr).contains("warning: JetStream consumers not shown"), "{}", text(&status.stderr));
    app.close().await;
}

#[tokio::test]
async fn a_relay_for_a_project_without_jetstream_transport_exits_2_saying_what_to_set() {
    let nats = NatsServer::start();
    let db = TestDb::new().await;
    let project = TestProject::new(&db.project, &manifest(""), FILES);
    let url = db.url.expose().to_owned();
    assert_exit(&moat(&project, &url, &["up"]), 0);
    let output = moat(&project, &url, &["relay", "--nats-url", &nats.url()]);
    assert_exit(&output, 2);
    let stderr = text(&output.stderr);
    assert!(stderr.contains("relaying module `customers`"), "{stderr}");
    assert!(stderr.contains("set `transport = \"jetstream\"` in `[events]`"), "{stderr}");
    assert!(stderr.contains("run `moat up`"), "{stderr}");
    // Refused before it created anything on the server.
    let broker = Broker::connect_to(&project.manifest(), &nats.url()).await.unwrap();
    assert!(broker.jetstream().get_stream(broker.stream_name()).await.is_err(), "the refused relay created the stream");

    // A status of direct subscriptions never asks NATS.
    let status = moat(&project, &url, &["--format", "json", "events", "status", "--nats-url", "nats://127.0.0.1:1"]);
    assert_exit(&status, 0);
    let document: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(document["subscriptions"][0]["transport"], "direct", "{document}");
    assert_eq!(document["subscriptions"][0]["jetstream"], serde_json::Value::Null, "{document}");
    assert_eq!(document["warnings"], serde_json::json!([]), "{document}");
}

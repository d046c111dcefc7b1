//! Benchmark of module events, run by `scripts/bench-events` (release build). One process, one
//! PostgreSQL (DATABASE_URL or the tests' embedded cluster), one fresh database.
//!
//! * `baseline_tps`: N clients, each transaction `BEGIN; INSERT one business row; COMMIT` through
//!   sqlx on the module's own pool, no event;
//! * `publish_tps`: the same transactions each also publishing one event; `publish_overhead` is
//!   publish_tps / baseline_tps (both measured alternately, medians);
//! * `drain_eps`: a backlog of 200,000 events delivered to 3 subscribers that each upsert a
//!   snapshot row per event (and count it), in events per second per subscriber, with the
//!   handler's `handle_batch` (one upsert per run of events);
//! * `drain_eps_per_event`: the same backlog drained afterwards by a fourth subscriber whose
//!   handler has only `handle` (one upsert per event), in events per second;
//! * `p50_ms`, `p99_ms`: commit-to-handled latency at a steady 1,000 events per second;
//! * `lost`, `duplicated`: counted from the subscribers' own records against what was published;
//! * `outbox_dead_tuples`: `n_dead_tup` of the outbox partitions after the run.
//!
//! The last line printed is one JSON object with exactly these keys.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moat::events::{DispatcherConfig, Envelope, Event, Handler, HandlerContext, HandlerError};
use moat::{Config, Moat};
use moat_testkit::{TestDb, TestProject};
use serde::{Deserialize, Serialize};

const CLIENTS: usize = 8;
const PHASE: Duration = Duration::from_secs(4);
const BACKLOG: i64 = 200_000;
const KEYS: i64 = 1_000;
const RATE: u64 = 1_000;
const STEADY: Duration = Duration::from_secs(10);

const SUBSCRIBER: &str = "CREATE TABLE snapshots (key text PRIMARY KEY, version bigint NOT NULL, applied bigint NOT NULL);\n\
                          CREATE TABLE seen (event_id uuid NOT NULL);\n";

#[derive(Debug, Serialize, Deserialize)]
struct Tick {
    key: i64,
    version: i64,
}

impl Event for Tick {
    const MODULE: &'static str = "source";
    const TYPE: &'static str = "Tick";
    fn key(&self) -> String {
        self.key.to_string()
    }
}

/// Upserts the snapshot row of the event's key and counts the application.
struct Upsert;

impl Handler<Tick> for Upsert {
    async fn handle(&self, ctx: &mut HandlerContext<'_>, event: &Envelope<Tick>) -> Result<(), HandlerError> {
        sqlx::query(
            "INSERT INTO snapshots (key, version, applied) VALUES ($1, $2, 1) \
             ON CONFLICT (key) DO UPDATE SET version = greatest(snapshots.version, excluded.version), applied = snapshots.applied + 1",
        )
        .bind(&event.key)
        .bind(event.payload.version)
        .execute(&mut **ctx)
        .await?;
        Ok(())
    }

    /// One statement per batch: the newest version and the count per key.
    async fn handle_batch(&self, ctx: &mut HandlerContext<'_>, events: &[Envelope<Tick>]) -> Result<(), HandlerError> {
        let mut per_key: std::collections::BTreeMap<&str, (i64, i64)> = std::collections::BTreeMap::new();
        for event in events {
            let entry = per_key.entry(event.key.as_str()).or_insert((i64::MIN, 0));
            entry.0 = entry.0.max(event.payload.version);
            entry.1 += 1;
        }
        let keys: Vec<&str> = per_key.keys().copied().collect();
        let versions: Vec<i64> = per_key.values().map(|v| v.0).collect();
        let counts: Vec<i64> = per_key.values().map(|v| v.1).collect();
        sqlx::query(
            "INSERT INTO snapshots (key, version, applied) SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[]) \
             ON CONFLICT (key) DO UPDATE SET version = greatest(snapshots.version, excluded.version), applied = snapshots.applied + excluded.applied",
        )
        .bind(&keys)
        .bind(&versions)
        .bind(&counts)
        .execute(&mut **ctx)
        .await?;
        Ok(())
    }
}

/// The same upsert with only the per-event `handle` (the default `handle_batch` calls it).
struct PerEvent;

impl Handler<Tick> for PerEvent {
    async fn handle(&self, ctx: &mut HandlerContext<'_>, event: &Envelope<Tick>) -> Result<(), HandlerError> {
        Upsert.handle(ctx, event).await
    }
}

/// Waits until every subscriber applied the whole backlog; returns the seconds it took from
/// `started` (0 when it did not finish within ten minutes).
async fn wait_drained(db: &TestDb, subscribers: &[&str], started: Instant) -> f64 {
    loop {
        let mut done = true;
        for subscriber in subscribers {
            done &= scalar(db, &format!("SELECT coalesce(sum(applied), 0)::bigint FROM {subscriber}.snapshots")).await
                >= BACKLOG;
        }
        if done {
            return started.elapsed().as_secs_f64();
        }
        if started.elapsed() > Duration::from_secs(600) {
            return 0.0;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Records the commit-to-handled latency and the event id.
struct Latency(Arc<Mutex<Vec<f64>>>);

impl Handler<Tick> for Latency {
    async fn handle(&self, ctx: &mut HandlerContext<'_>, event: &Envelope<Tick>) -> Result<(), HandlerError> {
        let ms = (chrono::Utc::now() - event.published_at).num_microseconds().unwrap_or(0) as f64 / 1000.0;
        self.0.lock().map_err(|_| "poisoned")?.push(ms);
        sqlx::query("INSERT INTO seen (event_id) VALUES ($1)").bind(event.id).execute(&mut **ctx).await?;
        Ok(())
    }
}

async fn scalar(db: &TestDb, sql: &str) -> i64 {
    let mut conn = db.connect().await;
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned())).fetch_one(&mut conn).await.unwrap()
}

async fn run_clients(app: &Moat, publish: bool) -> f64 {
    let deadline = Instant::now() + PHASE;
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                if publish {
                    let mut tx = app.begin("source").await.unwrap();
                    sqlx::query("INSERT INTO business (client, n) VALUES ($1, $2)")
                        .bind(client as i32)
                        .bind(n as i64)
                        .execute(&mut *tx)
                        .await
                        .unwrap();
                    tx.publish(&Tick { key: (n % KEYS as u64) as i64, version: n as i64 }).unwrap();
                    tx.commit().await.unwrap();
                } else {
                    let mut tx = app.pool("source").unwrap().begin().await.unwrap();
                    sqlx::query("INSERT INTO business (client, n) VALUES ($1, $2)")
                        .bind(client as i32)
                        .bind(n as i64)
                        .execute(&mut *tx)
                        .await
                        .unwrap();
                    tx.commit().await.unwrap();
                }
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    total as f64 / PHASE.as_secs_f64()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

#[tokio::main]
async fn main() {
    let db = TestDb::new().await;
    let project = TestProject::new(
        &db.project,
        "[project]\nname = \"{project}\"\n[modules.source]\n[modules.sub_a]\ndepends_on = [\"source\"]\n[modules.sub_b]\ndepends_on = [\"source\"]\n[modules.sub_c]\ndepends_on = [\"source\"]\n[modules.sub_d]\ndepends_on = [\"source\"]\n",
        &[
            (
                "modules/source/migrations/0001_business.sql",
                "CREATE TABLE business (id bigserial PRIMARY KEY, client int NOT NULL, n bigint NOT NULL, at timestamptz NOT NULL DEFAULT now());\n",
            ),
            ("modules/sub_a/migrations/0001_snapshots.sql", SUBSCRIBER),
            ("modules/sub_b/migrations/0001_snapshots.sql", SUBSCRIBER),
            ("modules/sub_c/migrations/0001_snapshots.sql", SUBSCRIBER),
            ("modules/sub_d/migrations/0001_snapshots.sql", SUBSCRIBER),
        ],
    );
    let app = Moat::start(Config::new(project.manifest()).database_url(db.url.expose()).pool_size(CLIENTS as u32 + 2))
        .await
        .unwrap();
    let subscribers = ["sub_a", "sub_b", "sub_c"];

    // 1. Publish overhead: alternate the two kinds of transaction, three times each.
    run_clients(&app, false).await; // warm-up
    let (mut baseline, mut publish) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        baseline.push(run_clients(&app, false).await);
        publish.push(run_clients(&app, true).await);
    }
    let (baseline_tps, publish_tps) = (median(baseline.clone()), median(publish.clone()));
    println!("baseline_tps runs {baseline:?} -> {baseline_tps:.0}; publish_tps runs {publish:?} -> {publish_tps:.0}");
    db.exec("TRUNCATE source.moat_outbox; TRUNCATE source.business").await;

    // 2. Drain: a backlog of 200,000 events, published in transactions of 1,000.
    let started = Instant::now();
    let mut version = 0i64;
    while version < BACKLOG {
        let mut tx = app.begin("source").await.unwrap();
        for _ in 0..1_000 {
            tx.publish(&Tick { key: version % KEYS, version }).unwrap();
            version += 1;
        }
        tx.commit().await.unwrap();
    }
    println!("backlog of {BACKLOG} events published in {:.1}s", started.elapsed().as_secs_f64());
    let mut bus = app.events().config(DispatcherConfig {
        batch_size: 1_000,
        poll_interval: Duration::from_millis(50),
        ..DispatcherConfig::default()
    });
    for subscriber in subscribers {
        bus = bus.subscribe::<Tick, _>(subscriber, Upsert).unwrap();
    }
    let started = Instant::now();
    let dispatcher = bus.start().await.unwrap();
    let drain_secs = wait_drained(&db, &subscribers, started).await;
    dispatcher.shutdown().await;
    let drain_eps = if drain_secs > 0.0 { BACKLOG as f64 / drain_secs } else { 0.0 };
    println!(
        "drained {BACKLOG} events to each of 3 subscribers in {drain_secs:.2}s: {drain_eps:.0} events/s per subscriber"
    );
    // The same backlog, one upsert per event.
    let started = Instant::now();
    let dispatcher = app
        .events()
        .config(DispatcherConfig {
            batch_size: 1_000,
            poll_interval: Duration::from_millis(50),
            ..DispatcherConfig::default()
        })
        .subscribe::<Tick, _>("sub_d", PerEvent)
        .unwrap()
        .start()
        .await
        .unwrap();
    let per_event_secs = wait_drained(&db, &["sub_d"], started).await;
    dispatcher.shutdown().await;
    let drain_eps_per_event = if per_event_secs > 0.0 { BACKLOG as f64 / per_event_secs } else { 0.0 };
    println!(
        "drained {BACKLOG} events to 1 subscriber with per-event handling in {per_event_secs:.2}s: {drain_eps_per_event:.0} events/s"
    );
    let mut lost = 0;
    let mut duplicated = 0;
    for subscriber in subscribers.into_iter().chain(["sub_d"]) {
        let applied =
            scalar(&db, &format!("SELECT coalesce(sum(applied), 0)::bigint FROM {subscriber}.snapshots")).await;
        let per_key = BACKLOG / KEYS;
        // Every key got exactly BACKLOG / KEYS events: more is a duplicate, less (or no row) a loss.
        let over = scalar(&db, &format!("SELECT coalesce(sum(applied - {per_key}), 0)::bigint FROM {subscriber}.snapshots WHERE applied > {per_key}")).await;
        let kept = scalar(
            &db,
            &format!("SELECT coalesce(sum(least(applied, {per_key})), 0)::bigint FROM {subscriber}.snapshots"),
        )
        .await;
        let under = BACKLOG - kept;
        println!("{subscriber}: applied {applied}");
        duplicated += over;
        lost += under;
    }

    // 3. Latency at a steady 1,000 events per second, one event per transaction.
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let dispatcher = app
        .events()
        .config(DispatcherConfig { poll_interval: Duration::from_millis(500), ..DispatcherConfig::default() })
        .subscribe::<Tick, _>("sub_a", Latency(latencies.clone()))
        .unwrap()
        .start()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    latencies.lock().unwrap().clear();
    db.exec("TRUNCATE sub_a.seen; TRUNCATE source.business").await;
    let interval = Duration::from_micros(1_000_000 / RATE);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let deadline = Instant::now() + STEADY;
    let mut in_flight = tokio::task::JoinSet::new();
    let mut n = 0i64;
    while Instant::now() < deadline {
        ticker.tick().await;
        let app = app.clone();
        n += 1;
        in_flight.spawn(async move {
            let mut tx = app.begin("source").await.unwrap();
            sqlx::query("INSERT INTO business (client, n) VALUES (0, $1)").bind(n).execute(&mut *tx).await.unwrap();
            tx.publish(&Tick { key: n % KEYS, version: BACKLOG + n }).unwrap();
            tx.commit().await.unwrap();
        });
        while in_flight.len() > 64 {
            in_flight.join_next().await;
        }
    }
    while in_flight.join_next().await.is_some() {}
    let published = n;
    let started = Instant::now();
    while scalar(&db, "SELECT count(*) FROM sub_a.seen").await < published
        && started.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    dispatcher.shutdown().await;
    let seen = scalar(&db, "SELECT count(*) FROM sub_a.seen").await;
    let distinct = scalar(&db, "SELECT count(DISTINCT event_id) FROM sub_a.seen").await;
    lost += published - distinct;
    duplicated += seen - distinct;
    let mut sorted = latencies.lock().unwrap().clone();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let (p50, p99) = (percentile(&sorted, 0.50), percentile(&sorted, 0.99));
    println!(
        "steady {RATE} events/s for {}s: {published} published, p50 {p50:.2} ms, p99 {p99:.2} ms",
        STEADY.as_secs()
    );

    // 4. Dead tuples in the outbox after all of it (statistics are flushed within a second).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let dead_tuples = scalar(
        &db,
        "SELECT coalesce(sum(n_dead_tup), 0)::bigint FROM pg_stat_user_tables WHERE schemaname = 'source' AND relname ~ '^moat_outbox(_[0-9]+)?$'",
    )
    .await;
    let outbox_rows = scalar(&db, "SELECT count(*) FROM source.moat_outbox").await;
    println!("outbox: {outbox_rows} rows in the current slot, {dead_tuples} dead tuples");
    app.close().await;

    let summary = serde_json::json!({
        "baseline_tps": baseline_tps.round(),
        "publish_tps": publish_tps.round(),
        "publish_overhead": (publish_tps / baseline_tps * 1000.0).round() / 1000.0,
        "drain_eps": drain_eps.round(),
        "drain_eps_per_event": drain_eps_per_event.round(),
        "p50_ms": (p50 * 100.0).round() / 100.0,
        "p99_ms": (p99 * 100.0).round() / 100.0,
        "lost": lost,
        "duplicated": duplicated,
        "outbox_dead_tuples": dead_tuples,
    });
    println!("{summary}");
}

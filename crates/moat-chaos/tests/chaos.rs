//! The JetStream transport under chaos: two publishers in two databases, three subscribers (one
//! in each of those databases and one in a third), two relay processes and two processes per
//! subscriber module killed with SIGKILL at random points, and the test's nats-server killed and
//! restarted three times, while events are published. Afterwards every subscriber applied every
//! event exactly once, in key order, as its own table says.
//!
//! `MOAT_CHAOS_EVENTS` (default 100000), `MOAT_CHAOS_SECONDS` (how long the chaos lasts, default
//! 30) and `MOAT_CHAOS_SEED` (default: random; the seed is printed) tune a run; the processes log
//! to `target/tmp/chaos-<project>/` (`MOAT_CHAOS_LOG` is their `RUST_LOG`), kept when the test
//! fails or `MOAT_CHAOS_KEEP_LOGS` is set.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use moat::jetstream::Broker;
use moat::{Config, Moat};
use moat_admin::DatabaseUrl;
use moat_chaos::{APPLIED_TABLE, SUBSCRIBERS, TickA, TickB};
use moat_testkit::nats::NatsServer;
use moat_testkit::{TestDb, TestProject};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::Connection;

const MANIFEST: &str = r#"
[project]
name = "{project}"
[databases.b_db]
url_env = "MOAT_CHAOS_UNSET_B_URL"
[databases.c_db]
url_env = "MOAT_CHAOS_UNSET_C_URL"
[events]
transport = "jetstream"
[modules.pub_a]
[modules.pub_b]
database = "b_db"
[modules.sub_a]
depends_on = ["pub_a", "pub_b"]
[modules.sub_b]
database = "b_db"
depends_on = ["pub_a", "pub_b"]
[modules.sub_c]
database = "c_db"
depends_on = ["pub_a", "pub_b"]
"#;

/// Keys per publisher.
const KEYS: usize = 1000;
/// Events per publishing transaction.
const PUBLISH_BATCH: usize = 250;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v.parse().unwrap_or_else(|_| panic!("{name} is not a number: {v}")),
        _ => default,
    }
}

/// One role run as a `moat-chaos` process, started again after each kill.
struct Proc {
    name: String,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    kills: u32,
}

impl Proc {
    fn new(name: String, args: Vec<String>, logs: &Path) -> Self {
        let log = logs.join(format!("{name}.log"));
        let mut proc = Self { name, args, log, child: None, kills: 0 };
        proc.spawn();
        proc
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_moat-chaos"))
            .args(&self.args)
            .env("RUST_LOG", std::env::var("MOAT_CHAOS_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// SIGKILL, then a new process.
    fn kill_and_restart(&mut self) {
        self.kill();
        self.kills += 1;
        self.spawn();
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A process that exited by itself (it should run until killed) is reported and started again.
    fn check(&mut self) {
        if let Some(child) = &mut self.child
            && let Ok(Some(status)) = child.try_wait()
        {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let last = log.lines().rev().find(|l| l.starts_with("Error")).unwrap_or("(no error line)");
            eprintln!("chaos: {} exited by itself ({status}): {last}", self.name);
            self.spawn();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn count(url: &DatabaseUrl, sql: &str) -> i64 {
    let mut conn = moat_admin::connect(url).await.unwrap();
    let n = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned())).fetch_one(&mut conn).await.unwrap();
    let _ = conn.close().await;
    n
}

/// Publishes `events` events of `publisher` in transactions of [`PUBLISH_BATCH`], over [`KEYS`]
/// keys chosen at random, each with its key's next sequence number, at an even pace over
/// `over`.
async fn publish(app: Moat, publisher: &'static str, events: usize, over: Duration, seed: u64) -> usize {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut seqs = vec![0i64; KEYS];
    let started = Instant::now();
    let mut published = 0;
    while published < events {
        let n = PUBLISH_BATCH.min(events - published);
        let mut tx = app.begin(publisher).await.unwrap();
        for _ in 0..n {
            let key = rng.random_range(0..KEYS);
            seqs[key] += 1;
            let (key, seq) = (key as i64, seqs[key]);
            if publisher == "pub_a" {
                tx.publish(&TickA { key, seq }).unwrap();
            } else {
                tx.publish(&TickB { key, seq }).unwrap();
            }
        }
        tx.commit().await.unwrap();
        published += n;
        let due = over.mul_f64(published as f64 / events as f64);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
    published
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_applied_once_in_key_order_through_kills_and_broker_restarts() {
    let events: usize = env_or("MOAT_CHAOS_EVENTS", 100_000);
    let chaos = Duration::from_secs(env_or("MOAT_CHAOS_SECONDS", 30));
    let seed: u64 = env_or("MOAT_CHAOS_SEED", rand::rng().random());
    eprintln!(
        "chaos: seed {seed} (MOAT_CHAOS_SEED={seed} repeats this run's choices), {events} events, {chaos:?} of chaos"
    );
    let mut rng = StdRng::seed_from_u64(seed);

    let nats = NatsServer::start();
    let db = TestDb::new().await;
    let b_db = db.another("b").await;
    let c_db = db.another("c").await;
    let files: Vec<(String, &str)> = SUBSCRIBERS
        .iter()
        .map(|s| (format!("modules/{s}/migrations/0001_applied.sql"), APPLIED_TABLE))
        .chain(["pub_a", "pub_b"].iter().map(|p| {
            (format!("modules/{p}/migrations/0001_things.sql"), "CREATE TABLE things (id bigint PRIMARY KEY);\n")
        }))
        .collect();
    let files: Vec<(&str, &str)> = files.iter().map(|(p, t)| (p.as_str(), *t)).collect();
    let project = TestProject::new(&db.project, MANIFEST, &files);
    let manifest = project.manifest();
    let app = Moat::start(
        Config::new(manifest.clone())
            .database_url(db.url.expose())
            .database("b_db", b_db.expose())
            .database("c_db", c_db.expose()),
    )
    .await
    .unwrap();

    let logs = moat_testkit::target_dir().join("tmp").join(format!("chaos-{}", db.project));
    std::fs::create_dir_all(&logs).unwrap();
    eprintln!("chaos: process logs in {}", logs.display());
    let common = vec![
        "--manifest".to_owned(),
        project.manifest_path().display().to_string(),
        "--nats".to_owned(),
        nats.url(),
        "--database-url".to_owned(),
        db.url.expose().to_owned(),
        "--database".to_owned(),
        format!("b_db={}", b_db.expose()),
        "--database".to_owned(),
        format!("c_db={}", c_db.expose()),
    ];
    let mut procs = Vec::new();
    for i in 0..2 {
        let mut args = vec!["relay".to_owned()];
        args.extend(common.clone());
        procs.push(Proc::new(format!("relay-{i}"), args, &logs));
    }
    for sub in SUBSCRIBERS {
        for i in 0..2 {
            let mut args = vec!["subscriber".to_owned(), "--module".to_owned(), sub.to_owned()];
            args.extend(common.clone());
            procs.push(Proc::new(format!("{sub}-{i}"), args, &logs));
        }
    }

    // Publishing, paced over most of the chaos.
    let started = Instant::now();
    let per_a = events.div_ceil(2);
    let over = chaos.mul_f64(0.8);
    let publishing = [
        tokio::spawn(publish(app.clone(), "pub_a", per_a, over, rng.random())),
        tokio::spawn(publish(app.clone(), "pub_b", events - per_a, over, rng.random())),
    ];

    // The chaos: every 0.5-2 s a random process is killed and started again; the nats-server is
    // killed (down for 0.2-2 s) and restarted at a quarter, half and three quarters of the time.
    let chaos_rng = StdRng::seed_from_u64(rng.random());
    let chaos_thread = std::thread::spawn(move || {
        let (mut procs, mut nats, mut rng) = (procs, nats, chaos_rng);
        let started = Instant::now();
        let mut restarts = 0u32;
        while started.elapsed() < chaos || restarts < 3 {
            std::thread::sleep(Duration::from_millis(rng.random_range(500..2000)));
            for proc in &mut procs {
                proc.check();
            }
            let victim = rng.random_range(0..procs.len());
            procs[victim].kill_and_restart();
            if started.elapsed() > chaos.mul_f64(f64::from(restarts + 1) / 4.0) && restarts < 3 {
                let down = Duration::from_millis(rng.random_range(200..2000));
                eprintln!("chaos: {:.1}s nats-server killed for {down:?}", started.elapsed().as_secs_f64());
                nats.kill();
                std::thread::sleep(down);
                nats.restart();
                restarts += 1;
            }
        }
        let kills: Vec<String> = procs.iter().map(|p| format!("{} {}", p.name, p.kills)).collect();
        eprintln!(
            "chaos: over after {:.1}s; kills: {}; nats-server restarts: {restarts}",
            started.elapsed().as_secs_f64(),
            kills.join(", ")
        );
        (procs, nats, restarts)
    });

    let mut published = 0;
    for p in publishing {
        published += p.await.unwrap();
    }
    eprintln!("chaos: {published} events published in {:.1}s", started.elapsed().as_secs_f64());
    let (mut procs, nats, restarts) = tokio::task::spawn_blocking(move || chaos_thread.join().unwrap()).await.unwrap();
    assert_eq!(restarts, 3, "the chaos ended before it restarted the nats-server 3 times");

    // Calm: everything runs until every subscriber has every event.
    let subscribers = [("sub_a", &db.url), ("sub_b", &b_db), ("sub_c", &c_db)];
    let broker = Broker::connect_to(&manifest, &nats.url()).await.unwrap();
    let calm = Instant::now();
    let timeout = Duration::from_secs(env_or("MOAT_CHAOS_CALM_SECONDS", 300));
    loop {
        for proc in &mut procs {
            proc.check();
        }
        let mut counts = Vec::new();
        for (sub, url) in subscribers {
            counts.push(count(url, &format!("SELECT count(*) FROM {sub}.applied")).await);
        }
        let stream = match broker.jetstream().get_stream(broker.stream_name()).await {
            Ok(mut s) => s.info().await.map(|i| i.state.messages as i64).unwrap_or(-1),
            Err(_) => -1,
        };
        eprintln!(
            "chaos: {:.1}s stream {stream} messages; applied: sub_a {}, sub_b {}, sub_c {}",
            started.elapsed().as_secs_f64(),
            counts[0],
            counts[1],
            counts[2]
        );
        if counts.iter().all(|&n| n >= events as i64) {
            break;
        }
        assert!(
            calm.elapsed() < timeout,
            "not every event was applied {timeout:?} after the chaos (logs in {})",
            logs.display()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    // A little longer: nothing more arrives.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let total = started.elapsed();
    for (sub, url) in subscribers {
        let rows = count(url, &format!("SELECT count(*) FROM {sub}.applied")).await;
        let distinct = count(url, &format!("SELECT count(DISTINCT event_id) FROM {sub}.applied")).await;
        let out_of_order = count(
            url,
            &format!(
                "SELECT count(*) FROM (SELECT seq, lag(seq) OVER (PARTITION BY publisher, key ORDER BY id) AS prev FROM {sub}.applied) x \
                 WHERE seq <> coalesce(prev, 0) + 1"
            ),
        )
        .await;
        let from_a = count(url, &format!("SELECT count(*) FROM {sub}.applied WHERE publisher = 'pub_a'")).await;
        eprintln!(
            "chaos: {sub}: {rows} rows, {distinct} distinct events, {out_of_order} out of order, {from_a} from pub_a"
        );
        assert_eq!(rows, events as i64, "{sub} applied {rows} events (seed {seed}, logs in {})", logs.display());
        assert_eq!(distinct, events as i64, "{sub} applied {distinct} distinct events (seed {seed})");
        assert_eq!(out_of_order, 0, "{sub} applied events out of key order (seed {seed})");
        assert_eq!(from_a, per_a as i64, "{sub}: events of pub_a (seed {seed})");
    }
    eprintln!("chaos: done in {:.1}s", total.as_secs_f64());
    for proc in &mut procs {
        proc.kill();
    }
    drop(nats);
    app.close().await;
    if std::env::var_os("MOAT_CHAOS_KEEP_LOGS").is_none() {
        let _ = std::fs::remove_dir_all(&logs);
    }
}

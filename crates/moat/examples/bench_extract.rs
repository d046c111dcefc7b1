//! Benchmark of `moat extract` in replicate mode, run by `scripts/bench-extract`. One process, the
//! tests' embedded cluster (`wal_level = logical`), one fresh database plus two more on the same
//! server (the target, and the `pg_dump` baseline's).
//!
//! * a module `ledger` with `ROWS` rows (default 1,000,000) in three tables (accounts, entries,
//!   notes: 20 %, 50 %, 30 %), written at 500 writes/s through the application's pool during the
//!   whole move (open loop: each write is tried at its time, retried every 10 ms until it commits);
//! * a module `orders` in the main database, written at 200 writes/s, whose latency p99 is
//!   measured before the move and during it;
//! * `copy_mb_s`: the ledger's tables and indexes (`pg_total_relation_size`) over the time from the
//!   start of the move to the end of the catch-up (objects, initial copy, indexes, catch-up);
//!   `pg_dump_mb_s`: the same size over `pg_dump -n ledger | psql` into an empty database of the
//!   same server, in the same run; `copy_ratio` = copy_mb_s / pg_dump_mb_s;
//! * `unavailable_p50_ms`, `unavailable_p99_ms`, `unavailable_max_ms`: how long the ledger's
//!   writes that failed at least once or took 100 ms or more waited until they committed, and
//!   `affected_writes`; `write_unavailable_ms` is what the extract's report says (freeze to switch);
//! * `lost`: committed writes missing from the target afterwards.
//!
//! The last line printed is one JSON object.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moat::admin::extract::{ExtractEvent, ExtractOptions, Step, extract};
use moat::{Config, Moat};
use moat_testkit::{TestDb, TestProject};
use tokio::sync::Mutex;

const MANIFEST: &str = r#"
[project]
name = "{project}"

[modules.orders]

[modules.ledger]
"#;

const LEDGER: &str = "\
CREATE TABLE accounts (id bigint PRIMARY KEY, name text NOT NULL, opened date NOT NULL DEFAULT current_date);
CREATE TABLE entries (id bigserial PRIMARY KEY, account_id bigint NOT NULL REFERENCES accounts (id),
  amount numeric(12, 2) NOT NULL, memo text NOT NULL, at timestamptz NOT NULL DEFAULT now());
CREATE INDEX entries_account ON entries (account_id);
CREATE TABLE notes (id bigserial PRIMARY KEY, body text NOT NULL);
";

const ORDERS: &str =
    "CREATE TABLE orders (id bigserial PRIMARY KEY, item text NOT NULL, at timestamptz NOT NULL DEFAULT now());\n";

const LEDGER_RATE: u64 = 500;
const ORDERS_RATE: u64 = 200;
const PHASE: Duration = Duration::from_secs(5);

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// A write: when it was scheduled, how long it took to commit in ms, whether it failed at least once.
type Write = (Instant, f64, bool);

/// Writes to `module` at `rate` per second until `stop`, each write tried at its time and retried
/// every 10 ms until it commits; returns (delay of each write in ms, whether it failed at least
/// once), in the order they were scheduled, and the number of committed writes.
fn load(
    app: Moat,
    module: &'static str,
    sql: &'static str,
    rate: u64,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(Vec<Write>, u64)> {
    tokio::spawn(async move {
        let results = Arc::new(Mutex::new(Vec::new()));
        let committed = Arc::new(AtomicU64::new(0));
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut tasks = tokio::task::JoinSet::new();
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            let (app, results, committed) = (app.clone(), results.clone(), committed.clone());
            tasks.spawn(async move {
                let scheduled = Instant::now();
                let mut failed = false;
                loop {
                    let attempt = async {
                        let pool = app.pool(module).map_err(|e| e.to_string())?;
                        sqlx::query(sql).execute(&pool).await.map_err(|e| e.to_string())
                    };
                    match tokio::time::timeout(Duration::from_secs(30), attempt).await {
                        Ok(Ok(_)) => break,
                        _ => {
                            failed = true;
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
                committed.fetch_add(1, Ordering::Relaxed);
                results.lock().await.push((scheduled, scheduled.elapsed().as_secs_f64() * 1000.0, failed));
            });
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
        let mut results = std::mem::take(&mut *results.lock().await);
        results.sort_by_key(|r| r.0);
        (results, committed.load(Ordering::Relaxed))
    })
}

async fn scalar_f64(url: &moat::admin::DatabaseUrl, sql: &str) -> f64 {
    let mut conn = moat::admin::connect(url).await.unwrap();
    sqlx::query_scalar::<_, f64>(sqlx::AssertSqlSafe(sql.to_owned())).fetch_one(&mut conn).await.unwrap()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let rows: i64 = std::env::var("ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let db = TestDb::logical().await;
    let target = db.another("ledger").await;
    let dumped = db.another("dump").await;
    let project = TestProject::new(
        &db.project,
        MANIFEST,
        &[("modules/orders/migrations/0001_orders.sql", ORDERS), ("modules/ledger/migrations/0001_ledger.sql", LEDGER)],
    );

    // The ledger, filled as its own role.
    let app = Moat::start(Config::new(project.manifest()).database_url(db.url.expose()).pool_size(8)).await.unwrap();
    let started = Instant::now();
    let (accounts, entries) = (rows / 5, rows / 2);
    let notes = rows - accounts - entries;
    let pool = app.pool("ledger").unwrap();
    sqlx::query("INSERT INTO accounts (id, name) SELECT i, 'account ' || i FROM generate_series(1, $1) i")
        .bind(accounts)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO entries (account_id, amount, memo) \
         SELECT 1 + i % $1, (i % 10000) / 100.0, md5(i::text) FROM generate_series(1, $2) i",
    )
    .bind(accounts)
    .bind(entries)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO notes (body) SELECT repeat(md5(i::text), 2) FROM generate_series(1, $1) i")
        .bind(notes)
        .execute(&pool)
        .await
        .unwrap();
    for table in ["accounts", "entries", "notes"] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("VACUUM ANALYZE {table}"))).execute(&pool).await.unwrap();
    }
    app.close().await;
    let size_mb = scalar_f64(
        &db.url,
        "SELECT sum(pg_catalog.pg_total_relation_size(c.oid))::float8 / 1048576 FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'ledger' AND c.relkind = 'r'",
    )
    .await;
    eprintln!("{rows} rows ({size_mb:.1} MB with indexes) written in {:.1} s", started.elapsed().as_secs_f64());

    // The baseline: pg_dump of the schema into an empty database, in the same run.
    let bindir = moat::admin::embedded::find_binaries().unwrap().bindir;
    let started = Instant::now();
    let mut dump = Command::new(bindir.join("pg_dump"))
        .args(["-n", "ledger", "-d", db.url.expose()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let restore = Command::new(bindir.join("psql"))
        .args(["-q", "-X", "-v", "ON_ERROR_STOP=1", "-d", dumped.expose()])
        .stdin(dump.stdout.take().unwrap())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(dump.wait().unwrap().success() && restore.success(), "pg_dump -n ledger | psql failed");
    let pg_dump_s = started.elapsed().as_secs_f64();
    eprintln!("pg_dump -n ledger | psql: {pg_dump_s:.2} s");

    // The application on the manifest that puts the ledger in ledger_db (its data still in main).
    let split = MANIFEST.replace("[modules.ledger]\n", "[modules.ledger]\ndatabase = \"ledger_db\"\n")
        + "\n[databases.ledger_db]\nurl_env = \"MOAT_BENCH_UNSET_LEDGER_URL\"\n";
    project.write("moat.toml", &split.replace("{project}", &db.project));
    let manifest = project.manifest();
    let app = Moat::start(
        Config::new(manifest.clone())
            .database_url(db.url.expose())
            .database("ledger_db", target.expose())
            .pool_size(16),
    )
    .await
    .unwrap();

    let stop_orders = Arc::new(AtomicBool::new(false));
    let orders =
        load(app.clone(), "orders", "INSERT INTO orders (item) VALUES ('x')", ORDERS_RATE, stop_orders.clone());
    tokio::time::sleep(PHASE).await;
    let move_started = Instant::now();
    let stop_ledger = Arc::new(AtomicBool::new(false));
    let ledger =
        load(app.clone(), "ledger", "INSERT INTO notes (body) VALUES ('bench')", LEDGER_RATE, stop_ledger.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;

    let started = Instant::now();
    let report = extract(
        &manifest,
        &moat_core::names::ModuleName::parse("ledger").unwrap(),
        &db.url,
        &target,
        Some("ledger_db"),
        &ExtractOptions::default(),
        &|event| match event {
            ExtractEvent::StepDone { step, duration_ms } => eprintln!("extract: {step} {duration_ms} ms"),
            ExtractEvent::Lag { bytes } if bytes > 0 => eprintln!("extract: lag {bytes} bytes"),
            _ => {}
        },
    )
    .await
    .unwrap_or_else(|e| panic!("moat extract ledger: {e}"));
    let extract_s = started.elapsed().as_secs_f64();
    let move_ended = Instant::now();
    // A second after the switch, then both loads stop.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop_ledger.store(true, Ordering::Relaxed);
    stop_orders.store(true, Ordering::Relaxed);
    let (ledger, committed) = ledger.await.unwrap();
    let (orders, _) = orders.await.unwrap();

    let step_ms = |step: Step| report.steps.iter().filter(|s| s.step == step).map(|s| s.duration_ms).sum::<u64>();
    let copy_s = (step_ms(Step::Prepare) + step_ms(Step::Copy) + step_ms(Step::Catchup)) as f64 / 1000.0;
    let affected = sorted(ledger.iter().filter(|(_, ms, failed)| *failed || *ms >= 100.0).map(|r| r.1).collect());
    let ledger_all = sorted(ledger.iter().map(|r| r.1).collect());
    let before = sorted(orders.iter().filter(|(at, _, _)| *at < move_started).map(|r| r.1).collect());
    let during =
        sorted(orders.iter().filter(|(at, _, _)| *at >= move_started && *at <= move_ended).map(|r| r.1).collect());
    let in_target: i64 = sqlx::query_scalar("SELECT count(*) FROM notes WHERE body = 'bench'")
        .fetch_one(&app.pool("ledger").unwrap())
        .await
        .unwrap();
    let database: String =
        sqlx::query_scalar("SELECT current_database()::text").fetch_one(&app.pool("ledger").unwrap()).await.unwrap();
    assert_eq!(database, target.database(), "the application's ledger pool did not follow the move");
    app.close().await;

    let copy_mb_s = size_mb / copy_s;
    let pg_dump_mb_s = size_mb / pg_dump_s;
    let (p99_before, p99_during) = (percentile(&before, 99.0), percentile(&during, 99.0));
    let json = serde_json::json!({
        "rows": rows,
        "size_mb": (size_mb * 10.0).round() / 10.0,
        "copy_s": copy_s,
        "copy_mb_s": (copy_mb_s * 10.0).round() / 10.0,
        "pg_dump_s": (pg_dump_s * 100.0).round() / 100.0,
        "pg_dump_mb_s": (pg_dump_mb_s * 10.0).round() / 10.0,
        "copy_ratio": (copy_mb_s / pg_dump_mb_s * 100.0).round() / 100.0,
        "extract_s": (extract_s * 100.0).round() / 100.0,
        "steps_ms": report.steps.iter().map(|s| (s.step.as_str(), s.duration_ms)).collect::<std::collections::BTreeMap<_, _>>(),
        "write_unavailable_ms": report.write_unavailable_ms,
        "ledger_writes": ledger_all.len(),
        "affected_writes": affected.len(),
        "unavailable_p50_ms": percentile(&affected, 50.0).round(),
        "unavailable_p99_ms": percentile(&affected, 99.0).round(),
        "unavailable_max_ms": affected.last().copied().unwrap_or(0.0).round(),
        "ledger_p99_ms": (percentile(&ledger_all, 99.0) * 10.0).round() / 10.0,
        "lost": i64::try_from(committed).unwrap() - in_target,
        "other_p99_before_ms": (p99_before * 10.0).round() / 10.0,
        "other_p99_during_ms": (p99_during * 10.0).round() / 10.0,
        "other_p99_ratio": (p99_during / p99_before * 100.0).round() / 100.0,
    });
    println!("{json}");
}

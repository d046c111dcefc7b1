//! A module moved to another cluster: the whole database is dumped with `pg_dump` while some
//! events are delivered and some are not, restored into a second PostgreSQL cluster, and the
//! dispatcher there delivers every event exactly once (the transaction ids and snapshots of the
//! first cluster mean nothing in the second one).
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use moat::events::{DispatcherConfig, Envelope, Event, Handler, HandlerContext, HandlerError};
use moat::{Config, Moat};
use moat_admin::DatabaseUrl;
use moat_admin::embedded::{EmbeddedOptions, ensure_running, find_binaries, stop};
use moat_testkit::{TestDb, TestProject};
use serde::{Deserialize, Serialize};

const MANIFEST: &str = r#"
[project]
name = "{project}"
[modules.customers]
[modules.orders]
depends_on = ["customers"]
"#;

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

struct Record;

impl Handler<CustomerRenamed> for Record {
    async fn handle(&self, ctx: &mut HandlerContext<'_>, e: &Envelope<CustomerRenamed>) -> Result<(), HandlerError> {
        sqlx::query("INSERT INTO applied (event_id, key, seq) VALUES ($1, $2, $3)")
            .bind(e.id)
            .bind(&e.key)
            .bind(e.payload.version)
            .execute(&mut **ctx)
            .await?;
        Ok(())
    }
}

fn config() -> DispatcherConfig {
    DispatcherConfig {
        batch_size: 4,
        poll_interval: Duration::from_millis(50),
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        progress_interval: Duration::from_millis(100),
        ..DispatcherConfig::default()
    }
}

async fn start(url: &DatabaseUrl, project: &TestProject) -> Moat {
    Moat::start(Config::new(project.manifest()).database_url(url.expose()).pool_size(4)).await.unwrap()
}

async fn publish(app: &Moat, from: i64, to: i64) {
    for n in from..to {
        let mut tx = app.begin("customers").await.unwrap();
        tx.publish(&CustomerRenamed { customer_id: n % 3, version: n / 3 + 1 }).unwrap();
        tx.commit().await.unwrap();
    }
}

async fn count(url: &DatabaseUrl, sql: &str) -> i64 {
    let mut conn = moat_admin::connect(url).await.unwrap();
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned())).fetch_one(&mut conn).await.unwrap()
}

async fn text(url: &DatabaseUrl, sql: &str) -> String {
    let mut conn = moat_admin::connect(url).await.unwrap();
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned())).fetch_one(&mut conn).await.unwrap()
}

async fn wait_for(url: &DatabaseUrl, sql: &str, expected: i64, timeout: Duration) {
    let started = Instant::now();
    loop {
        let n = count(url, sql).await;
        if n == expected {
            return;
        }
        assert!(started.elapsed() < timeout, "`{sql}` is {n}, expected {expected} within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn run(tool: &std::path::Path, args: &[&str]) {
    let out = Command::new(tool).args(args).output().unwrap();
    assert!(out.status.success(), "{} {args:?}: {}", tool.display(), String::from_utf8_lossy(&out.stderr));
}

/// Stops the second cluster however the test ends.
struct Second(std::path::PathBuf);

impl Drop for Second {
    fn drop(&mut self) {
        let _ = stop(&self.0);
    }
}

#[tokio::test]
async fn a_database_dumped_and_restored_into_another_cluster_delivers_every_event_exactly_once() {
    let db = TestDb::new().await;
    let project = TestProject::new(
        &db.project,
        MANIFEST,
        &[
            ("modules/customers/migrations/0001_customers.sql", "CREATE TABLE customers (id bigint PRIMARY KEY);\n"),
            (
                "modules/orders/migrations/0001_applied.sql",
                "CREATE TABLE applied (id bigserial PRIMARY KEY, event_id uuid NOT NULL, key text NOT NULL, seq bigint NOT NULL);\n",
            ),
        ],
    );
    const APPLIED: &str = "SELECT count(*) FROM orders.applied";

    // In the first cluster: some of 12 events delivered (batches of 4: the dispatcher stops
    // after the second batch or later, usually with the cursor inside the backlog, `hi` set),
    // then 9 more published and left undelivered.
    let app = start(&db.url, &project).await;
    publish(&app, 0, 12).await;
    let dispatcher = app.events().config(config()).subscribe::<CustomerRenamed, _>("orders", Record).unwrap();
    let dispatcher = dispatcher.start().await.unwrap();
    let started = Instant::now();
    while count(&db.url, APPLIED).await < 8 {
        assert!(started.elapsed() < Duration::from_secs(30), "the first cluster delivers nothing");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    dispatcher.shutdown().await;
    let before = count(&db.url, APPLIED).await;
    publish(&app, 12, 21).await;
    drop(app);
    assert!(before < 21, "some events are left undelivered before the dump");

    // The dump of the whole database.
    let binaries = find_binaries().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dump = scratch.path().join("moved.dump");
    run(&binaries.bindir.join("pg_dump"), &["-Fc", "-f", dump.to_str().unwrap(), "-d", db.url.expose()]);

    // The second cluster: roles are cluster-wide, so provisioning an empty database of the
    // project there creates them; then the dump is restored with its owners and grants, and the
    // library starts on it (provisioning again, which changes nothing of the restored events).
    let dir = scratch.path().join("pg");
    let cluster = ensure_running(&EmbeddedOptions { dir: dir.clone(), durable: false }).unwrap();
    let _second = Second(dir);
    let roles = cluster.url(&format!("{}_roles", db.database));
    moat_admin::embedded::ensure_database(&cluster.url("postgres"), &format!("{}_roles", db.database)).await.unwrap();
    drop(start(&roles, &project).await);
    moat_admin::embedded::ensure_database(&cluster.url("postgres"), &db.database).await.unwrap();
    let moved = cluster.url(&db.database);
    run(&binaries.bindir.join("pg_restore"), &["--exit-on-error", "-d", moved.expose(), dump.to_str().unwrap()]);
    let identity = "SELECT (pg_control_system()).system_identifier::text";
    assert_ne!(text(&db.url, identity).await, text(&moved, identity).await, "the two clusters are one");
    assert_eq!(count(&moved, APPLIED).await, before, "the events applied before the dump are in it");

    // In the second cluster: 9 more events; the status counts every undelivered one before the
    // dispatcher re-bases the cursor; then the dispatcher.
    let app = start(&moved, &project).await;
    publish(&app, 21, 30).await;
    let status = moat_admin::events::status(&moved, &project.manifest()).await.unwrap();
    let orders = status.subscriptions.iter().find(|s| s.subscriber == "orders").unwrap();
    assert_eq!(orders.lag_events, 30 - before, "lag of a cursor not yet re-based: {orders:?}");
    let dispatcher = app.events().config(config()).subscribe::<CustomerRenamed, _>("orders", Record).unwrap();
    let dispatcher = dispatcher.start().await.unwrap();
    wait_for(&moved, APPLIED, 30, Duration::from_secs(30)).await;
    // A few more rounds: nothing is delivered twice.
    tokio::time::sleep(Duration::from_millis(500)).await;
    publish(&app, 30, 33).await;
    wait_for(&moved, APPLIED, 33, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    dispatcher.shutdown().await;
    assert_eq!(count(&moved, APPLIED).await, 33);
    assert_eq!(count(&moved, "SELECT count(DISTINCT event_id) FROM orders.applied").await, 33);
    let out_of_order = "SELECT count(*) FROM (SELECT seq, lag(seq) OVER (PARTITION BY key ORDER BY id) AS prev FROM orders.applied) x \
                        WHERE seq <> coalesce(prev, 0) + 1";
    assert_eq!(count(&moved, out_of_order).await, 0, "per-key order broke across the move");
    let cursors =
        "SELECT count(*) FROM orders.moat_subscriptions WHERE cluster = (pg_control_system()).system_identifier::text";
    assert_eq!(count(&moved, cursors).await, 1, "the cursor is re-based onto the second cluster");
    let status = moat_admin::events::status(&moved, &project.manifest()).await.unwrap();
    let orders = status.subscriptions.iter().find(|s| s.subscriber == "orders").unwrap();
    assert_eq!((orders.lag_events, orders.held), (0, 0), "after the re-base: {orders:?}");
}

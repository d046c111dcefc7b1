//! A module moved to another cluster: the whole database is dumped with `pg_dump` while some
//! events are delivered and some are not, restored into a second PostgreSQL cluster, and the
//! dispatcher there delivers every event exactly once (the transaction ids and snapshots of the
//! first cluster mean nothing in the second one).
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{APPLIED, CustomerRenamed, OUT_OF_ORDER, Record, config, count, publish, text, wait_for};
use moat::{Config, Moat};
use moat_admin::DatabaseUrl;
use moat_admin::embedded::{EmbeddedOptions, ensure_running, find_binaries, stop};
use moat_testkit::{TestDb, TestProject};

async fn start(url: &DatabaseUrl, project: &TestProject) -> Moat {
    Moat::start(Config::new(project.manifest()).database_url(url.expose()).pool_size(4)).await.unwrap()
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
    let project = common::project(&db);

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
    let cluster = ensure_running(&EmbeddedOptions { dir: dir.clone(), durable: false, logical: true }).unwrap();
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
    assert_eq!(count(&moved, OUT_OF_ORDER).await, 0, "per-key order broke across the move");
    let cursors =
        "SELECT count(*) FROM orders.moat_subscriptions WHERE cluster = (pg_control_system()).system_identifier::text";
    assert_eq!(count(&moved, cursors).await, 1, "the cursor is re-based onto the second cluster");
    let status = moat_admin::events::status(&moved, &project.manifest()).await.unwrap();
    let orders = status.subscriptions.iter().find(|s| s.subscriber == "orders").unwrap();
    assert_eq!((orders.lag_events, orders.held), (0, 0), "after the re-base: {orders:?}");
}

//! A database provisioned by an older moat, whose own tables lack the columns added since
//! (the outbox's and progress's `cluster`, the cursors' handled and ignored types, `cluster` and
//! `moved_id`): `moat up` adds them without rewriting a table, and delivery goes on with every
//! event, old and new, applied exactly once and in key order.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{APPLIED, CustomerRenamed, OUT_OF_ORDER, Record, config, count, publish, wait_for};
use moat::{Config, Moat};
use moat_testkit::TestDb;

const WAIT: Duration = Duration::from_secs(30);

/// The files of the outbox's partitions and its progress table (a rewrite gives a table a new one).
async fn outbox_files(admin: &mut sqlx::PgConnection) -> Vec<i64> {
    sqlx::query_scalar(
        "SELECT pg_relation_filenode(c.oid)::bigint FROM pg_class c WHERE c.relnamespace = 'customers'::regnamespace \
         AND c.relkind = 'r' AND c.relname LIKE 'moat_outbox_%' ORDER BY c.relname",
    )
    .fetch_all(admin)
    .await
    .unwrap()
}

#[tokio::test]
async fn up_adds_the_columns_an_older_moat_did_not_create_and_delivery_goes_on_exactly_once() {
    let db = TestDb::new().await;
    let project = common::project(&db);
    let app_config = || Config::new(project.manifest()).database_url(db.url.expose()).pool_size(4);

    // Delivered under the current layout: 6 events.
    let app = Moat::start(app_config()).await.unwrap();
    publish(&app, 0, 6).await;
    let dispatcher = app.events().config(config()).subscribe::<CustomerRenamed, _>("orders", Record).unwrap();
    let dispatcher = dispatcher.start().await.unwrap();
    wait_for(&db.url, APPLIED, 6, WAIT).await;
    dispatcher.shutdown().await;
    drop(app);

    // The layout of an older moat, with a row in every table, and 6 events it published and
    // never delivered.
    db.exec(
        "ALTER TABLE customers.moat_outbox DROP COLUMN cluster; DROP FUNCTION customers.moat_cluster(); \
         ALTER TABLE customers.moat_outbox_progress DROP COLUMN cluster; \
         ALTER TABLE orders.moat_subscriptions DROP COLUMN handled, DROP COLUMN ignored, DROP COLUMN cluster, DROP COLUMN moved_id",
    )
    .await;
    let old = Moat::connect(app_config()).await.unwrap();
    publish(&old, 6, 12).await;
    drop(old);

    let mut admin = db.connect().await;
    let plan = moat_admin::provision::compute_plan(&mut admin, &project.manifest()).await.unwrap().to_sql();
    let identity: String =
        sqlx::query_scalar("SELECT (pg_control_system()).system_identifier::text").fetch_one(&mut admin).await.unwrap();
    for statement in [
        "CREATE FUNCTION \"customers\".\"moat_cluster\"() RETURNS text LANGUAGE sql IMMUTABLE".to_owned(),
        format!("ALTER TABLE \"customers\".\"moat_outbox\" ADD COLUMN \"cluster\" text NOT NULL DEFAULT '{identity}'"),
        "ALTER TABLE \"customers\".\"moat_outbox\" ALTER COLUMN \"cluster\" SET DEFAULT \"customers\".\"moat_cluster\"()".to_owned(),
        "ALTER TABLE \"customers\".\"moat_outbox_progress\" ADD COLUMN \"cluster\" text".to_owned(),
        "ALTER TABLE \"orders\".\"moat_subscriptions\" ADD COLUMN \"handled\" text[] NOT NULL DEFAULT '{}'".to_owned(),
        "ALTER TABLE \"orders\".\"moat_subscriptions\" ADD COLUMN \"ignored\" text[] NOT NULL DEFAULT '{}'".to_owned(),
        "ALTER TABLE \"orders\".\"moat_subscriptions\" ADD COLUMN \"cluster\" text".to_owned(),
        "ALTER TABLE \"orders\".\"moat_subscriptions\" ADD COLUMN \"moved_id\" bigint NOT NULL DEFAULT 0".to_owned(),
    ] {
        assert!(plan.contains(&statement), "the plan lacks `{statement}`:\n{plan}");
    }
    let files_before = outbox_files(&mut admin).await;
    assert_eq!(files_before.len(), 5, "the 4 partitions of the outbox and its progress");

    // The current moat starts on it: up adds the columns, and nothing is rewritten.
    let app = Moat::start(app_config()).await.unwrap();
    let files_after = outbox_files(&mut admin).await;
    assert_eq!(files_before, files_after, "adding the columns rewrote a table");
    assert!(moat_admin::provision::compute_plan(&mut admin, &project.manifest()).await.unwrap().is_empty());
    let foreign = format!("SELECT count(*) FROM customers.moat_outbox WHERE cluster <> '{identity}'");
    assert_eq!(count(&db.url, &foreign).await, 0, "the rows of the older moat belong to this cluster");

    publish(&app, 12, 18).await;
    let dispatcher = app.events().config(config()).subscribe::<CustomerRenamed, _>("orders", Record).unwrap();
    let dispatcher = dispatcher.start().await.unwrap();
    wait_for(&db.url, APPLIED, 18, WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    dispatcher.shutdown().await;
    assert_eq!(count(&db.url, APPLIED).await, 18);
    assert_eq!(count(&db.url, "SELECT count(DISTINCT event_id) FROM orders.applied").await, 18);
    assert_eq!(count(&db.url, OUT_OF_ORDER).await, 0, "per-key order broke across the upgrade");
}

/// The layout of the moat before the cluster function: the outbox's `cluster` read the control
/// file for every row. `moat up` creates the function and makes it the default; events published
/// afterwards name this cluster.
#[tokio::test]
async fn up_gives_an_outbox_of_an_older_moat_the_cluster_function() {
    let db = TestDb::new().await;
    let project = common::project(&db);
    let app_config = || Config::new(project.manifest()).database_url(db.url.expose()).pool_size(4);
    drop(Moat::start(app_config()).await.unwrap());
    db.exec(
        "ALTER TABLE customers.moat_outbox ALTER COLUMN cluster SET DEFAULT ((pg_control_system()).system_identifier)::text; \
         DROP FUNCTION customers.moat_cluster()",
    )
    .await;
    let mut admin = db.connect().await;
    let plan = moat_admin::provision::compute_plan(&mut admin, &project.manifest()).await.unwrap().to_sql();
    assert!(plan.contains("CREATE FUNCTION \"customers\".\"moat_cluster\"()"), "{plan}");
    assert!(
        plan.contains("ALTER TABLE \"customers\".\"moat_outbox\" ALTER COLUMN \"cluster\" SET DEFAULT \"customers\".\"moat_cluster\"()"),
        "{plan}"
    );
    let app = Moat::start(app_config()).await.unwrap();
    assert!(moat_admin::provision::compute_plan(&mut admin, &project.manifest()).await.unwrap().is_empty());
    let default: String = sqlx::query_scalar(
        "SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum \
         WHERE d.adrelid = 'customers.moat_outbox'::regclass AND a.attname = 'cluster'",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert_eq!(default, "customers.moat_cluster()");
    publish(&app, 0, 3).await;
    let here =
        "SELECT count(*) FROM customers.moat_outbox WHERE cluster = (pg_control_system()).system_identifier::text";
    assert_eq!(count(&db.url, here).await, 3);
}

//! Logical replication of a module's tables between two databases of one cluster (the embedded
//! test cluster, which runs with `wal_level = logical`): what `moat extract --mode replicate`
//! builds on.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use moat_admin::replication::{
    capacity, check_capacity, current_lsn, drop_all, names, publish, subscribe, superuser_traps, tables_not_ready,
};
use moat_testkit::TestDb;
use sqlx::PgConnection;

async fn count(conn: &mut PgConnection, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned())).fetch_one(conn).await.unwrap()
}

async fn leftovers(source: &mut PgConnection, target: &mut PgConnection, name: &str) -> i64 {
    let like = format!("{name}%");
    let slots: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_replication_slots WHERE (slot_name LIKE $1 OR slot_name ~ '^pg_[0-9]+_sync_') AND database = current_database()")
        .bind(&like)
        .fetch_one(&mut *source)
        .await
        .unwrap();
    let publications: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_publication WHERE pubname LIKE $1")
        .bind(&like)
        .fetch_one(&mut *source)
        .await
        .unwrap();
    let subscriptions: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_subscription WHERE subname LIKE $1")
        .bind(&like)
        .fetch_one(&mut *target)
        .await
        .unwrap();
    slots + publications + subscriptions
}

#[tokio::test]
async fn a_subscription_in_the_same_cluster_copies_then_follows_and_leaves_nothing() {
    let db = TestDb::logical().await;
    let target_url = db.another("target").await;
    let mut source = db.connect().await;
    let mut target = moat_admin::connect(&target_url).await.unwrap();
    let capacity = capacity(&mut source).await.unwrap();
    check_capacity(&capacity).unwrap_or_else(|e| panic!("{capacity:?}: {e}"));
    let ddl = "CREATE SCHEMA m; CREATE TABLE m.t (id bigint PRIMARY KEY, v text NOT NULL); \
               CREATE TABLE m.marker (id int PRIMARY KEY, at timestamptz NOT NULL)";
    sqlx::raw_sql(ddl).execute(&mut source).await.unwrap();
    sqlx::raw_sql(ddl).execute(&mut target).await.unwrap();
    sqlx::raw_sql(
        "INSERT INTO m.t SELECT g, 'v' || g FROM generate_series(1, 1000) g; INSERT INTO m.marker VALUES (1, now())",
    )
    .execute(&mut source)
    .await
    .unwrap();

    let names = names(&db.project, "m");
    let tables = vec!["t".to_owned(), "marker".to_owned()];
    publish(&mut source, &names, "m", &tables).await.unwrap();
    // Idempotent: a rerun after a crash finds what exists.
    publish(&mut source, &names, "m", &tables).await.unwrap();
    subscribe(&mut target, &names, &db.url).await.unwrap();
    subscribe(&mut target, &names, &db.url).await.unwrap();

    let started = Instant::now();
    while !tables_not_ready(&mut target, &names).await.unwrap().is_empty() {
        assert!(started.elapsed() < Duration::from_secs(60), "the initial copy did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(count(&mut target, "SELECT count(*) FROM m.t").await, 1000);

    // Writes after the copy follow; a marker committed after them says when they all arrived.
    sqlx::raw_sql("INSERT INTO m.t SELECT g, 'w' FROM generate_series(1001, 1500) g; UPDATE m.t SET v = 'u' WHERE id <= 10; DELETE FROM m.t WHERE id = 11")
        .execute(&mut source)
        .await
        .unwrap();
    let lsn = current_lsn(&mut source).await.unwrap();
    // The cutover's test of catch-up: the slot confirmed the position after the writes.
    let started = Instant::now();
    loop {
        let confirmed: bool = sqlx::query_scalar(
            "SELECT coalesce(confirmed_flush_lsn >= $2::pg_lsn, false) FROM pg_replication_slots WHERE slot_name = $1",
        )
        .bind(&names.slot)
        .bind(&lsn)
        .fetch_one(&mut source)
        .await
        .unwrap();
        if confirmed && count(&mut target, "SELECT count(*) FROM m.t").await == 1499 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the subscription did not catch up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(count(&mut target, "SELECT count(*) FROM m.t").await, 1499);
    assert_eq!(count(&mut target, "SELECT count(*) FROM m.t WHERE v = 'u'").await, 10);

    drop_all(&mut source, &mut target, &names).await.unwrap();
    assert_eq!(leftovers(&mut source, &mut target, &names.slot).await, 0);
    // Nothing to drop is fine too.
    drop_all(&mut source, &mut target, &names).await.unwrap();
}

#[tokio::test]
async fn drop_all_cleans_up_after_any_partial_setup() {
    let db = TestDb::logical().await;
    let target_url = db.another("target").await;
    let mut source = db.connect().await;
    let mut target = moat_admin::connect(&target_url).await.unwrap();
    let ddl = "CREATE SCHEMA m; CREATE TABLE m.t (id bigint PRIMARY KEY)";
    sqlx::raw_sql(ddl).execute(&mut source).await.unwrap();
    sqlx::raw_sql(ddl).execute(&mut target).await.unwrap();
    let names = names(&db.project, "m");
    // A run killed after the publication and slot, before the subscription.
    publish(&mut source, &names, "m", &["t".to_owned()]).await.unwrap();
    assert_eq!(leftovers(&mut source, &mut target, &names.slot).await, 2);
    drop_all(&mut source, &mut target, &names).await.unwrap();
    assert_eq!(leftovers(&mut source, &mut target, &names.slot).await, 0);
}

#[tokio::test]
async fn functions_a_superuser_would_run_while_applying_rows_are_found() {
    let db = TestDb::logical().await;
    let mut source = db.connect().await;
    sqlx::raw_sql(
        "CREATE SCHEMA m; \
         CREATE FUNCTION m.ok(x int) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT x > 0'; \
         CREATE FUNCTION m.def() RETURNS int LANGUAGE sql AS 'SELECT 1'; \
         CREATE DOMAIN m.positive AS int CHECK (m.ok(VALUE)); \
         CREATE TABLE m.clean (id bigint PRIMARY KEY, n int CHECK (n > 0), at timestamptz DEFAULT now()); \
         CREATE TABLE m.checked (id bigint PRIMARY KEY, n int CHECK (m.ok(n))); \
         CREATE TABLE m.defaulted (id bigint PRIMARY KEY, n int DEFAULT m.def()); \
         CREATE TABLE m.indexed (id bigint PRIMARY KEY, n int); CREATE INDEX indexed_n ON m.indexed ((m.ok(n))); \
         CREATE TABLE m.domained (id bigint PRIMARY KEY, n m.positive); \
         CREATE FUNCTION m.diff(a float8, b float8) RETURNS float8 LANGUAGE sql IMMUTABLE AS 'SELECT a - b'; \
         CREATE TYPE m.span AS RANGE (subtype = float8, subtype_diff = m.diff); \
         CREATE TABLE m.ranged (id bigint PRIMARY KEY, s m.span); CREATE INDEX ranged_s ON m.ranged USING gist (s); \
         CREATE FUNCTION m.part(n int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT n % 2'; \
         CREATE TABLE m.parted (id bigint, n int) PARTITION BY LIST (m.part(n)); \
         CREATE TABLE m.parted_0 PARTITION OF m.parted FOR VALUES IN (0); \
         CREATE TABLE m.plain_range (id bigint PRIMARY KEY, s int4range)",
    )
    .execute(&mut source)
    .await
    .unwrap();
    let traps = superuser_traps(&mut source, "m", "nobody").await.unwrap();
    let tables: Vec<&str> = traps.iter().map(|t| t.table.as_str()).collect();
    assert!(!tables.contains(&"clean"), "{traps:?}");
    assert!(!tables.contains(&"plain_range"), "{traps:?}");
    for table in ["checked", "defaulted", "indexed", "domained", "ranged", "parted"] {
        assert!(tables.contains(&table), "{table} not found in {traps:?}");
    }
    assert!(traps.iter().any(|t| t.function == "m.ok(integer)"), "{traps:?}");
}

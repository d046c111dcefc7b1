//! `moat extract --mode replicate`: the module's tables follow by logical replication while the
//! module keeps writing; its writes stop only for the cutover. On the tests' embedded cluster
//! (`wal_level = logical`); the source and the target are two databases of it, which is also how
//! the embedded default serves `[databases]`.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use moat_admin::extract::{ExtractOptions, Mode, Outcome, Step, extract};
use moat_core::names::ModuleName;
use moat_testkit::{TestDb, TestProject};
use sqlx::{Connection, PgConnection};

const MANIFEST: &str = r#"
[project]
name = "{project}"

[modules.patients]

[modules.billing]
depends_on = ["patients"]

[modules.reports]
depends_on = ["billing"]
"#;

const BILLING: &str = "\
CREATE TABLE accounts (id serial PRIMARY KEY, name text NOT NULL, balance numeric NOT NULL DEFAULT 0);
CREATE TABLE charges (account_id int NOT NULL REFERENCES accounts (id), line int NOT NULL,
  amount numeric NOT NULL CHECK (amount > 0), PRIMARY KEY (account_id, line));
CREATE TABLE notes (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, body text);
CREATE FUNCTION add_to_balance() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  UPDATE accounts SET balance = balance + NEW.amount WHERE id = NEW.account_id;
  RETURN NEW;
END $$;
CREATE TRIGGER charges_balance AFTER INSERT ON charges FOR EACH ROW EXECUTE FUNCTION add_to_balance();
ALTER TABLE charges ENABLE ALWAYS TRIGGER charges_balance;
";

fn project(db: &TestDb, billing: &str) -> TestProject {
    TestProject::new(
        &db.project,
        MANIFEST,
        &[
            ("modules/patients/migrations/0001_patients.sql", "CREATE TABLE patients (id int PRIMARY KEY);\n"),
            ("modules/billing/migrations/0001_billing.sql", billing),
            ("modules/reports/migrations/0001_reports.sql", "CREATE TABLE totals (id int PRIMARY KEY);\n"),
        ],
    )
}

fn billing() -> ModuleName {
    ModuleName::parse("billing").unwrap()
}

fn replicate() -> ExtractOptions {
    ExtractOptions { mode: Some(Mode::Replicate), ..ExtractOptions::default() }
}

async fn scalar(conn: &mut PgConnection, sql: &str) -> String {
    let value: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned())).fetch_one(conn).await.unwrap();
    value.unwrap_or_default()
}

/// Publications, slots and subscriptions of moves, on both sides.
async fn replication_left(source: &mut PgConnection, target: &mut PgConnection) -> String {
    let a = scalar(source, "SELECT count(*)::text FROM pg_replication_slots WHERE database = current_database()").await;
    let b = scalar(source, "SELECT count(*)::text FROM pg_publication").await;
    let c = scalar(target, "SELECT count(*)::text FROM pg_subscription WHERE subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())").await;
    format!("slots {a}, publications {b}, subscriptions {c}")
}

#[tokio::test]
async fn replicate_moves_a_module_while_it_writes_and_stops_its_writes_only_for_the_cutover() {
    let db = TestDb::logical().await;
    let target = db.another("target").await;
    let project = project(&db, BILLING);
    let manifest = project.manifest();
    moat_admin::up::up(&db.url, &manifest, &|_| {}).await.unwrap();
    let mut app = db.connect_as(&db.role("billing")).await;
    sqlx::raw_sql(
        "INSERT INTO accounts (name) SELECT 'a' || i FROM generate_series(1, 50) i; \
         INSERT INTO charges SELECT 1 + i % 50, i, i FROM generate_series(1, 2000) i; \
         INSERT INTO moat_outbox (event_id, event_type, event_key, payload) \
           SELECT gen_random_uuid(), 'Charged', 'k' || i, '{}' FROM generate_series(1, 5) i",
    )
    .execute(&mut app)
    .await
    .unwrap();
    app.close().await.unwrap();

    // The module keeps writing through the move: each committed note must arrive.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let login = db.url.with_login(&db.role("billing"), None);
        tokio::spawn(async move {
            let mut committed: Vec<i64> = Vec::new();
            let mut refused = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut conn) = moat_admin::connect_as(&login).await else {
                    refused += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                while !stop.load(Ordering::Relaxed) {
                    match sqlx::query_scalar::<_, i64>("INSERT INTO notes (body) VALUES ('w') RETURNING id")
                        .fetch_one(&mut conn)
                        .await
                    {
                        Ok(id) => committed.push(id),
                        Err(_) => {
                            refused += 1;
                            break;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            (committed, refused)
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;

    let steps = std::sync::Mutex::new(Vec::new());
    let report = extract(&manifest, &billing(), &db.url, &target, Some("billing_db"), &replicate(), &|event| {
        if let moat_admin::extract::ExtractEvent::Step { step } = event {
            steps.lock().unwrap().push(step);
        }
    })
    .await
    .unwrap_or_else(|e| panic!("extract failed: {e}"));
    stop.store(true, Ordering::Relaxed);
    let (committed, refused) = writer.await.unwrap();
    assert_eq!(report.outcome, Outcome::Moved);
    assert_eq!(
        *steps.lock().unwrap(),
        [Step::Preflight, Step::Prepare, Step::Catchup, Step::Cutover, Step::Verify, Step::Switched]
    );
    assert!(report.verification.as_ref().unwrap().mismatches.is_empty());
    let unavailable = report.write_unavailable_ms.unwrap();
    eprintln!(
        "writes committed during the move: {}, refused: {refused}, unavailable: {unavailable} ms",
        committed.len()
    );
    assert!(!committed.is_empty());

    // Every committed write arrived, and nothing else.
    let mut source = db.connect().await;
    let mut moved = moat_admin::connect(&target).await.unwrap();
    let ids: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM billing.notes ORDER BY id").fetch_all(&mut moved).await.unwrap();
    for id in &committed {
        assert!(ids.contains(id), "note {id} was committed in the source but is not in the target");
    }
    for sql in [
        "SELECT string_agg(a::text, ';' ORDER BY id) FROM billing.accounts a",
        "SELECT count(*)::text || ' ' || sum(amount)::text FROM billing.charges",
        "SELECT string_agg(id::text, ',' ORDER BY id) FROM billing.notes",
        "SELECT string_agg(event_id::text, ',' ORDER BY id) FROM billing.moat_outbox",
        "SELECT string_agg(version::text, ',' ORDER BY version) FROM billing.moat_migrations",
    ] {
        assert_eq!(scalar(&mut moved, sql).await, scalar(&mut source, sql).await, "{sql}");
    }
    // The trigger arrived after replication and works (ALWAYS: the apply worker never ran it).
    let mut there = moat_admin::connect_as(&target.with_login(&db.role("billing"), None)).await.unwrap();
    let next: i64 = sqlx::query_scalar("INSERT INTO notes (body) VALUES ('after') RETURNING id")
        .fetch_one(&mut there)
        .await
        .unwrap();
    assert!(next > *committed.iter().max().unwrap());
    sqlx::raw_sql("INSERT INTO charges VALUES (1, 100000, 7)").execute(&mut there).await.unwrap();
    let balance = scalar(&mut there, "SELECT balance::text FROM accounts WHERE id = 1").await;
    let expected = scalar(&mut source, "SELECT (balance + 7)::text FROM billing.accounts WHERE id = 1").await;
    assert_eq!(balance, expected);
    there.close().await.unwrap();
    // Nothing of the replication is left.
    assert_eq!(replication_left(&mut source, &mut moved).await, "slots 0, publications 0, subscriptions 0");
    source.close().await.unwrap();
    moved.close().await.unwrap();
}

#[tokio::test]
async fn replicate_refuses_a_module_whose_constraints_run_its_functions_and_changes_nothing() {
    let db = TestDb::logical().await;
    let target = db.another("target").await;
    let billing_sql = "CREATE FUNCTION positive(n numeric) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT n > 0';\n\
                       CREATE TABLE charges (id int PRIMARY KEY, amount numeric CHECK (positive(amount)));\n";
    let project = project(&db, billing_sql);
    let manifest = project.manifest();
    moat_admin::up::up(&db.url, &manifest, &|_| {}).await.unwrap();
    let error = extract(&manifest, &billing(), &db.url, &target, Some("billing_db"), &replicate(), &|_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("billing.charges") && error.contains("positive(numeric)"), "{error}");
    assert!(error.contains("--mode copy"), "{error}");
    let mut source = db.connect().await;
    let mut moved = moat_admin::connect(&target).await.unwrap();
    assert_eq!(scalar(&mut source, "SELECT to_regclass('billing.moat_move')::text").await, "");
    assert_eq!(scalar(&mut moved, "SELECT count(*)::text FROM pg_namespace WHERE nspname = 'billing'").await, "0");
    assert_eq!(replication_left(&mut source, &mut moved).await, "slots 0, publications 0, subscriptions 0");
    // Copy mode moves it: every row is written as the owner.
    let copy = ExtractOptions { mode: Some(Mode::Copy), ..ExtractOptions::default() };
    let report = extract(&manifest, &billing(), &db.url, &target, Some("billing_db"), &copy, &|_| {}).await.unwrap();
    assert_eq!(report.outcome, Outcome::Moved);
}

/// Stops a private cluster when the test ends.
struct Cluster(std::path::PathBuf);

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = moat_admin::embedded::stop(&self.0);
    }
}

#[tokio::test]
async fn replicate_on_a_server_without_logical_replication_is_refused_suggesting_copy_and_changes_nothing() {
    use std::os::unix::fs::PermissionsExt;
    // A server of its own with `wal_level = replica` (the default of PostgreSQL).
    let scratch = tempfile::tempdir().unwrap();
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = scratch.path().join("pg");
    let options = moat_admin::embedded::EmbeddedOptions { dir: dir.clone(), durable: false, logical: false };
    let cluster =
        tokio::task::spawn_blocking(move || moat_admin::embedded::ensure_running(&options)).await.unwrap().unwrap();
    let _cluster = Cluster(dir);
    let source = cluster.url("source");
    let target = cluster.url("target");
    moat_admin::embedded::ensure_database(&cluster.url("postgres"), "source").await.unwrap();
    moat_admin::embedded::ensure_database(&cluster.url("postgres"), "target").await.unwrap();
    let project = TestProject::new(
        "walreplica",
        MANIFEST,
        &[
            ("modules/patients/migrations/0001_patients.sql", "CREATE TABLE patients (id int PRIMARY KEY);\n"),
            ("modules/billing/migrations/0001_billing.sql", BILLING),
            ("modules/reports/migrations/0001_reports.sql", "CREATE TABLE totals (id int PRIMARY KEY);\n"),
        ],
    );
    let manifest = project.manifest();
    moat_admin::up::up(&source, &manifest, &|_| {}).await.unwrap();
    for options in [replicate(), ExtractOptions::default()] {
        let error = extract(&manifest, &billing(), &source, &target, Some("billing_db"), &options, &|_| {})
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("wal_level = replica"), "{error}");
        assert!(error.contains("--mode copy"), "{error}");
    }
    let mut src = moat_admin::connect(&source).await.unwrap();
    let mut dst = moat_admin::connect(&target).await.unwrap();
    assert_eq!(scalar(&mut src, "SELECT to_regclass('billing.moat_move')::text").await, "");
    assert_eq!(scalar(&mut dst, "SELECT count(*)::text FROM pg_namespace WHERE nspname = 'billing'").await, "0");
    assert_eq!(replication_left(&mut src, &mut dst).await, "slots 0, publications 0, subscriptions 0");
    src.close().await.unwrap();
    dst.close().await.unwrap();
}

#[tokio::test]
async fn a_module_whose_move_is_unfinished_takes_no_migration() {
    let db = TestDb::new().await;
    let project = project(&db, BILLING);
    moat_admin::up::up(&db.url, &project.manifest(), &|_| {}).await.unwrap();
    // A move a killed run left at the catch-up (its journal, as moat writes it).
    let mut admin = db.connect().await;
    for sql in moat_admin::internal::move_ddl("billing", &db.role("moat")) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut admin).await.unwrap();
    }
    sqlx::raw_sql("INSERT INTO billing.moat_move (target, mode, step) VALUES ('billing_db', 'replicate', 'catchup')")
        .execute(&mut admin)
        .await
        .unwrap();
    project.write("modules/billing/migrations/0002_more.sql", "CREATE TABLE more (id int PRIMARY KEY);\n");
    let manifest = project.manifest();
    let mut conn = db.connect().await;
    let error = moat_admin::migrate::migrate(&mut conn, &db.url, &manifest, Some("billing"), &|_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("is being moved") && error.contains("--abort"), "{error}");
    assert_eq!(scalar(&mut admin, "SELECT to_regclass('billing.more')::text").await, "");
    // Once the move is gone, the migration runs.
    sqlx::raw_sql("DELETE FROM billing.moat_move").execute(&mut admin).await.unwrap();
    moat_admin::migrate::migrate(&mut conn, &db.url, &manifest, Some("billing"), &|_| {}).await.unwrap();
    assert_eq!(scalar(&mut admin, "SELECT to_regclass('billing.more')::text").await, "billing.more");
}

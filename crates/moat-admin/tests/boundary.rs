#![allow(clippy::unwrap_used)]
//! The boundary holds: what each role can and cannot do after `moat up` (issue 2's acceptance).

mod common;

use common::{clinic, up_quietly};
use moat_testkit::{TestDb, sqlstate_of};

const DENIED: Option<&str> = Some("42501");

async fn denied(conn: &mut sqlx::PgConnection, sql: &str) {
    assert_eq!(sqlstate_of(conn, sql).await.as_deref(), DENIED, "expected permission denied (42501) for: {sql}");
}

async fn allowed(conn: &mut sqlx::PgConnection, sql: &str) {
    assert_eq!(sqlstate_of(conn, sql).await, None, "expected success for: {sql}");
}

#[tokio::test]
async fn a_runtime_role_cannot_touch_another_module() {
    let db = TestDb::new().await;
    let project = clinic(&db);
    up_quietly(&db, &project.manifest()).await;
    let mut admin = db.connect().await;
    sqlx::raw_sql("INSERT INTO patients.patients VALUES ('00000000-0000-0000-0000-000000000001', 'Ada', 'w1')")
        .execute(&mut admin)
        .await
        .unwrap();

    let mut billing = db.connect_as(&db.role("billing")).await;
    denied(&mut billing, "SELECT * FROM patients.patients").await;
    denied(&mut billing, "INSERT INTO patients.patients VALUES (gen_random_uuid(), 'Eve', NULL)").await;
    denied(&mut billing, "UPDATE patients.patients SET name = 'Eve'").await;
    denied(&mut billing, "DELETE FROM patients.patients").await;
    denied(&mut billing, "COPY patients.patients TO STDOUT").await;
    denied(&mut billing, "COPY patients.patients FROM STDIN").await;
    denied(&mut billing, "COPY (SELECT * FROM patients.patients) TO STDOUT").await;
    denied(&mut billing, "SELECT * FROM prescriptions.prescriptions").await;
    denied(&mut billing, "SELECT * FROM patients.moat_migrations").await;
    // A contract view is not a module's to read.
    denied(&mut billing, "SELECT * FROM contracts.census").await;
}

#[tokio::test]
async fn a_runtime_role_can_create_nothing_and_become_nobody() {
    let db = TestDb::new().await;
    let project = clinic(&db);
    up_quietly(&db, &project.manifest()).await;
    let mut billing = db.connect_as(&db.role("billing")).await;
    for sql in [
        "CREATE TABLE billing.sneaky (id int)",
        "CREATE TABLE sneaky (id int)",
        "CREATE TABLE public.sneaky (id int)",
        "CREATE VIEW billing.v AS SELECT 1",
        "CREATE FUNCTION billing.f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "CREATE SCHEMA sneaky",
        "CREATE TABLE patients.sneaky (id int)",
        "CREATE TEMPORARY TABLE scratch (id int)",
        "CREATE INDEX ON billing.charges (amount)",
        "ALTER TABLE billing.charges ADD COLUMN x int",
        "DROP TABLE billing.charges",
        "TRUNCATE billing.charges",
    ] {
        denied(&mut billing, sql).await;
    }
    for role in [
        db.role("billing_owner"),
        db.role("patients"),
        db.role("patients_owner"),
        db.role("contracts"),
        db.role("contract_census"),
        db.role("moat"),
        db.role("relay"),
    ] {
        denied(&mut billing, &format!("SET ROLE {}", moat_core::quote::ident(&role))).await;
    }

    // GRANT on its own table grants nothing: it holds no grant option.
    allowed(
        &mut billing,
        &format!("GRANT SELECT ON billing.charges TO {}", moat_core::quote::ident(&db.role("patients"))),
    )
    .await;
    let mut patients = db.connect_as(&db.role("patients")).await;
    denied(&mut patients, "SELECT * FROM billing.charges").await;
}

#[tokio::test]
async fn a_runtime_role_uses_its_own_tables_including_later_ones() {
    let db = TestDb::new().await;
    let project = clinic(&db);
    up_quietly(&db, &project.manifest()).await;
    let mut billing = db.connect_as(&db.role("billing")).await;
    // search_path is the module's schema, and serial columns work (USAGE on the sequence).
    allowed(&mut billing, "INSERT INTO charges (amount) VALUES (12.5)").await;
    allowed(&mut billing, "UPDATE charges SET amount = amount + 1").await;
    allowed(&mut billing, "SELECT * FROM billing.charges").await;
    {
        use futures::TryStreamExt;
        let stream = billing.copy_out_raw("COPY charges TO STDOUT").await.expect("COPY of its own table");
        let chunks: Vec<_> = stream.try_collect().await.expect("COPY of its own table");
        assert_eq!(chunks.len(), 1);
    }
    allowed(&mut billing, "DELETE FROM charges").await;

    project.write(
        "modules/billing/migrations/0002_invoices.sql",
        "CREATE TABLE invoices (id bigserial PRIMARY KEY, total numeric);\n",
    );
    up_quietly(&db, &project.manifest()).await;
    let mut billing = db.connect_as(&db.role("billing")).await;
    allowed(&mut billing, "INSERT INTO invoices (total) VALUES (1)").await;
    allowed(&mut billing, "SELECT * FROM invoices").await;
}

#[tokio::test]
async fn consumers_read_exactly_their_contract_views() {
    let db = TestDb::new().await;
    let project = clinic(&db);
    up_quietly(&db, &project.manifest()).await;
    db.exec("INSERT INTO patients.patients VALUES (gen_random_uuid(), 'Ada', 'w1')").await;

    let mut reporting = db.connect_as(&db.role("reporting")).await;
    let rows: Vec<(Option<String>, i64)> =
        sqlx::query_as("SELECT ward, prescriptions FROM census").fetch_all(&mut reporting).await.unwrap();
    assert_eq!(rows, vec![(Some("w1".to_owned()), 0)]);
    for sql in [
        "SELECT * FROM patients.patients",
        "SELECT * FROM prescriptions.prescriptions",
        "SELECT * FROM billing.charges",
        "CREATE TABLE contracts.x (id int)",
        "SELECT * FROM contracts.moat_contracts",
    ] {
        denied(&mut reporting, sql).await;
    }

    let writable: bool = sqlx::query_scalar(
        "SELECT has_table_privilege('contracts.census', 'INSERT') OR has_table_privilege('contracts.census', 'UPDATE') OR has_table_privilege('contracts.census', 'DELETE')",
    )
    .fetch_one(&mut reporting)
    .await
    .unwrap();
    assert!(!writable, "a consumer may only read its contract views");

    let mut support = db.connect_as(&db.role("support")).await;
    denied(&mut support, "SELECT * FROM contracts.census").await;
    denied(&mut support, "SELECT * FROM patients.patients").await;
}

#[tokio::test]
async fn each_contract_owner_reads_exactly_its_declared_relations() {
    let db = TestDb::new().await;
    let project = clinic(&db);
    up_quietly(&db, &project.manifest()).await;
    // The contract's own owner (LOGIN, no password) reads exactly the contract's `reads`.
    let mut census = db.connect_as(&db.role("contract_census")).await;
    allowed(&mut census, "SELECT * FROM patients.patients").await;
    allowed(&mut census, "SELECT * FROM prescriptions.prescriptions").await;
    denied(&mut census, "SELECT * FROM patients.admissions").await;
    denied(&mut census, "SELECT * FROM billing.charges").await;
    denied(&mut census, "INSERT INTO patients.patients VALUES (gen_random_uuid(), 'x', NULL)").await;
    denied(&mut census, "CREATE TABLE public.x (id int)").await;
    denied(&mut census, "SELECT * FROM contracts.moat_contracts").await;
    denied(&mut census, &format!("SET ROLE {}", moat_core::quote::ident(&db.role("contracts")))).await;
    // The schema owner `<project>_contracts` reads no module table.
    let mut admin = db.connect().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SET ROLE {}", moat_core::quote::ident(&db.role("contracts")))))
        .execute(&mut admin)
        .await
        .unwrap();
    denied(&mut admin, "SELECT * FROM patients.patients").await;
    denied(&mut admin, "SELECT * FROM prescriptions.prescriptions").await;
}

#[tokio::test]
async fn roles_have_no_dangerous_attributes_and_public_has_nothing() {
    let db = TestDb::new().await;
    let project = clinic(&db);
    up_quietly(&db, &project.manifest()).await;
    let mut admin = db.connect().await;
    let roles: Vec<(String, bool, bool, bool, bool, bool, bool)> = sqlx::query_as(
        "SELECT rolname::text, rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls FROM pg_roles WHERE starts_with(rolname, $1) ORDER BY 1",
    )
    .bind(format!("{}_", db.project))
    .fetch_all(&mut admin)
    .await
    .unwrap();
    let names: Vec<&str> = roles.iter().map(|r| r.0.strip_prefix(&format!("{}_", db.project)).unwrap()).collect();
    assert_eq!(
        names,
        [
            "billing",
            "billing_migrator",
            "billing_owner",
            "contract_census",
            "contracts",
            "moat",
            "patients",
            "patients_migrator",
            "patients_owner",
            "prescriptions",
            "prescriptions_migrator",
            "prescriptions_owner",
            "relay",
            "reporting",
            "support"
        ]
    );
    for (name, login, superuser, createdb, createrole, replication, bypassrls) in &roles {
        let nologin = name.ends_with("_owner") || name.ends_with("_contracts") || name.ends_with("_moat");
        assert_eq!(*login, !nologin, "{name} login");
        assert!(!superuser && !createdb && !createrole && !replication && !bypassrls, "{name} has an attribute");
    }
    let public_db: bool = sqlx::query_scalar("SELECT has_database_privilege('public', current_database(), 'CONNECT') OR has_database_privilege('public', current_database(), 'TEMPORARY')")
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert!(!public_db, "PUBLIC keeps rights on the database");
    let public_schema: bool = sqlx::query_scalar("SELECT has_schema_privilege('public', 'public', 'USAGE') OR has_schema_privilege('public', 'public', 'CREATE')")
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert!(!public_schema, "PUBLIC keeps rights on schema public");
}

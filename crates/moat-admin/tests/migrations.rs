#![allow(clippy::unwrap_used)]
//! Per-module migrations: located errors, atomicity, edits refused, idempotent `up`.

mod common;

use common::{clinic, up_quietly};
use moat_admin::AdminError;
use moat_admin::migrate::{MigrationState, status};
use moat_admin::provision::compute_plan;
use moat_admin::up::up;
use moat_testkit::TestDb;

async fn up_error(db: &TestDb, project: &moat_testkit::TestProject) -> String {
    match up(&db.url, &project.manifest(), &|_| {}).await {
        Ok(_) => panic!("moat up should have failed"),
        Err(e) => e.to_string(),
    }
}

async fn exists(db: &TestDb, relation: &str) -> bool {
    let mut conn = db.connect().await;
    sqlx::query_scalar::<_, bool>("SELECT to_regclass($1) IS NOT NULL")
        .bind(relation)
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn up_twice_changes_nothing_the_second_time() {
    let db = TestDb::new().await;
    let project = clinic(&db);
    let first = up_quietly(&db, &project.manifest()).await;
    assert!(first.changed());
    assert_eq!(first.migrate.applied.len(), 4);
    let second = up_quietly(&db, &project.manifest()).await;
    assert!(!second.changed(), "second run changed: {:?}", second.plans().map(|p| p.to_sql()).collect::<Vec<_>>());
    assert!(second.migrate.applied.is_empty());
    let mut conn = db.connect().await;
    let plan = compute_plan(&mut conn, &project.manifest()).await.unwrap();
    assert_eq!(plan.to_sql(), "");
}

#[tokio::test]
async fn a_foreign_key_into_another_module_fails_in_the_database() {
    let db = TestDb::new().await;
    let project = clinic(&db);
    up_quietly(&db, &project.manifest()).await;
    project.write(
        "modules/billing/migrations/0002_charge_patient.sql",
        "-- bill the patient directly\nALTER TABLE charges\n  ADD COLUMN patient_id uuid REFERENCES patients.patients (id);\n",
    );
    let error = up_error(&db, &project).await;
    assert!(error.contains("modules/billing/migrations/0002_charge_patient.sql:3:41:"), "{error}");
    assert!(error.contains("permission denied for schema patients"), "{error}");
    assert!(error.contains("SQLSTATE 42501"), "{error}");
    assert!(error.contains("no foreign key"), "{error}");
    let mut conn = db.connect().await;
    let columns: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'billing' AND column_name = 'patient_id'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(columns, 0);
}

#[tokio::test]
async fn a_migration_failing_on_its_third_statement_leaves_no_trace() {
    let db = TestDb::new().await;
    let project = clinic(&db);
    project.write(
        "modules/billing/migrations/0002_three_steps.sql",
        "CREATE TABLE first_step (id int);\n\nINSERT INTO first_step VALUES (1);\n\n\nSELECT id / 0 FROM first_step;\n",
    );
    project.write("modules/billing/migrations/0003_later.sql", "CREATE TABLE later (id int);\n");
    let error = up_error(&db, &project).await;
    assert!(error.contains("modules/billing/migrations/0002_three_steps.sql:6:"), "{error}");
    assert!(error.contains("division by zero"), "{error}");
    assert!(error.contains("SQLSTATE 22012"), "{error}");
    assert!(!exists(&db, "billing.first_step").await);
    assert!(!exists(&db, "billing.later").await, "later migrations of the module must not run");
    // Other modules were migrated.
    assert!(exists(&db, "patients.patients").await);
    let mut conn = db.connect().await;
    let statuses = status(&mut conn, &db.url, &project.manifest()).await.unwrap();
    let billing = statuses.iter().find(|s| s.module == "billing").unwrap();
    assert_eq!(billing.count(MigrationState::Applied), 1);
    assert_eq!(billing.count(MigrationState::Pending), 2);
}

#[tokio::test]
async fn an_edited_migration_is_refused_and_shown_as_modified() {
    let db = TestDb::new().await;
    let project = clinic(&db);
    up_quietly(&db, &project.manifest()).await;
    project.write(
        "modules/billing/migrations/0001_create_charges.sql",
        "CREATE TABLE charges (id serial PRIMARY KEY, amount numeric);\n",
    );
    project.write("modules/billing/migrations/0002_more.sql", "CREATE TABLE more (id int);\n");
    let error = up_error(&db, &project).await;
    assert!(
        error.contains(
            "module `billing`: applied migration changed on disk: `modules/billing/migrations/0001_create_charges.sql`"
        ),
        "{error}"
    );
    assert!(!exists(&db, "billing.more").await);
    let mut conn = db.connect().await;
    let statuses = status(&mut conn, &db.url, &project.manifest()).await.unwrap();
    let billing = statuses.iter().find(|s| s.module == "billing").unwrap();
    assert_eq!(billing.migrations[0].state, MigrationState::Modified);
    assert_eq!(billing.migrations[1].state, MigrationState::Pending);
    // Line endings do not count as an edit.
    project.write(
        "modules/billing/migrations/0001_create_charges.sql",
        "CREATE TABLE charges (id serial PRIMARY KEY, amount numeric NOT NULL);\r\n",
    );
    let statuses = status(&mut conn, &db.url, &project.manifest()).await.unwrap();
    assert_eq!(statuses.iter().find(|s| s.module == "billing").unwrap().migrations[0].state, MigrationState::Applied);
}

#[tokio::test]
async fn a_deleted_migration_is_refused_and_shown_as_missing() {
    let db = TestDb::new().await;
    let project = clinic(&db);
    up_quietly(&db, &project.manifest()).await;
    std::fs::remove_file(project.dir.path().join("modules/patients/migrations/0002_admissions.sql")).unwrap();
    project.write("modules/patients/migrations/0003_more.sql", "CREATE TABLE more (id int);\n");
    let error = up_error(&db, &project).await;
    assert!(error.contains("module `patients`: applied migration is no longer on disk: `0002_admissions`"), "{error}");
    let mut conn = db.connect().await;
    let statuses = status(&mut conn, &db.url, &project.manifest()).await.unwrap();
    let states: Vec<MigrationState> =
        statuses.iter().find(|s| s.module == "patients").unwrap().migrations.iter().map(|m| m.state).collect();
    assert_eq!(states, [MigrationState::Applied, MigrationState::Missing, MigrationState::Pending]);
}

#[tokio::test]
async fn no_transaction_migrations_run_statement_by_statement() {
    let db = TestDb::new().await;
    let project = clinic(&db);
    project.write(
        "modules/billing/migrations/0002_index.sql",
        "-- moat:no-transaction\nCREATE INDEX CONCURRENTLY IF NOT EXISTS charges_amount ON charges (amount);\nCREATE INDEX CONCURRENTLY IF NOT EXISTS charges_id ON charges (id);\n",
    );
    up_quietly(&db, &project.manifest()).await;
    assert!(exists(&db, "billing.charges_amount").await);
    let mut conn = db.connect().await;
    let owner: String = sqlx::query_scalar(
        "SELECT pg_get_userbyid(relowner)::text FROM pg_class WHERE oid = 'billing.charges_amount'::regclass",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(owner, db.role("billing_owner"));
}

#[tokio::test]
async fn a_migration_may_not_end_its_transaction_or_change_its_role() {
    let db = TestDb::new().await;
    let project = clinic(&db);
    project.write(
        "modules/billing/migrations/0002_commit.sql",
        "CREATE TABLE a (id int);\nCOMMIT;\nCREATE TABLE b (id int);\n",
    );
    // Refused before anything of it runs, located at the statement.
    let error = up_error(&db, &project).await;
    assert!(error.contains("modules/billing/migrations/0002_commit.sql:2:1: `COMMIT` is not allowed"), "{error}");
    assert!(error.contains("help: moat runs each migration in one transaction"), "{error}");
    assert!(!exists(&db, "billing.a").await);
    assert!(!exists(&db, "billing.b").await);
    std::fs::remove_file(project.dir.path().join("modules/billing/migrations/0002_commit.sql")).unwrap();

    project
        .write("modules/billing/migrations/0002_escape.sql", "RESET ROLE;\nCREATE TABLE patients.stolen (id int);\n");
    let error = up_error(&db, &project).await;
    assert!(error.contains("0002_escape.sql:1:1: `RESET ROLE` is not allowed"), "{error}");
    assert!(!exists(&db, "patients.stolen").await);
    std::fs::remove_file(project.dir.path().join("modules/billing/migrations/0002_escape.sql")).unwrap();

    // The same, hidden from the keywords: the database refuses it, and moat's check rolls back.
    project.write(
        "modules/billing/migrations/0002_escape.sql",
        "SELECT set_config('ro' || 'le', 'none', true);\nCREATE TABLE patients.stolen (id int);\n",
    );
    let error = up_error(&db, &project).await;
    assert!(error.contains("permission denied for schema patients"), "{error}");
    assert!(!exists(&db, "patients.stolen").await);
}

#[tokio::test]
async fn migration_files_are_checked_before_anything_runs() {
    let db = TestDb::new().await;
    let project = clinic(&db);
    project.write("modules/billing/migrations/0001_duplicate.sql", "SELECT 1;\n");
    let error = up_error(&db, &project).await;
    assert!(error.contains("share the number 1"), "{error}");
    std::fs::remove_file(project.dir.path().join("modules/billing/migrations/0001_duplicate.sql")).unwrap();
    project.write("modules/billing/migrations/add_things.sql", "SELECT 1;\n");
    let error = up_error(&db, &project).await;
    assert!(
        error.contains("`modules/billing/migrations/add_things.sql` is not named `NNNN_description.sql`"),
        "{error}"
    );
}

#[tokio::test]
async fn an_unprovisioned_module_is_reported() {
    let db = TestDb::new().await;
    let project = clinic(&db);
    let mut conn = db.connect().await;
    let error = moat_admin::migrate::migrate(&mut conn, &db.url, &project.manifest(), Some("billing"), &|_| {})
        .await
        .unwrap_err();
    assert!(matches!(error, AdminError::Migration(_)));
    assert!(error.to_string().contains("module `billing` is not provisioned"), "{error}");
}

#![allow(clippy::unwrap_used)]
//! Migrations written to escape, the way a module team would write them: each attack is a
//! migration file (or a function, trigger, view or held lock it plants), run through `moat up` /
//! `moat migrate` against a real PostgreSQL, and each test asserts that it failed or was refused
//! and that nothing of it remains.

mod common;

use common::{clinic, up_quietly};
use moat_admin::AdminError;
use moat_admin::migrate::{MigrationState, status};
use moat_admin::up::up;
use moat_testkit::{TestDb, TestProject};

async fn up_error(db: &TestDb, project: &TestProject) -> AdminError {
    match up(&db.url, &project.manifest(), &|_| {}).await {
        Ok(_) => panic!("moat up should have failed"),
        Err(e) => e,
    }
}

async fn scalar_i64(db: &TestDb, sql: &str) -> i64 {
    let mut conn = db.connect().await;
    sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.to_owned())).fetch_one(&mut conn).await.unwrap()
}

async fn exists(db: &TestDb, relation: &str) -> bool {
    let mut conn = db.connect().await;
    sqlx::query_scalar::<_, bool>("SELECT pg_catalog.to_regclass($1) IS NOT NULL")
        .bind(relation)
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

async fn role_exists(db: &TestDb, role: &str) -> bool {
    let mut conn = db.connect().await;
    sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = $1)")
        .bind(role)
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

/// Nothing in `public` or `information_schema` that a module made, no role beyond the project's
/// own, no project role with an attribute or a membership moat did not make.
async fn nothing_escaped(db: &TestDb) {
    let in_public = scalar_i64(
        db,
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname IN ('public', 'information_schema') AND pg_get_userbyid(c.relowner) <> 'postgres'",
    )
    .await;
    assert_eq!(in_public, 0, "a module created a relation in public or information_schema");
    let prefix = format!("{}_", db.project);
    let mut conn = db.connect().await;
    let privileged: Vec<String> = sqlx::query_scalar(
        "SELECT rolname::text FROM pg_roles WHERE starts_with(rolname, $1) \
         AND (rolsuper OR rolcreaterole OR rolcreatedb OR rolreplication OR rolbypassrls)",
    )
    .bind(&prefix)
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert!(privileged.is_empty(), "privileged project roles: {privileged:?}");
    let memberships: Vec<String> = sqlx::query_scalar(
        "SELECT r.rolname || ' -> ' || u.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid \
         JOIN pg_roles u ON u.oid = m.member WHERE (starts_with(r.rolname, $1) OR starts_with(u.rolname, $1)) \
         AND NOT (r.rolname LIKE '%\\_owner' AND u.rolname = replace(r.rolname, '_owner', '_migrator'))",
    )
    .bind(&prefix)
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert!(memberships.is_empty(), "memberships moat did not make: {memberships:?}");
    let escaped = role_exists(db, &db.role("escaped")).await;
    assert!(!escaped, "a module created a role");
}

async fn billing_state(db: &TestDb, project: &TestProject, version: u64) -> MigrationState {
    let mut conn = db.connect().await;
    let statuses = status(&mut conn, &db.url, &project.manifest()).await.unwrap();
    let billing = statuses.iter().find(|s| s.module == "billing").unwrap();
    billing.migrations.iter().find(|m| m.version == version).unwrap().state
}

/// An attack file: written, run (it must fail), checked, removed.
async fn refused(db: &TestDb, project: &TestProject, file: &str, sql: &str) -> String {
    let path = format!("modules/billing/migrations/{file}");
    project.write(&path, sql);
    let error = up_error(db, project).await;
    assert!(matches!(error, AdminError::Migration(_)), "{error}");
    let message = error.to_string();
    assert!(message.contains(&path), "the error names the file: {message}");
    assert!(message.contains("help:"), "{message}");
    nothing_escaped(db).await;
    std::fs::remove_file(project.dir.path().join(&path)).unwrap();
    message
}

#[tokio::test]
async fn leaving_the_owner_role_to_copy_another_module_into_public_is_refused() {
    let db = TestDb::new().await;
    let project = clinic(&db);
    up_quietly(&db, &project.manifest()).await;
    let copy = "CREATE TABLE public.stolen AS SELECT * FROM patients.patients;\n";

    // Plainly: refused before it runs, located.
    let error =
        refused(&db, &project, "0002_reset.sql", &format!("CREATE TABLE ok (id int);\nRESET ROLE;\n{copy}")).await;
    assert!(error.contains("0002_reset.sql:2:1: `RESET ROLE` is not allowed in a migration"), "{error}");
    assert!(!exists(&db, "billing.ok").await);

    // Hidden from the keywords, in a statement: the session user is the migrator, which has no
    // right on public nor on schema patients.
    let error = refused(
        &db,
        &project,
        "0002_set_config.sql",
        &format!("SELECT set_config('ro' || 'le', 'none', true);\n{copy}"),
    )
    .await;
    assert!(error.contains("permission denied for schema"), "{error}");
    assert!(error.contains("0002_set_config.sql:2:"), "{error}");

    // The same inside a DO block.
    let error = refused(
        &db,
        &project,
        "0002_do.sql",
        "DO $$\nBEGIN\n  PERFORM set_config('ro' || 'le', 'none', true);\n  EXECUTE 'CREATE TABLE public.stolen AS SELECT * FROM patients.patients';\nEND\n$$;\n",
    )
    .await;
    assert!(error.contains("permission denied for schema"), "{error}");

    // Leaving the role and coming back unnoticed to the owner is no escape either: the check
    // at the end sees a role other than the owner.
    let error =
        refused(&db, &project, "0002_stay.sql", "SELECT set_config('ro' || 'le', 'none', true);\nSELECT 1;\n").await;
    assert!(error.contains("changed its role from"), "{error}");
    assert!(!exists(&db, "public.stolen").await);
}

#[tokio::test]
async fn ending_the_transaction_is_refused_and_nothing_after_it_runs() {
    let db = TestDb::new().await;
    let project = clinic(&db);
    up_quietly(&db, &project.manifest()).await;
    let error = refused(
        &db,
        &project,
        "0002_commit.sql",
        "CREATE TABLE before_commit (id int);\nCOMMIT;\nCREATE TABLE public.stolen AS SELECT * FROM patients.patients;\n",
    )
    .await;
    assert!(error.contains("0002_commit.sql:2:1: `COMMIT` is not allowed in a migration"), "{error}");
    assert!(!exists(&db, "billing.before_commit").await);
    // A commit the keywords cannot see: PostgreSQL refuses it inside moat's transaction.
    let error = refused(
        &db,
        &project,
        "0002_do_commit.sql",
        "CREATE TABLE before_commit (id int);\nDO $$ BEGIN COMMIT; END $$;\nCREATE TABLE after_commit (id int);\n",
    )
    .await;
    assert!(error.contains("invalid transaction termination"), "{error}");
    assert!(!exists(&db, "billing.before_commit").await);
    assert!(!exists(&db, "billing.after_commit").await);
    assert_eq!(scalar_i64(&db, "SELECT count(*) FROM billing.moat_migrations WHERE version = 2").await, 0);
}

#[tokio::test]
async fn a_no_transaction_migration_gains_nothing_by_leaving_its_role() {
    let db = TestDb::new().await;
    let project = clinic(&db);
    up_quietly(&db, &project.manifest()).await;
    let error = refused(
        &db,
        &project,
        "0002_nt_reset.sql",
        "-- moat:no-transaction\nRESET ROLE;\nCREATE TABLE public.stolen AS SELECT * FROM patients.patients;\n",
    )
    .await;
    assert!(error.contains("0002_nt_reset.sql:2:1: `RESET ROLE` is not allowed"), "{error}");
    let error = refused(
        &db,
        &project,
        "0002_nt_set_config.sql",
        "-- moat:no-transaction\nSELECT set_config('ro' || 'le', 'none', false);\nCREATE TABLE public.stolen AS SELECT * FROM patients.patients;\n",
    )
    .await;
    assert!(error.contains("0002_nt_set_config.sql:2:1: the migration changed its role from"), "{error}");
    let error = refused(
        &db,
        &project,
        "0002_nt_do.sql",
        "-- moat:no-transaction\nDO $$ BEGIN PERFORM set_config('ro' || 'le', 'none', true); \
         EXECUTE 'CREATE TABLE public.stolen AS SELECT * FROM patients.patients'; END $$;\n",
    )
    .await;
    assert!(error.contains("permission denied for schema"), "{error}");
    let error = refused(
        &db,
        &project,
        "0002_nt_commit.sql",
        "-- moat:no-transaction\nCOMMIT;\nCREATE TABLE public.stolen AS SELECT * FROM patients.patients;\n",
    )
    .await;
    assert!(error.contains("`COMMIT` is not allowed"), "{error}");
    assert!(!exists(&db, "public.stolen").await);
}

#[tokio::test]
async fn a_migrator_granting_itself_to_another_modules_role_is_undone() {
    let db = TestDb::new().await;
    let project = clinic(&db);
    up_quietly(&db, &project.manifest()).await;
    let migrator = db.role("billing_migrator");
    let owner = db.role("billing_owner");
    let other = db.role("patients");
    // In a transaction: PostgreSQL 15 lets a session user grant membership in itself unless its
    // minor release refuses it; either the database or moat's check before COMMIT stops it.
    let error = refused(
        &db,
        &project,
        "0002_grant.sql",
        &format!(
            "SELECT set_config('ro' || 'le', 'none', true);\nGRANT \"{migrator}\" TO \"{other}\";\nSELECT set_config('ro' || 'le', '{owner}', true);\n"
        ),
    )
    .await;
    assert!(
        error.contains("changed a membership, setting or attribute of the project's roles")
            || error.contains("must have admin option on role"),
        "{error}"
    );
    // A role setting of the migrator: rolled back before COMMIT.
    let error = refused(
        &db,
        &project,
        "0002_setting.sql",
        &format!(
            "SELECT set_config('ro' || 'le', 'none', true);\nALTER ROLE \"{migrator}\" SET statement_timeout = '1ms';\nSELECT set_config('ro' || 'le', '{owner}', true);\n"
        ),
    )
    .await;
    assert!(error.contains("0002_setting.sql: the migration changed a membership, setting or attribute"), "{error}");
    // Without a transaction: the statement commits, moat sees it after the statement and undoes it.
    let error = refused(
        &db,
        &project,
        "0002_nt_grant.sql",
        &format!(
            "-- moat:no-transaction\nDO $$ BEGIN PERFORM set_config('ro' || 'le', 'none', true); EXECUTE 'GRANT \"{migrator}\" TO \"{other}\"'; END $$;\nCREATE TABLE after_grant (id int);\n"
        ),
    )
    .await;
    assert!(
        (error.contains("0002_nt_grant.sql:2:1: the migration changed a membership")
            && error.contains("moat undid it: REVOKE"))
            || error.contains("must have admin option on role"),
        "{error}"
    );
    assert!(!exists(&db, "billing.after_grant").await, "the migration stops at the statement");
    let error = refused(
        &db,
        &project,
        "0002_nt_setting.sql",
        &format!(
            "-- moat:no-transaction\nDO $$ BEGIN PERFORM set_config('ro' || 'le', 'none', true); \
             EXECUTE 'ALTER ROLE \"{migrator}\" SET statement_timeout = ''1ms'''; END $$;\nCREATE TABLE after_setting (id int);\n"
        ),
    )
    .await;
    assert!(error.contains("0002_nt_setting.sql:2:1: the migration changed a membership, setting"), "{error}");
    assert!(error.contains(&format!("moat undid it: ALTER ROLE \"{migrator}\" RESET ALL")), "{error}");
    assert!(!exists(&db, "billing.after_setting").await, "the migration stops at the statement");
    let settings = scalar_i64(
        &db,
        &format!("SELECT count(*) FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole WHERE r.rolname = '{migrator}'"),
    )
    .await;
    assert_eq!(settings, 0);
}

#[tokio::test]
async fn privileged_statements_in_migrations_are_refused_by_the_database() {
    let db = TestDb::new().await;
    let project = clinic(&db);
    up_quietly(&db, &project.manifest()).await;
    let migrator = db.role("billing_migrator");
    let escaped = db.role("escaped");
    let file = std::env::temp_dir().join(format!("moat-attack-{}", db.project));
    let attacks = [
        format!("ALTER ROLE \"{migrator}\" SUPERUSER;\n"),
        format!("SELECT set_config('ro' || 'le', 'none', true);\nALTER ROLE \"{migrator}\" CREATEROLE;\n"),
        format!("CREATE ROLE \"{escaped}\" SUPERUSER LOGIN;\n"),
        "CREATE VIEW information_schema.leak AS SELECT * FROM patients.patients;\n".to_owned(),
        "CREATE VIEW information_schema.leak AS SELECT 1 AS one;\n".to_owned(),
        format!("COPY (SELECT 1) TO '{}';\n", file.display()),
        format!("-- moat:no-transaction\nCREATE ROLE \"{escaped}\" SUPERUSER LOGIN;\n"),
    ];
    for (i, attack) in attacks.iter().enumerate() {
        let error = refused(&db, &project, &format!("0002_attack_{i}.sql"), attack).await;
        assert!(error.contains("SQLSTATE 42501"), "{attack}: {error}");
        assert!(!file.exists(), "a file was written");
    }
    assert!(!role_exists(&db, &escaped).await);
}

#[tokio::test]
async fn a_password_a_migration_gives_its_migrator_is_removed() {
    let db = TestDb::new().await;
    let project = clinic(&db);
    up_quietly(&db, &project.manifest()).await;
    let migrator = db.role("billing_migrator");
    let owner = db.role("billing_owner");
    project.write(
        "modules/billing/migrations/0002_password.sql",
        &format!(
            "SELECT set_config('ro' || 'le', 'none', true);\nALTER ROLE \"{migrator}\" PASSWORD 'known-to-the-module';\nSELECT set_config('ro' || 'le', '{owner}', true);\n"
        ),
    );
    let error = up_error(&db, &project).await.to_string();
    assert!(error.contains(&format!("a migration gave role `{migrator}` a password; moat removed it")), "{error}");
    let passwords = scalar_i64(
        &db,
        &format!("SELECT count(*) FROM pg_authid WHERE rolname = '{migrator}' AND rolpassword IS NOT NULL"),
    )
    .await;
    assert_eq!(passwords, 0);
    nothing_escaped(&db).await;
}

#[tokio::test]
async fn a_trigger_on_the_history_table_runs_as_the_migrator_at_most() {
    let db = TestDb::new().await;
    let project = clinic(&db);
    up_quietly(&db, &project.manifest()).await;
    let escaped = db.role("escaped");
    let migrator = db.role("billing_migrator");
    let other = db.role("patients");
    project.write(
        "modules/billing/migrations/0002_trigger.sql",
        &format!(
            "CREATE FUNCTION on_record() RETURNS trigger LANGUAGE plpgsql AS $$\nBEGIN\n  \
             PERFORM set_config('ro' || 'le', 'none', true);\n  EXECUTE 'CREATE ROLE \"{escaped}\" SUPERUSER';\n  \
             EXECUTE 'GRANT \"{migrator}\" TO \"{other}\"';\n  RETURN NEW;\nEND\n$$;\n\
             CREATE TRIGGER on_record AFTER INSERT ON moat_migrations FOR EACH ROW EXECUTE FUNCTION on_record();\n"
        ),
    );
    let error = up_error(&db, &project).await.to_string();
    // moat's tables belong to `<project>_moat`, so the owner may not even create the trigger.
    assert!(error.contains("permission denied for table moat_migrations"), "{error}");
    nothing_escaped(&db).await;
    assert_eq!(
        scalar_i64(&db, "SELECT count(*) FROM pg_trigger WHERE tgname = 'on_record'").await,
        0,
        "nothing of the migration remains"
    );
    assert_eq!(billing_state(&db, &project, 2).await, MigrationState::Pending);
}

/// A marker function the module plants: records who ran it, and tries to create a superuser.
fn marker_sql(db: &TestDb, name: &str, args: &str) -> String {
    format!(
        "CREATE TABLE marks (who text NOT NULL, superuser boolean NOT NULL);\n\
         GRANT INSERT ON marks TO PUBLIC;\n\
         CREATE FUNCTION {name}({args}) RETURNS bigint LANGUAGE plpgsql AS $$\nBEGIN\n  \
         INSERT INTO billing.marks VALUES (session_user, (SELECT rolsuper FROM pg_roles WHERE rolname = session_user));\n  \
         BEGIN EXECUTE 'CREATE ROLE \"{}\" SUPERUSER'; EXCEPTION WHEN insufficient_privilege THEN NULL; END;\n  \
         RETURN 0;\nEND\n$$;\nGRANT EXECUTE ON FUNCTION {name}({args}) TO PUBLIC;\n",
        db.role("escaped")
    )
}

#[tokio::test]
async fn status_never_runs_a_function_behind_a_history_view_as_superuser() {
    let db = TestDb::new().await;
    let project = clinic(&db);
    up_quietly(&db, &project.manifest()).await;
    project.write(
        "modules/billing/migrations/0002_view.sql",
        &format!(
            "{}ALTER TABLE moat_migrations RENAME TO moat_migrations_real;\n\
             CREATE VIEW moat_migrations AS SELECT version + mark() AS version, name, checksum, applied_at, duration_ms, success \
             FROM moat_migrations_real;\n\
             GRANT SELECT, INSERT ON moat_migrations, moat_migrations_real TO PUBLIC;\n\
             CREATE RULE record AS ON INSERT TO moat_migrations DO INSTEAD INSERT INTO moat_migrations_real \
             VALUES (NEW.version, NEW.name, NEW.checksum, NEW.applied_at, NEW.duration_ms, NEW.success);\n",
            marker_sql(&db, "mark", "")
        ),
    );
    // `moat migrate` alone (a later `moat up` would also take PUBLIC's grants away again).
    let mut conn = db.connect().await;
    match moat_admin::migrate::migrate(&mut conn, &db.url, &project.manifest(), Some("billing"), &|_| {}).await {
        Ok(_) => {
            // The module still owns its history table here: the view is in place, and `moat
            // status` reads through it, in the migrator's session.
            let mut conn = db.connect().await;
            status(&mut conn, &db.url, &project.manifest()).await.unwrap();
            assert!(scalar_i64(&db, "SELECT count(*) FROM billing.marks").await > 0, "the view ran its function");
        }
        Err(e) => {
            // Once moat owns the history table, the owner cannot replace it.
            assert!(e.to_string().contains("must be owner of"), "{e}");
            assert!(!exists(&db, "billing.marks").await);
        }
    }
    if exists(&db, "billing.marks").await {
        assert_eq!(scalar_i64(&db, "SELECT count(*) FROM billing.marks WHERE superuser").await, 0);
    }
    nothing_escaped(&db).await;
}

#[tokio::test]
async fn an_owner_made_hashtextextended_never_runs_for_moat() {
    let db = TestDb::new().await;
    let project = clinic(&db);
    up_quietly(&db, &project.manifest()).await;
    project.write("modules/billing/migrations/0002_shadow.sql", &marker_sql(&db, "hashtextextended", "text, bigint"));
    project.write(
        "modules/billing/migrations/0003_path.sql",
        "-- moat:no-transaction\nSELECT set_config('search_path', 'billing', false);\n",
    );
    up_quietly(&db, &project.manifest()).await;
    // Another run takes the module's lock and logs in again.
    project.write("modules/billing/migrations/0004_more.sql", "CREATE TABLE more (id int);\n");
    up_quietly(&db, &project.manifest()).await;
    let mut conn = db.connect().await;
    status(&mut conn, &db.url, &project.manifest()).await.unwrap();
    assert_eq!(scalar_i64(&db, "SELECT count(*) FROM billing.marks").await, 0, "moat called the module's function");
    nothing_escaped(&db).await;
}

#[tokio::test]
async fn a_runtime_role_holding_the_migration_lock_is_named() {
    let db = TestDb::new().await;
    let project = clinic(&db);
    up_quietly(&db, &project.manifest()).await;
    let holder = db.role("patients");
    let mut held = db.connect_as(&holder).await;
    sqlx::query("SELECT pg_advisory_lock(hashtextextended($1, 0))")
        .bind(format!("moat:migrate:{}:billing", db.project))
        .execute(&mut held)
        .await
        .unwrap();
    project.write("modules/billing/migrations/0002_more.sql", "CREATE TABLE more (id int);\n");
    let mut conn = db.connect().await;
    let error = moat_admin::migrate::migrate(&mut conn, &db.url, &project.manifest(), None, &|_| {}).await.unwrap_err();
    match &error {
        AdminError::LockTimeout { holders, .. } => {
            assert!(holders.iter().any(|h| h.role == holder), "{error}");
        }
        other => panic!("expected a lock timeout, got {other}"),
    }
    assert!(error.to_string().contains(&format!("`{holder}`")), "{error}");
    assert!(!exists(&db, "billing.more").await);
    drop(held);
}

/// Stops an embedded cluster when the test ends, passed or not.
struct StopCluster(std::path::PathBuf);

impl Drop for StopCluster {
    fn drop(&mut self) {
        let _ = moat_admin::embedded::stop(&self.0);
    }
}

#[tokio::test]
async fn migrations_log_in_with_a_one_time_password_on_a_scram_only_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let cluster_dir = dir.path().join("pg");
    let options = moat_admin::embedded::EmbeddedOptions { dir: cluster_dir.clone(), durable: false, logical: true };
    let cluster =
        tokio::task::spawn_blocking(move || moat_admin::embedded::ensure_running(&options)).await.unwrap().unwrap();
    let _stop = StopCluster(cluster_dir.clone());
    // TCP logins need SCRAM for every role but the (trusted) admin.
    std::fs::write(
        cluster_dir.join("data/pg_hba.conf"),
        "local all all trust\nhost all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n",
    )
    .unwrap();
    let server = cluster.url("postgres");
    let mut conn = moat_admin::connect(&server).await.unwrap();
    sqlx::query("SELECT pg_reload_conf()").execute(&mut conn).await.unwrap();
    moat_admin::embedded::ensure_database(&server, "scram").await.unwrap();
    let url = cluster.url("scram");
    let project = TestProject::new(
        "scram",
        "[project]\nname = \"{project}\"\n\n[modules.patients]\n",
        &[
            ("modules/patients/migrations/0001_create_patients.sql", "CREATE TABLE patients (id uuid PRIMARY KEY);\n"),
            (
                "modules/patients/migrations/0002_index.sql",
                "-- moat:no-transaction\nCREATE INDEX CONCURRENTLY IF NOT EXISTS patients_id ON patients (id);\n",
            ),
        ],
    );
    let report = up(&url, &project.manifest(), &|_| {}).await.unwrap_or_else(|e| panic!("moat up failed: {e}"));
    assert_eq!(report.migrate.applied.len(), 2);
    let mut admin = moat_admin::connect(&url).await.unwrap();
    let (created, passwords): (bool, i64) = sqlx::query_as(
        "SELECT to_regclass('patients.patients') IS NOT NULL, \
         (SELECT count(*) FROM pg_authid WHERE rolname = 'scram_patients_migrator' AND rolpassword IS NOT NULL)",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert!(created);
    assert_eq!(passwords, 0, "the one-time password is removed");
    // The cluster does refuse the migrator without a password: the login above was SCRAM.
    let refused = moat_admin::connect_as(&url.with_login("scram_patients_migrator", None)).await;
    assert!(refused.is_err(), "the migrator logged in without a password");
    let mut conn = moat_admin::connect(&url).await.unwrap();
    let statuses = status(&mut conn, &url, &project.manifest()).await.unwrap();
    assert_eq!(statuses[0].count(MigrationState::Applied), 2);
    let second = up(&url, &project.manifest(), &|_| {}).await.unwrap();
    assert!(!second.changed());
    let _ = sqlx::raw_sql("DROP DATABASE scram WITH (FORCE)").execute(&mut conn).await;
}

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! `moat extract` in copy mode: a module moves with its data, history, sequences and outbox into
//! another database; verification stops a move whose copy differs; preflight refuses what cannot
//! move and changes nothing; module code that runs during the move runs as the module's owner.

use std::sync::Mutex;

use moat_admin::DatabaseUrl;
use moat_admin::extract::{ExtractEvent, ExtractOptions, Mode, Outcome, Step, extract};
use moat_core::manifest::Manifest;
use moat_core::names::ModuleName;
use moat_testkit::{TestDb, TestProject, sqlstate_of};
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

const BILLING_0001: &str = "\
CREATE TABLE accounts (id serial PRIMARY KEY, name text NOT NULL, balance numeric NOT NULL DEFAULT 0);
CREATE TABLE charges (account_id int NOT NULL REFERENCES accounts (id), line int NOT NULL,
  amount numeric NOT NULL CHECK (amount > 0), PRIMARY KEY (account_id, line));
CREATE INDEX charges_amount ON charges (amount);
CREATE FUNCTION add_to_balance() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  UPDATE accounts SET balance = balance + NEW.amount WHERE id = NEW.account_id;
  RETURN NEW;
END $$;
CREATE TRIGGER charges_balance AFTER INSERT ON charges FOR EACH ROW EXECUTE FUNCTION add_to_balance();
";

const BILLING_0002: &str = "CREATE TABLE notes (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, body text);\n";

fn project(db: &TestDb, extra_billing: &[(&str, &str)]) -> TestProject {
    let mut files = vec![
        ("modules/patients/migrations/0001_patients.sql", "CREATE TABLE patients (id int PRIMARY KEY, name text);\n"),
        ("modules/billing/migrations/0001_accounts.sql", BILLING_0001),
        ("modules/billing/migrations/0002_notes.sql", BILLING_0002),
        ("modules/reports/migrations/0001_totals.sql", "CREATE TABLE totals (id int PRIMARY KEY);\n"),
    ];
    files.extend_from_slice(extra_billing);
    TestProject::new(&db.project, MANIFEST, &files)
}

async fn up(db: &TestDb, manifest: &Manifest) {
    moat_admin::up::up(&db.url, manifest, &|_| {}).await.unwrap_or_else(|e| panic!("moat up failed: {e}"));
}

/// Writes as billing's runtime role: accounts, charges (the trigger keeps balances), notes, and
/// events in its outbox.
async fn write_billing(db: &TestDb) {
    let mut app = db.connect_as(&db.role("billing")).await;
    sqlx::raw_sql(
        "INSERT INTO accounts (name) SELECT 'account ' || i FROM generate_series(1, 25) i;
         INSERT INTO charges (account_id, line, amount) SELECT 1 + i % 25, i, i * 1.5 FROM generate_series(1, 120) i;
         INSERT INTO notes (body) VALUES ('first'), (NULL), (E'tab\\there'), ('ünïcode');
         INSERT INTO moat_outbox (event_id, event_type, event_key, payload)
           SELECT gen_random_uuid(), 'Charged', 'account-' || i, jsonb_build_object('n', i) FROM generate_series(1, 7) i;",
    )
    .execute(&mut app)
    .await
    .unwrap();
    app.close().await.unwrap();
}

/// Everything of billing that must arrive: rows of every table, history, outbox.
async fn billing_state(conn: &mut PgConnection) -> Vec<String> {
    let mut state = Vec::new();
    for sql in [
        "SELECT string_agg(a::text, ';' ORDER BY id) FROM billing.accounts a",
        "SELECT string_agg(c::text, ';' ORDER BY account_id, line) FROM billing.charges c",
        "SELECT string_agg(n::text, ';' ORDER BY id) FROM billing.notes n",
        "SELECT string_agg(version || ' ' || name || ' ' || checksum || ' ' || success, ';' ORDER BY version) FROM billing.moat_migrations",
        "SELECT string_agg(id || ' ' || event_id || ' ' || event_type || ' ' || payload::text || ' ' || cluster, ';' ORDER BY id) FROM billing.moat_outbox",
        "SELECT last_value || ' ' || is_called FROM billing.accounts_id_seq",
        "SELECT last_value || ' ' || is_called FROM billing.notes_id_seq",
        "SELECT last_value || ' ' || is_called FROM billing.moat_outbox_id_seq",
        "SELECT string_agg(publisher, ',') FROM billing.moat_subscriptions",
    ] {
        let value: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(&mut *conn).await.unwrap();
        state.push(format!("{sql} => {}", value.unwrap_or_default()));
    }
    state
}

fn billing() -> ModuleName {
    ModuleName::parse("billing").unwrap()
}

fn copy_mode() -> ExtractOptions {
    ExtractOptions { mode: Some(Mode::Copy), ..ExtractOptions::default() }
}

async fn journal_step(conn: &mut PgConnection) -> Option<String> {
    let exists: bool =
        sqlx::query_scalar("SELECT to_regclass('billing.moat_move') IS NOT NULL").fetch_one(&mut *conn).await.unwrap();
    if !exists {
        return None;
    }
    sqlx::query_scalar("SELECT step FROM billing.moat_move").fetch_optional(&mut *conn).await.unwrap()
}

async fn schema_exists(conn: &mut PgConnection, schema: &str) -> bool {
    sqlx::query_scalar("SELECT count(*) > 0 FROM pg_namespace WHERE nspname = $1")
        .bind(schema)
        .fetch_one(&mut *conn)
        .await
        .unwrap()
}

async fn schema_acl(conn: &mut PgConnection) -> String {
    // Sorted: a revoke and a grant back reorder the entries.
    sqlx::query_scalar("SELECT coalesce(string_agg(a::text, ',' ORDER BY a::text), '') FROM pg_namespace n, unnest(n.nspacl) a WHERE n.nspname = 'billing'")
        .fetch_one(&mut *conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn copy_moves_data_history_sequences_and_outbox_then_finalize_drops_the_source() {
    let db = TestDb::new().await;
    let target = db.another("target").await;
    let project = project(&db, &[]);
    let manifest = project.manifest();
    up(&db, &manifest).await;
    write_billing(&db).await;
    let mut source = db.connect().await;
    // A session of the module with a transaction in flight when the move starts: the freeze
    // ends it, so its write fails visibly instead of landing after the copy.
    let mut in_flight = db.connect_as(&db.role("billing")).await;
    sqlx::raw_sql("BEGIN; INSERT INTO notes (body) VALUES ('in flight')").execute(&mut in_flight).await.unwrap();
    let before = billing_state(&mut source).await;

    // A running application listens for the switch on the source.
    let mut listener = sqlx::postgres::PgListener::connect(db.url.expose()).await.unwrap();
    listener.listen("moat_move").await.unwrap();

    let steps = Mutex::new(Vec::new());
    let tables = Mutex::new(Vec::new());
    let report =
        extract(&manifest, &billing(), &db.url, &target, Some("billing_db"), &copy_mode(), &|event| match event {
            ExtractEvent::Step { step } => steps.lock().unwrap().push(step),
            ExtractEvent::Table { table, rows, done: true, .. } => {
                tables.lock().unwrap().push(format!("{table} {rows}"))
            }
            _ => {}
        })
        .await
        .unwrap_or_else(|e| panic!("extract failed: {e}"));
    assert_eq!(report.outcome, Outcome::Moved);
    assert_eq!(*steps.lock().unwrap(), [Step::Preflight, Step::Prepare, Step::Copy, Step::Verify, Step::Switched]);
    let tables = tables.lock().unwrap().clone();
    for expected in ["billing.accounts 25", "billing.charges 120", "billing.notes 4", "billing.moat_migrations 2"] {
        assert!(tables.contains(&expected.to_owned()), "{expected} not in {tables:?}");
    }
    let verification = report.verification.clone().unwrap();
    assert!(verification.mismatches.is_empty(), "{:?}", verification.mismatches);
    assert!(report.write_unavailable_ms.is_some());
    let notification =
        tokio::time::timeout(std::time::Duration::from_secs(30), listener.recv()).await.unwrap().unwrap();
    assert_eq!(notification.payload(), "billing");

    assert!(sqlx::raw_sql("COMMIT").execute(&mut in_flight).await.is_err());
    let mut moved = moat_admin::connect(&target).await.unwrap();
    assert_eq!(billing_state(&mut moved).await, before);
    assert_eq!(billing_state(&mut source).await, before);
    assert_eq!(journal_step(&mut source).await.as_deref(), Some("switched"));
    // The module's own code works in its new home: the trigger keeps the balance, sequences go on.
    let mut app = moat_admin::connect_as(&target.with_login(&db.role("billing"), None)).await.unwrap();
    let id: i32 = sqlx::query_scalar("INSERT INTO accounts (name) VALUES ('new') RETURNING id")
        .fetch_one(&mut app)
        .await
        .unwrap();
    assert_eq!(id, 26);
    sqlx::raw_sql("INSERT INTO charges (account_id, line, amount) VALUES (26, 1000, 5)")
        .execute(&mut app)
        .await
        .unwrap();
    let balance: String =
        sqlx::query_scalar("SELECT balance::text FROM accounts WHERE id = 26").fetch_one(&mut app).await.unwrap();
    assert_eq!(balance, "5");
    app.close().await.unwrap();
    // The source copy stays, unreadable to the module.
    let mut old = db.connect_as(&db.role("billing")).await;
    assert_eq!(sqlstate_of(&mut old, "SELECT * FROM billing.accounts").await.as_deref(), Some("42501"));
    assert_eq!(
        sqlstate_of(&mut old, "INSERT INTO billing.notes (body) VALUES ('lost')").await.as_deref(),
        Some("42501")
    );
    old.close().await.unwrap();

    // A rerun finds the move done; abort refuses after the switch.
    let again =
        extract(&manifest, &billing(), &db.url, &target, Some("billing_db"), &copy_mode(), &|_| {}).await.unwrap();
    assert_eq!(again.outcome, Outcome::AlreadySwitched);
    let abort = ExtractOptions { abort: true, ..copy_mode() };
    let refused =
        extract(&manifest, &billing(), &db.url, &target, Some("billing_db"), &abort, &|_| {}).await.unwrap_err();
    assert!(refused.to_string().contains("switched"), "{refused}");

    let finalize = ExtractOptions { finalize: true, ..copy_mode() };
    let done = extract(&manifest, &billing(), &db.url, &target, Some("billing_db"), &finalize, &|_| {}).await.unwrap();
    assert_eq!(done.outcome, Outcome::Finalized);
    assert!(!schema_exists(&mut source, "billing").await);
    assert!(schema_exists(&mut moved, "billing").await);
    assert!(schema_exists(&mut source, "patients").await);
    source.close().await.unwrap();
    moved.close().await.unwrap();
}

#[tokio::test]
async fn a_row_changed_on_the_target_before_the_switch_stops_it() {
    let db = TestDb::new().await;
    let target = db.another("target").await;
    let project = project(&db, &[]);
    let manifest = project.manifest();
    up(&db, &manifest).await;
    write_billing(&db).await;
    let mut source = db.connect().await;
    let acl_before = schema_acl(&mut source).await;

    // At the start of the verification, another session changes a copied row in the target.
    let target_url = target.clone();
    let source_url = db.url.clone();
    let provision_key = moat_admin::provision::provision_lock(&manifest);
    let provisioning_waits = std::sync::atomic::AtomicBool::new(false);
    let tamper = || {
        let url = target_url.clone();
        let source_url = source_url.clone();
        let key = provision_key.clone();
        let waits = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let mut admin = moat_admin::connect(&url).await.unwrap();
                sqlx::raw_sql("UPDATE billing.notes SET body = 'changed' WHERE id = 2")
                    .execute(&mut admin)
                    .await
                    .unwrap();
                // While the writes are stopped, provisioning of the source (which would give
                // them back) cannot start.
                let mut other = moat_admin::connect(&source_url).await.unwrap();
                let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
                    .bind(&key)
                    .fetch_one(&mut other)
                    .await
                    .unwrap();
                !got
            })
        })
        .join()
        .unwrap();
        provisioning_waits.store(waits, std::sync::atomic::Ordering::SeqCst);
    };
    let error = extract(&manifest, &billing(), &db.url, &target, Some("billing_db"), &copy_mode(), &|event| {
        if let ExtractEvent::Step { step: Step::Verify } = event {
            tamper();
        }
    })
    .await
    .unwrap_err()
    .to_string();
    assert!(error.contains("verification of module `billing` failed"), "{error}");
    assert!(error.contains("table `billing.notes`: rows 1 to 4 in key order differ"), "{error}");
    assert!(error.contains("serves from the source again"), "{error}");
    assert!(provisioning_waits.load(std::sync::atomic::Ordering::SeqCst));
    assert_eq!(journal_step(&mut source).await.as_deref(), Some("verify"));
    let report: String = sqlx::query_scalar("SELECT report->'mismatches'->0->>'object' FROM billing.moat_move")
        .fetch_one(&mut source)
        .await
        .unwrap();
    assert_eq!(report, "billing.notes");
    // The module serves from the source again.
    assert_eq!(schema_acl(&mut source).await, acl_before);
    let mut app = db.connect_as(&db.role("billing")).await;
    sqlx::raw_sql("INSERT INTO notes (body) VALUES ('after the failed move')").execute(&mut app).await.unwrap();
    app.close().await.unwrap();

    // A rerun starts the copy over and carries the new row; afterwards both sides agree.
    let report =
        extract(&manifest, &billing(), &db.url, &target, Some("billing_db"), &copy_mode(), &|_| {}).await.unwrap();
    assert_eq!(report.outcome, Outcome::Moved);
    let before = billing_state(&mut source).await;
    let mut moved = moat_admin::connect(&target).await.unwrap();
    assert_eq!(billing_state(&mut moved).await, before);
    source.close().await.unwrap();
    moved.close().await.unwrap();
}

/// Asserts that a refused extract changed nothing on either side.
async fn assert_unchanged(db: &TestDb, target: &DatabaseUrl, acl_before: &str, target_had_schema: bool) {
    let mut source = db.connect().await;
    assert_eq!(journal_step(&mut source).await, None);
    assert_eq!(schema_acl(&mut source).await, acl_before);
    let mut dst = moat_admin::connect(target).await.unwrap();
    assert_eq!(schema_exists(&mut dst, "billing").await, target_had_schema);
    let roles_connect: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database d, aclexplode(d.datacl) a WHERE d.datname = current_database() AND pg_get_userbyid(a.grantee) LIKE $1")
        .bind(format!("{}%", db.project))
        .fetch_one(&mut dst)
        .await
        .unwrap();
    assert_eq!(roles_connect, 0);
}

async fn refused(db: &TestDb, target: &DatabaseUrl, manifest: &Manifest) -> String {
    extract(manifest, &billing(), &db.url, target, Some("billing_db"), &copy_mode(), &|_| {})
        .await
        .expect_err("extract should refuse")
        .to_string()
}

#[tokio::test]
async fn preflight_refuses_a_view_of_another_module_reading_the_module() {
    let db = TestDb::new().await;
    let target = db.another("target").await;
    let project = project(&db, &[]);
    let manifest = project.manifest();
    up(&db, &manifest).await;
    // A view in another schema (as the admin could have made before moat) reads billing's table.
    db.exec("CREATE VIEW patients.balances AS SELECT id, balance FROM billing.accounts").await;
    let mut source = db.connect().await;
    let acl = schema_acl(&mut source).await;
    let error = refused(&db, &target, &manifest).await;
    assert!(error.contains("view patients.balances (module `patients`'s) depends on column balance of table billing.accounts, column id of table billing.accounts"), "{error}");
    assert!(error.contains("nothing was changed"), "{error}");
    assert_unchanged(&db, &target, &acl, false).await;
}

#[tokio::test]
async fn preflight_refuses_a_contract_reading_the_module() {
    let db = TestDb::new().await;
    let target = db.another("target").await;
    let project = project(&db, &[]);
    project.write(
        "moat.toml",
        &format!(
            "{}\n[contracts.owed]\nsql = \"contracts/owed.sql\"\nreads = [\"billing.accounts\"]\nreaders = [\"finance\"]\n\n[consumers.finance]\n",
            MANIFEST.replace("{project}", &db.project)
        ),
    );
    project.write("contracts/owed.sql", "CREATE VIEW owed AS SELECT id, balance FROM billing.accounts;\n");
    let manifest = project.manifest();
    up(&db, &manifest).await;
    let mut source = db.connect().await;
    let acl = schema_acl(&mut source).await;
    let error = refused(&db, &target, &manifest).await;
    assert!(
        error.contains("view contracts.owed (a contract's) depends on column balance of table billing.accounts"),
        "{error}"
    );
    assert_unchanged(&db, &target, &acl, false).await;
}

#[tokio::test]
async fn preflight_refuses_a_target_that_holds_the_schema() {
    let db = TestDb::new().await;
    let target = db.another("target").await;
    let project = project(&db, &[]);
    let manifest = project.manifest();
    up(&db, &manifest).await;
    let mut dst = moat_admin::connect(&target).await.unwrap();
    sqlx::raw_sql("CREATE SCHEMA billing; CREATE TABLE billing.keep (id int)").execute(&mut dst).await.unwrap();
    let mut source = db.connect().await;
    let acl = schema_acl(&mut source).await;
    let error = refused(&db, &target, &manifest).await;
    assert!(
        error.contains(&format!("the target database `{}` already holds a schema `billing`", target.database())),
        "{error}"
    );
    assert_unchanged(&db, &target, &acl, true).await;
    let kept: bool =
        sqlx::query_scalar("SELECT to_regclass('billing.keep') IS NOT NULL").fetch_one(&mut dst).await.unwrap();
    assert!(kept);
}

#[tokio::test]
async fn preflight_refuses_tables_without_a_primary_key_and_lists_them() {
    let db = TestDb::new().await;
    let target = db.another("target").await;
    let project = project(
        &db,
        &[(
            "modules/billing/migrations/0003_logs.sql",
            "CREATE TABLE log_lines (at timestamptz, line text);\nCREATE TABLE audit_trail (n int);\n",
        )],
    );
    let manifest = project.manifest();
    up(&db, &manifest).await;
    let mut source = db.connect().await;
    let acl = schema_acl(&mut source).await;
    let error = refused(&db, &target, &manifest).await;
    assert!(
        error.contains("tables without a primary key or replica identity: `billing.audit_trail`, `billing.log_lines`"),
        "{error}"
    );
    assert_unchanged(&db, &target, &acl, false).await;
}

#[tokio::test]
async fn preflight_refuses_a_module_with_claims() {
    let db = TestDb::new().await;
    let target = db.another("target").await;
    let project = project(&db, &[]);
    project.write(
        "moat.toml",
        &MANIFEST
            .replace("{project}", &db.project)
            .replace("[modules.billing]\n", "[modules.billing]\nclaims = [\"public.invoices\"]\n"),
    );
    let manifest = project.manifest();
    up(&db, &manifest).await;
    let mut source = db.connect().await;
    let acl = schema_acl(&mut source).await;
    let error = refused(&db, &target, &manifest).await;
    assert!(error.contains("module `billing` claims objects outside its schema (`public.invoices`)"), "{error}");
    assert!(error.contains("finish the split first"), "{error}");
    assert_unchanged(&db, &target, &acl, false).await;
}

#[tokio::test]
async fn abort_rolls_back_a_move_that_stopped_before_the_switch() {
    let db = TestDb::new().await;
    let target = db.another("target").await;
    let project = project(&db, &[]);
    let manifest = project.manifest();
    up(&db, &manifest).await;
    write_billing(&db).await;
    let mut source = db.connect().await;
    let acl = schema_acl(&mut source).await;
    let before = billing_state(&mut source).await;
    // The verification fails (a row changed on the target), leaving a journal, a target schema.
    let url = target.clone();
    let _ = extract(&manifest, &billing(), &db.url, &target, Some("billing_db"), &copy_mode(), &|event| {
        if let ExtractEvent::Step { step: Step::Verify } = event {
            let url = url.clone();
            std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async move {
                    let mut admin = moat_admin::connect(&url).await.unwrap();
                    sqlx::raw_sql("DELETE FROM billing.notes WHERE id = 1").execute(&mut admin).await.unwrap();
                });
            })
            .join()
            .unwrap();
        }
    })
    .await
    .unwrap_err();
    let mut dst = moat_admin::connect(&target).await.unwrap();
    assert!(schema_exists(&mut dst, "billing").await);
    let abort = ExtractOptions { abort: true, ..copy_mode() };
    let report = extract(&manifest, &billing(), &db.url, &target, Some("billing_db"), &abort, &|_| {}).await.unwrap();
    assert_eq!(report.outcome, Outcome::Aborted);
    assert!(!schema_exists(&mut dst, "billing").await);
    // No CONNECT and no setting of the project's roles stays in the target database.
    let left: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM pg_database d, aclexplode(d.datacl) a WHERE d.datname = current_database() AND starts_with(pg_get_userbyid(a.grantee), $1))
              + (SELECT count(*) FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase WHERE d.datname = current_database() AND starts_with(pg_get_userbyid(s.setrole), $1))",
    )
    .bind(&db.project)
    .fetch_one(&mut dst)
    .await
    .unwrap();
    assert_eq!(left, 0);
    assert_eq!(journal_step(&mut source).await, None);
    assert_eq!(schema_acl(&mut source).await, acl);
    assert_eq!(billing_state(&mut source).await, before);
    let again = extract(&manifest, &billing(), &db.url, &target, Some("billing_db"), &abort, &|_| {}).await.unwrap();
    assert_eq!(again.outcome, Outcome::NothingToAbort);
}

/// A module function that, run by a superuser, makes the owner a superuser and plants a table in
/// another schema; used by a CHECK constraint, an index expression and a default, so the move
/// runs it on every copied row and while building the index.
const TRAP: &str = r#"
CREATE FUNCTION trap_act() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
    EXECUTE 'ALTER ROLE {owner} SUPERUSER';
    EXECUTE 'CREATE TABLE public.planted (id int)';
  END IF;
  BEGIN
    EXECUTE 'ALTER ROLE ' || pg_catalog.quote_ident(session_user) || ' SUPERUSER';
  EXCEPTION WHEN OTHERS THEN NULL;
  END;
  BEGIN
    EXECUTE 'CREATE TABLE patients.planted (id int)';
  EXCEPTION WHEN OTHERS THEN NULL;
  END;
END $$;
CREATE FUNCTION trap(v int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
  PERFORM trap_act();
  RETURN v;
END $$;
CREATE TABLE trapped (id int PRIMARY KEY CHECK (trap(id) = id), v int DEFAULT trap(1));
CREATE INDEX trapped_expr ON trapped (trap(v));
"#;

#[tokio::test]
async fn a_journal_table_the_module_planted_is_refused_before_the_admin_touches_it() {
    let db = TestDb::new().await;
    let target = db.another("target").await;
    let owner = db.role("billing_owner");
    // The owner may create tables in its schema: one named like the journal, with a trigger
    // that would make the owner a superuser when the admin writes the journal.
    let plant = format!(
        "SET ROLE {owner}; SET search_path = billing;\n\
         CREATE TABLE moat_move (target text, mode text, step text, started_at timestamptz, updated_at timestamptz,\n\
           switched_at timestamptz, frozen_at timestamptz, revoked text[], report jsonb, one boolean PRIMARY KEY);\n\
         CREATE FUNCTION escalate() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN\n\
           EXECUTE 'ALTER ROLE {owner} SUPERUSER'; RETURN NEW; END $$;\n\
         CREATE TRIGGER escalate BEFORE INSERT OR UPDATE ON moat_move FOR EACH ROW EXECUTE FUNCTION escalate();\n"
    );
    let project = project(&db, &[]);
    let manifest = project.manifest();
    up(&db, &manifest).await;
    // (Provisioning refuses such a table too; the owner creates it after `moat up`.)
    db.exec(&plant).await;
    let error = refused(&db, &target, &manifest).await;
    assert!(error.contains("`billing.moat_move` is not moat's move journal"), "{error}");
    let mut admin = db.connect().await;
    let superuser: bool = sqlx::query_scalar("SELECT rolsuper FROM pg_roles WHERE rolname = $1")
        .bind(&owner)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert!(!superuser);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM billing.moat_move").fetch_one(&mut admin).await.unwrap();
    assert_eq!(rows, 0);
    admin.close().await.unwrap();
}

#[tokio::test]
async fn module_functions_that_the_move_runs_run_as_the_owner() {
    let db = TestDb::new().await;
    let target = db.another("target").await;
    let owner = db.role("billing_owner");
    let trap = TRAP.replace("{owner}", &owner);
    let project = project(&db, &[("modules/billing/migrations/0003_trap.sql", &trap)]);
    let manifest = project.manifest();
    up(&db, &manifest).await;
    // The trap works when a superuser runs it (shown in a transaction that is rolled back).
    let mut admin = db.connect().await;
    let armed: bool = {
        let mut tx = admin.begin().await.unwrap();
        sqlx::raw_sql("SET LOCAL search_path = billing; SELECT billing.trap(1)").execute(&mut *tx).await.unwrap();
        let armed = sqlx::query_scalar("SELECT rolsuper FROM pg_roles WHERE rolname = $1")
            .bind(&owner)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        tx.rollback().await.unwrap();
        armed
    };
    assert!(armed);
    admin.close().await.unwrap();
    let mut app = db.connect_as(&db.role("billing")).await;
    sqlx::raw_sql("INSERT INTO trapped (id) SELECT generate_series(1, 10)").execute(&mut app).await.unwrap();
    app.close().await.unwrap();
    let report = extract(&manifest, &billing(), &db.url, &target, Some("billing_db"), &copy_mode(), &|_| {})
        .await
        .unwrap_or_else(|e| panic!("extract failed: {e}"));
    assert_eq!(report.outcome, Outcome::Moved);
    let mut dst = moat_admin::connect(&target).await.unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM billing.trapped").fetch_one(&mut dst).await.unwrap();
    assert_eq!(rows, 10);
    let mut source = db.connect().await;
    for conn in [&mut source, &mut dst] {
        let supers: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_roles WHERE rolsuper AND starts_with(rolname, $1)")
                .bind(&db.project)
                .fetch_one(&mut *conn)
                .await
                .unwrap();
        assert_eq!(supers, 0);
        let planted: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_class WHERE relname = 'planted'")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!(planted, 0);
    }
}

#[tokio::test]
async fn preflight_refuses_what_the_module_needs_from_outside_its_schema() {
    let db = TestDb::new().await;
    let target = db.another("target").await;
    let project = project(&db, &[]);
    up(&db, &project.manifest()).await;
    // The admin gives the module an extension type and a shared function outside its schema.
    let owner = db.role("billing_owner");
    db.exec(&format!(
        "CREATE SCHEMA ext; CREATE EXTENSION citext SCHEMA ext; GRANT USAGE ON SCHEMA ext TO {owner};
         CREATE SCHEMA shared; CREATE FUNCTION shared.next_code() RETURNS text LANGUAGE sql AS 'SELECT 1::text';
         GRANT USAGE ON SCHEMA shared TO {owner};
         SELECT lo_from_bytea(0, 'scan'); DO $$ BEGIN EXECUTE format('ALTER LARGE OBJECT %s OWNER TO {runtime}', (SELECT max(oid) FROM pg_largeobject_metadata)); END $$;",
        runtime = db.role("billing"),
    ))
    .await;
    project.write(
        "modules/billing/migrations/0003_outside.sql",
        "CREATE TABLE tags (id int PRIMARY KEY, name ext.citext, code text DEFAULT shared.next_code());\n",
    );
    let manifest = project.manifest();
    up(&db, &manifest).await;
    let mut source = db.connect().await;
    let acl = schema_acl(&mut source).await;
    let error = refused(&db, &target, &manifest).await;
    assert!(
        error.contains(&format!(
            "the module uses extension `citext` (in schema `ext`), which database `{}` does not have",
            target.database()
        )),
        "{error}"
    );
    assert!(error.contains("`CREATE EXTENSION citext SCHEMA ext`"), "{error}");
    assert!(
        error.contains("default value for column code of table billing.tags depends on function shared.next_code(), in schema `shared`, which does not move with the module"),
        "{error}"
    );
    assert!(error.contains("the module's roles own 1 large object(s)"), "{error}");
    assert_unchanged(&db, &target, &acl, false).await;
}

/// Objects of many kinds, each of which `pg_dump` and `COPY` treat in their own way.
const SHAPES: &str = r#"
CREATE TYPE status AS ENUM ('open', 'paid');
CREATE DOMAIN cents AS bigint CHECK (VALUE >= 0);
CREATE TYPE money_pair AS (amount cents, currency text);
CREATE TABLE invoices (id int NOT NULL, year int NOT NULL, status status NOT NULL DEFAULT 'open',
  total money_pair, doubled bigint GENERATED ALWAYS AS ((total).amount * 2) STORED, tags text[], doc jsonb,
  PRIMARY KEY (id, year)) PARTITION BY RANGE (year);
CREATE TABLE invoices_2025 PARTITION OF invoices FOR VALUES FROM (2025) TO (2026);
CREATE TABLE invoices_2026 PARTITION OF invoices FOR VALUES FROM (2026) TO (2027);
CREATE VIEW open_invoices AS SELECT id, year FROM invoices WHERE status = 'open';
CREATE MATERIALIZED VIEW totals_by_year AS SELECT year, count(*) AS n FROM invoices GROUP BY year;
CREATE UNIQUE INDEX totals_by_year_year ON totals_by_year (year);
CREATE TABLE private_notes (id int PRIMARY KEY, ward text NOT NULL, body text);
ALTER TABLE private_notes ENABLE ROW LEVEL SECURITY;
CREATE POLICY by_ward ON private_notes USING (ward = current_setting('app.ward', true));
CREATE TABLE keyed (code text NOT NULL, n int);
CREATE UNIQUE INDEX keyed_code ON keyed (code);
ALTER TABLE keyed REPLICA IDENTITY USING INDEX keyed_code;
"#;

#[tokio::test]
async fn partitions_generated_columns_views_domains_and_row_security_move_whole() {
    let db = TestDb::new().await;
    let target = db.another("target").await;
    let project = project(&db, &[("modules/billing/migrations/0003_shapes.sql", SHAPES)]);
    let manifest = project.manifest();
    up(&db, &manifest).await;
    let mut app = db.connect_as(&db.role("billing")).await;
    sqlx::raw_sql(
        "INSERT INTO invoices (id, year, status, total, tags, doc)
           SELECT i, 2025 + i % 2, CASE WHEN i % 3 = 0 THEN 'paid' ELSE 'open' END::status, ROW((i * 100)::bigint::cents, 'EUR')::money_pair,
                  ARRAY['a', 'b ' || i], jsonb_build_object('i', i, 'q', 'x\"y')
           FROM generate_series(1, 30) i;
         INSERT INTO keyed VALUES ('b', 2), ('a', 1), ('Z', 3);",
    )
    .execute(&mut app)
    .await
    .unwrap();
    app.close().await.unwrap();
    // The owner (not subject to its policies) writes the notes of every ward.
    db.exec(&format!(
        "SET ROLE {}; REFRESH MATERIALIZED VIEW billing.totals_by_year;
         INSERT INTO billing.private_notes VALUES (1, 'north', 'n'), (2, 'south', 's'), (3, 'north', NULL);",
        db.role("billing_owner")
    ))
    .await;
    let report = extract(&manifest, &billing(), &db.url, &target, Some("billing_db"), &copy_mode(), &|_| {})
        .await
        .unwrap_or_else(|e| panic!("extract failed: {e}"));
    let checked: Vec<&str> = report.verification.as_ref().unwrap().tables.iter().map(|t| t.table.as_str()).collect();
    for table in ["billing.invoices_2025", "billing.invoices_2026", "billing.private_notes", "billing.keyed"] {
        assert!(checked.contains(&table), "{table} not verified: {checked:?}");
    }
    let mut source = db.connect().await;
    let mut dst = moat_admin::connect(&target).await.unwrap();
    for sql in [
        "SELECT string_agg(i::text, ';' ORDER BY id, year) FROM billing.invoices i",
        "SELECT string_agg(o::text, ';' ORDER BY id) FROM billing.open_invoices o",
        "SELECT string_agg(t::text, ';' ORDER BY year) FROM billing.totals_by_year t",
        "SELECT string_agg(p::text, ';' ORDER BY id) FROM billing.private_notes p",
        "SELECT string_agg(k::text, ';' ORDER BY code) FROM billing.keyed k",
        "SELECT string_agg(polname || ' ' || pg_get_expr(polqual, polrelid), ';') FROM pg_policy WHERE polrelid = 'billing.private_notes'::regclass",
        "SELECT relrowsecurity::text FROM pg_class WHERE oid = 'billing.private_notes'::regclass",
        "SELECT relreplident::text FROM pg_class WHERE oid = 'billing.keyed'::regclass",
    ] {
        let a: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(&mut source).await.unwrap();
        let b: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(&mut dst).await.unwrap();
        assert!(a.is_some(), "{sql}");
        assert_eq!(a, b, "{sql}");
    }
    // The runtime role sees only its ward's notes in the new database too.
    let mut app = moat_admin::connect_as(&target.with_login(&db.role("billing"), None)).await.unwrap();
    let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM private_notes").fetch_one(&mut app).await.unwrap();
    assert_eq!(seen, 0);
    app.close().await.unwrap();
}

#[tokio::test]
async fn a_module_that_stopped_publishing_and_subscribing_moves_with_its_outbox_and_inbox() {
    let db = TestDb::new().await;
    let target = db.another("target").await;
    let project = project(&db, &[]);
    up(&db, &project.manifest()).await;
    write_billing(&db).await;
    // Nobody depends on billing any more, and billing on nobody: its event tables stay.
    project.write(
        "moat.toml",
        &MANIFEST
            .replace("{project}", &db.project)
            .replace("[modules.billing]\ndepends_on = [\"patients\"]\n", "[modules.billing]\n")
            .replace("[modules.reports]\ndepends_on = [\"billing\"]\n", "[modules.reports]\n"),
    );
    let manifest = project.manifest();
    assert!(!manifest.uses_events());
    let mut source = db.connect().await;
    let before = billing_state(&mut source).await;
    let report = extract(&manifest, &billing(), &db.url, &target, Some("billing_db"), &copy_mode(), &|_| {})
        .await
        .unwrap_or_else(|e| panic!("extract failed: {e}"));
    assert_eq!(report.outcome, Outcome::Moved);
    let mut dst = moat_admin::connect(&target).await.unwrap();
    assert_eq!(billing_state(&mut dst).await, before);
    let inbox: bool =
        sqlx::query_scalar("SELECT to_regclass('billing.moat_inbox') IS NOT NULL").fetch_one(&mut dst).await.unwrap();
    assert!(inbox);
}

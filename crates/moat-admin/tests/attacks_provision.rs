#![allow(clippy::unwrap_used, clippy::panic)]
//! Attacks on provisioning, written the way a module would write them (issue 10): a migration
//! that goes for moat's own tables, a contract whose SQL or views reach beyond its `reads`, a
//! runtime role that changes its own settings or holds the provisioning lock. Each asserts that
//! the attack fails or is undone and that nothing of it remains.

mod common;

use common::{clinic, up_quietly};
use moat_admin::up::up;
use moat_core::quote::{ident, literal};
use moat_testkit::{TestDb, TestProject};
use sqlx::PgConnection;

async fn up_err(db: &TestDb, project: &TestProject, attack: &str) -> String {
    match up(&db.url, &project.manifest(), &|_| {}).await {
        Ok(_) => panic!("moat up should have failed: {attack}"),
        Err(e) => e.to_string(),
    }
}

/// Triggers (not internal), rules (not a view's `_RETURN`) and policies on relations in `schemas`,
/// and whether row level security is on anywhere there: what a module owner could hang on a table.
async fn hooks(admin: &mut PgConnection, schemas: &[&str]) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT 'trigger ' || t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE NOT t.tgisinternal AND n.nspname = ANY($1) \
         UNION ALL SELECT 'rule ' || r.rulename FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE r.rulename <> '_RETURN' AND n.nspname = ANY($1) \
         UNION ALL SELECT 'policy ' || p.polname FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = ANY($1) \
         UNION ALL SELECT 'rls on ' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relrowsecurity AND n.nspname = ANY($1) ORDER BY 1",
    )
    .bind(schemas)
    .fetch_all(admin)
    .await
    .unwrap()
}

/// `schema.name kind owner` of every `moat_*` relation in the clinic's module schemas.
async fn moat_relations(admin: &mut PgConnection) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT n.nspname || '.' || c.relname || ' ' || c.relkind::text || ' ' || pg_get_userbyid(c.relowner) \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname IN ('patients', 'prescriptions', 'billing', 'contracts') AND c.relname LIKE 'moat\\_%' \
         AND c.relkind IN ('r', 'p', 'v', 'S', 'm') ORDER BY 1",
    )
    .fetch_all(admin)
    .await
    .unwrap()
}

#[tokio::test]
async fn moat_owns_module_schemas_and_its_tables() {
    let db = TestDb::new().await;
    let project = clinic(&db);
    up_quietly(&db, &project.manifest()).await;
    let mut admin = db.connect().await;
    let moat = db.role("moat");
    let schemas: Vec<(String, String)> = sqlx::query_as(
        "SELECT nspname::text, pg_get_userbyid(nspowner)::text FROM pg_namespace WHERE nspname IN ('patients', 'prescriptions', 'billing') ORDER BY 1",
    )
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert!(schemas.iter().all(|(_, owner)| *owner == moat), "{schemas:?}");
    let relations = moat_relations(&mut admin).await;
    for expected in [
        "billing.moat_inbox r",
        "billing.moat_migrations r",
        "billing.moat_subscriptions r",
        "contracts.moat_contracts r",
        "patients.moat_outbox p",
        "patients.moat_outbox_0 r",
        "patients.moat_outbox_id_seq S",
        "patients.moat_outbox_progress r",
        "prescriptions.moat_inbox_id_seq S",
    ] {
        assert!(relations.contains(&format!("{expected} {moat}")), "{expected} not owned by {moat}: {relations:?}");
    }
    assert!(relations.iter().all(|r| r.ends_with(&moat)), "{relations:?}");
    // A module's own tables stay its owner's.
    let owner: String = sqlx::query_scalar(
        "SELECT pg_get_userbyid(relowner)::text FROM pg_class WHERE oid = 'patients.patients'::regclass",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert_eq!(owner, db.role("patients_owner"));
    assert!(moat_admin::provision::compute_plan(&mut admin, &project.manifest()).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_module_owner_cannot_drop_alter_or_hang_code_on_moat_tables() {
    let db = TestDb::new().await;
    let project = clinic(&db);
    up_quietly(&db, &project.manifest()).await;
    let mut admin = db.connect().await;
    let before = moat_relations(&mut admin).await;
    let other = ident(&db.role("billing"));
    // prescriptions publishes (billing depends on it) and subscribes (it depends on patients).
    let attacks = [
        "DROP TABLE moat_outbox_progress".to_owned(),
        "DROP TABLE moat_migrations CASCADE".to_owned(),
        "ALTER TABLE moat_migrations RENAME TO old_history".to_owned(),
        "CREATE VIEW moat_migrations_v AS SELECT 1 AS version; ALTER TABLE moat_migrations RENAME TO m2".to_owned(),
        "ALTER TABLE moat_outbox ADD COLUMN extra int".to_owned(),
        "ALTER TABLE moat_outbox DETACH PARTITION moat_outbox_0".to_owned(),
        "CREATE INDEX ON moat_outbox_progress (updated_at)".to_owned(),
        "TRUNCATE moat_outbox".to_owned(),
        "TRUNCATE moat_inbox".to_owned(),
        "DELETE FROM moat_subscriptions".to_owned(),
        "SELECT setval('moat_outbox_id_seq', 1)".to_owned(),
        "CREATE FUNCTION steal() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;\n\
         CREATE TRIGGER steal BEFORE UPDATE ON moat_outbox_progress FOR EACH ROW EXECUTE FUNCTION steal()"
            .to_owned(),
        "CREATE FUNCTION steal() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;\n\
         CREATE TRIGGER steal AFTER UPDATE ON moat_inbox FOR EACH STATEMENT EXECUTE FUNCTION steal()"
            .to_owned(),
        "CREATE RULE fake AS ON UPDATE TO moat_outbox_progress DO INSTEAD NOTHING".to_owned(),
        "CREATE RULE fake AS ON INSERT TO moat_migrations DO ALSO NOTIFY moat".to_owned(),
        "ALTER TABLE moat_subscriptions ENABLE ROW LEVEL SECURITY".to_owned(),
        "CREATE POLICY hide ON moat_inbox USING (false)".to_owned(),
        format!("ALTER TABLE moat_outbox OWNER TO {other}"),
        "ALTER SCHEMA prescriptions RENAME TO prescriptions_old".to_owned(),
        "DROP SCHEMA prescriptions CASCADE".to_owned(),
        "-- moat:no-transaction\nDROP TABLE moat_outbox_progress".to_owned(),
    ];
    for attack in &attacks {
        project.write("modules/prescriptions/migrations/0002_attack.sql", &format!("{attack};\n"));
        let error = up_err(&db, &project, attack).await;
        assert!(
            error.contains("permission denied") || error.contains("must be owner") || error.contains("42501"),
            "{attack}: {error}"
        );
        std::fs::remove_file(project.dir.path().join("modules/prescriptions/migrations/0002_attack.sql")).unwrap();
        let mut admin = db.connect().await;
        assert_eq!(moat_relations(&mut admin).await, before, "{attack} changed moat's tables");
        assert_eq!(
            hooks(&mut admin, &["patients", "prescriptions", "billing"]).await,
            Vec::<String>::new(),
            "{attack}"
        );
        let applied: i64 =
            sqlx::query_scalar("SELECT count(*) FROM prescriptions.moat_migrations WHERE version = 2 AND success")
                .fetch_one(&mut admin)
                .await
                .unwrap();
        assert_eq!(applied, 0, "{attack} was recorded as applied");
        // A failed no-transaction migration leaves a failed history row: clear it for the next one.
        db.exec("DELETE FROM prescriptions.moat_migrations WHERE version = 2").await;
    }
    up_quietly(&db, &project.manifest()).await;
}

#[tokio::test]
async fn a_database_of_the_old_layout_is_converted_once() {
    let db = TestDb::new().await;
    let project = clinic(&db);
    up_quietly(&db, &project.manifest()).await;
    // The layout before moat had its own role: module owners owned their schema and moat's
    // tables in it, the contracts owner owned the ledger and the views and read every `reads`.
    let contracts = ident(&db.role("contracts"));
    let mut old = String::new();
    for module in ["patients", "prescriptions", "billing"] {
        let owner = ident(&db.role(&format!("{module}_owner")));
        old.push_str(&format!("ALTER SCHEMA {module} OWNER TO {owner};\n"));
        for table in [
            "moat_migrations",
            "moat_outbox",
            "moat_outbox_0",
            "moat_outbox_1",
            "moat_outbox_2",
            "moat_outbox_3",
            "moat_outbox_id_seq",
            "moat_outbox_progress",
            "moat_subscriptions",
            "moat_inbox",
        ] {
            old.push_str(&format!(
                "DO $$ BEGIN IF to_regclass('{module}.{table}') IS NOT NULL THEN EXECUTE 'ALTER TABLE {module}.{table} OWNER TO {}'; END IF; END $$;\n",
                owner.replace('\'', "''")
            ));
        }
    }
    old.push_str(&format!("ALTER TABLE contracts.moat_contracts OWNER TO {contracts};\n"));
    old.push_str(&format!("ALTER VIEW contracts.census OWNER TO {contracts};\n"));
    old.push_str(&format!("GRANT SELECT ON patients.patients, prescriptions.prescriptions TO {contracts};\n"));
    old.push_str(&format!("GRANT USAGE ON SCHEMA patients, prescriptions TO {contracts};\n"));
    db.exec(&old).await;

    let mut admin = db.connect().await;
    let plan = moat_admin::provision::compute_plan(&mut admin, &project.manifest()).await.unwrap().to_sql();
    assert!(plan.contains(&format!("ALTER SCHEMA \"patients\" OWNER TO {}", ident(&db.role("moat")))), "{plan}");
    assert!(plan.contains(&format!("REVOKE ALL ON TABLE \"patients\".\"patients\" FROM {contracts}")), "{plan}");
    assert!(
        plan.contains(&format!("ALTER VIEW \"contracts\".\"census\" OWNER TO {}", ident(&db.role("contract_census")))),
        "{plan}"
    );
    up_quietly(&db, &project.manifest()).await;
    assert!(moat_admin::provision::compute_plan(&mut admin, &project.manifest()).await.unwrap().is_empty());
    let relations = moat_relations(&mut admin).await;
    assert!(relations.iter().all(|r| r.ends_with(&db.role("moat"))), "{relations:?}");
    // The old contracts owner reads nothing now; the consumer still reads the view.
    let reads: bool = sqlx::query_scalar("SELECT has_table_privilege($1, 'patients.patients', 'SELECT')")
        .bind(db.role("contracts"))
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert!(!reads);
    let mut reporting = db.connect_as(&db.role("reporting")).await;
    sqlx::query("SELECT * FROM census").fetch_all(&mut reporting).await.unwrap();
}

const TWO_CONTRACTS: &str = r#"
[project]
name = "{project}"

[modules.patients]
[modules.prescriptions]

[contracts.a]
sql = "contracts/a.sql"
reads = ["patients.patients"]
readers = ["reporting"]

[contracts.b]
sql = "contracts/b.sql"
reads = ["prescriptions.prescriptions"]
readers = ["reporting"]

[consumers.reporting]
"#;

fn two_contracts(db: &TestDb, a: &str) -> TestProject {
    TestProject::new(
        &db.project,
        TWO_CONTRACTS,
        &[
            (
                "modules/patients/migrations/0001_patients.sql",
                "CREATE TABLE patients (id uuid PRIMARY KEY, ward text);\n",
            ),
            (
                "modules/prescriptions/migrations/0001_prescriptions.sql",
                "CREATE TABLE prescriptions (id bigint PRIMARY KEY, patient_id uuid);\n",
            ),
            ("contracts/a.sql", a),
            (
                "contracts/b.sql",
                "CREATE VIEW b_prescriptions AS SELECT id, patient_id FROM prescriptions.prescriptions;\n",
            ),
        ],
    )
}

/// Everything in schemas `public` and `contracts` (but the ledger and `keep`), functions outside
/// the system schemas, large objects: what a contract's SQL could leave behind.
async fn leftovers(admin: &mut PgConnection, keep: &[&str]) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname IN ('public', 'contracts') AND c.relname <> 'moat_contracts' AND c.relname <> ALL($1) \
         AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') \
         UNION ALL SELECT 'function ' || p.oid::regprocedure FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
         WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') \
         UNION ALL SELECT 'large object ' || oid FROM pg_largeobject_metadata \
         UNION ALL SELECT 'type ' || t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace \
         WHERE n.nspname IN ('public', 'contracts') AND t.typrelid = 0 AND t.typelem = 0 ORDER BY 1",
    )
    .bind(keep)
    .fetch_all(admin)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_contract_view_reading_what_only_another_contract_declares_fails_naming_it() {
    let db = TestDb::new().await;
    let project = two_contracts(
        &db,
        "CREATE VIEW a_wards AS SELECT p.ward, rx.id FROM patients.patients p JOIN prescriptions.prescriptions rx ON rx.patient_id = p.id;\n",
    );
    let error = up_err(&db, &project, "a reads b's relation").await;
    assert!(error.contains("contract `a`"), "{error}");
    assert!(error.contains("reads `prescriptions.prescriptions`"), "{error}");
    let mut admin = db.connect().await;
    assert_eq!(leftovers(&mut admin, &["b_prescriptions"]).await, Vec::<String>::new());
    let ledger: Vec<String> = sqlx::query_scalar("SELECT contract FROM contracts.moat_contracts ORDER BY 1")
        .fetch_all(&mut admin)
        .await
        .unwrap();
    assert_eq!(ledger, ["b"]);
    // Each contract owner reads exactly its own `reads`, enforced by the database.
    let mut a = db.connect_as(&db.role("contract_a")).await;
    assert!(sqlx::raw_sql("SELECT * FROM patients.patients").execute(&mut a).await.is_ok());
    let denied = sqlx::raw_sql("SELECT * FROM prescriptions.prescriptions").execute(&mut a).await.unwrap_err();
    assert_eq!(moat_admin::error::sqlstate(&denied).as_deref(), Some("42501"));

    // Fixed, it installs, and the consumer reads both contracts.
    project.write("contracts/a.sql", "CREATE VIEW a_wards AS SELECT ward FROM patients.patients;\n");
    up_quietly(&db, &project.manifest()).await;
    let mut reporting = db.connect_as(&db.role("reporting")).await;
    sqlx::raw_sql("SELECT * FROM a_wards; SELECT * FROM b_prescriptions").execute(&mut reporting).await.unwrap();
}

#[tokio::test]
async fn contract_sql_that_reaches_beyond_views_leaves_nothing() {
    let db = TestDb::new().await;
    let file = std::env::temp_dir().join(format!("moat-contract-{}", db.project));
    let view = "CREATE VIEW a_wards AS SELECT ward FROM patients.patients;";
    let patients_owner = ident(&db.role("patients_owner"));
    let attacks = [
        format!("RESET ROLE; CREATE TABLE public.stolen AS SELECT * FROM prescriptions.prescriptions; {view}"),
        format!("SET ROLE {patients_owner}; CREATE TABLE patients.stolen (id int); {view}"),
        format!("SELECT set_config('ro' || 'le', 'none', true); CREATE TABLE public.stolen (id int); {view}"),
        format!("DO $$ BEGIN PERFORM set_config('role', 'none', true); EXECUTE 'CREATE TABLE public.stolen (id int)'; END $$; {view}"),
        format!("SET SESSION AUTHORIZATION postgres; {view}"),
        format!("CREATE TABLE public.stolen (id int); {view}"),
        format!("CREATE TABLE contracts.stash (id int); {view}"),
        format!("CREATE FUNCTION contracts.f() RETURNS int LANGUAGE sql AS 'SELECT 1'; {view}"),
        "CREATE FUNCTION contracts.f() RETURNS int LANGUAGE sql AS 'SELECT 1'; CREATE VIEW a_wards AS SELECT contracts.f() AS n;".to_owned(),
        format!("CREATE TYPE contracts.mood AS ENUM ('ok'); {view}"),
        format!("SELECT lo_create(0); {view}"),
        format!("COMMIT; CREATE FUNCTION contracts.f() RETURNS int LANGUAGE sql AS 'SELECT 1'; BEGIN; {view}"),
        format!("COMMIT; CREATE VIEW contracts.sneaky AS SELECT 1 AS x; {view} SELECT 1/0;"),
        format!("COPY (SELECT 1) TO {}; {view}", literal(&file.to_string_lossy())),
        format!("CREATE ROLE {} SUPERUSER; {view}", ident(&db.role("evil"))),
    ];
    let project = two_contracts(&db, view);
    for attack in &attacks {
        project.write("contracts/a.sql", &format!("{attack}\n"));
        let error = up_err(&db, &project, attack).await;
        assert!(error.contains("contract `a`"), "{attack}: {error}");
        let mut admin = db.connect().await;
        assert_eq!(leftovers(&mut admin, &["b_prescriptions"]).await, Vec::<String>::new(), "{attack}: {error}");
        let roles: Vec<String> = sqlx::query_scalar(
            "SELECT rolname::text FROM pg_roles WHERE rolname = $1 OR (starts_with(rolname, $2) AND rolsuper)",
        )
        .bind(db.role("evil"))
        .bind(format!("{}_", db.project))
        .fetch_all(&mut admin)
        .await
        .unwrap();
        assert_eq!(roles, Vec::<String>::new(), "{attack}");
        let stolen: Option<String> =
            sqlx::query_scalar("SELECT to_regclass('patients.stolen')::text").fetch_one(&mut admin).await.unwrap();
        assert_eq!(stolen, None, "{attack}");
        let readers: bool = sqlx::query_scalar("SELECT has_table_privilege($1, 'patients.patients', 'SELECT')")
            .bind(db.role("reporting"))
            .fetch_one(&mut admin)
            .await
            .unwrap();
        assert!(!readers, "{attack}");
        assert!(!file.exists(), "{attack} wrote a file");
    }
    // What a contract does to its own role is undone, a grant it holds no option for grants
    // nothing, and the contract still installs.
    project.write(
        "contracts/a.sql",
        &format!(
            "ALTER ROLE CURRENT_USER PASSWORD 'known'; ALTER ROLE CURRENT_USER SET statement_timeout = '1ms'; \
             GRANT SELECT ON patients.patients TO {}; {view}\n",
            ident(&db.role("reporting"))
        ),
    );
    up_quietly(&db, &project.manifest()).await;
    let mut admin = db.connect().await;
    let readers: bool = sqlx::query_scalar("SELECT has_table_privilege($1, 'patients.patients', 'SELECT')")
        .bind(db.role("reporting"))
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert!(!readers);
    let (password, settings): (bool, i64) = sqlx::query_as(
        "SELECT a.rolpassword IS NOT NULL, (SELECT count(*) FROM pg_db_role_setting s WHERE s.setrole = a.oid) FROM pg_authid a WHERE a.rolname = $1",
    )
    .bind(db.role("contract_a"))
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert!(!password && settings == 0, "password kept: {password}, settings: {settings}");
    assert!(moat_admin::provision::compute_plan(&mut admin, &project.manifest()).await.unwrap().is_empty());
}

#[tokio::test]
async fn role_settings_a_runtime_role_gives_itself_are_reset_by_up() {
    let db = TestDb::new().await;
    let project = clinic(&db);
    up_quietly(&db, &project.manifest()).await;
    let mut billing = db.connect_as(&db.role("billing")).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER ROLE CURRENT_USER SET statement_timeout = '1ms'; ALTER ROLE CURRENT_USER IN DATABASE {} SET lock_timeout = '1ms'",
        ident(&db.database)
    )))
    .execute(&mut billing)
    .await
    .unwrap();
    let mut admin = db.connect().await;
    let plan = moat_admin::provision::compute_plan(&mut admin, &project.manifest()).await.unwrap().to_sql();
    assert!(plan.contains(&format!("ALTER ROLE {} RESET ALL", ident(&db.role("billing")))), "{plan}");
    assert!(plan.contains("RESET \"lock_timeout\""), "{plan}");
    up_quietly(&db, &project.manifest()).await;
    let settings: Vec<String> = sqlx::query_scalar(
        "SELECT unnest(s.setconfig) FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole WHERE r.rolname = $1 ORDER BY 1",
    )
    .bind(db.role("billing"))
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert_eq!(settings, ["search_path=billing"]);
    let mut billing = db.connect_as(&db.role("billing")).await;
    sqlx::raw_sql("SELECT pg_sleep(0.01)").execute(&mut billing).await.unwrap();
}

#[tokio::test]
async fn a_runtime_role_holding_the_provisioning_lock_makes_provision_fail_naming_it() {
    let db = TestDb::new().await;
    let project = clinic(&db);
    let manifest = project.manifest();
    up_quietly(&db, &manifest).await;
    let mut billing = db.connect_as(&db.role("billing")).await;
    sqlx::query("SELECT pg_advisory_lock(hashtextextended($1, 0))")
        .bind(moat_admin::provision::provision_lock(&manifest))
        .execute(&mut billing)
        .await
        .unwrap();
    let mut admin = db.connect().await;
    let error = moat_admin::provision::provision(&mut admin, &db.url, &manifest).await.unwrap_err();
    assert!(matches!(error, moat_admin::AdminError::LockTimeout { .. }), "{error}");
    let message = error.to_string();
    assert!(message.contains(&format!("`{}`", db.role("billing"))), "{message}");
    // Released, provisioning proceeds.
    drop(billing);
    let mut billing = db.connect_as(&db.role("billing")).await;
    let _ = sqlx::raw_sql("SELECT 1").execute(&mut billing).await;
    moat_admin::provision::provision(&mut admin, &db.url, &manifest).await.unwrap();
}

#[tokio::test]
async fn login_roles_get_a_connection_limit_from_the_manifest() {
    let db = TestDb::new().await;
    let project = clinic(&db);
    up_quietly(&db, &project.manifest()).await;
    let mut admin = db.connect().await;
    let before = limits(&mut admin, &db).await;
    assert!(before.len() >= 7, "{before:?}");
    assert!(before.iter().all(|(_, limit)| *limit == 32), "{before:?}");

    let text = std::fs::read_to_string(project.manifest_path()).unwrap();
    let text = text
        .replace("[project]\n", "[project]\nconnection_limit = 8\n")
        .replace("[modules.billing]\n", "[modules.billing]\nconnection_limit = 3\n");
    std::fs::write(project.manifest_path(), text).unwrap();
    up_quietly(&db, &project.manifest()).await;
    for (role, limit) in limits(&mut admin, &db).await {
        let want = if role == db.role("billing") { 3 } else { 8 };
        assert_eq!(limit, want, "{role}");
    }
    assert!(moat_admin::provision::compute_plan(&mut admin, &project.manifest()).await.unwrap().is_empty());
}

async fn limits(admin: &mut PgConnection, db: &TestDb) -> Vec<(String, i32)> {
    sqlx::query_as(
        "SELECT rolname::text, rolconnlimit FROM pg_roles WHERE starts_with(rolname, $1) AND rolcanlogin ORDER BY 1",
    )
    .bind(format!("{}_", db.project))
    .fetch_all(admin)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_moat_table_a_module_owner_prepared_or_hooked_is_refused() {
    let db = TestDb::new().await;
    // billing is depended on by nobody yet: it has no outbox, so its owner can create one first.
    let project = clinic(&db);
    project.write(
        "modules/billing/migrations/0002_outbox.sql",
        "CREATE FUNCTION spy() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;\n\
         CREATE TABLE moat_outbox_progress (subscriber text PRIMARY KEY, consumed_below xid8 NOT NULL, updated_at timestamptz NOT NULL DEFAULT now());\n\
         CREATE TRIGGER spy AFTER UPDATE ON moat_outbox_progress FOR EACH STATEMENT EXECUTE FUNCTION spy();\n",
    );
    // The pass after migrations finds it, before any other principal touches it.
    let error = up_err(&db, &project, "prepared moat_outbox_progress").await;
    assert!(error.contains("`billing.moat_outbox_progress` has 1 triggers"), "{error}");
    let mut admin = db.connect().await;
    let owner: String = sqlx::query_scalar(
        "SELECT pg_get_userbyid(relowner)::text FROM pg_class WHERE oid = 'billing.moat_outbox_progress'::regclass",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert_eq!(owner, db.role("billing_owner"), "nothing changed");
    // A module that starts depending on billing does not get it taken over either.
    let text = std::fs::read_to_string(project.manifest_path()).unwrap();
    std::fs::write(project.manifest_path(), format!("{text}\n[modules.insurance]\ndepends_on = [\"billing\"]\n"))
        .unwrap();
    project.mkdir("modules/insurance/migrations");
    let error = up_err(&db, &project, "prepared moat_outbox_progress, now depended on").await;
    assert!(error.contains("`billing.moat_outbox_progress` has 1 triggers"), "{error}");
    let schema: Option<String> =
        sqlx::query_scalar("SELECT to_regnamespace('insurance')::text").fetch_one(&mut admin).await.unwrap();
    assert_eq!(schema, None, "nothing changed");
}

/// A module that nobody depends on yet has no outbox; its migration plants a function under the
/// name of the one moat puts beside an outbox (whose result would label every event it publishes,
/// and which moat would run at every publish). When the manifest makes it a publisher,
/// provisioning refuses, naming the function, and creates nothing.
#[tokio::test]
async fn a_module_function_under_the_name_of_moats_cluster_function_is_refused() {
    let db = TestDb::new().await;
    let files = [
        (
            "modules/customers/migrations/0001_plant.sql",
            "CREATE TABLE customers (id bigint PRIMARY KEY);\n\
             CREATE FUNCTION moat_cluster() RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT 'elsewhere' $$;\n",
        ),
        ("modules/orders/migrations/0001_orders.sql", "CREATE TABLE orders (id bigint PRIMARY KEY);\n"),
    ];
    let alone = TestProject::new(
        &db.project,
        "[project]\nname = \"{project}\"\n[modules.customers]\n[modules.orders]\n",
        &files,
    );
    up_quietly(&db, &alone.manifest()).await;
    let publisher = TestProject::new(
        &db.project,
        "[project]\nname = \"{project}\"\n[modules.customers]\n[modules.orders]\ndepends_on = [\"customers\"]\n",
        &files,
    );
    let error = up_err(&db, &publisher, "a planted moat_cluster()").await;
    assert!(error.contains("`customers.moat_cluster` is owned by"), "{error}");
    let mut admin = db.connect().await;
    let outbox: Option<String> =
        sqlx::query_scalar("SELECT to_regclass('customers.moat_outbox')::text").fetch_one(&mut admin).await.unwrap();
    assert_eq!(outbox, None, "provisioning went ahead");
    let owner: String = sqlx::query_scalar(
        "SELECT pg_get_userbyid(proowner)::text FROM pg_proc WHERE proname = 'moat_cluster' AND pronamespace = 'customers'::regnamespace",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert_eq!(owner, db.role("customers_owner"), "moat took the planted function over");
}

/// A module that stops publishing keeps its outbox and the function the outbox's default calls:
/// provisioning leaves that function with moat and never hands it to the module's owner (who
/// could then replace what every later insert into the outbox runs).
#[tokio::test]
async fn a_module_that_stops_publishing_does_not_get_moats_cluster_function() {
    let db = TestDb::new().await;
    let files = [
        ("modules/customers/migrations/0001_customers.sql", "CREATE TABLE customers (id bigint PRIMARY KEY);\n"),
        ("modules/orders/migrations/0001_orders.sql", "CREATE TABLE orders (id bigint PRIMARY KEY);\n"),
    ];
    let publisher = TestProject::new(
        &db.project,
        "[project]\nname = \"{project}\"\n[modules.customers]\n[modules.orders]\ndepends_on = [\"customers\"]\n",
        &files,
    );
    up_quietly(&db, &publisher.manifest()).await;
    let alone = TestProject::new(
        &db.project,
        "[project]\nname = \"{project}\"\n[modules.customers]\n[modules.orders]\n",
        &files,
    );
    let mut admin = db.connect().await;
    let plan = moat_admin::provision::compute_plan(&mut admin, &alone.manifest()).await.unwrap().to_sql();
    assert!(!plan.contains("moat_cluster"), "{plan}");
    up_quietly(&db, &alone.manifest()).await;
    let owner: String = sqlx::query_scalar(
        "SELECT pg_get_userbyid(proowner)::text FROM pg_proc WHERE proname = 'moat_cluster' AND pronamespace = 'customers'::regnamespace",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert_eq!(owner, db.role("moat"));
}

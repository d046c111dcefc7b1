//! Database per service: a project whose `billing` module lives in a database of its own
//! (`[databases.billing_db]`), driven through the `moat` binary. The main database is the test's
//! own; `billing_db` is a second database on the same server, named to the child process only
//! (through `url_env`), and dropped after the test.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

use moat_admin::DatabaseUrl;
use moat_core::quote::ident;
use moat_testkit::{TestDb, TestProject};
use sqlx::Connection;

/// A second database on the test server, dropped (before the test's roles) when it goes.
struct OtherDb {
    url: DatabaseUrl,
    name: String,
}

impl OtherDb {
    async fn new(db: &TestDb) -> Self {
        let name = format!("{}_billing", db.database);
        let mut conn = moat_admin::connect(&db.url).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {}", ident(&name))))
            .execute(&mut conn)
            .await
            .unwrap();
        let _ = conn.close().await;
        Self { url: db.url.with_database(&name), name }
    }

    async fn query<T>(&self, sql: &str) -> T
    where
        T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
    {
        scalar(&self.url, sql).await
    }
}

impl Drop for OtherDb {
    fn drop(&mut self) {
        let server = self.url.with_database("postgres");
        let name = self.name.clone();
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let Ok(mut conn) = moat_admin::connect(&server).await else { return };
                let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    ident(&name)
                )))
                .execute(&mut conn)
                .await;
                let _ = conn.close().await;
            });
        });
        let _ = cleanup.join();
    }
}

async fn scalar<T>(url: &DatabaseUrl, sql: &str) -> T
where
    T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
{
    let mut conn = moat_admin::connect(url).await.unwrap();
    let value = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let _ = conn.close().await;
    value
}

/// Runs `moat` with the main database's URL on the command line and billing_db's in
/// `BILLING_DATABASE_URL` (for this child only).
fn moat(project: &TestProject, db: &TestDb, billing: &OtherDb, args: &[&str]) -> Output {
    moat_with(project, db, billing.url.expose(), args)
}

/// [`moat`] with `BILLING_DATABASE_URL` set to `billing_url`.
fn moat_with(project: &TestProject, db: &TestDb, billing_url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moat"))
        .current_dir(project.dir.path())
        .env("NO_COLOR", "1")
        .env_remove("DATABASE_URL")
        .env_remove("MOAT_DATABASE_URL")
        .env_remove("MOAT_LOG")
        .env_remove("RUST_LOG")
        .env("BILLING_DATABASE_URL", billing_url)
        .arg("--database-url")
        .arg(db.url.expose())
        .args(args)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn assert_exit(output: &Output, code: i32) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        text(&output.stdout),
        text(&output.stderr)
    );
}

fn json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&output.stdout)))
}

/// patients in the main database; billing, which depends on patients, in `billing_db`, read by
/// the `reporting` consumer through a contract there.
const SPLIT: &str = r#"[project]
name = "{project}"

[databases.billing_db]
url_env = "BILLING_DATABASE_URL"

[modules.patients]

[modules.billing]
database = "billing_db"
depends_on = ["patients"]

[contracts.charge_totals]
sql = "contracts/charge_totals.sql"
reads = ["billing.charges"]
readers = ["reporting"]

[consumers.reporting]
"#;

const FILES: &[(&str, &str)] = &[
    (
        "modules/patients/migrations/0001_patients.sql",
        "CREATE TABLE patients (id bigserial PRIMARY KEY, name text NOT NULL);\n",
    ),
    (
        "modules/billing/migrations/0001_charges.sql",
        "CREATE TABLE charges (id bigserial PRIMARY KEY, patient_id bigint NOT NULL, cents bigint NOT NULL);\n",
    ),
    (
        "contracts/charge_totals.sql",
        "CREATE VIEW charge_totals AS SELECT patient_id, sum(cents) AS cents FROM billing.charges GROUP BY patient_id;\n",
    ),
];

const SCHEMAS: &str = "SELECT coalesce(string_agg(nspname, ',' ORDER BY nspname), '') FROM pg_namespace \
                       WHERE nspname IN ('patients', 'billing', 'contracts')";

#[tokio::test]
async fn up_puts_each_module_in_its_database_and_every_command_follows() {
    let db = TestDb::new().await;
    let billing = OtherDb::new(&db).await;
    let project = TestProject::new(&db.project, SPLIT, FILES);

    // The plan of a fresh project: each database's part under a header naming it, its URL shown
    // without the password (the test server trusts local connections, so any password does).
    let exposed = billing.url.expose();
    let (scheme, rest) = exposed.split_once("://").unwrap();
    let (credentials, place) = rest.split_once('@').unwrap();
    let (user, password) = credentials.split_once(':').unwrap_or((credentials, "not-shown-anywhere"));
    let with_password = format!("{scheme}://{user}:{password}@{place}");
    let plan = moat_with(&project, &db, &with_password, &["plan"]);
    assert_exit(&plan, 0);
    let sql = text(&plan.stdout);
    assert!(sql.starts_with("-- main database (postgres://"), "{sql}");
    assert!(sql.contains(&format!("-- database billing_db (postgres://{user}:***@{place})\n")), "{sql}");
    assert!(sql.contains("CREATE SCHEMA \"billing\""), "{sql}");
    assert!(!sql.contains(password) && !text(&plan.stderr).contains(password), "{sql}");
    assert_eq!(billing.query::<String>(SCHEMAS).await, "", "plan changes nothing");

    let up = moat(&project, &db, &billing, &["up"]);
    assert_exit(&up, 0);
    let out = text(&up.stdout);
    assert!(out.contains("Migrated patients: 0001_patients.sql in the main database"), "{out}");
    assert!(out.contains("Migrated billing: 0001_charges.sql in database `billing_db`"), "{out}");
    assert!(out.contains("module schemas and their privileges (") && out.contains("in database `billing_db`"), "{out}");

    // Each module's schema, history and moat tables are in its own database, and only there.
    assert_eq!(scalar::<String>(&db.url, SCHEMAS).await, "patients");
    assert_eq!(billing.query::<String>(SCHEMAS).await, "billing,contracts");
    assert_eq!(scalar::<i64>(&db.url, "SELECT count(*) FROM patients.moat_migrations").await, 1);
    assert_eq!(billing.query::<i64>("SELECT count(*) FROM billing.moat_migrations").await, 1);
    assert!(scalar::<bool>(&db.url, "SELECT to_regclass('patients.moat_outbox') IS NOT NULL").await);
    assert!(billing.query::<bool>("SELECT to_regclass('billing.moat_subscriptions') IS NOT NULL").await);
    assert!(billing.query::<bool>("SELECT to_regclass('billing.moat_inbox') IS NOT NULL").await);
    // billing's roles hold their grants in billing_db; patients' in the main database.
    let billing_role = db.role("billing");
    let patients_role = db.role("patients");
    let usage = |role: &str, schema: &str| format!("SELECT has_schema_privilege('{role}', '{schema}', 'USAGE')");
    assert!(billing.query::<bool>(&usage(&billing_role, "billing")).await);
    assert!(scalar::<bool>(&db.url, &usage(&patients_role, "patients")).await);
    assert!(
        billing
            .query::<bool>(&format!(
                "SELECT has_table_privilege('{}', 'contracts.charge_totals', 'SELECT')",
                db.role("reporting")
            ))
            .await
    );

    let again = moat(&project, &db, &billing, &["up"]);
    assert_exit(&again, 0);
    assert!(text(&again.stdout).contains("nothing changed"), "{}", text(&again.stdout));
    let plan = moat(&project, &db, &billing, &["plan"]);
    assert_exit(&plan, 0);
    assert_eq!(text(&plan.stdout), "");
    assert_eq!(text(&plan.stderr), "");
    let plan = json(&moat(&project, &db, &billing, &["--format", "json", "plan"]));
    assert_eq!(plan["statements"].as_array().map(Vec::len), Some(0), "{plan:#}");
    let databases: Vec<&serde_json::Value> =
        plan["databases"].as_array().unwrap().iter().map(|d| &d["database"]).collect();
    assert_eq!(databases, [&serde_json::Value::Null, &serde_json::json!("billing_db")], "{plan:#}");

    let up_json = json(&moat(&project, &db, &billing, &["--format", "json", "up"]));
    assert_eq!(up_json["changed"], false, "{up_json:#}");
    assert_eq!(up_json["databases"][1]["database"], "billing_db", "{up_json:#}");
    assert_eq!(up_json["databases"][1]["changed"], false, "{up_json:#}");

    // Regression: billing_db's plan revoked patients' migrator from patients' owner (memberships
    // are per cluster), so the audit could not act as the owner and the next up put it back.
    let audit = moat(&project, &db, &billing, &["--format", "json", "audit"]);
    assert_exit(&audit, 0);
    let doc = json(&audit);
    assert_eq!(doc["summary"]["errors"], 0, "{doc:#}");
    let access = doc["access"].as_array().unwrap();
    let in_billing: Vec<_> = access.iter().filter(|r| r["database"] == "billing_db").collect();
    assert!(!in_billing.is_empty(), "{doc:#}");
    let contract = in_billing
        .iter()
        .find(|r| r["role"] == db.role("reporting").as_str() && r["relation"] == "contracts.charge_totals")
        .unwrap_or_else(|| panic!("{doc:#}"));
    assert_eq!(contract["select"], true);
    assert!(
        in_billing
            .iter()
            .filter(|r| r["relation"] == "billing.charges" && r["role"] != db.role("contract_charge_totals").as_str())
            .all(|r| r["select"] == false),
        "nobody but billing and its contract reads its table: {doc:#}"
    );
    assert!(access.iter().all(|r| r["database"].is_null() || r["database"] == "billing_db"), "{doc:#}");
    let per_database: Vec<(serde_json::Value, serde_json::Value)> =
        doc["databases"].as_array().unwrap().iter().map(|d| (d["database"].clone(), d["modules"].clone())).collect();
    assert_eq!(
        per_database,
        [
            (serde_json::Value::Null, serde_json::json!(["patients"])),
            (serde_json::json!("billing_db"), serde_json::json!(["billing"]))
        ],
        "{doc:#}"
    );
    let human = moat(&project, &db, &billing, &["audit"]);
    assert_exit(&human, 0);
    let out = text(&human.stdout);
    assert!(out.contains("access in the main database:") && out.contains("access in database `billing_db`:"), "{out}");

    let status = moat(&project, &db, &billing, &["--format", "json", "status"]);
    assert_exit(&status, 0);
    let doc = json(&status);
    let modules: Vec<(&str, serde_json::Value)> = doc["modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["module"].as_str().unwrap(), m["database"].clone()))
        .collect();
    assert_eq!(modules, [("patients", serde_json::Value::Null), ("billing", serde_json::json!("billing_db"))]);
    assert_eq!(doc["notes"].as_array().map(Vec::len), Some(0), "{doc:#}");
    let human = text(&moat(&project, &db, &billing, &["status"]).stdout);
    assert!(human.contains("billing (schema billing, database billing_db)  1 applied"), "{human}");

    // `moat migrate billing` runs where billing lives.
    project.write("modules/billing/migrations/0002_refunds.sql", "CREATE TABLE refunds (id bigserial PRIMARY KEY);\n");
    let migrate = moat(&project, &db, &billing, &["migrate", "billing"]);
    assert_exit(&migrate, 0);
    assert!(
        text(&migrate.stdout).contains("Migrated billing: 0002_refunds.sql in database `billing_db`"),
        "{}",
        text(&migrate.stdout)
    );
    assert!(billing.query::<bool>("SELECT to_regclass('billing.refunds') IS NOT NULL").await);
    assert_exit(&moat(&project, &db, &billing, &["migrate", "nobody"]), 2);

    // A finding in billing_db names its database, in both formats.
    let mut conn = moat_admin::connect(&billing.url).await.unwrap();
    sqlx::raw_sql("GRANT SELECT ON billing.charges TO PUBLIC").execute(&mut conn).await.unwrap();
    let _ = conn.close().await;
    let audit = moat(&project, &db, &billing, &["--format", "json", "audit"]);
    assert_exit(&audit, 1);
    let doc = json(&audit);
    let leak = doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["severity"] == "error" && f["object"].as_str().is_some_and(|o| o.contains("billing.charges")))
        .unwrap_or_else(|| panic!("{doc:#}"));
    assert_eq!(leak["database"], "billing_db", "{doc:#}");
    let human = moat(&project, &db, &billing, &["audit"]);
    assert_exit(&human, 1);
    assert!(text(&human.stdout).contains("in database `billing_db`"), "{}", text(&human.stdout));
}

/// A subscriber in billing_db of a publisher in the main database: the lag counts the
/// publisher's outbox (main) beyond the subscriber's cursor (billing_db); dead letters are read
/// and retried in billing_db.
#[tokio::test]
async fn events_across_databases_read_each_side_where_it_lives() {
    let db = TestDb::new().await;
    let billing = OtherDb::new(&db).await;
    let project = TestProject::new(&db.project, SPLIT, FILES);
    assert_exit(&moat(&project, &db, &billing, &["up"]), 0);
    db.exec(
        "INSERT INTO patients.moat_outbox (event_id, event_type, event_key, payload)
           VALUES (gen_random_uuid(), 'PatientRenamed', '1', '{}'), (gen_random_uuid(), 'PatientRenamed', '2', '{}'),
                  (gen_random_uuid(), 'PatientAdmitted', '3', '{}');",
    )
    .await;
    let mut conn = moat_admin::connect(&billing.url).await.unwrap();
    sqlx::raw_sql(
        "INSERT INTO billing.moat_subscriptions (publisher, lo, handled) VALUES ('patients', '1:1:', '{PatientRenamed}');
         INSERT INTO billing.moat_inbox (publisher, outbox_id, event_id, event_type, event_key, payload, published_at, state, attempts, last_error)
           VALUES ('patients', 1, '0190d2a8-0000-7000-8000-000000000002', 'PatientRenamed', '1', '{}', now(), 'dead', 8, 'boom');",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let _ = conn.close().await;

    let status = moat(&project, &db, &billing, &["--format", "json", "events", "status"]);
    assert_exit(&status, 0);
    let doc = json(&status);
    let s = &doc["subscriptions"][0];
    assert_eq!((s["subscriber"].as_str(), s["publisher"].as_str()), (Some("billing"), Some("patients")), "{doc:#}");
    assert_eq!((s["database"].as_str(), s.get("publisher_database")), (Some("billing_db"), None), "{doc:#}");
    assert_eq!(
        (s["lag_events"].as_i64(), s["ignored"].as_i64(), s["dead"].as_i64()),
        (Some(2), Some(1), Some(1)),
        "{doc:#}"
    );
    let human = text(&moat(&project, &db, &billing, &["events", "status"]).stdout);
    assert!(human.lines().any(|l| l.starts_with("billing@billing_db") && l.contains("patients")), "{human}");

    let dead = moat(&project, &db, &billing, &["events", "dead"]);
    assert_exit(&dead, 0);
    let out = text(&dead.stdout);
    assert!(out.contains("0190d2a8-0000-7000-8000-000000000002") && out.contains("billing@billing_db"), "{out}");
    let retried = moat(&project, &db, &billing, &["events", "retry", "0190d2a8-0000-7000-8000-000000000002"]);
    assert_exit(&retried, 0);
    assert_eq!(billing.query::<String>("SELECT state FROM billing.moat_inbox").await, "retry");
}

#[tokio::test]
async fn a_contract_reading_across_databases_is_refused_and_nothing_is_created() {
    let db = TestDb::new().await;
    let billing = OtherDb::new(&db).await;
    let manifest =
        SPLIT.replace("reads = [\"billing.charges\"]", "reads = [\"billing.charges\", \"patients.patients\"]");
    let project = TestProject::new(&db.project, &manifest, FILES);
    for command in ["check", "up"] {
        let output = moat(&project, &db, &billing, &[command]);
        assert_exit(&output, 2);
        let stderr = text(&output.stderr);
        assert!(stderr.contains("contract `charge_totals` reads relations in more than one database"), "{stderr}");
        assert!(stderr.contains("API composition"), "{stderr}");
    }
    assert_eq!(scalar::<String>(&db.url, SCHEMAS).await, "");
    assert_eq!(billing.query::<String>(SCHEMAS).await, "");
    let roles: i64 =
        scalar(&db.url, &format!("SELECT count(*) FROM pg_roles WHERE starts_with(rolname, '{}_')", db.project)).await;
    assert_eq!(roles, 0);
}

/// A project that ran with billing in the main database, whose manifest now puts billing in
/// billing_db: until `moat extract billing` moves it, billing is served from the main database and
/// plan, status and audit say where it is and how to move it.
#[tokio::test]
async fn a_module_the_manifest_moved_is_reported_and_served_where_it_is() {
    let db = TestDb::new().await;
    let billing = OtherDb::new(&db).await;
    let together = SPLIT
        .replace("[databases.billing_db]\nurl_env = \"BILLING_DATABASE_URL\"\n", "")
        .replace("database = \"billing_db\"\n", "");
    let project = TestProject::new(&db.project, &together, FILES);
    assert_exit(&moat(&project, &db, &billing, &["up"]), 0);
    assert_eq!(scalar::<String>(&db.url, SCHEMAS).await, "billing,contracts,patients");
    project.write("moat.toml", &SPLIT.replace("{project}", &db.project));

    let said = "module `billing` lives in the main database; the manifest puts it in database `billing_db`: \
                run `moat extract billing` to move it there";
    let plan = moat(&project, &db, &billing, &["plan"]);
    assert_exit(&plan, 0);
    assert_eq!(text(&plan.stdout), "");
    assert!(text(&plan.stderr).contains(said), "{}", text(&plan.stderr));
    let plan = json(&moat(&project, &db, &billing, &["--format", "json", "plan"]));
    assert!(plan["notes"].as_array().unwrap().iter().any(|n| n == said), "{plan:#}");

    let status = moat(&project, &db, &billing, &["--format", "json", "status"]);
    assert_exit(&status, 0);
    let doc = json(&status);
    let entry = doc["modules"].as_array().unwrap().iter().find(|m| m["module"] == "billing").unwrap();
    assert_eq!(
        (entry["database"].clone(), entry["manifest_database"].clone()),
        (serde_json::Value::Null, serde_json::json!("billing_db"))
    );
    assert!(doc["notes"].as_array().unwrap().iter().any(|n| n == said), "{doc:#}");
    assert!(text(&moat(&project, &db, &billing, &["status"]).stderr).contains(said));

    let audit = moat(&project, &db, &billing, &["--format", "json", "audit"]);
    assert_exit(&audit, 0);
    let doc = json(&audit);
    assert_eq!(doc["summary"]["errors"], 0, "{doc:#}");
    assert!(
        doc["findings"].as_array().unwrap().iter().any(|f| f["severity"] == "warning"
            && f["message"]
                == "module `billing` lives in the main database; the manifest puts it in database `billing_db`"
            && f["help"] == "run `moat extract billing` to move it there"),
        "{doc:#}"
    );

    // `moat up` keeps serving billing from the main database and creates nothing in billing_db.
    let up = moat(&project, &db, &billing, &["up"]);
    assert_exit(&up, 0);
    assert_eq!(scalar::<String>(&db.url, SCHEMAS).await, "billing,contracts,patients");
    assert_eq!(billing.query::<String>(SCHEMAS).await, "");
    project.write("modules/billing/migrations/0002_refunds.sql", "CREATE TABLE refunds (id bigserial PRIMARY KEY);\n");
    assert_exit(&moat(&project, &db, &billing, &["migrate"]), 0);
    assert!(scalar::<bool>(&db.url, "SELECT to_regclass('billing.refunds') IS NOT NULL").await);
    assert_eq!(billing.query::<String>(SCHEMAS).await, "");

    // A move under way (its journal in the source, as `moat extract` keeps it): plan and status
    // say so, and billing is still served from the main database.
    db.exec(&format!(
        "CREATE TABLE billing.moat_move (target text NOT NULL, step text NOT NULL, started_at timestamptz);
         ALTER TABLE billing.moat_move OWNER TO \"{}\";
         INSERT INTO billing.moat_move VALUES ('billing_db', 'copy', now());",
        db.role("moat")
    ))
    .await;
    let moving = "module `billing` is moving from the main database to database `billing_db` (step `copy`); \
                  it is served from the main database until the move switches: run `moat extract billing` to finish \
                  the move, or `moat extract billing --abort` to undo it";
    for command in ["plan", "status"] {
        let output = moat(&project, &db, &billing, &[command]);
        assert_exit(&output, 0);
        assert!(text(&output.stderr).contains(moving), "{command}: {}", text(&output.stderr));
        assert!(!text(&output.stderr).contains(said), "{command}: {}", text(&output.stderr));
    }
    let status = json(&moat(&project, &db, &billing, &["--format", "json", "status"]));
    let entry = status["modules"].as_array().unwrap().iter().find(|m| m["module"] == "billing").unwrap();
    assert_eq!(entry["database"], serde_json::Value::Null, "{status:#}");
}

/// With no admin URL at all, the embedded cluster serves `[databases.billing_db]` as database
/// `billing_db`, and `moat dev` prints its URL.
#[test]
fn the_embedded_default_serves_each_named_database() {
    let stamp = format!(
        "{:x}",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
            ^ u128::from(std::process::id())
    );
    let project = TestProject::new(&format!("s{}", &stamp[stamp.len() - 10..]), SPLIT, FILES);
    std::fs::set_permissions(project.dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_moat"))
            .current_dir(project.dir.path())
            .env("NO_COLOR", "1")
            .env_remove("DATABASE_URL")
            .env_remove("MOAT_DATABASE_URL")
            .env_remove("BILLING_DATABASE_URL")
            .args(args)
            .output()
            .unwrap()
    };
    let up = run(&["up"]);
    assert_exit(&up, 0);
    assert!(
        text(&up.stdout).contains("Migrated billing: 0001_charges.sql in database `billing_db`"),
        "{}",
        text(&up.stdout)
    );
    let dev = run(&["--format", "json", "dev"]);
    assert_exit(&dev, 0);
    let doc = json(&dev);
    let main = DatabaseUrl::parse(doc["url"].as_str().unwrap()).unwrap();
    let named = &doc["databases"][0];
    assert_eq!(named["database"], "billing_db", "{doc:#}");
    let billing_url = DatabaseUrl::parse(named["url"].as_str().unwrap()).unwrap();
    assert_eq!(billing_url.database(), "billing_db");
    let human = run(&["dev"]);
    let out = text(&human.stdout);
    assert!(out.contains(&format!("billing_db at {}", billing_url.expose())), "{out}");
    assert_eq!(out.lines().last(), Some(main.expose()), "{out}");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (in_main, in_billing) = runtime
        .block_on(async { (scalar::<String>(&main, SCHEMAS).await, scalar::<String>(&billing_url, SCHEMAS).await) });
    assert_eq!((in_main.as_str(), in_billing.as_str()), ("patients", "billing,contracts"));
    assert_exit(&run(&["dev", "stop"]), 0);
}

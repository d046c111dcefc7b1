//! The `moat` binary against a real PostgreSQL: exit codes, output, concurrency, the embedded default.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

use moat_testkit::{TestDb, TestProject};

fn moat(project: &TestProject, url: Option<&str>, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_moat"));
    command
        .current_dir(project.dir.path())
        .env("NO_COLOR", "1")
        .env_remove("DATABASE_URL")
        .env_remove("MOAT_DATABASE_URL")
        .env_remove("MOAT_LOG")
        .env_remove("RUST_LOG");
    if let Some(url) = url {
        command.arg("--database-url").arg(url);
    }
    command.args(args).output().unwrap()
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

const TWO_MODULES: &str =
    "[project]\nname = \"{project}\"\n[modules.customers]\n[modules.orders]\ndepends_on = [\"customers\"]\n";

fn two_modules(db: &TestDb) -> TestProject {
    TestProject::new(
        &db.project,
        TWO_MODULES,
        &[
            (
                "modules/customers/migrations/0001_customers.sql",
                "CREATE TABLE customers (id bigserial PRIMARY KEY, name text NOT NULL);\n",
            ),
            (
                "modules/orders/migrations/0001_orders.sql",
                "CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id bigint NOT NULL);\n",
            ),
        ],
    )
}

#[tokio::test]
async fn up_twice_then_plan_prints_nothing() {
    let db = TestDb::new().await;
    let project = two_modules(&db);
    let url = db.url.expose().to_owned();
    let first = moat(&project, Some(&url), &["up"]);
    assert_exit(&first, 0);
    assert!(text(&first.stdout).contains("Migrated customers: 0001_customers.sql"), "{}", text(&first.stdout));
    let second = moat(&project, Some(&url), &["up"]);
    assert_exit(&second, 0);
    assert!(text(&second.stdout).contains("nothing changed"), "{}", text(&second.stdout));
    assert!(!text(&second.stdout).contains("Provisioned"), "{}", text(&second.stdout));
    let plan = moat(&project, Some(&url), &["plan"]);
    assert_exit(&plan, 0);
    assert_eq!(text(&plan.stdout), "");
    let json = moat(&project, Some(&url), &["--format", "json", "up"]);
    assert_exit(&json, 0);
    let doc: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(doc["changed"], false);
    assert_eq!(doc["statements"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn plan_shows_the_sql_and_provision_runs_it() {
    let db = TestDb::new().await;
    let project = two_modules(&db);
    let url = db.url.expose().to_owned();
    let plan = moat(&project, Some(&url), &["plan"]);
    assert_exit(&plan, 0);
    let sql = text(&plan.stdout);
    let owner = format!("CREATE ROLE \"{}_customers_owner\" NOLOGIN", db.project);
    assert!(sql.contains(&owner), "{sql}");
    assert!(sql.contains(&format!("CREATE SCHEMA \"customers\" AUTHORIZATION \"{}_moat\";", db.project)), "{sql}");
    assert!(sql.contains("REVOKE ALL ON SCHEMA \"public\" FROM PUBLIC;"), "{sql}");
    assert!(sql.contains(&format!("ALTER ROLE \"{}_orders\" IN DATABASE", db.project)), "{sql}");
    // plan changed nothing
    let mut conn = db.connect().await;
    let schemas: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_namespace WHERE nspname IN ('customers', 'orders')")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(schemas, 0);
    assert_exit(&moat(&project, Some(&url), &["provision"]), 0);
    assert_exit(&moat(&project, Some(&url), &["provision"]), 0);
    assert_eq!(text(&moat(&project, Some(&url), &["plan"]).stdout), "");
}

#[tokio::test]
async fn two_processes_migrating_at_once_apply_each_migration_once() {
    let db = TestDb::new().await;
    let mut files: Vec<(String, String)> = Vec::new();
    for i in 1..=10 {
        files.push((
            format!("modules/ledger/migrations/{i:04}_step_{i}.sql"),
            format!("CREATE TABLE step_{i} (id int);\nSELECT pg_sleep(0.02);\n"),
        ));
    }
    let refs: Vec<(&str, &str)> = files.iter().map(|(p, t)| (p.as_str(), t.as_str())).collect();
    let project =
        TestProject::new(&db.project, "[project]\nname = \"{project}\"\n[modules.ledger]\n[modules.other]\n", &refs);
    project.mkdir("modules/other/migrations");
    let url = db.url.expose().to_owned();
    assert_exit(&moat(&project, Some(&url), &["provision"]), 0);

    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_moat"))
            .current_dir(project.dir.path())
            .env("NO_COLOR", "1")
            .args(["--database-url", &url, "migrate"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert_exit(&a, 0);
    assert_exit(&b, 0);
    let applied_a = text(&a.stdout).matches("Migrated ledger").count();
    let applied_b = text(&b.stdout).matches("Migrated ledger").count();
    assert_eq!(applied_a + applied_b, 10, "a:\n{}\nb:\n{}", text(&a.stdout), text(&b.stdout));

    let mut conn = db.connect().await;
    let versions: Vec<i64> = sqlx::query_scalar("SELECT version FROM ledger.moat_migrations ORDER BY version")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(versions, (1..=10).collect::<Vec<i64>>());
    let status = moat(&project, Some(&url), &["--format", "json", "status"]);
    assert_exit(&status, 0);
    let doc: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let states: Vec<&str> =
        doc["modules"][0]["migrations"].as_array().unwrap().iter().map(|m| m["state"].as_str().unwrap()).collect();
    assert_eq!(states, vec!["applied"; 10]);
}

#[tokio::test]
async fn names_that_smuggle_sql_are_rejected_and_nothing_is_created() {
    let db = TestDb::new().await;
    let project = TestProject::new(
        &db.project,
        "[project]\nname = \"{project}\"\n\n[modules.'patients\"; DROP SCHEMA x; --']\n",
        &[],
    );
    let url = db.url.expose().to_owned();
    for command in ["up", "provision", "plan", "migrate"] {
        let output = moat(&project, Some(&url), &[command]);
        assert_exit(&output, 2);
        let stderr = text(&output.stderr);
        assert!(stderr.contains("moat.toml:4:10: `modules.patients\"; DROP SCHEMA x; --`"), "{stderr}");
        assert!(stderr.contains("is not a valid module name"), "{stderr}");
    }
    let mut conn = db.connect().await;
    let roles: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_roles WHERE starts_with(rolname, $1)")
        .bind(&db.project)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(roles, 0);
    let public_connect: bool =
        sqlx::query_scalar("SELECT has_database_privilege('public', current_database(), 'CONNECT')")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert!(public_connect, "an invalid manifest must change nothing");
}

#[tokio::test]
async fn an_edited_migration_fails_migrate_and_shows_in_status() {
    let db = TestDb::new().await;
    let project = two_modules(&db);
    let url = db.url.expose().to_owned();
    assert_exit(&moat(&project, Some(&url), &["up"]), 0);
    project.write("modules/orders/migrations/0001_orders.sql", "CREATE TABLE orders (id bigserial PRIMARY KEY);\n");
    let migrate = moat(&project, Some(&url), &["migrate"]);
    assert_exit(&migrate, 2);
    assert!(text(&migrate.stderr).contains("`modules/orders/migrations/0001_orders.sql`"), "{}", text(&migrate.stderr));
    let status = moat(&project, Some(&url), &["status"]);
    assert_exit(&status, 1);
    let out = text(&status.stdout);
    assert!(out.contains("orders (schema orders)  1 modified"), "{out}");
    assert!(out.lines().any(|l| l.contains("0001_orders") && l.contains("modified")), "{out}");
}

#[tokio::test]
async fn usage_errors_exit_2() {
    let db = TestDb::new().await;
    let project = two_modules(&db);
    let url = db.url.expose().to_owned();
    let unknown = moat(&project, Some(&url), &["migrate", "billing"]);
    assert_exit(&unknown, 2);
    assert!(text(&unknown.stderr).contains("unknown module `billing`"), "{}", text(&unknown.stderr));
    assert_exit(&moat(&project, Some(&url), &["frobnicate"]), 2);
    let bad_url = moat(&project, Some("mysql://nope"), &["plan"]);
    assert_exit(&bad_url, 2);
    let new = moat(&project, None, &["new", "orders", "Add status column"]);
    assert_exit(&new, 0);
    assert!(
        text(&new.stdout).contains("modules/orders/migrations/0002_add_status_column.sql"),
        "{}",
        text(&new.stdout)
    );
    assert!(project.dir.path().join("modules/orders/migrations/0002_add_status_column.sql").is_file());
}

#[test]
fn the_embedded_default_starts_migrates_and_stops() {
    let project = TestProject::new(
        &format!("e{}", &uuid_like()[..10]),
        TWO_MODULES,
        &[
            ("modules/customers/migrations/0001_customers.sql", "CREATE TABLE customers (id bigserial PRIMARY KEY);\n"),
            ("modules/orders/migrations/0001_orders.sql", "CREATE TABLE orders (id bigserial PRIMARY KEY);\n"),
        ],
    );
    // When the tests run as root the cluster runs as `postgres`, who must be able to enter the folder.
    std::fs::set_permissions(project.dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let up = moat(&project, None, &["up"]);
    assert_exit(&up, 0);
    let out = text(&up.stdout);
    assert!(out.contains("Started embedded PostgreSQL"), "{out}");
    assert!(out.contains("Migrated orders: 0001_orders.sql"), "{out}");
    assert!(project.dir.path().join(".moat/pg/data/PG_VERSION").is_file());
    let again = moat(&project, None, &["up"]);
    assert_exit(&again, 0);
    assert!(text(&again.stdout).contains("Using embedded PostgreSQL"), "{}", text(&again.stdout));
    let dev = moat(&project, None, &["dev"]);
    assert_exit(&dev, 0);
    assert!(
        text(&dev.stdout).lines().last().unwrap().starts_with("postgres://postgres@127.0.0.1:"),
        "{}",
        text(&dev.stdout)
    );
    assert_exit(&moat(&project, None, &["dev", "stop"]), 0);
    let stopped = moat(&project, None, &["dev", "stop"]);
    assert!(text(&stopped.stdout).contains("Not running"), "{}", text(&stopped.stdout));
}

fn uuid_like() -> String {
    format!(
        "{:x}{:x}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    )
}

#[tokio::test]
async fn audit_prints_the_matrix_fails_on_a_leak_and_honours_the_baseline() {
    let db = TestDb::new().await;
    let project = two_modules(&db);
    let url = db.url.expose().to_owned();
    assert_exit(&moat(&project, Some(&url), &["up"]), 0);
    let clean = moat(&project, Some(&url), &["audit"]);
    assert_exit(&clean, 0);
    let out = text(&clean.stdout);
    let orders_row = out.lines().find(|l| l.starts_with(&db.role("orders"))).unwrap();
    assert_eq!(orders_row.split_whitespace().collect::<Vec<_>>(), [db.role("orders").as_str(), "denied", "own"]);

    let json = moat(&project, Some(&url), &["--format", "json", "audit"]);
    assert_exit(&json, 0);
    let doc: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(doc["version"], 1);
    assert_eq!(doc["summary"]["errors"], 0);
    let row = doc["access"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["role"] == db.role("orders") && r["relation"] == "customers.customers")
        .unwrap();
    assert_eq!(
        (row["select"].as_bool(), row["insert"].as_bool(), row["update"].as_bool(), row["delete"].as_bool()),
        (Some(false), Some(false), Some(false), Some(false))
    );

    db.exec(&format!("GRANT pg_read_all_data TO \"{}\"", db.role("orders"))).await;
    let leak = moat(&project, Some(&url), &["audit"]);
    assert_exit(&leak, 1);
    let out = text(&leak.stdout);
    assert!(out.contains("error[access-leak]"), "{out}");
    let orders_row = out.lines().find(|l| l.starts_with(&db.role("orders"))).unwrap();
    assert!(orders_row.contains("LEAK"), "{out}");
    // `moat up` repairs what moat manages: the membership is revoked, the audit is clean.
    assert_exit(&moat(&project, Some(&url), &["up"]), 0);
    assert_exit(&moat(&project, Some(&url), &["audit"]), 0);
    // A grant to a role moat does not manage is left alone, and `up` fails on it.
    let outsider = db.role("outsider");
    db.exec(&format!("CREATE ROLE \"{outsider}\" NOLOGIN; GRANT USAGE ON SCHEMA customers TO \"{outsider}\"")).await;
    let up = moat(&project, Some(&url), &["up"]);
    assert_exit(&up, 1);
    assert!(
        text(&up.stdout).contains(&format!("`{outsider}` holds USAGE on schema `customers`")),
        "{}",
        text(&up.stdout)
    );
    db.exec(&format!("REVOKE USAGE ON SCHEMA customers FROM \"{outsider}\"; DROP ROLE \"{outsider}\"")).await;
    db.exec(&format!("GRANT pg_read_all_data TO \"{}\"", db.role("orders"))).await;

    // Adopt: the baseline accepts today's findings; a new one fails; a fixed one is stale.
    assert_exit(&moat(&project, Some(&url), &["audit", "--write-baseline"]), 0);
    assert!(project.dir.path().join("moat-baseline.toml").is_file());
    assert_exit(&moat(&project, Some(&url), &["audit"]), 0);
    db.exec("CREATE TABLE public.stray (id int)").await;
    db.exec("GRANT SELECT ON customers.customers TO PUBLIC").await;
    let new = moat(&project, Some(&url), &["audit"]);
    assert_exit(&new, 1);
    let out = text(&new.stdout);
    assert!(out.contains("PUBLIC holds SELECT on table `customers.customers`"), "{out}");
    assert!(!out.contains("pg_read_all_data"), "old findings must not be shown again:\n{out}");
    db.exec("REVOKE SELECT ON customers.customers FROM PUBLIC").await;
    db.exec(&format!("REVOKE pg_read_all_data FROM \"{}\"", db.role("orders"))).await;
    let fixed = moat(&project, Some(&url), &["audit"]);
    assert_exit(&fixed, 0);
    assert!(text(&fixed.stderr).contains("no longer occurs; rewrite moat-baseline.toml"), "{}", text(&fixed.stderr));
}

#[tokio::test]
async fn events_status_dead_and_retry() {
    let db = TestDb::new().await;
    let project = two_modules(&db);
    let url = db.url.expose().to_owned();
    assert_exit(&moat(&project, Some(&url), &["up"]), 0);
    // What a dispatcher leaves behind: a cursor at the start, two outbox events, one dead letter.
    db.exec(
        "INSERT INTO orders.moat_subscriptions (publisher, lo, handled) VALUES ('customers', '1:1:', '{CustomerRenamed}');
         INSERT INTO customers.moat_outbox (event_id, event_type, event_key, payload)
           VALUES (gen_random_uuid(), 'CustomerRenamed', '1', '{}'), (gen_random_uuid(), 'CustomerRenamed', '2', '{}');
         INSERT INTO orders.moat_inbox (publisher, outbox_id, event_id, event_type, event_key, payload, published_at, state, attempts, last_error)
           VALUES ('customers', 1, '0190d2a8-0000-7000-8000-000000000001', 'CustomerRenamed', '1', '{}', now(), 'dead', 8, 'boom');",
    )
    .await;
    let status = moat(&project, Some(&url), &["--format", "json", "events", "status"]);
    assert_exit(&status, 0);
    let doc: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let s = &doc["subscriptions"][0];
    assert_eq!((s["subscriber"].as_str(), s["publisher"].as_str()), (Some("orders"), Some("customers")));
    assert_eq!((s["lag_events"].as_i64(), s["dead"].as_i64()), (Some(2), Some(1)));
    let human = moat(&project, Some(&url), &["events", "status"]);
    assert!(
        text(&human.stdout).lines().any(|l| l.starts_with("orders") && l.contains("customers")),
        "{}",
        text(&human.stdout)
    );

    let dead = moat(&project, Some(&url), &["events", "dead"]);
    assert_exit(&dead, 0);
    let out = text(&dead.stdout);
    assert!(
        out.contains("0190d2a8-0000-7000-8000-000000000001")
            && out.contains("customers.CustomerRenamed")
            && out.contains("boom"),
        "{out}"
    );

    assert_exit(&moat(&project, Some(&url), &["events", "retry", "not-a-uuid"]), 2);
    let retried = moat(&project, Some(&url), &["events", "retry", "0190d2a8-0000-7000-8000-000000000001"]);
    assert_exit(&retried, 0);
    assert!(text(&retried.stdout).contains("1 dead letter for retry"), "{}", text(&retried.stdout));
    let mut conn = db.connect().await;
    let state: (String, i32) =
        sqlx::query_as("SELECT state, attempts FROM orders.moat_inbox").fetch_one(&mut conn).await.unwrap();
    assert_eq!(state, ("retry".to_owned(), 0));
    assert_exit(&moat(&project, Some(&url), &["events", "retry", "--all"]), 0);
}

#[test]
fn two_processes_starting_the_embedded_cluster_at_once_share_it() {
    let project = TestProject::new(
        &format!("d{}", &uuid_like()[..10]),
        "[project]\nname = \"{project}\"\n[modules.customers]\n",
        &[("modules/customers/migrations/0001_customers.sql", "CREATE TABLE customers (id bigserial PRIMARY KEY);\n")],
    );
    std::fs::set_permissions(project.dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_moat"))
            .current_dir(project.dir.path())
            .env("NO_COLOR", "1")
            .env_remove("DATABASE_URL")
            .env_remove("MOAT_DATABASE_URL")
            .args(["--format", "json", "dev"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert_exit(&a, 0);
    assert_exit(&b, 0);
    let url = |o: &Output| {
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["url"].as_str().unwrap().to_owned()
    };
    assert_eq!(url(&a), url(&b));
    let started =
        |o: &Output| serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["started"].as_bool().unwrap();
    assert!(started(&a) ^ started(&b), "exactly one of them starts it");
    assert_exit(&moat(&project, None, &["up"]), 0);
    assert_exit(&moat(&project, None, &["dev", "stop"]), 0);
}

#[tokio::test]
async fn audit_reads_function_bodies_with_the_sql_analysis() {
    let db = TestDb::new().await;
    let project = two_modules(&db);
    let url = db.url.expose().to_owned();
    assert_exit(&moat(&project, Some(&url), &["up"]), 0);
    // PL/pgSQL bodies are not in pg_depend: only the analysis of the body sees this read.
    db.exec(&format!(
        "CREATE FUNCTION orders.customer_count() RETURNS bigint LANGUAGE plpgsql AS $$ BEGIN RETURN (SELECT count(*) FROM customers.customers); END $$;
         ALTER FUNCTION orders.customer_count() OWNER TO \"{}\";
         REVOKE EXECUTE ON FUNCTION orders.customer_count() FROM PUBLIC;
         GRANT EXECUTE ON FUNCTION orders.customer_count() TO \"{}\";",
        db.role("orders_owner"),
        db.role("orders")
    ))
    .await;
    let audit = moat(&project, Some(&url), &["audit"]);
    assert_exit(&audit, 1);
    let out = text(&audit.stdout);
    assert!(out.contains("error[cross-module-reference]"), "{out}");
    assert!(out.contains("routine `orders.customer_count()`"), "{out}");
    assert!(out.contains("customers.customers"), "{out}");
}

#[tokio::test]
async fn audit_reads_the_bodies_of_claimed_routines_in_public() {
    let db = TestDb::new().await;
    let project = two_modules(&db);
    project.write(
        "moat.toml",
        &TWO_MODULES
            .replace("{project}", &db.project)
            .replace("[modules.orders]\n", "[modules.orders]\nclaims = [\"public.legacy_order*\"]\n")
            .replace("[modules.customers]\n", "[modules.customers]\nclaims = [\"public.legacy_customers\"]\n"),
    );
    let url = db.url.expose().to_owned();
    assert_exit(&moat(&project, Some(&url), &["up"]), 0);
    // A brownfield database: tables and routines in public, made by the operator.
    db.exec(
        "CREATE TABLE public.legacy_customers (id serial PRIMARY KEY);
         CREATE TABLE public.legacy_orders (id serial PRIMARY KEY, customer_id int);
         CREATE FUNCTION public.legacy_order_total() RETURNS bigint LANGUAGE plpgsql AS $$ BEGIN RETURN (SELECT count(*) FROM public.legacy_orders); END $$;
         CREATE FUNCTION public.legacy_order_customers() RETURNS bigint LANGUAGE plpgsql AS $$ BEGIN RETURN (SELECT count(*) FROM public.legacy_customers); END $$;
         CREATE FUNCTION public.unclaimed_count() RETURNS bigint LANGUAGE plpgsql AS $$ BEGIN RETURN (SELECT count(*) FROM public.legacy_customers); END $$;",
    )
    .await;
    let audit = moat(&project, Some(&url), &["--format", "json", "audit"]);
    assert_exit(&audit, 1);
    let doc: serde_json::Value = serde_json::from_slice(&audit.stdout).unwrap();
    let crossings: Vec<(String, String)> = doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["rule"] == "cross-module-reference")
        .map(|f| {
            (f["module"].as_str().unwrap_or_default().to_owned(), f["object"].as_str().unwrap_or_default().to_owned())
        })
        .collect();
    assert_eq!(crossings.len(), 1, "{doc:#}");
    assert_eq!(crossings[0].0, "orders");
    assert!(crossings[0].1.starts_with("public.legacy_order_customers() -> "), "{doc:#}");
    assert!(crossings[0].1.contains("legacy_customers"), "{doc:#}");
}

/// The clinic example as shipped (manifest, migrations, contract and the Rust sources `moat check`
/// reads), renamed to the test's project: `moat check` finds nothing, and on a real database
/// `moat up` (which ends with the audit) and `moat audit` find nothing either, with every
/// cross-module cell of the access matrix denied and the census contract allowed to `reporting`.
#[tokio::test]
async fn the_clinic_example_checks_and_audits_clean() {
    let db = TestDb::new().await;
    let project = TestProject::new(&db.project, "", &[]);
    moat_testkit::copy_dir(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/clinic"),
        project.dir.path(),
    );
    let manifest = std::fs::read_to_string(project.manifest_path()).unwrap();
    assert!(manifest.contains("name = \"clinic\""), "the clinic's manifest names its project `clinic`");
    std::fs::write(
        project.manifest_path(),
        manifest.replace("name = \"clinic\"", &format!("name = \"{}\"", db.project)),
    )
    .unwrap();
    let url = db.url.expose().to_owned();

    let check = moat(&project, None, &["--format", "json", "check"]);
    assert_exit(&check, 0);
    let doc: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    assert_eq!(doc["findings"].as_array().map(Vec::len), Some(0), "{doc:#}");
    let files = doc["summary"]["files"].as_u64().unwrap();
    assert!(files > 9, "moat check read the migrations, the contract and the Rust sources: {doc:#}");

    let up = moat(&project, Some(&url), &["up"]);
    assert_exit(&up, 0);
    let audit = moat(&project, Some(&url), &["--format", "json", "audit"]);
    assert_exit(&audit, 0);
    let doc: serde_json::Value = serde_json::from_slice(&audit.stdout).unwrap();
    assert_eq!(doc["findings"].as_array().map(Vec::len), Some(0), "{doc:#}");
    let modules = ["patients", "prescriptions", "lab_results", "billing"];
    let access = doc["access"].as_array().unwrap();
    for module in modules {
        let role = db.role(module);
        let cross: Vec<_> = access
            .iter()
            .filter(|r| r["role"] == role.as_str())
            .filter(|r| r["relation"].as_str().is_some_and(|rel| !rel.starts_with(&format!("{module}."))))
            .collect();
        assert!(!cross.is_empty(), "{role} has rows for other modules' relations");
        for row in cross {
            let any = ["select", "insert", "update", "delete"].iter().any(|p| row[p] == true);
            assert!(!any, "{role} reaches another module: {row}");
        }
    }
    let reporting = db.role("reporting");
    let census = access
        .iter()
        .find(|r| r["role"] == reporting.as_str() && r["relation"] == "contracts.ward_census")
        .unwrap_or_else(|| panic!("no access row for the census: {doc:#}"));
    assert_eq!(census["select"], true);
    assert!(
        access
            .iter()
            .filter(|r| r["role"] == reporting.as_str() && r["relation"] != "contracts.ward_census")
            .all(|r| ["select", "insert", "update", "delete"].iter().all(|p| r[p] == false)),
        "the reporting role reads nothing but its contract: {doc:#}"
    );
}

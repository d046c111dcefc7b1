//! Issue 10's attacks on the audit through the `moat` binary: each makes `moat audit` exit 1 and
//! shows in `--format json` (the library-level tests are in moat-admin's `attacks_audit.rs`).
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

use moat_testkit::{TestDb, TestProject};

const TWO_MODULES: &str =
    "[project]\nname = \"{project}\"\n[modules.customers]\n[modules.orders]\ndepends_on = [\"customers\"]\n";

fn project(db: &TestDb) -> TestProject {
    TestProject::new(
        &db.project,
        TWO_MODULES,
        &[
            (
                "modules/customers/migrations/0001_customers.sql",
                "CREATE TABLE customers (id bigserial PRIMARY KEY, name text NOT NULL, email text);\n",
            ),
            (
                "modules/orders/migrations/0001_orders.sql",
                "CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id bigint NOT NULL);\n",
            ),
        ],
    )
}

fn moat(project: &TestProject, url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moat"))
        .current_dir(project.dir.path())
        .env("NO_COLOR", "1")
        .env_remove("DATABASE_URL")
        .env_remove("MOAT_DATABASE_URL")
        .env_remove("MOAT_LOG")
        .env_remove("RUST_LOG")
        .arg("--database-url")
        .arg(url)
        .args(args)
        .output()
        .unwrap()
}

/// `moat audit --format json`, asserting exit code 1.
fn audit_fails(project: &TestProject, url: &str) -> serde_json::Value {
    let out = moat(project, url, &["--format", "json", "audit"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn rules(doc: &serde_json::Value) -> Vec<String> {
    doc["findings"].as_array().unwrap().iter().map(|f| f["rule"].as_str().unwrap().to_owned()).collect()
}

async fn up(db: &TestDb) -> (TestProject, String) {
    let project = project(db);
    let url = db.url.expose().to_owned();
    let out = moat(&project, &url, &["up"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    (project, url)
}

#[tokio::test]
async fn a_column_grant_across_modules_fails_the_audit_and_shows_in_json() {
    let db = TestDb::new().await;
    let (project, url) = up(&db).await;
    let orders = db.role("orders");
    db.exec(&format!(
        // moat owns the schema, so USAGE on it comes from a superuser's hand; the column grant is the owner's.
        "GRANT USAGE ON SCHEMA customers TO \"{orders}\"; SET ROLE \"{}\"; GRANT SELECT (email) ON customers.customers TO \"{orders}\"; RESET ROLE",
        db.role("customers_owner")
    ))
    .await;
    let doc = audit_fails(&project, &url);
    assert!(rules(&doc).contains(&"grant-beyond-manifest".to_owned()), "{doc}");
    assert!(rules(&doc).contains(&"access-leak".to_owned()), "{doc}");
    let row = doc["access"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["role"] == orders && r["relation"] == "customers.customers")
        .unwrap();
    assert_eq!(row["select"], true, "{row}");
    assert_eq!(row["leaks"], serde_json::json!(["SELECT (email)"]), "{row}");
}

#[tokio::test]
async fn a_large_object_and_a_role_setting_fail_the_audit() {
    let db = TestDb::new().await;
    let (project, url) = up(&db).await;
    let orders = db.role("orders");
    let mut conn = db.connect_as(&orders).await;
    let oid: i64 = sqlx::query_scalar("SELECT lo_from_bytea(0, 'x')::bigint").fetch_one(&mut conn).await.unwrap();
    drop(conn);
    db.exec(&format!("ALTER ROLE \"{orders}\" SET statement_timeout = '1ms'")).await;
    let doc = audit_fails(&project, &url);
    db.exec(&format!("ALTER ROLE \"{orders}\" RESET statement_timeout")).await;
    let findings = doc["findings"].as_array().unwrap();
    assert!(
        findings.iter().any(|f| f["rule"] == "large-object" && f["object"] == format!("large object {oid}")),
        "{doc}"
    );
    assert!(findings.iter().any(|f| f["rule"] == "unmanaged-role-setting"), "{doc}");
    // The probe still ran as the role, whatever its statement_timeout says.
    assert!(!rules(&doc).contains(&"probe-incomplete".to_owned()), "{doc}");
    assert!(doc["probed"].as_array().unwrap().iter().any(|p| p["role"] == orders && p["method"] == "login"), "{doc}");
}

#[tokio::test]
async fn a_role_the_audit_cannot_log_in_as_fails_the_audit() {
    let db = TestDb::new().await;
    let (project, url) = up(&db).await;
    let orders = db.role("orders");
    db.exec(&format!("ALTER ROLE \"{orders}\" NOLOGIN")).await;
    let doc = audit_fails(&project, &url);
    let finding = doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["rule"] == "probe-incomplete" && f["object"] == orders.as_str())
        .unwrap_or_else(|| panic!("{doc}"));
    let variable = format!("MOAT_PASSWORD_{}", orders.to_ascii_uppercase());
    assert!(finding["help"].as_str().unwrap().contains(&variable), "{finding}");
    assert!(doc["access"].as_array().unwrap().iter().all(|r| r["role"] != orders.as_str()), "{doc}");
}

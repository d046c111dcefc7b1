#![allow(clippy::unwrap_used)]
//! Attacks of issue 10 on the audit, written the way a module would write them (a grant in a
//! migration run as the module's owner, a trigger, a large object made by a runtime role, a
//! held lock, a role setting), each asserting that the audit reports it (exit 1: an error
//! finding) and shows it in the JSON of the access rows, and that nothing of it ran.

mod common;

use common::{clinic, up_quietly};
use moat_admin::audit::{AuditOptions, AuditReport, ProbeMethod, audit};
use moat_core::findings::Severity;
use moat_testkit::{TestDb, TestProject};
use sqlx::Connection;

async fn fresh() -> (TestDb, TestProject) {
    let db = TestDb::new().await;
    let project = clinic(&db);
    up_quietly(&db, &project.manifest()).await;
    (db, project)
}

async fn run(db: &TestDb, project: &TestProject) -> AuditReport {
    audit(&db.url, &project.manifest(), AuditOptions::default()).await.unwrap()
}

fn describe(report: &AuditReport) -> String {
    report.findings.iter().map(|f| format!("{} {:?} {}", f.rule, f.object, f.message)).collect::<Vec<_>>().join("\n")
}

fn finding<'r>(report: &'r AuditReport, rule: &str, object: &str) -> &'r moat_core::findings::Finding {
    report
        .findings
        .iter()
        .find(|f| f.rule == rule && f.object.as_deref() == Some(object))
        .unwrap_or_else(|| panic!("no {rule} on {object} in\n{}", describe(report)))
}

/// The access row of `role` on `relation`, as `moat audit --format json` prints it.
fn access_json(report: &AuditReport, role: &str, relation: &str) -> serde_json::Value {
    let row = report
        .access
        .iter()
        .find(|a| a.role == role && a.relation == relation)
        .unwrap_or_else(|| panic!("no access row {role} -> {relation}"));
    serde_json::to_value(row).unwrap()
}

/// SQL run as a module's owner, as its migrations run.
async fn as_owner(db: &TestDb, module: &str, sql: &str) {
    db.exec(&format!("SET ROLE \"{}\"; {sql}; RESET ROLE", db.role(&format!("{module}_owner")))).await;
}

async fn scalar_i64(db: &TestDb, sql: &str) -> i64 {
    let mut conn = db.connect().await;
    let value: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned())).fetch_one(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    value
}

#[tokio::test]
async fn a_column_grant_to_another_modules_runtime_is_found_probed_and_revoked() {
    let (db, project) = fresh().await;
    let billing = db.role("billing");
    // A patients migration hands billing one column.
    // moat owns the schema, so its module's owner cannot hand out USAGE on it: that part comes from
    // a superuser's hand; the column grant is the owner's.
    db.exec(&format!("GRANT USAGE ON SCHEMA patients TO \"{billing}\"")).await;
    as_owner(&db, "patients", &format!("GRANT INSERT (name) ON patients.patients TO \"{billing}\"")).await;
    let report = run(&db, &project).await;
    assert!(report.has_errors());
    let grant = finding(&report, "grant-beyond-manifest", "patients.patients.name");
    assert!(
        grant.message.contains(&format!("`{billing}` holds INSERT on column `patients.patients.name`")),
        "{}",
        grant.message
    );
    let leak = finding(&report, "access-leak", &format!("{billing} -> patients.patients"));
    assert!(leak.message.contains("INSERT (name)"), "{}", leak.message);
    let row = access_json(&report, &billing, "patients.patients");
    assert_eq!(row["insert"], true, "{row}");
    assert_eq!(row["select"], false, "{row}");
    assert_eq!(row["leaks"], serde_json::json!(["INSERT (name)"]), "{row}");
    assert_eq!(row["verdict"], "leak");

    // The plan revokes it like a table grant, and then nothing of it remains.
    let mut conn = db.connect().await;
    let plan = moat_admin::provision::compute_plan(&mut conn, &project.manifest()).await.unwrap();
    conn.close().await.unwrap();
    let revoke = format!("REVOKE INSERT (\"name\") ON TABLE \"patients\".\"patients\" FROM \"{billing}\"");
    assert!(plan.to_sql().contains(&revoke), "{}", plan.to_sql());
    up_quietly(&db, &project.manifest()).await;
    assert_eq!(
        scalar_i64(
            &db,
            "SELECT count(*) FROM pg_attribute WHERE attrelid = 'patients.patients'::regclass AND attacl IS NOT NULL"
        )
        .await,
        0
    );
    let report = run(&db, &project).await;
    assert!(report.findings.is_empty(), "{}", describe(&report));
}

#[tokio::test]
async fn every_column_is_probed_not_only_the_first() {
    let (db, project) = fresh().await;
    let billing = db.role("billing");
    // UPDATE of the last column only, and SELECT of the second only.
    db.exec(&format!("GRANT USAGE ON SCHEMA patients TO \"{billing}\"")).await;
    as_owner(&db, "patients", &format!("GRANT UPDATE (ward), SELECT (name) ON patients.patients TO \"{billing}\""))
        .await;
    let report = run(&db, &project).await;
    let row = access_json(&report, &billing, "patients.patients");
    assert_eq!(row["update"], true, "{row}");
    assert_eq!(row["select"], true, "{row}");
    assert_eq!(row["leaks"], serde_json::json!(["SELECT (name)", "UPDATE (ward)"]), "{row}");
    assert!(report.has_errors());
}

#[tokio::test]
async fn a_large_object_granted_across_modules_is_an_error() {
    let (db, project) = fresh().await;
    let billing = db.role("billing");
    let prescriptions = db.role("prescriptions");
    let mut conn = db.connect_as(&billing).await;
    let oid: i64 =
        sqlx::query_scalar("SELECT lo_from_bytea(0, 'patient list')::bigint").fetch_one(&mut conn).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("GRANT SELECT ON LARGE OBJECT {oid} TO \"{prescriptions}\"")))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let report = run(&db, &project).await;
    let found = finding(&report, "large-object", &format!("large object {oid}"));
    assert_eq!(found.severity, Severity::Error);
    assert!(found.message.contains(&format!("owned by `{billing}`")), "{}", found.message);
    assert!(found.message.contains(&prescriptions), "{}", found.message);
    assert!(report.has_errors());
}

#[tokio::test]
async fn the_probe_fires_no_trigger_a_module_planted() {
    let (db, project) = fresh().await;
    let patients = db.role("patients");
    let marker = std::env::temp_dir().join(format!("moat-audit-trigger-{}", db.database));
    let _ = std::fs::remove_file(&marker);
    // billing's owner plants statement triggers on its table that count (in a sequence, which a
    // rollback does not undo) and try to write a file, and lets patients' runtime role write it.
    as_owner(
        &db,
        "billing",
        &format!(
            "CREATE SEQUENCE billing.fired;
             CREATE FUNCTION billing.mark() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = billing AS $f$
             BEGIN
               PERFORM nextval('billing.fired');
               BEGIN EXECUTE format('COPY (SELECT 1) TO %L', '{}'); EXCEPTION WHEN OTHERS THEN NULL; END;
               RETURN NULL;
             END $f$;
             CREATE TRIGGER mark_statement BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON billing.charges
               FOR EACH STATEMENT EXECUTE FUNCTION billing.mark();
             CREATE TRIGGER mark_after AFTER INSERT OR UPDATE OR DELETE ON billing.charges
               FOR EACH STATEMENT EXECUTE FUNCTION billing.mark();
             GRANT INSERT, UPDATE, DELETE, TRUNCATE ON billing.charges TO \"{patients}\"",
            marker.display()
        ),
    )
    .await;
    // moat owns the schema: USAGE on it can only come from a superuser's hand.
    db.exec(&format!("GRANT USAGE ON SCHEMA billing TO \"{patients}\"")).await;
    let report = run(&db, &project).await;
    // The probe saw every privilege...
    let row = access_json(&report, &patients, "billing.charges");
    assert_eq!(
        (row["insert"].as_bool(), row["update"].as_bool(), row["delete"].as_bool()),
        (Some(true), Some(true), Some(true)),
        "{row}"
    );
    assert!(row["leaks"].as_array().unwrap().contains(&serde_json::json!("TRUNCATE")), "{row}");
    assert!(report.has_errors());
    // ... and fired none of the triggers.
    assert_eq!(scalar_i64(&db, "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM billing.fired").await, 0);
    assert!(!marker.exists(), "the trigger wrote {}", marker.display());
    assert_eq!(scalar_i64(&db, "SELECT count(*) FROM billing.charges").await, 0);
}

#[tokio::test]
async fn a_runtime_role_holding_a_lock_on_its_table_does_not_hang_the_audit() {
    let (db, project) = fresh().await;
    let patients = db.role("patients");
    let mut holder = db.connect_as(&patients).await;
    sqlx::raw_sql("BEGIN; LOCK TABLE patients.patients IN ACCESS EXCLUSIVE MODE").execute(&mut holder).await.unwrap();
    let report = run(&db, &project).await;
    sqlx::raw_sql("ROLLBACK").execute(&mut holder).await.unwrap();
    holder.close().await.unwrap();
    // The consumer reads the census view over patients: its attempt gave up and says who holds the lock.
    let reporting = db.role("reporting");
    let wait = finding(&report, "probe-incomplete", &format!("{reporting} -> contracts.census"));
    assert!(wait.message.contains(&format!("held by `{patients}`")), "{}", wait.message);
    assert!(report.has_errors());
}

#[tokio::test]
async fn a_role_statement_timeout_is_reported_and_does_not_break_the_probe() {
    let (db, project) = fresh().await;
    let billing = db.role("billing");
    db.exec(&format!("ALTER ROLE \"{billing}\" SET statement_timeout = '1ms'")).await;
    db.exec(&format!("ALTER ROLE \"{billing}\" IN DATABASE \"{}\" SET lock_timeout = '1ms'", db.database)).await;
    let report = run(&db, &project).await;
    db.exec(&format!("ALTER ROLE \"{billing}\" RESET statement_timeout")).await;
    let setting = finding(&report, "unmanaged-role-setting", &format!("{billing} statement_timeout"));
    assert!(setting.message.contains("statement_timeout=1ms"), "{}", setting.message);
    assert!(setting.message.contains("in every database"), "{}", setting.message);
    finding(&report, "unmanaged-role-setting", &format!("{billing} lock_timeout"));
    let probed = report.probed.iter().find(|p| p.role == billing).unwrap();
    assert_eq!(probed.method, ProbeMethod::Login, "{probed:?}");
    assert!(report.access.iter().any(|a| a.role == billing && a.relation == "patients.patients"));
    assert!(!report.findings.iter().any(|f| f.rule == "probe-incomplete"), "{}", describe(&report));
    assert!(report.has_errors());
}

#[tokio::test]
async fn a_moat_table_turned_into_a_view_or_given_a_trigger_or_policy_is_an_error() {
    let (db, project) = fresh().await;
    // moat's tables belong to `<project>_moat`, so no module role can do this any more (the
    // provisioning attacks test that); a superuser's hand still can, and the audit says so.
    db.exec(
        "CREATE FUNCTION patients.noop() RETURNS trigger LANGUAGE plpgsql AS $f$ BEGIN RETURN NEW; END $f$;
         CREATE TRIGGER spy AFTER INSERT ON patients.moat_migrations FOR EACH ROW EXECUTE FUNCTION patients.noop()",
    )
    .await;
    db.exec(
        "ALTER TABLE prescriptions.moat_inbox ENABLE ROW LEVEL SECURITY;
         CREATE POLICY hide ON prescriptions.moat_inbox USING (false)",
    )
    .await;
    db.exec(
        "ALTER TABLE billing.moat_migrations RENAME TO moat_migrations_real;
         CREATE VIEW billing.moat_migrations AS SELECT * FROM billing.moat_migrations_real",
    )
    .await;
    let report = run(&db, &project).await;
    let trigger = finding(&report, "moat-table-altered", "patients.moat_migrations");
    assert!(trigger.message.contains("trigger `spy`"), "{}", trigger.message);
    let policy = finding(&report, "moat-table-altered", "prescriptions.moat_inbox");
    assert!(
        policy.message.contains("policy `hide`") && policy.message.contains("row level security"),
        "{}",
        policy.message
    );
    let view = finding(&report, "moat-table-altered", "billing.moat_migrations");
    assert!(view.message.contains("is a view instead of a table"), "{}", view.message);
    assert_eq!(view.severity, Severity::Error);
}

#[tokio::test]
async fn module_owners_are_probed_through_their_migrators() {
    let (db, project) = fresh().await;
    let owner = db.role("patients_owner");
    let migrator = db.role("patients_migrator");
    // D2: the plan made the migrator LOGIN NOINHERIT and a member of the owner.
    db.exec(&format!("GRANT USAGE ON SCHEMA billing TO \"{owner}\"; GRANT SELECT ON billing.charges TO \"{owner}\""))
        .await;
    let report = run(&db, &project).await;
    let probed = report.probed.iter().find(|p| p.role == owner).unwrap_or_else(|| panic!("{:?}", report.probed));
    assert_eq!(probed.method, ProbeMethod::LoginThenSetRole, "{probed:?}");
    assert_eq!(probed.via.as_deref(), Some(migrator.as_str()));
    let leak = finding(&report, "access-leak", &format!("{owner} -> billing.charges"));
    assert!(leak.message.contains(&format!("logged in as `{migrator}`")), "{}", leak.message);
    let row = access_json(&report, &owner, "billing.charges");
    assert_eq!(row["select"], true);
    // The owner's own schema is not probed; other modules' are, and are denied.
    assert!(report.access.iter().filter(|a| a.role == owner).all(|a| !a.relation.starts_with("patients.")));
    let rx = access_json(&report, &owner, "prescriptions.prescriptions");
    assert_eq!(rx["verdict"], "denied");
}

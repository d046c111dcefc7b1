#![allow(clippy::unwrap_used)]
//! `moat audit` on a provisioned database: clean when untouched, and every finding kind provoked
//! by SQL run as the admin (issue 4's acceptance).

mod common;

use common::{clinic, up_quietly};
use moat_admin::audit::{AuditOptions, AuditReport, Cell, ProbeMethod, Verdict, audit};
use moat_core::findings::Severity;
use moat_testkit::{TestDb, TestProject};

async fn fresh() -> (TestDb, TestProject) {
    let db = TestDb::new().await;
    let project = clinic(&db);
    up_quietly(&db, &project.manifest()).await;
    (db, project)
}

async fn run(db: &TestDb, project: &TestProject) -> AuditReport {
    audit(&db.url, &project.manifest(), AuditOptions::default()).await.unwrap()
}

fn has(report: &AuditReport, rule: &str, object: &str) -> bool {
    report.findings.iter().any(|f| f.rule == rule && f.object.as_deref().is_some_and(|o| o.contains(object)))
}

fn describe(report: &AuditReport) -> String {
    report.findings.iter().map(|f| format!("{} {:?} {}", f.rule, f.object, f.message)).collect::<Vec<_>>().join("\n")
}

fn cell(report: &AuditReport, role: &str, column: &str) -> Cell {
    let col = report.matrix.columns.iter().position(|c| c == column).unwrap_or_else(|| panic!("no column {column}"));
    report.matrix.rows.iter().find(|(r, _)| r == role).unwrap_or_else(|| panic!("no row {role}")).1[col]
}

#[tokio::test]
async fn a_fresh_database_audits_clean_and_every_cross_module_cell_is_denied() {
    let (db, project) = fresh().await;
    let report = run(&db, &project).await;
    assert!(report.findings.is_empty(), "{}", describe(&report));
    let modules = ["patients", "prescriptions", "billing"];
    for module in modules {
        for other in modules {
            let expected = if module == other { Cell::Own } else { Cell::Denied };
            assert_eq!(cell(&report, &db.role(module), other), expected, "{module} on {other}");
        }
        assert_eq!(cell(&report, &db.role(module), "contract census"), Cell::Denied);
    }
    assert_eq!(cell(&report, &db.role("reporting"), "contract census"), Cell::Allowed);
    assert_eq!(cell(&report, &db.role("support"), "contract census"), Cell::Denied);
    for module in modules {
        assert_eq!(cell(&report, &db.role("reporting"), module), Cell::Denied);
    }
    // Runtime, consumer, relay and contract roles log in; owners through their migrators.
    assert!(
        report.probed.iter().all(|p| if p.kind.starts_with("owner:") {
            p.method == ProbeMethod::LoginThenSetRole
        } else {
            p.method == ProbeMethod::Login
        }),
        "{:?}",
        report.probed
    );
    // Every runtime role was really tried on every other module's tables, four ways.
    let billing_rows: Vec<_> = report.access.iter().filter(|a| a.role == db.role("billing")).collect();
    assert!(billing_rows.iter().any(|a| a.relation == "patients.patients"));
    assert!(billing_rows.iter().all(|a| !a.relation.starts_with("billing.")));
    assert!(report.attempts >= billing_rows.len() * 4);
    let census =
        report.access.iter().find(|a| a.role == db.role("reporting") && a.relation == "contracts.census").unwrap();
    assert!(census.select && !census.insert && !census.delete);
}

#[tokio::test]
async fn cross_module_foreign_keys_and_views_are_found() {
    let (db, project) = fresh().await;
    db.exec("ALTER TABLE billing.charges ADD COLUMN patient_id uuid CONSTRAINT charges_patient_fk REFERENCES patients.patients (id)").await;
    db.exec("CREATE VIEW prescriptions.with_names AS SELECT rx.id, p.name FROM prescriptions.prescriptions rx JOIN patients.patients p ON p.id = rx.patient_id").await;
    let report = run(&db, &project).await;
    assert!(has(&report, "cross-module-foreign-key", "billing.charges.charges_patient_fk"), "{}", describe(&report));
    assert!(has(&report, "cross-module-reference", "prescriptions.with_names"), "{}", describe(&report));
    let fk = report.findings.iter().find(|f| f.rule == "cross-module-foreign-key").unwrap();
    assert_eq!(fk.module.as_deref(), Some("billing"));
    assert!(fk.message.contains("patients.patients"), "{}", fk.message);
    assert!(report.has_errors());
}

#[tokio::test]
async fn grants_outside_the_manifest_are_found() {
    let (db, project) = fresh().await;
    db.exec("GRANT SELECT ON patients.patients TO PUBLIC").await;
    db.exec(&format!("GRANT USAGE ON SCHEMA patients TO \"{}\"", db.role("billing"))).await;
    db.exec("CREATE ROLE moat_audit_outsider_probe NOLOGIN").await;
    db.exec("GRANT UPDATE ON prescriptions.prescriptions TO moat_audit_outsider_probe").await;
    let report = run(&db, &project).await;
    db.exec("DROP OWNED BY moat_audit_outsider_probe; DROP ROLE moat_audit_outsider_probe").await;
    let public = report
        .findings
        .iter()
        .find(|f| f.rule == "grant-beyond-manifest" && f.object.as_deref() == Some("patients.patients"))
        .unwrap();
    assert!(public.message.starts_with("PUBLIC holds SELECT on table `patients.patients`"), "{}", public.message);
    assert!(has(&report, "grant-beyond-manifest", "patients"), "{}", describe(&report));
    assert!(
        report.findings.iter().any(|f| f.rule == "grant-beyond-manifest"
            && f.message.contains(&format!("`{}` holds USAGE on schema `patients`", db.role("billing")))),
        "{}",
        describe(&report)
    );
    assert!(
        report.findings.iter().any(|f| f.message.contains("`moat_audit_outsider_probe` holds UPDATE")),
        "{}",
        describe(&report)
    );
    // With USAGE and PUBLIC's SELECT, billing can really read patients: the probe shows it.
    assert_eq!(cell(&report, &db.role("billing"), "patients"), Cell::Leak);
    assert!(
        has(&report, "access-leak", &format!("{} -> patients.patients", db.role("billing"))),
        "{}",
        describe(&report)
    );
}

#[tokio::test]
async fn security_definer_routines_are_found() {
    let (db, project) = fresh().await;
    let owner = db.role("patients_owner");
    db.exec(&format!(
        "CREATE FUNCTION patients.count_all() RETURNS bigint LANGUAGE sql SECURITY DEFINER AS 'SELECT count(*) FROM patients.patients';
         ALTER FUNCTION patients.count_all() OWNER TO \"{owner}\";
         GRANT EXECUTE ON FUNCTION patients.count_all() TO PUBLIC;
         CREATE FUNCTION patients.pinned() RETURNS int LANGUAGE sql SECURITY DEFINER SET search_path = patients AS 'SELECT 1';
         ALTER FUNCTION patients.pinned() OWNER TO \"{owner}\";
         REVOKE EXECUTE ON FUNCTION patients.pinned() FROM PUBLIC;"
    ))
    .await;
    let report = run(&db, &project).await;
    let unpinned = report
        .findings
        .iter()
        .find(|f| f.rule == "security-definer-function" && f.object.as_deref() == Some("patients.count_all()"))
        .unwrap();
    assert_eq!(unpinned.severity, Severity::Error);
    let pinned = report
        .findings
        .iter()
        .find(|f| f.rule == "security-definer-function" && f.object.as_deref() == Some("patients.pinned()"))
        .unwrap();
    assert_eq!(pinned.severity, Severity::Warning);
    assert!(
        report.findings.iter().any(|f| f.rule == "grant-beyond-manifest"
            && f.message.starts_with("PUBLIC holds EXECUTE on routine `patients.count_all()`")),
        "{}",
        describe(&report)
    );
}

#[tokio::test]
async fn role_attributes_and_memberships_are_found() {
    let (db, project) = fresh().await;
    db.exec(&format!("ALTER ROLE \"{}\" BYPASSRLS", db.role("billing"))).await;
    db.exec(&format!("GRANT \"{}\" TO \"{}\"", db.role("patients"), db.role("prescriptions"))).await;
    let report = run(&db, &project).await;
    let bypass = report.findings.iter().find(|f| f.rule == "privileged-role").unwrap();
    assert_eq!(bypass.object.as_deref(), Some(db.role("billing").as_str()));
    assert!(bypass.message.contains("BYPASSRLS"));
    assert!(
        has(&report, "role-membership", &format!("{} -> {}", db.role("prescriptions"), db.role("patients"))),
        "{}",
        describe(&report)
    );
    assert_eq!(cell(&report, &db.role("prescriptions"), "patients"), Cell::Leak);
}

#[tokio::test]
async fn the_probe_catches_pg_read_all_data() {
    let (db, project) = fresh().await;
    db.exec(&format!("GRANT pg_read_all_data TO \"{}\"", db.role("billing"))).await;
    let report = run(&db, &project).await;
    assert!(
        has(&report, "role-membership", &format!("{} -> pg_read_all_data", db.role("billing"))),
        "{}",
        describe(&report)
    );
    assert_eq!(cell(&report, &db.role("billing"), "patients"), Cell::Leak);
    assert_eq!(cell(&report, &db.role("billing"), "prescriptions"), Cell::Leak);
    let row = report.access.iter().find(|a| a.role == db.role("billing") && a.relation == "patients.patients").unwrap();
    assert!(row.select && !row.insert, "{row:?}");
    assert_eq!(row.verdict, Verdict::Leak);
    // Other roles are unaffected.
    assert_eq!(cell(&report, &db.role("prescriptions"), "patients"), Cell::Denied);
}

#[tokio::test]
async fn public_schema_objects_database_access_and_drift_are_found() {
    let (db, project) = fresh().await;
    db.exec("CREATE TABLE public.stray (id int)").await;
    db.exec(&format!("GRANT CONNECT, TEMPORARY ON DATABASE \"{}\" TO PUBLIC", db.database)).await;
    db.exec(&format!("ALTER ROLE \"{}\" IN DATABASE \"{}\" RESET search_path", db.role("billing"), db.database)).await;
    let report = run(&db, &project).await;
    let stray = report.findings.iter().find(|f| f.rule == "object-in-public-schema").unwrap();
    assert_eq!(stray.object.as_deref(), Some("public.stray"));
    assert!(
        report.findings.iter().any(|f| f.rule == "public-database-access"
            && f.message == format!("PUBLIC holds CONNECT on database `{}`", db.database)),
        "{}",
        describe(&report)
    );
    assert!(
        report.findings.iter().any(|f| f.rule == "public-database-access" && f.message.contains("TEMPORARY")),
        "{}",
        describe(&report)
    );
    assert!(
        report.findings.iter().any(|f| f.rule == "provisioning-drift"
            && f.message.contains(&format!("ALTER ROLE \"{}\" IN DATABASE", db.role("billing")))),
        "{}",
        describe(&report)
    );
}

#[tokio::test]
async fn a_role_that_cannot_log_in_is_not_probed_and_the_audit_says_why() {
    // No SET ROLE from the admin's session: a role the audit cannot log in as is an error.
    let (db, project) = fresh().await;
    db.exec(&format!("ALTER ROLE \"{}\" NOLOGIN", db.role("support"))).await;
    let report = run(&db, &project).await;
    let support = report.probed.iter().find(|p| p.role == db.role("support")).unwrap();
    assert_eq!(support.method, ProbeMethod::NotProbed);
    assert!(support.login_error.is_some());
    assert!(report.access.iter().all(|a| a.role != db.role("support")));
    assert_eq!(cell(&report, &db.role("support"), "contract census"), Cell::Unprobed);
    let finding = report
        .findings
        .iter()
        .find(|f| f.rule == "probe-incomplete" && f.object.as_deref() == Some(db.role("support").as_str()))
        .unwrap_or_else(|| panic!("{}", describe(&report)));
    assert_eq!(finding.severity, Severity::Error);
    let variable = format!("MOAT_PASSWORD_{}", db.role("support").to_ascii_uppercase());
    assert!(finding.help.as_deref().unwrap_or_default().contains(&variable), "{finding:?}");
    assert!(has(&report, "provisioning-drift", &db.role("support")), "{}", describe(&report));
}

#[tokio::test]
async fn triggers_policies_defaults_and_materialized_views_across_modules_are_found() {
    let (db, project) = fresh().await;
    db.exec(
        "CREATE FUNCTION patients.stamp() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END';
         CREATE FUNCTION patients.default_amount() RETURNS numeric LANGUAGE sql AS 'SELECT 1.0';
         CREATE TRIGGER charges_stamp BEFORE INSERT ON billing.charges FOR EACH ROW EXECUTE FUNCTION patients.stamp();
         ALTER TABLE billing.charges ALTER COLUMN amount SET DEFAULT patients.default_amount();
         ALTER TABLE billing.charges ENABLE ROW LEVEL SECURITY;
         CREATE POLICY charges_known ON billing.charges USING (EXISTS (SELECT 1 FROM patients.patients));
         CREATE MATERIALIZED VIEW billing.patient_count AS SELECT count(*) FROM patients.patients;",
    )
    .await;
    let report = run(&db, &project).await;
    let references: Vec<&str> =
        report.findings.iter().filter(|f| f.rule == "cross-module-reference").map(|f| f.message.as_str()).collect();
    for expected in [
        "trigger `charges_stamp on billing.charges` depends on function `patients.stamp()`",
        "default value `for billing.charges.amount` depends on function `patients.default_amount()`",
        "policy `charges_known on billing.charges` depends on table `patients.patients`",
        "materialized view `billing.patient_count` depends on table `patients.patients`",
    ] {
        assert!(
            references.iter().any(|m| m.starts_with(expected)),
            "missing {expected:?} in\n{}",
            references.join("\n")
        );
    }
}

#[tokio::test]
async fn claimed_objects_in_public_are_not_reported_and_an_unclaimed_table_is_one_finding() {
    let (db, project) = fresh().await;
    let text = std::fs::read_to_string(project.manifest_path()).unwrap();
    let claimed = text.replacen("[modules.patients]\n", "[modules.patients]\nclaims = [\"public.ward_*\"]\n", 1);
    project.write("moat.toml", &claimed);
    db.exec("CREATE TABLE public.ward_beds (id serial PRIMARY KEY, label text UNIQUE)").await;
    db.exec("CREATE FUNCTION public.ward_count() RETURNS int LANGUAGE sql AS 'SELECT 1'").await;
    db.exec("CREATE TABLE public.stray (id serial PRIMARY KEY, code text UNIQUE)").await;
    db.exec("CREATE INDEX stray_code_lower ON public.stray (lower(code))").await;
    let report = run(&db, &project).await;
    let in_public: Vec<_> = report.findings.iter().filter(|f| f.rule == "object-in-public-schema").collect();
    assert_eq!(in_public.len(), 1, "{}", describe(&report));
    assert_eq!(in_public[0].object.as_deref(), Some("public.stray"));
}

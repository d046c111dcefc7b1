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

/// The clinic with tables still in `public`, as a brownfield database has them (created by the
/// superuser, before moat): patients claims `public.legacy_patients` and `public.patient_*`,
/// billing claims `public.invoice*`.
async fn claimed_clinic() -> (TestDb, TestProject) {
    let (db, project) = fresh().await;
    let text = std::fs::read_to_string(project.manifest_path()).unwrap();
    let claimed = text
        .replacen(
            "[modules.patients]\n",
            "[modules.patients]\nclaims = [\"public.legacy_patients\", \"public.patient_*\"]\n",
            1,
        )
        .replacen("[modules.billing]\n", "[modules.billing]\nclaims = [\"public.invoice*\"]\n", 1);
    assert_ne!(claimed, text);
    project.write("moat.toml", &claimed);
    (db, project)
}

fn crossings(report: &AuditReport) -> Vec<(String, String, String)> {
    let mut found: Vec<(String, String, String)> = report
        .findings
        .iter()
        .filter(|f| f.rule.as_str().starts_with("cross-module-"))
        .map(|f| {
            (f.rule.as_str().to_owned(), f.module.clone().unwrap_or_default(), f.object.clone().unwrap_or_default())
        })
        .collect();
    found.sort();
    found
}

#[tokio::test]
async fn crossings_between_claimed_sets_and_module_schemas_are_found_once_and_same_module_ones_are_not() {
    let (db, project) = claimed_clinic().await;
    db.exec(
        "CREATE TYPE public.patient_status AS ENUM ('in', 'out');
         CREATE TABLE public.legacy_patients (id serial PRIMARY KEY, status public.patient_status, history public.patient_status[]);
         CREATE TABLE public.patient_notes (id serial PRIMARY KEY,
             patient_id int REFERENCES public.legacy_patients (id),
             new_patient_id uuid REFERENCES patients.patients (id));
         CREATE VIEW public.patient_overview AS
             SELECT p.id, count(n.id) AS notes FROM public.legacy_patients p LEFT JOIN public.patient_notes n ON n.patient_id = p.id GROUP BY p.id;
         CREATE TABLE public.stray (id serial PRIMARY KEY, patient_id int REFERENCES public.legacy_patients (id));
         CREATE TABLE public.invoices (id serial PRIMARY KEY,
             patient_id int REFERENCES public.legacy_patients (id),
             status public.patient_status,
             stray_id int REFERENCES public.stray (id));
         CREATE INDEX invoices_by_patient ON public.invoices (patient_id);
         CREATE TABLE public.invoice_lines (id serial PRIMARY KEY,
             invoice_id int REFERENCES public.invoices (id),
             prescription_id bigint REFERENCES prescriptions.prescriptions (id));
         CREATE VIEW public.invoice_summary AS
             SELECT i.id, p.status FROM public.invoices i JOIN public.legacy_patients p ON p.id = i.patient_id;
         ALTER TABLE billing.charges ADD COLUMN invoice_id int CONSTRAINT charges_invoice_fk REFERENCES public.invoices (id);
         ALTER TABLE prescriptions.prescriptions ADD COLUMN legacy_patient int CONSTRAINT prescriptions_legacy_fk REFERENCES public.legacy_patients (id);
         CREATE VIEW prescriptions.with_invoices AS SELECT rx.id, i.id AS invoice FROM prescriptions.prescriptions rx JOIN public.invoices i ON i.id = rx.id;",
    )
    .await;
    let report = run(&db, &project).await;
    let expected: Vec<(String, String, String)> = [
        ("cross-module-foreign-key", "billing", "public.invoice_lines.invoice_lines_prescription_id_fkey"),
        ("cross-module-foreign-key", "billing", "public.invoices.invoices_patient_id_fkey"),
        ("cross-module-foreign-key", "prescriptions", "prescriptions.prescriptions.prescriptions_legacy_fk"),
        // The view depends on the table and on the type of `patients`: two crossings.
        ("cross-module-reference", "billing", "public.invoice_summary"),
        ("cross-module-reference", "billing", "public.invoice_summary"),
        ("cross-module-reference", "billing", "public.invoices"),
        ("cross-module-reference", "prescriptions", "prescriptions.with_invoices"),
    ]
    .into_iter()
    .map(|(r, m, o)| (r.to_owned(), m.to_owned(), o.to_owned()))
    .collect();
    assert_eq!(crossings(&report), expected, "{}", describe(&report));
    let fk = report
        .findings
        .iter()
        .find(|f| f.object.as_deref() == Some("public.invoices.invoices_patient_id_fkey"))
        .unwrap();
    assert_eq!(
        fk.message,
        "foreign key `invoices_patient_id_fkey` on `public.invoices` references `public.legacy_patients` of module `patients`"
    );
    let view: Vec<&str> = report
        .findings
        .iter()
        .filter(|f| f.object.as_deref() == Some("public.invoice_summary"))
        .map(|f| f.message.as_str())
        .collect();
    assert_eq!(
        view,
        [
            "view `public.invoice_summary` depends on table `public.legacy_patients` of module `patients`",
            "view `public.invoice_summary` depends on type `public.patient_status` of module `patients`",
        ]
    );
    let column = report.findings.iter().find(|f| f.object.as_deref() == Some("public.invoices")).unwrap();
    assert!(column.message.contains("`public.patient_status` of module `patients`"), "{}", column.message);
    // The stray table is nobody's: no crossing to or from it, one object-in-public finding.
    let in_public: Vec<_> = report.findings.iter().filter(|f| f.rule == "object-in-public-schema").collect();
    assert_eq!(in_public.len(), 1, "{}", describe(&report));
    assert_eq!(in_public[0].object.as_deref(), Some("public.stray"));
}

#[tokio::test]
async fn a_claimed_object_owned_by_another_modules_role_is_a_finding() {
    let (db, project) = claimed_clinic().await;
    let manifest = project.manifest();
    let owner = |module: &str| manifest.roles().module_owner(&manifest.module(module).unwrap().name);
    let (billing_owner, patients_owner) = (owner("billing"), owner("patients"));
    db.exec("CREATE TABLE public.legacy_patients (id serial PRIMARY KEY); CREATE TABLE public.invoices (id serial PRIMARY KEY)").await;
    // Billing's owner role, given CREATE on public for a moment, creates a table that matches
    // patients' pattern and a function nobody claims; the grant is gone when the audit runs.
    db.exec(&format!("GRANT CREATE, USAGE ON SCHEMA public TO \"{billing_owner}\"")).await;
    let mut billing = db.connect().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "SET ROLE \"{billing_owner}\";
         CREATE TABLE public.patient_extras (id int);
         CREATE FUNCTION public.helper() RETURNS int LANGUAGE sql AS 'SELECT 1';
         RESET ROLE"
    )))
    .execute(&mut billing)
    .await
    .unwrap();
    drop(billing);
    db.exec(&format!("REVOKE CREATE, USAGE ON SCHEMA public FROM \"{billing_owner}\"")).await;
    // A claimed table owned by its claimant's owner role is the module's own.
    db.exec(&format!("ALTER TABLE public.legacy_patients OWNER TO \"{patients_owner}\"")).await;
    let report = run(&db, &project).await;
    let owned: Vec<_> = report
        .findings
        .iter()
        .filter(|f| f.rule == "grant-beyond-manifest" && f.message.contains("owned by"))
        .map(|f| (f.module.clone().unwrap_or_default(), f.object.clone().unwrap_or_default(), f.message.clone()))
        .collect();
    assert_eq!(
        owned,
        [
            (
                "billing".to_owned(),
                "public.helper()".to_owned(),
                format!(
                    "routine `public.helper()` belongs to no module but is owned by `{billing_owner}`, a role of module `billing`"
                ),
            ),
            (
                "patients".to_owned(),
                "public.patient_extras".to_owned(),
                format!(
                    "table `public.patient_extras` is claimed by module `patients` but owned by `{billing_owner}`, a role of module `billing`"
                ),
            ),
        ],
        "{}",
        describe(&report)
    );
    assert!(report.has_errors());
}

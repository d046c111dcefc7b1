#![allow(clippy::unwrap_used)]
//! A brownfield database whose tables still live in `public`, claimed by modules (`claims` in
//! moat.toml): provisioning leaves them where they are, with their data, owners and grants; the
//! audit counts them as their claimant's, so another module's role reaching them is a leak.

mod common;

use common::{MANIFEST, up_quietly};
use moat_admin::audit::{AuditOptions, AuditReport, Cell, audit};
use moat_testkit::{TestDb, TestProject};
use sqlx::Row;

fn claimed_clinic(db: &TestDb) -> TestProject {
    let project = common::clinic(db);
    let claimed = MANIFEST
        .replace("{project}", &db.project)
        .replacen("[modules.patients]\n", "[modules.patients]\nclaims = [\"public.legacy_patients\"]\n", 1)
        .replacen("[modules.billing]\n", "[modules.billing]\nclaims = [\"public.invoice*\"]\n", 1);
    project.write("moat.toml", &claimed);
    project
}

/// Everything provisioning could change about the claimed objects: kind, owner, grants, rows.
async fn public_state(db: &TestDb) -> Vec<String> {
    let mut conn = db.connect().await;
    let rows = sqlx::query(
        "SELECT c.relname::text || ' ' || c.relkind::text || ' ' || pg_get_userbyid(c.relowner) || ' ' || coalesce(c.relacl::text, '-')
         FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace ORDER BY c.relname",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let mut state: Vec<String> = rows.iter().map(|r| r.get::<String, _>(0)).collect();
    let data: String = sqlx::query_scalar(
        "SELECT (SELECT string_agg(id || ':' || name, ',' ORDER BY id) FROM public.legacy_patients) || ' / ' ||
                (SELECT string_agg(id || ':' || patient_id, ',' ORDER BY id) FROM public.invoices)",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    state.push(data);
    let legacy_usage: bool =
        sqlx::query_scalar("SELECT has_schema_privilege('moat_claims_legacy_app', 'public', 'USAGE')")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    state.push(format!("legacy app uses public: {legacy_usage}"));
    state
}

fn describe(report: &AuditReport) -> String {
    report.findings.iter().map(|f| format!("{} {:?} {}", f.rule, f.object, f.message)).collect::<Vec<_>>().join("\n")
}

fn cell(report: &AuditReport, role: &str, column: &str) -> Cell {
    let col = report.matrix.columns.iter().position(|c| c == column).unwrap();
    report.matrix.rows.iter().find(|(r, _)| r == role).unwrap().1[col]
}

#[tokio::test]
async fn provisioning_leaves_claimed_tables_their_data_owners_and_grants_and_the_audit_counts_them_as_their_claimants()
{
    let db = TestDb::new().await;
    let project = claimed_clinic(&db);
    // The database before moat: the application's own role owns and reads the tables in public.
    db.exec(
        "DO $$ BEGIN
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'moat_claims_legacy_app') THEN
             CREATE ROLE moat_claims_legacy_app NOLOGIN;
           END IF;
         END $$;
         GRANT USAGE ON SCHEMA public TO moat_claims_legacy_app;
         CREATE TABLE public.legacy_patients (id serial PRIMARY KEY, name text NOT NULL);
         CREATE TABLE public.invoices (id serial PRIMARY KEY, patient_id int NOT NULL);
         CREATE INDEX invoices_patient ON public.invoices (patient_id);
         CREATE TABLE public.invoice_lines (id serial PRIMARY KEY, invoice_id int NOT NULL REFERENCES public.invoices (id));
         ALTER TABLE public.invoices OWNER TO moat_claims_legacy_app;
         GRANT SELECT, INSERT ON public.legacy_patients TO moat_claims_legacy_app;
         INSERT INTO public.legacy_patients (name) VALUES ('Ada'), ('Grace');
         INSERT INTO public.invoices (patient_id) VALUES (1), (2), (2);
         INSERT INTO public.invoice_lines (invoice_id) VALUES (3);",
    )
    .await;
    let before = public_state(&db).await;

    let manifest = project.manifest();
    let first = up_quietly(&db, &manifest).await;
    assert!(first.changed());
    let after_up = public_state(&db).await;
    // Nothing of the claimed objects moved or changed hands.
    let plan_text: Vec<String> = first.plans().map(|p| p.to_sql()).collect();
    assert!(!plan_text.iter().any(|sql| sql.contains("legacy_patients") || sql.contains("invoice")), "{plan_text:?}");
    let mut conn = db.connect().await;
    let rerun = moat_admin::provision::compute_plan(&mut conn, &manifest).await.unwrap();
    assert!(rerun.is_empty(), "{}", rerun.to_sql());
    let second = up_quietly(&db, &manifest).await;
    assert!(!second.changed());
    let clean = audit(&db.url, &manifest, AuditOptions::default()).await.unwrap();
    let after_rerun = public_state(&db).await;

    // Patients' runtime role is given billing's claimed invoices, and billing's runtime role the
    // sequence of patients' claimed table (`legacy_patients_id_seq` matches no claim; its table does).
    let (patients, billing) = (db.role("patients"), db.role("billing"));
    db.exec(&format!(
        "GRANT USAGE ON SCHEMA public TO \"{patients}\", \"{billing}\";
         GRANT SELECT ON public.invoices TO \"{patients}\";
         GRANT USAGE ON SEQUENCE public.legacy_patients_id_seq TO \"{billing}\""
    ))
    .await;
    let leaky = audit(&db.url, &manifest, AuditOptions::default()).await.unwrap();
    db.exec("REASSIGN OWNED BY moat_claims_legacy_app TO CURRENT_USER; DROP OWNED BY moat_claims_legacy_app; DROP ROLE moat_claims_legacy_app").await;

    assert_eq!(after_up, before);
    assert_eq!(after_rerun, before);
    assert!(before.iter().any(|s| s.starts_with("invoices r moat_claims_legacy_app")), "{before:?}");
    assert_eq!(before.last().map(String::as_str), Some("legacy app uses public: true"));
    assert!(clean.findings.is_empty(), "{}", describe(&clean));
    for module in ["patients", "prescriptions"] {
        assert_eq!(cell(&clean, &db.role(module), "billing"), Cell::Denied, "{module}");
    }
    // Billing's own roles are not tried on what billing claims; the others are.
    assert!(!clean.access.iter().any(|a| a.role == db.role("billing") && a.relation.starts_with("public.invoice")));
    assert!(clean.access.iter().any(|a| a.role == db.role("patients") && a.relation == "public.invoices"));
    assert!(clean.access.iter().any(|a| a.role == db.role("billing") && a.relation == "public.legacy_patients"));

    assert_eq!(cell(&leaky, &patients, "billing"), Cell::Leak);
    assert_eq!(cell(&leaky, &billing, "patients"), Cell::Leak);
    let mut leaks: Vec<(Option<&str>, Option<&str>)> = leaky
        .findings
        .iter()
        .filter(|f| f.rule == "access-leak")
        .map(|f| (f.module.as_deref(), f.object.as_deref()))
        .collect();
    leaks.sort();
    let (invoices, sequence) =
        (format!("{patients} -> public.invoices"), format!("{billing} -> public.legacy_patients_id_seq"));
    assert_eq!(
        leaks,
        [(Some("billing"), Some(invoices.as_str())), (Some("patients"), Some(sequence.as_str()))],
        "{}",
        describe(&leaky)
    );
}

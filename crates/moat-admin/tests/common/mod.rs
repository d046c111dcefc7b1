#![allow(clippy::unwrap_used, dead_code)]

use moat_admin::up::{UpReport, up};
use moat_core::manifest::Manifest;
use moat_testkit::{TestDb, TestProject};

/// Three modules, a contract over two of them, and two consumers (one reads the contract).
pub const MANIFEST: &str = r#"
[project]
name = "{project}"

[modules.patients]

[modules.prescriptions]
depends_on = ["patients"]

[modules.billing]
depends_on = ["prescriptions"]

[contracts.census]
sql = "contracts/census.sql"
reads = ["patients.patients", "prescriptions.prescriptions"]
readers = ["reporting"]

[consumers.reporting]
[consumers.support]
"#;

pub fn clinic(db: &TestDb) -> TestProject {
    TestProject::new(
        &db.project,
        MANIFEST,
        &[
            (
                "modules/patients/migrations/0001_create_patients.sql",
                "CREATE TABLE patients (id uuid PRIMARY KEY, name text NOT NULL, ward text);\n",
            ),
            (
                "modules/patients/migrations/0002_admissions.sql",
                "CREATE TABLE admissions (id serial PRIMARY KEY, patient_id uuid NOT NULL);\n",
            ),
            (
                "modules/prescriptions/migrations/0001_create_prescriptions.sql",
                "CREATE TABLE prescriptions (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, patient_id uuid NOT NULL, medication text NOT NULL);\n",
            ),
            (
                "modules/billing/migrations/0001_create_charges.sql",
                "CREATE TABLE charges (id serial PRIMARY KEY, amount numeric NOT NULL);\n",
            ),
            (
                "contracts/census.sql",
                "CREATE VIEW census AS\n  SELECT p.ward, count(rx.id) AS prescriptions\n  FROM patients.patients p LEFT JOIN prescriptions.prescriptions rx ON rx.patient_id = p.id\n  GROUP BY p.ward;\n",
            ),
        ],
    )
}

pub async fn up_quietly(db: &TestDb, manifest: &Manifest) -> UpReport {
    up(&db.url, manifest, &|_| {}).await.unwrap_or_else(|e| panic!("moat up failed: {e}"))
}

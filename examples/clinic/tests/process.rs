//! The `clinic` binary as a process: killed with SIGKILL while patients are renamed over HTTP,
//! again and again, and started once more, it loses no rename (every snapshot of every patient
//! converges to the patient's last name and ward), and SIGTERM then stops it cleanly; on a
//! database whose audit finds an error, it refuses to serve.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Api, eventually, project, unique_mrn, ward};
use moat_testkit::TestDb;
use rand::Rng;
use reqwest::StatusCode;
use serde_json::json;

/// How long the binary may take to provision, migrate, audit and listen.
const START: Duration = Duration::from_secs(120);

/// The clinic as a child process.
struct Clinic {
    child: Child,
    api: Api,
}

/// The binary's command line for the test database and manifest.
fn command(db: &TestDb, manifest: &std::path::Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_clinic"));
    command
        .args(["--listen", "127.0.0.1:0", "--pool-size", "4", "--manifest"])
        .arg(manifest)
        .env("MOAT_DATABASE_URL", db.url.expose())
        .env_remove("DATABASE_URL")
        .env("CLINIC_LOG", "warn");
    command
}

impl Clinic {
    /// Starts the binary on the test database and waits for its `listening on` line.
    async fn start(db: &TestDb, manifest: &std::path::Path) -> Self {
        let mut child = command(db, manifest).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = tokio::task::spawn_blocking(move || {
            let mut lines = BufReader::new(stdout).lines();
            let base = lines
                .by_ref()
                .map_while(Result::ok)
                .find_map(|line| line.strip_prefix("listening on ").map(ToOwned::to_owned));
            // Keep draining stdout so that the child never blocks on a full pipe.
            std::thread::spawn(move || lines.for_each(drop));
            base
        });
        // A start-up that hangs fails the test instead of hanging it (killing the child ends the
        // reader's stdout).
        let base = match tokio::time::timeout(START, reader).await {
            Ok(base) => base.unwrap(),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the clinic did not print `listening on` within {START:?}");
            }
        };
        let Some(base) = base else {
            let status = child.wait().unwrap();
            panic!("the clinic exited ({status}) before listening");
        };
        Self { child, api: Api::new(base) }
    }

    /// SIGKILL, as `Drop` does.
    fn kill(self) {}

    /// SIGTERM, then the exit status.
    async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        eventually("the clinic exits after SIGTERM", || std::future::ready(self.child.try_wait().unwrap())).await
    }
}

impl Drop for Clinic {
    fn drop(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

/// What the renamers know of a patient: the last rename the service acknowledged, and every one
/// sent since then without an answer (the service died under each; any of them may have been
/// committed, the last committed one is the patient's state).
#[derive(Debug, Clone, Default)]
struct Known {
    acknowledged: Option<serde_json::Value>,
    unacknowledged: Vec<serde_json::Value>,
}

#[tokio::test]
async fn renames_survive_sigkill_and_every_snapshot_converges_to_the_last_name() {
    let db = TestDb::new().await;
    let project = project(&db);
    let manifest = project.manifest_path();
    let wards = [ward(), ward()];

    let mut clinic = Clinic::start(&db, &manifest).await;
    let mut patients = Vec::new();
    for i in 0..6 {
        let id = clinic.api.create_patient(&format!("First{i}"), "Initial", Some(&wards[0])).await;
        let reply = clinic
            .api
            .post("/prescriptions", &json!({"patient_id": id, "medication": "aspirin", "dose_amount": 75}))
            .await;
        assert_eq!(reply.status, StatusCode::CREATED);
        let reply = clinic
            .api
            .post("/lab-results", &json!({"patient_id": id, "test": "ck", "value": 120, "unit": "U/L"}))
            .await;
        assert_eq!(reply.status, StatusCode::CREATED);
        patients.push(id);
    }
    let known: Arc<Mutex<Vec<Known>>> = Arc::new(Mutex::new(vec![Known::default(); patients.len()]));

    for round in 0..4 {
        // In rounds 1 and 3 the dispatcher is held up (a table lock blocks its writes to one
        // snapshot table), so that the kill certainly strands renames that are committed in the
        // patients module and not yet applied by a subscriber. In rounds 0 and 2 it runs freely
        // and the kill lands wherever it lands.
        let held = match round {
            1 => Some("prescriptions.patient_snapshots"),
            3 => Some("lab_results.patient_snapshots"),
            _ => None,
        };
        let mut lock = db.connect().await;
        if let Some(table) = held {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("BEGIN; LOCK TABLE {table} IN EXCLUSIVE MODE")))
                .execute(&mut lock)
                .await
                .unwrap();
        }
        // One renamer per patient, each PUT waiting for the previous answer, until the kill.
        let mut renamers = Vec::new();
        for (index, id) in patients.iter().enumerate() {
            let api = clinic.api.clone();
            let id = id.clone();
            let known = known.clone();
            let wards = wards.clone();
            renamers.push(tokio::spawn(async move {
                for n in 0.. {
                    let body = json!({
                        "mrn": unique_mrn(),
                        "first_name": format!("First{index}"),
                        "last_name": format!("Round{round}-Rename{n}"),
                        "ward_id": wards[n % 2],
                    });
                    known.lock().unwrap()[index].unacknowledged.push(body.clone());
                    match api.try_put(&format!("/patients/{id}"), &body).await {
                        Ok(reply) if reply.status == StatusCode::OK => {
                            let mut known = known.lock().unwrap();
                            known[index].acknowledged = Some(body);
                            known[index].unacknowledged.clear();
                        }
                        // The service died under the request.
                        _ => break,
                    }
                }
            }));
        }
        let pause = rand::rng().random_range(200..1200);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        clinic.kill();
        for renamer in renamers {
            renamer.await.unwrap();
        }
        if let Some(table) = held {
            let behind: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT count(*) FROM patients.patients p JOIN {table} s ON s.patient_id = p.id \
                 WHERE s.version < p.version"
            )))
            .fetch_one(&mut lock)
            .await
            .unwrap();
            assert!(behind > 0, "round {round}: the kill stranded no rename in {table}");
            sqlx::raw_sql("ROLLBACK").execute(&mut lock).await.unwrap();
        }
        clinic = Clinic::start(&db, &manifest).await;
    }

    // No more renames: every snapshot must reach the state the patients module holds, and that
    // state is the last rename acknowledged or one sent after it and never answered.
    let known = known.lock().unwrap().clone();
    let mut admin = db.connect().await;
    for (index, id) in patients.iter().enumerate() {
        let patient = clinic.api.get(&format!("/patients/{id}")).await.body;
        let state = json!({
            "mrn": patient["mrn"], "first_name": patient["first_name"],
            "last_name": patient["last_name"], "ward_id": patient["ward_id"],
        });
        let Known { acknowledged, unacknowledged } = &known[index];
        assert!(
            Some(&state) == acknowledged.as_ref() || unacknowledged.contains(&state),
            "patient {index} holds {state}, neither the acknowledged {acknowledged:?} nor one of the unanswered {unacknowledged:?}"
        );
        // Both snapshots reach the patient's current version (a name or a ward that merely looks
        // equal is not enough: the ward alternates between two values).
        let started = std::time::Instant::now();
        let versions = loop {
            let versions: (i64, i64, i64) = sqlx::query_as(
                "SELECT p.version, rx.version, lab.version FROM patients.patients p \
                 JOIN prescriptions.patient_snapshots rx ON rx.patient_id = p.id \
                 JOIN lab_results.patient_snapshots lab ON lab.patient_id = p.id WHERE p.id = $1::uuid",
            )
            .bind(id)
            .fetch_one(&mut admin)
            .await
            .unwrap();
            if (versions.1, versions.2) == (versions.0, versions.0) {
                break versions;
            }
            assert!(started.elapsed() < common::CONVERGE, "patient {index}: versions (patient, rx, lab) {versions:?}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        };
        // And what the HTTP API shows from them is the patient's last name and ward.
        let name = format!("{} {}", patient["first_name"].as_str().unwrap(), patient["last_name"].as_str().unwrap());
        let ward = patient["ward_id"].as_str().unwrap().to_owned();
        let prescriptions = clinic.api.get(&format!("/prescriptions?patient_id={id}")).await.body;
        assert_eq!((&prescriptions[0]["patient_name"], &prescriptions[0]["mrn"]), (&json!(name), &patient["mrn"]));
        let in_ward = clinic.api.get_with_ward(&format!("/lab-results?patient_id={id}"), &ward).await.body;
        assert_eq!(in_ward.as_array().map(Vec::len), Some(1), "patient {index} in ward {ward}: {in_ward}");
        assert!(versions.0 > 1, "patient {index} was never renamed");
    }

    // SIGTERM stops the service gracefully.
    let status = clinic.terminate().await;
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn the_clinic_refuses_to_serve_when_the_audit_finds_an_error() {
    let db = TestDb::new().await;
    let project = project(&db);
    let manifest = project.manifest_path();
    Clinic::start(&db, &manifest).await.terminate().await;
    // Someone couples billing to patients behind moat's back: provisioning drops nothing, the
    // audit finds the cross-module foreign key.
    db.exec(
        "ALTER TABLE billing.charges ADD CONSTRAINT charges_patient FOREIGN KEY (patient_id) \
         REFERENCES patients.patients (id)",
    )
    .await;
    let output = tokio::task::spawn_blocking(move || command(&db, &manifest).output().unwrap()).await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(!stdout.contains("listening"), "{stdout}");
    assert!(stderr.contains("refusing to start"), "{stderr}");
    assert!(stderr.contains("charges_patient") || stderr.contains("foreign"), "{stderr}");
}

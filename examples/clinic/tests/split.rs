//! The hospital, split: `billing` moves into a database of its own (`moat extract billing`,
//! replicate mode) while the clinic serves over HTTP and a load generator keeps recording
//! prescriptions and lab results. Afterwards every one of them has exactly one charge in billing's
//! new database, the application's billing pool logs in there, the audit is clean in both
//! databases, and the test prints how long billing's writes were unavailable.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clinic::Service;
use common::{Api, project};
use moat::Config;
use moat::admin::extract::{ExtractEvent, ExtractOptions, Mode, Outcome, extract};
use moat_testkit::TestDb;
use reqwest::StatusCode;
use serde_json::json;
use sqlx::PgConnection;
use uuid::Uuid;

/// The clinic's manifest with billing placed in `billing_db`.
fn split_manifest(manifest: &str) -> String {
    let manifest = manifest.replace("[modules.billing]\n", "[modules.billing]\ndatabase = \"billing_db\"\n");
    assert!(manifest.contains("database = \"billing_db\""), "the clinic's manifest has a `[modules.billing]` table");
    format!("{manifest}\n[databases.billing_db]\nurl_env = \"MOAT_TEST_UNSET_BILLING_URL\"\n")
}

/// What the load generator recorded: the ids the service answered 201 for, and every other
/// answer.
#[derive(Debug, Default)]
struct Load {
    prescriptions: Vec<Uuid>,
    lab_results: Vec<Uuid>,
    failures: Vec<String>,
}

/// Billing's writes as the application sees them: a write through billing's pool (taken anew for
/// each attempt, as the clinic's code does) every few milliseconds, rolled back so that it leaves
/// no charge behind.
#[derive(Debug, Default)]
struct Probe {
    attempts: u32,
    failed: u32,
    /// The longest time between two successful writes, in milliseconds.
    max_gap_ms: u128,
    /// Errors seen, with how often.
    errors: BTreeMap<String, u32>,
}

async fn ids(conn: &mut PgConnection, sql: &str) -> BTreeSet<Uuid> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned())).fetch_all(conn).await.unwrap().into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn billing_moves_into_its_own_database_while_the_clinic_serves() {
    let db = TestDb::logical().await;
    let billing_db = db.another("billing").await;
    let project = project(&db);

    // The clinic as it was: one database. Started once to create and migrate everything, then
    // stopped.
    let first = Service::start(Config::new(project.manifest()).database_url(db.url.expose())).await.unwrap();
    first.stop().await;

    // The manifest now puts billing in billing_db, where nothing of it is yet: the clinic starts
    // on it and serves billing from where its data is (main).
    let text = std::fs::read_to_string(project.manifest_path()).unwrap();
    project.write("moat.toml", &split_manifest(&text));
    let manifest = project.manifest();
    let service = Service::start(
        Config::new(manifest.clone()).database_url(db.url.expose()).database("billing_db", billing_db.expose()),
    )
    .await
    .unwrap_or_else(|e| panic!("the clinic does not start while billing is still in main: {e}"));
    let clinic = service.clinic().clone();
    assert_eq!(clinic.moat().database_of("billing"), None, "billing is served from main before the move");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = Api::new(format!("http://{}", listener.local_addr().unwrap()));
    let (stop_serving, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(service.serve(listener, async {
        let _ = stopped.await;
    }));

    let mut patients = Vec::new();
    for i in 0..4 {
        patients.push(api.create_patient("Pat", &format!("Ient{i}"), Some(&common::ward())).await);
    }

    // The load: prescriptions and lab results, continuously, from two clients.
    let stop = Arc::new(AtomicBool::new(false));
    let mut generators = Vec::new();
    for client in 0..2usize {
        let (api, stop, patients) = (api.clone(), stop.clone(), patients.clone());
        generators.push(tokio::spawn(async move {
            let mut load = Load::default();
            let mut i = client;
            while !stop.load(Ordering::Relaxed) {
                let patient = &patients[i % patients.len()];
                let (path, body) = if i % 2 == 0 {
                    ("/prescriptions", json!({"patient_id": patient, "medication": "amoxicillin", "dose_amount": 500}))
                } else {
                    ("/lab-results", json!({"patient_id": patient, "test": "glucose", "value": 5.4, "unit": "mmol/L"}))
                };
                let reply = api.post(path, &body).await;
                if reply.status == StatusCode::CREATED {
                    let id = reply.body["id"].as_str().unwrap().parse().unwrap();
                    if i % 2 == 0 { load.prescriptions.push(id) } else { load.lab_results.push(id) }
                } else {
                    load.failures.push(format!("{path}: {} {}", reply.status, reply.body));
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            load
        }));
    }

    // The probe of billing's writes.
    let probe = {
        let (moat, stop) = (clinic.moat().clone(), stop.clone());
        tokio::spawn(async move {
            let mut probe = Probe::default();
            let mut last_ok = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                probe.attempts += 1;
                let attempt = async {
                    let pool = moat.pool("billing").map_err(|e| e.to_string())?;
                    let mut tx = pool.begin().await.map_err(|e| e.to_string())?;
                    sqlx::query(
                        "INSERT INTO charges (patient_id, source, source_id, description, amount) \
                         VALUES (gen_random_uuid(), 'prescription', gen_random_uuid(), 'probe', 0)",
                    )
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| e.to_string())?;
                    tx.rollback().await.map_err(|e| e.to_string())
                };
                match tokio::time::timeout(Duration::from_secs(10), attempt).await {
                    Ok(Ok(())) => {
                        probe.max_gap_ms = probe.max_gap_ms.max(last_ok.elapsed().as_millis());
                        last_ok = Instant::now();
                    }
                    Ok(Err(e)) => {
                        probe.failed += 1;
                        *probe.errors.entry(e.chars().take(120).collect()).or_default() += 1;
                    }
                    Err(_) => {
                        probe.failed += 1;
                        *probe.errors.entry("no answer within 10 s".into()).or_default() += 1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            probe.max_gap_ms = probe.max_gap_ms.max(last_ok.elapsed().as_millis());
            probe
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    // `moat extract billing` while all of this runs.
    let report = extract(
        &manifest,
        &moat_core::names::ModuleName::parse("billing").unwrap(),
        &db.url,
        &billing_db,
        Some("billing_db"),
        &ExtractOptions::default(),
        &|event| {
            if let ExtractEvent::Step { step } = event {
                eprintln!("extract: {step}");
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("moat extract billing failed: {e}"));
    assert_eq!((report.outcome, report.mode), (Outcome::Moved, Mode::Replicate));

    // The application follows billing (the switch's notification, or its poll).
    let started = Instant::now();
    while clinic.moat().database_of("billing").map(|d| d.to_string()).as_deref() != Some("billing_db") {
        assert!(started.elapsed() < common::CONVERGE, "the application's billing pool never moved to billing_db");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The load keeps going for a while after the switch.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut load = Load::default();
    for generator in generators {
        let part = generator.await.unwrap();
        load.prescriptions.extend(part.prescriptions);
        load.lab_results.extend(part.lab_results);
        load.failures.extend(part.failures);
    }
    let probe = probe.await.unwrap();
    assert!(
        load.failures.is_empty(),
        "prescriptions and lab results were refused during the move: {:?}",
        load.failures
    );
    assert!(!load.prescriptions.is_empty() && !load.lab_results.is_empty(), "the load recorded nothing");

    // Every prescription and lab result in main (the load's and none else) gets one charge in
    // billing_db.
    let mut main = db.connect().await;
    let prescriptions = ids(&mut main, "SELECT id FROM prescriptions.prescriptions").await;
    let lab_results = ids(&mut main, "SELECT id FROM lab_results.lab_results").await;
    assert_eq!(prescriptions, load.prescriptions.iter().copied().collect::<BTreeSet<_>>());
    assert_eq!(lab_results, load.lab_results.iter().copied().collect::<BTreeSet<_>>());
    let mut target = moat::admin::connect(&billing_db).await.unwrap();
    let expected = prescriptions.len() + lab_results.len();
    let started = Instant::now();
    loop {
        let charged: i64 =
            sqlx::query_scalar("SELECT count(*) FROM billing.charges").fetch_one(&mut target).await.unwrap();
        if usize::try_from(charged).unwrap() >= expected {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{charged} of {expected} charges in billing_db after 60 s: events were lost"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let per_source: Vec<(String, Uuid, i64)> =
        sqlx::query_as("SELECT source, source_id, count(*) FROM billing.charges GROUP BY 1, 2 ORDER BY 1, 2")
            .fetch_all(&mut target)
            .await
            .unwrap();
    let doubled: Vec<_> = per_source.iter().filter(|(_, _, n)| *n != 1).collect();
    assert!(doubled.is_empty(), "charged more than once: {doubled:?}");
    let charged = |source: &str| -> BTreeSet<Uuid> {
        per_source.iter().filter(|(s, _, _)| s == source).map(|(_, id, _)| *id).collect()
    };
    assert_eq!(charged("prescription"), prescriptions, "prescriptions and their charges differ");
    assert_eq!(charged("lab_result"), lab_results, "lab results and their charges differ");

    // The application's billing pool logs in to billing_db, and the HTTP API reads from there.
    let here: String = sqlx::query_scalar("SELECT current_database()::text")
        .fetch_one(&clinic.moat().pool("billing").unwrap())
        .await
        .unwrap();
    assert_eq!(here, billing_db.database());
    let reply = api.get(&format!("/billing/charges?patient_id={}", patients[0])).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert!(!reply.body.as_array().unwrap().is_empty());

    let _ = stop_serving.send(());
    served.await.unwrap().unwrap();

    // The audit is clean in both databases.
    let target_all = moat::admin::up::Target {
        url: db.url.clone(),
        databases: clinic.moat().databases().clone(),
        source: Some(moat::admin::target::UrlSource::Flag),
        embedded: None,
    };
    let audit = moat::admin::audit::audit_all(&target_all, &manifest, moat::admin::audit::AuditOptions::default())
        .await
        .unwrap();
    assert_eq!(audit.databases.len(), 2, "the audit covers main and billing_db");
    let errors: Vec<_> = audit
        .findings()
        .into_iter()
        .filter(|f| f.severity == moat_core::findings::Severity::Error)
        .map(|f| format!("{f:?}"))
        .collect();
    assert!(errors.is_empty(), "the audit has errors after the move: {errors:#?}");

    eprintln!(
        "billing's writes during the move: {} probes, {} failed, longest gap between successful writes {} ms, \
         extract's write_unavailable_ms {:?}; errors seen: {:?}; {} prescriptions and {} lab results recorded",
        probe.attempts,
        probe.failed,
        probe.max_gap_ms,
        report.write_unavailable_ms,
        probe.errors,
        prescriptions.len(),
        lab_results.len()
    );
    assert!(probe.attempts > probe.failed, "billing's writes never succeeded");
}

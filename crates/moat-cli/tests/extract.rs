//! `moat extract` as a process killed with SIGKILL at every step boundary (the test hook
//! `MOAT_EXTRACT_KILL_AFTER`): a rerun ends moved, or `--abort` rolls back, with no write lost
//! and nothing left behind on either side.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Output};

use moat_admin::DatabaseUrl;
use moat_testkit::{TestDb, TestProject};
use sqlx::{Connection, PgConnection};

const MANIFEST: &str = r#"
[project]
name = "{project}"

[modules.patients]

[modules.billing]
depends_on = ["patients"]

[modules.reports]
depends_on = ["billing"]
"#;

fn project(db: &TestDb) -> TestProject {
    TestProject::new(
        &db.project,
        MANIFEST,
        &[
            ("modules/patients/migrations/0001_patients.sql", "CREATE TABLE patients (id int PRIMARY KEY);\n"),
            (
                "modules/billing/migrations/0001_notes.sql",
                "CREATE TABLE notes (id bigserial PRIMARY KEY, body text NOT NULL);\n\
                 CREATE TABLE lines (note_id bigint REFERENCES notes (id), n int, PRIMARY KEY (note_id, n));\n",
            ),
            ("modules/reports/migrations/0001_totals.sql", "CREATE TABLE totals (id int PRIMARY KEY);\n"),
        ],
    )
}

fn moat(
    project: &TestProject,
    source: &DatabaseUrl,
    target: &DatabaseUrl,
    args: &[&str],
    kill_after: Option<&str>,
) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_moat"));
    command
        .current_dir(project.dir.path())
        .env("NO_COLOR", "1")
        .env_remove("DATABASE_URL")
        .env_remove("MOAT_DATABASE_URL")
        .env_remove("MOAT_EXTRACT_KILL_AFTER")
        .arg("--database-url")
        .arg(source.expose())
        .args(args)
        .arg("--target-url")
        .arg(target.expose());
    if let Some(step) = kill_after {
        command.env("MOAT_EXTRACT_KILL_AFTER", step);
    }
    command.output().unwrap()
}

fn describe(output: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Inserts a note as billing's runtime role in the source; whether it was accepted.
async fn write_note(db: &TestDb, body: &str) -> bool {
    let Ok(mut app) = moat_admin::connect_as(&db.url.with_login(&db.role("billing"), None)).await else { return false };
    let ok = sqlx::query("INSERT INTO notes (body) VALUES ($1)").bind(body).execute(&mut app).await.is_ok();
    let _ = app.close().await;
    ok
}

async fn notes(conn: &mut PgConnection) -> Vec<String> {
    sqlx::query_scalar("SELECT body FROM billing.notes ORDER BY id").fetch_all(&mut *conn).await.unwrap()
}

async fn scalar_bool(conn: &mut PgConnection, sql: &str) -> bool {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned())).fetch_one(&mut *conn).await.unwrap()
}

/// No replication slot, publication or subscription of moat's on this side.
async fn assert_no_replication_left(conn: &mut PgConnection) {
    for sql in [
        // Of this database: the cluster is shared with other tests.
        "SELECT count(*) = 0 FROM pg_replication_slots WHERE database = current_database()",
        "SELECT count(*) = 0 FROM pg_publication",
        "SELECT count(*) = 0 FROM pg_subscription WHERE subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
    ] {
        assert!(scalar_bool(conn, sql).await, "{sql}");
    }
}

const BOUNDARIES: [&str; 5] = ["preflight", "prepare", "copy", "verify", "switched"];

/// The step boundaries of replicate mode.
const REPLICATE_BOUNDARIES: [&str; 6] = ["preflight", "prepare", "catchup", "cutover", "verify", "switched"];

/// Sets up a source with data, runs `moat extract billing --mode copy` killed after `step`, and
/// tries a write while the move stands there. Returns the notes that were accepted.
async fn killed_at(db: &TestDb, target: &DatabaseUrl, project: &TestProject, step: &str) -> Vec<String> {
    killed_in_mode(db, target, project, step, "copy").await
}

/// [`killed_at`] in `mode`.
async fn killed_in_mode(
    db: &TestDb,
    target: &DatabaseUrl,
    project: &TestProject,
    step: &str,
    mode: &str,
) -> Vec<String> {
    let up = Command::new(env!("CARGO_BIN_EXE_moat"))
        .current_dir(project.dir.path())
        .env("NO_COLOR", "1")
        .args(["--database-url", db.url.expose(), "up"])
        .output()
        .unwrap();
    assert!(up.status.success(), "{}", describe(&up));
    let mut accepted = Vec::new();
    for i in 0..20 {
        let body = format!("before {i}");
        assert!(write_note(db, &body).await);
        accepted.push(body);
    }
    let killed = moat(project, &db.url, target, &["extract", "billing", "--mode", mode], Some(step));
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&killed.status),
        Some(9),
        "not killed after {step}: {}",
        describe(&killed)
    );
    // While the move stands at this boundary, the module writes if it can (a frozen source
    // refuses the write: nothing is accepted that could be lost).
    let during = format!("during {step}");
    if write_note(db, &during).await {
        accepted.push(during);
    }
    accepted
}

#[tokio::test]
async fn a_rerun_after_a_kill_at_every_step_boundary_ends_moved_without_losing_a_write() {
    for step in BOUNDARIES {
        let db = TestDb::new().await;
        let target = db.another("target").await;
        let project = project(&db);
        let accepted = killed_at(&db, &target, &project, step).await;
        let rerun = moat(&project, &db.url, &target, &["--format", "json", "extract", "billing"], None);
        assert!(rerun.status.success(), "rerun after a kill at {step}: {}", describe(&rerun));
        let report: serde_json::Value = serde_json::from_slice(&rerun.stdout).unwrap();
        let expected = if step == "switched" { "already_switched" } else { "moved" };
        assert_eq!(report["outcome"], expected, "after {step}: {report}");
        assert_eq!(report["mode"], "copy");
        assert!(report["write_unavailable_ms"].is_u64(), "{report}");
        if step == "preflight" {
            let steps: Vec<&str> =
                report["steps"].as_array().unwrap().iter().map(|s| s["step"].as_str().unwrap()).collect();
            assert_eq!(steps, ["prepare", "copy", "verify", "switched"], "{report}");
            assert!(report["steps"][0]["duration_ms"].is_u64(), "{report}");
            let notes = report["tables"].as_array().unwrap().iter().find(|t| t["table"] == "billing.notes").unwrap();
            assert_eq!(notes["rows"], accepted.len() as u64, "{report}");
            assert!(notes["bytes"].as_u64().unwrap() > 0, "{report}");
            assert_eq!(report["verification"]["mismatches"].as_array().unwrap().len(), 0, "{report}");
        }
        let mut source = moat_admin::connect(&db.url).await.unwrap();
        let mut dst = moat_admin::connect(&target).await.unwrap();
        assert_eq!(notes(&mut dst).await, accepted, "after a kill at {step}");
        let step_now: String =
            sqlx::query_scalar("SELECT step FROM billing.moat_move").fetch_one(&mut source).await.unwrap();
        assert_eq!(step_now, "switched");
        assert!(!write_note(&db, "after the switch").await, "the source copy must be closed to the module");
        assert_no_replication_left(&mut source).await;
        assert_no_replication_left(&mut dst).await;
        source.close().await.unwrap();
        dst.close().await.unwrap();
    }
}

#[tokio::test]
async fn abort_after_a_kill_at_every_step_boundary_before_the_switch_leaves_nothing() {
    for step in &BOUNDARIES[..4] {
        let db = TestDb::new().await;
        let target = db.another("target").await;
        let project = project(&db);
        let mut source = moat_admin::connect(&db.url).await.unwrap();
        let mut accepted = killed_at(&db, &target, &project, step).await;
        let abort = moat(&project, &db.url, &target, &["extract", "billing", "--abort"], None);
        assert!(abort.status.success(), "abort after a kill at {step}: {}", describe(&abort));
        assert!(String::from_utf8_lossy(&abort.stdout).contains("Rolled back"), "{}", describe(&abort));
        let mut dst = moat_admin::connect(&target).await.unwrap();
        assert!(
            scalar_bool(&mut dst, "SELECT count(*) = 0 FROM pg_namespace WHERE nspname = 'billing'").await,
            "after {step}"
        );
        assert!(scalar_bool(&mut source, "SELECT count(*) = 0 FROM billing.moat_move").await, "after {step}");
        // The module serves from the source again, with every write it made.
        assert!(write_note(&db, "after the abort").await, "after {step}");
        accepted.push("after the abort".to_owned());
        assert_eq!(notes(&mut source).await, accepted, "after a kill at {step}");
        assert_no_replication_left(&mut source).await;
        assert_no_replication_left(&mut dst).await;
        source.close().await.unwrap();
        dst.close().await.unwrap();
    }
}

#[tokio::test]
async fn abort_after_the_switch_is_refused_and_finalize_drops_the_source() {
    let db = TestDb::new().await;
    let target = db.another("target").await;
    let project = project(&db);
    killed_at(&db, &target, &project, "switched").await;
    let abort = moat(&project, &db.url, &target, &["extract", "billing", "--abort"], None);
    assert_eq!(abort.status.code(), Some(2), "{}", describe(&abort));
    let stderr = String::from_utf8_lossy(&abort.stderr);
    assert!(stderr.contains("module `billing` switched to database"), "{stderr}");
    assert!(stderr.contains("--finalize"), "{stderr}");
    let finalize = moat(&project, &db.url, &target, &["extract", "billing", "--finalize"], None);
    assert!(finalize.status.success(), "{}", describe(&finalize));
    let mut source = moat_admin::connect(&db.url).await.unwrap();
    assert!(scalar_bool(&mut source, "SELECT count(*) = 0 FROM pg_namespace WHERE nspname = 'billing'").await);
    source.close().await.unwrap();
    // Nothing is left to finalize or roll back; neither asks for a mode.
    let again = moat(&project, &db.url, &target, &["extract", "billing", "--finalize"], None);
    assert_eq!(again.status.code(), Some(2), "{}", describe(&again));
    assert!(String::from_utf8_lossy(&again.stderr).contains("nothing to finalize"), "{}", describe(&again));
    let abort = moat(&project, &db.url, &target, &["extract", "billing", "--abort"], None);
    assert!(abort.status.success(), "{}", describe(&abort));
    assert!(
        String::from_utf8_lossy(&abort.stdout).contains("no move of `billing` to roll back"),
        "{}",
        describe(&abort)
    );
}

#[tokio::test]
async fn without_a_mode_extract_replicates_where_wal_level_is_logical_and_suggests_copy_elsewhere() {
    let db = TestDb::new().await;
    let target = db.another("target").await;
    let project = project(&db);
    let up = Command::new(env!("CARGO_BIN_EXE_moat"))
        .current_dir(project.dir.path())
        .env("NO_COLOR", "1")
        .args(["--database-url", db.url.expose(), "up"])
        .output()
        .unwrap();
    assert!(up.status.success(), "{}", describe(&up));
    let mut admin = moat_admin::connect(&db.url).await.unwrap();
    let wal_level: String =
        sqlx::query_scalar("SELECT current_setting('wal_level')").fetch_one(&mut admin).await.unwrap();
    admin.close().await.unwrap();
    let output = moat(&project, &db.url, &target, &["--format", "json", "extract", "billing"], None);
    if wal_level == "logical" {
        assert!(output.status.success(), "{}", describe(&output));
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(report["mode"], "replicate", "{report}");
        assert_eq!(report["outcome"], "moved", "{report}");
    } else {
        assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(&format!("`wal_level = {wal_level}`")), "{stderr}");
        assert!(stderr.contains("--mode copy"), "{stderr}");
    }
}

#[tokio::test]
async fn progress_goes_to_stderr_and_the_result_to_stdout() {
    let db = TestDb::new().await;
    let target = db.another("target").await;
    let project = project(&db);
    let up = Command::new(env!("CARGO_BIN_EXE_moat"))
        .current_dir(project.dir.path())
        .env("NO_COLOR", "1")
        .args(["--database-url", db.url.expose(), "up"])
        .output()
        .unwrap();
    assert!(up.status.success(), "{}", describe(&up));
    assert!(write_note(&db, "one").await);
    let output = moat(&project, &db.url, &target, &["extract", "billing", "--mode", "copy"], None);
    assert!(output.status.success(), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for expected in
        ["Step preflight", "Step copy: stopping the module's writes", "Copied billing.notes: 1 rows", "Step switched"]
    {
        assert!(stderr.contains(expected), "{expected:?} not in\n{stderr}");
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout
            .contains(&format!("Moved module `billing` to database `{}` (writes unavailable for ", target.database())),
        "{stdout}"
    );
    assert!(!stdout.contains("Copied"), "{stdout}");
}

#[tokio::test]
async fn replicate_a_rerun_after_a_kill_at_every_step_boundary_ends_moved_without_losing_a_write() {
    for step in REPLICATE_BOUNDARIES {
        let db = TestDb::logical().await;
        let target = db.another("target").await;
        let project = project(&db);
        let accepted = killed_in_mode(&db, &target, &project, step, "replicate").await;
        let rerun = moat(&project, &db.url, &target, &["--format", "json", "extract", "billing"], None);
        assert!(rerun.status.success(), "rerun after a kill at {step}: {}", describe(&rerun));
        let report: serde_json::Value = serde_json::from_slice(&rerun.stdout).unwrap();
        let expected = if step == "switched" { "already_switched" } else { "moved" };
        assert_eq!(report["outcome"], expected, "after {step}: {report}");
        assert_eq!(report["mode"], "replicate");
        let mut source = moat_admin::connect(&db.url).await.unwrap();
        let mut dst = moat_admin::connect(&target).await.unwrap();
        assert_eq!(notes(&mut dst).await, accepted, "after a kill at {step}");
        let step_now: String =
            sqlx::query_scalar("SELECT step FROM billing.moat_move").fetch_one(&mut source).await.unwrap();
        assert_eq!(step_now, "switched");
        assert!(!write_note(&db, "after the switch").await, "the source copy must be closed to the module");
        assert_no_replication_left(&mut source).await;
        assert_no_replication_left(&mut dst).await;
        source.close().await.unwrap();
        dst.close().await.unwrap();
    }
}

#[tokio::test]
async fn replicate_abort_after_a_kill_at_every_step_boundary_before_the_switch_leaves_nothing() {
    for step in &REPLICATE_BOUNDARIES[..5] {
        let db = TestDb::logical().await;
        let target = db.another("target").await;
        let project = project(&db);
        let mut source = moat_admin::connect(&db.url).await.unwrap();
        let mut accepted = killed_in_mode(&db, &target, &project, step, "replicate").await;
        let abort = moat(&project, &db.url, &target, &["extract", "billing", "--abort"], None);
        assert!(abort.status.success(), "abort after a kill at {step}: {}", describe(&abort));
        let mut dst = moat_admin::connect(&target).await.unwrap();
        assert!(
            scalar_bool(&mut dst, "SELECT count(*) = 0 FROM pg_namespace WHERE nspname = 'billing'").await,
            "after {step}"
        );
        assert!(scalar_bool(&mut source, "SELECT count(*) = 0 FROM billing.moat_move").await, "after {step}");
        assert!(write_note(&db, "after the abort").await, "after {step}");
        accepted.push("after the abort".to_owned());
        assert_eq!(notes(&mut source).await, accepted, "after a kill at {step}");
        assert_no_replication_left(&mut source).await;
        assert_no_replication_left(&mut dst).await;
        source.close().await.unwrap();
        dst.close().await.unwrap();
    }
}

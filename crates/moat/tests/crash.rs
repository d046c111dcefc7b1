//! No event is lost or applied twice when processes that publish and dispatch are killed with
//! SIGKILL at random points, one or two at a time.
//!
//! The test re-runs its own binary as the child process (`child_process_entry_point`, which does
//! nothing unless `MOAT_CRASH_CHILD` is set): the child publishes renames (each recorded in the
//! publisher's own table in the same transaction) and dispatches them to two subscribers, until it
//! is killed.
#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use moat::events::{DispatcherConfig, Envelope, Event, Handler, HandlerContext, HandlerError};
use moat::{Config, Moat};
use moat_testkit::{TestDb, TestProject};
use rand::Rng;
use serde::{Deserialize, Serialize};

const MANIFEST: &str = r#"
[project]
name = "{project}"
[modules.customers]
[modules.orders]
depends_on = ["customers"]
[modules.invoices]
depends_on = ["customers"]
"#;

const APPLIED: &str = "CREATE TABLE applied (id bigserial PRIMARY KEY, event_id uuid NOT NULL, key text NOT NULL, seq bigint NOT NULL);\n";

#[derive(Debug, Serialize, Deserialize)]
struct CustomerRenamed {
    customer_id: i64,
    version: i64,
}

impl Event for CustomerRenamed {
    const MODULE: &'static str = "customers";
    const TYPE: &'static str = "CustomerRenamed";
    fn key(&self) -> String {
        self.customer_id.to_string()
    }
}

struct Record;

impl Handler<CustomerRenamed> for Record {
    async fn handle(
        &self,
        ctx: &mut HandlerContext<'_>,
        event: &Envelope<CustomerRenamed>,
    ) -> Result<(), HandlerError> {
        sqlx::query("INSERT INTO applied (event_id, key, seq) VALUES ($1, $2, $3)")
            .bind(event.id)
            .bind(&event.key)
            .bind(event.payload.version)
            .execute(&mut **ctx)
            .await?;
        Ok(())
    }
}

fn config() -> DispatcherConfig {
    DispatcherConfig {
        batch_size: 13,
        poll_interval: Duration::from_millis(20),
        progress_interval: Duration::from_millis(50),
        retention_interval: Duration::from_millis(200),
        ..DispatcherConfig::default()
    }
}

async fn dispatch(app: &Moat) -> moat::events::Dispatcher {
    app.events()
        .config(config())
        .subscribe::<CustomerRenamed, _>("orders", Record)
        .unwrap()
        .subscribe::<CustomerRenamed, _>("invoices", Record)
        .unwrap()
        .start()
        .await
        .unwrap()
}

/// The child: publishes (unless told only to dispatch) and dispatches until killed.
#[tokio::test]
async fn child_process_entry_point() {
    let (Ok(url), Ok(manifest), Ok(mode)) =
        (std::env::var("MOAT_CRASH_CHILD"), std::env::var("MOAT_CRASH_MANIFEST"), std::env::var("MOAT_CRASH_MODE"))
    else {
        return;
    };
    let manifest = moat::Manifest::load(std::path::Path::new(&manifest)).unwrap();
    let app = Moat::connect(Config::new(manifest).database_url(url).pool_size(4)).await.unwrap();
    let _dispatcher = dispatch(&app).await;
    if mode == "dispatch" {
        std::future::pending::<()>().await;
    }
    let mut customer = 0i64;
    loop {
        customer = (customer + 7) % 23;
        let mut tx = app.begin("customers").await.unwrap();
        let version: i64 = sqlx::query_scalar(
            "INSERT INTO customers (id, version) VALUES ($1, 1) ON CONFLICT (id) DO UPDATE SET version = customers.version + 1 RETURNING version",
        )
        .bind(customer)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
        let id = tx.publish(&CustomerRenamed { customer_id: customer, version }).unwrap();
        sqlx::query("INSERT INTO renames (event_id) VALUES ($1)").bind(id).execute(&mut *tx).await.unwrap();
        tx.commit().await.unwrap();
    }
}

fn spawn_child(db: &TestDb, project: &TestProject, mode: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_process_entry_point", "--nocapture", "--test-threads=1"])
        .env("MOAT_CRASH_CHILD", db.url.expose())
        .env("MOAT_CRASH_MANIFEST", project.manifest_path())
        .env("MOAT_CRASH_MODE", mode)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn scalar(db: &TestDb, sql: &str) -> i64 {
    let mut conn = db.connect().await;
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned())).fetch_one(&mut conn).await.unwrap()
}

#[tokio::test]
async fn killing_publishers_and_dispatchers_at_random_points_loses_and_duplicates_nothing() {
    let db = TestDb::new().await;
    let project = TestProject::new(
        &db.project,
        MANIFEST,
        &[
            (
                "modules/customers/migrations/0001_customers.sql",
                "CREATE TABLE customers (id bigint PRIMARY KEY, version bigint NOT NULL);\nCREATE TABLE renames (event_id uuid PRIMARY KEY);\n",
            ),
            ("modules/orders/migrations/0001_applied.sql", APPLIED),
            ("modules/invoices/migrations/0001_applied.sql", APPLIED),
        ],
    );
    Moat::start(Config::new(project.manifest()).database_url(db.url.expose())).await.unwrap().close().await;

    let mut rng = rand::rng();
    let rounds = 16;
    for round in 0..rounds {
        // Every third round a second process only dispatches, racing the first one.
        let mut children = vec![spawn_child(&db, &project, "publish")];
        if round % 3 == 2 {
            children.push(spawn_child(&db, &project, "dispatch"));
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(150..700))).await;
        for child in &mut children {
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..40))).await;
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
    let published = scalar(&db, "SELECT count(*) FROM customers.renames").await;
    assert!(published > rounds, "the children published too little to mean anything: {published}");
    eprintln!("{rounds} kills, {published} events published");

    // A final dispatcher catches up on whatever the killed ones left.
    let app = Moat::connect(Config::new(project.manifest()).database_url(db.url.expose())).await.unwrap();
    let dispatcher = dispatch(&app).await;
    let started = Instant::now();
    for subscriber in ["orders", "invoices"] {
        loop {
            let applied = scalar(&db, &format!("SELECT count(*) FROM {subscriber}.applied")).await;
            if applied >= published {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "{subscriber} applied {applied} of {published}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for subscriber in ["orders", "invoices"] {
        let missing = scalar(
            &db,
            &format!("SELECT count(*) FROM customers.renames r WHERE NOT EXISTS (SELECT 1 FROM {subscriber}.applied a WHERE a.event_id = r.event_id)"),
        )
        .await;
        let duplicated = scalar(&db, &format!("SELECT count(*) FROM (SELECT event_id FROM {subscriber}.applied GROUP BY event_id HAVING count(*) > 1) d")).await;
        let foreign = scalar(
            &db,
            &format!("SELECT count(*) FROM {subscriber}.applied a WHERE NOT EXISTS (SELECT 1 FROM customers.renames r WHERE r.event_id = a.event_id)"),
        )
        .await;
        let out_of_order = scalar(
            &db,
            &format!("SELECT count(*) FROM (SELECT seq, lag(seq) OVER (PARTITION BY key ORDER BY id) AS prev FROM {subscriber}.applied) x WHERE seq <= prev"),
        )
        .await;
        assert_eq!(
            (missing, duplicated, foreign, out_of_order),
            (0, 0, 0, 0),
            "{subscriber}: missing, duplicated, unknown, out of order of {published}"
        );
    }
    dispatcher.shutdown().await;
    app.close().await;
}

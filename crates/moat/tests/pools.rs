//! Each module's pool logs in as the module's runtime role.
#![allow(clippy::unwrap_used)]

use moat::{Config, Moat};
use moat_testkit::{TestDb, TestProject};

#[tokio::test]
async fn start_migrates_and_gives_each_module_its_own_role() {
    let db = TestDb::new().await;
    let project = TestProject::new(
        &db.project,
        "[project]\nname = \"{project}\"\n[modules.customers]\n[modules.orders]\ndepends_on = [\"customers\"]\n",
        &[
            (
                "modules/customers/migrations/0001_customers.sql",
                "CREATE TABLE customers (id bigserial PRIMARY KEY, name text NOT NULL);\n",
            ),
            (
                "modules/orders/migrations/0001_orders.sql",
                "CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id bigint NOT NULL);\n",
            ),
        ],
    );
    let app = Moat::start(Config::new(project.manifest()).database_url(db.url.expose())).await.unwrap();
    assert_eq!(app.startup_report().unwrap().migrate.applied.len(), 2);

    let customers = &app.pool("customers").unwrap();
    let user: String = sqlx::query_scalar("SELECT current_user::text").fetch_one(customers).await.unwrap();
    assert_eq!(user, db.role("customers"));
    sqlx::query("INSERT INTO customers (name) VALUES ('Ada')").execute(customers).await.unwrap();

    let orders = &app.pool("orders").unwrap();
    let error = sqlx::query("SELECT * FROM customers.customers").execute(orders).await.unwrap_err();
    assert_eq!(moat_admin::error::sqlstate(&error).as_deref(), Some("42501"));

    assert!(app.pool("billing").unwrap_err().to_string().contains("unknown module `billing`"));

    // A second start migrates nothing.
    app.close().await;
    let again = Moat::start(Config::new(project.manifest()).database_url(db.url.expose())).await.unwrap();
    assert!(!again.startup_report().unwrap().changed());
    again.close().await;
}

#[tokio::test]
async fn start_refuses_when_the_audit_finds_a_leak() {
    let db = TestDb::new().await;
    let project = TestProject::new(
        &db.project,
        "[project]\nname = \"{project}\"\n[modules.customers]\n[modules.orders]\n",
        &[
            ("modules/customers/migrations/0001_customers.sql", "CREATE TABLE customers (id bigserial PRIMARY KEY);\n"),
            ("modules/orders/migrations/0001_orders.sql", "CREATE TABLE orders (id bigserial PRIMARY KEY);\n"),
        ],
    );
    let app = Moat::start(Config::new(project.manifest()).database_url(db.url.expose())).await.unwrap();
    app.close().await;
    db.exec(&format!("GRANT pg_read_all_data TO \"{}\"", db.role("orders"))).await;
    let error =
        Moat::start(Config::new(project.manifest()).database_url(db.url.expose()).migrate(false)).await.unwrap_err();
    let message = error.to_string();
    assert!(message.contains("refusing to start"), "{message}");
    assert!(message.contains("[access-leak]"), "{message}");
    assert!(message.contains("[role-membership]"), "{message}");
}

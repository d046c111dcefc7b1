#![allow(clippy::unwrap_used, clippy::panic)]
//! Data-driven plan tests without a database: a manifest, a catalog snapshot built by hand with
//! [`Catalog`], and the plan's SQL as an insta snapshot. What the database then does with the
//! SQL is the business of the tests that run against PostgreSQL (boundary, attacks_provision).

use std::collections::BTreeMap;
use std::path::Path;

use moat_admin::catalog::Snapshot;
use moat_admin::plan::{InstalledContract, PlanInputs, plan};
use moat_core::manifest::{Manifest, PathCheck};
use serde_json::{Value, json};

/// Every path exists.
struct AnyPath;

impl PathCheck for AnyPath {
    fn is_dir(&self, _: &Path) -> bool {
        true
    }
    fn exists(&self, _: &Path) -> bool {
        true
    }
}

fn manifest(text: &str) -> Manifest {
    Manifest::parse(Path::new("/p/moat.toml"), text, &AnyPath).unwrap_or_else(|e| panic!("{e:?}"))
}

/// A catalog snapshot built by hand, in the JSON shape `Snapshot::read` gets from the server.
struct Catalog {
    doc: Value,
}

fn acl(items: &[(&str, &str)]) -> Value {
    Value::Array(
        items
            .iter()
            .map(|(grantee, privilege)| json!({"grantee": grantee, "privilege": privilege, "grantable": false}))
            .collect(),
    )
}

impl Catalog {
    /// A fresh PostgreSQL 15 database `app`, the admin `postgres` a superuser: PUBLIC may
    /// connect and create temporary tables, and use schema `public`.
    fn fresh() -> Self {
        Self {
            doc: json!({
                "user": "postgres", "superuser": true, "database": "app", "database_owner": "postgres",
                "server_version_num": 150000, "roles": [], "memberships": [], "role_settings": {},
                "role_settings_all_databases": {},
                "database_acl": acl(&[("PUBLIC", "TEMPORARY"), ("PUBLIC", "CONNECT"), ("postgres", "CREATE"), ("postgres", "TEMPORARY"), ("postgres", "CONNECT")]),
                "schemas": [{"name": "public", "owner": "pg_database_owner", "acl": acl(&[("pg_database_owner", "USAGE"), ("pg_database_owner", "CREATE"), ("PUBLIC", "USAGE")])}],
                "relations": [], "functions": [], "default_acls": [],
            }),
        }
    }

    fn push(&mut self, key: &str, value: Value) -> &mut Self {
        self.doc[key].as_array_mut().unwrap().push(value);
        self
    }

    /// A role with no attribute but LOGIN/NOLOGIN and the given connection limit.
    fn role(&mut self, name: &str, login: bool, connection_limit: i32) -> &mut Self {
        self.push(
            "roles",
            json!({"name": name, "superuser": false, "inherit": true, "createrole": false, "createdb": false,
                   "login": login, "replication": false, "bypassrls": false, "connection_limit": connection_limit}),
        )
    }

    /// Changes one attribute of a role already added.
    fn attribute(&mut self, role: &str, attribute: &str, value: bool) -> &mut Self {
        let roles = self.doc["roles"].as_array_mut().unwrap();
        let entry = roles.iter_mut().find(|r| r["name"] == role).unwrap();
        entry[attribute] = Value::Bool(value);
        self
    }

    /// A role setting in this database (`in_database`) or in all databases.
    fn setting(&mut self, role: &str, setting: &str, in_database: bool) -> &mut Self {
        let key = if in_database { "role_settings" } else { "role_settings_all_databases" };
        let settings = self.doc[key].as_object_mut().unwrap();
        settings.entry(role).or_insert_with(|| json!([])).as_array_mut().unwrap().push(json!(setting));
        self
    }

    fn member(&mut self, role: &str, member: &str) -> &mut Self {
        self.push("memberships", json!({"role": role, "member": member}))
    }

    /// A schema; `acl` lists explicit grants besides the owner's (whose rights are added).
    fn schema(&mut self, name: &str, owner: &str, grants: &[(&str, &str)]) -> &mut Self {
        let mut items = vec![(owner, "USAGE"), (owner, "CREATE")];
        items.extend_from_slice(grants);
        self.push("schemas", json!({"name": name, "owner": owner, "acl": acl(&items)}))
    }

    /// A table (`r`), partitioned table (`p`), view (`v`) or sequence (`S`).
    fn relation(&mut self, schema: &str, name: &str, kind: &str, owner: &str, grants: &[(&str, &str)]) -> &mut Self {
        let own: &[&str] = if kind == "S" {
            &["SELECT", "UPDATE", "USAGE"]
        } else {
            &["SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER"]
        };
        let mut items: Vec<(&str, &str)> = own.iter().map(|p| (owner, *p)).collect();
        items.extend_from_slice(grants);
        self.push(
            "relations",
            json!({"schema": schema, "name": name, "kind": kind, "owner": owner, "acl": acl(&items),
                   "owned_by_table": false, "extension": false, "partition": name.starts_with("moat_outbox_") && kind == "r"}),
        )
    }

    fn default_acl(&mut self, role: &str, schema: Option<&str>, objtype: &str, grants: &[(&str, &str)]) -> &mut Self {
        self.push("default_acls", json!({"role": role, "schema": schema, "objtype": objtype, "acl": acl(grants)}))
    }

    fn snapshot(&self) -> Snapshot {
        serde_json::from_value(self.doc.clone()).unwrap()
    }
}

/// The plan of `manifest` against `catalog`, with its notes, as text.
fn check(manifest: &Manifest, catalog: &Catalog, inputs: &PlanInputs) -> String {
    let plan = plan(manifest, &catalog.snapshot(), inputs);
    let mut out = plan.to_sql();
    for note in &plan.notes {
        out.push_str(&format!("-- note: {note}\n"));
    }
    out
}

const ONE_MODULE: &str = r#"
[project]
name = "app"

[modules.orders]
"#;

const TWO_MODULES_AND_A_CONTRACT: &str = r#"
[project]
name = "app"
connection_limit = 10

[modules.customers]

[modules.orders]
depends_on = ["customers"]
connection_limit = 20

[contracts.totals]
sql = "contracts/totals.sql"
reads = ["orders.orders"]
readers = ["reporting"]

[consumers.reporting]
"#;

#[test]
fn creation_from_a_fresh_database() {
    insta::assert_snapshot!(check(&manifest(ONE_MODULE), &Catalog::fresh(), &PlanInputs::default()));
}

#[test]
fn creation_with_events_contracts_and_limits() {
    let manifest = manifest(TWO_MODULES_AND_A_CONTRACT);
    let mut inputs = PlanInputs::default();
    inputs.contract_texts.insert("totals".into(), "CREATE VIEW totals AS SELECT count(*) FROM orders.orders;\n".into());
    // The contract waits for `orders.orders`, which migrations create.
    insta::assert_snapshot!(check(&manifest, &Catalog::fresh(), &inputs));
}

/// The catalog of ONE_MODULE once provisioned (what a second run sees).
fn provisioned_one_module() -> Catalog {
    let mut c = Catalog::fresh();
    c.doc["database_acl"] = acl(&[
        ("postgres", "CREATE"),
        ("postgres", "TEMPORARY"),
        ("postgres", "CONNECT"),
        ("app_orders", "CONNECT"),
        ("app_orders_migrator", "CONNECT"),
    ]);
    c.doc["schemas"][0]["acl"] = acl(&[("pg_database_owner", "USAGE"), ("pg_database_owner", "CREATE")]);
    c.role("app_moat", false, -1)
        .role("app_orders_owner", false, -1)
        .role("app_orders", true, 32)
        .role("app_orders_migrator", true, 32)
        .attribute("app_orders_migrator", "inherit", false)
        .member("app_orders_owner", "app_orders_migrator")
        .setting("app_orders", "search_path=orders", true)
        .schema(
            "orders",
            "app_moat",
            &[
                ("app_orders_owner", "USAGE"),
                ("app_orders_owner", "CREATE"),
                ("app_orders", "USAGE"),
                ("app_orders_migrator", "USAGE"),
            ],
        )
        .relation(
            "orders",
            "moat_migrations",
            "r",
            "app_moat",
            &[("app_orders_migrator", "SELECT"), ("app_orders_migrator", "INSERT"), ("app_orders_migrator", "UPDATE")],
        )
        .default_acl(
            "app_orders_owner",
            Some("orders"),
            "r",
            &[("app_orders", "SELECT"), ("app_orders", "INSERT"), ("app_orders", "UPDATE"), ("app_orders", "DELETE")],
        )
        .default_acl("app_orders_owner", Some("orders"), "S", &[("app_orders", "USAGE")])
        .default_acl("app_orders_owner", Some("orders"), "f", &[("app_orders", "EXECUTE")])
        .default_acl("app_orders_owner", None, "f", &[("app_orders_owner", "EXECUTE")]);
    c
}

#[test]
fn a_provisioned_database_plans_nothing() {
    assert_eq!(check(&manifest(ONE_MODULE), &provisioned_one_module(), &PlanInputs::default()), "");
}

#[test]
fn drift_is_repaired() {
    let mut c = provisioned_one_module();
    c.attribute("app_orders", "superuser", true)
        .setting("app_orders", "statement_timeout=1ms", true)
        .setting("app_orders", "work_mem=64kB", false)
        .member("app_orders_owner", "app_orders")
        .relation("orders", "orders", "r", "app_orders", &[("PUBLIC", "SELECT")]);
    let roles = c.doc["roles"].as_array_mut().unwrap();
    roles.iter_mut().find(|r| r["name"] == "app_orders").unwrap()["connection_limit"] = json!(-1);
    insta::assert_snapshot!(check(&manifest(ONE_MODULE), &c, &PlanInputs::default()));
}

#[test]
fn the_old_layout_is_converted() {
    let mut c = provisioned_one_module();
    let doc = &mut c.doc;
    doc["schemas"][1]["owner"] = json!("app_orders_owner");
    doc["schemas"][1]["acl"] =
        acl(&[("app_orders_owner", "USAGE"), ("app_orders_owner", "CREATE"), ("app_orders", "USAGE")]);
    doc["relations"][0]["owner"] = json!("app_orders_owner");
    doc["relations"][0]["acl"] = acl(&[("app_orders_owner", "SELECT"), ("app_orders_owner", "INSERT")]);
    insta::assert_snapshot!(check(&manifest(ONE_MODULE), &c, &PlanInputs::default()));
}

#[test]
fn a_changed_contract_is_reinstalled_by_its_own_owner_and_orphans_are_noted() {
    let manifest = manifest(TWO_MODULES_AND_A_CONTRACT);
    let mut c = Catalog::fresh();
    c.role("app_contract_totals", true, 10)
        .role("app_billing", true, 32)
        .schema("billing", "app_billing", &[])
        .schema("orders", "app_moat", &[])
        .schema("contracts", "app_contracts", &[])
        .relation("orders", "orders", "r", "app_orders_owner", &[("app_contracts", "SELECT")])
        .relation("contracts", "moat_contracts", "r", "app_contracts", &[])
        .relation("contracts", "totals", "v", "app_contracts", &[("app_reporting", "SELECT")]);
    let mut inputs = PlanInputs::default();
    inputs
        .contract_texts
        .insert("totals".into(), "CREATE VIEW totals AS SELECT count(*) AS n FROM orders.orders;\n".into());
    inputs.installed_contracts = BTreeMap::from([(
        "totals".to_owned(),
        InstalledContract { checksum: "old".into(), views: vec!["totals".into()] },
    )]);
    let text = check(&manifest, &c, &inputs);
    // Only the contract's part and the notes: the rest is creation, covered above.
    let contracts = text.split("-- contracts\n").nth(1).unwrap_or_default();
    let objects: Vec<&str> =
        text.lines().filter(|l| l.contains("\"contracts\".") || l.contains("\"orders\".\"orders\"")).collect();
    insta::assert_snapshot!(format!("{}\n-- contracts\n{contracts}", objects.join("\n")));
}

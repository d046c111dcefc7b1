use super::*;

/// Every path exists except those under `missing/`.
struct Paths;

impl PathCheck for Paths {
    fn is_dir(&self, path: &Path) -> bool {
        !path.to_string_lossy().contains("missing")
    }
    fn exists(&self, path: &Path) -> bool {
        !path.to_string_lossy().contains("missing")
    }
}

fn parse(text: &str) -> Result<Manifest, Vec<ManifestError>> {
    Manifest::parse(Path::new("/p/moat.toml"), text, &Paths)
}

/// Renders the errors of an invalid manifest, one per line.
fn errors(text: &str) -> String {
    match parse(text) {
        Ok(_) => panic!("manifest should be invalid"),
        Err(errors) => errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"),
    }
}

const CLINIC: &str = r#"
[project]
name = "clinic"

[modules.patients]

[modules.prescriptions]
depends_on = ["patients"]

[modules.billing]
schema = "billing_v2"
migrations = "db/billing"
depends_on = ["prescriptions", "patients"]

[contracts.ward_census]
sql = "contracts/ward_census.sql"
reads = ["patients.patients", "prescriptions.prescriptions"]
readers = ["reporting"]

[consumers.reporting]
"#;

#[test]
fn a_valid_manifest_parses_with_defaults() {
    let manifest = parse(CLINIC).unwrap();
    assert_eq!(manifest.project.as_str(), "clinic");
    let names: Vec<&str> = manifest.modules.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["patients", "prescriptions", "billing"]);
    let patients = manifest.module("patients").unwrap();
    assert_eq!(patients.schema.as_str(), "patients");
    assert_eq!(patients.migrations, Path::new("/p/modules/patients/migrations"));
    let billing = manifest.module("billing").unwrap();
    assert_eq!(billing.schema.as_str(), "billing_v2");
    assert_eq!(billing.migrations, Path::new("/p/db/billing"));
    assert_eq!(manifest.contracts[0].reads[1].to_string(), "prescriptions.prescriptions");
    assert_eq!(manifest.consumers[0].as_str(), "reporting");
    assert!(manifest.uses_events());
}

#[test]
fn dependency_order_puts_dependencies_first() {
    let manifest = parse(
        r#"
[project]
name = "shop"
[modules.billing]
depends_on = ["orders"]
[modules.orders]
depends_on = ["customers"]
[modules.customers]
[modules.search]
"#,
    )
    .unwrap();
    let order: Vec<&str> = manifest.modules_in_dependency_order().iter().map(|m| m.name.as_str()).collect();
    assert_eq!(order, ["customers", "orders", "billing", "search"]);
}

#[test]
fn unknown_keys_are_reported_with_their_lines() {
    insta::assert_snapshot!(errors(
        r#"[project]
name = "clinic"
owner = "me"

[modules.patients]
schmea = "p"

[consumers.reporting]
password = "x"

[extra]
"#
    ), @r#"
    /p/moat.toml:3:1: `project.owner`: unknown key `owner`
      help: known keys here: `name`, `connection_limit`
    /p/moat.toml:6:1: `modules.patients.schmea`: unknown key `schmea`
      help: known keys here: `schema`, `migrations`, `sources`, `depends_on`, `claims`, `connection_limit`, `database`, `transport`
    /p/moat.toml:9:1: `consumers.reporting.password`: unknown key `password`
      help: `consumers.reporting` takes no keys
    /p/moat.toml:11:2: `extra`: unknown key `extra`
      help: known keys here: `project`, `modules`, `contracts`, `consumers`, `databases`, `events`
    "#);
}

#[test]
fn names_that_smuggle_sql_are_rejected_with_their_line() {
    insta::assert_snapshot!(errors(
        r#"[project]
name = "clinic"

[modules.'patients"; DROP SCHEMA x; --']

[modules.billing]
schema = "Billing"
"#
    ), @r#"
    /p/moat.toml:4:10: `modules.patients"; DROP SCHEMA x; --`: "patients\"; DROP SCHEMA x; --" is not a valid module name
      help: module names must match `^[a-z][a-z0-9_]{0,29}$`
    /p/moat.toml:7:10: `modules.billing.schema`: "Billing" is not a valid schema name
      help: schema names must match `^[a-z][a-z0-9_]{0,62}$`
    "#);
}

#[test]
fn bad_project_names_and_missing_project() {
    insta::assert_snapshot!(errors("[project]\nname = \"a-much-too-long-project-name\"\n"), @r#"
    /p/moat.toml:2:8: `project.name`: "a-much-too-long-project-name" is not a valid project name
      help: project names must match `^[a-z][a-z0-9_]{0,19}$`
    "#);
    insta::assert_snapshot!(errors("[modules.a]\n"), @r#"
    /p/moat.toml:1:1: `project`: missing `[project]` table
      help: add:
        [project]
        name = "myproject"
    "#);
}

#[test]
fn two_modules_with_one_schema() {
    insta::assert_snapshot!(errors(
        r#"[project]
name = "clinic"
[modules.patients]
[modules.people]
schema = "patients"
"#
    ), @r#"
    /p/moat.toml:5:10: `modules.people.schema`: schema `patients` is already used by module `patients`
      help: each module owns its own schema
    "#);
}

#[test]
fn reserved_schemas() {
    insta::assert_snapshot!(errors(
        r#"[project]
name = "clinic"
[modules.patients]
schema = "public"
[modules.pg_stuff]
"#
    ), @r#"
    /p/moat.toml:4:10: `modules.patients.schema`: schema `public` is reserved
      help: `public`, `contracts`, `information_schema` and `pg_*` cannot hold a module
    /p/moat.toml:5:10: `modules.pg_stuff`: module `pg_stuff` would get the reserved schema `pg_stuff`
      help: rename the module or set `schema = "..."`
    "#);
}

#[test]
fn unknown_dependencies_and_cycles() {
    insta::assert_snapshot!(errors(
        r#"[project]
name = "clinic"
[modules.a]
depends_on = ["b"]
[modules.b]
depends_on = ["c", "patinets"]
[modules.c]
depends_on = ["a"]
[modules.patients]
[modules.d]
depends_on = ["d"]
"#
    ), @r#"
    /p/moat.toml:3:10: `modules.a.depends_on`: dependency cycle: a -> b -> c -> a
      help: modules must form a hierarchy; break the cycle with events instead of a dependency
    /p/moat.toml:6:20: `modules.b.depends_on`: unknown module `patinets` in `depends_on`
      help: did you mean `patients`?
    /p/moat.toml:10:10: `modules.d.depends_on`: dependency cycle: d -> d
      help: modules must form a hierarchy; break the cycle with events instead of a dependency
    "#);
}

#[test]
fn contract_reads_and_readers_are_checked() {
    insta::assert_snapshot!(errors(
        r#"[project]
name = "clinic"
[modules.patients]
[contracts.census]
sql = "contracts/census.sql"
reads = ["patients", "billing.charges", "patients.Patients"]
readers = ["reporting"]
[contracts.other]
reads = ["patients.patients"]
"#
    ), @r#"
    /p/moat.toml:6:10: `contracts.census.reads`: `patients` is not `schema.relation`
      help: name the module's schema and the relation, such as `patients.patients`
    /p/moat.toml:6:22: `contracts.census.reads`: `billing.charges` names schema `billing`, which belongs to no module
    /p/moat.toml:6:41: `contracts.census.reads`: "Patients" is not a valid relation name
      help: relation names must match `^[a-z][a-z0-9_]{0,62}$`
    /p/moat.toml:7:12: `contracts.census.readers`: unknown consumer `reporting` in `readers`
      help: declare it as `[consumers.reporting]`
    /p/moat.toml:8:12: `contracts.other.sql`: missing `sql`: the file with the contract's CREATE VIEW statements
    "#);
}

#[test]
fn missing_folders_and_files() {
    insta::assert_snapshot!(errors(
        r#"[project]
name = "clinic"
[modules.patients]
migrations = "missing/migrations"
[modules.billing]
sources = ["src/billing", "missing/src"]
"#
    ), @r#"
    /p/moat.toml:4:14: `modules.patients.migrations`: directory `missing/migrations` does not exist (relative to the manifest's directory)
      help: create it (`mkdir -p missing/migrations`), or set `migrations = "..."` in `[modules.patients]`
    /p/moat.toml:6:27: `modules.billing.sources`: file `missing/src` does not exist (relative to the manifest's directory)
    "#);
}

#[test]
fn role_names_must_not_collide() {
    insta::assert_snapshot!(errors(
        r#"[project]
name = "clinic"
[modules.relay]
[modules.x]
[modules.x_owner]
[modules.reporting]
[consumers.reporting]
"#
    ), @r#"
    /p/moat.toml:7:12: `consumers.reporting`: consumer `reporting` has the name of a module; their roles would collide
      help: rename the consumer
    "#);
    insta::assert_snapshot!(errors(
        r#"[project]
name = "clinic"
[modules.relay]
[modules.x]
[modules.x_owner]
"#
    ), @r#"
    /p/moat.toml:3:10: `modules.relay`: role `clinic_relay` would be shared with the event relay
      help: rename one of them
    /p/moat.toml:5:10: `modules.x_owner`: role `clinic_x_owner` would be shared with `modules.x`
      help: rename one of them
    "#);
}

#[test]
fn invalid_toml_names_the_line() {
    insta::assert_snapshot!(errors("[project]\nname = \"clinic\"\n[modules.a\n"), @r#"
    /p/moat.toml:3:11: not valid TOML: unclosed table, expected `]`
    "#);
}

#[test]
fn claims_name_objects_in_a_shared_schema_and_the_most_specific_wins() {
    let manifest = parse(
        r#"[project]
name = "shop"
[modules.customers]
claims = ["public.customer_*", "public.customers"]
[modules.orders]
claims = ["public.order*", "legacy.*"]
[modules.audit]
claims = ["public.customer_audit"]
"#,
    )
    .expect("valid");
    let owner = |schema: &str, name: &str| manifest.owner_of(schema, name).map(|m| m.name.to_string());
    assert_eq!(owner("public", "customers").as_deref(), Some("customers"));
    assert_eq!(owner("public", "customer_addresses").as_deref(), Some("customers"));
    assert_eq!(owner("public", "customer_audit").as_deref(), Some("audit"));
    assert_eq!(owner("public", "orders").as_deref(), Some("orders"));
    assert_eq!(owner("legacy", "anything").as_deref(), Some("orders"));
    assert_eq!(owner("orders", "x").as_deref(), Some("orders"));
    assert_eq!(owner("public", "products"), None);
    assert_eq!(owner("public", "customer"), None);
    assert!(Claim::parse("public.a*b*c").expect("claim").matches("public", "a_b_c"));
    assert!(!Claim::parse("public.a*b*c").expect("claim").matches("public", "a_c"));
}

#[test]
fn bad_claims_are_reported_with_their_key() {
    insta::assert_snapshot!(errors(
        r#"[project]
name = "shop"
[modules.customers]
claims = ["customers", "orders.orders", "pg_catalog.pg_class", "public.Customers", "public.x", "public.x"]
[modules.orders]
claims = ["public.x"]
"#
    ), @r#"
    /p/moat.toml:4:11: `modules.customers.claims`: claim `customers` names no schema
      help: write `schema.table` or `schema.prefix_*`, such as `public.customer_*`
    /p/moat.toml:4:41: `modules.customers.claims`: schema `pg_catalog` cannot be claimed
      help: claims name objects in `public` or another shared schema
    /p/moat.toml:4:64: `modules.customers.claims`: claim `public.Customers` is not `schema.name` or `schema.pattern`
      help: write `schema.table` or `schema.prefix_*`, such as `public.customer_*`
    /p/moat.toml:4:96: `modules.customers.claims`: `public.x` is listed twice
    "#);
}

#[test]
fn claims_in_a_module_schema_or_in_two_modules_are_refused() {
    insta::assert_snapshot!(errors(
        r#"[project]
name = "shop"
[modules.customers]
claims = ["orders.orders", "public.customers"]
[modules.orders]
claims = ["public.customers"]
"#
    ), @r#"
    /p/moat.toml:4:11: `modules.customers.claims`: claim `orders.orders` is in schema `orders` of module `orders`
      help: a module can claim objects only in a schema that is no module's, such as `public`
    /p/moat.toml:6:11: `modules.orders.claims`: `public.customers` is also claimed by module `customers`
    "#);
}

#[test]
fn connection_limits_default_and_override() {
    let manifest = parse("[project]\nname = \"clinic\"\n[modules.a]\n").unwrap();
    assert_eq!(manifest.connection_limit, DEFAULT_CONNECTION_LIMIT);
    assert_eq!(manifest.modules[0].connection_limit, None);
    let manifest =
        parse("[project]\nname = \"clinic\"\nconnection_limit = 8\n[modules.a]\nconnection_limit = 64\n").unwrap();
    assert_eq!(manifest.connection_limit, 8);
    assert_eq!(manifest.modules[0].connection_limit, Some(64));
    insta::assert_snapshot!(errors(
        "[project]\nname = \"clinic\"\nconnection_limit = 0\n[modules.a]\nconnection_limit = \"many\"\n"
    ), @r"
    /p/moat.toml:3:20: `project.connection_limit`: expected a whole number of connections from 1 to 10000
      help: for example `connection_limit = 32`
    /p/moat.toml:5:20: `modules.a.connection_limit`: expected a whole number of connections from 1 to 10000
      help: for example `connection_limit = 32`
    ");
}

const SPLIT: &str = r#"
[project]
name = "clinic"

[databases.billing_db]
url_env = "BILLING_DATABASE_URL"

[modules.patients]

[modules.billing]
database = "billing_db"
depends_on = ["patients"]
"#;

#[test]
fn modules_name_the_database_they_live_in() {
    let manifest = parse(SPLIT).unwrap();
    assert_eq!(manifest.databases.len(), 1);
    assert_eq!(manifest.databases[0].name.as_str(), "billing_db");
    assert_eq!(manifest.databases[0].url_env, "BILLING_DATABASE_URL");
    let billing = manifest.module("billing").unwrap();
    assert_eq!(manifest.database_of(&billing.name).map(|d| d.as_str()), Some("billing_db"));
    assert_eq!(manifest.module("patients").unwrap().database, None);
}

#[test]
fn databases_are_validated_with_their_place() {
    let text = r#"
[project]
name = "clinic"

[databases.billing_db]
url_env = "postgres://u:secret@h/db"

[databases.other]

[databases.third]
url_env = "DATABASE_URL"

[modules.billing]
database = "othr"
"#;

    insta::assert_snapshot!(errors(text), @r#"
    /p/moat.toml:6:11: `databases.billing_db.url_env`: `url_env` names an environment variable; the URL itself never goes in the manifest
      help: write `url_env = "BILLING_DB_DATABASE_URL"` and put the URL in that variable
    /p/moat.toml:8:12: `databases.other.url_env`: missing `url_env`: the environment variable that holds the database's admin URL
      help: add `url_env = "OTHER_DATABASE_URL"`
    /p/moat.toml:11:11: `databases.third.url_env`: `DATABASE_URL` holds the main database's URL
      help: use a variable of its own, such as `THIRD_DATABASE_URL`
    /p/moat.toml:14:12: `modules.billing.database`: unknown database `othr`
      help: did you mean `other`?
    "#);
}

#[test]
fn what_cannot_cross_a_database_is_refused_with_the_way_out() {
    let text = format!(
        r#"{SPLIT}
[contracts.invoices_by_patient]
sql = "contracts/x.sql"
reads = ["patients.patients", "billing.invoices"]

[contracts.patient_list]
sql = "contracts/p.sql"
reads = ["patients.patients"]
readers = ["reporting"]

[contracts.charges]
sql = "contracts/c.sql"
reads = ["billing.charges"]
readers = ["reporting"]

[consumers.reporting]
"#
    );
    let rendered = errors(&text);
    assert!(
        rendered.contains("contract `invoices_by_patient` reads relations in more than one database: `patients.patients` in the main database, `billing.invoices` in database `billing_db`"),
        "{rendered}"
    );
    assert!(rendered.contains("API composition"), "{rendered}");
    assert!(
        rendered.contains("consumer `reporting` reads views in more than one database: contract `patient_list` in the main database, contract `charges` in database `billing_db`"),
        "{rendered}"
    );
}

//! `moat check` and `moat explain` as a user runs them: the built binary, no database, on a
//! copy of the repository's clinic example. Output is snapshotted with `NO_COLOR` and the
//! temporary folder replaced by `[TEMP]`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository's example project.
fn clinic() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/clinic")
}

/// A copy of the clinic example in a temporary folder.
fn clinic_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temporary folder");
    moat_testkit::copy_dir(&clinic(), dir.path());
    dir
}

fn moat(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moat"))
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env_remove("MOAT_DATABASE_URL")
        .env_remove("DATABASE_URL")
        .output()
        .expect("run moat")
}

/// Exit code, stdout and stderr together, with the temporary folder filtered out.
fn transcript(dir: &Path, output: &Output) -> String {
    let filter = |bytes: &[u8]| {
        let text = String::from_utf8_lossy(bytes).into_owned();
        let canonical = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
        text.replace(&canonical.display().to_string(), "[TEMP]").replace(&dir.display().to_string(), "[TEMP]")
    };
    format!(
        "exit code: {}\n----- stdout -----\n{}\n----- stderr -----\n{}",
        output.status.code().unwrap_or(-1),
        filter(&output.stdout),
        filter(&output.stderr)
    )
}

fn write(dir: &Path, file: &str, text: &str) {
    let path = dir.join(file);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("create folder");
    std::fs::write(path, text).expect("write file");
}

const UNPAID_MIGRATION: &str = "src/billing/migrations/0002_unpaid_report.sql";
const UNPAID_SQL: &str = "-- Charges not yet paid, with the patient's name.\nCREATE VIEW unpaid AS\n\
                          SELECT c.id, c.amount, p.last_name\nFROM charges c\n\
                          JOIN patients.patients p ON p.id = c.patient_id;\n";
const REPORT_RS: &str = "src/billing/report.rs";
const REPORT_SOURCE: &str = r##"//! The billing report.

pub async fn overdue(pool: &sqlx::PgPool) -> sqlx::Result<Vec<Overdue>> {
    sqlx::query_as!(
        Overdue,
        r#"SELECT c.id, a.ward_id
           FROM charges c
           JOIN patients.admissions a ON a.patient_id = c.patient_id"#
    )
    .fetch_all(pool)
    .await
}
"##;

/// The clinic copy with one cross-module join in a migration and one in embedded Rust SQL (in a
/// new file of the billing module's `sources`).
fn clinic_with_two_violations() -> tempfile::TempDir {
    let dir = clinic_copy();
    write(dir.path(), UNPAID_MIGRATION, UNPAID_SQL);
    write(dir.path(), REPORT_RS, REPORT_SOURCE);
    dir
}

#[test]
fn the_clinic_example_checks_clean() {
    let output = moat(&clinic(), &["check"]);
    assert_eq!(output.status.code(), Some(0), "{}", transcript(&clinic(), &output));
    insta::assert_snapshot!(transcript(&clinic(), &output));
}

#[test]
fn a_join_in_a_migration_and_one_in_embedded_rust_fail_with_both_locations() {
    let dir = clinic_with_two_violations();
    let output = moat(dir.path(), &["check"]);
    let text = transcript(dir.path(), &output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("--> src/billing/migrations/0002_unpaid_report.sql:5:6"), "{text}");
    assert!(text.contains("--> src/billing/report.rs:8:17"), "{text}");
    insta::assert_snapshot!(text);
}

#[test]
fn machine_formats_carry_both_locations() {
    let dir = clinic_with_two_violations();

    let output = moat(dir.path(), &["--format", "json", "check"]);
    assert_eq!(output.status.code(), Some(1));
    let document: serde_json::Value = serde_json::from_slice(&output.stdout).expect("one JSON document");
    let keys: Vec<&String> = document.as_object().expect("object").keys().collect();
    assert_eq!(keys, ["version", "findings", "summary", "coupling"]);
    assert_eq!(document["summary"], serde_json::json!({"errors": 2, "warnings": 0, "files": 19}));
    // The coupling report: what crosses from each module to each other.
    assert_eq!(
        document["coupling"],
        serde_json::json!([{"from": "billing", "to": "patients", "foreign_keys": 0, "references": 2, "function_calls": 0}])
    );
    let places: Vec<String> = document["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| format!("{}:{}:{} {} {}", f["file"], f["line"], f["column"], f["rule"], f["object"]))
        .collect();
    insta::assert_snapshot!(places.join("\n"), @r#"
    "src/billing/migrations/0002_unpaid_report.sql":5:6 "cross-module-reference" "patients.patients"
    "src/billing/report.rs":8:17 "cross-module-reference" "patients.admissions"
    "#);

    let output = moat(dir.path(), &["--format", "sarif", "check"]);
    assert_eq!(output.status.code(), Some(1));
    let log: serde_json::Value = serde_json::from_slice(&output.stdout).expect("SARIF is JSON");
    assert_eq!(log["version"], "2.1.0");
    let results = log["runs"][0]["results"].as_array().expect("results");
    assert_eq!(results.len(), 2);
    assert_eq!(results[0]["locations"][0]["physicalLocation"]["region"]["startLine"], 5);
    let rules = log["runs"][0]["tool"]["driver"]["rules"].as_array().expect("rules");
    assert!(rules.iter().any(|r| r["id"] == "cross-module-foreign-key"));

    let output = moat(dir.path(), &["--format", "github", "check"]);
    assert_eq!(output.status.code(), Some(1));
    let text = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with("::error file=src/billing/migrations/0002_unpaid_report.sql,line=5,col=6,"), "{text}");
    assert!(lines[1].starts_with("::error file=src/billing/report.rs,line=8,col=17,"), "{text}");
}

#[test]
fn the_baseline_adopts_existing_violations_fails_on_new_ones_and_reports_fixed_ones_as_stale() {
    let dir = clinic_with_two_violations();
    let root = dir.path();

    // Adopt: today's findings are recorded and accepted.
    let adopt = moat(root, &["check", "--write-baseline"]);
    assert_eq!(adopt.status.code(), Some(0), "{}", transcript(root, &adopt));
    let baseline = std::fs::read_to_string(root.join("moat-baseline.toml")).expect("baseline written");
    assert!(baseline.contains("patients.patients") && baseline.contains("patients.admissions"), "{baseline}");
    assert!(!baseline.contains("\nline ="), "the baseline is keyed without line numbers:\n{baseline}");
    insta::assert_snapshot!("baseline_adopt", transcript(root, &adopt));

    // An unrelated edit moves the old violation down: still accepted.
    write(root, UNPAID_MIGRATION, &format!("-- moved\n\n{UNPAID_SQL}"));
    let again = moat(root, &["check"]);
    assert_eq!(again.status.code(), Some(0), "{}", transcript(root, &again));

    // A new violation fails, and only it is shown.
    write(
        root,
        "src/billing/migrations/0003_lab_costs.sql",
        "CREATE VIEW lab_costs AS\nSELECT l.id FROM lab_results.lab_results l;\n",
    );
    let new = moat(root, &["check"]);
    let text = transcript(root, &new);
    assert_eq!(new.status.code(), Some(1), "{text}");
    assert!(text.contains("0003_lab_costs.sql:2:18"), "{text}");
    assert!(!text.contains("0002_unpaid_report.sql") && !text.contains("report.rs"), "{text}");
    insta::assert_snapshot!("baseline_new_violation", text);

    // Fixing an old one leaves a stale entry, which the user is told to rewrite.
    std::fs::remove_file(root.join(UNPAID_MIGRATION)).expect("remove migration");
    let fixed = moat(root, &["check"]);
    let text = transcript(root, &fixed);
    assert_eq!(fixed.status.code(), Some(1), "the new violation still fails: {text}");
    assert!(text.contains("no longer occurs; rewrite moat-baseline.toml with `moat check --write-baseline`"), "{text}");
    insta::assert_snapshot!("baseline_stale", text);

    // `--no-baseline` shows everything again.
    let all = moat(root, &["check", "--no-baseline"]);
    assert!(String::from_utf8_lossy(&all.stdout).contains("report.rs"));
}

#[test]
fn suppressions_silence_with_a_reason() {
    let dir = clinic_copy();
    write(
        dir.path(),
        UNPAID_MIGRATION,
        &format!(
            "-- moat:allow cross-module-reference -- the view goes away with #12\n{}",
            UNPAID_SQL.replace("-- Charges not yet paid, with the patient's name.\n", "")
        ),
    );
    let output = moat(dir.path(), &["check"]);
    assert_eq!(output.status.code(), Some(0), "{}", transcript(dir.path(), &output));
}

#[test]
fn explain_prints_a_rules_doc_and_lists_the_rules() {
    let output = moat(&clinic(), &["explain", "cross-module-foreign-key"]);
    assert_eq!(output.status.code(), Some(0));
    let text = String::from_utf8_lossy(&output.stdout);
    for part in ["**What it finds.**", "**Why it matters.**", "**Example.**", "**Fix.**"] {
        assert!(text.contains(part), "{text}");
    }
    let list = moat(&clinic(), &["explain"]);
    assert_eq!(list.status.code(), Some(0));
    let text = String::from_utf8_lossy(&list.stdout);
    for rule in moat_analysis::rules() {
        assert!(text.contains(rule.as_str()), "{text}");
        let doc = moat(&clinic(), &["explain", rule.as_str()]);
        assert_eq!(doc.status.code(), Some(0), "{}", rule.as_str());
    }
    let unknown = moat(&clinic(), &["explain", "no-such-rule"]);
    assert_eq!(unknown.status.code(), Some(2));
    insta::assert_snapshot!(transcript(&clinic(), &unknown));
}

/// The `RuleId` variants that the Rust sources under `dir` name, such as `AccessLeak`.
fn rule_variants_named_in(dir: &Path) -> std::collections::BTreeSet<String> {
    let mut variants = std::collections::BTreeSet::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("folder entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("read source");
                for piece in text.split("RuleId::").skip(1) {
                    let variant: String = piece.chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
                    if variant.starts_with(|c: char| c.is_ascii_uppercase()) && variant != "ALL" {
                        variants.insert(variant);
                    }
                }
            }
        }
    }
    variants
}

#[test]
fn every_rule_check_or_audit_can_report_is_in_the_catalog_and_explained() {
    let check = moat_analysis::rules();
    let audit = moat_admin::audit::rules();
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // Each producer's list holds every rule its sources name (and the analysis and the audit
    // check at run time, in debug builds, that every finding's rule is in their list).
    for (producer, dir, listed) in
        [("moat-analysis", "moat-analysis/src", check), ("moat-admin", "moat-admin/src", audit)]
    {
        let named = rule_variants_named_in(&crates.join(dir));
        assert!(!named.is_empty(), "{dir} names no rule");
        for variant in named {
            assert!(
                listed.iter().any(|r| format!("{r:?}") == variant),
                "{producer} reports `RuleId::{variant}`, which its `rules()` does not list"
            );
        }
    }
    // Every rule either command reports is documented, and the binary explains it.
    let list = moat(&clinic(), &["explain"]);
    assert_eq!(list.status.code(), Some(0));
    let list = String::from_utf8_lossy(&list.stdout).into_owned();
    for rule in check.iter().chain(audit) {
        let id = rule.as_str();
        assert_eq!(moat_core::rules::RuleId::parse(id), Some(*rule), "`{id}` is not in the catalog");
        assert!(!rule.summary().is_empty(), "`{id}` has no summary");
        for part in ["**What it finds.**", "**Why it matters.**", "**Example.**", "**Fix.**"] {
            assert!(rule.doc().contains(part), "`{id}`'s documentation lacks {part}");
        }
        assert!(
            list.lines().any(|line| line.starts_with(&format!("{id} "))),
            "`moat explain` does not list `{id}`:\n{list}"
        );
        let explained = moat(&clinic(), &["explain", id]);
        assert_eq!(explained.status.code(), Some(0), "{}", transcript(&clinic(), &explained));
        assert_eq!(String::from_utf8_lossy(&explained.stdout), rule.doc(), "`moat explain {id}`");
    }
    // And the catalog holds no rule that neither command reports.
    for rule in moat_core::rules::RuleId::ALL {
        assert!(check.contains(rule) || audit.contains(rule), "`{rule}` is in the catalog, but nothing reports it");
    }
}

#[test]
fn unreadable_input_exits_2_and_names_the_file() {
    let dir = clinic_copy();
    std::fs::write(dir.path().join("src/billing/migrations/0002_latin1.sql"), b"SELECT '\xe9';\n").expect("write");
    let output = moat(dir.path(), &["check"]);
    assert_eq!(output.status.code(), Some(2));
    insta::assert_snapshot!(transcript(dir.path(), &output));

    let empty = tempfile::tempdir().expect("temporary folder");
    let output = moat(empty.path(), &["check"]);
    assert_eq!(output.status.code(), Some(2), "no manifest");
}

#[test]
fn included_files_are_checked_where_they_are_included_and_findings_point_into_them() {
    let dir = clinic_copy();
    // A migration that pulls the report in from a folder of shared SQL, and one include that
    // leaves the project.
    write(
        dir.path(),
        "src/billing/migrations/0002_reports.sql",
        "-- The reports live in their own files.\n\\ir ../sql/reports.sql\n\\ir ../../../../secret.sql\n",
    );
    write(dir.path(), "src/billing/sql/reports.sql", "\\ir unpaid.sql\n");
    write(dir.path(), "src/billing/sql/unpaid.sql", UNPAID_SQL);
    let before = moat(clinic().as_path(), &["--format", "json", "check"]);
    let before: serde_json::Value = serde_json::from_slice(&before.stdout).expect("one JSON document");

    let output = moat(dir.path(), &["--format", "json", "check"]);
    assert_eq!(output.status.code(), Some(1), "{}", transcript(dir.path(), &output));
    let document: serde_json::Value = serde_json::from_slice(&output.stdout).expect("one JSON document");
    let findings = document["findings"].as_array().expect("findings");
    let places: Vec<String> = findings
        .iter()
        .map(|f| format!("{}:{}:{} {} {} {}", f["file"], f["line"], f["column"], f["rule"], f["module"], f["object"]))
        .collect();
    insta::assert_snapshot!(places.join("\n"), @r#"
    "src/billing/migrations/0002_reports.sql":3:1 "psql-include" "billing" "../../../../secret.sql"
    "src/billing/sql/unpaid.sql":5:6 "cross-module-reference" "billing" "patients.patients"
    "#);
    assert_eq!(
        findings[0]["message"],
        "`\\ir ../../../../secret.sql` is not followed, so what it includes is not checked: it leaves the \
         project's folder (the folder of `moat.toml`), which moat never reads outside"
    );
    // The two included files count as files read.
    let files = |d: &serde_json::Value| d["summary"]["files"].as_u64().expect("files");
    assert_eq!(files(&document), files(&before) + 3);
    assert_eq!(
        document["coupling"],
        serde_json::json!([{"from": "billing", "to": "patients", "foreign_keys": 0, "references": 1, "function_calls": 0}])
    );

    // The human output shows the included file's line.
    let output = moat(dir.path(), &["check"]);
    let text = transcript(dir.path(), &output);
    assert!(text.contains("src/billing/sql/unpaid.sql:5:6"), "{text}");
    assert!(text.contains("JOIN patients.patients p"), "{text}");
}

/// A project of two modules, `orders` subscribing to `customers`, whose `[events]` table holds
/// `transport = "jetstream"` (line 4) and then `setting` (line 5).
fn events_project(events: &str, orders: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temporary folder");
    write(
        dir.path(),
        "moat.toml",
        &format!(
            "[project]\nname = \"shop\"\n[events]\n{events}\n[modules.customers]\n[modules.orders]\ndepends_on = [\"customers\"]\n{orders}\n"
        ),
    );
    write(
        dir.path(),
        "modules/customers/migrations/0001_customers.sql",
        "CREATE TABLE customers (id bigint PRIMARY KEY);\n",
    );
    write(dir.path(), "modules/orders/migrations/0001_orders.sql", "CREATE TABLE orders (id bigint PRIMARY KEY);\n");
    dir
}

#[test]
fn unsafe_event_transport_settings_are_errors_at_their_manifest_line() {
    let cases = [
        ("storage = \"memory\"", "storage", "`storage = \"file\"`"),
        ("duplicate_window = \"10s\"", "duplicate_window", "`duplicate_window = \"1m\"` or longer"),
        (
            "max_age = \"1h\"",
            "max_age",
            "no `max_age` (unlimited) while a subscription uses `transport = \"jetstream\"`",
        ),
        (
            "max_msgs = 1000",
            "max_msgs",
            "no `max_msgs` (unlimited) while a subscription uses `transport = \"jetstream\"`",
        ),
        ("ack_wait = \"10s\"", "ack_wait", "`ack_wait = \"30s\"` or longer"),
    ];
    for (line, setting, safe) in cases {
        let dir = events_project(&format!("transport = \"jetstream\"\n{line}"), "");
        let output = moat(dir.path(), &["check"]);
        let text = transcript(dir.path(), &output);
        assert_eq!(output.status.code(), Some(1), "{line}: {text}");
        assert!(text.contains("unsafe-event-transport"), "{line}: {text}");
        assert!(text.contains("moat.toml:5:1"), "{line}: {text}");
        assert!(text.contains(&format!("`events.{setting} = ")), "{line}: {text}");
        assert!(text.contains(safe), "{line}: {text}");

        let output = moat(dir.path(), &["--format", "json", "check"]);
        assert_eq!(output.status.code(), Some(1), "{line}: {}", transcript(dir.path(), &output));
        let document: serde_json::Value = serde_json::from_slice(&output.stdout).expect("one JSON document");
        let findings = document["findings"].as_array().expect("findings");
        assert_eq!(findings.len(), 1, "{line}: {document}");
        let finding = &findings[0];
        assert_eq!(finding["rule"], "unsafe-event-transport", "{line}: {finding}");
        assert_eq!(finding["severity"], "error", "{line}: {finding}");
        assert_eq!(finding["file"], "moat.toml", "{line}: {finding}");
        assert_eq!(finding["line"], 5, "{line}: {finding}");
        assert_eq!(finding["object"], format!("events.{setting}"), "{line}: {finding}");
        assert!(finding["help"].as_str().is_some_and(|h| h.contains(safe)), "{line}: {finding}");
    }
}

#[test]
fn stream_limits_are_no_finding_while_no_subscription_reads_jetstream() {
    // No `[events] transport`: every subscription reads the outbox.
    let dir = events_project("max_age = \"1h\"\nmax_msgs = 1000", "");
    let output = moat(dir.path(), &["check"]);
    assert_eq!(output.status.code(), Some(0), "{}", transcript(dir.path(), &output));
    // Every event goes to JetStream, but the one subscription says `direct`.
    let dir = events_project("transport = \"jetstream\"\nmax_age = \"1h\"", "transport = { customers = \"direct\" }");
    let output = moat(dir.path(), &["check"]);
    assert_eq!(output.status.code(), Some(0), "{}", transcript(dir.path(), &output));
    // The subscription reads JetStream: the limit is an error again.
    let dir = events_project("max_age = \"1h\"", "transport = { customers = \"jetstream\" }");
    let output = moat(dir.path(), &["check"]);
    assert_eq!(output.status.code(), Some(1), "{}", transcript(dir.path(), &output));
}

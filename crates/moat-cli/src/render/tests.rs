//! Snapshots of every rule's diagnostic as each renderer writes it.

use std::path::Path;

use moat_analysis::{AnalysisInput, Source, SourceKind, analyze};
use moat_core::findings::{Finding, Severity};
use moat_core::manifest::{Manifest, PathCheck};
use moat_core::rules::RuleId;

use super::*;

struct Everything;
impl PathCheck for Everything {
    fn is_dir(&self, _: &Path) -> bool {
        true
    }
    fn exists(&self, _: &Path) -> bool {
        true
    }
}

fn manifest() -> Manifest {
    let toml = "[project]\nname = \"clinic\"\n[modules.patients]\n[modules.billing]\n\
                [contracts.ward_census]\nsql = \"contracts/ward_census.sql\"\nreads = [\"patients.patients\"]\n\
                readers = [\"reporting\"]\n[consumers.reporting]\n";
    Manifest::parse(Path::new("moat.toml"), toml, &Everything).expect("test manifest")
}

/// One snippet per rule: (rule, file, kind, text).
fn fixtures() -> Vec<(&'static str, &'static str, SourceKind, &'static str)> {
    let billing = || SourceKind::Migration { module: "billing".into() };
    vec![
        (
            "cross-module-reference",
            "billing/migrations/0002_unpaid.sql",
            billing(),
            "CREATE VIEW unpaid AS\nSELECT c.id, p.last_name\nFROM charges c\nJOIN patients.patients p ON p.id = c.patient_id;\n",
        ),
        (
            "cross-module-foreign-key",
            "billing/migrations/0003_fk.sql",
            billing(),
            "ALTER TABLE charges\n  ADD FOREIGN KEY (patient_id) REFERENCES patients.patients (id);\n",
        ),
        (
            "object-outside-module-schema",
            "billing/migrations/0004_public.sql",
            billing(),
            "CREATE TABLE public.numbers (n bigint);\n",
        ),
        (
            "grant-beyond-manifest",
            "billing/migrations/0005_grant.sql",
            billing(),
            "GRANT SELECT ON charges TO PUBLIC;\n",
        ),
        (
            "security-definer-function",
            "billing/migrations/0006_definer.sql",
            billing(),
            "CREATE FUNCTION total() RETURNS numeric\n  LANGUAGE sql SECURITY DEFINER\n  AS $$ SELECT sum(amount) FROM charges $$;\n",
        ),
        (
            "privileged-statement-in-migration",
            "billing/migrations/0007_role.sql",
            billing(),
            "SELECT 1;\nRESET ROLE;\n",
        ),
        (
            "dynamic-sql",
            "billing/migrations/0008_dynamic.sql",
            billing(),
            "DO $$\nBEGIN\n  EXECUTE format('TRUNCATE %I', 'charges');\nEND $$;\n",
        ),
        (
            "contract-undeclared-read",
            "contracts/ward_census.sql",
            SourceKind::Contract { contract: "ward_census".into() },
            "CREATE VIEW ward_census AS\nSELECT a.ward_id, count(*) FROM patients.admissions a GROUP BY 1;\n",
        ),
        (
            "contract-not-a-view",
            "contracts/ward_census.sql",
            SourceKind::Contract { contract: "ward_census".into() },
            "CREATE VIEW ward_census AS SELECT 1 AS n;\nGRANT SELECT ON ward_census TO bi;\n",
        ),
        (
            "parse-error",
            "billing/migrations/0009_typo.sql",
            billing(),
            "CREATE TABLE t (\n  id uuid PRIMARY KEY,\n);\n",
        ),
        (
            "unused-suppression",
            "billing/migrations/0010_stale.sql",
            billing(),
            "-- moat:allow cross-module-reference -- until #42\nSELECT 1;\n",
        ),
        (
            "suppression-without-reason",
            "billing/migrations/0011_reason.sql",
            billing(),
            "-- moat:allow cross-module-reference\nSELECT * FROM patients.patients;\n",
        ),
        (
            "unresolved-reference",
            "billing/migrations/0012_unresolved.sql",
            billing(),
            "CREATE TABLE charges (id uuid PRIMARY KEY);\nSELECT * FROM charge;\n",
        ),
        (
            "transaction-control-in-migration",
            "billing/migrations/0013_commit.sql",
            billing(),
            "CREATE TABLE charges (id uuid PRIMARY KEY);\nCOMMIT;\n",
        ),
        (
            "dynamic-set-config",
            "billing/migrations/0014_set_config.sql",
            billing(),
            "SELECT set_config('ro' || 'le', 'postgres', true);\n",
        ),
        (
            "psql-variable",
            "billing/migrations/0015_psql.sql",
            billing(),
            "CREATE TABLE charges (id uuid PRIMARY KEY, note text DEFAULT :'note');\n",
        ),
        ("psql-include", "billing/migrations/0016_include.sql", billing(), "\\ir functions.sql\n"),
        ("template-placeholder", "billing/migrations/0017_template.sql", billing(), "CREATE SCHEMA {{ .Schema }};\n"),
        (
            "cross-module-reference-in-rust",
            "src/billing/report.rs",
            SourceKind::RustSource { module: "billing".into() },
            "pub async fn unpaid(pool: &sqlx::PgPool) -> sqlx::Result<Vec<Row>> {\n    sqlx::query_as!(\n        Row,\n        r#\"SELECT c.id FROM charges c JOIN patients.patients p ON p.id = c.patient_id\"#\n    )\n    .fetch_all(pool)\n    .await\n}\n",
        ),
    ]
}

/// The findings of one snippet. The snippets name tables they do not create, so
/// `unresolved-reference` is left out except in its own snippet's file.
fn findings_of(file: &str, kind: SourceKind, text: &str) -> Vec<Finding> {
    let manifest = manifest();
    let input = AnalysisInput { manifest: &manifest, sources: vec![Source { file: file.into(), text, kind }] };
    let mut findings = analyze(&input).findings;
    if !file.contains("unresolved") {
        findings.retain(|f| f.rule != "unresolved-reference");
    }
    findings
}

fn pretty(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

fn plain(styled: &str) -> String {
    anstream::adapter::strip_str(styled).to_string()
}

#[test]
fn every_rule_renders_as_a_rustc_style_diagnostic() {
    for (rule, file, kind, text) in fixtures() {
        let findings = findings_of(file, kind, text);
        let expected_rule = rule.trim_end_matches("-in-rust");
        assert!(findings.iter().any(|f| f.rule == expected_rule), "{rule}: {findings:?}");
        let sources = Sources::from([(file.to_owned(), text.to_owned())]);
        insta::assert_snapshot!(format!("human_{rule}"), plain(&human(&findings, &sources)));
    }
}

#[test]
fn machine_formats() {
    let (_, file, kind, text) = fixtures().swap_remove(0);
    let mut findings = findings_of(file, kind, text);
    let sources = Sources::from([(file.to_owned(), text.to_owned())]);
    // A catalog finding, as `moat audit` reports them: no file, an object.
    let mut catalog =
        Finding::new(RuleId::PublicDatabaseAccess, Severity::Warning, "`PUBLIC` may connect to database `clinic`")
            .object("clinic")
            .help("REVOKE CONNECT ON DATABASE clinic FROM PUBLIC");
    catalog.module = None;
    findings.push(catalog);

    insta::assert_snapshot!("human_catalog", plain(&human(&findings[1..], &sources)));
    insta::assert_snapshot!("json", pretty(&json(&findings, 1)));
    insta::assert_snapshot!("github", github(&findings, &sources));
    // The rules the run knows; the catalog finding's rule is not among them, so SARIF takes its
    // description from the catalog.
    let rules: Vec<RuleDescription<'_>> = moat_analysis::rules()
        .iter()
        .filter(|r| **r == RuleId::CrossModuleReference)
        .map(|r| RuleDescription {
            id: r.as_str(),
            summary: r.summary(),
            doc: "(documentation)",
            severity: r.severity(),
        })
        .collect();
    let log = sarif(&findings, &rules, &sources);
    assert_eq!(log["version"], "2.1.0");
    assert_eq!(log["runs"][0]["results"].as_array().map(Vec::len), Some(2));
    let mut log = log;
    log["runs"][0]["tool"]["driver"]["semanticVersion"] = "[version]".into();
    insta::assert_snapshot!("sarif", pretty(&log));
}

#[test]
fn colour_is_ansi_that_anstream_can_strip() {
    let (_, file, kind, text) = fixtures().swap_remove(0);
    let findings = findings_of(file, kind, text);
    let sources = Sources::from([(file.to_owned(), text.to_owned())]);
    let styled = human(&findings, &sources);
    assert!(styled.contains("\u{1b}["), "styled output carries ANSI escapes");
    assert!(!plain(&styled).contains('\u{1b}'));
}

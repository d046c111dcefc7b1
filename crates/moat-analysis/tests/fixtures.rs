//! Data-driven fixtures: each folder of `tests/fixtures` is a project (`moat.toml` and module
//! folders) and `expected.txt` lists every finding of `moat check` over it, one per line as
//! `file:line:column severity rule object`, in the analysis's order. A fixture passes only when
//! the findings are exactly those.

use std::path::{Path, PathBuf};

use moat_analysis::{AnalysisInput, analyze};
use moat_core::manifest::Manifest;

/// The findings of a fixture project, rendered one per line.
fn findings_of(project: &Path) -> String {
    let manifest = Manifest::load(&project.join("moat.toml")).unwrap_or_else(|e| panic!("{}: {e}", project.display()));
    // The migrations and what their includes pull in, read as `moat check` reads them.
    let files = moat_sources::read_migrations(&manifest).unwrap_or_else(|e| panic!("{}: {e}", project.display()));
    let sources = files.iter().map(moat_sources::SourceFile::source).collect();
    let analysis = analyze(&AnalysisInput { manifest: &manifest, sources });
    let mut out = String::new();
    for f in &analysis.findings {
        out.push_str(&format!(
            "{}:{}:{} {} {} {}\n",
            f.file.as_deref().unwrap_or("-"),
            f.line.unwrap_or(0),
            f.column.unwrap_or(0),
            f.severity.as_str(),
            f.rule,
            f.object.as_deref().unwrap_or("-"),
        ));
    }
    out
}

#[test]
fn every_fixture_reports_exactly_its_expected_findings() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut cases: Vec<PathBuf> =
        std::fs::read_dir(&root).expect("tests/fixtures").map(|e| e.expect("entry").path()).collect();
    cases.sort();
    let mut failures = Vec::new();
    for case in cases.iter().filter(|c| c.join("moat.toml").is_file()) {
        let expected = std::fs::read_to_string(case.join("expected.txt")).unwrap_or_default();
        let actual = findings_of(case);
        if expected != actual {
            failures.push(format!("{}:\n--- expected\n{expected}--- actual\n{actual}", case.display()));
        }
    }
    assert!(cases.len() >= 2, "the fixtures are missing");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

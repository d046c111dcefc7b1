//! The analysis over real-world SQL nobody on this project wrote (`../shared/corpus`, or
//! `MOAT_CORPUS_DIR`): PostgreSQL's regression suite, PostgREST's fixtures, a Rails app's
//! `pg_dump`. It must not panic or hang; every file PostgreSQL rejects must get located
//! `parse-error` findings; the totals are pinned so that a regression shows.
//!
//! The corpus is not part of the repository, so this test is built only with the `corpus`
//! feature: `scripts/test-corpus` runs it, and fails when the corpus is missing.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use moat_analysis::{Analysis, AnalysisInput, Source, SourceKind, analyze};
use moat_core::manifest::{Manifest, PathCheck};

fn corpus_dir() -> PathBuf {
    let dir = match std::env::var_os("MOAT_CORPUS_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus"),
    };
    assert!(
        dir.is_dir(),
        "the SQL corpus is missing: expected it at `{}` (the `shared/corpus` folder beside the checkout); \
         set MOAT_CORPUS_DIR to its path",
        dir.display()
    );
    dir
}

fn sql_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> =
        std::fs::read_dir(dir).expect("read corpus folder").map(|e| e.expect("corpus entry").path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            sql_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "sql") {
            out.push(path);
        }
    }
}

struct Everything;
impl PathCheck for Everything {
    fn is_dir(&self, _: &Path) -> bool {
        true
    }
    fn exists(&self, _: &Path) -> bool {
        true
    }
}

/// The corpus's files as migrations of one module, `corpus`, in a project that also has modules
/// named after schemas the corpus uses, so that the boundary rules have something to find.
fn run_corpus() -> (Vec<(String, String)>, Analysis) {
    let dir = corpus_dir();
    let mut paths = Vec::new();
    sql_files(&dir, &mut paths);
    let files: Vec<(String, String)> = paths
        .iter()
        .map(|p| {
            let name = p.strip_prefix(&dir).expect("inside").to_string_lossy().replace('\\', "/");
            let bytes = std::fs::read(p).expect("read corpus file");
            (name, String::from_utf8_lossy(&bytes).into_owned())
        })
        .collect();
    let toml = "[project]\nname = \"corpus\"\n[modules.corpus]\n[modules.test]\n[modules.v1]\n";
    let manifest = Manifest::parse(Path::new("moat.toml"), toml, &Everything).expect("manifest");
    let sources: Vec<Source<'_>> = files
        .iter()
        .map(|(name, text)| Source {
            file: name.clone(),
            text,
            kind: SourceKind::Migration { module: "corpus".into() },
        })
        .collect();
    let analysis = analyze(&AnalysisInput { manifest: &manifest, sources });
    drop(manifest);
    (files, analysis)
}

#[test]
fn the_corpus_is_read_without_panic_or_hang_and_rejected_files_get_located_parse_errors() {
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(run_corpus());
    });
    let (files, analysis) = match done_rx.recv_timeout(Duration::from_secs(600)) {
        Ok(result) => result,
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("the analysis of the corpus did not finish in 10 minutes: a hang")
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("the analysis of the corpus panicked"),
    };
    let stats = analysis.stats;
    eprintln!("{stats:?}");

    // Every file PostgreSQL's parser rejects as a whole has at least one located parse error.
    let mut rejected = 0;
    for (name, text) in &files {
        if pg_query::parse(text, 0).is_ok() {
            continue;
        }
        rejected += 1;
        // psql variables (`:"PGUSER"`) are reported as `psql-variable`, not as parse errors.
        let located = analysis.findings.iter().any(|f| {
            (f.rule == "parse-error" || f.rule == "psql-variable")
                && f.file.as_deref() == Some(name.as_str())
                && f.line.is_some_and(|l| l >= 1)
                && f.column.is_some_and(|c| c >= 1)
        });
        assert!(
            located,
            "`{name}` is rejected by PostgreSQL but has no located parse-error (or psql-variable) finding"
        );
    }
    for finding in analysis.findings.iter().filter(|f| f.rule == "parse-error") {
        let file = finding.file.as_deref().expect("parse errors name their file");
        let text = &files.iter().find(|(n, _)| n == file).expect("known file").1;
        let span = finding.span.clone().expect("parse errors carry a span");
        assert!(span.start <= span.end && span.end <= text.len(), "{finding:?}");
    }

    // The totals: a change here is a change in what the analysis reads. Update them only with a
    // reason (a parser upgrade, a deliberate change in splitting).
    let totals = (stats.files, stats.statements, stats.parse_errors, rejected);
    // 883: `postgrest/roles.sql`'s `:"PGUSER"` is a psql variable (reported as such), not a parse error.
    assert_eq!(totals, (247, 55162, 883, 50), "(files, statements, parse errors, files PostgreSQL rejects)");
    // The corpus's psql meta-commands are commented out by its vendor; a meta-command would be
    // skipped and counted here.
    assert_eq!((stats.meta_commands, stats.copy_data_lines), (0, 0));
}

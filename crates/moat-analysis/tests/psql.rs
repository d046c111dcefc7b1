//! psql scripts: meta-commands and `COPY ... FROM stdin` data are skipped and counted.

use std::path::Path;

use moat_analysis::{AnalysisInput, Source, SourceKind, analyze};
use moat_core::manifest::{Manifest, PathCheck};

struct Everything;
impl PathCheck for Everything {
    fn is_dir(&self, _: &Path) -> bool {
        true
    }
    fn exists(&self, _: &Path) -> bool {
        true
    }
}

#[test]
fn psql_meta_commands_and_copy_data_are_skipped_and_counted() {
    let toml = "[project]\nname = \"corpus\"\n[modules.corpus]\n";
    let manifest = Manifest::parse(Path::new("moat.toml"), toml, &Everything).expect("manifest");
    let sql = "\\set ON_ERROR_STOP on\nCREATE TABLE t (id int, name text);\n\\d t\n\
               COPY t FROM stdin;\n1\tone\n2\ttwo\n\\.\nSELECT count(*) FROM t \\gset\n\\echo :count\n";
    let input = AnalysisInput {
        manifest: &manifest,
        sources: vec![Source {
            file: "psql.sql".into(),
            text: sql,
            kind: SourceKind::Migration { module: "corpus".into() },
        }],
    };
    let analysis = analyze(&input);
    assert!(analysis.findings.is_empty(), "{:?}", analysis.findings);
    let stats = analysis.stats;
    assert_eq!((stats.statements, stats.meta_commands, stats.copy_data_lines), (3, 4, 3));
}

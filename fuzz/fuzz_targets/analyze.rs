//! Fuzzes `moat_analysis::analyze`: any text, as a migration, a contract or Rust source, must
//! give findings (never a panic, a hang or a crash), and every finding in a file must point
//! inside it.
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run analyze` in this folder (cargo-fuzz needs nightly
//! features; `RUSTC_BOOTSTRAP=1` enables them on a stable toolchain).

#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
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

fn manifest() -> &'static Manifest {
    static MANIFEST: OnceLock<Manifest> = OnceLock::new();
    MANIFEST.get_or_init(|| {
        let toml = "[project]\nname = \"clinic\"\n[modules.patients]\n[modules.billing]\n\
                    [contracts.census]\nsql = \"census.sql\"\nreads = [\"patients.patients\"]\n";
        match Manifest::parse(Path::new("moat.toml"), toml, &Everything) {
            Ok(manifest) => manifest,
            Err(errors) => panic!("fuzz manifest: {errors:?}"),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let text = String::from_utf8_lossy(rest);
    let kind = match selector % 3 {
        0 => SourceKind::Migration { module: "billing".into() },
        1 => SourceKind::Contract { contract: "census".into() },
        _ => SourceKind::RustSource { module: "billing".into() },
    };
    let input =
        AnalysisInput { manifest: manifest(), sources: vec![Source { file: "input".into(), text: &text, kind }] };
    let analysis = analyze(&input);
    for finding in &analysis.findings {
        if let Some(span) = &finding.span {
            assert!(span.start <= span.end && span.end <= text.len(), "span outside the text: {finding:?}");
            assert!(text.is_char_boundary(span.start), "span inside a character: {finding:?}");
        }
        assert!(finding.line.is_some_and(|l| l >= 1), "{finding:?}");
    }
});

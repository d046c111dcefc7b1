//! Analysis throughput over a folder of SQL files (the shared corpus), for `scripts/bench-check`.
//!
//! `cargo run --release -p moat-analysis --example bench_corpus -- <dir> [runs]` reads every
//! `*.sql` under `<dir>`, analyzes them as migrations of one module `runs` times (default 5), and
//! prints one JSON line: files, bytes, statements, parse errors, findings, and the best and median
//! analysis times with MB/s and statements/s of the best run. With `runs` = 0 it analyzes once
//! and prints nothing: the whole process is then what an outside timer measures.

use std::path::{Path, PathBuf};
use std::time::Instant;

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

fn sql_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            sql_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "sql") {
            out.push(path);
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().ok_or("usage: bench_corpus <dir> [runs]")?);
    let runs: usize = args.next().map(|r| r.parse()).transpose()?.unwrap_or(5);
    let mut paths = Vec::new();
    sql_files(&dir, &mut paths)?;
    paths.sort();
    let texts: Vec<(String, String)> = paths
        .iter()
        .map(|p| Ok((p.display().to_string(), String::from_utf8_lossy(&std::fs::read(p)?).into_owned())))
        .collect::<std::io::Result<_>>()?;
    let manifest =
        Manifest::parse(Path::new("moat.toml"), "[project]\nname = \"bench\"\n[modules.bench]\n", &Everything)
            .map_err(|e| format!("{e:?}"))?;
    let input = AnalysisInput {
        manifest: &manifest,
        sources: texts
            .iter()
            .map(|(file, text)| Source {
                file: file.clone(),
                text,
                kind: SourceKind::Migration { module: "bench".into() },
            })
            .collect(),
    };
    if runs == 0 {
        let analysis = analyze(&input);
        std::hint::black_box(analysis);
        return Ok(());
    }
    // One run to warm up (thread pool, page cache), then the measured ones.
    let mut analysis = analyze(&input);
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        analysis = analyze(&input);
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let best = times[0];
    let median = times[times.len() / 2];
    let stats = analysis.stats;
    println!(
        "{{\"files\":{},\"bytes\":{},\"statements\":{},\"parse_errors\":{},\"findings\":{},\"runs\":{runs},\
         \"best_seconds\":{best:.4},\"median_seconds\":{median:.4},\"mb_per_s\":{:.2},\"statements_per_s\":{:.0}}}",
        stats.files,
        stats.bytes,
        stats.statements,
        stats.parse_errors,
        analysis.findings.len(),
        stats.bytes as f64 / 1e6 / best,
        stats.statements as f64 / best,
    );
    Ok(())
}

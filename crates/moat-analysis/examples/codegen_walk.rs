//! Regenerates `src/ast/walk.rs` from the pinned pg_query (see `codegen/walk.rs`):
//! `cargo run -p moat-analysis --example codegen_walk`.

#[path = "../codegen/walk.rs"]
mod walk;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

fn main() -> Result<(), String> {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let source = walk::pg_query_source(env!("CARGO"), manifest_dir)?;
    let text = walk::generate_from(&source)?;
    let target = manifest_dir.join("src/ast/walk.rs");
    let config = manifest_dir.join("../../rustfmt.toml");
    let mut rustfmt = Command::new("rustfmt")
        .args(["--edition", "2024", "--config-path"])
        .arg(&config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run rustfmt: {e}"))?;
    rustfmt.stdin.take().ok_or("no stdin")?.write_all(text.as_bytes()).map_err(|e| e.to_string())?;
    let output = rustfmt.wait_with_output().map_err(|e| e.to_string())?;
    if !output.status.success() {
        return Err("rustfmt failed on the generated walk.rs".into());
    }
    std::fs::write(&target, output.stdout).map_err(|e| format!("cannot write `{}`: {e}", target.display()))?;
    println!("wrote {}", target.display());
    Ok(())
}

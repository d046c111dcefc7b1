//! The vocabulary every moat crate shares: validated names, the manifest, SQL quoting,
//! the catalog of rules, findings and baselines. No database, no SQL parser, no network.
//!
//! ```
//! use moat_core::manifest::Manifest;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # std::fs::create_dir_all(dir.path().join("modules/patients/migrations"))?;
//! # std::fs::write(dir.path().join("moat.toml"), "[project]\nname = \"clinic\"\n[modules.patients]\n")?;
//! let manifest = Manifest::load(&dir.path().join("moat.toml"))?;
//! assert_eq!(manifest.roles().module_runtime(&manifest.modules[0].name), "clinic_patients");
//! # Ok(()) }
//! ```

pub mod baseline;
pub mod findings;
pub mod manifest;
pub mod names;
pub mod quote;
pub mod rules;
pub mod sqltext;
pub mod text;

/// A SHA-256 checksum of a migration's text with line endings normalized, as lowercase hex.
pub fn checksum(text: &str) -> String {
    use sha2::{Digest, Sha256};
    let normalized = text::normalize_line_endings(text);
    let digest = Sha256::digest(normalized.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

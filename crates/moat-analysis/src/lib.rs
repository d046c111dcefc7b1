//! moat's static analysis: SQL text and the manifest in, boundary findings out.
//!
//! The analyzer reads module migrations, contract files and the SQL embedded in Rust sources
//! with PostgreSQL's own grammar (the `pg_query` crate), resolves every name it meets to a schema
//! and so to a module, and reports what crosses a module boundary. It does no I/O: the caller
//! reads the files and passes their text, including the files that psql includes (`\i`, `\ir`)
//! name ([`included_files`] says which; `moat-sources` reads them for `moat check`), which the
//! analysis reads in place; an include it cannot follow is a `psql-include` finding.
//!
//! ```
//! use moat_analysis::{AnalysisInput, Source, SourceKind, analyze};
//! use moat_core::manifest::{Manifest, PathCheck};
//! # use std::path::Path;
//! # struct Everything;
//! # impl PathCheck for Everything {
//! #     fn is_dir(&self, _: &Path) -> bool { true }
//! #     fn exists(&self, _: &Path) -> bool { true }
//! # }
//! let toml = "[project]\nname = \"clinic\"\n[modules.patients]\n[modules.billing]\n";
//! let manifest = Manifest::parse(Path::new("moat.toml"), toml, &Everything).unwrap();
//! let sql = "CREATE TABLE charges (id uuid, patient_id uuid);\n\
//!            SELECT c.id FROM charges c JOIN patients.patients p ON p.id = c.patient_id;";
//! let input = AnalysisInput {
//!     manifest: &manifest,
//!     sources: vec![Source {
//!         file: "modules/billing/migrations/0002_report.sql".into(),
//!         text: sql,
//!         kind: SourceKind::Migration { module: "billing".into() },
//!     }],
//! };
//! let analysis = analyze(&input);
//! assert_eq!(analysis.findings.len(), 1);
//! let finding = &analysis.findings[0];
//! assert_eq!(finding.rule, "cross-module-reference");
//! assert_eq!(finding.object.as_deref(), Some("patients.patients"));
//! assert_eq!((finding.line, finding.column), (Some(2), Some(33)));
//! ```

mod analyze;
mod ast;
pub mod embedded;
mod fragment;
mod include;
pub mod layout;
mod parse;
mod plpgsql;
mod resolve;
pub mod rules;
mod script;
mod suppress;

use moat_core::findings::Finding;
use moat_core::manifest::Manifest;

pub use crate::analyze::analyze;
pub use crate::include::included_files;
pub use crate::layout::MigrationFormat;
pub use crate::rules::rules;

/// Everything the analysis reads: the manifest and the text of each source.
#[derive(Debug, Clone)]
pub struct AnalysisInput<'a> {
    /// The project's manifest: modules, their schemas, contracts and consumers.
    pub manifest: &'a Manifest,
    /// The files to analyze, in any order.
    pub sources: Vec<Source<'a>>,
}

/// One file to analyze.
#[derive(Debug, Clone)]
pub struct Source<'a> {
    /// Path relative to the manifest's directory, with `/` separators; findings carry it, and
    /// includes name files by it.
    pub file: String,
    /// The file's text.
    pub text: &'a str,
    /// What the file is, and whose.
    pub kind: SourceKind,
}

/// What a source file is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceKind {
    /// A migration of the named module (SQL, possibly with psql meta-commands).
    Migration {
        /// The module.
        module: String,
    },
    /// The SQL file of the named contract (`CREATE VIEW` statements and comments on them).
    Contract {
        /// The contract.
        contract: String,
    },
    /// Rust source of the named module, whose embedded SQL is analyzed.
    RustSource {
        /// The module.
        module: String,
    },
    /// A file that psql includes (`\i`, `\ir`) pull in (see [`included_files`]): read only
    /// where a migration or contract includes it, as part of that script, its findings
    /// located in this file. A migration or contract file that another script includes needs no
    /// `Included` source: it is read as itself and where it is included.
    Included,
}

/// What the analysis found, and how much it read.
#[derive(Debug, Clone, Default)]
pub struct Analysis {
    /// Findings, sorted by file, position and rule.
    pub findings: Vec<Finding>,
    /// Counts of what was read.
    pub stats: Stats,
    /// The migration formats read, by module (see [`MigrationFormat`]).
    pub migration_formats: std::collections::BTreeMap<String, std::collections::BTreeSet<MigrationFormat>>,
    /// How many foreign keys, references and function calls cross from each module to each
    /// other, counted before suppressions and baselines: what couples the modules today.
    pub coupling: Vec<CouplingRow>,
}

/// The crossings from one module to another.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CouplingRow {
    /// The module whose SQL crosses.
    pub from: String,
    /// The module whose objects it uses.
    pub to: String,
    /// Foreign keys into `to`'s tables.
    pub foreign_keys: usize,
    /// References to `to`'s relations, types, sequences and schema.
    pub references: usize,
    /// Calls of `to`'s functions.
    pub function_calls: usize,
}

/// What kind of crossing a finding is, for the coupling report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CrossingKind {
    ForeignKey,
    Reference,
    FunctionCall,
}

/// Counts of what the analysis read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Files read.
    pub files: usize,
    /// Top-level SQL statements read (in SQL files and in embedded SQL literals), including the
    /// ones PostgreSQL's grammar rejects.
    pub statements: usize,
    /// `parse-error` findings: statements, function bodies or files that could not be read.
    pub parse_errors: usize,
    /// psql meta-command lines (`\set`, `\d`, `\gset`, ...) skipped in SQL files.
    pub meta_commands: usize,
    /// Data lines of `COPY ... FROM stdin` skipped in SQL files.
    pub copy_data_lines: usize,
    /// SQL string literals found in Rust sources.
    pub embedded_queries: usize,
    /// Bytes of text read.
    pub bytes: usize,
}

impl Stats {
    fn add(&mut self, other: &Stats) {
        self.files += other.files;
        self.statements += other.statements;
        self.parse_errors += other.parse_errors;
        self.meta_commands += other.meta_commands;
        self.copy_data_lines += other.copy_data_lines;
        self.embedded_queries += other.embedded_queries;
        self.bytes += other.bytes;
    }
}

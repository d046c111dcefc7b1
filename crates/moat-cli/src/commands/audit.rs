//! `moat audit`: the live database against the manifest, and the access matrix.

use moat_admin::audit::{AuditAll, AuditOptions, AuditReport, Cell, audit_all};
use moat_admin::up::Target;
use moat_core::baseline::{Baseline, BaselineOutcome, FILE_NAME};
use moat_core::findings::{Finding, Severity, Summary};
use moat_core::manifest::Manifest;

use crate::output::{self, Format, paint, style};
use crate::{Cli, load_manifest};
use moat_admin::audit::{BodyAnalyzer, RoutineBody};
use moat_analysis::{AnalysisInput, Source, SourceKind};

/// Arguments of `moat audit`.
#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// Record today's findings in `moat-baseline.toml`; later runs fail only on new ones.
    #[arg(long)]
    pub write_baseline: bool,
    /// Skip the access probe (catalog findings only).
    #[arg(long)]
    pub no_probe: bool,
}

/// `moat audit`.
pub async fn audit(cli: &Cli, args: &AuditArgs) -> anyhow::Result<u8> {
    let manifest = load_manifest(cli)?;
    let target = super::target_quiet(cli, &manifest).await?;
    let options = AuditOptions { probe: !args.no_probe, body_analyzer: Some(&SqlBodies), ..AuditOptions::default() };
    let report = audit_all(&target, &manifest, options).await?;
    let findings = report.findings();
    let baseline_path = manifest.root.join(FILE_NAME);
    let mut baseline = Baseline::load(&baseline_path)?;
    if args.write_baseline {
        baseline.record("audit", &findings);
        std::fs::write(&baseline_path, baseline.to_toml())?;
        if cli.format == Format::Human {
            output::status(
                "Wrote",
                style::GOOD,
                format!(
                    "{} with {} audit finding{}",
                    manifest.relative(&baseline_path),
                    findings.len(),
                    plural(findings.len())
                ),
            )?;
        }
    }
    let outcome = baseline.apply("audit", findings);
    print_report(cli, &manifest, &report, &outcome)?;
    Ok(exit_code(&outcome))
}

/// The audit that ends `moat up`; prints a one-line verdict when clean, everything otherwise.
pub async fn audit_after_up(
    cli: &Cli,
    manifest: &Manifest,
    target: &Target,
) -> anyhow::Result<(u8, AuditAll, BaselineOutcome)> {
    let report =
        audit_all(target, manifest, AuditOptions { body_analyzer: Some(&SqlBodies), ..AuditOptions::default() })
            .await?;
    let baseline = Baseline::load(&manifest.root.join(FILE_NAME))?;
    let outcome = baseline.apply("audit", report.findings());
    if cli.format == Format::Human {
        if outcome.new.is_empty() {
            output::status("Audited", style::GOOD, clean_line(&report, &outcome))?;
        } else {
            print_findings(&outcome.new)?;
            print_matrices(manifest, &report)?;
            print_summary(&outcome)?;
        }
    }
    Ok((exit_code(&outcome), report, outcome))
}

/// The SQL analysis of `moat check`, applied to the routines the catalog holds: PL/pgSQL and SQL
/// bodies that name another module's objects (which `pg_depend` does not record).
struct SqlBodies;

impl BodyAnalyzer for SqlBodies {
    fn analyze(
        &self,
        manifest: &Manifest,
        module: &moat_core::manifest::Module,
        routine: &RoutineBody,
    ) -> Vec<Finding> {
        let input = AnalysisInput {
            manifest,
            sources: vec![Source {
                file: format!("routine {}", routine.signature),
                text: &routine.definition,
                kind: SourceKind::Migration { module: module.name.to_string() },
            }],
        };
        moat_analysis::analyze(&input)
            .findings
            .into_iter()
            .filter(|f| moat_admin::audit::BODY_RULES.contains(&f.rule))
            .map(|mut f| {
                let referenced = f.object.take();
                f.message = format!("routine `{}`: {}", routine.signature, f.message);
                f.object = Some(match referenced {
                    Some(object) => format!("{} -> {object}", routine.signature),
                    None => routine.signature.clone(),
                });
                f.module = Some(module.name.to_string());
                (f.file, f.line, f.column, f.span) = (None, None, None, None);
                f
            })
            .collect()
    }
}

fn clean_line(report: &AuditAll, outcome: &BaselineOutcome) -> String {
    let probed: usize = report.databases.iter().map(|(_, r)| r.probed.len()).sum();
    let databases =
        if report.databases.len() > 1 { format!(" in {} databases", report.databases.len()) } else { String::new() };
    let mut line = format!(
        "no finding; {probed} role{} probed{databases} with {} attempts, every cross-module access denied",
        plural(probed),
        report.attempts()
    );
    if outcome.accepted > 0 {
        line.push_str(&format!(" ({} accepted by the baseline)", outcome.accepted));
    }
    line
}

fn exit_code(outcome: &BaselineOutcome) -> u8 {
    u8::from(outcome.new.iter().any(|f| f.severity == Severity::Error))
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// The JSON document of an audit (PRODUCT.md's findings contract plus `access`), across
/// databases: `findings` and `access` of every database (each marked with its database when it is
/// not the main one), `probed` of them all, `matrix` of the main database, and `databases`, one
/// entry per database with its modules, probed roles and matrix.
pub fn audit_json(report: &AuditAll, outcome: &BaselineOutcome) -> serde_json::Value {
    let matrix = |r: &AuditReport| serde_json::json!({"columns": r.matrix.columns, "rows": r.matrix.rows.iter().map(|(role, cells)| serde_json::json!({"role": role, "cells": cells})).collect::<Vec<_>>()});
    let main = report.databases.iter().find(|(key, _)| key.is_none()).map(|(_, r)| r);
    let probed: Vec<_> = report.databases.iter().flat_map(|(_, r)| &r.probed).collect();
    serde_json::json!({
        "version": 1,
        "findings": outcome.new,
        "summary": Summary::of(&outcome.new, 0),
        "access": report.access(),
        "probed": probed,
        "matrix": main.map(matrix).unwrap_or_else(|| serde_json::json!({"columns": [], "rows": []})),
        "databases": report.databases.iter().map(|(key, r)| serde_json::json!({
            "database": super::database_json(key),
            "modules": report.placement.modules.iter().filter(|(_, l)| l.at == *key).map(|(m, _)| m).collect::<Vec<_>>(),
            "probed": r.probed,
            "matrix": matrix(r),
        })).collect::<Vec<_>>(),
        "baseline": {"accepted": outcome.accepted, "stale": outcome.stale.len()},
    })
}

fn print_report(cli: &Cli, manifest: &Manifest, report: &AuditAll, outcome: &BaselineOutcome) -> anyhow::Result<()> {
    match cli.format {
        Format::Json => output::json(&audit_json(report, outcome))?,
        Format::Human => {
            print_findings(&outcome.new)?;
            print_matrices(manifest, report)?;
            print_stale(manifest, outcome);
            print_summary(outcome)?;
        }
        Format::Sarif | Format::Github => crate::commands::check::print_machine(
            cli.format,
            moat_admin::audit::rules(),
            &outcome.new,
            &Default::default(),
        )?,
    }
    Ok(())
}

/// The access matrix of each database; with more than one database, each under a heading that
/// names it.
pub fn print_matrices(manifest: &Manifest, report: &AuditAll) -> std::io::Result<()> {
    let several = super::several_databases(manifest);
    let mut first = true;
    for (key, part) in &report.databases {
        if part.matrix.rows.is_empty() {
            continue;
        }
        if several {
            if !first {
                output::line("")?;
            }
            output::line(paint(style::BOLD, format!("access in {}:", moat_admin::databases::label(key.as_ref()))))?;
        }
        first = false;
        print_matrix(part)?;
    }
    Ok(())
}

fn print_stale(manifest: &Manifest, outcome: &BaselineOutcome) {
    for entry in &outcome.stale {
        output::warn(format!(
            "baseline entry `{}`{} no longer occurs; rewrite {} with `moat audit --write-baseline`",
            entry.key.rule,
            entry.key.object.as_deref().map(|o| format!(" on `{o}`")).unwrap_or_default(),
            manifest.relative(&manifest.root.join(FILE_NAME)),
        ));
    }
}

/// Findings of the catalog and the probe, rendered like `moat check`'s (without snippets).
pub fn print_findings(findings: &[Finding]) -> std::io::Result<()> {
    if findings.is_empty() {
        return Ok(());
    }
    output::text(crate::render::human(findings, &Default::default()))?;
    output::line("")
}

/// The access matrix as a table: rows are roles, columns modules and contracts.
pub fn print_matrix(report: &AuditReport) -> std::io::Result<()> {
    let label_width = report.matrix.rows.iter().map(|(r, _)| r.len()).max().unwrap_or(4).max(4);
    let widths: Vec<usize> = report.matrix.columns.iter().map(|c| c.len().max(6)).collect();
    let mut header = format!("{:label_width$}", "role");
    for (column, width) in report.matrix.columns.iter().zip(&widths) {
        header.push_str(&format!("  {column:>width$}"));
    }
    output::line(paint(style::BOLD, header))?;
    for (role, cells) in &report.matrix.rows {
        let mut line = format!("{role:label_width$}");
        for (cell, width) in cells.iter().zip(&widths) {
            let (text, cell_style) = match cell {
                Cell::Own => ("own", style::DIM),
                Cell::Allowed => ("allowed", style::INFO),
                Cell::Denied => ("denied", style::GOOD),
                Cell::Leak => ("LEAK", style::BAD),
                Cell::Broken => ("BROKEN", style::WARN),
                Cell::Unprobed => ("?", style::WARN),
            };
            line.push_str(&format!("  {}", paint(cell_style, format!("{text:>width$}"))));
        }
        output::line(line)?;
    }
    Ok(())
}

fn print_summary(outcome: &BaselineOutcome) -> std::io::Result<()> {
    let summary = Summary::of(&outcome.new, 0);
    let accepted =
        if outcome.accepted > 0 { format!(", {} accepted by the baseline", outcome.accepted) } else { String::new() };
    output::line("")?;
    if summary.errors > 0 {
        output::status(
            "Failed",
            style::BAD,
            format!(
                "audit: {} error{}, {} warning{}{accepted}",
                summary.errors,
                plural(summary.errors),
                summary.warnings,
                plural(summary.warnings)
            ),
        )
    } else {
        output::status(
            "Passed",
            style::GOOD,
            format!("audit: no error, {} warning{}{accepted}", summary.warnings, plural(summary.warnings)),
        )
    }
}

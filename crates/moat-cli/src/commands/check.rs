//! `moat check`: static analysis of every module's migrations, every contract file and the SQL
//! embedded in each module's `sources`, with no database; and `moat explain`, the rules' docs.
//!
//! This is the I/O edge: it reads the files the manifest names (and those their psql includes
//! name) with `moat_sources`, hands their text to `moat_analysis`, which does no I/O, then
//! applies the baseline and renders the findings.

use anyhow::Context;
use moat_analysis::{Analysis, AnalysisInput};
use moat_core::baseline::{Baseline, BaselineOutcome, FILE_NAME};
use moat_core::findings::{Finding, Severity, Summary};
use moat_core::manifest::Manifest;
use moat_core::rules::RuleId;

use crate::output::{self, Format, paint, style};
use crate::render::{self, RuleDescription, Sources};
use crate::{Cli, load_manifest};

/// The baseline entries `moat check` owns.
const BASELINE_SOURCE: &str = "check";

/// Arguments of `moat check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Record today's findings in `moat-baseline.toml`; later runs fail only on new ones.
    #[arg(long)]
    pub write_baseline: bool,
    /// Report every finding, ignoring `moat-baseline.toml`.
    #[arg(long, conflicts_with = "write_baseline")]
    pub no_baseline: bool,
}

/// `moat check`.
pub fn check(cli: &Cli, args: &CheckArgs) -> anyhow::Result<u8> {
    let manifest = load_manifest(cli)?;
    let files = moat_sources::read(&manifest)?;
    let input =
        AnalysisInput { manifest: &manifest, sources: files.iter().map(moat_sources::SourceFile::source).collect() };
    let analysis = moat_analysis::analyze(&input);
    let sources: Sources = files.iter().map(|f| (f.name.clone(), f.text.clone())).collect();

    let baseline_path = manifest.root.join(FILE_NAME);
    let mut baseline = if args.no_baseline { Baseline::default() } else { Baseline::load(&baseline_path)? };
    if args.write_baseline {
        baseline.record(BASELINE_SOURCE, &analysis.findings);
        std::fs::write(&baseline_path, baseline.to_toml())
            .with_context(|| format!("cannot write `{}`", baseline_path.display()))?;
        if cli.format == Format::Human {
            let n = analysis.findings.len();
            output::status(
                "Wrote",
                style::GOOD,
                format!("{} with {n} finding{} of `moat check`", manifest.relative(&baseline_path), plural(n)),
            )?;
        }
    }
    let outcome = baseline.apply(BASELINE_SOURCE, analysis.findings.clone());
    print_stale(&manifest, &outcome);
    match cli.format {
        Format::Human => print_human(&analysis, &outcome, &sources)?,
        Format::Json => {
            let mut document = render::json(&outcome.new, analysis.stats.files);
            document["coupling"] = serde_json::to_value(&analysis.coupling)?;
            output::json(&document)?;
        }
        Format::Sarif | Format::Github => print_machine(cli.format, moat_analysis::rules(), &outcome.new, &sources)?,
    }
    Ok(u8::from(outcome.new.iter().any(|f| f.severity == Severity::Error)))
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn print_stale(manifest: &Manifest, outcome: &BaselineOutcome) {
    for entry in &outcome.stale {
        let mut what = format!("`{}`", entry.key.rule);
        if let Some(object) = &entry.key.object {
            what.push_str(&format!(" on `{object}`"));
        }
        if let Some(file) = &entry.key.file {
            what.push_str(&format!(" in `{file}`"));
        }
        if entry.count > 1 {
            what.push_str(&format!(" ({} times)", entry.count));
        }
        output::warn(format!(
            "baseline entry {what} no longer occurs; rewrite {} with `moat check --write-baseline`",
            manifest.relative(&manifest.root.join(FILE_NAME)),
        ));
    }
}

fn print_human(analysis: &Analysis, outcome: &BaselineOutcome, sources: &Sources) -> anyhow::Result<()> {
    output::text(render::human(&outcome.new, sources))?;
    let summary = Summary::of(&outcome.new, analysis.stats.files);
    let stats = analysis.stats;
    let mut line = format!(
        "{} file{} ({} statement{}{})",
        stats.files,
        plural(stats.files),
        stats.statements,
        plural(stats.statements),
        if stats.embedded_queries > 0 {
            format!(
                ", {} embedded quer{}",
                stats.embedded_queries,
                if stats.embedded_queries == 1 { "y" } else { "ies" }
            )
        } else {
            String::new()
        },
    );
    line.push_str(&format!(
        ": {} error{}, {} warning{}",
        summary.errors,
        plural(summary.errors),
        summary.warnings,
        plural(summary.warnings)
    ));
    if outcome.accepted > 0 {
        line.push_str(&format!(", {} accepted by the baseline", outcome.accepted));
    }
    let formats: Vec<String> = {
        let mut by_format: std::collections::BTreeMap<moat_analysis::MigrationFormat, Vec<&str>> = Default::default();
        for (module, formats) in &analysis.migration_formats {
            for format in formats {
                by_format.entry(*format).or_default().push(module);
            }
        }
        by_format
            .into_iter()
            .filter(|(f, _)| *f != moat_analysis::MigrationFormat::Plain)
            .map(|(f, modules)| format!("{f} ({})", modules.join(", ")))
            .collect()
    };
    if !formats.is_empty() {
        line.push_str(&format!("; migrations read as {}", formats.join(", ")));
    }
    if stats.meta_commands > 0 {
        line.push_str(&format!(
            "; {} psql meta-command{} skipped",
            stats.meta_commands,
            if stats.meta_commands == 1 { "" } else { "s" }
        ));
    }
    if summary.errors > 0 {
        output::status("Failed", style::BAD, line)?;
    } else {
        output::status("Checked", style::GOOD, line)?;
    }
    if !analysis.coupling.is_empty() {
        output::text(format!("\n{}", render::coupling(&analysis.coupling).trim_end_matches('\n')))?;
        output::line("")?;
    }
    Ok(())
}

/// Prints findings as SARIF or GitHub annotations; `rules` are the rules the command can report
/// (SARIF describes each, from the catalog), `sources` holds the text of the files the findings
/// point into (empty for catalog findings). `moat audit` uses it too.
pub fn print_machine(format: Format, rules: &[RuleId], findings: &[Finding], sources: &Sources) -> anyhow::Result<()> {
    match format {
        Format::Sarif => {
            let rules: Vec<RuleDescription<'_>> = rules.iter().map(|r| RuleDescription::of(*r)).collect();
            output::json(&render::sarif(findings, &rules, sources))?;
        }
        Format::Github => output::text(render::github(findings, sources))?,
        Format::Human | Format::Json => anyhow::bail!("`print_machine` renders SARIF and GitHub annotations only"),
    }
    Ok(())
}

/// The commands that report `rule`: `check`, `audit` or both.
fn reported_by(rule: RuleId) -> Vec<&'static str> {
    let mut commands = Vec::new();
    if moat_analysis::rules().contains(&rule) {
        commands.push("check");
    }
    if moat_admin::audit::rules().contains(&rule) {
        commands.push("audit");
    }
    commands
}

/// `moat explain [RULE]`: a rule's documentation, or the list of rules, static and live alike.
pub fn explain(cli: &Cli, rule: Option<&str>) -> anyhow::Result<u8> {
    let rules = RuleId::ALL;
    let describe = |r: RuleId| {
        serde_json::json!({
            "name": r.as_str(),
            "severity": r.severity(),
            "summary": r.summary(),
            "reported_by": reported_by(r),
            "doc": r.doc(),
        })
    };
    match rule {
        None if cli.format == Format::Json => {
            output::json(&serde_json::json!({"rules": rules.iter().map(|r| describe(*r)).collect::<Vec<_>>()}))?;
        }
        None => {
            let width = rules.iter().map(|r| r.as_str().len()).max().unwrap_or(0);
            for r in rules {
                let severity = match r.severity() {
                    Severity::Error => paint(style::BAD, "error  "),
                    Severity::Warning => paint(style::WARN, "warning"),
                };
                output::line(format!(
                    "{}  {severity}  {:12}  {}",
                    paint(style::BOLD, format!("{:width$}", r.as_str())),
                    reported_by(*r).join(", "),
                    r.summary()
                ))?;
            }
            output::line("")?;
            output::line("`moat explain <rule>` prints what a rule finds, why it matters, an example and the fix.")?;
        }
        Some(name) => {
            let Some(r) = RuleId::parse(name) else {
                anyhow::bail!(
                    "no rule is named `{name}`\n  help: the rules are {}",
                    rules.iter().map(|r| format!("`{r}`")).collect::<Vec<_>>().join(", ")
                );
            };
            if cli.format == Format::Json {
                output::json(&describe(r))?;
            } else {
                output::text(r.doc())?;
            }
        }
    }
    Ok(0)
}

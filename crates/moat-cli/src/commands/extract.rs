//! `moat extract MODULE [--mode replicate|copy] [--abort] [--finalize]`: moves a module into the
//! database the manifest names for it. Progress (steps, tables with rows and bytes) goes to
//! stderr; the result to stdout, or one JSON document with `--format json`.

use moat_admin::DatabaseUrl;
use moat_admin::extract::{ExtractEvent, ExtractOptions, ExtractReport, Mode, Outcome, Step, extract};
use moat_core::manifest::Manifest;
use moat_core::names::ModuleName;

use crate::output::{self, Format, paint, style};
use crate::{Cli, load_manifest};

/// Arguments of `moat extract`.
#[derive(Debug, clap::Args)]
pub struct ExtractArgs {
    /// The module to move.
    pub module: String,
    /// `replicate` (logical replication, writes stop only for the cutover) or `copy` (writes stop
    /// while the data is copied and verified); default: replicate where `wal_level = logical`.
    #[arg(long, value_enum)]
    pub mode: Option<ModeArg>,
    /// Roll back a move that has not switched yet: the target's copy is dropped and the module
    /// serves from the source again.
    #[arg(long, conflicts_with = "finalize")]
    pub abort: bool,
    /// After the switch: drop the copy left in the source database (the one place moat drops data).
    #[arg(long)]
    pub finalize: bool,
    /// The admin URL of the target database (until the manifest's `[databases]` resolves it).
    #[arg(long, hide = true, value_name = "URL", env = "MOAT_EXTRACT_TARGET_URL")]
    pub target_url: Option<String>,
    /// The manifest's key of the target database (until the manifest's `database` gives it).
    #[arg(long, hide = true, value_name = "KEY")]
    pub target_key: Option<String>,
}

/// `--mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeArg {
    /// Logical replication, then a short cutover.
    Replicate,
    /// Freeze, copy, verify, switch.
    Copy,
}

/// `moat extract MODULE`.
pub async fn extract_command(cli: &Cli, args: &ExtractArgs) -> anyhow::Result<u8> {
    let manifest = load_manifest(cli)?;
    let module = ModuleName::parse(&args.module).map_err(|e| anyhow::anyhow!("{e}"))?;
    let resolved = super::target(cli, &manifest).await?;
    let (source_url, target_url, target_key) = match args.target_url.as_deref().filter(|u| !u.is_empty()) {
        Some(url) => (resolved.url.clone(), DatabaseUrl::parse(url)?, args.target_key.clone()),
        None => databases_of_move(&manifest, &module, &resolved, args).await?,
    };
    let options = ExtractOptions {
        mode: args.mode.map(|m| match m {
            ModeArg::Replicate => Mode::Replicate,
            ModeArg::Copy => Mode::Copy,
        }),
        abort: args.abort,
        finalize: args.finalize,
    };
    let report =
        extract(&manifest, &module, &source_url, &target_url, target_key.as_deref(), &options, &progress).await?;
    match cli.format {
        Format::Json => output::json(&serde_json::json!({
            "version": 1,
            "module": report.module,
            "mode": report.mode,
            "outcome": report.outcome,
            "target": target_url.database(),
            "steps": report.steps,
            "tables": report.tables,
            "verification": report.verification,
            "write_unavailable_ms": report.write_unavailable_ms,
        }))?,
        _ => print_outcome(&report, &target_url)?,
    }
    Ok(0)
}

/// The source (where the module's data is, or where its move's journal is) and the target (the
/// database the manifest names for it) of a move, with the target's manifest key.
async fn databases_of_move(
    manifest: &Manifest,
    module: &ModuleName,
    resolved: &moat_admin::up::Target,
    args: &ExtractArgs,
) -> anyhow::Result<(DatabaseUrl, DatabaseUrl, Option<String>)> {
    let Some(declared) = manifest.module(module.as_str()) else {
        anyhow::bail!(
            "unknown module `{module}`\n  help: modules in the manifest: {}",
            manifest.modules.iter().map(|m| m.name.to_string()).collect::<Vec<_>>().join(", ")
        );
    };
    let placement = moat_admin::placement::locate(manifest, &resolved.databases).await?;
    let location = placement
        .modules
        .get(module.as_str())
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("module `{module}` was not located"))?;
    let (source, target) = match &location.moving {
        // A move under way (or done, for --finalize) goes on between the databases its journal names.
        Some(m) if !m.switched() || args.finalize || args.abort => (m.source.clone(), m.target.clone()),
        _ => (location.at.clone(), declared.database.clone()),
    };
    if source == target && !args.finalize && !args.abort {
        anyhow::bail!(
            "module `{module}` already lives in {}, where the manifest puts it; nothing to move\n  help: to move it, set `database = \"NAME\"` in `[modules.{module}]` and declare `[databases.NAME]`",
            moat_admin::databases::label(source.as_ref())
        );
    }
    let source_url = resolved.databases.url(source.as_ref())?.clone();
    let target_url = resolved.databases.url(target.as_ref())?.clone();
    Ok((source_url, target_url, target.map(|t| t.to_string())))
}

/// Progress on stderr, cargo-style.
fn progress(event: ExtractEvent<'_>) {
    let line = match event {
        ExtractEvent::Step { step } => Some(("Step", style::INFO, describe(step).to_owned())),
        ExtractEvent::StepDone { .. } => None,
        ExtractEvent::Table { table, rows, bytes, done: true } => {
            Some(("Copied", style::GOOD, format!("{table}: {rows} rows, {}", human_bytes(bytes))))
        }
        ExtractEvent::Table { table, rows, bytes, done: false } => {
            Some(("Copying", style::INFO, format!("{table}: {rows} rows, {} so far", human_bytes(bytes))))
        }
        ExtractEvent::Lag { bytes } => Some(("Lag", style::INFO, format!("{} of WAL behind", human_bytes(bytes)))),
        ExtractEvent::Resuming { step } => {
            Some(("Resuming", style::WARN, format!("a move an earlier run left at step `{step}`")))
        }
    };
    if let Some((verb, style, message)) = line {
        output::status_err(verb, style, message);
    }
}

fn describe(step: Step) -> &'static str {
    match step {
        Step::Preflight => "preflight: checking what would keep the module from moving",
        Step::Prepare => "prepare: roles, schema and objects in the target",
        Step::Copy => "copy: stopping the module's writes in the source, copying its tables",
        Step::Catchup => "catch-up: the target follows the source",
        Step::Cutover => "cutover: stopping the module's writes in the source",
        Step::Verify => "verify: comparing rows, sequences, history and outbox",
        Step::Switched => "switched: the module lives in the target",
    }
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

fn print_outcome(report: &ExtractReport, target: &DatabaseUrl) -> std::io::Result<()> {
    let module = &report.module;
    let database = target.database();
    match report.outcome {
        Outcome::Moved | Outcome::AlreadySwitched => {
            let verb = if report.outcome == Outcome::Moved { "Moved" } else { "Moved already" };
            let window = report
                .write_unavailable_ms
                .map(|ms| paint(style::DIM, format!(" (writes unavailable for {ms} ms)")))
                .unwrap_or_default();
            output::status(verb, style::GOOD, format!("module `{module}` to database `{database}`{window}"))?;
            output::note(format!(
                "the copy in the source stays, unreadable to the module; `moat extract {module} --finalize` drops it"
            ));
        }
        Outcome::Aborted => output::status(
            "Rolled back",
            style::GOOD,
            format!("the move of `{module}`: it serves from the source, the target holds nothing of it"),
        )?,
        Outcome::NothingToAbort => {
            output::status("Nothing", style::INFO, format!("no move of `{module}` to roll back"))?
        }
        Outcome::Finalized => {
            output::status("Finalized", style::GOOD, format!("dropped the source copy of `{module}`"))?;
        }
    }
    Ok(())
}

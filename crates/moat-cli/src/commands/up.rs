//! `moat up`: the main job.

use std::time::Instant;

use moat_admin::up::{UpEvent, UpReport, up_all};

use super::migrate::print_migrate_event;
use super::provision::print_plan_summary;
use crate::output::{self, Format, style};
use crate::{Cli, load_manifest};

/// Provisions, migrates every module in dependency order, installs contracts, audits.
pub async fn up(cli: &Cli) -> anyhow::Result<u8> {
    let started = Instant::now();
    let manifest = load_manifest(cli)?;
    let target = super::target(cli, &manifest).await?;
    let human = cli.format == Format::Human;
    if human {
        output::status(
            "Checking",
            style::INFO,
            format!(
                "{} ({} module{}, {} contract{}) on {}",
                manifest.project,
                manifest.modules.len(),
                if manifest.modules.len() == 1 { "" } else { "s" },
                manifest.contracts.len(),
                if manifest.contracts.len() == 1 { "" } else { "s" },
                super::databases_line(&target)
            ),
        )?;
    }
    let report = up_all(&target, &manifest, &|key, event| {
        if !human {
            return;
        }
        let place = super::in_database(&manifest, key);
        match event {
            UpEvent::Provisioned(outcome) if !outcome.plan.is_empty() => {
                let _ = print_plan_summary(&outcome.plan, &place);
            }
            UpEvent::Provisioned(_) => {}
            UpEvent::Migrate(event) => print_migrate_event(&event, &place),
        }
    })
    .await?;
    if human {
        for (_, part) in &report.databases {
            for note in part.notes() {
                output::note(note);
            }
        }
    }
    let (audit_code, audit, outcome) = super::audit::audit_after_up(cli, &manifest, &target).await?;
    let reports = || report.databases.iter().map(|(_, r)| r);
    let statements = |r: &UpReport| r.plans().flat_map(|p| p.steps.iter().map(|s| s.display())).collect::<Vec<_>>();
    let applied = |r: &UpReport| {
        r.migrate.applied.iter().map(|(m, f)| serde_json::json!({"module": m, "file": f})).collect::<Vec<_>>()
    };
    let notes = |r: &UpReport| r.notes().iter().map(ToString::to_string).collect::<Vec<_>>();
    match cli.format {
        Format::Json => output::json(&serde_json::json!({
            "version": 1,
            "changed": report.changed(),
            "statements": reports().flat_map(statements).collect::<Vec<_>>(),
            "applied": reports().flat_map(applied).collect::<Vec<_>>(),
            "notes": reports().flat_map(notes).collect::<Vec<_>>(),
            "databases": report.databases.iter().map(|(key, r)| serde_json::json!({
                "database": super::database_json(key),
                "changed": r.changed(),
                "statements": statements(r),
                "applied": applied(r),
                "notes": notes(r),
            })).collect::<Vec<_>>(),
            "audit": super::audit::audit_json(&audit, &outcome),
        }))?,
        _ => {
            let elapsed = format!("{:.2}s", started.elapsed().as_secs_f64());
            if audit_code != 0 {
                output::status(
                    "Failed",
                    style::BAD,
                    format!("{} is provisioned and migrated, but the audit found errors ({elapsed})", manifest.project),
                )?;
            } else if report.changed() {
                output::status("Finished", style::GOOD, format!("{} is up in {elapsed}", manifest.project))?;
            } else {
                output::status(
                    "Up to date",
                    style::GOOD,
                    format!("nothing changed: schemas, roles and grants in sync, no pending migrations ({elapsed})"),
                )?;
            }
        }
    }
    Ok(audit_code)
}

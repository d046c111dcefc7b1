//! `moat plan` and `moat provision`.

use moat_admin::plan::{Plan, Section};
use moat_admin::provision::{compute_plan, provision as run_provision};

use crate::output::{self, Format, style};
use crate::{Cli, load_manifest};

/// `moat plan`: prints exactly the SQL `provision` would run; nothing when in sync.
pub async fn plan(cli: &Cli) -> anyhow::Result<u8> {
    let manifest = load_manifest(cli)?;
    let target = super::target_quiet(cli, &manifest).await?;
    let mut conn = moat_admin::connect(&target.url).await?;
    let plan = compute_plan(&mut conn, &manifest).await?;
    moat_admin::provision::close(conn).await;
    match cli.format {
        Format::Json => output::json(&plan_json(&plan))?,
        _ => {
            output::text(plan.to_sql())?;
            for note in &plan.notes {
                output::note(note);
            }
        }
    }
    Ok(0)
}

/// `moat provision`: runs the plan in one transaction, then installs contracts (each in a session
/// that logs in as its own owner).
pub async fn provision(cli: &Cli) -> anyhow::Result<u8> {
    let manifest = load_manifest(cli)?;
    let target = super::target(cli, &manifest).await?;
    let mut conn = moat_admin::connect(&target.url).await?;
    moat_admin::provision::check_server(&mut conn).await?;
    let outcome = run_provision(&mut conn, &target.url, &manifest).await?;
    moat_admin::provision::close(conn).await;
    match cli.format {
        Format::Json => output::json(&plan_json(&outcome.plan))?,
        _ => {
            print_plan_summary(&outcome.plan)?;
            for note in &outcome.plan.notes {
                output::note(note);
            }
        }
    }
    Ok(0)
}

/// One status line per section that ran, or "in sync".
pub fn print_plan_summary(plan: &Plan) -> std::io::Result<()> {
    if plan.is_empty() {
        return output::status("In sync", style::GOOD, "schemas, roles, grants and contracts match the manifest");
    }
    let mut sections: Vec<(Section, usize)> = Vec::new();
    for step in &plan.steps {
        match sections.last_mut() {
            Some((section, count)) if *section == step.section() => *count += 1,
            _ => sections.push((step.section(), 1)),
        }
    }
    for (section, count) in sections {
        let what = match section {
            Section::Roles => "roles, memberships and role settings",
            Section::Database => "privileges on the database and schema public",
            Section::Schemas => "module schemas and their privileges",
            Section::InternalTables => "moat tables (migration history, outbox, inbox, contracts ledger)",
            Section::Objects => "ownership and privileges of objects in module schemas",
            Section::DefaultPrivileges => "default privileges for objects created later",
            Section::Contracts => "contract views",
        };
        output::status(
            "Provisioned",
            style::GOOD,
            format!("{what} ({count} statement{})", if count == 1 { "" } else { "s" }),
        )?;
    }
    Ok(())
}

/// The JSON form of a plan.
pub fn plan_json(plan: &Plan) -> serde_json::Value {
    serde_json::json!({
        "version": 1,
        "statements": plan.steps.iter().map(|s| s.display()).collect::<Vec<_>>(),
        "notes": plan.notes.iter().map(ToString::to_string).collect::<Vec<_>>(),
    })
}

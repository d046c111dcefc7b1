//! `moat plan` and `moat provision`.

use moat_admin::databases::DatabaseKey;
use moat_admin::placement::Placement;
use moat_admin::plan::{Plan, Section};
use moat_admin::up::{plan_all, provision_all};

use crate::output::{self, Format, style};
use crate::{Cli, load_manifest};

/// `moat plan`: prints exactly the SQL `provision` would run, per database; nothing when in sync.
pub async fn plan(cli: &Cli) -> anyhow::Result<u8> {
    let manifest = load_manifest(cli)?;
    let target = super::target_quiet(cli, &manifest).await?;
    let (placement, plans) = plan_all(&target, &manifest).await?;
    let several = super::several_databases(&manifest);
    match cli.format {
        Format::Json => output::json(&plans_json(&placement, plans.iter().map(|(part, plan)| (&part.key, plan))))?,
        _ => {
            for (part, plan) in &plans {
                if several && !plan.is_empty() {
                    output::line(format!("-- {} ({})", header(&part.key), part.url))?;
                }
                output::text(plan.to_sql())?;
            }
            for (part, plan) in &plans {
                for note in &plan.notes {
                    output::note(format!("{note}{}", super::in_database(&manifest, &part.key)));
                }
            }
            super::print_placement(&placement);
        }
    }
    Ok(0)
}

/// `moat provision`: runs the plan of each database in one transaction there, then installs
/// contracts (each in a session that logs in as its own owner).
pub async fn provision(cli: &Cli) -> anyhow::Result<u8> {
    let manifest = load_manifest(cli)?;
    let target = super::target(cli, &manifest).await?;
    let (placement, outcomes) = provision_all(&target, &manifest).await?;
    match cli.format {
        Format::Json => {
            output::json(&plans_json(&placement, outcomes.iter().map(|(part, outcome)| (&part.key, &outcome.plan))))?
        }
        _ => {
            for (part, outcome) in &outcomes {
                let place = super::in_database(&manifest, &part.key);
                print_plan_summary(&outcome.plan, &place)?;
                for note in &outcome.plan.notes {
                    output::note(format!("{note}{place}"));
                }
            }
            super::print_placement(&placement);
        }
    }
    Ok(0)
}

/// How a plan's header names its database: `main database` or `database billing_db`.
fn header(key: &DatabaseKey) -> String {
    match key {
        None => "main database".to_owned(),
        Some(name) => format!("database {name}"),
    }
}

/// The JSON of plans of several databases: `statements` and `notes` of them all (the notes about
/// modules that are not where the manifest puts them first), and `databases`, one entry each.
fn plans_json<'a>(
    placement: &Placement,
    plans: impl Iterator<Item = (&'a DatabaseKey, &'a Plan)> + Clone,
) -> serde_json::Value {
    let mut doc = plan_json_of(plans.clone().map(|(_, plan)| plan));
    let placement_notes = super::placement_lines(placement).into_iter().map(serde_json::Value::String);
    if let Some(notes) = doc["notes"].as_array_mut() {
        notes.splice(0..0, placement_notes);
    }
    doc["databases"] = plans
        .map(|(key, plan)| {
            let mut one = plan_json(plan);
            if let Some(object) = one.as_object_mut() {
                object.remove("version");
                object.insert("database".into(), super::database_json(key));
            }
            one
        })
        .collect();
    doc
}

fn plan_json_of<'a>(plans: impl Iterator<Item = &'a Plan> + Clone) -> serde_json::Value {
    serde_json::json!({
        "version": 1,
        "statements": plans.clone().flat_map(|p| p.steps.iter().map(|s| s.display())).collect::<Vec<_>>(),
        "notes": plans.flat_map(|p| p.notes.iter().map(ToString::to_string)).collect::<Vec<_>>(),
    })
}

/// One status line per section that ran, or "in sync".
pub fn print_plan_summary(plan: &Plan, place: &str) -> std::io::Result<()> {
    if plan.is_empty() {
        return output::status(
            "In sync",
            style::GOOD,
            format!("schemas, roles, grants and contracts match the manifest{place}"),
        );
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
            format!("{what} ({count} statement{}){place}", if count == 1 { "" } else { "s" }),
        )?;
    }
    Ok(())
}

/// The JSON form of a plan.
pub fn plan_json(plan: &Plan) -> serde_json::Value {
    plan_json_of(std::iter::once(plan))
}

//! `moat migrate`, `moat status`, `moat new`.

use moat_admin::migrate::{MigrateEvent, MigrationState, ModuleStatus, new_migration};
use moat_admin::up::{migrate_all, status_all};

use crate::output::{self, Format, paint, style};
use crate::{Cli, load_manifest};

/// Prints migration progress (human format only).
pub fn print_migrate_event(event: &MigrateEvent<'_>, place: &str) {
    let _ = match event {
        MigrateEvent::Waiting { module } => {
            output::status("Waiting", style::WARN, format!("for another moat process migrating `{module}`{place}"))
        }
        MigrateEvent::Applying { .. } => Ok(()),
        MigrateEvent::Applied { module, file, duration_ms } => output::status(
            "Migrated",
            style::GOOD,
            format!(
                "{module}: {}{place} {}",
                file.rsplit('/').next().unwrap_or(file),
                paint(style::DIM, format!("({duration_ms} ms)"))
            ),
        ),
    };
}

/// `moat migrate [MODULE]`: each module in the database it lives in.
pub async fn migrate(cli: &Cli, module: Option<&str>) -> anyhow::Result<u8> {
    let manifest = load_manifest(cli)?;
    let target = super::target(cli, &manifest).await?;
    let human = cli.format == Format::Human;
    let (placement, reports) = migrate_all(&target, &manifest, module, &|key, event| {
        if human {
            print_migrate_event(&event, &super::in_database(&manifest, key));
        }
    })
    .await?;
    let applied: Vec<&(String, String)> = reports.iter().flat_map(|(_, r)| &r.applied).collect();
    match cli.format {
        Format::Json => output::json(&serde_json::json!({
            "version": 1,
            "applied": applied.iter().map(|(m, f)| serde_json::json!({"module": m, "file": f})).collect::<Vec<_>>(),
            "databases": reports.iter().map(|(key, r)| serde_json::json!({
                "database": super::database_json(key),
                "applied": r.applied.iter().map(|(m, f)| serde_json::json!({"module": m, "file": f})).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        }))?,
        _ if applied.is_empty() => output::status("Up to date", style::GOOD, "no pending migrations")?,
        _ => output::status(
            "Finished",
            style::GOOD,
            format!("{} migration{} applied", applied.len(), if applied.len() == 1 { "" } else { "s" }),
        )?,
    }
    if human {
        super::print_placement(&placement);
    }
    Ok(0)
}

/// `moat status`: exit code 1 when a module has modified or missing migrations.
pub async fn status(cli: &Cli) -> anyhow::Result<u8> {
    let manifest = load_manifest(cli)?;
    let target = super::target_quiet(cli, &manifest).await?;
    let (placement, statuses) = status_all(&target, &manifest).await?;
    match cli.format {
        Format::Json => output::json(&serde_json::json!({
            "version": 1,
            "modules": statuses,
            "notes": super::placement_lines(&placement),
        }))?,
        _ => {
            print_status(&statuses, super::several_databases(&manifest))?;
            super::print_placement(&placement);
        }
    }
    let broken = statuses.iter().any(|s| s.count(MigrationState::Modified) + s.count(MigrationState::Missing) > 0);
    Ok(u8::from(broken))
}

fn print_status(statuses: &[ModuleStatus], several_databases: bool) -> std::io::Result<()> {
    let width = statuses.iter().flat_map(|s| s.migrations.iter().map(|m| m.name.len() + 5)).max().unwrap_or(10);
    for (i, module) in statuses.iter().enumerate() {
        if i > 0 {
            output::line("")?;
        }
        let counts: Vec<String> = [
            MigrationState::Applied,
            MigrationState::Pending,
            MigrationState::Modified,
            MigrationState::Missing,
            MigrationState::Failed,
        ]
        .iter()
        .filter_map(|state| {
            let n = module.count(*state);
            (n > 0).then(|| format!("{n} {state}"))
        })
        .collect();
        let provisioned = if module.provisioned { String::new() } else { paint(style::WARN, " not provisioned") };
        let place = match (&module.database, several_databases) {
            (_, false) => format!("schema {}", module.schema),
            (None, true) => format!("schema {}, main database", module.schema),
            (Some(database), true) => format!("schema {}, database {database}", module.schema),
        };
        output::line(format!(
            "{} {}{provisioned}  {}",
            paint(style::BOLD, &module.module),
            paint(style::DIM, format!("({place})")),
            if counts.is_empty() { "no migrations".to_owned() } else { counts.join(", ") }
        ))?;
        for migration in &module.migrations {
            let state_style = match migration.state {
                MigrationState::Applied => style::GOOD,
                MigrationState::Pending => style::INFO,
                MigrationState::Modified | MigrationState::Missing | MigrationState::Failed => style::BAD,
            };
            let label = format!("{:04}_{}", migration.version, migration.name);
            let when = migration.applied_at.map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string()).unwrap_or_default();
            output::line(format!(
                "  {label:<width$}  {}  {}",
                paint(state_style, format!("{:<8}", migration.state)),
                paint(style::DIM, when)
            ))?;
        }
    }
    Ok(())
}

/// `moat new MODULE NAME`.
pub fn new(cli: &Cli, module: &str, name: &str) -> anyhow::Result<u8> {
    let manifest = load_manifest(cli)?;
    let path = new_migration(&manifest, module, name)?;
    let relative = manifest.relative(&path);
    match cli.format {
        Format::Json => output::json(&serde_json::json!({"version": 1, "file": relative}))?,
        _ => output::status("Created", style::GOOD, relative)?,
    }
    Ok(0)
}

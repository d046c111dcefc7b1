//! `moat migrate`, `moat status`, `moat new`.

use moat_admin::migrate::{MigrateEvent, MigrationState, ModuleStatus, new_migration};

use crate::output::{self, Format, paint, style};
use crate::{Cli, load_manifest};

/// Prints migration progress (human format only).
pub fn print_migrate_event(event: &MigrateEvent<'_>) {
    let _ = match event {
        MigrateEvent::Waiting { module } => {
            output::status("Waiting", style::WARN, format!("for another moat process migrating `{module}`"))
        }
        MigrateEvent::Applying { .. } => Ok(()),
        MigrateEvent::Applied { module, file, duration_ms } => output::status(
            "Migrated",
            style::GOOD,
            format!(
                "{module}: {} {}",
                file.rsplit('/').next().unwrap_or(file),
                paint(style::DIM, format!("({duration_ms} ms)"))
            ),
        ),
    };
}

/// `moat migrate [MODULE]`.
pub async fn migrate(cli: &Cli, module: Option<&str>) -> anyhow::Result<u8> {
    let manifest = load_manifest(cli)?;
    let target = super::target(cli, &manifest).await?;
    let mut conn = moat_admin::connect(&target.url).await?;
    let human = cli.format == Format::Human;
    let report = moat_admin::migrate::migrate(&mut conn, &target.url, &manifest, module, &|event| {
        if human {
            print_migrate_event(&event);
        }
    })
    .await?;
    moat_admin::provision::close(conn).await;
    match cli.format {
        Format::Json => output::json(&serde_json::json!({
            "version": 1,
            "applied": report.applied.iter().map(|(m, f)| serde_json::json!({"module": m, "file": f})).collect::<Vec<_>>(),
        }))?,
        _ if report.applied.is_empty() => output::status("Up to date", style::GOOD, "no pending migrations")?,
        _ => output::status(
            "Finished",
            style::GOOD,
            format!("{} migration{} applied", report.applied.len(), if report.applied.len() == 1 { "" } else { "s" }),
        )?,
    }
    Ok(0)
}

/// `moat status`: exit code 1 when a module has modified or missing migrations.
pub async fn status(cli: &Cli) -> anyhow::Result<u8> {
    let manifest = load_manifest(cli)?;
    let target = super::target_quiet(cli, &manifest).await?;
    let mut conn = moat_admin::connect(&target.url).await?;
    let statuses = moat_admin::migrate::status(&mut conn, &target.url, &manifest).await?;
    moat_admin::provision::close(conn).await;
    match cli.format {
        Format::Json => output::json(&serde_json::json!({"version": 1, "modules": statuses}))?,
        _ => print_status(&statuses)?,
    }
    let broken = statuses.iter().any(|s| s.count(MigrationState::Modified) + s.count(MigrationState::Missing) > 0);
    Ok(u8::from(broken))
}

fn print_status(statuses: &[ModuleStatus]) -> std::io::Result<()> {
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
        output::line(format!(
            "{} {}{provisioned}  {}",
            paint(style::BOLD, &module.module),
            paint(style::DIM, format!("(schema {})", module.schema)),
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

//! One module per command.

pub mod audit;
pub mod check;
pub mod dev;
pub mod events;
pub mod extract;
pub mod migrate;
pub mod provision;
pub mod relay;
pub mod up;

use moat_admin::databases::DatabaseKey;
use moat_admin::placement::Placement;
use moat_admin::up::{Target, resolve_target};
use moat_core::manifest::Manifest;

use crate::Cli;
use crate::output::{self, Format, style};

/// Resolves the admin target, telling the user when the embedded cluster is used.
pub async fn target(cli: &Cli, manifest: &Manifest) -> anyhow::Result<Target> {
    let target = resolve_target(manifest, cli.database_url.as_deref()).await?;
    if cli.format == Format::Human
        && let Some(cluster) = &target.embedded
    {
        {
            let verb = if cluster.started { "Started" } else { "Using" };
            output::status(
                verb,
                style::INFO,
                format!("embedded PostgreSQL at {} (data in {})", target.url, cluster.dir.display()),
            )?;
        }
    }
    Ok(target)
}

/// Resolves the admin target without status output (for commands whose stdout is data).
pub async fn target_quiet(cli: &Cli, manifest: &Manifest) -> anyhow::Result<Target> {
    Ok(resolve_target(manifest, cli.database_url.as_deref()).await?)
}

/// Whether the project has more than one database: then output says which one it speaks of.
pub fn several_databases(manifest: &Manifest) -> bool {
    !manifest.databases.is_empty()
}

/// ` in database `billing_db`` (or ` in the main database`) when the project has more than one
/// database, nothing otherwise.
pub fn in_database(manifest: &Manifest, key: &DatabaseKey) -> String {
    if several_databases(manifest) {
        format!(" in {}", moat_admin::databases::label(key.as_ref()))
    } else {
        String::new()
    }
}

/// The JSON name of a database: `null` for the main one, its `[databases]` key otherwise.
pub fn database_json(key: &DatabaseKey) -> serde_json::Value {
    key.as_ref().map_or(serde_json::Value::Null, |name| serde_json::Value::String(name.to_string()))
}

/// Modules that are not where the manifest puts them, or are moving, as one line each.
pub fn placement_lines(placement: &Placement) -> Vec<String> {
    placement.notes().into_iter().map(|(_, message, help)| format!("{message}: {help}")).collect()
}

/// Prints [`placement_lines`] as notes on stderr.
pub fn print_placement(placement: &Placement) {
    for line in placement_lines(placement) {
        output::note(line);
    }
}

/// Where the project's databases are: the main URL, then each named one (passwords hidden).
pub fn databases_line(target: &Target) -> String {
    let mut line = target.url.to_string();
    for (name, url) in &target.databases.named {
        line.push_str(&format!(", {name} on {url}"));
    }
    line
}

//! One module per command.

pub mod audit;
pub mod check;
pub mod dev;
pub mod events;
pub mod extract;
pub mod migrate;
pub mod provision;
pub mod up;

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

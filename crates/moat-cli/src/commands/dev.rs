//! `moat dev [stop]`: the embedded PostgreSQL.

use moat_admin::embedded::{EmbeddedOptions, ensure_database, ensure_running, stop};

use crate::output::{self, Format, style};
use crate::{Cli, load_manifest};

/// Starts (or stops) the embedded cluster next to the manifest and prints its URL.
pub async fn dev(cli: &Cli, action: Option<&str>) -> anyhow::Result<u8> {
    let manifest = load_manifest(cli)?;
    let options = EmbeddedOptions::for_project(&manifest.root);
    if action == Some("stop") {
        let dir = options.dir.clone();
        let stopped = tokio::task::spawn_blocking(move || stop(&dir)).await??;
        match cli.format {
            Format::Json => output::json(&serde_json::json!({"version": 1, "stopped": stopped}))?,
            _ if stopped => {
                output::status("Stopped", style::GOOD, format!("embedded PostgreSQL in {}", options.dir.display()))?
            }
            _ => output::status(
                "Not running",
                style::INFO,
                format!("no embedded PostgreSQL in {}", options.dir.display()),
            )?,
        }
        return Ok(0);
    }
    let cluster = tokio::task::spawn_blocking(move || ensure_running(&options)).await??;
    let database = manifest.project.to_string();
    ensure_database(&cluster.url("postgres"), &database).await?;
    let url = cluster.url(&database);
    // The embedded cluster serves `[databases.NAME]` as database NAME, as `moat up` does.
    let mut named = Vec::new();
    for entry in &manifest.databases {
        ensure_database(&cluster.url("postgres"), entry.name.as_str()).await?;
        named.push((entry, cluster.url(entry.name.as_str())));
    }
    match cli.format {
        Format::Json => output::json(&serde_json::json!({
            "version": 1, "url": url.expose(), "port": cluster.port, "data": cluster.dir, "started": cluster.started,
            "databases": named.iter().map(|(entry, url)| serde_json::json!({
                "database": entry.name.as_str(), "url_env": entry.url_env, "url": url.expose(),
            })).collect::<Vec<_>>(),
        }))?,
        _ => {
            let verb = if cluster.started { "Started" } else { "Running" };
            output::status(verb, style::GOOD, format!("embedded PostgreSQL (data in {})", cluster.dir.display()))?;
            // The main database's URL stays the last line (`moat dev | tail -1`).
            for (entry, url) in &named {
                output::status("Database", style::INFO, format!("{} at {}", entry.name, url.expose()))?;
            }
            output::line(url.expose())?;
        }
    }
    Ok(0)
}

//! `moat audit` (not built yet in this revision).

use moat_admin::up::Target;
use moat_core::manifest::Manifest;

use crate::Cli;

/// Arguments of `moat audit`.
#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// Record today's findings in `moat-baseline.toml`; later runs fail only on new ones.
    #[arg(long)]
    pub write_baseline: bool,
}

/// `moat audit`.
pub async fn audit(_cli: &Cli, _args: &AuditArgs) -> anyhow::Result<u8> {
    anyhow::bail!("`moat audit` is not available in this build yet")
}

/// The audit that ends `moat up`; returns the exit code it implies.
pub async fn audit_after_up(_cli: &Cli, _manifest: &Manifest, _target: &Target) -> anyhow::Result<u8> {
    Ok(0)
}

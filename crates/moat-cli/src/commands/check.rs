//! `moat check` and `moat explain` (static analysis; not built yet in this revision).

use crate::Cli;

/// Arguments of `moat check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Record today's findings in `moat-baseline.toml`; later runs fail only on new ones.
    #[arg(long)]
    pub write_baseline: bool,
}

/// `moat check`.
pub fn check(_cli: &Cli, _args: &CheckArgs) -> anyhow::Result<u8> {
    anyhow::bail!("`moat check` is not available in this build yet")
}

/// `moat explain`.
pub fn explain(_cli: &Cli, _rule: Option<&str>) -> anyhow::Result<u8> {
    anyhow::bail!("`moat explain` is not available in this build yet")
}

/// Prints findings as SARIF or GitHub annotations (filled in with the check renderer).
pub fn print_machine(
    _format: crate::output::Format,
    _findings: &[moat_core::findings::Finding],
    _texts: &std::collections::BTreeMap<String, String>,
) -> anyhow::Result<()> {
    anyhow::bail!("this output format is not available in this build yet")
}

//! `moat events` (not built yet in this revision).

use crate::Cli;

/// `moat events` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum EventsCommand {
    /// Per subscriber: lag in events and seconds, dead letters.
    Status,
}

/// `moat events ...`.
pub async fn events(_cli: &Cli, _command: &EventsCommand) -> anyhow::Result<u8> {
    anyhow::bail!("`moat events` is not available in this build yet")
}

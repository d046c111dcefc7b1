//! `moat-chaos`: runs one role of the chaos test as a process until it is killed.
//!
//! ```text
//! moat-chaos subscriber --manifest PATH --module NAME --nats URL [--database-url URL] [--database NAME=URL]...
//! moat-chaos relay --manifest PATH --nats URL [--database-url URL] [--database NAME=URL]... [--batch-size N]
//! ```

use clap::{Parser, Subcommand};
use moat_chaos::Databases;

#[derive(Debug, Parser)]
#[command(name = "moat-chaos", about = "One role of moat's JetStream chaos test, run until killed")]
struct Cli {
    #[command(subcommand)]
    role: Role,
}

#[derive(Debug, clap::Args)]
struct Common {
    /// The project's moat.toml.
    #[arg(long)]
    manifest: std::path::PathBuf,
    /// The NATS server.
    #[arg(long)]
    nats: String,
    /// The main database's admin URL (default: MOAT_DATABASE_URL or DATABASE_URL).
    #[arg(long)]
    database_url: Option<String>,
    /// `NAME=URL`: the admin URL of the manifest's `[databases.NAME]` (default: its `url_env`).
    #[arg(long = "database", value_parser = name_url)]
    databases: Vec<(String, String)>,
}

#[derive(Debug, Subcommand)]
enum Role {
    /// A dispatcher of one subscriber module's subscriptions to `pub_a` and `pub_b`.
    Subscriber {
        #[command(flatten)]
        common: Common,
        /// The subscriber module.
        #[arg(long)]
        module: String,
    },
    /// The relay (as `moat relay` runs it).
    Relay {
        #[command(flatten)]
        common: Common,
        /// Events per batch.
        #[arg(long, default_value_t = 1000)]
        batch_size: i64,
    },
}

fn name_url(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(n, u)| (n.to_owned(), u.to_owned())).ok_or_else(|| format!("`{s}` is not NAME=URL"))
}

fn databases(common: &Common) -> Databases {
    Databases { main: common.database_url.clone(), others: common.databases.clone() }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let cli = Cli::parse();
    match cli.role {
        Role::Subscriber { common, module } => {
            let manifest = moat_core::manifest::Manifest::load(&common.manifest)?;
            moat_chaos::run_subscriber(manifest, &module, &databases(&common), &common.nats).await
        }
        Role::Relay { common, batch_size } => {
            let manifest = moat_core::manifest::Manifest::load(&common.manifest)?;
            moat_chaos::run_relay(manifest, &databases(&common), &common.nats, batch_size).await
        }
    }
}

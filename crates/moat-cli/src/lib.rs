//! The `moat` command as a library: `Cli` is the command line, `run` carries it out and returns
//! the exit code (0 success and nothing found; 1 findings of severity error or a failed audit;
//! 2 usage, configuration, I/O or database error; 101 a bug).

pub mod commands;
pub mod output;
pub mod render;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use moat_core::manifest::Manifest;

use crate::output::{ColorChoice, Format};

/// Enforceable data boundaries for modular monoliths on PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "moat", version, about, long_about = None, max_term_width = 100)]
pub struct Cli {
    /// The manifest (default: `moat.toml` in the current directory or the nearest parent).
    #[arg(long, global = true, value_name = "PATH")]
    pub manifest: Option<PathBuf>,

    /// The admin connection (default: MOAT_DATABASE_URL, then DATABASE_URL, then the embedded cluster).
    #[arg(long, global = true, value_name = "URL")]
    pub database_url: Option<String>,

    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Format::Human)]
    pub format: Format,

    /// When to use colour.
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,

    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// moat's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Provision, migrate every module in dependency order, install contracts, audit: the main job.
    Up,
    /// Print the SQL that `provision` would run; change nothing (empty when in sync).
    Plan,
    /// Create or update schemas, roles, grants and default privileges; idempotent.
    Provision,
    /// Apply pending migrations of one module or of all.
    Migrate {
        /// Only this module.
        module: Option<String>,
    },
    /// Per module: applied, pending, modified (checksum mismatch) and missing migrations.
    Status,
    /// Create the next migration file of a module.
    New {
        /// The module.
        module: String,
        /// What the migration does, such as `add_ward_to_patients`.
        name: String,
    },
    /// Static analysis of migrations, contracts and embedded SQL (no database needed).
    Check(commands::check::CheckArgs),
    /// Print the documentation of a rule.
    Explain {
        /// The rule, such as `cross-module-reference` (all rules when omitted).
        rule: Option<String>,
    },
    /// Live audit of the database catalog plus an access probe as every runtime role.
    Audit(commands::audit::AuditArgs),
    /// Module events: delivery status, dead letters, retries, live tail from JetStream.
    #[command(subcommand)]
    Events(commands::events::EventsCommand),
    /// Move a module to the database the manifest names for it.
    Extract(commands::extract::ExtractArgs),
    /// Publish every module's outbox to NATS JetStream (subjects `<project>.<module>.<EventType>`).
    Relay(commands::relay::RelayArgs),
    /// Start (or stop) the embedded PostgreSQL and print its URL.
    Dev {
        /// `stop` stops it.
        #[arg(value_parser = ["stop"])]
        action: Option<String>,
    },
}

/// Installs the panic hook that turns a crash into a bug report request (exit code 101).
pub fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        eprintln!(
            "\nerror: moat crashed; this is a bug in moat, not in your project.\n  help: please report it at {}/issues with the command you ran and the output above",
            env!("CARGO_PKG_REPOSITORY")
        );
    }));
}

/// Logs go to stderr; `MOAT_LOG` (or `RUST_LOG`) sets the filter, default `warn`.
pub fn init_logging(cli: &Cli) {
    let filter = std::env::var("MOAT_LOG").or_else(|_| std::env::var("RUST_LOG")).unwrap_or_else(|_| "warn".to_owned());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(cli.color != ColorChoice::Never && std::env::var_os("NO_COLOR").is_none())
        .try_init();
    match cli.color {
        ColorChoice::Always => anstream::ColorChoice::Always.write_global(),
        ColorChoice::Never => anstream::ColorChoice::Never.write_global(),
        ColorChoice::Auto => anstream::ColorChoice::Auto.write_global(),
    }
}

/// Runs a command line and returns the exit code.
pub async fn run(cli: Cli) -> u8 {
    match dispatch(&cli).await {
        Ok(code) => code,
        Err(error) => {
            if is_broken_pipe(&error) {
                return 0;
            }
            let mut err = anstream::stderr().lock();
            let style = output::style::BAD;
            let _ = std::io::Write::write_fmt(
                &mut err,
                format_args!("{}error{}: {error:#}\n", style.render(), style.render_reset()),
            );
            2
        }
    }
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .chain()
        .any(|cause| cause.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe))
}

async fn dispatch(cli: &Cli) -> anyhow::Result<u8> {
    if !matches!(cli.command, Command::Check(_) | Command::Audit(_))
        && matches!(cli.format, Format::Sarif | Format::Github)
    {
        anyhow::bail!(
            "`--format {}` is only for `moat check` and `moat audit`",
            if cli.format == Format::Sarif { "sarif" } else { "github" }
        );
    }
    match &cli.command {
        Command::Up => commands::up::up(cli).await,
        Command::Plan => commands::provision::plan(cli).await,
        Command::Provision => commands::provision::provision(cli).await,
        Command::Migrate { module } => commands::migrate::migrate(cli, module.as_deref()).await,
        Command::Status => commands::migrate::status(cli).await,
        Command::New { module, name } => commands::migrate::new(cli, module, name),
        Command::Check(args) => commands::check::check(cli, args),
        Command::Explain { rule } => commands::check::explain(cli, rule.as_deref()),
        Command::Audit(args) => commands::audit::audit(cli, args).await,
        Command::Events(command) => commands::events::events(cli, command).await,
        Command::Extract(args) => commands::extract::extract_command(cli, args).await,
        Command::Relay(args) => commands::relay::relay(cli, args).await,
        Command::Dev { action } => commands::dev::dev(cli, action.as_deref()).await,
    }
}

/// Loads the manifest from `--manifest` or by searching upwards from the current directory.
pub fn load_manifest(cli: &Cli) -> anyhow::Result<Manifest> {
    let path = match &cli.manifest {
        Some(path) => path.clone(),
        None => {
            let cwd = std::env::current_dir()?;
            Manifest::discover(&cwd)?
        }
    };
    Ok(Manifest::load(&path)?)
}

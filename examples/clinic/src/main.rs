//! `clinic`: provisions, migrates and audits the database (refusing to serve on an audit error),
//! starts the event dispatcher and serves HTTP until SIGTERM or Ctrl-C.
//!
//! The admin database URL comes from `MOAT_DATABASE_URL` or `DATABASE_URL`; without either, the
//! embedded PostgreSQL under `.moat/` next to the manifest. Logs go to stderr (`CLINIC_LOG`, in
//! `tracing`'s `EnvFilter` syntax); stdout gets one line, `listening on http://ADDR`, once the
//! service accepts requests.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// The clinic example: four modules of a hospital, each in its own PostgreSQL schema and role.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to serve HTTP on (port 0: any free port; the line on stdout says which).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The manifest (moat.toml) of the clinic.
    #[arg(long, env = "CLINIC_MANIFEST", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/moat.toml"))]
    manifest: PathBuf,
    /// Connections per module pool.
    #[arg(long, default_value_t = 10)]
    pool_size: u32,
    /// Every module pool logs in as the admin superuser instead of the module's role: no
    /// isolation at all (row-level security no longer applies either). For measuring the cost of
    /// isolation only.
    #[arg(long)]
    no_isolation: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CLINIC_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .init();
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, message)) => {
            eprintln!("error: {message}");
            ExitCode::from(code)
        }
    }
}

async fn run(args: Args) -> Result<(), (u8, String)> {
    let config = moat::Config::from_manifest(&args.manifest)
        .map_err(|e| (2, e.to_string()))?
        .pool_size(args.pool_size)
        .isolation(!args.no_isolation);
    if args.no_isolation {
        tracing::warn!("isolation is off: every module pool logs in as the admin role (for benchmarks only)");
    }
    let service = clinic::Service::start(config).await.map_err(|e| match e {
        moat::Error::AuditFailed { .. } => (1, e.to_string()),
        e => (2, e.to_string()),
    })?;
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            service.stop().await;
            return Err((2, format!("cannot listen on `{}`: {e}", args.listen)));
        }
    };
    let address = listener.local_addr().map_err(|e| (2, e.to_string()))?;
    tracing::info!(%address, "serving");
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "listening on http://{address}");
    let _ = stdout.flush();
    service.serve(listener, clinic::shutdown_signal()).await.map_err(|e| (2, format!("serving HTTP failed: {e}")))
}

//! `moat relay`: publishes every module's outbox to NATS JetStream until stopped (Ctrl-C or
//! SIGTERM), printing what it published now and then.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use moat::jetstream::{Broker, Relay, RelayConfig};

use crate::output::{self, Format, style};
use crate::{Cli, load_manifest};

/// `moat relay` arguments.
#[derive(Debug, clap::Args)]
pub struct RelayArgs {
    /// The NATS server (default: the variable `[events] nats_url_env` names, `NATS_URL`, else
    /// nats://127.0.0.1:4222).
    #[arg(long, value_name = "URL")]
    pub nats_url: Option<String>,
    /// Events per batch (one transaction of the relay per batch).
    #[arg(long, default_value_t = 1000)]
    pub batch_size: i64,
    /// Seconds between progress lines.
    #[arg(long, default_value_t = 10)]
    pub progress_every: u64,
}

/// `moat relay`.
pub async fn relay(cli: &Cli, args: &RelayArgs) -> anyhow::Result<u8> {
    let manifest = load_manifest(cli)?;
    let broker = match &args.nats_url {
        Some(url) => Broker::connect_to(&manifest, url).await?,
        None => Broker::connect(&manifest).await?,
    };
    let mut config = moat::Config::new(manifest.clone()).modules(Vec::<String>::new());
    if let Some(url) = &cli.database_url {
        config = config.database_url(url.clone());
    }
    let app = moat::Moat::connect(config).await?;
    let relay_config = RelayConfig { batch_size: args.batch_size.max(1), ..RelayConfig::default() };
    let handle = Relay::start(app.clone(), broker.clone(), relay_config).await?;
    if cli.format == Format::Human {
        output::status(
            "Relaying",
            style::INFO,
            format!(
                "outboxes of {} to stream `{}` (subjects `{}.<module>.<EventType>`); Ctrl-C stops",
                manifest.project,
                broker.stream_name(),
                manifest.project
            ),
        )?;
    }
    let stats = handle.stats().clone();
    let started = Instant::now();
    let mut last = 0u64;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut every = tokio::time::interval(Duration::from_secs(args.progress_every.max(1)));
    every.tick().await;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
            _ = every.tick() => {
                let published = stats.published.load(Ordering::Relaxed);
                if cli.format == Format::Human && published != last {
                    output::status(
                        "Relayed",
                        style::GOOD,
                        format!("{published} events ({} since the last line, {} duplicates dropped by JetStream)", published - last, stats.duplicates.load(Ordering::Relaxed)),
                    )?;
                }
                last = published;
            }
        }
    }
    handle.shutdown().await;
    app.close().await;
    let published = stats.published.load(Ordering::Relaxed);
    let duplicates = stats.duplicates.load(Ordering::Relaxed);
    if cli.format == Format::Json {
        output::json(&serde_json::json!({
            "version": 1,
            "stream": broker.stream_name(),
            "published": published,
            "duplicates": duplicates,
            "seconds": started.elapsed().as_secs_f64(),
        }))?;
    } else {
        output::status("Stopped", style::INFO, format!("{published} events relayed, {duplicates} duplicates dropped"))?;
    }
    Ok(0)
}

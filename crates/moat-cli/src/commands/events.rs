//! `moat events status | dead | retry | tail`.

use moat::jetstream::{Broker, ConsumerState};
use moat_admin::events::{RetryTarget, dead_all, retry_all, status_all};
use moat_core::manifest::Transport;

use crate::output::{self, Format, paint, style};
use crate::{Cli, load_manifest};

/// `moat events` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum EventsCommand {
    /// Per subscriber: lag in events and seconds, held and dead events; for a subscription
    /// reading JetStream, its durable consumer's pending, redelivered and unacknowledged messages.
    Status {
        /// The NATS server (default: the variable `[events] nats_url_env` names, else
        /// nats://127.0.0.1:4222). Only asked when a subscription reads JetStream; unreachable,
        /// the rest is shown with a warning.
        #[arg(long, value_name = "URL")]
        nats_url: Option<String>,
    },
    /// List dead letters (events whose handler kept failing).
    Dead,
    /// Put dead letters back in the retry queue (the running dispatcher applies them in key order).
    Retry {
        /// The event id of a dead letter (as `moat events dead` shows it).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Every dead letter.
        #[arg(long)]
        all: bool,
    },
    /// Print the project's events live as they reach NATS JetStream (one line each; with
    /// `--format json`, one JSON envelope per line).
    Tail {
        /// A subject filter, such as `clinic.patients.>` (default: every event of the project).
        subject: Option<String>,
        /// Start from the stream's first message instead of from now.
        #[arg(long)]
        from_start: bool,
        /// Stop after this many messages.
        #[arg(long)]
        limit: Option<u64>,
        /// The NATS server (default: the variable `[events] nats_url_env` names, else
        /// nats://127.0.0.1:4222).
        #[arg(long, value_name = "URL")]
        nats_url: Option<String>,
    },
}

/// `moat events tail`.
async fn tail(
    cli: &Cli,
    manifest: &moat_core::manifest::Manifest,
    subject: Option<&str>,
    from_start: bool,
    limit: Option<u64>,
    nats_url: Option<&str>,
) -> anyhow::Result<u8> {
    use futures::StreamExt;
    let broker = match nats_url {
        Some(url) => moat::jetstream::Broker::connect_to(manifest, url).await?,
        None => moat::jetstream::Broker::connect(manifest).await?,
    };
    let messages = moat::jetstream::tail(&broker, subject, from_start).await?;
    let mut messages = std::pin::pin!(messages);
    let mut seen = 0u64;
    if cli.format == Format::Human {
        output::status_err(
            "Tailing",
            style::INFO,
            format!(
                "stream `{}`{}; Ctrl-C stops",
                broker.stream_name(),
                subject.map(|s| format!(" on `{s}`")).unwrap_or_default()
            ),
        );
    }
    while limit.is_none_or(|l| seen < l) {
        let next = tokio::select! {
            next = messages.next() => next,
            _ = tokio::signal::ctrl_c() => None,
        };
        let Some(tailed) = next else { break };
        let tailed = tailed?;
        seen += 1;
        if cli.format == Format::Json {
            let line = match &tailed.event {
                Ok(event) => serde_json::to_string(event)?,
                Err(e) => serde_json::to_string(
                    &serde_json::json!({"subject": tailed.subject, "sequence": tailed.sequence, "error": e}),
                )?,
            };
            output::line(line)?;
        } else {
            match &tailed.event {
                Ok(event) => output::line(format!(
                    "{} {} {} {} {}",
                    paint(style::DIM, format!("#{}", tailed.sequence)),
                    paint(style::BOLD, &tailed.subject),
                    format_args!("key={}", event.key),
                    paint(style::DIM, event.id),
                    event.payload
                ))?,
                Err(e) => output::line(format!(
                    "{} {} {} {e}",
                    paint(style::DIM, format!("#{}", tailed.sequence)),
                    tailed.subject,
                    paint(style::WARN, "not a moat event:")
                ))?,
            }
        }
    }
    Ok(0)
}

/// The transport of each subscription and, for those reading JetStream, their consumer's state
/// (`None` when the consumer does not exist yet or NATS could not be asked); the warnings say
/// why NATS could not be asked.
async fn jetstream_states(
    manifest: &moat_core::manifest::Manifest,
    subscriptions: &[moat_admin::events::SubscriptionStatus],
    nats_url: Option<&str>,
) -> (Vec<(Transport, Option<ConsumerState>)>, Vec<String>) {
    let transport_of = |subscriber: &str, publisher: &str| {
        let module = manifest.modules.iter().chain(&manifest.elsewhere).find(|m| m.name.as_str() == subscriber);
        let publisher = manifest.modules.iter().chain(&manifest.elsewhere).find(|m| m.name.as_str() == publisher);
        match (module, publisher) {
            (Some(m), Some(p)) => manifest.transport(m, &p.name),
            _ => manifest.events.transport,
        }
    };
    let transports: Vec<Transport> = subscriptions.iter().map(|s| transport_of(&s.subscriber, &s.publisher)).collect();
    let mut warnings = Vec::new();
    let mut states = vec![None; subscriptions.len()];
    if transports.contains(&Transport::JetStream) {
        let connect = async {
            match nats_url {
                Some(url) => Broker::connect_to(manifest, url).await,
                None => Broker::connect(manifest).await,
            }
        };
        match tokio::time::timeout(std::time::Duration::from_secs(10), connect).await {
            Ok(Ok(broker)) => {
                for (i, s) in subscriptions.iter().enumerate() {
                    if transports[i] != Transport::JetStream {
                        continue;
                    }
                    match broker.consumer_state(&s.subscriber, &s.publisher).await {
                        Ok(state) => states[i] = state,
                        Err(e) => warnings.push(format!(
                            "could not read the JetStream consumer of `{}` from `{}`: {e}",
                            s.subscriber, s.publisher
                        )),
                    }
                }
            }
            Ok(Err(e)) => warnings.push(format!("JetStream consumers not shown: {e}")),
            Err(_) => warnings.push("JetStream consumers not shown: NATS did not answer within 10 seconds".into()),
        }
    }
    (transports.into_iter().zip(states).collect(), warnings)
}

/// `moat events ...`.
pub async fn events(cli: &Cli, command: &EventsCommand) -> anyhow::Result<u8> {
    let manifest = load_manifest(cli)?;
    let target = match command {
        // The stream alone: no database.
        EventsCommand::Tail { subject, from_start, limit, nats_url } => {
            return tail(cli, &manifest, subject.as_deref(), *from_start, *limit, nats_url.as_deref()).await;
        }
        _ => super::target_quiet(cli, &manifest).await?,
    };
    let several = super::several_databases(&manifest);
    // `billing@billing_db`: a module and the database it lives in, when it is not the main one.
    let at = |module: &str, database: Option<&str>| match database {
        Some(database) => format!("{module}@{database}"),
        None => module.to_owned(),
    };
    match command {
        EventsCommand::Status { nats_url } => {
            let status = status_all(&target, &manifest).await?;
            let (jet, warnings) = jetstream_states(&manifest, &status.subscriptions, nats_url.as_deref()).await;
            for warning in &warnings {
                output::warn(warning);
            }
            if cli.format == Format::Json {
                let mut subscriptions = Vec::with_capacity(status.subscriptions.len());
                for (s, (transport, state)) in status.subscriptions.iter().zip(&jet) {
                    let mut value = serde_json::to_value(s)?;
                    if let Some(object) = value.as_object_mut() {
                        object.insert("transport".into(), transport.as_str().into());
                        object.insert("jetstream".into(), serde_json::to_value(state)?);
                    }
                    subscriptions.push(value);
                }
                output::json(&serde_json::json!({
                    "version": 1,
                    "subscriptions": subscriptions,
                    "removed_subscribers": status.removed_subscribers,
                    "warnings": warnings,
                }))?;
            } else if status.subscriptions.is_empty() && status.removed_subscribers.is_empty() {
                output::line("no subscriptions: no module declares `depends_on`, or `moat up` has not run")?;
            } else {
                let header = format!(
                    "{:<20} {:<20} {:>11} {:>10} {:>8} {:>8} {:>8} {:>6} {:>8}",
                    "subscriber", "publisher", "lag", "lag (s)", "held", "waiting", "retrying", "dead", "ignored"
                );
                output::line(paint(style::BOLD, header))?;
                for (s, (transport, state)) in status.subscriptions.iter().zip(&jet) {
                    let dead =
                        if s.dead > 0 { paint(style::BAD, format!("{:>6}", s.dead)) } else { format!("{:>6}", s.dead) };
                    let lag =
                        if s.started { format!("{:>11}", s.lag_events) } else { format!("{:>11}", "not started") };
                    let (subscriber, publisher) = if several {
                        (at(&s.subscriber, s.database.as_deref()), at(&s.publisher, s.publisher_database.as_deref()))
                    } else {
                        (s.subscriber.clone(), s.publisher.clone())
                    };
                    output::line(format!(
                        "{subscriber:<20} {publisher:<20} {lag} {:>10.1} {:>8} {:>8} {:>8} {dead} {:>8}",
                        s.lag_seconds, s.held, s.waiting, s.retrying, s.ignored
                    ))?;
                    if *transport == Transport::JetStream {
                        let detail = match state {
                            Some(c) => format!(
                                "jetstream consumer `{}`: {} pending, {} redelivered, {} awaiting ack",
                                Broker::consumer_name(&s.subscriber, &s.publisher),
                                c.pending,
                                c.redelivered,
                                c.ack_pending
                            ),
                            None => format!(
                                "jetstream consumer `{}`: not known (not created yet, or NATS not reachable)",
                                Broker::consumer_name(&s.subscriber, &s.publisher)
                            ),
                        };
                        output::line(format!("  {}", paint(style::DIM, detail)))?;
                    }
                }
                for r in &status.removed_subscribers {
                    output::line(format!(
                        "{} `{}` is no longer a subscriber of `{}` in moat.toml but still holds its outbox back\n  help: run `moat provision` to drop its progress",
                        paint(style::WARN, "removed:"),
                        r.subscriber,
                        r.publisher
                    ))?;
                }
            }
            Ok(0)
        }
        EventsCommand::Dead => {
            let letters = dead_all(&target, &manifest).await?;
            if cli.format == Format::Json {
                output::json(&serde_json::json!({"version": 1, "dead": letters}))?;
            } else if letters.is_empty() {
                output::status("No dead", style::GOOD, "letters")?;
            } else {
                for letter in &letters {
                    output::line(format!(
                        "{} {} {} {}",
                        paint(style::BOLD, letter.event_id),
                        paint(style::INFO, format!("{}.{}", letter.publisher, letter.event_type)),
                        format_args!("key {} -> {}", letter.key, at(&letter.subscriber, letter.database.as_deref())),
                        paint(
                            style::DIM,
                            format!(
                                "({} attempts, published {})",
                                letter.attempts,
                                letter.published_at.format("%Y-%m-%d %H:%M:%S UTC")
                            )
                        )
                    ))?;
                    if let Some(error) = &letter.last_error {
                        output::line(format!("    {} {error}", paint(style::BAD, "last error:")))?;
                    }
                }
            }
            Ok(0)
        }
        // Returned above, before any database is resolved.
        EventsCommand::Tail { .. } => Ok(0),
        EventsCommand::Retry { id, all } => {
            let target_events = if *all {
                RetryTarget::All
            } else {
                let raw = id.as_deref().unwrap_or_default();
                let id = raw.parse().map_err(|_| {
                    anyhow::anyhow!("`{raw}` is not an event id (a UUID as `moat events dead` shows it)")
                })?;
                RetryTarget::Event(id)
            };
            let count = retry_all(&target, &manifest, target_events).await?;
            if cli.format == Format::Json {
                output::json(&serde_json::json!({"version": 1, "retried": count}))?;
            } else if count == 0 {
                output::status("Nothing", style::WARN, "matched: no such dead letter")?;
            } else {
                output::status(
                    "Queued",
                    style::GOOD,
                    format!("{count} dead letter{} for retry", if count == 1 { "" } else { "s" }),
                )?;
            }
            Ok(if count == 0 && !*all { 2 } else { 0 })
        }
    }
}

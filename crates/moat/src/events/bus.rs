//! The bus: registering handlers, starting the dispatcher's tasks (one per subscription, the
//! cross-process wake-ups, retention per publisher), stopping them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use moat_admin::internal::{INBOX, OUTBOX_PROGRESS, SUBSCRIPTIONS};
use moat_core::manifest::Transport;
use moat_core::quote::qualified;
use tokio::sync::watch;

use super::Event;
use super::handler::{ErasedHandler, Handler, erase};
use super::publish::outbox_table;
use super::retention::retention;
use super::subscription::{LocalState, Subscription, Tables};
use super::wake::listen;
use crate::notify::channel_name;
use crate::{Error, Moat};

/// Tuning of the dispatcher.
#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    /// Events per batch (one transaction per batch per subscriber).
    pub batch_size: i64,
    /// How often to look for events when no notification came (the polling fallback).
    pub poll_interval: Duration,
    /// At most one cross-process NOTIFY per publisher per this interval.
    pub notify_debounce: Duration,
    /// Attempts before an event is parked as a dead letter.
    pub max_attempts: i32,
    /// Backoff before the second attempt; it doubles with each attempt.
    pub backoff_base: Duration,
    /// Longest backoff.
    pub backoff_max: Duration,
    /// How often consumed outbox slots are truncated.
    pub retention_interval: Duration,
    /// How often a subscription reports its progress to the publisher (for retention).
    pub progress_interval: Duration,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        Self {
            batch_size: 500,
            poll_interval: Duration::from_millis(500),
            notify_debounce: Duration::from_millis(5),
            max_attempts: 8,
            backoff_base: Duration::from_millis(200),
            backoff_max: Duration::from_secs(60),
            retention_interval: Duration::from_secs(10),
            progress_interval: Duration::from_secs(1),
        }
    }
}

/// What one process registered for a (subscriber, publisher) pair.
struct SubscriptionSpec {
    subscriber: String,
    publisher: String,
    handlers: BTreeMap<&'static str, Arc<dyn ErasedHandler>>,
    ignored: BTreeSet<&'static str>,
}

/// Registers handlers, then starts the dispatcher.
pub struct EventBus {
    app: Moat,
    config: DispatcherConfig,
    subscriptions: Vec<SubscriptionSpec>,
    broker: Option<crate::jetstream::Broker>,
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBus").field("subscriptions", &self.subscriptions.len()).finish()
    }
}

impl EventBus {
    pub(crate) fn new(app: Moat) -> Self {
        Self { app, config: DispatcherConfig::default(), subscriptions: Vec::new(), broker: None }
    }

    /// Replaces the tuning.
    pub fn config(mut self, config: DispatcherConfig) -> Self {
        self.config = config;
        self
    }

    /// The JetStream connection for subscriptions whose transport is `jetstream` (without one,
    /// the bus connects to the server `[events] nats_url_env` names when it needs one).
    pub fn jetstream(mut self, broker: crate::jetstream::Broker) -> Self {
        self.broker = Some(broker);
        self
    }

    /// Registers `handler` of module `subscriber` for events `E`. The subscriber must declare
    /// the publishing module in `depends_on`; anything else is an error that names both.
    pub fn subscribe<E: Event, H: Handler<E>>(mut self, subscriber: &str, handler: H) -> Result<Self, Error> {
        let spec = self.spec::<E>(subscriber)?;
        if spec.ignored.contains(E::TYPE) || spec.handlers.insert(E::TYPE, erase(handler)).is_some() {
            return Err(Error::DuplicateHandler { subscriber: subscriber.to_owned(), event_type: E::TYPE });
        }
        Ok(self)
    }

    /// Declares that module `subscriber` ignores events `E`: no process of it delivers them any
    /// more, and held events of that type are dropped when the dispatcher starts. This is how a
    /// handler is removed in a rolling deploy (see [`crate::events`]); a later process that
    /// subscribes to `E` again takes it back from the events published after its start.
    pub fn ignore<E: Event>(mut self, subscriber: &str) -> Result<Self, Error> {
        let spec = self.spec::<E>(subscriber)?;
        if spec.handlers.contains_key(E::TYPE) || !spec.ignored.insert(E::TYPE) {
            return Err(Error::DuplicateHandler { subscriber: subscriber.to_owned(), event_type: E::TYPE });
        }
        Ok(self)
    }

    /// The spec of (`subscriber`, `E::MODULE`), checked against the manifest.
    fn spec<E: Event>(&mut self, subscriber: &str) -> Result<&mut SubscriptionSpec, Error> {
        let manifest = self.app.manifest();
        let module = manifest.module(subscriber).ok_or_else(|| Error::UnknownModule {
            name: subscriber.to_owned(),
            known: manifest.modules.iter().map(|m| m.name.to_string()).collect::<Vec<_>>().join(", "),
        })?;
        if manifest.module(E::MODULE).is_none() {
            return Err(Error::UnknownPublisher {
                subscriber: subscriber.to_owned(),
                publisher: E::MODULE,
                event_type: E::TYPE,
            });
        }
        if !module.depends_on.iter().any(|d| d.as_str() == E::MODULE) {
            return Err(Error::UndeclaredDependency {
                subscriber: subscriber.to_owned(),
                publisher: E::MODULE,
                event_type: E::TYPE,
            });
        }
        let at = match self.subscriptions.iter().position(|s| s.subscriber == subscriber && s.publisher == E::MODULE) {
            Some(at) => at,
            None => {
                self.subscriptions.push(SubscriptionSpec {
                    subscriber: subscriber.to_owned(),
                    publisher: E::MODULE.to_owned(),
                    handlers: BTreeMap::new(),
                    ignored: BTreeSet::new(),
                });
                self.subscriptions.len() - 1
            }
        };
        Ok(&mut self.subscriptions[at])
    }

    /// Registers the subscriptions in the database and starts delivering.
    pub async fn start(self) -> Result<Dispatcher, Error> {
        let manifest = self.app.manifest();
        // The relay must be able to log in where each publisher read directly lives; fail before
        // starting.
        for spec in &self.subscriptions {
            let Some(sub_module) = manifest.module(&spec.subscriber) else { continue };
            let Some(pub_module) = manifest.module(&spec.publisher) else { continue };
            if manifest.transport(sub_module, &pub_module.name) == Transport::Direct {
                self.app.relay_for(&spec.publisher).await?;
            }
        }
        let mut broker = self.broker.clone();
        let mut stream = None;
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let mut channels = BTreeMap::new();
        let mut subscriptions = Vec::new();
        for spec in self.subscriptions {
            let sub_module = manifest
                .module(&spec.subscriber)
                .ok_or_else(|| Error::UnknownModule { name: spec.subscriber.clone(), known: String::new() })?;
            let pub_module = manifest
                .module(&spec.publisher)
                .ok_or_else(|| Error::UnknownModule { name: spec.publisher.clone(), known: String::new() })?;
            let transport = manifest.transport(sub_module, &pub_module.name);
            let mut subscription = Subscription {
                transport,
                jet: None,
                mine: spec.handlers.keys().map(|t| (*t).to_owned()).collect(),
                ignored: spec.ignored.iter().map(|t| (*t).to_owned()).collect(),
                handlers: spec.handlers,
                subscriber: spec.subscriber.clone(),
                publisher: spec.publisher.clone(),
                tables: Tables {
                    subscriptions: qualified(sub_module.schema.as_str(), SUBSCRIPTIONS),
                    inbox: qualified(sub_module.schema.as_str(), INBOX),
                    sub_outbox: manifest
                        .is_depended_on(&sub_module.name)
                        .then(|| outbox_table(sub_module.schema.as_str())),
                    outbox: outbox_table(pub_module.schema.as_str()),
                    progress: qualified(pub_module.schema.as_str(), OUTBOX_PROGRESS),
                },
                app: self.app.clone(),
                moves: std::sync::Mutex::new(self.app.moves()),
                config: self.config.clone(),
                notifier: self.app.notifier(),
                state: std::sync::Mutex::new(LocalState::default()),
            };
            subscription.register().await?;
            // JetStream for this subscription, or to drain before the outbox is read again.
            let needs_jet = transport == Transport::JetStream || subscription.last_transport().await? != "direct";
            if needs_jet {
                let broker = match &broker {
                    Some(b) => b.clone(),
                    None => {
                        let b = crate::jetstream::Broker::connect(manifest).await?;
                        broker = Some(b.clone());
                        b
                    }
                };
                let js_stream = match &stream {
                    Some(s) => Clone::clone(s),
                    None => {
                        let s = broker.ensure_stream().await?;
                        stream = Some(s.clone());
                        s
                    }
                };
                if transport == Transport::JetStream {
                    // An unsafe ack wait (the manifest's, or an existing consumer's) refuses the
                    // start, not every batch of the running dispatcher.
                    broker.check_consumer(&js_stream, &spec.subscriber, &spec.publisher).await?;
                }
                let jet = crate::jetstream::consume::Jet::new(broker, js_stream, &spec.publisher).await?;
                subscription.jet = Some(Arc::new(jet));
            }
            let subscription = Arc::new(subscription);
            if transport == Transport::Direct {
                channels.insert(channel_name(manifest.project.as_str(), &spec.publisher), spec.publisher.clone());
            }
            subscriptions.push(subscription);
        }
        for subscription in &subscriptions {
            let subscription = subscription.clone();
            let stop = stop_rx.clone();
            tasks.push(tokio::spawn(async move { subscription.run(stop).await }));
        }
        // Cross-process wake-ups: LISTEN on each publisher's channel as the relay.
        if !channels.is_empty() {
            let notifier = self.app.notifier();
            let stop = stop_rx.clone();
            let app = self.app.clone();
            tasks.push(tokio::spawn(async move { listen(app, channels, notifier, stop).await }));
        }
        // Retention: truncate outbox slots every subscriber has consumed.
        let publishers: BTreeSet<String> =
            subscriptions.iter().filter(|s| s.transport == Transport::Direct).map(|s| s.publisher.clone()).collect();
        for publisher in publishers {
            let Some(module) = manifest.module(&publisher) else { continue };
            let schema = module.schema.to_string();
            let app = self.app.clone();
            let stop = stop_rx.clone();
            let interval = self.config.retention_interval;
            tasks.push(tokio::spawn(async move { retention(app, publisher, schema, interval, stop).await }));
        }
        Ok(Dispatcher { stop: stop_tx, tasks })
    }
}

/// The running dispatcher.
#[derive(Debug)]
pub struct Dispatcher {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Dispatcher {
    /// Stops delivering after the batches in flight and waits for the tasks.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

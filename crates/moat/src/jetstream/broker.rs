//! The connection to NATS, the project's stream (created by moat, or checked when it exists) and
//! the durable consumers of subscriptions that read JetStream.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use moat_core::manifest::{DEFAULT_NATS_URL, Manifest, Storage, StreamSettings, UnsafeSetting, format_duration};

use crate::Error;

/// A connection to NATS JetStream for one project: its stream and its settings.
#[derive(Clone)]
pub struct Broker {
    pub(crate) client: async_nats::Client,
    pub(crate) js: jetstream::Context,
    pub(crate) manifest: Manifest,
    pub(crate) stream: String,
    url: String,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").field("url", &redact(&self.url)).field("stream", &self.stream).finish()
    }
}

/// `nats://user:***@host` for messages: never a password.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}***{}", &url[..scheme + 3], &url[at..]),
        _ => url.to_owned(),
    }
}

pub(crate) fn nats_error(context: impl Into<String>, e: impl std::fmt::Display) -> Error {
    Error::Nats { context: context.into(), message: e.to_string(), help: None }
}

impl Broker {
    /// Connects to the server the manifest's `[events] nats_url_env` variable names (unset: the
    /// local server, `nats://127.0.0.1:4222`).
    pub async fn connect(manifest: &Manifest) -> Result<Self, Error> {
        let url = std::env::var(&manifest.events.nats_url_env)
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| DEFAULT_NATS_URL.to_owned());
        Self::connect_to(manifest, &url).await
    }

    /// Connects to the server at `url`.
    pub async fn connect_to(manifest: &Manifest, url: &str) -> Result<Self, Error> {
        let client = async_nats::ConnectOptions::new()
            .name(format!("moat {}", manifest.project))
            .connection_timeout(Duration::from_secs(5))
            // Reconnect for ever: a restarted server is waited for, never given up on.
            .max_reconnects(None)
            .connect(url)
            .await
            .map_err(|e| Error::Nats {
                context: format!("connecting to {}", redact(url)),
                message: e.to_string(),
                help: Some(format!(
                    "start nats-server with JetStream (`nats-server -js`), or set {} to its URL",
                    manifest.events.nats_url_env
                )),
            })?;
        // The relay's publishes and the subscribers' requests wait at most this long for an
        // answer; the relay's retry horizon (`relay_retry`) bounds the whole batch.
        let js = jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(5))
            .ack_timeout(Duration::from_secs(5))
            .max_ack_inflight(4096)
            .build(client.clone());
        Ok(Self { client, js, stream: manifest.stream_name(), manifest: manifest.clone(), url: url.to_owned() })
    }

    /// The NATS client (for outside consumers and tests).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The JetStream context.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// The stream's name.
    pub fn stream_name(&self) -> &str {
        &self.stream
    }

    /// The subject of an event: `<project>.<module>.<EventType>`.
    ///
    /// The event type is written by module code, which moat does not trust: a module's runtime
    /// role can insert any text into its own outbox. A type that is not a valid NATS subject
    /// token (`Evil.>`, `has space`, `*`, the empty string) would make the publish fail for ever
    /// and stop the relay on that event, or publish under another module's subjects. So the
    /// token is sanitized: letters, digits, `_` and `-` are kept, every other character becomes
    /// `_`, and an empty type becomes `_`. The envelope's body (`"type"`) keeps the real type,
    /// which is what subscribers dispatch on.
    pub fn subject(&self, module: &str, event_type: &str) -> String {
        format!("{}.{module}.{}", self.manifest.project, subject_token(event_type))
    }

    /// The subjects of every event of `module`.
    pub fn module_subjects(&self, module: &str) -> String {
        format!("{}.{module}.>", self.manifest.project)
    }

    /// Whether some subscription reads JetStream (then stream limits could drop what it has not
    /// consumed). The same question `moat check` asks: a project whose `[events] transport` is
    /// `jetstream` but whose every subscription says `direct` only relays for outside systems.
    fn has_subscribers(&self) -> bool {
        !self.manifest.jetstream_subscriptions().is_empty()
    }

    /// Creates the project's stream as the manifest configures it, or checks the existing one:
    /// its subjects must hold the project's, and nothing in it may lose, duplicate or reorder
    /// events (a refusal names each setting and its safe value).
    pub async fn ensure_stream(&self) -> Result<stream::Stream, Error> {
        let events = &self.manifest.events;
        let subscribers = self.has_subscribers();
        let wanted = events.unsafe_settings(&events.stream_settings(), subscribers);
        if !wanted.is_empty() {
            return Err(Error::UnsafeEventTransport { object: "`[events]` in moat.toml".into(), settings: wanted });
        }
        let subject = format!("{}.>", self.manifest.project);
        let stream = match self.js.get_stream(&self.stream).await {
            Ok(stream) => stream,
            Err(e) if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j) if j.code() == 404) => {
                let config = stream::Config {
                    name: self.stream.clone(),
                    subjects: vec![subject.clone()],
                    storage: match events.storage {
                        Storage::File => stream::StorageType::File,
                        Storage::Memory => stream::StorageType::Memory,
                    },
                    retention: stream::RetentionPolicy::Limits,
                    duplicate_window: events.duplicate_window,
                    max_age: events.max_age.unwrap_or_default(),
                    max_messages: events.max_msgs.unwrap_or(-1),
                    max_bytes: events.max_bytes.unwrap_or(-1),
                    max_messages_per_subject: -1,
                    discard: stream::DiscardPolicy::Old,
                    num_replicas: 1,
                    description: Some(format!("moat: module events of project {}", self.manifest.project)),
                    ..Default::default()
                };
                match self.js.create_stream(config).await {
                    Ok(stream) => stream,
                    // Another process created it meanwhile: check that one.
                    Err(_) => self
                        .js
                        .get_stream(&self.stream)
                        .await
                        .map_err(|e| nats_error(format!("creating stream `{}`", self.stream), e))?,
                }
            }
            Err(e) => return Err(self.unavailable(format!("reading stream `{}`", self.stream), e)),
        };
        let config = &stream.cached_info().config;
        let live = StreamSettings {
            duplicate_window: config.duplicate_window,
            storage: match config.storage {
                stream::StorageType::Memory => Storage::Memory,
                stream::StorageType::File => Storage::File,
            },
            max_age: (!config.max_age.is_zero()).then_some(config.max_age),
            max_msgs: (config.max_messages > 0).then_some(config.max_messages),
            max_bytes: (config.max_bytes > 0).then_some(config.max_bytes),
            max_msgs_per_subject: (config.max_messages_per_subject > 0).then_some(config.max_messages_per_subject),
        };
        let mut found = events.unsafe_settings(&live, subscribers);
        if !config.subjects.iter().any(|s| *s == subject || s == ">") {
            found.push(UnsafeSetting {
                setting: "subjects",
                value: format!("{:?}", config.subjects),
                problem: format!("the stream does not store `{subject}`, so publishes would find no stream"),
                safe: format!("subjects `[\"{subject}\"]`"),
            });
        }
        if !found.is_empty() {
            return Err(Error::UnsafeEventTransport { object: format!("stream `{}`", self.stream), settings: found });
        }
        Ok(stream)
    }

    fn unavailable(&self, context: String, e: impl std::fmt::Display) -> Error {
        Error::Nats {
            context,
            message: e.to_string(),
            help: Some(format!("is JetStream enabled on {}? (`nats-server -js`)", redact(&self.url))),
        }
    }

    /// The durable consumer's name of `subscriber`'s subscription to `publisher`.
    pub fn consumer_name(subscriber: &str, publisher: &str) -> String {
        format!("moat_{subscriber}_from_{publisher}")
    }

    /// The durable consumer of `subscriber`'s subscription to `publisher`, created when missing
    /// to deliver from `start`, and checked: its ack wait must not be shorter than the handler
    /// timeout, and it must deliver `publisher`'s subjects.
    pub(crate) async fn consumer(
        &self,
        stream: &stream::Stream,
        subscriber: &str,
        publisher: &str,
        start: consumer::DeliverPolicy,
    ) -> Result<consumer::PullConsumer, Error> {
        let name = Self::consumer_name(subscriber, publisher);
        self.refuse_unsafe_ack_wait()?;
        let mut consumer: consumer::PullConsumer = match stream.get_consumer(&name).await {
            Ok(consumer) => consumer,
            Err(_) => self.create_consumer(stream, &name, publisher, start).await?,
        };
        let info = consumer.info().await.map_err(|e| nats_error(format!("reading consumer `{name}`"), e))?;
        self.check_consumer_info(&name, publisher, info)?;
        Ok(consumer)
    }

    /// Checks the manifest's ack wait and, when it exists, the durable consumer of `subscriber`'s
    /// subscription to `publisher` (without creating it): what a dispatcher does when it starts,
    /// so that an unsafe consumer is refused there and not in a retry loop later.
    pub(crate) async fn check_consumer(
        &self,
        stream: &stream::Stream,
        subscriber: &str,
        publisher: &str,
    ) -> Result<(), Error> {
        let name = Self::consumer_name(subscriber, publisher);
        self.refuse_unsafe_ack_wait()?;
        match stream.consumer_info(&name).await {
            Ok(info) => self.check_consumer_info(&name, publisher, &info),
            Err(e) if e.kind() == jetstream::context::ConsumerInfoErrorKind::NotFound => Ok(()),
            Err(e) => Err(nats_error(format!("reading consumer `{name}`"), e)),
        }
    }

    /// The state of the durable consumer of `subscriber`'s subscription to `publisher`, as
    /// `moat events status` shows it; `None` when the consumer does not exist (yet).
    pub async fn consumer_state(&self, subscriber: &str, publisher: &str) -> Result<Option<ConsumerState>, Error> {
        let name = Self::consumer_name(subscriber, publisher);
        let stream = match self.js.get_stream(&self.stream).await {
            Ok(stream) => stream,
            Err(e) if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j) if j.code() == 404) => {
                return Ok(None);
            }
            Err(e) => return Err(self.unavailable(format!("reading stream `{}`", self.stream), e)),
        };
        match stream.consumer_info(&name).await {
            Ok(info) => Ok(Some(ConsumerState {
                pending: info.num_pending,
                redelivered: info.num_redelivered as u64,
                ack_pending: info.num_ack_pending as u64,
            })),
            Err(e) if e.kind() == jetstream::context::ConsumerInfoErrorKind::NotFound => Ok(None),
            Err(e) => Err(nats_error(format!("reading consumer `{name}`"), e)),
        }
    }

    fn check_consumer_info(
        &self,
        name: &str,
        publisher: &str,
        info: impl std::borrow::Borrow<consumer::Info>,
    ) -> Result<(), Error> {
        let info = info.borrow();
        let events = &self.manifest.events;
        let mut found = Vec::new();
        found.extend(events.unsafe_ack_wait(info.config.ack_wait));
        let subjects = self.module_subjects(publisher);
        if info.config.filter_subject != subjects {
            found.push(UnsafeSetting {
                setting: "filter_subject",
                value: format!("{:?}", info.config.filter_subject),
                problem: format!("the consumer must deliver exactly `{subjects}`"),
                safe: format!("`{subjects}` (delete the consumer; moat creates it again)"),
            });
        }
        if info.config.ack_policy == consumer::AckPolicy::None {
            found.push(UnsafeSetting {
                setting: "ack_policy",
                value: "none".into(),
                problem: "an unacknowledged consumer loses the events a crash interrupts".into(),
                safe: "`all` (delete the consumer; moat creates it again)".into(),
            });
        }
        if !found.is_empty() {
            return Err(Error::UnsafeEventTransport { object: format!("consumer `{name}`"), settings: found });
        }
        Ok(())
    }

    /// Deletes the consumer and creates it again delivering from `start` (its position moves
    /// back to what the subscriber's own record says it applied).
    pub(crate) async fn reset_consumer(
        &self,
        stream: &stream::Stream,
        subscriber: &str,
        publisher: &str,
        start: consumer::DeliverPolicy,
    ) -> Result<consumer::PullConsumer, Error> {
        let name = Self::consumer_name(subscriber, publisher);
        match stream.delete_consumer(&name).await {
            Ok(_) => {}
            Err(e) if e.to_string().contains("not found") => {}
            Err(e) => return Err(nats_error(format!("deleting consumer `{name}`"), e)),
        }
        self.create_consumer(stream, &name, publisher, start).await
    }

    async fn create_consumer(
        &self,
        stream: &stream::Stream,
        name: &str,
        publisher: &str,
        start: consumer::DeliverPolicy,
    ) -> Result<consumer::PullConsumer, Error> {
        stream
            .create_consumer(self.consumer_config(name, publisher, start))
            .await
            .map_err(|e| nats_error(format!("creating consumer `{name}` on stream `{}`", self.stream), e))
    }

    /// The manifest's ack wait against its handler timeout.
    fn refuse_unsafe_ack_wait(&self) -> Result<(), Error> {
        let events = &self.manifest.events;
        match events.unsafe_ack_wait(events.ack_wait) {
            Some(unsafe_wait) => Err(Error::UnsafeEventTransport {
                object: "`[events]` in moat.toml".into(),
                settings: vec![unsafe_wait],
            }),
            None => Ok(()),
        }
    }

    fn consumer_config(&self, name: &str, publisher: &str, start: consumer::DeliverPolicy) -> consumer::pull::Config {
        consumer::pull::Config {
            durable_name: Some(name.to_owned()),
            description: Some(format!(
                "moat: events of module {publisher} for a subscriber (ack wait {})",
                format_duration(self.manifest.events.ack_wait)
            )),
            filter_subject: self.module_subjects(publisher),
            deliver_policy: start,
            ack_policy: consumer::AckPolicy::All,
            ack_wait: self.manifest.events.ack_wait,
            max_deliver: -1,
            ..Default::default()
        }
    }
}

/// What a durable consumer holds for its subscriber (from JetStream's consumer info).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ConsumerState {
    /// Messages in the stream the consumer has not delivered yet (`num_pending`).
    pub pending: u64,
    /// Messages delivered more than once and not yet acknowledged (`num_redelivered`).
    pub redelivered: u64,
    /// Messages delivered and not yet acknowledged (`num_ack_pending`).
    pub ack_pending: u64,
}

/// An event type as one NATS subject token: `[A-Za-z0-9_-]` kept, anything else `_`, empty `_`.
fn subject_token(event_type: &str) -> String {
    if event_type.is_empty() {
        return "_".to_owned();
    }
    event_type.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn event_types_become_one_valid_subject_token() {
        assert_eq!(super::subject_token("CustomerRenamed"), "CustomerRenamed");
        assert_eq!(super::subject_token("Evil.>"), "Evil__");
        assert_eq!(super::subject_token("has space"), "has_space");
        assert_eq!(super::subject_token("*"), "_");
        assert_eq!(super::subject_token(""), "_");
        assert_eq!(super::subject_token("Kündigung"), "K_ndigung");
    }

    #[test]
    fn urls_lose_their_passwords() {
        assert_eq!(super::redact("nats://u:secret@h:4222"), "nats://***@h:4222");
        assert_eq!(super::redact("nats://h:4222"), "nats://h:4222");
    }
}

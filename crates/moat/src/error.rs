//! The runtime library's errors.

/// Errors of the runtime library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The manifest could not be loaded.
    #[error(transparent)]
    Manifest(#[from] moat_core::manifest::LoadError),
    /// Provisioning, migrating or connecting as the admin failed.
    #[error(transparent)]
    Admin(#[from] moat_admin::AdminError),
    /// A module's or consumer's role could not log in.
    #[error("role `{role}` cannot log in to `{target}`: {source}\n  help: set MOAT_PASSWORD_{} or allow the role in pg_hba.conf", .role.to_ascii_uppercase())]
    Login {
        /// The role.
        role: String,
        /// The URL, password hidden.
        target: String,
        /// The driver error.
        #[source]
        source: sqlx::Error,
    },
    /// A module name that is not in the manifest.
    #[error("unknown module `{name}`\n  help: modules in the manifest: {known}")]
    UnknownModule {
        /// The name asked for.
        name: String,
        /// The modules that exist.
        known: String,
    },
    /// A consumer name that is not in the manifest.
    #[error("unknown consumer `{name}`\n  help: consumers in the manifest: {known}")]
    UnknownConsumer {
        /// The name asked for.
        name: String,
        /// The consumers that exist.
        known: String,
    },
    /// The start-up audit found errors: the boundary does not hold, so the application must not serve.
    #[error("the audit found {} error{}; refusing to start:\n{}\n  help: run `moat audit` for the access matrix; `moat provision` restores moat's own grants", .findings.len(), if .findings.len() == 1 { "" } else { "s" }, .findings.iter().map(|f| format!("  - [{}] {}", f.rule, f.message)).collect::<Vec<_>>().join("\n"))]
    AuditFailed {
        /// The error findings.
        findings: Vec<moat_core::findings::Finding>,
    },
    /// The manifest declares no dependency between modules, so there is no event relay.
    #[error("module events need the event relay role, which exists only when some module declares `depends_on`")]
    NoRelay,
    /// A handler was registered for an event of a module the subscriber does not depend on.
    #[error(
        "module `{subscriber}` subscribes to `{publisher}.{event_type}` but does not depend on module `{publisher}`\n  help: add \"{publisher}\" to `depends_on` of `[modules.{subscriber}]` in moat.toml"
    )]
    UndeclaredDependency {
        /// Subscriber module.
        subscriber: String,
        /// Publishing module.
        publisher: &'static str,
        /// Event type.
        event_type: &'static str,
    },
    /// A handler was registered for an event of a module that is not in the manifest.
    #[error(
        "module `{subscriber}` subscribes to `{publisher}.{event_type}`, but module `{publisher}` is not in the manifest"
    )]
    UnknownPublisher {
        /// Subscriber module.
        subscriber: String,
        /// Publishing module.
        publisher: &'static str,
        /// Event type.
        event_type: &'static str,
    },
    /// Two handlers of one subscriber for one event type.
    #[error("module `{subscriber}` has two handlers for `{event_type}`")]
    DuplicateHandler {
        /// Subscriber module.
        subscriber: String,
        /// Event type.
        event_type: &'static str,
    },
    /// An event was published in another module's transaction.
    #[error("module `{module}` cannot publish `{publisher}.{event_type}`: only module `{publisher}` publishes it")]
    WrongPublisher {
        /// The module of the transaction.
        module: String,
        /// Event type.
        event_type: &'static str,
        /// The event's module.
        publisher: &'static str,
    },
    /// The module has no outbox: no module depends on it, so nobody could subscribe.
    #[error(
        "module `{module}` cannot publish `{event_type}`: no module depends on it, so it has no outbox\n  help: declare the subscriber's `depends_on = [\"{module}\"]` in moat.toml and run `moat up`"
    )]
    NoOutbox {
        /// The module.
        module: String,
        /// Event type.
        event_type: &'static str,
    },
    /// An event could not be serialized.
    #[error("event `{event_type}` cannot be serialized: {source}")]
    Serialize {
        /// Event type.
        event_type: &'static str,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// An event (or snapshot value) cannot be stored.
    #[error("`{event_type}` cannot be stored: {reason}")]
    InvalidEvent {
        /// Event type.
        event_type: &'static str,
        /// Why.
        reason: String,
    },
    /// A finished transaction was used.
    #[error("the transaction is already finished")]
    TransactionFinished,
    /// NATS or JetStream refused or failed (connecting, the stream, a consumer, a publish).
    #[error("NATS JetStream ({context}): {message}{}", .help.as_ref().map(|h| format!("\n  help: {h}")).unwrap_or_default())]
    Nats {
        /// What moat was doing.
        context: String,
        /// The client's or server's message.
        message: String,
        /// What to do about it.
        help: Option<String>,
    },
    /// A JetStream setting (in the manifest, or of the live stream or consumer) could lose,
    /// duplicate or reorder events.
    #[error("{object} could lose, duplicate or reorder events; refusing to start:\n{}", .settings.iter().map(|s| format!("  - {s}")).collect::<Vec<_>>().join("\n"))]
    UnsafeEventTransport {
        /// The stream or consumer (`stream clinic`, `consumer billing_from_patients`).
        object: String,
        /// Each unsafe setting with its safe value.
        settings: Vec<moat_core::manifest::UnsafeSetting>,
    },
    /// A JetStream message that is not a moat event envelope.
    #[error("message {sequence} on `{subject}` is not a moat event: {reason}")]
    BadEnvelope {
        /// Its subject.
        subject: String,
        /// Its stream sequence.
        sequence: u64,
        /// What is wrong.
        reason: String,
    },
    /// A database error in the application's own use of a pool.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

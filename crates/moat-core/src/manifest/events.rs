//! `[events]`: how module events travel (directly from the publisher's outbox, or through NATS
//! JetStream) and the JetStream settings moat creates and checks; and each module's
//! `transport = { publisher = "jetstream" }`, the transport per subscription.
//!
//! [`EventsConfig::unsafe_settings`] lists the settings that could lose or reorder events: the
//! same list is a `moat check` finding (`unsafe-event-transport`) and a start-up error of the
//! relay and of a JetStream subscription.

use std::ops::Range;
use std::time::Duration;

use toml::Spanned;
use toml::de::DeValue;

use super::{Parser, Table};

/// How a subscription receives its publisher's events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Transport {
    /// The subscriber's dispatcher reads the publisher's outbox (as the relay role) in the
    /// publisher's database.
    #[default]
    Direct,
    /// `moat relay` publishes the outbox to NATS JetStream; the subscriber reads a durable
    /// consumer of the project's stream.
    JetStream,
}

impl Transport {
    /// The manifest's spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::JetStream => "jetstream",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "direct" => Some(Self::Direct),
            "jetstream" => Some(Self::JetStream),
            _ => None,
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where JetStream keeps a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Storage {
    /// On disk (the only safe choice).
    #[default]
    File,
    /// In memory: lost when the server restarts.
    Memory,
}

/// `[events]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsConfig {
    /// The default transport of every subscription.
    pub transport: Transport,
    /// The environment variable that holds the NATS URL (default `NATS_URL`; unset: the local
    /// server, `nats://127.0.0.1:4222`).
    pub nats_url_env: String,
    /// The stream's name (default: the project's name). Its subjects are `<project>.>`.
    pub stream: Option<String>,
    /// JetStream's deduplication window (message id = event id).
    pub duplicate_window: Duration,
    /// How long the relay retries a publish JetStream has not acknowledged before it gives up
    /// the batch and starts it again (publishing the same message ids again).
    pub relay_retry: Duration,
    /// How long a JetStream consumer waits for a subscriber's acknowledgement.
    pub ack_wait: Duration,
    /// The longest a batch of handlers may run before the dispatcher gives it up.
    pub handler_timeout: Duration,
    /// A stream limit on age (none by default).
    pub max_age: Option<Duration>,
    /// A stream limit on the number of messages (none by default).
    pub max_msgs: Option<i64>,
    /// A stream limit on its size in bytes (none by default).
    pub max_bytes: Option<i64>,
    /// Where the stream is kept.
    pub storage: Storage,
    /// Line of each key written in `[events]`, for findings.
    pub lines: Vec<(String, u32)>,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            transport: Transport::Direct,
            nats_url_env: DEFAULT_NATS_URL_ENV.to_owned(),
            stream: None,
            duplicate_window: Duration::from_secs(120),
            relay_retry: Duration::from_secs(60),
            ack_wait: Duration::from_secs(60),
            handler_timeout: Duration::from_secs(30),
            max_age: None,
            max_msgs: None,
            max_bytes: None,
            storage: Storage::File,
            lines: Vec::new(),
        }
    }
}

/// The variable that holds the NATS URL unless `[events] nats_url_env` names another.
pub const DEFAULT_NATS_URL_ENV: &str = "NATS_URL";
/// The NATS server used when the variable is unset.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// A setting that could lose or reorder events, with the safe value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsafeSetting {
    /// The setting, as `[events]` spells it (`duplicate_window`, `storage`, ...).
    pub setting: &'static str,
    /// Its value, as configured or found.
    pub value: String,
    /// What goes wrong.
    pub problem: String,
    /// The safe value.
    pub safe: String,
}

impl std::fmt::Display for UnsafeSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{} = {}`: {}; use {}", self.setting, self.value, self.problem, self.safe)
    }
}

/// The settings of a stream and its consumers that decide whether events can be lost or
/// reordered: from the manifest, or as a live stream and consumer report them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSettings {
    /// JetStream's deduplication window.
    pub duplicate_window: Duration,
    /// Memory or file.
    pub storage: Storage,
    /// `None`: unlimited.
    pub max_age: Option<Duration>,
    /// `None`: unlimited.
    pub max_msgs: Option<i64>,
    /// `None`: unlimited.
    pub max_bytes: Option<i64>,
    /// `None`: unlimited.
    pub max_msgs_per_subject: Option<i64>,
}

impl EventsConfig {
    /// The stream's settings as the manifest asks for them.
    pub fn stream_settings(&self) -> StreamSettings {
        StreamSettings {
            duplicate_window: self.duplicate_window,
            storage: self.storage,
            max_age: self.max_age,
            max_msgs: self.max_msgs,
            max_bytes: self.max_bytes,
            max_msgs_per_subject: None,
        }
    }

    /// The line `key` of `[events]` is written on, if it is.
    pub fn line(&self, key: &str) -> Option<u32> {
        self.lines.iter().find(|(k, _)| k == key).map(|(_, line)| *line)
    }

    /// What in `stream` (the manifest's, or a live stream's) could lose or reorder events, given
    /// this relay retry horizon. `subscribers` says whether a subscription reads JetStream (then
    /// every limit that deletes messages could delete one it has not consumed).
    pub fn unsafe_settings(&self, stream: &StreamSettings, subscribers: bool) -> Vec<UnsafeSetting> {
        let mut found = Vec::new();
        if stream.storage == Storage::Memory {
            found.push(UnsafeSetting {
                setting: "storage",
                value: "\"memory\"".into(),
                problem: "a stream kept in memory loses every acknowledged event when the server restarts".into(),
                safe: "`storage = \"file\"`".into(),
            });
        }
        if stream.duplicate_window < self.relay_retry {
            found.push(UnsafeSetting {
                setting: "duplicate_window",
                value: format!("\"{}\"", format_duration(stream.duplicate_window)),
                problem: format!(
                    "shorter than the relay's retry horizon (`relay_retry = \"{}\"`): an event the relay publishes again after the window is stored twice",
                    format_duration(self.relay_retry)
                ),
                safe: format!("`duplicate_window = \"{}\"` or longer", format_duration(self.relay_retry)),
            });
        }
        if subscribers {
            let limits: [(&'static str, Option<String>); 4] = [
                ("max_age", stream.max_age.map(|d| format!("\"{}\"", format_duration(d)))),
                ("max_msgs", stream.max_msgs.map(|n| n.to_string())),
                ("max_bytes", stream.max_bytes.map(|n| n.to_string())),
                ("max_msgs_per_subject", stream.max_msgs_per_subject.map(|n| n.to_string())),
            ];
            for (setting, value) in limits {
                if let Some(value) = value {
                    found.push(UnsafeSetting {
                        setting,
                        value,
                        problem: "the stream may delete events a subscription reading JetStream has not consumed yet"
                            .into(),
                        safe: format!(
                            "no `{setting}` (unlimited) while a subscription uses `transport = \"jetstream\"`"
                        ),
                    });
                }
            }
        }
        found
    }

    /// What in a consumer's ack wait is unsafe: shorter than the handler timeout, JetStream would
    /// deliver a batch again while its handlers still run.
    pub fn unsafe_ack_wait(&self, ack_wait: Duration) -> Option<UnsafeSetting> {
        (ack_wait < self.handler_timeout).then(|| UnsafeSetting {
            setting: "ack_wait",
            value: format!("\"{}\"", format_duration(ack_wait)),
            problem: format!(
                "shorter than the handler timeout (`handler_timeout = \"{}\"`): JetStream would deliver a batch again while its handlers still run",
                format_duration(self.handler_timeout)
            ),
            safe: format!("`ack_wait = \"{}\"` or longer", format_duration(self.handler_timeout)),
        })
    }
}

/// `90s`, `2m`, `1h30m`, `500ms`: the inverse of [`parse_duration`] for whole units.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let mut s = ms / 1000;
    let mut out = String::new();
    for (unit, size) in [("d", 86_400u128), ("h", 3600), ("m", 60), ("s", 1)] {
        if s >= size {
            out.push_str(&format!("{}{unit}", s / size));
            s %= size;
        }
    }
    out
}

/// Parses `500ms`, `30s`, `2m`, `1h`, `7d` and sums such as `1h30m`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60)?),
            "h" => Duration::from_secs(n.checked_mul(3600)?),
            "d" => Duration::from_secs(n.checked_mul(86_400)?),
            _ => return None,
        };
        total = total.checked_add(part)?;
    }
    Some(total)
}

const EVENTS_KEYS: [&str; 11] = [
    "transport",
    "nats_url_env",
    "stream",
    "duplicate_window",
    "relay_retry",
    "ack_wait",
    "handler_timeout",
    "max_age",
    "max_msgs",
    "max_bytes",
    "storage",
];

impl Parser<'_> {
    /// `[events]`.
    pub(super) fn events(&mut self, table: &Table<'_>) -> EventsConfig {
        let mut config = EventsConfig::default();
        for (k, v) in table.iter() {
            let key = k.get_ref().to_string();
            let field = format!("events.{key}");
            let line = self.lines.line_col(k.span().start).line;
            match key.as_str() {
                "transport" => {
                    if let Some(t) = self.transport(v, &field) {
                        config.transport = t;
                    }
                }
                "nats_url_env" => {
                    if let Some(s) = self.string(v, &field) {
                        if is_env_name(&s) {
                            config.nats_url_env = s;
                        } else {
                            self.error(
                                v.span(),
                                field,
                                if s.contains("://") {
                                    "`nats_url_env` names an environment variable; the URL itself never goes in the manifest".to_owned()
                                } else {
                                    format!("`{s}` is not an environment variable name")
                                },
                                Some("write `nats_url_env = \"NATS_URL\"` and put the URL in that variable".into()),
                            );
                        }
                    }
                }
                "stream" => {
                    if let Some(s) = self.string(v, &field) {
                        let valid = !s.is_empty()
                            && s.len() <= 64
                            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                        if valid {
                            config.stream = Some(s);
                        } else {
                            self.error(
                                v.span(),
                                field,
                                format!("{s:?} is not a valid stream name"),
                                Some("stream names use letters, digits, `_` and `-` (at most 64)".into()),
                            );
                        }
                    }
                }
                "duplicate_window" | "relay_retry" | "ack_wait" | "handler_timeout" | "max_age" => {
                    if let Some(d) = self.duration(v, &field) {
                        match key.as_str() {
                            "duplicate_window" => config.duplicate_window = d,
                            "relay_retry" => config.relay_retry = d,
                            "ack_wait" => config.ack_wait = d,
                            "handler_timeout" => config.handler_timeout = d,
                            _ => config.max_age = Some(d),
                        }
                    }
                }
                "max_msgs" | "max_bytes" => {
                    if let Some(n) = self.positive(v, &field) {
                        if key == "max_msgs" {
                            config.max_msgs = Some(n);
                        } else {
                            config.max_bytes = Some(n);
                        }
                    }
                }
                "storage" => match self.string(v, &field).as_deref() {
                    Some("file") => config.storage = Storage::File,
                    Some("memory") => config.storage = Storage::Memory,
                    Some(other) => self.error(
                        v.span(),
                        field,
                        format!("unknown storage `{other}`"),
                        Some("`storage = \"file\"`".into()),
                    ),
                    None => {}
                },
                other => {
                    self.unknown_key(k.span(), other, "events", &EVENTS_KEYS);
                    continue;
                }
            }
            config.lines.push((key, line));
        }
        config
    }

    /// `"direct"` or `"jetstream"`.
    pub(super) fn transport(&mut self, value: &Spanned<DeValue<'_>>, key: &str) -> Option<Transport> {
        let s = self.string(value, key)?;
        let parsed = Transport::parse(&s);
        if parsed.is_none() {
            self.error(
                value.span(),
                key,
                format!("unknown transport `{s}`"),
                Some("`\"direct\"` (the publisher's outbox) or `\"jetstream\"` (through `moat relay`)".into()),
            );
        }
        parsed
    }

    /// A module's `transport = { publisher = "jetstream", ... }`: the publishers are checked
    /// against its `depends_on` by the caller.
    pub(super) fn transports(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        key: &str,
    ) -> Vec<(String, Transport, Range<usize>)> {
        let Some(table) = self.table(value, key) else { return Vec::new() };
        let mut out = Vec::new();
        for (k, v) in table.iter() {
            let field = format!("{key}.{}", k.get_ref());
            if let Some(t) = self.transport(v, &field) {
                out.push((k.get_ref().to_string(), t, k.span()));
            }
        }
        out
    }

    fn duration(&mut self, value: &Spanned<DeValue<'_>>, key: &str) -> Option<Duration> {
        let s = self.string(value, key)?;
        let parsed = parse_duration(&s);
        if parsed.is_none() {
            self.error(
                value.span(),
                key,
                format!("{s:?} is not a duration"),
                Some("write a number with a unit: `500ms`, `30s`, `2m`, `1h`, `7d` (or sums such as `1h30m`)".into()),
            );
        }
        parsed
    }

    fn positive(&mut self, value: &Spanned<DeValue<'_>>, key: &str) -> Option<i64> {
        let parsed = match value.get_ref() {
            DeValue::Integer(i) if i.radix() == 10 => i.as_str().replace('_', "").parse::<i64>().ok(),
            _ => None,
        };
        match parsed {
            Some(n) if n > 0 => Some(n),
            _ => {
                self.error(value.span(), key, "expected a positive whole number", None);
                None
            }
        }
    }
}

fn is_env_name(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_uppercase() || c == '_')
        && s.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("7d"), Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("m"), None);
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("10x"), None);
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn unsafe_settings_name_the_setting_and_the_safe_value() {
        let config = EventsConfig::default();
        let mut stream = config.stream_settings();
        assert!(config.unsafe_settings(&stream, true).is_empty());
        stream.duplicate_window = Duration::from_secs(10);
        stream.storage = Storage::Memory;
        stream.max_age = Some(Duration::from_secs(3600));
        let found = config.unsafe_settings(&stream, true);
        let settings: Vec<_> = found.iter().map(|f| f.setting).collect();
        assert_eq!(settings, ["storage", "duplicate_window", "max_age"]);
        assert!(found[1].safe.contains("1m"), "{}", found[1]);
        // Without a JetStream subscriber, limits delete nothing a subscriber needs.
        assert_eq!(config.unsafe_settings(&stream, false).len(), 2);
        assert!(config.unsafe_ack_wait(Duration::from_secs(5)).is_some());
        assert!(config.unsafe_ack_wait(Duration::from_secs(30)).is_none());
    }
}

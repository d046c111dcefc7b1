//! `unsafe-event-transport`: `[events]` settings in the manifest that could lose, duplicate or
//! reorder events on NATS JetStream. The list of such settings is the manifest's own
//! ([`moat_core::manifest::EventsConfig::unsafe_settings`]), shared with the start-up checks of
//! the relay and the subscribers.

use moat_core::findings::Finding;
use moat_core::manifest::Manifest;
use moat_core::rules::RuleId;

/// The rule (its documentation is in the catalog, `moat_core::rules`).
pub(crate) const RULE: RuleId = RuleId::UnsafeEventTransport;

/// The findings of the manifest's `[events]` table, located at the key when it is written.
pub(crate) fn check(manifest: &Manifest) -> Vec<Finding> {
    let events = &manifest.events;
    let subscribers = !manifest.jetstream_subscriptions().is_empty();
    let mut found = events.unsafe_settings(&events.stream_settings(), subscribers);
    found.extend(events.unsafe_ack_wait(events.ack_wait));
    let file = manifest.relative(&manifest.path);
    found
        .into_iter()
        .map(|setting| {
            let line = events.line(setting.setting).or_else(|| match setting.setting {
                // A default that is unsafe only beside another key: point at that key.
                "duplicate_window" => events.line("relay_retry"),
                "ack_wait" => events.line("handler_timeout"),
                _ => None,
            });
            Finding {
                rule: RULE,
                severity: RULE.severity(),
                module: None,
                file: Some(file.clone()),
                line,
                column: line.map(|_| 1),
                object: Some(format!("events.{}", setting.setting)),
                database: None,
                message: format!("`events.{} = {}`: {}", setting.setting, setting.value, setting.problem),
                help: Some(format!("use {}", setting.safe)),
                span: None,
            }
        })
        .collect()
}

//! The envelope: how a module event looks on JetStream, for moat's subscribers and for anyone
//! else (the `nats` command-line tool, another language's client).
//!
//! Subject `<project>.<module>.<EventType>`; body, UTF-8 JSON:
//!
//! ```json
//! {"id": "0190e0c2-...", "module": "patients", "type": "PatientAdmitted", "key": "42",
//!  "position": 1187, "published_at": "2026-12-06T12:00:00.123456Z",
//!  "correlation_id": null, "causation_id": null, "payload": {"patient_id": 42}}
//! ```
//!
//! Headers: `Nats-Msg-Id` (the event id: JetStream drops a second publish of it within the
//! stream's duplicate window), `Moat-Key`, `Moat-Correlation-Id` and `Moat-Causation-Id` (when
//! set), and, for moat's subscribers, where the event stands in its publisher's outbox:
//! `Moat-Tx` (its transaction), `Moat-Cluster` (the cluster that numbered it) and `Moat-Lo` (a
//! snapshot every transaction of which the relay had published before this event).

use async_nats::HeaderMap;
use bytes::Bytes;
use uuid::Uuid;

use crate::Error;
use crate::events::RawEvent;

/// The header with the event's ordering key.
pub const KEY_HEADER: &str = "Moat-Key";
/// The header with the correlation id.
pub const CORRELATION_HEADER: &str = "Moat-Correlation-Id";
/// The header with the causation id.
pub const CAUSATION_HEADER: &str = "Moat-Causation-Id";
/// The header with the publishing transaction's id (`xid8`).
pub const TX_HEADER: &str = "Moat-Tx";
/// The header with the identity of the cluster the outbox row was written in.
pub const CLUSTER_HEADER: &str = "Moat-Cluster";
/// The header with the relay's snapshot: every transaction visible in it was published before.
pub const LO_HEADER: &str = "Moat-Lo";
/// The header with the relay's place in a batch it pages through (`<hi snapshot>/<outbox id>`):
/// every event of a transaction visible in that snapshot, up to that outbox id, was published
/// before (a batch larger than the relay's page is published page by page, each page's PubAcks
/// awaited before the next).
pub const FLOOR_HEADER: &str = "Moat-Floor";

/// Where an event stands in its publisher's outbox, as the relay saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    pub(crate) tx: u64,
    pub(crate) cluster: String,
    pub(crate) lo: String,
    /// [`FLOOR_HEADER`]: the snapshot and outbox id the relay had published up to within `lo`'s
    /// batch.
    pub(crate) floor: Option<(String, i64)>,
}

/// The body and headers of `event` of `module`.
pub(crate) fn encode(module: &str, event: &RawEvent, origin: &Origin) -> Result<(HeaderMap, Bytes), Error> {
    let json = |s: &str| serde_json::to_string(s).map_err(|source| Error::Serialize { event_type: "envelope", source });
    let optional = |id: Option<Uuid>| id.map_or_else(|| "null".to_owned(), |id| format!("\"{id}\""));
    let body = format!(
        "{{\"id\":\"{}\",\"module\":{},\"type\":{},\"key\":{},\"position\":{},\"published_at\":\"{}\",\"correlation_id\":{},\"causation_id\":{},\"payload\":{}}}",
        event.id,
        json(module)?,
        json(&event.event_type)?,
        json(&event.key)?,
        event.position,
        event.published_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        optional(event.correlation_id),
        optional(event.causation_id),
        event.payload,
    );
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", event.id.to_string().as_str());
    headers.insert(KEY_HEADER, event.key.as_str());
    if let Some(id) = event.correlation_id {
        headers.insert(CORRELATION_HEADER, id.to_string().as_str());
    }
    if let Some(id) = event.causation_id {
        headers.insert(CAUSATION_HEADER, id.to_string().as_str());
    }
    headers.insert(TX_HEADER, origin.tx.to_string().as_str());
    headers.insert(CLUSTER_HEADER, origin.cluster.as_str());
    headers.insert(LO_HEADER, origin.lo.as_str());
    if let Some((hi, last_id)) = &origin.floor {
        headers.insert(FLOOR_HEADER, format!("{hi}/{last_id}").as_str());
    }
    Ok((headers, Bytes::from(body)))
}

/// The body, as outside consumers read it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct EnvelopeJson {
    /// The event id.
    pub id: Uuid,
    /// The publishing module.
    pub module: String,
    /// The event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The ordering key.
    pub key: String,
    /// Its position in the publisher's outbox.
    pub position: i64,
    /// When the publishing transaction wrote it.
    pub published_at: chrono::DateTime<chrono::Utc>,
    /// The correlation id.
    pub correlation_id: Option<Uuid>,
    /// The causation id.
    pub causation_id: Option<Uuid>,
    /// The event itself.
    pub payload: serde_json::Value,
}

/// Reads a message of the stream back into the event and its origin.
pub(crate) fn decode(
    subject: &str,
    sequence: u64,
    headers: Option<&HeaderMap>,
    body: &[u8],
) -> Result<(RawEvent, Origin), Error> {
    let bad = |reason: String| Error::BadEnvelope { subject: subject.to_owned(), sequence, reason };
    let envelope: EnvelopeJson = serde_json::from_slice(body).map_err(|e| bad(format!("its body: {e}")))?;
    let header = |name: &str| -> Result<String, Error> {
        headers
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
            .ok_or_else(|| bad(format!("no `{name}` header")))
    };
    let tx = header(TX_HEADER)?.parse::<u64>().map_err(|e| bad(format!("`{TX_HEADER}`: {e}")))?;
    let floor = match headers.and_then(|h| h.get(FLOOR_HEADER)) {
        None => None,
        Some(value) => {
            let (hi, last_id) = value
                .as_str()
                .rsplit_once('/')
                .and_then(|(hi, id)| Some((hi.to_owned(), id.parse::<i64>().ok()?)))
                .ok_or_else(|| bad(format!("`{FLOOR_HEADER}` is not `<snapshot>/<id>`")))?;
            Some((hi, last_id))
        }
    };
    let origin = Origin { tx, cluster: header(CLUSTER_HEADER)?, lo: header(LO_HEADER)?, floor };
    let payload = serde_json::to_string(&envelope.payload).map_err(|e| bad(format!("its payload: {e}")))?;
    Ok((
        RawEvent {
            position: envelope.position,
            id: envelope.id,
            event_type: envelope.event_type,
            key: envelope.key,
            payload,
            correlation_id: envelope.correlation_id,
            causation_id: envelope.causation_id,
            published_at: envelope.published_at,
        },
        origin,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_survives_the_trip() {
        let event = RawEvent {
            position: 7,
            id: Uuid::now_v7(),
            event_type: "PatientAdmitted".into(),
            key: "4\"2".into(),
            payload: r#"{"patient_id": 42, "name": "Ada"}"#.into(),
            correlation_id: Some(Uuid::now_v7()),
            causation_id: None,
            published_at: chrono::Utc::now(),
        };
        let origin =
            Origin { tx: 991, cluster: "7312".into(), lo: "990:992:".into(), floor: Some(("990:995:993".into(), 41)) };
        let (headers, body) = encode("patients", &event, &origin).expect("encodes");
        let parsed: serde_json::Value = serde_json::from_slice(&body).expect("plain JSON");
        assert_eq!(parsed["type"], "PatientAdmitted");
        assert_eq!(parsed["payload"]["name"], "Ada");
        let (back, back_origin) = decode("p.patients.PatientAdmitted", 1, Some(&headers), &body).expect("decodes");
        assert_eq!(back.id, event.id);
        assert_eq!(back.key, event.key);
        assert_eq!(back.correlation_id, event.correlation_id);
        assert_eq!(back_origin, origin);
        assert!(decode("s", 1, None, &body).is_err());
        assert!(decode("s", 1, Some(&headers), b"{}").is_err());
    }
}

//! `moat events tail`: the project's events as they reach JetStream, through an ephemeral
//! ordered consumer (it leaves nothing behind on the server).

use async_nats::jetstream::consumer;
use futures::{Stream, StreamExt};

use super::broker::{Broker, nats_error};
use super::envelope::EnvelopeJson;
use crate::Error;

/// One message of the stream as `moat events tail` prints it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Tailed {
    /// Its subject.
    pub subject: String,
    /// Its sequence in the stream.
    pub sequence: u64,
    /// The event (an error when the message is not a moat envelope).
    pub event: Result<EnvelopeJson, String>,
}

/// Follows the stream from now (or from its first message with `from_start`), on `subject`
/// (default: every subject of the project, `<project>.>`; a module's: `<project>.<module>.>`).
pub async fn tail(
    broker: &Broker,
    subject: Option<&str>,
    from_start: bool,
) -> Result<impl Stream<Item = Result<Tailed, Error>> + use<>, Error> {
    let stream = broker
        .js
        .get_stream(broker.stream_name())
        .await
        .map_err(|e| nats_error(format!("reading stream `{}`", broker.stream_name()), e))?;
    let filter = subject.map_or_else(|| format!("{}.>", broker.manifest.project), str::to_owned);
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: filter,
            deliver_policy: if from_start { consumer::DeliverPolicy::All } else { consumer::DeliverPolicy::New },
            ..Default::default()
        })
        .await
        .map_err(|e| nats_error("following the stream", e))?;
    let messages = consumer.messages().await.map_err(|e| nats_error("following the stream", e))?;
    Ok(messages.map(|message| {
        let message = message.map_err(|e| nats_error("following the stream", e))?;
        let sequence = message.info().map(|i| i.stream_sequence).unwrap_or_default();
        let event = serde_json::from_slice::<EnvelopeJson>(&message.payload).map_err(|e| e.to_string());
        Ok(Tailed { subject: message.subject.to_string(), sequence, event })
    }))
}

//! Wake-ups across processes: LISTEN on each publisher's channel as the relay, and wake this
//! process's subscription tasks of that publisher.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;

use crate::notify::Notifier;

/// Wakes local subscription tasks when another process's publisher sends a NOTIFY.
pub(crate) async fn listen(
    relay: PgPool,
    channels: BTreeMap<String, String>,
    notifier: Arc<Notifier>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let mut listener = match sqlx::postgres::PgListener::connect_with(&relay).await {
            Ok(listener) => listener,
            Err(e) => {
                tracing::warn!(error = %e, "cannot LISTEN for events; polling only");
                tokio::select! { _ = tokio::time::sleep(Duration::from_secs(5)) => continue, _ = stop.changed() => return }
            }
        };
        let names: Vec<&str> = channels.keys().map(String::as_str).collect();
        if let Err(e) = listener.listen_all(names).await {
            tracing::warn!(error = %e, "cannot LISTEN for events; polling only");
            tokio::select! { _ = tokio::time::sleep(Duration::from_secs(5)) => continue, _ = stop.changed() => return }
        }
        loop {
            tokio::select! {
                notification = listener.recv() => match notification {
                    Ok(n) => {
                        if let Some(channel) = channels.get(n.channel()).and_then(|publisher| notifier.channel(publisher)) {
                            channel.local.notify_waiters();
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the event LISTEN connection failed; reconnecting");
                        break;
                    }
                },
                _ = stop.changed() => return,
            }
        }
    }
}

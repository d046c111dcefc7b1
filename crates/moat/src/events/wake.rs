//! Wake-ups across processes: LISTEN on each publisher's channel as the relay, and wake this
//! process's subscription tasks of that publisher.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;

use crate::notify::Notifier;

/// Wakes local subscription tasks when another process's publisher sends a NOTIFY: one LISTEN
/// connection (as the relay) per database that publishers live in, set up again when a module
/// moves to another database.
pub(crate) async fn listen(
    app: crate::Moat,
    channels: BTreeMap<String, String>,
    notifier: Arc<Notifier>,
    mut stop: watch::Receiver<bool>,
) {
    let mut moves = app.moves();
    loop {
        let mut by_database: BTreeMap<Option<String>, BTreeMap<String, String>> = BTreeMap::new();
        for (channel, publisher) in &channels {
            let at = app.database_of(publisher).map(|d| d.to_string());
            by_database.entry(at).or_default().insert(channel.clone(), publisher.clone());
        }
        let mut tasks = Vec::new();
        for channels in by_database.into_values() {
            let Some(publisher) = channels.values().next().cloned() else { continue };
            let relay = match app.relay_for(&publisher).await {
                Ok(relay) => relay,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot LISTEN for events; polling only");
                    continue;
                }
            };
            tasks.push(tokio::spawn(listen_one(relay, channels, notifier.clone(), stop.clone())));
        }
        tokio::select! {
            _ = moves.changed() => {}
            _ = stop.changed() => {}
        }
        for task in tasks {
            task.abort();
        }
        if *stop.borrow() {
            return;
        }
    }
}

/// LISTEN in one database.
async fn listen_one(
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

//! Wake-ups after a publishing commit: in this process at once, across processes through a
//! debounced `NOTIFY` (at most one per publisher per debounce interval, never one per business
//! transaction).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::Notify;

/// Per publishing module: a local wake-up and a debounced NOTIFY sender.
#[derive(Debug, Default)]
pub struct Notifier {
    modules: BTreeMap<String, Arc<Channel>>,
}

#[derive(Debug, Default)]
pub(crate) struct Channel {
    /// Wakes local subscription tasks of this publisher.
    pub(crate) local: Notify,
    /// Wakes the NOTIFY sender.
    pending: Notify,
    /// Set when a NOTIFY is owed.
    owed: AtomicBool,
}

impl Notifier {
    pub(crate) fn new(modules: impl IntoIterator<Item = String>) -> Self {
        Self { modules: modules.into_iter().map(|m| (m, Arc::new(Channel::default()))).collect() }
    }

    /// Called after a commit that published events.
    pub(crate) fn published(&self, module: &str) {
        if let Some(channel) = self.modules.get(module) {
            channel.local.notify_waiters();
            channel.owed.store(true, Ordering::Release);
            channel.pending.notify_one();
        }
    }

    pub(crate) fn channel(&self, module: &str) -> Option<Arc<Channel>> {
        self.modules.get(module).cloned()
    }

    /// Starts one task per publisher that sends `NOTIFY <channel>` when events were published,
    /// at most once per `debounce`, on the publisher's own pool (`pool_of`: in the database it
    /// lives in now, where its subscribers listen).
    pub(crate) fn spawn_senders(
        &self,
        channels: BTreeMap<String, String>,
        debounce: Duration,
        pool_of: PoolOf,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        for (module, channel_name) in channels {
            let Some(channel) = self.channel(&module) else { continue };
            let pool_of = pool_of.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    channel.pending.notified().await;
                    if !channel.owed.swap(false, Ordering::AcqRel) {
                        continue;
                    }
                    let Some(pool) = pool_of(&module) else { return };
                    if let Err(e) = sqlx::query("SELECT pg_notify($1, '')").bind(&channel_name).execute(&pool).await {
                        tracing::warn!(module, error = %e, "could not send the event notification; subscribers will poll");
                    }
                    tokio::time::sleep(debounce).await;
                }
            }));
        }
        tasks
    }
}

/// A module's pool as it is now (`None` once the application is gone).
pub(crate) type PoolOf = Arc<dyn Fn(&str) -> Option<PgPool> + Send + Sync>;

/// The NOTIFY channel of a publishing module.
pub(crate) fn channel_name(project: &str, module: &str) -> String {
    format!("moat_{project}_{module}")
}

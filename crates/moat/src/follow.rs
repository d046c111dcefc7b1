//! A running application follows its modules: while some module does not live where the manifest
//! puts it (a `moat extract` may come), a task listens for the switch (`NOTIFY moat_move` in the
//! source database, sent by `moat extract` when it switches) and polls as a fallback, then moves
//! that module's pool to the new database ([`crate::Moat::relocate`]) without a restart.

use std::sync::Weak;
use std::time::Duration;

use moat_admin::databases::DatabaseKey;
use sqlx::postgres::{PgListener, PgPoolOptions};
use tokio::sync::mpsc;

use crate::{Inner, Moat};

/// The channel `moat extract` notifies in the source database when it switches a module.
pub const MOVE_CHANNEL: &str = moat_admin::internal::MOVE_CHANNEL;

/// How often placement is read again when no notification came.
const POLL: Duration = Duration::from_secs(5);

pub(crate) async fn follow(inner: Weak<Inner>) {
    let (wake, mut woken) = mpsc::channel::<()>(8);
    let mut listeners = Vec::new();
    if let Some(inner) = inner.upgrade() {
        let app = Moat { inner };
        let sources: Vec<DatabaseKey> = {
            let placement = app.inner.placement.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut keys: Vec<DatabaseKey> =
                placement.modules.values().filter(|l| l.at != l.wanted).map(|l| l.at.clone()).collect();
            keys.sort();
            keys.dedup();
            keys
        };
        for key in sources {
            if let Ok(url) = app.databases().url(key.as_ref()) {
                listeners.push(tokio::spawn(listen(url.clone(), wake.clone())));
            }
        }
    }
    loop {
        tokio::select! {
            _ = woken.recv() => {}
            _ = tokio::time::sleep(POLL) => {}
        }
        let Some(inner) = inner.upgrade() else { break };
        let app = Moat { inner };
        match app.relocate().await {
            Ok(moved) if !moved.is_empty() => tracing::info!(modules = ?moved, "pools moved to their new database"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not read where modules live; trying again"),
        }
        if !app.may_move() {
            break;
        }
    }
    for listener in listeners {
        listener.abort();
    }
}

/// LISTEN on [`MOVE_CHANNEL`] in one database, as the admin (no module code runs in a LISTEN).
async fn listen(url: moat_admin::DatabaseUrl, wake: mpsc::Sender<()>) {
    loop {
        let connected = async {
            let options = url.connect_options().ok()?.options([("search_path", "pg_catalog")]);
            let pool = PgPoolOptions::new().max_connections(1).connect_with(options).await.ok()?;
            let mut listener = PgListener::connect_with(&pool).await.ok()?;
            listener.listen(MOVE_CHANNEL).await.ok()?;
            Some(listener)
        }
        .await;
        let Some(mut listener) = connected else {
            tokio::time::sleep(POLL).await;
            continue;
        };
        while listener.recv().await.is_ok() {
            if wake.send(()).await.is_err() {
                return;
            }
        }
    }
}

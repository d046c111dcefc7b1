//! What the chaos test (`tests/chaos.rs`) and the `moat-chaos` processes share: the events of
//! the two publishers (`pub_a`, `pub_b`), the handler that records each application in the
//! subscriber's own table, and the roles a process runs until it is killed.
//!
//! Each subscriber module has a table `applied (id bigserial, event_id uuid, publisher text,
//! key text, seq bigint)`; an event carries its key's sequence number (1, 2, 3, ...), so the
//! test checks from that table alone that every event was applied once and in key order.

use std::time::Duration;

use moat::events::{DispatcherConfig, Envelope, Event, Handler, HandlerContext, HandlerError};
use moat::jetstream::{Broker, Relay, RelayConfig};
use moat::{Config, Moat};
use serde::{Deserialize, Serialize};

/// The migration of every subscriber module.
pub const APPLIED_TABLE: &str = "CREATE TABLE applied (id bigserial PRIMARY KEY, event_id uuid NOT NULL, publisher text NOT NULL, key text NOT NULL, seq bigint NOT NULL);\n";

/// The subscriber modules of the chaos project.
pub const SUBSCRIBERS: [&str; 3] = ["sub_a", "sub_b", "sub_c"];
/// The publishing modules of the chaos project.
pub const PUBLISHERS: [&str; 2] = ["pub_a", "pub_b"];

macro_rules! tick {
    ($name:ident, $module:literal) => {
        /// The `seq`-th event of `key` published by the module.
        #[derive(Debug, Clone, Serialize, Deserialize)]
        pub struct $name {
            /// The ordering key.
            pub key: i64,
            /// 1, 2, 3, ... per key.
            pub seq: i64,
        }

        impl Event for $name {
            const MODULE: &'static str = $module;
            const TYPE: &'static str = "Tick";
            fn key(&self) -> String {
                self.key.to_string()
            }
        }

        impl Handler<$name> for Record {
            async fn handle(&self, ctx: &mut HandlerContext<'_>, e: &Envelope<$name>) -> Result<(), HandlerError> {
                record(ctx, e.id, &e.publisher, &e.key, e.payload.seq).await
            }
        }
    };
}

/// Records every event it applies in the subscriber's `applied` table.
#[derive(Debug, Clone, Copy)]
pub struct Record;

tick!(TickA, "pub_a");
tick!(TickB, "pub_b");

async fn record(
    ctx: &mut HandlerContext<'_>,
    id: uuid::Uuid,
    publisher: &str,
    key: &str,
    seq: i64,
) -> Result<(), HandlerError> {
    sqlx::query("INSERT INTO applied (event_id, publisher, key, seq) VALUES ($1, $2, $3, $4)")
        .bind(id)
        .bind(publisher)
        .bind(key)
        .bind(seq)
        .execute(&mut **ctx)
        .await?;
    Ok(())
}

/// The dispatcher's tuning in the chaos processes: the defaults, with short backoffs (the NATS
/// server is restarted on purpose).
pub fn dispatcher_config() -> DispatcherConfig {
    DispatcherConfig {
        poll_interval: Duration::from_millis(200),
        backoff_base: Duration::from_millis(50),
        backoff_max: Duration::from_secs(1),
        ..DispatcherConfig::default()
    }
}

/// Where the databases are: the admin URL of the main database and of each `[databases.NAME]`.
#[derive(Debug, Clone, Default)]
pub struct Databases {
    /// The main database's admin URL.
    pub main: Option<String>,
    /// `NAME=URL` of the others.
    pub others: Vec<(String, String)>,
}

impl Databases {
    fn apply(&self, mut config: Config) -> Config {
        if let Some(url) = &self.main {
            config = config.database_url(url.clone());
        }
        for (name, url) in &self.others {
            config = config.database(name.clone(), url.clone());
        }
        config
    }
}

/// Runs a dispatcher of `module`'s subscriptions (to `pub_a` and `pub_b`) until the process is
/// killed (or the dispatcher ends, which is an error).
pub async fn run_subscriber(
    manifest: moat_core::manifest::Manifest,
    module: &str,
    databases: &Databases,
    nats: &str,
) -> anyhow::Result<()> {
    let config = databases.apply(Config::new(manifest.clone()).modules([module]));
    let app = Moat::connect(config).await?;
    let broker = Broker::connect_to(&manifest, nats).await?;
    let _dispatcher = app
        .events()
        .jetstream(broker)
        .config(dispatcher_config())
        .subscribe::<TickA, _>(module, Record)?
        .subscribe::<TickB, _>(module, Record)?
        .start()
        .await?;
    tracing::info!(module, "subscriber running");
    std::future::pending::<()>().await;
    Ok(())
}

/// Runs the relay as `moat relay` does until the process is killed.
pub async fn run_relay(
    manifest: moat_core::manifest::Manifest,
    databases: &Databases,
    nats: &str,
    batch_size: i64,
) -> anyhow::Result<()> {
    let broker = Broker::connect_to(&manifest, nats).await?;
    let config = databases.apply(Config::new(manifest.clone()).modules(Vec::<String>::new()));
    let app = Moat::connect(config).await?;
    let _relay =
        Relay::start(app, broker, RelayConfig { batch_size: batch_size.max(1), ..RelayConfig::default() }).await?;
    tracing::info!("relay running");
    std::future::pending::<()>().await;
    Ok(())
}

//! moat's PostgreSQL administration layer: the provisioning plan, the migration runner, the
//! catalog audit and access probe, and the embedded cluster.
//!
//! Everything here talks to PostgreSQL through sqlx; nothing here parses SQL (the runtime library
//! re-exports this crate, and applications must not build the SQL parser).

pub mod audit;
pub mod catalog;
pub mod embedded;
pub mod error;
pub mod events;
pub mod internal;
pub mod migrate;
pub mod plan;
pub mod policy;
pub mod provision;
pub mod target;
pub mod up;

pub use error::AdminError;
pub use target::DatabaseUrl;

use sqlx::{ConnectOptions, PgConnection};

/// Opens one connection, with an error that says how to reach a server.
pub async fn connect(url: &DatabaseUrl) -> Result<PgConnection, AdminError> {
    let options = url.connect_options()?.log_statements(tracing::log::LevelFilter::Trace);
    options.connect().await.map_err(|source| AdminError::Connect {
        target: url.to_string(),
        help: "is PostgreSQL running and does it accept this role? Start a local server (for example \
               `pg_ctlcluster 15 main start`), or leave --database-url, MOAT_DATABASE_URL and DATABASE_URL unset \
               to use the embedded cluster"
            .into(),
        source,
    })
}

//! moat's PostgreSQL administration layer: the provisioning plan, the migration runner, the
//! catalog audit and access probe, and the embedded cluster.
//!
//! Everything here talks to PostgreSQL through sqlx; nothing here parses SQL (the runtime library
//! re-exports this crate, and applications must not build the SQL parser).

pub mod audit;
pub mod catalog;
pub mod databases;
pub mod embedded;
pub mod error;
pub mod events;
pub mod extract;
pub mod internal;
pub mod locks;
pub mod login;
pub mod migrate;
pub mod placement;
pub mod plan;
pub mod policy;
pub mod provision;
pub mod replication;
pub mod target;
pub mod up;

pub use error::AdminError;
pub use target::DatabaseUrl;

use sqlx::{ConnectOptions, PgConnection};

/// Opens an admin connection: its `search_path` is pinned to `pg_catalog`, so that nothing a
/// module creates can shadow a function, operator or table the admin's SQL names, and every
/// other object is named with its schema. Use [`connect_as`] for sessions of project roles.
pub async fn connect(url: &DatabaseUrl) -> Result<PgConnection, AdminError> {
    let options = url.connect_options()?.options([("search_path", "pg_catalog")]);
    open(url, options).await
}

/// Opens a connection as whatever role `url` names, with that role's own settings (its
/// `search_path` included). Never used for admin work.
pub async fn connect_as(url: &DatabaseUrl) -> Result<PgConnection, AdminError> {
    let options = url.connect_options()?;
    open(url, options).await
}

async fn open(url: &DatabaseUrl, options: sqlx::postgres::PgConnectOptions) -> Result<PgConnection, AdminError> {
    let options = options.log_statements(tracing::log::LevelFilter::Trace);
    options.connect().await.map_err(|source| AdminError::Connect {
        target: url.to_string(),
        help: "is PostgreSQL running and does it accept this role? Start a local server (for example \
               `pg_ctlcluster 15 main start`), or leave --database-url, MOAT_DATABASE_URL and DATABASE_URL unset \
               to use the embedded cluster"
            .into(),
        source,
    })
}

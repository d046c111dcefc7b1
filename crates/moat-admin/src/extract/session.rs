//! Sessions that act as a module's owner: logged in as the module's migrator (a one-time
//! password, see [`crate::login`]), settings pinned, then `SET ROLE <owner>`. Everything a move
//! does to the module's own objects (its DDL from `pg_dump`, `COPY` of its tables, hashes of its
//! rows, its sequences) runs in such a session, never in the admin's: a function of the module
//! that a constraint, an index or a default calls runs with the owner's rights and no more. A
//! session that ran module SQL is closed, never reused for anything else.

use moat_core::manifest::{Manifest, Module};
use moat_core::quote::{ident, literal};
use sqlx::PgConnection;

use crate::error::{AdminError, db};
use crate::migrate::session::{self as migrator, MigratorRoles, SessionState};
use crate::target::DatabaseUrl;

/// A session acting as a module's owner.
pub struct OwnerSession {
    /// The connection (session user: the migrator; current user: the owner).
    pub conn: PgConnection,
    roles: MigratorRoles,
    before: SessionState,
}

/// Settings every owner session pins, so that both sides print rows the same way and nothing
/// the roles set for themselves changes what runs. `search_path` is the module's schema (as in
/// its migrations, `pg_catalog` first implicitly), so that its functions that name its tables
/// unqualified work when a constraint, default or index runs them; moat's own queries in these
/// sessions qualify everything.
const PINNED: [(&str, &str); 9] = [
    ("statement_timeout", "0"),
    ("lock_timeout", "10s"),
    ("idle_in_transaction_session_timeout", "0"),
    ("DateStyle", "ISO, YMD"),
    ("IntervalStyle", "postgres"),
    ("TimeZone", "UTC"),
    ("extra_float_digits", "1"),
    ("bytea_output", "hex"),
    ("default_transaction_read_only", "off"),
];

impl OwnerSession {
    /// Logs in as the module's migrator in the database of `url` (the admin's connection
    /// `admin` gives it a one-time password) and becomes its owner.
    pub async fn open(
        admin: &mut PgConnection,
        url: &DatabaseUrl,
        manifest: &Manifest,
        module: &Module,
    ) -> Result<Self, AdminError> {
        let roles = MigratorRoles::of(manifest, module);
        let mut conn = crate::login::login_as(admin, url, &roles.migrator).await?;
        let mut set: String = PINNED.iter().map(|(k, v)| format!("SET {k} = {}; ", literal(v))).collect();
        set.push_str(&format!("SET search_path = {}; SET ROLE {}", ident(module.schema.as_str()), ident(&roles.owner)));
        sqlx::raw_sql(sqlx::AssertSqlSafe(set))
            .execute(&mut conn)
            .await
            .map_err(db(format!("becoming `{}` in a session logged in as `{}`", roles.owner, roles.migrator)))?;
        let before = migrator::state(&mut conn, &roles).await?;
        Ok(Self { conn, roles, before })
    }

    /// The owner role.
    pub fn owner(&self) -> &str {
        &self.roles.owner
    }

    /// Checks that the module's SQL left the session as the owner in the migrator's session and
    /// changed no membership, setting or attribute of the two roles (see
    /// [`crate::migrate::session`]). `in_transaction`: the transaction must still be the one
    /// checked at its start (`begin`).
    pub async fn check(&mut self, in_transaction: bool) -> Result<(), String> {
        let after = migrator::state(&mut self.conn, &self.roles).await.map_err(|e| e.to_string())?;
        match migrator::difference(&self.before, &after, &self.roles.owner, in_transaction) {
            Some(what) => Err(what),
            None => Ok(()),
        }
    }

    /// Starts a transaction and takes its state as the one [`Self::check`] compares with.
    pub async fn begin(&mut self, isolation: &str) -> Result<(), AdminError> {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("BEGIN ISOLATION LEVEL {isolation}")))
            .execute(&mut self.conn)
            .await
            .map_err(db(format!("starting a transaction as `{}`", self.roles.owner)))?;
        sqlx::raw_sql("SELECT pg_catalog.pg_current_xact_id()")
            .execute(&mut self.conn)
            .await
            .map_err(db("starting a transaction"))?;
        self.before = migrator::state(&mut self.conn, &self.roles).await?;
        Ok(())
    }

    /// Closes the session.
    pub async fn close(self) {
        let _ = sqlx::Connection::close(self.conn).await;
    }
}

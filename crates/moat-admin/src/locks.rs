//! Bounded waits. Every lock an admin session waits for (moat's advisory locks, table and catalog
//! locks) is taken under `lock_timeout`, so that a module role holding one cannot hang `moat up`,
//! `migrate`, `provision` or `audit`; a timeout is an error that names the role holding the lock.

use std::time::Duration;

use sqlx::PgConnection;

use crate::error::{AdminError, db};

/// How long an admin session waits for a lock before giving up.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// The 64-bit key moat uses for the advisory lock named `name` (`hashtextextended(name, 0)`).
pub const KEY_SQL: &str = "pg_catalog.hashtextextended($1, 0)";

/// Takes the session advisory lock `name`, waiting at most [`LOCK_TIMEOUT`]. `doing` says what
/// the lock is for, in the error.
pub async fn advisory_lock(conn: &mut PgConnection, name: &str, doing: &str) -> Result<(), AdminError> {
    let got: bool = sqlx::query_scalar("SELECT pg_catalog.pg_try_advisory_lock(pg_catalog.hashtextextended($1, 0))")
        .bind(name)
        .fetch_one(&mut *conn)
        .await
        .map_err(db(format!("taking the lock for {doing}")))?;
    if got {
        return Ok(());
    }
    wait_for_advisory_lock(conn, name, doing).await
}

/// Waits for the session advisory lock `name` (someone else holds it), at most [`LOCK_TIMEOUT`].
pub async fn wait_for_advisory_lock(conn: &mut PgConnection, name: &str, doing: &str) -> Result<(), AdminError> {
    let timeout = format!("{}ms", LOCK_TIMEOUT.as_millis());
    let waited = sqlx::query(
        "SELECT pg_catalog.set_config('lock_timeout', $2, false), \
         pg_catalog.pg_advisory_lock(pg_catalog.hashtextextended($1, 0))",
    )
    .bind(name)
    .bind(&timeout)
    .execute(&mut *conn)
    .await;
    let _ = sqlx::query("SELECT pg_catalog.set_config('lock_timeout', '0', false)").execute(&mut *conn).await;
    match waited {
        Ok(_) => Ok(()),
        Err(e) if is_lock_timeout(&e) => {
            Err(AdminError::LockTimeout { doing: doing.to_owned(), holders: advisory_holders(conn, name).await })
        }
        Err(e) => Err(db(format!("waiting for the lock for {doing}"))(e)),
    }
}

/// Releases the session advisory lock `name`; closing the connection releases it too.
pub async fn advisory_unlock(conn: &mut PgConnection, name: &str) {
    let _ = sqlx::query("SELECT pg_catalog.pg_advisory_unlock(pg_catalog.hashtextextended($1, 0))")
        .bind(name)
        .execute(&mut *conn)
        .await;
}

/// Whether `e` is PostgreSQL's `lock_not_available` (SQLSTATE 55P03), what `lock_timeout` raises.
pub fn is_lock_timeout(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("55P03"))
}

/// The roles (and their backend pids) that hold the advisory lock `name`.
pub async fn advisory_holders(conn: &mut PgConnection, name: &str) -> Vec<LockHolder> {
    // An advisory lock on a bigint key is stored as (classid, objid) = (high, low) 32 bits.
    sqlx::query_as::<_, (String, i32)>(
        "SELECT coalesce(a.usename::text, '?'), l.pid FROM pg_catalog.pg_locks l \
         LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
         AND ((l.classid::bigint << 32) | l.objid::bigint) = pg_catalog.hashtextextended($1, 0) \
         AND l.pid <> pg_catalog.pg_backend_pid()",
    )
    .bind(name)
    .fetch_all(&mut *conn)
    .await
    .unwrap_or_default()
    .into_iter()
    .map(|(role, pid)| LockHolder { role, pid })
    .collect()
}

/// The roles (and pids) that hold a lock on relation `regclass` that conflicts with others.
pub async fn relation_holders(conn: &mut PgConnection, relation: &str) -> Vec<LockHolder> {
    sqlx::query_as::<_, (String, i32)>(
        "SELECT DISTINCT coalesce(a.usename::text, '?'), l.pid FROM pg_catalog.pg_locks l \
         JOIN pg_catalog.pg_class c ON c.oid = l.relation JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'relation' AND l.granted AND pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname) = $1 \
         AND l.pid <> pg_catalog.pg_backend_pid()",
    )
    .bind(relation)
    .fetch_all(&mut *conn)
    .await
    .unwrap_or_default()
    .into_iter()
    .map(|(role, pid)| LockHolder { role, pid })
    .collect()
}

/// A session that holds a lock moat waited for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockHolder {
    /// Its role (`pg_stat_activity.usename`).
    pub role: String,
    /// Its backend pid.
    pub pid: i32,
}

impl std::fmt::Display for LockHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}` (pid {})", self.role, self.pid)
    }
}

/// The holders as a sentence part: "`clinic_billing` (pid 123)", or "an unknown session".
pub fn describe_holders(holders: &[LockHolder]) -> String {
    if holders.is_empty() {
        "a session that has since gone".to_owned()
    } else {
        holders.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    }
}

//! The one transaction guard of the library: every raw `BEGIN` goes through [`RawTx`], which rolls
//! back on every early return and on drop, so that no pooled connection goes back to its pool
//! inside a transaction.

use std::ops::{Deref, DerefMut};

use sqlx::pool::PoolConnection;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Postgres};

use crate::Error;

/// A transaction on a pooled connection, begun with a raw `BEGIN`.
///
/// [`RawTx::commit`] and [`RawTx::rollback`] end it; dropping it (an early return, a `?`, a
/// panic) rolls it back in the background before the connection goes back to its pool, or closes
/// the connection when that is not possible.
#[derive(Debug)]
pub(crate) struct RawTx {
    conn: Option<PoolConnection<Postgres>>,
}

/// Sent right before `COMMIT` (after the caller's statements, so that they do not run in a
/// subtransaction): it fails when the transaction is aborted (25P02) and when no transaction
/// block is open any more (25P01, the caller ended it with its own `COMMIT` or `ROLLBACK`; the
/// statements of the same message then ran in an implicit transaction, which the error rolls
/// back), so a `COMMIT` that PostgreSQL would answer with `ROLLBACK` or a warning never reads as
/// success.
const COMMIT_CHECK: &str = "SAVEPOINT moat_commit; ";

impl RawTx {
    /// `BEGIN`.
    pub(crate) async fn begin(conn: PoolConnection<Postgres>) -> Result<Self, Error> {
        let (tx, _) = Self::begin_with(conn, "").await?;
        Ok(tx)
    }

    /// `BEGIN; <sql>` in one round trip (simple query protocol; `sql` is quoted by the caller);
    /// returns the rows of `sql`.
    pub(crate) async fn begin_with(conn: PoolConnection<Postgres>, sql: &str) -> Result<(Self, Vec<PgRow>), Error> {
        let mut tx = Self { conn: Some(conn) };
        let sql = if sql.is_empty() { "BEGIN".to_owned() } else { format!("BEGIN; {sql}") };
        // On an error the guard is dropped here, which rolls back.
        let rows = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).fetch_all(&mut *tx).await?;
        Ok((tx, rows))
    }

    /// `<sql>COMMIT` in one round trip (`sql` empty or ending in `; `). An error, whether of `sql`
    /// or of the commit, or a transaction that had already failed or ended, is returned as an
    /// error and the transaction is rolled back.
    pub(crate) async fn commit(mut self, sql: &str) -> Result<(), Error> {
        let statement = format!("{sql}{COMMIT_CHECK}COMMIT");
        match sqlx::raw_sql(sqlx::AssertSqlSafe(statement)).execute(&mut *self).await {
            Ok(_) => {
                self.conn = None;
                Ok(())
            }
            Err(e) => {
                self.rollback().await?;
                Err(e.into())
            }
        }
    }

    /// `ROLLBACK`.
    pub(crate) async fn rollback(mut self) -> Result<(), Error> {
        if let Some(mut conn) = self.conn.take()
            && let Err(e) = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await
        {
            conn.close_on_drop();
            return Err(e.into());
        }
        Ok(())
    }
}

impl Deref for RawTx {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        match &self.conn {
            Some(conn) => conn,
            None => finished(),
        }
    }
}

impl DerefMut for RawTx {
    fn deref_mut(&mut self) -> &mut PgConnection {
        match &mut self.conn {
            Some(conn) => conn,
            None => finished(),
        }
    }
}

#[allow(clippy::panic)]
fn finished() -> ! {
    // commit() and rollback() consume the guard, so no reference can outlive them.
    panic!("BUG: a finished transaction was used")
}

impl Drop for RawTx {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else { return };
        // Roll back in the background (the connection returns to its pool only afterwards);
        // without a runtime, close the connection instead (the server rolls back when it goes).
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    if sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await.is_err() {
                        conn.close_on_drop();
                    }
                });
            }
            Err(_) => conn.close_on_drop(),
        }
    }
}

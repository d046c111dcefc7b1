//! Snapshots on the consumer side: an idempotent upsert that applies an event only if it is
//! newer than what the snapshot row holds, so replays and reordering across keys do no harm.

use moat_core::quote::ident;
use sqlx::postgres::PgArguments;
use sqlx::{Arguments, Encode, PgConnection, Postgres, Type};

use crate::Error;

/// `INSERT ... ON CONFLICT (key) DO UPDATE ... WHERE <table>.version < EXCLUDED.version`.
///
/// The table is named unqualified: it resolves in the subscriber's own schema (its role's
/// `search_path`). [`SnapshotUpsert::execute`] returns whether the row changed (`false` for a
/// replay or an older event).
#[derive(Debug)]
pub struct SnapshotUpsert {
    table: String,
    key: String,
    version: Option<String>,
    columns: Vec<String>,
    arguments: PgArguments,
    error: Option<String>,
}

impl SnapshotUpsert {
    /// A snapshot row of `table` identified by `key_column = key`.
    pub fn new<T>(table: &str, key_column: &str, key: T) -> Self
    where
        T: for<'q> Encode<'q, Postgres> + Type<Postgres> + Send + 'static,
    {
        let mut upsert = Self {
            table: table.to_owned(),
            key: key_column.to_owned(),
            version: None,
            columns: Vec::new(),
            arguments: PgArguments::default(),
            error: None,
        };
        upsert.push(key_column, key);
        upsert
    }

    /// The version column and the event's version; without one, every event overwrites.
    pub fn version(mut self, column: &str, version: i64) -> Self {
        self.version = Some(column.to_owned());
        self.push(column, version);
        self
    }

    /// A column to store.
    pub fn set<T>(mut self, column: &str, value: T) -> Self
    where
        T: for<'q> Encode<'q, Postgres> + Type<Postgres> + Send + 'static,
    {
        self.push(column, value);
        self
    }

    fn push<T>(&mut self, column: &str, value: T)
    where
        T: for<'q> Encode<'q, Postgres> + Type<Postgres> + Send + 'static,
    {
        if let Err(e) = self.arguments.add(value) {
            self.error.get_or_insert_with(|| format!("column `{column}`: {e}"));
        }
        self.columns.push(column.to_owned());
    }

    /// The statement (for tests and logs).
    pub fn sql(&self) -> String {
        let table = ident(&self.table);
        let columns: Vec<String> = self.columns.iter().map(|c| ident(c)).collect();
        let placeholders: Vec<String> = (1..=columns.len()).map(|i| format!("${i}")).collect();
        let updates: Vec<String> =
            columns.iter().filter(|c| **c != ident(&self.key)).map(|c| format!("{c} = EXCLUDED.{c}")).collect();
        let mut sql = format!(
            "INSERT INTO {table} ({}) VALUES ({}) ON CONFLICT ({}) DO UPDATE SET {}",
            columns.join(", "),
            placeholders.join(", "),
            ident(&self.key),
            updates.join(", ")
        );
        if let Some(version) = &self.version {
            let version = ident(version);
            sql.push_str(&format!(" WHERE {table}.{version} < EXCLUDED.{version}"));
        }
        sql
    }

    /// Runs it; returns whether the snapshot row was inserted or updated.
    pub async fn execute(self, conn: &mut PgConnection) -> Result<bool, Error> {
        if let Some(reason) = self.error {
            return Err(Error::InvalidEvent { event_type: "snapshot", reason });
        }
        let sql = self.sql();
        let done = sqlx::query_with(sqlx::AssertSqlSafe(sql), self.arguments).execute(&mut *conn).await?;
        Ok(done.rows_affected() > 0)
    }
}

//! What a move carries, read from the catalog (admin session, `pg_catalog` only): the module's
//! tables with their columns and keys, its sequences, and moat's own tables in its schema.

use moat_core::quote::{ident, qualified};
use sqlx::PgConnection;

use crate::error::{AdminError, db};
use crate::internal;

/// A table whose rows move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// Its name (in the module's schema).
    pub name: String,
    /// Columns that `COPY` carries (not dropped, not generated), in order.
    pub columns: Vec<String>,
    /// `ORDER BY` terms of its key (primary key, replica identity index, or the whole row),
    /// over alias `x`, with text compared bytewise.
    pub order: Vec<String>,
    /// One of moat's tables (copied and compared by the admin).
    pub moat: bool,
}

impl Table {
    /// `schema.table`, quoted.
    pub fn qualified(&self, schema: &str) -> String {
        qualified(schema, &self.name)
    }

    /// The column list, quoted, in parentheses.
    pub fn column_list(&self) -> String {
        format!("({})", self.columns.iter().map(|c| ident(c)).collect::<Vec<_>>().join(", "))
    }
}

/// A sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sequence {
    /// Its name (in the module's schema).
    pub name: String,
    /// One of moat's.
    pub moat: bool,
}

const TABLES_SQL: &str = "\
SELECT c.relname::text,
       ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a
             WHERE a.attrelid OPERATOR(pg_catalog.=) c.oid AND a.attnum OPERATOR(pg_catalog.>) 0
               AND NOT a.attisdropped AND a.attgenerated OPERATOR(pg_catalog.=) ''
             ORDER BY a.attnum),
       coalesce((SELECT ARRAY(SELECT pg_catalog.format('x.%I', a.attname)
                              || CASE WHEN a.attcollation OPERATOR(pg_catalog.<>) 0 THEN ' COLLATE \"C\"' ELSE '' END
                         FROM pg_catalog.unnest(i.indkey) WITH ORDINALITY k(attnum, n)
                         JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) c.oid AND a.attnum OPERATOR(pg_catalog.=) k.attnum
                         ORDER BY k.n)
                 FROM pg_catalog.pg_index i
                 WHERE i.indrelid OPERATOR(pg_catalog.=) c.oid AND (i.indisprimary OR (c.relreplident OPERATOR(pg_catalog.=) 'i' AND i.indisreplident))
                   AND NOT (0 OPERATOR(pg_catalog.=) ANY (i.indkey::int2[]))
                 ORDER BY i.indisprimary DESC LIMIT 1),
                CASE WHEN c.relreplident OPERATOR(pg_catalog.=) 'f' THEN ARRAY['(x.*)::pg_catalog.text COLLATE \"C\"'] END)
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
WHERE n.nspname OPERATOR(pg_catalog.=) $1 AND c.relkind OPERATOR(pg_catalog.=) 'r'
ORDER BY 1";

/// The tables of `schema` whose rows move (plain tables and leaf partitions; moat's tables
/// included, marked), with their keys; `None` as the key for a table that has none.
pub async fn tables(conn: &mut PgConnection, schema: &str) -> Result<Vec<(Table, bool)>, AdminError> {
    let rows: Vec<(String, Vec<String>, Option<Vec<String>>)> = sqlx::query_as(TABLES_SQL)
        .bind(schema)
        .fetch_all(&mut *conn)
        .await
        .map_err(db(format!("listing the tables of schema `{schema}`")))?;
    Ok(rows
        .into_iter()
        .map(|(name, columns, order)| {
            let moat = internal::owned_by_moat(&name);
            let has_key = order.is_some();
            // moat's tables have no key everywhere: they are compared as whole sorted rows.
            let order = match order {
                Some(order) if !moat => order,
                _ => vec!["(x.*)::pg_catalog.text COLLATE \"C\"".to_owned()],
            };
            (Table { name, columns, order, moat }, has_key || moat)
        })
        .filter(|(t, _)| t.name != internal::MOVE)
        .collect())
}

/// The sequences of `schema`.
pub async fn sequences(conn: &mut PgConnection, schema: &str) -> Result<Vec<Sequence>, AdminError> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
         WHERE n.nspname OPERATOR(pg_catalog.=) $1 AND c.relkind OPERATOR(pg_catalog.=) 'S' ORDER BY 1",
    )
    .bind(schema)
    .fetch_all(&mut *conn)
    .await
    .map_err(db(format!("listing the sequences of schema `{schema}`")))?;
    Ok(names.into_iter().map(|name| Sequence { moat: internal::owned_by_moat(&name), name }).collect())
}

/// Whether schema `schema` exists in the database of `conn`.
pub async fn schema_exists(conn: &mut PgConnection, schema: &str) -> Result<bool, AdminError> {
    sqlx::query_scalar(
        "SELECT pg_catalog.count(*) > 0 FROM pg_catalog.pg_namespace WHERE nspname OPERATOR(pg_catalog.=) $1",
    )
    .bind(schema)
    .fetch_one(&mut *conn)
    .await
    .map_err(db(format!("looking for schema `{schema}`")))
}

/// Refuses moat's tables in `schema` that are not what moat created (kind, owner) or carry
/// triggers, rules, policies or row security: the admin is about to read and write them.
pub async fn check_moat_tables(
    conn: &mut PgConnection,
    schema: &str,
    moat_owner: &str,
    side: &str,
) -> Result<(), AdminError> {
    let rows: Vec<(String, String, String, i64, bool)> = sqlx::query_as(
        "SELECT c.relname::text, c.relkind::text, pg_catalog.pg_get_userbyid(c.relowner)::text, \
         (SELECT pg_catalog.count(*) FROM pg_catalog.pg_trigger t WHERE t.tgrelid OPERATOR(pg_catalog.=) c.oid AND NOT t.tgisinternal) \
         + (SELECT pg_catalog.count(*) FROM pg_catalog.pg_rewrite r WHERE r.ev_class OPERATOR(pg_catalog.=) c.oid) \
         + (SELECT pg_catalog.count(*) FROM pg_catalog.pg_policy p WHERE p.polrelid OPERATOR(pg_catalog.=) c.oid), \
         c.relrowsecurity OR c.relforcerowsecurity \
         FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
         WHERE n.nspname OPERATOR(pg_catalog.=) $1 AND c.relkind OPERATOR(pg_catalog.=) ANY ('{r,p,S,v,m,f}')",
    )
    .bind(schema)
    .fetch_all(&mut *conn)
    .await
    .map_err(db(format!("checking moat's tables in schema `{schema}`")))?;
    for (name, kind, owner, code, row_security) in rows {
        if !internal::owned_by_moat(&name) {
            continue;
        }
        let expected = match name.as_str() {
            internal::OUTBOX => "p",
            internal::OUTBOX_SEQUENCE | internal::INBOX_SEQUENCE => "S",
            _ => "r",
        };
        if kind != expected || owner != moat_owner || code > 0 || row_security {
            return Err(AdminError::Refused {
                message: format!(
                    "moat's table `{schema}.{name}` in the {side} database is not as moat created it (kind `{kind}`, owner `{owner}`, {code} triggers, rules or policies{})",
                    if row_security { ", row level security" } else { "" }
                ),
                help: "`moat extract` copies moat's tables as the admin, so code on them would run as the admin; \
                       `moat audit` shows what changed it: restore it, then run `moat extract` again"
                    .into(),
            });
        }
    }
    Ok(())
}

//! Where each module's data is now, which can differ from where the manifest says it should be:
//! a module whose manifest entry gained `database = "..."` lives where it was until `moat extract`
//! moves it.
//!
//! A module lives in the database that holds its schema with moat's migration history. During a
//! move, the source holds the journal (`moat_move`, owned by `<project>_moat`) and the target a
//! copy in progress: the module lives at the source until the journal says `switched`, then at the
//! target, and the source keeps a copy the module cannot read until `moat extract --finalize`.
//! The admin reads the journal only when it is a plain table owned by `<project>_moat` (a module
//! owner could create a view of that name to run code as whoever reads it).

use std::collections::BTreeMap;

use moat_core::manifest::{Manifest, Module};
use moat_core::names::DatabaseName;
use moat_core::quote::{ident, qualified};
use sqlx::PgConnection;

use crate::databases::{DatabaseKey, Databases, label};
use crate::error::{AdminError, db};
use crate::internal;

/// A move in progress or done, as its journal in the source database says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    /// Where the module moves from (the database holding the journal).
    pub source: DatabaseKey,
    /// Where it moves to.
    pub target: DatabaseKey,
    /// The journal's step (`switched` once done).
    pub step: String,
}

impl Move {
    /// Whether the module lives at the target now.
    pub fn switched(&self) -> bool {
        self.step == internal::MOVE_SWITCHED
    }
}

/// Where one module is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The database its data is in now (where the manifest wants it, for a module not created
    /// yet).
    pub at: DatabaseKey,
    /// The database the manifest puts it in.
    pub wanted: DatabaseKey,
    /// The latest move, when one was journaled.
    pub moving: Option<Move>,
}

impl Location {
    /// Whether the module is not where the manifest wants it and no move has started.
    pub fn misplaced(&self) -> bool {
        self.at != self.wanted && self.moving.as_ref().is_none_or(Move::switched)
    }
}

/// Every module's location.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// By module name.
    pub modules: BTreeMap<String, Location>,
}

impl Placement {
    /// Where a module's data is now (`None`: the main database).
    pub fn at(&self, module: &str) -> Option<&DatabaseName> {
        self.modules.get(module).and_then(|l| l.at.as_ref())
    }

    /// Everything in one place, for a manifest without `[databases]` (no catalog read needed).
    pub fn main_only(manifest: &Manifest) -> Self {
        let location = Location { at: None, wanted: None, moving: None };
        Self { modules: manifest.modules.iter().map(|m| (m.name.to_string(), location.clone())).collect() }
    }

    /// The part of the manifest that lives in `key`.
    pub fn part(&self, manifest: &Manifest, key: Option<&DatabaseName>) -> Manifest {
        manifest.restricted(|m: &Module| self.at(m.name.as_str()) == key, key.is_none())
    }

    /// Modules not where the manifest wants them, with no move under way.
    pub fn misplaced(&self) -> impl Iterator<Item = (&String, &Location)> {
        self.modules.iter().filter(|(_, l)| l.misplaced())
    }

    /// What to tell the user about modules that are not where the manifest puts them, or are
    /// moving: `(module, message, help)`, by module name.
    pub fn notes(&self) -> Vec<(String, String, String)> {
        let mut notes = Vec::new();
        for (module, location) in &self.modules {
            let at = label(location.at.as_ref());
            let wanted = label(location.wanted.as_ref());
            match &location.moving {
                Some(m) if !m.switched() => notes.push((
                    module.clone(),
                    format!(
                        "module `{module}` is moving from {} to {} (step `{}`); it is served from {at} until the move switches",
                        label(m.source.as_ref()),
                        label(m.target.as_ref()),
                        m.step
                    ),
                    format!(
                        "run `moat extract {module}` to finish the move, or `moat extract {module} --abort` to undo it"
                    ),
                )),
                _ if location.misplaced() => notes.push((
                    module.clone(),
                    format!("module `{module}` lives in {at}; the manifest puts it in {wanted}"),
                    format!("run `moat extract {module}` to move it there"),
                )),
                _ => {}
            }
        }
        notes
    }
}

/// What one database holds of a module.
#[derive(Debug, Clone, Default)]
struct Found {
    history: bool,
    journal: Option<(String, String)>,
}

/// Reads where every module is, from each database's catalog and the move journals.
pub async fn locate(manifest: &Manifest, databases: &Databases) -> Result<Placement, AdminError> {
    if manifest.databases.is_empty() {
        return Ok(Placement::main_only(manifest));
    }
    let mut found: BTreeMap<(String, DatabaseKey), Found> = BTreeMap::new();
    for key in databases.keys() {
        let url = databases.url(key.as_ref())?;
        let mut conn = crate::connect(url).await?;
        for (schema, item) in read(&mut conn, manifest).await? {
            if let Some(module) = manifest.module_by_schema(&schema) {
                found.insert((module.name.to_string(), key.clone()), item);
            }
        }
        crate::provision::close(conn).await;
    }
    let mut placement = Placement::default();
    for module in &manifest.modules {
        let name = module.name.to_string();
        let wanted = module.database.clone();
        let here: Vec<(&DatabaseKey, &Found)> =
            found.iter().filter(|((m, _), _)| *m == name).map(|((_, k), f)| (k, f)).collect();
        let mut moving = None;
        let mut candidates: Vec<DatabaseKey> = Vec::new();
        for (key, item) in &here {
            if let Some((target, step)) = &item.journal {
                let target = if target.is_empty() {
                    None
                } else {
                    Some(DatabaseName::parse(target).map_err(|_| AdminError::Refused {
                        message: format!(
                            "the move journal of module `{name}` in {} names database `{target}`, which is no database name",
                            label(key.as_ref())
                        ),
                        help: format!("run `moat extract {name} --abort`"),
                    })?)
                };
                moving = Some(Move { source: (*key).clone(), target, step: step.clone() });
            }
        }
        for (key, item) in &here {
            let left_copy = moving.as_ref().is_some_and(|m| m.switched() && &m.source == *key);
            let copy_in_progress = moving.as_ref().is_some_and(|m| !m.switched() && &m.target == *key);
            if item.history && !left_copy && !copy_in_progress {
                candidates.push((*key).clone());
            }
        }
        let at = match (candidates.len(), &moving) {
            (0, Some(m)) if m.switched() => m.target.clone(),
            (0, _) => wanted.clone(),
            (1, _) => candidates.remove(0),
            _ => {
                return Err(AdminError::Refused {
                    message: format!(
                        "module `{name}` has its schema `{}` with a migration history in {}",
                        module.schema,
                        candidates.iter().map(|k| label(k.as_ref())).collect::<Vec<_>>().join(" and ")
                    ),
                    help: format!(
                        "a module lives in one database: drop the copy you do not want by hand (after checking it), \
                         then run moat again; `moat extract {name}` is how a module moves"
                    ),
                });
            }
        };
        placement.modules.insert(name, Location { at, wanted, moving });
    }
    Ok(placement)
}

const FIND_SQL: &str = "\
SELECT n.nspname AS schema, \
  EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.relnamespace = n.oid AND c.relname = $2 AND c.relkind IN ('r', 'p')) AS history, \
  EXISTS (SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_roles r ON r.oid = c.relowner \
          WHERE c.relnamespace = n.oid AND c.relname = $3 AND c.relkind = 'r' AND r.rolname = $4 \
            AND NOT c.relhasrules AND NOT c.relrowsecurity) AS journal \
FROM pg_catalog.pg_namespace n WHERE n.nspname = ANY($1)";

/// A move journal's row, as every reader of it sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalRow {
    /// The manifest's key of the target database (`''` for the main one).
    pub target: String,
    /// The step under way (`switched` once done).
    pub step: String,
    /// Whether the move has stopped the module's writes here.
    pub frozen: bool,
}

/// Reads the move journal of `schema`. The caller has checked that it is moat's plain table
/// (a SELECT on it then fires no trigger, rule or policy). Columns are read through `to_jsonb`,
/// so that a journal lacking one reads as without a value.
pub async fn read_journal(conn: &mut PgConnection, schema: &str) -> Result<Option<JournalRow>, AdminError> {
    let sql = format!(
        "SELECT coalesce(j OPERATOR(pg_catalog.->>) 'target', ''), coalesce(j OPERATOR(pg_catalog.->>) 'step', ''), \
         j OPERATOR(pg_catalog.->>) 'frozen_at' IS NOT NULL \
         FROM (SELECT pg_catalog.to_jsonb(m) AS j FROM {} m) x \
         ORDER BY j OPERATOR(pg_catalog.->>) 'started_at' DESC NULLS LAST LIMIT 1",
        qualified(schema, internal::MOVE)
    );
    let row: Option<(String, String, bool)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .fetch_optional(&mut *conn)
        .await
        .map_err(db(format!("reading the move journal of schema {}", ident(schema))))?;
    Ok(row.map(|(target, step, frozen)| JournalRow { target, step, frozen }))
}

/// The module schemas in one database: whether each holds a history, and its move journal.
async fn read(conn: &mut PgConnection, manifest: &Manifest) -> Result<Vec<(String, Found)>, AdminError> {
    let schemas: Vec<String> = manifest.modules.iter().map(|m| m.schema.to_string()).collect();
    let rows: Vec<(String, bool, bool)> = sqlx::query_as(FIND_SQL)
        .bind(&schemas)
        .bind(internal::MIGRATIONS)
        .bind(internal::MOVE)
        .bind(manifest.roles().moat_owner())
        .fetch_all(&mut *conn)
        .await
        .map_err(db("looking for module schemas"))?;
    let mut out = Vec::new();
    for (schema, history, journal) in rows {
        let journal = if journal { read_journal(conn, &schema).await?.map(|j| (j.target, j.step)) } else { None };
        out.push((schema, Found { history, journal }));
    }
    Ok(out)
}

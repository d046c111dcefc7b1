//! Every database of a project: the main one (the admin URL) and the manifest's `[databases]`,
//! each with its admin URL from the environment variable the manifest names (`url_env`), or
//! served by the embedded cluster when moat runs on the embedded default.
//!
//! Roles are per cluster, databases are not: when two of a project's databases share a cluster,
//! a module's roles (`<project>_<module>`, `_owner`, `_migrator`) exist once and hold privileges
//! only in the database the module lives in; the project's shared roles (`<project>_moat`,
//! `_relay`, consumers) are the same roles in each database, with each database's privileges
//! given there. Module names are unique in a project and every role carries the project prefix, so
//! no two databases can want one role name for different things.

use std::collections::BTreeMap;
use std::fmt;

use moat_core::manifest::Manifest;
use moat_core::names::DatabaseName;

use crate::error::AdminError;
use crate::target::DatabaseUrl;

/// Which database: the main one (`None`) or a `[databases]` key.
pub type DatabaseKey = Option<DatabaseName>;

/// How messages name a database.
pub fn label(key: Option<&DatabaseName>) -> String {
    moat_core::manifest::database_label(key)
}

/// The admin URLs of a project's databases.
#[derive(Clone, PartialEq, Eq)]
pub struct Databases {
    /// The main database.
    pub main: DatabaseUrl,
    /// The manifest's `[databases]`, by key.
    pub named: BTreeMap<DatabaseName, DatabaseUrl>,
}

impl fmt::Debug for Databases {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // DatabaseUrl's Debug hides passwords.
        f.debug_struct("Databases").field("main", &self.main).field("named", &self.named).finish()
    }
}

impl Databases {
    /// Only the main database (a manifest without `[databases]`).
    pub fn single(main: DatabaseUrl) -> Self {
        Self { main, named: BTreeMap::new() }
    }

    /// The admin URL of a database.
    pub fn url(&self, key: Option<&DatabaseName>) -> Result<&DatabaseUrl, AdminError> {
        match key {
            None => Ok(&self.main),
            Some(name) => self.named.get(name).ok_or_else(|| AdminError::Refused {
                message: format!("no admin URL for database `{name}`"),
                help: format!("declare `[databases.{name}]` with its `url_env` in moat.toml"),
            }),
        }
    }

    /// Every database, the main one first.
    pub fn keys(&self) -> Vec<DatabaseKey> {
        std::iter::once(None).chain(self.named.keys().cloned().map(Some)).collect()
    }

    /// The named databases' URLs from the environment variables the manifest names.
    pub fn from_env(manifest: &Manifest, main: DatabaseUrl) -> Result<Self, AdminError> {
        Self::resolve(manifest, main, &BTreeMap::new())
    }

    /// The named databases' URLs: those `given` (by key), the others from the environment
    /// variables the manifest names.
    pub fn resolve(
        manifest: &Manifest,
        main: DatabaseUrl,
        given: &BTreeMap<String, DatabaseUrl>,
    ) -> Result<Self, AdminError> {
        let mut named = BTreeMap::new();
        for database in &manifest.databases {
            if let Some(url) = given.get(database.name.as_str()) {
                named.insert(database.name.clone(), url.clone());
                continue;
            }
            let raw =
                std::env::var(&database.url_env).ok().filter(|v| !v.is_empty()).ok_or_else(|| AdminError::Refused {
                    message: format!(
                        "database `{}`: the environment variable `{}` is not set",
                        database.name, database.url_env
                    ),
                    help: format!(
                        "set `{}` to the admin URL of that database (postgres://USER@HOST/DB); without any admin URL \
                         (no --database-url, MOAT_DATABASE_URL or DATABASE_URL) the embedded default serves every \
                         database of the manifest",
                        database.url_env
                    ),
                })?;
            let url = DatabaseUrl::parse(&raw).map_err(|e| AdminError::Refused {
                message: format!("database `{}`: `{}` does not hold a valid URL: {e}", database.name, database.url_env),
                help: "write a postgres:// URL".into(),
            })?;
            named.insert(database.name.clone(), url);
        }
        let all = Self { main, named };
        all.refuse_duplicates()?;
        Ok(all)
    }

    /// Two keys for one database would put two databases' state in one.
    fn refuse_duplicates(&self) -> Result<(), AdminError> {
        let mut seen: Vec<(String, Option<&DatabaseName>)> = vec![(same_place(&self.main), None)];
        for (name, url) in &self.named {
            let place = same_place(url);
            if let Some((_, other)) = seen.iter().find(|(p, _)| *p == place) {
                return Err(AdminError::Refused {
                    message: format!("database `{name}` is the same database as {}", label(*other)),
                    help: "give each `[databases]` entry a database of its own".into(),
                });
            }
            seen.push((place, Some(name)));
        }
        Ok(())
    }
}

/// Host, port and database of a URL, for telling whether two URLs name one database.
fn same_place(url: &DatabaseUrl) -> String {
    let parsed = url::Url::parse(url.expose()).ok();
    let host = parsed.as_ref().and_then(|u| u.host_str().map(str::to_owned)).unwrap_or_default();
    let port = parsed.as_ref().and_then(url::Url::port).unwrap_or(5432);
    format!("{host}:{port}/{}", url.database())
}

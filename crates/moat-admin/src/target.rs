//! Where the admin connection goes, and how module roles log in next to it.
//!
//! The admin URL comes from `--database-url`, `MOAT_DATABASE_URL` or `DATABASE_URL`, in that
//! order; without one, the embedded cluster is used. Passwords never reach logs or messages:
//! [`DatabaseUrl`] displays itself with the password replaced by `***`.

use std::fmt;
use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;

use crate::error::AdminError;

/// A PostgreSQL URL that never shows its password.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl {
    url: url::Url,
}

impl DatabaseUrl {
    /// Parses a `postgres://` or `postgresql://` URL.
    pub fn parse(raw: &str) -> Result<Self, AdminError> {
        let url = url::Url::parse(raw).map_err(|e| AdminError::InvalidUrl { message: e.to_string() })?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(AdminError::InvalidUrl {
                message: format!("the scheme must be `postgres` or `postgresql`, not `{}`", url.scheme()),
            });
        }
        Ok(Self { url })
    }

    /// The database name in the URL's path (`postgres` when absent, as libpq would use the user).
    pub fn database(&self) -> String {
        let path = self.url.path().trim_start_matches('/');
        if path.is_empty() { self.user() } else { decode(path) }
    }

    /// The user name (`postgres` when absent).
    pub fn user(&self) -> String {
        if self.url.username().is_empty() { "postgres".to_owned() } else { decode(self.url.username()) }
    }

    /// The same server and options, another database.
    pub fn with_database(&self, database: &str) -> Self {
        let mut url = self.url.clone();
        url.set_path(&format!("/{database}"));
        Self { url }
    }

    /// The same server, database and options, logging in as `role` with `password`.
    pub fn with_login(&self, role: &str, password: Option<&str>) -> Self {
        let mut url = self.url.clone();
        // Setting the user name and password of a `postgres://` URL cannot fail: it has a host.
        let _ = url.set_username(role);
        let _ = url.set_password(password);
        Self { url }
    }

    /// Connection options for sqlx.
    pub fn connect_options(&self) -> Result<PgConnectOptions, AdminError> {
        PgConnectOptions::from_str(self.url.as_str())
            .map(|o| o.application_name("moat"))
            .map_err(|e| AdminError::InvalidUrl { message: e.to_string() })
    }

    /// The URL with its password, for handing to a child process or an application; never log it.
    pub fn expose(&self) -> &str {
        self.url.as_str()
    }
}

fn decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes()).next().map(|(_, v)| v.into_owned()).unwrap_or_default()
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut url = self.url.clone();
        if url.password().is_some() {
            let _ = url.set_password(Some("***"));
        }
        f.write_str(url.as_str())
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({self})")
    }
}

/// The environment variable that holds a role's password: `MOAT_PASSWORD_<ROLE>` in upper case,
/// such as `MOAT_PASSWORD_CLINIC_PATIENTS`.
pub fn password_variable(role: &str) -> String {
    format!("MOAT_PASSWORD_{}", role.to_ascii_uppercase())
}

/// The password of a role from the environment, if one is set.
pub fn password_from_env(role: &str) -> Option<String> {
    std::env::var(password_variable(role)).ok().filter(|p| !p.is_empty())
}

/// Where the admin URL was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlSource {
    /// `--database-url`.
    Flag,
    /// `MOAT_DATABASE_URL`.
    MoatDatabaseUrl,
    /// `DATABASE_URL`.
    DatabaseUrl,
}

/// The admin URL from the flag or the environment, in the documented order; `None` means the
/// embedded default.
pub fn admin_url_from(flag: Option<&str>) -> Result<Option<(DatabaseUrl, UrlSource)>, AdminError> {
    let candidates = [
        (flag.map(str::to_owned), UrlSource::Flag),
        (std::env::var("MOAT_DATABASE_URL").ok(), UrlSource::MoatDatabaseUrl),
        (std::env::var("DATABASE_URL").ok(), UrlSource::DatabaseUrl),
    ];
    for (value, source) in candidates {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            return DatabaseUrl::parse(&value).map(|url| Some((url, source)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_never_displayed() {
        let url = DatabaseUrl::parse("postgres://admin:s3cret@db.example:5433/clinic?sslmode=require").unwrap();
        assert_eq!(url.to_string(), "postgres://admin:***@db.example:5433/clinic?sslmode=require");
        assert!(!format!("{url:?}").contains("s3cret"));
        assert_eq!(url.database(), "clinic");
        let module = url.with_login("clinic_patients", None);
        assert_eq!(module.to_string(), "postgres://clinic_patients@db.example:5433/clinic?sslmode=require");
    }

    #[test]
    fn other_schemes_are_refused() {
        assert!(DatabaseUrl::parse("mysql://x@y/z").is_err());
    }
}

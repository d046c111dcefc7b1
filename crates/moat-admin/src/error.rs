//! Errors of the administration layer. Messages start lowercase, name the object in backticks,
//! and never contain a password.

use std::path::PathBuf;

/// Everything that can go wrong while administering a database.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// A database URL could not be parsed.
    #[error("invalid database URL: {message}")]
    InvalidUrl {
        /// What is wrong with it.
        message: String,
    },

    /// The server could not be reached or refused the login.
    #[error("cannot connect to `{target}`: {source}\n  help: {help}")]
    Connect {
        /// The URL, password redacted.
        target: String,
        /// What to try.
        help: String,
        /// The driver error.
        #[source]
        source: sqlx::Error,
    },

    /// A lock moat waited for was still held after `lock_timeout`.
    #[error("gave up waiting for a lock while {doing}: it is held by {}\n  help: end that session (`SELECT pg_terminate_backend(<pid>)` as the admin) or wait for it to finish, then run moat again", crate::locks::describe_holders(.holders))]
    LockTimeout {
        /// What moat was doing.
        doing: String,
        /// Who holds the lock.
        holders: Vec<crate::locks::LockHolder>,
    },

    /// A statement failed.
    #[error("{context}: {}", describe_sqlx(.source))]
    Database {
        /// What moat was doing.
        context: String,
        /// The driver error.
        #[source]
        source: sqlx::Error,
    },

    /// A file or directory could not be read or written.
    #[error("cannot {action} `{}`: {source}", .path.display())]
    Io {
        /// "read", "create", ...
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },

    /// The embedded cluster could not be used.
    #[error("{message}\n  help: {help}")]
    Embedded {
        /// What failed.
        message: String,
        /// What to do about it.
        help: String,
    },

    /// A module name given on the command line is not in the manifest.
    #[error("unknown module `{name}`\n  help: modules in the manifest: {known}")]
    UnknownModule {
        /// The name given.
        name: String,
        /// The modules that exist.
        known: String,
    },

    /// A module's migrations cannot run; the message says which file and why.
    #[error("{0}")]
    Migration(Box<crate::migrate::MigrationError>),

    /// A contract could not be installed.
    #[error("contract `{contract}` ({file}): {message}\n  help: {help}")]
    Contract {
        /// The contract.
        contract: String,
        /// Its SQL file, relative to the manifest.
        file: String,
        /// What failed.
        message: String,
        /// What to do.
        help: String,
    },

    /// Provisioning was refused before anything ran.
    #[error("{message}\n  help: {help}")]
    Refused {
        /// Why.
        message: String,
        /// What to do.
        help: String,
    },
}

impl From<crate::migrate::MigrationError> for AdminError {
    fn from(e: crate::migrate::MigrationError) -> Self {
        AdminError::Migration(Box::new(e))
    }
}

/// Wraps a driver error with what moat was doing.
pub(crate) fn db(context: impl Into<String>) -> impl FnOnce(sqlx::Error) -> AdminError {
    let context = context.into();
    move |source| AdminError::Database { context, source }
}

/// One line for a driver error: SQLSTATE and message for server errors, the error otherwise.
pub fn describe_sqlx(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(e) => match e.code() {
            Some(code) => format!("{} (SQLSTATE {code})", e.message()),
            None => e.message().to_owned(),
        },
        other => other.to_string(),
    }
}

/// The SQLSTATE of a server error.
pub fn sqlstate(error: &sqlx::Error) -> Option<String> {
    match error {
        sqlx::Error::Database(e) => e.code().map(|c| c.into_owned()),
        _ => None,
    }
}

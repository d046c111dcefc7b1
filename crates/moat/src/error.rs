//! The runtime library's errors.

/// Errors of the runtime library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The manifest could not be loaded.
    #[error(transparent)]
    Manifest(#[from] moat_core::manifest::LoadError),
    /// Provisioning, migrating or connecting as the admin failed.
    #[error(transparent)]
    Admin(#[from] moat_admin::AdminError),
    /// A module's or consumer's role could not log in.
    #[error("role `{role}` cannot log in to `{target}`: {source}\n  help: set MOAT_PASSWORD_{} or allow the role in pg_hba.conf", .role.to_ascii_uppercase())]
    Login {
        /// The role.
        role: String,
        /// The URL, password hidden.
        target: String,
        /// The driver error.
        #[source]
        source: sqlx::Error,
    },
    /// A module name that is not in the manifest.
    #[error("unknown module `{name}`\n  help: modules in the manifest: {known}")]
    UnknownModule {
        /// The name asked for.
        name: String,
        /// The modules that exist.
        known: String,
    },
    /// A consumer name that is not in the manifest.
    #[error("unknown consumer `{name}`\n  help: consumers in the manifest: {known}")]
    UnknownConsumer {
        /// The name asked for.
        name: String,
        /// The consumers that exist.
        known: String,
    },
    /// The start-up audit found errors: the boundary does not hold, so the application must not serve.
    #[error("the audit found {} error{}; refusing to start:\n{}\n  help: run `moat audit` for the access matrix; `moat provision` restores moat's own grants", .findings.len(), if .findings.len() == 1 { "" } else { "s" }, .findings.iter().map(|f| format!("  - [{}] {}", f.rule, f.message)).collect::<Vec<_>>().join("\n"))]
    AuditFailed {
        /// The error findings.
        findings: Vec<moat_core::findings::Finding>,
    },
    /// A database error in the application's own use of a pool.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

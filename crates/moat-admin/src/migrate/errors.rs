//! Why migrations cannot run or stopped, and how a server error becomes a located one.

use std::fmt;

use moat_core::manifest::Module;
use moat_core::text::{LineIndex, char_position_to_byte};

use super::MigrationFile;
use crate::internal::MIGRATIONS;

/// Why a module's migrations cannot run (or stopped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrationError {
    /// A `.sql` file whose name is not `NNNN_description.sql`.
    BadFileName {
        /// The file.
        file: String,
    },
    /// Two files with one number.
    DuplicateVersion {
        /// The number.
        version: u64,
        /// One file.
        first: String,
        /// The other.
        second: String,
    },
    /// A migration failed; nothing of it remains (unless it ran without a transaction).
    Failed {
        /// Module.
        module: String,
        /// The file.
        file: String,
        /// 1-based line of the error, when PostgreSQL gave a position.
        line: Option<u32>,
        /// 1-based column.
        column: Option<u32>,
        /// SQLSTATE.
        sqlstate: Option<String>,
        /// PostgreSQL's message.
        message: String,
        /// PostgreSQL's detail and hint, and moat's advice.
        help: Option<String>,
    },
    /// Applied migrations whose files changed.
    Modified {
        /// Module.
        module: String,
        /// Files.
        files: Vec<String>,
    },
    /// Applied migrations whose files are gone.
    Missing {
        /// Module.
        module: String,
        /// `NNNN_name` of each.
        migrations: Vec<String>,
    },
    /// A pending migration numbered below an applied one.
    OutOfOrder {
        /// Module.
        module: String,
        /// The pending file.
        file: String,
        /// The highest applied version.
        applied: u64,
    },
    /// The module's schema or history table does not exist.
    NotProvisioned {
        /// Module.
        module: String,
        /// Its schema.
        schema: String,
    },
    /// A module was not migrated because a module it depends on failed.
    Skipped {
        /// Module.
        module: String,
        /// The failed dependency.
        because: String,
    },
    /// Several modules failed.
    Several(Vec<MigrationError>),
}

impl fmt::Display for MigrationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MigrationError::BadFileName { file } => write!(
                f,
                "migration file `{file}` is not named `NNNN_description.sql`\n  help: rename it, such as `0001_create_patients.sql`"
            ),
            MigrationError::DuplicateVersion { version, first, second } => write!(
                f,
                "migrations `{first}` and `{second}` share the number {version}\n  help: renumber one of them (`moat new` picks the next number)"
            ),
            MigrationError::Failed { module, file, line, column, sqlstate, message, help } => {
                write!(f, "migration of module `{module}` failed: {file}")?;
                if let (Some(line), Some(column)) = (line, column) {
                    write!(f, ":{line}:{column}")?;
                }
                write!(f, ": {message}")?;
                if let Some(code) = sqlstate {
                    write!(f, " (SQLSTATE {code})")?;
                }
                if let Some(help) = help {
                    write!(f, "\n  help: {help}")?;
                }
                Ok(())
            }
            MigrationError::Modified { module, files } => write!(
                f,
                "module `{module}`: applied migration{} changed on disk: {}\n  help: an applied migration must not be edited; restore it (`git checkout -- <file>`) and put the change in a new migration (`moat new {module} <name>`)",
                if files.len() == 1 { "" } else { "s" },
                files.iter().map(|f| format!("`{f}`")).collect::<Vec<_>>().join(", ")
            ),
            MigrationError::Missing { module, migrations } => write!(
                f,
                "module `{module}`: applied migration{} no longer on disk: {}\n  help: restore the file{}; the database has already run {}",
                if migrations.len() == 1 { " is" } else { "s are" },
                migrations.iter().map(|m| format!("`{m}`")).collect::<Vec<_>>().join(", "),
                if migrations.len() == 1 { "" } else { "s" },
                if migrations.len() == 1 { "it" } else { "them" },
            ),
            MigrationError::OutOfOrder { module, file, applied } => write!(
                f,
                "module `{module}`: pending migration `{file}` is numbered below the applied version {applied}\n  help: renumber it after {applied}"
            ),
            MigrationError::NotProvisioned { module, schema } => write!(
                f,
                "module `{module}` is not provisioned: schema `{schema}` or its `{MIGRATIONS}` table does not exist\n  help: run `moat provision` (or `moat up`) first"
            ),
            MigrationError::Skipped { module, because } => {
                write!(f, "module `{module}` was not migrated because module `{because}`, which it depends on, failed")
            }
            MigrationError::Several(errors) => {
                for (i, e) in errors.iter().enumerate() {
                    if i > 0 {
                        writeln!(f)?;
                    }
                    write!(f, "{e}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for MigrationError {}

/// Turns a server error into a located migration failure. `statement` is the text that was sent
/// and `offset` its byte offset in the file.
pub(crate) fn failure(
    module: &Module,
    file: &MigrationFile,
    statement: &str,
    offset: usize,
    error: &sqlx::Error,
) -> MigrationError {
    let (mut line, mut column, mut sqlstate, mut message, mut help_parts) =
        (None, None, None, error.to_string(), Vec::new());
    if let sqlx::Error::Database(db_error) = error {
        message = db_error.message().to_owned();
        sqlstate = db_error.code().map(|c| c.into_owned());
        if let Some(pg) = db_error.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
            if let Some(sqlx::postgres::PgErrorPosition::Original(position)) = pg.position() {
                let byte = offset + char_position_to_byte(statement, position);
                let at = LineIndex::new(&file.text).line_col(byte);
                line = Some(at.line);
                column = Some(at.column);
            }
            if let Some(detail) = pg.detail() {
                help_parts.push(format!("detail: {detail}"));
            }
            if let Some(hint) = pg.hint() {
                help_parts.push(format!("hint: {hint}"));
            }
            if let Some(context) = pg.r#where() {
                help_parts.push(format!("context: {}", context.replace('\n', "; ")));
            }
        }
    }
    if sqlstate.as_deref() == Some("42501") {
        help_parts.push(format!(
            "migrations of `{}` run as its owner role, which may only touch schema `{}`; another module's tables are out of reach: \
             store its ids as plain values (no foreign key) and validate them through that module's API",
            module.name, module.schema
        ));
    }
    if line.is_none() && !statement.is_empty() {
        // PostgreSQL gives no position for some errors (privileges, run-time errors): point at the
        // object the message names when the statement mentions it, else at the statement.
        let within = named_object(&message).and_then(|name| find_word(statement, &name)).unwrap_or(0);
        let at = LineIndex::new(&file.text).line_col(offset + within);
        line = Some(at.line);
        column = Some(at.column);
    }
    MigrationError::Failed {
        module: module.name.to_string(),
        file: file.file.clone(),
        line,
        column,
        sqlstate,
        message,
        help: (!help_parts.is_empty()).then(|| help_parts.join("\n  ")),
    }
}

/// The object a position-less error message names: `permission denied for schema patients`,
/// `relation "x" does not exist`.
fn named_object(message: &str) -> Option<String> {
    for marker in ["for schema ", "for table ", "for sequence ", "for view ", "for function "] {
        if let Some(rest) = message.split(marker).nth(1) {
            return rest.split_whitespace().next().map(|w| w.trim_matches('"').to_owned());
        }
    }
    let quoted = message.split('"').nth(1)?;
    Some(quoted.to_owned())
}

/// The byte offset of the first whole-word, case-insensitive occurrence of `word` in `text`.
fn find_word(text: &str, word: &str) -> Option<usize> {
    if word.is_empty() {
        return None;
    }
    let lower = text.to_ascii_lowercase();
    let word = word.to_ascii_lowercase();
    let is_word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut from = 0;
    while let Some(found) = lower[from..].find(&word) {
        let start = from + found;
        let end = start + word.len();
        let before_ok = start == 0 || !is_word(lower.as_bytes()[start - 1]);
        let after_ok = end == lower.len() || !is_word(lower.as_bytes()[end]);
        if before_ok && after_ok {
            return Some(start);
        }
        from = start + 1;
    }
    None
}

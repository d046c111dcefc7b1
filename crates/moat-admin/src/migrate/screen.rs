//! What the runner refuses before running a migration, from each statement's leading keywords
//! (no SQL parser here: `moat check` has one and sees more, such as `set_config('role', ...)`).
//!
//! Refused: transaction control (`BEGIN`, `START TRANSACTION`, `COMMIT`, `END`, `ROLLBACK` other
//! than `ROLLBACK TO SAVEPOINT`, `ABORT`, `PREPARE TRANSACTION`, `COMMIT PREPARED`, `ROLLBACK
//! PREPARED`), role changes (`SET [SESSION|LOCAL] ROLE`, `RESET ROLE`, `SET SESSION
//! AUTHORIZATION`, `RESET SESSION AUTHORIZATION`, `RESET ALL`, `DISCARD ALL`) and `search_path`
//! changes (`SET [SESSION|LOCAL] search_path`, `RESET search_path`). `SAVEPOINT`, `RELEASE` and
//! `ROLLBACK TO` stay inside the migration's transaction and are allowed.
//!
//! This is a courtesy, not the boundary: what the keywords cannot show (a `DO` block, a function,
//! `set_config`) is stopped by the database, since the session only has the owner's rights.

use moat_core::manifest::Module;
use moat_core::text::LineIndex;

use super::{MigrationError, MigrationFile, NO_TRANSACTION};

/// Refuses the first statement of `file` that changes its transaction, role or `search_path`.
#[allow(clippy::result_large_err)] // the runner returns this error as it is, with every field it names.
pub fn screen(module: &Module, owner: &str, file: &MigrationFile) -> Result<(), MigrationError> {
    for span in moat_core::sqltext::split_statements(&file.text) {
        let statement = &file.text[span.start..span.end];
        let Some((what, why)) = refused(statement) else { continue };
        let at = LineIndex::new(&file.text).line_col(span.start);
        let help = match why {
            Why::Transaction => format!(
                "moat runs each migration in one transaction that it opens and commits itself; remove `{what}` \
                 (split the file into two migrations instead), or, for statements that cannot run in a transaction \
                 (such as `CREATE INDEX CONCURRENTLY`), start the file with `{NO_TRANSACTION}`"
            ),
            Why::Role => format!(
                "migrations of `{}` run as `{owner}`, and a role change inside one can only lose rights; remove `{what}`",
                module.name
            ),
            Why::SearchPath => format!(
                "migrations of `{}` run with `search_path` set to schema `{}`; remove `{what}` and qualify names instead",
                module.name, module.schema
            ),
        };
        return Err(MigrationError::Failed {
            module: module.name.to_string(),
            file: file.file.clone(),
            line: Some(at.line),
            column: Some(at.column),
            sqlstate: None,
            message: format!("`{what}` is not allowed in a migration"),
            help: Some(help),
        });
    }
    Ok(())
}

/// What a refused statement does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Ends or opens a transaction.
    Transaction,
    /// Changes the role or the session user.
    Role,
    /// Changes `search_path`.
    SearchPath,
}

/// The refused keywords a statement starts with (upper case), and why; `None` when it is fine.
pub fn refused(statement: &str) -> Option<(String, Why)> {
    let words = leading_words(statement, 4);
    let word = |i: usize| words.get(i).map(String::as_str).unwrap_or("");
    let shown = |n: usize| words.iter().take(n).cloned().collect::<Vec<_>>().join(" ");
    match word(0) {
        "BEGIN" | "COMMIT" | "END" | "ABORT" => Some((shown(1), Why::Transaction)),
        "START" if word(1) == "TRANSACTION" => Some((shown(2), Why::Transaction)),
        "ROLLBACK" if word(1) == "TO" => None,
        "ROLLBACK" if word(1) == "PREPARED" => Some((shown(2), Why::Transaction)),
        "ROLLBACK" => Some((shown(1), Why::Transaction)),
        "PREPARE" if word(1) == "TRANSACTION" => Some((shown(2), Why::Transaction)),
        "SET" => {
            if word(1) == "SESSION" && word(2) == "AUTHORIZATION" {
                return Some((shown(3), Why::Role));
            }
            let at = if matches!(word(1), "SESSION" | "LOCAL") { 2 } else { 1 };
            match word(at) {
                "ROLE" => Some((shown(at + 1), Why::Role)),
                "SEARCH_PATH" => Some((shown(at + 1), Why::SearchPath)),
                _ => None,
            }
        }
        "RESET" => match word(1) {
            "ROLE" | "ALL" => Some((shown(2), Why::Role)),
            "SESSION" if word(2) == "AUTHORIZATION" => Some((shown(3), Why::Role)),
            "SEARCH_PATH" => Some((shown(2), Why::SearchPath)),
            _ => None,
        },
        "DISCARD" if word(1) == "ALL" => Some((shown(2), Why::Role)),
        _ => None,
    }
}

/// The first `n` words of a statement, upper-cased, skipping blanks and comments between them.
/// A quoted identifier (`"search_path"`) counts as its unquoted, upper-cased text.
fn leading_words(statement: &str, n: usize) -> Vec<String> {
    let bytes = statement.as_bytes();
    let mut words = Vec::new();
    let mut i = 0;
    while i < bytes.len() && words.len() < n {
        match bytes[i] {
            b if b.is_ascii_whitespace() => i += 1,
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i = moat_core::sqltext::skip_block_comment(bytes, i);
            }
            b'"' => {
                let start = i + 1;
                let mut end = start;
                while end < bytes.len() && bytes[end] != b'"' {
                    end += 1;
                }
                words.push(statement[start..end].to_ascii_uppercase());
                i = end + 1;
            }
            b if b.is_ascii_alphabetic() || b == b'_' => {
                let start = i;
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b'$') {
                    i += 1;
                }
                words.push(statement[start..i].to_ascii_uppercase());
            }
            _ => break,
        }
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    fn what(sql: &str) -> Option<String> {
        refused(sql).map(|(w, _)| w)
    }

    #[test]
    fn transaction_control_is_refused() {
        assert_eq!(what("COMMIT"), Some("COMMIT".into()));
        assert_eq!(what("commit work"), Some("COMMIT".into()));
        assert_eq!(what("begin"), Some("BEGIN".into()));
        assert_eq!(what("START TRANSACTION ISOLATION LEVEL SERIALIZABLE"), Some("START TRANSACTION".into()));
        assert_eq!(what("end"), Some("END".into()));
        assert_eq!(what("ROLLBACK"), Some("ROLLBACK".into()));
        assert_eq!(what("PREPARE TRANSACTION 'x'"), Some("PREPARE TRANSACTION".into()));
        assert_eq!(what("ROLLBACK TO SAVEPOINT a"), None);
        assert_eq!(what("SAVEPOINT a"), None);
        assert_eq!(what("PREPARE q AS SELECT 1"), None);
    }

    #[test]
    fn role_and_search_path_changes_are_refused() {
        assert_eq!(what("RESET ROLE"), Some("RESET ROLE".into()));
        assert_eq!(what("reset /* hide */ role"), Some("RESET ROLE".into()));
        assert_eq!(what("SET ROLE NONE"), Some("SET ROLE".into()));
        assert_eq!(what("SET LOCAL ROLE x"), Some("SET LOCAL ROLE".into()));
        assert_eq!(what("set session role x"), Some("SET SESSION ROLE".into()));
        assert_eq!(what("SET SESSION AUTHORIZATION DEFAULT"), Some("SET SESSION AUTHORIZATION".into()));
        assert_eq!(what("RESET SESSION AUTHORIZATION"), Some("RESET SESSION AUTHORIZATION".into()));
        assert_eq!(what("SET search_path = public"), Some("SET SEARCH_PATH".into()));
        assert_eq!(what("SET \"search_path\" TO public"), Some("SET SEARCH_PATH".into()));
        assert_eq!(what("SET LOCAL search_path TO public"), Some("SET LOCAL SEARCH_PATH".into()));
        assert_eq!(what("RESET search_path"), Some("RESET SEARCH_PATH".into()));
        assert_eq!(what("RESET ALL"), Some("RESET ALL".into()));
        assert_eq!(what("DISCARD ALL"), Some("DISCARD ALL".into()));
        assert_eq!(what("SET statement_timeout = 0"), None);
        assert_eq!(what("CREATE TABLE roles (role text)"), None);
        assert_eq!(what("SELECT set_config('role', 'none', true)"), None);
    }
}

//! Migration files on disk: names, checksums, and how they compare with a history.

use std::collections::BTreeMap;

use moat_core::manifest::{Manifest, Module};

use super::{AppliedMigration, MigrationError, MigrationFile, MigrationState, NO_TRANSACTION, StatusEntry};
use crate::error::AdminError;

/// Reads the migration files of a module, sorted by number.
pub fn discover(manifest: &Manifest, module: &Module) -> Result<Vec<MigrationFile>, AdminError> {
    let dir = &module.migrations;
    let entries =
        std::fs::read_dir(dir).map_err(|source| AdminError::Io { action: "read", path: dir.clone(), source })?;
    let mut files: Vec<MigrationFile> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| AdminError::Io { action: "read", path: dir.clone(), source })?;
        let path = entry.path();
        let file_name = entry.file_name().to_string_lossy().into_owned();
        if !file_name.ends_with(".sql") || !path.is_file() {
            continue;
        }
        let relative = manifest.relative(&path);
        let Some((version, name)) = parse_file_name(&file_name) else {
            return Err(MigrationError::BadFileName { file: relative }.into());
        };
        let text = std::fs::read_to_string(&path).map_err(|source| AdminError::Io {
            action: "read",
            path: path.clone(),
            source,
        })?;
        let no_transaction = text.lines().next().is_some_and(|l| l.trim_end() == NO_TRANSACTION);
        files.push(MigrationFile {
            version,
            name,
            file: relative,
            checksum: moat_core::checksum(&text),
            text,
            path,
            no_transaction,
        });
    }
    files.sort_by(|a, b| (a.version, &a.file).cmp(&(b.version, &b.file)));
    for pair in files.windows(2) {
        if pair[0].version == pair[1].version {
            return Err(MigrationError::DuplicateVersion {
                version: pair[0].version,
                first: pair[0].file.clone(),
                second: pair[1].file.clone(),
            }
            .into());
        }
    }
    Ok(files)
}

/// `0001_create_patients.sql` → `(1, "create_patients")`.
pub fn parse_file_name(file_name: &str) -> Option<(u64, String)> {
    let stem = file_name.strip_suffix(".sql")?;
    let (number, name) = stem.split_once('_')?;
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) || name.is_empty() {
        return None;
    }
    Some((number.parse().ok()?, name.to_owned()))
}

/// Compares files with a history.
pub fn compare(files: &[MigrationFile], history: &[AppliedMigration]) -> Vec<StatusEntry> {
    let mut entries: BTreeMap<u64, StatusEntry> = BTreeMap::new();
    for file in files {
        entries.insert(
            file.version,
            StatusEntry {
                version: file.version,
                name: file.name.clone(),
                state: MigrationState::Pending,
                file: Some(file.file.clone()),
                applied_at: None,
            },
        );
    }
    for applied in history {
        let file = files.iter().find(|f| f.version == applied.version);
        let state = match (file, applied.success) {
            (None, _) => MigrationState::Missing,
            (Some(_), false) => MigrationState::Failed,
            (Some(f), true) if f.checksum != applied.checksum => MigrationState::Modified,
            (Some(_), true) => MigrationState::Applied,
        };
        entries.insert(
            applied.version,
            StatusEntry {
                version: applied.version,
                name: file.map_or_else(|| applied.name.clone(), |f| f.name.clone()),
                state,
                file: file.map(|f| f.file.clone()),
                applied_at: Some(applied.applied_at),
            },
        );
    }
    entries.into_values().collect()
}

/// The files still to apply, after refusing modified, missing and out-of-order migrations.
pub(crate) fn pending<'f>(
    module: &Module,
    files: &'f [MigrationFile],
    history: &[AppliedMigration],
) -> Result<Vec<&'f MigrationFile>, AdminError> {
    let entries = compare(files, history);
    let modified: Vec<String> =
        entries.iter().filter(|e| e.state == MigrationState::Modified).filter_map(|e| e.file.clone()).collect();
    if !modified.is_empty() {
        return Err(MigrationError::Modified { module: module.name.to_string(), files: modified }.into());
    }
    let missing: Vec<String> = entries
        .iter()
        .filter(|e| e.state == MigrationState::Missing)
        .map(|e| format!("{:04}_{}", e.version, e.name))
        .collect();
    if !missing.is_empty() {
        return Err(MigrationError::Missing { module: module.name.to_string(), migrations: missing }.into());
    }
    let highest_applied = history.iter().filter(|h| h.success).map(|h| h.version).max();
    let pending: Vec<&MigrationFile> = files
        .iter()
        .filter(|f| {
            entries
                .iter()
                .any(|e| e.version == f.version && matches!(e.state, MigrationState::Pending | MigrationState::Failed))
        })
        .collect();
    if let (Some(applied), Some(first)) = (highest_applied, pending.first())
        && first.version < applied
    {
        return Err(
            MigrationError::OutOfOrder { module: module.name.to_string(), file: first.file.clone(), applied }.into()
        );
    }
    Ok(pending)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names() {
        assert_eq!(parse_file_name("0001_create_patients.sql"), Some((1, "create_patients".into())));
        assert_eq!(parse_file_name("12_x.sql"), Some((12, "x".into())));
        assert_eq!(parse_file_name("create.sql"), None);
        assert_eq!(parse_file_name("0001.sql"), None);
        assert_eq!(parse_file_name("0001_.sql"), None);
        assert_eq!(parse_file_name("v1_x.sql"), None);
    }
}

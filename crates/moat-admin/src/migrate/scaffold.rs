//! `moat new`: the next migration file of a module.

use std::path::{Path, PathBuf};

use moat_core::manifest::Manifest;

use super::discover;
use crate::error::AdminError;

/// `moat new MODULE NAME`: creates the next migration file of a module and returns its path.
pub fn new_migration(manifest: &Manifest, module: &str, name: &str) -> Result<PathBuf, AdminError> {
    let module = manifest.module(module).ok_or_else(|| AdminError::UnknownModule {
        name: module.to_owned(),
        known: manifest.modules.iter().map(|m| format!("`{}`", m.name)).collect::<Vec<_>>().join(", "),
    })?;
    let files = discover(manifest, module)?;
    let next = files.last().map_or(1, |f| f.version + 1);
    let slug: String = name
        .trim()
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect::<String>()
        .split('_')
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("_");
    if slug.is_empty() {
        return Err(AdminError::Refused {
            message: format!("`{name}` does not make a migration name"),
            help: "use letters and digits, such as `add_ward_to_patients`".into(),
        });
    }
    let path = module.migrations.join(format!("{next:04}_{slug}.sql"));
    let header = format!(
        "-- {slug}: a migration of module `{}` (runs as `{}` in schema `{}`)\n\n",
        module.name,
        manifest.roles().module_owner(&module.name),
        module.schema
    );
    write_new(&path, &header)?;
    Ok(path)
}

fn write_new(path: &Path, text: &str) -> Result<(), AdminError> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|source| AdminError::Io { action: "create", path: path.to_owned(), source })?;
    file.write_all(text.as_bytes()).map_err(|source| AdminError::Io { action: "write", path: path.to_owned(), source })
}

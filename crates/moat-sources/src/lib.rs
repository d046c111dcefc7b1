//! Reads the files `moat check` analyzes, for `moat check` and for the analysis's own fixture
//! tests alike: every module's migrations (`*.sql` in its folder, and diesel's `<folder>/up.sql`
//! and `down.sql`), the Rust files under each module's `sources`, every contract's file, and
//! the files that their psql includes (`\i`, `\ir`) name, as
//! [`SourceKind::Included`] sources ([`moat_analysis::included_files`] says which).
//!
//! `moat_analysis` does no I/O: this is where its input is read. An included file is read only
//! when it is a regular file inside the project's folder once symbolic links are resolved; an
//! include of anything else (a missing file, a folder, a path that leaves the project) is not
//! read here, and the analysis reports it as `psql-include`.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};

use moat_analysis::{Source, SourceKind, included_files};
use moat_core::manifest::{Manifest, Module};

/// A file read for the analysis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    /// Its path relative to the manifest's folder, with `/` separators.
    pub name: String,
    /// Its text.
    pub text: String,
    /// What it is, and whose.
    pub kind: SourceKind,
}

impl SourceFile {
    /// The analysis's view of the file.
    pub fn source(&self) -> Source<'_> {
        Source { file: self.name.clone(), text: &self.text, kind: self.kind.clone() }
    }
}

/// Why the files could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A folder could not be listed.
    #[error("cannot read folder `{}`", path.display())]
    Folder {
        /// The folder.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A file could not be read.
    #[error("cannot read `{name}`")]
    File {
        /// The file, relative to the manifest's folder.
        name: String,
        /// The cause.
        source: io::Error,
    },
    /// A file is not UTF-8.
    #[error("`{name}` is not UTF-8 text (invalid byte at offset {offset})\n  help: save the file as UTF-8")]
    NotUtf8 {
        /// The file, relative to the manifest's folder.
        name: String,
        /// The first invalid byte.
        offset: usize,
    },
}

/// Every file `moat check` reads, in a stable order: each module's migrations then its Rust
/// sources, then the contracts' files, then the files their includes pull in.
pub fn read(manifest: &Manifest) -> Result<Vec<SourceFile>, Error> {
    let mut files = Vec::new();
    for module in &manifest.modules {
        push_migrations(manifest, module, &mut files)?;
        for source in &module.sources {
            let kind = SourceKind::RustSource { module: module.name.to_string() };
            let paths = if source.is_dir() { list(source, "rs", true)? } else { vec![source.clone()] };
            for path in paths {
                files.push(read_file(manifest, &path, kind.clone())?);
            }
        }
    }
    for contract in &manifest.contracts {
        files.push(read_file(manifest, &contract.sql, SourceKind::Contract { contract: contract.name.to_string() })?);
    }
    add_included(manifest, &mut files)?;
    Ok(files)
}

/// Every module's migrations, and the files their includes pull in.
pub fn read_migrations(manifest: &Manifest) -> Result<Vec<SourceFile>, Error> {
    let mut files = Vec::new();
    for module in &manifest.modules {
        push_migrations(manifest, module, &mut files)?;
    }
    add_included(manifest, &mut files)?;
    Ok(files)
}

/// Reads the migration files of `module` into `files`.
fn push_migrations(manifest: &Manifest, module: &Module, files: &mut Vec<SourceFile>) -> Result<(), Error> {
    let kind = SourceKind::Migration { module: module.name.to_string() };
    for path in migration_files(&module.migrations)? {
        files.push(read_file(manifest, &path, kind.clone())?);
    }
    Ok(())
}

/// Reads the files that the includes of `files` name (and of those, and so on) and that are
/// not among `files` yet, as [`SourceKind::Included`].
fn add_included(manifest: &Manifest, files: &mut Vec<SourceFile>) -> Result<(), Error> {
    let mut known: HashSet<String> = files.iter().map(|f| f.name.clone()).collect();
    let root = std::fs::canonicalize(&manifest.root).unwrap_or_else(|_| manifest.root.clone());
    let mut next = 0;
    while next < files.len() {
        let names = included_files(&manifest.root, &files[next].source());
        next += 1;
        for name in names {
            if !known.insert(name.clone()) {
                continue;
            }
            let path = manifest.root.join(&name);
            // Never read outside the project, whatever a symbolic link on the way says.
            let inside = std::fs::canonicalize(&path).is_ok_and(|real| real.starts_with(&root) && real.is_file());
            if inside {
                files.push(read_file(manifest, &path, SourceKind::Included)?);
            }
        }
    }
    Ok(())
}

/// A module's migration files: `*.sql` in its folder, and diesel's `<folder>/up.sql` and
/// `down.sql` one level down, sorted by path.
pub fn migration_files(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let folder = |source| Error::Folder { path: dir.to_owned(), source };
    let mut out = list(dir, "sql", false)?;
    for entry in std::fs::read_dir(dir).map_err(folder)? {
        let path = entry.map_err(folder)?.path();
        if path.is_dir() && !path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) {
            out.extend(["up.sql", "down.sql"].iter().map(|f| path.join(f)).filter(|p| p.is_file()));
        }
    }
    out.sort();
    Ok(out)
}

/// The files of `dir` whose extension is `extension`, sorted; with `recursive`, also in its
/// subfolders (but not in hidden folders or `target`).
fn list(dir: &Path, extension: &str, recursive: bool) -> Result<Vec<PathBuf>, Error> {
    let folder = |source| Error::Folder { path: dir.to_owned(), source };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(folder)? {
        let entry = entry.map_err(folder)?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let file_type = entry.file_type().map_err(|source| Error::Folder { path: path.clone(), source })?;
        if file_type.is_dir() || (file_type.is_symlink() && path.is_dir()) {
            if recursive && !name.starts_with('.') && name != "target" {
                out.extend(list(&path, extension, true)?);
            }
        } else if path.extension().is_some_and(|e| e == extension) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

fn read_file(manifest: &Manifest, path: &Path, kind: SourceKind) -> Result<SourceFile, Error> {
    let name = manifest.relative(path);
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(source) => return Err(Error::File { name, source }),
    };
    match String::from_utf8(bytes) {
        Ok(text) => Ok(SourceFile { name, text, kind }),
        Err(e) => Err(Error::NotUtf8 { name, offset: e.utf8_error().valid_up_to() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        for (name, text) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("folders");
            std::fs::write(path, text).expect("write");
        }
        dir
    }

    fn names(files: &[SourceFile]) -> Vec<(&str, &SourceKind)> {
        files.iter().map(|f| (f.name.as_str(), &f.kind)).collect()
    }

    #[test]
    fn includes_are_read_once_inside_the_project_only() {
        let outside = project(&[("secret.sql", "SELECT 'secret';")]);
        let secret = outside.path().join("secret.sql");
        let dir = project(&[
            ("moat.toml", "[project]\nname = \"shop\"\n[modules.billing]\n"),
            (
                "modules/billing/migrations/0001_init.sql",
                "\\ir ../sql/a.sql\n\\ir ../sql/a.sql\n\\i ../../../../x.sql\n\\ir ../sql/link.sql\n\\ir missing.sql\n\\ir 0002_more.sql\n",
            ),
            ("modules/billing/migrations/0002_more.sql", "SELECT 1;"),
            ("modules/billing/sql/a.sql", "\\ir b.sql\n"),
            ("modules/billing/sql/b.sql", "\\ir a.sql\nSELECT 2;"),
        ]);
        #[cfg(unix)]
        std::os::unix::fs::symlink(&secret, dir.path().join("modules/billing/sql/link.sql")).expect("link");
        let manifest = Manifest::load(&dir.path().join("moat.toml")).expect("manifest");
        let files = read(&manifest).expect("read");
        let migration = SourceKind::Migration { module: "billing".into() };
        assert_eq!(
            names(&files),
            [
                ("modules/billing/migrations/0001_init.sql", &migration),
                ("modules/billing/migrations/0002_more.sql", &migration),
                ("modules/billing/sql/a.sql", &SourceKind::Included),
                ("modules/billing/sql/b.sql", &SourceKind::Included),
            ]
        );
        assert!(files.iter().all(|f| !f.text.contains("secret")));
    }

    #[test]
    fn an_included_file_that_is_not_utf8_is_an_error() {
        let dir = project(&[
            ("moat.toml", "[project]\nname = \"shop\"\n[modules.billing]\n"),
            ("modules/billing/migrations/0001_init.sql", "\\ir ../sql/x.sql\n"),
        ]);
        std::fs::create_dir_all(dir.path().join("modules/billing/sql")).expect("folder");
        std::fs::write(dir.path().join("modules/billing/sql/x.sql"), b"SELECT '\xff';").expect("write");
        let manifest = Manifest::load(&dir.path().join("moat.toml")).expect("manifest");
        let error = read(&manifest).expect_err("not UTF-8");
        assert_eq!(
            error.to_string(),
            "`modules/billing/sql/x.sql` is not UTF-8 text (invalid byte at offset 8)\n  help: save the file as UTF-8"
        );
    }
}

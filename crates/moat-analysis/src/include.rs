//! psql includes (`\i`, `\ir`, `\include`, `\include_relative`): which file an include names,
//! by path arithmetic alone (the analysis does no I/O; the caller reads the files and passes
//! them as [`SourceKind::Included`](crate::SourceKind::Included) sources).
//!
//! Both forms are resolved against the folder of the including file. psql resolves `\i`
//! against its working directory, which moat cannot know (tools run psql from the project, the
//! migration folder or a container's `/docker-entrypoint-initdb.d`); the including file's
//! folder is where such a path is meant to be found when the script is run from its own folder,
//! and the one answer that does not depend on where moat itself runs.

use std::path::{Component, Path};

use crate::{Source, SourceKind, layout, script};

/// An include's target, or why it is not followed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// The file, relative to the manifest's folder, with `/` separators.
    File(String),
    /// Not followed: why, as the end of a sentence.
    Refused(String),
}

/// The file that `path` names when `includer` (relative to the manifest's folder `root`)
/// includes it.
pub(crate) fn resolve(root: &Path, includer: &str, path: &str) -> Target {
    if path.is_empty() {
        return Target::Refused("it names no file".into());
    }
    if let Some(variable) = variable(path) {
        return Target::Refused(format!(
            "its path holds the psql variable `{variable}`, whose value moat does not know"
        ));
    }
    if path.contains('`') {
        return Target::Refused("its path runs a shell command (backquotes), which moat does not run".into());
    }
    let target = Path::new(path);
    let mut parts: Vec<String> = Vec::new();
    let relative = if target.is_absolute() {
        match (root.is_absolute(), target.strip_prefix(root)) {
            (true, Ok(inside)) => inside,
            _ => return Target::Refused("it is an absolute path outside the project's folder".into()),
        }
    } else {
        parts.extend(includer.split('/').map(str::to_owned));
        parts.pop();
        target
    };
    for component in relative.components() {
        match component {
            Component::Normal(part) => parts.push(part.to_string_lossy().into_owned()),
            Component::CurDir => {}
            Component::ParentDir => {
                if parts.pop().is_none() {
                    return Target::Refused(
                        "it leaves the project's folder (the folder of `moat.toml`), which moat never reads outside"
                            .into(),
                    );
                }
            }
            Component::RootDir | Component::Prefix(_) => {
                return Target::Refused("it is an absolute path outside the project's folder".into());
            }
        }
    }
    if parts.is_empty() {
        return Target::Refused("it names the project's folder, not a file".into());
    }
    Target::File(parts.join("/"))
}

/// The first psql variable (`:name`, `:'name'`, `:"name"`) in an include's path.
fn variable(path: &str) -> Option<&str> {
    let b = path.as_bytes();
    for (i, _) in path.match_indices(':') {
        if i > 0 && b[i - 1] == b':' {
            continue;
        }
        let rest = &b[i + 1..];
        let (skip, quote) = match rest.first() {
            Some(&q @ (b'\'' | b'"')) => (1, Some(q)),
            Some(c) if c.is_ascii_alphabetic() || *c == b'_' => (0, None),
            _ => continue,
        };
        let name = rest[skip..].iter().take_while(|c| c.is_ascii_alphanumeric() || **c == b'_').count();
        if name == 0 {
            continue;
        }
        let mut end = i + 1 + skip + name;
        if quote.is_some() {
            end = (end + 1).min(path.len());
        }
        return Some(&path[i..end]);
    }
    None
}

/// The files `source` includes (on the way up, for a migration) that the analysis would follow,
/// relative to the manifest's folder `root`. Includes of included files are not listed: the
/// caller asks again for each [`SourceKind::Included`] source it reads.
pub fn included_files(root: &Path, source: &Source<'_>) -> Vec<String> {
    if !source.text.contains('\\') {
        return Vec::new();
    }
    let up;
    let text = match &source.kind {
        SourceKind::RustSource { .. } => return Vec::new(),
        SourceKind::Migration { .. } => {
            up = layout::read(&source.file, source.text).up;
            &*up
        }
        SourceKind::Contract { .. } | SourceKind::Included => source.text,
    };
    let mut out = Vec::new();
    for (_, path, _) in script::split(text, true).includes {
        if let Target::File(file) = resolve(root, &source.file, &path)
            && !out.contains(&file)
        {
            out.push(file);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(includer: &str, path: &str) -> Target {
        resolve(Path::new("/p"), includer, path)
    }

    #[test]
    fn paths_resolve_against_the_including_files_folder() {
        let from = "modules/billing/migrations/0001_init.sql";
        assert_eq!(file(from, "functions.sql"), Target::File("modules/billing/migrations/functions.sql".into()));
        assert_eq!(file(from, "./sql/../f.sql"), Target::File("modules/billing/migrations/f.sql".into()));
        assert_eq!(file(from, "../../../shared/x.sql"), Target::File("shared/x.sql".into()));
        assert_eq!(file(from, "/p/shared/x.sql"), Target::File("shared/x.sql".into()));
    }

    #[test]
    fn paths_outside_the_project_and_variables_are_refused() {
        let from = "modules/billing/migrations/0001_init.sql";
        for path in ["../../../../etc/passwd", "/etc/passwd", "/pp/x.sql", ":dir/x.sql", "a/:'v'.sql", "`ls`", ""] {
            assert!(matches!(file(from, path), Target::Refused(_)), "{path}");
        }
        assert!(matches!(resolve(Path::new("rel"), from, "/rel/x.sql"), Target::Refused(_)));
        assert_eq!(variable("a/:'v'.sql"), Some(":'v'"));
        assert_eq!(variable("a/:v.sql"), Some(":v"));
        assert_eq!(variable("C:x"), Some(":x"));
        assert_eq!(variable("a::b"), None);
    }
}

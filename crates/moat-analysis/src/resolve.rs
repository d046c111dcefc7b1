//! Name resolution: from a name as written to the schema it lives in, and so to a module.
//!
//! Qualified names name their schema. Unqualified names are looked up along the `search_path`
//! in force where they are written (the module's schema unless the file changes it with `SET
//! search_path` or `set_config('search_path', ...)`), after `pg_catalog`, as PostgreSQL does. The
//! analyzer has no catalog, so it knows only the objects created in the files it reads; an
//! unqualified relation it does not know resolves to the first module schema on the path, and an
//! unqualified function or type it does not know is taken for a built-in.

use std::collections::{HashMap, HashSet};
use std::fmt;

use moat_core::manifest::Manifest;
use moat_core::names::CONTRACTS_SCHEMA;

/// A name as written: `name`, `schema.name` or `catalog.schema.name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct QualifiedName {
    /// The schema, when the name is qualified.
    pub(crate) schema: Option<String>,
    /// The object's own name.
    pub(crate) name: String,
}

impl QualifiedName {
    /// A name from its parts (`[name]`, `[schema, name]`, `[catalog, schema, name]`).
    pub(crate) fn from_parts(parts: &[String]) -> Option<Self> {
        match parts {
            [name] => Some(Self { schema: None, name: name.clone() }),
            [schema, name] | [_, schema, name] => Some(Self { schema: Some(schema.clone()), name: name.clone() }),
            _ => None,
        }
    }

    /// The name in `schema`.
    pub(crate) fn in_schema(&self, schema: &str) -> String {
        format!("{schema}.{}", self.name)
    }
}

impl fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(schema) => write!(f, "{schema}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// What kind of object a name refers to; it decides the namespace it is looked up in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum ObjectKind {
    /// A table, view, materialized view or foreign table.
    Relation,
    /// A sequence (also a relation).
    Sequence,
    /// A function, procedure or aggregate.
    Function,
    /// A type or domain (every table also has a row type).
    Type,
    /// An operator.
    Operator,
    /// A schema.
    Schema,
}

impl ObjectKind {
    /// The word used in messages.
    pub(crate) fn label(self) -> &'static str {
        match self {
            ObjectKind::Relation => "relation",
            ObjectKind::Sequence => "sequence",
            ObjectKind::Function => "function",
            ObjectKind::Type => "type",
            ObjectKind::Operator => "operator",
            ObjectKind::Schema => "schema",
        }
    }

    fn namespace(self) -> Namespace {
        match self {
            ObjectKind::Relation | ObjectKind::Sequence => Namespace::Relation,
            ObjectKind::Function => Namespace::Function,
            ObjectKind::Type => Namespace::Type,
            ObjectKind::Operator => Namespace::Operator,
            ObjectKind::Schema => Namespace::Schema,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Namespace {
    Relation,
    Function,
    Type,
    Operator,
    Schema,
}

/// The `search_path` in force at a statement: schema names in order.
pub(crate) type SearchPath = Vec<String>;

/// Parses a `search_path` value as `set_config` takes it: `a, "B", $user`.
pub(crate) fn parse_search_path(value: &str) -> SearchPath {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| match s.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
            Some(quoted) => quoted.replace("\"\"", "\""),
            None => s.to_lowercase(),
        })
        .collect()
}

/// Objects the analyzed files create, by namespace and name: the schemas that hold them.
#[derive(Debug, Default)]
pub(crate) struct Symbols {
    objects: HashMap<(Namespace, String), HashSet<String>>,
}

impl Symbols {
    /// Records that `kind` `name` exists in `schema`.
    pub(crate) fn add(&mut self, kind: ObjectKind, schema: &str, name: &str) {
        self.objects.entry((kind.namespace(), name.to_owned())).or_default().insert(schema.to_owned());
        if kind == ObjectKind::Relation {
            // Every table, view and composite type also has a row type of the same name.
            self.objects.entry((Namespace::Type, name.to_owned())).or_default().insert(schema.to_owned());
        }
    }

    fn contains(&self, kind: ObjectKind, schema: &str, name: &str) -> bool {
        self.objects.get(&(kind.namespace(), name.to_owned())).is_some_and(|s| s.contains(schema))
    }
}

/// Resolves names against the manifest and the objects the files create.
#[derive(Debug)]
pub(crate) struct Resolver<'m> {
    manifest: &'m Manifest,
    symbols: Symbols,
}

impl<'m> Resolver<'m> {
    pub(crate) fn new(manifest: &'m Manifest, symbols: Symbols) -> Self {
        Self { manifest, symbols }
    }

    /// The schema an existing object of `kind` named `name` lives in, seen from `path`; `None`
    /// when it cannot be known (a built-in, or nothing on the path).
    pub(crate) fn resolve(&self, kind: ObjectKind, name: &QualifiedName, path: &[String]) -> Option<String> {
        if let Some(schema) = &name.schema {
            return Some(schema.clone());
        }
        if kind == ObjectKind::Schema {
            return Some(name.name.clone());
        }
        if name.name.starts_with("pg_") {
            return None;
        }
        if let Some(schema) = path.iter().find(|s| self.symbols.contains(kind, s, &name.name)) {
            return Some(schema.clone());
        }
        match kind {
            ObjectKind::Relation | ObjectKind::Sequence => path.iter().find(|s| self.is_known_schema(s)).cloned(),
            _ => None,
        }
    }

    /// The schema a new object named `name` is created in: its own schema, or the first schema
    /// of the path.
    pub(crate) fn creation_schema(name: &QualifiedName, path: &[String]) -> Option<String> {
        match &name.schema {
            Some(schema) => Some(schema.clone()),
            None => path.iter().find(|s| !s.starts_with('$') && s.as_str() != "pg_temp").cloned(),
        }
    }

    /// Whether a schema is a module's or the contracts schema.
    pub(crate) fn is_known_schema(&self, schema: &str) -> bool {
        schema == CONTRACTS_SCHEMA || self.manifest.module_by_schema(schema).is_some()
    }

    /// The module that owns a schema.
    pub(crate) fn module_of(&self, schema: &str) -> Option<&'m str> {
        self.manifest.module_by_schema(schema).map(|m| m.name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_path_values_fold_case_unless_quoted() {
        assert_eq!(parse_search_path("Billing, \"Patients\", $user"), vec!["billing", "Patients", "$user"]);
        assert!(parse_search_path("").is_empty());
        assert!(parse_search_path(" ,").is_empty());
    }
}

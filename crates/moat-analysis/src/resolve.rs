//! Name resolution: from a name as written to the schema it lives in, and so to a module.
//!
//! Qualified names name their schema. Unqualified names are looked up along the `search_path`
//! in force where they are written (the module's schema unless the file changes it with `SET
//! search_path` or `set_config('search_path', ...)`), after `pg_catalog` (and `pg_temp` for
//! relations), as PostgreSQL does. The analyzer has no catalog: it knows the objects the files it
//! reads create, across every module. An unqualified name that is not on the path but that
//! another module creates resolves to that module's object (the reference crosses into it, as
//! happens when an existing database is split into modules with its names left unqualified); an
//! unqualified relation that no file creates is unresolved (it resolves to the first module
//! schema on the path, and `unresolved-reference` reports it); an unqualified function or type
//! that no file creates is taken for a built-in.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Mutex, OnceLock};

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
        self.schemas(kind, name).is_some_and(|s| s.contains(schema))
    }

    /// The schemas that hold a `kind` named `name`.
    fn schemas(&self, kind: ObjectKind, name: &str) -> Option<&HashSet<String>> {
        self.objects.get(&(kind.namespace(), name.to_owned()))
    }

    /// Every relation name and the schemas that hold it.
    fn relations(&self) -> impl Iterator<Item = (&str, &HashSet<String>)> {
        self.objects.iter().filter(|((ns, _), _)| *ns == Namespace::Relation).map(|((_, name), s)| (name.as_str(), s))
    }
}

/// The schema of temporary objects, searched first for relations.
pub(crate) const TEMP_SCHEMA: &str = "pg_temp";

/// What the analysis knows of an unresolved name: the nearest object some module creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Suggestion {
    /// `schema.name` of the similar object, if one is close enough.
    pub(crate) object: Option<String>,
    /// The module it belongs to (or whose name the reference starts with).
    pub(crate) module: Option<String>,
}

/// A relation some module's schema holds, as [`Resolver::suggest`] may name it: its name, and
/// the first (by manifest order, then schema name) module and schema that hold it.
#[derive(Debug)]
struct Candidate {
    name: String,
    module: usize,
    schema: String,
}

/// Resolves names against the manifest and the objects the files create.
#[derive(Debug)]
pub(crate) struct Resolver<'m> {
    manifest: &'m Manifest,
    symbols: Symbols,
    /// The relations [`Resolver::suggest`] may name, by the byte length of their name; built on
    /// first use.
    candidates: OnceLock<HashMap<usize, Vec<Candidate>>>,
    /// What [`Resolver::suggest`] answered, by name: the same names come back in every file.
    suggestions: Mutex<HashMap<String, Suggestion>>,
}

impl<'m> Resolver<'m> {
    pub(crate) fn new(manifest: &'m Manifest, symbols: Symbols) -> Self {
        Self { manifest, symbols, candidates: OnceLock::new(), suggestions: Mutex::new(HashMap::new()) }
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
        let relation = matches!(kind, ObjectKind::Relation | ObjectKind::Sequence);
        if relation && self.symbols.contains(kind, TEMP_SCHEMA, &name.name) {
            return Some(TEMP_SCHEMA.to_owned());
        }
        if let Some(schema) = path.iter().find(|s| self.symbols.contains(kind, s, &name.name)) {
            return Some(schema.clone());
        }
        if let Some(schema) = self.elsewhere(kind, &name.name) {
            return Some(schema);
        }
        if relation { path.iter().find(|s| self.is_known_schema(s)).cloned() } else { None }
    }

    /// The schema of an object that is not on the path but that some file creates: a module's
    /// schema first (in manifest order), else the first by name.
    fn elsewhere(&self, kind: ObjectKind, name: &str) -> Option<String> {
        let schemas = self.symbols.schemas(kind, name)?;
        let rank = |schema: &String| {
            let module = self.manifest.modules.iter().position(|m| m.schema.as_str() == schema.as_str());
            (module.unwrap_or(usize::MAX), schema.clone())
        };
        schemas.iter().filter(|s| s.as_str() != TEMP_SCHEMA).min_by_key(|s| rank(s)).cloned()
    }

    /// Whether an unqualified relation or sequence is created by no file at all.
    pub(crate) fn is_unresolved(&self, kind: ObjectKind, name: &QualifiedName) -> bool {
        name.schema.is_none()
            && matches!(kind, ObjectKind::Relation | ObjectKind::Sequence)
            && !name.name.starts_with("pg_")
            && self.symbols.schemas(kind, &name.name).is_none_or(HashSet::is_empty)
    }

    /// The object some module creates whose name is closest to `name` (at most two edits, or a
    /// third of its length, apart), and the module: that object's, or the module whose name or
    /// schema `name` starts with.
    pub(crate) fn suggest(&self, name: &str) -> Suggestion {
        if let Some(known) = self.suggestions.lock().ok().and_then(|s| s.get(name).cloned()) {
            return known;
        }
        let suggestion = self.suggest_anew(name);
        if let Ok(mut suggestions) = self.suggestions.lock() {
            suggestions.insert(name.to_owned(), suggestion.clone());
        }
        suggestion
    }

    fn candidates(&self) -> &HashMap<usize, Vec<Candidate>> {
        self.candidates.get_or_init(|| {
            let mut by_length: HashMap<usize, Vec<Candidate>> = HashMap::new();
            for (candidate, schemas) in self.symbols.relations() {
                let first = schemas
                    .iter()
                    .filter_map(|schema| {
                        let module = self.manifest.modules.iter().position(|m| m.schema.as_str() == schema.as_str())?;
                        Some((module, schema))
                    })
                    .min();
                if let Some((module, schema)) = first {
                    by_length.entry(candidate.len()).or_default().push(Candidate {
                        name: candidate.to_owned(),
                        module,
                        schema: schema.clone(),
                    });
                }
            }
            by_length
        })
    }

    fn suggest_anew(&self, name: &str) -> Suggestion {
        let limit = (name.chars().count() / 3).clamp(1, 2);
        let mut best: Option<(usize, usize, &str, &str)> = None;
        let candidates = self.candidates();
        for length in name.len().saturating_sub(limit)..=name.len() + limit {
            for candidate in candidates.get(&length).into_iter().flatten() {
                let Some(distance) = bounded_distance(name, &candidate.name, limit) else { continue };
                let key = (distance, candidate.module, candidate.schema.as_str(), candidate.name.as_str());
                if best.as_ref().is_none_or(|b| key < *b) {
                    best = Some(key);
                }
            }
        }
        if let Some((_, index, schema, candidate)) = best {
            return Suggestion {
                object: Some(format!("{schema}.{candidate}")),
                module: Some(self.manifest.modules[index].name.to_string()),
            };
        }
        // `customer_notes`: the module whose name (or schema), or its singular, starts the name.
        let module = self
            .manifest
            .modules
            .iter()
            .filter_map(|m| {
                let stems = [m.name.as_str(), m.schema.as_str()];
                stems
                    .iter()
                    .flat_map(|s| [*s, s.strip_suffix('s').unwrap_or(s)])
                    .filter(|stem| stem.len() >= 3 && name.starts_with(stem))
                    .map(str::len)
                    .max()
                    .map(|len| (len, m.name.to_string()))
            })
            .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(&a.1)))
            .map(|(_, module)| module);
        Suggestion { object: None, module }
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

    /// The module that owns `schema.name`: the schema's module, or the module that claims it.
    pub(crate) fn owner_of(&self, schema: &str, name: &str) -> Option<&'m str> {
        self.manifest.owner_of(schema, name).map(|m| m.name.as_str())
    }

    /// The module that owns what a reference of `kind` resolves to in `schema`.
    pub(crate) fn owner_of_reference(&self, kind: ObjectKind, schema: &str, name: &QualifiedName) -> Option<&'m str> {
        if kind == ObjectKind::Schema { self.module_of(schema) } else { self.owner_of(schema, &name.name) }
    }

    /// Whether some file creates a `kind` named `name` in `schema`.
    pub(crate) fn is_created(&self, kind: ObjectKind, schema: &str, name: &str) -> bool {
        self.symbols.contains(kind, schema, name)
    }
}

/// The edit distance between `a` and `b` (in characters), when it is at most `limit`.
fn bounded_distance(a: &str, b: &str, limit: usize) -> Option<usize> {
    if a.is_ascii() && b.is_ascii() {
        bounded_distance_of(a.as_bytes(), b.as_bytes(), limit)
    } else {
        let a: Vec<char> = a.chars().collect();
        let b: Vec<char> = b.chars().collect();
        bounded_distance_of(&a, &b, limit)
    }
}

fn bounded_distance_of<T: PartialEq>(a: &[T], b: &[T], limit: usize) -> Option<usize> {
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        current[0] = i + 1;
        let mut row_min = current[0];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            current[j + 1] = (previous[j] + cost).min(previous[j + 1] + 1).min(current[j] + 1);
            row_min = row_min.min(current[j + 1]);
        }
        if row_min > limit {
            return None;
        }
        std::mem::swap(&mut previous, &mut current);
    }
    let distance = previous[b.len()];
    (distance <= limit).then_some(distance)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances_are_bounded() {
        assert_eq!(bounded_distance("customer", "customers", 2), Some(1));
        assert_eq!(bounded_distance("orders", "order_items", 2), None);
        assert_eq!(bounded_distance("abc", "abc", 1), Some(0));
    }

    #[test]
    fn search_path_values_fold_case_unless_quoted() {
        assert_eq!(parse_search_path("Billing, \"Patients\", $user"), vec!["billing", "Patients", "$user"]);
        assert!(parse_search_path("").is_empty());
        assert!(parse_search_path(" ,").is_empty());
    }
}

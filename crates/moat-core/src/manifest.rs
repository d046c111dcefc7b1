//! `moat.toml`: the manifest that declares a project's modules, contracts and consumers.
//!
//! Parsing walks TOML's spanned document tree by hand (rather than through serde) so that every
//! problem is reported at once, each with the file, the key and its line.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::names::{
    ConsumerName, ContractName, DatabaseName, ModuleName, NameError, ProjectName, RelationName, RoleNames, SchemaName,
    reserved_schema,
};
use crate::text::LineIndex;

mod events;
pub use events::{
    DEFAULT_NATS_URL, DEFAULT_NATS_URL_ENV, EventsConfig, Storage, StreamSettings, Transport, UnsafeSetting,
    format_duration, parse_duration,
};

/// The manifest's file name.
pub const FILE_NAME: &str = "moat.toml";

/// A validated manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The manifest file.
    pub path: PathBuf,
    /// The directory that holds it; relative paths in the manifest start here.
    pub root: PathBuf,
    /// `[project] name`.
    pub project: ProjectName,
    /// Modules in declaration order.
    pub modules: Vec<Module>,
    /// Contracts in declaration order.
    pub contracts: Vec<Contract>,
    /// Consumers in declaration order.
    pub consumers: Vec<ConsumerName>,
    /// `[databases.NAME]`: databases besides the main one, in declaration order.
    pub databases: Vec<Database>,
    /// The project's modules that live in another database than the one this manifest is
    /// [restricted](Manifest::restricted) to (empty for a whole manifest): they still count as
    /// publishers and subscribers, their roles are not orphans, nothing of theirs is created here.
    pub elsewhere: Vec<Module>,
    /// Contracts that live in another database than the one this manifest is restricted to.
    pub elsewhere_contracts: Vec<ContractName>,
    /// Consumers whose contracts live in another database than the one this manifest is
    /// restricted to.
    pub elsewhere_consumers: Vec<ConsumerName>,
    /// `[project] connection_limit`: the `CONNECTION LIMIT` of every login role moat creates
    /// (default [`DEFAULT_CONNECTION_LIMIT`]); a module's own `connection_limit` overrides it for
    /// its runtime role.
    pub connection_limit: u32,
    /// `[events]`: the transport of module events and the JetStream settings.
    pub events: EventsConfig,
}

/// The `CONNECTION LIMIT` of moat's login roles when the manifest does not set one.
pub const DEFAULT_CONNECTION_LIMIT: u32 = 32;

/// The largest `connection_limit` the manifest accepts.
pub const MAX_CONNECTION_LIMIT: u32 = 10_000;

/// A module: one schema, two roles, one migration folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// Its name.
    pub name: ModuleName,
    /// Its schema (the module name unless the manifest says otherwise).
    pub schema: SchemaName,
    /// Its migration folder.
    pub migrations: PathBuf,
    /// Code whose embedded SQL `moat check` reads.
    pub sources: Vec<PathBuf>,
    /// Modules whose API or events it uses.
    pub depends_on: Vec<ModuleName>,
    /// Objects it owns outside its schema while it is being split out of a shared one
    /// (`claims = ["public.customer_*"]`).
    pub claims: Vec<Claim>,
    /// `connection_limit` of its runtime role, when the module sets one.
    pub connection_limit: Option<u32>,
    /// `database = "NAME"`: the database it lives in (`None`: the main database).
    pub database: Option<DatabaseName>,
    /// `transport = { publisher = "jetstream" }`: the transport of its subscription to a
    /// publisher, where it is not `[events] transport`.
    pub transports: BTreeMap<ModuleName, Transport>,
}

/// `[databases.NAME]`: a database other than the main one, for database per service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Database {
    /// Its key in the manifest.
    pub name: DatabaseName,
    /// The environment variable that holds its admin URL (never the URL itself: it may carry a
    /// password).
    pub url_env: String,
}

/// `schema.name` or `schema.pattern` (`*` matches any run of characters): objects in a schema
/// that is not the module's own (such as `public`) that the module owns for now. A table's
/// indexes, constraints, triggers and owned sequences follow the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The schema (not a module's).
    pub schema: String,
    /// The object's name, or a pattern with `*`.
    pub pattern: String,
}

impl Claim {
    /// Parses `schema.pattern`.
    pub fn parse(value: &str) -> Result<Self, String> {
        let Some((schema, pattern)) = value.split_once('.') else {
            return Err(format!("claim `{value}` names no schema"));
        };
        let word = |s: &str, star: bool| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$' || (star && c == '*'))
        };
        if !word(schema, false) || !word(pattern, true) {
            return Err(format!("claim `{value}` is not `schema.name` or `schema.pattern`"));
        }
        Ok(Self { schema: schema.to_owned(), pattern: pattern.to_owned() })
    }

    /// Whether the claim covers `schema.name`.
    pub fn matches(&self, schema: &str, name: &str) -> bool {
        schema == self.schema && glob(&self.pattern, name)
    }

    /// How specific the claim is: an exact name beats any pattern, a longer pattern a shorter one.
    fn specificity(&self) -> (bool, usize) {
        (!self.pattern.contains('*'), self.pattern.len())
    }
}

impl fmt::Display for Claim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.pattern)
    }
}

/// `*` matches any run of characters; everything else matches itself.
fn glob(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

/// A contract: read-only views, the one allowed cross-module read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contract {
    /// Its name.
    pub name: ContractName,
    /// The SQL file with its `CREATE VIEW` statements.
    pub sql: PathBuf,
    /// The only relations it may read.
    pub reads: Vec<QualifiedRelation>,
    /// Consumers granted SELECT on its views.
    pub readers: Vec<ConsumerName>,
}

/// `schema.relation`, as in a contract's `reads`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QualifiedRelation {
    /// The schema (a module's schema).
    pub schema: SchemaName,
    /// The relation in it.
    pub relation: RelationName,
}

impl fmt::Display for QualifiedRelation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.relation)
    }
}

/// One problem in a manifest, with its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    /// The manifest file.
    pub file: PathBuf,
    /// 1-based line of the offending key or value.
    pub line: u32,
    /// 1-based column.
    pub column: u32,
    /// The dotted key, such as `modules.billing.depends_on`.
    pub key: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub help: Option<String>,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        if !self.key.is_empty() {
            write!(f, "`{}`: ", self.key)?;
        }
        f.write_str(&self.message)?;
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

/// Why a manifest could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// No `moat.toml` in the directory or any parent.
    #[error(
        "could not find `moat.toml` in `{start}` or any parent directory\n  help: create one (see the README), or pass `--manifest PATH`"
    )]
    NotFound {
        /// Where the search started.
        start: PathBuf,
    },
    /// The file could not be read.
    #[error("cannot read manifest `{path}`")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file was read but is invalid.
    #[error("{}", render_errors(.0))]
    Invalid(Vec<ManifestError>),
}

fn render_errors(errors: &[ManifestError]) -> String {
    let mut out = format!("invalid manifest: {} problem{}", errors.len(), if errors.len() == 1 { "" } else { "s" });
    for error in errors {
        out.push('\n');
        out.push_str(&error.to_string());
    }
    out
}

impl Manifest {
    /// Finds `moat.toml` in `start` or its nearest parent, like Cargo finds `Cargo.toml`.
    pub fn discover(start: &Path) -> Result<PathBuf, LoadError> {
        let mut dir = Some(start);
        while let Some(d) = dir {
            let candidate = d.join(FILE_NAME);
            if candidate.is_file() {
                return Ok(candidate);
            }
            dir = d.parent();
        }
        Err(LoadError::NotFound { start: start.to_owned() })
    }

    /// Reads and validates a manifest file, checking the paths it names on disk.
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read { path: path.to_owned(), source })?;
        // Relative paths in the manifest resolve against its folder, wherever moat runs from; the
        // path stays as given for messages, the root is absolute.
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let root = std::fs::canonicalize(parent).unwrap_or_else(|_| parent.to_owned());
        Parser::new(path, &text, &FsCheck).with_root(root).parse().map_err(LoadError::Invalid)
    }

    /// Validates manifest text; `fs` answers whether the paths it names exist.
    pub fn parse(path: &Path, text: &str, fs: &dyn PathCheck) -> Result<Self, Vec<ManifestError>> {
        Parser::new(path, text, fs).parse()
    }

    /// The module with this name.
    pub fn module(&self, name: &str) -> Option<&Module> {
        self.modules.iter().find(|m| m.name.as_str() == name)
    }

    /// The module that owns a schema.
    pub fn module_by_schema(&self, schema: &str) -> Option<&Module> {
        self.modules.iter().find(|m| m.schema.as_str() == schema)
    }

    /// The module that claims `schema.name` (see [`Claim`]): the most specific claim wins, then
    /// the module declared first. `None` for objects in a module's own schema (see
    /// [`Manifest::module_by_schema`]) and for objects nobody claims.
    pub fn claimant(&self, schema: &str, name: &str) -> Option<&Module> {
        let mut best: Option<((bool, usize), &Module)> = None;
        for module in &self.modules {
            for claim in module.claims.iter().filter(|c| c.matches(schema, name)) {
                if best.is_none_or(|(b, _)| claim.specificity() > b) {
                    best = Some((claim.specificity(), module));
                }
            }
        }
        best.map(|(_, m)| m)
    }

    /// The module that owns `schema.name`: the module whose schema it is, or the one that claims it.
    pub fn owner_of(&self, schema: &str, name: &str) -> Option<&Module> {
        self.module_by_schema(schema).or_else(|| self.claimant(schema, name))
    }

    /// The schemas that claims name (such as `public`), sorted, each once.
    pub fn claimed_schemas(&self) -> Vec<String> {
        let mut schemas: Vec<String> =
            self.modules.iter().flat_map(|m| m.claims.iter().map(|c| c.schema.clone())).collect();
        schemas.sort();
        schemas.dedup();
        schemas
    }

    /// The database the manifest puts `module` in (`None`: the main database).
    pub fn database_of(&self, module: &ModuleName) -> Option<&DatabaseName> {
        self.module(module.as_str()).and_then(|m| m.database.as_ref())
    }

    /// The `[databases]` entry with this name.
    pub fn database(&self, name: &str) -> Option<&Database> {
        self.databases.iter().find(|d| d.name.as_str() == name)
    }

    /// The database a contract's views live in: that of the modules it reads (the manifest
    /// refuses a contract whose reads span databases).
    pub fn contract_database(&self, contract: &Contract) -> Option<&DatabaseName> {
        contract.reads.first().and_then(|r| self.module_by_schema(r.schema.as_str())).and_then(|m| m.database.as_ref())
    }

    /// Role names of this project.
    pub fn roles(&self) -> RoleNames {
        RoleNames::new(&self.project)
    }

    /// Modules ordered so that every module comes after the modules it depends on (ties keep
    /// declaration order). The manifest has no cycles, so this always succeeds.
    pub fn modules_in_dependency_order(&self) -> Vec<&Module> {
        let mut placed: Vec<&Module> = Vec::with_capacity(self.modules.len());
        let mut remaining: Vec<&Module> = self.modules.iter().collect();
        while !remaining.is_empty() {
            let before = remaining.len();
            let mut i = 0;
            while i < remaining.len() {
                // A dependency in another database (not in `modules`) orders nothing here.
                let ready = remaining[i]
                    .depends_on
                    .iter()
                    .all(|d| placed.iter().any(|p| &p.name == d) || !self.modules.iter().any(|m| &m.name == d));
                if ready {
                    placed.push(remaining.remove(i));
                    // Restart so that declaration order wins among ready modules.
                    i = 0;
                } else {
                    i += 1;
                }
            }
            if remaining.len() == before {
                // Unreachable for a validated manifest; keep the rest in declaration order.
                placed.append(&mut remaining);
            }
        }
        placed
    }

    /// Whether any module depends on another, so module events may be used: then provisioning
    /// creates the event relay role, outboxes in depended-on modules and inboxes in dependents.
    pub fn uses_events(&self) -> bool {
        self.modules.iter().chain(&self.elsewhere).any(|m| !m.depends_on.is_empty())
    }

    /// The transport of `subscriber`'s subscription to `publisher`: the module's own
    /// `transport` entry, else `[events] transport`.
    pub fn transport(&self, subscriber: &Module, publisher: &ModuleName) -> Transport {
        subscriber.transports.get(publisher).copied().unwrap_or(self.events.transport)
    }

    /// Every subscription `(subscriber, publisher)` whose transport is JetStream, here or in
    /// another database.
    pub fn jetstream_subscriptions(&self) -> Vec<(&Module, &ModuleName)> {
        self.modules
            .iter()
            .chain(&self.elsewhere)
            .flat_map(|m| m.depends_on.iter().map(move |p| (m, p)))
            .filter(|(m, p)| self.transport(m, p) == Transport::JetStream)
            .collect()
    }

    /// Whether `moat relay` publishes `publisher`'s events (the project's transport is JetStream,
    /// or a subscription to it is): then its outbox keeps a progress row for the relay.
    pub fn relayed(&self, publisher: &ModuleName) -> bool {
        self.events.transport == Transport::JetStream
            || self.dependents(publisher).any(|m| self.transport(m, publisher) == Transport::JetStream)
    }

    /// The JetStream stream of the project's events (`[events] stream`, else the project name).
    pub fn stream_name(&self) -> String {
        self.events.stream.clone().unwrap_or_else(|| self.project.to_string())
    }

    /// Whether some module (here or in another database) depends on `module` (so it may publish
    /// events to it).
    pub fn is_depended_on(&self, module: &ModuleName) -> bool {
        self.dependents(module).next().is_some()
    }

    /// The modules (here or in another database) that depend on `module`.
    pub fn dependents<'a>(&'a self, module: &'a ModuleName) -> impl Iterator<Item = &'a Module> + 'a {
        self.modules.iter().chain(&self.elsewhere).filter(move |m| m.depends_on.contains(module))
    }

    /// The module with this name, here or in another database.
    pub fn any_module(&self, name: &str) -> Option<&Module> {
        self.modules.iter().chain(&self.elsewhere).find(|m| m.name.as_str() == name)
    }

    /// The part of the manifest that lives in one database: the modules `here` keeps (the others
    /// move to [`Manifest::elsewhere`]), the contracts whose reads are all theirs, the consumers
    /// that read those contracts (and, in the `main` database, the consumers that read none).
    pub fn restricted(&self, here: impl Fn(&Module) -> bool, main: bool) -> Manifest {
        let mut part = self.clone();
        let (kept, moved): (Vec<Module>, Vec<Module>) =
            self.modules.iter().chain(&self.elsewhere).cloned().partition(|m| here(m));
        part.modules = kept;
        part.elsewhere = moved;
        let schemas: Vec<&SchemaName> = part.modules.iter().map(|m| &m.schema).collect();
        let (kept, moved): (Vec<Contract>, Vec<Contract>) =
            self.contracts.iter().cloned().partition(|c| c.reads.iter().all(|r| schemas.contains(&&r.schema)));
        part.contracts = kept;
        part.elsewhere_contracts.extend(moved.into_iter().map(|c| c.name));
        let (kept, moved): (Vec<ConsumerName>, Vec<ConsumerName>) =
            self.consumers.iter().chain(&self.elsewhere_consumers).cloned().partition(|consumer| {
                let reads_any = self.contracts.iter().any(|c| c.readers.contains(consumer));
                let reads_here = part.contracts.iter().any(|c| c.readers.contains(consumer));
                reads_here || (main && !reads_any)
            });
        part.consumers = kept;
        part.elsewhere_consumers = moved;
        part
    }

    /// A path relative to the manifest's directory, with `/` separators, for messages and findings.
    pub fn relative(&self, path: &Path) -> String {
        let rel = path.strip_prefix(&self.root).unwrap_or(path);
        rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/")
    }
}

/// How messages name a database: `the main database` or `database `NAME``.
pub fn database_label(database: Option<&DatabaseName>) -> String {
    match database {
        None => "the main database".to_owned(),
        Some(name) => format!("database `{name}`"),
    }
}

/// Answers whether paths named by a manifest exist (a seam for tests without files).
pub trait PathCheck {
    /// Whether `path` is a directory.
    fn is_dir(&self, path: &Path) -> bool;
    /// Whether `path` exists (file or directory).
    fn exists(&self, path: &Path) -> bool;
}

/// Checks paths on the real file system.
#[derive(Debug, Clone, Copy)]
pub struct FsCheck;

impl PathCheck for FsCheck {
    fn is_dir(&self, path: &Path) -> bool {
        path.is_dir()
    }
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
}

struct Parser<'a> {
    path: &'a Path,
    root: PathBuf,
    text: &'a str,
    lines: LineIndex<'a>,
    fs: &'a dyn PathCheck,
    errors: Vec<ManifestError>,
    /// Every declared module with its known dependencies, valid or not, for cycle detection.
    dependency_graph: Vec<(String, Vec<String>, Range<usize>)>,
    /// Schemas of every module with a valid name, even one with other errors, so that one
    /// error does not cascade into "belongs to no module" errors elsewhere.
    declared_schemas: Vec<SchemaName>,
    /// Every module's claims, with where they are written, for the checks across modules.
    claim_spans: Vec<(String, Claim, Range<usize>)>,
    /// `[project] connection_limit`, when set.
    connection_limit: Option<u32>,
    /// `[databases]`, parsed before the modules that name them.
    databases: Vec<Database>,
    /// Every key of `[databases]`, valid or not, so that a module naming an invalid one is not
    /// also told it is unknown.
    database_keys: Vec<String>,
}

type Table<'i> = DeTable<'i>;

impl<'a> Parser<'a> {
    fn new(path: &'a Path, text: &'a str, fs: &'a dyn PathCheck) -> Self {
        let root = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Self {
            path,
            root,
            text,
            lines: LineIndex::new(text),
            fs,
            errors: Vec::new(),
            dependency_graph: Vec::new(),
            declared_schemas: Vec::new(),
            claim_spans: Vec::new(),
            connection_limit: None,
            databases: Vec::new(),
            database_keys: Vec::new(),
        }
    }

    fn with_root(mut self, root: PathBuf) -> Self {
        self.root = root;
        self
    }

    fn error(&mut self, span: Range<usize>, key: impl Into<String>, message: impl Into<String>, help: Option<String>) {
        let position = self.lines.line_col(span.start);
        self.errors.push(ManifestError {
            file: self.path.to_owned(),
            line: position.line,
            column: position.column,
            key: key.into(),
            message: message.into(),
            help,
        });
    }

    fn parse(self) -> Result<Manifest, Vec<ManifestError>> {
        self.parse_unsorted().map_err(|mut errors| {
            errors.sort_by_key(|e| (e.line, e.column));
            errors
        })
    }

    fn parse_unsorted(mut self) -> Result<Manifest, Vec<ManifestError>> {
        let doc = match DeTable::parse(self.text) {
            Ok(doc) => doc,
            Err(e) => {
                let span = e.span().unwrap_or(0..0);
                self.error(span, "", format!("not valid TOML: {}", e.message().trim()), None);
                return Err(self.errors);
            }
        };
        let doc = doc.into_inner();

        let mut project = None;
        let mut module_tables = Vec::new();
        let mut contract_tables = Vec::new();
        let mut consumer_tables = Vec::new();
        let mut database_tables = Vec::new();
        let mut events = EventsConfig::default();
        let mut saw_project = false;
        for (key, value) in doc.iter() {
            match key.get_ref().as_ref() {
                "project" => {
                    saw_project = true;
                    if let Some(table) = self.table(value, "project") {
                        project = self.project(table);
                    }
                }
                "modules" => module_tables = self.entries(value, "modules"),
                "contracts" => contract_tables = self.entries(value, "contracts"),
                "consumers" => consumer_tables = self.entries(value, "consumers"),
                "databases" => database_tables = self.entries(value, "databases"),
                "events" => {
                    if let Some(table) = self.table(value, "events") {
                        events = self.events(table);
                    }
                }
                other => self.unknown_key(
                    key.span(),
                    other,
                    "",
                    &["project", "modules", "contracts", "consumers", "databases", "events"],
                ),
            }
        }
        if !saw_project {
            self.error(
                0..0,
                "project",
                "missing `[project]` table",
                Some("add:\n    [project]\n    name = \"myproject\"".into()),
            );
        }

        self.databases(&database_tables);
        let modules = self.modules(&module_tables);
        let consumers = self.consumers(&consumer_tables, &modules);
        let contracts = self.contracts(&contract_tables, &modules, &consumers);
        self.cycles();
        self.across_databases(&modules, &contracts, &contract_tables, &consumers);

        match project {
            Some(project) if self.errors.is_empty() => {
                let manifest = Manifest {
                    path: self.path.to_owned(),
                    root: self.root.clone(),
                    project,
                    modules: modules.into_iter().map(|(m, _)| m).collect(),
                    contracts,
                    consumers: consumers.into_iter().map(|(c, _)| c).collect(),
                    databases: std::mem::take(&mut self.databases),
                    elsewhere: Vec::new(),
                    elsewhere_contracts: Vec::new(),
                    elsewhere_consumers: Vec::new(),
                    connection_limit: self.connection_limit.unwrap_or(DEFAULT_CONNECTION_LIMIT),
                    events,
                };
                self.role_collisions(&manifest, &module_tables, &consumer_tables, &contract_tables);
                if self.errors.is_empty() { Ok(manifest) } else { Err(self.errors) }
            }
            _ => {
                if saw_project && project.is_none() && self.errors.is_empty() {
                    self.error(0..0, "project.name", "missing project name", None);
                }
                Err(self.errors)
            }
        }
    }

    fn table<'v, 'i>(&mut self, value: &'v Spanned<DeValue<'i>>, key: &str) -> Option<&'v Table<'i>> {
        match value.get_ref() {
            DeValue::Table(table) => Some(table),
            _ => {
                self.error(value.span(), key, "expected a table", None);
                None
            }
        }
    }

    /// The `name -> table` entries of `[modules]`, `[contracts]` or `[consumers]`.
    fn entries<'v, 'i>(
        &mut self,
        value: &'v Spanned<DeValue<'i>>,
        key: &str,
    ) -> Vec<(&'v Spanned<std::borrow::Cow<'i, str>>, &'v Spanned<DeValue<'i>>)> {
        match self.table(value, key) {
            Some(table) => table.iter().collect(),
            None => Vec::new(),
        }
    }

    fn unknown_key(&mut self, span: Range<usize>, key: &str, parent: &str, known: &[&str]) {
        let full = if parent.is_empty() { key.to_owned() } else { format!("{parent}.{key}") };
        let help = if known.is_empty() {
            format!("`{parent}` takes no keys")
        } else {
            format!("known keys here: {}", known.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", "))
        };
        self.error(span, full.clone(), format!("unknown key `{key}`"), Some(help));
    }

    /// A connection limit: an integer from 1 to [`MAX_CONNECTION_LIMIT`].
    fn limit(&mut self, value: &Spanned<DeValue<'_>>, key: &str) -> Option<u32> {
        let parsed = match value.get_ref() {
            DeValue::Integer(i) if i.radix() == 10 => i.as_str().replace('_', "").parse::<u32>().ok(),
            _ => None,
        };
        match parsed {
            Some(n) if (1..=MAX_CONNECTION_LIMIT).contains(&n) => Some(n),
            _ => {
                self.error(
                    value.span(),
                    key,
                    format!("expected a whole number of connections from 1 to {MAX_CONNECTION_LIMIT}"),
                    Some(format!("for example `connection_limit = {DEFAULT_CONNECTION_LIMIT}`")),
                );
                None
            }
        }
    }

    fn string(&mut self, value: &Spanned<DeValue<'_>>, key: &str) -> Option<String> {
        match value.get_ref() {
            DeValue::String(s) => Some(s.to_string()),
            _ => {
                self.error(value.span(), key, "expected a string", None);
                None
            }
        }
    }

    fn string_array(&mut self, value: &Spanned<DeValue<'_>>, key: &str) -> Vec<(String, Range<usize>)> {
        match value.get_ref() {
            DeValue::Array(items) => {
                items.iter().filter_map(|item| self.string(item, key).map(|s| (s, item.span()))).collect()
            }
            _ => {
                self.error(value.span(), key, "expected an array of strings", None);
                Vec::new()
            }
        }
    }

    fn name<T>(
        &mut self,
        parse: fn(&str) -> Result<T, NameError>,
        value: &str,
        span: Range<usize>,
        key: &str,
    ) -> Option<T> {
        match parse(value) {
            Ok(name) => Some(name),
            Err(e) => {
                self.error(
                    span,
                    key,
                    format!("{:?} is not a valid {} name", e.value, e.kind),
                    Some(format!("{} names must match `{}`", e.kind, e.pattern)),
                );
                None
            }
        }
    }

    fn path(&mut self, value: &str, span: Range<usize>, key: &str, want_dir: bool) -> Option<PathBuf> {
        let path = self.root.join(value);
        let ok = if want_dir { self.fs.is_dir(&path) } else { self.fs.exists(&path) };
        if ok {
            Some(path)
        } else {
            let what = if want_dir { "directory" } else { "file" };
            self.error(
                span,
                key,
                format!("{what} `{value}` does not exist (relative to the manifest's directory)"),
                None,
            );
            None
        }
    }

    fn project(&mut self, table: &Table<'_>) -> Option<ProjectName> {
        let mut name = None;
        for (key, value) in table.iter() {
            match key.get_ref().as_ref() {
                "name" => {
                    if let Some(s) = self.string(value, "project.name") {
                        name = self.name(ProjectName::parse, &s, value.span(), "project.name");
                    }
                }
                "connection_limit" => self.connection_limit = self.limit(value, "project.connection_limit"),
                other => self.unknown_key(key.span(), other, "project", &["name", "connection_limit"]),
            }
        }
        if name.is_none() && !self.errors.iter().any(|e| e.key == "project.name") {
            let span = 0..0;
            self.error(
                span,
                "project.name",
                "missing project name",
                Some("add `name = \"myproject\"` under `[project]`".into()),
            );
        }
        name
    }

    fn modules(
        &mut self,
        entries: &[(&Spanned<std::borrow::Cow<'_, str>>, &Spanned<DeValue<'_>>)],
    ) -> Vec<(Module, Range<usize>)> {
        let declared: Vec<String> = entries.iter().map(|(k, _)| k.get_ref().to_string()).collect();
        let mut modules = Vec::new();
        let mut schemas: HashMap<String, String> = HashMap::new();
        for (key, value) in entries {
            let raw = key.get_ref().to_string();
            let prefix = format!("modules.{raw}");
            let Some(name) = self.name(ModuleName::parse, &raw, key.span(), &prefix) else {
                continue;
            };
            let Some(table) = self.table(value, &prefix) else {
                continue;
            };
            let mut schema = (SchemaName::of_module(&name), key.span());
            let mut migrations_raw = (format!("modules/{name}/migrations"), key.span());
            let mut sources = Vec::new();
            let mut depends_on = Vec::new();
            let mut claims: Vec<(Claim, Range<usize>)> = Vec::new();
            let mut connection_limit = None;
            let mut database = None;
            let mut transports_raw = Vec::new();
            let mut ok = true;
            let mut graph_deps = Vec::new();
            for (k, v) in table.iter() {
                let field = format!("{prefix}.{}", k.get_ref());
                match k.get_ref().as_ref() {
                    "schema" => {
                        match self.string(v, &field) {
                            Some(s) => match self.name(SchemaName::parse, &s, v.span(), &field) {
                                Some(parsed) if reserved_schema(parsed.as_str()) => {
                                    self.error(v.span(), field, format!("schema `{parsed}` is reserved"), Some("`public`, `contracts`, `information_schema` and `pg_*` cannot hold a module".into()));
                                    ok = false;
                                }
                                Some(parsed) => schema = (parsed, v.span()),
                                None => ok = false,
                            },
                            None => ok = false,
                        }
                    }
                    "migrations" => match self.string(v, &field) {
                        Some(s) => migrations_raw = (s, v.span()),
                        None => ok = false,
                    },
                    "sources" => {
                        for (s, span) in self.string_array(v, &field) {
                            match self.path(&s, span, &field, false) {
                                Some(p) => sources.push(p),
                                None => ok = false,
                            }
                        }
                    }
                    "depends_on" => {
                        for (s, span) in self.string_array(v, &field) {
                            if declared.contains(&s) {
                                graph_deps.push(s.clone());
                            }
                            if !declared.contains(&s) {
                                let help = closest(&s, &declared)
                                    .map(|c| format!("did you mean `{c}`?"))
                                    .or_else(|| Some(format!("declare it as `[modules.{s}]`")));
                                self.error(span, field.clone(), format!("unknown module `{s}` in `depends_on`"), help);
                                ok = false;
                            } else if let Some(dep) = self.name(ModuleName::parse, &s, span.clone(), &field) {
                                if depends_on.contains(&dep) {
                                    self.error(span, field.clone(), format!("`{dep}` is listed twice"), None);
                                    ok = false;
                                } else {
                                    depends_on.push(dep);
                                }
                            }
                        }
                    }
                    "claims" => {
                        for (s, span) in self.string_array(v, &field) {
                            match Claim::parse(&s) {
                                Ok(claim) if claims.iter().any(|(c, _)| *c == claim) => {
                                    self.error(span, field.clone(), format!("`{claim}` is listed twice"), None);
                                    ok = false;
                                }
                                Ok(claim) if reserved_schema(&claim.schema) && claim.schema != "public" => {
                                    self.error(
                                        span,
                                        field.clone(),
                                        format!("schema `{}` cannot be claimed", claim.schema),
                                        Some("claims name objects in `public` or another shared schema".into()),
                                    );
                                    ok = false;
                                }
                                Ok(claim) => claims.push((claim, span)),
                                Err(message) => {
                                    self.error(
                                        span,
                                        field.clone(),
                                        message,
                                        Some(
                                            "write `schema.table` or `schema.prefix_*`, such as `public.customer_*`"
                                                .into(),
                                        ),
                                    );
                                    ok = false;
                                }
                            }
                        }
                    }
                    "connection_limit" => match self.limit(v, &field) {
                        Some(n) => connection_limit = Some(n),
                        None => ok = false,
                    },
                    "database" => match self.string(v, &field) {
                        Some(s) => match self.databases.iter().find(|d| d.name.as_str() == s) {
                            Some(d) => database = Some(d.name.clone()),
                            // Declared with an error of its own, reported there.
                            None if self.database_keys.contains(&s) => ok = false,
                            None => {
                                let known = self.database_keys.clone();
                                let help = closest(&s, &known).map(|c| format!("did you mean `{c}`?")).or_else(|| {
                                    Some(format!(
                                        "declare it:\n    [databases.{s}]\n    url_env = \"{}_DATABASE_URL\"",
                                        s.to_ascii_uppercase()
                                    ))
                                });
                                self.error(v.span(), field, format!("unknown database `{s}`"), help);
                                ok = false;
                            }
                        },
                        None => ok = false,
                    },
                    "transport" => transports_raw = self.transports(v, &field),
                    other => self.unknown_key(
                        k.span(),
                        other,
                        &prefix,
                        &[
                            "schema",
                            "migrations",
                            "sources",
                            "depends_on",
                            "claims",
                            "connection_limit",
                            "database",
                            "transport",
                        ],
                    ),
                }
            }
            let mut transports = BTreeMap::new();
            for (publisher, transport, span) in transports_raw {
                match depends_on.iter().find(|d| d.as_str() == publisher) {
                    Some(d) => {
                        transports.insert(d.clone(), transport);
                    }
                    None => {
                        self.error(
                            span,
                            format!("{prefix}.transport.{publisher}"),
                            format!("`{name}` does not depend on `{publisher}`, so it receives no events of it"),
                            Some(format!("add `{publisher}` to `depends_on`, or remove it here")),
                        );
                        ok = false;
                    }
                }
            }
            self.dependency_graph.push((name.to_string(), graph_deps, key.span()));
            self.declared_schemas.push(schema.0.clone());
            if !schema.0.as_str().is_empty() && reserved_schema(schema.0.as_str()) && schema.0.as_str() == name.as_str()
            {
                self.error(
                    key.span(),
                    prefix.clone(),
                    format!("module `{name}` would get the reserved schema `{name}`"),
                    Some("rename the module or set `schema = \"...\"`".into()),
                );
                ok = false;
            }
            if let Some(other) = schemas.get(schema.0.as_str()) {
                self.error(
                    schema.1.clone(),
                    format!("{prefix}.schema"),
                    format!("schema `{}` is already used by module `{other}`", schema.0),
                    Some("each module owns its own schema".into()),
                );
                ok = false;
            } else {
                schemas.insert(schema.0.as_str().to_owned(), name.to_string());
            }
            let migrations_key = format!("{prefix}.migrations");
            let migrations = self.path(&migrations_raw.0, migrations_raw.1, &migrations_key, true);
            if migrations.is_none() {
                if let Some(last) = self.errors.last_mut() {
                    last.help = Some(format!(
                        "create it (`mkdir -p {}`), or set `migrations = \"...\"` in `[{prefix}]`",
                        migrations_raw.0
                    ));
                }
                ok = false;
            }
            if ok && let Some(migrations) = migrations {
                self.claim_spans.extend(claims.iter().map(|(c, span)| (name.to_string(), c.clone(), span.clone())));
                let claims = claims.into_iter().map(|(c, _)| c).collect();
                modules.push((
                    Module {
                        name,
                        schema: schema.0,
                        migrations,
                        sources,
                        depends_on,
                        claims,
                        connection_limit,
                        database,
                        transports,
                    },
                    key.span(),
                ));
            }
        }
        // A claim in a module's own schema means nothing; the same claim in two modules is ambiguous.
        let claim_spans = std::mem::take(&mut self.claim_spans);
        for (i, (module, claim, span)) in claim_spans.iter().enumerate() {
            let key = format!("modules.{module}.claims");
            if let Some(owner) = modules.iter().find(|(m, _)| m.schema.as_str() == claim.schema) {
                self.error(
                    span.clone(),
                    key,
                    format!("claim `{claim}` is in schema `{}` of module `{}`", claim.schema, owner.0.name),
                    Some("a module can claim objects only in a schema that is no module's, such as `public`".into()),
                );
            } else if let Some((other, _, _)) = claim_spans[..i].iter().find(|(m, c, _)| c == claim && m != module) {
                self.error(span.clone(), key, format!("`{claim}` is also claimed by module `{other}`"), None);
            }
        }
        modules
    }

    /// `[databases.NAME] url_env = "VAR"`.
    fn databases(&mut self, entries: &[(&Spanned<std::borrow::Cow<'_, str>>, &Spanned<DeValue<'_>>)]) {
        for (key, value) in entries {
            let raw = key.get_ref().to_string();
            self.database_keys.push(raw.clone());
            let prefix = format!("databases.{raw}");
            let Some(name) = self.name(DatabaseName::parse, &raw, key.span(), &prefix) else {
                continue;
            };
            let Some(table) = self.table(value, &prefix) else {
                continue;
            };
            let mut url_env = None;
            for (k, v) in table.iter() {
                let field = format!("{prefix}.{}", k.get_ref());
                match k.get_ref().as_ref() {
                    "url_env" => {
                        let Some(s) = self.string(v, &field) else { continue };
                        let valid = s.chars().next().is_some_and(|c| c.is_ascii_uppercase() || c == '_')
                            && s.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
                        if !valid {
                            let looks_like_url = s.contains("://");
                            self.error(
                                v.span(),
                                field,
                                if looks_like_url {
                                    "`url_env` names an environment variable; the URL itself never goes in the manifest"
                                        .to_owned()
                                } else {
                                    format!("`{s}` is not an environment variable name")
                                },
                                Some(format!(
                                    "write `url_env = \"{}_DATABASE_URL\"` and put the URL in that variable",
                                    raw.to_ascii_uppercase()
                                )),
                            );
                        } else if ["MOAT_DATABASE_URL", "DATABASE_URL"].contains(&s.as_str()) {
                            self.error(
                                v.span(),
                                field,
                                format!("`{s}` holds the main database's URL"),
                                Some(format!(
                                    "use a variable of its own, such as `{}_DATABASE_URL`",
                                    raw.to_ascii_uppercase()
                                )),
                            );
                        } else if let Some(other) = self.databases.iter().find(|d| d.url_env == s) {
                            self.error(
                                v.span(),
                                field,
                                format!("`{s}` is also the `url_env` of database `{}`", other.name),
                                None,
                            );
                        } else {
                            url_env = Some(s);
                        }
                    }
                    other => self.unknown_key(k.span(), other, &prefix, &["url_env"]),
                }
            }
            match url_env {
                Some(url_env) => self.databases.push(Database { name, url_env }),
                None if !self.errors.iter().any(|e| e.key == format!("{prefix}.url_env")) => self.error(
                    key.span(),
                    format!("{prefix}.url_env"),
                    "missing `url_env`: the environment variable that holds the database's admin URL",
                    Some(format!("add `url_env = \"{}_DATABASE_URL\"`", raw.to_ascii_uppercase())),
                ),
                None => {}
            }
        }
    }

    /// What cannot cross a database: a view reads relations of one database only, and a login
    /// role connects to one database.
    fn across_databases(
        &mut self,
        modules: &[(Module, Range<usize>)],
        contracts: &[Contract],
        contract_tables: &[(&Spanned<std::borrow::Cow<'_, str>>, &Spanned<DeValue<'_>>)],
        consumers: &[(ConsumerName, Range<usize>)],
    ) {
        let database_of = |schema: &SchemaName| {
            modules.iter().find(|(m, _)| &m.schema == schema).map(|(m, _)| database_label(m.database.as_ref()))
        };
        let span_of = |contract: &ContractName| {
            contract_tables.iter().find(|(k, _)| k.get_ref().as_ref() == contract.as_str()).map(|(k, _)| k.span())
        };
        let mut contract_databases: Vec<(&Contract, String)> = Vec::new();
        for contract in contracts {
            let mut seen: Vec<(String, &QualifiedRelation)> = Vec::new();
            for read in &contract.reads {
                if let Some(db) = database_of(&read.schema)
                    && !seen.iter().any(|(d, _)| *d == db)
                {
                    seen.push((db, read));
                }
            }
            if seen.len() > 1 {
                let spread = seen.iter().map(|(db, read)| format!("`{read}` in {db}")).collect::<Vec<_>>().join(", ");
                self.error(
                    span_of(&contract.name).unwrap_or(0..0),
                    format!("contracts.{}.reads", contract.name),
                    format!("contract `{}` reads relations in more than one database: {spread}", contract.name),
                    Some(
                        "a view cannot read across databases: split it into one contract per database and compose \
                         the results in the application (API composition), or keep an event-fed read model of the \
                         other module's data in the reading side's database"
                            .into(),
                    ),
                );
            } else if let Some((db, _)) = seen.into_iter().next() {
                contract_databases.push((contract, db));
            }
        }
        for (consumer, span) in consumers {
            let mut seen: Vec<(&String, &ContractName)> = Vec::new();
            for (contract, db) in &contract_databases {
                if contract.readers.contains(consumer) && !seen.iter().any(|(d, _)| *d == db) {
                    seen.push((db, &contract.name));
                }
            }
            if seen.len() > 1 {
                let spread =
                    seen.iter().map(|(db, c)| format!("contract `{c}` in {db}")).collect::<Vec<_>>().join(", ");
                self.error(
                    span.clone(),
                    format!("consumers.{consumer}"),
                    format!("consumer `{consumer}` reads views in more than one database: {spread}"),
                    Some(
                        "a consumer's role logs in to one database: declare one consumer per database (such as \
                         `reporting_billing`), or compose the two reads in an API"
                            .into(),
                    ),
                );
            }
        }
    }

    fn consumers(
        &mut self,
        entries: &[(&Spanned<std::borrow::Cow<'_, str>>, &Spanned<DeValue<'_>>)],
        modules: &[(Module, Range<usize>)],
    ) -> Vec<(ConsumerName, Range<usize>)> {
        let mut consumers = Vec::new();
        for (key, value) in entries {
            let raw = key.get_ref().to_string();
            let prefix = format!("consumers.{raw}");
            let Some(name) = self.name(ConsumerName::parse, &raw, key.span(), &prefix) else {
                continue;
            };
            if let Some(table) = self.table(value, &prefix) {
                for (k, _) in table.iter() {
                    self.unknown_key(k.span(), k.get_ref(), &prefix, &[]);
                }
            }
            if modules.iter().any(|(m, _)| m.name.as_str() == name.as_str()) {
                self.error(
                    key.span(),
                    prefix,
                    format!("consumer `{name}` has the name of a module; their roles would collide"),
                    Some("rename the consumer".into()),
                );
                continue;
            }
            consumers.push((name, key.span()));
        }
        consumers
    }

    fn contracts(
        &mut self,
        entries: &[(&Spanned<std::borrow::Cow<'_, str>>, &Spanned<DeValue<'_>>)],
        modules: &[(Module, Range<usize>)],
        consumers: &[(ConsumerName, Range<usize>)],
    ) -> Vec<Contract> {
        let mut contracts = Vec::new();
        for (key, value) in entries {
            let raw = key.get_ref().to_string();
            let prefix = format!("contracts.{raw}");
            let Some(name) = self.name(ContractName::parse, &raw, key.span(), &prefix) else {
                continue;
            };
            let Some(table) = self.table(value, &prefix) else {
                continue;
            };
            let mut sql = None;
            let mut reads = Vec::new();
            let mut readers = Vec::new();
            let mut ok = true;
            for (k, v) in table.iter() {
                let field = format!("{prefix}.{}", k.get_ref());
                match k.get_ref().as_ref() {
                    "sql" => match self.string(v, &field) {
                        Some(s) => {
                            sql = self.path(&s, v.span(), &field, false);
                            ok &= sql.is_some();
                        }
                        None => ok = false,
                    },
                    "reads" => {
                        for (s, span) in self.string_array(v, &field) {
                            match self.qualified(&s, span, &field, modules) {
                                Some(q) => reads.push(q),
                                None => ok = false,
                            }
                        }
                    }
                    "readers" => {
                        for (s, span) in self.string_array(v, &field) {
                            match consumers.iter().find(|(c, _)| c.as_str() == s) {
                                Some((c, _)) => readers.push(c.clone()),
                                None => {
                                    self.error(
                                        span,
                                        field.clone(),
                                        format!("unknown consumer `{s}` in `readers`"),
                                        Some(format!("declare it as `[consumers.{s}]`")),
                                    );
                                    ok = false;
                                }
                            }
                        }
                    }
                    other => self.unknown_key(k.span(), other, &prefix, &["sql", "reads", "readers"]),
                }
            }
            if sql.is_none() && !self.errors.iter().any(|e| e.key == format!("{prefix}.sql")) {
                self.error(
                    key.span(),
                    format!("{prefix}.sql"),
                    "missing `sql`: the file with the contract's CREATE VIEW statements",
                    None,
                );
                ok = false;
            }
            if reads.is_empty() && ok {
                self.error(
                    key.span(),
                    format!("{prefix}.reads"),
                    "a contract must declare the relations it reads",
                    Some("add `reads = [\"schema.relation\", ...]`".into()),
                );
                ok = false;
            }
            if let (true, Some(sql)) = (ok, sql) {
                contracts.push(Contract { name, sql, reads, readers });
            }
        }
        contracts
    }

    fn qualified(
        &mut self,
        value: &str,
        span: Range<usize>,
        key: &str,
        modules: &[(Module, Range<usize>)],
    ) -> Option<QualifiedRelation> {
        let Some((schema, relation)) = value.split_once('.') else {
            self.error(
                span,
                key,
                format!("`{value}` is not `schema.relation`"),
                Some("name the module's schema and the relation, such as `patients.patients`".into()),
            );
            return None;
        };
        let schema = self.name(SchemaName::parse, schema, span.clone(), key)?;
        let relation = self.name(RelationName::parse, relation, span.clone(), key)?;
        if !modules.iter().any(|(m, _)| m.schema == schema) && !self.declared_schemas.contains(&schema) {
            let known: Vec<String> = modules.iter().map(|(m, _)| m.schema.to_string()).collect();
            let help = closest(schema.as_str(), &known).map(|c| format!("did you mean `{c}`?"));
            self.error(span, key, format!("`{value}` names schema `{schema}`, which belongs to no module"), help);
            return None;
        }
        Some(QualifiedRelation { schema, relation })
    }

    fn cycles(&mut self) {
        let graph: BTreeMap<&str, Vec<&str>> = self
            .dependency_graph
            .iter()
            .map(|(name, deps, _)| (name.as_str(), deps.iter().map(String::as_str).collect()))
            .collect();
        let mut found = Vec::new();
        let mut reported: Vec<Vec<&str>> = Vec::new();
        for (start, _, span) in &self.dependency_graph {
            if let Some(cycle) = find_cycle(&graph, start) {
                let mut canonical = cycle[..cycle.len() - 1].to_vec();
                canonical.sort_unstable();
                if reported.contains(&canonical) {
                    continue;
                }
                reported.push(canonical);
                found.push((start.clone(), cycle.join(" -> "), span.clone()));
            }
        }
        for (start, cycle, span) in found {
            self.error(
                span,
                format!("modules.{start}.depends_on"),
                format!("dependency cycle: {cycle}"),
                Some("modules must form a hierarchy; break the cycle with events instead of a dependency".into()),
            );
        }
    }

    fn role_collisions(
        &mut self,
        manifest: &Manifest,
        modules: &[(&Spanned<std::borrow::Cow<'_, str>>, &Spanned<DeValue<'_>>)],
        consumers: &[(&Spanned<std::borrow::Cow<'_, str>>, &Spanned<DeValue<'_>>)],
        contracts: &[(&Spanned<std::borrow::Cow<'_, str>>, &Spanned<DeValue<'_>>)],
    ) {
        let roles = manifest.roles();
        let span_of = |entries: &[(&Spanned<std::borrow::Cow<'_, str>>, &Spanned<DeValue<'_>>)], name: &str| {
            entries.iter().find(|(k, _)| k.get_ref() == name).map(|(k, _)| k.span()).unwrap_or(0..0)
        };
        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        seen.insert(roles.contracts_owner(), "the contracts owner".into());
        seen.insert(roles.relay(), "the event relay".into());
        seen.insert(roles.moat_owner(), "moat's own tables".into());
        let mut claims: Vec<(String, String, Range<usize>)> = Vec::new();
        for module in &manifest.modules {
            let span = span_of(modules, module.name.as_str());
            let key = format!("modules.{}", module.name);
            claims.push((roles.module_runtime(&module.name), key.clone(), span.clone()));
            claims.push((roles.module_migrator(&module.name), key.clone(), span.clone()));
            claims.push((roles.module_owner(&module.name), key, span));
        }
        for contract in &manifest.contracts {
            claims.push((
                roles.contract_owner(&contract.name),
                format!("contracts.{}", contract.name),
                span_of(contracts, contract.name.as_str()),
            ));
        }
        for consumer in &manifest.consumers {
            claims.push((
                roles.consumer(consumer),
                format!("consumers.{consumer}"),
                span_of(consumers, consumer.as_str()),
            ));
        }
        for (role, key, span) in claims {
            if let Some(holder) = seen.get(&role) {
                self.error(
                    span,
                    key.clone(),
                    format!("role `{role}` would be shared with {holder}"),
                    Some("rename one of them".into()),
                );
            } else {
                seen.insert(role, format!("`{key}`"));
            }
        }
    }
}

/// A dependency cycle through `start`, as a path that ends where it starts.
fn find_cycle<'a>(graph: &BTreeMap<&'a str, Vec<&'a str>>, start: &'a str) -> Option<Vec<&'a str>> {
    fn walk<'a>(
        graph: &BTreeMap<&'a str, Vec<&'a str>>,
        node: &'a str,
        start: &'a str,
        path: &mut Vec<&'a str>,
        seen: &mut Vec<&'a str>,
    ) -> bool {
        for &next in graph.get(node).map(Vec::as_slice).unwrap_or(&[]) {
            if next == start {
                path.push(next);
                return true;
            }
            if seen.contains(&next) {
                continue;
            }
            seen.push(next);
            path.push(next);
            if walk(graph, next, start, path, seen) {
                return true;
            }
            path.pop();
        }
        false
    }
    let mut path = vec![start];
    let mut seen = vec![start];
    walk(graph, start, start, &mut path, &mut seen).then_some(path)
}

/// The closest candidate by edit distance, if it is close enough to be a typo.
fn closest<'a>(value: &str, candidates: &'a [String]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edit_distance(value, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.as_str())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb { prev } else { 1 + prev.min(row[j]).min(row[j + 1]) };
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests;

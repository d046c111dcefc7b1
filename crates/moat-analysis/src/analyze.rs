//! The analysis in two passes over the sources, each in parallel: read every file (split, parse,
//! collect the facts of every statement, function body and embedded query), then learn which
//! objects the files create and run the rules on every statement.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::sync::{Arc, OnceLock};

use moat_core::findings::{Finding, sort};
use moat_core::manifest::Manifest;
use moat_core::names::CONTRACTS_SCHEMA;
use moat_core::rules::RuleId;
use moat_core::text::{LineCol, LineIndex};
use pg_query::{NodeEnum, ParserOptions};
use rayon::prelude::*;

use crate::ast::{self, Facts, Frame, Language, PathChange};
use crate::fragment::{OffsetMap, sql_string_value};
use crate::include::{self, Target};
use crate::layout::{self, MigrationFormat};
use crate::parse::{for_each_statement, parse_script, parse_text};
use crate::resolve::{Resolver, SearchPath, Symbols};
use crate::rules::{self, Cx, Hit, Owner};
use crate::suppress::{self, Suppression};
use crate::{Analysis, AnalysisInput, CouplingRow, CrossingKind, Source, SourceKind, Stats, embedded, plpgsql, script};

/// Function bodies inside function bodies are followed this deep.
const MAX_BODY_DEPTH: usize = 8;

/// A script follows at most this many includes (counting every include of included files): a
/// few files that each include the next twice would otherwise be read millions of times.
const MAX_INCLUDES: usize = 1_000;

/// Analyzes every source and returns the findings, sorted, and what was read.
pub fn analyze(input: &AnalysisInput<'_>) -> Analysis {
    let analysis = match pool() {
        Some(pool) => pool.install(|| analyze_here(input)),
        None => analyze_here(input),
    };
    // `rules()` is what `moat explain` and the catalog test take for the analysis's rules.
    debug_assert!(
        analysis.findings.iter().all(|f| rules::rules().contains(&f.rule)),
        "a finding of a rule missing from `moat_analysis::rules()`"
    );
    analysis
}

/// The threads the analysis runs on. Parse trees are decoded and walked recursively, and
/// PostgreSQL accepts expressions nested thousands deep (its parser caps them at 10,000
/// levels), so the threads get stacks large enough for any tree the parser returns. The memory
/// is reserved, not used, unless a tree is that deep.
fn pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new().thread_name(|i| format!("moat-analysis-{i}")).stack_size(1 << 30).build().ok()
    })
    .as_ref()
}

fn analyze_here(input: &AnalysisInput<'_>) -> Analysis {
    let unresolved = Resolver::new(input.manifest, Symbols::default());
    // What an include may name: the SQL files given, by name.
    let files: HashMap<&str, &str> = input
        .sources
        .iter()
        .filter(|s| !matches!(s.kind, SourceKind::RustSource { .. }))
        .map(|s| (s.file.as_str(), s.text))
        .collect();
    let read: Vec<FileRead<'_>> = input
        .sources
        .par_iter()
        .filter(|source| source.kind != SourceKind::Included)
        .map(|source| read_source(source, input.manifest, &unresolved, &files))
        .collect();

    let mut symbols = Symbols::default();
    for file in &read {
        for unit in &file.units {
            for creation in &unit.facts.creations {
                if let (Some(kind), Some(name), false) = (creation.kind, &creation.name, creation.attached)
                    && let Some(schema) = Resolver::creation_schema(name, &unit.path)
                {
                    symbols.add(kind, &schema, &name.name);
                }
            }
            for (kind, name) in &unit.facts.implicit {
                if let Some(schema) = Resolver::creation_schema(name, &unit.path) {
                    symbols.add(*kind, &schema, &name.name);
                }
            }
        }
    }
    let resolver = Resolver::new(input.manifest, symbols);
    // `ALTER FUNCTION f SET search_path` anywhere in a module pins the module's function `f`.
    let mut pinned: HashSet<String> = HashSet::new();
    for file in &read {
        for unit in &file.units {
            for name in &unit.facts.pinned_functions {
                if let Some(schema) = Resolver::creation_schema(name, &unit.path) {
                    pinned.insert(name.in_schema(&schema));
                }
            }
        }
    }

    let checked: Vec<Checked> =
        read.par_iter().map(|file| check_file(file, input.manifest, &resolver, &pinned)).collect();
    let mut analysis = Analysis::default();
    for source in input.sources.iter().filter(|s| s.kind == SourceKind::Included) {
        analysis.stats.files += 1;
        analysis.stats.bytes += source.text.len();
    }
    // A file included twice, or a migration that another migration also includes, is read in
    // each place (it runs in each); what it gives twice at the same place counts once. What a
    // script's own text gives is always kept; what came through an include is dropped when the
    // same finding (or crossing) was already kept.
    let mut crossings = Vec::new();
    let mut later_findings = Vec::new();
    let mut later_crossings = Vec::new();
    for checked in checked {
        analysis.stats.add(&checked.stats);
        for (finding, from_include) in checked.findings {
            if from_include {
                later_findings.push(finding);
            } else {
                analysis.findings.push(finding);
            }
        }
        for crossing in checked.crossings {
            if crossing.from_include {
                later_crossings.push(crossing);
            } else {
                crossings.push(crossing);
            }
        }
    }
    if !later_findings.is_empty() || !later_crossings.is_empty() {
        let mut seen: HashSet<FindingKey> = analysis.findings.iter().map(FindingKey::of).collect();
        for finding in later_findings {
            if seen.insert(FindingKey::of(&finding)) {
                analysis.findings.push(finding);
            }
        }
        let mut seen: HashSet<FindingKey> = crossings.iter().map(|c| c.key.clone()).collect();
        crossings.extend(later_crossings.into_iter().filter(|c| seen.insert(c.key.clone())));
    }
    let mut coupling: BTreeMap<(String, String), CouplingRow> = BTreeMap::new();
    for Crossing { from, to, kind, .. } in crossings {
        let row = coupling.entry((from.clone(), to.clone())).or_insert_with(|| CouplingRow {
            from,
            to,
            ..CouplingRow::default()
        });
        match kind {
            CrossingKind::ForeignKey => row.foreign_keys += 1,
            CrossingKind::Reference => row.references += 1,
            CrossingKind::FunctionCall => row.function_calls += 1,
        }
    }
    analysis.coupling = coupling.into_values().collect();
    for file in &read {
        if let (Some(format), SourceKind::Migration { module }) = (file.format, &file.source.kind) {
            analysis.migration_formats.entry(module.clone()).or_default().insert(format);
        }
    }
    analysis.findings.extend(crate::rules::unsafe_event_transport::check(input.manifest));
    sort(&mut analysis.findings);
    analysis
}

/// One statement (top-level, or inside a function body, DO block or embedded literal) with the
/// facts the rules read.
#[derive(Debug)]
pub(crate) struct Unit {
    /// The tree, until the tree checks have run (boxed: the unit outlives it, and a tree is
    /// several hundred bytes even when it is small).
    pub(crate) node: Option<Box<NodeEnum>>,
    /// What it references and creates.
    pub(crate) facts: Facts,
    /// The `search_path` in force.
    pub(crate) path: Arc<SearchPath>,
    /// The top-level statement it belongs to (suppressions apply per top-level statement).
    pub(crate) top: usize,
    /// Whether it sits inside a function body or DO block.
    pub(crate) nested: bool,
    /// `EXECUTE` of strings that cannot be known, in its PL/pgSQL body: where, and whose body.
    pub(crate) dynamic: Vec<(Range<usize>, String)>,
    /// `COMMIT`/`ROLLBACK` statements of its PL/pgSQL body (a procedure's or a DO block's).
    pub(crate) transaction_control: Vec<(&'static str, Range<usize>)>,
    text: Arc<str>,
    base: usize,
    stmt: Range<usize>,
    map: Arc<OffsetMap>,
}

impl Unit {
    /// The statement's frame.
    pub(crate) fn frame(&self) -> Frame<'_> {
        Frame { text: &self.text, base: self.base, stmt: self.stmt.clone(), map: &self.map }
    }
}

/// A top-level statement: the lines (segment, line) a suppression may target to silence its
/// findings.
#[derive(Debug, Default)]
struct Top {
    anchor_lines: Vec<(usize, u32)>,
}

/// One file whose text a script reads: the script's own file, then each file it includes. Each
/// has its own range of offsets (from `base`), so that a span says which file it is in.
struct Segment<'a> {
    file: &'a str,
    base: usize,
    len: usize,
    index: LineIndex<'a>,
}

/// The files a script reads, in the order of their offsets.
struct Segments<'a>(Vec<Segment<'a>>);

impl suppress::Lines for Segments<'_> {
    fn line_of(&self, offset: usize) -> (usize, u32) {
        let (segment, position) = self.line_col(offset);
        (segment, position.line)
    }
}

impl<'a> Segments<'a> {
    fn new(file: &'a str, text: &'a str) -> Self {
        Self(vec![Segment { file, base: 0, len: text.len(), index: LineIndex::new(text) }])
    }

    /// The segment that holds `offset`.
    fn at(&self, offset: usize) -> usize {
        self.0.partition_point(|s| s.base <= offset).saturating_sub(1)
    }

    /// The segment of `offset`, and its line and column there.
    fn line_col(&self, offset: usize) -> (usize, LineCol) {
        let k = self.at(offset);
        (k, self.0[k].index.line_col(offset - self.0[k].base))
    }

    /// The segment of `file`, added if new; and whether it is new.
    fn of(&mut self, file: &'a str, text: &'a str) -> (usize, bool) {
        if let Some(k) = self.0.iter().position(|s| s.file == file) {
            return (k, false);
        }
        let last = self.0.last().map_or(0, |s| s.base + s.len + 1);
        self.0.push(Segment { file, base: last, len: text.len(), index: LineIndex::new(text) });
        (self.0.len() - 1, true)
    }
}

/// What tells two findings apart when one file is read in several places.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FindingKey {
    rule: RuleId,
    module: Option<String>,
    file: Option<String>,
    span: Option<Range<usize>>,
    object: Option<String>,
    message: String,
}

impl FindingKey {
    fn of(f: &Finding) -> Self {
        Self {
            rule: f.rule,
            module: f.module.clone(),
            file: f.file.clone(),
            span: f.span.clone(),
            object: f.object.clone(),
            message: f.message.clone(),
        }
    }
}

/// A crossing from one module to another, for the coupling report.
struct Crossing {
    from: String,
    to: String,
    kind: CrossingKind,
    /// The finding it is, to count it once when its file is read in several places.
    key: FindingKey,
    /// Whether it is in a file reached through an include.
    from_include: bool,
}

struct FileRead<'a> {
    source: &'a Source<'a>,
    owner: Owner<'a>,
    manifest: &'a Manifest,
    /// Resolution for the tree checks, which run while the file is read.
    tree_resolver: &'a Resolver<'a>,
    /// The migration format the file follows (migrations only).
    format: Option<MigrationFormat>,
    /// Template placeholders in the file; statements that hold one are not checked.
    placeholders: Vec<Range<usize>>,
    /// Statements not checked because they hold a placeholder.
    template_skipped: usize,
    /// The file and the files it includes, by offset.
    segments: Segments<'a>,
    /// The SQL files an include may name, by name.
    files: &'a HashMap<&'a str, &'a str>,
    /// The files being read, the including ones first (an include of one of them is a cycle).
    chain: Vec<&'a str>,
    /// Includes followed so far.
    followed: usize,
    units: Vec<Unit>,
    tops: Vec<Top>,
    /// Parse errors, with their top-level statement.
    hits: Vec<(Hit, Option<usize>)>,
    suppressions: Vec<Suppression>,
    stats: Stats,
}

fn owner<'m>(kind: &'m SourceKind, manifest: &'m Manifest) -> Owner<'m> {
    match kind {
        SourceKind::Migration { module } | SourceKind::RustSource { module } => Owner::Module {
            name: module,
            schema: manifest.module(module).map_or(module.as_str(), |m| m.schema.as_str()),
        },
        SourceKind::Contract { contract } => Owner::Contract {
            name: contract,
            contract: manifest.contracts.iter().find(|c| c.name.as_str() == contract),
        },
        // Not read on its own: its text is read as its includer's.
        SourceKind::Included => Owner::Contract { name: "", contract: None },
    }
}

fn read_source<'a>(
    source: &'a Source<'a>,
    manifest: &'a Manifest,
    resolver: &'a Resolver<'a>,
    files: &'a HashMap<&'a str, &'a str>,
) -> FileRead<'a> {
    let owner = owner(&source.kind, manifest);
    let mut file = FileRead {
        source,
        owner,
        manifest,
        tree_resolver: resolver,
        format: None,
        placeholders: Vec::new(),
        template_skipped: 0,
        segments: Segments::new(&source.file, source.text),
        files,
        chain: vec![source.file.as_str()],
        followed: 0,
        units: Vec::new(),
        tops: Vec::new(),
        hits: Vec::new(),
        suppressions: Vec::new(),
        stats: Stats { files: 1, bytes: source.text.len(), ..Stats::default() },
    };
    let default_path: SearchPath = match owner {
        Owner::Module { schema, .. } => vec![schema.to_owned()],
        Owner::Contract { .. } => vec![CONTRACTS_SCHEMA.to_owned()],
    };
    match &source.kind {
        SourceKind::Migration { .. } => {
            // What runs on the way up is analyzed; the down parts are read for syntax only.
            let layout = layout::read(&source.file, source.text);
            file.format = Some(layout.format);
            let placeholders = layout::template_placeholders(source.text);
            let (up, down) = if placeholders.is_empty() {
                (layout.up, layout.down)
            } else {
                let fill = |t: &str| layout::fill_placeholders(t, &placeholders);
                (Cow::Owned(fill(&layout.up)), layout.down.as_deref().map(fill))
            };
            file.placeholders = placeholders;
            file.read_sql(&up, &OffsetMap::identity(0), true, &default_path, &[]);
            drop(up);
            if let Some(down) = down {
                file.read_syntax(&down);
            }
            if let Some(first) = file.placeholders.first().cloned() {
                let hit = rules::template_placeholder::hit(
                    first.clone(),
                    &source.text[first],
                    file.placeholders.len(),
                    file.template_skipped,
                );
                file.hits.push((hit, None));
            }
        }
        SourceKind::Contract { .. } => {
            file.read_sql(source.text, &OffsetMap::identity(0), true, &default_path, &[]);
        }
        SourceKind::Included => {}
        SourceKind::RustSource { .. } => match embedded::extract(source.text) {
            Ok(queries) => {
                file.suppressions.extend(suppress::in_rust(source.text));
                for query in queries {
                    file.stats.embedded_queries += 1;
                    file.read_sql(&query.sql, &query.map, false, &default_path, &query.anchor_lines);
                }
            }
            Err(error) => {
                let hit = Hit::new(
                    rules::parse_error::RULE,
                    error.span,
                    error.message.replace('"', "`"),
                    "moat reads the SQL embedded in this file with a Rust parser; fix the syntax error".into(),
                );
                file.stats.parse_errors += 1;
                file.hits.push((hit, None));
            }
        },
    }
    file
}

impl FileRead<'_> {
    fn parse_error(&mut self, span: Range<usize>, message: &str, top: Option<usize>) {
        self.stats.parse_errors += 1;
        self.hits.push((rules::parse_error::hit(span, message), top));
    }

    /// Runs the tree checks on a unit whose bodies have been read, then drops its tree: the
    /// name checks need only the facts, so no more than one group of trees exists at a time.
    fn tree_checks(&mut self, index: usize) {
        let unit = &self.units[index];
        let cx = Cx {
            kind: &self.source.kind,
            owner: self.owner,
            manifest: self.manifest,
            resolver: self.tree_resolver,
            unit,
        };
        let mut hits = Vec::new();
        for check in rules::TREE_CHECKS {
            check(&cx, &mut hits);
        }
        let top = unit.top;
        self.hits.extend(hits.into_iter().map(|hit| (hit, Some(top))));
        self.units[index].node = None;
    }

    /// Reads the down part of a migration for syntax only.
    fn read_syntax(&mut self, text: &str) {
        let script = script::split(text, true);
        let placeholders = std::mem::take(&mut self.placeholders);
        for_each_statement(&script, |statement| {
            self.stats.statements += 1;
            if let Err(error) = statement.parsed {
                if placeholders.iter().any(|p| p.start < statement.range.end && statement.range.start < p.end) {
                    return;
                }
                self.parse_error(error.span, &error.message, None);
            }
        });
        self.placeholders = placeholders;
    }

    /// Reads a SQL text (a file, or an embedded literal) whose offsets `map` takes to the file.
    fn read_sql(&mut self, text: &str, map: &OffsetMap, psql: bool, default_path: &SearchPath, anchors: &[u32]) {
        let mut path = Arc::new(default_path.clone());
        self.read_script(text, map, psql, default_path, anchors, &mut path, true);
    }

    /// Reads a SQL text with the `search_path` `path` in force, and leaves in `path` the one in
    /// force at its end; follows its includes in place. With `suppressions`, collects its
    /// `moat:allow` comments (once per file).
    #[allow(clippy::too_many_arguments)]
    fn read_script(
        &mut self,
        text: &str,
        map: &OffsetMap,
        psql: bool,
        default_path: &SearchPath,
        anchors: &[u32],
        path: &mut Arc<SearchPath>,
        suppressions: bool,
    ) {
        let script = script::split(text, psql);
        self.stats.meta_commands += script.meta_commands;
        self.stats.copy_data_lines += script.copy_data_lines;
        if let Some((first, _)) = script.variables.first() {
            let names: Vec<&str> = script.variables.iter().map(|(_, n)| n.as_str()).collect();
            self.hits.push((rules::psql_variable::hit(map.map_range(first.clone()), &names), None));
        }
        for &nul in &script.nuls {
            let at = map.map(nul);
            self.parse_error(at..at + 1, "the text holds a NUL character, which PostgreSQL cannot read", None);
        }
        if suppressions {
            let found = suppress::in_sql(&script.text, map, &self.segments);
            self.suppressions.extend(found);
        }
        let text = Arc::clone(&script.text);
        let map = Arc::new(map.clone());
        let placeholders = std::mem::take(&mut self.placeholders);
        // An include runs where it stands: before the statement that is not complete there.
        let includes = &script.includes;
        let mut next_include = 0;
        for_each_statement(&script, |statement| {
            while let Some(include) = includes.get(next_include).filter(|i| i.0.start < statement.range.end) {
                self.include(include, &map, default_path, path);
                next_include += 1;
            }
            self.stats.statements += 1;
            if !placeholders.is_empty() {
                let span = map.map_range(statement.range.clone());
                if placeholders.iter().any(|p| p.start < span.end && span.start < p.end) {
                    self.template_skipped += 1;
                    return;
                }
            }
            let top = self.tops.len();
            let (segment, first) = self.segments.line_col(map.map(statement.first_token));
            let mut anchor_lines = vec![(segment, first.line)];
            anchor_lines.extend(anchors.iter().map(|&line| (0, line)));
            self.tops.push(Top { anchor_lines });
            match statement.parsed {
                Err(error) => {
                    let span = map.map_range(error.span.clone());
                    self.parse_error(span, &error.message, Some(top));
                }
                Ok(node) => {
                    let changes = self.unit(node, &text, statement.base, statement.range, &map, path, top, 0);
                    for change in changes {
                        *path = Arc::new(match change {
                            PathChange::Set(p) => p,
                            PathChange::Default => default_path.clone(),
                        });
                    }
                }
            }
        });
        for include in &includes[next_include..] {
            self.include(include, &map, default_path, path);
        }
        self.placeholders = placeholders;
    }

    /// Follows one include of the text that `map` takes to the file, or reports why not.
    fn include(
        &mut self,
        (range, target, relative): &(Range<usize>, String, bool),
        map: &OffsetMap,
        default_path: &SearchPath,
        path: &mut Arc<SearchPath>,
    ) {
        let span = map.map_range(range.clone());
        let includer = self.segments.0[self.segments.at(span.start)].file;
        let refused = match include::resolve(&self.manifest.root, includer, target) {
            Target::Refused(why) => why,
            Target::File(name) => match self.files.get_key_value(name.as_str()) {
                None => {
                    format!("there is no file `{name}` inside the project (a symbolic link out of it does not count)")
                }
                Some(_) if self.chain.contains(&name.as_str()) => {
                    format!("`{name}` is already being read: the include would repeat forever")
                }
                Some(_) if self.followed >= MAX_INCLUDES => {
                    format!("the script already follows {MAX_INCLUDES} includes, the most moat follows")
                }
                Some((&file, &text)) => {
                    self.followed += 1;
                    let (segment, new) = self.segments.of(file, text);
                    let base = self.segments.0[segment].base;
                    self.chain.push(file);
                    self.read_script(text, &OffsetMap::identity(base), true, default_path, &[], path, new);
                    self.chain.pop();
                    return;
                }
            },
        };
        self.hits.push((rules::psql_include::hit(span, target, *relative, &refused), None));
    }

    /// Collects one statement's facts, records it, and reads the bodies it holds; returns its
    /// `search_path` changes.
    #[allow(clippy::too_many_arguments)]
    fn unit(
        &mut self,
        node: NodeEnum,
        text: &Arc<str>,
        base: usize,
        stmt: Range<usize>,
        map: &Arc<OffsetMap>,
        path: &Arc<SearchPath>,
        top: usize,
        depth: usize,
    ) -> Vec<PathChange> {
        let frame = Frame { text, base, stmt: stmt.clone(), map };
        let mut facts = ast::collect(&node, &frame);
        let bodies = std::mem::take(&mut facts.bodies);
        let changes = facts.path_changes.clone();
        let label = function_label(&node);
        self.units.push(Unit {
            node: Some(Box::new(node)),
            facts,
            path: Arc::clone(path),
            top,
            nested: depth > 0,
            dynamic: Vec::new(),
            transaction_control: Vec::new(),
            text: Arc::clone(text),
            base,
            stmt,
            map: Arc::clone(map),
        });
        let index = self.units.len() - 1;
        if depth < MAX_BODY_DEPTH {
            self.bodies(bodies, index, path, top, depth, &label);
        }
        self.tree_checks(index);
        changes
    }

    /// Reads the function bodies and DO blocks of unit `index`.
    fn bodies(
        &mut self,
        bodies: Vec<ast::Body>,
        index: usize,
        path: &Arc<SearchPath>,
        top: usize,
        depth: usize,
        label: &str,
    ) {
        for body in bodies {
            let body_path = body.pinned_path.clone().map_or_else(|| Arc::clone(path), Arc::new);
            match body.language {
                Language::Sql => self.nested_sql(&body.text, &body.map, &body_path, top, depth + 1),
                Language::Plpgsql => match plpgsql::read(&body) {
                    Err(error) => self.parse_error(error.span, &error.message, Some(top)),
                    Ok(read) => {
                        self.units[index].transaction_control.extend(read.transaction_control);
                        for expression in read.expressions {
                            if expression.dynamic {
                                // A constant string runs known SQL; anything else cannot be checked.
                                match constant_string(&expression.query) {
                                    Some((sql, literal)) => {
                                        let map = expression.map.compose(&literal, sql.len());
                                        self.nested_sql(&sql, &map, &body_path, top, depth + 1);
                                    }
                                    None => {
                                        let span = expression.map.map_range(0..expression.query.len());
                                        self.units[index].dynamic.push((span, label.to_owned()));
                                    }
                                }
                                continue;
                            }
                            let mode = ParserOptions::from(expression.mode);
                            match parse_text(&expression.query, mode) {
                                Ok(nodes) => {
                                    let text: Arc<str> = Arc::from(expression.query.as_str());
                                    let map = Arc::new(expression.map.clone());
                                    for (node, _, _) in nodes {
                                        self.unit(node, &text, 0, 0..text.len(), &map, &body_path, top, depth + 1);
                                    }
                                }
                                Err(message) => {
                                    let span = crate::parse::locate_error(&expression.query, &message, mode);
                                    self.parse_error(expression.map.map_range(span), &message, Some(top));
                                }
                            }
                        }
                    }
                },
            }
        }
    }

    /// SQL inside a body or an `EXECUTE`d constant: its statements belong to `top`.
    fn nested_sql(&mut self, sql: &str, map: &OffsetMap, path: &Arc<SearchPath>, top: usize, depth: usize) {
        let script = script::split(sql, false);
        let statements = parse_script(&script);
        let text = Arc::clone(&script.text);
        let map = Arc::new(map.clone());
        let mut path = Arc::clone(path);
        for statement in statements {
            match statement.parsed {
                Err(error) => {
                    let span = map.map_range(error.span.clone());
                    self.parse_error(span, &error.message, Some(top));
                }
                Ok(node) => {
                    for change in self.unit(node, &text, statement.base, statement.range, &map, &path, top, depth) {
                        if let PathChange::Set(p) = change {
                            path = Arc::new(p);
                        }
                    }
                }
            }
        }
    }
}

/// `function `x`` or `DO block`, for dynamic-SQL findings.
fn function_label(node: &NodeEnum) -> String {
    match node {
        NodeEnum::CreateFunctionStmt(f) => {
            ast::name_of(&f.funcname).map_or_else(|| "function".into(), |n| n.to_string())
        }
        NodeEnum::DoStmt(_) => "DO block".into(),
        _ => "body".into(),
    }
}

/// The value of an expression that is one string constant, and its map into the expression.
fn constant_string(expression: &str) -> Option<(String, OffsetMap)> {
    let start = script::skip_trivia(expression, 0);
    let token = ast::lexical::string_token_at(expression, start)?;
    if !expression[token.end..].trim().is_empty() {
        return None;
    }
    let (value, literal) = sql_string_value(&expression[token.clone()])?;
    Some((value, literal.shifted(token.start)))
}

/// One script's findings (and whether each is in a file it includes), what it read, and its
/// crossings.
struct Checked {
    findings: Vec<(Finding, bool)>,
    stats: Stats,
    crossings: Vec<Crossing>,
}

fn check_file(file: &FileRead<'_>, manifest: &Manifest, resolver: &Resolver<'_>, pinned: &HashSet<String>) -> Checked {
    let mut hits: Vec<(Hit, Option<usize>)> = file.hits.clone();
    for (hit, _) in &mut hits {
        if let Some(object) = hit.object.clone().filter(|o| pinned.contains(o)) {
            rules::security_definer_function::pinned_later(hit, &object);
        }
    }
    let mut unit_hits = Vec::new();
    for unit in &file.units {
        let cx = Cx { kind: &file.source.kind, owner: file.owner, manifest, resolver, unit };
        for check in rules::NAME_CHECKS {
            check(&cx, &mut unit_hits);
        }
        hits.extend(unit_hits.drain(..).map(|hit| (hit, Some(unit.top))));
    }

    let module = match file.owner {
        Owner::Module { name, .. } => Some(name.to_owned()),
        Owner::Contract { .. } => None,
    };
    // A finding, its segment, and whether that is a file the script includes.
    let finding = |hit: Hit| -> (Finding, usize) {
        let (segment, position) = file.segments.line_col(hit.span.start);
        let base = file.segments.0[segment].base;
        let finding = Finding {
            rule: hit.rule,
            severity: hit.severity,
            module: module.clone(),
            file: Some(file.segments.0[segment].file.to_owned()),
            line: Some(position.line),
            column: Some(position.column),
            object: hit.object,
            database: None,
            message: hit.message,
            help: Some(hit.help),
            span: Some(hit.span.start - base..hit.span.end - base),
        };
        (finding, segment)
    };
    let crossings = hits
        .iter()
        .filter_map(|(hit, _)| {
            let (to, kind) = hit.crossing.clone()?;
            let (finding, segment) = finding(hit.clone());
            Some(Crossing { from: module.clone()?, to, kind, key: FindingKey::of(&finding), from_include: segment > 0 })
        })
        .collect();

    // Suppressions: a suppression silences findings of its rules in the statement whose first
    // line it targets, or on that line.
    let mut used: Vec<HashSet<&str>> = vec![HashSet::new(); file.suppressions.len()];
    let mut findings = Vec::new();
    for (hit, top) in hits {
        let (finding, segment) = finding(hit);
        let silenced_by = file.suppressions.iter().position(|s| {
            s.rules.iter().any(|r| finding.rule == r.as_str())
                && s.target_line.is_some_and(|target| {
                    (segment == s.segment && finding.line == Some(target))
                        || top.is_some_and(|t| {
                            file.tops.get(t).is_some_and(|t| t.anchor_lines.contains(&(s.segment, target)))
                        })
                })
        });
        match silenced_by {
            Some(k) => {
                let rule = file.suppressions[k].rules.iter().find(|r| finding.rule == r.as_str());
                if let Some(rule) = rule {
                    used[k].insert(rule.as_str());
                }
            }
            None => findings.push((finding, segment > 0)),
        }
    }
    let mut push = |(finding, segment): (Finding, usize)| findings.push((finding, segment > 0));
    for (suppression, used) in file.suppressions.iter().zip(&used) {
        for rule in &suppression.rules {
            if !used.contains(rule.as_str()) {
                push(finding(rules::unused_suppression::hit(suppression, rule)));
            }
        }
        if suppression.reason.is_none() {
            push(finding(rules::suppression_without_reason::hit(suppression)));
        }
    }
    Checked { findings, stats: file.stats, crossings }
}

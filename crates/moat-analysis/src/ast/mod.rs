//! What a statement's tree says, as facts the rules read: the objects it references (with their
//! names as written and where), the objects it creates, the function bodies and DO blocks it
//! holds, and the `search_path` changes it makes.

pub(crate) mod lexical;
pub(crate) mod walk;

use std::ops::Range;

use pg_query::protobuf::{self, Node, ObjectType};
use pg_query::{NodeEnum, NodeRef};

use crate::fragment::{OffsetMap, sql_string_value};
use crate::resolve::{ObjectKind, QualifiedName, SearchPath, TEMP_SCHEMA, parse_search_path};

/// A text being analyzed, where one statement sits in it, and where the text sits in the file.
#[derive(Debug, Clone)]
pub(crate) struct Frame<'t> {
    /// The text (a file, a function body, an embedded literal's value).
    pub(crate) text: &'t str,
    /// The offset in `text` that the tree's locations count from.
    pub(crate) base: usize,
    /// The statement's range in `text`.
    pub(crate) stmt: Range<usize>,
    /// From `text` offsets to file offsets.
    pub(crate) map: &'t OffsetMap,
}

impl Frame<'_> {
    /// The text offset of a tree location (`-1` means none).
    pub(crate) fn offset(&self, location: i32) -> Option<usize> {
        let location = usize::try_from(location).ok()?;
        let offset = self.base + location;
        (offset <= self.text.len() && self.text.is_char_boundary(offset)).then_some(offset)
    }

    /// The file range of a text range.
    pub(crate) fn file_span(&self, range: Range<usize>) -> Range<usize> {
        self.map.map_range(range)
    }

    /// The file span of the name written at a tree location, or of `name` found in the
    /// statement, or the statement's start.
    pub(crate) fn name_span(&self, location: i32, name: Option<&QualifiedName>) -> Range<usize> {
        if let Some(offset) = self.offset(location) {
            let end = lexical::name_extent(self.text, offset);
            return self.file_span(offset..end.max(offset));
        }
        if let Some(found) = name.and_then(|n| lexical::find_name(self.text, self.stmt.clone(), n)) {
            return self.file_span(found);
        }
        self.statement_start()
    }

    /// The file span of an identifier written in the statement, or the statement's start.
    pub(crate) fn word_span(&self, word: &str) -> Range<usize> {
        match lexical::find_word(self.text, self.stmt.clone(), word) {
            Some(found) => self.file_span(found),
            None => self.statement_start(),
        }
    }

    /// An empty span at the statement's first token.
    pub(crate) fn statement_start(&self) -> Range<usize> {
        let start = crate::script::skip_trivia(self.text, self.stmt.start);
        let file = self.map.map(start);
        file..file
    }

    /// The span of the statement's first word (`CREATE`, `GRANT`, `RESET`).
    pub(crate) fn keyword_span(&self) -> Range<usize> {
        let start = crate::script::skip_trivia(self.text, self.stmt.start);
        let rest = self.text.get(start..).unwrap_or("");
        let len = rest.find(|c: char| !c.is_alphanumeric() && c != '_').unwrap_or(rest.len());
        self.file_span(start..start + len)
    }

    /// The statement's text.
    pub(crate) fn statement_text(&self) -> &str {
        self.text.get(self.stmt.clone()).unwrap_or("")
    }
}

/// A reference to an existing object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reference {
    /// What kind of object.
    pub(crate) kind: ObjectKind,
    /// Its name as written.
    pub(crate) name: QualifiedName,
    /// Where, in the file.
    pub(crate) span: Range<usize>,
    /// Whether it is the referenced table of a foreign key.
    pub(crate) foreign_key: bool,
    /// Whether the statement names it as the object of DDL (DROP, COMMENT, ALTER ... OWNER,
    /// GRANT) rather than reading or calling it.
    pub(crate) target: bool,
}

/// An object the statement creates (or moves into a schema).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Creation {
    /// What it is, for messages: `table`, `index`, `event trigger`.
    pub(crate) what: &'static str,
    /// Its name as written; for objects that live with a table (indexes, triggers, policies,
    /// rules) the table's name. `None` for objects that belong to no schema.
    pub(crate) name: Option<QualifiedName>,
    /// The object's own name, for messages.
    pub(crate) label: String,
    /// The namespace it is looked up in later, if other statements can reference it.
    pub(crate) kind: Option<ObjectKind>,
    /// Whether `name` is an existing table the object is attached to (resolved like a
    /// reference) rather than the new object's own name (created in the first schema of the path).
    pub(crate) attached: bool,
    /// Where, in the file.
    pub(crate) span: Range<usize>,
}

/// The language of a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Language {
    /// `LANGUAGE sql`.
    Sql,
    /// `LANGUAGE plpgsql` (and DO blocks without a language).
    Plpgsql,
}

/// A function body or DO block, to be analyzed as SQL or PL/pgSQL.
#[derive(Debug, Clone)]
pub(crate) struct Body {
    /// Its language.
    pub(crate) language: Language,
    /// The body's text (the string constant's value).
    pub(crate) text: String,
    /// From body offsets to file offsets.
    pub(crate) map: OffsetMap,
    /// What `pg_query::parse_plpgsql` reads: the `CREATE FUNCTION` statement, or a wrapper
    /// function around a DO block's body.
    pub(crate) plpgsql_source: String,
    /// The `search_path` the function pins with `SET search_path`, if any.
    pub(crate) pinned_path: Option<SearchPath>,
    /// The body's string constant, in the file.
    pub(crate) span: Range<usize>,
}

/// A change of `search_path` made by a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PathChange {
    /// `SET search_path TO ...`, `set_config('search_path', ...)`.
    Set(SearchPath),
    /// `SET search_path TO DEFAULT`, `RESET search_path`.
    Default,
}

/// Everything a statement's tree says that the rules need.
#[derive(Debug, Clone, Default)]
pub(crate) struct Facts {
    /// Objects referenced.
    pub(crate) references: Vec<Reference>,
    /// Objects created.
    pub(crate) creations: Vec<Creation>,
    /// Bodies to analyze.
    pub(crate) bodies: Vec<Body>,
    /// `search_path` changes, in order.
    pub(crate) path_changes: Vec<PathChange>,
    /// `set_config('role' | 'session_authorization', ...)` calls: a `SET ROLE` in disguise.
    pub(crate) role_changes: Vec<(String, Range<usize>)>,
    /// `set_config` calls that can change any setting or the `search_path` to a value not known
    /// before it runs: what is not constant (`the setting's name`, `the search_path`), and where.
    pub(crate) dynamic_settings: Vec<(&'static str, Range<usize>)>,
    /// Functions that `ALTER FUNCTION ... SET search_path` pins.
    pub(crate) pinned_functions: Vec<QualifiedName>,
    /// Objects that exist after the statement without being created by name: the sequence of a
    /// `serial` or identity column, the new name of a renamed relation. Name resolution knows
    /// them; no rule reports them.
    pub(crate) implicit: Vec<(ObjectKind, QualifiedName)>,
}

/// Collects the facts of one statement.
pub(crate) fn collect(node: &NodeEnum, frame: &Frame<'_>) -> Facts {
    let mut collector = Collector {
        frame,
        facts: Facts::default(),
        ctes: Vec::new(),
        skip: Vec::new(),
        schema_default: None,
        into_what: None,
    };
    collector.visit(node.to_ref());
    collector.facts
}

/// The `String` values of a list of nodes (a name's parts).
pub(crate) fn strings(nodes: &[Node]) -> Vec<String> {
    nodes
        .iter()
        .filter_map(|n| match &n.node {
            Some(NodeEnum::String(s)) => Some(s.sval.clone()),
            _ => None,
        })
        .collect()
}

/// A name from a list of `String` nodes.
pub(crate) fn name_of(nodes: &[Node]) -> Option<QualifiedName> {
    QualifiedName::from_parts(&strings(nodes))
}

/// The name of a `RangeVar`.
pub(crate) fn range_var_name(rv: &protobuf::RangeVar) -> QualifiedName {
    QualifiedName { schema: (!rv.schemaname.is_empty()).then(|| rv.schemaname.clone()), name: rv.relname.clone() }
}

/// The string value of an `A_Const` node.
pub(crate) fn const_string(node: Option<&Node>) -> Option<(&str, i32)> {
    match node?.node.as_ref()? {
        NodeEnum::AConst(c) => match &c.val {
            Some(protobuf::a_const::Val::Sval(s)) => Some((s.sval.as_str(), c.location)),
            _ => None,
        },
        _ => None,
    }
}

/// The string value of a constant, also behind casts (`'search_path'::text`).
fn const_string_through_casts(node: Option<&Node>) -> Option<(&str, i32)> {
    match node?.node.as_ref()? {
        NodeEnum::TypeCast(cast) => const_string_through_casts(cast.arg.as_deref()),
        _ => const_string(node),
    }
}

/// The string form of a constant (`SET x = 1` has an integer), for settings.
fn const_text(node: &Node) -> Option<String> {
    match node.node.as_ref()? {
        NodeEnum::AConst(c) => match &c.val {
            Some(protobuf::a_const::Val::Sval(s)) => Some(s.sval.clone()),
            Some(protobuf::a_const::Val::Ival(i)) => Some(i.ival.to_string()),
            Some(protobuf::a_const::Val::Fval(f)) => Some(f.fval.clone()),
            Some(protobuf::a_const::Val::Boolval(b)) => Some(b.boolval.to_string()),
            _ => None,
        },
        _ => None,
    }
}

/// What a `CREATE FUNCTION` statement's options say.
#[derive(Debug, Clone, Default)]
pub(crate) struct FunctionOptions<'n> {
    /// `LANGUAGE x`, lowercased.
    pub(crate) language: Option<String>,
    /// The location of `SECURITY DEFINER`, when present.
    pub(crate) security_definer: Option<i32>,
    /// `SET search_path ...`: the pinned path.
    pub(crate) pinned_path: Option<SearchPath>,
    /// `AS '...'`: the body and the option's location.
    pub(crate) body: Option<(&'n str, i32)>,
}

/// Reads the options of `CREATE FUNCTION` / `ALTER FUNCTION`.
pub(crate) fn function_options(options: &[Node]) -> FunctionOptions<'_> {
    let mut out = FunctionOptions::default();
    for option in options {
        let Some(NodeEnum::DefElem(def)) = &option.node else { continue };
        let arg = def.arg.as_deref().and_then(|a| a.node.as_ref());
        match (def.defname.as_str(), arg) {
            ("language", Some(NodeEnum::String(s))) => out.language = Some(s.sval.to_lowercase()),
            ("security", Some(NodeEnum::Boolean(b))) => {
                out.security_definer = b.boolval.then_some(def.location);
            }
            ("set", Some(NodeEnum::VariableSetStmt(set))) if set.name == "search_path" => {
                out.pinned_path = Some(set_values(set).unwrap_or_default());
            }
            ("as", Some(NodeEnum::List(list))) if list.items.len() == 1 => {
                if let Some(NodeEnum::String(s)) = list.items[0].node.as_ref() {
                    out.body = Some((s.sval.as_str(), def.location));
                }
            }
            _ => {}
        }
    }
    out
}

/// The values of `SET search_path TO a, b`; `None` for `DEFAULT`, `RESET` and `FROM CURRENT`.
fn set_values(set: &protobuf::VariableSetStmt) -> Option<SearchPath> {
    use protobuf::VariableSetKind as K;
    if set.kind == K::VarSetValue as i32 {
        Some(
            set.args
                .iter()
                .filter_map(const_text)
                .flat_map(|v| if v.contains(',') { parse_search_path(&v) } else { vec![v] })
                .collect(),
        )
    } else {
        None
    }
}

struct Collector<'f, 't> {
    frame: &'f Frame<'t>,
    facts: Facts,
    /// Names of common table expressions: unqualified references to them are not relations.
    ctes: Vec<String>,
    /// Addresses of `RangeVar`s that name a created object, not a referenced one.
    skip: Vec<usize>,
    /// `CREATE SCHEMA s CREATE TABLE t`: unqualified names are created in `s`.
    schema_default: Option<String>,
    /// What the next `INTO` clause creates.
    into_what: Option<&'static str>,
}

fn address<T>(value: &T) -> usize {
    std::ptr::from_ref(value) as usize
}

impl Collector<'_, '_> {
    fn visit(&mut self, node: NodeRef<'_>) {
        self.before(node);
        walk::for_each_child(node, &mut |child| self.visit(child));
    }

    fn reference(&mut self, kind: ObjectKind, name: QualifiedName, span: Range<usize>, foreign_key: bool) {
        self.facts.references.push(Reference { kind, name, span, foreign_key, target: false });
    }

    /// A name the tree gives no location for: the object of DDL.
    fn unlocated(&mut self, kind: ObjectKind, name: Option<QualifiedName>) {
        if let Some(name) = name {
            let span = self.frame.name_span(-1, Some(&name));
            self.facts.references.push(Reference { kind, name, span, foreign_key: false, target: true });
        }
    }

    fn create(
        &mut self,
        what: &'static str,
        kind: Option<ObjectKind>,
        name: Option<QualifiedName>,
        span: Range<usize>,
    ) {
        let name = name.map(|mut n| {
            if n.schema.is_none() {
                n.schema.clone_from(&self.schema_default);
            }
            n
        });
        let label = name.as_ref().map(ToString::to_string).unwrap_or_default();
        self.facts.creations.push(Creation { what, name, label, kind, attached: false, span });
    }

    fn create_range_var(&mut self, what: &'static str, kind: ObjectKind, rv: &protobuf::RangeVar) {
        self.skip.push(address(rv));
        if rv.relpersistence == "t" {
            // Temporary: not a module's object, but later statements may name it.
            let name = QualifiedName { schema: Some(TEMP_SCHEMA.to_owned()), name: rv.relname.clone() };
            self.facts.implicit.push((kind, name));
            return;
        }
        let name = range_var_name(rv);
        let span = self.frame.name_span(rv.location, Some(&name));
        self.create(what, Some(kind), Some(name), span);
    }

    fn create_named(&mut self, what: &'static str, kind: Option<ObjectKind>, parts: &[Node]) {
        let name = name_of(parts);
        let span = match &name {
            Some(n) => self.frame.name_span(-1, Some(n)),
            None => self.frame.statement_start(),
        };
        self.create(what, kind, name, span);
    }

    fn create_global(&mut self, what: &'static str, label: &str) {
        let span = if label.is_empty() { self.frame.statement_start() } else { self.frame.word_span(label) };
        self.facts.creations.push(Creation {
            what,
            name: None,
            label: label.to_owned(),
            kind: None,
            attached: false,
            span,
        });
    }

    fn attach(&mut self, what: &'static str, table: Option<&protobuf::RangeVar>, own_name: &str) {
        let Some(rv) = table else { return };
        self.skip.push(address(rv));
        let name = range_var_name(rv);
        let span = self.frame.name_span(rv.location, Some(&name));
        self.facts.creations.push(Creation {
            what,
            name: Some(name),
            label: own_name.to_owned(),
            kind: None,
            attached: true,
            span,
        });
    }

    fn before(&mut self, node: NodeRef<'_>) {
        use protobuf::ConstrType;
        match node {
            NodeRef::RangeVar(rv) => {
                if self.skip.contains(&address(rv)) {
                    return;
                }
                let name = range_var_name(rv);
                if name.schema.is_none() && self.ctes.contains(&name.name) {
                    return;
                }
                let span = self.frame.name_span(rv.location, Some(&name));
                self.reference(ObjectKind::Relation, name, span, false);
            }
            NodeRef::FuncCall(call) => self.func_call(call),
            NodeRef::TypeCast(cast) => self.type_cast(cast),
            NodeRef::TypeName(type_name) => self.type_name(type_name),
            NodeRef::Constraint(c) if c.contype == ConstrType::ConstrForeign as i32 => {
                if let Some(pk) = &c.pktable {
                    self.skip.push(address(pk));
                    let name = range_var_name(pk);
                    let span = self.frame.name_span(pk.location, Some(&name));
                    self.reference(ObjectKind::Relation, name, span, true);
                }
            }
            NodeRef::ObjectWithArgs(o) => {
                let parts = strings(&o.objname);
                let operator = parts.last().is_some_and(|p| !p.chars().any(|c| c.is_alphanumeric() || c == '_'));
                let kind = if operator { ObjectKind::Operator } else { ObjectKind::Function };
                self.unlocated(kind, QualifiedName::from_parts(&parts));
            }
            NodeRef::CommonTableExpr(cte) => self.ctes.push(cte.ctename.clone()),
            // The walk reaches `WITH` after `FROM`: learn the names first.
            NodeRef::SelectStmt(q) => self.with_names(q.with_clause.as_ref()),
            NodeRef::InsertStmt(q) => self.with_names(q.with_clause.as_ref()),
            NodeRef::UpdateStmt(q) => self.with_names(q.with_clause.as_ref()),
            NodeRef::DeleteStmt(q) => self.with_names(q.with_clause.as_ref()),
            NodeRef::MergeStmt(q) => self.with_names(q.with_clause.as_ref()),
            NodeRef::CreateStmt(s) => {
                if let Some(rv) = &s.relation {
                    self.create_range_var("table", ObjectKind::Relation, rv);
                    self.implicit_sequences(rv, &s.table_elts);
                }
            }
            NodeRef::AlterTableStmt(a) => {
                if let Some(rv) = &a.relation {
                    let columns: Vec<&Node> = a
                        .cmds
                        .iter()
                        .filter_map(|c| match &c.node {
                            Some(NodeEnum::AlterTableCmd(cmd)) => cmd.def.as_deref(),
                            _ => None,
                        })
                        .collect();
                    self.implicit_sequences_of(rv, columns.into_iter());
                }
            }
            NodeRef::CreateTableAsStmt(s) => {
                self.into_what =
                    Some(if s.objtype == ObjectType::ObjectMatview as i32 { "materialized view" } else { "table" });
            }
            NodeRef::IntoClause(into) => {
                let what = self.into_what.take().unwrap_or("table");
                if let Some(rv) = &into.rel {
                    self.create_range_var(what, ObjectKind::Relation, rv);
                }
            }
            NodeRef::ViewStmt(v) => {
                if let Some(rv) = &v.view {
                    self.create_range_var("view", ObjectKind::Relation, rv);
                }
            }
            NodeRef::CreateSeqStmt(s) => {
                if let Some(rv) = &s.sequence {
                    self.create_range_var("sequence", ObjectKind::Sequence, rv);
                }
            }
            NodeRef::CompositeTypeStmt(t) => {
                if let Some(rv) = &t.typevar {
                    self.create_range_var("type", ObjectKind::Type, rv);
                }
            }
            NodeRef::CreateEnumStmt(e) => self.create_named("type", Some(ObjectKind::Type), &e.type_name),
            NodeRef::CreateRangeStmt(r) => self.create_named("type", Some(ObjectKind::Type), &r.type_name),
            NodeRef::CreateDomainStmt(d) => self.create_named("domain", Some(ObjectKind::Type), &d.domainname),
            NodeRef::DefineStmt(d) => {
                let (what, kind) = match ObjectType::try_from(d.kind).unwrap_or(ObjectType::Undefined) {
                    ObjectType::ObjectAggregate => ("aggregate", Some(ObjectKind::Function)),
                    ObjectType::ObjectOperator => ("operator", Some(ObjectKind::Operator)),
                    ObjectType::ObjectType => ("type", Some(ObjectKind::Type)),
                    ObjectType::ObjectCollation => ("collation", None),
                    ObjectType::ObjectTsconfiguration => ("text search configuration", None),
                    ObjectType::ObjectTsdictionary => ("text search dictionary", None),
                    ObjectType::ObjectTsparser => ("text search parser", None),
                    ObjectType::ObjectTstemplate => ("text search template", None),
                    _ => ("object", None),
                };
                self.create_named(what, kind, &d.defnames);
            }
            NodeRef::CreateFunctionStmt(f) => {
                let what = if f.is_procedure { "procedure" } else { "function" };
                self.create_named(what, Some(ObjectKind::Function), &f.funcname);
                self.function_body(f);
            }
            NodeRef::DoStmt(d) => self.do_body(d),
            NodeRef::AlterFunctionStmt(f) => {
                if function_options(&f.actions).pinned_path.is_some()
                    && let Some(name) = f.func.as_ref().and_then(|o| name_of(&o.objname))
                {
                    self.facts.pinned_functions.push(name);
                }
            }
            NodeRef::CreateConversionStmt(c) => self.create_named("conversion", None, &c.conversion_name),
            NodeRef::CreateOpClassStmt(c) => self.create_named("operator class", None, &c.opclassname),
            NodeRef::CreateOpFamilyStmt(c) => self.create_named("operator family", None, &c.opfamilyname),
            NodeRef::CreateStatsStmt(s) if !s.defnames.is_empty() => {
                self.create_named("statistics object", None, &s.defnames);
            }
            NodeRef::IndexStmt(i) => self.attach("index", i.relation.as_ref(), &i.idxname),
            NodeRef::CreateTrigStmt(t) => {
                self.attach("trigger", t.relation.as_ref(), &t.trigname);
                self.unlocated(ObjectKind::Function, name_of(&t.funcname));
            }
            NodeRef::CreatePolicyStmt(p) => self.attach("policy", p.table.as_ref(), &p.policy_name),
            NodeRef::RuleStmt(r) => self.attach("rule", r.relation.as_ref(), &r.rulename),
            NodeRef::CreateSchemaStmt(s) if !s.schemaname.is_empty() => {
                let span = self.frame.word_span(&s.schemaname);
                let name = QualifiedName { schema: Some(s.schemaname.clone()), name: s.schemaname.clone() };
                self.facts.creations.push(Creation {
                    what: "schema",
                    name: Some(name),
                    label: s.schemaname.clone(),
                    kind: Some(ObjectKind::Schema),
                    attached: false,
                    span,
                });
                self.schema_default = Some(s.schemaname.clone());
            }
            NodeRef::CreateEventTrigStmt(t) => {
                self.create_global("event trigger", &t.trigname);
                self.unlocated(ObjectKind::Function, name_of(&t.funcname));
            }
            NodeRef::CreateCastStmt(_) => self.create_global("cast", ""),
            NodeRef::CreatePublicationStmt(p) => self.create_global("publication", &p.pubname),
            NodeRef::CreateSubscriptionStmt(s) => self.create_global("subscription", &s.subname),
            NodeRef::CreateFdwStmt(f) => self.create_global("foreign-data wrapper", &f.fdwname),
            NodeRef::CreateForeignServerStmt(s) => self.create_global("server", &s.servername),
            NodeRef::CreateUserMappingStmt(_) => self.create_global("user mapping", ""),
            NodeRef::CreateTableSpaceStmt(t) => self.create_global("tablespace", &t.tablespacename),
            NodeRef::CreatePlangStmt(l) => self.create_global("language", &l.plname),
            NodeRef::CreateTransformStmt(_) => self.create_global("transform", ""),
            NodeRef::CreateAmStmt(a) => self.create_global("access method", &a.amname),
            NodeRef::AlterObjectSchemaStmt(a) => {
                let object = match &a.relation {
                    Some(rv) => Some(range_var_name(rv).name),
                    None => object_parts(a.object.as_deref()).last().cloned(),
                };
                if let Some(object) = object {
                    let span = self.frame.word_span(&a.newschema);
                    let name = QualifiedName { schema: Some(a.newschema.clone()), name: object };
                    let label = name.to_string();
                    self.facts.creations.push(Creation {
                        what: "moved",
                        name: Some(name),
                        label,
                        kind: None,
                        attached: false,
                        span,
                    });
                }
                self.object_reference(a.object_type, a.object.as_deref());
            }
            NodeRef::DropStmt(d) => {
                for object in &d.objects {
                    self.object_reference(d.remove_type, Some(object));
                }
            }
            NodeRef::CommentStmt(c) => self.object_reference(c.objtype, c.object.as_deref()),
            NodeRef::RenameStmt(r) => {
                let relation_kind = match ObjectType::try_from(r.rename_type).unwrap_or(ObjectType::Undefined) {
                    ObjectType::ObjectTable
                    | ObjectType::ObjectView
                    | ObjectType::ObjectMatview
                    | ObjectType::ObjectForeignTable => Some(ObjectKind::Relation),
                    ObjectType::ObjectSequence => Some(ObjectKind::Sequence),
                    _ => None,
                };
                if let (Some(kind), Some(rv)) = (relation_kind, &r.relation) {
                    let schema = (!rv.schemaname.is_empty()).then(|| rv.schemaname.clone());
                    self.facts.implicit.push((kind, QualifiedName { schema, name: r.newname.clone() }));
                }
                if r.rename_type == ObjectType::ObjectSchema as i32 {
                    self.unlocated(ObjectKind::Schema, Some(QualifiedName { schema: None, name: r.subname.clone() }));
                } else {
                    self.object_reference(r.rename_type, r.object.as_deref());
                }
            }
            NodeRef::AlterOwnerStmt(a) => self.object_reference(a.object_type, a.object.as_deref()),
            NodeRef::GrantStmt(g) => {
                use protobuf::GrantTargetType as T;
                let schemas =
                    g.targtype == T::AclTargetAllInSchema as i32 || g.objtype == ObjectType::ObjectSchema as i32;
                for object in &g.objects {
                    if schemas {
                        self.object_reference(ObjectType::ObjectSchema as i32, Some(object));
                    } else if g.objtype != ObjectType::ObjectTable as i32
                        && g.objtype != ObjectType::ObjectSequence as i32
                    {
                        self.object_reference(g.objtype, Some(object));
                    }
                }
            }
            NodeRef::AlterDefaultPrivilegesStmt(a) => {
                for option in &a.options {
                    if let Some(NodeEnum::DefElem(def)) = &option.node
                        && def.defname == "schemas"
                    {
                        let list = def.arg.as_deref().and_then(|n| match &n.node {
                            Some(NodeEnum::List(l)) => Some(strings(&l.items)),
                            _ => None,
                        });
                        for schema in list.unwrap_or_default() {
                            self.unlocated(ObjectKind::Schema, Some(QualifiedName { schema: None, name: schema }));
                        }
                    }
                }
            }
            NodeRef::VariableSetStmt(set) if set.name == "search_path" => match set_values(set) {
                Some(path) => self.facts.path_changes.push(PathChange::Set(path)),
                None if set.kind != protobuf::VariableSetKind::VarSetCurrent as i32 => {
                    self.facts.path_changes.push(PathChange::Default);
                }
                None => {}
            },
            _ => {}
        }
    }

    /// A reference to the object of a DROP, COMMENT, ALTER ... OWNER/RENAME/SET SCHEMA or GRANT,
    /// by its object type (functions and types arrive as their own nodes and are seen anyway).
    fn object_reference(&mut self, object_type: i32, object: Option<&Node>) {
        let kind = match ObjectType::try_from(object_type).unwrap_or(ObjectType::Undefined) {
            ObjectType::ObjectTable
            | ObjectType::ObjectView
            | ObjectType::ObjectMatview
            | ObjectType::ObjectForeignTable
            | ObjectType::ObjectIndex => ObjectKind::Relation,
            ObjectType::ObjectSequence => ObjectKind::Sequence,
            ObjectType::ObjectColumn => {
                // `schema.table.column`: the relation is all but the last part.
                let mut parts = object_parts(object);
                parts.pop();
                self.unlocated(ObjectKind::Relation, QualifiedName::from_parts(&parts));
                return;
            }
            ObjectType::ObjectSchema => {
                if let Some(NodeEnum::String(s)) = object.and_then(|o| o.node.as_ref()) {
                    self.unlocated(ObjectKind::Schema, Some(QualifiedName { schema: None, name: s.sval.clone() }));
                }
                return;
            }
            ObjectType::ObjectType | ObjectType::ObjectDomain => {
                // Types usually arrive as `TypeName` nodes, which the walk sees; plain lists here.
                if matches!(object.and_then(|o| o.node.as_ref()), Some(NodeEnum::List(_))) {
                    self.unlocated(ObjectKind::Type, QualifiedName::from_parts(&object_parts(object)));
                }
                return;
            }
            _ => return,
        };
        self.unlocated(kind, QualifiedName::from_parts(&object_parts(object)));
    }

    fn with_names(&mut self, with: Option<&protobuf::WithClause>) {
        for cte in with.into_iter().flat_map(|w| &w.ctes) {
            if let Some(NodeEnum::CommonTableExpr(cte)) = &cte.node {
                self.ctes.push(cte.ctename.clone());
            }
        }
    }

    /// The sequences of `serial` and identity columns of `table`: `<table>_<column>_seq`.
    fn implicit_sequences(&mut self, table: &protobuf::RangeVar, elements: &[Node]) {
        self.implicit_sequences_of(table, elements.iter());
    }

    fn implicit_sequences_of<'n>(&mut self, table: &protobuf::RangeVar, elements: impl Iterator<Item = &'n Node>) {
        for element in elements {
            let Some(NodeEnum::ColumnDef(column)) = &element.node else { continue };
            let serial = column.type_name.as_ref().is_some_and(|t| {
                strings(&t.names).last().is_some_and(|n| {
                    matches!(n.as_str(), "serial" | "bigserial" | "smallserial" | "serial2" | "serial4" | "serial8")
                })
            });
            let identity = column.constraints.iter().any(|c| {
                matches!(&c.node, Some(NodeEnum::Constraint(c)) if c.contype == protobuf::ConstrType::ConstrIdentity as i32)
            });
            if serial || identity {
                let schema = if table.relpersistence == "t" {
                    Some(TEMP_SCHEMA.to_owned())
                } else {
                    (!table.schemaname.is_empty())
                        .then(|| table.schemaname.clone())
                        .or_else(|| self.schema_default.clone())
                };
                let name = format!("{}_{}_seq", table.relname, column.colname);
                self.facts.implicit.push((ObjectKind::Sequence, QualifiedName { schema, name }));
            }
        }
    }

    fn func_call(&mut self, call: &protobuf::FuncCall) {
        let parts = strings(&call.funcname);
        let Some(name) = QualifiedName::from_parts(&parts) else { return };
        let span = self.frame.name_span(call.location, Some(&name));
        let function = name.name.clone();
        let builtin = name.schema.as_deref().is_none_or(|s| s == "pg_catalog");
        self.reference(ObjectKind::Function, name, span, false);
        if !builtin {
            return;
        }
        match function.as_str() {
            "nextval" | "currval" | "setval" => {
                if let Some((value, location)) = const_string(call.args.first()) {
                    self.string_name(ObjectKind::Sequence, value, location);
                }
            }
            "set_config" => {
                let setting = const_string_through_casts(call.args.first()).map(|(s, _)| s.to_lowercase());
                let value = const_string_through_casts(call.args.get(1));
                match (setting.as_deref(), value) {
                    (Some("search_path"), Some((value, _))) => {
                        self.facts.path_changes.push(PathChange::Set(parse_search_path(value)));
                    }
                    (Some(setting @ ("role" | "session_authorization")), _) => {
                        let span = self.frame.name_span(call.location, None);
                        self.facts.role_changes.push((setting.to_owned(), span));
                    }
                    (None, _) if !call.args.is_empty() => {
                        let span = self.frame.name_span(call.location, None);
                        self.facts.dynamic_settings.push(("the setting's name", span));
                    }
                    (Some("search_path"), None) if call.args.len() > 1 => {
                        let span = self.frame.name_span(call.location, None);
                        self.facts.dynamic_settings.push(("the `search_path` it sets", span));
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }

    fn type_cast(&mut self, cast: &protobuf::TypeCast) {
        let Some(type_name) = &cast.type_name else { return };
        let parts = strings(&type_name.names);
        let kind = match parts.last().map(String::as_str) {
            Some("regclass") => ObjectKind::Relation,
            Some("regproc" | "regprocedure") => ObjectKind::Function,
            Some("regtype") => ObjectKind::Type,
            Some("regnamespace") => ObjectKind::Schema,
            _ => return,
        };
        if let Some((value, location)) = const_string(cast.arg.as_deref()) {
            self.string_name(kind, value, location);
        }
    }

    /// A name written inside a string constant: `nextval('billing.seq')`, `'x.t'::regclass`.
    fn string_name(&mut self, kind: ObjectKind, value: &str, location: i32) {
        // `'f(int)'::regprocedure`: the name ends at the argument list.
        let value = value.split('(').next().unwrap_or(value).trim();
        let parts = split_identifier_list(value);
        let name = if kind == ObjectKind::Schema {
            parts.last().map(|s| QualifiedName { schema: None, name: s.clone() })
        } else {
            QualifiedName::from_parts(&parts)
        };
        let Some(name) = name else { return };
        let span = match self.frame.offset(location) {
            Some(offset) => match lexical::string_token_at(self.frame.text, offset) {
                Some(token) if token.len() >= 2 && self.frame.text[token.clone()].starts_with('\'') => {
                    self.frame.file_span(token.start + 1..token.end - 1)
                }
                Some(token) => self.frame.file_span(token),
                None => self.frame.file_span(offset..offset),
            },
            None => self.frame.statement_start(),
        };
        self.reference(kind, name, span, false);
    }

    fn type_name(&mut self, type_name: &protobuf::TypeName) {
        let mut parts = strings(&type_name.names);
        if parts.first().is_some_and(|p| p == "pg_catalog") {
            return;
        }
        let kind = if type_name.pct_type {
            // `table.column%TYPE`: the relation; `variable%TYPE` in PL/pgSQL names no relation.
            if parts.len() < 2 {
                return;
            }
            parts.pop();
            ObjectKind::Relation
        } else {
            ObjectKind::Type
        };
        let Some(name) = QualifiedName::from_parts(&parts) else { return };
        let span = self.frame.name_span(type_name.location, Some(&name));
        self.reference(kind, name, span, false);
    }

    fn function_body(&mut self, f: &protobuf::CreateFunctionStmt) {
        let options = function_options(&f.options);
        let language = match options.language.as_deref() {
            Some("plpgsql") => Language::Plpgsql,
            Some("sql") => Language::Sql,
            _ => return,
        };
        let Some((body, location)) = options.body else { return };
        let Some(offset) = self.frame.offset(location) else { return };
        // The option's location is the `AS` keyword (or the string itself).
        let mut start = offset;
        if self.frame.text.get(start..start + 2).is_some_and(|w| w.eq_ignore_ascii_case("as"))
            && !self.frame.text.as_bytes().get(start + 2).is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
        {
            start += 2;
        }
        let start = crate::script::skip_trivia(self.frame.text, start);
        let returns = f.return_type.as_ref().map(|t| strings(&t.names)).unwrap_or_default();
        let plpgsql_source = match returns.last().map(String::as_str) {
            // libpg_query writes invalid JSON for the implicit variables of trigger functions, so
            // the body is compiled inside a plain function that declares them.
            Some(kind @ ("trigger" | "event_trigger")) => trigger_wrapper(body, kind == "event_trigger"),
            _ => self.frame.statement_text().to_owned(),
        };
        self.body(language, body, start, plpgsql_source, options.pinned_path);
    }

    fn do_body(&mut self, d: &protobuf::DoStmt) {
        let mut body = None;
        let mut language = Language::Plpgsql;
        for arg in &d.args {
            let Some(NodeEnum::DefElem(def)) = &arg.node else { continue };
            match (def.defname.as_str(), def.arg.as_deref().and_then(|a| a.node.as_ref())) {
                ("as", Some(NodeEnum::String(s))) => body = Some((s.sval.as_str(), def.location)),
                ("language", Some(NodeEnum::String(s))) => {
                    language = match s.sval.to_lowercase().as_str() {
                        "plpgsql" => Language::Plpgsql,
                        "sql" => Language::Sql,
                        _ => return,
                    };
                }
                _ => {}
            }
        }
        let Some((body, location)) = body else { return };
        let Some(offset) = self.frame.offset(location) else { return };
        let start = crate::script::skip_trivia(self.frame.text, offset);
        let tag = dollar_tag(body);
        let wrapper = format!("CREATE FUNCTION moat_do() RETURNS void LANGUAGE plpgsql AS {tag}{body}{tag}");
        self.body(language, body, start, wrapper, None);
    }

    /// A body whose string constant starts at text offset `start`.
    fn body(
        &mut self,
        language: Language,
        body: &str,
        start: usize,
        plpgsql_source: String,
        pinned: Option<SearchPath>,
    ) {
        let frame = self.frame;
        let (map, span) = match lexical::string_token_at(frame.text, start) {
            Some(token) => match sql_string_value(&frame.text[token.clone()]) {
                Some((value, literal)) if value == body => {
                    let in_text = OffsetMap::identity(token.start).compose(&literal, value.len());
                    (frame.map.compose(&in_text, body.len()), frame.file_span(token))
                }
                // A string form the map does not model (U&'...'): point everything at the token.
                _ => (OffsetMap::fixed(frame.map.map(token.start)), frame.file_span(token)),
            },
            None => {
                let here = frame.statement_start();
                (OffsetMap::fixed(here.start), here)
            }
        };
        self.facts.bodies.push(Body {
            language,
            text: body.to_owned(),
            map,
            plpgsql_source,
            pinned_path: pinned,
            span,
        });
    }
}

/// A dollar-quote tag that does not occur in `body`.
fn dollar_tag(body: &str) -> String {
    let mut tag = String::from("$moat$");
    while body.contains(&tag) {
        tag.insert(tag.len() - 1, '_');
    }
    tag
}

/// A function around a trigger function's body that declares the variables PL/pgSQL gives
/// trigger functions, all on the body's first line so that line numbers stay the same.
fn trigger_wrapper(body: &str, event: bool) -> String {
    let tag = dollar_tag(body);
    let variables = if event {
        "tg_event text; tg_tag text;"
    } else {
        "new record; old record; tg_name name; tg_when text; tg_level text; tg_op text; tg_relid oid; \
         tg_relname name; tg_table_name name; tg_table_schema name; tg_nargs integer; tg_argv text[];"
    };
    let inner = body.trim_end().trim_end_matches(';');
    format!(
        "CREATE FUNCTION moat_trigger() RETURNS record LANGUAGE plpgsql AS {tag}DECLARE {variables} BEGIN {inner}\n;\nEND{tag}"
    )
}

/// The parts of an object name given as a `List` of `String`s (or one `String`).
fn object_parts(object: Option<&Node>) -> Vec<String> {
    match object.and_then(|o| o.node.as_ref()) {
        Some(NodeEnum::List(list)) => strings(&list.items),
        Some(NodeEnum::String(s)) => vec![s.sval.clone()],
        _ => Vec::new(),
    }
}

/// Splits `a."B".c` into `["a", "B", "c"]`, folding unquoted parts to lower case.
pub(crate) fn split_identifier_list(value: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                current.push('"');
            }
            '"' => quoted = !quoted,
            '.' if !quoted => parts.push(std::mem::take(&mut current)),
            c if quoted => current.push(c),
            c => current.extend(c.to_lowercase()),
        }
    }
    parts.push(current);
    parts.into_iter().map(|p| p.trim().to_owned()).collect()
}

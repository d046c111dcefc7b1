//! The rules, one file each. A rule reads one statement (its tree and its facts) in the context
//! of the file it comes from and reports hits; `analyze` turns hits into findings.
//!
//! Rule ids are kebab-case and read as "allow <rule>": `-- moat:allow cross-module-reference`.
//! Each rule file names its [`RuleId`]; the ids and the documentation are in the catalog
//! ([`moat_core::rules`]), which `moat explain` prints.

pub(crate) mod contract_not_a_view;
pub(crate) mod contract_undeclared_read;
pub(crate) mod cross_module_foreign_key;
pub(crate) mod cross_module_reference;
pub(crate) mod dynamic_set_config;
pub(crate) mod dynamic_sql;
pub(crate) mod grant_beyond_manifest;
pub(crate) mod object_outside_module_schema;
pub(crate) mod parse_error;
pub(crate) mod privileged_statement_in_migration;
pub(crate) mod psql_include;
pub(crate) mod psql_variable;
pub(crate) mod security_definer_function;
pub(crate) mod suppression_without_reason;
pub(crate) mod template_placeholder;
pub(crate) mod transaction_control_in_migration;
pub(crate) mod unresolved_reference;
pub(crate) mod unsafe_event_transport;
pub(crate) mod unused_suppression;

use std::ops::Range;

use moat_core::findings::Severity;
use moat_core::manifest::{Contract, Manifest};
use moat_core::names::{CONTRACTS_SCHEMA, ModuleName};
use moat_core::rules::RuleId;

use crate::analyze::Unit;
use crate::ast::{Frame, Reference};
use crate::resolve::Resolver;
use crate::{CrossingKind, SourceKind};

/// Every rule the analysis can report, in the order `moat explain` lists them. The rules, their
/// ids and their documentation live in the catalog, [`moat_core::rules`].
pub fn rules() -> &'static [RuleId] {
    &[
        cross_module_reference::RULE,
        cross_module_foreign_key::RULE,
        unresolved_reference::RULE,
        object_outside_module_schema::RULE,
        grant_beyond_manifest::RULE,
        security_definer_function::RULE,
        privileged_statement_in_migration::RULE,
        transaction_control_in_migration::RULE,
        dynamic_set_config::RULE,
        dynamic_sql::RULE,
        contract_undeclared_read::RULE,
        contract_not_a_view::RULE,
        parse_error::RULE,
        psql_variable::RULE,
        psql_include::RULE,
        template_placeholder::RULE,
        unused_suppression::RULE,
        suppression_without_reason::RULE,
        unsafe_event_transport::RULE,
    ]
}

/// Checks that read a statement's tree. They run while the file is read, and the tree is
/// dropped after them, so that the analysis never holds every tree of every file at once.
pub(crate) const TREE_CHECKS: &[fn(&Cx<'_>, &mut Vec<Hit>)] = &[
    grant_beyond_manifest::check,
    security_definer_function::check,
    privileged_statement_in_migration::check,
    transaction_control_in_migration::check,
    dynamic_set_config::check,
    dynamic_sql::check,
    contract_not_a_view::check,
];

/// Checks that resolve names. They run once every file is read, when the analysis knows which
/// objects the files create.
pub(crate) const NAME_CHECKS: &[fn(&Cx<'_>, &mut Vec<Hit>)] = &[
    cross_module_reference::check,
    cross_module_foreign_key::check,
    unresolved_reference::check,
    object_outside_module_schema::check,
    contract_undeclared_read::check,
];

/// What a rule reports about a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hit {
    /// The rule.
    pub(crate) rule: RuleId,
    /// The severity, when it differs from the rule's.
    pub(crate) severity: Severity,
    /// What is wrong, starting lowercase, naming the object in backticks.
    pub(crate) message: String,
    /// How to fix it.
    pub(crate) help: String,
    /// The object concerned (baselines match on it).
    pub(crate) object: Option<String>,
    /// Where, in the file.
    pub(crate) span: Range<usize>,
    /// For crossings into another module: that module, and how.
    pub(crate) crossing: Option<(String, CrossingKind)>,
}

impl Hit {
    /// A hit of `rule` with its own severity.
    pub(crate) fn new(rule: RuleId, span: Range<usize>, message: String, help: String) -> Self {
        Self { rule, severity: rule.severity(), message, help, object: None, span, crossing: None }
    }

    /// Marks the hit as a crossing into module `to`.
    pub(crate) fn crossing(mut self, to: &str, kind: CrossingKind) -> Self {
        self.crossing = Some((to.to_owned(), kind));
        self
    }

    /// Sets the object.
    pub(crate) fn object(mut self, object: impl Into<String>) -> Self {
        self.object = Some(object.into());
        self
    }

    /// Sets the severity.
    pub(crate) fn severity(mut self, severity: Severity) -> Self {
        self.severity = severity;
        self
    }
}

/// Whose SQL a file holds.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Owner<'m> {
    /// A module's (its migrations and its Rust sources).
    Module {
        /// The module's name.
        name: &'m str,
        /// Its schema.
        schema: &'m str,
    },
    /// A contract's.
    Contract {
        /// The contract's name.
        name: &'m str,
        /// Its declaration, if the manifest has it.
        contract: Option<&'m Contract>,
    },
}

/// What a rule sees: one statement and where it comes from.
#[derive(Debug)]
pub(crate) struct Cx<'a> {
    /// What the file is.
    pub(crate) kind: &'a SourceKind,
    /// Whose it is.
    pub(crate) owner: Owner<'a>,
    /// The manifest.
    pub(crate) manifest: &'a Manifest,
    /// Name resolution (for the name checks).
    pub(crate) resolver: &'a Resolver<'a>,
    /// The statement.
    pub(crate) unit: &'a Unit,
}

impl<'a> Cx<'a> {
    /// The schema the file's objects belong in: the module's, or `contracts`.
    pub(crate) fn own_schema(&self) -> &'a str {
        match self.owner {
            Owner::Module { schema, .. } => schema,
            Owner::Contract { .. } => CONTRACTS_SCHEMA,
        }
    }

    /// The module, for module files.
    pub(crate) fn module(&self) -> Option<&'a str> {
        match self.owner {
            Owner::Module { name, .. } => Some(name),
            Owner::Contract { .. } => None,
        }
    }

    /// Whether the file is a module migration.
    pub(crate) fn is_migration(&self) -> bool {
        matches!(self.kind, SourceKind::Migration { .. })
    }

    /// The schema a reference resolves to from this statement.
    pub(crate) fn resolve(&self, reference: &Reference) -> Option<String> {
        self.resolver.resolve(reference.kind, &reference.name, &self.unit.path)
    }

    /// The statement's tree, while the tree checks run.
    pub(crate) fn node(&self) -> Option<&'a pg_query::NodeEnum> {
        self.unit.node.as_deref()
    }

    /// The statement's frame, to place tree locations in the file.
    pub(crate) fn frame(&self) -> Frame<'_> {
        self.unit.frame()
    }

    /// `<project>_<module>` and `<project>_<module>_owner` of the file's module.
    pub(crate) fn own_roles(&self) -> Vec<String> {
        let roles = self.manifest.roles();
        match self.module().map(ModuleName::parse) {
            Some(Ok(module)) => vec![roles.module_runtime(&module), roles.module_owner(&module)],
            _ => vec![roles.contracts_owner()],
        }
    }
}

/// A statement's kind in SQL words, for messages: `CREATE TABLE`, `GRANT`.
pub(crate) fn statement_label(node: &pg_query::NodeEnum) -> String {
    use pg_query::NodeEnum as N;
    let label = match node {
        N::SelectStmt(_) => "SELECT",
        N::InsertStmt(_) => "INSERT",
        N::UpdateStmt(_) => "UPDATE",
        N::DeleteStmt(_) => "DELETE",
        N::MergeStmt(_) => "MERGE",
        N::CreateStmt(_) => "CREATE TABLE",
        N::CreateTableAsStmt(c) if c.objtype == pg_query::protobuf::ObjectType::ObjectMatview as i32 => {
            "CREATE MATERIALIZED VIEW"
        }
        N::CreateTableAsStmt(c) if c.is_select_into => "SELECT INTO",
        N::CreateTableAsStmt(_) => "CREATE TABLE AS",
        N::ViewStmt(_) => "CREATE VIEW",
        N::IndexStmt(_) => "CREATE INDEX",
        N::CreateFunctionStmt(f) if f.is_procedure => "CREATE PROCEDURE",
        N::CreateFunctionStmt(_) => "CREATE FUNCTION",
        N::CreateTrigStmt(_) => "CREATE TRIGGER",
        N::CreateSeqStmt(_) => "CREATE SEQUENCE",
        N::CreateSchemaStmt(_) => "CREATE SCHEMA",
        N::CreatePolicyStmt(_) => "CREATE POLICY",
        N::CreateRoleStmt(_) => "CREATE ROLE",
        N::AlterRoleStmt(_) | N::AlterRoleSetStmt(_) => "ALTER ROLE",
        N::DropRoleStmt(_) => "DROP ROLE",
        N::CreatedbStmt(_) => "CREATE DATABASE",
        N::AlterDatabaseStmt(_) | N::AlterDatabaseSetStmt(_) | N::AlterDatabaseRefreshCollStmt(_) => "ALTER DATABASE",
        N::DropdbStmt(_) => "DROP DATABASE",
        N::CreateExtensionStmt(_) => "CREATE EXTENSION",
        N::AlterExtensionStmt(_) | N::AlterExtensionContentsStmt(_) => "ALTER EXTENSION",
        N::AlterSystemStmt(_) => "ALTER SYSTEM",
        N::ReassignOwnedStmt(_) => "REASSIGN OWNED",
        N::AlterTableStmt(_) => "ALTER TABLE",
        N::DropStmt(d) => return drop_label(d.remove_type),
        N::GrantStmt(g) if g.is_grant => "GRANT",
        N::GrantStmt(_) => "REVOKE",
        N::GrantRoleStmt(g) if g.is_grant => "GRANT",
        N::GrantRoleStmt(_) => "REVOKE",
        N::AlterDefaultPrivilegesStmt(_) => "ALTER DEFAULT PRIVILEGES",
        N::CommentStmt(_) => "COMMENT",
        N::VariableSetStmt(_) => "SET",
        N::DoStmt(_) => "DO",
        N::CopyStmt(_) => "COPY",
        N::TruncateStmt(_) => "TRUNCATE",
        N::AlterOwnerStmt(_) => "ALTER ... OWNER TO",
        N::RenameStmt(_) => "ALTER ... RENAME",
        N::AlterObjectSchemaStmt(_) => "ALTER ... SET SCHEMA",
        N::TransactionStmt(_) => "a transaction command",
        _ => "",
    };
    if label.is_empty() {
        // The node's type name without the `Stmt` suffix: `RefreshMatView`.
        let debug = format!("{node:?}");
        let name = debug.split(['(', ' ', '{']).next().unwrap_or("statement");
        name.trim_end_matches("Stmt").to_owned()
    } else {
        label.to_owned()
    }
}

/// `DROP EXTENSION`, `DROP SCHEMA`, ...: `DROP` and the object type in SQL words.
fn drop_label(remove_type: i32) -> String {
    use pg_query::protobuf::ObjectType as T;
    let what = match T::try_from(remove_type).unwrap_or(T::Undefined) {
        T::ObjectTable => "TABLE",
        T::ObjectView => "VIEW",
        T::ObjectMatview => "MATERIALIZED VIEW",
        T::ObjectIndex => "INDEX",
        T::ObjectSequence => "SEQUENCE",
        T::ObjectType => "TYPE",
        T::ObjectDomain => "DOMAIN",
        T::ObjectFunction => "FUNCTION",
        T::ObjectProcedure => "PROCEDURE",
        T::ObjectAggregate => "AGGREGATE",
        T::ObjectSchema => "SCHEMA",
        T::ObjectExtension => "EXTENSION",
        T::ObjectTrigger => "TRIGGER",
        T::ObjectPolicy => "POLICY",
        T::ObjectRule => "RULE",
        T::ObjectForeignTable => "FOREIGN TABLE",
        T::ObjectEventTrigger => "EVENT TRIGGER",
        T::ObjectPublication => "PUBLICATION",
        T::ObjectForeignServer => "SERVER",
        T::ObjectCollation => "COLLATION",
        T::ObjectCast => "CAST",
        _ => "",
    };
    if what.is_empty() { "DROP".to_owned() } else { format!("DROP {what}") }
}

#[cfg(test)]
pub(crate) mod test_support {
    //! A small project to check snippets against, and a plain rendering of findings for
    //! snapshots (the CLI's renderer has its own snapshot tests).

    use std::path::Path;

    use moat_core::findings::Finding;
    use moat_core::manifest::{Manifest, PathCheck};
    use moat_core::text::LineIndex;

    use crate::{AnalysisInput, Source, SourceKind, analyze};

    struct Everything;
    impl PathCheck for Everything {
        fn is_dir(&self, _: &Path) -> bool {
            true
        }
        fn exists(&self, _: &Path) -> bool {
            true
        }
    }

    /// The clinic: patients, prescriptions (depends on patients), billing, a contract and a consumer.
    pub(crate) fn manifest() -> Manifest {
        let toml = r#"
[project]
name = "clinic"
[modules.patients]
[modules.prescriptions]
depends_on = ["patients"]
[modules.billing]
schema = "billing_data"
[contracts.ward_census]
sql = "contracts/ward_census.sql"
reads = ["patients.patients", "prescriptions.prescriptions"]
readers = ["reporting"]
[consumers.reporting]
"#;
        match Manifest::parse(Path::new("moat.toml"), toml, &Everything) {
            Ok(manifest) => manifest,
            Err(errors) => panic!("test manifest: {errors:?}"),
        }
    }

    /// Findings of `sql` as a migration of `module`, without `unresolved-reference`: the
    /// snippets of the rule tests name tables that they do not create.
    pub(crate) fn migration(module: &str, sql: &str) -> Vec<Finding> {
        without_unresolved(migration_with_unresolved(module, sql))
    }

    /// Findings of `sql` as a migration of `module`, every rule.
    pub(crate) fn migration_with_unresolved(module: &str, sql: &str) -> Vec<Finding> {
        run(sql, SourceKind::Migration { module: module.into() }, "migration.sql")
    }

    /// Findings of several migrations `(module, file, sql)`, read together, every rule.
    pub(crate) fn migrations(files: &[(&str, &str, &str)]) -> Vec<Finding> {
        let manifest = manifest();
        let sources = files
            .iter()
            .map(|(module, file, text)| Source {
                file: format!("modules/{module}/migrations/{file}"),
                text,
                kind: SourceKind::Migration { module: (*module).into() },
            })
            .collect();
        analyze(&AnalysisInput { manifest: &manifest, sources }).findings
    }

    fn without_unresolved(mut findings: Vec<Finding>) -> Vec<Finding> {
        findings.retain(|f| f.rule != "unresolved-reference");
        findings
    }

    /// Findings of `sql` as the contract `ward_census`.
    pub(crate) fn contract(sql: &str) -> Vec<Finding> {
        without_unresolved(run(
            sql,
            SourceKind::Contract { contract: "ward_census".into() },
            "contracts/ward_census.sql",
        ))
    }

    /// Findings of Rust `source` of `module`.
    pub(crate) fn rust(module: &str, source: &str) -> Vec<Finding> {
        without_unresolved(run(source, SourceKind::RustSource { module: module.into() }, "src/lib.rs"))
    }

    fn run(text: &str, kind: SourceKind, file: &str) -> Vec<Finding> {
        let manifest = manifest();
        let input = AnalysisInput { manifest: &manifest, sources: vec![Source { file: file.into(), text, kind }] };
        analyze(&input).findings
    }

    /// The rules that fired, in order.
    pub(crate) fn rules(findings: &[Finding]) -> Vec<&str> {
        findings.iter().map(|f| f.rule.as_str()).collect()
    }

    /// Findings of one rule only.
    pub(crate) fn only<'f>(findings: &'f [Finding], rule: &str) -> Vec<&'f Finding> {
        findings.iter().filter(|f| f.rule == rule).collect()
    }

    /// Each finding as `line:col severity[rule] message`, the source line, a caret line under the
    /// span, and the help.
    pub(crate) fn render(text: &str, findings: &[Finding]) -> String {
        let index = LineIndex::new(text);
        let mut out = String::new();
        for f in findings {
            let (line, column) = (f.line.unwrap_or(0), f.column.unwrap_or(0));
            out.push_str(&format!("{line}:{column} {}[{}] {}\n", f.severity.as_str(), f.rule, f.message));
            if let Some(source) = index.line_text(line) {
                out.push_str(&format!("  | {source}\n"));
                let width = f.span.as_ref().map_or(1, |s| text.get(s.clone()).map_or(1, |t| t.chars().count().max(1)));
                let width = width.min(source.chars().count().saturating_sub(column as usize - 1).max(1));
                out.push_str(&format!("  | {}{}\n", " ".repeat(column as usize - 1), "^".repeat(width)));
            }
            if let Some(object) = &f.object {
                out.push_str(&format!("  = object: {object}\n"));
            }
            if let Some(help) = &f.help {
                out.push_str(&format!("  = help: {help}\n"));
            }
        }
        out
    }
}

//! The catalog of rules: every rule `moat check` or `moat audit` can report, with its id, default
//! severity, one-line summary and documentation. Findings name their rule with a [`RuleId`].
//!
//! ```
//! use moat_core::findings::Severity;
//! use moat_core::rules::RuleId;
//!
//! let rule = RuleId::parse("access-leak").expect("a rule");
//! assert_eq!(rule, RuleId::AccessLeak);
//! assert_eq!(rule.as_str(), "access-leak");
//! assert_eq!(rule.severity(), Severity::Error);
//! assert!(rule.doc().contains("**Fix.**"));
//! ```
//!
//! A rule's id is part of the JSON contract and of baseline files, and users write it in
//! `-- moat:allow <rule>` comments: renaming one breaks them, so ids are written once, here. The
//! documentation is one Markdown file per rule in `rules/docs/`, printed by `moat explain <rule>`
//! and carried by SARIF output.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::findings::Severity;

/// Declares the rules: the enum, [`RuleId::ALL`] and each rule's id, severity, summary and
/// documentation (`rules/docs/<id>.md`), from one table, so that they cannot disagree.
macro_rules! catalog {
    ($(
        $(#[$meta:meta])*
        $variant:ident = $id:literal, $severity:ident, $summary:literal;
    )*) => {
        /// A rule that `moat check` or `moat audit` can report. Serializes as its id, such as
        /// `"cross-module-reference"`; ordered by id.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum RuleId {
            $($(#[$meta])* $variant,)*
        }

        impl RuleId {
            /// Every rule, in the order `moat explain` lists them: the rules of `moat check`,
            /// then those only `moat audit` reports.
            pub const ALL: &'static [RuleId] = &[$(RuleId::$variant,)*];

            /// The rule's id: kebab-case, reads as "allow <rule>".
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(RuleId::$variant => $id,)*
                }
            }

            /// The severity of its findings, unless a finding says otherwise
            /// (`security-definer-function` also reports warnings).
            pub const fn severity(self) -> Severity {
                match self {
                    $(RuleId::$variant => Severity::$severity,)*
                }
            }

            /// What it finds, in one line.
            pub const fn summary(self) -> &'static str {
                match self {
                    $(RuleId::$variant => $summary,)*
                }
            }

            /// What it finds, why it matters, an example and the fix (Markdown), as `moat
            /// explain` prints it.
            pub const fn doc(self) -> &'static str {
                match self {
                    $(RuleId::$variant => include_str!(concat!("rules/docs/", $id, ".md")),)*
                }
            }
        }
    };
}

catalog! {
    /// A module's SQL references another module's object.
    CrossModuleReference = "cross-module-reference", Error,
        "a module's SQL references a relation, function, type or sequence of another module";
    /// A foreign key references another module's table.
    CrossModuleForeignKey = "cross-module-foreign-key", Error,
        "a foreign key that references another module's table";
    /// An unqualified relation that no migration creates.
    UnresolvedReference = "unresolved-reference", Warning,
        "an unqualified table, view or sequence that no module's migrations create";
    /// An object created outside the module's (or contracts') schema.
    ObjectOutsideModuleSchema = "object-outside-module-schema", Error,
        "a module (or contract) creates an object outside its own schema";
    /// A privilege beyond the manifest: granted in SQL, or held in the live catalog.
    GrantBeyondManifest = "grant-beyond-manifest", Error,
        "a privilege the manifest does not give: a GRANT in a module's SQL, or one held in the database";
    /// A SECURITY DEFINER routine.
    SecurityDefinerFunction = "security-definer-function", Error,
        "a SECURITY DEFINER function: an error without a pinned `search_path`, a warning with one";
    /// Role, database, extension or system statements in a migration.
    PrivilegedStatementInMigration = "privileged-statement-in-migration", Error,
        "CREATE/ALTER/DROP ROLE, CREATE DATABASE, CREATE EXTENSION, SET ROLE, ALTER SYSTEM... in a module migration";
    /// Transaction control in a migration.
    TransactionControlInMigration = "transaction-control-in-migration", Error,
        "BEGIN, COMMIT, ROLLBACK, SAVEPOINT or PREPARE TRANSACTION in a module migration";
    /// `set_config` of a setting or path that is not a constant.
    DynamicSetConfig = "dynamic-set-config", Error,
        "set_config with a setting name, or a search_path, that is not a constant, in a module migration";
    /// `EXECUTE` of a string built at run time.
    DynamicSql = "dynamic-sql", Warning,
        "EXECUTE of a string built at run time in PL/pgSQL or a DO block";
    /// A contract view reads a relation outside its `reads`.
    ContractUndeclaredRead = "contract-undeclared-read", Error,
        "a contract view reads a relation (or calls a module's function) missing from its `reads`";
    /// A contract file does more than create views.
    ContractNotAView = "contract-not-a-view", Error,
        "a contract file that does anything but create views and comment on them";
    /// SQL that does not parse.
    ParseError = "parse-error", Error,
        "SQL that PostgreSQL's grammar rejects";
    /// psql variables in a SQL file.
    PsqlVariable = "psql-variable", Warning,
        "psql variables (`:name`, `:'name'`, `:\"name\"`) in a SQL file";
    /// psql includes in a SQL file that `moat check` does not follow.
    PsqlInclude = "psql-include", Warning,
        "a psql include (`\\i`, `\\ir`) in a SQL file that `moat check` cannot follow";
    /// Go-template placeholders in a SQL file.
    TemplatePlaceholder = "template-placeholder", Warning,
        "Go-template placeholders (`{{ .Name }}`) in a SQL file";
    /// A suppression that silences nothing.
    UnusedSuppression = "unused-suppression", Warning,
        "a `moat:allow` comment that silences nothing";
    /// A suppression without a reason.
    SuppressionWithoutReason = "suppression-without-reason", Error,
        "a `moat:allow` comment without a reason";
    /// `[events]` settings that could lose, duplicate or reorder events on NATS JetStream.
    UnsafeEventTransport = "unsafe-event-transport", Error,
        "a JetStream setting could lose, duplicate or reorder module events";
    /// The database lacks something the manifest asks for.
    ProvisioningDrift = "provisioning-drift", Error,
        "the database lacks a role, schema, grant, setting or contract that the manifest asks for";
    /// A prefixed role or a schema the manifest does not declare.
    OrphanedObject = "orphaned-object", Warning,
        "a role with the project's prefix, or a schema such a role owns, that the manifest does not declare";
    /// A project role with SUPERUSER, CREATEROLE, CREATEDB, REPLICATION or BYPASSRLS.
    PrivilegedRole = "privileged-role", Error,
        "a project role with SUPERUSER, CREATEROLE, CREATEDB, REPLICATION or BYPASSRLS";
    /// A membership that lets a role act as another.
    RoleMembership = "role-membership", Error,
        "a role membership that lets a project role act as another role, or another role act as it";
    /// A relation or routine in `public` that no module claims.
    ObjectInPublicSchema = "object-in-public-schema", Warning,
        "a table, view or routine in schema `public` that no module claims";
    /// PUBLIC's rights on the database or on schema `public`.
    PublicDatabaseAccess = "public-database-access", Error,
        "CONNECT or TEMPORARY on the database, or rights on schema `public`, held by PUBLIC";
    /// The probe did what the manifest forbids.
    AccessLeak = "access-leak", Error,
        "the access probe, acting as a role, did what the manifest forbids";
    /// The probe could not do what the manifest allows.
    AccessBroken = "access-broken", Error,
        "the access probe, acting as a role, could not do what the manifest allows";
    /// The probe could not act as a role, or waited in vain for a lock.
    ProbeIncomplete = "probe-incomplete", Error,
        "the access probe could not act as a role, or gave up waiting for a lock";
    /// One of moat's own tables was altered.
    MoatTableAltered = "moat-table-altered", Error,
        "one of moat's own tables is not a plain table, carries triggers, rules, policies or row security, or has another owner";
    /// A large object of a project role (or granted to one, or to PUBLIC).
    LargeObject = "large-object", Error,
        "a large object owned by or granted to a project role (or PUBLIC)";
    /// A role setting moat does not manage.
    UnmanagedRoleSetting = "unmanaged-role-setting", Error,
        "a role-level setting (`ALTER ROLE ... SET`) of a project role that moat does not manage";
}

impl RuleId {
    /// The rule with this id, if there is one.
    pub fn parse(id: &str) -> Option<RuleId> {
        RuleId::ALL.iter().copied().find(|rule| rule.as_str() == id)
    }
}

impl fmt::Display for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Ordered by id, so that findings sort as they did when rules were strings.
impl Ord for RuleId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl PartialOrd for RuleId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq<str> for RuleId {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for RuleId {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<RuleId> for str {
    fn eq(&self, other: &RuleId) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<RuleId> for &str {
    fn eq(&self, other: &RuleId) -> bool {
        *self == other.as_str()
    }
}

/// A rule id that is in no catalog.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no rule is named `{0}`")]
pub struct UnknownRule(pub String);

impl std::str::FromStr for RuleId {
    type Err = UnknownRule;

    fn from_str(id: &str) -> Result<Self, Self::Err> {
        RuleId::parse(id).ok_or_else(|| UnknownRule(id.to_owned()))
    }
}

impl Serialize for RuleId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for RuleId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let id = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        id.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_has_a_unique_kebab_case_id_a_summary_and_four_part_docs() {
        let mut ids = std::collections::BTreeSet::new();
        for rule in RuleId::ALL {
            let id = rule.as_str();
            assert!(ids.insert(id), "`{id}` twice");
            assert!(!id.is_empty() && id.chars().all(|c| c.is_ascii_lowercase() || c == '-'), "`{id}`");
            assert_eq!(RuleId::parse(id), Some(*rule));
            assert!(!rule.summary().is_empty() && !rule.summary().ends_with('.'), "`{id}`: {}", rule.summary());
            let doc = rule.doc();
            assert!(doc.starts_with(&format!("# {id}\n\n")), "`{id}`: the doc opens with its id");
            for part in ["**What it finds.**", "**Why it matters.**", "**Example.**", "**Fix.**"] {
                assert!(doc.contains(part), "`{id}` lacks {part}");
            }
        }
    }

    #[test]
    fn a_rule_serializes_as_its_id_and_an_unknown_id_is_an_error() {
        let json = serde_json::to_string(&[RuleId::AccessLeak, RuleId::CrossModuleReference]).unwrap();
        assert_eq!(json, r#"["access-leak","cross-module-reference"]"#);
        let back: Vec<RuleId> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, [RuleId::AccessLeak, RuleId::CrossModuleReference]);
        let error = serde_json::from_str::<RuleId>(r#""grant-to-public""#).unwrap_err();
        assert!(error.to_string().contains("no rule is named `grant-to-public`"), "{error}");
    }

    #[test]
    fn rules_order_by_id() {
        let mut rules = RuleId::ALL.to_vec();
        rules.sort();
        let ids: Vec<&str> = rules.iter().map(|r| r.as_str()).collect();
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        assert_eq!(ids, sorted);
    }
}

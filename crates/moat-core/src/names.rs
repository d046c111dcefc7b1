//! Validated names.
//!
//! Every name moat turns into a PostgreSQL identifier passes through one of these types first,
//! so that nothing downstream ever has to ask whether a name could smuggle SQL: the patterns
//! admit only lowercase ASCII letters, digits and underscores.

use std::fmt;

/// Why a name was rejected; the message names the pattern it had to match.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{value}` is not a valid {kind} name: it must match `{pattern}`")]
pub struct NameError {
    /// What kind of name was expected ("project", "module", ...).
    pub kind: &'static str,
    /// The pattern the name had to match.
    pub pattern: &'static str,
    /// The rejected value (shown escaped by `{:?}` where it may hold control characters).
    pub value: String,
}

/// Checks `^[a-z][a-z0-9_]{0,max_rest}$`.
fn matches_pattern(value: &str, max_len: usize) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= max_len
        && bytes[0].is_ascii_lowercase()
        && bytes[1..].iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_')
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:literal, $pattern:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// The pattern every value of this type matches.
            pub const PATTERN: &'static str = $pattern;

            /// Parses a name, rejecting anything outside the pattern.
            pub fn parse(value: &str) -> Result<Self, NameError> {
                if matches_pattern(value, $max) {
                    Ok(Self(value.to_owned()))
                } else {
                    Err(NameError { kind: $kind, pattern: $pattern, value: value.to_owned() })
                }
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

name_type!(
    /// A project name: prefixes every role moat creates (`^[a-z][a-z0-9_]{0,19}$`).
    ProjectName, "project", 20, "^[a-z][a-z0-9_]{0,19}$"
);
name_type!(
    /// A module name (`^[a-z][a-z0-9_]{0,29}$`).
    ModuleName, "module", 30, "^[a-z][a-z0-9_]{0,29}$"
);
name_type!(
    /// A consumer name: a login role that is not a module (`^[a-z][a-z0-9_]{0,29}$`).
    ConsumerName, "consumer", 30, "^[a-z][a-z0-9_]{0,29}$"
);
name_type!(
    /// A contract name (`^[a-z][a-z0-9_]{0,29}$`).
    ContractName, "contract", 30, "^[a-z][a-z0-9_]{0,29}$"
);
name_type!(
    /// A database key of the manifest's `[databases]` (`^[a-z][a-z0-9_]{0,29}$`): where modules
    /// live besides the main database. With the embedded default it is also the database's name.
    DatabaseName, "database", 30, "^[a-z][a-z0-9_]{0,29}$"
);
name_type!(
    /// A schema name (`^[a-z][a-z0-9_]{0,62}$`; PostgreSQL's identifier limit is 63 bytes).
    SchemaName, "schema", 63, "^[a-z][a-z0-9_]{0,62}$"
);
name_type!(
    /// A relation name inside a schema (`^[a-z][a-z0-9_]{0,62}$`).
    RelationName, "relation", 63, "^[a-z][a-z0-9_]{0,62}$"
);

impl SchemaName {
    /// The schema a module gets when the manifest does not name one: the module's own name.
    pub fn of_module(module: &ModuleName) -> Self {
        Self(module.0.clone())
    }
}

/// The schema that holds contract views.
pub const CONTRACTS_SCHEMA: &str = "contracts";

/// Schema names a module may not take, because PostgreSQL or moat already uses them.
pub fn reserved_schema(name: &str) -> bool {
    name == "public" || name == CONTRACTS_SCHEMA || name == "information_schema" || name.starts_with("pg_")
}

/// The roles moat creates for one project, by the fixed naming of PRODUCT.md.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleNames {
    project: ProjectName,
}

impl RoleNames {
    /// Role names for a project.
    pub fn new(project: &ProjectName) -> Self {
        Self { project: project.clone() }
    }

    /// `<project>_<module>_owner`: NOLOGIN, owns the module's schema and everything in it.
    pub fn module_owner(&self, module: &ModuleName) -> String {
        format!("{}_{}_owner", self.project, module)
    }

    /// `<project>_<module>`: LOGIN, the role the module's code connects as.
    pub fn module_runtime(&self, module: &ModuleName) -> String {
        format!("{}_{}", self.project, module)
    }

    /// `<project>_<module>_migrator`: LOGIN (one-time passwords only), NOINHERIT, a member of the
    /// module's owner role: the session user that module migrations run under, so that a role
    /// change inside a migration can only lose rights.
    pub fn module_migrator(&self, module: &ModuleName) -> String {
        format!("{}_{}_migrator", self.project, module)
    }

    /// `<project>_contracts`: NOLOGIN, owns schema `contracts` and moat's ledger in it.
    pub fn contracts_owner(&self) -> String {
        format!("{}_contracts", self.project)
    }

    /// `<project>_contract_<contract>`: owns one contract's views and may read exactly the
    /// relations that contract lists in `reads`.
    pub fn contract_owner(&self, contract: &ContractName) -> String {
        format!("{}_contract_{}", self.project, contract)
    }

    /// `<project>_moat`: NOLOGIN, owns every module schema and moat's own tables in it, so that no
    /// module role can drop, replace or hang code on what other principals touch.
    pub fn moat_owner(&self) -> String {
        format!("{}_moat", self.project)
    }

    /// `<project>_<consumer>`: LOGIN, reads the contract views that list it.
    pub fn consumer(&self, consumer: &ConsumerName) -> String {
        format!("{}_{}", self.project, consumer)
    }

    /// `<project>_relay`: LOGIN, reads the module outboxes for event delivery.
    pub fn relay(&self) -> String {
        format!("{}_relay", self.project)
    }

    /// The prefix every role of the project starts with (`<project>_`).
    pub fn prefix(&self) -> String {
        format!("{}_", self.project)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_follow_the_pattern() {
        assert!(ModuleName::parse("patients").is_ok());
        assert!(ModuleName::parse("lab_results2").is_ok());
        assert!(ModuleName::parse("a").is_ok());
        assert!(ModuleName::parse(&"a".repeat(30)).is_ok());
        for bad in
            ["", "Patients", "1abc", "_x", "lab-results", "pätients", &"a".repeat(31), "patients\"; DROP SCHEMA x; --"]
        {
            assert!(ModuleName::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn project_names_are_at_most_twenty_bytes() {
        assert!(ProjectName::parse(&"p".repeat(20)).is_ok());
        assert!(ProjectName::parse(&"p".repeat(21)).is_err());
    }

    #[test]
    fn the_longest_role_name_fits_postgres_identifier_limit() {
        let roles = RoleNames::new(&ProjectName::parse(&"p".repeat(20)).unwrap());
        let module = ModuleName::parse(&"m".repeat(30)).unwrap();
        for role in [
            roles.module_owner(&module),
            roles.module_migrator(&module),
            roles.contract_owner(&ContractName::parse(&"c".repeat(30)).unwrap()),
        ] {
            assert!(role.len() <= 63, "`{role}` has {} bytes", role.len());
        }
    }

    #[test]
    fn error_names_the_pattern() {
        let err = ModuleName::parse("Bad").unwrap_err();
        assert_eq!(err.to_string(), "`Bad` is not a valid module name: it must match `^[a-z][a-z0-9_]{0,29}$`");
    }
}

//! Dependencies between modules from `pg_depend`: foreign keys, views, triggers, policies and
//! defaults of one module that reach another module's objects, and contract views that read a
//! relation no contract declares. A module's objects are those in its schema and those it
//! claims in a shared schema (`claims` in moat.toml), so a foreign key between two tables of
//! `public` claimed by two modules crosses modules exactly as one between their schemas does.

use moat_core::findings::{Finding, Severity};
use moat_core::manifest::Manifest;
use moat_core::names::CONTRACTS_SCHEMA;
use moat_core::rules::RuleId;
use serde::Deserialize;
use sqlx::PgConnection;

use crate::error::{AdminError, db};

/// One dependency that crosses schemas, described by `pg_identify_object`.
#[derive(Debug, Deserialize)]
struct Dependency {
    kind: String,
    schema: String,
    /// The name that decides its module (its table's, for an index, trigger or constraint).
    name: String,
    identity: String,
    ref_kind: String,
    ref_schema: String,
    /// The name that decides the referenced object's module.
    ref_name: String,
    ref_identity: String,
    foreign_key: Option<String>,
    ref_relation: Option<String>,
}

/// Every dependency between two managed schemas, or between two relations of a claimed schema,
/// as one JSON array.
const DEPENDENCIES_SQL: &str = include_str!("dependencies.sql");

pub(super) async fn dependency_findings(
    conn: &mut PgConnection,
    manifest: &Manifest,
    findings: &mut Vec<Finding>,
) -> Result<(), AdminError> {
    let claimed = manifest.claimed_schemas();
    let mut schemas: Vec<String> = manifest.modules.iter().map(|m| m.schema.to_string()).collect();
    schemas.push(CONTRACTS_SCHEMA.to_owned());
    schemas.extend(claimed.iter().cloned());
    let text: String = sqlx::query_scalar(DEPENDENCIES_SQL)
        .bind(&schemas)
        .bind(&claimed)
        .fetch_one(&mut *conn)
        .await
        .map_err(db("reading dependencies between schemas"))?;
    let dependencies: Vec<Dependency> = serde_json::from_str(&text).map_err(|e| AdminError::Database {
        context: "reading dependencies".into(),
        source: sqlx::Error::Decode(Box::new(e)),
    })?;
    for dep in dependencies {
        let ref_module = manifest.owner_of(&dep.ref_schema, &dep.ref_name);
        if dep.schema == CONTRACTS_SCHEMA {
            // A contract view may read exactly its declared relations (which contract owns which
            // view is not needed here: a read outside every contract's `reads` is undeclared).
            let declared = dep.ref_relation.as_ref().is_some_and(|relation| {
                manifest
                    .contracts
                    .iter()
                    .flat_map(|c| c.reads.iter())
                    .any(|r| r.schema.as_str() == dep.ref_schema && r.relation.as_str() == relation)
            });
            if !declared && ref_module.is_some() {
                findings.push(
                    Finding::new(
                        RuleId::ContractUndeclaredRead,
                        Severity::Error,
                        format!(
                            "{} `{}` depends on {} `{}`, which no contract declares in `reads`",
                            dep.kind, dep.identity, dep.ref_kind, dep.ref_identity
                        ),
                    )
                    .object(dep.identity.clone())
                    .help("declare the relation in the contract's `reads`, or change the view"),
                );
            }
            continue;
        }
        // An object of a shared schema that no module claims is no module's: neither side of a
        // crossing (it is reported as such, `object-in-public-schema`).
        let Some(module) = manifest.owner_of(&dep.schema, &dep.name) else { continue };
        match ref_module {
            Some(other) if other.name == module.name => continue,
            None if dep.ref_schema != CONTRACTS_SCHEMA => continue,
            _ => {}
        }
        let owner_text = match ref_module {
            Some(m) => format!("module `{}`", m.name),
            None => format!("schema `{}`", dep.ref_schema),
        };
        if let Some(constraint) = dep.foreign_key {
            // A foreign key depends on the referenced table and on its unique index; one finding.
            if dep.ref_kind != "table" {
                continue;
            }
            let table = dep.identity.rsplit_once(" on ").map_or(dep.identity.as_str(), |(_, t)| t).to_owned();
            findings.push(
                Finding::new(
                    RuleId::CrossModuleForeignKey,
                    Severity::Error,
                    format!("foreign key `{constraint}` on `{table}` references `{}` of {owner_text}", dep.ref_identity),
                )
                .module(module.name.to_string())
                .object(format!("{table}.{constraint}"))
                .help("store the other module's id as a plain value (no foreign key) and validate it through that module's API; a foreign key couples the two schemas for good"),
            );
            continue;
        }
        findings.push(
            Finding::new(
                RuleId::CrossModuleReference,
                Severity::Error,
                format!("{} `{}` depends on {} `{}` of {owner_text}", dep.kind, dep.identity, dep.ref_kind, dep.ref_identity),
            )
            .module(module.name.to_string())
            .object(dep.identity.clone())
            .help("modules reference each other by id and read each other through APIs, events and snapshots, or through a contract view"),
        );
    }
    Ok(())
}

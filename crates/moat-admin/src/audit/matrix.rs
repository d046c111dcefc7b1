//! The access matrix: the probe's access rows folded into one cell per role and module (or
//! contract), the worst verdict winning.

use std::collections::BTreeMap;

use moat_core::manifest::Manifest;
use moat_core::names::CONTRACTS_SCHEMA;
use serde::Serialize;

use super::probe::{AccessRow, ProbeMethod, ProbedRole, Verdict};
use crate::plan::InstalledContract;

/// A cell of the access matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Cell {
    /// The role's own module.
    Own,
    /// Allowed by the manifest (contract, outbox) and possible.
    Allowed,
    /// Denied, as it should be.
    Denied,
    /// Possible but not allowed.
    Leak,
    /// Allowed but not possible.
    Broken,
    /// The role could not be probed (see the findings).
    Unprobed,
}

/// The access matrix: rows are roles, columns modules then contracts.
#[derive(Debug, Clone, Serialize)]
pub struct Matrix {
    /// Column names (`patients`, `contract ward_census`).
    pub columns: Vec<String>,
    /// One row per probed role: the role and its cells.
    pub rows: Vec<(String, Vec<Cell>)>,
}

/// Folds the access rows into the matrix.
pub(super) fn matrix(
    manifest: &Manifest,
    installed: &BTreeMap<String, InstalledContract>,
    claimants: &BTreeMap<String, String>,
    access: &[AccessRow],
    probed: &[ProbedRole],
) -> Matrix {
    let mut columns: Vec<(String, Vec<String>)> = Vec::new();
    for module in &manifest.modules {
        columns.push((module.name.to_string(), vec![module.schema.to_string()]));
    }
    for contract in &manifest.contracts {
        let views = installed
            .get(contract.name.as_str())
            .map(|c| c.views.iter().map(|v| format!("{CONTRACTS_SCHEMA}.{v}")).collect())
            .unwrap_or_default();
        columns.push((format!("contract {}", contract.name), views));
    }
    // One pass over the access rows: the worst verdict per (role, column).
    let mut column_of: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, (_, scope)) in columns.iter().enumerate() {
        for item in scope {
            column_of.insert(item.as_str(), i);
        }
    }
    let rank = |v: Verdict| match v {
        Verdict::Denied => 0,
        Verdict::Allowed => 1,
        Verdict::Broken => 2,
        Verdict::Leak => 3,
    };
    let mut worst: BTreeMap<(&str, usize), Verdict> = BTreeMap::new();
    for row in access {
        let schema = row.relation.split_once('.').map_or(row.relation.as_str(), |(s, _)| s);
        // A relation a module claims in a shared schema counts as that module's.
        let claimed = || {
            let module = manifest.module(claimants.get(&row.relation)?)?;
            column_of.get(module.schema.as_str())
        };
        let Some(&column) = column_of.get(row.relation.as_str()).or_else(|| column_of.get(schema)).or_else(claimed)
        else {
            continue;
        };
        let entry = worst.entry((row.role.as_str(), column)).or_insert(Verdict::Denied);
        if rank(row.verdict) > rank(*entry) {
            *entry = row.verdict;
        }
    }
    let rows = probed
        .iter()
        .map(|p| {
            let own = p.own_column();
            let cells = columns
                .iter()
                .enumerate()
                .map(|(i, (name, _))| {
                    if own.as_deref() == Some(name.as_str()) {
                        return Cell::Own;
                    }
                    if p.method == ProbeMethod::NotProbed {
                        return Cell::Unprobed;
                    }
                    match worst.get(&(p.role.as_str(), i)).copied().unwrap_or(Verdict::Denied) {
                        Verdict::Leak => Cell::Leak,
                        Verdict::Broken => Cell::Broken,
                        Verdict::Allowed => Cell::Allowed,
                        Verdict::Denied => Cell::Denied,
                    }
                })
                .collect();
            (p.role.clone(), cells)
        })
        .collect();
    Matrix { columns: columns.into_iter().map(|(name, _)| name).collect(), rows }
}

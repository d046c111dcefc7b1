//! `contract-undeclared-read`: a contract view reads a relation missing from its `reads`.

use moat_core::rules::RuleId;

use super::{Cx, Hit, Owner};
use crate::resolve::ObjectKind;

/// The rule (its documentation is in the catalog, `moat_core::rules`).
pub(crate) const RULE: RuleId = RuleId::ContractUndeclaredRead;

/// Reports relations read by a contract that its `reads` does not list.
pub(crate) fn check(cx: &Cx<'_>, out: &mut Vec<Hit>) {
    let Owner::Contract { name: contract, contract: declared } = cx.owner else { return };
    let reads: Vec<String> = declared.map(|c| c.reads.iter().map(ToString::to_string).collect()).unwrap_or_default();
    for reference in cx.unit.facts.references.iter().filter(|r| !r.target) {
        let Some(schema) = cx.resolve(reference) else { continue };
        if matches!(schema.as_str(), "pg_catalog" | "information_schema") || schema.starts_with("pg_") {
            continue;
        }
        let object = reference.name.in_schema(&schema);
        let (message, help) = match reference.kind {
            ObjectKind::Relation | ObjectKind::Sequence => {
                if reads.contains(&object) {
                    continue;
                }
                // The contract's own views (and other contracts' views) live in `contracts`.
                if schema == cx.own_schema() && reference.name.schema.is_none() {
                    continue;
                }
                (
                    format!("contract `{contract}` reads `{object}`, which its `reads` does not declare"),
                    format!(
                        "add \"{object}\" to `reads` of `[contracts.{contract}]` in moat.toml (and tell its owning \
                         module), or read only declared relations"
                    ),
                )
            }
            ObjectKind::Function => {
                let Some(module) = cx.resolver.module_of(&schema) else { continue };
                (
                    format!("contract `{contract}` calls function `{object}` of module `{module}`"),
                    "a contract reads only the relations in its `reads`; compute the value in the view from them"
                        .to_owned(),
                )
            }
            _ => continue,
        };
        out.push(Hit::new(RULE, reference.span.clone(), message, help).object(object));
    }
}

#[cfg(test)]
mod tests {
    use crate::rules::test_support::{contract, migration, render, rules};

    #[test]
    fn fires_on_undeclared_relations_and_module_functions() {
        let sql = "CREATE VIEW ward_census AS\nSELECT p.ward_id, count(*), patients.age(p.id)\nFROM patients.patients p\nJOIN patients.admissions a ON a.patient_id = p.id\nGROUP BY p.ward_id;";
        let findings = contract(sql);
        assert_eq!(rules(&findings), ["contract-undeclared-read"; 2]);
        insta::assert_snapshot!(render(sql, &findings));
    }

    #[test]
    fn does_not_fire_on_declared_reads_comments_or_its_own_views() {
        let sql = "CREATE VIEW ward_census AS\nSELECT p.ward_id, count(rx.id)\nFROM patients.patients p\n\
                   LEFT JOIN prescriptions.prescriptions rx ON rx.patient_id = p.id\nGROUP BY p.ward_id;\n\
                   COMMENT ON VIEW ward_census IS 'per ward';\nCOMMENT ON COLUMN ward_census.ward_id IS 'the ward';\n\
                   CREATE VIEW ward_totals AS SELECT count(*) FROM ward_census;";
        assert!(contract(sql).is_empty(), "{:?}", contract(sql));
    }

    #[test]
    fn does_not_apply_to_modules() {
        assert_eq!(rules(&migration("billing", "SELECT * FROM patients.admissions;")), ["cross-module-reference"]);
    }
}

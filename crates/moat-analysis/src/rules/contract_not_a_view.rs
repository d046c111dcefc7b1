//! `contract-not-a-view`: a contract file that does anything but create views and comment on them.

use moat_core::rules::RuleId;
use pg_query::NodeEnum;
use pg_query::protobuf::ObjectType;

use super::{Cx, Hit, Owner, statement_label};

/// The rule (its documentation is in the catalog, `moat_core::rules`).
pub(crate) const RULE: RuleId = RuleId::ContractNotAView;

/// Reports top-level statements of contract files that are not views or comments on views.
pub(crate) fn check(cx: &Cx<'_>, out: &mut Vec<Hit>) {
    let Owner::Contract { name: contract, .. } = cx.owner else { return };
    if cx.unit.nested {
        return;
    }
    let Some(node) = cx.node() else { return };
    let allowed = match node {
        NodeEnum::ViewStmt(_) => true,
        NodeEnum::CommentStmt(c) => {
            c.objtype == ObjectType::ObjectView as i32 || c.objtype == ObjectType::ObjectColumn as i32
        }
        _ => false,
    };
    if allowed {
        return;
    }
    let label = statement_label(node);
    let frame = cx.frame();
    out.push(
        Hit::new(
            RULE,
            frame.keyword_span(),
            format!("contract `{contract}` runs `{label}`; a contract file may only create views and comment on them"),
            "keep only CREATE VIEW and COMMENT ON VIEW/COLUMN here: readers are declared in moat.toml, tables and \
             functions belong to a module's migrations"
                .to_owned(),
        )
        .object(label),
    );
}

#[cfg(test)]
mod tests {
    use crate::rules::test_support::{contract, render, rules};

    #[test]
    fn fires_on_anything_but_views_and_comments() {
        let sql = "CREATE VIEW ward_census AS SELECT 1 AS n;\nGRANT SELECT ON ward_census TO bi_tool;\n\
                   CREATE TABLE cache (n int);\nCREATE MATERIALIZED VIEW m AS SELECT 1;\nSET search_path = contracts;";
        let findings = contract(sql);
        assert_eq!(rules(&findings), ["contract-not-a-view"; 4]);
        insta::assert_snapshot!(render(sql, &findings));
    }

    #[test]
    fn does_not_fire_on_views_and_their_comments() {
        let sql = "CREATE OR REPLACE VIEW ward_census AS SELECT 1 AS n;\nCOMMENT ON VIEW ward_census IS 'x';\nCOMMENT ON COLUMN ward_census.n IS 'y';";
        assert!(contract(sql).is_empty());
    }
}

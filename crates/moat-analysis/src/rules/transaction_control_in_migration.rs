//! `transaction-control-in-migration`: a migration that ends, starts or splits its transaction.

use moat_core::rules::RuleId;
use pg_query::NodeEnum;
use pg_query::protobuf::TransactionStmtKind as K;

use super::{Cx, Hit};

/// The rule (its documentation is in the catalog, `moat_core::rules`).
pub(crate) const RULE: RuleId = RuleId::TransactionControlInMigration;

/// Reports transaction control in migrations.
pub(crate) fn check(cx: &Cx<'_>, out: &mut Vec<Hit>) {
    if !cx.is_migration() {
        return;
    }
    let help = || {
        "moat runs each migration in one transaction it opens and commits; remove the command (a statement that \
         cannot run in a transaction goes in its own migration marked `-- moat:no-transaction`)"
            .to_owned()
    };
    for (word, span) in &cx.unit.transaction_control {
        out.push(
            Hit::new(RULE, span.clone(), format!("`{word}` in a PL/pgSQL body of a migration"), help())
                .object((*word).to_owned()),
        );
    }
    let Some(NodeEnum::TransactionStmt(t)) = cx.node() else { return };
    let label = match K::try_from(t.kind).unwrap_or(K::Undefined) {
        K::TransStmtBegin => "BEGIN",
        K::TransStmtStart => "START TRANSACTION",
        K::TransStmtCommit => "COMMIT",
        K::TransStmtRollback => "ROLLBACK",
        K::TransStmtSavepoint => "SAVEPOINT",
        K::TransStmtRelease => "RELEASE SAVEPOINT",
        K::TransStmtRollbackTo => "ROLLBACK TO SAVEPOINT",
        K::TransStmtPrepare => "PREPARE TRANSACTION",
        K::TransStmtCommitPrepared => "COMMIT PREPARED",
        K::TransStmtRollbackPrepared => "ROLLBACK PREPARED",
        K::Undefined => "a transaction command",
    };
    out.push(Hit::new(RULE, cx.frame().keyword_span(), format!("`{label}` in a migration"), help()).object(label));
}

#[cfg(test)]
mod tests {
    use crate::rules::test_support::{migration, render, rules, rust};

    #[test]
    fn fires_on_every_transaction_command_and_commit_in_bodies() {
        let sql = "BEGIN;\nCREATE TABLE charges (id uuid);\nCOMMIT;\nSTART TRANSACTION;\nSAVEPOINT a;\n\
                   RELEASE SAVEPOINT a;\nROLLBACK TO SAVEPOINT a;\nEND;\nABORT;\nPREPARE TRANSACTION 'x';\n\
                   COMMIT PREPARED 'x';\nDO $$\nBEGIN\n  INSERT INTO charges VALUES (NULL);\n  COMMIT;\nEND $$;\n\
                   CREATE PROCEDURE p() LANGUAGE plpgsql AS $$\nBEGIN\n  ROLLBACK;\nEND $$;";
        let findings = migration("billing", sql);
        assert_eq!(rules(&findings), ["transaction-control-in-migration"; 12]);
        assert_eq!((findings[10].line, findings[10].column), (Some(15), Some(3)));
        assert_eq!((findings[11].line, findings[11].column), (Some(19), Some(3)));
        insta::assert_snapshot!(render(sql, &findings));
    }

    #[test]
    fn does_not_fire_on_blocks_or_outside_migrations() {
        for sql in [
            "DO $$ BEGIN PERFORM 1; END $$;",
            "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN 1; END $$;",
            "CREATE FUNCTION g() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END;",
        ] {
            assert!(migration("billing", sql).is_empty(), "{sql}");
        }
        assert!(rust("billing", "fn f() { client.batch_execute(\"BEGIN; COMMIT\"); }").is_empty());
    }
}

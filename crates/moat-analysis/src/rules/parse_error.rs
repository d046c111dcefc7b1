//! `parse-error`: SQL that PostgreSQL's grammar rejects.

use std::ops::Range;

use moat_core::rules::RuleId;

use super::Hit;
use crate::parse::message_with_backticks;

/// The rule (its documentation is in the catalog, `moat_core::rules`).
pub(crate) const RULE: RuleId = RuleId::ParseError;

/// A parse error at `span` with PostgreSQL's `message`.
pub(crate) fn hit(span: Range<usize>, message: &str) -> Hit {
    let help = if message.contains("moat reads at most") || message.contains("too deeply to analyze") {
        "PostgreSQL accepts this, but it is nested deeper than moat analyzes, so its references are not checked: \
         split it into simpler statements (or functions), or record it in the baseline"
    } else if message.contains("at or near \":\"") {
        "psql variables (`:name`) are not SQL; migrations are applied by moat, not by psql"
    } else if message.contains("PL/pgSQL") {
        "fix the function body; PostgreSQL would reject the function when it is created"
    } else {
        "fix the statement; moat reads SQL with PostgreSQL's own grammar, so the database would reject it too"
    };
    Hit::new(RULE, span, message_with_backticks(message), help.to_owned())
}

#[cfg(test)]
mod tests {
    use crate::rules::test_support::{migration, only, render, rules, rust};

    #[test]
    fn fires_on_sql_the_grammar_rejects_and_points_at_the_token() {
        let sql = "CREATE TABLE charges (id uuid PRIMARY KEY,\n  amount numeric NOT NULL,);\nSELEC 1;\nSELECT 1;";
        let findings = migration("billing", sql);
        assert_eq!(rules(&findings), ["parse-error", "parse-error"]);
        assert_eq!((findings[0].line, findings[0].column), (Some(2), Some(27)));
        assert_eq!((findings[1].line, findings[1].column), (Some(3), Some(1)));
        insta::assert_snapshot!(render(sql, &findings));
    }

    #[test]
    fn fires_on_a_broken_plpgsql_body() {
        let sql = "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$\nBEGIN\n  RETRN 1;\nEND $$;";
        let findings = migration("billing", sql);
        assert_eq!(rules(&findings), ["parse-error"]);
        assert_eq!(findings[0].line, Some(3));
        insta::assert_snapshot!(render(sql, &findings));
    }

    #[test]
    fn fires_on_unterminated_input_at_its_end() {
        let findings = migration("billing", "SELECT 1;\nSELECT (1");
        assert_eq!(rules(&findings), ["parse-error"]);
        assert_eq!(findings[0].line, Some(2));
    }

    #[test]
    fn fires_on_rust_that_does_not_parse() {
        let findings = rust("billing", "fn f( {");
        assert_eq!(rules(&findings), ["parse-error"]);
    }

    #[test]
    fn fires_on_nul_characters() {
        let findings = migration("billing", "SELECT 1;\0");
        assert_eq!(only(&findings, "parse-error").len(), 1);
    }

    #[test]
    fn does_not_fire_on_valid_sql_with_psql_meta_commands() {
        let sql = "\\set ON_ERROR_STOP on\nCREATE TABLE t (id int);\n\\d t\nSELECT 1 \\gset\n";
        assert!(migration("billing", sql).is_empty());
    }

    #[test]
    fn analysis_limits_do_not_claim_postgresql_rejects_the_sql() {
        let sql = format!("SELECT {}1{};", "(".repeat(450), ")".repeat(450));
        let findings = migration("billing", &sql);
        assert_eq!(rules(&findings), ["parse-error"]);
        let help = findings[0].help.as_deref().unwrap_or_default();
        assert!(help.starts_with("PostgreSQL accepts this"), "{help}");
        assert!(!help.contains("would reject"), "{help}");
        let ifs = format!("DO $$ BEGIN {} NULL; {} END $$;", "IF true THEN ".repeat(60), "END IF; ".repeat(60));
        for finding in migration("billing", &ifs) {
            let help = finding.help.as_deref().unwrap_or_default();
            assert!(!help.contains("would reject"), "{}: {help}", finding.message);
        }
    }

    #[test]
    fn down_sections_are_read_for_syntax_only() {
        let sql = "-- +goose Up\nCREATE TABLE charges (id int);\n-- +goose Down\nSELECT * FROM patients.patients;\nDROP TABLEE charges;\n";
        let findings = migration("billing", sql);
        assert_eq!(rules(&findings), ["parse-error"]);
        assert_eq!(findings[0].line, Some(5));
    }

    #[test]
    fn deep_expressions_are_read() {
        // Regression: prost's default recursion limit rejected `1+1+...` fifty terms long.
        let sql = format!("SELECT {};", vec!["1"; 2000].join("+"));
        assert!(migration("billing", &sql).is_empty());
    }
}

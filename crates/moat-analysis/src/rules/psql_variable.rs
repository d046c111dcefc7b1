//! `psql-variable`: a migration uses psql variables, which only psql substitutes.

use std::ops::Range;

use moat_core::rules::RuleId;

use super::Hit;

/// The rule (its documentation is in the catalog, `moat_core::rules`).
pub(crate) const RULE: RuleId = RuleId::PsqlVariable;

/// One hit for a file's psql variables: the first one's span, their names.
pub(crate) fn hit(first: Range<usize>, names: &[&str]) -> Hit {
    let mut distinct: Vec<&str> = Vec::new();
    for name in names {
        if !distinct.contains(name) {
            distinct.push(name);
        }
    }
    let list = distinct.iter().take(5).map(|n| format!("`:{n}`")).collect::<Vec<_>>().join(", ");
    let more = if distinct.len() > 5 { format!(" and {} more", distinct.len() - 5) } else { String::new() };
    let count = names.len();
    Hit::new(
        RULE,
        first,
        format!(
            "{count} psql variable{} ({list}{more}): only psql substitutes them",
            if count == 1 { "" } else { "s" }
        ),
        "moat applies migrations without psql, so PostgreSQL would see `:name` as a syntax error; write the value \
         in the migration (moat checked the file with placeholders in their place)"
            .to_owned(),
    )
    .object(distinct.first().map(|n| format!(":{n}")).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use crate::rules::test_support::{migration, render, rules};

    #[test]
    fn fires_once_per_file_and_the_statements_are_still_checked() {
        let sql = "\\set owner 'x'\nCREATE TABLE charges (id int);\nGRANT SELECT ON charges TO :\"owner\";\n\
                   SELECT * FROM patients.patients WHERE id = :id AND name = :'name';";
        let findings = migration("billing", sql);
        assert_eq!(rules(&findings), ["grant-beyond-manifest", "psql-variable", "cross-module-reference"]);
        assert_eq!((findings[1].line, findings[1].column), (Some(3), Some(28)));
        assert!(!findings.iter().any(|f| f.rule == "parse-error"));
        insta::assert_snapshot!(render(sql, &findings));
    }
}

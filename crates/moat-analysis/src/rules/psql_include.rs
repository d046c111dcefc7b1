//! `psql-include`: a SQL file includes another with `\i` or `\ir`, which moat does not follow.

use std::ops::Range;

use moat_core::rules::RuleId;

use super::Hit;

/// The rule (its documentation is in the catalog, `moat_core::rules`).
pub(crate) const RULE: RuleId = RuleId::PsqlInclude;

/// A hit for one include.
pub(crate) fn hit(span: Range<usize>, path: &str, relative: bool) -> Hit {
    let command = if relative { "\\ir" } else { "\\i" };
    Hit::new(
        RULE,
        span,
        format!("`{command} {path}` includes a file that moat neither applies nor checks"),
        "only psql follows includes: put the included SQL in the migration, or make it a migration of its own"
            .to_owned(),
    )
    .object(path.to_owned())
}

#[cfg(test)]
mod tests {
    use crate::rules::test_support::{migration, rules};

    #[test]
    fn fires_on_each_include() {
        let sql = "\\i setup.sql\nCREATE TABLE charges (id int);\n\\ir 'functions/billing.sql'\n";
        let findings = migration("billing", sql);
        assert_eq!(rules(&findings), ["psql-include", "psql-include"]);
        assert_eq!(findings[1].object.as_deref(), Some("functions/billing.sql"));
        assert_eq!((findings[1].line, findings[1].column), (Some(3), Some(1)));
    }
}

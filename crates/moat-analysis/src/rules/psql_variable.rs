//! `psql-variable`: a migration uses psql variables, which only psql substitutes.

use std::ops::Range;

use moat_core::findings::Severity;

use super::{Hit, Rule};

/// The rule.
pub(crate) const RULE: Rule = Rule {
    name: "psql-variable",
    severity: Severity::Warning,
    summary: "psql variables (`:name`, `:'name'`, `:\"name\"`) in a SQL file",
    doc: r#"# psql-variable

**What it finds.** psql variables in a migration or contract file: `:name`, `:'name'` (a
string) and `:"name"` (an identifier), as init scripts written for `psql -v name=value` use them.
One finding per file, at the first variable, with how many there are. moat reads the rest of the
file with each variable replaced by a placeholder of the same kind, so its statements are still
checked.

**Why it matters.** moat applies migrations itself, not through psql: nothing substitutes the
variables, and PostgreSQL rejects `:name` as a syntax error when the migration runs.

**Example.**

```sql
CREATE ROLE app LOGIN PASSWORD :'app_password';
```

**Fix.** Write the value in the migration, or do the work outside the module's migrations (roles
and passwords belong to the database's setup; moat manages the module roles itself).
"#,
};

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
        &RULE,
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

//! `psql-include`: a SQL file includes another with `\i` or `\ir` that moat cannot follow.

use std::ops::Range;

use moat_core::rules::RuleId;

use super::Hit;

/// The rule (its documentation is in the catalog, `moat_core::rules`).
pub(crate) const RULE: RuleId = RuleId::PsqlInclude;

/// A hit for one include that is not followed, and why (`why` ends the sentence).
pub(crate) fn hit(span: Range<usize>, path: &str, relative: bool, why: &str) -> Hit {
    let command = if relative { "\\ir" } else { "\\i" };
    Hit::new(
        RULE,
        span,
        format!("`{command} {path}` is not followed, so what it includes is not checked: {why}"),
        "moat follows includes of files inside the project, relative to the including file's folder: \
         write a plain path to such a file, or put the included SQL in the migration itself"
            .to_owned(),
    )
    .object(path.to_owned())
}

#[cfg(test)]
mod tests {
    use crate::rules::test_support::{manifest, migration, rules};
    use crate::{AnalysisInput, Source, SourceKind, analyze};

    #[test]
    fn an_included_file_runs_in_place_in_the_includers_session() {
        let manifest = manifest();
        let billing = SourceKind::Migration { module: "billing".into() };
        let sources = vec![
            Source {
                file: "modules/billing/migrations/0001_init.sql".into(),
                text: "SELECT * FROM patients;\n\\ir ../sql/path.sql\nSELECT * FROM patients;\n\\ir ../sql/path.sql\n",
                kind: billing,
            },
            Source {
                file: "modules/billing/sql/path.sql".into(),
                text: "CREATE TABLE t (id int);\nSET search_path = patients;\nSELECT 1 FROM patients.patients;\n",
                kind: SourceKind::Included,
            },
        ];
        let analysis = analyze(&AnalysisInput { manifest: &manifest, sources });
        let places: Vec<String> = analysis
            .findings
            .iter()
            .map(|f| {
                format!(
                    "{}:{}:{} {}",
                    f.file.as_deref().unwrap_or("-"),
                    f.line.unwrap_or(0),
                    f.column.unwrap_or(0),
                    f.rule
                )
            })
            .collect();
        // Before the include, `patients` is billing's own (unknown) name; after it, the
        // included `SET search_path` holds, so the second reading creates `t` in `patients`.
        // What the included file gives the same way both times is reported once.
        assert_eq!(
            places,
            [
                "modules/billing/migrations/0001_init.sql:1:15 unresolved-reference",
                "modules/billing/migrations/0001_init.sql:3:15 cross-module-reference",
                "modules/billing/migrations/0001_init.sql:3:15 unresolved-reference",
                "modules/billing/sql/path.sql:1:14 object-outside-module-schema",
                "modules/billing/sql/path.sql:3:15 cross-module-reference",
            ]
        );
        assert_eq!(analysis.stats.files, 2);
    }

    #[test]
    fn fires_on_each_include() {
        let sql = "\\i setup.sql\nCREATE TABLE charges (id int);\n\\ir 'functions/billing.sql'\n";
        let findings = migration("billing", sql);
        assert_eq!(rules(&findings), ["psql-include", "psql-include"]);
        assert_eq!(findings[1].object.as_deref(), Some("functions/billing.sql"));
        assert_eq!((findings[1].line, findings[1].column), (Some(3), Some(1)));
    }
}

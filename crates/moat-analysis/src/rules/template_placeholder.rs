//! `template-placeholder`: a SQL file is a template (`{{ .Name }}`), not SQL.

use std::ops::Range;

use moat_core::rules::RuleId;

use super::Hit;

/// The rule (its documentation is in the catalog, `moat_core::rules`).
pub(crate) const RULE: RuleId = RuleId::TemplatePlaceholder;

/// One hit for a file's placeholders.
pub(crate) fn hit(first: Range<usize>, text: &str, count: usize, unread: usize) -> Hit {
    let unread = if unread == 0 {
        String::new()
    } else {
        if unread == 1 {
            "; 1 statement that holds one is not checked".to_owned()
        } else {
            format!("; {unread} statements that hold them are not checked")
        }
    };
    Hit::new(
        RULE,
        first,
        format!(
            "the file is a template: {count} placeholder{} such as `{text}`{unread}",
            if count == 1 { "" } else { "s" }
        ),
        "render the template before `moat check` and apply the rendered SQL; moat checks SQL as it runs".to_owned(),
    )
    .object(text.to_owned())
}

#[cfg(test)]
mod tests {
    use crate::rules::test_support::{migration, rules};

    #[test]
    fn one_finding_per_file_instead_of_parse_errors() {
        let sql = "CREATE SCHEMA IF NOT EXISTS {{ index .Options \"Namespace\" }};\n\
                   {{ if .WithAudit }}\nCREATE TABLE audit (id int);\n{{ end }}\n\
                   CREATE TABLE {{ .Schema }}.jobs (id bigint);\nSELECT * FROM patients.patients;";
        let findings = migration("billing", sql);
        // The statements that hold a placeholder are not checked (nor reported as parse errors).
        assert_eq!(rules(&findings), ["template-placeholder", "cross-module-reference"]);
        assert_eq!((findings[0].line, findings[0].column), (Some(1), Some(29)));
        let message = &findings[0].message;
        assert!(message.contains("4 placeholders") && message.contains("3 statements"), "{message}");
    }
}

//! `security-definer-function`: SECURITY DEFINER, without (error) or with (warning) a pinned
//! `search_path`.

use moat_core::findings::Severity;
use moat_core::rules::RuleId;
use pg_query::NodeEnum;

use super::{Cx, Hit};
use crate::ast::{function_options, name_of, strings};
use crate::resolve::{QualifiedName, Resolver};

/// The rule (its documentation is in the catalog, `moat_core::rules`).
pub(crate) const RULE: RuleId = RuleId::SecurityDefinerFunction;

/// Reports SECURITY DEFINER functions.
pub(crate) fn check(cx: &Cx<'_>, out: &mut Vec<Hit>) {
    let Some(node) = cx.node() else { return };
    let (name, options, what) = match node {
        NodeEnum::CreateFunctionStmt(f) => {
            (name_of(&f.funcname), &f.options, if f.is_procedure { "procedure" } else { "function" })
        }
        NodeEnum::AlterFunctionStmt(f) => {
            (f.func.as_ref().and_then(|o| QualifiedName::from_parts(&strings(&o.objname))), &f.actions, "function")
        }
        _ => return,
    };
    let options = function_options(options);
    let Some(location) = options.security_definer else { return };
    let frame = cx.frame();
    let span = frame.offset(location).map_or_else(|| frame.statement_start(), |o| frame.file_span(o..o + 8));
    let name = name.map_or_else(String::new, |n| match Resolver::creation_schema(&n, &cx.unit.path) {
        Some(schema) => n.in_schema(&schema),
        None => n.to_string(),
    });
    let hit = match &options.pinned_path {
        None => Hit::new(
            RULE,
            span,
            format!("{what} `{name}` is SECURITY DEFINER without a pinned `search_path`"),
            format!(
                "add `SET search_path = {}, pg_temp` to the {what} (or make it SECURITY INVOKER): otherwise a caller \
                 can shadow the objects it uses and run code with its owner's rights",
                cx.own_schema()
            ),
        ),
        Some(path) => Hit::new(
            RULE,
            span,
            format!("{what} `{name}` is SECURITY DEFINER (with `search_path` pinned to `{}`)", path.join(", ")),
            "it runs with its owner's rights for every caller: REVOKE EXECUTE ON FUNCTION ... FROM PUBLIC and \
             grant it only to the roles that need it"
                .to_owned(),
        )
        .severity(Severity::Warning),
    };
    out.push(hit.object(name));
}

/// An unpinned SECURITY DEFINER function whose `search_path` an `ALTER FUNCTION ... SET
/// search_path` of the module pins: a warning, as if it had been pinned where it was created.
pub(crate) fn pinned_later(hit: &mut Hit, object: &str) {
    if hit.rule != RULE || hit.severity != Severity::Error {
        return;
    }
    hit.severity = Severity::Warning;
    hit.message = format!("function `{object}` is SECURITY DEFINER (with `search_path` pinned by `ALTER FUNCTION`)");
    hit.help = "it runs with its owner's rights for every caller: REVOKE EXECUTE ON FUNCTION ... FROM PUBLIC and \
                grant it only to the roles that need it"
        .to_owned();
}

#[cfg(test)]
mod tests {
    use moat_core::findings::Severity;

    use crate::rules::test_support::{migration, render, rules};

    #[test]
    fn fires_as_an_error_without_a_pinned_path_and_a_warning_with_one() {
        let sql = "CREATE FUNCTION patient_exists(id uuid) RETURNS boolean LANGUAGE sql SECURITY DEFINER\n  AS $$ SELECT true $$;\n\
                   CREATE FUNCTION total() RETURNS int LANGUAGE sql\n  SECURITY DEFINER SET search_path = patients, pg_temp AS 'SELECT 1';\n\
                   ALTER FUNCTION patient_exists(uuid) SECURITY DEFINER;";
        let findings = migration("patients", sql);
        assert_eq!(rules(&findings), ["security-definer-function"; 3]);
        let severities: Vec<_> = findings.iter().map(|f| f.severity).collect();
        assert_eq!(severities, [Severity::Error, Severity::Warning, Severity::Error]);
        insta::assert_snapshot!(render(sql, &findings));
    }

    #[test]
    fn a_later_alter_function_set_search_path_pins_it() {
        let sql = "CREATE FUNCTION patient_exists(id uuid) RETURNS boolean LANGUAGE sql SECURITY DEFINER AS 'SELECT true';\n\
                   ALTER FUNCTION patient_exists(uuid) SET search_path = patients, pg_temp;\n\
                   CREATE FUNCTION other() RETURNS int LANGUAGE sql SECURITY DEFINER AS 'SELECT 1';";
        let findings = migration("patients", sql);
        assert_eq!(rules(&findings), ["security-definer-function"; 2]);
        let severities: Vec<_> = findings.iter().map(|f| f.severity).collect();
        assert_eq!(severities, [Severity::Warning, Severity::Error]);
        assert!(findings[0].message.contains("pinned by `ALTER FUNCTION`"), "{}", findings[0].message);
    }

    #[test]
    fn does_not_fire_on_invoker_functions() {
        for sql in [
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1';",
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql SECURITY INVOKER AS 'SELECT 1';",
            "ALTER FUNCTION f() SET search_path = patients;",
        ] {
            assert!(migration("patients", sql).is_empty(), "{sql}");
        }
    }
}

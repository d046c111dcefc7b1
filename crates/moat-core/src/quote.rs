//! The one place where moat turns names and values into SQL text.
//!
//! Everything else that builds SQL dynamically calls these functions; a review of moat's
//! injection surface starts and ends here.

/// Quotes an identifier: always double-quoted, embedded double quotes doubled.
///
/// Always quoting (rather than only when needed, like `quote_ident`) keeps the rule simple and
/// makes keywords safe as names. Validated names (see [`crate::names`]) never contain quotes,
/// but this function does not rely on that.
///
/// ```
/// assert_eq!(moat_core::quote::ident("patients"), r#""patients""#);
/// assert_eq!(moat_core::quote::ident(r#"a"b"#), r#""a""b""#);
/// ```
pub fn ident(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for ch in name.chars() {
        if ch == '"' {
            out.push('"');
        }
        out.push(ch);
    }
    out.push('"');
    out
}

/// Quotes a schema-qualified name: `"schema"."name"`.
pub fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", ident(schema), ident(name))
}

/// Quotes a string literal the way PostgreSQL's `quote_literal` does: single quotes doubled,
/// and an `E''` string with doubled backslashes when the value holds a backslash, so that the
/// result means the same whatever `standard_conforming_strings` is set to.
///
/// NUL characters cannot appear in PostgreSQL text; callers must reject them before quoting
/// (see [`literal_checked`]).
///
/// ```
/// assert_eq!(moat_core::quote::literal("it's"), "'it''s'");
/// assert_eq!(moat_core::quote::literal(r"a\b"), r"E'a\\b'");
/// ```
pub fn literal(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 3);
    if value.contains('\\') {
        out.push('E');
    }
    out.push('\'');
    for ch in value.chars() {
        match ch {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            _ => out.push(ch),
        }
    }
    out.push('\'');
    out
}

/// Like [`literal`], but refuses values that PostgreSQL text cannot hold (NUL characters).
pub fn literal_checked(value: &str) -> Result<String, NulInLiteral> {
    if value.contains('\0') { Err(NulInLiteral) } else { Ok(literal(value)) }
}

/// A value held a NUL character, which PostgreSQL text cannot store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the value holds a NUL character, which PostgreSQL text cannot store")]
pub struct NulInLiteral;

/// A comma-separated list of quoted identifiers.
pub fn ident_list<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    names.into_iter().map(ident).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_cannot_break_out() {
        assert_eq!(ident(r#"patients"; DROP SCHEMA x; --"#), r#""patients""; DROP SCHEMA x; --""#);
    }

    #[test]
    fn literals_cannot_break_out() {
        assert_eq!(literal("'; DROP TABLE t; --"), "'''; DROP TABLE t; --'");
        assert_eq!(literal(r"\'; x"), r"E'\\''; x'");
    }

    #[test]
    fn nul_is_refused() {
        assert_eq!(literal_checked("a\0b"), Err(NulInLiteral));
    }
}

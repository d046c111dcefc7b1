//! Values parsed at the edge: a request body that deserializes holds only values the database
//! accepts, so a bad value is a 422 that names its field, never a failed statement.

use serde::{Deserialize, Serialize};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};

/// The longest text field, in characters.
pub const MAX_TEXT_CHARS: usize = 200;

/// [`Text`]'s rule as a JSON Schema (ECMA-262) pattern: no NUL character, and at least one that is
/// not white space (ECMA-262's `\s`, which [`is_blank`] implements).
pub const TEXT_PATTERN: &str = r"^[^\u0000]*[^\s\u0000][^\u0000]*$";

/// The largest magnitude of a number field: ample for any dose or measurement, and far from the
/// edges of `f64`, whose largest values JSON readers do not all read back alike.
pub const MAX_MAGNITUDE: f64 = 1e15;

/// Whether `c` is white space as ECMA-262's `\s` defines it (WhiteSpace and LineTerminator): the
/// definition the OpenAPI document's [`TEXT_PATTERN`] is read with. Unlike Rust's
/// `char::is_whitespace`, it includes U+FEFF and excludes U+0085.
fn is_ecma_space(c: char) -> bool {
    matches!(
        c,
        '\t' | '\n' | '\u{b}' | '\u{c}' | '\r' | ' ' | '\u{a0}' | '\u{1680}' | '\u{2000}'
            ..='\u{200a}' | '\u{2028}' | '\u{2029}' | '\u{202f}' | '\u{205f}' | '\u{3000}' | '\u{feff}'
    )
}

/// Whether a text holds nothing but white space (see [`is_ecma_space`]).
pub fn is_blank(text: &str) -> bool {
    text.chars().all(is_ecma_space)
}

/// A short text: not blank, at most [`MAX_TEXT_CHARS`] characters, no NUL character (PostgreSQL's
/// `text` cannot hold one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Text(String);

impl Text {
    /// Parses a text value.
    pub fn parse(value: impl Into<String>) -> Result<Self, String> {
        let value = value.into();
        if is_blank(&value) {
            return Err("must not be empty".to_owned());
        }
        if value.contains('\0') {
            return Err("must not contain a NUL character".to_owned());
        }
        if value.chars().count() > MAX_TEXT_CHARS {
            return Err(format!("must be at most {MAX_TEXT_CHARS} characters long"));
        }
        Ok(Self(value))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl utoipa::PartialSchema for Text {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(MAX_TEXT_CHARS))
            .pattern(Some(TEXT_PATTERN))
            .description(Some("A text that is not blank, has at most 200 characters and no NUL character"))
            .into()
    }
}

impl utoipa::ToSchema for Text {}

impl TryFrom<String> for Text {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        Self::parse(value)
    }
}

impl From<Text> for String {
    fn from(text: Text) -> String {
        text.0
    }
}

impl std::fmt::Display for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A number greater than zero and at most [`MAX_MAGNITUDE`] (a dose).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct Positive(f64);

impl Positive {
    /// The number.
    pub fn get(self) -> f64 {
        self.0
    }
}

impl utoipa::PartialSchema for Positive {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Number)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Double)))
            .exclusive_minimum(Some(0.0))
            .maximum(Some(MAX_MAGNITUDE))
            .description(Some("A number greater than zero and at most 1e15"))
            .into()
    }
}

impl utoipa::ToSchema for Positive {}

impl TryFrom<f64> for Positive {
    type Error = String;
    fn try_from(value: f64) -> Result<Self, String> {
        if value > 0.0 && value <= MAX_MAGNITUDE {
            Ok(Self(value))
        } else {
            Err(format!("must be greater than zero and at most {MAX_MAGNITUDE:e}, not {value}"))
        }
    }
}

impl From<Positive> for f64 {
    fn from(value: Positive) -> f64 {
        value.0
    }
}

/// A measured value: a number between -[`MAX_MAGNITUDE`] and [`MAX_MAGNITUDE`] (`-0` reads as `0`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct Measure(f64);

impl Measure {
    /// The number.
    pub fn get(self) -> f64 {
        self.0
    }
}

impl utoipa::PartialSchema for Measure {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Number)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Double)))
            .minimum(Some(-MAX_MAGNITUDE))
            .maximum(Some(MAX_MAGNITUDE))
            .description(Some("A number between -1e15 and 1e15"))
            .into()
    }
}

impl utoipa::ToSchema for Measure {}

impl TryFrom<f64> for Measure {
    type Error = String;
    fn try_from(value: f64) -> Result<Self, String> {
        if (-MAX_MAGNITUDE..=MAX_MAGNITUDE).contains(&value) {
            // `-0.0 + 0.0` is `0.0`: the database's numeric has no negative zero either.
            Ok(Self(value + 0.0))
        } else {
            Err(format!("must be between -{MAX_MAGNITUDE:e} and {MAX_MAGNITUDE:e}, not {value}"))
        }
    }
}

impl From<Measure> for f64 {
    fn from(value: Measure) -> f64 {
        value.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_refuses_blank_nul_and_long_values() {
        assert_eq!(Text::parse("Ada").map(|t| t.to_string()), Ok("Ada".to_owned()));
        assert_eq!(Text::parse(" \t").unwrap_err(), "must not be empty");
        assert_eq!(Text::parse("a\0b").unwrap_err(), "must not contain a NUL character");
        assert!(Text::parse("é".repeat(MAX_TEXT_CHARS)).is_ok());
        assert!(Text::parse("é".repeat(MAX_TEXT_CHARS + 1)).is_err());
        // White space as the OpenAPI pattern's `\s` reads it.
        assert!(Text::parse("\u{feff}").is_err());
        assert!(Text::parse("\u{2028} \u{3000}").is_err());
        assert!(Text::parse("\u{85}").is_ok());
        // A backslash followed by `u0000` is text, not a NUL character.
        assert!(Text::parse("\\u0000").is_ok());
    }

    #[test]
    fn measure_is_bounded_and_has_no_negative_zero() {
        assert_eq!(Measure::try_from(-0.0).map(|m| m.get().to_string()), Ok("0".to_owned()));
        assert!(Measure::try_from(-MAX_MAGNITUDE).is_ok());
        assert!(Measure::try_from(f64::MAX).is_err());
        assert!(Measure::try_from(f64::NAN).is_err());
    }

    #[test]
    fn positive_refuses_zero_and_negative_values() {
        assert!(Positive::try_from(0.5).is_ok());
        assert!(Positive::try_from(0.0).is_err());
        assert!(Positive::try_from(-1.0).is_err());
        assert!(Positive::try_from(f64::NAN).is_err());
        assert!(Positive::try_from(f64::MAX).is_err());
    }
}

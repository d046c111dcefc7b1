//! Values parsed at the edge: a request body that deserializes holds only values the database
//! accepts, so a bad value is a 422 that names its field, never a failed statement.

use serde::{Deserialize, Serialize};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};

/// The longest text field, in characters.
pub const MAX_TEXT_CHARS: usize = 200;

/// [`Text`]'s rule as a JSON Schema (ECMA-262) pattern: no NUL character, and at least one that is
/// not white space.
pub const TEXT_PATTERN: &str = r"^[^\u0000]*[^\s\u0000][^\u0000]*$";

/// A short text: not blank, at most [`MAX_TEXT_CHARS`] characters, no NUL character (PostgreSQL's
/// `text` cannot hold one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Text(String);

impl Text {
    /// Parses a text value.
    pub fn parse(value: impl Into<String>) -> Result<Self, String> {
        let value = value.into();
        if value.trim().is_empty() {
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

/// A finite number greater than zero (a dose).
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
            .description(Some("A number greater than zero"))
            .into()
    }
}

impl utoipa::ToSchema for Positive {}

impl TryFrom<f64> for Positive {
    type Error = String;
    fn try_from(value: f64) -> Result<Self, String> {
        if value.is_finite() && value > 0.0 {
            Ok(Self(value))
        } else {
            Err(format!("must be greater than zero, not {value}"))
        }
    }
}

impl From<Positive> for f64 {
    fn from(value: Positive) -> f64 {
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
    }

    #[test]
    fn positive_refuses_zero_and_negative_values() {
        assert!(Positive::try_from(0.5).is_ok());
        assert!(Positive::try_from(0.0).is_err());
        assert!(Positive::try_from(-1.0).is_err());
        assert!(Positive::try_from(f64::NAN).is_err());
    }
}

//! Terminal output: status lines in cargo's style on stdout, colour only where it helps and only
//! when the terminal takes it (`--color`, `NO_COLOR`, non-tty). A closed pipe ends output quietly.

use std::fmt::Display;
use std::io::Write;

use anstyle::{AnsiColor, Style};

/// Output formats of `--format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Readable at a glance in a terminal.
    Human,
    /// One JSON document on stdout.
    Json,
    /// SARIF 2.1.0, for code-scanning upload (check and audit).
    Sarif,
    /// GitHub workflow annotations (check and audit).
    Github,
}

/// `--color`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    /// Colour on a terminal, unless NO_COLOR is set.
    Auto,
    /// Always colour.
    Always,
    /// Never colour.
    Never,
}

/// Styles used in human output.
pub mod style {
    use super::*;

    /// A status word that went well.
    pub const GOOD: Style = AnsiColor::Green.on_default().bold();
    /// A status word for something to look at.
    pub const WARN: Style = AnsiColor::Yellow.on_default().bold();
    /// A status word for a failure.
    pub const BAD: Style = AnsiColor::Red.on_default().bold();
    /// Emphasis.
    pub const BOLD: Style = Style::new().bold();
    /// De-emphasis.
    pub const DIM: Style = Style::new().dimmed();
    /// A status word that only informs.
    pub const INFO: Style = AnsiColor::Cyan.on_default().bold();
}

/// Writes a line to stdout.
pub fn line(text: impl Display) -> std::io::Result<()> {
    let mut out = anstream::stdout().lock();
    writeln!(out, "{text}")
}

/// Writes text to stdout without a newline.
pub fn text(text: impl Display) -> std::io::Result<()> {
    let mut out = anstream::stdout().lock();
    write!(out, "{text}")?;
    out.flush()
}

/// A cargo-style status line: a right-aligned, coloured verb, then the message.
pub fn status(verb: &str, style: Style, message: impl Display) -> std::io::Result<()> {
    line(format!("{style}{verb:>12}{style:#} {message}"))
}

/// A cargo-style status line on stderr (progress of a command whose stdout is its result).
pub fn status_err(verb: &str, style: Style, message: impl Display) {
    let mut err = anstream::stderr().lock();
    let _ = writeln!(err, "{style}{verb:>12}{style:#} {message}");
}

/// Paints `text` with `style`.
pub fn paint(style: Style, text: impl Display) -> String {
    format!("{style}{text}{style:#}")
}

/// Writes a warning to stderr.
pub fn warn(message: impl Display) {
    let mut err = anstream::stderr().lock();
    let _ = writeln!(err, "{}warning{}: {message}", style::WARN.render(), style::WARN.render_reset());
}

/// Writes a note to stderr.
pub fn note(message: impl Display) {
    let mut err = anstream::stderr().lock();
    let _ = writeln!(err, "{}note{}: {message}", style::INFO.render(), style::INFO.render_reset());
}

/// Writes one JSON document to stdout (compact: audits of large databases run to megabytes).
pub fn json(value: &impl serde::Serialize) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    serde_json::to_writer(&mut out, value).map_err(std::io::Error::other)?;
    writeln!(out)?;
    out.flush()
}

//! Policies: the field catalogue today; purposes, organisation rules and the
//! decision engine build on it.
//!
//! **Architecture Invariant:** this module is pure. It parses text handed to
//! it and decides on values handed to it; it never reads files, the clock or
//! the store. Reading `policies/` from disk happens in [`crate::vault`].

pub mod catalogue;

use std::path::Path;

pub use catalogue::{Catalogue, FieldError, FieldSpec, Sensitivity, ValueType};

/// The file that holds the field catalogue, inside the policy directory.
pub const CATALOGUE_FILE: &str = "fields.toml";

/// The shipped default policies, used when no policy directory is configured
/// and `./policies` does not exist.
pub const DEFAULT_CATALOGUE: &str = include_str!("../../policies/fields.toml");

/// A policy file that does not parse or does not make sense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {problem}")]
pub struct PolicyError {
    /// The file, as named to the parser.
    pub file: String,
    /// The 1-based line the problem is on.
    pub line: usize,
    /// What is wrong.
    pub problem: String,
}

impl PolicyError {
    /// Turns a TOML parse error into a policy error with a line number.
    pub(crate) fn from_toml(file: &str, text: &str, error: &toml::de::Error) -> Self {
        let line = error.span().map(|span| Self::line_of(text, span.start)).unwrap_or(1);
        Self { file: file.to_owned(), line, problem: error.message().trim().to_owned() }
    }

    /// The 1-based line of byte `offset` in `text`.
    pub(crate) fn line_of(text: &str, offset: usize) -> usize {
        text.as_bytes().iter().take(offset).filter(|&&b| b == b'\n').count() + 1
    }
}

/// All policies of a deployment, as parsed from one directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policies {
    /// The field catalogue.
    pub catalogue: Catalogue,
}

impl Policies {
    /// Parses the policy files given as `(file name, text)`; `dir` is only
    /// used to name files in errors.
    pub fn parse(dir: &Path, catalogue_text: &str) -> Result<Self, PolicyError> {
        let file = dir.join(CATALOGUE_FILE).display().to_string();
        Ok(Self { catalogue: Catalogue::parse(&file, catalogue_text)? })
    }
}

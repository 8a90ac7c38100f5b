//! Policies: the field catalogue today; purposes, organisation rules and the
//! decision engine build on it.
//!
//! **Architecture Invariant:** this module is pure. It parses text handed to
//! it and decides on values handed to it; it never reads files, the clock or
//! the store. Reading `policies/` from disk happens in [`crate::vault`].

pub mod catalogue;
pub mod engine;
pub mod purposes;

use std::path::Path;

pub use catalogue::{Catalogue, FieldError, FieldSpec, FieldValues, Sensitivity, ValueType};

pub use purposes::{DenyRule, DurationCap, Purpose, Retention, Rules};

/// The file that holds the field catalogue, inside the policy directory.
pub const CATALOGUE_FILE: &str = "fields.toml";
/// The file that holds the purposes.
pub const PURPOSES_FILE: &str = "purposes.toml";
/// The file that holds the organisation rules.
pub const RULES_FILE: &str = "rules.toml";

/// The shipped default policies, used when no policy directory is configured
/// and `./policies` does not exist.
pub const DEFAULT_CATALOGUE: &str = include_str!("../../policies/fields.toml");
/// The shipped default purposes.
pub const DEFAULT_PURPOSES: &str = include_str!("../../policies/purposes.toml");
/// The shipped default rules.
pub const DEFAULT_RULES: &str = include_str!("../../policies/rules.toml");

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
    /// Purposes and organisation rules.
    pub rules: Rules,
    /// SHA-256 (hex) over the three files, in a fixed order: what the audit
    /// log records when policies are loaded.
    pub sha256: String,
}

/// The texts of the three policy files.
#[derive(Debug, Clone, Copy)]
pub struct PolicyTexts<'a> {
    /// `fields.toml`.
    pub catalogue: &'a str,
    /// `purposes.toml`.
    pub purposes: &'a str,
    /// `rules.toml`.
    pub rules: &'a str,
}

impl Policies {
    /// The policies shipped inside the binary.
    pub fn built_in() -> Self {
        let texts = PolicyTexts { catalogue: DEFAULT_CATALOGUE, purposes: DEFAULT_PURPOSES, rules: DEFAULT_RULES };
        // The shipped policies are checked by this module's unit tests; if
        // they ever failed to parse, the build itself would be broken.
        #[allow(clippy::expect_used)]
        Self::parse(Path::new("<built-in>"), texts).expect("the built-in policies parse")
    }

    /// Parses the policy files; `dir` is only used to name files in errors.
    pub fn parse(dir: &Path, texts: PolicyTexts<'_>) -> Result<Self, PolicyError> {
        let name = |file: &str| dir.join(file).display().to_string();
        let catalogue = Catalogue::parse(&name(CATALOGUE_FILE), texts.catalogue)?;
        let rules = Rules::parse(&catalogue, &name(PURPOSES_FILE), texts.purposes, &name(RULES_FILE), texts.rules)?;
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        for text in [texts.catalogue, texts.purposes, texts.rules] {
            context.update(&(text.len() as u64).to_be_bytes());
            context.update(text.as_bytes());
        }
        let sha256 = crate::ids::hex(context.finish().as_ref());
        Ok(Self { catalogue, rules, sha256 })
    }
}

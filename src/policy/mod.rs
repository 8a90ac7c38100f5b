//! Policies: the field catalogue today; purposes, organisation rules and the
//! decision engine build on it.
//!
//! **Architecture Invariant:** this module is pure. It parses text handed to
//! it and decides on values handed to it; it never reads files, the clock or
//! the store. Reading `policies/` from disk happens in [`crate::vault`].

pub mod catalogue;
pub mod contact;
pub mod engine;
pub mod purposes;

use std::path::Path;

pub use catalogue::{Catalogue, FieldError, FieldSpec, FieldValues, Sensitivity, ValueType};

pub use purposes::{DenyRule, DurationCap, MessageKind, Purpose, Retention, Rules};

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
    /// SHA-256 (hex) of [`Policies::bundle`]: the policies' content
    /// address, which the audit log records when they are loaded.
    pub sha256: String,
    /// The three files' texts as one byte string (see [`Policies::bundle`]).
    bundle: Vec<u8>,
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
        let mut bundle = Vec::new();
        for text in [texts.catalogue, texts.purposes, texts.rules] {
            bundle.extend_from_slice(&(text.len() as u64).to_be_bytes());
            bundle.extend_from_slice(text.as_bytes());
        }
        let sha256 = crate::ids::hex(ring::digest::digest(&ring::digest::SHA256, &bundle).as_ref());
        Ok(Self { catalogue, rules, sha256, bundle })
    }

    /// The policies as one byte string, what their SHA-256 is taken over:
    /// for `fields.toml`, `purposes.toml` and `rules.toml` in that order,
    /// the text's length in bytes (u64, big-endian) and the text (UTF-8).
    /// The vault stores it once per version, under its hash, so a replay
    /// of the log can decide again under the policies then in force.
    pub fn bundle(&self) -> &[u8] {
        &self.bundle
    }

    /// The policies a [`Policies::bundle`] holds, parsed again; their
    /// SHA-256 is the bundle's. `origin` names them in errors.
    pub fn from_bundle(origin: &Path, bundle: &[u8]) -> Result<Self, PolicyError> {
        let texts = bundle_texts(bundle).ok_or_else(|| PolicyError {
            file: origin.display().to_string(),
            line: 1,
            problem: "not a policy bundle (three length-prefixed UTF-8 texts)".to_owned(),
        })?;
        Self::parse(origin, PolicyTexts { catalogue: texts[0], purposes: texts[1], rules: texts[2] })
    }

    /// The three texts of the bundle: `fields.toml`, `purposes.toml`,
    /// `rules.toml`.
    pub fn texts(&self) -> [&str; 3] {
        // A bundle this type made always splits into three texts.
        bundle_texts(&self.bundle).unwrap_or(["", "", ""])
    }
}

/// Splits a bundle into its three texts; `None` unless it is exactly three
/// length-prefixed UTF-8 texts.
fn bundle_texts(mut bundle: &[u8]) -> Option<[&str; 3]> {
    let mut texts = [""; 3];
    for text in &mut texts {
        let (len, rest) = bundle.split_first_chunk::<8>()?;
        let len = usize::try_from(u64::from_be_bytes(*len)).ok()?;
        if rest.len() < len {
            return None;
        }
        let (body, rest) = rest.split_at(len);
        *text = std::str::from_utf8(body).ok()?;
        bundle = rest;
    }
    bundle.is_empty().then_some(texts)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_bundle_is_content_addressed_and_parses_back_to_the_same_policies() {
        let policies = Policies::built_in();
        let digest = ring::digest::digest(&ring::digest::SHA256, policies.bundle());
        assert_eq!(policies.sha256, crate::ids::hex(digest.as_ref()));
        let again = Policies::from_bundle(Path::new("<log>"), policies.bundle()).unwrap();
        assert_eq!(again, policies);
        assert_eq!(policies.texts(), [DEFAULT_CATALOGUE, DEFAULT_PURPOSES, DEFAULT_RULES]);
    }

    #[test]
    fn a_damaged_bundle_is_refused() {
        let bundle = Policies::built_in().bundle().to_vec();
        for damaged in [&bundle[..bundle.len() - 1], &[bundle.as_slice(), b"x"].concat()[..], &bundle[..7]] {
            assert!(Policies::from_bundle(Path::new("<log>"), damaged).is_err());
        }
    }
}

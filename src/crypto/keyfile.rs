//! Where key-encryption keys come from: a key file (mode 0600) or the
//! `CONSENTVAULT_KEK` environment variable.
//!
//! Both hold the same text, one KEK per line or `;`-separated entry:
//! `<version>:<base64url, no padding, of 32 bytes>`. Lines starting with `#`
//! are comments. A bare base64 value means version 1.
//!
//! Guarantees: a key file readable by group or others is refused; keys of the
//! wrong length are refused; in production mode weak keys (one repeated byte,
//! or fewer than 16 distinct byte values) are refused. Errors never quote key
//! text.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SecureRandom;
use zeroize::Zeroizing;

use super::{CryptoError, KEY_BYTES, KeyRing, random_bytes};

/// Where the KEKs are read from.
#[derive(Clone)]
pub enum KeySource {
    /// A key file on disk.
    File(PathBuf),
    /// The text of the `CONSENTVAULT_KEK` environment variable.
    Env(Zeroizing<String>),
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => f.debug_tuple("File").field(path).finish(),
            Self::Env(_) => f.write_str("Env(<redacted>)"),
        }
    }
}

/// Errors while reading or creating key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The key file could not be read or written.
    #[error("key file {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The key file can be read by group or others.
    #[error("key file {path} has mode {mode:o}; it must not be readable by group or others (chmod 600)")]
    Permissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A line of the key text is not `<version>:<base64url>` of 32 bytes.
    #[error("{origin}, entry {entry}: {problem}")]
    Syntax {
        /// The file path or `CONSENTVAULT_KEK`.
        origin: String,
        /// The 1-based entry number.
        entry: usize,
        /// What is wrong, without quoting the key.
        problem: &'static str,
    },
    /// The key text holds no key.
    #[error("{origin} holds no key-encryption key")]
    Empty {
        /// The file path or `CONSENTVAULT_KEK`.
        origin: String,
    },
    /// Production mode refuses a key with too little variety to be random.
    #[error("{origin}, KEK version {version}: the key is weak (not random); production start-up refuses it")]
    Weak {
        /// The file path or `CONSENTVAULT_KEK`.
        origin: String,
        /// The KEK version.
        version: u32,
    },
    /// The keys could not be turned into a key ring.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

/// Creates `path` with a fresh random version-1 KEK, mode 0600. Fails if the
/// file exists.
pub fn write_new_key_file(path: &Path, rng: &dyn SecureRandom) -> Result<(), KeyFileError> {
    let io = |source| KeyFileError::Io { path: path.to_owned(), source };
    let key = Zeroizing::new(random_bytes::<KEY_BYTES>(rng)?);
    let text = Zeroizing::new(format!(
        "# consentvault key-encryption keys: <version>:<base64url>. Keep secret, mode 0600, and back up apart from the data.\n1:{}\n",
        URL_SAFE_NO_PAD.encode(key.as_ref())
    ));
    crate::files::create_private(path, text.as_bytes()).map_err(io)
}

/// Adds KEK `version` to the key file at `path` (KEK rotation). The file is
/// replaced atomically: the new text goes to a private temporary file in the
/// same directory, is flushed, and renamed over the old one, so a crash
/// leaves either the old file or the new one.
pub fn key_file_add(path: &Path, version: u32, key: &[u8; KEY_BYTES]) -> Result<(), KeyFileError> {
    let text = read_private(path)?;
    let mut new_text = Zeroizing::new(text.trim_end().to_owned());
    new_text.push_str(&format!("\n{version}:{}\n", URL_SAFE_NO_PAD.encode(key)));
    // Check what is about to be written before writing it.
    let keys = parse_keys(&path.display().to_string(), &new_text)?;
    if keys.iter().filter(|(seen, _)| *seen == version).count() != 1 {
        return Err(KeyFileError::Syntax {
            origin: path.display().to_string(),
            entry: keys.len(),
            problem: "version appears twice",
        });
    }
    replace_private(path, &new_text)
}

/// Removes KEK `versions` from the key file at `path` (the end of a
/// rotation), atomically as [`key_file_add`] does. Comments and other
/// versions stay as they were.
pub fn key_file_remove(path: &Path, versions: &[u32]) -> Result<(), KeyFileError> {
    let text = read_private(path)?;
    let kept: Vec<&str> = text
        .lines()
        .filter(|line| {
            let entry = line.trim();
            if entry.is_empty() || entry.starts_with('#') {
                return true;
            }
            let version = entry.split_once(':').map_or(Some(1), |(version, _)| version.trim().parse::<u32>().ok());
            !version.is_some_and(|version| versions.contains(&version))
        })
        .collect();
    let new_text = Zeroizing::new(format!("{}\n", kept.join("\n")));
    let keys = parse_keys(&path.display().to_string(), &new_text)?;
    if keys.iter().any(|(version, _)| versions.contains(version)) {
        return Err(KeyFileError::Syntax {
            origin: path.display().to_string(),
            entry: 0,
            problem: "a removed version is still present",
        });
    }
    replace_private(path, &new_text)
}

fn read_private(path: &Path) -> Result<Zeroizing<String>, KeyFileError> {
    let io = |source| KeyFileError::Io { path: path.to_owned(), source };
    let mode = std::fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Permissions { path: path.to_owned(), mode });
    }
    Ok(Zeroizing::new(std::fs::read_to_string(path).map_err(io)?))
}

fn replace_private(path: &Path, text: &str) -> Result<(), KeyFileError> {
    crate::files::replace_private(path, text.as_bytes())
        .map_err(|source| KeyFileError::Io { path: path.to_owned(), source })
}

/// Reads the KEKs from `source` into a key ring.
pub fn load_key_ring(source: &KeySource, production: bool) -> Result<KeyRing, KeyFileError> {
    let (origin, text) = match source {
        KeySource::File(path) => (path.display().to_string(), read_private(path)?),
        KeySource::Env(text) => ("CONSENTVAULT_KEK".to_owned(), text.clone()),
    };
    let keys = parse_keys(&origin, &text)?;
    if production {
        for (version, key) in &keys {
            if is_weak(key) {
                return Err(KeyFileError::Weak { origin, version: *version });
            }
        }
    }
    Ok(KeyRing::new(keys)?)
}

/// KEKs by version, as read from key text.
type VersionedKeys = Vec<(u32, Zeroizing<[u8; KEY_BYTES]>)>;

fn parse_keys(origin: &str, text: &str) -> Result<VersionedKeys, KeyFileError> {
    let entries = text.split(['\n', ';']).map(str::trim).filter(|line| !line.is_empty() && !line.starts_with('#'));
    let mut keys: VersionedKeys = Vec::new();
    for (index, entry) in entries.enumerate() {
        let syntax = |problem| KeyFileError::Syntax { origin: origin.to_owned(), entry: index + 1, problem };
        let (version, encoded) = match entry.split_once(':') {
            Some((version, encoded)) => {
                (version.trim().parse::<u32>().map_err(|_| syntax("version is not a number"))?, encoded.trim())
            }
            None => (1, entry),
        };
        if version == 0 {
            return Err(syntax("versions start at 1"));
        }
        if keys.iter().any(|(seen, _)| *seen == version) {
            return Err(syntax("version appears twice"));
        }
        let decoded = Zeroizing::new(
            URL_SAFE_NO_PAD.decode(encoded).map_err(|_| syntax("key is not base64url without padding"))?,
        );
        let key: [u8; KEY_BYTES] = decoded.as_slice().try_into().map_err(|_| syntax("key is not 32 bytes"))?;
        keys.push((version, Zeroizing::new(key)));
    }
    if keys.is_empty() {
        return Err(KeyFileError::Empty { origin: origin.to_owned() });
    }
    Ok(keys)
}

/// A random 32-byte key has, with overwhelming probability, more than 16
/// distinct byte values; a key with fewer was typed or derived, not drawn.
fn is_weak(key: &[u8; KEY_BYTES]) -> bool {
    let mut seen = [false; 256];
    for &byte in key {
        seen[usize::from(byte)] = true;
    }
    seen.iter().filter(|&&s| s).count() < 16
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use ring::rand::SystemRandom;

    #[test]
    fn new_key_file_is_private_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek.key");
        write_new_key_file(&path, &SystemRandom::new()).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let ring = load_key_ring(&KeySource::File(path.clone()), true).unwrap();
        assert_eq!(ring.current_version(), 1);
        assert!(write_new_key_file(&path, &SystemRandom::new()).is_err(), "must not overwrite a key file");
    }

    #[test]
    fn key_file_readable_by_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek.key");
        write_new_key_file(&path, &SystemRandom::new()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(load_key_ring(&KeySource::File(path), false), Err(KeyFileError::Permissions { .. })));
    }

    #[test]
    fn env_keys_parse_with_versions_and_highest_is_current() {
        let a = URL_SAFE_NO_PAD.encode(random_bytes::<32>(&SystemRandom::new()).unwrap());
        let b = URL_SAFE_NO_PAD.encode(random_bytes::<32>(&SystemRandom::new()).unwrap());
        let ring = load_key_ring(&KeySource::Env(Zeroizing::new(format!("1:{a};3:{b}"))), true).unwrap();
        assert_eq!(ring.versions(), vec![1, 3]);
        assert_eq!(ring.current_version(), 3);
        let bare = load_key_ring(&KeySource::Env(Zeroizing::new(a)), true).unwrap();
        assert_eq!(bare.versions(), vec![1]);
    }

    #[test]
    fn malformed_keys_are_refused_without_quoting_them() {
        let short = URL_SAFE_NO_PAD.encode([7u8; 16]);
        let cases = [
            String::new(),
            "# only a comment".to_owned(),
            "x:c2VjcmV0LWtleS10ZXh0".to_owned(),
            "0:c2VjcmV0LWtleS10ZXh0".to_owned(),
            "1:not base64 secret!".to_owned(),
            format!("1:{short}"),
        ];
        for text in cases {
            let error = load_key_ring(&KeySource::Env(Zeroizing::new(text.clone())), false).unwrap_err();
            let message = error.to_string();
            let key_part = text.split_once(':').map_or(text.as_str(), |(_, key)| key);
            assert!(key_part.len() < 8 || !message.contains(key_part), "{message} quotes the key text");
        }
    }

    #[test]
    fn key_file_gains_and_loses_versions_and_stays_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek.key");
        write_new_key_file(&path, &SystemRandom::new()).unwrap();
        let first = load_key_ring(&KeySource::File(path.clone()), true).unwrap();
        let second = first.kek_generate().unwrap();
        key_file_add(&path, 2, &second).unwrap();
        assert!(key_file_add(&path, 2, &second).is_err(), "a version is added once");
        let both = load_key_ring(&KeySource::File(path.clone()), true).unwrap();
        assert_eq!(both.versions(), vec![1, 2]);
        assert_eq!(both.current_version(), 2);
        key_file_remove(&path, &[1]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# consentvault key-encryption keys"), "comments stay");
        assert!(!text.lines().any(|line| line.starts_with("1:")));
        assert_eq!(load_key_ring(&KeySource::File(path.clone()), true).unwrap().versions(), vec![2]);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(!dir.path().join("kek.key.new").exists());
    }

    #[test]
    fn production_refuses_weak_keys() {
        let weak = URL_SAFE_NO_PAD.encode([0u8; 32]);
        let source = KeySource::Env(Zeroizing::new(weak));
        assert!(matches!(load_key_ring(&source, true), Err(KeyFileError::Weak { version: 1, .. })));
        assert!(load_key_ring(&source, false).is_ok(), "development mode accepts any 32-byte key");
    }
}

//! `consentvault store copy`: moves a stopped vault's records from one
//! engine to the other, byte for byte (sealed values stay sealed; no key is
//! needed to copy), into an empty destination.
//!
//! Into PostgreSQL the copy is one transaction that holds the lease row, so
//! no node serves from the database meanwhile and a copy cut off leaves it
//! empty. Into sled the records go in key order, the format record first, so
//! a copy cut off is a store that refuses to open (its log does not verify)
//! rather than one taken for new. The caller verifies the destination's log
//! afterwards (`cli.rs`).

use std::path::PathBuf;

use super::postgres::{PostgresCopy, PostgresUrl};
use super::sled_backend::SledBackend;
use super::{Backend, Entries, StoreError, WriteBatch};

/// Records per page read and written.
const PAGE_ENTRIES: usize = 10_000;

/// The embedded engine's page cache while copying.
const COPY_CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// One side of a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// The embedded store of the data directory (`sled:DIR`).
    Sled(PathBuf),
    /// A PostgreSQL database (`postgres://...`).
    Postgres(PostgresUrl),
}

impl Endpoint {
    /// Parses `sled:DIR` (a data directory) or a PostgreSQL URL.
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(dir) = text.strip_prefix("sled:") {
            if dir.is_empty() {
                return Err("sled:DIR names the data directory".to_owned());
            }
            return Ok(Self::Sled(PathBuf::from(dir)));
        }
        PostgresUrl::parse(text).map(Self::Postgres).map_err(|problem| format!("`sled:DIR` or {problem}"))
    }

    /// The data directory of a `sled:` endpoint.
    pub fn data_dir(&self) -> Option<&std::path::Path> {
        match self {
            Self::Sled(dir) => Some(dir),
            Self::Postgres(_) => None,
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sled(dir) => write!(f, "sled:{}", dir.display()),
            Self::Postgres(url) => write!(f, "{url}"),
        }
    }
}

/// Errors of a copy.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// Reading the source or writing the destination failed (a store in
    /// use by a running vault included).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The source holds no vault.
    #[error("{0} holds no vault")]
    NoSource(String),
    /// The destination holds records already; nothing was written.
    #[error("{0} is not empty: a copy goes into an empty store only (nothing was written)")]
    NotEmpty(String),
    /// Both sides are the same kind of engine.
    #[error("a copy goes from sled to PostgreSQL or back")]
    SameEngine,
}

fn sled_open(dir: &std::path::Path) -> Result<SledBackend, StoreError> {
    SledBackend::open(&dir.join(super::EMBEDDED_DIR), COPY_CACHE_BYTES)
}

/// Copies every record of `from` into the empty `to`; `progress` hears how
/// many of how many are copied. Returns the count.
pub fn copy(from: &Endpoint, to: &Endpoint, progress: &dyn Fn(u64, u64)) -> Result<u64, CopyError> {
    match (from, to) {
        (Endpoint::Sled(dir), Endpoint::Postgres(url)) => {
            if !dir.join(super::EMBEDDED_DIR).is_dir() {
                return Err(CopyError::NoSource(from.to_string()));
            }
            let source = sled_open(dir)?;
            let total = source.keys_count()?;
            let mut destination = PostgresCopy::open(url)?;
            destination.begin()?;
            if destination.count()? != 0 {
                return Err(CopyError::NotEmpty(to.to_string()));
            }
            let mut copied = 0u64;
            let mut start = Vec::new();
            loop {
                let page = source.scan(&start, &[], PAGE_ENTRIES)?;
                let Some((last, _)) = page.last() else { break };
                start = next_after(last);
                destination.write(&page)?;
                copied += page.len() as u64;
                progress(copied, total);
            }
            destination.commit()?;
            Ok(copied)
        }
        (Endpoint::Postgres(url), Endpoint::Sled(dir)) => {
            let mut source = PostgresCopy::open(url)?;
            source.begin()?;
            let total = source.count()?;
            if total == 0 {
                return Err(CopyError::NoSource(from.to_string()));
            }
            if dir.join(super::EMBEDDED_DIR).exists() {
                return Err(CopyError::NotEmpty(to.to_string()));
            }
            let destination = sled_open(dir)?;
            let mut copied = 0u64;
            let mut after: Option<Vec<u8>> = None;
            loop {
                let page: Entries = source.page(after.as_deref())?;
                let Some((last, _)) = page.last() else { break };
                after = Some(last.clone());
                let batch: WriteBatch = page.iter().map(|(key, value)| (key.clone(), Some(value.clone()))).collect();
                destination.apply(&batch)?;
                destination.flush()?;
                copied += page.len() as u64;
                progress(copied, total);
            }
            source.commit()?;
            Ok(copied)
        }
        _ => Err(CopyError::SameEngine),
    }
}

/// The smallest key after `key`.
fn next_after(key: &[u8]) -> Vec<u8> {
    let mut next = key.to_vec();
    next.push(0);
    next
}

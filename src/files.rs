//! Files the vault writes outside its store, written so that a power cut
//! leaves either nothing or the whole file under its name: the bytes are
//! synced before the name is made, and the directory after it.
//!
//! A file's `fsync` covers its bytes and size, not its name: the name lives
//! in the directory, which needs its own `fsync` once an entry is added,
//! renamed or removed.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Syncs the directory `dir`, so the entries added, renamed or removed in
/// it survive a power cut.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    std::fs::File::open(dir)?.sync_all()
}

/// Syncs the directory that holds `path`.
pub fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}

/// Creates `path` (which must not exist) readable by the owner only, with
/// `bytes`, synced, and syncs its directory.
pub fn create_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    sync_parent(path)
}

/// Replaces `path` with `bytes` atomically, readable by the owner only: the
/// bytes go to `<path>.new`, are synced and renamed over `path`, and the
/// directory is synced; a crash or power cut leaves the old file or the new.
pub fn replace_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".new");
    let temporary = std::path::PathBuf::from(temporary);
    match std::fs::remove_file(&temporary) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    sync_parent(path)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_private_file_is_created_once_and_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("note");
        create_private(&path, b"first").unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(create_private(&path, b"again").unwrap_err().kind(), std::io::ErrorKind::AlreadyExists);
        // A temporary file a crash left behind does not stop the next replace.
        std::fs::write(dir.path().join("note.new"), b"half").unwrap();
        replace_private(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert!(!dir.path().join("note.new").exists());
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
}

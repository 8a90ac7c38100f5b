//! Backups of a vault's store, taken while it serves, and restores.
//!
//! A backup copies the stored bytes as they are: sealed values, wrapped
//! DEKs, the audit log, the sealed signing keys. It never holds a key-
//! encryption key, so it is as safe to keep as the store itself, and
//! useless without the key file, which must be backed up apart.
//!
//! **Consistency while serving.** Every change goes through the commit
//! thread, so the backup reads the store there: in chunks of
//! [`CHUNK_KEYS_DEFAULT`] keys, each a read-only transaction (a consistent read at
//! one place in commit order), and meanwhile a [`BatchTap`] hands it every
//! batch the commit thread makes durable, as a redo record. Both are queued
//! from the commit thread, so the file's order is commit order: a chunk read
//! in batch `k` comes before the redo of batch `k`. Applying the records in
//! file order gives, for every key, the state the store was in after the
//! last batch in the file: a key's value is the last write to it in the file,
//! and a chunk covering it is followed by every later write to it. Writers
//! never wait for the backup beyond the time one chunk is read.
//!
//! The embedded engine has no point-in-time snapshot (its iterators see concurrent
//! writes), and copying its directory while it runs is not consistent; this
//! scheme needs nothing from the engine beyond the commit path.
//!
//! **File layout** (all integers big-endian; `docs/OPERATIONS.md`):
//!
//! ```text
//! file     = header record* trailer
//! header   = "CVBACKUP" (8 bytes) ‖ format version (u16, = 1)
//! record   = kind (u8) ‖ body length (u32) ‖ body
//!   0x01 chunk: count (u32) ‖ count × write, every write a put
//!   0x02 redo:  count (u32) ‖ count × write
//!   write    = key length (u32) ‖ key ‖ op (u8: 0x01 put, 0x00 delete)
//!              ‖ [value length (u32) ‖ value, for a put]
//! trailer  = 0x03 ‖ body length (u32) ‖ records before it (u64)
//!            ‖ note length (u32) ‖ latest signed checkpoint (note text)
//!            ‖ SHA-256 of every byte of the file before these 32
//! ```
//!
//! The trailer's checkpoint is the store's latest checkpoint as of the last
//! record; every batch that appends to the audit log rewrites it, so it
//! covers the whole backed-up log. The digest finds damage and truncation;
//! the checkpoint's signature and the full audit verification at restore
//! authenticate the log, and AES-GCM authenticates every sealed value.
//!
//! **Restore** refuses a non-empty target, checks the whole file (header,
//! every record, trailer, digest) before writing anything, writes the store
//! beside its final name, opens it with the given KEK, recomputes the whole
//! audit log, checks that the trailer's checkpoint covers exactly that log,
//! records a `vault.restored` event, and only then renames the store into
//! place. On any failure it removes what it wrote.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::audit::checkpoint::{Checkpoint, NoteError};
use crate::audit::verify::{Depth, VerifyFailure, verify_log};
use crate::audit::{AuditError, AuditEvent, EventKind, checkpoint_note_key};
use crate::crypto::load_key_ring;
use crate::store::{BatchTap, CommitError, Entries, Store, StoreError, WriteBatch};
use crate::vault::{self, STORE_DIR, VaultError, VaultOptions};

/// The first bytes of every backup file.
const MAGIC: &[u8; 8] = b"CVBACKUP";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// Keys read per chunk by default: one read-only transaction on the commit
/// thread, so it bounds how long a chunk holds writers back (about a
/// millisecond).
pub const CHUNK_KEYS_DEFAULT: usize = 1000;
/// The most keys a chunk may read.
pub const CHUNK_KEYS_MAX: usize = 100_000;
/// A record body is closed once it passes this size.
const RECORD_BYTES_TARGET: usize = 1 << 20;
/// The largest record body a reader accepts (and a writer writes).
const RECORD_BYTES_MAX: usize = 64 << 20;
const KIND_CHUNK: u8 = 0x01;
const KIND_REDO: u8 = 0x02;
const KIND_TRAILER: u8 = 0x03;
const OP_DELETE: u8 = 0x00;
const OP_PUT: u8 = 0x01;
const DIGEST_BYTES: usize = 32;
/// Where restore writes the store before renaming it to `store/`.
const RESTORING_DIR: &str = "store.restoring";

/// Errors of backup and restore. None holds a stored value.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// A file could not be created, read, written or renamed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The output file exists already; a backup never overwrites a file.
    #[error("{0} exists already; a backup never overwrites a file")]
    Exists(PathBuf),
    /// The output path has no parent directory or file name.
    #[error("{0} cannot name a backup file")]
    BadPath(PathBuf),
    /// The file does not start like a backup file.
    #[error("not a consentvault backup file")]
    NotABackup,
    /// The file was written in a format version this build does not read.
    #[error("backup format version {found}; this build reads version {FORMAT_VERSION}")]
    Version {
        /// The version in the header.
        found: u16,
    },
    /// The file ends before its trailer.
    #[error("the backup file ends before its trailer: it is truncated")]
    Truncated,
    /// A record cannot be decoded.
    #[error("record {record} of the backup file is malformed ({problem}): the file was changed or damaged")]
    Malformed {
        /// The record's position (0 is the first after the header).
        record: u64,
        /// What is wrong.
        problem: &'static str,
    },
    /// The SHA-256 of the file does not match the one in its trailer.
    #[error("the backup file's SHA-256 does not match its trailer: the file was changed or damaged")]
    DigestMismatch,
    /// The trailer disagrees with the records before it.
    #[error("the backup trailer does not match the file: {0}")]
    TrailerMismatch(&'static str),
    /// The file changed between the check and the restore.
    #[error("the backup file changed while it was being restored")]
    Changed,
    /// The store holds no signed checkpoint to close the backup with.
    #[error("the store holds no signed checkpoint yet (a vault that was initialised but never opened); start it once")]
    NoCheckpoint,
    /// A single stored entry is larger than a record may be.
    #[error("a stored entry is larger than a backup record may be")]
    EntryTooLarge,
    /// The store failed while the backup read it, or the commit path stopped.
    #[error("the store failed during the backup: {0}")]
    Store(#[from] StoreError),
    /// The backup stopped before its last batch (the store is closing).
    #[error("the backup was interrupted before its end; no file was written")]
    Interrupted,
    /// Restore was asked to write into a directory that holds something.
    #[error("{0} is not empty; restore only into an empty or new directory")]
    TargetNotEmpty(PathBuf),
    /// Restore was not told where the key-encryption key is.
    #[error(
        "restore needs the key-encryption key the backup's data keys are wrapped with: pass --kek-file (the key file kept apart from the backup) or set CONSENTVAULT_KEK"
    )]
    NoKey,
    /// The restored store could not be opened: a wrong KEK, a foreign format.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// The restored audit log does not verify.
    #[error("the restored audit log does not verify: {0}")]
    AuditInvalid(VerifyFailure),
    /// The trailer's checkpoint does not verify under the log's key.
    #[error("the backup's checkpoint does not verify: {0}")]
    Checkpoint(#[from] NoteError),
    /// The trailer's checkpoint does not cover exactly the restored log.
    #[error("the backup's checkpoint does not cover the restored log (size {checkpoint} against {log})")]
    CheckpointMismatch {
        /// The checkpoint's tree size.
        checkpoint: u64,
        /// The restored log's size.
        log: u64,
    },
    /// The restore could not be recorded in the audit log.
    #[error("recording the restore: {0}")]
    Audit(#[from] AuditError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io { path: path.to_owned(), source }
}

fn commit_error(error: CommitError<StoreError>) -> BackupError {
    match error {
        CommitError::Rejected(error) | CommitError::Store(error) => BackupError::Store(error),
    }
}

/// How far a backup has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Records written.
    pub records: u64,
    /// Bytes written.
    pub bytes: u64,
}

/// A finished backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupSummary {
    /// The file written.
    pub file: PathBuf,
    /// Records before the trailer.
    pub records: u64,
    /// Chunk reads of the store.
    pub chunks: u64,
    /// Batches committed while the backup ran, carried as redo records.
    pub redo_batches: u64,
    /// Bytes in the file.
    pub bytes: u64,
    /// The size of the backed-up audit log.
    pub audit_size: u64,
    /// Its root hash, standard base64.
    pub audit_root: String,
    /// SHA-256 of the file before its last 32 bytes, hex.
    pub sha256: String,
    /// Time taken, in milliseconds.
    pub elapsed_ms: u64,
}

/// What the commit thread hands the backup, in commit order.
enum Feed {
    /// The entries of one chunk read.
    Chunk(Entries),
    /// The writes of one durable batch.
    Redo(WriteBatch),
    /// The batch that ends the backup was handed over.
    End,
    /// A batch was not made durable; the backup cannot be consistent.
    Failed(StoreError),
}

/// The tap the first chunk installs: forwards every durable batch, and ends
/// after the batch in which `stop` was set.
fn tap_new(sender: mpsc::Sender<Feed>, stop: Arc<AtomicBool>) -> BatchTap {
    Box::new(move |batch| match batch {
        Ok(batch) => {
            // A closed channel means the backup gave up: remove the tap.
            let sent = batch.is_empty() || sender.send(Feed::Redo(batch.clone())).is_ok();
            if !stop.load(Ordering::Acquire) {
                return sent;
            }
            let _ = sender.send(Feed::End);
            false
        }
        Err(error) => {
            let _ = sender.send(Feed::Failed(error.clone()));
            false
        }
    })
}

/// Writes a consistent backup of `store` to `out`, while the store keeps
/// taking writes, reading `chunk_keys` keys per transaction (at most
/// [`CHUNK_KEYS_MAX`]); the file appears under its name only once it is
/// complete and on disk. `progress` is called after every chunk.
pub fn write(
    store: &Store,
    out: &Path,
    chunk_keys: usize,
    progress: &mut dyn FnMut(Progress),
) -> Result<BackupSummary, BackupError> {
    let started = std::time::Instant::now();
    let chunk_keys = chunk_keys.clamp(1, CHUNK_KEYS_MAX);
    let mut writer = BackupWriter::create(out)?;
    let (sender, feed) = mpsc::channel::<Feed>();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tap = Some(tap_new(sender.clone(), Arc::clone(&stop)));
    let mut start = Some(Vec::new());
    while let Some(from) = start.take() {
        let tap = tap.take();
        let chunk_sender = sender.clone();
        start = store
            .commit_blocking(move |txn| {
                if let Some(tap) = tap {
                    txn.tap(tap);
                }
                let page = txn.scan_from(&from, chunk_keys)?;
                // Sent from the commit thread, before this batch's redo. The
                // receiver lives until `write` returns, which is after this
                // transaction is answered, so the send cannot fail.
                let _ = chunk_sender.send(Feed::Chunk(page.entries));
                Ok::<_, StoreError>(page.next)
            })
            .map_err(commit_error)?;
        writer.chunks += 1;
        writer.drain(feed.try_iter())?;
        progress(writer.progress());
    }
    // The batch that carries this transaction is the backup's last.
    let stop_here = Arc::clone(&stop);
    store
        .commit_blocking(move |_txn| {
            stop_here.store(true, Ordering::Release);
            Ok::<_, StoreError>(())
        })
        .map_err(commit_error)?;
    drop(sender);
    // The tap queued that batch and `End` before the transaction above was
    // answered; once the tap is gone the channel closes.
    writer.drain(feed.iter())?;
    if !writer.ended {
        return Err(BackupError::Interrupted);
    }
    let summary = writer.finish(started)?;
    tracing::info!(
        records = summary.records,
        chunks = summary.chunks,
        redo_batches = summary.redo_batches,
        bytes = summary.bytes,
        audit_size = summary.audit_size,
        elapsed_ms = summary.elapsed_ms,
        "backup written"
    );
    Ok(summary)
}

/// The checkpoint in a signed note, without checking its signature (a
/// backup is taken without keys; restore checks the signature).
fn checkpoint_unverified(note: &str) -> Option<Checkpoint> {
    let (body, _) = note.split_once("\n\n")?;
    Checkpoint::parse_body(&format!("{body}\n")).ok()
}

/// Appends one write to a record body.
fn write_encode(body: &mut Vec<u8>, key: &[u8], value: Option<&[u8]>) -> Result<(), BackupError> {
    let length = |bytes: &[u8]| u32::try_from(bytes.len()).map_err(|_| BackupError::EntryTooLarge);
    body.extend_from_slice(&length(key)?.to_be_bytes());
    body.extend_from_slice(key);
    match value {
        Some(value) => {
            body.push(OP_PUT);
            body.extend_from_slice(&length(value)?.to_be_bytes());
            body.extend_from_slice(value);
        }
        None => body.push(OP_DELETE),
    }
    Ok(())
}

/// The backup file being written, under a temporary name in the target
/// directory until [`BackupWriter::finish`]; dropped unfinished, it removes
/// the temporary file.
struct BackupWriter {
    file: BufWriter<File>,
    temp: PathBuf,
    out: PathBuf,
    digest: ring::digest::Context,
    bytes: u64,
    records: u64,
    chunks: u64,
    redo_batches: u64,
    /// The latest checkpoint note as of the last record written.
    note: Option<Vec<u8>>,
    note_key: Vec<u8>,
    ended: bool,
    finished: bool,
}

impl BackupWriter {
    fn create(out: &Path) -> Result<Self, BackupError> {
        use std::os::unix::fs::OpenOptionsExt;
        let (Some(dir), Some(name)) = (out.parent(), out.file_name()) else {
            return Err(BackupError::BadPath(out.to_owned()));
        };
        if out.exists() {
            return Err(BackupError::Exists(out.to_owned()));
        }
        let suffix: [u8; 8] = crate::crypto::random_bytes(&ring::rand::SystemRandom::new())
            .map_err(|_| BackupError::Io { path: out.to_owned(), source: std::io::Error::other("no randomness") })?;
        let temp = dir.join(format!(".{}.{}.partial", name.to_string_lossy(), crate::ids::hex(&suffix)));
        let file =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temp).map_err(io(&temp))?;
        let mut writer = Self {
            file: BufWriter::with_capacity(1 << 20, file),
            temp,
            out: out.to_owned(),
            digest: ring::digest::Context::new(&ring::digest::SHA256),
            bytes: 0,
            records: 0,
            chunks: 0,
            redo_batches: 0,
            note: None,
            note_key: checkpoint_note_key().as_bytes().to_vec(),
            ended: false,
            finished: false,
        };
        writer.put_bytes(MAGIC)?;
        writer.put_bytes(&FORMAT_VERSION.to_be_bytes())?;
        Ok(writer)
    }

    fn progress(&self) -> Progress {
        Progress { records: self.records, bytes: self.bytes }
    }

    fn put_bytes(&mut self, bytes: &[u8]) -> Result<(), BackupError> {
        self.file.write_all(bytes).map_err(io(&self.temp))?;
        self.digest.update(bytes);
        self.bytes += bytes.len() as u64;
        Ok(())
    }

    /// Writes what the commit thread queued, in its order.
    fn drain(&mut self, feed: impl Iterator<Item = Feed>) -> Result<(), BackupError> {
        for item in feed {
            match item {
                Feed::Chunk(entries) => {
                    let writes = entries.iter().map(|(key, value)| (key.as_slice(), Some(value.as_slice())));
                    self.writes(KIND_CHUNK, writes)?;
                }
                Feed::Redo(batch) => {
                    self.redo_batches += 1;
                    self.writes(KIND_REDO, batch.iter().map(|(key, value)| (key.as_slice(), value.as_deref())))?;
                }
                Feed::End => self.ended = true,
                Feed::Failed(error) => return Err(BackupError::Store(error)),
            }
        }
        Ok(())
    }

    /// Writes `writes` as records of `kind`, cut at about
    /// [`RECORD_BYTES_TARGET`] (applying a batch as several records in
    /// order is the same as applying it at once: its keys are distinct).
    fn writes<'w>(
        &mut self,
        kind: u8,
        writes: impl Iterator<Item = (&'w [u8], Option<&'w [u8]>)>,
    ) -> Result<(), BackupError> {
        let mut body = Vec::new();
        let mut count = 0u32;
        for (key, value) in writes {
            if key == self.note_key.as_slice() {
                self.note = value.map(<[u8]>::to_vec);
            }
            write_encode(&mut body, key, value)?;
            count += 1;
            if body.len() >= RECORD_BYTES_TARGET {
                self.record(kind, count, &body)?;
                body.clear();
                count = 0;
            }
        }
        if count > 0 {
            self.record(kind, count, &body)?;
        }
        Ok(())
    }

    fn record(&mut self, kind: u8, count: u32, writes: &[u8]) -> Result<(), BackupError> {
        let length = writes.len() + 4;
        if length > RECORD_BYTES_MAX {
            return Err(BackupError::EntryTooLarge);
        }
        // At most RECORD_BYTES_MAX, so it fits.
        let length = u32::try_from(length).map_err(|_| BackupError::EntryTooLarge)?;
        self.put_bytes(&[kind])?;
        self.put_bytes(&length.to_be_bytes())?;
        self.put_bytes(&count.to_be_bytes())?;
        self.put_bytes(writes)?;
        self.records += 1;
        Ok(())
    }

    /// Writes the trailer, syncs the file, and gives it its final name
    /// (without ever replacing a file of that name).
    fn finish(mut self, started: std::time::Instant) -> Result<BackupSummary, BackupError> {
        let note = self.note.clone().ok_or(BackupError::NoCheckpoint)?;
        let checkpoint =
            std::str::from_utf8(&note).ok().and_then(checkpoint_unverified).ok_or(BackupError::NoCheckpoint)?;
        let note_length = u32::try_from(note.len()).map_err(|_| BackupError::EntryTooLarge)?;
        let body_length = u32::try_from(8 + 4 + note.len() + DIGEST_BYTES).map_err(|_| BackupError::EntryTooLarge)?;
        self.put_bytes(&[KIND_TRAILER])?;
        self.put_bytes(&body_length.to_be_bytes())?;
        self.put_bytes(&self.records.to_be_bytes())?;
        self.put_bytes(&note_length.to_be_bytes())?;
        self.put_bytes(&note)?;
        let digest = self.digest.clone().finish();
        self.file.write_all(digest.as_ref()).map_err(io(&self.temp))?;
        self.bytes += DIGEST_BYTES as u64;
        self.file.flush().map_err(io(&self.temp))?;
        self.file.get_ref().sync_all().map_err(io(&self.temp))?;
        // A hard link fails if the name is taken, where a rename would
        // silently replace an older backup.
        std::fs::hard_link(&self.temp, &self.out).map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => BackupError::Exists(self.out.clone()),
            _ => BackupError::Io { path: self.out.clone(), source },
        })?;
        self.finished = true;
        std::fs::remove_file(&self.temp).map_err(io(&self.temp))?;
        if let Some(dir) = self.out.parent() {
            File::open(dir).and_then(|dir| dir.sync_all()).map_err(io(dir))?;
        }
        Ok(BackupSummary {
            file: self.out.clone(),
            records: self.records,
            chunks: self.chunks,
            redo_batches: self.redo_batches,
            bytes: self.bytes,
            audit_size: checkpoint.tree_size,
            audit_root: base64::engine::general_purpose::STANDARD.encode(checkpoint.root),
            sha256: crate::ids::hex(digest.as_ref()),
            elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        })
    }
}

impl Drop for BackupWriter {
    fn drop(&mut self) {
        if !self.finished {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// A backup file's trailer, after the whole file was checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trailer {
    /// Records before the trailer.
    pub records: u64,
    /// The latest signed checkpoint of the backed-up store.
    pub note: String,
    /// The file's SHA-256.
    pub sha256: [u8; DIGEST_BYTES],
}

/// One record's writes: key, and the new value or `None` for a delete.
type Writes = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// Reads a record body front to back.
struct Cursor<'b> {
    rest: &'b [u8],
    record: u64,
}

impl<'b> Cursor<'b> {
    fn take(&mut self, n: usize) -> Result<&'b [u8], BackupError> {
        if self.rest.len() < n {
            return Err(BackupError::Malformed { record: self.record, problem: "a length runs past the record" });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn length(&mut self) -> Result<usize, BackupError> {
        let mut bytes = [0u8; 4];
        bytes.copy_from_slice(self.take(4)?);
        Ok(u32::from_be_bytes(bytes) as usize)
    }
}

fn writes_decode(kind: u8, body: &[u8], record: u64) -> Result<Writes, BackupError> {
    let malformed = |problem| BackupError::Malformed { record, problem };
    let mut cursor = Cursor { rest: body, record };
    let count = cursor.length()?;
    // Every write takes at least 5 bytes, so a forged count cannot make
    // this allocate more than the body's size.
    let mut writes = Vec::with_capacity(count.min(body.len() / 5));
    for _ in 0..count {
        let key_length = cursor.length()?;
        let key = cursor.take(key_length)?.to_vec();
        let value = match cursor.take(1)? {
            [OP_PUT] => {
                let value_length = cursor.length()?;
                Some(cursor.take(value_length)?.to_vec())
            }
            [OP_DELETE] if kind == KIND_REDO => None,
            [OP_DELETE] => return Err(malformed("a chunk holds a delete")),
            _ => return Err(malformed("an unknown write operation")),
        };
        writes.push((key, value));
    }
    if !cursor.rest.is_empty() {
        return Err(malformed("bytes after the last write"));
    }
    Ok(writes)
}

/// Reads exactly `buffer.len()` bytes, or reports a truncated file.
fn read_exact(file: &mut impl Read, buffer: &mut [u8], path: &Path) -> Result<(), BackupError> {
    file.read_exact(buffer).map_err(|source| match source.kind() {
        std::io::ErrorKind::UnexpectedEof => BackupError::Truncated,
        _ => BackupError::Io { path: path.to_owned(), source },
    })
}

/// Reads and checks the whole backup file at `path`, handing every record's
/// writes to `visit` in file order, and returns its trailer. Checks the
/// header, every record, that the trailer is last and counts the records,
/// and the SHA-256; `visit` may therefore have seen records of a file that
/// turns out bad, and must write nothing final.
pub fn read(path: &Path, visit: &mut dyn FnMut(Writes) -> Result<(), BackupError>) -> Result<Trailer, BackupError> {
    let mut file = BufReader::with_capacity(1 << 20, File::open(path).map_err(io(path))?);
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    let mut header = [0u8; 10];
    read_exact(&mut file, &mut header, path).map_err(|error| match error {
        BackupError::Truncated => BackupError::NotABackup,
        other => other,
    })?;
    if &header[..8] != MAGIC {
        return Err(BackupError::NotABackup);
    }
    let found = u16::from_be_bytes([header[8], header[9]]);
    if found != FORMAT_VERSION {
        return Err(BackupError::Version { found });
    }
    digest.update(&header);
    let note_key = checkpoint_note_key().as_bytes().to_vec();
    let mut latest_note: Option<Vec<u8>> = None;
    let mut record = 0u64;
    loop {
        let mut frame = [0u8; 5];
        read_exact(&mut file, &mut frame, path)?;
        let kind = frame[0];
        let length = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize;
        if length > RECORD_BYTES_MAX {
            return Err(BackupError::Malformed { record, problem: "longer than a record may be" });
        }
        let mut body = vec![0u8; length];
        read_exact(&mut file, &mut body, path)?;
        match kind {
            KIND_CHUNK | KIND_REDO => {
                digest.update(&frame);
                digest.update(&body);
                let writes = writes_decode(kind, &body, record)?;
                if let Some((_, value)) = writes.iter().rev().find(|(key, _)| *key == note_key) {
                    latest_note.clone_from(value);
                }
                visit(writes)?;
                record += 1;
            }
            KIND_TRAILER => {
                let Some(split) = length.checked_sub(DIGEST_BYTES).filter(|&split| split >= 12) else {
                    return Err(BackupError::Malformed { record, problem: "a trailer too short" });
                };
                digest.update(&frame);
                digest.update(&body[..split]);
                if digest.finish().as_ref() != &body[split..] {
                    return Err(BackupError::DigestMismatch);
                }
                let mut extra = [0u8; 1];
                if file.read(&mut extra).map_err(io(path))? != 0 {
                    return Err(BackupError::Malformed { record, problem: "bytes after the trailer" });
                }
                return trailer_decode(&body, split, record, latest_note.as_deref());
            }
            _ => return Err(BackupError::Malformed { record, problem: "an unknown record kind" }),
        }
    }
}

fn trailer_decode(body: &[u8], split: usize, records: u64, latest_note: Option<&[u8]>) -> Result<Trailer, BackupError> {
    let malformed = BackupError::Malformed { record: records, problem: "a trailer that does not add up" };
    let counted = body[..8].try_into().map(u64::from_be_bytes).map_err(|_| BackupError::TrailerMismatch("records"))?;
    if counted != records {
        return Err(BackupError::TrailerMismatch("the record count differs"));
    }
    let note_length =
        body[8..12].try_into().map(u32::from_be_bytes).map_err(|_| BackupError::TrailerMismatch("note"))?;
    if 12 + note_length as usize != split {
        return Err(malformed);
    }
    let note = &body[12..split];
    if latest_note != Some(note) {
        return Err(BackupError::TrailerMismatch("its checkpoint is not the latest one in the backed-up store"));
    }
    let note = String::from_utf8(note.to_vec()).map_err(|_| malformed)?;
    let sha256 = body[split..].try_into().map_err(|_| BackupError::TrailerMismatch("digest"))?;
    Ok(Trailer { records, note, sha256 })
}

/// A finished restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreSummary {
    /// Records applied.
    pub records: u64,
    /// The backed-up audit log's size (the trailer's checkpoint).
    pub audit_size: u64,
    /// Its root hash, standard base64.
    pub audit_root: String,
    /// The index of the `vault.restored` event.
    pub restored_index: u64,
}

/// Restores the backup at `input` into `options.data_dir`, which must be
/// empty or missing, with the KEK `options.key_source` names. Nothing is
/// left behind on failure.
pub fn restore(input: &Path, options: &VaultOptions) -> Result<RestoreSummary, BackupError> {
    let target = &options.data_dir;
    if !vault::is_empty_dir(target)? {
        return Err(BackupError::TargetNotEmpty(target.clone()));
    }
    let source = options.key_source.clone().ok_or(BackupError::NoKey)?;
    let keys = load_key_ring(&source, options.production).map_err(VaultError::Key)?;
    // The whole file is checked before anything is written.
    let checked = read(input, &mut |_| Ok(()))?;
    let created = !target.exists();
    vault::create_private_dir(target)?;
    let staging = target.join(RESTORING_DIR);
    let restored = restore_into(input, &staging, &keys, &checked, options.store_cache_bytes).and_then(|summary| {
        let store_dir = target.join(STORE_DIR);
        std::fs::rename(&staging, &store_dir).map_err(io(&store_dir))?;
        File::open(target).and_then(|dir| dir.sync_all()).map_err(io(target))?;
        Ok(summary)
    });
    match restored {
        Ok(summary) => Ok(summary),
        Err(error) => {
            let _ = std::fs::remove_dir_all(&staging);
            if created {
                let _ = std::fs::remove_dir(target);
            }
            Err(error)
        }
    }
}

/// Writes the store at `staging`, opens and verifies it, and records the
/// restore in its log.
fn restore_into(
    input: &Path,
    staging: &Path,
    keys: &crate::crypto::KeyRing,
    checked: &Trailer,
    cache_bytes: u64,
) -> Result<RestoreSummary, BackupError> {
    let backend = crate::store::open(&crate::store::StoreConfig::embedded(staging, cache_bytes))?;
    let mut batch = WriteBatch::new();
    let trailer = read(input, &mut |writes| {
        batch.clear();
        batch.extend(writes);
        Ok(backend.apply(&batch)?)
    })?;
    if trailer != *checked {
        return Err(BackupError::Changed);
    }
    backend.flush()?;
    let (store, audit) = vault::store_open_checked(backend, keys)?;
    let never = AtomicBool::new(false);
    let verified = verify_log(&store, &audit.verifier(), audit.origin(), Depth::Full, false, &|_, _, _| {}, &never)
        .map_err(BackupError::AuditInvalid)?;
    let checkpoint = audit.verifier().open_checkpoint(&trailer.note, audit.origin())?;
    if checkpoint.tree_size != verified.size || checkpoint.root != verified.root {
        return Err(BackupError::CheckpointMismatch { checkpoint: checkpoint.tree_size, log: verified.size });
    }
    let root = base64::engine::general_purpose::STANDARD.encode(checkpoint.root);
    let event = AuditEvent::new(
        EventKind::VaultRestored,
        crate::audit::Actor::system(),
        &crate::clock::rfc3339(crate::clock::now()),
    )
    .related("backup_checkpoint_size", checkpoint.tree_size.to_string())
    .related("backup_checkpoint_root", root.clone())
    .related("backup_sha256", crate::ids::hex(&trailer.sha256));
    store.set_finalizer(audit.finalizer());
    let log = audit.clone();
    let restored_index = store
        .commit_blocking(move |txn| {
            let appended = log.append(txn, &event)?;
            // Kept in the history too: the first checkpoint after the restore.
            log.checkpoint_in(txn, true)?;
            Ok::<_, AuditError>(appended.index())
        })
        .map_err(|error| match error {
            CommitError::Rejected(error) => BackupError::Audit(error),
            CommitError::Store(error) => BackupError::Store(error),
        })?;
    store.close()?;
    tracing::info!(records = trailer.records, audit_size = verified.size, "backup restored");
    Ok(RestoreSummary { records: trailer.records, audit_size: checkpoint.tree_size, audit_root: root, restored_index })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::BTreeMap;

    use super::*;
    use crate::store::Key;
    use crate::store::memory::MemoryBackend;

    const STATIC_KEYS: u64 = 2500;

    fn static_key(n: u64) -> Key {
        Key::counter(&format!("s{n:05}"))
    }

    fn note() -> Vec<u8> {
        let root = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        format!("test.example/log\n5\n{root}\n\n\u{2014} test.example/log AAAA\n").into_bytes()
    }

    /// A store with `STATIC_KEYS` counters at 0, a counter `n` at 0 and a
    /// checkpoint note.
    fn store() -> Store {
        let store = Store::new(Arc::new(MemoryBackend::default())).unwrap();
        store
            .commit_blocking(|txn| {
                for n in 0..STATIC_KEYS {
                    txn.put(static_key(n), 0u64.to_be_bytes().to_vec());
                }
                txn.put(Key::counter("n"), 0u64.to_be_bytes().to_vec());
                txn.put(checkpoint_note_key(), note());
                Ok::<_, StoreError>(())
            })
            .unwrap();
        store
    }

    fn restored(path: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let mut state = BTreeMap::new();
        read(path, &mut |writes| {
            for (key, value) in writes {
                match value {
                    Some(value) => state.insert(key, value),
                    None => state.remove(&key),
                };
            }
            Ok(())
        })
        .unwrap();
        state
    }

    fn counter(state: &BTreeMap<Vec<u8>, Vec<u8>>, key: &Key) -> u64 {
        u64::from_be_bytes(state[key.as_bytes()].as_slice().try_into().unwrap())
    }

    #[test]
    fn a_backup_taken_under_writes_equals_the_store_at_one_commit_point() {
        let store = store();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("vault.backup");
        let stop = AtomicBool::new(false);
        let (summary, writes_before) = std::thread::scope(|scope| {
            // Write i sets `n` to i and static key 7i mod STATIC_KEYS (spread
            // over every chunk) to i, and deletes the marker of write i - 3:
            // in every committed state, `n` says what every other key holds.
            let writer = scope.spawn(|| {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    store
                        .commit_blocking(move |txn| {
                            txn.put(Key::counter("n"), i.to_be_bytes().to_vec());
                            txn.put(static_key(i * 7 % STATIC_KEYS), i.to_be_bytes().to_vec());
                            txn.put(Key::counter(&format!("m{i}")), vec![]);
                            txn.delete(&Key::counter(&format!("m{}", i.saturating_sub(3))));
                            Ok::<_, StoreError>(())
                        })
                        .unwrap();
                }
                i
            });
            while store.stats().transactions.load(Ordering::Relaxed) < 200 {
                std::thread::yield_now();
            }
            let before = store.stats().transactions.load(Ordering::Relaxed) - 1;
            let summary = write(&store, &out, CHUNK_KEYS_DEFAULT, &mut |_| {}).unwrap();
            stop.store(true, Ordering::Relaxed);
            writer.join().unwrap();
            (summary, before)
        });
        assert!(summary.chunks >= 3 && summary.redo_batches > 0, "{summary:?}");
        let state = restored(&out);
        let last = counter(&state, &Key::counter("n"));
        assert!(last >= writes_before, "every write acknowledged before the backup is in it");
        let mut expected = vec![0u64; STATIC_KEYS as usize];
        for i in last.saturating_sub(STATIC_KEYS - 1).max(1)..=last {
            expected[(i * 7 % STATIC_KEYS) as usize] = i;
        }
        for (n, expected) in expected.into_iter().enumerate() {
            let found = counter(&state, &static_key(n as u64));
            assert_eq!(found, expected, "static key {n} at commit point {last}");
        }
        let markers: Vec<&Vec<u8>> = state.keys().filter(|key| key.starts_with(Key::counter("m").as_bytes())).collect();
        let expected: Vec<Vec<u8>> = (last.saturating_sub(2)..=last)
            .filter(|i| *i > 0)
            .map(|i| Key::counter(&format!("m{i}")).as_bytes().to_vec())
            .collect();
        assert_eq!(markers.len(), expected.len(), "{last}");
        assert!(expected.iter().all(|key| state.contains_key(key)));
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&out).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file is left");
    }

    #[test]
    fn a_backup_never_replaces_an_existing_file() {
        let store = store();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("taken");
        std::fs::write(&out, b"keep me").unwrap();
        assert!(matches!(write(&store, &out, CHUNK_KEYS_DEFAULT, &mut |_| {}), Err(BackupError::Exists(_))));
        assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
    }

    #[test]
    fn damaged_files_are_refused_with_what_is_wrong() {
        let store = store();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("vault.backup");
        write(&store, &out, CHUNK_KEYS_DEFAULT, &mut |_| {}).unwrap();
        let good = std::fs::read(&out).unwrap();
        let check = |bytes: &[u8]| {
            let path = dir.path().join("candidate");
            std::fs::write(&path, bytes).unwrap();
            read(&path, &mut |_| Ok(())).map(drop)
        };
        assert!(check(&good).is_ok());
        assert!(matches!(check(&good[..good.len() - 40]), Err(BackupError::Truncated)));
        assert!(matches!(check(b"PK\x03\x04 not a backup"), Err(BackupError::NotABackup)));
        let mut version = good.clone();
        version[9] = 9;
        assert!(matches!(check(&version), Err(BackupError::Version { found: 9 })));
        // A changed byte in the trailer's note, and one in a stored value.
        let mut note = good.clone();
        let at = good.len() - DIGEST_BYTES - 3;
        note[at] ^= 0x20;
        assert!(matches!(check(&note), Err(BackupError::DigestMismatch)));
        let mut value = good.clone();
        let last_value = good.len() / 2;
        value[last_value] ^= 0x01;
        assert!(check(&value).is_err());
        let mut longer = good.clone();
        longer.push(0);
        assert!(matches!(check(&longer), Err(BackupError::Malformed { .. })));
    }
}

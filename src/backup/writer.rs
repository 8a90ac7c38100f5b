//! Taking a backup while the vault serves: chunks read on the commit
//! thread, redo records from a tap on every later batch, then the trailer.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::{
    BackupError, CHUNK_KEYS_MAX, DIGEST_BYTES, FORMAT_VERSION, KIND_CHUNK, KIND_REDO, KIND_TRAILER, MAGIC, OP_DELETE,
    OP_PUT, RECORD_BYTES_MAX, RECORD_BYTES_TARGET, commit_error, io,
};
use crate::audit::checkpoint::Checkpoint;
use crate::audit::checkpoint_note_key;
use crate::store::{BatchTap, Entries, Store, StoreError, WriteBatch};

/// How far a backup has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Records written.
    pub records: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Keys of the store read so far.
    #[serde(default)]
    pub keys: u64,
    /// Keys in the store when the backup began (writes go on meanwhile, so
    /// `keys` may end a little above or below it).
    #[serde(default)]
    pub keys_total: u64,
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
    writer.keys_total = store.keys_count()?;
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
    /// Keys read from the store, and how many it held at the start.
    keys: u64,
    keys_total: u64,
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
            keys: 0,
            keys_total: 0,
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
        Progress { records: self.records, bytes: self.bytes, keys: self.keys, keys_total: self.keys_total }
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
                    self.keys += entries.len() as u64;
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

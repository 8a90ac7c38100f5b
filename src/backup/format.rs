//! Reading a backup file: records decoded and checked in order, then the
//! trailer with its checkpoint and digest (the layout is in `backup`).

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use super::{
    BackupError, DIGEST_BYTES, FORMAT_VERSION, KIND_CHUNK, KIND_REDO, KIND_TRAILER, MAGIC, OP_DELETE, OP_PUT,
    RECORD_BYTES_MAX, Trailer, Writes, io,
};
use crate::audit::checkpoint_note_key;

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

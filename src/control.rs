//! The control socket of a running vault: operator commands that need the
//! serving process, because the process holds the store's lock (`backup`,
//! `keys rotate`, `keys status`).
//!
//! `serve` listens on `<data-dir>/control.sock`, a Unix domain socket with
//! mode 0600 in the owner-only data directory; it replaces a stale one at
//! start and removes it at shutdown. Access control is the filesystem:
//! whoever can open the data directory is the operator, and could read the
//! store's files anyway.
//!
//! The protocol is line-delimited JSON. The client sends one request line,
//! `{"command":"backup","out":"/absolute/path"}`; the server answers with any
//! number of `{"status":"progress","progress":{...}}` lines, then one
//! `{"status":"ok","result":{...}}` or `{"status":"error","error":"..."}`,
//! and closes. To add a command, add a [`Request`] variant and its arm in
//! `dispatch`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backup;
use crate::vault::Vault;

/// The socket's name inside the data directory.
pub const SOCKET_FILE: &str = "control.sock";
/// The longest request line.
const REQUEST_BYTES_MAX: u64 = 64 * 1024;
/// How long the server waits for the request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A command for the running vault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Write a consistent backup of the store to `out`, an absolute path
    /// the server can create a file in.
    Backup {
        /// The backup file to create.
        out: PathBuf,
        /// Keys read per chunk (default 1000).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        chunk_keys: Option<usize>,
    },
    /// Rotate the key-encryption key (or follow the rotation already
    /// running) and report progress until the old version is destroyed.
    KeysRotate,
    /// The state of the keys and the latest rotation.
    KeysStatus,
}

/// One answer line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Reply {
    /// The command is under way; counts only.
    Progress {
        /// Command-specific counts.
        progress: serde_json::Value,
    },
    /// The command finished.
    Ok {
        /// Command-specific result.
        result: serde_json::Value,
    },
    /// The command was refused or failed.
    Error {
        /// What went wrong.
        error: String,
    },
}

/// Errors of the control socket, on either side.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The socket could not be created, reached, written or read.
    #[error("control socket {path}: {source}")]
    Io {
        /// The socket's path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The server answered with something that is not a reply line.
    #[error("the control socket answered something unexpected: {0}")]
    Protocol(String),
    /// The server refused or failed the command.
    #[error("{0}")]
    Failed(String),
    /// The server closed the connection before its final answer.
    #[error("the server closed the control connection before answering (did it stop?)")]
    NoAnswer,
}

/// A bound control socket, not yet serving.
#[derive(Debug)]
pub struct ControlSocket {
    listener: tokio::net::UnixListener,
    path: PathBuf,
}

impl ControlSocket {
    /// Binds `<data_dir>/control.sock` with mode 0600. The socket is bound
    /// under a random name, restricted, then renamed into place, so it is
    /// never reachable with looser permissions; the rename replaces the
    /// socket a killed server left behind (no other server can be serving
    /// this directory: the store's lock is held).
    pub fn bind(data_dir: &Path) -> Result<Self, ControlError> {
        use std::os::unix::fs::PermissionsExt;
        let path = data_dir.join(SOCKET_FILE);
        let failed = |source| ControlError::Io { path: path.clone(), source };
        let suffix: [u8; 8] = crate::crypto::random_bytes(&ring::rand::SystemRandom::new())
            .map_err(|_| failed(std::io::Error::other("no randomness")))?;
        let temp = data_dir.join(format!(".control.{}.sock", crate::ids::hex(&suffix)));
        let listener = tokio::net::UnixListener::bind(&temp).map_err(failed)?;
        let placed = std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o600))
            .and_then(|()| std::fs::rename(&temp, &path));
        if let Err(source) = placed {
            let _ = std::fs::remove_file(&temp);
            return Err(failed(source));
        }
        Ok(Self { listener, path })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts connections on the current runtime, each handled on a
    /// blocking thread, until the returned handle is dropped.
    pub fn serve(self, vault: Arc<Vault>) -> ControlHandle {
        let path = self.path.clone();
        let task = tokio::spawn(accept_loop(self.listener, vault));
        ControlHandle { task, path }
    }
}

/// A serving control socket; dropping it stops accepting and removes the
/// socket file (commands under way finish on their threads).
#[derive(Debug)]
pub struct ControlHandle {
    task: tokio::task::JoinHandle<()>,
    path: PathBuf,
}

impl Drop for ControlHandle {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn accept_loop(listener: tokio::net::UnixListener, vault: Arc<Vault>) {
    loop {
        let accepted = listener.accept().await.and_then(|(stream, _)| stream.into_std());
        match accepted {
            Ok(stream) => {
                let vault = Arc::clone(&vault);
                tokio::task::spawn_blocking(move || connection(stream, &vault));
            }
            Err(error) => {
                tracing::warn!(%error, "control socket: accepting a connection failed");
                // Out of descriptors, say: give the process a moment rather
                // than spinning on the same error.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Serves one connection: one request, its answers, then close.
fn connection(stream: UnixStream, vault: &Arc<Vault>) {
    let mut writer = match stream.try_clone() {
        Ok(writer) => writer,
        Err(error) => {
            tracing::warn!(%error, "control socket: cannot use a connection");
            return;
        }
    };
    // A client that goes away only loses its answers; the command goes on.
    let mut send = |reply: &Reply| {
        if let Ok(mut line) = serde_json::to_vec(reply) {
            line.push(b'\n');
            let _ = writer.write_all(&line);
        }
    };
    let outcome = request_read(stream)
        .and_then(|request| dispatch(vault, request, &mut |progress| send(&Reply::Progress { progress })));
    match outcome {
        Ok(result) => send(&Reply::Ok { result }),
        Err(error) => {
            tracing::warn!(%error, "control command failed");
            send(&Reply::Error { error });
        }
    }
}

fn request_read(stream: UnixStream) -> Result<Request, String> {
    let cannot = |error: std::io::Error| format!("cannot read the request: {error}");
    stream.set_nonblocking(false).map_err(cannot)?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT)).map_err(cannot)?;
    let mut line = String::new();
    BufReader::new(stream.take(REQUEST_BYTES_MAX)).read_line(&mut line).map_err(cannot)?;
    if !line.ends_with('\n') {
        return Err(format!("a request is one line of at most {REQUEST_BYTES_MAX} bytes, ending in a newline"));
    }
    serde_json::from_str(&line).map_err(|error| format!("not a control request: {error}"))
}

/// Runs one command; `progress` sends a progress line.
fn dispatch(
    vault: &Arc<Vault>,
    request: Request,
    progress: &mut dyn FnMut(serde_json::Value),
) -> Result<serde_json::Value, String> {
    match request {
        Request::Backup { out, chunk_keys } => {
            if !out.is_absolute() {
                return Err("`out` must be an absolute path".to_owned());
            }
            tracing::info!("backup requested on the control socket");
            let chunk_keys = chunk_keys.unwrap_or(backup::CHUNK_KEYS_DEFAULT);
            let summary = backup::write(vault.store(), &out, chunk_keys, &mut |counts| {
                progress(serde_json::to_value(counts).unwrap_or_default());
            })
            .map_err(|error| error.to_string())?;
            serde_json::to_value(summary).map_err(|error| error.to_string())
        }
        Request::KeysStatus => serde_json::to_value(vault.keys().key_status().map_err(|error| error.to_string())?)
            .map_err(|error| error.to_string()),
        Request::KeysRotate => {
            tracing::info!("key rotation requested on the control socket");
            match vault.keys().kek_rotate(&crate::audit::Actor::system(), "cli") {
                Ok(_) | Err(crate::keys::KeyError::InProgress) => {}
                Err(error) => return Err(error.to_string()),
            }
            let status = crate::keys::rotation_follow(vault.keys(), &mut |status| {
                progress(serde_json::to_value(status).unwrap_or_default());
            })
            .map_err(|error| error.to_string())?;
            serde_json::to_value(status).map_err(|error| error.to_string())
        }
    }
}

/// Sends `request` to the vault serving `data_dir` and returns its result,
/// passing progress lines to `progress`; `Ok(None)` if no server listens
/// there (no socket, or a stale one).
pub fn request(
    data_dir: &Path,
    request: &Request,
    progress: &mut dyn FnMut(&serde_json::Value),
) -> Result<Option<serde_json::Value>, ControlError> {
    let path = data_dir.join(SOCKET_FILE);
    let failed = |source| ControlError::Io { path: path.clone(), source };
    let mut stream = match UnixStream::connect(&path) {
        Ok(stream) => stream,
        Err(error) if matches!(error.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
            return Ok(None);
        }
        Err(error) => return Err(failed(error)),
    };
    let mut line = serde_json::to_vec(request).map_err(|error| ControlError::Protocol(error.to_string()))?;
    line.push(b'\n');
    stream.write_all(&line).map_err(failed)?;
    for line in BufReader::new(stream).lines() {
        let line = line.map_err(failed)?;
        match serde_json::from_str::<Reply>(&line).map_err(|error| ControlError::Protocol(error.to_string()))? {
            Reply::Progress { progress: counts } => progress(&counts),
            Reply::Ok { result } => return Ok(Some(result)),
            Reply::Error { error } => return Err(ControlError::Failed(error)),
        }
    }
    Err(ControlError::NoAnswer)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn requests_and_replies_have_their_documented_wire_form() {
        let request = Request::Backup { out: PathBuf::from("/backups/vault.cvb"), chunk_keys: None };
        assert_eq!(serde_json::to_string(&request).unwrap(), r#"{"command":"backup","out":"/backups/vault.cvb"}"#);
        let unknown = serde_json::from_str::<Request>(r#"{"command":"format_disk"}"#);
        assert!(unknown.is_err());
        let extra = serde_json::from_str::<Request>(r#"{"command":"backup","out":"/b","force":true}"#);
        assert!(extra.is_err(), "unknown members are refused");
        let reply = Reply::Error { error: "no".to_owned() };
        assert_eq!(serde_json::to_string(&reply).unwrap(), r#"{"status":"error","error":"no"}"#);
        let progress: Reply = serde_json::from_str(r#"{"status":"progress","progress":{"records":3}}"#).unwrap();
        assert_eq!(progress, Reply::Progress { progress: serde_json::json!({"records": 3}) });
    }
}

//! The command line as scripts and operators meet it: `--format json` on
//! every command (one object on stdout), the documented exit codes, messages
//! that say what is wrong and what to do, and a start-up that leaves nothing
//! half made and tells a newcomer what to do next.

#![allow(clippy::unwrap_used)]

mod common;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use common::{ServerProcess, policies_dir};
use serde_json::Value;

fn command<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_consentvault"));
    command
        .args(args)
        .env_remove("CONSENTVAULT_KEK")
        .env_remove("CONSENTVAULT_DATA_DIR")
        .env_remove("CONSENTVAULT_FORMAT");
    command
}

/// Runs the binary with `--format json`; returns the exit code, the one
/// object on stdout and stderr.
fn json_run<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> (i32, Value, String) {
    let output = command(args).arg("--format").arg("json").output().unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one object on stdout, got {stdout:?}; stderr: {stderr}");
    let object: Value = serde_json::from_str(lines[0]).unwrap();
    assert!(object.is_object(), "{object}");
    let code = output.status.code().unwrap();
    assert_eq!(object["ok"], code == 0, "`ok` says whether the command succeeded: {object}");
    (code, object, stderr)
}

fn ok<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Value {
    let (code, object, stderr) = json_run(args);
    assert_eq!(code, 0, "{object}\n{stderr}");
    object
}

fn text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A vault with a few entries in its log, stopped.
fn used_vault(data_dir: &Path) {
    let server = ServerProcess::start(data_dir, &[], &[]).unwrap();
    let status = server.terminate();
    assert!(status.success(), "{status}");
}

#[test]
fn every_command_writes_one_json_object_with_format_json() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let data = data_dir.to_str().unwrap();

    let created = ok(["init", "--data-dir", data]);
    assert_eq!(created["data_dir"], data);
    assert_eq!(created["key_file"], data_dir.join("kek.key").to_str().unwrap());
    let checked = ok([OsStr::new("policy"), "check".as_ref(), policies_dir().as_os_str()]);
    assert!(checked["fields"].as_u64().unwrap() > 0 && checked["sha256"].as_str().unwrap().len() == 64);

    used_vault(&data_dir);
    let verified = ok(["audit", "verify", "--data-dir", data]);
    assert!(verified["size"].as_u64().unwrap() > 0 && verified["checkpoints"].as_u64().unwrap() > 0);
    let status = ok(["keys", "status", "--data-dir", data]);
    assert_eq!(status["current_version"], 1);

    let file = dir.path().join("vault.backup");
    let backup = ok(["backup", "--data-dir", data, "--out", file.to_str().unwrap()]);
    assert!(backup["records"].as_u64().unwrap() > 0 && backup["sha256"].as_str().is_some());
    let target = dir.path().join("restored");
    let kek = data_dir.join("kek.key");
    let restored = ok([
        "restore",
        "--in",
        file.to_str().unwrap(),
        "--data-dir",
        target.to_str().unwrap(),
        "--kek-file",
        kek.to_str().unwrap(),
    ]);
    assert_eq!(restored["audit_size"], backup["audit_size"]);
    // The key stays where it was: the message says how the new vault finds it.
    let hint = restored["key_hint"].as_str().unwrap();
    assert!(hint.contains(&format!("--kek-file {}", kek.display())), "{hint}");

    let rotated = ok(["keys", "rotate", "--data-dir", data]);
    assert_eq!(rotated["target_version"], 2);
    assert_eq!(rotated["state"], "finished");

    let (code, refused, stderr) = json_run(["audit", "accept-rollback", "--data-dir", data]);
    assert_eq!(code, 1);
    assert_eq!(refused["error"]["code"], "no_rollback");
    assert_eq!(refused["error"]["exit_code"], 1);
    assert!(stderr.contains("no rollback to accept"), "{stderr}");

    // serve: one object once it listens, and nothing more on stdout.
    let (mut child, first) = serve_spawn(&data_dir, &["--listen", "127.0.0.1:0", "--format", "json"]);
    let listening: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(listening["ok"], true);
    let base = listening["listening"].as_str().unwrap();
    assert_eq!(listening["openapi"], format!("{base}/v1/openapi.json"));
    assert_eq!(stop(&mut child).trim(), "", "serve writes one object");
}

#[test]
fn exit_codes_and_messages_say_what_is_wrong_and_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let (code, object, stderr) =
        json_run([OsStr::new("audit"), "verify".as_ref(), "--data-dir".as_ref(), missing.as_os_str()]);
    assert_eq!((code, &object["error"]["code"]), (5, &Value::from("no_vault")));
    assert!(stderr.contains("there is no vault in") && stderr.contains("consentvault init --data-dir"), "{stderr}");
    assert!(!stderr.contains("is not empty"), "{stderr}");

    let (code, object, stderr) = json_run(["audit", "verify", "--no-such-flag"]);
    assert_eq!((code, &object["error"]["code"]), (2, &Value::from("usage")));
    assert!(stderr.contains("--no-such-flag"), "{stderr}");

    let (code, object, _) = json_run(["serve", "--listen", "nowhere", "--data-dir", missing.to_str().unwrap()]);
    assert_eq!((code, &object["error"]["code"]), (2, &Value::from("invalid_configuration")));
    assert!(!missing.exists(), "a refused configuration makes nothing");

    // A running vault holds its store: verify says so, not the engine's words.
    let data_dir = dir.path().join("running");
    let server = ServerProcess::start(&data_dir, &[], &[]).unwrap();
    let (code, object, stderr) =
        json_run([OsStr::new("audit"), "verify".as_ref(), "--data-dir".as_ref(), data_dir.as_os_str()]);
    assert_eq!((code, &object["error"]["code"]), (4, &Value::from("vault_in_use")));
    assert!(stderr.contains("a vault is running on") && stderr.contains("stop the server"), "{stderr}");
    assert!(!stderr.contains("could not acquire lock"), "{stderr}");
    server.terminate();

    // Text mode: the result on stdout, messages on stderr.
    let output =
        command([OsStr::new("keys"), "status".as_ref(), "--data-dir".as_ref(), data_dir.as_os_str()]).output().unwrap();
    assert!(output.status.success(), "{}", text(&output));
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("key-encryption key version 1 current"));
}

/// Starts `serve` with `args` on `data_dir` and the shipped policies;
/// returns the process and its first line on stdout.
fn serve_spawn(data_dir: &Path, args: &[&str]) -> (Child, String) {
    let mut child = command(["serve", "--policies"])
        .arg(policies_dir())
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    (child, line)
}

/// Stops a served vault with SIGTERM; returns the rest of its stdout (its
/// stderr is read with [`stderr_of`]).
fn stop(child: &mut Child) -> String {
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    let mut rest = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut rest).unwrap();
    rest
}

fn stderr_of(child: &mut Child) -> String {
    let mut text = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut text).unwrap();
    text
}

#[tokio::test]
async fn a_first_start_that_cannot_listen_leaves_nothing_and_the_next_shows_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let output = command(["serve", "--listen", &address, "--data-dir", data_dir.to_str().unwrap()]).output().unwrap();
    assert!(!output.status.success());
    assert!(text(&output).contains("cannot listen on"), "{}", text(&output));
    assert!(!data_dir.exists(), "nothing made: {:?}", std::fs::read_dir(&data_dir).map(|entries| entries.count()));
    drop(taken);

    // The next start is a first start: the banner, then paste-ready steps.
    let (mut child, first) = serve_spawn(&data_dir, &["--listen", "localhost:0"]);
    let base = first.trim().strip_prefix("listening on ").unwrap().to_owned();
    assert!(base.starts_with("http://127.0.0.1:"), "localhost is accepted: {base}");
    let credentials = data_dir.join("admin-credentials.json");
    let token_step =
        format!("curl -s -X POST {base}/v1/token -H 'Content-Type: application/json' -d @{}", credentials.display());
    // The step works as printed: the file is a token request as it stands.
    let body = std::fs::read(&credentials).unwrap();
    let answer = reqwest::Client::new()
        .post(format!("{base}/v1/token"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    stop(&mut child);
    let stderr = stderr_of(&mut child);
    assert!(stderr.contains("INITIALISED A NEW VAULT"), "{stderr}");
    assert!(stderr.contains(&token_step), "{stderr}");
    assert!(stderr.contains(&format!("{base}/v1/openapi.json")) && stderr.contains("Quick start"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "no colour codes when stderr is not a terminal: {stderr:?}");

    // While the credentials file is there, every start says where it is.
    let (mut child, _) = serve_spawn(&data_dir, &["--listen", "127.0.0.1:0"]);
    stop(&mut child);
    let stderr = stderr_of(&mut child);
    assert!(!stderr.contains("INITIALISED A NEW VAULT"), "{stderr}");
    assert!(stderr.contains("an admin token:") && stderr.contains("admin-credentials.json"), "{stderr}");
}

#[test]
fn json_logs_are_json_from_the_first_line() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let (mut child, first) = serve_spawn(&data_dir, &["--listen", "127.0.0.1:0", "--log-format", "json"]);
    assert!(first.starts_with("listening on http://"), "{first}");
    stop(&mut child);
    let stderr = stderr_of(&mut child);
    let lines: Vec<&str> = stderr.lines().filter(|line| !line.trim().is_empty()).collect();
    assert!(lines.len() >= 3, "{stderr}");
    for line in &lines {
        let event: Value = serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line:?}\n{stderr}"));
        assert!(event["level"].is_string(), "{line}");
    }
    assert!(stderr.contains("initialised a new vault") && stderr.contains("next steps"), "{stderr}");
}

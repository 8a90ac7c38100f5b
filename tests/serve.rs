//! The real binary: `init`, `serve` (start-up, health, limits, shutdown) and
//! `policy check`.

#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::ServerProcess;

fn binary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_consentvault"));
    command.env_remove("CONSENTVAULT_KEK");
    command
}

#[tokio::test]
async fn serve_on_an_empty_directory_initialises_loudly_then_serves_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let server = ServerProcess::start(&data_dir, &[], &[]).unwrap();
    for private in ["kek.key", "admin-credentials.json"] {
        let mode = std::fs::metadata(data_dir.join(private)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{private}");
    }

    let client = reqwest::Client::new();
    let health = client
        .get(format!("{}/healthz", server.base_url))
        .header("x-request-id", "ada@example.org")
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let request_id = health.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(request_id.len(), 32, "the vault makes its own request ids");
    assert!(request_id.bytes().all(|b| b.is_ascii_hexdigit()));
    let ready: serde_json::Value =
        client.get(format!("{}/readyz", server.base_url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(ready["status"], "ready");

    let metrics = client.get(format!("{}/metrics", server.base_url)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("consentvault_commit_transactions_total "), "{metrics}");
    assert!(metrics.contains("consentvault_ready 1"), "{metrics}");

    let missing = client.get(format!("{}/v1/nothing-here", server.base_url)).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.headers()["content-type"], "application/problem+json");
    let problem: serde_json::Value = missing.json().await.unwrap();
    assert_eq!(problem["code"], "not_found");
    assert_eq!(problem["status"], 404);

    let stderr = server.stderr_text();
    assert!(stderr.contains("INITIALISED A NEW VAULT"), "{stderr}");
    assert!(stderr.contains("admin-credentials.json"), "the path of the admin credentials is printed: {stderr}");
    assert!(!stderr.contains("ada@example.org"), "a client's request id must not reach the log");
    let status = server.terminate();
    assert!(status.success(), "graceful shutdown must exit 0, got {status}");

    // A second start opens the same vault without the banner.
    let again = ServerProcess::start(&data_dir, &[], &[]).unwrap();
    let ready = client.get(format!("{}/readyz", again.base_url)).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    assert!(!again.stderr_text().contains("INITIALISED"));
}

#[tokio::test]
async fn oversized_bodies_get_a_413_problem() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &["--body-bytes-max", "4096"], &[]).unwrap();
    let response = reqwest::Client::new()
        .post(format!("{}/healthz", server.base_url))
        .header("content-type", "application/json")
        .body(vec![b' '; 8192])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let problem: serde_json::Value = response.json().await.unwrap();
    assert_eq!(problem["code"], "body_too_large");
}

#[tokio::test]
async fn headers_over_8_kib_get_a_431_problem_before_routing() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[], &[]).unwrap();
    let client = reqwest::Client::new();
    let send = |padding: usize| {
        client.get(format!("{}/v1/me/data", server.base_url)).header("x-padding", "p".repeat(padding)).send()
    };
    let response = send(9 * 1024).await.unwrap();
    assert_eq!(response.status(), 431);
    let problem: serde_json::Value = response.json().await.unwrap();
    assert_eq!(problem["code"], "headers_too_large");
    // Below the limit the request reaches the vault (and needs a token).
    assert_eq!(send(7 * 1024).await.unwrap().status(), 401);
}

#[test]
fn a_client_that_dribbles_its_headers_is_disconnected() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &["--header-read-timeout-secs", "1"], &[]).unwrap();
    let address = server.base_url.trim_start_matches("http://").to_owned();
    let mut slow = std::net::TcpStream::connect(&address).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: vault\r\n").unwrap();
    // The rest of the headers never comes. The server must give up on the
    // connection by itself: a read then ends (closed, or a 408 then closed)
    // instead of waiting for this generous bound.
    slow.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
    let mut answer = Vec::new();
    match slow.read_to_end(&mut answer) {
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(error) => panic!("the server kept the slow connection open: {error}"),
    }
    // A client that sends its request at once is served meanwhile.
    let mut quick = std::net::TcpStream::connect(&address).unwrap();
    quick.write_all(b"GET /healthz HTTP/1.1\r\nHost: vault\r\nConnection: close\r\n\r\n").unwrap();
    let mut reply = String::new();
    quick.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_principal_over_its_request_rate_gets_429_and_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let server = ServerProcess::start(&data_dir, &["--principal-requests-per-sec", "5"], &[]).unwrap();
    let client = reqwest::Client::new();
    let base = server.base_url.clone();
    let admin = common::roles::admin_token(&client, &base, &data_dir).await;
    let (_, auditor) = common::roles::client_principal(&client, &base, &admin, "auditors").await;
    // A burst of 10 (twice the rate), then refused until tokens come back.
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..20 {
        let response = client.get(format!("{base}/v1/admin/keys")).bearer_auth(&admin).send().await.unwrap();
        statuses.push(response.status().as_u16());
        if response.status() == 429 {
            retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
            let problem: serde_json::Value = response.json().await.unwrap();
            assert_eq!(problem["code"], "rate_limited");
        }
    }
    assert!(statuses.iter().filter(|&&s| s == 200).count() <= 10, "{statuses:?}");
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(retry_after.is_some_and(|seconds| seconds.parse::<u64>().unwrap() >= 1));
    // Another principal has its own budget.
    let checkpoint = format!("{base}/v1/audit/entries?limit=1");
    let response = client.get(checkpoint).bearer_auth(&auditor).send().await.unwrap();
    assert_eq!(response.status(), 200);
}

#[test]
fn production_refuses_to_create_a_vault_or_keys() {
    let dir = tempfile::tempdir().unwrap();
    let error = ServerProcess::start(&dir.path().join("data"), &["--production"], &[]).err().unwrap();
    assert!(error.contains("production start-up does not create one"), "{error}");
    assert!(!dir.path().join("data").join("kek.key").exists());
}

#[test]
fn a_key_that_does_not_match_the_data_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let init = binary().args(["init", "--data-dir"]).arg(&data_dir).output().unwrap();
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    let other_key = "1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
    let error = ServerProcess::start(&data_dir, &[], &[("CONSENTVAULT_KEK", other_key)]).err().unwrap();
    assert!(error.contains("is not the one this store was sealed with"), "{error}");
    assert!(!error.contains(other_key), "errors must not quote key material");
}

#[test]
fn init_with_an_invalid_origin_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let output = binary().args(["init", "--audit-origin", "bad origin", "--data-dir"]).arg(&data_dir).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("is not valid"));
    assert!(!data_dir.exists(), "a refused init leaves nothing behind");
}

#[test]
fn init_refuses_an_existing_vault_and_a_foreign_directory() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    assert!(binary().args(["init", "--data-dir"]).arg(&data_dir).status().unwrap().success());
    let again = binary().args(["init", "--data-dir"]).arg(&data_dir).output().unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds a vault"));
    let foreign = dir.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "hello").unwrap();
    let error = ServerProcess::start(&foreign, &[], &[]).err().unwrap();
    assert!(error.contains("holds no vault"), "{error}");
}

#[test]
fn policy_check_accepts_the_shipped_policies_and_names_the_line_of_a_mistake() {
    let ok = binary().args(["policy", "check"]).arg(common::policies_dir()).output().unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("retention: off"), "the shipped rules leave retention off");
    let dir = tempfile::tempdir().unwrap();
    let policies = common::policies_copy(dir.path());
    let rules = std::fs::read_to_string(policies.join("rules.toml")).unwrap();
    std::fs::write(policies.join("rules.toml"), format!("{rules}\n[retention]\nerase_inactive_after_days = 730\n"))
        .unwrap();
    let on = binary().args(["policy", "check"]).arg(&policies).output().unwrap();
    let stdout = String::from_utf8_lossy(&on.stdout);
    assert!(on.status.success() && stdout.contains("erase customers inactive for 730 days"), "{stdout}");
    let lines = rules.lines().count();
    std::fs::write(policies.join("rules.toml"), format!("{rules}\n[retention]\nerase_inactive_after_days = 0\n"))
        .unwrap();
    let zero = binary().args(["policy", "check"]).arg(&policies).output().unwrap();
    let stderr = String::from_utf8_lossy(&zero.stderr);
    assert_eq!(zero.status.code(), Some(2), "an invalid policy is a usage error: {stderr}");
    assert!(
        stderr.contains(&format!("rules.toml:{}:", lines + 2)) && stderr.contains("erase_inactive_after_days"),
        "{stderr}"
    );
    std::fs::copy(common::policies_dir().join("rules.toml"), policies.join("rules.toml")).unwrap();
    std::fs::write(
        policies.join("fields.toml"),
        "[fields.email]\ncategory = \"contact\"\nsensitivity = \"standard\"\ntype = \"emial\"\nmax_bytes = 10\ndescription = \"x\"\n",
    )
    .unwrap();
    let bad = binary().args(["policy", "check"]).arg(&policies).output().unwrap();
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("fields.toml:4:") && stderr.contains("emial"), "{stderr}");
}

#[tokio::test]
async fn sighup_reloads_the_policies_and_records_it() {
    let dir = tempfile::tempdir().unwrap();
    let policies = common::policies_copy(dir.path());
    let data_dir = dir.path().join("data");
    let server = ServerProcess::start(&data_dir, &["--policies", policies.to_str().unwrap()], &[]).unwrap();
    let client = reqwest::Client::new();
    let admin = common::roles::admin_token(&client, &server.base_url, &data_dir).await;
    let (_, auditor) = common::roles::client_principal(&client, &server.base_url, &admin, "auditors").await;
    let loaded = || {
        let (client, url, auditor) =
            (client.clone(), format!("{}/v1/audit/entries?kind=policy.loaded", server.base_url), auditor.clone());
        async move {
            let page: serde_json::Value =
                client.get(url).bearer_auth(auditor).send().await.unwrap().json().await.unwrap();
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["entry"]["related"]["policy_sha256"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(loaded().await.len(), 1, "loaded at start");
    let rules = policies.join("rules.toml");
    let text = std::fs::read_to_string(&rules).unwrap();
    std::fs::write(&rules, format!("{text}\n[[duration_cap]]\nid = \"marketing-60-days\"\ndescription = \"x\"\npurpose = \"marketing\"\nmax_days = 60\n")).unwrap();
    let pid = server.child.id().to_string();
    assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    // Wait (bounded) for the reload to be recorded, and then said: the
    // event is served as soon as it is durable, a moment before the server
    // logs the reload.
    let said = || server.stderr_text().contains("policies reloaded on SIGHUP");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let hashes = loop {
        let hashes = loaded().await;
        if (hashes.len() == 2 && said()) || std::time::Instant::now() > deadline {
            break hashes;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(hashes.len(), 2, "SIGHUP must reload and record the policies");
    assert_ne!(hashes[0], hashes[1]);
    assert!(said(), "the reload is logged");
}

#[test]
fn a_data_directory_made_by_hand_with_a_loose_mode_is_tightened_to_its_owner() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    std::fs::create_dir(&data_dir).unwrap();
    std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let server = ServerProcess::start(&data_dir, &[], &[]).unwrap();
    // Every directory the vault keeps is the owner's alone, and so is every
    // file in it (the store's files hold audit entries that link customer ids
    // to businesses and pairwise ids).
    let mut pending = vec![data_dir.clone()];
    let mut files = 0;
    while let Some(path) = pending.pop() {
        let metadata = std::fs::symlink_metadata(&path).unwrap();
        let mode = metadata.permissions().mode() & 0o777;
        if metadata.is_dir() {
            assert_eq!(mode, 0o700, "{} is {mode:o}", path.display());
            pending.extend(std::fs::read_dir(&path).unwrap().map(|entry| entry.unwrap().path()));
        } else if metadata.is_file() {
            assert_eq!(mode & 0o077, 0, "{} is {mode:o}", path.display());
            files += 1;
        }
    }
    assert!(files >= 3, "the key file, the credentials and the store's files were checked");
    assert!(server.stderr_text().contains("permissions tightened"), "the operator is told");
    drop(server);
}

/// Sets the file-size limit of process `pid` (`None`: unlimited) with
/// util-linux's `prlimit`, as an operator's `LimitFSIZE` would: the
/// store's files cannot grow past it, so the store meets the same refused
/// writes as on a full disk, without a file system of its own to fill.
fn file_size_limit(pid: u32, bytes: Option<u64>) {
    // Only the soft limit: lowering the hard one could not be undone
    // without privileges.
    let soft = bytes.map_or_else(|| "unlimited".to_owned(), |bytes| bytes.to_string());
    let limit = format!("{soft}:unlimited");
    let status = Command::new("prlimit").arg("--pid").arg(pid.to_string()).arg(format!("--fsize={limit}")).status();
    assert!(status.unwrap().success(), "prlimit --fsize={limit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_cannot_write_answers_503_and_recovers_by_itself_losing_nothing() {
    use common::roles::{self, get};
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let server = ServerProcess::start(&data_dir, &[], &[]).unwrap();
    let (client, base) = (reqwest::Client::new(), server.base_url.clone());
    let admin = roles::admin_token(&client, &base, &data_dir).await;
    let (business_id, business) = roles::client_principal(&client, &base, &admin, "businesses").await;
    let (_, customer) = roles::customer(&client, &base).await;
    let put = client
        .put(format!("{base}/v1/me/data"))
        .bearer_auth(&customer)
        .json(&serde_json::json!({"email": "ada@example.org"}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let pairwise =
        roles::connect(&client, &base, &customer, &business_id).await["pairwise_id"].as_str().unwrap().to_owned();
    let grant = serde_json::json!({"business_id": business_id, "purposes": ["marketing"], "fields": ["email"],
                                   "duration_days": 30});
    assert_eq!(roles::post(&client, format!("{base}/v1/me/grants"), Some(&customer), grant).await.0, 201);
    let read_url = format!("{base}/v1/subjects/{pairwise}/data?purpose=marketing&fields=email");

    // The store's files may not grow any more.
    let db = data_dir.join("store").join("db");
    file_size_limit(server.child.id(), Some(std::fs::metadata(&db).unwrap().len()));
    let mut acknowledged = Vec::new();
    let refusal = loop {
        let response = client.get(&read_url).bearer_auth(&business).send().await.unwrap();
        let status = response.status().as_u16();
        let retry_after = response.headers().get("retry-after").map(|value| value.to_str().unwrap().to_owned());
        let body: serde_json::Value = response.json().await.unwrap();
        match status {
            // sled writes into space it reserved before, for a while.
            200 => acknowledged.push(body["audit_index"].as_u64().unwrap()),
            503 => break (body, retry_after),
            other => panic!("a read while storage fails answered {other}, not 503: {body}"),
        }
        assert!(acknowledged.len() < 20_000, "the store never ran out of room");
    };
    let (problem, retry_after) = refusal;
    assert_eq!(problem["code"], "storage_unavailable", "{problem}");
    assert!(problem.get("data").is_none() && !problem.to_string().contains("ada@example.org"), "{problem}");
    assert!(retry_after.is_some_and(|seconds| seconds.parse::<u64>().unwrap() >= 1), "Retry-After");
    let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503, "not ready while storage fails: {}", {
        let said: Vec<String> = server
            .stderr_text()
            .lines()
            .filter(|line| line.contains("WARN") || line.contains("ERROR"))
            .map(|line| line.chars().take(400).collect())
            .collect();
        said[said.len().saturating_sub(30)..].join("\n")
    });
    let (status, write) = roles::send(
        &client,
        reqwest::Method::PUT,
        format!("{base}/v1/me/data"),
        Some(&customer),
        Some(serde_json::json!({"email": "bob@example.org"})),
    )
    .await;
    assert_eq!(
        (status, write["code"].as_str()),
        (503, Some("storage_unavailable")),
        "{write}\n{}",
        server.stderr_text()
    );

    // Room again: the vault recovers within seconds, without a restart.
    file_size_limit(server.child.id(), None);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let ready = client.get(format!("{base}/readyz")).send().await.unwrap().status();
        let (status, read) = get(&client, read_url.clone(), &business).await;
        if ready == 200 && status == 200 {
            assert_eq!(read["data"]["email"], "ada@example.org", "the refused write changed nothing: {read}");
            acknowledged.push(read["audit_index"].as_u64().unwrap());
            break;
        }
        if std::time::Instant::now() >= deadline {
            let said: Vec<String> = server
                .stderr_text()
                .lines()
                .filter(|line| line.contains("WARN") || line.contains("ERROR"))
                .map(str::to_owned)
                .collect();
            panic!(
                "still {ready} / {status} after room came back: {read}\n{}",
                said[said.len().saturating_sub(40)..].join("\n")
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let stderr = server.stderr_text();
    assert!(stderr.contains("store reopened after a storage failure"), "{stderr}");
    assert!(server.terminate().success());

    // Every read answered 200 is in the log, which verifies, across a restart.
    let (verified, stdout, stderr) = common::audit_verify(&data_dir);
    assert!(verified, "{stdout}\n{stderr}");
    let server = ServerProcess::start(&data_dir, &[], &[]).unwrap();
    let base = server.base_url.clone();
    let admin = roles::admin_token(&client, &base, &data_dir).await;
    let (_, auditor) = roles::client_principal(&client, &base, &admin, "auditors").await;
    for index in acknowledged {
        let (status, entry) = get(&client, format!("{base}/v1/audit/entries?start={index}&limit=1"), &auditor).await;
        assert_eq!(status, 200, "{entry}");
        let entry = &entry["items"][0];
        assert_eq!(entry["index"], index, "{entry}");
        assert_eq!((&entry["entry"]["kind"], &entry["entry"]["decision"]), (&"data.read".into(), &"allow".into()));
    }
    assert!(server.terminate().success());
}

/// Sends one HTTP/1.1 request on `stream` (kept alive) and reads the whole
/// answer: (status, body).
fn http_exchange(stream: &mut std::net::TcpStream, request: &str) -> (u16, String) {
    use std::io::{BufRead, Read, Write};
    stream.write_all(request.as_bytes()).unwrap();
    let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
    let mut status_line = String::new();
    reader.read_line(&mut status_line).unwrap();
    let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    (status, String::from_utf8(body).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_write_follows_an_fdatasync_of_the_store_log() {
    use common::roles;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let trace = dir.path().join("trace.txt");
    let pid_file = dir.path().join("server.pid");
    // The server runs under strace, which records each sync and each write
    // to a socket (with the file or connection each descriptor is).
    let trace_arg = trace.to_str().unwrap().to_owned();
    let exec = format!("echo $$ > '{}'; exec \"$0\" \"$@\"", pid_file.display());
    let wrapper = [
        "strace",
        "-f",
        "-qq",
        "-yy",
        "-s",
        "16",
        "-e",
        "signal=none",
        "-e",
        "trace=fsync,fdatasync,sync_file_range,pwrite64,write,writev,sendto,sendmsg",
        "-o",
        &trace_arg,
        "--",
        "sh",
        "-c",
        &exec,
    ];
    let server = ServerProcess::start_wrapped(&wrapper, &data_dir, &[], &[]).unwrap();
    let base = server.base_url.clone();
    let client = reqwest::Client::new();
    let (_, customer) = roles::customer(&client, &base).await;

    // Writes one at a time, on a connection whose port the trace shows.
    let address = base.strip_prefix("http://").unwrap().to_owned();
    let mut stream = std::net::TcpStream::connect(&address).unwrap();
    let port = stream.local_addr().unwrap().port();
    let writes = 12;
    for n in 0..writes {
        let body = format!("{{\"email\": \"ada{n}@example.org\"}}");
        let request = format!(
            "PUT /v1/me/data HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {customer}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let (status, answer) = http_exchange(&mut stream, &request);
        assert_eq!(status, 200, "{answer}");
    }
    drop(stream);
    let pid = std::fs::read_to_string(&pid_file).unwrap().trim().to_owned();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let mut server = server;
    assert!(server.child.wait().unwrap().success());

    let trace = std::fs::read_to_string(&trace).unwrap();
    let store = data_dir.join("store");
    let log = format!("<{}>", store.join("db").display());
    let to_us = format!(":{port}]>");
    // In trace order: writes to the log, syncs of the log, and answers on
    // our connection. A call another thread interrupts is split into an
    // `<unfinished ...>` line with its arguments and a `resumed` line with
    // its result, both after the thread's id. Each answer must follow a
    // sync of the log that began after the last write to it: the bytes of
    // its batch were on stable storage before it went out.
    let mut acknowledged = 0;
    let mut last_log_write = None;
    let mut newest_sync_started = None;
    let mut log_syncs_running = std::collections::BTreeMap::new();
    for (number, line) in trace.lines().enumerate() {
        let mut words = line.split_whitespace();
        let (thread, call) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        if call.starts_with("pwrite64(") && line.contains(&log) {
            last_log_write = Some(number);
        }
        let is_sync = call.starts_with("fdatasync(") || call.starts_with("fsync(");
        if is_sync && line.contains(&log) {
            if line.contains("<unfinished ...>") {
                log_syncs_running.insert(thread.to_owned(), number);
            } else if line.ends_with("= 0") {
                newest_sync_started = Some(number);
            }
        }
        if (line.contains("<... fdatasync resumed>") || line.contains("<... fsync resumed>"))
            && let Some(started) = log_syncs_running.remove(thread)
            && line.ends_with("= 0")
        {
            newest_sync_started = newest_sync_started.max(Some(started));
        }
        if line.contains(&to_us) && line.contains("HTTP/1.1 200") {
            assert!(last_log_write.is_some(), "the log was never written");
            assert!(
                newest_sync_started > last_log_write,
                "an answer went out before a sync of the log's last write ({line}); trace line {number}"
            );
            acknowledged += 1;
        }
    }
    assert_eq!(acknowledged, writes, "every answer on the connection was seen in the trace");
    // And what sled writes and never syncs: its configuration file, and the
    // directory entries of the store and of the data directory.
    for synced in [store.join("conf"), store.clone(), data_dir.clone()] {
        let path = format!("<{}>", synced.display());
        assert!(
            trace.lines().any(|line| line.contains(" fsync(") && line.contains(&path) && line.contains("= 0")),
            "{} is never synced",
            synced.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_behind_a_published_checkpoint_is_refused_until_restored_or_accepted() {
    use common::roles::{self, get};
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let store = data_dir.join("store");
    let older = dir.path().join("older-store");
    let client = reqwest::Client::new();

    // A vault with a customer; a copy of its store is kept.
    let server = ServerProcess::start(&data_dir, &[], &[]).unwrap();
    let (_, customer) = roles::customer(&client, &server.base_url).await;
    assert!(server.terminate().success());
    assert!(Command::new("cp").arg("-a").arg(&store).arg(&older).status().unwrap().success());
    let (verified, held, _) = common::audit_verify(&data_dir);
    assert!(verified);
    let held: u64 = held.split_whitespace().nth(2).unwrap().parse().unwrap();

    // It goes on, and an auditor is handed a checkpoint of the larger log.
    let server = ServerProcess::start(&data_dir, &[], &[]).unwrap();
    let base = server.base_url.clone();
    for n in 0..5 {
        let put = client
            .put(format!("{base}/v1/me/data"))
            .bearer_auth(&customer)
            .json(&serde_json::json!({"email": format!("ada{n}@example.org")}))
            .send()
            .await
            .unwrap();
        assert_eq!(put.status(), 200);
    }
    let admin = roles::admin_token(&client, &base, &data_dir).await;
    let (_, auditor) = roles::client_principal(&client, &base, &admin, "auditors").await;
    let checkpoint = client.get(format!("{base}/v1/audit/checkpoint")).send().await.unwrap().text().await.unwrap();
    let published: u64 = checkpoint.lines().nth(1).unwrap().parse().unwrap();
    assert!(published > held);
    assert!(server.terminate().success());

    // The older store is put back.
    std::fs::remove_dir_all(&store).unwrap();
    std::fs::rename(&older, &store).unwrap();
    let (verified, stdout, stderr) = common::audit_verify(&data_dir);
    assert!(!verified, "{stdout}");
    assert!(stderr.contains(&format!("published a checkpoint of {published}")), "{stderr}");

    // The vault starts, says what happened, and serves nothing else.
    let server = ServerProcess::start(&data_dir, &[], &[]).unwrap();
    let base = server.base_url.clone();
    assert_eq!(client.get(format!("{base}/healthz")).send().await.unwrap().status(), 200);
    let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let ready: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(ready["code"], "store_rolled_back", "{ready}");
    assert!(ready["detail"].as_str().unwrap().contains("accept-rollback"), "{ready}");
    let (status, refused) = get(&client, format!("{base}/v1/me/data"), &customer).await;
    assert_eq!((status, refused["code"].as_str()), (503, Some("store_rolled_back")), "{refused}");
    let checkpoint = client.get(format!("{base}/v1/audit/checkpoint")).send().await.unwrap();
    assert_eq!(checkpoint.status(), 503, "no checkpoint of the older tree is handed out");
    assert!(server.terminate().success());
    let (verified, stdout, _) = common::audit_verify(&data_dir);
    assert!(!verified, "nothing was signed meanwhile, so it is still behind: {stdout}");

    // The operator accepts it; the log says so, and the vault serves again.
    let accepted = common::binary(["audit", "accept-rollback", "--data-dir", data_dir.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&accepted.stdout).into_owned();
    assert!(accepted.status.success(), "{said}{}", String::from_utf8_lossy(&accepted.stderr));
    assert!(said.contains("vault.rollback_accepted"), "{said}");
    let again = common::binary(["audit", "accept-rollback", "--data-dir", data_dir.to_str().unwrap()]);
    assert!(!again.status.success(), "nothing left to accept");
    let (verified, stdout, stderr) = common::audit_verify(&data_dir);
    assert!(verified, "{stdout}\n{stderr}");

    let server = ServerProcess::start(&data_dir, &[], &[]).unwrap();
    let base = server.base_url.clone();
    assert_eq!(client.get(format!("{base}/readyz")).send().await.unwrap().status(), 200);
    let (status, _) = get(&client, format!("{base}/v1/me/data"), &customer).await;
    assert_eq!(status, 200);
    let admin = roles::admin_token(&client, &base, &data_dir).await;
    let (_, auditor_now) = roles::client_principal(&client, &base, &admin, "auditors").await;
    let (status, entry) = get(&client, format!("{base}/v1/audit/entries?start={held}&limit=1"), &auditor_now).await;
    assert_eq!(status, 200, "{entry}");
    let event = &entry["items"][0]["entry"];
    assert_eq!(event["kind"], "vault.rollback_accepted", "the first entry after the held log: {event}");
    assert_eq!(event["related"]["published_size"], published.to_string());
    assert_eq!(event["related"]["held_size"], held.to_string());
    // The auditor registered after the copy is gone with the rollback.
    let (status, _) = get(&client, format!("{base}/v1/audit/entries?limit=1"), &auditor).await;
    assert_eq!(status, 401);
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_start_cut_off_part_way_starts_again() {
    use common::roles;
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();

    // Cut off after the admin credentials file was synced and before the
    // admin principal was committed: the next start makes the principal
    // from the file, so the credentials the operator may hold work.
    let data_dir = dir.path().join("data");
    let init = common::binary(["init", "--data-dir", data_dir.to_str().unwrap()]);
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    let credentials = serde_json::json!({"client_id": "0123456789abcdef0123456789abcdef",
                                         "client_secret": "kept-by-the-operator-since-the-first-start"});
    std::fs::write(data_dir.join("admin-credentials.json"), credentials.to_string()).unwrap();
    let server = ServerProcess::start(&data_dir, &[], &[]).unwrap();
    let admin = roles::admin_token(&client, &server.base_url, &data_dir).await;
    let (status, _) = roles::get(&client, format!("{}/v1/admin/businesses", server.base_url), &admin).await;
    assert_eq!(status, 200);
    assert!(server.stderr_text().contains("interrupted first start"), "{}", server.stderr_text());
    assert!(server.terminate().success());
    // And it stays the one admin: the next start changes nothing.
    let server = ServerProcess::start(&data_dir, &[], &[]).unwrap();
    let again = roles::admin_token(&client, &server.base_url, &data_dir).await;
    assert_eq!(roles::get(&client, format!("{}/v1/admin/auditors", server.base_url), &again).await.0, 200);
    assert!(server.terminate().success());

    // Cut off after the key file was made and before the store was: the
    // next start goes on with that key instead of refusing the directory.
    let first = dir.path().join("first");
    let init = common::binary(["init", "--data-dir", first.to_str().unwrap()]);
    assert!(init.status.success());
    let cut = dir.path().join("cut");
    std::fs::create_dir(&cut).unwrap();
    std::fs::copy(first.join("kek.key"), cut.join("kek.key")).unwrap();
    let server = ServerProcess::start(&cut, &[], &[]).unwrap();
    let admin = roles::admin_token(&client, &server.base_url, &cut).await;
    assert_eq!(roles::get(&client, format!("{}/v1/admin/businesses", server.base_url), &admin).await.0, 200);
    assert!(server.terminate().success());
    assert_eq!(std::fs::read(cut.join("kek.key")).unwrap(), std::fs::read(first.join("kek.key")).unwrap());
}

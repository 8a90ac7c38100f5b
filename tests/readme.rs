//! The README quick start is a test: its marked shell block runs against the
//! real server, so the documentation cannot go stale.

#![allow(clippy::unwrap_used)]

mod common;

const MARKER: &str = "<!-- quick-start:";

/// The first ```sh block after the quick-start marker.
fn quick_start_block(readme: &str) -> String {
    let after_marker = &readme[readme.find(MARKER).expect("README has a quick-start marker")..];
    let start = after_marker.find("```sh\n").expect("a sh block follows the marker") + "```sh\n".len();
    let block = &after_marker[start..];
    block[..block.find("```").expect("the block is closed")].to_owned()
}

#[test]
fn readme_quick_start_runs_against_a_real_server() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let script = quick_start_block(&readme);
    assert!(script.contains("curl"), "the quick start should exercise the API");
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("vault-data");
    let server = common::ServerProcess::start(&data_dir, &[], &[]).unwrap();
    let output = std::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(dir.path())
        .env("VAULT", &server.base_url)
        .env("DATA_DIR", &data_dir)
        .env("TOOLS", concat!(env!("CARGO_MANIFEST_DIR"), "/tools"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "quick start failed:\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

"""A vault served for the outside checks (scripts/schemathesis.py,
scripts/generated_client.py, scripts/standard_webhooks.py): the real binary (CONSENTVAULT_BIN, else
<CARGO_TARGET_DIR or target>/debug/consentvault) on a temporary data
directory and port 0, with the shipped policies."""

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def binary():
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    return os.environ.get("CONSENTVAULT_BIN", str(target / "debug" / "consentvault"))


def start(work, extra=()):
    """Starts a vault in `work`, with `extra` arguments; returns the process, its base URL and its data directory."""
    data_dir = work / "data"
    server = subprocess.Popen(
        [binary(), "serve", "--data-dir", str(data_dir), "--policies", str(ROOT / "policies"),
         "--listen", "127.0.0.1:0", *extra],
        stdout=subprocess.PIPE, stderr=open(work / "server.log", "w"), text=True,
        env={**os.environ, "CONSENTVAULT_LOG": "warn", "CONSENTVAULT_FORMAT": "text"},
    )
    for line in server.stdout:
        match = re.match(r"listening on (http://\S+)", line)
        if match:
            return server, match.group(1), data_dir
    server.wait(timeout=30)
    raise SystemExit("the server did not start; see " + str(work / "server.log"))


def stop(server):
    server.terminate()
    server.wait(timeout=30)

#!/usr/bin/env python3
"""A client generated from the vault's own API description, driven through
the README's flow.

Starts `consentvault serve` (scripts/served_vault.py), fetches
/v1/openapi.json, generates a Python client from it with
openapi-python-client, type-checks scripts/generated_client_flow.py against
the generated package with mypy --strict, and runs that flow against the
vault. Exits non-zero if generation, the type check or any step fails. Runs
under the virtualenv scripts/generated-client prepares.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import served_vault


def main():
    tools = Path(sys.executable).parent
    flow = Path(__file__).resolve().with_name("generated_client_flow.py")
    work = Path(tempfile.mkdtemp(prefix="consentvault-client-"))
    server, base, data_dir = served_vault.start(work)
    try:
        spec = work / "openapi.json"
        with urllib.request.urlopen(base + "/v1/openapi.json", timeout=30) as response:
            spec.write_bytes(response.read())
        # No formatter runs after generation: the code is used, not read.
        config = work / "generator.yaml"
        config.write_text("post_hooks: []\n")
        generated = subprocess.run(
            [tools / "openapi-python-client", "generate", "--path", spec, "--meta", "none",
             "--config", config, "--output-path", work / "consentvault_client"],
            cwd=work, capture_output=True, text=True,
        )
        # Any warning means a piece of the API was left out of the client.
        if generated.returncode != 0 or "Warning" in generated.stdout + generated.stderr:
            sys.exit("the client generator refused part of the API description:\n"
                     + generated.stdout + generated.stderr)
        env = {**os.environ, "PYTHONPATH": str(work), "MYPYPATH": str(work)}
        # The generated package is checked as it is used, not for its own style.
        subprocess.run(
            [tools / "mypy", "--strict", "--follow-imports=silent", "--cache-dir", work / "mypy-cache", flow],
            check=True, env=env,
        )
        subprocess.run([sys.executable, flow, base, data_dir / "admin-credentials.json"], check=True, env=env)
    finally:
        served_vault.stop(server)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

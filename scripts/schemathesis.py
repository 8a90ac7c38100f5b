#!/usr/bin/env python3
"""Schemathesis against the running vault, as every role.

Starts `consentvault serve` (scripts/served_vault.py), sets up
an admin, a business, an auditor and a customer with data, a relationship
and a grant, then runs Schemathesis (the `st` command of the virtualenv this
script runs under) against /v1/openapi.json once per role, with that role's
token and only that role's operations (by OpenAPI tag), plus the public
operations without a token.

Checks: no server error (5xx); responses and content types that conform to
the schema; authentication not ignored (the same request without or with a
broken token must be refused); methods the schema does not list answered
with 405. Exits non-zero if any run finds a failure. Examples per
operation: CONSENTVAULT_SCHEMATHESIS_EXAMPLES (default 30).
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import served_vault

CHECKS = "not_a_server_error,response_schema_conformance,content_type_conformance,ignored_auth,unsupported_method"


def request(base, method, path, token=None, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    if data is not None:
        req.add_header("content-type", "application/json")
    if token:
        req.add_header("authorization", "Bearer " + token)
    with urllib.request.urlopen(req, timeout=30) as response:
        return json.loads(response.read() or b"null")


def token(base, body):
    return request(base, "POST", "/v1/token", body=body)["access_token"]


def main():
    examples = os.environ.get("CONSENTVAULT_SCHEMATHESIS_EXAMPLES", "30")
    st = shutil.which("st", path=str(Path(sys.executable).parent)) or "st"
    work = Path(tempfile.mkdtemp(prefix="consentvault-schemathesis-"))
    server, base, data_dir = served_vault.start(work)
    failed = []
    try:
        credentials = json.loads((data_dir / "admin-credentials.json").read_text())
        admin = token(base, {"grant_type": "client_credentials", **credentials})
        business = request(base, "POST", "/v1/admin/businesses", admin,
                           {"name": "Acme Pizza", "purposes": ["order-fulfilment", "marketing"]})
        auditor = request(base, "POST", "/v1/admin/auditors", admin, {"name": "Internal audit"})
        business_token = token(base, {"grant_type": "client_credentials",
                                      "client_id": business["client_id"],
                                      "client_secret": business["client_secret"]})
        auditor_token = token(base, {"grant_type": "client_credentials",
                                     "client_id": auditor["client_id"],
                                     "client_secret": auditor["client_secret"]})
        password = "correct horse battery staple"
        customer = request(base, "POST", "/v1/customers", body={"password": password})
        customer_token = token(base, {"grant_type": "password", "username": customer["customer_id"],
                                      "password": password})
        request(base, "PUT", "/v1/me/data", customer_token,
                {"email": "ada@example.org", "phone": "+44 20 7946 0000"})
        request(base, "POST", "/v1/me/relationships", customer_token, {"business_id": business["business_id"]})
        request(base, "POST", "/v1/me/grants", customer_token,
                {"business_id": business["business_id"], "purposes": ["marketing"], "fields": ["email"],
                 "duration_days": 30})

        # The admin runs last: it may disable the business and auditor.
        runs = [
            ("public", None, ["--include-tag", "health", "--include-tag", "identity", "--include-tag", "meta"]),
            # Erasure would end the customer's token for the rest of the run;
            # tests/rights.rs covers it.
            ("customer", customer_token, ["--include-tag", "customer", "--exclude-path", "/v1/me"]),
            ("business", business_token, ["--include-tag", "business"]),
            ("auditor", auditor_token, ["--include-tag", "audit"]),
            ("admin", admin, ["--include-tag", "admin"]),
        ]
        for role, role_token, selection in runs:
            command = [st, "run", base + "/v1/openapi.json", "--checks", CHECKS,
                       "--max-examples", examples, "--workers", "1", "--seed", "1",
                       "--phases", "examples,coverage,fuzzing", *selection]
            if role_token:
                command += ["-H", "Authorization: Bearer " + role_token]
            print(f"== schemathesis as {role}", flush=True)
            if subprocess.run(command, cwd=work).returncode != 0:
                failed.append(role)
    finally:
        served_vault.stop(server)
    if failed:
        sys.exit("schemathesis found failures as: " + ", ".join(failed))
    shutil.rmtree(work, ignore_errors=True)
    print("schemathesis: no server errors, every response conforms to the schema")


if __name__ == "__main__":
    main()

"""The vault on sled and on PostgreSQL, side by side (scripts/bench-engines)."""

import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import served_vault  # noqa: E402

PASSWORD = "correct horse battery staple"
SECS = int(os.environ.get("CONSENTVAULT_BENCH_SECS", "10"))
ROUNDS = int(os.environ.get("CONSENTVAULT_BENCH_ROUNDS", "2"))
CONNECTIONS = int(os.environ.get("CONSENTVAULT_BENCH_CONNECTIONS", "64"))


def call(method, url, token=None, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", "Bearer " + token)
    with urllib.request.urlopen(request) as response:
        return json.loads(response.read() or b"null")


def token(base, body):
    return call("POST", base + "/v1/token", body=body)["access_token"]


def provision(base, data_dir):
    """The README's flow: a business, a customer with data, a grant; returns the two tokens and the read path."""
    admin = token(base, json.loads((data_dir / "admin-credentials.json").read_text()))
    business = call("POST", base + "/v1/admin/businesses", admin,
                    {"name": "Acme Pizza", "purposes": ["order-fulfilment", "marketing"]})
    acme = token(base, {"grant_type": "client_credentials", "client_id": business["client_id"],
                        "client_secret": business["client_secret"]})
    ada_id = call("POST", base + "/v1/customers", body={"password": PASSWORD})["customer_id"]
    ada = token(base, {"grant_type": "password", "username": ada_id, "password": PASSWORD})
    call("PUT", base + "/v1/me/data", ada, {"email": "ada@example.org", "phone": "+44 20 7946 0000"})
    pairwise = call("POST", base + "/v1/me/relationships", ada, {"business_id": business["business_id"]})["pairwise_id"]
    request = call("POST", base + "/v1/access-requests", acme, {
        "pairwise_id": pairwise, "purposes": ["marketing"], "fields": ["email", "phone"], "duration_days": 90,
        "justification": "Send our monthly offers", "benefit": "10% off every order"})
    call("POST", base + "/v1/me/access-requests/" + request["request_id"] + "/approve", ada, {"fields": ["email"]})
    return acme, ada, f"/v1/subjects/{pairwise}/data?purpose=marketing&fields=email"


def wrk(base, path, token, script):
    """Runs wrk; returns (requests/s, p99 ms, non-2xx count)."""
    out = subprocess.run(
        ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{SECS}s", "--latency", "-s", str(script), base + path],
        env={**os.environ, "WRK_TOKEN": token}, capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    p99_ms = float(p99.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rate, p99_ms, int(errors.group(1)) if errors else 0


def main():
    url = sys.argv[1]
    work = Path(tempfile.mkdtemp())
    database = url.rsplit("/", 1)[0] + "/bench"
    subprocess.run(["psql", url, "-qc", "CREATE DATABASE bench"], check=True)
    read_script = work / "read.lua"
    read_script.write_text('wrk.headers["Authorization"] = "Bearer " .. os.getenv("WRK_TOKEN")\n')
    write_script = work / "write.lua"
    write_script.write_text(
        'wrk.method = "PUT"\nwrk.headers["Content-Type"] = "application/json"\n'
        'wrk.headers["Authorization"] = "Bearer " .. os.getenv("WRK_TOKEN")\n'
        'local n = 0\nrequest = function()\n  n = n + 1\n'
        '  return wrk.format(nil, nil, nil, string.format(\'{"email": "ada+%d@example.org"}\', n))\nend\n')
    engines = {}
    # The per-principal request limit would answer most of the load with 429.
    unlimited = ["--principal-requests-per-sec=1000000"]
    for name, extra in (("sled", ["--store=sled", *unlimited]), ("PostgreSQL", ["--store=" + database, *unlimited])):
        directory = work / name
        directory.mkdir()
        server, base, data_dir = served_vault.start(directory, extra)
        engines[name] = (server, base) + provision(base, data_dir)
    print(f"wrk -t2 -c{CONNECTIONS}, {SECS} s per round, rounds alternating between the engines\n")
    print("| workload | engine | round | requests/s | p99 | non-2xx |")
    print("|---|---|---|---|---|---|")
    totals = {}
    for workload, script in (("scoped read", read_script), ("write of her data", write_script)):
        for round_number in range(1, ROUNDS + 1):
            for name, (server, base, acme, ada, read_path) in engines.items():
                path, who = (read_path, acme) if workload == "scoped read" else ("/v1/me/data", ada)
                rate, p99, errors = wrk(base, path, who, script)
                totals.setdefault((workload, name), []).append(rate)
                print(f"| {workload} | {name} | {round_number} | {rate:.0f} | {p99:.2f} ms | {errors} |")
    print()
    for workload in ("scoped read", "write of her data"):
        sled = sum(totals[(workload, "sled")]) / ROUNDS
        postgres = sum(totals[(workload, "PostgreSQL")]) / ROUNDS
        print(f"{workload}: PostgreSQL / sled = {postgres / sled:.2f} ({postgres:.0f} vs {sled:.0f} requests/s)")
    for server, *_ in engines.values():
        served_vault.stop(server)


if __name__ == "__main__":
    main()

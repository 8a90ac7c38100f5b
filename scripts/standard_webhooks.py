#!/usr/bin/env python3
"""The vault's webhook messages, verified by the `standardwebhooks` package
(the Standard Webhooks reference library, from PyPI) as a business's
receiver would.

Starts `consentvault serve` (scripts/served_vault.py) with webhooks allowed
to reach a receiver on loopback over plain HTTP, registers an endpoint as a
business, and drives a customer's connect, grant, correction, revoke and
disconnect. Every message must verify with the endpoint's `whsec_` secret;
the same message with one byte of its body changed, or under another
secret, must not; after a secret rotation, messages verify with the new
secret and, for a day, the old one. Exits non-zero on any failure.
"""

import http.server
import json
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

import served_vault


class Receiver(http.server.BaseHTTPRequestHandler):
    got = []

    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(length)
        headers = {name.lower(): value for name, value in self.headers.items()}
        Receiver.got.append((headers, body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def api(base, method, path, token=None, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method)
    request.add_header("content-type", "application/json")
    if token:
        request.add_header("authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read().decode()
            return response.status, json.loads(text) if text else None
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read().decode() or "null")


def check(condition, what):
    if not condition:
        raise SystemExit("standard webhooks: FAILED: " + what)
    print("ok:", what)


def token(base, client_id, secret):
    status, answer = api(base, "POST", "/v1/token",
                         body={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret})
    check(status == 200, f"token for {client_id}")
    return answer["access_token"]


def wait_for(count, what):
    deadline = time.time() + 60
    while len(Receiver.got) < count:
        if time.time() > deadline:
            raise SystemExit(f"standard webhooks: FAILED: waited 60 s for {what}; got {len(Receiver.got)}")
        time.sleep(0.05)


def main():
    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    work = Path(tempfile.mkdtemp(prefix="consentvault-webhooks-"))
    config = work / "vault.toml"
    config.write_text("[webhooks]\ninsecure_allow_http = true\ninsecure_allow_private = true\n")
    server, base, data_dir = served_vault.start(work, ["--config", str(config)])
    try:
        credentials = json.loads((data_dir / "admin-credentials.json").read_text())
        admin = token(base, credentials["client_id"], credentials["client_secret"])
        status, business = api(base, "POST", "/v1/admin/businesses", admin,
                               {"name": "Acme Pizza", "purposes": ["marketing"]})
        check(status == 201, "a business registered")
        shop = token(base, business["client_id"], business["client_secret"])
        url = f"http://127.0.0.1:{receiver.server_address[1]}/hooks"
        status, created = api(base, "POST", "/v1/webhooks", shop, {"url": url})
        check(status == 201 and created["secret"].startswith("whsec_"), "an endpoint registered with a whsec_ secret")
        secret, endpoint_id = created["secret"], created["endpoint"]["endpoint_id"]

        status, signed_up = api(base, "POST", "/v1/customers", body={"password": "correct horse battery staple"})
        check(status == 201, "a customer signed up")
        status, answer = api(base, "POST", "/v1/token", body={
            "grant_type": "password", "username": signed_up["customer_id"],
            "password": "correct horse battery staple"})
        customer = answer["access_token"]
        api(base, "PUT", "/v1/me/data", customer, {"email": "ada@example.org"})
        status, relationship = api(base, "POST", "/v1/me/relationships", customer, {"business_id": business["business_id"]})
        check(status == 201, "she connected")
        status, grant = api(base, "POST", "/v1/me/grants", customer, {
            "business_id": business["business_id"], "purposes": ["marketing"], "fields": ["email"],
            "duration_days": 30})
        check(status == 201, "she granted her e-mail")
        api(base, "PUT", "/v1/me/data/email", customer, {"value": "ada.lovelace@example.org"})
        api(base, "DELETE", f"/v1/me/grants/{grant['grant_id']}", customer)
        api(base, "DELETE", f"/v1/me/relationships/{relationship['relationship_id']}", customer)

        wait_for(4, "four messages")
        webhook, stranger = Webhook(secret), Webhook("whsec_" + "A" * 43 + "=")
        types = []
        for headers, body in Receiver.got:
            payload = webhook.verify(body, headers)
            types.append((payload["data"]["audit_index"], payload["type"]))
            check(isinstance(payload["data"]["audit_index"], int), f"{payload['type']} verifies and names its audit index")
            check(b"ada" not in body, f"{payload['type']} carries no personal value")
            tampered = body.replace(b"}", b" }", 1)
            for name, verifier, data in (("a changed body", webhook, tampered), ("another secret", stranger, body)):
                try:
                    verifier.verify(data, headers)
                    check(False, f"{payload['type']} refused with {name}")
                except WebhookVerificationError:
                    check(True, f"{payload['type']} refused with {name}")
        check([kind for _, kind in sorted(types)]
              == ["grant.created", "data.corrected", "grant.revoked", "relationship.disconnected"],
              f"the messages, in audit order: {types}")

        status, rotated = api(base, "POST", f"/v1/webhooks/{endpoint_id}/secret", shop, {})
        check(status == 200 and rotated["secret"] != secret, "the secret rotated")
        api(base, "POST", "/v1/me/relationships", customer, {"business_id": business["business_id"]})
        api(base, "POST", "/v1/me/grants", customer, {
            "business_id": business["business_id"], "purposes": ["marketing"], "fields": ["email"],
            "duration_days": 30})
        wait_for(5, "a message after the rotation")
        headers, body = Receiver.got[-1]
        check(Webhook(rotated["secret"]).verify(body, headers)["type"] == "grant.created", "the new secret verifies")
        check(webhook.verify(body, headers)["type"] == "grant.created", "the old secret still verifies for a day")
    finally:
        served_vault.stop(server)
        receiver.shutdown()
    print("standard webhooks: every message verified with the standardwebhooks package")


if __name__ == "__main__":
    sys.exit(main())

"""The README's flow through a client generated from the vault's own API
description (scripts/generated_client.py), with typed access only: every
body is a generated model, every answer is narrowed to its model (the
success's or the problem document's) before use, and mypy --strict checks
this file against the generated package. No answer of the API is read as a
raw dict (only the admin credentials file is, as JSON).

Usage: generated_client_flow.py BASE_URL ADMIN_CREDENTIALS_FILE
"""

import base64
import datetime
import hashlib
import json
import sys
from http import HTTPStatus
from typing import TypeVar

from consentvault_client import AuthenticatedClient, Client
from consentvault_client.api.admin import auditors_create, businesses_create
from consentvault_client.api.audit import entries_get, entries_list, proof_inclusion
from consentvault_client.api.business import (
    business_relationships,
    grant_changes,
    requests_create,
    subjects_data,
)
from consentvault_client.api.customer import (
    access_log,
    data_get,
    data_merge,
    grants_receipt,
    grants_revoke,
    my_requests_approve,
    my_requests_list,
    relationships_create,
)
from consentvault_client.api.identity import customers_create, token_create
from consentvault_client.models import (
    AccessLogPage,
    Approval,
    AuditorCreate,
    AuditorCredentials,
    BusinessCreate,
    BusinessCredentials,
    ChangesPage,
    DataView,
    Decision,
    EntriesPage,
    EventKind,
    FieldValues,
    FixedReasonCode,
    GrantChangeKind,
    GrantStatus,
    GrantType,
    GrantView,
    InclusionProof,
    ItemsConnected,
    ItemsRequestView,
    Problem,
    ReadAnswer,
    ReceiptAnswer,
    ReceiptRecordType,
    RelationshipCreate,
    RelationshipView,
    RequestCreate,
    RequestCreated,
    RequestStatus,
    Role,
    SignupRequest,
    SignupResponse,
    Stored,
    TokenRequest,
    TokenResponse,
)
from consentvault_client.types import Unset

T = TypeVar("T")


def expect(parsed: object, kind: type[T]) -> T:
    """`parsed` as the model `kind`, or the run fails naming what came instead."""
    if not isinstance(parsed, kind):
        raise SystemExit(f"expected {kind.__name__}, got {parsed!r}")
    return parsed


def check(condition: bool, what: str) -> None:
    if not condition:
        raise SystemExit("failed: " + what)


def token(public: Client, body: TokenRequest) -> str:
    answer = expect(token_create.sync_detailed(client=public, body=body).parsed, TokenResponse)
    check(answer.token_type == "Bearer" and answer.expires_in > 0, "a bearer token with a lifetime")
    return answer.access_token


def client_token(public: Client, client_id: str, client_secret: str) -> str:
    body = TokenRequest(grant_type=GrantType.CLIENT_CREDENTIALS, client_id=client_id, client_secret=client_secret)
    return token(public, body)


def main() -> None:
    base, credentials_file = sys.argv[1], sys.argv[2]
    public = Client(base_url=base)
    with open(credentials_file) as file:
        admin_credentials = json.load(file)
    admin = AuthenticatedClient(
        base_url=base,
        token=client_token(public, str(admin_credentials["client_id"]), str(admin_credentials["client_secret"])),
    )

    # The admin registers a business and an auditor; secrets come back typed.
    business_body = BusinessCreate(name="Acme Pizza", purposes=["order-fulfilment", "marketing"])
    business = expect(businesses_create.sync_detailed(client=admin, body=business_body).parsed, BusinessCredentials)
    auditor_body = AuditorCreate(name="Internal audit")
    auditor = expect(auditors_create.sync_detailed(client=admin, body=auditor_body).parsed, AuditorCredentials)
    business_client = AuthenticatedClient(
        base_url=base, token=client_token(public, business.client_id, business.client_secret)
    )
    auditor_client = AuthenticatedClient(
        base_url=base, token=client_token(public, auditor.client_id, auditor.client_secret)
    )

    # A customer signs up, signs in, stores her data and connects.
    password = "correct horse battery staple"
    signup = customers_create.sync_detailed(client=public, body=SignupRequest(password=password))
    customer_id = expect(signup.parsed, SignupResponse).customer_id
    customer = AuthenticatedClient(
        base_url=base,
        token=token(public, TokenRequest(grant_type=GrantType.PASSWORD, username=customer_id, password=password)),
    )
    values = FieldValues(email="ada@example.org", phone="+44 20 7946 0000")
    stored = expect(data_merge.sync_detailed(client=customer, body=values).parsed, Stored)
    check(sorted(stored.fields) == ["email", "phone"], "both fields stored")
    mine = expect(data_get.sync_detailed(client=customer).parsed, DataView).data
    check(mine.email == "ada@example.org" and mine.phone == "+44 20 7946 0000", "her data read back, field by field")
    connection = relationships_create.sync_detailed(
        client=customer, body=RelationshipCreate(business_id=business.business_id)
    )
    relationship = expect(connection.parsed, RelationshipView)
    check(isinstance(relationship.connected_at, datetime.datetime), "connected_at is a date-time")

    # The business sees her by pairwise id only, and asks for access.
    connected = expect(business_relationships.sync_detailed(client=business_client).parsed, ItemsConnected)
    check([item.pairwise_id for item in connected.items] == [relationship.pairwise_id], "the business sees her")
    ask = RequestCreate(
        pairwise_id=relationship.pairwise_id,
        purposes=["marketing"],
        fields=["email", "phone"],
        duration_days=90,
        justification="Send our monthly offers",
        benefit="10% off every order",
    )
    created = expect(requests_create.sync_detailed(client=business_client, body=ask).parsed, RequestCreated)
    check(created.status == RequestStatus.PENDING, "the request is pending")

    # She sees who asks and why, and approves the e-mail only.
    pending = expect(my_requests_list.sync_detailed(client=customer).parsed, ItemsRequestView).items
    check(len(pending) == 1 and pending[0].business_name == "Acme Pizza", "the business named to her")
    check(pending[0].justification == "Send our monthly offers", "the business's why shown to her")
    approval = my_requests_approve.sync_detailed(pending[0].request_id, client=customer, body=Approval(fields=["email"]))
    grant = expect(approval.parsed, GrantView)
    check(grant.status == GrantStatus.ACTIVE and grant.fields == ["email"], "an active grant for the e-mail")
    check(grant.expires_at - grant.starts_at == datetime.timedelta(days=90), "a 90-day window")

    # The business reads: the e-mail released, the phone withheld with a code.
    read = subjects_data.sync_detailed(
        relationship.pairwise_id, client=business_client, purpose="marketing", fields="email,phone"
    )
    answer = expect(read.parsed, ReadAnswer)
    check(answer.data.email == "ada@example.org" and isinstance(answer.data.phone, Unset), "only the e-mail")
    check(len(answer.withheld) == 1 and answer.withheld[0].field == "phone", "the phone withheld")
    check(answer.withheld[0].reason == FixedReasonCode.FIELD_NOT_GRANTED, "withheld as field_not_granted")
    check(answer.grant_ids == [grant.grant_id], "the grant relied on")

    # She sees that read in her access log, with a proof of inclusion.
    log = expect(access_log.sync_detailed(client=customer, proofs=True).parsed, AccessLogPage)
    reads = [item for item in log.items if item.audit_index == answer.audit_index]
    check(len(reads) == 1, "the read in her access log")
    logged = reads[0]
    check(logged.role == Role.BUSINESS and logged.decision == Decision.PARTIAL, "a partial read by the business")
    check(logged.business_id == business.business_id and logged.fields == ["email"], "who read what")
    proof = logged.inclusion_proof
    check(not isinstance(proof, Unset) and proof is not None, "an inclusion proof")
    assert not isinstance(proof, Unset) and proof is not None
    leaf = hashlib.sha256(b"\x00" + base64.b64decode(proof.entry)).digest()
    check(len(leaf) == 32 and proof.tree_size > answer.audit_index, "the proof's leaf and tree")

    # Her receipt is typed, and so is the change feed the business follows.
    receipt = expect(grants_receipt.sync_detailed(grant.grant_id, client=customer).parsed, ReceiptAnswer)
    check(receipt.receipt.pii_principal_id == relationship.pairwise_id, "the receipt names her pairwise id")
    check(receipt.receipt.record_type == ReceiptRecordType.GIVEN, "the receipt records the consent given")
    check(receipt.receipt.justification == "Send our monthly offers", "the receipt carries why the business asked")
    check(receipt.later == [], "nothing has ended the consent yet")
    changes = expect(grant_changes.sync_detailed(client=business_client).parsed, ChangesPage)
    check([change.change for change in changes.items] == [GrantChangeKind.CREATED], "the grant in the feed")

    # The auditor reads the log: typed events, the exact bytes, a proof.
    entries = expect(entries_list.sync_detailed(client=auditor_client, kind=EventKind.DATA_READ).parsed, EntriesPage)
    check(any(item.entry.kind == EventKind.DATA_READ for item in entries.items), "the read as a typed event")
    raw = entries_get.sync_detailed(answer.audit_index, client=auditor_client)
    check(raw.status_code == HTTPStatus.OK and raw.content == base64.b64decode(proof.entry), "the exact bytes")
    inclusion = proof_inclusion.sync_detailed(
        client=auditor_client, index=answer.audit_index, tree_size=proof.tree_size
    )
    check(expect(inclusion.parsed, InclusionProof).hashes == proof.hashes, "the auditor's proof is hers")

    # She revokes; the next read is refused, and the refusal is a typed problem.
    revoked = expect(grants_revoke.sync_detailed(grant.grant_id, client=customer).parsed, GrantView)
    check(revoked.status == GrantStatus.REVOKED, "revoked")
    refused = subjects_data.sync_detailed(relationship.pairwise_id, client=business_client, purpose="marketing")
    problem = expect(refused.parsed, Problem)
    check(problem.status == 403 and problem.code == "no_consent", "403 no_consent after the revoke")

    # Declared error statuses come back as problem documents, not exceptions.
    stranger = AuthenticatedClient(base_url=base, token="not-a-token")
    unauthorized = expect(data_get.sync_detailed(client=stranger).parsed, Problem)
    check(unauthorized.status == 401, "401 for a broken token")
    wrong_role = expect(data_get.sync_detailed(client=business_client).parsed, Problem)
    check(wrong_role.status == 403, "403 for another role's token")
    bad = TokenRequest(grant_type=GrantType.PASSWORD, username=customer_id, password="not her password")
    statuses = [expect(token_create.sync_detailed(client=public, body=bad).parsed, Problem).status for _ in range(10)]
    check(statuses[0] == 401 and statuses[-1] == 429, f"401 then 429 for repeated failures, got {statuses}")
    print("generated client: the whole flow ran with typed access")


if __name__ == "__main__":
    main()

"""Attestation-gated leases (issue 15, items 5-7): the ledger grants a model with
``spec.confidential.attestation`` only against a valid, fresh token bound to the asking pod.

Tokens come from a test issuer (keys generated here) shaped like Trustee's EAR; each bad
token is refused with 403 ``AttestationFailed`` naming the claim, counted by reason, and
nothing is debited. A model without attestation is served as before.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from joserfc.jwk import Key
from ledger_helpers import (
    NS,
    PATE,
    Clock,
    FakeReviewer,
    lease_body,
    make_service,
    model_spec,
    seq_id,
)

from attestation_support import (
    EVIDENCE,
    OTHER_MEASUREMENT,
    RUNTIME_DATA_PATH,
    TRUSTEE_TEE_KEY_PATH,
    TestIssuer,
    public_jwk,
    spec,
    tee_keypair,
    with_path,
)
from dpserve.attestation.binding import binding_digest, proof
from dpserve.attestation.keys import MAX_TOKEN_BYTES
from dpserve.attestation.wire import MAX_HEADER_FIELD, PROOF_HEADER, TOKEN_HEADER
from dpserve.ledger.service import LedgerService
from dpserve_testkit.memory_store import MemoryStore

Client = TestClient[Any, Any]
MODEL = "secure"
KEY = f"{NS}/{MODEL}"
POD, OTHER_POD = "secure-0", "secure-1"


def secure_spec(attestation: dict[str, Any]) -> dict[str, Any]:
    wire = model_spec(PATE)
    wire["confidential"] = {"profile": "coco-snp", "required": True, "attestation": attestation}
    return wire


@pytest.fixture
def issuer() -> TestIssuer:
    return TestIssuer()


@pytest.fixture
def store(issuer: TestIssuer) -> MemoryStore:
    from ledger_helpers import budget_spec

    s = MemoryStore()
    s.put_budget(NS, "patients", budget_spec())
    s.put_model(NS, "triage", model_spec(PATE))
    s.put_model(NS, MODEL, secure_spec(spec(jwks=issuer.jwks()).wire()))
    return s


@pytest.fixture
def reviewer(store: MemoryStore) -> FakeReviewer:
    r = FakeReviewer(store=store)
    r.add("tok-triage", "triage", pod="triage-0")
    r.add("tok-0", MODEL, pod=POD)
    r.add("tok-1", MODEL, pod=OTHER_POD)
    return r


@pytest.fixture
def kicks() -> list[tuple[str, str]]:
    return []


@pytest.fixture
def service(store: MemoryStore, reviewer: FakeReviewer, clock: Clock,
            kicks: list[tuple[str, str]]) -> LedgerService:
    svc = make_service(store, reviewer, clock=clock)
    svc.attestation.on_change = lambda ns, name: kicks.append((ns, name))
    return svc


@pytest.fixture
async def client(service: LedgerService) -> AsyncIterator[Client]:
    async with TestClient(TestServer(service.app)) as c:
        yield c


class Pod:
    """A pod in the TEE: its TEE key, a token binding it, proofs per lease request."""

    def __init__(self, issuer: TestIssuer, clock: Clock, name: str = POD,
                 **claims: Any) -> None:
        self.name = name
        self.clock = clock
        self.key: Key = tee_keypair("EC")
        self.token = issuer.sign(self.claims(issuer, **claims))

    def claims(self, issuer: TestIssuer, **claims: Any) -> dict[str, Any]:
        claims.setdefault("now", self.clock.now.timestamp())
        return issuer.claims(tee_pubkey=public_jwk(self.key), **claims)

    def proof(self, lease_id: str, *, pod: str | None = None, key: Key | None = None) -> str:
        pod = pod or self.name
        return proof(key or self.key, model=KEY, pod=pod, lease_id=seq_id(lease_id, pod),
                     now=self.clock.now.timestamp())

    def headers(self, lease_id: str, token: str | None = None) -> dict[str, str]:
        return {TOKEN_HEADER: token or self.token, PROOF_HEADER: self.proof(lease_id)}


async def post(client: Client, token: str, body: dict[str, Any],
               headers: dict[str, str] | None = None) -> tuple[int, Any]:
    response = await client.post(
        "/v1/leases", data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", **(headers or {})})
    return response.status, await response.json()


def secure_body(lease_id: str, pod: str = POD) -> dict[str, Any]:
    return lease_body(lease_id, model=KEY, pod=pod)


def leases(store: MemoryStore) -> list[str]:
    status = store.budget(NS, "patients").get("status") or {}
    return [lease["leaseId"] for lease in status.get("leases", [])]


def failures(service: LedgerService, reason: str) -> float:
    value = service.registry.get_sample_value(
        "ml_enclave_attestation_failure_total", {"model": KEY, "reason": reason})
    return value or 0.0


async def test_a_valid_bound_token_is_granted(
    client: Client, service: LedgerService, store: MemoryStore, issuer: TestIssuer,
    clock: Clock,
) -> None:
    pod = Pod(issuer, clock)
    status, payload = await post(client, "tok-0", secure_body("lease-ok-0001"),
                                 pod.headers("lease-ok-0001"))
    assert status == 200, payload
    assert payload["granted"] >= 1
    assert leases(store) == [seq_id("lease-ok-0001", POD)]
    seen = service.attestation.seen(KEY)
    assert seen.last is not None and seen.last.verdict.ok and seen.last.pod == POD
    # the same token serves the next lease request, with a proof for that lease id
    status, _ = await post(client, "tok-0", secure_body("lease-ok-0002"),
                           pod.headers("lease-ok-0002"))
    assert status == 200
    assert all(failures(service, r) == 0 for r in ("signature", "binding", "missing"))


def _refusal(status: int, payload: Any, claim: str, needle: str) -> None:
    assert status == 403, payload
    assert payload["reason"] == "AttestationFailed", payload
    assert payload["claim"] == claim, payload
    assert payload["message"].startswith(f"{claim}: "), payload
    assert needle in payload["message"], payload


@pytest.mark.parametrize(("case", "reason", "claim", "needle"), [
    ("wrong-signature", "signature", "signature", "does not verify"),
    ("wrong-measurement", "measurement", f"{EVIDENCE}/snp/measurement", "not among"),
    ("expired", "expired", "exp", "expired"),
    ("debug-enabled", "debug", f"{EVIDENCE}/snp/policy_debug_allowed", "debug is enabled"),
    ("not-affirming", "claim", "/submods/cpu0/ear.status", "not among"),
    ("no-token", "missing", "token", "carries no attestation token"),
    ("garbage", "malformed", "token", "not a compact JWS"),
])
async def test_each_bad_token_is_refused_with_its_claim(
    client: Client, service: LedgerService, store: MemoryStore, issuer: TestIssuer,
    clock: Clock, case: str, reason: str, claim: str, needle: str,
) -> None:
    pod = Pod(issuer, clock)
    lease_id = "lease-bad-0001"
    headers = pod.headers(lease_id)
    if case == "wrong-signature":  # signed by someone else's key, same claims
        headers[TOKEN_HEADER] = TestIssuer().sign(pod.claims(issuer))
    elif case == "wrong-measurement":
        headers[TOKEN_HEADER] = issuer.sign(pod.claims(issuer, measurement=OTHER_MEASUREMENT))
    elif case == "expired":  # issued 20 min ago, lived 5 min
        headers[TOKEN_HEADER] = issuer.sign(
            pod.claims(issuer, now=clock.now.timestamp() - 1200, lifetime_s=300))
    elif case == "debug-enabled":
        headers[TOKEN_HEADER] = issuer.sign(pod.claims(issuer, debug=True))
    elif case == "not-affirming":
        headers[TOKEN_HEADER] = issuer.sign(pod.claims(issuer, status="warning"))
    elif case == "no-token":
        del headers[TOKEN_HEADER]
    elif case == "garbage":
        headers[TOKEN_HEADER] = "not.a-token"
    status, payload = await post(client, "tok-0", secure_body(lease_id), headers)
    _refusal(status, payload, claim, needle)
    assert failures(service, reason) == 1
    assert leases(store) == []  # nothing debited
    seen = service.attestation.seen(KEY)
    assert seen.last is not None and seen.last.verdict.reason == reason


async def test_a_token_replayed_by_another_pod_is_refused(
    client: Client, service: LedgerService, store: MemoryStore, issuer: TestIssuer,
    clock: Clock,
) -> None:
    genuine = Pod(issuer, clock)
    thief = Pod(issuer, clock, name=OTHER_POD)  # a pod with its own TEE key, or none
    lease_id = "lease-steal-001"
    copied = {TOKEN_HEADER: genuine.token}
    # 1. the genuine pod's proof, copied along: it names the genuine pod
    status, payload = await post(client, "tok-1", secure_body(lease_id, OTHER_POD),
                                 {**copied, PROOF_HEADER: genuine.proof(lease_id)})
    _refusal(status, payload, TRUSTEE_TEE_KEY_PATH, f"not this request's '{OTHER_POD}'")
    # 2. a proof naming the thief, signed with the thief's key: not the key the token binds
    status, payload = await post(client, "tok-1", secure_body(lease_id, OTHER_POD),
                                 {**copied, PROOF_HEADER: thief.proof(lease_id)})
    _refusal(status, payload, TRUSTEE_TEE_KEY_PATH, "not signed by the TEE key")
    # 3. no proof at all
    status, payload = await post(client, "tok-1", secure_body(lease_id, OTHER_POD), copied)
    _refusal(status, payload, TRUSTEE_TEE_KEY_PATH, "carries no proof")
    # 4. the genuine proof for another lease id is not reusable either
    status, payload = await post(client, "tok-0", secure_body("lease-other-01"),
                                 {**copied, PROOF_HEADER: genuine.proof(lease_id)})
    _refusal(status, payload, TRUSTEE_TEE_KEY_PATH, "leaseId")
    assert failures(service, "binding") == 4
    assert leases(store) == []


async def test_verification_precedes_the_lease_id_replay(
    client: Client, store: MemoryStore, issuer: TestIssuer, clock: Clock,
) -> None:
    """A retry with a granted lease id is verified again: a stale token learns nothing."""
    pod = Pod(issuer, clock)
    status, first = await post(client, "tok-0", secure_body("lease-once-001"),
                               pod.headers("lease-once-001"))
    assert status == 200
    clock.advance(700)  # the token is now older than maxAgeSeconds (600) + skew
    status, payload = await post(client, "tok-0", secure_body("lease-once-001"),
                                 pod.headers("lease-once-001"))
    _refusal(status, payload, "exp", "expired")
    fresh = Pod(issuer, clock)  # a fresh token of the same pod: the replay is answered
    fresh.key = pod.key
    fresh.token = issuer.sign(fresh.claims(issuer))
    status, again = await post(client, "tok-0", secure_body("lease-once-001"),
                               fresh.headers("lease-once-001"))
    assert status == 200 and again["granted"] == first["granted"]
    assert leases(store) == [seq_id("lease-once-001", POD)]


async def test_a_model_without_attestation_is_unchanged(
    client: Client, service: LedgerService, issuer: TestIssuer, clock: Clock,
) -> None:
    status, payload = await post(client, "tok-triage", lease_body("lease-plain-01"))
    assert status == 200, payload
    # headers are not looked at where the spec asks for no attestation
    status, payload = await post(client, "tok-triage", lease_body("lease-plain-02"),
                                 {TOKEN_HEADER: "junk", PROOF_HEADER: "junk"})
    assert status == 200, payload
    assert service.attestation.seen(f"{NS}/triage").last is None


async def test_keys_from_a_configmap_and_an_unusable_key_set(
    client: Client, service: LedgerService, store: MemoryStore, issuer: TestIssuer,
    clock: Clock, kicks: list[tuple[str, str]],
) -> None:
    attestation = spec(jwks="{}").wire()
    attestation["jwks"] = {"configMapKeyRef": {"name": "trustee-keys", "key": "jwks.json"}}
    store.put_model(NS, MODEL, secure_spec(attestation))
    pod = Pod(issuer, clock)
    status, payload = await post(client, "tok-0", secure_body("lease-cm-0001"),
                                 pod.headers("lease-cm-0001"))
    assert status == 503 and payload["reason"] == "Unavailable", payload
    assert payload["message"].startswith(
        "spec.confidential.attestation.jwks.configMapKeyRef: ConfigMap "
        f"{NS}/trustee-keys does not exist")
    assert "does not exist" in (service.attestation.seen(KEY).jwks_problem or "")
    assert kicks == [(NS, MODEL)]
    store.put_config_map(NS, "trustee-keys", {"jwks.json": '{"keys": [{"kty": "oct", "k": "AA"}]}'})
    # an unusable set is never cached: the next request reads the ConfigMap again
    status, payload = await post(client, "tok-0", secure_body("lease-cm-0002"),
                                 pod.headers("lease-cm-0002"))
    assert status == 503 and "symmetric keys are refused" in payload["message"], payload
    store.put_config_map(NS, "trustee-keys", {"jwks.json": issuer.jwks()})
    status, payload = await post(client, "tok-0", secure_body("lease-cm-0003"),
                                 pod.headers("lease-cm-0003"))
    assert status == 200, payload
    seen = service.attestation.seen(KEY)
    assert seen.jwks_problem is None and seen.last is not None and seen.last.verdict.ok
    assert kicks == [(NS, MODEL)] * 3  # on each change, not on each request
    await post(client, "tok-0", secure_body("lease-cm-0004"), pod.headers("lease-cm-0004"))
    assert len(kicks) == 3


async def test_header_sizes_are_bounded_on_the_served_port(
    service: LedgerService, store: MemoryStore, issuer: TestIssuer, clock: Clock,
) -> None:
    """A large genuine EAR (over aiohttp's default 8 KiB field) is accepted; a token over
    MAX_TOKEN_BYTES is refused by the verifier (403), a field beyond MAX_HEADER_FIELD by
    the HTTP parser (400); never a 5xx."""
    pod = Pod(issuer, clock)
    big_claims = with_path(pod.claims(issuer), "/submods/cpu0/ear.veraison.annotated-evidence/"
                           "init_data_claims", {"policy.rego": "x" * 30_000})
    big = issuer.sign(big_claims)
    assert 8 * 1024 < len(big) < MAX_TOKEN_BYTES
    port = await service.start("127.0.0.1", 0)
    url = f"http://127.0.0.1:{port}/v1/leases"
    try:
        async with aiohttp.ClientSession() as session:
            async def send(lease_id: str, token: str) -> tuple[int, str]:
                async with session.post(url, data=json.dumps(secure_body(lease_id)).encode(),
                                        headers={"Authorization": "Bearer tok-0",
                                                 TOKEN_HEADER: token,
                                                 PROOF_HEADER: pod.proof(lease_id)}) as r:
                    return r.status, await r.text()

            status, text = await send("lease-big-0001", big)
            assert status == 200, text
            status, text = await send("lease-big-0002", "a" * (MAX_TOKEN_BYTES + 10))
            assert status == 403 and '"claim": "token"' in text, text
            status, text = await send("lease-big-0003", "a" * (MAX_HEADER_FIELD + 10))
            assert status == 400, text
    finally:
        await service.stop()
    assert leases(store) == [seq_id("lease-big-0001", POD)]


async def test_runtime_data_binding_names_the_pod(
    client: Client, service: LedgerService, store: MemoryStore, issuer: TestIssuer,
    clock: Clock,
) -> None:
    """runtime-data mode: the token carries the digest of model and pod; no proof."""
    attestation = spec(jwks=issuer.jwks(),
                       binding={"mode": "runtime-data", "path": RUNTIME_DATA_PATH}).wire()
    store.put_model(NS, MODEL, secure_spec(attestation))
    now = clock.now.timestamp()
    mine = issuer.token(now=now, runtime_data=binding_digest(KEY, POD))
    status, payload = await post(client, "tok-0", secure_body("lease-rd-0001"),
                                 {TOKEN_HEADER: mine})
    assert status == 200, payload
    # pod 1 presents pod 0's token: the digest names pod 0
    status, payload = await post(client, "tok-1", secure_body("lease-rd-0002", OTHER_POD),
                                 {TOKEN_HEADER: mine})
    _refusal(status, payload, RUNTIME_DATA_PATH, f"not {OTHER_POD!r}")
    assert failures(service, "binding") == 1
    assert leases(store) == [seq_id("lease-rd-0001", POD)]


async def test_an_unattested_pod_learns_nothing_about_the_model(
    client: Client, issuer: TestIssuer, clock: Clock,
) -> None:
    """The token is checked right after the model is read: a wrong version or mechanism
    (whose refusals describe the model) is not even looked at without a valid token."""
    body = secure_body("lease-probe-01")
    body["modelVersion"] = "v9"
    status, payload = await post(client, "tok-0", body)
    assert status == 403 and payload["reason"] == "AttestationFailed", payload
    body["mechanism"] = {"type": "laplace-embedding", "epsilon": "0.5"}
    status, payload = await post(client, "tok-0", body)
    assert status == 403 and payload["reason"] == "AttestationFailed", payload
    pod = Pod(issuer, clock)  # attested: now the ordinary answer
    status, payload = await post(client, "tok-0", body, pod.headers("lease-probe-01"))
    assert status == 409 and payload["reason"] == "VersionMismatch", payload

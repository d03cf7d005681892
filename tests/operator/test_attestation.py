"""Attestation-gated leases end to end (issue 15, items 5-7): the real operator on LocalKube.

A PrivateModel with ``spec.confidential.attestation`` (the verifier's keys in a ConfigMap):
admission refuses the combinations that could never attest; the sidecar's ConfigMap
carries the agent settings; the embedded ledger refuses a lease without a valid token
(403 AttestationFailed, counted in ml_enclave_attestation_failure_total) and grants one
with a valid, bound token; the model's Attested condition follows what the ledger saw.
"""

from __future__ import annotations

import itertools
import json
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

from operator_support import Cluster, budget_body, condition, model_body, wait_until

from attestation_support import TestIssuer, public_jwk, spec, tee_keypair
from dpserve.attestation.binding import proof
from dpserve.attestation.wire import PROOF_HEADER, TOKEN_HEADER
from dpserve.ledger.auth import AUDIENCE, service_account_name
from dpserve.ledger.lease_ids import sequenced_id
from dpserve_testkit.localkube.client import ApiFailure
from pod_support import kube_serving_pod

PATE = {"type": "pate", "teachers": 10, "noiseMultiplier": "40"}


def _attested_model(name: str, attestation: dict[str, Any], **confidential: Any) -> dict[str, Any]:
    body = model_body(name, "b", mechanism=PATE)
    body["spec"]["confidential"] = {"profile": "coco-snp", "required": True,
                                    "attestation": attestation, **confidential}
    return body


def _lease(cluster: Cluster, token: str, ns: str, lease_id: str,
           headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    body = {"leaseId": lease_id, "model": f"{ns}/tee", "modelVersion": "v1", "pod": "pod-0",
            "mechanism": PATE, "requested": 5}
    request = urllib.request.Request(
        cluster.operator.ledger_url + "/v1/leases", data=json.dumps(body).encode(),
        method="POST", headers={"Authorization": f"Bearer {token}",
                                "Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _attested(cluster: Cluster, ns: str) -> dict[str, Any] | None:
    return condition(cluster.api.get(cluster.pm(ns, "tee")), "Attested")


def _failures(cluster: Cluster, ns: str, reason: str) -> float:
    with urllib.request.urlopen(cluster.operator.metrics_url, timeout=10) as resp:
        text = resp.read().decode()
    prefix = f'ml_enclave_attestation_failure_total{{model="{ns}/tee",reason="{reason}"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix):])
    return 0.0


def test_admission_refuses_attestation_that_could_never_pass(cluster: Cluster) -> None:
    api, ns = cluster.api, cluster.namespace()
    attestation = spec(jwks=TestIssuer().jwks()).wire()
    cases = [
        ({"profile": "none", "required": False}, "pod-level TEE profile"),
        ({"profile": "gke-tdx"}, "pod-level TEE profile"),
        ({"required": False}, "attestation needs required: true"),
    ]
    for overrides, needle in cases:
        body = _attested_model("bad", attestation, **overrides)
        try:
            api.create(cluster.pm(ns), body)
        except ApiFailure as exc:
            assert exc.status == 422 and needle in str(exc), exc
        else:
            raise AssertionError(f"{overrides} was admitted")
    free = _attested_model("bad", attestation)
    free["spec"]["serving"]["mechanism"] = {"type": "none"}
    free["spec"]["model"]["training"] = {"noiseMultiplier": "1", "sampleRate": "0.01",
                                         "steps": 10}
    free["spec"]["model"]["format"] = "state-dict"
    try:
        api.create(cluster.pm(ns), free)
    except ApiFailure as exc:
        assert exc.status == 422 and "mechanism none takes no leases" in str(exc), exc
    else:
        raise AssertionError("attestation with mechanism none was admitted")


def test_leases_flow_only_with_a_valid_bound_token(cluster: Cluster) -> None:
    api, ns = cluster.api, cluster.namespace()
    if api.find("/apis/node.k8s.io/v1/runtimeclasses/kata-qemu-snp") is None:
        api.create("/apis/node.k8s.io/v1/runtimeclasses",
                   {"metadata": {"name": "kata-qemu-snp"}, "handler": "kata-qemu-snp"})
    issuer = TestIssuer()
    attestation = spec(jwks="{}").wire()
    attestation["jwks"] = {"configMapKeyRef": {"name": "trustee-keys", "key": "jwks.json"}}
    api.create(cluster.pb(ns), budget_body("b"))
    api.create(cluster.pm(ns), _attested_model("tee", attestation))

    # The key set is missing: the condition names it before any pod asks.
    missing = wait_until(lambda: (c := _attested(cluster, ns)) and c["reason"] == "InvalidJwks"
                         and c, what="Attested InvalidJwks")
    assert missing["status"] == "False" and "trustee-keys does not exist" in missing["message"]
    api.create(f"/api/v1/namespaces/{ns}/configmaps",
               {"metadata": {"name": "trustee-keys"}, "data": {"jwks.json": issuer.jwks()}})
    api.merge(cluster.pm(ns, "tee"), {"metadata": {"labels": {"touch": "1"}}})
    wait_until(lambda: (c := _attested(cluster, ns)) and c["reason"] == "NoTokenYet" and c,
               what="Attested NoTokenYet once the keys exist")

    # The sidecar is told where its token comes from.
    config = json.loads(api.get(cluster.path(ns, "configmaps", "tee-filter"))
                        ["data"]["filter.json"])
    assert config["attestation"]["agent"]["url"] == "http://127.0.0.1:8006/aa/token?token_type=kbs"
    assert config["attestation"]["binding"]["mode"] == "tee-key"
    assert config["attestation"]["maxAgeSeconds"] == 600

    token = f"token-{uuid.uuid4().hex}"
    cluster.server.call(lambda kube: kube.tokens.register(
        token, namespace=ns, service_account=service_account_name("tee"), pod_name="pod-0",
        pod_uid=kube_serving_pod(kube, "tee", "pod-0", namespace=ns),  # a serving pod
        audiences=[AUDIENCE]))
    # No attestation: refused, counted, surfaced.
    code, body = _lease(cluster, token, ns, sequenced_id("pod-0", None, 1), {})
    assert code == 403 and body["reason"] == "AttestationFailed" and body["claim"] == "token"
    failed = wait_until(lambda: (c := _attested(cluster, ns)) and c["status"] == "False"
                        and c["reason"] == "AttestationFailed" and c, what="Attested False")
    assert "carries no attestation token" in failed["message"]
    assert _failures(cluster, ns, "missing") == 1
    cluster.wait_event(ns, "tee", "AttestationFailed")

    # A debug-enabled TEE: refused with the claim.
    key = tee_keypair("EC")
    bad = issuer.token(tee_pubkey=public_jwk(key), debug=True)
    lease_id = sequenced_id("pod-0", None, 2)
    code, body = _lease(cluster, token, ns, lease_id, {
        TOKEN_HEADER: bad, PROOF_HEADER: proof(key, model=f"{ns}/tee", pod="pod-0",
                                               lease_id=lease_id, now=time.time())})
    assert code == 403 and body["message"].endswith("debug is enabled"), body
    assert _failures(cluster, ns, "debug") == 1

    # A valid token bound to this pod: granted, and the model says Attested.
    good = issuer.token(tee_pubkey=public_jwk(key))
    lease_id = sequenced_id("pod-0", None, 3)
    code, body = _lease(cluster, token, ns, lease_id, {
        TOKEN_HEADER: good, PROOF_HEADER: proof(key, model=f"{ns}/tee", pod="pod-0",
                                                lease_id=lease_id, now=time.time())})
    assert code == 200 and body["granted"] >= 1, body
    verified = wait_until(lambda: (c := _attested(cluster, ns)) and c["status"] == "True"
                          and c, what="Attested True")
    assert verified["reason"] == "TokenVerified" and "pod-0" in verified["message"]

    # Attestation removed: the condition goes, the sidecar config loses it, leases need none.
    api.merge(cluster.pm(ns, "tee"), {"spec": {"confidential": {"attestation": None}}})
    wait_until(lambda: _attested(cluster, ns) is None, what="Attested removed")
    wait_until(lambda: "attestation" not in json.loads(api.get(cluster.path(
        ns, "configmaps", "tee-filter"))["data"]["filter.json"]), what="config without it")
    later = itertools.count(4)  # each try a new lease of the pod
    # The ledger follows the spec within its model cache time (DPSERVE_LEDGER_MODEL_CACHE_S).
    wait_until(lambda: _lease(cluster, token, ns, sequenced_id("pod-0", None, next(later)),
                              {})[0] == 200,
               what="leases without attestation once the spec says so")

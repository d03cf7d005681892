"""KubeStore and KubeTokenReviewer against the LocalKube API server over HTTP."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client, config
from ledger_helpers import NS, PATE, budget_spec, kube_serving_pod, lease_body, model_spec, seq_id
from prometheus_client import CollectorRegistry

from dpserve.ledger.auth import AUDIENCE, CachingReviewer, Identity, KubeTokenReviewer, authorize
from dpserve.ledger.service import LeaseFailure, LedgerService
from dpserve.ledger.settings import LedgerSettings
from dpserve.ledger.state import BudgetEvent
from dpserve.ledger.store import Conflict, KubeStore, NotFound, Unavailable
from dpserve_testkit.localkube import LocalKube, serving


@pytest.fixture
async def kube(tmp_path: Path) -> AsyncIterator[tuple[LocalKube, client.ApiClient]]:
    kubeconfig = tmp_path / "kubeconfig"
    async with serving(kubeconfig=kubeconfig) as (emulator, _url):
        emulator.store.create(emulator.kind("v1", "namespaces"), None, {"metadata": {"name": NS}})
        pb = emulator.kind("dpserve.io/v1alpha1", "privacybudgets")
        emulator.store.create(pb, NS, {"metadata": {"name": "patients"}, "spec": budget_spec()})
        pm = emulator.kind("dpserve.io/v1alpha1", "privatemodels")
        emulator.store.create(pm, NS, {"metadata": {"name": "triage"}, "spec": model_spec(PATE)})
        configuration = client.Configuration()
        await config.load_kube_config(
            config_file=str(kubeconfig), client_configuration=configuration
        )
        async with client.ApiClient(configuration=configuration) as api:
            yield emulator, api


async def test_status_write_with_a_stale_resource_version_conflicts(
    kube: tuple[LocalKube, client.ApiClient],
) -> None:
    _, api = kube
    store = KubeStore(api)
    obj = await store.get_budget(NS, "patients")
    written = await store.replace_budget_status(
        NS, "patients", {**obj, "status": {"epsilonSpent": "1"}}
    )
    assert written["status"]["epsilonSpent"] == "1"
    assert written["metadata"]["resourceVersion"] != obj["metadata"]["resourceVersion"]
    with pytest.raises(Conflict):
        await store.replace_budget_status(NS, "patients", {**obj, "status": {"epsilonSpent": "2"}})
    with pytest.raises(NotFound):
        await store.get_budget(NS, "nope")
    with pytest.raises(NotFound):
        await store.get_model(NS, "nope")
    await store.ping()
    await store.emit_event(NS, written, BudgetEvent("Warning", "BudgetExhausted", "done"))


async def test_unreachable_api_is_unavailable() -> None:
    configuration = client.Configuration()
    configuration.host = "http://127.0.0.1:9"  # discard port: nothing listens
    async with client.ApiClient(configuration=configuration) as api:
        store = KubeStore(api, timeout_s=2)
        with pytest.raises(Unavailable):
            await store.get_budget(NS, "patients")
        with pytest.raises(Unavailable):
            await store.ping()
        with pytest.raises(Unavailable):
            await KubeTokenReviewer(api, timeout_s=2).review("x")


async def test_token_review(kube: tuple[LocalKube, client.ApiClient]) -> None:
    emulator, api = kube
    emulator.tokens.register(
        "good",
        namespace=NS,
        service_account="triage-dpserve",
        pod_name="triage-0",
        audiences=[AUDIENCE],
    )
    emulator.tokens.register(
        "elsewhere",
        namespace=NS,
        service_account="triage-dpserve",
        audiences=["some-other-service"],
    )
    reviewer = KubeTokenReviewer(api)
    identity = await reviewer.review("good")
    assert identity == Identity(
        username=f"system:serviceaccount:{NS}:triage-dpserve",
        uid=identity.uid if identity else None,
        pod_name="triage-0",
        pod_uid=emulator.tokens.authenticate("good", AUDIENCE).pod_uid,  # type: ignore[union-attr]
    )
    assert identity is not None and identity.pod_uid is not None
    assert identity is not None
    authorize(identity, NS, "triage", "triage-0")
    assert await reviewer.review("bad") is None
    assert await reviewer.review("elsewhere") is None  # a token for another audience


async def test_caching_reviewer_expires_and_never_caches_failures() -> None:
    calls: list[str] = []
    now = [0.0]

    class Inner:
        async def review(self, token: str) -> Identity | None:
            calls.append(token)
            return Identity("system:serviceaccount:a:b") if token == "ok" else None

    cached = CachingReviewer(Inner(), ttl_s=30, clock=lambda: now[0])
    for _ in range(3):
        assert await cached.review("ok") is not None
        assert await cached.review("no") is None
    assert calls == ["ok", "no", "no", "no"]
    now[0] = 31
    await cached.review("ok")
    assert calls[-1] == "ok" and len(calls) == 5


async def test_service_end_to_end_on_the_api_server(
    kube: tuple[LocalKube, client.ApiClient],
) -> None:
    emulator, api = kube
    emulator.tokens.register(
        "tok",
        namespace=NS,
        service_account="triage-dpserve",
        pod_name="triage-0",
        pod_uid=kube_serving_pod(emulator, "triage", "triage-0", namespace=NS),
        audiences=[AUDIENCE],
    )
    store = KubeStore(api)
    service = LedgerService(
        store, KubeTokenReviewer(api), settings=LedgerSettings(), registry=CollectorRegistry()
    )
    grant = await service.lease(json.dumps(lease_body()).encode(), "Bearer tok")
    assert grant.granted == 1
    again = await service.lease(json.dumps(lease_body()).encode(), "Bearer tok")
    assert again == grant
    status: dict[str, Any] = (await store.get_budget(NS, "patients"))["status"]
    assert status["ledger"][0]["count"] == 1
    assert status["leases"][0]["leaseId"] == seq_id("lease-0001")
    with pytest.raises(LeaseFailure) as info:
        await service.lease(json.dumps(lease_body("lease-0002")).encode(), "Bearer nope")
    assert info.value.http_status == 401
    recomputed = await service.recompute(NS, "patients")
    assert recomputed.epsilon_spent == status["epsilonSpent"]

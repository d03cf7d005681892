"""Leases are charged to the budget of the model version the requesting pod serves.

After a retrain the model moves from v1 on budget ``patients`` to v2 on ``patients-v2``; the
old v1 pods keep serving during the rollout and must keep spending ``patients`` (v1's
dataset), never ``patients-v2``.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from ledger_helpers import (
    NS,
    PATE,
    FakeReviewer,
    budget_spec,
    lease_body,
    make_service,
    model_spec,
    seq_id,
)

from dpserve.api.lease import LeaseError, LeaseGrant
from dpserve.ledger.service import LedgerService
from dpserve_testkit.memory_store import MemoryStore

Client = TestClient[Any, Any]
V1_POD = {"Authorization": "Bearer tok-triage"}  # pod triage-0
V2_POD = {"Authorization": "Bearer tok-triage-v2"}  # pod triage-v2-0
B1, B2 = "patients", "patients-v2"
TRAINING = {"noiseMultiplier": "1.1", "sampleRate": "0.01", "steps": 1000}


def rolled_status(versions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The model's status after the retrain of v1 (on B1) into v2 (on B2)."""
    return {
        "modelVersion": "v2",
        "budget": B2,
        "artifact": "pvc://models/m/v2",
        "versions": versions
        if versions is not None
        else [{"version": "v1", "budget": B1, "artifact": "pvc://models/m/v1"}],
    }


def roll(store: MemoryStore, spec: dict[str, Any] | None = None) -> None:
    store.put_budget(NS, B2, budget_spec())
    store.put_model(NS, "triage", spec or model_spec(PATE), rolled_status())


async def lease(
    client: Client, version: str, *, lease_id: str, v2_pod: bool = False, requested: int = 10
) -> tuple[int, Any]:
    body = lease_body(
        lease_id,
        pod="triage-v2-0" if v2_pod else "triage-0",
        version=version,
        requested=requested,
    )
    response = await client.post(
        "/v1/leases", data=json.dumps(body).encode(), headers=V2_POD if v2_pod else V1_POD
    )
    return response.status, await response.json()


def query_entries(store: MemoryStore, budget: str) -> list[tuple[str, int]]:
    status = store.budget(NS, budget).get("status") or {}
    entries = status.get("ledger", [])
    return [(e["modelVersion"], e["count"]) for e in entries if e["kind"] == "query"]


def ledger(store: MemoryStore, budget: str) -> list[dict[str, Any]]:
    return list((store.budget(NS, budget).get("status") or {}).get("ledger", []))


def make_client(store: MemoryStore, reviewer: FakeReviewer, **settings: Any) -> Client:
    reviewer.add("tok-triage-v2", "triage", pod="triage-v2-0")
    service: LedgerService = make_service(store, reviewer, **settings)
    return TestClient(TestServer(service.app))


async def test_old_pods_spend_their_own_budget_after_the_roll(
    store: MemoryStore, reviewer: FakeReviewer
) -> None:
    roll(store)
    async with make_client(store, reviewer) as client:
        code, v1 = await lease(client, "v1", lease_id="lease-v1-0001")
        assert code == 200, v1
        code, v2 = await lease(client, "v2", lease_id="lease-v2-0001", v2_pod=True)
        assert code == 200, v2
    assert query_entries(store, B1) == [("v1", v1["granted"])]
    assert query_entries(store, B2) == [("v2", v2["granted"])]
    records = {r["leaseId"]: r["modelVersion"] for r in store.budget(NS, B1)["status"]["leases"]}
    assert records == {seq_id("lease-v1-0001"): "v1"}
    # Each grant reports the numbers of the budget it was charged to.
    assert v1["epsilonSpent"] == float(store.budget(NS, B1)["status"]["epsilonSpent"])
    assert v2["epsilonSpent"] == float(store.budget(NS, B2)["status"]["epsilonSpent"])


async def test_exhausted_old_budget_refuses_and_never_spills_into_the_new_one(
    store: MemoryStore, reviewer: FakeReviewer
) -> None:
    store.put_budget(NS, B1, budget_spec("0.5"))  # a few pate queries
    async with make_client(store, reviewer, model_cache_s=0) as client:
        granted = 0
        for attempt in range(200):  # v1 drains B1 while it is the current version
            code, answer = await lease(client, "v1", lease_id=f"lease-drain-{attempt:04d}")
            if code == 429:
                break
            assert code == 200, answer
            granted += answer["granted"]
        else:
            raise AssertionError("B1 never ran out")
        assert granted >= 1
        roll(store)  # the retrain's status: v2 on B2, v1 retired on B1

        code, answer = await lease(client, "v1", lease_id="lease-after-roll-0001")
        refusal = LeaseError.model_validate(answer)
        assert code == 429 and refusal.reason == "BudgetExhausted"
        assert refusal.epsilon_remaining is not None and refusal.epsilon_remaining < 0.5
        assert query_entries(store, B1) == [("v1", granted)]
        assert "status" not in store.budget(NS, B2)  # nothing charged to B2, nothing written

        code, answer = await lease(client, "v2", lease_id="lease-v2-0001", v2_pod=True)
        assert code == 200, answer
        assert query_entries(store, B2) == [("v2", LeaseGrant.model_validate(answer).granted)]
        assert query_entries(store, B1) == [("v1", granted)]


async def test_unknown_version_is_refused_without_a_write(
    store: MemoryStore, reviewer: FakeReviewer
) -> None:
    roll(store)
    async with make_client(store, reviewer) as client:
        writes = store.status_writes
        for version in ("v3", "v0"):
            code, answer = await lease(client, version, lease_id=f"lease-{version}-0001")
            refusal = LeaseError.model_validate(answer)
            assert (code, refusal.reason) == (409, "VersionMismatch")
            assert refusal.message.startswith("modelVersion") and version in refusal.message
        assert store.status_writes == writes
        for bad in ("2", "V2", "v2-rc1"):
            code, answer = await lease(client, bad, lease_id="lease-bad-0001")
            assert (code, answer["reason"]) == (400, "BadRequest")
            assert answer["message"].startswith("modelVersion")
        body = lease_body("lease-none-0001")
        del body["modelVersion"]
        response = await client.post("/v1/leases", data=json.dumps(body).encode(), headers=V1_POD)
        missing = await response.json()
        assert response.status == 400 and missing["message"].startswith("modelVersion")
        metrics = await (await client.get("/metrics")).text()
        assert 'dpserve_lease_refusals_total{reason="VersionMismatch"} 2.0' in metrics


async def test_a_model_without_retired_versions_knows_only_its_current_one(
    store: MemoryStore, reviewer: FakeReviewer
) -> None:
    async with make_client(store, reviewer) as client:
        assert (await lease(client, "v1", lease_id="lease-v1-0001"))[0] == 200
        code, answer = await lease(client, "v2", lease_id="lease-v2-0001", v2_pod=True)
        assert (code, answer["reason"]) == (409, "VersionMismatch")
    assert query_entries(store, B1) == [("v1", 1)]


async def test_a_stale_cached_model_is_reread_before_refusing_a_new_version(
    store: MemoryStore, reviewer: FakeReviewer
) -> None:
    async with make_client(store, reviewer, model_cache_s=3600) as client:
        assert (await lease(client, "v1", lease_id="lease-v1-0001"))[0] == 200  # cached: v1
        roll(store)
        code, answer = await lease(client, "v2", lease_id="lease-v2-0001", v2_pod=True)
        assert code == 200, answer
        # The fresh read also serves the old pods: v1 stays on B1.
        assert (await lease(client, "v1", lease_id="lease-v1-0002"))[0] == 200
    assert [v for v, _ in query_entries(store, B1)] == ["v1"]
    assert query_entries(store, B2) == [("v2", answer["granted"])]


async def test_declared_training_of_v1_stays_on_v1s_budget(
    store: MemoryStore, reviewer: FakeReviewer
) -> None:
    spec = model_spec(PATE, training=TRAINING)  # spec.model.version v1, declared run
    roll(store, spec)
    async with make_client(store, reviewer) as client:
        assert (await lease(client, "v2", lease_id="lease-v2-0001", v2_pod=True))[0] == 200
        assert [(e["kind"], e["modelVersion"]) for e in ledger(store, B2)] == [("query", "v2")]
        # The first v1 lease charges v1's declared run, to v1's budget.
        assert (await lease(client, "v1", lease_id="lease-v1-0001"))[0] == 200
    assert sorted((e["kind"], e["modelVersion"]) for e in ledger(store, B1)) == [
        ("query", "v1"),
        ("training", "v1"),
    ]
    assert [(e["kind"], e["modelVersion"]) for e in ledger(store, B2)] == [("query", "v2")]


async def test_a_malformed_version_record_is_not_charged(
    store: MemoryStore, reviewer: FakeReviewer
) -> None:
    # A record that names no budget cannot say whose dataset v1 reads: refuse, never guess.
    store.put_budget(NS, B2, budget_spec())
    store.put_model(
        NS,
        "triage",
        model_spec(PATE),
        rolled_status([{"version": "v1", "artifact": "pvc://models/m/v1"}]),
    )
    async with make_client(store, reviewer) as client:
        code, answer = await lease(client, "v1", lease_id="lease-v1-0001")
    assert (code, answer["reason"]) == (409, "VersionMismatch")
    assert "status" not in store.budget(NS, B1) and "status" not in store.budget(NS, B2)

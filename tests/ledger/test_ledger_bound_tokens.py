"""Only a token bound to a pod may lease, and only for that pod (issue 13, item 10).

An unbound ServiceAccount token could name any pod: one caller inventing pod names grew a
budget's lease records without bound. The TokenReview's pod name is now required.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp.test_utils import TestClient
from ledger_helpers import NS, FakeReviewer, lease_body

from dpserve.api.lease import LeaseError
from dpserve.ledger.settings import LedgerSettings
from dpserve_testkit.memory_store import MemoryStore

Client = TestClient[Any, Any]


async def _post(client: Client, token: str, body: dict[str, Any]) -> tuple[int, Any]:
    response = await client.post("/v1/leases", data=json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {token}"})
    return response.status, await response.json()


def _leases(store: MemoryStore) -> list[Any]:
    return list((store.budget(NS, "patients").get("status") or {}).get("leases", []))


async def test_an_unbound_token_is_refused_whatever_pod_it_names(
    client: Client, reviewer: FakeReviewer, store: MemoryStore
) -> None:
    reviewer.add("tok-unbound", "triage")  # the model's ServiceAccount, no pod
    for index in range(5):
        status, payload = await _post(
            client, "tok-unbound", lease_body(f"lease-invent-{index:04d}", pod=f"made-up-{index}")
        )
        assert status == 403, payload
        error = LeaseError.model_validate(payload)
        assert error.reason == "Forbidden"
        assert error.message.startswith("Authorization: the token is not bound to a pod")
    assert _leases(store) == []


async def test_a_bound_token_leases_only_for_its_own_pod(
    client: Client, store: MemoryStore
) -> None:
    status, payload = await _post(client, "tok-triage", lease_body("lease-other-0001",
                                                                   pod="triage-1"))
    assert status == 403 and payload["message"].startswith("pod:"), payload
    status, _ = await _post(client, "tok-triage", lease_body("lease-own-0001", pod="triage-0"))
    assert status == 200
    assert [lease["pod"] for lease in _leases(store)] == ["triage-0"]


def test_one_lease_lifetime_everywhere() -> None:
    """LeasePolicy, the environment's default and docs/ledger.md say the same 300 s."""
    from pathlib import Path

    from dpserve.ledger.limits import DEFAULT_LEASE_TTL_S, LeasePolicy

    assert LeasePolicy().ttl.total_seconds() == DEFAULT_LEASE_TTL_S == 300.0
    assert LedgerSettings.from_env({}).policy.ttl.total_seconds() == DEFAULT_LEASE_TTL_S
    docs = (Path(__file__).parents[2] / "docs" / "ledger.md").read_text()
    assert "`DPSERVE_LEDGER_LEASE_TTL_S`, default 300 s" in docs


async def test_concurrent_pods_of_a_model_share_one_model_read(
    store: MemoryStore, reviewer: FakeReviewer
) -> None:
    """A cold start (or an expired cache) is one PrivateModel read, not one per pod."""
    import asyncio

    from ledger_helpers import make_service

    service = make_service(store, reviewer)
    reads: list[str] = []
    inner = store.get_model

    async def counted(namespace: str, name: str) -> Any:
        reads.append(name)
        return await inner(namespace, name)

    store.get_model = counted  # type: ignore[method-assign]
    for index in range(8):
        reviewer.add(f"tok-p{index}", "triage", pod=f"triage-{index}")
    bodies = [json.dumps(lease_body(f"lease-cold-{i:04d}", pod=f"triage-{i}")).encode()
              for i in range(8)]
    grants = await asyncio.gather(*(service.lease(body, f"Bearer tok-p{i}")
                                    for i, body in enumerate(bodies)))
    assert len(grants) == 8
    assert reads == ["triage"]

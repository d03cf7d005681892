"""Recorded spend is monotone: a status that lost spend is restored before any grant.

(issue 12, item 7) ``kubectl patch --subresource=status`` can empty ``status.ledger``; the
ledger keeps the evidence of what it wrote in its own memory and never grants from less.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from ledger_helpers import (
    NS,
    T0,
    Clock,
    FakeReviewer,
    budget_spec,
    lease_body,
    make_service,
    seq_id,
    spec,
)

from dpserve.api.privacybudget import PrivacyBudgetStatus
from dpserve.ledger import state
from dpserve.ledger.accountant import LedgerAccounting
from dpserve_testkit.memory_store import MemoryStore

Client = TestClient[Any, Any]
AUTH = {"Authorization": "Bearer tok-triage"}


async def _grant(client: Client, lease_id: str) -> dict[str, Any]:
    response = await client.post("/v1/leases", data=json.dumps(lease_body(lease_id)).encode(),
                                 headers=AUTH)
    assert response.status == 200, await response.text()
    answer: dict[str, Any] = await response.json()
    return answer


def _queries(store: MemoryStore) -> int:
    status = store.budget(NS, "patients").get("status") or {}
    return sum(e["count"] for e in status.get("ledger", []) if e["kind"] == "query")


async def test_an_emptied_ledger_is_restored_before_the_next_grant(
    client: Client, store: MemoryStore,
) -> None:
    for i in range(3):
        await _grant(client, f"lease-000{i}")
    before = store.budget(NS, "patients")["status"]
    counted = _queries(store)
    assert counted >= 3
    # kubectl patch --subresource=status: the ledger and lease records emptied.
    store.put_budget(NS, "patients", budget_spec(),
                     status={**before, "ledger": [], "leases": [], "epsilonSpent": "0"})
    answer = await _grant(client, "lease-after-1")
    after = store.budget(NS, "patients")["status"]
    assert _queries(store) == counted + answer["granted"]  # restored, then charged
    assert float(after["epsilonSpent"]) > float(before["epsilonSpent"])
    assert {lease["leaseId"] for lease in after["leases"]} >= {seq_id("lease-0002"),
                                                              seq_id("lease-after-1")}
    restored = [e for _, _, e in store.events if e.reason == "RecordedSpendRestored"]
    assert len(restored) == 1 and restored[0].type == "Warning"
    assert "count 0 <" in restored[0].message
    # A retry of a lease recorded before the tampering is not granted twice.
    again = await _grant(client, "lease-0002")
    assert _queries(store) == counted + answer["granted"]
    assert again["granted"] >= 1


async def test_more_spend_than_the_evidence_is_not_a_loss(
    client: Client, store: MemoryStore,
) -> None:
    await _grant(client, "lease-0000")
    status = store.budget(NS, "patients")["status"]
    grown = [{**e, "count": e["count"] + 5} for e in status["ledger"]]
    store.put_budget(NS, "patients", budget_spec(), status={**status, "ledger": grown})
    await _grant(client, "lease-0001")
    assert not [e for _, _, e in store.events if e.reason == "RecordedSpendRestored"]


def test_lost_and_restored_spend_are_pure() -> None:
    accounting = LedgerAccounting()
    wire = {"ledger": [
        {"consumer": f"{NS}/triage", "modelVersion": "v1", "kind": "query", "count": 7,
         "mechanism": {"type": "gaussian", "noiseMultiplier": "100", "clipNorm": "1",
                       "sensitivity": "1"}},
        {"consumer": f"{NS}/triage", "modelVersion": "v1", "kind": "training", "count": 1,
         "training": {"noiseMultiplier": "1.1", "sampleRate": "0.01", "steps": 100}}]}
    evidence = PrivacyBudgetStatus.model_validate(wire)
    assert state.lost_spend(evidence, evidence) == []
    fewer = PrivacyBudgetStatus.model_validate(
        {"ledger": [{**wire["ledger"][0], "count": 3}]})
    lost = state.lost_spend(evidence, fewer)
    assert lost == [f"{NS}/triage v1 gaussian: count 3 < 7",
                    f"{NS}/triage v1 training: count 0 < 1"]
    restored = state.restore_spend(spec(), 1, evidence, fewer, T0, accounting=accounting)
    assert state.lost_spend(evidence, restored.status) == []
    assert [e.count for e in restored.status.ledger] == [7, 1]
    assert restored.status.epsilon_spent is not None


async def test_after_a_restart_a_status_below_the_watermark_is_refused(
    client: Client, store: MemoryStore, reviewer: FakeReviewer, clock: Clock,
) -> None:
    for i in range(3):
        await _grant(client, f"lease-000{i}")
    raw = store.budget(NS, "patients")
    mark = raw["metadata"]["annotations"][state.WATERMARK_ANNOTATION]
    assert json.loads(mark)["count"] >= 1  # raised by the first write
    store.put_budget(NS, "patients", budget_spec(), status={**raw["status"], "ledger": []})

    # A new process (operator restart) holds no evidence: the watermark refuses the status.
    restarted = make_service(store, reviewer, clock=clock)
    async with TestClient(TestServer(restarted.app)) as fresh:
        for _ in range(2):
            response = await fresh.post(
                "/v1/leases", data=json.dumps(lease_body("lease-new-1")).encode(),
                headers=AUTH)
            assert response.status == 503
            assert "lost recorded spend" in (await response.json())["message"]
        lost = [e for _, _, e in store.events if e.reason == "RecordedSpendLost"]
        assert len(lost) == 1 and lost[0].type == "Warning"  # once, not per request
        assert _queries(store) == 0  # nothing granted from it
        # A human accepts the status as it is by removing the annotation.
        store.objects[("privacybudgets", NS, "patients")]["metadata"]["annotations"].pop(
            state.WATERMARK_ANNOTATION)
        response = await fresh.post(
            "/v1/leases", data=json.dumps(lease_body("lease-new-2")).encode(), headers=AUTH)
        assert response.status == 200


def test_watermark_is_pure() -> None:
    status = PrivacyBudgetStatus.model_validate({"ledger": [
        {"consumer": f"{NS}/triage", "modelVersion": "v1", "kind": "query", "count": 7,
         "mechanism": {"type": "pate", "teachers": 50, "noiseMultiplier": "40"}}]})
    mark = state.format_watermark(state.watermark(status))
    assert mark == '{"count":7,"entries":1}'
    assert state.below_watermark(status, mark) is None
    assert state.below_watermark(status, None) is None
    assert state.below_watermark(None, mark) is not None
    assert "not readable" in (state.below_watermark(status, "garbage") or "")

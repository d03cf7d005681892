"""The sidecar's lease client against the real ledger: sequenced ids (issue 13, item 10).

The client forms ``s<sequence>-<tag>`` ids per (pod, partition) pool, a restarted sidecar
whose wall clock is behind its earlier run moves above the ledger's high-water mark (409
LeaseIdUsed), and a retry after a lost reply keeps its id and is charged once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from ledger_helpers import NS, PATE, FakeReviewer, make_service
from prometheus_client import CollectorRegistry

from dpserve.api.filterconfig import LeaseSettings
from dpserve.api.mechanism import Mechanism
from dpserve.ledger.lease_ids import parse, pool_tag
from dpserve.ledger.service import LedgerService
from dpserve_runtime.filter.lease_client import LeaseClient
from dpserve_runtime.filter.metrics import FilterMetrics
from dpserve_testkit.memory_store import MemoryStore

POD = "triage-0"


@pytest.fixture
async def ledger_url(service: LedgerService) -> AsyncIterator[str]:
    server = TestServer(service.app, host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url(""))
    await server.close()


@pytest.fixture
def service(store: MemoryStore, reviewer: FakeReviewer) -> LedgerService:
    # The real clock: the client checks expiresAt against its own wall clock.
    return make_service(store, reviewer)


def _client(session: aiohttp.ClientSession, url: str, tmp_path: Path, *, wall_us: int,
            metrics: FilterMetrics | None = None) -> LeaseClient:
    token = tmp_path / "token"
    token.write_text("tok-triage\n")
    return LeaseClient(
        session=session, ledger_url=url, model=f"{NS}/triage", model_version="v1", pod=POD,
        mechanism=Mechanism.model_validate(PATE), token_path=token, metrics=metrics,
        settings=LeaseSettings(initial_size=4, max_size=4, prefetch_fraction=0.01),
        wall_ns=lambda: wall_us * 1000,
    )


def _status(store: MemoryStore) -> dict[str, Any]:
    return dict(store.budget(NS, "patients").get("status") or {})


def _sequences(store: MemoryStore) -> list[int]:
    out = []
    for record in _status(store).get("leases", []):
        parsed = parse(record["leaseId"])
        assert parsed is not None, record["leaseId"]
        assert parsed.tag == pool_tag(POD, None)
        out.append(parsed.sequence)
    return sorted(out)


def _charged(store: MemoryStore) -> int:
    return sum(entry["count"] for entry in _status(store).get("ledger", []))


def _metrics() -> tuple[FilterMetrics, CollectorRegistry]:
    registry = CollectorRegistry()
    return FilterMetrics(model_id=f"{NS}/triage", registry=registry), registry


def _count(registry: CollectorRegistry, result: str) -> int:
    value = registry.get_sample_value("dpserve_lease_requests_total", {
        "model_id": f"{NS}/triage", "user_group": "default", "result": result})
    return int(value or 0)


def _granted_queries(registry: CollectorRegistry) -> int:
    value = registry.get_sample_value("dpserve_lease_granted_queries_total", {
        "model_id": f"{NS}/triage", "user_group": "default"})
    return int(value or 0)


async def test_ids_are_sequenced_and_rise_with_each_lease(
    ledger_url: str, store: MemoryStore, tmp_path: Path
) -> None:
    metrics, registry = _metrics()
    async with aiohttp.ClientSession() as session:
        client = _client(session, ledger_url, tmp_path, wall_us=10**15, metrics=metrics)
        for _ in range(3):
            client.settle(await client.reserve(3), 3)
        await client.close()
    leases = _count(registry, "granted")
    assert leases >= 3
    # The fake wall clock stands still: each new id is the last one plus one. The status
    # keeps the pod's two latest.
    assert _sequences(store) == [10**15 + leases - 2, 10**15 + leases - 1]
    assert _charged(store) == _granted_queries(registry)


async def test_a_restarted_sidecar_behind_the_clock_moves_above_the_high_water_mark(
    ledger_url: str, store: MemoryStore, tmp_path: Path
) -> None:
    async with aiohttp.ClientSession() as session:
        first_metrics, first_registry = _metrics()
        first = _client(session, ledger_url, tmp_path, wall_us=5 * 10**15,
                        metrics=first_metrics)
        first.settle(await first.reserve(1), 1)
        await first.close()
        mark = max(_sequences(store))
        assert mark == 5 * 10**15
        # The pod's sidecar restarts (nothing remembered) on a clock an hour behind.
        metrics, registry = _metrics()
        second = _client(session, ledger_url, tmp_path, wall_us=5 * 10**15 - 3600 * 10**6,
                         metrics=metrics)
        second.settle(await second.reserve(1), 1)
        await second.close()
    assert _count(registry, "reused") == 1  # its first id was below the mark: refused
    assert _sequences(store) == [mark, mark + 1]
    # Every lease charged once; the refused id charged nothing.
    assert _charged(store) == _granted_queries(first_registry) + _granted_queries(registry)


async def test_a_lost_reply_is_retried_with_the_same_id_and_charged_once(
    ledger_url: str, store: MemoryStore, tmp_path: Path
) -> None:
    store.lost_replies = 1  # the grant is persisted, its answer lost: the client retries
    metrics, registry = _metrics()
    async with aiohttp.ClientSession() as session:
        client = _client(session, ledger_url, tmp_path, wall_us=7 * 10**15, metrics=metrics)
        client.settle(await client.reserve(1), 1)
        await client.close()
    assert _count(registry, "unavailable") == 1 and _count(registry, "granted") == 1
    assert _sequences(store) == [7 * 10**15]  # the retry kept the id
    assert _charged(store) == _granted_queries(registry)  # and was not charged again

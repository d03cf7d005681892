"""Fixtures of the ledger tests (helpers live in ledger_helpers.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from ledger_helpers import (
    LAPLACE,
    NS,
    PATE,
    Clock,
    FakeReviewer,
    budget_spec,
    make_service,
    model_spec,
    reset_lease_pools,
)

from dpserve.ledger.accountant import LedgerAccounting
from dpserve.ledger.service import LedgerService
from dpserve_testkit.memory_store import MemoryStore


@pytest.fixture(autouse=True)
def _fresh_lease_pools() -> None:
    reset_lease_pools()  # each test's sidecars start their lease sequences afresh


@pytest.fixture
def accounting() -> LedgerAccounting:
    return LedgerAccounting()


@pytest.fixture
def store() -> MemoryStore:
    s = MemoryStore()
    s.put_budget(NS, "patients", budget_spec())
    s.put_model(NS, "triage", model_spec(PATE))
    s.put_model(NS, "embed", model_spec(LAPLACE))
    return s


@pytest.fixture
def reviewer(store: MemoryStore) -> FakeReviewer:
    r = FakeReviewer(store=store)
    r.add("tok-triage", "triage", pod="triage-0")
    r.add("tok-embed", "embed", pod="embed-0")
    r.add("tok-other", "someone-else")
    return r


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def service(store: MemoryStore, reviewer: FakeReviewer, clock: Clock) -> LedgerService:
    return make_service(store, reviewer, clock=clock)


@pytest.fixture
async def client(service: LedgerService) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(service.app)) as c:
        yield c

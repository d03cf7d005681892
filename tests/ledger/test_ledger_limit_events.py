"""A budget that reaches one of the ledger's limits says so on the budget: a Warning Event,
once a minute per limit, though a refusal writes nothing (docs/ledger.md, "Status size").
Any other decision that writes nothing emits nothing: its Events follow a status write."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from ledger_helpers import (
    FREE,
    NS,
    PATE,
    Clock,
    FakeReviewer,
    budget_spec,
    lease_body,
    make_service,
    model_spec,
)

from dpserve.ledger.limits import LeasePolicy
from dpserve.ledger.service import LedgerService
from dpserve.ledger.wire import LeaseFailure
from dpserve_testkit.memory_store import MemoryStore

LIMIT_REASONS = {"LeaseLimitReached", "LedgerFull"}


def limit_events(store: MemoryStore) -> list[tuple[str, str, str]]:
    return [(event.type, event.reason, involved["metadata"]["name"])
            for _, involved, event in store.events if event.reason in LIMIT_REASONS]


@pytest.fixture(autouse=True)
def second_model(store: MemoryStore, reviewer: FakeReviewer) -> None:
    """A second model spending the same budget, with one serving pod."""
    store.put_model(NS, "second", model_spec(PATE))
    reviewer.add("tok-second", "second", pod="second-0")


@asynccontextmanager
async def serving(store: MemoryStore, reviewer: FakeReviewer, clock: Clock,
                  policy: LeasePolicy) -> AsyncIterator[LedgerService]:
    service = make_service(store, reviewer, clock=clock, policy=policy)
    try:
        yield service
    finally:
        await service.stop()


async def refused_second(service: LedgerService) -> str:
    """The second model's pod asks for a lease and is refused; the refusal's message."""
    body = lease_body(model=f"{NS}/second", pod="second-0")
    with pytest.raises(LeaseFailure) as refused:
        await service.lease(json.dumps(body).encode(), "Bearer tok-second")
    assert refused.value.error.reason == "Unavailable", refused.value.error.message
    return refused.value.error.message


async def granted_triage(service: LedgerService) -> None:
    await service.lease(json.dumps(lease_body()).encode(), "Bearer tok-triage")


async def test_a_reached_lease_limit_is_a_warning_once_a_minute(
    store: MemoryStore, reviewer: FakeReviewer, clock: Clock
) -> None:
    async with serving(store, reviewer, clock, LeasePolicy(max_leases=1)) as service:
        await granted_triage(service)
        for _ in range(3):
            assert "DPSERVE_LEDGER_MAX_LEASES" in await refused_second(service)
        assert limit_events(store) == [("Warning", "LeaseLimitReached", "patients")]
        clock.advance(61)  # the triage lease is still outstanding (TTL 300 s)
        await refused_second(service)
        assert len(limit_events(store)) == 2


async def test_a_full_ledger_is_a_warning(
    store: MemoryStore, reviewer: FakeReviewer, clock: Clock
) -> None:
    async with serving(store, reviewer, clock, LeasePolicy(max_entries=1)) as service:
        await granted_triage(service)
        message = await refused_second(service)
        assert "ledger is full" in message and f"{NS}/second" in message
        await refused_second(service)
        assert limit_events(store) == [("Warning", "LedgerFull", "patients")]
        await granted_triage(service)  # the entry it has keeps counting


async def test_a_grant_that_writes_nothing_emits_nothing(
    store: MemoryStore, reviewer: FakeReviewer, clock: Clock
) -> None:
    """A free grant on a budget whose ε was lowered below what is spent decides a status that
    says Exhausted, but writes nothing (no spend changed): its transition Events would claim
    what the stored status does not say, so they wait for the write that says it."""
    training = {"noiseMultiplier": "1.1", "sampleRate": "0.01", "steps": 1000}
    store.put_model(NS, "free", model_spec(FREE, training=training))
    reviewer.add("tok-free", "free", pod="free-0")

    async def free_lease(label: str) -> None:
        # A service per lease: the second reads the edited spec, not its cached copy.
        async with serving(store, reviewer, clock, LeasePolicy()) as service:
            body = lease_body(label, model=f"{NS}/free", pod="free-0", mech=FREE)
            await service.lease(json.dumps(body).encode(), "Bearer tok-free")

    await free_lease("lease-0001")  # charges the declared training: written
    status = store.budget(NS, "patients")["status"]
    store.put_budget(NS, "patients", budget_spec("0.001"), status)
    before = len(store.events)
    await free_lease("lease-0002")
    assert store.budget(NS, "patients")["status"] == status  # nothing written
    assert store.events[before:] == []

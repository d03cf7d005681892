"""Lease sizing under pld: the secant over the outstanding leases, checked by one exact ε.

The 1% rule must hold exactly whichever way the size is found: ε of the debited ledger (the
spends the status will have) stays within ``ε(ledger - outstanding) + 1% * limit`` and within
half of it over the ledger now, ``ε(ledger) + 1% * limit / 2`` (``leases.risk_ceiling``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st
from ledger_helpers import (
    GAUSS,
    NS,
    T0,
    Clock,
    FakeReviewer,
    budget_spec,
    lease_body,
    make_service,
    mechanism,
    model_spec,
    spec,
)

from dpserve.accounting import pld as pld_lib
from dpserve.accounting.events import Event, GaussianQuery, LaplaceQuery, Spend, SubsampledGaussian
from dpserve.api.privacybudget import LedgerEntry, PrivacyBudgetStatus, TrainingSpend
from dpserve.ledger import events as ev
from dpserve.ledger import state
from dpserve.ledger.accountant import LedgerAccounting
from dpserve.ledger.lease_ids import sequenced_id
from dpserve.ledger.leases import next_check, prepare_next, risk_ceiling, size_within_risk
from dpserve.ledger.outcomes import Prefetch
from dpserve.ledger.service import LedgerService
from dpserve_testkit.memory_store import MemoryStore

DELTA, LIMIT, FRACTION = 1e-6, 8.0, 0.01
RUN = SubsampledGaussian(1.1, 256 / 60000, 2000)
QUERY = GaussianQuery(100.0)


@dataclass
class Counting:
    """The ledger's accounting, counting the searches it is asked for."""

    inner: LedgerAccounting = field(default_factory=LedgerAccounting)
    searches: int = 0

    def epsilon(self, spends: Sequence[Spend], delta: float, kind: str) -> float:
        return self.inner.epsilon(spends, delta, kind)

    def max_additional(self, spends: Sequence[Spend], event: Event, epsilon: float,
                       delta: float, kind: str, limit: int) -> int:
        self.searches += 1
        return self.inner.max_additional(spends, event, epsilon, delta, kind, limit)


def ordered(spends: dict[Event, int]) -> list[Spend]:
    return sorted(((e, n) for e, n in spends.items() if n > 0), key=lambda s: repr(s[0]))


def ceiling_of(accounting: LedgerAccounting, spends: list[Spend], remaining: list[Spend],
               kind: str = "pld") -> float:
    return risk_ceiling(accounting.epsilon(remaining, DELTA, kind),
                        accounting.epsilon(spends, DELTA, kind), LIMIT, FRACTION)


def exact(accounting: LedgerAccounting, spends: list[Spend], remaining: list[Spend],
          event: Event, fit: int) -> int:
    """The rule by the accountant's search: the largest n within the ceiling."""
    ceiling = ceiling_of(accounting, spends, remaining)
    return min(fit, max(1, accounting.max_additional(spends, event, ceiling, DELTA, "pld",
                                                     fit)))


def test_one_exact_check_instead_of_a_search_and_the_rule_holds() -> None:
    accounting = Counting()
    spends = ordered({RUN: 1, QUERY: 10_000})
    remaining = ordered({RUN: 1, QUERY: 9_850})  # the pod's outstanding lease of 150
    size = size_within_risk(spends, remaining, QUERY, 100_000, LIMIT, DELTA, "pld", FRACTION,
                            accounting)
    assert accounting.searches == 0  # decided by the secant and its check
    debited = ordered({RUN: 1, QUERY: 10_000 + size})
    ceiling = ceiling_of(accounting.inner, spends, remaining)
    assert accounting.epsilon(debited, DELTA, "pld") <= ceiling
    best = exact(accounting.inner, spends, remaining, QUERY, 100_000)
    assert 0.9 * best <= size <= best  # a few queries short of the largest, never over


def test_outstanding_leases_of_another_event_leave_it_to_the_search() -> None:
    accounting = Counting()
    laplace = LaplaceQuery(500.0)
    spends = ordered({RUN: 1, QUERY: 10_000, laplace: 40})
    remaining = ordered({RUN: 1, QUERY: 9_950, laplace: 39})
    size = size_within_risk(spends, remaining, QUERY, 500, LIMIT, DELTA, "pld", FRACTION,
                            accounting)
    if accounting.epsilon(spends, DELTA, "pld") >= ceiling_of(accounting.inner, spends, remaining):
        assert size == 1  # the outstanding leases hold the whole 1%: the minimum lease
    else:
        assert accounting.searches == 1
    assert size == exact(accounting.inner, spends, remaining, QUERY, 500)


def test_rdp_ledgers_keep_the_exact_search() -> None:
    accounting = Counting()
    spends = ordered({RUN: 1, QUERY: 10_000})
    remaining = ordered({RUN: 1, QUERY: 9_700})
    size = size_within_risk(spends, remaining, QUERY, 100_000, LIMIT, DELTA, "rdp", FRACTION,
                            accounting)
    assert accounting.searches == 1
    ceiling = ceiling_of(accounting.inner, spends, remaining, kind="rdp")
    assert size == min(100_000, max(1, accounting.inner.max_additional(
        spends, QUERY, ceiling, DELTA, "rdp", 100_000)))


@settings(max_examples=12, deadline=None)
@given(
    scale=st.sampled_from([5.0, 20.0, 80.0]),
    count=st.integers(1, 400),
    outstanding=st.integers(0, 60),
    z=st.sampled_from([3.0, 10.0, 40.0]),
    queries=st.integers(0, 200),
    fit=st.integers(1, 5000),
)
def test_the_rule_holds_on_mixed_ledgers(scale: float, count: int, outstanding: int, z: float,
                                         queries: int, fit: int) -> None:
    # Laplace and Gaussian spends: a PLD ledger without a training run (small PMFs, fast).
    accounting = LedgerAccounting()
    laplace, gaussian = LaplaceQuery(scale), GaussianQuery(z)
    spends = ordered({laplace: count, gaussian: queries})
    remaining = ordered({laplace: max(0, count - outstanding), gaussian: queries})
    base = accounting.epsilon(remaining, DELTA, "pld")
    if base >= LIMIT:
        return
    size = size_within_risk(spends, remaining, laplace, fit, LIMIT, DELTA, "pld", FRACTION,
                            accounting)
    best = exact(accounting, spends, remaining, laplace, fit)
    assert 1 <= size <= fit
    assert size <= best
    if size > 1:
        debited = ordered({laplace: count + size, gaussian: queries})
        spent = accounting.epsilon(debited, DELTA, "pld")
        assert spent <= min(LIMIT, base + FRACTION * LIMIT)
        # and within half the 1% over the ledger now, where the window ends below the limit
        assert spent <= ceiling_of(accounting, spends, remaining)


async def test_the_next_lease_of_a_pod_finds_its_check_composed(
    store: MemoryStore, reviewer: FakeReviewer, clock: Clock
) -> None:
    # A pld budget holding a DP-SGD run (a Poisson PLD), a gaussian model, one pod.
    store.put_budget(NS, "patients", budget_spec(accountant="pld"))
    store.put_model(NS, "triage", model_spec(GAUSS))
    service = make_service(store, reviewer, clock=clock)
    run = TrainingSpend(noise_multiplier="1.1", sample_rate="0.01", steps=1000)
    await service.record_training(NS, "patients", consumer=f"{NS}/triage", model_version="v1",
                                  spend=run)
    loop = asyncio.get_running_loop()

    async def lease(number: int) -> int:
        body = lease_body(f"lease-{number}", mech=GAUSS, requested=2000)
        grant = await service.lease(json.dumps(body).encode(), "Bearer tok-triage")
        # The ledger's worker runs in order: once this no-op ran, so did the prefetch.
        await loop.run_in_executor(service._executor, lambda: None)
        return grant.granted

    prepared: list[Prefetch] = []
    prepare = service._prepare
    measuring = False

    def capture(prefetch: Prefetch) -> None:
        if not measuring:  # nothing prepared after the measured grant
            prepared.append(prefetch)
            prepare(prefetch)

    service._prepare = capture  # type: ignore[method-assign]
    try:
        # The first lease by the exact search (nothing outstanding yet), then by the secant
        # over the pod's previous lease -- whose check was prepared after the grant before.
        # Each takes at most half the 1% at risk, so the lease granted while the previous one
        # is in use is as large (not 1, as when the first took all of it: a stall per two).
        first, second = await lease(1), await lease(2)
        assert prepared, "the second grant prepared the third's check"
        composed = pld_lib._composed_pld.cache_info().misses
        measuring = True
        third = await lease(3)
        assert pld_lib._composed_pld.cache_info().misses == composed  # nothing composed
        status = PrivacyBudgetStatus.model_validate(store.budget(NS, "patients")["status"])
        assert ev.spends(status.ledger) == _predicted(service, prepared[-1])  # it hit
        assert first > 1 and min(second, third) >= first // 2
        assert sum(e.count for e in status.ledger if e.kind == "query") == first + second + third
    finally:
        await service.stop()


def _predicted(service: LedgerService, p: Prefetch) -> list[Spend] | None:
    return next_check(p.before, p.debited, p.event, p.requested, p.limit, p.delta,
                      p.at_risk_fraction, service.accounting)


async def test_another_pods_outstanding_lease_does_not_spoil_the_prepared_check(
    store: MemoryStore, reviewer: FakeReviewer, clock: Clock
) -> None:
    """The next lease's rule starts from the ledger minus every other pod's outstanding
    lease; the preparation must start there too, or with two pods it is always wasted."""
    store.put_budget(NS, "patients", budget_spec(accountant="pld"))
    store.put_model(NS, "triage", model_spec(GAUSS))
    reviewer.add("tok-other", "triage", pod="triage-other")
    service = make_service(store, reviewer, clock=clock)
    run = TrainingSpend(noise_multiplier="1.1", sample_rate="0.01", steps=1000)
    await service.record_training(NS, "patients", consumer=f"{NS}/triage", model_version="v1",
                                  spend=run)
    loop = asyncio.get_running_loop()

    async def lease(number: int, pod: str | None = None, token: str = "tok-triage") -> int:
        extra = {"pod": pod} if pod else {}
        body = lease_body(f"lease-{number}", mech=GAUSS, requested=2000, **extra)
        grant = await service.lease(json.dumps(body).encode(), f"Bearer {token}")
        await loop.run_in_executor(service._executor, lambda: None)  # preparation done
        return grant.granted

    prepare = service._prepare
    measuring = False

    def capture(prefetch: Prefetch) -> None:
        if not measuring:  # nothing prepared after the measured grant
            prepare(prefetch)

    service._prepare = capture  # type: ignore[method-assign]
    try:
        await lease(1)
        await lease(1, pod="triage-other", token="tok-other")  # outstanding from now on
        await lease(2)
        await lease(3)
        composed = pld_lib._composed_pld.cache_info().misses
        measuring = True
        await lease(4)
        assert pld_lib._composed_pld.cache_info().misses == composed  # nothing composed
    finally:
        await service.stop()


def test_near_the_budgets_end_the_next_grants_fit_is_prepared_too() -> None:
    """Once a request no longer fits whole, the fit is a search of several PLDs (~300 ms
    each grant with the 14k-step run of bench/ledger.py). The worker answers it ahead with
    the lease check, so the next grant composes nothing."""
    accounting = LedgerAccounting()
    run = TrainingSpend(noise_multiplier="1.1", sample_rate="0.01", steps=1000)
    query = mechanism(GAUSS)
    ledger = [
        LedgerEntry(consumer=f"{NS}/m", kind="training", count=1, training=run),
        LedgerEntry(consumer=f"{NS}/m", kind="query", mechanism=query, count=10_000),
    ]
    spent = accounting.epsilon(ev.spends(ledger), 1e-6, "pld")
    # Room for a few hundred more queries, far fewer than each request asks.
    budget = spec(f"{spent + 0.3:.4f}", accountant="pld")
    status = PrivacyBudgetStatus(ledger=ledger)

    def grant(sequence: int) -> state.Grant:
        request = state.GrantRequest(
            consumer=f"{NS}/m", model_version="v1", mechanism=query, requested=100_000,
            lease_id=sequenced_id("m-0", None, sequence), pod="m-0")
        result = state.grant(budget, 1, status, request, T0, accounting=accounting)
        assert isinstance(result, state.Grant), result
        return result

    first = grant(1)
    assert first.prefetch is not None and first.granted < 100_000
    prepare_next(first.prefetch, accounting)
    status = first.status
    composed = pld_lib._composed_pld.cache_info().misses
    second = grant(2)
    assert pld_lib._composed_pld.cache_info().misses == composed  # nothing composed
    assert 1 <= second.granted < 100_000

"""Lease sizing under pld: the secant over the outstanding leases, checked by one exact ε.

The 1% rule must hold exactly whichever way the size is found: ε of the debited ledger (the
spends the status will have) stays within ``ε(ledger - outstanding) + 1% * limit``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from dpserve.accounting.events import Event, GaussianQuery, LaplaceQuery, Spend, SubsampledGaussian
from dpserve.ledger.accountant import LedgerAccounting
from dpserve.ledger.leases import size_within_risk

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


def exact(accounting: LedgerAccounting, spends: list[Spend], remaining: list[Spend],
          event: Event, fit: int) -> int:
    """Today's rule: the largest n within the ceiling, by the accountant's search."""
    base = accounting.epsilon(remaining, DELTA, "pld")
    ceiling = min(LIMIT, base + FRACTION * LIMIT)
    return min(fit, max(1, accounting.max_additional(spends, event, ceiling, DELTA, "pld",
                                                     fit)))


def test_one_exact_check_instead_of_a_search_and_the_rule_holds() -> None:
    accounting = Counting()
    spends = ordered({RUN: 1, QUERY: 10_000})
    remaining = ordered({RUN: 1, QUERY: 9_850})  # the pod's outstanding lease of 150
    size = size_within_risk(spends, remaining, QUERY, 100_000, LIMIT, DELTA, "pld", FRACTION,
                            accounting)
    assert accounting.searches == 0  # decided by the secant and its check
    base = accounting.epsilon(remaining, DELTA, "pld")
    debited = ordered({RUN: 1, QUERY: 10_000 + size})
    assert accounting.epsilon(debited, DELTA, "pld") <= base + FRACTION * LIMIT
    best = exact(accounting.inner, spends, remaining, QUERY, 100_000)
    assert 0.9 * best <= size <= best  # a few queries short of the largest, never over


def test_outstanding_leases_of_another_event_leave_it_to_the_search() -> None:
    accounting = Counting()
    laplace = LaplaceQuery(50.0)
    spends = ordered({RUN: 1, QUERY: 10_000, laplace: 40})
    remaining = ordered({RUN: 1, QUERY: 9_700, laplace: 30})
    size = size_within_risk(spends, remaining, QUERY, 500, LIMIT, DELTA, "pld", FRACTION,
                            accounting)
    assert accounting.searches == 1
    assert size == exact(accounting.inner, spends, remaining, QUERY, 500)


def test_rdp_ledgers_keep_the_exact_search() -> None:
    accounting = Counting()
    spends = ordered({RUN: 1, QUERY: 10_000})
    remaining = ordered({RUN: 1, QUERY: 9_700})
    size = size_within_risk(spends, remaining, QUERY, 100_000, LIMIT, DELTA, "rdp", FRACTION,
                            accounting)
    assert accounting.searches == 1
    base = accounting.epsilon(remaining, DELTA, "rdp")
    assert size == min(100_000, max(1, accounting.inner.max_additional(
        spends, QUERY, min(LIMIT, base + FRACTION * LIMIT), DELTA, "rdp", 100_000)))


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
        assert accounting.epsilon(debited, DELTA, "pld") <= min(LIMIT, base + FRACTION * LIMIT)

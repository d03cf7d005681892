"""The accountant as the ledger uses it: ε of spends and "how many more fit", memoised.

The ledger recomputes ε of unchanged sub-ledgers (other tenants, the main ledger while a
tenant is charged) on every grant; a small LRU keyed by the spends keeps that free. The
accounting package caches per-event curves underneath.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Protocol, cast

from dpserve.accounting import AccountantKind, epsilon_spent, max_additional
from dpserve.accounting.events import Event, Spend


class Accounting(Protocol):
    """What the pure ledger functions need from an accountant."""

    def epsilon(self, spends: Sequence[Spend], delta: float, kind: str) -> float:
        """ε of the composition of ``spends`` at ``delta`` (0 for no spends)."""
        ...

    def max_additional(
        self,
        spends: Sequence[Spend],
        event: Event,
        epsilon: float,
        delta: float,
        kind: str,
        limit: int,
    ) -> int:
        """Largest n <= limit such that spends + n x event stays within (epsilon, delta)."""
        ...


class LedgerAccounting:
    """:class:`Accounting` over :mod:`dpserve.accounting`, with LRUs of composed ε and of
    "how many more fit" (a pure function of its arguments: the ledger's worker answers the
    next grant's fit ahead, ``leases.prepare_next``, and the grant finds it here)."""

    def __init__(self, cache_size: int = 8192, fit_cache_size: int = 1024) -> None:
        self._epsilon = lru_cache(maxsize=cache_size)(self._epsilon_uncached)
        # Smaller: its answers are wanted again soon (the next grant, the status after a
        # grant), and each key holds a whole ledger's spends.
        self._max_additional = lru_cache(maxsize=fit_cache_size)(self._max_additional_uncached)

    @staticmethod
    def _epsilon_uncached(spends: tuple[Spend, ...], delta: float, kind: str) -> float:
        return float(epsilon_spent(spends, delta, cast(AccountantKind, kind)))

    @staticmethod
    def _max_additional_uncached(
        spends: tuple[Spend, ...], event: Event, epsilon: float, delta: float, kind: str,
        limit: int,
    ) -> int:
        return int(max_additional(spends, event, epsilon, delta, cast(AccountantKind, kind),
                                  limit))

    def epsilon(self, spends: Sequence[Spend], delta: float, kind: str) -> float:
        live = tuple(spend for spend in spends if spend[1] > 0)
        if not live:
            return 0.0
        return self._epsilon(live, delta, kind)

    def max_additional(
        self,
        spends: Sequence[Spend],
        event: Event,
        epsilon: float,
        delta: float,
        kind: str,
        limit: int,
    ) -> int:
        live = tuple(spend for spend in spends if spend[1] > 0)
        return self._max_additional(live, event, epsilon, delta, kind, limit)


_DEFAULT: LedgerAccounting | None = None


def default_accounting() -> LedgerAccounting:
    """One process-wide instance, so every caller shares its cache."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = LedgerAccounting()
    return _DEFAULT

"""Per-tenant sub-ledgers: each tenant's ε spent and remaining, and the bounded view of them."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from dpserve.api.privacybudget import LedgerEntry, PartitionStatus
from dpserve.ledger import events as ev
from dpserve.ledger.accountant import Accounting
from dpserve.ledger.entries import on_ledger
from dpserve.ledger.evaluation import ledger_epsilon
from dpserve.ledger.limits import LISTED_PARTITIONS, Limits
from dpserve.ledger.rounding import format_up, remaining


def tenant_status(
    limits: Limits, entries: Sequence[LedgerEntry], tenant: str, accounting: Accounting
) -> tuple[float, PartitionStatus]:
    """One tenant's ε spent (as computed) and its numbers as the status reports them."""
    return _tenant_row(limits, on_ledger(entries, tenant), tenant, accounting)


def _tenant_row(
    limits: Limits, own: Sequence[LedgerEntry], tenant: str, accounting: Accounting
) -> tuple[float, PartitionStatus]:
    """``tenant_status`` of the tenant's own entries ``own``."""
    spent = ledger_epsilon(ev.spends(own), limits, accounting, f"partition {tenant!r}")
    spent_text, remaining_text = _reported(spent, limits.limit_of(tenant)[1])
    return spent, PartitionStatus(
        tenant=tenant, epsilon_spent=spent_text, epsilon_remaining=remaining_text
    )


@lru_cache(maxsize=4096)
def _reported(spent: float, limit_text: str) -> tuple[str, str]:
    """Spent and remaining as the status writes them. Cached: every grant on a multi-tenant
    budget reports every tenant again, and all but the charged one spent what they had."""
    return format_up(spent), remaining(limit_text, spent)


def partition_statuses(
    limits: Limits, entries: Sequence[LedgerEntry], accounting: Accounting
) -> list[PartitionStatus]:
    """Every tenant's numbers, the most-spent first (the status lists the first
    LISTED_PARTITIONS of them: :func:`listed`)."""
    if limits.partition_epsilon is None or limits.partition_epsilon_text is None:
        return []
    # One pass over the entries, not one per tenant.
    own: dict[str, list[LedgerEntry]] = {tenant: [] for tenant in limits.tenants or ()}
    for entry in entries:
        if entry.partition is not None:
            own.setdefault(entry.partition, []).append(entry)
    rows = [_tenant_row(limits, group, tenant, accounting) for tenant, group in own.items()]
    rows.sort(key=lambda row: (-row[0], row[1].tenant))
    return [row[1] for row in rows]


def listed(tenants: Sequence[PartitionStatus]) -> list[PartitionStatus]:
    """The bounded view the status carries (the ledger entries stay the truth)."""
    return list(tenants[:LISTED_PARTITIONS])

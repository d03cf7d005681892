"""Per-tenant sub-ledgers: each tenant's ε spent and remaining, and the bounded view of them."""

from __future__ import annotations

from collections.abc import Sequence

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
    spent = ledger_epsilon(
        ev.spends(on_ledger(entries, tenant)), limits, accounting, f"partition {tenant!r}"
    )
    return spent, PartitionStatus(
        tenant=tenant,
        epsilon_spent=format_up(spent),
        epsilon_remaining=remaining(limits.limit_of(tenant)[1], spent),
    )


def partition_statuses(
    limits: Limits, entries: Sequence[LedgerEntry], accounting: Accounting
) -> list[PartitionStatus]:
    """Every tenant's numbers, the most-spent first (the status lists the first
    LISTED_PARTITIONS of them: :func:`listed`)."""
    if limits.partition_epsilon is None or limits.partition_epsilon_text is None:
        return []
    tenants = {entry.partition for entry in entries if entry.partition is not None}
    tenants |= set(limits.tenants or ())
    rows = [tenant_status(limits, entries, tenant, accounting)
            for tenant in tenants if tenant is not None]
    rows.sort(key=lambda row: (-row[0], row[1].tenant))
    return [row[1] for row in rows]


def listed(tenants: Sequence[PartitionStatus]) -> list[PartitionStatus]:
    """The bounded view the status carries (the ledger entries stay the truth)."""
    return list(tenants[:LISTED_PARTITIONS])

"""Per-tenant sub-ledgers: each tenant's ε spent and remaining (a bounded view)."""

from __future__ import annotations

from collections.abc import Sequence

from dpserve.api.privacybudget import LedgerEntry, PartitionStatus
from dpserve.ledger import events as ev
from dpserve.ledger.accountant import Accounting
from dpserve.ledger.entries import on_ledger
from dpserve.ledger.evaluation import ledger_epsilon
from dpserve.ledger.limits import MAX_PARTITION_STATUSES, Limits
from dpserve.ledger.rounding import format_up, remaining


def partition_statuses(
    limits: Limits, entries: Sequence[LedgerEntry], accounting: Accounting
) -> list[PartitionStatus]:
    """Every tenant's numbers, the most-spent first, at most MAX_PARTITION_STATUSES."""
    if limits.partition_epsilon is None or limits.partition_epsilon_text is None:
        return []
    tenants = {entry.partition for entry in entries if entry.partition is not None}
    tenants |= set(limits.tenants or ())
    rows: list[tuple[float, PartitionStatus]] = []
    for tenant in tenants:
        if tenant is None:
            continue
        spent = ledger_epsilon(
            ev.spends(on_ledger(entries, tenant)), limits, accounting, f"partition {tenant!r}"
        )
        rows.append(
            (
                spent,
                PartitionStatus(
                    tenant=tenant,
                    epsilon_spent=format_up(spent),
                    epsilon_remaining=remaining(limits.partition_epsilon_text, spent),
                ),
            )
        )
    # Bounded view (the ledger entries stay the truth): the most-spent tenants first.
    rows.sort(key=lambda row: (-row[0], row[1].tenant))
    return [row[1] for row in rows[:MAX_PARTITION_STATUSES]]

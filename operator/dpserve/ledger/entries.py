"""The ledger's entries: which ledger an entry is on, its key, and debiting a count.

One entry per consumer x model version x mechanism x partition, holding a count; a debit
adds to the matching entry or appends one (bounded by ``max_entries``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from dpserve.api.mechanism import Mechanism
from dpserve.api.privacybudget import LedgerEntry, PartitionStatus, PrivacyBudgetStatus
from dpserve.ledger import events as ev
from dpserve.ledger.outcomes import BudgetEvent, GrantRequest, Refusal

QueryKey = tuple[object, ...]


def on_ledger(entries: Iterable[LedgerEntry], partition: str | None) -> list[LedgerEntry]:
    """The entries of one ledger: the main one (None) or a tenant's."""
    return [entry for entry in entries if entry.partition == partition]


def training_entry(
    entries: Iterable[LedgerEntry], consumer: str, version: str
) -> LedgerEntry | None:
    """The (first) training entry of ``consumer``'s ``version``, if any."""
    for entry in entries:
        if (
            entry.kind == "training"
            and entry.consumer == consumer
            and entry.model_version == version
        ):
            return entry
    return None


def query_key(entry: LedgerEntry) -> QueryKey:
    """What identifies a query entry: consumer, version, partition and the mechanism."""
    assert entry.mechanism is not None
    return (
        entry.consumer,
        entry.model_version,
        entry.partition,
        ev.canonical_mechanism(entry.mechanism),
    )


def request_key(
    consumer: str, version: str, partition: str | None, mechanism: Mechanism
) -> QueryKey:
    """The :func:`query_key` a request's queries are debited to."""
    return (consumer, version, partition, ev.canonical_mechanism(mechanism))


def debit(
    entries: list[LedgerEntry],
    request: GrantRequest,
    partition: str | None,
    count: int,
    max_entries: int,
) -> list[LedgerEntry] | Refusal:
    """``entries`` with ``count`` queries of the request added (a Refusal when full)."""
    key = request_key(request.consumer, request.model_version, partition, request.mechanism)
    out = list(entries)
    for index, entry in enumerate(out):
        if entry.kind == "query" and entry.mechanism is not None and query_key(entry) == key:
            out[index] = entry.model_copy(update={"count": entry.count + count})
            return out
    if len(out) >= max_entries:
        message = (f"the budget's ledger is full ({len(out)} entries, limit {max_entries}, "
                   f"DPSERVE_LEDGER_MAX_ENTRIES): {request.consumer} {request.model_version} "
                   "cannot add an entry; nothing granted")
        return Refusal("Unavailable", message,
                       event=BudgetEvent("Warning", "LedgerFull", message))
    out.append(
        LedgerEntry(
            consumer=request.consumer,
            model_version=request.model_version,
            kind="query",
            mechanism=request.mechanism,
            partition=partition,
            count=count,
        )
    )
    return out


def ledger_numbers(
    status: PrivacyBudgetStatus,
    partition: str | None,
    tenants: Sequence[PartitionStatus] | None = None,
) -> tuple[float, float] | None:
    """ε spent and remaining of one ledger as the status reports them; a tenant's from
    ``tenants`` (by default the status's bounded view), None when it is not among them."""
    if partition is None:
        return float(status.epsilon_spent or 0.0), float(status.epsilon_remaining or 0.0)
    for row in status.partitions if tenants is None else tenants:
        if row.tenant == partition:
            return float(row.epsilon_spent), float(row.epsilon_remaining)
    return None

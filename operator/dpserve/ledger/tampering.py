"""Recorded spend is monotone: detecting and restoring a status that lost spend.

Counts only grow, entries are never removed. A status that holds less than a ledger process
last wrote or read (an edit through the status subresource, a restore from an old backup)
lost spend; grants must not start from it. The evidence is held in the process; the durable
watermark (an annotation of the budget's metadata) covers a process that has not seen the
budget yet (docs/ledger.md).
"""

from __future__ import annotations

import json
from datetime import datetime

from dpserve.api.privacybudget import LedgerEntry, PrivacyBudgetSpec, PrivacyBudgetStatus
from dpserve.ledger import events as ev
from dpserve.ledger.accountant import Accounting
from dpserve.ledger.outcomes import StatusUpdate
from dpserve.ledger.status import compute_status


def _spend_key(entry: LedgerEntry) -> tuple[object, ...]:
    if entry.kind == "training":
        detail: object = ev.training_event(entry.training) if entry.training else None
    else:
        detail = ev.canonical_mechanism(entry.mechanism) if entry.mechanism else None
    return (entry.consumer, entry.model_version, entry.kind, entry.partition, entry.run,
            detail)


def lost_spend(
    evidence: PrivacyBudgetStatus, current: PrivacyBudgetStatus | None
) -> list[str]:
    """The ledger entries ``current`` holds less of than ``evidence`` (empty: nothing lost)."""
    counts: dict[tuple[object, ...], int] = {}
    for entry in current.ledger if current is not None else []:
        key = _spend_key(entry)
        counts[key] = counts.get(key, 0) + entry.count
    lost: list[str] = []
    for entry in evidence.ledger:
        have = counts.get(_spend_key(entry), 0)
        if have < entry.count:
            what = "training" if entry.kind == "training" else (
                entry.mechanism.type if entry.mechanism else entry.kind)
            lost.append(f"{entry.consumer} {entry.model_version} {what}"
                        + (f" [{entry.partition}]" if entry.partition else "")
                        + f": count {have} < {entry.count}")
    return lost


def restore_spend(
    spec: PrivacyBudgetSpec,
    generation: int | None,
    evidence: PrivacyBudgetStatus,
    current: PrivacyBudgetStatus | None,
    now: datetime,
    *,
    accounting: Accounting,
) -> StatusUpdate:
    """``current`` with every entry and lease record of ``evidence`` put back (max counts).

    Spend recorded since the evidence (entries only in ``current``, larger counts) is kept:
    the result holds at least what either holds, and its numbers are recomputed.
    """
    base = current if current is not None else PrivacyBudgetStatus()
    entries = [entry.model_copy() for entry in base.ledger]
    index = {_spend_key(e): i for i, e in enumerate(entries)}
    for entry in evidence.ledger:
        i = index.get(_spend_key(entry))
        if i is None:
            index[_spend_key(entry)] = len(entries)
            entries.append(entry.model_copy())
        elif entries[i].count < entry.count:
            entries[i] = entries[i].model_copy(update={"count": entry.count})
    lease_ids = {lease.lease_id for lease in base.leases}
    leases = [*base.leases, *(lease for lease in evidence.leases
                              if lease.lease_id not in lease_ids)]
    # Alerts already fired stay fired: an erased list must not fire them all again.
    alerts = sorted(set(base.alerts_fired) | set(evidence.alerts_fired), key=float)
    merged = base.model_copy(update={"ledger": entries, "leases": leases,
                                     "alerts_fired": alerts})
    return compute_status(spec, generation, merged, now, accounting=accounting)


# A durable lower bound of the recorded spend, kept in the budget's metadata (a status write
# cannot change it): after a restart, when no process holds the evidence, a status below it
# is refused rather than granted from.
WATERMARK_ANNOTATION = "dpserve.io/recorded-spend"


def watermark(status: PrivacyBudgetStatus) -> dict[str, int]:
    return {"entries": len(status.ledger), "count": sum(e.count for e in status.ledger)}


def format_watermark(mark: dict[str, int]) -> str:
    return json.dumps(mark, sort_keys=True, separators=(",", ":"))


def below_watermark(status: PrivacyBudgetStatus | None, text: str | None) -> str | None:
    """Why ``status`` holds less than the watermark ``text``, or None (also: no watermark)."""
    if not text:
        return None
    try:
        mark = json.loads(text)
        entries, count = int(mark["entries"]), int(mark["count"])
    except (ValueError, KeyError, TypeError):
        return f"the annotation {WATERMARK_ANNOTATION} is not readable: {text[:100]!r}"
    have = watermark(status) if status is not None else {"entries": 0, "count": 0}
    if have["entries"] < entries or have["count"] < count:
        return (f"status.ledger holds {have['entries']} entries / {have['count']} counted "
                f"releases, fewer than the {entries} / {count} recorded in "
                f"metadata.annotations[{WATERMARK_ANNOTATION}]")
    return None

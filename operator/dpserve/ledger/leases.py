"""Lease records and lease sizing: which leases are outstanding, and the 1% at-risk rule.

A crashed pod loses the unused remainder of its leases: wasted, never unaccounted. The leases
that can still hold unused queries are the *outstanding* ones: unexpired, and by the sidecar
protocol at most the two latest of each pod (:func:`prune_leases`). Their ε value on one
ledger is

    at_risk = ε(ledger) - ε(ledger minus the counts of the outstanding leases)

(the ε the ledger would not have spent had none of them been used). A new lease gets at most
the largest n with ``ε(ledger + n) <= ε(ledger - outstanding) + 1% * limit``, so at_risk stays
within ``at_risk_fraction`` (1%) of that ledger's limit, except that a lease of 1 is granted
whenever one more query fits at all: progress is always possible (docs/ledger.md).

Within that rule one lease adds at most half the 1%, ``ε(ledger + n) <= ε(ledger) + 1% *
limit / 2`` (:func:`risk_ceiling`): a pod holds up to two leases (the one in use and the
prefetched next), and without the half the lease granted while its previous one was in use
found that one holding the whole 1% and got a single query: its leases alternated between
large and 1, and the pod stalled on every other one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime

from dpserve.accounting.events import Event, Spend
from dpserve.api.privacybudget import LeaseRecord, LedgerEntry
from dpserve.ledger import events as ev
from dpserve.ledger.accountant import Accounting
from dpserve.ledger.conditions import parse_rfc3339
from dpserve.ledger.entries import QueryKey, query_key
from dpserve.ledger.evaluation import finite_epsilon
from dpserve.ledger.lease_ids import ID_MEMORY, MAX_REMEMBERED, parse
from dpserve.ledger.limits import MAX_LEASE_RECORDS, LeasePolicy, Limits
from dpserve.ledger.outcomes import Prefetch

LEASES_KEPT_PER_POOL = 2


def prune_leases(
    leases: Sequence[LeaseRecord], now: datetime, per_pool: int = LEASES_KEPT_PER_POOL
) -> list[LeaseRecord]:
    """The lease records still worth keeping: unexpired, and each pool's ``per_pool`` latest.

    A pool is a pod's leases for one partition (none, or one tenant): the sidecar keeps one
    lease sequence per pool (``lease_ids``), and the protocol (docs/ledger.md) makes a pool's
    older records useless: a pool has one lease request in flight at a time (retries reuse its
    id), serves its leases in the order they were granted and asks for the next one only once
    the current one is in use. So only a pool's latest lease id can still be retried, and
    only its two latest leases can still hold unused queries. Keeping those bounds the status
    by the number of pools, not by the grant rate. Records are appended in grant order, so
    "latest" is list order.
    """
    seen: dict[tuple[str, str, str | None], int] = {}
    kept: list[LeaseRecord] = []
    for lease in reversed(leases):
        if parse_rfc3339(lease.expires_at) <= now:
            continue
        key = (lease.consumer, lease.pod, lease.partition)
        if seen.get(key, 0) >= per_pool:
            continue
        seen[key] = seen.get(key, 0) + 1
        kept.append(lease)
    kept.reverse()
    return kept


def retain_records(leases: Sequence[LeaseRecord], now: datetime) -> list[LeaseRecord]:
    """The lease records the status keeps: the outstanding ones (:func:`prune_leases`) and,
    for sequenced ids (:mod:`lease_ids`), each pool's latest record for ID_MEMORY after it
    expired: the pool's high-water mark, so a replay of a forgotten id is refused.

    Only the outstanding records size leases; the remembered ones hold no unused queries.
    """
    kept = {id(lease) for lease in prune_leases(leases, now)}
    latest: dict[tuple[str, str, str], tuple[int, LeaseRecord]] = {}
    for lease in leases:
        parsed = parse(lease.lease_id)
        if parsed is None:
            continue
        key = (lease.consumer, lease.pod, parsed.tag)
        if key not in latest or latest[key][0] < parsed.sequence:
            latest[key] = (parsed.sequence, lease)
    horizon = now - ID_MEMORY
    remembered = [lease for _, lease in latest.values()
                  if id(lease) not in kept and parse_rfc3339(lease.expires_at) > horizon]
    remembered.sort(key=lambda lease: parse_rfc3339(lease.expires_at), reverse=True)
    room = max(0, min(MAX_REMEMBERED, MAX_LEASE_RECORDS - len(kept)))
    kept |= {id(lease) for lease in remembered[:room]}
    return [lease for lease in leases if id(lease) in kept]


def high_water(
    leases: Sequence[LeaseRecord], consumer: str, pod: str, tag: str
) -> int | None:
    """The highest sequence granted to the pool (consumer, pod, tag), None if none is known."""
    found = [parsed.sequence for lease in leases
             if lease.consumer == consumer and lease.pod == pod
             and (parsed := parse(lease.lease_id)) is not None and parsed.tag == tag]
    return max(found) if found else None


def subtract_outstanding(
    entries: Sequence[LedgerEntry],
    outstanding: Sequence[LeaseRecord],
    request_key: QueryKey | None,
) -> list[LedgerEntry]:
    """The entries minus the counts of the outstanding leases.

    A lease record names its consumer, model version and partition, not the mechanism (which
    changes only with a spec edit, and pods on the old one are refused new leases): its count
    is taken from the requester's own entry when the lease is the requester's (same consumer
    and version), otherwise from the most recently created query entry of its consumer,
    version and partition (entries are appended in creation order). Records written before
    leases named a version match any version of their consumer. The result only sizes new
    leases; it never decides what is spent.
    """
    counts = [entry.count for entry in entries]
    for lease in outstanding:
        target = lease_entry(entries, lease, request_key)
        if target is not None:
            counts[target] = max(0, counts[target] - lease.granted)
    return [
        entry.model_copy(update={"count": count})
        for entry, count in zip(entries, counts, strict=True)
    ]


def lease_entry(
    entries: Sequence[LedgerEntry], lease: LeaseRecord, request_key: QueryKey | None
) -> int | None:
    """Index of the query entry ``lease`` was debited to (see :func:`subtract_outstanding`)."""
    own = (
        request_key is not None
        and lease.consumer == request_key[0]
        and lease.model_version in (None, request_key[1])
    )
    latest = None
    for index in range(len(entries) - 1, -1, -1):
        entry = entries[index]
        if entry.kind != "query" or entry.consumer != lease.consumer:
            continue
        if entry.partition != lease.partition:
            continue
        if lease.model_version is not None and entry.model_version != lease.model_version:
            continue
        if not own:
            return index
        if query_key(entry) == request_key:
            return index
        if lease.model_version is not None and latest is None:
            latest = index  # own version, another mechanism: the entry it was charged to
    return latest


def lease_size(
    ledger: Sequence[LedgerEntry],
    outstanding: Sequence[LeaseRecord],
    key: QueryKey,
    event: Event,
    fit: int,
    limit: float,
    limits: Limits,
    policy: LeasePolicy,
    accounting: Accounting,
) -> int:
    """How many of the ``fit`` queries that fit the ledger one new lease gets (>= 1).

    The new lease is the n being solved for; ``outstanding`` are the other leases that may
    still hold unused queries on this ledger. Accounting errors raise.
    """
    remaining = ev.spends(subtract_outstanding(ledger, outstanding, key))
    return size_within_risk(ev.spends(ledger), remaining, event, fit, limit, limits.delta,
                            limits.kind, policy.at_risk_fraction, accounting)


def risk_ceiling(base: float, current: float, limit: float, at_risk_fraction: float) -> float:
    """The ε a new lease may bring the ledger to: the 1% over the ledger without its
    outstanding leases (``base``), and half of it over the ledger now (``current``). Both
    only ever shrink a lease (the module's docstring).

    Half, not a share per pod: with many pods on one budget the 1% is first come, first
    served, as before. A share of 1% / (2 x pods) per lease (tried) rounds most leases down
    to 1 query where one query costs more than the share: 58 instead of 44 API writes per
    1,000 queries in ``bench/ledger_scale.py``.

    Where the window reaches the limit (the budget's last 1%, or ``at_risk_fraction`` 1:
    "no bound but the budget") the remaining budget bounds the lease, not the rule, and the
    half does not apply: the whole rest may go to one lease, as before.
    """
    window = at_risk_fraction * limit
    if base + window >= limit:
        return limit
    return min(base + window, current + window / 2)


def size_within_risk(
    spends: Sequence[Spend],
    remaining: Sequence[Spend],
    event: Event,
    fit: int,
    limit: float,
    delta: float,
    kind: str,
    at_risk_fraction: float,
    accounting: Accounting,
) -> int:
    """:func:`lease_size` on the spends of the ledger and of the ledger minus the
    outstanding leases (``remaining``)."""
    base = finite_epsilon(accounting.epsilon(remaining, delta, kind), "ledger")
    current = finite_epsilon(accounting.epsilon(spends, delta, kind), "ledger")
    ceiling = risk_ceiling(base, current, limit, at_risk_fraction)
    if kind == "pld":
        if current >= ceiling:
            return 1  # the outstanding leases hold the whole 1%: the minimum lease
        checked = _secant_size(spends, remaining, base, current, event, fit, ceiling, delta,
                               accounting)
        if checked is not None:
            return checked
    return min(fit, max(1, accounting.max_additional(spends, event, ceiling, delta, kind, fit)))


# The secant over the outstanding leases predicts the crossing a little high where ε is not
# concave in the count (the PLD's discretisation); aiming short keeps the one check passing.
SECANT_MARGIN = 0.97


def _secant_size(
    spends: Sequence[Spend],
    remaining: Sequence[Spend],
    base: float,
    current: float,
    event: Event,
    fit: int,
    ceiling: float,
    delta: float,
    accounting: Accounting,
) -> int | None:
    """A lease size under the 1% rule from one exact PLD instead of a search, or None.

    A PLD search costs 3-5 compositions (~50-90 ms each here) per grant. The outstanding
    leases already give two exact points of ε as a function of this event's count: the
    ledger without them (``base``) and the ledger now. Composition of more queries grows ε
    at most as fast as it grew over the last ones (concave in the count), so the secant's
    n lands at or below the crossing; it is then checked exactly, on the very spends the
    debited ledger will have (so the status' ε after the grant is that cached value): a
    lease is granted only if ``ε(ledger + n) <= ceiling`` holds. The lease may be a few
    queries short of the largest n the rule allows; the rule itself is never exceeded.
    None (the exact search decides) when the outstanding leases are not all of this event,
    the secant is flat, or the check fails.
    """
    predicted = _secant(spends, remaining, base, current, event, fit, ceiling)
    if predicted is None:
        return None
    size, debited = predicted
    if not accounting.epsilon(debited, delta, "pld") <= ceiling:  # NaN and inf fail too
        return None
    return size


def _secant(
    spends: Sequence[Spend],
    remaining: Sequence[Spend],
    base: float,
    current: float,
    event: Event,
    fit: int,
    ceiling: float,
) -> tuple[int, list[Spend]] | None:
    """The secant's lease size and the spends of the ledger debited by it (unchecked)."""
    now = dict(spends)
    before = dict(remaining)
    if set(now) - {event} != set(before) - {event} or any(
        now[e] != before[e] for e in now if e != event
    ):
        return None  # the outstanding leases spent other events too: no single slope
    grown = now.get(event, 0) - before.get(event, 0)
    if grown <= 0 or current <= base or current >= ceiling:
        return None
    slope = (current - base) / grown
    size = min(fit, math.floor(SECANT_MARGIN * (ceiling - current) / slope))
    if size < 1:
        return None
    return size, _plus(spends, event, size)


def _plus(spends: Sequence[Spend], event: Event, count: int) -> list[Spend]:
    """``spends`` with ``count`` more of ``event``, ordered as ``ev.spends`` orders the
    debited ledger's (so both are one cache key)."""
    after = dict(spends)
    after[event] = after.get(event, 0) + count
    return ev.ordered(after)


def next_check(
    before: Sequence[Spend],
    debited: Sequence[Spend],
    event: Event,
    requested: int,
    limit: float,
    delta: float,
    at_risk_fraction: float,
    accounting: Accounting,
) -> list[Spend] | None:
    """The spends whose ε the same pod's next pld lease will check, if nothing else changes.

    A pld grant costs one new PLD (the check in :func:`_secant_size`); the pod's next
    request, with this lease outstanding, will check the ledger that request debits. Its
    secant runs from ``before`` (the ledger minus the leases outstanding then) to
    ``debited``, so the ledger's worker can compose both while the pod serves this lease,
    off the grant path; without a secant lease (this one holds about the whole 1%) the next
    is the minimum lease of 1. None when an ε is not finite (the grant itself reports it).
    """
    base = accounting.epsilon(before, delta, "pld")
    current = accounting.epsilon(debited, delta, "pld")
    if not (math.isfinite(base) and math.isfinite(current)):
        return None
    ceiling = risk_ceiling(base, current, limit, at_risk_fraction)
    predicted = _secant(debited, before, base, current, event, requested, ceiling)
    # No secant lease: this one holds (nearly) the whole 1%, the next is the minimum of 1.
    return _plus(debited, event, 1) if predicted is None else predicted[1]


def prepare_next(p: Prefetch, accounting: Accounting) -> None:
    """Ask the accountant now what the same pod's next pld grant will ask it, so that grant
    finds the answers cached (``LedgerService._prepare`` runs this after answering a grant,
    on the ledger's worker, while the pod serves its lease): the fit of its request on the
    ledger this grant left (a search of several PLDs once the budget's end is within
    reach of a request) and ε of the spends its lease check will have (:func:`next_check`).
    """
    accounting.max_additional(p.debited, p.event, p.limit, p.delta, "pld", p.requested)
    check = next_check(p.before, p.debited, p.event, p.requested, p.limit, p.delta,
                       p.at_risk_fraction, accounting)
    if check is not None:
        accounting.epsilon(check, p.delta, "pld")

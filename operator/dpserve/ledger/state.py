"""The PrivacyBudget status as pure functions: (spec, generation, status, request, now) -> status.

No I/O here: :mod:`dpserve.ledger.store` reads and writes, :mod:`dpserve.ledger.service`
answers HTTP. Everything that decides a privacy outcome (how much is spent, whether a lease
is granted and how large, which conditions and Events follow) is in this module and is
tested without a server.

Ledgers. The *main* ledger is every entry without a partition: spends that touch the
protected dataset (DP-SGD training, pate and gaussian queries). With ``spec.partitions``,
tenant-side mechanisms (laplace-embedding: the noise protects the tenant's own query text)
are charged to that tenant's sub-ledger, entries with ``partition = <tenant>``, each limited
by ``partitions.epsilon``; tenants compose in parallel, so their spends never add up.

Entries are never erased and counts never decrease: a recorded spend stays recorded through
restarts, model retirement and spec edits; ε may be raised by a spec edit and Exhausted may
then flip back.

The at-risk rule (docs/ledger.md). Every granted query is debited before it is granted, so a
crashed pod loses the unused remainder of its leases: wasted, never unaccounted. The leases
that can still hold unused queries are the *outstanding* ones: unexpired, and by the sidecar
protocol at most the two latest of each pod (:func:`prune_leases`). Their ε value on one
ledger is

    at_risk = ε(ledger) - ε(ledger minus the counts of the outstanding leases)

(the ε the ledger would not have spent had none of them been used). A new lease gets at most
the largest n with ``ε(ledger + n) <= ε(ledger - outstanding) + 1% * limit``, so at_risk stays
within ``at_risk_fraction`` (1%) of that ledger's limit, except that a lease of 1 is granted
whenever one more query fits at all: progress is always possible.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from dpserve.accounting.events import Event
from dpserve.api.base import Condition, ConditionStatus
from dpserve.api.lease import LeaseErrorReason
from dpserve.api.mechanism import Mechanism
from dpserve.api.privacybudget import (
    LeaseRecord,
    LedgerEntry,
    PartitionStatus,
    PrivacyBudgetSpec,
    PrivacyBudgetStatus,
    TrainingSpend,
)
from dpserve.ledger import events as ev
from dpserve.ledger.accountant import Accounting
from dpserve.ledger.conditions import get_condition, parse_rfc3339, rfc3339, set_condition
from dpserve.ledger.rounding import format_up, remaining

READY = "Ready"
BUDGET_LOW = "BudgetLow"
EXHAUSTED = "Exhausted"
CONDITION_TYPES = (READY, BUDGET_LOW, EXHAUSTED)

# Schema limits of the status (api/privacybudget.py); the lease limit here is a soft one below
# the schema's 2048, because every grant rewrites the whole status object.
MAX_LEDGER_ENTRIES = 1024
MAX_PARTITION_STATUSES = 256
DEFAULT_MAX_LEASES = 1024
LEASES_KEPT_PER_POD = 2


@dataclass(frozen=True)
class LeasePolicy:
    """How leases are sized and kept."""

    ttl: timedelta = timedelta(seconds=300)
    at_risk_fraction: float = 0.01
    max_leases: int = DEFAULT_MAX_LEASES
    max_entries: int = MAX_LEDGER_ENTRIES

    def __post_init__(self) -> None:
        if self.ttl <= timedelta(0):
            raise ValueError("LeasePolicy.ttl must be positive")
        if not 0.0 < self.at_risk_fraction <= 1.0:
            raise ValueError("LeasePolicy.at_risk_fraction must be in (0, 1]")
        if not 1 <= self.max_leases <= 2048:
            raise ValueError("LeasePolicy.max_leases must be in [1, 2048] (the schema's limit)")
        if not 1 <= self.max_entries <= MAX_LEDGER_ENTRIES:
            raise ValueError(f"LeasePolicy.max_entries must be in [1, {MAX_LEDGER_ENTRIES}]")


@dataclass(frozen=True)
class BudgetEvent:
    """A Kubernetes Event the caller emits after the status carrying it is persisted."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class Limits:
    """The spec's numbers, parsed once."""

    epsilon: float
    epsilon_text: str
    delta: float
    kind: str
    thresholds: tuple[tuple[str, float], ...]
    partition_epsilon: float | None
    partition_epsilon_text: str | None
    tenants: frozenset[str] | None

    @classmethod
    def from_spec(cls, spec: PrivacyBudgetSpec) -> Limits:
        """The parsed spec, or a ValueError naming the bad field."""
        epsilon = ev.decimal_value(spec.epsilon, "spec.epsilon")
        delta = ev.decimal_value(spec.delta, "spec.delta")
        if delta >= 1.0:
            raise ValueError(f"spec.delta: must be < 1, got {spec.delta!r}")
        thresholds: dict[float, str] = {}  # by value: "0.8" and "0.80" are one threshold
        for index, text in enumerate(spec.alert_thresholds):
            value = ev.decimal_value(text, f"spec.alertThresholds[{index}]")
            if value >= 1.0:
                raise ValueError(f"spec.alertThresholds[{index}]: must be < 1, got {text!r}")
            thresholds.setdefault(value, text)
        partition_epsilon = partition_text = None
        tenants = None
        if spec.partitions is not None and spec.partitions.epsilon is not None:
            partition_text = spec.partitions.epsilon
            partition_epsilon = ev.decimal_value(partition_text, "spec.partitions.epsilon")
            if spec.partitions.tenants:
                tenants = frozenset(spec.partitions.tenants)
        return cls(
            epsilon=epsilon,
            epsilon_text=spec.epsilon,
            delta=delta,
            kind=spec.accountant,
            thresholds=tuple((text, value) for value, text in sorted(thresholds.items())),
            partition_epsilon=partition_epsilon,
            partition_epsilon_text=partition_text,
            tenants=tenants,
        )


@dataclass(frozen=True)
class StatusUpdate:
    status: PrivacyBudgetStatus
    events: tuple[BudgetEvent, ...] = ()


@dataclass(frozen=True)
class GrantRequest:
    """One lease request, already authenticated and matched to its PrivateModel."""

    consumer: str  # "<namespace>/<model>"
    model_version: str
    mechanism: Mechanism  # the model spec's mechanism (the request's was checked equal)
    requested: int
    lease_id: str
    pod: str
    partition: str | None = None
    training: TrainingSpend | None = None  # declared DP-SGD run of this version, charged once


@dataclass(frozen=True)
class Grant:
    status: PrivacyBudgetStatus
    granted: int
    lease: LeaseRecord
    epsilon_spent: float  # of the ledger charged (main or the tenant's)
    epsilon_remaining: float
    changed: bool  # the status must be persisted before answering
    replay: bool = False  # the lease id was granted before: same answer, no debit
    events: tuple[BudgetEvent, ...] = ()


@dataclass(frozen=True)
class Refusal:
    reason: LeaseErrorReason
    message: str
    epsilon_spent: float | None = None
    epsilon_remaining: float | None = None


@dataclass(frozen=True)
class TrainingRecorded:
    status: PrivacyBudgetStatus
    changed: bool
    # Set when a *different* run was already recorded for this version: it is kept (the
    # first record wins) and nothing is charged.
    existing: TrainingSpend | None = None
    events: tuple[BudgetEvent, ...] = field(default=())
    # With a run id: the differing runs of this version recorded before this one (this run
    # was charged as well: every run that touched the data is on the ledger).
    earlier_runs: tuple[TrainingSpend, ...] = ()

    @property
    def matches(self) -> bool:
        return self.existing is None


# --------------------------------------------------------------------------- helpers


def _entries(entries: Iterable[LedgerEntry], partition: str | None) -> list[LedgerEntry]:
    return [entry for entry in entries if entry.partition == partition]


def prune_leases(
    leases: Sequence[LeaseRecord], now: datetime, per_pod: int = LEASES_KEPT_PER_POD
) -> list[LeaseRecord]:
    """The lease records still worth keeping: unexpired, and each pod's ``per_pod`` latest.

    The sidecar protocol (docs/ledger.md) makes older records useless: a pod has one lease
    request in flight at a time (retries reuse its id), serves its leases in the order they
    were granted and asks for the next one only once the current one is in use. So only a
    pod's latest lease id can still be retried, and only its two latest leases can still
    hold unused queries. Keeping those bounds the status by the number of pods, not by the
    grant rate. Records are appended in grant order, so "latest" is list order.
    """
    seen: dict[tuple[str, str], int] = {}
    kept: list[LeaseRecord] = []
    for lease in reversed(leases):
        if parse_rfc3339(lease.expires_at) <= now:
            continue
        key = (lease.consumer, lease.pod)
        if seen.get(key, 0) >= per_pod:
            continue
        seen[key] = seen.get(key, 0) + 1
        kept.append(lease)
    kept.reverse()
    return kept


def _training_entry(
    entries: Iterable[LedgerEntry], consumer: str, version: str
) -> LedgerEntry | None:
    for entry in entries:
        if (
            entry.kind == "training"
            and entry.consumer == consumer
            and entry.model_version == version
        ):
            return entry
    return None


def _query_key(entry: LedgerEntry) -> tuple[object, ...]:
    assert entry.mechanism is not None
    return (
        entry.consumer,
        entry.model_version,
        entry.partition,
        ev.canonical_mechanism(entry.mechanism),
    )


def _subtract_outstanding(
    entries: Sequence[LedgerEntry],
    outstanding: Sequence[LeaseRecord],
    request_key: tuple[object, ...] | None,
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
        target = _lease_entry(entries, lease, request_key)
        if target is not None:
            counts[target] = max(0, counts[target] - lease.granted)
    return [
        entry.model_copy(update={"count": count})
        for entry, count in zip(entries, counts, strict=True)
    ]


def _lease_entry(
    entries: Sequence[LedgerEntry], lease: LeaseRecord, request_key: tuple[object, ...] | None
) -> int | None:
    """Index of the query entry ``lease`` was debited to (see :func:`_subtract_outstanding`)."""
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
        if _query_key(entry) == request_key:
            return index
        if lease.model_version is not None and latest is None:
            latest = index  # own version, another mechanism: the entry it was charged to
    return latest


def _ledger_numbers(status: PrivacyBudgetStatus, partition: str | None) -> tuple[float, float]:
    if partition is None:
        spent, left = status.epsilon_spent, status.epsilon_remaining
    else:
        found = [p for p in status.partitions if p.tenant == partition]
        spent, left = (
            (found[0].epsilon_spent, found[0].epsilon_remaining) if found else (None, None)
        )
    return float(spent or 0.0), float(left or 0.0)


# --------------------------------------------------------------------------- status


def compute_status(
    spec: PrivacyBudgetSpec,
    generation: int | None,
    status: PrivacyBudgetStatus | None,
    now: datetime,
    *,
    accounting: Accounting,
    probes: Sequence[Event] = (),
) -> StatusUpdate:
    """The status the budget should have: numbers, partitions, alerts, conditions, Events.

    ``status`` is the previous status (None on the first reconcile); its ledger and lease
    records are carried over (expired leases pruned), everything else is derived. ``probes``
    are extra query events whose exhaustion matters (the mechanisms of the PrivateModels
    bound to this budget); the mechanisms already on the ledger are always probed.
    """
    previous = status if status is not None else PrivacyBudgetStatus()
    leases = prune_leases(previous.leases, now)
    try:
        limits = Limits.from_spec(spec)
    except ValueError as exc:
        return StatusUpdate(
            _unknown_status(previous, leases, generation, now, "InvalidSpec", str(exc))
        )
    try:
        return _compute(limits, generation, previous, leases, now, accounting, probes)
    except ACCOUNTING_ERRORS as exc:
        return accounting_failed_status(previous, leases, generation, now, exc)


# What the accountant (numpy, dp-accounting, the events' own checks) raises when it cannot
# evaluate a spend: ZeroDivisionError, OverflowError and FloatingPointError are
# ArithmeticErrors. The schema's bounds keep admitted specs out of this; a spec that skipped
# admission (or a ledger entry written before the bounds) must still end in a condition.
ACCOUNTING_ERRORS: tuple[type[Exception], ...] = (ValueError, ArithmeticError)
ACCOUNTING_FAILED = "AccountingFailed"


def accounting_failed_status(
    previous: PrivacyBudgetStatus,
    leases: list[LeaseRecord],
    generation: int | None,
    now: datetime,
    exc: Exception,
) -> StatusUpdate:
    """Ready False, BudgetLow/Exhausted Unknown (never a claimed exhaustion), reason
    AccountingFailed, plus one Warning Event when the failure is new (not every reconcile)."""
    message = f"the accountant cannot evaluate this budget's spend: {accounting_message(exc)}"
    was = get_condition(previous.conditions, READY)
    status = _unknown_status(previous, leases, generation, now, ACCOUNTING_FAILED, message)
    if was is not None and was.reason == ACCOUNTING_FAILED and was.message == message:
        return StatusUpdate(status)
    return StatusUpdate(status, (BudgetEvent("Warning", ACCOUNTING_FAILED, message),))


def accounting_message(exc: Exception) -> str:
    """The error as one line: a ValueError's own message (it names the field), otherwise
    the arithmetic error's type too (``float division by zero`` alone says little)."""
    text = str(exc)
    if isinstance(exc, ValueError) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def evaluable(event: Event, limits: Limits, accounting: Accounting) -> Event:
    """``event``, once the accountant gives one release of it a finite ε (else it raises).

    ``max_additional`` works on RDP vectors in numpy, where an underflowed noise multiplier
    gives inf (with a warning, no exception) and so "0 more queries fit": the budget would
    be called exhausted for a mechanism the accountant simply cannot evaluate.
    """
    finite_epsilon(accounting.epsilon([(event, 1)], limits.delta, limits.kind), f"{event}")
    return event


def finite_epsilon(value: float, where: str) -> float:
    """``value``, or a ValueError: an infinite or NaN ε is a failed computation, never a
    spend (inf would read as "exhausted", NaN compares false to every limit)."""
    if not math.isfinite(value):
        raise ValueError(f"{where}: the accountant returned ε = {value!r}")
    return value


def invalid_spec_status(
    status: PrivacyBudgetStatus | None, generation: int | None, now: datetime, message: str
) -> PrivacyBudgetStatus:
    """The status of a budget whose spec cannot be read: ledger kept, conditions say why."""
    previous = status if status is not None else PrivacyBudgetStatus()
    return _unknown_status(
        previous, prune_leases(previous.leases, now), generation, now, "InvalidSpec", message
    )


def _unknown_status(
    previous: PrivacyBudgetStatus,
    leases: list[LeaseRecord],
    generation: int | None,
    now: datetime,
    reason: str,
    message: str,
) -> PrivacyBudgetStatus:
    conditions = list(previous.conditions)
    conditions = set_condition(
        conditions,
        type=READY,
        status="False",
        reason=reason,
        message=message,
        generation=generation,
        now=now,
    )
    for kind in (BUDGET_LOW, EXHAUSTED):
        conditions = set_condition(
            conditions,
            type=kind,
            status="Unknown",
            reason=reason,
            message=message,
            generation=generation,
            now=now,
        )
    return previous.model_copy(
        update={"observed_generation": generation, "leases": leases, "conditions": conditions}
    )


def _compute(
    limits: Limits,
    generation: int | None,
    previous: PrivacyBudgetStatus,
    leases: list[LeaseRecord],
    now: datetime,
    accounting: Accounting,
    probes: Sequence[Event],
) -> StatusUpdate:
    entries = list(previous.ledger)
    main = _entries(entries, None)
    main_spends = ev.spends(main)
    spent = finite_epsilon(accounting.epsilon(main_spends, limits.delta, limits.kind), "ledger")
    spent_text = format_up(spent)
    remaining_text = remaining(limits.epsilon_text, spent)

    partitions = _partition_statuses(limits, entries, accounting)

    # Exhausted: not one more query of any mechanism in use (or probed) fits the main ledger.
    candidates: dict[Event, None] = {}
    for entry in main:
        if entry.kind == "query":
            event = ev.entry_event(entry)
            if event is not None:
                candidates[evaluable(event, limits, accounting)] = None
    for probe in probes:
        candidates[evaluable(probe, limits, accounting)] = None
    blocked = [
        event
        for event in candidates
        if accounting.max_additional(
            main_spends, event, limits.epsilon, limits.delta, limits.kind, 1
        )
        < 1
    ]
    nothing_left = spent >= limits.epsilon
    exhausted = nothing_left or (bool(candidates) and len(blocked) == len(candidates))

    fraction = spent / limits.epsilon
    crossed = [text for text, value in limits.thresholds if fraction >= value]
    before = set(previous.alerts_fired)
    events: list[BudgetEvent] = []
    for text, value in limits.thresholds:
        if text in crossed and text not in before:
            events.append(
                BudgetEvent(
                    "Warning",
                    "BudgetThresholdCrossed",
                    f"ε spent {spent_text} of {limits.epsilon_text} "
                    f"({fraction:.1%}) crossed alert threshold {text} ({value:.0%})",
                )
            )
    # A threshold stays fired while it is crossed; raising ε (spec edit) re-arms it.
    alerts_fired = crossed

    where = f"ε spent {spent_text} of {limits.epsilon_text}, remaining {remaining_text}"
    conditions = list(previous.conditions)
    was_exhausted = get_condition(conditions, EXHAUSTED)
    if exhausted:
        why = (
            "nothing remains" if nothing_left else "not one more query of any mechanism in use fits"
        )
        conditions = _set(
            conditions, EXHAUSTED, "True", "BudgetExhausted", f"{where}: {why}", generation, now
        )
        conditions = _set(conditions, READY, "False", "BudgetExhausted", where, generation, now)
        if was_exhausted is None or was_exhausted.status != "True":
            events.append(BudgetEvent("Warning", "BudgetExhausted", f"{where}: {why}"))
    else:
        conditions = _set(conditions, EXHAUSTED, "False", "BudgetAvailable", where, generation, now)
        conditions = _set(conditions, READY, "True", "BudgetAvailable", where, generation, now)
        if was_exhausted is not None and was_exhausted.status == "True":
            events.append(BudgetEvent("Normal", "BudgetReplenished", where))
    if crossed or exhausted:
        highest = crossed[-1] if crossed else None
        message = where + (f": above alert threshold {highest}" if highest else ": exhausted")
        conditions = _set(
            conditions, BUDGET_LOW, "True", "ThresholdCrossed", message, generation, now
        )
    elif limits.thresholds:
        conditions = _set(
            conditions, BUDGET_LOW, "False", "BelowThresholds", where, generation, now
        )
    else:
        conditions = _set(conditions, BUDGET_LOW, "False", "NoThresholds", where, generation, now)

    new = previous.model_copy(
        update={
            "observed_generation": generation,
            "epsilon_spent": spent_text,
            "epsilon_remaining": remaining_text,
            # Every main-ledger entry of every model version, retired ones included: on one
            # budget this equals epsilonSpent (nothing is ever dropped from the ledger); it
            # is the number a PrivateModel sums over the budgets of its successive versions.
            "lifetime_epsilon": spent_text,
            "ledger": entries,
            "leases": leases,
            "partitions": partitions,
            "alerts_fired": alerts_fired,
            "conditions": conditions,
        }
    )
    return StatusUpdate(new, tuple(events))


def _set(
    conditions: list[Condition],
    type: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    generation: int | None,
    now: datetime,
) -> list[Condition]:
    return set_condition(
        conditions,
        type=type,
        status=status,
        reason=reason,
        message=message,
        generation=generation,
        now=now,
    )


def _partition_statuses(
    limits: Limits, entries: Sequence[LedgerEntry], accounting: Accounting
) -> list[PartitionStatus]:
    if limits.partition_epsilon is None or limits.partition_epsilon_text is None:
        return []
    tenants = {entry.partition for entry in entries if entry.partition is not None}
    tenants |= set(limits.tenants or ())
    rows: list[tuple[float, PartitionStatus]] = []
    for tenant in tenants:
        if tenant is None:
            continue
        spent = finite_epsilon(
            accounting.epsilon(ev.spends(_entries(entries, tenant)), limits.delta, limits.kind),
            f"partition {tenant!r}",
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


# --------------------------------------------------------------------------- grants


def grant(
    spec: PrivacyBudgetSpec,
    generation: int | None,
    status: PrivacyBudgetStatus | None,
    request: GrantRequest,
    now: datetime,
    *,
    accounting: Accounting,
    policy: LeasePolicy = LeasePolicy(),
) -> Grant | Refusal:
    """Grant the largest n <= requested queries that fit, debited into the new status.

    The caller persists ``Grant.status`` (when ``changed``) *before* it answers; a lease id
    already on the status is answered from its record (``replay``) and never debited twice.
    """
    previous = status if status is not None else PrivacyBudgetStatus()
    for record in previous.leases:
        if record.lease_id == request.lease_id:
            if (
                record.consumer != request.consumer
                or record.pod != request.pod
                or record.model_version not in (None, request.model_version)
            ):
                return Refusal(
                    "BadRequest",
                    f"leaseId: {request.lease_id!r} was already used by another model, "
                    "version or pod",
                )
            spent, left = _ledger_numbers(previous, record.partition)
            return Grant(previous, record.granted, record, spent, left, changed=False, replay=True)

    try:
        limits = Limits.from_spec(spec)
        event = ev.mechanism_event(request.mechanism)
    except ACCOUNTING_ERRORS as exc:
        return Refusal(
            "Unavailable", f"the budget or model spec is invalid: {accounting_message(exc)}"
        )

    partition: str | None = None
    limit = limits.epsilon
    if event is not None and ev.is_tenant_side(request.mechanism) and not limits.partition_epsilon:
        # A tenant's query-text spend is never debited from the dataset's ledger.
        return Refusal(
            "BadRequest",
            f"partition: {request.mechanism.type} queries protect the tenant's query text and "
            "are charged to a tenant partition, never to the dataset's ledger; the budget has "
            "no spec.partitions",
        )
    if event is not None and ev.is_tenant_side(request.mechanism) and limits.partition_epsilon:
        if request.partition is None:
            return Refusal(
                "BadRequest",
                "partition: required: the budget keeps per-tenant ledgers for "
                f"{request.mechanism.type} queries",
            )
        if limits.tenants is not None and request.partition not in limits.tenants:
            return Refusal(
                "Forbidden", f"partition: {request.partition!r} is not a tenant of the budget"
            )
        partition = request.partition
        limit = limits.partition_epsilon

    entries = list(previous.ledger)
    leases = prune_leases(previous.leases, now)
    changed = False

    if (
        request.training is not None
        and _training_entry(entries, request.consumer, request.model_version) is None
    ):
        charged = _charge_training(
            limits, entries, request.consumer, request.model_version, request.training, accounting
        )
        if isinstance(charged, Refusal):
            return charged
        entries = charged
        changed = True

    lease = LeaseRecord(
        lease_id=request.lease_id,
        consumer=request.consumer,
        model_version=request.model_version,
        pod=request.pod,
        partition=partition,
        granted=request.requested,
        expires_at=rfc3339(now + policy.ttl),
    )

    if event is None:
        # Free queries (post-processing of a DP-trained model): nothing to debit or record.
        update = compute_status(
            spec,
            generation,
            previous.model_copy(update={"ledger": entries, "leases": leases}),
            now,
            accounting=accounting,
        )
        spent, left = _ledger_numbers(update.status, None)
        return Grant(
            update.status,
            request.requested,
            lease,
            spent,
            left,
            changed=changed,
            events=update.events,
        )

    sub = _entries(entries, partition)
    try:
        return _grant_queries(
            spec, generation, previous, request, now, accounting, policy,
            limits, event, partition, limit, entries, leases, lease, sub,
        )
    except ACCOUNTING_ERRORS as exc:
        return Refusal("Unavailable", f"accounting failed: {accounting_message(exc)}")


def _grant_queries(
    spec: PrivacyBudgetSpec,
    generation: int | None,
    previous: PrivacyBudgetStatus,
    request: GrantRequest,
    now: datetime,
    accounting: Accounting,
    policy: LeasePolicy,
    limits: Limits,
    event: Event,
    partition: str | None,
    limit: float,
    entries: list[LedgerEntry],
    leases: list[LeaseRecord],
    lease: LeaseRecord,
    sub: list[LedgerEntry],
) -> Grant | Refusal:
    """The debit of a paid query lease (``grant``'s second half; accounting errors raise)."""
    sub_spends = ev.spends(sub)
    fit = accounting.max_additional(
        sub_spends, evaluable(event, limits, accounting), limit, limits.delta, limits.kind,
        request.requested,
    )
    if fit < 1:
        spent = finite_epsilon(accounting.epsilon(sub_spends, limits.delta, limits.kind), "ledger")
        whose = f"tenant {partition!r}" if partition else "the budget"
        limit_text = limits.partition_epsilon_text if partition else limits.epsilon_text
        return Refusal(
            "BudgetExhausted",
            f"not one more {request.mechanism.type} query fits {whose}: "
            f"ε spent {format_up(spent)} of {limit_text}",
            epsilon_spent=float(format_up(spent)),
            epsilon_remaining=float(remaining(limit_text or "0", spent)),
        )

    kept = prune_leases([*leases, lease], now)
    if len(kept) > policy.max_leases:
        return Refusal(
            "Unavailable",
            f"{len(kept) - 1} unexpired leases on this budget (limit {policy.max_leases}); "
            "retry when some expire",
        )
    key = (
        request.consumer,
        request.model_version,
        partition,
        ev.canonical_mechanism(request.mechanism),
    )
    # At risk after this grant: the leases that may still hold unused queries (each pod's
    # latest two, the new one included); the new one is added as the n being solved for.
    outstanding = [r for r in kept if r is not lease and r.partition == partition]
    base = finite_epsilon(accounting.epsilon(
        ev.spends(_subtract_outstanding(sub, outstanding, key)), limits.delta, limits.kind
    ), "ledger")
    ceiling = min(limit, base + policy.at_risk_fraction * limit)
    within_risk = accounting.max_additional(
        sub_spends, event, ceiling, limits.delta, limits.kind, fit
    )
    granted = min(fit, max(1, within_risk))

    debited = _debit(entries, request, partition, granted, policy.max_entries)
    if isinstance(debited, Refusal):
        return debited
    lease = lease.model_copy(update={"granted": granted})
    update = compute_status(
        spec,
        generation,
        previous.model_copy(update={"ledger": debited, "leases": [*leases, lease]}),
        now,
        accounting=accounting,
    )
    spent, left = _ledger_numbers(update.status, partition)
    return Grant(update.status, granted, lease, spent, left, changed=True, events=update.events)


def _debit(
    entries: list[LedgerEntry],
    request: GrantRequest,
    partition: str | None,
    count: int,
    max_entries: int,
) -> list[LedgerEntry] | Refusal:
    key = (
        request.consumer,
        request.model_version,
        partition,
        ev.canonical_mechanism(request.mechanism),
    )
    out = list(entries)
    for index, entry in enumerate(out):
        if entry.kind == "query" and entry.mechanism is not None and _query_key(entry) == key:
            out[index] = entry.model_copy(update={"count": entry.count + count})
            return out
    if len(out) >= max_entries:
        return Refusal(
            "Unavailable", f"the budget's ledger is full ({len(out)} entries); nothing granted"
        )
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


def _charge_training(
    limits: Limits,
    entries: list[LedgerEntry],
    consumer: str,
    version: str,
    spend: TrainingSpend,
    accounting: Accounting,
    run: str | None = None,
) -> list[LedgerEntry] | Refusal:
    entry = LedgerEntry(
        consumer=consumer, model_version=version, kind="training", training=spend, count=1,
        run=run,
    )
    try:
        after = finite_epsilon(accounting.epsilon(
            ev.spends([*_entries(entries, None), entry]), limits.delta, limits.kind
        ), "training")
        before = (
            finite_epsilon(accounting.epsilon(
                ev.spends(_entries(entries, None)), limits.delta, limits.kind
            ), "ledger")
            if after > limits.epsilon else 0.0
        )
    except ACCOUNTING_ERRORS as exc:
        return Refusal("Unavailable", f"accounting failed: {accounting_message(exc)}")
    if after > limits.epsilon:
        return Refusal(
            "BudgetExhausted",
            f"the DP-SGD run of {consumer} {version} costs more than remains: ε would be "
            f"{format_up(after)} of {limits.epsilon_text}",
            epsilon_spent=float(format_up(before)),
            epsilon_remaining=float(remaining(limits.epsilon_text, before)),
        )
    return [*entries, entry]


def record_training(
    spec: PrivacyBudgetSpec,
    generation: int | None,
    status: PrivacyBudgetStatus | None,
    *,
    consumer: str,
    model_version: str,
    spend: TrainingSpend,
    now: datetime,
    accounting: Accounting,
    run: str | None = None,
) -> TrainingRecorded | Refusal:
    """Charge one DP-SGD run of ``consumer``'s ``model_version`` once (idempotent).

    Without ``run`` (the model's declared training): a run already recorded for that
    version is never charged again; if the recorded run differs from ``spend``, it is kept
    (first wins) and reported in ``existing``. With ``run`` (a retraining Job's uid): the
    same run is charged once; a *different* run of the same version is charged too (it
    trained on the data as well) and the earlier differing runs are reported in
    ``earlier_runs``.
    """
    previous = status if status is not None else PrivacyBudgetStatus()
    earlier: tuple[TrainingSpend, ...] = ()
    if run is not None:
        runs = [e for e in previous.ledger if e.kind == "training" and e.consumer == consumer
                and e.model_version == model_version and e.training is not None]
        mine = next((e for e in runs if e.run == run), None)
        if mine is not None:
            assert mine.training is not None
            same = ev.training_event(mine.training) == ev.training_event(spend)
            return TrainingRecorded(previous, changed=False,
                                    existing=None if same else mine.training)
        earlier = tuple(e.training for e in runs if e.training is not None)
    found = _training_entry(previous.ledger, consumer, model_version) if run is None else None
    if found is not None:
        same = found.training is not None and ev.training_event(
            found.training
        ) == ev.training_event(spend)
        return TrainingRecorded(previous, changed=False, existing=None if same else found.training)
    try:
        limits = Limits.from_spec(spec)
    except ValueError as exc:
        return Refusal("Unavailable", f"the budget spec is invalid: {exc}")
    charged = _charge_training(
        limits, list(previous.ledger), consumer, model_version, spend, accounting, run
    )
    if isinstance(charged, Refusal):
        return charged
    update = compute_status(
        spec,
        generation,
        previous.model_copy(update={"ledger": charged}),
        now,
        accounting=accounting,
    )
    return TrainingRecorded(update.status, changed=True, events=update.events,
                            earlier_runs=earlier)


def query_fits(
    spec: PrivacyBudgetSpec,
    status: PrivacyBudgetStatus | None,
    mechanism: Mechanism,
    *,
    accounting: Accounting,
    partition: str | None = None,
) -> bool:
    """Whether one more query of ``mechanism`` fits (the PrivateModel controller's question).

    A spec or spend the accountant cannot evaluate raises a ValueError saying so (never a
    bare ZeroDivisionError or OverflowError): the caller turns it into a condition.
    """
    try:
        return _query_fits(spec, status, mechanism, accounting, partition)
    except ArithmeticError as exc:
        raise ValueError(f"accounting failed: {accounting_message(exc)}") from exc


def _query_fits(
    spec: PrivacyBudgetSpec,
    status: PrivacyBudgetStatus | None,
    mechanism: Mechanism,
    accounting: Accounting,
    partition: str | None,
) -> bool:
    limits = Limits.from_spec(spec)
    event = ev.mechanism_event(mechanism)
    if event is None:
        return True
    entries = status.ledger if status is not None else []
    limit = limits.epsilon
    target: str | None = None
    if ev.is_tenant_side(mechanism):
        if not limits.partition_epsilon:
            return False  # never charged to the dataset's ledger: no partitions, no query fits
        if partition is not None:
            target, limit = partition, limits.partition_epsilon
    spends = ev.spends(_entries(entries, target))
    event = evaluable(event, limits, accounting)
    if accounting.max_additional(spends, event, limit, limits.delta, limits.kind, 1) >= 1:
        return True
    # "Exhausted" only when the spend so far is a number (an unevaluable ledger entry is not).
    finite_epsilon(accounting.epsilon(spends, limits.delta, limits.kind), "ledger")
    return False


# --------------------------------------------------------------------------- tampering
#
# Recorded spend is monotone: counts only grow, entries are never removed. A status that
# holds less than a ledger process last wrote or read (an edit through the status
# subresource, a restore from an old backup) lost spend; grants must not start from it.


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

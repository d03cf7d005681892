"""The PrivacyBudget status computed from its ledger: numbers, partitions, alerts, conditions.

Pure: (spec, generation, previous status, now) -> status and the Events it implies. Entries
are never erased and counts never decrease: a recorded spend stays recorded through restarts,
model retirement and spec edits; ε may be raised by a spec edit and Exhausted may then flip
back.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from dpserve.accounting.events import Event, Spend
from dpserve.api.privacybudget import (
    LeaseRecord,
    LedgerEntry,
    PrivacyBudgetSpec,
    PrivacyBudgetStatus,
)
from dpserve.ledger import events as ev
from dpserve.ledger.accountant import Accounting
from dpserve.ledger.budget_conditions import (
    READY,
    Reading,
    budget_conditions,
    crossed_thresholds,
    threshold_events,
    unknown_status,
)
from dpserve.ledger.conditions import get_condition
from dpserve.ledger.entries import on_ledger
from dpserve.ledger.evaluation import (
    ACCOUNTING_ERRORS,
    ACCOUNTING_FAILED,
    accounting_message,
    evaluable,
    ledger_epsilon,
)
from dpserve.ledger.leases import retain_records
from dpserve.ledger.limits import Limits
from dpserve.ledger.outcomes import BudgetEvent, StatusUpdate
from dpserve.ledger.partitions import listed, partition_statuses
from dpserve.ledger.rounding import format_up, remaining


def compute_status(
    spec: PrivacyBudgetSpec,
    generation: int | None,
    status: PrivacyBudgetStatus | None,
    now: datetime,
    *,
    accounting: Accounting,
    probes: Sequence[Event] = (),
    still_fits: Event | None = None,
) -> StatusUpdate:
    """The status the budget should have: numbers, partitions, alerts, conditions, Events.

    ``status`` is the previous status (None on the first reconcile); its ledger and lease
    records are carried over (expired leases pruned), everything else is derived. ``probes``
    are extra query events whose exhaustion matters (the mechanisms of the PrivateModels
    bound to this budget); the mechanisms already on the ledger are always probed.
    ``still_fits``: a query event the caller has shown to fit the main ledger at least once
    more (a grant that left room for its own mechanism), so it is not solved for again.
    """
    previous = status if status is not None else PrivacyBudgetStatus()
    leases = retain_records(previous.leases, now)
    try:
        limits = Limits.from_spec(spec)
    except ValueError as exc:
        return StatusUpdate(
            unknown_status(previous, leases, generation, now, "InvalidSpec", str(exc))
        )
    try:
        return _compute(
            limits, generation, previous, leases, now, accounting, probes, still_fits
        )
    except ACCOUNTING_ERRORS as exc:
        return accounting_failed_status(previous, leases, generation, now, exc)


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
    status = unknown_status(previous, leases, generation, now, ACCOUNTING_FAILED, message)
    if was is not None and was.reason == ACCOUNTING_FAILED and was.message == message:
        return StatusUpdate(status)
    return StatusUpdate(status, (BudgetEvent("Warning", ACCOUNTING_FAILED, message),))


def invalid_spec_status(
    status: PrivacyBudgetStatus | None, generation: int | None, now: datetime, message: str
) -> PrivacyBudgetStatus:
    """The status of a budget whose spec cannot be read: ledger kept, conditions say why."""
    previous = status if status is not None else PrivacyBudgetStatus()
    return unknown_status(
        previous, retain_records(previous.leases, now), generation, now, "InvalidSpec", message
    )


def _compute(
    limits: Limits,
    generation: int | None,
    previous: PrivacyBudgetStatus,
    leases: list[LeaseRecord],
    now: datetime,
    accounting: Accounting,
    probes: Sequence[Event],
    still_fits: Event | None,
) -> StatusUpdate:
    entries = list(previous.ledger)
    main = on_ledger(entries, None)
    spends = ev.spends(main)
    spent = ledger_epsilon(spends, limits, accounting)
    partitions = partition_statuses(limits, entries, accounting)
    # Evaluated even when nothing is left: an unevaluable mechanism is a failed computation.
    blocked = _all_blocked(limits, main, spends, probes, accounting, still_fits)
    nothing_left = spent >= limits.epsilon
    reading = Reading(
        spent_text=format_up(spent),
        remaining_text=remaining(limits.epsilon_text, spent),
        fraction=spent / limits.epsilon,
        exhausted=nothing_left or blocked,
        nothing_left=nothing_left,
    )
    crossed = crossed_thresholds(limits, reading.fraction)
    events = threshold_events(limits, reading, crossed, previous.alerts_fired)
    conditions, flips = budget_conditions(
        previous.conditions, limits, reading, crossed, generation, now
    )
    new = previous.model_copy(
        update={
            "observed_generation": generation,
            "epsilon_spent": reading.spent_text,
            "epsilon_remaining": reading.remaining_text,
            # Every main-ledger entry of every model version, retired ones included: on one
            # budget this equals epsilonSpent (nothing is ever dropped from the ledger); it
            # is the number a PrivateModel sums over the budgets of its successive versions.
            "lifetime_epsilon": reading.spent_text,
            "ledger": entries,
            "leases": leases,
            "partitions": listed(partitions),
            "tenant_count": len(partitions) if limits.partition_epsilon is not None else None,
            # A threshold stays fired while it is crossed; raising ε (spec edit) re-arms it.
            "alerts_fired": crossed,
            "conditions": conditions,
        }
    )
    return StatusUpdate(new, tuple([*events, *flips]), tuple(partitions))


def _all_blocked(
    limits: Limits,
    main: Sequence[LedgerEntry],
    spends: Sequence[Spend],
    probes: Sequence[Event],
    accounting: Accounting,
    still_fits: Event | None = None,
) -> bool:
    """Whether not one more query of any mechanism in use (or probed) fits the main ledger.

    Every other candidate is still solved for: one that cannot be evaluated must raise.
    """
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
        if event != still_fits
        and accounting.max_additional(
            spends, event, limits.epsilon, limits.delta, limits.kind, 1
        )
        < 1
    ]
    return bool(candidates) and len(blocked) == len(candidates)

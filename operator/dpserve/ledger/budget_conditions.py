"""The budget's conditions (Ready, BudgetLow, Exhausted) and the Events their flips emit.

Pure: given what the numbers say (exhausted or not, thresholds crossed), the new condition
list and the Events of the transitions. :mod:`dpserve.ledger.conditions` holds the generic
metav1.Condition bookkeeping underneath.

Every condition list the ledger writes also carries the kstatus pair ``Reconciling`` and
``Stalled``, decided from Ready by :func:`dpserve.controllers.kstatus.budget_kstatus`, so
GitOps tools (Flux's kstatus, the Argo CD check in ``charts/dpserve/health``) read a budget
as they read a model: an invalid spec or an accountant that cannot evaluate is Stalled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from dpserve.api.base import Condition, ConditionStatus
from dpserve.api.privacybudget import LeaseRecord, PrivacyBudgetStatus
from dpserve.controllers.kstatus import RECONCILING, STALLED, budget_kstatus
from dpserve.ledger.conditions import get_condition, set_condition
from dpserve.ledger.limits import Limits
from dpserve.ledger.outcomes import BudgetEvent

READY = "Ready"
BUDGET_LOW = "BudgetLow"
EXHAUSTED = "Exhausted"
CONDITION_TYPES = (READY, BUDGET_LOW, EXHAUSTED)


@dataclass(frozen=True)
class Reading:
    """What the numbers of the main ledger say, as the conditions report it."""

    spent_text: str
    remaining_text: str
    fraction: float  # ε spent / ε
    exhausted: bool
    nothing_left: bool  # ε spent >= ε (else: not one more query of any mechanism fits)


def crossed_thresholds(limits: Limits, fraction: float) -> list[str]:
    """The alert thresholds (as written in the spec) that ``fraction`` has crossed."""
    return [text for text, value in limits.thresholds if fraction >= value]


def threshold_events(
    limits: Limits, reading: Reading, crossed: Sequence[str], fired_before: Sequence[str]
) -> list[BudgetEvent]:
    """One BudgetThresholdCrossed per threshold crossed since the alerts last fired."""
    before = set(fired_before)
    return [
        BudgetEvent(
            "Warning",
            "BudgetThresholdCrossed",
            f"ε spent {reading.spent_text} of {limits.epsilon_text} "
            f"({reading.fraction:.1%}) crossed alert threshold {text} ({value:.0%})",
        )
        for text, value in limits.thresholds
        if text in crossed and text not in before
    ]


def budget_conditions(
    previous: Sequence[Condition],
    limits: Limits,
    reading: Reading,
    crossed: Sequence[str],
    generation: int | None,
    now: datetime,
) -> tuple[list[Condition], list[BudgetEvent]]:
    """Exhausted, Ready and BudgetLow for ``reading``, and the Events of Exhausted's flips."""
    where = (f"ε spent {reading.spent_text} of {limits.epsilon_text}, "
             f"remaining {reading.remaining_text}")
    conditions = list(previous)
    events: list[BudgetEvent] = []
    was_exhausted = get_condition(conditions, EXHAUSTED)
    if reading.exhausted:
        why = ("nothing remains" if reading.nothing_left
               else "not one more query of any mechanism in use fits")
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
    conditions = _budget_low(conditions, limits, reading, crossed, where, generation, now)
    return with_kstatus(conditions, generation, now), events


def with_kstatus(
    conditions: list[Condition], generation: int | None, now: datetime
) -> list[Condition]:
    """``conditions`` with Reconciling and Stalled set as kstatus decides from Ready."""
    decided = budget_kstatus(conditions)
    for kind, cond in ((RECONCILING, decided.reconciling), (STALLED, decided.stalled)):
        conditions = _set(conditions, kind, cond.status, cond.reason, cond.message,
                          generation, now)
    return conditions


def _budget_low(
    conditions: list[Condition],
    limits: Limits,
    reading: Reading,
    crossed: Sequence[str],
    where: str,
    generation: int | None,
    now: datetime,
) -> list[Condition]:
    if crossed or reading.exhausted:
        highest = crossed[-1] if crossed else None
        message = where + (f": above alert threshold {highest}" if highest else ": exhausted")
        return _set(conditions, BUDGET_LOW, "True", "ThresholdCrossed", message, generation, now)
    if limits.thresholds:
        return _set(conditions, BUDGET_LOW, "False", "BelowThresholds", where, generation, now)
    return _set(conditions, BUDGET_LOW, "False", "NoThresholds", where, generation, now)


def unknown_status(
    previous: PrivacyBudgetStatus,
    leases: list[LeaseRecord],
    generation: int | None,
    now: datetime,
    reason: str,
    message: str,
) -> PrivacyBudgetStatus:
    """Ready False, BudgetLow and Exhausted Unknown (never a claimed exhaustion): why in
    ``reason``/``message``; the ledger and lease records are kept."""
    conditions = _set(list(previous.conditions), READY, "False", reason, message, generation, now)
    for kind in (BUDGET_LOW, EXHAUSTED):
        conditions = _set(conditions, kind, "Unknown", reason, message, generation, now)
    conditions = with_kstatus(conditions, generation, now)
    return previous.model_copy(
        update={"observed_generation": generation, "leases": leases, "conditions": conditions}
    )


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

"""The PrivateModel's status bookkeeping: conditions, phase, Events on transitions (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from dpserve.api.base import ConditionStatus
from dpserve.api.privatemodel import PrivateModelStatus
from dpserve.controllers import kstatus
from dpserve.ledger.conditions import get_condition, set_condition

READY = "Ready"
BUDGET_AVAILABLE = "BudgetAvailable"
CONFIDENTIAL = "Confidential"
RETRAINING = "Retraining"
ATTESTED = "Attested"
CONDITION_TYPES = (READY, BUDGET_AVAILABLE, CONFIDENTIAL, RETRAINING)
# Present only while configured: Attested exists on models with spec.confidential.attestation.
OPTIONAL_CONDITION_TYPES = (ATTESTED,)

# Which status of each condition is the healthy one (drives the Event type on a flip).
_HEALTHY: dict[str, ConditionStatus] = {
    READY: "True", BUDGET_AVAILABLE: "True", CONFIDENTIAL: "True", RETRAINING: "False",
    ATTESTED: "True",
}
REPORT_MISMATCH = "ReportMismatch"
# Retraining=False for these reasons is not "idle": the retrain was refused, or the Job's
# report disagreed with what was charged (a Warning Event each time).
REFUSED_REASONS = frozenset({"NextBudgetSpent", "NextBudgetExhausted", REPORT_MISMATCH})


@dataclass(frozen=True)
class Transition:
    type: str  # Normal | Warning
    reason: str
    message: str


class StatusBuilder:
    """Collects one reconcile's decisions on a copy of the previous status."""

    def __init__(self, previous: PrivateModelStatus, generation: int | None, now: datetime):
        self.previous = previous
        self.status = previous.model_copy(deep=True)
        self.generation = generation
        self.now = now
        for kind in CONDITION_TYPES:  # written on the first reconcile, even as Unknown
            if get_condition(self.status.conditions, kind) is None:
                self.set(kind, "Unknown", "Initializing", "not reconciled yet")

    def set(self, kind: str, status: ConditionStatus, reason: str, message: str) -> None:
        self.status.conditions = set_condition(
            self.status.conditions, type=kind, status=status, reason=reason, message=message,
            generation=self.generation, now=self.now,
        )

    def remove(self, kind: str) -> None:
        """Drop an optional condition (its feature is no longer configured)."""
        self.status.conditions = [c for c in self.status.conditions if c.type != kind]

    def condition_status(self, kind: str) -> str | None:
        cond = get_condition(self.status.conditions, kind)
        return cond.status if cond is not None else None

    def finish(self) -> PrivateModelStatus:
        """The status to write: this generation observed, Reconciling / Stalled derived."""
        self.status.observed_generation = self.generation
        decided = kstatus.model_kstatus(
            generation=self.generation, observed_generation=self.generation,
            phase=self.status.phase, conditions=self.status.conditions)
        for kind, cond in ((kstatus.RECONCILING, decided.reconciling),
                           (kstatus.STALLED, decided.stalled)):
            self.set(kind, cond.status, cond.reason, cond.message[:32768])
        return self.status

    def transitions(self) -> list[Transition]:
        """Events for what changed: a phase change and every condition flip."""
        out: list[Transition] = []
        old_phase, new_phase = self.previous.phase, self.status.phase
        if new_phase is not None and new_phase != old_phase:
            bad = new_phase in ("BudgetExhausted", "Blocked", "Failed")
            out.append(Transition("Warning" if bad else "Normal", new_phase,
                                  f"phase {old_phase or 'None'} -> {new_phase}"))
        for kind in (*CONDITION_TYPES, *OPTIONAL_CONDITION_TYPES):
            before = get_condition(self.previous.conditions, kind)
            after = get_condition(self.status.conditions, kind)
            if after is None or after.status == "Unknown":
                continue
            if before is not None and before.status == after.status and \
                    before.reason == after.reason:
                continue
            healthy = after.status == _HEALTHY[kind] and after.reason not in REFUSED_REASONS
            known_before = before is not None and before.status != "Unknown"
            # Ready follows the phase (which has its own Event) except when it breaks; other
            # conditions are announced when they turn bad, or recover from a known state.
            if kind == READY and (healthy or not known_before):
                continue
            if healthy and not known_before:
                continue
            out.append(Transition("Normal" if healthy else "Warning", after.reason,
                                  f"{kind}={after.status}: {after.message}"))
        return out

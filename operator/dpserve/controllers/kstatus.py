"""kstatus conditions of a PrivateModel (Reconciling, Stalled), as pure functions.

GitOps tools decide "healthy / progressing / degraded" from a few conventional fields
(sigs.k8s.io/cli-utils kstatus, which Flux uses; Argo CD's Lua health checks in
``charts/dpserve/health/`` read the same ones):

- ``status.observedGeneration`` behind ``metadata.generation``: the spec edit is not
  reconciled yet (in progress);
- ``Reconciling=True``: the operator is working towards the spec (rolling out, waiting for
  its budget to appear, retraining);
- ``Stalled=True``: it cannot get there without a change by someone (an invalid spec, an
  unreadable status, an accountant that cannot evaluate the spend, a budget exhausted with
  no retraining, a crash-looping container, an impossible placement, a refused spec edit);
- ``Ready`` mirrors them: it is True only when neither is.

The decision is made from the conditions and phase one reconcile already decided, so every
path that writes a status (the reconcile, an invalid spec) gets the same answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dpserve.api.base import Condition, ConditionStatus
from dpserve.controllers.readiness import FAILING_REASONS
from dpserve.ledger.conditions import get_condition

RECONCILING = "Reconciling"
STALLED = "Stalled"
KSTATUS_TYPES = (RECONCILING, STALLED)

SPEC_EDIT_REFUSED = "SpecEditRefused"
# Ready reasons that no amount of waiting resolves: someone must change something.
STALLED_READY_REASONS = frozenset({
    "InvalidSpec", "StatusUnreadable", "ResourceConflict", "InvalidBudget",
    "AccountingFailed", "ProgressDeadlineExceeded", SPEC_EDIT_REFUSED, *FAILING_REASONS,
})
# BudgetAvailable reasons that stop the model until the budget is fixed or raised.
STALLED_BUDGET_REASONS = frozenset({"AccountingFailed", "InvalidBudget"})


@dataclass(frozen=True)
class KCondition:
    status: ConditionStatus
    reason: str
    message: str


@dataclass(frozen=True)
class KStatus:
    reconciling: KCondition
    stalled: KCondition


_IDLE = KCondition("False", "Reconciled", "the status reflects the current spec")
_NOT_STALLED = KCondition("False", "NotStalled", "nothing blocks reconciling")


def _stalled(reason: str, message: str) -> KStatus:
    return KStatus(KCondition("False", "Stalled", f"stalled: {reason}"),
                   KCondition("True", reason, message))


def _reconciling(reason: str, message: str) -> KStatus:
    return KStatus(KCondition("True", reason, message), _NOT_STALLED)


def model_kstatus(
    *, generation: int | None, observed_generation: int | None, phase: str | None,
    conditions: Sequence[Condition],
) -> KStatus:
    """Reconciling and Stalled of a PrivateModel from its phase and other conditions."""
    if generation is not None and observed_generation != generation:
        return _reconciling("NewGeneration",
                            f"generation {generation} is not reconciled yet "
                            f"(observed {observed_generation})")
    ready = get_condition(conditions, "Ready")
    budget = get_condition(conditions, "BudgetAvailable")
    retraining = get_condition(conditions, "Retraining")
    if ready is not None and ready.status != "True" and ready.reason in STALLED_READY_REASONS:
        return _stalled(ready.reason, ready.message)
    if budget is not None and budget.status == "False" and \
            budget.reason in STALLED_BUDGET_REASONS:
        return _stalled(budget.reason, budget.message)
    if phase == "Blocked":
        reason = ready.reason if ready is not None else "Blocked"
        return _stalled(reason, ready.message if ready is not None else "placement impossible")
    if phase == "Failed":
        reason = ready.reason if ready is not None else "Failed"
        return _stalled(reason, ready.message if ready is not None else "failed")
    retrain_running = retraining is not None and retraining.status == "True"
    if phase == "Retraining" or retrain_running:
        return _reconciling("Retraining", retraining.message if retraining is not None
                            else "a retraining Job runs")
    if phase == "BudgetExhausted":
        why = budget.message if budget is not None and budget.status == "False" else \
            "the budget cannot pay one more query"
        return _stalled("BudgetExhausted", f"{why}; no retraining runs: raise the budget's "
                        "spec.epsilon, or configure onBudgetExhausted: Retrain")
    if ready is not None and ready.status == "True":
        return KStatus(_IDLE, _NOT_STALLED)
    if phase == "Pending" and ready is not None and ready.reason == "ScaledToZero":
        return KStatus(_IDLE, _NOT_STALLED)  # spec.serving.replicas is 0: that is the spec
    if ready is None:
        return _reconciling("Initializing", "not reconciled yet")
    if budget is not None and budget.status == "False":  # e.g. BudgetNotFound: say which
        return _reconciling(budget.reason, budget.message)
    return _reconciling(ready.reason, ready.message)


# Ready reasons of a PrivacyBudget (written by dpserve.ledger.state) that need a person.
BUDGET_STALLED_REASONS = frozenset({"InvalidSpec", "AccountingFailed"})


def budget_kstatus(conditions: Sequence[Condition]) -> KStatus:
    """Reconciling and Stalled of a PrivacyBudget from the ledger's Ready condition.

    The ledger computes a budget's status in one synchronous step, so it never stays
    Reconciling; it is Stalled when it cannot tell what remains (an invalid spec, an
    accountant that cannot evaluate the ledger). An exhausted budget is not stalled: being
    spent is what a budget is for, and a budget a model retrained away from stays exhausted
    for good; the PrivateModel bound to it is the one that reports whether that stops
    serving (Stalled, reason BudgetExhausted, when nothing retrains).
    """
    ready = get_condition(conditions, "Ready")
    if ready is not None and ready.status == "False" and ready.reason in BUDGET_STALLED_REASONS:
        return _stalled(ready.reason, ready.message)
    return KStatus(_IDLE, _NOT_STALLED)

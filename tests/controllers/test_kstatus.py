"""Reconciling / Stalled of a PrivateModel (the kstatus conventions GitOps tools read)."""

from __future__ import annotations

import pytest

from dpserve.api.base import Condition, ConditionStatus
from dpserve.controllers.kstatus import KStatus, budget_kstatus, model_kstatus

T = "2025-01-01T00:00:00Z"


def cond(kind: str, status: ConditionStatus, reason: str, message: str = "m") -> Condition:
    return Condition(type=kind, status=status, reason=reason, message=message,
                     last_transition_time=T, observed_generation=3)


def short(result: KStatus) -> tuple[str, str, str, str]:
    return (result.reconciling.status, result.reconciling.reason, result.stalled.status,
            result.stalled.reason)


READY = cond("Ready", "True", "MinimumReplicasAvailable")
BUDGET_OK = cond("BudgetAvailable", "True", "BudgetAvailable")
BUDGET_GONE = cond("BudgetAvailable", "False", "BudgetExhausted", "ε spent 8 of 8")
IDLE = cond("Retraining", "False", "NotConfigured")
RUNNING = cond("Retraining", "True", "JobRunning", "Job m-train-v2 trains v2")


@pytest.mark.parametrize(("observed", "phase", "conditions", "expected"), [
    # serving the current spec: current
    (3, "Serving", [READY, BUDGET_OK, IDLE], ("False", "Reconciled", "False", "NotStalled")),
    # a spec edit not yet observed: in progress, whatever the old conditions said
    (2, "Serving", [READY, BUDGET_OK, IDLE], ("True", "NewGeneration", "False", "NotStalled")),
    (None, None, [], ("True", "NewGeneration", "False", "NotStalled")),
    # rolling out: the Deployment has not made every replica available yet
    (3, "Progressing", [cond("Ready", "False", "Progressing"), BUDGET_OK, IDLE],
     ("True", "Progressing", "False", "NotStalled")),
    (3, "Progressing", [cond("Ready", "False", "DeploymentMissing"), BUDGET_OK, IDLE],
     ("True", "DeploymentMissing", "False", "NotStalled")),
    # waiting for a budget a GitOps sync applies later: in progress, not stalled
    (3, "Pending", [cond("Ready", "False", "BudgetNotFound"),
                    cond("BudgetAvailable", "False", "BudgetNotFound"), IDLE],
     ("True", "BudgetNotFound", "False", "NotStalled")),
    # replicas: 0 is the spec, not a failure
    (3, "Pending", [cond("Ready", "False", "ScaledToZero"), BUDGET_OK, IDLE],
     ("False", "Reconciled", "False", "NotStalled")),
    # retraining towards a new version: in progress
    (3, "Retraining", [cond("Ready", "False", "Retraining"), BUDGET_GONE, RUNNING],
     ("True", "Retraining", "False", "NotStalled")),
    # exhausted and nothing retrains: stalled until someone raises ε or configures Retrain
    (3, "BudgetExhausted", [cond("Ready", "False", "BudgetExhausted"), BUDGET_GONE, IDLE],
     ("False", "Stalled", "True", "BudgetExhausted")),
    # a refused or given-up retrain leaves it exhausted: stalled
    (3, "BudgetExhausted", [cond("Ready", "False", "BudgetExhausted"), BUDGET_GONE,
                            cond("Retraining", "False", "RetrainFailed")],
     ("False", "Stalled", "True", "BudgetExhausted")),
    # what only a person can fix
    (3, "Failed", [cond("Ready", "False", "InvalidSpec"), IDLE],
     ("False", "Stalled", "True", "InvalidSpec")),
    (3, "Serving", [cond("Ready", "False", "StatusUnreadable")],
     ("False", "Stalled", "True", "StatusUnreadable")),
    (3, "Pending", [cond("Ready", "False", "AccountingFailed"),
                    cond("BudgetAvailable", "False", "AccountingFailed"), IDLE],
     ("False", "Stalled", "True", "AccountingFailed")),
    (3, "Pending", [cond("Ready", "False", "InvalidBudget"),
                    cond("BudgetAvailable", "False", "InvalidBudget"), IDLE],
     ("False", "Stalled", "True", "InvalidBudget")),
    (3, "Progressing", [cond("Ready", "False", "CrashLoopBackOff"), BUDGET_OK, IDLE],
     ("False", "Stalled", "True", "CrashLoopBackOff")),
    (3, "Blocked", [cond("Ready", "False", "NoRuntimeClass"), BUDGET_OK, IDLE],
     ("False", "Stalled", "True", "NoRuntimeClass")),
    (3, "Failed", [cond("Ready", "False", "ResourceConflict"), BUDGET_OK, IDLE],
     ("False", "Stalled", "True", "ResourceConflict")),
    (3, "Serving", [cond("Ready", "False", "SpecEditRefused"), BUDGET_OK, IDLE],
     ("False", "Stalled", "True", "SpecEditRefused")),
])
def test_model_kstatus(observed: int | None, phase: str | None, conditions: list[Condition],
                       expected: tuple[str, str, str, str]) -> None:
    result = model_kstatus(generation=3, observed_generation=observed, phase=phase,
                           conditions=conditions)
    assert short(result) == expected


def test_ready_true_is_never_reconciling_or_stalled() -> None:
    """Ready mirrors the pair: whenever Ready is True, neither Reconciling nor Stalled is."""
    for phase in ("Serving", "Progressing", "Pending"):
        for budget in (BUDGET_OK,):
            result = model_kstatus(generation=1, observed_generation=1, phase=phase,
                                   conditions=[READY, budget, IDLE])
            assert short(result)[0::2] == ("False", "False"), phase


def test_exhausted_message_says_what_to_change() -> None:
    result = model_kstatus(generation=1, observed_generation=1, phase="BudgetExhausted",
                           conditions=[cond("Ready", "False", "BudgetExhausted"), BUDGET_GONE])
    assert "ε spent 8 of 8" in result.stalled.message
    assert "spec.epsilon" in result.stalled.message


@pytest.mark.parametrize(("ready", "stalled"), [
    (cond("Ready", "True", "BudgetAvailable"), ("False", "NotStalled")),
    # exhausted is a fact about the budget, not a stall: the bound model reports it
    (cond("Ready", "False", "BudgetExhausted"), ("False", "NotStalled")),
    (cond("Ready", "False", "InvalidSpec"), ("True", "InvalidSpec")),
    (cond("Ready", "False", "AccountingFailed"), ("True", "AccountingFailed")),
])
def test_budget_kstatus(ready: Condition, stalled: tuple[str, str]) -> None:
    result = budget_kstatus([ready])
    assert (result.stalled.status, result.stalled.reason) == stalled
    assert result.reconciling.status == "False"

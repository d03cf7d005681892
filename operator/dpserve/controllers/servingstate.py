"""The PrivateModel's serving decisions, as pure functions: replicas, phase and Ready.

:func:`dpserve.controllers.model.reconcile_model` gathers the facts (placement, budget,
training charge, retraining) and applies what these functions decide.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dpserve.api.privatemodel import Phase

STOPPED_PHASES = ("BudgetExhausted", "Retraining")


@dataclass(frozen=True)
class ServingPlan:
    replicas: int
    phase: Phase
    # replicas to restore once the budget pays again; None = clear it; "keep" = untouched
    restore_replicas: int | Literal["keep"] | None = "keep"


def serving_plan(
    *, placement_ok: bool, budget_problem: bool, training_refused: bool, fits: bool,
    in_retraining: bool, desired_replicas: int,
) -> ServingPlan:
    """How many replicas run and which phase that is, first blocking reason first."""
    if not placement_ok:
        return ServingPlan(0, "Blocked")
    if budget_problem:
        return ServingPlan(0, "Pending")
    if training_refused:
        return ServingPlan(0, "BudgetExhausted")
    if not fits:
        return ServingPlan(0, "Retraining" if in_retraining else "BudgetExhausted",
                           restore_replicas=desired_replicas)
    return ServingPlan(desired_replicas, "Progressing", restore_replicas=None)


def newly_stopped(previous_phase: str | None, plan: ServingPlan) -> bool:
    """The budget stopped the model in this reconcile (counted once per stop)."""
    return plan.phase in STOPPED_PHASES and previous_phase not in STOPPED_PHASES


@dataclass(frozen=True)
class ScaledToZero:
    reason: str
    message: str
    phase: Phase


def scaled_to_zero(phase: Phase, *, blocked_reason: str, pending_reason: str) -> ScaledToZero:
    """Ready=False and the reported phase when no replica runs."""
    reasons: dict[str, str] = {"Blocked": blocked_reason, "Pending": pending_reason,
                               "BudgetExhausted": "BudgetExhausted",
                               "Retraining": "Retraining"}
    reason = reasons.get(phase, "ScaledToZero") or "ScaledToZero"
    if phase == "Progressing":  # nothing blocks: the spec asks for 0 replicas
        return ScaledToZero(reason, "spec.serving.replicas is 0", "Pending")
    return ScaledToZero(reason, f"no replicas run (phase {phase})", phase)


def running_phase(phase: Phase, ready: bool) -> Phase:
    """The phase of a model with replicas: Serving once they are ready."""
    return "Serving" if ready else phase

"""The phase / replicas / Ready decision of a PrivateModel, as a table."""

from __future__ import annotations

import pytest

from dpserve.controllers.servingstate import (
    ServingPlan,
    newly_stopped,
    running_phase,
    scaled_to_zero,
    serving_plan,
)

FACTS = ("placement_ok", "budget_problem", "training_refused", "fits", "in_retraining")


@pytest.mark.parametrize(("facts", "expected"), [
    # placement wins over everything: nothing is scheduled anywhere
    ((False, True, True, False, True), ServingPlan(0, "Blocked")),
    ((True, True, False, True, False), ServingPlan(0, "Pending")),
    ((True, False, True, True, False), ServingPlan(0, "BudgetExhausted")),
    ((True, False, False, False, False), ServingPlan(0, "BudgetExhausted", 3)),
    ((True, False, False, False, True), ServingPlan(0, "Retraining", 3)),
    ((True, False, False, True, False), ServingPlan(3, "Progressing", None)),
    # a running retrain does not matter while the budget still pays
    ((True, False, False, True, True), ServingPlan(3, "Progressing", None)),
])
def test_serving_plan(facts: tuple[bool, ...], expected: ServingPlan) -> None:
    assert serving_plan(**dict(zip(FACTS, facts, strict=True)), desired_replicas=3) == expected


@pytest.mark.parametrize(("previous", "phase", "stopped"), [
    (None, "BudgetExhausted", True),
    ("Serving", "Retraining", True),
    ("Retraining", "BudgetExhausted", False),
    ("BudgetExhausted", "BudgetExhausted", False),
    ("BudgetExhausted", "Progressing", False),
    ("Serving", "Blocked", False),
])
def test_a_stop_is_counted_once(previous: str | None, phase: str, stopped: bool) -> None:
    assert newly_stopped(previous, ServingPlan(0, phase)) is stopped  # type: ignore[arg-type]


@pytest.mark.parametrize(("phase", "reason", "message", "reported"), [
    ("Blocked", "RuntimeClassMissing", "no replicas run (phase Blocked)", "Blocked"),
    ("Pending", "BudgetNotFound", "no replicas run (phase Pending)", "Pending"),
    ("BudgetExhausted", "BudgetExhausted", "no replicas run (phase BudgetExhausted)",
     "BudgetExhausted"),
    ("Retraining", "Retraining", "no replicas run (phase Retraining)", "Retraining"),
    ("Progressing", "ScaledToZero", "spec.serving.replicas is 0", "Pending"),
])
def test_ready_when_scaled_to_zero(phase: str, reason: str, message: str, reported: str) -> None:
    zero = scaled_to_zero(phase, blocked_reason="RuntimeClassMissing",  # type: ignore[arg-type]
                          pending_reason="BudgetNotFound")
    assert (zero.reason, zero.message, zero.phase) == (reason, message, reported)


def test_empty_reasons_fall_back_to_scaled_to_zero() -> None:
    assert scaled_to_zero("Pending", blocked_reason="", pending_reason="").reason == "ScaledToZero"


def test_running_phase() -> None:
    assert running_phase("Progressing", True) == "Serving"
    assert running_phase("Progressing", False) == "Progressing"

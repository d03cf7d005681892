"""The retrain state machine and its bookkeeping, as tables (no API, no process)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dpserve.api.privacybudget import PrivacyBudgetStatus
from dpserve.api.privatemodel import VersionRecord
from dpserve.controllers import retrainstate as rs
from dpserve.controllers.retrain import BadReport, parse_report, report_spend

NOW = datetime(2026, 1, 1, tzinfo=UTC)
CONSUMER = "ns/m"


def record(version: str, budget: str, spent: str | None = "1") -> VersionRecord:
    return VersionRecord(version=version, budget=budget, artifact=f"pvc://a/{version}",
                         epsilon_spent=spent)


def ledger(*versions: str, consumer: str = CONSUMER) -> PrivacyBudgetStatus:
    return PrivacyBudgetStatus.model_validate({"ledger": [
        {"consumer": consumer, "modelVersion": v, "kind": "training",
         "training": {"noiseMultiplier": "1.1", "sampleRate": "0.01", "steps": 10},
         "count": 1} for v in versions]})


# ------------------------------------------------------------------ the next budget

@pytest.mark.parametrize(("next_name", "retired", "next_status", "fits", "reason"), [
    ("fresh", [], None, None, None),  # will be created
    ("fresh", [], PrivacyBudgetStatus(), True, None),  # created by the user, unspent
    ("fresh", [], ledger("v3"), True, None),  # this version's own run (a retried roll)
    ("fresh", [], ledger("v1", consumer="ns/other"), True, None),  # another model's spend
    ("cur", [], None, None, rs.NEXT_BUDGET_SPENT),  # the budget v2 spends now
    ("old", [record("v1", "old")], None, None, rs.NEXT_BUDGET_SPENT),
    ("fresh", [], ledger("v1"), True, rs.NEXT_BUDGET_SPENT),  # status lost the record
    ("fresh", [], PrivacyBudgetStatus(), False, rs.NEXT_BUDGET_EXHAUSTED),
])
def test_next_budget_refusal(
    next_name: str, retired: list[VersionRecord], next_status: PrivacyBudgetStatus | None,
    fits: bool | None, reason: str | None,
) -> None:
    refusal = rs.next_budget_refusal(
        next_name=next_name, version="v3", current_budget="cur", current_version="v2",
        retired=retired, consumer=CONSUMER, next_status=next_status, next_fits=fits)
    assert (refusal.reason if refusal else None) == reason
    if refusal is not None:  # the message names the field to fix and the budget
        assert "spec.retraining.nextBudget.name" in refusal.message
        assert next_name in refusal.message


# ------------------------------------------------------------------ Job states

@pytest.mark.parametrize(("job", "state"), [
    (None, "Absent"),
    ({}, "Running"),
    ({"status": {"conditions": [{"type": "Complete", "status": "False"}]}}, "Running"),
    ({"status": {"conditions": [{"type": "Complete", "status": "True"}]}}, "Complete"),
    ({"status": {"conditions": [{"type": "SuccessCriteriaMet", "status": "True"}]}},
     "Complete"),
    ({"status": {"conditions": [{"type": "Failed", "status": "True"}]}}, "Failed"),
    ({"status": {"conditions": [{"type": "FailureTarget", "status": "True"}]}}, "Failed"),
])
def test_job_state(job: dict[str, Any] | None, state: str) -> None:
    assert rs.job_state(job) == state


def test_job_failure_message_joins_true_conditions() -> None:
    job = {"status": {"conditions": [
        {"type": "Failed", "status": "True", "message": "BackoffLimitExceeded"},
        {"type": "Complete", "status": "False", "message": "ignored"}]}}
    assert rs.job_failure_message(job, "m-train-v2") == (
        "Job m-train-v2 failed: BackoffLimitExceeded")


@pytest.mark.parametrize(("attempts", "since_s", "action", "wait_s"), [
    (0, None, "start", 0.0),  # first attempt: no back-off
    (1, 0, "wait", 10.0),  # failed once: wait the base back-off
    (1, 4, "wait", 6.0),
    (1, 10, "start", 0.0),
    (2, 5, "wait", 15.0),  # doubled
    (3, 0, "give-up", 0.0),  # max attempts reached
    (5, 0, "give-up", 0.0),
])
def test_start_decision(attempts: int, since_s: float | None, action: str,
                        wait_s: float) -> None:
    last = NOW - timedelta(seconds=since_s) if since_s is not None else None
    decision = rs.start_decision(attempts=attempts, max_attempts=3, backoff_base_s=10,
                                 last_transition=last, now=NOW)
    assert (decision.action, decision.wait_s) == (action, wait_s)


@pytest.mark.parametrize(("attempts", "after", "gave_up", "requeue"), [
    (0, 1, False, 10.0), (1, 2, False, 20.0), (2, 3, True, None),
])
def test_after_failure(attempts: int, after: int, gave_up: bool, requeue: float | None) -> None:
    decision = rs.after_failure(attempts=attempts, max_attempts=3, backoff_base_s=10)
    assert (decision.attempts, decision.gave_up, decision.requeue_after_s) == (
        after, gave_up, requeue)


# ------------------------------------------------------------------ the trainer's report

def pod(message: str | None, exit_code: int = 0, name: str = "train") -> dict[str, Any]:
    terminated: dict[str, Any] = {"exitCode": exit_code}
    if message is not None:
        terminated["message"] = message
    return {"status": {"containerStatuses": [{"name": name,
                                              "state": {"terminated": terminated}}]}}


GOOD = {"noiseMultiplier": 1.1, "sampleRate": 0.01, "steps": 10, "epsilon": 1.0}


@pytest.mark.parametrize(("pods", "error"), [
    ([], "no succeeded train container"),
    ([pod(json.dumps(GOOD), exit_code=1)], "no succeeded train container"),
    ([pod(json.dumps(GOOD), name="other")], "no succeeded train container"),
    ([pod("not json")], "not JSON"),
    ([pod("[1]")], "not a JSON object"),
    ([pod(json.dumps({"steps": 1}))], "lacks noiseMultiplier, sampleRate, epsilon"),
])
def test_bad_reports(pods: list[dict[str, Any]], error: str) -> None:
    with pytest.raises(BadReport, match=error):
        parse_report(pods)


@pytest.mark.parametrize(("spec_mode", "reported", "charged", "mismatch"), [
    ("dpsgd", None, True, False),
    ("dpsgd", "dpsgd", True, False),
    # the trainer's word does not decide: a dpsgd retrain reporting pate is still charged
    ("dpsgd", "pate", True, True),
    ("pate", "pate", False, False),
    ("pate", None, False, False),
    ("pate", "dpsgd", False, True),
])
def test_report_spend_follows_the_spec(spec_mode: str, reported: str | None, charged: bool,
                                       mismatch: bool) -> None:
    report = {**GOOD, **({"mode": reported} if reported else {})}
    charge = report_spend(parse_report([pod(json.dumps(report))]), spec_mode)
    assert (charge.spend is not None, charge.mismatch is not None) == (charged, mismatch)
    if charge.spend is not None:
        assert (charge.spend.noise_multiplier, charge.spend.steps) == ("1.1", 10)
    if charge.mismatch is not None:
        assert "spec.retraining.mode" in charge.mismatch


def test_a_dpsgd_report_without_a_valid_run_is_unusable() -> None:
    with pytest.raises(BadReport, match="invalid DP-SGD run"):
        report_spend({**GOOD, "steps": "many"}, "dpsgd")
    with pytest.raises(BadReport, match="invalid DP-SGD run"):
        report_spend({**GOOD, "mode": "pate", "noiseMultiplier": None}, "dpsgd")


# ------------------------------------------------------------------ versions, lifetime ε

def test_retire_keeps_the_latest_and_carries_dropped_epsilon() -> None:
    versions = [record(f"v{i}", f"b{i}", "1") for i in range(1, 4)]
    out = rs.retire(versions, record("v4", "b4", "2"), current_budget="b5",
                    dropped_versions=0, dropped_epsilon=None, limit=2)
    assert [r.version for r in out.versions] == ["v3", "v4"]
    assert (out.dropped_versions, out.dropped_epsilon) == (2, "2")
    # The lifetime still counts every budget: b1, b2 (dropped) + b3, b4 + current b5.
    assert rs.lifetime_epsilon(out.versions, "b5", "0.5", out.dropped_epsilon) == "5.5"


def test_a_dropped_budget_still_named_is_not_carried() -> None:
    versions = [record("v1", "shared", "1"), record("v2", "shared", "1.5")]
    out = rs.retire(versions, record("v3", "b3", "1"), current_budget="b4",
                    dropped_versions=0, dropped_epsilon=None, limit=2)
    assert out.dropped_epsilon == "0" and out.dropped_versions == 1


def test_retire_without_drops_changes_no_counters() -> None:
    out = rs.retire([], record("v1", "b"), current_budget="b-v2", dropped_versions=0,
                    dropped_epsilon=None)
    assert (out.dropped_versions, out.dropped_epsilon) == (0, None)


@pytest.mark.parametrize(("versions", "current", "spent", "dropped", "expected"), [
    ([], "b", None, None, None),
    ([], "b", "1.5", None, "1.5"),
    ([record("v1", "a", "2")], "b", "1.5", None, "3.5"),
    # one budget counted once, at the most any record saw (was: once per version)
    ([record("v1", "a", "2"), record("v2", "b", "7")] + [record(f"v{i}", "b", "8")
                                                          for i in range(3, 14)],
     "b", "8", None, "10"),
    ([record("v1", "a", "not-a-number")], "b", "1", None, "1"),
    ([], "b", "1", "4", "5"),
])
def test_lifetime_epsilon(versions: list[VersionRecord], current: str, spent: str | None,
                          dropped: str | None, expected: str | None) -> None:
    assert rs.lifetime_epsilon(versions, current, spent, dropped) == expected

"""Reading a PrivateModel status across versions: nothing is reset or silently lost."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from dpserve.controllers import statusfields as sf

NOW = datetime(2026, 1, 1, tzinfo=UTC)
RECORD = {"version": "v1", "budget": "b", "artifact": "pvc://m/v1", "epsilonSpent": "2"}
READY = {"type": "Ready", "status": "True", "lastTransitionTime": "2025-01-01T00:00:00Z",
         "reason": "MinimumReplicasAvailable", "message": "ok"}


def test_unknown_fields_are_set_aside_and_written_back() -> None:
    raw = {"phase": "Serving", "future": {"a": 1},
           "versions": [{**RECORD, "baseVersion": "v0"}],
           "conditions": [{**READY, "severity": "Info"}]}
    read = sf.read_model_status(raw)
    assert read.problem is None
    assert read.status.phase == "Serving" and read.status.versions[0].budget == "b"
    assert sorted(read.unknown_fields) == [
        "status.conditions[Ready].severity", "status.future", "status.versions[v1].baseVersion"]
    assert sf.with_extras(read.status.wire(), read) == raw


@pytest.mark.parametrize(("raw", "field"), [
    ({"phase": "Draining"}, "status.phase"),
    ({"retrainAttempts": "3"}, "status.retrainAttempts"),
    ({"versions": [{"version": "v1"}]}, "status.versions.0.budget"),
    ("garbage", "status"),
])
def test_unreadable_status_names_the_field(raw: Any, field: str) -> None:
    read = sf.read_model_status(raw)
    assert read.problem is not None and read.problem.startswith(field)


def test_no_status_is_an_empty_readable_one() -> None:
    read = sf.read_model_status(None)
    assert read.problem is None and read.status.versions == []


def test_unreadable_keeps_everything_but_ready_and_the_kstatus_pair() -> None:
    raw = {"phase": "Draining", "versions": [RECORD], "conditions": [READY]}
    out = sf.unreadable(raw, "status.phase: bad", 3, NOW)
    assert out is not None
    assert {k: v for k, v in out.items() if k != "conditions"} == {
        "phase": "Draining", "versions": [RECORD]}
    ready, stalled, reconciling = out["conditions"]
    assert (ready["type"], ready["status"], ready["reason"], ready["observedGeneration"]) == (
        "Ready", "False", "StatusUnreadable", 3)
    assert "status.phase: bad" in ready["message"]
    # GitOps tools (kstatus, the Argo CD health check) read Stalled: it needs a person.
    assert (stalled["type"], stalled["status"], stalled["reason"]) == (
        "Stalled", "True", "StatusUnreadable")
    assert (reconciling["type"], reconciling["status"]) == ("Reconciling", "False")
    # Idempotent: the same problem again changes nothing (no write, no Event).
    assert sf.unreadable(out, "status.phase: bad", 3, NOW) == out
    assert sf.unreadable({"conditions": "garbage"}, "x", 1, NOW) is None


def test_pruned_paths_are_found_and_left_out() -> None:
    sent = {"a": 1, "b": {"c": 2, "d": 3}, "versions": [{"x": 1, "y": 2}, {"x": 3, "y": 4}]}
    got = {"a": 1, "b": {"c": 2}, "versions": [{"x": 1}, {"x": 3}]}
    paths = sf.missing_paths(sent, got)
    assert paths == [("b", "d"), ("versions", 0, "y"), ("versions", 1, "y")]
    generic = {sf.generic(p) for p in paths}
    assert sf.without_paths(sent, generic) == got
    assert sorted(sf.dotted(p) for p in generic) == ["status.b.d", "status.versions[0].y"]

"""Echoes: only the exact budget version a model's reconcile read is skipped."""

from __future__ import annotations

from dpserve.controllers.echoes import Echoes


def test_budget_read_by_version_and_model() -> None:
    echoes = Echoes()
    echoes.read_budget("ns", "m", "b", "7")
    assert echoes.has_read_budget("ns", "m", "b", "7")
    assert echoes.has_read_budget("ns", "m", "b", "7")  # a read is not used up
    assert not echoes.has_read_budget("ns", "m", "b", "8")
    assert not echoes.has_read_budget("ns", "other", "b", "7")
    assert not echoes.has_read_budget("ns", "m", "b", None)
    echoes.read_budget("ns", "m", "b", "8")
    assert not echoes.has_read_budget("ns", "m", "b", "7")
    echoes.forget_model("ns", "m")
    assert not echoes.has_read_budget("ns", "m", "b", "8")

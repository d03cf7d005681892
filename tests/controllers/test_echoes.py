"""Echoes: only the exact version a model reconcile wrote or read is skipped."""

from __future__ import annotations

from dpserve.controllers.echoes import Echoes


def test_own_write_is_skipped_once() -> None:
    echoes = Echoes()
    echoes.wrote("Deployment", "ns", "m", "10")
    assert echoes.is_own_write("Deployment", "ns", "m", "10")
    # One write has one echo: the same version again (a re-list) wakes the model.
    assert not echoes.is_own_write("Deployment", "ns", "m", "10")


def test_other_version_or_object_wakes_and_ends_the_record() -> None:
    echoes = Echoes()
    echoes.wrote("Deployment", "ns", "m", "10")
    assert not echoes.is_own_write("Service", "ns", "m", "10")
    assert not echoes.is_own_write("Deployment", "ns", "m", "11")  # another writer
    assert not echoes.is_own_write("Deployment", "ns", "m", "10")  # superseded


def test_deletion_wakes() -> None:
    echoes = Echoes()
    echoes.wrote("ConfigMap", "ns", "m", "3")
    assert not echoes.is_own_write("ConfigMap", "ns", "m", None)
    assert not echoes.is_own_write("ConfigMap", "ns", "m", "3")


def test_write_without_version_is_not_recorded() -> None:
    echoes = Echoes()
    echoes.wrote("ConfigMap", "ns", "m", None)
    assert not echoes.is_own_write("ConfigMap", "ns", "m", None)


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

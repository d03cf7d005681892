"""The decimal bounds of the schema are what the accountant can compute.

Every corner of the admitted ranges is admitted by both validators (the CRD's CEL and the
pydantic model) and gives a finite ε with both accountants; just outside, both refuse.
The gaussian query's effective noise multiplier noiseMultiplier * clipNorm / sensitivity
ranges over [0.01 * 1e-6 / 1e6, 1e4 * 1e6 / 1e-6] = [1e-14, 1e16].
"""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from dpserve.accounting.events import Event, GaussianQuery
from dpserve.ledger import events as ev
from dpserve.ledger.accountant import LedgerAccounting
from dpserve_testkit.localkube.crdvalidation import validate

MODEL: dict[str, Any] = {
    "apiVersion": "dpserve.io/v1alpha1",
    "kind": "PrivateModel",
    "metadata": {"name": "bounds", "namespace": "default"},
    "spec": {
        "budgetRef": {"name": "patients"},
        "model": {
            "artifact": "pvc://models/m/v1",
            "format": "state-dict",
            "training": {"noiseMultiplier": "1.2", "sampleRate": "0.005", "steps": 6000},
        },
        "confidential": {"profile": "coco-snp"},
        "serving": {"mechanism": {"type": "none"}},
    },
}

GAUSSIAN_CORNERS = [
    {"noiseMultiplier": "0.01", "clipNorm": "0.000001", "sensitivity": "1e6"},
    {"noiseMultiplier": "1e4", "clipNorm": "1e6", "sensitivity": "0.000001"},
]
MECHANISM_CORNERS: list[dict[str, Any]] = [
    *({"type": "gaussian", **corner} for corner in GAUSSIAN_CORNERS),
    {"type": "pate", "teachers": 50, "noiseMultiplier": "0.01"},
    {"type": "pate", "teachers": 50, "noiseMultiplier": "10000"},
    {"type": "laplace-embedding", "epsilon": "1e-6"},
    {"type": "laplace-embedding", "epsilon": "100"},
]
TRAINING_CORNERS: list[dict[str, Any]] = [
    {"noiseMultiplier": "0.01", "sampleRate": "1", "steps": 100_000_000},
    {"noiseMultiplier": "10000", "sampleRate": "1e-9", "steps": 1},
    {"noiseMultiplier": "0.01", "sampleRate": "1e-9", "steps": 100_000_000},
]
OUTSIDE: list[tuple[dict[str, Any], str]] = [
    ({"type": "pate", "teachers": 50, "noiseMultiplier": "0.0099"}, "noiseMultiplier"),
    ({"type": "pate", "teachers": 50, "noiseMultiplier": "10001"}, "noiseMultiplier"),
    ({"type": "gaussian", "noiseMultiplier": "1", "clipNorm": "0.00000099",
      "sensitivity": "1"}, "clipNorm"),
    ({"type": "gaussian", "noiseMultiplier": "1", "clipNorm": "1",
      "sensitivity": "1000001"}, "sensitivity"),
    ({"type": "laplace-embedding", "epsilon": "100.5"}, "epsilon"),
    ({"type": "laplace-embedding", "epsilon": "0.00000099"}, "epsilon"),
]


def with_mechanism(mechanism: dict[str, Any]) -> dict[str, Any]:
    obj = copy.deepcopy(MODEL)
    obj["spec"]["serving"]["mechanism"] = mechanism
    if mechanism["type"] in ("pate", "gaussian"):  # noise over the teachers' outputs
        obj["spec"]["model"]["format"] = "pate-ensemble"
    return obj


def with_training(training: dict[str, Any]) -> dict[str, Any]:
    obj = copy.deepcopy(MODEL)
    obj["spec"]["model"]["training"] = training
    return obj


def admitted(obj: dict[str, Any], crds: dict[str, dict[str, Any]],
             models: dict[str, type[BaseModel]]) -> BaseModel:
    _, errors = validate(obj, crds["PrivateModel"])
    assert errors == []
    return models["PrivateModel"].model_validate(obj)


def corner_events(models: dict[str, type[BaseModel]],
                  crds: dict[str, dict[str, Any]]) -> list[Event]:
    events: list[Event] = []
    for mechanism in MECHANISM_CORNERS:
        model: Any = admitted(with_mechanism(mechanism), crds, models)
        event = ev.mechanism_event(model.spec.serving.mechanism)
        assert event is not None
        events.append(event)
    for training in TRAINING_CORNERS:
        model = admitted(with_training(training), crds, models)
        events.append(ev.training_event(model.spec.model.training))
    return events


def test_the_gaussian_corners_are_the_documented_range(
    models_by_kind: dict[str, type[BaseModel]], crds_by_kind: dict[str, dict[str, Any]]
) -> None:
    events = corner_events(models_by_kind, crds_by_kind)
    gaussian = [e.noise_multiplier for e in events if isinstance(e, GaussianQuery)]
    assert gaussian == pytest.approx([1e-14, 1e16])


def _check_finite(kind: str, events: list[Event]) -> None:
    accounting = LedgerAccounting()
    for event in events:
        one = accounting.epsilon([(event, 1)], 1e-6, kind)
        many = accounting.epsilon([(event, 1_000_000)], 1e-6, kind)
        assert math.isfinite(one) and math.isfinite(many), (event, one, many)
        assert 0.0 <= one <= many
        fit = accounting.max_additional([], event, 1000.0, 1e-6, kind, 10**9)
        assert fit >= 0


def test_rdp_gives_a_finite_epsilon_at_every_corner(
    models_by_kind: dict[str, type[BaseModel]], crds_by_kind: dict[str, dict[str, Any]]
) -> None:
    _check_finite("rdp", corner_events(models_by_kind, crds_by_kind))


@pytest.mark.slow
def test_pld_gives_a_finite_epsilon_at_every_corner(
    models_by_kind: dict[str, type[BaseModel]], crds_by_kind: dict[str, dict[str, Any]]
) -> None:
    _check_finite("pld", corner_events(models_by_kind, crds_by_kind))


@pytest.mark.parametrize(("mechanism", "field"), OUTSIDE, ids=[f for _, f in OUTSIDE])
def test_just_outside_the_range_both_validators_refuse(
    mechanism: dict[str, Any], field: str,
    models_by_kind: dict[str, type[BaseModel]], crds_by_kind: dict[str, dict[str, Any]],
) -> None:
    obj = with_mechanism(mechanism)
    _, errors = validate(obj, crds_by_kind["PrivateModel"])
    assert any(e.startswith(f"spec.serving.mechanism.{field}:") for e in errors), errors
    with pytest.raises(ValidationError, match=field):
        models_by_kind["PrivateModel"].model_validate(obj)


def test_a_tenant_partition_may_exceed_the_budget_epsilon(
    models_by_kind: dict[str, type[BaseModel]], crds_by_kind: dict[str, dict[str, Any]]
) -> None:
    """Partitions protect each tenant's own queries (parallel composition): 50 > 8 is fine;
    only the 1000 cap applies (tests/api/invalid/pb-partitions-epsilon-*.yaml)."""
    obj = {
        "apiVersion": "dpserve.io/v1alpha1", "kind": "PrivacyBudget",
        "metadata": {"name": "b", "namespace": "default"},
        "spec": {"epsilon": "8", "delta": "1e-6",
                 "partitions": {"header": "X-Tenant", "epsilon": "50"}},
    }
    _, errors = validate(obj, crds_by_kind["PrivacyBudget"])
    assert errors == []
    models_by_kind["PrivacyBudget"].model_validate(obj)


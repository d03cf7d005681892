"""Events: validation names the field, events are hashable cache keys."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from dpserve.accounting import (
    Accountant,
    GaussianQuery,
    GNMaxQuery,
    LaplaceQuery,
    SubsampledGaussian,
    epsilon_spent,
    max_additional,
)
from dpserve.accounting.events import DPEvent
from dpserve.accounting.rdp import gaussian_rdp


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: GaussianQuery(0), r"GaussianQuery\.noise_multiplier must be finite and > 0"),
        (lambda: GaussianQuery(-1.0), r"GaussianQuery\.noise_multiplier"),
        (lambda: GaussianQuery(math.inf), r"GaussianQuery\.noise_multiplier"),
        (lambda: GaussianQuery(math.nan), r"GaussianQuery\.noise_multiplier"),
        (lambda: GaussianQuery("2"), r"GaussianQuery\.noise_multiplier must be a number"),
        (lambda: GaussianQuery(True), r"GaussianQuery\.noise_multiplier must be a number"),
        (lambda: GNMaxQuery(0.0), r"GNMaxQuery\.sigma"),
        (lambda: LaplaceQuery(0.0), r"LaplaceQuery\.epsilon must be finite and > 0"),
        (lambda: SubsampledGaussian(0.0, 0.1, 10), r"SubsampledGaussian\.noise_multiplier"),
        (lambda: SubsampledGaussian(1.0, 0.0, 10), r"SubsampledGaussian\.sample_rate"),
        (lambda: SubsampledGaussian(1.0, 1.5, 10), r"sample_rate must be in \(0, 1\]"),
        (lambda: SubsampledGaussian(1.0, 0.1, 0), r"SubsampledGaussian\.steps must be an integer"),
        (lambda: SubsampledGaussian(1.0, 0.1, 2.5), r"SubsampledGaussian\.steps"),
        (lambda: SubsampledGaussian(1.0, 0.1, 10, "random"), r"SubsampledGaussian\.sampling"),
    ],
)
def test_invalid_parameters_name_the_field(build: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()  # type: ignore[operator]


def test_events_are_hashable_and_normalised() -> None:
    assert GaussianQuery(2) == GaussianQuery(2.0)
    assert hash(GaussianQuery(2)) == hash(GaussianQuery(2.0))
    assert isinstance(GaussianQuery(2).noise_multiplier, float)
    assert len({SubsampledGaussian(1.1, 0.01, 10), SubsampledGaussian(1.1, 0.01, 10)}) == 1
    assert SubsampledGaussian(1.1, 0.01, 10).sampling == "poisson"
    assert SubsampledGaussian(1.1, 0.01, 10) != SubsampledGaussian(1.1, 0.01, 10, "shuffle")
    with pytest.raises(AttributeError):
        GaussianQuery(2).noise_multiplier = 3.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: epsilon_spent([], 0.0), r"delta must be in \(0, 1\)"),
        (lambda: epsilon_spent([], 1.0), r"delta must be in \(0, 1\)"),
        (lambda: epsilon_spent([], math.nan), r"delta must be in \(0, 1\)"),
        (lambda: epsilon_spent([], "1e-5"), r"delta must be a number"),
        (lambda: epsilon_spent([(GaussianQuery(1), -1)], 1e-5), r"spends\[0\]\.count"),
        (lambda: epsilon_spent([(GaussianQuery(1), 1.5)], 1e-5), r"spends\[0\]\.count"),
        (lambda: epsilon_spent([("gaussian", 1)], 1e-5), r"event must be one of"),
        (lambda: epsilon_spent([GaussianQuery(1)], 1e-5), r"spends\[0\] must be an \(event"),
        (lambda: epsilon_spent([], 1e-5, accountant="moments"), r"accountant must be one of"),
        (lambda: max_additional([], GaussianQuery(1), -1.0, 1e-5), r"epsilon must be finite"),
        (lambda: max_additional([], GaussianQuery(1), math.inf, 1e-5), r"epsilon must be finite"),
        (lambda: max_additional([], GaussianQuery(1), 1.0, 1e-5, limit=-1), r"limit must be"),
        (lambda: Accountant("moments"), r"accountant must be one of"),
        (lambda: Accountant(orders=[0.5, 2.0]), r"orders must be finite and > 1"),
        (lambda: Accountant(orders=[]), r"orders must not be empty"),
        (lambda: Accountant("pld", pld_discretization=0.0), r"pld_discretization"),
    ],
)
def test_invalid_arguments_are_rejected(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()  # type: ignore[operator]


def test_empty_ledger_spends_nothing() -> None:
    for kind in ("rdp", "pld"):
        assert epsilon_spent([], 1e-5, accountant=kind) == 0.0  # type: ignore[arg-type]
        assert epsilon_spent([(GaussianQuery(1.0), 0)], 1e-5, accountant=kind) == 0.0  # type: ignore[arg-type]
        assert Accountant(kind).bounds([], 1e-5) == {}  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class _GaussianPair(DPEvent):
    """A mechanism the accounting package has never seen: two Gaussian releases at once.

    Defined only here, through the DPEvent methods, to show that the composers and the
    solver take a new event class without a change anywhere else.
    """

    noise_multiplier: float

    def rdp(self, orders: tuple[float, ...]) -> np.ndarray:
        return 2.0 * gaussian_rdp(self.noise_multiplier, orders)

    def gaussian_units(self) -> tuple[float, float] | None:
        return self.noise_multiplier, 2.0


@dataclass(frozen=True, slots=True)
class _RdpOnly(DPEvent):
    """A new event that states only its RDP curve: every accountant still answers."""

    epsilon_per_order: float

    def rdp(self, orders: tuple[float, ...]) -> np.ndarray:
        return np.full(len(orders), self.epsilon_per_order)


@pytest.mark.parametrize("kind", ["rdp", "pld"])
def test_a_new_event_class_composes_through_its_methods(kind: str) -> None:
    accountant = Accountant(kind)  # type: ignore[arg-type]
    pair, single = _GaussianPair(8.0), GaussianQuery(8.0)
    assert accountant.epsilon([(pair, 7)], 1e-6) == accountant.epsilon([(single, 14)], 1e-6)
    with_laplace = [(pair, 3), (LaplaceQuery(0.2), 2)]
    same = [(single, 6), (LaplaceQuery(0.2), 2)]
    assert accountant.bounds(with_laplace, 1e-6) == accountant.bounds(same, 1e-6)
    # n pairs fit exactly when 2n singles fit.
    pairs = accountant.max_additional([], pair, 2.0, 1e-6)
    singles = accountant.max_additional([], single, 2.0, 1e-6)
    assert pairs == singles // 2

    rdp_only = [(_RdpOnly(0.01), 5), (GNMaxQuery(40.0), 10)]
    bounds = accountant.bounds(rdp_only, 1e-6)
    assert set(bounds) == {"rdp"}  # no PLD, no Gaussian DP claimed for it
    assert accountant.max_additional(rdp_only, _RdpOnly(0.01), 1.0, 1e-6) > 0


def test_validation_lists_the_registered_event_classes() -> None:
    with pytest.raises(ValueError, match=r"GaussianQuery.*got str") as failure:
        epsilon_spent([("gaussian", 1)], 1e-5)  # type: ignore[list-item]
    assert "SubsampledGaussian" in str(failure.value)

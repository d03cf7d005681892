"""The DP output mechanisms on hand-built models with known outputs: statistics of the
noisy answers, GNMax accuracy against its exact expectation, and spec/artifact checks."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, get_args

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from dpserve.api.mechanism import Mechanism, MechanismType
from dpserve_runtime.architectures import MlpArchitecture
from dpserve_runtime.artifact import Manifest
from dpserve_runtime.server.mechanisms import (
    MECHANISMS,
    GaussianMechanism,
    LaplaceEmbeddingMechanism,
    MechanismConfigError,
    PateMechanism,
    build_mechanism,
    register,
)
from dpserve_runtime.server.model import ModelOutputError, ServedModel

Z = 5.0
P_THRESHOLD = 1e-4


class Constant(nn.Module):
    """A 'model' whose output is fixed: lets the tests know the exact pre-noise answer."""

    def __init__(self, output: list[float]) -> None:
        super().__init__()
        self.register_buffer("output", torch.tensor(output, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.output
        assert isinstance(out, torch.Tensor)
        return out.expand(x.shape[0], -1)


def served(
    members: Sequence[nn.Module], classes: int, *, labels: list[str] | None = None
) -> ServedModel:
    arch = MlpArchitecture(input_dim=4, num_classes=classes)
    if len(members) > 1:
        manifest = Manifest(
            format="pate-ensemble",
            architecture=arch,
            teachers=[f"teachers/{i:03d}.pt" for i in range(len(members))],
            labels=labels,
        )
    else:
        manifest = Manifest(format="state-dict", architecture=arch, weights="w.pt", labels=labels)
    return ServedModel(manifest, tuple(members))


def mech(**wire: Any) -> Mechanism:
    return Mechanism.model_validate(wire)


def one_hot(label: int, classes: int, scale: float = 10.0) -> list[float]:
    return [scale if c == label else 0.0 for c in range(classes)]


# ------------------------------------------------------------------------------ none


def test_none_returns_probabilities_and_costs_nothing() -> None:
    model = served([Constant([2.0, 0.0, 1.0])], 3, labels=["a", "b", "c"])
    mechanism = build_mechanism(mech(type="none"), model)
    outputs = mechanism.release(torch.zeros(5, 4))
    assert mechanism.queries(len(outputs)) == 0 and mechanism.noise() is None
    expected = torch.softmax(torch.tensor([2.0, 0.0, 1.0], dtype=torch.float64), 0).tolist()
    for out in outputs:
        assert out["label"] == 0 and out["text"] == "a"
        np.testing.assert_allclose(out["probabilities"], expected, rtol=1e-6)


def test_none_refuses_an_ensemble_and_noise_parameters() -> None:
    ensemble = served([Constant([1.0, 0.0]), Constant([0.0, 1.0])], 2)
    with pytest.raises(MechanismConfigError, match=r"mechanism\.type"):
        build_mechanism(mech(type="none"), ensemble)
    with pytest.raises(MechanismConfigError, match=r"mechanism\.noiseMultiplier"):
        build_mechanism(mech(type="none", noiseMultiplier="1"), served([Constant([1.0, 0.0])], 2))


# ------------------------------------------------------------------------------ pate


def gnmax_accuracy(histogram: np.ndarray, sigma: float) -> float:
    """Exact P(noisy arg-max == true arg-max) with independent discrete Gaussians of scale
    sigma and np.argmax's tie rule (lowest index wins)."""
    top = int(np.argmax(histogram))
    radius = int(12 * sigma) + 2
    support = np.arange(-radius, radius + 1)
    pmf = np.exp(-(support**2) / (2 * sigma**2))
    pmf /= pmf.sum()
    cdf = np.cumsum(pmf)

    def below(count: int, value: np.ndarray, strict: bool) -> np.ndarray:
        # P(count + Z < value) or <= value, for integer values.
        idx = value - count - (1 if strict else 0) + radius
        return np.where(idx < 0, 0.0, cdf[np.clip(idx, 0, len(cdf) - 1)])

    values = histogram[top] + support
    prob = pmf.copy()
    for i, count in enumerate(histogram):
        if i != top:
            prob = prob * below(int(count), values, strict=i < top)
    return float(prob.sum())


def test_gnmax_accuracy_matches_its_exact_expectation_and_falls_with_sigma() -> None:
    # 50 teachers, mostly agreeing on class 2; classes 0 and 1 collect the rest.
    histogram = np.array([12, 8, 24, 6, 0, 0, 0, 0, 0, 0])
    teachers = [Constant(one_hot(c, 10)) for c, n in enumerate(histogram) for _ in range(n)]
    model = served(list(teachers), 10)
    n = 2000
    empirical, expected = [], []
    for sigma in (3.0, 10.0, 30.0):
        mechanism = build_mechanism(
            mech(type="pate", teachers=50, noiseMultiplier=str(sigma)), model
        )
        assert isinstance(mechanism, PateMechanism)
        outputs = mechanism.release(torch.zeros(n, 4))
        assert mechanism.queries(n) == n
        accuracy = sum(out["label"] == 2 for out in outputs) / n
        p = gnmax_accuracy(histogram, mechanism.sampler.std_used)
        assert abs(accuracy - p) < Z * math.sqrt(p * (1 - p) / n) + 1e-9
        empirical.append(accuracy)
        expected.append(p)
    assert expected[0] > expected[1] > expected[2] > 0.1
    assert empirical[0] > empirical[1] > empirical[2]


def test_gnmax_labels_are_spread_by_the_noise() -> None:
    # A tied 2-way vote: the noisy arg-max picks either side about half the time.
    teachers = [Constant(one_hot(0, 3))] * 5 + [Constant(one_hot(1, 3))] * 5
    mechanism = build_mechanism(
        mech(type="pate", teachers=10, noiseMultiplier="20"), served(teachers, 3)
    )
    labels = [out["label"] for out in mechanism.release(torch.zeros(1000, 4))]
    p = gnmax_accuracy(np.array([5, 5, 0]), 20.0)  # P(label 0)
    counts = np.bincount(labels, minlength=3)
    assert stats.binomtest(int(counts[0]), 1000, p).pvalue > P_THRESHOLD


@pytest.mark.parametrize(
    ("members", "wire", "message"),
    [
        (1, {"teachers": 2, "noiseMultiplier": "1"}, "needs a pate-ensemble"),
        (3, {"teachers": 4, "noiseMultiplier": "1"}, "spec says 4 teachers, the artifact has 3"),
        (3, {"noiseMultiplier": "1"}, "mechanism.teachers: required"),
        (3, {"teachers": 3}, "mechanism.noiseMultiplier: required"),
        (3, {"teachers": 3, "noiseMultiplier": "0"}, "mechanism.noiseMultiplier: must be"),
        (3, {"teachers": 3, "noiseMultiplier": "1", "epsilon": "1"}, "mechanism.epsilon"),
    ],
)
def test_pate_spec_must_fit_the_artifact(members: int, wire: dict[str, Any], message: str) -> None:
    model = served([Constant([1.0, 0.0])] * members, 2)
    with pytest.raises(MechanismConfigError, match=message):
        build_mechanism(mech(type="pate", **wire), model)


# -------------------------------------------------------------------------- gaussian


def test_gaussian_releases_the_clipped_mean_plus_calibrated_noise() -> None:
    a, b = [4.0, 0.0, 0.0, 0.0], [0.0, 4.0, 0.0, 0.0]
    model = served([Constant(a), Constant(b)], 4)
    spec = mech(type="gaussian", noiseMultiplier="0.2", clipNorm="0.5", sensitivity="0.5")
    mechanism = build_mechanism(spec, model)
    assert isinstance(mechanism, GaussianMechanism)
    n = 1000
    vectors = np.array([out["vector"] for out in mechanism.release(torch.zeros(n, 4))])
    probs = torch.softmax(torch.tensor([a, b], dtype=torch.float64), -1).numpy()
    clipped = probs * np.minimum(1.0, 0.5 / np.linalg.norm(probs, axis=1, keepdims=True))
    target = clipped.mean(axis=0)
    sigma = mechanism.noise()["std"]  # type: ignore[index]
    assert sigma == pytest.approx(0.1, rel=1e-5)
    np.testing.assert_array_less(np.abs(vectors.mean(axis=0) - target), Z * sigma / math.sqrt(n))
    residual = (vectors - target).ravel()
    assert stats.kstest(residual, "norm", args=(0.0, sigma)).pvalue > P_THRESHOLD
    assert mechanism.queries(n) == n
    noise = mechanism.noise()
    assert noise is not None and noise["rho"] <= 0.5**2 / (2 * 0.1**2)


@pytest.mark.parametrize(
    ("members", "wire", "message"),
    [
        (2, {"noiseMultiplier": "1", "clipNorm": "1"}, "mechanism.sensitivity: required"),
        # provable bound for 2 members, clipNorm 1: min(2, √2)/2 = 0.707
        (2, {"noiseMultiplier": "1", "clipNorm": "1", "sensitivity": "0.7"}, "below the provable"),
        (
            1,
            {"noiseMultiplier": "1", "clipNorm": "0.1", "sensitivity": "0.19"},
            "below the provable",
        ),
        (
            2,
            {"noiseMultiplier": "1", "clipNorm": "1", "sensitivity": "1", "teachers": 3},
            "teachers",
        ),
        (2, {"clipNorm": "1", "sensitivity": "1"}, "mechanism.noiseMultiplier: required"),
        (2, {"noiseMultiplier": "1", "sensitivity": "1"}, "mechanism.clipNorm: required"),
    ],
)
def test_gaussian_sensitivity_is_stated_and_checked(
    members: int, wire: dict[str, Any], message: str
) -> None:
    model = served([Constant([1.0, 0.0])] * members, 2)
    with pytest.raises(MechanismConfigError, match=message):
        build_mechanism(mech(type="gaussian", **wire), model)


def test_gaussian_accepts_the_provable_bound_exactly() -> None:
    model = served([Constant([1.0, 0.0, 0.0])] * 10, 3)
    spec = mech(
        type="gaussian", teachers=10, noiseMultiplier="2", clipNorm="0.5", sensitivity="0.1"
    )
    assert build_mechanism(spec, model).noise() is not None


# ------------------------------------------------------------------- laplace-embedding


def test_laplace_embedding_clips_to_l1_and_adds_laplace_noise() -> None:
    raw = [3.0, -1.0, 0.0, 0.0]
    model = served([Constant(raw)], 4)
    mechanism = build_mechanism(mech(type="laplace-embedding", epsilon="2"), model)
    assert isinstance(mechanism, LaplaceEmbeddingMechanism)
    n = 1000
    embeddings = np.array([o["embedding"] for o in mechanism.release(torch.zeros(n, 4))])
    target = np.array(raw) / 4.0  # L1 norm 4 -> 1
    b = mechanism.noise()["scale"]  # type: ignore[index]
    assert b == pytest.approx(1.0, rel=1e-5)  # 2 / epsilon
    np.testing.assert_array_less(
        np.abs(embeddings.mean(axis=0) - target), Z * math.sqrt(2) * b / math.sqrt(n)
    )
    assert (
        stats.kstest((embeddings - target).ravel(), "laplace", args=(0.0, b)).pvalue > P_THRESHOLD
    )
    assert mechanism.noise()["epsilon"] <= 2.0  # type: ignore[index]


def test_laplace_embedding_needs_epsilon_and_one_model() -> None:
    with pytest.raises(MechanismConfigError, match=r"mechanism\.epsilon: required"):
        build_mechanism(mech(type="laplace-embedding"), served([Constant([1.0, 0.0])], 2))
    with pytest.raises(MechanismConfigError, match="not a pate-ensemble"):
        build_mechanism(
            mech(type="laplace-embedding", epsilon="1"),
            served([Constant([1.0, 0.0]), Constant([0.0, 1.0])], 2),
        )


# --------------------------------------------------------------------- model failures


def test_non_finite_model_output_is_not_released() -> None:
    model = served([Constant([float("nan"), 0.0])], 2)
    mechanism = build_mechanism(mech(type="laplace-embedding", epsilon="1"), model)
    with pytest.raises(ModelOutputError, match="NaN"):
        mechanism.release(torch.zeros(1, 4))


def test_wrong_output_width_is_an_error() -> None:
    model = served([Constant([1.0, 0.0, 0.0])], 2)
    mechanism = build_mechanism(mech(type="none"), model)
    with pytest.raises(ModelOutputError, match="3 outputs, not 2"):
        mechanism.release(torch.zeros(1, 4))


def test_every_api_mechanism_type_has_one_registered_server_class() -> None:
    assert set(MECHANISMS) == set(get_args(MechanismType))
    for kind, served in MECHANISMS.items():
        assert served.type == kind


def test_a_second_server_class_for_a_type_is_refused() -> None:
    class AnotherPate(PateMechanism):
        type = "pate"

    with pytest.raises(TypeError, match="'pate' is served by PateMechanism already"):
        register(AnotherPate)
    assert MECHANISMS["pate"] is PateMechanism


def test_an_unserved_type_is_a_config_error_naming_the_field() -> None:
    spec = Mechanism.model_construct(type="exponential")  # type: ignore[arg-type]
    model = served([Constant([1.0, 0.0])], 2)
    with pytest.raises(MechanismConfigError, match=r"mechanism\.type: 'exponential'"):
        build_mechanism(spec, model)

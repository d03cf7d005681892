"""DP-SGD with Opacus: the recorded spend is exactly what (σ, q, steps) imply."""

from __future__ import annotations

import math
from pathlib import Path

import dp_accounting
import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis import rdp as opacus_rdp
from torch import nn

from dpserve.accounting import SubsampledGaussian, epsilon_spent
from dpserve_runtime.architectures import build_model
from dpserve_runtime.train.datasets import Dataset, export_dataset, split_indices
from dpserve_runtime.train.dpsgd import (
    DPSGDConfig,
    PrivacyConfigError,
    make_compatible,
    train_dpsgd,
)
from dpserve_runtime.train.loop import accuracy, train_nonprivate

pytestmark = pytest.mark.usefixtures("one_torch_thread")


ARCH = {"type": "mlp", "inputDim": 64, "hiddenDims": [32], "numClasses": 10}


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Dataset, Dataset]:
    data = export_dataset("digits", tmp_path_factory.mktemp("data") / "digits.npz")
    train, test = split_indices(len(data), [0.25, 0.75], seed=0)
    return data.subset(train[:400]), data.subset(test[:400])


def _config(**overrides: object) -> DPSGDConfig:
    values: dict[str, object] = {
        "target_epsilon": 4.0,
        "delta": 1e-5,
        "epochs": 2,
        "batch_size": 50,
        "max_grad_norm": 1.0,
        "learning_rate": 1e-2,
    }
    values.update(overrides)
    return DPSGDConfig(**values)  # type: ignore[arg-type]


def _reference_epsilon(sigma: float, q: float, steps: int, delta: float) -> float:
    """dp-accounting (an independent implementation), on Opacus' RDP orders."""
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps
    )
    accountant = dp_accounting.rdp.RdpAccountant(orders=RDPAccountant.DEFAULT_ALPHAS)
    accountant.compose(event)
    return float(accountant.get_epsilon(delta))


@pytest.mark.parametrize("fast_clipping", [False, True], ids=["hooks", "ghost"])
def test_recorded_spend_matches_independent_accounting(
    digits: tuple[Dataset, Dataset], fast_clipping: bool
) -> None:
    train, test = digits
    config = _config(fast_clipping=fast_clipping)
    result = train_dpsgd(build_model(ARCH, seed=0), train, config)

    batches = math.ceil(len(train) / config.batch_size)
    assert result.sample_rate == pytest.approx(1 / batches)
    assert result.steps == config.epochs * batches
    assert result.sampling == "poisson" and result.accountant == "rdp"
    assert result.noise_multiplier > 0.5
    # Opacus picks σ so that ε lands just under the target (binary search tolerance 0.01).
    assert config.target_epsilon - 0.02 <= result.epsilon <= config.target_epsilon + 1e-9

    # Recompute from (σ, q, steps) alone: Opacus' own analysis functions ...
    rdp = opacus_rdp.compute_rdp(
        q=result.sample_rate,
        noise_multiplier=result.noise_multiplier,
        steps=result.steps,
        orders=RDPAccountant.DEFAULT_ALPHAS,
    )
    eps, _ = opacus_rdp.get_privacy_spent(
        orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=config.delta
    )
    assert result.epsilon == pytest.approx(float(eps), rel=1e-12)
    # ... and dp-accounting's independent implementation of the same bound.
    reference = _reference_epsilon(
        result.noise_multiplier, result.sample_rate, result.steps, config.delta
    )
    assert result.epsilon == pytest.approx(reference, rel=1e-3)
    # ... and the ledger's accountant charges the declared spend at the same ε.
    ledger = epsilon_spent(
        [(SubsampledGaussian(result.noise_multiplier, result.sample_rate, result.steps), 1)],
        config.delta,
    )
    assert ledger == pytest.approx(result.epsilon, rel=1e-6)

    # The model learned something and came back unwrapped (no Opacus attributes).
    assert accuracy(result.model, test) > 0.3
    assert not hasattr(result.model, "_module")
    assert all(not hasattr(p, "grad_sample") for p in result.model.parameters())
    spend = result.training_spend(accuracy=0.5)
    assert spend["noiseMultiplier"] == result.noise_multiplier and spend["accuracy"] == 0.5


def test_seed_fixes_initialisation_not_noise(digits: tuple[Dataset, Dataset]) -> None:
    train, _ = digits
    first = train_dpsgd(build_model(ARCH, seed=3), train, _config(epochs=1))
    second = train_dpsgd(build_model(ARCH, seed=3), train, _config(epochs=1))
    # Same initial weights, same σ, but fresh Poisson batches and noise each run.
    assert first.noise_multiplier == second.noise_multiplier
    w1 = torch.cat([p.detach().flatten() for p in first.model.parameters()])
    w2 = torch.cat([p.detach().flatten() for p in second.model.parameters()])
    assert not torch.allclose(w1, w2)

    # Non-private training, by contrast, is fully determined by its seed.
    small = train.subset(np.arange(100, dtype=np.int64))
    a = train_nonprivate(
        build_model(ARCH, seed=1), small, epochs=2, batch_size=20, learning_rate=1e-2, seed=5
    )
    b = train_nonprivate(
        build_model(ARCH, seed=1), small, epochs=2, batch_size=20, learning_rate=1e-2, seed=5
    )
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_more_privacy_means_more_noise(digits: tuple[Dataset, Dataset]) -> None:
    train, _ = digits
    strict = train_dpsgd(build_model(ARCH, seed=0), train, _config(target_epsilon=1.0, epochs=1))
    loose = train_dpsgd(build_model(ARCH, seed=0), train, _config(target_epsilon=8.0, epochs=1))
    assert strict.noise_multiplier > loose.noise_multiplier
    assert strict.epsilon <= 1.0 < loose.epsilon <= 8.0


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("target_epsilon", 0.0, "target_epsilon must be > 0"),
        ("delta", 1.0, r"delta must be in \(0, 1\)"),
        ("epochs", 0, "epochs must be >= 1"),
        ("batch_size", 0, "batch_size must be >= 1"),
        ("max_grad_norm", -1.0, "max_grad_norm must be > 0"),
        ("learning_rate", 0.0, "learning_rate must be > 0"),
    ],
)
def test_invalid_config_is_refused(field: str, value: float, message: str) -> None:
    with pytest.raises(PrivacyConfigError, match=message):
        _config(**{field: value})


def test_batchnorm_is_replaced_for_dp_training(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    fixed = make_compatible(model)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fixed.modules())
    data = Dataset(
        X=np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32),
        y=(np.arange(64) % 2).astype(np.int64),
    )
    result = train_dpsgd(fixed, data, _config(batch_size=16, epochs=1))
    assert result.steps == 4

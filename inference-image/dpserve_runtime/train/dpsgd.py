"""DP-SGD training with Opacus: Poisson sampling, per-sample clipping, Gaussian noise, RDP.

The noise multiplier is chosen by Opacus (``make_private_with_epsilon``) so that the run's
RDP ε at ``delta`` stays below the target; the spend actually recorded is read back from
the engine's accountant after training: (σ, q, steps) and the ε they imply.

Randomness: ``seed`` fixes model initialisation only. Poisson sampling and the gradient
noise draw from torch's default generator, which torch seeds from OS entropy at start-up
and which this module never reseeds (a known seed would let an observer who knows the
data re-derive the noise). That generator is a Mersenne Twister and Opacus' noise is not
floating-point hardened: Opacus' ``secure_mode`` needs ``torchcsprng``, which no longer
installs with current torch (see docs/training.md).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from opacus import PrivacyEngine
from opacus.validators import ModuleValidator
from torch import nn

from dpserve_runtime.train.datasets import Dataset
from dpserve_runtime.train.loop import make_loader

ACCOUNTANT: Literal["rdp"] = "rdp"
SAMPLING: Literal["poisson"] = "poisson"

ProgressFn = Callable[[dict[str, Any]], None]


class PrivacyConfigError(ValueError):
    """The requested DP-SGD parameters are invalid or cannot be met."""


@dataclass(frozen=True)
class DPSGDConfig:
    """What to train for: the (ε, δ) target and the optimisation parameters."""

    target_epsilon: float
    delta: float
    epochs: int
    batch_size: int
    max_grad_norm: float
    learning_rate: float = 2e-3
    fast_clipping: bool = False

    def __post_init__(self) -> None:
        if not self.target_epsilon > 0:
            raise PrivacyConfigError(f"target_epsilon must be > 0, got {self.target_epsilon}")
        if not 0 < self.delta < 1:
            raise PrivacyConfigError(f"delta must be in (0, 1), got {self.delta}")
        if self.epochs < 1:
            raise PrivacyConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise PrivacyConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.max_grad_norm > 0:
            raise PrivacyConfigError(f"max_grad_norm must be > 0, got {self.max_grad_norm}")
        if not self.learning_rate > 0:
            raise PrivacyConfigError(f"learning_rate must be > 0, got {self.learning_rate}")


@dataclass(frozen=True)
class DPSGDResult:
    """The trained (unwrapped) model and the DP-SGD spend of the run."""

    model: nn.Module
    noise_multiplier: float
    sample_rate: float
    steps: int
    epsilon: float
    delta: float
    sampling: Literal["poisson"] = SAMPLING
    accountant: Literal["rdp"] = ACCOUNTANT

    def training_spend(self, *, accuracy: float | None = None) -> dict[str, Any]:
        """The manifest ``training`` block (camelCase wire form)."""
        spend: dict[str, Any] = {
            "noiseMultiplier": self.noise_multiplier,
            "sampleRate": self.sample_rate,
            "steps": self.steps,
            "sampling": self.sampling,
            "epsilon": self.epsilon,
            "delta": self.delta,
            "accountant": self.accountant,
        }
        if accuracy is not None:
            spend["accuracy"] = accuracy
        return spend


def make_compatible(model: nn.Module) -> nn.Module:
    """Replace layers Opacus cannot train privately (e.g. BatchNorm) and validate the rest."""
    fixed: nn.Module = ModuleValidator.fix(model)
    errors = ModuleValidator.validate(fixed, strict=False)
    if errors:
        raise PrivacyConfigError(
            "model is not DP-SGD compatible: " + "; ".join(str(e) for e in errors)
        )
    return fixed


def _unwrap(module: nn.Module) -> nn.Module:
    # GradSampleModule (hooks and ghost) keeps the user's module in ``_module``; cleanup()
    # removes Opacus' hooks and per-parameter attributes so a plain module comes back.
    cleanup = getattr(module, "cleanup", None)
    if callable(cleanup):
        cleanup()
    inner = getattr(module, "_module", None)
    return inner if isinstance(inner, nn.Module) else module


def train_dpsgd(
    model: nn.Module,
    dataset: Dataset,
    config: DPSGDConfig,
    *,
    progress: ProgressFn | None = None,
) -> DPSGDResult:
    """Train ``model`` on ``dataset`` with DP-SGD to (config.target_epsilon, config.delta)."""
    model = make_compatible(model)
    # Seed only the (non-private) batch order of the plain loader; Opacus replaces it with
    # Poisson sampling from the unseeded default generator, as it must.
    loader = make_loader(dataset, batch_size=config.batch_size, seed=0)
    # Only trainable parameters get clipped gradients and noise: a frozen base (LoRA) is
    # never updated, and its parameters have no per-sample gradients to clip.
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise PrivacyConfigError("model has no trainable parameters")
    optimizer = torch.optim.Adam(trainable, lr=config.learning_rate)
    criterion = nn.CrossEntropyLoss()
    with warnings.catch_warnings():
        # "Secure RNG turned off": known and documented (torchcsprng is unavailable).
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        engine = PrivacyEngine(accountant=ACCOUNTANT, secure_mode=False)
    try:
        with warnings.catch_warnings():
            # The σ search probes huge σ, whose best RDP order is the largest one tried.
            warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
            prepared = engine.make_private_with_epsilon(
                module=model,
                optimizer=optimizer,
                criterion=criterion,
                data_loader=loader,
                target_epsilon=config.target_epsilon,
                target_delta=config.delta,
                epochs=config.epochs,
                max_grad_norm=config.max_grad_norm,
                poisson_sampling=True,
                # "ghost": per-sample gradient norms without per-sample gradients (Linear,
                # Embedding) and fast gradient clipping for other layers, two backward passes
                # packaged in the returned criterion.
                grad_sample_mode="ghost" if config.fast_clipping else "hooks",
            )
    except ValueError as exc:  # e.g. "The privacy budget is too low."
        raise PrivacyConfigError(f"cannot reach ε={config.target_epsilon}: {exc}") from exc
    loss_fn: Callable[[torch.Tensor, torch.Tensor], Any]
    if len(prepared) == 4:
        private_model, dp_optimizer, loss_fn, dp_loader = prepared
    else:
        private_model, dp_optimizer, dp_loader = prepared
        loss_fn = criterion

    private_model.train()
    for epoch in range(config.epochs):
        total, count = 0.0, 0
        for features, labels in dp_loader:
            # Empty Poisson batches go through as well: Opacus turns them into a
            # pure-noise step, which the accountant counts like any other.
            dp_optimizer.zero_grad()
            loss = loss_fn(private_model(features), labels)
            with warnings.catch_warnings():
                # Inputs never require grad; the first layer's full backward hook says so.
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                loss.backward()
            dp_optimizer.step()
            if labels.numel():
                total += float(loss.item()) * labels.numel()
                count += labels.numel()
        if progress is not None:
            progress(
                {
                    "event": "epoch",
                    "epoch": epoch + 1,
                    "epochs": config.epochs,
                    "loss": total / count if count else None,
                    "epsilon": float(engine.get_epsilon(config.delta)),
                }
            )

    history = engine.accountant.history
    if len(history) != 1:
        # One (σ, q) for the whole run is what the manifest can declare.
        raise RuntimeError(f"expected one (σ, q) in the accountant history, got {history}")
    noise_multiplier, sample_rate, steps = history[0]
    trained = _unwrap(private_model).eval()
    return DPSGDResult(
        model=trained,
        noise_multiplier=float(noise_multiplier),
        sample_rate=float(sample_rate),
        steps=int(steps),
        epsilon=float(engine.get_epsilon(config.delta)),
        delta=config.delta,
    )

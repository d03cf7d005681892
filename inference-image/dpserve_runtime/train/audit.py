"""Utility and membership-inference audit of non-private, DP-SGD and PATE training.

On scikit-learn's digits, split once (seeded) into three disjoint parts:

- private: the protected records. Non-private and DP-SGD models train on them; PATE
  teachers train on disjoint partitions of them. They are the *members*.
- public: unlabelled inputs the PATE student may query the teachers about (GNMax labels);
  with their labels, the public pre-training data of the DP-LoRA base (DP-PEFT).
- held-out: test accuracy, and the *non-members* of the attack.

The attack is the loss-threshold membership inference of Yeom et al. (2018): score each
record by its negative cross-entropy under the released model; the AUC of members vs
non-members is 0.5 when the model reveals nothing about membership. For (ε, δ)-DP every
threshold satisfies TPR <= e^ε FPR + δ, which bounds the AUC (loosely at large ε).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.metrics import roc_auc_score
from torch import nn

from dpserve_runtime.architectures import MlpArchitecture, build_model
from dpserve_runtime.train.datasets import Dataset, export_dataset, split_indices
from dpserve_runtime.train.dpsgd import DPSGDConfig, train_dpsgd
from dpserve_runtime.train.loop import accuracy, per_sample_loss, train_nonprivate
from dpserve_runtime.train.pate import GNMax, gnmax_epsilon, train_teachers, vote_histograms

ProgressFn = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class AuditConfig:
    """Every knob of the audit; defaults are the documented run (docs/training.md)."""

    # A small private set makes the non-private model overfit visibly (the attack's
    # signal); the rest is split between PATE's public pool and the held-out set.
    private_fraction: float = 0.2
    public_fraction: float = 0.4
    hidden_dims: tuple[int, ...] = (256,)
    delta: float = 1e-5
    # Non-private baseline: long, unregularised training (drives member losses to ~0).
    nonprivate_epochs: int = 300
    nonprivate_batch_size: int = 32
    nonprivate_learning_rate: float = 1e-3
    # DP-SGD
    epsilons: tuple[float, ...] = (1.0, 3.0, 8.0)
    dpsgd_epochs: int = 30
    dpsgd_batch_size: int = 64
    max_grad_norm: float = 1.0
    dpsgd_learning_rate: float = 1e-2
    # PATE: K teachers, the student asks ``pate_queries`` public inputs, GNMax noise σ
    # (one student per σ: the same teachers, a different privacy/label-quality trade-off).
    pate_teachers: int = 20
    pate_sigmas: tuple[float, ...] = (10.0, 3.0)
    pate_queries: int = 100
    teacher_epochs: int = 300
    student_epochs: int = 300
    # DP-PEFT: a base trained without noise on the public part, then rank-r LoRA adapters
    # trained with DP-SGD on the private records (the base never saw them).
    lora_epsilons: tuple[float, ...] = (1.0,)
    lora_rank: int = 8
    seed: int = 0


@dataclass(frozen=True)
class AuditRow:
    """One released model: its privacy, utility and measured membership leakage."""

    method: str
    epsilon: float | None  # None: no DP guarantee
    test_accuracy: float
    mia_auc: float
    mia_auc_stderr: float
    details: dict[str, Any] = field(default_factory=dict)


def auc_standard_error(auc: float, positives: int, negatives: int) -> float:
    """Standard error of an ROC AUC (Hanley and McNeil 1982), for reading the table."""
    q1 = auc / (2.0 - auc)
    q2 = 2.0 * auc * auc / (1.0 + auc)
    variance = (
        auc * (1.0 - auc) + (positives - 1) * (q1 - auc * auc) + (negatives - 1) * (q2 - auc * auc)
    ) / (positives * negatives)
    return math.sqrt(max(variance, 0.0))


def membership_auc(model: nn.Module, members: Dataset, non_members: Dataset) -> tuple[float, float]:
    """AUC (and its standard error) of the loss-threshold attack: score = -loss."""
    member_loss = per_sample_loss(model, members)
    other_loss = per_sample_loss(model, non_members)
    truth: npt.NDArray[np.int64] = np.concatenate(
        [np.ones(len(member_loss), dtype=np.int64), np.zeros(len(other_loss), dtype=np.int64)]
    )
    scores = -np.concatenate([member_loss, other_loss])
    auc = float(roc_auc_score(truth, scores))
    return auc, auc_standard_error(auc, len(member_loss), len(other_loss))


def _dpsgd_config(config: AuditConfig, epsilon: float) -> DPSGDConfig:
    """The audit's DP-SGD settings (full models and LoRA adapters alike) at ``epsilon``."""
    return DPSGDConfig(
        target_epsilon=epsilon,
        delta=config.delta,
        epochs=config.dpsgd_epochs,
        batch_size=config.dpsgd_batch_size,
        max_grad_norm=config.max_grad_norm,
        learning_rate=config.dpsgd_learning_rate,
    )


def run_audit(
    config: AuditConfig, *, data: Dataset | None = None, progress: ProgressFn | None = None
) -> list[AuditRow]:
    """Train every variant and attack it; rows in table order."""
    if data is None:
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory() as tmp:
            data = export_dataset("digits", Path(tmp) / "digits.npz")
    held_out_fraction = 1.0 - config.private_fraction - config.public_fraction
    private_rows, public_rows, held_rows = split_indices(
        len(data),
        [config.private_fraction, config.public_fraction, held_out_fraction],
        seed=config.seed,
    )
    private, public, held_out = (
        data.subset(private_rows),
        data.subset(public_rows),
        data.subset(held_rows),
    )
    num_classes = data.num_classes
    architecture = MlpArchitecture(
        input_dim=int(np.prod(data.feature_shape)),
        hidden_dims=list(config.hidden_dims),
        num_classes=num_classes,
    )
    rows: list[AuditRow] = []

    def record(row: AuditRow, started: float) -> None:
        rows.append(row)
        if progress is not None:
            progress(
                {
                    "event": "audit-row",
                    "method": row.method,
                    "epsilon": row.epsilon,
                    "testAccuracy": row.test_accuracy,
                    "miaAuc": row.mia_auc,
                    "seconds": round(time.perf_counter() - started, 2),
                }
            )

    started = time.perf_counter()
    baseline = train_nonprivate(
        build_model(architecture, seed=config.seed),
        private,
        epochs=config.nonprivate_epochs,
        batch_size=config.nonprivate_batch_size,
        learning_rate=config.nonprivate_learning_rate,
        seed=config.seed,
    )
    auc, stderr = membership_auc(baseline, private, held_out)
    record(
        AuditRow(
            "non-private",
            None,
            accuracy(baseline, held_out),
            auc,
            stderr,
            {"epochs": config.nonprivate_epochs},
        ),
        started,
    )

    # Null control: the same attack on the same model, with two halves of the held-out set
    # posing as members and non-members. Its AUC shows what "no signal" looks like here.
    # The halves are drawn at random: digits' row order is not exchangeable (writer
    # groups), so index halves would differ in distribution and fake a signal.
    shuffled = np.random.default_rng(config.seed).permutation(len(held_out)).astype(np.int64)
    half = len(held_out) // 2
    auc, stderr = membership_auc(
        baseline, held_out.subset(shuffled[:half]), held_out.subset(shuffled[half:])
    )
    record(
        AuditRow(
            "null control",
            None,
            accuracy(baseline, held_out),
            auc,
            stderr,
            {"model": "non-private", "members": "held-out half"},
        ),
        started,
    )

    for epsilon in config.epsilons:
        started = time.perf_counter()
        result = train_dpsgd(
            build_model(architecture, seed=config.seed), private, _dpsgd_config(config, epsilon)
        )
        auc, stderr = membership_auc(result.model, private, held_out)
        record(
            AuditRow(
                f"DP-SGD (target ε={epsilon:g})",
                result.epsilon,
                accuracy(result.model, held_out),
                auc,
                stderr,
                {
                    "noiseMultiplier": result.noise_multiplier,
                    "sampleRate": result.sample_rate,
                    "steps": result.steps,
                },
            ),
            started,
        )

    if config.lora_epsilons:
        _lora_rows(config, architecture, public, private, held_out, record)

    started = time.perf_counter()
    teachers, _ = train_teachers(
        private,
        architecture,
        config.pate_teachers,
        epochs=config.teacher_epochs,
        batch_size=config.nonprivate_batch_size,
        learning_rate=config.nonprivate_learning_rate,
        seed=config.seed,
    )
    queries = public.subset(np.arange(min(config.pate_queries, len(public)), dtype=np.int64))
    histograms = vote_histograms(teachers, queries.X, num_classes)
    noise_free = float(np.mean(histograms.argmax(axis=1) == queries.y))
    teacher_seconds = time.perf_counter() - started
    for sigma in config.pate_sigmas:
        started = time.perf_counter() - teacher_seconds  # each row reports the teachers' time
        noisy_labels = GNMax(sigma, num_classes).labels(histograms)
        student = train_nonprivate(
            build_model(architecture, seed=config.seed),
            Dataset(X=queries.X, y=noisy_labels),
            epochs=config.student_epochs,
            batch_size=config.nonprivate_batch_size,
            learning_rate=config.nonprivate_learning_rate,
            seed=config.seed,
        )
        auc, stderr = membership_auc(student, private, held_out)
        record(
            AuditRow(
                f"PATE student (σ={sigma:g})",
                gnmax_epsilon(sigma, len(queries), config.delta),
                accuracy(student, held_out),
                auc,
                stderr,
                {
                    "teachers": config.pate_teachers,
                    "queries": len(queries),
                    "labelAccuracy": float(np.mean(noisy_labels == queries.y)),
                    "noiseFreeLabelAccuracy": noise_free,
                },
            ),
            started,
        )
    return rows


def _lora_rows(
    config: AuditConfig,
    architecture: MlpArchitecture,
    public: Dataset,
    private: Dataset,
    held_out: Dataset,
    record: Callable[[AuditRow, float], None],
) -> None:
    """The public base alone, then DP-LoRA on the private records at each ε."""
    from dpserve_runtime.train.lora import LoraSpec, build_lora_model, merged

    started = time.perf_counter()
    base = train_nonprivate(
        build_model(architecture, seed=config.seed),
        public,
        epochs=config.dpsgd_epochs,
        batch_size=config.dpsgd_batch_size,
        learning_rate=config.dpsgd_learning_rate,
        seed=config.seed,
    )
    auc, stderr = membership_auc(base, private, held_out)
    # The base never saw a private record: whatever AUC it shows is the attack's noise.
    record(AuditRow("public base alone", 0.0, accuracy(base, held_out), auc, stderr,
                    {"trainedOn": "public split"}), started)
    for epsilon in config.lora_epsilons:
        started = time.perf_counter()
        adapted = build_lora_model(base, LoraSpec(rank=config.lora_rank), seed=config.seed)
        result = train_dpsgd(adapted, private, _dpsgd_config(config, epsilon))
        released = merged(result.model)
        auc, stderr = membership_auc(released, private, held_out)
        record(
            AuditRow(
                f"DP-LoRA r={config.lora_rank} (target ε={epsilon:g})",
                result.epsilon,
                accuracy(released, held_out),
                auc,
                stderr,
                {"noiseMultiplier": result.noise_multiplier, "steps": result.steps,
                 "base": "public split, non-private"},
            ),
            started,
        )


@dataclass(frozen=True)
class AuditSummary:
    """One method over several trials (fresh split, initialisation and noise each)."""

    method: str
    epsilon: float | None
    accuracy_mean: float
    accuracy_std: float
    auc_mean: float
    auc_std: float
    auc_stderr: float  # mean per-trial standard error (sampling error of one AUC)
    trials: int
    details: dict[str, Any]


def summarise(trials: Sequence[Sequence[AuditRow]]) -> list[AuditSummary]:
    """Mean and spread of each method's rows across trials (rows matched by position)."""
    if not trials:
        return []
    summaries = []
    for rows in zip(*trials, strict=True):
        methods = {row.method for row in rows}
        if len(methods) != 1:
            raise ValueError(f"trials disagree on the method order: {sorted(methods)}")
        accuracies = np.array([row.test_accuracy for row in rows])
        aucs = np.array([row.mia_auc for row in rows])
        first = rows[0]
        # Float details (e.g. PATE label accuracy) vary per trial: report their mean.
        details = {
            key: float(np.mean([row.details[key] for row in rows]))
            if isinstance(value, float)
            else value
            for key, value in first.details.items()
        }
        summaries.append(
            AuditSummary(
                method=first.method,
                epsilon=first.epsilon,
                accuracy_mean=float(accuracies.mean()),
                accuracy_std=float(accuracies.std(ddof=1)) if len(rows) > 1 else 0.0,
                auc_mean=float(aucs.mean()),
                auc_std=float(aucs.std(ddof=1)) if len(rows) > 1 else 0.0,
                auc_stderr=float(np.mean([row.mia_auc_stderr for row in rows])),
                trials=len(rows),
                details=details,
            )
        )
    return summaries


def format_table(summaries: Sequence[AuditSummary], *, delta: float) -> str:
    """A fixed-width text table: mean ± standard deviation over trials."""
    width = max([22, *(len(row.method) for row in summaries)])
    header = (
        f"{'method':<{width}} {f'ε (δ={delta:g})':>11} {'test accuracy':>15} {'MIA AUC':>15}"
        "  details"
    )
    lines = [header, "-" * len(header)]
    for row in summaries:
        epsilon = "∞" if row.epsilon is None else f"{row.epsilon:.3f}"
        details = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.details.items()
        )
        lines.append(
            f"{row.method:<{width}} {epsilon:>11} {row.accuracy_mean:>7.3f} ± "
            f"{row.accuracy_std:.3f} {row.auc_mean:>7.3f} ± {row.auc_std:.3f}  {details}"
        )
    return "\n".join(lines)

"""DP-LoRA on a public base vs full DP-SGD from scratch, same data, same ε, on digits.

Each trial draws a fresh split of scikit-learn digits: *public* 50% (a base trained without
noise: public data costs nothing), *private* 30% (the protected data window) and *held-out*
20% (test accuracy). On the private records, at each target ε (δ = 1e-5), side by side:

- full DP-SGD: the whole MLP from a fresh initialisation (every parameter trained, noised);
- DP-LoRA: rank-r adapters on every Linear layer of the frozen public base, DP-SGD on the
  adapters only (``dpserve_runtime.train.lora``), the merged model evaluated.

The frozen base alone is reported as the reference it has to beat. Two scenarios:
``in-distribution`` (public and private data alike: the base is already good) and
``label-shift`` (the public half lacks digits 7-9: the base cannot label them, the private
window has them). Same epochs, expected batch size, clip norm and learning rate for both.

Throughput: samples/s of one DP-SGD step (Opacus hooks, σ = 1, fixed batches of 64) on the
full model vs on its LoRA version, interleaved rounds, median; for the digits MLP and for a
wider MLP (784-512-256-10, synthetic inputs) whose full per-sample gradients are costly.

Last line: ``dplora_vs_full_accuracy_eps1=<x>``: mean DP-LoRA accuracy over mean full
DP-SGD accuracy at ε = 1, in-distribution.

Usage: python bench/lora.py [--trials 5] [--epsilons 1 3] [--rank 8] (about 40 s, one core).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from dpserve_runtime.architectures import build_model
from dpserve_runtime.train.datasets import Dataset, export_dataset, split_indices
from dpserve_runtime.train.dpsgd import DPSGDConfig, train_dpsgd
from dpserve_runtime.train.loop import accuracy, train_nonprivate
from dpserve_runtime.train.lora import LoraSpec, build_lora_model, merged, parameter_counts
from dpsgd import measure, private_step  # bench/ is the script's directory

ARCH: dict[str, Any] = {"type": "mlp", "inputDim": 64, "hiddenDims": [64], "numClasses": 10}
# Throughput only (synthetic inputs): where per-sample gradients of the full model get costly.
WIDE_ARCH: dict[str, Any] = {
    "type": "mlp", "inputDim": 784, "hiddenDims": [512, 256], "numClasses": 10,
}  # fmt: skip
SCENARIOS = ("in-distribution", "label-shift")
SHIFT_KEEP = 7  # label-shift: the public half has digits 0..6 only
DELTA = 1e-5


@dataclass(frozen=True)
class Run:
    scenario: str
    method: str  # "frozen base" | "full DP-SGD" | "DP-LoRA"
    epsilon: float | None
    accuracy: float
    trainable: int




def throughput(
    architecture: dict[str, Any],
    X: torch.Tensor,
    y: torch.Tensor,
    rank: int,
    rounds: int,
    seconds: float,
) -> dict[str, tuple[float, int]]:
    """Median samples/s and trainable parameters of a DP-SGD step, full model vs LoRA,
    measured in interleaved rounds so drift on a shared machine hits both alike."""
    batch = 64
    data = TensorDataset(X, y)
    batches = [(X[i : i + batch], y[i : i + batch]) for i in range(0, len(X) - batch + 1, batch)]
    full = build_model(architecture, seed=0)
    adapted = build_lora_model(full, LoraSpec(rank=rank))
    models = {"full DP-SGD": full, "DP-LoRA": adapted}
    trainable = {
        name: sum(p.numel() for p in m.parameters() if p.requires_grad)
        for name, m in models.items()
    }
    steps = {name: private_step(m, data, batch) for name, m in models.items()}
    rates: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, step in steps.items():
            rates[name].append(measure(step, batches, seconds))
    return {name: (statistics.median(rates[name]), trainable[name]) for name in models}


def run_trial(data: Dataset, seed: int, epsilons: list[float], rank: int, epochs: int) -> list[Run]:
    public, private, test = (
        data.subset(part) for part in split_indices(len(data), [0.5, 0.3, 0.2], seed=seed)
    )
    runs: list[Run] = []
    for scenario in SCENARIOS:
        source = public
        if scenario == "label-shift":
            source = public.subset(np.flatnonzero(public.y < SHIFT_KEEP).astype(np.int64))
        base = train_nonprivate(
            build_model(ARCH, seed=seed), source, epochs=30, batch_size=64, learning_rate=1e-2,
            seed=seed,
        )
        full_params = sum(p.numel() for p in base.parameters())
        runs.append(Run(scenario, "frozen base", None, accuracy(base, test), 0))
        for epsilon in epsilons:
            config = DPSGDConfig(
                target_epsilon=epsilon,
                delta=DELTA,
                epochs=epochs,
                batch_size=64,
                max_grad_norm=1.0,
                learning_rate=1e-2,
            )
            full = train_dpsgd(build_model(ARCH, seed=seed + 1), private, config).model
            runs.append(Run(scenario, "full DP-SGD", epsilon, accuracy(full, test), full_params))
            adapted = build_lora_model(base, LoraSpec(rank=rank), seed=seed)
            trainable, _ = parameter_counts(adapted)
            peft_model = train_dpsgd(adapted, private, config).model
            runs.append(
                Run(scenario, "DP-LoRA", epsilon, accuracy(merged(peft_model), test), trainable)
            )
    return runs


def _mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {spread:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 3.0])
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds")
    parser.add_argument("--seconds", type=float, default=1.0, help="per method and round")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args(argv)
    if args.trials < 1 or 1.0 not in args.epsilons:
        parser.error("--trials must be >= 1 and --epsilons must include 1")
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*Secure RNG turned off.*")
    warnings.filterwarnings("ignore", message=".*Full backward hook.*")
    warnings.filterwarnings("ignore", message=".*Optimal order is the largest alpha.*")

    started = time.perf_counter()
    with TemporaryDirectory() as tmp:
        data = export_dataset("digits", Path(tmp) / "digits.npz")
    runs = [
        run
        for trial in range(args.trials)
        for run in run_trial(data, args.seed + trial, args.epsilons, args.rank, args.epochs)
    ]
    generator = torch.Generator().manual_seed(1)  # synthetic benchmark inputs
    wide_X = torch.randn(512, 784, generator=generator)
    wide_y = torch.randint(0, 10, (512,), generator=generator)
    speed = {
        "digits mlp 64-64-10": throughput(
            ARCH, torch.from_numpy(data.X[:512]), torch.from_numpy(data.y[:512]), args.rank,
            args.rounds, args.seconds,
        ),
        "mlp 784-512-256-10": throughput(
            WIDE_ARCH, wide_X, wide_y, args.rank, args.rounds, args.seconds
        ),
    }  # fmt: skip
    elapsed = time.perf_counter() - started

    header = f"{'scenario':<16} {'method':<12} {'ε':>4} {'accuracy':>15} {'trainable params':>17}"
    print(header)
    print("-" * len(header))
    groups: dict[tuple[str, str, float | None], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.scenario, run.method, run.epsilon), []).append(run)
    means: dict[tuple[str, str, float | None], float] = {}
    for (scenario, method, epsilon), group in groups.items():
        accuracies = [r.accuracy for r in group]
        means[(scenario, method, epsilon)] = statistics.mean(accuracies)
        eps = "-" if epsilon is None else f"{epsilon:g}"
        print(
            f"{scenario:<16} {method:<12} {eps:>4} {_mean_std(accuracies):>15} "
            f"{group[0].trainable:>17}"
        )
    print(
        f"(digits, {args.trials} trials, mean ± std accuracy on the held-out 20%; private "
        f"window {len(data) * 3 // 10} records; rank {args.rank}, {args.epochs} epochs, "
        f"batch 64, C = 1, δ = {DELTA:g})"
    )
    print()
    header = f"{'model':<20} {'method':<12} {'trainable params':>17} {'samples/s':>10} {'ratio':>7}"
    print(header)
    print("-" * len(header))
    for model, rows in speed.items():
        reference = rows["full DP-SGD"][0]
        for method, (rate, trainable) in rows.items():
            print(
                f"{model:<20} {method:<12} {trainable:>17} {rate:>10.0f} {rate / reference:>6.2f}x"
            )
    print(
        f"(one DP-SGD step, Opacus hooks, fixed batches of 64, median of {args.rounds} "
        f"interleaved rounds of {args.seconds:g} s; {args.threads} thread(s); "
        f"{elapsed:.1f} s in all)"
    )
    print()
    for scenario in SCENARIOS:
        for epsilon in args.epsilons:
            lora = means[(scenario, "DP-LoRA", epsilon)]
            full = means[(scenario, "full DP-SGD", epsilon)]
            print(f"{scenario} ε={epsilon:g}: DP-LoRA / full DP-SGD accuracy {lora / full:.3f}")
    ratio = (
        means[("in-distribution", "DP-LoRA", 1.0)] / means[("in-distribution", "full DP-SGD", 1.0)]
    )
    print(f"dplora_vs_full_accuracy_eps1={ratio:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

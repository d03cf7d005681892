"""DP-SGD training throughput vs non-private training, same model, same batches, on CPU.

Three ways to take one optimiser step on a batch of MNIST-shaped inputs (synthetic,
1x28x28, 10 classes):

- non-private: plain SGD;
- Opacus standard: per-sample gradients by hooks (``grad_sample_mode="hooks"``), flat
  clipping, Gaussian noise;
- Opacus fast/ghost clipping (``grad_sample_mode="ghost"``): per-sample gradient *norms*
  (ghost norms for Linear layers, per-sample gradients for the others), then a second,
  reweighted backward pass.

For two models from ``dpserve_runtime.architectures`` (the cnn the trainer ships, and an
mlp, where ghost clipping avoids all per-sample gradients). Modes are interleaved in
rounds so drift on a shared machine hits them alike; the table reports the median
samples/s over rounds. Batches are fixed-size (no Poisson sampling) so every mode
processes exactly the same data; σ = 1, C = 1.

Last line: ``dp_vs_nonprivate_throughput=<x>``: standard DP-SGD samples/s over
non-private samples/s for the cnn.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dpserve_runtime.architectures import build_model

MODES = ("non-private", "dp-sgd hooks", "dp-sgd ghost")
MODELS: dict[str, dict[str, Any]] = {
    "cnn": {"type": "cnn", "inputShape": [1, 28, 28], "channels": [16, 32], "numClasses": 10},
    "mlp": {"type": "mlp", "inputDim": 784, "hiddenDims": [512, 256], "numClasses": 10},
}
Step = Callable[[torch.Tensor, torch.Tensor], None]


def make_step(mode: str, architecture: dict[str, Any], data: TensorDataset, batch: int) -> Step:
    """A closure taking one training step of ``mode`` on a given batch."""
    # Benchmark initialisation only; no privacy claim is made here.
    model = build_model(architecture, seed=0)
    if mode == "non-private":
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        criterion = nn.CrossEntropyLoss()

        def plain(x: torch.Tensor, y: torch.Tensor) -> None:
            optimizer.zero_grad()
            criterion(model(x), y).backward()
            optimizer.step()

        return plain
    return private_step(model, data, batch, "ghost" if mode == "dp-sgd ghost" else "hooks")


def private_step(model: nn.Module, data: TensorDataset, batch: int,
                 grad_sample_mode: str = "hooks") -> Step:
    """One Opacus DP-SGD step (per-sample gradients, clipping, noise) on ``model``'s
    trainable parameters, for fixed-size batches (also used by bench/lora.py)."""
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    criterion = nn.CrossEntropyLoss()
    prepared = PrivacyEngine(accountant="rdp").make_private(
        module=model,
        optimizer=optimizer,
        criterion=criterion,
        data_loader=DataLoader(data, batch_size=batch),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        poisson_sampling=False,
        grad_sample_mode=grad_sample_mode,
    )
    if len(prepared) == 4:  # ghost clipping wraps the loss too
        private_model, dp_optimizer, loss_fn, _ = prepared
    else:
        private_model, dp_optimizer, _ = prepared
        loss_fn = criterion

    def private(x: torch.Tensor, y: torch.Tensor) -> None:
        dp_optimizer.zero_grad()
        loss_fn(private_model(x), y).backward()
        dp_optimizer.step()

    return private


def measure(step: Step, batches: list[tuple[torch.Tensor, torch.Tensor]], seconds: float) -> float:
    """Samples per second of ``step`` over ``seconds`` (after two warm-up steps)."""
    for x, y in batches[:2]:
        step(x, y)
    samples, i = 0, 0
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds or i < 3:
        x, y = batches[i % len(batches)]
        step(x, y)
        samples += x.shape[0]
        i += 1
    return samples / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=2.5, help="per mode and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["cnn", "mlp"])
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*Secure RNG turned off.*")
    warnings.filterwarnings("ignore", message=".*Full backward hook.*")

    generator = torch.Generator().manual_seed(1)  # synthetic benchmark inputs
    n = args.batch_size * 8
    X = torch.randn(n, 1, 28, 28, generator=generator)
    Y = torch.randint(0, 10, (n,), generator=generator)
    data = TensorDataset(X, Y)
    batches = [
        (X[i : i + args.batch_size], Y[i : i + args.batch_size])
        for i in range(0, n, args.batch_size)
    ]

    results: dict[tuple[str, str], list[float]] = {}
    for name in args.models:
        steps = {mode: make_step(mode, MODELS[name], data, args.batch_size) for mode in MODES}
        for _ in range(args.rounds):
            for mode in MODES:
                rate = measure(steps[mode], batches, args.seconds)
                results.setdefault((name, mode), []).append(rate)

    print(
        f"DP-SGD throughput, CPU, {args.threads} thread(s), batch {args.batch_size}, "
        f"median of {args.rounds} rounds x {args.seconds:g} s"
    )
    header = f"{'model':<6} {'mode':<14} {'samples/s':>10} {'vs non-private':>15}"
    print(header)
    print("-" * len(header))
    medians = {key: statistics.median(rates) for key, rates in results.items()}
    for name in args.models:
        base = medians[(name, "non-private")]
        for mode in MODES:
            rate = medians[(name, mode)]
            print(f"{name:<6} {mode:<14} {rate:>10.0f} {rate / base:>14.3f}x")
    primary = args.models[0]
    ratio = medians[(primary, "dp-sgd hooks")] / medians[(primary, "non-private")]
    ghost = medians[(primary, "dp-sgd ghost")] / medians[(primary, "non-private")]
    print(f"{primary}: ghost clipping vs non-private {ghost:.3f}")
    print(f"dp_vs_nonprivate_throughput={ratio:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

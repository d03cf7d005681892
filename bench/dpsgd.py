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

Text model (``--text``, on by default; ``--no-text`` skips it): a GPT-2 causal LM (random
init, synthetic token ids, fixed [batch, seq] batches) fine-tuned through rank-8 LoRA
adapters on every attention/MLP projection (``dpserve_runtime.train.hf``, the trainer's own
per-record loss), in four modes: non-private LoRA, DP-LoRA with per-sample gradients
(hooks), DP-LoRA with ghost clipping, and full DP fine-tuning (hooks; ghost clipping
cannot clip GPT-2's tied embedding). Reported: tokens/s (median of interleaved rounds) and
the peak memory a training step adds over the loaded model (the highest resident set size
sampled every millisecond during 3 steps, minus the RSS before them; each mode in a fresh
child process so the modes' allocations do not mask each other).

Last line: ``dp_vs_nonprivate_throughput=<x>``: standard DP-SGD samples/s over
non-private samples/s for the cnn.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
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


TEXT_MODES = ("non-private LoRA", "DP-LoRA hooks", "DP-LoRA ghost", "DP full hooks")
TEXT_MODEL = {"n_embd": 128, "n_layer": 4, "n_head": 4, "vocab_size": 2000, "n_positions": 128}
TextBatch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def text_batches(batch: int, seq: int, count: int) -> list[TextBatch]:
    """Synthetic token ids, every row full length (no padding): same work in every mode."""
    generator = torch.Generator().manual_seed(2)
    out = []
    for _ in range(count):
        ids = torch.randint(0, TEXT_MODEL["vocab_size"], (batch, seq), generator=generator)
        out.append((ids, torch.ones_like(ids), ids.clone()))
    return out


def make_text_step(mode: str, batch: int, seq: int) -> Callable[[TextBatch], None]:
    """One optimiser step of ``mode`` on a GPT-2 with the trainer's per-record loss."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import GPT2Config, GPT2LMHeadModel

    from dpserve_runtime.train.hf import RecordLoss, build_lora_model, takes_position_ids
    from dpserve_runtime.train.lora import LoraSpec

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # benchmark initialisation only
        model: nn.Module = GPT2LMHeadModel(GPT2Config(**TEXT_MODEL))
    if mode != "DP full hooks":
        model = build_lora_model(model, LoraSpec(rank=8), "text-generation", seed=0)
    model.train()
    positions = takes_position_ids(model)
    criterion = RecordLoss("text-generation")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-3)

    def kwargs(ids: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {"input_ids": ids, "attention_mask": mask}
        if positions:
            out["position_ids"] = torch.arange(ids.shape[1]).repeat(ids.shape[0], 1)
        return out

    if mode == "non-private LoRA":
        def plain(b: TextBatch) -> None:
            optimizer.zero_grad()
            criterion(model(**kwargs(b[0], b[1])).logits, b[2]).backward()
            optimizer.step()

        return plain
    ids = torch.zeros((batch * 4, seq), dtype=torch.long)
    loader = DataLoader(TensorDataset(ids, ids, ids), batch_size=batch)
    prepared = PrivacyEngine(accountant="rdp").make_private(
        module=model, optimizer=optimizer, criterion=criterion, data_loader=loader,
        noise_multiplier=1.0, max_grad_norm=1.0, poisson_sampling=False,
        grad_sample_mode="ghost" if mode == "DP-LoRA ghost" else "hooks",
    )
    if len(prepared) == 4:
        private_model, dp_optimizer, loss_fn, _ = prepared
    else:
        private_model, dp_optimizer, _ = prepared
        loss_fn = criterion

    def private(b: TextBatch) -> None:
        dp_optimizer.zero_grad()
        loss_fn(private_model(**kwargs(b[0], b[1])).logits, b[2]).backward()
        dp_optimizer.step()

    return private


def _rss_mb() -> float:
    """Resident set size now (Linux /proc), in MiB."""
    with open("/proc/self/statm", encoding="ascii") as handle:
        pages = int(handle.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def text_memory_child(mode: str, batch: int, seq: int) -> dict[str, float]:
    """In a fresh process: RSS with the model set up, then the highest RSS seen (sampled
    every millisecond by a thread) during 3 training steps. The process' own peak
    (ru_maxrss) is useless here: importing transformers peaks above a small model's step."""
    batches = text_batches(batch, seq, 3)
    step = make_text_step(mode, batch, seq)
    before = _rss_mb()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for b in batches:
        step(b)
    done.set()
    sampler.join()
    return {"setup_mb": before, "peak_mb": max(peak[0], _rss_mb())}


def text_memory(mode: str, args: argparse.Namespace) -> dict[str, float]:
    command = [sys.executable, __file__, "--memory-child", mode, "--batch-size",
               str(args.text_batch), "--seq-len", str(args.seq_len), "--threads",
               str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def text_bench(args: argparse.Namespace) -> None:
    batches = text_batches(args.text_batch, args.seq_len, 4)
    steps = {mode: make_text_step(mode, args.text_batch, args.seq_len) for mode in TEXT_MODES}
    tokens = args.text_batch * args.seq_len
    rates: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for mode in TEXT_MODES:
            step = steps[mode]
            step(batches[0])  # warm-up
            count, started = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - started) < args.seconds or count < 2:
                step(batches[count % len(batches)])
                count += 1
            rates.setdefault(mode, []).append(count * tokens / elapsed)
    memory = {mode: text_memory(mode, args) for mode in TEXT_MODES}
    shape = TEXT_MODEL
    print()
    print(f"Text model: GPT-2 {shape['n_layer']} layers x {shape['n_embd']}, vocab "
          f"{shape['vocab_size']}, batch {args.text_batch} x {args.seq_len} tokens, "
          f"LoRA r=8 on c_attn/c_proj/c_fc, CPU, {args.threads} thread(s), median of "
          f"{args.rounds} rounds x {args.seconds:g} s")
    header = (f"{'mode':<18} {'tokens/s':>9} {'vs non-private':>15} {'set-up MB':>10} "
              f"{'step peak +MB':>14}")
    print(header)
    print("-" * len(header))
    base = statistics.median(rates["non-private LoRA"])
    for mode in TEXT_MODES:
        rate = statistics.median(rates[mode])
        mem = memory[mode]
        print(f"{mode:<18} {rate:>9.0f} {rate / base:>14.3f}x {mem['setup_mb']:>10.0f} "
              f"{mem['peak_mb'] - mem['setup_mb']:>14.0f}")
    hooks = statistics.median(rates["DP-LoRA hooks"])
    ghost = statistics.median(rates["DP-LoRA ghost"])
    print(f"text: DP-LoRA vs non-private LoRA tokens/s {hooks / base:.3f} (hooks), "
          f"{ghost / base:.3f} (ghost)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=2.5, help="per mode and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["cnn", "mlp"])
    parser.add_argument("--text", action=argparse.BooleanOptionalAction, default=True,
                        help="also benchmark the GPT-2 text model (DP-LoRA)")
    parser.add_argument("--text-batch", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--memory-child", choices=TEXT_MODES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    if args.memory_child is not None:
        print(json.dumps(text_memory_child(args.memory_child, args.batch_size, args.seq_len)))
        return 0

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
    if args.text:
        text_bench(args)
    primary = args.models[0]
    ratio = medians[(primary, "dp-sgd hooks")] / medians[(primary, "non-private")]
    ghost = medians[(primary, "dp-sgd ghost")] / medians[(primary, "non-private")]
    print(f"{primary}: ghost clipping vs non-private {ghost:.3f}")
    print(f"dp_vs_nonprivate_throughput={ratio:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

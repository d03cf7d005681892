"""Memorisation audit of DP fine-tuning for a language model: canary exposure (Carlini et al.,
"The Secret Sharer") and verbatim reproduction, non-private vs DP-SGD at several ε.

Setting (all synthetic: fake names, phone numbers and record ids from templates; no real
person is behind any record):

- a *public* corpus of short clinical notes pre-trains a tiny GPT-2 (2 layers x 64, with a
  BPE tokenizer that splits digits, trained on the same public notes) without noise: the
  base;
- each seed draws a *private* fine-tuning set (other fake patients, same templates) and
  inserts canaries "the <kind> of <name> is <d digits>" (one kind per canary: phone number,
  door code, ...) k times each (k in --repeats), as k separate records; as many canaries
  are never inserted (controls: what exposure looks like by chance);
- the base is fine-tuned on it (``--finetune full``, default: every weight; ``lora``:
  adapters only) without noise and with DP-SGD at each ε (``dpserve_runtime.train.hf``:
  Poisson sampling, per-record clipping, RDP accounting, δ = 1e-5); same epochs, expected
  batch and learning rate in every case.

Measured on every fine-tuned model (``dpserve_runtime.train.canary``):

- exposure of each canary = log2 |R| - log2 rank, R = all 10^d secrets, rank by the model's
  log-perplexity of the whole canary sentence (exact enumeration);
- extraction: greedy decoding after "the <kind> of <name> is" yields the secret;
- verbatim rate: greedy decoding from the first --prompt-tokens tokens of a training record
  reproduces the rest of that record exactly, over every training record (canary copies
  included: each is a record), over the notes alone, and over held-out notes of the
  private distribution (the control);
- guard block rate: the share of those greedy outputs that the verbatim guard
  (``filter/verbatim.py``, fingerprints of the private set, --window-tokens words) blocks.

Last line: ``exposure_nonprivate=<bits> exposure_eps8=<bits> exposure_eps1=<bits>
verbatim_nonprivate=<rate> verbatim_eps8=<rate>``: mean exposure over every inserted canary
(all k) and seed; verbatim rate over every training record, mean over seeds.

Usage: python bench/lm_audit.py [--seeds 3] [--epsilons 8 3 1] [--finetune full|lora]
(about 6 min with one thread on a loaded 2-core machine).
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import random
import statistics
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from dpserve_runtime.filter.verbatim import VerbatimGuard, write_fingerprint_file
from dpserve_runtime.train.canary import (
    Canary,
    block_rate,
    canary_exposure,
    chance_exposure,
    greedy_continuations,
    verbatim_rate,
)
from dpserve_runtime.train.dpsgd import DPSGDConfig
from dpserve_runtime.train.hf import (
    build_lora_model,
    evaluate,
    train_text_dpsgd,
    train_text_nonprivate,
)
from dpserve_runtime.train.lora import LoraSpec
from dpserve_runtime.train.text import TextRecord, tokenize

# The demo's synthetic clinical-notes vocabulary (torch-free, no real people).
from dpserve_testkit.demo.notes import SYMPTOMS, TEMPLATES, TREATMENTS, fake_name

DELTA = 1e-5
EOT = "<|endoftext|>"
# One secret kind per canary, so that memorising one canary cannot lift another's rank (a
# tiny model otherwise learns "the phone number of <anyone> is <the most repeated secret>").
CANARY_KINDS = ("phone number", "door code", "pager number", "locker code", "badge number",
                "desk extension", "room code", "account pin", "gate code", "fax number",
                "safe code", "radio channel")
CANARY = "the {kind} of {name} is {{secret}}"


def digits(rng: random.Random, count: int) -> str:
    return "".join(str(rng.randrange(10)) for _ in range(count))


def note(rng: random.Random) -> str:
    return rng.choice(TEMPLATES).format(
        name=fake_name(rng), mrn=digits(rng, 6), symptom=rng.choice(SYMPTOMS),
        phone=digits(rng, 7), treatment=rng.choice(TREATMENTS),
    )


def build_tokenizer(texts: Sequence[str], vocab: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE with every digit its own token (secrets are then d tokens each)."""
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOT, bos_token=EOT,
                                   pad_token=EOT)


def build_base(public: Sequence[str], args: argparse.Namespace) -> tuple[Any, Any]:
    """The tiny GPT-2, pre-trained without noise on the public notes (public: costs nothing)."""
    tokenizer = build_tokenizer(public, args.vocab)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=args.max_seq_len,
                        n_embd=args.width, n_layer=args.layers, n_head=4,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.eos_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # benchmark initialisation only
        model = GPT2LMHeadModel(config)
    data = tokenize([TextRecord(t) for t in public], tokenizer, task="text-generation",
                    max_seq_len=args.max_seq_len)
    model, _ = train_text_nonprivate(model, data, "text-generation", epochs=args.base_epochs,
                                     batch_size=32, learning_rate=3e-3, seed=0)
    return model, tokenizer


@dataclass
class Trial:
    """One seed: the private set, its canaries, the held-out records."""

    train: list[str]  # notes and canary copies, shuffled: what the model trains on
    notes: list[str]  # the notes alone (verbatim rate)
    heldout: list[str]
    inserted: dict[int, list[Canary]]  # repeats -> canaries
    controls: list[Canary]


def make_trial(seed: int, args: argparse.Namespace) -> Trial:
    rng = random.Random(1000 + seed)
    notes = [note(rng) for _ in range(args.records)]
    heldout = [note(rng) for _ in range(args.verbatim_records)]
    kinds = list(CANARY_KINDS)
    rng.shuffle(kinds)

    def canary() -> Canary:
        return Canary(CANARY.format(kind=kinds.pop(), name=fake_name(rng)),
                      digits(rng, args.digits))

    train = list(notes)
    inserted: dict[int, list[Canary]] = {}
    for repeats in args.repeats:
        inserted[repeats] = [canary() for _ in range(args.canaries)]
        for each in inserted[repeats]:
            train.extend([each.text] * repeats)  # k records: k privacy units
    controls = [canary() for _ in range(args.canaries)]
    rng.shuffle(train)
    return Trial(train, notes, heldout, inserted, controls)


@dataclass
class Row:
    method: str
    epsilon: float | None
    sigma: float | None = None
    steps: int = 0
    exposure: dict[int, list[float]] = field(default_factory=dict)
    extracted: dict[int, list[float]] = field(default_factory=dict)
    control: list[float] = field(default_factory=list)
    verbatim_train: list[float] = field(default_factory=list)
    verbatim_notes: list[float] = field(default_factory=list)
    verbatim_heldout: list[float] = field(default_factory=list)
    block_train: list[float] = field(default_factory=list)
    block_heldout: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)

    def inserted(self) -> list[float]:
        return [e for values in self.exposure.values() for e in values]


def audit(model: Any, tokenizer: Any, trial: Trial, guard: VerbatimGuard, row: Row,
          args: argparse.Namespace) -> None:
    for repeats, canaries in trial.inserted.items():
        for canary in canaries:
            row.exposure.setdefault(repeats, []).append(
                canary_exposure(model, tokenizer, canary, batch_size=2048)[1])
            # Extraction: greedy decoding after "the <kind> of <name> is" gives the secret.
            prompt = len(tokenizer(canary.template.format(secret="").rstrip(),
                                   add_special_tokens=False)["input_ids"])
            found = greedy_continuations(model, tokenizer, [canary.text], prompt_tokens=prompt)
            row.extracted.setdefault(repeats, []).append(float(found[0].verbatim))
    row.control.extend(canary_exposure(model, tokenizer, c, batch_size=2048)[1]
                       for c in trial.controls)
    # Every training record (canary copies included: each is a record), then the notes alone.
    trained = greedy_continuations(model, tokenizer, trial.train, prompt_tokens=args.prompt_tokens)
    notes = greedy_continuations(model, tokenizer, trial.notes, prompt_tokens=args.prompt_tokens)
    held = greedy_continuations(model, tokenizer, trial.heldout, prompt_tokens=args.prompt_tokens)
    row.verbatim_train.append(verbatim_rate(trained))
    row.verbatim_notes.append(verbatim_rate(notes))
    row.verbatim_heldout.append(verbatim_rate(held))
    row.block_train.append(block_rate(trained, guard.check))
    row.block_heldout.append(block_rate(held, guard.check))


def fmt(values: Sequence[float], digits: int = 2) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {spread:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[8.0, 3.0, 1.0])
    parser.add_argument("--records", type=int, default=150, help="private notes per seed")
    parser.add_argument("--public", type=int, default=600, help="public notes (the base)")
    parser.add_argument("--repeats", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--canaries", type=int, default=2, help="per repeat count, and controls")
    parser.add_argument("--digits", type=int, default=3, help="secret length: |R| = 10^d")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--finetune", choices=["full", "lora"], default="full",
                        help="every weight, or LoRA adapters on the frozen base")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank (--finetune lora)")
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--base-epochs", type=int, default=3)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=400)
    parser.add_argument("--max-seq-len", type=int, default=48)
    parser.add_argument("--verbatim-records", type=int, default=60, help="held-out notes")
    parser.add_argument("--prompt-tokens", type=int, default=6)
    parser.add_argument("--window-tokens", type=int, default=8, help="verbatim guard window")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    started = time.perf_counter()

    rng = random.Random(0)
    public = [note(rng) for _ in range(args.public)]
    base, tokenizer = build_base(public, args)
    print(f"base: GPT-2 {args.layers}x{args.width}, vocab {len(tokenizer)}, pre-trained on "
          f"{len(public)} public notes ({time.perf_counter() - started:.0f} s)", flush=True)

    label = "LoRA" if args.finetune == "lora" else "full"
    rows = [Row(f"non-private {label}", None)] + [Row(f"DP-SGD {label}", eps)
                                                   for eps in args.epsilons]
    spec = LoraSpec(rank=args.rank)
    for seed in range(args.seeds):
        trial = make_trial(seed, args)
        data = tokenize([TextRecord(t) for t in trial.train], tokenizer, task="text-generation",
                        max_seq_len=args.max_seq_len)
        heldout = tokenize([TextRecord(t) for t in trial.heldout], tokenizer,
                           task="text-generation", max_seq_len=args.max_seq_len)
        with tempfile.TemporaryDirectory() as tmp:
            write_fingerprint_file(trial.train, Path(tmp) / "fp.json", args.window_tokens)
            guard = VerbatimGuard.load(Path(tmp) / "fp.json")
        for row in rows:
            if args.finetune == "lora":
                model = build_lora_model(base, spec, "text-generation", seed=seed)
            else:
                model = copy.deepcopy(base).requires_grad_(True)
            if row.epsilon is None:
                model, _ = train_text_nonprivate(
                    model, data, "text-generation", epochs=args.epochs,
                    batch_size=args.batch_size, learning_rate=args.learning_rate, seed=seed)
                row.steps = args.epochs * math.ceil(len(data) / args.batch_size)
            else:
                config = DPSGDConfig(target_epsilon=row.epsilon, delta=DELTA,
                                     epochs=args.epochs, batch_size=args.batch_size,
                                     max_grad_norm=args.max_grad_norm,
                                     learning_rate=args.learning_rate)
                result = train_text_dpsgd(model, data, "text-generation", config)
                model, row.sigma, row.steps = result.model, result.noise_multiplier, result.steps
                row.epsilon = result.epsilon if seed == 0 else row.epsilon
            trained_at = time.perf_counter()
            row.loss.append(evaluate(model, heldout, "text-generation")["loss"])
            audit(model, tokenizer, trial, guard, row, args)
            latest = {k: [round(e, 1) for e in v[-args.canaries:]]
                      for k, v in row.exposure.items()}
            print(f"seed {seed} {row.method} ε={row.epsilon}: exposure {latest}"
                  f" control {[round(e, 1) for e in row.control[-args.canaries:]]} verbatim "
                  f"{row.verbatim_train[-1]:.2f} (audit {time.perf_counter() - trained_at:.0f} s,"
                  f" total {time.perf_counter() - started:.0f} s)",
                  flush=True)

    space = 10 ** args.digits
    print()
    print(f"Canary exposure and verbatim reproduction, {args.seeds} seeds, {args.records} "
          f"private notes + canaries, |R| = 10^{args.digits} (max exposure "
          f"{math.log2(space):.2f} bits, chance {chance_exposure(space):.2f}), {label} "
          f"fine-tuning, "
          f"{args.epochs} epochs, expected batch {args.batch_size}, δ={DELTA:g}")
    repeats = sorted(args.repeats)
    head = (["method", "ε", "σ", "steps"] + [f"exposure k={k}" for k in repeats]
            + ["control"] + [f"extracted k={k}" for k in repeats]
            + ["verbatim train", "verbatim notes", "verbatim held-out", "guard block train",
               "guard block held-out", "held-out loss"])
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in rows:
        cells = [row.method, "∞" if row.epsilon is None else f"{row.epsilon:.2f}",
                 "-" if row.sigma is None else f"{row.sigma:.3f}", str(row.steps)]
        cells += [fmt(row.exposure.get(k, [])) for k in repeats]
        cells += [fmt(row.control)] + [fmt(row.extracted.get(k, [])) for k in repeats]
        cells += [fmt(row.verbatim_train), fmt(row.verbatim_notes), fmt(row.verbatim_heldout),
                  fmt(row.block_train), fmt(row.block_heldout), fmt(row.loss, 3)]
        print("| " + " | ".join(cells) + " |")
    print(f"({time.perf_counter() - started:.0f} s)")

    by_eps = {row.epsilon: row for row in rows}
    nonprivate = rows[0]

    def near(target: float) -> Row | None:
        for row in rows[1:]:
            if row.epsilon is not None and abs(row.epsilon - target) < 0.05:
                return row
        return None

    eps8, eps1 = near(8.0), near(1.0)
    del by_eps
    print(
        f"exposure_nonprivate={statistics.fmean(nonprivate.inserted()):.2f} "
        f"exposure_eps8={statistics.fmean(eps8.inserted()) if eps8 else float('nan'):.2f} "
        f"exposure_eps1={statistics.fmean(eps1.inserted()) if eps1 else float('nan'):.2f} "
        f"verbatim_nonprivate={statistics.fmean(nonprivate.verbatim_train):.3f} "
        f"verbatim_eps8={statistics.fmean(eps8.verbatim_train) if eps8 else float('nan'):.3f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

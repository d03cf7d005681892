"""``dpserve-train --format huggingface``: DP fine-tuning of a language model.

A causal LM (``--task text-generation``) or a sequence classifier (``text-classification``)
read from a huggingface artifact, fine-tuned with DP-SGD on a JSONL file of records (one
record = one privacy unit, see ``train/text.py``):

- ``--lora-base DIR``: LoRA adapters on the frozen base (DP-PEFT); the artifact is the merged
  model, the adapter is kept in ``adapter/`` (provenance), as for tensor models.
- ``--base-model DIR``: full fine-tuning of every parameter of the base.

The report and the manifest's ``training`` block have the same fields as any DP-SGD run
(σ, q, steps, sampling, ε, δ), so the operator charges the run unchanged.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dpserve_runtime.artifact import ArtifactError
from dpserve_runtime.filter.verbatim import (
    FingerprintFileError,
    VerbatimGuard,
    write_fingerprint_file,
)
from dpserve_runtime.hfartifact import save_hf_artifact
from dpserve_runtime.train.datasets import split_indices
from dpserve_runtime.train.dpsgd import DPSGDConfig
from dpserve_runtime.train.hf import (
    HfBase,
    HfTrainingError,
    build_lora_model,
    check_finite,
    evaluate,
    load_base,
    lora_summary,
    merged,
    resolve_targets,
    train_text_dpsgd,
)
from dpserve_runtime.train.lora import ADAPTER_DIR, LoraError, LoraSpec, parse_targets, save_adapter
from dpserve_runtime.train.report import log_event
from dpserve_runtime.train.text import (
    TextDatasetError,
    TextRecord,
    TextTask,
    TokenizedText,
    load_text_records,
    resolve_labels,
    tokenize,
    without_erased,
)

FINGERPRINTS_NAME = "fingerprints.json"
DEFAULT_MAX_SEQ_LEN = 128
DEFAULT_LORA_RANK = 8
# Adam step sizes that train the tiny and small models we ship tests and benchmarks for;
# full fine-tuning moves every weight, so it takes smaller steps than the adapters.
DEFAULT_LEARNING_RATE = {"lora": 2e-3, "full": 5e-4}


class TextRefused(Exception):
    """The run would spend more ε than the budget can still pay (exit 3)."""


def _check_args(args: argparse.Namespace) -> tuple[TextTask, Path, bool]:
    if args.task is None:
        raise HfTrainingError("--task: required with --format huggingface "
                              "(text-generation or text-classification)")
    if args.mode != "dpsgd":
        raise HfTrainingError(f"--mode: huggingface models train with dpsgd, not {args.mode}")
    if args.architecture is not None:
        raise HfTrainingError("--architecture: not used with --format huggingface (the base "
                              "model's config.json is the architecture)")
    if (args.lora_base is None) == (args.base_model is None):
        raise HfTrainingError("--lora-base / --base-model: give exactly one (LoRA adapters on "
                              "a frozen base, or full fine-tuning of the base)")
    lora = args.lora_base is not None
    if not lora:
        for flag, value in (("--lora-rank", args.lora_rank), ("--lora-alpha", args.lora_alpha),
                            ("--lora-targets", args.lora_targets)):
            if value is not None:
                raise HfTrainingError(f"{flag}: only valid with --lora-base")
    base_dir: Path = args.lora_base if lora else args.base_model
    if args.output.resolve() == base_dir.resolve():
        flag = "--lora-base" if lora else "--base-model"
        raise HfTrainingError(f"--output: must not be the {flag} directory")
    if args.max_seq_len is not None and args.max_seq_len < 2:
        raise HfTrainingError(f"--max-seq-len: must be >= 2, got {args.max_seq_len}")
    return args.task, base_dir, lora


def _labels(args: argparse.Namespace, base: HfBase) -> list[str] | None:
    if base.task != "text-classification":
        if args.labels is not None:
            raise HfTrainingError("--labels: only valid with --task text-classification")
        return None
    names = base.labels or []
    if args.labels is None:
        return names
    import json

    try:
        given = json.loads(args.labels)
    except json.JSONDecodeError as exc:
        raise HfTrainingError(f"--labels: not valid JSON: {exc}") from exc
    if not isinstance(given, list) or not all(isinstance(x, str) for x in given):
        raise HfTrainingError("--labels: must be a JSON list of strings")
    if len(given) != len(names):
        raise HfTrainingError(f"--labels: {len(given)} labels for the base's {len(names)} classes")
    config = base.model.config
    config.id2label = dict(enumerate(given))
    config.label2id = {name: i for i, name in enumerate(given)}
    return list(given)


def _tokenized(records: list[TextRecord], base: HfBase, labels: list[str] | None,
               max_seq_len: int, source: str) -> TokenizedText:
    label_ids = resolve_labels(records, labels, source) if labels is not None else None
    config = base.model.config
    limit = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings",
                                                            None)
    if isinstance(limit, int) and max_seq_len > limit:
        raise HfTrainingError(f"--max-seq-len: {max_seq_len} exceeds the base model's "
                              f"{limit} positions")
    return tokenize(records, base.tokenizer, task=base.task, max_seq_len=max_seq_len,
                    label_ids=label_ids)


def run_text(args: argparse.Namespace, learning_rate: float | None) -> dict[str, Any]:
    """Validate, train, write the huggingface artifact; returns the report."""
    task, base_dir, lora = _check_args(args)
    max_seq_len = args.max_seq_len or DEFAULT_MAX_SEQ_LEN
    spec = None
    if lora:
        try:
            spec = LoraSpec(rank=args.lora_rank or DEFAULT_LORA_RANK, alpha=args.lora_alpha,
                            targets=parse_targets(args.lora_targets))
        except LoraError as exc:
            raise HfTrainingError(f"--lora-targets: {exc}") from exc
    flag = "--lora-base" if lora else "--base-model"
    try:
        base = load_base(base_dir, task)
    except HfTrainingError as exc:
        raise HfTrainingError(f"{flag}: {exc}") from exc
    if spec is not None:
        try:
            resolve_targets(base.model, spec.targets)
        except LoraError as exc:
            raise HfTrainingError(f"--lora-targets: {exc}") from exc
    labels = _labels(args, base)
    try:
        loaded = load_text_records(args.dataset, task)
        records = without_erased(loaded, args.excluded_ids, str(args.dataset))
        data = _tokenized(records, base, labels, max_seq_len, str(args.dataset))
    except TextDatasetError as exc:
        raise HfTrainingError(str(exc)) from exc
    if args.test_fraction > 0:
        try:
            train_idx, test_idx = split_indices(
                len(data), [1.0 - args.test_fraction, args.test_fraction], seed=args.seed)
        except ValueError as exc:
            raise HfTrainingError(f"--test-fraction: {exc}") from exc
        train, test = data.subset(train_idx), data.subset(test_idx)
    else:
        train, test = data, None
    rate = learning_rate or DEFAULT_LEARNING_RATE["lora" if lora else "full"]
    start: dict[str, Any] = {
        "event": "start", "mode": "dpsgd", "format": "huggingface", "task": task,
        "finetune": "lora" if lora else "full", "dataset": str(args.dataset),
        "records": len(data), "erasedRecords": len(loaded) - len(records),
        "trainRecords": len(train), "tokens": train.tokens,
        "truncatedRecords": data.truncated, "maxSeqLen": max_seq_len,
        "base": {"directory": str(base_dir), **base.reference()},
        "targetEpsilon": args.target_epsilon, "delta": args.delta, "epochs": args.epochs,
        "batchSize": args.batch_size, "fastClipping": args.fast_clipping,
    }
    if spec is not None:
        start["lora"] = {"rank": spec.rank, "alpha": spec.scale_alpha}
    log_event(start)

    output: Path = args.output
    output.mkdir(parents=True, exist_ok=True)
    # The new version starts from the base's weights, so it can reproduce what the base
    # could: its fingerprints carry the base's windows too (same salt, same window size).
    inherited = None
    if base.fingerprints is not None:
        try:
            inherited = VerbatimGuard.load(base.fingerprints)
        except FingerprintFileError as exc:
            raise HfTrainingError(f"{flag}: {exc}") from exc
    # Written before the manifest: a directory with a manifest is complete.
    try:
        count = write_fingerprint_file([r.text for r in records], output / FINGERPRINTS_NAME,
                                       args.fingerprint_window_tokens, inherit=inherited)
    except ValueError as exc:
        raise HfTrainingError(f"--fingerprint-window-tokens: {exc}") from exc
    (output / FINGERPRINTS_NAME).chmod(0o644)
    log_event({"event": "fingerprints", "windows": count,
               "windowTokens": args.fingerprint_window_tokens})

    config = DPSGDConfig(target_epsilon=args.target_epsilon, delta=args.delta,
                         epochs=args.epochs, batch_size=args.batch_size,
                         max_grad_norm=args.max_grad_norm, learning_rate=rate,
                         fast_clipping=args.fast_clipping)
    if spec is not None:
        try:
            model = build_lora_model(base.model, spec, task, seed=args.seed)
        except LoraError as exc:
            raise HfTrainingError(f"--lora-targets: {exc}") from exc
    else:
        model = base.model
        model.requires_grad_(True)
    result = train_text_dpsgd(model, train, task, config, progress=log_event)
    if args.max_epsilon is not None and result.epsilon > args.max_epsilon:
        raise TextRefused(f"achieved ε={result.epsilon:.4f} exceeds --max-epsilon "
                          f"{args.max_epsilon:g}; the model was not written")
    final = result.model
    lora_block = None
    if spec is not None:
        lora_block = lora_summary(result.model, spec, base)
        card = (f"# dpserve LoRA adapter ({args.version})\n\nTrained with DP-SGD (Opacus) on a "
                f"frozen {task} base: version {base.version}, safetensors sha256 "
                f"{base.weights_sha256}. Rank {spec.rank}, alpha {spec.scale_alpha:g}. The "
                "artifact's weights hold the merged model; this directory is provenance.\n")
        save_adapter(result.model, output / ADAPTER_DIR, description=card)
        final = merged(result.model)
    check_finite(final)
    metrics = evaluate(final, test, task) if test is not None else None
    accuracy = metrics.get("accuracy") if metrics is not None else None
    training = result.training_spend(accuracy=accuracy)
    if lora_block is not None:
        training["lora"] = lora_block
    try:
        save_hf_artifact(output, final, base.tokenizer, task=task, version=args.version,
                         training=training, fingerprints=FINGERPRINTS_NAME, labels=labels)
    except ArtifactError as exc:  # e.g. a manifest field out of range: a bug, not input
        raise RuntimeError(f"cannot write the artifact: {exc}") from exc
    report: dict[str, Any] = {
        key: training.get(key)
        for key in ("noiseMultiplier", "sampleRate", "steps", "sampling", "epsilon", "delta")
    }
    report.update({"accuracy": accuracy, "format": "huggingface", "task": task,
                   "finetune": "lora" if lora else "full",
                   "heldOutLoss": metrics["loss"] if metrics is not None else None})
    if lora_block is not None:
        report["lora"] = lora_block
    return report

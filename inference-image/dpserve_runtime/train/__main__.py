"""``dpserve-train``: the training / retraining Job of a PrivateModel.

Modes:
- ``dpsgd`` (default): DP-SGD with Opacus to (--target-epsilon, --delta); the artifact's
  manifest declares the run's spend (σ, q, steps, Poisson sampling, ε).
- ``pate``: K teachers trained without noise on disjoint partitions, saved as a
  ``pate-ensemble``; they are never released, only GNMax answers are, so training spends
  nothing and every query is charged by the ledger instead.
- ``dpsgd`` with ``--lora-base DIR`` (DP-PEFT): the weights of an earlier state-dict artifact
  stay frozen and only LoRA adapters train with DP-SGD (same accounting); the artifact is
  the merged model in the base's architecture, the adapter is kept in ``adapter/``.
- ``--format huggingface --task text-generation|text-classification`` (``train/text_run.py``):
  DP fine-tuning of a language model from a huggingface artifact on a JSONL file of records
  (one record = one privacy unit): LoRA adapters with ``--lora-base``, every weight with
  ``--base-model``; same report fields, so the run is charged like any DP-SGD run.

- ``--exclude-ids FILE`` (any mode): the erased record ids (a JSON list, the operator's
  ``<model>-erasure`` ConfigMap) are left out of the run; records carry ids (npz field
  ``ids``, JSONL key ``id``). ``training-set.json`` in the artifact lists the ids trained on
  (per teacher for PATE: the partition map) and the count and hash of those excluded.
- ``--mode pate --unlearn-base DIR`` (``train/unlearn.py``): exact unlearning of a served
  ensemble: only the teachers whose partition held an excluded id are retrained, the others
  are copied byte for byte; fingerprints are rebuilt without the erased records' texts.

Every flag has an environment fallback (``DPSERVE_<FLAG>``, e.g. ``DPSERVE_TARGET_EPSILON``).
Exit status: 0 done, 2 invalid input, 3 refused (target ε above --max-epsilon), 1 other.
On success the JSON report goes to the termination-message file and is the last stdout
line; on failure ``{"reason", "message"}`` goes there instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from dpserve_runtime.architectures import (
    CnnArchitecture,
    MlpArchitecture,
    build_model,
    input_size,
    parse_architecture,
)
from dpserve_runtime.artifact import (
    MANIFEST_NAME,
    ArtifactError,
    Recipe,
    save_pate_ensemble,
    save_state_dict_artifact,
)
from dpserve_runtime.filter.verbatim import (
    FingerprintFileError,
    VerbatimGuard,
    write_fingerprint_file,
)
from dpserve_runtime.train.datasets import (
    Dataset,
    DatasetError,
    check_labels,
    load_dataset,
    train_test_split,
)
from dpserve_runtime.train.dpsgd import DPSGDConfig, PrivacyConfigError, train_dpsgd
from dpserve_runtime.train.loop import accuracy
from dpserve_runtime.train.lora import (
    ADAPTER_DIR,
    LoraBase,
    LoraError,
    LoraSpec,
    build_lora_model,
    load_base,
    merged,
    parse_targets,
    resolve_targets,
    save_adapter,
)
from dpserve_runtime.train.lora import summary as lora_summary
from dpserve_runtime.train.pate import plurality_accuracy, train_teachers
from dpserve_runtime.train.recordids import (
    TRAINING_SET_NAME,
    RecordIdError,
    file_sha256,
    ids_digest,
    load_excluded_ids,
    training_set_document,
    write_training_set,
)
from dpserve_runtime.train.report import log_event, write_termination_message
from dpserve_runtime.train.unlearn import UnlearnError, UnlearnJob, unlearn_pate

FINGERPRINTS_NAME = "fingerprints.json"
EXIT_INVALID = 2
EXIT_REFUSED = 3
DEFAULT_LEARNING_RATE = {"dpsgd": 1e-2, "pate": 1e-3}
DEFAULT_LORA_RANK = 8

Architecture = MlpArchitecture | CnnArchitecture


class TrainingRefused(Exception):
    """The run would spend more ε than the budget can still pay."""


class InvalidInput(Exception):
    """An argument or input file is invalid (message names it)."""


def _env(name: str) -> str | None:
    value = os.environ.get(f"DPSERVE_{name}")
    return value if value not in (None, "") else None


def _truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() in ("1", "true", "yes", "on")


def _number(kind: Callable[[str], Any], *, minimum: float, strict: bool) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a valid {kind.__name__}: {text!r}") from None
        if value != value or (value <= minimum if strict else value < minimum):
            bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def _fraction(text: str) -> float:
    value = _number(float, minimum=0.0, strict=False)(text)
    if value >= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return float(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dpserve-train",
        description="Train a model with DP-SGD (Opacus) or a PATE teacher ensemble and "
        "write a dpserve artifact. Every flag falls back to env DPSERVE_<FLAG>.",
    )
    positive_float = _number(float, minimum=0.0, strict=True)
    positive_int = _number(int, minimum=1, strict=False)

    def add(flag: str, **kwargs: Any) -> None:
        env_name = flag.lstrip("-").upper().replace("-", "_")
        env_value = _env(env_name)
        if env_value is not None:
            kwargs["default"] = env_value
            kwargs.pop("required", None)
        kwargs["help"] = f"{kwargs.get('help', '')} [env DPSERVE_{env_name}]".strip()
        parser.add_argument(flag, **kwargs)

    add("--dataset", type=Path, required=True,
        help=".npz data set (X, y, optional texts); JSONL records with --format huggingface")
    add("--output", type=Path, required=True, help="artifact directory to write")
    add(
        "--architecture",
        help='JSON, e.g. {"type":"mlp","inputDim":64,...}; required unless --lora-base '
        "gives it (then, if given, it must match the base)",
    )
    add("--mode", choices=["dpsgd", "pate"], default="dpsgd")
    add(
        "--format",
        choices=["state-dict", "huggingface"],
        default="state-dict",
        help="artifact to train: a tensor model (state-dict) or a Hugging Face language model",
    )
    add(
        "--task",
        choices=["text-generation", "text-classification"],
        help="huggingface: causal LM or sequence classifier (required with that format)",
    )
    add(
        "--base-model",
        type=Path,
        help="huggingface: base artifact to fine-tune fully (--lora-base: adapters only)",
    )
    add(
        "--max-seq-len",
        type=positive_int,
        help="huggingface: tokens per record, longer records are truncated (default 128)",
    )
    add("--target-epsilon", type=positive_float, help="DP-SGD target ε (required for dpsgd)")
    add("--delta", type=positive_float, help="DP-SGD δ (required for dpsgd), < 1")
    add(
        "--max-epsilon",
        type=_number(float, minimum=0.0, strict=False),
        help="ε the budget can still pay: refuse a larger target",
    )
    add("--epochs", type=positive_int, default="10")
    add(
        "--batch-size",
        type=positive_int,
        default="64",
        help="expected (Poisson) batch size; sample rate q = 1/ceil(n/B)",
    )
    add("--max-grad-norm", type=positive_float, default="1.0", help="per-sample clip norm C")
    add(
        "--learning-rate",
        type=positive_float,
        help=f"Adam learning rate (default {DEFAULT_LEARNING_RATE['dpsgd']:g} dpsgd, "
        f"{DEFAULT_LEARNING_RATE['pate']:g} pate)",
    )
    add(
        "--teachers",
        type=_number(int, minimum=2, strict=False),
        default="10",
        help="number of PATE teachers (pate mode)",
    )
    add(
        "--test-fraction",
        type=_fraction,
        default="0.1",
        help="held-out share of the data set for the reported accuracy (0: none)",
    )
    add(
        "--lora-base",
        type=Path,
        help="state-dict (or, with --format huggingface, huggingface) artifact directory: train "
        "only LoRA adapters on its frozen weights (dpsgd mode); the artifact written is the "
        "merged model in the base's architecture",
    )
    add("--lora-rank", type=positive_int, help=f"LoRA rank r (default {DEFAULT_LORA_RANK})")
    add("--lora-alpha", type=positive_float, help="LoRA alpha (scale alpha/r; default 2*r)")
    add(
        "--lora-targets",
        help="comma-separated module names to adapt, e.g. 1,3 (default: every Linear and "
        "Conv2d layer of the base)",
    )
    add(
        "--exclude-ids",
        type=Path,
        help="JSON list of erased record ids: left out of this run (the data set must carry ids)",
    )
    add(
        "--unlearn-base",
        type=Path,
        help="pate mode: the served pate-ensemble artifact; retrain only the teachers whose "
        "partition held an --exclude-ids record, copy the others",
    )
    add("--seed", type=int, default="0", help="initialisation / split seed (never the noise)")
    add("--version", default="v1", help="model version written to the manifest")
    add("--labels", help="JSON list: output text per class (manifest labels)")
    add(
        "--fingerprint-window-tokens",
        type=positive_int,
        default="50",
        help="verbatim-guard window (tokens) for the texts of the data set",
    )
    parser.add_argument(
        "--fast-clipping",
        action="store_true",
        default=_truthy(_env("FAST_CLIPPING")),
        help="Opacus ghost clipping (grad_sample_mode='ghost') [env DPSERVE_FAST_CLIPPING]",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        default=_truthy(_env("OVERWRITE")),
        help="replace an existing artifact in --output [env DPSERVE_OVERWRITE]",
    )
    return parser


def _architecture_object(text: str) -> dict[str, Any]:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"--architecture: not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise InvalidInput("--architecture: must be a JSON object")
    return raw


def _parse_architecture(text: str, dataset: Dataset | None = None) -> Architecture:
    raw = _architecture_object(text)
    if dataset is not None:
        raw = _complete_architecture(raw, dataset)
    try:
        return parse_architecture(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors()
        )
        raise InvalidInput(f"--architecture: {problems}") from exc


def _complete_architecture(raw: dict[str, Any], dataset: Dataset) -> dict[str, Any]:
    """Fill the sizes a retraining spec leaves out (it names only hidden layers) from the data.

    The operator's Job passes ``{"type": "mlp", "hiddenDims": [...]}``: the input width and
    the class count belong to the data window, which the spec does not describe.
    """
    raw = dict(raw)
    raw.setdefault("type", "mlp")
    raw.setdefault("numClasses", int(dataset.y.max()) + 1 if len(dataset.y) else 0)
    if raw["type"] == "mlp":
        features = 1
        for size in dataset.feature_shape:
            features *= size
        raw.setdefault("inputDim", features)
    elif raw["type"] == "cnn" and len(dataset.feature_shape) == 3:
        raw.setdefault("inputShape", list(dataset.feature_shape))
    return raw


def _parse_labels(text: str | None, architecture: Architecture) -> list[str] | None:
    if text is None:
        return None
    try:
        labels = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"--labels: not valid JSON: {exc}") from exc
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise InvalidInput("--labels: must be a JSON list of strings")
    if len(labels) != architecture.num_classes:
        raise InvalidInput(f"--labels: {len(labels)} labels for {architecture.num_classes} classes")
    return labels


def _check_fit(dataset: Dataset, architecture: Architecture, source: Path) -> None:
    features = 1
    for size in dataset.feature_shape:
        features *= size
    if features != input_size(architecture):
        raise InvalidInput(
            f"dataset {source}: field 'X' has {features} features per row "
            f"{list(dataset.feature_shape)}, the architecture expects {input_size(architecture)}"
        )


def _check_privacy_args(args: argparse.Namespace) -> None:
    if args.mode != "dpsgd":
        return
    if args.target_epsilon is None or args.delta is None:
        raise InvalidInput("--target-epsilon and --delta are required in dpsgd mode")
    if not args.delta < 1:
        raise InvalidInput(f"--delta: must be < 1, got {args.delta}")
    if args.max_epsilon is not None and args.target_epsilon > args.max_epsilon:
        raise TrainingRefused(
            f"target ε={args.target_epsilon:g} exceeds what the budget can still pay "
            f"(--max-epsilon {args.max_epsilon:g}); nothing was trained"
        )


def _lora_setup(args: argparse.Namespace) -> tuple[LoraBase, LoraSpec] | None:
    """The frozen base and adapter configuration of a LoRA run; None without --lora-base."""
    if args.lora_base is None:
        for flag, value in (
            ("--lora-rank", args.lora_rank),
            ("--lora-alpha", args.lora_alpha),
            ("--lora-targets", args.lora_targets),
        ):
            if value is not None:
                raise InvalidInput(f"{flag}: only valid with --lora-base")
        return None
    if args.mode != "dpsgd":
        raise InvalidInput(
            f"--lora-base: LoRA adapters are trained with DP-SGD; --mode {args.mode} "
            "cannot adapt a base"
        )
    if args.output.resolve() == args.lora_base.resolve():
        raise InvalidInput("--output: must not be the --lora-base directory")
    try:
        spec = LoraSpec(
            rank=args.lora_rank or DEFAULT_LORA_RANK,
            alpha=args.lora_alpha,
            targets=parse_targets(args.lora_targets),
        )
    except LoraError as exc:
        raise InvalidInput(f"--lora-targets: {exc}") from exc
    try:
        base = load_base(args.lora_base)
    except LoraError as exc:
        raise InvalidInput(f"--lora-base: {exc}") from exc
    try:
        resolve_targets(base.model, spec)
    except LoraError as exc:
        raise InvalidInput(f"--lora-targets: {exc}") from exc
    return base, spec


def _lora_architecture(text: str | None, base: LoraBase) -> Architecture:
    """The base's architecture; an explicit --architecture must describe the same model.

    Sizes left out of ``text`` (the operator's Job names hidden layers only) come from the
    base, not from the data: the data must fit the base, not the other way round.
    """
    if text is None:
        return base.architecture
    expected = base.architecture.model_dump(by_alias=True)
    raw = _architecture_object(text)
    given = raw if raw.get("type", "mlp") != expected["type"] else {**expected, **raw}
    try:
        architecture = parse_architecture(given)
    except ValidationError:
        architecture = None
    if architecture != base.architecture:
        raise InvalidInput(
            f"--architecture: {json.dumps(raw, sort_keys=True)} does not match the "
            f"--lora-base architecture {json.dumps(expected, sort_keys=True)}"
        )
    return base.architecture


def _base_fingerprints(base: LoraBase) -> VerbatimGuard | None:
    """The base's verbatim guard: a LoRA version can reproduce what its frozen base could,
    so its fingerprint file carries the base's windows too."""
    name = base.manifest.fingerprints
    if name is None:
        return None
    try:
        return VerbatimGuard.load(base.directory / name)
    except FingerprintFileError as exc:
        raise InvalidInput(f"--lora-base: {exc}") from exc


def _adapter_card(base: LoraBase, spec: LoraSpec, version: str) -> str:
    return (
        f"# dpserve LoRA adapter ({version})\n\n"
        f"Trained with DP-SGD (Opacus) on a frozen base: artifact version "
        f"{base.manifest.version}, weights sha256 {base.weights_sha256}. Rank {spec.rank}, "
        f"alpha {spec.scale_alpha:g}. The artifact's weights.pt holds the merged model; this "
        "directory is provenance (peft format) and is not served.\n"
    )


def _excluded_ids(args: argparse.Namespace) -> frozenset[str]:
    if args.exclude_ids is None:
        if args.unlearn_base is not None:
            raise InvalidInput("--unlearn-base: needs --exclude-ids (the records to erase)")
        return frozenset()
    try:
        return load_excluded_ids(args.exclude_ids)
    except RecordIdError as exc:
        raise InvalidInput(str(exc)) from exc


def _exclusion_report(excluded: frozenset[str]) -> dict[str, Any]:
    return {"excludedIds": len(excluded), "excludedIdsSha256": ids_digest(excluded)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Validate, train, write the artifact; returns the report. Raises on refusal/invalid."""
    _check_privacy_args(args)
    args.excluded_ids = _excluded_ids(args)
    if args.unlearn_base is not None:
        return _run_unlearn(args)
    if args.format == "huggingface":
        report = _run_text(args)
        report.update(_exclusion_report(args.excluded_ids))
        return report
    for flag, value in (("--task", args.task), ("--base-model", args.base_model),
                        ("--max-seq-len", args.max_seq_len)):
        if value is not None:
            raise InvalidInput(f"{flag}: only valid with --format huggingface")
    output: Path = args.output
    if (output / MANIFEST_NAME).exists() and not args.overwrite:
        raise InvalidInput(
            f"--output: {output} already holds an artifact ({MANIFEST_NAME}); "
            "use a new directory per version or pass --overwrite"
        )
    lora_setup = _lora_setup(args)
    if lora_setup is None and args.architecture is None:
        raise InvalidInput("--architecture: required (unless --lora-base gives it)")
    try:
        loaded = load_dataset(args.dataset)
        dataset, erased = loaded.without(args.excluded_ids)
        if lora_setup is not None:
            architecture = _lora_architecture(args.architecture, lora_setup[0])
        else:
            architecture = _parse_architecture(args.architecture, dataset)
        check_labels(dataset.y, architecture.num_classes, source=str(args.dataset))
    except DatasetError as exc:
        raise InvalidInput(str(exc)) from exc
    labels = _parse_labels(args.labels, architecture)
    if labels is None and lora_setup is not None:
        labels = lora_setup[0].manifest.labels  # same classes as the base
    _check_fit(dataset, architecture, args.dataset)
    if args.test_fraction > 0:
        train, test = train_test_split(dataset, test_fraction=args.test_fraction, seed=args.seed)
    else:
        train, test = dataset, None
    learning_rate = args.learning_rate or DEFAULT_LEARNING_RATE[args.mode]
    start: dict[str, Any] = {
        "event": "start",
        "mode": args.mode,
        "dataset": str(args.dataset),
        "records": len(dataset),
        "erasedRecords": erased,
        "trainRecords": len(train),
        "architecture": architecture.model_dump(by_alias=True),
        "targetEpsilon": args.target_epsilon,
        "delta": args.delta,
        "epochs": args.epochs,
        "batchSize": args.batch_size,
        "fastClipping": args.fast_clipping,
    }
    if lora_setup is not None:
        base, spec = lora_setup
        start["lora"] = {
            "base": str(base.directory),
            **base.reference(),
            "rank": spec.rank,
            "alpha": spec.scale_alpha,
        }
    log_event(start)

    output.mkdir(parents=True, exist_ok=True)
    fingerprints: str | None = None
    inherited = _base_fingerprints(lora_setup[0]) if lora_setup is not None else None
    if dataset.texts is not None or inherited is not None:
        # Written before the manifest: a directory with a manifest is complete.
        try:
            count = write_fingerprint_file(
                dataset.texts if dataset.texts is not None else [],
                output / FINGERPRINTS_NAME, args.fingerprint_window_tokens, inherit=inherited,
            )
        except ValueError as exc:
            raise InvalidInput(f"--fingerprint-window-tokens: {exc}") from exc
        # The writer's temporary file is 0600; the sidecar may run as another uid.
        (output / FINGERPRINTS_NAME).chmod(0o644)
        fingerprints = FINGERPRINTS_NAME
        log_event(
            {
                "event": "fingerprints",
                "windows": count,
                "windowTokens": args.fingerprint_window_tokens,
            }
        )

    training_set = TRAINING_SET_NAME if dataset.ids is not None else None
    written = Written(output, architecture, labels, fingerprints, training_set)
    if args.mode == "dpsgd":
        report, acc = _train_dpsgd(args, train, test, learning_rate, written, lora_setup)
        partition_map = None
    else:
        report, acc, partition_map = _train_pate(args, train, test, learning_rate, written)
    report.update(
        {"accuracy": acc, "version": args.version, "artifact": str(output), "mode": args.mode,
         "erasedRecords": erased, **_exclusion_report(args.excluded_ids)}
    )
    if training_set is not None:
        report["trainingSetSha256"] = _training_set(
            args, train, test, partition_map, output)
    return report


def _training_set(
    args: argparse.Namespace, train: Dataset, test: Dataset | None,
    partition_map: list[list[str]] | None, output: Path,
) -> str:
    """Write training-set.json (which records trained what); returns its SHA-256."""
    assert train.ids is not None
    document = training_set_document(
        dataset=args.dataset, dataset_sha256=file_sha256(args.dataset),
        excluded=args.excluded_ids, teachers=partition_map,
        train=None if partition_map is not None else list(train.ids),
        held_out=list(test.ids) if test is not None and test.ids is not None else [])
    return write_training_set(output, document)


def _run_unlearn(args: argparse.Namespace) -> dict[str, Any]:
    """Exact unlearning of a PATE ensemble (``train/unlearn.py``)."""
    if args.mode != "pate":
        raise InvalidInput("--unlearn-base: exact unlearning applies to PATE ensembles (--mode "
                           "pate); a DP-SGD model retrains with --exclude-ids instead")
    if args.format != "state-dict":
        raise InvalidInput("--unlearn-base: only tensor PATE ensembles (--format state-dict)")
    if (args.output / MANIFEST_NAME).exists() and not args.overwrite:
        raise InvalidInput(f"--output: {args.output} already holds an artifact ({MANIFEST_NAME})")
    if args.output.resolve() == args.unlearn_base.resolve():
        raise InvalidInput("--output: must not be the --unlearn-base directory")
    job = UnlearnJob(base=args.unlearn_base, dataset=args.dataset, excluded=args.excluded_ids,
                     output=args.output, version=args.version,
                     window_tokens=args.fingerprint_window_tokens)
    log_event({"event": "start", "mode": "pate", "unlearn": str(args.unlearn_base),
               "dataset": str(args.dataset), "excludedIds": len(args.excluded_ids)})
    try:
        report = unlearn_pate(job, log_event)
    except UnlearnError as exc:
        raise InvalidInput(str(exc)) from exc
    report.update({"version": args.version, "artifact": str(args.output), "mode": "pate"})
    return report


def _run_text(args: argparse.Namespace) -> dict[str, Any]:
    """The huggingface path (``train/text_run.py``); transformers is imported only here."""
    if (args.output / MANIFEST_NAME).exists() and not args.overwrite:
        raise InvalidInput(
            f"--output: {args.output} already holds an artifact ({MANIFEST_NAME}); "
            "use a new directory per version or pass --overwrite"
        )
    from dpserve_runtime.train.hf import HfTrainingError
    from dpserve_runtime.train.text_run import TextRefused, run_text

    try:
        report = run_text(args, args.learning_rate)
    except HfTrainingError as exc:
        raise InvalidInput(str(exc)) from exc
    except TextRefused as exc:
        raise TrainingRefused(str(exc)) from exc
    report.update({"version": args.version, "artifact": str(args.output), "mode": args.mode})
    return report


@dataclass(frozen=True)
class Written:
    """What every artifact of this run shares: where, which model, labels, fingerprints."""

    output: Path
    architecture: Architecture
    labels: list[str] | None
    fingerprints: str | None
    training_set: str | None = None  # training-set.json when the data set carries ids


def _train_dpsgd(
    args: argparse.Namespace, train: Dataset, test: Dataset | None, learning_rate: float,
    written: Written, lora_setup: tuple[LoraBase, LoraSpec] | None,
) -> tuple[dict[str, Any], float | None]:
    """DP-SGD (full, or LoRA adapters on the frozen base); returns (report, accuracy)."""
    config = DPSGDConfig(
        target_epsilon=args.target_epsilon,
        delta=args.delta,
        epochs=args.epochs,
        batch_size=args.batch_size,
        max_grad_norm=args.max_grad_norm,
        learning_rate=learning_rate,
        fast_clipping=args.fast_clipping,
    )
    # With LoRA only the adapters train: the base's weights are frozen inside the peft model.
    initial = (build_lora_model(lora_setup[0].model, lora_setup[1], seed=args.seed)
               if lora_setup is not None else build_model(written.architecture, seed=args.seed))
    result = train_dpsgd(initial, train, config, progress=log_event)
    if args.max_epsilon is not None and result.epsilon > args.max_epsilon:
        # Opacus picks σ so that ε stays below the target; this guards that promise.
        raise TrainingRefused(
            f"achieved ε={result.epsilon:.4f} exceeds --max-epsilon {args.max_epsilon:g}; "
            "the model was not written"
        )
    final, lora_block = result.model, None
    if lora_setup is not None:
        base, spec = lora_setup
        lora_block = lora_summary(result.model, spec, base)
        # The adapter first (provenance), then the merged model the server loads.
        card = _adapter_card(base, spec, args.version)
        save_adapter(result.model, written.output / ADAPTER_DIR, description=card)
        final = merged(result.model)
    acc = accuracy(final, test) if test is not None else None
    training = result.training_spend(accuracy=acc)
    if lora_block is not None:
        training["lora"] = lora_block
    save_state_dict_artifact(
        written.output, final, written.architecture, version=args.version,
        labels=written.labels, training=training, fingerprints=written.fingerprints,
        training_set=written.training_set,
    )
    report = {
        key: training.get(key)
        for key in ("noiseMultiplier", "sampleRate", "steps", "sampling", "epsilon", "delta")
    }
    if lora_block is not None:
        report["lora"] = lora_block
    return report, acc


def _train_pate(
    args: argparse.Namespace, train: Dataset, test: Dataset | None, learning_rate: float,
    written: Written,
) -> tuple[dict[str, Any], float | None, list[list[str]] | None]:
    """K teachers on disjoint partitions, no noise here; returns (report, accuracy, the
    record ids of each teacher's partition when the data set carries ids)."""
    if args.teachers > len(train):
        raise InvalidInput(
            f"--teachers: {args.teachers} teachers need at least as many training "
            f"records, the data set has {len(train)} after the test split"
        )
    architecture = written.architecture
    teachers, partitions = train_teachers(
        train,
        architecture,
        args.teachers,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=learning_rate,
        seed=args.seed,
    )
    log_event(
        {
            "event": "teachers",
            "teachers": len(teachers),
            "partitionSizes": [len(p) for p in partitions],
        }
    )
    acc = (
        plurality_accuracy(teachers, test, architecture.num_classes)
        if test is not None
        else None
    )
    # No DP-SGD: the teachers' privacy comes from GNMax noise on every answered query.
    training: dict[str, Any] = {
        "steps": 0, "epsilon": 0.0, "teachers": len(teachers), "accountant": "rdp"}
    if args.delta is not None:
        training["delta"] = args.delta
    if acc is not None:
        training["accuracy"] = acc
    recipe = Recipe(epochs=args.epochs, batch_size=args.batch_size,
                    learning_rate=learning_rate, seed=args.seed,
                    test_fraction=args.test_fraction)
    save_pate_ensemble(
        written.output, teachers, architecture, version=args.version, labels=written.labels,
        training=training, fingerprints=written.fingerprints,
        training_set=written.training_set, recipe=recipe,
    )
    partition_map = (None if train.ids is None
                     else [[train.ids[int(i)] for i in rows] for rows in partitions])
    report = {
        "noiseMultiplier": None,
        "sampleRate": None,
        "steps": 0,
        "sampling": "poisson",
        "epsilon": 0.0,
        "delta": args.delta,
        "teachers": len(teachers),
    }
    return report, acc, partition_map


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        if exc.code not in (0, None):  # argparse printed the reason to stderr
            write_termination_message(
                {"reason": "InvalidInput", "message": "invalid arguments; see the log"}
            )
        raise
    try:
        report = run(args)
    except TrainingRefused as exc:
        return _fail("BudgetExceeded", str(exc), EXIT_REFUSED)
    except (InvalidInput, PrivacyConfigError, ArtifactError) as exc:
        return _fail("InvalidInput", str(exc), EXIT_INVALID)
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        return _fail("TrainingFailed", f"{type(exc).__name__}: {exc}", 1)
    write_termination_message(report)
    # The report itself is the last stdout line (no timestamp: same object as the file).
    sys.stdout.write(json.dumps(report, separators=(",", ":")) + "\n")
    sys.stdout.flush()
    return 0


def _fail(reason: str, message: str, code: int) -> int:
    log_event({"event": "error", "reason": reason, "message": message}, stream=sys.stderr)
    write_termination_message({"reason": reason, "message": message[:3000]})
    return code


if __name__ == "__main__":
    raise SystemExit(main())

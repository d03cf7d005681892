"""``huggingface`` artifacts: a transformers model directory plus dpserve's ``manifest.json``.

Layout::

    <dir>/config.json            transformers config (no ``auto_map``: remote code is never run)
    <dir>/*.safetensors          the weights: safetensors only
    <dir>/tokenizer.json, tokenizer_config.json, ...   the tokenizer
    <dir>/manifest.json          {"format": "huggingface", "task", "version", "pooling"?,
                                  "labels"?, "training"?, "fingerprints"?}  (written last)

Loading is strictly offline (``local_files_only=True``; the pod also sets ``HF_HUB_OFFLINE``)
and never executes artifact code: ``trust_remote_code=False``, ``use_safetensors=True``, and a
directory holding any pickle-format weights (``*.bin``, ``*.pt``, ``*.pth``, ``*.pkl``,
``*.ckpt``) is refused outright rather than skipped, so a model that only *looks* safe cannot
be served. ``pooling`` (feature-extraction only) says how token vectors become one sentence
vector: ``mean`` over the attention mask or the first (``cls``) token.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from dpserve.api.text import ModelTask, Pooling
from dpserve_runtime.artifact import (
    MANIFEST_NAME,
    ArtifactError,
    TrainingSpend,
    describe,
    load_manifest_as,
)

CONFIG_NAME = "config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
# Pickle-based weight formats: loading them can execute code, so their presence is an error.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class HfManifest(BaseModel):
    """``manifest.json`` of a huggingface artifact."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    format: Literal["huggingface"]
    task: ModelTask
    version: Annotated[str, Field(min_length=1, max_length=63)] = "v1"
    pooling: Pooling | None = None
    labels: (
        Annotated[list[Annotated[str, Field(max_length=4096)]], Field(max_length=100_000)] | None
    ) = None
    training: TrainingSpend | None = None
    fingerprints: str | None = None

    @field_validator("fingerprints")
    @classmethod
    def _inside(cls, value: str | None) -> str | None:
        if value is not None and (value.startswith("/") or ".." in Path(value).parts):
            raise ValueError(f"must be a relative path inside the artifact, got {value!r}")
        return value

    @model_validator(mode="after")
    def _pooling_for_embeddings(self) -> HfManifest:
        if self.task == "feature-extraction" and self.pooling is None:
            raise ValueError("pooling: required for task feature-extraction (mean or cls)")
        if self.task != "feature-extraction" and self.pooling is not None:
            raise ValueError(f"pooling: only valid for task feature-extraction, not {self.task}")
        if self.labels is not None and self.task != "text-classification":
            raise ValueError(f"labels: only valid for task text-classification, not {self.task}")
        return self

    def wire(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def read_format(directory: str | Path) -> str | None:
    """The ``format`` named by ``<directory>/manifest.json`` (None if absent or unreadable):
    how the server picks the tensor or the text code path before validating anything."""
    try:
        raw = json.loads((Path(directory) / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    value = raw.get("format") if isinstance(raw, dict) else None
    return value if isinstance(value, str) else None


def load_hf_manifest(directory: str | Path) -> HfManifest:
    return load_manifest_as(directory, HfManifest)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path.name}: unreadable: {exc}") from exc
    if not isinstance(raw, dict):
        raise ArtifactError(f"{path.name}: expected a JSON object")
    return raw


def check_files(directory: str | Path) -> None:
    """The directory's files are safe to load: config, tokenizer and safetensors weights
    present, nothing pickled, no remote code, no link leaving the directory."""
    root = Path(directory)
    if not root.is_dir():
        raise ArtifactError(f"artifact directory {root} does not exist")
    resolved_root = root.resolve()
    files = [p for p in root.rglob("*") if p.is_file() or p.is_symlink()]
    for path in files:
        rel = path.relative_to(root).as_posix()
        if not path.resolve().is_relative_to(resolved_root):
            raise ArtifactError(f"{rel}: resolves outside the artifact directory")
        if path.name.lower().endswith(PICKLE_SUFFIXES):
            raise ArtifactError(
                f"{rel}: pickle-format weights are refused (loading them can run code); "
                "save the model with save_pretrained(dir, safe_serialization=True) and ship "
                "only *.safetensors"
            )
    if not (root / CONFIG_NAME).is_file():
        raise ArtifactError(f"{CONFIG_NAME}: missing from artifact directory {root}")
    if not any(p.name.endswith(".safetensors") for p in root.iterdir()):
        raise ArtifactError(f"no *.safetensors weights in artifact directory {root}")
    if not any((root / name).is_file() for name in TOKENIZER_FILES):
        raise ArtifactError(f"no tokenizer ({' or '.join(TOKENIZER_FILES)}) in {root}")
    for name in (CONFIG_NAME, "tokenizer_config.json"):
        if (root / name).is_file() and "auto_map" in _read_json(root / name):
            raise ArtifactError(
                f"{name}: auto_map names custom model code; remote code is never run "
                "(trust_remote_code is off), use a built-in transformers architecture"
            )


def validate_hf_artifact(directory: str | Path, task: ModelTask | None = None) -> HfManifest:
    """The manifest of a complete, safe artifact (ArtifactError naming the problem); with
    ``task``, the manifest must declare that task."""
    check_files(directory)
    manifest = load_hf_manifest(directory)
    if task is not None and manifest.task != task:
        raise ArtifactError(
            f"task: the artifact was saved for {manifest.task!r}, the server was asked to "
            f"serve {task!r}"
        )
    return manifest


def _auto_class(task: ModelTask) -> Any:
    # Imported here: transformers takes seconds to import and tensor artifacts never need it.
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

    return {
        "text-generation": AutoModelForCausalLM,
        "text-classification": AutoModelForSequenceClassification,
        "feature-extraction": AutoModel,
    }[task]


def class_labels(model: Any) -> list[str]:
    """A classifier's labels in class-index order, from ``config.id2label``."""
    id2label = getattr(model.config, "id2label", None) or {}
    count = int(getattr(model.config, "num_labels", len(id2label)))
    try:
        return [str(id2label[i]) for i in range(count)]
    except KeyError as exc:
        raise ArtifactError(f"config.json: id2label has no label for class {exc}") from exc


def load_hf_artifact(
    directory: str | Path, task: ModelTask, *, device: str | torch.device = "cpu"
) -> tuple[Any, Any, HfManifest]:
    """``(model, tokenizer, manifest)``: the model in eval mode on ``device``, loaded offline
    from safetensors only, with the class the task needs."""
    from transformers import AutoTokenizer

    root = Path(directory)
    manifest = validate_hf_artifact(root, task)
    common: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False}
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(root), **common)
    except Exception as exc:  # transformers raises OSError, ValueError, KeyError, ...
        raise ArtifactError(f"tokenizer: cannot load from {root}: {exc}") from exc
    try:
        model = _auto_class(task).from_pretrained(str(root), use_safetensors=True, **common)
    except Exception as exc:
        raise ArtifactError(f"cannot load a {task} model from {root}: {exc}") from exc
    if task == "text-classification" and manifest.labels is not None:
        labels = class_labels(model)
        if labels != manifest.labels:
            raise ArtifactError(
                f"labels: the manifest lists {manifest.labels}, config.json's id2label "
                f"gives {labels}"
            )
    model.to(device)
    model.eval()
    return model, tokenizer, manifest


def _write_manifest(directory: Path, manifest: HfManifest) -> None:
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".manifest-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(manifest.wire(), handle, indent=2)
            handle.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; the server may run as another uid
        os.replace(tmp, directory / MANIFEST_NAME)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_hf_artifact(
    directory: str | Path,
    model: Any,
    tokenizer: Any,
    *,
    task: ModelTask,
    pooling: Pooling | None = None,
    training: TrainingSpend | Mapping[str, Any] | None = None,
    version: str = "v1",
    labels: Sequence[str] | None = None,
    fingerprints: str | None = None,
) -> HfManifest:
    """Write model (safetensors) and tokenizer, check the result loads safely, then write
    the manifest (last and atomically: a directory with a manifest is complete)."""
    root = Path(directory)
    try:
        manifest = HfManifest(
            format="huggingface",
            task=task,
            version=version,
            pooling=pooling,
            labels=list(labels) if labels is not None else None,
            training=(
                training
                if training is None or isinstance(training, TrainingSpend)
                else TrainingSpend.model_validate(dict(training))
            ),
            fingerprints=fingerprints,
        )
    except ValidationError as exc:
        raise ArtifactError(f"invalid manifest: {describe(exc)}") from exc
    if getattr(getattr(model, "config", None), "auto_map", None):
        raise ArtifactError("model.config.auto_map: custom model code cannot be served")
    root.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(root))  # transformers 5 writes safetensors only
    tokenizer.save_pretrained(str(root))
    _share_read(root)
    check_files(root)
    _write_manifest(root, manifest)
    return manifest


def _share_read(root: Path) -> None:
    """Files readable as the process umask allows: safetensors writes its temporary file
    with mode 0600, so a model server running as another user than the writer (the
    training Job's, a copy made by root) could not read the weights it is given."""
    umask = os.umask(0)
    os.umask(umask)
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(path.stat().st_mode | (0o444 & ~umask))


# --- command line: a pretrained transformers directory as an artifact ---------------------

SENTENCE_POOLING_CONFIG = Path("1_Pooling") / "config.json"
SENTENCE_MODULES = "modules.json"
SENTENCE_BERT_CONFIG = "sentence_bert_config.json"
# sentence-transformers' pooling modes that the server implements.
_POOLING_MODES: dict[str, Pooling] = {"pooling_mode_mean_tokens": "mean",
                                      "pooling_mode_cls_token": "cls"}
# Modules of a sentence-transformers pipeline that the served vector reproduces: the
# transformer, its pooling, and L2 normalisation (the server normalises every vector).
_SERVED_MODULES = frozenset({"sentence_transformers.models.Transformer",
                             "sentence_transformers.models.Pooling",
                             "sentence_transformers.models.Normalize"})


def stated_pooling(source: str | Path) -> Pooling | None:
    """The pooling a sentence-transformers directory states in ``1_Pooling/config.json``
    (None without that file); ArtifactError for a pooling the server does not implement."""
    path = Path(source) / SENTENCE_POOLING_CONFIG
    if not path.is_file():
        return None
    modes = sorted(k for k, v in _read_json(path).items()
                   if k.startswith("pooling_mode_") and v is True)
    if len(modes) != 1 or modes[0] not in _POOLING_MODES:
        raise ArtifactError(
            f"{SENTENCE_POOLING_CONFIG.as_posix()}: pooling {', '.join(modes) or 'none'} is "
            "not served (only pooling_mode_mean_tokens or pooling_mode_cls_token)"
        )
    return _POOLING_MODES[modes[0]]


def _check_sentence_modules(source: Path) -> None:
    # A module the server does not run (a Dense projection, say) would change every vector:
    # refuse rather than serve a different model under the same name.
    path = source / SENTENCE_MODULES
    if not path.is_file():
        return
    try:
        modules = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{SENTENCE_MODULES}: unreadable: {exc}") from exc
    if not isinstance(modules, list):
        raise ArtifactError(f"{SENTENCE_MODULES}: expected a list of modules")
    for module in modules:
        kind = module.get("type") if isinstance(module, dict) else None
        if kind not in _SERVED_MODULES:
            raise ArtifactError(
                f"{SENTENCE_MODULES}: module {kind!r} is not served (only the transformer, "
                "mean or cls pooling and normalisation)"
            )


def _sentence_max_length(source: Path) -> int | None:
    """``max_seq_length`` of ``sentence_bert_config.json``: the length the model was trained
    at and sentence-transformers truncates to."""
    path = source / SENTENCE_BERT_CONFIG
    if not path.is_file():
        return None
    value = _read_json(path).get("max_seq_length")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ArtifactError(f"{SENTENCE_BERT_CONFIG}: max_seq_length must be a positive "
                            f"integer, got {value!r}")
    return value


def import_pretrained(
    source: str | Path,
    output: str | Path,
    *,
    task: ModelTask,
    pooling: Pooling | None = None,
    version: str = "v1",
) -> HfManifest:
    """A local pretrained transformers (or sentence-transformers) directory as an artifact.

    Loaded offline from safetensors only, never with remote code (the source is checked
    like an artifact first). For feature-extraction the pooling defaults to the one a
    sentence-transformers ``1_Pooling/config.json`` states, and a different ``pooling`` is
    refused; its ``max_seq_length`` becomes the tokenizer's ``model_max_length`` (the server
    refuses longer inputs rather than truncating them). A classifier's labels come from
    ``config.id2label``."""
    from transformers import AutoTokenizer

    src, out = Path(source), Path(output)
    check_files(src)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ArtifactError(f"output {out}: exists and is not an empty directory")
    max_length: int | None = None
    if task == "feature-extraction":
        _check_sentence_modules(src)
        stated = stated_pooling(src)
        if pooling is not None and stated is not None and pooling != stated:
            raise ArtifactError(
                f"pooling: {pooling!r} given, but {SENTENCE_POOLING_CONFIG.as_posix()} states "
                f"{stated!r} (the pooling the model was trained with)"
            )
        pooling = pooling or stated
        if pooling is None:
            raise ArtifactError(
                f"pooling: required for task feature-extraction (mean or cls): {src} has no "
                f"{SENTENCE_POOLING_CONFIG.as_posix()} stating it"
            )
        max_length = _sentence_max_length(src)
    common: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False}
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(src), **common)
    except Exception as exc:  # transformers raises OSError, ValueError, KeyError, ...
        raise ArtifactError(f"tokenizer: cannot load from {src}: {exc}") from exc
    try:
        model = _auto_class(task).from_pretrained(str(src), use_safetensors=True, **common)
    except Exception as exc:
        raise ArtifactError(f"cannot load a {task} model from {src}: {exc}") from exc
    if max_length is not None:
        tokenizer.model_max_length = max_length
    labels = class_labels(model) if task == "text-classification" else None
    return save_hf_artifact(out, model, tokenizer, task=task, pooling=pooling,
                            version=version, labels=labels)


# A new causal LM's tokenizer: the end-of-text token doubles as bos/pad (GPT-2's convention).
NEW_LM_EOS = "<|endoftext|>"
# Characters of the canary's text before the secret that an extraction must reproduce with
# it (a phone's "555-0" before its last digits).
EXTRACTION_CONTEXT = 5


def new_causal_lm(
    output: str | Path,
    corpus: str | Path,
    *,
    layers: int = 2,
    dim: int = 64,
    heads: int = 4,
    context: int = 128,
    vocab: int = 600,
    seed: int = 0,
    version: str = "v1",
) -> HfManifest:
    """A random-init GPT-2 text-generation artifact with a byte-level BPE tokenizer trained on
    the texts of ``corpus`` (JSONL records ``{"text": ...}``, as ``dpserve-train`` reads them).

    Every digit is its own token, so a d-digit secret is d tokens and canary exposure over all
    10^d candidates compares sentences of equal length. The weights are seeded (``seed``):
    this is a public starting point, not a privacy mechanism, and a base that is rebuilt
    identically makes fine-tuning runs comparable."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from dpserve_runtime.train.text import TextDatasetError, load_text_records

    out = Path(output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ArtifactError(f"output {out}: exists and is not an empty directory")
    for name, value, least in (("layers", layers, 1), ("dim", dim, 8), ("heads", heads, 1),
                               ("context", context, 8), ("vocab", vocab, 300)):
        if value < least:
            raise ArtifactError(f"{name}: must be at least {least}, got {value}")
    if dim % heads:
        raise ArtifactError(f"dim: must be a multiple of heads ({heads}), got {dim}")
    try:
        texts = [r.text for r in load_text_records(corpus, "text-generation")]
    except TextDatasetError as exc:
        raise ArtifactError(f"corpus: {exc}") from exc
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.train_from_iterator(texts, trainer=trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=[NEW_LM_EOS], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok, bos_token=NEW_LM_EOS, eos_token=NEW_LM_EOS,
        pad_token=NEW_LM_EOS, model_max_length=context)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=context, n_embd=dim,
                        n_layer=layers, n_head=heads, bos_token_id=tokenizer.eos_token_id,
                        eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.eos_token_id)
    # Seeded without touching the caller's global generator.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config)
    return save_hf_artifact(out, model, tokenizer, task="text-generation", version=version)


def canary_audit(directory: str | Path, *, template: str, secret: str,
                 prompt: str) -> dict[str, Any]:
    """Memorisation of one canary by a text-generation artifact (``train/canary.py``):
    its rank and exposure among every secret of its length, and whether greedy decoding
    after ``prompt`` reproduces the secret in its place in the canary (``extracted``, see
    :func:`reproduces`: the secret's digits inside a garbled number, which no PII recogniser
    would know for a phone number, do not count). Not a DP release: it measures a model.
    The secret itself is never printed."""
    from dpserve_runtime.train.canary import Canary, canary_exposure, chance_exposure

    if not secret.isdigit() or "{secret}" not in template:
        raise ArtifactError("canary: --secret must be digits and --template hold {secret}")
    if len(secret) > 5:
        raise ArtifactError(f"--secret: at most 5 digits (10^d candidates), got {len(secret)}")
    model, tokenizer, _ = load_hf_artifact(directory, "text-generation")
    canary = Canary(template, secret)
    with torch.inference_mode():
        rank, bits = canary_exposure(model, tokenizer, canary)
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        width = len(tokenizer(template.format(secret=secret)[len(prompt):],
                              add_special_tokens=False)["input_ids"])
        # Room for a continuation that strays in a few tokens before reaching the secret.
        out = model.generate(ids, max_new_tokens=width + 8, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    continuation = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    space = 10 ** len(secret)
    return {"rank": rank, "exposure": bits, "space": space,
            "chanceExposure": chance_exposure(space),
            "extracted": reproduces(template, prompt, secret, continuation)}


def reproduces(template: str, prompt: str, secret: str, continuation: str) -> bool:
    """Does ``continuation`` (of ``prompt``) hold the secret in its place in the canary: the
    secret with up to :data:`EXTRACTION_CONTEXT` characters of the template's text right
    before it (those after the prompt)? The digits alone inside a garbled number do not
    count; a slip further back (another area code before the same number) does: the secret
    is still out, in the shape a reader or a PII recogniser sees."""
    start = template.index("{secret}")
    through_secret = template[:start] + secret
    after_prompt = (through_secret[len(prompt):] if through_secret.startswith(prompt)
                    else secret)
    expected = after_prompt[-(len(secret) + EXTRACTION_CONTEXT):].lstrip()
    return expected in continuation


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dpserve_runtime.hfartifact import SOURCE OUTPUT --task TASK ...`` or
    ``python -m dpserve_runtime.hfartifact new-causal-lm OUTPUT --corpus FILE ...``"""
    import argparse
    import sys
    from typing import get_args

    parser = argparse.ArgumentParser(
        prog="python -m dpserve_runtime.hfartifact",
        description="Build huggingface artifacts for dpserve (offline, safetensors only).")
    commands = parser.add_subparsers(dest="command", required=True)
    imported = commands.add_parser(
        "import", help="a local pretrained transformers or sentence-transformers directory "
                       "as a huggingface artifact; prints its manifest")
    imported.add_argument("source", type=Path, help="the pretrained model directory")
    imported.add_argument("output", type=Path, help="the artifact directory (new or empty)")
    imported.add_argument("--task", required=True, choices=get_args(ModelTask))
    imported.add_argument("--pooling", choices=get_args(Pooling), default=None,
                          help="feature-extraction: default from 1_Pooling/config.json")
    imported.add_argument("--version", default="v1")
    fresh = commands.add_parser(
        "new-causal-lm", help="a random-init GPT-2 (text-generation) with a byte-level BPE "
                              "tokenizer trained on a corpus; prints its manifest")
    fresh.add_argument("output", type=Path, help="the artifact directory (new or empty)")
    fresh.add_argument("--corpus", type=Path, required=True,
                       help='JSONL records {"text": ...} the tokenizer is trained on')
    for flag, default, text in (("--layers", 2, "transformer blocks"),
                                ("--dim", 64, "embedding width"),
                                ("--heads", 4, "attention heads"),
                                ("--context", 128, "positions (longest input, in tokens)"),
                                ("--vocab", 600, "tokenizer vocabulary size"),
                                ("--seed", 0, "weight initialisation seed")):
        fresh.add_argument(flag, type=int, default=default, help=f"{text} (default {default})")
    fresh.add_argument("--version", default="v1")
    audit = commands.add_parser(
        "canary", help="a text-generation artifact's exposure of one canary and whether "
                       "greedy decoding after its prompt reproduces the secret; prints JSON")
    audit.add_argument("artifact", type=Path)
    audit.add_argument("--template", required=True, help="the canary with {secret}")
    audit.add_argument("--secret", required=True, help="the true secret (digits)")
    audit.add_argument("--prompt", required=True, help="the canary's text before the secret")
    args = parser.parse_args(argv)
    # Nothing is ever fetched: a name that is not a local directory fails instead.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        if args.command == "canary":
            print(json.dumps(canary_audit(args.artifact, template=args.template,
                                          secret=args.secret, prompt=args.prompt)))
            return 0
        if args.command == "new-causal-lm":
            manifest = new_causal_lm(args.output, args.corpus, layers=args.layers,
                                     dim=args.dim, heads=args.heads, context=args.context,
                                     vocab=args.vocab, seed=args.seed, version=args.version)
        else:
            manifest = import_pretrained(args.source, args.output, task=args.task,
                                         pooling=args.pooling, version=args.version)
    except ArtifactError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(manifest.wire()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
